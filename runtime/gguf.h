/* GGUF files (llama.cpp's model format): header, typed key-value metadata and tensor infos.
 *
 * Layout (little-endian; ggml's gguf.h): magic "GGUF", u32 version (2 or 3), u64 tensor count,
 * u64 key-value count; then each key-value as (string key, u32 type, value), strings as (u64
 * length, bytes) and arrays as (u32 element type, u64 count, elements); then each tensor info as
 * (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset); then padding to
 * `general.alignment` (default 32) and the tensor data, each tensor at its offset from there.
 *
 * The reader validates everything before trusting it: every length against the bytes left in the
 * file (so a corrupt length never becomes a huge allocation), known value types only, no nested
 * arrays, unique keys and tensor names, dims and byte sizes without overflow, tensor offsets
 * aligned and inside the file. Only the metadata is read into memory; tensor data stays in the
 * file at data_offset + tensor offset (read it with fseeko or map it). */
#ifndef TGA_RUNTIME_GGUF_H
#define TGA_RUNTIME_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

typedef enum {
    TGA_GGUF_UINT8 = 0,
    TGA_GGUF_INT8 = 1,
    TGA_GGUF_UINT16 = 2,
    TGA_GGUF_INT16 = 3,
    TGA_GGUF_UINT32 = 4,
    TGA_GGUF_INT32 = 5,
    TGA_GGUF_FLOAT32 = 6,
    TGA_GGUF_BOOL = 7,
    TGA_GGUF_STRING = 8,
    TGA_GGUF_ARRAY = 9,
    TGA_GGUF_UINT64 = 10,
    TGA_GGUF_INT64 = 11,
    TGA_GGUF_FLOAT64 = 12,
} tga_gguf_type;

#define TGA_GGUF_MAX_DIMS 4

/* A string from the file: `len` bytes (may hold NULs) followed by a terminating NUL. */
typedef struct {
    const char *data;
    uint64_t len;
} tga_gguf_str;

typedef struct {
    tga_gguf_str key;
    tga_gguf_type type;
    union {
        uint64_t u; /* UINT8/16/32/64 and BOOL (0 or 1) */
        int64_t i;  /* INT8/16/32/64 */
        double f;   /* FLOAT32/64 */
        tga_gguf_str s;
        struct {
            tga_gguf_type type; /* element type; never ARRAY */
            uint64_t count;
            /* STRING: tga_gguf_str[count]; others: the little-endian elements as in the file
             * (BOOL one byte each), suitably aligned for their type */
            const void *data;
        } arr;
    } value;
} tga_gguf_kv;

typedef struct {
    tga_gguf_str name;
    uint32_t n_dims;
    uint64_t dims[TGA_GGUF_MAX_DIMS]; /* entries past n_dims are 1 */
    uint32_t type;                    /* ggml type id (F32 = 0, F16 = 1, Q4_0 = 2, ...) */
    uint64_t offset;                  /* from data_offset */
    uint64_t nbytes;
} tga_gguf_tensor;

typedef struct tga_gguf {
    char *path; /* for messages */
    uint32_t version;
    uint64_t n_kv;
    tga_gguf_kv *kv;
    uint64_t n_tensors;
    tga_gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset; /* absolute file offset of the tensor data section */
    uint64_t file_size;
} tga_gguf;

/* Read and validate the metadata of a GGUF file. Errors are TGA_ERR_IO (cannot open or read) or
 * TGA_ERR_FORMAT, with a message naming the file, the byte offset and the key or tensor. */
tga_status tga_gguf_open(const char *path, tga_gguf **out);

/* The same from bytes in memory (`name` is used in messages); `data` is not kept. */
tga_status tga_gguf_parse(const void *data, size_t size, const char *name, tga_gguf **out);

void tga_gguf_free(tga_gguf *g);

const char *tga_gguf_type_name(tga_gguf_type type);

/* NULL when absent. */
const tga_gguf_kv *tga_gguf_find(const tga_gguf *g, const char *key);

/* Typed lookups. A missing key is TGA_ERR_FORMAT unless the *_opt form is used (which returns
 * TGA_OK and leaves *out unchanged). Any integer type converts when the value fits. */
tga_status tga_gguf_get_string(const tga_gguf *g, const char *key, tga_gguf_str *out);
tga_status tga_gguf_get_int(const tga_gguf *g, const char *key, int64_t min, int64_t max, int64_t *out);
tga_status tga_gguf_get_int_opt(const tga_gguf *g, const char *key, int64_t min, int64_t max, int64_t *out);
tga_status tga_gguf_get_bool_opt(const tga_gguf *g, const char *key, bool *out);
/* An array whose elements have type `elem` (*out points at the kv). */
tga_status tga_gguf_get_array(const tga_gguf *g, const char *key, tga_gguf_type elem,
                              const tga_gguf_kv **out);

/* Element i of an integer or bool array as int64 (the caller checks i < count; a FLOAT32 array's
 * data is a float[] as it stands). */
int64_t tga_gguf_array_int(const tga_gguf_kv *kv, uint64_t i);

#endif
