#define _POSIX_C_SOURCE 200809L /* strdup */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/tokenizer_internal.h"

/* ---- the object and its vocabulary ---------------------------------------------------------- */

tga_status tok_create(const char *source, tok_kind kind, size_t n_tokens, tga_tokenizer **out) {
    *out = NULL;
    if (n_tokens == 0 || n_tokens > INT32_MAX)
        return tga_error(TGA_ERR_FORMAT, "%s: vocabulary size %zu is out of range [1, %d]", source, n_tokens,
                         INT32_MAX);
    tga_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return tga_error(TGA_ERR_NOMEM, "out of memory");
    t->source = strdup(source);
    t->tokens = calloc(n_tokens, sizeof *t->tokens);
    if (!t->source || !t->tokens) {
        tga_tokenizer_free(t);
        return tga_error(TGA_ERR_NOMEM, "%s: out of memory for %zu tokens", source, n_tokens);
    }
    t->kind = kind;
    t->n_tokens = n_tokens;
    t->bos = t->eos = t->pad = t->unk = -1;
    memset(t->byte_token, 0xff, sizeof t->byte_token); /* -1 */
    *out = t;
    return TGA_OK;
}

void tga_tokenizer_free(tga_tokenizer *t) {
    if (!t) return;
    for (size_t i = 0; t->tokens && i < t->n_tokens; i++) {
        if (t->tokens[i].bytes != t->tokens[i].text) free(t->tokens[i].bytes);
        free(t->tokens[i].text);
    }
    for (int i = 0; i < t->n_splits; i++)
        pcre2_code_free(t->splits[i].re);
    free(t->tokens);
    free(t->index.slots);
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.merged);
    free(t->score_rank);
    free(t->specials);
    free(t->source);
    free(t);
}

tga_status tok_set_token(tga_tokenizer *t, size_t id, const char *text, size_t len) {
    if (id >= t->n_tokens)
        return tga_error(TGA_ERR_FORMAT, "%s: token id %zu is out of range", t->source, id);
    if (t->tokens[id].text)
        return tga_error(TGA_ERR_FORMAT, "%s: token id %zu is given twice ('%s' and '%.*s')", t->source, id,
                         t->tokens[id].text, (int)(len > 64 ? 64 : len), text);
    if (len > UINT32_MAX / 2) return tga_error(TGA_ERR_FORMAT, "%s: token %zu is too long", t->source, id);
    char *copy = malloc(len + 1);
    if (!copy) return tga_error(TGA_ERR_NOMEM, "out of memory");
    memcpy(copy, text, len);
    copy[len] = '\0';
    t->tokens[id].text = copy;
    t->tokens[id].len = (uint32_t)len;
    return TGA_OK;
}

/* FNV-1a: tokens and pre-tokenizer pieces are short, so a byte loop is fast enough. */
uint64_t tok_hash(const void *data, size_t len) {
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3u;
    return h;
}

static bool same_text(const tok_token *tok, const char *text, size_t len) {
    return tok->len == len && memcmp(tok->text, text, len) == 0;
}

int32_t tok_lookup(const tga_tokenizer *t, const char *text, size_t len) {
    for (size_t i = tok_hash(text, len) & t->index.mask;; i = (i + 1) & t->index.mask) {
        uint32_t slot = t->index.slots[i];
        if (slot == 0) return -1;
        if (same_text(&t->tokens[slot - 1], text, len)) return (int32_t)(slot - 1);
    }
}

tga_status tok_build_index(tga_tokenizer *t) {
    size_t cap = 16;
    while (cap < 2 * t->n_tokens)
        cap *= 2;
    t->index.slots = calloc(cap, sizeof *t->index.slots);
    if (!t->index.slots) return tga_error(TGA_ERR_NOMEM, "out of memory");
    t->index.mask = cap - 1;
    for (size_t id = 0; id < t->n_tokens; id++) {
        const tok_token *tok = &t->tokens[id];
        if (!tok->text)
            return tga_error(TGA_ERR_FORMAT, "%s: token id %zu is missing (ids must be 0..%zu without gaps)",
                             t->source, id, t->n_tokens - 1);
        size_t i = tok_hash(tok->text, tok->len) & t->index.mask;
        for (; t->index.slots[i]; i = (i + 1) & t->index.mask)
            if (same_text(&t->tokens[t->index.slots[i] - 1], tok->text, tok->len))
                return tga_error(TGA_ERR_FORMAT, "%s: token '%s' appears twice (ids %u and %zu)", t->source,
                                 tok->text, t->index.slots[i] - 1, id);
        t->index.slots[i] = (uint32_t)id + 1;
    }
    return TGA_OK;
}

size_t tok_utf8_len(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    size_t len = c < 0x80                 ? 1
                 : c >= 0xC2 && c <= 0xDF ? 2
                 : c >= 0xE0 && c <= 0xEF ? 3
                 : c >= 0xF0 && c <= 0xF4 ? 4
                                          : 0;
    if (len <= 1 || len > n) return 1;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 1;
    /* overlong 3- and 4-byte forms, UTF-16 surrogates and code points past U+10FFFF */
    if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0) || (c == 0xF0 && s[1] < 0x90) ||
        (c == 0xF4 && s[1] >= 0x90))
        return 1;
    return len;
}

tga_status tok_read_file(const char *path, char **data, size_t *len) {
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return tga_error(TGA_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        char *grown = realloc(buf, cap * 2);
        if (!grown) free(buf);
        buf = grown;
        cap *= 2;
    }
    bool failed = !buf || ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        return buf ? tga_error(TGA_ERR_IO, "%s: read failed", path)
                   : tga_error(TGA_ERR_NOMEM, "%s: out of memory", path);
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return TGA_OK;
}

/* ---- special tokens ------------------------------------------------------------------------- */

static int32_t first_present(const tga_tokenizer *t, const char *const *names) {
    for (; *names; names++) {
        int32_t id = tok_lookup(t, *names, strlen(*names));
        if (id >= 0) return id;
    }
    return -1;
}

static void default_special_ids(tga_tokenizer *t) {
    static const char *const bos[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>", NULL};
    static const char *const eos[] = {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", NULL};
    static const char *const pad[] = {"<pad>", "<|pad|>", "[PAD]", NULL};
    static const char *const unk[] = {"<unk>", "[UNK]", "<|unk|>", NULL};
    if (t->bos < 0) t->bos = first_present(t, bos);
    if (t->eos < 0) t->eos = first_present(t, eos);
    if (t->pad < 0) t->pad = first_present(t, pad);
    if (t->unk < 0) t->unk = first_present(t, unk);
}

typedef struct {
    uint32_t len;
    int32_t id;
} special_order;

static int longer_first(const void *a, const void *b) {
    const special_order *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Longest first, so that where two specials match at one place the longer wins (as HF's
 * leftmost-longest matcher does). */
static tga_status order_specials(tga_tokenizer *t) {
    size_t n = 0;
    for (size_t id = 0; id < t->n_tokens; id++)
        n += t->tokens[id].special && t->tokens[id].len > 0;
    special_order *order = malloc((n + 1) * sizeof *order);
    t->specials = malloc((n + 1) * sizeof *t->specials);
    if (!order || !t->specials) {
        free(order);
        return tga_error(TGA_ERR_NOMEM, "out of memory");
    }
    for (size_t id = 0; id < t->n_tokens; id++)
        if (t->tokens[id].special && t->tokens[id].len > 0) {
            order[t->n_specials++] = (special_order){t->tokens[id].len, (int32_t)id};
            t->special_first_byte[(uint8_t)t->tokens[id].text[0]] = true;
        }
    qsort(order, t->n_specials, sizeof *order, longer_first);
    for (size_t i = 0; i < t->n_specials; i++)
        t->specials[i] = order[i].id;
    free(order);
    return TGA_OK;
}

static tga_status word_decode_table(tga_tokenizer *t) {
    for (size_t id = 0; id < t->n_tokens; id++) {
        t->tokens[id].bytes = t->tokens[id].text;
        t->tokens[id].n_bytes = t->tokens[id].len;
    }
    return TGA_OK;
}

tga_status tok_finish(tga_tokenizer *t) {
    if (!t->index.slots) TGA_TRY(tok_build_index(t));
    switch (t->kind) {
    case TOK_BYTE_BPE:
        TGA_TRY(tok_byte_level_decode_table(t));
        break;
    case TOK_SPM_BPE:
        TGA_TRY(tok_spm_decode_table(t));
        break;
    case TOK_WORD:
        TGA_TRY(word_decode_table(t));
        break;
    }
    default_special_ids(t);
    return order_specials(t);
}

tga_status tok_missing_unk(const tga_tokenizer *t, const char *what) {
    return tga_error(TGA_ERR_FORMAT,
                     "%s: cannot encode %s: the vocabulary has no token for it and no unk token", t->source,
                     what);
}

/* ---- encoding --------------------------------------------------------------------------------- */

tga_status tok_push_id(tok_encoder *e, int32_t id) {
    if (e->n == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 256;
        int32_t *grown = realloc(e->ids, cap * sizeof *grown);
        if (!grown) return tga_error(TGA_ERR_NOMEM, "out of memory for %zu token ids", cap);
        e->ids = grown;
        e->cap = cap;
    }
    e->ids[e->n++] = id;
    return TGA_OK;
}

tga_status tok_push_byte(tok_encoder *e, uint8_t byte) {
    int32_t id = e->t->byte_token[byte] >= 0 ? e->t->byte_token[byte] : e->t->unk;
    if (id < 0) {
        char what[32];
        snprintf(what, sizeof what, "byte 0x%02X", byte);
        return tok_missing_unk(e->t, what);
    }
    return tok_push_id(e, id);
}

tga_status tok_reserve(tok_buffer *b, size_t n) {
    if (n <= b->cap) return TGA_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < n)
        cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown) return tga_error(TGA_ERR_NOMEM, "out of memory for %zu bytes of encoder state", n);
    b->data = grown;
    b->cap = cap;
    return TGA_OK;
}

static tga_status encode_segment(tok_encoder *e, const char *text, size_t len, bool at_text_start) {
    if (len == 0) return TGA_OK;
    switch (e->t->kind) {
    case TOK_BYTE_BPE:
        return tok_byte_bpe_segment(e, text, len);
    case TOK_SPM_BPE:
        return tok_spm_segment(e, text, len, at_text_start);
    case TOK_WORD:
        return tok_word_segment(e, text, len);
    }
    return tga_error(TGA_ERR_INTERNAL, "unknown tokenizer kind");
}

static int32_t special_at(const tga_tokenizer *t, const char *text, size_t left) {
    if (!t->special_first_byte[(uint8_t)text[0]]) return -1;
    for (size_t i = 0; i < t->n_specials; i++) {
        const tok_token *tok = &t->tokens[t->specials[i]];
        if (tok->len <= left && memcmp(tok->text, text, tok->len) == 0) return t->specials[i];
    }
    return -1;
}

static tga_status encode_with_specials(tok_encoder *e, const char *text, size_t len) {
    size_t segment = 0;
    for (size_t i = 0; i < len;) {
        int32_t id = special_at(e->t, text + i, len - i);
        if (id < 0) {
            i++;
            continue;
        }
        TGA_TRY(encode_segment(e, text + segment, i - segment, segment == 0));
        TGA_TRY(tok_push_id(e, id));
        i += e->t->tokens[id].len;
        segment = i;
    }
    return encode_segment(e, text + segment, len - segment, segment == 0);
}

tga_status tga_tokenizer_encode(const tga_tokenizer *t, const char *text, size_t len, unsigned flags,
                                int32_t **ids, size_t *n) {
    if (!t || !ids || !n || (!text && len > 0))
        return tga_error(TGA_ERR_INTERNAL, "tga_tokenizer_encode: NULL argument");
    *ids = NULL;
    *n = 0;
    tok_encoder e = {.t = t};
    tga_status st = tok_push_id(&e, 0); /* so that *ids is never NULL, even for an empty text */
    e.n = 0;
    if (st == TGA_OK)
        st = (flags & TGA_TOK_PARSE_SPECIAL) ? encode_with_specials(&e, text, len)
                                             : encode_segment(&e, text, len, true);
    tok_encoder_free(&e);
    if (st != TGA_OK) {
        free(e.ids);
        return st;
    }
    *ids = e.ids;
    *n = e.n;
    return TGA_OK;
}

/* ---- decoding --------------------------------------------------------------------------------- */

tga_status tga_tokenizer_decode(const tga_tokenizer *t, const int32_t *ids, size_t n, char **text,
                                size_t *len) {
    if (!t || !text || !len || (!ids && n > 0))
        return tga_error(TGA_ERR_INTERNAL, "tga_tokenizer_decode: NULL argument");
    *text = NULL;
    *len = 0;
    bool spaced = t->kind == TOK_WORD;
    size_t total = 1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= t->n_tokens)
            return tga_error(TGA_ERR_FORMAT,
                             "token id %d at position %zu is outside the vocabulary [0, %zu) of %s", ids[i],
                             i, t->n_tokens, t->source);
        total += t->tokens[ids[i]].n_bytes + spaced;
    }
    char *out = malloc(total);
    if (!out) return tga_error(TGA_ERR_NOMEM, "out of memory for %zu decoded bytes", total);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const tok_token *tok = &t->tokens[ids[i]];
        if (spaced && i > 0) out[k++] = ' ';
        memcpy(out + k, tok->bytes, tok->n_bytes);
        k += tok->n_bytes;
    }
    /* the dummy prefix that encode added (HF's Strip decoder / Metaspace decoder) */
    size_t skip = t->kind == TOK_SPM_BPE && t->prepend != TOK_PREPEND_NEVER && k > 0 && out[0] == ' ';
    memmove(out, out + skip, k - skip);
    out[k - skip] = '\0';
    *text = out;
    *len = k - skip;
    return TGA_OK;
}

/* ---- accessors -------------------------------------------------------------------------------- */

size_t tga_tokenizer_vocab_size(const tga_tokenizer *t) { return t->n_tokens; }

const char *tga_tokenizer_kind_name(const tga_tokenizer *t) {
    switch (t->kind) {
    case TOK_BYTE_BPE:
        return "byte-level BPE";
    case TOK_SPM_BPE:
        return "SentencePiece BPE";
    case TOK_WORD:
        return "word level";
    }
    return "unknown";
}

int32_t tga_tokenizer_find(const tga_tokenizer *t, const char *token) {
    return tok_lookup(t, token, strlen(token));
}
int32_t tga_tokenizer_bos(const tga_tokenizer *t) { return t->bos; }
int32_t tga_tokenizer_eos(const tga_tokenizer *t) { return t->eos; }
int32_t tga_tokenizer_pad(const tga_tokenizer *t) { return t->pad; }
int32_t tga_tokenizer_unk(const tga_tokenizer *t) { return t->unk; }

/* ---- loading: which kind of file is it? ------------------------------------------------------- */

static bool is_file(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 && S_ISREG(info.st_mode);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s%s%s", dir, ends_with(dir, "/") ? "" : "/", name);
    return p;
}

/* A vocabulary file and the merges file that must lie beside it. */
static tga_status load_vocab_and_merges(const char *vocab, const char *merges, tga_tokenizer **out) {
    if (!is_file(merges))
        return tga_error(TGA_ERR_IO,
                         "%s: missing merges file %s (a BPE vocabulary needs its merges beside it)", vocab,
                         merges);
    return tok_load_gpt2_files(vocab, merges, out);
}

static tga_status load_folder(const char *dir, tga_tokenizer **out) {
    /* in order of preference; the second name is the merges file that must lie beside the first */
    static const char *const candidates[][2] = {
        {"tokenizer.json", NULL}, {"encoder.json", "vocab.bpe"}, {"vocab.json", "merges.txt"}};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        char *path = join_path(dir, candidates[i][0]);
        char *merges = candidates[i][1] ? join_path(dir, candidates[i][1]) : NULL;
        if (!path || (candidates[i][1] && !merges)) {
            free(path);
            return tga_error(TGA_ERR_NOMEM, "out of memory");
        }
        bool found = is_file(path);
        tga_status st = !found   ? TGA_OK
                        : merges ? load_vocab_and_merges(path, merges, out)
                                 : tok_load_hf_json(path, out);
        free(path);
        free(merges);
        if (found) return st;
    }
    return tga_error(TGA_ERR_IO,
                     "%s: no tokenizer in this folder (looked for tokenizer.json, encoder.json + vocab.bpe, "
                     "vocab.json + merges.txt)",
                     dir);
}

static bool has_gguf_magic(const char *path) {
    char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    size_t n = fread(magic, 1, 4, f);
    fclose(f);
    return n == 4 && memcmp(magic, "GGUF", 4) == 0;
}

static tga_status load_file(const char *path, tga_tokenizer **out) {
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    bool gpt2_vocab = strcmp(base, "encoder.json") == 0 || strcmp(base, "vocab.json") == 0;
    if (gpt2_vocab) {
        size_t dir_len = (size_t)(base - path);
        char *merges = malloc(dir_len + 16);
        if (!merges) return tga_error(TGA_ERR_NOMEM, "out of memory");
        snprintf(merges, dir_len + 16, "%.*s%s", (int)dir_len, path,
                 strcmp(base, "encoder.json") == 0 ? "vocab.bpe" : "merges.txt");
        tga_status st = load_vocab_and_merges(path, merges, out);
        free(merges);
        return st;
    }
    if (ends_with(path, ".gguf") || has_gguf_magic(path)) return tok_load_gguf(path, out);
    if (ends_with(path, ".json")) return tok_load_hf_json(path, out);
    if (ends_with(path, ".txt")) return tok_load_word_list(path, out);
    return tga_error(TGA_ERR_FORMAT,
                     "%s: unknown tokenizer file type (expected a folder, a tokenizer.json, a *.gguf "
                     "file or a *.txt word list)",
                     path);
}

tga_status tga_tokenizer_load(const char *path, tga_tokenizer **out) {
    if (!path || !out) return tga_error(TGA_ERR_INTERNAL, "tga_tokenizer_load: NULL argument");
    *out = NULL;
    struct stat info;
    if (stat(path, &info) != 0)
        return tga_error(TGA_ERR_IO, "cannot open tokenizer %s: %s", path, strerror(errno));
    return S_ISDIR(info.st_mode) ? load_folder(path, out) : load_file(path, out);
}
