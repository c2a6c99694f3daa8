/* AdamW exactly as torch.optim.AdamW (torch 1.13, _single_tensor_adamw, amsgrad off): the same
 * float32 operations in the same order, with the scalar coefficients computed in double as
 * Python computes them and rounded to float where torch hands them to a float kernel.
 *
 * torch's vectorised add_(alpha=) and addcmul_ kernels fuse their final multiply-add (its x86
 * builds use FMA), so the moment updates are written as explicit fused multiply-adds. Every
 * step is then a correctly rounded IEEE operation, and the portable loop and the AVX-512 loop
 * give the same bits. adamw_bf16 also writes the bf16 copy of the updated parameters (model.dtype
 * bf16) in the same pass over each chunk. */
#include <immintrin.h>
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768
#define AVX512_FLOATS 16
/* Elements per parallel task, a multiple of the vector width. */
#define ADAMW_CHUNK 8192

typedef struct {
    float decay; /* param.mul_(1 - lr * wd) */
    float beta1, beta2;
    float one_minus_beta1; /* exp_avg.add_(grad, alpha=1 - beta1) */
    float one_minus_beta2; /* exp_avg_sq.addcmul_(grad, grad, value=1 - beta2) */
    float bias_correction2_sqrt;
    float eps;
    float neg_step_size; /* param.addcdiv_(exp_avg, denom, value=-step_size) */
} adamw_coefs;

/* One element of the portable path. fmaf is the hardware
 * instruction where the CPU has FMA (glibc picks it at load time). The kernels are built for
 * baseline x86-64, which has no FMA, so -ffp-contract cannot fuse p + step here; torch rounds
 * p first (test_adamw checks the bits in both paths). */
static inline void update_one(float *param, const float *grad, float *m, float *v, size_t i, adamw_coefs c) {
    float g = grad[i];
    float p = param[i] * c.decay;
    float m_i = fmaf(c.one_minus_beta1, g, m[i] * c.beta1);
    float v_i = fmaf(c.one_minus_beta2 * g, g, v[i] * c.beta2);
    float denom = sqrtf(v_i) / c.bias_correction2_sqrt + c.eps;
    param[i] = p + c.neg_step_size * m_i / denom;
    m[i] = m_i;
    v[i] = v_i;
}

static void update_range_portable(float *param, const float *grad, float *m, float *v, size_t begin,
                                  size_t end, const adamw_coefs *c) {
    /* A copy the stores below cannot alias, so the coefficients stay in registers. */
    const adamw_coefs local = *c;
    for (size_t i = begin; i < end; i++)
        update_one(param, grad, m, v, i, local);
}

/* The same operations as update_one, sixteen lanes at a time; the tail runs masked rather than
 * through update_one, where inlining into this AVX-512 function would allow FMA contraction. */
__attribute__((target("avx512f"))) static void update_range_avx512(float *param, const float *grad, float *m,
                                                                   float *v, size_t begin, size_t end,
                                                                   const adamw_coefs *c) {
    const __m512 decay = _mm512_set1_ps(c->decay), beta1 = _mm512_set1_ps(c->beta1);
    const __m512 beta2 = _mm512_set1_ps(c->beta2), one_minus_beta1 = _mm512_set1_ps(c->one_minus_beta1);
    const __m512 one_minus_beta2 = _mm512_set1_ps(c->one_minus_beta2);
    const __m512 bc2_sqrt = _mm512_set1_ps(c->bias_correction2_sqrt), eps = _mm512_set1_ps(c->eps);
    const __m512 neg_step_size = _mm512_set1_ps(c->neg_step_size);
    for (size_t i = begin; i < end; i += AVX512_FLOATS) {
        __mmask16 lanes = end - i >= AVX512_FLOATS ? 0xFFFF : (__mmask16)((1u << (end - i)) - 1);
        __m512 g = _mm512_maskz_loadu_ps(lanes, grad + i);
        /* torch rounds param * decay before the final add (param.mul_ is its own kernel); the
         * explicitly rounded multiply keeps -ffp-contract from fusing the two. */
        __m512 p =
            _mm512_mul_round_ps(_mm512_maskz_loadu_ps(lanes, param + i), decay, _MM_FROUND_CUR_DIRECTION);
        __m512 m_old = _mm512_maskz_loadu_ps(lanes, m + i), v_old = _mm512_maskz_loadu_ps(lanes, v + i);
        __m512 m_i = _mm512_fmadd_ps(one_minus_beta1, g, _mm512_mul_ps(m_old, beta1));
        __m512 v_i = _mm512_fmadd_ps(_mm512_mul_ps(one_minus_beta2, g), g, _mm512_mul_ps(v_old, beta2));
        __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(v_i), bc2_sqrt), eps);
        __m512 step = _mm512_div_ps(_mm512_mul_ps(neg_step_size, m_i), denom);
        _mm512_mask_storeu_ps(param + i, lanes, _mm512_add_ps(p, step));
        _mm512_mask_storeu_ps(m + i, lanes, m_i);
        _mm512_mask_storeu_ps(v + i, lanes, v_i);
    }
}

/* The update, and with param_bf16 the bf16 copy of each chunk while it is still in cache. */
static void adamw_with_copy(float *param, tga_bf16 *param_bf16, const float *grad, float *m, float *v, size_t n,
                            float lr, float beta1, float beta2, float eps, float weight_decay, int step) {
    const double bias_correction1 = 1.0 - pow(beta1, step);
    const double bias_correction2 = 1.0 - pow(beta2, step);
    const adamw_coefs c = {
        .decay = (float)(1.0 - (double)lr * weight_decay),
        .beta1 = beta1,
        .beta2 = beta2,
        .one_minus_beta1 = (float)(1.0 - (double)beta1),
        .one_minus_beta2 = (float)(1.0 - (double)beta2),
        .bias_correction2_sqrt = (float)sqrt(bias_correction2),
        .eps = eps,
        .neg_step_size = (float)(-((double)lr / bias_correction1)),
    };
    const int use_avx512 = tga_cpu_has_avx512();
    size_t n_chunks = (n + ADAMW_CHUNK - 1) / ADAMW_CHUNK;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t chunk = 0; chunk < n_chunks; chunk++) {
        size_t begin = chunk * ADAMW_CHUNK, end = n - begin < ADAMW_CHUNK ? n : begin + ADAMW_CHUNK;
        if (use_avx512)
            update_range_avx512(param, grad, m, v, begin, end, &c);
        else
            update_range_portable(param, grad, m, v, begin, end, &c);
        if (param_bf16) tga_bf16_narrow(param_bf16 + begin, param + begin, end - begin);
    }
}

void tga_cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, int step) {
    adamw_with_copy(param, NULL, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
}

void tga_cpu_adamw_bf16(float *param, tga_bf16 *param_bf16, const float *grad, float *m, float *v, size_t n,
                        float lr, float beta1, float beta2, float eps, float weight_decay, int step) {
    adamw_with_copy(param, param_bf16, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
}
