/* The chunk codec (zstd, optionally after a byte-plane split) and the tensor file container that
 * checkpoints are made of; the format is described in runtime/ckpt.h. */
#define _POSIX_C_SOURCE 200809L /* pread, strdup */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "runtime/ckpt.h"

static const unsigned char tensor_file_magic[8] = {'T', 'G', 'A', 'T', 'N', 'S', 'R', 0};
static const unsigned char tensor_file_end[8] = {'T', 'G', 'A', 'T', 'E', 'N', 'D', 0};
enum { TENSOR_FILE_VERSION = 1, HEADER_BYTES = 16, FOOTER_BYTES = 40, MAX_NAME = 255 };

/* A frame's size is stored as u32: chunks of at most 2^28 values of at most 8 bytes stay below
 * that even incompressible. */
#define MAX_CHUNK_VALUES ((int64_t)1 << 28)
/* An index entry costs 4 bytes per frame; this bounds the allocation a corrupt footer can ask for
 * (a 2^40-value tensor in default chunks needs 4 MiB). */
#define MAX_INDEX_BYTES ((uint64_t)256 << 20)

tga_ckpt_codec tga_ckpt_default_codec(void) {
    return (tga_ckpt_codec){
        .kind = TGA_CKPT_ZSTD_PLANES, .level = 1, .chunk_values = TGA_CKPT_DEFAULT_CHUNK_VALUES};
}

static const struct {
    tga_ckpt_dtype dtype;
    size_t size;
    const char *name;
} dtypes[] = {{TGA_CKPT_F32, 4, "f32"}, {TGA_CKPT_BF16, 2, "bf16"}, {TGA_CKPT_F16, 2, "f16"},
              {TGA_CKPT_I32, 4, "i32"}, {TGA_CKPT_I64, 8, "i64"},   {TGA_CKPT_U8, 1, "u8"}};

size_t tga_ckpt_dtype_size(tga_ckpt_dtype dtype) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].dtype == dtype) return dtypes[i].size;
    return 0;
}

const char *tga_ckpt_dtype_name(tga_ckpt_dtype dtype) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].dtype == dtype) return dtypes[i].name;
    return "unknown dtype";
}

/* ---- the chunk codec ------------------------------------------------------------------------- */

struct tga_ckpt_coder {
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    unsigned char *scratch; /* planes before compression / after decompression */
    size_t scratch_cap;
};

tga_status tga_ckpt_coder_create(tga_ckpt_coder **c) {
    *c = calloc(1, sizeof **c);
    if (*c && ((*c)->cctx = ZSTD_createCCtx()) && ((*c)->dctx = ZSTD_createDCtx())) return TGA_OK;
    tga_ckpt_coder_free(*c);
    *c = NULL;
    return tga_error(TGA_ERR_NOMEM, "no memory for zstd contexts");
}

void tga_ckpt_coder_free(tga_ckpt_coder *c) {
    if (!c) return;
    ZSTD_freeCCtx(c->cctx);
    ZSTD_freeDCtx(c->dctx);
    free(c->scratch);
    free(c);
}

static tga_status ensure_scratch(tga_ckpt_coder *c, size_t bytes) {
    if (bytes <= c->scratch_cap) return TGA_OK;
    unsigned char *grown = realloc(c->scratch, bytes);
    if (!grown) return tga_error(TGA_ERR_NOMEM, "no memory for a %zu-byte codec buffer", bytes);
    c->scratch = grown;
    c->scratch_cap = bytes;
    return TGA_OK;
}

size_t tga_ckpt_frame_bound(size_t raw_bytes) { return ZSTD_compressBound(raw_bytes); }

/* planes[p * values + i] = src[i * width + p]. Inlined with a constant width per dtype size, so
 * the compiler can turn the inner loop into shuffles. */
static inline void split_planes_width(unsigned char *restrict planes, const unsigned char *restrict src,
                                      size_t values, size_t width) {
    for (size_t i = 0; i < values; i++)
        for (size_t p = 0; p < width; p++)
            planes[p * values + i] = src[i * width + p];
}

static void split_planes(unsigned char *planes, const unsigned char *src, size_t values, size_t width) {
    switch (width) {
    case 2:
        split_planes_width(planes, src, values, 2);
        break;
    case 4:
        split_planes_width(planes, src, values, 4);
        break;
    default:
        split_planes_width(planes, src, values, 8);
        break;
    }
}

/* out[(i - first) * width + p] = planes[p * values + i] for i in [first, first + count). */
static inline void merge_planes_width(unsigned char *restrict out, const unsigned char *restrict planes,
                                      size_t values, size_t first, size_t count, size_t width) {
    for (size_t i = 0; i < count; i++)
        for (size_t p = 0; p < width; p++)
            out[i * width + p] = planes[p * values + first + i];
}

static void merge_planes(unsigned char *out, const unsigned char *planes, size_t values, size_t first,
                         size_t count, size_t width) {
    switch (width) {
    case 2:
        merge_planes_width(out, planes, values, first, count, 2);
        break;
    case 4:
        merge_planes_width(out, planes, values, first, count, 4);
        break;
    default:
        merge_planes_width(out, planes, values, first, count, 8);
        break;
    }
}

static bool uses_planes(tga_ckpt_codec_kind kind, size_t elem_size) {
    return kind == TGA_CKPT_ZSTD_PLANES && elem_size > 1;
}

/* `what` names the file or frame being written, for the message. */
static tga_status check_codec(tga_ckpt_codec codec, const char *what) {
    if (codec.kind != TGA_CKPT_ZSTD && codec.kind != TGA_CKPT_ZSTD_PLANES)
        return tga_error(TGA_ERR_INTERNAL, "%s: unknown checkpoint codec %d", what, (int)codec.kind);
    if (codec.level < ZSTD_minCLevel() || codec.level > ZSTD_maxCLevel())
        return tga_error(TGA_ERR_CONFIG, "%s: zstd level %d is outside %d..%d", what, codec.level,
                         ZSTD_minCLevel(), ZSTD_maxCLevel());
    if (codec.chunk_values < 0 || codec.chunk_values > MAX_CHUNK_VALUES)
        return tga_error(TGA_ERR_CONFIG, "%s: chunks of %" PRId64 " values (1..%" PRId64 " allowed)", what,
                         codec.chunk_values, MAX_CHUNK_VALUES);
    return TGA_OK;
}

tga_status tga_ckpt_encode_chunk(tga_ckpt_coder *c, tga_ckpt_codec codec, size_t elem_size, const void *src,
                                 size_t values, void *frame, size_t frame_cap, size_t *frame_bytes) {
    TGA_TRY(check_codec(codec, "zstd chunk"));
    size_t raw_bytes = values * elem_size;
    const void *input = src;
    if (uses_planes(codec.kind, elem_size)) {
        TGA_TRY(ensure_scratch(c, raw_bytes));
        split_planes(c->scratch, src, values, elem_size);
        input = c->scratch;
    }
    ZSTD_CCtx_reset(c->cctx, ZSTD_reset_session_and_parameters);
    size_t rc = ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, codec.level);
    if (!ZSTD_isError(rc)) rc = ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_checksumFlag, 1);
    if (!ZSTD_isError(rc)) rc = ZSTD_compress2(c->cctx, frame, frame_cap, input, raw_bytes);
    if (ZSTD_isError(rc))
        return tga_error(TGA_ERR_INTERNAL, "zstd compression of %zu bytes failed: %s", raw_bytes,
                         ZSTD_getErrorName(rc));
    *frame_bytes = rc;
    return TGA_OK;
}

/* RFC 8878 §3.1.1: magic 0xFD2FB528, then the frame header descriptor, whose bit 2 is the
 * Content_Checksum_flag. Checked here because an unchecksummed frame would decode silently. */
static bool frame_has_checksum(const unsigned char *frame, size_t frame_bytes) {
    static const unsigned char zstd_magic[4] = {0x28, 0xB5, 0x2F, 0xFD};
    return frame_bytes >= 5 && memcmp(frame, zstd_magic, 4) == 0 && (frame[4] & 0x04) != 0;
}

static tga_status check_frame(const void *frame, size_t frame_bytes, size_t raw_bytes, const char *what) {
    if (!frame_has_checksum(frame, frame_bytes))
        return tga_error(TGA_ERR_FORMAT, "%s: not a zstd frame with a content checksum", what);
    size_t framed = ZSTD_findFrameCompressedSize(frame, frame_bytes);
    if (ZSTD_isError(framed) || framed != frame_bytes)
        return tga_error(TGA_ERR_FORMAT, "%s: the %zu stored bytes are not exactly one zstd frame", what,
                         frame_bytes);
    unsigned long long content = ZSTD_getFrameContentSize(frame, frame_bytes);
    if (content != raw_bytes)
        return tga_error(TGA_ERR_FORMAT, "%s: the frame holds %llu bytes, expected %zu", what,
                         content == ZSTD_CONTENTSIZE_UNKNOWN ? 0ull : content, raw_bytes);
    return TGA_OK;
}

tga_status tga_ckpt_decode_chunk(tga_ckpt_coder *c, tga_ckpt_codec_kind kind, size_t elem_size,
                                 const void *frame, size_t frame_bytes, size_t values, size_t first,
                                 size_t count, void *out, const char *what) {
    if (first > values || count > values - first)
        return tga_error(TGA_ERR_INTERNAL, "%s: values [%zu, %zu) of a %zu-value chunk", what, first,
                         first + count, values);
    size_t raw_bytes = values * elem_size;
    TGA_TRY(check_frame(frame, frame_bytes, raw_bytes, what));
    bool whole = !uses_planes(kind, elem_size) && first == 0 && count == values;
    if (!whole) TGA_TRY(ensure_scratch(c, raw_bytes));
    void *dest = whole ? out : c->scratch;
    size_t rc = ZSTD_decompressDCtx(c->dctx, dest, raw_bytes, frame, frame_bytes);
    if (ZSTD_isError(rc) || rc != raw_bytes)
        return tga_error(TGA_ERR_FORMAT, "%s: corrupt zstd frame: %s", what,
                         ZSTD_isError(rc) ? ZSTD_getErrorName(rc) : "short content");
    if (uses_planes(kind, elem_size))
        merge_planes(out, c->scratch, values, first, count, elem_size);
    else if (!whole)
        memcpy(out, c->scratch + first * elem_size, count * elem_size);
    return TGA_OK;
}

/* ---- little-endian fields -------------------------------------------------------------------- */

typedef struct {
    unsigned char *data;
    size_t len, cap;
    bool failed; /* out of memory; checked once at the end */
} byte_buffer;

static void put_bytes(byte_buffer *b, const void *src, size_t n) {
    if (b->failed) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, src, n);
    b->len += n;
}

static void put_uint(byte_buffer *b, uint64_t v, int bytes) {
    unsigned char le[8];
    for (int i = 0; i < bytes; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    put_bytes(b, le, (size_t)bytes);
}

typedef struct {
    const unsigned char *data;
    size_t len, pos;
    bool short_read;
} byte_cursor;

static uint64_t get_uint(byte_cursor *c, int bytes) {
    if (c->len - c->pos < (size_t)bytes) {
        c->short_read = true;
        c->pos = c->len;
        return 0;
    }
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = (v << 8) | c->data[c->pos + (size_t)i];
    c->pos += (size_t)bytes;
    return v;
}

/* ---- tensor metadata checks (shared by the writer and the reader) ------------------------------ */

static bool valid_tensor_name(const char *name, size_t len) {
    if (len == 0 || len > MAX_NAME) return false;
    for (size_t i = 0; i < len; i++)
        if (name[i] <= ' ' || name[i] > '~') return false;
    return true;
}

/* Element count of a shape, or -1 when a dimension is negative or count * elem_size overflows. */
static int64_t shape_count(int ndim, const int64_t *shape, size_t elem_size) {
    int64_t count = 1, max_count = INT64_MAX / (int64_t)elem_size;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && count > max_count / shape[i])) return -1;
        count *= shape[i];
    }
    return count;
}

static uint64_t frame_count(int64_t count, int64_t chunk_values) {
    return (uint64_t)(count / chunk_values + (count % chunk_values != 0));
}

/* "[2, 3]" into out[cap]. */
static const char *format_shape(int ndim, const int64_t *shape, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (n < cap) snprintf(out + n, cap - n, "]");
    return out;
}

/* ---- writing tensor files -------------------------------------------------------------------- */

typedef struct {
    char *name;
    tga_ckpt_dtype dtype;
    int ndim;
    int64_t shape[TGA_CKPT_MAX_DIMS];
    uint64_t first_offset;
    uint32_t *frame_sizes;
    uint64_t n_frames;
} written_tensor;

struct tga_tensor_file_writer {
    tga_file_writer *file;
    tga_ckpt_codec codec;
    tga_ckpt_coder *coder;
    unsigned char *frame;
    size_t frame_cap;
    written_tensor *tensors;
    int n_tensors, cap_tensors;
    bool failed; /* an add failed part-way: the file cannot be finished */
};

static void free_written(written_tensor *t, int n) {
    for (int i = 0; i < n; i++) {
        free(t[i].name);
        free(t[i].frame_sizes);
    }
    free(t);
}

void tga_tensor_file_discard(tga_tensor_file_writer *tf) {
    if (!tf) return;
    tga_file_writer_discard(tf->file);
    tga_ckpt_coder_free(tf->coder);
    free(tf->frame);
    free_written(tf->tensors, tf->n_tensors);
    free(tf);
}

tga_status tga_tensor_file_create(tga_tensor_file_writer **tf, const char *path, tga_file_mode mode,
                                  tga_ckpt_codec codec) {
    *tf = NULL;
    TGA_TRY(check_codec(codec, path));
    if (codec.chunk_values == 0) codec.chunk_values = TGA_CKPT_DEFAULT_CHUNK_VALUES;
    tga_tensor_file_writer *w = calloc(1, sizeof *w);
    if (!w) return tga_error(TGA_ERR_NOMEM, "%s: no memory for a tensor file writer", path);
    w->codec = codec;
    w->frame_cap = tga_ckpt_frame_bound((size_t)codec.chunk_values * 8);
    tga_status st = tga_ckpt_coder_create(&w->coder);
    if (st == TGA_OK && !(w->frame = malloc(w->frame_cap)))
        st = tga_error(TGA_ERR_NOMEM, "%s: no memory for a %zu-byte frame buffer", path, w->frame_cap);
    if (st == TGA_OK) st = tga_file_writer_open(&w->file, path, mode);
    if (st == TGA_OK) {
        byte_buffer header = {0};
        put_bytes(&header, tensor_file_magic, sizeof tensor_file_magic);
        put_uint(&header, TENSOR_FILE_VERSION, 4);
        put_uint(&header, 0, 4);
        st = header.failed ? tga_error(TGA_ERR_NOMEM, "%s: no memory", path)
                           : tga_file_writer_write(w->file, header.data, header.len);
        free(header.data);
    }
    if (st != TGA_OK) {
        tga_tensor_file_discard(w);
        return st;
    }
    *tf = w;
    return TGA_OK;
}

static tga_status check_tensor(const tga_tensor_file_writer *w, const tga_ckpt_tensor *t, int64_t *count) {
    const char *path = tga_file_writer_path(w->file);
    if (!t->name || !valid_tensor_name(t->name, strlen(t->name)))
        return tga_error(TGA_ERR_INTERNAL, "%s: bad tensor name '%s' (1..%d printable characters, no spaces)",
                         path, t->name ? t->name : "(null)", MAX_NAME);
    size_t elem_size = tga_ckpt_dtype_size(t->dtype);
    if (!elem_size)
        return tga_error(TGA_ERR_INTERNAL, "%s: tensor '%s' has unknown dtype %d", path, t->name,
                         (int)t->dtype);
    if (t->ndim < 0 || t->ndim > TGA_CKPT_MAX_DIMS)
        return tga_error(TGA_ERR_INTERNAL, "%s: tensor '%s' has %d dimensions (0..%d allowed)", path, t->name,
                         t->ndim, TGA_CKPT_MAX_DIMS);
    *count = shape_count(t->ndim, t->shape, elem_size);
    if (*count < 0) return tga_error(TGA_ERR_INTERNAL, "%s: tensor '%s' has a bad shape", path, t->name);
    if (*count > 0 && !t->data)
        return tga_error(TGA_ERR_INTERNAL, "%s: tensor '%s' has no data", path, t->name);
    for (int i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, t->name) == 0)
            return tga_error(TGA_ERR_INTERNAL, "%s: tensor '%s' added twice", path, t->name);
    return TGA_OK;
}

static tga_status record_tensor(tga_tensor_file_writer *w, const tga_ckpt_tensor *t, uint64_t n_frames) {
    if (w->n_tensors == w->cap_tensors) {
        int cap = w->cap_tensors ? 2 * w->cap_tensors : 16;
        written_tensor *grown = realloc(w->tensors, (size_t)cap * sizeof *grown);
        if (!grown) return tga_error(TGA_ERR_NOMEM, "no memory for the tensor index");
        w->tensors = grown;
        w->cap_tensors = cap;
    }
    written_tensor *e = &w->tensors[w->n_tensors];
    *e = (written_tensor){.dtype = t->dtype,
                          .ndim = t->ndim,
                          .n_frames = n_frames,
                          .first_offset = tga_file_writer_bytes(w->file)};
    memcpy(e->shape, t->shape, sizeof e->shape);
    e->name = strdup(t->name);
    e->frame_sizes = malloc((n_frames ? n_frames : 1) * sizeof *e->frame_sizes);
    if (!e->name || !e->frame_sizes) {
        free(e->name);
        free(e->frame_sizes);
        return tga_error(TGA_ERR_NOMEM, "no memory for the tensor index");
    }
    w->n_tensors++;
    return TGA_OK;
}

static tga_status write_frames(tga_tensor_file_writer *w, const tga_ckpt_tensor *t, int64_t count) {
    size_t elem_size = tga_ckpt_dtype_size(t->dtype);
    int64_t chunk = w->codec.chunk_values;
    uint64_t n_frames = frame_count(count, chunk);
    TGA_TRY(record_tensor(w, t, n_frames));
    written_tensor *e = &w->tensors[w->n_tensors - 1];
    const unsigned char *src = t->data;
    for (uint64_t k = 0; k < n_frames; k++) {
        int64_t first = (int64_t)k * chunk, values = count - first < chunk ? count - first : chunk;
        size_t frame_bytes = 0;
        TGA_TRY(tga_ckpt_encode_chunk(w->coder, w->codec, elem_size, src + (size_t)first * elem_size,
                                      (size_t)values, w->frame, w->frame_cap, &frame_bytes));
        TGA_TRY(tga_file_writer_write(w->file, w->frame, frame_bytes));
        e->frame_sizes[k] = (uint32_t)frame_bytes;
    }
    return TGA_OK;
}

tga_status tga_tensor_file_add(tga_tensor_file_writer *w, const tga_ckpt_tensor *t) {
    if (w->failed)
        return tga_error(TGA_ERR_IO, "%s: an earlier tensor failed", tga_file_writer_path(w->file));
    int64_t count = 0;
    TGA_TRY(check_tensor(w, t, &count));
    tga_status st = write_frames(w, t, count);
    if (st != TGA_OK) w->failed = true;
    return st;
}

static void encode_index(byte_buffer *b, const tga_tensor_file_writer *w) {
    for (int i = 0; i < w->n_tensors; i++) {
        const written_tensor *e = &w->tensors[i];
        size_t name_len = strlen(e->name);
        put_uint(b, name_len, 2);
        put_bytes(b, e->name, name_len);
        put_uint(b, (uint64_t)e->dtype, 1);
        put_uint(b, (uint64_t)w->codec.kind, 1);
        put_uint(b, (uint64_t)e->ndim, 1);
        put_uint(b, (uint32_t)w->codec.level, 4);
        for (int d = 0; d < e->ndim; d++)
            put_uint(b, (uint64_t)e->shape[d], 8);
        put_uint(b, (uint64_t)w->codec.chunk_values, 8);
        put_uint(b, e->first_offset, 8);
        for (uint64_t k = 0; k < e->n_frames; k++)
            put_uint(b, e->frame_sizes[k], 4);
    }
}

static tga_status write_index_and_footer(tga_tensor_file_writer *w) {
    byte_buffer b = {0};
    uint64_t index_offset = tga_file_writer_bytes(w->file);
    encode_index(&b, w);
    size_t index_bytes = b.len;
    uint64_t index_hash = tga_xxh64(b.data, index_bytes, 0);
    put_uint(&b, index_offset, 8);
    put_uint(&b, index_bytes, 8);
    put_uint(&b, index_hash, 8);
    put_uint(&b, (uint64_t)w->n_tensors, 4);
    put_uint(&b, 0, 4);
    put_bytes(&b, tensor_file_end, sizeof tensor_file_end);
    tga_status st =
        b.failed ? tga_error(TGA_ERR_NOMEM, "%s: no memory for the index", tga_file_writer_path(w->file))
                 : tga_file_writer_write(w->file, b.data, b.len);
    free(b.data);
    return st;
}

tga_status tga_tensor_file_finish(tga_tensor_file_writer *w, uint64_t *size, uint64_t *xxh64) {
    tga_status st =
        w->failed ? tga_error(TGA_ERR_IO, "%s: not finished: a tensor failed", tga_file_writer_path(w->file))
                  : write_index_and_footer(w);
    if (st != TGA_OK) {
        tga_tensor_file_discard(w);
        return st;
    }
    *size = tga_file_writer_bytes(w->file);
    *xxh64 = tga_file_writer_xxh64(w->file);
    st = tga_file_writer_commit(w->file);
    w->file = NULL;
    tga_tensor_file_discard(w);
    return st;
}

/* ---- reading tensor files -------------------------------------------------------------------- */

typedef struct {
    tga_ckpt_tensor_info info;
    uint64_t n_frames;
    uint64_t *frame_offsets; /* n_frames + 1 absolute offsets: frame k is [offsets[k], offsets[k+1]) */
} index_entry;

struct tga_ckpt_reader {
    char *path;
    int fd;
    index_entry *entries;
    int n_entries;
    tga_ckpt_coder *coder;
    unsigned char *frame;
    size_t frame_cap;
};

static tga_status read_at(const tga_ckpt_reader *r, void *buf, size_t n, uint64_t offset) {
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(r->fd, (unsigned char *)buf + done, n - done, (off_t)(offset + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            return tga_error(TGA_ERR_IO, "cannot read %s at byte %" PRIu64 ": %s", r->path, offset + done,
                             got < 0 ? strerror(errno) : "unexpected end of file");
        done += (size_t)got;
    }
    return TGA_OK;
}

void tga_ckpt_reader_close(tga_ckpt_reader *r) {
    if (!r) return;
    if (r->fd >= 0) close(r->fd);
    for (int i = 0; i < r->n_entries; i++) {
        free(r->entries[i].info.name);
        free(r->entries[i].frame_offsets);
    }
    free(r->entries);
    tga_ckpt_coder_free(r->coder);
    free(r->frame);
    free(r->path);
    free(r);
}

typedef struct {
    uint64_t index_offset, index_bytes, index_hash;
    uint32_t n_tensors;
} footer_fields;

static tga_status read_header_and_footer(tga_ckpt_reader *r, uint64_t file_size, footer_fields *f) {
    if (file_size < HEADER_BYTES + FOOTER_BYTES)
        return tga_error(TGA_ERR_FORMAT, "%s: %" PRIu64 " bytes is too short for a tensor file", r->path,
                         file_size);
    unsigned char header[HEADER_BYTES], footer[FOOTER_BYTES];
    TGA_TRY(read_at(r, header, sizeof header, 0));
    TGA_TRY(read_at(r, footer, sizeof footer, file_size - FOOTER_BYTES));
    byte_cursor h = {header, sizeof header, 8, false}, t = {footer, sizeof footer, 0, false};
    if (memcmp(header, tensor_file_magic, 8) != 0)
        return tga_error(TGA_ERR_FORMAT, "%s: not a tga tensor file (bad magic)", r->path);
    uint64_t version = get_uint(&h, 4), flags = get_uint(&h, 4);
    if (version != TENSOR_FILE_VERSION || flags != 0)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: tensor file version %" PRIu64 " flags %" PRIu64
                         " (this build reads version %d, flags 0)",
                         r->path, version, flags, TENSOR_FILE_VERSION);
    f->index_offset = get_uint(&t, 8);
    f->index_bytes = get_uint(&t, 8);
    f->index_hash = get_uint(&t, 8);
    f->n_tensors = (uint32_t)get_uint(&t, 4);
    uint64_t reserved = get_uint(&t, 4);
    if (memcmp(footer + 32, tensor_file_end, 8) != 0 || reserved != 0)
        return tga_error(TGA_ERR_FORMAT, "%s: bad footer (truncated or not a tga tensor file)", r->path);
    uint64_t index_room = file_size - HEADER_BYTES - FOOTER_BYTES;
    if (f->index_bytes > MAX_INDEX_BYTES || f->index_bytes > index_room ||
        f->index_offset != file_size - FOOTER_BYTES - f->index_bytes)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: footer places the index (%" PRIu64 " bytes at %" PRIu64 ") outside the file",
                         r->path, f->index_bytes, f->index_offset);
    return TGA_OK;
}

static tga_status index_error(const tga_ckpt_reader *r, int i, const char *what) {
    return tga_error(TGA_ERR_FORMAT, "%s: index entry %d: %s", r->path, i, what);
}

/* One index entry; *next_offset is where its first frame must start, and is advanced past its
 * last frame, so the frames of all tensors tile [header, index) with no gap or overlap. */
static tga_status parse_entry(tga_ckpt_reader *r, byte_cursor *c, int i, uint64_t *next_offset,
                              uint64_t index_offset) {
    index_entry *e = &r->entries[i];
    tga_ckpt_tensor_info *info = &e->info;
    size_t name_len = (size_t)get_uint(c, 2);
    if (c->short_read || c->len - c->pos < name_len) return index_error(r, i, "truncated name");
    if (!valid_tensor_name((const char *)c->data + c->pos, name_len))
        return index_error(r, i, "bad tensor name");
    if (!(info->name = strndup((const char *)c->data + c->pos, name_len)))
        return tga_error(TGA_ERR_NOMEM, "no memory");
    c->pos += name_len;
    info->dtype = (tga_ckpt_dtype)get_uint(c, 1);
    info->codec.kind = (tga_ckpt_codec_kind)get_uint(c, 1);
    info->ndim = (int)get_uint(c, 1);
    info->codec.level = (int32_t)(uint32_t)get_uint(c, 4);
    size_t elem_size = tga_ckpt_dtype_size(info->dtype);
    if (!elem_size) return index_error(r, i, "unknown dtype");
    if (info->codec.kind != TGA_CKPT_ZSTD && info->codec.kind != TGA_CKPT_ZSTD_PLANES)
        return index_error(r, i, "unknown codec");
    if (info->ndim > TGA_CKPT_MAX_DIMS) return index_error(r, i, "too many dimensions");
    for (int d = 0; d < info->ndim; d++)
        info->shape[d] = (int64_t)get_uint(c, 8);
    info->codec.chunk_values = (int64_t)get_uint(c, 8);
    uint64_t first_offset = get_uint(c, 8);
    info->count = shape_count(info->ndim, info->shape, elem_size);
    if (c->short_read) return index_error(r, i, "truncated");
    if (info->count < 0) return index_error(r, i, "bad shape");
    if (info->codec.chunk_values < 1 || info->codec.chunk_values > MAX_CHUNK_VALUES)
        return index_error(r, i, "bad chunk size");
    if (first_offset != *next_offset)
        return index_error(r, i, "frames not contiguous with the previous tensor's");
    e->n_frames = frame_count(info->count, info->codec.chunk_values);
    if (e->n_frames > (c->len - c->pos) / 4) return index_error(r, i, "truncated frame table");
    if (!(e->frame_offsets = malloc((e->n_frames + 1) * sizeof *e->frame_offsets)))
        return tga_error(TGA_ERR_NOMEM, "no memory");
    e->frame_offsets[0] = first_offset;
    for (uint64_t k = 0; k < e->n_frames; k++) {
        uint64_t size = get_uint(c, 4);
        if (size == 0 || size > index_offset - e->frame_offsets[k])
            return index_error(r, i, "frame beyond the data");
        e->frame_offsets[k + 1] = e->frame_offsets[k] + size;
    }
    *next_offset = e->frame_offsets[e->n_frames];
    return TGA_OK;
}

static tga_status parse_index(tga_ckpt_reader *r, const unsigned char *index, const footer_fields *f) {
    if (tga_xxh64(index, (size_t)f->index_bytes, 0) != f->index_hash)
        return tga_error(TGA_ERR_FORMAT, "%s: the tensor index does not match its checksum", r->path);
    if (f->n_tensors > f->index_bytes / 2)
        return tga_error(TGA_ERR_FORMAT, "%s: %u tensors cannot fit in the index", r->path, f->n_tensors);
    r->entries = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *r->entries);
    if (!r->entries) return tga_error(TGA_ERR_NOMEM, "%s: no memory for the index", r->path);
    byte_cursor c = {index, (size_t)f->index_bytes, 0, false};
    uint64_t next_offset = HEADER_BYTES;
    for (int i = 0; i < (int)f->n_tensors; i++) {
        r->n_entries = i + 1; /* so close() frees what parse_entry allocated */
        TGA_TRY(parse_entry(r, &c, i, &next_offset, f->index_offset));
        for (int j = 0; j < i; j++)
            if (strcmp(r->entries[j].info.name, r->entries[i].info.name) == 0)
                return index_error(r, i, "duplicate tensor name");
    }
    if (c.pos != c.len)
        return tga_error(TGA_ERR_FORMAT, "%s: %zu stray bytes after the index", r->path, c.len - c.pos);
    if (next_offset != f->index_offset)
        return tga_error(TGA_ERR_FORMAT, "%s: %" PRIu64 " bytes between the last frame and the index",
                         r->path, f->index_offset - next_offset);
    return TGA_OK;
}

static tga_status load_index(tga_ckpt_reader *r) {
    struct stat st;
    if (fstat(r->fd, &st) != 0) return tga_error(TGA_ERR_IO, "cannot stat %s: %s", r->path, strerror(errno));
    footer_fields f = {0};
    TGA_TRY(read_header_and_footer(r, (uint64_t)st.st_size, &f));
    unsigned char *index = malloc(f.index_bytes ? (size_t)f.index_bytes : 1);
    if (!index) return tga_error(TGA_ERR_NOMEM, "%s: no memory for the index", r->path);
    tga_status status = read_at(r, index, (size_t)f.index_bytes, f.index_offset);
    if (status == TGA_OK) status = parse_index(r, index, &f);
    free(index);
    return status;
}

tga_status tga_ckpt_reader_open(tga_ckpt_reader **out, const char *path) {
    *out = NULL;
    tga_ckpt_reader *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(path))) {
        free(r);
        return tga_error(TGA_ERR_NOMEM, "%s: no memory for a reader", path);
    }
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    tga_status st =
        r->fd < 0 ? tga_error(TGA_ERR_IO, "cannot open %s: %s", path, strerror(errno)) : load_index(r);
    if (st == TGA_OK) st = tga_ckpt_coder_create(&r->coder);
    if (st != TGA_OK) {
        tga_ckpt_reader_close(r);
        return st;
    }
    *out = r;
    return TGA_OK;
}

int tga_ckpt_reader_count(const tga_ckpt_reader *r) { return r->n_entries; }

const tga_ckpt_tensor_info *tga_ckpt_reader_info(const tga_ckpt_reader *r, int i) {
    return i >= 0 && i < r->n_entries ? &r->entries[i].info : NULL;
}

static const index_entry *find_entry(const tga_ckpt_reader *r, const char *name) {
    for (int i = 0; i < r->n_entries; i++)
        if (strcmp(r->entries[i].info.name, name) == 0) return &r->entries[i];
    return NULL;
}

const tga_ckpt_tensor_info *tga_ckpt_reader_find(const tga_ckpt_reader *r, const char *name) {
    const index_entry *e = find_entry(r, name);
    return e ? &e->info : NULL;
}

static tga_status find_typed(const tga_ckpt_reader *r, const char *name, tga_ckpt_dtype dtype,
                             const index_entry **e) {
    *e = find_entry(r, name);
    if (!*e) return tga_error(TGA_ERR_FORMAT, "%s: no tensor '%s'", r->path, name);
    if ((*e)->info.dtype != dtype)
        return tga_error(TGA_ERR_FORMAT, "%s: tensor '%s' is %s, expected %s", r->path, name,
                         tga_ckpt_dtype_name((*e)->info.dtype), tga_ckpt_dtype_name(dtype));
    return TGA_OK;
}

static tga_status read_frame(tga_ckpt_reader *r, const index_entry *e, uint64_t k, size_t *frame_bytes) {
    *frame_bytes = (size_t)(e->frame_offsets[k + 1] - e->frame_offsets[k]);
    if (*frame_bytes > r->frame_cap) {
        unsigned char *grown = realloc(r->frame, *frame_bytes);
        if (!grown)
            return tga_error(TGA_ERR_NOMEM, "%s: no memory for a %zu-byte frame", r->path, *frame_bytes);
        r->frame = grown;
        r->frame_cap = *frame_bytes;
    }
    return read_at(r, r->frame, *frame_bytes, e->frame_offsets[k]);
}

tga_status tga_ckpt_read_range(tga_ckpt_reader *r, const char *name, tga_ckpt_dtype dtype, int64_t first,
                               int64_t count, void *out) {
    const index_entry *e = NULL;
    TGA_TRY(find_typed(r, name, dtype, &e));
    if (first < 0 || count < 0 || first > e->info.count || count > e->info.count - first)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: tensor '%s' has %" PRId64 " values; cannot read [%" PRId64 ", %" PRId64 ")",
                         r->path, name, e->info.count, first, first + count);
    size_t elem_size = tga_ckpt_dtype_size(dtype);
    int64_t chunk = e->info.codec.chunk_values, end = first + count;
    unsigned char *dst = out;
    for (int64_t pos = first; pos < end;) {
        uint64_t k = (uint64_t)(pos / chunk);
        int64_t chunk_first = (int64_t)k * chunk;
        int64_t chunk_values = e->info.count - chunk_first < chunk ? e->info.count - chunk_first : chunk;
        int64_t take = (end < chunk_first + chunk_values ? end : chunk_first + chunk_values) - pos;
        size_t frame_bytes = 0;
        TGA_TRY(read_frame(r, e, k, &frame_bytes));
        char what[512];
        snprintf(what, sizeof what, "%s: tensor '%s' frame %" PRIu64, r->path, name, k);
        TGA_TRY(tga_ckpt_decode_chunk(r->coder, e->info.codec.kind, elem_size, r->frame, frame_bytes,
                                      (size_t)chunk_values, (size_t)(pos - chunk_first), (size_t)take, dst,
                                      what));
        dst += (size_t)take * elem_size;
        pos += take;
    }
    return TGA_OK;
}

tga_status tga_ckpt_read_tensor(tga_ckpt_reader *r, const char *name, tga_ckpt_dtype dtype, int ndim,
                                const int64_t *shape, void *out) {
    const index_entry *e = NULL;
    TGA_TRY(find_typed(r, name, dtype, &e));
    bool same = e->info.ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = e->info.shape[d] == shape[d];
    if (!same) {
        char stored[256], wanted[256];
        int wanted_ndim = ndim < 0 ? 0 : ndim > TGA_CKPT_MAX_DIMS ? TGA_CKPT_MAX_DIMS : ndim;
        return tga_error(TGA_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s", r->path, name,
                         format_shape(e->info.ndim, e->info.shape, stored, sizeof stored),
                         format_shape(wanted_ndim, shape, wanted, sizeof wanted));
    }
    return tga_ckpt_read_range(r, name, dtype, 0, e->info.count, out);
}
