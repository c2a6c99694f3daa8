/* .npy reading and writing; the format is NumPy's NEP 1 (numpy/lib/format.py). */
#define _POSIX_C_SOURCE 200809L /* fseeko, ftello, fileno */

#include "runtime/npy.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "kernels/bf16.h"
#include "runtime/fileio.h"

/* Stored values are little-endian and are copied with memcpy; a big-endian port needs byte swaps. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "runtime/npy.c assumes a little-endian host"
#endif

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

/* NumPy refuses headers over 10000 bytes by default and ours are about 128; the cap keeps a corrupt
 * length field from turning into a huge allocation. */
#define NPY_MAX_HEADER_BYTES (1u << 20)

/* Values converted per chunk when the stored dtype differs from the requested one. */
#define NPY_CHUNK_VALUES 16384

/* load_values() target meaning "keep the stored dtype". */
#define NPY_AS_STORED (-1)

static const struct {
    tga_npy_dtype dtype;
    const char *descr, *name;
    size_t size;
} npy_types[] = {
    {TGA_NPY_F32, "<f4", "float32", 4}, {TGA_NPY_F16, "<f2", "float16", 2},
    {TGA_NPY_F64, "<f8", "float64", 8}, {TGA_NPY_I32, "<i4", "int32", 4},
    {TGA_NPY_I64, "<i8", "int64", 8},   {TGA_NPY_U8, "|u1", "uint8", 1},
};
#define NPY_N_TYPES (sizeof npy_types / sizeof npy_types[0])

#define FLOAT_TYPES ((1u << TGA_NPY_F32) | (1u << TGA_NPY_F16) | (1u << TGA_NPY_F64))
#define INT32_SOURCES ((1u << TGA_NPY_I32) | (1u << TGA_NPY_I64))

size_t tga_npy_dtype_size(tga_npy_dtype dtype) {
    for (size_t i = 0; i < NPY_N_TYPES; i++)
        if (npy_types[i].dtype == dtype) return npy_types[i].size;
    return 0;
}

const char *tga_npy_dtype_name(tga_npy_dtype dtype) {
    for (size_t i = 0; i < NPY_N_TYPES; i++)
        if (npy_types[i].dtype == dtype) return npy_types[i].name;
    return "unknown dtype";
}

static const char *dtype_descr(tga_npy_dtype dtype) {
    for (size_t i = 0; i < NPY_N_TYPES; i++)
        if (npy_types[i].dtype == dtype) return npy_types[i].descr;
    return NULL;
}

/* ---- header dict parser ----------------------------------------------------------------------
 * The dict is a Python literal such as {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 * followed by spaces and a newline. The parser accepts exactly that grammar (either quote style,
 * optional trailing commas, any whitespace) and reads only within [0, len). */

typedef struct {
    const char *text;
    size_t len, pos;
    const char *path;
} dict_cursor;

enum { KEY_DESCR = 1, KEY_FORTRAN_ORDER = 2, KEY_SHAPE = 4, ALL_KEYS = 7 };

static tga_status dict_error(const dict_cursor *c, const char *expected) {
    return tga_error(TGA_ERR_FORMAT, "%s: bad .npy header: expected %s at byte %zu of the header dict",
                     c->path, expected, c->pos);
}

static void skip_space(dict_cursor *c) {
    while (c->pos < c->len) {
        char ch = c->text[c->pos];
        if (ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n') return;
        c->pos++;
    }
}

static bool accept_char(dict_cursor *c, char ch) {
    skip_space(c);
    if (c->pos < c->len && c->text[c->pos] == ch) {
        c->pos++;
        return true;
    }
    return false;
}

static tga_status expect_char(dict_cursor *c, char ch, const char *expected) {
    return accept_char(c, ch) ? TGA_OK : dict_error(c, expected);
}

/* A Python identifier such as True, not followed by more identifier characters. */
static bool accept_word(dict_cursor *c, const char *word) {
    skip_space(c);
    size_t n = strlen(word), end = c->pos + n;
    if (c->len - c->pos < n || memcmp(c->text + c->pos, word, n) != 0) return false;
    if (end < c->len && (isalnum((unsigned char)c->text[end]) || c->text[end] == '_')) return false;
    c->pos = end;
    return true;
}

/* A quoted string without escapes, at most cap - 1 characters. */
static tga_status parse_string(dict_cursor *c, char *out, size_t cap, const char *expected) {
    skip_space(c);
    if (c->pos >= c->len || (c->text[c->pos] != '\'' && c->text[c->pos] != '"'))
        return dict_error(c, expected);
    char quote = c->text[c->pos++];
    size_t n = 0;
    for (; c->pos < c->len && c->text[c->pos] != quote; c->pos++) {
        char ch = c->text[c->pos];
        if (ch == '\\' || ch == '\n' || ch == '\0' || n + 1 >= cap) return dict_error(c, expected);
        out[n++] = ch;
    }
    if (c->pos >= c->len) return dict_error(c, "a closing quote");
    c->pos++;
    out[n] = '\0';
    return TGA_OK;
}

static tga_status parse_descr(dict_cursor *c, tga_npy_header *h) {
    char descr[16];
    TGA_TRY(parse_string(c, descr, sizeof descr, "a dtype string such as '<f4' as the value of 'descr'"));
    for (size_t i = 0; i < NPY_N_TYPES; i++) {
        if (strcmp(descr, npy_types[i].descr) == 0) {
            h->dtype = npy_types[i].dtype;
            return TGA_OK;
        }
    }
    if (descr[0] == '>')
        return tga_error(TGA_ERR_FORMAT, "%s: big-endian data ('%s') is not supported; save it little-endian",
                         c->path, descr);
    return tga_error(TGA_ERR_FORMAT, "%s: unsupported dtype '%s' (expected one of <f4 <f2 <f8 <i4 <i8 |u1)",
                     c->path, descr);
}

static tga_status parse_fortran_order(dict_cursor *c) {
    if (accept_word(c, "False")) return TGA_OK;
    if (accept_word(c, "True"))
        return tga_error(
            TGA_ERR_FORMAT,
            "%s: Fortran-order arrays are not supported; save a C-order copy (np.ascontiguousarray)",
            c->path);
    return dict_error(c, "True or False as the value of 'fortran_order'");
}

static tga_status parse_dim(dict_cursor *c, int64_t *dim) {
    skip_space(c);
    if (c->pos < c->len && c->text[c->pos] == '-')
        return tga_error(TGA_ERR_FORMAT, "%s: bad .npy header: negative dimension in 'shape'", c->path);
    if (c->pos >= c->len || !isdigit((unsigned char)c->text[c->pos]))
        return dict_error(c, "a non-negative integer dimension in 'shape'");
    int64_t value = 0;
    for (; c->pos < c->len && isdigit((unsigned char)c->text[c->pos]); c->pos++) {
        int digit = c->text[c->pos] - '0';
        if (value > (INT64_MAX - digit) / 10)
            return tga_error(TGA_ERR_FORMAT, "%s: bad .npy header: a dimension in 'shape' exceeds 64 bits",
                             c->path);
        value = value * 10 + digit;
    }
    *dim = value;
    return TGA_OK;
}

static tga_status parse_shape(dict_cursor *c, tga_npy_header *h) {
    TGA_TRY(expect_char(c, '(', "a tuple such as (3, 4) as the value of 'shape'"));
    h->ndim = 0;
    if (accept_char(c, ')')) return TGA_OK;
    for (;;) {
        if (h->ndim == TGA_NPY_MAX_DIMS)
            return tga_error(TGA_ERR_FORMAT, "%s: 'shape' has more than %d dimensions", c->path,
                             TGA_NPY_MAX_DIMS);
        TGA_TRY(parse_dim(c, &h->shape[h->ndim++]));
        bool comma = accept_char(c, ',');
        if (accept_char(c, ')')) {
            /* Python reads (5) as the integer 5, not a tuple. */
            return h->ndim == 1 && !comma ? dict_error(c, "a 1-tuple written (n,) as 'shape'") : TGA_OK;
        }
        if (!comma) return dict_error(c, "',' or ')' in 'shape'");
    }
}

static tga_status parse_entry(dict_cursor *c, tga_npy_header *h, unsigned *seen) {
    char key[32];
    TGA_TRY(parse_string(c, key, sizeof key, "a quoted key"));
    TGA_TRY(expect_char(c, ':', "':' after a key"));
    unsigned bit = strcmp(key, "descr") == 0           ? KEY_DESCR
                   : strcmp(key, "fortran_order") == 0 ? KEY_FORTRAN_ORDER
                   : strcmp(key, "shape") == 0         ? KEY_SHAPE
                                                       : 0;
    if (!bit)
        return tga_error(
            TGA_ERR_FORMAT,
            "%s: bad .npy header: unknown key '%s' (expected exactly descr, fortran_order, shape)", c->path,
            key);
    if (*seen & bit)
        return tga_error(TGA_ERR_FORMAT, "%s: bad .npy header: key '%s' appears twice", c->path, key);
    *seen |= bit;
    if (bit == KEY_DESCR) return parse_descr(c, h);
    if (bit == KEY_FORTRAN_ORDER) return parse_fortran_order(c);
    return parse_shape(c, h);
}

static tga_status parse_dict(dict_cursor *c, tga_npy_header *h) {
    unsigned seen = 0;
    TGA_TRY(expect_char(c, '{', "'{' opening the header dict"));
    while (!accept_char(c, '}')) {
        TGA_TRY(parse_entry(c, h, &seen));
        if (accept_char(c, '}')) break;
        TGA_TRY(expect_char(c, ',', "',' or '}' after a value"));
    }
    skip_space(c);
    if (c->pos != c->len) return dict_error(c, "only spaces and a newline after the header dict");
    if (seen != ALL_KEYS) {
        const char *missing = !(seen & KEY_DESCR)           ? "descr"
                              : !(seen & KEY_FORTRAN_ORDER) ? "fortran_order"
                                                            : "shape";
        return tga_error(TGA_ERR_FORMAT, "%s: bad .npy header: key '%s' is missing", c->path, missing);
    }
    return TGA_OK;
}

/* ---- header checks ---------------------------------------------------------------------------- */

static tga_status set_count(const char *path, tga_npy_header *h) {
    int64_t max_count = INT64_MAX / (int64_t)tga_npy_dtype_size(h->dtype);
    h->count = 1;
    for (int i = 0; i < h->ndim; i++)
        if (h->shape[i] == 0) h->count = 0;
    for (int i = 0; i < h->ndim && h->count != 0; i++) {
        if (h->count > max_count / h->shape[i])
            return tga_error(TGA_ERR_FORMAT, "%s: 'shape' declares more %s values than a file can hold", path,
                             tga_npy_dtype_name(h->dtype));
        h->count *= h->shape[i];
    }
    return TGA_OK;
}

/* The file must hold exactly the data the header declares: a shorter one was cut off, a longer
 * one was not written by a .npy writer (or the header belongs to another array). */
static tga_status check_data_size(FILE *f, const char *path, const tga_npy_header *h) {
    if (fseeko(f, 0, SEEK_END) != 0)
        return tga_error(TGA_ERR_IO, "%s: cannot seek: %s", path, strerror(errno));
    off_t end = ftello(f);
    if (end < 0) return tga_error(TGA_ERR_IO, "%s: cannot tell the file size: %s", path, strerror(errno));
    int64_t have = (int64_t)end - (int64_t)h->data_offset;
    int64_t need = h->count * (int64_t)tga_npy_dtype_size(h->dtype);
    if (have < need)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: truncated: header declares %" PRId64 " %s values (%" PRId64
                         " bytes) but only %" PRId64 " bytes follow",
                         path, h->count, tga_npy_dtype_name(h->dtype), need, have);
    if (have > need)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: %" PRId64 " unexpected bytes after the %" PRId64
                         " %s values the header declares",
                         path, have - need, h->count, tga_npy_dtype_name(h->dtype));
    if (fseeko(f, (off_t)h->data_offset, SEEK_SET) != 0)
        return tga_error(TGA_ERR_IO, "%s: cannot seek: %s", path, strerror(errno));
    return TGA_OK;
}

/* fread exactly n bytes; a short read is an I/O error or a file that ended early. */
static tga_status read_exact(FILE *f, const char *path, void *out, size_t n, const char *what) {
    size_t got = fread(out, 1, n, f);
    if (got == n) return TGA_OK;
    if (ferror(f)) return tga_error(TGA_ERR_IO, "%s: read error in %s: %s", path, what, strerror(errno));
    return tga_error(TGA_ERR_FORMAT, "%s: truncated %s: expected %zu bytes, found %zu", path, what, n, got);
}

tga_status tga_npy_read_header(FILE *f, const char *path, tga_npy_header *h) {
    memset(h, 0, sizeof *h);
    if (fseeko(f, 0, SEEK_SET) != 0)
        return tga_error(TGA_ERR_IO, "%s: cannot seek: %s", path, strerror(errno));
    unsigned char prefix[12];
    size_t got = fread(prefix, 1, 8, f);
    if (got < 8 && ferror(f)) return tga_error(TGA_ERR_IO, "%s: read error: %s", path, strerror(errno));
    if (got < 6 || memcmp(prefix, npy_magic, 6) != 0)
        return tga_error(TGA_ERR_FORMAT, "%s: not a .npy file (it does not start with \\x93NUMPY)", path);
    if (got < 8)
        return tga_error(TGA_ERR_FORMAT, "%s: truncated .npy file: the version bytes are missing", path);
    int major = prefix[6], minor = prefix[7];
    if (major < 1 || major > 3 || minor != 0)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: unsupported .npy format version %d.%d (expected 1.0, 2.0 or 3.0)", path, major,
                         minor);
    /* Version 1.0 stores the header length in 2 bytes, 2.0 and 3.0 (UTF-8 header) in 4. */
    size_t length_bytes = major == 1 ? 2 : 4;
    TGA_TRY(read_exact(f, path, prefix + 8, length_bytes, "header length"));
    uint32_t header_len = (uint32_t)prefix[8] | (uint32_t)prefix[9] << 8;
    if (length_bytes == 4) header_len |= (uint32_t)prefix[10] << 16 | (uint32_t)prefix[11] << 24;
    if (header_len > NPY_MAX_HEADER_BYTES)
        return tga_error(TGA_ERR_FORMAT, "%s: header length %" PRIu32 " exceeds the %u-byte limit", path,
                         header_len, NPY_MAX_HEADER_BYTES);
    char *text = malloc(header_len ? header_len : 1);
    if (!text)
        return tga_error(TGA_ERR_NOMEM, "%s: no memory for a %" PRIu32 "-byte header", path, header_len);
    tga_status st = read_exact(f, path, text, header_len, "header");
    dict_cursor cursor = {text, header_len, 0, path};
    if (st == TGA_OK) st = parse_dict(&cursor, h);
    free(text);
    TGA_TRY(st);
    TGA_TRY(set_count(path, h));
    h->data_offset = 8 + length_bytes + header_len;
    return check_data_size(f, path, h);
}

tga_status tga_npy_open(const char *path, FILE **f, tga_npy_header *h) {
    *f = fopen(path, "rb");
    if (!*f) return tga_error(TGA_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    tga_status st = tga_npy_read_header(*f, path, h);
    if (st != TGA_OK) {
        fclose(*f);
        *f = NULL;
    }
    return st;
}

/* ---- conversion ----------------------------------------------------------------------------- */

static double stored_float(tga_npy_dtype src, const unsigned char *in, size_t i) {
    if (src == TGA_NPY_F16) {
        uint16_t half;
        memcpy(&half, in + 2 * i, 2);
        return tga_f16_to_float(half);
    }
    if (src == TGA_NPY_F32) {
        float value;
        memcpy(&value, in + 4 * i, 4);
        return value;
    }
    double value;
    memcpy(&value, in + 8 * i, 8);
    return value;
}

/* Convert n stored values (element index first_index.. for messages) into `out` of type dst. The
 * caller has checked that src is one of dst's accepted sources. */
static tga_status convert_values(const char *path, tga_npy_dtype src, const unsigned char *in,
                                 tga_npy_dtype dst, void *out, size_t n, int64_t first_index) {
    for (size_t i = 0; i < n; i++) {
        if (dst == TGA_NPY_F32) {
            double value = stored_float(src, in, i);
            float narrowed = (float)value;
            if (isfinite(value) && !isfinite(narrowed))
                return tga_error(TGA_ERR_FORMAT,
                                 "%s: value %g at element %" PRId64 " does not fit in float32", path, value,
                                 first_index + (int64_t)i);
            ((float *)out)[i] = narrowed;
        } else if (dst == TGA_NPY_F64) {
            ((double *)out)[i] = stored_float(src, in, i);
        } else {
            int64_t value;
            memcpy(&value, in + 8 * i, 8); /* src is int64: int32 sources take the copy path */
            if (value < INT32_MIN || value > INT32_MAX)
                return tga_error(TGA_ERR_FORMAT,
                                 "%s: value %" PRId64 " at element %" PRId64 " does not fit in int32", path,
                                 value, first_index + (int64_t)i);
            ((int32_t *)out)[i] = (int32_t)value;
        }
    }
    return TGA_OK;
}

/* Read n values from the file position (stored type src) into out (type dst). */
static tga_status read_values(FILE *f, const char *path, tga_npy_dtype src, tga_npy_dtype dst,
                              int64_t first_index, int64_t n, void *out) {
    size_t src_size = tga_npy_dtype_size(src), dst_size = tga_npy_dtype_size(dst);
    if (src == dst) return read_exact(f, path, out, (size_t)n * src_size, "data");
    unsigned char *chunk = malloc(NPY_CHUNK_VALUES * src_size);
    if (!chunk) return tga_error(TGA_ERR_NOMEM, "%s: no memory for a conversion buffer", path);
    tga_status st = TGA_OK;
    for (int64_t done = 0; done < n && st == TGA_OK; done += NPY_CHUNK_VALUES) {
        size_t m = (size_t)(n - done < NPY_CHUNK_VALUES ? n - done : NPY_CHUNK_VALUES);
        st = read_exact(f, path, chunk, m * src_size, "data");
        if (st == TGA_OK)
            st = convert_values(path, src, chunk, dst, (unsigned char *)out + (size_t)done * dst_size, m,
                                first_index + done);
    }
    free(chunk);
    return st;
}

tga_status tga_npy_read_rows_f32(FILE *f, const char *path, const tga_npy_header *h, int64_t first_row,
                                 int64_t n_rows, float *out) {
    if (!(FLOAT_TYPES & (1u << h->dtype)))
        return tga_error(TGA_ERR_FORMAT, "%s: expected float32, float16 or float64 data, found %s", path,
                         tga_npy_dtype_name(h->dtype));
    if (h->ndim < 1) return tga_error(TGA_ERR_FORMAT, "%s: a 0-d array has no rows to read", path);
    if (first_row < 0 || n_rows < 0 || first_row > h->shape[0] - n_rows)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: rows [%" PRId64 ", %" PRId64 ") requested but the file has %" PRId64, path,
                         first_row, first_row + n_rows, h->shape[0]);
    int64_t row_values = h->shape[0] ? h->count / h->shape[0] : 0;
    int64_t offset = (int64_t)h->data_offset + first_row * row_values * (int64_t)tga_npy_dtype_size(h->dtype);
    if (fseeko(f, (off_t)offset, SEEK_SET) != 0)
        return tga_error(TGA_ERR_IO, "%s: cannot seek to row %" PRId64 ": %s", path, first_row,
                         strerror(errno));
    return read_values(f, path, h->dtype, TGA_NPY_F32, first_row * row_values, n_rows * row_values, out);
}

/* Open, check the stored dtype against `accepted` (a bit per dtype), and read everything as dst
 * (or as stored when dst is NPY_AS_STORED). */
static tga_status load_values(const char *path, unsigned accepted, const char *expected, int dst, void **data,
                              tga_npy_header *h) {
    *data = NULL;
    FILE *f;
    TGA_TRY(tga_npy_open(path, &f, h));
    tga_npy_dtype target = dst == NPY_AS_STORED ? h->dtype : (tga_npy_dtype)dst;
    size_t value_size = tga_npy_dtype_size(target);
    void *values = NULL;
    tga_status st = TGA_OK;
    if (!(accepted & (1u << h->dtype)))
        st = tga_error(TGA_ERR_FORMAT, "%s: expected %s data, found %s", path, expected,
                       tga_npy_dtype_name(h->dtype));
    else if ((uint64_t)h->count > SIZE_MAX / value_size ||
             !(values = malloc(h->count ? h->count * value_size : 1)))
        st = tga_error(TGA_ERR_NOMEM, "%s: no memory for %" PRId64 " %s values", path, h->count,
                       tga_npy_dtype_name(target));
    else
        st = read_values(f, path, h->dtype, target, 0, h->count, values);
    fclose(f);
    if (st != TGA_OK) {
        free(values);
        return st;
    }
    *data = values;
    return TGA_OK;
}

tga_status tga_npy_load_raw(const char *path, void **data, tga_npy_header *h) {
    return load_values(path, ~0u, "any", NPY_AS_STORED, data, h);
}

tga_status tga_npy_load_f32(const char *path, float **data, tga_npy_header *h) {
    void *values;
    tga_status st = load_values(path, FLOAT_TYPES, "float32, float16 or float64", TGA_NPY_F32, &values, h);
    *data = values;
    return st;
}

tga_status tga_npy_load_f64(const char *path, double **data, tga_npy_header *h) {
    void *values;
    tga_status st = load_values(path, FLOAT_TYPES, "float64, float32 or float16", TGA_NPY_F64, &values, h);
    *data = values;
    return st;
}

tga_status tga_npy_load_i32(const char *path, int32_t **data, tga_npy_header *h) {
    void *values;
    tga_status st = load_values(path, INT32_SOURCES, "int32 or int64", TGA_NPY_I32, &values, h);
    *data = values;
    return st;
}

/* ---- writing -------------------------------------------------------------------------------- */

/* Magic, version 1.0, length, then the dict padded with spaces and a newline so that the data
 * starts at a multiple of 64 bytes, as NumPy writes it. Eight 19-digit dimensions need about 230
 * bytes, far below version 1.0's 65535-byte limit, so version 2.0 is never needed for writing. */
static size_t build_header(unsigned char *out, size_t cap, tga_npy_dtype dtype, int ndim,
                           const int64_t *shape) {
    char dims[TGA_NPY_MAX_DIMS * 24] = "";
    size_t used = 0;
    for (int i = 0; i < ndim; i++)
        used += (size_t)snprintf(dims + used, sizeof dims - used, "%s%" PRId64 "%s", i ? ", " : "", shape[i],
                                 ndim == 1 ? "," : "");
    char dict[sizeof dims + 96];
    int dict_len = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                            dtype_descr(dtype), dims);
    size_t total = (10 + (size_t)dict_len + 1 + 63) / 64 * 64;
    size_t header_len = total - 10;
    if (total > cap) return 0;
    memcpy(out, npy_magic, 6);
    out[6] = 1;
    out[7] = 0;
    out[8] = (unsigned char)(header_len & 0xff);
    out[9] = (unsigned char)(header_len >> 8);
    memcpy(out + 10, dict, (size_t)dict_len);
    memset(out + 10 + dict_len, ' ', header_len - (size_t)dict_len - 1);
    out[total - 1] = '\n';
    return total;
}

static tga_status check_save_args(const char *path, tga_npy_dtype dtype, const void *data, int ndim,
                                  const int64_t *shape, int64_t *bytes) {
    if (!dtype_descr(dtype))
        return tga_error(TGA_ERR_INTERNAL, "%s: saving an unknown dtype %d", path, (int)dtype);
    if (ndim < 0 || ndim > TGA_NPY_MAX_DIMS || (ndim > 0 && !shape))
        return tga_error(TGA_ERR_INTERNAL, "%s: saving an array with %d dimensions (0..%d allowed)", path,
                         ndim, TGA_NPY_MAX_DIMS);
    int64_t count = 1, max_count = INT64_MAX / (int64_t)tga_npy_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && count > max_count / shape[i]))
            return tga_error(TGA_ERR_INTERNAL, "%s: saving an array with bad dimension %d (%" PRId64 ")",
                             path, i, shape[i]);
        count *= shape[i];
    }
    if (count > 0 && !data)
        return tga_error(TGA_ERR_INTERNAL, "%s: saving %" PRId64 " values from NULL", path, count);
    *bytes = count * (int64_t)tga_npy_dtype_size(dtype);
    return TGA_OK;
}

tga_status tga_npy_save(const char *path, tga_npy_dtype dtype, const void *data, int ndim,
                        const int64_t *shape) {
    int64_t data_bytes = 0;
    TGA_TRY(check_save_args(path, dtype, data, ndim, shape, &data_bytes));
    unsigned char header[512];
    size_t header_bytes = build_header(header, sizeof header, dtype, ndim, shape);
    if (!header_bytes) return tga_error(TGA_ERR_INTERNAL, "%s: .npy header does not fit its buffer", path);
    /* runtime/fileio.h: path.tmp, fsync, rename, directory fsync; a crash never leaves half a file */
    tga_file_writer *w;
    TGA_TRY(tga_file_writer_open(&w, path, TGA_FILE_REPLACE));
    tga_status st = tga_file_writer_write(w, header, header_bytes);
    if (st == TGA_OK && data_bytes > 0) st = tga_file_writer_write(w, data, (size_t)data_bytes);
    if (st != TGA_OK) {
        tga_file_writer_discard(w);
        return st;
    }
    return tga_file_writer_commit(w);
}
