/* LM head + cross-entropy (kernels/cpu/lm_head.c) against a naive double implementation that
 * materialises all logits, for several chunk sizes, plus central finite differences of the
 * op's own loss for dhidden and dweight. */
#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_ROWS = 37, DIM = 48, VOCAB = 1000, IGNORE = -100 };

static const float GARBAGE = 12345.0f; /* pre-fills outputs that the op must overwrite */

typedef struct problem {
    float *hidden;  /* [N_ROWS, DIM] */
    float *weight;  /* [VOCAB, DIM] */
    int targets[N_ROWS];
} problem;

typedef struct reference {
    double loss;
    double *dhidden; /* [N_ROWS, DIM] */
    double *dweight; /* [VOCAB, DIM] */
} reference;

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n, size);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* About a third of the rows ignored; two rows carry out-of-range ids, which the op must skip. */
static void make_problem(problem *p, uint64_t *rng) {
    p->hidden = tu_alloc_uniform((size_t)N_ROWS * DIM, -1.0f, 1.0f, rng);
    p->weight = tu_alloc_uniform((size_t)VOCAB * DIM, -0.5f, 0.5f, rng);
    for (int n = 0; n < N_ROWS; n++) {
        p->targets[n] = tu_next(rng) % 3 == 0 ? IGNORE : (int)(tu_next(rng) % VOCAB);
    }
    p->targets[0] = IGNORE;
    p->targets[5] = VOCAB;
    p->targets[11] = -7;
    p->targets[N_ROWS - 1] = VOCAB - 1;
}

static int supervised(int target) { return target >= 0 && target < VOCAB; }

/* Full [VOCAB] logits per row in double, log-softmax, and the gradients of grad_scale * loss. */
static void reference_lm_head(reference *ref, const problem *p, double grad_scale) {
    double logits[VOCAB];
    ref->loss = 0.0;
    ref->dhidden = xcalloc((size_t)N_ROWS * DIM, sizeof(double));
    ref->dweight = xcalloc((size_t)VOCAB * DIM, sizeof(double));
    for (int n = 0; n < N_ROWS; n++) {
        if (!supervised(p->targets[n])) continue;
        const float *h = p->hidden + (size_t)n * DIM;
        double max_logit = -INFINITY;
        for (int v = 0; v < VOCAB; v++) {
            double z = 0.0;
            for (int d = 0; d < DIM; d++) z += (double)h[d] * p->weight[(size_t)v * DIM + d];
            logits[v] = z;
            max_logit = fmax(max_logit, z);
        }
        double sum_exp = 0.0;
        for (int v = 0; v < VOCAB; v++) sum_exp += exp(logits[v] - max_logit);
        double log_norm = max_logit + log(sum_exp);
        ref->loss += log_norm - logits[p->targets[n]];
        for (int v = 0; v < VOCAB; v++) {
            double dlogit = grad_scale * (exp(logits[v] - log_norm) - (v == p->targets[n]));
            for (int d = 0; d < DIM; d++) {
                ref->dhidden[(size_t)n * DIM + d] += dlogit * p->weight[(size_t)v * DIM + d];
                ref->dweight[(size_t)v * DIM + d] += dlogit * h[d];
            }
        }
    }
}

/* ||(after - before) - expected|| / ||expected||, before NULL meaning zero (the op adds into
 * dweight and overwrites dhidden). */
static double increment_rel_error(const float *after, const float *before, const double *expected, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double diff = ((double)after[i] - (before ? before[i] : 0.0f)) - expected[i];
        num += diff * diff;
        den += expected[i] * expected[i];
    }
    return den > 0 ? sqrt(num / den) : INFINITY;
}

static float *alloc_filled(size_t n, float value) {
    float *x = xcalloc(n, sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = value;
    return x;
}

static void check_ignored_rows_zero(const float *dhidden, const problem *p, const char *what) {
    for (int n = 0; n < N_ROWS; n++) {
        if (supervised(p->targets[n])) continue;
        for (int d = 0; d < DIM; d++) {
            CHECK(dhidden[(size_t)n * DIM + d] == 0.0f, "%s: ignored row %d (target %d) has dhidden %g", what, n,
                  p->targets[n], dhidden[(size_t)n * DIM + d]);
        }
    }
}

/* One op call with both gradients, compared with the reference. */
static void check_against_reference(const problem *p, const reference *ref, int chunk, float grad_scale,
                                    uint64_t *rng) {
    float *scratch = alloc_filled((size_t)chunk * (VOCAB + DIM), GARBAGE);
    float *dhidden = alloc_filled((size_t)N_ROWS * DIM, GARBAGE);
    float *dweight_before = tu_alloc_uniform((size_t)VOCAB * DIM, -0.01f, 0.01f, rng);
    float *dweight = tu_alloc_copy(dweight_before, (size_t)VOCAB * DIM);
    double loss = -1.0;
    tga_cpu_lm_head_ce(&loss, dhidden, dweight, p->hidden, p->weight, p->targets, N_ROWS, DIM, VOCAB, grad_scale,
                       scratch, chunk);
    double loss_err = fabs(loss - ref->loss) / fabs(ref->loss);
    double dh_err = increment_rel_error(dhidden, NULL, ref->dhidden, (size_t)N_ROWS * DIM);
    double dw_err = increment_rel_error(dweight, dweight_before, ref->dweight, (size_t)VOCAB * DIM);
    printf("chunk %3d: loss %.9f (ref %.9f, rel %.2e)  dhidden rel %.2e  dweight rel %.2e\n", chunk, loss,
           ref->loss, loss_err, dh_err, dw_err);
    CHECK(loss_err < 5e-8, "chunk %d: loss rel error %.3e", chunk, loss_err);
    CHECK(dh_err < 1e-5, "chunk %d: dhidden rel error %.3e", chunk, dh_err);
    CHECK(dw_err < 1e-5, "chunk %d: dweight rel error %.3e", chunk, dw_err);
    check_ignored_rows_zero(dhidden, p, "both gradients");
    free(scratch);
    free(dhidden);
    free(dweight_before);
    free(dweight);
}

/* dweight NULL (frozen LM head), then dhidden NULL: each remaining output still matches. */
static void check_optional_outputs(const problem *p, const reference *ref, float grad_scale) {
    const int chunk = 8;
    float *scratch = alloc_filled((size_t)chunk * (VOCAB + DIM), GARBAGE);
    float *dhidden = alloc_filled((size_t)N_ROWS * DIM, GARBAGE);
    double loss = -1.0;
    tga_cpu_lm_head_ce(&loss, dhidden, NULL, p->hidden, p->weight, p->targets, N_ROWS, DIM, VOCAB, grad_scale,
                       scratch, chunk);
    double dh_err = increment_rel_error(dhidden, NULL, ref->dhidden, (size_t)N_ROWS * DIM);
    CHECK(fabs(loss - ref->loss) < 5e-8 * fabs(ref->loss), "dweight NULL: loss %.9f vs %.9f", loss, ref->loss);
    CHECK(dh_err < 1e-5, "dweight NULL: dhidden rel error %.3e", dh_err);
    check_ignored_rows_zero(dhidden, p, "dweight NULL");

    float *dweight = xcalloc((size_t)VOCAB * DIM, sizeof *dweight);
    loss = -1.0;
    tga_cpu_lm_head_ce(&loss, NULL, dweight, p->hidden, p->weight, p->targets, N_ROWS, DIM, VOCAB, grad_scale,
                       scratch, chunk);
    double dw_err = increment_rel_error(dweight, NULL, ref->dweight, (size_t)VOCAB * DIM);
    CHECK(fabs(loss - ref->loss) < 5e-8 * fabs(ref->loss), "dhidden NULL: loss %.9f vs %.9f", loss, ref->loss);
    CHECK(dw_err < 1e-5, "dhidden NULL: dweight rel error %.3e", dw_err);
    free(scratch);
    free(dhidden);
    free(dweight);
}

typedef struct loss_ctx {
    float *hidden;
    float *weight;
    const int *targets;
    float *scratch;
    int chunk;
} loss_ctx;

/* The op's own loss; the probed tensor is perturbed in place inside ctx's hidden or weight. */
static double op_loss(const float *probed, void *opaque) {
    (void)probed;
    loss_ctx *ctx = opaque;
    double loss = 0.0;
    tga_cpu_lm_head_ce(&loss, NULL, NULL, ctx->hidden, ctx->weight, ctx->targets, N_ROWS, DIM, VOCAB, 1.0f,
                       ctx->scratch, ctx->chunk);
    return loss;
}

static void check_finite_differences(problem *p, uint64_t *rng) {
    loss_ctx ctx = {p->hidden, p->weight, p->targets, NULL, 8};
    ctx.scratch = xcalloc((size_t)ctx.chunk * (VOCAB + DIM), sizeof(float));
    float *dhidden = xcalloc((size_t)N_ROWS * DIM, sizeof *dhidden);
    float *dweight = xcalloc((size_t)VOCAB * DIM, sizeof *dweight);
    double loss;
    tga_cpu_lm_head_ce(&loss, dhidden, dweight, p->hidden, p->weight, p->targets, N_ROWS, DIM, VOCAB, 1.0f,
                       ctx.scratch, ctx.chunk);
    const float h = 1e-2f;
    const double floor = 1e-2;
    double worst_dh = tu_fd_check(op_loss, &ctx, p->hidden, dhidden, (size_t)N_ROWS * DIM, 40, h, floor, rng);
    double worst_dw = tu_fd_check(op_loss, &ctx, p->weight, dweight, (size_t)VOCAB * DIM, 40, h, floor, rng);
    /* Random probes mostly land on vocabulary rows with tiny gradients; also probe the rows of
     * the targets, where the onehot term acts. */
    for (int n = 0; n < N_ROWS; n += 3) {
        if (!supervised(p->targets[n])) continue;
        size_t row = (size_t)p->targets[n] * DIM;
        double err = tu_fd_check(op_loss, &ctx, p->weight + row, dweight + row, DIM, 4, h, floor, rng);
        worst_dw = fmax(worst_dw, err);
    }
    printf("finite differences: dhidden worst %.2e  dweight worst %.2e\n", worst_dh, worst_dw);
    CHECK(worst_dh < 2e-3, "dhidden vs finite differences: %.3e", worst_dh);
    CHECK(worst_dw < 2e-3, "dweight vs finite differences: %.3e", worst_dw);
    free(ctx.scratch);
    free(dhidden);
    free(dweight);
}

int main(void) {
    uint64_t rng = 20240611;
    problem p;
    make_problem(&p, &rng);
    const float grad_scale = 0.37f;
    reference ref;
    reference_lm_head(&ref, &p, grad_scale);
    const int chunks[] = {1, 8, 64, N_ROWS + 13};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        check_against_reference(&p, &ref, chunks[i], grad_scale, &rng);
    }
    check_optional_outputs(&p, &ref, grad_scale);
    check_finite_differences(&p, &rng);
    free(ref.dhidden);
    free(ref.dweight);
    free(p.hidden);
    free(p.weight);
    return tu_finish("test_lm_head");
}
