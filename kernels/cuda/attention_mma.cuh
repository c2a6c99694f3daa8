/* Building blocks of the flash-attention kernels (attention_forward.cu, attention_backward.cu):
 * bf16 tensor-core products with mma.sync.m16n8k16 (fp32 accumulation), their register fragments
 * read from shared-memory tiles, and the fp32 -> bf16 tile loads.
 *
 * Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and
 * t = lane % 4; each 32-bit register holds two bf16, the lower column in the low half:
 *   A 16x16 (row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
 *   B 16x8  (k x n):     b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
 *   C 16x8  (fp32):      c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
 * So a B operand is read as pairs along k: a tile that is k-contiguous in shared memory serves
 * directly; otherwise it is stored transposed when loaded. And the C tiles of a product, taken two
 * n-tiles at a time, are exactly the A fragment of the next product over that dimension (how P
 * feeds P V without leaving registers, FlashAttention-2 style).
 *
 * Shared tiles are bf16 with rows padded by 8 elements (16 bytes): the 8 rows a fragment load
 * touches then start in 8 different 4-bank groups, so the loads are free of bank conflicts for
 * every row length used here (16 + 8 ... 128 + 8, and 32 + 8, 64 + 8). */
#ifndef TGA_KERNELS_CUDA_ATTENTION_MMA_CUH
#define TGA_KERNELS_CUDA_ATTENTION_MMA_CUH

#include <cuda_bf16.h>
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {
namespace attention {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarp;
constexpr int kWarpRows = 16;                    /* rows of an mma tile: one warp's share of a block */
constexpr int kBlockRows = kWarps * kWarpRows;   /* queries (forward, dQ) or keys (dK/dV) per block */
constexpr int kKeyTile = 64;                     /* keys per step of the forward and dQ loops */
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;

/* What every attention kernel needs to know of the call. */
struct shape {
    int T, H, KVH, group; /* group = H / KVH query heads per kv head */
    float scale;          /* 1 / sqrt(hd) */
    float scale_log2;     /* scale * log2(e): scores go to exp2 */
};

/* The Hopper kernels (attention_sm90.cu): probe_sm90 finds at start-up whether this device runs
 * them; forward_sm90 and backward_sm90 run them and return true when they are available, selected
 * and the head width is 64 or 128, else return false and the caller uses the mma.sync kernels. */
void probe_sm90(void);
bool forward_sm90(float *out, float *lse, const float *q, const float *k, const float *v, const int *lengths, int B,
                  int head_dim, const shape &s);
bool backward_sm90(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                   const float *v, const float *out, const float *lse, const int *lengths, int B, int head_dim,
                   const shape &s);
/* delta[b, h, t] = dO . O per query row (0 at padding), the backward's D (attention_backward.cu) */
void launch_delta(float *delta, const float *dout, const float *out, const int *lengths, int B, const shape &s,
                  int head_dim);

__device__ inline int sample_length(const int *lengths, int b, int T) { return min(max(lengths[b], 0), T); }

__device__ inline uint32_t load_pair(const bf16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

__device__ inline uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* A fragment of the 16x16 block at (row0, col0) of a row-major tile. */
__device__ inline void load_a(uint32_t a[4], const bf16 *tile, int stride, int row0, int col0) {
    const int lane = threadIdx.x % kWarp, g = lane >> 2, t = lane & 3;
    const bf16 *p = tile + (row0 + g) * stride + col0 + 2 * t;
    a[0] = load_pair(p);
    a[1] = load_pair(p + 8 * stride);
    a[2] = load_pair(p + 8);
    a[3] = load_pair(p + 8 * stride + 8);
}

/* B fragment with B[k][n] = src[n0 + n][k0 + k]: src holds one n per row, k contiguous. */
__device__ inline void load_b(uint32_t b[2], const bf16 *src, int stride, int n0, int k0) {
    const int lane = threadIdx.x % kWarp, g = lane >> 2, t = lane & 3;
    const bf16 *p = src + (n0 + g) * stride + k0 + 2 * t;
    b[0] = load_pair(p);
    b[1] = load_pair(p + 8);
}

/* c += a b (tests/gpu/emulate.sh runs the kernels on the CPU, with an emulated mma) */
__device__ inline void mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef TGA_CUDA_HOST_EMULATION
    tga_emulated_mma_m16n8k16_bf16(c, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

/* The A fragment (16 rows x 16 columns) made of two adjacent C tiles (16 x 8 each). */
__device__ inline void a_from_accumulators(uint32_t a[4], const float left[4], const float right[4]) {
    a[0] = pack_bf16(left[0], left[1]);
    a[1] = pack_bf16(left[2], left[3]);
    a[2] = pack_bf16(right[0], right[1]);
    a[3] = pack_bf16(right[2], right[3]);
}

/* acc[16 x 8*N_TILES] += A B over K_DIM, with A read from a row-major tile (rows a_row0..+15) and
 * B from a tile that holds one output column per row (rows b_row0 + 8 n ..). */
template <int N_TILES, int K_DIM>
__device__ inline void tile_product(float acc[N_TILES][4], const bf16 *a_tile, int a_stride, int a_row0,
                                    const bf16 *b_tile, int b_stride) {
#pragma unroll
    for (int kk = 0; kk < K_DIM / 16; kk++) {
        uint32_t a[4];
        load_a(a, a_tile, a_stride, a_row0, kk * 16);
#pragma unroll
        for (int n = 0; n < N_TILES; n++) {
            uint32_t b[2];
            load_b(b, b_tile, b_stride, n * 8, kk * 16);
            mma(acc[n], a, b);
        }
    }
}

/* acc[16 x 8*N_TILES] += P B where P (16 x K_DIM) is held as C tiles p[K_DIM / 8][4] and
 * B[k][n] = b_tile[n][k] (one output column per row of b_tile, k contiguous). */
template <int N_TILES, int K_DIM>
__device__ inline void register_product(float acc[N_TILES][4], const float p[K_DIM / 8][4], const bf16 *b_tile,
                                        int b_stride) {
#pragma unroll
    for (int kk = 0; kk < K_DIM / 16; kk++) {
        uint32_t a[4];
        a_from_accumulators(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < N_TILES; n++) {
            uint32_t b[2];
            load_b(b, b_tile, b_stride, n * 8, kk * 16);
            mma(acc[n], a, b);
        }
    }
}

/* Tokens first .. first+n_rows-1 of one head (src at token 0, token stride src_stride floats)
 * into bf16 tiles: as rows (rows_tile[r][d]) and/or transposed (cols_tile[d][r]); tokens at or
 * beyond valid_end read as zero, so padding (which may hold anything) never reaches a product. */
template <int HD>
__device__ void load_tile(bf16 *rows_tile, int rows_stride, bf16 *cols_tile, int cols_stride, const float *src,
                          size_t src_stride, int first, int n_rows, int valid_end) {
    for (int idx = threadIdx.x; idx < n_rows * HD; idx += kThreads) {
        const int r = idx / HD, d = idx % HD, token = first + r;
        const bf16 x = __float2bfloat16_rn(token < valid_end ? src[(size_t)token * src_stride + d] : 0.0f);
        if (rows_tile) rows_tile[r * rows_stride + d] = x;
        if (cols_tile) cols_tile[d * cols_stride + r] = x;
    }
}

/* rows[first .. end) of one head (token stride `stride`) = 0, by a block of THREADS threads */
template <int HD, int THREADS = kThreads>
__device__ void zero_rows(float *rows, size_t stride, int first, int end) {
    for (int idx = threadIdx.x; idx < (end - first) * HD; idx += THREADS)
        rows[(size_t)(first + idx / HD) * stride + idx % HD] = 0.0f;
}

/* Raises a kernel's dynamic shared-memory limit above the default 48 KiB (start-up). */
template <class Kernel>
int set_smem_limit(Kernel kernel, size_t bytes, const char *name, int head_dim, char *why, size_t why_size) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (err == cudaSuccess) return 1;
    snprintf(why, why_size, "%s (head dim %d) needs %zu bytes of shared memory: %s", name, head_dim, bytes,
             cudaGetErrorString(err));
    return 0;
}

/* The fragment rows of this thread inside its warp's 16: g and g + 8. */
__device__ inline int fragment_row(int e) { return (threadIdx.x % kWarp) / 4 + (e >= 2 ? 8 : 0); }
/* The fragment column of element e of n-tile n: 8 n + 2 t + (e & 1). */
__device__ inline int fragment_col(int n, int e) { return n * 8 + 2 * (threadIdx.x % 4) + (e & 1); }

/* Scales and masks one tile of scores (in place, log2 domain) and returns this thread's two row
 * maxima over it, reduced across the 4 threads that share each row. */
template <int N_TILES>
__device__ inline void mask_scores(float s[N_TILES][4], int row0, int k0, int kv_end, float scale_log2,
                                   float row_max[2]) {
    row_max[0] = row_max[1] = -INFINITY;
#pragma unroll
    for (int n = 0; n < N_TILES; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = row0 + fragment_row(e), key = k0 + fragment_col(n, e);
            const float x = key <= row && key < kv_end ? s[n][e] * scale_log2 : -INFINITY;
            s[n][e] = x;
            row_max[e >> 1] = fmaxf(row_max[e >> 1], x);
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        row_max[i] = fmaxf(row_max[i], __shfl_xor_sync(kFullMask, row_max[i], 1));
        row_max[i] = fmaxf(row_max[i], __shfl_xor_sync(kFullMask, row_max[i], 2));
    }
}

/* One step of the online softmax over a masked tile of scores (log2 domain) with this thread's two
 * rows: the running maxima take the tile's, the running sums and the output accumulators are
 * rescaled to them, and the scores become p = exp2(s - max), added to the sums. Every real row
 * sees key k0 <= q0 in every tile, so its new maximum is finite; the guard keeps rows of padding
 * (-inf everywhere past their last visible key) NaN-free. */
template <int S_TILES, int O_TILES>
__device__ inline void online_softmax_update(float s[S_TILES][4], float o[O_TILES][4], const float tile_max[2],
                                             float row_max[2], float row_sum[2]) {
    float shift[2], rescale[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const float new_max = fmaxf(row_max[i], tile_max[i]);
        shift[i] = new_max == -INFINITY ? 0.0f : new_max;
        rescale[i] = exp2f(row_max[i] - shift[i]);
        row_max[i] = new_max;
        row_sum[i] *= rescale[i];
    }
#pragma unroll
    for (int n = 0; n < O_TILES; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[n][e] *= rescale[e >> 1];
#pragma unroll
    for (int n = 0; n < S_TILES; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[n][e] = exp2f(s[n][e] - shift[e >> 1]);
            row_sum[e >> 1] += s[n][e];
        }
}

/* The end of the forward: sums reduced over the 4 threads of each row, out = o / sum for this
 * thread's two rows (row0 + g, row0 + g + 8; rows at or past q_end are not this block's, rows at
 * or past len are padding and get zeros) and lse = max + log(sum) in natural-log units. */
template <int O_TILES>
__device__ inline void store_output_rows(float *out_h, float *lse_h, size_t q_stride, const float o[O_TILES][4],
                                         const float row_max[2], float row_sum[2], int row0, int q_end, int len) {
#pragma unroll
    for (int i = 0; i < 2; i++) {
        row_sum[i] += __shfl_xor_sync(kFullMask, row_sum[i], 1);
        row_sum[i] += __shfl_xor_sync(kFullMask, row_sum[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = row0 + (threadIdx.x % kWarp) / 4 + 8 * i;
        if (row >= q_end) continue;
        const bool real = row < len;
        const float inv_sum = real ? 1.0f / row_sum[i] : 0.0f;
        float *out_row = out_h + (size_t)row * q_stride;
#pragma unroll
        for (int n = 0; n < O_TILES; n++) {
            out_row[fragment_col(n, 2 * i)] = o[n][2 * i] * inv_sum;
            out_row[fragment_col(n, 2 * i + 1)] = o[n][2 * i + 1] * inv_sum;
        }
        if (threadIdx.x % 4 == 0) lse_h[row] = real ? (row_max[i] + log2f(row_sum[i])) * kLn2 : 0.0f;
    }
}

/* P and dS of one tile element, in place of its S and dP; lse2 (log2 units) and delta belong to
 * the element's query. Masked elements get exact zeros, whatever S and dP hold. */
__device__ inline void probabilities_and_dscores(float &s_to_p, float &dp_to_ds, bool valid, float scale_log2,
                                                 float lse2, float delta) {
    const float p = valid ? exp2f(s_to_p * scale_log2 - lse2) : 0.0f;
    dp_to_ds = valid ? p * (dp_to_ds - delta) : 0.0f;
    s_to_p = p;
}

}  // namespace attention
}  // namespace tga_cuda

#endif
