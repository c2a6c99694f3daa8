/* CPU backend memory: 64-byte aligned, zeroed host allocations (AVX-512 loads stay aligned). */
#include "kernels/cpu/cpu_kernels.h"

#include <stdlib.h>
#include <string.h>

void *tga_cpu_alloc(size_t bytes) {
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded == 0) rounded = 64;
    void *p = aligned_alloc(64, rounded);
    if (p) memset(p, 0, rounded);
    return p;
}

void tga_cpu_free(void *ptr) { free(ptr); }
void tga_cpu_upload(void *dst, const void *host_src, size_t bytes) { memcpy(dst, host_src, bytes); }
void tga_cpu_download(void *host_dst, const void *src, size_t bytes) { memcpy(host_dst, src, bytes); }
void tga_cpu_zero(void *ptr, size_t bytes) { memset(ptr, 0, bytes); }
void tga_cpu_copy(void *dst, const void *src, size_t bytes) { memmove(dst, src, bytes); }
void tga_cpu_sync(void) {}
