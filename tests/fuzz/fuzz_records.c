// clang-format off
// sources: trainer/records.c trainer/template.c runtime/fileio.c runtime/log.c runtime/tokenizer.c runtime/tokenizer_bpe.c runtime/tokenizer_spm.c runtime/tokenizer_gguf.c runtime/tokenizer_word.c runtime/tokenizer_json.c runtime/gguf.c runtime/error.c
// clang-format on
/* Record stream fuzzing: the input is a records file (JSON Lines or a JSON array), put in a memfd
 * and read through the streaming reader; every record is parsed (with and without --tox-from-id)
 * and each good one rendered with the llama_2 layout on a small word-level tokenizer, at a short
 * max_len so that truncation runs too. Every failure must be a clean TGA_ERR_FORMAT with a one-line
 * message; a rendered sample must keep the shard invariants. Crashes, leaks and UB are the bugs. */
#define _GNU_SOURCE /* memfd_create */

#include "trainer/records.h"
#include "trainer/model.h"
#include "trainer/template.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static tga_tokenizer *tokenizer;
static tga_template *layout;

static const char words[] =
    "<unk>\n<s>\n</s>\n[INST]\n[/INST]\n<<SYS>>\n<</SYS>>\nRetrieved\nText:\n.\na\ncat\n";
static const char yaml[] =
    "name: fuzz\n"
    "system: \"sys\"\n"
    "retrieval: \"Retrieved Text: {retrieved}. \"\n"
    "first_user: \"{bos}[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{retrieval}{content} [/INST]\"\n"
    "user: \"{bos}[INST] {content} [/INST]\"\n"
    "assistant_answer: \" {content} {eos}\"\n"
    "caption: \"{bos}[INST] <image> {caption}\"\n";

static void setup(void) {
    char path[] = "/tmp/fuzz_records_words_XXXXXX.txt";
    int fd = mkstemps(path, 4);
    if (fd < 0 || write(fd, words, sizeof words - 1) != (ssize_t)(sizeof words - 1)) abort();
    close(fd);
    tga_status st = tga_tokenizer_load(path, &tokenizer);
    unlink(path);
    if (st == TGA_OK) st = tga_template_load_text("fuzz.yaml", yaml, sizeof yaml - 1, tokenizer, &layout);
    if (st != TGA_OK) {
        fprintf(stderr, "fuzz setup: %s\n", tga_error_message());
        abort();
    }
}

static void expect_clean(tga_status st) {
    if (st == TGA_OK) return;
    const char *m = tga_error_message();
    if ((st != TGA_ERR_FORMAT && st != TGA_ERR_IO) || m[0] == '\0' || strchr(m, '\n')) {
        fprintf(stderr, "unclean failure: %s: '%s'\n", tga_status_name(st), m);
        abort();
    }
    tga_error_clear();
}

static void fail(const char *what) {
    fprintf(stderr, "rendered sample breaks an invariant: %s\n", what);
    abort();
}

/* The invariants of trainer/shard.h that the renderer must keep. */
static void check_sample(const tga_rendered *r, int32_t P, int64_t max_len) {
    if (r->n_tokens < 1 || r->n_tokens > max_len || r->n_caption_tokens > max_len) fail("lengths");
    int32_t patches = 0, next_free = 0;
    for (int32_t i = 0; i < r->n_images; i++) {
        tga_shard_span s = r->images[i];
        if (s.length != P || s.start < next_free || s.start + P > r->n_tokens) fail("image span");
        next_free = s.start + P;
        for (int32_t t = s.start; t < s.start + P; t++)
            if (r->input_ids[t] != TGA_IMAGE_TOKEN_ID || r->labels[t] != TGA_IGNORE_INDEX)
                fail("image position");
        if (r->retrieved.length && r->retrieved.start < s.start + P &&
            s.start < r->retrieved.start + r->retrieved.length)
            fail("R overlaps an image");
    }
    int64_t supervised = 0;
    for (int32_t t = 0; t < r->n_tokens; t++) {
        patches += r->input_ids[t] == TGA_IMAGE_TOKEN_ID;
        if (r->input_ids[t] != TGA_IMAGE_TOKEN_ID && r->input_ids[t] < 0) fail("negative id");
        if (r->labels[t] != TGA_IGNORE_INDEX && r->labels[t] != r->input_ids[t])
            fail("label differs from its id");
        supervised += r->labels[t] != TGA_IGNORE_INDEX;
    }
    if (patches != r->n_images * P || supervised != r->n_supervised || supervised == 0) fail("counts");
    if (r->retrieved.start < 0 || r->retrieved.length < 0 ||
        r->retrieved.start + r->retrieved.length > r->n_tokens)
        fail("R span");
    if (r->caption.start < 0 || r->caption.length < 0 ||
        r->caption.start + r->caption.length > r->n_caption_tokens)
        fail("C span");
}

static void render(const tga_record *rec, tga_rendered *r) {
    tga_conversation c = tga_record_conversation(rec);
    int64_t max_len = 16 + (int64_t)(rec->number % 48);
    tga_status st = tga_template_render(layout, &c, 3, max_len, r);
    expect_clean(st);
    if (st == TGA_OK && r->fits) check_sample(r, 3, max_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tokenizer) setup();
    tga_error_clear();
    int fd = memfd_create("fuzz_records", MFD_CLOEXEC);
    if (fd < 0) return 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    tga_record_reader *reader = NULL;
    if (write(fd, data, size) == (ssize_t)size) expect_clean(tga_record_reader_open(path, &reader));
    tga_rendered r;
    tga_rendered_init(&r);
    for (bool done = false; reader && !done;) {
        tga_raw_record raw;
        tga_status st = tga_record_reader_next(reader, &raw, &done);
        expect_clean(st);
        if (st != TGA_OK || done) break;
        for (int variant = 0; variant < 2; variant++) {
            tga_record_options o;
            tga_record_options_init(&o);
            o.tox_from_id = variant;
            o.require_retrieved = variant;
            tga_record rec;
            st = tga_record_parse("fuzz", &raw, &o, &rec);
            expect_clean(st);
            if (st == TGA_OK) render(&rec, &r);
            tga_record_free(&rec);
        }
    }
    tga_rendered_free(&r);
    tga_record_reader_close(reader);
    close(fd);
    return 0;
}
