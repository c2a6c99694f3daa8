/* LLaVA-style records: a streaming reader that finds each record's bytes (JSON Lines or a JSON
 * array), and a parser (jansson) that validates one record. See records.h. */
#define _POSIX_C_SOURCE 200809L /* fseeko, strdup */

#include "trainer/records.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "trainer/shard.h"

#define READ_CHUNK (1u << 20)

struct tga_record_reader {
    FILE *f;
    char *path;
    char *buf;
    size_t cap, start, end; /* buf[start, end): read from the file, not yet consumed */
    uint64_t buf_offset;    /* file offset of buf[0] */
    uint64_t line;          /* line of buf[start] */
    uint64_t size;
    uint64_t next_number;
    bool eof, started, array, closed, finished; /* closed: the array's ']' was read */
};

/* ---- reading bytes ---------------------------------------------------------------------------- */

/* Read more of the file after buf[start, end) (moved to the front first); *got = false at EOF. */
static tga_status fill(tga_record_reader *r, bool *got) {
    *got = false;
    if (r->eof) return TGA_OK;
    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->buf_offset += r->start;
        r->end -= r->start;
        r->start = 0;
    }
    if (r->end == r->cap) {
        if (r->cap >= (size_t)TGA_RECORD_MAX_BYTES + READ_CHUNK)
            return tga_error(TGA_ERR_FORMAT, "%s:%" PRIu64 ": record %" PRIu64 " is larger than %u MiB",
                             r->path, r->line, r->next_number, TGA_RECORD_MAX_BYTES >> 20);
        char *grown = realloc(r->buf, 2 * r->cap);
        if (!grown) return tga_error(TGA_ERR_NOMEM, "%s: out of memory reading a record", r->path);
        r->buf = grown;
        r->cap *= 2;
    }
    size_t n = fread(r->buf + r->end, 1, r->cap - r->end, r->f);
    if (n == 0) {
        if (ferror(r->f)) return tga_error(TGA_ERR_IO, "%s: read failed: %s", r->path, strerror(errno));
        r->eof = true;
        return TGA_OK;
    }
    r->end += n;
    *got = true;
    return TGA_OK;
}

/* Make buf[start + k] readable; false at the end of the file. */
static tga_status have_byte(tga_record_reader *r, size_t k, bool *have) {
    *have = true;
    while (r->start + k >= r->end) {
        bool got;
        TGA_TRY(fill(r, &got));
        if (!got) {
            *have = false;
            return TGA_OK;
        }
    }
    return TGA_OK;
}

static void consume(tga_record_reader *r, size_t n) {
    for (const char *p = r->buf + r->start, *end = p + n; (p = memchr(p, '\n', (size_t)(end - p))) != NULL;
         p++)
        r->line++;
    r->start += n;
}

static bool is_json_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

/* Skip white space; *have = false when the file ends first. */
static tga_status skip_space(tga_record_reader *r, bool *have) {
    for (;;) {
        TGA_TRY(have_byte(r, 0, have));
        if (!*have || !is_json_space(r->buf[r->start])) return TGA_OK;
        consume(r, 1);
    }
}

/* ---- opening, format detection ------------------------------------------------------------------ */

tga_status tga_record_reader_open(const char *path, tga_record_reader **out) {
    *out = NULL;
    if (!path) return tga_error(TGA_ERR_INTERNAL, "tga_record_reader_open: NULL path");
    tga_record_reader *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(path)) || !(r->buf = malloc(READ_CHUNK))) {
        tga_record_reader_close(r);
        return tga_error(TGA_ERR_NOMEM, "out of memory opening %s", path);
    }
    r->cap = READ_CHUNK;
    r->line = 1;
    r->f = fopen(path, "rb");
    struct stat st;
    if (!r->f || fstat(fileno(r->f), &st) != 0) {
        tga_status status =
            tga_error(TGA_ERR_IO, "cannot open the records file %s: %s", path, strerror(errno));
        tga_record_reader_close(r);
        return status;
    }
    r->size = (uint64_t)st.st_size;
    *out = r;
    return TGA_OK;
}

/* The first byte after an optional UTF-8 byte order mark and white space decides the format. */
static tga_status detect_format(tga_record_reader *r) {
    bool have;
    r->started = true;
    TGA_TRY(have_byte(r, 2, &have));
    if (have && memcmp(r->buf + r->start, "\xEF\xBB\xBF", 3) == 0) consume(r, 3);
    TGA_TRY(skip_space(r, &have));
    if (!have) {
        r->finished = true;
        return TGA_OK;
    }
    char first = r->buf[r->start];
    if (first != '[' && first != '{')
        return tga_error(TGA_ERR_FORMAT,
                         "%s:%" PRIu64 ": expected a JSON array of records ('[') or JSON Lines (one object "
                         "per line, '{'), found byte 0x%02x",
                         r->path, r->line, (unsigned char)first);
    r->array = first == '[';
    if (r->array) consume(r, 1);
    return TGA_OK;
}

/* ---- JSON Lines ------------------------------------------------------------------------------- */

static tga_status next_line(tga_record_reader *r, tga_raw_record *out, bool *done) {
    for (;;) {
        size_t k = 0;
        bool newline = false;
        for (;;) {
            const char *nl = memchr(r->buf + r->start + k, '\n', r->end - r->start - k);
            if (nl) {
                k = (size_t)(nl - (r->buf + r->start));
                newline = true;
                break;
            }
            k = r->end - r->start;
            bool got;
            TGA_TRY(fill(r, &got));
            if (!got) break;
        }
        if (k == 0 && !newline) {
            *done = true;
            return TGA_OK;
        }
        const char *bytes = r->buf + r->start;
        uint64_t line = r->line;
        consume(r, k + newline);
        size_t len = k;
        while (len > 0 && is_json_space(bytes[len - 1]))
            len--;
        size_t lead = 0;
        while (lead < len && is_json_space(bytes[lead]))
            lead++;
        if (lead == len) continue; /* a blank line is not a record */
        *out = (tga_raw_record){.bytes = bytes, .len = len, .number = r->next_number++, .line = line};
        return TGA_OK;
    }
}

/* ---- JSON array ------------------------------------------------------------------------------- */

static tga_status array_error(const tga_record_reader *r, const char *what) {
    return tga_error(TGA_ERR_FORMAT, "%s:%" PRIu64 ": broken JSON array of records at record %" PRIu64 ": %s",
                     r->path, r->line, r->next_number, what);
}

/* The length of the element at buf[start]: up to a ',' or ']' outside strings and brackets. */
static tga_status element_length(tga_record_reader *r, size_t *length) {
    int64_t depth = 0;
    bool in_string = false, escape = false;
    for (size_t k = 0;; k++) {
        bool have;
        TGA_TRY(have_byte(r, k, &have));
        if (!have)
            return array_error(r, "the file ends inside the array (a string or a bracket is not closed)");
        char ch = r->buf[r->start + k];
        if (in_string) {
            if (escape)
                escape = false;
            else if (ch == '\\')
                escape = true;
            else if (ch == '"')
                in_string = false;
        } else if (ch == '"') {
            in_string = true;
        } else if (ch == '{' || ch == '[') {
            depth++;
        } else if ((ch == '}' || ch == ']') && depth > 0) {
            depth--;
        } else if (ch == ',' || ch == ']') {
            if (depth == 0) {
                *length = k;
                return TGA_OK;
            }
        } else if (ch == '}') {
            return array_error(r, "a '}' closes nothing");
        }
        if (k >= TGA_RECORD_MAX_BYTES)
            return array_error(r, "the record is larger than the record size limit");
    }
}

/* After the closing ']' only white space may follow. */
static tga_status finish_array(tga_record_reader *r) {
    bool have;
    TGA_TRY(skip_space(r, &have));
    if (have) return array_error(r, "text follows the closing ']'");
    r->finished = true;
    return TGA_OK;
}

static tga_status next_element(tga_record_reader *r, tga_raw_record *out, bool *done) {
    bool have;
    TGA_TRY(skip_space(r, &have));
    if (!have) return array_error(r, "the file ends before the closing ']'");
    if (r->next_number == 0 && r->buf[r->start] == ']') {
        consume(r, 1);
        TGA_TRY(finish_array(r));
        *done = true;
        return TGA_OK;
    }
    size_t k = 0;
    TGA_TRY(element_length(r, &k));
    size_t len = k;
    while (len > 0 && is_json_space(r->buf[r->start + len - 1]))
        len--;
    if (len == 0) return array_error(r, "a ',' or ']' where a record should be");
    *out =
        (tga_raw_record){.bytes = r->buf + r->start, .len = len, .number = r->next_number++, .line = r->line};
    r->closed = r->buf[r->start + k] == ']';
    consume(r, k + 1);
    return TGA_OK;
}

tga_status tga_record_reader_next(tga_record_reader *r, tga_raw_record *out, bool *done) {
    *done = false;
    memset(out, 0, sizeof *out);
    if (!r->started) TGA_TRY(detect_format(r));
    if (r->closed && !r->finished) TGA_TRY(finish_array(r));
    if (r->finished) {
        *done = true;
        return TGA_OK;
    }
    return r->array ? next_element(r, out, done) : next_line(r, out, done);
}

uint64_t tga_record_reader_offset(const tga_record_reader *r) { return r->buf_offset + r->start; }
uint64_t tga_record_reader_size(const tga_record_reader *r) { return r->size; }
const char *tga_record_reader_path(const tga_record_reader *r) { return r->path; }

void tga_record_reader_close(tga_record_reader *r) {
    if (!r) return;
    if (r->f) fclose(r->f);
    free(r->buf);
    free(r->path);
    free(r);
}

/* ---- parsing one record ----------------------------------------------------------------------- */

void tga_record_options_init(tga_record_options *o) {
    *o = (tga_record_options){.tox_from_id = false,
                              .halve_retrieved_equal_to_caption = true,
                              .require_caption = true,
                              .require_retrieved = true};
}

typedef struct {
    const char *file;
    const tga_raw_record *raw;
    const char *id; /* NULL until the id is known to be printable */
} record_ctx;

static tga_status vbad(const char *file, uint64_t line, uint64_t number, const char *record_id,
                       const char *field, const char *fmt, va_list ap) {
    char what[1024];
    vsnprintf(what, sizeof what, fmt, ap);
    char id[160] = "";
    if (record_id) snprintf(id, sizeof id, " (id '%.100s')", record_id);
    char where[160] = "";
    if (field) snprintf(where, sizeof where, ": field '%.120s'", field);
    return tga_error(TGA_ERR_FORMAT, "%s:%" PRIu64 ": record %" PRIu64 "%s%s: %s", file, line, number, id,
                     where, what);
}

static tga_status bad(const record_ctx *c, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static tga_status bad(const record_ctx *c, const char *field, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    tga_status st = vbad(c->file, c->raw->line, c->raw->number, c->id, field, fmt, ap);
    va_end(ap);
    return st;
}

tga_status tga_record_error(const char *file, const tga_record *r, const char *field, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    tga_status st = vbad(file, r->line, r->number, r->id, field, fmt, ap);
    va_end(ap);
    return st;
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    default:
        return "null";
    }
}

static tga_status parse_id(const record_ctx *c, json_t *root, tga_record *out) {
    json_t *v = json_object_get(root, "id");
    char buf[64];
    if (!v || json_is_null(v)) {
        snprintf(buf, sizeof buf, "record-%" PRIu64, c->raw->number);
    } else if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t len = json_string_length(v);
        if (len == 0 || len > TGA_SHARD_MAX_ID_BYTES)
            return bad(c, "id", "expected 1 to %d bytes, got %zu", TGA_SHARD_MAX_ID_BYTES, len);
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                return bad(c, "id", "expected no control characters, found byte 0x%02x at byte %zu",
                           (unsigned char)s[i], i);
        out->id = strdup(s);
        return out->id ? TGA_OK : tga_error(TGA_ERR_NOMEM, "out of memory parsing a record");
    } else {
        return bad(c, "id", "expected a string or an integer, got %s", type_name(v));
    }
    out->id = strdup(buf);
    return out->id ? TGA_OK : tga_error(TGA_ERR_NOMEM, "out of memory parsing a record");
}

static tga_status parse_images(const record_ctx *c, json_t *root, tga_record *out) {
    json_t *v = json_object_get(root, "image");
    if (!v || json_is_null(v)) return TGA_OK;
    if (!json_is_string(v) && !json_is_array(v))
        return bad(c, "image", "expected a file name or a list of file names, got %s", type_name(v));
    size_t n = json_is_string(v) ? 1 : json_array_size(v);
    if (n == 0) return TGA_OK;
    out->images = calloc(n, sizeof *out->images);
    if (!out->images) return tga_error(TGA_ERR_NOMEM, "out of memory parsing a record");
    for (size_t i = 0; i < n; i++) {
        json_t *name = json_is_string(v) ? v : json_array_get(v, i);
        char field[48];
        snprintf(field, sizeof field, json_is_string(v) ? "image" : "image[%zu]", i);
        if (!json_is_string(name) || json_string_length(name) == 0)
            return bad(c, field, "expected a non-empty file name, got %s",
                       json_is_string(name) ? "an empty string" : type_name(name));
        out->images[out->n_images++] = json_string_value(name);
    }
    return TGA_OK;
}

static tga_status parse_turn(const record_ctx *c, json_t *entry, size_t i, tga_turn *turn) {
    char field[64];
    snprintf(field, sizeof field, "conversations[%zu]", i);
    if (!json_is_object(entry))
        return bad(c, field, "expected an object {from, value}, got %s", type_name(entry));
    json_t *from = json_object_get(entry, "from"), *value = json_object_get(entry, "value");
    snprintf(field, sizeof field, "conversations[%zu].from", i);
    if (!json_is_string(from))
        return bad(c, field, "expected \"human\" or \"gpt\", got %s", from ? type_name(from) : "nothing");
    const char *role = json_string_value(from);
    bool human = strcmp(role, "human") == 0;
    if (!human && strcmp(role, "gpt") != 0)
        return bad(c, field, "expected \"human\" or \"gpt\", got another string (%zu bytes)",
                   json_string_length(from));
    if (human != (i % 2 == 0))
        return bad(c, field, "expected \"%s\": turns alternate, human first", i % 2 == 0 ? "human" : "gpt");
    snprintf(field, sizeof field, "conversations[%zu].value", i);
    if (!json_is_string(value))
        return bad(c, field, "expected a string, got %s", value ? type_name(value) : "nothing");
    *turn = (tga_turn){human ? TGA_ROLE_USER : TGA_ROLE_ASSISTANT, json_string_value(value),
                       json_string_length(value)};
    return TGA_OK;
}

static tga_status check_markers(const record_ctx *c, const tga_record *out) {
    size_t markers = 0;
    for (size_t i = 0; i < out->n_turns; i++) {
        size_t here = tga_count_image_markers(out->turns[i].text, out->turns[i].len);
        char field[64];
        snprintf(field, sizeof field, "conversations[%zu].value", i);
        if (here && out->n_images == 0)
            return bad(c, field, "holds an <image> marker, but the record has no \"image\"");
        if (here && out->turns[i].role == TGA_ROLE_ASSISTANT)
            return bad(c, field, "an answer holds an <image> marker (images belong to human turns)");
        markers += here;
    }
    if (markers != out->n_images)
        return bad(c, "conversations", "expected one <image> marker per image (%zu), found %zu",
                   out->n_images, markers);
    return TGA_OK;
}

static tga_status parse_conversations(const record_ctx *c, json_t *root, tga_record *out) {
    json_t *v = json_object_get(root, "conversations");
    if (!json_is_array(v))
        return bad(c, "conversations", "expected a list of turns, got %s", v ? type_name(v) : "nothing");
    size_t n = json_array_size(v);
    if (n < 2 || n % 2 != 0)
        return bad(c, "conversations",
                   "expected human and gpt turns in pairs (an even number >= 2), got %zu turns", n);
    out->turns = calloc(n, sizeof *out->turns);
    if (!out->turns) return tga_error(TGA_ERR_NOMEM, "out of memory parsing a record");
    for (size_t i = 0; i < n; i++)
        TGA_TRY(parse_turn(c, json_array_get(v, i), i, &out->turns[out->n_turns++]));
    return check_markers(c, out);
}

static tga_status parse_text_field(const record_ctx *c, json_t *root, const char *key, bool required,
                                   const char **text, size_t *len) {
    json_t *v = json_object_get(root, key);
    if (v && !json_is_null(v) && !json_is_string(v))
        return bad(c, key, "expected a string, got %s", type_name(v));
    if (v && json_is_string(v)) {
        *text = json_string_value(v);
        *len = json_string_length(v);
    }
    if (required && (!*text || *len == 0))
        return bad(c, key, "expected a non-empty string (records with an image need it), got %s",
                   !v                ? "nothing"
                   : json_is_null(v) ? "null"
                                     : "an empty string");
    return TGA_OK;
}

static tga_status parse_tox(const record_ctx *c, json_t *root, const tga_record_options *o, tga_record *out) {
    json_t *v = json_object_get(root, "tox");
    if (v && !json_is_null(v)) {
        if (json_is_boolean(v))
            out->tox = json_is_true(v);
        else if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1))
            out->tox = json_integer_value(v) == 1;
        else
            return bad(c, "tox", "expected true, false, 0 or 1, got %s", type_name(v));
    }
    if (o->tox_from_id && strstr(out->id, "tox")) out->tox = true;
    return TGA_OK;
}

/* Upstream's _find_retrieved_caption: R == C -> R = C[:int(len(C)/2)], in code points. */
static void halve_if_equal(tga_record *out) {
    if (!out->retrieved || !out->caption || out->retrieved_len != out->caption_len ||
        memcmp(out->retrieved, out->caption, out->caption_len) != 0)
        return;
    size_t code_points = 0;
    for (size_t i = 0; i < out->caption_len; i++)
        code_points += ((unsigned char)out->caption[i] & 0xC0) != 0x80;
    size_t keep = code_points / 2, bytes = 0;
    for (size_t seen = 0; bytes < out->caption_len; bytes++) {
        if (((unsigned char)out->caption[bytes] & 0xC0) != 0x80 && seen++ == keep) break;
    }
    out->retrieved = out->caption;
    out->retrieved_len = bytes;
}

static tga_status parse_fields(record_ctx *c, json_t *root, const tga_record_options *o, tga_record *out) {
    if (!json_is_object(root)) return bad(c, NULL, "expected a JSON object, got %s", type_name(root));
    TGA_TRY(parse_id(c, root, out));
    c->id = out->id;
    TGA_TRY(parse_images(c, root, out));
    TGA_TRY(parse_conversations(c, root, out));
    bool image = out->n_images > 0;
    TGA_TRY(parse_text_field(c, root, "image_caption", image && o->require_caption, &out->caption,
                             &out->caption_len));
    TGA_TRY(parse_text_field(c, root, "retrieved_caption", image && o->require_retrieved, &out->retrieved,
                             &out->retrieved_len));
    TGA_TRY(parse_tox(c, root, o, out));
    if (o->halve_retrieved_equal_to_caption) halve_if_equal(out);
    return TGA_OK;
}

tga_status tga_record_parse(const char *file, const tga_raw_record *raw, const tga_record_options *o,
                            tga_record *out) {
    memset(out, 0, sizeof *out);
    if (!file || !raw || !o || (!raw->bytes && raw->len))
        return tga_error(TGA_ERR_INTERNAL, "tga_record_parse: NULL argument");
    record_ctx c = {.file = file, .raw = raw};
    json_error_t err;
    json_t *root = json_loadb(raw->bytes, raw->len, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        /* jansson quotes the input near the error: keep the message on one line */
        for (char *ch = err.text; *ch; ch++)
            if ((unsigned char)*ch < 0x20 || *ch == 0x7f) *ch = ' ';
        return bad(&c, NULL, "invalid JSON at line %" PRIu64 ", column %d: %s",
                   raw->line + (uint64_t)(err.line > 1 ? err.line - 1 : 0), err.column, err.text);
    }
    out->json = root;
    out->number = raw->number;
    out->line = raw->line;
    tga_status st = parse_fields(&c, root, o, out);
    if (st != TGA_OK) tga_record_free(out);
    return st;
}

void tga_record_free(tga_record *r) {
    if (!r) return;
    free(r->id);
    free(r->images);
    free(r->turns);
    json_decref((json_t *)r->json);
    memset(r, 0, sizeof *r);
}

tga_conversation tga_record_conversation(const tga_record *r) {
    return (tga_conversation){.turns = r->turns,
                              .n_turns = r->n_turns,
                              .n_images = r->n_images,
                              .retrieved = r->n_images ? r->retrieved : NULL,
                              .retrieved_len = r->n_images ? r->retrieved_len : 0,
                              .caption = r->n_images ? r->caption : NULL,
                              .caption_len = r->n_images ? r->caption_len : 0};
}
