/* Pointwise activations: SwiGLU (silu(gate) * up) and exact-erf GELU (nn.GELU()), with the
 * formulas and operation order of torch's kernels (as kernels/cpu/activations.c). expf and erff
 * are CUDA's accurate versions (2 ulp; the library is not built with --use_fast_math). */
#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

/* <math.h>'s M_ constants are POSIX, not standard */
constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

__global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* d silu(g) / dg = s * (1 + g * (1 - s)), s = sigmoid(g) (torch's silu_backward) */
__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                       size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i], d = dout[i];
        const float s = 1.0f / (1.0f + expf(-g));
        dgate[i] = d * up[i] * (s * (1.0f + g * (1.0f - s)));
        dup[i] = d * (g * s);
    }
}

__global__ void gelu_forward_kernel(float *out, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = in[i];
        out[i] = x * 0.5f * (1.0f + erff(x * kSqrt1_2));
    }
}

/* d gelu / dx = Phi(x) + x * phi(x) */
__global__ void gelu_backward_kernel(float *din, const float *dout, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = in[i];
        const float cdf = 0.5f * (1.0f + erff(x * kSqrt1_2));
        const float pdf = expf(-0.5f * x * x) * kInvSqrt2Pi;
        din[i] = dout[i] * (cdf + x * pdf);
    }
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    if (n == 0) return;
    swiglu_forward_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(out, gate, up, n);
    TGA_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

extern "C" void tga_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                                         const float *up, size_t n) {
    if (n == 0) return;
    swiglu_backward_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(dgate, dup, dout, gate,
                                                                                             up, n);
    TGA_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

extern "C" void tga_cuda_gelu_forward(float *out, const float *in, size_t n) {
    if (n == 0) return;
    gelu_forward_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(out, in, n);
    TGA_CUDA_CHECK_LAUNCH("gelu_forward_kernel");
}

extern "C" void tga_cuda_gelu_backward(float *din, const float *dout, const float *in, size_t n) {
    if (n == 0) return;
    gelu_backward_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(din, dout, in, n);
    TGA_CUDA_CHECK_LAUNCH("gelu_backward_kernel");
}
