#define _POSIX_C_SOURCE 200809L /* strdup, strndup, clock_gettime */
#include "trainer/eval.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/fileio.h"
#include "runtime/npy.h"
#include "trainer/records.h"

#define INDEX_FILE_MAX ((size_t)1 << 31)
#define COSINE_EPS 1e-8 /* torch.nn.functional.cosine_similarity's norm clamp */

const char *tga_eval_kind_name(tga_eval_kind kind) {
    static const char *const names[] = {"auto", "dsr", "utility"};
    return kind >= TGA_EVAL_AUTO && kind <= TGA_EVAL_UTILITY ? names[kind] : "?";
}

/* ---- image features ------------------------------------------------------------------------------ */

typedef struct {
    const char *name; /* into the index file's text */
    int64_t row;
    size_t line;
} index_entry;

struct tga_feature_store {
    char *npy_path;
    FILE *f;
    tga_npy_header h;
    char *index_text;
    index_entry *entries; /* sorted by name */
    size_t n_entries;
};

static int compare_entries(const void *a, const void *b) {
    return strcmp(((const index_entry *)a)->name, ((const index_entry *)b)->name);
}

/* "name row": the name is everything before the last space, so names may hold spaces. */
static tga_status parse_index_line(const char *path, size_t line_no, char *line, int64_t n_rows,
                                   index_entry *e) {
    char *space = strrchr(line, ' '), *end;
    if (!space || space == line)
        return tga_error(TGA_ERR_FORMAT, "%s:%zu: expected 'image-name row', got '%.80s'", path, line_no,
                         line);
    *space = '\0';
    errno = 0;
    long long row = strtoll(space + 1, &end, 10);
    if (errno || end == space + 1 || *end || row < 0 || row >= n_rows)
        return tga_error(TGA_ERR_FORMAT, "%s:%zu: row '%.40s' of image '%.80s' is not in [0, %" PRId64 ")",
                         path, line_no, space + 1, line, n_rows);
    *e = (index_entry){.name = line, .row = row, .line = line_no};
    return TGA_OK;
}

static tga_status load_index(tga_feature_store *s, const char *path) {
    void *data;
    size_t n;
    TGA_TRY(tga_file_read_all(path, INDEX_FILE_MAX, &data, &n));
    s->index_text = data;
    size_t lines = 1;
    for (size_t i = 0; i < n; i++)
        lines += s->index_text[i] == '\n';
    s->entries = malloc(lines * sizeof *s->entries);
    if (!s->entries) return tga_error(TGA_ERR_NOMEM, "out of memory for the index %s", path);
    char *cursor = s->index_text;
    for (size_t line_no = 1; cursor < s->index_text + n; line_no++) {
        char *nl = strchr(cursor, '\n');
        if (nl) *nl = '\0';
        if (*cursor)
            TGA_TRY(parse_index_line(path, line_no, cursor, s->h.shape[0], &s->entries[s->n_entries++]));
        cursor = nl ? nl + 1 : s->index_text + n;
    }
    qsort(s->entries, s->n_entries, sizeof *s->entries, compare_entries);
    for (size_t i = 1; i < s->n_entries; i++)
        if (strcmp(s->entries[i - 1].name, s->entries[i].name) == 0)
            return tga_error(TGA_ERR_FORMAT, "%s: image '%.80s' is listed twice (lines %zu and %zu)", path,
                             s->entries[i].name, s->entries[i - 1].line, s->entries[i].line);
    return TGA_OK;
}

static tga_status check_feature_shape(const tga_feature_store *s, int image_tokens, int vision_dim) {
    const tga_npy_header *h = &s->h;
    if (h->ndim != 3)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: expected image features of shape [N, P, Dv], found %d dimensions", s->npy_path,
                         h->ndim);
    if (h->shape[1] != image_tokens)
        return tga_error(TGA_ERR_CONFIG, "%s: %" PRId64 " patches per image, but data.image_tokens is %d",
                         s->npy_path, h->shape[1], image_tokens);
    if (h->shape[2] != vision_dim)
        return tga_error(TGA_ERR_CONFIG,
                         "%s: features of dimension %" PRId64 ", but projector.vision_dim is %d", s->npy_path,
                         h->shape[2], vision_dim);
    return TGA_OK;
}

tga_status tga_feature_store_open(const char *npy_path, const char *index_path, int image_tokens,
                                  int vision_dim, tga_feature_store **out) {
    *out = NULL;
    tga_feature_store *s = calloc(1, sizeof *s);
    if (!s || !(s->npy_path = strdup(npy_path))) {
        free(s);
        return tga_error(TGA_ERR_NOMEM, "out of memory");
    }
    tga_status st = tga_npy_open(npy_path, &s->f, &s->h);
    if (st == TGA_OK) st = check_feature_shape(s, image_tokens, vision_dim);
    if (st == TGA_OK) st = load_index(s, index_path);
    if (st != TGA_OK) {
        tga_feature_store_close(s);
        return st;
    }
    *out = s;
    return TGA_OK;
}

void tga_feature_store_close(tga_feature_store *s) {
    if (!s) return;
    if (s->f) fclose(s->f);
    free(s->npy_path);
    free(s->index_text);
    free(s->entries);
    free(s);
}

int64_t tga_feature_store_find(const tga_feature_store *s, const char *name) {
    index_entry key = {.name = name};
    const index_entry *e = bsearch(&key, s->entries, s->n_entries, sizeof key, compare_entries);
    return e ? e->row : -1;
}

tga_status tga_feature_store_read(tga_feature_store *s, int64_t row, float *out) {
    return tga_npy_read_rows_f32(s->f, s->npy_path, &s->h, row, 1, out);
}

/* ---- loading a set --------------------------------------------------------------------------------- */

static void item_free(tga_eval_item *it) {
    free(it->id);
    free(it->prompt);
    free(it->image_starts);
    free(it->feature_rows);
    free(it->caption_ids);
    free(it->expected);
    memset(it, 0, sizeof *it);
}

void tga_eval_set_free(tga_eval_set *s) {
    for (size_t i = 0; i < s->n_items; i++)
        item_free(&s->items[i]);
    free(s->items);
    free(s->path);
    memset(s, 0, sizeof *s);
}

static size_t count_image_markers(const char *text, size_t len) {
    const size_t marker = strlen(TGA_IMAGE_MARKER);
    size_t count = 0;
    for (size_t i = 0; i + marker <= len; i++)
        if (memcmp(text + i, TGA_IMAGE_MARKER, marker) == 0) {
            count++;
            i += marker - 1;
        }
    return count;
}

/* An error about a record that carries the current message (a template's, say) as its text. */
static tga_status record_failure(const char *path, const tga_record *rec, const char *field) {
    char message[1024];
    snprintf(message, sizeof message, "%s", tga_error_message());
    tga_error_clear();
    return tga_record_error(path, rec, field, "%s", message);
}

static int32_t *copy_ids(const int32_t *ids, int32_t n) {
    int32_t *copy = malloc((size_t)(n > 0 ? n : 1) * sizeof *copy);
    if (copy) memcpy(copy, ids, (size_t)n * sizeof *copy);
    return copy;
}

/* The prompt is everything before the first supervised position: where the answer starts. */
static tga_status take_prompt(const char *path, const tga_record *rec, const tga_rendered *r,
                              tga_eval_item *it) {
    int32_t start = 0;
    while (start < r->n_tokens && r->labels[start] == TGA_IGNORE_INDEX)
        start++;
    if (start == 0 || start == r->n_tokens)
        return tga_record_error(path, rec, "conversations",
                                "the template leaves no prompt before the answer");
    it->n_prompt = start;
    it->prompt = copy_ids(r->input_ids, start);
    it->n_images = r->n_images;
    it->image_starts = malloc((size_t)(r->n_images + 1) * sizeof *it->image_starts);
    it->feature_rows = malloc((size_t)(r->n_images + 1) * sizeof *it->feature_rows);
    if (!it->prompt || !it->image_starts || !it->feature_rows)
        return tga_error(TGA_ERR_NOMEM, "out of memory loading %s", path);
    for (int32_t k = 0; k < r->n_images; k++)
        it->image_starts[k] = r->images[k].start;
    return TGA_OK;
}

static tga_status take_images(const char *path, const tga_record *rec, const tga_eval_inputs *in,
                              tga_eval_item *it) {
    for (int32_t k = 0; k < it->n_images; k++) {
        it->feature_rows[k] = tga_feature_store_find(in->features, rec->images[k]);
        if (it->feature_rows[k] < 0)
            return tga_record_error(path, rec, "image", "image '%.200s' is not in the feature index",
                                    rec->images[k]);
    }
    return TGA_OK;
}

static tga_status take_caption(const tga_rendered *r, tga_eval_item *it) {
    if (it->n_images == 0 || r->n_caption_tokens == 0 || r->caption.length == 0) return TGA_OK;
    it->caption_ids = copy_ids(r->cap_ids, r->n_caption_tokens);
    if (!it->caption_ids) return tga_error(TGA_ERR_NOMEM, "out of memory for a caption");
    it->n_caption = r->n_caption_tokens;
    it->caption_start = r->caption.start;
    it->caption_len = r->caption.length;
    return TGA_OK;
}

/* One record: its first exchange rendered, its images looked up, its answer kept. */
static tga_status load_item(const char *path, const tga_record *rec, const tga_eval_inputs *in,
                            tga_rendered *r, tga_eval_item *it) {
    const tga_turn *question = &rec->turns[0], *answer = &rec->turns[1];
    tga_conversation c = tga_record_conversation(rec);
    c.turns = rec->turns;
    c.n_turns = 2;
    /* images of later turns belong to questions that are not asked */
    c.n_images = count_image_markers(question->text, question->len);
    if (c.n_images == 0) c.caption = c.retrieved = NULL;
    if (tga_template_render(in->tmpl, &c, in->image_tokens, in->max_len, r) != TGA_OK)
        return record_failure(path, rec, "conversations");
    if (!r->fits)
        return tga_record_error(path, rec, "conversations",
                                "the prompt and the first answer token do not fit "
                                "data.max_len (%" PRId64 ")",
                                in->max_len);
    it->id = strdup(rec->id);
    it->expected = strndup(answer->text, answer->len);
    if (!it->id || !it->expected) return tga_error(TGA_ERR_NOMEM, "out of memory loading %s", path);
    TGA_TRY(take_prompt(path, rec, r, it));
    TGA_TRY(take_images(path, rec, in, it));
    TGA_TRY(take_caption(r, it));
    return tga_refusal_check(in->refusals, answer->text, answer->len, &it->expected_refusal);
}

static tga_status add_item(tga_eval_set *s, size_t *cap, tga_eval_item **slot) {
    if (s->n_items == *cap) {
        size_t bigger = *cap ? 2 * *cap : 64;
        tga_eval_item *items = realloc(s->items, bigger * sizeof *items);
        if (!items) return tga_error(TGA_ERR_NOMEM, "out of memory loading %s", s->path);
        s->items = items;
        *cap = bigger;
    }
    *slot = &s->items[s->n_items++];
    memset(*slot, 0, sizeof **slot);
    return TGA_OK;
}

static tga_status read_records(tga_record_reader *rd, const tga_eval_inputs *in, tga_eval_set *s) {
    tga_record_options options;
    tga_record_options_init(&options);
    options.require_caption = options.require_retrieved = false;
    tga_rendered r;
    tga_rendered_init(&r);
    size_t cap = 0;
    tga_status st = TGA_OK;
    for (bool done = false; st == TGA_OK;) {
        tga_raw_record raw;
        tga_record rec;
        tga_eval_item *it = NULL;
        if ((st = tga_record_reader_next(rd, &raw, &done)) != TGA_OK || done) break;
        if ((st = tga_record_parse(s->path, &raw, &options, &rec)) != TGA_OK) break;
        st = add_item(s, &cap, &it);
        if (st == TGA_OK) st = load_item(s->path, &rec, in, &r, it);
        tga_record_free(&rec);
        if (st != TGA_OK) break;
        s->max_images = it->n_images > s->max_images ? it->n_images : s->max_images;
        s->longest = it->n_prompt > s->longest ? it->n_prompt : s->longest;
        s->longest = it->n_caption > s->longest ? it->n_caption : s->longest;
    }
    tga_rendered_free(&r);
    return st;
}

tga_status tga_eval_set_load(const char *path, const tga_eval_inputs *in, tga_eval_set *out) {
    memset(out, 0, sizeof *out);
    out->path = strdup(path);
    if (!out->path) return tga_error(TGA_ERR_NOMEM, "out of memory");
    tga_record_reader *rd;
    tga_status st = tga_record_reader_open(path, &rd);
    if (st == TGA_OK) {
        st = read_records(rd, in, out);
        tga_record_reader_close(rd);
    }
    if (st == TGA_OK && out->n_items == 0) st = tga_error(TGA_ERR_FORMAT, "%s: no records to evaluate", path);
    if (st != TGA_OK) tga_eval_set_free(out);
    return st;
}

/* ---- stop ids ---------------------------------------------------------------------------------------- */

static int contains_id(const int32_t *ids, size_t n, int32_t id) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id) return 1;
    return 0;
}

/* The last supervised token of a rendered one-word answer, unless the word's own tokens hold it. */
static tga_status template_end_of_turn(const tga_template *t, const tga_tokenizer *tok, int32_t *id) {
    static const char question[] = "question", answer[] = "answer", spaced_answer[] = " answer";
    tga_turn turns[2] = {{TGA_ROLE_USER, question, sizeof question - 1},
                         {TGA_ROLE_ASSISTANT, answer, sizeof answer - 1}};
    tga_conversation c = {.turns = turns, .n_turns = 2};
    tga_rendered r;
    tga_rendered_init(&r);
    int32_t *plain = NULL, *spaced = NULL;
    size_t n_plain = 0, n_spaced = 0;
    tga_status st = tga_template_render(t, &c, 1, INT32_MAX, &r);
    if (st == TGA_OK) st = tga_tokenizer_encode(tok, answer, sizeof answer - 1, 0, &plain, &n_plain);
    if (st == TGA_OK)
        st = tga_tokenizer_encode(tok, spaced_answer, sizeof spaced_answer - 1, 0, &spaced, &n_spaced);
    *id = -1;
    for (int32_t k = r.n_tokens - 1; st == TGA_OK && k >= 0; k--) {
        if (r.labels[k] == TGA_IGNORE_INDEX) continue;
        if (!contains_id(plain, n_plain, r.labels[k]) && !contains_id(spaced, n_spaced, r.labels[k]))
            *id = r.labels[k];
        break;
    }
    free(plain);
    free(spaced);
    tga_rendered_free(&r);
    return st;
}

tga_status tga_eval_stop_ids(const tga_template *t, const tga_tokenizer *tok, int32_t *ids, int *n) {
    *n = 0;
    int32_t eos = tga_tokenizer_eos(tok), end_of_turn;
    if (eos >= 0) ids[(*n)++] = eos;
    TGA_TRY(template_end_of_turn(t, tok, &end_of_turn));
    if (end_of_turn >= 0 && end_of_turn != eos) ids[(*n)++] = end_of_turn;
    return TGA_OK;
}

/* ---- running ------------------------------------------------------------------------------------------ */

/* One batch of items, with what the probe keeps between the caption and the prompt forwards. */
typedef struct eval_batch {
    tga_eval_runner *r;
    const tga_eval_item *items;
    int n;
    float **features;     /* [n] each [n_images, P, Dv] */
    double *caption_mean; /* [n, L+1, D] */
    uint8_t *has_caption; /* [n] */
    float *hidden;        /* host [micro_batch * max_len, D] */
    /* the caption prompts' text-only batch */
    int32_t *text_ids, *text_labels, *text_lengths, *zeros;
    uint8_t *tox;
    int *slot;
    double *cosine_sum; /* [L+1], the result's accumulator */
    int64_t probe_records;
} eval_batch;

static void batch_free(eval_batch *b) {
    for (int i = 0; b->features && i < b->n; i++)
        free(b->features[i]);
    free(b->features);
    free(b->caption_mean);
    free(b->has_caption);
    free(b->hidden);
    free(b->text_ids);
    free(b->text_labels);
    free(b->text_lengths);
    free(b->zeros);
    free(b->tox);
    free(b->slot);
}

static tga_status batch_open(eval_batch *b, tga_eval_runner *r, const tga_eval_item *items, int n,
                             double *cosine_sum) {
    const size_t layers = (size_t)r->dims.n_layers + 1, D = (size_t)r->dims.dim;
    const size_t image_floats = (size_t)r->shape.image_tokens * (size_t)r->dims.vision_dim;
    *b = (eval_batch){.r = r, .items = items, .n = n, .cosine_sum = cosine_sum};
    b->features = calloc((size_t)n, sizeof *b->features);
    b->caption_mean = calloc((size_t)n * layers * D, sizeof *b->caption_mean);
    b->has_caption = calloc((size_t)n, sizeof *b->has_caption);
    b->hidden = malloc((size_t)r->shape.micro_batch * (size_t)r->shape.max_len * D * sizeof *b->hidden);
    const size_t text_tokens = (size_t)n * (size_t)r->shape.max_len;
    b->text_ids = malloc(text_tokens * sizeof *b->text_ids);
    b->text_labels = malloc(text_tokens * sizeof *b->text_labels);
    b->text_lengths = calloc((size_t)n, sizeof *b->text_lengths);
    b->zeros = calloc((size_t)n, sizeof *b->zeros);
    b->tox = calloc((size_t)n, sizeof *b->tox);
    b->slot = calloc((size_t)n, sizeof *b->slot);
    if (!b->features || !b->caption_mean || !b->has_caption || !b->hidden || !b->text_ids ||
        !b->text_labels || !b->text_lengths || !b->zeros || !b->tox || !b->slot)
        return tga_error(TGA_ERR_NOMEM, "out of memory for an eval batch");
    for (int i = 0; i < n; i++) {
        b->features[i] = malloc(((size_t)items[i].n_images * image_floats + 1) * sizeof(float));
        if (!b->features[i]) return tga_error(TGA_ERR_NOMEM, "out of memory for image features");
        for (int32_t k = 0; k < items[i].n_images; k++)
            TGA_TRY(tga_feature_store_read(r->features, items[i].feature_rows[k],
                                           b->features[i] + k * image_floats));
    }
    return TGA_OK;
}

/* out[D] = mean of rows [start, start + count) of sample s in hidden [B, T, D], added in double. */
static void add_span_mean(double *out, const float *hidden, int T, int D, int s, int start, int count,
                          int total) {
    for (int t = start; t < start + count; t++) {
        const float *row = hidden + ((size_t)s * T + (size_t)t) * D;
        for (int d = 0; d < D; d++)
            out[d] += (double)row[d] / total;
    }
}

static double cosine(const double *a, const double *b, int D) {
    double dot = 0, na = 0, nb = 0;
    for (int d = 0; d < D; d++) {
        dot += a[d] * b[d];
        na += a[d] * a[d];
        nb += b[d] * b[d];
    }
    return dot / (fmax(sqrt(na), COSINE_EPS) * fmax(sqrt(nb), COSINE_EPS));
}

/* The caption prompts of the batch's image records as one text-only batch; slot[k] is the item of
 * row k. */
static tga_batch caption_batch(eval_batch *b) {
    int B = 0, longest = 0;
    for (int i = 0; i < b->n; i++) {
        if (!b->items[i].caption_ids) continue;
        longest = b->items[i].n_caption > longest ? b->items[i].n_caption : longest;
        b->slot[B++] = i;
        b->has_caption[i] = 1;
    }
    memset(b->text_ids, 0, (size_t)B * longest * sizeof *b->text_ids);
    for (int k = 0; k < B; k++) {
        const tga_eval_item *it = &b->items[b->slot[k]];
        memcpy(b->text_ids + (size_t)k * longest, it->caption_ids,
               (size_t)it->n_caption * sizeof *b->text_ids);
        b->text_lengths[k] = it->n_caption;
    }
    for (size_t k = 0; k < (size_t)B * longest; k++)
        b->text_labels[k] = TGA_IGNORE_INDEX;
    return (tga_batch){.B = B,
                       .T = longest,
                       .input_ids = b->text_ids,
                       .labels = b->text_labels,
                       .lengths = b->text_lengths,
                       .ret_start = b->zeros,
                       .ret_len = b->zeros,
                       .tox = b->tox};
}

/* The text-only forward of the caption prompts; keeps each caption span's mean of hs[0..L]. */
static tga_status caption_probe(eval_batch *b) {
    static const tga_align_config no_alignment = {.mode = TGA_ALIGN_OFF};
    static const tga_step_scalars no_loss_scale = {0};
    tga_eval_runner *r = b->r;
    const int D = r->dims.dim, layers = r->dims.n_layers + 1;
    tga_batch batch = caption_batch(b);
    if (batch.B == 0) return TGA_OK;
    tga_losses unused;
    TGA_TRY(tga_model_forward_backward(r->model, &batch, &no_alignment, &no_loss_scale, 0, &unused));
    for (int l = 0; l < layers; l++) {
        tga_model_hidden(r->model, l, b->hidden);
        for (int k = 0; k < batch.B; k++) {
            const tga_eval_item *it = &b->items[b->slot[k]];
            add_span_mean(b->caption_mean + ((size_t)b->slot[k] * layers + l) * D, b->hidden, batch.T, D, k,
                          it->caption_start, it->caption_len, it->caption_len);
        }
    }
    return TGA_OK;
}

/* After the prompts' forward: each image record's mean of hs[l] over its image patches against its
 * caption's, per layer. */
static tga_status image_probe(tga_model *m, const tga_batch *batch, void *ctx) {
    eval_batch *b = ctx;
    const int D = b->r->dims.dim, layers = b->r->dims.n_layers + 1, P = b->r->shape.image_tokens;
    double *image_mean = malloc((size_t)D * sizeof *image_mean);
    if (!image_mean) return tga_error(TGA_ERR_NOMEM, "out of memory");
    for (int l = 0; l < layers; l++) {
        tga_model_hidden(m, l, b->hidden);
        for (int i = 0; i < b->n; i++) {
            const tga_eval_item *it = &b->items[i];
            if (!b->has_caption[i]) continue;
            memset(image_mean, 0, (size_t)D * sizeof *image_mean);
            for (int32_t k = 0; k < it->n_images; k++)
                add_span_mean(image_mean, b->hidden, batch->T, D, i, it->image_starts[k], P,
                              it->n_images * P);
            b->cosine_sum[l] += cosine(image_mean, b->caption_mean + ((size_t)i * layers + l) * D, D);
        }
    }
    for (int i = 0; i < b->n; i++)
        b->probe_records += b->has_caption[i];
    free(image_mean);
    return TGA_OK;
}

static void trim_ascii(const char **s, size_t *n) {
    while (*n > 0 && (**s == ' ' || (**s >= '\t' && **s <= '\r')))
        (*s)++, (*n)--;
    while (*n > 0 && ((*s)[*n - 1] == ' ' || ((*s)[*n - 1] >= '\t' && (*s)[*n - 1] <= '\r')))
        (*n)--;
}

static int ascii_lower(int c) { return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c; }

/* The response, trimmed, starts with the expected answer, trimmed, ignoring ASCII case. */
static bool starts_with_answer(const char *response, size_t n_response, const char *expected) {
    size_t n_expected = strlen(expected);
    trim_ascii(&response, &n_response);
    trim_ascii(&expected, &n_expected);
    if (n_expected > n_response) return false;
    for (size_t i = 0; i < n_expected; i++)
        if (ascii_lower((unsigned char)response[i]) != ascii_lower((unsigned char)expected[i])) return false;
    return true;
}

static tga_status keep_example(tga_eval_result *res, const tga_eval_item *it, const char *text, bool refusal,
                               bool correct, tga_generation_end end) {
    if (res->n_examples >= TGA_EVAL_MAX_EXAMPLES) return TGA_OK;
    tga_eval_example *e = &res->examples[res->n_examples++];
    *e = (tga_eval_example){.id = strdup(it->id),
                            .response = strdup(text),
                            .expected = strdup(it->expected),
                            .refusal = refusal,
                            .correct = correct,
                            .end = end};
    if (!e->id || !e->response || !e->expected) return tga_error(TGA_ERR_NOMEM, "out of memory");
    return TGA_OK;
}

static tga_status score(tga_eval_runner *r, const tga_eval_item *it, const tga_generation *g,
                        tga_eval_result *res) {
    char *text;
    size_t len;
    TGA_TRY(tga_tokenizer_decode(r->tok, g->ids, (size_t)g->n, &text, &len));
    bool refusal = false;
    tga_status st = tga_refusal_check(r->refusals, text, len, &refusal);
    bool correct = starts_with_answer(text, len, it->expected);
    res->records++;
    res->refusals += refusal;
    res->correct += correct;
    res->expected_refusals += it->expected_refusal;
    res->image_records += it->n_images > 0;
    res->generated_tokens += g->n;
    res->ended_by_stop += g->end == TGA_GENERATION_STOP_TOKEN;
    if (st == TGA_OK) st = keep_example(res, it, text, refusal, correct, g->end);
    free(text);
    return st;
}

static tga_status generate_batch(eval_batch *b, tga_eval_result *res) {
    tga_eval_runner *r = b->r;
    tga_prompt *prompts = calloc((size_t)b->n, sizeof *prompts);
    tga_generation *gens = calloc((size_t)b->n, sizeof *gens);
    int32_t *ids = malloc((size_t)b->n * r->max_new * sizeof *ids);
    tga_status st = prompts && gens && ids ? TGA_OK : tga_error(TGA_ERR_NOMEM, "out of memory");
    for (int i = 0; st == TGA_OK && i < b->n; i++) {
        const tga_eval_item *it = &b->items[i];
        prompts[i] = (tga_prompt){.ids = it->prompt,
                                  .n_tokens = it->n_prompt,
                                  .n_images = it->n_images,
                                  .image_starts = it->image_starts,
                                  .image_features = b->features[i]};
        gens[i].ids = ids + (size_t)i * r->max_new;
    }
    tga_generate_options o = {.max_new = r->max_new,
                              .stop_ids = r->stop_ids,
                              .n_stop = r->n_stop,
                              .n_choices = (int)tga_tokenizer_vocab_size(r->tok),
                              .on_prompt_forward = image_probe,
                              .ctx = b};
    if (st == TGA_OK) st = tga_generate_greedy(r->model, &r->dims, &r->shape, prompts, b->n, &o, gens);
    for (int i = 0; st == TGA_OK && i < b->n; i++)
        st = score(r, &b->items[i], &gens[i], res);
    free(prompts);
    free(gens);
    free(ids);
    return st;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void finish_result(tga_eval_result *res, tga_eval_kind kind, int64_t probe_records) {
    res->kind = kind != TGA_EVAL_AUTO                    ? kind
                : res->expected_refusals == res->records ? TGA_EVAL_DSR
                                                         : TGA_EVAL_UTILITY;
    res->probe_records = probe_records;
    if (probe_records == 0) {
        free(res->probe_cosine);
        res->probe_cosine = NULL;
        return;
    }
    for (int l = 0; l < res->n_probe_layers; l++)
        res->probe_cosine[l] /= (double)probe_records;
}

tga_status tga_eval_set_run(tga_eval_runner *r, const tga_eval_set *set, tga_eval_kind kind,
                            tga_eval_result *out) {
    memset(out, 0, sizeof *out);
    const double start = now_seconds();
    out->n_probe_layers = r->dims.n_layers + 1;
    out->probe_cosine = calloc((size_t)out->n_probe_layers, sizeof *out->probe_cosine);
    if (!out->probe_cosine) return tga_error(TGA_ERR_NOMEM, "out of memory");
    int64_t probe_records = 0;
    tga_status st = TGA_OK;
    for (size_t first = 0; st == TGA_OK && first < set->n_items; first += (size_t)r->shape.micro_batch) {
        size_t left = set->n_items - first;
        int n = left < (size_t)r->shape.micro_batch ? (int)left : r->shape.micro_batch;
        eval_batch b;
        st = batch_open(&b, r, set->items + first, n, out->probe_cosine);
        if (st == TGA_OK) st = caption_probe(&b);
        if (st == TGA_OK) st = generate_batch(&b, out);
        probe_records += b.probe_records;
        batch_free(&b);
    }
    finish_result(out, kind, probe_records);
    out->seconds = now_seconds() - start;
    if (st != TGA_OK) tga_eval_result_free(out);
    return st;
}

void tga_eval_result_free(tga_eval_result *res) {
    free(res->probe_cosine);
    for (int i = 0; i < res->n_examples; i++) {
        free(res->examples[i].id);
        free(res->examples[i].response);
        free(res->examples[i].expected);
    }
    memset(res, 0, sizeof *res);
}
