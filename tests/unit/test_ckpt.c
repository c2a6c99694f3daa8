/* Checkpoints: XXH64 against zstd's own checksum, the chunk codec (both kinds, plane layout checked
 * by decompressing with zstd alone), tensor files (round trips, ranges, a bit-flip sweep that must
 * never give silently wrong data), checkpoint directories (round trip of tensors and blobs with
 * both codecs, several ranks, re-sharding to other world sizes, base model identity), choosing
 * the newest verified checkpoint past partial and corrupted ones, retention, and failing writes
 * (the injection hook at many byte positions, its environment variable, a file size limit, a
 * path that is not a directory): each gives an error naming the file and loses nothing. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, dup, readlink, pread */

#include "runtime/ckpt.h"
#include "runtime/fileio.h"
#include "runtime/log.h"
#include "tests/testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

static char tmp_root[] = "/tmp/tga_test_ckpt_XXXXXX";

/* printf into one of a few rotating buffers (paths are short-lived). */
static const char *path_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *path_fmt(const char *fmt, ...) {
    static char buffers[8][1024];
    static int next = 0;
    char *out = buffers[next];
    next = (next + 1) % 8;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, sizeof buffers[0], fmt, ap);
    va_end(ap);
    return out;
}

/* A fresh directory under tmp_root; the name stays valid until the end of the test. */
static const char *new_run_dir(const char *name) {
    static char dirs[32][1024];
    static int used = 0;
    char *dir = dirs[used++ % 32];
    snprintf(dir, sizeof dirs[0], "%s/%s", tmp_root, name);
    CHECK(mkdir(dir, 0755) == 0, "mkdir %s: %s", dir, strerror(errno));
    return dir;
}

static int path_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

static unsigned char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *bytes = malloc((size_t)size + 1);
    *n = fread(bytes, 1, (size_t)size, f);
    bytes[*n] = 0;
    fclose(f);
    return bytes;
}

static void flip_byte(const char *path, long offset) {
    size_t n = 0;
    unsigned char *bytes = read_file(path, &n);
    CHECK(bytes && offset >= 0 && (size_t)offset < n, "cannot flip byte %ld of %s", offset, path);
    if (bytes && offset >= 0 && (size_t)offset < n) {
        bytes[offset] ^= 0x10;
        tu_write_file(path, bytes, n);
    }
    free(bytes);
}

/* stderr into a file while warnings are expected, so that the test can read them. */
static int saved_stderr = -1;
static void capture_stderr(void) {
    fflush(stderr);
    saved_stderr = dup(2);
    int fd = open(path_fmt("%s/stderr.txt", tmp_root), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
}

static char *release_stderr(void) {
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    size_t n = 0;
    char *text = (char *)read_file(path_fmt("%s/stderr.txt", tmp_root), &n);
    return text ? text : calloc(1, 1);
}

/* ---- sample checkpoint content ---------------------------------------------------------------- */

enum { SAMPLE_TENSORS = 6 };
typedef struct {
    tga_ckpt_tensor t[SAMPLE_TENSORS];
    unsigned char *bytes[SAMPLE_TENSORS];
    char state_json[128];
} sample;

static void *random_bytes(size_t n, uint64_t *rng) {
    unsigned char *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)tu_next(rng);
    return p;
}

/* Tensors of every dtype and rank kind (scalar, empty, several frames), values with the structure
 * of weights (floats of one scale) so both codecs have something to compress. */
static void make_sample(sample *s, uint64_t *rng, int64_t big) {
    static const char *names[SAMPLE_TENSORS] = {"w.f32",   "big.f32",  "emb.bf16",
                                                "idx.i32", "step.i64", "empty.u8"};
    static const tga_ckpt_dtype dtypes[SAMPLE_TENSORS] = {TGA_CKPT_F32, TGA_CKPT_F32, TGA_CKPT_BF16,
                                                          TGA_CKPT_I32, TGA_CKPT_I64, TGA_CKPT_U8};
    const int64_t shapes[SAMPLE_TENSORS][3] = {{3, 5}, {big}, {4, 7}, {2, 2, 2}, {0}, {0, 3}};
    const int ndims[SAMPLE_TENSORS] = {2, 1, 2, 3, 0, 2};
    for (int i = 0; i < SAMPLE_TENSORS; i++) {
        tga_ckpt_tensor *t = &s->t[i];
        *t = (tga_ckpt_tensor){.name = names[i], .dtype = dtypes[i], .ndim = ndims[i]};
        int64_t count = 1;
        for (int d = 0; d < ndims[i]; d++)
            count *= (t->shape[d] = shapes[i][d]);
        size_t bytes = (size_t)count * tga_ckpt_dtype_size(t->dtype);
        if (t->dtype == TGA_CKPT_F32) {
            s->bytes[i] = malloc(bytes);
            tu_fill_uniform((float *)s->bytes[i], (size_t)count, -0.05f, 0.05f, rng);
        } else {
            s->bytes[i] = random_bytes(bytes, rng);
        }
        t->data = s->bytes[i];
    }
    snprintf(s->state_json, sizeof s->state_json, "{\"step\": %" PRIu64 ", \"rng\": \"%016" PRIx64 "\"}\n",
             tu_next(rng) % 1000, tu_next(rng));
}

static void free_sample(sample *s) {
    for (int i = 0; i < SAMPLE_TENSORS; i++)
        free(s->bytes[i]);
}

static tga_ckpt_codec codec_of(tga_ckpt_codec_kind kind, int level, int64_t chunk) {
    return (tga_ckpt_codec){.kind = kind, .level = level, .chunk_values = chunk};
}

/* The whole single-rank sequence; stops at the first failure (like a trainer would). */
static tga_status save_checkpoint(const char *run_dir, int64_t step, const sample *s, tga_ckpt_codec codec,
                                  const char *model_path) {
    TGA_TRY(tga_ckpt_begin(run_dir, step));
    tga_ckpt_writer *w = NULL;
    TGA_TRY(tga_ckpt_writer_open(&w, run_dir, step, 0));
    tga_status st = tga_ckpt_write_tensors(w, "params.tgat", s->t, SAMPLE_TENSORS, codec);
    if (st == TGA_OK) st = tga_ckpt_write_blob(w, "state.json", s->state_json, strlen(s->state_json));
    uint64_t model_size = 0, model_hash = 0;
    if (st == TGA_OK && model_path) st = tga_path_hash(model_path, &model_size, &model_hash);
    if (st == TGA_OK && model_path) st = tga_ckpt_write_identity(w, "base_model.id", model_size, model_hash);
    if (st != TGA_OK) {
        tga_ckpt_writer_discard(w);
        return st;
    }
    TGA_TRY(tga_ckpt_writer_close(w));
    TGA_TRY(tga_ckpt_commit(run_dir, step, 1));
    return tga_ckpt_mark_done(run_dir, step);
}

static void check_sample_file(const char *path, const sample *s, tga_ckpt_codec codec) {
    tga_ckpt_reader *r = NULL;
    tga_error_clear();
    CHECK(tga_ckpt_reader_open(&r, path) == TGA_OK, "open %s: %s", path, tga_error_message());
    if (!r) return;
    CHECK(tga_ckpt_reader_count(r) == SAMPLE_TENSORS, "%s: %d tensors", path, tga_ckpt_reader_count(r));
    for (int i = 0; i < SAMPLE_TENSORS; i++) {
        const tga_ckpt_tensor *t = &s->t[i];
        const tga_ckpt_tensor_info *info = tga_ckpt_reader_info(r, i);
        CHECK(info && strcmp(info->name, t->name) == 0 && info->dtype == t->dtype && info->ndim == t->ndim &&
                  info->codec.kind == codec.kind && info->codec.level == codec.level,
              "%s: index entry %d does not describe %s as written", path, i, t->name);
        size_t bytes = tga_ckpt_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++)
            bytes *= (size_t)t->shape[d];
        unsigned char *got = malloc(bytes + 1);
        tga_error_clear();
        tga_status st = tga_ckpt_read_tensor(r, t->name, t->dtype, t->ndim, t->shape, got);
        CHECK(st == TGA_OK && memcmp(got, t->data, bytes) == 0,
              "%s: tensor %s differs after the round trip (%s)", path, t->name, tga_error_message());
        free(got);
    }
    tga_ckpt_reader_close(r);
}

/* ---- XXH64 and the chunk codec ---------------------------------------------------------------- */

/* zstd's frame checksum is the low 32 bits of XXH64(content, seed 0), stored last (RFC 8878). */
static uint32_t zstd_checksum_of(const void *data, size_t n) {
    size_t cap = ZSTD_compressBound(n);
    unsigned char *frame = malloc(cap);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    size_t size = ZSTD_compress2(cctx, frame, cap, data, n);
    uint32_t sum = ZSTD_isError(size) ? 0
                                      : (uint32_t)frame[size - 4] | (uint32_t)frame[size - 3] << 8 |
                                            (uint32_t)frame[size - 2] << 16 | (uint32_t)frame[size - 1] << 24;
    ZSTD_freeCCtx(cctx);
    free(frame);
    return sum;
}

static void test_xxh64(uint64_t *rng) {
    CHECK(tga_xxh64("", 0, 0) == 0xEF46DB3751D8E999ull, "XXH64 of the empty string: %016" PRIx64,
          tga_xxh64("", 0, 0));
    size_t max_len = 70000;
    unsigned char *data = random_bytes(max_len, rng);
    int mismatches = 0;
    for (size_t n = 0; n < max_len; n = n < 300 ? n + 1 : n * 3 / 2) {
        uint64_t whole = tga_xxh64(data, n, 0);
        if ((uint32_t)whole != zstd_checksum_of(data, n)) mismatches++;
        tga_xxh64_state s;
        tga_xxh64_reset(&s, 0);
        for (size_t done = 0; done < n;) {
            size_t piece = (size_t)(tu_next(rng) % 70);
            if (piece > n - done) piece = n - done;
            tga_xxh64_update(&s, data + done, piece);
            done += piece;
        }
        CHECK(tga_xxh64_digest(&s) == whole, "XXH64 streamed in pieces differs at length %zu", n);
    }
    CHECK(mismatches == 0, "XXH64 disagrees with zstd's content checksum at %d lengths", mismatches);
    free(data);
}

/* Byte planes written the naive way, to check the codec's layout independently. */
static unsigned char *reference_planes(const unsigned char *src, size_t values, size_t width) {
    unsigned char *planes = malloc(values * width + 1);
    for (size_t p = 0; p < width; p++)
        for (size_t i = 0; i < values; i++)
            planes[p * values + i] = src[i * width + p];
    return planes;
}

static void test_codec_kind(tga_ckpt_coder *c, tga_ckpt_codec_kind kind, size_t width, uint64_t *rng) {
    size_t values = 1000 + (size_t)(tu_next(rng) % 500), raw = values * width;
    unsigned char *src = random_bytes(raw, rng), *out = malloc(raw),
                  *frame = malloc(tga_ckpt_frame_bound(raw));
    for (size_t i = 0; i < values; i++)
        src[i * width + width - 1] = (unsigned char)(i % 3); /* a compressible plane */
    size_t frame_bytes = 0;
    tga_error_clear();
    CHECK(tga_ckpt_encode_chunk(c, codec_of(kind, 3, 0), width, src, values, frame, tga_ckpt_frame_bound(raw),
                                &frame_bytes) == TGA_OK,
          "encode: %s", tga_error_message());
    unsigned char *plain = malloc(raw);
    size_t plain_bytes = ZSTD_decompress(plain, raw, frame, frame_bytes);
    unsigned char *expected =
        kind == TGA_CKPT_ZSTD_PLANES && width > 1 ? reference_planes(src, values, width) : NULL;
    CHECK(plain_bytes == raw && memcmp(plain, expected ? expected : src, raw) == 0,
          "codec %d width %zu: zstd alone does not give the %s layout", (int)kind, width,
          expected ? "plane" : "plain");
    for (int trial = 0; trial < 20; trial++) {
        size_t first = trial == 0 ? 0 : (size_t)(tu_next(rng) % values);
        size_t count = trial == 0 ? values : (size_t)(tu_next(rng) % (values - first + 1));
        memset(out, 0xAB, raw);
        tga_error_clear();
        tga_status st =
            tga_ckpt_decode_chunk(c, kind, width, frame, frame_bytes, values, first, count, out, "test");
        CHECK(st == TGA_OK && memcmp(out, src + first * width, count * width) == 0,
              "codec %d width %zu: values [%zu, +%zu) differ (%s)", (int)kind, width, first, count,
              tga_error_message());
    }
    frame[frame_bytes / 2] ^= 0x01;
    tga_error_clear();
    CHECK(tga_ckpt_decode_chunk(c, kind, width, frame, frame_bytes, values, 0, values, out, "frame 7") ==
                  TGA_ERR_FORMAT &&
              strstr(tga_error_message(), "frame 7"),
          "a corrupt frame must be a format error naming the frame: %s", tga_error_message());
    free(src), free(out), free(frame), free(plain), free(expected);
}

static void test_codec(uint64_t *rng) {
    tga_ckpt_coder *c = NULL;
    CHECK(tga_ckpt_coder_create(&c) == TGA_OK, "coder");
    const size_t widths[] = {1, 2, 4, 8};
    for (int k = 0; k < 2; k++)
        for (int w = 0; w < 4; w++)
            test_codec_kind(c, k ? TGA_CKPT_ZSTD_PLANES : TGA_CKPT_ZSTD, widths[w], rng);
    /* A frame without a content checksum would decode unchecked: it is refused. */
    unsigned char src[400], frame[600], out[400];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)tu_next(rng);
    size_t size = ZSTD_compress(frame, sizeof frame, src, sizeof src, 1);
    tga_error_clear();
    CHECK(!ZSTD_isError(size) &&
              tga_ckpt_decode_chunk(c, TGA_CKPT_ZSTD, 4, frame, size, 100, 0, 100, out, "x") ==
                  TGA_ERR_FORMAT &&
              strstr(tga_error_message(), "checksum"),
          "a frame without checksum: %s", tga_error_message());
    tga_error_clear();
    size_t cap = tga_ckpt_frame_bound(sizeof src), bytes = 0;
    CHECK(tga_ckpt_encode_chunk(c, codec_of(TGA_CKPT_ZSTD, 99, 0), 4, src, 100, frame, cap, &bytes) ==
              TGA_ERR_CONFIG,
          "zstd level 99 must be refused");
    tga_ckpt_coder_free(c);
}

/* ---- tensor files ----------------------------------------------------------------------------- */

static uint64_t le64_at(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Reads every tensor; 0 when all succeed. *same: the data equals the sample's. */
static int read_all_tensors(const char *path, const sample *s, int n, int *same) {
    tga_ckpt_reader *r = NULL;
    *same = 0;
    if (tga_ckpt_reader_open(&r, path) != TGA_OK) return 1;
    int failed = tga_ckpt_reader_count(r) != n;
    *same = !failed;
    for (int i = 0; i < n && !failed; i++) {
        const tga_ckpt_tensor *t = &s->t[i];
        size_t bytes = tga_ckpt_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++)
            bytes *= (size_t)t->shape[d];
        unsigned char *got = malloc(bytes + 1);
        failed = tga_ckpt_read_tensor(r, t->name, t->dtype, t->ndim, t->shape, got) != TGA_OK;
        *same = *same && !failed && memcmp(got, t->data, bytes) == 0;
        free(got);
    }
    tga_ckpt_reader_close(r);
    return failed;
}

/* Every single-bit change of a tensor file is either an error or (inside a zstd frame header, where
 * e.g. a larger window changes nothing) gives the very same data: never silently different data.
 * Changes in the header, index and footer are always errors. */
static void test_tensor_file_mutations(uint64_t *rng) {
    sample s;
    make_sample(&s, rng, 300);
    char path[1024], mutated[1024];
    snprintf(path, sizeof path, "%s/mutations.tgat", tmp_root);
    snprintf(mutated, sizeof mutated, "%s/mutated.tgat", tmp_root);
    tga_tensor_file_writer *tf = NULL;
    uint64_t size = 0, hash = 0;
    tga_status st =
        tga_tensor_file_create(&tf, path, TGA_FILE_REPLACE, codec_of(TGA_CKPT_ZSTD_PLANES, 1, 128));
    for (int i = 0; i < SAMPLE_TENSORS && st == TGA_OK; i++)
        st = tga_tensor_file_add(tf, &s.t[i]);
    CHECK(st == TGA_OK && tga_tensor_file_finish(tf, &size, &hash) == TGA_OK, "write %s: %s", path,
          tga_error_message());
    size_t n = 0;
    unsigned char *bytes = read_file(path, &n);
    CHECK(bytes && n == size && tga_xxh64(bytes, n, 0) == hash, "size and hash reported by finish");
    uint64_t index_offset = n >= 40 ? le64_at(bytes + n - 40) : 0;
    int silent = 0, metadata_accepted = 0, same = 0;
    for (size_t pos = 0; pos < n; pos++) {
        bytes[pos] ^= (unsigned char)(1u << (pos % 8));
        tu_write_file(mutated, bytes, n);
        bytes[pos] ^= (unsigned char)(1u << (pos % 8));
        int failed = read_all_tensors(mutated, &s, SAMPLE_TENSORS, &same);
        if (!failed && !same) silent++;
        if (!failed && (pos < 16 || pos >= index_offset)) metadata_accepted++;
    }
    CHECK(silent == 0, "%d single-bit changes gave different data without an error", silent);
    CHECK(metadata_accepted == 0, "%d changes of the header, index or footer were accepted",
          metadata_accepted);
    int unchanged = read_all_tensors(path, &s, SAMPLE_TENSORS, &same);
    CHECK(unchanged == 0 && same, "the unmutated file reads back");
    tu_write_file(mutated, bytes, n / 2);
    tga_error_clear();
    tga_ckpt_reader *r = NULL;
    CHECK(tga_ckpt_reader_open(&r, mutated) == TGA_ERR_FORMAT && strstr(tga_error_message(), mutated),
          "a truncated file: %s", tga_error_message());
    free(bytes);
    free_sample(&s);
}

/* ---- checkpoint directories -------------------------------------------------------------------- */

static void check_reader_errors(const char *path, const sample *s) {
    tga_ckpt_reader *r = NULL;
    if (tga_ckpt_reader_open(&r, path) != TGA_OK) return;
    float buf[64];
    int64_t wrong_shape[2] = {5, 3};
    tga_error_clear();
    CHECK(tga_ckpt_read_tensor(r, "w.f32", TGA_CKPT_F32, 2, wrong_shape, buf) == TGA_ERR_FORMAT &&
              strstr(tga_error_message(), "shape [3, 5], expected [5, 3]") &&
              strstr(tga_error_message(), path),
          "shape mismatch: %s", tga_error_message());
    tga_error_clear();
    CHECK(tga_ckpt_read_tensor(r, "w.f32", TGA_CKPT_BF16, 2, s->t[0].shape, buf) == TGA_ERR_FORMAT &&
              strstr(tga_error_message(), "is f32, expected bf16"),
          "dtype mismatch: %s", tga_error_message());
    tga_error_clear();
    CHECK(tga_ckpt_read_tensor(r, "nope", TGA_CKPT_F32, 0, NULL, buf) == TGA_ERR_FORMAT &&
              strstr(tga_error_message(), "no tensor 'nope'"),
          "unknown tensor: %s", tga_error_message());
    tga_error_clear();
    CHECK(tga_ckpt_read_range(r, "w.f32", TGA_CKPT_F32, 10, 6, buf) == TGA_ERR_FORMAT, "range past the end");
    tga_ckpt_reader_close(r);
}

static void check_ranges(const char *path, const sample *s, uint64_t *rng) {
    tga_ckpt_reader *r = NULL;
    if (tga_ckpt_reader_open(&r, path) != TGA_OK) return;
    const float *big = s->t[1].data;
    int64_t n = s->t[1].shape[0];
    float *got = malloc((size_t)n * sizeof *got);
    for (int trial = 0; trial < 30; trial++) {
        int64_t first = (int64_t)(tu_next(rng) % (uint64_t)n),
                count = (int64_t)(tu_next(rng) % (uint64_t)(n - first + 1));
        tga_error_clear();
        tga_status st = tga_ckpt_read_range(r, "big.f32", TGA_CKPT_F32, first, count, got);
        CHECK(st == TGA_OK && memcmp(got, big + first, (size_t)count * sizeof *got) == 0,
              "%s: range [%" PRId64 ", +%" PRId64 ") differs: %s", path, first, count, tga_error_message());
    }
    free(got);
    tga_ckpt_reader_close(r);
}

/* Bytes of the regular files one and two levels below dir (checkpoints/step-N/file), by du's
 * own rules: the reference for tga_ckpt_find_latest_bytes. */
static unsigned long long tree_bytes(const char *dir) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "find '%s' -mindepth 2 -maxdepth 2 -type f -printf '%%s\\n' | awk '{s += $1} END {print s + 0}'", dir);
    FILE *p = popen(cmd, "r");
    unsigned long long n = 0;
    if (!p || fscanf(p, "%llu", &n) != 1) n = ~0ull;
    if (p) pclose(p);
    return n;
}

static void test_round_trip(uint64_t *rng) {
    const char *run = new_run_dir("round_trip");
    char model[1024];
    snprintf(model, sizeof model, "%s/base_model.bin", tmp_root);
    unsigned char *model_bytes = random_bytes(5000, rng);
    tu_write_file(model, model_bytes, 5000);
    const tga_ckpt_codec codecs[2] = {codec_of(TGA_CKPT_ZSTD, 3, 256), tga_ckpt_default_codec()};
    for (int k = 0; k < 2; k++) {
        sample s;
        make_sample(&s, rng, 2500);
        int64_t step = 100 * (k + 1);
        tga_error_clear();
        CHECK(save_checkpoint(run, step, &s, codecs[k], model) == TGA_OK, "save: %s", tga_error_message());
        char dir[1024];
        tga_ckpt_path(run, step, NULL, dir, sizeof dir);
        tga_error_clear();
        CHECK(tga_ckpt_verify(dir) == TGA_OK, "verify %s: %s", dir, tga_error_message());
        check_sample_file(path_fmt("%s/params.tgat", dir), &s, codecs[k]);
        check_ranges(path_fmt("%s/params.tgat", dir), &s, rng);
        check_reader_errors(path_fmt("%s/params.tgat", dir), &s);
        void *blob = NULL;
        size_t n = 0;
        CHECK(tga_ckpt_read_blob(dir, "state.json", 4096, &blob, &n) == TGA_OK && n == strlen(s.state_json) &&
                  memcmp(blob, s.state_json, n) == 0,
              "state.json round trip");
        free(blob);
        tga_error_clear();
        uint64_t size = 0, hash = 0;
        CHECK(tga_path_hash(model, &size, &hash) == TGA_OK &&
                  tga_ckpt_check_identity(dir, "base_model.id", model, size, hash) == TGA_OK,
              "identity: %s", tga_error_message());
        free_sample(&s);
    }
    int64_t step = -1;
    int found = 0;
    CHECK(tga_ckpt_find_latest(run, &step, &found) == TGA_OK && found && step == 200, "latest: %" PRId64,
          step);
    CHECK(tga_ckpt_find_latest_bytes(run) == tree_bytes(path_fmt("%s/checkpoints", run)),
          "bytes find_latest may read: %llu, the files hold %llu", (unsigned long long)tga_ckpt_find_latest_bytes(run),
          (unsigned long long)tree_bytes(path_fmt("%s/checkpoints", run)));
    model_bytes[4321] ^= 1;
    tu_write_file(model, model_bytes, 5000);
    tga_error_clear();
    uint64_t size = 0, hash = 0;
    CHECK(tga_path_hash(model, &size, &hash) == TGA_OK &&
              tga_ckpt_check_identity(path_fmt("%s/checkpoints/step-00000200", run), "base_model.id", model, size,
                                      hash) == TGA_ERR_CONFIG &&
              strstr(tga_error_message(), model),
          "a changed base model: %s", tga_error_message());
    free(model_bytes);
}

/* Three ranks save their shards of one flat vector; worlds of 2 and 4 read theirs back. */
static void test_ranks_and_resharding(uint64_t *rng) {
    const char *run = new_run_dir("ranks");
    enum { N = 1000, OLD_WORLD = 3 };
    float *global = tu_alloc_uniform(N, -1.0f, 1.0f, rng);
    const int64_t starts[OLD_WORLD + 1] = {0, 400, 750, N};
    tga_error_clear();
    CHECK(tga_ckpt_begin(run, 200) == TGA_OK, "begin: %s", tga_error_message());
    tga_ckpt_writer *w[OLD_WORLD] = {0};
    for (int r = 0; r < OLD_WORLD; r++)
        CHECK(tga_ckpt_writer_open(&w[r], run, 200, r) == TGA_OK, "writer %d", r);
    for (int r = 0; r < OLD_WORLD && w[r]; r++) {
        tga_ckpt_tensor t = {.name = "adam.m",
                             .dtype = TGA_CKPT_F32,
                             .ndim = 1,
                             .shape = {starts[r + 1] - starts[r]},
                             .data = global + starts[r]};
        char name[64];
        snprintf(name, sizeof name, "optim.rank-%05d.tgat", r);
        CHECK(tga_ckpt_write_tensors(w[r], name, &t, 1, codec_of(TGA_CKPT_ZSTD_PLANES, 1, 64)) == TGA_OK,
              "rank %d", r);
    }
    tga_error_clear();
    CHECK(tga_ckpt_write_blob(w[0], "state.json", "{}", 2) == TGA_OK, "rank 0 blob");
    CHECK(tga_ckpt_write_blob(w[1], "state.json", "{}", 2) == TGA_ERR_IO &&
              strstr(tga_error_message(), "state.json") && strstr(tga_error_message(), "File exists"),
          "two ranks writing one file name: %s", tga_error_message());
    for (int r = 0; r < OLD_WORLD; r++)
        CHECK(w[r] && tga_ckpt_writer_close(w[r]) == TGA_OK, "close %d", r);
    tga_error_clear();
    CHECK(tga_ckpt_commit(run, 200, OLD_WORLD) == TGA_OK && tga_ckpt_mark_done(run, 200) == TGA_OK,
          "commit: %s", tga_error_message());
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/checkpoints/step-00000200", run);
    CHECK(tga_ckpt_verify(dir) == TGA_OK, "verify: %s", tga_error_message());
    tga_ckpt_piece pieces[OLD_WORLD];
    char names[OLD_WORLD][64];
    for (int r = 0; r < OLD_WORLD; r++) {
        snprintf(names[r], sizeof names[r], "optim.rank-%05d.tgat", r);
        pieces[r] = (tga_ckpt_piece){names[r], "adam.m", starts[r]};
    }
    float got[N];
    for (int world = 2; world <= 4; world += 2) {
        for (int r = 0; r < world; r++) {
            int64_t first = (int64_t)N * r / world, end = (int64_t)N * (r + 1) / world;
            tga_error_clear();
            tga_status st =
                tga_ckpt_read_resharded(dir, pieces, OLD_WORLD, TGA_CKPT_F32, first, end - first, got);
            CHECK(st == TGA_OK && memcmp(got, global + first, (size_t)(end - first) * sizeof *got) == 0,
                  "world %d rank %d: resharded range differs (%s)", world, r, tga_error_message());
        }
    }
    tga_error_clear();
    CHECK(tga_ckpt_read_resharded(dir, pieces, OLD_WORLD, TGA_CKPT_F32, 900, 101, got) == TGA_ERR_FORMAT,
          "a range past the saved vector: %s", tga_error_message());
    /* A rank that never closed its writer: commit refuses, naming the missing list. */
    CHECK(tga_ckpt_begin(run, 300) == TGA_OK, "begin 300");
    tga_ckpt_writer *only = NULL;
    CHECK(tga_ckpt_writer_open(&only, run, 300, 0) == TGA_OK && tga_ckpt_writer_close(only) == TGA_OK,
          "rank 0 of 300");
    tga_error_clear();
    CHECK(tga_ckpt_commit(run, 300, 2) == TGA_ERR_IO && strstr(tga_error_message(), "MANIFEST.rank-00001"),
          "missing rank: %s", tga_error_message());
    /* A file that no rank recorded (written around the API): commit refuses, naming it. */
    CHECK(tga_ckpt_begin(run, 400) == TGA_OK, "begin 400");
    CHECK(tga_ckpt_writer_open(&only, run, 400, 0) == TGA_OK && tga_ckpt_writer_close(only) == TGA_OK,
          "rank 0 of 400");
    tu_write_file(path_fmt("%s/checkpoints/step-00000400.tmp/extra.bin", run), "x", 1);
    tga_error_clear();
    CHECK(tga_ckpt_commit(run, 400, 1) == TGA_ERR_FORMAT &&
              strstr(tga_error_message(), "extra.bin: in the checkpoint"),
          "an unrecorded file: %s", tga_error_message());
    int64_t step = -1;
    int found = 0;
    CHECK(tga_ckpt_find_latest(run, &step, &found) == TGA_OK && found && step == 200,
          "latest after failed commits");
    free(global);
}

typedef void (*corruption)(const char *dir);
static void corrupt_tensor_byte(const char *dir) { flip_byte(path_fmt("%s/params.tgat", dir), 40); }
static void truncate_file(const char *dir) {
    CHECK(truncate(path_fmt("%s/state.json", dir), 3) == 0, "truncate");
}
static void add_stray_file(const char *dir) { tu_write_file(path_fmt("%s/stray.bin", dir), "x", 1); }
static void remove_file(const char *dir) { CHECK(unlink(path_fmt("%s/state.json", dir)) == 0, "unlink"); }
static void edit_manifest(const char *dir) { flip_byte(path_fmt("%s/MANIFEST", dir), 30); }
static void garble_done(const char *dir) { tu_write_file(path_fmt("%s/DONE", dir), "step x\n", 7); }
/* A MANIFEST that DONE vouches for but that does not parse. */
static void malformed_manifest(const char *dir) {
    const char text[] = "tga-checkpoint-manifest 1\nstep 300\nnot a file line\n";
    tu_write_file(path_fmt("%s/MANIFEST", dir), text, sizeof text - 1);
    char done[128];
    int n = snprintf(done, sizeof done, "step 300\nmanifest %016" PRIx64 "\n",
                     tga_xxh64(text, sizeof text - 1, 0));
    tu_write_file(path_fmt("%s/DONE", dir), done, (size_t)n);
}

static void test_find_latest(uint64_t *rng) {
    static const struct {
        corruption corrupt;
        const char *named; /* what the warning must name */
    } cases[] = {{corrupt_tensor_byte, "params.tgat: checksum mismatch"},
                 {truncate_file, "state.json: 3 bytes"},
                 {add_stray_file, "stray.bin: not listed"},
                 {remove_file, "state.json"},
                 {edit_manifest, "MANIFEST: checksum"},
                 {garble_done, "DONE: expected"},
                 {malformed_manifest, "MANIFEST: line 3: expected"}};
    sample s;
    make_sample(&s, rng, 700);
    int64_t step = -1;
    int found = 1;
    const char *empty = new_run_dir("empty");
    CHECK(tga_ckpt_find_latest(empty, &step, &found) == TGA_OK && !found, "no checkpoints: found nothing");
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *run = new_run_dir(path_fmt("latest_%zu", c));
        tga_status st = TGA_OK;
        for (int64_t k = 100; k <= 300 && st == TGA_OK; k += 100)
            st = save_checkpoint(run, k, &s, tga_ckpt_default_codec(), NULL);
        /* 400: committed, no DONE; 500: still a .tmp directory */
        tga_ckpt_writer *w = NULL;
        if (st == TGA_OK) st = tga_ckpt_begin(run, 400);
        if (st == TGA_OK) st = tga_ckpt_writer_open(&w, run, 400, 0);
        if (st == TGA_OK) st = tga_ckpt_writer_close(w);
        if (st == TGA_OK) st = tga_ckpt_commit(run, 400, 1);
        if (st == TGA_OK) st = tga_ckpt_begin(run, 500);
        CHECK(st == TGA_OK, "setup: %s", tga_error_message());
        char newest[1024];
        snprintf(newest, sizeof newest, "%s/checkpoints/step-00000300", run);
        cases[c].corrupt(newest);
        capture_stderr();
        st = tga_ckpt_find_latest(run, &step, &found);
        char *warnings = release_stderr();
        CHECK(st == TGA_OK && found && step == 200, "case %zu: latest %" PRId64 " (want 200)", c, step);
        CHECK(strstr(warnings, newest) && strstr(warnings, cases[c].named) &&
                  strstr(warnings, "falling back"),
              "case %zu: the warning must name '%s': %s", c, cases[c].named, warnings);
        CHECK(strstr(warnings, "step 400") != NULL, "case %zu: the incomplete step 400 is mentioned: %s", c,
              warnings);
        free(warnings);
        if (c == 0) {
            /* nothing verifies: an error, not a silent fresh start */
            corrupt_tensor_byte(path_fmt("%s/checkpoints/step-00000200", run));
            corrupt_tensor_byte(path_fmt("%s/checkpoints/step-00000100", run));
            capture_stderr();
            tga_error_clear();
            st = tga_ckpt_find_latest(run, &step, &found);
            free(release_stderr());
            CHECK(st == TGA_ERR_FORMAT && !found && strstr(tga_error_message(), "no checkpoint"),
                  "all corrupt: %s", tga_error_message());
            /* a new save at a corrupt step replaces it */
            tga_log_set_level(TGA_LOG_ERROR);
            st = save_checkpoint(run, 300, &s, tga_ckpt_default_codec(), NULL);
            tga_log_set_level(TGA_LOG_INFO);
            CHECK(st == TGA_OK && tga_ckpt_verify(newest) == TGA_OK, "replacing step 300: %s",
                  tga_error_message());
        }
    }
    free_sample(&s);
}

static void test_retention(uint64_t *rng) {
    const char *run = new_run_dir("retention");
    sample s;
    make_sample(&s, rng, 10);
    tga_status st = TGA_OK;
    for (int64_t k = 10; k <= 150 && st == TGA_OK; k += 10)
        st = save_checkpoint(run, k, &s, tga_ckpt_default_codec(), NULL);
    if (st == TGA_OK) st = tga_ckpt_begin(run, 170); /* partial: never a candidate */
    CHECK(st == TGA_OK, "setup: %s", tga_error_message());
    CHECK(mkdir(path_fmt("%s/checkpoints/step-00000160", run), 0755) == 0, "an incomplete step-160");
    const int keep_last = 3;
    const int64_t keep_every = 50, protect = 20;
    capture_stderr();
    st = tga_ckpt_retain(run, keep_last, keep_every, protect);
    free(release_stderr());
    CHECK(st == TGA_OK, "retain: %s", tga_error_message());
    for (int64_t k = 10; k <= 150; k += 10) {
        int want = k > 150 - 10 * keep_last || k % keep_every == 0 || k == protect;
        const char *dir = path_fmt("%s/checkpoints/step-%08" PRId64, run, k);
        CHECK(path_exists(dir) == want, "step %" PRId64 ": %s after retention", k, want ? "kept" : "deleted");
        if (want) CHECK(tga_ckpt_verify(dir) == TGA_OK, "step %" PRId64 " still verifies", k);
        CHECK(!path_exists(path_fmt("%s/checkpoints/step-%08" PRId64 ".deleting", run, k)), "no leftovers");
    }
    CHECK(path_exists(path_fmt("%s/checkpoints/step-00000160", run)) &&
              path_exists(path_fmt("%s/checkpoints/step-00000170.tmp", run)),
          "incomplete directories are left alone");
    tga_error_clear();
    CHECK(tga_ckpt_retain(run, 0, 0, -1) == TGA_ERR_CONFIG, "keep_last 0 is refused");
    free_sample(&s);
}

/* ---- failing writes ---------------------------------------------------------------------------- */

static void check_previous_intact(const char *run, int64_t previous, const char *when) {
    int64_t step = -1;
    int found = 0;
    tga_error_clear();
    tga_status st = tga_ckpt_find_latest(run, &step, &found);
    CHECK(st == TGA_OK && found && step == previous, "%s: latest is %" PRId64 " (%s)", when, step,
          tga_error_message());
    CHECK(tga_ckpt_verify(path_fmt("%s/checkpoints/step-%08" PRId64, run, previous)) == TGA_OK,
          "%s: the previous checkpoint no longer verifies", when);
}

/* Which of files[] a message names (the first match; the rank list is tried before MANIFEST). */
static int named_file(const char *msg, const char *const *files, int n) {
    for (int f = 0; f < n; f++)
        if (strstr(msg, path_fmt("/%s", files[f]))) return f;
    return -1;
}

/* Bytes a save of step 200 writes, measured with the hook's budget in a scratch run directory. */
static int64_t bytes_of_save(const sample *s) {
    const char *run = new_run_dir("faults_measure");
    const int64_t plenty = (int64_t)1 << 40;
    tga_fileio_inject_write_failure(plenty, ENOSPC);
    tga_status st = save_checkpoint(run, 200, s, tga_ckpt_default_codec(), NULL);
    int64_t left = tga_fileio_inject_write_failure(-1, 0);
    CHECK(st == TGA_OK, "measuring save: %s", tga_error_message());
    return plenty - left;
}

/* The next budget to try: dense near 0 (headers) and near the end (MANIFEST, DONE), sparser in
 * between; ends with total itself, which must succeed. */
static int64_t next_budget(int64_t budget, int64_t total) {
    int64_t from_start = budget + budget / 5 + 1, from_end = total - (total - budget) * 7 / 8;
    int64_t next = from_start < from_end ? from_start : from_end;
    return next > budget ? next : budget + 1;
}

/* The byte budget runs out at positions spread over the whole save (every file, the MANIFEST, the
 * DONE marker): each attempt fails with ENOSPC or EIO naming the file, and step 100 stays the
 * latest good checkpoint. A budget of exactly the save's size succeeds. */
static void test_injected_write_failures(uint64_t *rng) {
    const char *run = new_run_dir("faults");
    sample s;
    make_sample(&s, rng, 3000);
    CHECK(save_checkpoint(run, 100, &s, tga_ckpt_default_codec(), NULL) == TGA_OK, "the good checkpoint");
    const int64_t total = bytes_of_save(&s);
    const char *const files[] = {"params.tgat", "state.json", "MANIFEST.rank-00000", "MANIFEST", "DONE"};
    int hit[5] = {0}, attempts = 0;
    tga_log_set_level(TGA_LOG_ERROR);
    for (int64_t budget = 0; budget < total; budget = next_budget(budget, total), attempts++) {
        int error_number = attempts % 3 ? ENOSPC : EIO;
        tga_fileio_inject_write_failure(budget, error_number);
        tga_error_clear();
        tga_status st = save_checkpoint(run, 200, &s, tga_ckpt_default_codec(), NULL);
        tga_fileio_inject_write_failure(-1, 0);
        const char *msg = tga_error_message();
        CHECK(st == TGA_ERR_IO && strstr(msg, "step-00000200") && strstr(msg, strerror(error_number)),
              "budget %" PRId64 " of %" PRId64 ": %s: %s", budget, total, tga_status_name(st), msg);
        int named = named_file(msg, files, 5);
        if (named >= 0) hit[named] = 1;
        check_previous_intact(run, 100, msg);
    }
    tga_fileio_inject_write_failure(total, ENOSPC);
    tga_error_clear();
    tga_status st = save_checkpoint(run, 200, &s, tga_ckpt_default_codec(), NULL);
    int64_t left = tga_fileio_inject_write_failure(-1, 0);
    tga_log_set_level(TGA_LOG_INFO);
    CHECK(st == TGA_OK && left == 0, "a budget of exactly %" PRId64 " bytes: %s (%" PRId64 " left)", total,
          tga_error_message(), left);
    for (int f = 0; f < 5; f++)
        CHECK(hit[f], "no injected failure hit %s in %d attempts", files[f], attempts);
    check_previous_intact(run, 200, "after the fault-free save");
    printf("injected write failures: %d positions in a %" PRId64 "-byte save, each failed cleanly\n",
           attempts, total);
    free_sample(&s);
}

/* The environment variable arms the same hook in a fresh process (this binary, re-run). */
static int fault_child(const char *run) {
    uint64_t rng = 7;
    sample s;
    make_sample(&s, &rng, 100);
    tga_status st = save_checkpoint(run, 100, &s, tga_ckpt_default_codec(), NULL);
    int ok = st == TGA_ERR_IO && strstr(tga_error_message(), strerror(ENOSPC)) != NULL;
    printf("child: %s: %s\n", tga_status_name(st), tga_error_message());
    free_sample(&s);
    return ok ? 0 : 1;
}

static void test_env_fault(void) {
    const char *run = new_run_dir("env_fault");
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(n > 0, "readlink /proc/self/exe");
    if (n <= 0) return;
    self[n] = '\0';
    char command[3000];
    snprintf(command, sizeof command, "TGA_FAULT_WRITE_AFTER_BYTES=500 '%s' --fault-child '%s' 2>/dev/null",
             self, run);
    fflush(stdout);
    int status = system(command);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child did not see an ENOSPC write failure");
    int64_t step = -1;
    int found = 1;
    CHECK(tga_ckpt_find_latest(run, &step, &found) == TGA_OK && !found,
          "the failed save left nothing chosen");
}

/* A file size limit (the kernel's EFBIG) in the middle of a tensor file. */
static void test_file_size_limit(uint64_t *rng) {
    const char *run = new_run_dir("fsize");
    sample s;
    make_sample(&s, rng, 2000);
    CHECK(save_checkpoint(run, 100, &s, tga_ckpt_default_codec(), NULL) == TGA_OK, "the good checkpoint");
    float *noise = (float *)s.bytes[1];
    for (int i = 0; i < 2000; i++)
        noise[i] = (float)tu_next(rng); /* incompressible */
    struct rlimit old_limit, small_limit;
    getrlimit(RLIMIT_FSIZE, &old_limit);
    small_limit = old_limit;
    small_limit.rlim_cur = 4096;
    signal(SIGXFSZ, SIG_IGN);
    tga_error_clear();
    setrlimit(RLIMIT_FSIZE, &small_limit);
    tga_status st = save_checkpoint(run, 200, &s, tga_ckpt_default_codec(), NULL);
    setrlimit(RLIMIT_FSIZE, &old_limit);
    CHECK(st == TGA_ERR_IO && strstr(tga_error_message(), "step-00000200.tmp/params.tgat") &&
              strstr(tga_error_message(), "File too large"),
          "file size limit: %s", tga_error_message());
    check_previous_intact(run, 100, "after EFBIG");
    free_sample(&s);
}

static void test_bad_places(void) {
    tga_error_clear();
    CHECK(tga_ckpt_begin("/dev/full", 1) == TGA_ERR_IO && strstr(tga_error_message(), "/dev/full") &&
              strstr(tga_error_message(), "not a directory"),
          "a run directory that is a device: %s", tga_error_message());
    const char *run = new_run_dir("no_begin");
    tga_ckpt_writer *w = NULL;
    tga_error_clear();
    CHECK(tga_ckpt_writer_open(&w, run, 5, 0) != TGA_OK && !w &&
              strstr(tga_error_message(), "tga_ckpt_begin"),
          "a writer before begin: %s", tga_error_message());
    CHECK(tga_ckpt_begin(run, 5) == TGA_OK && tga_ckpt_writer_open(&w, run, 5, 0) == TGA_OK, "begin");
    tga_error_clear();
    CHECK(tga_ckpt_write_blob(w, "../escape", "x", 1) == TGA_ERR_INTERNAL &&
              tga_ckpt_write_blob(w, "MANIFEST", "x", 1) == TGA_ERR_INTERNAL &&
              tga_ckpt_write_blob(w, "a b", "x", 1) == TGA_ERR_INTERNAL,
          "file names that could break the layout are refused");
    tga_ckpt_writer_discard(w);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--fault-child") == 0) return fault_child(argv[2]);
    if (!mkdtemp(tmp_root)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    uint64_t rng = 20240611;
    test_xxh64(&rng);
    test_codec(&rng);
    test_tensor_file_mutations(&rng);
    test_round_trip(&rng);
    test_ranks_and_resharding(&rng);
    test_find_latest(&rng);
    test_retention(&rng);
    test_injected_write_failures(&rng);
    test_env_fault();
    test_file_size_limit(&rng);
    test_bad_places();
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_root);
    if (tu_failures == 0 && system(command) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
    return tu_finish("test_ckpt");
}
