#include "dist/device_comm.h"

#include "dist/comm.h"
#include "kernels/collectives.h"
#include "runtime/log.h"

static int active = 0;
static double wait_timeout = 0;

static tga_status coll_result(int rc, const char *op, const char *what, const char *err) {
    if (rc == 0) return TGA_OK;
    return tga_error(TGA_ERR_DIST, "rank %d: %s (%s) failed: %s", tga_dist_rank(), op, what, err);
}

tga_status tga_dist_device_start(double timeout_s) {
    if (active || tga_dist_world() == 1 || !tga_active_coll) return TGA_OK;
    char id[TGA_COLL_ID_BYTES] = {0}, err[512] = "";
    tga_status st = TGA_OK;
    if (tga_dist_rank() == 0) st = coll_result(tga_active_coll->make_id(id, err, sizeof err), "make id", "start-up", err);
    int failed;
    TGA_TRY(tga_dist_any_failed(st, &failed, "device collectives: unique id"));
    if (failed) return st != TGA_OK ? st : tga_error(TGA_ERR_DIST, "device collectives: rank 0 could not make an id");
    TGA_TRY(tga_dist_bcast(id, sizeof id, 0, "device collectives: unique id"));
    st = coll_result(tga_active_coll->init(id, tga_dist_rank(), tga_dist_world(), err, sizeof err), "init",
                     "start-up", err);
    TGA_TRY(tga_dist_any_failed(st, &failed, "device collectives: init"));
    if (failed) return st != TGA_OK ? st : tga_error(TGA_ERR_DIST, "device collectives: init failed on another rank");
    active = 1;
    wait_timeout = timeout_s;
    if (tga_dist_rank() == 0) TGA_INFO("device collectives: %s over %d ranks", tga_active_coll->name, tga_dist_world());
    return TGA_OK;
}

int tga_dist_device_active(void) { return active; }

void tga_dist_device_stop(void) {
    if (active) tga_active_coll->destroy();
    active = 0;
}

tga_status tga_dist_device_allreduce(float *buf, size_t n, const char *what) {
    char err[512] = "";
    return coll_result(tga_active_coll->allreduce_sum(buf, n, err, sizeof err), "all-reduce", what, err);
}

tga_status tga_dist_device_reduce_scatter(const float *send, float *recv, size_t n, const char *what) {
    char err[512] = "";
    return coll_result(tga_active_coll->reduce_scatter_sum(send, recv, n, err, sizeof err), "reduce-scatter", what,
                       err);
}

tga_status tga_dist_device_allgather(const float *send, float *recv, size_t n, const char *what) {
    char err[512] = "";
    return coll_result(tga_active_coll->allgather(send, recv, n, err, sizeof err), "all-gather", what, err);
}

tga_status tga_dist_device_reduce(float *buf, size_t n, int root, const char *what) {
    char err[512] = "";
    return coll_result(tga_active_coll->reduce_sum(buf, n, root, err, sizeof err), "reduce", what, err);
}

tga_status tga_dist_device_broadcast(float *buf, size_t n, int root, const char *what) {
    char err[512] = "";
    return coll_result(tga_active_coll->broadcast(buf, n, root, err, sizeof err), "broadcast", what, err);
}

tga_status tga_dist_device_broadcast_bf16(uint16_t *buf, size_t n, int root, const char *what) {
    char err[512] = "";
    return coll_result(tga_active_coll->broadcast_bf16(buf, n, root, err, sizeof err), "broadcast", what, err);
}

tga_status tga_dist_device_wait(const char *what) {
    char err[512] = "";
    return coll_result(tga_active_coll->wait(wait_timeout, what, err, sizeof err), "wait", what, err);
}
