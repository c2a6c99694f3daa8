/* The training data loader (loader.h says what it promises; this file says how). One step is built
 * by one thread at a time -- the prefetch thread or, when nothing was prefetched for the wanted
 * step, the caller -- into the one of two step buffers that the caller is not holding. */
#define _POSIX_C_SOURCE 200809L /* strdup */

#include "trainer/loader.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/rng.h"
#include "trainer/shard.h"

#define MAX_MICRO_BATCH 65536
#define MAX_GRAD_ACCUM 65536
#define MAX_WORLD_SIZE (1 << 20)
#define ERROR_CAP 2048 /* error.c keeps 2048 characters of a message */

/* ---- the shards of a data path ------------------------------------------------------------------ */

typedef struct {
    uint64_t count;
    char **paths;
    tga_shard_reader **readers;
    uint64_t *first; /* [count + 1]: global index of each shard's first sample; first[count] = n */
    int32_t patches_per_image, feature_dim;
} shard_set;

static void shard_set_free(shard_set *set) {
    for (uint64_t k = 0; k < set->count; k++) {
        if (set->readers) tga_shard_reader_close(set->readers[k]);
        free(set->paths[k]);
    }
    free(set->paths);
    free(set->readers);
    free(set->first);
    memset(set, 0, sizeof *set);
}

static bool is_shard_name(const char *name) {
    size_t n = strlen(name);
    return n > 5 && strcmp(name + n - 5, ".tgas") == 0;
}

static int compare_paths(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static tga_status add_path(shard_set *set, size_t *cap, const char *dir, const char *name) {
    if (set->count == *cap) {
        size_t bigger = *cap ? 2 * *cap : 16;
        char **paths = realloc(set->paths, bigger * sizeof *paths);
        if (!paths)
            return tga_error(TGA_ERR_NOMEM, "%s: no memory for the list of shards", *dir ? dir : name);
        set->paths = paths;
        *cap = bigger;
    }
    size_t bytes = strlen(dir) + strlen(name) + 2;
    char *path = malloc(bytes);
    if (!path) return tga_error(TGA_ERR_NOMEM, "%s: no memory for the list of shards", *dir ? dir : name);
    const char *separator = !*dir || dir[strlen(dir) - 1] == '/' ? "" : "/";
    snprintf(path, bytes, "%s%s%s", dir, separator, name);
    set->paths[set->count++] = path;
    return TGA_OK;
}

/* Every *.tgas of the directory, in byte order of the names (locale-independent), which fixes the
 * global sample index. */
static tga_status list_directory(shard_set *set, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return tga_error(TGA_ERR_IO, "cannot list the data directory %s: %s", dir, strerror(errno));
    size_t cap = 0;
    tga_status st = TGA_OK;
    for (struct dirent *e = readdir(d); e && st == TGA_OK; e = readdir(d))
        if (is_shard_name(e->d_name)) st = add_path(set, &cap, dir, e->d_name);
    closedir(d);
    if (st != TGA_OK) return st;
    if (set->count == 0)
        return tga_error(TGA_ERR_IO, "data directory %s holds no *.tgas shard (did `tga prep` finish?)", dir);
    qsort(set->paths, set->count, sizeof *set->paths, compare_paths);
    return TGA_OK;
}

static tga_status list_shards(shard_set *set, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return tga_error(TGA_ERR_IO, "cannot open the data path %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return list_directory(set, path);
    size_t cap = 0;
    return add_path(set, &cap, "", path);
}

/* Image shards share one (P, Dv); text-only shards (0, 0) fit with any. `image_shard` is the
 * first image shard seen, to name it in a mismatch. */
static tga_status merge_layout(shard_set *set, uint64_t k, uint64_t *image_shard) {
    tga_shard_layout layout = tga_shard_reader_layout(set->readers[k]);
    if (layout.patches_per_image == 0) return TGA_OK;
    if (set->patches_per_image == 0) {
        set->patches_per_image = layout.patches_per_image;
        set->feature_dim = layout.feature_dim;
        *image_shard = k;
        return TGA_OK;
    }
    if (layout.patches_per_image != set->patches_per_image || layout.feature_dim != set->feature_dim)
        return tga_error(TGA_ERR_FORMAT,
                         "%s has images of P = %d patches x Dv = %d, but %s has P = %d x Dv = %d (the image "
                         "shards of one data path must share P and Dv; text-only shards may mix with them)",
                         set->paths[k], layout.patches_per_image, layout.feature_dim,
                         set->paths[*image_shard], set->patches_per_image, set->feature_dim);
    return TGA_OK;
}

static tga_status open_shards(shard_set *set, const char *path) {
    TGA_TRY(list_shards(set, path));
    set->readers = calloc(set->count, sizeof *set->readers);
    set->first = calloc(set->count + 1, sizeof *set->first);
    if (!set->readers || !set->first)
        return tga_error(TGA_ERR_NOMEM, "%s: no memory for the shard readers", path);
    uint64_t image_shard = 0;
    for (uint64_t k = 0; k < set->count; k++) {
        TGA_TRY(tga_shard_reader_open(&set->readers[k], set->paths[k]));
        TGA_TRY(merge_layout(set, k, &image_shard));
        set->first[k + 1] = set->first[k] + tga_shard_reader_count(set->readers[k]);
    }
    if (set->first[set->count] == 0)
        return tga_error(TGA_ERR_FORMAT, "data path %s holds no sample (%" PRIu64 " empty shard(s))", path,
                         set->count);
    return TGA_OK;
}

/* The shard holding global sample g: the last one whose first sample is at or before g (empty shards
 * share their first index with the next one and are passed over). */
static uint64_t shard_of(const shard_set *set, uint64_t g) {
    uint64_t lo = 0, hi = set->count; /* first[lo] <= g < first[hi] */
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (set->first[mid] <= g)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static tga_shard_stats stats_of(const shard_set *set, uint64_t g) {
    uint64_t k = shard_of(set, g);
    return tga_shard_reader_stats(set->readers[k], g - set->first[k]);
}

/* ---- step buffers ------------------------------------------------------------------------------- */

/* Writable views of one micro-batch's arrays (tga_batch holds the same pointers as const). */
typedef struct {
    float *features;
    int32_t *input_ids, *labels, *cap_ids, *image_sample, *image_start;
    int32_t *lengths, *ret_start, *ret_len, *cap_lengths, *cap_start, *cap_len;
    uint8_t *tox;
} micro_arrays;

typedef struct {
    int B, T, Tc, n_images;
} micro_shape;

typedef struct {
    tga_loader_step step;
    tga_batch *micro;       /* [grad_accum] */
    void **blocks;          /* [grad_accum]: the one allocation behind each micro-batch's arrays */
    size_t *block_bytes;    /* [grad_accum] */
    uint64_t *sample_index; /* [grad_accum x micro_batch] */
    tga_status status;      /* of the last build into this buffer */
    char error[ERROR_CAP];  /* its message, when the prefetch thread built it */
} step_buffer;

static void step_buffer_free(step_buffer *b, int grad_accum) {
    for (int i = 0; b->blocks && i < grad_accum; i++)
        free(b->blocks[i]);
    free(b->blocks);
    free(b->block_bytes);
    free(b->micro);
    free(b->sample_index);
}

static tga_status step_buffer_init(step_buffer *b, int grad_accum, int micro_batch) {
    b->micro = calloc((size_t)grad_accum, sizeof *b->micro);
    b->blocks = calloc((size_t)grad_accum, sizeof *b->blocks);
    b->block_bytes = calloc((size_t)grad_accum, sizeof *b->block_bytes);
    b->sample_index = calloc((size_t)grad_accum * (size_t)micro_batch, sizeof *b->sample_index);
    if (!b->micro || !b->blocks || !b->block_bytes || !b->sample_index)
        return tga_error(TGA_ERR_NOMEM, "loader: no memory for %d micro-batches", grad_accum);
    return TGA_OK;
}

/* ---- the loader --------------------------------------------------------------------------------- */

typedef enum { JOB_IDLE, JOB_QUEUED, JOB_RUNNING, JOB_DONE } job_state;

struct tga_loader {
    tga_loader_config config; /* config.path points at `path` */
    char *path;
    shard_set shards;
    tga_loader_info info;
    uint64_t *order; /* the permutation of order_epoch (shuffle on only) */
    uint64_t order_epoch;
    bool order_valid;
    uint64_t next_step; /* global step of the next step to be consumed: the position */
    step_buffer buffers[2];
    int held; /* the buffer the caller holds (its batches stay valid until the next call) */
    /* prefetch: the worker builds job_step into buffers[1 - held] */
    pthread_t worker;
    bool worker_started, stop;
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    job_state job;
    uint64_t job_step;
};

/* ---- order -------------------------------------------------------------------------------------- */

/* floor(a * b / 2^64), from 32-bit halves (no 128-bit type in C17). */
static uint64_t mul_high(uint64_t a, uint64_t b) {
    uint64_t a_lo = (uint32_t)a, a_hi = a >> 32, b_lo = (uint32_t)b, b_hi = b >> 32;
    uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
    uint64_t middle = (lo_lo >> 32) + (uint32_t)hi_lo + lo_hi;
    return hi_hi + (hi_lo >> 32) + (middle >> 32);
}

/* Fisher-Yates keyed by (seed, epoch) alone (loader.h gives the exact draws), so every rank, every
 * world size and every resumed run agree on the order. */
static void shuffle_epoch(tga_loader *l, uint64_t epoch) {
    uint64_t n = l->info.n_samples;
    tga_rng_stream stream = tga_rng_stream_make(l->config.seed, TGA_RNG_SHUFFLE, epoch);
    for (uint64_t i = 0; i < n; i++)
        l->order[i] = i;
    uint32_t words[4];
    for (uint64_t k = 0; k + 1 < n; k++) {
        if (k % 2 == 0) tga_rng_block(&stream, k / 2, words);
        uint64_t draw = (uint64_t)words[2 * (k % 2)] | (uint64_t)words[2 * (k % 2) + 1] << 32;
        uint64_t i = n - 1 - k, j = mul_high(draw, i + 1);
        uint64_t swap = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = swap;
    }
    l->order_epoch = epoch;
    l->order_valid = true;
}

static uint64_t sample_at(tga_loader *l, uint64_t epoch, uint64_t position) {
    if (!l->config.shuffle) return position;
    if (!l->order_valid || l->order_epoch != epoch) shuffle_epoch(l, epoch);
    return l->order[position];
}

/* ---- one micro-batch ---------------------------------------------------------------------------- */

static micro_shape shape_from_index(const tga_loader *l, const uint64_t *samples, int B) {
    micro_shape shape = {B, 0, 0, 0};
    for (int b = 0; b < B; b++) {
        tga_shard_stats s = stats_of(&l->shards, samples[b]);
        shape.T = s.n_tokens > shape.T ? s.n_tokens : shape.T;
        shape.Tc = s.n_caption_tokens > shape.Tc ? s.n_caption_tokens : shape.Tc;
        shape.n_images += s.n_images;
    }
    return shape;
}

static size_t feature_count(const tga_loader *l, const micro_shape *s) {
    return (size_t)s->n_images * (size_t)l->info.patches_per_image * (size_t)l->info.feature_dim;
}

/* Every array is 4-byte aligned: floats and int32s first, the tox bytes last. */
static size_t micro_bytes(const tga_loader *l, const micro_shape *s) {
    size_t ints = 2 * (size_t)s->B * (size_t)s->T + (size_t)s->B * (size_t)s->Tc + 2 * (size_t)s->n_images +
                  6 * (size_t)s->B;
    return 4 * (feature_count(l, s) + ints) + (size_t)s->B;
}

static micro_arrays carve(const tga_loader *l, void *block, const micro_shape *s) {
    micro_arrays a;
    a.features = block;
    int32_t *p = (int32_t *)(a.features + feature_count(l, s));
    size_t bt = (size_t)s->B * (size_t)s->T;
    a.input_ids = p, p += bt;
    a.labels = p, p += bt;
    a.cap_ids = p, p += (size_t)s->B * (size_t)s->Tc;
    a.image_sample = p, p += s->n_images;
    a.image_start = p, p += s->n_images;
    a.lengths = p, p += s->B;
    a.ret_start = p, p += s->B;
    a.ret_len = p, p += s->B;
    a.cap_lengths = p, p += s->B;
    a.cap_start = p, p += s->B;
    a.cap_len = p, p += s->B;
    a.tox = (uint8_t *)p;
    return a;
}

static tga_batch batch_view(const micro_arrays *a, const micro_shape *s) {
    return (tga_batch){.B = s->B,
                       .T = s->T,
                       .input_ids = a->input_ids,
                       .labels = a->labels,
                       .lengths = a->lengths,
                       .n_images = s->n_images,
                       .image_features = a->features,
                       .image_sample = a->image_sample,
                       .image_start = a->image_start,
                       .ret_start = a->ret_start,
                       .ret_len = a->ret_len,
                       .tox = a->tox,
                       .Tc = s->Tc,
                       .cap_ids = a->cap_ids,
                       .cap_lengths = a->cap_lengths,
                       .cap_start = a->cap_start,
                       .cap_len = a->cap_len};
}

/* IEEE binary16 bits to float, exactly (every half value is a float). */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    if (exponent == 0) {
        float magnitude = ldexpf((float)mantissa, -24); /* zero and subnormals */
        return sign ? -magnitude : magnitude;
    }
    uint32_t bits = sign | (exponent == 0x1f ? 0xffu << 23 : (exponent + 112) << 23) | mantissa << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void convert_features(float *out, const void *features, size_t n, tga_shard_dtype dtype) {
    if (dtype == TGA_SHARD_F32) {
        if (n > 0) memcpy(out, features, n * sizeof(float)); /* features is NULL without images */
        return;
    }
    const unsigned char *bytes = features;
    for (size_t k = 0; k < n; k++) {
        uint16_t h;
        memcpy(&h, bytes + 2 * k, 2);
        out[k] = half_to_float(h);
    }
}

static tga_status check_ids(const tga_loader *l, const char *where, const char *array, const int32_t *ids,
                            int32_t n, int32_t skip) {
    int32_t vocab = l->config.vocab_size;
    for (int32_t t = 0; t < n; t++)
        if (ids[t] != skip && ids[t] >= vocab)
            return tga_error(TGA_ERR_FORMAT,
                             "%s: %s[%d] = %d is outside the model's vocabulary [0, %d) (was the shard "
                             "prepared with another tokenizer?)",
                             where, array, t, ids[t], vocab);
    return TGA_OK;
}

/* The shard checked the signs (-200 only on image positions, -100 only as a label); the upper bound
 * depends on the model, so it is checked here. */
static tga_status check_vocabulary(const tga_loader *l, uint64_t shard, uint64_t local,
                                   const tga_shard_sample *s) {
    char where[ERROR_CAP];
    snprintf(where, sizeof where, "%s: sample %" PRIu64 " (id '%s')", l->shards.paths[shard], local, s->id);
    TGA_TRY(check_ids(l, where, "input_ids", s->input_ids, s->n_tokens, TGA_IMAGE_TOKEN_ID));
    TGA_TRY(check_ids(l, where, "labels", s->labels, s->n_tokens, TGA_IGNORE_INDEX));
    return check_ids(l, where, "cap_ids", s->cap_ids, s->n_caption_tokens, -1);
}

static void fill_row(int32_t *row, const int32_t *values, int32_t n, int32_t width, int32_t pad) {
    if (n > 0) memcpy(row, values, (size_t)n * sizeof *row);
    for (int32_t t = n; t < width; t++)
        row[t] = pad;
}

/* Row b of the micro-batch; its images go to slots [*image, *image + n_images). */
static void pack_sample(const tga_loader *l, const micro_arrays *a, const micro_shape *shape, int b,
                        const tga_shard_sample *s, tga_shard_dtype dtype, int *image) {
    size_t row = (size_t)b * (size_t)shape->T, cap_row = (size_t)b * (size_t)shape->Tc;
    fill_row(a->input_ids + row, s->input_ids, s->n_tokens, shape->T, l->config.pad_id);
    fill_row(a->labels + row, s->labels, s->n_tokens, shape->T, TGA_IGNORE_INDEX);
    fill_row(a->cap_ids + cap_row, s->cap_ids, s->n_caption_tokens, shape->Tc, l->config.pad_id);
    a->lengths[b] = s->n_tokens;
    a->cap_lengths[b] = s->n_caption_tokens;
    a->ret_start[b] = s->retrieved.start;
    a->ret_len[b] = s->retrieved.length;
    a->cap_start[b] = s->caption.start;
    a->cap_len[b] = s->caption.length;
    a->tox[b] = s->tox;
    size_t per_image = (size_t)l->info.patches_per_image * (size_t)l->info.feature_dim;
    convert_features(a->features + (size_t)*image * per_image, s->features, (size_t)s->n_images * per_image,
                     dtype);
    for (int32_t i = 0; i < s->n_images; i++, (*image)++) {
        a->image_sample[*image] = b;
        a->image_start[*image] = s->images[i].start;
    }
}

static tga_status read_and_pack(const tga_loader *l, const micro_arrays *a, const micro_shape *shape, int b,
                                uint64_t g, int *image) {
    const shard_set *set = &l->shards;
    uint64_t k = shard_of(set, g), local = g - set->first[k];
    tga_shard_sample s;
    TGA_TRY(tga_shard_reader_read(set->readers[k], local, &s));
    tga_status st = check_vocabulary(l, k, local, &s);
    if (st == TGA_OK)
        pack_sample(l, a, shape, b, &s, tga_shard_reader_layout(set->readers[k]).feature_dtype, image);
    tga_shard_sample_free(&s);
    return st;
}

/* Sizes come from the index stats, which the reader checks against each sample it decodes, so the
 * batch is laid out before any frame is read and only one sample is held at a time. */
static tga_status build_micro(const tga_loader *l, step_buffer *buf, int i, const uint64_t *samples, int B) {
    micro_shape shape = shape_from_index(l, samples, B);
    size_t bytes = micro_bytes(l, &shape);
    if (bytes > buf->block_bytes[i]) {
        void *bigger = realloc(buf->blocks[i], bytes);
        if (!bigger) return tga_error(TGA_ERR_NOMEM, "loader: no memory for a %zu-byte micro-batch", bytes);
        buf->blocks[i] = bigger;
        buf->block_bytes[i] = bytes;
    }
    micro_arrays arrays = carve(l, buf->blocks[i], &shape);
    int image = 0;
    for (int b = 0; b < B; b++)
        TGA_TRY(read_and_pack(l, &arrays, &shape, b, samples[b], &image));
    buf->micro[i] = batch_view(&arrays, &shape);
    return TGA_OK;
}

/* ---- one step ----------------------------------------------------------------------------------- */

/* Global micro-batch j covers positions [begin + j*m, +m) of the step, cut at `end`; this rank's
 * are j = rank*a .. rank*a + a-1. The denominators count the whole global batch from the index. */
static tga_status build_step(tga_loader *l, step_buffer *buf, uint64_t global_step) {
    const tga_loader_config *c = &l->config;
    uint64_t epoch = global_step / l->info.steps_per_epoch, step = global_step % l->info.steps_per_epoch;
    uint64_t begin = step * l->info.global_batch, end = begin + l->info.global_batch;
    end = end < l->info.n_samples ? end : l->info.n_samples;
    tga_loader_step *out = &buf->step;
    *out = (tga_loader_step){.epoch = epoch,
                             .step_in_epoch = step,
                             .global_step = global_step,
                             .n_samples_global = end - begin,
                             .micro = buf->micro,
                             .micro_batch = c->micro_batch,
                             .sample_index = buf->sample_index};
    for (uint64_t p = begin; p < end; p++)
        out->n_targets_global += (uint64_t)stats_of(&l->shards, sample_at(l, epoch, p)).n_targets;
    uint64_t m = (uint64_t)c->micro_batch;
    for (int i = 0; i < c->grad_accum; i++) {
        uint64_t first = begin + ((uint64_t)c->rank * (uint64_t)c->grad_accum + (uint64_t)i) * m;
        if (first >= end) break;
        int B = (int)(end - first < m ? end - first : m);
        uint64_t *samples = buf->sample_index + (size_t)i * m;
        for (int b = 0; b < B; b++)
            samples[b] = sample_at(l, epoch, first + (uint64_t)b);
        TGA_TRY(build_micro(l, buf, i, samples, B));
        out->n_micro = i + 1;
    }
    return TGA_OK;
}

/* ---- prefetch ----------------------------------------------------------------------------------- */

/* The worker's error message lives in its own thread; the buffer carries it to the caller. */
static void *prefetch_main(void *arg) {
    tga_loader *l = arg;
    pthread_mutex_lock(&l->mutex);
    for (;;) {
        while (!l->stop && l->job != JOB_QUEUED)
            pthread_cond_wait(&l->changed, &l->mutex);
        if (l->stop) break;
        l->job = JOB_RUNNING;
        step_buffer *buf = &l->buffers[1 - l->held];
        uint64_t step = l->job_step;
        pthread_mutex_unlock(&l->mutex);
        tga_error_clear();
        buf->status = build_step(l, buf, step);
        snprintf(buf->error, sizeof buf->error, "%s", buf->status == TGA_OK ? "" : tga_error_message());
        pthread_mutex_lock(&l->mutex);
        l->job = JOB_DONE;
        pthread_cond_broadcast(&l->changed);
    }
    pthread_mutex_unlock(&l->mutex);
    return NULL;
}

/* Waits for the worker to be idle; true if it has just built `step` (into buffers[1 - held]). */
static bool collect_prefetched(tga_loader *l, uint64_t step) {
    pthread_mutex_lock(&l->mutex);
    while (l->job == JOB_QUEUED || l->job == JOB_RUNNING)
        pthread_cond_wait(&l->changed, &l->mutex);
    bool ready = l->job == JOB_DONE && l->job_step == step;
    l->job = JOB_IDLE;
    pthread_mutex_unlock(&l->mutex);
    return ready;
}

static void queue_prefetch(tga_loader *l, uint64_t step) {
    pthread_mutex_lock(&l->mutex);
    l->job_step = step;
    l->job = JOB_QUEUED;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->mutex);
}

static tga_status start_prefetch(tga_loader *l) {
    if (pthread_mutex_init(&l->mutex, NULL) != 0 || pthread_cond_init(&l->changed, NULL) != 0)
        return tga_error(TGA_ERR_INTERNAL, "loader: cannot set up the prefetch thread's lock");
    int err = pthread_create(&l->worker, NULL, prefetch_main, l);
    if (err != 0)
        return tga_error(TGA_ERR_INTERNAL, "loader: cannot start the prefetch thread: %s", strerror(err));
    l->worker_started = true;
    return TGA_OK;
}

static void stop_prefetch(tga_loader *l) {
    if (!l->worker_started) return;
    pthread_mutex_lock(&l->mutex);
    l->stop = true;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->mutex);
    pthread_join(l->worker, NULL);
    pthread_cond_destroy(&l->changed);
    pthread_mutex_destroy(&l->mutex);
    l->worker_started = false;
}

/* ---- open --------------------------------------------------------------------------------------- */

static tga_status check_config(const tga_loader_config *c) {
    if (!c->path || !*c->path) return tga_error(TGA_ERR_CONFIG, "loader: no data path given");
    if (c->vocab_size < 1 || c->pad_id < 0 || c->pad_id >= c->vocab_size)
        return tga_error(TGA_ERR_CONFIG,
                         "loader (%s): pad id %d with a vocabulary of %d (expected 0 <= pad id < vocab)",
                         c->path, c->pad_id, c->vocab_size);
    if (c->micro_batch < 1 || c->micro_batch > MAX_MICRO_BATCH || c->grad_accum < 1 ||
        c->grad_accum > MAX_GRAD_ACCUM || c->world_size < 1 || c->world_size > MAX_WORLD_SIZE)
        return tga_error(
            TGA_ERR_CONFIG,
            "loader (%s): micro_batch %d, grad_accum %d, world size %d (expected 1..%d, 1..%d, 1..%d)",
            c->path, c->micro_batch, c->grad_accum, c->world_size, MAX_MICRO_BATCH, MAX_GRAD_ACCUM,
            MAX_WORLD_SIZE);
    if (c->rank < 0 || c->rank >= c->world_size)
        return tga_error(TGA_ERR_CONFIG, "loader (%s): rank %d of a world of %d", c->path, c->rank,
                         c->world_size);
    if ((c->mode != TGA_LOADER_TRAIN && c->mode != TGA_LOADER_EVAL) || (c->shuffle != 0 && c->shuffle != 1) ||
        (c->prefetch != 0 && c->prefetch != 1))
        return tga_error(TGA_ERR_CONFIG,
                         "loader (%s): mode %d, shuffle %d, prefetch %d (expected 0 or 1 each)", c->path,
                         (int)c->mode, c->shuffle, c->prefetch);
    return TGA_OK;
}

static tga_status fill_info(tga_loader *l) {
    tga_loader_info *info = &l->info;
    const tga_loader_config *c = &l->config;
    info->n_samples = l->shards.first[l->shards.count];
    info->n_shards = l->shards.count;
    info->global_batch = (uint64_t)c->micro_batch * (uint64_t)c->grad_accum * (uint64_t)c->world_size;
    info->patches_per_image = l->shards.patches_per_image;
    info->feature_dim = l->shards.feature_dim;
    uint64_t G = info->global_batch;
    info->steps_per_epoch = c->mode == TGA_LOADER_TRAIN ? info->n_samples / G : (info->n_samples + G - 1) / G;
    if (info->steps_per_epoch == 0)
        return tga_error(TGA_ERR_CONFIG,
                         "loader: %s holds %" PRIu64 " samples, fewer than one global batch of %" PRIu64
                         " (micro_batch %d x grad_accum %d x world size %d)",
                         c->path, info->n_samples, G, c->micro_batch, c->grad_accum, c->world_size);
    for (uint64_t k = 0; k < l->shards.count; k++)
        for (uint64_t i = 0; i < tga_shard_reader_count(l->shards.readers[k]); i++) {
            tga_shard_stats s = tga_shard_reader_stats(l->shards.readers[k], i);
            info->max_tokens = s.n_tokens > info->max_tokens ? s.n_tokens : info->max_tokens;
            info->max_caption_tokens =
                s.n_caption_tokens > info->max_caption_tokens ? s.n_caption_tokens : info->max_caption_tokens;
            info->max_images = s.n_images > info->max_images ? s.n_images : info->max_images;
        }
    return TGA_OK;
}

static tga_status loader_setup(tga_loader *l) {
    TGA_TRY(open_shards(&l->shards, l->path));
    TGA_TRY(fill_info(l));
    if (l->config.shuffle) {
        l->order = malloc((size_t)l->info.n_samples * sizeof *l->order);
        if (!l->order)
            return tga_error(TGA_ERR_NOMEM, "loader: no memory for the order of %" PRIu64 " samples",
                             l->info.n_samples);
    }
    for (int k = 0; k < 2; k++)
        TGA_TRY(step_buffer_init(&l->buffers[k], l->config.grad_accum, l->config.micro_batch));
    return l->config.prefetch ? start_prefetch(l) : TGA_OK;
}

tga_status tga_loader_open(tga_loader **out, const tga_loader_config *config) {
    if (!out || !config) return tga_error(TGA_ERR_INTERNAL, "tga_loader_open: NULL argument");
    *out = NULL;
    TGA_TRY(check_config(config));
    tga_loader *l = calloc(1, sizeof *l);
    if (!l) return tga_error(TGA_ERR_NOMEM, "loader: no memory");
    l->config = *config;
    l->path = strdup(config->path);
    l->config.path = l->path;
    tga_status st = l->path ? loader_setup(l) : tga_error(TGA_ERR_NOMEM, "loader: no memory");
    if (st != TGA_OK) {
        tga_loader_close(l);
        return st;
    }
    *out = l;
    return TGA_OK;
}

void tga_loader_close(tga_loader *l) {
    if (!l) return;
    stop_prefetch(l);
    for (int k = 0; k < 2; k++)
        step_buffer_free(&l->buffers[k], l->config.grad_accum);
    shard_set_free(&l->shards);
    free(l->order);
    free(l->path);
    free(l);
}

/* ---- steps and positions ------------------------------------------------------------------------ */

tga_status tga_loader_next(tga_loader *l, tga_loader_step *out) {
    if (!l || !out) return tga_error(TGA_ERR_INTERNAL, "tga_loader_next: NULL argument");
    uint64_t step = l->next_step;
    step_buffer *buf = &l->buffers[1 - l->held];
    if (l->config.prefetch && collect_prefetched(l, step)) {
        if (buf->status != TGA_OK) return tga_error(buf->status, "%s", buf->error);
    } else {
        TGA_TRY(build_step(l, buf, step));
    }
    l->held = 1 - l->held;
    l->next_step = step + 1;
    *out = buf->step;
    if (l->config.prefetch) queue_prefetch(l, step + 1);
    return TGA_OK;
}

tga_loader_position tga_loader_tell(const tga_loader *l) {
    uint64_t per_epoch = l->info.steps_per_epoch;
    return (tga_loader_position){.epoch = l->next_step / per_epoch,
                                 .step_in_epoch = l->next_step % per_epoch,
                                 .global_step = l->next_step,
                                 .n_samples = l->info.n_samples,
                                 .global_batch = l->info.global_batch,
                                 .seed = l->config.seed,
                                 .shuffle = l->config.shuffle,
                                 .mode = (int32_t)l->config.mode};
}

static tga_status check_position(const tga_loader *l, const tga_loader_position *p) {
    const tga_loader_info *info = &l->info;
    const tga_loader_config *c = &l->config;
    if (p->n_samples != info->n_samples || p->global_batch != info->global_batch)
        return tga_error(TGA_ERR_CONFIG,
                         "loader: the saved data position is for %" PRIu64
                         " samples in global batches of %" PRIu64 ", but %s holds %" PRIu64
                         " samples and the global batch is %" PRIu64
                         " (resume with the same data and global batch)",
                         p->n_samples, p->global_batch, c->path, info->n_samples, info->global_batch);
    if (p->shuffle != c->shuffle || p->mode != (int32_t)c->mode || (c->shuffle && p->seed != c->seed))
        return tga_error(TGA_ERR_CONFIG,
                         "loader: the saved data position has shuffle %d, mode %d, seed %" PRIu64
                         "; this run has shuffle %d, mode %d, seed %" PRIu64 " (a different sample order)",
                         p->shuffle, p->mode, p->seed, c->shuffle, (int)c->mode, c->seed);
    if (p->global_step / info->steps_per_epoch != p->epoch ||
        p->global_step % info->steps_per_epoch != p->step_in_epoch)
        return tga_error(TGA_ERR_CONFIG,
                         "loader: the saved data position (epoch %" PRIu64 ", step %" PRIu64
                         ", global step %" PRIu64 ") is inconsistent with %" PRIu64 " steps per epoch",
                         p->epoch, p->step_in_epoch, p->global_step, info->steps_per_epoch);
    return TGA_OK;
}

tga_status tga_loader_seek(tga_loader *l, const tga_loader_position *position) {
    if (!l || !position) return tga_error(TGA_ERR_INTERNAL, "tga_loader_seek: NULL argument");
    TGA_TRY(check_position(l, position));
    if (l->config.prefetch) collect_prefetched(l, UINT64_MAX); /* drop whatever was built ahead */
    l->next_step = position->global_step;
    return TGA_OK;
}

tga_loader_info tga_loader_get_info(const tga_loader *l) { return l->info; }
