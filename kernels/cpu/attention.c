/* Causal grouped-query attention, flash-attention style (Dao et al. 2022): scores are computed
 * one ATTN_TILE x ATTN_TILE tile at a time with an online softmax, so no T x T matrix is ever
 * held, and the backward (FlashAttention-2, Dao 2023) recomputes the probabilities from q, k
 * and the saved log-sum-exp.
 *
 * Layout: q/out/dq/dout [B,T,H,hd], k/v/dk/dv [B,T,KVH,hd]; query head h reads kv head
 * h / (H/KVH), as HF's repeat_kv. Sample b has lengths[b] real tokens, then padding.
 *
 * Determinism: the forward runs one task per (sample, query head, query tile), each writing
 * its own rows. The backward runs one task per (sample, kv head): that task owns dk/dv of the
 * kv head and dq of every query head that reads it, and sums in a fixed order (query heads,
 * then query tiles, then rows), so results do not depend on the thread count.
 *
 * Vectorisation: every inner loop runs along a contiguous axis (keys of a tile, or head_dim)
 * as an elementwise multiply-add, never as a float reduction the compiler may not reorder;
 * keys are transposed into the tile buffer for that. The tile kernels are compiled for
 * baseline x86-64, AVX2+FMA and AVX-512 (target attributes) and picked at run time. */
#include "kernels/cpu/cpu_kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

enum {
    ATTN_TILE = 64,          /* queries per tile and keys per tile */
    ATTN_MAX_HEAD_DIM = 256, /* sizes the per-thread tile buffers (<= 240 KiB of stack) */
};

typedef struct attn_dims {
    int T, H, KVH, head_dim;
    size_t q_stride;  /* floats from one token to the next in q/out/dq/dout: H * hd */
    size_t kv_stride; /* the same in k/v/dk/dv: KVH * hd */
    float scale;      /* 1 / sqrt(hd) */
} attn_dims;

/* One (sample, query head), pointers at token 0 of the sample; k/v are its kv head. */
typedef struct attn_forward_head {
    float *out, *lse;
    const float *q, *k, *v;
} attn_forward_head;

typedef struct attn_backward_head {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v, *out, *lse;
} attn_backward_head;

#define ATTN_INLINE static inline __attribute__((always_inline))

static int min_int(int a, int b) { return a < b ? a : b; }

/* Below this, exp underflows to 0 (the result is exactly 0 from about -87.3 on). */
#define ATTN_EXP_MIN (-104.0f)

/* exp(x) for ATTN_EXP_MIN <= x <= 88: 2^n * e^r with n = round(x / ln 2), Cody-Waite
 * reduction and Cephes' expf polynomial (about 1 ulp), and 2^n built in the exponent bits
 * (0 once n < -126, so no denormals). Branch-free so that the loops calling it vectorise;
 * libm's expf would stay a scalar call. */
ATTN_INLINE float exp_in_range(float x) {
    const float round_shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float shifted = x * 1.44269504088896341f + round_shift;
    float n = shifted - round_shift;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    /* the low mantissa bits of `shifted` hold n + 0x400000 */
    uint32_t shifted_bits;
    memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    int32_t biased_exponent = (int32_t)(shifted_bits - 0x4B400000u) + 127;
    biased_exponent = biased_exponent > 0 ? biased_exponent : 0;
    uint32_t scale_bits = (uint32_t)biased_exponent << 23;
    float two_n;
    memcpy(&two_n, &scale_bits, sizeof two_n);
    return p * two_n;
}

/* row[j] = exp(row[j] - shift) over a tile row, for row[j] - shift <= 88; masked -inf scores
 * give exactly 0. The clamp is a loop of its own: inside the exp loop GCC threads the clamped
 * (constant) path into a branch and gives up vectorising. */
ATTN_INLINE void exp_shifted_row(float *row, float shift) {
    for (int j = 0; j < ATTN_TILE; j++) {
        float x = row[j] - shift;
        row[j] = x < ATTN_EXP_MIN ? ATTN_EXP_MIN : x;
    }
    for (int j = 0; j < ATTN_TILE; j++) row[j] = exp_in_range(row[j]);
}

/* dst[d][j] = rows[j][d] for the n_rows rows of a tile, zero for the rest: the keys of a tile
 * then lie along the contiguous axis of the score loops. */
ATTN_INLINE void load_transposed(float *dst, const float *rows, size_t stride, int n_rows, int head_dim) {
    for (int j = 0; j < n_rows; j++) {
        for (int d = 0; d < head_dim; d++) dst[d * ATTN_TILE + j] = rows[j * stride + d];
    }
    for (int d = 0; d < head_dim; d++) {
        for (int j = n_rows; j < ATTN_TILE; j++) dst[d * ATTN_TILE + j] = 0.0f;
    }
}

/* out[i][j] = dot(scale * a_i, b_j) for i < n_rows, all ATTN_TILE columns; b given transposed. */
ATTN_INLINE void tile_dots(float *out, const float *a, size_t a_stride, int n_rows, const float *b_t,
                           int head_dim, float scale) {
    for (int i = 0; i < n_rows; i++) {
        float *row = out + i * ATTN_TILE;
        const float *a_row = a + i * a_stride;
        for (int j = 0; j < ATTN_TILE; j++) row[j] = 0.0f;
        for (int d = 0; d < head_dim; d++) {
            float a_scaled = a_row[d] * scale;
            const float *b_col = b_t + d * ATTN_TILE;
            for (int j = 0; j < ATTN_TILE; j++) row[j] += a_scaled * b_col[j];
        }
    }
}

/* Query q0+i sees key k0+j iff k0+j <= q0+i; the rest of its row becomes -inf. Lengths need no
 * mask: a tile only holds keys up to its last query, which is a real token. */
ATTN_INLINE void mask_future(float *scores, int q0, int n_q, int k0) {
    for (int i = 0; i < n_q; i++) {
        int visible = q0 + i - k0 + 1;
        for (int j = visible < 0 ? 0 : visible; j < ATTN_TILE; j++) scores[i * ATTN_TILE + j] = -INFINITY;
    }
}

/* y[0:n] += alpha * x[0:n] */
ATTN_INLINE void axpy(float *y, float alpha, const float *x, int n) {
    for (int d = 0; d < n; d++) y[d] += alpha * x[d];
}

/* Folds one key tile into a query row's running softmax (max, sum and unnormalised output).
 * Every tile holds at least one visible key for every row (key tiles start at or before the
 * query tile), so the new max is finite and the rescale factor exp(old - new) is well defined
 * (0 for the first tile, where old = -inf); every score minus the max is <= 0. */
ATTN_INLINE void online_softmax_step(float *scores, float *acc, float *row_max, float *row_sum, const float *v,
                                     size_t v_stride, int n_k, int head_dim) {
    float tile_max = scores[0];
    for (int j = 1; j < ATTN_TILE; j++) tile_max = scores[j] > tile_max ? scores[j] : tile_max;
    float new_max = tile_max > *row_max ? tile_max : *row_max;
    float rescale = expf(*row_max - new_max);
    exp_shifted_row(scores, new_max);
    float tile_sum = 0.0f;
    for (int j = 0; j < n_k; j++) tile_sum += scores[j];
    *row_sum = *row_sum * rescale + tile_sum;
    *row_max = new_max;
    for (int d = 0; d < head_dim; d++) acc[d] *= rescale;
    for (int j = 0; j < n_k; j++) axpy(acc, scores[j], v + j * v_stride, head_dim);
}

/* Query rows q0 .. q0+n_q-1 (all real tokens) of one head: out and lse. */
ATTN_INLINE void forward_tile(const attn_forward_head *head, const attn_dims *dim, int q0, int n_q) {
    const int hd = dim->head_dim;
    float keys_t[ATTN_MAX_HEAD_DIM * ATTN_TILE];
    float scores[ATTN_TILE * ATTN_TILE];
    float acc[ATTN_TILE * ATTN_MAX_HEAD_DIM];
    float row_max[ATTN_TILE], row_sum[ATTN_TILE];
    for (int i = 0; i < n_q; i++) {
        row_max[i] = -INFINITY;
        row_sum[i] = 0.0f;
        for (int d = 0; d < hd; d++) acc[i * hd + d] = 0.0f;
    }
    const float *q = head->q + q0 * dim->q_stride;
    const int key_end = q0 + n_q;
    for (int k0 = 0; k0 < key_end; k0 += ATTN_TILE) {
        int n_k = min_int(ATTN_TILE, key_end - k0);
        load_transposed(keys_t, head->k + k0 * dim->kv_stride, dim->kv_stride, n_k, hd);
        tile_dots(scores, q, dim->q_stride, n_q, keys_t, hd, dim->scale);
        mask_future(scores, q0, n_q, k0);
        for (int i = 0; i < n_q; i++) {
            online_softmax_step(scores + i * ATTN_TILE, acc + i * hd, &row_max[i], &row_sum[i],
                                head->v + k0 * dim->kv_stride, dim->kv_stride, n_k, hd);
        }
    }
    for (int i = 0; i < n_q; i++) {
        float *out_row = head->out + (q0 + i) * dim->q_stride;
        float inv_sum = 1.0f / row_sum[i];
        for (int d = 0; d < hd; d++) out_row[d] = acc[i * hd + d] * inv_sum;
        head->lse[q0 + i] = row_max[i] + logf(row_sum[i]);
    }
}

/* Query rows q0 .. q0+n_q-1 (all real tokens) of one head: writes their dq rows and adds their
 * contributions to dk/dv (FlashAttention-2, Algorithm 2, with the loops swapped so that dq is
 * finished tile by tile):
 *   P = exp(S - lse), dV += P^T dO, dP = dO V^T, dS = P * (dP - D) with D = rowsum(dO * O),
 *   dQ = scale * dS K, dK += scale * dS^T Q. */
ATTN_INLINE void backward_tile(const attn_backward_head *head, const attn_dims *dim, int q0, int n_q) {
    const int hd = dim->head_dim;
    const size_t qs = dim->q_stride, kvs = dim->kv_stride;
    float keys_t[ATTN_MAX_HEAD_DIM * ATTN_TILE];
    float values_t[ATTN_MAX_HEAD_DIM * ATTN_TILE];
    float probs[ATTN_TILE * ATTN_TILE];
    float dscores[ATTN_TILE * ATTN_TILE];
    float dq_acc[ATTN_TILE * ATTN_MAX_HEAD_DIM];
    float delta[ATTN_TILE];
    const float *q = head->q + q0 * qs, *dout = head->dout + q0 * qs;
    for (int i = 0; i < n_q; i++) {
        const float *out_row = head->out + (q0 + i) * qs;
        float dot = 0.0f;
        for (int d = 0; d < hd; d++) dot += dout[i * qs + d] * out_row[d];
        delta[i] = dot;
        for (int d = 0; d < hd; d++) dq_acc[i * hd + d] = 0.0f;
    }
    const int key_end = q0 + n_q;
    for (int k0 = 0; k0 < key_end; k0 += ATTN_TILE) {
        int n_k = min_int(ATTN_TILE, key_end - k0);
        const float *k = head->k + k0 * kvs, *v = head->v + k0 * kvs;
        load_transposed(keys_t, k, kvs, n_k, hd);
        load_transposed(values_t, v, kvs, n_k, hd);
        tile_dots(probs, q, qs, n_q, keys_t, hd, dim->scale);
        mask_future(probs, q0, n_q, k0);
        tile_dots(dscores, dout, qs, n_q, values_t, hd, 1.0f);
        for (int i = 0; i < n_q; i++) {
            float *p = probs + i * ATTN_TILE, *ds = dscores + i * ATTN_TILE;
            /* lse >= the row max, so p <= 1 up to rounding */
            exp_shifted_row(p, head->lse[q0 + i]);
            for (int j = 0; j < ATTN_TILE; j++) ds[j] = p[j] * (ds[j] - delta[i]) * dim->scale;
        }
        for (int j = 0; j < n_k; j++) {
            float *dv_row = head->dv + (k0 + j) * kvs, *dk_row = head->dk + (k0 + j) * kvs;
            for (int i = 0; i < n_q; i++) {
                axpy(dv_row, probs[i * ATTN_TILE + j], dout + i * qs, hd);
                axpy(dk_row, dscores[i * ATTN_TILE + j], q + i * qs, hd);
            }
        }
        for (int i = 0; i < n_q; i++) {
            for (int j = 0; j < n_k; j++) axpy(dq_acc + i * hd, dscores[i * ATTN_TILE + j], k + j * kvs, hd);
        }
    }
    for (int i = 0; i < n_q; i++) memcpy(head->dq + (q0 + i) * qs, dq_acc + i * hd, (size_t)hd * sizeof(float));
}

/* ---- one compiled copy of the tile kernels per instruction set ---------------------------- */

typedef void (*forward_tile_fn)(const attn_forward_head *, const attn_dims *, int, int);
typedef void (*backward_tile_fn)(const attn_backward_head *, const attn_dims *, int, int);

static void forward_tile_baseline(const attn_forward_head *h, const attn_dims *d, int q0, int n) {
    forward_tile(h, d, q0, n);
}
__attribute__((target("avx2,fma"))) static void forward_tile_avx2(const attn_forward_head *h,
                                                                  const attn_dims *d, int q0, int n) {
    forward_tile(h, d, q0, n);
}
__attribute__((target("avx512f"))) static void forward_tile_avx512(const attn_forward_head *h,
                                                                   const attn_dims *d, int q0, int n) {
    forward_tile(h, d, q0, n);
}
static void backward_tile_baseline(const attn_backward_head *h, const attn_dims *d, int q0, int n) {
    backward_tile(h, d, q0, n);
}
__attribute__((target("avx2,fma"))) static void backward_tile_avx2(const attn_backward_head *h,
                                                                   const attn_dims *d, int q0, int n) {
    backward_tile(h, d, q0, n);
}
__attribute__((target("avx512f"))) static void backward_tile_avx512(const attn_backward_head *h,
                                                                    const attn_dims *d, int q0, int n) {
    backward_tile(h, d, q0, n);
}

static forward_tile_fn pick_forward_tile(void) {
    if (tga_cpu_has_avx512()) return forward_tile_avx512;
    if (strcmp(tga_cpu_simd_level(), "avx2") == 0) return forward_tile_avx2;
    return forward_tile_baseline;
}

static backward_tile_fn pick_backward_tile(void) {
    if (tga_cpu_has_avx512()) return backward_tile_avx512;
    if (strcmp(tga_cpu_simd_level(), "avx2") == 0) return backward_tile_avx2;
    return backward_tile_baseline;
}

/* ---- drivers -------------------------------------------------------------------------------- */

/* Shapes are validated by the caller; one that slipped through (head_dim beyond the tile
 * buffers, H not a multiple of KVH) must not write out of bounds, so the op fills its outputs
 * with NaN instead, which the trainer's finite check reports. */
static int attn_shape_supported(int H, int KVH, int head_dim) {
    return KVH > 0 && H % KVH == 0 && head_dim > 0 && head_dim <= ATTN_MAX_HEAD_DIM;
}

static void fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

static attn_dims make_dims(int T, int H, int KVH, int head_dim) {
    return (attn_dims){
        .T = T, .H = H, .KVH = KVH, .head_dim = head_dim,
        .q_stride = (size_t)H * head_dim, .kv_stride = (size_t)KVH * head_dim,
        .scale = 1.0f / sqrtf((float)head_dim),
    };
}

/* Real tokens of sample b; lengths outside [0, T] are clamped rather than trusted. */
static int sample_length(const int *lengths, int b, int T) {
    int n = lengths[b];
    return n < 0 ? 0 : (n > T ? T : n);
}

void tga_cpu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                               const int *lengths, int B, int T, int H, int KVH, int head_dim) {
    size_t rows = (size_t)B * T * H;
    if (!attn_shape_supported(H, KVH, head_dim)) {
        fill_nan(out, head_dim > 0 ? rows * head_dim : 0);
        fill_nan(lse, rows);
        return;
    }
    const attn_dims dim = make_dims(T, H, KVH, head_dim);
    const forward_tile_fn run_tile = pick_forward_tile();
    const int group = H / KVH, tiles = (T + ATTN_TILE - 1) / ATTN_TILE;
    const long tasks = (long)B * H * tiles;
    /* dynamic: later query tiles see more keys */
#pragma omp parallel for schedule(dynamic)
    for (long task = 0; task < tasks; task++) {
        int b = (int)(task / ((long)H * tiles)), h = (int)(task / tiles % H), q0 = (int)(task % tiles) * ATTN_TILE;
        size_t q_origin = (size_t)b * T * dim.q_stride + (size_t)h * head_dim;
        size_t kv_origin = (size_t)b * T * dim.kv_stride + (size_t)(h / group) * head_dim;
        attn_forward_head head = {
            .out = out + q_origin, .lse = lse + ((size_t)b * H + h) * T,
            .q = q + q_origin, .k = k + kv_origin, .v = v + kv_origin,
        };
        int q_end = min_int(q0 + ATTN_TILE, T);
        int real_end = min_int(q_end, sample_length(lengths, b, T));
        if (real_end > q0) run_tile(&head, &dim, q0, real_end - q0);
        for (int t = real_end > q0 ? real_end : q0; t < q_end; t++) {
            memset(head.out + t * dim.q_stride, 0, (size_t)head_dim * sizeof(float));
            head.lse[t] = 0.0f;
        }
    }
}

/* dk/dv of kv head g of sample b, and dq of the query heads that read it. */
static void backward_kv_head(const attn_backward_head *kv_head, const attn_dims *dim, int n, int g,
                             backward_tile_fn run_tile) {
    const int hd = dim->head_dim, group = dim->H / dim->KVH;
    for (int t = 0; t < dim->T; t++) {
        memset(kv_head->dk + t * dim->kv_stride, 0, (size_t)hd * sizeof(float));
        memset(kv_head->dv + t * dim->kv_stride, 0, (size_t)hd * sizeof(float));
    }
    for (int h = g * group; h < (g + 1) * group; h++) {
        attn_backward_head head = *kv_head;
        head.dq += (size_t)h * hd;
        head.dout += (size_t)h * hd;
        head.q += (size_t)h * hd;
        head.out += (size_t)h * hd;
        head.lse += (size_t)h * dim->T;
        for (int q0 = 0; q0 < n; q0 += ATTN_TILE) run_tile(&head, dim, q0, min_int(ATTN_TILE, n - q0));
        for (int t = n; t < dim->T; t++) memset(head.dq + t * dim->q_stride, 0, (size_t)hd * sizeof(float));
    }
}

void tga_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, const float *out, const float *lse,
                                const int *lengths, int B, int T, int H, int KVH, int head_dim) {
    if (!attn_shape_supported(H, KVH, head_dim)) {
        size_t q_elems = head_dim > 0 ? (size_t)B * T * H * head_dim : 0;
        size_t kv_elems = head_dim > 0 && KVH > 0 ? (size_t)B * T * KVH * head_dim : 0;
        fill_nan(dq, q_elems);
        fill_nan(dk, kv_elems);
        fill_nan(dv, kv_elems);
        return;
    }
    const attn_dims dim = make_dims(T, H, KVH, head_dim);
    const backward_tile_fn run_tile = pick_backward_tile();
    const long tasks = (long)B * KVH;
#pragma omp parallel for schedule(dynamic)
    for (long task = 0; task < tasks; task++) {
        int b = (int)(task / KVH), g = (int)(task % KVH);
        size_t q_origin = (size_t)b * T * dim.q_stride;
        size_t kv_origin = (size_t)b * T * dim.kv_stride + (size_t)g * head_dim;
        attn_backward_head kv_head = {
            .dq = dq + q_origin, .dk = dk + kv_origin, .dv = dv + kv_origin,
            .dout = dout + q_origin, .q = q + q_origin, .k = k + kv_origin, .v = v + kv_origin,
            .out = out + q_origin, .lse = lse + (size_t)b * H * T,
        };
        backward_kv_head(&kv_head, &dim, sample_length(lengths, b, T), g, run_tile);
    }
}
