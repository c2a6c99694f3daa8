/* train.init_from on a Hugging Face model directory (trainer/weights.c): a directory written the
 * way save_pretrained writes one (config.json, sharded safetensors with their index, or one file;
 * tensors in F32, BF16 and F16) loads every language-model parameter by its HF name, bit for bit
 * the file's values widened, and leaves the projector alone; into bf16 weights too. A config.json
 * that describes another model (each key, transformers' defaults for absent or null keys), an
 * index naming a file outside the directory, a missing or extra tensor, a wrong shape or dtype,
 * PyTorch .bin weights only: errors naming the key or tensor. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "kernels/bf16.h"
#include "kernels/ops.h"
#include "runtime/backend.h"
#include "runtime/fileio.h"
#include "runtime/safetensors.h"
#include "tests/testutil.h"
#include "trainer/hf_names.h"
#include "trainer/model.h"
#include "trainer/weights.h"

static char tmp_dir[] = "/tmp/tga_test_hf_import_XXXXXX";

static const tga_model_dims dims = {.dim = 32,
                                    .n_layers = 2,
                                    .n_heads = 4,
                                    .n_kv_heads = 2,
                                    .ffn_dim = 40,
                                    .vocab_size = 50,
                                    .max_seq_len = 16,
                                    .rope_theta = 1e6,
                                    .norm_eps = 1e-5f,
                                    .projector = TGA_PROJ_MLP2X_GELU,
                                    .vision_dim = 12};

static tga_model *new_model(uint64_t seed, int bf16) {
    tga_model_dims d = dims;
    d.bf16_weights = bf16;
    tga_run_shape s = {.trainable = TGA_TRAIN_STAGE1,
                       .micro_batch = 1,
                       .max_len = 16,
                       .max_images = 1,
                       .image_tokens = 2,
                       .ce_chunk = 4};
    tga_model *m = NULL;
    CHECK(tga_model_create(&m, &d, &s) == TGA_OK, "create: %s", tga_error_message());
    CHECK(tga_model_init_random(m, seed, 0.5f) == TGA_OK, "init: %s", tga_error_message());
    return m;
}

static float *values_of(tga_param *p) {
    float *host = malloc(p->numel * sizeof *host);
    tga_model_param_download(p, host);
    return host;
}

/* What a file holds: each tensor's bytes in its dtype, and those values widened (the expected load). */
typedef struct {
    tga_st_tensor tensors[64];
    void *bytes[64];
    float *expected[64];
    char names[64][160];
    int n;
} hf_set;

static float f16_round_trip_value(float x, uint16_t *h) {
    /* small magnitudes: exact in f16 as sign, 10 mantissa bits and a normal exponent */
    int e;
    float f = frexpf(x, &e);
    if (x == 0 || e < -13) {
        *h = 0;
        return 0.0f;
    }
    int mant = (int)lrintf(fabsf(f) * 2048.0f); /* 11 significant bits, 1024 <= mant <= 2048 */
    if (mant == 2048) mant = 1024, e++;
    *h = (uint16_t)((x < 0 ? 0x8000 : 0) | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)(mant - 1024));
    return tga_f16_to_float(*h);
}

/* The model's language-model parameters under their HF names, in dtype_of(i)'s type. */
static void build_set(hf_set *s, tga_model *m, const char *skip, int wrong_shape) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        char hf[160];
        if (!tga_hf_name(p->name, hf, sizeof hf) || (skip && strcmp(hf, skip) == 0)) continue;
        int k = s->n++;
        snprintf(s->names[k], sizeof s->names[k], "%s", hf);
        float *v = values_of(p);
        tga_st_dtype dtype = k % 3 == 0 ? TGA_ST_F32 : k % 3 == 1 ? TGA_ST_BF16 : TGA_ST_F16;
        s->expected[k] = malloc(p->numel * sizeof(float));
        if (dtype == TGA_ST_F32) {
            s->bytes[k] = v;
            memcpy(s->expected[k], v, p->numel * sizeof(float));
        } else {
            uint16_t *h = malloc(p->numel * sizeof *h);
            for (size_t j = 0; j < p->numel; j++) {
                if (dtype == TGA_ST_BF16) {
                    h[j] = tga_bf16_from_float(v[j]);
                    s->expected[k][j] = tga_bf16_to_float(h[j]);
                } else {
                    s->expected[k][j] = f16_round_trip_value(v[j], &h[j]);
                }
            }
            free(v);
            s->bytes[k] = h;
        }
        s->tensors[k] = (tga_st_tensor){.name = s->names[k],
                                        .dtype = dtype,
                                        .ndim = p->ndim,
                                        .shape = {p->shape[0], p->ndim > 1 ? p->shape[1] : 0},
                                        .data = s->bytes[k]};
        if (wrong_shape && k == 0) s->tensors[k].shape[0] -= 1; /* its bytes then fit the smaller shape */
    }
}

static void free_set(hf_set *s) {
    for (int k = 0; k < s->n; k++)
        free(s->bytes[k]), free(s->expected[k]);
}

/* config.json of the test model as MistralConfig writes it, with `overrides` (a JSON object) on top. */
static void write_config(const char *dir, const char *overrides) {
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg =
        json_pack("{s:[s],s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:b,s:s,s:s,s:n,s:i}", "architectures",
                  "MistralForCausalLM", "model_type", "mistral", "hidden_size", 32, "intermediate_size", 40,
                  "num_hidden_layers", 2, "num_attention_heads", 4, "num_key_value_heads", 2, "vocab_size",
                  50, "rope_theta", 1e6, "rms_norm_eps", 1e-5, "tie_word_embeddings", 0, "torch_dtype",
                  "bfloat16", "hidden_act", "silu", "rope_scaling", "sliding_window", 4096);
    json_t *extra = json_loads(overrides, 0, NULL);
    CHECK(cfg && extra && json_object_update(cfg, extra) == 0 && json_dump_file(cfg, path, 0) == 0,
          "cannot write %s with %s", path, overrides);
    json_decref(cfg);
    json_decref(extra);
}

/* A model directory named `name` with the set, sharded at shard_bytes (0: one file). */
static const char *write_dir(const char *name, hf_set *s, uint64_t shard_bytes) {
    const char *dir = tu_in_dir(tmp_dir, name);
    mkdir(dir, 0755);
    const tga_st_meta meta[1] = {{"format", "pt"}};
    int shards = 0;
    CHECK(tga_st_write_sharded(dir, "model", s->tensors, s->n, meta, 1,
                               shard_bytes ? shard_bytes : (1u << 30), &shards) == TGA_OK,
          "writing %s: %s", dir, tga_error_message());
    CHECK(shard_bytes == 0 || shards > 2, "%s: expected several shards, got %d", name, shards);
    write_config(dir, "{}");
    return dir;
}

static void check_loads(const char *name, uint64_t shard_bytes, int bf16) {
    tga_model *src = new_model(1, 0), *dst = new_model(2, bf16);
    hf_set s;
    build_set(&s, src, NULL, 0);
    const char *dir = write_dir(name, &s, shard_bytes);
    tga_param *proj = tga_model_find_param(dst, "projector.0.weight");
    float *proj_before = values_of(proj);
    char identity[700] = "";
    CHECK(tga_weights_load(dst, dir, identity, sizeof identity) == TGA_OK, "%s: %s", name,
          tga_error_message());
    int wrong = 0;
    for (int k = 0; k < s.n; k++) {
        for (int i = 0; i < tga_model_param_count(dst); i++) {
            tga_param *p = tga_model_param(dst, i);
            char hf[160];
            if (!tga_hf_name(p->name, hf, sizeof hf) || strcmp(hf, s.names[k]) != 0) continue;
            float *got = values_of(p);
            for (size_t j = 0; j < p->numel; j++) {
                /* bf16 weights hold the matrices rounded once more; norms stay as loaded */
                float want = bf16 && p->ndim == 2 ? tga_bf16_round(s.expected[k][j]) : s.expected[k][j];
                wrong += memcmp(&got[j], &want, sizeof want) != 0;
            }
            free(got);
        }
    }
    CHECK(wrong == 0, "%s: %d loaded values differ from the files'", name, wrong);
    float *proj_after = values_of(proj);
    CHECK(memcmp(proj_before, proj_after, proj->numel * sizeof(float)) == 0, "%s: the projector changed",
          name);
    CHECK(strcmp(identity, dir) == 0, "%s: base identity %s", name, identity);
    free(proj_before), free(proj_after);
    free_set(&s);
    tga_model_free(src), tga_model_free(dst);
}

/* The base identity of a model directory (tga_path_hash) covers every shard's bytes and
 * config.json: one flipped byte in the last shard, or an edited config, changes it. */
static void check_identity(void) {
    tga_model *src = new_model(1, 0);
    hf_set s;
    build_set(&s, src, NULL, 0);
    const char *dir = write_dir("identity", &s, 4096);
    uint64_t size0, hash0, size1, hash1;
    CHECK(tga_path_hash(dir, &size0, &hash0) == TGA_OK && tga_path_hash(dir, &size1, &hash1) == TGA_OK &&
              size0 == size1 && hash0 == hash1,
          "identity of %s: %s", dir, tga_error_message());
    char shard[700]; /* the last shard, whatever the count */
    int shards = 2;
    for (;; shards++) {
        snprintf(shard, sizeof shard, "%s/model-%05d-of-%05d.safetensors", dir, shards, shards);
        if (access(shard, F_OK) == 0 || shards > 999) break;
    }
    FILE *f = fopen(shard, "r+b");
    CHECK(f != NULL, "no %s", shard);
    if (f) {
        fseek(f, -1, SEEK_END);
        int c = fgetc(f);
        fseek(f, -1, SEEK_END);
        fputc(c ^ 1, f);
        fclose(f);
    }
    CHECK(tga_path_hash(dir, &size1, &hash1) == TGA_OK && hash1 != hash0,
          "a changed shard keeps the identity");
    write_config(dir, "{\"torch_dtype\": \"float32\"}");
    uint64_t size2, hash2;
    CHECK(tga_path_hash(dir, &size2, &hash2) == TGA_OK && hash2 != hash1,
          "a changed config.json keeps the identity");
    free_set(&s);
    tga_model_free(src);
}

static void expect_error(const char *name, const char *dir, const char *message) {
    tga_model *m = new_model(3, 0);
    tga_status st = tga_weights_load(m, dir, NULL, 0);
    CHECK(st != TGA_OK && strstr(tga_error_message(), message), "%s: expected an error with '%s', got %d: %s",
          name, message, st, st != TGA_OK ? tga_error_message() : "");
    tga_error_clear();
    tga_model_free(m);
}

/* config.json keys that describe another model, each named in the error. */
static void check_config_errors(const char *dir) {
    static const char *const cases[][2] = {
        {"{\"hidden_size\": 64}", "hidden_size 64; this run's model.dim is 32"},
        {"{\"intermediate_size\": 44}", "intermediate_size 44; this run's model.ffn_dim is 40"},
        {"{\"num_hidden_layers\": 3}", "num_hidden_layers 3; this run's model.n_layers is 2"},
        {"{\"vocab_size\": 51}", "vocab_size 51; this run's model.vocab_size is 50"},
        {"{\"rope_theta\": 10000.0}", "rope_theta 10000; this run's model.rope_theta is 1e+06"},
        {"{\"rope_theta\": null}", "rope_theta 10000; this run's model.rope_theta"}, /* null: the default */
        {"{\"rms_norm_eps\": 1e-6}", "rms_norm_eps 1e-06; this run's model.norm_eps"},
        {"{\"tie_word_embeddings\": true}",
         "tie_word_embeddings true; this run's model.tie_embeddings is false"},
        {"{\"num_key_value_heads\": null}",
         "num_key_value_heads 8; this run's"}, /* MistralConfig's default */
        {"{\"model_type\": \"llama\", \"num_key_value_heads\": null}", "num_key_value_heads 4; this run's"},
        {"{\"model_type\": \"qwen2\"}", "model_type qwen2"},
        {"{\"hidden_act\": \"gelu\"}", "hidden_act must be silu"},
        {"{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", "rope_scaling is set"},
        {"{\"mlp_bias\": true}", "mlp_bias is true"},
        {"{\"sliding_window\": 8}", "sliding_window 8 is shorter than data.max_len 16"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_config(dir, cases[i][0]);
        expect_error(cases[i][0], dir, cases[i][1]);
    }
    write_config(dir, "{}");
}

/* The index's weight_map entry of `name` replaced by `file`. */
static void point_index(const char *dir, const char *name, const char *file) {
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_t *index = json_load_file(path, 0, NULL);
    json_t *map = index ? json_object_get(index, "weight_map") : NULL;
    CHECK(map && json_object_set_new(map, name, json_string(file)) == 0 &&
              json_dump_file(index, path, 0) == 0,
          "cannot rewrite %s", path);
    json_decref(index);
}

static void check_errors(void) {
    tga_model *src = new_model(1, 0);
    hf_set s;
    build_set(&s, src, NULL, 0);
    check_config_errors(write_dir("configs", &s, 0));
    const char *escaping = write_dir("escaping", &s, 4096);
    point_index(escaping, "model.norm.weight", "../configs/model.safetensors");
    expect_error("an index naming a file outside the directory", escaping,
                 "no file in the directory for model.norm.weight");
    free_set(&s);
    build_set(&s, src, "model.layers.1.mlp.up_proj.weight", 0);
    expect_error("a missing tensor", write_dir("missing", &s, 4096), "model.layers.1.mlp.up_proj.weight");
    free_set(&s);
    build_set(&s, src, NULL, 0);
    float bias[32] = {5};
    s.tensors[s.n++] = (tga_st_tensor){.name = "model.layers.0.self_attn.q_proj.bias",
                                       .dtype = TGA_ST_F32,
                                       .ndim = 1,
                                       .shape = {32},
                                       .data = bias};
    expect_error("a tensor tga has no place for", write_dir("extra", &s, 0),
                 "model.layers.0.self_attn.q_proj.bias is not part of tga's model");
    s.n--;
    s.tensors[0].dtype = TGA_ST_I32; /* the embedding's float bytes, declared as int32 */
    expect_error("an integer tensor", write_dir("int", &s, 0), "model.embed_tokens.weight is I32");
    free_set(&s);
    const char *bin_only = tu_in_dir(tmp_dir, "bin_only");
    mkdir(bin_only, 0755);
    write_config(bin_only, "{}");
    expect_error("PyTorch .bin weights only", bin_only,
                 "no model.safetensors or model.safetensors.index.json");
    build_set(&s, src, NULL, 1);
    expect_error("a wrong shape", write_dir("shape", &s, 0), "model.embed_tokens.weight has shape [49, 32]");
    free_set(&s);
    tga_model_free(src);
}

int main(void) {
    if (tga_backend_select("cpu", 1) != TGA_OK) return 1;
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    check_loads("sharded", 4096, 0);
    check_loads("single", 0, 0);
    check_loads("into_bf16", 4096, 1);
    check_identity();
    check_errors();
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return tu_finish("test_hf_import");
}
