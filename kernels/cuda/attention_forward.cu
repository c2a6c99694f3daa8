/* Causal grouped-query attention forward, flash-attention style (Dao 2022/2023) on bf16 tensor
 * cores (contract in kernels/ops.h; the CPU reference is kernels/cpu/attention.c).
 *
 * Block = (64 queries, query head, sample), 4 warps of 16 query rows. Q is converted to bf16 in
 * shared memory once; then for every 64-key tile up to the diagonal: K and V^T to bf16 tiles,
 * S = Q K^T on tensor cores (fp32 accumulators), scale and causal mask, an online softmax in the
 * exp2 domain, and O += P V with P taken straight from the S registers. Row maxima and sums stay
 * in fp32 registers. Query head h reads kv head h / (H / KVH), as HF's repeat_kv.
 *
 * Precision: Q, K, V and P are rounded to bf16 (8-bit mantissa) for the products; everything
 * else is fp32. Expected error against the fp32 CPU reference: about 3e-3 relative on out
 * (norm-wise), 3e-4 on lse (as measured under tests/gpu/emulate.sh); the checks use 1e-2 and 5e-3.
 *
 * Rows of padding (t >= lengths[b]) get out = 0 and lse = 0. Keys past the block's last real
 * query are loaded as zeros and masked, so padding content never reaches the arithmetic. */
#include "kernels/cuda/attention_mma.cuh"

namespace tga_cuda {
namespace attention {

template <int HD>
struct forward_layout {
    static constexpr int row_stride = HD + kPad;     /* q and k tiles: [64][HD + 8] */
    static constexpr int vt_stride = kKeyTile + kPad; /* v^T tile: [HD][64 + 8] */
    static constexpr size_t q_elems = (size_t)kBlockRows * row_stride;
    static constexpr size_t k_elems = (size_t)kKeyTile * row_stride;
    static constexpr size_t vt_elems = (size_t)HD * vt_stride;
    static constexpr size_t bytes = (q_elems + k_elems + vt_elems) * sizeof(bf16);
};

template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v, const int *lengths,
                             shape s) {
    using L = forward_layout<HD>;
    constexpr int kScoreTiles = kKeyTile / 8, kOutTiles = HD / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *q_tile = reinterpret_cast<bf16 *>(smem), *k_tile = q_tile + L::q_elems, *vt_tile = k_tile + L::k_elems;

    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * kBlockRows; /* the longest rows start first */
    const int len = sample_length(lengths, b, s.T), q_end = min(q0 + kBlockRows, s.T);
    const size_t q_stride = (size_t)s.H * HD, kv_stride = (size_t)s.KVH * HD;
    const size_t q_origin = (size_t)b * s.T * q_stride + (size_t)h * HD;
    const size_t kv_origin = (size_t)b * s.T * kv_stride + (size_t)(h / s.group) * HD;
    float *out_h = out + q_origin, *lse_h = lse + ((size_t)b * s.H + h) * s.T;
    if (q0 >= len) {
        zero_rows<HD>(out_h, q_stride, q0, q_end);
        for (int t = q0 + threadIdx.x; t < q_end; t += kThreads) lse_h[t] = 0.0f;
        return;
    }
    load_tile<HD>(q_tile, L::row_stride, nullptr, 0, q + q_origin, q_stride, q0, kBlockRows, len);

    const int warp_row0 = (threadIdx.x / kWarp) * kWarpRows, row0 = q0 + warp_row0;
    float o[kOutTiles][4] = {};
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    const int kv_end = min(q0 + kBlockRows, len);
    for (int k0 = 0; k0 < kv_end; k0 += kKeyTile) {
        __syncthreads(); /* the previous tiles are no longer read */
        load_tile<HD>(k_tile, L::row_stride, nullptr, 0, k + kv_origin, kv_stride, k0, kKeyTile, kv_end);
        load_tile<HD>(nullptr, 0, vt_tile, L::vt_stride, v + kv_origin, kv_stride, k0, kKeyTile, kv_end);
        __syncthreads();
        float sc[kScoreTiles][4] = {};
        tile_product<kScoreTiles, HD>(sc, q_tile, L::row_stride, warp_row0, k_tile, L::row_stride); /* S = Q K^T */
        float tile_max[2];
        mask_scores<kScoreTiles>(sc, row0, k0, kv_end, s.scale_log2, tile_max);
        online_softmax_update<kScoreTiles, kOutTiles>(sc, o, tile_max, row_max, row_sum);
        register_product<kOutTiles, kKeyTile>(o, sc, vt_tile, L::vt_stride); /* O += P V */
    }

    store_output_rows<kOutTiles>(out_h, lse_h, q_stride, o, row_max, row_sum, row0, q_end, len);
}

template <int HD>
int set_forward_smem_limit(char *why, size_t why_size) {
    return set_smem_limit(attention_forward_kernel<HD>, forward_layout<HD>::bytes, "attention forward", HD, why,
                          why_size);
}

template <int HD>
void launch_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int *lengths, int B,
                    const shape &s) {
    const dim3 grid(ceil_div((size_t)s.T, kBlockRows), (unsigned)s.H, (unsigned)B);
    attention_forward_kernel<HD>
        <<<grid, kThreads, forward_layout<HD>::bytes, tga_cuda_stream>>>(out, lse, q, k, v, lengths, s);
    TGA_CUDA_CHECK_LAUNCH("attention_forward_kernel");
}

}  // namespace attention
}  // namespace tga_cuda

using namespace tga_cuda::attention;

extern "C" int tga_cuda_attention_forward_init(char *why, size_t why_size) {
    probe_sm90(); /* the wgmma kernel where the device runs it; its absence is not an error */
    return set_forward_smem_limit<16>(why, why_size) && set_forward_smem_limit<32>(why, why_size) &&
           set_forward_smem_limit<64>(why, why_size) && set_forward_smem_limit<128>(why, why_size);
}

extern "C" void tga_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                           const int *lengths, int B, int T, int H, int KVH, int head_dim) {
    if (B <= 0 || T <= 0 || H <= 0) return;
    if (KVH <= 0 || H % KVH != 0) {
        tga_cuda_record_error(__FILE__, __LINE__, "attention_forward", "H must be a positive multiple of KVH");
        return;
    }
    const shape s = {T, H, KVH, H / KVH, 1.0f / sqrtf((float)head_dim), kLog2e / sqrtf((float)head_dim)};
    if (forward_sm90(out, lse, q, k, v, lengths, B, head_dim, s)) return;
    switch (head_dim) {
    case 16: launch_forward<16>(out, lse, q, k, v, lengths, B, s); break;
    case 32: launch_forward<32>(out, lse, q, k, v, lengths, B, s); break;
    case 64: launch_forward<64>(out, lse, q, k, v, lengths, B, s); break;
    case 128: launch_forward<128>(out, lse, q, k, v, lengths, B, s); break;
    default:
        tga_cuda_record_error(__FILE__, __LINE__, "attention_forward",
                              "head_dim must be 16, 32, 64 or 128 on the CUDA backend");
    }
}
