#include "dist/grad_sync.h"

#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"

struct tga_grad_sync {
    size_t n;
    int local, depth, sharded;
    tga_sync_mode mode;
    float **level;   /* [depth] one buffer per tree level below the rank's root */
    float *gathered; /* ordered, world > 1: [world * n]; sharded: [world * piece] */
    float *send;     /* sharded: [world * piece] */
    size_t per;      /* sharded: shard size (the last shards may be shorter) */
    size_t piece;    /* sharded: floats per block per exchange (bounds the buffers) */
};

void tga_zero_shard(size_t n, int world, int rank, size_t *lo, size_t *hi) {
    size_t w = world > 1 ? (size_t)world : 1;
    size_t per = ((n + w - 1) / w + 15) / 16 * 16;
    *lo = (size_t)rank * per < n ? (size_t)rank * per : n;
    *hi = *lo + per < n ? *lo + per : n;
}

static int tree_depth(int leaves) {
    int d = 0;
    while ((1 << d) < leaves) d++;
    return d;
}

tga_status tga_grad_sync_create(tga_grad_sync **out, size_t n, int local, tga_sync_mode mode, int sharded) {
    *out = NULL;
    if (local < 1) return tga_error(TGA_ERR_INTERNAL, "gradient sync: %d local micro-batches", local);
    tga_grad_sync *s = calloc(1, sizeof *s);
    if (!s) return tga_error(TGA_ERR_NOMEM, "gradient sync: out of memory");
    s->n = n;
    s->local = local;
    s->mode = mode;
    s->depth = tree_depth(local);
    s->sharded = sharded && tga_dist_world() > 1;
    s->level = calloc((size_t)s->depth + 1, sizeof *s->level);
    int ok = s->level != NULL;
    for (int d = 0; ok && d < s->depth; d++) ok = (s->level[d] = malloc(sizeof(float) * (n ? n : 1))) != NULL;
    size_t world = (size_t)tga_dist_world();
    if (s->sharded) {
        size_t lo, hi;
        tga_zero_shard(n, (int)world, 0, &lo, &hi);
        s->per = hi - lo;
        /* at most 256 MiB per exchange buffer; TGA_SYNC_PIECE_FLOATS lowers it (tests use it to
         * exercise the exchange in several pieces) */
        size_t cap = ((size_t)1 << 26) / world;
        const char *env = getenv("TGA_SYNC_PIECE_FLOATS");
        if (env && atol(env) > 0 && (size_t)atol(env) < cap) cap = (size_t)atol(env);
        s->piece = s->per < cap ? s->per : cap;
        if (s->piece == 0) s->piece = 1;
        ok = ok && (s->send = malloc(sizeof(float) * world * s->piece)) != NULL &&
             (s->gathered = malloc(sizeof(float) * world * s->piece)) != NULL;
    } else if (ok && mode == TGA_SYNC_ORDERED && world > 1) {
        ok = (s->gathered = malloc(sizeof(float) * n * world)) != NULL;
    }
    if (!ok) {
        int depth = s->depth;
        tga_grad_sync_free(s);
        return tga_error(TGA_ERR_NOMEM, "gradient sync: out of memory for %d tree levels of %zu floats", depth, n);
    }
    *out = s;
    return TGA_OK;
}

void tga_grad_sync_free(tga_grad_sync *s) {
    if (!s) return;
    for (int d = 0; s->level && d < s->depth; d++) free(s->level[d]);
    free(s->level);
    free(s->gathered);
    free(s->send);
    free(s);
}

static void add_into(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

/* Sum of leaves [lo, hi) into dst, the left subtree first; level d holds right subtrees. */
static tga_status subtree_sum(tga_grad_sync *s, int lo, int hi, int d, tga_leaf_fn leaf, void *ctx, float *dst) {
    if (hi - lo == 1) {
        const float *g;
        TGA_TRY(leaf(ctx, lo, &g));
        memcpy(dst, g, sizeof(float) * s->n);
        return TGA_OK;
    }
    int mid = lo + (hi - lo) / 2;
    TGA_TRY(subtree_sum(s, lo, mid, d + 1, leaf, ctx, dst));
    TGA_TRY(subtree_sum(s, mid, hi, d + 1, leaf, ctx, s->level[d]));
    add_into(dst, s->level[d], s->n);
    return TGA_OK;
}

/* The top of the tree over rank blocks, in place: block lo ends up holding the sum of [lo, hi). */
static void ranks_sum(float *blocks, size_t n, int lo, int hi) {
    if (hi - lo == 1) return;
    int mid = lo + (hi - lo) / 2;
    ranks_sum(blocks, n, lo, mid);
    ranks_sum(blocks, n, mid, hi);
    add_into(blocks + (size_t)lo * n, blocks + (size_t)mid * n, n);
}

/* Elements [lo + off, lo + off + k) of every rank's shard, as blocks of `piece` floats (zero
 * beyond a shard's end), for the exchange: block r of send = shard r's elements of `sum`. */
static void pack_pieces(const tga_grad_sync *s, const float *sum, size_t off, size_t k) {
    int world = tga_dist_world();
    for (int r = 0; r < world; r++) {
        size_t lo, hi;
        tga_zero_shard(s->n, world, r, &lo, &hi);
        size_t have = lo + off < hi ? hi - (lo + off) : 0, take = have < k ? have : k;
        float *block = s->send + (size_t)r * s->piece;
        if (take) memcpy(block, sum + lo + off, take * sizeof(float));
        memset(block + take, 0, (s->piece - take) * sizeof(float));
    }
}

/* This rank's shard of the global sum, piece by piece: ordered = all-to-all of the subtree sums,
 * then the top of the tree in place; allreduce = MPI_Reduce_scatter. */
static tga_status sharded_sum(tga_grad_sync *s, const float *sum, float *shard) {
    int world = tga_dist_world();
    size_t lo, hi;
    tga_zero_shard(s->n, world, tga_dist_rank(), &lo, &hi);
    for (size_t off = 0; off < s->per; off += s->piece) {
        size_t k = s->per - off < s->piece ? s->per - off : s->piece;
        pack_pieces(s, sum, off, k);
        if (s->mode == TGA_SYNC_ORDERED) {
            TGA_TRY(tga_dist_alltoall(s->send, s->gathered, s->piece * sizeof(float), "gradient shard exchange"));
            ranks_sum(s->gathered, s->piece, 0, world);
        } else {
            TGA_TRY(tga_dist_reduce_scatter_f32(s->send, s->gathered, s->piece, "gradient reduce-scatter"));
        }
        size_t mine = lo + off < hi ? hi - (lo + off) : 0;
        if (mine) memcpy(shard + off, s->gathered, (mine < k ? mine : k) * sizeof(float));
    }
    return TGA_OK;
}

tga_status tga_grad_sync_step(tga_grad_sync *s, tga_leaf_fn leaf, void *ctx, float *out, float *shard) {
    TGA_TRY(subtree_sum(s, 0, s->local, 0, leaf, ctx, out));
    int world = tga_dist_world();
    if (s->sharded) return sharded_sum(s, out, shard);
    if (world == 1) return TGA_OK;
    if (s->mode == TGA_SYNC_ALLREDUCE) return tga_dist_allreduce_f32(out, s->n, "gradient all-reduce");
    for (size_t off = 0; off < s->n;) { /* gather in pieces of at most 1 GiB per rank */
        size_t k = s->n - off < ((size_t)1 << 28) ? s->n - off : ((size_t)1 << 28);
        float *chunk = s->gathered; /* [world, k] */
        TGA_TRY(tga_dist_allgather(out + off, chunk, k * sizeof(float), "gradient gather"));
        ranks_sum(chunk, k, 0, world);
        memcpy(out + off, chunk, k * sizeof(float));
        off += k;
    }
    return TGA_OK;
}
