/* `tga bench step`: times full training steps (text branch, forward, backward, optimizer) on a
 * synthetic batch of the config's shape, and reports the median, the peak resident memory and the
 * throughput: samples/s, tokens/s and model TFLOP/s counted as 4 N per token (N = the decoder's
 * matrix-product parameters; forward plus input-gradient products, the stage-1 count of the issue's
 * MFU goal; recompute and the other terms are not counted), and with --peak-tflops the MFU.
 * The batch layout is the one the PyTorch peer (benchmarks/torch_step.py) builds from the same
 * numbers, so both sides run the same work. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "kernels/ops.h"
#include "runtime/backend.h"
#include "runtime/rng.h"
#include "trainer/cli.h"
#include "trainer/setup.h"

typedef struct synthetic_batch {
    int32_t *ids, *labels, *lengths, *img_sample, *img_start, *ret_start, *ret_len, *cap_ids, *cap_lengths,
        *cap_start, *cap_len;
    uint8_t *tox;
    float *features;
    tga_batch batch;
} synthetic_batch;

/* Per sample: [BOS][retrieved text R][image]x images[question + answer], all T tokens long;
 * the last quarter is supervised. Captions are T/2 tokens with the caption span after BOS. */
static tga_status make_batch(const tga_config *cfg, int images_per_sample, synthetic_batch *s) {
    const int B = (int)cfg->train.micro_batch, T = (int)cfg->data.max_len, P = (int)cfg->data.image_tokens;
    const int V = (int)cfg->model.vocab_size, Dv = (int)cfg->projector.vision_dim, Tc = T / 2 > 2 ? T / 2 : 2;
    const int R = 8, n_img = cfg->train.trainable == TGA_TRAIN_LM ? 0 : images_per_sample;
    if (1 + R + n_img * P + 4 > T)
        return tga_error(TGA_ERR_CONFIG, "data.max_len %d is too short for %d images of %d patches", T, n_img,
                         P);
    memset(s, 0, sizeof *s);
    s->ids = calloc((size_t)B * T, sizeof(int32_t));
    s->labels = calloc((size_t)B * T, sizeof(int32_t));
    s->cap_ids = calloc((size_t)B * Tc, sizeof(int32_t));
    s->lengths = calloc((size_t)B * 8 + (size_t)B * n_img * 2, sizeof(int32_t));
    s->features = malloc(sizeof(float) * ((size_t)B * n_img * P * Dv + 1));
    s->tox = calloc((size_t)B, 1);
    if (!s->ids || !s->labels || !s->cap_ids || !s->lengths || !s->features || !s->tox)
        return tga_error(TGA_ERR_NOMEM, "out of memory for the synthetic batch");
    s->ret_start = s->lengths + B;
    s->ret_len = s->ret_start + B;
    s->cap_lengths = s->ret_len + B;
    s->cap_start = s->cap_lengths + B;
    s->cap_len = s->cap_start + B;
    s->img_sample = s->cap_len + B;
    s->img_start = s->img_sample + B * n_img;
    tga_rng_stream rng = tga_rng_stream_make((uint64_t)cfg->train.seed, TGA_RNG_DATA, 0);
    for (int b = 0; b < B; b++) {
        s->lengths[b] = T;
        s->ret_start[b] = 1;
        s->ret_len[b] = R;
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            s->ids[i] = 1 + (int32_t)(tga_rng_uniform(&rng, i) * (float)(V - 1)) % (V - 1);
            s->labels[i] = t >= T - T / 4 ? s->ids[i] : TGA_IGNORE_INDEX;
        }
        for (int k = 0; k < n_img; k++) {
            int i = b * n_img + k, start = 1 + R + k * P;
            s->img_sample[i] = b;
            s->img_start[i] = start;
            for (int t = start; t < start + P; t++)
                s->ids[(size_t)b * T + t] = TGA_IMAGE_TOKEN_ID;
        }
        s->cap_lengths[b] = Tc;
        s->cap_start[b] = 1;
        s->cap_len[b] = Tc - 1;
        for (int t = 0; t < Tc; t++)
            s->cap_ids[(size_t)b * Tc + t] =
                s->ids[(size_t)b * T + (t + T / 2) % T] < 0 ? 3 : s->ids[(size_t)b * T + (t + T / 2) % T];
    }
    tga_rng_stream frng = tga_rng_stream_make((uint64_t)cfg->train.seed, TGA_RNG_DATA, 1);
    tga_rng_fill_normal(&frng, s->features, (size_t)B * n_img * P * Dv, 0.0f, 1.0f);
    s->batch = (tga_batch){.B = B,
                           .T = T,
                           .input_ids = s->ids,
                           .labels = s->labels,
                           .lengths = s->lengths,
                           .n_images = B * n_img,
                           .image_features = s->features,
                           .image_sample = s->img_sample,
                           .image_start = s->img_start,
                           .ret_start = s->ret_start,
                           .ret_len = s->ret_len,
                           .tox = s->tox,
                           .Tc = Tc,
                           .cap_ids = s->cap_ids,
                           .cap_lengths = s->cap_lengths,
                           .cap_start = s->cap_start,
                           .cap_len = s->cap_len};
    return TGA_OK;
}

static void free_batch(synthetic_batch *s) {
    free(s->ids);
    free(s->labels);
    free(s->cap_ids);
    free(s->lengths);
    free(s->features);
    free(s->tox);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Parameters of the decoder layers' matrix products: q and o (dim x heads x head_dim), k and v
 * (dim x kv_heads x head_dim), gate, up and down (dim x ffn_dim). */
static double decoder_matmul_params(const tga_model_dims *d) {
    const double hd = d->head_dim ? d->head_dim : (double)d->dim / d->n_heads;
    const double per_layer = 2.0 * d->dim * d->n_heads * hd + 2.0 * d->dim * d->n_kv_heads * hd +
                             3.0 * (double)d->dim * d->ffn_dim;
    return per_layer * d->n_layers;
}

static tga_status bench_step(int argc, char **argv) {
    tga_common_options o;
    tga_config cfg;
    TGA_TRY(tga_cli_load_config(argc, argv, &o, &cfg));
    long long steps = 10, warmup = 2, images = 2, peak_tflops = 0;
    for (int i = 0; i < o.n_rest; i++) {
        if (strcmp(o.rest[i], "--steps") == 0)
            TGA_TRY(tga_cli_int_arg(o.n_rest, o.rest, &i, 1, 1000000, &steps));
        else if (strcmp(o.rest[i], "--warmup") == 0)
            TGA_TRY(tga_cli_int_arg(o.n_rest, o.rest, &i, 0, 1000000, &warmup));
        else if (strcmp(o.rest[i], "--images") == 0)
            TGA_TRY(tga_cli_int_arg(o.n_rest, o.rest, &i, 0, 64, &images));
        else if (strcmp(o.rest[i], "--peak-tflops") == 0)
            TGA_TRY(tga_cli_int_arg(o.n_rest, o.rest, &i, 1, 1000000, &peak_tflops));
        else
            return tga_error(TGA_ERR_USAGE, "tga bench step: unknown option %s", o.rest[i]);
    }
    TGA_TRY(tga_setup_backend(&cfg, o.device, o.threads));
    synthetic_batch sb;
    TGA_TRY(make_batch(&cfg, (int)images, &sb));
    tga_model_dims dims;
    tga_run_shape shape;
    tga_align_config align;
    tga_optim_config optim;
    tga_setup_dims(&cfg, &dims);
    tga_setup_run_shape(&cfg, sb.batch.n_images, &shape);
    TGA_TRY(tga_setup_align(&cfg, &align));
    tga_setup_optim(&cfg, &optim);
    tga_model *m;
    TGA_TRY(tga_model_create(&m, &dims, &shape));
    TGA_TRY(tga_model_init_random(m, (uint64_t)cfg.train.seed, (float)cfg.model.init_std));

    int supervised = 0;
    for (int i = 0; i < sb.batch.B * sb.batch.T; i++)
        supervised += i % sb.batch.T > 0 && sb.labels[i] != TGA_IGNORE_INDEX;
    double *times = malloc(sizeof(double) * (size_t)steps);
    long long updates = 0;
    tga_status st = TGA_OK;
    for (long long k = 0; k < warmup + steps && st == TGA_OK; k++) {
        tga_step_scalars sc = {supervised, sb.batch.B, (double)k / (double)(warmup + steps)};
        tga_losses losses;
        tga_step_report rep;
        double t0 = now_ms();
        st = tga_model_forward_backward(m, &sb.batch, &align, &sc, 1, &losses);
        if (st == TGA_OK) st = tga_optim_step(m, &optim, k, &updates, &rep);
        OPS->sync();
        if (k >= warmup) times[k - warmup] = now_ms() - t0;
        if (st == TGA_OK && (k == 0 || k == warmup + steps - 1))
            printf("step %lld: ce %.4f pair %.4f rank %.4f grad norm %.4f\n", k, losses.ce, losses.pair,
                   losses.rank, rep.grad_norm);
    }
    if (st == TGA_OK) {
        qsort(times, (size_t)steps, sizeof *times, compare_doubles);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("tga step: backend %s, %s, B=%d T=%d, %d images x %d patches per sample\n",
               tga_backend_description(),
               cfg.train.trainable == TGA_TRAIN_LM       ? "lm"
               : cfg.train.trainable == TGA_TRAIN_STAGE1 ? "stage1"
                                                         : "stage2",
               sb.batch.B, sb.batch.T, (int)(sb.batch.n_images / sb.batch.B), shape.image_tokens);
        printf("median_ms %.3f min_ms %.3f steps %lld peak_rss_mb %.1f\n", times[steps / 2], times[0], steps,
               ru.ru_maxrss / 1024.0);
        const double seconds = times[steps / 2] / 1e3, tokens = (double)sb.batch.B * sb.batch.T;
        const double n = decoder_matmul_params(&dims), tflops = 4.0 * n * tokens / seconds / 1e12;
        printf("throughput: %.4g samples/s, %.4g tokens/s, %.4g TFLOP/s (4 N per token, N = %.4gM decoder "
               "matmul parameters)",
               sb.batch.B / seconds, tokens / seconds, tflops, n / 1e6);
        if (peak_tflops > 0)
            printf(", MFU %.3g%% of %lld TFLOP/s", 100.0 * tflops / (double)peak_tflops, peak_tflops);
        printf("\n");
    }
    free(times);
    tga_model_free(m);
    free_batch(&sb);
    free(o.rest);
    return st;
}

tga_status tga_cmd_bench(int argc, char **argv) {
    if (argc < 1 || strcmp(argv[0], "step") != 0)
        return tga_error(TGA_ERR_USAGE,
                         "tga bench: expected `tga bench step [options]` (see tga help bench)");
    return bench_step(argc - 1, argv + 1);
}
