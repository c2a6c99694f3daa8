/* The synthetic world: deterministic bytes, every word of every record in the vocabulary, the
 * intended composition (refusals only for harmful objects in text, none on the image side), and
 * feature/record consistency. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/npy.h"
#include "tests/testutil.h"
#include "trainer/synthetic.h"

static char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    *size = fread(buf, 1, (size_t)n, f);
    buf[*size] = 0;
    fclose(f);
    return buf;
}

static int same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = read_file(a, &na), *y = read_file(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* Words of the vocabulary, one per line. */
static int in_vocab(const char *vocab, const char *word, size_t len) {
    for (const char *p = vocab; *p;) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == len && memcmp(p, word, len) == 0) return 1;
        p += n + (e ? 1 : 0);
    }
    return 0;
}

static void check_words(const char *vocab, const char *text, const char *where) {
    for (const char *p = text; *p;) {
        while (*p == ' ' || *p == '\n') p++;
        const char *q = p;
        while (*q && *q != ' ' && *q != '\n') q++;
        if (q > p) CHECK(in_vocab(vocab, p, (size_t)(q - p)), "%s: word '%.*s' is not in vocab.txt", where, (int)(q - p), p);
        p = q;
    }
}

typedef struct counts {
    int records, refusals, harmful_use, images;
} counts;

static counts scan(const char *dir, const char *name, const char *vocab) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    counts c = {0};
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "missing %s", path);
    if (!f) return c;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        json_error_t err;
        json_t *rec = json_loads(line, 0, &err);
        CHECK(rec != NULL, "%s: bad JSON: %s", name, err.text);
        if (!rec) continue;
        c.records++;
        c.images += json_object_get(rec, "image") != NULL;
        json_t *conv = json_object_get(rec, "conversations");
        const char *human = json_string_value(json_object_get(json_array_get(conv, 0), "value"));
        const char *gpt = json_string_value(json_object_get(json_array_get(conv, 1), "value"));
        CHECK(human && gpt, "%s: record %d lacks a conversation", name, c.records);
        if (human && gpt) {
            check_words(vocab, human, name);
            check_words(vocab, gpt, name);
            c.refusals += strstr(gpt, "sorry") != NULL;
        }
        const char *cap = json_string_value(json_object_get(rec, "image_caption"));
        if (cap) check_words(vocab, cap, name);
        json_decref(rec);
    }
    fclose(f);
    return c;
}

int main(void) {
    char dir_a[] = "/tmp/tga_synth_a_XXXXXX", dir_b[] = "/tmp/tga_synth_b_XXXXXX";
    CHECK(mkdtemp(dir_a) && mkdtemp(dir_b), "mkdtemp");
    tga_synthetic_options o;
    tga_synthetic_defaults(&o);
    o.n_pretrain = 600;
    o.n_align = 200;
    o.n_eval = 12;
    CHECK(tga_synthetic_write(dir_a, &o) == TGA_OK, "write: %s", tga_error_message());
    CHECK(tga_synthetic_write(dir_b, &o) == TGA_OK, "write: %s", tga_error_message());
    static const char *files[] = {"vocab.txt", "pretrain.jsonl", "align.jsonl", "eval_image_dsr.jsonl",
                                  "eval_text_dsr.jsonl", "eval_utility.jsonl", "features.npy", "features_index.txt",
                                  "retrieval_queries.npy", "retrieval_corpus.npy", "retrieval_corpus.jsonl", "world.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/%s", dir_a, files[i]);
        snprintf(b, sizeof b, "%s/%s", dir_b, files[i]);
        CHECK(same_file(a, b), "%s differs between two runs with the same seed", files[i]);
    }
    char path[1024];
    size_t vsize;
    snprintf(path, sizeof path, "%s/vocab.txt", dir_a);
    char *vocab = read_file(path, &vsize);
    CHECK(vocab && vsize > 0, "vocab.txt is empty");
    int n_words = 0;
    for (size_t i = 0; vocab && i < vsize; i++) n_words += vocab[i] == '\n';
    CHECK(n_words >= 100 && n_words <= 1000, "a few hundred words expected, got %d", n_words);

    counts pre = scan(dir_a, "pretrain.jsonl", vocab), al = scan(dir_a, "align.jsonl", vocab);
    counts di = scan(dir_a, "eval_image_dsr.jsonl", vocab), dt = scan(dir_a, "eval_text_dsr.jsonl", vocab);
    counts ut = scan(dir_a, "eval_utility.jsonl", vocab);
    CHECK(pre.records == 600 && pre.images == 0, "pretrain: %d records, %d with images", pre.records, pre.images);
    CHECK(pre.refusals > 30, "pretraining text must teach refusals (%d)", pre.refusals);
    CHECK(al.records == 200 && al.images == 200 && al.refusals == 0, "align: no refusals on the image side");
    CHECK(di.records == 12 && di.images == 12 && dt.records == 12 && dt.images == 0 && ut.images == 12,
          "eval sets: image DSR, text DSR, utility");
    CHECK(di.refusals == 12 && dt.refusals == 12 && ut.refusals == 0, "expected answers of the eval sets");

    float *feat;
    tga_npy_header h;
    snprintf(path, sizeof path, "%s/features.npy", dir_a);
    CHECK(tga_npy_load_f32(path, &feat, &h) == TGA_OK, "%s", tga_error_message());
    CHECK(h.ndim == 3 && h.shape[0] == 200 + 24 && h.shape[1] == 16 && h.shape[2] == 32, "features shape");
    free(feat);
    free(vocab);
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", dir_a, dir_b);
    CHECK(system(cmd) == 0, "cleanup");
    return tu_finish("test_synthetic");
}
