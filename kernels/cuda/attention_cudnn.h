/* Attention through cuDNN (attention_cudnn.c): what it needs from the rest of the backend and the
 * fp32 <-> bf16 conversions around it (attention_cudnn_convert.cu). Included by backend.c only for
 * the two table hooks, which it defines, so that backend.c itself never refers to cuDNN code (the
 * host emulation of tests/gpu/emulate.sh links backend.c without attention_cudnn.c). */
#ifndef TGA_KERNELS_CUDA_ATTENTION_CUDNN_H
#define TGA_KERNELS_CUDA_ATTENTION_CUDNN_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the op table (backend.c) -----------------------------------------------------------------
 * The backend's own table, and the one tga_cuda_backend_init hands out from now on (its own, or
 * a copy with other attention ops). */
const tga_ops *tga_cuda_own_ops(void);
void tga_cuda_publish_ops(const tga_ops *ops);

/* ---- conversions (attention_cudnn_convert.cu), queued on tga_cuda_stream -----------------------
 * Tensors are [B, T, row_elems]; sample b's rows t >= clamp(lengths[b], 0, T) are padding and are
 * written as zeros, whatever the source holds there. bf16 is passed as its bit pattern. One call
 * converts up to TGA_CUDA_MAX_ROWS_JOBS tensors (the q/k/v/... of one attention call) in one launch:
 * fp32 -> bf16 (to_bf16: dst bf16, src fp32) or bf16 -> fp32 (from_bf16). */
#define TGA_CUDA_MAX_ROWS_JOBS 5
typedef struct tga_cuda_rows_job {
    void *dst;
    const void *src;
    size_t row_elems;
} tga_cuda_rows_job;
void tga_cuda_rows_to_bf16(const tga_cuda_rows_job *jobs, int n, const int *lengths, int B, int T);
void tga_cuda_rows_from_bf16(const tga_cuda_rows_job *jobs, int n, const int *lengths, int B, int T);
/* lse [B, H, T]: zeros at the padding rows, leaves the others */
void tga_cuda_zero_padding_lse(float *lse, const int *lengths, int B, int H, int T);
/* dst[b] = lengths[b] clamped to [min_length, T] */
void tga_cuda_clamp_lengths(int *dst, const int *lengths, int B, int T, int min_length);

/* ---- the ops (attention_cudnn.c): contracts in kernels/ops.h ---------------------------------- */
void tga_cuda_attention_cudnn_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const int *lengths, int B, int T, int H, int KVH, int head_dim);
void tga_cuda_attention_cudnn_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                       const float *k, const float *v, const float *out, const float *lse,
                                       const int *lengths, int B, int T, int H, int KVH, int head_dim);

/* Exported (runtime/backend.c finds it with dlsym): impl "tga" publishes the backend's own table,
 * "cudnn" a copy whose attention ops are the two above (loading cuDNN first). 1 on success, else 0
 * and a reason. */
int tga_cuda_select_attention(const char *impl, char *why, size_t why_size);

#ifdef __cplusplus
}
#endif

#endif
