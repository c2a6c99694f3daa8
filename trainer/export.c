/* Exported files: names, layouts and config.json (export.h says what each file is). */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include "trainer/export.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "runtime/fileio.h"
#include "trainer/hf_names.h"
#include "trainer/setup.h"

/* What save_pretrained writes; transformers' load_state_dict refuses a file whose metadata names
 * another format. */
static const tga_st_meta pt_format = {"format", "pt"};

tga_status tga_export_choose(tga_export_what what, tga_trainable_set trainable, tga_export_parts *parts) {
    int trained_projector = trainable != TGA_TRAIN_LM;
    if (what == TGA_EXPORT_AUTO)
        what = trainable == TGA_TRAIN_STAGE1 ? TGA_EXPORT_PROJECTOR : TGA_EXPORT_MODEL;
    if (what == TGA_EXPORT_PROJECTOR && !trained_projector)
        return tga_error(TGA_ERR_USAGE,
                         "--what projector: this is an lm run (train.trainable: lm), whose projector "
                         "was never trained; export --what model");
    parts->model = what == TGA_EXPORT_MODEL;
    parts->projector = trained_projector;
    return TGA_OK;
}

/* ---- host copies of parameters, in the dtype of the export -------------------------------------- */

typedef struct tensor_set {
    tga_st_tensor *tensors;
    int n, cap;
    uint64_t bytes;
} tensor_set;

static void tensor_set_free(tensor_set *s) {
    for (int i = 0; i < s->n; i++) {
        free((void *)s->tensors[i].name);
        free((void *)s->tensors[i].data);
    }
    free(s->tensors);
    memset(s, 0, sizeof *s);
}

/* The parameter's values as `dtype` in a new buffer. */
static tga_status host_copy(const tga_param *p, tga_st_dtype dtype, void **out) {
    float *f32 = malloc(p->numel * sizeof(float));
    if (!f32) return tga_error(TGA_ERR_NOMEM, "out of memory copying %s (%zu values)", p->name, p->numel);
    tga_status st = tga_model_param_download(p, f32);
    if (st != TGA_OK) {
        free(f32);
        return st;
    }
    if (dtype == TGA_ST_F32) {
        *out = f32;
        return TGA_OK;
    }
    uint16_t *bf16 = malloc(p->numel * sizeof(uint16_t));
    if (bf16) tga_bf16_narrow(bf16, f32, p->numel); /* as torch's float -> bfloat16 cast */
    free(f32);
    if (!bf16) return tga_error(TGA_ERR_NOMEM, "out of memory converting %s to bf16", p->name);
    *out = bf16;
    return TGA_OK;
}

/* Appends our parameter `ours` under the exported name `name`. */
static tga_status tensor_set_add(tensor_set *s, tga_model *m, const char *ours, const char *name,
                                 tga_st_dtype dtype) {
    tga_param *p = tga_model_find_param(m, ours);
    if (!p) return tga_error(TGA_ERR_INTERNAL, "export: the model has no parameter %s", ours);
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        tga_st_tensor *grown = realloc(s->tensors, (size_t)cap * sizeof *grown);
        if (!grown) return tga_error(TGA_ERR_NOMEM, "out of memory listing the exported tensors");
        s->tensors = grown;
        s->cap = cap;
    }
    tga_st_tensor *t = &s->tensors[s->n];
    *t = (tga_st_tensor){.dtype = dtype, .ndim = p->ndim, .shape = {p->shape[0], p->shape[1]}};
    void *data = NULL;
    TGA_TRY(host_copy(p, dtype, &data));
    t->data = data;
    t->name = strdup(name);
    s->n++; /* counted now, so that tensor_set_free releases the data whatever follows */
    if (!t->name) return tga_error(TGA_ERR_NOMEM, "out of memory naming %s", name);
    s->bytes += p->numel * tga_st_dtype_size(dtype);
    return TGA_OK;
}

/* ---- the projector ------------------------------------------------------------------------------ */

/* LLaVA's mm_projector is nn.Sequential(Linear, GELU, Linear) for mlp2x_gelu but a bare nn.Linear for
 * linear (llava/model/multimodal_projector/builder.py), hence no ".0." there. HF's
 * LlavaMultiModalProjector always has linear_1 and linear_2; a linear projector fills only linear_1. */
typedef struct projector_name {
    const char *ours, *llava, *hf;
} projector_name;

static const projector_name mlp2x_gelu_names[] = {
    {"projector.0.weight", "model.mm_projector.0.weight", "multi_modal_projector.linear_1.weight"},
    {"projector.0.bias", "model.mm_projector.0.bias", "multi_modal_projector.linear_1.bias"},
    {"projector.2.weight", "model.mm_projector.2.weight", "multi_modal_projector.linear_2.weight"},
    {"projector.2.bias", "model.mm_projector.2.bias", "multi_modal_projector.linear_2.bias"},
};
static const projector_name linear_names[] = {
    {"projector.0.weight", "model.mm_projector.weight", "multi_modal_projector.linear_1.weight"},
    {"projector.0.bias", "model.mm_projector.bias", "multi_modal_projector.linear_1.bias"},
};

static tga_status write_projector_file(tga_model *m, const projector_name *names, int n, int hf,
                                       const char *path, tga_st_dtype dtype) {
    tensor_set s = {0};
    tga_status st = TGA_OK;
    for (int i = 0; i < n && st == TGA_OK; i++)
        st = tensor_set_add(&s, m, names[i].ours, hf ? names[i].hf : names[i].llava, dtype);
    if (st == TGA_OK) st = tga_st_write(path, s.tensors, s.n, &pt_format, 1);
    tensor_set_free(&s);
    return st;
}

tga_status tga_export_projector(tga_model *m, const tga_model_dims *dims, const char *dir,
                                tga_st_dtype dtype) {
    int linear = dims->projector == TGA_PROJ_LINEAR;
    const projector_name *names = linear ? linear_names : mlp2x_gelu_names;
    int n = linear ? 2 : 4;
    char path[1200];
    snprintf(path, sizeof path, "%s/mm_projector.safetensors", dir);
    TGA_TRY(write_projector_file(m, names, n, 0, path, dtype));
    snprintf(path, sizeof path, "%s/multi_modal_projector.safetensors", dir);
    return write_projector_file(m, names, n, 1, path, dtype);
}

/* ---- the language model ------------------------------------------------------------------------- */

/* A tied head is the embedding itself; save_pretrained leaves lm_head.weight out of the file then
 * and from_pretrained re-ties it (tie_word_embeddings in config.json). */
static tga_status collect_language_model(tga_model *m, const tga_model_dims *d, tga_st_dtype dtype,
                                         tensor_set *s) {
    char hf[128];
    tga_hf_name("tok_embeddings", hf, sizeof hf);
    TGA_TRY(tensor_set_add(s, m, "tok_embeddings", hf, dtype));
    for (int l = 0; l < d->n_layers; l++)
        for (int i = 0; i < tga_hf_n_layer_names; i++) {
            char ours[64];
            snprintf(ours, sizeof ours, "layers.%d.%s", l, tga_hf_layer_names[i].ours);
            tga_hf_name(ours, hf, sizeof hf);
            TGA_TRY(tensor_set_add(s, m, ours, hf, dtype));
        }
    tga_hf_name("final_norm", hf, sizeof hf);
    TGA_TRY(tensor_set_add(s, m, "final_norm", hf, dtype));
    tga_hf_name("lm_head", hf, sizeof hf);
    if (!d->tie_embeddings) TGA_TRY(tensor_set_add(s, m, "lm_head", hf, dtype));
    return TGA_OK;
}

/* Keys as transformers' LlamaConfig / MistralConfig name them. Attention is full causal (Mistral's
 * sliding_window null), RoPE unscaled, no biases. */
static json_t *hf_config_json(const tga_config *cfg, const tga_export_options *o) {
    int mistral = o->arch == TGA_EXPORT_MISTRAL;
    json_t *j = json_object();
    json_object_set_new(j, "architectures",
                        json_pack("[s]", mistral ? "MistralForCausalLM" : "LlamaForCausalLM"));
    json_object_set_new(j, "model_type", json_string(mistral ? "mistral" : "llama"));
    json_object_set_new(j, "hidden_size", json_integer(cfg->model.dim));
    json_object_set_new(j, "intermediate_size", json_integer(cfg->model.ffn_dim));
    json_object_set_new(j, "num_hidden_layers", json_integer(cfg->model.n_layers));
    json_object_set_new(j, "num_attention_heads", json_integer(cfg->model.n_heads));
    json_object_set_new(j, "num_key_value_heads", json_integer(cfg->model.n_kv_heads));
    json_object_set_new(j, "head_dim", json_integer(tga_config_head_dim(cfg)));
    json_object_set_new(j, "vocab_size", json_integer(cfg->model.vocab_size));
    json_object_set_new(j, "max_position_embeddings", json_integer(cfg->model.max_seq_len));
    json_object_set_new(j, "rms_norm_eps", json_real(cfg->model.norm_eps));
    json_object_set_new(j, "rope_theta", json_real(cfg->model.rope_theta));
    json_object_set_new(j, "rope_scaling", json_null());
    json_object_set_new(j, "hidden_act", json_string("silu"));
    json_object_set_new(j, "attention_bias", json_false());
    json_object_set_new(j, "mlp_bias", json_false());
    if (mistral) json_object_set_new(j, "sliding_window", json_null());
    json_object_set_new(j, "tie_word_embeddings", json_boolean(cfg->model.tie_embeddings));
    json_object_set_new(j, "initializer_range", json_real(cfg->model.init_std));
    json_object_set_new(j, "torch_dtype", json_string(o->dtype == TGA_ST_BF16 ? "bfloat16" : "float32"));
    json_object_set_new(j, "use_cache", json_true());
    if (o->bos_id >= 0) json_object_set_new(j, "bos_token_id", json_integer(o->bos_id));
    if (o->eos_id >= 0) json_object_set_new(j, "eos_token_id", json_integer(o->eos_id));
    return j;
}

/* 15 significant digits print the config's values as written (1e-5, not 1.0000000000000001e-05);
 * 17 when that would not read back the same doubles. */
static char *dump_exact(const json_t *j) {
    size_t flags = JSON_INDENT(2) | JSON_PRESERVE_ORDER;
    char *text = json_dumps(j, flags | JSON_REAL_PRECISION(15));
    json_t *back = text ? json_loads(text, 0, NULL) : NULL;
    int exact = back && json_equal(back, j);
    json_decref(back);
    if (exact) return text;
    free(text);
    return json_dumps(j, flags | JSON_REAL_PRECISION(17));
}

static tga_status write_hf_config(const tga_config *cfg, const tga_export_options *o, const char *dir) {
    json_t *j = hf_config_json(cfg, o);
    char *text = j ? dump_exact(j) : NULL;
    json_decref(j);
    if (!text) return tga_error(TGA_ERR_NOMEM, "out of memory building %s/config.json", dir);
    size_t len = strlen(text);
    char *line = realloc(text, len + 2);
    if (!line) {
        free(text);
        return tga_error(TGA_ERR_NOMEM, "out of memory building %s/config.json", dir);
    }
    line[len] = '\n';
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    tga_status st = tga_file_write_atomic(path, line, len + 1);
    free(line);
    return st;
}

tga_status tga_export_language_model(tga_model *m, const tga_config *cfg, const char *dir,
                                     const tga_export_options *opt, int *n_shards, uint64_t *tensor_bytes) {
    if (opt->dtype != TGA_ST_F32 && opt->dtype != TGA_ST_BF16)
        return tga_error(TGA_ERR_INTERNAL, "export: dtype %s is neither F32 nor BF16",
                         tga_st_dtype_name(opt->dtype));
    tga_model_dims dims;
    tga_setup_dims(cfg, &dims);
    tensor_set s = {0};
    tga_status st = collect_language_model(m, &dims, opt->dtype, &s);
    if (st == TGA_OK)
        st = tga_st_write_sharded(dir, "model", s.tensors, s.n, &pt_format, 1, opt->shard_bytes, n_shards);
    *tensor_bytes = s.bytes;
    tensor_set_free(&s);
    /* config.json last: a directory with it is a complete model */
    return st == TGA_OK ? write_hf_config(cfg, opt, dir) : st;
}
