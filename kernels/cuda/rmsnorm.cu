/* RMSNorm as HF LlamaRMSNorm computes it in fp32: out = w * (x * rsqrt(mean(x^2) + eps)).
 *
 * One block per row: each thread takes a strided share of the row, and the row sums go through
 * the fixed-order block reductions of cuda_common.cuh (fp32 over the row, as torch does; the CPU
 * reference sums in double, which differs by about 1e-7 relative). The weight gradient is a
 * column sum over rows, in double, by column_sum.cuh. */
#include "kernels/cuda/column_sum.cuh"

namespace tga_cuda {

constexpr int kRowThreads = 256;

/* With a residual: residual += delta first (in place), then the normalised sum. Each thread reads
 * back only the elements it wrote itself, so no barrier is needed between the two. Out is fp32, or
 * bf16 (the *_bf16 ops: the value rounded as it is stored). */
template <bool kAddDelta, typename Out>
__global__ void rmsnorm_forward_kernel(Out *out, float *rstd, float *x_rows, const float *delta_rows,
                                       const float *weight, int D, float eps) {
    float *x = x_rows + (size_t)blockIdx.x * D;
    float sum_sq = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float v = x[j];
        if (kAddDelta) {
            v += delta_rows[(size_t)blockIdx.x * D + j];
            x[j] = v;
        }
        sum_sq += v * v;
    }
    const float var = block_sum(sum_sq) / (float)D;
    const float r = 1.0f / sqrtf(var + eps);
    Out *y = out + (size_t)blockIdx.x * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) store(y[j], weight[j] * (x[j] * r));
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

/* dx = r * (g * w) - x * (r^3 / D) * sum_j (g_j w_j) x_j */
__global__ void rmsnorm_din_kernel(float *din, const float *dout, const float *in, const float *weight,
                                   const float *rstd, int D, int accumulate_din) {
    const size_t off = (size_t)blockIdx.x * D;
    const float *g = dout + off, *x = in + off;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) dot += (g[j] * weight[j]) * x[j];
    dot = block_sum(dot);
    const float r = rstd[blockIdx.x];
    const float coef = r * r * r * dot / (float)D;
    float *dx = din + off;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float d = r * (g[j] * weight[j]) - coef * x[j];
        dx[j] = accumulate_din ? dx[j] + d : d;
    }
}

struct rmsnorm_dweight_term {
    const float *dout, *in, *rstd;
    int D;
    __device__ double operator()(int n, int j) const {
        const size_t i = (size_t)n * D + j;
        return (double)(dout[i] * (in[i] * rstd[n]));
    }
};

template <bool kAddDelta, typename Out>
void launch_rmsnorm_forward(Out *out, float *rstd, float *x, const float *delta, const float *weight, int N, int D,
                            float eps) {
    if (N <= 0 || D <= 0) return;
    rmsnorm_forward_kernel<kAddDelta, Out>
        <<<(unsigned)N, kRowThreads, 0, tga_cuda_stream>>>(out, rstd, x, delta, weight, D, eps);
    TGA_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_rmsnorm_forward(float *out, float *rstd, const float *in, const float *weight, int N, int D,
                                         float eps) {
    /* the kernel writes x only when it adds a delta */
    launch_rmsnorm_forward<false>(out, rstd, const_cast<float *>(in), nullptr, weight, N, D, eps);
}

extern "C" void tga_cuda_add_rmsnorm_forward(float *residual, const float *delta, float *out, float *rstd,
                                             const float *weight, int N, int D, float eps) {
    launch_rmsnorm_forward<true>(out, rstd, residual, delta, weight, N, D, eps);
}

extern "C" void tga_cuda_rmsnorm_forward_bf16(tga_bf16 *out, float *rstd, const float *in, const float *weight, int N,
                                              int D, float eps) {
    launch_rmsnorm_forward<false>(reinterpret_cast<__nv_bfloat16 *>(out), rstd, const_cast<float *>(in), nullptr,
                                  weight, N, D, eps);
}

extern "C" void tga_cuda_add_rmsnorm_forward_bf16(float *residual, const float *delta, tga_bf16 *out, float *rstd,
                                                  const float *weight, int N, int D, float eps) {
    launch_rmsnorm_forward<true>(reinterpret_cast<__nv_bfloat16 *>(out), rstd, residual, delta, weight, N, D, eps);
}

extern "C" void tga_cuda_rmsnorm_backward(float *din, float *dweight, const float *dout, const float *in,
                                          const float *weight, const float *rstd, int N, int D, int accumulate_din) {
    if (N <= 0 || D <= 0) return;
    if (din) {
        rmsnorm_din_kernel<<<(unsigned)N, kRowThreads, 0, tga_cuda_stream>>>(din, dout, in, weight, rstd, D,
                                                                              accumulate_din);
        TGA_CUDA_CHECK_LAUNCH("rmsnorm_din_kernel");
    }
    if (dweight) column_sum_accumulate(dweight, N, D, rmsnorm_dweight_term{dout, in, rstd, D});
}
