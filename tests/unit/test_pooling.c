/* Segment mean-pooling (kernels/cpu/pooling.c) against a naive double implementation, with an
 * output pooled over two segments, an empty output and D spanning several column blocks; the
 * backward against the transposed reference and central finite differences. */
#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { N_ROWS = 40, DIM = 300, N_SEGMENTS = 5, N_OUT = 4 };

/* Output 0: one image span; output 1: two images (rows 6-7 and 12-15); output 2: empty;
 * output 3: two adjacent segments, listed out of order. */
static const int ROW_START[N_SEGMENTS] = {2, 6, 12, 30, 25};
static const int ROW_COUNT[N_SEGMENTS] = {3, 2, 4, 9, 5};
static const int OUT_INDEX[N_SEGMENTS] = {0, 1, 1, 3, 3};
static const int OUT_ROWS[N_OUT] = {3, 6, 0, 14};

static const tga_segments SEGMENTS = {N_SEGMENTS, N_OUT, ROW_START, ROW_COUNT, OUT_INDEX, OUT_ROWS};

/* Pooled means computed from the row lists alone, each output's rows counted here. */
static void reference_forward(double *out, const float *in) {
    for (int j = 0; j < N_OUT; j++) {
        int rows = 0;
        for (int d = 0; d < DIM; d++) out[j * DIM + d] = 0.0;
        for (int s = 0; s < N_SEGMENTS; s++) {
            if (OUT_INDEX[s] != j) continue;
            for (int t = ROW_START[s]; t < ROW_START[s] + ROW_COUNT[s]; t++, rows++) {
                for (int d = 0; d < DIM; d++) out[j * DIM + d] += in[t * DIM + d];
            }
        }
        for (int d = 0; d < DIM; d++) out[j * DIM + d] = rows ? out[j * DIM + d] / rows : 0.0;
    }
}

/* din[t] = dout[j] / rows(j) for each row t pooled into output j; zero elsewhere. */
static void reference_backward(double *din, const float *dout) {
    for (int i = 0; i < N_ROWS * DIM; i++) din[i] = 0.0;
    for (int s = 0; s < N_SEGMENTS; s++) {
        int j = OUT_INDEX[s];
        for (int t = ROW_START[s]; t < ROW_START[s] + ROW_COUNT[s]; t++) {
            for (int d = 0; d < DIM; d++) din[t * DIM + d] += (double)dout[j * DIM + d] / OUT_ROWS[j];
        }
    }
}

static void check_forward(const float *in, uint64_t *rng) {
    float *out = tu_alloc_uniform(N_OUT * DIM, 50.0f, 60.0f, rng); /* must be overwritten */
    double expected[N_OUT * DIM];
    reference_forward(expected, in);
    tga_cpu_segment_mean_forward(out, in, &SEGMENTS, DIM);
    double err = tu_max_abs_diff(out, expected, N_OUT * DIM);
    printf("forward: max abs error %.2e\n", err);
    CHECK(err < 1e-6, "forward max abs error %.3e", err);
    for (int d = 0; d < DIM; d++) CHECK(out[2 * DIM + d] == 0.0f, "empty output 2 col %d = %g", d, out[2 * DIM + d]);
    free(out);
}

static void check_backward(uint64_t *rng) {
    float *dout = tu_alloc_uniform(N_OUT * DIM, -1.0f, 1.0f, rng);
    float *din_before = tu_alloc_uniform(N_ROWS * DIM, -1.0f, 1.0f, rng);
    float *din = tu_alloc_copy(din_before, N_ROWS * DIM);
    double *expected = malloc(sizeof(double) * N_ROWS * DIM);
    if (!expected) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    reference_backward(expected, dout);
    for (int i = 0; i < N_ROWS * DIM; i++) expected[i] += din_before[i]; /* din accumulates */
    tga_cpu_segment_mean_backward(din, dout, &SEGMENTS, DIM);
    double err = tu_max_abs_diff(din, expected, N_ROWS * DIM);
    printf("backward: max abs error %.2e\n", err);
    CHECK(err < 1e-6, "backward max abs error %.3e", err);
    free(dout);
    free(din_before);
    free(din);
    free(expected);
}

typedef struct projection_ctx {
    float *weights; /* [N_OUT, DIM] */
    float *pooled;        /* [N_OUT, DIM] */
} projection_ctx;

/* <weights, pool(in)>: its gradient wrt in is the backward of dout = weights. */
static double projected_pool(const float *in, void *opaque) {
    projection_ctx *ctx = opaque;
    tga_cpu_segment_mean_forward(ctx->pooled, in, &SEGMENTS, DIM);
    double total = 0.0;
    for (int i = 0; i < N_OUT * DIM; i++) total += (double)ctx->weights[i] * ctx->pooled[i];
    return total;
}

static void check_finite_differences(float *in, uint64_t *rng) {
    float pooled[N_OUT * DIM];
    projection_ctx ctx = {tu_alloc_uniform(N_OUT * DIM, -1.0f, 1.0f, rng), pooled};
    float *din = calloc(N_ROWS * DIM, sizeof *din);
    if (!din) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    tga_cpu_segment_mean_backward(din, ctx.weights, &SEGMENTS, DIM);
    double worst = tu_fd_check(projected_pool, &ctx, in, din, N_ROWS * DIM, 200, 1e-2f, 1e-3, rng);
    printf("finite differences: worst %.2e\n", worst);
    CHECK(worst < 1e-3, "backward vs finite differences: %.3e", worst);
    free(ctx.weights);
    free(din);
}

int main(void) {
    uint64_t rng = 7;
    float *in = tu_alloc_uniform(N_ROWS * DIM, -2.0f, 2.0f, &rng);
    check_forward(in, &rng);
    check_backward(&rng);
    check_finite_differences(in, &rng);
    free(in);
    return tu_finish("test_pooling");
}
