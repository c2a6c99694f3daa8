/* RoPE: the table against a double-precision formula and against PyTorch (HF's float32
 * computation, run through /usr/bin/python3), the rotation against a double-precision "rotate
 * half" reference, inverse(forward(x)) == x, and the backward (the inverse rotation) against
 * central finite differences of L = sum(rope(x) * G). */
#define _POSIX_C_SOURCE 200809L /* popen */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

#define PYTHON "/usr/bin/python3"

/* For T small the float32 angle t * inv_freq is within a few 1e-7 of the exact one, so the
 * table must match the double formula closely; for long tables only the float rounding of the
 * angle (which HF shares) separates them. */
static void check_table_formula(int head_dim, double theta, int T, double tol) {
    int half = head_dim / 2;
    size_t n = (size_t)T * half * 2;
    float *table = malloc(n * sizeof *table), *ref = malloc(n * sizeof *ref);
    tga_rope_table(table, T, head_dim, theta);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double angle = t / pow(theta, 2.0 * i / head_dim);
            ref[((size_t)t * half + i) * 2] = (float)cos(angle);
            ref[((size_t)t * half + i) * 2 + 1] = (float)sin(angle);
        }
    double err = tu_rel_error(table, ref, n);
    CHECK(err <= tol, "table hd %d theta %g T %d vs double formula: rel err %.3g", head_dim, theta, T, err);
    free(table), free(ref);
}

/* Prints HF's cos and sin (LlamaRotaryEmbedding, float32) as T * hd/2 lines "cos sin". */
static const char *torch_table_script =
    "import sys, torch\n"
    "hd, theta, T = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])\n"
    "inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))\n"
    "t = torch.arange(T, dtype=inv_freq.dtype)\n"
    "emb = torch.cat((torch.outer(t, inv_freq),) * 2, dim=-1)\n"
    "cos, sin = emb.cos(), emb.sin()\n"
    "for p in range(T):\n"
    "    for i in range(hd // 2):\n"
    "        print(cos[p, i].item().hex(), sin[p, i].item().hex())\n";

/* Reads the torch table into `out`; returns 0 if python or torch did not deliver it. */
static int read_torch_table(float *out, int head_dim, double theta, int T) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s -c '%s' %d %.17g %d", PYTHON, torch_table_script, head_dim, theta, T);
    FILE *pipe = popen(cmd, "r");
    if (!pipe) return 0;
    size_t n = (size_t)T * (head_dim / 2) * 2, got = 0;
    char word[64];
    while (got < n && fscanf(pipe, "%63s", word) == 1)
        out[got++] = (float)strtod(word, NULL);
    int status = pclose(pipe);
    return got == n && status == 0;
}

static void check_table_torch(int head_dim, double theta, int T) {
    size_t n = (size_t)T * (head_dim / 2) * 2;
    float *table = malloc(n * sizeof *table), *torch_table = malloc(n * sizeof *torch_table);
    tga_rope_table(table, T, head_dim, theta);
    if (!read_torch_table(torch_table, head_dim, theta, T)) {
        CHECK(0,
              "could not get the RoPE table from PyTorch: `%s -c \"import torch\"` must work "
              "(install Debian's python3-torch)",
              PYTHON);
    } else {
        /* torch's float cos/sin are within 1 ulp, so no entry may be off by more than 2 ulp of 1. */
        double err = tu_rel_error(table, torch_table, n), worst = 0;
        for (size_t i = 0; i < n; i++)
            worst = fmax(worst, fabs((double)table[i] - torch_table[i]));
        CHECK(err <= 1e-6 && worst <= 2.4e-7,
              "table hd %d theta %g T %d vs PyTorch: rel err %.3g, worst %.3g", head_dim, theta, T, err,
              worst);
    }
    free(table), free(torch_table);
}

/* out[i] = x1 cos - x2 sin, out[i + hd/2] = x2 cos + x1 sin at the token's position t. */
static void reference_rope(float *x, const float *table, int B, int T, int heads, int head_dim) {
    int half = head_dim / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < heads; h++) {
                float *v = x + (((size_t)b * T + t) * heads + h) * head_dim;
                for (int i = 0; i < half; i++) {
                    double c = table[((size_t)t * half + i) * 2], s = table[((size_t)t * half + i) * 2 + 1];
                    double x1 = v[i], x2 = v[i + half];
                    v[i] = (float)(x1 * c - x2 * s);
                    v[i + half] = (float)(x2 * c + x1 * s);
                }
            }
}

typedef struct {
    int B, T, heads, head_dim;
    const float *table, *G;
    float *rotated;
} rope_case;

static double loss(const float *x, void *ctx) {
    rope_case *c = ctx;
    size_t n = (size_t)c->B * c->T * c->heads * c->head_dim;
    memcpy(c->rotated, x, n * sizeof *x);
    tga_cpu_rope(c->rotated, c->table, c->B, c->T, c->heads, c->head_dim, 0);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)c->rotated[i] * c->G[i];
    return sum;
}

static void check_rotation(int B, int T, int heads, int head_dim, double theta, uint64_t *rng) {
    size_t n = (size_t)B * T * heads * head_dim;
    int max_T = T + 3; /* the model's table is longer than most batches */
    float *table = malloc((size_t)max_T * head_dim * sizeof *table);
    tga_rope_table(table, max_T, head_dim, theta);
    float *x = tu_alloc_uniform(n, -1, 1, rng), *y = tu_alloc_copy(x, n), *ref = tu_alloc_copy(x, n);

    tga_cpu_rope(y, table, B, T, heads, head_dim, 0);
    reference_rope(ref, table, B, T, heads, head_dim);
    double err = tu_rel_error(y, ref, n);
    CHECK(err <= 1e-5, "rope B%d T%d H%d hd%d vs reference: rel err %.3g", B, T, heads, head_dim, err);
    CHECK(T < 2 || tu_rel_error(y, x, n) > 1e-3, "rope B%d T%d H%d hd%d left x unrotated", B, T, heads,
          head_dim);

    tga_cpu_rope(y, table, B, T, heads, head_dim, 1);
    err = tu_rel_error(y, x, n);
    CHECK(err <= 1e-6, "inverse(forward(x)) B%d T%d H%d hd%d: rel err %.3g", B, T, heads, head_dim, err);

    /* dL/dx = R^T G, which is the inverse rotation of G. */
    float *G = tu_alloc_uniform(n, -1, 1, rng), *grad = tu_alloc_copy(G, n),
          *scratch = malloc(n * sizeof *scratch);
    tga_cpu_rope(grad, table, B, T, heads, head_dim, 1);
    rope_case c = {B, T, heads, head_dim, table, G, scratch};
    err = tu_fd_check(loss, &c, x, grad, n, 16, 1e-2f, 1e-2, rng);
    CHECK(err <= 1e-3, "finite differences B%d T%d H%d hd%d: %.3g", B, T, heads, head_dim, err);

    free(table), free(x), free(y), free(ref), free(G), free(grad), free(scratch);
}

int main(void) {
    uint64_t rng = 0x20BE;
    check_table_formula(32, 10000.0, 16, 1e-6);
    check_table_formula(128, 1e6, 16, 1e-6);
    check_table_formula(128, 10000.0, 4096, 1e-4);
    check_table_torch(32, 10000.0, 16);
    check_table_torch(64, 1e6, 16);
    check_rotation(2, 7, 3, 16, 10000.0, &rng);
    check_rotation(3, 5, 2, 160, 500000.0, &rng);
    check_rotation(1, 4, 1, 2, 10000.0, &rng);
    return tu_finish("test_rope");
}
