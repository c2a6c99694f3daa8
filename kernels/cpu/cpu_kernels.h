/* The CPU backend's ops (see kernels/ops.h for the contract of each). One file per op family:
 * memory.c, gemm.c, linear.c, embedding.c, rmsnorm.c, rope.c, attention.c, activations.c
 * (SwiGLU, GELU), lm_head.c, pooling.c, tga_align.c, align_fused.c (pooling + alignment over
 * all align layers), elementwise.c, adamw.c, topk.c. */
#ifndef TGA_KERNELS_CPU_KERNELS_H
#define TGA_KERNELS_CPU_KERNELS_H

#include "kernels/ops.h"

void *tga_cpu_alloc(size_t bytes);
void tga_cpu_free(void *ptr);
void tga_cpu_upload(void *dst, const void *host_src, size_t bytes);
void tga_cpu_download(void *host_dst, const void *src, size_t bytes);
void tga_cpu_zero(void *ptr, size_t bytes);
void tga_cpu_copy(void *dst, const void *src, size_t bytes);
void tga_cpu_sync(void);
/* GEMM operands: fp32, fp32 rounded to bf16 as it is read, or bf16 (model.dtype: bf16). */
typedef enum { TGA_CPU_F32 = 0, TGA_CPU_F32_AS_BF16 = 1, TGA_CPU_BF16 = 2 } tga_cpu_operand;
/* tga_cpu_gemm with typed operands (A and B point to floats or to tga_bf16 as their type says). */
void tga_cpu_gemm_mixed(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A,
                        tga_cpu_operand a_type, int lda, const void *B, tga_cpu_operand b_type, int ldb, float beta,
                        float *C, int ldc);
void tga_cpu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);
void tga_cpu_linear_forward(float *out, const float *in, const float *weight, const float *bias, int N,
                            int in_dim, int out_dim);
void tga_cpu_linear_backward(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                             const float *weight, int N, int in_dim, int out_dim, int accumulate_din);
void tga_cpu_linear_forward_bf16_input(float *out, const tga_bf16 *in, const tga_bf16 *weight, const float *bias,
                                       int N, int in_dim, int out_dim);
void tga_cpu_linear_backward_bf16_input(float *din, float *dweight, float *dbias, const float *dout,
                                        const tga_bf16 *in, const tga_bf16 *weight, int N, int in_dim, int out_dim,
                                        int accumulate_din);
void tga_cpu_linear_forward_bf16(float *out, const float *in, const tga_bf16 *weight, const float *bias, int N,
                                 int in_dim, int out_dim);
void tga_cpu_linear_backward_bf16(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                                  const tga_bf16 *weight, int N, int in_dim, int out_dim, int accumulate_din);
void tga_cpu_embedding_forward_bf16(float *out, const int *ids, const tga_bf16 *table, int N, int D);
void tga_cpu_lm_head_ce_bf16(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                             const tga_bf16 *weight, const int *targets, int N, int D, int V, float grad_scale,
                             float *scratch, int chunk);
void tga_cpu_to_bf16(tga_bf16 *dst, const float *src, size_t n);
void tga_cpu_from_bf16(float *dst, const tga_bf16 *src, size_t n);
void tga_cpu_embedding_forward(float *out, const int *ids, const float *table, int N, int D);
void tga_cpu_embedding_backward(float *dtable, const float *dout, const int *ids, int N, int D, int V);
void tga_cpu_rmsnorm_forward(float *out, float *rstd, const float *in, const float *weight, int N, int D,
                             float eps);
void tga_cpu_rmsnorm_backward(float *din, float *dweight, const float *dout, const float *in,
                              const float *weight, const float *rstd, int N, int D, int accumulate_din);
void tga_cpu_rmsnorm_forward_bf16(tga_bf16 *out, float *rstd, const float *in, const float *weight, int N, int D,
                                  float eps);
void tga_cpu_add_rmsnorm_forward_bf16(float *residual, const float *delta, tga_bf16 *out, float *rstd,
                                      const float *weight, int N, int D, float eps);
void tga_cpu_add_rmsnorm_forward(float *residual, const float *delta, float *out, float *rstd,
                                 const float *weight, int N, int D, float eps);
void tga_cpu_rope(float *x, const float *cos_sin, int B, int T, int heads, int head_dim, int inverse);
void tga_cpu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                               const int *lengths, int B, int T, int H, int KVH, int head_dim);
void tga_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, const float *out, const float *lse,
                                const int *lengths, int B, int T, int H, int KVH, int head_dim);
void tga_cpu_swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void tga_cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                             size_t n);
void tga_cpu_swiglu_forward_bf16(tga_bf16 *out, tga_bf16 *gate_store, tga_bf16 *up_store, const float *gate,
                                 const float *up, size_t n);
void tga_cpu_swiglu_backward_bf16(float *dgate, float *dup, const float *dout, const tga_bf16 *gate,
                                  const tga_bf16 *up, size_t n);
void tga_cpu_gelu_forward(float *out, const float *in, size_t n);
void tga_cpu_bias_gelu_forward(float *pre, float *act, const float *bias, int N, int D);
void tga_cpu_gelu_bias_backward(float *dpre, float *dbias, const float *dact, const float *pre, int N, int D);
/* dbias[j] += sum over rows of dout[n, j] in double, row order (linear.c): shared bias gradient */
void tga_cpu_bias_grad_accumulate(float *dbias, const float *dout, int N, int out_dim);
void tga_cpu_gelu_backward(float *din, const float *dout, const float *in, size_t n);
void tga_cpu_lm_head_ce(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                        const float *weight, const int *targets, int N, int D, int V, float grad_scale,
                        float *scratch, int chunk);
void tga_cpu_segment_mean_forward(float *out, const float *in, const tga_segments *seg, int D);
void tga_cpu_segment_mean_backward(float *din, const float *dout, const tga_segments *seg, int D);
void tga_cpu_tga_align_loss(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc, float *dv,
                            float *dr, const tga_align_args *args);
void tga_cpu_tga_align_fused_forward(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc, float *v,
                                     float *r, float *dv, float *dr, const float *const *hidden, int n_layers,
                                     const tga_segments *img, const tga_segments *ret, const tga_align_args *args);
void tga_cpu_tga_align_fused_backward(float *din, const float *dv, const float *dr, const tga_segments *img,
                                      const tga_segments *ret, int D);
void tga_cpu_add_inplace(float *y, const float *x, size_t n);
void tga_cpu_scale_inplace(float *x, float alpha, size_t n);
double tga_cpu_sum_squares(const float *x, size_t n);
int tga_cpu_all_finite(const float *x, size_t n);
void tga_cpu_adamw_bf16(float *param, tga_bf16 *param_bf16, const float *grad, float *m, float *v, size_t n,
                        float lr, float beta1, float beta2, float eps, float weight_decay, int step);
void tga_cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, int step);
void tga_cpu_topk_merge(float *best_score, int32_t *best_index, const float *scores, int n_rows, int n_cols,
                        int ld, int32_t col_offset, int k);

/* Widest SIMD the CPU supports, detected once (cpuid): "avx512", "avx2" or "scalar". */
const char *tga_cpu_simd_level(void);
int tga_cpu_has_avx512(void);

#endif
