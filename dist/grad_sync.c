#include "dist/grad_sync.h"

#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"

struct tga_grad_sync {
    size_t n;
    int local, depth;
    tga_sync_mode mode;
    float **level;   /* [depth] one buffer per tree level below the rank's root */
    float *gathered; /* [world * n] (ordered mode, world > 1) */
};

static int tree_depth(int leaves) {
    int d = 0;
    while ((1 << d) < leaves) d++;
    return d;
}

tga_status tga_grad_sync_create(tga_grad_sync **out, size_t n, int local, tga_sync_mode mode) {
    *out = NULL;
    if (local < 1) return tga_error(TGA_ERR_INTERNAL, "gradient sync: %d local micro-batches", local);
    tga_grad_sync *s = calloc(1, sizeof *s);
    if (!s) return tga_error(TGA_ERR_NOMEM, "gradient sync: out of memory");
    s->n = n;
    s->local = local;
    s->mode = mode;
    s->depth = tree_depth(local);
    s->level = calloc((size_t)s->depth + 1, sizeof *s->level);
    int ok = s->level != NULL;
    for (int d = 0; ok && d < s->depth; d++) ok = (s->level[d] = malloc(sizeof(float) * (n ? n : 1))) != NULL;
    if (ok && mode == TGA_SYNC_ORDERED && tga_dist_world() > 1)
        ok = (s->gathered = malloc(sizeof(float) * n * (size_t)tga_dist_world())) != NULL;
    if (!ok) {
        tga_grad_sync_free(s);
        return tga_error(TGA_ERR_NOMEM, "gradient sync: out of memory for %d tree levels of %zu floats", s->depth, n);
    }
    *out = s;
    return TGA_OK;
}

void tga_grad_sync_free(tga_grad_sync *s) {
    if (!s) return;
    for (int d = 0; s->level && d < s->depth; d++) free(s->level[d]);
    free(s->level);
    free(s->gathered);
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

tga_status tga_grad_sync_step(tga_grad_sync *s, tga_leaf_fn leaf, void *ctx, float *out) {
    TGA_TRY(subtree_sum(s, 0, s->local, 0, leaf, ctx, out));
    int world = tga_dist_world();
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
