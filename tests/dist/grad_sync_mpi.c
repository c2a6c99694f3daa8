/* Ordered gradient sync under mpirun: prints an FNV-1a digest of the summed gradient of J
 * micro-batches. Run with 1, 2 and 4 ranks (same J): the digests must be equal. Also prints the
 * digests of the all-reduce path (required to agree only to rounding) and of a naive order (each
 * rank sums its micro-batches in sequence), which the test uses to show that the values expose
 * a change of order. The sharded (ZeRO-1) variants are checked here: the shards, put together,
 * must be the unsharded ordered sum bit for bit, and the reduce-scatter within 1e-6 of the
 * all-reduce (TGA_SYNC_PIECE_FLOATS makes the exchange go in several pieces).
 *   grad_sync_mpi J N */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"
#include "dist/grad_sync.h"
#include "runtime/rng.h"

typedef struct leaf_ctx {
    int first; /* global index of the rank's first micro-batch */
    size_t n;
    float *buf;
} leaf_ctx;

/* Values spanning several magnitudes, so a different summation order changes the bits. */
static tga_status leaf(void *p, int index, const float **grad) {
    leaf_ctx *c = p;
    tga_rng_stream s = tga_rng_stream_make(99, TGA_RNG_TEST, (uint64_t)(c->first + index));
    for (size_t i = 0; i < c->n; i++) {
        float u = tga_rng_uniform(&s, i);
        c->buf[i] = tga_rng_normal(&s, i + c->n) * (u < 0.3f ? 1e4f : u < 0.6f ? 1.0f : 1e-4f);
    }
    *grad = c->buf;
    return TGA_OK;
}

static uint64_t digest(const float *x, size_t n) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = (const unsigned char *)x;
    for (size_t i = 0; i < n * sizeof(float); i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Each mode sharded: rank r's shard against [lo, hi) of the unsharded result (on every rank). */
static int check_sharded(leaf_ctx *ctx, size_t n, int a, float *const full[2]) {
    const tga_sync_mode modes[2] = {TGA_SYNC_ORDERED, TGA_SYNC_ALLREDUCE};
    int world = tga_dist_world(), rank = tga_dist_rank();
    size_t lo, hi;
    tga_zero_shard(n, world, rank, &lo, &hi);
    float *work = malloc(sizeof(float) * n), *shard = malloc(sizeof(float) * (hi - lo + 1));
    for (int m = 0; m < 2; m++) {
        tga_grad_sync *s;
        if (tga_grad_sync_create(&s, n, a, modes[m], 1) != TGA_OK || tga_grad_sync_step(s, leaf, ctx, work, shard) != TGA_OK) {
            fprintf(stderr, "rank %d: %s\n", rank, tga_error_message());
            return 1;
        }
        tga_grad_sync_free(s);
        /* errors of a different summation order scale with the summands, not with a cancelled sum */
        double worst = 0, scale = 1e-30;
        for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(full[1][i]));
        for (size_t i = lo; i < hi; i++) {
            double ref = full[m == 0 ? 0 : 1][i], err = fabs(shard[i - lo] - ref) / scale;
            if (m == 0 && memcmp(&shard[i - lo], &full[0][i], sizeof(float)) != 0) {
                fprintf(stderr, "FAIL: rank %d: sharded ordered sum differs at %zu: %.9g vs %.9g\n", rank, i,
                        shard[i - lo], full[0][i]);
                return 1;
            }
            worst = err > worst ? err : worst;
        }
        if (worst > 1e-6) {
            fprintf(stderr, "FAIL: rank %d: reduce-scatter differs from the all-reduce by %.3g of the largest value\n", rank, worst);
            return 1;
        }
    }
    if (rank == 0) printf("sharded: the shards of [0, %zu) put together equal the unsharded tree sum bit for bit; reduce-scatter within 1e-6\n", n);
    free(work);
    free(shard);
    return 0;
}

int main(int argc, char **argv) {
    if (tga_dist_init(&argc, &argv) != TGA_OK || argc < 3) return 2;
    int J = atoi(argv[1]), world = tga_dist_world(), rank = tga_dist_rank();
    size_t n = (size_t)atol(argv[2]);
    if (J % world != 0) {
        fprintf(stderr, "J=%d is not a multiple of the world size %d\n", J, world);
        return 2;
    }
    int a = J / world;
    leaf_ctx ctx = {rank * a, n, malloc(sizeof(float) * n)};
    float *out = malloc(sizeof(float) * n);
    tga_grad_sync *s;
    const tga_sync_mode modes[2] = {TGA_SYNC_ORDERED, TGA_SYNC_ALLREDUCE};
    uint64_t d[2];
    float *full[2] = {malloc(sizeof(float) * n), malloc(sizeof(float) * n)};
    for (int m = 0; m < 2; m++) {
        if (tga_grad_sync_create(&s, n, a, modes[m], 0) != TGA_OK || tga_grad_sync_step(s, leaf, &ctx, out, NULL) != TGA_OK) {
            fprintf(stderr, "rank %d: %s\n", rank, tga_error_message());
            return 1;
        }
        d[m] = digest(out, n);
        memcpy(full[m], out, sizeof(float) * n);
        tga_grad_sync_free(s);
    }
    if (world > 1 && check_sharded(&ctx, n, a, full) != 0) return 1;
    free(full[0]);
    free(full[1]);
    /* the naive order: each rank adds its leaves one after another, then ranks in rank order */
    memset(out, 0, sizeof(float) * n);
    for (int i = 0; i < a; i++) {
        const float *g;
        leaf(&ctx, i, &g);
        for (size_t k = 0; k < n; k++) out[k] += g[k];
    }
    float *all_sums = malloc(sizeof(float) * n * (size_t)world);
    tga_dist_allgather(out, all_sums, sizeof(float) * n, "naive sum");
    for (size_t k = 0; k < n; k++) {
        float t = all_sums[k];
        for (int r = 1; r < world; r++) t += all_sums[(size_t)r * n + k];
        out[k] = t;
    }
    uint64_t naive = digest(out, n);
    free(all_sums);
    /* every rank must hold the same result */
    uint64_t all[64];
    tga_dist_allgather(&d[0], all, sizeof d[0], "digest check");
    for (int r = 1; r < world; r++)
        if (all[r] != all[0]) {
            fprintf(stderr, "rank %d disagrees with rank 0\n", r);
            return 1;
        }
    if (rank == 0)
        printf("ordered %016llx allreduce %016llx naive %016llx\n", (unsigned long long)d[0], (unsigned long long)d[1],
               (unsigned long long)naive);
    free(out);
    free(ctx.buf);
    tga_dist_finalize();
    return 0;
}
