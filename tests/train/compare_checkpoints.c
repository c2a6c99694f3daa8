/* Compares two checkpoint tensor files (params.tgat, optim.tgat) tensor by tensor.
 *
 *   compare_checkpoints A.tgat B.tgat TOLERANCE
 *
 * Prints one line per tensor: its name, how many values differ, and the relative difference
 * max|a - b| / max|a| (the largest error against the tensor's scale, so that values near zero do
 * not dominate). Exit 0 when both files hold the same tensors (names, dtypes, shapes) and every
 * relative difference is <= TOLERANCE; 1 otherwise; 2 on a usage or read error. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/ckpt.h"

typedef struct {
    int64_t differing;
    double relative; /* max|a - b| / max|a| */
} tensor_difference;

static int same_layout(const tga_ckpt_tensor_info *a, const tga_ckpt_tensor_info *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

static tga_status compare_tensor(tga_ckpt_reader *ra, tga_ckpt_reader *rb, const tga_ckpt_tensor_info *info,
                                 tensor_difference *out) {
    float *a = malloc(sizeof(float) * (size_t)(info->count + 1)), *b = malloc(sizeof(float) * (size_t)(info->count + 1));
    tga_status st = a && b ? TGA_OK : tga_error(TGA_ERR_NOMEM, "out of memory for %s", info->name);
    if (st == TGA_OK) st = tga_ckpt_read_tensor(ra, info->name, TGA_CKPT_F32, info->ndim, info->shape, a);
    if (st == TGA_OK) st = tga_ckpt_read_tensor(rb, info->name, TGA_CKPT_F32, info->ndim, info->shape, b);
    double max_abs = 0, max_err = 0;
    out->differing = 0;
    for (int64_t i = 0; st == TGA_OK && i < info->count; i++) {
        double err = fabs((double)a[i] - (double)b[i]);
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) out->differing++;
        max_err = err > max_err || isnan(err) ? err : max_err;
        max_abs = fabs((double)a[i]) > max_abs ? fabs((double)a[i]) : max_abs;
    }
    out->relative = max_abs > 0 ? max_err / max_abs : max_err;
    free(a);
    free(b);
    return st;
}

/* Returns 0 (within tolerance), 1 (outside, or the files hold different tensors) or 2 (error). */
static int compare_files(tga_ckpt_reader *ra, tga_ckpt_reader *rb, double tolerance) {
    int verdict = 0;
    if (tga_ckpt_reader_count(ra) != tga_ckpt_reader_count(rb)) {
        printf("the files hold %d and %d tensors\n", tga_ckpt_reader_count(ra), tga_ckpt_reader_count(rb));
        verdict = 1;
    }
    double worst = 0;
    for (int i = 0; i < tga_ckpt_reader_count(ra); i++) {
        const tga_ckpt_tensor_info *ia = tga_ckpt_reader_info(ra, i), *ib = tga_ckpt_reader_find(rb, ia->name);
        if (!ib || ia->dtype != TGA_CKPT_F32 || !same_layout(ia, ib)) {
            printf("%-40s %s\n", ia->name, ib ? "differs in dtype or shape (or is not f32)" : "missing from the second file");
            verdict = 1;
            continue;
        }
        tensor_difference d;
        if (compare_tensor(ra, rb, ia, &d) != TGA_OK) {
            fprintf(stderr, "compare_checkpoints: %s\n", tga_error_message());
            return 2;
        }
        printf("%-40s %8lld of %8lld values differ, relative difference %.3e\n", ia->name, (long long)d.differing,
               (long long)ia->count, d.relative);
        worst = d.relative > worst || isnan(d.relative) ? d.relative : worst;
        if (!(d.relative <= tolerance)) verdict = 1;
    }
    printf("largest relative difference %.3e (tolerance %.1e): %s\n", worst, tolerance, verdict ? "OUTSIDE" : "within");
    return verdict;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: compare_checkpoints A.tgat B.tgat TOLERANCE\n");
        return 2;
    }
    char *end;
    double tolerance = strtod(argv[3], &end);
    if (*end || !(tolerance >= 0)) {
        fprintf(stderr, "compare_checkpoints: TOLERANCE must be a number >= 0, not '%s'\n", argv[3]);
        return 2;
    }
    tga_ckpt_reader *ra = NULL, *rb = NULL;
    if (tga_ckpt_reader_open(&ra, argv[1]) != TGA_OK || tga_ckpt_reader_open(&rb, argv[2]) != TGA_OK) {
        fprintf(stderr, "compare_checkpoints: %s\n", tga_error_message());
        tga_ckpt_reader_close(ra);
        return 2;
    }
    int verdict = compare_files(ra, rb, tolerance);
    tga_ckpt_reader_close(ra);
    tga_ckpt_reader_close(rb);
    return verdict;
}
