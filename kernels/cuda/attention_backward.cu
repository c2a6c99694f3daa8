/* Causal grouped-query attention backward from the saved log-sum-exp (FlashAttention-2,
 * Algorithm 2: P = exp(S - lse), dV = P^T dO, dP = dO V^T, dS = P * (dP - D) with
 * D = rowsum(dO * O), dQ = scale dS K, dK = scale dS^T Q), on bf16 tensor cores.
 *
 * Determinism: FlashAttention-2 adds dQ from every key block with atomics. Here dQ has a kernel
 * of its own instead, one block per query tile walking the key tiles in order, and dK/dV one
 * block per key tile walking the query heads of its kv head and then the query tiles in order;
 * every sum runs in a fixed order with no atomics. The price is recomputing S and dP in both
 * kernels: 7 tile products per tile pair instead of 5.
 *
 *   attention_delta_kernel  D[b,h,t] = sum_d dO * O (fp32), one warp per row
 *   attention_dkdv_kernel   block = (64 keys, kv head, sample), 4 warps of 16 keys; steps of
 *                           32 queries (a smaller step than the forward's, for registers: each
 *                           thread holds 16 x hd accumulators of dK and of dV)
 *   attention_dq_kernel     block = (64 queries, head, sample), 4 warps of 16 queries
 *
 * Precision: Q, K, V, dO, P and dS are rounded to bf16 for the products, D and all accumulators
 * are fp32: about 5e-3 relative error against the fp32 CPU reference (norm-wise, as measured
 * under tests/gpu/emulate.sh); the check uses 2e-2. Padding (t >= lengths[b]) is loaded as zeros and masked; its dQ/dK/dV rows are zero. */
#include "kernels/cuda/attention_mma.cuh"

namespace tga_cuda {
namespace attention {

constexpr int kQueryStep = 32; /* queries per step of the dK/dV kernel */

template <int HD>
struct dkdv_layout {
    static constexpr int row_stride = HD + kPad;       /* k, v: [64][HD + 8]; q, dO: [32][HD + 8] */
    static constexpr int t_stride = kQueryStep + kPad; /* q^T, dO^T: [HD][32 + 8] */
    static constexpr size_t kv_elems = (size_t)kBlockRows * row_stride;
    static constexpr size_t step_elems = (size_t)kQueryStep * row_stride;
    static constexpr size_t t_elems = (size_t)HD * t_stride;
    static constexpr size_t bf16_elems = 2 * kv_elems + 2 * step_elems + 2 * t_elems;
    static constexpr size_t bytes = bf16_elems * sizeof(bf16) + 2 * kQueryStep * sizeof(float);
};

template <int HD>
struct dq_layout {
    static constexpr int row_stride = HD + kPad;     /* q, dO: [64][HD + 8]; k, v: [64][HD + 8] */
    static constexpr int t_stride = kKeyTile + kPad; /* k^T: [HD][64 + 8] */
    static constexpr size_t q_elems = (size_t)kBlockRows * row_stride;
    static constexpr size_t k_elems = (size_t)kKeyTile * row_stride;
    static constexpr size_t kt_elems = (size_t)HD * t_stride;
    static constexpr size_t bytes = (2 * q_elems + 2 * k_elems + kt_elems) * sizeof(bf16);
};

/* One warp per (sample, token, head) row: delta[b, h, t] = dO . O (0 at padding). */
__global__ void attention_delta_kernel(float *delta, const float *dout, const float *out, const int *lengths, int B,
                                       shape s, int head_dim) {
    const size_t row = (size_t)blockIdx.x * kWarps + threadIdx.x / kWarp;
    if (row >= (size_t)B * s.T * s.H) return;
    const int h = (int)(row % s.H), t = (int)(row / s.H % s.T), b = (int)(row / s.H / s.T);
    const int lane = threadIdx.x % kWarp;
    float acc = 0.0f;
    if (t < sample_length(lengths, b, s.T))
        for (int d = lane; d < head_dim; d += kWarp) acc += dout[row * head_dim + d] * out[row * head_dim + d];
    acc = warp_sum(acc);
    if (lane == 0) delta[((size_t)b * s.H + h) * s.T + t] = acc;
}

template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(float *dk, float *dv, const float *q, const float *k, const float *v, const float *dout,
                          const float *lse, const float *delta, const int *lengths, shape s) {
    using L = dkdv_layout<HD>;
    constexpr int kStepTiles = kQueryStep / 8, kOutTiles = HD / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *k_tile = reinterpret_cast<bf16 *>(smem), *v_tile = k_tile + L::kv_elems;
    bf16 *q_tile = v_tile + L::kv_elems, *do_tile = q_tile + L::step_elems;
    bf16 *qt_tile = do_tile + L::step_elems, *dot_tile = qt_tile + L::t_elems;
    float *lse2_step = reinterpret_cast<float *>(dot_tile + L::t_elems), *delta_step = lse2_step + kQueryStep;

    const int b = blockIdx.z, kv_head = blockIdx.y, k0 = blockIdx.x * kBlockRows;
    const int len = sample_length(lengths, b, s.T), k_end = min(k0 + kBlockRows, s.T);
    const size_t q_stride = (size_t)s.H * HD, kv_stride = (size_t)s.KVH * HD;
    const size_t kv_origin = (size_t)b * s.T * kv_stride + (size_t)kv_head * HD;
    if (k0 >= len) { /* keys of padding only: no query sees them */
        zero_rows<HD>(dk + kv_origin, kv_stride, k0, k_end);
        zero_rows<HD>(dv + kv_origin, kv_stride, k0, k_end);
        return;
    }
    load_tile<HD>(k_tile, L::row_stride, nullptr, 0, k + kv_origin, kv_stride, k0, kBlockRows, len);
    load_tile<HD>(v_tile, L::row_stride, nullptr, 0, v + kv_origin, kv_stride, k0, kBlockRows, len);

    const int warp_row0 = (threadIdx.x / kWarp) * kWarpRows, key0 = k0 + warp_row0;
    float dk_acc[kOutTiles][4] = {}, dv_acc[kOutTiles][4] = {};
    for (int h = kv_head * s.group; h < (kv_head + 1) * s.group; h++) {
        const size_t q_origin = (size_t)b * s.T * q_stride + (size_t)h * HD;
        const float *lse_h = lse + ((size_t)b * s.H + h) * s.T, *delta_h = delta + ((size_t)b * s.H + h) * s.T;
        /* causal: queries before k0 see none of these keys */
        for (int q0 = k0; q0 < len; q0 += kQueryStep) {
            __syncthreads(); /* the previous step's tiles are no longer read */
            load_tile<HD>(q_tile, L::row_stride, qt_tile, L::t_stride, q + q_origin, q_stride, q0, kQueryStep, len);
            load_tile<HD>(do_tile, L::row_stride, dot_tile, L::t_stride, dout + q_origin, q_stride, q0, kQueryStep, len);
            for (int i = threadIdx.x; i < kQueryStep; i += kThreads) {
                const bool real = q0 + i < len;
                lse2_step[i] = real ? lse_h[q0 + i] * kLog2e : 0.0f;
                delta_step[i] = real ? delta_h[q0 + i] : 0.0f;
            }
            __syncthreads();
            float st[kStepTiles][4] = {}, dpt[kStepTiles][4] = {};
            tile_product<kStepTiles, HD>(st, k_tile, L::row_stride, warp_row0, q_tile, L::row_stride);   /* S^T = K Q^T */
            tile_product<kStepTiles, HD>(dpt, v_tile, L::row_stride, warp_row0, do_tile, L::row_stride); /* dP^T = V dO^T */
#pragma unroll
            for (int n = 0; n < kStepTiles; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = key0 + fragment_row(e), col = fragment_col(n, e), query = q0 + col;
                    probabilities_and_dscores(st[n][e], dpt[n][e], query >= key && query < len, s.scale_log2,
                                              lse2_step[col], delta_step[col]);
                }
            register_product<kOutTiles, kQueryStep>(dv_acc, st, dot_tile, L::t_stride);  /* dV += P^T dO */
            register_product<kOutTiles, kQueryStep>(dk_acc, dpt, qt_tile, L::t_stride); /* dK += dS^T Q */
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int key = key0 + (threadIdx.x % kWarp) / 4 + 8 * i;
        if (key >= k_end) continue;
        float *dk_row = dk + kv_origin + (size_t)key * kv_stride, *dv_row = dv + kv_origin + (size_t)key * kv_stride;
#pragma unroll
        for (int n = 0; n < kOutTiles; n++) {
            dk_row[fragment_col(n, 2 * i)] = dk_acc[n][2 * i] * s.scale;
            dk_row[fragment_col(n, 2 * i + 1)] = dk_acc[n][2 * i + 1] * s.scale;
            dv_row[fragment_col(n, 2 * i)] = dv_acc[n][2 * i];
            dv_row[fragment_col(n, 2 * i + 1)] = dv_acc[n][2 * i + 1];
        }
    }
}

template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(float *dq, const float *q, const float *k, const float *v, const float *dout, const float *lse,
                        const float *delta, const int *lengths, shape s) {
    using L = dq_layout<HD>;
    constexpr int kScoreTiles = kKeyTile / 8, kOutTiles = HD / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *q_tile = reinterpret_cast<bf16 *>(smem), *do_tile = q_tile + L::q_elems;
    bf16 *k_tile = do_tile + L::q_elems, *v_tile = k_tile + L::k_elems, *kt_tile = v_tile + L::k_elems;

    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * kBlockRows; /* the longest rows start first */
    const int len = sample_length(lengths, b, s.T), q_end = min(q0 + kBlockRows, s.T);
    const size_t q_stride = (size_t)s.H * HD, kv_stride = (size_t)s.KVH * HD;
    const size_t q_origin = (size_t)b * s.T * q_stride + (size_t)h * HD;
    const size_t kv_origin = (size_t)b * s.T * kv_stride + (size_t)(h / s.group) * HD;
    if (q0 >= len) {
        zero_rows<HD>(dq + q_origin, q_stride, q0, q_end);
        return;
    }
    load_tile<HD>(q_tile, L::row_stride, nullptr, 0, q + q_origin, q_stride, q0, kBlockRows, len);
    load_tile<HD>(do_tile, L::row_stride, nullptr, 0, dout + q_origin, q_stride, q0, kBlockRows, len);

    const int warp_row0 = (threadIdx.x / kWarp) * kWarpRows, row0 = q0 + warp_row0;
    const float *lse_h = lse + ((size_t)b * s.H + h) * s.T, *delta_h = delta + ((size_t)b * s.H + h) * s.T;
    float row_lse2[2], row_delta[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = row0 + (threadIdx.x % kWarp) / 4 + 8 * i;
        row_lse2[i] = row < len ? lse_h[row] * kLog2e : 0.0f;
        row_delta[i] = row < len ? delta_h[row] : 0.0f;
    }
    float dq_acc[kOutTiles][4] = {};
    const int kv_end = min(q0 + kBlockRows, len);
    for (int k0 = 0; k0 < kv_end; k0 += kKeyTile) {
        __syncthreads(); /* the previous tiles are no longer read */
        load_tile<HD>(k_tile, L::row_stride, kt_tile, L::t_stride, k + kv_origin, kv_stride, k0, kKeyTile, kv_end);
        load_tile<HD>(v_tile, L::row_stride, nullptr, 0, v + kv_origin, kv_stride, k0, kKeyTile, kv_end);
        __syncthreads();
        float sc[kScoreTiles][4] = {}, dp[kScoreTiles][4] = {};
        tile_product<kScoreTiles, HD>(sc, q_tile, L::row_stride, warp_row0, k_tile, L::row_stride);  /* S = Q K^T */
        tile_product<kScoreTiles, HD>(dp, do_tile, L::row_stride, warp_row0, v_tile, L::row_stride); /* dP = dO V^T */
#pragma unroll
        for (int n = 0; n < kScoreTiles; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int row = row0 + fragment_row(e), key = k0 + fragment_col(n, e);
                probabilities_and_dscores(sc[n][e], dp[n][e], key <= row && row < len, s.scale_log2,
                                          row_lse2[e >> 1], row_delta[e >> 1]);
            }
        register_product<kOutTiles, kKeyTile>(dq_acc, dp, kt_tile, L::t_stride); /* dQ += dS K */
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = row0 + (threadIdx.x % kWarp) / 4 + 8 * i;
        if (row >= q_end) continue;
        const float scale = row < len ? s.scale : 0.0f;
        float *dq_row = dq + q_origin + (size_t)row * q_stride;
#pragma unroll
        for (int n = 0; n < kOutTiles; n++) {
            dq_row[fragment_col(n, 2 * i)] = dq_acc[n][2 * i] * scale;
            dq_row[fragment_col(n, 2 * i + 1)] = dq_acc[n][2 * i + 1] * scale;
        }
    }
}

void launch_delta(float *delta, const float *dout, const float *out, const int *lengths, int B, const shape &s,
                  int head_dim) {
    const size_t rows = (size_t)B * s.H * s.T;
    attention_delta_kernel<<<ceil_div(rows, kWarps), kThreads, 0, tga_cuda_stream>>>(delta, dout, out, lengths, B, s,
                                                                                     head_dim);
    TGA_CUDA_CHECK_LAUNCH("attention_delta_kernel");
}

template <int HD>
int set_backward_smem_limits(char *why, size_t why_size) {
    return set_smem_limit(attention_dkdv_kernel<HD>, dkdv_layout<HD>::bytes, "attention dK/dV", HD, why, why_size) &&
           set_smem_limit(attention_dq_kernel<HD>, dq_layout<HD>::bytes, "attention dQ", HD, why, why_size);
}

template <int HD>
void launch_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                     const float *lse, const float *delta, const int *lengths, int B, const shape &s) {
    const unsigned tiles = ceil_div((size_t)s.T, kBlockRows);
    attention_dkdv_kernel<HD><<<dim3(tiles, (unsigned)s.KVH, (unsigned)B), kThreads, dkdv_layout<HD>::bytes,
                                tga_cuda_stream>>>(dk, dv, q, k, v, dout, lse, delta, lengths, s);
    TGA_CUDA_CHECK_LAUNCH("attention_dkdv_kernel");
    attention_dq_kernel<HD><<<dim3(tiles, (unsigned)s.H, (unsigned)B), kThreads, dq_layout<HD>::bytes,
                              tga_cuda_stream>>>(dq, q, k, v, dout, lse, delta, lengths, s);
    TGA_CUDA_CHECK_LAUNCH("attention_dq_kernel");
}

}  // namespace attention
}  // namespace tga_cuda

using namespace tga_cuda;
using namespace tga_cuda::attention;

extern "C" int tga_cuda_attention_backward_init(char *why, size_t why_size) {
    return set_backward_smem_limits<16>(why, why_size) && set_backward_smem_limits<32>(why, why_size) &&
           set_backward_smem_limits<64>(why, why_size) && set_backward_smem_limits<128>(why, why_size);
}

extern "C" void tga_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                            const float *k, const float *v, const float *out, const float *lse,
                                            const int *lengths, int B, int T, int H, int KVH, int head_dim) {
    if (B <= 0 || T <= 0 || H <= 0) return;
    if (KVH <= 0 || H % KVH != 0) {
        tga_cuda_record_error(__FILE__, __LINE__, "attention_backward", "H must be a positive multiple of KVH");
        return;
    }
    if (head_dim != 16 && head_dim != 32 && head_dim != 64 && head_dim != 128) {
        tga_cuda_record_error(__FILE__, __LINE__, "attention_backward",
                              "head_dim must be 16, 32, 64 or 128 on the CUDA backend");
        return;
    }
    const shape s = {T, H, KVH, H / KVH, 1.0f / sqrtf((float)head_dim), kLog2e / sqrtf((float)head_dim)};
    if (backward_sm90(dq, dk, dv, dout, q, k, v, out, lse, lengths, B, head_dim, s)) return;
    float *delta = (float *)tga_cuda_scratch((size_t)B * H * T * sizeof(float));
    if (!delta) return;
    launch_delta(delta, dout, out, lengths, B, s, head_dim);
    switch (head_dim) {
    case 16: launch_backward<16>(dq, dk, dv, dout, q, k, v, lse, delta, lengths, B, s); break;
    case 32: launch_backward<32>(dq, dk, dv, dout, q, k, v, lse, delta, lengths, B, s); break;
    case 64: launch_backward<64>(dq, dk, dv, dout, q, k, v, lse, delta, lengths, B, s); break;
    default: launch_backward<128>(dq, dk, dv, dout, q, k, v, lse, delta, lengths, B, s); break;
    }
}
