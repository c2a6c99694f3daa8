/* The TGA alignment terms at one layer on pooled vectors (TGA-METHOD.md section 3):
 *     pair_b = w_pair * exp(-cos(v_b, c_b))
 *     rank_b = w_rank * exp(cos(r_b, c_b) - cos(v_b, c_b))
 *
 * cos follows torch 1.13's F.cosine_similarity, checked by experiment against /usr/bin/python3's
 * torch (tests/unit/tga_align_spec_check.py): each norm is clamped on its own,
 *     cos(x, y) = <x, y> / (max(|x|, eps) * max(|y|, eps)),
 * and the clamp is applied under no_grad, so the backward differentiates |x| as if unclamped but
 * evaluates it at the clamped value n_x = max(|x|, eps):
 *     dcos/dx = y / (n_x n_y) - cos * x / n_x^2.
 * (For |x| < eps this is neither the derivative of the clamped function nor of the unclamped
 * one; it is what torch trains with.) Dot products and norms are accumulated in double.
 *
 * Skipped samples (use_pair 0; use_rank counts only with use_pair) get zero gradient rows and a
 * reported cosine of 0. Samples are independent and few (the per-rank batch), so this runs
 * serially in sample order. */
#include "kernels/cpu/cpu_kernels.h"

#include <math.h>
#include <string.h>

typedef struct cosine_terms {
    double cos;
    double inv_norm_x; /* 1 / max(|x|, eps) */
    double inv_norm_y;
} cosine_terms;

static cosine_terms cosine_torch(const float *x, const float *y, int D, double eps) {
    double xy = 0.0, xx = 0.0, yy = 0.0;
    for (int d = 0; d < D; d++) {
        xy += (double)x[d] * y[d];
        xx += (double)x[d] * x[d];
        yy += (double)y[d] * y[d];
    }
    cosine_terms t;
    t.inv_norm_x = 1.0 / fmax(sqrt(xx), eps);
    t.inv_norm_y = 1.0 / fmax(sqrt(yy), eps);
    t.cos = xy * t.inv_norm_x * t.inv_norm_y;
    return t;
}

/* grad = scale * dcos(x, y)/dx, with dcos/dx as torch 1.13 computes it (see top of file). */
static void cosine_grad_x(float *grad, double scale, const cosine_terms *t, const float *x, const float *y,
                          int D) {
    double along_y = scale * t->inv_norm_x * t->inv_norm_y;
    double along_x = -scale * t->cos * t->inv_norm_x * t->inv_norm_x;
    for (int d = 0; d < D; d++) grad[d] = (float)(along_y * y[d] + along_x * x[d]);
}

void tga_cpu_tga_align_loss(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc, float *dv,
                            float *dr, const tga_align_args *args) {
    const int n = args->n, D = args->dim;
    const double eps = args->eps;
    double pair = 0.0, rank = 0.0;
    if (dv) memset(dv, 0, (size_t)n * D * sizeof *dv);
    if (dr) memset(dr, 0, (size_t)n * D * sizeof *dr);
    for (int b = 0; b < n; b++) {
        size_t offset = (size_t)b * D;
        if (cos_vc) cos_vc[b] = 0.0f;
        if (cos_rc) cos_rc[b] = 0.0f;
        if (!args->use_pair[b]) continue;
        const float *v = args->v + offset, *c = args->c + offset;
        cosine_terms vc = cosine_torch(v, c, D, eps);
        double pair_b = args->w_pair * exp(-vc.cos);
        double rank_b = 0.0;
        pair += pair_b;
        if (cos_vc) cos_vc[b] = (float)vc.cos;
        if (args->use_rank[b]) {
            const float *r = args->r + offset;
            cosine_terms rc = cosine_torch(r, c, D, eps);
            rank_b = args->w_rank * exp(rc.cos - vc.cos);
            rank += rank_b;
            if (cos_rc) cos_rc[b] = (float)rc.cos;
            /* d(rank_b)/dr = rank_b * dcos(r, c)/dr */
            if (dr) cosine_grad_x(dr + offset, rank_b, &rc, r, c, D);
        }
        /* d(pair_b + rank_b)/dv = -(pair_b + rank_b) * dcos(v, c)/dv */
        if (dv) cosine_grad_x(dv + offset, -(pair_b + rank_b), &vc, v, c, D);
    }
    *pair_sum += pair;
    *rank_sum += rank;
}
