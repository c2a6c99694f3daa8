/* The device-collective interface (kernels/collectives.h) over MPI on host memory: what the CPU
 * backend's "device" memory is. `tga train` uses it on the CPU backend when the environment says
 * TGA_DEVICE_COLLECTIVES=mpi, so that the code path a multi-GPU run takes with NCCL (device
 * all-reduce, buckets sent from the backward pass, ZeRO-1 reduce to owners and broadcasts) runs and
 * is tested without a GPU. Each call completes before it returns (NCCL's only enqueue), so
 * `wait` has nothing left to wait for; the collective watchdog covers the calls themselves.
 * Slower than the CPU backend's own paths: for tests. */
#ifndef TGA_DIST_MPI_COLL_H
#define TGA_DIST_MPI_COLL_H

#include "kernels/collectives.h"

const tga_coll_ops *tga_dist_mpi_collectives(void);

#endif
