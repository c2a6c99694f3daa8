/* CUDA backend memory ops and the services the other files share: the stream, the first-error
 * slot and the scratch buffer (see cuda_kernels.h).
 *
 * Transfers: upload waits for the copy to finish before returning, so the caller may free or
 * reuse its host buffer at once (the model does); from pageable memory the runtime serialises
 * such a copy with the stream anyway. download waits too, since the caller reads the result. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_kernels.h"

cudaStream_t tga_cuda_stream;

static struct {
    int failed;
    char message[1024];
} first_error;

void tga_cuda_record_error(const char *file, int line, const char *call, const char *detail) {
    if (first_error.failed) return;
    first_error.failed = 1;
    snprintf(first_error.message, sizeof first_error.message, "%s:%d: %s: %s", file, line, call, detail);
}

int tga_cuda_check(cudaError_t err, const char *file, int line, const char *call) {
    if (err == cudaSuccess) return 1;
    char detail[256];
    snprintf(detail, sizeof detail, "%s (%s)", cudaGetErrorName(err), cudaGetErrorString(err));
    tga_cuda_record_error(file, line, call, detail);
    return 0;
}

void tga_cuda_sync_or_die(const char *where) {
    TGA_CUDA_CHECK(cudaStreamSynchronize(tga_cuda_stream));
    TGA_CUDA_CHECK(cudaGetLastError());
    if (!first_error.failed) return;
    fprintf(stderr,
            "tga: CUDA backend failure, detected at %s: %s\n"
            "tga: hint: ops run asynchronously, so the failing call may be earlier than the one named; "
            "rerun with CUDA_LAUNCH_BLOCKING=1 (or under compute-sanitizer) to find it\n",
            where, first_error.message);
    fflush(stderr);
    abort();
}

static struct {
    void *data;
    size_t bytes;
} scratch;

void *tga_cuda_scratch(size_t bytes) {
    if (bytes <= scratch.bytes) return scratch.data;
    /* grow by half again, so a slowly growing demand reallocates rarely; cudaFree waits for the
     * kernels still using the old buffer */
    size_t grown = scratch.bytes + scratch.bytes / 2;
    size_t want = tga_cuda_align_up(bytes > grown ? bytes : grown);
    if (scratch.data) TGA_CUDA_CHECK(cudaFree(scratch.data));
    scratch.data = NULL;
    scratch.bytes = 0;
    if (!TGA_CUDA_CHECK(cudaMalloc(&scratch.data, want))) {
        scratch.data = NULL;
        return NULL;
    }
    scratch.bytes = want;
    return scratch.data;
}

int tga_cuda_memory_init(char *why, size_t why_size) {
    cudaError_t err = cudaStreamCreate(&tga_cuda_stream);
    if (err != cudaSuccess) {
        snprintf(why, why_size, "cudaStreamCreate: %s", cudaGetErrorString(err));
        return 0;
    }
    return 1;
}

/* Out of memory is an answer (NULL), not a backend failure: the caller reports it with the
 * tensor's name. cudaMalloc's out-of-memory error is not sticky; it is cleared here so that the
 * next sync does not report it again. */
void *tga_cuda_alloc(size_t bytes) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 256);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    TGA_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, tga_cuda_stream));
    TGA_CUDA_CHECK(cudaStreamSynchronize(tga_cuda_stream));
    return p;
}

void tga_cuda_free(void *ptr) {
    if (ptr) TGA_CUDA_CHECK(cudaFree(ptr));
}

void tga_cuda_upload(void *dst, const void *host_src, size_t bytes) {
    if (bytes == 0) return;
    TGA_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, tga_cuda_stream));
    TGA_CUDA_CHECK(cudaStreamSynchronize(tga_cuda_stream));
}

void tga_cuda_download(void *host_dst, const void *src, size_t bytes) {
    if (bytes > 0) TGA_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, tga_cuda_stream));
    tga_cuda_sync_or_die("download");
}

void tga_cuda_zero(void *ptr, size_t bytes) {
    if (bytes > 0) TGA_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, tga_cuda_stream));
}

/* memmove semantics, as the CPU backend: cudaMemcpy is undefined for overlapping ranges, so an
 * overlapping copy goes through the scratch buffer. */
void tga_cuda_copy(void *dst, const void *src, size_t bytes) {
    if (bytes == 0 || dst == src) return;
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    int overlap = d < s + bytes && s < d + bytes;
    if (!overlap) {
        TGA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, tga_cuda_stream));
        return;
    }
    void *tmp = tga_cuda_scratch(bytes);
    if (!tmp) return;
    TGA_CUDA_CHECK(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, tga_cuda_stream));
    TGA_CUDA_CHECK(cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, tga_cuda_stream));
}

void tga_cuda_sync(void) { tga_cuda_sync_or_die("sync"); }
