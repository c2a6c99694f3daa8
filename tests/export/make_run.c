/* A run directory for `tga export` to read, without training: the model of a config, initialised as
 * trainer/train.c does (seed, then the train.init_from chain), its trainable parameters moved away
 * from their initial values, and a checkpoint written with the sequence and contents of train.c's
 * save_checkpoint. Also writes what export_check.py compares the exports with:
 *
 *   make_run RUN_DIR DUMP_DIR [--config F] [--set section.key=V ...]
 *
 *   DUMP_DIR/param.<name>.npy  every parameter of the model as tga holds it (float32)
 *   DUMP_DIR/tokens.npy        int32 [T], a fixed token sequence
 *   DUMP_DIR/logits.npy        float32 [T, V], tga's own forward of it */
#define _POSIX_C_SOURCE 200809L /* mkdir */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/ops.h"
#include "runtime/backend.h"
#include "runtime/ckpt.h"
#include "runtime/npy.h"
#include "runtime/rng.h"
#include "trainer/cli.h"
#include "trainer/setup.h"
#include "trainer/weights.h"

#define CHECKPOINT_STEP 7
#define FORWARD_TOKENS 13

/* fp32 values exactly halfway between two bf16 values: round-to-nearest-even sends the first two
 * down and the others up, which truncation or round-half-up would get wrong. */
static const uint32_t bf16_ties[] = {0x3f808000u, 0xbf808000u, 0x3f818000u, 0x3e018000u};
#define N_TIES 4

static tga_status make_dir(const char *path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return tga_error(TGA_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    return TGA_OK;
}

/* A trained-looking change to every trainable parameter, so that an export that ignored the
 * checkpoint would not match; norms leave 1 so that swapping two of them shows. */
static void perturb_trainable(tga_model *m, uint64_t seed) {
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        if (!p->trainable) continue;
        float *host = malloc(p->numel * sizeof(float));
        if (!host) continue;
        OPS->download(host, p->data, p->numel * sizeof(float));
        tga_rng_stream s = tga_rng_stream_make(seed, TGA_RNG_TEST, (uint64_t)i);
        float scale = p->ndim == 2 ? 1.0f / sqrtf((float)p->shape[1]) : 0.3f;
        for (size_t j = 0; j < p->numel; j++)
            host[j] += scale * tga_rng_normal(&s, j);
        for (size_t j = 0; j < N_TIES && j < p->numel; j++)
            memcpy(&host[j], &bf16_ties[j], sizeof(float));
        OPS->upload(p->data, host, p->numel * sizeof(float));
        free(host);
    }
}

/* ---- the checkpoint, as train.c's save_checkpoint writes it (one rank) --------------------------- */

static tga_status write_tensors(tga_model *m, tga_ckpt_writer *w, const char *file, int moments) {
    TGA_TRY(tga_ckpt_tensors_begin(w, file, tga_ckpt_default_codec()));
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        if (!p->trainable) continue;
        const float *srcs[3] = {p->data, p->adam_m, p->adam_v};
        static const char *prefix[3] = {"", "adam_m.", "adam_v."};
        for (int k = moments ? 1 : 0; k < (moments ? 3 : 1); k++) {
            float *host = malloc(p->numel * sizeof(float));
            if (!host) return tga_error(TGA_ERR_NOMEM, "out of memory saving %s", p->name);
            OPS->download(host, srcs[k], p->numel * sizeof(float));
            char name[200];
            snprintf(name, sizeof name, "%s%s", prefix[k], p->name);
            tga_ckpt_tensor t = {.name = name,
                                 .dtype = TGA_CKPT_F32,
                                 .ndim = p->ndim,
                                 .shape = {p->shape[0], p->shape[1]},
                                 .data = host};
            tga_status st = tga_ckpt_tensors_add(w, &t);
            free(host);
            TGA_TRY(st);
        }
    }
    return tga_ckpt_tensors_end(w);
}

static tga_status write_state(const tga_config *cfg, tga_ckpt_writer *w) {
    json_t *j = json_pack("{s:I,s:I,s:I,s:i,s:s,s:{s:I,s:I,s:I,s:I,s:I,s:I,s:i,s:i}}", "step",
                          (json_int_t)CHECKPOINT_STEP, "adam_updates", (json_int_t)CHECKPOINT_STEP, "seed",
                          (json_int_t)cfg->train.seed, "world_size", 1, "base", cfg->train.init_from,
                          "loader", "epoch", (json_int_t)0, "step_in_epoch", (json_int_t)CHECKPOINT_STEP,
                          "global_step", (json_int_t)CHECKPOINT_STEP, "n_samples", (json_int_t)0,
                          "global_batch", (json_int_t)cfg->train.micro_batch, "seed",
                          (json_int_t)cfg->train.seed, "shuffle", 1, "mode", 0);
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    if (!text) return tga_error(TGA_ERR_NOMEM, "out of memory for state.json");
    tga_status st = tga_ckpt_write_blob(w, "state.json", text, strlen(text));
    free(text);
    return st;
}

static tga_status config_text(const tga_config *cfg, char **buf, size_t *n) {
    FILE *mem = open_memstream(buf, n);
    if (!mem) return tga_error(TGA_ERR_NOMEM, "out of memory for config.yaml");
    tga_status st = tga_config_write(cfg, mem);
    fclose(mem);
    return st;
}

static tga_status write_checkpoint_files(tga_model *m, const tga_config *cfg, const char *run_dir,
                                         const char *base_params) {
    tga_ckpt_writer *w = NULL;
    TGA_TRY(tga_ckpt_writer_open(&w, run_dir, CHECKPOINT_STEP, 0));
    char *yaml = NULL;
    size_t yaml_bytes = 0;
    tga_status st = write_tensors(m, w, "params.tgat", 0);
    if (st == TGA_OK) st = write_tensors(m, w, "optim.tgat", 1);
    if (st == TGA_OK) st = write_state(cfg, w);
    if (st == TGA_OK) st = config_text(cfg, &yaml, &yaml_bytes);
    if (st == TGA_OK) st = tga_ckpt_write_blob(w, "config.yaml", yaml, yaml_bytes);
    uint64_t base_size = 0, base_hash = 0;
    if (st == TGA_OK && base_params[0]) st = tga_path_hash(base_params, &base_size, &base_hash);
    if (st == TGA_OK && base_params[0]) st = tga_ckpt_write_identity(w, "base_model.id", base_size, base_hash);
    free(yaml);
    if (st == TGA_OK) return tga_ckpt_writer_close(w);
    tga_ckpt_writer_discard(w);
    return st;
}

static tga_status save_run(tga_model *m, const tga_config *cfg, const char *run_dir,
                           const char *base_params) {
    TGA_TRY(make_dir(run_dir));
    TGA_TRY(tga_ckpt_begin(run_dir, CHECKPOINT_STEP));
    TGA_TRY(write_checkpoint_files(m, cfg, run_dir, base_params));
    TGA_TRY(tga_ckpt_commit(run_dir, CHECKPOINT_STEP, 1));
    TGA_TRY(tga_ckpt_mark_done(run_dir, CHECKPOINT_STEP));
    char path[1200];
    snprintf(path, sizeof path, "%s/config.effective.yaml", run_dir);
    FILE *f = fopen(path, "w");
    if (!f) return tga_error(TGA_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    tga_status st = tga_config_write(cfg, f);
    fclose(f);
    return st;
}

/* ---- what the exports are compared with ---------------------------------------------------------- */

static tga_status dump_params(tga_model *m, const char *dump_dir) {
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        float *host = malloc(p->numel * sizeof(float));
        if (!host) return tga_error(TGA_ERR_NOMEM, "out of memory dumping %s", p->name);
        OPS->download(host, p->data, p->numel * sizeof(float));
        char path[1200];
        snprintf(path, sizeof path, "%s/param.%s.npy", dump_dir, p->name);
        int64_t shape[2] = {p->shape[0], p->shape[1]};
        tga_status st = tga_npy_save(path, TGA_NPY_F32, host, p->ndim, shape);
        free(host);
        TGA_TRY(st);
    }
    return TGA_OK;
}

/* One text-only sequence through the real forward; its logits are the reference for the
 * exported model run by a separate HF-semantics forward. */
static tga_status dump_logits(tga_model *m, const tga_model_dims *d, const char *dump_dir) {
    int32_t ids[FORWARD_TOKENS], length = FORWARD_TOKENS, zero = 0;
    for (int t = 0; t < FORWARD_TOKENS; t++)
        ids[t] = (int32_t)((7 * t + 3) % d->vocab_size);
    uint8_t tox = 0;
    tga_batch b = {.B = 1,
                   .T = FORWARD_TOKENS,
                   .input_ids = ids,
                   .labels = ids,
                   .lengths = &length,
                   .image_sample = &zero,
                   .image_start = &zero,
                   .ret_start = &zero,
                   .ret_len = &zero,
                   .tox = &tox};
    tga_align_config align = {.mode = TGA_ALIGN_OFF};
    tga_step_scalars sc = {.n_tokens_global = FORWARD_TOKENS - 1, .n_samples_global = 1};
    tga_losses losses;
    TGA_TRY(tga_model_forward_backward(m, &b, &align, &sc, 0, &losses));
    float *logits = malloc(sizeof(float) * FORWARD_TOKENS * (size_t)d->vocab_size);
    if (!logits) return tga_error(TGA_ERR_NOMEM, "out of memory for the logits");
    tga_model_logits(m, logits);
    char path[1200];
    snprintf(path, sizeof path, "%s/logits.npy", dump_dir);
    tga_status st = tga_npy_save(path, TGA_NPY_F32, logits, 2, (int64_t[]){FORWARD_TOKENS, d->vocab_size});
    free(logits);
    snprintf(path, sizeof path, "%s/tokens.npy", dump_dir);
    return st == TGA_OK ? tga_npy_save(path, TGA_NPY_I32, ids, 1, (int64_t[]){FORWARD_TOKENS}) : st;
}

static tga_status make_run(const tga_config *cfg, const char *run_dir, const char *dump_dir) {
    tga_model_dims dims;
    tga_setup_dims(cfg, &dims);
    tga_run_shape shape = {.trainable = cfg->train.trainable,
                           .micro_batch = 1,
                           .max_len = FORWARD_TOKENS,
                           .max_images = 1,
                           .image_tokens = 1,
                           .ce_chunk = 8};
    tga_model *m;
    TGA_TRY(tga_model_create(&m, &dims, &shape));
    char base_params[1200] = "";
    tga_status st = tga_model_init_random(m, (uint64_t)cfg->train.seed, (float)cfg->model.init_std);
    if (st == TGA_OK && cfg->train.init_from[0])
        st = tga_weights_load(m, cfg->train.init_from, base_params, sizeof base_params);
    if (st == TGA_OK) perturb_trainable(m, (uint64_t)cfg->train.seed + 1);
    if (st == TGA_OK) st = save_run(m, cfg, run_dir, base_params);
    if (st == TGA_OK) st = make_dir(dump_dir);
    if (st == TGA_OK) st = dump_params(m, dump_dir);
    if (st == TGA_OK) st = dump_logits(m, &dims, dump_dir);
    tga_model_free(m);
    return st;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: make_run RUN_DIR DUMP_DIR [--config F] [--set section.key=V ...]\n");
        return 2;
    }
    tga_config cfg;
    tga_common_options opts;
    tga_status st = tga_cli_load_config(argc - 3, argv + 3, &opts, &cfg);
    if (st == TGA_OK && opts.n_rest > 0)
        st = tga_error(TGA_ERR_USAGE, "make_run: unknown option %s", opts.rest[0]);
    free(opts.rest);
    if (st == TGA_OK) st = tga_backend_select("cpu", 0);
    if (st == TGA_OK) st = make_run(&cfg, argv[1], argv[2]);
    if (st != TGA_OK) {
        fprintf(stderr, "make_run: %s: %s\n", tga_status_name(st), tga_error_message());
        return tga_status_exit_code(st);
    }
    printf("make_run: %s (train.trainable %d, step %d), dump in %s\n", argv[1], (int)cfg.train.trainable,
           CHECKPOINT_STEP, argv[2]);
    return 0;
}
