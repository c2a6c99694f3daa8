/* SentencePiece-style BPE: the "▁" normalization before merging, byte fallback and decoding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer_internal.h"

#define MARKER "\xe2\x96\x81" /* U+2581 "▁", SentencePiece's space */
#define MARKER_LEN 3

/* Metaspace(split=true): each "▁" starts a new piece (HF's MergedWithNext). */
const char tok_metaspace_split_pattern[] = "\\x{2581}[^\\x{2581}]*";

static bool wants_prefix(const tga_tokenizer *t, const char *text, size_t len, bool at_text_start) {
    if (t->prepend == TOK_PREPEND_NEVER || (t->prepend == TOK_PREPEND_FIRST && !at_text_start)) return false;
    /* Metaspace: a segment that already starts with a space (so with "▁") gets none */
    bool marked = text[0] == ' ' || (len >= MARKER_LEN && memcmp(text, MARKER, MARKER_LEN) == 0);
    return !(t->prepend_unless_marked && marked);
}

/* HF's Prepend("▁") + Replace(" ", "▁") normalizer, or the Metaspace pre-tokenizer (whose split
 * into words is a pre-tokenizer stage), then BPE on each piece. */
tga_status tok_spm_segment(tok_encoder *e, const char *text, size_t len, bool at_text_start) {
    const tga_tokenizer *t = e->t;
    TGA_TRY(tok_reserve(&e->segment, MARKER_LEN * (len + 1)));
    char *out = e->segment.data;
    size_t k = 0;
    if (wants_prefix(t, text, len, at_text_start)) {
        memcpy(out, MARKER, MARKER_LEN);
        k = MARKER_LEN;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] != ' ' || !t->spaces_as_marker) {
            out[k++] = text[i];
            continue;
        }
        memcpy(out + k, MARKER, MARKER_LEN);
        k += MARKER_LEN;
    }
    return tok_split_pieces(e, 0, out, k, tok_bpe_piece);
}

void tok_init_byte_fallback(tga_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b); /* HF's and SentencePiece's spelling */
        t->byte_token[b] = tok_lookup(t, name, 6);
    }
}

/* Byte tokens decode to their byte, "▁" to a space (HF's ByteFallback and Replace decoders;
 * llama.cpp does the same). */
tga_status tok_spm_decode_table(tga_tokenizer *t) {
    for (size_t id = 0; id < t->n_tokens; id++) {
        tok_token *tok = &t->tokens[id];
        char *bytes = malloc(tok->len + 1);
        if (!bytes) return tga_error(TGA_ERR_NOMEM, "out of memory");
        uint32_t n = 0;
        for (uint32_t i = 0; i < tok->len;) {
            bool marker =
                !tok->special && i + MARKER_LEN <= tok->len && memcmp(tok->text + i, MARKER, MARKER_LEN) == 0;
            bytes[n++] = marker ? ' ' : tok->text[i];
            i += marker ? MARKER_LEN : 1;
        }
        tok->bytes = bytes;
        tok->n_bytes = n;
    }
    for (int b = 0; b < 256; b++)
        if (t->byte_token[b] >= 0) {
            tok_token *tok = &t->tokens[t->byte_token[b]];
            tok->bytes[0] = (char)b;
            tok->n_bytes = 1;
        }
    return TGA_OK;
}
