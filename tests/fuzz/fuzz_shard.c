// sources: trainer/shard.c runtime/fileio.c runtime/log.c runtime/error.c
/* Shard reader fuzzing, two ways chosen by the first byte:
 *   'P': bytes 1..12 are P, Dv and the dtype code (u32 little-endian) and the rest is one sample's
 *        frame content, given to tga_shard_decode. The file path cannot reach this code with
 *        arbitrary content: a changed frame fails its checksums first (zstd's own checksum is
 *        computed in the uninstrumented libzstd, so the fuzzer cannot learn to match it).
 *   else: the input is a whole shard file, put in a memfd and opened through /proc/self/fd;
 *        every sample is read, and a sample that reads must match its index stats.
 * Every failure must be a clean status with a message; crashes, leaks and UB are the bugs. */
#define _GNU_SOURCE /* memfd_create */

#include "trainer/model.h"
#include "trainer/shard.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint32_t read_u32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

/* Bad bytes are a TGA_ERR_FORMAT (or an I/O error) with a message, never another status. */
static void expect_clean(tga_status st) {
    if (st == TGA_OK) return;
    if ((st != TGA_ERR_FORMAT && st != TGA_ERR_IO) || tga_error_message()[0] == '\0') {
        fprintf(stderr, "unclean failure: %s: '%s'\n", tga_status_name(st), tga_error_message());
        abort();
    }
    tga_error_clear();
}

static void fuzz_content(const uint8_t *data, size_t size) {
    if (size < 13) return;
    tga_shard_layout layout = {(int32_t)read_u32(data + 1), (int32_t)read_u32(data + 5),
                               (tga_shard_dtype)read_u32(data + 9)};
    tga_shard_sample s;
    expect_clean(tga_shard_decode("fuzz", &layout, data + 13, size - 13, &s));
    tga_shard_sample_free(&s);
}

/* The loader sizes batches and loss denominators from the stats: a read that succeeds with
 * stats that differ from the sample would be a silent wrong loss. */
static void expect_stats_match(const tga_shard_reader *r, uint64_t i, const tga_shard_sample *s) {
    tga_shard_stats st = tga_shard_reader_stats(r, i);
    int32_t targets = 0;
    for (int32_t t = 1; t < s->n_tokens; t++)
        targets += s->labels[t] != TGA_IGNORE_INDEX;
    if (st.n_tokens != s->n_tokens || st.n_caption_tokens != s->n_caption_tokens ||
        st.n_images != s->n_images || st.n_targets != targets) {
        fprintf(stderr, "sample %llu read with stats that differ from it\n", (unsigned long long)i);
        abort();
    }
}

static void fuzz_file(const uint8_t *data, size_t size) {
    int fd = memfd_create("fuzz_shard", MFD_CLOEXEC);
    if (fd < 0) return;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    tga_shard_reader *r = NULL;
    if (write(fd, data, size) == (ssize_t)size) expect_clean(tga_shard_reader_open(&r, path));
    for (uint64_t i = 0; r && i < tga_shard_reader_count(r); i++) {
        tga_shard_sample s;
        tga_status st = tga_shard_reader_read(r, i, &s);
        if (st == TGA_OK) expect_stats_match(r, i, &s);
        expect_clean(st);
        tga_shard_sample_free(&s);
    }
    tga_shard_reader_close(r);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tga_error_clear();
    if (size > 0 && data[0] == 'P')
        fuzz_content(data, size);
    else
        fuzz_file(data, size);
    return 0;
}
