/* bf16 weights (model.dtype: bf16): the rounding of kernels/bf16.h against an independent
 * nearest-even reference; the bf16-weight linear, embedding and LM head against double-precision
 * references whose operands are rounded the way ops.h says; and a check that the rounding of the
 * activation operands really happens (the result differs from the unrounded product by more than
 * the tolerance). Run on the machine's SIMD level and again on each lower one (vector and portable
 * packing). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

/* The bf16 nearest to x, ties to the even mantissa, decided by exact distances in double. */
static float reference_round(float x) {
    if (isnan(x) || isinf(x)) return x;
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t down_bits = u & 0xffff0000u, up_bits = down_bits + 0x10000u; /* toward zero, away from zero */
    float down, up;
    memcpy(&down, &down_bits, sizeof down);
    memcpy(&up, &up_bits, sizeof up);
    /* past the largest bf16 the next step is 2^128 (IEEE rounds as if the exponent went on) */
    double up_value = isinf(up) ? copysign(ldexp(1.0, 128), x) : up;
    double d_down = fabs((double)x - down), d_up = fabs((double)x - up_value);
    if (d_down < d_up) return down;
    if (d_up < d_down) return up;
    return (down_bits >> 16) & 1u ? up : down;
}

static void check_rounding(uint64_t *rng) {
    float specials[] = {0.0f,
                        -0.0f,
                        1.0f,
                        -1.0f,
                        1.00390625f /* tie, even below */,
                        1.01171875f /* tie, odd below */,
                        3.4028235e38f,
                        -3.4028235e38f,
                        1e-40f /* subnormal */,
                        -1.5e-45f,
                        65504.0f,
                        INFINITY,
                        -INFINITY,
                        3.3895314e38f};
    int bad = 0;
    for (size_t i = 0; i < sizeof specials / sizeof *specials; i++) {
        float got = tga_bf16_round(specials[i]), want = reference_round(specials[i]);
        if (memcmp(&got, &want, sizeof got) != 0) bad++;
    }
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)tu_next(rng);
        float x;
        memcpy(&x, &u, sizeof x);
        if (isnan(x)) {
            if (!isnan(tga_bf16_round(x))) bad++;
            continue;
        }
        float got = tga_bf16_round(x), want = reference_round(x);
        if (memcmp(&got, &want, sizeof got) != 0) bad++;
    }
    CHECK(bad == 0, "bf16 rounding: %d values differ from the nearest-even reference", bad);
    float nan = NAN;
    CHECK(isnan(tga_bf16_to_float(tga_bf16_from_float(nan))), "NaN must stay NaN");
    uint32_t snan_bits = 0x7f800001u; /* a NaN whose payload is all in the dropped half */
    float snan;
    memcpy(&snan, &snan_bits, sizeof snan);
    CHECK(isnan(tga_bf16_round(snan)), "a NaN with a low payload must not become infinity");

    /* the ops convert the same way, element for element */
    size_t n = 70001;
    float *x = tu_alloc_uniform(n, -1e3f, 1e3f, rng), *back = malloc(n * sizeof *back);
    tga_bf16 *h = malloc(n * sizeof *h);
    tga_cpu_to_bf16(h, x, n);
    tga_cpu_from_bf16(back, h, n);
    int mismatches = 0;
    for (size_t i = 0; i < n; i++)
        if (back[i] != reference_round(x[i])) mismatches++;
    CHECK(mismatches == 0, "to_bf16/from_bf16: %d of %zu elements differ", mismatches, n);
    free(x), free(back), free(h);
}

static tga_bf16 *to_bf16_copy(const float *x, size_t n) {
    tga_bf16 *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = tga_bf16_from_float(x[i]);
    return h;
}

static float *rounded_copy(const float *x, size_t n) {
    float *r = malloc(n * sizeof *r);
    for (size_t i = 0; i < n; i++)
        r[i] = reference_round(x[i]);
    return r;
}

/* C[M,N] = A[M,K] B[N,K]^T (+ add) in double over already rounded operands. */
static void reference_nt(float *C, const float *A, const float *B, int M, int N, int K, const float *add) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = add ? add[(size_t)i * N + j] : 0.0;
            for (int p = 0; p < K; p++)
                acc += (double)A[(size_t)i * K + p] * B[(size_t)j * K + p];
            C[(size_t)i * N + j] = (float)acc;
        }
}

static float *transposed(const float *x, int rows, int cols) {
    float *t = malloc((size_t)rows * cols * sizeof *t);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            t[(size_t)c * rows + r] = x[(size_t)r * cols + c];
    return t;
}

static void check_linear(int N, int in_dim, int out_dim, uint64_t *rng) {
    size_t n_in = (size_t)N * in_dim, n_out = (size_t)N * out_dim, n_w = (size_t)out_dim * in_dim;
    float *in = tu_alloc_uniform(n_in, -1, 1, rng), *w = tu_alloc_uniform(n_w, -0.5f, 0.5f, rng);
    float *bias = tu_alloc_uniform((size_t)out_dim, -1, 1, rng), *G = tu_alloc_uniform(n_out, -1, 1, rng);
    tga_bf16 *w16 = to_bf16_copy(w, n_w);
    float *in_r = rounded_copy(in, n_in), *w_r = rounded_copy(w, n_w), *G_r = rounded_copy(G, n_out);
    float *out = calloc(n_out, sizeof *out), *ref = calloc(n_out, sizeof *ref),
          *plain = calloc(n_out, sizeof *plain);
    float *bias_rows = malloc(n_out * sizeof *bias_rows);
    for (size_t i = 0; i < n_out; i++)
        bias_rows[i] = bias[i % (size_t)out_dim];

    tga_cpu_linear_forward_bf16(out, in, w16, bias, N, in_dim, out_dim);
    reference_nt(ref, in_r, w_r, N, out_dim, in_dim, bias_rows);
    double err = tu_rel_error(out, ref, n_out);
    CHECK(err <= 1e-5, "linear_forward_bf16 %dx%dx%d: rel err %.3g", N, in_dim, out_dim, err);
    reference_nt(plain, in, w_r, N, out_dim, in_dim, bias_rows); /* the input not rounded */
    double unrounded = tu_rel_error(out, plain, n_out);
    if (in_dim >= 16)
        CHECK(unrounded > 10 * err && unrounded > 1e-4,
              "linear_forward_bf16 %dx%dx%d: input rounding not visible (%.3g vs %.3g)", N, in_dim, out_dim,
              unrounded, err);

    /* backward: din overwritten from garbage, then accumulated; dweight and dbias accumulate */
    float *din = tu_alloc_uniform(n_in, 1e3f, 2e3f, rng), *ref_din = calloc(n_in, sizeof *ref_din);
    float *dw0 = tu_alloc_uniform(n_w, -1, 1, rng), *dw = tu_alloc_copy(dw0, n_w),
          *ref_dw = calloc(n_w, sizeof *ref_dw);
    float *db0 = tu_alloc_uniform((size_t)out_dim, -1, 1, rng), *db = tu_alloc_copy(db0, (size_t)out_dim);
    tga_cpu_linear_backward_bf16(din, dw, db, G, in, w16, N, in_dim, out_dim, 0);
    float *w_rt = transposed(w_r, out_dim, in_dim), *G_rt = transposed(G_r, N, out_dim),
          *in_rt = transposed(in_r, N, in_dim);
    reference_nt(ref_din, G_r, w_rt, N, in_dim, out_dim, NULL);  /* din = G W */
    reference_nt(ref_dw, G_rt, in_rt, out_dim, in_dim, N, NULL); /* dW = G^T in */
    err = tu_rel_error(din, ref_din, n_in);
    CHECK(err <= 1e-5, "linear_backward_bf16 din %dx%dx%d: rel err %.3g", N, in_dim, out_dim, err);
    err = tu_added_error(dw, dw0, ref_dw, n_w);
    CHECK(err <= 1e-5, "linear_backward_bf16 dweight %dx%dx%d: rel err %.3g", N, in_dim, out_dim, err);
    double worst = 0;
    for (int o = 0; o < out_dim; o++) {
        double acc = 0; /* the bias gradient sums the exact fp32 dout */
        for (int n = 0; n < N; n++)
            acc += G[(size_t)n * out_dim + o];
        double e = fabs((double)(db[o] - db0[o]) - acc) / (fabs(acc) + 1e-3);
        if (e > worst) worst = e;
    }
    CHECK(worst <= 1e-5, "linear_backward_bf16 dbias: rel err %.3g", worst);

    float *din0 = tu_alloc_copy(din, n_in);
    tga_cpu_linear_backward_bf16(din, NULL, NULL, G, in, w16, N, in_dim, out_dim, 1);
    err = tu_added_error(din, din0, ref_din, n_in);
    CHECK(err <= 1e-5, "linear_backward_bf16 din accumulate, frozen weight: rel err %.3g", err);

    free(in), free(w), free(bias), free(G), free(w16), free(in_r), free(w_r), free(G_r), free(out), free(ref);
    free(plain), free(bias_rows), free(din), free(ref_din), free(dw0), free(dw), free(ref_dw), free(db0),
        free(db);
    free(w_rt), free(G_rt), free(in_rt), free(din0);
}

static size_t count_different(const void *a, const void *b, size_t n, size_t elem) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp((const char *)a + i * elem, (const char *)b + i * elem, elem) != 0;
    return bad;
}

/* The ops whose activation input (or output) is bf16 already: the same bits as the fp32-input ops,
 * which round that input themselves (model.dtype bf16 relies on it). */
static void check_bf16_activations(int N, int in_dim, int out_dim, uint64_t *rng) {
    size_t n_in = (size_t)N * in_dim, n_out = (size_t)N * out_dim, n_w = (size_t)out_dim * in_dim;
    float *in = tu_alloc_uniform(n_in, -1, 1, rng), *w = tu_alloc_uniform(n_w, -0.5f, 0.5f, rng);
    float *bias = tu_alloc_uniform((size_t)out_dim, -1, 1, rng), *G = tu_alloc_uniform(n_out, -1, 1, rng);
    tga_bf16 *w16 = to_bf16_copy(w, n_w), *in16 = to_bf16_copy(in, n_in);
    float *a = calloc(n_out, sizeof *a), *b = calloc(n_out, sizeof *b);
    tga_cpu_linear_forward_bf16(a, in, w16, bias, N, in_dim, out_dim);
    tga_cpu_linear_forward_bf16_input(b, in16, w16, bias, N, in_dim, out_dim);
    size_t bad = count_different(a, b, n_out, sizeof(float));
    CHECK(bad == 0, "linear_forward_bf16_input %dx%dx%d: %zu outputs differ from linear_forward_bf16", N, in_dim,
          out_dim, bad);

    float *din_a = tu_alloc_uniform(n_in, -1, 1, rng), *din_b = tu_alloc_copy(din_a, n_in);
    float *dw_a = tu_alloc_uniform(n_w, -1, 1, rng), *dw_b = tu_alloc_copy(dw_a, n_w);
    float *db_a = tu_alloc_uniform((size_t)out_dim, -1, 1, rng), *db_b = tu_alloc_copy(db_a, (size_t)out_dim);
    for (int acc = 0; acc <= 1; acc++) {
        tga_cpu_linear_backward_bf16(din_a, dw_a, db_a, G, in, w16, N, in_dim, out_dim, acc);
        tga_cpu_linear_backward_bf16_input(din_b, dw_b, db_b, G, in16, w16, N, in_dim, out_dim, acc);
        bad = count_different(din_a, din_b, n_in, sizeof(float)) + count_different(dw_a, dw_b, n_w, sizeof(float)) +
              count_different(db_a, db_b, (size_t)out_dim, sizeof(float));
        CHECK(bad == 0, "linear_backward_bf16_input %dx%dx%d acc %d: %zu values differ from linear_backward_bf16", N,
              in_dim, out_dim, acc, bad);
    }

    /* RMSNorm with bf16 rows: the fp32 op's rows rounded; rstd and the residual the same bits */
    const int D = in_dim;
    float *wn = tu_alloc_uniform((size_t)D, 0.5f, 1.5f, rng), *delta = tu_alloc_uniform(n_in, -1, 1, rng);
    float *rows = calloc(n_in, sizeof *rows), *rstd_a = calloc((size_t)N, sizeof *rstd_a);
    float *rstd_b = calloc((size_t)N, sizeof *rstd_b);
    float *res_a = tu_alloc_copy(in, n_in), *res_b = tu_alloc_copy(in, n_in);
    tga_bf16 *rows16 = calloc(n_in, sizeof *rows16), *want16 = calloc(n_in, sizeof *want16);
    tga_cpu_rmsnorm_forward(rows, rstd_a, in, wn, N, D, 1e-5f);
    tga_cpu_rmsnorm_forward_bf16(rows16, rstd_b, in, wn, N, D, 1e-5f);
    for (size_t i = 0; i < n_in; i++) want16[i] = tga_bf16_from_float(rows[i]);
    bad = count_different(rows16, want16, n_in, sizeof(tga_bf16)) + count_different(rstd_a, rstd_b, N, sizeof(float));
    CHECK(bad == 0, "rmsnorm_forward_bf16 %dx%d: %zu values differ from rmsnorm_forward's, rounded", N, D, bad);
    tga_cpu_add_rmsnorm_forward(res_a, delta, rows, rstd_a, wn, N, D, 1e-5f);
    tga_cpu_add_rmsnorm_forward_bf16(res_b, delta, rows16, rstd_b, wn, N, D, 1e-5f);
    for (size_t i = 0; i < n_in; i++) want16[i] = tga_bf16_from_float(rows[i]);
    bad = count_different(rows16, want16, n_in, sizeof(tga_bf16)) + count_different(rstd_a, rstd_b, N, sizeof(float)) +
          count_different(res_a, res_b, n_in, sizeof(float));
    CHECK(bad == 0, "add_rmsnorm_forward_bf16 %dx%d: %zu values differ from add_rmsnorm_forward's", N, D, bad);

    free(in), free(w), free(bias), free(G), free(w16), free(in16), free(a), free(b), free(din_a), free(din_b);
    free(dw_a), free(dw_b), free(db_a), free(db_b), free(wn), free(delta), free(rows), free(rstd_a), free(rstd_b);
    free(res_a), free(res_b), free(rows16), free(want16);
}

/* A float whose bf16 rounding is a corner case: a tie (low half 0x8000, bf16 mantissa even or
 * odd), one below or above it, exact, or the largest low half; normal or subnormal, either sign,
 * never so large that it rounds to infinity. */
static float corner_value(uint64_t *rng) {
    static const uint32_t low_halves[] = {0x8000, 0x7fff, 0x8001, 0x0000, 0xffff};
    uint64_t r = tu_next(rng);
    uint32_t exponent = r % 7 == 0 ? 0 : 100 + (uint32_t)(r >> 8) % 154; /* 0 = subnormal, else up to 253 */
    uint32_t bits = (uint32_t)(r >> 20 & 1) << 31 | exponent << 23 | (uint32_t)(r >> 24 & 0x7f) << 16 |
                    low_halves[(r >> 32) % 5];
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* The roundings inside the products, on corner values: with an identity matrix on the other side
 * each product returns one operand rounded (forward: bf16(in), packed K-contiguous; weight
 * gradient: bf16(in) again, packed along rows) or widened (input gradient: the bf16 weight). */
static void check_rounding_in_products(uint64_t *rng) {
    enum { S = 24 }; /* K = 24: three vectors of the AVX2 conversion per row; packed, not the plain loop */
    float in[S * S], eye[S * S], out[S * S], dw[S * S] = {0}, din[S * S], w[S * S];
    tga_bf16 eye16[S * S], w16[S * S];
    for (int i = 0; i < S * S; i++) {
        in[i] = corner_value(rng);
        w[i] = corner_value(rng);
        eye[i] = i / S == i % S ? 1.0f : 0.0f;
        eye16[i] = tga_bf16_from_float(eye[i]);
        w16[i] = tga_bf16_from_float(w[i]);
    }
    tga_cpu_linear_forward_bf16(out, in, eye16, NULL, S, S, S);
    tga_cpu_linear_backward_bf16(din, dw, NULL, eye, in, w16, S, S, S, 0);
    int bad_out = 0, bad_dw = 0, bad_din = 0;
    for (int i = 0; i < S * S; i++) {
        bad_out += out[i] != reference_round(in[i]);
        bad_dw += dw[i] != reference_round(in[i]);
        bad_din += din[i] != tga_bf16_to_float(w16[i]);
    }
    CHECK(
        bad_out == 0 && bad_dw == 0 && bad_din == 0,
        "corner values through the products: %d forward, %d weight-gradient, %d input-gradient values wrong",
        bad_out, bad_dw, bad_din);
}

static void check_embedding(uint64_t *rng) {
    const int V = 50, D = 24, N = 40;
    float *table = tu_alloc_uniform((size_t)V * D, -2, 2, rng),
          *out = tu_alloc_uniform((size_t)N * D, 5, 6, rng);
    tga_bf16 *t16 = to_bf16_copy(table, (size_t)V * D);
    int ids[40];
    for (int n = 0; n < N; n++)
        ids[n] = n % 7 == 3 ? -200 : (int)(tu_next(rng) % V);
    tga_cpu_embedding_forward_bf16(out, ids, t16, N, D);
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            float want = ids[n] < 0 ? 0.0f : reference_round(table[(size_t)ids[n] * D + d]);
            if (out[(size_t)n * D + d] != want) bad++;
        }
    CHECK(bad == 0, "embedding_forward_bf16: %d elements differ", bad);
    free(table), free(out), free(t16);
}

/* The LM head in double over rounded rows and weight; dlogits rounded to bf16 before the two
 * gradient products, as ops.h says. A dlogit that lies within fp32 rounding of a bf16 midpoint
 * (about one in 10^4) rounds the other way here than in the op and moves the gradient rows it
 * feeds by a bf16 step times the weights, so the gradients are judged row by row: nearly every
 * row within 1e-5 (measured ~3e-7), at most a tenth of the rows (one such dlogit each) up to 1e-2
 * (one bf16 step of a row's largest term). A missing rounding of the dlogits moves every row by
 * ~1e-3. */
static double reference_lm_head(float *dhidden, float *dweight, const float *hidden, const float *w_r,
                                const int *targets, int N, int D, int V, float scale) {
    double loss = 0;
    double *logits = malloc((size_t)V * sizeof *logits);
    float *dl = malloc((size_t)V * sizeof *dl);
    memset(dhidden, 0, (size_t)N * D * sizeof *dhidden);
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < V; v++) {
            double acc = 0;
            for (int d = 0; d < D; d++)
                acc += (double)reference_round(hidden[(size_t)n * D + d]) * w_r[(size_t)v * D + d];
            logits[v] = (float)acc; /* the product lands in fp32 */
            if (logits[v] > mx) mx = logits[v];
        }
        for (int v = 0; v < V; v++)
            sum += exp(logits[v] - mx);
        loss += log(sum) - (logits[targets[n]] - mx);
        for (int v = 0; v < V; v++)
            dl[v] = reference_round((float)(scale * (exp(logits[v] - mx) / sum - (v == targets[n]))));
        for (int d = 0; d < D; d++) {
            double acc = 0;
            for (int v = 0; v < V; v++)
                acc += (double)dl[v] * w_r[(size_t)v * D + d];
            dhidden[(size_t)n * D + d] = (float)acc;
        }
        for (int v = 0; v < V; v++)
            for (int d = 0; d < D; d++)
                dweight[(size_t)v * D + d] += dl[v] * reference_round(hidden[(size_t)n * D + d]);
    }
    free(logits), free(dl);
    return loss;
}

static int supervised_rows(const int *targets, int N) {
    int rows = 0;
    for (int n = 0; n < N; n++)
        rows += targets[n] >= 0;
    return rows;
}

/* The largest relative error of a row of got[rows, D] against ref (rows of ref that are zero
 * are skipped), and in *off how many rows are off by more than 1e-5. */
static double row_errors(const float *got, const float *ref, int rows, int D, int *off) {
    double worst = 0;
    *off = 0;
    for (int r = 0; r < rows; r++) {
        double diff = 0, norm = 0;
        for (int d = 0; d < D; d++) {
            double e = (double)got[(size_t)r * D + d] - ref[(size_t)r * D + d];
            diff += e * e;
            norm += (double)ref[(size_t)r * D + d] * ref[(size_t)r * D + d];
        }
        if (norm == 0) continue;
        double err = sqrt(diff / norm);
        worst = err > worst ? err : worst;
        *off += err > 1e-5;
    }
    return worst;
}

static void check_lm_head(int N, int D, int V, int chunk, uint64_t *rng) {
    float *hidden = tu_alloc_uniform((size_t)N * D, -1, 1, rng),
          *w = tu_alloc_uniform((size_t)V * D, -1, 1, rng);
    float *w_r = rounded_copy(w, (size_t)V * D);
    tga_bf16 *w16 = to_bf16_copy(w, (size_t)V * D);
    int *targets = malloc((size_t)N * sizeof *targets);
    for (int n = 0; n < N; n++)
        targets[n] = n % 5 == 2 ? -100 : (int)(tu_next(rng) % V);
    float *dh = tu_alloc_uniform((size_t)N * D, 9, 10, rng), *dw = calloc((size_t)V * D, sizeof *dw);
    float *ref_dh = malloc((size_t)N * D * sizeof *ref_dh), *ref_dw = calloc((size_t)V * D, sizeof *ref_dw);
    float *scratch = malloc((size_t)chunk * (V + D) * sizeof *scratch);
    double loss;
    const float scale = 0.25f;
    tga_cpu_lm_head_ce_bf16(&loss, dh, dw, hidden, w16, targets, N, D, V, scale, scratch, chunk);
    double ref = reference_lm_head(ref_dh, ref_dw, hidden, w_r, targets, N, D, V, scale);
    CHECK(fabs(loss - ref) <= 1e-6 * fabs(ref), "lm_head_ce_bf16 %dx%dx%d: loss %.9g vs %.9g", N, D, V, loss,
          ref);
    int off_rows, rows = supervised_rows(targets, N);
    double worst = row_errors(dh, ref_dh, N, D, &off_rows);
    CHECK(worst <= 1e-2 && off_rows <= 1 + rows / 10,
          "lm_head_ce_bf16 dhidden %dx%dx%d chunk %d: %d of %d rows off "
          "by more than 1e-5, worst %.3g",
          N, D, V, chunk, off_rows, rows, worst);
    worst = row_errors(dw, ref_dw, V, D, &off_rows);
    CHECK(worst <= 1e-2 && off_rows <= 1 + V / 10,
          "lm_head_ce_bf16 dweight %dx%dx%d chunk %d: %d of %d rows off by "
          "more than 1e-5, worst %.3g",
          N, D, V, chunk, off_rows, V, worst);
    free(hidden), free(w), free(w_r), free(w16), free(targets), free(dh), free(dw), free(ref_dh),
        free(ref_dw);
    free(scratch);
}

int main(void) {
    uint64_t rng = 0xBF16;
    check_rounding(&rng);
    check_linear(3, 5, 4, &rng);      /* unpacked path */
    check_linear(37, 96, 130, &rng);  /* packed, edge tiles */
    check_linear(150, 200, 70, &rng); /* several threads */
    check_linear(20, 700, 33, &rng);  /* K over one packing block */
    check_rounding_in_products(&rng);
    check_bf16_activations(3, 5, 4, &rng);
    check_bf16_activations(37, 96, 130, &rng);
    check_bf16_activations(150, 200, 70, &rng);
    check_embedding(&rng);
    check_lm_head(23, 40, 97, 6, &rng);
    check_lm_head(9, 64, 300, 64, &rng);
    /* the lower levels, each run by the one above: avx512 -> avx2 -> scalar (portable packing) */
    const char *level = tga_cpu_simd_level();
    if (strcmp(level, "avx512") == 0) tu_rerun_with_simd("avx2", "the bf16 ops");
    if (strcmp(level, "avx2") == 0) tu_rerun_with_simd("scalar", "the bf16 ops");
    printf("(SIMD level %s)\n", level);
    return tu_finish("test_bf16");
}
