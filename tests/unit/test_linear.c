/* Linear layer: forward and all three gradients against a double-precision reference, the
 * backward against central finite differences of L = sum(out * G), the NULL / accumulate
 * variants of the contract, and a bias gradient that does not depend on the thread count. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

typedef struct {
    int N, in_dim, out_dim;
    const float *in, *weight, *bias, *G;
    float *out;
} linear_case;

/* L = sum(out * G), with the forward in float and the sum in double. */
static double loss(const float *x, void *ctx) {
    (void)x; /* x aliases one of the case's inputs, perturbed in place */
    linear_case *c = ctx;
    tga_cpu_linear_forward(c->out, c->in, c->weight, c->bias, c->N, c->in_dim, c->out_dim);
    double sum = 0;
    for (size_t i = 0; i < (size_t)c->N * c->out_dim; i++) sum += (double)c->out[i] * c->G[i];
    return sum;
}

static void reference_forward(float *out, const linear_case *c) {
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->out_dim; o++) {
            double acc = c->bias ? c->bias[o] : 0.0;
            for (int i = 0; i < c->in_dim; i++) acc += (double)c->in[(size_t)n * c->in_dim + i] * c->weight[(size_t)o * c->in_dim + i];
            out[(size_t)n * c->out_dim + o] = (float)acc;
        }
}

/* Gradients of L for dout = G: din = G W, dW = G^T in, db = column sums of G. */
static void reference_backward(float *din, float *dweight, float *dbias, const linear_case *c) {
    for (int n = 0; n < c->N; n++)
        for (int i = 0; i < c->in_dim; i++) {
            double acc = 0;
            for (int o = 0; o < c->out_dim; o++) acc += (double)c->G[(size_t)n * c->out_dim + o] * c->weight[(size_t)o * c->in_dim + i];
            din[(size_t)n * c->in_dim + i] = (float)acc;
        }
    for (int o = 0; o < c->out_dim; o++) {
        for (int i = 0; i < c->in_dim; i++) {
            double acc = 0;
            for (int n = 0; n < c->N; n++) acc += (double)c->G[(size_t)n * c->out_dim + o] * c->in[(size_t)n * c->in_dim + i];
            dweight[(size_t)o * c->in_dim + i] = (float)acc;
        }
        double acc = 0;
        for (int n = 0; n < c->N; n++) acc += c->G[(size_t)n * c->out_dim + o];
        dbias[o] = (float)acc;
    }
}

static void add_arrays(float *dst, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = a[i] + b[i];
}

static void check_shape(int N, int in_dim, int out_dim, int with_bias, uint64_t *rng) {
    size_t n_in = (size_t)N * in_dim, n_out = (size_t)N * out_dim, n_w = (size_t)out_dim * in_dim;
    float *in = tu_alloc_uniform(n_in, -1, 1, rng);
    float *weight = tu_alloc_uniform(n_w, -0.5f, 0.5f, rng);
    float *bias = with_bias ? tu_alloc_uniform((size_t)out_dim, -1, 1, rng) : NULL;
    float *G = tu_alloc_uniform(n_out, -1, 1, rng);
    float *out = calloc(n_out, sizeof *out), *ref_out = calloc(n_out, sizeof *ref_out);
    linear_case c = {N, in_dim, out_dim, in, weight, bias, G, out};
    const char *tag = with_bias ? "bias" : "no bias";

    tga_cpu_linear_forward(out, in, weight, bias, N, in_dim, out_dim);
    reference_forward(ref_out, &c);
    double err = tu_rel_error(out, ref_out, n_out);
    CHECK(err <= 1e-5, "forward %dx%dx%d (%s): rel err %.3g", N, in_dim, out_dim, tag, err);

    float *ref_din = calloc(n_in, sizeof *ref_din), *ref_dw = calloc(n_w, sizeof *ref_dw);
    float *ref_db = calloc((size_t)out_dim, sizeof *ref_db);
    reference_backward(ref_din, ref_dw, ref_db, &c);

    /* Overwrite: din starts as garbage; dweight / dbias start from prior values and accumulate. */
    float *din = tu_alloc_uniform(n_in, 1e3f, 2e3f, rng);
    float *dw0 = tu_alloc_uniform(n_w, -1, 1, rng), *dw = tu_alloc_copy(dw0, n_w);
    float *db0 = tu_alloc_uniform((size_t)out_dim, -1, 1, rng), *db = tu_alloc_copy(db0, (size_t)out_dim);
    tga_cpu_linear_backward(din, dw, with_bias ? db : NULL, G, in, weight, N, in_dim, out_dim, 0);
    err = tu_rel_error(din, ref_din, n_in);
    CHECK(err <= 1e-5, "din overwrite (%s): rel err %.3g", tag, err);
    float *expect_dw = calloc(n_w, sizeof *expect_dw), *expect_db = calloc((size_t)out_dim, sizeof *expect_db);
    add_arrays(expect_dw, dw0, ref_dw, n_w);
    add_arrays(expect_db, db0, ref_db, (size_t)out_dim);
    err = tu_rel_error(dw, expect_dw, n_w);
    CHECK(err <= 1e-5, "dweight accumulate (%s): rel err %.3g", tag, err);
    if (with_bias) {
        err = tu_rel_error(db, expect_db, (size_t)out_dim);
        CHECK(err <= 1e-5, "dbias accumulate: rel err %.3g", err);
    } else {
        CHECK(memcmp(db, db0, (size_t)out_dim * sizeof *db) == 0, "dbias NULL must leave memory alone");
    }

    /* Accumulate din, frozen weight (dweight NULL) and no bias gradient. */
    float *din0 = tu_alloc_uniform(n_in, -1, 1, rng), *expect_din = calloc(n_in, sizeof *expect_din);
    memcpy(din, din0, n_in * sizeof *din);
    tga_cpu_linear_backward(din, NULL, NULL, G, in, weight, N, in_dim, out_dim, 1);
    add_arrays(expect_din, din0, ref_din, n_in);
    err = tu_rel_error(din, expect_din, n_in);
    CHECK(err <= 1e-5, "din accumulate, frozen weight (%s): rel err %.3g", tag, err);

    /* Central finite differences (L is linear in each input, so only rounding limits them). */
    memset(dw, 0, n_w * sizeof *dw);
    memset(db, 0, (size_t)out_dim * sizeof *db);
    tga_cpu_linear_backward(din, dw, db, G, in, weight, N, in_dim, out_dim, 0);
    err = tu_fd_check(loss, &c, in, din, n_in, 12, 1e-2f, 1e-2, rng);
    CHECK(err <= 1e-3, "finite differences din (%s): %.3g", tag, err);
    err = tu_fd_check(loss, &c, weight, dw, n_w, 12, 1e-2f, 1e-2, rng);
    CHECK(err <= 1e-3, "finite differences dweight (%s): %.3g", tag, err);
    if (with_bias) {
        err = tu_fd_check(loss, &c, bias, db, (size_t)out_dim, 12, 1e-2f, 1e-2, rng);
        CHECK(err <= 1e-3, "finite differences dbias: %.3g", err);
    }

    free(in), free(weight), free(bias), free(G), free(out), free(ref_out), free(ref_din), free(ref_dw);
    free(ref_db), free(din), free(dw0), free(dw), free(db0), free(db), free(expect_dw), free(expect_db);
    free(din0), free(expect_din);
}

/* The bias gradient must come out bit for bit the same with 1 and with several threads. */
static void check_bias_grad_thread_independent(uint64_t *rng) {
    int N = 301, in_dim = 8, out_dim = 300;
    float *in = tu_alloc_uniform((size_t)N * in_dim, -1, 1, rng);
    float *weight = tu_alloc_uniform((size_t)out_dim * in_dim, -1, 1, rng);
    float *G = tu_alloc_uniform((size_t)N * out_dim, -1, 1, rng);
    float *db1 = calloc((size_t)out_dim, sizeof *db1), *db4 = calloc((size_t)out_dim, sizeof *db4);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    tga_cpu_linear_backward(NULL, NULL, db1, G, in, weight, N, in_dim, out_dim, 0);
    omp_set_num_threads(4);
    tga_cpu_linear_backward(NULL, NULL, db4, G, in, weight, N, in_dim, out_dim, 0);
    omp_set_num_threads(saved);
    CHECK(memcmp(db1, db4, (size_t)out_dim * sizeof *db1) == 0, "dbias differs between 1 and 4 threads");
    free(in), free(weight), free(G), free(db1), free(db4);
}

int main(void) {
    uint64_t rng = 0x11AE4;
    for (int with_bias = 0; with_bias <= 1; with_bias++) {
        check_shape(37, 53, 29, with_bias, &rng);
        check_shape(5, 130, 150, with_bias, &rng);
        check_shape(1, 1, 1, with_bias, &rng);
    }
    check_bias_grad_thread_independent(&rng);
    return tu_finish("test_linear");
}
