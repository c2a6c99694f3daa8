// clang-format off
// sources: runtime/tokenizer.c runtime/tokenizer_bpe.c runtime/tokenizer_spm.c runtime/tokenizer_gguf.c runtime/tokenizer_word.c runtime/tokenizer_json.c runtime/gguf.c runtime/error.c
// clang-format on
/* The HF tokenizer.json loader on arbitrary input: it must load or fail with a message, never
 * crash; a tokenizer that loads must encode a fixed text and the input itself, and decode what it
 * produced. */
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer_internal.h"

static void exercise(const tga_tokenizer *t, const char *text, size_t len) {
    int32_t *ids;
    size_t n, out_len;
    char *out;
    if (tga_tokenizer_encode(t, text, len, TGA_TOK_PARSE_SPECIAL, &ids, &n) != TGA_OK) {
        tga_error_clear(); /* e.g. a character without a token and no unk: an error, not a crash */
        return;
    }
    if (tga_tokenizer_decode(t, ids, n, &out, &out_len) != TGA_OK) __builtin_trap();
    free(ids);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tga_tokenizer *t;
    if (tok_load_hf_json_text("fuzz.json", (const char *)data, size, &t) != TGA_OK) {
        if (t || !tga_error_message()[0]) __builtin_trap(); /* a failure leaves no object and says why */
        tga_error_clear();
        return 0;
    }
    static const char sample[] =
        "Hello world, it's 2024! \xe2\x96\x81 caf\xc3\xa9 \xff<s></s><|endoftext|>  \n";
    exercise(t, sample, sizeof sample - 1);
    exercise(t, (const char *)data, size);
    tga_tokenizer_free(t);
    return 0;
}
