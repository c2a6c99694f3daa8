/* Causal GQA attention (kernels/cpu/attention.c) against a naive double-precision reference
 * (full score rows, explicit causal and length masks, softmax, analytic backward), against
 * central finite differences of L = sum(out * G), and for bitwise equality across thread
 * counts. Shapes cover MHA and GQA, head_dim 32..256, T below, at and above the 64-key tile,
 * right padding with full, short and empty samples, and large scores. The op picks its SIMD
 * kernels once per process, so the test runs itself again with TGA_CPU_SIMD=scalar to cover
 * the SSE2 kernels too. */
#define _POSIX_C_SOURCE 200809L

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

#define MAX_B 3

typedef struct attn_case {
    const char *name;
    int B, T, H, KVH, head_dim;
    int lengths[MAX_B];
    float qk_range;         /* q, k uniform in [-r, r]: larger r gives peakier softmax rows */
    double tolerance;       /* relative error allowed against the double reference */
    int finite_differences; /* also check gradients by finite differences (slower) */
} attn_case;

/* Observed errors: below 1e-6, except 7e-6 for the gradients with scores of magnitude ~100 (q,
 * k in [-12, 12]; plain exp would overflow there), where float rounding of the scores is
 * amplified by the peaky softmax. */

static const attn_case cases[] = {
    {"T1 mha hd32", 3, 1, 2, 2, 32, {1, 0, 1}, 2.0f, 1e-5, 0},
    {"T5 gqa 4:2 hd32", 3, 5, 4, 2, 32, {5, 2, 4}, 2.0f, 1e-5, 1},
    {"T67 gqa 8:1 hd64", 3, 67, 8, 1, 64, {67, 3, 40}, 2.0f, 1e-5, 1},
    {"T130 mha 4:4 hd64", 3, 130, 4, 4, 64, {130, 65, 1}, 2.0f, 1e-5, 0},
    {"T130 gqa 4:2 hd128", 3, 130, 4, 2, 128, {130, 64, 100}, 2.0f, 1e-5, 0},
    {"T67 gqa 6:3 hd40", 3, 67, 6, 3, 40, {67, 66, 10}, 2.0f, 1e-5, 1},
    {"T70 gqa 2:1 hd256", 2, 70, 2, 1, 256, {70, 33, 0}, 2.0f, 1e-5, 0},
    {"T100 large scores", 3, 100, 4, 2, 32, {100, 50, 0}, 12.0f, 3e-5, 0},
};

typedef struct attn_tensors {
    const attn_case *c;
    size_t q_elems, kv_elems, lse_elems;
    float *q, *k, *v, *dout;
    float *out, *lse, *dq, *dk, *dv;
} attn_tensors;

static size_t q_index(const attn_case *c, int b, int t, int h) {
    return (((size_t)b * c->T + t) * c->H + h) * c->head_dim;
}

static size_t kv_index(const attn_case *c, int b, int t, int g) {
    return (((size_t)b * c->T + t) * c->KVH + g) * c->head_dim;
}

static double dot_d(const float *a, const float *b, int n) {
    double s = 0;
    for (int d = 0; d < n; d++)
        s += (double)a[d] * b[d];
    return s;
}

typedef struct reference {
    double *out, *lse, *dq, *dk, *dv;
} reference;

/* The whole reference for one (sample, query head, query row t < length): a softmax over the
 * explicitly masked full score row, then the textbook backward
 * dS_j = p_j (dP_j - sum_i p_i dP_i). Outputs are zero-initialised by the caller. */
static void reference_row(const attn_tensors *x, int b, int h, int t, int length, reference *r, double *p,
                          double *dp) {
    const attn_case *c = x->c;
    const int hd = c->head_dim, g = h / (c->H / c->KVH);
    const double scale = 1.0 / sqrt((double)hd);
    const float *q = x->q + q_index(c, b, t, h), *dout = x->dout + q_index(c, b, t, h);
    double max = -INFINITY;
    for (int j = 0; j < c->T; j++) {
        int visible = j <= t && j < length;
        p[j] = visible ? scale * dot_d(q, x->k + kv_index(c, b, j, g), hd) : -INFINITY;
        max = fmax(max, p[j]);
    }
    double sum = 0;
    for (int j = 0; j < c->T; j++) {
        p[j] = exp(p[j] - max);
        sum += p[j];
    }
    double p_dot_dp = 0;
    for (int j = 0; j < c->T; j++) {
        p[j] /= sum;
        dp[j] = dot_d(dout, x->v + kv_index(c, b, j, g), hd);
        p_dot_dp += p[j] * dp[j];
    }
    r->lse[((size_t)b * c->H + h) * c->T + t] = max + log(sum);
    for (int j = 0; j < c->T; j++) {
        if (p[j] == 0) continue;
        const float *kj = x->k + kv_index(c, b, j, g), *vj = x->v + kv_index(c, b, j, g);
        double ds = p[j] * (dp[j] - p_dot_dp);
        for (int d = 0; d < hd; d++) {
            r->out[q_index(c, b, t, h) + d] += p[j] * vj[d];
            r->dq[q_index(c, b, t, h) + d] += scale * ds * kj[d];
            r->dk[kv_index(c, b, j, g) + d] += scale * ds * q[d];
            r->dv[kv_index(c, b, j, g) + d] += p[j] * dout[d];
        }
    }
}

static reference reference_attention(const attn_tensors *x) {
    const attn_case *c = x->c;
    reference r = {
        calloc(x->q_elems, sizeof(double)),  calloc(x->lse_elems, sizeof(double)),
        calloc(x->q_elems, sizeof(double)),  calloc(x->kv_elems, sizeof(double)),
        calloc(x->kv_elems, sizeof(double)),
    };
    double *p = malloc((size_t)c->T * sizeof *p), *dp = malloc((size_t)c->T * sizeof *dp);
    if (!r.out || !r.lse || !r.dq || !r.dk || !r.dv || !p || !dp) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int b = 0; b < c->B; b++) {
        for (int h = 0; h < c->H; h++) {
            for (int t = 0; t < c->lengths[b]; t++)
                reference_row(x, b, h, t, c->lengths[b], &r, p, dp);
        }
    }
    free(p);
    free(dp);
    return r;
}

static void free_reference(reference *r) {
    free(r->out);
    free(r->lse);
    free(r->dq);
    free(r->dk);
    free(r->dv);
}

/* ||got - want|| / ||want||, with ||want|| floored at an RMS of 1e-2 (entries here are of order
 * 0.1..1): some references are exactly zero (with T = 1 the single key gets p = 1, so
 * dq = dk = 0 as dP - D cancels), where the op leaves float rounding noise. */
static double rel_error_vs_double(const float *got, const double *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double diff = (double)got[i] - want[i];
        num += diff * diff;
        den += want[i] * want[i];
    }
    if (isnan(num)) return INFINITY;
    return sqrt(num / fmax(den, 1e-4 * (double)n));
}

static float *alloc_filled(size_t n, float value) {
    float *x = malloc(n * sizeof *x);
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        x[i] = value;
    return x;
}

static attn_tensors make_tensors(const attn_case *c, uint64_t *rng) {
    attn_tensors x = {.c = c};
    x.q_elems = (size_t)c->B * c->T * c->H * c->head_dim;
    x.kv_elems = (size_t)c->B * c->T * c->KVH * c->head_dim;
    x.lse_elems = (size_t)c->B * c->H * c->T;
    x.q = tu_alloc_uniform(x.q_elems, -c->qk_range, c->qk_range, rng);
    x.k = tu_alloc_uniform(x.kv_elems, -c->qk_range, c->qk_range, rng);
    x.v = tu_alloc_uniform(x.kv_elems, -1.0f, 1.0f, rng);
    /* nonzero at padding rows too: the op must ignore them */
    x.dout = tu_alloc_uniform(x.q_elems, -1.0f, 1.0f, rng);
    /* NaN sentinels: anything the op fails to overwrite shows up */
    x.out = alloc_filled(x.q_elems, NAN);
    x.lse = alloc_filled(x.lse_elems, NAN);
    x.dq = alloc_filled(x.q_elems, NAN);
    x.dk = alloc_filled(x.kv_elems, NAN);
    x.dv = alloc_filled(x.kv_elems, NAN);
    return x;
}

static void free_tensors(attn_tensors *x) {
    float *all[] = {x->q, x->k, x->v, x->dout, x->out, x->lse, x->dq, x->dk, x->dv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
}

static void run_forward(attn_tensors *x) {
    const attn_case *c = x->c;
    tga_cpu_attention_forward(x->out, x->lse, x->q, x->k, x->v, c->lengths, c->B, c->T, c->H, c->KVH,
                              c->head_dim);
}

static void run_backward(attn_tensors *x) {
    const attn_case *c = x->c;
    tga_cpu_attention_backward(x->dq, x->dk, x->dv, x->dout, x->q, x->k, x->v, x->out, x->lse, c->lengths,
                               c->B, c->T, c->H, c->KVH, c->head_dim);
}

static int all_zero(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (x[i] != 0.0f) return 0;
    }
    return 1;
}

/* Padding rows: out, lse and dq exactly 0; dk/dv exactly 0 at padding keys. */
static void check_padding(const attn_tensors *x) {
    const attn_case *c = x->c;
    const size_t hd = (size_t)c->head_dim;
    for (int b = 0; b < c->B; b++) {
        for (int t = c->lengths[b]; t < c->T; t++) {
            for (int h = 0; h < c->H; h++) {
                CHECK(all_zero(x->out + q_index(c, b, t, h), hd), "%s: out pad row b%d t%d h%d not 0",
                      c->name, b, t, h);
                CHECK(all_zero(x->dq + q_index(c, b, t, h), hd), "%s: dq pad row b%d t%d h%d not 0", c->name,
                      b, t, h);
                CHECK(x->lse[((size_t)b * c->H + h) * c->T + t] == 0.0f, "%s: lse pad b%d t%d h%d not 0",
                      c->name, b, t, h);
            }
            for (int g = 0; g < c->KVH; g++) {
                CHECK(all_zero(x->dk + kv_index(c, b, t, g), hd) &&
                          all_zero(x->dv + kv_index(c, b, t, g), hd),
                      "%s: dk/dv pad row b%d t%d g%d not 0", c->name, b, t, g);
            }
        }
    }
}

static void check_against_reference(const attn_tensors *x) {
    const attn_case *c = x->c;
    reference r = reference_attention(x);
    const char *names[] = {"out", "lse", "dq", "dk", "dv"};
    const float *got[] = {x->out, x->lse, x->dq, x->dk, x->dv};
    const double *want[] = {r.out, r.lse, r.dq, r.dk, r.dv};
    const size_t sizes[] = {x->q_elems, x->lse_elems, x->q_elems, x->kv_elems, x->kv_elems};
    for (int i = 0; i < 5; i++) {
        double err = rel_error_vs_double(got[i], want[i], sizes[i]);
        CHECK(err <= c->tolerance, "%s: %s rel err %.3g", c->name, names[i], err);
    }
    free_reference(&r);
}

/* Same inputs, 1 and 3 threads against the 2-thread results: bitwise equal. */
static void check_thread_independence(const attn_tensors *x) {
    const attn_case *c = x->c;
    for (int threads = 1; threads <= 3; threads += 2) {
        attn_tensors y = *x;
        y.out = tu_alloc_copy(x->out, x->q_elems);
        y.lse = tu_alloc_copy(x->lse, x->lse_elems);
        y.dq = tu_alloc_copy(x->dq, x->q_elems);
        y.dk = tu_alloc_copy(x->dk, x->kv_elems);
        y.dv = tu_alloc_copy(x->dv, x->kv_elems);
        omp_set_num_threads(threads);
        run_forward(&y);
        run_backward(&y);
        omp_set_num_threads(2);
        CHECK(memcmp(y.out, x->out, x->q_elems * sizeof(float)) == 0 &&
                  memcmp(y.lse, x->lse, x->lse_elems * sizeof(float)) == 0,
              "%s: forward differs between %d and 2 threads", c->name, threads);
        CHECK(memcmp(y.dq, x->dq, x->q_elems * sizeof(float)) == 0 &&
                  memcmp(y.dk, x->dk, x->kv_elems * sizeof(float)) == 0 &&
                  memcmp(y.dv, x->dv, x->kv_elems * sizeof(float)) == 0,
              "%s: backward differs between %d and 2 threads", c->name, threads);
        free(y.out);
        free(y.lse);
        free(y.dq);
        free(y.dk);
        free(y.dv);
    }
}

/* L = sum(out * G) with G = x->dout, so dL/d{q,k,v} is the backward of dout = G. */
static double loss_of_forward(const float *unused, void *ctx) {
    (void)unused;
    attn_tensors *x = ctx;
    run_forward(x);
    double loss = 0;
    for (size_t i = 0; i < x->q_elems; i++)
        loss += (double)x->out[i] * x->dout[i];
    return loss;
}

/* x holds the forward and backward of its inputs. */
static void check_finite_differences(attn_tensors *x, uint64_t *rng) {
    const attn_case *c = x->c;
    float *grads[] = {tu_alloc_copy(x->dq, x->q_elems), tu_alloc_copy(x->dk, x->kv_elems),
                      tu_alloc_copy(x->dv, x->kv_elems)};
    float *inputs[] = {x->q, x->k, x->v};
    const size_t sizes[] = {x->q_elems, x->kv_elems, x->kv_elems};
    const char *names[] = {"q", "k", "v"};
    /* h = 2e-2: the float loss carries rounding noise of ~1e-6, so smaller steps only add noise
     * (measured: worst error 2.5e-3 at h = 2e-2, 5e-3 at 1e-2, 2e-2 at 2e-3) */
    for (int i = 0; i < 3; i++) {
        double err = tu_fd_check(loss_of_forward, x, inputs[i], grads[i], sizes[i], 16, 2e-2f, 1e-2, rng);
        CHECK(err <= 1e-2, "%s: finite differences d%s rel err %.3g", c->name, names[i], err);
        free(grads[i]);
    }
}

static void check_case(const attn_case *c, uint64_t *rng) {
    attn_tensors x = make_tensors(c, rng);
    run_forward(&x);
    run_backward(&x);
    check_padding(&x);
    check_against_reference(&x);
    check_thread_independence(&x);
    if (c->finite_differences) check_finite_differences(&x, rng);
    free_tensors(&x);
}

static int all_nan(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!isnan(x[i])) return 0;
    }
    return 1;
}

/* Shapes the op cannot run (head_dim above its 256 limit, H not a multiple of KVH) are the
 * caller's to reject; should one get through, every output must be NaN rather than garbage. */
static void check_unsupported_shapes(uint64_t *rng) {
    const attn_case unsupported[] = {
        {"hd 264", 1, 3, 2, 1, 264, {3}, 1.0f, 0, 0},
        {"H 3 KVH 2", 1, 3, 3, 2, 32, {3}, 1.0f, 0, 0},
    };
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        const attn_case *c = &unsupported[i];
        attn_tensors x = make_tensors(c, rng);
        memset(x.out, 0, x.q_elems * sizeof(float));
        memset(x.dq, 0, x.q_elems * sizeof(float));
        run_forward(&x);
        run_backward(&x);
        CHECK(all_nan(x.out, x.q_elems) && all_nan(x.lse, x.lse_elems), "%s: forward outputs not all NaN",
              c->name);
        CHECK(all_nan(x.dq, x.q_elems) && all_nan(x.dk, x.kv_elems) && all_nan(x.dv, x.kv_elems),
              "%s: backward outputs not all NaN", c->name);
        free_tensors(&x);
    }
}

/* Runs this test again with TGA_CPU_SIMD=scalar (its PASS line silenced, its failures on
 * stderr) unless this already is such a run or the CPU has nothing wider. */
static void check_sse_kernels(void) {
    if (getenv("TGA_CPU_SIMD") || strcmp(tga_cpu_simd_level(), "scalar") == 0) return;
    size_t n_env = 0;
    while (environ[n_env])
        n_env++;
    char **env = malloc((n_env + 2) * sizeof *env);
    if (!env) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    memcpy(env, environ, n_env * sizeof *env);
    env[n_env] = "TGA_CPU_SIMD=scalar";
    env[n_env + 1] = NULL;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    char *argv[] = {"test_attention", NULL};
    pid_t pid;
    int status = 0;
    int spawned = posix_spawn(&pid, "/proc/self/exe", &actions, NULL, argv, env) == 0;
    CHECK(spawned, "could not run the test again for the SSE2 kernels");
    if (spawned) {
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the run with TGA_CPU_SIMD=scalar (SSE2 kernels) failed");
    }
    posix_spawn_file_actions_destroy(&actions);
    free(env);
}

int main(void) {
    uint64_t rng = 20240611;
    omp_set_num_threads(2);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_case(&cases[i], &rng);
    check_unsupported_shapes(&rng);
    check_sse_kernels();
    return tu_finish("test_attention");
}
