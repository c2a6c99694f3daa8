/* Retrieval (trainer/retrieve.c, kernels/cpu/topk.c) against brute force written here: every
 * candidate scored in double and fully sorted.
 *   - topk_merge on score matrices with many exact ties and masked entries, merged in blocks in a
 *     shuffled order, k from 1 to past the number of columns: exactly the sorted reference;
 *   - shard top-k of random embeddings (with duplicate rows for exact ties, a zero row, own-caption
 *     exclusion, a query whose every row is excluded, k > M, blocks crossing the block sizes): the
 *     reference up to near-ties of float rounding, and exact ties to the lower row;
 *   - the merge of 2..5 shards' lists: bit-identical to the one-shard lists;
 *   - caption ids: against a naive trim-and-compare search. */
#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"
#include "trainer/retrieve.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct candidate {
    double score;
    int32_t index;
} candidate;

/* Best first: higher score, then lower index. */
static int compare_candidates(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

static int random_below(uint64_t *rng, int n) { return (int)(tu_next(rng) % (uint64_t)n); }

/* ---- topk_merge -------------------------------------------------------------------------------- */

static void check_merge_case(int n_rows, int n_cols, int k, int block, uint64_t *rng) {
    int ld = n_cols + 3;
    float *scores = malloc(sizeof(float) * (size_t)n_rows * ld);
    /* a few distinct values, so that most scores tie with others; some masked */
    for (int i = 0; i < n_rows * ld; i++) {
        int v = random_below(rng, 9);
        scores[i] = v == 0 ? -INFINITY : (float)(v - 4) * 0.25f;
    }
    float *best_score = malloc(sizeof(float) * (size_t)n_rows * k);
    int32_t *best_index = malloc(sizeof(int32_t) * (size_t)n_rows * k);
    for (int i = 0; i < n_rows * k; i++) {
        best_score[i] = -INFINITY;
        best_index[i] = -1;
    }
    /* blocks in a shuffled order: the result must not depend on it */
    int n_blocks = (n_cols + block - 1) / block;
    int *order = malloc(sizeof(int) * (size_t)n_blocks);
    for (int b = 0; b < n_blocks; b++)
        order[b] = b;
    for (int b = n_blocks - 1; b > 0; b--) {
        int other = random_below(rng, b + 1), t = order[b];
        order[b] = order[other];
        order[other] = t;
    }
    const int offset = 1000;
    for (int b = 0; b < n_blocks; b++) {
        int c0 = order[b] * block, cols = n_cols - c0 < block ? n_cols - c0 : block;
        tga_cpu_topk_merge(best_score, best_index, scores + c0, n_rows, cols, ld, offset + c0, k);
    }
    candidate *ref = malloc(sizeof(candidate) * (size_t)n_cols);
    for (int r = 0; r < n_rows; r++) {
        int n = 0;
        for (int c = 0; c < n_cols; c++)
            if (scores[r * ld + c] != -INFINITY) ref[n++] = (candidate){scores[r * ld + c], offset + c};
        qsort(ref, (size_t)n, sizeof *ref, compare_candidates);
        for (int p = 0; p < k; p++) {
            float s = best_score[r * k + p];
            int32_t idx = best_index[r * k + p];
            if (p < n)
                CHECK(idx == ref[p].index && s == ref[p].score,
                      "merge %dx%d k=%d block=%d: row %d slot %d: (%g, %d), expected (%g, %d)", n_rows,
                      n_cols, k, block, r, p, s, idx, ref[p].score, ref[p].index);
            else
                CHECK(idx == -1 && s == -INFINITY,
                      "merge %dx%d k=%d: row %d slot %d should be empty, is (%g, %d)", n_rows, n_cols, k, r,
                      p, s, idx);
        }
    }
    free(scores);
    free(best_score);
    free(best_index);
    free(order);
    free(ref);
}

static void test_topk_merge(uint64_t *rng) {
    const int cases[][4] = {{1, 1, 1, 1},     {3, 5, 8, 2},     {4, 17, 1, 17},  {7, 40, 3, 16},
                            {5, 100, 100, 7}, {9, 300, 12, 64}, {2, 64, 64, 64}, {600, 120, 5, 33}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_merge_case(cases[i][0], cases[i][1], cases[i][2], cases[i][3], rng);
}

/* ---- shard top-k ------------------------------------------------------------------------------- */

typedef struct problem {
    int n, m, dim, k;
    float *queries; /* [n, dim] raw */
    float *corpus;  /* [m, dim] raw */
    int32_t *caption_id, *text_id;
} problem;

static tga_status read_memory_rows(void *ctx, int64_t first_row, int64_t n_rows, float *out) {
    const problem *p = ctx;
    memcpy(out, p->corpus + first_row * p->dim, sizeof(float) * (size_t)(n_rows * p->dim));
    return TGA_OK;
}

/* Random rows with exact duplicates, one zero row; captions from a small set of ids, corpus texts
 * matching them now and then; query 0's caption matches every row when all_excluded_query. */
static problem make_problem(int n, int m, int dim, int k, int all_excluded_query, uint64_t *rng) {
    problem p = {n, m, dim, k, NULL, NULL, NULL, NULL};
    p.queries = tu_alloc_uniform((size_t)n * dim, -1.0f, 1.0f, rng);
    p.corpus = tu_alloc_uniform((size_t)m * dim, -1.0f, 1.0f, rng);
    for (int j = 1; j < m; j++)
        if (random_below(rng, 5) == 0)
            memcpy(p.corpus + (size_t)j * dim, p.corpus + (size_t)random_below(rng, j) * dim,
                   sizeof(float) * (size_t)dim);
    if (m > 2) memset(p.corpus + (size_t)(m / 2) * dim, 0, sizeof(float) * (size_t)dim);
    p.caption_id = malloc(sizeof(int32_t) * (size_t)n);
    p.text_id = malloc(sizeof(int32_t) * (size_t)m);
    int ids = n / 2 + 1;
    for (int i = 0; i < n; i++)
        p.caption_id[i] = random_below(rng, ids);
    for (int j = 0; j < m; j++)
        p.text_id[j] = random_below(rng, 3) == 0 ? random_below(rng, ids) : -1;
    if (all_excluded_query)
        for (int j = 0; j < m; j++)
            p.text_id[j] = p.caption_id[0];
    return p;
}

static void free_problem(problem *p) {
    free(p->queries);
    free(p->corpus);
    free(p->caption_id);
    free(p->text_id);
}

static double norm_d(const float *x, int dim) {
    double s = 0.0;
    for (int c = 0; c < dim; c++)
        s += (double)x[c] * x[c];
    return sqrt(s);
}

static double cosine_d(const float *a, const float *b, int dim) {
    double na = norm_d(a, dim), nb = norm_d(b, dim), dot = 0.0;
    for (int c = 0; c < dim; c++)
        dot += (double)a[c] * b[c];
    return na == 0.0 || nb == 0.0 ? 0.0 : dot / (na * nb);
}

/* Lists from one call over rows [first, first + rows) of the problem. */
static void shard_lists(const problem *p, const float *queries, int64_t first, int64_t rows, float *score,
                        int32_t *index) {
    tga_retrieve_shard shard = {.corpus_rows = p->m,
                                .first_row = first,
                                .n_rows = rows,
                                .read = read_memory_rows,
                                .read_ctx = (void *)p,
                                .text_id = p->text_id + first};
    tga_status st = tga_retrieve_shard_topk(queries, p->caption_id, p->n, p->dim, &shard, p->k, score, index);
    CHECK(st == TGA_OK, "tga_retrieve_shard_topk failed: %s", tga_error_message());
}

/* Slot s holds a row whose score is the reference's s-th score up to float rounding (near-ties may
 * swap rows); an exact tie goes to the lower row; the score returned is the row's own. */
static void check_query(const problem *p, int q, const float *score, const int32_t *index, candidate *ref,
                        double *cosine) {
    const double tol = 2e-5;
    int n = 0;
    for (int j = 0; j < p->m; j++) {
        cosine[j] = cosine_d(p->queries + (size_t)q * p->dim, p->corpus + (size_t)j * p->dim, p->dim);
        if (p->text_id[j] != p->caption_id[q]) ref[n++] = (candidate){cosine[j], j};
    }
    qsort(ref, (size_t)n, sizeof *ref, compare_candidates);
    for (int s = 0; s < p->k; s++) {
        int32_t got = index[s];
        if (s >= n) {
            CHECK(got == -1 && score[s] == -INFINITY,
                  "n=%d m=%d k=%d query %d slot %d: expected empty, got %d", p->n, p->m, p->k, q, s, got);
            continue;
        }
        if (got < 0 || got >= p->m) {
            CHECK(0, "n=%d m=%d k=%d query %d slot %d: row %d out of range", p->n, p->m, p->k, q, s, got);
            continue;
        }
        CHECK(p->text_id[got] != p->caption_id[q], "query %d slot %d: row %d is the query's own caption", q,
              s, got);
        CHECK(fabs(score[s] - cosine[got]) <= tol, "query %d slot %d: score %g, row %d's cosine is %g", q, s,
              score[s], got, cosine[got]);
        CHECK(fabs(cosine[got] - ref[s].score) <= tol,
              "n=%d m=%d d=%d k=%d query %d slot %d: row %d (%.9f), expected row %d (%.9f)", p->n, p->m,
              p->dim, p->k, q, s, got, cosine[got], ref[s].index, ref[s].score);
        for (int t = 0; t < s; t++)
            CHECK(index[t] != got, "query %d: row %d in slots %d and %d", q, got, t, s);
        for (int j = 0; j < got; j++) {
            if (cosine[j] != cosine[got] || p->text_id[j] == p->caption_id[q]) continue;
            int earlier = 0;
            for (int t = 0; t < s; t++)
                earlier |= index[t] == j;
            CHECK(earlier, "query %d slot %d: row %d ties exactly with row %d, which must come first", q, s,
                  got, j);
        }
    }
}

static void check_shards_merge(const problem *p, const float *queries, const float *score,
                               const int32_t *index) {
    size_t per_list = (size_t)p->n * p->k;
    for (int world = 2; world <= 5; world++) {
        float *list_score = malloc(sizeof(float) * per_list * world),
              *merged_score = malloc(sizeof(float) * per_list);
        int32_t *list_index = malloc(sizeof(int32_t) * per_list * world);
        int32_t *merged_index = malloc(sizeof(int32_t) * per_list);
        for (int r = 0; r < world; r++) {
            int64_t first, rows;
            tga_retrieve_shard_range(p->m, r, world, &first, &rows);
            shard_lists(p, queries, first, rows, list_score + r * per_list, list_index + r * per_list);
        }
        CHECK(tga_retrieve_merge(list_score, list_index, world, p->n, p->k, merged_score, merged_index) ==
                  TGA_OK,
              "merge failed");
        CHECK(memcmp(merged_index, index, sizeof(int32_t) * per_list) == 0 &&
                  memcmp(merged_score, score, sizeof(float) * per_list) == 0,
              "n=%d m=%d k=%d: %d shards merged differ from one shard", p->n, p->m, p->k, world);
        free(list_score);
        free(merged_score);
        free(list_index);
        free(merged_index);
    }
}

static void check_retrieval_case(int n, int m, int dim, int k, int all_excluded_query, uint64_t *rng) {
    problem p = make_problem(n, m, dim, k, all_excluded_query, rng);
    float *queries = tu_alloc_copy(p.queries, (size_t)n * dim);
    tga_retrieve_normalize_rows(queries, n, dim);
    float *score = malloc(sizeof(float) * (size_t)n * k);
    int32_t *index = malloc(sizeof(int32_t) * (size_t)n * k);
    shard_lists(&p, queries, 0, m, score, index);
    candidate *ref = malloc(sizeof(candidate) * (size_t)m);
    double *cosine = malloc(sizeof(double) * (size_t)m);
    for (int q = 0; q < n; q++)
        check_query(&p, q, score + (size_t)q * k, index + (size_t)q * k, ref, cosine);
    if (all_excluded_query) CHECK(index[0] == -1, "query 0 has every row excluded but got row %d", index[0]);
    check_shards_merge(&p, queries, score, index);
    free(ref);
    free(cosine);
    free(queries);
    free(score);
    free(index);
    free_problem(&p);
}

static void test_retrieval(uint64_t *rng) {
    const int cases[][5] = {
        {1, 1, 1, 1, 0},
        {5, 3, 4, 5, 0},
        {6, 9, 3, 12, 1},
        {37, 300, 16, 3, 0},
        {20, 64, 8, 64, 0},
        {300, 2500, 33, 7, 0},
        {TGA_RETRIEVE_QUERY_BLOCK + 1, 2 * TGA_RETRIEVE_CORPUS_BLOCK + 1, 16, 2, 1},
        {3, 4100, 5, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_retrieval_case(cases[i][0], cases[i][1], cases[i][2], cases[i][3], cases[i][4], rng);
}

/* ---- caption ids ------------------------------------------------------------------------------- */

static int naive_space(char c) { return strchr(" \t\n\r\f\v", c) != NULL && c != '\0'; }

/* Byte-equal after dropping white space at both ends, written without tga_text_trim. */
static int trimmed_equal(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    while (la && naive_space(a[la - 1]))
        la--;
    while (lb && naive_space(b[lb - 1]))
        lb--;
    while (la && naive_space(*a))
        a++, la--;
    while (lb && naive_space(*b))
        b++, lb--;
    return la == lb && memcmp(a, b, la) == 0;
}

static void random_text(char *out, uint64_t *rng) {
    static const char alphabet[] = "ab \t\n";
    int len = random_below(rng, 6);
    for (int i = 0; i < len; i++)
        out[i] = alphabet[random_below(rng, (int)sizeof alphabet - 1)];
    out[len] = '\0';
}

static void test_caption_map(uint64_t *rng) {
    enum { N = 300, TEXTS = 500 };
    static char text[N][8], probe[8];
    const char *captions[N];
    for (int i = 0; i < N; i++) {
        random_text(text[i], rng);
        captions[i] = text[i];
    }
    int32_t caption_id[N];
    tga_caption_map *map;
    CHECK(tga_caption_map_build(captions, N, &map, caption_id) == TGA_OK, "caption map: %s",
          tga_error_message());
    for (int i = 0; i < N; i++) {
        int first = 0;
        while (!trimmed_equal(captions[first], captions[i]))
            first++;
        CHECK(caption_id[i] == first, "caption %d \"%s\": id %d, expected %d", i, captions[i], caption_id[i],
              first);
    }
    for (int t = 0; t < TEXTS; t++) {
        random_text(probe, rng);
        int expected = -1;
        for (int i = 0; i < N && expected < 0; i++)
            if (trimmed_equal(captions[i], probe)) expected = i;
        int32_t got = tga_caption_map_find(map, probe, strlen(probe));
        CHECK(got == expected, "text \"%s\": id %d, expected %d", probe, got, expected);
    }
    tga_caption_map_free(map);
}

int main(void) {
    uint64_t rng = 20250301;
    test_topk_merge(&rng);
    test_retrieval(&rng);
    test_caption_map(&rng);
    return tu_finish("test_retrieve");
}
