/* Counter-based random numbers (Philox4x32-10, Salmon et al. 2011). A stream is keyed by
 * (seed, purpose, index) -- index being a global sample index, a step or a tensor id, never a
 * rank -- so every value is a pure function of its key and results do not depend on how work is
 * split across ranks or threads, or on where a run was resumed. */
#ifndef TGA_RUNTIME_RNG_H
#define TGA_RUNTIME_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TGA_RNG_INIT = 1,     /* parameter initialisation; index = parameter number */
    TGA_RNG_SHUFFLE = 2,  /* data order; index = epoch */
    TGA_RNG_DATA = 3,     /* per-sample augmentation / synthetic data; index = global sample */
    TGA_RNG_DROPOUT = 4,  /* reserved; index = step */
    TGA_RNG_TEST = 100,
} tga_rng_purpose;

typedef struct {
    uint32_t key[2];
    uint64_t index;
} tga_rng_stream;

tga_rng_stream tga_rng_stream_make(uint64_t seed, tga_rng_purpose purpose, uint64_t index);

/* The 4 32-bit words of block `counter` of a stream. */
void tga_rng_block(const tga_rng_stream *s, uint64_t counter, uint32_t out[4]);

/* Element i of the stream as a uniform float in [0, 1) (24 random bits) / a standard normal
 * (Box-Muller on the block holding element i, so elements are independent of how many are
 * drawn before them). */
float tga_rng_uniform(const tga_rng_stream *s, uint64_t i);
float tga_rng_normal(const tga_rng_stream *s, uint64_t i);

/* Fill x[0..n) with normal(0, std) values: element i is tga_rng_normal(s, i) * std. */
void tga_rng_fill_normal(const tga_rng_stream *s, float *x, size_t n, float mean, float std);
void tga_rng_fill_uniform(const tga_rng_stream *s, float *x, size_t n, float lo, float hi);

#endif
