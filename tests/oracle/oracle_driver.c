/* The C side of the PyTorch oracle: reads a case directory written by make_case.py (config.yaml,
 * param.*.npy, the batch), runs one forward/backward and K training steps through the real model
 * and optimizer code, and writes what compare.py checks against reference.py into DIR/out/.
 *
 *   oracle_driver DIR [--recompute]
 */
#define _POSIX_C_SOURCE 200809L /* mkdir */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/ops.h"
#include "runtime/backend.h"
#include "runtime/npy.h"
#include "trainer/config.h"
#include "trainer/model.h"
#include "trainer/optim.h"
#include "trainer/setup.h"

typedef struct oracle_case {
    tga_config cfg;
    int32_t *input_ids, *labels, *lengths, *image_spans, *ret_spans, *tox32, *cap_ids, *cap_lengths, *cap_spans,
        *steps_to_run;
    float *image_features;
    tga_npy_header h_ids, h_img, h_cap, h_feat;
    int32_t *img_sample, *img_start, *ret_start, *ret_len, *cap_start, *cap_len;
    uint8_t *tox;
} oracle_case;

static tga_status load_i32(const char *dir, const char *name, int32_t **out, tga_npy_header *h) {
    char path[1024];
    tga_npy_header local;
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    return tga_npy_load_i32(path, out, h ? h : &local);
}

static tga_status load_case(const char *dir, oracle_case *c) {
    char path[1024];
    memset(c, 0, sizeof *c);
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    TGA_TRY(tga_config_init(&c->cfg));
    TGA_TRY(tga_config_load(&c->cfg, path));
    TGA_TRY(load_i32(dir, "input_ids", &c->input_ids, &c->h_ids));
    TGA_TRY(load_i32(dir, "labels", &c->labels, NULL));
    TGA_TRY(load_i32(dir, "lengths", &c->lengths, NULL));
    TGA_TRY(load_i32(dir, "image_spans", &c->image_spans, &c->h_img));
    TGA_TRY(load_i32(dir, "ret_spans", &c->ret_spans, NULL));
    TGA_TRY(load_i32(dir, "tox", &c->tox32, NULL));
    TGA_TRY(load_i32(dir, "cap_ids", &c->cap_ids, &c->h_cap));
    TGA_TRY(load_i32(dir, "cap_lengths", &c->cap_lengths, NULL));
    TGA_TRY(load_i32(dir, "cap_spans", &c->cap_spans, NULL));
    TGA_TRY(load_i32(dir, "steps_to_run", &c->steps_to_run, NULL));
    snprintf(path, sizeof path, "%s/image_features.npy", dir);
    TGA_TRY(tga_npy_load_f32(path, &c->image_features, &c->h_feat));
    const int B = (int)c->h_ids.shape[0], n_img = (int)c->h_img.shape[0];
    c->img_sample = malloc(sizeof(int32_t) * (size_t)(2 * n_img + 4 * B + 1));
    c->img_start = c->img_sample + n_img;
    c->ret_start = c->img_start + n_img;
    c->ret_len = c->ret_start + B;
    c->cap_start = c->ret_len + B;
    c->cap_len = c->cap_start + B;
    c->tox = malloc((size_t)B + 1);
    for (int i = 0; i < n_img; i++) {
        c->img_sample[i] = c->image_spans[3 * i];
        c->img_start[i] = c->image_spans[3 * i + 1];
    }
    for (int b = 0; b < B; b++) {
        c->ret_start[b] = c->ret_spans[2 * b];
        c->ret_len[b] = c->ret_spans[2 * b + 1];
        c->cap_start[b] = c->cap_spans[2 * b];
        c->cap_len[b] = c->cap_spans[2 * b + 1];
        c->tox[b] = (uint8_t)(c->tox32[b] != 0);
    }
    return TGA_OK;
}

static tga_status load_params(tga_model *m, const char *dir) {
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        char path[1024];
        float *data;
        tga_npy_header h;
        snprintf(path, sizeof path, "%s/param.%s.npy", dir, p->name);
        TGA_TRY(tga_npy_load_f32(path, &data, &h));
        if ((size_t)h.count != p->numel) {
            free(data);
            return tga_error(TGA_ERR_FORMAT, "%s: %lld values, expected %zu", path, (long long)h.count, p->numel);
        }
        tga_status st = tga_model_param_upload(m, p, data);
        free(data);
        TGA_TRY(st);
    }
    return TGA_OK;
}

static tga_status save_f32(const char *dir, const char *name, const float *data, int ndim, const int64_t *shape) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    return tga_npy_save(path, TGA_NPY_F32, data, ndim, shape);
}

static tga_status save_params(tga_model *m, const char *dir, const char *prefix, int grads) {
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        if (grads && !p->trainable) continue;
        float *host = malloc(p->numel * sizeof(float));
        if (!host) return tga_error(TGA_ERR_NOMEM, "out of memory");
        if (grads)
            OPS->download(host, p->grad, p->numel * sizeof(float));
        else
            tga_model_param_download(p, host);
        char name[160];
        int64_t shape[2] = {p->shape[0], p->shape[1]};
        snprintf(name, sizeof name, "%s.%s", prefix, p->name);
        tga_status st = save_f32(dir, name, host, p->ndim, shape);
        free(host);
        TGA_TRY(st);
    }
    return TGA_OK;
}

static int count_supervised(const oracle_case *c, int B, int T) {
    int n = 0;
    for (int b = 0; b < B; b++)
        for (int t = 1; t < T; t++) n += c->labels[b * T + t] != TGA_IGNORE_INDEX;
    return n;
}

static tga_status run(const char *dir, int recompute) {
    oracle_case c;
    TGA_TRY(tga_backend_select("cpu", 0));
    TGA_TRY(load_case(dir, &c));
    c.cfg.train.recompute = recompute;
    const int B = (int)c.h_ids.shape[0], T = (int)c.h_ids.shape[1], Tc = (int)c.h_cap.shape[1];
    const int n_img = (int)c.h_img.shape[0], P = (int)c.h_feat.shape[1];
    c.cfg.train.micro_batch = B;
    c.cfg.data.max_len = T > Tc ? T : Tc;
    c.cfg.data.image_tokens = P > 0 ? P : 1;
    TGA_TRY(tga_config_validate(&c.cfg));

    tga_model_dims dims;
    tga_run_shape shape;
    tga_align_config align;
    tga_optim_config optim;
    tga_setup_dims(&c.cfg, &dims);
    tga_setup_run_shape(&c.cfg, n_img, &shape);
    TGA_TRY(tga_setup_align(&c.cfg, &align));
    tga_setup_optim(&c.cfg, &optim);
    tga_model *m;
    TGA_TRY(tga_model_create(&m, &dims, &shape));
    TGA_TRY(load_params(m, dir));

    tga_batch batch = {.B = B, .T = T, .input_ids = c.input_ids, .labels = c.labels, .lengths = c.lengths,
                       .n_images = n_img, .image_features = c.image_features, .image_sample = c.img_sample,
                       .image_start = c.img_start, .ret_start = c.ret_start, .ret_len = c.ret_len, .tox = c.tox,
                       .Tc = Tc, .cap_ids = c.cap_ids, .cap_lengths = c.cap_lengths, .cap_start = c.cap_start,
                       .cap_len = c.cap_len};
    tga_step_scalars sc = {.n_tokens_global = count_supervised(&c, B, T), .n_samples_global = B, .progress = 0};

    char out[1024];
    snprintf(out, sizeof out, "%s/out", dir);
    mkdir(out, 0755);
    tga_losses losses;
    TGA_TRY(tga_model_forward_backward(m, &batch, &align, &sc, 1, &losses));

    const int D = dims.dim, V = dims.vocab_size, L = dims.n_layers;
    float *buf = malloc(sizeof(float) * (size_t)B * T * (V > D * (L + 1) ? V : D * (L + 1)));
    tga_model_logits(m, buf);
    TGA_TRY(save_f32(out, "logits", buf, 3, (int64_t[]){B, T, V}));
    for (int l = 0; l <= L; l++) tga_model_hidden(m, l, buf + (size_t)l * B * T * D);
    TGA_TRY(save_f32(out, "hidden", buf, 4, (int64_t[]){L + 1, B, T, D}));
    tga_model_input_grad(m, buf);
    TGA_TRY(save_f32(out, "grad.inputs_embeds", buf, 3, (int64_t[]){B, T, D}));
    double loss3[3] = {losses.ce, losses.pair, losses.rank};
    char path[1100];
    snprintf(path, sizeof path, "%s/loss.npy", out);
    TGA_TRY(tga_npy_save(path, TGA_NPY_F64, loss3, 1, (int64_t[]){3}));
    TGA_TRY(save_params(m, out, "grad", 1));

    const int K = c.steps_to_run[0];
    if (K > 0) {
        double *hist = malloc(sizeof(double) * 3 * (size_t)K);
        long long updates = 0;
        for (int k = 0; k < K; k++) {
            if (k > 0) {
                sc.progress = (double)k / (double)c.cfg.train.steps;
                TGA_TRY(tga_model_forward_backward(m, &batch, &align, &sc, 1, &losses));
            }
            hist[3 * k] = losses.ce;
            hist[3 * k + 1] = losses.pair;
            hist[3 * k + 2] = losses.rank;
            tga_step_report rep;
            TGA_TRY(tga_optim_step(m, &optim, k, &updates, &rep));
        }
        snprintf(path, sizeof path, "%s/losses.npy", out);
        TGA_TRY(tga_npy_save(path, TGA_NPY_F64, hist, 2, (int64_t[]){K, 3}));
        TGA_TRY(save_params(m, out, "trained", 0));
        free(hist);
    }
    free(buf);
    tga_model_free(m);
    return TGA_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: oracle_driver CASE_DIR [--recompute]\n");
        return 2;
    }
    int recompute = argc > 2 && strcmp(argv[2], "--recompute") == 0;
    tga_status st = run(argv[1], recompute);
    if (st != TGA_OK) {
        fprintf(stderr, "oracle_driver: %s\n", tga_error_message());
        return tga_status_exit_code(st);
    }
    return 0;
}
