/* JSON vocabularies: HF tokenizer.json (model BPE or WordLevel, its normalizer and pre-tokenizer,
 * added tokens) with tokenizer_config.json beside it, and GPT-2's encoder.json / vocab.json with
 * their merges text file. Anything the tokenizer would not reproduce exactly is refused with a
 * message naming the file and the setting. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer_internal.h"

#define MARKER "\xe2\x96\x81" /* "▁" */

static tga_status load_json(const char *path, json_t **root) {
    json_error_t err;
    *root = json_load_file(path, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (*root) return TGA_OK;
    if (json_error_code(&err) == json_error_cannot_open_file) return tga_error(TGA_ERR_IO, "%s", err.text);
    return tga_error(TGA_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", path, err.line, err.column, err.text);
}

static const char *string_of(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool flag_of(json_t *obj, const char *key, bool fallback) {
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : fallback;
}

static tga_status unsupported(const char *path, const char *what, const char *value) {
    return tga_error(TGA_ERR_FORMAT, "%s: %s '%s' is not supported", path, what, value ? value : "(missing)");
}

/* ---- vocabulary ------------------------------------------------------------------------------- */

static tga_status token_id(const char *path, json_t *value, size_t limit, size_t *id) {
    if (!json_is_integer(value) || json_integer_value(value) < 0 ||
        (size_t)json_integer_value(value) >= limit)
        return tga_error(TGA_ERR_FORMAT, "%s: token ids must be integers 0..%zu (the vocabulary has no gaps)",
                         path, limit - 1);
    *id = (size_t)json_integer_value(value);
    return TGA_OK;
}

/* Ids are dense, so the largest is below the number of entries; a larger one is an error
 * before anything is allocated for it. */
static tga_status vocab_size(const char *path, json_t *vocab, json_t *added, size_t *n) {
    size_t entries = json_object_size(vocab) + json_array_size(added), largest = 0, id;
    const char *key;
    json_t *value;
    if (entries == 0) return tga_error(TGA_ERR_FORMAT, "%s: empty vocabulary", path);
    json_object_foreach(vocab, key, value) {
        TGA_TRY(token_id(path, value, entries, &id));
        largest = id > largest ? id : largest;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        TGA_TRY(token_id(path, json_object_get(json_array_get(added, i), "id"), entries, &id));
        largest = id > largest ? id : largest;
    }
    *n = largest + 1;
    return TGA_OK;
}

static tga_status read_vocab(tga_tokenizer *t, json_t *vocab) {
    const char *key;
    size_t key_len, id;
    json_t *value;
    json_object_keylen_foreach(vocab, key, key_len, value) {
        TGA_TRY(token_id(t->source, value, t->n_tokens, &id));
        TGA_TRY(tok_set_token(t, id, key, key_len));
    }
    return TGA_OK;
}

/* HF added tokens: recognised with TGA_TOK_PARSE_SPECIAL, decoded as spelled. An added token may
 * repeat a vocabulary entry (same id, same spelling). */
static tga_status read_added_tokens(tga_tokenizer *t, json_t *added) {
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *entry = json_array_get(added, i), *content = json_object_get(entry, "content");
        size_t id;
        if (!json_is_string(content))
            return tga_error(TGA_ERR_FORMAT, "%s: added_tokens[%zu] has no \"content\" string", t->source, i);
        TGA_TRY(token_id(t->source, json_object_get(entry, "id"), t->n_tokens, &id));
        const char *text = json_string_value(content);
        size_t len = json_string_length(content);
        tok_token *tok = &t->tokens[id];
        if (!tok->text)
            TGA_TRY(tok_set_token(t, id, text, len));
        else if (tok->len != len || memcmp(tok->text, text, len) != 0)
            return tga_error(TGA_ERR_FORMAT, "%s: added token %zu '%s' differs from vocabulary entry '%s'",
                             t->source, id, text, tok->text);
        tok->special = true;
    }
    return TGA_OK;
}

static tga_status special_by_name(tga_tokenizer *t, const char *file, const char *role, json_t *value,
                                  int32_t *id) {
    if (json_is_object(value)) value = json_object_get(value, "content");
    if (!json_is_string(value)) return TGA_OK; /* null or absent: no such token */
    *id = tok_lookup(t, json_string_value(value), json_string_length(value));
    if (*id < 0)
        return tga_error(TGA_ERR_FORMAT, "%s: %s '%s' is not in the vocabulary of %s", file, role,
                         json_string_value(value), t->source);
    return TGA_OK;
}

static tga_status read_tokenizer_config(tga_tokenizer *t, const char *config_path) {
    FILE *probe = fopen(config_path, "rb");
    if (!probe) return TGA_OK; /* optional */
    fclose(probe);
    json_t *root;
    TGA_TRY(load_json(config_path, &root));
    tga_status st = special_by_name(t, config_path, "bos_token", json_object_get(root, "bos_token"), &t->bos);
    if (st == TGA_OK)
        st = special_by_name(t, config_path, "eos_token", json_object_get(root, "eos_token"), &t->eos);
    if (st == TGA_OK)
        st = special_by_name(t, config_path, "pad_token", json_object_get(root, "pad_token"), &t->pad);
    if (st == TGA_OK)
        st = special_by_name(t, config_path, "unk_token", json_object_get(root, "unk_token"), &t->unk);
    json_decref(root);
    return st;
}

/* ---- merges ----------------------------------------------------------------------------------- */

/* A merge is "LEFT RIGHT" (tokenizers < 0.20, merges.txt, GGUF) or ["LEFT", "RIGHT"]. */
static tga_status read_merge(tga_tokenizer *t, json_t *merge, uint32_t rank) {
    if (json_is_array(merge) && json_array_size(merge) == 2 && json_is_string(json_array_get(merge, 0)) &&
        json_is_string(json_array_get(merge, 1))) {
        json_t *l = json_array_get(merge, 0), *r = json_array_get(merge, 1);
        return tok_add_merge(t, json_string_value(l), json_string_length(l), json_string_value(r),
                             json_string_length(r), rank);
    }
    const char *text = json_is_string(merge) ? json_string_value(merge) : NULL;
    const char *space = text ? strchr(text, ' ') : NULL;
    if (!space || space == text || !space[1] || strchr(space + 1, ' '))
        return tga_error(TGA_ERR_FORMAT,
                         "%s: model.merges[%u] is not \"LEFT RIGHT\" or [\"LEFT\", \"RIGHT\"]", t->source,
                         rank);
    return tok_add_merge(t, text, (size_t)(space - text), space + 1, strlen(space + 1), rank);
}

static tga_status read_merges_array(tga_tokenizer *t, json_t *merges) {
    if (!json_is_array(merges))
        return tga_error(TGA_ERR_FORMAT, "%s: model.merges must be an array", t->source);
    TGA_TRY(tok_init_merges(t, json_array_size(merges)));
    for (size_t i = 0; i < json_array_size(merges); i++)
        TGA_TRY(read_merge(t, json_array_get(merges, i), (uint32_t)i));
    return TGA_OK;
}

/* merges.txt / vocab.bpe: an optional "#version" line, then "LEFT RIGHT" per line. */
static tga_status read_merges_text(tga_tokenizer *t, const char *path, char *data, size_t len) {
    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++)
        n_lines += data[i] == '\n';
    TGA_TRY(tok_init_merges(t, n_lines));
    uint32_t rank = 0;
    char *line = data;
    for (size_t line_no = 1; line < data + len; line_no++) {
        char *end = memchr(line, '\n', (size_t)(data + len - line));
        end = end ? end : data + len;
        size_t n = (size_t)(end - line) - (end > line && end[-1] == '\r');
        bool skip = n == 0 || (line_no == 1 && n >= 8 && memcmp(line, "#version", 8) == 0);
        char *space = skip ? NULL : memchr(line, ' ', n);
        if (!skip && (!space || space == line || space == line + n - 1 ||
                      memchr(space + 1, ' ', (size_t)(line + n - space - 1))))
            return tga_error(TGA_ERR_FORMAT, "%s:%zu: expected \"LEFT RIGHT\" (two tokens and one space)",
                             path, line_no);
        if (!skip)
            TGA_TRY(tok_add_merge(t, line, (size_t)(space - line), space + 1, (size_t)(line + n - space - 1),
                                  rank++));
        line = end + 1;
    }
    return TGA_OK;
}

/* ---- normalizer and pre-tokenizer ------------------------------------------------------------- */

static tga_status read_normalizer(tga_tokenizer *t, json_t *norm) {
    if (!norm || json_is_null(norm)) return TGA_OK;
    const char *type = string_of(norm, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(norm, "normalizers");
        for (size_t i = 0; i < json_array_size(list); i++)
            TGA_TRY(read_normalizer(t, json_array_get(list, i)));
        return TGA_OK;
    }
    const char *prepend = string_of(norm, "prepend");
    if (type && strcmp(type, "Prepend") == 0 && prepend && strcmp(prepend, MARKER) == 0) {
        t->prepend = TOK_PREPEND_ALWAYS;
        return TGA_OK;
    }
    const char *from = string_of(json_object_get(norm, "pattern"), "String"),
               *to = string_of(norm, "content");
    if (type && strcmp(type, "Replace") == 0 && from && to && strcmp(from, " ") == 0 &&
        strcmp(to, MARKER) == 0) {
        t->spaces_as_marker = true;
        return TGA_OK;
    }
    return unsupported(t->source, "normalizer (only Prepend(\"▁\") and Replace(\" \", \"▁\"))", type);
}

static tga_status read_metaspace(tga_tokenizer *t, json_t *pt) {
    const char *replacement = string_of(pt, "replacement"), *scheme = string_of(pt, "prepend_scheme");
    if (!replacement || strcmp(replacement, MARKER) != 0)
        return unsupported(t->source, "Metaspace replacement", replacement);
    t->spaces_as_marker = true;
    t->prepend_unless_marked = true;
    if (!scheme) /* before prepend_scheme there was add_prefix_space */
        t->prepend = flag_of(pt, "add_prefix_space", true) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    else if (strcmp(scheme, "always") == 0)
        t->prepend = TOK_PREPEND_ALWAYS;
    else if (strcmp(scheme, "first") == 0)
        t->prepend = TOK_PREPEND_FIRST;
    else if (strcmp(scheme, "never") == 0)
        t->prepend = TOK_PREPEND_NEVER;
    else
        return unsupported(t->source, "Metaspace prepend_scheme", scheme);
    return flag_of(pt, "split", true) ? tok_add_split(t, tok_metaspace_split_pattern, true, true) : TGA_OK;
}

/* A String pattern is literal: escape everything but letters and digits. */
static tga_status literal_pattern(const char *text, char **out) {
    size_t n = strlen(text);
    char *p = malloc(2 * n + 1), *q = p;
    if (!p) return tga_error(TGA_ERR_NOMEM, "out of memory");
    for (const char *s = text; *s; s++) {
        bool plain =
            (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || (*s & 0x80);
        if (!plain) *q++ = '\\';
        *q++ = *s;
    }
    *q = '\0';
    *out = p;
    return TGA_OK;
}

static tga_status read_split(tga_tokenizer *t, json_t *pt) {
    json_t *pattern = json_object_get(pt, "pattern");
    const char *regex = string_of(pattern, "Regex"), *literal = string_of(pattern, "String");
    const char *behavior = string_of(pt, "behavior");
    bool invert = flag_of(pt, "invert", false);
    if (!regex && !literal) return unsupported(t->source, "Split pattern", NULL);
    bool isolated = behavior && strcmp(behavior, "Isolated") == 0,
         removed = behavior && strcmp(behavior, "Removed") == 0;
    if (!isolated && !removed) return unsupported(t->source, "Split behavior", behavior);
    char *escaped = NULL;
    if (!regex) TGA_TRY(literal_pattern(literal, &escaped));
    /* Removed drops the matches, or with invert the text between them */
    tga_status st = tok_add_split(t, regex ? regex : escaped, isolated || invert, isolated || !invert);
    free(escaped);
    return st;
}

static tga_status read_pre_tokenizer(tga_tokenizer *t, json_t *pt) {
    if (!pt || json_is_null(pt)) return TGA_OK;
    const char *type = string_of(pt, "type");
    if (!type) return unsupported(t->source, "pre_tokenizer", NULL);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(pt, "pretokenizers");
        for (size_t i = 0; i < json_array_size(list); i++)
            TGA_TRY(read_pre_tokenizer(t, json_array_get(list, i)));
        return TGA_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        TGA_TRY(tok_add_split(t, flag_of(pt, "use_regex", true) ? tok_gpt2_pattern : NULL, true, true));
        t->splits[t->n_splits - 1].prefix_space = flag_of(pt, "add_prefix_space", false);
        return TGA_OK;
    }
    if (strcmp(type, "Metaspace") == 0) return read_metaspace(t, pt);
    if (strcmp(type, "Split") == 0) return read_split(t, pt);
    if (strcmp(type, "Digits") == 0)
        return tok_add_split(t, flag_of(pt, "individual_digits", false) ? "\\p{N}" : "\\p{N}+", true, true);
    if (strcmp(type, "Whitespace") == 0) return tok_add_split(t, "\\w+|[^\\w\\s]+", true, false);
    if (strcmp(type, "WhitespaceSplit") == 0) return tok_add_split(t, "\\s+", false, true);
    return unsupported(t->source, "pre_tokenizer", type);
}

static bool uses_byte_level(json_t *pt) {
    const char *type = string_of(pt, "type");
    if (type && strcmp(type, "ByteLevel") == 0) return true;
    json_t *list = json_object_get(pt, "pretokenizers");
    for (size_t i = 0; i < json_array_size(list); i++)
        if (uses_byte_level(json_array_get(list, i))) return true;
    return false;
}

/* ---- the model -------------------------------------------------------------------------------- */

static tga_status read_bpe_model(tga_tokenizer *t, json_t *model) {
    const char *prefix = string_of(model, "continuing_subword_prefix"),
               *suffix = string_of(model, "end_of_word_suffix");
    json_t *dropout = json_object_get(model, "dropout");
    if ((prefix && *prefix) || (suffix && *suffix))
        return unsupported(t->source, "BPE continuing_subword_prefix / end_of_word_suffix",
                           prefix ? prefix : suffix);
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) != 0.0)
        return tga_error(TGA_ERR_FORMAT, "%s: BPE dropout is not supported (encoding must be deterministic)",
                         t->source);
    t->byte_fallback = flag_of(model, "byte_fallback", false);
    t->fuse_unk = flag_of(model, "fuse_unk", false);
    t->ignore_merges = flag_of(model, "ignore_merges", false);
    return read_merges_array(t, json_object_get(model, "merges"));
}

static tga_status model_kind(const char *path, json_t *root, json_t *model, tok_kind *kind) {
    const char *type = string_of(model, "type");
    if (!type) type = json_object_get(model, "merges") ? "BPE" : "WordLevel"; /* old files had no type */
    if (strcmp(type, "WordLevel") == 0)
        *kind = TOK_WORD;
    else if (strcmp(type, "BPE") == 0)
        *kind = uses_byte_level(json_object_get(root, "pre_tokenizer")) ? TOK_BYTE_BPE : TOK_SPM_BPE;
    else
        return unsupported(path, "model type (supported: BPE, WordLevel)", type);
    return TGA_OK;
}

static tga_status read_hf(tga_tokenizer *t, json_t *root, json_t *model) {
    TGA_TRY(read_vocab(t, json_object_get(model, "vocab")));
    TGA_TRY(read_added_tokens(t, json_object_get(root, "added_tokens")));
    TGA_TRY(tok_build_index(t));
    json_t *unk = json_object_get(model, "unk_token");
    if (json_is_string(unk)) TGA_TRY(special_by_name(t, t->source, "model.unk_token", unk, &t->unk));
    if (t->kind != TOK_WORD) TGA_TRY(read_bpe_model(t, model));
    if (t->kind == TOK_BYTE_BPE && json_object_get(root, "normalizer") &&
        !json_is_null(json_object_get(root, "normalizer")))
        return unsupported(t->source, "normalizer with a ByteLevel pre-tokenizer",
                           string_of(json_object_get(root, "normalizer"), "type"));
    if (t->kind == TOK_SPM_BPE) TGA_TRY(read_normalizer(t, json_object_get(root, "normalizer")));
    TGA_TRY(read_pre_tokenizer(t, json_object_get(root, "pre_tokenizer")));
    if (t->kind == TOK_BYTE_BPE) tok_init_byte_level(t);
    if (t->kind == TOK_SPM_BPE) tok_init_byte_fallback(t);
    return TGA_OK;
}

static tga_status load_hf_root(const char *path, json_t *root, const char *config_path, tga_tokenizer **out) {
    json_t *model = json_object_get(root, "model"), *added = json_object_get(root, "added_tokens");
    if (!json_is_object(model) || !json_is_object(json_object_get(model, "vocab")))
        return tga_error(TGA_ERR_FORMAT,
                         "%s: not an HF tokenizer.json (no \"model\" object with a \"vocab\" object)", path);
    if (added && !json_is_array(added) && !json_is_null(added))
        return tga_error(TGA_ERR_FORMAT, "%s: \"added_tokens\" must be an array", path);
    tok_kind kind = TOK_WORD;
    size_t n = 0;
    TGA_TRY(model_kind(path, root, model, &kind));
    TGA_TRY(vocab_size(path, json_object_get(model, "vocab"), added, &n));
    TGA_TRY(tok_create(path, kind, n, out));
    tga_status st = read_hf(*out, root, model);
    if (st == TGA_OK && config_path) st = read_tokenizer_config(*out, config_path);
    if (st == TGA_OK) st = tok_finish(*out);
    if (st != TGA_OK) {
        tga_tokenizer_free(*out);
        *out = NULL;
    }
    return st;
}

static char *sibling_path(const char *path, const char *name) {
    const char *slash = strrchr(path, '/');
    size_t dir = slash ? (size_t)(slash - path) + 1 : 0, n = dir + strlen(name) + 1;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%.*s%s", (int)dir, path, name);
    return p;
}

tga_status tok_load_hf_json(const char *path, tga_tokenizer **out) {
    *out = NULL;
    json_t *root;
    TGA_TRY(load_json(path, &root));
    char *config = sibling_path(path, "tokenizer_config.json");
    tga_status st =
        config ? load_hf_root(path, root, config, out) : tga_error(TGA_ERR_NOMEM, "out of memory");
    free(config);
    json_decref(root);
    return st;
}

tga_status tok_load_hf_json_text(const char *name, const char *text, size_t len, tga_tokenizer **out) {
    *out = NULL;
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (!root)
        return tga_error(TGA_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", name, err.line, err.column, err.text);
    tga_status st = load_hf_root(name, root, NULL, out);
    json_decref(root);
    return st;
}

/* ---- GPT-2's files ---------------------------------------------------------------------------- */

static tga_status read_gpt2(tga_tokenizer *t, json_t *vocab, const char *merges_path) {
    TGA_TRY(read_vocab(t, vocab));
    TGA_TRY(tok_build_index(t));
    char *merges;
    size_t len;
    TGA_TRY(tok_read_file(merges_path, &merges, &len));
    tga_status st = read_merges_text(t, merges_path, merges, len);
    free(merges);
    TGA_TRY(st);
    int32_t eot = tok_lookup(t, "<|endoftext|>", 13);
    if (eot >= 0) t->tokens[eot].special = true;
    tok_init_byte_level(t);
    return tok_add_split(t, tok_gpt2_pattern, true, true);
}

tga_status tok_load_gpt2_files(const char *vocab_path, const char *merges_path, tga_tokenizer **out) {
    *out = NULL;
    json_t *vocab;
    TGA_TRY(load_json(vocab_path, &vocab));
    size_t n = 0;
    tga_status st = json_is_object(vocab)
                        ? vocab_size(vocab_path, vocab, NULL, &n)
                        : tga_error(TGA_ERR_FORMAT, "%s: expected one JSON object token -> id", vocab_path);
    if (st == TGA_OK) st = tok_create(vocab_path, TOK_BYTE_BPE, n, out);
    if (st == TGA_OK) st = read_gpt2(*out, vocab, merges_path);
    if (st == TGA_OK) st = tok_finish(*out);
    json_decref(vocab);
    if (st != TGA_OK) {
        tga_tokenizer_free(*out);
        *out = NULL;
    }
    return st;
}
