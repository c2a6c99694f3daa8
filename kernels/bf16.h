/* 16-bit floats. bfloat16 storage: the top 16 bits of an IEEE float32 (8-bit exponent, 7-bit mantissa). Weights
 * stored this way (model.dtype: bf16) take half the memory and feed bf16 tensor-core GEMMs.
 *
 * Rounding is to nearest, ties to even, as torch's .to(torch.bfloat16), CUDA's
 * __float2bfloat16_rn and PTX cvt.rn.bf16.f32 do; a NaN stays a (quiet) NaN and infinities stay
 * infinite. Widening is exact. Header-only so that the CPU kernels, the host code and the tests
 * share one definition. */
#ifndef TGA_KERNELS_BF16_H
#define TGA_KERNELS_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef uint16_t tga_bf16;

/* Branch-free (a mask selects the NaN case), so that loops over it vectorise. */
static inline tga_bf16 tga_bf16_from_float(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = (u >> 16) | 0x0040u; /* NaN: keep it a (quiet) NaN */
    const uint32_t nan_mask = 0u - (uint32_t)((u & 0x7fffffffu) > 0x7f800000u);
    return (tga_bf16)((rounded & ~nan_mask) | (quiet_nan & nan_mask));
}

static inline float tga_bf16_to_float(tga_bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* x rounded to the nearest bf16 value, as a float. */
static inline float tga_bf16_round(float x) { return tga_bf16_to_float(tga_bf16_from_float(x)); }

/* Arrays of n values in host memory: rounded (narrowed) and widened. */
static inline void tga_bf16_narrow(tga_bf16 *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = tga_bf16_from_float(src[i]);
}

static inline void tga_bf16_widen(float *dst, const tga_bf16 *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = tga_bf16_to_float(src[i]);
}

/* IEEE half (float16, as .npy files and Vicuna's weights store it) widened, exactly: subnormals,
 * infinities and NaN payloads included. */
static inline float tga_f16_to_float(uint16_t half) {
    uint32_t exponent = (half >> 10) & 0x1fu, mantissa = half & 0x3ffu, bits;
    if (exponent == 0) { /* zero and subnormals: mantissa * 2^-24, exact in float */
        float magnitude = (float)mantissa * 0x1p-24f;
        return (half & 0x8000u) ? -magnitude : magnitude;
    }
    if (exponent == 31)
        bits = 0x7f800000u | mantissa << 13; /* inf and NaN, payload kept */
    else
        bits = (exponent + 112) << 23 | mantissa << 13; /* rebias 15 -> 127 */
    bits |= (uint32_t)(half & 0x8000u) << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#endif
