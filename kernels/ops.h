/* The ops: one declaration each, implemented by every backend (kernels/cpu/ now, kernels/cuda/
 * later). Model code calls them through the active table, `tga_ops`, and never knows the device.
 *
 * Conventions (all backends):
 * - fp32 tensors (the *_bf16 ops take a bf16 weight), row-major, contiguous. Activations are
 *   [N, D] with N = B*T rows (sample b's token t is row b*T + t). Attention tensors are
 *   [B, T, heads, head_dim].
 * - Pointers are device pointers of the backend (host memory on the CPU backend). Integer side
 *   data (token ids, lengths, spans) are device pointers too.
 * - "accumulate" arguments: 0 = overwrite the output, 1 = add into it. Gradient outputs that may
 *   be NULL are skipped (a frozen weight has no gradient).
 * - Ops never fail on valid shapes; shape validation happens once, in the caller, at the
 *   boundary (model construction, batch checks).
 */
#ifndef TGA_KERNELS_OPS_H
#define TGA_KERNELS_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/bf16.h"

/* Segments for mean-pooling rows of a [N, D] tensor into [n_out, D]: segment i covers rows
 * row_start[i] .. row_start[i]+row_count[i]-1 and contributes to output out_index[i]. An
 * output's mean is over the union of its segments (so a sample with two images pools over
 * both); out_rows[j] is the total row count of output j (0 = empty: output row left at zero). */
typedef struct tga_segments {
    int n_segments;
    int n_out;
    const int *row_start; /* [n_segments] */
    const int *row_count; /* [n_segments] */
    const int *out_index; /* [n_segments] */
    const int *out_rows;  /* [n_out] */
} tga_segments;

/* Per-sample inputs of the alignment loss at one layer (all [n, D] pooled vectors). */
typedef struct tga_align_args {
    int n;              /* samples */
    int dim;            /* D */
    const float *v;     /* [n, D] pooled image hidden states */
    const float *r;     /* [n, D] pooled retrieved-text hidden states */
    const float *c;     /* [n, D] pooled caption targets (no gradient) */
    const uint8_t *use_pair; /* [n] 1 = sample has an image span and is not tox */
    const uint8_t *use_rank; /* [n] 1 = use_pair and sample has a retrieved-text span */
    float w_pair;       /* pair weight incl. decay and 1/(layers * n_samples_global) */
    float w_rank;       /* rank weight incl. decay and 1/(layers * n_samples_global) */
    float eps;          /* cosine norm clamp, as torch (1e-8) */
} tga_align_args;

#define TGA_MAX_HEAD_DIM 256

typedef struct tga_ops {
    const char *name;

    /* ---- memory ---- */
    void *(*alloc)(size_t bytes);          /* zeroed; NULL on failure */
    void (*free)(void *ptr);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);
    void (*zero)(void *ptr, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);
    void (*sync)(void);

    /* ---- GEMM ----
     * C[M,N] = alpha * op(A) op(B) + beta * C, row-major; op(A) is [M,K]: A is [M,K] (trans_a 0)
     * or [K,M] (trans_a 1); op(B) is [K,N]: B is [K,N] (trans_b 0) or [N,K] (trans_b 1).
     * lda/ldb/ldc are row strides in elements. */
    void (*gemm)(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);

    /* ---- linear: out[N,OC] = in[N,IC] W[OC,IC]^T (+ bias[OC]) ---- */
    void (*linear_forward)(float *out, const float *in, const float *weight, const float *bias, int N,
                           int in_dim, int out_dim);
    /* din[N,IC] (+)= dout W; dweight[OC,IC] += dout^T in; dbias[OC] += sum_rows dout.
     * din, dweight, dbias may each be NULL. din is overwritten unless accumulate_din. */
    void (*linear_backward)(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                            const float *weight, int N, int in_dim, int out_dim, int accumulate_din);

    /* ---- embedding: out[n] = table[ids[n]]; rows with ids[n] < 0 (image placeholders) are zeroed ---- */
    void (*embedding_forward)(float *out, const int *ids, const float *table, int N, int D);
    /* dtable[ids[n]] += dout[n] for ids[n] >= 0 (deterministic: a fixed order per table row) */
    void (*embedding_backward)(float *dtable, const float *dout, const int *ids, int N, int D, int V);

    /* ---- RMSNorm (HF Llama): out = in * rsqrt(mean(in^2) + eps) * weight; rstd[N] saved ---- */
    void (*rmsnorm_forward)(float *out, float *rstd, const float *in, const float *weight, int N, int D,
                            float eps);
    /* din (+)= ..., dweight += ... (dweight may be NULL) */
    void (*rmsnorm_backward)(float *din, float *dweight, const float *dout, const float *in,
                             const float *weight, const float *rstd, int N, int D, int accumulate_din);
    /* fused residual add + RMSNorm: residual += delta (in place), then out = rmsnorm(residual) */
    void (*add_rmsnorm_forward)(float *residual, const float *delta, float *out, float *rstd,
                                const float *weight, int N, int D, float eps);

    /* ---- RoPE, HF "rotate half": x[B,T,heads,hd] rotated in place at position t.
     * cos_sin is [max_T, hd/2, 2] (cos, sin) built by tga_rope_table(). inverse = 1 rotates by
     * the negative angle (the backward pass). ---- */
    void (*rope)(float *x, const float *cos_sin, int B, int T, int heads, int head_dim, int inverse);

    /* ---- causal attention with grouped-query heads and per-sample lengths (right padding).
     * q/out [B,T,H,hd], k/v [B,T,KVH,hd], lse [B,H,T] (log-sum-exp of the scaled scores, saved for
     * backward). Query t of sample b sees keys j <= t with j < lengths[b]; rows t >= lengths[b]
     * are padding: out = 0 and lse = 0 there. Scale 1/sqrt(hd). head_dim <= 256 (TGA_MAX_HEAD_DIM)
     * and H a multiple of KVH (the caller checks); outputs must not alias inputs. ---- */
    void (*attention_forward)(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int *lengths, int B, int T, int H, int KVH, int head_dim);
    /* dq, dk, dv overwritten */
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse,
                               const int *lengths, int B, int T, int H, int KVH, int head_dim);

    /* ---- SwiGLU: out = silu(gate) * up, elementwise over n ---- */
    void (*swiglu_forward)(float *out, const float *gate, const float *up, size_t n);
    void (*swiglu_backward)(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                            size_t n);

    /* ---- exact-erf GELU (nn.GELU()) ---- */
    void (*gelu_forward)(float *out, const float *in, size_t n);
    void (*gelu_backward)(float *din, const float *dout, const float *in, size_t n);
    /* The projector's bias + GELU in one pass over [N, D] (the GEMM runs without bias first):
     * pre += bias (row-broadcast), then act = gelu(pre); pre keeps the pre-activation for backward.
     * Same arithmetic as linear_forward's bias followed by gelu_forward. */
    void (*bias_gelu_forward)(float *pre, float *act, const float *bias, int N, int D);
    /* dpre = dact * gelu'(pre) (overwritten) and, unless dbias is NULL, dbias[D] += column sums of
     * dpre, summed as linear_backward's bias gradient. */
    void (*gelu_bias_backward)(float *dpre, float *dbias, const float *dact, const float *pre, int N, int D);

    /* ---- LM head + cross-entropy, chunked over tokens (never all N*V logits).
     * hidden [N,D], weight [V,D], targets [N] (-100 = ignored). Returns the SUM of -log p(target)
     * over non-ignored rows in *loss_sum. With dhidden != NULL, writes dhidden[N,D] =
     * grad_scale * d(loss_sum)/d(hidden) (zero at ignored rows); with dweight != NULL, adds
     * grad_scale * d(loss_sum)/d(weight). scratch holds chunk*(V+D) floats (logits, then the
     * gathered rows). ---- */
    void (*lm_head_ce)(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                       const float *weight, const int *targets, int N, int D, int V, float grad_scale,
                       float *scratch, int chunk);

    /* ---- bf16 weights (model.dtype: bf16). The weight matrix is bf16 (kernels/bf16.h); every
     * product rounds its fp32 operands to bf16 (nearest even) and accumulates in fp32, as a bf16
     * tensor-core GEMM with fp32 accumulation does, so all backends compute the same products and
     * differ only in the order of the fp32 sums. Outputs and gradients are fp32; bias and the
     * rest as in the fp32 ops above. ---- */
    /* out = bf16(in) W^T (+ bias) */
    void (*linear_forward_bf16)(float *out, const float *in, const tga_bf16 *weight, const float *bias, int N,
                                int in_dim, int out_dim);
    /* the same with the input already in bf16 (written so by its producer: the *_bf16 norms and
     * SwiGLU below), so nothing is rounded again: equal, bit for bit, to linear_forward_bf16 on
     * the widened input */
    void (*linear_forward_bf16_input)(float *out, const tga_bf16 *in, const tga_bf16 *weight, const float *bias,
                                      int N, int in_dim, int out_dim);
    /* din (+)= bf16(dout) W; dweight += bf16(dout)^T bf16(in); dbias += sum_rows dout (exact fp32 dout) */
    void (*linear_backward_bf16)(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                                 const tga_bf16 *weight, int N, int in_dim, int out_dim, int accumulate_din);
    /* the same with the forward's input in bf16 (as linear_forward_bf16_input) */
    void (*linear_backward_bf16_input)(float *din, float *dweight, float *dbias, const float *dout,
                                       const tga_bf16 *in, const tga_bf16 *weight, int N, int in_dim, int out_dim,
                                       int accumulate_din);
    /* rmsnorm_forward and add_rmsnorm_forward with the normalised rows stored rounded to bf16 (the
     * inputs of bf16 products, which would round them anyway); rstd and the residual stay fp32 */
    void (*rmsnorm_forward_bf16)(tga_bf16 *out, float *rstd, const float *in, const float *weight, int N, int D,
                                 float eps);
    void (*add_rmsnorm_forward_bf16)(float *residual, const float *delta, tga_bf16 *out, float *rstd,
                                     const float *weight, int N, int D, float eps);
    /* out[n] = table[ids[n]] widened to fp32; rows with ids[n] < 0 zeroed */
    void (*embedding_forward_bf16)(float *out, const int *ids, const tga_bf16 *table, int N, int D);
    /* lm_head_ce with a bf16 weight: logits = bf16(rows) W^T; dweight += bf16(dlogits)^T bf16(rows);
     * dhidden rows = bf16(dlogits) W (softmax and sums as in lm_head_ce) */
    void (*lm_head_ce_bf16)(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                            const tga_bf16 *weight, const int *targets, int N, int D, int V, float grad_scale,
                            float *scratch, int chunk);
    /* swiglu_forward with gate and up stored in bf16 (model.dtype bf16 keeps the MLP's two widest
     * activations so): gate_store = bf16(gate), up_store = bf16(up), and out = bf16(silu(g) * u) of
     * those rounded values g, u (fp32 arithmetic, as swiglu_forward; out feeds a bf16 product). The
     * three outputs must not overlap each other or the inputs. */
    void (*swiglu_forward_bf16)(tga_bf16 *out, tga_bf16 *gate_store, tga_bf16 *up_store, const float *gate,
                                const float *up, size_t n);
    /* swiglu_backward from the stored bf16 gate and up (widened; fp32 arithmetic) */
    void (*swiglu_backward_bf16)(float *dgate, float *dup, const float *dout, const tga_bf16 *gate,
                                 const tga_bf16 *up, size_t n);
    /* dst = bf16(src) (nearest even); the fp32 master -> bf16 copy after each optimizer step */
    void (*to_bf16)(tga_bf16 *dst, const float *src, size_t n);
    /* dst = src widened (exact) */
    void (*from_bf16)(float *dst, const tga_bf16 *src, size_t n);

    /* ---- mean-pooling over segments: out[n_out, D] (overwritten) ---- */
    void (*segment_mean_forward)(float *out, const float *in, const tga_segments *seg, int D);
    /* din[rows] += dout[out_index] / out_rows (din accumulated) */
    void (*segment_mean_backward)(float *din, const float *dout, const tga_segments *seg, int D);

    /* ---- TGA alignment loss at one layer on pooled vectors (TGA-METHOD.md §3):
     * pair_b = w_pair * exp(-cos(v_b, c_b)); rank_b = w_rank * exp(cos(r_b, c_b) - cos(v_b, c_b)).
     * Adds the sums over samples to *pair_sum / *rank_sum; writes per-sample cos(v,c) and cos(r,c)
     * to cos_vc/cos_rc (may be NULL). With dv/dr != NULL, writes the gradients (overwritten;
     * zero rows for skipped samples). ---- */
    void (*tga_align_loss)(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc, float *dv,
                           float *dr, const tga_align_args *args);

    /* ---- the TGA alignment over all align layers at once: for each layer j < n_layers,
     * segment_mean_forward of hidden[j] over img into v_j and over ret into r_j, then
     * tga_align_loss on (v_j, r_j, c_j) with c_j = args->c + j*n*D; the results equal that
     * per-layer composition (the CPU op is that composition, to the bit).
     * - hidden: a HOST array of n_layers device pointers, each an [N, D] hidden state.
     * - img, ret: segment tables (device arrays) with n_out == args->n; output b is sample b.
     * - args: n, dim, use_pair, use_rank, w_pair, w_rank, eps as for tga_align_loss; args->c is
     *   [n_layers, n, D]; args->v and args->r are not read.
     * - v, r [n_layers, n, D]: the pooled vectors, written (required: the gradients are computed
     *   from them). cos_vc, cos_rc [n_layers, n] as tga_align_loss per layer (may be NULL).
     * - dv, dr [n_layers, n, D]: gradients w.r.t. v and r, overwritten (NULL = not computed).
     * Adds to *pair_sum / *rank_sum, layer by layer, each layer's sum over samples in sample order
     * (deterministic). Waits for the device (the sums are host values). ---- */
    void (*tga_align_fused_forward)(double *pair_sum, double *rank_sum, float *cos_vc, float *cos_rc, float *v,
                                    float *r, float *dv, float *dr, const float *const *hidden, int n_layers,
                                    const tga_segments *img, const tga_segments *ret, const tga_align_args *args);
    /* One layer's pooled gradients spread back: din[N, D] += segment_mean_backward of dv over img,
     * then of dr over ret (dv, dr [n_out, D]); the same bits as those two calls in that order. */
    void (*tga_align_fused_backward)(float *din, const float *dv, const float *dr, const tga_segments *img,
                                     const tga_segments *ret, int D);

    /* ---- elementwise helpers ---- */
    void (*add_inplace)(float *y, const float *x, size_t n);      /* y += x */
    void (*scale_inplace)(float *x, float alpha, size_t n);       /* x *= alpha */
    double (*sum_squares)(const float *x, size_t n);               /* deterministic order */
    int (*all_finite)(const float *x, size_t n);                  /* 1 if no NaN/Inf */

    /* ---- AdamW, as torch.optim.AdamW (decoupled weight decay, bias correction).
     * step is the 1-based step count after this update. ---- */
    void (*adamw)(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step);
    /* adamw, and in the same pass param_bf16[i] = bf16(param[i]): the fp32 master's bf16 copy of
     * model.dtype bf16 (param the same bits as adamw's) */
    void (*adamw_bf16)(float *param, tga_bf16 *param_bf16, const float *grad, float *m, float *v, size_t n,
                       float lr, float beta1, float beta2, float eps, float weight_decay, int step);

    /* ---- top-k selection (retrieval): merges each row of a score block into that row's running
     * top-k list. scores is [n_rows, n_cols] with row stride ld; its column c is item
     * col_offset + c. best_score/best_index [n_rows, k] keep each list sorted best first: higher
     * score first, and of equal scores the lower index first; empty slots are (-INFINITY, -1), at
     * the end (a new list is all empty slots). A score of -INFINITY masks its item (it never
     * enters); scores must not be NaN. Since the order is total, each list ends as the exact top-k
     * of all items merged into it, whatever the blocking and order of the merges. ---- */
    void (*topk_merge)(float *best_score, int32_t *best_index, const float *scores, int n_rows, int n_cols,
                       int ld, int32_t col_offset, int k);
} tga_ops;

/* The active backend, chosen once at start-up (runtime/backend.c). */
extern const tga_ops *tga_active_ops;
#define OPS (tga_active_ops)

/* The CPU backend's table (kernels/cpu/cpu_ops.c). */
const tga_ops *tga_cpu_ops(void);

/* RoPE table as HF computes it: inv_freq[i] = 1 / theta^(2i/hd) and angle = t * inv_freq[i] in
 * float32. Fills host memory cos_sin[max_T * hd/2 * 2]. */
void tga_rope_table(float *cos_sin, int max_T, int head_dim, double theta);

#endif
