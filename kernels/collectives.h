/* Device collectives of a backend: NCCL on the CUDA backend (kernels/cuda/nccl.c, which dlopens
 * libnccl.so.2 only when a multi-rank run asks for it). The CPU backend has none: gradients in
 * host memory are reduced with MPI (dist/comm.h). dist/device_comm.c starts them (the unique id
 * made on rank 0 and broadcast over MPI) and wraps every call with the collective watchdog.
 *
 * Ordering ("events both ways"): each collective is enqueued on the backend's own communication
 * stream after an event recorded on the compute stream, so it sees every op issued before it;
 * the compute stream then waits on an event recorded after the collective, so every op issued
 * later sees its result. The host does not wait: `wait` does, and it is the only call that can
 * notice an asynchronous failure (a dead peer, a network error), which it reports after aborting
 * the communicator so that no rank blocks forever.
 *
 * Counts are in elements (floats, or bf16 values for broadcast_bf16), never bytes. Every function returns 0, or -1 with a message in
 * err[cap] naming the call and NCCL's reason. */
#ifndef TGA_KERNELS_COLLECTIVES_H
#define TGA_KERNELS_COLLECTIVES_H

#include <stddef.h>
#include <stdint.h>

#define TGA_COLL_ID_BYTES 128 /* sizeof(ncclUniqueId) */

typedef struct tga_coll_ops {
    const char *name; /* "nccl 2.x.y" once started */
    /* Rank 0 only: a fresh unique id (TGA_COLL_ID_BYTES bytes) for init on every rank. */
    int (*make_id)(void *id, char *err, size_t cap);
    /* Joins the communicator of `world` ranks (collective: every rank calls it with the same id).
     * The device is the one the backend already uses (one GPU per local rank). */
    int (*init)(const void *id, int rank, int world, char *err, size_t cap);
    /* buf[n] (device) = element-wise sum over ranks, in place. */
    int (*allreduce_sum)(float *buf, size_t n, char *err, size_t cap);
    /* send[world * recv_count] (device): rank r receives the sum over ranks of block r. */
    int (*reduce_scatter_sum)(const float *send, float *recv, size_t recv_count, char *err, size_t cap);
    /* send[send_count] (device): recv[world * send_count] holds rank r's block at r * send_count. */
    int (*allgather)(const float *send, float *recv, size_t send_count, char *err, size_t cap);
    /* buf[n] (device) on rank `root` = element-wise sum over ranks, in place (the other ranks'
     * buffers are left as they were): ZeRO-1 sends each shard of the gradient to its owner. */
    int (*reduce_sum)(float *buf, size_t n, int root, char *err, size_t cap);
    /* buf[n] (device) = rank root's buf on every rank. */
    int (*broadcast)(float *buf, size_t n, int root, char *err, size_t cap);
    /* The same for bf16 values (uint16_t): ZeRO-1 with model.dtype bf16 broadcasts the owners'
     * slices of the bf16 matrices, whose fp32 masters stay in the owners' shards. */
    int (*broadcast_bf16)(uint16_t *buf, size_t n, int root, char *err, size_t cap);
    /* Waits for every enqueued collective, polling for asynchronous errors. After timeout_s
     * seconds (0 = no limit) or an asynchronous error it aborts the communicator and returns -1
     * naming `what`; the communicator is then unusable (the job ends). */
    int (*wait)(double timeout_s, const char *what, char *err, size_t cap);
    /* Leaves the communicator (a no-op when it was never started). */
    void (*destroy)(void);
} tga_coll_ops;

/* The active backend's collectives: NULL on the CPU backend (runtime/backend.c sets it). */
extern const tga_coll_ops *tga_active_coll;

#endif
