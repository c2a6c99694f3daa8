/* PLACEHOLDER during bring-up: a simple correct GEMM (replaced by the blocked AVX-512 kernel). */
#include "kernels/cpu/cpu_kernels.h"

void tga_cpu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        for (int p = 0; p < K; p++) {
            float a = alpha * (trans_a ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p]);
            if (!trans_b) {
                const float *b = B + (size_t)p * ldb;
                for (int j = 0; j < N; j++) c[j] += a * b[j];
            } else {
                for (int j = 0; j < N; j++) c[j] += a * B[(size_t)j * ldb + p];
            }
        }
    }
}

const char *tga_cpu_simd_level(void) { return "scalar"; }
int tga_cpu_has_avx512(void) { return 0; }
