/* GEMM throughput: tga_cpu_gemm against OpenBLAS cblas_sgemm (when linked) on the shapes of a
 * small training step, for each requested OpenMP/OpenBLAS thread count.
 *
 *   bench_gemm [--threads 1,2] [--repeats 15] [--warmup 3]
 *
 * Each cell is the median GFLOP/s over --repeats timed calls after --warmup untimed ones, with
 * the best call next to it (on a shared machine the best is the steadier estimate of what the
 * code can do, the median of what it did). The two implementations run in separate blocks, each
 * after a pause, rather than interleaved: idle worker threads of both libraries spin for a while
 * (OpenBLAS's for up to about 0.1 s) and would steal a core from the other's timed calls.
 * OPENBLAS_CORETYPE is reported, never set: the point is how OpenBLAS runs here as installed. */
#define _POSIX_C_SOURCE 200809L /* nanosleep, clock_gettime */

#include "kernels/cpu/cpu_kernels.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef TGA_HAVE_OPENBLAS
#include <cblas.h>
#endif

typedef struct bench_shape {
    const char *what;
    int trans_a, trans_b;
    int M, N, K;
    float beta;
} bench_shape;

/* 512 tokens, hidden 256, MLP 688, vocabulary 4096: forward out = in W^T (NT), input gradient
 * din = dout W (NN), weight gradient dW += dout^T in (TN, accumulating). */
static const bench_shape bench_shapes[] = {
    {"attn proj fwd", 0, 1, 512, 256, 256, 0.0f},
    {"attn proj din", 0, 0, 512, 256, 256, 0.0f},
    {"attn proj dW", 1, 0, 256, 256, 512, 1.0f},
    {"mlp up fwd", 0, 1, 512, 688, 256, 0.0f},
    {"mlp up din", 0, 0, 512, 256, 688, 0.0f},
    {"mlp up dW", 1, 0, 688, 256, 512, 1.0f},
    {"mlp down fwd", 0, 1, 512, 256, 688, 0.0f},
    {"mlp down din", 0, 0, 512, 688, 256, 0.0f},
    {"mlp down dW", 1, 0, 256, 688, 512, 1.0f},
    {"lm head fwd", 0, 1, 512, 4096, 256, 0.0f},
    {"lm head din", 0, 0, 512, 256, 4096, 0.0f},
    {"lm head dW", 1, 0, 4096, 256, 512, 1.0f},
    {"square", 0, 0, 1024, 1024, 1024, 0.0f},
    {"square", 0, 1, 1024, 1024, 1024, 0.0f},
    {"square", 1, 0, 1024, 1024, 1024, 0.0f},
    {"square", 1, 1, 1024, 1024, 1024, 0.0f},
};

typedef struct bench_operands {
    const bench_shape *shape;
    float *A, *B, *C;
    int lda, ldb, ldc;
} bench_operands;

typedef void (*gemm_runner)(const bench_operands *ops);

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *alloc_random(size_t n, uint64_t *state) {
    float *x = tga_cpu_alloc(n * sizeof *x);
    if (!x) {
        fprintf(stderr, "bench_gemm: out of memory allocating %zu floats\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(*state >> 40) / (double)(1ull << 24)) - 0.5f;
    }
    return x;
}

static void run_ours(const bench_operands *op) {
    const bench_shape *s = op->shape;
    tga_cpu_gemm(s->trans_a, s->trans_b, s->M, s->N, s->K, 1.0f, op->A, op->lda, op->B, op->ldb, s->beta, op->C,
                 op->ldc);
}

#ifdef TGA_HAVE_OPENBLAS
static void run_openblas(const bench_operands *op) {
    const bench_shape *s = op->shape;
    cblas_sgemm(CblasRowMajor, s->trans_a ? CblasTrans : CblasNoTrans, s->trans_b ? CblasTrans : CblasNoTrans,
                s->M, s->N, s->K, 1.0f, op->A, op->lda, op->B, op->ldb, s->beta, op->C, op->ldc);
}
#endif

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct bench_rate {
    double median, best; /* GFLOP/s */
} bench_rate;

static bench_rate measure_gflops(gemm_runner run, const bench_operands *op, int warmup, int repeats) {
    const struct timespec settle = {.tv_sec = 0, .tv_nsec = 200000000};
    nanosleep(&settle, NULL);
    const bench_shape *s = op->shape;
    double flops = 2.0 * s->M * s->N * s->K;
    double *rates = malloc((size_t)repeats * sizeof *rates);
    if (!rates) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        exit(1);
    }
    for (int r = 0; r < warmup; r++) run(op);
    for (int r = 0; r < repeats; r++) {
        double t0 = now_seconds();
        run(op);
        rates[r] = flops / (now_seconds() - t0) * 1e-9;
    }
    qsort(rates, (size_t)repeats, sizeof *rates, compare_doubles);
    bench_rate rate = {rates[repeats / 2], rates[repeats - 1]};
    free(rates);
    return rate;
}

/* ||x - y|| / ||y||, a sanity check that both libraries computed the same product. */
static double relative_difference(const float *x, const float *y, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)y[i];
        num += d * d;
        den += (double)y[i] * y[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void bench_one(const bench_shape *s, int threads, int warmup, int repeats, uint64_t *seed) {
    int a_rows = s->trans_a ? s->K : s->M, a_cols = s->trans_a ? s->M : s->K;
    int b_rows = s->trans_b ? s->N : s->K, b_cols = s->trans_b ? s->K : s->N;
    bench_operands op = {.shape = s, .lda = a_cols, .ldb = b_cols, .ldc = s->N};
    op.A = alloc_random((size_t)a_rows * a_cols, seed);
    op.B = alloc_random((size_t)b_rows * b_cols, seed);
    op.C = alloc_random((size_t)s->M * s->N, seed);
    omp_set_num_threads(threads);
    bench_rate ours = measure_gflops(run_ours, &op, warmup, repeats);
    printf("%-14s %c%c %5d %5d %5d %4d %7.1f %6.1f", s->what, s->trans_a ? 'T' : 'N', s->trans_b ? 'T' : 'N', s->M,
           s->N, s->K, threads, ours.median, ours.best);
#ifdef TGA_HAVE_OPENBLAS
    openblas_set_num_threads(threads);
    bench_rate theirs = measure_gflops(run_openblas, &op, warmup, repeats);
    size_t c_count = (size_t)s->M * s->N;
    float *c_ours = tga_cpu_alloc(c_count * sizeof *c_ours);
    if (!c_ours) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        exit(1);
    }
    memset(op.C, 0, c_count * sizeof *op.C);
    run_ours(&op);
    memcpy(c_ours, op.C, c_count * sizeof *c_ours);
    memset(op.C, 0, c_count * sizeof *op.C);
    run_openblas(&op);
    printf(" %7.1f %6.1f %6.2f %6.2f %8.1e", theirs.median, theirs.best, ours.median / theirs.median,
           ours.best / theirs.best, relative_difference(c_ours, op.C, c_count));
    tga_cpu_free(c_ours);
#endif
    printf("\n");
    fflush(stdout);
    tga_cpu_free(op.A);
    tga_cpu_free(op.B);
    tga_cpu_free(op.C);
}

static int parse_positive(const char *text, const char *flag) {
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || v <= 0 || v > 1024 || (*end != '\0' && *end != ',')) {
        fprintf(stderr, "bench_gemm: %s expects positive integers, got '%s'\n", flag, text);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv) {
    int thread_counts[8] = {1, 2}, n_thread_counts = 2;
    int repeats = 15, warmup = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            n_thread_counts = 0;
            for (const char *p = argv[++i]; p && n_thread_counts < 8; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
                thread_counts[n_thread_counts++] = parse_positive(p, "--threads");
        } else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
            repeats = parse_positive(argv[++i], "--repeats");
        } else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) {
            warmup = parse_positive(argv[++i], "--warmup");
        } else {
            fprintf(stderr, "usage: bench_gemm [--threads 1,2] [--repeats 15] [--warmup 3]\n");
            return 2;
        }
    }
    const char *coretype = getenv("OPENBLAS_CORETYPE");
    printf("OPENBLAS_CORETYPE: %s\n", coretype ? coretype : "unset");
#ifdef TGA_HAVE_OPENBLAS
    printf("openblas_get_config: %s\n", openblas_get_config());
    printf("openblas_get_corename: %s\n", openblas_get_corename());
#else
    printf("openblas: not linked (built without TGA_HAVE_OPENBLAS)\n");
#endif
    printf("tga SIMD level: %s\n", tga_cpu_simd_level());
    printf("OMP max threads (default): %d; timing with threads:", omp_get_max_threads());
    for (int t = 0; t < n_thread_counts; t++) printf(" %d", thread_counts[t]);
    printf("\nGFLOP/s: median and best of %d calls after %d warm-up calls; ratio = tga / OpenBLAS\n\n", repeats,
           warmup);
    printf("%-14s %-2s %5s %5s %5s %4s %7s %6s", "shape", "op", "M", "N", "K", "thr", "tga", "best");
#ifdef TGA_HAVE_OPENBLAS
    printf(" %7s %6s %6s %6s %8s", "openbl.", "best", "ratio", "r.best", "rel.diff");
#endif
    printf("\n");
    uint64_t seed = 12345;
    for (int t = 0; t < n_thread_counts; t++) {
        for (size_t s = 0; s < sizeof bench_shapes / sizeof bench_shapes[0]; s++)
            bench_one(&bench_shapes[s], thread_counts[t], warmup, repeats, &seed);
    }
    return 0;
}
