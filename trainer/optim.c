#include "trainer/optim.h"

#include <math.h>

#include <stdio.h>

#include "dist/comm.h"
#include "kernels/ops.h"
#include "runtime/log.h"

double tga_lr_at(const tga_optim_config *c, long long step) {
    if (c->schedule == TGA_SCHEDULE_CONSTANT) return c->lr;
    long long warmup = (long long)ceil(c->warmup_ratio * (double)c->total_steps);
    if (step < warmup) return c->lr * (double)step / (double)(warmup > 1 ? warmup : 1);
    long long span = c->total_steps - warmup;
    double progress = (double)(step - warmup) / (double)(span > 1 ? span : 1);
    double f = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    return c->lr * (f > 0 ? f : 0);
}

tga_status tga_check_losses(const tga_losses *l, long long step) {
    const double values[3] = {l->ce, l->pair, l->rank};
    static const char *names[3] = {"cross-entropy", "alignment pair term", "alignment rank term"};
    for (int i = 0; i < 3; i++)
        if (!isfinite(values[i]))
            return tga_error(TGA_ERR_NUMERIC, "step %lld: the %s is %g", step, names[i], values[i]);
    return TGA_OK;
}

/* The part of trainable parameter p inside the flat range [lo, hi): its elements [*first, *first + *count). */
static int slice_of(tga_model *m, const tga_param *p, size_t lo, size_t hi, size_t *first, size_t *count) {
    size_t off = tga_model_grad_offset(m, p), a = off > lo ? off : lo, b = off + p->numel < hi ? off + p->numel : hi;
    if (!p->trainable || a >= b) return 0;
    *first = a - off;
    *count = b - a;
    return 1;
}

/* Sum of squares of the gradients in this rank's range, parameter by parameter in a fixed order;
 * with ZeRO-1 the ranks' sums are then added in rank order. *bad names the first parameter with a
 * non-finite gradient in this rank's range (NULL if none). */
static tga_status grad_sum_squares(tga_model *m, size_t lo, size_t hi, int sharded, double *sq, const char **bad) {
    *sq = 0;
    *bad = NULL;
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        size_t first, count;
        if (!slice_of(m, p, lo, hi, &first, &count)) continue;
        double s = OPS->sum_squares(p->grad + first, count);
        if (!isfinite(s) && !*bad) *bad = p->name;
        *sq += s;
    }
    return sharded ? tga_dist_sum_f64(sq, 1, "gradient norm") : TGA_OK;
}

tga_status tga_optim_step(tga_model *m, const tga_optim_config *c, long long step, long long *adam_updates,
                          tga_step_report *r) {
    const int n = tga_model_param_count(m);
    float *adam_m, *adam_v;
    size_t lo, hi;
    tga_model_optim_state(m, &adam_m, &adam_v, &lo, &hi);
    int sharded = tga_model_optim_sharded(m);
    r->lr = tga_lr_at(c, step);
    r->skipped = 0;
    double sq;
    const char *bad;
    TGA_TRY(grad_sum_squares(m, lo, hi, sharded, &sq, &bad));
    if (!isfinite(sq)) {
        char where[160];
        snprintf(where, sizeof where, "%s%s", bad ? "the gradient of " : "a gradient on another rank's shard",
                 bad ? bad : "");
        if (c->on_nonfinite == TGA_NONFINITE_STOP)
            return tga_error(TGA_ERR_NUMERIC, "step %lld: %s contains NaN or Inf (train.on_nonfinite: stop)", step,
                             where);
        TGA_WARN("step %lld: %s contains NaN or Inf; skipping this step (train.on_nonfinite: skip)", step, where);
        r->skipped = 1;
        r->grad_norm = sq;
        tga_model_zero_grads(m);
        return TGA_OK;
    }
    r->grad_norm = sqrt(sq);
    /* torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when < 1 */
    double coef = c->grad_clip > 0 ? c->grad_clip / (r->grad_norm + 1e-6) : 1.0;
    *adam_updates += 1;
    float *masters = tga_model_master_shard(m);
    for (int i = 0; i < n; i++) {
        tga_param *p = tga_model_param(m, i);
        size_t first, count;
        if (!slice_of(m, p, lo, hi, &first, &count)) continue;
        if (coef < 1.0) OPS->scale_inplace(p->grad + first, (float)coef, count);
        size_t at = tga_model_grad_offset(m, p) + first - lo; /* in the moment buffers */
        /* AdamW updates the master (the fp32 data, or with sharded masters, bf16 + ZeRO-1, the
         * shard's); a bf16 matrix's copy is written in the same pass, fp32 data follows a sharded
         * master by a copy */
        float *master = masters ? masters + at : p->data + first;
        const float lr = (float)r->lr, b1 = (float)c->beta1, b2 = (float)c->beta2, eps = (float)c->eps;
        const float wd = (float)c->weight_decay;
        if (p->data_bf16)
            OPS->adamw_bf16(master, p->data_bf16 + first, p->grad + first, adam_m + at, adam_v + at, count, lr, b1, b2,
                            eps, wd, (int)*adam_updates);
        else
            OPS->adamw(master, p->grad + first, adam_m + at, adam_v + at, count, lr, b1, b2, eps, wd,
                       (int)*adam_updates);
        if (masters && p->data) OPS->copy(p->data + first, master, count * sizeof(float));
    }
    tga_model_zero_grads(m);
    return TGA_OK;
}
