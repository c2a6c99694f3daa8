/* Checkpoints: one directory per saved step, written so that it never lies (DESIGN.md §3.5).
 *
 * The trainer decides what goes in; this module provides the mechanism:
 *
 *   <run_dir>/checkpoints/step-00001234/
 *       params.tgat, optim.rank-00003.tgat, ...  tensor files (zstd frames, format below)
 *       config.yaml, state.json, base_model.id   blobs: bytes the caller gives, stored as they are
 *       MANIFEST                                  every other file's name, size and XXH64
 *       DONE                                      written last: the step and MANIFEST's XXH64
 *
 * Writing is a sequence of steps that the caller runs on the right ranks, with its own barriers
 * between them (tga_dist_barrier; runtime/ knows nothing of MPI):
 *
 *   rank 0       tga_ckpt_begin(run_dir, step)          step-N.tmp/ (a stale one is removed first)
 *   -- barrier --
 *   every rank   tga_ckpt_writer_open(&w, run_dir, step, rank)
 *                tga_ckpt_write_tensors / tga_ckpt_tensors_begin/add/end, tga_ckpt_write_blob
 *                tga_ckpt_writer_close(w)               fsyncs its files, leaves MANIFEST.rank-NNNNN
 *   -- barrier --
 *   rank 0       tga_ckpt_commit(run_dir, step, world)  all ranks' lists -> MANIFEST, fsync,
 *                                                       rename step-N.tmp -> step-N, fsync parent
 *   -- barrier --
 *   rank 0       tga_ckpt_mark_done(run_dir, step)      DONE (tmp, fsync, rename, fsync)
 *
 * A crash at any point leaves a directory without DONE (or a .tmp one), which is never chosen.
 * File names are unique across ranks (a name written twice is an error), e.g. the sharded
 * optimizer state of rank r goes to "optim.rank-%05d.tgat".
 *
 * Resuming: tga_ckpt_find_latest() picks the newest step-N with DONE whose MANIFEST verifies (every
 * file's size and XXH64); when one fails it warns, naming the file and what failed, and tries the
 * next older one. Verification reads every byte once; rank 0 should find the step and broadcast it.
 *
 * Re-sharding: a rank's shard of a flat vector (ZeRO-1 optimizer state) is saved as a 1-D tensor;
 * with the global offset of each shard recorded by the caller (e.g. in state.json), any world size
 * reads its own range with tga_ckpt_read_resharded(), which touches only the frames it needs. */
#ifndef TGA_RUNTIME_CKPT_H
#define TGA_RUNTIME_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"
#include "runtime/fileio.h"

#define TGA_CKPT_MAX_DIMS 8

/* Stored as one byte in tensor files: never renumber. */
typedef enum {
    TGA_CKPT_F32 = 1,
    TGA_CKPT_BF16 = 2,
    TGA_CKPT_F16 = 3,
    TGA_CKPT_I32 = 4,
    TGA_CKPT_I64 = 5,
    TGA_CKPT_U8 = 6,
} tga_ckpt_dtype;

/* ZSTD: each chunk is one zstd frame. ZSTD_PLANES: each chunk's values are first split into byte
 * planes (byte 0 of every value, then byte 1, ...; 4 planes for f32, 2 for bf16), which groups
 * the sign/exponent bytes together. Both frames carry zstd's content checksum. Stored as one byte. */
typedef enum { TGA_CKPT_ZSTD = 1, TGA_CKPT_ZSTD_PLANES = 2 } tga_ckpt_codec_kind;

typedef struct {
    tga_ckpt_codec_kind kind;
    int level;            /* zstd level; negative levels are zstd's fast modes */
    int64_t chunk_values; /* values per frame (the unit of a range read); 0: the default */
} tga_ckpt_codec;

/* Measured by benchmarks/bench_ckpt_codec (benchmarks/RESULTS.md, "Checkpoint compression"): the
 * best ratio at >= 200 MB/s per core, compressing and decompressing, on weights and Adam moments. */
tga_ckpt_codec tga_ckpt_default_codec(void);
#define TGA_CKPT_DEFAULT_CHUNK_VALUES ((int64_t)1 << 20)

size_t tga_ckpt_dtype_size(tga_ckpt_dtype dtype); /* 0 for an unknown code */
const char *tga_ckpt_dtype_name(tga_ckpt_dtype dtype);

typedef struct {
    const char *name; /* 1..255 printable ASCII characters, no spaces */
    tga_ckpt_dtype dtype;
    int ndim; /* 0 (a scalar) .. TGA_CKPT_MAX_DIMS */
    int64_t shape[TGA_CKPT_MAX_DIMS];
    const void *data; /* little-endian values, C order; bf16/f16 as uint16 bit patterns */
} tga_ckpt_tensor;

/* ---- writing a checkpoint (the sequence above) -------------------------------------------------- */
typedef struct tga_ckpt_writer tga_ckpt_writer;

tga_status tga_ckpt_begin(const char *run_dir, int64_t step);
tga_status tga_ckpt_writer_open(tga_ckpt_writer **w, const char *run_dir, int64_t step, int rank);
/* One tensor file holding the given tensors, in order. */
tga_status tga_ckpt_write_tensors(tga_ckpt_writer *w, const char *file_name, const tga_ckpt_tensor *tensors,
                                  int n, tga_ckpt_codec codec);
/* The same, one tensor at a time (e.g. each copied from the device into one reused buffer). One
 * tensor file is open at a time. */
tga_status tga_ckpt_tensors_begin(tga_ckpt_writer *w, const char *file_name, tga_ckpt_codec codec);
tga_status tga_ckpt_tensors_add(tga_ckpt_writer *w, const tga_ckpt_tensor *tensor);
tga_status tga_ckpt_tensors_end(tga_ckpt_writer *w);
tga_status tga_ckpt_write_blob(tga_ckpt_writer *w, const char *file_name, const void *data, size_t n);
/* Fsyncs and records this rank's files; frees w (also on failure, when its files are removed). */
tga_status tga_ckpt_writer_close(tga_ckpt_writer *w);
/* Removes the files this writer created and frees it. NULL is a no-op. */
void tga_ckpt_writer_discard(tga_ckpt_writer *w);
tga_status tga_ckpt_commit(const char *run_dir, int64_t step, int world);
tga_status tga_ckpt_mark_done(const char *run_dir, int64_t step);

/* ---- finding, verifying, pruning ---------------------------------------------------------------- */
/* "<run_dir>/checkpoints/step-%08lld" (+ "/file" when file is not NULL) into out[cap]. */
tga_status tga_ckpt_path(const char *run_dir, int64_t step, const char *file, char *out, size_t cap);
/* DONE names the step and the MANIFEST's hash; MANIFEST lists every other file with its size and
 * XXH64, and nothing else is in the directory. */
tga_status tga_ckpt_verify(const char *ckpt_dir);
/* *found = 0 (TGA_OK) when there is no complete checkpoint at all; an error when there are some
 * but none verifies (the run must not silently restart from scratch). */
tga_status tga_ckpt_find_latest(const char *run_dir, int64_t *step, int *found);
/* The bytes tga_ckpt_find_latest may read in the worst case (every complete checkpoint's files):
 * lets the other ranks of a job size how long they wait for rank 0. */
uint64_t tga_ckpt_find_latest_bytes(const char *run_dir);
/* Deletes complete checkpoints except the newest keep_last (>= 1), every step that is a multiple
 * of keep_every (0: none) and protect_step (-1: none; pass the step resumed from or just saved,
 * which is known to verify). Incomplete directories are left alone. */
tga_status tga_ckpt_retain(const char *run_dir, int keep_last, int64_t keep_every, int64_t protect_step);

/* ---- reading ------------------------------------------------------------------------------------- */
/* A blob of a checkpoint (at most max_bytes), malloc'ed and NUL-terminated (the NUL not counted). */
tga_status tga_ckpt_read_blob(const char *ckpt_dir, const char *file_name, size_t max_bytes, void **data,
                              size_t *n);

typedef struct {
    char *name;
    tga_ckpt_dtype dtype;
    int ndim;
    int64_t shape[TGA_CKPT_MAX_DIMS];
    int64_t count;
    tga_ckpt_codec codec;
} tga_ckpt_tensor_info;

typedef struct tga_ckpt_reader tga_ckpt_reader;

/* Opens a tensor file and validates its header, index and footer before trusting any of it. */
tga_status tga_ckpt_reader_open(tga_ckpt_reader **r, const char *path);
void tga_ckpt_reader_close(tga_ckpt_reader *r);
int tga_ckpt_reader_count(const tga_ckpt_reader *r);
const tga_ckpt_tensor_info *tga_ckpt_reader_info(const tga_ckpt_reader *r, int i);
const tga_ckpt_tensor_info *tga_ckpt_reader_find(const tga_ckpt_reader *r, const char *name);
/* The whole tensor; its dtype and shape must be the ones given. */
tga_status tga_ckpt_read_tensor(tga_ckpt_reader *r, const char *name, tga_ckpt_dtype dtype, int ndim,
                                const int64_t *shape, void *out);
/* Flat elements [first, first + count) of a tensor of this dtype. */
tga_status tga_ckpt_read_range(tga_ckpt_reader *r, const char *name, tga_ckpt_dtype dtype, int64_t first,
                               int64_t count, void *out);

/* A flat vector saved in pieces (e.g. one per old rank): piece i is the 1-D tensor `tensor` of file
 * `file` (in ckpt_dir) and holds global elements from global_first on. Pieces are in order and
 * contiguous. Reads global elements [first, first + count). */
typedef struct {
    const char *file, *tensor;
    int64_t global_first;
} tga_ckpt_piece;

tga_status tga_ckpt_read_resharded(const char *ckpt_dir, const tga_ckpt_piece *pieces, int n_pieces,
                                   tga_ckpt_dtype dtype, int64_t first, int64_t count, void *out);

/* ---- identity of the frozen base model ------------------------------------------------------------ */
/* Writes blob_name = "size <bytes>\nxxh64 <hex>\n", the base model's identity (tga_path_hash of its
 * params.tgat or model directory, computed once per run); check compares it with the identity of
 * the model given at resume and fails (TGA_ERR_CONFIG) naming model_path when it differs. */
tga_status tga_ckpt_write_identity(tga_ckpt_writer *w, const char *blob_name, uint64_t size, uint64_t xxh64);
tga_status tga_ckpt_check_identity(const char *ckpt_dir, const char *blob_name, const char *model_path, uint64_t size,
                                   uint64_t xxh64);

/* ---- tensor files (the container the checkpoint writes; also usable on their own) ----------------
 * Little-endian fixed-width fields:
 *   header   "TGATNSR\0", u32 version (1), u32 flags (0)
 *   frames   per tensor, in order: ceil(count / chunk_values) zstd frames, contiguous
 *   index    per tensor: u16 name length, name, u8 dtype, u8 codec, u8 ndim, i32 level, u64 shape[ndim],
 *            u64 chunk_values, u64 offset of its first frame, u32 size of each frame
 *   footer   u64 index offset, u64 index bytes, u64 XXH64 of the index, u32 tensor count, u32 0,
 *            "TGATEND\0" */
typedef struct tga_tensor_file_writer tga_tensor_file_writer;

tga_status tga_tensor_file_create(tga_tensor_file_writer **tf, const char *path, tga_file_mode mode,
                                  tga_ckpt_codec codec);
tga_status tga_tensor_file_add(tga_tensor_file_writer *tf, const tga_ckpt_tensor *tensor);
/* Writes index and footer and commits; *size and *xxh64 describe the file. Frees tf. */
tga_status tga_tensor_file_finish(tga_tensor_file_writer *tf, uint64_t *size, uint64_t *xxh64);
void tga_tensor_file_discard(tga_tensor_file_writer *tf);

/* ---- the chunk codec (tensor files use it; exposed for benchmarks/bench_ckpt_codec) --------------- */
typedef struct tga_ckpt_coder tga_ckpt_coder;

tga_status tga_ckpt_coder_create(tga_ckpt_coder **c);
void tga_ckpt_coder_free(tga_ckpt_coder *c);
size_t tga_ckpt_frame_bound(size_t raw_bytes);
/* values elements of elem_size bytes -> one zstd frame in frame[frame_cap]. */
tga_status tga_ckpt_encode_chunk(tga_ckpt_coder *c, tga_ckpt_codec codec, size_t elem_size, const void *src,
                                 size_t values, void *frame, size_t frame_cap, size_t *frame_bytes);
/* One frame holding `values` elements -> elements [first, first + count) into out. Checks that the
 * frame is exactly one zstd frame with a content checksum and the expected size; `what` names the
 * frame in messages (file, tensor, frame index). */
tga_status tga_ckpt_decode_chunk(tga_ckpt_coder *c, tga_ckpt_codec_kind kind, size_t elem_size,
                                 const void *frame, size_t frame_bytes, size_t values, size_t first,
                                 size_t count, void *out, const char *what);

#endif
