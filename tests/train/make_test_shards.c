/* Random but valid training shards for the `tga train` integration and fault tests.
 *
 *   make_test_shards OUT_DIR N_SAMPLES N_SHARDS SEED
 *
 * Writes OUT_DIR/shard-00000.tgas .. (N_SAMPLES split as evenly as possible), deterministic from
 * SEED. The shapes match tests/train/tiny.yaml: vocabulary 64, T in 12..40, images of P = 4 patches
 * x Dv = 8 float32 features. Samples mix what the trainer must handle in one batch: 0, 1 or 2
 * images; a retrieved-text span before the first image in most image samples (the rank term); a
 * caption branch with a caption span for image samples (the pair term); some tox samples (skipped by
 * the alignment terms); text-only samples with and without a caption branch. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/model.h"
#include "trainer/shard.h"

enum { VOCAB = 64, MIN_T = 12, MAX_T = 40, PATCHES = 4, FEATURES = 8, MAX_IMAGES = 2, MAX_TC = 12 };

/* splitmix64: a tiny, well-mixed generator, so the data depend on SEED alone */
static uint64_t next_u64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int uniform_int(uint64_t *state, int lo, int hi) { /* inclusive */
    return lo + (int)(next_u64(state) % (uint64_t)(hi - lo + 1));
}

static float uniform_float(uint64_t *state) { /* [-1, 1) */
    return (float)((double)(next_u64(state) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* The arrays of one sample, sized for the largest one. */
typedef struct {
    int32_t input_ids[MAX_T], labels[MAX_T], cap_ids[MAX_TC];
    tga_shard_span images[MAX_IMAGES];
    float features[MAX_IMAGES * PATCHES * FEATURES];
    char id[32];
} sample_storage;

/* Layout of a sample: [bos] [retrieved text] [image] [text] [image] [prompt text] [answer]. The
 * answer (the last 3..8 tokens) is supervised, so every sample has targets; T is drawn last, large
 * enough for the rest. */
static void make_sample(uint64_t *rng, uint64_t index, sample_storage *m, tga_shard_sample *s) {
    memset(s, 0, sizeof *s);
    int roll = uniform_int(rng, 0, 9);
    int n_images = roll < 2 ? 0 : roll < 7 ? 1 : 2;
    int cursor = 1;
    if (n_images > 0 && uniform_int(rng, 0, 9) < 8) {
        s->retrieved = (tga_shard_span){cursor, uniform_int(rng, 2, 4)};
        cursor += s->retrieved.length;
    }
    for (int i = 0; i < n_images; i++) {
        m->images[i] = (tga_shard_span){cursor, PATCHES};
        cursor += PATCHES + uniform_int(rng, 0, 2);
    }
    int answer = uniform_int(rng, 3, 8);
    int shortest = cursor + 1 + answer;
    int T = uniform_int(rng, shortest > MIN_T ? shortest : MIN_T, MAX_T);
    for (int t = 0; t < T; t++) {
        m->input_ids[t] = uniform_int(rng, 1, VOCAB - 1);
        m->labels[t] = t >= T - answer ? m->input_ids[t] : TGA_IGNORE_INDEX;
    }
    for (int i = 0; i < n_images; i++)
        for (int p = 0; p < PATCHES; p++) m->input_ids[m->images[i].start + p] = TGA_IMAGE_TOKEN_ID;
    for (int k = 0; k < n_images * PATCHES * FEATURES; k++) m->features[k] = uniform_float(rng);
    int with_caption = n_images > 0 || uniform_int(rng, 0, 1);
    int Tc = with_caption ? uniform_int(rng, 4, MAX_TC) : 0;
    for (int t = 0; t < Tc; t++) m->cap_ids[t] = uniform_int(rng, 1, VOCAB - 1);
    if (Tc > 0) s->caption = (tga_shard_span){1, uniform_int(rng, 2, Tc - 1)};
    snprintf(m->id, sizeof m->id, "test-%05llu", (unsigned long long)index);
    s->id = m->id;
    s->record = index;
    s->n_tokens = T;
    s->input_ids = m->input_ids;
    s->labels = m->labels;
    s->n_images = n_images;
    s->images = m->images;
    s->features = m->features;
    s->tox = n_images > 0 && uniform_int(rng, 0, 9) < 2;
    s->n_caption_tokens = Tc;
    s->cap_ids = m->cap_ids;
}

static tga_status write_shard(const char *path, uint64_t *rng, uint64_t first, uint64_t count) {
    tga_shard_layout layout = {PATCHES, FEATURES, TGA_SHARD_F32};
    tga_shard_writer *w;
    TGA_TRY(tga_shard_writer_open(&w, path, &layout));
    sample_storage m;
    for (uint64_t i = first; i < first + count; i++) {
        tga_shard_sample s;
        make_sample(rng, i, &m, &s);
        tga_status st = tga_shard_writer_add(w, &s);
        if (st != TGA_OK) {
            tga_shard_writer_discard(w);
            return st;
        }
    }
    return tga_shard_writer_close(w);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: make_test_shards OUT_DIR N_SAMPLES N_SHARDS SEED\n");
        return 2;
    }
    long long n = atoll(argv[2]), shards = atoll(argv[3]);
    uint64_t rng = strtoull(argv[4], NULL, 10);
    if (n < 1 || shards < 1 || shards > n) {
        fprintf(stderr, "make_test_shards: need 1 <= N_SHARDS <= N_SAMPLES\n");
        return 2;
    }
    uint64_t first = 0;
    for (long long k = 0; k < shards; k++) {
        uint64_t count = (uint64_t)(n / shards + (k < n % shards));
        char path[4096];
        snprintf(path, sizeof path, "%s/shard-%05lld.tgas", argv[1], k);
        if (write_shard(path, &rng, first, count) != TGA_OK) {
            fprintf(stderr, "make_test_shards: %s\n", tga_error_message());
            return 1;
        }
        first += count;
    }
    /* like tga prep, mark the directory finished last (tga train refuses one without it) */
    char marker[4096];
    snprintf(marker, sizeof marker, "%s/prep.json", argv[1]);
    FILE *f = fopen(marker, "w");
    if (!f || fprintf(f, "{\"samples\": %lld, \"shards\": %lld, \"by\": \"make_test_shards\"}\n", n, shards) < 0 ||
        fclose(f) != 0) {
        fprintf(stderr, "make_test_shards: cannot write %s\n", marker);
        return 1;
    }
    printf("make_test_shards: %lld samples in %lld shard(s) in %s\n", n, shards, argv[1]);
    return 0;
}
