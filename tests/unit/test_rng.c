/* Philox4x32-10 known-answer vectors (Random123's kat_vectors) and the key properties we rely on:
 * values are pure functions of (seed, purpose, index, element), the normals look normal, and the fills
 * give the per-element values. */
#include "runtime/rng.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

static void check_kat(uint32_t k0, uint32_t k1, const uint32_t ctr[4], const uint32_t want[4]) {
    tga_rng_stream s = {{k0, k1}, (uint64_t)ctr[2] | ((uint64_t)ctr[3] << 32)};
    uint32_t got[4];
    tga_rng_block(&s, (uint64_t)ctr[0] | ((uint64_t)ctr[1] << 32), got);
    for (int i = 0; i < 4; i++)
        CHECK(got[i] == want[i], "philox kat word %d: got %08x want %08x", i, got[i], want[i]);
}

int main(void) {
    const uint32_t zero[4] = {0, 0, 0, 0}, ones[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    const uint32_t pi_ctr[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
    check_kat(0, 0, zero, (const uint32_t[4]){0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
    check_kat(0xffffffffu, 0xffffffffu, ones, (const uint32_t[4]){0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
    check_kat(0xa4093822u, 0x299f31d0u, pi_ctr, (const uint32_t[4]){0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});

    /* same key -> same value, regardless of what else was drawn; different index -> different */
    tga_rng_stream a = tga_rng_stream_make(42, TGA_RNG_DATA, 7), b = tga_rng_stream_make(42, TGA_RNG_DATA, 7);
    tga_rng_stream c = tga_rng_stream_make(42, TGA_RNG_DATA, 8), d = tga_rng_stream_make(42, TGA_RNG_INIT, 7);
    CHECK(tga_rng_normal(&a, 12345) == tga_rng_normal(&b, 12345), "same key must give the same value");
    CHECK(tga_rng_uniform(&a, 3) != tga_rng_uniform(&c, 3), "index must change the stream");
    CHECK(tga_rng_uniform(&a, 3) != tga_rng_uniform(&d, 3), "purpose must change the stream");

    /* moments of 200k normals and uniforms */
    double s1 = 0, s2 = 0, u1 = 0, umin = 1, umax = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = tga_rng_normal(&a, (uint64_t)i), u = tga_rng_uniform(&a, (uint64_t)i);
        s1 += x;
        s2 += x * x;
        u1 += u;
        umin = fmin(umin, u);
        umax = fmax(umax, u);
    }
    double mean = s1 / n, var = s2 / n - mean * mean;
    CHECK(fabs(mean) < 0.01, "normal mean %g", mean);
    CHECK(fabs(var - 1) < 0.02, "normal variance %g", var);
    CHECK(fabs(u1 / n - 0.5) < 0.005 && umin >= 0 && umax < 1, "uniform mean %g range [%g, %g]", u1 / n, umin, umax);

    /* the fills give the per-element values (in parallel; the normal fill draws each pair once, an
     * odd count leaves half a pair), bit for bit */
    for (size_t count = 99999; count <= 100000; count++) {
        float *x = malloc(count * sizeof *x), *y = malloc(count * sizeof *y);
        tga_rng_fill_normal(&d, x, count, 0.25f, 0.02f);
        tga_rng_fill_uniform(&d, y, count, -3.0f, 5.0f);
        size_t bad = 0;
        for (size_t i = 0; i < count; i++) {
            float want_x = 0.25f + 0.02f * tga_rng_normal(&d, i), want_y = -3.0f + 8.0f * tga_rng_uniform(&d, i);
            bad += memcmp(&x[i], &want_x, sizeof want_x) != 0 || memcmp(&y[i], &want_y, sizeof want_y) != 0;
        }
        CHECK(bad == 0, "fills of %zu values: %zu differ from tga_rng_normal/uniform", count, bad);
        free(x), free(y);
    }
    return tu_finish("test_rng");
}
