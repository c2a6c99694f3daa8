/* Bucketed gradient all-reduce that overlaps the backward pass (train.grad_sync: bucketed).
 *
 * The model reports each group of gradients the moment it is final (tga_model_set_grad_ready:
 * the head, then decoder layers from the last to the first, ...). Adjacent groups are merged into
 * a bucket of at least `bucket_floats`; a full bucket is handed to the communication side at once
 * while the backward pass goes on with the next layers:
 *   - host memory (CPU backend): a communication thread runs MPI_Allreduce on the bucket in place;
 *   - device memory (CUDA backend with NCCL): the all-reduce is enqueued on the collectives'
 *     stream behind an event of the compute stream (kernels/collectives.h).
 * finish() sends the last bucket and waits for all of them. Buckets start in the same order on
 * every rank (the backward order is the same), which collectives require.
 *
 * Results: an all-reduce per bucket, so the sums agree with `allreduce` mode but not bitwise
 * across world sizes (~1e-7 relative; see dist/grad_sync.h for the ordered mode that is). */
#ifndef TGA_DIST_BUCKET_SYNC_H
#define TGA_DIST_BUCKET_SYNC_H

#include <stddef.h>

#include "runtime/error.h"

typedef struct tga_bucket_sync tga_bucket_sync;

/* grads[n]: the flat gradient buffer (host memory, or device memory when `device` is 1 and the
 * backend has collectives). sharded (ZeRO-1): instead of an all-reduce, each bucket's part in rank
 * q's shard (tga_zero_shard over n) is reduced to rank q alone, so a rank ends with the sums of its
 * own shard only (the rest of its buffer holds partial sums). */
tga_status tga_bucket_sync_create(tga_bucket_sync **out, float *grads, size_t n, size_t bucket_floats, int device,
                                  int sharded);
void tga_bucket_sync_free(tga_bucket_sync *s);

/* [lo, hi) of grads is final for this step (called from the model's backward; never blocks on
 * communication). Errors are kept for finish(). */
void tga_bucket_sync_ready(tga_bucket_sync *s, size_t lo, size_t hi);
/* Starts what is pending and waits for every bucket of this step; the first error of any bucket.
 * Ranges never reported are not reduced (they hold no gradient this step). */
tga_status tga_bucket_sync_finish(tga_bucket_sync *s);

/* Buckets sent in the last step, and the milliseconds finish() waited for communication (what the
 * overlap did not hide). */
int tga_bucket_sync_last_buckets(const tga_bucket_sync *s);
double tga_bucket_sync_last_wait_ms(const tga_bucket_sync *s);

#endif
