/* Elementwise helpers: add / scale against direct loops, sum_squares against a double sum and bit
 * for bit the same with 1 and with several threads (also across several rounds of its block
 * combination), all_finite on NaN and infinities at the ends and in the middle. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

static void check_add_scale(size_t n, uint64_t *rng) {
    float *y = tu_alloc_uniform(n, -1, 1, rng), *x = tu_alloc_uniform(n, -1, 1, rng);
    float *ref = malloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++)
        ref[i] = y[i] + x[i];
    tga_cpu_add_inplace(y, x, n);
    double err = tu_rel_error(y, ref, n);
    CHECK(err <= 1e-7, "add_inplace n %zu: rel err %.3g", n, err);
    for (size_t i = 0; i < n; i++)
        ref[i] = (float)((double)y[i] * -0.375);
    tga_cpu_scale_inplace(y, -0.375f, n);
    err = tu_rel_error(y, ref, n);
    CHECK(err <= 1e-7, "scale_inplace n %zu: rel err %.3g", n, err);
    free(y), free(x), free(ref);
}

static void check_sum_squares(size_t n, uint64_t *rng) {
    float *x = tu_alloc_uniform(n, -3, 3, rng);
    double ref = 0;
    for (size_t i = 0; i < n; i++)
        ref += (double)x[i] * x[i];
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    double one = tga_cpu_sum_squares(x, n);
    omp_set_num_threads(3);
    double many = tga_cpu_sum_squares(x, n);
    omp_set_num_threads(saved);
    double err = ref == 0 ? fabs(one) : fabs(one - ref) / ref;
    CHECK(err <= 1e-12, "sum_squares n %zu: %.17g vs %.17g (rel err %.3g)", n, one, ref, err);
    CHECK(one == many, "sum_squares n %zu: %.17g with 1 thread, %.17g with 3", n, one, many);
    free(x);
}

static void check_all_finite(size_t n, uint64_t *rng) {
    float *x = tu_alloc_uniform(n, -1e30f, 1e30f, rng);
    CHECK(tga_cpu_all_finite(x, n) == 1, "all_finite n %zu: finite data reported non-finite", n);
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    const size_t where[3] = {0, n / 2, n - 1};
    for (int b = 0; b < 3; b++)
        for (int w = 0; w < 3; w++) {
            float saved = x[where[w]];
            x[where[w]] = bad[b];
            CHECK(tga_cpu_all_finite(x, n) == 0, "all_finite n %zu missed %g at %zu", n, bad[b], where[w]);
            x[where[w]] = saved;
        }
    free(x);
}

int main(void) {
    uint64_t rng = 0xE1E5;
    check_add_scale(1, &rng);
    check_add_scale(1001, &rng);
    check_add_scale(200003, &rng);
    check_sum_squares(0, &rng);
    check_sum_squares(7, &rng);
    check_sum_squares(100003, &rng);
    check_sum_squares(5000017, &rng); /* more than one round of block sums */
    check_all_finite(1, &rng);
    check_all_finite(1000, &rng);
    check_all_finite(300001, &rng);
    CHECK(tga_cpu_all_finite(NULL, 0) == 1, "all_finite of nothing must be 1");
    return tu_finish("test_elementwise");
}
