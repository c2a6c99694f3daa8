/* Pointwise activations: SwiGLU (Llama MLP, silu(gate) * up) and exact-erf GELU (the projector's
 * nn.GELU()). Formulas and their operation order follow torch's CPU kernels.
 *
 * SwiGLU runs over every MLP activation of the decoder, so it has an AVX-512 build of the same
 * loop with an exp the compiler can vectorise (libm's expf is a call and would leave it
 * scalar). GELU runs only in the projector and keeps libm's erff and expf; there the bias joins it
 * (bias_gelu_forward) and the bias gradient joins its backward (gelu_bias_backward). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/exp_poly.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768
/* Elements per parallel task. */
#define ACTIVATION_CHUNK 8192

/* <math.h>'s M_ constants are POSIX, not C17. */
#define SQRT1_2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228040143267794

/* e^x for SwiGLU (kernels/cpu/exp_poly.h). x is clamped to [-87.3, 89]: below, e^x stops at
 * ~1e-38 instead of going subnormal (1 + e^x is 1 either way); above 88.38 it overflows to inf
 * slightly before expf would. NaN becomes the lower bound; the SwiGLU formulas still propagate it
 * through their other factor of the gate. */
ALWAYS_INLINE float exp_vectorizable(float x) {
    x = x >= -87.3f ? x : -87.3f;
    x = x <= 89.0f ? x : 89.0f;
    return tga_exp_poly(x);
}

typedef struct {
    float *out, *dgate, *dup;
    const float *dout, *gate, *up;
    tga_bf16 *out16, *gate_store, *up_store; /* swiglu_forward_bf16: its output, gate and up as stored */
    const tga_bf16 *gate_bf16, *up_bf16; /* swiglu_backward_bf16 */
} swiglu_args;

/* silu(g) * u with silu(g) = g / (1 + e^-g), as torch's silu. */
ALWAYS_INLINE float swiglu_value(float g, float u) { return g / (1.0f + exp_vectorizable(-g)) * u; }

/* d silu(g) / dg = s * (1 + g * (1 - s)) with s = sigmoid(g), as torch's silu_backward. */
ALWAYS_INLINE void swiglu_grads(float dout, float g, float u, float *dgate, float *dup) {
    float s = 1.0f / (1.0f + exp_vectorizable(-g));
    *dgate = dout * u * (s * (1.0f + g * (1.0f - s)));
    *dup = dout * (g * s);
}

ALWAYS_INLINE void swiglu_forward_range(const swiglu_args *a, size_t begin, size_t end) {
    for (size_t i = begin; i < end; i++) a->out[i] = swiglu_value(a->gate[i], a->up[i]);
}

ALWAYS_INLINE void swiglu_backward_range(const swiglu_args *a, size_t begin, size_t end) {
    for (size_t i = begin; i < end; i++) swiglu_grads(a->dout[i], a->gate[i], a->up[i], &a->dgate[i], &a->dup[i]);
}

/* Elements per step of swiglu_forward_bf16's three loops (its fp32 results on the stack). */
#define BF16_STEP 1024

/* gate and up rounded to bf16 and stored; the product of the rounded values, read back, rounded
 * into out16. Separate loops: GCC vectorises none of it when 16-bit stores share a loop with the
 * exp. */
ALWAYS_INLINE void swiglu_forward_bf16_range(const swiglu_args *a, size_t begin, size_t end) {
    tga_bf16 *restrict gate_store = a->gate_store, *restrict up_store = a->up_store, *restrict out16 = a->out16;
    const float *restrict gate = a->gate, *restrict up = a->up;
    float value[BF16_STEP];
    for (size_t step = begin; step < end; step += BF16_STEP) {
        const size_t n = end - step < BF16_STEP ? end - step : BF16_STEP;
        for (size_t i = step; i < step + n; i++) {
            gate_store[i] = tga_bf16_from_float(gate[i]);
            up_store[i] = tga_bf16_from_float(up[i]);
        }
        for (size_t i = 0; i < n; i++)
            value[i] = swiglu_value(tga_bf16_to_float(gate_store[step + i]), tga_bf16_to_float(up_store[step + i]));
        for (size_t i = 0; i < n; i++) out16[step + i] = tga_bf16_from_float(value[i]);
    }
}

ALWAYS_INLINE void swiglu_backward_bf16_range(const swiglu_args *a, size_t begin, size_t end) {
    for (size_t i = begin; i < end; i++)
        swiglu_grads(a->dout[i], tga_bf16_to_float(a->gate_bf16[i]), tga_bf16_to_float(a->up_bf16[i]), &a->dgate[i],
                     &a->dup[i]);
}

/* Each range loop built twice: portable, and for AVX-512 (chosen at run time). */
#define SWIGLU_BUILDS(name)                                                                                           \
    static void name##_portable(const swiglu_args *a, size_t begin, size_t end) { name##_range(a, begin, end); }     \
    __attribute__((target("avx512f"))) static void name##_avx512(const swiglu_args *a, size_t begin, size_t end) { \
        name##_range(a, begin, end);                                                                                  \
    }
SWIGLU_BUILDS(swiglu_forward)
SWIGLU_BUILDS(swiglu_backward)
SWIGLU_BUILDS(swiglu_forward_bf16)
SWIGLU_BUILDS(swiglu_backward_bf16)

typedef void (*swiglu_range_fn)(const swiglu_args *a, size_t begin, size_t end);

static void run_in_chunks(swiglu_range_fn portable, swiglu_range_fn avx512, const swiglu_args *a, size_t n) {
    swiglu_range_fn fn = tga_cpu_has_avx512() ? avx512 : portable;
    size_t n_chunks = (n + ACTIVATION_CHUNK - 1) / ACTIVATION_CHUNK;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t chunk = 0; chunk < n_chunks; chunk++) {
        size_t begin = chunk * ACTIVATION_CHUNK;
        fn(a, begin, n - begin < ACTIVATION_CHUNK ? n : begin + ACTIVATION_CHUNK);
    }
}

void tga_cpu_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    const swiglu_args a = {.out = out, .gate = gate, .up = up};
    run_in_chunks(swiglu_forward_portable, swiglu_forward_avx512, &a, n);
}

void tga_cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                             size_t n) {
    const swiglu_args a = {.dgate = dgate, .dup = dup, .dout = dout, .gate = gate, .up = up};
    run_in_chunks(swiglu_backward_portable, swiglu_backward_avx512, &a, n);
}

void tga_cpu_swiglu_forward_bf16(tga_bf16 *out, tga_bf16 *gate_store, tga_bf16 *up_store, const float *gate,
                                 const float *up, size_t n) {
    const swiglu_args a = {.out16 = out, .gate = gate, .up = up, .gate_store = gate_store, .up_store = up_store};
    run_in_chunks(swiglu_forward_bf16_portable, swiglu_forward_bf16_avx512, &a, n);
}

void tga_cpu_swiglu_backward_bf16(float *dgate, float *dup, const float *dout, const tga_bf16 *gate,
                                  const tga_bf16 *up, size_t n) {
    const swiglu_args a = {.dgate = dgate, .dup = dup, .dout = dout, .gate_bf16 = gate, .up_bf16 = up};
    run_in_chunks(swiglu_backward_bf16_portable, swiglu_backward_bf16_avx512, &a, n);
}

static inline float gelu(float x) { return x * 0.5f * (1.0f + erff(x * (float)SQRT1_2)); }

/* d gelu / dx = Phi(x) + x * phi(x), the normal CDF and density. */
static inline float gelu_grad(float x) {
    float cdf = 0.5f * (1.0f + erff(x * (float)SQRT1_2));
    float pdf = expf(-0.5f * x * x) * (float)INV_SQRT_2PI;
    return cdf + x * pdf;
}

void tga_cpu_gelu_forward(float *out, const float *in, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) out[i] = gelu(in[i]);
}

void tga_cpu_gelu_backward(float *din, const float *dout, const float *in, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) din[i] = dout[i] * gelu_grad(in[i]);
}

void tga_cpu_bias_gelu_forward(float *pre, float *act, const float *bias, int N, int D) {
#pragma omp parallel for schedule(static) if ((size_t)N * D >= PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        float *p = pre + (size_t)n * D, *a = act + (size_t)n * D;
        for (int j = 0; j < D; j++) {
            p[j] += bias[j];
            a[j] = gelu(p[j]);
        }
    }
}

void tga_cpu_gelu_bias_backward(float *dpre, float *dbias, const float *dact, const float *pre, int N, int D) {
    tga_cpu_gelu_backward(dpre, dact, pre, (size_t)N * D);
    if (dbias) tga_cpu_bias_grad_accumulate(dbias, dpre, N, D);
}
