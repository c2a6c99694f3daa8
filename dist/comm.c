#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#include "dist/comm.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/log.h"

#ifdef TGA_HAVE_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_world = 1, g_local_rank = 0, g_local_world = 1, g_initialized = 0, g_threads_ok = 1;

/* ---- watchdog: the operation in flight and when it started ---- */
static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *watch_op = NULL, *watch_what = NULL;
static double watch_since = 0, watch_timeout = 0;
static double watch_extra = 0, watch_extra_next = 0; /* seconds allowed beyond the timeout (one collective) */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#ifdef TGA_HAVE_MPI /* without MPI there are no collectives to watch */
static void watch_enter(const char *op, const char *what) {
    pthread_mutex_lock(&watch_lock);
    watch_op = op;
    watch_what = what;
    watch_since = now_seconds();
    watch_extra = watch_extra_next;
    watch_extra_next = 0;
    pthread_mutex_unlock(&watch_lock);
}

static void watch_leave(void) {
    pthread_mutex_lock(&watch_lock);
    watch_op = NULL;
    pthread_mutex_unlock(&watch_lock);
}
#endif

static void *watchdog_main(void *arg) {
    (void)arg;
    for (;;) {
        struct timespec tick = {0, 200 * 1000 * 1000};
        nanosleep(&tick, NULL);
        pthread_mutex_lock(&watch_lock);
        int expired = watch_op && now_seconds() - watch_since > watch_timeout + watch_extra;
        if (expired)
            fprintf(stderr, "[rank %d] error: watchdog: %s (%s) has not completed in %.0f s (runtime.collective_timeout"
                            "%s); another rank is hung or dead; aborting the job\n",
                    g_rank, watch_op, watch_what, watch_timeout + watch_extra,
                    watch_extra > 0 ? " plus the time allowed for this operation" : "");
        pthread_mutex_unlock(&watch_lock);
        if (expired) {
            fflush(stderr);
            tga_dist_abort(1);
        }
    }
    return NULL;
}

void tga_dist_watchdog_allow(double extra_s) {
    pthread_mutex_lock(&watch_lock);
    watch_extra_next = extra_s > 0 ? extra_s : 0;
    pthread_mutex_unlock(&watch_lock);
}

tga_status tga_dist_watchdog_start(double timeout_s) {
    if (timeout_s <= 0 || watch_timeout > 0) return TGA_OK;
    watch_timeout = timeout_s;
    pthread_t thread;
    if (pthread_create(&thread, NULL, watchdog_main, NULL) != 0)
        return tga_error(TGA_ERR_DIST, "cannot start the collective watchdog thread");
    pthread_detach(thread);
    return TGA_OK;
}

#ifdef TGA_HAVE_MPI
static tga_status mpi_check(int rc, const char *op, const char *what) {
    watch_leave();
    if (rc == MPI_SUCCESS) return TGA_OK;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return tga_error(TGA_ERR_DIST, "rank %d: %s (%s) failed: %s", g_rank, op, what, text);
}
/* Every collective runs as WATCHED(call, op, what): the watchdog sees it in flight. */
#define WATCHED(call, op, what) (watch_enter(op, what), mpi_check((call), op, what))
#endif

tga_status tga_dist_init(int *argc, char ***argv) {
    if (g_initialized) return TGA_OK;
#ifdef TGA_HAVE_MPI
    int provided = 0, already = 0;
    MPI_Initialized(&already);
    if (!already)
        TGA_TRY(mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread",
                          "start-up"));
    if (already) MPI_Query_thread(&provided);
    g_threads_ok = provided >= MPI_THREAD_SERIALIZED;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_world);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &g_local_rank);
    MPI_Comm_size(local, &g_local_world);
    MPI_Comm_free(&local);
#else
    (void)argc;
    (void)argv;
#endif
    g_initialized = 1;
    tga_log_set_rank(g_rank, g_world);
    return TGA_OK;
}

void tga_dist_finalize(void) {
#ifdef TGA_HAVE_MPI
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (g_initialized && !finalized) MPI_Finalize();
#endif
    g_initialized = 0;
}

int tga_dist_rank(void) { return g_rank; }
int tga_dist_world(void) { return g_world; }
int tga_dist_local_rank(void) { return g_local_rank; }
int tga_dist_local_world(void) { return g_local_world; }

tga_status tga_dist_barrier(const char *what) {
#ifdef TGA_HAVE_MPI
    if (g_world > 1) return WATCHED(MPI_Barrier(MPI_COMM_WORLD), "barrier", what);
#endif
    (void)what;
    return TGA_OK;
}

tga_status tga_dist_bcast(void *buf, size_t bytes, int root, const char *what) {
#ifdef TGA_HAVE_MPI
    if (g_world > 1) {
        for (size_t off = 0; off < bytes;) { /* MPI counts are int */
            size_t n = bytes - off < (1u << 30) ? bytes - off : (1u << 30);
            TGA_TRY(WATCHED(MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, MPI_COMM_WORLD),
                              "broadcast", what));
            off += n;
        }
    }
#endif
    (void)buf;
    (void)bytes;
    (void)root;
    (void)what;
    return TGA_OK;
}

tga_status tga_dist_allgather(const void *send, void *recv, size_t bytes, const char *what) {
    if (g_world == 1) {
        memmove(recv, send, bytes);
        return TGA_OK;
    }
#ifdef TGA_HAVE_MPI
    if (bytes > (size_t)1 << 30)
        return tga_error(TGA_ERR_DIST, "allgather (%s): %zu bytes per rank is over 1 GiB", what, bytes);
    return WATCHED(MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD),
                     "allgather", what);
#else
    return tga_error(TGA_ERR_INTERNAL, "allgather (%s) without MPI in a %d-rank world", what, g_world);
#endif
}

tga_status tga_dist_allgatherv(const void *send, void *recv, const size_t *counts, const char *what) {
    if (g_world == 1) {
        memmove(recv, send, counts[0]);
        return TGA_OK;
    }
#ifdef TGA_HAVE_MPI
    int *c = malloc(sizeof(int) * 2 * (size_t)g_world), *displ = c + g_world;
    if (!c) return tga_error(TGA_ERR_NOMEM, "allgatherv (%s): out of memory", what);
    size_t total = 0;
    for (int r = 0; r < g_world; r++) {
        if (counts[r] > (size_t)1 << 30 || total > (size_t)1 << 30) {
            free(c);
            return tga_error(TGA_ERR_DIST, "allgatherv (%s): over 1 GiB", what);
        }
        c[r] = (int)counts[r];
        displ[r] = (int)total;
        total += counts[r];
    }
    tga_status st =
        WATCHED(MPI_Allgatherv(send, c[g_rank], MPI_BYTE, recv, c, displ, MPI_BYTE, MPI_COMM_WORLD),
                  "allgatherv", what);
    free(c);
    return st;
#else
    return tga_error(TGA_ERR_INTERNAL, "allgatherv (%s) without MPI in a %d-rank world", what, g_world);
#endif
}

/* Gather every rank's vector, then add in rank order: the same bits whatever order ranks arrive in. */
#define DEFINE_ORDERED_SUM(fn, type)                                                                         \
    tga_status fn(type *buf, size_t n, const char *what) {                                                   \
        if (g_world == 1 || n == 0) return TGA_OK;                                                           \
        type *all = malloc(sizeof(type) * n * (size_t)g_world);                                              \
        if (!all) return tga_error(TGA_ERR_NOMEM, "sum (%s): out of memory", what);                          \
        tga_status st = tga_dist_allgather(buf, all, sizeof(type) * n, what);                                \
        if (st == TGA_OK)                                                                                    \
            for (size_t i = 0; i < n; i++) {                                                                 \
                type s = all[i];                                                                             \
                for (int r = 1; r < g_world; r++)                                                            \
                    s += all[(size_t)r * n + i];                                                             \
                buf[i] = s;                                                                                  \
            }                                                                                                \
        free(all);                                                                                           \
        return st;                                                                                           \
    }
DEFINE_ORDERED_SUM(tga_dist_sum_f64, double)
DEFINE_ORDERED_SUM(tga_dist_sum_i64, int64_t)

tga_status tga_dist_allreduce_f32(float *buf, size_t n, const char *what) {
#ifdef TGA_HAVE_MPI
    if (g_world > 1) {
        for (size_t off = 0; off < n;) {
            size_t k = n - off < (1u << 28) ? n - off : (1u << 28);
            TGA_TRY(
                WATCHED(MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                          "allreduce", what));
            off += k;
        }
    }
#endif
    (void)buf;
    (void)n;
    (void)what;
    return TGA_OK;
}

tga_status tga_dist_reduce_f32(float *buf, size_t n, int root, const char *what) {
#ifdef TGA_HAVE_MPI
    if (g_world > 1) {
        for (size_t off = 0; off < n;) {
            size_t k = n - off < (1u << 28) ? n - off : (1u << 28);
            const void *send = g_rank == root ? MPI_IN_PLACE : (const void *)(buf + off);
            TGA_TRY(WATCHED(MPI_Reduce(send, buf + off, (int)k, MPI_FLOAT, MPI_SUM, root, MPI_COMM_WORLD), "reduce",
                            what));
            off += k;
        }
    }
#endif
    (void)buf;
    (void)n;
    (void)root;
    (void)what;
    return TGA_OK;
}

tga_status tga_dist_reduce_scatter_f32(const float *send, float *recv, size_t n, const char *what) {
    if (g_world == 1) {
        memmove(recv, send, n * sizeof(float));
        return TGA_OK;
    }
#ifdef TGA_HAVE_MPI
    if (n > (size_t)1 << 30)
        return tga_error(TGA_ERR_DIST, "reduce-scatter (%s): %zu floats per rank is over 2^30", what, n);
    return WATCHED(MPI_Reduce_scatter_block(send, recv, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                   "reduce-scatter", what);
#else
    return tga_error(TGA_ERR_INTERNAL, "reduce-scatter (%s) without MPI in a %d-rank world", what, g_world);
#endif
}

tga_status tga_dist_alltoall(const void *send, void *recv, size_t bytes, const char *what) {
    if (g_world == 1) {
        memmove(recv, send, bytes);
        return TGA_OK;
    }
#ifdef TGA_HAVE_MPI
    if (bytes > (size_t)1 << 30)
        return tga_error(TGA_ERR_DIST, "alltoall (%s): %zu bytes per block is over 1 GiB", what, bytes);
    return WATCHED(MPI_Alltoall(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD), "alltoall",
                   what);
#else
    return tga_error(TGA_ERR_INTERNAL, "alltoall (%s) without MPI in a %d-rank world", what, g_world);
#endif
}

int tga_dist_thread_collectives(void) { return g_threads_ok; }

tga_status tga_dist_any_failed(tga_status local, int *any_failed, const char *what) {
    int64_t flag = local != TGA_OK;
    TGA_TRY(tga_dist_sum_i64(&flag, 1, what));
    *any_failed = flag > 0;
    return TGA_OK;
}

void tga_dist_abort(int exit_code) {
#ifdef TGA_HAVE_MPI
    if (g_world > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
#endif
    exit(exit_code);
}
