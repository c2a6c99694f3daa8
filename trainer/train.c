/* `tga train`: data-parallel training over MPI ranks.
 *
 * One optimizer step: the loader hands each rank its grad_accum micro-batches and the global
 * batch's loss denominators; each micro-batch runs the caption branch, forward and backward; the
 * gradient sync sums the micro-batch gradients over all ranks (ordered: bitwise identical for 1, 2,
 * 4 ranks); the optimizer clips and applies AdamW. Checkpoints (runtime/ckpt.h) hold the trainable
 * parameters, the AdamW moments and update count, the loader position, the step and the effective
 * config, and the identity of the frozen base the run started from; a resumed run continues
 * bit for bit, also on another number of ranks with the same global batch. */
#define _POSIX_C_SOURCE 200809L /* sigaction, clock_gettime, mkdir */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dist/comm.h"
#include "dist/bucket_sync.h"
#include "dist/device_comm.h"
#include "dist/grad_sync.h"
#include "dist/mpi_coll.h"
#include "kernels/collectives.h"
#include "kernels/ops.h"
#include "runtime/backend.h"
#include "runtime/ckpt.h"
#include "runtime/log.h"
#include "trainer/cli.h"
#include "trainer/loader.h"
#include "trainer/optim_state.h"
#include "trainer/setup.h"
#include "trainer/weights.h"

/* ---- signals: SIGTERM / SIGUSR1 (SLURM preemption) ask for a checkpoint and a clean exit ---- */
static volatile sig_atomic_t stop_requested = 0;
static void on_stop_signal(int sig) { stop_requested = sig; }

static void install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- batch geometry ------------------------------------------------------------------------- */

/* Global batch = micro-batch x grad_accum x world: any two given, the third derived. */
static tga_status derive_batch(tga_config *cfg, int world) {
    long long m = cfg->train.micro_batch, a = cfg->train.grad_accum, g = cfg->train.global_batch;
    if (a == 0 && g == 0) a = 1;
    if (g == 0) g = m * a * world;
    if (a == 0) {
        if (g % (m * world) != 0)
            return tga_error(TGA_ERR_CONFIG, "train.global_batch %lld is not a multiple of train.micro_batch %lld x "
                                             "%d ranks", g, m, world);
        a = g / (m * world);
    }
    if (m * a * world != g)
        return tga_error(TGA_ERR_CONFIG, "train.global_batch %lld != train.micro_batch %lld x train.grad_accum %lld x "
                                         "%d ranks", g, m, a, world);
    cfg->train.grad_accum = a;
    cfg->train.global_batch = g;
    return TGA_OK;
}

/* ---- FLOPs and MFU ---------------------------------------------------------------------------- */

/* Peak dense bf16 TFLOP/s by device name (substring match); the CPU has no entry ("n/a"). */
static double device_peak_tflops(const char *device) {
    static const struct { const char *name; double tflops; } table[] = {
        {"H200", 989.0}, {"H100", 989.0}, {"A100", 312.0}, {"L40S", 362.0}, {"A10", 125.0},
    };
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        if (strstr(device, table[i].name)) return table[i].tflops;
    return 0;
}

/* FLOPs of one micro-batch: a frozen decoder costs ~4 N per token (forward 2N + activation
 * gradients 2N), a trainable one 6 N, plus causal attention (QK^T and PV: 2 * 2 * T^2/2 * d per
 * layer forward, twice that again backward), plus the caption branch's forward. */
static double micro_batch_flops(const tga_config *cfg, const tga_batch *b, double n_llm, double n_proj) {
    int trainable_llm = cfg->train.trainable != TGA_TRAIN_STAGE1;
    double per_token = (trainable_llm ? 6.0 : 4.0) * n_llm, flops = 0;
    double qd = (double)cfg->model.n_heads * (double)tga_config_head_dim(cfg), L = (double)cfg->model.n_layers;
    for (int s = 0; s < b->B; s++) {
        double T = b->lengths[s];
        flops += per_token * T + L * 3.0 * 2.0 * T * T * qd; /* attention fwd (2 T^2 d) + bwd (2x) */
        if (cfg->tga.mode != TGA_ALIGN_OFF && b->cap_lengths) {
            double Tc = b->cap_lengths[s];
            flops += 2.0 * n_llm * Tc + L * 2.0 * Tc * Tc * qd;
        }
    }
    flops += 6.0 * n_proj * (double)b->n_images * cfg->data.image_tokens;
    return flops;
}

/* ---- the run ---------------------------------------------------------------------------------- */

typedef struct run {
    tga_config cfg;
    char run_dir[600];
    int rank, world;
    tga_model *model;
    tga_loader *loader, *eval_loader;
    tga_align_config align;
    tga_optim_config optim;
    tga_grad_sync *sync;      /* ordered / allreduce: micro-batch gradients summed on the host */
    tga_bucket_sync *buckets; /* bucketed (and allreduce on device): accumulated in the model, then reduced */
    float *grad_sum;   /* host: the synced gradient (n_grad floats); ZeRO-1: scratch */
    float *leaf_buf;   /* host: one micro-batch's gradient, as downloaded */
    float *grad_shard; /* host, ZeRO-1: this rank's shard of the synced gradient */
    size_t n_grad, shard_lo, shard_hi;
    int sharded;       /* ZeRO-1 over more than one rank */
    int device_zero;   /* ZeRO-1 allreduce on the device collectives: reduce to owners after backward */
    int device_params; /* ZeRO-1 on the device collectives: owners broadcast their parameters */
    long long step, adam_updates;
    char base_params[800]; /* params.tgat of the checkpoint the frozen base came from, or the HF model
                              directory ("" = random init) */
    uint64_t base_size, base_hash; /* its identity (tga_path_hash), computed once */
    FILE *metrics;
    /* per step */
    const tga_loader_step *cur;
    tga_step_scalars scalars;
    tga_losses sum;
    double flops;
    double n_llm, n_proj;
} run;

/* Forward + backward of micro-batch `index` of this step (gradients added into the model's) and
 * its share of the step's losses and FLOPs. */
static tga_status run_micro_batch(run *r, int index) {
    tga_losses l;
    const tga_batch *b = &r->cur->micro[index];
    TGA_TRY(tga_model_forward_backward(r->model, b, &r->align, &r->scalars, 1, &l));
    r->sum.ce += l.ce;
    r->sum.ce_sum += l.ce_sum;
    r->sum.pair += l.pair;
    r->sum.rank += l.rank;
    r->sum.n_align_layers = l.n_align_layers;
    for (int j = 0; j < l.n_align_layers; j++) r->sum.cos_vc_sum[j] += l.cos_vc_sum[j];
    r->sum.cos_count += l.cos_count;
    r->flops += micro_batch_flops(&r->cfg, b, r->n_llm, r->n_proj);
    return TGA_OK;
}

static tga_status leaf_micro_batch(void *ctx, int index, const float **grad) {
    run *r = ctx;
    tga_model_zero_grads(r->model);
    TGA_TRY(run_micro_batch(r, index));
    size_t n;
    float *g = tga_model_grad_buffer(r->model, &n);
    OPS->download(r->leaf_buf, g, n * sizeof(float));
    *grad = r->leaf_buf;
    return TGA_OK;
}

/* ---- checkpoints ------------------------------------------------------------------------------ */

static tga_status write_state_blob(run *r, tga_ckpt_writer *w) {
    tga_loader_position p = tga_loader_tell(r->loader);
    json_t *j = json_pack("{s:I,s:I,s:I,s:i,s:s,s:{s:I,s:I,s:I,s:I,s:I,s:I,s:i,s:i}}", "step", (json_int_t)r->step,
                          "adam_updates", (json_int_t)r->adam_updates, "seed", (json_int_t)r->cfg.train.seed,
                          "world_size", r->world, "base", r->cfg.train.init_from, "loader", "epoch",
                          (json_int_t)p.epoch, "step_in_epoch", (json_int_t)p.step_in_epoch, "global_step",
                          (json_int_t)p.global_step, "n_samples", (json_int_t)p.n_samples, "global_batch",
                          (json_int_t)p.global_batch, "seed", (json_int_t)p.seed, "shuffle", p.shuffle, "mode", p.mode);
    json_object_set_new(j, "optim", tga_optim_state_describe(r->model, r->world));
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!text) return tga_error(TGA_ERR_NOMEM, "out of memory for state.json");
    tga_status st = tga_ckpt_write_blob(w, "state.json", text, strlen(text));
    free(text);
    return st;
}

static tga_status write_config_blob(run *r, tga_ckpt_writer *w) {
    char *buf = NULL;
    size_t n = 0;
    FILE *mem = open_memstream(&buf, &n);
    if (!mem) return tga_error(TGA_ERR_NOMEM, "out of memory for config.yaml");
    tga_status st = tga_config_write(&r->cfg, mem);
    fclose(mem);
    if (st == TGA_OK) st = tga_ckpt_write_blob(w, "config.yaml", buf, n);
    free(buf);
    return st;
}

/* One trainable parameter's exact fp32 values into host: its fp32 data, or (model.dtype bf16
 * under ZeRO-1) its master gathered from the shards, a collective every rank joins (also with
 * host NULL, an allocation that failed: the ranks then agree to fail). */
static tga_status trainable_values(run *r, tga_param *p, float *host) {
    if (!p->data) return tga_optim_gather_master(r->model, p, host);
    return host ? tga_model_param_download(p, host) : tga_error(TGA_ERR_NOMEM, "out of memory saving %s", p->name);
}

/* Trainable parameters: every rank holds the same values (the sync makes the gradients
 * identical, ZeRO-1 all-gathers them), so rank 0 writes them (w; NULL on the other ranks). With
 * sharded masters every rank takes part in gathering them, whatever happened to its writer, so
 * that no rank is left waiting; rank 0 stops writing at its first error. */
static tga_status write_params(run *r, tga_ckpt_writer *w) {
    tga_status st = w ? tga_ckpt_tensors_begin(w, "params.tgat", tga_ckpt_default_codec()) : TGA_OK;
    const int gathered = tga_model_master_shard(r->model) != NULL;
    for (int i = 0; i < tga_model_param_count(r->model); i++) {
        tga_param *p = tga_model_param(r->model, i);
        if (!p->trainable || (!w && (!gathered || p->data))) continue;
        float *host = malloc(p->numel * sizeof(float));
        tga_status got = trainable_values(r, p, host);
        if (st == TGA_OK) st = got;
        if (st == TGA_OK && w) {
            tga_ckpt_tensor t = {.name = p->name, .dtype = TGA_CKPT_F32, .ndim = p->ndim,
                                 .shape = {p->shape[0], p->shape[1]}, .data = host};
            st = tga_ckpt_tensors_add(w, &t);
        }
        free(host);
        if (st != TGA_OK && !gathered) return st;
    }
    return st == TGA_OK && w ? tga_ckpt_tensors_end(w) : st;
}

static tga_status save_checkpoint(run *r) {
    const char *dir = r->run_dir;
    tga_status st = TGA_OK;
    if (r->rank == 0) st = tga_ckpt_begin(dir, r->step);
    int failed;
    TGA_TRY(tga_dist_any_failed(st, &failed, "checkpoint begin"));
    if (failed) return st != TGA_OK ? st : tga_error(TGA_ERR_IO, "checkpoint step %lld failed on another rank", r->step);
    if (r->rank == 0 || r->sharded) { /* ZeRO-1: every rank writes its optimizer shard */
        tga_ckpt_writer *w = NULL;
        int lead = r->rank == 0;
        st = tga_ckpt_writer_open(&w, dir, r->step, r->rank);
        if (tga_model_master_shard(r->model)) { /* every rank joins the gathers of the masters */
            tga_status written = write_params(r, st == TGA_OK && lead ? w : NULL);
            if (st == TGA_OK) st = written;
        } else if (st == TGA_OK && lead) {
            st = write_params(r, w);
        }
        if (st == TGA_OK) st = tga_optim_state_save(r->model, w, r->rank);
        if (st == TGA_OK && lead) st = write_state_blob(r, w);
        if (st == TGA_OK && lead) st = write_config_blob(r, w);
        if (st == TGA_OK && lead && r->base_params[0])
            st = tga_ckpt_write_identity(w, "base_model.id", r->base_size, r->base_hash);
        if (st == TGA_OK) st = tga_ckpt_writer_close(w);
        else tga_ckpt_writer_discard(w);
    }
    TGA_TRY(tga_dist_any_failed(st, &failed, "checkpoint write"));
    if (failed)
        return st != TGA_OK ? st
                            : tga_error(TGA_ERR_IO, "checkpoint step %lld failed on %s", r->step,
                                        r->sharded ? "another rank" : "rank 0");
    if (r->rank == 0) st = tga_ckpt_commit(dir, r->step, r->sharded ? r->world : 1);
    TGA_TRY(tga_dist_any_failed(st, &failed, "checkpoint commit"));
    if (failed) return st != TGA_OK ? st : tga_error(TGA_ERR_IO, "checkpoint step %lld failed on rank 0", r->step);
    if (r->rank == 0) st = tga_ckpt_mark_done(dir, r->step);
    if (r->rank == 0 && st == TGA_OK)
        st = tga_ckpt_retain(dir, (int)r->cfg.train.keep_last, r->cfg.train.keep_every, r->step);
    TGA_TRY(tga_dist_any_failed(st, &failed, "checkpoint done"));
    if (failed) return st != TGA_OK ? st : tga_error(TGA_ERR_IO, "checkpoint step %lld failed on rank 0", r->step);
    if (r->rank == 0) TGA_INFO("checkpoint: step %lld saved in %s/checkpoints", r->step, dir);
    return TGA_OK;
}

static tga_status read_params(run *r, const char *ckpt) {
    char path[900];
    snprintf(path, sizeof path, "%s/params.tgat", ckpt);
    tga_ckpt_reader *rd;
    TGA_TRY(tga_ckpt_reader_open(&rd, path));
    tga_status st = TGA_OK;
    for (int i = 0; i < tga_model_param_count(r->model) && st == TGA_OK; i++) {
        tga_param *p = tga_model_param(r->model, i);
        if (!p->trainable) continue;
        float *host = malloc(p->numel * sizeof(float));
        int64_t shape[2] = {p->shape[0], p->shape[1]};
        st = host ? tga_ckpt_read_tensor(rd, p->name, TGA_CKPT_F32, p->ndim, shape, host)
                  : tga_error(TGA_ERR_NOMEM, "out of memory");
        if (st == TGA_OK) st = tga_model_param_upload(r->model, p, host);
        free(host);
    }
    tga_ckpt_reader_close(rd);
    return st;
}

/* Keys whose value differs between the checkpoint's config.yaml and this run's (both written by
 * tga_config_write, so key order and formatting match line by line): a resumed run continues with
 * the new values, which is allowed (e.g. more steps) but is said, since it changes the schedule. */
static void warn_changed_keys(run *r, const char *ckpt) {
    void *saved = NULL;
    size_t n_saved = 0, n_now = 0;
    char *now = NULL;
    FILE *mem = open_memstream(&now, &n_now);
    if (!mem || tga_ckpt_read_blob(ckpt, "config.yaml", 1 << 20, &saved, &n_saved) != TGA_OK) {
        tga_error_clear();
        if (mem) fclose(mem);
        free(now);
        free(saved);
        return;
    }
    tga_config_write(&r->cfg, mem);
    fclose(mem);
    char changed[1024] = "", section[64] = "";
    char *sp = NULL, *np = NULL;
    for (char *a = strtok_r(saved, "\n", &sp), *b = strtok_r(now, "\n", &np); a && b;
         a = strtok_r(NULL, "\n", &sp), b = strtok_r(NULL, "\n", &np)) {
        if (a[0] != ' ' && strchr(a, ':')) snprintf(section, sizeof section, "%.*s", (int)(strchr(a, ':') - a), a);
        if (strcmp(a, b) == 0 || a[0] != ' ' || strstr(a, "out_dir:")) continue;
        while (*a == ' ') a++;
        while (*b == ' ') b++;
        const char *colon = strchr(b, ':');
        size_t len = strlen(changed);
        snprintf(changed + len, sizeof changed - len, "%s%s.%s ->%s", len ? "; " : "", section, a, colon ? colon + 1 : b);
    }
    if (changed[0]) TGA_WARN("resuming %s with changed config: %s", ckpt, changed);
    free(saved);
    free(now);
}

static tga_status resume_from(run *r, const char *ckpt) {
    if (r->rank == 0) warn_changed_keys(r, ckpt);
    void *text = NULL;
    size_t n;
    TGA_TRY(tga_ckpt_read_blob(ckpt, "state.json", 1 << 20, &text, &n));
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    free(text);
    if (!j) return tga_error(TGA_ERR_FORMAT, "%s/state.json: %s", ckpt, err.text);
    json_t *ld = json_object_get(j, "loader");
    tga_loader_position p = {
        .epoch = (uint64_t)json_integer_value(json_object_get(ld, "epoch")),
        .step_in_epoch = (uint64_t)json_integer_value(json_object_get(ld, "step_in_epoch")),
        .global_step = (uint64_t)json_integer_value(json_object_get(ld, "global_step")),
        .n_samples = (uint64_t)json_integer_value(json_object_get(ld, "n_samples")),
        .global_batch = (uint64_t)json_integer_value(json_object_get(ld, "global_batch")),
        .seed = (uint64_t)json_integer_value(json_object_get(ld, "seed")),
        .shuffle = (int32_t)json_integer_value(json_object_get(ld, "shuffle")),
        .mode = (int32_t)json_integer_value(json_object_get(ld, "mode"))};
    r->step = json_integer_value(json_object_get(j, "step"));
    r->adam_updates = json_integer_value(json_object_get(j, "adam_updates"));
    long long seed = json_integer_value(json_object_get(j, "seed"));
    char base[sizeof r->cfg.train.init_from];
    snprintf(base, sizeof base, "%s", json_string_value(json_object_get(j, "base")) ? json_string_value(json_object_get(j, "base")) : "");
    tga_status st = TGA_OK;
    if (seed != r->cfg.train.seed || strcmp(base, r->cfg.train.init_from) != 0)
        st = tga_error(TGA_ERR_CONFIG, "%s was trained with train.seed %lld and train.init_from '%s'; this run has %lld "
                                       "and '%s' (start fresh with --fresh, or restore those keys)",
                       ckpt, seed, base, (long long)r->cfg.train.seed, r->cfg.train.init_from);
    if (st == TGA_OK && r->base_params[0])
        st = tga_ckpt_check_identity(ckpt, "base_model.id", r->base_params, r->base_size, r->base_hash);
    if (st == TGA_OK) st = tga_loader_seek(r->loader, &p);
    if (st == TGA_OK) st = read_params(r, ckpt);
    if (st == TGA_OK) st = tga_optim_state_load(r->model, ckpt, json_object_get(j, "optim"));
    json_decref(j);
    return st;
}

/* ---- evaluation -------------------------------------------------------------------------------- */

static tga_status evaluate(run *r) {
    tga_loader_position start = tga_loader_tell(r->eval_loader);
    tga_loader_info info = tga_loader_get_info(r->eval_loader);
    double sums[1 + TGA_MAX_ALIGN_LAYERS] = {0}; /* ce_sum, cos per layer (this rank's) */
    double targets = 0;                              /* the same on every rank */
    double cos_count = 0;
    int n_layers = 0;
    for (uint64_t s = 0; s < info.steps_per_epoch; s++) {
        tga_loader_step st;
        TGA_TRY(tga_loader_next(r->eval_loader, &st));
        tga_step_scalars sc = {(double)st.n_targets_global, (double)st.n_samples_global, 0.0};
        for (int i = 0; i < st.n_micro; i++) {
            tga_losses l;
            TGA_TRY(tga_model_forward_backward(r->model, &st.micro[i], &r->align, &sc, 0, &l));
            sums[0] += l.ce_sum;
            n_layers = l.n_align_layers > n_layers ? l.n_align_layers : n_layers;
            for (int j = 0; j < l.n_align_layers; j++) sums[1 + j] += l.cos_vc_sum[j];
            cos_count += l.cos_count;
        }
        targets += (double)st.n_targets_global;
    }
    TGA_TRY(tga_loader_seek(r->eval_loader, &start));
    double extra[2] = {cos_count, (double)n_layers};
    TGA_TRY(tga_dist_sum_f64(sums, 1 + TGA_MAX_ALIGN_LAYERS, "eval sums"));
    TGA_TRY(tga_dist_sum_f64(extra, 2, "eval counts"));
    if (r->rank != 0) return TGA_OK;
    n_layers = (int)(extra[1] / r->world + 0.5);
    double loss = targets > 0 ? sums[0] / targets : 0;
    char cos_text[2048] = "";
    json_t *cos = json_array();
    for (int j = 0; j < n_layers; j++) {
        double c = extra[0] > 0 ? sums[1 + j] / extra[0] : 0;
        size_t len = strlen(cos_text);
        snprintf(cos_text + len, sizeof cos_text - len, "%s%d:%.3f", j ? " " : "", r->align.layers[j], c);
        json_array_append_new(cos, json_pack("{s:i,s:f}", "layer", r->align.layers[j], "cos", c));
    }
    TGA_INFO("eval step %lld | loss %.4f | image-caption cosine per layer %s", r->step, loss, n_layers ? cos_text : "n/a");
    if (r->metrics) {
        json_t *j = json_pack("{s:s,s:I,s:f,s:o}", "kind", "eval", "step", (json_int_t)r->step, "loss", loss,
                              "image_caption_cos", cos);
        json_dumpf(j, r->metrics, JSON_COMPACT | JSON_PRESERVE_ORDER);
        fputc('\n', r->metrics);
        fflush(r->metrics);
        json_decref(j);
    } else {
        json_decref(cos);
    }
    return TGA_OK;
}

/* ---- logging ------------------------------------------------------------------------------------ */

static void log_step(run *r, const tga_step_report *rep, double ms, double samples, double tokens, double eta_s) {
    double peak = device_peak_tflops(tga_backend_description());
    double mfu = peak > 0 ? r->flops / (ms / 1e3) / (peak * 1e12) : -1;
    char mfu_text[32];
    if (mfu >= 0) snprintf(mfu_text, sizeof mfu_text, "%.1f%%", 100 * mfu);
    else snprintf(mfu_text, sizeof mfu_text, "n/a");
    int eta = (int)eta_s;
    TGA_INFO("step %lld/%lld | loss %.4f (ce %.4f pair %.4f rank %.4f) | grad norm %.4f | lr %.3e | %.1f ms | "
             "%.1f samples/s | %.0f tok/s | MFU %s | ETA %02d:%02d:%02d",
             r->step + 1, (long long)r->cfg.train.steps, r->sum.ce + r->sum.pair + r->sum.rank, r->sum.ce, r->sum.pair,
             r->sum.rank, rep->grad_norm, rep->lr, ms, samples / (ms / 1e3), tokens / (ms / 1e3), mfu_text, eta / 3600,
             eta / 60 % 60, eta % 60);
    if (!r->metrics) return;
    json_t *j = json_pack("{s:s,s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:i}", "kind", "train", "step",
                          (json_int_t)(r->step + 1), "loss", r->sum.ce + r->sum.pair + r->sum.rank, "ce", r->sum.ce,
                          "pair", r->sum.pair, "rank", r->sum.rank, "grad_norm", rep->grad_norm, "lr", rep->lr, "ms", ms,
                          "samples_per_s", samples / (ms / 1e3), "tokens_per_s", tokens / (ms / 1e3), "skipped",
                          rep->skipped);
    if (mfu >= 0) json_object_set_new(j, "mfu", json_real(mfu));
    json_dumpf(j, r->metrics, JSON_COMPACT | JSON_PRESERVE_ORDER);
    fputc('\n', r->metrics);
    fflush(r->metrics);
    json_decref(j);
}

/* ---- setup ------------------------------------------------------------------------------------- */

/* A resumed run repeats the steps after its checkpoint: their lines from the interrupted run go
 * (and a line torn by a crash), so metrics.jsonl holds each step once. Rewritten atomically. */
static tga_status trim_metrics(const char *path, long long resumed_step) {
    FILE *f = fopen(path, "r");
    if (!f) return TGA_OK; /* a first run */
    char *kept = NULL, *line = NULL;
    size_t kept_size = 0, cap = 0;
    long long dropped = 0;
    FILE *out = open_memstream(&kept, &kept_size);
    if (!out) {
        fclose(f);
        return tga_error(TGA_ERR_NOMEM, "out of memory reading %s", path);
    }
    for (ssize_t len; (len = getline(&line, &cap, f)) > 0;) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *step = j ? json_object_get(j, "step") : NULL;
        if (json_is_integer(step) && json_integer_value(step) <= resumed_step) fputs(line, out);
        else dropped++;
        json_decref(j);
    }
    free(line);
    fclose(f);
    fclose(out);
    tga_status st = dropped ? tga_file_write_atomic(path, kept, kept_size) : TGA_OK;
    if (st == TGA_OK && dropped)
        TGA_INFO("%s: dropped %lld line(s) after step %lld, which this run repeats", path, dropped, resumed_step);
    free(kept);
    return st;
}

static tga_status mkdir_p(const char *path) {
    char buf[700];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) return tga_error(TGA_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return tga_error(TGA_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
    return TGA_OK;
}

/* A shard directory is complete only when `tga prep` wrote its prep.json (last): an interrupted
 * prep leaves complete shards but not all of them, which must not silently shrink the data. */
static tga_status require_finished_prep(const char *path, const char *key) {
    struct stat st;
    if (stat(path, &st) != 0) return tga_error(TGA_ERR_CONFIG, "%s %s: %s", key, path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return TGA_OK;
    char marker[700];
    snprintf(marker, sizeof marker, "%s/prep.json", path);
    if (access(marker, F_OK) != 0)
        return tga_error(TGA_ERR_CONFIG, "%s %s has no prep.json: the tga prep that wrote it did not finish", key, path);
    return TGA_OK;
}

/* --fresh: the old run's checkpoints and metrics move to <name>.replaced-<time> (nothing is
 * deleted), so a crash of the new run can never resume from the old one. */
static tga_status set_aside_checkpoints(const char *run_dir) {
    static const char *const names[2] = {"checkpoints", "metrics.jsonl"};
    long long stamp = (long long)time(NULL);
    for (int i = 0; i < 2; i++) {
        char from[700], to[760];
        snprintf(from, sizeof from, "%s/%s", run_dir, names[i]);
        if (access(from, F_OK) != 0) continue;
        snprintf(to, sizeof to, "%s.replaced-%lld", from, stamp);
        if (rename(from, to) != 0)
            return tga_error(TGA_ERR_IO, "--fresh: cannot move %s aside to %s: %s", from, to, strerror(errno));
        TGA_WARN("--fresh: the previous %s %s now in %s", names[i], i ? "is" : "are", to);
    }
    return TGA_OK;
}

static tga_status open_loaders(run *r) {
    const tga_config *c = &r->cfg;
    if (!c->data.train[0]) return tga_error(TGA_ERR_CONFIG, "data.train is empty: name a shard directory or file");
    TGA_TRY(require_finished_prep(c->data.train, "data.train"));
    if (c->data.eval[0]) TGA_TRY(require_finished_prep(c->data.eval, "data.eval"));
    tga_loader_config lc = {.path = c->data.train, .vocab_size = (int32_t)c->model.vocab_size, .pad_id = 0,
                            .seed = (uint64_t)c->train.seed, .shuffle = 1, .mode = TGA_LOADER_TRAIN,
                            .micro_batch = (int)c->train.micro_batch, .grad_accum = (int)c->train.grad_accum,
                            .world_size = r->world, .rank = r->rank, .prefetch = 1};
    TGA_TRY(tga_loader_open(&r->loader, &lc));
    tga_loader_info info = tga_loader_get_info(r->loader);
    if (info.patches_per_image && (info.patches_per_image != c->data.image_tokens || info.feature_dim != c->projector.vision_dim))
        return tga_error(TGA_ERR_CONFIG, "%s holds images of %d patches x %d features, but data.image_tokens is %lld and "
                                         "projector.vision_dim %lld", c->data.train, info.patches_per_image,
                         info.feature_dim, (long long)c->data.image_tokens, (long long)c->projector.vision_dim);
    if (info.max_tokens > c->data.max_len || info.max_caption_tokens > c->data.max_len)
        return tga_error(TGA_ERR_CONFIG, "%s has samples of %d tokens (captions %d), over data.max_len %lld",
                         c->data.train, info.max_tokens, info.max_caption_tokens, (long long)c->data.max_len);
    if (info.steps_per_epoch == 0)
        return tga_error(TGA_ERR_CONFIG, "%s has %llu samples, fewer than one global batch of %llu", c->data.train,
                         (unsigned long long)info.n_samples, (unsigned long long)info.global_batch);
    if (c->data.eval[0] && c->train.eval_every > 0) {
        lc.path = c->data.eval;
        lc.shuffle = 0;
        lc.mode = TGA_LOADER_EVAL;
        lc.prefetch = 0;
        TGA_TRY(tga_loader_open(&r->eval_loader, &lc));
    }
    return TGA_OK;
}

static int max_images_per_micro_batch(const run *r) {
    int m = (int)r->cfg.train.micro_batch, per = tga_loader_get_info(r->loader).max_images;
    if (r->eval_loader && tga_loader_get_info(r->eval_loader).max_images > per) per = tga_loader_get_info(r->eval_loader).max_images;
    return m * per;
}

static tga_status create_model(run *r) {
    tga_model_dims dims;
    tga_run_shape shape;
    tga_setup_dims(&r->cfg, &dims);
    tga_setup_run_shape(&r->cfg, max_images_per_micro_batch(r), &shape);
    r->sharded = r->cfg.train.zero_stage == 1 && r->world > 1;
    shape.zero_world = r->sharded ? r->world : 0;
    shape.zero_rank = r->rank;
    TGA_TRY(tga_setup_align(&r->cfg, &r->align));
    tga_setup_optim(&r->cfg, &r->optim);
    TGA_TRY(tga_model_create(&r->model, &dims, &shape));
    if (r->cfg.train.init_from[0]) {
        TGA_TRY(tga_weights_load(r->model, r->cfg.train.init_from, r->base_params, sizeof r->base_params));
        TGA_TRY(tga_path_hash(r->base_params, &r->base_size, &r->base_hash));
    }
    /* what init_from did not load */
    TGA_TRY(tga_model_init_random(r->model, (uint64_t)r->cfg.train.seed, (float)r->cfg.model.init_std));
    r->n_llm = (double)tga_model_numel(r->model, 0);
    r->n_proj = 0;
    for (int i = 0; i < tga_model_param_count(r->model); i++) {
        tga_param *p = tga_model_param(r->model, i);
        if (strncmp(p->name, "projector.", 10) == 0) r->n_proj += (double)p->numel;
    }
    r->n_llm -= r->n_proj;
    tga_model_grad_buffer(r->model, &r->n_grad);
    return TGA_OK;
}

static void on_grad_ready(void *ctx, size_t lo, size_t hi) { tga_bucket_sync_ready(ctx, lo, hi); }

/* After the device collectives are up: the bucketed path (host MPI on the CPU backend, NCCL on
 * the device), or the host-side ordered / allreduce sync of downloaded micro-batch gradients. */
static tga_status create_sync(run *r) {
    size_t n;
    float *grads = tga_model_grad_buffer(r->model, &n);
    int host_memory = OPS == tga_cpu_ops(), device = tga_dist_device_active();
    int bucketed = r->cfg.train.grad_sync == TGA_GRAD_SYNC_BUCKETED;
    int device_allreduce = device && r->cfg.train.grad_sync == TGA_GRAD_SYNC_ALLREDUCE && !r->sharded;
    if (bucketed && !host_memory && !device && r->world > 1)
        return tga_error(TGA_ERR_CONFIG, "train.grad_sync bucketed on %s needs the device collectives (NCCL), which "
                                         "are not available here; use ordered or allreduce", OPS->name);
    r->device_params = r->sharded && device && r->cfg.train.grad_sync != TGA_GRAD_SYNC_ORDERED;
    if (r->sharded && device && r->cfg.train.grad_sync == TGA_GRAD_SYNC_ALLREDUCE) {
        r->device_zero = 1; /* gradients accumulate in the model; see step_gradients */
        return TGA_OK;
    }
    if (bucketed || device_allreduce) {
        size_t bucket = bucketed ? (size_t)(r->cfg.train.bucket_mb * 1048576.0 / sizeof(float)) : n;
        return tga_bucket_sync_create(&r->buckets, grads, n, bucket, device, r->sharded);
    }
    r->grad_sum = malloc(sizeof(float) * (n + 1));
    r->leaf_buf = malloc(sizeof(float) * (n + 1));
    if (r->sharded) {
        tga_zero_shard(n, r->world, r->rank, &r->shard_lo, &r->shard_hi);
        r->grad_shard = malloc(sizeof(float) * (r->shard_hi - r->shard_lo + 1));
    }
    if (!r->grad_sum || !r->leaf_buf || (r->sharded && !r->grad_shard))
        return tga_error(TGA_ERR_NOMEM, "out of memory for the gradient buffers (%zu floats)", n);
    tga_sync_mode mode = r->cfg.train.grad_sync == TGA_GRAD_SYNC_ORDERED ? TGA_SYNC_ORDERED : TGA_SYNC_ALLREDUCE;
    return tga_grad_sync_create(&r->sync, n, (int)r->cfg.train.grad_accum, mode, r->sharded);
}

/* The step's micro-batches and the gradient sync: the model's gradient buffer ends holding the
 * global gradient (ZeRO-1: at least this rank's shard of it). */
static tga_status step_gradients(run *r) {
    size_t n;
    float *g = tga_model_grad_buffer(r->model, &n);
    if (r->device_zero) {
        tga_model_zero_grads(r->model);
        for (int i = 0; i < r->cur->n_micro; i++) TGA_TRY(run_micro_batch(r, i));
        return tga_optim_device_reduce_grads(r->model);
    }
    if (r->buckets) {
        tga_model_zero_grads(r->model);
        tga_status st = TGA_OK;
        for (int i = 0; i < r->cur->n_micro && st == TGA_OK; i++) {
            /* gradients are final only in the last micro-batch's backward */
            int overlap = i == r->cur->n_micro - 1 && r->cfg.train.grad_sync == TGA_GRAD_SYNC_BUCKETED;
            if (overlap) tga_model_set_grad_ready(r->model, on_grad_ready, r->buckets);
            st = run_micro_batch(r, i);
            tga_model_set_grad_ready(r->model, NULL, NULL);
        }
        /* without the hook (allreduce on the device) the whole buffer is one bucket, sent now */
        if (st == TGA_OK && r->cfg.train.grad_sync != TGA_GRAD_SYNC_BUCKETED) tga_bucket_sync_ready(r->buckets, 0, n);
        tga_status fin = tga_bucket_sync_finish(r->buckets);
        return st != TGA_OK ? st : fin;
    }
    TGA_TRY(tga_grad_sync_step(r->sync, leaf_micro_batch, r, r->grad_sum, r->grad_shard));
    if (r->sharded)
        OPS->upload(g + r->shard_lo, r->grad_shard, (r->shard_hi - r->shard_lo) * sizeof(float));
    else
        OPS->upload(g, r->grad_sum, n * sizeof(float));
    return TGA_OK;
}

/* Every rank learns whether any failed `what` and returns the status of the first failing rank
 * (its own message if it failed itself), so mpirun's exit code (2 = a configuration error, final
 * for the supervisor) does not depend on which rank mpirun reports. */
static tga_status agree(run *r, tga_status mine, const char *what) {
    int32_t code = (int32_t)mine, *all = malloc(sizeof(int32_t) * (size_t)r->world);
    if (!all) return tga_error(TGA_ERR_NOMEM, "out of memory");
    tga_status gathered = tga_dist_allgather(&code, all, sizeof code, what);
    int first = -1;
    for (int k = 0; gathered == TGA_OK && k < r->world && first < 0; k++)
        if (all[k] != TGA_OK) first = k;
    tga_status agreed = first >= 0 ? (tga_status)all[first] : TGA_OK;
    free(all);
    TGA_TRY(gathered);
    if (first >= 0 && mine != TGA_OK) return tga_error_replace(agreed, "%s", tga_error_message());
    if (first >= 0) return tga_error(agreed, "%s failed on rank %d (its message says why)", what, first);
    return TGA_OK;
}

static tga_status maybe_resume(run *r, const char *resume) {
    if (strcmp(resume, "none") == 0) return TGA_OK;
    int64_t step = -1;
    int found = 0;
    tga_status st = TGA_OK;
    /* rank 0 reads every byte of the newest checkpoint (older ones too when it fails): the others
     * wait in the next collective, for as long as reading all of them at 50 MB/s would take (the
     * size as rank 0 sees it: other nodes may not see the run directory) */
    uint64_t bytes = r->rank == 0 ? tga_ckpt_find_latest_bytes(r->run_dir) : 0;
    TGA_TRY(tga_dist_bcast(&bytes, sizeof bytes, 0, "resume: checkpoint size"));
    if (r->rank != 0) tga_dist_watchdog_allow((double)bytes / 50e6);
    if (r->rank == 0) st = tga_ckpt_find_latest(r->run_dir, &step, &found);
    if (st == TGA_ERR_FORMAT) /* none verifies: a restart would meet the same files, so say it is final */
        st = tga_error_replace(TGA_ERR_CONFIG, "%s; restore a good checkpoint, or start over with --fresh (which keeps "
                                               "these aside)", tga_error_message());
    TGA_TRY(agree(r, st, "resume: finding the checkpoint"));
    int64_t msg[2] = {step, found};
    TGA_TRY(tga_dist_bcast(msg, sizeof msg, 0, "resume: checkpoint step"));
    if (!msg[1]) {
        if (r->rank == 0) TGA_INFO("no checkpoint in %s: starting from step 0", r->run_dir);
        return TGA_OK;
    }
    char ckpt[800];
    TGA_TRY(tga_ckpt_path(r->run_dir, msg[0], NULL, ckpt, sizeof ckpt));
    TGA_TRY(agree(r, resume_from(r, ckpt), "resume: loading the checkpoint"));
    if (r->rank == 0) TGA_INFO("resumed from %s (step %lld)", ckpt, r->step);
    return TGA_OK;
}

static void close_run(run *r) {
    tga_loader_close(r->loader);
    tga_loader_close(r->eval_loader);
    tga_grad_sync_free(r->sync);
    tga_bucket_sync_free(r->buckets);
    tga_dist_device_stop();
    tga_model_free(r->model);
    free(r->grad_sum);
    free(r->leaf_buf);
    free(r->grad_shard);
    if (r->metrics) fclose(r->metrics);
}

/* ---- the loop ---------------------------------------------------------------------------------- */

static tga_status train_loop(run *r) {
    const long long total = r->cfg.train.steps;
    double last_save = now_seconds(), started = now_seconds();
    long long first = r->step;
    while (r->step < total) {
        tga_loader_step st;
        TGA_TRY(tga_loader_next(r->loader, &st));
        double t0 = now_seconds();
        memset(&r->sum, 0, sizeof r->sum);
        r->flops = 0;
        r->cur = &st;
        r->scalars = (tga_step_scalars){(double)st.n_targets_global, (double)st.n_samples_global,
                                        (double)r->step / (double)total};
        TGA_TRY(step_gradients(r));
        if (r->buckets && r->step == first && r->rank == 0)
            TGA_INFO("gradient sync: %d bucket(s) per step; %.1f ms waited for them after the backward pass",
                     tga_bucket_sync_last_buckets(r->buckets), tga_bucket_sync_last_wait_ms(r->buckets));
        double sums[4] = {r->sum.ce, r->sum.pair, r->sum.rank, r->flops};
        TGA_TRY(tga_dist_sum_f64(sums, 4, "step losses"));
        r->sum.ce = sums[0];
        r->sum.pair = sums[1];
        r->sum.rank = sums[2];
        r->flops = sums[3] / r->world; /* MFU is per device */
        tga_status st_loss = tga_check_losses(&r->sum, r->step);
        tga_step_report rep;
        if (st_loss != TGA_OK && r->cfg.train.on_nonfinite == TGA_NONFINITE_STOP) return st_loss;
        if (st_loss != TGA_OK) {
            TGA_WARN("%s; skipping this step (train.on_nonfinite: skip)", tga_error_message());
            tga_error_clear();
            tga_model_zero_grads(r->model);
            rep = (tga_step_report){NAN, tga_lr_at(&r->optim, r->step), 1};
        } else {
            TGA_TRY(tga_optim_step(r->model, &r->optim, r->step, &r->adam_updates, &rep));
        }
        if (r->sharded)
            TGA_TRY(r->device_params ? tga_optim_device_broadcast_params(r->model) : tga_optim_gather_params(r->model));
        OPS->sync();
        double ms = (now_seconds() - t0) * 1e3;
        double tokens = 0;
        for (int i = 0; i < st.n_micro; i++)
            for (int b = 0; b < st.micro[i].B; b++) tokens += st.micro[i].lengths[b];
        double totals[1] = {tokens};
        TGA_TRY(tga_dist_sum_f64(totals, 1, "step tokens"));
        double per_step = (now_seconds() - started) / (double)(r->step + 1 - first);
        if ((r->step + 1) % r->cfg.train.log_every == 0 || r->step + 1 == total)
            if (r->rank == 0) log_step(r, &rep, ms, (double)st.n_samples_global, totals[0], per_step * (double)(total - r->step - 1));
        r->step++;
        if (r->eval_loader && r->step % r->cfg.train.eval_every == 0) TGA_TRY(evaluate(r));

        /* a stop signal on any rank stops every rank, after a checkpoint */
        int64_t flags[1] = {stop_requested != 0};
        TGA_TRY(tga_dist_sum_i64(flags, 1, "stop request"));
        int time_due = r->cfg.train.checkpoint_minutes > 0 && now_seconds() - last_save >= r->cfg.train.checkpoint_minutes * 60;
        double due[1] = {time_due};
        TGA_TRY(tga_dist_sum_f64(due, 1, "checkpoint timer")); /* rank clocks differ: any rank's timer counts */
        int every = r->cfg.train.checkpoint_every > 0 && r->step % r->cfg.train.checkpoint_every == 0;
        if (every || due[0] > 0 || flags[0] > 0 || r->step == total) {
            TGA_TRY(save_checkpoint(r));
            last_save = now_seconds();
        }
        if (flags[0] > 0) {
            if (r->rank == 0) TGA_WARN("stop requested by signal: checkpoint at step %lld written; exiting", r->step);
            return TGA_OK;
        }
    }
    return TGA_OK;
}

static tga_status parse_train_options(const tga_common_options *o, const char **resume, int *dry_run, int *fresh,
                                      int *plan_ranks) {
    *resume = "auto";
    for (int i = 0; i < o->n_rest; i++) {
        if (strcmp(o->rest[i], "--dry-run") == 0) {
            *dry_run = 1;
        } else if (strcmp(o->rest[i], "--ranks") == 0) {
            long long n;
            TGA_TRY(tga_cli_int_arg(o->n_rest, o->rest, &i, 1, 1 << 20, &n));
            *plan_ranks = (int)n;
        } else if (strcmp(o->rest[i], "--fresh") == 0) {
            *fresh = 1;
            *resume = "none";
        } else if (strcmp(o->rest[i], "--resume") == 0 && i + 1 < o->n_rest) {
            *resume = o->rest[++i];
            if (strcmp(*resume, "auto") != 0 && strcmp(*resume, "none") != 0)
                return tga_error(TGA_ERR_USAGE, "--resume %s: expected auto or none", *resume);
        } else {
            return tga_error(TGA_ERR_USAGE, "tga train: unknown option %s (see tga help train)", o->rest[i]);
        }
    }
    if (*plan_ranks && !*dry_run) return tga_error(TGA_ERR_USAGE, "--ranks N plans a run: it goes with --dry-run");
    return TGA_OK;
}

static tga_status dry_run(run *r) {
    tga_model_dims dims;
    tga_run_shape shape;
    tga_setup_dims(&r->cfg, &dims);
    tga_setup_run_shape(&r->cfg, (int)r->cfg.train.micro_batch, &shape);
    shape.zero_world = r->cfg.train.zero_stage == 1 ? r->world : 0;
    shape.zero_rank = 0; /* the largest shard */
    tga_align_config align;
    TGA_TRY(tga_setup_align(&r->cfg, &align));
    if (r->rank != 0) return TGA_OK;
    printf("effective config:\n");
    TGA_TRY(tga_config_write(&r->cfg, stdout));
    for (int recompute = 0; recompute <= 1; recompute++) {
        shape.recompute = recompute;
        tga_plan plan;
        TGA_TRY(tga_model_plan(&dims, &shape, &plan));
        const int bf16 = dims.bf16_weights, zero = shape.zero_world > 1;
        printf("memory plan per rank (%s recompute; micro-batch %lld x %lld tokens, one image per sample; %s%s):\n",
               recompute ? "with" : "without", (long long)r->cfg.train.micro_batch, (long long)r->cfg.data.max_len,
               bf16 ? "bf16 weight matrices, layer norm outputs and MLP activations" : "fp32",
               !zero ? "" : bf16 ? "; ZeRO-1: AdamW moments and fp32 masters of one shard"
                                 : "; ZeRO-1: AdamW moments of one shard");
        tga_plan_print(&plan, stdout, 0);
        tga_plan_free(&plan);
    }
    printf("global batch %lld = micro-batch %lld x grad_accum %lld x %d ranks; dry run: nothing allocated\n",
           (long long)r->cfg.train.global_batch, (long long)r->cfg.train.micro_batch, (long long)r->cfg.train.grad_accum,
           r->world);
    return TGA_OK;
}

static tga_status train_main(int argc, char **argv, run *r) {
    tga_common_options o;
    TGA_TRY(tga_cli_load_config(argc, argv, &o, &r->cfg));
    const char *resume;
    int dry = 0, fresh = 0, plan_ranks = 0;
    tga_status st = parse_train_options(&o, &resume, &dry, &fresh, &plan_ranks);
    free(o.rest);
    TGA_TRY(st);
    r->rank = tga_dist_rank();
    r->world = plan_ranks ? plan_ranks : tga_dist_world();
    TGA_TRY(derive_batch(&r->cfg, r->world));
    if (dry) return dry_run(r);
    install_signal_handlers(); /* a stop signal during set-up stops after the first step's checkpoint */
    TGA_TRY(tga_dist_watchdog_start(r->cfg.runtime.collective_timeout));
    int threads = (int)r->cfg.runtime.threads;
    if (threads == 0 && tga_dist_local_world() > 1) { /* ranks sharing a host share its cores */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores / tga_dist_local_world() > 0 ? (int)(cores / tga_dist_local_world()) : 1;
    }
    /* set-up without collectives; then every rank learns whether any failed, so a bad config or a
     * missing file stops all ranks with their own message and none is left waiting */
    snprintf(r->run_dir, sizeof r->run_dir, "%s", r->cfg.train.out_dir);
    tga_status setup = tga_setup_backend(&r->cfg, o.device, threads);
    if (setup == TGA_OK && r->rank == 0) setup = mkdir_p(r->run_dir);
    if (setup == TGA_OK && r->rank == 0 && fresh) setup = set_aside_checkpoints(r->run_dir);
    if (setup == TGA_OK) setup = open_loaders(r);
    if (setup == TGA_OK) setup = create_model(r);
    TGA_TRY(agree(r, setup, "set-up"));
    const char *collectives = getenv("TGA_DEVICE_COLLECTIVES"); /* dist/mpi_coll.h: the GPU path, tested on CPUs */
    if (collectives && strcmp(collectives, "mpi") == 0 && OPS == tga_cpu_ops())
        tga_active_coll = tga_dist_mpi_collectives();
    TGA_TRY(tga_dist_device_start(r->cfg.runtime.collective_timeout));
    TGA_TRY(agree(r, create_sync(r), "gradient sync set-up"));
    TGA_TRY(maybe_resume(r, resume));
    if (r->rank == 0) {
        char path[700];
        snprintf(path, sizeof path, "%s/config.effective.yaml", r->run_dir);
        FILE *f = fopen(path, "w");
        if (!f) return tga_error(TGA_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        tga_status cs = tga_config_write(&r->cfg, f);
        fclose(f);
        TGA_TRY(cs);
        printf("effective config (also in %s):\n", path);
        TGA_TRY(tga_config_write(&r->cfg, stdout));
        fflush(stdout);
        snprintf(path, sizeof path, "%s/metrics.jsonl", r->run_dir);
        TGA_TRY(trim_metrics(path, r->step));
        r->metrics = fopen(path, "a");
        if (!r->metrics) return tga_error(TGA_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        tga_loader_info info = tga_loader_get_info(r->loader);
        static const char *const sync_names[] = {"ordered", "allreduce", "bucketed"};
        TGA_INFO("tga train: %s, %d rank(s), backend %s; %llu samples, global batch %lld (micro %lld x accum %lld x %d); "
                 "%lld steps; trainable %.3f M of %.3f M parameters (%s); gradient sync %s%s%s", r->cfg.data.train,
                 r->world, tga_backend_description(), (unsigned long long)info.n_samples,
                 (long long)r->cfg.train.global_batch, (long long)r->cfg.train.micro_batch,
                 (long long)r->cfg.train.grad_accum, r->world, (long long)r->cfg.train.steps,
                 tga_model_numel(r->model, 1) / 1e6, tga_model_numel(r->model, 0) / 1e6,
                 r->cfg.model.dtype == TGA_DTYPE_BF16 ? "bf16 matrices, fp32 masters" : "fp32",
                 sync_names[r->cfg.train.grad_sync], tga_dist_device_active() ? " over the device collectives" : "",
                 r->sharded ? ", ZeRO-1 optimizer shards" : "");
    }
    if (r->step >= r->cfg.train.steps) {
        if (r->rank == 0) TGA_INFO("the run is already complete (step %lld of %lld)", r->step, (long long)r->cfg.train.steps);
        return TGA_OK;
    }
    return train_loop(r);
}

tga_status tga_cmd_train(int argc, char **argv) {
    run *r = calloc(1, sizeof *r);
    if (!r) return tga_error(TGA_ERR_NOMEM, "out of memory");
    tga_status st = train_main(argc, argv, r);
    close_run(r);
    free(r);
    return st;
}
