/* The TGA alignment over all align layers in one launch, and its backward scatter in another
 * (contracts in kernels/ops.h). The formulas are those of kernels/cpu/tga_align.c (torch 1.13's
 * cosine: each norm clamped to eps on its own, the clamp invisible to the gradient):
 *     pair_b = w_pair exp(-cos(v_b, c_b)),  rank_b = w_rank exp(cos(r_b, c_b) - cos(v_b, c_b)),
 *     dcos(x, y)/dx = y / (n_x n_y) - cos x / n_x^2.
 *
 * Forward: one block per (sample b, layer j). Each thread owns the columns threadIdx.x + k*blockDim
 * and, for each, sums the rows of b's image segments (then of its retrieved-text segments) one by
 * one in segment order, in double, as the CPU's pooling does: the pooled vectors are the CPU's
 * bits. The block then reduces its five dot products (fixed-order block sums in double) and writes
 * its cosines, terms and gradient rows, each thread on its own columns (so the pooled values it
 * reads back are its own writes). The per-block terms come back to the host, which adds them in
 * the CPU's order (samples within a layer, then layers): no atomics, and the host needs the sums
 * anyway.
 *
 * Backward: the image and retrieved-text tables form one list, image segments first; a row may
 * lie in several segments (spans may overlap), so to avoid racing writes each row is owned by the
 * first segment of the list that covers it, and the owner adds that segment's contribution and
 * every later one's in list order, as separately rounded multiply and add: the CPU's two
 * segment_mean_backward calls, the same bits. */
#include <stdlib.h>

#include "kernels/cuda/cosine.cuh"

namespace tga_cuda {

/* A block has one (sample, layer) and may be one of few (9 layers x a per-GPU batch of 8 is 72
 * blocks on 132 SMs): its pooling is memory-bound and each thread sums its columns' rows in one
 * dependent chain, so a full block of threads keeps the most loads in flight. */
constexpr int kFusedThreads = 1024;
/* Row groups per segment in the backward grid: blocks handle rows start+y, start+y+16, ... */
constexpr int kFusedRowGroups = 16;

/* Output b's mean over its segments of column col of hidden, rounded as the CPU rounds it. */
__device__ inline float pooled_column(const float *hidden, const tga_segments &seg, int b, int col, int D) {
    const int rows = seg.out_rows[b];
    if (rows == 0) return 0.0f;
    double sum = 0.0;
    for (int s = 0; s < seg.n_segments; s++) {
        if (seg.out_index[s] != b) continue;
        const float *x = hidden + (size_t)seg.row_start[s] * D + col;
#pragma unroll 4
        for (int t = 0; t < seg.row_count[s]; t++) sum += x[(size_t)t * D];
    }
    return (float)(sum * (1.0 / rows));
}

/* grid (n, n_layers); terms[2 (j n + b)] = pair_b, terms[2 (j n + b) + 1] = rank_b at layer j */
__global__ void __launch_bounds__(kFusedThreads)
    align_fused_forward_kernel(double *terms, float *cos_vc, float *cos_rc, float *v, float *r, float *dv, float *dr,
                               const float *const *hidden, tga_segments img, tga_segments ret, tga_align_args a) {
    const int b = blockIdx.x, j = blockIdx.y, D = a.dim;
    const size_t item = (size_t)j * a.n + b, off = item * D;
    const float *x = hidden[j], *c = a.c + off;
    float *v_b = v + off, *r_b = r + off;
    double vc = 0.0, vv = 0.0, cc = 0.0, rc = 0.0, rr = 0.0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const float pv = pooled_column(x, img, b, d, D), pr = pooled_column(x, ret, b, d, D);
        v_b[d] = pv;
        r_b[d] = pr;
        vc += (double)pv * c[d];
        vv += (double)pv * pv;
        cc += (double)c[d] * c[d];
        rc += (double)pr * c[d];
        rr += (double)pr * pr;
    }
    vc = block_sum(vc);
    vv = block_sum(vv);
    cc = block_sum(cc);
    rc = block_sum(rc);
    rr = block_sum(rr);
    const bool use_pair = a.use_pair[b] != 0, use_rank = use_pair && a.use_rank[b] != 0;
    const cosine_terms tv = cosine_from_sums(vc, vv, cc, a.eps);
    const cosine_terms tr = cosine_from_sums(rc, rr, cc, a.eps);
    const double pair_b = use_pair ? a.w_pair * exp(-tv.cos) : 0.0;
    const double rank_b = use_rank ? a.w_rank * exp(tr.cos - tv.cos) : 0.0;
    if (threadIdx.x == 0) {
        terms[2 * item] = pair_b;
        terms[2 * item + 1] = rank_b;
        if (cos_vc) cos_vc[item] = use_pair ? (float)tv.cos : 0.0f;
        if (cos_rc) cos_rc[item] = use_rank ? (float)tr.cos : 0.0f;
    }
    /* d(pair_b + rank_b)/dv = -(pair_b + rank_b) dcos(v, c)/dv;  d(rank_b)/dr = rank_b dcos(r, c)/dr */
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        if (dv) dv[off + d] = use_pair ? cosine_grad(-(pair_b + rank_b), tv, v_b[d], c[d]) : 0.0f;
        if (dr) dr[off + d] = use_rank ? cosine_grad(rank_b, tr, r_b[d], c[d]) : 0.0f;
    }
}

/* Segment s of the list "img's segments, then ret's": its rows, the gradient row it spreads and
 * the scale 1/out_rows (0 rows: contributes nothing). */
struct fused_span {
    int start, end;
    const float *grad;
    int out_rows;
};

__device__ inline fused_span list_segment(const tga_segments &img, const tga_segments &ret, const float *dv,
                                          const float *dr, int s, int D) {
    const bool is_img = s < img.n_segments;
    const tga_segments &seg = is_img ? img : ret;
    const int i = is_img ? s : s - img.n_segments, out = seg.out_index[i];
    fused_span span;
    span.start = seg.row_start[i];
    span.end = span.start + seg.row_count[i];
    span.grad = (is_img ? dv : dr) + (size_t)out * D;
    span.out_rows = seg.out_rows[out];
    return span;
}

__global__ void align_fused_backward_kernel(float *din, const float *dv, const float *dr, tga_segments img,
                                            tga_segments ret, int D) {
    const int s = blockIdx.x, n_list = img.n_segments + ret.n_segments;
    const fused_span own = list_segment(img, ret, dv, dr, s, D);
    for (int row = own.start + blockIdx.y; row < own.end; row += gridDim.y) {
        bool owned = true;
        for (int earlier = 0; earlier < s && owned; earlier++) {
            const fused_span e = list_segment(img, ret, dv, dr, earlier, D);
            owned = row < e.start || row >= e.end;
        }
        if (!owned) continue;
        for (int col = threadIdx.x; col < D; col += blockDim.x) {
            float acc = din[(size_t)row * D + col];
            for (int later = s; later < n_list; later++) {
                const fused_span l = list_segment(img, ret, dv, dr, later, D);
                if (row < l.start || row >= l.end || l.out_rows == 0) continue;
                acc = __fadd_rn(acc, __fmul_rn(l.grad[col], 1.0f / (float)l.out_rows));
            }
            din[(size_t)row * D + col] = acc;
        }
    }
}

}  // namespace tga_cuda

using namespace tga_cuda;

/* The device scratch holds the per-block terms, then the table of hidden-state pointers. */
extern "C" void tga_cuda_tga_align_fused_forward(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc,
                                                 float *v, float *r, float *dv, float *dr,
                                                 const float *const *hidden, int n_layers, const tga_segments *img,
                                                 const tga_segments *ret, const tga_align_args *args) {
    const int n = args->n;
    if (n <= 0 || n_layers <= 0 || args->dim <= 0) return;
    const size_t n_terms = (size_t)2 * n * n_layers, terms_bytes = tga_cuda_align_up(n_terms * sizeof(double));
    const size_t table_bytes = (size_t)n_layers * sizeof *hidden;
    char *scratch = (char *)tga_cuda_scratch(terms_bytes + table_bytes);
    double *host_terms = (double *)malloc(n_terms * sizeof *host_terms);
    if (!host_terms) tga_cuda_record_error(__FILE__, __LINE__, "tga_align_fused_forward", "out of host memory");
    if (scratch && host_terms) {
        double *terms = (double *)scratch;
        const float **table = (const float **)(scratch + terms_bytes);
        TGA_CUDA_CHECK(cudaMemcpyAsync(table, hidden, table_bytes, cudaMemcpyHostToDevice, tga_cuda_stream));
        const dim3 grid((unsigned)n, (unsigned)n_layers);
        align_fused_forward_kernel<<<grid, kFusedThreads, 0, tga_cuda_stream>>>(terms, cos_vc, cos_rc, v, r, dv, dr,
                                                                                table, *img, *ret, *args);
        TGA_CUDA_CHECK_LAUNCH("align_fused_forward_kernel");
        TGA_CUDA_CHECK(cudaMemcpyAsync(host_terms, terms, n_terms * sizeof *host_terms, cudaMemcpyDeviceToHost,
                                       tga_cuda_stream));
    }
    tga_cuda_sync_or_die("tga_align_fused_forward");
    for (int j = 0; j < n_layers; j++) {
        double pair = 0.0, rank = 0.0;
        for (int b = 0; b < n; b++) {
            pair += host_terms[2 * ((size_t)j * n + b)];
            rank += host_terms[2 * ((size_t)j * n + b) + 1];
        }
        *pair_sum += pair;
        *rank_sum += rank;
    }
    free(host_terms);
}

extern "C" void tga_cuda_tga_align_fused_backward(float *din, const float *dv, const float *dr, const tga_segments *img,
                                                  const tga_segments *ret, int D) {
    const int n_list = img->n_segments + ret->n_segments;
    if (n_list <= 0 || D <= 0) return;
    const dim3 grid((unsigned)n_list, kFusedRowGroups);
    align_fused_backward_kernel<<<grid, kElementwiseThreads, 0, tga_cuda_stream>>>(din, dv, dr, *img, *ret, D);
    TGA_CUDA_CHECK_LAUNCH("align_fused_backward_kernel");
}
