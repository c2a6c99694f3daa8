/* Shared helpers for the C unit tests: seeded random tensors, relative errors, and a central
 * finite-difference gradient check. A failed CHECK prints file:line and the message, and the
 * test exits 1 at the end (all checks still run). */
#ifndef TGA_TESTS_TESTUTIL_H
#define TGA_TESTS_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

extern int tu_failures;

#define CHECK(cond, ...)                                                                            \
    do {                                                                                            \
        if (!(cond)) {                                                                              \
            tu_fail(__FILE__, __LINE__, __VA_ARGS__);                                               \
        }                                                                                           \
    } while (0)

void tu_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Fill with uniform values in [lo, hi) from a small deterministic generator (splitmix64). */
void tu_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t *state);
float *tu_alloc_uniform(size_t n, float lo, float hi, uint64_t *state); /* malloc'ed */
float *tu_alloc_copy(const float *x, size_t n);
uint64_t tu_next(uint64_t *state);

/* ||a - b|| / ||b|| (0 when both are zero). NaN anywhere gives +inf. */
double tu_rel_error(const float *a, const float *b, size_t n);
double tu_rel_error_d(const double *a, const double *b, size_t n);
/* max |a[i] - b[i]| against a double reference; NaN anywhere makes it NaN (never passes a limit). */
double tu_max_abs_diff(const float *a, const double *b, size_t n);
/* |(x - start) - ref| / |ref|: the part an accumulating op added to x, against the reference. */
double tu_added_error(const float *x, const float *start, const float *ref, size_t n);

/* Central finite differences of a scalar function of x at a few coordinates, compared with an
 * analytic gradient. f is evaluated in double by the caller (it may run the forward in float
 * and sum in double). Checks `probes` coordinates chosen by the generator; returns the largest
 * |fd - grad| / max(abs_floor, |fd|, |grad|). */
typedef double (*tu_scalar_fn)(const float *x, void *ctx);
double tu_fd_check(tu_scalar_fn f, void *ctx, float *x, const float *grad, size_t n, int probes, float h,
                   double abs_floor, uint64_t *state);

/* "dir/name" in one of 4 rotating static buffers (valid until the 4th call after it), for tests
 * that build paths inside their temporary folder. */
const char *tu_in_dir(const char *dir, const char *name);

/* Writes n bytes to a fresh file at path (an old one is removed first: truncating a file in place
 * makes ext4 flush it on close, which is slow when a test rewrites one file many times). */
void tu_write_file(const char *path, const void *bytes, size_t n);

/* Runs this test executable again in a child with TGA_CPU_SIMD=level (e.g. "scalar"), so a
 * dispatched op's portable path is checked too; a failing child is a failed CHECK naming `what`. */
void tu_rerun_with_simd(const char *level, const char *what);

/* Print "PASS name" / "FAIL name" and return the process exit code. */
int tu_finish(const char *name);

#endif
