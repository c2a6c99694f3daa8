/* Communication between ranks. On the CPU backend everything goes through MPI; the CUDA backend
 * adds NCCL for device buffers. Ranks come from MPI (mpirun / srun); a binary started without
 * mpirun is a 1-rank world. Every collective names what it is for (`what`), so a failure or a
 * watchdog timeout can say which rank was stuck in which operation.
 *
 * Results never depend on the order in which ranks arrive: reductions that must be reproducible
 * (tga_dist_sum_f64, the gradient sync of the trainer) gather and then sum in rank order. */
#ifndef TGA_DIST_COMM_H
#define TGA_DIST_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

/* MPI_Init_thread (once; a no-op without MPI). Sets the log prefix. */
tga_status tga_dist_init(int *argc, char ***argv);
void tga_dist_finalize(void);
int tga_dist_rank(void);
int tga_dist_world(void);
/* Rank among the ranks on this host, and how many share it (for one GPU / thread budget each). */
int tga_dist_local_rank(void);
int tga_dist_local_world(void);

tga_status tga_dist_barrier(const char *what);
tga_status tga_dist_bcast(void *buf, size_t bytes, int root, const char *what);
/* recv holds world * bytes: rank r's block at r * bytes. */
tga_status tga_dist_allgather(const void *send, void *recv, size_t bytes, const char *what);
/* Variable-size gather to every rank: counts[r] bytes from rank r (every rank passes the same
 * counts), concatenated in rank order into recv. */
tga_status tga_dist_allgatherv(const void *send, void *recv, const size_t *counts, const char *what);
/* Element-wise sum over ranks, in rank order (bitwise reproducible for a given world size). */
tga_status tga_dist_sum_f64(double *buf, size_t n, const char *what);
tga_status tga_dist_sum_i64(int64_t *buf, size_t n, const char *what);
/* Fast float sum for large buffers (MPI_Allreduce; the order is MPI's choice). */
tga_status tga_dist_allreduce_f32(float *buf, size_t n, const char *what);
/* buf[n] on rank root = the sum over ranks, in place (MPI's order); other ranks' buf unchanged. */
tga_status tga_dist_reduce_f32(float *buf, size_t n, int root, const char *what);
/* send[world * n]: rank r receives the sum over ranks of block r in recv[n] (MPI's order). */
tga_status tga_dist_reduce_scatter_f32(const float *send, float *recv, size_t n, const char *what);
/* send[world * bytes]: block r goes to rank r; recv[world * bytes] holds rank r's block for this
 * rank at r * bytes. */
tga_status tga_dist_alltoall(const void *send, void *recv, size_t bytes, const char *what);
/* 1 when another thread may run collectives while this one computes (MPI_THREAD_SERIALIZED or
 * better; always 1 without MPI). The caller still never runs two collectives at once. */
int tga_dist_thread_collectives(void);
/* 1 on every rank when any rank passes a non-OK status: lets all ranks stop together with
 * their own message instead of leaving one rank hanging in the next collective. */
tga_status tga_dist_any_failed(tga_status local, int *any_failed, const char *what);
/* Ends every rank now (after a rank has printed why). */
void tga_dist_abort(int exit_code);

/* Starts a watchdog thread: when a collective of this rank has not completed within timeout_s
 * seconds, it prints which rank was stuck in which operation and aborts the whole job (so a hung
 * or stopped rank cannot leave the others waiting forever). 0 disables it. */
tga_status tga_dist_watchdog_start(double timeout_s);
/* The next collective of this rank may take extra_s seconds beyond the timeout: for a wait whose
 * length is known to scale with work another rank does first (rank 0 verifying checkpoints). */
void tga_dist_watchdog_allow(double extra_s);

#endif
