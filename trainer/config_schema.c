/* tga's config keys: one line each with type, default, range or choices and help, in the order
 * `tga help config` and the saved YAML list them. Defaults are the tiny CPU model of
 * configs/tiny.yaml; TGA-METHOD.md gives the upstream values the tga.* defaults follow. */
#include "trainer/config.h"

#include <inttypes.h>
#include <stddef.h>
#include <string.h>

/* The offset of cfg.<section>.<name>, and a compile error unless the field has the C type the
 * key's tga_cfg_type is stored as (runtime/config.h). */
#define FIELD(section, name, ctype)                                                                          \
    _Generic(&((tga_config *)0)->section.name, ctype * : offsetof(tga_config, section.name))

#define INT(section, name, def, lo, hi, text)                                                                \
    { #section, #name, TGA_CFG_INT, def, lo, hi, 0, NULL, text, FIELD(section, name, int64_t) }
#define FLOAT(section, name, def, lo, hi, bounds, text)                                                      \
    { #section, #name, TGA_CFG_FLOAT, def, lo, hi, bounds, NULL, text, FIELD(section, name, double) }
#define BOOL(section, name, def, text)                                                                       \
    { #section, #name, TGA_CFG_BOOL, def, 0, 0, 0, NULL, text, FIELD(section, name, bool) }
#define STRING(section, name, def, text)                                                                     \
    { #section, #name, TGA_CFG_STRING, def, 0, 0, 0, NULL, text, FIELD(section, name, tga_cfg_string) }
#define ENUM(section, name, ctype, def, choices, text)                                                       \
    { #section, #name, TGA_CFG_ENUM, def, 0, 0, 0, choices, text, FIELD(section, name, ctype) }
#define LAYERS(section, name, def, text)                                                                     \
    { #section, #name, TGA_CFG_LAYERS, def, 0, 0, 0, NULL, text, FIELD(section, name, tga_layer_set) }

/* Enum fields are written through an int (the choice index). */
_Static_assert(sizeof(tga_projector_type) == sizeof(int) && sizeof(tga_trainable_set) == sizeof(int) &&
                   sizeof(tga_lr_schedule) == sizeof(int) && sizeof(tga_nonfinite_policy) == sizeof(int) &&
                   sizeof(tga_align_mode) == sizeof(int) && sizeof(tga_chat_template) == sizeof(int) &&
                   sizeof(tga_device_request) == sizeof(int) && sizeof(tga_log_level) == sizeof(int) &&
                   sizeof(tga_grad_sync_choice) == sizeof(int) && sizeof(tga_attention_impl) == sizeof(int) &&
                   sizeof(tga_weight_dtype) == sizeof(int),
               "enum config fields must be int-sized");

enum { OPEN_MIN = TGA_CFG_MIN_OPEN, OPEN_MAX = TGA_CFG_MAX_OPEN, CLOSED = 0 };

static const tga_cfg_key schema[] = {
    INT(model, dim, "64", 1, 65536, "Hidden size of the decoder (Mistral-7B: 4096)."),
    INT(model, n_layers, "4", 1, 1024, "Decoder layers."),
    INT(model, n_heads, "4", 1, 1024, "Query heads."),
    INT(model, n_kv_heads, "2", 1, 1024, "Key/value heads (grouped-query attention); must divide n_heads."),
    INT(model, head_dim, "0", 0, 1024, "Width of one head; 0 = dim / n_heads."),
    INT(model, ffn_dim, "172", 1, 1 << 20, "Hidden size of the SwiGLU MLP."),
    INT(model, vocab_size, "512", 2, 1 << 24, "Token vocabulary size."),
    FLOAT(model, rope_theta, "10000", 0, 1e9, OPEN_MIN, "RoPE base frequency."),
    FLOAT(model, norm_eps, "1e-5", 0, 1, OPEN_MIN, "RMSNorm epsilon."),
    BOOL(model, tie_embeddings, "false", "Share the token embedding with the LM head."),
    INT(model, max_seq_len, "256", 1, 1 << 20, "Longest sequence the model supports (RoPE positions)."),
    FLOAT(model, init_std, "0.02", 0, 10, CLOSED, "Std of the random init of a model trained from scratch."),
    ENUM(model, attention, tga_attention_impl, "tga", "tga|cudnn|tga-mma|tga-wgmma",
         "Attention kernels: tga = our own (every backend; on CUDA the backend picks wgmma on H100/H200 for head "
         "dims 64/128, else mma.sync), cudnn = cuDNN's fused attention (CUDA only), tga-mma / tga-wgmma = our "
         "CUDA kernels with that choice pinned (tga-wgmma fails where the device cannot run it)."),
    ENUM(model, dtype, tga_weight_dtype, "fp32", "fp32|bf16",
         "Storage of the weight matrices: fp32, or bf16 (half the memory; the matrix products round their "
         "activation operands to bf16 and accumulate in fp32, the bf16 tensor-core path on GPUs). Trainable "
         "matrices keep fp32 master weights and AdamW moments; the decoder layers' norm outputs and MLP "
         "activations (gate, up, SwiGLU) are kept in bf16 too; norm weights, biases, the residual stream, "
         "attention activations, the projector and gradients stay fp32."),

    ENUM(projector, type, tga_projector_type, "mlp2x_gelu", "mlp2x_gelu|linear",
         "Vision-to-LLM projector: Linear-GELU-Linear (LLaVA-1.5) or one Linear."),
    INT(projector, vision_dim, "32", 1, 65536,
        "Width of the stored vision features (CLIP ViT-L/14-336: 1024)."),

    ENUM(train, trainable, tga_trainable_set, "stage1", "lm|stage1|stage2",
         "What trains: lm = the decoder alone on text, stage1 = the projector only, stage2 = projector and "
         "decoder."),
    INT(train, seed, "1234", 0, 9007199254740992.0, "Seed of every random stream (init, data order)."),
    INT(train, steps, "100", 1, 1e9, "Total optimizer steps."),
    INT(train, micro_batch, "4", 1, 1 << 16, "Samples per rank per forward/backward."),
    INT(train, grad_accum, "0", 0, 1 << 16, "Micro-batches per optimizer step and rank; 0 = derive."),
    INT(train, global_batch, "0", 0, 1 << 24, "Samples per optimizer step over all ranks; 0 = derive."),
    FLOAT(train, lr, "1e-3", 0, 10, CLOSED, "Peak learning rate."),
    FLOAT(train, warmup_ratio, "0.03", 0, 1, CLOSED, "Share of the steps spent in linear warmup."),
    ENUM(train, schedule, tga_lr_schedule, "cosine", "cosine|constant",
         "Learning-rate schedule after warmup."),
    FLOAT(train, weight_decay, "0", 0, 10, CLOSED, "AdamW decoupled weight decay."),
    FLOAT(train, beta1, "0.9", 0, 1, OPEN_MAX, "AdamW first-moment decay."),
    FLOAT(train, beta2, "0.999", 0, 1, OPEN_MAX, "AdamW second-moment decay."),
    FLOAT(train, adam_eps, "1e-8", 0, 1, OPEN_MIN, "AdamW epsilon."),
    FLOAT(train, grad_clip, "1.0", 0, 1e9, CLOSED, "Clip the global gradient norm to this; 0 = off."),
    BOOL(train, recompute, "false",
         "Recompute each layer's activations in backward (less memory; a frozen decoder, as in stage1, "
         "keeps no per-layer inputs of its linear layers either way)."),
    ENUM(train, on_nonfinite, tga_nonfinite_policy, "stop", "stop|skip",
         "On a NaN/Inf loss or gradient: stop the run, or skip the step."),
    INT(train, log_every, "1", 1, 1e9, "Log every this many steps."),
    INT(train, eval_every, "0", 0, 1e9, "Evaluate on data.eval every this many steps; 0 = never."),
    STRING(train, out_dir, "runs/tiny", "Directory for checkpoints and logs."),
    STRING(train, init_from, "",
           "Weights to start from: a tga run or checkpoint directory, or a Hugging Face model directory "
           "(config.json + safetensors, e.g. Mistral-7B-Instruct-v0.2); empty = random init."),
    INT(train, ce_chunk, "64", 1, 1 << 20,
        "Rows per LM-head chunk in the cross-entropy (bounds logits memory)."),
    ENUM(train, grad_sync, tga_grad_sync_choice, "ordered", "ordered|allreduce|bucketed",
         "Gradient sync across ranks: ordered = bitwise identical for 1, 2, 4 ranks; allreduce = one "
         "all-reduce after backward; bucketed = all-reduces of buckets overlapping the backward pass."),
    FLOAT(train, bucket_mb, "25", 0, 1e6, OPEN_MIN, "Bucket size of grad_sync: bucketed, in MiB."),
    INT(train, zero_stage, "0", 0, 1,
        "1 = ZeRO-1: AdamW moments sharded over ranks (reduce-scatter, local AdamW, all-gather); 0 = replicated."),
    INT(train, checkpoint_every, "0", 0, 1e9, "Save a checkpoint every this many steps (and at the end); 0 = only at the end."),
    FLOAT(train, checkpoint_minutes, "0", 0, 1e6, CLOSED, "Also save when this many minutes passed since the last save; 0 = off."),
    INT(train, keep_last, "3", 1, 1e6, "Keep the newest this many checkpoints."),
    INT(train, keep_every, "0", 0, 1e9, "Also keep every checkpoint whose step is a multiple of this; 0 = none."),

    ENUM(tga, mode, tga_align_mode, "intended", "intended|released|off",
         "Alignment loss: intended = differentiable, released = upstream (logged, no gradient), off."),
    LAYERS(tga, layers, "1-3",
           "Hidden states aligned: 0 = embedding output, l = after decoder layer l (upstream: 10-18)."),
    FLOAT(tga, pair_weight, "0.25", 0, 1e6, CLOSED, "Weight of the image-caption pull term (upstream 1/4)."),
    FLOAT(tga, rank_weight, "0.1", 0, 1e6, CLOSED, "Weight of the ranking term (upstream 1/10)."),
    FLOAT(tga, pair_decay_pow, "1", 0, 100, CLOSED, "The pull term decays as (1 - step/steps)^this."),
    FLOAT(tga, rank_decay_pow, "2", 0, 100, CLOSED, "The ranking term decays as (1 - step/steps)^this."),
    FLOAT(tga, cos_eps, "1e-8", 0, 1, OPEN_MIN, "Norm clamp in the cosine similarities (as PyTorch)."),

    STRING(data, train, "", "Training shard directory or file."),
    STRING(data, eval, "", "Evaluation shard directory or file; empty = none."),
    ENUM(data, template, tga_chat_template, "plain_retrieval",
         "plain|plain_retrieval|llama_2|mistral_instruct|chatml",
         "Prompt template; plain_retrieval puts the retrieved text before the image."),
    INT(data, max_len, "256", 8, 1 << 20,
        "Tokens per sequence, image patches included; longer ones are cut."),
    INT(data, image_tokens, "16", 1, 1 << 16, "Patches per image (CLIP ViT-L/14-336: 576)."),

    ENUM(runtime, device, tga_device_request, "auto", "auto|cpu|cuda",
         "Backend: auto = CUDA when available."),
    INT(runtime, threads, "0", 0, 4096, "CPU threads; 0 = OpenMP's default."),
    ENUM(runtime, log_level, tga_log_level, "info", "debug|info|warn|error", "Least severe message logged."),
    FLOAT(runtime, collective_timeout, "600", 0, 1e7, CLOSED,
          "Abort the job when a collective has not completed in this many seconds (a hung rank); 0 = off."),
};

static const size_t schema_count = sizeof schema / sizeof schema[0];

const tga_cfg_key *tga_config_schema(size_t *count) {
    if (count) *count = schema_count;
    return schema;
}

tga_status tga_config_init(tga_config *cfg) {
    if (!cfg) return tga_error(TGA_ERR_INTERNAL, "tga_config_init: NULL config");
    memset(cfg, 0, sizeof *cfg);
    return tga_cfg_defaults(cfg, schema, schema_count);
}

tga_status tga_config_load(tga_config *cfg, const char *path) {
    if (!cfg) return tga_error(TGA_ERR_INTERNAL, "tga_config_load: NULL config");
    tga_config updated = *cfg;
    TGA_TRY(tga_cfg_load_file(&updated, schema, schema_count, path));
    *cfg = updated;
    return TGA_OK;
}

tga_status tga_config_override(tga_config *cfg, const char *assignment) {
    if (!cfg) return tga_error(TGA_ERR_INTERNAL, "tga_config_override: NULL config");
    tga_config updated = *cfg;
    TGA_TRY(tga_cfg_set(&updated, schema, schema_count, assignment));
    *cfg = updated;
    return TGA_OK;
}

int64_t tga_config_head_dim(const tga_config *cfg) {
    if (cfg->model.head_dim || cfg->model.n_heads < 1) return cfg->model.head_dim;
    return cfg->model.dim / cfg->model.n_heads;
}

static tga_status validate_model(const tga_config *cfg) {
    /* Loading keeps both in [1, 1024]; a struct filled in by code might not. */
    if (cfg->model.n_heads < 1 || cfg->model.n_kv_heads < 1)
        return tga_error(TGA_ERR_CONFIG, "config: model.n_heads and model.n_kv_heads must be at least 1");
    if (cfg->model.n_heads % cfg->model.n_kv_heads != 0)
        return tga_error(TGA_ERR_CONFIG,
                         "config: model.n_heads (%" PRId64
                         ") must be a multiple of model.n_kv_heads (%" PRId64 ")",
                         cfg->model.n_heads, cfg->model.n_kv_heads);
    if (cfg->model.head_dim == 0 && cfg->model.dim % cfg->model.n_heads != 0)
        return tga_error(TGA_ERR_CONFIG,
                         "config: model.dim (%" PRId64 ") must be a multiple of model.n_heads (%" PRId64
                         ") when model.head_dim is 0; or set model.head_dim",
                         cfg->model.dim, cfg->model.n_heads);
    if (tga_config_head_dim(cfg) % 2 != 0)
        return tga_error(
            TGA_ERR_CONFIG,
            "config: the head width (model.head_dim, or model.dim / model.n_heads when it is 0) is "
            "%" PRId64 "; RoPE needs it even",
            tga_config_head_dim(cfg));
    return TGA_OK;
}

static tga_status validate_alignment(const tga_config *cfg) {
    const tga_layer_set *layers = &cfg->tga.layers;
    if (layers->count > 0 && layers->layers[layers->count - 1] > cfg->model.n_layers) {
        char text[TGA_LAYER_SET_TEXT_MAX];
        tga_layer_set_format(layers, text, sizeof text);
        return tga_error(
            TGA_ERR_CONFIG,
            "config: tga.layers \"%s\" reaches layer %d, but the model has hidden states 0..%" PRId64
            " (model.n_layers)",
            text, layers->layers[layers->count - 1], cfg->model.n_layers);
    }
    if (layers->count == 0 && cfg->tga.mode != TGA_ALIGN_OFF)
        return tga_error(TGA_ERR_CONFIG,
                         "config: tga.layers is empty; name the layers to align or set tga.mode=off");
    return TGA_OK;
}

static tga_status validate_data(const tga_config *cfg) {
    if (cfg->data.max_len > cfg->model.max_seq_len)
        return tga_error(TGA_ERR_CONFIG,
                         "config: data.max_len (%" PRId64 ") exceeds model.max_seq_len (%" PRId64 ")",
                         cfg->data.max_len, cfg->model.max_seq_len);
    if (cfg->data.image_tokens >= cfg->data.max_len)
        return tga_error(TGA_ERR_CONFIG,
                         "config: data.image_tokens (%" PRId64
                         ") leaves no room for text in data.max_len (%" PRId64 ")",
                         cfg->data.image_tokens, cfg->data.max_len);
    return TGA_OK;
}

tga_status tga_config_validate(const tga_config *cfg) {
    if (!cfg) return tga_error(TGA_ERR_INTERNAL, "tga_config_validate: NULL config");
    TGA_TRY(validate_model(cfg));
    TGA_TRY(validate_alignment(cfg));
    return validate_data(cfg);
}

tga_status tga_config_write(const tga_config *cfg, FILE *out) {
    if (!cfg) return tga_error(TGA_ERR_INTERNAL, "tga_config_write: NULL config");
    return tga_cfg_write_yaml(cfg, schema, schema_count, out);
}

void tga_config_help(FILE *out) { tga_cfg_print_help(schema, schema_count, out); }
