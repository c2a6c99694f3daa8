#define _POSIX_C_SOURCE 200809L /* access */
#include "trainer/weights.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/bf16.h"
#include "kernels/ops.h"
#include "runtime/ckpt.h"
#include "runtime/log.h"
#include "runtime/safetensors.h"
#include "trainer/hf_names.h"

static tga_status load_params_file(tga_model *m, const char *path) {
    tga_ckpt_reader *rd;
    TGA_TRY(tga_ckpt_reader_open(&rd, path));
    int loaded = 0;
    tga_status st = TGA_OK;
    for (int i = 0; i < tga_model_param_count(m) && st == TGA_OK; i++) {
        tga_param *p = tga_model_param(m, i);
        if (!tga_ckpt_reader_find(rd, p->name)) continue;
        float *host = malloc(p->numel * sizeof(float));
        if (!host) {
            st = tga_error(TGA_ERR_NOMEM, "out of memory loading %s", p->name);
            break;
        }
        int64_t shape[2] = {p->shape[0], p->shape[1]};
        st = tga_ckpt_read_tensor(rd, p->name, TGA_CKPT_F32, p->ndim, shape, host);
        if (st == TGA_OK) st = tga_model_param_upload(m, p, host);
        free(host);
        loaded++;
    }
    tga_ckpt_reader_close(rd);
    if (st == TGA_OK && loaded == 0)
        return tga_error(TGA_ERR_FORMAT, "%s holds none of this model's parameters (a different model?)", path);
    return st;
}

tga_status tga_weights_resolve(const char *path, char *out, size_t size) {
    char probe[1200];
    snprintf(probe, sizeof probe, "%s/DONE", path);
    if (access(probe, F_OK) == 0) {
        snprintf(out, size, "%s", path);
        return TGA_OK;
    }
    int64_t step;
    int found;
    TGA_TRY(tga_ckpt_find_latest(path, &step, &found));
    if (!found) return tga_error(TGA_ERR_CONFIG, "%s: not a checkpoint, and no complete checkpoint in it", path);
    return tga_ckpt_path(path, step, NULL, out, size);
}

static tga_status load_weights(tga_model *m, const char *path, int depth, char *params_path, size_t size);

/* A tga checkpoint, after its base (a checkpoint or a Hugging Face directory) */
static tga_status load_chain(tga_model *m, const char *path, int depth, char *params_path, size_t size) {
    if (depth > 8) return tga_error(TGA_ERR_FORMAT, "%s: the chain of base checkpoints is too deep (a cycle?)", path);
    char dir[1024], params[1100];
    TGA_TRY(tga_weights_resolve(path, dir, sizeof dir));
    void *state = NULL;
    size_t n;
    TGA_TRY(tga_ckpt_read_blob(dir, "state.json", 1 << 20, &state, &n));
    json_error_t err;
    json_t *j = json_loads(state, 0, &err);
    free(state);
    if (!j) return tga_error(TGA_ERR_FORMAT, "%s/state.json: %s (line %d)", dir, err.text, err.line);
    const char *base = json_string_value(json_object_get(j, "base"));
    tga_status st = base && *base ? load_weights(m, base, depth + 1, NULL, 0) : TGA_OK;
    json_decref(j);
    TGA_TRY(st);
    snprintf(params, sizeof params, "%s/params.tgat", dir);
    TGA_TRY(load_params_file(m, params));
    if (params_path) snprintf(params_path, size, "%s", params);
    return TGA_OK;
}

/* ---- Hugging Face model directories --------------------------------------------------------------- */

static int file_exists(const char *dir, const char *name) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static int is_hf_dir(const char *dir) {
    return file_exists(dir, "config.json") &&
           (file_exists(dir, "model.safetensors") || file_exists(dir, "model.safetensors.index.json"));
}

/* config.json's key (an integer, or `fallback` when absent or null, as transformers reads it) must
 * equal ours, named by its tga key. */
static tga_status check_hf_int(const char *dir, const json_t *cfg, const char *key, json_int_t fallback,
                               long long ours, const char *tga_key) {
    const json_t *v = json_object_get(cfg, key);
    if (v && !json_is_null(v) && !json_is_integer(v))
        return tga_error(TGA_ERR_FORMAT, "%s/config.json: %s must be an integer", dir, key);
    json_int_t theirs = json_is_integer(v) ? json_integer_value(v) : fallback;
    if (theirs != ours)
        return tga_error(TGA_ERR_CONFIG, "%s/config.json has %s %lld; this run's %s is %lld", dir, key,
                         (long long)theirs, tga_key, ours);
    return TGA_OK;
}

static tga_status check_hf_real(const char *dir, const json_t *cfg, const char *key, double fallback,
                                double ours, const char *tga_key) {
    const json_t *v = json_object_get(cfg, key);
    if (v && !json_is_null(v) && !json_is_number(v))
        return tga_error(TGA_ERR_FORMAT, "%s/config.json: %s must be a number", dir, key);
    double theirs = json_is_number(v) ? json_number_value(v) : fallback;
    if (fabs(theirs - ours) > 1e-6 * fabs(theirs))
        return tga_error(TGA_ERR_CONFIG, "%s/config.json has %s %g; this run's %s is %g", dir, key, theirs,
                         tga_key, ours);
    return TGA_OK;
}

/* What tga computes: a Llama/Mistral decoder with SiLU, unscaled RoPE and no biases. A key that
 * asks for something else (absent or null is the plain default) is refused. */
static tga_status check_hf_architecture(const char *dir, const json_t *cfg, const char *model_type) {
    if (strcmp(model_type, "llama") != 0 && strcmp(model_type, "mistral") != 0)
        return tga_error(TGA_ERR_CONFIG, "%s/config.json: model_type %s; tga runs llama and mistral decoders", dir,
                         model_type);
    const json_t *act = json_object_get(cfg, "hidden_act");
    if (act && !json_is_null(act) && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0))
        return tga_error(TGA_ERR_CONFIG, "%s/config.json: hidden_act must be silu (tga's SwiGLU)", dir);
    const json_t *scaling = json_object_get(cfg, "rope_scaling");
    if (scaling && !json_is_null(scaling))
        return tga_error(TGA_ERR_CONFIG, "%s/config.json: rope_scaling is set; tga's RoPE is unscaled", dir);
    static const char *const biases[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++) {
        const json_t *bias = json_object_get(cfg, biases[i]);
        if (bias && json_is_true(bias))
            return tga_error(TGA_ERR_CONFIG, "%s/config.json: %s is true; tga's decoder has no biases", dir,
                             biases[i]);
    }
    return TGA_OK;
}

/* The decoder config.json describes must be this run's model (transformers' defaults of its
 * model_type where a key is absent), or the weights would load into the wrong shapes or compute
 * something else. max_len: the longest sequence this run trains on (data.max_len). */
static tga_status check_hf_config(const char *dir, const tga_model_dims *d, int max_len) {
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t err;
    json_t *cfg = json_load_file(path, 0, &err);
    if (!cfg || !json_is_object(cfg)) {
        json_decref(cfg);
        return tga_error(TGA_ERR_FORMAT, "%s: %s (line %d)", path, cfg ? "not a JSON object" : err.text,
                         err.line);
    }
    const json_t *type = json_object_get(cfg, "model_type");
    const char *model_type = json_is_string(type) ? json_string_value(type) : "llama";
    const int mistral = strcmp(model_type, "mistral") == 0;
    const int hd = d->head_dim ? d->head_dim : d->dim / d->n_heads;
    const json_t *heads = json_object_get(cfg, "num_attention_heads");
    /* MistralConfig defaults to 8 kv heads and a 4096 window; LlamaConfig to as many kv heads as heads */
    json_int_t kv_default = mistral ? 8 : json_is_integer(heads) ? json_integer_value(heads) : 0;
    const json_t *tie = json_object_get(cfg, "tie_word_embeddings");
    tga_status st = check_hf_architecture(dir, cfg, model_type);
    if (st == TGA_OK) st = check_hf_int(dir, cfg, "hidden_size", 0, d->dim, "model.dim");
    if (st == TGA_OK) st = check_hf_int(dir, cfg, "num_hidden_layers", 0, d->n_layers, "model.n_layers");
    if (st == TGA_OK) st = check_hf_int(dir, cfg, "num_attention_heads", 0, d->n_heads, "model.n_heads");
    if (st == TGA_OK)
        st = check_hf_int(dir, cfg, "num_key_value_heads", kv_default, d->n_kv_heads, "model.n_kv_heads");
    if (st == TGA_OK && json_is_integer(json_object_get(cfg, "head_dim")))
        st = check_hf_int(dir, cfg, "head_dim", 0, hd, "model.head_dim");
    if (st == TGA_OK) st = check_hf_int(dir, cfg, "intermediate_size", 0, d->ffn_dim, "model.ffn_dim");
    if (st == TGA_OK) st = check_hf_int(dir, cfg, "vocab_size", 0, d->vocab_size, "model.vocab_size");
    if (st == TGA_OK) st = check_hf_real(dir, cfg, "rope_theta", 10000.0, d->rope_theta, "model.rope_theta");
    if (st == TGA_OK) st = check_hf_real(dir, cfg, "rms_norm_eps", 1e-6, d->norm_eps, "model.norm_eps");
    const json_t *window = json_object_get(cfg, "sliding_window");
    json_int_t window_len = json_is_integer(window) ? json_integer_value(window) : mistral && !window ? 4096 : 0;
    if (st == TGA_OK && window_len > 0 && window_len < max_len)
        st = tga_error(TGA_ERR_CONFIG,
                       "%s/config.json: sliding_window %lld is shorter than data.max_len %d; tga's attention is "
                       "full causal, which equals it only up to the window",
                       dir, (long long)window_len, max_len);
    if (st == TGA_OK && (tie && json_is_true(tie)) != (d->tie_embeddings != 0))
        st = tga_error(TGA_ERR_CONFIG, "%s/config.json has tie_word_embeddings %s; this run's model.tie_embeddings is %s",
                       dir, tie && json_is_true(tie) ? "true" : "false", d->tie_embeddings ? "true" : "false");
    json_decref(cfg);
    return st;
}

/* Which file of the directory holds each tensor: the index's weight_map, or the single file. One
 * shard is open at a time (tensors are read roughly in the shards' order). */
typedef struct {
    const char *dir;
    json_t *weight_map; /* NULL: everything is in model.safetensors */
    tga_st_file *open;
    char open_name[256];
} hf_files;

static tga_status hf_files_open(hf_files *h, const char *dir) {
    memset(h, 0, sizeof *h);
    h->dir = dir;
    if (!file_exists(dir, "model.safetensors.index.json")) return TGA_OK;
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t err;
    json_t *index = json_load_file(path, 0, &err);
    json_t *map = index ? json_object_get(index, "weight_map") : NULL;
    if (!json_is_object(map)) {
        json_decref(index);
        return tga_error(TGA_ERR_FORMAT, "%s: %s", path, index ? "no \"weight_map\" object" : err.text);
    }
    h->weight_map = json_incref(map);
    json_decref(index);
    return TGA_OK;
}

static void hf_files_close(hf_files *h) {
    tga_st_close(h->open);
    json_decref(h->weight_map);
}

/* The open file holding tensor `name` (NULL with an error set when the directory lacks it). */
static tga_st_file *hf_file_for(hf_files *h, const char *name) {
    const char *file = "model.safetensors";
    if (h->weight_map) {
        file = json_string_value(json_object_get(h->weight_map, name));
        if (!file || strchr(file, '/') || strlen(file) >= sizeof h->open_name) {
            tga_error(TGA_ERR_FORMAT, "%s/model.safetensors.index.json: no file in the directory for %s", h->dir,
                      name);
            return NULL;
        }
    }
    if (h->open && strcmp(h->open_name, file) == 0) return h->open;
    tga_st_close(h->open);
    h->open = NULL;
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", h->dir, file);
    if (tga_st_open(&h->open, path) != TGA_OK) return NULL;
    snprintf(h->open_name, sizeof h->open_name, "%s", file);
    return h->open;
}

/* Every tensor the directory lists must be one tga loads (the rotary tables some checkpoints carry
 * excepted): a bias or any other extra tensor means a model tga does not compute. */
static tga_status check_no_extra_tensors(hf_files *h, tga_model *m) {
    tga_st_file *single = h->weight_map ? NULL : hf_file_for(h, "model.safetensors");
    if (!h->weight_map && !single) return tga_error_code();
    int n = h->weight_map ? (int)json_object_size(h->weight_map) : tga_st_count(single);
    void *it = h->weight_map ? json_object_iter(h->weight_map) : NULL;
    for (int k = 0; k < n; k++) {
        const char *name = h->weight_map ? json_object_iter_key(it) : tga_st_info_at(single, k)->name;
        if (h->weight_map) it = json_object_iter_next(h->weight_map, it);
        if (strstr(name, "rotary_emb.inv_freq")) continue;
        int known = 0;
        for (int i = 0; i < tga_model_param_count(m) && !known; i++) {
            char hf[160];
            known = tga_hf_name(tga_model_param(m, i)->name, hf, sizeof hf) && strcmp(hf, name) == 0;
        }
        if (!known)
            return tga_error(TGA_ERR_CONFIG, "%s: tensor %s is not part of tga's model (a bias, or another architecture)",
                             h->dir, name);
    }
    return TGA_OK;
}

/* One tensor of the directory, of p's shape, widened to float (F32, BF16 or F16 on file). */
static tga_status read_hf_tensor(hf_files *h, const char *name, const tga_param *p, float *out) {
    tga_st_file *f = hf_file_for(h, name);
    if (!f) return tga_error_code();
    const tga_st_info *info = tga_st_find(f, name);
    if (!info)
        return tga_error(TGA_ERR_FORMAT, "%s: the model directory has no tensor %s (tga's %s)", h->dir, name,
                         p->name);
    int64_t want[2] = {p->shape[0], p->ndim > 1 ? p->shape[1] : 0};
    if (info->ndim != p->ndim || info->shape[0] != want[0] || (p->ndim > 1 && info->shape[1] != want[1]))
        return tga_error(TGA_ERR_CONFIG, "%s: %s has shape [%lld%s%lld], this run's %s is [%lld%s%lld]",
                         h->dir, name, (long long)info->shape[0], info->ndim > 1 ? ", " : "",
                         info->ndim > 1 ? (long long)info->shape[1] : 0LL, p->name, (long long)want[0],
                         p->ndim > 1 ? ", " : "", p->ndim > 1 ? (long long)want[1] : 0LL);
    if (info->dtype == TGA_ST_F32) return tga_st_read(f, name, TGA_ST_F32, out, p->numel * sizeof(float));
    if (info->dtype != TGA_ST_BF16 && info->dtype != TGA_ST_F16)
        return tga_error(TGA_ERR_FORMAT, "%s: %s is %s; expected F32, BF16 or F16", h->dir, name,
                         tga_st_dtype_name(info->dtype));
    uint16_t *half = malloc(p->numel * sizeof *half);
    if (!half) return tga_error(TGA_ERR_NOMEM, "out of memory reading %s", name);
    tga_status st = tga_st_read(f, name, info->dtype, half, p->numel * sizeof *half);
    for (size_t i = 0; st == TGA_OK && i < p->numel; i++)
        out[i] = info->dtype == TGA_ST_BF16 ? tga_bf16_to_float(half[i]) : tga_f16_to_float(half[i]);
    free(half);
    return st;
}

/* A transformers model directory (config.json + model.safetensors or a sharded set with its
 * index): every language-model parameter, by its HF name; the projector keeps its values. */
static tga_status load_hf_dir(tga_model *m, const char *dir) {
    TGA_TRY(check_hf_config(dir, tga_model_get_dims(m), tga_model_get_shape(m)->max_len));
    hf_files h;
    TGA_TRY(hf_files_open(&h, dir));
    tga_status st = check_no_extra_tensors(&h, m);
    for (int i = 0; i < tga_model_param_count(m) && st == TGA_OK; i++) {
        tga_param *p = tga_model_param(m, i);
        char hf[160];
        if (!tga_hf_name(p->name, hf, sizeof hf)) continue;
        float *host = malloc(p->numel * sizeof(float));
        st =
            host ? read_hf_tensor(&h, hf, p, host) : tga_error(TGA_ERR_NOMEM, "out of memory loading %s", hf);
        if (st == TGA_OK) st = tga_model_param_upload(m, p, host);
        free(host);
    }
    hf_files_close(&h);
    return st;
}

static tga_status load_weights(tga_model *m, const char *path, int depth, char *params_path, size_t size) {
    if (file_exists(path, "config.json") && !is_hf_dir(path))
        return tga_error(TGA_ERR_CONFIG,
                         "%s has a config.json but no model.safetensors or model.safetensors.index.json: tga reads "
                         "Hugging Face weights as safetensors (convert .bin files with transformers' "
                         "save_pretrained(..., safe_serialization=True))",
                         path);
    if (is_hf_dir(path)) {
        TGA_TRY(load_hf_dir(m, path));
        if (params_path) snprintf(params_path, size, "%s", path); /* identity: every model file (tga_path_hash) */
        return TGA_OK;
    }
    return load_chain(m, path, depth, params_path, size);
}

tga_status tga_weights_load(tga_model *m, const char *path, char *params_path, size_t size) {
    return load_weights(m, path, 0, params_path, size);
}
