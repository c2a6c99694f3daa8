/* Word-level vocabularies: each pre-tokenizer piece is one token, or unk. */
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer_internal.h"

static tga_status word_piece(tok_encoder *e, const char *piece, size_t len) {
    int32_t id = tok_lookup(e->t, piece, len);
    if (id < 0) id = e->t->unk;
    if (id < 0) return tok_missing_unk(e->t, "a word");
    return tok_push_id(e, id);
}

tga_status tok_word_segment(tok_encoder *e, const char *text, size_t len) {
    return tok_split_pieces(e, 0, text, len, word_piece);
}

/* One token per line (LF or CRLF), id = line number from 0; a final newline is optional. */
static tga_status read_lines(tga_tokenizer *t, const char *data, size_t len) {
    size_t id = 0;
    for (size_t start = 0; start < len; id++) {
        const char *nl = memchr(data + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - data) : len, stop = end;
        if (stop > start && data[stop - 1] == '\r') stop--;
        if (stop == start)
            return tga_error(TGA_ERR_FORMAT, "%s:%zu: empty line (one token per line)", t->source, id + 1);
        if (memchr(data + start, '\0', stop - start))
            return tga_error(TGA_ERR_FORMAT, "%s:%zu: NUL byte in a token", t->source, id + 1);
        TGA_TRY(tok_set_token(t, id, data + start, stop - start));
        start = end + 1;
    }
    return TGA_OK;
}

static size_t count_lines(const char *data, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += data[i] == '\n';
    return n + (len > 0 && data[len - 1] != '\n');
}

tga_status tok_load_word_list(const char *path, tga_tokenizer **out) {
    *out = NULL;
    char *data;
    size_t len;
    TGA_TRY(tok_read_file(path, &data, &len));
    tga_tokenizer *t = NULL;
    tga_status st = len == 0 ? tga_error(TGA_ERR_FORMAT, "%s: empty word list", path)
                             : tok_create(path, TOK_WORD, count_lines(data, len), &t);
    if (st == TGA_OK) st = read_lines(t, data, len);
    if (st == TGA_OK) st = tok_add_split(t, "\\s+", false, true); /* HF's WhitespaceSplit */
    if (st == TGA_OK) st = tok_finish(t);
    free(data);
    if (st != TGA_OK) {
        tga_tokenizer_free(t);
        return st;
    }
    *out = t;
    return TGA_OK;
}
