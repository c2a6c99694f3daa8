/* CPU GEMM, blocked in the GotoBLAS/BLIS way: op(A) and op(B) are packed into K-major panels
 * (mr rows of A, nr columns of B, zero-padded at the edges) and a register-tiled microkernel
 * computes each mr x nr tile of C from one A panel and one B panel. Three microkernels, chosen
 * once at run time: AVX-512 (14x32), AVX2+FMA (6x16) and portable C (4x8). The library is
 * built for baseline x86-64, so the SIMD code carries target attributes and only runs after
 * cpuid says the CPU has it. Tiny products skip packing; small ones run on one thread.
 *
 * Determinism: every C element is owned by one thread, and its sum over K runs in a fixed
 * order (kc blocks in ascending order, each accumulated in a register from p = 0 up). kc
 * depends on K only and tile positions on mr/nr only, so results do not depend on the thread
 * count (they do depend on the SIMD level).
 *
 * bf16 operands (tga_cpu_gemm_mixed): an operand may be a bf16 matrix, or fp32 rounded to bf16
 * as it is packed; the packed panels hold those values as floats, so the microkernels and the
 * summation order are the same as for fp32 (products of two bf16 values are exact in fp32). */
#include "kernels/cpu/cpu_kernels.h"

#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- SIMD level ------------------------------------------------------------------------- */

enum simd_level { SIMD_SCALAR, SIMD_AVX2, SIMD_AVX512, SIMD_LEVEL_COUNT };
static const char *const simd_level_names[SIMD_LEVEL_COUNT] = {"scalar", "avx2", "avx512"};

static enum simd_level active_simd_level = SIMD_SCALAR;
static pthread_once_t simd_level_once = PTHREAD_ONCE_INIT;

static enum simd_level detect_simd_level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SIMD_AVX2;
    return SIMD_SCALAR;
}

/* TGA_CPU_SIMD may only lower the level (to test the fallbacks on a wide CPU); a request
 * above what the CPU supports, or an unknown name, leaves the detected level. */
static void choose_simd_level(void) {
    enum simd_level level = detect_simd_level();
    const char *forced = getenv("TGA_CPU_SIMD");
    if (forced) {
        for (int l = SIMD_SCALAR; l < (int)level; l++) {
            if (strcmp(forced, simd_level_names[l]) == 0) {
                level = (enum simd_level)l;
                break;
            }
        }
    }
    active_simd_level = level;
}

static enum simd_level simd_level(void) {
    pthread_once(&simd_level_once, choose_simd_level);
    return active_simd_level;
}

const char *tga_cpu_simd_level(void) { return simd_level_names[simd_level()]; }

int tga_cpu_has_avx512(void) { return simd_level() == SIMD_AVX512; }

/* kc bounds the panels a microkernel call streams (A: kc x 16, B: kc x 32 floats); blocks of
 * equal size, depending on K alone and never on the thread count, fix the summation order. */
#define KC_MAX 320

/* ---- packing ----------------------------------------------------------------------------
 * Both operands are packed the same way, into panels that hold `step` consecutive rows of A
 * (or columns of B) in `width` >= step slots per K step, K-major:
 *     panel q: panels[q*kc*width + p*width + x] = src(x0 + q*step + x, p0 + p),
 * for x < step (and within count); the other slots are zero so edge tiles run the full
 * microkernel. One call packs ceil(count/step) panels, so a row of a non-K-contiguous source
 * is read once, contiguously, for all of them. */

typedef struct gemm_operand {
    const void *data;
    size_t ld;
    int k_contiguous; /* src(x, p) = k_contiguous ? data[x*ld + p] : data[p*ld + x] */
    tga_cpu_operand type;
} gemm_operand;

/* src(x, p) as a float (widened, or rounded to bf16, as the operand's type says). */
static inline float operand_at(const gemm_operand *src, size_t x, size_t p) {
    size_t i = src->k_contiguous ? x * src->ld + p : p * src->ld + x;
    switch (src->type) {
    case TGA_CPU_BF16: return tga_bf16_to_float(((const tga_bf16 *)src->data)[i]);
    case TGA_CPU_F32_AS_BF16: return tga_bf16_round(((const float *)src->data)[i]);
    default: return ((const float *)src->data)[i];
    }
}

typedef struct panel_layout {
    int x0, count; /* rows (of A) or columns (of B) x0 .. x0+count-1 */
    int step;      /* rows per panel: mr or nr */
    int width;     /* slots per K step: >= step */
    int p0, kc;
} panel_layout;

typedef void (*pack_fn)(const gemm_operand *src, const panel_layout *lay, float *panels);

static int min_int(int a, int b) { return a < b ? a : b; }
static int ceil_div(int a, int b) { return (a + b - 1) / b; }

static void pack_panels_portable(const gemm_operand *src, const panel_layout *lay, float *panels) {
    int n_panels = ceil_div(lay->count, lay->step);
    for (int p = 0; p < lay->kc; p++) {
        for (int q = 0; q < n_panels; q++) {
            float *dst = panels + ((size_t)q * lay->kc + p) * lay->width;
            int first = lay->x0 + q * lay->step, n = min_int(lay->step, lay->count - q * lay->step);
            for (int x = 0; x < n; x++) dst[x] = operand_at(src, (size_t)(first + x), (size_t)(lay->p0 + p));
            for (int x = n; x < lay->width; x++) dst[x] = 0.0f;
        }
    }
}

__attribute__((target("avx"))) static void transpose_8x8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
    }
}

/* One panel from a K-contiguous source: 8 rows x 8 K steps at a time through a register
 * transpose (element by element, this pack cost as much as a sixth of the multiply time).
 * width must be a multiple of 8 and the panel 32-byte aligned. */
__attribute__((target("avx"))) static void pack_panel_transposing_avx(const gemm_operand *src, int first, int n,
                                                                     int width, int p0, int kc, float *panel) {
    int kc_vectors = kc & ~7;
    const float *data = src->data;
    for (int xg = 0; xg < width; xg += 8) {
        const float *rows[8];
        for (int r = 0; r < 8; r++) rows[r] = xg + r < n ? data + (size_t)(first + xg + r) * src->ld + p0 : NULL;
        for (int p = 0; p < kc_vectors; p += 8) {
            __m256 v[8];
            for (int r = 0; r < 8; r++) v[r] = rows[r] ? _mm256_loadu_ps(rows[r] + p) : _mm256_setzero_ps();
            transpose_8x8(v);
            for (int q = 0; q < 8; q++) _mm256_store_ps(panel + (size_t)(p + q) * width + xg, v[q]);
        }
        for (int p = kc_vectors; p < kc; p++) {
            for (int r = 0; r < 8; r++) panel[(size_t)p * width + xg + r] = rows[r] ? rows[r][p] : 0.0f;
        }
    }
}

/* count consecutive elements of a bf16 operand widened, or of an fp32 operand rounded to bf16
 * (kernels/bf16.h's nearest-even, NaN kept quiet), from element `at` of its data into out. */
__attribute__((target("avx2"))) static void convert_span_avx2(const gemm_operand *src, size_t at, int count,
                                                             float *out) {
    int p = 0;
    if (src->type == TGA_CPU_BF16) {
        const tga_bf16 *from = (const tga_bf16 *)src->data + at;
        for (; p + 8 <= count; p += 8) {
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(from + p)));
            _mm256_storeu_ps(out + p, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
        for (; p < count; p++) out[p] = tga_bf16_to_float(from[p]);
        return;
    }
    const __m256i lsb = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u), quiet = _mm256_set1_epi32(0x00400000);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const float *from = (const float *)src->data + at;
    for (; p + 8 <= count; p += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(from + p));
        __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), lsb);
        __m256i rounded = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(bias, odd)), high);
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        __m256i kept = _mm256_and_si256(_mm256_or_si256(u, quiet), high);
        _mm256_storeu_ps(out + p, _mm256_castsi256_ps(_mm256_blendv_epi8(rounded, kept, nan)));
    }
    for (; p < count; p++) out[p] = tga_bf16_round(from[p]);
}

/* A bf16 or rounded operand. K-contiguous: a panel's rows are converted into float lines, then
 * packed by the transposing pack. Otherwise each K step's row segment of a panel is contiguous
 * in the source and is converted straight into its panel slots. */
#define CONVERT_ROWS_MAX 32 /* the widest panel step (AVX-512's nr) */
__attribute__((target("avx2"))) static void pack_panels_converting_avx(const gemm_operand *src,
                                                                      const panel_layout *lay, float *panels) {
    int n_panels = ceil_div(lay->count, lay->step);
    if (!src->k_contiguous) {
        for (int p = 0; p < lay->kc; p++) {
            size_t row = (size_t)(lay->p0 + p) * src->ld + (size_t)lay->x0;
            for (int q = 0; q < n_panels; q++) {
                float *dst = panels + ((size_t)q * lay->kc + p) * lay->width;
                int n = min_int(lay->step, lay->count - q * lay->step);
                convert_span_avx2(src, row + (size_t)q * lay->step, n, dst);
                for (int x = n; x < lay->width; x++) dst[x] = 0.0f;
            }
        }
        return;
    }
    if (lay->step > CONVERT_ROWS_MAX) {
        pack_panels_portable(src, lay, panels);
        return;
    }
    float lines[CONVERT_ROWS_MAX * KC_MAX];
    const gemm_operand converted = {.data = lines, .ld = (size_t)lay->kc, .k_contiguous = 1, .type = TGA_CPU_F32};
    for (int q = 0; q < n_panels; q++) {
        int first = lay->x0 + q * lay->step, n = min_int(lay->step, lay->count - q * lay->step);
        for (int r = 0; r < n; r++)
            convert_span_avx2(src, (size_t)(first + r) * src->ld + (size_t)lay->p0, lay->kc, lines + (size_t)r * lay->kc);
        pack_panel_transposing_avx(&converted, 0, n, lay->width, 0, lay->kc, panels + (size_t)q * lay->kc * lay->width);
    }
}

/* A non-K-contiguous source is copied row by row, with masked loads for the partial vectors
 * (element by element the copy, and the memset calls gcc makes of the zero fill, cost as much as
 * a tenth of the multiply time). width must be a multiple of 8 and the panels 32-byte aligned. */
__attribute__((target("avx"))) static void pack_panels_copying_avx(const gemm_operand *src,
                                                                  const panel_layout *lay, float *panels) {
    static const int32_t lane_masks[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    int n_panels = ceil_div(lay->count, lay->step);
    for (int p = 0; p < lay->kc; p++) {
        const float *line = (const float *)src->data + (size_t)(lay->p0 + p) * src->ld + lay->x0;
        for (int q = 0; q < n_panels; q++) {
            const float *from = line + q * lay->step;
            float *dst = panels + ((size_t)q * lay->kc + p) * lay->width;
            int n = min_int(lay->step, lay->count - q * lay->step);
            for (int x = 0; x < lay->width; x += 8) {
                __m256 v = _mm256_setzero_ps();
                if (n - x >= 8) {
                    v = _mm256_loadu_ps(from + x);
                } else if (n - x > 0) {
                    __m256i mask = _mm256_loadu_si256((const __m256i *)(lane_masks + 8 - (n - x)));
                    v = _mm256_maskload_ps(from + x, mask);
                }
                _mm256_store_ps(dst + x, v);
            }
        }
    }
}

static void pack_panels_avx(const gemm_operand *src, const panel_layout *lay, float *panels) {
    if (src->type != TGA_CPU_F32) {
        pack_panels_converting_avx(src, lay, panels);
        return;
    }
    if (!src->k_contiguous) {
        pack_panels_copying_avx(src, lay, panels);
        return;
    }
    for (int q = 0; q * lay->step < lay->count; q++) {
        pack_panel_transposing_avx(src, lay->x0 + q * lay->step, min_int(lay->step, lay->count - q * lay->step),
                                   lay->width, lay->p0, lay->kc, panels + (size_t)q * lay->kc * lay->width);
    }
}

/* ---- microkernels ----------------------------------------------------------------------
 * C[mr, nr] (row stride ldc) = alpha * sum_p a_panel[p*a_width + i] * b_panel[p*nr + j]
 * + beta * C. beta == 0 does not read C. Panels are aligned to the kernel's vector width. An A
 * panel has a_width >= mr slots per K step (mr rounded up to whole 8-float vectors, so the
 * transposing pack never stores a partial vector). */

typedef void (*microkernel_fn)(int kc, const float *a_panel, const float *b_panel, float *c, size_t ldc,
                               float alpha, float beta);

typedef struct gemm_kernel {
    int mr, nr, a_width;
    microkernel_fn run;
    pack_fn pack;
} gemm_kernel;

#define AVX512_MR 14
#define AVX512_A_WIDTH 16
#define AVX512_NR 32

__attribute__((target("avx512f"))) static void microkernel_avx512(int kc, const float *a_panel,
                                                                  const float *b_panel, float *c, size_t ldc,
                                                                  float alpha, float beta) {
    __m512 acc[AVX512_MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < AVX512_MR; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + AVX512_NR - 1), _MM_HINT_T0);
        acc[i][0] = _mm512_setzero_ps();
        acc[i][1] = _mm512_setzero_ps();
    }
    for (int p = 0; p < kc; p++) {
        __m512 b0 = _mm512_load_ps(b_panel);
        __m512 b1 = _mm512_load_ps(b_panel + 16);
#pragma GCC unroll 14
        for (int i = 0; i < AVX512_MR; i++) {
            __m512 a = _mm512_set1_ps(a_panel[i]);
            acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
        }
        a_panel += AVX512_A_WIDTH;
        b_panel += AVX512_NR;
    }
    __m512 va = _mm512_set1_ps(alpha);
    __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 14
    for (int i = 0; i < AVX512_MR; i++) {
        float *row = c + i * ldc;
        if (beta == 0.0f) {
            _mm512_storeu_ps(row, _mm512_mul_ps(va, acc[i][0]));
            _mm512_storeu_ps(row + 16, _mm512_mul_ps(va, acc[i][1]));
        } else {
            _mm512_storeu_ps(row, _mm512_fmadd_ps(va, acc[i][0], _mm512_mul_ps(vb, _mm512_loadu_ps(row))));
            _mm512_storeu_ps(row + 16,
                             _mm512_fmadd_ps(va, acc[i][1], _mm512_mul_ps(vb, _mm512_loadu_ps(row + 16))));
        }
    }
}

#define AVX2_MR 6
#define AVX2_A_WIDTH 8
#define AVX2_NR 16

__attribute__((target("avx2,fma"))) static void microkernel_avx2(int kc, const float *a_panel,
                                                                 const float *b_panel, float *c, size_t ldc,
                                                                 float alpha, float beta) {
    __m256 acc[AVX2_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < AVX2_MR; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + AVX2_NR - 1), _MM_HINT_T0);
        acc[i][0] = _mm256_setzero_ps();
        acc[i][1] = _mm256_setzero_ps();
    }
    for (int p = 0; p < kc; p++) {
        __m256 b0 = _mm256_load_ps(b_panel);
        __m256 b1 = _mm256_load_ps(b_panel + 8);
#pragma GCC unroll 6
        for (int i = 0; i < AVX2_MR; i++) {
            __m256 a = _mm256_broadcast_ss(a_panel + i);
            acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
        }
        a_panel += AVX2_A_WIDTH;
        b_panel += AVX2_NR;
    }
    __m256 va = _mm256_set1_ps(alpha);
    __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
    for (int i = 0; i < AVX2_MR; i++) {
        float *row = c + i * ldc;
        if (beta == 0.0f) {
            _mm256_storeu_ps(row, _mm256_mul_ps(va, acc[i][0]));
            _mm256_storeu_ps(row + 8, _mm256_mul_ps(va, acc[i][1]));
        } else {
            _mm256_storeu_ps(row, _mm256_fmadd_ps(va, acc[i][0], _mm256_mul_ps(vb, _mm256_loadu_ps(row))));
            _mm256_storeu_ps(row + 8,
                             _mm256_fmadd_ps(va, acc[i][1], _mm256_mul_ps(vb, _mm256_loadu_ps(row + 8))));
        }
    }
}

#define SCALAR_MR 4
#define SCALAR_NR 8

static void microkernel_scalar(int kc, const float *a_panel, const float *b_panel, float *c, size_t ldc,
                               float alpha, float beta) {
    float acc[SCALAR_MR][SCALAR_NR] = {{0}};
    for (int p = 0; p < kc; p++) {
        for (int i = 0; i < SCALAR_MR; i++) {
            for (int j = 0; j < SCALAR_NR; j++) acc[i][j] += a_panel[i] * b_panel[j];
        }
        a_panel += SCALAR_MR;
        b_panel += SCALAR_NR;
    }
    for (int i = 0; i < SCALAR_MR; i++) {
        float *row = c + i * ldc;
        for (int j = 0; j < SCALAR_NR; j++) row[j] = alpha * acc[i][j] + (beta == 0.0f ? 0.0f : beta * row[j]);
    }
}

static const gemm_kernel gemm_kernels[SIMD_LEVEL_COUNT] = {
    [SIMD_SCALAR] = {SCALAR_MR, SCALAR_NR, SCALAR_MR, microkernel_scalar, pack_panels_portable},
    [SIMD_AVX2] = {AVX2_MR, AVX2_NR, AVX2_A_WIDTH, microkernel_avx2, pack_panels_avx},
    [SIMD_AVX512] = {AVX512_MR, AVX512_NR, AVX512_A_WIDTH, microkernel_avx512, pack_panels_avx},
};

/* bounds of the scratch tile in run_tile */
#define MAX_MR 16
#define MAX_NR 32
_Static_assert(AVX512_MR <= MAX_MR && AVX512_NR <= MAX_NR && AVX2_MR <= MAX_MR && AVX2_NR <= MAX_NR &&
                   SCALAR_MR <= MAX_MR && SCALAR_NR <= MAX_NR,
               "a microkernel tile does not fit the scratch tile");

/* ---- blocked driver --------------------------------------------------------------------
 * The loops follow BLIS with the roles of A and B swapped (our microkernel broadcasts A and
 * loads B as vectors). The threads split C into rectangles of whole tiles and never wait for
 * each other: each packs the rows of A and the columns of B that its rectangle needs into its
 * own buffers, so there is no barrier inside a call (on a busy machine a barrier waits for a
 * descheduled partner thread for a whole time slice). Per thread: for each block of up to
 * MB_MAX rows and each K block, pack that A block, then walk the columns in L2-sized B blocks,
 * running the microkernel for every (A panel, B panel) pair. */

/* A thread's packed B block (kc x nc floats) is re-read for every A panel, so it is sized to
 * stay in a 1 MiB L2. */
#define B_BLOCK_FLOATS (320 * 384)
/* Rows of A packed at once: bounds a thread's A buffer (about 3 MiB at kc = 320). */
#define MB_MAX 2048
/* The columns are split between threads only while each gets at least this many B panels;
 * with fewer, the A packing that every column share repeats would cost too much. */
#define MIN_B_PANELS_PER_THREAD 4
/* Below this many multiply-adds a second thread costs more than it saves (break-even measured
 * on the 2-core Zen 4 development VM: between 64^3 and 80^3). */
#define PARALLEL_MIN_MULADDS (72.0 * 72.0 * 72.0)
/* Below this many multiply-adds the unpacked loop beats packing (measured there: about 7^3). */
#define UNPACKED_MAX_MULADDS (8.0 * 8.0 * 8.0)

typedef struct gemm_problem {
    int M, N, K;
    float alpha, beta;
    gemm_operand a, b;
    float *C;
    size_t ldc;
} gemm_problem;

typedef struct gemm_plan {
    const gemm_kernel *kernel;
    int kc_block;     /* K block size */
    int mb_panels;    /* A panels (of mr rows) per packed A block */
    int nb_panels;    /* B panels (of nr columns) per packed B block */
    int threads;      /* requested; the team may be smaller */
    size_t a_floats;  /* one thread's A buffer: [mb_panels][kc_block][a_width] */
    size_t b_floats;  /* one thread's B buffer: [nb_panels][kc_block][nr] */
    float *workspace; /* [threads][a_floats + b_floats] */
} gemm_plan;

/* A thread's rectangle of C in whole tiles: A panels [ip_first, ip_end) and B panels
 * [jp_first, jp_end). */
typedef struct thread_share {
    int ip_first, ip_end;
    int jp_first, jp_end;
} thread_share;

/* An edge tile runs the full microkernel on a scratch tile, so it gets the same arithmetic as
 * an interior one. */
static void run_tile(const gemm_kernel *kernel, int kc, const float *a_panel, const float *b_panel, float *c,
                     size_t ldc, int rows, int cols, float alpha, float beta) {
    if (rows == kernel->mr && cols == kernel->nr) {
        kernel->run(kc, a_panel, b_panel, c, ldc, alpha, beta);
        return;
    }
    float tile[MAX_MR * MAX_NR];
    if (beta != 0.0f) {
        for (int i = 0; i < rows; i++) memcpy(tile + i * kernel->nr, c + i * ldc, (size_t)cols * sizeof *tile);
    }
    kernel->run(kc, a_panel, b_panel, tile, (size_t)kernel->nr, alpha, beta);
    for (int i = 0; i < rows; i++) memcpy(c + i * ldc, tile + i * kernel->nr, (size_t)cols * sizeof *tile);
}

/* Part `part` of `parts` equal contiguous shares of [0, count). */
static void split_range(int count, int part, int parts, int *first, int *end) {
    *first = (int)((long long)count * part / parts);
    *end = (int)((long long)count * (part + 1) / parts);
}

/* Threads form an m_parts x n_parts grid over the tiles of C, n_parts the largest divisor of
 * the team size that leaves every thread MIN_B_PANELS_PER_THREAD B panels (1 if none does). */
static thread_share share_for_thread(const gemm_problem *pr, const gemm_kernel *kernel, int thread, int threads) {
    int m_panels = ceil_div(pr->M, kernel->mr), n_panels = ceil_div(pr->N, kernel->nr);
    int n_parts = threads;
    while (n_parts > 1 && (threads % n_parts != 0 || n_panels < n_parts * MIN_B_PANELS_PER_THREAD)) n_parts--;
    thread_share share;
    split_range(m_panels, thread / n_parts, threads / n_parts, &share.ip_first, &share.ip_end);
    split_range(n_panels, thread % n_parts, n_parts, &share.jp_first, &share.jp_end);
    return share;
}

/* Tiles [ip_first, ip_end) x [jp_first, jp_end) of one K block, from the packed A panels of
 * ip_first.. and B panels of jp_first.. */
static void multiply_packed(const gemm_problem *pr, const gemm_kernel *kernel, const thread_share *tiles, int kc,
                            const float *a_block, const float *b_block, float beta) {
    int mr = kernel->mr, nr = kernel->nr;
    for (int ip = tiles->ip_first; ip < tiles->ip_end; ip++) {
        const float *a_panel = a_block + (size_t)(ip - tiles->ip_first) * kc * kernel->a_width;
        int row = ip * mr;
        for (int jp = tiles->jp_first; jp < tiles->jp_end; jp++) {
            run_tile(kernel, kc, a_panel, b_block + (size_t)(jp - tiles->jp_first) * kc * nr,
                     pr->C + (size_t)row * pr->ldc + (size_t)jp * nr, pr->ldc, min_int(mr, pr->M - row),
                     min_int(nr, pr->N - jp * nr), pr->alpha, beta);
        }
    }
}

/* One thread's whole part of the product. */
static void gemm_thread(const gemm_problem *pr, const gemm_plan *plan, int thread, int threads) {
    const gemm_kernel *kernel = plan->kernel;
    int mr = kernel->mr, nr = kernel->nr;
    thread_share share = share_for_thread(pr, kernel, thread, threads);
    float *a_block = plan->workspace + (size_t)thread * (plan->a_floats + plan->b_floats);
    float *b_block = a_block + plan->a_floats;
    for (int ib = share.ip_first; ib < share.ip_end; ib += plan->mb_panels) {
        int ib_end = min_int(share.ip_end, ib + plan->mb_panels);
        for (int p0 = 0; p0 < pr->K; p0 += plan->kc_block) {
            int kc = min_int(plan->kc_block, pr->K - p0);
            panel_layout a_lay = {ib * mr, min_int(pr->M, ib_end * mr) - ib * mr, mr, kernel->a_width, p0, kc};
            kernel->pack(&pr->a, &a_lay, a_block);
            for (int jb = share.jp_first; jb < share.jp_end; jb += plan->nb_panels) {
                int jb_end = min_int(share.jp_end, jb + plan->nb_panels);
                panel_layout b_lay = {jb * nr, min_int(pr->N, jb_end * nr) - jb * nr, nr, nr, p0, kc};
                kernel->pack(&pr->b, &b_lay, b_block);
                thread_share tiles = {ib, ib_end, jb, jb_end};
                multiply_packed(pr, kernel, &tiles, kc, a_block, b_block, p0 == 0 ? pr->beta : 1.0f);
            }
        }
    }
}

/* Without memory for the packed blocks, or for tiny products where packing costs more than it
 * saves, a plain loop does the job. */
static void gemm_unpacked(const gemm_problem *pr) {
    const gemm_operand *a = &pr->a, *b = &pr->b;
    for (int i = 0; i < pr->M; i++) {
        float *c = pr->C + (size_t)i * pr->ldc;
        for (int j = 0; j < pr->N; j++) {
            float sum = 0.0f;
            for (int p = 0; p < pr->K; p++) sum += operand_at(a, (size_t)i, (size_t)p) * operand_at(b, (size_t)j, (size_t)p);
            c[j] = pr->alpha * sum + (pr->beta == 0.0f ? 0.0f : pr->beta * c[j]);
        }
    }
}

/* alpha == 0 or K == 0: C = beta * C, where beta == 0 clears C without reading it. */
static void scale_c(const gemm_problem *pr) {
    for (int i = 0; i < pr->M; i++) {
        float *c = pr->C + (size_t)i * pr->ldc;
        for (int j = 0; j < pr->N; j++) c[j] = pr->beta == 0.0f ? 0.0f : pr->beta * c[j];
    }
}

/* ---- workspace -------------------------------------------------------------------------
 * The packing buffers are kept per calling thread from one call to the next: a fresh
 * allocation of this size comes straight from mmap and pays a page fault per 4 KiB on every
 * call (a third of the time of a 512x256x256 product). A thread's workspace only grows, to
 * the largest plan it has needed (at most about 3.5 MiB per thread of its team), and is freed
 * when the thread exits. */

typedef struct gemm_workspace {
    float *data;
    size_t floats;
} gemm_workspace;

static pthread_key_t workspace_key;
static int workspace_key_ready;
static pthread_once_t workspace_key_once = PTHREAD_ONCE_INIT;

static void free_workspace(void *ptr) {
    gemm_workspace *ws = ptr;
    free(ws->data);
    free(ws);
}

static void create_workspace_key(void) {
    workspace_key_ready = pthread_key_create(&workspace_key, free_workspace) == 0;
}

/* The calling thread's workspace, 64-byte aligned and at least `floats` long; NULL when out of
 * memory. */
static float *workspace_floats(size_t floats) {
    pthread_once(&workspace_key_once, create_workspace_key);
    if (!workspace_key_ready) return NULL;
    gemm_workspace *ws = pthread_getspecific(workspace_key);
    if (!ws) {
        ws = calloc(1, sizeof *ws);
        if (!ws) return NULL;
        if (pthread_setspecific(workspace_key, ws) != 0) {
            free(ws);
            return NULL;
        }
    }
    if (ws->floats < floats) {
        free(ws->data);
        ws->data = aligned_alloc(64, ((floats * sizeof(float) + 63) & ~(size_t)63));
        ws->floats = ws->data ? floats : 0;
    }
    return ws->data;
}

/* ---- entry point ----------------------------------------------------------------------- */

/* Chooses block sizes and the thread count, and finds the packing buffers (0 if out of memory). */
static int plan_gemm(const gemm_problem *pr, gemm_plan *plan) {
    const gemm_kernel *kernel = &gemm_kernels[simd_level()];
    plan->kernel = kernel;
    plan->kc_block = ceil_div(pr->K, ceil_div(pr->K, KC_MAX));
    plan->mb_panels = min_int(MB_MAX / kernel->mr, ceil_div(pr->M, kernel->mr));
    plan->nb_panels = min_int(B_BLOCK_FLOATS / plan->kc_block / kernel->nr, ceil_div(pr->N, kernel->nr));
    double muladds = (double)pr->M * pr->N * pr->K;
    plan->threads = muladds < PARALLEL_MIN_MULADDS || omp_in_parallel() ? 1 : omp_get_max_threads();
    /* rounded to 64 bytes so that every panel is aligned for the vector loads and stores */
    plan->a_floats = ((size_t)plan->mb_panels * plan->kc_block * kernel->a_width + 15) & ~(size_t)15;
    plan->b_floats = ((size_t)plan->nb_panels * plan->kc_block * kernel->nr + 15) & ~(size_t)15;
    plan->workspace = workspace_floats((plan->a_floats + plan->b_floats) * plan->threads);
    return plan->workspace != NULL;
}

void tga_cpu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    tga_cpu_gemm_mixed(trans_a, trans_b, M, N, K, alpha, A, TGA_CPU_F32, lda, B, TGA_CPU_F32, ldb, beta, C, ldc);
}

void tga_cpu_gemm_mixed(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A,
                        tga_cpu_operand a_type, int lda, const void *B, tga_cpu_operand b_type, int ldb, float beta,
                        float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    gemm_problem pr = {
        .M = M, .N = N, .K = K, .alpha = alpha, .beta = beta,
        .a = {.data = A, .ld = (size_t)lda, .k_contiguous = !trans_a, .type = a_type},
        .b = {.data = B, .ld = (size_t)ldb, .k_contiguous = trans_b, .type = b_type},
        .C = C, .ldc = (size_t)ldc,
    };
    if (K <= 0 || alpha == 0.0f) {
        scale_c(&pr);
        return;
    }
    gemm_plan plan;
    if ((double)M * N * K < UNPACKED_MAX_MULADDS || !plan_gemm(&pr, &plan)) {
        gemm_unpacked(&pr);
        return;
    }
    if (plan.threads == 1) {
        /* even a one-thread parallel region costs about a microsecond */
        gemm_thread(&pr, &plan, 0, 1);
    } else {
#pragma omp parallel num_threads(plan.threads)
        gemm_thread(&pr, &plan, omp_get_thread_num(), omp_get_num_threads());
    }
}
