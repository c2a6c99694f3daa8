/* The fused TGA alignment ops (contract in kernels/ops.h) on the CPU: the composition of the
 * pooling and alignment-loss ops, called in the order the model called them before fusion. The CPU
 * gains nothing from fusing (the passes are memory-bound either way); what this file guarantees is
 * that the fused entry points give exactly the bits of that composition, so the model's losses
 * and gradients on the CPU do not change, and the CUDA op has a reference to be checked against. */
#include "kernels/cpu/cpu_kernels.h"

void tga_cpu_tga_align_fused_forward(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc, float *v,
                                     float *r, float *dv, float *dr, const float *const *hidden, int n_layers,
                                     const tga_segments *img, const tga_segments *ret, const tga_align_args *args) {
    const int n = args->n, D = args->dim;
    const size_t layer_size = (size_t)n * D;
    for (int j = 0; j < n_layers; j++) {
        float *v_j = v + j * layer_size, *r_j = r + j * layer_size;
        tga_cpu_segment_mean_forward(v_j, hidden[j], img, D);
        tga_cpu_segment_mean_forward(r_j, hidden[j], ret, D);
        tga_align_args layer = *args;
        layer.v = v_j;
        layer.r = r_j;
        layer.c = args->c + j * layer_size;
        tga_cpu_tga_align_loss(pair_sum, rank_sum, cos_vc ? cos_vc + (size_t)j * n : NULL,
                               cos_rc ? cos_rc + (size_t)j * n : NULL, dv ? dv + j * layer_size : NULL,
                               dr ? dr + j * layer_size : NULL, &layer);
    }
}

void tga_cpu_tga_align_fused_backward(float *din, const float *dv, const float *dr, const tga_segments *img,
                                      const tga_segments *ret, int D) {
    tga_cpu_segment_mean_backward(din, dv, img, D);
    tga_cpu_segment_mean_backward(din, dr, ret, D);
}
