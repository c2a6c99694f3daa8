/* Checkpoint compression: plain zstd against a byte-plane split before zstd, on tensors shaped like
 * what a checkpoint holds (fresh weights, Adam moments, trained-like weights; f32 and bf16), at
 * several zstd levels, one thread. Prints ratio and MB/s per core for compressing and
 * decompressing (medians of repeats), then the codec that gives the best ratio at >= 200 MB/s
 * both ways on every tensor: runtime/ckpt_codec.c's tga_ckpt_default_codec() should be that one.
 * Per core means bytes over the thread's CPU time, so that other load on a shared machine does
 * not count; wall-clock MB/s are printed beside it.
 *
 *   bench_ckpt_codec [--values N] [--repeats R] [--min-mbps S]
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

#include "runtime/ckpt.h"

enum { N_LEVELS = 6, N_KINDS = 2, MAX_SETS = 8 };
static const int levels[N_LEVELS] = {-5, -3, -1, 1, 3, 5};
static const tga_ckpt_codec_kind kinds[N_KINDS] = {TGA_CKPT_ZSTD, TGA_CKPT_ZSTD_PLANES};
static const char *kind_names[N_KINDS] = {"zstd", "planes+zstd"};

typedef struct {
    const char *name;
    tga_ckpt_dtype dtype;
    void *data;
    size_t values;
} data_set;

typedef struct {
    double ratio, compress_mbps, decompress_mbps; /* per core: over thread CPU time */
    double compress_wall_mbps, decompress_wall_mbps;
} measurement;

/* ---- data ------------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t *state) { return ((double)(splitmix64(state) >> 11) + 0.5) * 0x1.0p-53; }

static double gaussian(uint64_t *state) {
    return sqrt(-2.0 * log(uniform01(state))) * cos(6.283185307179586 * uniform01(state));
}

/* Round to nearest even, as PyTorch does when it casts to bfloat16. */
static uint16_t f32_to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1)) >> 16);
}

/* Rows of 4096 values with a log-normal scale per row: trained matrices have rows of very
 * different norms and heavier tails than their initialization. */
static void trained_like(float *w, size_t n, uint64_t *rng) {
    double scale = 0.02;
    for (size_t i = 0; i < n; i++) {
        if (i % 4096 == 0) scale = 0.02 * exp(0.5 * gaussian(rng));
        double g = gaussian(rng), tail = uniform01(rng) < 0.001 ? 8.0 : 1.0;
        w[i] = (float)(scale * g * tail);
    }
}

/* A random walk along the flat index: the smooth extreme (neighbours share exponents). */
static void random_walk(float *w, size_t n, uint64_t *rng) {
    double x = 0.0;
    for (size_t i = 0; i < n; i++) {
        x = 0.999 * x + 0.0005 * gaussian(rng);
        w[i] = (float)x;
    }
}

/* Adam's m and v after `steps` updates with gradients of per-row scale, as in early training. */
static void adam_moments(float *m, float *v, size_t n, int steps, uint64_t *rng) {
    memset(m, 0, n * sizeof *m);
    memset(v, 0, n * sizeof *v);
    for (int t = 0; t < steps; t++) {
        double scale = 1e-3;
        for (size_t i = 0; i < n; i++) {
            if (i % 4096 == 0) scale = 1e-3 * exp(gaussian(rng));
            double g = scale * gaussian(rng);
            m[i] = (float)(0.9 * m[i] + 0.1 * g);
            v[i] = (float)(0.999 * v[i] + 0.001 * g * g);
        }
    }
}

static int make_sets(data_set *sets, size_t n) {
    uint64_t rng = 20240601;
    float *init = malloc(n * 4), *trained = malloc(n * 4), *walk = malloc(n * 4), *m = malloc(n * 4),
          *v = malloc(n * 4);
    uint16_t *init16 = malloc(n * 2), *trained16 = malloc(n * 2);
    if (!init || !trained || !walk || !m || !v || !init16 || !trained16) return 0;
    for (size_t i = 0; i < n; i++)
        init[i] = (float)(0.02 * gaussian(&rng));
    trained_like(trained, n, &rng);
    random_walk(walk, n, &rng);
    adam_moments(m, v, n, 10, &rng);
    for (size_t i = 0; i < n; i++) {
        init16[i] = f32_to_bf16(init[i]);
        trained16[i] = f32_to_bf16(trained[i]);
    }
    int k = 0;
    sets[k++] = (data_set){"weights N(0,0.02) f32", TGA_CKPT_F32, init, n};
    sets[k++] = (data_set){"trained-like f32", TGA_CKPT_F32, trained, n};
    sets[k++] = (data_set){"random walk f32", TGA_CKPT_F32, walk, n};
    sets[k++] = (data_set){"adam m f32", TGA_CKPT_F32, m, n};
    sets[k++] = (data_set){"adam v f32", TGA_CKPT_F32, v, n};
    sets[k++] = (data_set){"weights N(0,0.02) bf16", TGA_CKPT_BF16, init16, n};
    sets[k++] = (data_set){"trained-like bf16", TGA_CKPT_BF16, trained16, n};
    return k;
}

/* ---- measuring ------------------------------------------------------------------------------- */

typedef struct {
    double cpu, wall;
} instant;

static instant now(void) {
    struct timespec cpu, wall;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    clock_gettime(CLOCK_MONOTONIC, &wall);
    return (instant){(double)cpu.tv_sec + 1e-9 * (double)cpu.tv_nsec,
                     (double)wall.tv_sec + 1e-9 * (double)wall.tv_nsec};
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, compare_doubles);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct {
    tga_ckpt_coder *coder;
    unsigned char *frames; /* one frame per chunk, at chunk_index * frame_cap */
    size_t *frame_bytes;
    size_t frame_cap;
    unsigned char *restored;
} workspace;

/* Compresses the whole set chunk by chunk, as a tensor file does; returns the compressed bytes. */
static size_t compress_set(workspace *ws, const data_set *s, tga_ckpt_codec codec) {
    size_t elem = tga_ckpt_dtype_size(s->dtype), chunk = (size_t)codec.chunk_values, total = 0;
    for (size_t first = 0, k = 0; first < s->values; first += chunk, k++) {
        size_t values = s->values - first < chunk ? s->values - first : chunk;
        if (tga_ckpt_encode_chunk(ws->coder, codec, elem, (const unsigned char *)s->data + first * elem,
                                  values, ws->frames + k * ws->frame_cap, ws->frame_cap,
                                  &ws->frame_bytes[k]) != TGA_OK)
            return 0;
        total += ws->frame_bytes[k];
    }
    return total;
}

static bool decompress_set(workspace *ws, const data_set *s, tga_ckpt_codec codec) {
    size_t elem = tga_ckpt_dtype_size(s->dtype), chunk = (size_t)codec.chunk_values;
    for (size_t first = 0, k = 0; first < s->values; first += chunk, k++) {
        size_t values = s->values - first < chunk ? s->values - first : chunk;
        if (tga_ckpt_decode_chunk(ws->coder, codec.kind, elem, ws->frames + k * ws->frame_cap,
                                  ws->frame_bytes[k], values, 0, values, ws->restored + first * elem,
                                  "benchmark") != TGA_OK)
            return false;
    }
    return true;
}

static bool measure(workspace *ws, const data_set *s, tga_ckpt_codec codec, int repeats, measurement *out) {
    double compress_cpu[64], decompress_cpu[64], compress_wall[64], decompress_wall[64];
    size_t raw = s->values * tga_ckpt_dtype_size(s->dtype), packed = 0;
    for (int r = 0; r < repeats; r++) {
        instant t0 = now();
        packed = compress_set(ws, s, codec);
        instant t1 = now();
        if (!packed || !decompress_set(ws, s, codec)) return false;
        instant t2 = now();
        compress_cpu[r] = t1.cpu - t0.cpu;
        decompress_cpu[r] = t2.cpu - t1.cpu;
        compress_wall[r] = t1.wall - t0.wall;
        decompress_wall[r] = t2.wall - t1.wall;
    }
    if (memcmp(ws->restored, s->data, raw) != 0) return false;
    double mb = 1e-6 * (double)raw;
    out->ratio = (double)raw / (double)packed;
    out->compress_mbps = mb / median(compress_cpu, repeats);
    out->decompress_mbps = mb / median(decompress_cpu, repeats);
    out->compress_wall_mbps = mb / median(compress_wall, repeats);
    out->decompress_wall_mbps = mb / median(decompress_wall, repeats);
    return true;
}

/* ---- report ---------------------------------------------------------------------------------- */

static void print_conditions(size_t values, int repeats) {
    char model[256] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(model, sizeof model, "%s", colon + 2);
            model[strcspn(model, "\n")] = '\0';
            break;
        }
    }
    if (f) fclose(f);
    printf("checkpoint codec benchmark: CPU %s, zstd %s, 1 thread, %zu values per tensor, %lld-value chunks, "
           "median of %d\n",
           model, ZSTD_versionString(), values, (long long)TGA_CKPT_DEFAULT_CHUNK_VALUES, repeats);
}

typedef struct {
    double raw, packed, min_compress, min_decompress;
} aggregate;

int main(int argc, char **argv) {
    size_t values = (size_t)1 << 22;
    int repeats = 3;
    double min_mbps = 200.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--values") == 0)
            values = (size_t)atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--repeats") == 0)
            repeats = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--min-mbps") == 0)
            min_mbps = atof(argv[i + 1]);
    }
    if (values == 0 || repeats < 1 || repeats > 64) {
        fprintf(stderr, "usage: %s [--values N>0] [--repeats 1..64] [--min-mbps S]\n", argv[0]);
        return 2;
    }
    data_set sets[MAX_SETS];
    int n_sets = make_sets(sets, values);
    workspace ws = {0};
    size_t chunks =
        (values + (size_t)TGA_CKPT_DEFAULT_CHUNK_VALUES - 1) / (size_t)TGA_CKPT_DEFAULT_CHUNK_VALUES;
    ws.frame_cap = tga_ckpt_frame_bound((size_t)TGA_CKPT_DEFAULT_CHUNK_VALUES * 4);
    ws.frames = malloc(chunks * ws.frame_cap);
    ws.frame_bytes = malloc(chunks * sizeof *ws.frame_bytes);
    ws.restored = malloc(values * 4);
    if (!n_sets || !ws.frames || !ws.frame_bytes || !ws.restored ||
        tga_ckpt_coder_create(&ws.coder) != TGA_OK) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    print_conditions(values, repeats);
    printf("%-24s %-12s %5s %7s %10s %10s %10s %10s\n", "tensor", "codec", "level", "ratio", "comp/core",
           "decomp/core", "comp wall", "decomp wall");
    aggregate agg[N_KINDS][N_LEVELS] = {0};
    for (int s = 0; s < n_sets; s++) {
        for (int k = 0; k < N_KINDS; k++) {
            for (int l = 0; l < N_LEVELS; l++) {
                tga_ckpt_codec codec = {kinds[k], levels[l], TGA_CKPT_DEFAULT_CHUNK_VALUES};
                measurement m;
                if (!measure(&ws, &sets[s], codec, repeats, &m)) {
                    fprintf(stderr, "FAIL: %s %s level %d does not round-trip\n", sets[s].name, kind_names[k],
                            levels[l]);
                    return 1;
                }
                printf("%-24s %-12s %5d %7.4f %10.0f %10.0f %10.0f %10.0f\n", sets[s].name, kind_names[k],
                       levels[l], m.ratio, m.compress_mbps, m.decompress_mbps, m.compress_wall_mbps,
                       m.decompress_wall_mbps);
                aggregate *a = &agg[k][l];
                double raw = (double)(sets[s].values * tga_ckpt_dtype_size(sets[s].dtype));
                a->raw += raw;
                a->packed += raw / m.ratio;
                a->min_compress =
                    s == 0 || m.compress_mbps < a->min_compress ? m.compress_mbps : a->min_compress;
                a->min_decompress =
                    s == 0 || m.decompress_mbps < a->min_decompress ? m.decompress_mbps : a->min_decompress;
            }
        }
    }
    printf("\nover all tensors: total ratio, slowest MB/s per core\n");
    int best_k = -1, best_l = -1;
    for (int k = 0; k < N_KINDS; k++) {
        for (int l = 0; l < N_LEVELS; l++) {
            aggregate *a = &agg[k][l];
            bool fast = a->min_compress >= min_mbps && a->min_decompress >= min_mbps;
            printf("%-12s level %3d: ratio %.4f, compress >= %.0f MB/s, decompress >= %.0f MB/s%s\n",
                   kind_names[k], levels[l], a->raw / a->packed, a->min_compress, a->min_decompress,
                   fast ? "" : " (too slow)");
            if (fast && (best_k < 0 || a->packed < agg[best_k][best_l].packed)) {
                best_k = k;
                best_l = l;
            }
        }
    }
    if (best_k < 0) {
        printf("chosen: none reaches %.0f MB/s per core both ways\n", min_mbps);
        return 0;
    }
    printf("chosen: %s level %d (best total ratio at >= %.0f MB/s per core both ways)\n", kind_names[best_k],
           levels[best_l], min_mbps);
    return 0;
}
