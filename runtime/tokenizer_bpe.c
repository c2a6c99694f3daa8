/* BPE: the regex pre-tokenizer, GPT-2's byte alphabet, the merge table and the merge loop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer_internal.h"

/* OpenAI's GPT-2 pre-tokenizer (encoder.py), also HF's ByteLevel(use_regex=true). */
const char tok_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- regexes ---------------------------------------------------------------------------------- */

/* The patterns come from Python's `regex` module (GPT-2) and Oniguruma (HF tokenizers), whose
 * classes differ from PCRE2's: `\s` there is Unicode White_Space (PCRE2 adds U+180E), and `\w` is
 * Alphabetic + marks + Nd + Pc + ZWNJ/ZWJ (PCRE2 uses letters + all numbers + '_'). Checked code
 * point by code point against `regex` 2026.11 and tokenizers 0.21 over all of Unicode 14. */
#define WHITE_SPACE                                                                                          \
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define WORD_CHAR "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}"

static const char *class_replacement(char escape, bool in_class) {
    switch (escape) {
    case 's':
        return in_class ? WHITE_SPACE : "[" WHITE_SPACE "]";
    case 'w':
        return in_class ? WORD_CHAR : "[" WORD_CHAR "]";
    /* a negated class cannot be spliced into another class; there PCRE2's own \S, \W stand */
    case 'S':
        return in_class ? NULL : "[^" WHITE_SPACE "]";
    case 'W':
        return in_class ? NULL : "[^" WORD_CHAR "]";
    }
    return NULL;
}

/* Rewrites \s \S \w \W as explicit classes; everything else is copied. *out is malloc'ed. */
static tga_status rewrite_pattern(const char *pattern, char **out) {
    size_t n = strlen(pattern), k = 0;
    char *p = malloc(n * (sizeof "[^" WORD_CHAR "]") + 1);
    if (!p) return tga_error(TGA_ERR_NOMEM, "out of memory");
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        const char *with =
            pattern[i] == '\\' && i + 1 < n ? class_replacement(pattern[i + 1], in_class) : NULL;
        if (with) {
            k += (size_t)sprintf(p + k, "%s", with);
            i++;
            continue;
        }
        p[k++] = pattern[i];
        if (pattern[i] == '\\' && i + 1 < n) {
            p[k++] = pattern[++i];
        } else if (!in_class && pattern[i] == '[') {
            in_class = true;
            /* a ']' right after '[' or '[^' is a literal member */
            if (i + 1 < n && pattern[i + 1] == '^') p[k++] = pattern[++i];
            if (i + 1 < n && pattern[i + 1] == ']') p[k++] = pattern[++i];
        } else if (in_class && pattern[i] == ']') {
            in_class = false;
        }
    }
    p[k] = '\0';
    *out = p;
    return TGA_OK;
}

tga_status tok_add_split(tga_tokenizer *t, const char *pattern, bool keep_matches, bool keep_gaps) {
    if (t->n_splits == TOK_MAX_SPLITS)
        return tga_error(TGA_ERR_FORMAT, "%s: more than %d pre-tokenizer stages", t->source, TOK_MAX_SPLITS);
    if (!pattern) {
        t->splits[t->n_splits++] = (tok_split){NULL, true, true, false};
        return TGA_OK;
    }
    char *rewritten;
    TGA_TRY(rewrite_pattern(pattern, &rewritten));
    int code;
    PCRE2_SIZE offset;
    /* MATCH_INVALID_UTF: bytes that are not UTF-8 never match, so they end up in the gaps */
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)rewritten, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &offset, NULL);
    free(rewritten);
    if (!re) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(code, message, sizeof message);
        return tga_error(TGA_ERR_FORMAT, "%s: pre-tokenizer regex '%s' does not compile (offset %zu): %s",
                         t->source, pattern, (size_t)offset, (const char *)message);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* without JIT, pcre2_match interprets */
    t->splits[t->n_splits++] = (tok_split){re, keep_matches, keep_gaps, false};
    return TGA_OK;
}

static int match_at(tok_encoder *e, int stage, const char *text, size_t len, size_t pos) {
    const tok_split *sp = &e->t->splits[stage];
    int rc = pcre2_match(sp->re, (PCRE2_SPTR)text, len, pos, 0, e->match[stage], NULL);
    /* the JIT's fixed stack can run out where the interpreter's growing heap does not */
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(sp->re, (PCRE2_SPTR)text, len, pos, PCRE2_NO_JIT, e->match[stage], NULL);
    return rc;
}

static tga_status prefix_space(tok_buffer *b, const char **text, size_t *len) {
    TGA_TRY(tok_reserve(b, *len + 1));
    b->data[0] = ' ';
    memcpy(b->data + 1, *text, *len);
    *text = b->data;
    (*len)++;
    return TGA_OK;
}

tga_status tok_split_pieces(tok_encoder *e, int stage, const char *text, size_t len, tok_piece_fn piece) {
    if (len == 0) return TGA_OK;
    if (stage == e->t->n_splits) return piece(e, text, len);
    const tok_split *sp = &e->t->splits[stage];
    if (sp->prefix_space && text[0] != ' ') TGA_TRY(prefix_space(&e->prefixed[stage], &text, &len));
    if (!sp->re) return tok_split_pieces(e, stage + 1, text, len, piece);
    if (!e->match[stage] && !(e->match[stage] = pcre2_match_data_create_from_pattern(sp->re, NULL)))
        return tga_error(TGA_ERR_NOMEM, "out of memory");
    size_t gap = 0, pos = 0;
    while (pos < len) {
        int rc = match_at(e, stage, text, len, pos);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR message[256];
            pcre2_get_error_message(rc, message, sizeof message);
            return tga_error(TGA_ERR_INTERNAL, "%s: pre-tokenizer regex failed: %s", e->t->source,
                             (const char *)message);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->match[stage]);
        if (ov[1] == ov[0]) { /* an empty match splits nothing: look again one character on */
            pos = ov[0] + (ov[0] < len ? tok_utf8_len((const uint8_t *)text + ov[0], len - ov[0]) : 1);
            continue;
        }
        if (sp->keep_gaps) TGA_TRY(tok_split_pieces(e, stage + 1, text + gap, ov[0] - gap, piece));
        if (sp->keep_matches) TGA_TRY(tok_split_pieces(e, stage + 1, text + ov[0], ov[1] - ov[0], piece));
        gap = pos = ov[1];
    }
    return sp->keep_gaps ? tok_split_pieces(e, stage + 1, text + gap, len - gap, piece) : TGA_OK;
}

/* ---- GPT-2's byte alphabet -------------------------------------------------------------------- */

/* bytes_to_unicode() of encoder.py: printable Latin-1 bytes stand for themselves, the other 68
 * bytes map in increasing order to U+0100.. */
static uint32_t byte_symbol(uint8_t b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    uint32_t n = 0;
    for (uint32_t c = 0; c < b; c++)
        n += !((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE);
    return 256 + n;
}

static size_t put_utf8(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6)); /* the alphabet stops at U+0143: two bytes at most */
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

void tok_init_byte_level(tga_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char sym[2];
        t->byte_token[b] = tok_lookup(t, sym, put_utf8(byte_symbol((uint8_t)b), sym));
    }
}

/* The bytes a token's spelling stands for; false if a character is outside the alphabet. */
static bool unmap_bytes(const int16_t *byte_of, const tok_token *tok, char *out, uint32_t *n) {
    const uint8_t *s = (const uint8_t *)tok->text;
    *n = 0;
    for (uint32_t i = 0; i < tok->len;) {
        size_t len = tok_utf8_len(s + i, tok->len - i);
        uint32_t cp = len == 1 ? s[i] : len == 2 ? (uint32_t)(s[i] & 0x1F) << 6 | (s[i + 1] & 0x3F) : 0xFFFF;
        if ((len == 1 && s[i] >= 0x80) || cp >= 324 || byte_of[cp] < 0) return false;
        out[(*n)++] = (char)byte_of[cp];
        i += (uint32_t)len;
    }
    return true;
}

tga_status tok_byte_level_decode_table(tga_tokenizer *t) {
    int16_t byte_of[324];
    memset(byte_of, 0xff, sizeof byte_of);
    for (int b = 0; b < 256; b++)
        byte_of[byte_symbol((uint8_t)b)] = (int16_t)b;
    for (size_t id = 0; id < t->n_tokens; id++) {
        tok_token *tok = &t->tokens[id];
        char *bytes = malloc(tok->len + 1);
        if (!bytes) return tga_error(TGA_ERR_NOMEM, "out of memory");
        /* special tokens, and tokens outside the alphabet, decode as they are spelled (as HF) */
        if (tok->special || !unmap_bytes(byte_of, tok, bytes, &tok->n_bytes)) {
            free(bytes);
            bytes = tok->text;
            tok->n_bytes = tok->len;
        }
        tok->bytes = bytes;
    }
    return TGA_OK;
}

/* ---- the merge table -------------------------------------------------------------------------- */

static size_t pair_slot(const tok_pair_map *m, uint64_t key) {
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15u) >> 20) & m->mask;
    while (m->keys[i] != TOK_NO_PAIR && m->keys[i] != key)
        i = (i + 1) & m->mask;
    return i;
}

static uint64_t pair_key(int32_t left, int32_t right) {
    return (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
}

tga_status tok_init_merges(tga_tokenizer *t, size_t n_merges) {
    size_t cap = 16;
    while (cap < 2 * n_merges + 2)
        cap *= 2;
    tok_pair_map *m = &t->merges;
    m->keys = malloc(cap * sizeof *m->keys);
    m->rank = malloc(cap * sizeof *m->rank);
    m->merged = malloc(cap * sizeof *m->merged);
    if (!m->keys || !m->rank || !m->merged)
        return tga_error(TGA_ERR_NOMEM, "%s: out of memory for merges", t->source);
    memset(m->keys, 0xff, cap * sizeof *m->keys);
    m->mask = cap - 1;
    t->merge_mode = TOK_MERGE_BY_RANK;
    return TGA_OK;
}

static tga_status merge_part(const tga_tokenizer *t, const char *text, size_t len, uint32_t rank,
                             int32_t *id) {
    *id = tok_lookup(t, text, len);
    if (*id < 0)
        return tga_error(TGA_ERR_FORMAT, "%s: merge %u: '%.*s' is not in the vocabulary", t->source, rank,
                         (int)(len > 100 ? 100 : len), text);
    return TGA_OK;
}

/* A later duplicate of a pair replaces the earlier one, as in encoder.py's dict and HF's map. */
tga_status tok_add_merge(tga_tokenizer *t, const char *left, size_t left_len, const char *right,
                         size_t right_len, uint32_t rank) {
    tok_pair_map *m = &t->merges;
    if (2 * (m->count + 1) > m->mask + 1)
        return tga_error(TGA_ERR_INTERNAL, "%s: more merges than announced", t->source);
    int32_t a, b, merged;
    TGA_TRY(merge_part(t, left, left_len, rank, &a));
    TGA_TRY(merge_part(t, right, right_len, rank, &b));
    char *joined = malloc(left_len + right_len + 1);
    if (!joined) return tga_error(TGA_ERR_NOMEM, "out of memory");
    memcpy(joined, left, left_len);
    memcpy(joined + left_len, right, right_len);
    tga_status st = merge_part(t, joined, left_len + right_len, rank, &merged);
    free(joined);
    TGA_TRY(st);
    size_t i = pair_slot(m, pair_key(a, b));
    m->count += m->keys[i] == TOK_NO_PAIR;
    m->keys[i] = pair_key(a, b);
    m->rank[i] = rank;
    m->merged[i] = merged;
    return TGA_OK;
}

/* ---- the merge loop --------------------------------------------------------------------------- */

typedef struct {
    int32_t id;          /* -1: a character without a token (merging by score only) */
    uint32_t start, len; /* bytes of the piece; len 0 once merged into its left neighbour */
    int32_t prev, next;
} bpe_symbol;

typedef struct {
    uint32_t rank, left, right;
    int32_t left_id, right_id, merged;
} bpe_candidate;

static bool before(const bpe_candidate *a, const bpe_candidate *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static tga_status heap_push(tok_encoder *e, size_t *n, bpe_candidate c) {
    TGA_TRY(tok_reserve(&e->heap, (*n + 1) * sizeof c));
    bpe_candidate *h = (bpe_candidate *)e->heap.data;
    size_t i = (*n)++;
    for (; i > 0 && before(&c, &h[(i - 1) / 2]); i = (i - 1) / 2)
        h[i] = h[(i - 1) / 2];
    h[i] = c;
    return TGA_OK;
}

static bpe_candidate heap_pop(tok_encoder *e, size_t *n) {
    bpe_candidate *h = (bpe_candidate *)e->heap.data, top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (size_t child; (child = 2 * i + 1) < *n; i = child) {
        if (child + 1 < *n && before(&h[child + 1], &h[child])) child++;
        if (!before(&h[child], &last)) break;
        h[i] = h[child];
    }
    h[i] = last;
    return top;
}

/* The merge of two adjacent symbols, if any: by rank from the merge table, or by the score of
 * the token their joined text spells. */
static bool find_merge(const tga_tokenizer *t, const char *piece, const bpe_symbol *l, const bpe_symbol *r,
                       uint32_t *rank, int32_t *merged) {
    if (t->merge_mode == TOK_MERGE_BY_SCORE) {
        *merged = tok_lookup(t, piece + l->start, l->len + r->len);
        if (*merged < 0) return false;
        *rank = t->score_rank[*merged];
        return true;
    }
    if (l->id < 0 || r->id < 0) return false;
    size_t i = pair_slot(&t->merges, pair_key(l->id, r->id));
    if (t->merges.keys[i] == TOK_NO_PAIR) return false;
    *rank = t->merges.rank[i];
    *merged = t->merges.merged[i];
    return true;
}

static tga_status consider(tok_encoder *e, const char *piece, size_t *n_heap, int32_t left) {
    const bpe_symbol *s = (const bpe_symbol *)e->symbols.data;
    int32_t right = s[left].next;
    bpe_candidate c = {.left = (uint32_t)left, .right = (uint32_t)right, .left_id = s[left].id};
    if (right < 0 || !find_merge(e->t, piece, &s[left], &s[right], &c.rank, &c.merged)) return TGA_OK;
    c.right_id = s[right].id;
    return heap_push(e, n_heap, c);
}

/* Lowest rank first, leftmost first among equals: HF's and llama.cpp's order, which equals
 * encoder.py's "merge every occurrence of the best pair, then look again" for merge tables in
 * which a pair's parts come from earlier merges. A candidate whose symbols have changed since it
 * was queued is stale and skipped. */
static tga_status merge_symbols(tok_encoder *e, const char *piece, size_t n) {
    size_t n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        TGA_TRY(consider(e, piece, &n_heap, (int32_t)i));
    while (n_heap > 0) {
        bpe_candidate c = heap_pop(e, &n_heap);
        bpe_symbol *s = (bpe_symbol *)e->symbols.data, *l = &s[c.left], *r = &s[c.right];
        if (l->len == 0 || l->next != (int32_t)c.right || l->id != c.left_id || r->id != c.right_id) continue;
        l->id = c.merged;
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) s[r->next].prev = (int32_t)c.left;
        r->len = 0;
        if (l->prev >= 0) TGA_TRY(consider(e, piece, &n_heap, l->prev));
        TGA_TRY(consider(e, piece, &n_heap, (int32_t)c.left));
    }
    return TGA_OK;
}

static tga_status add_symbol(tok_encoder *e, size_t *n, int32_t id, size_t start, size_t len) {
    TGA_TRY(tok_reserve(&e->symbols, (*n + 1) * sizeof(bpe_symbol)));
    bpe_symbol *s = (bpe_symbol *)e->symbols.data;
    s[*n] = (bpe_symbol){id, (uint32_t)start, (uint32_t)len, (int32_t)*n - 1, -1};
    if (*n > 0) s[*n - 1].next = (int32_t)*n;
    (*n)++;
    return TGA_OK;
}

/* A character without a token, before merging (HF): its <0xNN> tokens with byte fallback if all
 * exist, else unk (one unk for a run of them with fuse_unk). */
static tga_status add_unknown_char(tok_encoder *e, size_t *n, size_t start, size_t len, const char *piece) {
    const tga_tokenizer *t = e->t;
    bool bytes_known = t->byte_fallback;
    for (size_t i = 0; i < len; i++)
        bytes_known = bytes_known && t->byte_token[(uint8_t)piece[start + i]] >= 0;
    if (bytes_known) {
        for (size_t i = 0; i < len; i++)
            TGA_TRY(add_symbol(e, n, t->byte_token[(uint8_t)piece[start + i]], start + i, 1));
        return TGA_OK;
    }
    if (t->unk < 0) return tok_missing_unk(t, "a character");
    bpe_symbol *s = (bpe_symbol *)e->symbols.data;
    if (t->fuse_unk && *n > 0 && s[*n - 1].id == t->unk) {
        s[*n - 1].len += (uint32_t)len;
        return TGA_OK;
    }
    return add_symbol(e, n, t->unk, start, len);
}

/* The symbols a piece starts as: its bytes' alphabet symbols (byte-level), or its characters. */
static tga_status initial_symbols(tok_encoder *e, const char *piece, size_t len, size_t *n) {
    const tga_tokenizer *t = e->t;
    *n = 0;
    for (size_t i = 0, step; i < len; i += step) {
        if (t->kind == TOK_BYTE_BPE) {
            step = 1;
            int32_t id = t->byte_token[(uint8_t)piece[i]] >= 0 ? t->byte_token[(uint8_t)piece[i]] : t->unk;
            if (id < 0) return tok_missing_unk(t, "a byte");
            TGA_TRY(add_symbol(e, n, id, i, 1));
            continue;
        }
        step = tok_utf8_len((const uint8_t *)piece + i, len - i);
        int32_t id = tok_lookup(t, piece + i, step);
        if (id >= 0 || t->merge_mode == TOK_MERGE_BY_SCORE)
            TGA_TRY(add_symbol(e, n, id, i, step));
        else
            TGA_TRY(add_unknown_char(e, n, i, step, piece));
    }
    return TGA_OK;
}

/* The piece in the vocabulary's spelling (byte-level: mapped to the alphabet). */
static tga_status spelled(tok_encoder *e, const char *piece, size_t len, const char **text, size_t *n) {
    if (e->t->kind != TOK_BYTE_BPE) {
        *text = piece;
        *n = len;
        return TGA_OK;
    }
    TGA_TRY(tok_reserve(&e->word, 2 * len));
    size_t k = 0;
    for (size_t i = 0; i < len; i++)
        k += put_utf8(byte_symbol((uint8_t)piece[i]), e->word.data + k);
    *text = e->word.data;
    *n = k;
    return TGA_OK;
}

static tga_status encode_piece(tok_encoder *e, const char *piece, size_t len) {
    if (e->t->ignore_merges) {
        const char *text;
        size_t n;
        TGA_TRY(spelled(e, piece, len, &text, &n));
        int32_t id = tok_lookup(e->t, text, n);
        if (id >= 0) return tok_push_id(e, id);
    }
    size_t n;
    TGA_TRY(initial_symbols(e, piece, len, &n));
    TGA_TRY(merge_symbols(e, piece, n));
    for (int32_t i = 0; i >= 0;) {
        const bpe_symbol *s = &((const bpe_symbol *)e->symbols.data)[i];
        if (s->id >= 0)
            TGA_TRY(tok_push_id(e, s->id));
        else /* merging by score: a character without a token falls back to its bytes (llama.cpp) */
            for (uint32_t k = 0; k < s->len; k++)
                TGA_TRY(tok_push_byte(e, (uint8_t)piece[s->start + k]));
        i = s->next;
    }
    return TGA_OK;
}

/* ---- a cache of encoded pieces for one encode call (words repeat) ----------------------------- */

#define CACHE_MAX_PIECE 64

typedef struct {
    uint64_t hash;
    size_t key, ids;
    uint32_t key_len, n_ids;
} cache_entry;

struct tok_cache {
    uint32_t *slots; /* entry + 1 */
    size_t mask;
    cache_entry *entries;
    size_t n_entries;
    tok_buffer keys, ids;
    size_t keys_len, ids_len;
};

static const cache_entry *cache_find(const tok_cache *c, const char *piece, size_t len, uint64_t hash) {
    for (size_t i = hash & c->mask; c->slots[i]; i = (i + 1) & c->mask) {
        const cache_entry *en = &c->entries[c->slots[i] - 1];
        if (en->hash == hash && en->key_len == len && memcmp(c->keys.data + en->key, piece, len) == 0)
            return en;
    }
    return NULL;
}

static tga_status cache_grow(tok_cache *c) {
    size_t cap = c->slots ? 2 * (c->mask + 1) : 1024;
    uint32_t *slots = calloc(cap, sizeof *slots);
    cache_entry *entries = realloc(c->entries, cap / 2 * sizeof *entries);
    if (!slots || !entries) {
        free(slots);
        if (entries) c->entries = entries;
        return tga_error(TGA_ERR_NOMEM, "out of memory");
    }
    free(c->slots);
    c->slots = slots;
    c->entries = entries;
    c->mask = cap - 1;
    for (size_t k = 0; k < c->n_entries; k++) {
        size_t i = entries[k].hash & c->mask;
        while (slots[i])
            i = (i + 1) & c->mask;
        slots[i] = (uint32_t)k + 1;
    }
    return TGA_OK;
}

static tga_status cache_add(tok_cache *c, const char *piece, size_t len, uint64_t hash, const int32_t *ids,
                            size_t n_ids) {
    if (!c->slots || 2 * (c->n_entries + 1) > c->mask + 1) TGA_TRY(cache_grow(c));
    TGA_TRY(tok_reserve(&c->keys, c->keys_len + len));
    TGA_TRY(tok_reserve(&c->ids, (c->ids_len + n_ids) * sizeof *ids));
    memcpy(c->keys.data + c->keys_len, piece, len);
    memcpy(c->ids.data + c->ids_len * sizeof *ids, ids, n_ids * sizeof *ids);
    c->entries[c->n_entries] = (cache_entry){hash, c->keys_len, c->ids_len, (uint32_t)len, (uint32_t)n_ids};
    c->keys_len += len;
    c->ids_len += n_ids;
    size_t i = hash & c->mask;
    while (c->slots[i])
        i = (i + 1) & c->mask;
    c->slots[i] = (uint32_t)++c->n_entries;
    return TGA_OK;
}

tga_status tok_bpe_piece(tok_encoder *e, const char *piece, size_t len) {
    if (len > CACHE_MAX_PIECE) return encode_piece(e, piece, len);
    if (!e->cache && !(e->cache = calloc(1, sizeof *e->cache)))
        return tga_error(TGA_ERR_NOMEM, "out of memory");
    uint64_t hash = tok_hash(piece, len);
    const cache_entry *hit = e->cache->slots ? cache_find(e->cache, piece, len, hash) : NULL;
    if (hit) {
        const int32_t *ids = (const int32_t *)e->cache->ids.data + hit->ids;
        for (uint32_t i = 0; i < hit->n_ids; i++)
            TGA_TRY(tok_push_id(e, ids[i]));
        return TGA_OK;
    }
    size_t first = e->n;
    TGA_TRY(encode_piece(e, piece, len));
    return cache_add(e->cache, piece, len, hash, e->ids + first, e->n - first);
}

void tok_encoder_free(tok_encoder *e) {
    for (int i = 0; i < TOK_MAX_SPLITS; i++) {
        pcre2_match_data_free(e->match[i]);
        free(e->prefixed[i].data);
    }
    free(e->segment.data);
    free(e->word.data);
    free(e->symbols.data);
    free(e->heap.data);
    if (e->cache) {
        free(e->cache->slots);
        free(e->cache->entries);
        free(e->cache->keys.data);
        free(e->cache->ids.data);
        free(e->cache);
    }
}

tga_status tok_byte_bpe_segment(tok_encoder *e, const char *text, size_t len) {
    return tok_split_pieces(e, 0, text, len, tok_bpe_piece);
}
