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
} swiglu_args;

/* out = silu(gate) * up with silu(g) = g / (1 + e^-g), as torch's silu. */
ALWAYS_INLINE void swiglu_forward_range(const swiglu_args *a, size_t begin, size_t end) {
    float *out = a->out;
    const float *gate = a->gate, *up = a->up;
    for (size_t i = begin; i < end; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + exp_vectorizable(-g)) * up[i];
    }
}

/* d silu(g) / dg = s * (1 + g * (1 - s)) with s = sigmoid(g), as torch's silu_backward. */
ALWAYS_INLINE void swiglu_backward_range(const swiglu_args *a, size_t begin, size_t end) {
    float *dgate = a->dgate, *dup = a->dup;
    const float *dout = a->dout, *gate = a->gate, *up = a->up;
    for (size_t i = begin; i < end; i++) {
        float g = gate[i];
        float s = 1.0f / (1.0f + exp_vectorizable(-g));
        dgate[i] = dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
        dup[i] = dout[i] * (g * s);
    }
}

static void swiglu_forward_portable(const swiglu_args *a, size_t begin, size_t end) {
    swiglu_forward_range(a, begin, end);
}
__attribute__((target("avx512f"))) static void swiglu_forward_avx512(const swiglu_args *a, size_t begin,
                                                                     size_t end) {
    swiglu_forward_range(a, begin, end);
}
static void swiglu_backward_portable(const swiglu_args *a, size_t begin, size_t end) {
    swiglu_backward_range(a, begin, end);
}
__attribute__((target("avx512f"))) static void swiglu_backward_avx512(const swiglu_args *a, size_t begin,
                                                                      size_t end) {
    swiglu_backward_range(a, begin, end);
}

typedef void (*swiglu_range_fn)(const swiglu_args *a, size_t begin, size_t end);

static void run_in_chunks(swiglu_range_fn fn, const swiglu_args *a, size_t n) {
    size_t n_chunks = (n + ACTIVATION_CHUNK - 1) / ACTIVATION_CHUNK;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t chunk = 0; chunk < n_chunks; chunk++) {
        size_t begin = chunk * ACTIVATION_CHUNK;
        fn(a, begin, n - begin < ACTIVATION_CHUNK ? n : begin + ACTIVATION_CHUNK);
    }
}

void tga_cpu_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    const swiglu_args a = {.out = out, .gate = gate, .up = up};
    run_in_chunks(tga_cpu_has_avx512() ? swiglu_forward_avx512 : swiglu_forward_portable, &a, n);
}

void tga_cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                             size_t n) {
    const swiglu_args a = {.dgate = dgate, .dup = dup, .dout = dout, .gate = gate, .up = up};
    run_in_chunks(tga_cpu_has_avx512() ? swiglu_backward_avx512 : swiglu_backward_portable, &a, n);
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
