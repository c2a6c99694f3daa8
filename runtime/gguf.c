#define _POSIX_C_SOURCE 200809L /* strdup, fileno */
#include "runtime/gguf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader copies little-endian values as they are"
#endif

/* The bytes being parsed: a file read sequentially, or a memory buffer. Every read is checked
 * against the bytes left, so a length from the file is trusted only once it is known to fit. */
typedef struct {
    const uint8_t *mem;
    FILE *fp;
    uint64_t pos, size;
    const char *name;
} cursor;

static uint64_t bytes_left(const cursor *c) { return c->size - c->pos; }

static tga_status read_bytes(cursor *c, void *dst, uint64_t n, const char *what) {
    if (n > bytes_left(c))
        return tga_error(TGA_ERR_FORMAT,
                         "%s: truncated GGUF at byte %" PRIu64 ": %s needs %" PRIu64 " bytes, %" PRIu64
                         " left",
                         c->name, c->pos, what, n, bytes_left(c));
    if (c->mem)
        memcpy(dst, c->mem + c->pos, n);
    else if (fread(dst, 1, n, c->fp) != n)
        return tga_error(TGA_ERR_IO, "%s: read failed at byte %" PRIu64 ": %s", c->name, c->pos,
                         ferror(c->fp) ? strerror(errno) : "unexpected end of file");
    c->pos += n;
    return TGA_OK;
}

static tga_status read_u32(cursor *c, uint32_t *v, const char *what) { return read_bytes(c, v, 4, what); }
static tga_status read_u64(cursor *c, uint64_t *v, const char *what) { return read_bytes(c, v, 8, what); }

static tga_status read_string(cursor *c, tga_gguf_str *s, const char *what) {
    uint64_t len;
    TGA_TRY(read_u64(c, &len, what));
    if (len > bytes_left(c))
        return tga_error(TGA_ERR_FORMAT,
                         "%s: %s at byte %" PRIu64 " has length %" PRIu64 " but only %" PRIu64
                         " bytes are left (truncated or corrupt file)",
                         c->name, what, c->pos - 8, len, bytes_left(c));
    char *data = malloc(len + 1);
    if (!data)
        return tga_error(TGA_ERR_NOMEM, "%s: out of memory for a %" PRIu64 "-byte string", c->name, len);
    tga_status st = read_bytes(c, data, len, what);
    if (st != TGA_OK) {
        free(data);
        return st;
    }
    data[len] = '\0';
    s->data = data;
    s->len = len;
    return TGA_OK;
}

static size_t scalar_size(tga_gguf_type t) {
    switch (t) {
    case TGA_GGUF_UINT8:
    case TGA_GGUF_INT8:
    case TGA_GGUF_BOOL:
        return 1;
    case TGA_GGUF_UINT16:
    case TGA_GGUF_INT16:
        return 2;
    case TGA_GGUF_UINT32:
    case TGA_GGUF_INT32:
    case TGA_GGUF_FLOAT32:
        return 4;
    case TGA_GGUF_UINT64:
    case TGA_GGUF_INT64:
    case TGA_GGUF_FLOAT64:
        return 8;
    case TGA_GGUF_STRING:
    case TGA_GGUF_ARRAY:
        return 0;
    }
    return 0;
}

const char *tga_gguf_type_name(tga_gguf_type t) {
    static const char *names[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                                  "bool",  "string", "array",  "uint64", "int64",  "float64"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

static bool known_type(uint32_t t) { return t <= TGA_GGUF_FLOAT64; }

/* Decode one little-endian scalar of type t from raw bytes into the kv's value union. */
static void decode_scalar(tga_gguf_type t, const uint8_t *raw, tga_gguf_kv *kv) {
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    float f32;
    switch (t) {
    case TGA_GGUF_UINT8:
        kv->value.u = raw[0];
        break;
    case TGA_GGUF_BOOL:
        kv->value.u = raw[0] != 0;
        break;
    case TGA_GGUF_INT8:
        kv->value.i = (int8_t)raw[0];
        break;
    case TGA_GGUF_UINT16:
        memcpy(&u16, raw, 2);
        kv->value.u = u16;
        break;
    case TGA_GGUF_INT16:
        memcpy(&u16, raw, 2);
        kv->value.i = (int16_t)u16;
        break;
    case TGA_GGUF_UINT32:
        memcpy(&u32, raw, 4);
        kv->value.u = u32;
        break;
    case TGA_GGUF_INT32:
        memcpy(&u32, raw, 4);
        kv->value.i = (int32_t)u32;
        break;
    case TGA_GGUF_FLOAT32:
        memcpy(&f32, raw, 4);
        kv->value.f = f32;
        break;
    case TGA_GGUF_UINT64:
        memcpy(&u64, raw, 8);
        kv->value.u = u64;
        break;
    case TGA_GGUF_INT64:
        memcpy(&u64, raw, 8);
        kv->value.i = (int64_t)u64;
        break;
    case TGA_GGUF_FLOAT64:
        memcpy(&kv->value.f, raw, 8);
        break;
    case TGA_GGUF_STRING:
    case TGA_GGUF_ARRAY:
        break;
    }
}

static tga_status read_array(cursor *c, tga_gguf_kv *kv) {
    uint32_t elem;
    uint64_t count;
    TGA_TRY(read_u32(c, &elem, "array element type"));
    TGA_TRY(read_u64(c, &count, "array length"));
    if (!known_type(elem) || elem == TGA_GGUF_ARRAY)
        return tga_error(TGA_ERR_FORMAT, "%s: key '%s': unsupported array element type %" PRIu32, c->name,
                         kv->key.data, elem);
    /* a string takes at least its 8-byte length, so count is bounded by the bytes left */
    uint64_t min_size = elem == TGA_GGUF_STRING ? 8 : scalar_size(elem);
    if (count > bytes_left(c) / min_size)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: key '%s': array of %" PRIu64 " %s values does not fit in the %" PRIu64
                         " bytes left (truncated or corrupt file)",
                         c->name, kv->key.data, count, tga_gguf_type_name(elem), bytes_left(c));
    kv->value.arr.type = elem;
    kv->value.arr.count = count;
    if (elem != TGA_GGUF_STRING) {
        void *data = malloc(count * min_size + 1);
        if (!data) return tga_error(TGA_ERR_NOMEM, "%s: key '%s': out of memory", c->name, kv->key.data);
        kv->value.arr.data = data;
        return read_bytes(c, data, count * min_size, kv->key.data);
    }
    tga_gguf_str *items = calloc(count + 1, sizeof *items);
    if (!items) return tga_error(TGA_ERR_NOMEM, "%s: key '%s': out of memory", c->name, kv->key.data);
    kv->value.arr.data = items;
    for (uint64_t i = 0; i < count; i++)
        TGA_TRY(read_string(c, &items[i], kv->key.data));
    return TGA_OK;
}

static tga_status read_kv(cursor *c, tga_gguf_kv *kv) {
    TGA_TRY(read_string(c, &kv->key, "metadata key"));
    uint32_t type;
    TGA_TRY(read_u32(c, &type, "metadata value type"));
    if (!known_type(type))
        return tga_error(TGA_ERR_FORMAT, "%s: key '%s': unknown value type %" PRIu32, c->name, kv->key.data,
                         type);
    kv->type = type;
    if (type == TGA_GGUF_STRING) return read_string(c, &kv->value.s, kv->key.data);
    if (type == TGA_GGUF_ARRAY) return read_array(c, kv);
    uint8_t raw[8];
    TGA_TRY(read_bytes(c, raw, scalar_size(type), kv->key.data));
    decode_scalar(type, raw, kv);
    return TGA_OK;
}

/* ggml's block layout per tensor type: elements per block and bytes per block; 0 marks ids that
 * ggml has retired or never used. */
static const struct {
    uint32_t block, bytes;
} ggml_types[] = {
    [0] = {1, 4},      [1] = {1, 2},      [2] = {32, 18},    [3] = {32, 20},    [6] = {32, 22},
    [7] = {32, 24},    [8] = {32, 34},    [9] = {32, 36},    [10] = {256, 84},  [11] = {256, 110},
    [12] = {256, 144}, [13] = {256, 176}, [14] = {256, 210}, [15] = {256, 292}, [16] = {256, 66},
    [17] = {256, 74},  [18] = {256, 98},  [19] = {256, 50},  [20] = {32, 18},   [21] = {256, 110},
    [22] = {256, 82},  [23] = {256, 136}, [24] = {1, 1},     [25] = {1, 2},     [26] = {1, 4},
    [27] = {1, 8},     [28] = {1, 8},     [29] = {256, 56},  [30] = {1, 2},     [34] = {256, 54},
    [35] = {256, 66},  [39] = {32, 17},
};

static tga_status tensor_size(const cursor *c, tga_gguf_tensor *t) {
    uint32_t n_types = sizeof ggml_types / sizeof ggml_types[0];
    if (t->type >= n_types || ggml_types[t->type].block == 0)
        return tga_error(TGA_ERR_FORMAT, "%s: tensor '%s': unknown ggml type %" PRIu32, c->name, t->name.data,
                         t->type);
    uint64_t block = ggml_types[t->type].block, count = 1;
    for (uint32_t d = 0; d < TGA_GGUF_MAX_DIMS; d++) {
        if (t->dims[d] == 0 || t->dims[d] > INT64_MAX / count)
            return tga_error(TGA_ERR_FORMAT,
                             "%s: tensor '%s': dimension %" PRIu32 " is %" PRIu64 " (zero or too large)",
                             c->name, t->name.data, d, t->dims[d]);
        count *= t->dims[d];
    }
    if (t->dims[0] % block != 0)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: tensor '%s': first dimension %" PRIu64 " is not a multiple of the block "
                         "size %" PRIu64 " of its type",
                         c->name, t->name.data, t->dims[0], block);
    if (count / block > INT64_MAX / ggml_types[t->type].bytes)
        return tga_error(TGA_ERR_FORMAT, "%s: tensor '%s': byte size overflows", c->name, t->name.data);
    t->nbytes = count / block * ggml_types[t->type].bytes;
    return TGA_OK;
}

static tga_status read_tensor_info(cursor *c, tga_gguf_tensor *t) {
    TGA_TRY(read_string(c, &t->name, "tensor name"));
    TGA_TRY(read_u32(c, &t->n_dims, t->name.data));
    if (t->n_dims == 0 || t->n_dims > TGA_GGUF_MAX_DIMS)
        return tga_error(TGA_ERR_FORMAT, "%s: tensor '%s' has %" PRIu32 " dimensions (expected 1..%d)",
                         c->name, t->name.data, t->n_dims, TGA_GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < TGA_GGUF_MAX_DIMS; d++)
        t->dims[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        TGA_TRY(read_u64(c, &t->dims[d], t->name.data));
    TGA_TRY(read_u32(c, &t->type, t->name.data));
    TGA_TRY(read_u64(c, &t->offset, t->name.data));
    return tensor_size(c, t);
}

static int compare_str(const tga_gguf_str *a, const tga_gguf_str *b) {
    uint64_t n = a->len < b->len ? a->len : b->len;
    int r = memcmp(a->data, b->data, n);
    return r ? r : (a->len > b->len) - (a->len < b->len);
}

static int compare_str_ptr(const void *a, const void *b) {
    return compare_str(*(const tga_gguf_str *const *)a, *(const tga_gguf_str *const *)b);
}

/* Sorting pointers keeps the duplicate check O(n log n) even for a file with millions of keys. */
static tga_status check_unique(const cursor *c, const tga_gguf_str **names, uint64_t n, const char *what) {
    qsort(names, n, sizeof *names, compare_str_ptr);
    for (uint64_t i = 1; i < n; i++)
        if (compare_str(names[i - 1], names[i]) == 0)
            return tga_error(TGA_ERR_FORMAT, "%s: duplicate %s '%s'", c->name, what, names[i]->data);
    return TGA_OK;
}

static tga_status check_unique_names(const cursor *c, const tga_gguf *g) {
    uint64_t n = g->n_kv > g->n_tensors ? g->n_kv : g->n_tensors;
    const tga_gguf_str **names = malloc((n + 1) * sizeof *names);
    if (!names) return tga_error(TGA_ERR_NOMEM, "%s: out of memory", c->name);
    for (uint64_t i = 0; i < g->n_kv; i++)
        names[i] = &g->kv[i].key;
    tga_status st = check_unique(c, names, g->n_kv, "metadata key");
    for (uint64_t i = 0; st == TGA_OK && i < g->n_tensors; i++)
        names[i] = &g->tensors[i].name;
    if (st == TGA_OK) st = check_unique(c, names, g->n_tensors, "tensor name");
    free(names);
    return st;
}

static tga_status read_alignment(const cursor *c, tga_gguf *g) {
    g->alignment = 32;
    const tga_gguf_kv *kv = tga_gguf_find(g, "general.alignment");
    if (!kv) return TGA_OK;
    if (kv->type != TGA_GGUF_UINT32 || kv->value.u == 0 || (kv->value.u & (kv->value.u - 1)) != 0)
        return tga_error(TGA_ERR_FORMAT, "%s: general.alignment must be a uint32 power of two", c->name);
    g->alignment = kv->value.u;
    return TGA_OK;
}

static tga_status check_tensor_placement(const cursor *c, const tga_gguf *g) {
    uint64_t data_size = g->file_size > g->data_offset ? g->file_size - g->data_offset : 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tga_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0)
            return tga_error(TGA_ERR_FORMAT,
                             "%s: tensor '%s': offset %" PRIu64
                             " is not a multiple of the alignment %" PRIu64,
                             c->name, t->name.data, t->offset, g->alignment);
        if (t->offset > data_size || t->nbytes > data_size - t->offset)
            return tga_error(TGA_ERR_FORMAT,
                             "%s: tensor '%s': bytes [%" PRIu64 ", %" PRIu64 ") of the data section lie "
                             "past its end (%" PRIu64 " bytes): truncated file?",
                             c->name, t->name.data, t->offset, t->offset + t->nbytes, data_size);
    }
    return TGA_OK;
}

static tga_status read_header(cursor *c, tga_gguf *g) {
    char magic[4];
    TGA_TRY(read_bytes(c, magic, 4, "magic"));
    if (memcmp(magic, "GGUF", 4) != 0)
        return tga_error(TGA_ERR_FORMAT, "%s: not a GGUF file (bad magic; expected \"GGUF\")", c->name);
    TGA_TRY(read_u32(c, &g->version, "version"));
    if (g->version != 2 && g->version != 3)
        return tga_error(TGA_ERR_FORMAT, "%s: GGUF version %" PRIu32 " is not supported (expected 2 or 3)",
                         c->name, g->version);
    uint64_t n_tensors, n_kv;
    TGA_TRY(read_u64(c, &n_tensors, "tensor count"));
    TGA_TRY(read_u64(c, &n_kv, "metadata count"));
    /* the smallest key-value is 12 bytes and the smallest tensor info 32 */
    if (n_kv > bytes_left(c) / 12 || n_tensors > bytes_left(c) / 32)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: %" PRIu64 " metadata entries and %" PRIu64 " tensors cannot fit in %" PRIu64
                         " bytes: truncated or corrupt header",
                         c->name, n_kv, n_tensors, c->size);
    g->kv = calloc(n_kv + 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors + 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return tga_error(TGA_ERR_NOMEM, "%s: out of memory", c->name);
    for (; g->n_kv < n_kv; g->n_kv++)
        TGA_TRY(read_kv(c, &g->kv[g->n_kv]));
    for (; g->n_tensors < n_tensors; g->n_tensors++)
        TGA_TRY(read_tensor_info(c, &g->tensors[g->n_tensors]));
    TGA_TRY(check_unique_names(c, g));
    TGA_TRY(read_alignment(c, g));
    g->data_offset = (c->pos + g->alignment - 1) / g->alignment * g->alignment;
    return check_tensor_placement(c, g);
}

static tga_status parse(cursor *c, tga_gguf **out) {
    *out = NULL;
    tga_gguf *g = calloc(1, sizeof *g);
    if (!g) return tga_error(TGA_ERR_NOMEM, "%s: out of memory", c->name);
    g->file_size = c->size;
    g->path = strdup(c->name);
    tga_status st = g->path ? read_header(c, g) : tga_error(TGA_ERR_NOMEM, "out of memory");
    if (st != TGA_OK) {
        tga_gguf_free(g);
        return st;
    }
    *out = g;
    return TGA_OK;
}

tga_status tga_gguf_parse(const void *data, size_t size, const char *name, tga_gguf **out) {
    cursor c = {.mem = data, .size = size, .name = name};
    return parse(&c, out);
}

tga_status tga_gguf_open(const char *path, tga_gguf **out) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return tga_error(TGA_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat info;
    if (fstat(fileno(fp), &info) != 0 || !S_ISREG(info.st_mode)) {
        fclose(fp);
        return tga_error(TGA_ERR_IO, "%s: not a regular file", path);
    }
    cursor c = {.fp = fp, .size = (uint64_t)info.st_size, .name = path};
    tga_status st = parse(&c, out);
    fclose(fp);
    return st;
}

static void free_kv(tga_gguf_kv *kv) {
    free((void *)kv->key.data);
    if (kv->type == TGA_GGUF_STRING) free((void *)kv->value.s.data);
    if (kv->type != TGA_GGUF_ARRAY) return;
    if (kv->value.arr.type == TGA_GGUF_STRING && kv->value.arr.data) {
        const tga_gguf_str *items = kv->value.arr.data;
        for (uint64_t i = 0; i < kv->value.arr.count; i++)
            free((void *)items[i].data);
    }
    free((void *)kv->value.arr.data);
}

void tga_gguf_free(tga_gguf *g) {
    if (!g) return;
    /* entries past n_kv / n_tensors were zeroed by calloc; a partly read one is freed too */
    for (uint64_t i = 0; g->kv && i <= g->n_kv; i++)
        free_kv(&g->kv[i]);
    for (uint64_t i = 0; g->tensors && i <= g->n_tensors; i++)
        free((void *)g->tensors[i].name.data);
    free(g->kv);
    free(g->tensors);
    free(g->path);
    free(g);
}

const tga_gguf_kv *tga_gguf_find(const tga_gguf *g, const char *key) {
    size_t len = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key.len == len && memcmp(g->kv[i].key.data, key, len) == 0) return &g->kv[i];
    return NULL;
}

static tga_status find_required(const tga_gguf *g, const char *key, const tga_gguf_kv **kv) {
    *kv = tga_gguf_find(g, key);
    if (!*kv) return tga_error(TGA_ERR_FORMAT, "%s: missing metadata key '%s'", g->path, key);
    return TGA_OK;
}

static tga_status wrong_type(const tga_gguf *g, const tga_gguf_kv *kv, const char *expected) {
    return tga_error(TGA_ERR_FORMAT, "%s: metadata key '%s' is a %s; expected %s", g->path, kv->key.data,
                     tga_gguf_type_name(kv->type), expected);
}

tga_status tga_gguf_get_string(const tga_gguf *g, const char *key, tga_gguf_str *out) {
    const tga_gguf_kv *kv;
    TGA_TRY(find_required(g, key, &kv));
    if (kv->type != TGA_GGUF_STRING) return wrong_type(g, kv, "a string");
    *out = kv->value.s;
    return TGA_OK;
}

static bool is_unsigned(tga_gguf_type t) {
    return t == TGA_GGUF_UINT8 || t == TGA_GGUF_UINT16 || t == TGA_GGUF_UINT32 || t == TGA_GGUF_UINT64;
}
static bool is_signed(tga_gguf_type t) {
    return t == TGA_GGUF_INT8 || t == TGA_GGUF_INT16 || t == TGA_GGUF_INT32 || t == TGA_GGUF_INT64;
}

tga_status tga_gguf_get_int_opt(const tga_gguf *g, const char *key, int64_t min, int64_t max, int64_t *out) {
    const tga_gguf_kv *kv = tga_gguf_find(g, key);
    if (!kv) return TGA_OK;
    if (!is_unsigned(kv->type) && !is_signed(kv->type)) return wrong_type(g, kv, "an integer");
    bool fits = is_unsigned(kv->type) ? kv->value.u <= (uint64_t)INT64_MAX && (int64_t)kv->value.u >= min &&
                                            (int64_t)kv->value.u <= max
                                      : kv->value.i >= min && kv->value.i <= max;
    if (!fits)
        return tga_error(TGA_ERR_FORMAT, "%s: metadata key '%s' is out of range [%" PRId64 ", %" PRId64 "]",
                         g->path, key, min, max);
    *out = is_unsigned(kv->type) ? (int64_t)kv->value.u : kv->value.i;
    return TGA_OK;
}

tga_status tga_gguf_get_int(const tga_gguf *g, const char *key, int64_t min, int64_t max, int64_t *out) {
    const tga_gguf_kv *kv;
    TGA_TRY(find_required(g, key, &kv));
    return tga_gguf_get_int_opt(g, key, min, max, out);
}

tga_status tga_gguf_get_bool_opt(const tga_gguf *g, const char *key, bool *out) {
    const tga_gguf_kv *kv = tga_gguf_find(g, key);
    if (!kv) return TGA_OK;
    if (kv->type != TGA_GGUF_BOOL) return wrong_type(g, kv, "a bool");
    *out = kv->value.u != 0;
    return TGA_OK;
}

tga_status tga_gguf_get_array(const tga_gguf *g, const char *key, tga_gguf_type elem,
                              const tga_gguf_kv **out) {
    const tga_gguf_kv *kv;
    TGA_TRY(find_required(g, key, &kv));
    if (kv->type != TGA_GGUF_ARRAY || kv->value.arr.type != elem)
        return tga_error(TGA_ERR_FORMAT, "%s: metadata key '%s' must be an array of %s", g->path, key,
                         tga_gguf_type_name(elem));
    *out = kv;
    return TGA_OK;
}

int64_t tga_gguf_array_int(const tga_gguf_kv *kv, uint64_t i) {
    const uint8_t *p = (const uint8_t *)kv->value.arr.data + i * scalar_size(kv->value.arr.type);
    tga_gguf_kv one = {.type = kv->value.arr.type};
    decode_scalar(kv->value.arr.type, p, &one);
    return is_unsigned(one.type) || one.type == TGA_GGUF_BOOL ? (int64_t)one.value.u : one.value.i;
}
