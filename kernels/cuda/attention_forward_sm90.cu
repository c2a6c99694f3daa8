/* Causal grouped-query attention forward for Hopper (sm_90a): TMA tile loads, an mbarrier
 * pipeline and warpgroup MMA (wgmma). The same contract and the same arithmetic as the mma.sync
 * kernel (attention_forward.cu, which every other device and head width uses): Q, K, V and P
 * rounded to bf16 for the products, fp32 accumulation, an online softmax in the exp2 domain.
 * Unverified on GPU until tests/gpu/run.sh has passed on an H100/H200; checked under
 * tests/gpu/emulate.sh, whose emulator implements the PTX semantics hopper.cuh relies on.
 *
 * The op's tensors are fp32; TMA and wgmma read bf16, so q, k and v are first converted into the
 * backend scratch (rows of padding written as zeros, attention_cudnn_convert.cu), one pass each.
 *
 * Block = (128 queries, query head, sample), two warpgroups of 64 query rows (256 threads).
 * Shared memory holds Q (128 x HD) and two stages of K and V (128 keys x HD each), every tile as
 * HD / 64 column halves of 128-byte-swizzled rows (hopper.cuh). Thread 0 loads Q and the first two
 * key tiles with TMA, each stage completing on its "full" mbarrier; for every key tile up to the
 * diagonal, each warpgroup computes S = Q K^T (wgmma m64n128k16, both operands from shared
 * memory), masks and updates its online softmax in registers, then O += P V (wgmma
 * m64nHDk16, P from registers, V N-major from shared memory), and arrives on the stage's "empty"
 * mbarrier; when all 256 threads have, thread 0 refills the stage with the tile two ahead. Keys
 * past the sample's length are zeros (converted so) or beyond T (TMA fills zeros), and masked. */
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

constexpr int kRows = 128;                        /* queries per block: two warpgroups of 64 */
constexpr int kKeys = 128;                        /* keys per tile */
constexpr int kStages = 2;                        /* K/V tiles in flight */
constexpr int kConsumers = 2 * kWarpgroup;        /* two warpgroups of 64 query rows */
constexpr int kBlockThreads = kConsumers + kWarp; /* and one producer warp that issues the TMA loads */
constexpr int kColumns = 64; /* bf16 per 128-byte swizzled row: one TMA box is 64 columns wide */

template <int HD> struct layout {
    static constexpr int halves = HD / kColumns;
    static constexpr uint32_t q_half = kRows * kSwizzleRow;  /* bytes of one column half of Q */
    static constexpr uint32_t kv_half = kKeys * kSwizzleRow; /* ... of K or V */
    static constexpr uint32_t q_bytes = halves * q_half;
    static constexpr uint32_t kv_bytes = halves * kv_half;
    static constexpr uint32_t k_offset = q_bytes;
    static constexpr uint32_t v_offset = k_offset + kStages * kv_bytes;
    static constexpr uint32_t barrier_offset = v_offset + kStages * kv_bytes; /* q, full[2], empty[2] */
    /* + slack to round the dynamic shared memory's start up to a swizzle atom */
    static constexpr size_t bytes = barrier_offset + 8 * (1 + 2 * kStages) + kSwizzleAtom;
};

/* K and V of key tile `tile` (kv head kvh of sample b) into stage `stage`. */
template <int HD>
__device__ inline void load_kv(uint32_t base, const CUtensorMap *k_map, const CUtensorMap *v_map, int tile,
                               int stage, int kvh, int b, uint32_t full) {
    using L = layout<HD>;
    mbarrier_arrive_expect_tx(full, 2 * L::kv_bytes);
#pragma unroll
    for (int j = 0; j < L::halves; j++) {
        const int col = kvh * HD + j * kColumns;
        tma_load_3d(base + L::k_offset + stage * L::kv_bytes + j * L::kv_half, k_map, col, tile * kKeys, b,
                    full);
        tma_load_3d(base + L::v_offset + stage * L::kv_bytes + j * L::kv_half, v_map, col, tile * kKeys, b,
                    full);
    }
}

} // namespace wgmma_path

/* In namespace attention (not wgmma_path): the host emulator gives every attention kernel's
 * extern __shared__ array one definition, tga_cuda::attention::smem. */
template <int HD>
__global__ void __launch_bounds__(wgmma_path::kBlockThreads, 1)
    attention_forward_sm90_kernel(float *out, float *lse, const __grid_constant__ CUtensorMap q_map,
                                  const __grid_constant__ CUtensorMap k_map,
                                  const __grid_constant__ CUtensorMap v_map, const int *lengths, shape s) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(TGA_CUDA_HOST_EMULATION)
    using namespace wgmma_path;
    using L = layout<HD>;
    constexpr int kScoreTiles = kKeys / 8, kOutTiles = HD / 8;
    extern __shared__ __align__(1024) unsigned char smem[];
    const uint32_t base = (smem_address(smem) + kSwizzleAtom - 1) & ~(kSwizzleAtom - 1);
    const uint32_t q_full = base + L::barrier_offset;
    auto full = [&](int stage) { return q_full + 8 * (1 + stage); };
    auto empty = [&](int stage) { return q_full + 8 * (1 + kStages + stage); };

    const int b = blockIdx.z, h = blockIdx.y, kvh = h / s.group;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * kRows; /* the longest rows start first */
    const int len = sample_length(lengths, b, s.T), q_end = min(q0 + kRows, s.T);
    const size_t q_stride = (size_t)s.H * HD;
    float *out_h = out + (size_t)b * s.T * q_stride + (size_t)h * HD,
          *lse_h = lse + ((size_t)b * s.H + h) * s.T;
    if (q0 >= len) {
        zero_rows<HD>(out_h, q_stride, q0, q_end);
        for (int t = q0 + threadIdx.x; t < q_end; t += kBlockThreads)
            lse_h[t] = 0.0f;
        return;
    }
    const int kv_end = min(q0 + kRows, len), n_tiles = (kv_end + kKeys - 1) / kKeys;

    if (threadIdx.x == 0) {
        mbarrier_init(q_full, 1);
        for (int st = 0; st < kStages; st++) {
            mbarrier_init(full(st), 1);
            mbarrier_init(empty(st), kConsumers);
        }
        mbarrier_init_fence();
    }
    __syncthreads();
    /* the warp index through a shuffle: ptxas then knows it is warp-uniform, and the branches on it
     * below are not divergent paths around the wgmmas */
    const int warp_index = __shfl_sync(kFullMask, (int)threadIdx.x / kWarp, 0);
    if (warp_index >= kConsumers / kWarp) { /* the producer warp: one lane issues every load, then leaves */
        if (threadIdx.x % kWarp == 0) {
            mbarrier_arrive_expect_tx(q_full, L::q_bytes);
#pragma unroll
            for (int j = 0; j < L::halves; j++)
                tma_load_3d(base + j * L::q_half, &q_map, h * HD + j * kColumns, q0, b, q_full);
            for (int tile = 0; tile < n_tiles; tile++) {
                const int stage = tile % kStages;
                /* the stage's previous tile (tile - kStages) has been read by every consumer */
                if (tile >= kStages) mbarrier_wait(empty(stage), (uint32_t)(tile / kStages - 1) & 1u);
                load_kv<HD>(base, &k_map, &v_map, tile, stage, kvh, b, full(stage));
            }
        }
        return;
    }

    const int warpgroup = warp_index / 4, warp = warp_index % 4;
    const int row0 = q0 + warpgroup * 64 + warp * 16; /* this warp's 16 rows */
    float o[kOutTiles][4] = {};
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    mbarrier_wait(q_full, 0);
    for (int tile = 0; tile < n_tiles; tile++) {
        const int stage = tile % kStages;
        const uint32_t parity = (uint32_t)(tile / kStages) & 1u;
        mbarrier_wait(full(stage), parity);

        /* S = Q K^T: HD / 16 steps of 16 columns, each inside one 64-column half */
        float sc[kScoreTiles][4] = {};
        fence_registers<kScoreTiles * 4>(&sc[0][0]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            const uint32_t column = (uint32_t)(kk % 4) * 32, half = kk / 4;
            const uint64_t a =
                descriptor(base + half * L::q_half + warpgroup * 64 * kSwizzleRow + column, 16, kSwizzleAtom);
            const uint64_t k = descriptor(
                base + L::k_offset + stage * L::kv_bytes + half * L::kv_half + column, 16, kSwizzleAtom);
            wgmma_ss_n128(&sc[0][0], a, k, 1);
        }
        wgmma_commit();
        wgmma_wait_all();
        fence_registers<kScoreTiles * 4>(&sc[0][0]);

        float tile_max[2];
        mask_scores<kScoreTiles>(sc, row0, tile * kKeys, kv_end, s.scale_log2, tile_max);
        online_softmax_update<kScoreTiles, kOutTiles>(sc, o, tile_max, row_max, row_sum);

        /* O += P V: 8 steps of 16 keys (two groups of 8 rows of V, 2048 bytes); V is N-major, its
         * two column halves (HD 128) one kv_half apart */
        uint32_t p[kKeys / 16][4]; /* P in bf16, packed before the batch: registers written between
                                    * the wgmmas of a batch would make ptxas insert a fence at each */
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; kk++)
            a_from_accumulators(p[kk], sc[2 * kk], sc[2 * kk + 1]);
        fence_registers<kOutTiles * 4>(&o[0][0]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; kk++) {
            const uint64_t v = descriptor(base + L::v_offset + stage * L::kv_bytes + kk * 2 * kSwizzleAtom,
                                          L::kv_half, kSwizzleAtom);
            if constexpr (HD == 128)
                wgmma_rs_n128_tn(&o[0][0], p[kk], v, 1);
            else
                wgmma_rs_n64_tn(&o[0][0], p[kk], v, 1);
        }
        wgmma_commit();
        wgmma_wait_all();
        fence_registers<kOutTiles * 4>(&o[0][0]);

        mbarrier_arrive(empty(stage)); /* this thread's reads of the stage are done */
    }
    store_output_rows<kOutTiles>(out_h, lse_h, q_stride, o, row_max, row_sum, row0, q_end, len);
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

/* Tensor [B][T][row_elems] bf16, boxes of 64 columns x 128 rows of one sample. */
bool make_map(CUtensorMap *map, const void *data, int B, int T, int row_elems) {
    const cuuint64_t dims[3] = {(cuuint64_t)row_elems, (cuuint64_t)T, (cuuint64_t)B};
    const cuuint64_t strides[2] = {(cuuint64_t)row_elems * 2, (cuuint64_t)T * row_elems * 2};
    const cuuint32_t box[3] = {kColumns, kRows, 1}, element_strides[3] = {1, 1, 1};
    static_assert(kRows == kKeys, "Q and K/V tiles share the box shape");
    const CUresult r =
        encode_tiled(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void *>(data), dims, strides, box,
                     element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                     CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r == CUDA_SUCCESS) return true;
    char detail[128];
    snprintf(detail, sizeof detail, "cuTensorMapEncodeTiled failed (CUresult %d) for [%d, %d, %d] bf16",
             (int)r, B, T, row_elems);
    tga_cuda_record_error(__FILE__, __LINE__, "attention_forward (wgmma)", detail);
    return false;
}

template <int HD>
void launch(float *out, float *lse, const float *q, const float *k, const float *v, const int *lengths, int B,
            const shape &s) {
    const size_t nq = (size_t)B * s.T * s.H * HD, nkv = (size_t)B * s.T * s.KVH * HD;
    const size_t q_bytes = tga_cuda_align_up(nq * 2), kv_bytes = tga_cuda_align_up(nkv * 2);
    unsigned char *scratch = static_cast<unsigned char *>(tga_cuda_scratch(q_bytes + 2 * kv_bytes));
    if (!scratch) return;
    uint16_t *q16 = reinterpret_cast<uint16_t *>(scratch),
             *k16 = reinterpret_cast<uint16_t *>(scratch + q_bytes),
             *v16 = reinterpret_cast<uint16_t *>(scratch + q_bytes + kv_bytes);
    tga_cuda_rows_to_bf16(q16, q, lengths, B, s.T, (size_t)s.H * HD);
    tga_cuda_rows_to_bf16(k16, k, lengths, B, s.T, (size_t)s.KVH * HD);
    tga_cuda_rows_to_bf16(v16, v, lengths, B, s.T, (size_t)s.KVH * HD);
    CUtensorMap q_map, k_map, v_map;
    if (!make_map(&q_map, q16, B, s.T, s.H * HD) || !make_map(&k_map, k16, B, s.T, s.KVH * HD) ||
        !make_map(&v_map, v16, B, s.T, s.KVH * HD))
        return;
    const dim3 grid(ceil_div((size_t)s.T, kRows), (unsigned)s.H, (unsigned)B);
    attention_forward_sm90_kernel<HD><<<grid, kBlockThreads, layout<HD>::bytes, tga_cuda_stream>>>(
        out, lse, q_map, k_map, v_map, lengths, s);
    TGA_CUDA_CHECK_LAUNCH("attention_forward_sm90_kernel");
}

/* Whether the wgmma path can run here; the reason when not. Never fails the backend: without it
 * the mma.sync kernel serves every head width. */
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
    if (!set_smem_limit(attention_forward_sm90_kernel<64>, layout<64>::bytes, "attention forward (wgmma)", 64,
                        why, sizeof why) ||
        !set_smem_limit(attention_forward_sm90_kernel<128>, layout<128>::bytes, "attention forward (wgmma)",
                        128, why, sizeof why)) {
        snprintf(unavailable_why, sizeof unavailable_why, "%s", why);
        cudaGetLastError();
        return false;
    }
    available = true;
    return true;
}

} // namespace wgmma_path

bool forward_sm90(float *out, float *lse, const float *q, const float *k, const float *v, const int *lengths,
                  int B, int head_dim, const shape &s) {
    if (!wgmma_path::available || !wgmma_path::selected || (head_dim != 64 && head_dim != 128)) return false;
    if (head_dim == 64)
        wgmma_path::launch<64>(out, lse, q, k, v, lengths, B, s);
    else
        wgmma_path::launch<128>(out, lse, q, k, v, lengths, B, s);
    return true;
}

void probe_sm90(void) { wgmma_path::probe(); }

} // namespace attention
} // namespace tga_cuda

using namespace tga_cuda::attention;

extern "C" int tga_cuda_select_attention_kernel(const char *kind, char *why, size_t why_size) {
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

extern "C" const char *tga_cuda_attention_kernel_name(int head_dim) {
    const bool wgmma = wgmma_path::available && wgmma_path::selected && (head_dim == 64 || head_dim == 128);
    return wgmma ? "wgmma (sm_90a, TMA)" : "mma.sync (sm_80+)";
}
