/* SwiGLU and exact-erf GELU: forward and backward against double-precision formulas (as a whole
 * and element by element), backward against central finite differences of L = sum(out * G), and
 * the tails where exp overflows in float. SwiGLU with bf16-stored gate and up against the fp32
 * op on the rounded values. With AVX-512 the checks run again in a child process
 * restricted to the portable SwiGLU loop. */
#define _POSIX_C_SOURCE 200809L /* readlink */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

static double silu_d(double x) { return x / (1.0 + exp(-x)); }
static double silu_grad_d(double x) {
    double s = 1.0 / (1.0 + exp(-x));
    return s + x * s * (1.0 - s);
}
static double gelu_d(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }
static double gelu_grad_d(double x) {
    return 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2.0 * 3.14159265358979323846);
}

/* Largest |a - ref| / max(|ref|, 1): a relative bound that cannot hide a few bad elements in a
 * norm, with values below 1 judged absolutely (the gradients cross zero). */
static double max_elementwise_error(const float *a, const float *ref, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)a[i] - ref[i]) / fmax(fabs((double)ref[i]), 1.0);
        if (!(err <= worst)) worst = err;
    }
    return worst;
}

typedef struct {
    size_t n;
    const float *gate, *up, *in, *G;
    float *out;
} act_case;

static double swiglu_loss(const float *x, void *ctx) {
    (void)x; /* x aliases gate or up, perturbed in place */
    act_case *c = ctx;
    tga_cpu_swiglu_forward(c->out, c->gate, c->up, c->n);
    double sum = 0;
    for (size_t i = 0; i < c->n; i++)
        sum += (double)c->out[i] * c->G[i];
    return sum;
}

static double gelu_loss(const float *x, void *ctx) {
    (void)x; /* x aliases in, perturbed in place */
    act_case *c = ctx;
    tga_cpu_gelu_forward(c->out, c->in, c->n);
    double sum = 0;
    for (size_t i = 0; i < c->n; i++)
        sum += (double)c->out[i] * c->G[i];
    return sum;
}

static void check_swiglu(size_t n, uint64_t *rng) {
    float *gate = tu_alloc_uniform(n, -8, 8, rng), *up = tu_alloc_uniform(n, -2, 2, rng);
    float *G = tu_alloc_uniform(n, -1, 1, rng);
    float *out = malloc(n * sizeof *out), *dgate = malloc(n * sizeof *dgate), *dup = malloc(n * sizeof *dup);
    float *ref = malloc(n * sizeof *ref), *ref_dgate = malloc(n * sizeof *ref_dgate);
    float *ref_dup = malloc(n * sizeof *ref_dup);
    for (size_t i = 0; i < n; i++) {
        ref[i] = (float)(silu_d(gate[i]) * up[i]);
        ref_dgate[i] = (float)((double)G[i] * up[i] * silu_grad_d(gate[i]));
        ref_dup[i] = (float)((double)G[i] * silu_d(gate[i]));
    }
    tga_cpu_swiglu_forward(out, gate, up, n);
    double err = tu_rel_error(out, ref, n), worst = max_elementwise_error(out, ref, n);
    CHECK(err <= 1e-5 && worst <= 2e-6, "swiglu forward n %zu: rel err %.3g, worst %.3g", n, err, worst);
    tga_cpu_swiglu_backward(dgate, dup, G, gate, up, n);
    err = tu_rel_error(dgate, ref_dgate, n), worst = max_elementwise_error(dgate, ref_dgate, n);
    CHECK(err <= 1e-5 && worst <= 2e-6, "swiglu dgate n %zu: rel err %.3g, worst %.3g", n, err, worst);
    err = tu_rel_error(dup, ref_dup, n), worst = max_elementwise_error(dup, ref_dup, n);
    CHECK(err <= 1e-5 && worst <= 2e-6, "swiglu dup n %zu: rel err %.3g, worst %.3g", n, err, worst);

    act_case c = {n, gate, up, NULL, G, out};
    err = tu_fd_check(swiglu_loss, &c, gate, dgate, n, 24, 1e-2f, 1e-1, rng);
    CHECK(err <= 1e-3, "swiglu finite differences dgate: %.3g", err);
    err = tu_fd_check(swiglu_loss, &c, up, dup, n, 24, 1e-2f, 1e-1, rng);
    CHECK(err <= 1e-3, "swiglu finite differences dup: %.3g", err);
    free(gate), free(up), free(G), free(out), free(dgate), free(dup), free(ref), free(ref_dgate),
        free(ref_dup);
}

/* The bf16 pair: the stored values are the nearest-even roundings of gate and up (NaN, infinities
 * and ties among them), and both directions equal the fp32 ops on those rounded values, bit for
 * bit (the same formulas on the same floats; the forward's output rounded too). */
static void check_swiglu_bf16(size_t n, uint64_t *rng) {
    float *gate = tu_alloc_uniform(n, -8, 8, rng), *up = tu_alloc_uniform(n, -2, 2, rng);
    float *G = tu_alloc_uniform(n, -1, 1, rng);
    const float special[] = {NAN, INFINITY, -INFINITY, 1.00390625f /* tie: to 1 */, 1.01171875f /* tie: up */,
                             -0.0f, 3e38f, 1e-40f};
    for (size_t i = 0; i < sizeof special / sizeof special[0] && i < n; i++) gate[i] = up[n - 1 - i] = special[i];
    tga_bf16 *g16 = malloc(n * sizeof *g16), *u16 = malloc(n * sizeof *u16), *out = malloc(n * sizeof *out);
    float *ref = malloc(n * sizeof *ref), *gr = malloc(n * sizeof *gr);
    float *ur = malloc(n * sizeof *ur), *dg = malloc(n * sizeof *dg), *du = malloc(n * sizeof *du);
    float *ref_dg = malloc(n * sizeof *ref_dg), *ref_du = malloc(n * sizeof *ref_du);
    for (size_t i = 0; i < n; i++) gr[i] = tga_bf16_round(gate[i]), ur[i] = tga_bf16_round(up[i]);
    memset(g16, 0xff, n * sizeof *g16), memset(u16, 0xff, n * sizeof *u16);
    tga_cpu_swiglu_forward_bf16(out, g16, u16, gate, up, n);
    tga_cpu_swiglu_forward(ref, gr, ur, n);
    size_t bad_store = 0, bad_out = 0, bad_grad = 0;
    for (size_t i = 0; i < n; i++) {
        bad_store += g16[i] != tga_bf16_from_float(gate[i]) || u16[i] != tga_bf16_from_float(up[i]);
        bad_out += out[i] != tga_bf16_from_float(ref[i]);
    }
    CHECK(bad_store == 0, "swiglu_forward_bf16 n %zu: %zu stored values are not the bf16 roundings", n, bad_store);
    CHECK(bad_out == 0, "swiglu_forward_bf16 n %zu: %zu outputs are not swiglu_forward's on rounded inputs, rounded",
          n, bad_out);
    CHECK(tga_bf16_to_float(g16[3]) == 1.0f && tga_bf16_to_float(g16[4]) == 1.015625f,
          "swiglu_forward_bf16: ties stored as %.9g and %.9g", tga_bf16_to_float(g16[3]), tga_bf16_to_float(g16[4]));
    tga_cpu_swiglu_backward_bf16(dg, du, G, g16, u16, n);
    tga_cpu_swiglu_backward(ref_dg, ref_du, G, gr, ur, n);
    for (size_t i = 0; i < n; i++)
        bad_grad += memcmp(&dg[i], &ref_dg[i], sizeof(float)) != 0 || memcmp(&du[i], &ref_du[i], sizeof(float)) != 0;
    CHECK(bad_grad == 0, "swiglu_backward_bf16 n %zu: %zu gradients differ from swiglu_backward on rounded inputs", n,
          bad_grad);
    free(gate), free(up), free(G), free(g16), free(u16), free(out), free(ref), free(gr), free(ur), free(dg), free(du),
        free(ref_dg), free(ref_du);
}

static void check_gelu(size_t n, uint64_t *rng) {
    float *in = tu_alloc_uniform(n, -6, 6, rng), *G = tu_alloc_uniform(n, -1, 1, rng);
    float *out = malloc(n * sizeof *out), *din = malloc(n * sizeof *din);
    float *ref = malloc(n * sizeof *ref), *ref_din = malloc(n * sizeof *ref_din);
    for (size_t i = 0; i < n; i++) {
        ref[i] = (float)gelu_d(in[i]);
        ref_din[i] = (float)((double)G[i] * gelu_grad_d(in[i]));
    }
    tga_cpu_gelu_forward(out, in, n);
    double err = tu_rel_error(out, ref, n), worst = max_elementwise_error(out, ref, n);
    CHECK(err <= 1e-5 && worst <= 2e-6, "gelu forward n %zu: rel err %.3g, worst %.3g", n, err, worst);
    tga_cpu_gelu_backward(din, G, in, n);
    err = tu_rel_error(din, ref_din, n), worst = max_elementwise_error(din, ref_din, n);
    CHECK(err <= 1e-5 && worst <= 2e-6, "gelu backward n %zu: rel err %.3g, worst %.3g", n, err, worst);

    act_case c = {n, NULL, NULL, in, G, out};
    err = tu_fd_check(gelu_loss, &c, in, din, n, 24, 1e-2f, 1e-1, rng);
    CHECK(err <= 1e-3, "gelu finite differences: %.3g", err);
    free(in), free(G), free(out), free(din), free(ref), free(ref_din);
}

/* The projector's fused bias + GELU: bit for bit the bias add followed by gelu_forward, and its
 * backward bit for bit gelu_backward, with the bias gradient (accumulated onto prior values)
 * against column sums in double. */
static void check_bias_gelu(int N, int D, uint64_t *rng) {
    size_t n = (size_t)N * D;
    float *gemm_out = tu_alloc_uniform(n, -4, 4, rng), *bias = tu_alloc_uniform((size_t)D, -1, 1, rng);
    float *pre = tu_alloc_copy(gemm_out, n), *act = malloc(n * sizeof *act);
    float *ref_pre = malloc(n * sizeof *ref_pre), *ref_act = malloc(n * sizeof *ref_act);
    for (size_t i = 0; i < n; i++) ref_pre[i] = gemm_out[i] + bias[i % (size_t)D];
    tga_cpu_gelu_forward(ref_act, ref_pre, n);
    tga_cpu_bias_gelu_forward(pre, act, bias, N, D);
    CHECK(memcmp(pre, ref_pre, n * sizeof *pre) == 0 && memcmp(act, ref_act, n * sizeof *act) == 0,
          "bias_gelu_forward %dx%d differs from bias + gelu_forward", N, D);

    float *dact = tu_alloc_uniform(n, -1, 1, rng), *dpre = tu_alloc_uniform(n, 5, 6, rng);
    float *ref_dpre = malloc(n * sizeof *ref_dpre);
    float *db0 = tu_alloc_uniform((size_t)D, -1, 1, rng), *db = tu_alloc_copy(db0, (size_t)D);
    tga_cpu_gelu_backward(ref_dpre, dact, pre, n);
    tga_cpu_gelu_bias_backward(dpre, db, dact, pre, N, D);
    CHECK(memcmp(dpre, ref_dpre, n * sizeof *dpre) == 0, "gelu_bias_backward %dx%d: dpre differs from gelu_backward",
          N, D);
    double worst = 0;
    for (int j = 0; j < D; j++) {
        double sum = 0;
        for (int r = 0; r < N; r++) sum += ref_dpre[(size_t)r * D + j];
        double e = fabs((double)db[j] - db0[j] - sum) / (fabs(sum) + 1e-3);
        worst = e > worst ? e : worst;
    }
    CHECK(worst <= 1e-5, "gelu_bias_backward %dx%d: dbias rel err %.3g", N, D, worst);
    for (size_t i = 0; i < n; i++) dpre[i] = NAN; /* a frozen bias: no gradient, dpre written all the same */
    tga_cpu_gelu_bias_backward(dpre, NULL, dact, pre, N, D);
    CHECK(memcmp(dpre, ref_dpre, n * sizeof *dpre) == 0, "gelu_bias_backward with NULL dbias: dpre differs");
    free(gemm_out), free(bias), free(pre), free(act), free(ref_pre), free(ref_act), free(dact), free(dpre);
    free(ref_dpre), free(db0), free(db);
}

/* Where exp(-x) overflows or erf saturates the outputs and gradients must stay finite and exact. */
static void check_tails(void) {
    enum { N_TAIL = 8 };
    const float x[N_TAIL] = {-1e30f, -200.0f, -100.0f, -30.0f, 30.0f, 100.0f, 200.0f, 1e30f};
    const float ones[N_TAIL] = {1, 1, 1, 1, 1, 1, 1, 1};
    float out[N_TAIL], d1[N_TAIL], d2[N_TAIL];
    tga_cpu_swiglu_forward(out, x, ones, N_TAIL);
    tga_cpu_swiglu_backward(d1, d2, ones, x, ones, N_TAIL);
    for (int i = 0; i < N_TAIL; i++) {
        CHECK(isfinite(out[i]) && fabs(out[i] - silu_d(x[i])) <= 1e-6 * fmax(1.0, fabs(x[i])),
              "swiglu(%g) = %g", x[i], out[i]);
        CHECK(fabs(d1[i] - silu_grad_d(x[i])) <= 1e-6 &&
                  fabs(d2[i] - silu_d(x[i])) <= 1e-6 * fmax(1.0, fabs(x[i])),
              "swiglu backward at %g: dgate %g, dup %g", x[i], d1[i], d2[i]);
    }
    tga_cpu_gelu_forward(out, x, N_TAIL);
    tga_cpu_gelu_backward(d1, ones, x, N_TAIL);
    for (int i = 0; i < N_TAIL; i++) {
        CHECK(out[i] == (x[i] > 0 ? x[i] : 0.0f), "gelu(%g) = %g", x[i], out[i]);
        CHECK(d1[i] == (x[i] > 0 ? 1.0f : 0.0f), "gelu'(%g) = %g", x[i], d1[i]);
    }
}

int main(void) {
    uint64_t rng = 0xAC71;
    check_swiglu(1000, &rng);
    check_swiglu(100003, &rng); /* above the parallel threshold */
    check_swiglu_bf16(1000, &rng);
    check_swiglu_bf16(100003, &rng);
    check_gelu(1000, &rng);
    check_gelu(100003, &rng);
    check_bias_gelu(7, 13, &rng);
    check_bias_gelu(300, 256, &rng); /* above the parallel threshold */
    check_tails();
    /* the checks again, limited to the portable SwiGLU loop */
    if (tga_cpu_has_avx512()) tu_rerun_with_simd("scalar", "SwiGLU");
    return tu_finish(tga_cpu_has_avx512() ? "test_activations (avx512 and portable)"
                                          : "test_activations (portable)");
}
