/* The TGA alignment terms at one layer on pooled vectors (contract in kernels/ops.h, derivation
 * and torch 1.13's cosine conventions in kernels/cpu/tga_align.c, which this follows formula for
 * formula, in double):
 *     pair_b = w_pair * exp(-cos(v_b, c_b)),  rank_b = w_rank * exp(cos(r_b, c_b) - cos(v_b, c_b)),
 *     cos(x, y) = <x, y> / (max(|x|, eps) max(|y|, eps)),
 *     dcos/dx = y / (n_x n_y) - cos x / n_x^2.
 * One block per sample computes its dot products (fixed-order block sums in double), its terms
 * and its gradient rows; one thread then adds the per-sample terms in sample order, and the two
 * sums come back to the host, which is why this op waits for the device. */
#include "kernels/cuda/cosine.cuh"

namespace tga_cuda {

constexpr int kAlignThreads = 256;

/* grad[d] = scale * dcos(x, y)/dx[d] over the block's share of the row */
__device__ inline void cosine_grad_x(float *grad, double scale, const cosine_terms &t, const float *x, const float *y,
                                     int D) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) grad[d] = cosine_grad(scale, t, x[d], y[d]);
}

__device__ inline void zero_row(float *row, int D) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) row[d] = 0.0f;
}

/* terms[2b] = pair_b, terms[2b+1] = rank_b (0 for skipped samples) */
__global__ void align_sample_kernel(double *terms, float *cos_vc, float *cos_rc, float *dv, float *dr,
                                    tga_align_args a) {
    const int b = blockIdx.x, D = a.dim;
    const size_t off = (size_t)b * D;
    const bool use_pair = a.use_pair[b] != 0, use_rank = use_pair && a.use_rank[b] != 0;
    if (!use_pair) {
        if (dv) zero_row(dv + off, D);
        if (dr) zero_row(dr + off, D);
        if (threadIdx.x == 0) {
            terms[2 * b] = terms[2 * b + 1] = 0.0;
            if (cos_vc) cos_vc[b] = 0.0f;
            if (cos_rc) cos_rc[b] = 0.0f;
        }
        return;
    }
    const float *v = a.v + off, *c = a.c + off, *r = a.r + off;
    double vc = 0.0, vv = 0.0, cc = 0.0, rc = 0.0, rr = 0.0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        vc += (double)v[d] * c[d];
        vv += (double)v[d] * v[d];
        cc += (double)c[d] * c[d];
        if (use_rank) {
            rc += (double)r[d] * c[d];
            rr += (double)r[d] * r[d];
        }
    }
    vc = block_sum(vc);
    vv = block_sum(vv);
    cc = block_sum(cc);
    rc = block_sum(rc);
    rr = block_sum(rr);
    const cosine_terms tv = cosine_from_sums(vc, vv, cc, a.eps);
    const cosine_terms tr = cosine_from_sums(rc, rr, cc, a.eps);
    const double pair_b = a.w_pair * exp(-tv.cos);
    const double rank_b = use_rank ? a.w_rank * exp(tr.cos - tv.cos) : 0.0;
    if (threadIdx.x == 0) {
        terms[2 * b] = pair_b;
        terms[2 * b + 1] = rank_b;
        if (cos_vc) cos_vc[b] = (float)tv.cos;
        if (cos_rc) cos_rc[b] = use_rank ? (float)tr.cos : 0.0f;
    }
    /* d(rank_b)/dr = rank_b dcos(r, c)/dr;  d(pair_b + rank_b)/dv = -(pair_b + rank_b) dcos(v, c)/dv */
    if (dr) {
        if (use_rank)
            cosine_grad_x(dr + off, rank_b, tr, r, c, D);
        else
            zero_row(dr + off, D);
    }
    if (dv) cosine_grad_x(dv + off, -(pair_b + rank_b), tv, v, c, D);
}

__global__ void align_sum_terms_kernel(double *sums, const double *terms, int n) {
    double pair = 0.0, rank = 0.0;
    for (int b = 0; b < n; b++) {
        pair += terms[2 * b];
        rank += terms[2 * b + 1];
    }
    sums[0] = pair;
    sums[1] = rank;
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_tga_align_loss(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc, float *dv,
                                        float *dr, const tga_align_args *args) {
    if (args->n <= 0) return;
    double *terms = (double *)tga_cuda_scratch((size_t)(2 * args->n + 2) * sizeof(double));
    double sums[2] = {0.0, 0.0};
    if (terms) {
        align_sample_kernel<<<(unsigned)args->n, kAlignThreads, 0, tga_cuda_stream>>>(terms, cos_vc, cos_rc, dv, dr,
                                                                                     *args);
        TGA_CUDA_CHECK_LAUNCH("align_sample_kernel");
        align_sum_terms_kernel<<<1, 1, 0, tga_cuda_stream>>>(terms + 2 * args->n, terms, args->n);
        TGA_CUDA_CHECK_LAUNCH("align_sum_terms_kernel");
        TGA_CUDA_CHECK(cudaMemcpyAsync(sums, terms + 2 * args->n, sizeof sums, cudaMemcpyDeviceToHost, tga_cuda_stream));
    }
    tga_cuda_sync_or_die("tga_align_loss");
    *pair_sum += sums[0];
    *rank_sum += sums[1];
}
