/* gpu_check's backend in the emulator build: the CUDA backend's own initialisation and op table,
 * run against the emulated runtime (tests/gpu/emulate.sh). */
#include <stdio.h>

#include "tests/gpu/gpu_check.h"

const tga_ops *tga_cuda_backend_init(char *why, size_t why_size);
int tga_cuda_select_attention_kernel(const char *kind, char *why, size_t why_size);

const tga_ops *gc_load_backend(void) {
    char why[512] = "";
    const tga_ops *ops = tga_cuda_backend_init(why, sizeof why);
    if (!ops) fprintf(stderr, "gpu_check (emulated): %s\n", why);
    return ops;
}

int gc_attention_kernel(const char *kind, char *why, size_t why_size) {
    return tga_cuda_select_attention_kernel(kind, why, why_size);
}
