/* Pointwise activations: SwiGLU (silu(gate) * up) and exact-erf GELU (nn.GELU()), with the
 * formulas and operation order of torch's kernels (as kernels/cpu/activations.c). expf and erff
 * are CUDA's accurate versions (2 ulp; the library is not built with --use_fast_math).
 *
 * The projector's GELU with its bias: the forward adds the bias and applies GELU in one pass
 * (cuBLASLt's GELU epilogues use the tanh approximation, not nn.GELU()'s erf); the backward
 * computes the GELU gradient inside the bias gradient's column sums (column_sum.cuh visits each
 * element once and stores it on the way), one pass instead of two.
 *
 * With model.dtype bf16 the SwiGLU forward also rounds gate and up to bf16 and stores them (the
 * backward reads them back): the MLP keeps its two widest activations in half the memory. */
#include "kernels/cuda/column_sum.cuh"

namespace tga_cuda {

/* <math.h>'s M_ constants are POSIX, not standard */
constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

__device__ inline float swiglu_value(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/* With gate_store (swiglu_forward_bf16, Out = bf16): gate and up rounded to bf16, stored, and used
 * rounded; the output rounded as it is stored. */
template <typename Out>
__global__ void swiglu_forward_kernel(Out *out, __nv_bfloat16 *gate_store, __nv_bfloat16 *up_store, const float *gate,
                                      const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i], u = up[i];
        if (gate_store) {
            const __nv_bfloat16 g16 = __float2bfloat16_rn(g), u16 = __float2bfloat16_rn(u);
            gate_store[i] = g16;
            up_store[i] = u16;
            g = __bfloat162float(g16);
            u = __bfloat162float(u16);
        }
        store(out[i], swiglu_value(g, u));
    }
}

/* d silu(g) / dg = s * (1 + g * (1 - s)), s = sigmoid(g) (torch's silu_backward); gate and up
 * in fp32 or bf16 */
template <typename T>
__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const T *gate, const T *up,
                                       size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = widen(gate[i]), d = dout[i];
        const float s = 1.0f / (1.0f + expf(-g));
        dgate[i] = d * widen(up[i]) * (s * (1.0f + g * (1.0f - s)));
        dup[i] = d * (g * s);
    }
}

__device__ inline float gelu(float x) { return x * 0.5f * (1.0f + erff(x * kSqrt1_2)); }

/* d gelu / dx = Phi(x) + x * phi(x) */
__device__ inline float gelu_grad(float x) {
    const float cdf = 0.5f * (1.0f + erff(x * kSqrt1_2));
    const float pdf = expf(-0.5f * x * x) * kInvSqrt2Pi;
    return cdf + x * pdf;
}

__global__ void gelu_forward_kernel(float *out, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = gelu(in[i]);
}

__global__ void gelu_backward_kernel(float *din, const float *dout, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        din[i] = dout[i] * gelu_grad(in[i]);
}

__global__ void bias_gelu_forward_kernel(float *pre, float *act, const float *bias, size_t n, int D) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = pre[i] + bias[i % (size_t)D];
        pre[i] = x;
        act[i] = gelu(x);
    }
}

/* The bias gradient's term: dpre(n, j), stored as it is summed (each element is visited once). */
struct gelu_grad_term {
    float *dpre;
    const float *dact, *pre;
    int D;
    __device__ double operator()(int n, int j) const {
        const size_t i = (size_t)n * D + j;
        const float d = dact[i] * gelu_grad(pre[i]);
        dpre[i] = d;
        return d;
    }
};

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    if (n == 0) return;
    swiglu_forward_kernel<float>
        <<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(out, nullptr, nullptr, gate, up, n);
    TGA_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

extern "C" void tga_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                                         const float *up, size_t n) {
    if (n == 0) return;
    swiglu_backward_kernel<float>
        <<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(dgate, dup, dout, gate, up, n);
    TGA_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

extern "C" void tga_cuda_swiglu_forward_bf16(tga_bf16 *out, tga_bf16 *gate_store, tga_bf16 *up_store,
                                             const float *gate, const float *up, size_t n) {
    if (n == 0) return;
    swiglu_forward_kernel<__nv_bfloat16><<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(
        reinterpret_cast<__nv_bfloat16 *>(out), reinterpret_cast<__nv_bfloat16 *>(gate_store),
        reinterpret_cast<__nv_bfloat16 *>(up_store), gate, up, n);
    TGA_CUDA_CHECK_LAUNCH("swiglu_forward_kernel (bf16 store)");
}

extern "C" void tga_cuda_swiglu_backward_bf16(float *dgate, float *dup, const float *dout, const tga_bf16 *gate,
                                              const tga_bf16 *up, size_t n) {
    if (n == 0) return;
    swiglu_backward_kernel<__nv_bfloat16><<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(
        dgate, dup, dout, reinterpret_cast<const __nv_bfloat16 *>(gate), reinterpret_cast<const __nv_bfloat16 *>(up),
        n);
    TGA_CUDA_CHECK_LAUNCH("swiglu_backward_kernel<bf16>");
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

extern "C" void tga_cuda_bias_gelu_forward(float *pre, float *act, const float *bias, int N, int D) {
    const size_t n = (size_t)N * D;
    if (n == 0) return;
    bias_gelu_forward_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(pre, act, bias, n, D);
    TGA_CUDA_CHECK_LAUNCH("bias_gelu_forward_kernel");
}

extern "C" void tga_cuda_gelu_bias_backward(float *dpre, float *dbias, const float *dact, const float *pre, int N,
                                            int D) {
    if (dbias) {
        column_sum_accumulate(dbias, N, D, gelu_grad_term{dpre, dact, pre, D});
        return;
    }
    tga_cuda_gelu_backward(dpre, dact, pre, (size_t)N * D);
}
