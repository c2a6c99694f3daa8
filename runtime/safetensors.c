/* safetensors writing (single files and HF sharded sets) and strict reading. */
#define _POSIX_C_SOURCE 200809L /* pread, strdup */

#include "runtime/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/fileio.h"

/* The reference implementation refuses headers over 100 MB (safetensors/src/tensor.rs). */
#define MAX_HEADER_BYTES 100000000ull
#define METADATA_KEY "__metadata__"

static const struct {
    tga_st_dtype dtype;
    const char *name;
    size_t size;
} st_types[] = {
    {TGA_ST_BOOL, "BOOL", 1}, {TGA_ST_U8, "U8", 1},   {TGA_ST_I8, "I8", 1},     {TGA_ST_I16, "I16", 2},
    {TGA_ST_U16, "U16", 2},   {TGA_ST_F16, "F16", 2}, {TGA_ST_BF16, "BF16", 2}, {TGA_ST_I32, "I32", 4},
    {TGA_ST_U32, "U32", 4},   {TGA_ST_F32, "F32", 4}, {TGA_ST_F64, "F64", 8},   {TGA_ST_I64, "I64", 8},
    {TGA_ST_U64, "U64", 8},
};
#define ST_N_TYPES (sizeof st_types / sizeof st_types[0])

size_t tga_st_dtype_size(tga_st_dtype dtype) {
    for (size_t i = 0; i < ST_N_TYPES; i++)
        if (st_types[i].dtype == dtype) return st_types[i].size;
    return 0;
}

const char *tga_st_dtype_name(tga_st_dtype dtype) {
    for (size_t i = 0; i < ST_N_TYPES; i++)
        if (st_types[i].dtype == dtype) return st_types[i].name;
    return "unknown";
}

static bool dtype_from_name(const char *name, tga_st_dtype *dtype) {
    for (size_t i = 0; i < ST_N_TYPES; i++) {
        if (strcmp(st_types[i].name, name) == 0) {
            *dtype = st_types[i].dtype;
            return true;
        }
    }
    return false;
}

/* Bytes of a tensor, or -1 for a bad shape or an overflow. */
static int64_t tensor_bytes(tga_st_dtype dtype, int ndim, const int64_t *shape) {
    int64_t size = (int64_t)tga_st_dtype_size(dtype), bytes = size;
    if (!size || ndim < 0 || ndim > TGA_ST_MAX_DIMS) return -1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && bytes > INT64_MAX / shape[d])) return -1;
        bytes *= shape[d];
    }
    return bytes;
}

/* ---- writing ----------------------------------------------------------------------------------- */

static tga_status check_tensors(const char *path, const tga_st_tensor *t, int n) {
    for (int i = 0; i < n; i++) {
        const char *name = t[i].name;
        if (!name || !*name || strcmp(name, METADATA_KEY) == 0)
            return tga_error(TGA_ERR_INTERNAL, "%s: tensor %d has no usable name ('%s')", path, i,
                             name ? name : "(null)");
        int64_t bytes = tensor_bytes(t[i].dtype, t[i].ndim, t[i].shape);
        if (bytes < 0)
            return tga_error(TGA_ERR_INTERNAL, "%s: tensor %s has an unknown dtype or a bad shape", path,
                             name);
        if (bytes > 0 && !t[i].data)
            return tga_error(TGA_ERR_INTERNAL, "%s: tensor %s has no data", path, name);
        for (int j = 0; j < i; j++)
            if (strcmp(t[j].name, name) == 0)
                return tga_error(TGA_ERR_INTERNAL, "%s: tensor %s given twice", path, name);
    }
    return TGA_OK;
}

static json_t *shape_json(int ndim, const int64_t *shape) {
    json_t *array = json_array();
    for (int d = 0; d < ndim && array; d++)
        json_array_append_new(array, json_integer(shape[d]));
    return array;
}

/* Returns the header JSON (tensors in the given order), or NULL when jansson refused a string (not
 * UTF-8) or ran out of memory: a header missing an entry would mislabel the data after it. */
static json_t *header_json(const tga_st_tensor *t, int n, const tga_st_meta *meta, int n_meta) {
    json_t *root = json_object();
    if (root && n_meta > 0) {
        json_t *m = json_object();
        for (int i = 0; i < n_meta && m; i++)
            json_object_set_new(m, meta[i].key, json_string(meta[i].value));
        json_object_set_new(root, METADATA_KEY, m);
    }
    int64_t offset = 0;
    for (int i = 0; i < n && root; i++) {
        int64_t bytes = tensor_bytes(t[i].dtype, t[i].ndim, t[i].shape);
        json_t *info = json_object(), *offsets = json_array();
        json_object_set_new(info, "dtype", json_string(tga_st_dtype_name(t[i].dtype)));
        json_object_set_new(info, "shape", shape_json(t[i].ndim, t[i].shape));
        json_array_append_new(offsets, json_integer(offset));
        json_array_append_new(offsets, json_integer(offset + bytes));
        json_object_set_new(info, "data_offsets", offsets);
        json_object_set_new(root, t[i].name, info);
        offset += bytes;
    }
    json_t *m = n_meta > 0 ? json_object_get(root, METADATA_KEY) : NULL;
    if (root && json_object_size(root) == (size_t)n + (n_meta > 0) && json_object_size(m) == (size_t)n_meta)
        return root;
    json_decref(root);
    return NULL;
}

static tga_status check_meta(const char *path, const tga_st_meta *meta, int n_meta) {
    for (int i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value)
            return tga_error(TGA_ERR_INTERNAL, "%s: metadata entry %d has no key or value", path, i);
        for (int j = 0; j < i; j++)
            if (strcmp(meta[j].key, meta[i].key) == 0)
                return tga_error(TGA_ERR_INTERNAL, "%s: metadata key %s given twice", path, meta[i].key);
    }
    return TGA_OK;
}

/* Length prefix and the JSON padded with spaces so that the data starts 8-byte aligned. */
static tga_status write_header(tga_file_writer *w, const char *json) {
    size_t len = strlen(json), padded = (len + 7) / 8 * 8;
    unsigned char prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "        ";
    TGA_TRY(tga_file_writer_write(w, prefix, sizeof prefix));
    TGA_TRY(tga_file_writer_write(w, json, len));
    return tga_file_writer_write(w, spaces, padded - len);
}

static tga_status write_body(tga_file_writer *w, const char *json, const tga_st_tensor *t, int n) {
    TGA_TRY(write_header(w, json));
    for (int i = 0; i < n; i++)
        TGA_TRY(tga_file_writer_write(w, t[i].data, (size_t)tensor_bytes(t[i].dtype, t[i].ndim, t[i].shape)));
    return TGA_OK;
}

tga_status tga_st_write(const char *path, const tga_st_tensor *tensors, int n, const tga_st_meta *meta,
                        int n_meta) {
    if (n < 0 || n_meta < 0)
        return tga_error(TGA_ERR_INTERNAL, "%s: %d tensors, %d metadata entries", path, n, n_meta);
    TGA_TRY(check_tensors(path, tensors, n));
    TGA_TRY(check_meta(path, meta, n_meta));
    json_t *root = header_json(tensors, n, meta, n_meta);
    char *json = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!json)
        return tga_error(TGA_ERR_INTERNAL, "%s: cannot build the header (names and metadata must be UTF-8)",
                         path);
    tga_file_writer *w = NULL;
    tga_status st = tga_file_writer_open(&w, path, TGA_FILE_REPLACE);
    if (st == TGA_OK) st = write_body(w, json, tensors, n);
    free(json);
    if (st != TGA_OK) {
        tga_file_writer_discard(w);
        return st;
    }
    return tga_file_writer_commit(w);
}

/* ---- sharded sets ------------------------------------------------------------------------------ */

/* shard_of[i] = the shard (0-based) of tensor i; returns the shard count. */
static int plan_shards(const tga_st_tensor *t, int n, uint64_t max_shard_bytes, int *shard_of) {
    int shard = 0;
    uint64_t used = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes = (uint64_t)tensor_bytes(t[i].dtype, t[i].ndim, t[i].shape);
        if (used > 0 && used + bytes > max_shard_bytes) {
            shard++;
            used = 0;
        }
        used += bytes;
        shard_of[i] = shard;
    }
    return n > 0 ? shard + 1 : 1;
}

static tga_status shard_name(char *out, size_t cap, const char *prefix, int shard, int n_shards) {
    int len = n_shards == 1 ? snprintf(out, cap, "%s.safetensors", prefix)
                            : snprintf(out, cap, "%s-%05d-of-%05d.safetensors", prefix, shard + 1, n_shards);
    if (len < 0 || (size_t)len >= cap)
        return tga_error(TGA_ERR_IO, "shard name too long for prefix %s", prefix);
    return TGA_OK;
}

static tga_status write_index(const char *dir, const char *prefix, const tga_st_tensor *t, int n,
                              const int *shard_of, int n_shards) {
    json_t *root = json_object(), *metadata = json_object(), *weight_map = json_object();
    int64_t total = 0;
    tga_status st = TGA_OK;
    for (int i = 0; i < n && st == TGA_OK; i++) {
        char name[512];
        st = shard_name(name, sizeof name, prefix, shard_of[i], n_shards);
        json_object_set_new(weight_map, t[i].name, json_string(name));
        total += tensor_bytes(t[i].dtype, t[i].ndim, t[i].shape);
    }
    json_object_set_new(metadata, "total_size", json_integer(total));
    json_object_set_new(root, "metadata", metadata);
    json_object_set_new(root, "weight_map", weight_map);
    char *json = st == TGA_OK ? json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    if (st != TGA_OK) return st;
    char path[4096];
    int len = snprintf(path, sizeof path, "%s/%s.safetensors.index.json", dir, prefix);
    if (!json)
        st = tga_error(TGA_ERR_NOMEM, "no memory for the index of %s/%s", dir, prefix);
    else if (len < 0 || (size_t)len >= sizeof path)
        st = tga_error(TGA_ERR_IO, "path too long: %s/%s", dir, prefix);
    else
        st = tga_file_write_atomic(path, json, strlen(json));
    free(json);
    return st;
}

tga_status tga_st_write_sharded(const char *dir, const char *prefix, const tga_st_tensor *tensors, int n,
                                const tga_st_meta *meta, int n_meta, uint64_t max_shard_bytes,
                                int *n_shards) {
    *n_shards = 0;
    if (n < 0 || max_shard_bytes == 0 || !prefix || !*prefix || strchr(prefix, '/'))
        return tga_error(TGA_ERR_INTERNAL,
                         "%s: bad sharded export (%d tensors, prefix '%s', %" PRIu64 " bytes a shard)", dir,
                         n, prefix ? prefix : "(null)", max_shard_bytes);
    TGA_TRY(check_tensors(dir, tensors, n));
    int *shard_of = malloc((size_t)(n ? n : 1) * sizeof *shard_of);
    if (!shard_of) return tga_error(TGA_ERR_NOMEM, "no memory to plan the shards of %s", dir);
    int shards = plan_shards(tensors, n, max_shard_bytes, shard_of);
    tga_status st = TGA_OK;
    for (int s = 0, first = 0; s < shards && st == TGA_OK; s++) {
        int end = first;
        while (end < n && shard_of[end] == s)
            end++;
        char name[512], path[4096];
        st = shard_name(name, sizeof name, prefix, s, shards);
        int len = snprintf(path, sizeof path, "%s/%s", dir, name);
        if (st == TGA_OK && (len < 0 || (size_t)len >= sizeof path))
            st = tga_error(TGA_ERR_IO, "path too long: %s", dir);
        if (st == TGA_OK) st = tga_st_write(path, tensors + first, end - first, meta, n_meta);
        first = end;
    }
    if (st == TGA_OK && shards > 1) st = write_index(dir, prefix, tensors, n, shard_of, shards);
    free(shard_of);
    if (st == TGA_OK) *n_shards = shards;
    return st;
}

/* ---- reading ----------------------------------------------------------------------------------- */

struct tga_st_file {
    char *path;
    int fd;
    tga_st_info *infos; /* sorted by offset */
    int n;
    json_t *metadata; /* the __metadata__ object, or NULL */
    uint64_t data_start;
};

void tga_st_close(tga_st_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    for (int i = 0; i < f->n; i++)
        free(f->infos[i].name);
    free(f->infos);
    json_decref(f->metadata);
    free(f->path);
    free(f);
}

static tga_status read_exact(const tga_st_file *f, void *buf, size_t n, uint64_t offset) {
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(f->fd, (unsigned char *)buf + done, n - done, (off_t)(offset + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            return tga_error(TGA_ERR_IO, "cannot read %s at byte %" PRIu64 ": %s", f->path, offset + done,
                             got < 0 ? strerror(errno) : "unexpected end of file");
        done += (size_t)got;
    }
    return TGA_OK;
}

static tga_status entry_error(const tga_st_file *f, const char *name, const char *expected) {
    return tga_error(TGA_ERR_FORMAT, "%s: tensor '%s': expected %s", f->path, name, expected);
}

static tga_status parse_shape(const tga_st_file *f, const char *name, json_t *shape, tga_st_info *info) {
    if (!json_is_array(shape)) return entry_error(f, name, "'shape' to be an array");
    if (json_array_size(shape) > TGA_ST_MAX_DIMS) return entry_error(f, name, "at most 8 dimensions");
    info->ndim = (int)json_array_size(shape);
    for (int d = 0; d < info->ndim; d++) {
        json_t *dim = json_array_get(shape, (size_t)d);
        if (!json_is_integer(dim) || json_integer_value(dim) < 0)
            return entry_error(f, name, "non-negative integers in 'shape'");
        info->shape[d] = json_integer_value(dim);
    }
    return TGA_OK;
}

static tga_status parse_offsets(const tga_st_file *f, const char *name, json_t *offsets, int64_t *begin,
                                int64_t *end) {
    json_t *b = json_array_get(offsets, 0), *e = json_array_get(offsets, 1);
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 || !json_is_integer(b) ||
        !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < json_integer_value(b))
        return entry_error(f, name, "'data_offsets' to be [begin, end] with 0 <= begin <= end");
    *begin = json_integer_value(b);
    *end = json_integer_value(e);
    return TGA_OK;
}

static tga_status parse_entry(tga_st_file *f, const char *name, json_t *value, tga_st_info *info) {
    if (!*name) return tga_error(TGA_ERR_FORMAT, "%s: a tensor with an empty name", f->path);
    if (!json_is_object(value) || json_object_size(value) != 3)
        return entry_error(f, name, "an object with exactly 'dtype', 'shape' and 'data_offsets'");
    json_t *dtype = json_object_get(value, "dtype"), *shape = json_object_get(value, "shape"),
           *offsets = json_object_get(value, "data_offsets");
    if (!dtype || !shape || !offsets)
        return entry_error(f, name, "the keys 'dtype', 'shape' and 'data_offsets'");
    if (!json_is_string(dtype) || !dtype_from_name(json_string_value(dtype), &info->dtype)) {
        char expected[256];
        snprintf(expected, sizeof expected,
                 "a supported dtype (BOOL U8 I8 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64), not %s",
                 json_is_string(dtype) ? json_string_value(dtype) : "a non-string");
        return entry_error(f, name, expected);
    }
    TGA_TRY(parse_shape(f, name, shape, info));
    int64_t begin = 0, end = 0, bytes = tensor_bytes(info->dtype, info->ndim, info->shape);
    TGA_TRY(parse_offsets(f, name, offsets, &begin, &end));
    if (bytes < 0 || end - begin != bytes) {
        char expected[256];
        snprintf(expected, sizeof expected,
                 "data_offsets spanning %" PRId64 " bytes for its dtype and shape, not %" PRId64, bytes,
                 end - begin);
        return entry_error(f, name, expected);
    }
    if (!(info->name = strdup(name))) return tga_error(TGA_ERR_NOMEM, "no memory");
    info->offset = (uint64_t)begin; /* relative until checked, then made absolute */
    info->bytes = (uint64_t)bytes;
    return TGA_OK;
}

static tga_status parse_metadata(tga_st_file *f, json_t *value) {
    const char *key;
    json_t *item;
    if (!json_is_object(value))
        return tga_error(TGA_ERR_FORMAT, "%s: '__metadata__' must be an object", f->path);
    json_object_foreach(value, key, item) {
        if (!json_is_string(item))
            return tga_error(TGA_ERR_FORMAT, "%s: __metadata__ value of '%s' must be a string", f->path, key);
    }
    f->metadata = json_incref(value);
    return TGA_OK;
}

static int compare_offsets(const void *a, const void *b) {
    const tga_st_info *x = a, *y = b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

/* After sorting by offset, the tensors must tile [0, data_bytes) exactly. Zero-byte tensors may
 * share an offset with a neighbour, so the order among them does not matter. */
static tga_status check_layout(tga_st_file *f, uint64_t data_bytes) {
    if (f->n) qsort(f->infos, (size_t)f->n, sizeof *f->infos, compare_offsets);
    uint64_t expected = 0;
    for (int i = 0; i < f->n; i++) {
        tga_st_info *info = &f->infos[i];
        if (info->offset != expected)
            return tga_error(TGA_ERR_FORMAT,
                             "%s: tensor '%s' starts at data byte %" PRIu64 ", expected %" PRIu64
                             " (tensors must follow each other without gap or overlap)",
                             f->path, info->name, info->offset, expected);
        expected += info->bytes;
        info->offset += f->data_start;
    }
    if (expected != data_bytes)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: the tensors hold %" PRIu64 " bytes but the file has %" PRIu64
                         " after the header",
                         f->path, expected, data_bytes);
    return TGA_OK;
}

static tga_status parse_header(tga_st_file *f, const char *text, size_t len, uint64_t data_bytes) {
    if (len == 0 || text[0] != '{')
        return tga_error(TGA_ERR_FORMAT, "%s: the header does not start with '{'", f->path);
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return tga_error(TGA_ERR_FORMAT, "%s: bad JSON header at byte %d: %s", f->path, err.position,
                         err.text);
    tga_status st =
        json_is_object(root) ? TGA_OK : tga_error(TGA_ERR_FORMAT, "%s: the header is not an object", f->path);
    size_t cap = json_object_size(root);
    if (st == TGA_OK && !(f->infos = calloc(cap ? cap : 1, sizeof *f->infos)))
        st = tga_error(TGA_ERR_NOMEM, "%s: no memory for %zu tensors", f->path, cap);
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (st != TGA_OK) break;
        if (strcmp(key, METADATA_KEY) == 0)
            st = parse_metadata(f, value);
        else if ((st = parse_entry(f, key, value, &f->infos[f->n])) == TGA_OK)
            f->n++;
    }
    json_decref(root);
    return st == TGA_OK ? check_layout(f, data_bytes) : st;
}

static tga_status load_header(tga_st_file *f) {
    struct stat st;
    if (fstat(f->fd, &st) != 0) return tga_error(TGA_ERR_IO, "cannot stat %s: %s", f->path, strerror(errno));
    uint64_t size = (uint64_t)st.st_size;
    unsigned char prefix[8];
    if (size < 8)
        return tga_error(TGA_ERR_FORMAT, "%s: %" PRIu64 " bytes is too short for a safetensors file", f->path,
                         size);
    TGA_TRY(read_exact(f, prefix, 8, 0));
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | prefix[i];
    if (header_len > MAX_HEADER_BYTES || header_len > size - 8)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: header length %" PRIu64 " does not fit (file of %" PRIu64
                         " bytes, at most %llu allowed)",
                         f->path, header_len, size, MAX_HEADER_BYTES);
    char *text = malloc((size_t)header_len + 1);
    if (!text) return tga_error(TGA_ERR_NOMEM, "%s: no memory for the header", f->path);
    f->data_start = 8 + header_len;
    tga_status status = read_exact(f, text, (size_t)header_len, 8);
    if (status == TGA_OK) status = parse_header(f, text, (size_t)header_len, size - f->data_start);
    free(text);
    return status;
}

tga_status tga_st_open(tga_st_file **out, const char *path) {
    *out = NULL;
    tga_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return tga_error(TGA_ERR_NOMEM, "%s: no memory", path);
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    tga_status st =
        f->fd < 0 ? tga_error(TGA_ERR_IO, "cannot open %s: %s", path, strerror(errno)) : load_header(f);
    if (st != TGA_OK) {
        tga_st_close(f);
        return st;
    }
    *out = f;
    return TGA_OK;
}

int tga_st_count(const tga_st_file *f) { return f->n; }

const tga_st_info *tga_st_info_at(const tga_st_file *f, int i) {
    return i >= 0 && i < f->n ? &f->infos[i] : NULL;
}

const tga_st_info *tga_st_find(const tga_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->infos[i].name, name) == 0) return &f->infos[i];
    return NULL;
}

const char *tga_st_metadata(const tga_st_file *f, const char *key) {
    return f->metadata ? json_string_value(json_object_get(f->metadata, key)) : NULL;
}

tga_status tga_st_read(tga_st_file *f, const char *name, tga_st_dtype dtype, void *out, size_t out_bytes) {
    const tga_st_info *info = tga_st_find(f, name);
    if (!info) return tga_error(TGA_ERR_FORMAT, "%s: no tensor '%s'", f->path, name);
    if (info->dtype != dtype)
        return tga_error(TGA_ERR_FORMAT, "%s: tensor '%s' is %s, expected %s", f->path, name,
                         tga_st_dtype_name(info->dtype), tga_st_dtype_name(dtype));
    if (info->bytes != out_bytes)
        return tga_error(TGA_ERR_FORMAT, "%s: tensor '%s' has %" PRIu64 " bytes, expected %zu", f->path, name,
                         info->bytes, out_bytes);
    return read_exact(f, out, out_bytes, info->offset);
}
