/* `tga retrieve`: each record's retrieved text (TGA-METHOD.md §2). Record i's image is row i of the
 * query embeddings; its retrieved_caption becomes the corpus text most similar to it by cosine
 * similarity that is not its own image_caption (and, with --k > 1, retrieved_captions the ranked
 * list of up to k). All other fields are kept; the output has the input's format (JSON array or
 * JSONL).
 *
 * Ranks: rank 0 reads the records and sends their captions to all; rank r scores corpus rows
 * [r*M/w, (r+1)*M/w), streamed from the .npy in blocks, and excludes own-caption texts on its own
 * rows during selection (trainer/retrieve.h), so k candidates per query and rank always suffice.
 * The per-rank lists are gathered and merged (ties to the lower corpus row: the same answer for
 * any number of ranks); rank 0 reads the winners' texts and writes the output, atomically. After
 * every step that can fail on one rank only, the ranks agree on whether any failed, so that all
 * stop together and none waits forever in the next collective. main() starts and ends MPI. */
#define _POSIX_C_SOURCE 200809L /* getline */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"
#include "kernels/ops.h"
#include "runtime/backend.h"
#include "runtime/fileio.h"
#include "runtime/log.h"
#include "runtime/npy.h"
#include "trainer/cli.h"
#include "trainer/records.h"
#include "trainer/retrieve.h"

#define MAX_K 1000

typedef struct retrieve_options {
    const char *queries, *corpus, *texts, *text_key, *records, *out, *caption_key;
    int k, threads;
} retrieve_options;

static tga_status parse_options(int argc, char **argv, retrieve_options *o) {
    *o = (retrieve_options){.text_key = "text", .caption_key = "image_caption", .k = 1};
    struct {
        const char *name;
        const char **value;
    } strings[] = {{"--queries", &o->queries},        {"--corpus", &o->corpus},   {"--texts", &o->texts},
                   {"--text-key", &o->text_key},      {"--records", &o->records}, {"--out", &o->out},
                   {"--caption-key", &o->caption_key}};
    const int n_strings = (int)(sizeof strings / sizeof strings[0]);
    for (int i = 0; i < argc; i++) {
        long long v;
        int matched = 0;
        for (int p = 0; p < n_strings && !matched; p++) {
            if (strcmp(argv[i], strings[p].name) != 0) continue;
            if (i + 1 >= argc)
                return tga_error(TGA_ERR_USAGE, "%s needs a value (see tga help retrieve)", argv[i]);
            *strings[p].value = argv[++i];
            matched = 1;
        }
        if (matched) continue;
        if (strcmp(argv[i], "--k") == 0) {
            TGA_TRY(tga_cli_int_arg(argc, argv, &i, 1, MAX_K, &v));
            o->k = (int)v;
        } else if (strcmp(argv[i], "--threads") == 0) {
            TGA_TRY(tga_cli_int_arg(argc, argv, &i, 0, 4096, &v));
            o->threads = (int)v;
        } else {
            return tga_error(TGA_ERR_USAGE, "unknown option '%s' (see tga help retrieve)", argv[i]);
        }
    }
    for (int p = 0; p < n_strings; p++)
        if (!*strings[p].value)
            return tga_error(TGA_ERR_USAGE, "%s is required (see tga help retrieve)", strings[p].name);
    return TGA_OK;
}

/* Every rank learns whether any rank failed, and gets the first failing rank's status and message:
 * all ranks stop together, and whichever rank's message gets printed (mpirun may end the others
 * first) names the cause. */
typedef struct rank_failure {
    int32_t status;
    char message[1020];
} rank_failure;

static tga_status agree(tga_status local, const char *what) {
    int world = tga_dist_world();
    rank_failure mine = {(int32_t)local, ""}, *all = malloc(sizeof *all * (size_t)world);
    if (local != TGA_OK) snprintf(mine.message, sizeof mine.message, "%s", tga_error_message());
    if (!all) return local != TGA_OK ? local : tga_error(TGA_ERR_NOMEM, "out of memory while %s", what);
    tga_status st = tga_dist_allgather(&mine, all, sizeof mine, what);
    int failed = 0;
    while (st == TGA_OK && failed < world && all[failed].status == TGA_OK)
        failed++;
    if (local == TGA_OK && st == TGA_OK && failed < world)
        st = tga_error((tga_status)all[failed].status, "rank %d, while %s: %s", failed, what,
                       all[failed].message);
    free(all);
    return local != TGA_OK ? local : st;
}

/* ---- JSON ------------------------------------------------------------------------------------- */

/* bytes[0, len) as one JSON object; `place` names it in messages ("R.json:13: record 12"). */
static tga_status parse_object(const char *place, const char *bytes, size_t len, json_t **obj) {
    json_error_t err;
    *obj = json_loadb(bytes, len, JSON_DECODE_ANY, &err);
    if (!*obj) return tga_error(TGA_ERR_FORMAT, "%s: not valid JSON: %s", place, err.text);
    if (!json_is_object(*obj)) {
        json_decref(*obj);
        return tga_error(TGA_ERR_FORMAT, "%s: expected a JSON object", place);
    }
    return TGA_OK;
}

/* The string field `key` of an object; `where` names the object for the message. */
static tga_status string_field(json_t *obj, const char *key, const char *where, json_t **value) {
    *value = json_object_get(obj, key);
    if (!json_is_string(*value))
        return tga_error(TGA_ERR_FORMAT, "%s: %s field \"%s\"", where, *value ? "expected a string in" : "no",
                         key);
    return TGA_OK;
}

static tga_status open_text_file(const char *path, FILE **f) {
    *f = fopen(path, "rb");
    if (!*f) return tga_error(TGA_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    return TGA_OK;
}

/* ---- records (rank 0, streamed with trainer/records.h) ----------------------------------------- */

/* For messages, as trainer/records.h writes them: "R.json:13: record 12". */
static void record_place(char *out, size_t cap, const char *path, const tga_raw_record *raw) {
    snprintf(out, cap, "%s:%llu: record %llu", path, (unsigned long long)raw->line,
             (unsigned long long)raw->number);
}

/* Appends a caption and its NUL to the growing buffer. */
static tga_status append_caption(const json_t *caption, char **buf, size_t *bytes, size_t *cap) {
    size_t len = json_string_length(caption) + 1;
    if (*bytes + len > *cap) {
        size_t grown_cap = 2 * (*bytes + len);
        char *grown = realloc(*buf, grown_cap);
        if (!grown) return tga_error(TGA_ERR_NOMEM, "out of memory for %zu bytes of captions", grown_cap);
        *buf = grown;
        *cap = grown_cap;
    }
    memcpy(*buf + *bytes, json_string_value(caption), len);
    *bytes += len;
    return TGA_OK;
}

/* Every record's caption, NUL-terminated and concatenated, in *buf (malloc'ed). */
static tga_status read_captions(const retrieve_options *o, char **buf, size_t *bytes, int64_t *n_records) {
    tga_record_reader *reader;
    TGA_TRY(tga_record_reader_open(o->records, &reader));
    size_t cap = 0;
    tga_status st = TGA_OK;
    for (;;) {
        tga_raw_record raw;
        bool done;
        json_t *record, *caption;
        char place[1024];
        st = tga_record_reader_next(reader, &raw, &done);
        if (st != TGA_OK || done) break;
        record_place(place, sizeof place, o->records, &raw);
        st = parse_object(place, raw.bytes, raw.len, &record);
        if (st != TGA_OK) break;
        st = string_field(record, o->caption_key, place, &caption);
        if (st == TGA_OK) st = append_caption(caption, buf, bytes, &cap);
        json_decref(record);
        if (st != TGA_OK) break;
        *n_records = (int64_t)raw.number + 1;
    }
    tga_record_reader_close(reader);
    return st;
}

/* ---- captions on every rank ------------------------------------------------------------------ */

typedef struct captions {
    int64_t n;
    char *buf;
    const char **text; /* [n] into buf */
} captions;

static void captions_free(captions *c) {
    free(c->buf);
    free(c->text);
}

/* Rank 0 reads the records' captions; every rank gets them. */
static tga_status share_captions(const retrieve_options *o, captions *c) {
    int64_t header[2] = {0, 0}; /* records, bytes */
    tga_status st = TGA_OK;
    if (tga_dist_rank() == 0) {
        size_t bytes = 0;
        st = read_captions(o, &c->buf, &bytes, &header[0]);
        header[1] = (int64_t)bytes;
    }
    TGA_TRY(agree(st, "reading the records"));
    TGA_TRY(tga_dist_bcast(header, sizeof header, 0, "record count"));
    c->n = header[0];
    if (c->n > INT32_MAX)
        return tga_error(TGA_ERR_FORMAT, "%s: %lld records; at most %d are supported", o->records,
                         (long long)c->n, INT32_MAX);
    if (tga_dist_rank() != 0) c->buf = malloc((size_t)header[1] + 1);
    c->text = malloc(sizeof(char *) * (size_t)(c->n + 1));
    st = (c->buf || c->n == 0) && c->text ? TGA_OK
                                          : tga_error(TGA_ERR_NOMEM, "out of memory for the captions");
    TGA_TRY(agree(st, "allocating the captions"));
    TGA_TRY(tga_dist_bcast(c->buf, (size_t)header[1], 0, "captions"));
    const char *at = c->buf;
    for (int64_t i = 0; i < c->n; i++, at += strlen(at) + 1)
        c->text[i] = at;
    return TGA_OK;
}

/* ---- embeddings ------------------------------------------------------------------------------ */

typedef struct embeddings {
    const char *path;
    FILE *f;
    tga_npy_header h;
    int dim;
} embeddings;

static tga_status open_embeddings(const char *path, embeddings *e) {
    e->path = path;
    TGA_TRY(tga_npy_open(path, &e->f, &e->h));
    if (e->h.ndim != 2 || e->h.shape[1] < 1 || e->h.shape[1] > INT32_MAX / 64 || e->h.shape[0] > INT32_MAX)
        return tga_error(TGA_ERR_FORMAT, "%s: expected a 2-D array [rows, dim] of embeddings (rows < 2^31)",
                         path);
    if (e->h.dtype != TGA_NPY_F32 && e->h.dtype != TGA_NPY_F16 && e->h.dtype != TGA_NPY_F64)
        return tga_error(TGA_ERR_FORMAT, "%s: dtype %s; expected float32, float16 or float64", path,
                         tga_npy_dtype_name(e->h.dtype));
    e->dim = (int)e->h.shape[1];
    return TGA_OK;
}

/* tga_corpus_reader over an .npy file: NaN or Inf would break the total order of the ranking. */
static tga_status read_finite_rows(void *ctx, int64_t first_row, int64_t n_rows, float *out) {
    const embeddings *e = ctx;
    TGA_TRY(tga_npy_read_rows_f32(e->f, e->path, &e->h, first_row, n_rows, out));
    for (int64_t r = 0; r < n_rows; r++)
        if (!tga_cpu_ops()->all_finite(out + r * e->dim, (size_t)e->dim))
            return tga_error(TGA_ERR_FORMAT, "%s: row %lld holds a NaN or an infinity", e->path,
                             (long long)(first_row + r));
    return TGA_OK;
}

/* Checks the two files against each other and the records, and loads the queries, normalised. */
static tga_status load_queries(const retrieve_options *o, int64_t n_records, embeddings *queries,
                               const embeddings *corpus, float **rows) {
    TGA_TRY(open_embeddings(o->queries, queries));
    if (queries->h.shape[0] != n_records)
        return tga_error(TGA_ERR_FORMAT,
                         "%s has %lld rows but %s has %lld records: row i must embed record i's image",
                         o->queries, (long long)queries->h.shape[0], o->records, (long long)n_records);
    if (queries->dim != corpus->dim)
        return tga_error(TGA_ERR_FORMAT, "%s has dimension %d but %s has %d", o->queries, queries->dim,
                         o->corpus, corpus->dim);
    *rows = malloc(sizeof(float) * ((size_t)n_records * queries->dim + 1));
    if (!*rows) return tga_error(TGA_ERR_NOMEM, "out of memory for %lld query rows", (long long)n_records);
    TGA_TRY(read_finite_rows(queries, 0, n_records, *rows));
    tga_retrieve_normalize_rows(*rows, n_records, queries->dim);
    return TGA_OK;
}

/* ---- corpus texts ---------------------------------------------------------------------------- */

/* Line row+1 of the texts file: an object (the caller's to free) and its text field. */
static tga_status parse_text_line(const retrieve_options *o, int64_t row, const char *line, size_t len,
                                  json_t **obj, json_t **text) {
    char place[1024];
    snprintf(place, sizeof place, "%s:%lld: corpus row %lld", o->texts, (long long)row + 1, (long long)row);
    size_t start, end;
    tga_text_trim(line, len, &start, &end);
    if (start == end)
        return tga_error(TGA_ERR_FORMAT, "%s: empty line; every line must be one JSON object", place);
    TGA_TRY(parse_object(place, line, len, obj));
    tga_status st = string_field(*obj, o->text_key, place, text);
    if (st != TGA_OK) json_decref(*obj);
    return st;
}

/* Pass over the texts on every rank: line j is corpus row j's text, so the file must have M lines;
 * the rows of this rank's shard get the caption id their text equals (-1 for none). */
static tga_status shard_text_ids(const retrieve_options *o, int64_t corpus_rows,
                                 const tga_retrieve_shard *shard, const tga_caption_map *map,
                                 int32_t *text_id) {
    FILE *f;
    TGA_TRY(open_text_file(o->texts, &f));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t row = 0;
    tga_status st = TGA_OK;
    for (; st == TGA_OK && (len = getline(&line, &cap, f)) >= 0; row++) {
        if (row < shard->first_row || row >= shard->first_row + shard->n_rows) continue;
        json_t *obj, *text;
        st = parse_text_line(o, row, line, (size_t)len, &obj, &text);
        if (st != TGA_OK) break;
        text_id[row - shard->first_row] =
            tga_caption_map_find(map, json_string_value(text), json_string_length(text));
        json_decref(obj);
    }
    if (st == TGA_OK && ferror(f))
        st = tga_error(TGA_ERR_IO, "%s: read failed: %s", o->texts, strerror(errno));
    if (st == TGA_OK && row != corpus_rows)
        st =
            tga_error(TGA_ERR_FORMAT, "%s has %lld lines but %s has %lld rows: line j must hold row j's text",
                      o->texts, (long long)row, o->corpus, (long long)corpus_rows);
    free(line);
    fclose(f);
    return st;
}

static int compare_int32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The texts of the rows that won a slot (rank 0): rows[n] sorted, unique; text[n] their strings. */
typedef struct winner_texts {
    int32_t *rows;
    json_t **text;
    size_t n;
} winner_texts;

static void winner_texts_free(winner_texts *w) {
    for (size_t i = 0; w->text && i < w->n; i++)
        json_decref(w->text[i]);
    free(w->rows);
    free(w->text);
}

static json_t *winner_text(const winner_texts *w, int32_t row) {
    const int32_t *at = bsearch(&row, w->rows, w->n, sizeof *w->rows, compare_int32);
    return w->text[at - w->rows];
}

/* Second pass over the texts file (rank 0), keeping only the winners' texts. */
static tga_status read_winner_texts(const retrieve_options *o, const int32_t *best_index, size_t n_slots,
                                    winner_texts *w) {
    w->rows = malloc(sizeof(int32_t) * (n_slots + 1));
    w->text = calloc(n_slots + 1, sizeof(json_t *));
    if (!w->rows || !w->text) return tga_error(TGA_ERR_NOMEM, "out of memory for the retrieved texts");
    for (size_t i = 0; i < n_slots; i++)
        if (best_index[i] >= 0) w->rows[w->n++] = best_index[i];
    qsort(w->rows, w->n, sizeof *w->rows, compare_int32);
    size_t unique = 0;
    for (size_t i = 0; i < w->n; i++)
        if (unique == 0 || w->rows[unique - 1] != w->rows[i]) w->rows[unique++] = w->rows[i];
    w->n = unique;
    FILE *f;
    TGA_TRY(open_text_file(o->texts, &f));
    char *line = NULL;
    size_t cap = 0, next = 0;
    ssize_t len;
    tga_status st = TGA_OK;
    for (int64_t row = 0; st == TGA_OK && next < w->n && (len = getline(&line, &cap, f)) >= 0; row++) {
        if (row != w->rows[next]) continue;
        json_t *obj, *text;
        st = parse_text_line(o, row, line, (size_t)len, &obj, &text);
        if (st != TGA_OK) break;
        w->text[next++] = json_incref(text);
        json_decref(obj);
    }
    if (st == TGA_OK && next < w->n)
        st = tga_error(TGA_ERR_IO, "%s: ended before line %lld (did it change while tga ran?)", o->texts,
                       (long long)w->rows[next] + 1);
    free(line);
    fclose(f);
    return st;
}

/* ---- output (rank 0) ------------------------------------------------------------------------- */

/* The record's ranked texts as a JSON array (up to k: fewer when fewer texts remain). */
static json_t *ranked_texts(const int32_t *ranked, int k, const winner_texts *w) {
    json_t *list = json_array();
    for (int slot = 0; list && slot < k && ranked[slot] >= 0; slot++) {
        if (json_array_append(list, winner_text(w, ranked[slot])) != 0) {
            json_decref(list);
            return NULL;
        }
    }
    return list;
}

/* retrieved_caption = the best text; retrieved_captions = the ranked list when k > 1 (removed
 * when k == 1, so that no list from an earlier run outlives it). */
static tga_status set_retrieved(json_t *record, const char *place, const retrieve_options *o,
                                const int32_t *ranked, const winner_texts *w) {
    if (ranked[0] < 0)
        return tga_error(TGA_ERR_FORMAT, "%s: every text of %s equals its %s: nothing to retrieve", place,
                         o->texts, o->caption_key);
    int failed = json_object_set(record, "retrieved_caption", winner_text(w, ranked[0])) != 0;
    if (o->k > 1)
        failed |= json_object_set_new(record, "retrieved_captions", ranked_texts(ranked, o->k, w)) != 0;
    else
        json_object_del(record, "retrieved_captions");
    return failed ? tga_error(TGA_ERR_NOMEM, "%s: out of memory setting the retrieved texts", place) : TGA_OK;
}

typedef struct dump_target {
    tga_file_writer *writer;
    tga_status st;
} dump_target;

static int dump_to_writer(const char *buffer, size_t size, void *data) {
    dump_target *t = data;
    t->st = tga_file_writer_write(t->writer, buffer, size);
    return t->st == TGA_OK ? 0 : -1;
}

static tga_status write_text(dump_target *t, const char *text) {
    return tga_file_writer_write(t->writer, text, strlen(text));
}

/* 1 when the records file is a JSON array: its first byte that is not white space is '['
 * (trainer/records.h's rule). */
static tga_status records_are_array(const char *path, int *array) {
    FILE *f;
    TGA_TRY(open_text_file(path, &f));
    int c;
    while ((c = fgetc(f)) == ' ' || c == '\t' || c == '\n' || c == '\r') {
    }
    fclose(f);
    *array = c == '[';
    return TGA_OK;
}

/* Record by record: parse, set the retrieved texts, write one line (JSONL as read, or the lines of
 * a JSON array). */
static tga_status copy_records(const retrieve_options *o, int array, int64_t n_records,
                               const int32_t *best_index, const winner_texts *w, tga_record_reader *reader,
                               dump_target *t) {
    tga_status st = array ? write_text(t, "[") : TGA_OK;
    int64_t written = 0;
    while (st == TGA_OK) {
        tga_raw_record raw;
        bool done;
        json_t *record;
        char place[1024];
        st = tga_record_reader_next(reader, &raw, &done);
        if (st != TGA_OK || done) break;
        record_place(place, sizeof place, o->records, &raw);
        if (written == n_records) {
            st = tga_error(TGA_ERR_IO, "%s: more records than before (did the file change?)", place);
            break;
        }
        st = parse_object(place, raw.bytes, raw.len, &record);
        if (st != TGA_OK) break;
        st = set_retrieved(record, place, o, best_index + written * o->k, w);
        if (st == TGA_OK && array) st = write_text(t, written == 0 ? "\n" : ",\n");
        if (st == TGA_OK &&
            json_dump_callback(record, dump_to_writer, t, JSON_COMPACT | JSON_PRESERVE_ORDER) != 0)
            st = t->st != TGA_OK ? t->st : tga_error(TGA_ERR_NOMEM, "%s: out of memory writing it", place);
        if (st == TGA_OK && !array) st = write_text(t, "\n");
        json_decref(record);
        written++;
    }
    if (st == TGA_OK && written != n_records)
        st = tga_error(TGA_ERR_IO, "%s: %lld records, %lld before (did the file change?)", o->records,
                       (long long)written, (long long)n_records);
    if (st == TGA_OK && array) st = write_text(t, "\n]\n");
    return st;
}

/* The output, through a temporary file renamed into place once complete. */
static tga_status write_records(const retrieve_options *o, int64_t n_records, const int32_t *best_index,
                                const winner_texts *w) {
    int array;
    TGA_TRY(records_are_array(o->records, &array));
    tga_record_reader *reader;
    TGA_TRY(tga_record_reader_open(o->records, &reader));
    dump_target t = {NULL, TGA_OK};
    tga_status st = tga_file_writer_open(&t.writer, o->out, TGA_FILE_REPLACE);
    if (st == TGA_OK) st = copy_records(o, array, n_records, best_index, w, reader, &t);
    tga_record_reader_close(reader);
    if (st != TGA_OK) {
        tga_file_writer_discard(t.writer);
        return st;
    }
    return tga_file_writer_commit(t.writer);
}

/* ---- the command ----------------------------------------------------------------------------- */

typedef struct retrieve_state {
    captions captions;
    tga_caption_map *map;
    int32_t *caption_id;
    embeddings queries, corpus;
    float *query_rows;
    tga_retrieve_shard shard;
    int32_t *text_id;
    float *score, *all_score; /* [n, k] this rank's lists, then [world, n, k] */
    int32_t *index, *all_index;
    winner_texts winners;
} retrieve_state;

static void state_free(retrieve_state *s) {
    captions_free(&s->captions);
    tga_caption_map_free(s->map);
    if (s->queries.f) fclose(s->queries.f);
    if (s->corpus.f) fclose(s->corpus.f);
    winner_texts_free(&s->winners);
    free(s->caption_id);
    free(s->query_rows);
    free(s->text_id);
    free(s->score);
    free(s->all_score);
    free(s->index);
    free(s->all_index);
}

/* Everything a rank needs before scoring: caption ids, queries, its shard and its rows' text ids. */
static tga_status prepare(const retrieve_options *o, retrieve_state *s) {
    int64_t n = s->captions.n;
    s->caption_id = malloc(sizeof(int32_t) * (size_t)(n + 1));
    if (!s->caption_id) return tga_error(TGA_ERR_NOMEM, "out of memory for %lld caption ids", (long long)n);
    TGA_TRY(tga_caption_map_build(s->captions.text, (int)n, &s->map, s->caption_id));
    TGA_TRY(open_embeddings(o->corpus, &s->corpus));
    TGA_TRY(load_queries(o, n, &s->queries, &s->corpus, &s->query_rows));
    int64_t corpus_rows = s->corpus.h.shape[0];
    s->shard =
        (tga_retrieve_shard){.corpus_rows = corpus_rows, .read = read_finite_rows, .read_ctx = &s->corpus};
    tga_retrieve_shard_range(corpus_rows, tga_dist_rank(), tga_dist_world(), &s->shard.first_row,
                             &s->shard.n_rows);
    s->text_id = malloc(sizeof(int32_t) * (size_t)(s->shard.n_rows + 1));
    s->score = malloc(sizeof(float) * (size_t)(n * o->k + 1));
    s->index = malloc(sizeof(int32_t) * (size_t)(n * o->k + 1));
    if (!s->text_id || !s->score || !s->index)
        return tga_error(TGA_ERR_NOMEM, "out of memory for the top-k lists");
    s->shard.text_id = s->text_id;
    return shard_text_ids(o, corpus_rows, &s->shard, s->map, s->text_id);
}

/* Every rank's lists to every rank, merged into this rank's score/index. */
static tga_status gather_and_merge(int64_t n, int k, retrieve_state *s) {
    int world = tga_dist_world();
    size_t per_rank = (size_t)n * k;
    s->all_score = malloc(sizeof(float) * (per_rank * world + 1));
    s->all_index = malloc(sizeof(int32_t) * (per_rank * world + 1));
    tga_status st =
        s->all_score && s->all_index ? TGA_OK : tga_error(TGA_ERR_NOMEM, "out of memory gathering lists");
    TGA_TRY(agree(st, "allocating the gathered lists"));
    TGA_TRY(tga_dist_allgather(s->score, s->all_score, sizeof(float) * per_rank, "top-k scores"));
    TGA_TRY(tga_dist_allgather(s->index, s->all_index, sizeof(int32_t) * per_rank, "top-k rows"));
    return tga_retrieve_merge(s->all_score, s->all_index, world, (int)n, k, s->score, s->index);
}

static tga_status run(const retrieve_options *o, retrieve_state *s) {
    TGA_TRY(tga_backend_select("cpu", o->threads));
    TGA_TRY(share_captions(o, &s->captions));
    TGA_TRY(agree(prepare(o, s), "reading the embeddings and texts"));
    int64_t n = s->captions.n;
    TGA_INFO("retrieve: %lld queries, %lld corpus rows of dimension %d, k = %d, %d rank(s), %s", (long long)n,
             (long long)s->shard.corpus_rows, s->corpus.dim, o->k, tga_dist_world(),
             tga_backend_description());
    tga_status st = tga_retrieve_shard_topk(s->query_rows, s->caption_id, (int)n, s->corpus.dim, &s->shard,
                                            o->k, s->score, s->index);
    TGA_TRY(agree(st, "scoring the corpus"));
    TGA_TRY(gather_and_merge(n, o->k, s));
    if (tga_dist_rank() != 0) return TGA_OK;
    TGA_TRY(read_winner_texts(o, s->index, (size_t)n * o->k, &s->winners));
    TGA_TRY(write_records(o, n, s->index, &s->winners));
    TGA_INFO("retrieve: wrote %lld records to %s", (long long)n, o->out);
    return TGA_OK;
}

tga_status tga_cmd_retrieve(int argc, char **argv) {
    retrieve_options o;
    TGA_TRY(parse_options(argc, argv, &o));
    retrieve_state s;
    memset(&s, 0, sizeof s);
    tga_status st = run(&o, &s);
    state_free(&s);
    return st;
}
