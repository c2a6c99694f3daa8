/* Linear layer, out = in W^T + b: the three GEMMs go to tga_cuda_gemm (cuBLASLt), the bias to a
 * broadcast kernel, and the bias gradient to the fixed-order column sums of column_sum.cuh.
 *
 * bf16 weights (the *_bf16 ops): the fp32 activation operands (in, dout) are rounded to bf16
 * (to_bf16, nearest even) into the backend's scratch buffer, then bf16 x bf16 -> fp32 GEMMs; the
 * bias and its gradient are those of the fp32 layer (the gradient sums the exact fp32 dout). The
 * scratch grows to the size of the rounded operands (dout of w_gate/w_up at 8 x 680 tokens:
 * 156 MB). The *_bf16_input ops take `in` in bf16 already (written so by the norm or SwiGLU
 * before them) and round only dout. */
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

static void add_bias(float *out, const float *bias, int N, int out_dim) {
    if (!bias || N <= 0 || out_dim <= 0) return;
    const size_t n = (size_t)N * out_dim;
    add_bias_rows<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(out, bias, n, out_dim);
    TGA_CUDA_CHECK_LAUNCH("add_bias_rows");
}

/* bf16 copies of up to two fp32 operands, carved from the backend's scratch (each start aligned
 * for the GEMM); an operand that is not needed gets no room. Returns 0 (error recorded) when the
 * scratch cannot grow. */
static bool round_to_bf16(const float *x, size_t nx, tga_bf16 **x_bf16, const float *y, size_t ny,
                          tga_bf16 **y_bf16) {
    const size_t x_bytes = tga_cuda_align_up(nx * sizeof(tga_bf16)), y_bytes = ny * sizeof(tga_bf16);
    char *scratch = (char *)tga_cuda_scratch(x_bytes + y_bytes);
    if (!scratch && x_bytes + y_bytes > 0) return false;
    *x_bf16 = (tga_bf16 *)scratch;
    *y_bf16 = (tga_bf16 *)(scratch + x_bytes);
    tga_cuda_to_bf16(*x_bf16, x, nx);
    tga_cuda_to_bf16(*y_bf16, y, ny);
    return true;
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_linear_forward(float *out, const float *in, const float *weight, const float *bias, int N,
                                        int in_dim, int out_dim) {
    /* (N, IC) x (OC, IC)^T -> (N, OC) */
    tga_cuda_gemm(0, 1, N, out_dim, in_dim, 1.0f, in, in_dim, weight, in_dim, 0.0f, out, out_dim);
    add_bias(out, bias, N, out_dim);
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

extern "C" void tga_cuda_linear_forward_bf16(float *out, const float *in, const tga_bf16 *weight, const float *bias,
                                             int N, int in_dim, int out_dim) {
    if (N <= 0 || out_dim <= 0) return;
    tga_bf16 *in_bf16, *unused;
    if (!round_to_bf16(in, (size_t)N * in_dim, &in_bf16, nullptr, 0, &unused)) return;
    /* (N, IC) x (OC, IC)^T -> (N, OC) */
    tga_cuda_gemm_typed(0, 1, N, out_dim, in_dim, 1.0f, in_bf16, TGA_CUDA_BF16, in_dim, weight, TGA_CUDA_BF16, in_dim,
                        0.0f, out, out_dim);
    add_bias(out, bias, N, out_dim);
}

extern "C" void tga_cuda_linear_forward_bf16_input(float *out, const tga_bf16 *in, const tga_bf16 *weight,
                                                   const float *bias, int N, int in_dim, int out_dim) {
    if (N <= 0 || out_dim <= 0) return;
    tga_cuda_gemm_typed(0, 1, N, out_dim, in_dim, 1.0f, in, TGA_CUDA_BF16, in_dim, weight, TGA_CUDA_BF16, in_dim, 0.0f,
                        out, out_dim);
    add_bias(out, bias, N, out_dim);
}

/* The backward of both bf16 linear ops: the input is fp32 (rounded here when dweight needs it) or,
 * as in16, bf16 already. */
static void linear_backward_bf16(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                                 const tga_bf16 *in16, const tga_bf16 *weight, int N, int in_dim, int out_dim,
                                 int accumulate_din) {
    /* before the bf16 copies take the backend's scratch, which the column sums use too */
    if (dbias) column_sum_accumulate(dbias, N, out_dim, bias_grad_term{dout, out_dim});
    if ((!din && !dweight) || N <= 0) return;
    tga_bf16 *dout_bf16, *in_bf16;
    const size_t n_dout = (size_t)N * out_dim, n_in = dweight && !in16 ? (size_t)N * in_dim : 0;
    if (!round_to_bf16(dout, n_dout, &dout_bf16, in, n_in, &in_bf16)) return;
    if (in16) in_bf16 = const_cast<tga_bf16 *>(in16);
    if (din) /* (N, OC) x (OC, IC) -> (N, IC) */
        tga_cuda_gemm_typed(0, 0, N, in_dim, out_dim, 1.0f, dout_bf16, TGA_CUDA_BF16, out_dim, weight, TGA_CUDA_BF16,
                            in_dim, accumulate_din ? 1.0f : 0.0f, din, in_dim);
    if (dweight) /* (N, OC)^T x (N, IC) -> (OC, IC), accumulated */
        tga_cuda_gemm_typed(1, 0, out_dim, in_dim, N, 1.0f, dout_bf16, TGA_CUDA_BF16, out_dim, in_bf16, TGA_CUDA_BF16,
                            in_dim, 1.0f, dweight, in_dim);
}

extern "C" void tga_cuda_linear_backward_bf16(float *din, float *dweight, float *dbias, const float *dout,
                                              const float *in, const tga_bf16 *weight, int N, int in_dim,
                                              int out_dim, int accumulate_din) {
    linear_backward_bf16(din, dweight, dbias, dout, in, nullptr, weight, N, in_dim, out_dim, accumulate_din);
}

extern "C" void tga_cuda_linear_backward_bf16_input(float *din, float *dweight, float *dbias, const float *dout,
                                                    const tga_bf16 *in, const tga_bf16 *weight, int N, int in_dim,
                                                    int out_dim, int accumulate_din) {
    linear_backward_bf16(din, dweight, dbias, dout, nullptr, in, weight, N, in_dim, out_dim, accumulate_din);
}
