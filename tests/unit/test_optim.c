/* The optimizer step around AdamW: the learning-rate schedule (HF cosine with warmup), global-norm
 * clipping as torch's clip_grad_norm_, the non-finite gradient policies, and zeroed gradients. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/ops.h"
#include "runtime/backend.h"
#include "tests/testutil.h"
#include "trainer/optim.h"

static tga_model *tiny_model(void) {
    tga_model_dims d = {.dim = 8, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1, .head_dim = 4, .ffn_dim = 12,
                        .vocab_size = 16, .max_seq_len = 8, .rope_theta = 10000, .norm_eps = 1e-5f,
                        .projector = TGA_PROJ_MLP2X_GELU, .vision_dim = 4};
    tga_run_shape s = {.trainable = TGA_TRAIN_STAGE1, .micro_batch = 1, .max_len = 8, .max_images = 1,
                       .image_tokens = 2, .ce_chunk = 4};
    tga_model *m = NULL;
    CHECK(tga_model_create(&m, &d, &s) == TGA_OK, "create: %s", tga_error_message());
    CHECK(tga_model_init_random(m, 7, 0.1f) == TGA_OK, "init: %s", tga_error_message());
    return m;
}

static void fill_grads(tga_model *m, float value) {
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        for (size_t j = 0; p->trainable && j < p->numel; j++) p->grad[j] = value * (float)((j % 5) + 1);
    }
}

static double grad_norm(tga_model *m) {
    double s = 0;
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        for (size_t j = 0; p->trainable && j < p->numel; j++) s += (double)p->grad[j] * p->grad[j];
    }
    return sqrt(s);
}

static void test_schedule(void) {
    tga_optim_config c = {.lr = 1e-3, .warmup_ratio = 0.03, .total_steps = 100, .schedule = TGA_SCHEDULE_COSINE};
    /* HF: warmup = ceil(0.03 * 100) = 3 steps: 0, lr/3, 2lr/3; then cosine from step 3 to 100 */
    CHECK(tga_lr_at(&c, 0) == 0.0, "lr at step 0 must be 0 during warmup");
    CHECK(fabs(tga_lr_at(&c, 2) - 2e-3 / 3) < 1e-15, "warmup step 2");
    CHECK(fabs(tga_lr_at(&c, 3) - 1e-3) < 1e-15, "peak after warmup");
    for (int k = 3; k < 100; k++) {
        double want = 1e-3 * 0.5 * (1 + cos(3.141592653589793 * (double)(k - 3) / 97.0));
        CHECK(fabs(tga_lr_at(&c, k) - want) < 1e-15, "cosine step %d: %g vs %g", k, tga_lr_at(&c, k), want);
    }
    CHECK(tga_lr_at(&c, 100) < 1e-18, "lr reaches 0 at the end");
    c.schedule = TGA_SCHEDULE_CONSTANT;
    CHECK(tga_lr_at(&c, 50) == 1e-3, "constant schedule");
}

static void test_clip_and_zero(void) {
    tga_model *m = tiny_model();
    tga_optim_config c = {.lr = 0, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .grad_clip = 0.1, .total_steps = 10,
                          .schedule = TGA_SCHEDULE_CONSTANT};
    fill_grads(m, 0.01f);
    double before = grad_norm(m);
    long long updates = 0;
    tga_step_report r;
    CHECK(tga_optim_step(m, &c, 0, &updates, &r) == TGA_OK, "step: %s", tga_error_message());
    CHECK(fabs(r.grad_norm - before) < 1e-6 * before, "reported norm %g, expected %g", r.grad_norm, before);
    CHECK(updates == 1, "one update counted");
    CHECK(grad_norm(m) == 0.0, "gradients must be zeroed after the step");
    /* with lr = 0 the clipped gradient shows in AdamW's first moment: m = (1 - beta1) * g * coef */
    tga_param *p = tga_model_find_param(m, "projector.0.weight");
    double coef = 0.1 / (before + 1e-6);
    CHECK(coef < 1, "the test must exercise clipping (norm %g)", before);
    CHECK(fabs(p->adam_m[0] - 0.1 * 0.01 * coef) < 1e-9, "clipped moment %g vs %g", p->adam_m[0], 0.1 * 0.01 * coef);
    tga_model_free(m);
}

static void test_nonfinite(void) {
    tga_model *m = tiny_model();
    tga_optim_config c = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .total_steps = 10,
                          .schedule = TGA_SCHEDULE_CONSTANT, .on_nonfinite = TGA_NONFINITE_STOP};
    tga_param *p = tga_model_find_param(m, "projector.2.bias");
    fill_grads(m, 0.01f);
    p->grad[3] = NAN;
    long long updates = 0;
    tga_step_report r;
    tga_error_clear();
    tga_status st = tga_optim_step(m, &c, 7, &updates, &r);
    CHECK(st == TGA_ERR_NUMERIC, "NaN gradient must stop with a numeric error");
    CHECK(strstr(tga_error_message(), "projector.2.bias") && strstr(tga_error_message(), "step 7"),
          "message must name the tensor and the step: %s", tga_error_message());
    tga_error_clear();
    c.on_nonfinite = TGA_NONFINITE_SKIP;
    float before = p->data[0];
    p->grad[3] = INFINITY;
    st = tga_optim_step(m, &c, 8, &updates, &r);
    CHECK(st == TGA_OK && r.skipped == 1, "skip policy must skip the step");
    CHECK(p->data[0] == before && updates == 0, "a skipped step must not change parameters or the update count");
    CHECK(grad_norm(m) == 0.0, "a skipped step must zero the gradients");
    tga_losses l = {.ce = 1.0, .pair = NAN};
    CHECK(tga_check_losses(&l, 3) == TGA_ERR_NUMERIC && strstr(tga_error_message(), "pair"),
          "NaN loss term must be reported: %s", tga_error_message());
    tga_error_clear();
    tga_model_free(m);
}

int main(void) {
    if (tga_backend_select("cpu", 1) != TGA_OK) return 1;
    test_schedule();
    test_clip_and_zero();
    test_nonfinite();
    return tu_finish("test_optim");
}
