/* AdamW: five steps against a double-precision version of torch's formula, and five steps
 * against torch.optim.AdamW itself (through /usr/bin/python3, data passed as hex-float text). */
#define _POSIX_C_SOURCE 200809L /* popen, mkstemp */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

#define PYTHON "/usr/bin/python3"
#define STEPS 5

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} adamw_hparams;

typedef struct {
    size_t n;
    float *param, *m, *v;
} adamw_state;

static adamw_state state_new(size_t n, uint64_t *rng) {
    adamw_state s = {n, tu_alloc_uniform(n, -1, 1, rng), calloc(n, sizeof(float)), calloc(n, sizeof(float))};
    return s;
}

static void state_free(adamw_state *s) { free(s->param), free(s->m), free(s->v); }

/* torch's update written out in double. */
static void reference_step(double *p, double *m, double *v, const float *g, size_t n, const adamw_hparams *h,
                           int step) {
    double bc1 = 1.0 - pow(h->beta1, step), bc2 = 1.0 - pow(h->beta2, step);
    for (size_t i = 0; i < n; i++) {
        p[i] *= 1.0 - (double)h->lr * h->weight_decay;
        m[i] = h->beta1 * m[i] + (1.0 - h->beta1) * g[i];
        v[i] = h->beta2 * v[i] + (1.0 - h->beta2) * g[i] * g[i];
        double denom = sqrt(v[i]) / sqrt(bc2) + h->eps;
        p[i] -= h->lr / bc1 * m[i] / denom;
    }
}

/* ||(x - base) - (ref - base)|| / ||ref - base||; base NULL means zero. */
static double rel_error_vs_double(const float *x, const double *ref, const float *base, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double b = base ? base[i] : 0.0, change = (double)x[i] - b, ref_change = ref[i] - b;
        num += (change - ref_change) * (change - ref_change);
        den += ref_change * ref_change;
    }
    return sqrt(num / den);
}

static void check_against_double(size_t n, const adamw_hparams *h, uint64_t *rng) {
    adamw_state s = state_new(n, rng);
    float *param0 = tu_alloc_copy(s.param, n);
    double *p = malloc(n * sizeof *p), *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
    for (size_t i = 0; i < n; i++)
        p[i] = s.param[i];
    float *g = malloc(n * sizeof *g);
    for (int step = 1; step <= STEPS; step++) {
        tu_fill_uniform(g, n, -1, 1, rng);
        tga_cpu_adamw(s.param, g, s.m, s.v, n, h->lr, h->beta1, h->beta2, h->eps, h->weight_decay, step);
        reference_step(p, m, v, g, n, h, step);
    }
    /* The change of param, not param itself: the update is small next to the value. */
    double err = rel_error_vs_double(s.param, p, param0, n);
    CHECK(err <= 1e-5, "param change after %d steps (n %zu, lr %g, wd %g): rel err %.3g", STEPS, n, h->lr,
          h->weight_decay, err);
    err = rel_error_vs_double(s.m, m, NULL, n);
    CHECK(err <= 1e-6, "exp_avg after %d steps: rel err %.3g", STEPS, err);
    err = rel_error_vs_double(s.v, v, NULL, n);
    CHECK(err <= 1e-6, "exp_avg_sq after %d steps: rel err %.3g", STEPS, err);
    state_free(&s), free(param0), free(p), free(m), free(v), free(g);
}

/* Reads hyperparameters, the initial parameter and STEPS gradients from the file argv[1], runs
 * torch.optim.AdamW and prints the final parameter, exp_avg and exp_avg_sq. */
static const char *torch_script =
    "import sys, torch\n"
    "words = open(sys.argv[1]).read().split()\n"
    "n, steps = int(words[0]), int(words[1])\n"
    "vals = [float.fromhex(w) for w in words[2:]]\n"
    "lr, b1, b2, eps, wd = vals[:5]\n"
    "p = torch.nn.Parameter(torch.tensor(vals[5:5 + n], dtype=torch.float32))\n"
    "opt = torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, foreach=False)\n"
    "for s in range(steps):\n"
    "    p.grad = torch.tensor(vals[5 + n * (s + 1):5 + n * (s + 2)], dtype=torch.float32)\n"
    "    opt.step()\n"
    "st = opt.state[p]\n"
    "for t in (p.detach(), st['exp_avg'], st['exp_avg_sq']):\n"
    "    print(' '.join(x.hex() for x in t.tolist()))\n";

/* Writes the problem to a temp file; returns its path (static buffer) or NULL. */
static const char *write_problem(const adamw_hparams *h, const float *param, const float *grads, size_t n) {
    static char path[] = "/tmp/tga_test_adamw_XXXXXX";
    strcpy(path, "/tmp/tga_test_adamw_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "w");
    if (!f) return NULL;
    fprintf(f, "%zu %d\n%a %a %a %a %a\n", n, STEPS, h->lr, h->beta1, h->beta2, h->eps, h->weight_decay);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%a ", param[i]);
    for (size_t i = 0; i < n * STEPS; i++)
        fprintf(f, "%a ", grads[i]);
    return fclose(f) == 0 ? path : NULL;
}

/* Reads 3 * n floats (param, exp_avg, exp_avg_sq) from torch; returns 0 if it did not deliver. */
static int run_torch(float *out, const char *problem_path, size_t n) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s -c \"%s\" %s", PYTHON, torch_script, problem_path);
    FILE *pipe = popen(cmd, "r");
    if (!pipe) return 0;
    size_t got = 0;
    char word[64];
    while (got < 3 * n && fscanf(pipe, "%63s", word) == 1)
        out[got++] = (float)strtod(word, NULL);
    return pclose(pipe) == 0 && got == 3 * n;
}

/* The same float32 operations in the same order give the same bits. This holds for torch's
 * AVX2/AVX-512 kernels, which fuse the moment updates with FMA (those x86 builds are what this
 * project uses); a mismatch of ~1e-7 means an operation order or a fusion changed. */
static void check_bits(const char *what, const float *x, const float *torch_x, size_t n) {
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += memcmp(&x[i], &torch_x[i], sizeof x[i]) != 0;
    double err = tu_rel_error(x, torch_x, n);
    CHECK(differ == 0, "vs torch.optim.AdamW, %s: %zu of %zu elements differ (rel err %.3g)", what, differ, n,
          err);
}

static void check_against_torch(size_t n, const adamw_hparams *h, uint64_t *rng) {
    adamw_state s = state_new(n, rng);
    float *grads = tu_alloc_uniform(n * STEPS, -1, 1, rng);
    float *torch_out = calloc(3 * n, sizeof *torch_out);
    const char *path = write_problem(h, s.param, grads, n);
    CHECK(path != NULL, "cannot write the AdamW problem to /tmp");
    int ok = path && run_torch(torch_out, path, n);
    if (path) remove(path);
    if (!ok) {
        CHECK(0,
              "torch.optim.AdamW did not run: `%s -c \"import torch\"` must work (install Debian's "
              "python3-torch)",
              PYTHON);
    } else {
        for (int step = 1; step <= STEPS; step++)
            tga_cpu_adamw(s.param, grads + (size_t)(step - 1) * n, s.m, s.v, n, h->lr, h->beta1, h->beta2,
                          h->eps, h->weight_decay, step);
        check_bits("param", s.param, torch_out, n);
        check_bits("exp_avg", s.m, torch_out + n, n);
        check_bits("exp_avg_sq", s.v, torch_out + 2 * n, n);
    }
    state_free(&s), free(grads), free(torch_out);
}

/* adamw_bf16: the parameters, moments bit for bit those of adamw, and the copy each updated
 * parameter rounded to bf16 (a copy poisoned beforehand, so that every element must be written). */
static void check_bf16_copy(size_t n, const adamw_hparams *h, uint64_t *rng) {
    adamw_state a = state_new(n, rng);
    adamw_state b = {n, tu_alloc_copy(a.param, n), tu_alloc_copy(a.m, n), tu_alloc_copy(a.v, n)};
    float *g = tu_alloc_uniform(n, -1, 1, rng);
    tga_bf16 *copy = malloc(n * sizeof *copy);
    for (size_t i = 0; i < n; i++) copy[i] = 0x7fc1; /* a NaN */
    for (int step = 1; step <= 2; step++) {
        tga_cpu_adamw(a.param, g, a.m, a.v, n, h->lr, h->beta1, h->beta2, h->eps, h->weight_decay, step);
        tga_cpu_adamw_bf16(b.param, copy, g, b.m, b.v, n, h->lr, h->beta1, h->beta2, h->eps, h->weight_decay, step);
    }
    CHECK(memcmp(a.param, b.param, n * sizeof *a.param) == 0 && memcmp(a.m, b.m, n * sizeof *a.m) == 0 &&
              memcmp(a.v, b.v, n * sizeof *a.v) == 0,
          "adamw_bf16 n %zu: parameters or moments differ from adamw's", n);
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += copy[i] != tga_bf16_from_float(b.param[i]);
    CHECK(wrong == 0, "adamw_bf16 n %zu: %zu bf16 copies are not the rounded parameters", n, wrong);
    state_free(&a), state_free(&b), free(g), free(copy);
}

int main(void) {
    uint64_t rng = 0xADA3;
    const adamw_hparams decayed = {5e-2f, 0.9f, 0.999f, 1e-8f, 0.1f};
    const adamw_hparams plain = {1e-2f, 0.9f, 0.95f, 1e-6f, 0.0f};
    const adamw_hparams small_lr = {2e-5f, 0.9f, 0.999f, 1e-8f, 0.01f};
    check_against_double(1000, &decayed, &rng);
    check_against_double(100003, &plain, &rng); /* above the parallel threshold */
    check_against_torch(301, &small_lr, &rng);  /* one run: starting python takes seconds */
    check_bf16_copy(1000, &decayed, &rng);
    check_bf16_copy(100003, &plain, &rng);
    /* the portable loop must give the same bits as the AVX-512 one that ran above */
    if (tga_cpu_has_avx512()) tu_rerun_with_simd("scalar", "AdamW");
    return tu_finish(tga_cpu_has_avx512() ? "test_adamw (avx512 and portable)" : "test_adamw (portable)");
}
