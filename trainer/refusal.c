#include "trainer/refusal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/fileio.h"

#define PHRASE_FILE_MAX (1u << 20)

typedef struct {
    char **phrases; /* lower-cased, NUL-terminated */
    size_t *lengths;
    size_t count;
} phrase_list;

struct tga_refusal_detector {
    phrase_list prefixes, substrings;
};

/* ---- locating the assets ----------------------------------------------------------------------- */

tga_status tga_refusal_assets_dir(char *out, size_t size) {
    const char *env = getenv("TGA_ASSETS");
    if (env && *env) {
        if (snprintf(out, size, "%s", env) >= (int)size)
            return tga_error(TGA_ERR_CONFIG, "$TGA_ASSETS is too long");
        return TGA_OK;
    }
    char source[4096];
    if (!tga_find_source_tree(source, sizeof source))
        return tga_error(TGA_ERR_CONFIG,
                         "cannot find the assets folder: set TGA_ASSETS (the shared assets folder) or "
                         "TGA_SOURCE_DIR (the source tree, whose ../shared/assets is used)");
    if (snprintf(out, size, "%s/../shared/assets", source) >= (int)size)
        return tga_error(TGA_ERR_CONFIG, "the assets path under %s is too long", source);
    return TGA_OK;
}

/* ---- phrase files ------------------------------------------------------------------------------ */

static void phrase_list_free(phrase_list *l) {
    for (size_t i = 0; i < l->count; i++)
        free(l->phrases[i]);
    free(l->phrases);
    free(l->lengths);
    memset(l, 0, sizeof *l);
}

static char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c; }

static tga_status check_phrase(const char *path, size_t line, const char *text, size_t len) {
    if (len == 0)
        return tga_error(TGA_ERR_FORMAT,
                         "%s:%zu: empty phrase (an empty refusal phrase would match every response)", path,
                         line);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)text[i] < 0x20 || (unsigned char)text[i] > 0x7e)
            return tga_error(TGA_ERR_FORMAT, "%s:%zu: byte 0x%02x in a phrase; expected printable ASCII",
                             path, line, (unsigned char)text[i]);
    return TGA_OK;
}

static tga_status add_phrase(phrase_list *l, const char *text, size_t len) {
    char *copy = malloc(len + 1);
    char **phrases = realloc(l->phrases, (l->count + 1) * sizeof *phrases);
    if (phrases) l->phrases = phrases;
    size_t *lengths = phrases ? realloc(l->lengths, (l->count + 1) * sizeof *lengths) : NULL;
    if (lengths) l->lengths = lengths;
    if (!copy || !phrases || !lengths) {
        free(copy);
        return tga_error(TGA_ERR_NOMEM, "out of memory reading refusal phrases");
    }
    for (size_t i = 0; i < len; i++)
        copy[i] = ascii_lower(text[i]);
    copy[len] = '\0';
    l->phrases[l->count] = copy;
    l->lengths[l->count++] = len;
    return TGA_OK;
}

/* One phrase per line (LF; a CR before it is dropped); the final newline ends the last line. */
static tga_status parse_phrases(const char *path, const char *text, size_t n, phrase_list *l) {
    size_t line = 1;
    for (size_t start = 0; start < n; line++) {
        const char *nl = memchr(text + start, '\n', n - start);
        size_t end = nl ? (size_t)(nl - text) : n, len = end - start;
        if (len > 0 && text[start + len - 1] == '\r') len--;
        TGA_TRY(check_phrase(path, line, text + start, len));
        TGA_TRY(add_phrase(l, text + start, len));
        start = end + 1;
    }
    if (l->count == 0) return tga_error(TGA_ERR_FORMAT, "%s: no phrases", path);
    return TGA_OK;
}

static tga_status load_phrases(const char *dir, const char *name, phrase_list *l) {
    char path[4200];
    snprintf(path, sizeof path, "%s/refusals/%s", dir, name);
    void *data = NULL;
    size_t n = 0;
    tga_status st = tga_file_read_all(path, PHRASE_FILE_MAX, &data, &n);
    if (st == TGA_ERR_IO)
        return tga_error_replace(TGA_ERR_CONFIG,
                                 "cannot read the refusal phrase file %s (set TGA_ASSETS to the "
                                 "shared assets folder)",
                                 path);
    TGA_TRY(st);
    st = parse_phrases(path, data, n, l);
    free(data);
    return st;
}

tga_status tga_refusal_load(const char *assets_dir, tga_refusal_detector **out) {
    *out = NULL;
    char dir[4096];
    if (assets_dir)
        snprintf(dir, sizeof dir, "%s", assets_dir);
    else
        TGA_TRY(tga_refusal_assets_dir(dir, sizeof dir));
    tga_refusal_detector *d = calloc(1, sizeof *d);
    if (!d) return tga_error(TGA_ERR_NOMEM, "out of memory");
    tga_status st = load_phrases(dir, TGA_REFUSAL_PREFIXES_FILE, &d->prefixes);
    if (st == TGA_OK) st = load_phrases(dir, TGA_REFUSAL_SUBSTRINGS_FILE, &d->substrings);
    if (st != TGA_OK) {
        tga_refusal_free(d);
        return st;
    }
    *out = d;
    return TGA_OK;
}

void tga_refusal_free(tga_refusal_detector *d) {
    if (!d) return;
    phrase_list_free(&d->prefixes);
    phrase_list_free(&d->substrings);
    free(d);
}

size_t tga_refusal_prefix_count(const tga_refusal_detector *d) { return d->prefixes.count; }
size_t tga_refusal_substring_count(const tga_refusal_detector *d) { return d->substrings.count; }

/* ---- the JavaScript string operations ---------------------------------------------------------- */

/* The code point of a valid UTF-8 sequence at s (its length in *len), or -1 (*len = 1). */
static int32_t utf8_decode(const unsigned char *s, size_t n, size_t *len) {
    *len = 1;
    if (s[0] < 0x80) return s[0];
    size_t need = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (need == 0 || need > n || s[0] > 0xf4) return -1;
    int32_t cp = s[0] & (0x7f >> need);
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80) return -1;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    static const int32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[need] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return -1;
    *len = need;
    return cp;
}

/* What String.prototype.trim removes: WhiteSpace (TAB, VT, FF, ZWNBSP, category Zs) and
 * LineTerminator (LF, CR, LS, PS). U+0085 and U+180E are not among them. */
static int is_js_space(int32_t cp) {
    return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
           cp == 0x3000 || cp == 0xfeff;
}

static void js_trim(const char *text, size_t len, size_t *begin, size_t *end) {
    const unsigned char *s = (const unsigned char *)text;
    *begin = len;
    *end = 0;
    for (size_t i = 0, n; i < len; i += n) {
        int32_t cp = utf8_decode(s + i, len - i, &n);
        if (is_js_space(cp)) continue;
        if (*begin == len) *begin = i;
        *end = i + n;
    }
    if (*begin == len) *begin = *end = 0;
}

/* toLowerCase() then normalizeApostrophes(), keeping only what can change an ASCII match: other
 * non-ASCII characters stay as they are (their lower case is non-ASCII too: non-word bytes). */
static size_t js_lower_normalize(const char *text, size_t len, char *out) {
    const unsigned char *s = (const unsigned char *)text;
    size_t o = 0;
    for (size_t i = 0, n; i < len; i += n) {
        int32_t cp = utf8_decode(s + i, len - i, &n);
        if (cp == 0x130) { /* LATIN CAPITAL LETTER I WITH DOT ABOVE -> "i" + COMBINING DOT ABOVE */
            memcpy(out + o, "i\xcc\x87", 3);
            o += 3;
        } else if (cp == 0x212a) { /* KELVIN SIGN */
            out[o++] = 'k';
        } else if (cp == 0x2019 || cp == 0x2032) { /* RIGHT SINGLE QUOTATION MARK, PRIME */
            out[o++] = '\'';
        } else if (n == 1) {
            out[o++] = ascii_lower(text[i]);
        } else {
            memcpy(out + o, text + i, n);
            o += n;
        }
    }
    return o;
}

static int is_word_byte(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* \b at position i of s: the characters on either side differ in being word characters. */
static int at_word_boundary(const char *s, size_t n, size_t i) {
    int before = i > 0 && is_word_byte((unsigned char)s[i - 1]);
    int after = i < n && is_word_byte((unsigned char)s[i]);
    return before != after;
}

static int contains_bounded(const char *s, size_t n, const char *phrase, size_t len) {
    for (size_t i = 0; i + len <= n; i++)
        if (memcmp(s + i, phrase, len) == 0 && at_word_boundary(s, n, i) && at_word_boundary(s, n, i + len))
            return 1;
    return 0;
}

tga_status tga_refusal_check(const tga_refusal_detector *d, const char *text, size_t len, bool *is_refusal) {
    *is_refusal = false;
    size_t begin, end;
    js_trim(text, len, &begin, &end);
    /* each character grows by at most half its UTF-8 length (U+0130: 2 bytes -> 3) */
    char *norm = malloc((end - begin) * 3 / 2 + 1);
    if (!norm)
        return tga_error(TGA_ERR_NOMEM, "out of memory checking a response of %zu bytes for a refusal", len);
    size_t n = js_lower_normalize(text + begin, end - begin, norm);
    bool refusal = false;
    for (size_t i = 0; i < d->prefixes.count && !refusal; i++)
        refusal =
            d->prefixes.lengths[i] <= n && memcmp(norm, d->prefixes.phrases[i], d->prefixes.lengths[i]) == 0;
    for (size_t i = 0; i < d->substrings.count && !refusal; i++)
        refusal = contains_bounded(norm, n, d->substrings.phrases[i], d->substrings.lengths[i]);
    free(norm);
    *is_refusal = refusal;
    return TGA_OK;
}
