/* `tga eval`: greedy answers of a trained run to eval records, scored as refusals (DSR) or
 * answers (utility), plus the image-vs-caption hidden-state probe (trainer/eval.h). Prints a table
 * and writes every number, with a few example answers, as JSON (--out).
 *
 * The model's shape keys come from the run's config.effective.yaml (or the checkpoint's
 * config.yaml) unless --config names another file; --set overrides as everywhere. The weights are
 * initialised as training did (train.seed, model.init_std), then the checkpoint chain is loaded, so
 * frozen parameters that no checkpoint holds come back exactly. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend.h"
#include "runtime/fileio.h"
#include "trainer/cli.h"
#include "trainer/eval.h"
#include "trainer/setup.h"
#include "trainer/weights.h"

#define MAX_SETS 16

typedef struct eval_options {
    const char *run, *tokenizer, *template_name, *features, *feature_index, *out;
    const char *records[MAX_SETS];
    int n_records;
    int max_new, batch;
    tga_eval_kind kind;
} eval_options;

/* Everything one evaluation holds; freed in one place. */
typedef struct eval_session {
    tga_config cfg;
    eval_options opt;
    char weights[1200];
    tga_tokenizer *tok;
    tga_template *tmpl;
    tga_refusal_detector *refusals;
    tga_feature_store *features;
    tga_eval_set sets[MAX_SETS];
    tga_eval_result results[MAX_SETS];
    int n_loaded, n_done;
    tga_eval_runner runner;
} eval_session;

/* ---- options ----------------------------------------------------------------------------------- */

static tga_status parse_kind(const char *text, tga_eval_kind *kind) {
    for (int k = TGA_EVAL_AUTO; k <= TGA_EVAL_UTILITY; k++)
        if (strcmp(text, tga_eval_kind_name((tga_eval_kind)k)) == 0) {
            *kind = (tga_eval_kind)k;
            return TGA_OK;
        }
    return tga_error(TGA_ERR_USAGE, "--kind %s: expected dsr, utility or auto", text);
}

static tga_status string_option(int argc, char **argv, int *i, const char **out) {
    if (*i + 1 >= argc) return tga_error(TGA_ERR_USAGE, "%s needs a value", argv[*i]);
    *out = argv[++*i];
    return TGA_OK;
}

static tga_status parse_one(int argc, char **argv, int *i, eval_options *o) {
    const char *a = argv[*i], *value = NULL;
    long long v;
    if (strcmp(a, "--run") == 0) return string_option(argc, argv, i, &o->run);
    if (strcmp(a, "--tokenizer") == 0) return string_option(argc, argv, i, &o->tokenizer);
    if (strcmp(a, "--template") == 0) return string_option(argc, argv, i, &o->template_name);
    if (strcmp(a, "--features") == 0) return string_option(argc, argv, i, &o->features);
    if (strcmp(a, "--feature-index") == 0) return string_option(argc, argv, i, &o->feature_index);
    if (strcmp(a, "--out") == 0) return string_option(argc, argv, i, &o->out);
    if (strcmp(a, "--records") == 0) {
        if (o->n_records == MAX_SETS) return tga_error(TGA_ERR_USAGE, "at most %d --records files", MAX_SETS);
        return string_option(argc, argv, i, &o->records[o->n_records++]);
    }
    if (strcmp(a, "--kind") == 0) {
        TGA_TRY(string_option(argc, argv, i, &value));
        return parse_kind(value, &o->kind);
    }
    if (strcmp(a, "--max-new") == 0) {
        TGA_TRY(tga_cli_int_arg(argc, argv, i, 1, 4096, &v));
        o->max_new = (int)v;
        return TGA_OK;
    }
    if (strcmp(a, "--batch") == 0) {
        TGA_TRY(tga_cli_int_arg(argc, argv, i, 1, 4096, &v));
        o->batch = (int)v;
        return TGA_OK;
    }
    return tga_error(TGA_ERR_USAGE, "tga eval: unknown option %s (see tga help eval)", a);
}

static tga_status parse_options(const tga_common_options *common, const tga_config *cfg, eval_options *o) {
    *o = (eval_options){.max_new = 12, .batch = (int)cfg->train.micro_batch, .kind = TGA_EVAL_AUTO};
    for (int i = 0; i < common->n_rest; i++)
        TGA_TRY(parse_one(common->n_rest, common->rest, &i, o));
    const char *missing = !o->run             ? "--run"
                          : !o->n_records     ? "--records"
                          : !o->features      ? "--features"
                          : !o->feature_index ? "--feature-index"
                          : !o->tokenizer     ? "--tokenizer"
                                              : NULL;
    if (missing) return tga_error(TGA_ERR_USAGE, "tga eval needs %s (see tga help eval)", missing);
    if (!o->template_name) o->template_name = tga_template_builtin_name(cfg->data.template);
    return TGA_OK;
}

/* The config (the run's own unless --config is given) and the eval options. */
static tga_status load_settings(int argc, char **argv, eval_session *s) {
    tga_common_options common = {0};
    tga_status st = tga_cli_load_run_config(argc, argv, "eval", &common, &s->cfg);
    if (st == TGA_OK) st = parse_options(&common, &s->cfg, &s->opt);
    if (st == TGA_OK) st = tga_setup_backend(&s->cfg, common.device, common.threads);
    free(common.rest);
    return st;
}

/* ---- set-up ---------------------------------------------------------------------------------------- */

static tga_status load_inputs(eval_session *s) {
    const tga_config *cfg = &s->cfg;
    TGA_TRY(tga_tokenizer_load(s->opt.tokenizer, &s->tok));
    if ((int64_t)tga_tokenizer_vocab_size(s->tok) > cfg->model.vocab_size)
        return tga_error(TGA_ERR_CONFIG, "%s has %zu tokens but model.vocab_size is %lld", s->opt.tokenizer,
                         tga_tokenizer_vocab_size(s->tok), (long long)cfg->model.vocab_size);
    TGA_TRY(tga_template_load(s->opt.template_name, s->tok, &s->tmpl));
    TGA_TRY(tga_refusal_load(NULL, &s->refusals));
    TGA_TRY(tga_feature_store_open(s->opt.features, s->opt.feature_index, (int)cfg->data.image_tokens,
                                   (int)cfg->projector.vision_dim, &s->features));
    tga_eval_inputs in = {.tok = s->tok,
                          .tmpl = s->tmpl,
                          .refusals = s->refusals,
                          .features = s->features,
                          .image_tokens = (int)cfg->data.image_tokens,
                          .max_len = cfg->data.max_len};
    for (; s->n_loaded < s->opt.n_records; s->n_loaded++)
        TGA_TRY(tga_eval_set_load(s->opt.records[s->n_loaded], &in, &s->sets[s->n_loaded]));
    return TGA_OK;
}

/* Sized for the longest prompt or caption plus max_new, and the most images a batch can hold. */
static tga_status create_model(eval_session *s) {
    tga_eval_runner *r = &s->runner;
    const tga_config *cfg = &s->cfg;
    tga_setup_dims(cfg, &r->dims);
    int32_t longest = 0;
    int max_images = 1;
    for (int i = 0; i < s->n_loaded; i++) {
        longest = s->sets[i].longest > longest ? s->sets[i].longest : longest;
        max_images = s->sets[i].max_images > max_images ? s->sets[i].max_images : max_images;
    }
    int64_t max_len = (int64_t)longest + s->opt.max_new;
    r->shape =
        (tga_run_shape){.trainable = TGA_TRAIN_STAGE1,
                        .micro_batch = s->opt.batch,
                        .max_len = (int)(max_len < r->dims.max_seq_len ? max_len : r->dims.max_seq_len),
                        .max_images = s->opt.batch * max_images,
                        .image_tokens = (int)cfg->data.image_tokens,
                        .recompute = 1,
                        .ce_chunk = (int)cfg->train.ce_chunk};
    TGA_TRY(tga_model_create(&r->model, &r->dims, &r->shape));
    TGA_TRY(tga_weights_load(r->model, s->opt.run, s->weights, sizeof s->weights));
    TGA_TRY(tga_model_init_random(r->model, (uint64_t)cfg->train.seed, (float)cfg->model.init_std));
    r->tok = s->tok;
    r->refusals = s->refusals;
    r->features = s->features;
    r->max_new = s->opt.max_new;
    return tga_eval_stop_ids(s->tmpl, s->tok, r->stop_ids, &r->n_stop);
}

static void session_free(eval_session *s) {
    for (int i = 0; i < s->n_done; i++)
        tga_eval_result_free(&s->results[i]);
    for (int i = 0; i < s->n_loaded; i++)
        tga_eval_set_free(&s->sets[i]);
    tga_model_free(s->runner.model);
    tga_feature_store_close(s->features);
    tga_refusal_free(s->refusals);
    tga_template_free(s->tmpl);
    if (s->tok) tga_tokenizer_free(s->tok);
}

/* ---- report ---------------------------------------------------------------------------------------- */

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static double share(int64_t part, int64_t whole) { return whole > 0 ? (double)part / (double)whole : 0.0; }

static void print_table(const eval_session *s) {
    printf("tga eval: %s (weights %s), template %s, max_new %d, backend %s\n", s->opt.run, s->weights,
           tga_template_name(s->tmpl), s->opt.max_new, tga_backend_description());
    printf("%-28s %-8s %8s %8s %9s %7s %8s\n", "records", "kind", "n", "refusal", "accuracy", "probe",
           "seconds");
    for (int i = 0; i < s->n_done; i++) {
        const tga_eval_result *r = &s->results[i];
        printf("%-28.28s %-8s %8lld %8.3f %9.3f %7lld %8.1f\n", base_name(s->sets[i].path),
               tga_eval_kind_name(r->kind), (long long)r->records, share(r->refusals, r->records),
               share(r->correct, r->records), (long long)r->probe_records, r->seconds);
    }
    printf("DSR = refusal rate of a dsr set; accuracy = answers starting with the expected one\n");
    printf("image vs caption hidden-state cosine, hs[l] mean over the image / caption span, by layer:\n");
    printf("%-28s", "records");
    for (int l = 0; l <= s->runner.dims.n_layers; l++) {
        char label[16];
        snprintf(label, sizeof label, "l=%d", l);
        printf(" %9s", label);
    }
    printf("\n");
    for (int i = 0; i < s->n_done; i++) {
        const tga_eval_result *r = &s->results[i];
        if (!r->probe_cosine) continue;
        printf("%-28.28s", base_name(s->sets[i].path));
        for (int l = 0; l < r->n_probe_layers; l++)
            printf(" %9.4f", r->probe_cosine[l]);
        printf("\n");
    }
}

/* The length of the valid UTF-8 character at s, or 0; jansson's own check decides. */
static size_t utf8_char_len(const char *s, size_t n) {
    if ((unsigned char)s[0] < 0x80) return 1;
    for (size_t len = 2; len <= 4 && len <= n; len++) {
        json_t *probe = json_stringn(s, len);
        if (probe) {
            json_decref(probe);
            return len;
        }
    }
    return 0;
}

/* Decoded answers can end inside a UTF-8 character; JSON needs valid text (U+FFFD stands in). */
static json_t *json_text(const char *text) {
    size_t n = strlen(text), o = 0;
    char *clean = malloc(3 * n + 1);
    if (!clean) return json_null();
    for (size_t i = 0; i < n;) {
        size_t len = utf8_char_len(text + i, n - i);
        memcpy(clean + o, len ? text + i : "\xef\xbf\xbd", len ? len : 3);
        o += len ? len : 3;
        i += len ? len : 1;
    }
    json_t *j = json_stringn(clean, o);
    free(clean);
    return j ? j : json_null();
}

static const char *end_name(tga_generation_end end) {
    return end == TGA_GENERATION_STOP_TOKEN ? "stop" : end == TGA_GENERATION_MAX_NEW ? "max_new" : "max_len";
}

static json_t *result_json(const tga_eval_set *set, const tga_eval_result *r) {
    json_t *cosine = r->probe_cosine ? json_array() : json_null(), *examples = json_array();
    for (int l = 0; r->probe_cosine && l < r->n_probe_layers; l++)
        json_array_append_new(cosine, json_real(r->probe_cosine[l]));
    for (int i = 0; i < r->n_examples; i++) {
        const tga_eval_example *e = &r->examples[i];
        json_array_append_new(examples,
                              json_pack("{s:s,s:o,s:o,s:b,s:b,s:s}", "id", e->id, "response",
                                        json_text(e->response), "expected", json_text(e->expected), "refusal",
                                        e->refusal, "correct", e->correct, "end", end_name(e->end)));
    }
    return json_pack("{s:s,s:s,s:I,s:I,s:f,s:I,s:f,s:I,s:I,s:{s:I,s:o},s:I,s:I,s:f,s:o}", "records_file",
                     set->path, "kind", tga_eval_kind_name(r->kind), "records", (json_int_t)r->records,
                     "refusals", (json_int_t)r->refusals, "refusal_rate", share(r->refusals, r->records),
                     "correct", (json_int_t)r->correct, "accuracy", share(r->correct, r->records),
                     "expected_refusals", (json_int_t)r->expected_refusals, "image_records",
                     (json_int_t)r->image_records, "probe", "records", (json_int_t)r->probe_records,
                     "cosine_by_layer", cosine, "generated_tokens", (json_int_t)r->generated_tokens,
                     "ended_by_stop", (json_int_t)r->ended_by_stop, "seconds", r->seconds, "examples",
                     examples);
}

static tga_status write_json(const eval_session *s) {
    json_t *sets = json_array(), *stops = json_array();
    for (int i = 0; i < s->n_done; i++)
        json_array_append_new(sets, result_json(&s->sets[i], &s->results[i]));
    for (int i = 0; i < s->runner.n_stop; i++)
        json_array_append_new(stops, json_integer(s->runner.stop_ids[i]));
    json_t *root = json_pack("{s:s,s:s,s:s,s:s,s:i,s:i,s:o,s:s,s:o}", "run", s->opt.run, "weights",
                             s->weights, "template", tga_template_name(s->tmpl), "tokenizer",
                             s->opt.tokenizer, "max_new", s->opt.max_new, "batch", s->opt.batch, "stop_ids",
                             stops, "backend", tga_backend_description(), "sets", sets);
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!text) return tga_error(TGA_ERR_NOMEM, "cannot build the JSON summary for %s", s->opt.out);
    size_t len = strlen(text);
    text[len] = '\n';
    tga_status st = tga_file_write_atomic(s->opt.out, text, len + 1);
    free(text);
    return st;
}

/* ---- the command ------------------------------------------------------------------------------------ */

static tga_status eval_main(int argc, char **argv, eval_session *s) {
    TGA_TRY(load_settings(argc, argv, s));
    TGA_TRY(load_inputs(s));
    TGA_TRY(create_model(s));
    for (; s->n_done < s->n_loaded; s->n_done++) {
        TGA_TRY(tga_eval_set_run(&s->runner, &s->sets[s->n_done], s->opt.kind, &s->results[s->n_done]));
    }
    print_table(s);
    return s->opt.out ? write_json(s) : TGA_OK;
}

tga_status tga_cmd_eval(int argc, char **argv) {
    eval_session *s = calloc(1, sizeof *s);
    if (!s) return tga_error(TGA_ERR_NOMEM, "out of memory");
    tga_status st = eval_main(argc, argv, s);
    session_free(s);
    free(s);
    return st;
}
