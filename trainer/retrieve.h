/* Offline retrieval for TGA (TGA-METHOD.md §2: each sample's retrieved text R): for each image,
 * the k caption texts of a corpus most similar to it by cosine similarity of their embeddings,
 * never a text equal to the image's own caption. `tga retrieve` (trainer/cmd_retrieve.c) runs it
 * over files and ranks; this is the part without files or communication.
 *
 * Scoring is exact, with no approximate index: rows are L2-normalised, score blocks come from the
 * GEMM op, and the topk_merge op folds each block into per-query top-k lists. Corpus rows are
 * ranked by score, then by lower row, a total order: so the top-k of a corpus is unique, and the
 * lists of disjoint corpus shards merge (tga_retrieve_merge) into exactly the list of the whole
 * corpus, for any number of shards (on CPUs of one SIMD level: the GEMM's rounding depends on it).
 *
 * Exclusion of the own caption happens during selection, on each shard's own rows: texts are
 * compared byte for byte after trimming ASCII white space at both ends; each distinct caption has
 * an id (tga_caption_map), corpus row j carries the id of the caption its text equals (or -1), and
 * row j is masked out of query i's scores when that id is query i's caption id. An excluded row
 * therefore never takes a slot, however many duplicates of a caption the corpus holds. */
#ifndef TGA_TRAINER_RETRIEVE_H
#define TGA_TRAINER_RETRIEVE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

/* ---- caption ids ---- */

typedef struct tga_caption_map tga_caption_map;

/* Maps the n captions' trimmed texts to ids: caption_id[i] (filled, [n]) is the smallest i' whose
 * trimmed caption equals caption i's. */
tga_status tga_caption_map_build(const char *const *captions, int n, tga_caption_map **map,
                                 int32_t *caption_id);
/* The id of the caption equal to text[0, len) after trimming, or -1. */
int32_t tga_caption_map_find(const tga_caption_map *map, const char *text, size_t len);
void tga_caption_map_free(tga_caption_map *map);

/* The [start, end) of text[0, len) without ASCII white space at either end. */
void tga_text_trim(const char *text, size_t len, size_t *start, size_t *end);

/* ---- scoring ---- */

/* Scales each row to unit L2 norm (computed in double); an all-zero row stays zero, so it scores 0
 * against everything. Rows must be finite. */
void tga_retrieve_normalize_rows(float *rows, int64_t n_rows, int dim);

/* A score block is QUERY_BLOCK x CORPUS_BLOCK floats (2 MiB): large enough for the GEMM to run at
 * its peak, small enough to be still in cache when topk_merge scans it (measured with
 * benchmarks/bench_retrieve.c: 256 x 1024 to 1024 x 1024 did best, 4096 columns worst). */
#define TGA_RETRIEVE_QUERY_BLOCK 512
#define TGA_RETRIEVE_CORPUS_BLOCK 1024

/* Reads corpus rows [first_row, first_row + n_rows) as float32 [n_rows, dim] into out; returns an
 * error that names the source and row when a row cannot be read or is not finite. */
typedef tga_status (*tga_corpus_reader)(void *ctx, int64_t first_row, int64_t n_rows, float *out);

typedef struct tga_retrieve_shard {
    int64_t corpus_rows; /* M, the whole corpus: fixes the block shape, so that every shard computes
                            bit-identical scores for the same (query, row) */
    int64_t first_row;   /* this shard: rows [first_row, first_row + n_rows) of the corpus */
    int64_t n_rows;
    tga_corpus_reader read;
    void *read_ctx;
    const int32_t *text_id; /* [n_rows]: caption id of each row's text, -1 for none; NULL: no exclusion */
} tga_retrieve_shard;

/* Corpus rows [r * M / world, (r + 1) * M / world): rank r's shard. */
void tga_retrieve_shard_range(int64_t corpus_rows, int rank, int world, int64_t *first_row, int64_t *n_rows);

/* Each query's top-k rows of the shard. queries [n_queries, dim] are L2-normalised
 * (tga_retrieve_normalize_rows); the shard's rows are normalised here, block by block, as they are
 * read. Row j is skipped for query i when caption_id[i] >= 0 and text_id[j] == caption_id[i]
 * (caption_id may be NULL: no exclusion). Writes best_score/best_index [n_queries, k] sorted best
 * first, with empty slots (-INFINITY, -1) where fewer than k rows remain. Runs on the CPU ops. */
tga_status tga_retrieve_shard_topk(const float *queries, const int32_t *caption_id, int n_queries, int dim,
                                   const tga_retrieve_shard *shard, int k, float *best_score,
                                   int32_t *best_index);

/* The top-k of the union of n_lists sets of lists as tga_retrieve_shard_topk writes them, set l at
 * list_score/list_index + l * n_queries * k (the shards must be disjoint). */
tga_status tga_retrieve_merge(const float *list_score, const int32_t *list_index, int n_lists, int n_queries,
                              int k, float *best_score, int32_t *best_index);

#endif
