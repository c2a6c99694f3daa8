/* Shard files: writer, reader and the per-sample content codec. trainer/SHARDS.md is the byte-level
 * spec; keep the two in step (tests/unit/test_shard.c rebuilds a shard from the spec alone and
 * compares bytes). */
#define _POSIX_C_SOURCE 200809L /* pread, fsync, fileno, fseeko, strdup, strndup */

#include "trainer/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "runtime/fileio.h"
#include "trainer/model.h"

/* Header, index and footer fields are serialised byte by byte, but the arrays of a sample are
 * copied with memcpy and handed out as pointers into the decompressed content. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "trainer/shard.c assumes a little-endian host"
#endif

#define HEADER_BYTES 64u
#define FOOTER_BYTES 40u
#define ENTRY_BYTES 48u
#define CONTENT_HEADER_BYTES 32u
/* The level is part of the format's determinism (SHARDS.md): changing it changes every shard's bytes. */
#define SHARD_ZSTD_LEVEL 3
/* Room for "path: sample N (id '...')"; error.c keeps 2048 characters of a message. */
#define WHERE_CAP 2048

static const unsigned char header_magic[8] = {'T', 'G', 'A', 'S', 'H', 'R', 'D', 0};
static const unsigned char footer_magic[8] = {'T', 'G', 'A', 'S', 'E', 'N', 'D', 0};
static const unsigned char zstd_frame_magic[4] = {0x28, 0xB5, 0x2F, 0xFD};

/* ---- little-endian fields -------------------------------------------------------------------- */

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static bool all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

/* ---- CRC32C ------------------------------------------------------------------------------------
 * Castagnoli polynomial (reflected 0x82F63B78), slicing by 8: eight table lookups per 8 bytes,
 * so checking a frame costs less than decompressing it. */

static uint32_t crc_tables[8][256];
static pthread_once_t crc_tables_once = PTHREAD_ONCE_INIT;

static void crc_tables_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_tables[0][n] = c;
    }
    for (int s = 1; s < 8; s++)
        for (uint32_t n = 0; n < 256; n++)
            crc_tables[s][n] = (crc_tables[s - 1][n] >> 8) ^ crc_tables[0][crc_tables[s - 1][n] & 0xff];
}

/* The CRC of (bytes so far, whose CRC is `crc`; 0 for none) followed by data[0, n). */
static uint32_t crc32c_extend(uint32_t crc, const void *data, size_t n) {
    pthread_once(&crc_tables_once, crc_tables_init);
    const unsigned char *p = data;
    uint32_t c = ~crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo = c ^ get_u32(p), hi = get_u32(p + 4);
        c = crc_tables[7][lo & 0xff] ^ crc_tables[6][(lo >> 8) & 0xff] ^ crc_tables[5][(lo >> 16) & 0xff] ^
            crc_tables[4][lo >> 24] ^ crc_tables[3][hi & 0xff] ^ crc_tables[2][(hi >> 8) & 0xff] ^
            crc_tables[1][(hi >> 16) & 0xff] ^ crc_tables[0][hi >> 24];
    }
    for (; n > 0; n--, p++)
        c = (c >> 8) ^ crc_tables[0][(c ^ *p) & 0xff];
    return ~c;
}

/* ---- layout and sample geometry ----------------------------------------------------------------- */

size_t tga_shard_dtype_size(tga_shard_dtype dtype) {
    switch (dtype) {
    case TGA_SHARD_F16:
        return 2;
    case TGA_SHARD_F32:
        return 4;
    }
    return 0;
}

static uint64_t image_bytes(const tga_shard_layout *l) {
    return (uint64_t)l->patches_per_image * (uint64_t)l->feature_dim * tga_shard_dtype_size(l->feature_dtype);
}

/* Counts are below 2^32 and image_bytes() at most 2^30 (check_layout), so this cannot overflow. */
static uint64_t content_bytes(const tga_shard_layout *l, uint64_t n_tokens, uint64_t n_caption_tokens,
                              uint64_t n_images) {
    return CONTENT_HEADER_BYTES + 8 * n_tokens + 4 * n_caption_tokens + n_images * (8 + image_bytes(l));
}

static tga_status check_layout(const char *where, const tga_shard_layout *l) {
    if (tga_shard_dtype_size(l->feature_dtype) == 0)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: unknown feature dtype code %d (expected 1 = float16 or 2 = float32)", where,
                         (int)l->feature_dtype);
    int32_t p = l->patches_per_image, dv = l->feature_dim;
    if (p < 0 || dv < 0 || (p == 0) != (dv == 0))
        return tga_error(
            TGA_ERR_FORMAT,
            "%s: image layout P = %d, Dv = %d (expected both positive, or both 0 for a text-only shard)",
            where, p, dv);
    if (image_bytes(l) > TGA_SHARD_MAX_SAMPLE_BYTES)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: one image's features (P = %d x Dv = %d) exceed the %u-byte sample limit", where,
                         p, dv, TGA_SHARD_MAX_SAMPLE_BYTES);
    return TGA_OK;
}

static void describe_sample(char *where, const char *path, uint64_t index, const char *id) {
    if (id)
        snprintf(where, WHERE_CAP, "%s: sample %" PRIu64 " (id '%s')", path, index, id);
    else
        snprintf(where, WHERE_CAP, "%s: sample %" PRIu64, path, index);
}

/* ---- sample invariants (shard.h), shared by the writer and the reader ---------------------------- */

static tga_status check_id(const char *where, const char *id, size_t bytes) {
    if (bytes == 0 || bytes > TGA_SHARD_MAX_ID_BYTES)
        return tga_error(TGA_ERR_FORMAT, "%s: id is %zu bytes (expected 1..%d)", where, bytes,
                         TGA_SHARD_MAX_ID_BYTES);
    for (size_t i = 0; i < bytes; i++) {
        unsigned char c = (unsigned char)id[i];
        if (c < 0x20 || c == 0x7f)
            return tga_error(TGA_ERR_FORMAT,
                             "%s: id has control character 0x%02x at byte %zu (expected printable text)",
                             where, c, i);
    }
    return TGA_OK;
}

static tga_status check_counts(const char *where, const tga_shard_layout *l, const tga_shard_sample *s) {
    if (s->n_tokens < 1 || s->n_caption_tokens < 0 || s->n_images < 0)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: counts T = %d, Tc = %d, images = %d (expected T >= 1, others >= 0)", where,
                         s->n_tokens, s->n_caption_tokens, s->n_images);
    if (s->n_images > 0 && l->patches_per_image == 0)
        return tga_error(TGA_ERR_FORMAT, "%s: %d image(s) in a text-only shard (P = Dv = 0)", where,
                         s->n_images);
    if (!s->input_ids || !s->labels || (s->n_caption_tokens > 0 && !s->cap_ids) ||
        (s->n_images > 0 && (!s->images || !s->features)))
        return tga_error(TGA_ERR_INTERNAL, "%s: a sample array is NULL while its count is positive", where);
    uint64_t bytes =
        content_bytes(l, (uint64_t)s->n_tokens, (uint64_t)s->n_caption_tokens, (uint64_t)s->n_images);
    if (bytes > TGA_SHARD_MAX_SAMPLE_BYTES)
        return tga_error(TGA_ERR_FORMAT, "%s: %" PRIu64 " bytes of content exceed the %u-byte sample limit",
                         where, bytes, TGA_SHARD_MAX_SAMPLE_BYTES);
    if (s->tox > 1) return tga_error(TGA_ERR_FORMAT, "%s: tox flag is %d (expected 0 or 1)", where, s->tox);
    return TGA_OK;
}

static tga_status check_image_spans(const char *where, const tga_shard_layout *l, const tga_shard_sample *s) {
    int64_t previous_end = 0;
    for (int32_t i = 0; i < s->n_images; i++) {
        tga_shard_span span = s->images[i];
        int64_t end = (int64_t)span.start + span.length;
        if (span.length != l->patches_per_image)
            return tga_error(TGA_ERR_FORMAT, "%s: image %d has %d patches (expected the shard's P = %d)",
                             where, i, span.length, l->patches_per_image);
        if (span.start < previous_end || end > s->n_tokens)
            return tga_error(TGA_ERR_FORMAT,
                             "%s: image %d span [%d, %" PRId64 ") is outside [%" PRId64
                             ", T = %d) (expected sorted, "
                             "non-overlapping spans inside the sequence)",
                             where, i, span.start, end, previous_end, s->n_tokens);
        previous_end = end;
    }
    return TGA_OK;
}

/* Needs check_image_spans first: walks the sorted spans alongside the tokens. */
static tga_status check_tokens(const char *where, const tga_shard_sample *s) {
    int32_t image = 0;
    for (int32_t t = 0; t < s->n_tokens; t++) {
        while (image < s->n_images && t >= s->images[image].start + s->images[image].length)
            image++;
        bool in_image = image < s->n_images && t >= s->images[image].start;
        int32_t token = s->input_ids[t], label = s->labels[t];
        if (in_image && token != TGA_IMAGE_TOKEN_ID)
            return tga_error(TGA_ERR_FORMAT, "%s: input_ids[%d] is %d inside image %d's span (expected %d)",
                             where, t, token, image, TGA_IMAGE_TOKEN_ID);
        if (in_image && label != TGA_IGNORE_INDEX)
            return tga_error(TGA_ERR_FORMAT, "%s: labels[%d] is %d at an image patch position (expected %d)",
                             where, t, label, TGA_IGNORE_INDEX);
        if (!in_image && token < 0)
            return tga_error(
                TGA_ERR_FORMAT,
                "%s: input_ids[%d] is %d (expected a token id >= 0; %d only inside an image span)", where, t,
                token, TGA_IMAGE_TOKEN_ID);
        if (!in_image && label < 0 && label != TGA_IGNORE_INDEX)
            return tga_error(TGA_ERR_FORMAT, "%s: labels[%d] is %d (expected a token id >= 0 or %d)", where,
                             t, label, TGA_IGNORE_INDEX);
    }
    return TGA_OK;
}

static tga_status check_span(const char *where, const char *name, tga_shard_span span, int32_t limit,
                             const char *limit_name) {
    if (span.start < 0 || span.length < 0 || (int64_t)span.start + span.length > limit)
        return tga_error(TGA_ERR_FORMAT, "%s: %s span (start %d, length %d) is outside [0, %s = %d)", where,
                         name, span.start, span.length, limit_name, limit);
    return TGA_OK;
}

static tga_status check_text_spans(const char *where, const tga_shard_sample *s) {
    TGA_TRY(check_span(where, "retrieved-text", s->retrieved, s->n_tokens, "T"));
    TGA_TRY(check_span(where, "caption", s->caption, s->n_caption_tokens, "Tc"));
    int64_t r_start = s->retrieved.start, r_end = r_start + s->retrieved.length;
    for (int32_t i = 0; i < s->n_images; i++) {
        int64_t i_start = s->images[i].start, i_end = i_start + s->images[i].length;
        if (r_start < i_end && i_start < r_end)
            return tga_error(TGA_ERR_FORMAT,
                             "%s: retrieved-text span [%" PRId64 ", %" PRId64 ") overlaps image %d [%" PRId64
                             ", %" PRId64 ")",
                             where, r_start, r_end, i, i_start, i_end);
    }
    for (int32_t t = 0; t < s->n_caption_tokens; t++)
        if (s->cap_ids[t] < 0)
            return tga_error(TGA_ERR_FORMAT, "%s: cap_ids[%d] is %d (expected a token id >= 0)", where, t,
                             s->cap_ids[t]);
    return TGA_OK;
}

static bool feature_finite(const tga_shard_layout *l, const void *features, size_t k) {
    if (l->feature_dtype == TGA_SHARD_F16) {
        uint16_t bits;
        memcpy(&bits, (const unsigned char *)features + 2 * k, 2);
        return (bits & 0x7c00) != 0x7c00; /* exponent all ones: Inf or NaN */
    }
    float value;
    memcpy(&value, (const unsigned char *)features + 4 * k, 4);
    return isfinite(value);
}

/* A NaN feature would poison every step that draws the sample, far from its cause; catch it here. */
static tga_status check_features(const char *where, const tga_shard_layout *l, const tga_shard_sample *s) {
    size_t per_image = (size_t)l->patches_per_image * (size_t)l->feature_dim;
    size_t n = per_image * (size_t)s->n_images;
    for (size_t k = 0; k < n; k++)
        if (!feature_finite(l, s->features, k))
            return tga_error(TGA_ERR_FORMAT, "%s: feature of image %zu, patch %zu, dim %zu is not finite",
                             where, k / per_image, k % per_image / (size_t)l->feature_dim,
                             k % (size_t)l->feature_dim);
    return TGA_OK;
}

static tga_status check_sample(const char *where, const tga_shard_layout *l, const tga_shard_sample *s) {
    TGA_TRY(check_counts(where, l, s));
    TGA_TRY(check_image_spans(where, l, s));
    TGA_TRY(check_tokens(where, s));
    TGA_TRY(check_text_spans(where, s));
    return check_features(where, l, s);
}

/* The index's copy of a sample's sizes; the target count follows model.c's shifted labels. */
static tga_shard_stats sample_stats(const tga_shard_sample *s) {
    tga_shard_stats stats = {s->n_tokens, s->n_caption_tokens, s->n_images, 0};
    for (int32_t t = 1; t < s->n_tokens; t++)
        stats.n_targets += s->labels[t] != TGA_IGNORE_INDEX;
    return stats;
}

static bool same_stats(tga_shard_stats a, tga_shard_stats b) {
    return a.n_tokens == b.n_tokens && a.n_caption_tokens == b.n_caption_tokens && a.n_images == b.n_images &&
           a.n_targets == b.n_targets;
}

/* ---- sample content codec ------------------------------------------------------------------------ */

static unsigned char *put_bytes(unsigned char *p, const void *data, size_t n) {
    if (n) memcpy(p, data, n);
    return p + n;
}

/* out holds content_bytes() for this sample. */
static void encode_content(unsigned char *out, const tga_shard_layout *l, const tga_shard_sample *s) {
    memset(out, 0, CONTENT_HEADER_BYTES);
    put_u32(out + 0, (uint32_t)s->n_tokens);
    put_u32(out + 4, (uint32_t)s->n_caption_tokens);
    put_u32(out + 8, (uint32_t)s->n_images);
    put_u32(out + 12, (uint32_t)s->retrieved.start);
    put_u32(out + 16, (uint32_t)s->retrieved.length);
    put_u32(out + 20, (uint32_t)s->caption.start);
    put_u32(out + 24, (uint32_t)s->caption.length);
    out[28] = s->tox;
    unsigned char *p = out + CONTENT_HEADER_BYTES;
    p = put_bytes(p, s->input_ids, 4 * (size_t)s->n_tokens);
    p = put_bytes(p, s->labels, 4 * (size_t)s->n_tokens);
    p = put_bytes(p, s->cap_ids, 4 * (size_t)s->n_caption_tokens);
    for (int32_t i = 0; i < s->n_images; i++, p += 8) {
        put_u32(p, (uint32_t)s->images[i].start);
        put_u32(p + 4, (uint32_t)s->images[i].length);
    }
    put_bytes(p, s->features, (size_t)(s->n_images * image_bytes(l)));
}

static int32_t get_i32(const unsigned char *p) {
    uint32_t u = get_u32(p);
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

/* Points the sample's arrays into `content` (which it does not take ownership of) and checks it. */
static tga_status decode_in_place(const char *where, const tga_shard_layout *l, unsigned char *content,
                                  size_t bytes, tga_shard_sample *s) {
    if (bytes < CONTENT_HEADER_BYTES)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: content is %zu bytes (expected at least the %u-byte sample header)", where,
                         bytes, CONTENT_HEADER_BYTES);
    uint32_t n_tokens = get_u32(content), n_caption_tokens = get_u32(content + 4),
             n_images = get_u32(content + 8);
    if (!all_zero(content + 29, 3))
        return tga_error(TGA_ERR_FORMAT, "%s: reserved bytes 29..31 of the sample header are not zero",
                         where);
    if (n_images > 0 && l->patches_per_image == 0)
        return tga_error(TGA_ERR_FORMAT, "%s: %" PRIu32 " image(s) in a text-only shard (P = Dv = 0)", where,
                         n_images);
    uint64_t expected = content_bytes(l, n_tokens, n_caption_tokens, n_images);
    if (expected != bytes || n_tokens > INT32_MAX || n_caption_tokens > INT32_MAX || n_images > INT32_MAX)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: content is %zu bytes, but T = %" PRIu32 ", Tc = %" PRIu32 ", images = %" PRIu32
                         " need %" PRIu64,
                         where, bytes, n_tokens, n_caption_tokens, n_images, expected);
    s->n_tokens = (int32_t)n_tokens;
    s->n_caption_tokens = (int32_t)n_caption_tokens;
    s->n_images = (int32_t)n_images;
    s->retrieved = (tga_shard_span){get_i32(content + 12), get_i32(content + 16)};
    s->caption = (tga_shard_span){get_i32(content + 20), get_i32(content + 24)};
    s->tox = content[28];
    /* Every section is a multiple of 4 bytes long, so each array starts 4-byte aligned. */
    unsigned char *tokens = content + CONTENT_HEADER_BYTES;
    unsigned char *captions = tokens + 8 * (size_t)n_tokens, *spans = captions + 4 * (size_t)n_caption_tokens;
    s->input_ids = (int32_t *)(void *)tokens;
    s->labels = (int32_t *)(void *)(tokens + 4 * (size_t)n_tokens);
    s->cap_ids = n_caption_tokens ? (int32_t *)(void *)captions : NULL;
    s->images = n_images ? (tga_shard_span *)(void *)spans : NULL;
    s->features = n_images ? spans + 8 * (size_t)n_images : NULL;
    return check_sample(where, l, s);
}

void tga_shard_sample_free(tga_shard_sample *s) {
    if (!s) return;
    free(s->storage);
    memset(s, 0, sizeof *s);
}

tga_status tga_shard_decode(const char *where, const tga_shard_layout *layout, const void *content,
                            size_t bytes, tga_shard_sample *out) {
    if (!where || !layout || (!content && bytes) || !out)
        return tga_error(TGA_ERR_INTERNAL, "tga_shard_decode: NULL argument");
    memset(out, 0, sizeof *out);
    TGA_TRY(check_layout(where, layout));
    unsigned char *storage = malloc(bytes + 1);
    if (!storage)
        return tga_error(TGA_ERR_NOMEM, "%s: no memory for %zu bytes of sample content", where, bytes);
    put_bytes(storage, content, bytes);
    storage[bytes] = '\0';
    tga_status st = decode_in_place(where, layout, storage, bytes, out);
    if (st != TGA_OK) {
        free(storage);
        memset(out, 0, sizeof *out);
        return st;
    }
    out->storage = storage;
    out->id = (char *)storage + bytes;
    return TGA_OK;
}

/* ---- index entries ------------------------------------------------------------------------------- */

typedef struct {
    uint64_t offset;     /* of the frame, from the start of the file */
    uint32_t compressed; /* frame bytes */
    uint32_t content;    /* uncompressed bytes */
    uint32_t crc;        /* CRC32C of the frame bytes */
    uint32_t id_bytes;   /* without a terminator */
    uint64_t record;     /* record number in the source file */
    tga_shard_stats stats;
    uint64_t id_offset; /* in memory only: where the id starts in the owner's id buffer */
} index_entry;

static void encode_entry(unsigned char *out, const index_entry *e) {
    put_u64(out, e->offset);
    put_u32(out + 8, e->compressed);
    put_u32(out + 12, e->content);
    put_u32(out + 16, e->crc);
    put_u32(out + 20, e->id_bytes);
    put_u64(out + 24, e->record);
    put_u32(out + 32, (uint32_t)e->stats.n_tokens);
    put_u32(out + 36, (uint32_t)e->stats.n_caption_tokens);
    put_u32(out + 40, (uint32_t)e->stats.n_images);
    put_u32(out + 44, (uint32_t)e->stats.n_targets);
}

/* Counts above INT32_MAX come out negative, which check_entry refuses. */
static int32_t get_count(const unsigned char *p) {
    uint32_t v = get_u32(p);
    return v > INT32_MAX ? -1 : (int32_t)v;
}

static index_entry decode_entry(const unsigned char *in) {
    return (index_entry){
        .offset = get_u64(in),
        .compressed = get_u32(in + 8),
        .content = get_u32(in + 12),
        .crc = get_u32(in + 16),
        .id_bytes = get_u32(in + 20),
        .record = get_u64(in + 24),
        .stats = {get_count(in + 32), get_count(in + 36), get_count(in + 40), get_count(in + 44)}};
}

/* Fields the header and footer both carry; a reader insists they agree. */
typedef struct {
    uint64_t n_samples, index_offset, index_bytes;
} shard_extent;

static void encode_header(unsigned char *out, const tga_shard_layout *l, const shard_extent *x) {
    memset(out, 0, HEADER_BYTES);
    memcpy(out, header_magic, 8);
    put_u32(out + 8, TGA_SHARD_VERSION);
    put_u64(out + 16, x->n_samples);
    put_u64(out + 24, x->index_offset);
    put_u64(out + 32, x->index_bytes);
    put_u32(out + 40, (uint32_t)l->patches_per_image);
    put_u32(out + 44, (uint32_t)l->feature_dim);
    put_u32(out + 48, (uint32_t)l->feature_dtype);
    put_u32(out + 60, crc32c_extend(0, out, 60));
}

static void encode_footer(unsigned char *out, const shard_extent *x, uint32_t index_crc) {
    put_u64(out, x->n_samples);
    put_u64(out + 8, x->index_offset);
    put_u64(out + 16, x->index_bytes);
    put_u32(out + 24, index_crc);
    put_u32(out + 28, crc32c_extend(0, out, 28));
    memcpy(out + 32, footer_magic, 8);
}

/* ---- writer ---------------------------------------------------------------------------------------- */

struct tga_shard_writer {
    char *path;
    tga_file_writer *file; /* path.tmp until committed (runtime/fileio.h: fsync, rename, directory fsync) */
    tga_shard_layout layout;
    ZSTD_CCtx *cctx;
    uint64_t n_samples, offset; /* offset: where the next frame goes */
    index_entry *entries;
    size_t entries_cap;
    char *ids; /* every id so far, back to back, no terminators (the file's id table) */
    size_t ids_bytes, ids_cap;
    unsigned char *content, *frame; /* one sample's buffers, grown to the largest sample */
    size_t content_cap, frame_cap;
    bool failed;
};

/* `buffer` with room for `need` elements (doubling), or NULL with `buffer` untouched. */
static void *grown(void *buffer, size_t *cap, size_t need, size_t element) {
    if (need <= *cap) return buffer;
    size_t new_cap = *cap ? *cap : 16;
    while (new_cap < need)
        new_cap *= 2;
    void *bigger = realloc(buffer, new_cap * element);
    if (bigger) *cap = new_cap;
    return bigger;
}

static void writer_free(tga_shard_writer *w) {
    tga_file_writer_discard(w->file);
    ZSTD_freeCCtx(w->cctx);
    free(w->path);
    free(w->entries);
    free(w->ids);
    free(w->content);
    free(w->frame);
    free(w);
}

/* Fixed parameters make a shard's bytes a function of its samples alone (for a given libzstd). */
static bool configure_compression(ZSTD_CCtx *cctx) {
    return !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, SHARD_ZSTD_LEVEL)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, 0));
}

/* The placeholder header is all zeros (no magic), so a leftover .tmp file never reads as a shard. */
static tga_status writer_start(tga_shard_writer *w) {
    w->cctx = ZSTD_createCCtx();
    if (!w->cctx || !configure_compression(w->cctx))
        return tga_error(TGA_ERR_INTERNAL, "%s: cannot set up zstd compression", w->path);
    TGA_TRY(tga_file_writer_open(&w->file, w->path, TGA_FILE_REPLACE));
    unsigned char placeholder[HEADER_BYTES] = {0};
    TGA_TRY(tga_file_writer_write(w->file, placeholder, HEADER_BYTES));
    w->offset = HEADER_BYTES;
    return TGA_OK;
}

tga_status tga_shard_writer_open(tga_shard_writer **out, const char *path, const tga_shard_layout *layout) {
    if (!out || !path || !*path || !layout)
        return tga_error(TGA_ERR_INTERNAL, "tga_shard_writer_open: NULL argument");
    *out = NULL;
    TGA_TRY(check_layout(path, layout));
    tga_shard_writer *w = calloc(1, sizeof *w);
    if (!w) return tga_error(TGA_ERR_NOMEM, "%s: no memory for a shard writer", path);
    w->layout = *layout;
    w->path = strdup(path);
    tga_status st = w->path ? writer_start(w) : tga_error(TGA_ERR_NOMEM, "%s: no memory", path);
    if (st != TGA_OK) {
        tga_shard_writer_discard(w);
        return st;
    }
    *out = w;
    return TGA_OK;
}

static tga_status check_new_sample(const tga_shard_writer *w, const tga_shard_sample *s, char *where) {
    snprintf(where, WHERE_CAP, "%s: sample %" PRIu64 " (record %" PRIu64 ")", w->path, w->n_samples,
             s->record);
    if (!s->id) return tga_error(TGA_ERR_INTERNAL, "%s: id is NULL", where);
    TGA_TRY(check_id(where, s->id, strlen(s->id)));
    snprintf(where, WHERE_CAP, "%s: sample %" PRIu64 " (id '%s', record %" PRIu64 ")", w->path, w->n_samples,
             s->id, s->record);
    return check_sample(where, &w->layout, s);
}

/* A failed write leaves the file in an unknown state; the writer refuses everything after it. */
static tga_status writer_failed(tga_shard_writer *w, tga_status st) {
    w->failed = true;
    return st;
}

/* Room for one more index entry and id, and for this sample's content and frame. */
static tga_status reserve_room(tga_shard_writer *w, size_t id_bytes, size_t bytes, const char *where) {
    void *entries = grown(w->entries, &w->entries_cap, (size_t)w->n_samples + 1, sizeof *w->entries);
    if (entries) w->entries = entries;
    void *ids = entries ? grown(w->ids, &w->ids_cap, w->ids_bytes + id_bytes, 1) : NULL;
    if (ids) w->ids = ids;
    void *content = ids ? grown(w->content, &w->content_cap, bytes, 1) : NULL;
    if (content) w->content = content;
    void *frame = content ? grown(w->frame, &w->frame_cap, ZSTD_compressBound(bytes), 1) : NULL;
    if (!frame)
        return tga_error(TGA_ERR_NOMEM, "%s: no memory for %zu bytes of sample content", where, bytes);
    w->frame = frame;
    return TGA_OK;
}

/* Encodes the sample into w->content (*bytes long) and compresses it into w->frame (*compressed). */
static tga_status compress_sample(tga_shard_writer *w, const tga_shard_sample *s, const char *where,
                                  size_t *bytes, size_t *compressed) {
    *bytes = (size_t)content_bytes(&w->layout, (uint64_t)s->n_tokens, (uint64_t)s->n_caption_tokens,
                                   (uint64_t)s->n_images);
    TGA_TRY(reserve_room(w, strlen(s->id), *bytes, where));
    encode_content(w->content, &w->layout, s);
    *compressed = ZSTD_compress2(w->cctx, w->frame, w->frame_cap, w->content, *bytes);
    if (ZSTD_isError(*compressed))
        return tga_error(TGA_ERR_INTERNAL, "%s: zstd compression failed: %s", where,
                         ZSTD_getErrorName(*compressed));
    return TGA_OK;
}

tga_status tga_shard_writer_add(tga_shard_writer *w, const tga_shard_sample *s) {
    if (!w || !s) return tga_error(TGA_ERR_INTERNAL, "tga_shard_writer_add: NULL argument");
    if (w->failed) return tga_error(TGA_ERR_IO, "%s: an earlier write failed", w->path);
    char where[WHERE_CAP];
    TGA_TRY(check_new_sample(w, s, where));
    size_t id_bytes = strlen(s->id), bytes = 0, compressed = 0;
    TGA_TRY(compress_sample(w, s, where, &bytes, &compressed));
    if (tga_file_writer_write(w->file, w->frame, compressed) != TGA_OK)
        return writer_failed(w, tga_error_replace(TGA_ERR_IO, "%s: %s", where, tga_error_message()));
    w->entries[w->n_samples++] = (index_entry){.offset = w->offset,
                                               .compressed = (uint32_t)compressed,
                                               .content = (uint32_t)bytes,
                                               .crc = crc32c_extend(0, w->frame, compressed),
                                               .id_bytes = (uint32_t)id_bytes,
                                               .record = s->record,
                                               .stats = sample_stats(s),
                                               .id_offset = w->ids_bytes};
    memcpy(w->ids + w->ids_bytes, s->id, id_bytes);
    w->ids_bytes += id_bytes;
    w->offset += compressed;
    return TGA_OK;
}

static tga_status write_and_crc(tga_file_writer *f, const void *data, size_t n, uint32_t *crc) {
    *crc = crc32c_extend(*crc, data, n);
    return n == 0 ? TGA_OK : tga_file_writer_write(f, data, n); /* an empty shard has no ids (data may be NULL) */
}

/* Index, footer, then the real header over the placeholder. */
static tga_status write_trailer(tga_shard_writer *w) {
    shard_extent extent = {w->n_samples, w->offset, w->n_samples * ENTRY_BYTES + w->ids_bytes};
    uint32_t index_crc = 0;
    unsigned char entry[ENTRY_BYTES], footer[FOOTER_BYTES], header[HEADER_BYTES];
    for (uint64_t i = 0; i < w->n_samples; i++) {
        encode_entry(entry, &w->entries[i]);
        TGA_TRY(write_and_crc(w->file, entry, ENTRY_BYTES, &index_crc));
    }
    TGA_TRY(write_and_crc(w->file, w->ids, w->ids_bytes, &index_crc));
    encode_footer(footer, &extent, index_crc);
    encode_header(header, &w->layout, &extent);
    TGA_TRY(tga_file_writer_write(w->file, footer, FOOTER_BYTES));
    return tga_file_writer_patch(w->file, 0, header, HEADER_BYTES);
}

tga_status tga_shard_writer_close(tga_shard_writer *w) {
    if (!w) return tga_error(TGA_ERR_INTERNAL, "tga_shard_writer_close: NULL writer");
    if (w->failed) {
        tga_status st = tga_error(TGA_ERR_IO, "%s: not finished: an earlier write failed", w->path);
        tga_shard_writer_discard(w);
        return st;
    }
    tga_status st = write_trailer(w);
    if (st == TGA_OK) {
        st = tga_file_writer_commit(w->file); /* frees the file writer, also on failure */
        w->file = NULL;
    }
    writer_free(w); /* after a failure: discards path.tmp */
    return st;
}

void tga_shard_writer_discard(tga_shard_writer *w) {
    if (w) writer_free(w);
}

/* ---- reader ---------------------------------------------------------------------------------------- */

struct tga_shard_reader {
    char *path;
    int fd;
    uint64_t file_bytes;
    tga_shard_layout layout;
    shard_extent extent;
    index_entry *entries;
    char *ids; /* every id, each NUL-terminated */
};

/* pread() until n bytes arrive; the file's size was checked, so a short read means it shrank. */
static tga_status read_exact(const tga_shard_reader *r, void *buffer, size_t n, uint64_t offset,
                             const char *what) {
    unsigned char *p = buffer;
    while (n > 0) {
        ssize_t got = pread(r->fd, p, n, (off_t)offset);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return tga_error(TGA_ERR_IO, "%s: cannot read %s: %s", r->path, what, strerror(errno));
        if (got == 0)
            return tga_error(TGA_ERR_IO,
                             "%s: cannot read %s: the file ended at byte %" PRIu64 " (did it shrink?)",
                             r->path, what, offset);
        p += got;
        n -= (size_t)got;
        offset += (uint64_t)got;
    }
    return TGA_OK;
}

static tga_status open_file(tga_shard_reader *r) {
    r->fd = open(r->path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0) return tga_error(TGA_ERR_IO, "cannot open shard %s: %s", r->path, strerror(errno));
    struct stat st;
    if (fstat(r->fd, &st) != 0) return tga_error(TGA_ERR_IO, "cannot stat %s: %s", r->path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return tga_error(TGA_ERR_IO, "%s: not a regular file", r->path);
    r->file_bytes = (uint64_t)st.st_size;
    return TGA_OK;
}

static tga_status check_magic_and_version(const tga_shard_reader *r, const unsigned char *header,
                                          size_t have) {
    size_t compared = have < 8 ? have : 8;
    if (memcmp(header, header_magic, compared) != 0)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: bad magic (not a tga shard: expected the bytes \"TGASHRD\\0\" first)", r->path);
    if (r->file_bytes < HEADER_BYTES + FOOTER_BYTES)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: truncated: footer missing (file is %" PRIu64 " bytes, expected at least %u)",
                         r->path, r->file_bytes, HEADER_BYTES + FOOTER_BYTES);
    uint32_t version = get_u32(header + 8);
    if (version != TGA_SHARD_VERSION)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: unsupported shard format version %" PRIu32 " (this tga reads version %u)",
                         r->path, version, TGA_SHARD_VERSION);
    return TGA_OK;
}

static tga_status parse_header(tga_shard_reader *r, const unsigned char *h) {
    if (get_u32(h + 60) != crc32c_extend(0, h, 60))
        return tga_error(TGA_ERR_FORMAT, "%s: header checksum mismatch (corrupted header)", r->path);
    uint32_t flags = get_u32(h + 12), p = get_u32(h + 40), dv = get_u32(h + 44), dtype = get_u32(h + 48);
    if (flags != 0)
        return tga_error(TGA_ERR_FORMAT, "%s: unknown header flags 0x%" PRIx32 " (version 1 defines none)",
                         r->path, flags);
    if (!all_zero(h + 52, 8))
        return tga_error(TGA_ERR_FORMAT, "%s: reserved header bytes 52..59 are not zero", r->path);
    if (p > INT32_MAX || dv > INT32_MAX || (dtype != TGA_SHARD_F16 && dtype != TGA_SHARD_F32))
        return tga_error(TGA_ERR_FORMAT,
                         "%s: header has P = %" PRIu32 ", Dv = %" PRIu32 ", dtype code %" PRIu32
                         " (expected P, Dv < 2^31 and dtype 1 or 2)",
                         r->path, p, dv, dtype);
    r->layout = (tga_shard_layout){(int32_t)p, (int32_t)dv, (tga_shard_dtype)dtype};
    r->extent = (shard_extent){get_u64(h + 16), get_u64(h + 24), get_u64(h + 32)};
    return check_layout(r->path, &r->layout);
}

/* The header alone fixes the file's size: frames, then the index, then the footer. */
static tga_status check_file_size(const tga_shard_reader *r) {
    const shard_extent *x = &r->extent;
    uint64_t size = r->file_bytes;
    if (x->index_offset < HEADER_BYTES || x->index_offset > size || x->index_bytes > size)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: header places the index at byte %" PRIu64 " (%" PRIu64
                         " bytes), which does not fit a "
                         "file of %" PRIu64 " bytes (truncated?)",
                         r->path, x->index_offset, x->index_bytes, size);
    uint64_t expected =
        x->index_offset + x->index_bytes + FOOTER_BYTES; /* each term is at most the file size */
    if (size < expected)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: truncated: file is %" PRIu64 " bytes, the header says %" PRIu64
                         " (index at byte %" PRIu64 ", %" PRIu64 " bytes, then the %u-byte footer)",
                         r->path, size, expected, x->index_offset, x->index_bytes, FOOTER_BYTES);
    if (size > expected)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: file is %" PRIu64 " bytes, the header says %" PRIu64 " (%" PRIu64
                         " unexpected bytes after the footer)",
                         r->path, size, expected, size - expected);
    return TGA_OK;
}

static tga_status parse_footer(const tga_shard_reader *r, const unsigned char *f, uint32_t *index_crc) {
    if (memcmp(f + 32, footer_magic, 8) != 0)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: truncated or overwritten: footer missing (the file does not end with "
                         "\"TGASEND\\0\")",
                         r->path);
    if (get_u32(f + 28) != crc32c_extend(0, f, 28))
        return tga_error(TGA_ERR_FORMAT, "%s: footer checksum mismatch (corrupted footer)", r->path);
    shard_extent footer = {get_u64(f), get_u64(f + 8), get_u64(f + 16)};
    if (footer.n_samples != r->extent.n_samples || footer.index_offset != r->extent.index_offset ||
        footer.index_bytes != r->extent.index_bytes)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: header and footer disagree (samples %" PRIu64 " vs %" PRIu64
                         ", index at %" PRIu64 " vs %" PRIu64 ", %" PRIu64 " vs %" PRIu64 " bytes)",
                         r->path, r->extent.n_samples, footer.n_samples, r->extent.index_offset,
                         footer.index_offset, r->extent.index_bytes, footer.index_bytes);
    *index_crc = get_u32(f + 24);
    return TGA_OK;
}

static tga_status read_header_and_footer(tga_shard_reader *r, uint32_t *index_crc) {
    unsigned char header[HEADER_BYTES] = {0}, footer[FOOTER_BYTES];
    size_t have = r->file_bytes < HEADER_BYTES ? (size_t)r->file_bytes : HEADER_BYTES;
    TGA_TRY(read_exact(r, header, have, 0, "the header"));
    TGA_TRY(check_magic_and_version(r, header, have));
    TGA_TRY(parse_header(r, header));
    TGA_TRY(check_file_size(r));
    TGA_TRY(read_exact(r, footer, FOOTER_BYTES, r->file_bytes - FOOTER_BYTES, "the footer"));
    return parse_footer(r, footer, index_crc);
}

/* A loader trusts the stats for loss denominators and batch shapes before any frame is read, so
 * they must at least be able to describe a sample of the entry's size; a read checks the rest. */
static tga_status check_entry_stats(const tga_shard_reader *r, uint64_t i, const index_entry *e) {
    tga_shard_stats st = e->stats;
    bool counts_ok = st.n_tokens >= 1 && st.n_caption_tokens >= 0 && st.n_images >= 0 && st.n_targets >= 0 &&
                     st.n_targets < st.n_tokens && (st.n_images == 0 || r->layout.patches_per_image > 0);
    if (!counts_ok || content_bytes(&r->layout, (uint64_t)st.n_tokens, (uint64_t)st.n_caption_tokens,
                                    (uint64_t)st.n_images) != e->content)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: index entry %" PRIu64
                         ": stats T = %d, Tc = %d, images = %d, targets = %d do not "
                         "describe its %" PRIu32 " content bytes (expected T >= 1, 0 <= targets < T, no "
                         "image in a text-only shard, and 32 + 8T + 4Tc + images x (8 + P x Dv x element "
                         "size) bytes)",
                         r->path, i, st.n_tokens, st.n_caption_tokens, st.n_images, st.n_targets, e->content);
    return TGA_OK;
}

static tga_status check_entry(const tga_shard_reader *r, uint64_t i, const index_entry *e,
                              uint64_t expected_offset) {
    if (e->offset != expected_offset)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: index entry %" PRIu64 ": frame at byte %" PRIu64 ", expected %" PRIu64
                         " (frames follow each other from byte %u)",
                         r->path, i, e->offset, expected_offset, HEADER_BYTES);
    if (e->content < CONTENT_HEADER_BYTES || e->content > TGA_SHARD_MAX_SAMPLE_BYTES || e->compressed == 0 ||
        e->compressed > ZSTD_compressBound(e->content))
        return tga_error(TGA_ERR_FORMAT,
                         "%s: index entry %" PRIu64 ": frame of %" PRIu32 " bytes holding %" PRIu32
                         " (expected %u..%u bytes of content, within zstd's bound for the frame)",
                         r->path, i, e->compressed, e->content, CONTENT_HEADER_BYTES,
                         TGA_SHARD_MAX_SAMPLE_BYTES);
    if (e->id_bytes == 0 || e->id_bytes > TGA_SHARD_MAX_ID_BYTES)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: index entry %" PRIu64 ": id of %" PRIu32 " bytes (expected 1..%d)", r->path, i,
                         e->id_bytes, TGA_SHARD_MAX_ID_BYTES);
    return check_entry_stats(r, i, e);
}

/* Entries, then the id table: frames must tile [64, index_offset) and ids the rest of the index. */
static tga_status parse_entries(tga_shard_reader *r, const unsigned char *index) {
    const shard_extent *x = &r->extent;
    uint64_t offset = HEADER_BYTES, id_total = 0;
    for (uint64_t i = 0; i < x->n_samples; i++) {
        index_entry e = decode_entry(index + i * ENTRY_BYTES);
        TGA_TRY(check_entry(r, i, &e, offset));
        e.id_offset = id_total + i; /* each id gets a terminator in r->ids */
        offset += e.compressed;
        id_total += e.id_bytes;
        r->entries[i] = e;
    }
    if (offset != x->index_offset)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: frames end at byte %" PRIu64 ", but the index starts at byte %" PRIu64, r->path,
                         offset, x->index_offset);
    if (x->n_samples * ENTRY_BYTES + id_total != x->index_bytes)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: index is %" PRIu64 " bytes, but %" PRIu64 " entries and %" PRIu64
                         " bytes of ids need %" PRIu64,
                         r->path, x->index_bytes, x->n_samples, id_total,
                         x->n_samples * ENTRY_BYTES + id_total);
    return TGA_OK;
}

static tga_status copy_ids(tga_shard_reader *r, const unsigned char *id_table) {
    char where[WHERE_CAP];
    const unsigned char *source = id_table;
    for (uint64_t i = 0; i < r->extent.n_samples; i++) {
        const index_entry *e = &r->entries[i];
        describe_sample(where, r->path, i, NULL);
        TGA_TRY(check_id(where, (const char *)source, e->id_bytes));
        memcpy(r->ids + e->id_offset, source, e->id_bytes);
        r->ids[e->id_offset + e->id_bytes] = '\0';
        source += e->id_bytes;
    }
    return TGA_OK;
}

static tga_status read_index(tga_shard_reader *r, uint32_t index_crc) {
    const shard_extent *x = &r->extent;
    if (x->n_samples > x->index_bytes / ENTRY_BYTES)
        return tga_error(TGA_ERR_FORMAT, "%s: %" PRIu64 " samples cannot fit an index of %" PRIu64 " bytes",
                         r->path, x->n_samples, x->index_bytes);
    unsigned char *index = malloc(x->index_bytes ? (size_t)x->index_bytes : 1);
    r->entries = malloc(x->n_samples ? (size_t)x->n_samples * sizeof *r->entries : 1);
    /* ids plus a terminator each fit in index_bytes: every entry takes 48 bytes but adds only one */
    r->ids = malloc(x->index_bytes ? (size_t)x->index_bytes : 1);
    if (!index || !r->entries || !r->ids) {
        free(index);
        return tga_error(TGA_ERR_NOMEM, "%s: no memory for an index of %" PRIu64 " bytes", r->path,
                         x->index_bytes);
    }
    tga_status st = read_exact(r, index, (size_t)x->index_bytes, x->index_offset, "the index");
    if (st == TGA_OK && crc32c_extend(0, index, (size_t)x->index_bytes) != index_crc)
        st = tga_error(TGA_ERR_FORMAT, "%s: index checksum mismatch (corrupted index)", r->path);
    if (st == TGA_OK) st = parse_entries(r, index);
    if (st == TGA_OK) st = copy_ids(r, index + x->n_samples * ENTRY_BYTES);
    free(index);
    return st;
}

tga_status tga_shard_reader_open(tga_shard_reader **out, const char *path) {
    if (!out || !path) return tga_error(TGA_ERR_INTERNAL, "tga_shard_reader_open: NULL argument");
    *out = NULL;
    tga_shard_reader *r = calloc(1, sizeof *r);
    if (!r) return tga_error(TGA_ERR_NOMEM, "%s: no memory for a shard reader", path);
    r->fd = -1;
    r->path = strdup(path);
    uint32_t index_crc = 0;
    tga_status st = r->path ? open_file(r) : tga_error(TGA_ERR_NOMEM, "%s: no memory", path);
    if (st == TGA_OK) st = read_header_and_footer(r, &index_crc);
    if (st == TGA_OK) st = read_index(r, index_crc);
    if (st != TGA_OK) {
        tga_shard_reader_close(r);
        return st;
    }
    *out = r;
    return TGA_OK;
}

/* The zstd frame header (RFC 8878 section 3.1.1): one frame, not skippable, with the content
 * checksum and the content size the index promises. */
static tga_status check_frame(const char *where, const unsigned char *frame, const index_entry *e) {
    if (e->compressed < 5 || memcmp(frame, zstd_frame_magic, 4) != 0)
        return tga_error(TGA_ERR_FORMAT, "%s: frame does not start with the zstd magic number", where);
    if (!(frame[4] & 0x04))
        return tga_error(TGA_ERR_FORMAT, "%s: zstd frame has no content checksum (the format requires one)",
                         where);
    unsigned long long declared = ZSTD_getFrameContentSize(frame, e->compressed);
    if (declared != e->content)
        return tga_error(TGA_ERR_FORMAT, "%s: zstd frame declares %s content bytes, the index says %" PRIu32,
                         where,
                         declared == ZSTD_CONTENTSIZE_UNKNOWN ? "unknown"
                         : declared == ZSTD_CONTENTSIZE_ERROR ? "unreadable"
                                                              : "a different number of",
                         e->content);
    size_t frame_bytes = ZSTD_findFrameCompressedSize(frame, e->compressed);
    if (ZSTD_isError(frame_bytes) || frame_bytes != e->compressed)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: the %" PRIu32 "-byte frame slot does not hold exactly one zstd frame", where,
                         e->compressed);
    return TGA_OK;
}

static tga_status decompress_frame(const char *where, const unsigned char *frame, const index_entry *e,
                                   unsigned char *content) {
    TGA_TRY(check_frame(where, frame, e));
    size_t got = ZSTD_decompress(content, e->content, frame, e->compressed);
    if (ZSTD_isError(got) && ZSTD_getErrorCode(got) == ZSTD_error_checksum_wrong)
        return tga_error(TGA_ERR_FORMAT, "%s: content checksum mismatch (corrupted data)", where);
    if (ZSTD_isError(got))
        return tga_error(TGA_ERR_FORMAT, "%s: cannot decompress the frame: %s", where,
                         ZSTD_getErrorName(got));
    if (got != e->content)
        return tga_error(TGA_ERR_FORMAT, "%s: frame holds %zu bytes, the index says %" PRIu32, where, got,
                         e->content);
    return TGA_OK;
}

/* Fills `storage` (content, then the id and its terminator) from the frame of sample i. */
static tga_status load_sample(const tga_shard_reader *r, uint64_t i, const char *where,
                              unsigned char *storage) {
    const index_entry *e = &r->entries[i];
    unsigned char *frame = malloc(e->compressed);
    if (!frame)
        return tga_error(TGA_ERR_NOMEM, "%s: no memory for a %" PRIu32 "-byte frame", where, e->compressed);
    tga_status st = read_exact(r, frame, e->compressed, e->offset, "a sample frame");
    if (st == TGA_OK && crc32c_extend(0, frame, e->compressed) != e->crc)
        st = tga_error(TGA_ERR_FORMAT, "%s: frame checksum mismatch (corrupted data)", where);
    if (st == TGA_OK) st = decompress_frame(where, frame, e, storage);
    free(frame);
    if (st == TGA_OK) memcpy(storage + e->content, r->ids + e->id_offset, (size_t)e->id_bytes + 1);
    return st;
}

static tga_status check_stats_match(const char *where, tga_shard_stats indexed, const tga_shard_sample *s) {
    tga_shard_stats actual = sample_stats(s);
    if (same_stats(indexed, actual)) return TGA_OK;
    return tga_error(TGA_ERR_FORMAT,
                     "%s: the index says T = %d, Tc = %d, images = %d, targets = %d, the sample has T = %d, "
                     "Tc = %d, images = %d, targets = %d (corrupted index)",
                     where, indexed.n_tokens, indexed.n_caption_tokens, indexed.n_images, indexed.n_targets,
                     actual.n_tokens, actual.n_caption_tokens, actual.n_images, actual.n_targets);
}

tga_status tga_shard_reader_read(const tga_shard_reader *r, uint64_t i, tga_shard_sample *out) {
    if (!r || !out) return tga_error(TGA_ERR_INTERNAL, "tga_shard_reader_read: NULL argument");
    memset(out, 0, sizeof *out);
    if (i >= r->extent.n_samples)
        return tga_error(TGA_ERR_INTERNAL, "%s: sample %" PRIu64 " requested, the shard has %" PRIu64,
                         r->path, i, r->extent.n_samples);
    const index_entry *e = &r->entries[i];
    char where[WHERE_CAP];
    describe_sample(where, r->path, i, r->ids + e->id_offset);
    unsigned char *storage = malloc((size_t)e->content + e->id_bytes + 1);
    if (!storage) return tga_error(TGA_ERR_NOMEM, "%s: no memory for %" PRIu32 " bytes", where, e->content);
    tga_status st = load_sample(r, i, where, storage);
    if (st == TGA_OK) st = decode_in_place(where, &r->layout, storage, e->content, out);
    if (st == TGA_OK) st = check_stats_match(where, e->stats, out);
    if (st != TGA_OK) {
        free(storage);
        memset(out, 0, sizeof *out);
        return st;
    }
    out->storage = storage;
    out->id = (char *)storage + e->content;
    out->record = e->record;
    return TGA_OK;
}

uint64_t tga_shard_reader_count(const tga_shard_reader *r) { return r->extent.n_samples; }

tga_shard_layout tga_shard_reader_layout(const tga_shard_reader *r) { return r->layout; }

const char *tga_shard_reader_id(const tga_shard_reader *r, uint64_t i) {
    return i < r->extent.n_samples ? r->ids + r->entries[i].id_offset : NULL;
}

uint64_t tga_shard_reader_record(const tga_shard_reader *r, uint64_t i) {
    return i < r->extent.n_samples ? r->entries[i].record : 0;
}

tga_shard_stats tga_shard_reader_stats(const tga_shard_reader *r, uint64_t i) {
    return i < r->extent.n_samples ? r->entries[i].stats : (tga_shard_stats){0, 0, 0, 0};
}

void tga_shard_reader_close(tga_shard_reader *r) {
    if (!r) return;
    if (r->fd >= 0) close(r->fd);
    free(r->path);
    free(r->entries);
    free(r->ids);
    free(r);
}
