/* GPT-2 encoding throughput on one core: English prose (Debian's wordnet-base glosses) of at least
 * --mb megabytes, encoded in one call, as `tga tokenize` does.
 *
 *   bench_tokenizer [--tokenizer DIR] [--mb 5] [--repeats 5]
 *
 * DIR defaults to $TGA_ASSETS/gpt2-bpe, else ../shared/assets/gpt2-bpe (from the repository root).
 * Prints the median MB/s over --repeats calls of the whole encoder, and of the regex pre-tokenizer
 * alone (its upper bound: what is left is merging and the per-call word cache). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/tokenizer_internal.h"

static const char *const gloss_files[] = {"/usr/share/wordnet/data.noun", "/usr/share/wordnet/data.verb",
                                          "/usr/share/wordnet/data.adj", "/usr/share/wordnet/data.adv"};

/* Appends each gloss (the text after "| ") as a sentence, five to a paragraph. */
static size_t append_glosses(const char *path, char *out, size_t len, size_t cap, size_t *count) {
    FILE *f = fopen(path, "r");
    if (!f) return len;
    char line[8192];
    while (len + sizeof line + 4 < cap && fgets(line, sizeof line, f)) {
        char *gloss = strstr(line, "| ");
        if (line[0] == ' ' || !gloss) continue;
        gloss += 2;
        size_t n = strcspn(gloss, "\n");
        while (n > 0 && gloss[n - 1] == ' ')
            n--;
        memcpy(out + len, gloss, n);
        len += n;
        len += (size_t)sprintf(out + len, ++*count % 5 ? ". " : ".\n\n");
    }
    fclose(f);
    return len;
}

static char *english_text(size_t min_bytes, size_t *len) {
    size_t cap = min_bytes + (1 << 20), count = 0;
    char *text = malloc(cap);
    *len = 0;
    while (text && *len < min_bytes) {
        size_t before = *len;
        for (int i = 0; i < 4; i++)
            *len = append_glosses(gloss_files[i], text, *len, cap, &count);
        if (*len == before) break; /* no wordnet files */
    }
    return text;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static tga_status count_piece(tok_encoder *e, const char *piece, size_t len) {
    (void)piece;
    (void)len;
    e->n++;
    return TGA_OK;
}

/* Seconds for one encode (full) or one pre-tokenizer pass; *n gets the tokens or pieces. */
static double time_once(const tga_tokenizer *t, const char *text, size_t len, int full, size_t *n) {
    double start = now();
    if (full) {
        int32_t *ids;
        if (tga_tokenizer_encode(t, text, len, 0, &ids, n) != TGA_OK) return -1;
        free(ids);
    } else {
        tok_encoder e = {.t = t};
        tga_status st = tok_split_pieces(&e, 0, text, len, count_piece);
        *n = e.n;
        tok_encoder_free(&e);
        if (st != TGA_OK) return -1;
    }
    return now() - start;
}

static double median_seconds(const tga_tokenizer *t, const char *text, size_t len, int full, int repeats,
                             size_t *n) {
    double times[64];
    for (int r = 0; r < repeats; r++)
        times[r] = time_once(t, text, len, full, n);
    qsort(times, (size_t)repeats, sizeof times[0], compare_doubles);
    return times[repeats / 2];
}

int main(int argc, char **argv) {
    char default_dir[4096];
    const char *assets = getenv("TGA_ASSETS");
    snprintf(default_dir, sizeof default_dir, "%s/gpt2-bpe", assets ? assets : "../shared/assets");
    const char *dir = default_dir;
    int mb = 5, repeats = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--mb") == 0 && i + 1 < argc)
            mb = atoi(argv[++i]);
        else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc)
            repeats = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_tokenizer [--tokenizer DIR] [--mb N] [--repeats N]\n");
            return 2;
        }
    }
    if (mb < 1 || mb > 1024 || repeats < 1 || repeats > 64) {
        fprintf(stderr, "bench_tokenizer: --mb must be 1..1024 and --repeats 1..64\n");
        return 2;
    }
    tga_tokenizer *t;
    if (tga_tokenizer_load(dir, &t) != TGA_OK) {
        fprintf(stderr, "bench_tokenizer: %s\n", tga_error_message());
        return 1;
    }
    size_t len;
    char *text = english_text((size_t)mb << 20, &len);
    if (!text || len < (size_t)mb << 20) {
        fprintf(
            stderr,
            "bench_tokenizer: cannot build %d MB of English text from /usr/share/wordnet (wordnet-base)\n",
            mb);
        return 1;
    }
    size_t tokens, pieces;
    double full = median_seconds(t, text, len, 1, repeats, &tokens);
    double split = median_seconds(t, text, len, 0, repeats, &pieces);
    if (full < 0 || split < 0) {
        fprintf(stderr, "bench_tokenizer: %s\n", tga_error_message());
        return 1;
    }
    double megabytes = (double)len / 1e6;
    printf("%s (%s), 1 thread, %.2f MB of wordnet glosses, median of %d\n", tga_tokenizer_kind_name(t), dir,
           megabytes, repeats);
    printf("  encode:          %7.2f MB/s  (%zu tokens, %.2f M tokens/s, %.3f s)\n", megabytes / full, tokens,
           (double)tokens / full / 1e6, full);
    printf("  pre-tokenizer:   %7.2f MB/s  (%zu pieces: the regex alone, the bound for encode)\n",
           megabytes / split, pieces);
    free(text);
    tga_tokenizer_free(t);
    return 0;
}
