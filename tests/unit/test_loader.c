/* The training data loader, on shards written here with the shard writer (a directory mixing a
 * float16 image shard, an empty shard, a text-only shard and a float32 image shard, plus files that
 * are not shards). Every batch the loader returns is checked against the samples kept in memory:
 * padding, lengths, spans, the caption branch and the float32 features (float16 decoded here
 * independently). The order is checked against a Fisher-Yates written here from loader.h's
 * description (with a 128-bit multiply), the denominators against a brute-force count over the
 * global batch. Also: slices of 1, 2 and 3 ranks tile each epoch; micro-batch contents are the same
 * on 1, 2 and 4 ranks; save/restore mid-epoch and across an epoch boundary, also under another
 * world size and with prefetch; eval mode; a bad token id; bad data paths and configs. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */

#include "trainer/loader.h"
#include "trainer/model.h"
#include "trainer/shard.h"
#include "runtime/rng.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define P 3
#define DV 4
#define VOCAB 1000
#define PAD 7 /* not 0, so that padding is told apart from token 0 */
#define MAX_SAMPLES 64

static char tmp_dir[] = "/tmp/tga_test_loader_XXXXXX";

static void *xcalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* ---- the data: samples kept in memory, in global index order -------------------------------------- */

typedef struct {
    tga_shard_sample s; /* arrays owned here */
    char id[32];
    tga_shard_dtype dtype;
} ref_sample;

static ref_sample refs[MAX_SAMPLES];
static int n_refs;

static uint32_t below(uint64_t *rng, uint32_t n) { return n ? (uint32_t)(tu_next(rng) % n) : 0; }

static void random_features(ref_sample *r, uint64_t *rng) {
    size_t n = (size_t)r->s.n_images * P * DV;
    if (r->dtype == TGA_SHARD_F32) {
        r->s.features = tu_alloc_uniform(n, -2.0f, 2.0f, rng);
        return;
    }
    uint16_t *halves = xcalloc(n * 2);
    for (size_t k = 0; k < n; k++) {
        uint16_t bits = (uint16_t)tu_next(rng);
        halves[k] =
            (bits & 0x7c00) == 0x7c00 ? (uint16_t)(bits & ~0x4000) : bits; /* finite, subnormals too */
    }
    r->s.features = halves;
}

/* Text gaps around the images; the retrieved span, if any, inside the first gap. */
static void place_images(ref_sample *r, uint64_t *rng) {
    tga_shard_sample *s = &r->s;
    int32_t text = s->n_tokens - s->n_images * P, position = 0;
    s->images = xcalloc(sizeof *s->images * (size_t)(s->n_images + 1));
    for (int32_t i = 0; i < s->n_images; i++) {
        int32_t gap = (int32_t)below(rng, (uint32_t)text + 1);
        if (i == 0 && gap > 0 && below(rng, 2))
            s->retrieved = (tga_shard_span){0, 1 + (int32_t)below(rng, (uint32_t)gap)};
        text -= gap;
        position += gap;
        s->images[i] = (tga_shard_span){position, P};
        position += P;
    }
}

static void make_ref(ref_sample *r, int global, int32_t n_images, tga_shard_dtype dtype, uint64_t *rng) {
    memset(r, 0, sizeof *r);
    tga_shard_sample *s = &r->s;
    snprintf(r->id, sizeof r->id, "sample_%03d", global);
    r->dtype = dtype;
    s->id = r->id;
    s->record = (uint64_t)global;
    s->n_images = n_images;
    s->n_tokens = n_images * P + 1 + (int32_t)below(rng, 24);
    s->n_caption_tokens = (int32_t)below(rng, 9);
    s->tox = below(rng, 4) == 0;
    s->input_ids = xcalloc(4 * (size_t)s->n_tokens);
    s->labels = xcalloc(4 * (size_t)s->n_tokens);
    s->cap_ids = xcalloc(4 * (size_t)s->n_caption_tokens);
    place_images(r, rng);
    for (int32_t t = 0; t < s->n_tokens; t++) {
        s->input_ids[t] = (int32_t)below(rng, VOCAB);
        s->labels[t] = below(rng, 3) ? s->input_ids[t] : TGA_IGNORE_INDEX;
    }
    for (int32_t i = 0; i < n_images; i++)
        for (int32_t t = s->images[i].start; t < s->images[i].start + P; t++) {
            s->input_ids[t] = TGA_IMAGE_TOKEN_ID;
            s->labels[t] = TGA_IGNORE_INDEX;
        }
    for (int32_t t = 0; t < s->n_caption_tokens; t++)
        s->cap_ids[t] = (int32_t)below(rng, VOCAB);
    int32_t start = (int32_t)below(rng, (uint32_t)s->n_caption_tokens + 1);
    s->caption = (tga_shard_span){start, (int32_t)below(rng, (uint32_t)(s->n_caption_tokens - start) + 1)};
    random_features(r, rng);
}

static void free_ref(ref_sample *r) {
    free(r->s.input_ids);
    free(r->s.labels);
    free(r->s.cap_ids);
    free(r->s.images);
    free(r->s.features);
}

static void write_shard(const char *path, const tga_shard_layout *layout, const ref_sample *samples, int n) {
    tga_shard_writer *w = NULL;
    tga_error_clear();
    CHECK(tga_shard_writer_open(&w, path, layout) == TGA_OK, "open %s: %s", path, tga_error_message());
    for (int i = 0; w && i < n; i++)
        CHECK(tga_shard_writer_add(w, &samples[i].s) == TGA_OK, "add %d: %s", i, tga_error_message());
    CHECK(w && tga_shard_writer_close(w) == TGA_OK, "close %s: %s", path, tga_error_message());
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0, "cannot write %s", path);
}

/* Shards named so that sorting matters: a (f16 images), b (empty), c (text only), d (f32 images). */
static void make_data(uint64_t *rng) {
    static const struct {
        const char *name;
        int count, images;
        tga_shard_dtype dtype;
    } shards[] = {{"a.tgas", 17, 1, TGA_SHARD_F16},
                  {"b_empty.tgas", 0, 1, TGA_SHARD_F32},
                  {"c.tgas", 11, 0, TGA_SHARD_F32},
                  {"d.tgas", 9, 1, TGA_SHARD_F32}};
    mkdir(tu_in_dir(tmp_dir, "data"), 0700);
    n_refs = 0;
    for (size_t k = 0; k < sizeof shards / sizeof shards[0]; k++) {
        int first = n_refs;
        for (int i = 0; i < shards[k].count; i++, n_refs++)
            make_ref(&refs[n_refs], n_refs, shards[k].images ? (int32_t)(i % 3) : 0, shards[k].dtype, rng);
        tga_shard_layout layout = {shards[k].images ? P : 0, shards[k].images ? DV : 0, shards[k].dtype};
        char path[600];
        snprintf(path, sizeof path, "%s/%s", tu_in_dir(tmp_dir, "data"), shards[k].name);
        write_shard(path, &layout, refs + first, shards[k].count);
    }
    write_file(tu_in_dir(tmp_dir, "data/zz.tgas.tmp"), "an unfinished shard: ignored");
    write_file(tu_in_dir(tmp_dir, "data/README"), "not a shard: ignored");
}

/* ---- references ----------------------------------------------------------------------------------- */

/* loader.h's Fisher-Yates, with the draw scaled by a 128-bit product. */
static void reference_order(uint64_t seed, uint64_t epoch, int shuffle, uint64_t *order, uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        order[i] = i;
    if (!shuffle) return;
    tga_rng_stream stream = tga_rng_stream_make(seed, TGA_RNG_SHUFFLE, epoch);
    for (uint64_t k = 0; k + 1 < n; k++) {
        uint32_t w[4];
        tga_rng_block(&stream, k / 2, w);
        uint64_t draw = (uint64_t)w[2 * (k % 2)] | (uint64_t)w[2 * (k % 2) + 1] << 32;
        uint64_t i = n - 1 - k, j = (uint64_t)(((unsigned __int128)draw * (i + 1)) >> 64);
        uint64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

static uint64_t brute_force_targets(uint64_t g) {
    const tga_shard_sample *s = &refs[g].s;
    uint64_t count = 0;
    for (int32_t t = 1; t < s->n_tokens; t++)
        if (s->labels[t] != -100) count++;
    return count;
}

static double reference_half(uint16_t h) {
    int exponent = (h >> 10) & 31, mantissa = h & 1023;
    double v = exponent ? ldexp(1024.0 + mantissa, exponent - 25) : ldexp((double)mantissa, -24);
    return (h & 0x8000) ? -v : v;
}

static double reference_feature(const ref_sample *r, size_t k) {
    return r->dtype == TGA_SHARD_F16 ? reference_half(((const uint16_t *)r->s.features)[k])
                                     : (double)((const float *)r->s.features)[k];
}

/* Row b of the batch against the sample it came from; *image counts the batch's image slots. */
static int row_matches(const tga_batch *b, int row, const ref_sample *r, int *image) {
    const tga_shard_sample *s = &r->s;
    int ok = b->lengths[row] == s->n_tokens && b->cap_lengths[row] == s->n_caption_tokens &&
             b->ret_start[row] == s->retrieved.start && b->ret_len[row] == s->retrieved.length &&
             b->cap_start[row] == s->caption.start && b->cap_len[row] == s->caption.length &&
             b->tox[row] == s->tox;
    for (int t = 0; ok && t < b->T; t++) {
        size_t at = (size_t)row * b->T + t;
        ok = t < s->n_tokens ? b->input_ids[at] == s->input_ids[t] && b->labels[at] == s->labels[t]
                             : b->input_ids[at] == PAD && b->labels[at] == -100;
    }
    for (int t = 0; ok && t < b->Tc; t++)
        ok = b->cap_ids[(size_t)row * b->Tc + t] == (t < s->n_caption_tokens ? s->cap_ids[t] : PAD);
    for (int i = 0; ok && i < s->n_images; i++, (*image)++) {
        ok = *image < b->n_images && b->image_sample[*image] == row &&
             b->image_start[*image] == s->images[i].start;
        for (size_t k = 0; ok && k < P * DV; k++)
            ok = (double)b->image_features[(size_t)*image * P * DV + k] ==
                 reference_feature(r, (size_t)i * P * DV + k);
    }
    return ok;
}

/* The batch holds exactly these samples, padded to its longest one. */
static void check_batch(const tga_batch *b, const uint64_t *samples, int B, const char *what) {
    int T = 0, Tc = 0, images = 0, image = 0;
    for (int row = 0; row < B; row++) {
        const tga_shard_sample *s = &refs[samples[row]].s;
        T = s->n_tokens > T ? s->n_tokens : T;
        Tc = s->n_caption_tokens > Tc ? s->n_caption_tokens : Tc;
        images += s->n_images;
    }
    CHECK(b->B == B && b->T == T && b->Tc == Tc && b->n_images == images,
          "%s: batch shape B %d T %d Tc %d images %d, want %d %d %d %d", what, b->B, b->T, b->Tc, b->n_images,
          B, T, Tc, images);
    if (b->B != B || b->T != T || b->Tc != Tc || b->n_images != images) return;
    for (int row = 0; row < B; row++)
        CHECK(row_matches(b, row, &refs[samples[row]], &image),
              "%s: row %d (sample %llu) differs from the shard", what, row, (unsigned long long)samples[row]);
}

/* FNV-1a over every array of a batch: equal hashes mean (for these tests) equal batches. */
static uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t hash_batch(const tga_batch *b) {
    size_t bt = (size_t)b->B * b->T, btc = (size_t)b->B * b->Tc, nb = (size_t)b->B, ni = (size_t)b->n_images;
    int header[4] = {b->B, b->T, b->Tc, b->n_images};
    uint64_t h = hash_bytes(0xcbf29ce484222325ull, header, sizeof header);
    h = hash_bytes(h, b->input_ids, 4 * bt);
    h = hash_bytes(h, b->labels, 4 * bt);
    h = hash_bytes(h, b->cap_ids, 4 * btc);
    const int32_t *per_sample[] = {b->lengths,     b->ret_start, b->ret_len,
                                   b->cap_lengths, b->cap_start, b->cap_len};
    for (size_t k = 0; k < 6; k++)
        h = hash_bytes(h, per_sample[k], 4 * nb);
    h = hash_bytes(h, b->tox, nb);
    h = hash_bytes(h, b->image_sample, 4 * ni);
    h = hash_bytes(h, b->image_start, 4 * ni);
    return hash_bytes(h, b->image_features, 4 * ni * P * DV);
}

/* ---- running loaders -------------------------------------------------------------------------------- */

typedef struct {
    int m, a, w, shuffle, prefetch;
    tga_loader_mode mode;
    uint64_t seed;
} run_shape;

static tga_loader_config loader_config(const char *path, run_shape s, int rank, int32_t vocab, int32_t pad) {
    return (tga_loader_config){.path = path,
                               .vocab_size = vocab,
                               .pad_id = pad,
                               .seed = s.seed,
                               .shuffle = s.shuffle,
                               .mode = s.mode,
                               .micro_batch = s.m,
                               .grad_accum = s.a,
                               .world_size = s.w,
                               .rank = rank,
                               .prefetch = s.prefetch};
}

static tga_loader *open_loader(const char *path, run_shape s, int rank) {
    tga_loader_config c = loader_config(path, s, rank, VOCAB, PAD);
    tga_loader *l = NULL;
    tga_error_clear();
    CHECK(tga_loader_open(&l, &c) == TGA_OK, "open %s (m %d a %d w %d rank %d): %s", path, s.m, s.a, s.w,
          rank, tga_error_message());
    return l;
}

/* What the whole run saw of one global micro-batch (filled from whichever rank holds it). */
typedef struct {
    int B;
    uint64_t samples[16];
    uint64_t hash;
} micro_record;

#define MAX_STEPS 24
#define MAX_GLOBAL_MICRO 16

typedef struct {
    micro_record micro[MAX_STEPS][MAX_GLOBAL_MICRO];
    uint64_t targets[MAX_STEPS], n_samples[MAX_STEPS];
} run_record;

/* Runs every rank of a world for `steps` steps from `start` (NULL: the beginning), checking each
 * batch against the shards and each step's denominators against a brute-force count. */
static void run_world(const char *what, run_shape s, const tga_loader_position *start, int steps,
                      run_record *out) {
    memset(out, 0, sizeof *out);
    uint64_t n = (uint64_t)n_refs, G = (uint64_t)s.m * s.a * s.w, order[MAX_SAMPLES];
    for (int rank = 0; rank < s.w; rank++) {
        tga_loader *l = open_loader(tu_in_dir(tmp_dir, "data"), s, rank);
        if (!l) return;
        uint64_t per_epoch = tga_loader_get_info(l).steps_per_epoch;
        tga_error_clear();
        if (start) CHECK(tga_loader_seek(l, start) == TGA_OK, "%s: seek: %s", what, tga_error_message());
        for (int k = 0; k < steps; k++) {
            tga_loader_step st;
            tga_error_clear();
            if (tga_loader_next(l, &st) != TGA_OK) {
                CHECK(0, "%s: rank %d step %d: %s", what, rank, k, tga_error_message());
                break;
            }
            uint64_t global = (start ? start->global_step : 0) + (uint64_t)k;
            CHECK(st.global_step == global && st.epoch == global / per_epoch &&
                      st.step_in_epoch == global % per_epoch,
                  "%s: step %d is at global step %llu", what, k, (unsigned long long)st.global_step);
            reference_order(s.seed, st.epoch, s.shuffle, order, n);
            uint64_t begin = st.step_in_epoch * G, end = begin + G < n ? begin + G : n, targets = 0;
            for (uint64_t p = begin; p < end; p++)
                targets += brute_force_targets(order[p]);
            CHECK(st.n_targets_global == targets && st.n_samples_global == end - begin,
                  "%s: rank %d step %d: denominators %llu targets / %llu samples, brute force %llu / %llu",
                  what, rank, k, (unsigned long long)st.n_targets_global,
                  (unsigned long long)st.n_samples_global, (unsigned long long)targets,
                  (unsigned long long)(end - begin));
            for (int i = 0; i < st.n_micro; i++) {
                micro_record *rec = &out->micro[k][rank * s.a + i];
                rec->B = st.micro[i].B;
                memcpy(rec->samples, st.sample_index + (size_t)i * st.micro_batch,
                       sizeof(uint64_t) * (size_t)rec->B);
                rec->hash = hash_batch(&st.micro[i]);
                check_batch(&st.micro[i], rec->samples, rec->B, what);
            }
            out->targets[k] = st.n_targets_global;
            out->n_samples[k] = st.n_samples_global;
        }
        tga_loader_close(l);
    }
}

static int same_runs(const run_record *a, const run_record *b, int steps) {
    for (int k = 0; k < steps; k++) {
        if (a->targets[k] != b->targets[k] || a->n_samples[k] != b->n_samples[k]) return 0;
        for (int j = 0; j < MAX_GLOBAL_MICRO; j++) {
            const micro_record *x = &a->micro[k][j], *y = &b->micro[k][j];
            if (x->B != y->B || x->hash != y->hash ||
                memcmp(x->samples, y->samples, sizeof(uint64_t) * (size_t)x->B))
                return 0;
        }
    }
    return 1;
}

/* Global micro-batch j of step k covers permuted positions [k*G + j*m, +m) of its epoch. */
static void check_tiling(const char *what, run_shape s, const run_record *rec, int steps) {
    uint64_t n = (uint64_t)n_refs, G = (uint64_t)s.m * s.a * s.w, order[MAX_SAMPLES];
    uint64_t per_epoch = s.mode == TGA_LOADER_TRAIN ? n / G : (n + G - 1) / G;
    for (int k = 0; k < steps; k++) {
        uint64_t epoch = (uint64_t)k / per_epoch, begin = (uint64_t)k % per_epoch * G;
        reference_order(s.seed, epoch, s.shuffle, order, n);
        for (int j = 0; j < s.a * s.w; j++) {
            uint64_t first = begin + (uint64_t)j * s.m;
            int want = first >= n ? 0 : (int)(n - first < (uint64_t)s.m ? n - first : (uint64_t)s.m);
            const micro_record *r = &rec->micro[k][j];
            CHECK(r->B == want, "%s: step %d micro %d has %d samples, want %d", what, k, j, r->B, want);
            for (int b = 0; b < r->B && b < want; b++)
                CHECK(r->samples[b] == order[first + (uint64_t)b], "%s: step %d micro %d sample %d", what, k,
                      j, b);
        }
    }
}

/* Over each whole epoch: every sample of the covered positions exactly once, none from the tail. */
static void check_epoch_cover(const char *what, run_shape s, const run_record *rec, int epoch_steps,
                              int first_step) {
    uint64_t n = (uint64_t)n_refs, G = (uint64_t)s.m * s.a * s.w, order[MAX_SAMPLES];
    int seen[MAX_SAMPLES] = {0};
    for (int k = first_step; k < first_step + epoch_steps; k++)
        for (int j = 0; j < s.a * s.w; j++)
            for (int b = 0; b < rec->micro[k][j].B; b++)
                seen[rec->micro[k][j].samples[b]]++;
    reference_order(s.seed, (uint64_t)first_step / (uint64_t)epoch_steps, s.shuffle, order, n);
    uint64_t covered = s.mode == TGA_LOADER_TRAIN ? (uint64_t)epoch_steps * G : n;
    for (uint64_t p = 0; p < n; p++)
        CHECK(seen[order[p]] == (p < covered ? 1 : 0), "%s: sample %llu (position %llu) seen %d times", what,
              (unsigned long long)order[p], (unsigned long long)p, seen[order[p]]);
}

/* ---- tests ------------------------------------------------------------------------------------------ */

static void test_info(void) {
    run_shape s = {2, 2, 1, 1, 0, TGA_LOADER_TRAIN, 5};
    tga_loader *l = open_loader(tu_in_dir(tmp_dir, "data"), s, 0);
    if (!l) return;
    tga_loader_info info = tga_loader_get_info(l);
    int32_t max_t = 0, max_tc = 0, max_images = 0;
    for (int g = 0; g < n_refs; g++) {
        max_t = refs[g].s.n_tokens > max_t ? refs[g].s.n_tokens : max_t;
        max_tc = refs[g].s.n_caption_tokens > max_tc ? refs[g].s.n_caption_tokens : max_tc;
        max_images = refs[g].s.n_images > max_images ? refs[g].s.n_images : max_images;
    }
    CHECK(info.n_samples == (uint64_t)n_refs && info.n_shards == 4 && info.global_batch == 4 &&
              info.steps_per_epoch == (uint64_t)n_refs / 4 && info.patches_per_image == P &&
              info.feature_dim == DV,
          "info: %llu samples, %llu shards, G %llu, %llu steps, P %d, Dv %d",
          (unsigned long long)info.n_samples, (unsigned long long)info.n_shards,
          (unsigned long long)info.global_batch, (unsigned long long)info.steps_per_epoch,
          info.patches_per_image, info.feature_dim);
    CHECK(info.max_tokens == max_t && info.max_caption_tokens == max_tc && info.max_images == max_images,
          "info maxima %d %d %d, want %d %d %d", info.max_tokens, info.max_caption_tokens, info.max_images,
          max_t, max_tc, max_images);
    tga_loader_position p = tga_loader_tell(l);
    CHECK(p.epoch == 0 && p.step_in_epoch == 0 && p.global_step == 0, "a new loader starts at step 0");
    tga_loader_close(l);
    tga_loader *file = open_loader(tu_in_dir(tmp_dir, "data/c.tgas"), s, 0); /* a single shard file */
    CHECK(file && tga_loader_get_info(file).n_samples == 11 &&
              tga_loader_get_info(file).patches_per_image == 0,
          "a single text-only shard");
    tga_loader_close(file);
}

/* 1, 2 and 3 ranks, two epochs and a bit: slices tile the permuted full batches. */
static void test_slices_cover_epochs(run_record *rec) {
    for (int w = 1; w <= 3; w++) {
        run_shape s = {2, 2, w, 1, w == 2, TGA_LOADER_TRAIN, 99};
        int per_epoch = n_refs / (4 * w), steps = 2 * per_epoch + 1;
        char what[64];
        snprintf(what, sizeof what, "train, %d rank(s)", w);
        run_world(what, s, NULL, steps, rec);
        check_tiling(what, s, rec, steps);
        check_epoch_cover(what, s, rec, per_epoch, 0);
        check_epoch_cover(what, s, rec, per_epoch, per_epoch);
    }
}

/* m = 2, G = 8 on 1, 2 and 4 ranks: global micro-batch j is the same batch, byte for byte. */
static void test_world_invariance(run_record *rec) {
    static run_record reference;
    run_shape one = {2, 4, 1, 1, 0, TGA_LOADER_TRAIN, 7};
    int steps = 2 * (n_refs / 8) + 1;
    run_world("w=1", one, NULL, steps, &reference);
    run_shape others[] = {{2, 2, 2, 1, 1, TGA_LOADER_TRAIN, 7}, {2, 1, 4, 1, 0, TGA_LOADER_TRAIN, 7}};
    for (size_t c = 0; c < 2; c++) {
        run_world("w>1", others[c], NULL, steps, rec);
        for (int k = 0; k < steps; k++) {
            CHECK(rec->targets[k] == reference.targets[k] && rec->n_samples[k] == reference.n_samples[k],
                  "w=%d step %d: denominators differ from w=1", others[c].w, k);
            for (int j = 0; j < 4; j++)
                CHECK(rec->micro[k][j].B == reference.micro[k][j].B &&
                          rec->micro[k][j].hash == reference.micro[k][j].hash,
                      "w=%d step %d micro %d differs from w=1", others[c].w, k, j);
        }
    }
}

static void test_shuffle(void) {
    uint64_t n = (uint64_t)n_refs, e0[MAX_SAMPLES], e1[MAX_SAMPLES], other_seed[MAX_SAMPLES];
    reference_order(3, 0, 1, e0, n);
    reference_order(3, 1, 1, e1, n);
    reference_order(4, 0, 1, other_seed, n);
    int seen[MAX_SAMPLES] = {0};
    for (uint64_t p = 0; p < n; p++)
        seen[e0[p]]++;
    int permutation = 1;
    for (uint64_t i = 0; i < n; i++)
        permutation &= seen[i] == 1;
    CHECK(permutation, "the reference order is not a permutation");
    CHECK(memcmp(e0, e1, sizeof(uint64_t) * n) != 0 && memcmp(e0, other_seed, sizeof(uint64_t) * n) != 0,
          "epochs and seeds must give different orders");
    /* the loader's order is checked against the reference in every run; here: two runs agree, and
     * shuffle off is the index order */
    static run_record a, b;
    run_shape s = {3, 1, 1, 1, 0, TGA_LOADER_TRAIN, 3};
    run_world("shuffle, first run", s, NULL, 24, &a);
    run_world("shuffle, second run", s, NULL, 24, &b);
    CHECK(same_runs(&a, &b, 24), "two runs with the same seed differ");
    run_shape plain = {3, 1, 1, 0, 0, TGA_LOADER_TRAIN, 3};
    run_world("no shuffle", plain, NULL, 12, &a);
    check_tiling("no shuffle", plain, &a, 12);
    CHECK(a.micro[0][0].samples[0] == 0 && a.micro[1][0].samples[0] == 3 && a.micro[11][0].samples[2] == 35,
          "shuffle off must read the samples in index order");
}

/* One uninterrupted run on 1 rank; interrupted runs stop after `stop` steps on one world size (with
 * prefetch: the position must not count the step built ahead) and resume on another. */
static void test_save_restore(run_record *rec) {
    static run_record whole;
    run_shape one = {2, 4, 1, 1, 0, TGA_LOADER_TRAIN, 21};
    int per_epoch = n_refs / 8, total = 3 * per_epoch;
    run_world("uninterrupted", one, NULL, total, &whole);
    const struct {
        int stop;
        run_shape before, after;
    } cases[] = {
        {2, {2, 2, 2, 1, 1, TGA_LOADER_TRAIN, 21}, {2, 1, 4, 1, 0, TGA_LOADER_TRAIN, 21}}, /* mid-epoch */
        {per_epoch,
         {2, 1, 4, 1, 1, TGA_LOADER_TRAIN, 21},
         {2, 4, 1, 1, 1, TGA_LOADER_TRAIN, 21}}, /* at a boundary */
        {per_epoch - 1,
         {2, 4, 1, 1, 0, TGA_LOADER_TRAIN, 21},
         {2, 2, 2, 1, 1, TGA_LOADER_TRAIN, 21}}, /* across one */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        tga_loader *l = open_loader(tu_in_dir(tmp_dir, "data"), cases[c].before, cases[c].before.w - 1);
        if (!l) return;
        tga_loader_step st;
        for (int k = 0; k < cases[c].stop; k++)
            CHECK(tga_loader_next(l, &st) == TGA_OK, "case %zu: step %d: %s", c, k, tga_error_message());
        tga_loader_position p = tga_loader_tell(l);
        tga_loader_close(l);
        CHECK(p.global_step == (uint64_t)cases[c].stop && p.epoch == (uint64_t)(cases[c].stop / per_epoch) &&
                  p.step_in_epoch == (uint64_t)(cases[c].stop % per_epoch),
              "case %zu: saved position %llu (epoch %llu step %llu), want %d", c,
              (unsigned long long)p.global_step, (unsigned long long)p.epoch,
              (unsigned long long)p.step_in_epoch, cases[c].stop);
        int rest = total - cases[c].stop;
        run_world("resumed", cases[c].after, &p, rest, rec);
        for (int k = 0; k < rest; k++)
            for (int j = 0; j < 4; j++)
                CHECK(rec->micro[k][j].hash == whole.micro[cases[c].stop + k][j].hash &&
                          rec->targets[k] == whole.targets[cases[c].stop + k],
                      "case %zu: resumed step %d micro %d differs from the uninterrupted run", c, k, j);
    }
}

/* A seek within one loader (backwards, after prefetch ran ahead) and the positions it refuses. */
static void test_seek(void) {
    run_shape s = {2, 2, 1, 1, 1, TGA_LOADER_TRAIN, 8};
    tga_loader *l = open_loader(tu_in_dir(tmp_dir, "data"), s, 0);
    if (!l) return;
    tga_loader_step st;
    uint64_t hashes[12];
    for (int k = 0; k < 12; k++) {
        CHECK(tga_loader_next(l, &st) == TGA_OK, "step %d: %s", k, tga_error_message());
        hashes[k] = hash_batch(&st.micro[1]);
    }
    tga_loader_position p = tga_loader_tell(l);
    CHECK(p.global_step == 12 && p.epoch == 1 && p.step_in_epoch == 3,
          "position after 12 steps of 9 per epoch");
    p.global_step = 7, p.epoch = 0, p.step_in_epoch = 7;
    CHECK(tga_loader_seek(l, &p) == TGA_OK, "seek back: %s", tga_error_message());
    for (int k = 7; k < 12; k++)
        CHECK(tga_loader_next(l, &st) == TGA_OK && st.global_step == (uint64_t)k &&
                  hash_batch(&st.micro[1]) == hashes[k],
              "after a seek back, step %d differs", k);
    const struct {
        const char *expected;
        tga_loader_position position;
    } bad[] = {
        {"global batches of 8", {0, 0, 0, (uint64_t)n_refs, 8, 8, 1, 0}},
        {"seed 9", {0, 0, 0, (uint64_t)n_refs, 4, 9, 1, 0}},
        {"shuffle 0", {0, 0, 0, (uint64_t)n_refs, 4, 8, 0, 0}},
        {"36 samples", {0, 0, 0, 36, 4, 8, 1, 0}},
        {"is inconsistent", {1, 2, 12, (uint64_t)n_refs, 4, 8, 1, 0}},
        {"is inconsistent", {0, 9, 9, (uint64_t)n_refs, 4, 8, 1, 0}},
    };
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        tga_error_clear();
        CHECK(tga_loader_seek(l, &bad[c].position) == TGA_ERR_CONFIG &&
                  strstr(tga_error_message(), bad[c].expected),
              "bad position %zu: %s", c, tga_error_message());
    }
    CHECK(tga_loader_tell(l).global_step == 12, "a refused seek moves nothing");
    tga_loader_close(l);
}

/* Every sample once per epoch, the last step cut short; 3 ranks, so some get no micro-batch. */
static void test_eval(run_record *rec) {
    for (int shuffle = 0; shuffle <= 1; shuffle++) {
        run_shape s = {2, 2, 3, shuffle, shuffle, TGA_LOADER_EVAL, 11};
        int per_epoch = (n_refs + 11) / 12;
        run_world("eval", s, NULL, 2 * per_epoch, rec);
        check_tiling("eval", s, rec, 2 * per_epoch);
        check_epoch_cover("eval", s, rec, per_epoch, 0);
        check_epoch_cover("eval", s, rec, per_epoch, per_epoch);
        CHECK(rec->n_samples[per_epoch - 1] == (uint64_t)(n_refs - 12 * (per_epoch - 1)),
              "eval: the last step holds the rest of the epoch");
    }
    run_shape s = {2, 2, 3, 0, 0, TGA_LOADER_EVAL, 11};
    tga_loader *last_rank = open_loader(tu_in_dir(tmp_dir, "data"), s, 2);
    tga_loader_step st = {0};
    for (int k = 0; last_rank && k < (n_refs + 11) / 12; k++)
        CHECK(tga_loader_next(last_rank, &st) == TGA_OK, "eval step %d: %s", k, tga_error_message());
    CHECK(st.n_micro == 0 && st.n_samples_global == 1, "eval: rank 2's last step has %d micro-batches",
          st.n_micro);
    tga_loader_close(last_rank);
}

/* Prefetch on and off: the same batches, also while a prefetched step is thrown away by a seek. */
static void test_prefetch_identical(run_record *rec) {
    static run_record off;
    run_shape s = {3, 2, 1, 1, 0, TGA_LOADER_TRAIN, 17};
    run_world("prefetch off", s, NULL, 18, &off);
    s.prefetch = 1;
    run_world("prefetch on", s, NULL, 18, rec);
    CHECK(same_runs(rec, &off, 18), "prefetch on and off give different batches");
}

static void expect_failure(tga_status st, tga_status code, const char *what, const char *fragment1,
                           const char *fragment2) {
    const char *message = tga_error_message();
    CHECK(st == code && strstr(message, fragment1) && (!fragment2 || strstr(message, fragment2)),
          "%s: status %s, message '%s' (want %s with '%s')", what, tga_status_name(st), message,
          tga_status_name(code), fragment1);
    tga_error_clear();
}

/* A token id past the vocabulary in input_ids, labels or cap_ids of sample 2 of a shard: the step
 * that holds it fails, naming the shard, the sample, its id and the position; earlier steps pass
 * and the position stays at the failing step (with prefetch, the error waits for that step). */
static void test_bad_token(uint64_t *rng) {
    static const char *arrays[] = {"input_ids", "labels", "cap_ids"};
    mkdir(tu_in_dir(tmp_dir, "bad"), 0700);
    for (int which = 0; which < 3; which++) {
        ref_sample samples[4];
        for (int i = 0; i < 4; i++) {
            make_ref(&samples[i], 100 + i, 0, TGA_SHARD_F32, rng);
            while (i == 2 && (samples[i].s.n_caption_tokens < 1 || samples[i].s.n_tokens < 2)) {
                free_ref(&samples[i]);
                make_ref(&samples[i], 100 + i, 0, TGA_SHARD_F32, rng);
            }
        }
        int32_t *target = which == 0   ? samples[2].s.input_ids
                          : which == 1 ? samples[2].s.labels
                                       : samples[2].s.cap_ids;
        target[1 - (which == 2)] = VOCAB + 5;
        tga_shard_layout text = {0, 0, TGA_SHARD_F32};
        write_shard(tu_in_dir(tmp_dir, "bad/x.tgas"), &text, samples, 4);
        run_shape s = {1, 1, 1, 0, which != 1, TGA_LOADER_TRAIN, 1};
        tga_loader *l = open_loader(tu_in_dir(tmp_dir, "bad/x.tgas"), s, 0);
        tga_loader_step st;
        for (int k = 0; l && k < 2; k++)
            CHECK(tga_loader_next(l, &st) == TGA_OK, "bad token: step %d must pass: %s", k,
                  tga_error_message());
        char expected[700];
        snprintf(expected, sizeof expected,
                 "%s: sample 2 (id 'sample_102'): %s[%d] = %d is outside the model's vocabulary [0, %d)",
                 tu_in_dir(tmp_dir, "bad/x.tgas"), arrays[which], 1 - (which == 2), VOCAB + 5, VOCAB);
        tga_error_clear();
        if (l) expect_failure(tga_loader_next(l, &st), TGA_ERR_FORMAT, "bad token", expected, NULL);
        CHECK(l && tga_loader_tell(l).global_step == 2, "a failed step must not move the position");
        if (l) expect_failure(tga_loader_next(l, &st), TGA_ERR_FORMAT, "bad token, again", expected, NULL);
        tga_loader_close(l);
        for (int i = 0; i < 4; i++)
            free_ref(&samples[i]);
    }
}

static tga_status open_expecting_failure(const char *path, run_shape s, int rank, int32_t vocab,
                                         int32_t pad) {
    tga_loader_config c = loader_config(path, s, rank, vocab, pad);
    tga_loader *l = NULL;
    tga_error_clear();
    tga_status st = tga_loader_open(&l, &c);
    CHECK(st != TGA_OK && l == NULL, "open %s must fail", path);
    tga_loader_close(l);
    return st;
}

static void test_bad_paths_and_configs(uint64_t *rng) {
    run_shape s = {2, 2, 1, 1, 1, TGA_LOADER_TRAIN, 1};
    mkdir(tu_in_dir(tmp_dir, "mismatch"), 0700);
    mkdir(tu_in_dir(tmp_dir, "empty_dir"), 0700);
    ref_sample sample;
    make_ref(&sample, 0, 1, TGA_SHARD_F32, rng);
    tga_shard_layout wide = {P, DV + 1, TGA_SHARD_F32}, narrow = {P, DV, TGA_SHARD_F32};
    float *features = xcalloc(sizeof(float) * P * (DV + 1));
    void *own = sample.s.features;
    write_shard(tu_in_dir(tmp_dir, "mismatch/1.tgas"), &narrow, &sample, 1);
    sample.s.features = features;
    write_shard(tu_in_dir(tmp_dir, "mismatch/2.tgas"), &wide, &sample, 1);
    sample.s.features = own;
    free(features);
    free_ref(&sample);
    expect_failure(open_expecting_failure(tu_in_dir(tmp_dir, "mismatch"), s, 0, VOCAB, PAD), TGA_ERR_FORMAT,
                   "P/Dv mismatch", "mismatch/2.tgas has images of P = 3 patches x Dv = 5, but ",
                   "mismatch/1.tgas has P = 3 x Dv = 4");
    expect_failure(open_expecting_failure(tu_in_dir(tmp_dir, "empty_dir"), s, 0, VOCAB, PAD), TGA_ERR_IO,
                   "empty dir", "holds no *.tgas shard", NULL);
    expect_failure(open_expecting_failure(tu_in_dir(tmp_dir, "missing"), s, 0, VOCAB, PAD), TGA_ERR_IO,
                   "missing", "cannot open the data path", "No such file");
    expect_failure(open_expecting_failure(tu_in_dir(tmp_dir, "data/b_empty.tgas"), s, 0, VOCAB, PAD),
                   TGA_ERR_FORMAT, "no samples", "holds no sample", NULL);
    run_shape huge = {4, 4, 3, 1, 0, TGA_LOADER_TRAIN, 1};
    expect_failure(open_expecting_failure(tu_in_dir(tmp_dir, "data"), huge, 0, VOCAB, PAD), TGA_ERR_CONFIG,
                   "G > n", "fewer than one global batch of 48", NULL);
    expect_failure(open_expecting_failure(tu_in_dir(tmp_dir, "data"), s, 1, VOCAB, PAD), TGA_ERR_CONFIG,
                   "rank", "rank 1 of a world of 1", NULL);
    expect_failure(open_expecting_failure(tu_in_dir(tmp_dir, "data"), s, 0, VOCAB, VOCAB), TGA_ERR_CONFIG,
                   "pad", "pad id 1000", NULL);
    run_shape zero = {0, 2, 1, 1, 0, TGA_LOADER_TRAIN, 1};
    expect_failure(open_expecting_failure(tu_in_dir(tmp_dir, "data"), zero, 0, VOCAB, PAD), TGA_ERR_CONFIG,
                   "micro_batch 0", "micro_batch 0", NULL);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    uint64_t rng = 0x10ade5;
    make_data(&rng);
    static run_record rec;
    test_info();
    test_slices_cover_epochs(&rec);
    test_world_invariance(&rec);
    test_shuffle();
    test_save_restore(&rec);
    test_seek();
    test_eval(&rec);
    test_prefetch_identical(&rec);
    test_bad_token(&rng);
    test_bad_paths_and_configs(&rng);
    for (int g = 0; g < n_refs; g++)
        free_ref(&refs[g]);
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return tu_finish("test_loader");
}
