// sources: runtime/npy.c runtime/fileio.c runtime/log.c runtime/error.c
/* .npy reader fuzzing: the input is a whole file, put in a memfd and read through /proc/self/fd by
 * every loader (header only, raw, f32, f64, i32, and a streaming row read). Every failure must be
 * a clean status with a message; crashes, leaks and UB are the bugs. */
#define _GNU_SOURCE /* memfd_create */

#include "runtime/npy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void check_clean_failure(tga_status st) {
    if (st != TGA_OK && tga_error_message()[0] == '\0') abort(); /* every failure must say why */
    tga_error_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("fuzz.npy", 0);
    if (fd < 0) return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    tga_npy_header h;
    void *raw = NULL;
    float *f32 = NULL;
    double *f64 = NULL;
    int32_t *i32 = NULL;
    check_clean_failure(tga_npy_load_raw(path, &raw, &h));
    free(raw);
    check_clean_failure(tga_npy_load_f32(path, &f32, &h));
    free(f32);
    check_clean_failure(tga_npy_load_f64(path, &f64, &h));
    free(f64);
    check_clean_failure(tga_npy_load_i32(path, &i32, &h));
    free(i32);
    FILE *f = NULL;
    tga_status st = tga_npy_open(path, &f, &h);
    if (st == TGA_OK && h.ndim >= 1 && h.shape[0] > 0 && h.count / h.shape[0] <= (1 << 16)) {
        /* the last row, and one past the end (must be refused) */
        float *row = malloc(sizeof(float) * (size_t)(h.count / h.shape[0] + 1));
        if (row) {
            check_clean_failure(tga_npy_read_rows_f32(f, path, &h, h.shape[0] - 1, 1, row));
            if (tga_npy_read_rows_f32(f, path, &h, h.shape[0], 1, row) == TGA_OK) abort();
            tga_error_clear();
            free(row);
        }
    }
    check_clean_failure(st);
    if (f) fclose(f);
    close(fd);
    return 0;
}
