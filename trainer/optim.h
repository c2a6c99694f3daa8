/* The optimizer step: global gradient-norm clipping, a NaN/Inf guard, the learning-rate schedule
 * and AdamW over every trainable parameter (as torch.optim.AdamW + clip_grad_norm_ + HF's
 * get_cosine_schedule_with_warmup). */
#ifndef TGA_TRAINER_OPTIM_H
#define TGA_TRAINER_OPTIM_H

#include "runtime/error.h"
#include "trainer/config.h"
#include "trainer/model.h"

typedef struct tga_optim_config {
    double lr, warmup_ratio, weight_decay, beta1, beta2, eps, grad_clip;
    long long total_steps;
    tga_lr_schedule schedule;
    tga_nonfinite_policy on_nonfinite;
} tga_optim_config;

/* Learning rate of optimizer step `step` (0-based): linear warmup over ceil(warmup_ratio * total)
 * steps from 0, then cosine to 0 at `total` (HF get_cosine_schedule_with_warmup). */
double tga_lr_at(const tga_optim_config *c, long long step);

typedef struct tga_step_report {
    double grad_norm; /* before clipping */
    double lr;
    int skipped;      /* 1 when a non-finite gradient made the step skip (policy skip) */
} tga_step_report;

/* Applies optimizer step `step` (0-based; it sets the learning rate) using the accumulated
 * gradients, then zeroes them. *adam_updates counts the updates applied so far (AdamW's bias
 * correction uses it; checkpoints save it). A NaN/Inf gradient is an error naming the step and the
 * tensor (policy stop) or skips the update (policy skip). */
tga_status tga_optim_step(tga_model *m, const tga_optim_config *c, long long step, long long *adam_updates,
                          tga_step_report *report);

/* Checks loss values of a step; NaN/Inf is a TGA_ERR_NUMERIC naming the step and the term. */
tga_status tga_check_losses(const tga_losses *l, long long step);

#endif
