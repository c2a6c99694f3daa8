/* Gradient synchronisation for one optimizer step.
 *
 * ordered (default on the CPU backend): bitwise reproducible across world sizes. The step's
 * J = grad_accum x world micro-batch gradients are summed along one fixed binary tree over the
 * global micro-batch index (split [lo, hi) at lo + (hi - lo) / 2). Rank r owns the contiguous
 * leaves [r*a, (r+1)*a); when the world size is a power of two these blocks are subtrees of the
 * same tree, so 1, 2, 4, ... ranks add the same numbers in the same order and get the same bits.
 * Each rank sums its subtree locally (keeping one buffer per tree level), the subtree sums are
 * gathered, and the top of the tree is summed on every rank.
 *
 * allreduce: the local sum, then MPI_Allreduce (fast; the order of additions is MPI's, so
 * results agree across world sizes only to rounding, ~1e-7 relative).
 *
 * Sharded (ZeRO-1): each rank receives only its shard of the sum (tga_zero_shard). Ordered mode
 * exchanges the shards' subtree sums (all-to-all) and sums the top of the tree per shard, so every
 * element gets exactly the additions of the unsharded ordered sync (the same bits); allreduce mode
 * uses MPI_Reduce_scatter. Both move 1/world of what an all-gather or all-reduce of the vector does. */
#ifndef TGA_DIST_GRAD_SYNC_H
#define TGA_DIST_GRAD_SYNC_H

#include <stddef.h>

#include "runtime/error.h"

typedef enum { TGA_SYNC_ORDERED = 0, TGA_SYNC_ALLREDUCE = 1 } tga_sync_mode;

/* Computes micro-batch `index` (0 <= index < local count, in order) and returns its gradient
 * (n floats; the buffer may be reused by the next call). */
typedef tga_status (*tga_leaf_fn)(void *ctx, int index, const float **grad);

typedef struct tga_grad_sync tga_grad_sync;

/* The ZeRO-1 shard of rank `rank` among `world` over a flat vector of n floats: [*lo, *hi),
 * contiguous, in rank order, each ceil(n / world) rounded up to 16 floats (so the last ones may be
 * short or empty). */
void tga_zero_shard(size_t n, int world, int rank, size_t *lo, size_t *hi);

tga_status tga_grad_sync_create(tga_grad_sync **out, size_t n, int local_micro_batches, tga_sync_mode mode,
                                int sharded);
void tga_grad_sync_free(tga_grad_sync *s);

/* Runs the rank's micro-batches through `leaf` and leaves the global sum in out[n] on every rank.
 * Sharded: out[n] ends as scratch, and the rank's shard of the sum is in shard[hi - lo]. */
tga_status tga_grad_sync_step(tga_grad_sync *s, tga_leaf_fn leaf, void *ctx, float *out, float *shard);

#endif
