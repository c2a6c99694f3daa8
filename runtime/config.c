/* Schema-driven YAML configuration: see config.h for the file shape and the error contract.
 *
 * Reading: a size limit, a first pass over libyaml's events that refuses deep nesting and many
 * anchors (libyaml is quadratic on both), then libyaml's document loader (it gives every node a
 * line) and a walk of exactly two levels, sections and keys, that never recurses. Every value,
 * from a file, a --set or a schema default, goes through apply_scalar, so all three are checked
 * identically. */
#include "runtime/config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

/* ---- small text helpers --------------------------------------------------------------------- */

typedef struct {
    const char *text; /* NUL-terminated */
    size_t length;    /* differs from strlen(text) when the value holds a NUL */
    bool quoted;      /* a quoted YAML scalar: text, never a number, a bool or null */
} cfg_scalar;

/* Quote `text` for a one-line message: control bytes escaped, long values cut at a UTF-8
 * character boundary. */
static void quote_for_message(const char *text, size_t length, char *buf, size_t size) {
    enum { SHOWN_MAX = 60 };
    size_t shown = length < SHOWN_MAX ? length : SHOWN_MAX;
    while (shown < length && shown > 0 && ((unsigned char)text[shown] & 0xC0) == 0x80)
        shown--;
    size_t used = (size_t)snprintf(buf, size, "\"");
    for (size_t i = 0; i < shown && used < size; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c == 0x7F || c == '"' || c == '\\')
            used += (size_t)snprintf(buf + used, size - used, c == '"' || c == '\\' ? "\\%c" : "\\x%02X", c);
        else
            used += (size_t)snprintf(buf + used, size - used, "%c", c);
    }
    if (used < size) snprintf(buf + used, size - used, "%s\"", shown < length ? "..." : "");
}

/* The shortest text that reads back as exactly `value`: "10000", "0.001", "1e-5", "1e9". */
static void format_double(double value, char *buf, size_t size) {
    char shortest[40], integral[40] = "";
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(shortest, sizeof shortest, "%.*g", precision, value);
        if (strtod(shortest, NULL) == value) break;
    }
    if (value == floor(value) && fabs(value) < 1e16) snprintf(integral, sizeof integral, "%.0f", value);
    const char *exponent = strchr(shortest, 'e');
    if (integral[0] && strlen(integral) <= strlen(shortest))
        snprintf(buf, size, "%s", integral);
    else if (exponent) /* "1e+09" -> "1e9" */
        snprintf(buf, size, "%.*se%d", (int)(exponent - shortest), shortest, atoi(exponent + 1));
    else
        snprintf(buf, size, "%s", shortest);
}

/* Names longer than this are never suggested, nor close to a schema name. */
enum { SUGGEST_NAME_MAX = 64 };

/* Optimal-string-alignment distance (a swap of two neighbours counts as one edit), for "did you
 * mean". */
static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > SUGGEST_NAME_MAX || lb > SUGGEST_NAME_MAX) return SIZE_MAX;
    unsigned short d[SUGGEST_NAME_MAX + 1][SUGGEST_NAME_MAX + 1];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (unsigned short)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (unsigned short)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            unsigned cost = a[i - 1] != b[j - 1];
            unsigned best = d[i - 1][j - 1] + cost;
            if (d[i - 1][j] + 1u < best) best = d[i - 1][j] + 1u;
            if (d[i][j - 1] + 1u < best) best = d[i][j - 1] + 1u;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1u < best)
                best = d[i - 2][j - 2] + 1u;
            d[i][j] = (unsigned short)best;
        }
    }
    return d[la][lb];
}

/* Tracks the closest candidate to a misspelt name; close means one edit for short names, two
 * for longer ones. */
typedef struct {
    const char *typed;
    const char *best;
    size_t best_length, best_distance;
} suggestion;

static void suggestion_consider(suggestion *s, const char *candidate, size_t candidate_length) {
    char name[SUGGEST_NAME_MAX + 1];
    if (candidate_length >= sizeof name) return;
    memcpy(name, candidate, candidate_length);
    name[candidate_length] = '\0';
    size_t distance = edit_distance(s->typed, name);
    size_t allowed = candidate_length <= 4 ? 1 : 2;
    if (distance <= allowed && distance < s->best_distance) {
        s->best = candidate;
        s->best_length = candidate_length;
        s->best_distance = distance;
    }
}

static void suggestion_format(const suggestion *s, char *buf, size_t size) {
    if (s->best)
        snprintf(buf, size, " (did you mean '%.*s'?)", (int)s->best_length, s->best);
    else if (size)
        buf[0] = '\0';
}

/* Decode one UTF-8 character of a NUL-terminated string; 0 when the bytes are not valid UTF-8
 * (overlong forms, surrogates and code points above U+10FFFF included, as libyaml's reader). */
static size_t utf8_decode(const unsigned char *s, uint32_t *code_point) {
    if (s[0] < 0x80) {
        *code_point = s[0];
        return 1;
    }
    size_t length = (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (length == 0) return 0;
    uint32_t value = s[0] & (0x7Fu >> length);
    for (size_t i = 1; i < length; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        value = (value << 6) | (s[i] & 0x3Fu);
    }
    static const uint32_t smallest[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (value < smallest[length] || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) return 0;
    *code_point = value;
    return length;
}

static bool is_valid_utf8(const char *text) {
    const unsigned char *p = (const unsigned char *)text;
    uint32_t code_point;
    for (size_t length; *p; p += length)
        if ((length = utf8_decode(p, &code_point)) == 0) return false;
    return true;
}

/* ---- layer sets ------------------------------------------------------------------------------ */

static bool layer_set_insert(tga_layer_set *set, int layer) {
    int position = 0;
    while (position < set->count && set->layers[position] < layer)
        position++;
    if (position < set->count && set->layers[position] == layer) return true;
    if (set->count == TGA_LAYER_SET_MAX) return false;
    memmove(&set->layers[position + 1], &set->layers[position],
            (size_t)(set->count - position) * sizeof set->layers[0]);
    set->layers[position] = layer;
    set->count++;
    return true;
}

static const char *skip_spaces(const char *p) {
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

static tga_status layer_set_error(const char *where, const char *text, const char *reason) {
    char quoted[96];
    quote_for_message(text, strlen(text), quoted, sizeof quoted);
    return tga_error(TGA_ERR_CONFIG,
                     "%s: bad layer set %s: %s (expected indices and ranges such as \"10-18\", \"0,4,8-12\" "
                     "or [10, 11, 12])",
                     where, quoted, reason);
}

/* Read a layer index at *p; on success advance *p past it. */
static bool parse_layer_index(const char **p, int *index, const char **reason) {
    if (**p == '-') {
        *reason = "layer indices are non-negative";
        return false;
    }
    if (**p < '0' || **p > '9') {
        *reason =
            **p == ',' || **p == ']' || **p == '\0' ? "an item is empty" : "an item is not a layer index";
        return false;
    }
    long value = 0;
    for (; **p >= '0' && **p <= '9'; (*p)++) {
        value = value * 10 + (**p - '0');
        if (value > TGA_LAYER_INDEX_MAX) {
            *reason = "a layer index is above 1048576";
            return false;
        }
    }
    *index = (int)value;
    return true;
}

/* Add "a", "a-b" and comma-separated lists of them, optionally inside [ ], to `set`. */
static tga_status layer_set_add(tga_layer_set *set, const char *text, const char *where) {
    const char *p = skip_spaces(text);
    bool bracketed = *p == '[';
    if (bracketed) p = skip_spaces(p + 1);
    bool empty = bracketed ? *p == ']' : *p == '\0';
    while (!empty) {
        int first, last;
        const char *reason = NULL;
        if (!parse_layer_index(&p, &first, &reason)) return layer_set_error(where, text, reason);
        last = first;
        p = skip_spaces(p);
        if (*p == '-') {
            p = skip_spaces(p + 1);
            if (!parse_layer_index(&p, &last, &reason)) return layer_set_error(where, text, reason);
            if (last < first) return layer_set_error(where, text, "a range runs backwards");
            p = skip_spaces(p);
        }
        for (int layer = first; layer <= last; layer++)
            if (!layer_set_insert(set, layer)) return layer_set_error(where, text, "more than 256 layers");
        if (*p != ',') break;
        p = skip_spaces(p + 1);
    }
    if (bracketed && *p == ']')
        p = skip_spaces(p + 1);
    else if (bracketed)
        return layer_set_error(where, text, "']' is missing or something follows an item");
    if (*p != '\0') return layer_set_error(where, text, "something other than ',' follows an item");
    return TGA_OK;
}

tga_status tga_layer_set_parse(tga_layer_set *set, const char *text, const char *where) {
    if (!set || !text) return tga_error(TGA_ERR_INTERNAL, "tga_layer_set_parse: NULL argument");
    memset(set, 0, sizeof *set);
    return layer_set_add(set, text, where ? where : "layer set");
}

void tga_layer_set_format(const tga_layer_set *set, char *buf, size_t size) {
    if (!buf || size == 0) return;
    buf[0] = '\0';
    int count = set->count < 0 ? 0 : set->count > TGA_LAYER_SET_MAX ? TGA_LAYER_SET_MAX : set->count;
    size_t used = 0;
    for (int i = 0; i < count && used < size;) {
        int run_end = i;
        while (run_end + 1 < count && set->layers[run_end + 1] == set->layers[run_end] + 1)
            run_end++;
        const char *separator = i ? "," : "";
        if (run_end > i)
            used += (size_t)snprintf(buf + used, size - used, "%s%d-%d", separator, set->layers[i],
                                     set->layers[run_end]);
        else
            used += (size_t)snprintf(buf + used, size - used, "%s%d", separator, set->layers[i]);
        i = run_end + 1;
    }
}

/* ---- one value ------------------------------------------------------------------------------- */

static void *field_of(void *cfg, const tga_cfg_key *key) { return (char *)cfg + key->offset; }
static const void *const_field_of(const void *cfg, const tga_cfg_key *key) {
    return (const char *)cfg + key->offset;
}

static void format_bound(const tga_cfg_key *key, double bound, char *buf, size_t size) {
    if (key->type == TGA_CFG_INT)
        snprintf(buf, size, "%lld", (long long)bound);
    else
        format_double(bound, buf, size);
}

static void format_range(const tga_cfg_key *key, char *buf, size_t size) {
    char min[32], max[32];
    format_bound(key, key->min, min, sizeof min);
    format_bound(key, key->max, max, sizeof max);
    snprintf(buf, size, "%c%s, %s%c", key->bounds & TGA_CFG_MIN_OPEN ? '(' : '[', min, max,
             key->bounds & TGA_CFG_MAX_OPEN ? ')' : ']');
}

/* "a | b | c" */
static void format_choices(const tga_cfg_key *key, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (const char *c = key->choices; *c && used < size; c++)
        used += (size_t)snprintf(buf + used, size - used, *c == '|' ? " | " : "%c", *c);
}

static void describe_expected(const tga_cfg_key *key, char *buf, size_t size) {
    char range[80];
    switch (key->type) {
    case TGA_CFG_INT:
    case TGA_CFG_FLOAT:
        format_range(key, range, sizeof range);
        snprintf(buf, size, "%s in %s", key->type == TGA_CFG_INT ? "an integer" : "a number", range);
        return;
    case TGA_CFG_BOOL:
        snprintf(buf, size, "true or false");
        return;
    case TGA_CFG_STRING:
        snprintf(buf, size, "a string of at most %d bytes", TGA_CFG_STRING_MAX - 1);
        return;
    case TGA_CFG_ENUM: {
        char choices[200];
        format_choices(key, choices, sizeof choices);
        snprintf(buf, size, "one of %s", choices);
        return;
    }
    case TGA_CFG_LAYERS:
        snprintf(buf, size, "a layer set such as \"10-18\" or [10, 11, 12]");
        return;
    }
    snprintf(buf, size, "a value");
}

static bool in_range(const tga_cfg_key *key, double value) {
    bool above_min = key->bounds & TGA_CFG_MIN_OPEN ? value > key->min : value >= key->min;
    bool below_max = key->bounds & TGA_CFG_MAX_OPEN ? value < key->max : value <= key->max;
    return above_min && below_max;
}

static tga_status type_error(const char *where, const tga_cfg_key *key, const cfg_scalar *value) {
    char expected[256], got[96];
    describe_expected(key, expected, sizeof expected);
    quote_for_message(value->text, value->length, got, sizeof got);
    if (!value->quoted && value->length == 0)
        return tga_error(TGA_ERR_CONFIG, "%s: expected %s, got nothing", where, expected);
    return tga_error(TGA_ERR_CONFIG, "%s: expected %s, got %s%s", where, expected,
                     value->quoted ? "the quoted string " : "", got);
}

static tga_status range_error(const char *where, const tga_cfg_key *key, const cfg_scalar *value) {
    char range[80];
    format_range(key, range, sizeof range);
    return tga_error(TGA_ERR_CONFIG, "%s: %s is out of range %s", where, value->text, range);
}

static bool is_null(const cfg_scalar *value) {
    if (value->quoted) return false;
    const char *t = value->text;
    return t[0] == '\0' || strcmp(t, "~") == 0 || strcmp(t, "null") == 0 || strcmp(t, "Null") == 0 ||
           strcmp(t, "NULL") == 0;
}

/* Plain decimal notation only: strtod alone would also take "nan", "inf" and hex floats. A
 * value too large for a double reads as +-inf, which the range check then reports. */
static bool parse_double(const char *text, double *out) {
    if (text[0] == '\0' || strspn(text, "0123456789+-.eE") != strlen(text)) return false;
    char *end;
    *out = strtod(text, &end);
    return *end == '\0';
}

/* An integer, also written as an exact float ("1e6"), but never a fractional one ("1.5"). */
static bool parse_int(const char *text, int64_t *out) {
    if (text[0] == '\0' || strspn(text, "0123456789+-") != strlen(text)) {
        double value;
        const double exact_limit = 9007199254740992.0; /* 2^53: every integer below it is a double */
        if (!parse_double(text, &value) || value != floor(value) || fabs(value) >= exact_limit) return false;
        *out = (int64_t)value;
        return true;
    }
    char *end;
    long long value = strtoll(text, &end, 10); /* saturates, so the range check reports overflow */
    if (*end != '\0') return false;
    *out = value;
    return true;
}

static bool parse_bool(const char *text, bool *out) {
    static const char *const truths[] = {"true", "yes", "on"}, *const falsehoods[] = {"false", "no", "off"};
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(text, truths[i]) == 0) return *out = true, true;
        if (strcasecmp(text, falsehoods[i]) == 0) return *out = false, true;
    }
    return false;
}

/* Index of `text` in "a|b|c", or -1. */
static int choice_index(const char *choices, const char *text) {
    size_t length = strlen(text);
    int index = 0;
    for (const char *c = choices;; index++) {
        size_t choice_length = strcspn(c, "|");
        if (choice_length == length && memcmp(c, text, length) == 0) return index;
        if (c[choice_length] == '\0') return -1;
        c += choice_length + 1;
    }
}

static tga_status choice_error(const char *where, const tga_cfg_key *key, const cfg_scalar *value) {
    char expected[256], got[96], hint[80];
    suggestion s = {.typed = value->text, .best_distance = SIZE_MAX};
    for (const char *c = key->choices; *c;) {
        size_t choice_length = strcspn(c, "|");
        suggestion_consider(&s, c, choice_length);
        c += choice_length + (c[choice_length] == '|');
    }
    describe_expected(key, expected, sizeof expected);
    quote_for_message(value->text, value->length, got, sizeof got);
    suggestion_format(&s, hint, sizeof hint);
    return tga_error(TGA_ERR_CONFIG, "%s: expected %s, got %s%s", where, expected, got, hint);
}

static tga_status apply_string(char *field, const char *where, const cfg_scalar *value) {
    size_t length = is_null(value) ? 0 : value->length;
    if (length >= TGA_CFG_STRING_MAX)
        return tga_error(TGA_ERR_CONFIG, "%s: a string of %zu bytes is too long (at most %d)", where, length,
                         TGA_CFG_STRING_MAX - 1);
    memset(field, 0, TGA_CFG_STRING_MAX);
    memcpy(field, value->text, length);
    return TGA_OK;
}

/* Check `value` against `key` and store it. `where` starts every message ("run.yaml:7: model.dim"). */
static tga_status apply_scalar(void *cfg, const tga_cfg_key *key, const cfg_scalar *value,
                               const char *where) {
    if (strlen(value->text) != value->length)
        return tga_error(TGA_ERR_CONFIG, "%s: the value contains a NUL character", where);
    void *field = field_of(cfg, key);
    switch (key->type) {
    case TGA_CFG_INT: {
        int64_t parsed;
        if (value->quoted || !parse_int(value->text, &parsed)) return type_error(where, key, value);
        /* In integers: as doubles, 2^53 + 1 would pass a 2^53 bound. */
        if (parsed < (int64_t)key->min || parsed > (int64_t)key->max) return range_error(where, key, value);
        *(int64_t *)field = parsed;
        return TGA_OK;
    }
    case TGA_CFG_FLOAT: {
        double parsed;
        if (value->quoted || !parse_double(value->text, &parsed)) return type_error(where, key, value);
        if (!in_range(key, parsed)) return range_error(where, key, value);
        *(double *)field = parsed;
        return TGA_OK;
    }
    case TGA_CFG_BOOL:
        if (value->quoted || !parse_bool(value->text, (bool *)field)) return type_error(where, key, value);
        return TGA_OK;
    case TGA_CFG_STRING:
        return apply_string(field, where, value);
    case TGA_CFG_ENUM: {
        int index = choice_index(key->choices, value->text);
        if (index < 0) return choice_error(where, key, value);
        *(int *)field = index;
        return TGA_OK;
    }
    case TGA_CFG_LAYERS:
        if (is_null(value)) {
            memset(field, 0, sizeof(tga_layer_set));
            return TGA_OK;
        }
        return tga_layer_set_parse(field, value->text, where);
    }
    return tga_error(TGA_ERR_INTERNAL, "%s: unknown key type %d in the schema", where, (int)key->type);
}

/* ---- schema lookups -------------------------------------------------------------------------- */

/* A section is identified by the index of its first key; sections are contiguous in the schema. */
static size_t find_section(const tga_cfg_key *schema, size_t n, const char *section) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(schema[i].section, section) == 0) return i;
    return n;
}

static size_t find_key(const tga_cfg_key *schema, size_t n, size_t section, const char *name) {
    for (size_t i = section; i < n && strcmp(schema[i].section, schema[section].section) == 0; i++)
        if (strcmp(schema[i].name, name) == 0) return i;
    return n;
}

static bool starts_section(const tga_cfg_key *schema, size_t i) {
    return i == 0 || strcmp(schema[i].section, schema[i - 1].section) != 0;
}

/* `where` is "run.yaml:3" or "--set model.dmi". */
static tga_status unknown_section_error(const char *where, const tga_cfg_key *schema, size_t n,
                                        const char *section) {
    char valid[512] = "", hint[80], quoted[96];
    size_t used = 0;
    suggestion s = {.typed = section, .best_distance = SIZE_MAX};
    for (size_t i = 0; i < n; i++) {
        if (!starts_section(schema, i)) continue;
        suggestion_consider(&s, schema[i].section, strlen(schema[i].section));
        if (used < sizeof valid)
            used += (size_t)snprintf(valid + used, sizeof valid - used, "%s%s", used ? ", " : "",
                                     schema[i].section);
    }
    suggestion_format(&s, hint, sizeof hint);
    quote_for_message(section, strlen(section), quoted, sizeof quoted);
    return tga_error(TGA_ERR_CONFIG, "%s: unknown section %s%s; valid sections: %s", where, quoted, hint,
                     valid);
}

static tga_status unknown_key_error(const char *where, const tga_cfg_key *schema, size_t n, size_t section,
                                    const char *name) {
    char valid[1024] = "", hint[80], quoted[96];
    size_t used = 0;
    suggestion s = {.typed = name, .best_distance = SIZE_MAX};
    for (size_t i = section; i < n && strcmp(schema[i].section, schema[section].section) == 0; i++) {
        suggestion_consider(&s, schema[i].name, strlen(schema[i].name));
        if (used < sizeof valid)
            used +=
                (size_t)snprintf(valid + used, sizeof valid - used, "%s%s", used ? ", " : "", schema[i].name);
    }
    suggestion_format(&s, hint, sizeof hint);
    quote_for_message(name, strlen(name), quoted, sizeof quoted);
    return tga_error(TGA_ERR_CONFIG, "%s: unknown key %s in section '%s'%s; valid keys: %s", where, quoted,
                     schema[section].section, hint, valid);
}

/* Sections must be contiguous (the writer emits each once) and names unique. */
static tga_status check_schema(const tga_cfg_key *schema, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const tga_cfg_key *key = &schema[i];
        if (!key->section || !key->name || !key->default_value || !key->help ||
            (key->type == TGA_CFG_ENUM && (!key->choices || !key->choices[0])))
            return tga_error(TGA_ERR_INTERNAL, "config schema entry %zu is incomplete", i);
        if (starts_section(schema, i) && find_section(schema, n, key->section) != i)
            return tga_error(TGA_ERR_INTERNAL, "config schema: section '%s' is split", key->section);
        if (find_key(schema, n, find_section(schema, n, key->section), key->name) != i)
            return tga_error(TGA_ERR_INTERNAL, "config schema: key %s.%s is declared twice", key->section,
                             key->name);
    }
    return TGA_OK;
}

tga_status tga_cfg_defaults(void *cfg, const tga_cfg_key *schema, size_t n) {
    if (!cfg || !schema) return tga_error(TGA_ERR_INTERNAL, "tga_cfg_defaults: NULL argument");
    TGA_TRY(check_schema(schema, n));
    for (size_t i = 0; i < n; i++) {
        char where[160];
        snprintf(where, sizeof where, "schema default of %s.%s", schema[i].section, schema[i].name);
        cfg_scalar value = {schema[i].default_value, strlen(schema[i].default_value), false};
        if (apply_scalar(cfg, &schema[i], &value, where) != TGA_OK) {
            char message[2048];
            snprintf(message, sizeof message, "%s", tga_error_message());
            return tga_error_replace(TGA_ERR_INTERNAL, "%s (a bug in the schema)", message);
        }
    }
    return TGA_OK;
}

/* ---- YAML files ------------------------------------------------------------------------------ */

typedef struct {
    void *cfg;
    const tga_cfg_key *schema;
    size_t n;
    const char *name; /* of the file, for messages */
    yaml_document_t *document;
    size_t *key_line;     /* per schema key: the line that set it, 0 while unset */
    size_t *section_line; /* per section (indexed by its first key): the line that opened it */
} yaml_walk;

static size_t node_line(const yaml_node_t *node) { return node->start_mark.line + 1; }

static cfg_scalar node_scalar(const yaml_node_t *node) {
    return (cfg_scalar){(const char *)node->data.scalar.value, node->data.scalar.length,
                        node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE};
}

/* "a list", "a mapping" or the scalar's text, quoted. */
static void describe_node(const yaml_node_t *node, char *buf, size_t size) {
    if (node->type == YAML_SCALAR_NODE)
        quote_for_message((const char *)node->data.scalar.value, node->data.scalar.length, buf, size);
    else
        snprintf(buf, size, "%s", node->type == YAML_SEQUENCE_NODE ? "a list" : "a mapping");
}

/* The text of a mapping key that names a section or a key ("what"). */
static tga_status node_name(const yaml_walk *w, const yaml_node_t *node, const char *what,
                            const char **name) {
    char got[96];
    describe_node(node, got, sizeof got);
    if (node->type != YAML_SCALAR_NODE)
        return tga_error(TGA_ERR_CONFIG, "%s:%zu: expected a %s name, got %s", w->name, node_line(node), what,
                         got);
    if (strlen((const char *)node->data.scalar.value) != node->data.scalar.length)
        return tga_error(TGA_ERR_CONFIG, "%s:%zu: the %s name %s contains a NUL character", w->name,
                         node_line(node), what, got);
    *name = (const char *)node->data.scalar.value;
    return TGA_OK;
}

static void format_where(char *buf, size_t size, const yaml_walk *w, const yaml_node_t *node,
                         const tga_cfg_key *key) {
    snprintf(buf, size, "%s:%zu: %s.%s", w->name, node_line(node), key->section, key->name);
}

/* [10, 11, "14-16"]: each item is read like a layer-set string and all are merged. */
static tga_status apply_layer_list(yaml_walk *w, const tga_cfg_key *key, const yaml_node_t *list) {
    tga_layer_set *set = field_of(w->cfg, key);
    memset(set, 0, sizeof *set);
    for (yaml_node_item_t *item = list->data.sequence.items.start; item < list->data.sequence.items.top;
         item++) {
        const yaml_node_t *node = yaml_document_get_node(w->document, *item);
        char where[1200], got[96];
        format_where(where, sizeof where, w, node ? node : list, key);
        if (!node || node->type != YAML_SCALAR_NODE) {
            describe_node(node ? node : list, got, sizeof got);
            return tga_error(TGA_ERR_CONFIG, "%s: expected layer indices or ranges in the list, got %s",
                             where, got);
        }
        cfg_scalar value = node_scalar(node);
        if (strlen(value.text) != value.length)
            return tga_error(TGA_ERR_CONFIG, "%s: the value contains a NUL character", where);
        TGA_TRY(layer_set_add(set, value.text, where));
    }
    return TGA_OK;
}

static tga_status apply_node(yaml_walk *w, const tga_cfg_key *key, const yaml_node_t *value) {
    char where[1200];
    format_where(where, sizeof where, w, value, key);
    if (value->type == YAML_SCALAR_NODE) {
        cfg_scalar scalar = node_scalar(value);
        return apply_scalar(w->cfg, key, &scalar, where);
    }
    if (value->type == YAML_SEQUENCE_NODE && key->type == TGA_CFG_LAYERS)
        return apply_layer_list(w, key, value);
    char expected[256], got[96];
    describe_expected(key, expected, sizeof expected);
    describe_node(value, got, sizeof got);
    return tga_error(TGA_ERR_CONFIG, "%s: expected %s, got %s", where, expected, got);
}

static tga_status apply_section(yaml_walk *w, size_t section, const yaml_node_t *mapping) {
    for (yaml_node_pair_t *pair = mapping->data.mapping.pairs.start; pair < mapping->data.mapping.pairs.top;
         pair++) {
        const yaml_node_t *key_node = yaml_document_get_node(w->document, pair->key);
        const yaml_node_t *value_node = yaml_document_get_node(w->document, pair->value);
        if (!key_node || !value_node) return tga_error(TGA_ERR_INTERNAL, "%s: libyaml lost a node", w->name);
        const char *name;
        TGA_TRY(node_name(w, key_node, "key", &name));
        size_t key = find_key(w->schema, w->n, section, name);
        if (key == w->n) {
            char where[1100];
            snprintf(where, sizeof where, "%s:%zu", w->name, node_line(key_node));
            return unknown_key_error(where, w->schema, w->n, section, name);
        }
        if (w->key_line[key])
            return tga_error(TGA_ERR_CONFIG, "%s:%zu: duplicate key %s.%s (first set at line %zu)", w->name,
                             node_line(key_node), w->schema[key].section, name, w->key_line[key]);
        w->key_line[key] = node_line(key_node);
        TGA_TRY(apply_node(w, &w->schema[key], value_node));
    }
    return TGA_OK;
}

static tga_status apply_root(yaml_walk *w, const yaml_node_t *root) {
    char got[96];
    describe_node(root, got, sizeof got);
    if (root->type != YAML_MAPPING_NODE)
        return tga_error(TGA_ERR_CONFIG, "%s:%zu: expected a mapping of sections such as 'model:', got %s",
                         w->name, node_line(root), got);
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start; pair < root->data.mapping.pairs.top;
         pair++) {
        const yaml_node_t *key_node = yaml_document_get_node(w->document, pair->key);
        const yaml_node_t *value_node = yaml_document_get_node(w->document, pair->value);
        if (!key_node || !value_node) return tga_error(TGA_ERR_INTERNAL, "%s: libyaml lost a node", w->name);
        const char *name;
        TGA_TRY(node_name(w, key_node, "section", &name));
        size_t section = find_section(w->schema, w->n, name);
        if (section == w->n) {
            char where[1100];
            snprintf(where, sizeof where, "%s:%zu", w->name, node_line(key_node));
            return unknown_section_error(where, w->schema, w->n, name);
        }
        if (w->section_line[section])
            return tga_error(TGA_ERR_CONFIG, "%s:%zu: duplicate section '%s' (first opened at line %zu)",
                             w->name, node_line(key_node), name, w->section_line[section]);
        w->section_line[section] = node_line(key_node);
        if (value_node->type == YAML_MAPPING_NODE) {
            TGA_TRY(apply_section(w, section, value_node));
            continue;
        }
        if (value_node->type == YAML_SCALAR_NODE) {
            cfg_scalar scalar = node_scalar(value_node);
            if (is_null(&scalar)) continue; /* "model:" with nothing under it */
        }
        describe_node(value_node, got, sizeof got);
        return tga_error(TGA_ERR_CONFIG,
                         "%s:%zu: section '%s' must be a mapping of keys (such as '  %s: %s'), got %s",
                         w->name, node_line(value_node), name, w->schema[section].name,
                         w->schema[section].default_value, got);
    }
    return TGA_OK;
}

static size_t line_of_offset(const char *data, size_t size, size_t offset) {
    size_t line = 1;
    for (size_t i = 0; i < offset && i < size; i++)
        line += data[i] == '\n';
    return line;
}

static tga_status parser_error(const yaml_parser_t *parser, const char *name, const char *data, size_t size) {
    if (parser->error == YAML_MEMORY_ERROR)
        return tga_error(TGA_ERR_NOMEM, "%s: out of memory reading YAML", name);
    const char *problem = parser->problem ? parser->problem : "unknown problem";
    if (parser->error == YAML_READER_ERROR)
        return tga_error(TGA_ERR_CONFIG, "%s:%zu: not YAML text (%s at byte %zu)", name,
                         line_of_offset(data, size, parser->problem_offset), problem, parser->problem_offset);
    char context[160] = "";
    if (parser->context)
        snprintf(context, sizeof context, " (%s at line %zu)", parser->context,
                 parser->context_mark.line + 1);
    return tga_error(TGA_ERR_CONFIG, "%s:%zu: malformed YAML at column %zu: %s%s", name,
                     parser->problem_mark.line + 1, parser->problem_mark.column + 1, problem, context);
}

/* libyaml takes quadratic time on deep flow nesting ("[[[[...", its scanner rescans every open
 * level at each token) and on many anchors and aliases (its loader looks them up linearly). A
 * config needs three levels and few anchors, so a first pass over the parser's events (which
 * look ahead at most 1024 characters) refuses more before the loader builds the document. */
static tga_status check_structure(const char *data, size_t size, const char *name) {
    enum { DEPTH_MAX = 16, ANCHORS_MAX = 64 };
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return tga_error(TGA_ERR_NOMEM, "%s: out of memory reading YAML", name);
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, size);
    tga_status status = TGA_OK;
    int depth = 0, anchors = 0;
    for (bool stream_end = false; !stream_end && status == TGA_OK;) {
        yaml_event_t event;
        if (!yaml_parser_parse(&parser, &event)) {
            status = parser_error(&parser, name, data, size);
            break;
        }
        stream_end = event.type == YAML_STREAM_END_EVENT;
        depth += event.type == YAML_SEQUENCE_START_EVENT || event.type == YAML_MAPPING_START_EVENT;
        depth -= event.type == YAML_SEQUENCE_END_EVENT || event.type == YAML_MAPPING_END_EVENT;
        anchors += event.type == YAML_ALIAS_EVENT ||
                   (event.type == YAML_SCALAR_EVENT && event.data.scalar.anchor) ||
                   (event.type == YAML_SEQUENCE_START_EVENT && event.data.sequence_start.anchor) ||
                   (event.type == YAML_MAPPING_START_EVENT && event.data.mapping_start.anchor);
        size_t line = event.start_mark.line + 1;
        yaml_event_delete(&event);
        if (depth > DEPTH_MAX)
            status = tga_error(TGA_ERR_CONFIG, "%s:%zu: nested deeper than %d levels: not a tga config", name,
                               line, DEPTH_MAX);
        else if (anchors > ANCHORS_MAX)
            status = tga_error(TGA_ERR_CONFIG, "%s:%zu: more than %d anchors and aliases: not a tga config",
                               name, line, ANCHORS_MAX);
    }
    yaml_parser_delete(&parser);
    return status;
}

/* Apply the first document, then insist there is no second one: it would be silently ignored. */
static tga_status load_documents(yaml_parser_t *parser, yaml_walk *w, const char *data, size_t size) {
    yaml_document_t document;
    if (!yaml_parser_load(parser, &document)) return parser_error(parser, w->name, data, size);
    w->document = &document;
    const yaml_node_t *root = yaml_document_get_root_node(&document);
    tga_status status =
        root ? apply_root(w, root)
             : tga_error(TGA_ERR_CONFIG,
                         "%s: the config is empty (expected sections such as 'model:' with keys)", w->name);
    yaml_document_delete(&document);
    if (status != TGA_OK) return status;
    if (!yaml_parser_load(parser, &document)) return parser_error(parser, w->name, data, size);
    root = yaml_document_get_root_node(&document);
    size_t second_line = root ? node_line(root) : 0;
    yaml_document_delete(&document);
    if (second_line)
        return tga_error(TGA_ERR_CONFIG, "%s:%zu: a second YAML document; a config file holds exactly one",
                         w->name, second_line);
    return TGA_OK;
}

tga_status tga_cfg_load_buffer(void *cfg, const tga_cfg_key *schema, size_t n, const char *data, size_t size,
                               const char *name) {
    if (!cfg || !schema || !name || (!data && size))
        return tga_error(TGA_ERR_INTERNAL, "tga_cfg_load_buffer: NULL argument");
    if (size > TGA_CFG_FILE_MAX)
        return tga_error(TGA_ERR_CONFIG, "%s: larger than %u bytes: not a config file", name,
                         TGA_CFG_FILE_MAX);
    const char *nul = size ? memchr(data, '\0', size) : NULL;
    if (nul)
        return tga_error(TGA_ERR_CONFIG, "%s:%zu: a NUL byte: not a text file (expected a YAML config)", name,
                         line_of_offset(data, size, (size_t)(nul - data)));
    if (!data) data = "";
    TGA_TRY(check_structure(data, size, name));
    size_t *lines = calloc(2 * n + 1, sizeof *lines);
    yaml_parser_t parser;
    if (!lines || !yaml_parser_initialize(&parser)) {
        free(lines);
        return tga_error(TGA_ERR_NOMEM, "%s: out of memory reading YAML", name);
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, size);
    yaml_walk walk = {
        .cfg = cfg, .schema = schema, .n = n, .name = name, .key_line = lines, .section_line = lines + n};
    tga_status status = load_documents(&parser, &walk, data, size);
    yaml_parser_delete(&parser);
    free(lines);
    return status;
}

tga_status tga_cfg_load_file(void *cfg, const tga_cfg_key *schema, size_t n, const char *path) {
    if (!path) return tga_error(TGA_ERR_INTERNAL, "tga_cfg_load_file: NULL path");
    FILE *file = fopen(path, "rb");
    if (!file) return tga_error(TGA_ERR_IO, "cannot open config file %s: %s", path, strerror(errno));
    char *data = malloc(TGA_CFG_FILE_MAX + 1);
    if (!data) {
        fclose(file);
        return tga_error(TGA_ERR_NOMEM, "%s: out of memory reading the file", path);
    }
    /* One byte more than the limit, so that load_buffer sees an oversized file as such. */
    size_t size = fread(data, 1, TGA_CFG_FILE_MAX + 1, file);
    int read_errno = errno;
    bool failed = ferror(file);
    fclose(file);
    tga_status status =
        failed ? tga_error(TGA_ERR_IO, "cannot read config file %s: %s", path, strerror(read_errno))
               : tga_cfg_load_buffer(cfg, schema, n, data, size, path);
    free(data);
    return status;
}

/* ---- --set section.key=value ----------------------------------------------------------------- */

static char *copy_trimmed(const char *text) {
    const char *begin = skip_spaces(text);
    size_t length = strlen(begin);
    while (length && (begin[length - 1] == ' ' || begin[length - 1] == '\t'))
        length--;
    char *copy = malloc(length + 1);
    if (copy) {
        memcpy(copy, begin, length);
        copy[length] = '\0';
    }
    return copy;
}

tga_status tga_cfg_set(void *cfg, const tga_cfg_key *schema, size_t n, const char *assignment) {
    if (!cfg || !schema || !assignment) return tga_error(TGA_ERR_INTERNAL, "tga_cfg_set: NULL argument");
    const char *equals = strchr(assignment, '=');
    size_t name_length = equals ? (size_t)(equals - assignment) : strlen(assignment);
    const char *dot = memchr(assignment, '.', name_length);
    bool printable_name = true; /* so that messages naming it stay on one line */
    for (size_t i = 0; i < name_length; i++)
        printable_name &= (unsigned char)assignment[i] >= 0x20 && assignment[i] != 0x7F;
    if (!equals || !dot || !printable_name) {
        char quoted[96];
        quote_for_message(assignment, strlen(assignment), quoted, sizeof quoted);
        return tga_error(TGA_ERR_CONFIG,
                         "--set %s: expected section.key=value (for example --set train.lr=1e-4)", quoted);
    }
    /* Names too long for these buffers are cut, and then match no key of the schema. */
    char section[128], name[128], where[300];
    snprintf(section, sizeof section, "%.*s", (int)(dot - assignment), assignment);
    snprintf(name, sizeof name, "%.*s", (int)(equals - dot - 1), dot + 1);
    snprintf(where, sizeof where, "--set %s.%s", section, name);
    size_t section_index = find_section(schema, n, section);
    if (section_index == n) return unknown_section_error(where, schema, n, section);
    size_t key = find_key(schema, n, section_index, name);
    if (key == n) return unknown_key_error(where, schema, n, section_index, name);
    if (!is_valid_utf8(equals + 1))
        return tga_error(TGA_ERR_CONFIG, "%s: the value is not valid UTF-8", where);
    char *text = copy_trimmed(equals + 1);
    if (!text) return tga_error(TGA_ERR_NOMEM, "%s: out of memory", where);
    cfg_scalar value = {text, strlen(text), false};
    tga_status status = apply_scalar(cfg, &schema[key], &value, where);
    free(text);
    return status;
}

/* ---- writing --------------------------------------------------------------------------------- */

/* Code points libyaml reads back unchanged when written raw inside double quotes: printable, and
 * neither a line break (NEL, LS, PS: they would be folded) nor a byte-order mark. */
static bool is_raw_in_double_quotes(uint32_t c) {
    return (c >= 0x20 && c <= 0x7E && c != '"' && c != '\\') ||
           (c >= 0xA0 && c <= 0xD7FF && c != 0x2028 && c != 0x2029) ||
           (c >= 0xE000 && c <= 0xFFFD && c != 0xFEFF) || (c >= 0x10000 && c <= 0x10FFFF);
}

static tga_status write_quoted(FILE *out, const char *text) {
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)text; *p;) {
        uint32_t c;
        size_t length = utf8_decode(p, &c);
        if (length == 0) return tga_error(TGA_ERR_INTERNAL, "a config string is not UTF-8");
        if (is_raw_in_double_quotes(c))
            fwrite(p, 1, length, out);
        else if (c == '"' || c == '\\')
            fprintf(out, "\\%c", (int)c);
        else if (c == '\n')
            fputs("\\n", out);
        else if (c == '\t')
            fputs("\\t", out);
        else
            fprintf(out, c <= 0xFF ? "\\x%02" PRIX32 : c <= 0xFFFF ? "\\u%04" PRIX32 : "\\U%08" PRIX32, c);
        p += length;
    }
    fputc('"', out);
    return TGA_OK;
}

static tga_status write_choice(FILE *out, const tga_cfg_key *key, int index) {
    const char *c = key->choices;
    for (int i = 0; i < index && c; i++)
        c = strchr(c, '|') ? strchr(c, '|') + 1 : NULL;
    if (index < 0 || !c)
        return tga_error(TGA_ERR_INTERNAL, "%s.%s holds %d, not an index into %s", key->section, key->name,
                         index, key->choices);
    fprintf(out, "%.*s", (int)strcspn(c, "|"), c);
    return TGA_OK;
}

static tga_status write_value(FILE *out, const void *cfg, const tga_cfg_key *key) {
    const void *field = const_field_of(cfg, key);
    char text[TGA_LAYER_SET_TEXT_MAX];
    switch (key->type) {
    case TGA_CFG_INT:
        fprintf(out, "%" PRId64, *(const int64_t *)field);
        return TGA_OK;
    case TGA_CFG_FLOAT:
        format_double(*(const double *)field, text, sizeof text);
        fputs(text, out);
        return TGA_OK;
    case TGA_CFG_BOOL:
        fputs(*(const bool *)field ? "true" : "false", out);
        return TGA_OK;
    case TGA_CFG_STRING:
        if (!memchr(field, '\0', TGA_CFG_STRING_MAX))
            return tga_error(TGA_ERR_INTERNAL, "%s.%s is not NUL-terminated", key->section, key->name);
        return write_quoted(out, field);
    case TGA_CFG_ENUM:
        return write_choice(out, key, *(const int *)field);
    case TGA_CFG_LAYERS:
        tga_layer_set_format(field, text, sizeof text);
        fprintf(out, "\"%s\"", text);
        return TGA_OK;
    }
    return tga_error(TGA_ERR_INTERNAL, "%s.%s: unknown key type %d", key->section, key->name, (int)key->type);
}

tga_status tga_cfg_write_yaml(const void *cfg, const tga_cfg_key *schema, size_t n, FILE *out) {
    if (!cfg || !schema || !out) return tga_error(TGA_ERR_INTERNAL, "tga_cfg_write_yaml: NULL argument");
    for (size_t i = 0; i < n; i++) {
        if (starts_section(schema, i)) fprintf(out, "%s%s:\n", i ? "\n" : "", schema[i].section);
        fprintf(out, "  %s: ", schema[i].name);
        TGA_TRY(write_value(out, cfg, &schema[i]));
        fputc('\n', out);
    }
    if (fflush(out) != 0 || ferror(out))
        return tga_error(TGA_ERR_IO, "cannot write the config: %s", strerror(errno));
    return TGA_OK;
}

void tga_cfg_print_help(const tga_cfg_key *schema, size_t n, FILE *out) {
    static const char *const type_names[] = {"int", "float", "bool", "string", "enum", "layer set"};
    for (size_t i = 0; i < n; i++) {
        const tga_cfg_key *key = &schema[i];
        char allowed[256] = "", text[240];
        if (key->type == TGA_CFG_INT || key->type == TGA_CFG_FLOAT) {
            format_range(key, text, sizeof text);
            snprintf(allowed, sizeof allowed, ", range %s", text);
        } else if (key->type == TGA_CFG_ENUM) {
            format_choices(key, text, sizeof text);
            snprintf(allowed, sizeof allowed, ", choices %s", text);
        }
        const char *quote = key->type == TGA_CFG_STRING || key->type == TGA_CFG_LAYERS ? "\"" : "";
        if (starts_section(schema, i) && i) fputc('\n', out);
        fprintf(out, "%s.%s: %s, default %s%s%s%s\n    %s\n", key->section, key->name, type_names[key->type],
                quote, key->default_value, quote, allowed, key->help);
    }
}
