#include "runtime/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

/* Splitmix64 turns (seed, purpose) into a well-mixed 64-bit key. */
static uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

tga_rng_stream tga_rng_stream_make(uint64_t seed, tga_rng_purpose purpose, uint64_t index) {
    uint64_t k = mix64(seed ^ mix64((uint64_t)purpose));
    tga_rng_stream s = {{(uint32_t)k, (uint32_t)(k >> 32)}, index};
    return s;
}

void tga_rng_block(const tga_rng_stream *s, uint64_t counter, uint32_t out[4]) {
    /* counter words: (block counter lo, hi, stream index lo, hi) */
    uint32_t c[4] = {(uint32_t)counter, (uint32_t)(counter >> 32), (uint32_t)s->index,
                     (uint32_t)(s->index >> 32)};
    uint32_t k0 = s->key[0], k1 = s->key[1];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(PHILOX_M0, c[0], &hi0, &lo0);
        mulhilo(PHILOX_M1, c[2], &hi1, &lo1);
        uint32_t n0 = hi1 ^ c[1] ^ k0, n1 = lo1, n2 = hi0 ^ c[3] ^ k1, n3 = lo0;
        c[0] = n0;
        c[1] = n1;
        c[2] = n2;
        c[3] = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c[0];
    out[1] = c[1];
    out[2] = c[2];
    out[3] = c[3];
}

static float u32_to_unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

float tga_rng_uniform(const tga_rng_stream *s, uint64_t i) {
    uint32_t w[4];
    tga_rng_block(s, i / 4, w);
    return u32_to_unit(w[i % 4]);
}

/* Box-Muller on words 0-1 of block j: the radius and the angle of normals 2j (cosine branch) and
 * 2j + 1 (sine branch). */
static void box_muller(const tga_rng_stream *s, uint64_t j, double *r, double *a) {
    uint32_t w[4];
    tga_rng_block(s, j, w);
    double u1 = ((double)(w[0] >> 8) + 0.5) * (1.0 / 16777216.0); /* (0, 1): log is finite */
    double u2 = (double)(w[1] >> 8) * (1.0 / 16777216.0);
    *r = sqrt(-2.0 * log(u1));
    *a = 6.283185307179586 * u2; /* 2 pi */
}

float tga_rng_normal(const tga_rng_stream *s, uint64_t i) {
    double r, a;
    box_muller(s, i / 2, &r, &a);
    return (float)(i % 2 == 0 ? r * cos(a) : r * sin(a));
}

/* tga_rng_normal's values, each Box-Muller pair drawn once for both of its elements. */
void tga_rng_fill_normal(const tga_rng_stream *s, float *x, size_t n, float mean, float std) {
#pragma omp parallel for schedule(static)
    for (size_t j = 0; j < (n + 1) / 2; j++) {
        double r, a;
        box_muller(s, j, &r, &a);
        x[2 * j] = mean + std * (float)(r * cos(a));
        if (2 * j + 1 < n) x[2 * j + 1] = mean + std * (float)(r * sin(a));
    }
}

void tga_rng_fill_uniform(const tga_rng_stream *s, float *x, size_t n, float lo, float hi) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * tga_rng_uniform(s, i);
}
