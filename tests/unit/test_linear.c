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

/* One problem: inputs, the upstream gradient G, and the reference gradients of L = sum(out * G). */
typedef struct {
    int N, in_dim, out_dim;
    size_t n_in, n_out, n_w;
    const char *tag;
    float *in, *weight, *bias, *G, *out; /* bias NULL: a layer without bias */
    float *ref_din, *ref_dweight, *ref_dbias;
} linear_case;

/* L = sum(out * G), with the forward in float and the sum in double. */
static double loss(const float *x, void *ctx) {
    (void)x; /* x aliases one of the case's inputs, perturbed in place */
    linear_case *c = ctx;
    tga_cpu_linear_forward(c->out, c->in, c->weight, c->bias, c->N, c->in_dim, c->out_dim);
    double sum = 0;
    for (size_t i = 0; i < c->n_out; i++)
        sum += (double)c->out[i] * c->G[i];
    return sum;
}

static void reference_forward(float *out, const linear_case *c) {
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->out_dim; o++) {
            double acc = c->bias ? c->bias[o] : 0.0;
            for (int i = 0; i < c->in_dim; i++)
                acc += (double)c->in[(size_t)n * c->in_dim + i] * c->weight[(size_t)o * c->in_dim + i];
            out[(size_t)n * c->out_dim + o] = (float)acc;
        }
}

/* din = G W, dW = G^T in, db = column sums of G. */
static void reference_backward(linear_case *c) {
    const float *G = c->G;
    for (int n = 0; n < c->N; n++)
        for (int i = 0; i < c->in_dim; i++) {
            double acc = 0;
            for (int o = 0; o < c->out_dim; o++)
                acc += (double)G[(size_t)n * c->out_dim + o] * c->weight[(size_t)o * c->in_dim + i];
            c->ref_din[(size_t)n * c->in_dim + i] = (float)acc;
        }
    for (int o = 0; o < c->out_dim; o++) {
        for (int i = 0; i < c->in_dim; i++) {
            double acc = 0;
            for (int n = 0; n < c->N; n++)
                acc += (double)G[(size_t)n * c->out_dim + o] * c->in[(size_t)n * c->in_dim + i];
            c->ref_dweight[(size_t)o * c->in_dim + i] = (float)acc;
        }
        double acc = 0;
        for (int n = 0; n < c->N; n++)
            acc += G[(size_t)n * c->out_dim + o];
        c->ref_dbias[o] = (float)acc;
    }
}

static linear_case case_new(int N, int in_dim, int out_dim, int with_bias, uint64_t *rng) {
    linear_case c = {.N = N, .in_dim = in_dim, .out_dim = out_dim, .tag = with_bias ? "bias" : "no bias"};
    c.n_in = (size_t)N * in_dim, c.n_out = (size_t)N * out_dim, c.n_w = (size_t)out_dim * in_dim;
    c.in = tu_alloc_uniform(c.n_in, -1, 1, rng);
    c.weight = tu_alloc_uniform(c.n_w, -0.5f, 0.5f, rng);
    c.bias = with_bias ? tu_alloc_uniform((size_t)out_dim, -1, 1, rng) : NULL;
    c.G = tu_alloc_uniform(c.n_out, -1, 1, rng);
    c.out = calloc(c.n_out, sizeof *c.out);
    c.ref_din = calloc(c.n_in, sizeof *c.ref_din);
    c.ref_dweight = calloc(c.n_w, sizeof *c.ref_dweight);
    c.ref_dbias = calloc((size_t)out_dim, sizeof *c.ref_dbias);
    reference_backward(&c);
    return c;
}

static void case_free(linear_case *c) {
    free(c->in), free(c->weight), free(c->bias), free(c->G), free(c->out);
    free(c->ref_din), free(c->ref_dweight), free(c->ref_dbias);
}

static void check_forward(linear_case *c) {
    float *ref = calloc(c->n_out, sizeof *ref);
    reference_forward(ref, c);
    tga_cpu_linear_forward(c->out, c->in, c->weight, c->bias, c->N, c->in_dim, c->out_dim);
    double err = tu_rel_error(c->out, ref, c->n_out);
    CHECK(err <= 1e-5, "forward %dx%dx%d (%s): rel err %.3g", c->N, c->in_dim, c->out_dim, c->tag, err);
    free(ref);
}

/* din overwritten (it starts as garbage); dweight and dbias add onto prior values. */
static void check_backward_overwrite(linear_case *c, uint64_t *rng) {
    size_t n_b = (size_t)c->out_dim;
    float *din = tu_alloc_uniform(c->n_in, 1e3f, 2e3f, rng);
    float *dw0 = tu_alloc_uniform(c->n_w, -1, 1, rng), *dw = tu_alloc_copy(dw0, c->n_w);
    float *db0 = tu_alloc_uniform(n_b, -1, 1, rng), *db = tu_alloc_copy(db0, n_b);
    tga_cpu_linear_backward(din, dw, c->bias ? db : NULL, c->G, c->in, c->weight, c->N, c->in_dim, c->out_dim,
                            0);
    double err = tu_rel_error(din, c->ref_din, c->n_in);
    CHECK(err <= 1e-5, "din overwrite (%s): rel err %.3g", c->tag, err);
    err = tu_added_error(dw, dw0, c->ref_dweight, c->n_w);
    CHECK(err <= 1e-5, "dweight accumulate (%s): rel err %.3g", c->tag, err);
    if (c->bias) {
        err = tu_added_error(db, db0, c->ref_dbias, n_b);
        CHECK(err <= 1e-5, "dbias accumulate: rel err %.3g", err);
    } else {
        CHECK(memcmp(db, db0, n_b * sizeof *db) == 0, "dbias NULL must leave memory alone");
    }
    free(din), free(dw0), free(dw), free(db0), free(db);
}

/* A frozen weight (dweight and dbias NULL), din accumulated. */
static void check_backward_accumulate_frozen(linear_case *c, uint64_t *rng) {
    float *din0 = tu_alloc_uniform(c->n_in, -1, 1, rng), *din = tu_alloc_copy(din0, c->n_in);
    tga_cpu_linear_backward(din, NULL, NULL, c->G, c->in, c->weight, c->N, c->in_dim, c->out_dim, 1);
    double err = tu_added_error(din, din0, c->ref_din, c->n_in);
    CHECK(err <= 1e-5, "din accumulate, frozen weight (%s): rel err %.3g", c->tag, err);
    free(din0), free(din);
}

/* L is linear in each input, so only rounding limits the differences. */
static void check_finite_differences(linear_case *c, uint64_t *rng) {
    float *din = calloc(c->n_in, sizeof *din), *dw = calloc(c->n_w, sizeof *dw);
    float *db = calloc((size_t)c->out_dim, sizeof *db);
    tga_cpu_linear_backward(din, dw, db, c->G, c->in, c->weight, c->N, c->in_dim, c->out_dim, 0);
    double err = tu_fd_check(loss, c, c->in, din, c->n_in, 12, 1e-2f, 1e-2, rng);
    CHECK(err <= 1e-3, "finite differences din (%s): %.3g", c->tag, err);
    err = tu_fd_check(loss, c, c->weight, dw, c->n_w, 12, 1e-2f, 1e-2, rng);
    CHECK(err <= 1e-3, "finite differences dweight (%s): %.3g", c->tag, err);
    if (c->bias) {
        err = tu_fd_check(loss, c, c->bias, db, (size_t)c->out_dim, 12, 1e-2f, 1e-2, rng);
        CHECK(err <= 1e-3, "finite differences dbias: %.3g", err);
    }
    free(din), free(dw), free(db);
}

static void check_shape(int N, int in_dim, int out_dim, int with_bias, uint64_t *rng) {
    linear_case c = case_new(N, in_dim, out_dim, with_bias, rng);
    check_forward(&c);
    check_backward_overwrite(&c, rng);
    check_backward_accumulate_frozen(&c, rng);
    check_finite_differences(&c, rng);
    case_free(&c);
}

/* The bias gradient must come out bit for bit the same with 1 and with several threads. */
static void check_bias_grad_thread_independent(uint64_t *rng) {
    int N = 301, in_dim = 8, out_dim = 1300;
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
        check_shape(5, 130, 1100, with_bias, &rng); /* several 512-column bias-gradient tasks */
        check_shape(1, 1, 1, with_bias, &rng);
    }
    check_bias_grad_thread_independent(&rng);
    return tu_finish("test_linear");
}
