/* `tga prep`: records + features -> shards, in parallel over ranks with rank-independent output.
 * See prep.h for the contract and trainer/DATA.md for the formats. */
#define _POSIX_C_SOURCE 200809L /* getline, strdup, clock_gettime, mkdir, isatty */

#include "trainer/prep.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dist/comm.h"
#include "runtime/fileio.h"
#include "runtime/log.h"
#include "runtime/npy.h"
#include "runtime/tokenizer.h"
#include "trainer/template.h"

#define MAX_SHARDS 100000 /* shard-NNNNN: five digits keep byte order = shard order */
#define PATH_CAP 4096
#define BAD_RECORDS_SHOWN 20 /* per rank, with skip_bad; the rest are only counted */

enum {
    ST_RECORDS,
    ST_SAMPLES,
    ST_TOKENS,
    ST_SUPERVISED,
    ST_IMAGES,
    ST_TOX,
    ST_TEXT_ONLY,
    ST_TRUNCATED,
    ST_TOO_LONG,
    ST_BAD,
    N_STATS
};

void tga_prep_options_init(tga_prep_options *o) {
    memset(o, 0, sizeof *o);
    o->max_len = 2048;
    o->feature_dtype = TGA_SHARD_F16;
    o->samples_per_shard = 512;
    o->progress = true;
    tga_record_options_init(&o->record);
}

/* ---- float16 ---------------------------------------------------------------------------------- */

/* IEEE binary32 -> binary16, rounding to nearest even (what numpy's astype(float16) does);
 * out-of-range values become infinities, which the caller rejects. */
static uint16_t float_to_half(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint32_t sign = (bits >> 16) & 0x8000u, exponent = (bits >> 23) & 0xffu, mantissa = bits & 0x7fffffu;
    if (exponent == 0xff) return (uint16_t)(sign | 0x7c00u | (mantissa ? 0x200u : 0));
    int32_t e = (int32_t)exponent - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) { /* a subnormal half (or zero): units of 2^-24 */
        if (e < -10) return (uint16_t)sign;
        uint32_t full = mantissa | 0x800000u, shift = (uint32_t)(14 - e);
        uint32_t half = full >> shift, rest = full & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (mantissa >> 13), rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half++; /* a carry rounds up the exponent */
    return (uint16_t)half;
}

/* ---- the feature index: image name -> row of a [N, P, Dv] array -------------------------------- */

typedef struct {
    char *name;
    int64_t row;
} index_slot;

typedef struct {
    index_slot *slots; /* open addressing, at most half full */
    size_t cap, count;
} name_index;

static uint64_t hash_name(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static index_slot *index_slot_of(const name_index *x, const char *name) {
    for (size_t i = hash_name(name) & (x->cap - 1);; i = (i + 1) & (x->cap - 1))
        if (!x->slots[i].name || strcmp(x->slots[i].name, name) == 0) return &x->slots[i];
}

static int64_t index_find(const name_index *x, const char *name) {
    if (x->cap == 0) return -1;
    index_slot *s = index_slot_of(x, name);
    return s->name ? s->row : -1;
}

static tga_status index_grow(name_index *x) {
    size_t cap = x->cap ? 2 * x->cap : 1024;
    name_index bigger = {calloc(cap, sizeof(index_slot)), cap, x->count};
    if (!bigger.slots) return tga_error(TGA_ERR_NOMEM, "out of memory for the feature index");
    for (size_t i = 0; i < x->cap; i++)
        if (x->slots[i].name) *index_slot_of(&bigger, x->slots[i].name) = x->slots[i];
    free(x->slots);
    *x = bigger;
    return TGA_OK;
}

static void index_free(name_index *x) {
    for (size_t i = 0; i < x->cap; i++)
        free(x->slots[i].name);
    free(x->slots);
    memset(x, 0, sizeof *x);
}

/* One index line: {"image": NAME, "row": R} in a .jsonl/.json file, else "NAME ROW" (the row is the
 * last field). */
static tga_status parse_index_line(const char *path, uint64_t line_no, char *line, bool json_lines,
                                   char **name, int64_t *row) {
    if (json_lines) {
        json_error_t err;
        json_t *v = json_loads(line, JSON_REJECT_DUPLICATES, &err);
        json_t *image = json_object_get(v, "image"), *r = json_object_get(v, "row");
        bool ok = json_is_string(image) && json_string_length(image) > 0 && json_is_integer(r);
        if (ok) {
            *name = strdup(json_string_value(image));
            *row = json_integer_value(r);
        }
        json_decref(v);
        if (!ok)
            return tga_error(TGA_ERR_FORMAT, "%s:%" PRIu64 ": expected {\"image\": NAME, \"row\": ROW}", path,
                             line_no);
    } else {
        char *end = line + strlen(line), *field = end;
        while (field > line && field[-1] != ' ' && field[-1] != '\t')
            field--;
        char *name_end = field;
        while (name_end > line && (name_end[-1] == ' ' || name_end[-1] == '\t'))
            name_end--;
        char *digits_end;
        errno = 0;
        long long value = strtoll(field, &digits_end, 10);
        if (name_end == line || field == end || *digits_end || errno || *field == '-' || *field == '+')
            return tga_error(TGA_ERR_FORMAT, "%s:%" PRIu64 ": expected \"IMAGE-NAME ROW\"", path, line_no);
        *name_end = '\0';
        *name = strdup(line);
        *row = value;
    }
    return *name ? TGA_OK : tga_error(TGA_ERR_NOMEM, "out of memory reading %s", path);
}

static tga_status index_add_line(name_index *x, const char *path, uint64_t line_no, char *line,
                                 bool json_lines, int64_t n_rows) {
    char *name = NULL;
    int64_t row = 0;
    TGA_TRY(parse_index_line(path, line_no, line, json_lines, &name, &row));
    tga_status st = TGA_OK;
    if (row < 0 || row >= n_rows)
        st = tga_error(TGA_ERR_FORMAT,
                       "%s:%" PRIu64 ": row %" PRId64 " is outside the %" PRId64 " rows of the features",
                       path, line_no, row, n_rows);
    else if (2 * (x->count + 1) > x->cap)
        st = index_grow(x);
    index_slot *slot = st == TGA_OK ? index_slot_of(x, name) : NULL;
    if (slot && slot->name)
        st = tga_error(TGA_ERR_FORMAT, "%s:%" PRIu64 ": image '%.200s' is listed twice", path, line_no, name);
    if (st != TGA_OK) {
        free(name);
        return st;
    }
    *slot = (index_slot){name, row};
    x->count++;
    return TGA_OK;
}

static tga_status index_load(const char *path, int64_t n_rows, name_index *x) {
    FILE *f = fopen(path, "rb");
    if (!f) return tga_error(TGA_ERR_IO, "cannot open the feature index %s: %s", path, strerror(errno));
    size_t len = strlen(path);
    bool json_lines = (len > 6 && strcmp(path + len - 6, ".jsonl") == 0) ||
                      (len > 5 && strcmp(path + len - 5, ".json") == 0);
    char *line = NULL;
    size_t cap = 0;
    tga_status st = TGA_OK;
    uint64_t line_no = 0;
    for (ssize_t n; st == TGA_OK && (n = getline(&line, &cap, f)) >= 0;) {
        line_no++;
        while (n > 0 &&
               (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
            line[--n] = '\0';
        if (n > 0) st = index_add_line(x, path, line_no, line, json_lines, n_rows);
    }
    if (st == TGA_OK && ferror(f)) st = tga_error(TGA_ERR_IO, "%s: read failed: %s", path, strerror(errno));
    free(line);
    fclose(f);
    return st;
}

/* ---- feature sources ---------------------------------------------------------------------------- */

typedef struct {
    const char *path;       /* the folder, or the [N, P, Dv] file; NULL: no features given */
    const char *index_path; /* with a [N, P, Dv] file */
    FILE *array;            /* the [N, P, Dv] file when there is an index */
    tga_npy_header header;
    name_index index;
} feature_source;

static tga_status features_open(const tga_prep_options *o, feature_source *fs) {
    memset(fs, 0, sizeof *fs);
    fs->path = o->features;
    fs->index_path = o->feature_index;
    if (!o->feature_index) return TGA_OK;
    if (!o->features) return tga_error(TGA_ERR_USAGE, "--feature-index needs --features FILE.npy");
    TGA_TRY(tga_npy_open(o->features, &fs->array, &fs->header));
    if (fs->header.ndim != 3 || fs->header.shape[1] < 1 || fs->header.shape[2] < 1)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: expected a [N, P, Dv] array of image features (with --feature-index), "
                         "got %d dimensions",
                         o->features, fs->header.ndim);
    return index_load(o->feature_index, fs->header.shape[0], &fs->index);
}

static void features_close(feature_source *fs) {
    if (fs->array) fclose(fs->array);
    index_free(&fs->index);
    memset(fs, 0, sizeof *fs);
}

/* DIR/NAME with NAME's extension (of its last path component) replaced by .npy. */
static bool feature_file_path(const char *dir, const char *image, char *path, size_t size) {
    const char *slash = strrchr(image, '/'), *dot = strrchr(image, '.');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - image) : strlen(image);
    int n = snprintf(path, size, "%s/%.*s.npy", dir, (int)stem, image);
    return n > 0 && (size_t)n < size;
}

static bool per_image_shape(const tga_npy_header *h, int64_t *P, int64_t *Dv) {
    if (h->ndim == 2) {
        *P = h->shape[0];
        *Dv = h->shape[1];
    } else if (h->ndim == 3 && h->shape[0] == 1) {
        *P = h->shape[1];
        *Dv = h->shape[2];
    } else {
        return false;
    }
    return *P > 0 && *Dv > 0;
}

/* One image's P x Dv features as float32. Failures are about the record (TGA_ERR_FORMAT). */
static tga_status read_image(const feature_source *fs, const tga_shard_layout *layout, const char *image,
                             float *out) {
    int64_t P = layout->patches_per_image, Dv = layout->feature_dim;
    if (fs->array) {
        int64_t row = index_find(&fs->index, image);
        if (row < 0)
            return tga_error(TGA_ERR_FORMAT, "'%.200s' is not in the feature index %s", image,
                             fs->index_path);
        if (fs->header.shape[1] != P || fs->header.shape[2] != Dv)
            return tga_error(TGA_ERR_INTERNAL, "%s: the layout disagrees with the array", fs->path);
        return tga_npy_read_rows_f32(fs->array, fs->path, &fs->header, row, 1, out);
    }
    char path[PATH_CAP];
    if (!feature_file_path(fs->path, image, path, sizeof path))
        return tga_error(TGA_ERR_FORMAT, "the feature path of '%.200s' is too long", image);
    FILE *f;
    tga_npy_header h;
    TGA_TRY(tga_npy_open(path, &f, &h));
    int64_t fP, fDv;
    tga_status st = TGA_OK;
    if (!per_image_shape(&h, &fP, &fDv) || fP != P || fDv != Dv)
        st = tga_error(TGA_ERR_FORMAT,
                       "%s: expected [%" PRId64 ", %" PRId64 "] (or [1, %" PRId64 ", %" PRId64
                       "]) features, got %d dimensions [%" PRId64 ", %" PRId64 ", ...]",
                       path, P, Dv, P, Dv, h.ndim, h.shape[0], h.shape[1]);
    if (st == TGA_OK) st = tga_npy_read_rows_f32(f, path, &h, 0, h.shape[0], out);
    fclose(f);
    return st;
}

/* P and Dv from the first record with a non-tox image whose feature file opens (per-image files). */
static tga_status probe_per_image_layout(const tga_prep_options *o, const tga_record_options *rules,
                                         const feature_source *fs, int64_t *P, int64_t *Dv, bool *found) {
    *found = false;
    tga_record_reader *reader;
    TGA_TRY(tga_record_reader_open(o->records, &reader));
    tga_status st = TGA_OK;
    for (bool done = false; st == TGA_OK && !*found;) {
        tga_raw_record raw;
        st = tga_record_reader_next(reader, &raw, &done);
        if (st != TGA_OK || done) break;
        tga_record rec;
        if (tga_record_parse(o->records, &raw, rules, &rec) != TGA_OK) {
            tga_error_clear();
            continue;
        }
        char path[PATH_CAP];
        FILE *f;
        tga_npy_header h;
        if (rec.n_images > 0 && !rec.tox && feature_file_path(fs->path, rec.images[0], path, sizeof path)) {
            if (tga_npy_open(path, &f, &h) == TGA_OK) {
                *found = per_image_shape(&h, P, Dv);
                fclose(f);
            }
            tga_error_clear();
        }
        tga_record_free(&rec);
    }
    tga_record_reader_close(reader);
    return st;
}

/* The shard layout: from the options, checked against (or completed from) the features. */
static tga_status resolve_layout(const tga_prep_options *o, const tga_record_options *rules,
                                 const feature_source *fs, tga_shard_layout *layout) {
    int64_t P = o->image_tokens, Dv = o->feature_dim, fP = 0, fDv = 0;
    bool found = false;
    if (fs->array) {
        fP = fs->header.shape[1];
        fDv = fs->header.shape[2];
        found = true;
    } else if (fs->path && (P == 0 || Dv == 0)) {
        TGA_TRY(probe_per_image_layout(o, rules, fs, &fP, &fDv, &found));
    }
    if (found && ((P && P != fP) || (Dv && Dv != fDv)))
        return tga_error(TGA_ERR_FORMAT,
                         "%s has image features of P = %" PRId64 " x Dv = %" PRId64 ", but P = %" PRId64
                         " x Dv = %" PRId64 " was asked for (--image-tokens, "
                         "--feature-dim or the config's data.image_tokens / projector.vision_dim)",
                         fs->array ? fs->path : "the first feature file", fP, fDv, P ? P : fP, Dv ? Dv : fDv);
    if (found) {
        P = fP;
        Dv = fDv;
    }
    if ((P == 0) != (Dv == 0))
        return tga_error(TGA_ERR_USAGE,
                         "no feature file to take %s from: pass --image-tokens and --feature-dim",
                         P == 0 ? "P" : "Dv");
    if ((uint64_t)P * (uint64_t)Dv * tga_shard_dtype_size(o->feature_dtype) > (1u << 30))
        return tga_error(TGA_ERR_FORMAT,
                         "P = %" PRId64 " x Dv = %" PRId64 " features per image are over 1 GiB", P, Dv);
    *layout = (tga_shard_layout){(int32_t)P, (int32_t)Dv, o->feature_dtype};
    return TGA_OK;
}

/* ---- progress --------------------------------------------------------------------------------- */

typedef struct {
    bool enabled, terminal;
    double start, last_draw;
} progress;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void format_duration(double seconds, char *buf, size_t size) {
    long s = seconds > 0 && seconds < 1e9 ? (long)(seconds + 0.5) : 0;
    snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
}

/* Rank 0's position in the records file stands for everyone's: ranks meet after every round of
 * world x S records, so none runs far ahead. */
static void progress_draw(progress *p, uint64_t offset, uint64_t size, uint64_t records, bool last) {
    double now = now_seconds();
    if (!p->enabled || (!last && (!p->terminal || now - p->last_draw < 0.25))) return;
    p->last_draw = now;
    double elapsed = now - p->start, fraction = size ? (double)offset / (double)size : 1.0;
    double rate = elapsed > 0 ? (double)records / elapsed : 0;
    char spent[32], eta[32];
    format_duration(elapsed, spent, sizeof spent);
    format_duration(fraction > 0 ? elapsed * (1 - fraction) / fraction : 0, eta, sizeof eta);
    if (last)
        fprintf(stderr, "%sprep: %" PRIu64 " records read in %s (%.0f records/s)\n",
                p->terminal ? "\r\033[K" : "", records, spent, rate);
    else
        fprintf(stderr, "\r\033[Kprep: %5.1f%%  %" PRIu64 " records  %.0f records/s  ETA %s", 100 * fraction,
                records, rate, eta);
    fflush(stderr);
}

/* ---- the output folder ------------------------------------------------------------------------ */

static tga_status make_dirs(const char *dir) {
    char path[PATH_CAP];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return tga_error(TGA_ERR_USAGE, "--out %.100s...: the path is too long", dir);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return tga_error(TGA_ERR_IO, "cannot create the output folder %s: %s", path, strerror(errno));
        *p = saved;
        if (saved == '\0') return TGA_OK;
    }
}

/* shard-DIGITS.tgas or shard-DIGITS.tgas.tmp: what a prep writes. */
static bool is_prep_output(const char *name) {
    if (strcmp(name, "prep.json") == 0 || strcmp(name, "prep.json.tmp") == 0) return true;
    if (strncmp(name, "shard-", 6) != 0) return false;
    const char *s = name + 6;
    while (*s >= '0' && *s <= '9')
        s++;
    return s > name + 6 && (strcmp(s, ".tgas") == 0 || strcmp(s, ".tgas.tmp") == 0);
}

static tga_status clear_previous_output(const char *dir) {
    TGA_TRY(make_dirs(dir));
    DIR *d = opendir(dir);
    if (!d) return tga_error(TGA_ERR_IO, "cannot list the output folder %s: %s", dir, strerror(errno));
    tga_status st = TGA_OK;
    for (struct dirent *e; st == TGA_OK && (e = readdir(d)) != NULL;) {
        if (!is_prep_output(e->d_name)) continue;
        char path[PATH_CAP];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0 && errno != ENOENT)
            st = tga_error(TGA_ERR_IO, "cannot remove the earlier prep output %s: %s", path, strerror(errno));
    }
    closedir(d);
    return st;
}

static void shard_name(int64_t k, char *buf, size_t size) {
    snprintf(buf, size, "shard-%05" PRId64 ".tgas", k);
}

/* ---- one rank's work -------------------------------------------------------------------------- */

typedef struct {
    const tga_prep_options *o;
    int rank, world;
    tga_tokenizer *tok;
    tga_template *tpl;
    feature_source features;
    tga_record_options record; /* the options' record rules, R required only if the template shows it */
    tga_shard_layout layout;
    tga_record_reader *reader;
    tga_shard_writer *writer;
    int64_t shard; /* the shard being written; -1 before the first */
    int64_t (*stats)[N_STATS];
    size_t stats_cap;
    uint64_t n_records;
    tga_rendered rendered;
    float *feature_f32;
    void *feature_out;
    size_t feature_cap; /* values */
    uint64_t bad_shown;
    progress bar;
} prep_state;

static tga_status stats_row(prep_state *p, int64_t k, int64_t **row) {
    if ((size_t)k >= p->stats_cap) {
        size_t cap = p->stats_cap ? 2 * p->stats_cap : 64;
        while (cap <= (size_t)k)
            cap *= 2;
        int64_t(*grown)[N_STATS] = realloc(p->stats, cap * sizeof *grown);
        if (!grown) return tga_error(TGA_ERR_NOMEM, "out of memory for the shard statistics");
        memset(grown + p->stats_cap, 0, (cap - p->stats_cap) * sizeof *grown);
        p->stats = grown;
        p->stats_cap = cap;
    }
    *row = p->stats[k];
    return TGA_OK;
}

static tga_status open_shard(prep_state *p, int64_t k) {
    if (p->writer) {
        tga_shard_writer *w = p->writer;
        p->writer = NULL;
        TGA_TRY(tga_shard_writer_close(w));
    }
    if (k >= MAX_SHARDS)
        return tga_error(TGA_ERR_USAGE, "more than %d shards: raise --samples-per-shard", MAX_SHARDS);
    char name[64], path[PATH_CAP];
    shard_name(k, name, sizeof name);
    if (snprintf(path, sizeof path, "%s/%s", p->o->out_dir, name) >= (int)sizeof path)
        return tga_error(TGA_ERR_USAGE, "--out %.100s...: the path is too long", p->o->out_dir);
    p->shard = k;
    return tga_shard_writer_open(&p->writer, path, &p->layout);
}

static tga_status grow_features(prep_state *p, size_t values) {
    if (values <= p->feature_cap) return TGA_OK;
    float *f32 = realloc(p->feature_f32, values * sizeof *f32);
    if (f32) p->feature_f32 = f32;
    void *out = f32 ? realloc(p->feature_out, values * tga_shard_dtype_size(p->layout.feature_dtype)) : NULL;
    if (!out) return tga_error(TGA_ERR_NOMEM, "out of memory for %zu feature values", values);
    p->feature_out = out;
    p->feature_cap = values;
    return TGA_OK;
}

/* float32 -> the shard's dtype; false at the first value that is not finite there. */
static bool convert_features(prep_state *p, size_t values, size_t *bad_index) {
    bool half = p->layout.feature_dtype == TGA_SHARD_F16;
    for (size_t i = 0; i < values; i++) {
        float v = p->feature_f32[i];
        uint16_t h = half ? float_to_half(v) : 0;
        if (!isfinite(v) || (half && (h & 0x7c00u) == 0x7c00u)) {
            *bad_index = i;
            return false;
        }
        if (half)
            ((uint16_t *)p->feature_out)[i] = h;
        else
            ((float *)p->feature_out)[i] = v;
    }
    return true;
}

/* Whether the record's images can get features at all (before any work is spent on it). */
static tga_status check_images(const prep_state *p, const tga_record *rec) {
    if (rec->n_images == 0) return TGA_OK;
    if (p->layout.patches_per_image == 0)
        return tga_record_error(p->o->records, rec, "image", "has images, but %s",
                                p->features.path ? "no feature file was found to take P and Dv from (pass "
                                                   "--image-tokens and --feature-dim)"
                                                 : "no --features were given");
    if (!p->features.path && !rec->tox)
        return tga_record_error(p->o->records, rec, "image", "has images, but no --features were given");
    return TGA_OK;
}

static tga_status load_features(prep_state *p, const tga_record *rec) {
    const char *file = p->o->records;
    if (rec->n_images == 0) return TGA_OK;
    size_t per_image = (size_t)p->layout.patches_per_image * (size_t)p->layout.feature_dim;
    TGA_TRY(grow_features(p, rec->n_images * per_image));
    for (size_t i = 0; i < rec->n_images && !rec->tox; i++) {
        char field[48];
        snprintf(field, sizeof field, rec->n_images > 1 ? "image[%zu]" : "image", i);
        tga_status st = read_image(&p->features, &p->layout, rec->images[i], p->feature_f32 + i * per_image);
        if (st == TGA_ERR_NOMEM || st == TGA_ERR_INTERNAL) return st;
        if (st != TGA_OK) {
            char message[2048];
            snprintf(message, sizeof message, "%s", tga_error_message());
            tga_error_clear();
            return tga_record_error(file, rec, field, "%s", message);
        }
    }
    if (rec->tox) memset(p->feature_f32, 0, rec->n_images * per_image * sizeof *p->feature_f32);
    size_t bad_index = 0;
    if (!convert_features(p, rec->n_images * per_image, &bad_index))
        return tga_record_error(file, rec, "image", "feature %zu of image %zu (patch %zu, dim %zu) is %g: %s",
                                bad_index % per_image, bad_index / per_image,
                                bad_index % per_image / (size_t)p->layout.feature_dim,
                                bad_index % (size_t)p->layout.feature_dim, p->feature_f32[bad_index],
                                isfinite(p->feature_f32[bad_index])
                                    ? "outside float16's range (use --feature-dtype f32)"
                                    : "not finite");
    return TGA_OK;
}

static tga_status render_record(prep_state *p, const tga_record *rec) {
    tga_conversation conv = tga_record_conversation(rec);
    tga_status st =
        tga_template_render(p->tpl, &conv, p->layout.patches_per_image, p->o->max_len, &p->rendered);
    if (st != TGA_ERR_FORMAT) return st;
    char message[2048];
    snprintf(message, sizeof message, "%s", tga_error_message());
    tga_error_clear();
    return tga_record_error(p->o->records, rec, "conversations", "template %s: %s", tga_template_name(p->tpl),
                            message);
}

static void count_sample(int64_t *row, const tga_rendered *r, const tga_record *rec) {
    row[ST_SAMPLES]++;
    row[ST_TOKENS] += r->n_tokens;
    row[ST_SUPERVISED] += r->n_supervised;
    row[ST_IMAGES] += r->n_images;
    row[ST_TOX] += rec->tox;
    row[ST_TEXT_ONLY] += r->n_images == 0;
    row[ST_TRUNCATED] += r->truncated;
}

/* One record of this rank's shard: parse, render, read features, append. Bad-record problems are
 * TGA_ERR_FORMAT with a message naming the record. */
static tga_status add_record(prep_state *p, const tga_raw_record *raw, int64_t *row) {
    tga_record rec;
    TGA_TRY(tga_record_parse(p->o->records, raw, &p->record, &rec));
    tga_status st = check_images(p, &rec);
    if (st == TGA_OK) st = render_record(p, &rec);
    if (st == TGA_OK && !p->rendered.fits) {
        row[ST_TOO_LONG]++;
        tga_record_free(&rec);
        return TGA_OK;
    }
    if (st == TGA_OK) st = load_features(p, &rec);
    if (st == TGA_OK) {
        const tga_rendered *r = &p->rendered;
        tga_shard_sample s = {.id = rec.id,
                              .record = rec.number,
                              .n_tokens = r->n_tokens,
                              .input_ids = r->input_ids,
                              .labels = r->labels,
                              .n_images = r->n_images,
                              .images = r->images,
                              .features = r->n_images ? p->feature_out : NULL,
                              .retrieved = r->retrieved,
                              .tox = rec.tox,
                              .n_caption_tokens = r->n_caption_tokens,
                              .cap_ids = r->cap_ids,
                              .caption = r->caption};
        st = tga_shard_writer_add(p->writer, &s);
        /* the renderer and the checks above keep every invariant: a rejection here is a bug */
        if (st == TGA_ERR_FORMAT) st = tga_error_replace(TGA_ERR_INTERNAL, "%s", tga_error_message());
    }
    if (st == TGA_OK) count_sample(row, &p->rendered, &rec);
    tga_record_free(&rec);
    return st;
}

static tga_status handle_record(prep_state *p, const tga_raw_record *raw) {
    int64_t k = (int64_t)(raw->number / (uint64_t)p->o->samples_per_shard), *row;
    if (k != p->shard) TGA_TRY(open_shard(p, k));
    TGA_TRY(stats_row(p, k, &row));
    row[ST_RECORDS]++;
    tga_status st = add_record(p, raw, row);
    if (st != TGA_ERR_FORMAT || !p->o->skip_bad) return st;
    row[ST_BAD]++;
    if (p->bad_shown++ < BAD_RECORDS_SHOWN)
        TGA_WARN("skipped (--skip-bad): %s%s", tga_error_message(),
                 p->bad_shown == BAD_RECORDS_SHOWN ? " (further bad records are counted, not shown)" : "");
    tga_error_clear();
    return TGA_OK;
}

static tga_status another_rank_failed(void) {
    return tga_error(TGA_ERR_DIST, "stopped because another rank failed (its message is above)");
}

/* Stream every record; this rank handles those of its shards. Ranks meet after every round of
 * world x S records to stop together when one of them fails: a failure learnt there has been
 * agreed on already (*agreed), a local one has not. */
static tga_status read_records(prep_state *p, bool *agreed) {
    uint64_t round = (uint64_t)p->world * (uint64_t)p->o->samples_per_shard;
    tga_status st = TGA_OK;
    *agreed = false;
    for (bool done = false;;) {
        tga_raw_record raw;
        st = tga_record_reader_next(p->reader, &raw, &done);
        if (st != TGA_OK || done) break;
        if (raw.number > 0 && raw.number % round == 0) {
            int failed = 0;
            *agreed = true;
            TGA_TRY(tga_dist_any_failed(TGA_OK, &failed, "prep: a round of shards"));
            if (failed) return another_rank_failed();
            *agreed = false;
        }
        p->n_records = raw.number + 1;
        if ((int64_t)(raw.number / (uint64_t)p->o->samples_per_shard) % p->world == p->rank)
            st = handle_record(p, &raw);
        if (st != TGA_OK) break;
        progress_draw(&p->bar, tga_record_reader_offset(p->reader), tga_record_reader_size(p->reader),
                      p->n_records, false);
    }
    if (st == TGA_OK && p->writer) {
        tga_shard_writer *w = p->writer;
        p->writer = NULL;
        st = tga_shard_writer_close(w);
    }
    if (st == TGA_OK && p->n_records == 0)
        st = tga_error(TGA_ERR_FORMAT, "%s holds no records", p->o->records);
    return st;
}

/* ---- summary ---------------------------------------------------------------------------------- */

/* Rows for every shard (zero for the other ranks' shards), so that one sum over ranks gives each
 * shard's counts from the rank that wrote it. */
static tga_status stats_for_all_shards(prep_state *p, uint64_t n_shards) {
    int64_t *row;
    return n_shards > 0 ? stats_row(p, (int64_t)n_shards - 1, &row) : TGA_OK;
}

static void summarize(const prep_state *p, uint64_t n_shards, tga_prep_summary *s) {
    memset(s, 0, sizeof *s);
    s->records = p->n_records;
    s->shards = n_shards;
    s->image_tokens = p->layout.patches_per_image;
    s->feature_dim = p->layout.feature_dim;
    for (uint64_t k = 0; k < n_shards; k++) {
        const int64_t *row = p->stats[k];
        s->samples += (uint64_t)row[ST_SAMPLES];
        s->tokens += (uint64_t)row[ST_TOKENS];
        s->supervised += (uint64_t)row[ST_SUPERVISED];
        s->images += (uint64_t)row[ST_IMAGES];
        s->tox += (uint64_t)row[ST_TOX];
        s->text_only += (uint64_t)row[ST_TEXT_ONLY];
        s->truncated += (uint64_t)row[ST_TRUNCATED];
        s->too_long += (uint64_t)row[ST_TOO_LONG];
        s->bad += (uint64_t)row[ST_BAD];
    }
}

static const char *const stat_names[N_STATS] = {"records",  "samples",    "tokens",    "supervised_tokens",
                                                "images",   "tox",        "text_only", "truncated",
                                                "too_long", "bad_records"};

static int set_string(json_t *obj, const char *key, const char *value) {
    return json_object_set_new(obj, key, value ? json_string(value) : json_null());
}

static json_t *shard_list(const prep_state *p, uint64_t n_shards) {
    json_t *list = json_array();
    for (uint64_t k = 0; list && k < n_shards; k++) {
        json_t *entry = json_object();
        char name[64];
        shard_name((int64_t)k, name, sizeof name);
        int failed = !entry || set_string(entry, "file", name) ||
                     json_object_set_new(entry, "first_record",
                                         json_integer((json_int_t)(k * (uint64_t)p->o->samples_per_shard)));
        for (int i = 0; i < N_STATS && !failed; i++)
            failed = json_object_set_new(entry, stat_names[i], json_integer(p->stats[k][i]));
        if (failed || json_array_append_new(list, entry)) {
            json_decref(list);
            return NULL;
        }
    }
    return list;
}

/* prep.json: everything needed to know what the shards hold and how they were made; nothing that
 * depends on the number of ranks or the time, so reruns give the same bytes. */
static json_t *summary_json(const prep_state *p, const tga_prep_summary *s) {
    const tga_prep_options *o = p->o;
    json_t *root = json_object();
    int failed =
        !root || set_string(root, "format", "tga prep") ||
        json_object_set_new(root, "version", json_integer(1)) ||
        set_string(root, "records_file", o->records) || set_string(root, "features", o->features) ||
        set_string(root, "feature_index", o->feature_index) ||
        set_string(root, "template", tga_template_name(p->tpl)) ||
        set_string(root, "template_file", tga_template_source(p->tpl)) ||
        set_string(root, "tokenizer", o->tokenizer) ||
        set_string(root, "tokenizer_kind", tga_tokenizer_kind_name(p->tok)) ||
        json_object_set_new(root, "vocab_size", json_integer((json_int_t)tga_tokenizer_vocab_size(p->tok))) ||
        json_object_set_new(root, "max_len", json_integer(o->max_len)) ||
        json_object_set_new(root, "image_tokens", json_integer(s->image_tokens)) ||
        json_object_set_new(root, "feature_dim", json_integer(s->feature_dim)) ||
        set_string(root, "feature_dtype", o->feature_dtype == TGA_SHARD_F16 ? "float16" : "float32") ||
        json_object_set_new(root, "samples_per_shard", json_integer(o->samples_per_shard)) ||
        json_object_set_new(root, "tox_from_id", json_boolean(o->record.tox_from_id)) ||
        json_object_set_new(root, "halve_retrieved_equal_to_caption",
                            json_boolean(o->record.halve_retrieved_equal_to_caption)) ||
        json_object_set_new(root, "n_shards", json_integer((json_int_t)s->shards));
    const uint64_t totals[N_STATS] = {s->records, s->samples,   s->tokens,    s->supervised, s->images,
                                      s->tox,     s->text_only, s->truncated, s->too_long,   s->bad};
    for (int i = 0; i < N_STATS && !failed; i++)
        failed = json_object_set_new(root, stat_names[i], json_integer((json_int_t)totals[i]));
    json_t *list = failed ? NULL : shard_list(p, s->shards);
    if (failed || !list || json_object_set_new(root, "shards", list)) {
        json_decref(root);
        return NULL;
    }
    return root;
}

static tga_status write_summary(const prep_state *p, const tga_prep_summary *s) {
    json_t *root = summary_json(p, s);
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!text) return tga_error(TGA_ERR_NOMEM, "out of memory writing prep.json");
    char path[PATH_CAP];
    snprintf(path, sizeof path, "%s/prep.json", p->o->out_dir);
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps ends without a newline; its NUL becomes one */
    tga_status st = tga_file_write_atomic(path, text, len + 1);
    free(text);
    return st;
}

/* ---- the run ---------------------------------------------------------------------------------- */

static tga_status check_options(const tga_prep_options *o) {
    if (!o->records) return tga_error(TGA_ERR_USAGE, "--records FILE is required");
    if (!o->tokenizer) return tga_error(TGA_ERR_USAGE, "--tokenizer PATH is required");
    if (!o->template_name)
        return tga_error(TGA_ERR_USAGE, "--template NAME (or --config with data.template) is required");
    if (!o->out_dir || !*o->out_dir) return tga_error(TGA_ERR_USAGE, "--out DIR is required");
    if (o->max_len < 1 || o->max_len > (1 << 30))
        return tga_error(TGA_ERR_USAGE, "--max-len must be in [1, 2^30]");
    if (o->samples_per_shard < 1) return tga_error(TGA_ERR_USAGE, "--samples-per-shard must be at least 1");
    if (o->image_tokens < 0 || o->feature_dim < 0)
        return tga_error(TGA_ERR_USAGE, "--image-tokens and --feature-dim must not be negative");
    if (tga_shard_dtype_size(o->feature_dtype) == 0) return tga_error(TGA_ERR_USAGE, "unknown feature dtype");
    return TGA_OK;
}

static tga_status setup(prep_state *p) {
    const tga_prep_options *o = p->o;
    TGA_TRY(check_options(o));
    TGA_TRY(tga_tokenizer_load(o->tokenizer, &p->tok));
    TGA_TRY(tga_template_load(o->template_name, p->tok, &p->tpl));
    p->record = o->record;
    p->record.require_retrieved &= tga_template_shows_retrieved(p->tpl);
    TGA_TRY(features_open(o, &p->features));
    TGA_TRY(resolve_layout(o, &p->record, &p->features, &p->layout));
    return tga_record_reader_open(o->records, &p->reader);
}

static void teardown(prep_state *p) {
    tga_shard_writer_discard(p->writer);
    tga_record_reader_close(p->reader);
    features_close(&p->features);
    tga_template_free(p->tpl);
    tga_tokenizer_free(p->tok);
    tga_rendered_free(&p->rendered);
    free(p->stats);
    free(p->feature_f32);
    free(p->feature_out);
}

/* Every rank passes through each agreement point in the same order, so a local failure never
 * leaves another rank waiting in a collective. */
static tga_status agree(tga_status local, const char *what) {
    int failed = 0;
    TGA_TRY(tga_dist_any_failed(local, &failed, what));
    if (local != TGA_OK) return local;
    return failed ? another_rank_failed() : TGA_OK;
}

static tga_status run(prep_state *p, tga_prep_summary *summary) {
    TGA_TRY(agree(setup(p), "prep: setup"));
    TGA_TRY(agree(p->rank == 0 ? clear_previous_output(p->o->out_dir) : TGA_OK, "prep: output folder"));
    p->bar = (progress){.enabled = p->o->progress && p->rank == 0,
                        .terminal = isatty(STDERR_FILENO) == 1,
                        .start = now_seconds()};
    bool agreed;
    tga_status st = read_records(p, &agreed);
    if (agreed) return st;
    TGA_TRY(agree(st, "prep: records"));
    uint64_t size = tga_record_reader_size(p->reader);
    progress_draw(&p->bar, size, size, p->n_records, true);
    uint64_t n_shards =
        (p->n_records + (uint64_t)p->o->samples_per_shard - 1) / (uint64_t)p->o->samples_per_shard;
    TGA_TRY(agree(stats_for_all_shards(p, n_shards), "prep: statistics"));
    TGA_TRY(tga_dist_sum_i64(&p->stats[0][0], n_shards * N_STATS, "prep: shard statistics"));
    summarize(p, n_shards, summary);
    return agree(p->rank == 0 ? write_summary(p, summary) : TGA_OK, "prep: prep.json");
}

tga_status tga_prep_run(const tga_prep_options *o, tga_prep_summary *summary) {
    if (!o || !summary) return tga_error(TGA_ERR_INTERNAL, "tga_prep_run: NULL argument");
    prep_state p = {.o = o, .rank = tga_dist_rank(), .world = tga_dist_world(), .shard = -1};
    tga_rendered_init(&p.rendered);
    tga_status st = run(&p, summary);
    teardown(&p);
    return st;
}
