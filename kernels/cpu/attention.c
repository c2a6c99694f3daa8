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
 * Speed: every product of two tiles is a small matrix product whose inner loop runs along
 * contiguous rows of the right-hand operand (keys are transposed into a tile buffer for
 * Q K^T), summed in registers; those loops and exp are compiled for SSE2 and for AVX2+FMA and
 * picked at run time. Operands are packed into tile buffers, since rows H * hd floats apart
 * (often a multiple of 4 KiB) all fall into the same L1 sets. */
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/exp_poly.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

enum {
    ATTN_TILE = 64,           /* queries per tile and keys per tile */
    ATTN_MAX_HEAD_DIM = 256,  /* sizes the tile buffers: up to 352 KiB of stack per thread */
    ATTN_MAX_BLOCK_COLS = 64, /* output columns summed in registers at once */
};

/* ---- inner loops, compiled once per instruction set ------------------------------------------
 * ATTN_INLINE code is inlined into the target-specific wrappers below, which is where it gets
 * its vector width. */

#define ATTN_INLINE static inline __attribute__((always_inline))

/* Below this, exp underflows to 0 (the result is exactly 0 from about -87.3 on). */
#define ATTN_EXP_MIN (-104.0f)

/* row[j] = exp(row[j] - shift) over a tile row, for row[j] - shift <= 88; masked -inf scores
 * give exactly 0. The clamp is a loop of its own: inside the exp loop GCC threads the clamped
 * (constant) path into a branch and gives up vectorising. */
ATTN_INLINE void exp_shifted_row(float *row, float shift) {
    for (int j = 0; j < ATTN_TILE; j++) {
        float x = row[j] - shift;
        row[j] = x < ATTN_EXP_MIN ? ATTN_EXP_MIN : x;
    }
    for (int j = 0; j < ATTN_TILE; j++)
        row[j] = tga_exp_poly(row[j]); /* kernels/cpu/exp_poly.h; exactly 0 at ATTN_EXP_MIN */
}

/* c_row[0:width] += sum over p < k of a_row[p * a_step] * b[p * b_stride + 0:width], summed in
 * ascending p, as a plain loop that GCC vectorises at the width of the target. */
ATTN_INLINE void accumulate_columns(float *c_row, const float *a_row, size_t a_step, const float *b,
                                    size_t b_stride, int k, int width) {
    float acc[ATTN_MAX_BLOCK_COLS];
    for (int j = 0; j < width; j++)
        acc[j] = c_row[j];
    for (int p = 0; p < k; p++) {
        float a = a_row[p * a_step];
        const float *b_row = b + p * b_stride;
        for (int j = 0; j < width; j++)
            acc[j] += a * b_row[j];
    }
    for (int j = 0; j < width; j++)
        c_row[j] = acc[j];
}

/* The same for 8 * n_vecs columns held in GCC generic vectors of 8 floats: these stay in AVX
 * registers for the whole sum, where the plain loop ran about 1.5x slower. SSE has no 8-float
 * registers and GCC lowers such vectors through memory, so SSE code keeps the plain loop. */
typedef float attn_vec __attribute__((vector_size(8 * sizeof(float))));
typedef float attn_vec_unaligned __attribute__((vector_size(8 * sizeof(float)), aligned(4), may_alias));

ATTN_INLINE void accumulate_vectors(float *c_row, const float *a_row, size_t a_step, const float *b,
                                    size_t b_stride, int k, int n_vecs) {
    attn_vec acc[ATTN_MAX_BLOCK_COLS / 8];
    for (int v = 0; v < n_vecs; v++)
        acc[v] = *(const attn_vec_unaligned *)(c_row + 8 * v);
    for (int p = 0; p < k; p++) {
        float a = a_row[p * a_step];
        const float *b_row = b + p * b_stride;
        for (int v = 0; v < n_vecs; v++)
            acc[v] += a * *(const attn_vec_unaligned *)(b_row + 8 * v);
    }
    for (int v = 0; v < n_vecs; v++)
        *(attn_vec_unaligned *)(c_row + 8 * v) = acc[v];
}

/* width is a multiple of 8 */
ATTN_INLINE void accumulate_block(float *c_row, const float *a_row, size_t a_step, const float *b,
                                  size_t b_stride, int k, int width, int use_vectors) {
    if (use_vectors) {
        accumulate_vectors(c_row, a_row, a_step, b, b_stride, k, width / 8);
    } else {
        accumulate_columns(c_row, a_row, a_step, b, b_stride, k, width);
    }
}

/* One row of C[m,n] += A[m,k] B[k,n]: register blocks of block_cols (32 or 64) columns, then at
 * most one block of 32, 16 and 8, then the rest. Each width is a constant, so each block
 * unrolls; each element sums over p in ascending order whatever its block. */
ATTN_INLINE void matmul_row(float *c_row, const float *a_row, size_t a_step, const float *b, size_t b_stride,
                            int k, int n, int block_cols, int use_vectors) {
    int c0 = 0;
    for (; c0 + block_cols <= n; c0 += block_cols) {
        accumulate_block(c_row + c0, a_row, a_step, b + c0, b_stride, k, block_cols, use_vectors);
    }
    if (block_cols > 32 && c0 + 32 <= n) {
        accumulate_block(c_row + c0, a_row, a_step, b + c0, b_stride, k, 32, use_vectors);
        c0 += 32;
    }
    if (c0 + 16 <= n) {
        accumulate_block(c_row + c0, a_row, a_step, b + c0, b_stride, k, 16, use_vectors);
        c0 += 16;
    }
    if (c0 + 8 <= n) {
        accumulate_block(c_row + c0, a_row, a_step, b + c0, b_stride, k, 8, use_vectors);
        c0 += 8;
    }
    if (c0 < n) accumulate_columns(c_row + c0, a_row, a_step, b + c0, b_stride, k, n - c0);
}

typedef struct attn_kernels {
    void (*matmul_row)(float *c_row, const float *a_row, size_t a_step, const float *b, size_t b_stride,
                       int k, int n);
    void (*exp_shifted_row)(float *row, float shift);
} attn_kernels;

/* Register blocks take 8 of the 16 vector registers. AVX-512 CPUs run the AVX2+FMA code, which
 * all of them support. */
static void matmul_row_sse(float *c_row, const float *a_row, size_t a_step, const float *b, size_t b_stride,
                           int k, int n) {
    matmul_row(c_row, a_row, a_step, b, b_stride, k, n, 32, 0);
}

__attribute__((target("avx2,fma"))) static void matmul_row_avx2(float *c_row, const float *a_row,
                                                                size_t a_step, const float *b,
                                                                size_t b_stride, int k, int n) {
    matmul_row(c_row, a_row, a_step, b, b_stride, k, n, 64, 1);
}

static void exp_shifted_row_sse(float *row, float shift) { exp_shifted_row(row, shift); }

__attribute__((target("avx2,fma"))) static void exp_shifted_row_avx2(float *row, float shift) {
    exp_shifted_row(row, shift);
}

static const attn_kernels kernels_sse = {matmul_row_sse, exp_shifted_row_sse};
static const attn_kernels kernels_avx2 = {matmul_row_avx2, exp_shifted_row_avx2};

/* The "scalar" level is baseline x86-64, which has SSE2. */
static const attn_kernels *pick_kernels(void) {
    return strcmp(tga_cpu_simd_level(), "scalar") == 0 ? &kernels_sse : &kernels_avx2;
}

/* ---- tiles ------------------------------------------------------------------------------------ */

/* Shape of one call and the inner loops picked for this CPU. */
typedef struct attn_setup {
    int T, H, KVH, head_dim;
    size_t q_stride;  /* floats from one token to the next in q/out/dq/dout: H * hd */
    size_t kv_stride; /* the same in k/v/dk/dv: KVH * hd */
    float scale;      /* 1 / sqrt(hd) */
    const attn_kernels *kernels;
} attn_setup;

/* One (sample, query head), pointers at token 0 of the sample; k/v are its kv head. */
typedef struct attn_forward_head {
    float *out, *lse;
    const float *q, *k, *v;
} attn_forward_head;

typedef struct attn_backward_head {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v, *out, *lse;
} attn_backward_head;

static int min_int(int a, int b) { return a < b ? a : b; }

/* dst[j][d] = rows[j][d] for the n_rows rows of a tile, packed. */
static void load_rows(float *dst, const float *rows, size_t stride, int n_rows, int head_dim) {
    for (int j = 0; j < n_rows; j++)
        memcpy(dst + j * head_dim, rows + j * stride, (size_t)head_dim * sizeof(float));
}

/* dst[d][j] = rows[j][d] for the n_rows rows of a tile, zero for the rest of its ATTN_TILE
 * columns. */
static void load_transposed(float *dst, const float *rows, size_t stride, int n_rows, int head_dim) {
    for (int j = 0; j < n_rows; j++) {
        for (int d = 0; d < head_dim; d++)
            dst[d * ATTN_TILE + j] = rows[j * stride + d];
    }
    for (int d = 0; d < head_dim; d++) {
        for (int j = n_rows; j < ATTN_TILE; j++)
            dst[d * ATTN_TILE + j] = 0.0f;
    }
}

/* C[m,n] += A[m,k] B[k,n] with a(i,p) = a[i * a_row_step + p * a_col_step] (so A may be read
 * transposed) and row strides for B and C. */
static void matmul_accumulate(const attn_setup *setup, float *c, size_t c_stride, const float *a,
                              size_t a_row_step, size_t a_col_step, const float *b, size_t b_stride, int m,
                              int k, int n) {
    for (int i = 0; i < m; i++) {
        setup->kernels->matmul_row(c + i * c_stride, a + i * a_row_step, a_col_step, b, b_stride, k, n);
    }
}

/* scores[n_q][ATTN_TILE] = scale * queries . keys_t, with query q0+i seeing key k0+j iff
 * k0+j <= q0+i (-inf elsewhere). Lengths need no mask: a tile only holds keys up to its last
 * query, which is a real token. */
static void tile_scores(const attn_setup *setup, float *scores, const float *queries, size_t query_stride,
                        const float *keys_t, int q0, int n_q, int k0) {
    memset(scores, 0, (size_t)n_q * ATTN_TILE * sizeof(float));
    matmul_accumulate(setup, scores, ATTN_TILE, queries, query_stride, 1, keys_t, ATTN_TILE, n_q,
                      setup->head_dim, ATTN_TILE);
    for (int i = 0; i < n_q * ATTN_TILE; i++)
        scores[i] *= setup->scale;
    for (int i = 0; i < n_q; i++) {
        int visible = q0 + i - k0 + 1;
        for (int j = visible < 0 ? 0 : visible; j < ATTN_TILE; j++)
            scores[i * ATTN_TILE + j] = -INFINITY;
    }
}

/* Turns a row of scores into unnormalised probabilities under the row's running max, and
 * rescales its running sum and output to that max. Every tile holds at least one visible key
 * for every row (key tiles start at or before the query tile), so the new max is finite and
 * exp(old - new) is well defined (0 for the first tile, where old = -inf). */
static void online_softmax_step(const attn_setup *setup, float *scores, float *out_row, float *row_max,
                                float *row_sum, int n_k) {
    float tile_max = scores[0];
    for (int j = 1; j < ATTN_TILE; j++)
        tile_max = scores[j] > tile_max ? scores[j] : tile_max;
    float new_max = tile_max > *row_max ? tile_max : *row_max;
    float rescale = expf(*row_max - new_max);
    setup->kernels->exp_shifted_row(scores, new_max);
    float tile_sum = 0.0f;
    for (int j = 0; j < n_k; j++)
        tile_sum += scores[j];
    *row_sum = *row_sum * rescale + tile_sum;
    *row_max = new_max;
    for (int d = 0; d < setup->head_dim; d++)
        out_row[d] *= rescale;
}

/* Query rows q0 .. q0+n_q-1 (all real tokens) of one head: out and lse. The out rows hold the
 * running unnormalised output until the last key tile. */
static void forward_tile(const attn_setup *setup, const attn_forward_head *head, int q0, int n_q) {
    const int hd = setup->head_dim;
    const size_t qs = setup->q_stride, kvs = setup->kv_stride;
    float keys_t[ATTN_MAX_HEAD_DIM * ATTN_TILE];
    float values[ATTN_TILE * ATTN_MAX_HEAD_DIM];
    float scores[ATTN_TILE * ATTN_TILE];
    float row_max[ATTN_TILE], row_sum[ATTN_TILE];
    const float *q = head->q + q0 * qs;
    float *out = head->out + q0 * qs;
    for (int i = 0; i < n_q; i++) {
        row_max[i] = -INFINITY;
        row_sum[i] = 0.0f;
        memset(out + i * qs, 0, (size_t)hd * sizeof(float));
    }
    const int key_end = q0 + n_q;
    for (int k0 = 0; k0 < key_end; k0 += ATTN_TILE) {
        int n_k = min_int(ATTN_TILE, key_end - k0);
        load_transposed(keys_t, head->k + k0 * kvs, kvs, n_k, hd);
        load_rows(values, head->v + k0 * kvs, kvs, n_k, hd);
        tile_scores(setup, scores, q, qs, keys_t, q0, n_q, k0);
        for (int i = 0; i < n_q; i++) {
            online_softmax_step(setup, scores + i * ATTN_TILE, out + i * qs, &row_max[i], &row_sum[i], n_k);
        }
        matmul_accumulate(setup, out, qs, scores, ATTN_TILE, 1, values, hd, n_q, n_k, hd); /* out += P V */
    }
    for (int i = 0; i < n_q; i++) {
        float inv_sum = 1.0f / row_sum[i];
        for (int d = 0; d < hd; d++)
            out[i * qs + d] *= inv_sum;
        head->lse[q0 + i] = row_max[i] + logf(row_sum[i]);
    }
}

/* Query rows q0 .. q0+n_q-1 (all real tokens) of one head: writes their dq rows and adds their
 * contributions to dk/dv (FlashAttention-2, Algorithm 2, with the loops swapped so that dq is
 * finished tile by tile):
 *   P = exp(S - lse), dV += P^T dO, dP = dO V^T, dS = P * (dP - D) with D = rowsum(dO * O),
 *   dQ = scale * dS K, dK += scale * dS^T Q. */
static void backward_tile(const attn_setup *setup, const attn_backward_head *head, int q0, int n_q) {
    const int hd = setup->head_dim;
    const size_t qs = setup->q_stride, kvs = setup->kv_stride;
    float queries[ATTN_TILE * ATTN_MAX_HEAD_DIM];
    float douts[ATTN_TILE * ATTN_MAX_HEAD_DIM];
    float keys[ATTN_TILE * ATTN_MAX_HEAD_DIM];
    float keys_t[ATTN_MAX_HEAD_DIM * ATTN_TILE];
    float values_t[ATTN_MAX_HEAD_DIM * ATTN_TILE];
    float probs[ATTN_TILE * ATTN_TILE];
    float dscores[ATTN_TILE * ATTN_TILE];
    float delta[ATTN_TILE];
    float *dq = head->dq + q0 * qs;
    load_rows(queries, head->q + q0 * qs, qs, n_q, hd);
    load_rows(douts, head->dout + q0 * qs, qs, n_q, hd);
    for (int i = 0; i < n_q; i++) {
        const float *out_row = head->out + (q0 + i) * qs;
        float dot = 0.0f;
        for (int d = 0; d < hd; d++)
            dot += douts[i * hd + d] * out_row[d];
        delta[i] = dot;
        memset(dq + i * qs, 0, (size_t)hd * sizeof(float));
    }
    const int key_end = q0 + n_q;
    for (int k0 = 0; k0 < key_end; k0 += ATTN_TILE) {
        int n_k = min_int(ATTN_TILE, key_end - k0);
        load_rows(keys, head->k + k0 * kvs, kvs, n_k, hd);
        load_transposed(keys_t, head->k + k0 * kvs, kvs, n_k, hd);
        load_transposed(values_t, head->v + k0 * kvs, kvs, n_k, hd);
        tile_scores(setup, probs, queries, hd, keys_t, q0, n_q, k0);
        memset(dscores, 0, (size_t)n_q * ATTN_TILE * sizeof(float));
        matmul_accumulate(setup, dscores, ATTN_TILE, douts, hd, 1, values_t, ATTN_TILE, n_q, hd,
                          ATTN_TILE); /* dP */
        for (int i = 0; i < n_q; i++) {
            float *p = probs + i * ATTN_TILE, *ds = dscores + i * ATTN_TILE;
            /* lse >= the row max, so p <= 1 up to rounding */
            setup->kernels->exp_shifted_row(p, head->lse[q0 + i]);
            for (int j = 0; j < ATTN_TILE; j++)
                ds[j] = p[j] * (ds[j] - delta[i]) * setup->scale;
        }
        float *dv = head->dv + k0 * kvs, *dk = head->dk + k0 * kvs;
        matmul_accumulate(setup, dv, kvs, probs, 1, ATTN_TILE, douts, hd, n_k, n_q, hd); /* dV += P^T dO */
        matmul_accumulate(setup, dk, kvs, dscores, 1, ATTN_TILE, queries, hd, n_k, n_q,
                          hd);                                                           /* dK += dS^T Q */
        matmul_accumulate(setup, dq, qs, dscores, ATTN_TILE, 1, keys, hd, n_q, n_k, hd); /* dQ += dS K */
    }
}

/* ---- drivers ---------------------------------------------------------------------------------- */

/* Shapes are validated by the caller; one that slipped through (head_dim beyond the tile
 * buffers, H not a multiple of KVH) must not write out of bounds, so the op fills its outputs
 * with NaN instead, which the trainer's finite check reports. */
static int attn_shape_supported(int H, int KVH, int head_dim) {
    return KVH > 0 && H % KVH == 0 && head_dim > 0 && head_dim <= ATTN_MAX_HEAD_DIM;
}

static void fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
}

static attn_setup make_setup(int T, int H, int KVH, int head_dim) {
    return (attn_setup){
        .T = T,
        .H = H,
        .KVH = KVH,
        .head_dim = head_dim,
        .q_stride = (size_t)H * head_dim,
        .kv_stride = (size_t)KVH * head_dim,
        .scale = 1.0f / sqrtf((float)head_dim),
        .kernels = pick_kernels(),
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
    const attn_setup setup = make_setup(T, H, KVH, head_dim);
    const int group = H / KVH, tiles = (T + ATTN_TILE - 1) / ATTN_TILE;
    const long tasks = (long)B * H * tiles;
    /* dynamic: later query tiles see more keys */
#pragma omp parallel for schedule(dynamic)
    for (long task = 0; task < tasks; task++) {
        int b = (int)(task / ((long)H * tiles)), h = (int)(task / tiles % H),
            q0 = (int)(task % tiles) * ATTN_TILE;
        size_t q_origin = (size_t)b * T * setup.q_stride + (size_t)h * head_dim;
        size_t kv_origin = (size_t)b * T * setup.kv_stride + (size_t)(h / group) * head_dim;
        attn_forward_head head = {
            .out = out + q_origin,
            .lse = lse + ((size_t)b * H + h) * T,
            .q = q + q_origin,
            .k = k + kv_origin,
            .v = v + kv_origin,
        };
        int q_end = min_int(q0 + ATTN_TILE, T);
        int real_end = min_int(q_end, sample_length(lengths, b, T));
        if (real_end > q0) forward_tile(&setup, &head, q0, real_end - q0);
        for (int t = real_end > q0 ? real_end : q0; t < q_end; t++) {
            memset(head.out + t * setup.q_stride, 0, (size_t)head_dim * sizeof(float));
            head.lse[t] = 0.0f;
        }
    }
}

/* dk/dv of kv head g of one sample with n real tokens, and dq of the query heads that read it. */
static void backward_kv_head(const attn_setup *setup, const attn_backward_head *sample, int n, int g) {
    const int hd = setup->head_dim, group = setup->H / setup->KVH;
    for (int t = 0; t < setup->T; t++) {
        memset(sample->dk + t * setup->kv_stride, 0, (size_t)hd * sizeof(float));
        memset(sample->dv + t * setup->kv_stride, 0, (size_t)hd * sizeof(float));
    }
    for (int h = g * group; h < (g + 1) * group; h++) {
        attn_backward_head head = *sample;
        head.dq += (size_t)h * hd;
        head.dout += (size_t)h * hd;
        head.q += (size_t)h * hd;
        head.out += (size_t)h * hd;
        head.lse += (size_t)h * setup->T;
        for (int q0 = 0; q0 < n; q0 += ATTN_TILE)
            backward_tile(setup, &head, q0, min_int(ATTN_TILE, n - q0));
        for (int t = n; t < setup->T; t++)
            memset(head.dq + t * setup->q_stride, 0, (size_t)hd * sizeof(float));
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
    const attn_setup setup = make_setup(T, H, KVH, head_dim);
    const long tasks = (long)B * KVH;
#pragma omp parallel for schedule(dynamic)
    for (long task = 0; task < tasks; task++) {
        int b = (int)(task / KVH), g = (int)(task % KVH);
        size_t q_origin = (size_t)b * T * setup.q_stride;
        size_t kv_origin = (size_t)b * T * setup.kv_stride + (size_t)g * head_dim;
        /* q-side pointers at head 0 of the sample; backward_kv_head offsets them per head */
        attn_backward_head sample = {
            .dq = dq + q_origin,
            .dk = dk + kv_origin,
            .dv = dv + kv_origin,
            .dout = dout + q_origin,
            .q = q + q_origin,
            .k = k + kv_origin,
            .v = v + kv_origin,
            .out = out + q_origin,
            .lse = lse + (size_t)b * H * T,
        };
        backward_kv_head(&setup, &sample, sample_length(lengths, b, T), g);
    }
}
