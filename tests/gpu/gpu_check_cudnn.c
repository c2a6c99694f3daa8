/* GPU check of the CUDA backend's cuDNN attention (kernels/cuda/attention_cudnn.c), selected as
 * the trainer selects it (runtime/backend.c: tga_backend_set_attention("cudnn")), against the CPU
 * ops (tga_cpu_ops): causal grouped-query attention with per-sample lengths at head dims 64 and
 * 128, T up to 512. As in gpu_check: fresh random inputs, outputs poisoned with NaN before each
 * call, padding rows of every input poisoned too (they must not leak), and the limits of bf16
 * attention from kernels/cuda/README.md's precision policy (1e-2 out, 5e-3 lse, 2e-2 gradients).
 * Also: padding rows of every output exactly zero (ops.h), the backward bit for bit the same when
 * repeated (the deterministic engine), and the table swap of the selection.
 *
 * One "PASS|FAIL check shape detail" line per comparison, then "PASS|FAIL gpu_check_cudnn"; or
 * "SKIP gpu_check_cudnn: why" when cuDNN cannot be used (not installed, not cuDNN 9, or the
 * backend built without cudnn_backend.h). Exit code 0 (pass or skip), 1 (failures), 2 (no CUDA
 * backend).
 *
 *   gpu_check_cudnn [--seed N]      (TGA_CUDA_LIBRARY / TGA_CUDNN_LIBRARY name the libraries) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "tests/testutil.h"

#define OUT_LIMIT 1e-2
#define LSE_LIMIT 5e-3
#define GRAD_LIMIT 2e-2

static const tga_ops *gpu, *cpu;
static uint64_t rng = 20240611;
static int failures, checks;

static void report(int pass, const char *check, const char *shape, const char *detail) {
    printf("%s %s %s %s\n", pass ? "PASS" : "FAIL", check, shape, detail);
    fflush(stdout);
    checks++;
    failures += !pass;
}

/* ---- host and device buffers ------------------------------------------------------------------ */

static float *nan_floats(size_t n) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x) {
        fprintf(stderr, "gpu_check_cudnn: out of host memory\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

#define MAX_DEVICE_BUFFERS 32
static void *device_buffers[MAX_DEVICE_BUFFERS];
static int n_device_buffers;

static void *device_copy(const void *host, size_t bytes) {
    void *d = gpu->alloc(bytes);
    if (!d || n_device_buffers == MAX_DEVICE_BUFFERS) {
        fprintf(stderr, "gpu_check_cudnn: cannot allocate %zu bytes on the GPU\n", bytes);
        exit(2);
    }
    gpu->upload(d, host, bytes);
    device_buffers[n_device_buffers++] = d;
    return d;
}

static float *device_nan(size_t n) {
    float *host = nan_floats(n);
    float *d = device_copy(host, n * sizeof(float));
    free(host);
    return d;
}

static void free_device(void) {
    for (int i = 0; i < n_device_buffers; i++) gpu->free(device_buffers[i]);
    n_device_buffers = 0;
}

static float *download(const float *dev, size_t n) {
    float *host = nan_floats(n);
    gpu->download(host, dev, n * sizeof *host);
    return host;
}

/* ---- comparisons ------------------------------------------------------------------------------ */

static void compare(const char *op, const char *shape, const float *got, const float *ref, size_t n, double limit) {
    double relerr = tu_rel_error(got, ref, n);
    char detail[64];
    snprintf(detail, sizeof detail, "relerr=%.3g limit=%.3g", relerr, limit);
    report(isfinite(relerr) && relerr <= limit, op, shape, detail);
}

static int real_length(const int *lengths, int b, int T) { return lengths[b] < 0 ? 0 : (lengths[b] > T ? T : lengths[b]); }

/* Elements of padding rows of a [B, T, row] tensor that are not exactly +0 or -0. */
static size_t padding_nonzeros(const float *x, const int *lengths, int B, int T, size_t row) {
    size_t bad = 0;
    for (int b = 0; b < B; b++)
        for (size_t i = (size_t)real_length(lengths, b, T) * row; i < (size_t)T * row; i++)
            bad += x[(size_t)b * T * row + i] != 0.0f;
    return bad;
}

/* The same for lse [B, H, T]. */
static size_t lse_padding_nonzeros(const float *lse, const int *lengths, int B, int H, int T) {
    size_t bad = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = real_length(lengths, b, T); t < T; t++) bad += lse[((size_t)b * H + h) * T + t] != 0.0f;
    return bad;
}

static void report_padding(const char *op, const char *shape, size_t nonzeros) {
    char detail[64];
    snprintf(detail, sizeof detail, "%zu nonzero padding elements", nonzeros);
    report(nonzeros == 0, op, shape, detail);
}

/* NaN in every row of padding of a [B, T, heads, hd] tensor: the op must never read them. */
static void poison_padding(float *x, const int *lengths, int B, int T, size_t row) {
    for (int b = 0; b < B; b++)
        for (size_t i = (size_t)real_length(lengths, b, T) * row; i < (size_t)T * row; i++)
            x[(size_t)b * T * row + i] = NAN;
}

static float *poisoned_random(size_t n, float lo, float hi, const int *lengths, int B, int T, size_t row) {
    float *x = tu_alloc_uniform(n, lo, hi, &rng);
    poison_padding(x, lengths, B, T, row);
    return x;
}

/* ---- attention --------------------------------------------------------------------------------- */

typedef struct attention_case {
    int B, T, H, KVH, hd;
    int lengths[4];
} attention_case;

static void check_forward(const attention_case *c, const char *shape, const float *q, const float *k, const float *v,
                          const float *out_ref, const float *lse_ref) {
    const size_t q_row = (size_t)c->H * c->hd, kv_row = (size_t)c->KVH * c->hd, rows = (size_t)c->B * c->T;
    const size_t nl = rows * c->H;
    int *d_len = device_copy(c->lengths, (size_t)c->B * sizeof(int));
    float *d_out = device_nan(rows * q_row), *d_lse = device_nan(nl);
    gpu->attention_forward(d_out, d_lse, device_copy(q, rows * q_row * 4), device_copy(k, rows * kv_row * 4),
                           device_copy(v, rows * kv_row * 4), d_len, c->B, c->T, c->H, c->KVH, c->hd);
    float *out = download(d_out, rows * q_row), *lse = download(d_lse, nl);
    compare("attention_forward.out", shape, out, out_ref, rows * q_row, OUT_LIMIT);
    compare("attention_forward.lse", shape, lse, lse_ref, nl, LSE_LIMIT);
    report_padding("attention_forward.out padding rows", shape, padding_nonzeros(out, c->lengths, c->B, c->T, q_row));
    report_padding("attention_forward.lse padding rows", shape,
                   lse_padding_nonzeros(lse, c->lengths, c->B, c->H, c->T));
    free(out);
    free(lse);
    free_device();
}

/* The backward from the CPU forward's out and lse, twice: the second run must repeat the first
 * bit for bit. */
static void check_backward(const attention_case *c, const char *shape, const float *q, const float *k, const float *v,
                           const float *out_ref, const float *lse_ref) {
    const size_t q_row = (size_t)c->H * c->hd, kv_row = (size_t)c->KVH * c->hd, rows = (size_t)c->B * c->T;
    const size_t nq = rows * q_row, nkv = rows * kv_row;
    float *dout = poisoned_random(nq, -1, 1, c->lengths, c->B, c->T, q_row);
    float *dq_ref = nan_floats(nq), *dk_ref = nan_floats(nkv), *dv_ref = nan_floats(nkv);
    cpu->attention_backward(dq_ref, dk_ref, dv_ref, dout, q, k, v, out_ref, lse_ref, c->lengths, c->B, c->T, c->H,
                            c->KVH, c->hd);
    int *d_len = device_copy(c->lengths, (size_t)c->B * sizeof(int));
    const float *d_q = device_copy(q, nq * 4), *d_k = device_copy(k, nkv * 4), *d_v = device_copy(v, nkv * 4);
    const float *d_dout = device_copy(dout, nq * 4), *d_out = device_copy(out_ref, nq * 4);
    const float *d_lse = device_copy(lse_ref, rows * c->H * 4);
    float *got[2][3];
    for (int run = 0; run < 2; run++) {
        float *d_dq = device_nan(nq), *d_dk = device_nan(nkv), *d_dv = device_nan(nkv);
        gpu->attention_backward(d_dq, d_dk, d_dv, d_dout, d_q, d_k, d_v, d_out, d_lse, d_len, c->B, c->T, c->H,
                                c->KVH, c->hd);
        got[run][0] = download(d_dq, nq);
        got[run][1] = download(d_dk, nkv);
        got[run][2] = download(d_dv, nkv);
    }
    compare("attention_backward.dq", shape, got[0][0], dq_ref, nq, GRAD_LIMIT);
    compare("attention_backward.dk", shape, got[0][1], dk_ref, nkv, GRAD_LIMIT);
    compare("attention_backward.dv", shape, got[0][2], dv_ref, nkv, GRAD_LIMIT);
    report_padding("attention_backward.dq/dk/dv padding rows", shape,
                   padding_nonzeros(got[0][0], c->lengths, c->B, c->T, q_row) +
                       padding_nonzeros(got[0][1], c->lengths, c->B, c->T, kv_row) +
                       padding_nonzeros(got[0][2], c->lengths, c->B, c->T, kv_row));
    int same = memcmp(got[0][0], got[1][0], nq * 4) == 0 && memcmp(got[0][1], got[1][1], nkv * 4) == 0 &&
               memcmp(got[0][2], got[1][2], nkv * 4) == 0;
    report(same, "attention_backward deterministic", shape, same ? "two runs, same bits" : "two runs differ");
    for (int run = 0; run < 2; run++)
        for (int i = 0; i < 3; i++) free(got[run][i]);
    free(dout);
    free(dq_ref);
    free(dk_ref);
    free(dv_ref);
    free_device();
}

static void check_attention(const attention_case *c) {
    char shape[128];
    int len_off = snprintf(shape, sizeof shape, "B=%d T=%d H=%d KVH=%d hd=%d lengths=", c->B, c->T, c->H, c->KVH, c->hd);
    for (int b = 0; b < c->B; b++)
        len_off += snprintf(shape + len_off, sizeof shape - (size_t)len_off, "%s%d", b ? "," : "", c->lengths[b]);
    const size_t q_row = (size_t)c->H * c->hd, kv_row = (size_t)c->KVH * c->hd, rows = (size_t)c->B * c->T;
    float *q = poisoned_random(rows * q_row, -2, 2, c->lengths, c->B, c->T, q_row);
    float *k = poisoned_random(rows * kv_row, -2, 2, c->lengths, c->B, c->T, kv_row);
    float *v = poisoned_random(rows * kv_row, -1, 1, c->lengths, c->B, c->T, kv_row);
    float *out_ref = nan_floats(rows * q_row), *lse_ref = nan_floats(rows * c->H);
    cpu->attention_forward(out_ref, lse_ref, q, k, v, c->lengths, c->B, c->T, c->H, c->KVH, c->hd);
    check_forward(c, shape, q, k, v, out_ref, lse_ref);
    check_backward(c, shape, q, k, v, out_ref, lse_ref);
    free(q);
    free(k);
    free(v);
    free(out_ref);
    free(lse_ref);
}

/* ---- selection ---------------------------------------------------------------------------------- */

/* 1 when the two tables hold the same ops apart from the name and the attention pair. */
static int same_but_attention(const tga_ops *a, const tga_ops *b) {
    tga_ops x = *a, y = *b;
    x.name = y.name = NULL;
    x.attention_forward = y.attention_forward = NULL;
    x.attention_backward = y.attention_backward = NULL;
    return memcmp(&x, &y, sizeof x) == 0;
}

static void check_selected(const tga_ops *own) {
    int pass = gpu != own && gpu->attention_forward != own->attention_forward &&
               gpu->attention_backward != own->attention_backward && same_but_attention(gpu, own) &&
               strstr(gpu->name, "cuDNN") != NULL;
    report(pass, "select cudnn", "(table)", gpu->name);
    tga_status status = tga_backend_set_attention("flash");
    report(status == TGA_ERR_CONFIG && tga_active_ops == gpu, "select \"flash\" is refused, table kept", "(table)",
           tga_error_message());
    tga_error_clear();
}

static void check_back_to_own(const tga_ops *own) {
    tga_status status = tga_backend_set_attention("tga");
    report(status == TGA_OK && tga_active_ops == own, "select tga", "(table)",
           status == TGA_OK ? tga_active_ops->name : tga_error_message());
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            rng = strtoull(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: gpu_check_cudnn [--seed N]\n");
            return 2;
        }
    }
    if (tga_backend_select("cuda", 0) != TGA_OK) {
        fprintf(stderr, "gpu_check_cudnn: %s\n", tga_error_message());
        return 2;
    }
    const tga_ops *own = tga_active_ops;
    if (tga_backend_set_attention("cudnn") != TGA_OK) {
        printf("SKIP gpu_check_cudnn: %s\n", tga_error_message());
        return 0;
    }
    gpu = tga_active_ops;
    cpu = tga_cpu_ops();
    printf("gpu_check_cudnn: backend %s, seed %llu\n", gpu->name, (unsigned long long)rng);
    check_selected(own);
    static const attention_case cases[] = {
        {2, 100, 4, 2, 64, {100, 37}},           /* grouped-query heads, a padded sample */
        {1, 64, 2, 2, 64, {64}},                 /* one kv head per query head */
        {2, 200, 8, 2, 128, {200, 129}},
        {3, 17, 4, 1, 64, {17, 0, 5}},           /* one kv head, an empty sample */
        {4, 130, 4, 4, 64, {1, 64, 65, 128}},    /* lengths at and around a 64-row tile */
        {1, 512, 8, 2, 128, {512}},
        {2, 512, 4, 1, 128, {300, 512}},
        {1, 320, 32, 8, 128, {320}},             /* the 7B model's heads */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_attention(&cases[i]);
    check_attention(&cases[0]); /* again: the cached plan */
    check_back_to_own(own);
    printf("gpu_check_cudnn: %d checks, %d failed\n", checks, failures);
    printf("%s gpu_check_cudnn\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
