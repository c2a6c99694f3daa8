/* Greedy decoding (trainer/generate.c) against a brute-force loop that runs the full forward on one
 * sample at a time, takes every position's logits (tga_model_logits) and the argmax of the last:
 * with and without images, stop ids, the max_len limit, tied and separate LM heads, and batches
 * whose padding must not change any sample's tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend.h"
#include "tests/testutil.h"
#include "trainer/generate.h"

#define P 4   /* patches per image */
#define DV 12 /* vision dim */
#define MAX_LEN 48
#define MAX_NEW 10
#define N_PROMPTS 5

typedef struct {
    int32_t ids[MAX_LEN];
    int32_t n_tokens, n_images;
    int32_t starts[2];
    float features[2 * P * DV];
} prompt_data;

static tga_model_dims test_dims(int tie) {
    return (tga_model_dims){.dim = 32,
                            .n_layers = 2,
                            .n_heads = 4,
                            .n_kv_heads = 2,
                            .ffn_dim = 48,
                            .vocab_size = 97,
                            .max_seq_len = 64,
                            .rope_theta = 10000,
                            .norm_eps = 1e-5f,
                            .tie_embeddings = tie,
                            .projector = TGA_PROJ_MLP2X_GELU,
                            .vision_dim = DV};
}

static const tga_run_shape test_shape = {.trainable = TGA_TRAIN_STAGE1,
                                         .micro_batch = 4,
                                         .max_len = MAX_LEN,
                                         .max_images = 4,
                                         .image_tokens = P,
                                         .ce_chunk = 16};

/* Random ids, with the image spans overwritten by TGA_IMAGE_TOKEN_ID. */
static void make_prompt(prompt_data *p, int n_tokens, int n_images, const int32_t *starts, uint64_t *rng) {
    memset(p, 0, sizeof *p);
    p->n_tokens = n_tokens;
    p->n_images = n_images;
    for (int t = 0; t < n_tokens; t++)
        p->ids[t] = (int32_t)(tu_next(rng) % 97);
    for (int k = 0; k < n_images; k++) {
        p->starts[k] = starts[k];
        for (int t = starts[k]; t < starts[k] + P; t++)
            p->ids[t] = TGA_IMAGE_TOKEN_ID;
    }
    tu_fill_uniform(p->features, (size_t)n_images * P * DV, -2.0f, 2.0f, rng);
}

static tga_prompt as_prompt(const prompt_data *p) {
    return (tga_prompt){.ids = p->ids,
                        .n_tokens = p->n_tokens,
                        .n_images = p->n_images,
                        .image_starts = p->starts,
                        .image_features = p->features};
}

static int contains(const int32_t *ids, int n, int32_t id) {
    for (int k = 0; k < n; k++)
        if (ids[k] == id) return 1;
    return 0;
}

/* The reference: one sample, the full forward and all logits at every step. */
static void reference_generate(tga_model *m, int V, int n_choices, const prompt_data *p, const int32_t *stops,
                               int n_stop, int32_t *out, int *n_out, tga_generation_end *end) {
    int32_t seq[MAX_LEN], labels[MAX_LEN], zero = 0, sample[2] = {0, 0};
    uint8_t tox = 0;
    float *logits = malloc((size_t)MAX_LEN * V * sizeof *logits);
    int len = p->n_tokens;
    memcpy(seq, p->ids, (size_t)len * sizeof *seq);
    for (int t = 0; t < MAX_LEN; t++)
        labels[t] = TGA_IGNORE_INDEX;
    tga_align_config off = {.mode = TGA_ALIGN_OFF};
    tga_step_scalars scalars = {0};
    *n_out = 0;
    for (;;) {
        tga_batch b = {.B = 1,
                       .T = len,
                       .input_ids = seq,
                       .labels = labels,
                       .lengths = &len,
                       .n_images = p->n_images,
                       .image_features = p->features,
                       .image_sample = sample,
                       .image_start = p->starts,
                       .ret_start = &zero,
                       .ret_len = &zero,
                       .tox = &tox};
        tga_losses losses;
        CHECK(tga_model_forward_backward(m, &b, &off, &scalars, 0, &losses) == TGA_OK,
              "reference forward: %s", tga_error_message());
        tga_model_logits(m, logits);
        const float *row = logits + (size_t)(len - 1) * V;
        int32_t best = 0;
        for (int v = 1; v < (n_choices ? n_choices : V); v++)
            if (row[v] > row[best]) best = v;
        if (contains(stops, n_stop, best)) {
            *end = TGA_GENERATION_STOP_TOKEN;
            break;
        }
        out[(*n_out)++] = best;
        if (*n_out == MAX_NEW) {
            *end = TGA_GENERATION_MAX_NEW;
            break;
        }
        if (len == MAX_LEN) {
            *end = TGA_GENERATION_MAX_LEN;
            break;
        }
        seq[len++] = best;
    }
    free(logits);
}

typedef struct {
    int calls, B, T;
} prompt_forward_log;

static tga_status log_prompt_forward(tga_model *m, const tga_batch *b, void *ctx) {
    (void)m;
    prompt_forward_log *log = ctx;
    log->calls++;
    log->B = b->B;
    log->T = b->T;
    return TGA_OK;
}

/* Generates the listed prompts as one batch and compares each with the reference. */
static void check_batch(tga_model *m, const tga_model_dims *d, const prompt_data *all, const int *which,
                        int n, const int32_t *stops, int n_stop, int n_choices, const char *what,
                        int32_t *tokens_seen) {
    tga_prompt prompts[4];
    int32_t ids[4][MAX_NEW];
    tga_generation gen[4];
    int max_prompt = 0;
    for (int k = 0; k < n; k++) {
        prompts[k] = as_prompt(&all[which[k]]);
        gen[k].ids = ids[k];
        max_prompt = all[which[k]].n_tokens > max_prompt ? all[which[k]].n_tokens : max_prompt;
    }
    prompt_forward_log log = {0};
    tga_generate_options o = {.max_new = MAX_NEW,
                              .stop_ids = stops,
                              .n_stop = n_stop,
                              .n_choices = n_choices,
                              .on_prompt_forward = log_prompt_forward,
                              .ctx = &log};
    tga_status st = tga_generate_greedy(m, d, &test_shape, prompts, n, &o, gen);
    CHECK(st == TGA_OK, "%s: generate: %s", what, tga_error_message());
    CHECK(log.calls == 1 && log.B == n && log.T == max_prompt, "%s: prompt callback: %d calls, last %d x %d",
          what, log.calls, log.B, log.T);
    for (int k = 0; k < n && st == TGA_OK; k++) {
        int32_t expect[MAX_NEW];
        int n_expect;
        tga_generation_end end;
        reference_generate(m, d->vocab_size, n_choices, &all[which[k]], stops, n_stop, expect, &n_expect,
                           &end);
        int same = gen[k].n == n_expect && gen[k].end == end &&
                   memcmp(gen[k].ids, expect, (size_t)n_expect * sizeof *expect) == 0;
        CHECK(same, "%s: prompt %d: %d tokens (end %d), reference %d tokens (end %d)", what, which[k],
              gen[k].n, gen[k].end, n_expect, end);
        for (int t = 0; t < gen[k].n; t++) {
            CHECK(!n_choices || gen[k].ids[t] < n_choices, "%s: id %d chosen, only %d allowed", what,
                  gen[k].ids[t], n_choices);
            tokens_seen[gen[k].ids[t]] = 1;
        }
    }
}

static void test_model(int tie, const prompt_data *prompts) {
    tga_model_dims d = test_dims(tie);
    tga_model *m = NULL;
    CHECK(tga_model_create(&m, &d, &test_shape) == TGA_OK, "create: %s", tga_error_message());
    if (!m) return;
    /* a wide init gives logits far apart, so argmax is not decided by rounding */
    CHECK(tga_model_init_random(m, 11 + (uint64_t)tie, 0.5f) == TGA_OK, "init: %s", tga_error_message());
    int32_t seen[97] = {0};
    const int all4[] = {0, 1, 2, 3};
    check_batch(m, &d, prompts, all4, 4, NULL, 0, 0, tie ? "tied, batch of 4" : "batch of 4", seen);
    for (int i = 0; i < 4; i++)
        check_batch(m, &d, prompts, &i, 1, NULL, 0, 0, "alone", seen);
    const int reversed[] = {3, 2, 1, 0};
    check_batch(m, &d, prompts, reversed, 4, NULL, 0, 0, "reversed batch", seen);
    check_batch(m, &d, prompts, all4, 4, NULL, 0, 40, "ids below 40", seen);

    /* stop ids taken from what the prompts produce, so that some samples do stop early */
    int32_t first[MAX_NEW];
    int n_first;
    tga_generation_end end;
    reference_generate(m, d.vocab_size, 0, &prompts[1], NULL, 0, first, &n_first, &end);
    int32_t stops[2];
    stops[0] = first[2];
    reference_generate(m, d.vocab_size, 0, &prompts[3], NULL, 0, first, &n_first, &end);
    stops[1] = first[4];
    check_batch(m, &d, prompts, all4, 4, stops, 2, 0, "with stop ids", seen);
    int32_t early[MAX_NEW];
    reference_generate(m, d.vocab_size, 0, &prompts[1], stops, 2, early, &n_first, &end);
    CHECK(end == TGA_GENERATION_STOP_TOKEN && n_first <= 2,
          "prompt 1 should stop within 2 tokens (%d, end %d)", n_first, end);

    const int long_first[] = {4, 0};
    check_batch(m, &d, prompts, long_first, 2, NULL, 0, 0, "max_len", seen);
    reference_generate(m, d.vocab_size, 0, &prompts[4], NULL, 0, first, &n_first, &end);
    CHECK(end == TGA_GENERATION_MAX_LEN && n_first == MAX_LEN - prompts[4].n_tokens + 1,
          "prompt 4 should fill max_len after %d tokens (%d, end %d)", MAX_LEN - prompts[4].n_tokens + 1,
          n_first, end);

    int distinct = 0;
    for (int v = 0; v < 97; v++)
        distinct += seen[v];
    CHECK(distinct >= 5, "the random model generated only %d distinct tokens: the test is too weak",
          distinct);
    tga_model_free(m);
}

static void test_bad_prompt(const prompt_data *prompts) {
    tga_model_dims d = test_dims(0);
    tga_model *m = NULL;
    CHECK(tga_model_create(&m, &d, &test_shape) == TGA_OK, "create: %s", tga_error_message());
    if (!m) return;
    tga_prompt p = as_prompt(&prompts[0]);
    p.n_tokens = MAX_LEN + 1;
    int32_t ids[MAX_NEW];
    tga_generation g = {.ids = ids};
    tga_generate_options o = {.max_new = MAX_NEW};
    tga_error_clear();
    tga_status st = tga_generate_greedy(m, &d, &test_shape, &p, 1, &o, &g);
    CHECK(st == TGA_ERR_FORMAT && strstr(tga_error_message(), "prompt 0"), "a too long prompt: %s (%s)",
          tga_status_name(st), tga_error_message());
    tga_error_clear();
    tga_model_free(m);
}

int main(void) {
    if (tga_backend_select("cpu", 2) != TGA_OK) {
        fprintf(stderr, "%s\n", tga_error_message());
        return 1;
    }
    uint64_t rng = 2024;
    static prompt_data prompts[N_PROMPTS];
    const int32_t one_image[] = {3}, two_images[] = {1, 7};
    make_prompt(&prompts[0], 5, 0, NULL, &rng);
    make_prompt(&prompts[1], 17, 1, one_image, &rng);
    make_prompt(&prompts[2], 9, 0, NULL, &rng);
    make_prompt(&prompts[3], 14, 2, two_images, &rng);
    make_prompt(&prompts[4], MAX_LEN - 4, 1, one_image, &rng);
    test_model(0, prompts);
    test_model(1, prompts);
    test_bad_prompt(prompts);
    return tu_finish("test_generate");
}
