/* Top-k merge (contract in kernels/ops.h). Each list is kept sorted best first, so its last slot
 * is the bar a new score has to reach. After the first few blocks nearly every score of a row is
 * below the bar, so the scan compares a chunk of scores with the bar at once (the chunk's maximum,
 * in SIMD registers) and looks at single scores only in the rare chunk that holds one that reaches
 * it. Rows are independent and each is owned by one thread, so the result does not depend
 * on the thread count. */
#include "kernels/cpu/cpu_kernels.h"

#include <immintrin.h>
#include <math.h>

enum { CHUNK = 16 }; /* four SSE vectors */
/* below this many scores a parallel region costs more than the scan */
#define PARALLEL_MIN_SCORES 32768.0

/* The total order of the lists: higher score first, then lower index. */
static inline int ranks_before(float score_a, int32_t index_a, float score_b, int32_t index_b) {
    return score_a > score_b || (score_a == score_b && index_a < index_b);
}

/* Puts an entry that ranks before the last one in its place, dropping the last one. */
static void insert(float *best_score, int32_t *best_index, int k, float score, int32_t index) {
    int slot = k - 1;
    while (slot > 0 && ranks_before(score, index, best_score[slot - 1], best_index[slot - 1])) {
        best_score[slot] = best_score[slot - 1];
        best_index[slot] = best_index[slot - 1];
        slot--;
    }
    best_score[slot] = score;
    best_index[slot] = index;
}

/* An empty slot is (-INFINITY, -1): any unmasked score ranks before it. */
static void consider(float *best_score, int32_t *best_index, int k, float score, int32_t index) {
    if (score != -INFINITY && ranks_before(score, index, best_score[k - 1], best_index[k - 1]))
        insert(best_score, best_index, k, score, index);
}

/* 1 if some score of the chunk reaches the bar (an equal score may still win on its index). SSE
 * is part of x86-64, so this needs no run-time dispatch; maxps is exact, so no score is missed. */
static inline int chunk_reaches(const float *scores, float bar) {
    __m128 top = _mm_max_ps(_mm_max_ps(_mm_loadu_ps(scores), _mm_loadu_ps(scores + 4)),
                            _mm_max_ps(_mm_loadu_ps(scores + 8), _mm_loadu_ps(scores + 12)));
    return _mm_movemask_ps(_mm_cmpge_ps(top, _mm_set1_ps(bar))) != 0;
}

static void merge_row(float *best_score, int32_t *best_index, const float *scores, int n_cols,
                      int32_t col_offset, int k) {
    int c = 0;
    for (; c + CHUNK <= n_cols; c += CHUNK) {
        if (!chunk_reaches(scores + c, best_score[k - 1])) continue;
        for (int j = c; j < c + CHUNK; j++)
            consider(best_score, best_index, k, scores[j], col_offset + j);
    }
    for (; c < n_cols; c++)
        consider(best_score, best_index, k, scores[c], col_offset + c);
}

void tga_cpu_topk_merge(float *best_score, int32_t *best_index, const float *scores, int n_rows, int n_cols,
                        int ld, int32_t col_offset, int k) {
    if (k <= 0 || n_cols <= 0) return;
#pragma omp parallel for schedule(static) if ((double)n_rows * n_cols >= PARALLEL_MIN_SCORES)
    for (int r = 0; r < n_rows; r++) {
        merge_row(best_score + (size_t)r * k, best_index + (size_t)r * k, scores + (size_t)r * ld, n_cols,
                  col_offset, k);
    }
}
