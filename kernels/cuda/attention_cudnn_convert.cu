/* The conversions around cuDNN attention (attention_cudnn.c): the op contract is fp32, cuDNN's
 * fused attention reads and writes bf16. Padding rows are written as zeros in both directions:
 * going in, so that NaN or garbage there never meets cuDNN's arithmetic (a masked score times a
 * NaN value is still NaN); coming out, because the contract wants zeros there and cuDNN promises
 * nothing for rows past a sequence length. */
#include <cuda_bf16.h>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {
namespace attention_cudnn {

using bf16 = __nv_bfloat16;

__device__ inline int clamped_length(const int *lengths, int b, int lo, int T) { return min(max(lengths[b], lo), T); }

/* One block per row of [B*T, row_elems], rows in a grid-stride loop. */
__global__ void rows_to_bf16_kernel(bf16 *dst, const float *src, const int *lengths, int T, size_t rows,
                                    size_t row_elems) {
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const bool real = (int)(row % T) < clamped_length(lengths, (int)(row / T), 0, T);
        const size_t base = row * row_elems;
        for (size_t i = threadIdx.x; i < row_elems; i += blockDim.x)
            dst[base + i] = __float2bfloat16_rn(real ? src[base + i] : 0.0f);
    }
}

__global__ void rows_from_bf16_kernel(float *dst, const bf16 *src, const int *lengths, int T, size_t rows,
                                      size_t row_elems) {
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const bool real = (int)(row % T) < clamped_length(lengths, (int)(row / T), 0, T);
        const size_t base = row * row_elems;
        for (size_t i = threadIdx.x; i < row_elems; i += blockDim.x)
            dst[base + i] = real ? __bfloat162float(src[base + i]) : 0.0f;
    }
}

__global__ void zero_padding_lse_kernel(float *lse, const int *lengths, int H, int T, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int b = (int)(i / ((size_t)H * T)), t = (int)(i % T);
        if (t >= clamped_length(lengths, b, 0, T)) lse[i] = 0.0f;
    }
}

__global__ void clamp_lengths_kernel(int *dst, const int *lengths, int B, int T, int min_length) {
    for (int b = threadIdx.x; b < B; b += blockDim.x) dst[b] = clamped_length(lengths, b, min_length, T);
}

inline unsigned row_blocks(size_t rows) {
    return rows == 0 ? 1u : (unsigned)(rows < kMaxGridStrideBlocks ? rows : kMaxGridStrideBlocks);
}

}  // namespace attention_cudnn
}  // namespace tga_cuda

using namespace tga_cuda;
using namespace tga_cuda::attention_cudnn;

extern "C" void tga_cuda_rows_to_bf16(uint16_t *dst, const float *src, const int *lengths, int B, int T,
                                      size_t row_elems) {
    const size_t rows = (size_t)B * T;
    if (rows == 0 || row_elems == 0) return;
    rows_to_bf16_kernel<<<row_blocks(rows), kElementwiseThreads, 0, tga_cuda_stream>>>(
        reinterpret_cast<bf16 *>(dst), src, lengths, T, rows, row_elems);
    TGA_CUDA_CHECK_LAUNCH("rows_to_bf16_kernel");
}

extern "C" void tga_cuda_rows_from_bf16(float *dst, const uint16_t *src, const int *lengths, int B, int T,
                                        size_t row_elems) {
    const size_t rows = (size_t)B * T;
    if (rows == 0 || row_elems == 0) return;
    rows_from_bf16_kernel<<<row_blocks(rows), kElementwiseThreads, 0, tga_cuda_stream>>>(
        dst, reinterpret_cast<const bf16 *>(src), lengths, T, rows, row_elems);
    TGA_CUDA_CHECK_LAUNCH("rows_from_bf16_kernel");
}

extern "C" void tga_cuda_zero_padding_lse(float *lse, const int *lengths, int B, int H, int T) {
    const size_t n = (size_t)B * H * T;
    if (n == 0) return;
    zero_padding_lse_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(lse, lengths, H, T, n);
    TGA_CUDA_CHECK_LAUNCH("zero_padding_lse_kernel");
}

extern "C" void tga_cuda_clamp_lengths(int *dst, const int *lengths, int B, int T, int min_length) {
    if (B <= 0) return;
    clamp_lengths_kernel<<<1, kElementwiseThreads, 0, tga_cuda_stream>>>(dst, lengths, B, T, min_length);
    TGA_CUDA_CHECK_LAUNCH("clamp_lengths_kernel");
}
