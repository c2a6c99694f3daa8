/* safetensors: files written here (LLaVA projector names, HF names, a sharded set, every dtype kind
 * the exports use) are loaded by the PyPI safetensors package (tests/unit/safetensors_check.py,
 * run with $TGA_PYTHON), which checks names, dtypes, shapes, values, metadata and the index; a file
 * written by that package is read back here. Values on both sides come from one formula per dtype,
 * implemented separately in C and in Python. Then the strict reader against malformed headers and
 * every truncation of a valid file, and failing writes (the old file must survive). */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */

#include "runtime/fileio.h"
#include "runtime/safetensors.h"
#include "tests/testutil.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef TGA_SOURCE_DIR
#define TGA_SOURCE_DIR "."
#endif

static char tmp_dir[] = "/tmp/tga_test_safetensors_XXXXXX";

typedef struct {
    const char *name;
    tga_st_dtype dtype;
    int ndim;
    int64_t shape[3];
    int k; /* the formula's parameter: different values per tensor */
} spec;

static const spec single_specs[] = {
    {"model.mm_projector.0.weight", TGA_ST_F32, 2, {8, 6}, 1},
    {"model.mm_projector.0.bias", TGA_ST_F32, 1, {8}, 2},
    {"model.mm_projector.2.weight", TGA_ST_BF16, 2, {8, 8}, 3},
    {"model.mm_projector.2.bias", TGA_ST_F16, 1, {8}, 4},
    {"token_ids", TGA_ST_I32, 1, {5}, 5},
    {"step", TGA_ST_I64, 0, {0}, 6},
    {"empty", TGA_ST_F32, 2, {0, 4}, 7},
    {"mask", TGA_ST_U8, 2, {3, 3}, 8},
};
static const spec sharded_specs[] = {
    {"model.embed_tokens.weight", TGA_ST_F32, 2, {64, 16}, 11},
    {"model.layers.0.self_attn.q_proj.weight", TGA_ST_F32, 2, {16, 16}, 12},
    {"model.layers.0.self_attn.k_proj.weight", TGA_ST_BF16, 2, {8, 16}, 13},
    {"model.layers.0.mlp.gate_proj.weight", TGA_ST_F32, 2, {32, 16}, 14},
    {"model.layers.0.input_layernorm.weight", TGA_ST_F32, 1, {16}, 15},
    {"model.norm.weight", TGA_ST_F32, 1, {16}, 16},
    {"lm_head.weight", TGA_ST_F32, 2, {64, 16}, 17},
};
static const spec hf_projector_specs[] = {
    {"multi_modal_projector.linear_1.weight", TGA_ST_F32, 2, {8, 6}, 21},
    {"multi_modal_projector.linear_1.bias", TGA_ST_F32, 1, {8}, 22},
    {"multi_modal_projector.linear_2.weight", TGA_ST_F32, 2, {8, 8}, 23},
    {"multi_modal_projector.linear_2.bias", TGA_ST_F32, 1, {8}, 24},
    {"counts", TGA_ST_I32, 1, {4}, 25},
    {"flags", TGA_ST_U8, 1, {6}, 26},
};
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define SHARD_BUDGET 4096

static const tga_st_meta meta[] = {{"format", "pt"}, {"tga.step", "1234"}};

/* ---- the value formulas (safetensors_check.py implements the same ones in numpy/torch) --------- */

static uint16_t bf16_round_nearest_even(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

/* Exact for the values used (m / 8 with |m| <= 1000): normal halves with <= 11 significant bits. */
static uint16_t f16_exact(double v) {
    if (v == 0) return 0;
    int e = 0;
    double f = frexp(fabs(v), &e); /* |v| = f * 2^e, f in [0.5, 1) */
    uint16_t mantissa = (uint16_t)((2 * f - 1) * 1024);
    return (uint16_t)((v < 0 ? 0x8000 : 0) | (uint16_t)(e - 1 + 15) << 10 | mantissa);
}

static int64_t count_of(const spec *s) {
    int64_t n = 1;
    for (int d = 0; d < s->ndim; d++)
        n *= s->shape[d];
    return n;
}

static void *make_values(const spec *s) {
    int64_t n = count_of(s), k = s->k;
    void *out = malloc((size_t)n * tga_st_dtype_size(s->dtype) + 1);
    for (int64_t i = 0; i < n; i++) {
        uint64_t u = (uint64_t)i;
        switch (s->dtype) {
        case TGA_ST_F32:
            ((float *)out)[i] = (float)(((i * 7919 + k * 104729) % 20011 - 10005) / 1024.0);
            break;
        case TGA_ST_F16:
            ((uint16_t *)out)[i] = f16_exact(((i * 31 + k) % 2001 - 1000) / 8.0);
            break;
        case TGA_ST_BF16:
            ((uint16_t *)out)[i] =
                bf16_round_nearest_even((float)(((i * 7919 + k * 104729) % 200003 - 100001) / 4096.0));
            break;
        case TGA_ST_I32:
            ((uint32_t *)out)[i] = (uint32_t)(u * 2654435761u + (uint64_t)k);
            break;
        case TGA_ST_I64:
            ((uint64_t *)out)[i] = u * 0x9E3779B97F4A7C15ull + (uint64_t)k;
            break;
        default:
            ((uint8_t *)out)[i] = (uint8_t)((i * 37 + k) % 256);
            break;
        }
    }
    return out;
}

static tga_st_tensor *make_tensors(const spec *specs, int n) {
    tga_st_tensor *t = calloc((size_t)n, sizeof *t);
    for (int i = 0; i < n; i++) {
        t[i] = (tga_st_tensor){.name = specs[i].name,
                               .dtype = specs[i].dtype,
                               .ndim = specs[i].ndim,
                               .data = make_values(&specs[i])};
        memcpy(t[i].shape, specs[i].shape, sizeof specs[i].shape);
    }
    return t;
}

static void free_tensors(tga_st_tensor *t, int n) {
    for (int i = 0; i < n; i++)
        free((void *)t[i].data);
    free(t);
}

/* Every tensor of specs, read with our reader, equals the formula. */
static void check_with_reader(const char *path, const spec *specs, int n, const char *meta_key,
                              const char *meta_value) {
    tga_st_file *f = NULL;
    tga_error_clear();
    CHECK(tga_st_open(&f, path) == TGA_OK, "open %s: %s", path, tga_error_message());
    if (!f) return;
    CHECK(tga_st_count(f) == n, "%s: %d tensors, expected %d", path, tga_st_count(f), n);
    for (int i = 0; i < n; i++) {
        const tga_st_info *info = tga_st_find(f, specs[i].name);
        CHECK(info && info->dtype == specs[i].dtype && info->ndim == specs[i].ndim &&
                  memcmp(info->shape, specs[i].shape, (size_t)specs[i].ndim * sizeof(int64_t)) == 0,
              "%s: %s has the wrong dtype or shape", path, specs[i].name);
        size_t bytes = (size_t)count_of(&specs[i]) * tga_st_dtype_size(specs[i].dtype);
        unsigned char *got = malloc(bytes + 1), *want = make_values(&specs[i]);
        tga_error_clear();
        CHECK(tga_st_read(f, specs[i].name, specs[i].dtype, got, bytes) == TGA_OK &&
                  memcmp(got, want, bytes) == 0,
              "%s: %s values differ (%s)", path, specs[i].name, tga_error_message());
        free(got);
        free(want);
    }
    const char *value = meta_key ? tga_st_metadata(f, meta_key) : NULL;
    CHECK(!meta_key || (value && strcmp(value, meta_value) == 0), "%s: metadata %s = %s", path, meta_key,
          value ? value : "(missing)");
    tga_st_close(f);
}

/* ---- files for and from Python ---------------------------------------------------------------- */

static json_t *specs_json(const spec *specs, int n) {
    json_t *list = json_array();
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < specs[i].ndim; d++)
            json_array_append_new(shape, json_integer(specs[i].shape[d]));
        json_array_append_new(list,
                              json_pack("{s:s, s:s, s:o, s:i}", "name", specs[i].name, "dtype",
                                        tga_st_dtype_name(specs[i].dtype), "shape", shape, "k", specs[i].k));
    }
    return list;
}

/* The shard count of a greedy split by byte budget, worked out here for the check. */
static int expected_shards(const spec *specs, int n, uint64_t budget) {
    int shards = 1;
    uint64_t used = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes = (uint64_t)count_of(&specs[i]) * tga_st_dtype_size(specs[i].dtype);
        if (used && used + bytes > budget) {
            shards++;
            used = 0;
        }
        used += bytes;
    }
    return shards;
}

static void write_c_files(void) {
    tga_st_tensor *t = make_tensors(single_specs, COUNT(single_specs));
    tga_error_clear();
    CHECK(tga_st_write(tu_in_dir(tmp_dir, "c_single.safetensors"), t, COUNT(single_specs), meta,
                       COUNT(meta)) == TGA_OK,
          "write: %s", tga_error_message());
    free_tensors(t, COUNT(single_specs));
    check_with_reader(tu_in_dir(tmp_dir, "c_single.safetensors"), single_specs, COUNT(single_specs),
                      "tga.step", "1234");

    mkdir(tu_in_dir(tmp_dir, "c_sharded"), 0755);
    t = make_tensors(sharded_specs, COUNT(sharded_specs));
    int shards = 0, want = expected_shards(sharded_specs, COUNT(sharded_specs), SHARD_BUDGET);
    CHECK(tga_st_write_sharded(tu_in_dir(tmp_dir, "c_sharded"), "model", t, COUNT(sharded_specs), meta, 1,
                               SHARD_BUDGET, &shards) == TGA_OK &&
              shards == want && want > 2,
          "sharded: %d shards, expected %d (%s)", shards, want, tga_error_message());
    free_tensors(t, COUNT(sharded_specs));
    char path[600];
    snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", tu_in_dir(tmp_dir, "c_sharded"), 1,
             want);
    check_with_reader(path, sharded_specs, 1, "format", "pt");

    mkdir(tu_in_dir(tmp_dir, "c_one"), 0755);
    t = make_tensors(hf_projector_specs, COUNT(hf_projector_specs));
    CHECK(tga_st_write_sharded(tu_in_dir(tmp_dir, "c_one"), "model", t, COUNT(hf_projector_specs), meta, 1,
                               1u << 30, &shards) == TGA_OK &&
              shards == 1,
          "one shard: %d (%s)", shards, tga_error_message());
    free_tensors(t, COUNT(hf_projector_specs));
}

static void write_expected_json(void) {
    json_t *meta_json = json_pack("{s:s, s:s}", meta[0].key, meta[0].value, meta[1].key, meta[1].value);
    json_t *root = json_pack(
        "{s:{s:s, s:o, s:o}, s:{s:s, s:s, s:i, s:{s:s}, s:o}, s:{s:s, s:s, s:{s:s}, s:o}, s:s}", "single",
        "file", "c_single.safetensors", "metadata", meta_json, "tensors",
        specs_json(single_specs, COUNT(single_specs)), "sharded", "dir", "c_sharded", "prefix", "model",
        "n_shards", expected_shards(sharded_specs, COUNT(sharded_specs), SHARD_BUDGET), "metadata", "format",
        "pt", "tensors", specs_json(sharded_specs, COUNT(sharded_specs)), "one_shard", "dir", "c_one",
        "prefix", "model", "metadata", "format", "pt", "tensors",
        specs_json(hf_projector_specs, COUNT(hf_projector_specs)), "python_output", "py_written.safetensors");
    CHECK(root && json_dump_file(root, tu_in_dir(tmp_dir, "expected.json"), JSON_INDENT(1)) == 0,
          "cannot write expected.json");
    json_decref(root);
}

static void run_python_check(void) {
    const char *python = getenv("TGA_PYTHON");
    if (!python || !*python) python = "/usr/bin/python3";
    char command[2000];
    snprintf(command, sizeof command, "'%s' '%s/tests/unit/safetensors_check.py' '%s'", python,
             TGA_SOURCE_DIR, tmp_dir);
    fflush(stdout);
    int rc = system(command);
    CHECK(rc == 0,
          "'%s' failed (status %d; its output is above): it needs a python with safetensors, numpy and torch "
          "(TGA_PYTHON)",
          command, rc);
    if (rc == 0)
        check_with_reader(tu_in_dir(tmp_dir, "py_written.safetensors"), single_specs, COUNT(single_specs),
                          "source", "python");
}

/* ---- malformed files ------------------------------------------------------------------------- */

static void write_raw(const char *path, const char *header, const void *data, size_t data_bytes) {
    size_t len = strlen(header), padded = (len + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    unsigned char prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = f && fwrite(prefix, 1, 8, f) == 8 && fwrite(header, 1, len, f) == len;
    for (size_t i = len; ok && i < padded; i++)
        ok = fputc(' ', f) != EOF;
    ok = ok && (data_bytes == 0 || fwrite(data, 1, data_bytes, f) == data_bytes);
    CHECK(f && fclose(f) == 0 && ok, "cannot write %s", path);
}

static void expect_format_error(const char *path, const char *needle, const char *what) {
    tga_st_file *f = NULL;
    tga_error_clear();
    tga_status st = tga_st_open(&f, path);
    CHECK(st == TGA_ERR_FORMAT && !f && strstr(tga_error_message(), path) &&
              strstr(tga_error_message(), needle),
          "%s: %s, message '%s' (expected one naming the file and '%s')", what, tga_status_name(st),
          tga_error_message(), needle);
    tga_st_close(f);
}

static void test_malformed(void) {
    static const struct {
        const char *header;
        size_t data_bytes;
        const char *needle;
    } cases[] = {
        {"[]", 0, "does not start with '{'"},
        {"{\"a\": {\"dtype\": \"F32\"", 0, "bad JSON header"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "duplicate"},
        {"{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "not F8_E4M3"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "non-negative integers"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "non-negative integers"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "spanning 8 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
         20, "starts at data byte 12, expected 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "starts at data byte 4, expected 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
         "hold 8 bytes but the file has 4"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
         "hold 8 bytes but the file has 12"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8, "exactly"},
        {"{\"a\":\"F32\"}", 0, "exactly"},
        {"{\"__metadata__\":{\"x\":1}}", 0, "must be a string"},
        {"{\"__metadata__\":[]}", 0, "must be an object"},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty name"},
    };
    unsigned char data[32] = {0};
    const char *path = tu_in_dir(tmp_dir, "bad.safetensors");
    for (int c = 0; c < COUNT(cases); c++) {
        write_raw(path, cases[c].header, data, cases[c].data_bytes);
        char what[32];
        snprintf(what, sizeof what, "malformed case %d", c);
        expect_format_error(path, cases[c].needle, what);
    }
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite("\x10\0\0\0", 1, 4, f) == 4 && fclose(f) == 0, "short file");
    expect_format_error(path, "too short", "a 4-byte file");
    unsigned char huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    f = fopen(path, "wb");
    CHECK(f && fwrite(huge, 1, sizeof huge, f) == sizeof huge && fclose(f) == 0, "huge header length");
    expect_format_error(path, "does not fit", "a header length beyond the file");
}

/* Every proper prefix of a valid file is refused (never read past its end). */
static void test_truncations(void) {
    size_t n = 0;
    void *bytes = NULL;
    CHECK(tga_file_read_all(tu_in_dir(tmp_dir, "c_single.safetensors"), 1 << 20, &bytes, &n) == TGA_OK,
          "read back");
    const char *path = tu_in_dir(tmp_dir, "truncated.safetensors");
    int accepted = 0;
    for (size_t len = 0; len < n; len++) {
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(bytes, 1, len, f) != len || fclose(f) != 0) break;
        tga_st_file *st = NULL;
        if (tga_st_open(&st, path) != TGA_ERR_FORMAT) accepted++;
        tga_st_close(st);
    }
    CHECK(accepted == 0, "%d truncations of a valid file were not format errors", accepted);
    free(bytes);
}

/* ---- writer errors ---------------------------------------------------------------------------- */

static void test_writer_errors(void) {
    tga_st_tensor *one = make_tensors(hf_projector_specs, 1), t = one[0];
    tga_st_tensor pair[2] = {t, t};
    const char *path = tu_in_dir(tmp_dir, "writer.safetensors");
    tga_error_clear();
    CHECK(tga_st_write(path, pair, 2, NULL, 0) == TGA_ERR_INTERNAL &&
              strstr(tga_error_message(), "given twice"),
          "duplicate names: %s", tga_error_message());
    pair[1].name = "__metadata__";
    CHECK(tga_st_write(path, pair, 2, NULL, 0) == TGA_ERR_INTERNAL, "a tensor named __metadata__");
    pair[1].name = "\xff\xfe";
    CHECK(tga_st_write(path, pair, 2, NULL, 0) == TGA_ERR_INTERNAL, "a name that is not UTF-8");
    CHECK(tga_st_write(tu_in_dir(tmp_dir, "no/such/dir.safetensors"), &t, 1, NULL, 0) == TGA_ERR_IO,
          "a missing directory");
    /* Replacing a file: a write failing part-way leaves the old file as it was. */
    CHECK(tga_st_write(path, &t, 1, meta, 1) == TGA_OK, "the old file");
    tga_st_tensor *fresh = make_tensors(sharded_specs, COUNT(sharded_specs));
    tga_fileio_inject_write_failure(300, ENOSPC);
    tga_error_clear();
    tga_status st = tga_st_write(path, fresh, COUNT(sharded_specs), meta, 1);
    tga_fileio_inject_write_failure(-1, 0);
    CHECK(st == TGA_ERR_IO && strstr(tga_error_message(), path) &&
              strstr(tga_error_message(), "No space left"),
          "a failing write: %s", tga_error_message());
    check_with_reader(path, hf_projector_specs, 1, "format", "pt");
    struct stat sb;
    CHECK(stat(tu_in_dir(tmp_dir, "writer.safetensors.tmp"), &sb) != 0, "no temporary file is left behind");
    free_tensors(fresh, COUNT(sharded_specs));
    free_tensors(one, 1);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    write_c_files();
    write_expected_json();
    run_python_check();
    test_malformed();
    test_truncations();
    test_writer_errors();
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_dir);
    if (tu_failures == 0 && system(command) != 0) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return tu_finish("test_safetensors");
}
