#define _POSIX_C_SOURCE 200809L /* readlink */
#include "tests/testutil.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int tu_failures = 0;

void tu_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s:%d: check failed: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    tu_failures++;
}

uint64_t tu_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void tu_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t *state) {
    for (size_t i = 0; i < n; i++) {
        double u = (double)(tu_next(state) >> 11) * (1.0 / 9007199254740992.0);
        x[i] = (float)(lo + (hi - lo) * u);
    }
}

float *tu_alloc_uniform(size_t n, float lo, float hi, uint64_t *state) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    tu_fill_uniform(x, n, lo, hi, state);
    return x;
}

float *tu_alloc_copy(const float *x, size_t n) {
    float *y = malloc((n ? n : 1) * sizeof *y);
    if (!y) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    memcpy(y, x, n * sizeof *y);
    return y;
}

double tu_max_abs_diff(const float *a, const double *b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)a[i] - b[i]);
        if (isnan(diff)) return diff;
        if (diff > worst) worst = diff;
    }
    return worst;
}

double tu_rel_error(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    if (isnan(num) || isnan(den)) return INFINITY;
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

double tu_rel_error_d(const double *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    if (isnan(num) || isnan(den)) return INFINITY;
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

double tu_fd_check(tu_scalar_fn f, void *ctx, float *x, const float *grad, size_t n, int probes, float h,
                   double abs_floor, uint64_t *state) {
    double worst = 0;
    for (int p = 0; p < probes; p++) {
        size_t i = (size_t)(tu_next(state) % n);
        float saved = x[i];
        x[i] = saved + h;
        double up = f(x, ctx);
        x[i] = saved - h;
        double down = f(x, ctx);
        x[i] = saved;
        double fd = (up - down) / (2.0 * (double)h);
        double scale = fmax(abs_floor, fmax(fabs(fd), fabs((double)grad[i])));
        double err = fabs(fd - (double)grad[i]) / scale;
        if (!(err <= worst)) worst = err; /* NaN propagates as a failure */
    }
    return worst;
}

const char *tu_in_dir(const char *dir, const char *name) {
    static char paths[4][512];
    static int next = 0;
    char *out = paths[next];
    next = (next + 1) % 4;
    snprintf(out, sizeof paths[0], "%s/%s", dir, name);
    return out;
}

void tu_write_file(const char *path, const void *bytes, size_t n) {
    remove(path);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot create test file %s", path);
    if (!f) return;
    size_t written = fwrite(bytes, 1, n, f);
    int closed = fclose(f);
    CHECK(written == n && closed == 0, "cannot write test file %s", path);
}

void tu_rerun_with_simd(const char *level, const char *what) {
    char self[4096], cmd[4300];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(len > 0, "cannot find this executable to rerun it with TGA_CPU_SIMD=%s", level);
    if (len <= 0) return;
    self[len] = '\0';
    snprintf(cmd, sizeof cmd, "TGA_CPU_SIMD=%s '%s'", level, self);
    CHECK(system(cmd) == 0, "the %s path of %s failed (see its output above)", level, what);
}

int tu_finish(const char *name) {
    printf("%s %s\n", tu_failures ? "FAIL" : "PASS", name);
    return tu_failures ? 1 : 0;
}

double tu_added_error(const float *x, const float *start, const float *ref, size_t n) {
    float *added = malloc(n * sizeof *added);
    for (size_t i = 0; i < n; i++)
        added[i] = x[i] - start[i];
    double err = tu_rel_error(added, ref, n);
    free(added);
    return err;
}
