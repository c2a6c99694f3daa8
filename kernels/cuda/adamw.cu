/* AdamW as torch.optim.AdamW (torch 1.13, _single_tensor_adamw), with the operations of
 * kernels/cpu/adamw.c in the same order. The _rn intrinsics are IEEE operations the compiler may
 * not contract into FMAs, and the two moment updates are the explicit FMAs torch's kernels use,
 * so each element is the same correctly rounded sequence as on the CPU: the same bits. The scalar
 * coefficients are computed on the host in double, as the CPU version does. adamw_bf16 also
 * stores each updated parameter's bf16 copy (model.dtype bf16) from the register it computed. */
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

struct adamw_coefs {
    float decay, beta1, beta2, one_minus_beta1, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size;
};

/* param_bf16 (may be NULL): the bf16 copy of the updated parameters, nearest even (to_bf16's). */
__global__ void adamw_kernel(float *param, __nv_bfloat16 *param_bf16, const float *grad, float *m, float *v, size_t n,
                             adamw_coefs c) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = grad[i];
        const float p = __fmul_rn(param[i], c.decay);
        const float m_i = __fmaf_rn(c.one_minus_beta1, g, __fmul_rn(m[i], c.beta1));
        const float v_i = __fmaf_rn(__fmul_rn(c.one_minus_beta2, g), g, __fmul_rn(v[i], c.beta2));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v_i), c.bias_correction2_sqrt), c.eps);
        const float updated = __fadd_rn(p, __fdiv_rn(__fmul_rn(c.neg_step_size, m_i), denom));
        param[i] = updated;
        if (param_bf16) param_bf16[i] = __float2bfloat16_rn(updated);
        m[i] = m_i;
        v[i] = v_i;
    }
}

static void adamw(float *param, tga_bf16 *param_bf16, const float *grad, float *m, float *v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step) {
    if (n == 0) return;
    const double bias_correction1 = 1.0 - pow(beta1, step);
    const double bias_correction2 = 1.0 - pow(beta2, step);
    const adamw_coefs c = {
        (float)(1.0 - (double)lr * weight_decay),
        beta1,
        beta2,
        (float)(1.0 - (double)beta1),
        (float)(1.0 - (double)beta2),
        (float)sqrt(bias_correction2),
        eps,
        (float)(-((double)lr / bias_correction1)),
    };
    adamw_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(
        param, reinterpret_cast<__nv_bfloat16 *>(param_bf16), grad, m, v, n, c);
    TGA_CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace tga_cuda

extern "C" void tga_cuda_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                               float beta2, float eps, float weight_decay, int step) {
    tga_cuda::adamw(param, nullptr, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
}

extern "C" void tga_cuda_adamw_bf16(float *param, tga_bf16 *param_bf16, const float *grad, float *m, float *v,
                                    size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                                    int step) {
    tga_cuda::adamw(param, param_bf16, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
}
