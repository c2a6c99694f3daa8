/* Mean-pooling of row segments (image spans, retrieved-text spans) into one vector per output.
 *
 * Work is split over blocks of columns (and, in the forward, outputs): every output element is
 * summed by one thread in segment order, so results do not depend on the thread count, and two
 * segments that share an output or overlap never write the same element concurrently. */
#include "kernels/cpu/cpu_kernels.h"

#include <string.h>

enum { POOL_COLUMN_BLOCK = 256 };

static int min_int(int a, int b) { return a < b ? a : b; }

/* out[out_index, col0:col1] = mean over the output's segments, summed in double (an image
 * span has 576 rows). */
static void segment_mean_block(float *out, const float *in, const tga_segments *seg, int out_index, int D,
                               int col0, int col1) {
    double sum[POOL_COLUMN_BLOCK] = {0};
    for (int s = 0; s < seg->n_segments; s++) {
        if (seg->out_index[s] != out_index) continue;
        for (int row = seg->row_start[s]; row < seg->row_start[s] + seg->row_count[s]; row++) {
            const float *x = in + (size_t)row * D;
            for (int col = col0; col < col1; col++) sum[col - col0] += x[col];
        }
    }
    double inv_rows = 1.0 / seg->out_rows[out_index];
    float *y = out + (size_t)out_index * D;
    for (int col = col0; col < col1; col++) y[col] = (float)(sum[col - col0] * inv_rows);
}

void tga_cpu_segment_mean_forward(float *out, const float *in, const tga_segments *seg, int D) {
    int n_blocks = (D + POOL_COLUMN_BLOCK - 1) / POOL_COLUMN_BLOCK;
    memset(out, 0, (size_t)seg->n_out * D * sizeof *out);
#pragma omp parallel for collapse(2) schedule(static)
    for (int j = 0; j < seg->n_out; j++) {
        for (int block = 0; block < n_blocks; block++) {
            if (seg->out_rows[j] == 0) continue;
            int col0 = block * POOL_COLUMN_BLOCK;
            segment_mean_block(out, in, seg, j, D, col0, min_int(col0 + POOL_COLUMN_BLOCK, D));
        }
    }
}

void tga_cpu_segment_mean_backward(float *din, const float *dout, const tga_segments *seg, int D) {
    int n_blocks = (D + POOL_COLUMN_BLOCK - 1) / POOL_COLUMN_BLOCK;
#pragma omp parallel for schedule(static)
    for (int block = 0; block < n_blocks; block++) {
        int col0 = block * POOL_COLUMN_BLOCK;
        int col1 = min_int(col0 + POOL_COLUMN_BLOCK, D);
        for (int s = 0; s < seg->n_segments; s++) {
            int j = seg->out_index[s];
            if (seg->out_rows[j] == 0) continue;
            float inv_rows = 1.0f / (float)seg->out_rows[j];
            const float *g = dout + (size_t)j * D;
            for (int row = seg->row_start[s]; row < seg->row_start[s] + seg->row_count[s]; row++) {
                float *dx = din + (size_t)row * D;
                for (int col = col0; col < col1; col++) dx[col] += g[col] * inv_rows;
            }
        }
    }
}
