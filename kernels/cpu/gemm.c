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
 * count (they do depend on the SIMD level). */
#include "kernels/cpu/cpu_kernels.h"

#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
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

/* ---- packing ----------------------------------------------------------------------------
 * Both operands are packed the same way, into panels that hold `step` consecutive rows of A
 * (or columns of B) in `width` >= step slots per K step, K-major:
 *     panel q: panels[q*kc*width + p*width + x] = src(x0 + q*step + x, p0 + p),
 * for x < step (and within count); the other slots are zero so edge tiles run the full
 * microkernel. One call packs ceil(count/step) panels, so a row of a non-K-contiguous source
 * is read once, contiguously, for all of them. */

typedef struct gemm_operand {
    const float *data;
    size_t ld;
    int k_contiguous; /* src(x, p) = k_contiguous ? data[x*ld + p] : data[p*ld + x] */
} gemm_operand;

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
            if (src->k_contiguous) {
                for (int x = 0; x < n; x++) dst[x] = src->data[(size_t)(first + x) * src->ld + lay->p0 + p];
            } else {
                const float *line = src->data + (size_t)(lay->p0 + p) * src->ld + first;
                for (int x = 0; x < n; x++) dst[x] = line[x];
            }
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
    for (int xg = 0; xg < width; xg += 8) {
        const float *rows[8];
        for (int r = 0; r < 8; r++) rows[r] = xg + r < n ? src->data + (size_t)(first + xg + r) * src->ld + p0 : NULL;
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

static void pack_panels_avx(const gemm_operand *src, const panel_layout *lay, float *panels) {
    if (!src->k_contiguous) {
        pack_panels_portable(src, lay, panels);
        return;
    }
    for (int q = 0; q * lay->step < lay->count; q++) {
        pack_panel_transposing_avx(src, lay->x0 + q * lay->step, min_int(lay->step, lay->count - q * lay->step),
                                   lay->width, lay->p0, lay->kc, panels + (size_t)q * lay->kc * lay->width);
    }
}

/* ---- microkernels ----------------------------------------------------------------------
 * C[mr, nr] (row stride ldc) = alpha * sum_p a_panel[p*a_width + i] * b_panel[p*nr + j]
 * + beta * C. beta == 0 does not read C. Panels are 64-byte aligned. An A panel has a_width >= mr
 * slots per K step (mr rounded up to whole 8-float vectors, so the transposing pack never
 * stores a partial vector). */

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

#define MAX_MR 16
#define MAX_NR 32

/* ---- blocked driver --------------------------------------------------------------------
 * The loops follow BLIS with the roles of A and B swapped (our microkernel broadcasts A and
 * loads B as vectors): for each block of up to MB_MAX rows and each K block, the threads pack
 * that A block together (it is shared, read from L2/L3), then each thread walks its own share
 * of the columns in L2-sized B blocks that it packs itself, running the microkernel for every
 * (A panel, B panel) pair of its share. */

/* kc bounds the panels a microkernel call streams (A: kc x 16, B: kc x 32 floats); blocks of
 * equal size, depending on K alone and never on the thread count, fix the summation order. */
#define KC_MAX 320
/* A thread's packed B block (kc x nc floats) is re-read for every A panel, so it is sized to
 * stay in a 1 MiB L2. */
#define B_BLOCK_FLOATS (320 * 384)
/* Rows of A packed at once: bounds the shared buffer (about 6 MiB at kc = 320). */
#define MB_MAX 4096
/* Below this many multiply-adds a second thread costs more than it saves. */
#define PARALLEL_MIN_MULADDS (96.0 * 96.0 * 96.0)
/* Below this many multiply-adds the unpacked loop beats packing. */
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
    int kc_block;    /* K block size */
    int mb_block;    /* rows of A per packed block, a multiple of mr */
    int nc_block;    /* columns per B block, a multiple of nr */
    int threads;     /* requested; the team may be smaller */
    float *a_block;  /* [mb_block/mr][kc_block][a_width], shared */
    float *b_blocks; /* [threads][nc_block/nr][kc_block][nr], one per thread */
} gemm_plan;

/* This thread's place in the team that runs one GEMM. Passed explicitly rather than asked of
 * OpenMP, because a one-thread GEMM runs without a parallel region of its own (possibly inside
 * someone else's). */
typedef struct gemm_team {
    int thread, threads;
} gemm_team;

/* A thread's rectangle of C in whole tiles: A panels [ip_first, ip_end) of the current A block
 * and B panels [jp_first, jp_end). */
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

/* Splits the columns between the threads where there are enough of them (each thread then
 * packs only its own B), otherwise the rows too: threads form an m_parts x n_parts grid with
 * n_parts the largest divisor of the team size not above the number of B panels. */
static thread_share share_for_thread(gemm_team team, int m_panels, int n_panels) {
    int n_parts = team.threads;
    while (n_parts > n_panels || team.threads % n_parts != 0) n_parts--;
    thread_share share;
    split_range(m_panels, team.thread / n_parts, team.threads / n_parts, &share.ip_first, &share.ip_end);
    split_range(n_panels, team.thread % n_parts, n_parts, &share.jp_first, &share.jp_end);
    return share;
}

/* The team packs rows [i0, i0+mb) x K block [p0, p0+kc) of op(A) into plan->a_block. */
static void pack_a_block(const gemm_problem *pr, const gemm_plan *plan, gemm_team team, int i0, int mb, int p0,
                         int kc) {
    const gemm_kernel *kernel = plan->kernel;
    int ip, ip_end;
    split_range(ceil_div(mb, kernel->mr), team.thread, team.threads, &ip, &ip_end);
    if (ip == ip_end) return;
    int row = ip * kernel->mr;
    panel_layout lay = {i0 + row, min_int(mb, ip_end * kernel->mr) - row, kernel->mr, kernel->a_width, p0, kc};
    kernel->pack(&pr->a, &lay, plan->a_block + (size_t)ip * kc * kernel->a_width);
}

/* This thread's tiles of C[i0:i0+mb, :] for one packed A block, B block by B block. */
static void multiply_a_block(const gemm_problem *pr, const gemm_plan *plan, gemm_team team, int i0, int mb,
                             int p0, int kc, float beta) {
    const gemm_kernel *kernel = plan->kernel;
    int mr = kernel->mr, nr = kernel->nr;
    thread_share share = share_for_thread(team, ceil_div(mb, mr), ceil_div(pr->N, nr));
    float *b_block = plan->b_blocks + (size_t)team.thread * kc * plan->nc_block;
    int panels_per_block = plan->nc_block / nr;
    for (int jb = share.jp_first; jb < share.jp_end; jb += panels_per_block) {
        int jb_end = min_int(share.jp_end, jb + panels_per_block);
        panel_layout lay = {jb * nr, min_int(pr->N, jb_end * nr) - jb * nr, nr, nr, p0, kc};
        kernel->pack(&pr->b, &lay, b_block);
        for (int ip = share.ip_first; ip < share.ip_end; ip++) {
            const float *a_panel = plan->a_block + (size_t)ip * kc * kernel->a_width;
            int row = i0 + ip * mr;
            for (int jp = jb; jp < jb_end; jp++) {
                run_tile(kernel, kc, a_panel, b_block + (size_t)(jp - jb) * kc * nr,
                         pr->C + (size_t)row * pr->ldc + (size_t)jp * nr, pr->ldc, min_int(mr, pr->M - row),
                         min_int(nr, pr->N - jp * nr), pr->alpha, beta);
            }
        }
    }
}

static void team_barrier(gemm_team team) {
    if (team.threads > 1) {
#pragma omp barrier
    }
}

/* Every thread of the team walks the same (A block, K block) sequence. */
static void gemm_blocked(const gemm_problem *pr, const gemm_plan *plan, gemm_team team) {
    for (int i0 = 0; i0 < pr->M; i0 += plan->mb_block) {
        int mb = min_int(plan->mb_block, pr->M - i0);
        for (int p0 = 0; p0 < pr->K; p0 += plan->kc_block) {
            int kc = min_int(plan->kc_block, pr->K - p0);
            pack_a_block(pr, plan, team, i0, mb, p0, kc);
            team_barrier(team);
            multiply_a_block(pr, plan, team, i0, mb, p0, kc, p0 == 0 ? pr->beta : 1.0f);
            /* the next K block overwrites a_block */
            team_barrier(team);
        }
    }
}

/* Without memory for the packed blocks, or for tiny problems where packing costs more than it
 * saves, a plain loop does the job. */
static void gemm_unpacked(const gemm_problem *pr) {
    const gemm_operand *a = &pr->a, *b = &pr->b;
    for (int i = 0; i < pr->M; i++) {
        float *c = pr->C + (size_t)i * pr->ldc;
        for (int j = 0; j < pr->N; j++) {
            float sum = 0.0f;
            for (int p = 0; p < pr->K; p++) {
                float av = a->k_contiguous ? a->data[(size_t)i * a->ld + p] : a->data[(size_t)p * a->ld + i];
                float bv = b->k_contiguous ? b->data[(size_t)j * b->ld + p] : b->data[(size_t)p * b->ld + j];
                sum += av * bv;
            }
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

/* Chooses block sizes and the thread count, and allocates the packing buffers (0 if that fails). */
static int plan_gemm(const gemm_problem *pr, gemm_plan *plan) {
    const gemm_kernel *kernel = &gemm_kernels[simd_level()];
    plan->kernel = kernel;
    plan->kc_block = ceil_div(pr->K, ceil_div(pr->K, KC_MAX));
    plan->mb_block = min_int(MB_MAX / kernel->mr, ceil_div(pr->M, kernel->mr)) * kernel->mr;
    int nc_max = B_BLOCK_FLOATS / plan->kc_block / kernel->nr * kernel->nr;
    plan->nc_block = min_int(nc_max, ceil_div(pr->N, kernel->nr) * kernel->nr);
    double muladds = (double)pr->M * pr->N * pr->K;
    plan->threads = muladds < PARALLEL_MIN_MULADDS || omp_in_parallel() ? 1 : omp_get_max_threads();
    /* rounded to 64 bytes so that every panel is aligned for the vector loads and stores */
    size_t a_floats = ((size_t)plan->mb_block / kernel->mr * plan->kc_block * kernel->a_width + 15) & ~(size_t)15;
    size_t b_floats = ((size_t)plan->kc_block * plan->nc_block + 15) & ~(size_t)15;
    size_t bytes = (a_floats + b_floats * plan->threads) * sizeof(float);
    plan->a_block = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    plan->b_blocks = plan->a_block ? plan->a_block + a_floats : NULL;
    return plan->a_block != NULL;
}

void tga_cpu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    gemm_problem pr = {
        .M = M, .N = N, .K = K, .alpha = alpha, .beta = beta,
        .a = {.data = A, .ld = (size_t)lda, .k_contiguous = !trans_a},
        .b = {.data = B, .ld = (size_t)ldb, .k_contiguous = trans_b},
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
        gemm_blocked(&pr, &plan, (gemm_team){0, 1});
    } else {
#pragma omp parallel num_threads(plan.threads)
        gemm_blocked(&pr, &plan, (gemm_team){omp_get_thread_num(), omp_get_num_threads()});
    }
    free(plan.a_block);
}
