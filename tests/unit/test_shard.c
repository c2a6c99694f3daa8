/* Sample shards: round trips of random samples (0, 1, 2 images, tox, text-only, float16 and float32
 * features) read back in random order and from two threads, with the index stats against a count
 * made here; the writer's bytes against a shard built here from trainer/SHARDS.md alone (with an
 * independent CRC32C), which also proves determinism; every byte of a small shard flipped and every
 * truncation, each with the message it must give; wrong magic and version; fields that pass the
 * checksums but break the format or a sample invariant, or index stats that cannot describe the
 * entry's content size (refused at the open) or that disagree with the sample (refused at the
 * read), all resealed with the spec's checksums; an interrupted writer (a child process killed
 * before close) and a discarded one.
 *
 *   test_shard                      run the tests
 *   test_shard --write-corpus DIR   write the fuzz seeds (tests/fuzz/corpus/shard) and exit */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, fork */

#include "trainer/model.h"
#include "trainer/shard.h"
#include "tests/testutil.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

static char tmp_dir[] = "/tmp/tga_test_shard_XXXXXX";

/* Zeroed, so that buffers a test fills only in part compare and serialise deterministically. */
static void *xmalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    *n = 0;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *bytes = xmalloc(size > 0 ? (size_t)size : 1);
    *n = fread(bytes, 1, (size_t)size, f);
    fclose(f);
    return bytes;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- the spec, written independently of trainer/shard.c ------------------------------------------ */

static uint32_t spec_crc32c(const void *data, size_t n) {
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
    }
    return ~c;
}

static void le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* SHARDS.md "Index": offset, sizes, CRC, id length, record, then the sample's four stats. */
#define SPEC_ENTRY_BYTES 48

static uint32_t rd32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static size_t image_bytes(const tga_shard_layout *l) {
    return (size_t)l->patches_per_image * (size_t)l->feature_dim *
           (l->feature_dtype == TGA_SHARD_F16 ? 2 : 4);
}

/* SHARDS.md "Sample content", serialised value by value (no validation: tests feed it bad samples). */
static unsigned char *spec_content(const tga_shard_layout *l, const tga_shard_sample *s, size_t *bytes) {
    *bytes = 32 + 8 * (size_t)s->n_tokens + 4 * (size_t)s->n_caption_tokens +
             (size_t)s->n_images * (8 + image_bytes(l));
    unsigned char *out = xmalloc(*bytes), *p = out + 32;
    memset(out, 0, 32);
    le32(out, (uint32_t)s->n_tokens);
    le32(out + 4, (uint32_t)s->n_caption_tokens);
    le32(out + 8, (uint32_t)s->n_images);
    le32(out + 12, (uint32_t)s->retrieved.start);
    le32(out + 16, (uint32_t)s->retrieved.length);
    le32(out + 20, (uint32_t)s->caption.start);
    le32(out + 24, (uint32_t)s->caption.length);
    out[28] = s->tox;
    for (int32_t t = 0; t < s->n_tokens; t++, p += 4)
        le32(p, (uint32_t)s->input_ids[t]);
    for (int32_t t = 0; t < s->n_tokens; t++, p += 4)
        le32(p, (uint32_t)s->labels[t]);
    for (int32_t t = 0; t < s->n_caption_tokens; t++, p += 4)
        le32(p, (uint32_t)s->cap_ids[t]);
    for (int32_t i = 0; i < s->n_images; i++, p += 8) {
        le32(p, (uint32_t)s->images[i].start);
        le32(p + 4, (uint32_t)s->images[i].length);
    }
    size_t values = (size_t)s->n_images * image_bytes(l) / (l->feature_dtype == TGA_SHARD_F16 ? 2 : 4);
    for (size_t k = 0; k < values; k++) {
        if (l->feature_dtype == TGA_SHARD_F16) {
            uint16_t h = ((const uint16_t *)s->features)[k];
            p[0] = (unsigned char)h;
            p[1] = (unsigned char)(h >> 8);
            p += 2;
        } else {
            uint32_t u;
            memcpy(&u, (const float *)s->features + k, 4);
            le32(p, u);
            p += 4;
        }
    }
    return out;
}

/* SHARDS.md "Determinism": one ZSTD_compress2 per sample, level 3, checksum and content size on. */
static unsigned char *spec_frame(const void *content, size_t bytes, int checksum, size_t *frame_bytes) {
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, checksum);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
    unsigned char *frame = xmalloc(ZSTD_compressBound(bytes));
    *frame_bytes = ZSTD_compress2(cctx, frame, ZSTD_compressBound(bytes), content, bytes);
    CHECK(!ZSTD_isError(*frame_bytes), "spec compression failed");
    ZSTD_freeCCtx(cctx);
    return frame;
}

/* SHARDS.md "Index" bytes 32..47, counted here from the sample: n_targets is the number of t in
 * 1..T-1 whose label is not -100 (position t-1 predicts label t). */
typedef struct {
    uint32_t n_tokens, n_caption_tokens, n_images, n_targets;
} spec_stats;

static spec_stats spec_stats_of(const tga_shard_sample *s) {
    spec_stats st = {(uint32_t)s->n_tokens, (uint32_t)s->n_caption_tokens, (uint32_t)s->n_images, 0};
    for (int32_t t = 1; t < s->n_tokens; t++)
        if (s->labels[t] != -100) st.n_targets++;
    return st;
}

typedef struct {
    const unsigned char *frame;
    size_t frame_bytes;
    uint32_t content_bytes;
    const char *id;
    uint64_t record;
    spec_stats stats;
} spec_part;

/* Recompute, from the bytes as they stand, every frame CRC, the index CRC, the footer CRC and the
 * header CRC, so that a test can change a field and reach the check behind the checksums. */
static void spec_reseal(unsigned char *file, size_t size) {
    uint64_t n = rd64(file + 16), index_offset = rd64(file + 24), index_bytes = rd64(file + 32);
    unsigned char *index = file + index_offset, *footer = file + size - 40;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char *entry = index + SPEC_ENTRY_BYTES * i;
        uint64_t offset = rd64(entry);
        uint32_t compressed = rd32(entry + 8);
        if (offset <= size && compressed <= size - offset)
            le32(entry + 16, spec_crc32c(file + offset, compressed));
    }
    le32(footer + 24, spec_crc32c(index, index_bytes));
    le32(footer + 28, spec_crc32c(footer, 28));
    le32(file + 60, spec_crc32c(file, 60));
}

static unsigned char *spec_shard(const tga_shard_layout *l, const spec_part *parts, int n, size_t *size) {
    size_t frames = 0, ids = 0;
    for (int i = 0; i < n; i++)
        frames += parts[i].frame_bytes, ids += strlen(parts[i].id);
    size_t index_offset = 64 + frames, index_bytes = SPEC_ENTRY_BYTES * (size_t)n + ids;
    *size = index_offset + index_bytes + 40;
    unsigned char *file = xmalloc(*size), *p = file + 64, *entry = file + index_offset;
    unsigned char *id_table = entry + SPEC_ENTRY_BYTES * (size_t)n, *footer = file + *size - 40;
    memset(file, 0, *size);
    memcpy(file, "TGASHRD", 8);
    le32(file + 8, 1);
    le64(file + 16, (uint64_t)n);
    le64(file + 24, index_offset);
    le64(file + 32, index_bytes);
    le32(file + 40, (uint32_t)l->patches_per_image);
    le32(file + 44, (uint32_t)l->feature_dim);
    le32(file + 48, (uint32_t)l->feature_dtype);
    for (int i = 0; i < n; i++, entry += SPEC_ENTRY_BYTES) {
        le64(entry, (uint64_t)(p - file));
        le32(entry + 8, (uint32_t)parts[i].frame_bytes);
        le32(entry + 12, parts[i].content_bytes);
        le32(entry + 20, (uint32_t)strlen(parts[i].id));
        le64(entry + 24, parts[i].record);
        le32(entry + 32, parts[i].stats.n_tokens);
        le32(entry + 36, parts[i].stats.n_caption_tokens);
        le32(entry + 40, parts[i].stats.n_images);
        le32(entry + 44, parts[i].stats.n_targets);
        memcpy(p, parts[i].frame, parts[i].frame_bytes);
        p += parts[i].frame_bytes;
        memcpy(id_table, parts[i].id, strlen(parts[i].id));
        id_table += strlen(parts[i].id);
    }
    le64(footer, (uint64_t)n);
    le64(footer + 8, index_offset);
    le64(footer + 16, index_bytes);
    memcpy(footer + 32, "TGASEND", 8);
    spec_reseal(file, *size);
    return file;
}

/* ---- random samples ----------------------------------------------------------------------------- */

typedef struct {
    tga_shard_sample s; /* arrays malloc'ed here */
    char id[64];
} owned_sample;

static void owned_free(owned_sample *o) {
    free(o->s.input_ids);
    free(o->s.labels);
    free(o->s.images);
    free(o->s.features);
    free(o->s.cap_ids);
}

static uint32_t below(uint64_t *rng, uint32_t n) { return n ? (uint32_t)(tu_next(rng) % n) : 0; }

static void random_features(owned_sample *o, const tga_shard_layout *l, uint64_t *rng) {
    size_t values = (size_t)o->s.n_images * (size_t)l->patches_per_image * (size_t)l->feature_dim;
    if (l->feature_dtype == TGA_SHARD_F32) {
        o->s.features = tu_alloc_uniform(values, -3.0f, 3.0f, rng);
        return;
    }
    uint16_t *halves = xmalloc(values * 2);
    for (size_t k = 0; k < values; k++) {
        uint16_t bits = (uint16_t)tu_next(rng);
        halves[k] = (bits & 0x7c00) == 0x7c00 ? (uint16_t)(bits & ~0x4000) : bits; /* finite */
    }
    o->s.features = halves;
}

/* Images placed in random gaps of text; the retrieved span (if any) inside one text gap. */
static void place_images(owned_sample *o, int32_t n_images, int32_t p, uint64_t *rng) {
    tga_shard_sample *s = &o->s;
    int32_t text = s->n_tokens - n_images * p, position = 0;
    s->images = xmalloc(sizeof(tga_shard_span) * (size_t)(n_images ? n_images : 1));
    s->retrieved = (tga_shard_span){0, 0};
    for (int32_t i = 0; i <= n_images; i++) {
        int32_t gap = i == n_images ? text : (int32_t)below(rng, (uint32_t)text + 1);
        if (gap > 0 && below(rng, 2)) {
            int32_t start = (int32_t)below(rng, (uint32_t)gap);
            s->retrieved =
                (tga_shard_span){position + start, 1 + (int32_t)below(rng, (uint32_t)(gap - start))};
        }
        text -= gap;
        position += gap;
        if (i < n_images) {
            s->images[i] = (tga_shard_span){position, p};
            position += p;
        }
    }
}

static void fill_tokens(owned_sample *o, uint64_t *rng) {
    tga_shard_sample *s = &o->s;
    for (int32_t t = 0; t < s->n_tokens; t++) {
        s->input_ids[t] = (int32_t)below(rng, 32000);
        s->labels[t] = below(rng, 2) ? s->input_ids[t] : TGA_IGNORE_INDEX;
    }
    for (int32_t i = 0; i < s->n_images; i++)
        for (int32_t t = s->images[i].start; t < s->images[i].start + s->images[i].length; t++) {
            s->input_ids[t] = TGA_IMAGE_TOKEN_ID;
            s->labels[t] = TGA_IGNORE_INDEX;
        }
    for (int32_t t = 0; t < s->n_caption_tokens; t++)
        s->cap_ids[t] = (int32_t)below(rng, 32000);
    int32_t start = (int32_t)below(rng, (uint32_t)s->n_caption_tokens + 1);
    s->caption = (tga_shard_span){start, (int32_t)below(rng, (uint32_t)(s->n_caption_tokens - start) + 1)};
}

static void make_sample(owned_sample *o, const tga_shard_layout *l, int32_t n_images, uint8_t tox, int serial,
                        uint64_t *rng) {
    memset(o, 0, sizeof *o);
    /* some ids carry UTF-8 (which passes) to show only control characters are refused */
    snprintf(o->id, sizeof o->id, serial % 5 == 3 ? "caf\xc3\xa9_%05d" : "GCC_train_%06d", serial);
    tga_shard_sample *s = &o->s;
    s->id = o->id;
    s->record = tu_next(rng) >> 20;
    s->n_images = n_images;
    s->n_tokens = n_images * l->patches_per_image + 1 + (int32_t)below(rng, 40);
    s->n_caption_tokens = (int32_t)below(rng, 12);
    s->tox = tox;
    s->input_ids = xmalloc(4 * (size_t)s->n_tokens);
    s->labels = xmalloc(4 * (size_t)s->n_tokens);
    s->cap_ids = xmalloc(4 * (size_t)s->n_caption_tokens);
    place_images(o, n_images, l->patches_per_image, rng);
    fill_tokens(o, rng);
    random_features(o, l, rng);
}

/* ---- comparisons and error checks ---------------------------------------------------------------- */

static int same_span(tga_shard_span a, tga_shard_span b) {
    return a.start == b.start && a.length == b.length;
}

static int same_sample(const tga_shard_layout *l, const tga_shard_sample *a, const tga_shard_sample *b) {
    size_t tokens = 4 * (size_t)a->n_tokens;
    if (strcmp(a->id, b->id) != 0 || a->record != b->record || a->n_tokens != b->n_tokens ||
        a->n_caption_tokens != b->n_caption_tokens || a->n_images != b->n_images || a->tox != b->tox ||
        !same_span(a->retrieved, b->retrieved) || !same_span(a->caption, b->caption))
        return 0;
    if (memcmp(a->input_ids, b->input_ids, tokens) != 0 || memcmp(a->labels, b->labels, tokens) != 0)
        return 0;
    if (a->n_caption_tokens && memcmp(a->cap_ids, b->cap_ids, 4 * (size_t)a->n_caption_tokens) != 0) return 0;
    for (int32_t i = 0; i < a->n_images; i++)
        if (!same_span(a->images[i], b->images[i])) return 0;
    return a->n_images == 0 || memcmp(a->features, b->features, (size_t)a->n_images * image_bytes(l)) == 0;
}

/* The status must be `code` and the message must contain every given fragment. */
static void expect_error(tga_status st, tga_status code, const char *what, const char *fragment1,
                         const char *fragment2) {
    const char *message = tga_error_message();
    CHECK(st == code, "%s: status %s, want %s (%s)", what, tga_status_name(st), tga_status_name(code),
          message);
    CHECK(strchr(message, '\n') == NULL, "%s: message is not one line: %s", what, message);
    CHECK(strstr(message, fragment1) != NULL, "%s: message lacks '%s': %s", what, fragment1, message);
    if (fragment2)
        CHECK(strstr(message, fragment2) != NULL, "%s: message lacks '%s': %s", what, fragment2, message);
    tga_error_clear();
}

static tga_status open_expecting_failure(const char *path, tga_shard_reader **r) {
    tga_error_clear();
    tga_status st = tga_shard_reader_open(r, path);
    if (st == TGA_OK) {
        tga_shard_reader_close(*r);
        *r = NULL;
    }
    return st;
}

/* ---- writing test shards ------------------------------------------------------------------------- */

static void write_shard(const char *path, const tga_shard_layout *l, owned_sample *samples, int n) {
    tga_shard_writer *w = NULL;
    tga_error_clear();
    CHECK(tga_shard_writer_open(&w, path, l) == TGA_OK, "writer open %s: %s", path, tga_error_message());
    if (!w) return;
    for (int i = 0; i < n; i++)
        CHECK(tga_shard_writer_add(w, &samples[i].s) == TGA_OK, "add %d: %s", i, tga_error_message());
    CHECK(tga_shard_writer_close(w) == TGA_OK, "writer close %s: %s", path, tga_error_message());
}

static unsigned char *spec_shard_of(const tga_shard_layout *l, owned_sample *samples, int n, size_t *size) {
    spec_part *parts = xmalloc(sizeof *parts * (size_t)n);
    unsigned char **frames = xmalloc(sizeof *frames * (size_t)n);
    for (int i = 0; i < n; i++) {
        size_t bytes = 0, frame_bytes = 0;
        unsigned char *content = spec_content(l, &samples[i].s, &bytes);
        frames[i] = spec_frame(content, bytes, 1, &frame_bytes);
        parts[i] = (spec_part){frames[i],     frame_bytes,         (uint32_t)bytes,
                               samples[i].id, samples[i].s.record, spec_stats_of(&samples[i].s)};
        free(content);
    }
    unsigned char *file = spec_shard(l, parts, n, size);
    for (int i = 0; i < n; i++)
        free(frames[i]);
    free(frames);
    free(parts);
    return file;
}

static owned_sample *make_samples(const tga_shard_layout *l, int n, uint64_t *rng) {
    owned_sample *samples = xmalloc(sizeof *samples * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) {
        int32_t images = l->patches_per_image ? i % 3 : 0;
        make_sample(&samples[i], l, images, (uint8_t)(i % 4 == 1), 1000 * l->feature_dtype + i, rng);
    }
    return samples;
}

static void free_samples(owned_sample *samples, int n) {
    for (int i = 0; i < n; i++)
        owned_free(&samples[i]);
    free(samples);
}

/* ---- round trips -------------------------------------------------------------------------------- */

static void check_reads_in_order(const char *path, const tga_shard_layout *l, owned_sample *samples, int n,
                                 const int *order) {
    tga_shard_reader *r = NULL;
    tga_error_clear();
    CHECK(tga_shard_reader_open(&r, path) == TGA_OK, "open %s: %s", path, tga_error_message());
    if (!r) return;
    tga_shard_layout got = tga_shard_reader_layout(r);
    CHECK((int)tga_shard_reader_count(r) == n && got.patches_per_image == l->patches_per_image &&
              got.feature_dim == l->feature_dim && got.feature_dtype == l->feature_dtype,
          "%s: count or layout differs", path);
    for (int k = 0; k < n; k++) {
        int i = order[k];
        tga_shard_sample s = {0};
        CHECK(tga_shard_reader_read(r, (uint64_t)i, &s) == TGA_OK, "%s: read %d: %s", path, i,
              tga_error_message());
        CHECK(s.storage && same_sample(l, &s, &samples[i].s), "%s: sample %d differs after the round trip",
              path, i);
        CHECK(strcmp(tga_shard_reader_id(r, (uint64_t)i), samples[i].id) == 0 &&
                  tga_shard_reader_record(r, (uint64_t)i) == samples[i].s.record,
              "%s: index id/record of sample %d", path, i);
        tga_shard_stats got_stats = tga_shard_reader_stats(r, (uint64_t)i);
        spec_stats want = spec_stats_of(&samples[i].s);
        CHECK((uint32_t)got_stats.n_tokens == want.n_tokens &&
                  (uint32_t)got_stats.n_caption_tokens == want.n_caption_tokens &&
                  (uint32_t)got_stats.n_images == want.n_images &&
                  (uint32_t)got_stats.n_targets == want.n_targets,
              "%s: index stats of sample %d: T %d Tc %d images %d targets %d, want %u %u %u %u", path, i,
              got_stats.n_tokens, got_stats.n_caption_tokens, got_stats.n_images, got_stats.n_targets,
              want.n_tokens, want.n_caption_tokens, want.n_images, want.n_targets);
        tga_shard_sample_free(&s);
        tga_shard_sample_free(&s); /* a second free must be harmless */
    }
    tga_shard_stats past = tga_shard_reader_stats(r, (uint64_t)n);
    CHECK(tga_shard_reader_id(r, (uint64_t)n) == NULL && past.n_tokens == 0 && past.n_targets == 0,
          "%s: id and stats past the end", path);
    tga_shard_sample s = {0};
    expect_error(tga_shard_reader_read(r, (uint64_t)n, &s), TGA_ERR_INTERNAL, "read past the end", path,
                 "requested");
    tga_shard_reader_close(r);
}

static void shuffle(int *order, int n, uint64_t *rng) {
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)below(rng, (uint32_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

static void test_round_trip(const char *name, const tga_shard_layout *l, int n, uint64_t *rng) {
    owned_sample *samples = make_samples(l, n, rng);
    const char *path = tu_in_dir(tmp_dir, name);
    write_shard(path, l, samples, n);
    int *order = xmalloc(sizeof *order * (size_t)(n ? n : 1));
    shuffle(order, n, rng);
    check_reads_in_order(path, l, samples, n, order);

    size_t size = 0, spec_size = 0, again_size = 0;
    unsigned char *bytes = read_bytes(path, &size), *spec = spec_shard_of(l, samples, n, &spec_size);
    CHECK(bytes && size == spec_size && memcmp(bytes, spec, size) == 0,
          "%s: writer output (%zu bytes) differs from the SHARDS.md encoding (%zu bytes)", name, size,
          spec_size);
    char tmp_name[600];
    snprintf(tmp_name, sizeof tmp_name, "%s.tmp", path);
    CHECK(!file_exists(tmp_name), "%s: the .tmp file is left after close", name);

    write_shard(tu_in_dir(tmp_dir, "again.tgas"), l, samples,
                n); /* determinism: a second writer, same samples */
    unsigned char *again = read_bytes(tu_in_dir(tmp_dir, "again.tgas"), &again_size);
    CHECK(again && again_size == size && memcmp(again, bytes, size) == 0,
          "%s: two writers gave different bytes", name);
    free(again);
    free(bytes);
    free(spec);
    free(order);
    free_samples(samples, n);
}

typedef struct {
    const tga_shard_layout *layout;
    owned_sample *samples;
    int n, mismatches;
    tga_shard_reader *reader;
    uint64_t seed;
} thread_job;

static void *read_all(void *arg) {
    thread_job *job = arg;
    for (int k = 0; k < 4 * job->n; k++) {
        int i = (int)(tu_next(&job->seed) % (uint64_t)job->n);
        tga_shard_sample s = {0};
        if (tga_shard_reader_read(job->reader, (uint64_t)i, &s) != TGA_OK ||
            !same_sample(job->layout, &s, &job->samples[i].s))
            job->mismatches++;
        tga_shard_sample_free(&s);
    }
    return NULL;
}

/* One reader shared by two threads (the loader's use). */
static void test_concurrent_reads(uint64_t *rng) {
    tga_shard_layout l = {6, 10, TGA_SHARD_F16};
    int n = 24;
    owned_sample *samples = make_samples(&l, n, rng);
    write_shard(tu_in_dir(tmp_dir, "threads.tgas"), &l, samples, n);
    tga_shard_reader *r = NULL;
    CHECK(tga_shard_reader_open(&r, tu_in_dir(tmp_dir, "threads.tgas")) == TGA_OK, "open: %s",
          tga_error_message());
    thread_job jobs[2] = {{&l, samples, n, 0, r, 1}, {&l, samples, n, 0, r, 2}};
    pthread_t threads[2];
    for (int t = 0; t < 2 && r; t++)
        pthread_create(&threads[t], NULL, read_all, &jobs[t]);
    for (int t = 0; t < 2 && r; t++)
        pthread_join(threads[t], NULL);
    CHECK(jobs[0].mismatches == 0 && jobs[1].mismatches == 0, "concurrent reads: %d + %d mismatches",
          jobs[0].mismatches, jobs[1].mismatches);
    tga_shard_reader_close(r);
    free_samples(samples, n);
}

/* ---- corruption ------------------------------------------------------------------------------------ */

/* Which region of a 3-sample shard a byte is in, and the message flipping it must give. */
static void check_flipped_byte(const unsigned char *good, size_t size, size_t pos, const tga_shard_layout *l,
                               owned_sample *samples, int n) {
    const char *path = tu_in_dir(tmp_dir, "flip.tgas");
    unsigned char *bad = xmalloc(size);
    memcpy(bad, good, size);
    bad[pos] ^= (unsigned char)(1u << (pos % 8));
    tu_write_file(path, bad, size);
    uint64_t index_offset = rd64(good + 24);
    tga_shard_reader *r = NULL;
    tga_status st = open_expecting_failure(path, &r);
    char what[64];
    snprintf(what, sizeof what, "byte %zu flipped", pos);
    if (pos < 8)
        expect_error(st, TGA_ERR_FORMAT, what, path, "bad magic (not a tga shard");
    else if (pos < 12)
        expect_error(st, TGA_ERR_FORMAT, what, path, "unsupported shard format version");
    else if (pos < 64)
        expect_error(st, TGA_ERR_FORMAT, what, path, "header checksum mismatch (corrupted header)");
    else if (pos >= index_offset && pos < size - 40)
        expect_error(st, TGA_ERR_FORMAT, what, path, "index checksum mismatch");
    else if (pos >= size - 40 && pos < size - 8)
        expect_error(st, TGA_ERR_FORMAT, what, path, "footer checksum mismatch");
    else if (pos >= size - 8)
        expect_error(st, TGA_ERR_FORMAT, what, path, "footer missing");
    else {
        CHECK(tga_shard_reader_open(&r, path) == TGA_OK, "%s: a frame byte must not fail the open: %s", what,
              tga_error_message());
        for (int i = 0; r && i < n; i++) {
            uint64_t offset = rd64(good + index_offset + SPEC_ENTRY_BYTES * (uint64_t)i),
                     bytes = rd32(good + index_offset + SPEC_ENTRY_BYTES * (uint64_t)i + 8);
            tga_shard_sample s = {0};
            tga_error_clear();
            st = tga_shard_reader_read(r, (uint64_t)i, &s);
            if (pos >= offset && pos < offset + bytes) {
                char expected[700];
                snprintf(expected, sizeof expected,
                         "%s: sample %d (id '%s'): frame checksum mismatch (corrupted data)", path, i,
                         samples[i].id);
                CHECK(st == TGA_ERR_FORMAT && strcmp(tga_error_message(), expected) == 0,
                      "%s: got '%s', want '%s'", what, tga_error_message(), expected);
                CHECK(s.storage == NULL && s.n_tokens == 0, "%s: a failed read must leave a zeroed sample",
                      what);
            } else {
                CHECK(st == TGA_OK && same_sample(l, &s, &samples[i].s), "%s: untouched sample %d: %s", what,
                      i, tga_error_message());
            }
            tga_shard_sample_free(&s);
        }
        tga_shard_reader_close(r);
    }
    free(bad);
}

static void test_every_byte_flipped(uint64_t *rng) {
    tga_shard_layout l = {2, 3, TGA_SHARD_F16};
    owned_sample *samples = make_samples(&l, 3, rng);
    write_shard(tu_in_dir(tmp_dir, "good.tgas"), &l, samples, 3);
    size_t size = 0;
    unsigned char *good = read_bytes(tu_in_dir(tmp_dir, "good.tgas"), &size);
    CHECK(good && size > 104, "cannot read back the shard");
    for (size_t pos = 0; good && pos < size; pos++)
        check_flipped_byte(good, size, pos, &l, samples, 3);
    free(good);
    free_samples(samples, 3);
}

static void test_truncated_and_extended(uint64_t *rng) {
    tga_shard_layout l = {2, 3, TGA_SHARD_F32};
    owned_sample *samples = make_samples(&l, 3, rng);
    write_shard(tu_in_dir(tmp_dir, "whole.tgas"), &l, samples, 3);
    size_t size = 0;
    unsigned char *whole = read_bytes(tu_in_dir(tmp_dir, "whole.tgas"), &size);
    const char *path = tu_in_dir(tmp_dir, "cut.tgas");
    tga_shard_reader *r = NULL;
    for (size_t cut = 0; whole && cut < size; cut++) {
        tu_write_file(path, whole, cut);
        char what[64];
        snprintf(what, sizeof what, "cut to %zu of %zu bytes", cut, size);
        expect_error(open_expecting_failure(path, &r), TGA_ERR_FORMAT, what, path, "truncated");
    }
    char exact[700];
    tu_write_file(path, whole, size - 1);
    snprintf(exact, sizeof exact, "%s: truncated: file is %zu bytes, the header says %zu", path, size - 1,
             size);
    expect_error(open_expecting_failure(path, &r), TGA_ERR_FORMAT, "cut by one byte", exact, NULL);
    tu_write_file(path, whole, 50);
    snprintf(exact, sizeof exact, "%s: truncated: footer missing (file is 50 bytes, expected at least 104)",
             path);
    expect_error(open_expecting_failure(path, &r), TGA_ERR_FORMAT, "cut to 50 bytes", exact, NULL);
    unsigned char *longer = xmalloc(size + 1);
    memcpy(longer, whole, size);
    longer[size] = 0;
    tu_write_file(path, longer, size + 1);
    expect_error(open_expecting_failure(path, &r), TGA_ERR_FORMAT, "one byte appended", path,
                 "unexpected bytes after the footer");
    free(longer);
    free(whole);
    free_samples(samples, 3);
}

static void test_magic_and_version(uint64_t *rng) {
    tga_shard_layout l = {2, 3, TGA_SHARD_F16};
    owned_sample *samples = make_samples(&l, 2, rng);
    size_t size = 0;
    unsigned char *file = spec_shard_of(&l, samples, 2, &size);
    const char *path = tu_in_dir(tmp_dir, "versions.tgas");
    tga_shard_reader *r = NULL;
    unsigned char not_a_shard[200];
    memset(not_a_shard, 'x', sizeof not_a_shard);
    memcpy(not_a_shard, "\x93NUMPY", 6);
    tu_write_file(path, not_a_shard, sizeof not_a_shard);
    char exact[700];
    snprintf(exact, sizeof exact, "%s: bad magic (not a tga shard", path);
    expect_error(open_expecting_failure(path, &r), TGA_ERR_FORMAT, "an .npy file", exact, NULL);
    le32(file + 8, 2);
    spec_reseal(file, size);
    tu_write_file(path, file, size);
    snprintf(exact, sizeof exact, "%s: unsupported shard format version 2 (this tga reads version 1)", path);
    expect_error(open_expecting_failure(path, &r), TGA_ERR_FORMAT, "version 2", exact, NULL);
    expect_error(open_expecting_failure(tu_in_dir(tmp_dir, "missing.tgas"), &r), TGA_ERR_IO, "missing file",
                 tu_in_dir(tmp_dir, "missing.tgas"), "No such file");
    free(file);
    free_samples(samples, 2);
}

/* ---- fields behind valid checksums ---------------------------------------------------------------- */

typedef void (*file_edit)(unsigned char *file, size_t size);

static void edit_flags(unsigned char *f, size_t size) { le32(f + 12, 1); }
static void edit_dtype(unsigned char *f, size_t size) { le32(f + 48, 3); }
static void edit_half_layout(unsigned char *f, size_t size) { le32(f + 40, 0); }
static void edit_footer_count(unsigned char *f, size_t size) { le64(f + size - 40, rd64(f + 16) + 1); }
static void edit_entry_offset(unsigned char *f, size_t size) {
    unsigned char *entry = f + rd64(f + 24) + SPEC_ENTRY_BYTES;
    le64(entry, rd64(entry) + 1);
}
static void edit_entry_content(unsigned char *f, size_t size) { le32(f + rd64(f + 24) + 12, (1u << 30) + 1); }
static void edit_id_control(unsigned char *f, size_t size) {
    f[rd64(f + 24) + SPEC_ENTRY_BYTES * rd64(f + 16)] = '\n';
}
static void edit_index_tail(unsigned char *f, size_t size) {
    le32(f + rd64(f + 24) + 20, rd32(f + rd64(f + 24) + 20) - 1);
}
/* 4 more content bytes and one more caption token in the stats, so that the open still passes */
static void edit_frame_content_size(unsigned char *f, size_t size) {
    unsigned char *entry = f + rd64(f + 24);
    le32(entry + 12, rd32(entry + 12) + 4);
    le32(entry + 36, rd32(entry + 36) + 1);
}
static void edit_frame_magic(unsigned char *f, size_t size) { f[64] ^= 1; }
/* zstd's own checksum: the last 4 bytes of frame 0 (the spec resealing fixes only the CRC32C) */
static void edit_zstd_checksum(unsigned char *f, size_t size) { f[64 + rd32(f + rd64(f + 24) + 8) - 1] ^= 1; }

/* Index stats (entry 0 unless named; test_fields_behind_checksums makes sample 0 have T, Tc >= 2). */
static unsigned char *entry_stats(unsigned char *f, uint64_t i) {
    return f + rd64(f + 24) + SPEC_ENTRY_BYTES * i + 32;
}
static void edit_stats_tokens(unsigned char *f, size_t size) {
    le32(entry_stats(f, 0), rd32(entry_stats(f, 0)) + 1);
}
static void edit_stats_images(unsigned char *f, size_t size) {
    le32(entry_stats(f, 1) + 8, rd32(entry_stats(f, 1) + 8) + 1);
}
static void edit_stats_all_targets(unsigned char *f, size_t size) {
    le32(entry_stats(f, 0) + 12, rd32(entry_stats(f, 0)));
}
/* still 0 <= targets < T and the same content size: only the read can tell */
static void edit_stats_targets(unsigned char *f, size_t size) {
    uint32_t targets = rd32(entry_stats(f, 0) + 12);
    le32(entry_stats(f, 0) + 12, targets > 0 ? targets - 1 : 1);
}
/* one more token and two fewer caption tokens: 8 bytes more, 8 bytes fewer */
static void edit_stats_shifted(unsigned char *f, size_t size) {
    le32(entry_stats(f, 0), rd32(entry_stats(f, 0)) + 1);
    le32(entry_stats(f, 0) + 4, rd32(entry_stats(f, 0) + 4) - 2);
}

static void test_fields_behind_checksums(uint64_t *rng) {
    static const struct {
        file_edit edit;
        int read_sample; /* -1: the open must fail; else the open passes and this read fails */
        const char *expected;
    } cases[] = {
        {edit_flags, -1, "unknown header flags 0x1"},
        {edit_dtype, -1, "dtype code 3"},
        {edit_half_layout, -1, "image layout P = 0, Dv = 3"},
        {edit_footer_count, -1, "header and footer disagree"},
        {edit_entry_offset, -1, "index entry 1: frame at byte"},
        {edit_entry_content, -1, "index entry 0: frame of"},
        {edit_id_control, -1, "sample 0: id has control character 0x0a"},
        {edit_index_tail, -1, "bytes of ids need"},
        {edit_frame_content_size, 0, "zstd frame declares a different number of content bytes"},
        {edit_frame_magic, 0, "frame does not start with the zstd magic number"},
        {edit_zstd_checksum, 0, "content checksum mismatch (corrupted data)"},
        {edit_stats_tokens, -1, "index entry 0: stats T = "},
        {edit_stats_images, -1, "index entry 1: stats T = "},
        {edit_stats_all_targets, -1, "index entry 0: stats T = "},
        {edit_stats_targets, 0, "(corrupted index)"},
        {edit_stats_shifted, 0, "(corrupted index)"},
    };
    tga_shard_layout l = {2, 3, TGA_SHARD_F16};
    owned_sample *samples = make_samples(&l, 3, rng);
    while (samples[0].s.n_tokens < 2 || samples[0].s.n_caption_tokens < 2) {
        free_samples(samples, 3);
        samples = make_samples(&l, 3, rng);
    }
    size_t size = 0;
    unsigned char *good = spec_shard_of(&l, samples, 3, &size);
    const char *path = tu_in_dir(tmp_dir, "fields.tgas");
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        unsigned char *file = xmalloc(size);
        memcpy(file, good, size);
        cases[c].edit(file, size);
        spec_reseal(file, size);
        tu_write_file(path, file, size);
        tga_shard_reader *r = NULL;
        if (cases[c].read_sample < 0) {
            expect_error(open_expecting_failure(path, &r), TGA_ERR_FORMAT, cases[c].expected, path,
                         cases[c].expected);
        } else {
            tga_error_clear();
            CHECK(tga_shard_reader_open(&r, path) == TGA_OK, "%s: open: %s", cases[c].expected,
                  tga_error_message());
            tga_shard_sample s = {0};
            char prefix[700];
            snprintf(prefix, sizeof prefix, "%s: sample 0 (id '%s'): ", path, samples[0].id);
            if (r)
                expect_error(tga_shard_reader_read(r, 0, &s), TGA_ERR_FORMAT, cases[c].expected, prefix,
                             cases[c].expected);
            tga_shard_reader_close(r);
        }
        free(file);
    }
    free(good);
    free_samples(samples, 3);
}

/* Frame slots holding something other than one checksummed frame of the promised size. */
static void test_frame_shapes(uint64_t *rng) {
    tga_shard_layout l = {2, 3, TGA_SHARD_F32};
    owned_sample one;
    make_sample(&one, &l, 1, 0, 7, rng);
    size_t bytes = 0, plain_bytes = 0, frame_bytes = 0;
    unsigned char *content = spec_content(&l, &one.s, &bytes);
    unsigned char *plain = spec_frame(content, bytes, 0, &plain_bytes),
                  *frame = spec_frame(content, bytes, 1, &frame_bytes);
    unsigned char *trailing = xmalloc(frame_bytes + 4);
    memcpy(trailing, frame, frame_bytes);
    memset(trailing + frame_bytes, 0, 4);
    const struct {
        spec_part part;
        const char *expected;
    } cases[] = {
        {{plain, plain_bytes, (uint32_t)bytes, "no_checksum", 0, spec_stats_of(&one.s)},
         "zstd frame has no content checksum"},
        {{trailing, frame_bytes + 4, (uint32_t)bytes, "trailing", 0, spec_stats_of(&one.s)},
         "does not hold exactly one zstd frame"},
    };
    for (size_t c = 0; c < 2; c++) {
        size_t size = 0;
        unsigned char *file = spec_shard(&l, &cases[c].part, 1, &size);
        tu_write_file(tu_in_dir(tmp_dir, "frames.tgas"), file, size);
        tga_shard_reader *r = NULL;
        tga_error_clear();
        CHECK(tga_shard_reader_open(&r, tu_in_dir(tmp_dir, "frames.tgas")) == TGA_OK, "open: %s",
              tga_error_message());
        tga_shard_sample s = {0};
        if (r)
            expect_error(tga_shard_reader_read(r, 0, &s), TGA_ERR_FORMAT, cases[c].expected, cases[c].part.id,
                         cases[c].expected);
        tga_shard_reader_close(r);
        free(file);
    }
    free(trailing);
    free(plain);
    free(frame);
    free(content);
    owned_free(&one);
}

/* ---- sample invariants: the writer refuses, the reader refuses ------------------------------------ */

typedef void (*sample_edit)(tga_shard_sample *s);

static int32_t text_position(const tga_shard_sample *s) {
    for (int32_t t = 0;; t++)
        if (s->input_ids[t] != TGA_IMAGE_TOKEN_ID) return t;
}

static void edit_span_past_end(tga_shard_sample *s) {
    s->images[1].start = s->n_tokens - s->images[1].length + 1;
}
static void edit_overlap(tga_shard_sample *s) { s->images[1].start = s->images[0].start + 1; }
static void edit_patches(tga_shard_sample *s) { s->images[0].length -= 1; }
static void edit_stray_image_token(tga_shard_sample *s) {
    s->input_ids[text_position(s)] = TGA_IMAGE_TOKEN_ID;
}
static void edit_text_in_image(tga_shard_sample *s) { s->input_ids[s->images[0].start] = 5; }
static void edit_label_on_image(tga_shard_sample *s) { s->labels[s->images[1].start + 1] = 7; }
static void edit_bad_label(tga_shard_sample *s) { s->labels[text_position(s)] = -5; }
static void edit_retrieved_on_image(tga_shard_sample *s) {
    s->retrieved = (tga_shard_span){s->images[0].start + 1, 1};
}
static void edit_retrieved_past_end(tga_shard_sample *s) {
    s->retrieved = (tga_shard_span){s->n_tokens - 1, 2};
}
static void edit_caption_past_end(tga_shard_sample *s) {
    s->caption = (tga_shard_span){1, s->n_caption_tokens};
}
static void edit_negative_caption_id(tga_shard_sample *s) { s->cap_ids[s->n_caption_tokens - 1] = -3; }
static void edit_tox(tga_shard_sample *s) { s->tox = 2; }
static void edit_nan_feature(tga_shard_sample *s) { ((float *)s->features)[2 * 3 + 4] = NAN; }
static void edit_inf_feature(tga_shard_sample *s) { ((float *)s->features)[0] = -INFINITY; }

static const struct {
    sample_edit edit;
    const char *expected;
} sample_cases[] = {
    {edit_span_past_end, "image 1 span ["},
    {edit_overlap, "image 1 span ["},
    {edit_patches, "image 0 has 1 patches (expected the shard's P = 2)"},
    {edit_stray_image_token, "(expected a token id >= 0; -200 only inside an image span)"},
    {edit_text_in_image, "is 5 inside image 0's span (expected -200)"},
    {edit_label_on_image, "is 7 at an image patch position (expected -100)"},
    {edit_bad_label, "is -5 (expected a token id >= 0 or -100)"},
    {edit_retrieved_on_image, "retrieved-text span ["},
    {edit_retrieved_past_end, "retrieved-text span (start"},
    {edit_caption_past_end, "caption span (start 1"},
    {edit_negative_caption_id, "is -3 (expected a token id >= 0)"},
    {edit_tox, "tox flag is 2 (expected 0 or 1)"},
    {edit_nan_feature, "feature of image 1, patch 1, dim 1 is not finite"},
    {edit_inf_feature, "feature of image 0, patch 0, dim 0 is not finite"},
};

/* A valid sample with 2 images (P = 2), a caption of >= 2 tokens, and text before the images. */
static void make_invariant_base(owned_sample *o, const tga_shard_layout *l, uint64_t *rng) {
    do {
        owned_free(o);
        make_sample(o, l, 2, 0, 42, rng);
    } while (o->s.n_caption_tokens < 2);
}

static void check_reader_refuses(const tga_shard_layout *l, owned_sample *good, owned_sample *bad,
                                 const char *expected) {
    owned_sample trio[3] = {*good, *bad, *good};
    size_t size = 0;
    unsigned char *file = spec_shard_of(l, trio, 3, &size);
    const char *path = tu_in_dir(tmp_dir, "invariant.tgas");
    tu_write_file(path, file, size);
    tga_shard_reader *r = NULL;
    tga_error_clear();
    CHECK(tga_shard_reader_open(&r, path) == TGA_OK, "%s: open: %s", expected, tga_error_message());
    tga_shard_sample s = {0};
    char prefix[700];
    snprintf(prefix, sizeof prefix, "%s: sample 1 (id '%s'): ", path, bad->id);
    if (r) expect_error(tga_shard_reader_read(r, 1, &s), TGA_ERR_FORMAT, expected, prefix, expected);
    CHECK(r && tga_shard_reader_read(r, 2, &s) == TGA_OK && same_sample(l, &s, &good->s),
          "%s: the next sample", expected);
    tga_shard_sample_free(&s);
    tga_shard_reader_close(r);
    free(file);
}

/* One writer meets every bad sample in turn (each refused, the writer staying usable, a good sample
 * after it accepted); the reader meets each in a shard built by the spec encoder. */
static void test_sample_invariants(uint64_t *rng) {
    tga_shard_layout l = {2, 3, TGA_SHARD_F32};
    owned_sample good = {0}, bad = {0};
    make_invariant_base(&good, &l, rng);
    tga_shard_writer *w = NULL;
    tga_error_clear();
    CHECK(tga_shard_writer_open(&w, tu_in_dir(tmp_dir, "refuse.tgas"), &l) == TGA_OK, "open: %s",
          tga_error_message());
    for (size_t c = 0; w && c < sizeof sample_cases / sizeof sample_cases[0]; c++) {
        make_invariant_base(&bad, &l, rng);
        snprintf(bad.id, sizeof bad.id, "bad_%zu", c);
        sample_cases[c].edit(&bad.s);
        char prefix[700];
        snprintf(prefix, sizeof prefix, "refuse.tgas: sample %zu (id '%s', record %llu): ", c, bad.id,
                 (unsigned long long)bad.s.record);
        expect_error(tga_shard_writer_add(w, &bad.s), TGA_ERR_FORMAT, sample_cases[c].expected, prefix,
                     sample_cases[c].expected);
        CHECK(tga_shard_writer_add(w, &good.s) == TGA_OK, "%s: the writer must stay usable: %s",
              sample_cases[c].expected, tga_error_message());
        check_reader_refuses(&l, &good, &bad, sample_cases[c].expected);
    }
    CHECK(w && tga_shard_writer_close(w) == TGA_OK, "close: %s", tga_error_message());
    owned_free(&good);
    owned_free(&bad);
}

/* Content bytes that no sample struct can express, through tga_shard_decode. */
static void test_content_bytes(uint64_t *rng) {
    tga_shard_layout l = {2, 3, TGA_SHARD_F16}, text_only = {0, 0, TGA_SHARD_F16};
    owned_sample o;
    make_sample(&o, &l, 1, 1, 9, rng);
    size_t bytes = 0;
    unsigned char *content = spec_content(&l, &o.s, &bytes);
    tga_shard_sample s = {0};
    tga_error_clear();
    CHECK(tga_shard_decode("decode", &l, content, bytes, &s) == TGA_OK, "decode: %s", tga_error_message());
    s.id = o.id;
    s.record = o.s.record;
    CHECK(same_sample(&l, &s, &o.s), "decode differs from the sample");
    tga_shard_sample_free(&s);
    unsigned char *longer = xmalloc(bytes + 4);
    memcpy(longer, content, bytes);
    memset(longer + bytes, 0, 4);
    expect_error(tga_shard_decode("decode", &l, longer, bytes + 4, &s), TGA_ERR_FORMAT, "4 extra bytes",
                 "decode: content is", "need");
    expect_error(tga_shard_decode("decode", &l, content, 31, &s), TGA_ERR_FORMAT, "short",
                 "decode: content is 31", NULL);
    expect_error(tga_shard_decode("decode", &text_only, content, bytes, &s), TGA_ERR_FORMAT,
                 "image in text-only", "1 image(s) in a text-only shard", NULL);
    content[30] = 1;
    expect_error(tga_shard_decode("decode", &l, content, bytes, &s), TGA_ERR_FORMAT, "reserved byte",
                 "reserved bytes 29..31", NULL);
    CHECK(s.storage == NULL, "a failed decode leaves a zeroed sample");
    free(longer);
    free(content);
    owned_free(&o);
}

static void test_writer_arguments(void) {
    static const tga_shard_layout bad[] = {{0, 5, TGA_SHARD_F16},
                                           {4, 3, (tga_shard_dtype)7},
                                           {-1, -1, TGA_SHARD_F32},
                                           {1 << 16, 1 << 14, TGA_SHARD_F32}};
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        tga_shard_writer *w = NULL;
        tga_error_clear();
        expect_error(tga_shard_writer_open(&w, tu_in_dir(tmp_dir, "bad_layout.tgas"), &bad[c]),
                     TGA_ERR_FORMAT, "bad layout", "bad_layout.tgas: ", NULL);
        CHECK(w == NULL && !file_exists(tu_in_dir(tmp_dir, "bad_layout.tgas.tmp")),
              "a refused layout creates nothing");
    }
    tga_shard_layout text_only = {0, 0, TGA_SHARD_F32};
    tga_shard_writer *w = NULL;
    uint64_t rng = 5;
    owned_sample o;
    tga_shard_layout with_images = {2, 3, TGA_SHARD_F32};
    make_sample(&o, &with_images, 1, 0, 3, &rng);
    CHECK(tga_shard_writer_open(&w, tu_in_dir(tmp_dir, "text.tgas"), &text_only) == TGA_OK, "open: %s",
          tga_error_message());
    if (w)
        expect_error(tga_shard_writer_add(w, &o.s), TGA_ERR_FORMAT, "image into text-only", "text-only shard",
                     NULL);
    snprintf(o.id, sizeof o.id, "tab\there");
    if (w)
        expect_error(tga_shard_writer_add(w, &o.s), TGA_ERR_FORMAT, "control id", "control character 0x09",
                     NULL);
    o.id[0] = '\0';
    if (w) expect_error(tga_shard_writer_add(w, &o.s), TGA_ERR_FORMAT, "empty id", "id is 0 bytes", NULL);
    tga_shard_writer_discard(w);
    CHECK(!file_exists(tu_in_dir(tmp_dir, "text.tgas.tmp")) && !file_exists(tu_in_dir(tmp_dir, "text.tgas")),
          "discard leaves no file");
    expect_error(tga_shard_writer_open(&w, "/nonexistent_dir_for_tga/x.tgas", &with_images), TGA_ERR_IO,
                 "unwritable", "/nonexistent_dir_for_tga/x.tgas.tmp", NULL);
    owned_free(&o);
}

/* ---- an interrupted writer loses nothing ---------------------------------------------------------- */

static void test_interrupted_writer(uint64_t *rng) {
    tga_shard_layout l = {6, 10, TGA_SHARD_F32};
    owned_sample *old = make_samples(&l, 4, rng), *fresh = make_samples(&l, 6, rng);
    const char *path = tu_in_dir(tmp_dir, "crash.tgas"), *never = tu_in_dir(tmp_dir, "never.tgas");
    char tmp[600], never_tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(never_tmp, sizeof never_tmp, "%s.tmp", never);
    write_shard(path, &l, old, 4);
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) { /* the child dies mid-shard, with frames written and nothing closed */
        tga_shard_writer *a = NULL, *b = NULL;
        if (tga_shard_writer_open(&a, path, &l) != TGA_OK || tga_shard_writer_open(&b, never, &l) != TGA_OK)
            _exit(3);
        for (int i = 0; i < 6; i++)
            if (tga_shard_writer_add(a, &fresh[i].s) != TGA_OK ||
                tga_shard_writer_add(b, &fresh[i].s) != TGA_OK)
                _exit(4);
        _exit(0);
    }
    int status = 0;
    CHECK(child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the writer child failed");
    CHECK(file_exists(never_tmp) && !file_exists(never), "an unclosed writer must leave only %s", never_tmp);
    tga_shard_reader *r = NULL;
    expect_error(open_expecting_failure(never, &r), TGA_ERR_IO, "open an unfinished shard", never,
                 "No such file");
    expect_error(open_expecting_failure(never_tmp, &r), TGA_ERR_FORMAT, "open the .tmp file", never_tmp,
                 NULL);
    CHECK(file_exists(tmp), "the interrupted rewrite's .tmp file");
    int order[4] = {3, 0, 2, 1};
    check_reads_in_order(path, &l, old, 4, order); /* the old shard is intact */
    free_samples(old, 4);
    free_samples(fresh, 6);
}

/* A write that fails part-way (file size limit: EFBIG) is reported, poisons the writer, and leaves
 * neither the .tmp file nor any change to an older shard at the path. */
static void test_failing_write(uint64_t *rng) {
    tga_shard_layout l = {6, 10, TGA_SHARD_F32};
    owned_sample *old = make_samples(&l, 2, rng), *fresh = make_samples(&l, 30, rng);
    const char *path = tu_in_dir(tmp_dir, "full.tgas");
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    write_shard(path, &l, old, 2);
    struct rlimit old_limit, small_limit;
    getrlimit(RLIMIT_FSIZE, &old_limit);
    small_limit = old_limit;
    small_limit.rlim_cur = 8192;
    signal(SIGXFSZ, SIG_IGN);
    tga_shard_writer *w = NULL;
    tga_error_clear();
    setrlimit(RLIMIT_FSIZE, &small_limit);
    tga_status st = tga_shard_writer_open(&w, path, &l);
    int added = 0;
    while (st == TGA_OK && added < 30)
        st = tga_shard_writer_add(w, &fresh[added++].s);
    tga_status after = w ? tga_shard_writer_add(w, &fresh[0].s) : TGA_OK;
    tga_status closed = w ? tga_shard_writer_close(w) : TGA_OK;
    setrlimit(RLIMIT_FSIZE, &old_limit);
    CHECK(st == TGA_ERR_IO || (st == TGA_OK && closed == TGA_ERR_IO), "a failing write: add %s, close %s",
          tga_status_name(st), tga_status_name(closed));
    CHECK(strstr(tga_error_message(), tmp) != NULL && strstr(tga_error_message(), "File too large") != NULL,
          "message names the file and the cause: %s", tga_error_message());
    CHECK(st != TGA_ERR_IO || (after == TGA_ERR_IO && closed == TGA_ERR_IO),
          "a failed writer refuses the rest");
    CHECK(!file_exists(tmp), "the .tmp file is removed after a failed close");
    int order[2] = {1, 0};
    check_reads_in_order(path, &l, old, 2, order);
    free_samples(old, 2);
    free_samples(fresh, 30);
}

/* ---- fuzz seeds ---------------------------------------------------------------------------------- */

static void write_seed(const char *dir, const char *name, const void *bytes, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    tu_write_file(path, bytes, n);
}

/* Content seeds for the harness's decode mode: 'P', then P, Dv, dtype as u32, then the content. */
static void write_content_seed(const char *dir, const char *name, const tga_shard_layout *l,
                               const tga_shard_sample *s) {
    size_t bytes = 0;
    unsigned char *content = spec_content(l, s, &bytes), *seed = xmalloc(13 + bytes);
    seed[0] = 'P';
    le32(seed + 1, (uint32_t)l->patches_per_image);
    le32(seed + 5, (uint32_t)l->feature_dim);
    le32(seed + 9, (uint32_t)l->feature_dtype);
    memcpy(seed + 13, content, bytes);
    write_seed(dir, name, seed, 13 + bytes);
    free(seed);
    free(content);
}

static int write_corpus(const char *dir) {
    uint64_t rng = 11;
    tga_shard_layout f16 = {2, 3, TGA_SHARD_F16}, f32 = {2, 2, TGA_SHARD_F32}, text = {0, 0, TGA_SHARD_F16};
    const struct {
        const char *name;
        const tga_shard_layout *layout;
        int n;
    } shards[] = {{"valid_f16.tgas", &f16, 3},
                  {"valid_f32.tgas", &f32, 2},
                  {"text_only.tgas", &text, 2},
                  {"empty.tgas", &f16, 0}};
    for (size_t k = 0; k < sizeof shards / sizeof shards[0]; k++) {
        owned_sample *samples = make_samples(shards[k].layout, shards[k].n, &rng);
        size_t size = 0;
        unsigned char *file = spec_shard_of(shards[k].layout, samples, shards[k].n, &size);
        write_seed(dir, shards[k].name, file, size);
        if (k == 0) {
            write_seed(dir, "truncated.tgas", file, size - 9);
            file[70] ^= 0x10;
            write_seed(dir, "flipped_frame.tgas", file, size);
            write_content_seed(dir, "content_2_images.bin", &f16, &samples[2].s);
            samples[2].s.images[1].start = samples[2].s.n_tokens;
            write_content_seed(dir, "content_bad_span.bin", &f16, &samples[2].s);
        }
        free(file);
        free_samples(samples, shards[k].n);
    }
    return tu_failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0) return write_corpus(argv[2]);
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    uint64_t rng = 0x5eed5ba5e;
    CHECK(spec_crc32c("123456789", 9) == 0xE3069283u, "the test's CRC32C misses the standard check value");
    tga_shard_layout f16 = {6, 10, TGA_SHARD_F16}, f32 = {5, 8, TGA_SHARD_F32},
                     text_only = {0, 0, TGA_SHARD_F32};
    test_round_trip("f16.tgas", &f16, 30, &rng);
    test_round_trip("f32.tgas", &f32, 30, &rng);
    test_round_trip("text_only.tgas", &text_only, 12, &rng);
    test_round_trip("empty.tgas", &f16, 0, &rng);
    test_concurrent_reads(&rng);
    test_every_byte_flipped(&rng);
    test_truncated_and_extended(&rng);
    test_magic_and_version(&rng);
    test_fields_behind_checksums(&rng);
    test_frame_shapes(&rng);
    test_sample_invariants(&rng);
    test_content_bytes(&rng);
    test_writer_arguments();
    test_interrupted_writer(&rng);
    test_failing_write(&rng);
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return tu_finish("test_shard");
}
