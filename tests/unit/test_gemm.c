/* tga_cpu_gemm against a naive double-precision GEMM: all four transpose combinations, odd
 * sizes around the tile and block edges, row strides wider than the rows, alpha/beta
 * combinations (beta 0 over a NaN-poisoned C), K = 0 and alpha = 0; the padding between C's
 * rows must stay untouched. Results must be bitwise identical for 1, 2 and 3 OpenMP threads and
 * for two concurrent calls from inside a parallel region.
 *
 * The SIMD level is fixed once per process, so the binary re-runs itself once per level
 * (`test_gemm --simd avx512|avx2|scalar`, which sets TGA_CPU_SIMD before the first GEMM). */
#define _POSIX_C_SOURCE 200809L /* setenv, posix_spawn */

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

#include <math.h>
#include <omp.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

#define REL_TOLERANCE 1e-5
#define PADDING_SENTINEL 1234.5f

typedef struct gemm_case {
    int trans_a, trans_b;
    int M, N, K;
    int pad; /* extra elements per row of A, B and C */
    float alpha, beta;
} gemm_case;

typedef struct gemm_buffers {
    float *A, *B, *C;
    int lda, ldb, ldc;
    size_t a_size, b_size, c_size;
} gemm_buffers;

static int simd_supported(const char *level) {
    __builtin_cpu_init();
    if (strcmp(level, "avx512") == 0) return __builtin_cpu_supports("avx512f");
    if (strcmp(level, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return strcmp(level, "scalar") == 0;
}

/* Random A and B; C random (beta != 0) or NaN (beta == 0, which must not read it); the
 * padding of every row of C holds a sentinel. */
static gemm_buffers make_buffers(const gemm_case *t, uint64_t *rng) {
    gemm_buffers g;
    int a_rows = t->trans_a ? t->K : t->M, a_cols = t->trans_a ? t->M : t->K;
    int b_rows = t->trans_b ? t->N : t->K, b_cols = t->trans_b ? t->K : t->N;
    g.lda = a_cols + t->pad;
    g.ldb = b_cols + t->pad;
    g.ldc = t->N + t->pad;
    g.a_size = (size_t)a_rows * g.lda;
    g.b_size = (size_t)b_rows * g.ldb;
    g.c_size = (size_t)t->M * g.ldc;
    g.A = tu_alloc_uniform(g.a_size, -1.0f, 1.0f, rng);
    g.B = tu_alloc_uniform(g.b_size, -1.0f, 1.0f, rng);
    g.C = tu_alloc_uniform(g.c_size, -1.0f, 1.0f, rng);
    for (int i = 0; i < t->M; i++) {
        for (int j = 0; j < g.ldc; j++) {
            if (j >= t->N) g.C[(size_t)i * g.ldc + j] = PADDING_SENTINEL;
            else if (t->beta == 0.0f) g.C[(size_t)i * g.ldc + j] = NAN;
        }
    }
    return g;
}

static void free_buffers(gemm_buffers *g) {
    free(g->A);
    free(g->B);
    free(g->C);
}

/* C_ref[M,N] (dense) = alpha op(A) op(B) + beta C0, in double, beta == 0 ignoring C0. */
static double *reference_gemm(const gemm_case *t, const gemm_buffers *g) {
    double *ref = malloc(((size_t)t->M * t->N + 1) * sizeof *ref);
    if (!ref) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int i = 0; i < t->M; i++) {
        for (int j = 0; j < t->N; j++) {
            double sum = 0;
            for (int p = 0; p < t->K; p++) {
                double a = t->trans_a ? g->A[(size_t)p * g->lda + i] : g->A[(size_t)i * g->lda + p];
                double b = t->trans_b ? g->B[(size_t)j * g->ldb + p] : g->B[(size_t)p * g->ldb + j];
                sum += a * b;
            }
            double c0 = t->beta == 0.0f ? 0.0 : (double)t->beta * g->C[(size_t)i * g->ldc + j];
            ref[(size_t)i * t->N + j] = (double)t->alpha * sum + c0;
        }
    }
    return ref;
}

static void run_gemm(const gemm_case *t, gemm_buffers *g) {
    tga_cpu_gemm(t->trans_a, t->trans_b, t->M, t->N, t->K, t->alpha, g->A, g->lda, g->B, g->ldb, t->beta, g->C,
                 g->ldc);
}

static const char *case_name(const gemm_case *t) {
    static char name[128];
    snprintf(name, sizeof name, "%c%c M=%d N=%d K=%d pad=%d alpha=%g beta=%g", t->trans_a ? 'T' : 'N',
             t->trans_b ? 'T' : 'N', t->M, t->N, t->K, t->pad, t->alpha, t->beta);
    return name;
}

/* Returns the relative error of one case against the reference. */
static double check_case(const gemm_case *t, uint64_t *rng) {
    gemm_buffers g = make_buffers(t, rng);
    double *ref = reference_gemm(t, &g);
    run_gemm(t, &g);
    double *got = malloc(((size_t)t->M * t->N + 1) * sizeof *got);
    if (!got) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    int padding_intact = 1;
    for (int i = 0; i < t->M; i++) {
        for (int j = 0; j < g.ldc; j++) {
            float v = g.C[(size_t)i * g.ldc + j];
            if (j < t->N) got[(size_t)i * t->N + j] = v;
            else padding_intact &= v == PADDING_SENTINEL;
        }
    }
    double err = tu_rel_error_d(got, ref, (size_t)t->M * t->N);
    CHECK(err < REL_TOLERANCE, "%s: relative error %.3g (limit %g)", case_name(t), err, REL_TOLERANCE);
    CHECK(padding_intact, "%s: wrote into the padding between rows of C", case_name(t));
    free(got);
    free(ref);
    free_buffers(&g);
    return err;
}

/* Around the tile sizes (14x32, 6x16, 4x8), the K block (320) and the B block (12 panels at
 * kc 320); 2100 rows take two A blocks. */
static const int shapes[][3] = {
    {1, 1, 1},      {2, 3, 4},      {7, 7, 7},       {1, 257, 100},  {257, 1, 7},     {33, 17, 9},
    {14, 32, 320},  {15, 33, 321},  {13, 31, 319},   {100, 33, 257}, {257, 100, 33},  {64, 64, 64},
    {29, 500, 300}, {130, 70, 650}, {40, 1300, 100}, {100, 7, 1000}, {2100, 33, 40},
};

static const float alpha_beta[][2] = {{1.0f, 0.0f}, {0.7f, 1.0f}, {-1.3f, 0.5f}};

static int check_all_shapes(uint64_t *rng, double *worst) {
    int cases = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        for (int trans = 0; trans < 4; trans++) {
            for (size_t ab = 0; ab < sizeof alpha_beta / sizeof alpha_beta[0]; ab++) {
                gemm_case t = {trans >> 1, trans & 1, shapes[s][0], shapes[s][1], shapes[s][2],
                               (int)((s + ab + trans) % 3) * 3, alpha_beta[ab][0], alpha_beta[ab][1]};
                double err = check_case(&t, rng);
                if (err > *worst) *worst = err;
                cases++;
            }
        }
    }
    return cases;
}

/* K = 0 and alpha = 0 leave C = beta C (beta = 0: zeros, even over NaN). */
static int check_degenerate(uint64_t *rng) {
    const gemm_case cases[] = {
        {0, 0, 17, 9, 0, 2, 1.0f, 0.0f}, {1, 1, 17, 9, 0, 0, 1.0f, 0.5f}, {0, 1, 40, 70, 30, 1, 0.0f, 0.0f},
        {1, 0, 40, 70, 30, 0, 0.0f, 0.5f}, {0, 0, 5, 6, 7, 3, 0.0f, 1.0f},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) check_case(&cases[c], rng);
    return (int)(sizeof cases / sizeof cases[0]);
}

/* The same product with 1, 2 and 3 threads, and from two threads of a parallel region at
 * once (each into its own C, each with its own packing workspace), must match bit for bit. */
static void check_thread_determinism(uint64_t *rng) {
    /* the last three have too few column panels for every thread, so the rows are split too
     * (and with one row panel, some threads get no work) */
    const int sizes[][3] = {{300, 200, 700}, {37, 1500, 90}, {600, 45, 333}, {500, 20, 300}, {14, 40, 2000}};
    const char *runs[] = {"1 thread", "2 threads", "3 threads", "caller 0 of 2 in a parallel region",
                          "caller 1 of 2 in a parallel region"};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        for (int trans = 0; trans < 4; trans++) {
            gemm_case t = {trans >> 1, trans & 1, sizes[s][0], sizes[s][1], sizes[s][2], 1, 0.9f, 0.5f};
            gemm_buffers g = make_buffers(&t, rng);
            float *results[5];
            for (int r = 0; r < 5; r++) results[r] = tu_alloc_copy(g.C, g.c_size);
            for (int threads = 1; threads <= 3; threads++) {
                omp_set_num_threads(threads);
                tga_cpu_gemm(t.trans_a, t.trans_b, t.M, t.N, t.K, t.alpha, g.A, g.lda, g.B, g.ldb, t.beta,
                             results[threads - 1], g.ldc);
            }
            omp_set_num_threads(2);
#pragma omp parallel num_threads(2)
            {
                float *c = results[3 + omp_get_thread_num()];
                tga_cpu_gemm(t.trans_a, t.trans_b, t.M, t.N, t.K, t.alpha, g.A, g.lda, g.B, g.ldb, t.beta, c, g.ldc);
            }
            for (int r = 1; r < 5; r++) {
                CHECK(memcmp(results[0], results[r], g.c_size * sizeof *g.C) == 0,
                      "%s: result with %s differs from 1 thread", case_name(&t), runs[r]);
            }
            for (int r = 0; r < 5; r++) free(results[r]);
            free_buffers(&g);
        }
    }
}

/* One SIMD level, in this process: the level must be the one requested unless the CPU lacks it. */
static int run_level(const char *level) {
    if (!simd_supported(level)) {
        printf("  %s: not supported by this CPU, skipped\n", level);
        return 0;
    }
    setenv("TGA_CPU_SIMD", level, 1);
    CHECK(strcmp(tga_cpu_simd_level(), level) == 0, "asked for SIMD level %s, got %s", level, tga_cpu_simd_level());
    CHECK(tga_cpu_has_avx512() == (strcmp(level, "avx512") == 0), "tga_cpu_has_avx512() disagrees with level %s",
          level);
    uint64_t rng = 20240607;
    double worst = 0;
    /* one thread here keeps the test quick on a busy 2-core machine; the threaded paths must
     * then match this one bit for bit */
    omp_set_num_threads(1);
    int cases = check_all_shapes(&rng, &worst);
    cases += check_degenerate(&rng);
    check_thread_determinism(&rng);
    printf("  %s: %d cases, worst relative error %.3g, %s\n", level, cases, worst,
           tu_failures ? "FAILED" : "ok");
    return tu_failures ? 1 : 0;
}

/* Re-runs this binary for one level and returns its exit status (nonzero on any failure). */
static int run_level_in_child(const char *self, const char *level) {
    char *argv[] = {(char *)self, "--simd", (char *)level, NULL};
    pid_t pid;
    fflush(stdout);
    if (posix_spawn(&pid, self, NULL, NULL, argv, environ) != 0) return -1;
    int status;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--simd") == 0) return run_level(argv[2]);
    const char *levels[] = {"avx512", "avx2", "scalar"};
    for (size_t l = 0; l < sizeof levels / sizeof levels[0]; l++) {
        int status = run_level_in_child("/proc/self/exe", levels[l]);
        CHECK(status == 0, "SIMD level %s: child run failed (status %d)", levels[l], status);
    }
    return tu_finish("test_gemm");
}
