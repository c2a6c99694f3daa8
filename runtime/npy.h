/* NumPy .npy files: strict reading (format versions 1.0, 2.0, 3.0) and atomic writing (1.0).
 *
 * Only little-endian, C-order arrays of six dtypes are accepted; anything else is a TGA_ERR_FORMAT
 * with one message that names the file and says what was expected. The header is validated in
 * full (magic, version, length, the dict with exactly the keys descr, fortran_order and shape, the
 * element count, and that the file holds exactly the data it declares) before any data is trusted.
 *
 * Large files (image features of LLaVA scale are hundreds of GB) are never loaded whole: open one
 * with tga_npy_open() and read rows with tga_npy_read_rows_f32(), or fseeko() to
 * data_offset + row * row_bytes yourself. */
#ifndef TGA_RUNTIME_NPY_H
#define TGA_RUNTIME_NPY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/error.h"

#define TGA_NPY_MAX_DIMS 8

typedef enum { TGA_NPY_F32, TGA_NPY_F16, TGA_NPY_F64, TGA_NPY_I32, TGA_NPY_I64, TGA_NPY_U8 } tga_npy_dtype;

typedef struct {
    tga_npy_dtype dtype;
    int ndim;                        /* 0 (a scalar, count 1) .. TGA_NPY_MAX_DIMS */
    int64_t shape[TGA_NPY_MAX_DIMS]; /* entries past ndim are 0 */
    int64_t count;                   /* product of shape; count * element size fits in int64 */
    size_t data_offset;              /* absolute byte offset of element 0 in the file */
} tga_npy_header;

size_t tga_npy_dtype_size(tga_npy_dtype dtype);
const char *tga_npy_dtype_name(tga_npy_dtype dtype); /* "float32", "int64", ... */

/* Read and validate the header of an open file (from its start; `path` is only for messages).
 * On success the file is positioned at data_offset. */
tga_status tga_npy_read_header(FILE *f, const char *path, tga_npy_header *h);

/* fopen(path, "rb") + tga_npy_read_header; on success the caller owns *f and fcloses it. */
tga_status tga_npy_open(const char *path, FILE **f, tga_npy_header *h);

/* Rows [first_row, first_row + n_rows) along axis 0 of a floating-point file (float32, float16 or
 * float64), converted to float32 into out[n_rows * count / shape[0]]. Seeks itself. */
tga_status tga_npy_read_rows_f32(FILE *f, const char *path, const tga_npy_header *h, int64_t first_row,
                                 int64_t n_rows, float *out);

/* Whole-file loads. *data is malloc'ed (free() it; never NULL on success, even for 0 elements)
 * and NULL on failure; *h describes the file as stored.
 *   raw: the bytes as stored (any dtype; float16 stays uint16 bit patterns)
 *   f32: from float32, float16 or float64 (a finite float64 beyond float32's range is an error)
 *   f64: from float64, float32 or float16
 *   i32: from int32 or int64 (a value outside int32's range is an error) */
tga_status tga_npy_load_raw(const char *path, void **data, tga_npy_header *h);
tga_status tga_npy_load_f32(const char *path, float **data, tga_npy_header *h);
tga_status tga_npy_load_f64(const char *path, double **data, tga_npy_header *h);
tga_status tga_npy_load_i32(const char *path, int32_t **data, tga_npy_header *h);

/* Write `data` (count * element size bytes, float16 as uint16 bit patterns) as a version-1.0 file,
 * through path.tmp and a rename, so that `path` is either the old file or the complete new one. */
tga_status tga_npy_save(const char *path, tga_npy_dtype dtype, const void *data, int ndim,
                        const int64_t *shape);

#endif
