/* Sample shards: the files `tga prep` writes and the training loader reads. Each sample is one
 * rendered, tokenized training example, stored as one zstd frame, so that any sample is read by
 * index with a single pread of its frame. trainer/SHARDS.md is the byte-level spec.
 *
 * Writing (bounded memory: the index stays in memory, sample data goes straight to the file):
 *     tga_shard_writer *w;
 *     TGA_TRY(tga_shard_writer_open(&w, "out/shard-00000.tgas", &layout));
 *     for (each sample) {
 *         tga_status st = tga_shard_writer_add(w, &sample);
 *         if (st != TGA_OK) { tga_shard_writer_discard(w); return st; }
 *     }
 *     TGA_TRY(tga_shard_writer_close(w));
 * The writer fills `path.tmp` and renames it to `path` only in a successful close (after fsync), so a
 * writer that crashes or is killed leaves no file named `path`.
 *
 * Reading (tga_shard_reader_read may be called from several threads at once on one reader):
 *     tga_shard_reader *r;
 *     TGA_TRY(tga_shard_reader_open(&r, path));   // header, footer and index validated here
 *     tga_shard_sample s;
 *     TGA_TRY(tga_shard_reader_read(r, i, &s));   // checksums, decompression, consistency checks
 *     ...
 *     tga_shard_sample_free(&s);
 *     tga_shard_reader_close(r);
 *
 * Failures are TGA_ERR_FORMAT (the bytes are not a valid shard or sample) or TGA_ERR_IO (a system
 * call failed), with one line that names the shard file, the sample index and its id where known,
 * and what was expected. A bad call (NULL argument, index past the end) is TGA_ERR_INTERNAL. */
#ifndef TGA_TRAINER_SHARD_H
#define TGA_TRAINER_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

#define TGA_SHARD_VERSION 1u
/* Limits a reader trusts before allocating: one sample's frame content, and one id string. */
#define TGA_SHARD_MAX_SAMPLE_BYTES (1u << 30)
#define TGA_SHARD_MAX_ID_BYTES 512

typedef enum { TGA_SHARD_F16 = 1, TGA_SHARD_F32 = 2 } tga_shard_dtype;

typedef struct {
    int32_t start, length;
} tga_shard_span;

/* What every image of a shard has in common. P = Dv = 0 makes a text-only shard (no sample of it
 * may have an image); feature_dtype must still be valid. */
typedef struct {
    int32_t patches_per_image; /* P */
    int32_t feature_dim;       /* Dv */
    tga_shard_dtype feature_dtype;
} tga_shard_layout;

/* One training sample. The writer reads it (the caller owns the arrays); the reader fills it with
 * arrays that all live in `storage`, released by tga_shard_sample_free().
 *
 * Invariants (checked by both the writer and the reader; TGA_ERR_FORMAT otherwise):
 *   - n_tokens >= 1; n_caption_tokens >= 0; n_images >= 0, and 0 unless the shard has images;
 *   - images[i] = (start, P), sorted, not overlapping, inside [0, n_tokens);
 *   - input_ids[t] == TGA_IMAGE_TOKEN_ID exactly on image positions, >= 0 elsewhere;
 *   - labels[t] == TGA_IGNORE_INDEX on image positions, >= 0 or TGA_IGNORE_INDEX elsewhere;
 *   - retrieved inside [0, n_tokens) and clear of every image; caption inside [0, n_caption_tokens);
 *     spans have length >= 0 (0 = none), starts >= 0;
 *   - cap_ids[t] >= 0; tox is 0 or 1; every feature value is finite;
 *   - id: 1..TGA_SHARD_MAX_ID_BYTES bytes, none of them a control character (messages stay one line);
 *   - the sample's frame content fits TGA_SHARD_MAX_SAMPLE_BYTES. */
typedef struct tga_shard_sample {
    char *id;                 /* the source record's id, NUL-terminated (for messages) */
    uint64_t record;          /* record number in the source file */
    int32_t n_tokens;         /* T */
    int32_t *input_ids;       /* [T] */
    int32_t *labels;          /* [T], unshifted (HF style) */
    int32_t n_images;         /* 0 for a text-only sample */
    tga_shard_span *images;   /* [n_images]: (start in input_ids, P) */
    void *features;           /* [n_images, P, Dv] in the shard's dtype; float16 as uint16 bits */
    tga_shard_span retrieved; /* retrieved-text span in input_ids; length 0 = none */
    uint8_t tox;              /* 1: a toxic-image sample (skipped by the alignment terms) */
    int32_t n_caption_tokens; /* Tc (the caption branch; may be 0) */
    int32_t *cap_ids;         /* [Tc] */
    tga_shard_span caption;   /* caption span in cap_ids */
    void *storage;            /* reader output: the one block behind every array; NULL otherwise */
} tga_shard_sample;

/* A sample's sizes, kept in the index so that a loader knows the composition of any batch (its
 * loss denominators, its padded shapes) without reading a frame. The reader checks them against the
 * decoded sample. */
typedef struct {
    int32_t n_tokens;         /* T */
    int32_t n_caption_tokens; /* Tc */
    int32_t n_images;
    int32_t n_targets; /* supervised targets: labels[t] != TGA_IGNORE_INDEX for 1 <= t < T, the
                          positions that model.c's cross-entropy counts (label t is predicted at t-1) */
} tga_shard_stats;

size_t tga_shard_dtype_size(tga_shard_dtype dtype); /* 2, 4, or 0 for an unknown code */

/* Free a sample filled by the reader (or by tga_shard_decode) and zero it; safe to call twice. */
void tga_shard_sample_free(tga_shard_sample *s);

typedef struct tga_shard_writer tga_shard_writer;

/* Create `path`.tmp (truncating any leftover) and start a shard with this layout. */
tga_status tga_shard_writer_open(tga_shard_writer **out, const char *path, const tga_shard_layout *layout);

/* Validate, compress and append one sample. A sample that breaks an invariant is rejected with
 * TGA_ERR_FORMAT and nothing is written (the writer stays usable); after an I/O error every later
 * call fails. Memory: the index (about 60 bytes + the id per sample) plus one sample's buffers. */
tga_status tga_shard_writer_add(tga_shard_writer *w, const tga_shard_sample *s);

/* Write the index and footer, fsync, rename `path`.tmp to `path` and fsync the directory. Always
 * frees the writer; on failure the temporary file is removed and `path` is left as it was. */
tga_status tga_shard_writer_close(tga_shard_writer *w);

/* Abandon a shard: free the writer and remove `path`.tmp. NULL is a no-op. */
void tga_shard_writer_discard(tga_shard_writer *w);

typedef struct tga_shard_reader tga_shard_reader;

/* Open and validate: magic, version, header checksum and fields, file size, footer, index
 * checksum, and every index entry against the file (frames back to back, sizes within limits).
 * Sample frames are checked when they are read. */
tga_status tga_shard_reader_open(tga_shard_reader **out, const char *path);

/* Read sample i (in any order): one pread of its frame, frame checksum, zstd frame checks and
 * content checksum, then the invariants above and the index's stats against the sample. On failure
 * *out is zeroed. */
tga_status tga_shard_reader_read(const tga_shard_reader *r, uint64_t i, tga_shard_sample *out);

uint64_t tga_shard_reader_count(const tga_shard_reader *r);
tga_shard_layout tga_shard_reader_layout(const tga_shard_reader *r);
/* Sample i's id and record number, from the index (no frame is read); NULL / 0 past the end. */
const char *tga_shard_reader_id(const tga_shard_reader *r, uint64_t i);
uint64_t tga_shard_reader_record(const tga_shard_reader *r, uint64_t i);
/* Sample i's stats, from the index (no frame is read; all zero past the end). The open checked
 * them against the entry's content size; a read checks them against the sample. */
tga_shard_stats tga_shard_reader_stats(const tga_shard_reader *r, uint64_t i);

void tga_shard_reader_close(tga_shard_reader *r); /* NULL is a no-op */

/* Decode one frame's uncompressed content (SHARDS.md "Sample content") into *out, checking the
 * invariants; messages start with `where`. The reader does this after decompressing; it is public
 * so that the content format can be fuzzed and tested on its own. out->id is "" and out->record 0. */
tga_status tga_shard_decode(const char *where, const tga_shard_layout *layout, const void *content,
                            size_t bytes, tga_shard_sample *out);

#endif
