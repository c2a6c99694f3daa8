/* Causal grouped-query attention for Hopper (sm_90a), forward and backward: TMA tile loads, an
 * mbarrier pipeline and warpgroup MMA (wgmma). The same contracts and the same arithmetic as the
 * mma.sync kernels (attention_forward.cu, attention_backward.cu, which every other device and head
 * width uses): Q, K, V, dO, P and dS rounded to bf16 for the products, fp32 accumulation and
 * softmax statistics. Unverified on GPU until tests/gpu/run.sh has passed on an H100/H200; checked
 * under tests/gpu/emulate.sh, whose emulator implements the PTX semantics hopper.cuh relies on.
 *
 * The op's tensors are fp32; TMA and wgmma read bf16, so q, k, v (and dO) are first converted into
 * the backend scratch (rows of padding written as zeros, attention_cudnn_convert.cu), all in one
 * launch.
 *
 * Every kernel here has the same shape: a block of two consumer warpgroups (64 rows each) and one
 * producer warpgroup (384 threads) that hands most of its registers to the consumers (setmaxnreg)
 * and of which one thread loads the block's "fixed" tiles once and then streams tiles through two
 * stages with TMA, each stage completing on its "full" mbarrier and refilled once its "empty"
 * mbarrier has all 256 consumer arrivals. Keeping the loads in their own warpgroup (branching on a
 * shuffled, provably warp-uniform index) leaves the consumers' loop free of divergent paths, which
 * ptxas would otherwise answer by serialising the wgmmas. Tiles are HD / 64 column halves of
 * 128-byte-swizzled rows (hopper.cuh); rows past a sample's length are zeros (converted so) or
 * past T (TMA fills zeros), and masked.
 *
 *   forward   block = (128 queries, head, sample); fixed Q; streamed K and V tiles of 128 keys.
 *             S = Q K^T (wgmma m64n128k16, both operands from shared memory), mask and online
 *             softmax in registers, O += P V (m64nHDk16, P from registers, V N-major).
 *   dK/dV     block = (128 keys, kv head, sample); fixed K and V; streamed Q and dO tiles of 64
 *             queries, over every query head of the kv head and every query from the block's
 *             first key on. S^T = K Q^T and dP^T = V dO^T (m64n64k16), P^T and dS^T in registers,
 *             dV += P^T dO and dK += dS^T Q (m64nHDk16, A from registers, Q and dO N-major).
 *   dQ        block = (128 queries, head, sample); fixed Q and dO; streamed K and V tiles of 64
 *             keys. S = Q K^T and dP = dO V^T, P and dS in registers, dQ += dS K.
 * As in the mma.sync backward, dQ has its own kernel rather than atomics: every sum runs in a fixed
 * order, so results are deterministic. */
#include <cuda.h>
#include <cuda_runtime.h>
#include <string.h>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/hopper.cuh"

namespace tga_cuda {
namespace attention {
namespace wgmma_path {

using namespace tga_cuda::sm90;

constexpr int kStages = 2;                 /* streamed tiles in flight */
constexpr int kConsumers = 2 * kWarpgroup; /* two warpgroups of 64 rows */
/* and a producer warpgroup, of which one lane issues the TMA loads: a whole warpgroup so that it
 * can hand its registers to the consumers (setmaxnreg works per warpgroup) */
constexpr int kBlockThreads = kConsumers + kWarpgroup;
/* registers per thread after the hand-over. The block is launched with ptxas's cap for 384
 * threads, 168 each (the dK/dV kernel spills there), and setmaxnreg moves registers within that
 * pool: 2 x 128 x 240 + 128 x 24 = 384 x 168 = 64512. A split that needs more than the producer
 * frees would leave the consumers' setmaxnreg.inc waiting forever. */
constexpr int kConsumerRegisters = 240, kProducerRegisters = 24;
static_assert(kConsumers * kConsumerRegisters + kWarpgroup * kProducerRegisters <=
                  kBlockThreads * ((65536 / kBlockThreads) & ~7),
              "the register hand-over must fit the registers the block is launched with");
constexpr int kFixedRows = 128; /* fixed rows per block: 64 per warpgroup */
constexpr int kColumns = 64;    /* bf16 per 128-byte swizzled row: one TMA box is 64 columns wide */

/* Shared memory of a kernel: two fixed tensors of kFixedRows rows, then kStages stages of two
 * streamed tensors of STREAM_ROWS rows, then the mbarriers; tensors as HD / 64 column halves. The
 * forward's second fixed tensor is unused (FIXED = 1). */
template <int HD, int STREAM_ROWS, int FIXED> struct layout {
    static constexpr int halves = HD / kColumns;
    static constexpr uint32_t fixed_half = kFixedRows * kSwizzleRow; /* bytes of one column half */
    static constexpr uint32_t stream_half = STREAM_ROWS * kSwizzleRow;
    static constexpr uint32_t fixed_bytes = halves * fixed_half;
    static constexpr uint32_t stream_bytes = halves * stream_half;
    static constexpr uint32_t stream_offset = FIXED * fixed_bytes;
    static constexpr uint32_t stage_bytes = 2 * stream_bytes;
    static constexpr uint32_t barrier_offset = stream_offset + kStages * stage_bytes;
    /* + slack to round the dynamic shared memory's start up to a swizzle atom */
    static constexpr size_t bytes = barrier_offset + 8 * (1 + 2 * kStages) + kSwizzleAtom;
    __device__ static uint32_t fixed(uint32_t base, int tensor) { return base + tensor * fixed_bytes; }
    __device__ static uint32_t stream(uint32_t base, int stage, int tensor) {
        return base + stream_offset + stage * stage_bytes + tensor * stream_bytes;
    }
};

/* The mbarriers after the tiles: one for the fixed tiles, then full[kStages], empty[kStages]. */
struct barriers {
    uint32_t first;
    __device__ uint32_t fixed() const { return first; }
    __device__ uint32_t full(int stage) const { return first + 8 * (1 + stage); }
    __device__ uint32_t empty(int stage) const { return first + 8 * (1 + kStages + stage); }
    /* by thread 0, before a __syncthreads */
    __device__ void init() const {
        mbarrier_init(fixed(), 1);
        for (int st = 0; st < kStages; st++) {
            mbarrier_init(full(st), 1);
            mbarrier_init(empty(st), kConsumers);
        }
        mbarrier_init_fence();
    }
};

/* The 1024-byte-aligned start of the tiles in the dynamic shared memory. */
__device__ inline uint32_t tiles_base(const unsigned char *smem) {
    return (smem_address(smem) + kSwizzleAtom - 1) & ~(kSwizzleAtom - 1);
}

/* The warp index through a shuffle: ptxas then knows it is warp-uniform, and the producer/consumer
 * branch on it is not a divergent path around the wgmmas. */
__device__ inline int uniform_warp_index() { return __shfl_sync(kFullMask, (int)threadIdx.x / kWarp, 0); }

/* Descriptor of step kk (16 columns) of a K-major operand: rows starting row_bytes into a tile of
 * column halves half_bytes apart; 4 steps per 128-byte row. */
__device__ inline uint64_t k_major_step(uint32_t tile, uint32_t half_bytes, uint32_t row_bytes, int kk) {
    return descriptor(tile + (uint32_t)(kk / 4) * half_bytes + row_bytes + (uint32_t)(kk % 4) * 32, 16,
                      kSwizzleAtom);
}

/* Descriptor of step kk (16 rows = 2 swizzle atoms) of an N-major operand (the tile's rows are
 * the product's k, its columns the product's n, column halves half_bytes apart). */
__device__ inline uint64_t n_major_step(uint32_t tile, uint32_t half_bytes, int kk) {
    return descriptor(tile + (uint32_t)kk * 2 * kSwizzleAtom, half_bytes, kSwizzleAtom);
}

/* acc[64 x HD] += A B for one 16-deep step, A from registers, B N-major. */
template <int HD> __device__ inline void wgmma_rs_hd(float *acc, const uint32_t a[4], uint64_t b) {
    if constexpr (HD == 128)
        wgmma_rs_n128_tn(acc, a, b, 1);
    else
        wgmma_rs_n64_tn(acc, a, b, 1);
}

/* acc[64 x N] (+)= A B^T over the HD columns of both: A = the 64 rows starting row_bytes into a
 * fixed tile, B = the N rows of a streamed tile, both K-major (S = Q K^T and its kin). Issues the
 * HD / 16 wgmmas only; the caller fences, commits and waits. */
template <int HD, int N>
__device__ inline void wgmma_rows_product(float *acc, uint32_t a_tile, uint32_t a_half, uint32_t row_bytes,
                                          uint32_t b_tile, uint32_t b_half) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        const uint64_t a = k_major_step(a_tile, a_half, row_bytes, kk), b = k_major_step(b_tile, b_half, 0, kk);
        if constexpr (N == 128)
            wgmma_ss_n128(acc, a, b, 1);
        else
            wgmma_ss_n64(acc, a, b, 1);
    }
}

/* TMA of the column halves of one tile: rows row0.. of head `head` of sample b. */
template <int HD>
__device__ inline void load_tile_halves(uint32_t dst, uint32_t half_bytes, const CUtensorMap *map, int head,
                                        int row0, int b, uint32_t bar) {
#pragma unroll
    for (int j = 0; j < HD / kColumns; j++)
        tma_load_3d(dst + j * half_bytes, map, head * HD + j * kColumns, row0, b, bar);
}

/* rows[first, end) of out (row stride `stride`) = acc * scale (scale per fragment row), this
 * thread's rows being row0 + g and row0 + g + 8. */
template <int O_TILES>
__device__ inline void store_scaled_rows(float *out, size_t stride, const float acc[O_TILES][4], int row0,
                                         int end, const float scale[2]) {
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = row0 + (threadIdx.x % kWarp) / 4 + 8 * i;
        if (row >= end) continue;
        float *dst = out + (size_t)row * stride;
#pragma unroll
        for (int n = 0; n < O_TILES; n++) {
            dst[fragment_col(n, 2 * i)] = acc[n][2 * i] * scale[i];
            dst[fragment_col(n, 2 * i + 1)] = acc[n][2 * i + 1] * scale[i];
        }
    }
}

constexpr int kForwardKeys = 128; /* keys per streamed tile of the forward */
constexpr int kBackwardTile = 64; /* queries (dK/dV) or keys (dQ) per streamed tile of the backward */
template <int HD> using forward_layout = layout<HD, kForwardKeys, 1>;
template <int HD> using backward_layout = layout<HD, kBackwardTile, 2>;

/* The four tensor maps of a backward kernel: its fixed tensors (boxes of 128 rows) and its
 * streamed ones (boxes of 64 rows). */
struct backward_maps {
    CUtensorMap fixed[2], stream[2];
};

}  // namespace wgmma_path

/* The kernels are in namespace attention (not wgmma_path): the host emulator gives every attention
 * kernel's extern __shared__ array one definition, tga_cuda::attention::smem. */
template <int HD>
__global__ void __launch_bounds__(wgmma_path::kBlockThreads, 1)
    attention_forward_sm90_kernel(float *out, float *lse, const __grid_constant__ CUtensorMap q_map,
                                  const __grid_constant__ CUtensorMap k_map,
                                  const __grid_constant__ CUtensorMap v_map, const int *lengths, shape s) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(TGA_CUDA_HOST_EMULATION)
    using namespace wgmma_path;
    using L = forward_layout<HD>;
    constexpr int kKeys = kForwardKeys, kScoreTiles = kKeys / 8, kOutTiles = HD / 8;
    extern __shared__ __align__(1024) unsigned char smem[];
    const uint32_t base = tiles_base(smem);
    const barriers bar = {base + L::barrier_offset};

    const int b = blockIdx.z, h = blockIdx.y, kvh = h / s.group;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * kFixedRows; /* the longest rows start first */
    const int len = sample_length(lengths, b, s.T), q_end = min(q0 + kFixedRows, s.T);
    const size_t q_stride = (size_t)s.H * HD;
    float *out_h = out + (size_t)b * s.T * q_stride + (size_t)h * HD,
          *lse_h = lse + ((size_t)b * s.H + h) * s.T;
    if (q0 >= len) {
        zero_rows<HD, kBlockThreads>(out_h, q_stride, q0, q_end);
        for (int t = q0 + threadIdx.x; t < q_end; t += kBlockThreads)
            lse_h[t] = 0.0f;
        return;
    }
    const int kv_end = min(q0 + kFixedRows, len), n_tiles = (kv_end + kKeys - 1) / kKeys;

    if (threadIdx.x == 0) bar.init();
    __syncthreads();
    const int warp_index = uniform_warp_index();
    if (warp_index >= kConsumers / kWarp) { /* the producer: one lane issues every load, then leaves */
        set_max_registers<kProducerRegisters>(false);
        if (threadIdx.x == kConsumers) {
            mbarrier_arrive_expect_tx(bar.fixed(), L::fixed_bytes);
            load_tile_halves<HD>(L::fixed(base, 0), L::fixed_half, &q_map, h, q0, b, bar.fixed());
            for (int tile = 0; tile < n_tiles; tile++) {
                const int stage = tile % kStages;
                /* the stage's previous tile (tile - kStages) has been read by every consumer */
                if (tile >= kStages) mbarrier_wait(bar.empty(stage), (uint32_t)(tile / kStages - 1) & 1u);
                mbarrier_arrive_expect_tx(bar.full(stage), L::stage_bytes);
                load_tile_halves<HD>(L::stream(base, stage, 0), L::stream_half, &k_map, kvh, tile * kKeys, b,
                                     bar.full(stage));
                load_tile_halves<HD>(L::stream(base, stage, 1), L::stream_half, &v_map, kvh, tile * kKeys, b,
                                     bar.full(stage));
            }
        }
        return;
    }

    set_max_registers<kConsumerRegisters>(true);
    const int warpgroup = warp_index / 4, warp = warp_index % 4;
    const int row0 = q0 + warpgroup * 64 + warp * 16; /* this warp's 16 rows */
    const uint32_t q_rows = warpgroup * 64 * kSwizzleRow;
    float o[kOutTiles][4] = {};
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    mbarrier_wait(bar.fixed(), 0);
    for (int tile = 0; tile < n_tiles; tile++) {
        const int stage = tile % kStages;
        const uint32_t parity = (uint32_t)(tile / kStages) & 1u;
        mbarrier_wait(bar.full(stage), parity);
        const uint32_t k_tile = L::stream(base, stage, 0), v_tile = L::stream(base, stage, 1);

        /* S = Q K^T */
        float sc[kScoreTiles][4] = {};
        fence_registers<kScoreTiles * 4>(&sc[0][0]);
        wgmma_fence();
        wgmma_rows_product<HD, kKeys>(&sc[0][0], L::fixed(base, 0), L::fixed_half, q_rows, k_tile, L::stream_half);
        wgmma_commit();
        wgmma_wait_all();
        fence_registers<kScoreTiles * 4>(&sc[0][0]);

        float tile_max[2];
        mask_scores<kScoreTiles>(sc, row0, tile * kKeys, kv_end, s.scale_log2, tile_max);
        online_softmax_update<kScoreTiles, kOutTiles>(sc, o, tile_max, row_max, row_sum);

        /* O += P V: 8 steps of 16 keys. P is packed to bf16 before the batch: registers written
         * between the wgmmas of a batch would make ptxas insert a fence at each. */
        uint32_t p[kKeys / 16][4];
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; kk++)
            a_from_accumulators(p[kk], sc[2 * kk], sc[2 * kk + 1]);
        fence_registers<kOutTiles * 4>(&o[0][0]);
        fence_registers<kKeys / 16 * 4>(&p[0][0]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; kk++)
            wgmma_rs_hd<HD>(&o[0][0], p[kk], n_major_step(v_tile, L::stream_half, kk));
        wgmma_commit();
        wgmma_wait_all();
        fence_registers<kOutTiles * 4>(&o[0][0]);
        fence_registers<kKeys / 16 * 4>(&p[0][0]);

        mbarrier_arrive(bar.empty(stage)); /* this thread's reads of the stage are done */
    }
    store_output_rows<kOutTiles>(out_h, lse_h, q_stride, o, row_max, row_sum, row0, q_end, len);
#endif
}

/* The backward's two kernels in one template: DKDV (block = 128 keys of a kv head; out0 = dK,
 * out1 = dV) or dQ (block = 128 queries of a head; out0 = dQ). "Rows" are the block's fixed
 * tokens (keys or queries), "columns" the streamed ones. delta = rowsum(dO * O) per query. */
template <int HD, bool DKDV>
__global__ void __launch_bounds__(wgmma_path::kBlockThreads, 1)
    attention_backward_sm90_kernel(float *out0, float *out1,
                                   const __grid_constant__ wgmma_path::backward_maps maps, const float *lse,
                                   const float *delta, const int *lengths, shape s) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(TGA_CUDA_HOST_EMULATION)
    using namespace wgmma_path;
    using L = backward_layout<HD>;
    constexpr int kTile = kBackwardTile, kScoreTiles = kTile / 8, kOutTiles = HD / 8, kSteps = kTile / 16;
    extern __shared__ __align__(1024) unsigned char smem[];
    const uint32_t base = tiles_base(smem);
    const barriers bar = {base + L::barrier_offset};

    const int b = blockIdx.z, head = blockIdx.y; /* a kv head (DKDV) or a query head (dQ) */
    const int kvh = DKDV ? head : head / s.group;
    const int r0 = (DKDV ? (int)blockIdx.x : (int)(gridDim.x - 1 - blockIdx.x)) * kFixedRows;
    const int len = sample_length(lengths, b, s.T), r_end = min(r0 + kFixedRows, s.T);
    const size_t out_stride = (size_t)(DKDV ? s.KVH : s.H) * HD;
    float *out0_h = out0 + (size_t)b * s.T * out_stride + (size_t)head * HD;
    float *out1_h = DKDV ? out1 + (size_t)b * s.T * out_stride + (size_t)head * HD : nullptr;
    if (r0 >= len) { /* padding only: no gradient reaches these rows */
        zero_rows<HD, kBlockThreads>(out0_h, out_stride, r0, r_end);
        if (DKDV) zero_rows<HD, kBlockThreads>(out1_h, out_stride, r0, r_end);
        return;
    }
    /* dK/dV: the query tiles from r0 (causal: earlier queries see none of these keys) to len, per
     * query head of the group; dQ: the key tiles up to the block's last real query */
    const int per_head = (len - r0 + kTile - 1) / kTile;
    const int n_tiles = DKDV ? s.group * per_head : (min(r0 + kFixedRows, len) + kTile - 1) / kTile;
    auto tile_head = [&](int tile) { return DKDV ? kvh * s.group + tile / per_head : kvh; };
    auto tile_first = [&](int tile) { return DKDV ? r0 + kTile * (tile % per_head) : kTile * tile; };

    if (threadIdx.x == 0) bar.init();
    __syncthreads();
    const int warp_index = uniform_warp_index();
    if (warp_index >= kConsumers / kWarp) { /* the producer */
        set_max_registers<kProducerRegisters>(false);
        if (threadIdx.x == kConsumers) {
            mbarrier_arrive_expect_tx(bar.fixed(), 2 * L::fixed_bytes);
            for (int t = 0; t < 2; t++)
                load_tile_halves<HD>(L::fixed(base, t), L::fixed_half, &maps.fixed[t], head, r0, b,
                                     bar.fixed());
            for (int tile = 0; tile < n_tiles; tile++) {
                const int stage = tile % kStages;
                if (tile >= kStages) mbarrier_wait(bar.empty(stage), (uint32_t)(tile / kStages - 1) & 1u);
                mbarrier_arrive_expect_tx(bar.full(stage), L::stage_bytes);
                for (int t = 0; t < 2; t++)
                    load_tile_halves<HD>(L::stream(base, stage, t), L::stream_half, &maps.stream[t],
                                         tile_head(tile), tile_first(tile), b, bar.full(stage));
            }
        }
        return;
    }

    set_max_registers<kConsumerRegisters>(true);
    const int warpgroup = warp_index / 4, warp = warp_index % 4;
    const int row0 = r0 + warpgroup * 64 + warp * 16; /* this warp's 16 rows */
    const uint32_t rows = warpgroup * 64 * kSwizzleRow;
    constexpr int kOut1Tiles = DKDV ? kOutTiles : 1;
    float acc0[kOutTiles][4] = {}, acc1[kOut1Tiles][4] = {};
    /* dQ: the statistics of this thread's two query rows, fixed for the block */
    float row_lse2[2] = {0.0f, 0.0f}, row_delta[2] = {0.0f, 0.0f};
    if (!DKDV) {
        const float *lse_h = lse + ((size_t)b * s.H + head) * s.T,
                    *delta_h = delta + ((size_t)b * s.H + head) * s.T;
        for (int i = 0; i < 2; i++) {
            const int row = row0 + (threadIdx.x % kWarp) / 4 + 8 * i;
            row_lse2[i] = row < len ? lse_h[row] * kLog2e : 0.0f;
            row_delta[i] = row < len ? delta_h[row] : 0.0f;
        }
    }
    mbarrier_wait(bar.fixed(), 0);
    for (int tile = 0; tile < n_tiles; tile++) {
        const int stage = tile % kStages;
        const uint32_t parity = (uint32_t)(tile / kStages) & 1u;
        const int c0 = tile_first(tile);
        /* A tile that is entirely above the diagonal for this warpgroup's 64 rows adds exact zeros
         * (dK/dV: its queries all precede the keys; dQ: its keys all follow the queries): skipped,
         * its stage released at once. The test is uniform over the warpgroup. */
        const int wg_first = r0 + warpgroup * 64;
        if (DKDV ? c0 + kTile - 1 < wg_first : c0 > wg_first + 63) {
            mbarrier_wait(bar.full(stage), parity);
            mbarrier_arrive(bar.empty(stage));
            continue;
        }
        mbarrier_wait(bar.full(stage), parity);
        const uint32_t s0 = L::stream(base, stage, 0), s1 = L::stream(base, stage, 1);

        /* x = fixed0 stream0^T (S^T = K Q^T, or S = Q K^T), y = fixed1 stream1^T (dP^T = V dO^T, or
         * dP = dO V^T) */
        float x[kScoreTiles][4] = {}, y[kScoreTiles][4] = {};
        fence_registers<kScoreTiles * 4>(&x[0][0]);
        fence_registers<kScoreTiles * 4>(&y[0][0]);
        wgmma_fence();
        wgmma_rows_product<HD, kTile>(&x[0][0], L::fixed(base, 0), L::fixed_half, rows, s0, L::stream_half);
        wgmma_rows_product<HD, kTile>(&y[0][0], L::fixed(base, 1), L::fixed_half, rows, s1, L::stream_half);
        wgmma_commit();
        wgmma_wait_all();
        fence_registers<kScoreTiles * 4>(&x[0][0]);
        fence_registers<kScoreTiles * 4>(&y[0][0]);

        /* x -> P (or P^T), y -> dS (or dS^T); dK/dV read the statistics of each column's query */
        const float *lse_q = lse + ((size_t)b * s.H + tile_head(tile)) * s.T;
        const float *delta_q = delta + ((size_t)b * s.H + tile_head(tile)) * s.T;
#pragma unroll
        for (int n = 0; n < kScoreTiles; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = row0 + fragment_row(e), c = c0 + fragment_col(n, e);
                const int query = DKDV ? c : r, key = DKDV ? r : c;
                const bool real = query < len;
                const float lse2 = DKDV ? (real ? lse_q[query] * kLog2e : 0.0f) : row_lse2[e >> 1];
                const float dl = DKDV ? (real ? delta_q[query] : 0.0f) : row_delta[e >> 1];
                probabilities_and_dscores(x[n][e], y[n][e], query >= key && real, s.scale_log2, lse2, dl);
            }

        /* dK/dV: dV += P^T dO, dK += dS^T Q; dQ: dQ += dS K (stream0 is Q or K), all N-major */
        uint32_t p[kSteps][4], ds[kSteps][4];
#pragma unroll
        for (int kk = 0; kk < kSteps; kk++) {
            a_from_accumulators(p[kk], x[2 * kk], x[2 * kk + 1]);
            a_from_accumulators(ds[kk], y[2 * kk], y[2 * kk + 1]);
        }
        fence_registers<kOutTiles * 4>(&acc0[0][0]);
        fence_registers<kOut1Tiles * 4>(&acc1[0][0]);
        fence_registers<kSteps * 4>(&p[0][0]);
        fence_registers<kSteps * 4>(&ds[0][0]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kSteps; kk++) {
            if constexpr (DKDV) wgmma_rs_hd<HD>(&acc1[0][0], p[kk], n_major_step(s1, L::stream_half, kk));
            wgmma_rs_hd<HD>(&acc0[0][0], ds[kk], n_major_step(s0, L::stream_half, kk));
        }
        wgmma_commit();
        wgmma_wait_all();
        fence_registers<kOutTiles * 4>(&acc0[0][0]);
        fence_registers<kOut1Tiles * 4>(&acc1[0][0]);
        fence_registers<kSteps * 4>(&p[0][0]);
        fence_registers<kSteps * 4>(&ds[0][0]);

        mbarrier_arrive(bar.empty(stage));
    }
    if constexpr (DKDV) {
        const float dk_scale[2] = {s.scale, s.scale}, dv_scale[2] = {1.0f, 1.0f};
        store_scaled_rows<kOutTiles>(out0_h, out_stride, acc0, row0, r_end, dk_scale);
        store_scaled_rows<kOutTiles>(out1_h, out_stride, acc1, row0, r_end, dv_scale);
    } else {
        float dq_scale[2];
        for (int i = 0; i < 2; i++)
            dq_scale[i] = row0 + (int)(threadIdx.x % kWarp) / 4 + 8 * i < len ? s.scale : 0.0f;
        store_scaled_rows<kOutTiles>(out0_h, out_stride, acc0, row0, r_end, dq_scale);
    }
#endif
}

namespace wgmma_path {

/* cuTensorMapEncodeTiled, from the driver through the runtime (libcuda is never linked) */
typedef CUresult (*encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                              const cuuint64_t *, const cuuint32_t *, const cuuint32_t *,
                              CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                              CUtensorMapFloatOOBfill);
encode_fn encode_tiled;
bool available;       /* the device runs the sm_90a code and the driver can encode tensor maps */
bool selected = true; /* tga_cuda_select_attention_kernel: "auto"/"wgmma" (true) or "mma" */
char unavailable_why[256] = "not probed";

__global__ void probe_kernel(int *runs_sm90a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(TGA_CUDA_HOST_EMULATION)
    *runs_sm90a = 1;
#else
    *runs_sm90a = 0;
#endif
}

/* Tensor [B][T][row_elems] bf16, boxes of 64 columns x box_rows rows of one sample. */
bool make_map(CUtensorMap *map, const void *data, int B, int T, int row_elems, int box_rows) {
    const cuuint64_t dims[3] = {(cuuint64_t)row_elems, (cuuint64_t)T, (cuuint64_t)B};
    const cuuint64_t strides[2] = {(cuuint64_t)row_elems * 2, (cuuint64_t)T * row_elems * 2};
    const cuuint32_t box[3] = {kColumns, (cuuint32_t)box_rows, 1}, element_strides[3] = {1, 1, 1};
    const CUresult r =
        encode_tiled(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void *>(data), dims, strides, box,
                     element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                     CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r == CUDA_SUCCESS) return true;
    char detail[128];
    snprintf(detail, sizeof detail, "cuTensorMapEncodeTiled failed (CUresult %d) for [%d, %d, %d] bf16",
             (int)r, B, T, row_elems);
    tga_cuda_record_error(__FILE__, __LINE__, "attention (wgmma)", detail);
    return false;
}

/* Consecutive 256-byte-aligned parts of the backend scratch (NULL, recorded, if it cannot grow). */
template <int N> bool carve_scratch(void *parts[N], const size_t bytes[N]) {
    size_t total = 0;
    for (int i = 0; i < N; i++)
        total += tga_cuda_align_up(bytes[i]);
    unsigned char *p = static_cast<unsigned char *>(tga_cuda_scratch(total));
    if (!p) return false;
    for (int i = 0; i < N; i++) {
        parts[i] = p;
        p += tga_cuda_align_up(bytes[i]);
    }
    return true;
}

template <int HD>
void launch_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                    const int *lengths, int B, const shape &s) {
    const size_t nq = (size_t)B * s.T * s.H * HD, nkv = (size_t)B * s.T * s.KVH * HD;
    void *part[3];
    const size_t bytes[3] = {nq * 2, nkv * 2, nkv * 2};
    if (!carve_scratch<3>(part, bytes)) return;
    uint16_t *q16 = static_cast<uint16_t *>(part[0]), *k16 = static_cast<uint16_t *>(part[1]),
             *v16 = static_cast<uint16_t *>(part[2]);
    const tga_cuda_rows_job in[] = {
        {q16, q, (size_t)s.H * HD}, {k16, k, (size_t)s.KVH * HD}, {v16, v, (size_t)s.KVH * HD}};
    tga_cuda_rows_to_bf16(in, 3, lengths, B, s.T);
    CUtensorMap q_map, k_map, v_map;
    if (!make_map(&q_map, q16, B, s.T, s.H * HD, kFixedRows) ||
        !make_map(&k_map, k16, B, s.T, s.KVH * HD, kForwardKeys) ||
        !make_map(&v_map, v16, B, s.T, s.KVH * HD, kForwardKeys))
        return;
    const dim3 grid(ceil_div((size_t)s.T, kFixedRows), (unsigned)s.H, (unsigned)B);
    attention_forward_sm90_kernel<HD><<<grid, kBlockThreads, forward_layout<HD>::bytes, tga_cuda_stream>>>(
        out, lse, q_map, k_map, v_map, lengths, s);
    TGA_CUDA_CHECK_LAUNCH("attention_forward_sm90_kernel");
}

template <int HD>
void launch_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                     const float *v, const float *out, const float *lse, const int *lengths, int B,
                     const shape &s) {
    const size_t nq = (size_t)B * s.T * s.H * HD, nkv = (size_t)B * s.T * s.KVH * HD;
    void *part[5];
    const size_t bytes[5] = {(size_t)B * s.H * s.T * sizeof(float), nq * 2, nq * 2, nkv * 2, nkv * 2};
    if (!carve_scratch<5>(part, bytes)) return;
    float *delta = static_cast<float *>(part[0]);
    uint16_t *q16 = static_cast<uint16_t *>(part[1]), *do16 = static_cast<uint16_t *>(part[2]),
             *k16 = static_cast<uint16_t *>(part[3]), *v16 = static_cast<uint16_t *>(part[4]);
    launch_delta(delta, dout, out, lengths, B, s, HD);
    const tga_cuda_rows_job in[] = {{q16, q, (size_t)s.H * HD},
                                    {do16, dout, (size_t)s.H * HD},
                                    {k16, k, (size_t)s.KVH * HD},
                                    {v16, v, (size_t)s.KVH * HD}};
    tga_cuda_rows_to_bf16(in, 4, lengths, B, s.T);
    backward_maps kv_maps, q_maps; /* dK/dV: K, V fixed, Q, dO streamed; dQ: Q, dO fixed, K, V streamed */
    const int qe = s.H * HD, kve = s.KVH * HD;
    if (!make_map(&kv_maps.fixed[0], k16, B, s.T, kve, kFixedRows) ||
        !make_map(&kv_maps.fixed[1], v16, B, s.T, kve, kFixedRows) ||
        !make_map(&kv_maps.stream[0], q16, B, s.T, qe, kBackwardTile) ||
        !make_map(&kv_maps.stream[1], do16, B, s.T, qe, kBackwardTile) ||
        !make_map(&q_maps.fixed[0], q16, B, s.T, qe, kFixedRows) ||
        !make_map(&q_maps.fixed[1], do16, B, s.T, qe, kFixedRows) ||
        !make_map(&q_maps.stream[0], k16, B, s.T, kve, kBackwardTile) ||
        !make_map(&q_maps.stream[1], v16, B, s.T, kve, kBackwardTile))
        return;
    const unsigned blocks = ceil_div((size_t)s.T, kFixedRows);
    attention_backward_sm90_kernel<HD, true>
        <<<dim3(blocks, (unsigned)s.KVH, (unsigned)B), kBlockThreads, backward_layout<HD>::bytes,
           tga_cuda_stream>>>(dk, dv, kv_maps, lse, delta, lengths, s);
    TGA_CUDA_CHECK_LAUNCH("attention_backward_sm90_kernel (dK/dV)");
    attention_backward_sm90_kernel<HD, false>
        <<<dim3(blocks, (unsigned)s.H, (unsigned)B), kBlockThreads, backward_layout<HD>::bytes,
           tga_cuda_stream>>>(dq, nullptr, q_maps, lse, delta, lengths, s);
    TGA_CUDA_CHECK_LAUNCH("attention_backward_sm90_kernel (dQ)");
}

template <int HD> bool set_smem_limits(char *why, size_t why_size) {
    return set_smem_limit(attention_forward_sm90_kernel<HD>, forward_layout<HD>::bytes,
                          "attention forward (wgmma)", HD, why, why_size) &&
           set_smem_limit(attention_backward_sm90_kernel<HD, true>, backward_layout<HD>::bytes,
                          "attention dK/dV (wgmma)", HD, why, why_size) &&
           set_smem_limit(attention_backward_sm90_kernel<HD, false>, backward_layout<HD>::bytes,
                          "attention dQ (wgmma)", HD, why, why_size);
}

/* Whether the wgmma path can run here; the reason when not. Never fails the backend: without it
 * the mma.sync kernels serve every head width. */
bool probe(void) {
    available = false;
    int *flag = nullptr, runs_sm90a = 0;
    if (cudaMalloc(reinterpret_cast<void **>(&flag), sizeof *flag) != cudaSuccess) {
        snprintf(unavailable_why, sizeof unavailable_why, "cannot allocate the probe's flag");
        cudaGetLastError();
        return false;
    }
    probe_kernel<<<1, 1, 0, tga_cuda_stream>>>(flag);
    const cudaError_t launched = cudaGetLastError();
    const cudaError_t copied =
        launched == cudaSuccess
            ? cudaMemcpyAsync(&runs_sm90a, flag, sizeof runs_sm90a, cudaMemcpyDeviceToHost, tga_cuda_stream)
            : launched;
    const cudaError_t synced = copied == cudaSuccess ? cudaStreamSynchronize(tga_cuda_stream) : copied;
    cudaFree(flag);
    if (synced != cudaSuccess) {
        snprintf(unavailable_why, sizeof unavailable_why, "the probe kernel failed: %s",
                 cudaGetErrorString(synced));
        cudaGetLastError();
        return false;
    }
    if (!runs_sm90a) {
        snprintf(
            unavailable_why, sizeof unavailable_why,
            "the device does not run this library's sm_90a code (not an H100/H200, or built without 90a)");
        return false;
    }
    void *fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess || !fn) {
        snprintf(unavailable_why, sizeof unavailable_why,
                 "the driver does not provide cuTensorMapEncodeTiled");
        cudaGetLastError();
        return false;
    }
    encode_tiled = reinterpret_cast<encode_fn>(fn);
    char why[256];
    if (!set_smem_limits<64>(why, sizeof why) || !set_smem_limits<128>(why, sizeof why)) {
        snprintf(unavailable_why, sizeof unavailable_why, "%s", why);
        cudaGetLastError();
        return false;
    }
    available = true;
    return true;
}

bool runs(int head_dim) { return available && selected && (head_dim == 64 || head_dim == 128); }

}  // namespace wgmma_path

bool forward_sm90(float *out, float *lse, const float *q, const float *k, const float *v, const int *lengths,
                  int B, int head_dim, const shape &s) {
    if (!wgmma_path::runs(head_dim)) return false;
    if (head_dim == 64)
        wgmma_path::launch_forward<64>(out, lse, q, k, v, lengths, B, s);
    else
        wgmma_path::launch_forward<128>(out, lse, q, k, v, lengths, B, s);
    return true;
}

bool backward_sm90(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                   const float *v, const float *out, const float *lse, const int *lengths, int B,
                   int head_dim, const shape &s) {
    if (!wgmma_path::runs(head_dim)) return false;
    if (head_dim == 64)
        wgmma_path::launch_backward<64>(dq, dk, dv, dout, q, k, v, out, lse, lengths, B, s);
    else
        wgmma_path::launch_backward<128>(dq, dk, dv, dout, q, k, v, out, lse, lengths, B, s);
    return true;
}

void probe_sm90(void) { wgmma_path::probe(); }

}  // namespace attention
}  // namespace tga_cuda

using namespace tga_cuda::attention;

/* Exported (runtime/backend.c finds it with dlsym for tga_backend_set_attention's tga-mma and
 * tga-wgmma). */
extern "C" __attribute__((visibility("default"))) int tga_cuda_select_attention_kernel(const char *kind, char *why,
                                                                                      size_t why_size) {
    if (strcmp(kind, "mma") == 0) {
        wgmma_path::selected = false;
        return 1;
    }
    if (strcmp(kind, "auto") == 0) {
        wgmma_path::selected = true;
        return 1;
    }
    if (strcmp(kind, "wgmma") == 0) {
        if (!wgmma_path::available) {
            snprintf(why, why_size, "the wgmma attention kernel cannot run here: %s",
                     wgmma_path::unavailable_why);
            return 0;
        }
        wgmma_path::selected = true;
        return 1;
    }
    snprintf(why, why_size, "\"%s\" is not an attention kernel (expected auto, mma or wgmma)", kind);
    return 0;
}

extern "C" const char *tga_cuda_attention_kernels(void) {
    return wgmma_path::available ? "tga attention wgmma (hd 64/128) + mma.sync" : "tga attention mma.sync";
}
