/* The CUDA backend's ops (contracts in kernels/ops.h) and the services its files share: the one
 * stream every op runs on, the first-error slot, and a growing scratch buffer. Included by the C
 * files (memory.c, gemm.c, backend.c) and the CUDA files alike. */
#ifndef TGA_KERNELS_CUDA_KERNELS_H
#define TGA_KERNELS_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/ops.h"

/* ---- services (memory.c) ---------------------------------------------------------------------
 * Every op is queued on tga_cuda_stream, a blocking stream: work queued on the legacy default
 * stream (stream 0, e.g. timing events) is ordered with it. */
extern cudaStream_t tga_cuda_stream;

/* Ops return void, so a failing CUDA or cuBLASLt call is recorded here (the first one wins: later
 * failures are usually its consequences) and reported at the next point where the host waits for
 * the device (sync, download, and the ops that return a host value): the message names the file,
 * line and call, then the process aborts. Returns 1 when err is cudaSuccess. */
int tga_cuda_check(cudaError_t err, const char *file, int line, const char *call);
void tga_cuda_record_error(const char *file, int line, const char *call, const char *detail);
#define TGA_CUDA_CHECK(call) tga_cuda_check((call), __FILE__, __LINE__, #call)
/* After a kernel launch: launch-configuration errors are reported by cudaGetLastError. */
#define TGA_CUDA_CHECK_LAUNCH(kernel_name) tga_cuda_check(cudaGetLastError(), __FILE__, __LINE__, kernel_name)

/* Waits for the stream, then aborts with the recorded message if any call has failed. */
void tga_cuda_sync_or_die(const char *where);

/* A device buffer of at least `bytes`, valid until the next call (one buffer, grown on demand;
 * ops run one after another on one stream, so each op may use it freely, but an op must not hold
 * it across a call to another op that uses it). NULL, with the error recorded, when it cannot grow. */
void *tga_cuda_scratch(size_t bytes);

/* Rounds a byte offset up to the 256-byte alignment of cudaMalloc, for carving the scratch. */
static inline size_t tga_cuda_align_up(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

/* Sets up the services (stream); 0 with a reason on failure. */
int tga_cuda_memory_init(char *why, size_t why_size);

/* ---- per-family set-up ---------------------------------------------------------------------- */
int tga_cuda_gemm_init(char *why, size_t why_size);      /* cuBLASLt handle, workspace, precision */
const char *tga_cuda_gemm_precision(void);                /* "tf32" or "fp32" */
/* shared-memory limits of the attention kernels (they use more than the default 48 KiB) */
int tga_cuda_attention_forward_init(char *why, size_t why_size);
int tga_cuda_attention_backward_init(char *why, size_t why_size);
/* The attention kernels this device runs, for the backend's name (after the init above) */
const char *tga_cuda_attention_kernels(void);
/* 1 if the library holds kernel code this device can run (else a reason) */
int tga_cuda_kernels_loadable(char *why, size_t why_size);

/* GEMM operand types: fp32, or bf16 (tga_bf16, kernels/bf16.h). Both operands of one GEMM must
 * have the same type: cuBLASLt has no fp32 x bf16 GEMM (the plan fails and the error is recorded). */
typedef enum { TGA_CUDA_F32 = 0, TGA_CUDA_BF16 = 1 } tga_cuda_operand;
/* tga_cuda_gemm (ops.h's gemm contract) with typed A and B; C stays fp32. bf16 operands use bf16
 * tensor cores with fp32 accumulation (CUBLAS_COMPUTE_32F) whatever TGA_CUDA_GEMM says. */
void tga_cuda_gemm_typed(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A,
                         tga_cuda_operand type_a, int lda, const void *B, tga_cuda_operand type_b, int ldb, float beta,
                         float *C, int ldc);

/* C[M,N] = beta * C (beta 0 clears without reading): GEMMs with alpha == 0 or K == 0. */
void tga_cuda_scale_matrix(float *C, int M, int N, int ldc, float beta);

/* ---- ops ------------------------------------------------------------------------------------ */
void *tga_cuda_alloc(size_t bytes);
void tga_cuda_free(void *ptr);
void tga_cuda_upload(void *dst, const void *host_src, size_t bytes);
void tga_cuda_download(void *host_dst, const void *src, size_t bytes);
void tga_cuda_zero(void *ptr, size_t bytes);
void tga_cuda_copy(void *dst, const void *src, size_t bytes);
void tga_cuda_sync(void);
void tga_cuda_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc);
void tga_cuda_linear_forward(float *out, const float *in, const float *weight, const float *bias, int N,
                             int in_dim, int out_dim);
void tga_cuda_linear_backward(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                              const float *weight, int N, int in_dim, int out_dim, int accumulate_din);
void tga_cuda_embedding_forward(float *out, const int *ids, const float *table, int N, int D);
void tga_cuda_embedding_backward(float *dtable, const float *dout, const int *ids, int N, int D, int V);
void tga_cuda_rmsnorm_forward(float *out, float *rstd, const float *in, const float *weight, int N, int D,
                              float eps);
void tga_cuda_rmsnorm_backward(float *din, float *dweight, const float *dout, const float *in,
                               const float *weight, const float *rstd, int N, int D, int accumulate_din);
void tga_cuda_rmsnorm_forward_bf16(tga_bf16 *out, float *rstd, const float *in, const float *weight, int N, int D,
                                   float eps);
void tga_cuda_add_rmsnorm_forward_bf16(float *residual, const float *delta, tga_bf16 *out, float *rstd,
                                       const float *weight, int N, int D, float eps);
void tga_cuda_add_rmsnorm_forward(float *residual, const float *delta, float *out, float *rstd,
                                  const float *weight, int N, int D, float eps);
void tga_cuda_rope(float *x, const float *cos_sin, int B, int T, int heads, int head_dim, int inverse);
void tga_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                const int *lengths, int B, int T, int H, int KVH, int head_dim);
void tga_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                 const float *k, const float *v, const float *out, const float *lse,
                                 const int *lengths, int B, int T, int H, int KVH, int head_dim);
void tga_cuda_swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void tga_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                              size_t n);
void tga_cuda_swiglu_forward_bf16(tga_bf16 *out, tga_bf16 *gate_store, tga_bf16 *up_store, const float *gate,
                                  const float *up, size_t n);
void tga_cuda_swiglu_backward_bf16(float *dgate, float *dup, const float *dout, const tga_bf16 *gate,
                                   const tga_bf16 *up, size_t n);
void tga_cuda_gelu_forward(float *out, const float *in, size_t n);
void tga_cuda_gelu_backward(float *din, const float *dout, const float *in, size_t n);
void tga_cuda_bias_gelu_forward(float *pre, float *act, const float *bias, int N, int D);
void tga_cuda_gelu_bias_backward(float *dpre, float *dbias, const float *dact, const float *pre, int N, int D);
void tga_cuda_lm_head_ce(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                         const float *weight, const int *targets, int N, int D, int V, float grad_scale,
                         float *scratch, int chunk);
void tga_cuda_segment_mean_forward(float *out, const float *in, const tga_segments *seg, int D);
void tga_cuda_segment_mean_backward(float *din, const float *dout, const tga_segments *seg, int D);
void tga_cuda_tga_align_loss(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc, float *dv,
                             float *dr, const tga_align_args *args);
void tga_cuda_tga_align_fused_forward(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc, float *v,
                                      float *r, float *dv, float *dr, const float *const *hidden, int n_layers,
                                      const tga_segments *img, const tga_segments *ret, const tga_align_args *args);
void tga_cuda_tga_align_fused_backward(float *din, const float *dv, const float *dr, const tga_segments *img,
                                       const tga_segments *ret, int D);
void tga_cuda_add_inplace(float *y, const float *x, size_t n);
void tga_cuda_scale_inplace(float *x, float alpha, size_t n);
double tga_cuda_sum_squares(const float *x, size_t n);
int tga_cuda_all_finite(const float *x, size_t n);
void tga_cuda_adamw_bf16(float *param, tga_bf16 *param_bf16, const float *grad, float *m, float *v, size_t n,
                         float lr, float beta1, float beta2, float eps, float weight_decay, int step);
void tga_cuda_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                    float beta2, float eps, float weight_decay, int step);
void tga_cuda_linear_forward_bf16_input(float *out, const tga_bf16 *in, const tga_bf16 *weight, const float *bias,
                                        int N, int in_dim, int out_dim);
void tga_cuda_linear_backward_bf16_input(float *din, float *dweight, float *dbias, const float *dout,
                                         const tga_bf16 *in, const tga_bf16 *weight, int N, int in_dim, int out_dim,
                                         int accumulate_din);
void tga_cuda_linear_forward_bf16(float *out, const float *in, const tga_bf16 *weight, const float *bias, int N,
                                  int in_dim, int out_dim);
void tga_cuda_linear_backward_bf16(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                                   const tga_bf16 *weight, int N, int in_dim, int out_dim, int accumulate_din);
void tga_cuda_embedding_forward_bf16(float *out, const int *ids, const tga_bf16 *table, int N, int D);
void tga_cuda_lm_head_ce_bf16(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                              const tga_bf16 *weight, const int *targets, int N, int D, int V, float grad_scale,
                              float *scratch, int chunk);
void tga_cuda_to_bf16(tga_bf16 *dst, const float *src, size_t n);
void tga_cuda_from_bf16(float *dst, const tga_bf16 *src, size_t n);
void tga_cuda_topk_merge(float *best_score, int32_t *best_index, const float *scores, int n_rows, int n_cols,
                         int ld, int32_t col_offset, int k);

#ifdef __cplusplus
}
#endif

#endif
