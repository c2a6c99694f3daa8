#include "trainer/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/grad_sync.h"
#include "kernels/ops.h"
#include "runtime/rng.h"

typedef struct layer_weights {
    float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down;
} layer_weights;

/* What one decoder layer keeps for its backward pass (h1, h2 and act only when its weights train:
 * act_transient). */
typedef struct layer_acts {
    float *h1, *rstd1;        /* [N,D], [N]  attention-norm output */
    float *q, *k, *v;         /* [N,H*hd], [N,KVH*hd] after RoPE */
    float *att, *lse;         /* [N,H*hd], [B,H,T] */
    float *x_mid;             /* [N,D] residual after attention */
    float *h2, *rstd2;        /* [N,D], [N]  MLP-norm output */
    float *gate, *up, *act;   /* [N,F] */
    /* model.dtype bf16: the inputs of the bf16 products (h1, h2, act) stored in bf16 by the norms
     * and SwiGLU that write them (the products would round them anyway: the same bits), and gate
     * and up rounded to bf16 by swiglu_forward_bf16; h1, h2, act are then NULL, and gate and up
     * above are the products' fp32 outputs, in the dgate and dup scratch */
    tga_bf16 *h1_16, *h2_16, *act16, *gate16, *up16;
} layer_acts;

typedef struct projector_weights {
    float *w0, *b0, *w2, *b2; /* w2/b2 NULL for the linear projector */
} projector_weights;

/* The bf16 copies of the matrices with model.dtype bf16 (all NULL with fp32 weights; the fp32
 * pointers of layer_weights are then NULL for frozen matrices). */
typedef struct layer_bf16 {
    tga_bf16 *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
} layer_bf16;

struct tga_model {
    tga_model_dims dims;
    tga_run_shape shape;
    int hd, n_max; /* head dim, B * max_len */
    tga_plan plan;
    float *buf[TGA_MEM_KINDS];

    tga_param *params;
    int n_params;
    float *tok_emb, *lm_head, *final_norm;
    layer_weights *w, *g; /* weights and gradients per layer (gradient pointers NULL when frozen) */
    float *g_tok_emb, *g_lm_head, *g_final_norm;
    projector_weights pw, pg;
    layer_bf16 *w16;
    tga_bf16 *tok_emb16, *lm_head16, *proj_w0_16, *proj_w2_16;

    float **xs;      /* [L+1] residual stream: xs[0] = embeddings, xs[l] after layer l */
    float *hs_final, *rstd_final;
    layer_acts *acts; /* [L], or [1] with recompute */
    float *proj_in, *proj_h, *proj_g, *proj_out;

    /* scratch */
    float *dx, *dh, *delta, *dact, *dgate, *dup, *datt, *dq, *dk, *dv, *ce_scratch;
    float *dproj_a, *dproj_b;
    float *pool_v, *pool_r, *cap_target, *grad_v, *grad_r, *cos_vc, *cos_rc; /* [Lsel, B, D] / [Lsel, B] */
    int32_t *d_ids, *d_targets, *d_lengths, *d_seg; /* device int scratch */
    float *rope_table;

    /* the last batch, for the accessors and the backward pass */
    int B, T;
    tga_segments seg_img, seg_ret, seg_cap;
    uint8_t *d_use_pair, *d_use_rank;
    tga_align_config align;
    int align_active, align_grad;
    tga_grad_ready_fn ready_fn;
    void *ready_ctx;
};

/* ---- plan --------------------------------------------------------------------------------- */

/* Per-layer weight names (HF Llama order) and per-layer activation names; the tables below and
 * the struct fields they bind to are in the same order. */
#define N_LAYER_WEIGHTS 9
static const char *const layer_weight_names[N_LAYER_WEIGHTS] = {"attn_norm", "wq", "wk", "wv", "wo",
                                                                "ffn_norm", "w_gate", "w_up", "w_down"};
#define N_LAYER_ACTS 13
static const char *const layer_act_names[N_LAYER_ACTS] = {"h1", "rstd1", "q", "k", "v", "att", "lse",
                                                          "x_mid", "h2", "rstd2", "gate", "up", "act"};

static int is_trainable_llm(tga_trainable_set t) { return t == TGA_TRAIN_LM || t == TGA_TRAIN_STAGE2; }
static int is_trainable_projector(tga_trainable_set t) { return t == TGA_TRAIN_STAGE1 || t == TGA_TRAIN_STAGE2; }

enum { ACT_H1 = 0, ACT_H2 = 8, ACT_GATE = 10, ACT_UP = 11, ACT_SWIGLU = 12 };

/* With a frozen decoder (stage 1) the backward pass computes input gradients only, and the inputs
 * of the linear layers (h1, h2, act) are read by nothing but weight gradients: they are not kept
 * per layer; one buffer serves every layer's forward. About a third of a layer's activations. */
static int act_transient(const tga_run_shape *s, int i) {
    return !is_trainable_llm(s->trainable) && (i == ACT_H1 || i == ACT_H2 || i == ACT_SWIGLU);
}

/* The plan's name of activation i of layer l: one buffer for every layer with recompute, and for
 * the transient ones. */
static void layer_act_name(char *name, size_t size, const tga_run_shape *s, int l, int i) {
    if (s->recompute)
        snprintf(name, size, "act.recompute.%s", layer_act_names[i]);
    else if (act_transient(s, i))
        snprintf(name, size, "act.transient.%s", layer_act_names[i]);
    else
        snprintf(name, size, "act.%d.%s", l, layer_act_names[i]);
}

static int n_int_scratch(const tga_run_shape *s) {
    int B = s->micro_batch, I = s->max_images;
    /* ids, targets, lengths, three segment tables (start, count, out; out_rows), two byte flags */
    return 2 * B * s->max_len + B + (3 * I + B) + 2 * (3 * B + B) + (2 * B + 3) / 4 + 1;
}

static tga_status check_dims(const tga_model_dims *d, const tga_run_shape *s) {
    if (d->dim <= 0 || d->n_layers <= 0 || d->n_heads <= 0 || d->n_kv_heads <= 0 || d->ffn_dim <= 0 ||
        d->vocab_size <= 1 || d->vision_dim <= 0)
        return tga_error(TGA_ERR_CONFIG, "model: dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size and "
                                         "projector.vision_dim must be positive");
    if (d->n_heads % d->n_kv_heads != 0)
        return tga_error(TGA_ERR_CONFIG, "model.n_heads (%d) must be a multiple of model.n_kv_heads (%d)",
                         d->n_heads, d->n_kv_heads);
    int hd = d->head_dim ? d->head_dim : d->dim / d->n_heads;
    if (!d->head_dim && d->dim % d->n_heads != 0)
        return tga_error(TGA_ERR_CONFIG, "model.dim (%d) must be a multiple of model.n_heads (%d) when "
                                         "model.head_dim is 0", d->dim, d->n_heads);
    if (hd % 2 != 0 || hd > TGA_MAX_HEAD_DIM)
        return tga_error(TGA_ERR_CONFIG, "model head dim %d must be even (RoPE) and at most %d", hd, TGA_MAX_HEAD_DIM);
    if (s->micro_batch <= 0 || s->max_len <= 0 || s->max_images < 0 || s->image_tokens <= 0 || s->ce_chunk <= 0)
        return tga_error(TGA_ERR_CONFIG, "train.micro_batch, data.max_len, data.image_tokens and train.ce_chunk "
                                         "must be positive");
    if (s->max_len > d->max_seq_len)
        return tga_error(TGA_ERR_CONFIG, "data.max_len (%d) exceeds model.max_seq_len (%d)", s->max_len,
                         d->max_seq_len);
    if (s->n_align_layers < 0 || s->n_align_layers > TGA_MAX_ALIGN_LAYERS)
        return tga_error(TGA_ERR_CONFIG, "tga.layers: at most %d layers", TGA_MAX_ALIGN_LAYERS);
    return TGA_OK;
}

/* With model.dtype bf16 under ZeRO-1 the fp32 masters of the trainable matrices are sharded like
 * the AdamW moments ("master.shard"); each rank keeps only the bf16 matrices whole. */
static int masters_sharded(const tga_model_dims *d, const tga_run_shape *s) {
    return d->bf16_weights && s->zero_world > 1;
}

/* Adds a parameter, and its gradient when trainable (the moments follow in plan_optimizer). A
 * bf16 matrix is one bf16 tensor when frozen or when its master is sharded, and otherwise an fp32
 * master plus its bf16 copy "<name>.bf16". */
static void plan_param(tga_plan *p, const char *name, int trainable, int bf16, int sharded_master, int ndim,
                       long long d0, long long d1) {
    long long shape[2] = {d0, d1};
    char full[128];
    if (bf16 && (!trainable || sharded_master)) {
        tga_plan_add_typed(p, TGA_MEM_PARAMS, name, ndim, shape, (int)sizeof(tga_bf16));
    } else {
        tga_plan_add(p, TGA_MEM_PARAMS, name, ndim, shape);
        if (bf16) {
            snprintf(full, sizeof full, "%s.bf16", name);
            tga_plan_add_typed(p, TGA_MEM_PARAMS, full, ndim, shape, (int)sizeof(tga_bf16));
        }
    }
    if (!trainable) return;
    snprintf(full, sizeof full, "grad.%s", name);
    tga_plan_add(p, TGA_MEM_GRADS, full, ndim, shape);
}

/* The AdamW moments, two flat buffers in the gradient layout (so that a ZeRO-1 shard of them is
 * one contiguous range): whole, or this rank's shard; with sharded masters a third, the fp32
 * masters of the shard (used for the bf16 matrices, whose only fp32 copy it is). */
static void plan_optimizer(tga_plan *p, const tga_run_shape *s, int sharded_masters) {
    size_t n = p->kind_numel[TGA_MEM_GRADS], lo = 0, hi = n;
    if (s->zero_world > 1) tga_zero_shard(n, s->zero_world, s->zero_rank, &lo, &hi);
    if (hi == lo) return;
    long long shape[1] = {(long long)(hi - lo)};
    tga_plan_add(p, TGA_MEM_OPTIM, s->zero_world > 1 ? "adam_m.shard" : "adam_m", 1, shape);
    tga_plan_add(p, TGA_MEM_OPTIM, s->zero_world > 1 ? "adam_v.shard" : "adam_v", 1, shape);
    if (sharded_masters) tga_plan_add(p, TGA_MEM_OPTIM, "master.shard", 1, shape);
}

static void plan_buf(tga_plan *p, tga_mem_kind kind, const char *name, long long d0, long long d1) {
    long long shape[2] = {d0, d1};
    tga_plan_add(p, kind, name, d1 ? 2 : 1, shape);
}

tga_status tga_model_plan(const tga_model_dims *d, const tga_run_shape *s, tga_plan *p) {
    TGA_TRY(check_dims(d, s));
    tga_plan_init(p);
    const long long D = d->dim, F = d->ffn_dim, V = d->vocab_size, L = d->n_layers;
    const long long hd = d->head_dim ? d->head_dim : d->dim / d->n_heads;
    const long long QD = d->n_heads * hd, KD = d->n_kv_heads * hd;
    const long long B = s->micro_batch, N = B * s->max_len, Dv = d->vision_dim;
    const long long rows = (long long)s->max_images * s->image_tokens;
    const int llm = is_trainable_llm(s->trainable), proj = is_trainable_projector(s->trainable);
    const int bf16 = d->bf16_weights; /* for the matrices; norms and biases stay fp32 */
    const int shm = masters_sharded(d, s);
    char name[96];

    plan_param(p, "tok_embeddings", llm, bf16, shm, 2, V, D);
    for (int l = 0; l < L; l++) {
        const long long rows_[N_LAYER_WEIGHTS] = {D, QD, KD, KD, D, D, F, F, D};
        const long long cols_[N_LAYER_WEIGHTS] = {0, D, D, D, QD, 0, D, D, F};
        for (int i = 0; i < N_LAYER_WEIGHTS; i++) {
            snprintf(name, sizeof name, "layers.%d.%s", l, layer_weight_names[i]);
            plan_param(p, name, llm, bf16 && cols_[i], shm, cols_[i] ? 2 : 1, rows_[i], cols_[i]);
        }
    }
    plan_param(p, "final_norm", llm, 0, shm, 1, D, 0);
    if (!d->tie_embeddings) plan_param(p, "lm_head", llm, bf16, shm, 2, V, D);
    plan_param(p, "projector.0.weight", proj, bf16, shm, 2, D, Dv);
    plan_param(p, "projector.0.bias", proj, 0, shm, 1, D, 0);
    if (d->projector == TGA_PROJ_MLP2X_GELU) {
        plan_param(p, "projector.2.weight", proj, bf16, shm, 2, D, D);
        plan_param(p, "projector.2.bias", proj, 0, shm, 1, D, 0);
    }
    plan_optimizer(p, s, shm);

    for (int l = 0; l <= L; l++) {
        snprintf(name, sizeof name, "residual.%d", l);
        plan_buf(p, TGA_MEM_ACTS, name, N, D);
    }
    plan_buf(p, TGA_MEM_ACTS, "final_norm.out", N, D);
    plan_buf(p, TGA_MEM_ACTS, "rstd.final_norm", N, 0);
    int n_act_layers = s->recompute ? 1 : (int)L;
    for (int l = 0; l < n_act_layers; l++) {
        const long long sizes[N_LAYER_ACTS] = {D, 0, QD, KD, KD, QD, 0, D, D, 0, F, F, F};
        for (int i = 0; i < N_LAYER_ACTS; i++) {
            const int shared = s->recompute || act_transient(s, i);
            if (shared && l > 0) continue;
            tga_mem_kind kind = shared ? TGA_MEM_SCRATCH : TGA_MEM_ACTS;
            layer_act_name(name, sizeof name, s, l, i);
            if (i == 6) { /* lse is per head */
                plan_buf(p, kind, name, B * d->n_heads * s->max_len, 0);
            } else if (bf16 && (i == ACT_H1 || i == ACT_H2 || i == ACT_GATE || i == ACT_UP || i == ACT_SWIGLU)) {
                /* kept in bf16 (layer_acts) */
                long long shape[2] = {N, sizes[i]};
                tga_plan_add_typed(p, kind, name, 2, shape, (int)sizeof(tga_bf16));
            } else {
                plan_buf(p, kind, name, N, sizes[i]);
            }
        }
    }
    plan_buf(p, TGA_MEM_ACTS, "projector.in", rows, Dv);
    plan_buf(p, TGA_MEM_ACTS, "projector.h", rows, D);
    plan_buf(p, TGA_MEM_ACTS, "projector.gelu", rows, D);
    plan_buf(p, TGA_MEM_ACTS, "projector.out", rows, D);

    const char *scr_nd[] = {"dx", "dh", "delta"};
    for (int i = 0; i < 3; i++) plan_buf(p, TGA_MEM_SCRATCH, scr_nd[i], N, D);
    const char *scr_nf[] = {"dact", "dgate", "dup"};
    for (int i = 0; i < 3; i++) plan_buf(p, TGA_MEM_SCRATCH, scr_nf[i], N, F);
    plan_buf(p, TGA_MEM_SCRATCH, "datt", N, QD);
    plan_buf(p, TGA_MEM_SCRATCH, "dq", N, QD);
    plan_buf(p, TGA_MEM_SCRATCH, "dk", N, KD);
    plan_buf(p, TGA_MEM_SCRATCH, "dv", N, KD);
    plan_buf(p, TGA_MEM_SCRATCH, "lm_head.chunk", s->ce_chunk, V + D); /* logits, then gathered rows */
    plan_buf(p, TGA_MEM_SCRATCH, "projector.grad_a", rows, D);
    plan_buf(p, TGA_MEM_SCRATCH, "projector.grad_b", rows, D);
    const long long A = s->n_align_layers > 0 ? s->n_align_layers : 1;
    const char *al[] = {"align.pool_image", "align.pool_retrieved", "align.caption_target", "align.grad_image",
                        "align.grad_retrieved"};
    for (int i = 0; i < 5; i++) plan_buf(p, TGA_MEM_SCRATCH, al[i], A * B, D);
    plan_buf(p, TGA_MEM_SCRATCH, "align.cos_image", A * B, 0);
    plan_buf(p, TGA_MEM_SCRATCH, "align.cos_retrieved", A * B, 0);
    plan_buf(p, TGA_MEM_SCRATCH, "batch.int_data", n_int_scratch(s), 0);
    plan_buf(p, TGA_MEM_SCRATCH, "rope.cos_sin", (long long)d->max_seq_len * hd, 0);
    if (p->failed) { /* not tga_error_code(): an earlier, unrelated error may still be pending */
        tga_plan_free(p);
        return TGA_ERR_NOMEM;
    }
    return TGA_OK;
}

/* ---- creation ---------------------------------------------------------------------------- */

/* An fp32 tensor of the plan (NULL when absent or stored as bf16). */
static float *planned(tga_model *m, const char *name) {
    int i = tga_plan_find(&m->plan, name);
    if (i < 0 || m->plan.entries[i].elem_bytes != (int)sizeof(float)) return NULL;
    const tga_plan_entry *e = &m->plan.entries[i];
    return m->buf[e->kind] + e->offset;
}

/* The bf16 storage of parameter `name`: the tensor itself, or its copy "<name>.bf16"; NULL with
 * fp32 weights. */
static tga_bf16 *planned_bf16(tga_model *m, const char *name) {
    char copy[128];
    snprintf(copy, sizeof copy, "%s.bf16", name);
    int i = tga_plan_find(&m->plan, name);
    if (i < 0 || m->plan.entries[i].elem_bytes != (int)sizeof(tga_bf16)) i = tga_plan_find(&m->plan, copy);
    if (i < 0) return NULL;
    const tga_plan_entry *e = &m->plan.entries[i];
    return (tga_bf16 *)(m->buf[e->kind] + e->offset);
}

static int is_bf16_copy(const tga_plan_entry *e) {
    size_t n = strlen(e->name);
    return e->elem_bytes == (int)sizeof(tga_bf16) && n > 5 && strcmp(e->name + n - 5, ".bf16") == 0;
}

static float *plannedf(tga_model *m, const char *fmt, int l) {
    char name[96];
    snprintf(name, sizeof name, fmt, l);
    return planned(m, name);
}

static void bind_params(tga_model *m) {
    int n = 0;
    for (int i = 0; i < m->plan.count; i++)
        if (m->plan.entries[i].kind == TGA_MEM_PARAMS && !is_bf16_copy(&m->plan.entries[i])) n++;
    m->n_params = n;
    n = 0;
    for (int i = 0; i < m->plan.count; i++) {
        const tga_plan_entry *e = &m->plan.entries[i];
        if (e->kind != TGA_MEM_PARAMS || is_bf16_copy(e)) continue;
        tga_param *p = &m->params[n++];
        char name[128];
        p->name = e->name;
        p->ndim = e->ndim;
        p->shape[0] = e->shape[0];
        p->shape[1] = e->ndim > 1 ? e->shape[1] : 1;
        p->numel = e->numel;
        p->data = planned(m, e->name);
        p->data_bf16 = planned_bf16(m, e->name);
        snprintf(name, sizeof name, "grad.%s", e->name);
        p->grad = planned(m, name);
        p->trainable = p->grad != NULL;
        float *adam_m = planned(m, "adam_m"), *adam_v = planned(m, "adam_v");
        if (p->trainable && adam_m) {
            p->adam_m = adam_m + (p->grad - m->buf[TGA_MEM_GRADS]);
            p->adam_v = adam_v + (p->grad - m->buf[TGA_MEM_GRADS]);
        }
    }
}

size_t tga_model_grad_offset(const tga_model *m, const tga_param *p) {
    return (size_t)(p->grad - m->buf[TGA_MEM_GRADS]);
}

void tga_model_optim_state(tga_model *m, float **adam_m, float **adam_v, size_t *lo, size_t *hi) {
    size_t n = m->plan.kind_numel[TGA_MEM_GRADS];
    *lo = 0;
    *hi = n;
    if (m->shape.zero_world > 1) tga_zero_shard(n, m->shape.zero_world, m->shape.zero_rank, lo, hi);
    int sharded = m->shape.zero_world > 1;
    *adam_m = planned(m, sharded ? "adam_m.shard" : "adam_m");
    *adam_v = planned(m, sharded ? "adam_v.shard" : "adam_v");
}

int tga_model_optim_sharded(const tga_model *m) { return m->shape.zero_world > 1; }

float *tga_model_master_shard(tga_model *m) { return planned(m, "master.shard"); }

void tga_model_set_grad_ready(tga_model *m, tga_grad_ready_fn fn, void *ctx) {
    m->ready_fn = fn;
    m->ready_ctx = ctx;
}

/* End of the gradient at flat offset `off` including the padding after it: the start of the next
 * trainable gradient, or the end of the buffer. */
static size_t padded_grad_end(const tga_model *m, size_t off) {
    size_t end = m->plan.kind_numel[TGA_MEM_GRADS];
    for (int i = 0; i < m->n_params; i++) {
        const tga_param *p = &m->params[i];
        if (!p->trainable) continue;
        size_t o = tga_model_grad_offset(m, p);
        if (o > off && o < end) end = o;
    }
    return end;
}

/* Tells the gradient hook that these gradients (NULL = frozen, skipped) are final. */
static void report_ready(tga_model *m, float *const *grads, int n) {
    if (!m->ready_fn) return;
    size_t lo = (size_t)-1, hi = 0;
    for (int i = 0; i < n; i++) {
        if (!grads[i]) continue;
        size_t off = (size_t)(grads[i] - m->buf[TGA_MEM_GRADS]);
        size_t end = padded_grad_end(m, off);
        if (off < lo) lo = off;
        if (end > hi) hi = end;
    }
    if (lo < hi) m->ready_fn(m->ready_ctx, lo, hi);
}

static void bind_named(tga_model *m) {
    const int L = m->dims.n_layers;
    m->tok_emb = planned(m, "tok_embeddings");
    m->g_tok_emb = planned(m, "grad.tok_embeddings");
    m->final_norm = planned(m, "final_norm");
    m->g_final_norm = planned(m, "grad.final_norm");
    m->lm_head = m->dims.tie_embeddings ? m->tok_emb : planned(m, "lm_head");
    m->g_lm_head = m->dims.tie_embeddings ? m->g_tok_emb : planned(m, "grad.lm_head");
    m->tok_emb16 = planned_bf16(m, "tok_embeddings");
    m->lm_head16 = m->dims.tie_embeddings ? m->tok_emb16 : planned_bf16(m, "lm_head");
    m->proj_w0_16 = planned_bf16(m, "projector.0.weight");
    m->proj_w2_16 = planned_bf16(m, "projector.2.weight");
    for (int l = 0; l < L; l++) {
        float **wp[] = {&m->w[l].attn_norm, &m->w[l].wq, &m->w[l].wk, &m->w[l].wv, &m->w[l].wo,
                        &m->w[l].ffn_norm, &m->w[l].w_gate, &m->w[l].w_up, &m->w[l].w_down};
        float **gp[] = {&m->g[l].attn_norm, &m->g[l].wq, &m->g[l].wk, &m->g[l].wv, &m->g[l].wo,
                        &m->g[l].ffn_norm, &m->g[l].w_gate, &m->g[l].w_up, &m->g[l].w_down};
        tga_bf16 **hp[N_LAYER_WEIGHTS] = {NULL, &m->w16[l].wq, &m->w16[l].wk, &m->w16[l].wv, &m->w16[l].wo, NULL,
                                          &m->w16[l].w_gate, &m->w16[l].w_up, &m->w16[l].w_down};
        for (int i = 0; i < N_LAYER_WEIGHTS; i++) {
            char name[96];
            snprintf(name, sizeof name, "layers.%d.%s", l, layer_weight_names[i]);
            *wp[i] = planned(m, name);
            if (hp[i]) *hp[i] = planned_bf16(m, name);
            snprintf(name, sizeof name, "grad.layers.%d.%s", l, layer_weight_names[i]);
            *gp[i] = planned(m, name);
        }
    }
    m->pw = (projector_weights){planned(m, "projector.0.weight"), planned(m, "projector.0.bias"),
                                planned(m, "projector.2.weight"), planned(m, "projector.2.bias")};
    m->pg = (projector_weights){planned(m, "grad.projector.0.weight"), planned(m, "grad.projector.0.bias"),
                                planned(m, "grad.projector.2.weight"), planned(m, "grad.projector.2.bias")};
    for (int l = 0; l <= L; l++) m->xs[l] = plannedf(m, "residual.%d", l);
    m->hs_final = planned(m, "final_norm.out");
    m->rstd_final = planned(m, "rstd.final_norm");
    int n_act = m->shape.recompute ? 1 : L;
    for (int l = 0; l < n_act; l++) {
        layer_acts *a = &m->acts[l];
        float **dst[] = {&a->h1, &a->rstd1, &a->q, &a->k, &a->v, &a->att, &a->lse, &a->x_mid, &a->h2,
                         &a->rstd2, &a->gate, &a->up, &a->act};
        tga_bf16 **dst16[N_LAYER_ACTS] = {&a->h1_16, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &a->h2_16, NULL,
                                          &a->gate16, &a->up16, &a->act16}; /* the ones bf16 may keep */
        for (int i = 0; i < N_LAYER_ACTS; i++) {
            char name[96];
            layer_act_name(name, sizeof name, &m->shape, l, i);
            *dst[i] = planned(m, name);
            if (dst16[i]) *dst16[i] = planned_bf16(m, name);
        }
    }
    m->proj_in = planned(m, "projector.in");
    m->proj_h = planned(m, "projector.h");
    m->proj_g = planned(m, "projector.gelu");
    m->proj_out = planned(m, "projector.out");
    m->dx = planned(m, "dx");
    m->dh = planned(m, "dh");
    m->delta = planned(m, "delta");
    m->dact = planned(m, "dact");
    m->dgate = planned(m, "dgate");
    m->dup = planned(m, "dup");
    /* bf16 gate and up: the products' fp32 outputs go to the dgate/dup scratch, free in every
     * forward (and recompute) pass; swiglu_forward_bf16 reads them, the backward never does */
    for (int l = 0; l < n_act; l++)
        if (m->acts[l].gate16) m->acts[l].gate = m->dgate, m->acts[l].up = m->dup;
    m->datt = planned(m, "datt");
    m->dq = planned(m, "dq");
    m->dk = planned(m, "dk");
    m->dv = planned(m, "dv");
    m->ce_scratch = planned(m, "lm_head.chunk");
    m->dproj_a = planned(m, "projector.grad_a");
    m->dproj_b = planned(m, "projector.grad_b");
    m->pool_v = planned(m, "align.pool_image");
    m->pool_r = planned(m, "align.pool_retrieved");
    m->cap_target = planned(m, "align.caption_target");
    m->grad_v = planned(m, "align.grad_image");
    m->grad_r = planned(m, "align.grad_retrieved");
    m->cos_vc = planned(m, "align.cos_image");
    m->cos_rc = planned(m, "align.cos_retrieved");
    m->rope_table = planned(m, "rope.cos_sin");
    int32_t *ints = (int32_t *)planned(m, "batch.int_data");
    const int B = m->shape.micro_batch;
    m->d_ids = ints;
    m->d_targets = ints + m->n_max;
    m->d_lengths = m->d_targets + m->n_max;
    m->d_seg = m->d_lengths + B;
}

tga_status tga_model_create(tga_model **out, const tga_model_dims *dims, const tga_run_shape *shape) {
    *out = NULL;
    tga_model *m = calloc(1, sizeof *m);
    if (!m) return tga_error(TGA_ERR_NOMEM, "model: out of host memory");
    m->dims = *dims;
    m->shape = *shape;
    m->hd = dims->head_dim ? dims->head_dim : dims->dim / dims->n_heads;
    m->n_max = shape->micro_batch * shape->max_len;
    tga_status st = tga_model_plan(dims, shape, &m->plan);
    if (st != TGA_OK) {
        free(m);
        return st;
    }
    for (int k = 0; k < TGA_MEM_KINDS; k++) {
        size_t bytes = tga_plan_bytes(&m->plan, (tga_mem_kind)k);
        m->buf[k] = OPS->alloc(bytes ? bytes : 64);
        if (!m->buf[k]) {
            char b[32];
            tga_model_free(m);
            return tga_error(TGA_ERR_NOMEM, "model: cannot allocate %s of %s on %s", tga_mem_kind_name((tga_mem_kind)k),
                             tga_format_bytes((double)bytes, b, sizeof b), OPS->name);
        }
    }
    const int L = dims->n_layers;
    m->params = calloc((size_t)m->plan.count, sizeof *m->params);
    m->w = calloc((size_t)L, sizeof *m->w);
    m->g = calloc((size_t)L, sizeof *m->g);
    m->w16 = calloc((size_t)L, sizeof *m->w16);
    m->xs = calloc((size_t)L + 1, sizeof *m->xs);
    m->acts = calloc((size_t)L, sizeof *m->acts);
    if (!m->params || !m->w || !m->g || !m->w16 || !m->xs || !m->acts) {
        tga_model_free(m);
        return tga_error(TGA_ERR_NOMEM, "model: out of host memory");
    }
    bind_params(m);
    bind_named(m);
    const int half = m->hd / 2;
    float *table = malloc((size_t)dims->max_seq_len * half * 2 * sizeof(float));
    if (!table) {
        tga_model_free(m);
        return tga_error(TGA_ERR_NOMEM, "model: out of host memory for the RoPE table");
    }
    tga_rope_table(table, dims->max_seq_len, m->hd, dims->rope_theta);
    OPS->upload(m->rope_table, table, (size_t)dims->max_seq_len * half * 2 * sizeof(float));
    free(table);
    *out = m;
    return TGA_OK;
}

void tga_model_free(tga_model *m) {
    if (!m) return;
    for (int k = 0; k < TGA_MEM_KINDS; k++)
        if (m->buf[k]) OPS->free(m->buf[k]);
    tga_plan_free(&m->plan);
    free(m->params);
    free(m->w);
    free(m->g);
    free(m->w16);
    free(m->xs);
    free(m->acts);
    free(m);
}

const tga_plan *tga_model_get_plan(const tga_model *m) { return &m->plan; }
const tga_model_dims *tga_model_get_dims(const tga_model *m) { return &m->dims; }
const tga_run_shape *tga_model_get_shape(const tga_model *m) { return &m->shape; }
int tga_model_param_count(const tga_model *m) { return m->n_params; }
tga_param *tga_model_param(tga_model *m, int i) { return &m->params[i]; }

tga_param *tga_model_find_param(tga_model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

size_t tga_model_numel(const tga_model *m, int trainable_only) {
    size_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (!trainable_only || m->params[i].trainable) n += m->params[i].numel;
    return n;
}

tga_status tga_model_init_random(tga_model *m, uint64_t seed, float std) {
    for (int i = 0; i < m->n_params; i++) {
        tga_param *p = &m->params[i];
        if (p->uploaded) continue;
        tga_rng_stream s = tga_rng_stream_make(seed, TGA_RNG_INIT, (uint64_t)i);
        float *host = malloc(p->numel * sizeof(float));
        if (!host) return tga_error(TGA_ERR_NOMEM, "out of host memory initialising %s", p->name);
        int is_projector = strncmp(p->name, "projector.", 10) == 0;
        if (strstr(p->name, "norm")) {
            for (size_t j = 0; j < p->numel; j++) host[j] = 1.0f;
        } else if (is_projector) {
            /* nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias */
            const char *layer = p->name + 10; /* "0.weight" / "2.bias" */
            int fan_in = layer[0] == '0' ? m->dims.vision_dim : m->dims.dim;
            float bound = 1.0f / sqrtf((float)fan_in);
            tga_rng_fill_uniform(&s, host, p->numel, -bound, bound);
        } else {
            tga_rng_fill_normal(&s, host, p->numel, 0.0f, std);
        }
        tga_status st = tga_model_param_upload(m, p, host);
        free(host);
        TGA_TRY(st);
    }
    return TGA_OK;
}

tga_status tga_model_param_upload(tga_model *m, tga_param *p, const float *host) {
    p->uploaded = 1;
    if (p->data) {
        OPS->upload(p->data, host, p->numel * sizeof(float));
        if (p->data_bf16) OPS->to_bf16(p->data_bf16, p->data, p->numel);
    } else {
        tga_bf16 *h = malloc(p->numel * sizeof *h);
        if (!h) return tga_error(TGA_ERR_NOMEM, "out of memory converting %s to bf16", p->name);
        tga_bf16_narrow(h, host, p->numel);
        OPS->upload(p->data_bf16, h, p->numel * sizeof *h);
        free(h);
    }
    float *master = tga_model_master_shard(m);
    if (!p->trainable || !master) return TGA_OK;
    /* the part of this parameter in the rank's master shard, exactly */
    size_t lo, hi, off = tga_model_grad_offset(m, p);
    float *unused_m, *unused_v;
    tga_model_optim_state(m, &unused_m, &unused_v, &lo, &hi);
    size_t first = off > lo ? off : lo, end = off + p->numel < hi ? off + p->numel : hi;
    if (first < end) OPS->upload(master + (first - lo), host + (first - off), (end - first) * sizeof(float));
    return TGA_OK;
}

tga_status tga_model_param_download(const tga_param *p, float *host) {
    if (p->data) {
        OPS->download(host, p->data, p->numel * sizeof(float));
        return TGA_OK;
    }
    tga_bf16 *h = malloc(p->numel * sizeof *h);
    if (!h) return tga_error(TGA_ERR_NOMEM, "out of memory reading %s", p->name);
    OPS->download(h, p->data_bf16, p->numel * sizeof *h);
    tga_bf16_widen(host, h, p->numel);
    free(h);
    return TGA_OK;
}

void tga_model_zero_grads(tga_model *m) {
    size_t bytes = tga_plan_bytes(&m->plan, TGA_MEM_GRADS);
    if (bytes) OPS->zero(m->buf[TGA_MEM_GRADS], bytes);
}

float *tga_model_grad_buffer(tga_model *m, size_t *n) {
    *n = m->plan.kind_numel[TGA_MEM_GRADS];
    return m->buf[TGA_MEM_GRADS];
}

/* ---- forward ------------------------------------------------------------------------------ */

/* A linear layer on a matrix held as fp32 (w) or bf16 (w16, when not NULL), its input in fp32 (in)
 * or, with bf16 weights, already rounded to bf16 by its producer (in16, when not NULL). */
static void linear_fwd(float *out, const float *in, const tga_bf16 *in16, const float *w, const tga_bf16 *w16,
                       const float *bias, int N, int in_dim, int out_dim) {
    if (in16)
        OPS->linear_forward_bf16_input(out, in16, w16, bias, N, in_dim, out_dim);
    else if (w16)
        OPS->linear_forward_bf16(out, in, w16, bias, N, in_dim, out_dim);
    else
        OPS->linear_forward(out, in, w, bias, N, in_dim, out_dim);
}

static void linear_bwd(float *din, float *dw, float *db, const float *dout, const float *in, const tga_bf16 *in16,
                       const float *w, const tga_bf16 *w16, int N, int in_dim, int out_dim, int accumulate_din) {
    if (in16)
        OPS->linear_backward_bf16_input(din, dw, db, dout, in16, w16, N, in_dim, out_dim, accumulate_din);
    else if (w16)
        OPS->linear_backward_bf16(din, dw, db, dout, in, w16, N, in_dim, out_dim, accumulate_din);
    else
        OPS->linear_backward(din, dw, db, dout, in, w, N, in_dim, out_dim, accumulate_din);
}

static void embed(tga_model *m, float *out, int N) {
    if (m->tok_emb16)
        OPS->embedding_forward_bf16(out, m->d_ids, m->tok_emb16, N, m->dims.dim);
    else
        OPS->embedding_forward(out, m->d_ids, m->tok_emb, N, m->dims.dim);
}

/* One decoder layer: x_out = x_in + attn(norm(x_in)); x_out += mlp(norm(x_out)).
 * x_out NULL recomputes for the backward pass: it stops after the SwiGLU activation, or before it
 * when W_down is frozen (only its weight gradient reads the activation) and gate and up are fp32. */
static void layer_forward(tga_model *m, int l, layer_acts *a, const float *x_in, float *x_out, int B, int T) {
    const tga_model_dims *d = &m->dims;
    const layer_weights *w = &m->w[l];
    const layer_bf16 *h = &m->w16[l];
    const int N = B * T, D = d->dim, F = d->ffn_dim, H = d->n_heads, KVH = d->n_kv_heads, hd = m->hd;
    if (a->h1_16) /* bf16 weights: the products' inputs stored in bf16 by their producers */
        OPS->rmsnorm_forward_bf16(a->h1_16, a->rstd1, x_in, w->attn_norm, N, D, d->norm_eps); /* (N,D) */
    else
        OPS->rmsnorm_forward(a->h1, a->rstd1, x_in, w->attn_norm, N, D, d->norm_eps);
    linear_fwd(a->q, a->h1, a->h1_16, w->wq, h->wq, NULL, N, D, H * hd);              /* (N,H*hd) */
    linear_fwd(a->k, a->h1, a->h1_16, w->wk, h->wk, NULL, N, D, KVH * hd);            /* (N,KVH*hd) */
    linear_fwd(a->v, a->h1, a->h1_16, w->wv, h->wv, NULL, N, D, KVH * hd);
    OPS->rope(a->q, m->rope_table, B, T, H, hd, 0);
    OPS->rope(a->k, m->rope_table, B, T, KVH, hd, 0);
    OPS->attention_forward(a->att, a->lse, a->q, a->k, a->v, m->d_lengths, B, T, H, KVH, hd); /* (N,H*hd) */
    linear_fwd(m->delta, a->att, NULL, w->wo, h->wo, NULL, N, H * hd, D);                      /* (N,D) */
    OPS->copy(a->x_mid, x_in, (size_t)N * D * sizeof(float));
    if (a->h2_16)
        OPS->add_rmsnorm_forward_bf16(a->x_mid, m->delta, a->h2_16, a->rstd2, w->ffn_norm, N, D, d->norm_eps);
    else
        OPS->add_rmsnorm_forward(a->x_mid, m->delta, a->h2, a->rstd2, w->ffn_norm, N, D, d->norm_eps);
    linear_fwd(a->gate, a->h2, a->h2_16, w->w_gate, h->w_gate, NULL, N, D, F); /* (N,F) */
    linear_fwd(a->up, a->h2, a->h2_16, w->w_up, h->w_up, NULL, N, D, F);
    if (a->gate16) /* gate, up and the activation kept in bf16 */
        OPS->swiglu_forward_bf16(a->act16, a->gate16, a->up16, a->gate, a->up, (size_t)N * F);
    else if (x_out || m->g[l].w_down)
        OPS->swiglu_forward(a->act, a->gate, a->up, (size_t)N * F);
    if (!x_out) return;
    linear_fwd(m->delta, a->act, a->act16, w->w_down, h->w_down, NULL, N, F, D); /* (N,D) */
    OPS->copy(x_out, a->x_mid, (size_t)N * D * sizeof(float));
    OPS->add_inplace(x_out, m->delta, (size_t)N * D);
}

static layer_acts *acts_for(tga_model *m, int l) { return m->shape.recompute ? &m->acts[0] : &m->acts[l]; }

static int align_index(const tga_align_config *a, int hs_index) {
    for (int j = 0; j < a->n_layers; j++)
        if (a->layers[j] == hs_index) return j;
    return -1;
}

/* Builds a segment table in device int scratch starting at *cursor. */
static void upload_segments(tga_model *m, tga_segments *seg, int32_t **cursor, int n_seg, const int32_t *start,
                            const int32_t *count, const int32_t *out_idx, int n_out) {
    int32_t *host = calloc((size_t)(3 * n_seg + n_out) + 1, sizeof(int32_t));
    if (!host) return;
    for (int i = 0; i < n_seg; i++) {
        host[i] = start[i];
        host[n_seg + i] = count[i];
        host[2 * n_seg + i] = out_idx[i];
        host[3 * n_seg + out_idx[i]] += count[i];
    }
    int32_t *dev = *cursor;
    OPS->upload(dev, host, (size_t)(3 * n_seg + n_out) * sizeof(int32_t));
    free(host);
    *seg = (tga_segments){n_seg, n_out, dev, dev + n_seg, dev + 2 * n_seg, dev + 3 * n_seg};
    *cursor += 3 * n_seg + n_out;
}

/* The text-only, no-gradient forward on the captions (current weights), pooled over each sample's
 * caption span at the align layers into cap_target [Lsel, B, D]. Uses the main buffers as scratch:
 * it runs before the multimodal forward. */
static void caption_forward(tga_model *m, const tga_batch *b, int32_t **cursor) {
    const int B = b->B, T = b->Tc, N = B * T, D = m->dims.dim, L = m->dims.n_layers;
    int32_t *rows = malloc((size_t)B * 2 * sizeof(int32_t)), *outs = rows + B;
    for (int i = 0; i < B; i++) {
        rows[i] = i * T + b->cap_start[i];
        outs[i] = i;
    }
    upload_segments(m, &m->seg_cap, cursor, B, rows, b->cap_len, outs, B);
    free(rows);
    OPS->upload(m->d_ids, b->cap_ids, (size_t)N * sizeof(int32_t));
    OPS->upload(m->d_lengths, b->cap_lengths, (size_t)B * sizeof(int32_t));
    float *cur = m->xs[0], *next = m->xs[1];
    embed(m, cur, N);
    const tga_align_config *al = &m->align;
    int j = align_index(al, 0);
    if (j >= 0) OPS->segment_mean_forward(m->cap_target + (size_t)j * B * D, cur, &m->seg_cap, D);
    for (int l = 0; l < L; l++) {
        layer_forward(m, l, &m->acts[0], cur, next, B, T);
        float *t = cur;
        cur = next;
        next = t;
        if (l + 1 < L && (j = align_index(al, l + 1)) >= 0)
            OPS->segment_mean_forward(m->cap_target + (size_t)j * B * D, cur, &m->seg_cap, D);
    }
    if ((j = align_index(al, L)) >= 0) {
        OPS->rmsnorm_forward(m->hs_final, m->rstd_final, cur, m->final_norm, N, D, m->dims.norm_eps);
        OPS->segment_mean_forward(m->cap_target + (size_t)j * B * D, m->hs_final, &m->seg_cap, D);
    }
}

/* Projector on every image's patch features, spliced into the embeddings at the image spans. */
static void projector_forward(tga_model *m, const tga_batch *b) {
    const int D = m->dims.dim, Dv = m->dims.vision_dim, P = m->shape.image_tokens, rows = b->n_images * P;
    if (rows == 0) return;
    OPS->upload(m->proj_in, b->image_features, (size_t)rows * Dv * sizeof(float));
    if (m->dims.projector == TGA_PROJ_MLP2X_GELU) {
        linear_fwd(m->proj_h, m->proj_in, NULL, m->pw.w0, m->proj_w0_16, NULL, rows, Dv, D); /* (rows,D) */
        OPS->bias_gelu_forward(m->proj_h, m->proj_g, m->pw.b0, rows, D);                     /* + b0, GELU */
        linear_fwd(m->proj_out, m->proj_g, NULL, m->pw.w2, m->proj_w2_16, m->pw.b2, rows, D, D);
    } else {
        linear_fwd(m->proj_out, m->proj_in, NULL, m->pw.w0, m->proj_w0_16, m->pw.b0, rows, Dv, D);
    }
    for (int i = 0; i < b->n_images; i++) {
        size_t row = (size_t)b->image_sample[i] * b->T + (size_t)b->image_start[i];
        OPS->copy(m->xs[0] + row * D, m->proj_out + (size_t)i * P * D, (size_t)P * D * sizeof(float));
    }
}

static void build_targets(const tga_batch *b, int32_t *targets) {
    for (int s = 0; s < b->B; s++)
        for (int t = 0; t < b->T; t++) {
            int32_t next = t + 1 < b->T ? b->labels[s * b->T + t + 1] : TGA_IGNORE_INDEX;
            targets[s * b->T + t] = next;
        }
}

/* Pools the image and retrieved-text spans at every align layer and evaluates the two terms, all
 * layers in one op: pool_v/pool_r/grad_v/grad_r [Lsel, B, D], cos_vc [Lsel, B]. */
static void align_losses(tga_model *m, const tga_batch *b, const tga_step_scalars *sc, tga_losses *out) {
    const int B = b->B, D = m->dims.dim, L = m->dims.n_layers, n_al = m->align.n_layers;
    const tga_align_config *al = &m->align;
    const double decay = 1.0 - sc->progress;
    const double denom = (double)n_al * sc->n_samples_global;
    tga_align_args args = {
        .n = B, .dim = D, .c = m->cap_target, .use_pair = m->d_use_pair, .use_rank = m->d_use_rank,
        .w_pair = (float)(al->pair_weight * pow(decay, al->pair_pow) / denom),
        .w_rank = (float)(al->rank_weight * pow(decay, al->rank_pow) / denom), .eps = al->eps};
    const float *hidden[TGA_MAX_ALIGN_LAYERS];
    for (int j = 0; j < n_al; j++) hidden[j] = al->layers[j] == L ? m->hs_final : m->xs[al->layers[j]];
    OPS->tga_align_fused_forward(&out->pair, &out->rank, m->cos_vc, m->cos_rc, m->pool_v, m->pool_r,
                                 m->align_grad ? m->grad_v : NULL, m->align_grad ? m->grad_r : NULL, hidden, n_al,
                                 &m->seg_img, &m->seg_ret, &args);
    float *cos_host = malloc((size_t)n_al * B * sizeof(float));
    uint8_t *use = malloc((size_t)B);
    OPS->download(use, m->d_use_pair, (size_t)B);
    OPS->download(cos_host, m->cos_vc, (size_t)n_al * B * sizeof(float));
    for (int j = 0; j < n_al; j++) {
        out->cos_vc_sum[j] = 0;
        for (int s = 0; s < B; s++)
            if (use[s]) out->cos_vc_sum[j] += cos_host[(size_t)j * B + s];
    }
    out->cos_count = 0;
    for (int s = 0; s < B; s++) out->cos_count += use[s];
    free(cos_host);
    free(use);
}

/* Sets up spans and flags for the multimodal batch in device int scratch. */
static void upload_batch(tga_model *m, const tga_batch *b, int32_t **cursor) {
    const int B = b->B, N = B * b->T, P = m->shape.image_tokens;
    OPS->upload(m->d_ids, b->input_ids, (size_t)N * sizeof(int32_t));
    int32_t *targets = malloc((size_t)N * sizeof(int32_t));
    build_targets(b, targets);
    OPS->upload(m->d_targets, targets, (size_t)N * sizeof(int32_t));
    free(targets);
    OPS->upload(m->d_lengths, b->lengths, (size_t)B * sizeof(int32_t));

    int32_t *tmp = malloc((size_t)(3 * (b->n_images + B) + 1) * sizeof(int32_t));
    int32_t *rows = tmp, *counts = tmp + b->n_images + B, *outs = counts + b->n_images + B;
    for (int i = 0; i < b->n_images; i++) {
        rows[i] = b->image_sample[i] * b->T + b->image_start[i];
        counts[i] = P;
        outs[i] = b->image_sample[i];
    }
    upload_segments(m, &m->seg_img, cursor, b->n_images, rows, counts, outs, B);
    for (int s = 0; s < B; s++) {
        rows[s] = s * b->T + b->ret_start[s];
        counts[s] = b->ret_len[s];
        outs[s] = s;
    }
    upload_segments(m, &m->seg_ret, cursor, B, rows, counts, outs, B);
    uint8_t *flags = calloc((size_t)2 * B, 1);
    for (int i = 0; i < b->n_images; i++) flags[b->image_sample[i]] = 1;
    for (int s = 0; s < B; s++) {
        flags[s] = flags[s] && !b->tox[s];
        flags[B + s] = flags[s] && b->ret_len[s] > 0;
    }
    m->d_use_pair = (uint8_t *)*cursor;
    m->d_use_rank = m->d_use_pair + B;
    OPS->upload(m->d_use_pair, flags, (size_t)2 * B);
    free(flags);
    free(tmp);
}

/* ---- backward ----------------------------------------------------------------------------- */

/* dx holds d(x_out) on entry and d(x_in) on exit. Gradient pointers are NULL for frozen weights. */
static void layer_backward(tga_model *m, int l, const layer_acts *a, const float *x_in, int B, int T) {
    const tga_model_dims *d = &m->dims;
    const layer_weights *w = &m->w[l], *g = &m->g[l];
    const layer_bf16 *h = &m->w16[l];
    const int N = B * T, D = d->dim, F = d->ffn_dim, H = d->n_heads, KVH = d->n_kv_heads, hd = m->hd;
    float *dx = m->dx;
    /* MLP: x_out = x_mid + W_down(silu(W_gate h2) * W_up h2), h2 = norm(x_mid) */
    linear_bwd(m->dact, g->w_down, NULL, dx, a->act, a->act16, w->w_down, h->w_down, N, F, D, 0);
    if (a->gate16)
        OPS->swiglu_backward_bf16(m->dgate, m->dup, m->dact, a->gate16, a->up16, (size_t)N * F);
    else
        OPS->swiglu_backward(m->dgate, m->dup, m->dact, a->gate, a->up, (size_t)N * F);
    linear_bwd(m->dh, g->w_gate, NULL, m->dgate, a->h2, a->h2_16, w->w_gate, h->w_gate, N, D, F, 0);
    linear_bwd(m->dh, g->w_up, NULL, m->dup, a->h2, a->h2_16, w->w_up, h->w_up, N, D, F, 1);
    OPS->rmsnorm_backward(dx, g->ffn_norm, m->dh, a->x_mid, w->ffn_norm, a->rstd2, N, D, 1); /* d x_mid */
    /* attention: x_mid = x_in + Wo attn(rope(Wq h1), rope(Wk h1), Wv h1), h1 = norm(x_in) */
    linear_bwd(m->datt, g->wo, NULL, dx, a->att, NULL, w->wo, h->wo, N, H * hd, D, 0);
    OPS->attention_backward(m->dq, m->dk, m->dv, m->datt, a->q, a->k, a->v, a->att, a->lse, m->d_lengths, B, T, H,
                            KVH, hd);
    OPS->rope(m->dq, m->rope_table, B, T, H, hd, 1);
    OPS->rope(m->dk, m->rope_table, B, T, KVH, hd, 1);
    linear_bwd(m->dh, g->wq, NULL, m->dq, a->h1, a->h1_16, w->wq, h->wq, N, D, H * hd, 0);
    linear_bwd(m->dh, g->wk, NULL, m->dk, a->h1, a->h1_16, w->wk, h->wk, N, D, KVH * hd, 1);
    linear_bwd(m->dh, g->wv, NULL, m->dv, a->h1, a->h1_16, w->wv, h->wv, N, D, KVH * hd, 1);
    OPS->rmsnorm_backward(dx, g->attn_norm, m->dh, x_in, w->attn_norm, a->rstd1, N, D, 1); /* d x_in */
}

/* Adds the alignment gradients of hs[h] (pooled-vector gradients spread over the spans) to dst. */
static void add_align_grad(tga_model *m, int hs_index, float *dst, int B) {
    if (!m->align_grad) return;
    int j = align_index(&m->align, hs_index);
    if (j < 0) return;
    size_t off = (size_t)j * B * m->dims.dim;
    OPS->tga_align_fused_backward(dst, m->grad_v + off, m->grad_r + off, &m->seg_img, &m->seg_ret, m->dims.dim);
}

static void projector_backward(tga_model *m, const tga_batch *b) {
    const int D = m->dims.dim, Dv = m->dims.vision_dim, P = m->shape.image_tokens, rows = b->n_images * P;
    if (rows == 0 || !m->pg.w0) return;
    for (int i = 0; i < b->n_images; i++) {
        size_t row = (size_t)b->image_sample[i] * b->T + (size_t)b->image_start[i];
        OPS->copy(m->dproj_a + (size_t)i * P * D, m->dx + row * D, (size_t)P * D * sizeof(float));
    }
    if (m->dims.projector == TGA_PROJ_MLP2X_GELU) {
        linear_bwd(m->dproj_b, m->pg.w2, m->pg.b2, m->dproj_a, m->proj_g, NULL, m->pw.w2, m->proj_w2_16, rows, D, D, 0);
        OPS->gelu_bias_backward(m->dproj_a, m->pg.b0, m->dproj_b, m->proj_h, rows, D); /* GELU and b0 */
        linear_bwd(NULL, m->pg.w0, NULL, m->dproj_a, m->proj_in, NULL, m->pw.w0, m->proj_w0_16, rows, Dv, D, 0);
    } else {
        linear_bwd(NULL, m->pg.w0, m->pg.b0, m->dproj_a, m->proj_in, NULL, m->pw.w0, m->proj_w0_16, rows, Dv, D, 0);
    }
}

static tga_status check_batch(const tga_model *m, const tga_batch *b) {
    const tga_run_shape *s = &m->shape;
    if (b->B < 1 || b->B > s->micro_batch || b->T < 1 || b->T > s->max_len || b->n_images < 0 ||
        b->n_images > s->max_images ||
        (m->align.mode != TGA_ALIGN_OFF && b->n_images > 0 && (b->Tc < 1 || b->Tc > s->max_len)))
        return tga_error(TGA_ERR_INTERNAL, "batch of %d x %d (captions %d, %d images) exceeds the planned %d x %d "
                                           "(%d images)", b->B, b->T, b->Tc, b->n_images, s->micro_batch,
                         s->max_len, s->max_images);
    for (int i = 0; i < b->n_images; i++)
        if (b->image_sample[i] < 0 || b->image_sample[i] >= b->B || b->image_start[i] < 0 ||
            b->image_start[i] + s->image_tokens > b->lengths[b->image_sample[i]])
            return tga_error(TGA_ERR_FORMAT, "batch: image %d span [%d, %d) lies outside sample %d", i,
                             b->image_start[i], b->image_start[i] + s->image_tokens, b->image_sample[i]);
    for (int i = 0; i < b->B * b->T; i++)
        if (b->input_ids[i] >= m->dims.vocab_size || (b->input_ids[i] < 0 && b->input_ids[i] != TGA_IMAGE_TOKEN_ID))
            return tga_error(TGA_ERR_FORMAT, "batch: token id %d at sample %d position %d is outside the vocabulary "
                                             "[0, %d)", b->input_ids[i], i / b->T, i % b->T, m->dims.vocab_size);
    return TGA_OK;
}

tga_status tga_model_forward_backward(tga_model *m, const tga_batch *b, const tga_align_config *align,
                                      const tga_step_scalars *sc, int with_backward, tga_losses *out) {
    m->align = *align;
    TGA_TRY(check_batch(m, b));
    memset(out, 0, sizeof *out);
    const tga_model_dims *d = &m->dims;
    const int B = b->B, T = b->T, N = B * T, D = d->dim, L = d->n_layers;
    m->B = B;
    m->T = T;
    m->align_active = align->mode != TGA_ALIGN_OFF && align->n_layers > 0 && b->n_images > 0;
    m->align_grad = m->align_active && align->mode == TGA_ALIGN_INTENDED && with_backward;
    out->n_align_layers = m->align_active ? align->n_layers : 0;

    int32_t *cursor = m->d_seg;
    if (m->align_active) caption_forward(m, b, &cursor);
    upload_batch(m, b, &cursor);

    /* forward: embeddings (N,D) with image patches spliced in, L layers, final norm */
    embed(m, m->xs[0], N);
    projector_forward(m, b);
    for (int l = 0; l < L; l++) layer_forward(m, l, acts_for(m, l), m->xs[l], m->xs[l + 1], B, T);
    OPS->rmsnorm_forward(m->hs_final, m->rstd_final, m->xs[L], m->final_norm, N, D, d->norm_eps);

    /* losses: CE over supervised targets, normalised by the global count; alignment terms */
    double ce_scale = sc->n_tokens_global > 0 ? 1.0 / sc->n_tokens_global : 0.0;
    float *dh = with_backward ? m->dh : NULL, *dw_head = with_backward ? m->g_lm_head : NULL;
    if (m->lm_head16)
        OPS->lm_head_ce_bf16(&out->ce_sum, dh, dw_head, m->hs_final, m->lm_head16, m->d_targets, N, D, d->vocab_size,
                             (float)ce_scale, m->ce_scratch, m->shape.ce_chunk);
    else
        OPS->lm_head_ce(&out->ce_sum, dh, dw_head, m->hs_final, m->lm_head, m->d_targets, N, D, d->vocab_size,
                        (float)ce_scale, m->ce_scratch, m->shape.ce_chunk);
    out->ce = out->ce_sum * ce_scale;
    if (m->align_active) align_losses(m, b, sc, out);
    if (!with_backward) return TGA_OK;

    /* backward: the same list in reverse; dx carries d(residual stream) */
    add_align_grad(m, L, m->dh, B);
    OPS->rmsnorm_backward(m->dx, m->g_final_norm, m->dh, m->xs[L], m->final_norm, m->rstd_final, N, D, 0);
    float *head[2] = {m->g_final_norm, d->tie_embeddings ? NULL : m->g_lm_head}; /* tied: with the embeddings */
    report_ready(m, head, 2);
    for (int l = L - 1; l >= 0; l--) {
        if (l + 1 < L) add_align_grad(m, l + 1, m->dx, B);
        layer_acts *a = acts_for(m, l);
        if (m->shape.recompute) layer_forward(m, l, a, m->xs[l], NULL, B, T);
        layer_backward(m, l, a, m->xs[l], B, T);
        const layer_weights *g = &m->g[l];
        float *layer[N_LAYER_WEIGHTS] = {g->attn_norm, g->wq, g->wk, g->wv, g->wo, g->ffn_norm, g->w_gate, g->w_up,
                                         g->w_down};
        report_ready(m, layer, N_LAYER_WEIGHTS);
    }
    add_align_grad(m, 0, m->dx, B); /* dx = d(inputs_embeds) */
    if (m->g_tok_emb) OPS->embedding_backward(m->g_tok_emb, m->dx, m->d_ids, N, D, d->vocab_size);
    report_ready(m, &m->g_tok_emb, 1);
    projector_backward(m, b);
    float *projector[4] = {m->pg.w0, m->pg.b0, m->pg.w2, m->pg.b2};
    report_ready(m, projector, 4);
    return TGA_OK;
}

/* ---- accessors ---------------------------------------------------------------------------- */

void tga_model_head_logits(tga_model *m, float *out, const float *hidden, int n) {
    linear_fwd(out, hidden, NULL, m->lm_head, m->lm_head16, NULL, n, m->dims.dim, m->dims.vocab_size);
}

void tga_model_logits(tga_model *m, float *host_logits) {
    const int N = m->B * m->T, D = m->dims.dim, V = m->dims.vocab_size, chunk = m->shape.ce_chunk;
    for (int r = 0; r < N; r += chunk) {
        int n = N - r < chunk ? N - r : chunk;
        tga_model_head_logits(m, m->ce_scratch, m->hs_final + (size_t)r * D, n);
        OPS->download(host_logits + (size_t)r * V, m->ce_scratch, (size_t)n * V * sizeof(float));
    }
}

void tga_model_hidden(tga_model *m, int index, float *host_out) {
    const float *src = index == m->dims.n_layers ? m->hs_final : m->xs[index];
    OPS->download(host_out, src, (size_t)m->B * m->T * m->dims.dim * sizeof(float));
}

void tga_model_input_grad(tga_model *m, float *host_out) {
    OPS->download(host_out, m->dx, (size_t)m->B * m->T * m->dims.dim * sizeof(float));
}
