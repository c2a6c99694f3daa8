/* Collectives on device buffers: NCCL through the CUDA backend's tga_coll_ops
 * (kernels/collectives.h), started the way NCCL expects under MPI: rank 0 makes the unique id,
 * MPI broadcasts it, every rank joins. Calls are asynchronous (enqueued behind the compute
 * stream); tga_dist_device_wait() waits with the watchdog's limit (runtime.collective_timeout) and
 * turns an asynchronous NCCL error or a timeout into an error naming the operation, after aborting
 * the communicator so that no rank is left blocked. */
#ifndef TGA_DIST_DEVICE_COMM_H
#define TGA_DIST_DEVICE_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

/* With more than one rank and a backend that has collectives, starts them (collective over all
 * ranks). Otherwise does nothing: tga_dist_device_active() stays 0 and host memory goes over MPI. */
tga_status tga_dist_device_start(double timeout_s);
int tga_dist_device_active(void);
void tga_dist_device_stop(void);

/* Counts in floats; buffers are device memory. */
tga_status tga_dist_device_allreduce(float *buf, size_t n, const char *what);
tga_status tga_dist_device_reduce_scatter(const float *send, float *recv, size_t n, const char *what);
tga_status tga_dist_device_allgather(const float *send, float *recv, size_t n, const char *what);
tga_status tga_dist_device_reduce(float *buf, size_t n, int root, const char *what);
tga_status tga_dist_device_broadcast(float *buf, size_t n, int root, const char *what);
tga_status tga_dist_device_broadcast_bf16(uint16_t *buf, size_t n, int root, const char *what); /* n bf16 values */
tga_status tga_dist_device_wait(const char *what);

#endif
