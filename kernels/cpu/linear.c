/* Linear layer, out = in W^T + b, with its three GEMMs delegated to tga_cpu_gemm (the bf16-weight
 * variants to tga_cpu_gemm_mixed). The bias
 * gradient is a column sum over rows, taken row by row in order for every column so that it
 * does not depend on the thread count. */
#include "kernels/cpu/cpu_kernels.h"

/* Columns per task of the bias-gradient sum. Each task reads a 2 KiB slice of every row: long
 * enough runs for the hardware prefetcher (64-column slices were about 1.3x slower), while a
 * 4096-wide layer still gives 8 tasks. */
#define BIAS_GRAD_COLS 512

static void add_bias_rows(float *out, const float *bias, int N, int out_dim) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *row = out + (size_t)n * out_dim;
        for (int j = 0; j < out_dim; j++)
            row[j] += bias[j];
    }
}

/* dbias[j] += sum over rows n = 0..N-1 of dout[n, j], summed in double in row order. */
void tga_cpu_bias_grad_accumulate(float *dbias, const float *dout, int N, int out_dim) {
    int n_blocks = (out_dim + BIAS_GRAD_COLS - 1) / BIAS_GRAD_COLS;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        int j0 = blk * BIAS_GRAD_COLS;
        int width = out_dim - j0 < BIAS_GRAD_COLS ? out_dim - j0 : BIAS_GRAD_COLS;
        double sum[BIAS_GRAD_COLS] = {0};
        for (int n = 0; n < N; n++) {
            const float *row = dout + (size_t)n * out_dim + j0;
            for (int j = 0; j < width; j++)
                sum[j] += row[j];
        }
        for (int j = 0; j < width; j++)
            dbias[j0 + j] += (float)sum[j];
    }
}

/* The same three products with bf16 operands (ops.h: bf16(in), bf16(dout), the bf16 weight). */
static void linear_forward_typed(float *out, const void *in, const void *weight, tga_cpu_operand w_type,
                                 tga_cpu_operand act_type, const float *bias, int N, int in_dim, int out_dim) {
    /* (N, IC) x (OC, IC)^T -> (N, OC) */
    tga_cpu_gemm_mixed(0, 1, N, out_dim, in_dim, 1.0f, in, act_type, in_dim, weight, w_type, in_dim, 0.0f, out,
                       out_dim);
    if (bias) add_bias_rows(out, bias, N, out_dim);
}

static void linear_backward_typed(float *din, float *dweight, float *dbias, const float *dout, const void *in,
                                  const void *weight, tga_cpu_operand w_type, tga_cpu_operand act_type,
                                  tga_cpu_operand in_type, int N, int in_dim, int out_dim, int accumulate_din) {
    if (din) {
        /* (N, OC) x (OC, IC) -> (N, IC) */
        tga_cpu_gemm_mixed(0, 0, N, in_dim, out_dim, 1.0f, dout, act_type, out_dim, weight, w_type, in_dim,
                           accumulate_din ? 1.0f : 0.0f, din, in_dim);
    }
    if (dweight) {
        /* (N, OC)^T x (N, IC) -> (OC, IC), accumulated */
        tga_cpu_gemm_mixed(1, 0, out_dim, in_dim, N, 1.0f, dout, act_type, out_dim, in, in_type, in_dim, 1.0f,
                           dweight, in_dim);
    }
    if (dbias) tga_cpu_bias_grad_accumulate(dbias, dout, N, out_dim);
}

void tga_cpu_linear_forward(float *out, const float *in, const float *weight, const float *bias, int N,
                            int in_dim, int out_dim) {
    linear_forward_typed(out, in, weight, TGA_CPU_F32, TGA_CPU_F32, bias, N, in_dim, out_dim);
}

void tga_cpu_linear_backward(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                             const float *weight, int N, int in_dim, int out_dim, int accumulate_din) {
    linear_backward_typed(din, dweight, dbias, dout, in, weight, TGA_CPU_F32, TGA_CPU_F32, TGA_CPU_F32, N, in_dim,
                          out_dim, accumulate_din);
}

void tga_cpu_linear_forward_bf16(float *out, const float *in, const tga_bf16 *weight, const float *bias, int N,
                                 int in_dim, int out_dim) {
    linear_forward_typed(out, in, weight, TGA_CPU_BF16, TGA_CPU_F32_AS_BF16, bias, N, in_dim, out_dim);
}

void tga_cpu_linear_backward_bf16(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                                  const tga_bf16 *weight, int N, int in_dim, int out_dim, int accumulate_din) {
    linear_backward_typed(din, dweight, dbias, dout, in, weight, TGA_CPU_BF16, TGA_CPU_F32_AS_BF16,
                          TGA_CPU_F32_AS_BF16, N, in_dim, out_dim, accumulate_din);
}

void tga_cpu_linear_forward_bf16_input(float *out, const tga_bf16 *in, const tga_bf16 *weight, const float *bias,
                                       int N, int in_dim, int out_dim) {
    linear_forward_typed(out, in, weight, TGA_CPU_BF16, TGA_CPU_BF16, bias, N, in_dim, out_dim);
}

void tga_cpu_linear_backward_bf16_input(float *din, float *dweight, float *dbias, const float *dout,
                                        const tga_bf16 *in, const tga_bf16 *weight, int N, int in_dim, int out_dim,
                                        int accumulate_din) {
    linear_backward_typed(din, dweight, dbias, dout, in, weight, TGA_CPU_BF16, TGA_CPU_F32_AS_BF16, TGA_CPU_BF16, N,
                          in_dim, out_dim, accumulate_din);
}
