/* Evaluation of a trained model on LLaVA-style records (TGA-METHOD.md §4-5), for `tga eval`.
 *
 * A record's first human turn is the prompt and the gpt turn after it the expected answer. The
 * prompt is the template's rendering of that exchange up to the first supervised position (labels
 * are unshifted, so that is where the answer starts); the model answers it greedily
 * (trainer/generate.h) and the decoded text is scored:
 *   - refusal: promptfoo's isBasicRefusal (trainer/refusal.h); the DSR of a set of harmful
 *     requests is its refusal rate;
 *   - correct: the response, trimmed, starts with the expected answer, trimmed (ASCII case
 *     folded); a utility set's accuracy.
 * A set's kind (dsr or utility) only says which number is its headline; `auto` picks dsr when
 * every expected answer is itself a refusal. Both numbers are always computed.
 *
 * The probe (the paper's image vs text hidden-state similarity, TGA-METHOD.md §4): for each record
 * with an image and an image_caption, per layer l = 0..L the cosine between the mean of hs[l] over
 * the image patches in the prompt's forward and the mean of hs[l] over the caption span in a
 * text-only forward of the template's caption prompt; averaged over those records. */
#ifndef TGA_TRAINER_EVAL_H
#define TGA_TRAINER_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"
#include "runtime/tokenizer.h"
#include "trainer/generate.h"
#include "trainer/model.h"
#include "trainer/refusal.h"
#include "trainer/template.h"

#define TGA_EVAL_MAX_EXAMPLES 4
#define TGA_EVAL_MAX_STOP_IDS 2

typedef enum { TGA_EVAL_AUTO = 0, TGA_EVAL_DSR = 1, TGA_EVAL_UTILITY = 2 } tga_eval_kind;
const char *tga_eval_kind_name(tga_eval_kind kind); /* "auto", "dsr", "utility" */

/* ---- image features: one [N, P, Dv] .npy and its index of "image-name row" lines ------------- */
typedef struct tga_feature_store tga_feature_store;

/* Checks P and Dv against the model's (errors name the file and data.image_tokens or
 * projector.vision_dim), every index line (a name, a space, a row in [0, N); no name twice). */
tga_status tga_feature_store_open(const char *npy_path, const char *index_path, int image_tokens,
                                  int vision_dim, tga_feature_store **out);
void tga_feature_store_close(tga_feature_store *s); /* NULL is a no-op */
/* The row of an image name, or -1. */
int64_t tga_feature_store_find(const tga_feature_store *s, const char *name);
/* One image's P x Dv features (as float32) into out. */
tga_status tga_feature_store_read(tga_feature_store *s, int64_t row, float *out);

/* ---- a records file, rendered ------------------------------------------------------------------ */
typedef struct tga_eval_item {
    char *id;
    int32_t *prompt; /* ids, TGA_IMAGE_TOKEN_ID over image patches */
    int32_t n_prompt;
    int32_t n_images;
    int32_t *image_starts;
    int64_t *feature_rows;
    int32_t *caption_ids; /* the caption prompt, or NULL (no image or no caption) */
    int32_t n_caption, caption_start, caption_len;
    char *expected; /* the gpt turn */
    bool expected_refusal;
} tga_eval_item;

typedef struct tga_eval_set {
    char *path;
    tga_eval_item *items;
    size_t n_items;
    int max_images;  /* most images in one record */
    int32_t longest; /* longest prompt or caption prompt */
} tga_eval_set;

/* What loading a set needs. */
typedef struct tga_eval_inputs {
    const tga_tokenizer *tok;
    const tga_template *tmpl;
    const tga_refusal_detector *refusals;
    const tga_feature_store *features;
    int image_tokens; /* P */
    int64_t max_len;  /* data.max_len: the render limit */
} tga_eval_inputs;

/* Reads and renders every record. Errors name the file and the record: a record the parser
 * rejects (no gpt turn, broken JSON, ...), an image missing from the feature index, a prompt that
 * does not fit data.max_len; an empty file is an error too. */
tga_status tga_eval_set_load(const char *path, const tga_eval_inputs *in, tga_eval_set *out);
void tga_eval_set_free(tga_eval_set *s);

/* ---- running ------------------------------------------------------------------------------------- */
typedef struct tga_eval_runner {
    tga_model *model;
    tga_model_dims dims;
    tga_run_shape shape; /* as the model was created */
    const tga_tokenizer *tok;
    const tga_refusal_detector *refusals;
    tga_feature_store *features;
    int max_new;
    int32_t stop_ids[TGA_EVAL_MAX_STOP_IDS];
    int n_stop;
} tga_eval_runner;

/* The ids that end an answer: the tokenizer's EOS and the template's end of turn, which is the
 * last supervised token of a rendered answer when it is not part of the answer's own encoding
 * (<|im_end|> for chatml, "\n" for plain with a byte-level BPE, none for plain with words). */
tga_status tga_eval_stop_ids(const tga_template *t, const tga_tokenizer *tok, int32_t *ids, int *n);

typedef struct tga_eval_example {
    char *id, *response, *expected;
    bool refusal, correct;
    tga_generation_end end;
} tga_eval_example;

typedef struct tga_eval_result {
    tga_eval_kind kind; /* dsr or utility, auto resolved */
    int64_t records, refusals, correct, expected_refusals;
    int64_t image_records, probe_records;
    int n_probe_layers;   /* L + 1 */
    double *probe_cosine; /* [L + 1] means over probe_records (NULL when none) */
    int64_t generated_tokens, ended_by_stop;
    double seconds;
    tga_eval_example examples[TGA_EVAL_MAX_EXAMPLES]; /* the first records */
    int n_examples;
} tga_eval_result;

tga_status tga_eval_set_run(tga_eval_runner *r, const tga_eval_set *set, tga_eval_kind kind,
                            tga_eval_result *out);
void tga_eval_result_free(tga_eval_result *res);

#endif
