/* Elementwise helpers. sum_squares feeds the gradient norm, which must come out the same on
 * every run: it sums fixed-size blocks and combines the block sums in index order, so neither
 * the thread count nor the schedule can change the result. to_bf16/from_bf16 convert between the
 * fp32 masters and the bf16 copies of model.dtype: bf16 (kernels/bf16.h). */
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768
/* Elements per block sum, and blocks per round of the ordered combination (a stack array). */
#define SUMSQ_BLOCK 16384
#define SUMSQ_ROUND 256
#define SUMSQ_LANES 8

void tga_cpu_add_inplace(float *y, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

void tga_cpu_scale_inplace(float *x, float alpha, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        x[i] *= alpha;
}

/* Sum of squares in double over interleaved lanes: a fixed order the compiler can vectorise. */
static double block_sum_squares(const float *x, size_t n) {
    double lane[SUMSQ_LANES] = {0};
    size_t i = 0;
    for (; i + SUMSQ_LANES <= n; i += SUMSQ_LANES)
        for (int l = 0; l < SUMSQ_LANES; l++)
            lane[l] += (double)x[i + l] * x[i + l];
    for (; i < n; i++)
        lane[0] += (double)x[i] * x[i];
    double sum = 0;
    for (int l = 0; l < SUMSQ_LANES; l++)
        sum += lane[l];
    return sum;
}

double tga_cpu_sum_squares(const float *x, size_t n) {
    size_t n_blocks = (n + SUMSQ_BLOCK - 1) / SUMSQ_BLOCK;
    double partial[SUMSQ_ROUND];
    double total = 0;
#pragma omp parallel if (n_blocks > 1)
    for (size_t first = 0; first < n_blocks; first += SUMSQ_ROUND) {
        size_t count = n_blocks - first < SUMSQ_ROUND ? n_blocks - first : SUMSQ_ROUND;
#pragma omp for schedule(static)
        for (size_t k = 0; k < count; k++) {
            size_t start = (first + k) * SUMSQ_BLOCK;
            size_t len = n - start < SUMSQ_BLOCK ? n - start : SUMSQ_BLOCK;
            partial[k] = block_sum_squares(x + start, len);
        }
        /* The barrier at the end of `single` also keeps the next round from overwriting partial. */
#pragma omp single
        for (size_t k = 0; k < count; k++)
            total += partial[k];
    }
    return total;
}

int tga_cpu_all_finite(const float *x, size_t n) {
    int non_finite = 0;
#pragma omp parallel for schedule(static) reduction(| : non_finite) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        non_finite |= !isfinite(x[i]);
    return !non_finite;
}

void tga_cpu_to_bf16(tga_bf16 *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = tga_bf16_from_float(src[i]);
}

void tga_cpu_from_bf16(float *dst, const tga_bf16 *src, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = tga_bf16_to_float(src[i]);
}
