/* Token embedding lookup. Rows with a negative id are image placeholders: the model writes the
 * projected image features there, so the lookup leaves them zero and they send no gradient.
 *
 * The backward is a scatter-add in which several rows may hit the same table row. Instead of
 * atomics, threads split the embedding dimension: each owns a slice of columns and walks all
 * rows in order, so every table element receives its additions in row order whatever the
 * thread count. */
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

/* Columns per backward task: 2 KiB slices of each row, long enough runs for the prefetcher
 * (see linear.c's bias gradient), and 8 tasks at a 4096-wide embedding. */
#define EMBED_GRAD_COLS 512

void tga_cpu_embedding_forward_bf16(float *out, const int *ids, const tga_bf16 *table, int N, int D) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *row = out + (size_t)n * D;
        if (ids[n] < 0) {
            memset(row, 0, (size_t)D * sizeof *row);
            continue;
        }
        tga_bf16_widen(row, table + (size_t)ids[n] * D, (size_t)D);
    }
}

void tga_cpu_embedding_forward(float *out, const int *ids, const float *table, int N, int D) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *row = out + (size_t)n * D;
        if (ids[n] < 0)
            memset(row, 0, (size_t)D * sizeof *row);
        else
            memcpy(row, table + (size_t)ids[n] * D, (size_t)D * sizeof *row);
    }
}

void tga_cpu_embedding_backward(float *dtable, const float *dout, const int *ids, int N, int D, int V) {
    int n_blocks = (D + EMBED_GRAD_COLS - 1) / EMBED_GRAD_COLS;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        int j0 = blk * EMBED_GRAD_COLS;
        int width = D - j0 < EMBED_GRAD_COLS ? D - j0 : EMBED_GRAD_COLS;
        for (int n = 0; n < N; n++) {
            if (ids[n] < 0) continue;
            float *dst = dtable + (size_t)ids[n] * D + j0;
            const float *src = dout + (size_t)n * D + j0;
            for (int j = 0; j < width; j++)
                dst[j] += src[j];
        }
    }
}
