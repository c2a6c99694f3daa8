/* tga's run configuration: the typed struct, its schema (trainer/config_schema.c) and the
 * cross-key checks. The struct mirrors the file: `model.dim` in YAML is `cfg.model.dim` in C.
 * It is plain data (fixed-size strings and layer sets): copy it with `=`, compare it with memcmp
 * after tga_config_init, never free it.
 *
 * Typical use:
 *     tga_config cfg;
 *     TGA_TRY(tga_config_init(&cfg));
 *     if (path) TGA_TRY(tga_config_load(&cfg, path));
 *     for (each --set argument) TGA_TRY(tga_config_override(&cfg, argument));
 *     TGA_TRY(tga_config_validate(&cfg));
 *
 * `tga help config` prints every key (tga_config_help); configs/README.md says how to add one. */
#ifndef TGA_TRAINER_CONFIG_H
#define TGA_TRAINER_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/config.h"
#include "runtime/error.h"
#include "runtime/log.h"
#include "trainer/model.h"

/* Enum keys store the index of the chosen name, so each C enum lists its names in the order of
 * the key's choices. trainable (tga_trainable_set), projector.type (tga_projector_type) and
 * tga.mode (tga_align_mode) reuse the model's enums; runtime.log_level is tga_log_level. */
typedef enum { TGA_SCHEDULE_COSINE = 0, TGA_SCHEDULE_CONSTANT = 1 } tga_lr_schedule;
typedef enum { TGA_NONFINITE_STOP = 0, TGA_NONFINITE_SKIP = 1 } tga_nonfinite_policy;
typedef enum {
    TGA_TEMPLATE_PLAIN = 0,
    TGA_TEMPLATE_PLAIN_RETRIEVAL = 1,
    TGA_TEMPLATE_LLAMA_2 = 2,
    TGA_TEMPLATE_MISTRAL_INSTRUCT = 3,
    TGA_TEMPLATE_CHATML = 4,
} tga_chat_template;
typedef enum { TGA_DEVICE_AUTO = 0, TGA_DEVICE_CPU = 1, TGA_DEVICE_CUDA = 2 } tga_device_request;
/* model.attention: tga lets the CUDA backend choose between its kernel sets (wgmma on H100/H200
 * for head dims 64/128, mma.sync otherwise); tga-mma and tga-wgmma pin one (the fallback switch
 * while the wgmma kernels are unverified on GPU, and for comparisons). */
typedef enum {
    TGA_ATTENTION_TGA = 0,
    TGA_ATTENTION_CUDNN = 1,
    TGA_ATTENTION_TGA_MMA = 2,
    TGA_ATTENTION_TGA_WGMMA = 3
} tga_attention_impl;
typedef enum { TGA_DTYPE_FP32 = 0, TGA_DTYPE_BF16 = 1 } tga_weight_dtype;
typedef enum { TGA_GRAD_SYNC_ORDERED = 0, TGA_GRAD_SYNC_ALLREDUCE = 1, TGA_GRAD_SYNC_BUCKETED = 2 } tga_grad_sync_choice;

typedef struct tga_config {
    struct {
        int64_t dim, n_layers, n_heads, n_kv_heads;
        int64_t head_dim; /* 0 = dim / n_heads; use tga_config_head_dim() */
        int64_t ffn_dim, vocab_size;
        double rope_theta, norm_eps;
        bool tie_embeddings;
        int64_t max_seq_len;
        double init_std;
        tga_attention_impl attention;
        tga_weight_dtype dtype;
    } model;
    struct {
        tga_projector_type type;
        int64_t vision_dim;
    } projector;
    struct {
        tga_trainable_set trainable;
        int64_t seed, steps, micro_batch;
        int64_t grad_accum;   /* 0 = derived by the trainer */
        int64_t global_batch; /* 0 = derived by the trainer */
        double lr, warmup_ratio;
        tga_lr_schedule schedule;
        double weight_decay, beta1, beta2, adam_eps, grad_clip;
        bool recompute;
        tga_nonfinite_policy on_nonfinite;
        int64_t log_every, eval_every;
        tga_cfg_string out_dir, init_from;
        int64_t ce_chunk;
        tga_grad_sync_choice grad_sync;
        double bucket_mb;
        int64_t zero_stage;
        int64_t checkpoint_every;
        double checkpoint_minutes;
        int64_t keep_last, keep_every;
    } train;
    struct {
        tga_align_mode mode;
        tga_layer_set layers;
        double pair_weight, rank_weight, pair_decay_pow, rank_decay_pow, cos_eps;
    } tga;
    struct {
        tga_cfg_string train, eval;
        tga_chat_template template;
        int64_t max_len, image_tokens;
    } data;
    struct {
        tga_device_request device;
        int64_t threads; /* 0 = OpenMP's default */
        tga_log_level log_level;
        double collective_timeout;
    } runtime;
} tga_config;

/* The schema behind the struct (for fuzzers and tools that use runtime/config.h directly). */
const tga_cfg_key *tga_config_schema(size_t *count);

tga_status tga_config_init(tga_config *cfg); /* zeroed, then every default */
/* Keys from a file on top of the current values; on error *cfg is unchanged. */
tga_status tga_config_load(tga_config *cfg, const char *path);
/* One "section.key=value" (a --set argument); on error *cfg is unchanged. */
tga_status tga_config_override(tga_config *cfg, const char *assignment);
/* Checks between keys that no single key's range can express. */
tga_status tga_config_validate(const tga_config *cfg);
tga_status tga_config_write(const tga_config *cfg, FILE *out);
void tga_config_help(FILE *out);

/* model.head_dim, or dim / n_heads when it is 0. */
int64_t tga_config_head_dim(const tga_config *cfg);

#endif
