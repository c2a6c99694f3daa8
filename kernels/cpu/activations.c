/* Pointwise activations: SwiGLU (Llama MLP, silu(gate) * up) and exact-erf GELU (the projector's
 * nn.GELU()). Formulas and their operation order follow torch's CPU kernels. */
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768

/* <math.h>'s M_ constants are POSIX, not C17. */
#define SQRT1_2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228040143267794

static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

void tga_cpu_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* d silu(g) / dg = s * (1 + g * (1 - s)) with s = sigmoid(g). */
void tga_cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                             size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float s = sigmoid(g);
        dgate[i] = dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
        dup[i] = dout[i] * (g * s);
    }
}

void tga_cpu_gelu_forward(float *out, const float *in, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        out[i] = x * 0.5f * (1.0f + erff(x * (float)SQRT1_2));
    }
}

/* d gelu / dx = Phi(x) + x * phi(x), the normal CDF and density. */
void tga_cpu_gelu_backward(float *din, const float *dout, const float *in, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float cdf = 0.5f * (1.0f + erff(x * (float)SQRT1_2));
        float pdf = expf(-0.5f * x * x) * (float)INV_SQRT_2PI;
        din[i] = dout[i] * (cdf + x * pdf);
    }
}
