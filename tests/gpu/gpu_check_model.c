/* Model-level GPU check: the same small model (head dim 64, so that on a Hopper the wgmma attention
 * forward runs; grouped-query attention, two align layers, variable sample lengths) built on the CPU
 * and on the CUDA backend with the same random init, one micro-batch of forward + backward on each
 * (losses, every trainable gradient, the input gradient), then two optimizer steps on each (grad
 * norms, parameters). Stage 1 (projector only), stage 2 (everything, with recompute), and stage 2
 * with model.dtype bf16 (bf16 matrices, fp32 masters; step 1's losses then also check the bf16
 * copies refreshed after step 0), and stage 1 with bf16 and recompute (the 7B config's), so every
 * op the trainer uses runs. The limits allow for bf16
 * attention and TF32 (or bf16) GEMMs along a two-layer chain (kernels/cuda/README.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/gpu/gpu_check.h"
#include "trainer/config.h"
#include "trainer/model.h"
#include "trainer/optim.h"
#include "trainer/setup.h"

#include "tests/testutil.h"

#define MODEL_LOSS_LIMIT 1e-2
#define MODEL_GRAD_LIMIT 3e-2
#define MODEL_PARAM_LIMIT 2e-2

typedef struct model_batch {
    int32_t ids[2 * 96], labels[2 * 96], lengths[2], img_sample[2], img_start[2], ret_start[2], ret_len[2];
    int32_t cap_ids[2 * 48], cap_lengths[2], cap_start[2], cap_len[2];
    uint8_t tox[2];
    float *features;
    tga_batch batch;
} model_batch;

static const char *const model_overrides[] = {
    "model.dim=128",        "model.n_layers=2",       "model.n_heads=2",       "model.n_kv_heads=1",
    "model.ffn_dim=344",    "model.vocab_size=512",   "model.max_seq_len=128", "projector.vision_dim=64",
    "data.max_len=96",      "data.image_tokens=16",   "train.micro_batch=2",   "train.ce_chunk=32",
    "tga.layers=1-2",       "train.schedule=constant", "train.lr=1e-3",
};

/* Sample b: [BOS][8 retrieved tokens][16 image patches][text], real length 96 - 21 b, the last
 * quarter of the real tokens supervised; captions of 48 tokens with the span after BOS. */
static void make_batch(model_batch *mb, int P, int Dv, int V) {
    const int B = 2, T = 96, Tc = 48, R = 8;
    memset(mb, 0, sizeof *mb);
    for (int b = 0; b < B; b++) {
        int len = T - 21 * b;
        mb->lengths[b] = len;
        mb->ret_start[b] = 1;
        mb->ret_len[b] = R;
        mb->img_sample[b] = b;
        mb->img_start[b] = 1 + R;
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            int is_image = t >= 1 + R && t < 1 + R + P;
            mb->ids[i] = t >= len ? 0 : is_image ? TGA_IMAGE_TOKEN_ID : 1 + (int)(tu_next(&gc_rng) % (uint64_t)(V - 1));
            mb->labels[i] = t < len && t >= len - len / 4 ? mb->ids[i] : TGA_IGNORE_INDEX;
        }
        mb->cap_lengths[b] = Tc - 5 * b;
        mb->cap_start[b] = 1;
        mb->cap_len[b] = mb->cap_lengths[b] - 1;
        for (int t = 0; t < Tc; t++) mb->cap_ids[b * Tc + t] = 1 + (int)(tu_next(&gc_rng) % (uint64_t)(V - 1));
    }
    mb->features = gc_random((size_t)B * P * Dv, -1, 1);
    mb->batch = (tga_batch){.B = B,
                            .T = T,
                            .input_ids = mb->ids,
                            .labels = mb->labels,
                            .lengths = mb->lengths,
                            .n_images = B,
                            .image_features = mb->features,
                            .image_sample = mb->img_sample,
                            .image_start = mb->img_start,
                            .ret_start = mb->ret_start,
                            .ret_len = mb->ret_len,
                            .tox = mb->tox,
                            .Tc = Tc,
                            .cap_ids = mb->cap_ids,
                            .cap_lengths = mb->cap_lengths,
                            .cap_start = mb->cap_start,
                            .cap_len = mb->cap_len};
}

typedef struct model_run {
    const tga_ops *ops;
    tga_model *model;
    tga_losses losses;
} model_run;

static int build(model_run *run, const tga_ops *ops, const tga_config *cfg) {
    tga_model_dims dims;
    tga_run_shape shape;
    tga_setup_dims(cfg, &dims);
    tga_setup_run_shape(cfg, 2, &shape);
    tga_active_ops = ops;
    run->ops = ops;
    if (tga_model_create(&run->model, &dims, &shape) != TGA_OK) {
        printf("FAIL model.create %s: %s\n", ops->name, tga_error_message());
        return 0;
    }
    if (tga_model_init_random(run->model, 7, 0.02f) != TGA_OK) {
        printf("FAIL model.init %s: %s\n", ops->name, tga_error_message());
        return 0;
    }
    return 1;
}

static float *download_with(const tga_ops *ops, const float *dev, size_t n) {
    float *host = malloc(n * sizeof *host);
    if (!host) {
        fprintf(stderr, "gpu_check: out of host memory\n");
        exit(2);
    }
    ops->download(host, dev, n * sizeof *host);
    return host;
}

static double scalar_relerr(double a, double b) { return b == 0.0 ? fabs(a) : fabs(a - b) / fabs(b); }

static void compare_losses(const char *stage, const char *when, const tga_losses *gpu, const tga_losses *cpu) {
    char what[96];
    snprintf(what, sizeof what, "%s %s", stage, when);
    gc_report("model.ce", what, scalar_relerr(gpu->ce, cpu->ce), MODEL_LOSS_LIMIT);
    gc_report("model.pair", what, scalar_relerr(gpu->pair, cpu->pair), MODEL_LOSS_LIMIT);
    gc_report("model.rank", what, scalar_relerr(gpu->rank, cpu->rank), MODEL_LOSS_LIMIT);
}

/* Every trainable parameter's gradient (or data), one line each. */
static void compare_params(const char *stage, const model_run *gpu, const model_run *cpu, int grads, double limit) {
    for (int i = 0; i < tga_model_param_count(cpu->model); i++) {
        tga_param *pc = tga_model_param(cpu->model, i), *pg = tga_model_param(gpu->model, i);
        if (!pc->trainable) continue;
        float *got = download_with(gpu->ops, grads ? pg->grad : pg->data, pg->numel);
        float *ref = download_with(cpu->ops, grads ? pc->grad : pc->data, pc->numel);
        char what[160];
        snprintf(what, sizeof what, "%s %s", stage, pc->name);
        gc_report(grads ? "model.grad" : "model.param_after_2_steps", what, tu_rel_error(got, ref, pc->numel), limit);
        free(got);
        free(ref);
    }
}

static void compare_input_grad(const char *stage, model_run *gpu, model_run *cpu, size_t n) {
    float *got = malloc(n * sizeof *got), *ref = malloc(n * sizeof *ref);
    tga_active_ops = gpu->ops;
    tga_model_input_grad(gpu->model, got);
    tga_active_ops = cpu->ops;
    tga_model_input_grad(cpu->model, ref);
    gc_report("model.input_grad", stage, tu_rel_error(got, ref, n), MODEL_GRAD_LIMIT);
    free(got);
    free(ref);
}

static tga_status forward_backward(model_run *run, const tga_batch *batch, const tga_align_config *align,
                                   const tga_step_scalars *sc) {
    tga_active_ops = run->ops;
    return tga_model_forward_backward(run->model, batch, align, sc, 1, &run->losses);
}

static void check_stage(const char *stage, const char *trainable, const char *recompute, const char *dtype) {
    tga_config cfg;
    tga_config_init(&cfg);
    char set_trainable[64], set_recompute[64], set_dtype[64];
    snprintf(set_trainable, sizeof set_trainable, "train.trainable=%s", trainable);
    snprintf(set_recompute, sizeof set_recompute, "train.recompute=%s", recompute);
    snprintf(set_dtype, sizeof set_dtype, "model.dtype=%s", dtype);
    for (size_t i = 0; i < sizeof model_overrides / sizeof model_overrides[0]; i++)
        if (tga_config_override(&cfg, model_overrides[i]) != TGA_OK) {
            printf("FAIL model.config %s: %s\n", model_overrides[i], tga_error_message());
            return;
        }
    if (tga_config_override(&cfg, set_trainable) != TGA_OK || tga_config_override(&cfg, set_recompute) != TGA_OK ||
        tga_config_override(&cfg, set_dtype) != TGA_OK) {
        printf("FAIL model.config: %s\n", tga_error_message());
        return;
    }
    tga_align_config align;
    tga_optim_config optim;
    tga_setup_align(&cfg, &align);
    tga_setup_optim(&cfg, &optim);
    model_batch mb;
    make_batch(&mb, (int)cfg.data.image_tokens, (int)cfg.projector.vision_dim, (int)cfg.model.vocab_size);
    int supervised = 0;
    for (int i = 0; i < mb.batch.B * mb.batch.T; i++)
        supervised += i % mb.batch.T > 0 && mb.labels[i] != TGA_IGNORE_INDEX;

    model_run cpu = {0}, gpu = {0};
    if (build(&cpu, gc_cpu, &cfg) && build(&gpu, gc_gpu, &cfg)) {
        long long cpu_updates = 0, gpu_updates = 0;
        for (int step = 0; step < 2; step++) {
            tga_step_scalars sc = {supervised, mb.batch.B, step / 10.0};
            tga_status st_c = forward_backward(&cpu, &mb.batch, &align, &sc);
            tga_status st_g = forward_backward(&gpu, &mb.batch, &align, &sc);
            if (st_c != TGA_OK || st_g != TGA_OK) {
                printf("FAIL model.forward_backward %s: %s\n", stage, tga_error_message());
                break;
            }
            compare_losses(stage, step == 0 ? "step 0" : "step 1", &gpu.losses, &cpu.losses);
            if (step == 0) {
                compare_params(stage, &gpu, &cpu, 1, MODEL_GRAD_LIMIT);
                compare_input_grad(stage, &gpu, &cpu, (size_t)mb.batch.B * mb.batch.T * (size_t)cfg.model.dim);
            }
            tga_step_report rep_c, rep_g;
            tga_active_ops = cpu.ops;
            st_c = tga_optim_step(cpu.model, &optim, step, &cpu_updates, &rep_c);
            tga_active_ops = gpu.ops;
            st_g = tga_optim_step(gpu.model, &optim, step, &gpu_updates, &rep_g);
            if (st_c != TGA_OK || st_g != TGA_OK) {
                printf("FAIL model.optim_step %s: %s\n", stage, tga_error_message());
                break;
            }
            char what[64];
            snprintf(what, sizeof what, "%s step %d", stage, step);
            gc_report("model.grad_norm", what, scalar_relerr(rep_g.grad_norm, rep_c.grad_norm), MODEL_GRAD_LIMIT);
        }
        compare_params(stage, &gpu, &cpu, 0, MODEL_PARAM_LIMIT);
    }
    tga_active_ops = gc_cpu;
    tga_model_free(cpu.model);
    tga_active_ops = gc_gpu;
    tga_model_free(gpu.model);
    free(mb.features);
}

void gc_check_model(void) {
    check_stage("stage1", "stage1", "false", "fp32");
    check_stage("stage2+recompute", "stage2", "true", "fp32");
    check_stage("stage2+bf16", "stage2", "false", "bf16");
    check_stage("stage1+bf16+recompute", "stage1", "true", "bf16"); /* configs/mistral7b_stage1.yaml's */
}
