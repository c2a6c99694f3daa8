/* Retrieval throughput: exact top-k by cosine (tga_retrieve_shard_topk: normalisation, blocked GEMM,
 * topk_merge) of N random queries against an in-memory random corpus, one shard, no exclusion,
 * for each requested thread count; against the GEMM peak measured in the same run.
 *
 *   bench_retrieve [--threads 1,2] [--queries 2048] [--corpus 200000] [--dim 256] [--k 5] [--repeats 3]
 *
 * Reported per thread count (best and median after one warm-up run; --repeats runs of the
 * retrieval, 5x as many of the peak GEMM and 20x as many of the block GEMM, which are shorter):
 *   peak       tga_cpu_gemm GFLOP/s on a 2048^3 product (A B^T, the retrieval's layout)
 *   block      tga_cpu_gemm GFLOP/s on one retrieval score block (TGA_RETRIEVE_QUERY_BLOCK x
 *              TGA_RETRIEVE_CORPUS_BLOCK x dim), no selection
 *   retrieve   queries/s and effective GFLOP/s (2 N M dim / time), and effective / peak
 * Each rate also by process CPU time ([cpu], the least of the runs): on a shared machine other
 * processes stretch the wall time but hardly the CPU time, so the [cpu] fraction of peak is the
 * steadier number (at 2 threads it also counts OpenMP's spin-waiting). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/cpu_kernels.h"
#include "runtime/rng.h"
#include "trainer/retrieve.h"

typedef struct bench_config {
    int threads[8], n_threads;
    int queries, corpus, dim, k, repeats;
} bench_config;

typedef struct timing {
    double best, median; /* wall seconds */
    double cpu_best;     /* least process CPU time (user + sys, all threads) of one run */
} timing;

static double seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *checked_malloc(size_t bytes) {
    void *p = malloc(bytes);
    if (!p) {
        fprintf(stderr, "bench_retrieve: out of memory for %zu bytes\n", bytes);
        exit(1);
    }
    return p;
}

static float *random_matrix(size_t n, uint64_t index) {
    float *x = checked_malloc(n * sizeof *x);
    tga_rng_stream s = tga_rng_stream_make(2025, TGA_RNG_TEST, index);
    tga_rng_fill_normal(&s, x, n, 0.0f, 1.0f);
    return x;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef void (*bench_fn)(void *ctx);

static timing time_runs(bench_fn run, void *ctx, int repeats) {
    double *wall = checked_malloc(sizeof(double) * (size_t)repeats), cpu_best = 0.0;
    run(ctx); /* warm-up: page faults, thread start-up */
    for (int r = 0; r < repeats; r++) {
        double wall0 = seconds(CLOCK_MONOTONIC), cpu0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
        run(ctx);
        double cpu = seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
        wall[r] = seconds(CLOCK_MONOTONIC) - wall0;
        if (r == 0 || cpu < cpu_best) cpu_best = cpu;
    }
    qsort(wall, (size_t)repeats, sizeof *wall, compare_doubles);
    timing result = {wall[0], wall[repeats / 2], cpu_best};
    free(wall);
    return result;
}

/* ---- GEMM ---- */

typedef struct gemm_case {
    int M, N, K;
    float *A, *B, *C;
} gemm_case;

static void run_gemm(void *ctx) {
    gemm_case *g = ctx;
    tga_cpu_gemm(0, 1, g->M, g->N, g->K, 1.0f, g->A, g->K, g->B, g->K, 0.0f, g->C, g->N);
}

static timing time_gemm(int M, int N, int K, int repeats) {
    gemm_case g = {M,
                   N,
                   K,
                   random_matrix((size_t)M * K, 1),
                   random_matrix((size_t)N * K, 2),
                   checked_malloc(sizeof(float) * (size_t)M * N)};
    timing t = time_runs(run_gemm, &g, repeats);
    free(g.A);
    free(g.B);
    free(g.C);
    return t;
}

/* ---- retrieval ---- */

typedef struct retrieve_case {
    const bench_config *cfg;
    float *queries, *corpus, *score;
    int32_t *index;
} retrieve_case;

static tga_status read_memory_rows(void *ctx, int64_t first_row, int64_t n_rows, float *out) {
    const retrieve_case *c = ctx;
    memcpy(out, c->corpus + first_row * c->cfg->dim, sizeof(float) * (size_t)(n_rows * c->cfg->dim));
    return TGA_OK;
}

static void run_retrieve(void *ctx) {
    retrieve_case *c = ctx;
    const bench_config *cfg = c->cfg;
    tga_retrieve_shard shard = {.corpus_rows = cfg->corpus,
                                .first_row = 0,
                                .n_rows = cfg->corpus,
                                .read = read_memory_rows,
                                .read_ctx = c,
                                .text_id = NULL};
    if (tga_retrieve_shard_topk(c->queries, NULL, cfg->queries, cfg->dim, &shard, cfg->k, c->score,
                                c->index) != TGA_OK) {
        fprintf(stderr, "bench_retrieve: %s\n", tga_error_message());
        exit(1);
    }
}

static int parse_positive(const char *text, const char *flag) {
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || v <= 0 || v > 100000000 || (*end != '\0' && *end != ',')) {
        fprintf(stderr, "bench_retrieve: %s expects positive integers, got '%s'\n", flag, text);
        exit(2);
    }
    return (int)v;
}

static bench_config parse_args(int argc, char **argv) {
    bench_config cfg = {{1, 2}, 2, 2048, 200000, 256, 5, 3};
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (i + 1 >= argc) flag = "";
        if (strcmp(flag, "--threads") == 0) {
            cfg.n_threads = 0;
            for (const char *p = argv[++i]; p && cfg.n_threads < 8;
                 p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
                cfg.threads[cfg.n_threads++] = parse_positive(p, "--threads");
        } else if (strcmp(flag, "--queries") == 0) {
            cfg.queries = parse_positive(argv[++i], flag);
        } else if (strcmp(flag, "--corpus") == 0) {
            cfg.corpus = parse_positive(argv[++i], flag);
        } else if (strcmp(flag, "--dim") == 0) {
            cfg.dim = parse_positive(argv[++i], flag);
        } else if (strcmp(flag, "--k") == 0) {
            cfg.k = parse_positive(argv[++i], flag);
        } else if (strcmp(flag, "--repeats") == 0) {
            cfg.repeats = parse_positive(argv[++i], flag);
        } else {
            fprintf(stderr,
                    "usage: bench_retrieve [--threads 1,2] [--queries 2048] [--corpus 200000] [--dim 256] "
                    "[--k 5] [--repeats 3]\n");
            exit(2);
        }
    }
    return cfg;
}

int main(int argc, char **argv) {
    bench_config cfg = parse_args(argc, argv);
    retrieve_case c = {&cfg, random_matrix((size_t)cfg.queries * cfg.dim, 3),
                       random_matrix((size_t)cfg.corpus * cfg.dim, 4),
                       checked_malloc(sizeof(float) * (size_t)cfg.queries * cfg.k),
                       checked_malloc(sizeof(int32_t) * (size_t)cfg.queries * cfg.k)};
    tga_retrieve_normalize_rows(c.queries, cfg.queries, cfg.dim);
    double flops = 2.0 * cfg.queries * (double)cfg.corpus * cfg.dim;
    printf("tga SIMD level: %s; N = %d queries, M = %d corpus rows, dim = %d, k = %d\n", tga_cpu_simd_level(),
           cfg.queries, cfg.corpus, cfg.dim, cfg.k);
    printf("wall-clock best (median) after 1 warm-up: %d retrieval runs, %d peak and %d block GEMMs;\n"
           "cpu: by process CPU time (least of the runs), which a busy shared machine disturbs less\n\n",
           cfg.repeats, cfg.repeats * 5, cfg.repeats * 20);
    printf("%4s %22s %16s %18s %22s %8s %8s\n", "thr", "peak GFLOP/s [cpu]", "block GFLOP/s",
           "retrieve queries/s", "retr. GFLOP/s [cpu]", "of peak", "[cpu]");
    const double peak_flops = 2.0 * 2048 * 2048 * 2048,
                 block_flops = 2.0 * TGA_RETRIEVE_QUERY_BLOCK * TGA_RETRIEVE_CORPUS_BLOCK * cfg.dim;
    for (int t = 0; t < cfg.n_threads; t++) {
        omp_set_num_threads(cfg.threads[t]);
        timing peak = time_gemm(2048, 2048, 2048, cfg.repeats * 5);
        timing block =
            time_gemm(TGA_RETRIEVE_QUERY_BLOCK, TGA_RETRIEVE_CORPUS_BLOCK, cfg.dim, cfg.repeats * 20);
        timing retr = time_runs(run_retrieve, &c, cfg.repeats);
        printf(
            "%4d %6.1f (%5.1f) [%5.1f] %7.1f (%6.1f) %8.0f (%7.0f) %6.1f (%5.1f) [%5.1f] %7.1f%% %7.1f%%\n",
            cfg.threads[t], peak_flops / peak.best * 1e-9, peak_flops / peak.median * 1e-9,
            peak_flops / peak.cpu_best * 1e-9, block_flops / block.best * 1e-9,
            block_flops / block.median * 1e-9, cfg.queries / retr.best, cfg.queries / retr.median,
            flops / retr.best * 1e-9, flops / retr.median * 1e-9, flops / retr.cpu_best * 1e-9,
            100.0 * peak.best / retr.best * flops / peak_flops,
            100.0 * peak.cpu_best / retr.cpu_best * flops / peak_flops);
        fflush(stdout);
    }
    free(c.queries);
    free(c.corpus);
    free(c.score);
    free(c.index);
    return 0;
}
