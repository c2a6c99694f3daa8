/* Embedding lookup: forward against a direct gather (placeholder rows zero), backward against a
 * double-precision scatter-add with repeated ids, central finite differences of L = sum(out * G),
 * and a backward that is bit for bit the same with 1 and with several threads. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

typedef struct {
    int N, D;
    const int *ids;
    float *table; /* perturbed in place by the finite differences */
    const float *G;
    float *out;
} embedding_case;

static double loss(const float *x, void *ctx) {
    (void)x; /* x is the table, perturbed in place */
    embedding_case *c = ctx;
    tga_cpu_embedding_forward(c->out, c->ids, c->table, c->N, c->D);
    double sum = 0;
    for (size_t i = 0; i < (size_t)c->N * c->D; i++)
        sum += (double)c->out[i] * c->G[i];
    return sum;
}

/* Ids drawn from a small vocabulary so that rows repeat; about one in five is a placeholder. */
static int *random_ids(int N, int V, uint64_t *rng) {
    int *ids = malloc((size_t)N * sizeof *ids);
    for (int n = 0; n < N; n++)
        ids[n] = tu_next(rng) % 5 == 0 ? -1 : (int)(tu_next(rng) % (uint64_t)V);
    return ids;
}

static void check_forward(embedding_case *c, int V, uint64_t *rng) {
    int N = c->N, D = c->D;
    tu_fill_uniform(c->out, (size_t)N * D, 5, 6, rng); /* garbage: placeholders must be zeroed */
    tga_cpu_embedding_forward(c->out, c->ids, c->table, N, D);
    int gather_ok = 1;
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            float expect = c->ids[n] < 0 ? 0.0f : c->table[(size_t)c->ids[n] * D + d];
            gather_ok &= c->out[(size_t)n * D + d] == expect;
        }
    CHECK(gather_ok, "forward %dx%d (V %d) differs from the gather", N, D, V);
}

/* dtable starts from prior values: the backward accumulates. */
static void check_backward(embedding_case *c, int V, uint64_t *rng) {
    int N = c->N, D = c->D;
    size_t n_table = (size_t)V * D;
    float *dtable0 = tu_alloc_uniform(n_table, -1, 1, rng), *dtable = tu_alloc_copy(dtable0, n_table);
    double *ref = calloc(n_table, sizeof *ref);
    for (size_t i = 0; i < n_table; i++)
        ref[i] = dtable0[i];
    for (int n = 0; n < N; n++)
        if (c->ids[n] >= 0)
            for (int d = 0; d < D; d++)
                ref[(size_t)c->ids[n] * D + d] += c->G[(size_t)n * D + d];
    float *ref_f = malloc(n_table * sizeof *ref_f);
    for (size_t i = 0; i < n_table; i++)
        ref_f[i] = (float)ref[i];
    tga_cpu_embedding_backward(dtable, c->G, c->ids, N, D, V);
    double err = tu_rel_error(dtable, ref_f, n_table);
    CHECK(err <= 1e-5, "backward %dx%d (V %d): rel err %.3g", N, D, V, err);
    free(dtable0), free(dtable), free(ref), free(ref_f);
}

static void check_finite_differences(embedding_case *c, int V, uint64_t *rng) {
    size_t n_table = (size_t)V * c->D;
    float *dtable = calloc(n_table, sizeof *dtable);
    tga_cpu_embedding_backward(dtable, c->G, c->ids, c->N, c->D, V);
    double err = tu_fd_check(loss, c, c->table, dtable, n_table, 16, 1e-2f, 1e-2, rng);
    CHECK(err <= 1e-3, "finite differences %dx%d: %.3g", c->N, c->D, err);
    free(dtable);
}

static void check_shape(int N, int D, int V, uint64_t *rng) {
    float *table = tu_alloc_uniform((size_t)V * D, -1, 1, rng);
    float *G = tu_alloc_uniform((size_t)N * D, -1, 1, rng);
    float *out = malloc((size_t)N * D * sizeof *out);
    int *ids = random_ids(N, V, rng);
    embedding_case c = {N, D, ids, table, G, out};
    check_forward(&c, V, rng);
    check_backward(&c, V, rng);
    check_finite_differences(&c, V, rng);
    free(ids), free(table), free(G), free(out);
}

static void check_backward_thread_independent(uint64_t *rng) {
    int N = 500, D = 1300, V = 7;
    int *ids = random_ids(N, V, rng);
    float *G = tu_alloc_uniform((size_t)N * D, -1, 1, rng);
    float *one = calloc((size_t)V * D, sizeof *one), *many = calloc((size_t)V * D, sizeof *many);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    tga_cpu_embedding_backward(one, G, ids, N, D, V);
    omp_set_num_threads(3);
    tga_cpu_embedding_backward(many, G, ids, N, D, V);
    omp_set_num_threads(saved);
    CHECK(memcmp(one, many, (size_t)V * D * sizeof *one) == 0, "backward differs between 1 and 3 threads");
    free(ids), free(G), free(one), free(many);
}

int main(void) {
    uint64_t rng = 0xE3BED;
    check_shape(40, 16, 9, &rng);
    check_shape(33, 1100, 4, &rng); /* several 512-column tasks */
    check_shape(7, 1, 3, &rng);
    check_backward_thread_independent(&rng);
    return tu_finish("test_embedding");
}
