/* The fused TGA alignment ops (kernels/cpu/align_fused.c) on a batch shaped like the model's: per
 * sample an image span (one sample has two, one has none), a retrieved-text span (one empty, one
 * overlapping the image span), a tox sample; three align layers.
 * - against a naive double reference written here: the pooled vectors, the cosines, the weighted
 *   exp terms, the gradients w.r.t. the pooled vectors and their spread back to hidden rows;
 * - central finite differences of pair + rank w.r.t. the hidden states of every layer, through
 *   the forward and the fused backward;
 * - the same bits as the per-layer composition of segment_mean_forward/backward and
 *   tga_align_loss (the model's numbers must not change with fusion);
 * - NULL cosine and gradient outputs; the sums are added to, not overwritten. */
#include "kernels/cpu/cpu_kernels.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LAYERS = 3, SAMPLES = 5, ROWS_PER_SAMPLE = 12, DIM = 48, PATCHES = 4, N_IMAGES = 5 };
enum { N_ROWS = SAMPLES * ROWS_PER_SAMPLE, LAYER_SIZE = SAMPLES * DIM, HIDDEN_SIZE = N_ROWS * DIM };

static const float EPS = 1e-8f, W_PAIR = 0.7f, W_RANK = 0.45f;
static const float GARBAGE = 12345.0f;

/* Sample 0: image rows 2-5, retrieved rows 5-7 (overlapping). Sample 1: two images (rows 1-4 and
 * 6-9), retrieved rows 10-11. Sample 2: image, no retrieved text. Sample 3: no image. Sample 4:
 * tox (image and retrieved text, but skipped). */
static const int IMAGE_SAMPLE[N_IMAGES] = {0, 1, 1, 2, 4};
static const int IMAGE_START[N_IMAGES] = {2, 1, 6, 3, 0};
static const int RET_START[SAMPLES] = {5, 10, 0, 2, 6};
static const int RET_LEN[SAMPLES] = {3, 2, 0, 5, 4};
static const int TOX[SAMPLES] = {0, 0, 0, 0, 1};

/* A batch: segment tables as the model builds them, flags, hidden states and caption targets. */
typedef struct batch {
    int img_start[N_IMAGES], img_count[N_IMAGES], img_out[N_IMAGES], img_rows[SAMPLES];
    int ret_start[SAMPLES], ret_count[SAMPLES], ret_out[SAMPLES], ret_rows[SAMPLES];
    tga_segments img, ret;
    uint8_t use_pair[SAMPLES], use_rank[SAMPLES];
    float hidden[LAYERS * HIDDEN_SIZE];
    float c[LAYERS * LAYER_SIZE];
} batch;

typedef struct fused_result {
    double pair, rank;
    float cos_vc[LAYERS * SAMPLES], cos_rc[LAYERS * SAMPLES];
    float v[LAYERS * LAYER_SIZE], r[LAYERS * LAYER_SIZE], dv[LAYERS * LAYER_SIZE], dr[LAYERS * LAYER_SIZE];
    float din[LAYERS * HIDDEN_SIZE]; /* the fused backward of each layer's dv, dr */
} fused_result;

static void build_segments(batch *k) {
    memset(k->img_rows, 0, sizeof k->img_rows);
    for (int i = 0; i < N_IMAGES; i++) {
        k->img_start[i] = IMAGE_SAMPLE[i] * ROWS_PER_SAMPLE + IMAGE_START[i];
        k->img_count[i] = PATCHES;
        k->img_out[i] = IMAGE_SAMPLE[i];
        k->img_rows[IMAGE_SAMPLE[i]] += PATCHES;
    }
    for (int b = 0; b < SAMPLES; b++) {
        k->ret_start[b] = b * ROWS_PER_SAMPLE + RET_START[b];
        k->ret_count[b] = k->ret_rows[b] = RET_LEN[b];
        k->ret_out[b] = b;
        k->use_pair[b] = k->img_rows[b] > 0 && !TOX[b];
        k->use_rank[b] = k->use_pair[b] && RET_LEN[b] > 0;
    }
    k->img = (tga_segments){N_IMAGES, SAMPLES, k->img_start, k->img_count, k->img_out, k->img_rows};
    k->ret = (tga_segments){SAMPLES, SAMPLES, k->ret_start, k->ret_count, k->ret_out, k->ret_rows};
}

static tga_align_args args_of(const batch *k) {
    tga_align_args args = {SAMPLES, DIM, NULL, NULL, k->c, k->use_pair, k->use_rank, W_PAIR, W_RANK, EPS};
    return args;
}

static void layer_pointers(const float **hidden, const batch *k) {
    for (int j = 0; j < LAYERS; j++) hidden[j] = k->hidden + (size_t)j * HIDDEN_SIZE;
}

/* The op under test, sums starting at 1 and 2 (it adds into them), outputs starting as garbage;
 * din is the fused backward of each layer's dv, dr into a zeroed buffer. */
static void run_fused(fused_result *out, const batch *k, int with_grads) {
    const float *hidden[LAYERS];
    layer_pointers(hidden, k);
    tga_align_args args = args_of(k);
    for (int i = 0; i < LAYERS * LAYER_SIZE; i++) out->v[i] = out->r[i] = out->dv[i] = out->dr[i] = GARBAGE;
    for (int i = 0; i < LAYERS * SAMPLES; i++) out->cos_vc[i] = out->cos_rc[i] = GARBAGE;
    out->pair = 1.0;
    out->rank = 2.0;
    tga_cpu_tga_align_fused_forward(&out->pair, &out->rank, out->cos_vc, out->cos_rc, out->v, out->r,
                                    with_grads ? out->dv : NULL, with_grads ? out->dr : NULL, hidden, LAYERS, &k->img,
                                    &k->ret, &args);
    out->pair -= 1.0;
    out->rank -= 2.0;
    if (!with_grads) return;
    memset(out->din, 0, sizeof out->din);
    for (int j = 0; j < LAYERS; j++)
        tga_cpu_tga_align_fused_backward(out->din + (size_t)j * HIDDEN_SIZE, out->dv + (size_t)j * LAYER_SIZE,
                                         out->dr + (size_t)j * LAYER_SIZE, &k->img, &k->ret, DIM);
}

/* ---- naive double reference ---- */

typedef struct reference {
    double pair, rank;
    double v[LAYERS * LAYER_SIZE], r[LAYERS * LAYER_SIZE], cos_vc[LAYERS * SAMPLES], cos_rc[LAYERS * SAMPLES];
    double dv[LAYERS * LAYER_SIZE], dr[LAYERS * LAYER_SIZE], din[LAYERS * HIDDEN_SIZE];
} reference;

/* Mean of rows first..first+count-1 of sample b's spans (listed by start), 0 without rows. */
static void reference_pool(double *out, const float *hidden, const int *starts, int n_spans, int count) {
    for (int d = 0; d < DIM; d++) out[d] = 0.0;
    for (int s = 0; s < n_spans; s++)
        for (int t = starts[s]; t < starts[s] + count; t++)
            for (int d = 0; d < DIM; d++) out[d] += hidden[(size_t)t * DIM + d];
    const int rows = n_spans * count;
    for (int d = 0; d < DIM; d++) out[d] = rows > 0 ? out[d] / rows : 0.0;
}

/* Row indices of sample b's image spans (from the raw lists, not the segment table). */
static int image_starts(int *starts, int b) {
    int n = 0;
    for (int i = 0; i < N_IMAGES; i++)
        if (IMAGE_SAMPLE[i] == b) starts[n++] = b * ROWS_PER_SAMPLE + IMAGE_START[i];
    return n;
}

/* torch 1.13's cosine (each norm clamped on its own) and its gradient wrt x, clamp ignored. */
static double reference_cos(const double *x, const float *y, double *grad_x) {
    double dot = 0.0, xx = 0.0, yy = 0.0;
    for (int d = 0; d < DIM; d++) {
        dot += x[d] * y[d];
        xx += x[d] * x[d];
        yy += (double)y[d] * y[d];
    }
    double norm_x = fmax(sqrt(xx), EPS), norm_y = fmax(sqrt(yy), EPS), cos = dot / (norm_x * norm_y);
    for (int d = 0; d < DIM; d++) grad_x[d] = y[d] / (norm_x * norm_y) - cos * x[d] / (norm_x * norm_x);
    return cos;
}

static void reference_pooling(reference *ref, const batch *k) {
    for (int j = 0; j < LAYERS; j++) {
        const float *hidden = k->hidden + (size_t)j * HIDDEN_SIZE;
        for (int b = 0; b < SAMPLES; b++) {
            int starts[N_IMAGES], ret_start = b * ROWS_PER_SAMPLE + RET_START[b];
            int n_images = image_starts(starts, b);
            reference_pool(ref->v + (size_t)(j * SAMPLES + b) * DIM, hidden, starts, n_images, PATCHES);
            reference_pool(ref->r + (size_t)(j * SAMPLES + b) * DIM, hidden, &ret_start, 1, RET_LEN[b]);
        }
    }
}

/* Adds g / count to each row of the spans. */
static void reference_spread(double *din, const double *g, const int *starts, int n_spans, int count) {
    for (int s = 0; s < n_spans; s++)
        for (int t = starts[s]; t < starts[s] + count; t++)
            for (int d = 0; d < DIM; d++) din[(size_t)t * DIM + d] += g[d] / (n_spans * count);
}

static void reference_sample(reference *ref, const batch *k, int j, int b) {
    const size_t item = (size_t)j * SAMPLES + b, off = item * DIM;
    double dcos_v[DIM], dcos_r[DIM];
    int starts[N_IMAGES], ret_start = b * ROWS_PER_SAMPLE + RET_START[b], n_images = image_starts(starts, b);
    const int pair_used = !TOX[b] && n_images > 0, rank_used = pair_used && RET_LEN[b] > 0;
    ref->cos_vc[item] = ref->cos_rc[item] = 0.0;
    for (int d = 0; d < DIM; d++) ref->dv[off + d] = ref->dr[off + d] = 0.0;
    if (!pair_used) return;
    const float *c = k->c + off;
    double cos_vc = reference_cos(ref->v + off, c, dcos_v), pair_b = (double)W_PAIR * exp(-cos_vc), rank_b = 0.0;
    ref->cos_vc[item] = cos_vc;
    if (rank_used) {
        double cos_rc = reference_cos(ref->r + off, c, dcos_r);
        ref->cos_rc[item] = cos_rc;
        rank_b = (double)W_RANK * exp(cos_rc - cos_vc);
        for (int d = 0; d < DIM; d++) ref->dr[off + d] = rank_b * dcos_r[d];
    }
    for (int d = 0; d < DIM; d++) ref->dv[off + d] = -(pair_b + rank_b) * dcos_v[d];
    ref->pair += pair_b;
    ref->rank += rank_b;
    double *din = ref->din + (size_t)j * HIDDEN_SIZE;
    reference_spread(din, ref->dv + off, starts, n_images, PATCHES);
    reference_spread(din, ref->dr + off, &ret_start, 1, RET_LEN[b]);
}

static void reference_fused(reference *ref, const batch *k) {
    memset(ref, 0, sizeof *ref);
    reference_pooling(ref, k);
    for (int j = 0; j < LAYERS; j++)
        for (int b = 0; b < SAMPLES; b++) reference_sample(ref, k, j, b);
}

/* ---- checks ---- */

static double max_abs(const double *x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

static int all_zero(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

/* Random hidden states; each caption target leans towards the pooled image vector so that the
 * cosines are not all near zero. */
static void make_batch(batch *k, uint64_t *rng) {
    build_segments(k);
    tu_fill_uniform(k->hidden, LAYERS * HIDDEN_SIZE, -1.0f, 1.0f, rng);
    tu_fill_uniform(k->c, LAYERS * LAYER_SIZE, -1.0f, 1.0f, rng);
    static reference ref;
    memset(&ref, 0, sizeof ref);
    reference_pooling(&ref, k);
    for (int i = 0; i < LAYERS * LAYER_SIZE; i++) k->c[i] += (float)(0.5 * ref.v[i]);
}

static void check_against_reference(const batch *k) {
    static fused_result got;
    static reference ref;
    run_fused(&got, k, 1);
    reference_fused(&ref, k);
    double pair_err = fabs(got.pair - ref.pair) / ref.pair, rank_err = fabs(got.rank - ref.rank) / ref.rank;
    double v_err = tu_max_abs_diff(got.v, ref.v, LAYERS * LAYER_SIZE);
    double r_err = tu_max_abs_diff(got.r, ref.r, LAYERS * LAYER_SIZE);
    double cos_err = fmax(tu_max_abs_diff(got.cos_vc, ref.cos_vc, LAYERS * SAMPLES),
                          tu_max_abs_diff(got.cos_rc, ref.cos_rc, LAYERS * SAMPLES));
    double dv_err = tu_max_abs_diff(got.dv, ref.dv, LAYERS * LAYER_SIZE) / max_abs(ref.dv, LAYERS * LAYER_SIZE);
    double dr_err = tu_max_abs_diff(got.dr, ref.dr, LAYERS * LAYER_SIZE) / max_abs(ref.dr, LAYERS * LAYER_SIZE);
    double din_err = tu_max_abs_diff(got.din, ref.din, LAYERS * HIDDEN_SIZE) / max_abs(ref.din, LAYERS * HIDDEN_SIZE);
    printf("reference: pair %.9f (rel %.1e) rank %.9f (rel %.1e); max errors: pooled %.1e %.1e, cos %.1e, "
           "dv %.1e, dr %.1e, din %.1e (relative to the largest entry)\n",
           got.pair, pair_err, got.rank, rank_err, v_err, r_err, cos_err, dv_err, dr_err, din_err);
    CHECK(pair_err < 1e-6, "pair rel error %.3e", pair_err);
    CHECK(rank_err < 1e-6, "rank rel error %.3e", rank_err);
    CHECK(v_err < 1e-6 && r_err < 1e-6, "pooled vectors: max abs error %.3e / %.3e", v_err, r_err);
    CHECK(cos_err < 1e-6, "cosines: max abs error %.3e", cos_err);
    CHECK(dv_err < 1e-5 && dr_err < 1e-5, "pooled gradients: rel error %.3e / %.3e", dv_err, dr_err);
    CHECK(din_err < 1e-5, "hidden-state gradients: rel error %.3e", din_err);
    for (int j = 0; j < LAYERS; j++)
        for (int b = 0; b < SAMPLES; b++) {
            const size_t off = (size_t)(j * SAMPLES + b) * DIM;
            if (!k->use_pair[b]) CHECK(all_zero(got.dv + off, DIM), "layer %d: skipped sample %d has dv", j, b);
            if (!k->use_rank[b]) CHECK(all_zero(got.dr + off, DIM), "layer %d: sample %d without rank has dr", j, b);
        }
}

static double fused_loss(const float *probed, void *opaque) {
    (void)probed; /* the probed entry lives inside the batch */
    static fused_result res;
    run_fused(&res, opaque, 0);
    return res.pair + res.rank;
}

static void check_finite_differences(batch *k, uint64_t *rng) {
    static fused_result grads;
    run_fused(&grads, k, 1);
    double worst = tu_fd_check(fused_loss, k, k->hidden, grads.din, LAYERS * HIDDEN_SIZE, 100, 1e-2f, 1e-3, rng);
    printf("finite differences wrt the hidden states: worst %.2e\n", worst);
    CHECK(worst < 1e-3, "hidden-state gradients vs finite differences: %.3e", worst);
}

/* The model used to call the separate ops per layer; the fused op must give the same bits. */
static void check_composition_bits(const batch *k) {
    static fused_result fused;
    static float v[LAYER_SIZE], r[LAYER_SIZE], dv[LAYER_SIZE], dr[LAYER_SIZE], din[HIDDEN_SIZE];
    float cos_vc[SAMPLES], cos_rc[SAMPLES];
    run_fused(&fused, k, 1);
    double pair = 1.0, rank = 2.0;
    int same = 1;
    for (int j = 0; j < LAYERS; j++) {
        const size_t off = (size_t)j * LAYER_SIZE;
        tga_cpu_segment_mean_forward(v, k->hidden + (size_t)j * HIDDEN_SIZE, &k->img, DIM);
        tga_cpu_segment_mean_forward(r, k->hidden + (size_t)j * HIDDEN_SIZE, &k->ret, DIM);
        tga_align_args args = args_of(k);
        args.v = v;
        args.r = r;
        args.c = k->c + off;
        tga_cpu_tga_align_loss(&pair, &rank, cos_vc, cos_rc, dv, dr, &args);
        memset(din, 0, sizeof din);
        tga_cpu_segment_mean_backward(din, dv, &k->img, DIM);
        tga_cpu_segment_mean_backward(din, dr, &k->ret, DIM);
        same &= memcmp(v, fused.v + off, sizeof v) == 0 && memcmp(r, fused.r + off, sizeof r) == 0;
        same &= memcmp(dv, fused.dv + off, sizeof dv) == 0 && memcmp(dr, fused.dr + off, sizeof dr) == 0;
        same &= memcmp(cos_vc, fused.cos_vc + (size_t)j * SAMPLES, sizeof cos_vc) == 0;
        same &= memcmp(cos_rc, fused.cos_rc + (size_t)j * SAMPLES, sizeof cos_rc) == 0;
        same &= memcmp(din, fused.din + (size_t)j * HIDDEN_SIZE, sizeof din) == 0;
    }
    same &= pair - 1.0 == fused.pair && rank - 2.0 == fused.rank;
    printf("per-layer composition of the separate ops: %s\n", same ? "the same bits" : "DIFFERENT");
    CHECK(same, "the fused ops differ from the per-layer composition of the separate ops");
}

/* Without cosine and gradient outputs: the same sums, and the pooled vectors are still written. */
static void check_optional_outputs(const batch *k) {
    static fused_result full, bare;
    run_fused(&full, k, 1);
    for (int i = 0; i < LAYERS * LAYER_SIZE; i++) bare.v[i] = bare.r[i] = GARBAGE;
    const float *hidden[LAYERS];
    layer_pointers(hidden, k);
    tga_align_args args = args_of(k);
    double pair = 1.0, rank = 2.0; /* as run_fused starts them */
    tga_cpu_tga_align_fused_forward(&pair, &rank, NULL, NULL, bare.v, bare.r, NULL, NULL, hidden, LAYERS, &k->img,
                                    &k->ret, &args);
    pair -= 1.0;
    rank -= 2.0;
    CHECK(pair == full.pair && rank == full.rank, "sums without outputs %.17g %.17g vs %.17g %.17g", pair, rank,
          full.pair, full.rank);
    CHECK(memcmp(bare.v, full.v, sizeof bare.v) == 0 && memcmp(bare.r, full.r, sizeof bare.r) == 0,
          "pooled vectors differ without gradient outputs");
}

int main(void) {
    uint64_t rng = 20240917;
    static batch k;
    make_batch(&k, &rng);
    check_against_reference(&k);
    check_finite_differences(&k, &rng);
    check_composition_bits(&k);
    check_optional_outputs(&k);
    return tu_finish("test_align_fused");
}
