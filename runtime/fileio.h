/* Durable file writes, the checksum they carry, and a fault-injection hook.
 *
 * Every file tga must not lose (checkpoints, exported models, shards) is written through a
 * tga_file_writer, so that a crash or a full disk leaves either the old state or the complete new
 * one, and so that one test hook can make any of those writes fail:
 *
 *   TGA_FILE_REPLACE  writes <path>.tmp; commit = fsync, close, rename over <path>, fsync the
 *                     directory. <path> is the old file or the new one, never a mix.
 *   TGA_FILE_CREATE   creates <path> itself (an existing file is an error); commit = fsync, close.
 *                     For files inside a directory that is itself renamed into place once complete
 *                     (a checkpoint's step-N.tmp/); the caller fsyncs that directory.
 *
 * A writer hashes what it writes (XXH64, seed 0), so a manifest needs no second read of the file.
 * After a failed write the writer is poisoned: later writes and commit fail and commit removes the
 * partial file. Every error names the file and gives strerror().
 *
 * Fault injection, for tests: after `after_bytes` more bytes have been written through writers in
 * this process (all writers together, like one disk filling up), every write fails with
 * `error_number` (the write that crosses the limit is cut short first, as on a real full disk).
 * Arm it with tga_fileio_inject_write_failure() or, for whole programs, the environment variable
 * TGA_FAULT_WRITE_AFTER_BYTES=N (read once, at the first write; fails with ENOSPC). */
#ifndef TGA_RUNTIME_FILEIO_H
#define TGA_RUNTIME_FILEIO_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

/* ---- XXH64 (xxHash's 64-bit hash, github.com/Cyan4973/xxHash doc/xxhash_spec.md) ------------- */
typedef struct {
    uint64_t total_len;
    uint64_t acc[4];
    unsigned char pending[32];
    uint32_t pending_len;
} tga_xxh64_state;

void tga_xxh64_reset(tga_xxh64_state *s, uint64_t seed);
void tga_xxh64_update(tga_xxh64_state *s, const void *data, size_t n);
uint64_t tga_xxh64_digest(const tga_xxh64_state *s);
uint64_t tga_xxh64(const void *data, size_t n, uint64_t seed);

/* ---- writers ------------------------------------------------------------------------------- */
typedef enum { TGA_FILE_REPLACE, TGA_FILE_CREATE } tga_file_mode;

typedef struct tga_file_writer tga_file_writer;

tga_status tga_file_writer_open(tga_file_writer **w, const char *path, tga_file_mode mode);
tga_status tga_file_writer_write(tga_file_writer *w, const void *data, size_t n);
/* Overwrites bytes [offset, offset + n) already written (e.g. a header whose contents are known
 * only at the end), through the same fault hook. The XXH64 then no longer describes the file. */
tga_status tga_file_writer_patch(tga_file_writer *w, uint64_t offset, const void *data, size_t n);
/* Bytes written so far and their XXH64 (0 after a patch). */
uint64_t tga_file_writer_bytes(const tga_file_writer *w);
uint64_t tga_file_writer_xxh64(const tga_file_writer *w);
const char *tga_file_writer_path(const tga_file_writer *w);
/* Makes the file durable (see the modes above) and frees w, also on failure (the partial file is
 * removed then). */
tga_status tga_file_writer_commit(tga_file_writer *w);
/* Closes, removes the partial file, frees w. NULL is a no-op. */
void tga_file_writer_discard(tga_file_writer *w);

/* One buffer as a whole file, TGA_FILE_REPLACE. */
tga_status tga_file_write_atomic(const char *path, const void *data, size_t n);

/* ---- directories and reading --------------------------------------------------------------- */
/* fsync a directory, so that the names created, renamed or removed in it survive a crash. */
tga_status tga_fsync_dir(const char *dir);
/* rename(from, to), then fsync the directory (both directories when they differ). */
tga_status tga_rename_durable(const char *from, const char *to);
/* The source tree (configs/, and ../shared/assets beside it): $TGA_SOURCE_DIR, else the nearest
 * folder at most four levels above the executable that holds configs/templates (a build folder
 * inside or beside the tree finds it). 1 with the folder in dir[size], 0 when there is none. */
int tga_find_source_tree(char *dir, size_t size);
/* The directory part of a path ("." when there is none), into out[cap]. 0 when it does not fit. */
size_t tga_path_dirname(const char *path, char *out, size_t cap);

/* The whole file into a malloc'ed buffer (one extra NUL byte after the data, not counted in *n).
 * A file larger than max_bytes is a TGA_ERR_FORMAT: callers read small files this way. */
tga_status tga_file_read_all(const char *path, size_t max_bytes, void **data, size_t *n);
/* Size and XXH64 of a file's contents, read in blocks. */
tga_status tga_file_hash(const char *path, uint64_t *size, uint64_t *xxh64);
/* tga_file_hash of a file; of a directory (a Hugging Face model), every *.json and *.safetensors
 * file in it in name order, each name hashed before its bytes (*size: the files' bytes). */
tga_status tga_path_hash(const char *path, uint64_t *size, uint64_t *xxh64);

/* ---- fault injection (tests) --------------------------------------------------------------- */
/* after_bytes < 0 disarms; error_number is e.g. ENOSPC or EIO. Returns the budget that was left
 * (-1 when disarmed), so a test can measure how many bytes an operation writes. */
int64_t tga_fileio_inject_write_failure(int64_t after_bytes, int error_number);

#endif
