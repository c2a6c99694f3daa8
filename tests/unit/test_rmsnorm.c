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

/* One problem: inputs, the upstream gradient G, the kernel's own forward outputs (its rstd feeds
 * the backward) and the reference gradients of L = sum(out * G). */
typedef struct {
    int N, D;
    size_t n_x;
    float eps;
    float *in, *weight, *G, *out, *rstd;
    float *ref_din, *ref_dweight;
} rmsnorm_case;

static double loss(const float *x, void *ctx) {
    (void)x; /* x aliases in or weight, perturbed in place */
    rmsnorm_case *c = ctx;
    tga_cpu_rmsnorm_forward(c->out, c->rstd, c->in, c->weight, c->N, c->D, c->eps);
    double sum = 0;
    for (size_t i = 0; i < c->n_x; i++)
        sum += (double)c->out[i] * c->G[i];
    return sum;
}

static double reference_rstd(const float *x, int D, float eps) {
    double ss = 0;
    for (int j = 0; j < D; j++)
        ss += (double)x[j] * x[j];
    return 1.0 / sqrt(ss / D + eps);
}

static void reference_forward(float *out, float *rstd, const float *in, const float *w, int N, int D,
                              float eps) {
    for (int n = 0; n < N; n++) {
        const float *x = in + (size_t)n * D;
        double r = reference_rstd(x, D, eps);
        rstd[n] = (float)r;
        for (int j = 0; j < D; j++)
            out[(size_t)n * D + j] = (float)(w[j] * x[j] * r);
    }
}

/* dx_k = r w_k g_k - x_k r^3 / D * sum_j g_j w_j x_j;  dw_j = sum_n g_nj x_nj r_n. */
static void reference_backward(rmsnorm_case *c) {
    int N = c->N, D = c->D;
    double *dw = calloc((size_t)D, sizeof *dw);
    for (int n = 0; n < N; n++) {
        const float *x = c->in + (size_t)n * D, *g = c->G + (size_t)n * D;
        double r = reference_rstd(x, D, c->eps), dot = 0;
        for (int j = 0; j < D; j++)
            dot += (double)g[j] * c->weight[j] * x[j];
        for (int j = 0; j < D; j++) {
            c->ref_din[(size_t)n * D + j] = (float)(r * c->weight[j] * g[j] - x[j] * r * r * r / D * dot);
            dw[j] += (double)g[j] * x[j] * r;
        }
    }
    for (int j = 0; j < D; j++)
        c->ref_dweight[j] = (float)dw[j];
    free(dw);
}

static rmsnorm_case case_new(int N, int D, uint64_t *rng) {
    rmsnorm_case c = {.N = N, .D = D, .n_x = (size_t)N * D, .eps = 1e-5f};
    c.in = tu_alloc_uniform(c.n_x, -1, 1, rng);
    c.weight = tu_alloc_uniform((size_t)D, 0.5f, 1.5f, rng);
    c.G = tu_alloc_uniform(c.n_x, -1, 1, rng);
    c.out = calloc(c.n_x, sizeof *c.out);
    c.rstd = calloc((size_t)N, sizeof *c.rstd);
    c.ref_din = calloc(c.n_x, sizeof *c.ref_din);
    c.ref_dweight = calloc((size_t)D, sizeof *c.ref_dweight);
    reference_backward(&c);
    return c;
}

static void case_free(rmsnorm_case *c) {
    free(c->in), free(c->weight), free(c->G), free(c->out), free(c->rstd), free(c->ref_din),
        free(c->ref_dweight);
}

static void check_forward(rmsnorm_case *c) {
    float *ref_out = calloc(c->n_x, sizeof *ref_out), *ref_rstd = calloc((size_t)c->N, sizeof *ref_rstd);
    reference_forward(ref_out, ref_rstd, c->in, c->weight, c->N, c->D, c->eps);
    tga_cpu_rmsnorm_forward(c->out, c->rstd, c->in, c->weight, c->N, c->D, c->eps);
    double err = tu_rel_error(c->out, ref_out, c->n_x);
    CHECK(err <= 1e-5, "forward %dx%d: rel err %.3g", c->N, c->D, err);
    err = tu_rel_error(c->rstd, ref_rstd, (size_t)c->N);
    CHECK(err <= 1e-5, "rstd %dx%d: rel err %.3g", c->N, c->D, err);
    free(ref_out), free(ref_rstd);
}

/* din overwritten (from garbage) with dweight accumulated, then din accumulated with dweight NULL. */
static void check_backward(rmsnorm_case *c, uint64_t *rng) {
    int N = c->N, D = c->D;
    float *din = tu_alloc_uniform(c->n_x, 1e3f, 2e3f, rng);
    float *dw0 = tu_alloc_uniform((size_t)D, -1, 1, rng), *dw = tu_alloc_copy(dw0, (size_t)D);
    tga_cpu_rmsnorm_backward(din, dw, c->G, c->in, c->weight, c->rstd, N, D, 0);
    double err = tu_rel_error(din, c->ref_din, c->n_x);
    CHECK(err <= 1e-5, "din overwrite %dx%d: rel err %.3g", N, D, err);
    err = tu_added_error(dw, dw0, c->ref_dweight, (size_t)D);
    CHECK(err <= 1e-5, "dweight accumulate %dx%d: rel err %.3g", N, D, err);

    float *din0 = tu_alloc_uniform(c->n_x, -1, 1, rng);
    memcpy(din, din0, c->n_x * sizeof *din);
    tga_cpu_rmsnorm_backward(din, NULL, c->G, c->in, c->weight, c->rstd, N, D, 1);
    err = tu_added_error(din, din0, c->ref_din, c->n_x);
    CHECK(err <= 1e-5, "din accumulate, dweight NULL %dx%d: rel err %.3g", N, D, err);
    free(din), free(dw0), free(dw), free(din0);
}

static void check_finite_differences(rmsnorm_case *c, uint64_t *rng) {
    float *din = calloc(c->n_x, sizeof *din), *dw = calloc((size_t)c->D, sizeof *dw);
    tga_cpu_rmsnorm_backward(din, dw, c->G, c->in, c->weight, c->rstd, c->N, c->D, 0);
    double err = tu_fd_check(loss, c, c->in, din, c->n_x, 16, 3e-3f, 1e-1, rng);
    CHECK(err <= 2e-3, "finite differences din %dx%d: %.3g", c->N, c->D, err);
    err = tu_fd_check(loss, c, c->weight, dw, (size_t)c->D, 16, 3e-3f, 1e-1, rng);
    CHECK(err <= 2e-3, "finite differences dweight %dx%d: %.3g", c->N, c->D, err);
    free(din), free(dw);
}

static void check_shape(int N, int D, uint64_t *rng) {
    rmsnorm_case c = case_new(N, D, rng);
    check_forward(&c); /* also leaves the kernel's rstd for the backward */
    check_backward(&c, rng);
    check_finite_differences(&c, rng);
    case_free(&c);
}

static void check_add_rmsnorm(int N, int D, uint64_t *rng) {
    size_t n_x = (size_t)N * D;
    float eps = 1e-6f;
    float *residual = tu_alloc_uniform(n_x, -1, 1, rng), *delta = tu_alloc_uniform(n_x, -1, 1, rng);
    float *weight = tu_alloc_uniform((size_t)D, 0.5f, 1.5f, rng);
    float *sum = malloc(n_x * sizeof *sum);
    for (size_t i = 0; i < n_x; i++)
        sum[i] = residual[i] + delta[i];
    float *out = calloc(n_x, sizeof *out), *rstd = calloc((size_t)N, sizeof *rstd);
    float *ref_out = calloc(n_x, sizeof *ref_out), *ref_rstd = calloc((size_t)N, sizeof *ref_rstd);
    tga_cpu_add_rmsnorm_forward(residual, delta, out, rstd, weight, N, D, eps);
    reference_forward(ref_out, ref_rstd, sum, weight, N, D, eps);
    CHECK(memcmp(residual, sum, n_x * sizeof *sum) == 0, "add_rmsnorm %dx%d: residual != residual + delta", N,
          D);
    double err = tu_rel_error(out, ref_out, n_x);
    CHECK(err <= 1e-5, "add_rmsnorm %dx%d out: rel err %.3g", N, D, err);
    err = tu_rel_error(rstd, ref_rstd, (size_t)N);
    CHECK(err <= 1e-5, "add_rmsnorm %dx%d rstd: rel err %.3g", N, D, err);
    free(residual), free(delta), free(weight), free(sum), free(out), free(rstd), free(ref_out),
        free(ref_rstd);
}

static void check_dweight_thread_independent(uint64_t *rng) {
    int N = 257, D = 1300;
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
    check_shape(9, 1031, &rng); /* several 512-column weight-gradient tasks */
    check_shape(3, 5, &rng);
    check_add_rmsnorm(17, 96, &rng);
    check_add_rmsnorm(4, 13, &rng);
    check_dweight_thread_independent(&rng);
    return tu_finish("test_rmsnorm");
}
