#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "dist/bucket_sync.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dist/comm.h"
#include "dist/device_comm.h"
#include "dist/grad_sync.h"

typedef struct bucket {
    size_t lo, hi;
} bucket;

struct tga_bucket_sync {
    float *grads;
    size_t n, bucket_floats;
    int device;   /* enqueue on the device collectives instead of the thread */
    int threaded; /* a communication thread runs the host all-reduces */
    int sharded;  /* ZeRO-1: reduce each shard's part to its owner */
    bucket pending; /* adjacent ready groups not yet sent (empty: lo == hi) */

    pthread_mutex_t lock;
    pthread_cond_t wake, progress;
    bucket *queue; /* this step's buckets in send order */
    int cap, queued, done, stop;
    pthread_t thread;
    tga_status status; /* first failure of this step, its message below */
    char message[1024];

    int last_buckets;
    double last_wait_ms;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Keeps the first failure (the thread's error message is thread-local, so it is copied). */
static void record(tga_bucket_sync *s, tga_status st) {
    if (st == TGA_OK) return;
    pthread_mutex_lock(&s->lock);
    if (s->status == TGA_OK) {
        s->status = st;
        snprintf(s->message, sizeof s->message, "%s", tga_error_message());
    }
    pthread_mutex_unlock(&s->lock);
}

/* Sums of [lo, hi) to rank `root` (ZeRO-1), or to every rank (root < 0). */
static tga_status reduce_range(tga_bucket_sync *s, size_t lo, size_t hi, int root) {
    float *buf = s->grads + lo;
    if (root >= 0 && s->device) return tga_dist_device_reduce(buf, hi - lo, root, "gradient bucket (to its shard's owner)");
    if (root >= 0) return tga_dist_reduce_f32(buf, hi - lo, root, "gradient bucket (to its shard's owner)");
    if (s->device) return tga_dist_device_allreduce(buf, hi - lo, "gradient bucket");
    return tga_dist_allreduce_f32(buf, hi - lo, "gradient bucket");
}

static tga_status reduce(tga_bucket_sync *s, bucket b) {
    if (!s->sharded) return reduce_range(s, b.lo, b.hi, -1);
    for (int q = 0; q < tga_dist_world(); q++) { /* the same order on every rank */
        size_t lo, hi;
        tga_zero_shard(s->n, tga_dist_world(), q, &lo, &hi);
        lo = lo > b.lo ? lo : b.lo;
        hi = hi < b.hi ? hi : b.hi;
        if (lo < hi) TGA_TRY(reduce_range(s, lo, hi, q));
    }
    return TGA_OK;
}

static void *comm_main(void *arg) {
    tga_bucket_sync *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->stop && s->done == s->queued) pthread_cond_wait(&s->wake, &s->lock);
        if (s->done == s->queued) break; /* stop, nothing left */
        bucket b = s->queue[s->done];
        int failed = s->status != TGA_OK;
        pthread_mutex_unlock(&s->lock);
        /* after a failure the rest are skipped: finish() reports it and the job ends */
        if (!failed) record(s, reduce(s, b));
        pthread_mutex_lock(&s->lock);
        s->done++;
        pthread_cond_broadcast(&s->progress);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

tga_status tga_bucket_sync_create(tga_bucket_sync **out, float *grads, size_t n, size_t bucket_floats, int device,
                                  int sharded) {
    *out = NULL;
    tga_bucket_sync *s = calloc(1, sizeof *s);
    if (!s) return tga_error(TGA_ERR_NOMEM, "bucketed gradient sync: out of memory");
    s->grads = grads;
    s->n = n;
    s->bucket_floats = bucket_floats ? bucket_floats : 1;
    s->device = device;
    s->sharded = sharded && tga_dist_world() > 1;
    s->threaded = !device && tga_dist_world() > 1 && tga_dist_thread_collectives();
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->progress, NULL);
    if (s->threaded && pthread_create(&s->thread, NULL, comm_main, s) != 0) {
        s->threaded = 0; /* no thread to join */
        tga_bucket_sync_free(s);
        return tga_error(TGA_ERR_DIST, "bucketed gradient sync: cannot start the communication thread");
    }
    *out = s;
    return TGA_OK;
}

void tga_bucket_sync_free(tga_bucket_sync *s) {
    if (!s) return;
    if (s->threaded) {
        pthread_mutex_lock(&s->lock);
        s->stop = 1;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
    }
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->progress);
    pthread_mutex_destroy(&s->lock);
    free(s->queue);
    free(s);
}

/* Hands a bucket on: the device stream and the thread start it now; without either, finish() runs it. */
static void send_bucket(tga_bucket_sync *s, bucket b) {
    if (b.lo == b.hi) return;
    pthread_mutex_lock(&s->lock);
    if (s->queued == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        bucket *q = realloc(s->queue, sizeof *q * (size_t)cap);
        if (!q) {
            pthread_mutex_unlock(&s->lock);
            record(s, tga_error(TGA_ERR_NOMEM, "bucketed gradient sync: out of memory for the bucket list"));
            return;
        }
        s->queue = q;
        s->cap = cap;
    }
    s->queue[s->queued++] = b;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    if (s->device) record(s, reduce(s, b));
}

void tga_bucket_sync_ready(tga_bucket_sync *s, size_t lo, size_t hi) {
    bucket *p = &s->pending;
    if (p->lo == p->hi) {
        *p = (bucket){lo, hi};
    } else if (hi == p->lo) { /* the usual case: the backward pass walks the layers downwards */
        p->lo = lo;
    } else if (lo == p->hi) {
        p->hi = hi;
    } else {
        send_bucket(s, *p);
        *p = (bucket){lo, hi};
    }
    if (p->hi - p->lo >= s->bucket_floats) {
        send_bucket(s, *p);
        *p = (bucket){0, 0};
    }
}

tga_status tga_bucket_sync_finish(tga_bucket_sync *s) {
    send_bucket(s, s->pending);
    s->pending = (bucket){0, 0};
    double t0 = now_ms();
    if (s->device) {
        record(s, tga_dist_device_wait("gradient buckets"));
    } else if (s->threaded) {
        pthread_mutex_lock(&s->lock);
        while (s->done < s->queued) pthread_cond_wait(&s->progress, &s->lock);
        pthread_mutex_unlock(&s->lock);
    } else {
        for (; s->done < s->queued; s->done++)
            if (s->status == TGA_OK) record(s, reduce(s, s->queue[s->done]));
    }
    s->last_wait_ms = now_ms() - t0;
    /* the thread waits on these under the lock: reset them under it too */
    pthread_mutex_lock(&s->lock);
    s->last_buckets = s->queued;
    tga_status st = s->status;
    char message[sizeof s->message];
    memcpy(message, s->message, sizeof message);
    s->queued = s->done = 0;
    s->status = TGA_OK;
    pthread_mutex_unlock(&s->lock);
    if (st != TGA_OK) return tga_error(st, "%s", message);
    return TGA_OK;
}

int tga_bucket_sync_last_buckets(const tga_bucket_sync *s) { return s->last_buckets; }
double tga_bucket_sync_last_wait_ms(const tga_bucket_sync *s) { return s->last_wait_ms; }
