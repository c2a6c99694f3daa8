/* Linear layer, out = in W^T + b: the three GEMMs go to tga_cuda_gemm (cuBLASLt), the bias to a
 * broadcast kernel, and the bias gradient to the fixed-order column sums of column_sum.cuh. */
#include "kernels/cuda/column_sum.cuh"

namespace tga_cuda {

__global__ void add_bias_rows(float *out, const float *bias, size_t n, int out_dim) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] += bias[i % out_dim];
}

struct bias_grad_term {
    const float *dout;
    int out_dim;
    __device__ double operator()(int n, int j) const { return dout[(size_t)n * out_dim + j]; }
};

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_linear_forward(float *out, const float *in, const float *weight, const float *bias, int N,
                                        int in_dim, int out_dim) {
    /* (N, IC) x (OC, IC)^T -> (N, OC) */
    tga_cuda_gemm(0, 1, N, out_dim, in_dim, 1.0f, in, in_dim, weight, in_dim, 0.0f, out, out_dim);
    if (!bias || N <= 0 || out_dim <= 0) return;
    const size_t n = (size_t)N * out_dim;
    add_bias_rows<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(out, bias, n, out_dim);
    TGA_CUDA_CHECK_LAUNCH("add_bias_rows");
}

extern "C" void tga_cuda_linear_backward(float *din, float *dweight, float *dbias, const float *dout,
                                         const float *in, const float *weight, int N, int in_dim, int out_dim,
                                         int accumulate_din) {
    if (din) /* (N, OC) x (OC, IC) -> (N, IC) */
        tga_cuda_gemm(0, 0, N, in_dim, out_dim, 1.0f, dout, out_dim, weight, in_dim, accumulate_din ? 1.0f : 0.0f,
                      din, in_dim);
    if (dweight) /* (N, OC)^T x (N, IC) -> (OC, IC), accumulated */
        tga_cuda_gemm(1, 0, out_dim, in_dim, N, 1.0f, dout, out_dim, in, in_dim, 1.0f, dweight, in_dim);
    if (dbias) column_sum_accumulate(dbias, N, out_dim, bias_grad_term{dout, out_dim});
}
