#include "dist/mpi_coll.h"

#include <stdio.h>

#include "dist/comm.h"

static int started = 0;

/* A failed MPI call already says which call and why; pass it on as the interface asks. */
static int result(tga_status st, char *err, size_t cap) {
    if (st == TGA_OK) return 0;
    snprintf(err, cap, "%s", tga_error_message());
    tga_error_clear();
    return -1;
}

static int not_started(const char *call, char *err, size_t cap) {
    snprintf(err, cap, "mpi collectives: %s before init", call);
    return -1;
}

static int mpi_make_id(void *id, char *err, size_t cap) {
    (void)err;
    (void)cap;
    unsigned char *bytes = id;
    for (int i = 0; i < TGA_COLL_ID_BYTES; i++) bytes[i] = (unsigned char)i; /* MPI needs no id */
    return 0;
}

static int mpi_init(const void *id, int rank, int world, char *err, size_t cap) {
    (void)id;
    if (rank != tga_dist_rank() || world != tga_dist_world()) {
        snprintf(err, cap, "mpi collectives: init as rank %d of %d in a world where this is rank %d of %d", rank,
                 world, tga_dist_rank(), tga_dist_world());
        return -1;
    }
    started = 1;
    return 0;
}

static int mpi_allreduce(float *buf, size_t n, char *err, size_t cap) {
    if (!started) return not_started("all-reduce", err, cap);
    return result(tga_dist_allreduce_f32(buf, n, "device all-reduce (MPI)"), err, cap);
}

static int mpi_reduce_scatter(const float *send, float *recv, size_t n, char *err, size_t cap) {
    if (!started) return not_started("reduce-scatter", err, cap);
    return result(tga_dist_reduce_scatter_f32(send, recv, n, "device reduce-scatter (MPI)"), err, cap);
}

static int mpi_allgather(const float *send, float *recv, size_t n, char *err, size_t cap) {
    if (!started) return not_started("all-gather", err, cap);
    return result(tga_dist_allgather(send, recv, n * sizeof(float), "device all-gather (MPI)"), err, cap);
}

static int mpi_reduce(float *buf, size_t n, int root, char *err, size_t cap) {
    if (!started) return not_started("reduce", err, cap);
    return result(tga_dist_reduce_f32(buf, n, root, "device reduce (MPI)"), err, cap);
}

static int mpi_broadcast(float *buf, size_t n, int root, char *err, size_t cap) {
    if (!started) return not_started("broadcast", err, cap);
    return result(tga_dist_bcast(buf, n * sizeof(float), root, "device broadcast (MPI)"), err, cap);
}

static int mpi_broadcast_bf16(uint16_t *buf, size_t n, int root, char *err, size_t cap) {
    if (!started) return not_started("broadcast", err, cap);
    return result(tga_dist_bcast(buf, n * sizeof *buf, root, "device broadcast (MPI)"), err, cap);
}

static int mpi_wait(double timeout_s, const char *what, char *err, size_t cap) {
    (void)timeout_s;
    return started ? 0 : not_started(what, err, cap);
}

static void mpi_destroy(void) { started = 0; }

static const tga_coll_ops mpi_ops = {.name = "mpi (host memory)",
                                     .make_id = mpi_make_id,
                                     .init = mpi_init,
                                     .allreduce_sum = mpi_allreduce,
                                     .reduce_scatter_sum = mpi_reduce_scatter,
                                     .allgather = mpi_allgather,
                                     .reduce_sum = mpi_reduce,
                                     .broadcast = mpi_broadcast,
                                     .broadcast_bf16 = mpi_broadcast_bf16,
                                     .wait = mpi_wait,
                                     .destroy = mpi_destroy};

const tga_coll_ops *tga_dist_mpi_collectives(void) { return &mpi_ops; }
