/* RMSNorm as HF LlamaRMSNorm computes it in fp32: var = mean(x^2), out = w * (x * rsqrt(var + eps)).
 * Row sums are taken in double over eight interleaved lanes, a fixed order the compiler can
 * vectorise. The weight gradient is summed over rows in row order per column, so it does not
 * depend on the thread count. */
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"

#define ROW_LANES 8
/* Columns per task of the weight-gradient sum (see linear.c's bias gradient). */
#define WEIGHT_GRAD_COLS 512

static double row_sum_squares(const float *x, int D) {
    double lane[ROW_LANES] = {0};
    int j = 0;
    for (; j + ROW_LANES <= D; j += ROW_LANES)
        for (int l = 0; l < ROW_LANES; l++)
            lane[l] += (double)x[j + l] * x[j + l];
    for (; j < D; j++)
        lane[0] += (double)x[j] * x[j];
    double sum = 0;
    for (int l = 0; l < ROW_LANES; l++)
        sum += lane[l];
    return sum;
}

/* sum_j g[j] * w[j] * x[j], the row's projection of the upstream gradient onto x. */
static double row_weighted_dot(const float *g, const float *w, const float *x, int D) {
    double lane[ROW_LANES] = {0};
    int j = 0;
    for (; j + ROW_LANES <= D; j += ROW_LANES)
        for (int l = 0; l < ROW_LANES; l++)
            lane[l] += (double)(g[j + l] * w[j + l]) * x[j + l];
    for (; j < D; j++)
        lane[0] += (double)(g[j] * w[j]) * x[j];
    double sum = 0;
    for (int l = 0; l < ROW_LANES; l++)
        sum += lane[l];
    return sum;
}

/* Normalises one row into out (fp32) or out16 (rounded to bf16) and returns its rstd; HF rounds
 * the variance to fp32 before rsqrt. */
static float normalize_row(float *out, tga_bf16 *out16, const float *x, const float *w, int D, float eps) {
    float var = (float)(row_sum_squares(x, D) / D);
    float rstd = 1.0f / sqrtf(var + eps);
    if (out16)
        for (int j = 0; j < D; j++)
            out16[j] = tga_bf16_from_float(w[j] * (x[j] * rstd));
    else
        for (int j = 0; j < D; j++)
            out[j] = w[j] * (x[j] * rstd);
    return rstd;
}

static void rmsnorm_rows(float *out, tga_bf16 *out16, float *rstd, const float *in, const float *weight, int N,
                         int D, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        size_t off = (size_t)n * D;
        rstd[n] = normalize_row(out ? out + off : NULL, out16 ? out16 + off : NULL, in + off, weight, D, eps);
    }
}

static void add_rmsnorm_rows(float *residual, const float *delta, float *out, tga_bf16 *out16, float *rstd,
                             const float *weight, int N, int D, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        size_t off = (size_t)n * D;
        float *res = residual + off;
        const float *add = delta + off;
        for (int j = 0; j < D; j++)
            res[j] += add[j];
        rstd[n] = normalize_row(out ? out + off : NULL, out16 ? out16 + off : NULL, res, weight, D, eps);
    }
}

void tga_cpu_rmsnorm_forward(float *out, float *rstd, const float *in, const float *weight, int N, int D,
                             float eps) {
    rmsnorm_rows(out, NULL, rstd, in, weight, N, D, eps);
}

void tga_cpu_rmsnorm_forward_bf16(tga_bf16 *out, float *rstd, const float *in, const float *weight, int N, int D,
                                  float eps) {
    rmsnorm_rows(NULL, out, rstd, in, weight, N, D, eps);
}

void tga_cpu_add_rmsnorm_forward(float *residual, const float *delta, float *out, float *rstd,
                                 const float *weight, int N, int D, float eps) {
    add_rmsnorm_rows(residual, delta, out, NULL, rstd, weight, N, D, eps);
}

void tga_cpu_add_rmsnorm_forward_bf16(float *residual, const float *delta, tga_bf16 *out, float *rstd,
                                      const float *weight, int N, int D, float eps) {
    add_rmsnorm_rows(residual, delta, NULL, out, rstd, weight, N, D, eps);
}

/* dx = r * w * g - x * (r^3 / D) * sum_j(g_j w_j x_j), with r = rstd of the row. */
static void rmsnorm_din(float *din, const float *dout, const float *in, const float *weight,
                        const float *rstd, int N, int D, int accumulate_din) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        size_t off = (size_t)n * D;
        const float *g = dout + off, *x = in + off;
        float *dx = din + off;
        float r = rstd[n];
        float coef = (float)((double)r * r * r * row_weighted_dot(g, weight, x, D) / D);
        if (accumulate_din)
            for (int j = 0; j < D; j++)
                dx[j] += r * (g[j] * weight[j]) - coef * x[j];
        else
            for (int j = 0; j < D; j++)
                dx[j] = r * (g[j] * weight[j]) - coef * x[j];
    }
}

/* dw[j] += sum over rows n (in order) of g[n, j] * x[n, j] * r[n], in double. */
static void rmsnorm_dweight(float *dweight, const float *dout, const float *in, const float *rstd, int N,
                            int D) {
    int n_blocks = (D + WEIGHT_GRAD_COLS - 1) / WEIGHT_GRAD_COLS;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        int j0 = blk * WEIGHT_GRAD_COLS;
        int width = D - j0 < WEIGHT_GRAD_COLS ? D - j0 : WEIGHT_GRAD_COLS;
        double sum[WEIGHT_GRAD_COLS] = {0};
        for (int n = 0; n < N; n++) {
            const float *g = dout + (size_t)n * D + j0, *x = in + (size_t)n * D + j0;
            float r = rstd[n];
            for (int j = 0; j < width; j++)
                sum[j] += (double)(g[j] * (x[j] * r));
        }
        for (int j = 0; j < width; j++)
            dweight[j0 + j] += (float)sum[j];
    }
}

void tga_cpu_rmsnorm_backward(float *din, float *dweight, const float *dout, const float *in,
                              const float *weight, const float *rstd, int N, int D, int accumulate_din) {
    if (din) rmsnorm_din(din, dout, in, weight, rstd, N, D, accumulate_din);
    if (dweight) rmsnorm_dweight(dweight, dout, in, rstd, N, D);
}
