/* Exact top-k retrieval by cosine similarity (see trainer/retrieve.h). */
#include "trainer/retrieve.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

/* ---- caption ids ---------------------------------------------------------------------------- */

/* A jansson object serves as the string-keyed hash table (jansson is linked for the records
 * anyway): keys are trimmed captions, passed with their lengths; values are the ids. */
struct tga_caption_map {
    json_t *ids;
};

static int is_ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

void tga_text_trim(const char *text, size_t len, size_t *start, size_t *end) {
    size_t first = 0, last = len;
    while (first < last && is_ascii_space(text[first]))
        first++;
    while (last > first && is_ascii_space(text[last - 1]))
        last--;
    *start = first;
    *end = last;
}

tga_status tga_caption_map_build(const char *const *captions, int n, tga_caption_map **map,
                                 int32_t *caption_id) {
    *map = NULL;
    tga_caption_map *m = malloc(sizeof *m);
    json_t *ids = json_object();
    if (!m || !ids) {
        free(m);
        json_decref(ids);
        return tga_error(TGA_ERR_NOMEM, "out of memory for the caption table");
    }
    m->ids = ids;
    for (int i = 0; i < n; i++) {
        size_t start, end;
        tga_text_trim(captions[i], strlen(captions[i]), &start, &end);
        const json_t *known = json_object_getn(ids, captions[i] + start, end - start);
        if (known) {
            caption_id[i] = (int32_t)json_integer_value(known);
        } else if (json_object_setn_new_nocheck(ids, captions[i] + start, end - start, json_integer(i)) ==
                   0) {
            caption_id[i] = i;
        } else {
            tga_caption_map_free(m);
            return tga_error(TGA_ERR_NOMEM, "out of memory for the caption table (%d captions)", n);
        }
    }
    *map = m;
    return TGA_OK;
}

int32_t tga_caption_map_find(const tga_caption_map *map, const char *text, size_t len) {
    size_t start, end;
    tga_text_trim(text, len, &start, &end);
    const json_t *id = json_object_getn(map->ids, text + start, end - start);
    return id ? (int32_t)json_integer_value(id) : -1;
}

void tga_caption_map_free(tga_caption_map *map) {
    if (!map) return;
    json_decref(map->ids);
    free(map);
}

/* ---- scoring -------------------------------------------------------------------------------- */

void tga_retrieve_normalize_rows(float *rows, int64_t n_rows, int dim) {
#pragma omp parallel for schedule(static) if (n_rows * dim >= 65536)
    for (int64_t r = 0; r < n_rows; r++) {
        float *row = rows + r * dim;
        double sum_squares = 0.0;
        for (int c = 0; c < dim; c++)
            sum_squares += (double)row[c] * row[c];
        if (sum_squares == 0.0) continue;
        /* dividing in double: 1/norm of a tiny row may not fit in a float */
        double norm = sqrt(sum_squares);
        for (int c = 0; c < dim; c++)
            row[c] = (float)(row[c] / norm);
    }
}

void tga_retrieve_shard_range(int64_t corpus_rows, int rank, int world, int64_t *first_row, int64_t *n_rows) {
    *first_row = corpus_rows * rank / world;
    *n_rows = corpus_rows * (rank + 1) / world - *first_row;
}

/* Scores of rows whose text is the query's own caption become -INFINITY, which topk_merge skips. */
static void mask_own_captions(float *scores, int ld, const int32_t *caption_id, int n_queries,
                              const int32_t *text_id, int n_rows) {
    for (int c = 0; c < n_rows; c++) {
        if (text_id[c] < 0) continue;
        for (int q = 0; q < n_queries; q++)
            if (caption_id[q] == text_id[c]) scores[(size_t)q * ld + c] = -INFINITY;
    }
}

/* Every block has block_rows columns (the last one zero-padded) and every query block the same
 * rows on every shard, so each (query, row) score comes from a GEMM of the same shape whatever
 * the shard: the GEMM's arithmetic per element depends on the shape only, not on the element's
 * place in it, so the scores, and with them ties, are bit-identical for any number of shards. */
tga_status tga_retrieve_shard_topk(const float *queries, const int32_t *caption_id, int n_queries, int dim,
                                   const tga_retrieve_shard *shard, int k, float *best_score,
                                   int32_t *best_index) {
    for (size_t i = 0; i < (size_t)n_queries * k; i++) {
        best_score[i] = -INFINITY;
        best_index[i] = -1;
    }
    if (n_queries == 0 || shard->n_rows == 0) return TGA_OK;
    /* the buffers are host memory, so the CPU ops run whatever the active backend */
    const tga_ops *ops = tga_cpu_ops();
    int block_rows =
        shard->corpus_rows < TGA_RETRIEVE_CORPUS_BLOCK ? (int)shard->corpus_rows : TGA_RETRIEVE_CORPUS_BLOCK;
    int query_rows = n_queries < TGA_RETRIEVE_QUERY_BLOCK ? n_queries : TGA_RETRIEVE_QUERY_BLOCK;
    float *corpus = malloc(sizeof(float) * (size_t)block_rows * dim);
    float *scores = malloc(sizeof(float) * (size_t)query_rows * block_rows);
    tga_status st =
        corpus && scores ? TGA_OK : tga_error(TGA_ERR_NOMEM, "out of memory for the score blocks");
    for (int64_t done = 0; st == TGA_OK && done < shard->n_rows; done += block_rows) {
        int rows = shard->n_rows - done < block_rows ? (int)(shard->n_rows - done) : block_rows;
        st = shard->read(shard->read_ctx, shard->first_row + done, rows, corpus);
        if (st != TGA_OK) break;
        memset(corpus + (size_t)rows * dim, 0, sizeof(float) * (size_t)(block_rows - rows) * dim);
        tga_retrieve_normalize_rows(corpus, rows, dim);
        for (int q0 = 0; q0 < n_queries; q0 += query_rows) {
            int n_q = n_queries - q0 < query_rows ? n_queries - q0 : query_rows;
            /* scores[n_q, block_rows] = queries[q0 : q0+n_q] corpus^T */
            ops->gemm(0, 1, n_q, block_rows, dim, 1.0f, queries + (size_t)q0 * dim, dim, corpus, dim, 0.0f,
                      scores, block_rows);
            if (caption_id && shard->text_id)
                mask_own_captions(scores, block_rows, caption_id + q0, n_q, shard->text_id + done, rows);
            ops->topk_merge(best_score + (size_t)q0 * k, best_index + (size_t)q0 * k, scores, n_q, rows,
                            block_rows, (int32_t)(shard->first_row + done), k);
        }
    }
    free(corpus);
    free(scores);
    return st;
}

/* The order of the topk_merge op: higher score first, then lower index. */
static int ranks_before(float score_a, int32_t index_a, float score_b, int32_t index_b) {
    return score_a > score_b || (score_a == score_b && index_a < index_b);
}

/* A k-way merge of sorted lists: the next entry is the best head; an empty slot ends a list. */
static void merge_query(const float *list_score, const int32_t *list_index, int n_lists, size_t list_stride,
                        int k, int *taken, float *best_score, int32_t *best_index) {
    for (int l = 0; l < n_lists; l++)
        taken[l] = 0;
    for (int slot = 0; slot < k; slot++) {
        int from = -1;
        size_t from_at = 0;
        for (int l = 0; l < n_lists; l++) {
            size_t at = (size_t)l * list_stride + (size_t)taken[l];
            if (taken[l] == k || list_index[at] < 0) continue;
            if (from < 0 ||
                ranks_before(list_score[at], list_index[at], list_score[from_at], list_index[from_at])) {
                from = l;
                from_at = at;
            }
        }
        best_score[slot] = from < 0 ? -INFINITY : list_score[from_at];
        best_index[slot] = from < 0 ? -1 : list_index[from_at];
        if (from >= 0) taken[from]++;
    }
}

tga_status tga_retrieve_merge(const float *list_score, const int32_t *list_index, int n_lists, int n_queries,
                              int k, float *best_score, int32_t *best_index) {
    int *taken = malloc(sizeof(int) * (size_t)n_lists);
    if (!taken) return tga_error(TGA_ERR_NOMEM, "out of memory merging %d top-k lists", n_lists);
    size_t list_stride = (size_t)n_queries * k;
    for (int q = 0; q < n_queries; q++) {
        merge_query(list_score + (size_t)q * k, list_index + (size_t)q * k, n_lists, list_stride, k, taken,
                    best_score + (size_t)q * k, best_index + (size_t)q * k);
    }
    free(taken);
    return TGA_OK;
}
