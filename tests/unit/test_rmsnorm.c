/* RMSNorm: forward, fused add + forward and backward against a double-precision reference, the
 * backward against central finite differences of L = sum(out * G), the accumulate / NULL variants,
 * and a weight gradient that is bit for bit the same with 1 and with several threads. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

typedef struct {
    int N, D;
    float eps;
    const float *in, *weight, *G;
    float *out, *rstd;
} rmsnorm_case;

static double loss(const float *x, void *ctx) {
    (void)x; /* x aliases in or weight, perturbed in place */
    rmsnorm_case *c = ctx;
    tga_cpu_rmsnorm_forward(c->out, c->rstd, c->in, c->weight, c->N, c->D, c->eps);
    double sum = 0;
    for (size_t i = 0; i < (size_t)c->N * c->D; i++) sum += (double)c->out[i] * c->G[i];
    return sum;
}

static double reference_rstd(const float *x, int D, float eps) {
    double ss = 0;
    for (int j = 0; j < D; j++) ss += (double)x[j] * x[j];
    return 1.0 / sqrt(ss / D + eps);
}

static void reference_forward(float *out, float *rstd, const float *in, const float *w, int N, int D, float eps) {
    for (int n = 0; n < N; n++) {
        const float *x = in + (size_t)n * D;
        double r = reference_rstd(x, D, eps);
        rstd[n] = (float)r;
        for (int j = 0; j < D; j++) out[(size_t)n * D + j] = (float)(w[j] * x[j] * r);
    }
}

/* dx_k = r w_k g_k - x_k r^3 / D * sum_j g_j w_j x_j;  dw_j = sum_n g_nj x_nj r_n. */
static void reference_backward(float *din, float *dweight, const rmsnorm_case *c) {
    int N = c->N, D = c->D;
    double *dw = calloc((size_t)D, sizeof *dw);
    for (int n = 0; n < N; n++) {
        const float *x = c->in + (size_t)n * D, *g = c->G + (size_t)n * D;
        double r = reference_rstd(x, D, c->eps), dot = 0;
        for (int j = 0; j < D; j++) dot += (double)g[j] * c->weight[j] * x[j];
        for (int j = 0; j < D; j++) {
            din[(size_t)n * D + j] = (float)(r * c->weight[j] * g[j] - x[j] * r * r * r / D * dot);
            dw[j] += (double)g[j] * x[j] * r;
        }
    }
    for (int j = 0; j < D; j++) dweight[j] = (float)dw[j];
    free(dw);
}

static void check_shape(int N, int D, uint64_t *rng) {
    size_t n_x = (size_t)N * D;
    float eps = 1e-5f;
    float *in = tu_alloc_uniform(n_x, -1, 1, rng);
    float *weight = tu_alloc_uniform((size_t)D, 0.5f, 1.5f, rng);
    float *G = tu_alloc_uniform(n_x, -1, 1, rng);
    float *out = calloc(n_x, sizeof *out), *rstd = calloc((size_t)N, sizeof *rstd);
    float *ref_out = calloc(n_x, sizeof *ref_out), *ref_rstd = calloc((size_t)N, sizeof *ref_rstd);
    rmsnorm_case c = {N, D, eps, in, weight, G, out, rstd};

    tga_cpu_rmsnorm_forward(out, rstd, in, weight, N, D, eps);
    reference_forward(ref_out, ref_rstd, in, weight, N, D, eps);
    double err = tu_rel_error(out, ref_out, n_x);
    CHECK(err <= 1e-5, "forward %dx%d: rel err %.3g", N, D, err);
    err = tu_rel_error(rstd, ref_rstd, (size_t)N);
    CHECK(err <= 1e-5, "rstd %dx%d: rel err %.3g", N, D, err);

    float *ref_din = calloc(n_x, sizeof *ref_din), *ref_dw = calloc((size_t)D, sizeof *ref_dw);
    reference_backward(ref_din, ref_dw, &c);
    float *din = tu_alloc_uniform(n_x, 1e3f, 2e3f, rng); /* garbage: overwritten */
    float *dw0 = tu_alloc_uniform((size_t)D, -1, 1, rng), *dw = tu_alloc_copy(dw0, (size_t)D);
    tga_cpu_rmsnorm_backward(din, dw, G, in, weight, rstd, N, D, 0);
    err = tu_rel_error(din, ref_din, n_x);
    CHECK(err <= 1e-5, "din overwrite %dx%d: rel err %.3g", N, D, err);
    for (int j = 0; j < D; j++) dw[j] -= dw0[j];
    err = tu_rel_error(dw, ref_dw, (size_t)D);
    CHECK(err <= 1e-5, "dweight accumulate %dx%d: rel err %.3g", N, D, err);

    float *din0 = tu_alloc_uniform(n_x, -1, 1, rng);
    memcpy(din, din0, n_x * sizeof *din);
    tga_cpu_rmsnorm_backward(din, NULL, G, in, weight, rstd, N, D, 1);
    for (size_t i = 0; i < n_x; i++) din[i] -= din0[i];
    err = tu_rel_error(din, ref_din, n_x);
    CHECK(err <= 1e-5, "din accumulate, dweight NULL %dx%d: rel err %.3g", N, D, err);

    memset(dw, 0, (size_t)D * sizeof *dw);
    tga_cpu_rmsnorm_backward(din, dw, G, in, weight, rstd, N, D, 0);
    err = tu_fd_check(loss, &c, in, din, n_x, 16, 3e-3f, 1e-1, rng);
    CHECK(err <= 2e-3, "finite differences din %dx%d: %.3g", N, D, err);
    err = tu_fd_check(loss, &c, weight, dw, (size_t)D, 16, 3e-3f, 1e-1, rng);
    CHECK(err <= 2e-3, "finite differences dweight %dx%d: %.3g", N, D, err);

    free(in), free(weight), free(G), free(out), free(rstd), free(ref_out), free(ref_rstd);
    free(ref_din), free(ref_dw), free(din), free(dw0), free(dw), free(din0);
}

static void check_add_rmsnorm(int N, int D, uint64_t *rng) {
    size_t n_x = (size_t)N * D;
    float eps = 1e-6f;
    float *residual = tu_alloc_uniform(n_x, -1, 1, rng), *delta = tu_alloc_uniform(n_x, -1, 1, rng);
    float *weight = tu_alloc_uniform((size_t)D, 0.5f, 1.5f, rng);
    float *sum = malloc(n_x * sizeof *sum);
    for (size_t i = 0; i < n_x; i++) sum[i] = residual[i] + delta[i];
    float *out = calloc(n_x, sizeof *out), *rstd = calloc((size_t)N, sizeof *rstd);
    float *ref_out = calloc(n_x, sizeof *ref_out), *ref_rstd = calloc((size_t)N, sizeof *ref_rstd);
    tga_cpu_add_rmsnorm_forward(residual, delta, out, rstd, weight, N, D, eps);
    reference_forward(ref_out, ref_rstd, sum, weight, N, D, eps);
    CHECK(memcmp(residual, sum, n_x * sizeof *sum) == 0, "add_rmsnorm %dx%d: residual != residual + delta", N, D);
    double err = tu_rel_error(out, ref_out, n_x);
    CHECK(err <= 1e-5, "add_rmsnorm %dx%d out: rel err %.3g", N, D, err);
    err = tu_rel_error(rstd, ref_rstd, (size_t)N);
    CHECK(err <= 1e-5, "add_rmsnorm %dx%d rstd: rel err %.3g", N, D, err);
    free(residual), free(delta), free(weight), free(sum), free(out), free(rstd), free(ref_out), free(ref_rstd);
}

static void check_dweight_thread_independent(uint64_t *rng) {
    int N = 257, D = 200;
    size_t n_x = (size_t)N * D;
    float *in = tu_alloc_uniform(n_x, -1, 1, rng), *G = tu_alloc_uniform(n_x, -1, 1, rng);
    float *weight = tu_alloc_uniform((size_t)D, 0.5f, 1.5f, rng);
    float *out = calloc(n_x, sizeof *out), *rstd = calloc((size_t)N, sizeof *rstd);
    float *one = calloc((size_t)D, sizeof *one), *many = calloc((size_t)D, sizeof *many);
    tga_cpu_rmsnorm_forward(out, rstd, in, weight, N, D, 1e-5f);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    tga_cpu_rmsnorm_backward(NULL, one, G, in, weight, rstd, N, D, 0);
    omp_set_num_threads(3);
    tga_cpu_rmsnorm_backward(NULL, many, G, in, weight, rstd, N, D, 0);
    omp_set_num_threads(saved);
    CHECK(memcmp(one, many, (size_t)D * sizeof *one) == 0, "dweight differs between 1 and 3 threads");
    free(in), free(G), free(weight), free(out), free(rstd), free(one), free(many);
}

int main(void) {
    uint64_t rng = 0x7A5E;
    check_shape(6, 64, &rng);
    check_shape(9, 131, &rng);
    check_shape(3, 5, &rng);
    check_add_rmsnorm(17, 96, &rng);
    check_add_rmsnorm(4, 13, &rng);
    check_dweight_thread_independent(&rng);
    return tu_finish("test_rmsnorm");
}
