/* Rotary position embedding, HF "rotate half": element i of a head pairs with element i + hd/2,
 * both rotated by the angle t * inv_freq[i] of the token's position t. The rotation is
 * orthogonal, so the backward pass is the same rotation by the negative angle. */
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"

/* Pairs handled per pass: cos/sin are unpacked into two small arrays once per token and pass,
 * then applied to every head with contiguous loads. */
#define ROPE_CHUNK 64

/* Follows HF's float32 arithmetic: inv_freq = 1 / theta ** (arange(0, hd, 2).float() / hd) and
 * angle = float(t) * inv_freq (torch.outer). pow, cos and sin are evaluated in double and rounded
 * once to float; torch's float cos/sin (1 ulp) differ from them in the last bit for about 5% of
 * the entries (test_rope compares the two tables). */
void tga_rope_table(float *cos_sin, int max_T, int head_dim, double theta) {
    int half = head_dim / 2;
    float base = (float)theta;
    for (int i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)head_dim;
        float inv_freq = 1.0f / (float)pow((double)base, (double)exponent);
        for (int t = 0; t < max_T; t++) {
            float angle = (float)t * inv_freq;
            float *cs = cos_sin + ((size_t)t * half + i) * 2;
            cs[0] = (float)cos((double)angle);
            cs[1] = (float)sin((double)angle);
        }
    }
}

/* x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin for the pairs [i0, i0 + width) of every head. */
static void rotate_chunk(float *token, const float *cs, int heads, int head_dim, int i0, int width,
                         float sign) {
    int half = head_dim / 2;
    float c[ROPE_CHUNK], s[ROPE_CHUNK];
    for (int i = 0; i < width; i++) {
        c[i] = cs[(i0 + i) * 2];
        s[i] = sign * cs[(i0 + i) * 2 + 1];
    }
    for (int h = 0; h < heads; h++) {
        float *x1 = token + (size_t)h * head_dim + i0;
        float *x2 = x1 + half;
        for (int i = 0; i < width; i++) {
            float a = x1[i], b = x2[i];
            x1[i] = a * c[i] - b * s[i];
            x2[i] = b * c[i] + a * s[i];
        }
    }
}

void tga_cpu_rope(float *x, const float *cos_sin, int B, int T, int heads, int head_dim, int inverse) {
    int half = head_dim / 2;
    float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        int t = bt % T;
        float *token = x + (size_t)bt * heads * head_dim;
        const float *cs = cos_sin + (size_t)t * half * 2;
        for (int i0 = 0; i0 < half; i0 += ROPE_CHUNK) {
            int width = half - i0 < ROPE_CHUNK ? half - i0 : ROPE_CHUNK;
            rotate_chunk(token, cs, heads, head_dim, i0, width, sign);
        }
    }
}
