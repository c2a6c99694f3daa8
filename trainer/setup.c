#include "trainer/setup.h"

#include <string.h>

#include "runtime/backend.h"

void tga_setup_dims(const tga_config *cfg, tga_model_dims *d) {
    memset(d, 0, sizeof *d);
    d->dim = (int)cfg->model.dim;
    d->n_layers = (int)cfg->model.n_layers;
    d->n_heads = (int)cfg->model.n_heads;
    d->n_kv_heads = (int)cfg->model.n_kv_heads;
    d->head_dim = (int)tga_config_head_dim(cfg);
    d->ffn_dim = (int)cfg->model.ffn_dim;
    d->vocab_size = (int)cfg->model.vocab_size;
    d->max_seq_len = (int)cfg->model.max_seq_len;
    d->rope_theta = cfg->model.rope_theta;
    d->norm_eps = (float)cfg->model.norm_eps;
    d->tie_embeddings = cfg->model.tie_embeddings;
    d->projector = cfg->projector.type;
    d->vision_dim = (int)cfg->projector.vision_dim;
    d->bf16_weights = cfg->model.dtype == TGA_DTYPE_BF16;
}

void tga_setup_run_shape(const tga_config *cfg, int max_images, tga_run_shape *s) {
    memset(s, 0, sizeof *s);
    s->trainable = cfg->train.trainable;
    s->micro_batch = (int)cfg->train.micro_batch;
    s->max_len = (int)cfg->data.max_len;
    s->max_images = max_images;
    s->image_tokens = (int)cfg->data.image_tokens;
    s->recompute = cfg->train.recompute;
    s->ce_chunk = (int)cfg->train.ce_chunk;
    s->n_align_layers = cfg->tga.mode == TGA_ALIGN_OFF ? 0 : cfg->tga.layers.count;
}

tga_status tga_setup_align(const tga_config *cfg, tga_align_config *a) {
    memset(a, 0, sizeof *a);
    a->mode = cfg->tga.mode;
    a->n_layers = cfg->tga.layers.count;
    for (int i = 0; i < a->n_layers; i++) {
        int l = cfg->tga.layers.layers[i];
        if (l < 0 || l > cfg->model.n_layers)
            return tga_error(TGA_ERR_CONFIG, "tga.layers: layer %d is outside [0, %lld] (0 = embedding output, "
                                             "l = after decoder layer l; model.n_layers = %lld)",
                             l, (long long)cfg->model.n_layers, (long long)cfg->model.n_layers);
        a->layers[i] = l;
    }
    a->pair_weight = (float)cfg->tga.pair_weight;
    a->rank_weight = (float)cfg->tga.rank_weight;
    a->pair_pow = (float)cfg->tga.pair_decay_pow;
    a->rank_pow = (float)cfg->tga.rank_decay_pow;
    a->eps = (float)cfg->tga.cos_eps;
    return TGA_OK;
}

void tga_setup_optim(const tga_config *cfg, tga_optim_config *o) {
    memset(o, 0, sizeof *o);
    o->lr = cfg->train.lr;
    o->warmup_ratio = cfg->train.warmup_ratio;
    o->weight_decay = cfg->train.weight_decay;
    o->beta1 = cfg->train.beta1;
    o->beta2 = cfg->train.beta2;
    o->eps = cfg->train.adam_eps;
    o->grad_clip = cfg->train.grad_clip;
    o->total_steps = cfg->train.steps;
    o->schedule = cfg->train.schedule;
    o->on_nonfinite = cfg->train.on_nonfinite;
}

tga_status tga_setup_backend(const tga_config *cfg, const char *device, int threads) {
    static const char *const impl_names[] = {"tga", "cudnn", "tga-mma", "tga-wgmma"};
    TGA_TRY(tga_backend_select(device, threads));
    TGA_TRY(tga_backend_set_attention(impl_names[cfg->model.attention]));
    return tga_backend_check_attention((int)tga_config_head_dim(cfg), (int)cfg->model.n_heads,
                                       (int)cfg->model.n_kv_heads);
}
