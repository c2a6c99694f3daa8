/* e^x that compilers can vectorise (libm's expf is a call and leaves a loop scalar), shared by the
 * SwiGLU and attention kernels: Cody-Waite reduction x = n ln2 + r (|r| <= ln2 / 2), Cephes' expf
 * polynomial for e^r (about 1 ulp), and 2^n assembled in the exponent bits. n is rounded with the
 * 1.5 * 2^23 trick and read back from the sum's low mantissa bits, so there is no float-to-int
 * conversion. Branch-free.
 *
 * Valid for -104 <= x <= 89, which each caller ensures by clamping first (with its own
 * contract for what lies outside): for n < -126 the result is exactly 0 (no denormals), and
 * from x = 88.38 on n = 128 writes the exponent of +inf. */
#ifndef TGA_KERNELS_CPU_EXP_POLY_H
#define TGA_KERNELS_CPU_EXP_POLY_H

#include <stdint.h>
#include <string.h>

static inline __attribute__((always_inline)) float tga_exp_poly(float x) {
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float shifted = x * 1.44269504088896341f + round_magic;
    float n = shifted - round_magic;
    float r = x - n * 0.693359375f - n * -2.12194440e-4f; /* ln2 split in two for exactness */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    /* the low mantissa bits of `shifted` hold n + 0x400000 */
    uint32_t shifted_bits;
    memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    int32_t biased_exponent = (int32_t)(shifted_bits - 0x4B400000u) + 127;
    biased_exponent = biased_exponent > 0 ? biased_exponent : 0;
    uint32_t scale_bits = (uint32_t)biased_exponent << 23;
    float two_to_n;
    memcpy(&two_to_n, &scale_bits, sizeof two_to_n);
    return p * two_to_n;
}

#endif
