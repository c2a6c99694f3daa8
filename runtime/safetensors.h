/* safetensors files (github.com/huggingface/safetensors): an 8-byte little-endian header length, a
 * JSON header {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}},
 * padded with spaces to a multiple of 8 bytes, then the tensors' bytes, back to back.
 *
 * Writing goes through runtime/fileio.h (tmp, fsync, rename), tensors in the order given. It serves
 * `tga export`: the projector under LLaVA's names (model.mm_projector.0.weight, ...) or HF's
 * (multi_modal_projector.linear_1.weight, ...), and full models as HF sharded sets. transformers
 * expects the metadata {"format": "pt"}; the caller passes it.
 *
 * Reading is strict, like the reference implementation and then some: the header must be a JSON
 * object without duplicate keys; every tensor entry has exactly dtype, shape and data_offsets; the
 * offsets match the shape, start at 0, follow each other without gap or overlap and end exactly at
 * the end of the file. Only the header is loaded; tensors are read on demand (model files are
 * many GB). Errors name the file, the tensor and what was expected. */
#ifndef TGA_RUNTIME_SAFETENSORS_H
#define TGA_RUNTIME_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

#define TGA_ST_MAX_DIMS 8

typedef enum {
    TGA_ST_BOOL,
    TGA_ST_U8,
    TGA_ST_I8,
    TGA_ST_I16,
    TGA_ST_U16,
    TGA_ST_F16,
    TGA_ST_BF16,
    TGA_ST_I32,
    TGA_ST_U32,
    TGA_ST_F32,
    TGA_ST_F64,
    TGA_ST_I64,
    TGA_ST_U64,
} tga_st_dtype;

size_t tga_st_dtype_size(tga_st_dtype dtype);      /* 0 for an unknown value */
const char *tga_st_dtype_name(tga_st_dtype dtype); /* the header's spelling: "F32", "BF16", ... */

typedef struct {
    const char *name;
    tga_st_dtype dtype;
    int ndim; /* 0 (a scalar) .. TGA_ST_MAX_DIMS */
    int64_t shape[TGA_ST_MAX_DIMS];
    const void *data; /* little-endian, C order; f16/bf16 as uint16 bit patterns */
} tga_st_tensor;

typedef struct {
    const char *key, *value;
} tga_st_meta;

/* One file; meta may be NULL when n_meta is 0. */
tga_status tga_st_write(const char *path, const tga_st_tensor *tensors, int n, const tga_st_meta *meta,
                        int n_meta);

/* A set as transformers' save_pretrained writes it: the tensors, in order, into shards holding at
 * most max_shard_bytes of tensor data each (a larger tensor gets a shard of its own), named
 * <dir>/<prefix>-00001-of-00003.safetensors, and <dir>/<prefix>.safetensors.index.json with
 * {"metadata": {"total_size": <tensor bytes>}, "weight_map": {name: shard file}}, written last.
 * A set that fits in one shard is the single file <prefix>.safetensors, without an index. Every
 * shard carries meta. *n_shards receives the number of files written. */
tga_status tga_st_write_sharded(const char *dir, const char *prefix, const tga_st_tensor *tensors, int n,
                                const tga_st_meta *meta, int n_meta, uint64_t max_shard_bytes, int *n_shards);

typedef struct {
    char *name;
    tga_st_dtype dtype;
    int ndim;
    int64_t shape[TGA_ST_MAX_DIMS];
    uint64_t offset; /* absolute byte offset in the file */
    uint64_t bytes;
} tga_st_info;

typedef struct tga_st_file tga_st_file;

tga_status tga_st_open(tga_st_file **f, const char *path);
void tga_st_close(tga_st_file *f);
int tga_st_count(const tga_st_file *f);
/* Tensors in the order of their data in the file. */
const tga_st_info *tga_st_info_at(const tga_st_file *f, int i);
const tga_st_info *tga_st_find(const tga_st_file *f, const char *name);
/* The __metadata__ value of key, or NULL. */
const char *tga_st_metadata(const tga_st_file *f, const char *key);
/* The tensor's bytes into out[out_bytes]; its dtype must be `dtype` and out_bytes its size. */
tga_status tga_st_read(tga_st_file *f, const char *name, tga_st_dtype dtype, void *out, size_t out_bytes);

#endif
