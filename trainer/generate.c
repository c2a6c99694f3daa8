#include "trainer/generate.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

/* The decoding state of one call, and the batch buffers sized for the planned micro-batch. */
typedef struct decoder {
    tga_model *m;
    const tga_model_dims *dims;
    const tga_run_shape *shape;
    const tga_prompt *prompts;
    int n_prompts;
    int32_t *seq;      /* [n_prompts, max_len] prompt + generated ids */
    int32_t *seq_len;  /* [n_prompts] */
    uint8_t *active;   /* [n_prompts] */
    int *batch_prompt; /* [micro_batch] batch row -> prompt */
    /* the batch, host memory */
    int32_t *ids, *labels, *lengths, *zeros, *img_sample, *img_start;
    uint8_t *tox;
    float *features;
    /* the LM head on the last positions */
    float *hidden;        /* host [micro_batch * max_len, D] */
    float *last, *logits; /* host [micro_batch, D], [micro_batch, V] */
    float *d_last, *d_logits;
} decoder;

static void decoder_close(decoder *d) {
    free(d->seq);
    free(d->seq_len);
    free(d->active);
    free(d->batch_prompt);
    free(d->ids);
    free(d->labels);
    free(d->lengths);
    free(d->zeros);
    free(d->img_sample);
    free(d->img_start);
    free(d->tox);
    free(d->features);
    free(d->hidden);
    free(d->last);
    free(d->logits);
    if (d->d_last) OPS->free(d->d_last);
    if (d->d_logits) OPS->free(d->d_logits);
}

static tga_status check_prompts(const tga_run_shape *shape, const tga_prompt *prompts, int n,
                                const tga_generate_options *o) {
    if (n < 1 || n > shape->micro_batch)
        return tga_error(TGA_ERR_INTERNAL, "generate: %d prompts for a model planned for batches of %d", n,
                         shape->micro_batch);
    if (o->max_new < 1 || o->n_stop < 0 || (o->n_stop > 0 && !o->stop_ids) || o->n_choices < 0)
        return tga_error(TGA_ERR_INTERNAL, "generate: max_new %d, %d stop ids, %d choices", o->max_new,
                         o->n_stop, o->n_choices);
    int images = 0;
    for (int i = 0; i < n; i++) {
        const tga_prompt *p = &prompts[i];
        if (p->n_tokens < 1 || p->n_tokens > shape->max_len)
            return tga_error(TGA_ERR_FORMAT,
                             "generate: prompt %d has %d tokens; the model is planned for 1..%d "
                             "(data.max_len)",
                             i, p->n_tokens, shape->max_len);
        if (p->n_images < 0 || (p->n_images > 0 && (!p->image_starts || !p->image_features)))
            return tga_error(TGA_ERR_INTERNAL, "generate: prompt %d has %d images without spans or features",
                             i, p->n_images);
        images += p->n_images;
    }
    if (images > shape->max_images)
        return tga_error(TGA_ERR_INTERNAL, "generate: %d images for a model planned for %d", images,
                         shape->max_images);
    return TGA_OK;
}

static tga_status decoder_open(decoder *d, tga_model *m, const tga_model_dims *dims,
                               const tga_run_shape *shape, const tga_prompt *prompts, int n) {
    *d = (decoder){.m = m, .dims = dims, .shape = shape, .prompts = prompts, .n_prompts = n};
    const size_t B = (size_t)shape->micro_batch, T = (size_t)shape->max_len, D = (size_t)dims->dim;
    const size_t V = (size_t)dims->vocab_size, I = (size_t)shape->max_images + 1;
    const size_t patch_floats = (size_t)shape->image_tokens * (size_t)dims->vision_dim;
    d->seq = malloc((size_t)n * T * sizeof *d->seq);
    d->seq_len = calloc((size_t)n, sizeof *d->seq_len);
    d->active = calloc((size_t)n, sizeof *d->active);
    d->batch_prompt = calloc(B, sizeof *d->batch_prompt);
    d->ids = malloc(B * T * sizeof *d->ids);
    d->labels = malloc(B * T * sizeof *d->labels);
    d->lengths = calloc(B, sizeof *d->lengths);
    d->zeros = calloc(B, sizeof *d->zeros);
    d->tox = calloc(B, sizeof *d->tox);
    d->img_sample = calloc(I, sizeof *d->img_sample);
    d->img_start = calloc(I, sizeof *d->img_start);
    d->features = malloc(I * patch_floats * sizeof *d->features);
    d->hidden = malloc(B * T * D * sizeof *d->hidden);
    d->last = malloc(B * D * sizeof *d->last);
    d->logits = malloc(B * V * sizeof *d->logits);
    d->d_last = OPS->alloc(B * D * sizeof(float));
    d->d_logits = OPS->alloc(B * V * sizeof(float));
    if (!d->seq || !d->seq_len || !d->active || !d->batch_prompt || !d->ids || !d->labels || !d->lengths ||
        !d->zeros || !d->tox || !d->img_sample || !d->img_start || !d->features || !d->hidden || !d->last ||
        !d->logits || !d->d_last || !d->d_logits)
        return tga_error(TGA_ERR_NOMEM, "generate: out of memory for a batch of %zu x %zu tokens", B, T);
    for (int i = 0; i < n; i++) {
        memcpy(d->seq + (size_t)i * T, prompts[i].ids, (size_t)prompts[i].n_tokens * sizeof *d->seq);
        d->seq_len[i] = prompts[i].n_tokens;
        d->active[i] = 1;
    }
    return TGA_OK;
}

/* The samples still generating, in prompt order, right-padded to the longest (pad id 0: masked). */
static void build_batch(decoder *d, tga_batch *b) {
    const int max_len = d->shape->max_len;
    const size_t patch_floats = (size_t)d->shape->image_tokens * (size_t)d->dims->vision_dim;
    int B = 0, T = 0, n_images = 0;
    for (int i = 0; i < d->n_prompts; i++)
        if (d->active[i]) {
            d->batch_prompt[B++] = i;
            T = d->seq_len[i] > T ? d->seq_len[i] : T;
        }
    for (int r = 0; r < B; r++) {
        const int i = d->batch_prompt[r];
        const tga_prompt *p = &d->prompts[i];
        memcpy(d->ids + (size_t)r * T, d->seq + (size_t)i * max_len, (size_t)d->seq_len[i] * sizeof *d->ids);
        for (int t = d->seq_len[i]; t < T; t++)
            d->ids[(size_t)r * T + t] = 0;
        d->lengths[r] = d->seq_len[i];
        memcpy(d->features + (size_t)n_images * patch_floats, p->image_features,
               (size_t)p->n_images * patch_floats * sizeof *d->features);
        for (int k = 0; k < p->n_images; k++, n_images++) {
            d->img_sample[n_images] = r;
            d->img_start[n_images] = p->image_starts[k];
        }
    }
    for (size_t k = 0; k < (size_t)B * T; k++)
        d->labels[k] = TGA_IGNORE_INDEX;
    *b = (tga_batch){.B = B,
                     .T = T,
                     .input_ids = d->ids,
                     .labels = d->labels,
                     .lengths = d->lengths,
                     .n_images = n_images,
                     .image_features = d->features,
                     .image_sample = d->img_sample,
                     .image_start = d->img_start,
                     .ret_start = d->zeros,
                     .ret_len = d->zeros,
                     .tox = d->tox};
}

/* logits[r] = hs[L] at batch row r's last real position times lm_head^T: (B,D) -> (B,V). */
static void last_position_logits(decoder *d, const tga_batch *b) {
    const size_t D = (size_t)d->dims->dim;
    tga_model_hidden(d->m, d->dims->n_layers, d->hidden);
    for (int r = 0; r < b->B; r++)
        memcpy(d->last + (size_t)r * D, d->hidden + ((size_t)r * b->T + (size_t)b->lengths[r] - 1) * D,
               D * sizeof *d->last);
    OPS->upload(d->d_last, d->last, (size_t)b->B * D * sizeof(float));
    tga_model_head_logits(d->m, d->d_logits, d->d_last, b->B);
    OPS->download(d->logits, d->d_logits, (size_t)b->B * d->dims->vocab_size * sizeof(float));
}

/* The first index of the largest logit (as torch.argmax); NaN never wins. */
static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int32_t v = 1; v < n; v++)
        if (x[v] > x[best] || x[best] != x[best]) best = v;
    return best;
}

static int is_stop(const tga_generate_options *o, int32_t id) {
    for (int k = 0; k < o->n_stop; k++)
        if (o->stop_ids[k] == id) return 1;
    return 0;
}

/* Appends the chosen token of prompt i, or ends it (the stop id itself is not output). */
static void advance(decoder *d, int i, int32_t token, const tga_generate_options *o, tga_generation *g) {
    if (is_stop(o, token)) {
        g->end = TGA_GENERATION_STOP_TOKEN;
        d->active[i] = 0;
        return;
    }
    g->ids[g->n++] = token;
    if (g->n == o->max_new) {
        g->end = TGA_GENERATION_MAX_NEW;
        d->active[i] = 0;
    } else if (d->seq_len[i] == d->shape->max_len) {
        g->end = TGA_GENERATION_MAX_LEN; /* no room to run the forward that would pick the next one */
        d->active[i] = 0;
    } else {
        d->seq[(size_t)i * d->shape->max_len + d->seq_len[i]++] = token;
    }
}

static tga_status decode(decoder *d, const tga_generate_options *o, tga_generation *out) {
    static const tga_align_config no_alignment = {.mode = TGA_ALIGN_OFF};
    static const tga_step_scalars no_loss_scale = {0};
    const int V = d->dims->vocab_size, choices = o->n_choices > 0 && o->n_choices < V ? o->n_choices : V;
    for (int step = 0;; step++) {
        tga_batch b;
        build_batch(d, &b);
        if (b.B == 0) return TGA_OK;
        tga_losses unused;
        TGA_TRY(tga_model_forward_backward(d->m, &b, &no_alignment, &no_loss_scale, 0, &unused));
        if (step == 0 && o->on_prompt_forward) TGA_TRY(o->on_prompt_forward(d->m, &b, o->ctx));
        last_position_logits(d, &b);
        for (int r = 0; r < b.B; r++) {
            const int i = d->batch_prompt[r];
            advance(d, i, argmax(d->logits + (size_t)r * V, choices), o, &out[i]);
        }
    }
}

tga_status tga_generate_greedy(tga_model *m, const tga_model_dims *dims, const tga_run_shape *shape,
                               const tga_prompt *prompts, int n_prompts, const tga_generate_options *o,
                               tga_generation *out) {
    TGA_TRY(check_prompts(shape, prompts, n_prompts, o));
    for (int i = 0; i < n_prompts; i++) {
        out[i].n = 0;
        out[i].end = TGA_GENERATION_MAX_NEW;
    }
    decoder d;
    tga_status st = decoder_open(&d, m, dims, shape, prompts, n_prompts);
    if (st == TGA_OK) st = decode(&d, o, out);
    decoder_close(&d);
    return st;
}
