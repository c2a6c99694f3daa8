/* `tga tokenize`: the whole input (a file or stdin) as one text -> its token ids on one line,
 * separated by single spaces; with --decode, ids (separated by any white space) -> the exact bytes,
 * with nothing added. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer.h"
#include "trainer/cli.h"

typedef struct {
    const char *tokenizer;
    const char *file;
    bool decode, special;
} tokenize_options;

static tga_status parse_options(int argc, char **argv, tokenize_options *o) {
    memset(o, 0, sizeof *o);
    for (int i = 0; i < argc; i++) {
        bool has_value = i + 1 < argc;
        if (strcmp(argv[i], "--tokenizer") == 0 && has_value)
            o->tokenizer = argv[++i];
        else if (strcmp(argv[i], "--file") == 0 && has_value)
            o->file = argv[++i];
        else if (strcmp(argv[i], "--decode") == 0)
            o->decode = true;
        else if (strcmp(argv[i], "--special") == 0)
            o->special = true;
        else if (strcmp(argv[i], "--tokenizer") == 0 || strcmp(argv[i], "--file") == 0)
            return tga_error(TGA_ERR_USAGE, "%s needs a value (see tga help tokenize)", argv[i]);
        else
            return tga_error(TGA_ERR_USAGE, "unknown option '%s' (see tga help tokenize)", argv[i]);
    }
    if (!o->tokenizer)
        return tga_error(TGA_ERR_USAGE, "--tokenizer PATH is required (see tga help tokenize)");
    if (o->decode && o->special)
        return tga_error(TGA_ERR_USAGE, "--special applies to encoding, not to --decode");
    return TGA_OK;
}

static tga_status read_input(const char *path, char **data, size_t *len) {
    FILE *f = path ? fopen(path, "rb") : stdin;
    const char *name = path ? path : "standard input";
    if (!f) return tga_error(TGA_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        char *grown = realloc(buf, 2 * cap);
        if (!grown) free(buf);
        buf = grown;
        cap *= 2;
    }
    bool failed = buf && ferror(f);
    if (path) fclose(f);
    if (!buf) return tga_error(TGA_ERR_NOMEM, "out of memory reading %s", name);
    if (failed) {
        free(buf);
        return tga_error(TGA_ERR_IO, "%s: read failed", name);
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return TGA_OK;
}

static bool is_space(char c) {
    return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

static tga_status parse_ids(const char *text, size_t len, const char *name, int32_t **ids, size_t *n) {
    size_t cap = 1;
    for (size_t i = 0; i < len; i++)
        cap += is_space(text[i]);
    *ids = malloc(cap * sizeof **ids);
    *n = 0;
    if (!*ids) return tga_error(TGA_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < len;) {
        if (is_space(text[i])) {
            i++;
            continue;
        }
        size_t start = i;
        int64_t value = 0;
        for (; i < len && text[i] >= '0' && text[i] <= '9' && value <= INT32_MAX; i++)
            value = value * 10 + (text[i] - '0');
        if (i == start || value > INT32_MAX || (i < len && !is_space(text[i])))
            return tga_error(TGA_ERR_FORMAT,
                             "%s: byte %zu: expected a token id (a decimal integer up to %d), found '%.16s'",
                             name, start, INT32_MAX, text + start);
        (*ids)[(*n)++] = (int32_t)value;
    }
    return TGA_OK;
}

static tga_status write_bytes(const char *data, size_t len) {
    if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0)
        return tga_error(TGA_ERR_IO, "writing to standard output failed: %s", strerror(errno));
    return TGA_OK;
}

static tga_status print_ids(const int32_t *ids, size_t n) {
    char *line = malloc(12 * n + 2);
    if (!line) return tga_error(TGA_ERR_NOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += (size_t)sprintf(line + k, i ? " %d" : "%d", ids[i]);
    line[k++] = '\n';
    tga_status st = write_bytes(line, k);
    free(line);
    return st;
}

static tga_status run(const tga_tokenizer *t, const tokenize_options *o, const char *input, size_t len) {
    int32_t *ids = NULL;
    size_t n = 0;
    tga_status st;
    if (!o->decode) {
        st = tga_tokenizer_encode(t, input, len, o->special ? TGA_TOK_PARSE_SPECIAL : 0, &ids, &n);
        if (st == TGA_OK) st = print_ids(ids, n);
        free(ids);
        return st;
    }
    char *text = NULL;
    size_t text_len = 0;
    st = parse_ids(input, len, o->file ? o->file : "standard input", &ids, &n);
    if (st == TGA_OK) st = tga_tokenizer_decode(t, ids, n, &text, &text_len);
    if (st == TGA_OK) st = write_bytes(text, text_len);
    free(ids);
    free(text);
    return st;
}

tga_status tga_cmd_tokenize(int argc, char **argv) {
    tokenize_options o;
    TGA_TRY(parse_options(argc, argv, &o));
    tga_tokenizer *t;
    TGA_TRY(tga_tokenizer_load(o.tokenizer, &t));
    char *input = NULL;
    size_t len = 0;
    tga_status st = read_input(o.file, &input, &len);
    if (st == TGA_OK) st = run(t, &o, input, len);
    free(input);
    tga_tokenizer_free(t);
    return st;
}
