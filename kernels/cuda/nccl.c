/* The CUDA backend's device collectives (contract: kernels/collectives.h), on NCCL.
 *
 * NCCL is dlopen'ed (libnccl.so.2, or $TGA_NCCL_LIBRARY) by the first make_id or init, never
 * linked: single-GPU runs and machines without NCCL never need it. nccl.h gives the types and
 * constants only; every function is resolved with dlsym.
 *
 * Streams: collectives run on their own non-blocking stream, ordered with the backend's compute
 * stream (tga_cuda_stream) by two events, one each way, reused for every collective.
 *
 * The communicator is a blocking one (ncclCommInitRank). A non-blocking one (blocking = 0) may
 * answer any call with ncclInProgress, after which nothing may be queued on NCCL's stream and no
 * NCCL function called until ncclCommGetAsyncError stops saying so: every call here would poll to
 * completion anyway (the event recorded after a collective needs it enqueued), with no time limit
 * to apply since the contract gives the enqueueing calls none. A peer that never joins init, or
 * the first collective (NCCL connects lazily), is left to the caller's watchdog. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#include <dlfcn.h>
#include <nccl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/collectives.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/dynlib.h"

_Static_assert(sizeof(ncclUniqueId) == TGA_COLL_ID_BYTES,
               "TGA_COLL_ID_BYTES must equal sizeof(ncclUniqueId)");

/* Between two polls in wait: short next to a gradient all-reduce (milliseconds), long enough that
 * the polling thread leaves the core to others. */
#define POLL_INTERVAL_NS 200000L

static struct {
    void *library; /* NULL until every function below is resolved */
    ncclResult_t (*get_version)(int *version);
    ncclResult_t (*get_unique_id)(ncclUniqueId *id);
    ncclResult_t (*comm_init_rank)(ncclComm_t *comm, int world, ncclUniqueId id, int rank);
    ncclResult_t (*all_reduce)(const void *send, void *recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*reduce_scatter)(const void *send, void *recv, size_t recv_count, ncclDataType_t type,
                                   ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*all_gather)(const void *send, void *recv, size_t send_count, ncclDataType_t type,
                               ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*reduce)(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           int root, ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*broadcast)(const void *send, void *recv, size_t count, ncclDataType_t type, int root,
                              ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*comm_get_async_error)(ncclComm_t comm, ncclResult_t *async_error);
    ncclResult_t (*comm_abort)(ncclComm_t comm);
    ncclResult_t (*comm_destroy)(ncclComm_t comm);
    const char *(*get_error_string)(ncclResult_t result);
} nccl;

static struct {
    ncclComm_t comm;          /* NULL before init, after destroy, and after an abort */
    int aborted;              /* by wait; only destroy clears it */
    cudaStream_t stream;      /* the collectives' own stream */
    cudaEvent_t compute_done; /* recorded on the compute stream before each collective */
    cudaEvent_t comm_done;    /* recorded on the collectives' stream after each one */
} coll;

static char collectives_name[32] = "nccl";

/* ---- loading ---------------------------------------------------------------------------------- */

static const char *library_path(void) {
    const char *env = getenv("TGA_NCCL_LIBRARY");
    return env && *env ? env : "libnccl.so.2";
}

/* Fills `nccl` from an opened library; -1, naming the first missing function, if one is absent. */
static int resolve_functions(void *library, const char *path, char *err, size_t cap) {
    const tga_dynlib_symbol wanted[] = {
        {"ncclGetVersion", &nccl.get_version},
        {"ncclGetUniqueId", &nccl.get_unique_id},
        {"ncclCommInitRank", &nccl.comm_init_rank},
        {"ncclAllReduce", &nccl.all_reduce},
        {"ncclReduceScatter", &nccl.reduce_scatter},
        {"ncclAllGather", &nccl.all_gather},
        {"ncclReduce", &nccl.reduce},
        {"ncclBroadcast", &nccl.broadcast},
        {"ncclCommGetAsyncError", &nccl.comm_get_async_error},
        {"ncclCommAbort", &nccl.comm_abort},
        {"ncclCommDestroy", &nccl.comm_destroy},
        {"ncclGetErrorString", &nccl.get_error_string},
    };
    const char *missing = tga_dynlib_resolve(library, wanted, sizeof wanted / sizeof wanted[0]);
    if (missing) snprintf(err, cap, "nccl: %s has no %s (NCCL 2.4 or newer is needed)", path, missing);
    return missing ? -1 : 0;
}

static int load_nccl(char *err, size_t cap) {
    if (nccl.library) return 0;
    const char *path = library_path();
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(err, cap, "nccl: cannot load %s (%s); install NCCL 2 or set TGA_NCCL_LIBRARY to its path",
                 path, dlerror());
        return -1;
    }
    if (resolve_functions(library, path, err, cap) != 0) {
        dlclose(library);
        return -1;
    }
    nccl.library = library; /* never closed: NCCL keeps threads of its own */
    return 0;
}

/* "nccl 2.27.3" from ncclGetVersion's code: X*1000 + Y*100 + Z up to 2.8, X*10000 + Y*100 + Z since
 * (nccl.h's NCCL_VERSION). */
static void name_from_version(void) {
    int code = 0;
    if (nccl.get_version(&code) != ncclSuccess) return;
    int major = code >= 10000 ? code / 10000 : code / 1000;
    int minor = code >= 10000 ? code / 100 % 100 : code / 100 % 10;
    snprintf(collectives_name, sizeof collectives_name, "nccl %d.%d.%d", major, minor, code % 100);
}

/* ---- errors ----------------------------------------------------------------------------------- */

/* 1, with the message in err, when a call failed */
static int cuda_failed(cudaError_t status, const char *call, char *err, size_t cap) {
    if (status == cudaSuccess) return 0;
    snprintf(err, cap, "nccl: %s: %s (%s)", call, cudaGetErrorName(status), cudaGetErrorString(status));
    return 1;
}

static int nccl_failed(ncclResult_t status, const char *call, char *err, size_t cap) {
    if (status == ncclSuccess) return 0;
    snprintf(err, cap, "nccl: %s: %s (rerun with NCCL_DEBUG=WARN for NCCL's own report)", call,
             nccl.get_error_string(status));
    return 1;
}

static int not_started(const char *call, char *err, size_t cap) {
    snprintf(err, cap, "nccl: %s: %s", call,
             coll.aborted ? "the communicator was aborted after an earlier failure"
                          : "no communicator (init was not called, or failed)");
    return -1;
}

/* Aborts the communicator, so that no rank stays blocked in a collective that cannot finish, and
 * returns -1 with the formatted reason. ncclCommAbort's own result is not reported: the reason is. */
__attribute__((format(printf, 3, 4))) static int abort_comm(char *err, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    nccl.comm_abort(coll.comm);
    coll.comm = NULL;
    coll.aborted = 1;
    return -1;
}

/* ---- communicator ----------------------------------------------------------------------------- */

static int nccl_make_id(void *id, char *err, size_t cap) {
    if (!id) {
        snprintf(err, cap, "nccl: make_id: no buffer for the id");
        return -1;
    }
    if (load_nccl(err, cap) != 0) return -1;
    ncclUniqueId unique_id;
    if (nccl_failed(nccl.get_unique_id(&unique_id), "ncclGetUniqueId", err, cap)) return -1;
    memcpy(id, &unique_id, sizeof unique_id);
    return 0;
}

/* Streams and events go with the communicator; a handle never created is NULL. */
static void release_stream_and_events(void) {
    if (coll.comm_done) cudaEventDestroy(coll.comm_done);
    if (coll.compute_done) cudaEventDestroy(coll.compute_done);
    if (coll.stream) cudaStreamDestroy(coll.stream);
    coll.comm_done = coll.compute_done = NULL;
    coll.stream = NULL;
}

/* Non-blocking: the legacy default stream (timing events) must not serialise the collectives with
 * the compute stream, or compute could never overlap communication. */
static int create_stream_and_events(char *err, size_t cap) {
    const char *call = "cudaStreamCreateWithFlags";
    cudaError_t status = cudaStreamCreateWithFlags(&coll.stream, cudaStreamNonBlocking);
    if (status == cudaSuccess) {
        call = "cudaEventCreateWithFlags";
        status = cudaEventCreateWithFlags(&coll.compute_done, cudaEventDisableTiming);
    }
    if (status == cudaSuccess) status = cudaEventCreateWithFlags(&coll.comm_done, cudaEventDisableTiming);
    if (cuda_failed(status, call, err, cap)) {
        release_stream_and_events();
        return -1;
    }
    return 0;
}

static int nccl_init(const void *id, int rank, int world, char *err, size_t cap) {
    if (!id || world < 1 || rank < 0 || rank >= world) {
        snprintf(err, cap, "nccl: init: rank %d of %d ranks%s", rank, world, id ? "" : ", no id");
        return -1;
    }
    if (coll.comm || coll.aborted) {
        snprintf(err, cap, "nccl: init: a communicator was already %s (destroy it first)",
                 coll.aborted ? "aborted" : "started");
        return -1;
    }
    if (load_nccl(err, cap) != 0 || create_stream_and_events(err, cap) != 0) return -1;
    ncclUniqueId unique_id;
    memcpy(&unique_id, id, sizeof unique_id);
    ncclComm_t comm = NULL;
    if (nccl_failed(nccl.comm_init_rank(&comm, world, unique_id, rank), "ncclCommInitRank", err, cap)) {
        release_stream_and_events();
        return -1;
    }
    coll.comm = comm;
    name_from_version();
    return 0;
}

/* Leaving: NCCL finishes the collectives still queued; the stream and the events are released by
 * CUDA once the work that uses them is done. Failures here are not reported: the caller is ending. */
static void nccl_destroy(void) {
    if (coll.comm) nccl.comm_destroy(coll.comm);
    release_stream_and_events();
    coll.comm = NULL;
    coll.aborted = 0;
}

/* ---- collectives ------------------------------------------------------------------------------ */

/* Checks a collective's arguments and makes the collectives' stream wait for every op queued so
 * far on the compute stream (which writes its input). */
static int begin_collective(const char *call, const void *send, const void *recv, size_t count, char *err,
                            size_t cap) {
    if (!coll.comm) return not_started(call, err, cap);
    if (count > 0 && (!send || !recv)) {
        snprintf(err, cap, "nccl: %s: a NULL device buffer for %zu elements", call, count);
        return -1;
    }
    cudaError_t status = cudaEventRecord(coll.compute_done, tga_cuda_stream);
    if (status == cudaSuccess) status = cudaStreamWaitEvent(coll.stream, coll.compute_done, 0);
    return cuda_failed(status, "ordering after the compute stream", err, cap) ? -1 : 0;
}

/* After the collective was enqueued (with result `enqueued`): every op queued later on the compute
 * stream waits for it, and wait() polls the same event. */
static int end_collective(ncclResult_t enqueued, const char *call, char *err, size_t cap) {
    if (nccl_failed(enqueued, call, err, cap)) return -1;
    cudaError_t status = cudaEventRecord(coll.comm_done, coll.stream);
    if (status == cudaSuccess) status = cudaStreamWaitEvent(tga_cuda_stream, coll.comm_done, 0);
    return cuda_failed(status, "ordering the compute stream after a collective", err, cap) ? -1 : 0;
}

static int nccl_allreduce_sum(float *buf, size_t n, char *err, size_t cap) {
    if (begin_collective("ncclAllReduce", buf, buf, n, err, cap) != 0) return -1;
    return end_collective(nccl.all_reduce(buf, buf, n, ncclFloat32, ncclSum, coll.comm, coll.stream),
                          "ncclAllReduce", err, cap);
}

static int nccl_reduce_scatter_sum(const float *send, float *recv, size_t recv_count, char *err, size_t cap) {
    if (begin_collective("ncclReduceScatter", send, recv, recv_count, err, cap) != 0) return -1;
    return end_collective(
        nccl.reduce_scatter(send, recv, recv_count, ncclFloat32, ncclSum, coll.comm, coll.stream),
        "ncclReduceScatter", err, cap);
}

static int nccl_allgather(const float *send, float *recv, size_t send_count, char *err, size_t cap) {
    if (begin_collective("ncclAllGather", send, recv, send_count, err, cap) != 0) return -1;
    return end_collective(nccl.all_gather(send, recv, send_count, ncclFloat32, coll.comm, coll.stream),
                          "ncclAllGather", err, cap);
}

static int nccl_reduce_sum(float *buf, size_t n, int root, char *err, size_t cap) {
    if (begin_collective("ncclReduce", buf, buf, n, err, cap) != 0) return -1;
    return end_collective(nccl.reduce(buf, buf, n, ncclFloat32, ncclSum, root, coll.comm, coll.stream), "ncclReduce",
                          err, cap);
}

static int nccl_broadcast(float *buf, size_t n, int root, char *err, size_t cap) {
    if (begin_collective("ncclBroadcast", buf, buf, n, err, cap) != 0) return -1;
    return end_collective(nccl.broadcast(buf, buf, n, ncclFloat32, root, coll.comm, coll.stream), "ncclBroadcast",
                          err, cap);
}

static int nccl_broadcast_bf16(uint16_t *buf, size_t n, int root, char *err, size_t cap) {
    if (begin_collective("ncclBroadcast", buf, buf, n, err, cap) != 0) return -1;
    return end_collective(nccl.broadcast(buf, buf, n, ncclBfloat16, root, coll.comm, coll.stream), "ncclBroadcast",
                          err, cap);
}

/* ---- wait ------------------------------------------------------------------------------------- */

static double monotonic_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* The last collective's event covers all of them (one stream). NCCL's asynchronous error is read
 * before the event, so a failure is reported even when the event completed with it. */
static int nccl_wait(double timeout_s, const char *what, char *err, size_t cap) {
    if (!what) what = "collectives";
    if (!coll.comm) return not_started(what, err, cap);
    const struct timespec pause = {0, POLL_INTERVAL_NS};
    double start = monotonic_seconds();
    for (;;) {
        double waited = monotonic_seconds() - start;
        ncclResult_t async_error = ncclSuccess;
        ncclResult_t queried = nccl.comm_get_async_error(coll.comm, &async_error);
        if (queried != ncclSuccess) async_error = queried;
        if (async_error != ncclSuccess)
            return abort_comm(err, cap, "nccl: %s: %s after %.1f s; communicator aborted", what,
                              nccl.get_error_string(async_error), waited);
        cudaError_t done = cudaEventQuery(coll.comm_done);
        if (done == cudaSuccess) return 0;
        if (done != cudaErrorNotReady)
            return abort_comm(err, cap, "nccl: %s: %s (%s) after %.1f s; communicator aborted", what,
                              cudaGetErrorName(done), cudaGetErrorString(done), waited);
        if (timeout_s > 0 && waited >= timeout_s)
            return abort_comm(err, cap,
                              "nccl: %s: not finished after %.1f s (limit %.1f s); communicator aborted",
                              what, waited, timeout_s);
        nanosleep(&pause, NULL);
    }
}

/* ---- export ----------------------------------------------------------------------------------- */

static const tga_coll_ops nccl_ops = {
    .name = collectives_name,
    .make_id = nccl_make_id,
    .init = nccl_init,
    .allreduce_sum = nccl_allreduce_sum,
    .reduce_scatter_sum = nccl_reduce_scatter_sum,
    .allgather = nccl_allgather,
    .reduce_sum = nccl_reduce_sum,
    .broadcast = nccl_broadcast,
    .broadcast_bf16 = nccl_broadcast_bf16,
    .wait = nccl_wait,
    .destroy = nccl_destroy,
};

/* Looked up by runtime/backend.c next to tga_cuda_backend_init; absent from a library built
 * without nccl.h. */
__attribute__((visibility("default"))) const tga_coll_ops *tga_cuda_collectives(void) { return &nccl_ops; }
