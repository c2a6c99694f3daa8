/* Cosine similarity with torch 1.13's conventions, from dot products summed in double (the
 * arithmetic of kernels/cpu/tga_align.c), shared by the alignment kernels (tga_align.cu,
 * tga_align_fused.cu):
 *     cos(x, y) = <x, y> / (max(|x|, eps) max(|y|, eps)),   dcos/dx = y / (n_x n_y) - cos x / n_x^2. */
#ifndef TGA_KERNELS_CUDA_COSINE_CUH
#define TGA_KERNELS_CUDA_COSINE_CUH

#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

struct cosine_terms {
    double cos, inv_norm_x, inv_norm_y;
};

__device__ inline cosine_terms cosine_from_sums(double xy, double xx, double yy, double eps) {
    cosine_terms t;
    t.inv_norm_x = 1.0 / fmax(sqrt(xx), eps);
    t.inv_norm_y = 1.0 / fmax(sqrt(yy), eps);
    t.cos = xy * t.inv_norm_x * t.inv_norm_y;
    return t;
}

/* scale * dcos(x, y)/dx at one column */
__device__ inline float cosine_grad(double scale, const cosine_terms &t, float x, float y) {
    const double along_y = scale * t.inv_norm_x * t.inv_norm_y;
    const double along_x = -scale * t.cos * t.inv_norm_x * t.inv_norm_x;
    return (float)(along_y * y + along_x * x);
}

} // namespace tga_cuda

#endif
