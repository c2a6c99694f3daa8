/* Tokenizers and the GGUF reader, against references written here:
 * - GGUF: a file built by a small writer below reads back value for value; every truncation and
 *   a few thousand random corruptions fail cleanly; each layout rule is enforced.
 * - GPT-2 (when the assets are present): ids equal a naive port of encoder.py (an ASCII
 *   pre-tokenizer and its "merge the best pair everywhere, repeat" loop over strings) on random
 *   ASCII text; round trip on random bytes; special tokens only with the flag; concurrent encodes.
 * - SentencePiece from a GGUF written here: ids equal a naive score-merging loop, with ties,
 *   characters without a token (byte fallback) and invalid UTF-8; decode inverts encode.
 * - A word list: ids, unk, decode joined by spaces. */
#define _POSIX_C_SOURCE 200809L /* mkstemp, mkdtemp, strdup */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/gguf.h"
#include "runtime/tokenizer.h"
#include "tests/testutil.h"

/* ---- a byte buffer and a GGUF writer ---------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = 2 * (b->len + n) + 64;
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_key(buf *b, const char *key, uint32_t type) {
    put_str(b, key);
    put_u32(b, type);
}
static void put_header(buf *b, uint64_t n_tensors, uint64_t n_kv) {
    put(b, "GGUF", 4);
    put_u32(b, 3);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void put_pad(buf *b, size_t alignment) {
    while (b->len % alignment)
        put(b, "", 1);
}

/* Every metadata type, arrays of four kinds and two tensors (F32 [4,2] and Q8_0 [64]). */
static buf sample_gguf(void) {
    buf b = {0};
    put_header(&b, 2, 13);
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int32_t i32 = -2000000000;
    float f32 = 1.5f;
    uint8_t t = 1;
    int64_t i64 = -5000000000LL;
    double f64 = -2.25;
    put_key(&b, "u8", 0), put(&b, &u8, 1);
    put_key(&b, "i8", 1), put(&b, &i8, 1);
    put_key(&b, "u16", 2), put(&b, &u16, 2);
    put_key(&b, "i16", 3), put(&b, &i16, 2);
    put_key(&b, "u32", 4), put_u32(&b, 4000000000u);
    put_key(&b, "i32", 5), put(&b, &i32, 4);
    put_key(&b, "f32", 6), put(&b, &f32, 4);
    put_key(&b, "bool", 7), put(&b, &t, 1);
    put_key(&b, "str", 8), put_str(&b, "hello");
    put_key(&b, "u64", 10), put_u64(&b, 18000000000000000000u);
    put_key(&b, "i64", 11), put(&b, &i64, 8);
    put_key(&b, "f64", 12), put(&b, &f64, 8);
    put_key(&b, "names", 9), put_u32(&b, 8), put_u64(&b, 3), put_str(&b, "a"), put_str(&b, ""),
        put_str(&b, "ccc");
    put_str(&b, "w"), put_u32(&b, 2), put_u64(&b, 4), put_u64(&b, 2), put_u32(&b, 0), put_u64(&b, 0);
    put_str(&b, "q"), put_u32(&b, 1), put_u64(&b, 64), put_u32(&b, 8), put_u64(&b, 32);
    put_pad(&b, 32);
    float w[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    put(&b, w, sizeof w);
    uint8_t q[68] = {0};
    put(&b, q, sizeof q);
    return b;
}

static void test_gguf_values(void) {
    buf b = sample_gguf();
    tga_gguf *g;
    CHECK(tga_gguf_parse(b.data, b.len, "sample", &g) == TGA_OK, "sample: %s", tga_error_message());
    if (!g) return;
    int64_t v;
    CHECK(tga_gguf_get_int(g, "u8", 0, 255, &v) == TGA_OK && v == 200, "u8");
    CHECK(tga_gguf_get_int(g, "i8", -128, 127, &v) == TGA_OK && v == -100, "i8");
    CHECK(tga_gguf_get_int(g, "u16", 0, 65535, &v) == TGA_OK && v == 60000, "u16");
    CHECK(tga_gguf_get_int(g, "i16", -32768, 0, &v) == TGA_OK && v == -30000, "i16");
    CHECK(tga_gguf_get_int(g, "u32", 0, INT64_MAX, &v) == TGA_OK && v == 4000000000LL, "u32");
    CHECK(tga_gguf_get_int(g, "i32", INT32_MIN, 0, &v) == TGA_OK && v == -2000000000, "i32");
    CHECK(tga_gguf_get_int(g, "i64", INT64_MIN, 0, &v) == TGA_OK && v == -5000000000LL, "i64");
    tga_error_clear();
    CHECK(tga_gguf_get_int(g, "u64", 0, INT64_MAX, &v) == TGA_ERR_FORMAT, "u64 beyond int64 must be refused");
    CHECK(tga_gguf_get_int(g, "u8", 0, 100, &v) == TGA_ERR_FORMAT, "range check");
    CHECK(tga_gguf_get_int(g, "missing", 0, 1, &v) == TGA_ERR_FORMAT, "missing key");
    tga_error_clear();
    CHECK(tga_gguf_find(g, "f32")->value.f == 1.5 && tga_gguf_find(g, "f64")->value.f == -2.25, "floats");
    CHECK(tga_gguf_find(g, "u64")->value.u == 18000000000000000000u, "u64");
    bool flag = false;
    CHECK(tga_gguf_get_bool_opt(g, "bool", &flag) == TGA_OK && flag, "bool");
    tga_gguf_str s;
    CHECK(tga_gguf_get_string(g, "str", &s) == TGA_OK && s.len == 5 && strcmp(s.data, "hello") == 0,
          "string");
    const tga_gguf_kv *names;
    CHECK(tga_gguf_get_array(g, "names", TGA_GGUF_STRING, &names) == TGA_OK, "string array");
    const tga_gguf_str *items = names->value.arr.data;
    CHECK(names->value.arr.count == 3 && strcmp(items[2].data, "ccc") == 0 && items[1].len == 0,
          "string items");
    CHECK(g->n_tensors == 2 && g->data_offset % 32 == 0 && g->tensors[0].nbytes == 32 &&
              g->tensors[1].nbytes == 68,
          "tensor sizes");
    CHECK(g->tensors[0].dims[0] == 4 && g->tensors[0].dims[1] == 2 && g->tensors[0].dims[2] == 1,
          "tensor dims");
    tga_gguf_free(g);
    tga_error_clear();
    free(b.data);
}

static void test_gguf_truncations_and_corruptions(void) {
    buf b = sample_gguf();
    int accepted = 0;
    for (size_t n = 0; n < b.len; n++) {
        tga_gguf *g = NULL;
        tga_status st = tga_gguf_parse(b.data, n, "cut", &g);
        accepted += st == TGA_OK;
        CHECK(st == TGA_ERR_FORMAT && !g && strstr(tga_error_message(), "cut"),
              "truncated to %zu bytes: %d %s", n, st, tga_error_message());
        tga_error_clear();
    }
    uint64_t rng = 99;
    for (int i = 0; i < 3000; i++) {
        buf c = {0};
        put(&c, b.data, b.len);
        for (int k = 0; k < 1 + (int)(tu_next(&rng) % 4); k++)
            c.data[tu_next(&rng) % c.len] = (uint8_t)tu_next(&rng);
        tga_gguf *g = NULL;
        tga_status st = tga_gguf_parse(c.data, c.len, "corrupt", &g);
        CHECK(st == TGA_OK || st == TGA_ERR_FORMAT, "corruption %d gave status %d", i, st);
        tga_gguf_free(g);
        tga_error_clear();
        free(c.data);
    }
    CHECK(accepted == 0, "a truncated file was accepted");
    free(b.data);
}

/* A file from `kv` (one key) and one F32 tensor of `dims0` elements at `offset`. */
static tga_status parse_variant(const char *key, uint32_t type, uint64_t value, uint32_t ggml_type,
                                uint64_t offset) {
    buf b = {0};
    put_header(&b, 1, 2);
    put_key(&b, "general.alignment", 4), put_u32(&b, 32);
    put_key(&b, key, type), put(&b, &value, type == 4 ? 4 : 8);
    put_str(&b, "t"), put_u32(&b, 1), put_u64(&b, 32), put_u32(&b, ggml_type), put_u64(&b, offset);
    put_pad(&b, 32);
    uint8_t data[160] = {0};
    put(&b, data, sizeof data);
    tga_gguf *g = NULL;
    tga_status st = tga_gguf_parse(b.data, b.len, "variant", &g);
    tga_gguf_free(g);
    free(b.data);
    tga_error_clear();
    return st;
}

static void test_gguf_rules(void) {
    CHECK(parse_variant("x", 4, 7, 0, 0) == TGA_OK, "valid variant");
    CHECK(parse_variant("general.alignment", 4, 32, 0, 0) == TGA_ERR_FORMAT, "duplicate key");
    CHECK(parse_variant("x", 4, 7, 0, 16) == TGA_ERR_FORMAT, "misaligned tensor offset");
    CHECK(parse_variant("x", 4, 7, 0, 64) == TGA_ERR_FORMAT, "tensor past the end");
    CHECK(parse_variant("x", 4, 7, 4, 0) == TGA_ERR_FORMAT, "retired ggml type 4");
    CHECK(parse_variant("x", 4, 7, 2, 0) == TGA_OK, "Q4_0 [32]");
    CHECK(parse_variant("x", 13, 7, 0, 0) == TGA_ERR_FORMAT, "unknown value type 13");
    buf b = {0};
    put_header(&b, 0, 1);
    put_key(&b, "general.alignment", 4), put_u32(&b, 24);
    tga_gguf *g = NULL;
    CHECK(tga_gguf_parse(b.data, b.len, "align", &g) == TGA_ERR_FORMAT, "alignment not a power of two");
    tga_error_clear();
    free(b.data);
}

/* ---- GPT-2 against a naive encoder.py --------------------------------------------------------- */

typedef struct {
    json_t *encoder;
    char **merges; /* "LEFT RIGHT", sorted, for bsearch */
    int *merge_rank;
    size_t n_merges;
    char byte_char[256][3];
} naive_gpt2;

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool naive_load(naive_gpt2 *r, const char *dir) {
    char path[1100];
    snprintf(path, sizeof path, "%s/encoder.json", dir);
    r->encoder = json_load_file(path, 0, NULL);
    snprintf(path, sizeof path, "%s/vocab.bpe", dir);
    FILE *f = fopen(path, "rb");
    if (!r->encoder || !f) return false;
    char line[512];
    r->merges = malloc(60000 * sizeof *r->merges);
    r->merge_rank = malloc(60000 * sizeof *r->merge_rank);
    while (fgets(line, sizeof line, f) && r->n_merges < 60000) {
        if (line[0] == '#') continue;
        line[strcspn(line, "\n")] = '\0';
        r->merges[r->n_merges++] = strdup(line);
    }
    fclose(f);
    /* the rank travels with the string through the sort: prefix it after a NUL */
    for (size_t i = 0; i < r->n_merges; i++) {
        size_t n = strlen(r->merges[i]);
        int rank = (int)i;
        r->merges[i] = realloc(r->merges[i], n + 1 + sizeof rank);
        memcpy(r->merges[i] + n + 1, &rank, sizeof rank);
    }
    qsort(r->merges, r->n_merges, sizeof *r->merges, compare_strings);
    for (size_t i = 0; i < r->n_merges; i++)
        memcpy(&r->merge_rank[i], r->merges[i] + strlen(r->merges[i]) + 1, sizeof(int));
    int n = 0; /* bytes_to_unicode */
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int cp = printable ? b : 256 + n++;
        if (cp < 0x80)
            r->byte_char[b][0] = (char)cp;
        else
            r->byte_char[b][0] = (char)(0xC0 | (cp >> 6)), r->byte_char[b][1] = (char)(0x80 | (cp & 0x3F));
    }
    return true;
}

static int naive_rank(const naive_gpt2 *r, const char *a, const char *b) {
    char key[512];
    snprintf(key, sizeof key, "%s %s", a, b);
    const char *k = key;
    char **hit = bsearch(&k, r->merges, r->n_merges, sizeof *r->merges, compare_strings);
    return hit ? r->merge_rank[hit - r->merges] : -1;
}

/* encoder.py's bpe(): merge every occurrence of the lowest-ranked pair, repeat. */
static void naive_bpe(const naive_gpt2 *r, const char *piece, size_t len, int32_t *out, size_t *n_out) {
    char word[256][256];
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        strcpy(word[n++], r->byte_char[(uint8_t)piece[i]]);
    for (;;) {
        int best = -1;
        for (size_t i = 0; i + 1 < n; i++) {
            int rank = naive_rank(r, word[i], word[i + 1]);
            if (rank >= 0 && (best < 0 || rank < best)) best = rank;
        }
        if (best < 0) break;
        size_t k = 0;
        for (size_t i = 0; i < n; k++) {
            if (i + 1 < n && naive_rank(r, word[i], word[i + 1]) == best) {
                char joined[256];
                snprintf(joined, sizeof joined, "%s%s", word[i], word[i + 1]);
                strcpy(word[k], joined);
                i += 2;
            } else {
                memmove(word[k], word[i], sizeof word[k]);
                i++;
            }
        }
        n = k;
    }
    for (size_t i = 0; i < n; i++)
        out[(*n_out)++] = (int32_t)json_integer_value(json_object_get(r->encoder, word[i]));
}

static int char_class(char c) { /* 0 space, 1 letter, 2 digit, 3 other (ASCII) */
    return c == ' ' || c == '\n' || c == '\t'     ? 0
           : ((c | 32) >= 'a' && (c | 32) <= 'z') ? 1
           : (c >= '0' && c <= '9')               ? 2
                                                  : 3;
}

/* Length of the next piece under GPT-2's pattern, for ASCII text. */
static size_t naive_piece(const char *s, size_t n) {
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (int k = 0; k < 7; k++)
        if (strncmp(s, contractions[k], strlen(contractions[k])) == 0 && strlen(contractions[k]) <= n)
            return strlen(contractions[k]);
    size_t i = s[0] == ' ' && n > 1 && char_class(s[1]) != 0 ? 1 : 0;
    int cls = char_class(s[i]);
    if (cls != 0) {
        size_t j = i + 1;
        while (j < n && char_class(s[j]) == cls)
            j++;
        return j;
    }
    size_t j = 0;
    while (j < n && char_class(s[j]) == 0)
        j++;
    return j < n && j > 1 ? j - 1 : j; /* \s+(?!\S) leaves the last space to the next word */
}

static void naive_encode(const naive_gpt2 *r, const char *text, size_t len, int32_t *out, size_t *n_out) {
    *n_out = 0;
    for (size_t i = 0; i < len;) {
        size_t n = naive_piece(text + i, len - i);
        naive_bpe(r, text + i, n, out, n_out);
        i += n;
    }
}

static void random_ascii(uint64_t *rng, char *out, size_t n) {
    static const char *const words[] = {"the",  " the", "hello", " world", "token", "izer", " don't",
                                        "it's", "I'll", " 1234", "42",     "...",   "!!",   " (x)",
                                        "  ",   "\n",   "\n\n",  "\t",     " ",     "GPT"};
    size_t k = 0;
    while (k + 8 < n) {
        uint64_t r = tu_next(rng);
        const char *w = words[r % 20];
        if (r % 7 == 0)
            out[k++] = (char)(' ' + (tu_next(rng) % 95));
        else
            k += (size_t)sprintf(out + k, "%s", w);
    }
    out[k] = '\0';
}

static const char *assets_dir(char *buffer, size_t n) {
    const char *env = getenv("TGA_ASSETS");
    snprintf(buffer, n, "%s/gpt2-bpe", env ? env : TGA_SOURCE_DIR "/../shared/assets");
    return buffer;
}

static void test_gpt2_against_naive(const tga_tokenizer *t, const char *dir) {
    naive_gpt2 r = {0};
    CHECK(naive_load(&r, dir), "naive reference could not read %s", dir);
    uint64_t rng = 2024;
    char text[400];
    int32_t expected[400];
    for (int trial = 0; trial < 300 && r.encoder; trial++) {
        random_ascii(&rng, text, 40 + tu_next(&rng) % 300);
        size_t n_expected, n;
        naive_encode(&r, text, strlen(text), expected, &n_expected);
        int32_t *ids;
        CHECK(tga_tokenizer_encode(t, text, strlen(text), 0, &ids, &n) == TGA_OK, "encode");
        bool same = n == n_expected && memcmp(ids, expected, n * sizeof *ids) == 0;
        CHECK(same, "GPT-2 ids differ from encoder.py's on \"%s\"", text);
        free(ids);
    }
    json_decref(r.encoder);
    for (size_t i = 0; i < r.n_merges; i++)
        free(r.merges[i]);
    free(r.merges);
    free(r.merge_rank);
}

static void check_round_trip(const tga_tokenizer *t, const char *data, size_t len, const char *what) {
    int32_t *ids;
    size_t n, back_len;
    char *back;
    CHECK(tga_tokenizer_encode(t, data, len, 0, &ids, &n) == TGA_OK, "%s: encode", what);
    CHECK(tga_tokenizer_decode(t, ids, n, &back, &back_len) == TGA_OK, "%s: decode", what);
    CHECK(back_len == len && memcmp(back, data, len) == 0, "%s: decode(encode(x)) != x (%zu bytes)", what,
          len);
    free(ids);
    free(back);
}

static void test_gpt2_specials(const tga_tokenizer *t) {
    int32_t eot = tga_tokenizer_find(t, "<|endoftext|>");
    CHECK(eot >= 0 && tga_tokenizer_eos(t) == eot && tga_tokenizer_bos(t) == eot &&
              tga_tokenizer_unk(t) == -1,
          "GPT-2 special ids");
    CHECK(tga_tokenizer_vocab_size(t) == 50257 && tga_tokenizer_find(t, "<s>") == -1, "GPT-2 vocabulary");
    const char *a = "Hello world", *b = " and more<|endoftext";
    char joined[128];
    snprintf(joined, sizeof joined, "%s<|endoftext|>%s", a, b);
    int32_t *ia, *ib, *ij, *plain;
    size_t na, nb, nj, np;
    tga_tokenizer_encode(t, a, strlen(a), 0, &ia, &na);
    tga_tokenizer_encode(t, b, strlen(b), 0, &ib, &nb);
    tga_tokenizer_encode(t, joined, strlen(joined), TGA_TOK_PARSE_SPECIAL, &ij, &nj);
    tga_tokenizer_encode(t, joined, strlen(joined), 0, &plain, &np);
    bool same = nj == na + nb + 1 && memcmp(ij, ia, na * 4) == 0 && ij[na] == eot &&
                memcmp(ij + na + 1, ib, nb * 4) == 0;
    CHECK(same, "with the flag, a special token splits the text and is its own id");
    bool found = false;
    for (size_t i = 0; i < np; i++)
        found = found || plain[i] == eot;
    CHECK(!found && np > nj, "without the flag, <|endoftext|> is text");
    free(ia), free(ib), free(ij), free(plain);
    int32_t bad = 50257;
    char *text;
    size_t len;
    CHECK(tga_tokenizer_decode(t, &bad, 1, &text, &len) == TGA_ERR_FORMAT,
          "decode of an id outside the vocabulary");
    tga_error_clear();
}

typedef struct {
    const tga_tokenizer *t;
    const char *text;
    int32_t *ids;
    size_t n;
} encode_job;

static void *encode_thread(void *arg) {
    encode_job *job = arg;
    tga_tokenizer_encode(job->t, job->text, strlen(job->text), 0, &job->ids, &job->n);
    return NULL;
}

static void test_concurrent(const tga_tokenizer *t) {
    char *text = malloc(200001);
    uint64_t rng = 5;
    random_ascii(&rng, text, 200000);
    encode_job jobs[3] = {{t, text, NULL, 0}, {t, text, NULL, 0}, {t, text, NULL, 0}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&threads[i], NULL, encode_thread, &jobs[i]);
    encode_thread(&jobs[2]);
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < 2; i++)
        CHECK(jobs[i].n == jobs[2].n && memcmp(jobs[i].ids, jobs[2].ids, jobs[2].n * 4) == 0,
              "concurrent encode %d", i);
    for (int i = 0; i < 3; i++)
        free(jobs[i].ids);
    free(text);
}

static void test_gpt2(void) {
    char dir[1024];
    assets_dir(dir, sizeof dir);
    tga_tokenizer *t;
    if (tga_tokenizer_load(dir, &t) != TGA_OK) {
        printf("note: GPT-2 assets not found at %s (%s); GPT-2 checks skipped\n", dir, tga_error_message());
        tga_error_clear();
        return;
    }
    test_gpt2_against_naive(t, dir);
    uint64_t rng = 17;
    char data[5000];
    for (int trial = 0; trial < 50; trial++) {
        size_t n = tu_next(&rng) % sizeof data;
        for (size_t i = 0; i < n; i++)
            data[i] = (char)tu_next(&rng);
        check_round_trip(t, data, n, "GPT-2 random bytes");
    }
    check_round_trip(t, "", 0, "GPT-2 empty text");
    test_gpt2_specials(t);
    test_concurrent(t);
    tga_tokenizer_free(t);
}

/* ---- SentencePiece from GGUF against a naive score-merging loop ------------------------------- */

#define SPM_PIECES 22
static const char *const spm_pieces[SPM_PIECES] = {"\xe2\x96\x81",
                                                   "a",
                                                   "b",
                                                   "c",
                                                   "d",
                                                   "e",
                                                   "\xc3\xa9",
                                                   "\xe2\x96\x81"
                                                   "a",
                                                   "ab",
                                                   "abc",
                                                   "\xe2\x96\x81"
                                                   "ab",
                                                   "cd",
                                                   "\xe2\x96\x81"
                                                   "abc",
                                                   "d\xc3\xa9",
                                                   "\xe2\x96\x81"
                                                   "d",
                                                   "ee",
                                                   "e\xe2\x96\x81",
                                                   "bc",
                                                   "bcd",
                                                   "aa",
                                                   "aaa",
                                                   "\xe2\x96\x81\xe2\x96\x81"};

typedef struct {
    char *tokens[3 + 256 + SPM_PIECES];
    float scores[3 + 256 + SPM_PIECES];
    int n;
} spm_vocab;

static void make_spm_vocab(spm_vocab *v, uint64_t *rng) {
    v->n = 0;
    const char *specials[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++)
        v->tokens[v->n] = strdup(specials[i]), v->scores[v->n++] = 0;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        v->tokens[v->n] = strdup(name), v->scores[v->n++] = 0;
    }
    /* scores on a coarse grid, so that equal scores (and the leftmost rule) occur */
    for (int i = 0; i < SPM_PIECES; i++)
        v->tokens[v->n] = strdup(spm_pieces[i]), v->scores[v->n++] = -(float)(tu_next(rng) % 8) * 0.5f;
}

static void write_spm_gguf(const spm_vocab *v, const char *path) {
    buf b = {0};
    put_header(&b, 0, 6);
    put_key(&b, "tokenizer.ggml.model", 8), put_str(&b, "llama");
    put_key(&b, "tokenizer.ggml.tokens", 9), put_u32(&b, 8), put_u64(&b, (uint64_t)v->n);
    for (int i = 0; i < v->n; i++)
        put_str(&b, v->tokens[i]);
    put_key(&b, "tokenizer.ggml.scores", 9), put_u32(&b, 6), put_u64(&b, (uint64_t)v->n);
    put(&b, v->scores, (size_t)v->n * sizeof(float));
    put_key(&b, "tokenizer.ggml.token_type", 9), put_u32(&b, 5), put_u64(&b, (uint64_t)v->n);
    for (int i = 0; i < v->n; i++)
        put_u32(&b, i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1);
    put_key(&b, "tokenizer.ggml.bos_token_id", 4), put_u32(&b, 1);
    put_key(&b, "tokenizer.ggml.eos_token_id", 4), put_u32(&b, 2);
    FILE *f = fopen(path, "wb");
    fwrite(b.data, 1, b.len, f);
    fclose(f);
    free(b.data);
}

static int spm_find(const spm_vocab *v, const char *s) {
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->tokens[i], s) == 0) return i;
    return -1;
}

static size_t naive_spm(const spm_vocab *v, const char *text, int32_t *out) {
    static char sym[2048][64];
    size_t n = 0;
    strcpy(sym[n++], "\xe2\x96\x81");
    for (const uint8_t *p = (const uint8_t *)text; *p;) {
        size_t len = *p == ' '                             ? 1
                     : *p == 0xC3 && (p[1] & 0xC0) == 0x80 ? 2
                                                           : 1; /* test text: ASCII, é, bad bytes */
        if (*p == ' ')
            strcpy(sym[n], "\xe2\x96\x81");
        else
            memcpy(sym[n], p, len), sym[n][len] = '\0';
        n++, p += len;
    }
    for (;;) {
        int best = -1;
        float best_score = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            char joined[2 * sizeof sym[0]];
            size_t left = strlen(sym[i]);
            memcpy(joined, sym[i], left);
            memcpy(joined + left, sym[i + 1], strlen(sym[i + 1]) + 1);
            int id = spm_find(v, joined);
            if (id >= 0 && (best < 0 || v->scores[id] > best_score))
                best = (int)i, best_score = v->scores[id];
        }
        if (best < 0) break;
        size_t left = strlen(sym[best]), right = strlen(sym[best + 1]);
        CHECK(left + right < sizeof sym[0], "test vocabulary pieces are short");
        memmove(sym[best] + left, sym[best + 1], right + 1);
        memmove(sym[best + 1], sym[best + 2], (n - (size_t)best - 2) * sizeof sym[0]);
        n--;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int id = spm_find(v, sym[i]);
        if (id >= 0)
            out[k++] = id;
        else
            for (const uint8_t *p = (const uint8_t *)sym[i]; *p; p++)
                out[k++] = 3 + *p;
    }
    return k;
}

static void test_spm_gguf(void) {
    uint64_t rng = 31;
    spm_vocab v;
    make_spm_vocab(&v, &rng);
    char path[] = "/tmp/tga_test_spm_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    write_spm_gguf(&v, path);
    tga_tokenizer *t;
    CHECK(tga_tokenizer_load(path, &t) == TGA_OK, "load %s: %s", path, tga_error_message());
    if (t) {
        CHECK(tga_tokenizer_bos(t) == 1 && tga_tokenizer_eos(t) == 2 && tga_tokenizer_unk(t) == 0,
              "GGUF special ids");
        static const char *const alphabet[] = {"a", "b", "c", "d", "e", " ", "\xc3\xa9", "z", "\xff", "  "};
        for (int trial = 0; trial < 400; trial++) {
            char text[300] = "";
            size_t len = 1 + tu_next(&rng) % 60;
            for (size_t i = 0; i < len; i++)
                strcat(text, alphabet[tu_next(&rng) % 10]);
            int32_t expected[1024], *ids;
            size_t n_expected = naive_spm(&v, text, expected), n;
            CHECK(tga_tokenizer_encode(t, text, strlen(text), 0, &ids, &n) == TGA_OK, "encode");
            CHECK(n == n_expected && memcmp(ids, expected, n * 4) == 0, "SentencePiece ids differ on \"%s\"",
                  text);
            free(ids);
            check_round_trip(t, text, strlen(text), "SentencePiece");
        }
        tga_tokenizer_free(t);
    }
    for (int i = 0; i < v.n; i++)
        free(v.tokens[i]);
    unlink(path);
}

/* ---- word list ------------------------------------------------------------------------------- */

static void test_word_list(void) {
    char dir[] = "/tmp/tga_test_words_XXXXXX", path[64];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/words.txt", dir);
    FILE *f = fopen(path, "w");
    fputs("<unk>\r\n<pad>\nthe\ncat\nsat\n.\n", f);
    fclose(f);
    tga_tokenizer *t;
    CHECK(tga_tokenizer_load(path, &t) == TGA_OK, "load word list: %s", tga_error_message());
    if (t) {
        const char *text = "  the cat\tsat on\n the mat . ";
        int32_t *ids;
        size_t n;
        CHECK(tga_tokenizer_encode(t, text, strlen(text), 0, &ids, &n) == TGA_OK, "encode words");
        const int32_t expected[] = {2, 3, 4, 0, 2, 0, 5};
        CHECK(n == 7 && memcmp(ids, expected, sizeof expected) == 0,
              "word ids (line numbers, unknown -> <unk>)");
        char *back;
        size_t len;
        CHECK(tga_tokenizer_decode(t, ids, n, &back, &len) == TGA_OK &&
                  strcmp(back, "the cat sat <unk> the <unk> .") == 0,
              "decode joins with single spaces");
        CHECK(tga_tokenizer_unk(t) == 0 && tga_tokenizer_pad(t) == 1 && tga_tokenizer_bos(t) == -1,
              "word specials");
        free(ids);
        free(back);
        tga_tokenizer_free(t);
    }
    unlink(path);
    rmdir(dir);
}

int main(void) {
    test_gguf_values();
    test_gguf_truncations_and_corruptions();
    test_gguf_rules();
    test_gpt2();
    test_spm_gguf();
    test_word_list();
    return tu_finish("test_tokenizer");
}
