#include "trainer/optim.h"

#include <math.h>

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

tga_status tga_optim_step(tga_model *m, const tga_optim_config *c, long long step, long long *adam_updates,
                          tga_step_report *r) {
    const int n = tga_model_param_count(m);
    r->lr = tga_lr_at(c, step);
    r->skipped = 0;
    /* global norm in a fixed parameter order (deterministic) */
    double sq = 0;
    for (int i = 0; i < n; i++) {
        tga_param *p = tga_model_param(m, i);
        if (!p->trainable) continue;
        double s = OPS->sum_squares(p->grad, p->numel);
        if (!isfinite(s)) {
            if (c->on_nonfinite == TGA_NONFINITE_STOP)
                return tga_error(TGA_ERR_NUMERIC, "step %lld: the gradient of %s contains NaN or Inf "
                                                  "(train.on_nonfinite: stop)", step, p->name);
            TGA_WARN("step %lld: the gradient of %s contains NaN or Inf; skipping this step "
                     "(train.on_nonfinite: skip)", step, p->name);
            r->skipped = 1;
            r->grad_norm = s;
            tga_model_zero_grads(m);
            return TGA_OK;
        }
        sq += s;
    }
    r->grad_norm = sqrt(sq);
    /* torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when < 1 */
    if (c->grad_clip > 0) {
        double coef = c->grad_clip / (r->grad_norm + 1e-6);
        if (coef < 1.0)
            for (int i = 0; i < n; i++) {
                tga_param *p = tga_model_param(m, i);
                if (p->trainable) OPS->scale_inplace(p->grad, (float)coef, p->numel);
            }
    }
    *adam_updates += 1;
    for (int i = 0; i < n; i++) {
        tga_param *p = tga_model_param(m, i);
        if (!p->trainable) continue;
        OPS->adamw(p->data, p->grad, p->adam_m, p->adam_v, p->numel, (float)r->lr, (float)c->beta1, (float)c->beta2,
                   (float)c->eps, (float)c->weight_decay, (int)*adam_updates);
    }
    tga_model_zero_grads(m);
    return TGA_OK;
}
