// clang-format off
// sources: runtime/tokenizer.c runtime/tokenizer_bpe.c runtime/tokenizer_spm.c runtime/tokenizer_gguf.c runtime/tokenizer_word.c runtime/tokenizer_json.c runtime/gguf.c runtime/error.c
// clang-format on
/* GPT-2 byte-level BPE on arbitrary bytes: encoding must succeed and decoding must give the input
 * back, with and without special-token parsing. The tokenizer is loaded once from $TGA_ASSETS
 * (default: ../shared/assets beside the repository). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer.h"

static tga_tokenizer *gpt2;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char dir[4096];
    const char *assets = getenv("TGA_ASSETS");
    if (assets) {
        snprintf(dir, sizeof dir, "%s/gpt2-bpe", assets);
    } else { /* this file is tests/fuzz/fuzz_tokenizer.c under the repository root */
        snprintf(dir, sizeof dir, "%s", __FILE__);
        for (int up = 0; up < 3; up++)
            *strrchr(dir, '/') = '\0';
        strcat(dir, "/../shared/assets/gpt2-bpe");
    }
    if (tga_tokenizer_load(dir, &gpt2) != TGA_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", tga_error_message());
        exit(1);
    }
    return 0;
}

static void round_trip(const uint8_t *data, size_t size, unsigned flags) {
    int32_t *ids;
    size_t n, len;
    char *text;
    if (tga_tokenizer_encode(gpt2, (const char *)data, size, flags, &ids, &n) != TGA_OK) __builtin_trap();
    if (tga_tokenizer_decode(gpt2, ids, n, &text, &len) != TGA_OK) __builtin_trap();
    if (len != size || memcmp(text, data, size) != 0) __builtin_trap();
    free(ids);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    round_trip(data, size, 0);
    round_trip(data, size, TGA_TOK_PARSE_SPECIAL);
    return 0;
}
