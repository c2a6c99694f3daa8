// clang-format off
// sources: runtime/gguf.c runtime/tokenizer.c runtime/tokenizer_bpe.c runtime/tokenizer_spm.c runtime/tokenizer_gguf.c runtime/tokenizer_word.c runtime/tokenizer_json.c runtime/error.c
// clang-format on
/* The GGUF reader on arbitrary bytes: it must accept or reject with a message, never crash or
 * read out of bounds; an accepted file's tensors lie inside it, and a tokenizer found in its
 * metadata must encode and decode. */
#include <stdlib.h>
#include <string.h>

#include "runtime/gguf.h"
#include "runtime/tokenizer_internal.h"

static void check_tensors(const tga_gguf *g, size_t size) {
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tga_gguf_tensor *t = &g->tensors[i];
        if (g->data_offset + t->offset + t->nbytes > size || t->offset % g->alignment) __builtin_trap();
    }
}

static void try_tokenizer(const tga_gguf *g) {
    tga_tokenizer *t;
    if (tok_from_gguf(g, &t) != TGA_OK) {
        tga_error_clear();
        return;
    }
    static const char sample[] = "Hello world \xe2\x96\x81 caf\xc3\xa9 \xff<s>";
    int32_t *ids;
    size_t n, len;
    char *text;
    if (tga_tokenizer_encode(t, sample, sizeof sample - 1, TGA_TOK_PARSE_SPECIAL, &ids, &n) == TGA_OK) {
        if (tga_tokenizer_decode(t, ids, n, &text, &len) != TGA_OK) __builtin_trap();
        free(ids);
        free(text);
    }
    tga_error_clear();
    tga_tokenizer_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tga_gguf *g;
    if (tga_gguf_parse(data, size, "fuzz.gguf", &g) != TGA_OK) {
        if (g || !tga_error_message()[0]) __builtin_trap();
        tga_error_clear();
        return 0;
    }
    check_tensors(g, size);
    try_tokenizer(g);
    tga_gguf_free(g);
    return 0;
}
