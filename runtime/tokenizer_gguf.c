/* Tokenizers from a GGUF file's tokenizer.ggml.* metadata, as llama.cpp's converters write them:
 *   model   "llama" (SentencePiece: tokens, scores, token_type; merged by score) or
 *           "gpt2" (byte-level BPE: tokens, merges "LEFT RIGHT"; merged by rank)
 *   pre     for "gpt2": the pre-tokenizer ("default"/"gpt2", "llama-bpe", "smollm")
 *   bos_token_id, eos_token_id, unknown_token_id, padding_token_id, add_space_prefix */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/gguf.h"
#include "runtime/tokenizer_internal.h"

enum { TOKEN_TYPE_CONTROL = 3, TOKEN_TYPE_USER_DEFINED = 4, TOKEN_TYPE_BYTE = 6 }; /* llama.cpp's values */

static const char llama3_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static bool str_is(tga_gguf_str s, const char *lit) {
    return s.len == strlen(lit) && memcmp(s.data, lit, s.len) == 0;
}

static tga_status read_tokens(const tga_gguf *g, tok_kind kind, tga_tokenizer **out) {
    const tga_gguf_kv *tokens;
    TGA_TRY(tga_gguf_get_array(g, "tokenizer.ggml.tokens", TGA_GGUF_STRING, &tokens));
    TGA_TRY(tok_create(g->path, kind, tokens->value.arr.count, out));
    const tga_gguf_str *items = tokens->value.arr.data;
    for (uint64_t id = 0; id < tokens->value.arr.count; id++)
        TGA_TRY(tok_set_token(*out, id, items[id].data, items[id].len));
    return tok_build_index(*out);
}

static int hex_digit(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                  : -1;
}

/* The byte of a "<0xNN>" spelling, or -1. */
static int byte_of_token(const tok_token *tok) {
    if (tok->len != 6 || memcmp(tok->text, "<0x", 3) != 0 || tok->text[5] != '>') return -1;
    int hi = hex_digit(tok->text[3]), lo = hex_digit(tok->text[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Control and user-defined tokens are the specials; byte tokens are SentencePiece's <0xNN>. */
static tga_status read_token_types(const tga_gguf *g, tga_tokenizer *t) {
    if (!tga_gguf_find(g, "tokenizer.ggml.token_type")) return TGA_OK;
    const tga_gguf_kv *types;
    TGA_TRY(tga_gguf_get_array(g, "tokenizer.ggml.token_type", TGA_GGUF_INT32, &types));
    if (types->value.arr.count != t->n_tokens)
        return tga_error(TGA_ERR_FORMAT, "%s: tokenizer.ggml.token_type has %llu entries for %zu tokens",
                         t->source, (unsigned long long)types->value.arr.count, t->n_tokens);
    for (size_t id = 0; id < t->n_tokens; id++) {
        int64_t type = tga_gguf_array_int(types, id);
        t->tokens[id].special = type == TOKEN_TYPE_CONTROL || type == TOKEN_TYPE_USER_DEFINED;
        int byte = type == TOKEN_TYPE_BYTE ? byte_of_token(&t->tokens[id]) : -1;
        if (byte >= 0) t->byte_token[byte] = (int32_t)id;
    }
    return TGA_OK;
}

static int compare_scores_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* score_rank[id]: the position of the token's score among the distinct scores, highest first. */
static tga_status read_scores(const tga_gguf *g, tga_tokenizer *t) {
    const tga_gguf_kv *scores;
    TGA_TRY(tga_gguf_get_array(g, "tokenizer.ggml.scores", TGA_GGUF_FLOAT32, &scores));
    if (scores->value.arr.count != t->n_tokens)
        return tga_error(TGA_ERR_FORMAT, "%s: tokenizer.ggml.scores has %llu entries for %zu tokens",
                         t->source, (unsigned long long)scores->value.arr.count, t->n_tokens);
    const float *score = scores->value.arr.data;
    float *sorted = malloc(t->n_tokens * sizeof *sorted);
    t->score_rank = malloc(t->n_tokens * sizeof *t->score_rank);
    if (!sorted || !t->score_rank) {
        free(sorted);
        return tga_error(TGA_ERR_NOMEM, "out of memory");
    }
    for (size_t id = 0; id < t->n_tokens; id++) {
        if (isnan(score[id])) {
            free(sorted);
            return tga_error(TGA_ERR_FORMAT, "%s: tokenizer.ggml.scores[%zu] is NaN", t->source, id);
        }
        sorted[id] = score[id];
    }
    qsort(sorted, t->n_tokens, sizeof *sorted, compare_scores_desc);
    size_t n_distinct = 0;
    for (size_t i = 0; i < t->n_tokens; i++)
        if (i == 0 || sorted[i] != sorted[n_distinct - 1]) sorted[n_distinct++] = sorted[i];
    for (size_t id = 0; id < t->n_tokens; id++) {
        size_t lo = 0, hi = n_distinct - 1; /* binary search in the descending list */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (sorted[mid] > score[id])
                lo = mid + 1;
            else
                hi = mid;
        }
        t->score_rank[id] = (uint32_t)lo;
    }
    free(sorted);
    return TGA_OK;
}

static tga_status load_llama(const tga_gguf *g, tga_tokenizer **out) {
    TGA_TRY(read_tokens(g, TOK_SPM_BPE, out));
    tga_tokenizer *t = *out;
    tok_init_byte_fallback(t);
    TGA_TRY(read_token_types(g, t));
    TGA_TRY(read_scores(g, t));
    t->merge_mode = TOK_MERGE_BY_SCORE;
    t->byte_fallback = true;
    t->spaces_as_marker = true;
    bool add_space_prefix = true;
    TGA_TRY(tga_gguf_get_bool_opt(g, "tokenizer.ggml.add_space_prefix", &add_space_prefix));
    t->prepend = add_space_prefix ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    return TGA_OK;
}

static tga_status add_pre_tokenizer(const tga_gguf *g, tga_tokenizer *t) {
    tga_gguf_str pre = {"default", 7};
    if (tga_gguf_find(g, "tokenizer.ggml.pre")) TGA_TRY(tga_gguf_get_string(g, "tokenizer.ggml.pre", &pre));
    if (str_is(pre, "default") || str_is(pre, "gpt2") || str_is(pre, "gpt-2"))
        return tok_add_split(t, tok_gpt2_pattern, true, true);
    if (str_is(pre, "llama-bpe") || str_is(pre, "llama3"))
        return tok_add_split(t, llama3_pattern, true, true);
    if (str_is(pre, "smollm")) {
        TGA_TRY(tok_add_split(t, "\\p{N}", true, true));
        return tok_add_split(t, tok_gpt2_pattern, true, true);
    }
    return tga_error(TGA_ERR_FORMAT,
                     "%s: tokenizer.ggml.pre '%s' is not supported (known: default, gpt2, llama-bpe, "
                     "smollm)",
                     t->source, pre.data);
}

static tga_status load_gpt2(const tga_gguf *g, tga_tokenizer **out) {
    TGA_TRY(read_tokens(g, TOK_BYTE_BPE, out));
    tga_tokenizer *t = *out;
    TGA_TRY(read_token_types(g, t));
    const tga_gguf_kv *merges;
    TGA_TRY(tga_gguf_get_array(g, "tokenizer.ggml.merges", TGA_GGUF_STRING, &merges));
    if (merges->value.arr.count > UINT32_MAX)
        return tga_error(TGA_ERR_FORMAT, "%s: too many merges", t->source);
    TGA_TRY(tok_init_merges(t, merges->value.arr.count));
    const tga_gguf_str *items = merges->value.arr.data;
    for (uint64_t i = 0; i < merges->value.arr.count; i++) {
        /* the first space after the first character separates the parts (llama.cpp) */
        const char *space = items[i].len > 1 ? memchr(items[i].data + 1, ' ', items[i].len - 1) : NULL;
        if (!space)
            return tga_error(TGA_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] '%s' is not 'LEFT RIGHT'",
                             t->source, (unsigned long long)i, items[i].data);
        size_t left = (size_t)(space - items[i].data);
        TGA_TRY(tok_add_merge(t, items[i].data, left, space + 1, items[i].len - left - 1, (uint32_t)i));
    }
    tok_init_byte_level(t);
    return add_pre_tokenizer(g, t);
}

static tga_status read_special_id(const tga_gguf *g, const tga_tokenizer *t, const char *key, int32_t *id) {
    int64_t value = *id;
    TGA_TRY(tga_gguf_get_int_opt(g, key, -1, (int64_t)t->n_tokens - 1, &value));
    *id = (int32_t)value;
    return TGA_OK;
}

static tga_status load_from(const tga_gguf *g, tga_tokenizer **out) {
    tga_gguf_str model;
    TGA_TRY(tga_gguf_get_string(g, "tokenizer.ggml.model", &model));
    if (str_is(model, "llama"))
        TGA_TRY(load_llama(g, out));
    else if (str_is(model, "gpt2"))
        TGA_TRY(load_gpt2(g, out));
    else
        return tga_error(TGA_ERR_FORMAT,
                         "%s: tokenizer.ggml.model '%s' is not supported (known: llama, gpt2)", g->path,
                         model.data);
    tga_tokenizer *t = *out;
    TGA_TRY(read_special_id(g, t, "tokenizer.ggml.bos_token_id", &t->bos));
    TGA_TRY(read_special_id(g, t, "tokenizer.ggml.eos_token_id", &t->eos));
    TGA_TRY(read_special_id(g, t, "tokenizer.ggml.unknown_token_id", &t->unk));
    TGA_TRY(read_special_id(g, t, "tokenizer.ggml.padding_token_id", &t->pad));
    return tok_finish(t);
}

tga_status tok_from_gguf(const tga_gguf *g, tga_tokenizer **out) {
    *out = NULL;
    tga_status st = load_from(g, out);
    if (st != TGA_OK) {
        tga_tokenizer_free(*out);
        *out = NULL;
    }
    return st;
}

tga_status tok_load_gguf(const char *path, tga_tokenizer **out) {
    *out = NULL;
    tga_gguf *g;
    TGA_TRY(tga_gguf_open(path, &g));
    tga_status st = tok_from_gguf(g, out);
    tga_gguf_free(g);
    return st;
}
