/* Elementwise helpers, the fp32 <-> bf16 conversions, the GEMM's scale-only path, and the
 * start-up probe for kernel code.
 *
 * to_bf16 is __float2bfloat16_rn (cvt.rn.bf16.f32): nearest even, the bits of
 * tga_bf16_from_float (kernels/bf16.h) for every non-NaN input, infinities and subnormals
 * included; a NaN stays a NaN (its payload may differ from the CPU's). from_bf16 is exact.
 *
 * sum_squares feeds the gradient norm and must give the same bits on every run: a fixed grid
 * (kSumBlocks blocks, whatever the device) sums grid-strided elements in double per thread,
 * each block reduces in a fixed order, and one block adds the block sums in block order. */
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

constexpr int kSumBlocks = 1024;
constexpr int kSumThreads = 256;

__global__ void add_inplace_kernel(float *y, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

__global__ void scale_inplace_kernel(float *x, float alpha, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= alpha;
}

__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void from_bf16_kernel(float *dst, const __nv_bfloat16 *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

__global__ void block_sum_squares_kernel(double *block_sums, const float *x, size_t n) {
    double acc = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        acc += (double)x[i] * x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) block_sums[blockIdx.x] = acc;
}

__global__ void sum_block_sums_kernel(double *total, const double *block_sums, int n_blocks) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < n_blocks; i += blockDim.x) acc += block_sums[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *total = acc;
}

/* Racing writers all store the same 1, so the flag needs no atomic. */
__global__ void find_non_finite_kernel(int *flag, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (!isfinite(x[i])) *flag = 1;
}

/* C[M,N] (row stride ldc) = beta * C; beta 0 writes zeros without reading (C may hold NaN). */
__global__ void scale_matrix_kernel(float *C, int M, int N, int ldc, float beta) {
    const size_t n = (size_t)M * N;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float *c = C + (i / N) * (size_t)ldc + i % N;
        *c = beta == 0.0f ? 0.0f : beta * *c;
    }
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_add_inplace(float *y, const float *x, size_t n) {
    if (n == 0) return;
    add_inplace_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(y, x, n);
    TGA_CUDA_CHECK_LAUNCH("add_inplace_kernel");
}

extern "C" void tga_cuda_scale_inplace(float *x, float alpha, size_t n) {
    if (n == 0) return;
    scale_inplace_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(x, alpha, n);
    TGA_CUDA_CHECK_LAUNCH("scale_inplace_kernel");
}

extern "C" void tga_cuda_to_bf16(tga_bf16 *dst, const float *src, size_t n) {
    if (n == 0) return;
    to_bf16_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(
        reinterpret_cast<__nv_bfloat16 *>(dst), src, n);
    TGA_CUDA_CHECK_LAUNCH("to_bf16_kernel");
}

extern "C" void tga_cuda_from_bf16(float *dst, const tga_bf16 *src, size_t n) {
    if (n == 0) return;
    from_bf16_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(
        dst, reinterpret_cast<const __nv_bfloat16 *>(src), n);
    TGA_CUDA_CHECK_LAUNCH("from_bf16_kernel");
}

extern "C" double tga_cuda_sum_squares(const float *x, size_t n) {
    if (n == 0) return 0.0;
    double *sums = (double *)tga_cuda_scratch((kSumBlocks + 1) * sizeof(double));
    double total = 0.0;
    if (sums) {
        block_sum_squares_kernel<<<kSumBlocks, kSumThreads, 0, tga_cuda_stream>>>(sums, x, n);
        TGA_CUDA_CHECK_LAUNCH("block_sum_squares_kernel");
        sum_block_sums_kernel<<<1, kSumThreads, 0, tga_cuda_stream>>>(sums + kSumBlocks, sums, kSumBlocks);
        TGA_CUDA_CHECK_LAUNCH("sum_block_sums_kernel");
        TGA_CUDA_CHECK(cudaMemcpyAsync(&total, sums + kSumBlocks, sizeof total, cudaMemcpyDeviceToHost, tga_cuda_stream));
    }
    tga_cuda_sync_or_die("sum_squares");
    return total;
}

extern "C" int tga_cuda_all_finite(const float *x, size_t n) {
    if (n == 0) return 1;
    int *flag = (int *)tga_cuda_scratch(sizeof(int));
    int non_finite = 0;
    if (flag) {
        TGA_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), tga_cuda_stream));
        find_non_finite_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(flag, x, n);
        TGA_CUDA_CHECK_LAUNCH("find_non_finite_kernel");
        TGA_CUDA_CHECK(cudaMemcpyAsync(&non_finite, flag, sizeof(int), cudaMemcpyDeviceToHost, tga_cuda_stream));
    }
    tga_cuda_sync_or_die("all_finite");
    return !non_finite;
}

extern "C" void tga_cuda_scale_matrix(float *C, int M, int N, int ldc, float beta) {
    const size_t n = (size_t)M * N;
    if (n == 0) return;
    scale_matrix_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(C, M, N, ldc, beta);
    TGA_CUDA_CHECK_LAUNCH("scale_matrix_kernel");
}

/* A binary built only for sm_90a has no code for an A100: every launch would fail with
 * cudaErrorNoKernelImageForDevice, so start-up asks once and declines the device instead. */
extern "C" int tga_cuda_kernels_loadable(char *why, size_t why_size) {
    cudaFuncAttributes attr;
    cudaError_t err = cudaFuncGetAttributes(&attr, add_inplace_kernel);
    if (err == cudaSuccess) return 1;
    snprintf(why, why_size, "libtga_cuda.so has no kernel code for this GPU (%s); rebuild with "
             "-DCMAKE_CUDA_ARCHITECTURES=<its compute capability>", cudaGetErrorString(err));
    (void)cudaGetLastError();
    return 0;
}
