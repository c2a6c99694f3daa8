/* The model: a Llama-family decoder with an image projector, its parameters, its memory plan, and
 * one micro-batch of forward + backward including the TGA alignment terms (TGA-METHOD.md §3).
 *
 * Reads like the math: model.c's forward is one op call per step with shapes in comments, and the
 * backward is the same list in reverse. All compute goes through the op table (kernels/ops.h), so
 * the model never knows which device runs it.
 *
 * Hidden-state convention (TGA-METHOD.md): hs[0] = input embeddings after the image splice,
 * hs[l] = residual stream after decoder layer l (1 <= l < L), hs[L] = after the final RMSNorm. */
#ifndef TGA_TRAINER_MODEL_H
#define TGA_TRAINER_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/bf16.h"
#include "runtime/error.h"
#include "runtime/plan.h"

#define TGA_IMAGE_TOKEN_ID (-200) /* LLaVA's IMAGE_TOKEN_INDEX: an image patch position */
#define TGA_IGNORE_INDEX (-100)   /* a label that is not supervised */
#define TGA_MAX_ALIGN_LAYERS 256

typedef enum { TGA_TRAIN_LM = 0, TGA_TRAIN_STAGE1 = 1, TGA_TRAIN_STAGE2 = 2 } tga_trainable_set;
typedef enum { TGA_PROJ_MLP2X_GELU = 0, TGA_PROJ_LINEAR = 1 } tga_projector_type;
typedef enum { TGA_ALIGN_INTENDED = 0, TGA_ALIGN_RELEASED = 1, TGA_ALIGN_OFF = 2 } tga_align_mode;

typedef struct tga_model_dims {
    int dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, vocab_size, max_seq_len;
    double rope_theta;
    float norm_eps;
    int tie_embeddings;
    tga_projector_type projector;
    int vision_dim;
    int bf16_weights; /* model.dtype: bf16 (weight matrices stored as bf16) */
} tga_model_dims;

/* What the activation memory is sized for (one micro-batch). */
typedef struct tga_run_shape {
    tga_trainable_set trainable;
    int micro_batch;  /* B */
    int max_len;      /* T (multimodal and caption sequences) */
    int max_images;   /* images per micro-batch */
    int image_tokens; /* P: patches per image */
    int recompute;    /* 1 = keep only each layer's input; recompute the rest in backward */
    int ce_chunk;     /* rows per LM-head chunk */
    int n_align_layers;
    /* ZeRO-1: with zero_world > 1 the AdamW moments are held only for this rank's shard of the
     * flat gradient layout (tga_zero_shard); 0 or 1 = the moments of every trainable parameter. */
    int zero_world, zero_rank;
} tga_run_shape;

typedef struct tga_align_config {
    tga_align_mode mode;
    int n_layers;
    int layers[TGA_MAX_ALIGN_LAYERS]; /* hs indices, sorted */
    float pair_weight, rank_weight, pair_pow, rank_pow, eps;
} tga_align_config;

/* One micro-batch, host memory. Sequences are right-padded to T; image i's P patch features go
 * to rows [image_start[i], +P) of sample image_sample[i], where input_ids hold TGA_IMAGE_TOKEN_ID. */
typedef struct tga_batch {
    int B, T;
    const int32_t *input_ids; /* [B*T] */
    const int32_t *labels;    /* [B*T] HF-style unshifted labels (-100 = not supervised) */
    const int32_t *lengths;   /* [B] */
    int n_images;
    const float *image_features; /* [n_images, P, vision_dim] */
    const int32_t *image_sample, *image_start; /* [n_images] */
    const int32_t *ret_start, *ret_len;        /* [B] retrieved-text span; len 0 = none */
    const uint8_t *tox;                        /* [B] */
    /* text-only caption branch (the TGA targets) */
    int Tc;
    const int32_t *cap_ids;     /* [B*Tc] */
    const int32_t *cap_lengths; /* [B] */
    const int32_t *cap_start, *cap_len; /* [B] */
} tga_batch;

/* Global-batch quantities for one optimizer step (TGA-METHOD.md normalisation). */
typedef struct tga_step_scalars {
    double n_tokens_global;  /* supervised targets in the global batch */
    double n_samples_global; /* samples in the global batch (tox included) */
    double progress;         /* s = step / total steps */
} tga_step_scalars;

typedef struct tga_losses {
    double ce_sum;  /* sum of -log p over this micro-batch's supervised targets */
    double ce;      /* ce_sum / n_tokens_global: this micro-batch's share of the global CE */
    double pair;    /* share of the global pair term */
    double rank;    /* share of the global rank term */
    int n_align_layers;
    double cos_vc_sum[TGA_MAX_ALIGN_LAYERS]; /* per align layer: sum over used samples of cos(v, c) */
    int cos_count;                           /* samples used (image, not tox) */
} tga_losses;

/* A parameter (device memory). With model.dtype bf16 a weight matrix has data_bf16, the copy the
 * products read; data is then its fp32 master when trainable, and NULL when frozen or when ZeRO-1
 * shards the masters (tga_model_master_shard). Read and write parameters from the host with
 * tga_model_param_upload/download, which handle every case. */
typedef struct tga_param {
    const char *name;
    int ndim;
    long long shape[2];
    size_t numel;
    float *data, *grad, *adam_m, *adam_v; /* grad and moments NULL when frozen; moments NULL with ZeRO-1 */
    tga_bf16 *data_bf16;                  /* NULL unless a bf16 matrix */
    int trainable;
    int uploaded; /* set by tga_model_param_upload (tga_model_init_random skips it) */
} tga_param;

typedef struct tga_model tga_model;

/* Checks the dims and shape (clear errors naming the config keys), and builds the memory plan
 * without allocating anything. */
tga_status tga_model_plan(const tga_model_dims *dims, const tga_run_shape *shape, tga_plan *plan);
tga_status tga_model_create(tga_model **out, const tga_model_dims *dims, const tga_run_shape *shape);
void tga_model_free(tga_model *m);

const tga_plan *tga_model_get_plan(const tga_model *m);
const tga_model_dims *tga_model_get_dims(const tga_model *m);
const tga_run_shape *tga_model_get_shape(const tga_model *m);
int tga_model_param_count(const tga_model *m);
tga_param *tga_model_param(tga_model *m, int i);
tga_param *tga_model_find_param(tga_model *m, const char *name);
size_t tga_model_numel(const tga_model *m, int trainable_only);

/* host[numel] (fp32) into the parameter: the fp32 data, the bf16 copy rounded from it, and the
 * part in this rank's master shard. */
tga_status tga_model_param_upload(tga_model *m, tga_param *p, const float *host);
/* The parameter into host[numel]: the fp32 data, or the bf16 copy widened when there is no whole
 * fp32 copy (frozen, or its master sharded). */
tga_status tga_model_param_download(const tga_param *p, float *host);

/* Parameters from Philox keyed by (seed, init, parameter index): matrices N(0, std), norms 1,
 * projector as torch's nn.Linear default (uniform +-1/sqrt(fan_in)). Only the parameters that no
 * tga_model_param_upload has set: called after loading weights, it fills what the load left
 * (a stage-1 run from a Hugging Face model: the projector), with the values it would have had
 * anyway, and skips generating the billions the load replaces. */
tga_status tga_model_init_random(tga_model *m, uint64_t seed, float std);
void tga_model_zero_grads(tga_model *m);
/* The gradients of all trainable parameters as one flat buffer (device memory), *n floats long
 * including alignment padding between tensors (zero there). */
float *tga_model_grad_buffer(tga_model *m, size_t *n);

/* The flat gradient layout: element x of the buffer belongs to the trainable parameter p with
 * grad_offset(p) <= x < grad_offset(p) + numel (zero padding between tensors). */
size_t tga_model_grad_offset(const tga_model *m, const tga_param *p);
/* The AdamW moments as flat buffers (device memory) over the gradient layout's [*lo, *hi): all of
 * it, or with ZeRO-1 the rank's shard (tga_zero_shard in dist/grad_sync.h). */
void tga_model_optim_state(tga_model *m, float **adam_m, float **adam_v, size_t *lo, size_t *hi);
int tga_model_optim_sharded(const tga_model *m); /* 1 with ZeRO-1 over more than one rank */
/* ZeRO-1 with model.dtype bf16: the fp32 masters over the rank's shard [lo, hi) of the gradient
 * layout (as tga_model_optim_state's), of every trainable parameter: what AdamW updates. The
 * bf16 matrices have no other fp32 copy (their data is NULL); the other trainable parameters keep
 * whole fp32 data, which follows the masters. NULL otherwise. */
float *tga_model_master_shard(tga_model *m);

/* Called during a backward pass each time a group of gradients is final (the head, each decoder
 * layer from the last to the first, the embeddings, the projector): [lo, hi) is a range of the flat
 * gradient buffer holding whole tensors and the padding after them. Frozen groups are not
 * reported. Lets the gradient sync start on early groups while later ones are still computed. */
typedef void (*tga_grad_ready_fn)(void *ctx, size_t lo, size_t hi);
void tga_model_set_grad_ready(tga_model *m, tga_grad_ready_fn fn, void *ctx); /* fn NULL: off */

/* One micro-batch: text branch (no gradient) for the TGA targets, multimodal forward, losses, and
 * (with_backward) the backward pass, accumulating into the trainable parameters' gradients. */
tga_status tga_model_forward_backward(tga_model *m, const tga_batch *batch, const tga_align_config *align,
                                      const tga_step_scalars *scalars, int with_backward, tga_losses *losses);

/* out[n, V] = hidden[n, D] times the LM head (device pointers), as the loss computes them. */
void tga_model_head_logits(tga_model *m, float *out, const float *hidden, int n);
/* After a forward: logits [B*T, V] of the last batch, computed chunk by chunk into host memory. */
void tga_model_logits(tga_model *m, float *host_logits);
/* After a forward: hs[index] of the last batch ([B*T, D] into host memory). */
void tga_model_hidden(tga_model *m, int index, float *host_out);
/* After a backward: the gradient w.r.t. the input embeddings hs[0] ([B*T, D] into host memory). */
void tga_model_input_grad(tga_model *m, float *host_out);

#endif
