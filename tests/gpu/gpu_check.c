/* GPU check: every op of the CUDA backend against the CPU reference (tga_cpu_ops), several shapes
 * each, fresh random inputs, outputs poisoned with NaN before the call (so an element the op
 * fails to write is caught), padding rows of attention inputs poisoned too (they must not leak).
 * One "PASS|FAIL op shape relerr=E limit=L" line per comparison; then the model-level check
 * (gpu_check_model.c). Exit code 1 if anything failed, 2 if no GPU backend could be loaded.
 *
 *   gpu_check [--only family,family,...] [--small] [--seed N] [--attention both|mma|wgmma]
 * families: memory gemm linear embedding rmsnorm rope attention activations lm_head pooling
 * tga_align tga_align_fused elementwise adamw topk bf16 model
 *
 * Limits follow the precision policy of kernels/cuda/README.md: exact where the CUDA op repeats
 * the CPU's arithmetic, 1e-5..1e-6 for fp32 reductions in another order, the GEMM limit (TF32 or
 * fp32) for GEMM-based ops, 1e-2 (forward) and 2e-2 (backward) for bf16 attention, 1e-4 for the
 * bf16-weight ops (both sides compute the same bf16 products; only the fp32 sums differ). */
#include "tests/gpu/gpu_check.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/testutil.h"

const tga_ops *gc_gpu, *gc_cpu;
uint64_t gc_rng = 20240611;
int gc_small;
static int failures, checks;
static const char *only_families;

/* ---- helpers ---------------------------------------------------------------------------------- */

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "gpu_check: out of host memory\n");
        exit(2);
    }
    return p;
}

float *gc_random(size_t n, float lo, float hi) {
    float *x = xmalloc(n * sizeof *x);
    tu_fill_uniform(x, n, lo, hi, &gc_rng);
    return x;
}

float *gc_nan(size_t n) {
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

float *gc_copy(const float *x, size_t n) {
    float *y = xmalloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

#define MAX_DEVICE_BUFFERS 64
static void *device_buffers[MAX_DEVICE_BUFFERS];
static int n_device_buffers;

void *gc_device(const void *host, size_t bytes) {
    if (n_device_buffers == MAX_DEVICE_BUFFERS) {
        fprintf(stderr, "gpu_check: more than %d device buffers in one check\n", MAX_DEVICE_BUFFERS);
        exit(2);
    }
    void *d = gc_gpu->alloc(bytes);
    if (!d) {
        fprintf(stderr, "gpu_check: cannot allocate %zu bytes on the GPU\n", bytes);
        exit(2);
    }
    if (host) gc_gpu->upload(d, host, bytes);
    device_buffers[n_device_buffers++] = d;
    return d;
}

float *gc_device_nan(size_t n) {
    float *host = gc_nan(n);
    float *d = gc_device(host, n * sizeof(float));
    free(host);
    return d;
}

void gc_free_device(void) {
    for (int i = 0; i < n_device_buffers; i++) gc_gpu->free(device_buffers[i]);
    n_device_buffers = 0;
}

float *gc_download(const float *dev, size_t n) {
    float *host = xmalloc(n * sizeof *host);
    gc_gpu->download(host, dev, n * sizeof *host);
    return host;
}

int gc_report(const char *op, const char *shape, double relerr, double limit) {
    int pass = isfinite(relerr) && relerr <= limit;
    printf("%s %s %s relerr=%.3g limit=%.3g\n", pass ? "PASS" : "FAIL", op, shape, relerr, limit);
    fflush(stdout);
    checks++;
    failures += !pass;
    return pass;
}

int gc_compare(const char *op, const char *shape, const float *dev, const float *ref, size_t n, double limit) {
    float *got = gc_download(dev, n);
    int pass = gc_report(op, shape, tu_rel_error(got, ref, n), limit);
    free(got);
    return pass;
}

double gc_gemm_limit(void) { return strstr(gc_gpu->name, "GEMM fp32") ? 1e-4 : 5e-3; }

int gc_selected(const char *name) {
    if (!only_families) return 1;
    size_t len = strlen(name);
    for (const char *p = only_families; (p = strstr(p, name)) != NULL; p += len) {
        int starts = p == only_families || p[-1] == ',';
        int ends = p[len] == '\0' || p[len] == ',';
        if (starts && ends) return 1;
    }
    return 0;
}

/* free() of each argument up to a NULL */
static void gc_free_host(void *first, ...) {
    va_list ap;
    va_start(ap, first);
    for (void *p = first; p != NULL; p = va_arg(ap, void *)) free(p);
    va_end(ap);
}

static double rel_error_double(double a, double b) { return b == 0.0 ? fabs(a) : fabs(a - b) / fabs(b); }

/* ---- fp32 ops and their bf16-weight twins ------------------------------------------------------
 * One case function serves an op and its *_bf16 twin (kernels/ops.h): the weight is handed over
 * as fp32 or as its bf16 copy, and the op of either kind is called through these dispatchers. */

/* Both sides compute the same bf16 products and differ only in fp32 summation order. */
#define BF16_GEMM_LIMIT 1e-4

static double weight_gemm_limit(int bf16) { return bf16 ? BF16_GEMM_LIMIT : gc_gemm_limit(); }

/* A malloc'ed copy of the weight as the op takes it: fp32, or rounded to bf16. */
typedef struct test_weight {
    void *host;
    size_t bytes;
} test_weight;

static test_weight weight_for(const float *w, size_t n, int bf16) {
    if (!bf16) return (test_weight){gc_copy(w, n), n * sizeof(float)};
    tga_bf16 *h = xmalloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = tga_bf16_from_float(w[i]);
    return (test_weight){h, n * sizeof *h};
}

/* gc_report/gc_compare under the op's name (with "_bf16" for the twin) and the output's part */
static void variant_name(char *name, size_t size, const char *op, int bf16, const char *part) {
    snprintf(name, size, "%s%s%s", op, bf16 ? "_bf16" : "", part);
}

static int report_variant(const char *op, int bf16, const char *part, const char *shape, double relerr,
                          double limit) {
    char name[96];
    variant_name(name, sizeof name, op, bf16, part);
    return gc_report(name, shape, relerr, limit);
}

static int compare_variant(const char *op, int bf16, const char *part, const char *shape, const float *dev,
                           const float *ref, size_t n, double limit) {
    char name[96];
    variant_name(name, sizeof name, op, bf16, part);
    return gc_compare(name, shape, dev, ref, n, limit);
}

static int bf16_is_nan(tga_bf16 h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x007fu) != 0; }

/* A bf16 value's position on the number line, in bf16 steps (sign-magnitude to a signed integer). */
static int bf16_position(tga_bf16 x) { return x & 0x8000u ? -(int)(x & 0x7fffu) : (int)(x & 0x7fffu); }

/* bf16 output `dev` (n values, device) against `ref` (host). Both round fp32 values that differ in
 * their last bits (summation order, expf), so an element may land one bf16 step away (0.4 %
 * relative): allowed in up to 1 % of the elements (one element below 100). Any element further apart, or NaN on one side
 * only (the buffers start as NaN bits, so an element left unwritten), fails. The reported value is
 * the fraction one step apart, or the count further apart when there are any (>= 1, a FAIL). */
static int compare_bf16(const char *op, const char *shape, const tga_bf16 *dev, const tga_bf16 *ref, size_t n) {
    tga_bf16 *got = xmalloc(n * sizeof *got);
    gc_gpu->download(got, dev, n * sizeof *got);
    size_t one_step = 0, further = 0;
    for (size_t i = 0; i < n; i++) {
        const int got_nan = bf16_is_nan(got[i]), ref_nan = bf16_is_nan(ref[i]);
        if (got_nan || ref_nan) {
            further += got_nan != ref_nan;
            continue;
        }
        const int apart = abs(bf16_position(got[i]) - bf16_position(ref[i]));
        one_step += apart == 1;
        further += apart > 1;
    }
    free(got);
    return gc_report(op, shape, further ? (double)further : (double)one_step / (double)(n > 100 ? n : 100), 0.01);
}

/* n bf16 values of device memory set to a NaN pattern (0xffff), as gc_device_nan for fp32. */
static tga_bf16 *device_nan_bf16(size_t n) {
    tga_bf16 *h = xmalloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = 0xffffu;
    tga_bf16 *d = gc_device(h, n * sizeof *h);
    free(h);
    return d;
}

static void linear_forward_op(const tga_ops *ops, int bf16, float *out, const float *in, const void *w,
                              const float *bias, int N, int in_dim, int out_dim) {
    if (bf16)
        ops->linear_forward_bf16(out, in, w, bias, N, in_dim, out_dim);
    else
        ops->linear_forward(out, in, w, bias, N, in_dim, out_dim);
}

static void linear_backward_op(const tga_ops *ops, int bf16, float *din, float *dw, float *db, const float *dout,
                               const float *in, const void *w, int N, int in_dim, int out_dim, int accumulate_din) {
    if (bf16)
        ops->linear_backward_bf16(din, dw, db, dout, in, w, N, in_dim, out_dim, accumulate_din);
    else
        ops->linear_backward(din, dw, db, dout, in, w, N, in_dim, out_dim, accumulate_din);
}

static void lm_head_op(const tga_ops *ops, int bf16, double *loss, float *dh, float *dw, const float *hidden,
                       const void *w, const int *targets, int N, int D, int V, float grad_scale, float *scratch,
                       int chunk) {
    if (bf16)
        ops->lm_head_ce_bf16(loss, dh, dw, hidden, w, targets, N, D, V, grad_scale, scratch, chunk);
    else
        ops->lm_head_ce(loss, dh, dw, hidden, w, targets, N, D, V, grad_scale, scratch, chunk);
}

/* ---- memory ----------------------------------------------------------------------------------- */

static void check_memory(void) {
    const size_t n = 100000;
    float *h = gc_random(n, -1, 1), *ref = gc_copy(h, n);
    float *d = gc_device(h, n * sizeof(float));
    gc_compare("upload+download", "n=100000", d, ref, n, 0);
    gc_gpu->zero(d + 10, 1000 * sizeof(float));
    memset(ref + 10, 0, 1000 * sizeof(float));
    gc_compare("zero", "n=1000 at +10", d, ref, n, 0);
    gc_gpu->copy(d + 5, d, 50000 * sizeof(float)); /* overlapping, forward */
    memmove(ref + 5, ref, 50000 * sizeof(float));
    gc_compare("copy", "overlap dst>src", d, ref, n, 0);
    gc_gpu->copy(d, d + 7, 50000 * sizeof(float)); /* overlapping, backward */
    memmove(ref, ref + 7, 50000 * sizeof(float));
    gc_compare("copy", "overlap dst<src", d, ref, n, 0);
    float *d2 = gc_device_nan(n);
    gc_gpu->copy(d2, d, n * sizeof(float));
    gc_compare("copy", "disjoint", d2, ref, n, 0);
    float *fresh = gc_device(NULL, 4096 * sizeof(float));
    float zeros[4096] = {0};
    gc_compare("alloc", "zeroed 4096", fresh, zeros, 4096, 0);
    gc_free_device();
    free(h);
    free(ref);
}

/* ---- GEMM ------------------------------------------------------------------------------------- */

/* op(A)[M,K] op(B)[K,N] into C[M,N], every matrix with `pad` extra columns that must stay as they
 * were; C starts random (beta != 0) or NaN (beta == 0: C must not be read). */
static void gemm_case(int ta, int tb, int M, int N, int K, int pad, float alpha, float beta) {
    const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    const size_t a_n = (size_t)(ta ? K : M) * lda, b_n = (size_t)(tb ? N : K) * ldb, c_n = (size_t)M * ldc;
    float *a = gc_random(a_n, -1, 1), *b = gc_random(b_n, -1, 1);
    float *c = beta != 0.0f ? gc_random(c_n, -1, 1) : gc_nan(c_n), *ref = gc_copy(c, c_n);
    gc_cpu->gemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, ref, ldc);
    float *dc = gc_device(c, c_n * sizeof(float));
    gc_gpu->gemm(ta, tb, M, N, K, alpha, gc_device(a, a_n * sizeof(float)), lda, gc_device(b, b_n * sizeof(float)),
                 ldb, beta, dc, ldc);
    float *got = gc_download(dc, c_n);
    float *got_block = xmalloc((size_t)M * N * sizeof(float)), *ref_block = xmalloc((size_t)M * N * sizeof(float));
    int padding_kept = 1;
    for (int i = 0; i < M; i++) {
        memcpy(got_block + (size_t)i * N, got + (size_t)i * ldc, (size_t)N * sizeof(float));
        memcpy(ref_block + (size_t)i * N, ref + (size_t)i * ldc, (size_t)N * sizeof(float));
        padding_kept &= memcmp(got + (size_t)i * ldc + N, c + (size_t)i * ldc + N, (size_t)pad * sizeof(float)) == 0;
    }
    char shape[128];
    snprintf(shape, sizeof shape, "M=%d N=%d K=%d ta=%d tb=%d pad=%d alpha=%g beta=%g", M, N, K, ta, tb, pad, alpha,
             beta);
    gc_report("gemm", shape, tu_rel_error(got_block, ref_block, (size_t)M * N), gc_gemm_limit());
    gc_report("gemm.padding_untouched", shape, padding_kept ? 0.0 : 1.0, 0);
    gc_free_host(a, b, c, ref, got, got_block, ref_block, NULL);
    gc_free_device();
}

static void check_gemm(void) {
    static const int shapes[][3] = {{1, 1, 1}, {17, 33, 65}, {64, 128, 256}, {300, 77, 513}, {5, 4096, 64}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int t = 0; t < 4; t++)
            gemm_case(t >> 1, t & 1, shapes[s][0], shapes[s][1], shapes[s][2], (int)(s % 2) * 3, 1.0f,
                      (t + (int)s) % 2 ? 1.0f : 0.0f);
    gemm_case(0, 1, 40, 50, 60, 0, 0.5f, 0.25f);
    gemm_case(1, 0, 40, 50, 0, 2, 1.0f, 0.5f); /* K = 0: C = beta C */
    gemm_case(0, 0, 40, 50, 0, 0, 1.0f, 0.0f); /* K = 0, beta 0: C = 0 */
    gemm_case(0, 0, 40, 50, 60, 1, 0.0f, 2.0f); /* alpha 0 */
}

/* ---- linear ----------------------------------------------------------------------------------- */

/* Forward, then three backward calls: every gradient; dweight alone (din and dbias must stay as
 * they were); din alone (dweight must stay). */
static void linear_case(int N, int in_dim, int out_dim, int with_bias, int accumulate_din, int bf16) {
    char shape[96];
    snprintf(shape, sizeof shape, "N=%d in=%d out=%d bias=%d acc_din=%d", N, in_dim, out_dim, with_bias,
             accumulate_din);
    const size_t n_in = (size_t)N * in_dim, n_out = (size_t)N * out_dim, n_w = (size_t)out_dim * in_dim;
    const double limit = weight_gemm_limit(bf16);
    float *in = gc_random(n_in, -1, 1), *w = gc_random(n_w, -0.5f, 0.5f), *bias = gc_random((size_t)out_dim, -1, 1);
    test_weight weight = weight_for(w, n_w, bf16);
    float *out_ref = gc_nan(n_out);
    linear_forward_op(gc_cpu, bf16, out_ref, in, weight.host, with_bias ? bias : NULL, N, in_dim, out_dim);
    float *d_in = gc_device(in, n_in * 4), *d_out = gc_device_nan(n_out);
    void *d_w = gc_device(weight.host, weight.bytes);
    linear_forward_op(gc_gpu, bf16, d_out, d_in, d_w, with_bias ? gc_device(bias, (size_t)out_dim * 4) : NULL, N,
                      in_dim, out_dim);
    compare_variant("linear_forward", bf16, "", shape, d_out, out_ref, n_out, limit);

    float *dout = gc_random(n_out, -1, 1), *d_dout = gc_device(dout, n_out * 4);
    float *din = accumulate_din ? gc_random(n_in, -1, 1) : gc_nan(n_in), *din_ref = gc_copy(din, n_in);
    float *dw = gc_random(n_w, -1, 1), *dw_ref = gc_copy(dw, n_w);
    float *db = gc_random((size_t)out_dim, -1, 1), *db_ref = gc_copy(db, (size_t)out_dim);
    linear_backward_op(gc_cpu, bf16, din_ref, dw_ref, with_bias ? db_ref : NULL, dout, in, weight.host, N, in_dim,
                       out_dim, accumulate_din);
    float *d_din = gc_device(din, n_in * 4), *d_dw = gc_device(dw, n_w * 4), *d_db = gc_device(db, (size_t)out_dim * 4);
    linear_backward_op(gc_gpu, bf16, d_din, d_dw, with_bias ? d_db : NULL, d_dout, d_in, d_w, N, in_dim, out_dim,
                       accumulate_din);
    compare_variant("linear_backward", bf16, ".din", shape, d_din, din_ref, n_in, limit);
    compare_variant("linear_backward", bf16, ".dweight", shape, d_dw, dw_ref, n_w, limit);
    compare_variant("linear_backward", bf16, ".dbias", shape, d_db, db_ref, (size_t)out_dim, 1e-6);

    float *din_before = gc_download(d_din, n_in), *db_before = gc_download(d_db, (size_t)out_dim);
    linear_backward_op(gc_cpu, bf16, NULL, dw_ref, NULL, dout, in, weight.host, N, in_dim, out_dim, 0);
    linear_backward_op(gc_gpu, bf16, NULL, d_dw, NULL, d_dout, d_in, d_w, N, in_dim, out_dim, 0);
    compare_variant("linear_backward", bf16, ".dweight_only", shape, d_dw, dw_ref, n_w, limit);
    compare_variant("linear_backward", bf16, ".din_null_untouched", shape, d_din, din_before, n_in, 0);
    compare_variant("linear_backward", bf16, ".dbias_null_untouched", shape, d_db, db_before, (size_t)out_dim, 0);

    float *dw_before = gc_download(d_dw, n_w);
    linear_backward_op(gc_cpu, bf16, din_ref, NULL, NULL, dout, in, weight.host, N, in_dim, out_dim, accumulate_din);
    linear_backward_op(gc_gpu, bf16, d_din, NULL, NULL, d_dout, d_in, d_w, N, in_dim, out_dim, accumulate_din);
    compare_variant("linear_backward", bf16, ".din_only", shape, d_din, din_ref, n_in, limit);
    compare_variant("linear_backward", bf16, ".dweight_null_untouched", shape, d_dw, dw_before, n_w, 0);
    gc_free_host(in, w, bias, weight.host, out_ref, dout, din, din_ref, dw, dw_ref, db, db_ref, din_before, db_before,
                 dw_before, NULL);
    gc_free_device();
}

/* The bf16 ops whose input is bf16 already (model.dtype bf16: h1, h2 and the SwiGLU output) */
static void linear_bf16_input_case(int N, int in_dim, int out_dim, int accumulate_din) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d in=%d out=%d acc_din=%d", N, in_dim, out_dim, accumulate_din);
    const size_t n_in = (size_t)N * in_dim, n_w = (size_t)out_dim * in_dim, n_out = (size_t)N * out_dim;
    float *in = gc_random(n_in, -1, 1), *w = gc_random(n_w, -0.5f, 0.5f), *bias = gc_random((size_t)out_dim, -1, 1);
    test_weight in16 = weight_for(in, n_in, 1), w16 = weight_for(w, n_w, 1);
    float *out_ref = gc_nan(n_out);
    gc_cpu->linear_forward_bf16_input(out_ref, in16.host, w16.host, bias, N, in_dim, out_dim);
    void *d_in16 = gc_device(in16.host, in16.bytes), *d_w16 = gc_device(w16.host, w16.bytes);
    float *d_out = gc_device_nan(n_out), *d_bias = gc_device(bias, (size_t)out_dim * 4);
    gc_gpu->linear_forward_bf16_input(d_out, d_in16, d_w16, d_bias, N, in_dim, out_dim);
    gc_compare("linear_forward_bf16_input", shape, d_out, out_ref, n_out, BF16_GEMM_LIMIT);

    float *dout = gc_random(n_out, -1, 1);
    float *din = accumulate_din ? gc_random(n_in, -1, 1) : gc_nan(n_in), *din_ref = gc_copy(din, n_in);
    float *dw = gc_random(n_w, -1, 1), *dw_ref = gc_copy(dw, n_w);
    float *db = gc_random((size_t)out_dim, -1, 1), *db_ref = gc_copy(db, (size_t)out_dim);
    gc_cpu->linear_backward_bf16_input(din_ref, dw_ref, db_ref, dout, in16.host, w16.host, N, in_dim, out_dim,
                                       accumulate_din);
    float *d_din = gc_device(din, n_in * 4), *d_dw = gc_device(dw, n_w * 4), *d_db = gc_device(db, (size_t)out_dim * 4);
    gc_gpu->linear_backward_bf16_input(d_din, d_dw, d_db, gc_device(dout, n_out * 4), d_in16, d_w16, N, in_dim,
                                       out_dim, accumulate_din);
    gc_compare("linear_backward_bf16_input.din", shape, d_din, din_ref, n_in, BF16_GEMM_LIMIT);
    gc_compare("linear_backward_bf16_input.dweight", shape, d_dw, dw_ref, n_w, BF16_GEMM_LIMIT);
    gc_compare("linear_backward_bf16_input.dbias", shape, d_db, db_ref, (size_t)out_dim, 1e-6);
    gc_free_host(in, w, bias, in16.host, w16.host, out_ref, dout, din, din_ref, dw, dw_ref, db, db_ref, NULL);
    gc_free_device();
}

static void check_linear(void) {
    linear_bf16_input_case(37, 96, 130, 0);
    linear_bf16_input_case(600, 64, 256, 1);
    linear_case(37, 96, 130, 1, 0, 0);
    linear_case(37, 96, 130, 0, 1, 0);
    linear_case(600, 64, 256, 1, 1, 0); /* several row chunks in the bias gradient */
    linear_case(1, 1, 1, 1, 0, 0);
}

/* ---- embedding -------------------------------------------------------------------------------- */

/* N ids in [-3, V): repeats, and negative ids (image placeholders) */
static int *embedding_ids(int N, int V) {
    int *ids = xmalloc((size_t)N * sizeof *ids);
    for (int n = 0; n < N; n++) ids[n] = (int)(tu_next(&gc_rng) % (uint64_t)(V + 3)) - 3;
    return ids;
}

static void embedding_case(int N, int D, int V) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d D=%d V=%d", N, D, V);
    int *ids = embedding_ids(N, V);
    float *table = gc_random((size_t)V * D, -1, 1), *out_ref = gc_nan((size_t)N * D);
    gc_cpu->embedding_forward(out_ref, ids, table, N, D);
    int *d_ids = gc_device(ids, (size_t)N * sizeof *ids);
    float *d_out = gc_device_nan((size_t)N * D);
    gc_gpu->embedding_forward(d_out, d_ids, gc_device(table, (size_t)V * D * 4), N, D);
    gc_compare("embedding_forward", shape, d_out, out_ref, (size_t)N * D, 0);
    float *dout = gc_random((size_t)N * D, -1, 1), *dtable = gc_random((size_t)V * D, -1, 1);
    float *dtable_ref = gc_copy(dtable, (size_t)V * D);
    gc_cpu->embedding_backward(dtable_ref, dout, ids, N, D, V);
    float *d_dtable = gc_device(dtable, (size_t)V * D * 4);
    gc_gpu->embedding_backward(d_dtable, gc_device(dout, (size_t)N * D * 4), d_ids, N, D, V);
    /* same additions in the same order: the same bits */
    gc_compare("embedding_backward", shape, d_dtable, dtable_ref, (size_t)V * D, 0);
    gc_free_host(ids, table, out_ref, dout, dtable, dtable_ref, NULL);
    gc_free_device();
}

static void check_embedding(void) {
    embedding_case(200, 70, 50);
    embedding_case(64, 4096, 8);
    embedding_case(3000, 33, 1000);
}

/* ---- RMSNorm ---------------------------------------------------------------------------------- */

static void rmsnorm_case(int N, int D, int accumulate_din) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d D=%d acc_din=%d", N, D, accumulate_din);
    const size_t n = (size_t)N * D;
    const float eps = 1e-5f;
    float *x = gc_random(n, -2, 2), *w = gc_random((size_t)D, 0.5f, 1.5f);
    float *out_ref = gc_nan(n), *rstd_ref = gc_nan((size_t)N);
    gc_cpu->rmsnorm_forward(out_ref, rstd_ref, x, w, N, D, eps);
    float *d_x = gc_device(x, n * 4), *d_w = gc_device(w, (size_t)D * 4);
    float *d_out = gc_device_nan(n), *d_rstd = gc_device_nan((size_t)N);
    gc_gpu->rmsnorm_forward(d_out, d_rstd, d_x, d_w, N, D, eps);
    gc_compare("rmsnorm_forward.out", shape, d_out, out_ref, n, 1e-5);
    gc_compare("rmsnorm_forward.rstd", shape, d_rstd, rstd_ref, (size_t)N, 1e-5);

    float *dout = gc_random(n, -1, 1);
    float *din = accumulate_din ? gc_random(n, -1, 1) : gc_nan(n), *din_ref = gc_copy(din, n);
    float *dw = gc_random((size_t)D, -1, 1), *dw_ref = gc_copy(dw, (size_t)D);
    gc_cpu->rmsnorm_backward(din_ref, dw_ref, dout, x, w, rstd_ref, N, D, accumulate_din);
    float *d_din = gc_device(din, n * 4), *d_dw = gc_device(dw, (size_t)D * 4);
    gc_gpu->rmsnorm_backward(d_din, d_dw, gc_device(dout, n * 4), d_x, d_w, gc_device(rstd_ref, (size_t)N * 4), N, D,
                             accumulate_din);
    gc_compare("rmsnorm_backward.din", shape, d_din, din_ref, n, 1e-5);
    gc_compare("rmsnorm_backward.dweight", shape, d_dw, dw_ref, (size_t)D, 1e-5);

    float *delta = gc_random(n, -1, 1), *res_ref = gc_copy(x, n);
    float *out2_ref = gc_nan(n), *rstd2_ref = gc_nan((size_t)N);
    gc_cpu->add_rmsnorm_forward(res_ref, delta, out2_ref, rstd2_ref, w, N, D, eps);
    float *d_res = gc_device(x, n * 4), *d_out2 = gc_device_nan(n), *d_rstd2 = gc_device_nan((size_t)N);
    gc_gpu->add_rmsnorm_forward(d_res, gc_device(delta, n * 4), d_out2, d_rstd2, d_w, N, D, eps);
    gc_compare("add_rmsnorm_forward.residual", shape, d_res, res_ref, n, 0);
    gc_compare("add_rmsnorm_forward.out", shape, d_out2, out2_ref, n, 1e-5);
    gc_compare("add_rmsnorm_forward.rstd", shape, d_rstd2, rstd2_ref, (size_t)N, 1e-5);

    /* the bf16-output twins (compare_bf16: an element may land one bf16 step apart) */
    tga_bf16 *out16_ref = xmalloc(n * sizeof *out16_ref), *d_out16 = device_nan_bf16(n);
    gc_cpu->rmsnorm_forward_bf16(out16_ref, rstd_ref, x, w, N, D, eps);
    gc_gpu->rmsnorm_forward_bf16(d_out16, d_rstd, d_x, d_w, N, D, eps);
    compare_bf16("rmsnorm_forward_bf16.out", shape, d_out16, out16_ref, n);
    gc_compare("rmsnorm_forward_bf16.rstd", shape, d_rstd, rstd_ref, (size_t)N, 1e-5);
    float *res16_ref = gc_copy(x, n);
    gc_cpu->add_rmsnorm_forward_bf16(res16_ref, delta, out16_ref, rstd2_ref, w, N, D, eps);
    float *d_res16 = gc_device(x, n * 4);
    gc_gpu->add_rmsnorm_forward_bf16(d_res16, gc_device(delta, n * 4), d_out16, d_rstd2, d_w, N, D, eps);
    gc_compare("add_rmsnorm_forward_bf16.residual", shape, d_res16, res16_ref, n, 0);
    compare_bf16("add_rmsnorm_forward_bf16.out", shape, d_out16, out16_ref, n);
    gc_compare("add_rmsnorm_forward_bf16.rstd", shape, d_rstd2, rstd2_ref, (size_t)N, 1e-5);
    gc_free_host(x, w, out_ref, rstd_ref, dout, din, din_ref, dw, dw_ref, delta, res_ref, out2_ref, rstd2_ref,
                 out16_ref, res16_ref, NULL);
    gc_free_device();
}

static void check_rmsnorm(void) {
    rmsnorm_case(33, 4096, 0);
    rmsnorm_case(7, 64, 1);
    rmsnorm_case(700, 100, 1); /* several row chunks in the weight gradient */
}

/* ---- RoPE ------------------------------------------------------------------------------------- */

static void rope_case(int B, int T, int heads, int hd, int inverse) {
    char shape[80];
    snprintf(shape, sizeof shape, "B=%d T=%d heads=%d hd=%d inverse=%d", B, T, heads, hd, inverse);
    const int max_T = T + 5;
    const size_t n = (size_t)B * T * heads * hd, n_table = (size_t)max_T * hd;
    float *table = xmalloc(n_table * sizeof *table);
    tga_rope_table(table, max_T, hd, 10000.0);
    float *x = gc_random(n, -1, 1), *ref = gc_copy(x, n);
    gc_cpu->rope(ref, table, B, T, heads, hd, inverse);
    float *d_x = gc_device(x, n * 4);
    gc_gpu->rope(d_x, gc_device(table, n_table * 4), B, T, heads, hd, inverse);
    gc_compare("rope", shape, d_x, ref, n, 1e-6);
    gc_free_host(table, x, ref, NULL);
    gc_free_device();
}

static void check_rope(void) {
    rope_case(2, 50, 3, 64, 0);
    rope_case(2, 50, 3, 64, 1);
    rope_case(1, 300, 8, 128, 0);
    rope_case(3, 7, 1, 16, 1);
}

/* ---- attention -------------------------------------------------------------------------------- */

/* NaN in every row of padding of a [B,T,heads,hd] tensor: the op must never read them. */
static void poison_padding(float *x, const int *lengths, int B, int T, int heads, int hd) {
    for (int b = 0; b < B; b++)
        for (int t = lengths[b] < 0 ? 0 : lengths[b]; t < T; t++)
            for (size_t i = 0; i < (size_t)heads * hd; i++) x[((size_t)b * T + t) * heads * hd + i] = NAN;
}

/* The attention kernels under test: "mma" (mma.sync) or "wgmma" (Hopper), forward and backward. */
static const char *attention_kernel = "mma";

static void attention_case(int B, int T, int H, int KVH, int hd, const int *lengths) {
    char shape[160];
    int len_off = snprintf(shape, sizeof shape, "[%s] B=%d T=%d H=%d KVH=%d hd=%d lengths=", attention_kernel, B, T, H,
                           KVH, hd);
    for (int b = 0; b < B && len_off < (int)sizeof shape - 8; b++)
        len_off += snprintf(shape + len_off, sizeof shape - (size_t)len_off, "%s%d", b ? "," : "", lengths[b]);
    const size_t nq = (size_t)B * T * H * hd, nkv = (size_t)B * T * KVH * hd, nl = (size_t)B * H * T;
    float *q = gc_random(nq, -2, 2), *k = gc_random(nkv, -2, 2), *v = gc_random(nkv, -1, 1);
    poison_padding(q, lengths, B, T, H, hd);
    poison_padding(k, lengths, B, T, KVH, hd);
    poison_padding(v, lengths, B, T, KVH, hd);
    float *out_ref = gc_nan(nq), *lse_ref = gc_nan(nl);
    gc_cpu->attention_forward(out_ref, lse_ref, q, k, v, lengths, B, T, H, KVH, hd);
    int *d_len = gc_device(lengths, (size_t)B * sizeof(int));
    float *d_q = gc_device(q, nq * 4), *d_k = gc_device(k, nkv * 4), *d_v = gc_device(v, nkv * 4);
    float *d_out = gc_device_nan(nq), *d_lse = gc_device_nan(nl);
    gc_gpu->attention_forward(d_out, d_lse, d_q, d_k, d_v, d_len, B, T, H, KVH, hd);
    gc_compare("attention_forward.out", shape, d_out, out_ref, nq, 1e-2);
    gc_compare("attention_forward.lse", shape, d_lse, lse_ref, nl, 5e-3);

    /* the backward of both backends starts from the CPU forward's out and lse */
    float *dout = gc_random(nq, -1, 1);
    poison_padding(dout, lengths, B, T, H, hd);
    float *dq_ref = gc_nan(nq), *dk_ref = gc_nan(nkv), *dv_ref = gc_nan(nkv);
    gc_cpu->attention_backward(dq_ref, dk_ref, dv_ref, dout, q, k, v, out_ref, lse_ref, lengths, B, T, H, KVH, hd);
    float *d_dq = gc_device_nan(nq), *d_dk = gc_device_nan(nkv), *d_dv = gc_device_nan(nkv);
    gc_gpu->attention_backward(d_dq, d_dk, d_dv, gc_device(dout, nq * 4), d_q, d_k, d_v, gc_device(out_ref, nq * 4),
                               gc_device(lse_ref, nl * 4), d_len, B, T, H, KVH, hd);
    gc_compare("attention_backward.dq", shape, d_dq, dq_ref, nq, 2e-2);
    gc_compare("attention_backward.dk", shape, d_dk, dk_ref, nkv, 2e-2);
    gc_compare("attention_backward.dv", shape, d_dv, dv_ref, nkv, 2e-2);
    gc_free_host(q, k, v, out_ref, lse_ref, dout, dq_ref, dk_ref, dv_ref, NULL);
    gc_free_device();
}

/* --attention: "both" (default) checks the attention cases with each kernel set the device runs
 * and leaves the backend's own choice for the families after it (the model); "mma" or "wgmma"
 * checks that set only and pins it for the whole run, so that a wgmma failure on a new GPU (a trap
 * ends the process) can be kept out of the run that checks everything else (tests/gpu/run.sh). */
static const char *attention_mode = "both";

/* Pins `kind` for the run. Only the wgmma set may be missing, and only off sm_90 (a SKIP): there a
 * pass that skipped it would check nothing, and mma.sync or the backend's own choice failing to pin
 * means a broken library. 1 when pinned. */
static int pin_attention_kernel(const char *kind) {
    char why[512] = "";
    if (gc_attention_kernel(kind, why, sizeof why)) return 1;
    if (strcmp(kind, "wgmma") != 0 || strstr(gc_gpu->name, "sm_90")) {
        fprintf(stderr, "gpu_check: %s\n", why);
        gc_report("attention kernel selection", kind, NAN, 0);
    } else {
        printf("SKIP attention [%s]: %s\n", kind, why);
    }
    return 0;
}

/* Head widths 16 and 32 always take mma.sync, so those cases run in the mma pass only. */
static void check_attention(void) {
    static const char *const kernels[] = {"mma", "wgmma"};
    const int both = strcmp(attention_mode, "both") == 0;
    for (int i = 0; i < 2; i++) {
        if (!both && strcmp(attention_mode, kernels[i]) != 0) continue;
        if (!pin_attention_kernel(kernels[i])) continue;
        attention_kernel = kernels[i];
        const int all = i == 0;
        attention_case(2, 100, 4, 2, 64, (const int[]){100, 37});
        if (all) attention_case(1, 64, 2, 2, 32, (const int[]){64});
        attention_case(2, 200, 8, 2, 128, (const int[]){200, 129});
        if (all) attention_case(3, 17, 4, 1, 16, (const int[]){17, 0, 5});
        attention_case(4, 130, 4, 4, 64, (const int[]){1, 64, 65, 128});
        /* more key tiles than pipeline stages (the wgmma kernels refill their two) */
        attention_case(2, 520, 2, 1, 128, (const int[]){520, 389});
        if (!gc_small) attention_case(1, 680, 32, 8, 128, (const int[]){680}); /* a 7B stage-1 sample */
        if (!gc_small) attention_case(1, 1536, 8, 2, 128, (const int[]){1536});
    }
    if (both) pin_attention_kernel("auto");
}

/* ---- activations ------------------------------------------------------------------------------ */

/* The projector's bias + GELU and its backward with the bias gradient (accumulated onto prior
 * values); pre is updated in place, so each side gets its own copy of the GEMM output. */
static void bias_gelu_case(int N, int D) {
    char shape[48];
    snprintf(shape, sizeof shape, "N=%d D=%d", N, D);
    const size_t n = (size_t)N * D;
    float *gemm_out = gc_random(n, -4, 4), *bias = gc_random((size_t)D, -1, 1), *dact = gc_random(n, -1, 1);
    float *db0 = gc_random((size_t)D, -1, 1), *pre = gc_copy(gemm_out, n), *act = gc_nan(n), *dpre = gc_nan(n);
    float *db = gc_copy(db0, (size_t)D);
    float *d_pre = gc_device(gemm_out, n * 4), *d_act = gc_device_nan(n), *d_dpre = gc_device_nan(n);
    float *d_db = gc_device(db0, (size_t)D * 4), *d_dact = gc_device(dact, n * 4);
    gc_cpu->bias_gelu_forward(pre, act, bias, N, D);
    gc_gpu->bias_gelu_forward(d_pre, d_act, gc_device(bias, (size_t)D * 4), N, D);
    gc_compare("bias_gelu_forward.pre", shape, d_pre, pre, n, 0);
    gc_compare("bias_gelu_forward.act", shape, d_act, act, n, 1e-6);
    gc_cpu->gelu_bias_backward(dpre, db, dact, pre, N, D);
    gc_gpu->gelu_bias_backward(d_dpre, d_db, d_dact, d_pre, N, D);
    gc_compare("gelu_bias_backward.dpre", shape, d_dpre, dpre, n, 1e-6);
    gc_compare("gelu_bias_backward.dbias", shape, d_db, db, (size_t)D, 1e-6);
    float *d_dpre2 = gc_device_nan(n);
    gc_gpu->gelu_bias_backward(d_dpre2, NULL, d_dact, d_pre, N, D); /* a frozen bias */
    gc_compare("gelu_bias_backward.dpre_without_dbias", shape, d_dpre2, dpre, n, 1e-6);
    gc_free_host(gemm_out, bias, dact, db0, pre, act, dpre, db, NULL);
    gc_free_device();
}

/* SwiGLU with gate and up stored in bf16 (model.dtype bf16): the stores bit for bit (they start as
 * NaN), the bf16 output (expf and the CPU's exp differ in the last bits, so an element may round
 * one bf16 step apart) and the gradients (from the device's own stores) as the fp32 op's. */
static void swiglu_bf16_case(const char *shape, size_t n, const float *gate, const float *up, const float *dout,
                             const float *d_gate, const float *d_up, const float *d_dout) {
    tga_bf16 *g16 = xmalloc(n * sizeof *g16), *u16 = xmalloc(n * sizeof *u16), *got = xmalloc(n * sizeof *got);
    for (size_t i = 0; i < n; i++) got[i] = 0xffffu;
    tga_bf16 *d_g16 = gc_device(got, n * sizeof *got), *d_u16 = gc_device(got, n * sizeof *got);
    float *ref = gc_nan(n), *ref2 = gc_nan(n), *d_out = gc_device_nan(n), *d_out2 = gc_device_nan(n);
    tga_bf16 *out16 = xmalloc(n * sizeof *out16), *d_out16 = device_nan_bf16(n);
    gc_cpu->swiglu_forward_bf16(out16, g16, u16, gate, up, n);
    gc_gpu->swiglu_forward_bf16(d_out16, d_g16, d_u16, d_gate, d_up, n);
    compare_bf16("swiglu_forward_bf16", shape, d_out16, out16, n);
    size_t mismatches = 0;
    gc_gpu->download(got, d_g16, n * sizeof *got);
    for (size_t i = 0; i < n; i++) mismatches += got[i] != g16[i];
    gc_gpu->download(got, d_u16, n * sizeof *got);
    for (size_t i = 0; i < n; i++) mismatches += got[i] != u16[i];
    gc_report("swiglu_forward_bf16.stored", shape, (double)mismatches / (double)(2 * n), 0);
    gc_cpu->swiglu_backward_bf16(ref, ref2, dout, g16, u16, n);
    gc_gpu->swiglu_backward_bf16(d_out, d_out2, d_dout, d_g16, d_u16, n);
    gc_compare("swiglu_backward_bf16.dgate", shape, d_out, ref, n, 1e-6);
    gc_compare("swiglu_backward_bf16.dup", shape, d_out2, ref2, n, 1e-6);
    gc_free_host(g16, u16, got, ref, ref2, out16, NULL);
}

static void check_activations(void) {
    static const size_t sizes[] = {1, 1000, 1000003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s];
        char shape[32];
        snprintf(shape, sizeof shape, "n=%zu", n);
        float *gate = gc_random(n, -8, 8), *up = gc_random(n, -2, 2), *dout = gc_random(n, -1, 1);
        float *d_gate = gc_device(gate, n * 4), *d_up = gc_device(up, n * 4), *d_dout = gc_device(dout, n * 4);
        float *ref = gc_nan(n), *ref2 = gc_nan(n);
        float *d_out = gc_device_nan(n), *d_out2 = gc_device_nan(n);
        gc_cpu->swiglu_forward(ref, gate, up, n);
        gc_gpu->swiglu_forward(d_out, d_gate, d_up, n);
        gc_compare("swiglu_forward", shape, d_out, ref, n, 1e-6);
        gc_cpu->swiglu_backward(ref, ref2, dout, gate, up, n);
        gc_gpu->swiglu_backward(d_out, d_out2, d_dout, d_gate, d_up, n);
        gc_compare("swiglu_backward.dgate", shape, d_out, ref, n, 1e-6);
        gc_compare("swiglu_backward.dup", shape, d_out2, ref2, n, 1e-6);
        swiglu_bf16_case(shape, n, gate, up, dout, d_gate, d_up, d_dout);
        gc_cpu->gelu_forward(ref, gate, n);
        gc_gpu->gelu_forward(d_out, d_gate, n);
        gc_compare("gelu_forward", shape, d_out, ref, n, 1e-6);
        gc_cpu->gelu_backward(ref, dout, gate, n);
        gc_gpu->gelu_backward(d_out, d_dout, d_gate, n);
        gc_compare("gelu_backward", shape, d_out, ref, n, 1e-6);
        gc_free_host(gate, up, dout, ref, ref2, NULL);
        gc_free_device();
    }
    bias_gelu_case(1, 1);
    bias_gelu_case(37, 130);
    bias_gelu_case(600, 1024); /* several row chunks of the bias gradient */
}

/* ---- LM head ---------------------------------------------------------------------------------- */

/* want_dhidden / want_dweight: pass the gradient outputs, or NULL */
static void lm_head_case(int N, int D, int V, int chunk, int want_dhidden, int want_dweight, int bf16) {
    char shape[96];
    snprintf(shape, sizeof shape, "N=%d D=%d V=%d chunk=%d dhidden=%d dweight=%d", N, D, V, chunk, want_dhidden,
             want_dweight);
    const double limit = weight_gemm_limit(bf16);
    int *targets = xmalloc((size_t)N * sizeof *targets);
    for (int n = 0; n < N; n++) {
        uint64_t r = tu_next(&gc_rng);
        targets[n] = r % 5 < 2 ? -100 : (int)(r / 5 % (uint64_t)V);
    }
    targets[N / 2] = V + 5; /* outside the vocabulary: skipped like -100 */
    const size_t nh = (size_t)N * D, nw = (size_t)V * D, ns = (size_t)chunk * (V + D);
    float *hidden = gc_random(nh, -1, 1), *w = gc_random(nw, -0.2f, 0.2f);
    test_weight weight = weight_for(w, nw, bf16);
    /* dweight starts at the gradient's scale, so that an error in the gradient shows in the sum */
    float *dh_ref = gc_nan(nh), *dw = gc_random(nw, -0.01f, 0.01f), *dw_ref = gc_copy(dw, nw), *scratch = gc_nan(ns);
    const float grad_scale = 1.0f / 30.0f;
    double loss_ref = -1.0, loss = -1.0;
    lm_head_op(gc_cpu, bf16, &loss_ref, want_dhidden ? dh_ref : NULL, want_dweight ? dw_ref : NULL, hidden,
               weight.host, targets, N, D, V, grad_scale, scratch, chunk);
    float *d_dh = gc_device_nan(nh), *d_dw = gc_device(dw, nw * 4);
    lm_head_op(gc_gpu, bf16, &loss, want_dhidden ? d_dh : NULL, want_dweight ? d_dw : NULL, gc_device(hidden, nh * 4),
               gc_device(weight.host, weight.bytes), gc_device(targets, (size_t)N * sizeof *targets), N, D, V,
               grad_scale, gc_device_nan(ns), chunk);
    report_variant("lm_head_ce", bf16, ".loss_sum", shape, rel_error_double(loss, loss_ref), limit);
    if (want_dhidden) compare_variant("lm_head_ce", bf16, ".dhidden", shape, d_dh, dh_ref, nh, limit);
    if (want_dweight)
        compare_variant("lm_head_ce", bf16, ".dweight", shape, d_dw, dw_ref, nw, limit);
    else
        compare_variant("lm_head_ce", bf16, ".dweight_null_untouched", shape, d_dw, dw, nw, 0);
    gc_free_host(targets, hidden, w, weight.host, dh_ref, dw, dw_ref, scratch, NULL);
    gc_free_device();
}

static void check_lm_head(void) {
    lm_head_case(50, 64, 1000, 16, 1, 1, 0);
    lm_head_case(50, 64, 1000, 64, 0, 0, 0);
    lm_head_case(300, 128, 32000, 64, 1, 1, 0);
    lm_head_case(3, 16, 10, 1, 1, 1, 0);
}

/* ---- pooling ---------------------------------------------------------------------------------- */

/* Mean-pooling of n_seg segments of an [n_rows, D] tensor into n_out outputs. */
static void pooling_case(const char *shape, int n_rows, int D, int n_seg, const int *row_start, const int *row_count,
                         const int *out_index, int n_out) {
    int *out_rows = xmalloc((size_t)n_out * sizeof *out_rows);
    memset(out_rows, 0, (size_t)n_out * sizeof *out_rows);
    for (int s = 0; s < n_seg; s++) out_rows[out_index[s]] += row_count[s];
    const size_t seg_bytes = (size_t)n_seg * sizeof(int), n_in = (size_t)n_rows * D, n_pooled = (size_t)n_out * D;
    const tga_segments host_seg = {n_seg, n_out, row_start, row_count, out_index, out_rows};
    const tga_segments dev_seg = {n_seg, n_out, gc_device(row_start, seg_bytes), gc_device(row_count, seg_bytes),
                                  gc_device(out_index, seg_bytes), gc_device(out_rows, (size_t)n_out * sizeof(int))};
    float *in = gc_random(n_in, -1, 1), *out_ref = gc_nan(n_pooled);
    gc_cpu->segment_mean_forward(out_ref, in, &host_seg, D);
    float *d_out = gc_device_nan(n_pooled);
    gc_gpu->segment_mean_forward(d_out, gc_device(in, n_in * 4), &dev_seg, D);
    gc_compare("segment_mean_forward", shape, d_out, out_ref, n_pooled, 1e-6);
    float *dout = gc_random(n_pooled, -1, 1), *din = gc_random(n_in, -1, 1), *din_ref = gc_copy(din, n_in);
    gc_cpu->segment_mean_backward(din_ref, dout, &host_seg, D);
    float *d_din = gc_device(din, n_in * 4);
    gc_gpu->segment_mean_backward(d_din, gc_device(dout, n_pooled * 4), &dev_seg, D);
    /* the CPU's multiply and add per segment, in segment order: the same bits */
    gc_compare("segment_mean_backward", shape, d_din, din_ref, n_in, 0);
    gc_free_host(out_rows, in, out_ref, dout, din, din_ref, NULL);
    gc_free_device();
}

static void check_pooling(void) {
    /* overlapping segments, two segments feeding one output, an empty output (2), an output fed by
     * a segment equal to another's */
    const int start[] = {0, 5, 20, 0, 35}, count[] = {10, 10, 5, 10, 5}, out[] = {0, 1, 0, 3, 3};
    pooling_case("40 rows, 5 overlapping segments, 4 outputs", 40, 300, 5, start, count, out, 4);
    /* a stage-1 micro-batch: 4 samples of 700 rows, one 576-patch image each (sample 3 has two,
     * pooled together), and 8-row retrieved-text spans pooled into outputs 4..7 */
    const int img_start[] = {9, 709, 1409, 2109, 2109 + 576 - 600}, img_count[] = {576, 576, 576, 576, 576};
    const int img_out[] = {0, 1, 2, 3, 3};
    pooling_case("4 samples x 700 rows, D=1024, images", 2800, 1024, 5, img_start, img_count, img_out, 4);
    const int ret_start[] = {1, 701, 1401, 2101}, ret_count[] = {8, 8, 0, 8}, ret_out[] = {0, 1, 2, 3};
    pooling_case("4 samples x 700 rows, D=1024, retrieved text (one empty)", 2800, 1024, 4, ret_start, ret_count,
                 ret_out, 4);
}

/* ---- TGA alignment loss ----------------------------------------------------------------------- */

/* n samples of dimension D; sample 2 skipped (no pair), samples with b % 3 == 1 without the rank
 * term, sample 3 with |v| below eps (the clamped branch). */
static void align_case(int N, int D, int with_outputs) {
    uint8_t *use_pair = xmalloc((size_t)N), *use_rank = xmalloc((size_t)N);
    for (int b = 0; b < N; b++) {
        use_pair[b] = b != 2;
        use_rank[b] = b % 3 != 1;
    }
    float *v = gc_random((size_t)N * D, -1, 1), *r = gc_random((size_t)N * D, -1, 1), *c = gc_random((size_t)N * D, -1, 1);
    for (int d = 0; d < D; d++) v[3 * D + d] = 1e-12f;
    tga_align_args args = {N, D, v, r, c, use_pair, use_rank, 0.3f, 0.2f, 1e-8f};
    double pair_ref = 1.5, rank_ref = 0.5, pair = 1.5, rank = 0.5;
    float *cos_vc_ref = gc_nan(N), *cos_rc_ref = gc_nan(N), *dv_ref = gc_nan((size_t)N * D), *dr_ref = gc_nan((size_t)N * D);
    gc_cpu->tga_align_loss(&pair_ref, &rank_ref, with_outputs ? cos_vc_ref : NULL, with_outputs ? cos_rc_ref : NULL,
                           with_outputs ? dv_ref : NULL, with_outputs ? dr_ref : NULL, &args);
    float *d_cos_vc = gc_device_nan(N), *d_cos_rc = gc_device_nan(N);
    float *d_dv = gc_device_nan((size_t)N * D), *d_dr = gc_device_nan((size_t)N * D);
    tga_align_args dev_args = {N,
                               D,
                               gc_device(v, sizeof(float) * N * D),
                               gc_device(r, sizeof(float) * N * D),
                               gc_device(c, sizeof(float) * N * D),
                               gc_device(use_pair, (size_t)N),
                               gc_device(use_rank, (size_t)N),
                               0.3f,
                               0.2f,
                               1e-8f};
    gc_gpu->tga_align_loss(&pair, &rank, with_outputs ? d_cos_vc : NULL, with_outputs ? d_cos_rc : NULL,
                           with_outputs ? d_dv : NULL, with_outputs ? d_dr : NULL, &dev_args);
    char shape[64];
    snprintf(shape, sizeof shape, "n=%d D=%d %s", N, D, with_outputs ? "with cos and grads" : "sums only");
    gc_report("tga_align_loss.pair_sum", shape, rel_error_double(pair, pair_ref), 1e-9);
    gc_report("tga_align_loss.rank_sum", shape, rel_error_double(rank, rank_ref), 1e-9);
    if (with_outputs) {
        gc_compare("tga_align_loss.cos_vc", shape, d_cos_vc, cos_vc_ref, N, 1e-6);
        gc_compare("tga_align_loss.cos_rc", shape, d_cos_rc, cos_rc_ref, N, 1e-6);
        gc_compare("tga_align_loss.dv", shape, d_dv, dv_ref, (size_t)N * D, 1e-6);
        gc_compare("tga_align_loss.dr", shape, d_dr, dr_ref, (size_t)N * D, 1e-6);
    }
    gc_free_host(use_pair, use_rank, v, r, c, cos_vc_ref, cos_rc_ref, dv_ref, dr_ref, NULL);
    gc_free_device();
}

static void check_tga_align(void) {
    align_case(6, 257, 1);
    align_case(6, 257, 0);
    align_case(32, 4096, 1);
}

/* ---- fused TGA alignment (all align layers in one op) ------------------------------------------ */

/* A micro-batch as the model lays it out: samples of T rows, images of `patches` rows placed by
 * (sample, start), one retrieved-text span per sample (length 0 = none), tox samples. */
typedef struct align_fused_shape {
    const char *name;
    int n_layers, D, B, T, patches, n_images;
    const int *image_sample, *image_start; /* [n_images] */
    const int *ret_start, *ret_len, *tox;  /* [B] */
} align_fused_shape;

/* Host segment tables and flags built as trainer/model.c builds them, and their device copies. */
typedef struct align_fused_batch {
    int *img_table, *ret_table; /* start, count, out_index, out_rows: 3 * n_segments + n_out ints */
    uint8_t *flags;             /* use_pair [B], use_rank [B] */
    tga_segments img, ret, dev_img, dev_ret;
    uint8_t *dev_flags;
} align_fused_batch;

static tga_segments segments_in(const int *table, int n_seg, int n_out) {
    return (tga_segments){n_seg, n_out, table, table + n_seg, table + 2 * n_seg, table + 3 * n_seg};
}

static int *segment_table(int n_seg, int n_out, const int *start, const int *count, const int *out) {
    int *t = xmalloc((size_t)(3 * n_seg + n_out) * sizeof *t);
    memset(t, 0, (size_t)(3 * n_seg + n_out) * sizeof *t);
    for (int s = 0; s < n_seg; s++) {
        t[s] = start[s];
        t[n_seg + s] = count[s];
        t[2 * n_seg + s] = out[s];
        t[3 * n_seg + out[s]] += count[s];
    }
    return t;
}

static void align_fused_batch_make(align_fused_batch *k, const align_fused_shape *sh) {
    const int B = sh->B, I = sh->n_images;
    int *start = xmalloc((size_t)(I + B) * 3 * sizeof *start), *count = start + I + B, *out = count + I + B;
    for (int i = 0; i < I; i++) {
        start[i] = sh->image_sample[i] * sh->T + sh->image_start[i];
        count[i] = sh->patches;
        out[i] = sh->image_sample[i];
    }
    k->img_table = segment_table(I, B, start, count, out);
    for (int b = 0; b < B; b++) {
        start[b] = b * sh->T + sh->ret_start[b];
        count[b] = sh->ret_len[b];
        out[b] = b;
    }
    k->ret_table = segment_table(B, B, start, count, out);
    free(start);
    k->img = segments_in(k->img_table, I, B);
    k->ret = segments_in(k->ret_table, B, B);
    k->flags = xmalloc((size_t)2 * B);
    for (int b = 0; b < B; b++) {
        k->flags[b] = k->img_table[3 * I + b] > 0 && !sh->tox[b];
        k->flags[B + b] = k->flags[b] && sh->ret_len[b] > 0;
    }
    k->dev_img = segments_in(gc_device(k->img_table, (size_t)(3 * I + B) * sizeof(int)), I, B);
    k->dev_ret = segments_in(gc_device(k->ret_table, (size_t)4 * B * sizeof(int)), B, B);
    k->dev_flags = gc_device(k->flags, (size_t)2 * B);
}

/* The CPU op on host copies and the CUDA op on device copies of the same inputs: sums, cosines,
 * pooled vectors and gradients, then the same without the optional outputs, then the backward
 * scatter of the last layer's gradients (the CPU's arithmetic in the CPU's order: exact). */
static void align_fused_case(const align_fused_shape *sh) {
    const int L = sh->n_layers, D = sh->D, B = sh->B;
    const size_t n_hidden = (size_t)B * sh->T * D, n_pooled = (size_t)L * B * D, n_cos = (size_t)L * B;
    align_fused_batch k;
    align_fused_batch_make(&k, sh);
    const float *hidden[4], *dev_hidden[4];
    for (int j = 0; j < L; j++) {
        float *h = gc_random(n_hidden, -1, 1);
        hidden[j] = h;
        dev_hidden[j] = gc_device(h, n_hidden * sizeof *h);
    }
    float *c = gc_random(n_pooled, -1, 1);
    const tga_align_args args = {B, D, NULL, NULL, c, k.flags, k.flags + B, 0.3f, 0.2f, 1e-8f};
    const tga_align_args dev_args = {B, D, NULL, NULL, gc_device(c, n_pooled * sizeof *c), k.dev_flags,
                                     k.dev_flags + B, 0.3f, 0.2f, 1e-8f};
    float *cos_vc = gc_nan(n_cos), *cos_rc = gc_nan(n_cos), *v = gc_nan(n_pooled), *r = gc_nan(n_pooled);
    float *dv = gc_nan(n_pooled), *dr = gc_nan(n_pooled);
    float *d_cos_vc = gc_device_nan(n_cos), *d_cos_rc = gc_device_nan(n_cos), *d_v = gc_device_nan(n_pooled);
    float *d_r = gc_device_nan(n_pooled), *d_dv = gc_device_nan(n_pooled), *d_dr = gc_device_nan(n_pooled);
    double pair_ref = 1.5, rank_ref = 0.5, pair = 1.5, rank = 0.5;
    gc_cpu->tga_align_fused_forward(&pair_ref, &rank_ref, cos_vc, cos_rc, v, r, dv, dr, hidden, L, &k.img, &k.ret,
                                    &args);
    gc_gpu->tga_align_fused_forward(&pair, &rank, d_cos_vc, d_cos_rc, d_v, d_r, d_dv, d_dr, dev_hidden, L, &k.dev_img,
                                    &k.dev_ret, &dev_args);
    gc_report("tga_align_fused_forward.pair_sum", sh->name, rel_error_double(pair, pair_ref), 1e-9);
    gc_report("tga_align_fused_forward.rank_sum", sh->name, rel_error_double(rank, rank_ref), 1e-9);
    gc_compare("tga_align_fused_forward.cos_vc", sh->name, d_cos_vc, cos_vc, n_cos, 1e-6);
    gc_compare("tga_align_fused_forward.cos_rc", sh->name, d_cos_rc, cos_rc, n_cos, 1e-6);
    gc_compare("tga_align_fused_forward.v", sh->name, d_v, v, n_pooled, 1e-6);
    gc_compare("tga_align_fused_forward.r", sh->name, d_r, r, n_pooled, 1e-6);
    gc_compare("tga_align_fused_forward.dv", sh->name, d_dv, dv, n_pooled, 1e-6);
    gc_compare("tga_align_fused_forward.dr", sh->name, d_dr, dr, n_pooled, 1e-6);

    float *d_v_only = gc_device_nan(n_pooled), *d_r_only = gc_device_nan(n_pooled);
    double pair_only = 1.5, rank_only = 0.5;
    gc_gpu->tga_align_fused_forward(&pair_only, &rank_only, NULL, NULL, d_v_only, d_r_only, NULL, NULL, dev_hidden, L,
                                    &k.dev_img, &k.dev_ret, &dev_args);
    char shape[160];
    snprintf(shape, sizeof shape, "%s, sums only", sh->name);
    gc_report("tga_align_fused_forward.pair_sum", shape, rel_error_double(pair_only, pair_ref), 1e-9);
    gc_report("tga_align_fused_forward.rank_sum", shape, rel_error_double(rank_only, rank_ref), 1e-9);
    gc_compare("tga_align_fused_forward.v", shape, d_v_only, v, n_pooled, 1e-6);

    const size_t last = (size_t)(L - 1) * B * D;
    float *din = gc_random(n_hidden, -1, 1), *din_ref = gc_copy(din, n_hidden), *d_din = gc_device(din, n_hidden * 4);
    gc_cpu->tga_align_fused_backward(din_ref, dv + last, dr + last, &k.img, &k.ret, D);
    gc_gpu->tga_align_fused_backward(d_din, gc_device(dv + last, (size_t)B * D * 4),
                                     gc_device(dr + last, (size_t)B * D * 4), &k.dev_img, &k.dev_ret, D);
    gc_compare("tga_align_fused_backward", sh->name, d_din, din_ref, n_hidden, 0);

    for (int j = 0; j < L; j++) free((void *)hidden[j]);
    gc_free_host(k.img_table, k.ret_table, k.flags, c, cos_vc, cos_rc, v, r, dv, dr, din, din_ref, NULL);
    gc_free_device();
}

static void check_tga_align_fused(void) {
    /* sample 1 has two images; sample 2 is tox */
    const align_fused_shape one = {"1 layer, D=32, 3 samples (two images, tox)", 1, 32, 3, 16, 4, 4,
                                   (const int[]){0, 1, 1, 2}, (const int[]){2, 1, 7, 3},
                                   (const int[]){8, 12, 9}, (const int[]){3, 2, 4}, (const int[]){0, 0, 1}};
    align_fused_case(&one);
    /* sample 1: two images, no retrieved text; sample 2: retrieved span overlapping its image;
     * sample 3: no image; sample 4: tox */
    const align_fused_shape two = {"2 layers, D=257, 5 samples (no image, no retrieved text, overlap, tox)", 2, 257,
                                   5, 20, 6, 5, (const int[]){0, 1, 1, 2, 4}, (const int[]){1, 2, 10, 0, 5},
                                   (const int[]){9, 0, 4, 3, 12}, (const int[]){4, 0, 5, 3, 3},
                                   (const int[]){0, 0, 0, 0, 1}};
    align_fused_case(&two);
    /* sample 2: tox, no retrieved text; sample 3: two overlapping images and a retrieved span
     * overlapping the second */
    const align_fused_shape four = {"4 layers, D=1024, 4 samples x 100 rows, 64-row images", 4, 1024, 4, 100, 64, 5,
                                    (const int[]){0, 1, 2, 3, 3}, (const int[]){9, 30, 1, 2, 33},
                                    (const int[]){1, 2, 80, 70}, (const int[]){8, 20, 0, 30},
                                    (const int[]){0, 0, 1, 0}};
    align_fused_case(&four);
    /* a 7B stage-1 micro-batch: 576-patch images, D=4096 */
    const align_fused_shape big = {"3 layers, D=4096, 3 samples x 700 rows, 576-row images", 3, 4096, 3, 700, 576,
                                   3, (const int[]){0, 1, 2}, (const int[]){9, 20, 40},
                                   (const int[]){1, 1, 620}, (const int[]){8, 19, 60}, (const int[]){0, 0, 0}};
    align_fused_case(&big);
}

/* ---- elementwise ------------------------------------------------------------------------------ */

static void check_elementwise(void) {
    static const size_t sizes[] = {1, 1000, 5000003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s];
        char shape[32];
        snprintf(shape, sizeof shape, "n=%zu", n);
        float *y = gc_random(n, -1, 1), *x = gc_random(n, -1, 1), *ref = gc_copy(y, n);
        float *d_y = gc_device(y, n * 4), *d_x = gc_device(x, n * 4);
        gc_cpu->add_inplace(ref, x, n);
        gc_gpu->add_inplace(d_y, d_x, n);
        gc_compare("add_inplace", shape, d_y, ref, n, 0);
        gc_cpu->scale_inplace(ref, 0.37f, n);
        gc_gpu->scale_inplace(d_y, 0.37f, n);
        gc_compare("scale_inplace", shape, d_y, ref, n, 0);
        gc_report("sum_squares", shape, rel_error_double(gc_gpu->sum_squares(d_x, n), gc_cpu->sum_squares(x, n)), 1e-12);
        gc_report("all_finite.clean", shape, gc_gpu->all_finite(d_x, n) == 1 ? 0.0 : 1.0, 0);
        const float bad[2] = {NAN, INFINITY};
        for (int b = 0; b < 2; b++) {
            gc_gpu->upload(d_x + n - 1, &bad[b], sizeof(float));
            gc_report(b ? "all_finite.inf_last" : "all_finite.nan_last", shape, gc_gpu->all_finite(d_x, n) == 0 ? 0.0 : 1.0,
                      0);
        }
        gc_free_host(y, x, ref, NULL);
        gc_free_device();
    }
}

/* ---- AdamW ------------------------------------------------------------------------------------ */

static void adamw_case(size_t n) {
    char shape[48];
    snprintf(shape, sizeof shape, "n=%zu 3 steps", n);
    float *p = gc_random(n, -1, 1), *g = gc_random(n, -0.1f, 0.1f), *m = gc_random(n, -0.01f, 0.01f);
    float *v = gc_random(n, 0, 1e-4f);
    float *p_ref = gc_copy(p, n), *m_ref = gc_copy(m, n), *v_ref = gc_copy(v, n);
    float *d_p = gc_device(p, n * 4), *d_m = gc_device(m, n * 4), *d_v = gc_device(v, n * 4);
    float *d_g = gc_device(g, n * 4);
    for (int step = 1; step <= 3; step++) {
        gc_cpu->adamw(p_ref, g, m_ref, v_ref, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
        gc_gpu->adamw(d_p, d_g, d_m, d_v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
    }
    /* the same correctly rounded operations in the same order: the same bits */
    gc_compare("adamw.param", shape, d_p, p_ref, n, 0);
    gc_compare("adamw.m", shape, d_m, m_ref, n, 0);
    gc_compare("adamw.v", shape, d_v, v_ref, n, 0);
    /* adamw_bf16 from the same start: the same parameters, and their bf16 copies (widened here) */
    float *d_p2 = gc_device(p, n * 4), *d_m2 = gc_device(m, n * 4), *d_v2 = gc_device(v, n * 4);
    float *copy_ref = gc_nan(n), *d_copy = gc_device_nan(n);
    tga_bf16 *d_copy16 = gc_device(copy_ref, n * sizeof(tga_bf16)); /* NaN bits: every element must be written */
    for (int step = 1; step <= 3; step++)
        gc_gpu->adamw_bf16(d_p2, d_copy16, d_g, d_m2, d_v2, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
    for (size_t i = 0; i < n; i++) copy_ref[i] = tga_bf16_round(p_ref[i]);
    gc_gpu->from_bf16(d_copy, d_copy16, n);
    gc_compare("adamw_bf16.param", shape, d_p2, p_ref, n, 0);
    gc_compare("adamw_bf16.m", shape, d_m2, m_ref, n, 0);
    gc_compare("adamw_bf16.copy", shape, d_copy, copy_ref, n, 0);
    gc_free_host(p, g, m, v, p_ref, m_ref, v_ref, copy_ref, NULL);
    gc_free_device();
}

static void check_adamw(void) {
    adamw_case(1);
    adamw_case(1000);
    adamw_case(1000003);
}

/* ---- top-k ------------------------------------------------------------------------------------ */

static void topk_case(int n_rows, int n_cols, int n_blocks, int k) {
    char shape[64];
    snprintf(shape, sizeof shape, "rows=%d cols=%dx%d k=%d", n_rows, n_blocks, n_cols, k);
    const int ld = n_cols + 3;
    const size_t n_list = (size_t)n_rows * k;
    float *best = xmalloc(n_list * sizeof *best);
    int32_t *index = xmalloc(n_list * sizeof *index);
    for (size_t i = 0; i < n_list; i++) best[i] = -INFINITY, index[i] = -1;
    float *d_best = gc_device(best, n_list * sizeof *best);
    int32_t *d_index = gc_device(index, n_list * sizeof *index);
    float *scores = xmalloc((size_t)n_rows * ld * sizeof *scores);
    for (int blk = 0; blk < n_blocks; blk++) {
        for (size_t i = 0; i < (size_t)n_rows * ld; i++) { /* multiples of 1/8: many ties */
            uint64_t r = tu_next(&gc_rng);
            scores[i] = r % 10 == 0 ? -INFINITY : (float)((int)(r / 10 % 33) - 16) / 8.0f;
        }
        gc_cpu->topk_merge(best, index, scores, n_rows, n_cols, ld, blk * n_cols, k);
        gc_gpu->topk_merge(d_best, d_index, gc_device(scores, (size_t)n_rows * ld * sizeof *scores), n_rows, n_cols, ld,
                           blk * n_cols, k);
    }
    float *got = gc_download(d_best, n_list);
    int32_t *got_index = xmalloc(n_list * sizeof *got_index);
    gc_gpu->download(got_index, d_index, n_list * sizeof *got_index);
    size_t mismatches = 0;
    for (size_t i = 0; i < n_list; i++)
        mismatches += memcmp(&got[i], &best[i], sizeof *got) != 0 || got_index[i] != index[i];
    gc_report("topk_merge", shape, (double)mismatches / (double)n_list, 0);
    gc_free_host(best, index, scores, got, got_index, NULL);
    gc_free_device();
}

static void check_topk(void) {
    topk_case(37, 300, 3, 10);
    topk_case(5, 7, 2, 20); /* fewer items than k: empty slots stay at the end */
    topk_case(200, 4096, 2, 64);
}

/* ---- bf16 weights (model.dtype: bf16) ------------------------------------------------------------ */

/* Floats (as bits) that probe every rounding path of fp32 -> bf16. */
static const uint32_t rounding_probes[] = {
    0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, /* zeros, infinities */
    0x7fc00000u, 0xffc00000u, 0x7fffffffu,               /* quiet NaNs */
    0x7f800001u, 0x7fbfffffu, 0xff800001u,               /* signalling NaNs: must stay NaN */
    0x3f808000u, 0x3f818000u, 0xbf818000u,               /* ties: to the even neighbour, down and up */
    0x3f808001u, 0x3f807fffu,                            /* just above and below a tie */
    0x7f7fffffu, 0x7f7f8000u, 0x7f7f7fffu,               /* overflow to inf, a tie into inf, just below */
    0x00000001u, 0x00008000u, 0x00018000u, 0x007fffffu,  /* subnormals: to zero, ties, up to the smallest normal */
    0x80008001u, 0x00800000u, 0x00c08000u,               /* negative subnormal, smallest normal, a normal tie */
};

/* to_bf16 against the CPU bit for bit (a NaN must give a NaN; its payload may differ), the probes
 * first and random bit patterns after them; the output starts as NaN (0xffff). */
static void to_bf16_case(size_t n) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu (rounding probes + random bits)", n);
    const size_t n_probes = sizeof rounding_probes / sizeof rounding_probes[0];
    uint32_t *bits = xmalloc(n * sizeof *bits);
    for (size_t i = 0; i < n; i++) bits[i] = i < n_probes ? rounding_probes[i] : (uint32_t)tu_next(&gc_rng);
    tga_bf16 *ref = xmalloc(n * sizeof *ref), *got = xmalloc(n * sizeof *got);
    gc_cpu->to_bf16(ref, (const float *)bits, n);
    for (size_t i = 0; i < n; i++) got[i] = 0xffffu;
    tga_bf16 *d_out = gc_device(got, n * sizeof *got);
    gc_gpu->to_bf16(d_out, gc_device(bits, n * sizeof *bits), n);
    gc_gpu->download(got, d_out, n * sizeof *got);
    size_t mismatches = 0;
    for (size_t i = 0; i < n; i++) mismatches += got[i] != ref[i] && !(bf16_is_nan(got[i]) && bf16_is_nan(ref[i]));
    gc_report("to_bf16", shape, (double)mismatches / (double)n, 0);
    gc_free_host(bits, ref, got, NULL);
    gc_free_device();
}

/* from_bf16 over every bf16 bit pattern (NaN payloads included), compared bit for bit. */
static void from_bf16_case(size_t n) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu (bit patterns in turn)", n);
    tga_bf16 *in = xmalloc(n * sizeof *in);
    for (size_t i = 0; i < n; i++) in[i] = (tga_bf16)((i * 40503u + 7u) & 0xffffu); /* 40503 odd: all 65536 */
    float *ref = gc_nan(n);
    gc_cpu->from_bf16(ref, in, n);
    float *d_out = gc_device_nan(n);
    gc_gpu->from_bf16(d_out, gc_device(in, n * sizeof *in), n);
    float *got = gc_download(d_out, n);
    size_t mismatches = 0;
    for (size_t i = 0; i < n; i++) mismatches += memcmp(&got[i], &ref[i], sizeof got[i]) != 0;
    gc_report("from_bf16", shape, (double)mismatches / (double)n, 0);
    gc_free_host(in, ref, got, NULL);
    gc_free_device();
}

static void embedding_forward_bf16_case(int N, int D, int V) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d D=%d V=%d", N, D, V);
    int *ids = embedding_ids(N, V);
    float *table = gc_random((size_t)V * D, -1, 1), *out_ref = gc_nan((size_t)N * D);
    test_weight table_bf16 = weight_for(table, (size_t)V * D, 1);
    gc_cpu->embedding_forward_bf16(out_ref, ids, table_bf16.host, N, D);
    float *d_out = gc_device_nan((size_t)N * D);
    gc_gpu->embedding_forward_bf16(d_out, gc_device(ids, (size_t)N * sizeof *ids),
                                   gc_device(table_bf16.host, table_bf16.bytes), N, D);
    /* widening is exact: the same bits */
    gc_compare("embedding_forward_bf16", shape, d_out, out_ref, (size_t)N * D, 0);
    gc_free_host(ids, table, table_bf16.host, out_ref, NULL);
    gc_free_device();
}

static void check_bf16(void) {
    static const size_t sizes[] = {1, 4099, 1000003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) to_bf16_case(sizes[s]);
    from_bf16_case(1);
    from_bf16_case(65536);
    from_bf16_case(200003);
    linear_case(37, 96, 130, 1, 0, 1);
    linear_case(37, 96, 130, 0, 1, 1);
    linear_case(600, 64, 256, 1, 1, 1); /* several row chunks in the bias gradient */
    linear_case(1, 1, 1, 1, 0, 1);
    linear_case(13, 7, 33, 1, 1, 1); /* odd sizes: unaligned bf16 rows */
    linear_case(65, 1031, 31, 0, 0, 1); /* a long K: summation order shows */
    embedding_forward_bf16_case(200, 70, 50);
    embedding_forward_bf16_case(64, 4096, 8);
    embedding_forward_bf16_case(3000, 33, 1000);
    lm_head_case(50, 64, 1000, 16, 1, 1, 1);  /* several chunks */
    lm_head_case(50, 64, 1000, 64, 0, 0, 1);  /* loss only */
    lm_head_case(90, 72, 999, 32, 1, 0, 1);   /* frozen head (stage 1): dhidden only, odd V */
    lm_head_case(300, 128, 32000, 64, 1, 1, 1);
    lm_head_case(3, 16, 10, 1, 1, 1, 1);
}

/* ---- main ------------------------------------------------------------------------------------- */

typedef struct family {
    const char *name;
    void (*run)(void);
} family;

static const family families[] = {
    {"memory", check_memory},           {"gemm", check_gemm},         {"linear", check_linear},
    {"embedding", check_embedding},     {"rmsnorm", check_rmsnorm},   {"rope", check_rope},
    {"attention", check_attention},     {"activations", check_activations}, {"lm_head", check_lm_head},
    {"pooling", check_pooling},         {"tga_align", check_tga_align}, {"tga_align_fused", check_tga_align_fused},
    {"elementwise", check_elementwise}, {"adamw", check_adamw},       {"topk", check_topk},
    {"bf16", check_bf16},               {"model", gc_check_model},
};

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            only_families = argv[++i];
        } else if (strcmp(argv[i], "--small") == 0) {
            gc_small = 1;
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            gc_rng = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--attention") == 0 && i + 1 < argc &&
                   (strcmp(argv[i + 1], "both") == 0 || strcmp(argv[i + 1], "mma") == 0 ||
                    strcmp(argv[i + 1], "wgmma") == 0)) {
            attention_mode = argv[++i];
        } else {
            fprintf(stderr,
                    "usage: gpu_check [--only family,...] [--small] [--seed N] [--attention both|mma|wgmma]\n");
            return 2;
        }
    }
    gc_gpu = gc_load_backend();
    if (!gc_gpu) return 2;
    gc_cpu = tga_cpu_ops();
    printf("gpu_check: backend %s, seed %llu\n", gc_gpu->name, (unsigned long long)gc_rng);
    if (strcmp(attention_mode, "both") != 0 && !pin_attention_kernel(attention_mode)) {
        printf("gpu_check: %d checks, %d failed\n", checks, failures);
        printf("%s gpu_check\n", failures ? "FAIL" : "SKIP");
        return failures ? 1 : 0;
    }
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++)
        if (gc_selected(families[f].name)) families[f].run();
    printf("gpu_check: %d checks, %d failed\n", checks, failures);
    printf("%s gpu_check\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
