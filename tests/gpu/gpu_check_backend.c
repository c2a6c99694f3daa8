/* gpu_check's backend: the CUDA library, loaded the way the CLI loads it (runtime/backend.c). */
#include <stdio.h>
#include <string.h>

#include "runtime/backend.h"
#include "tests/gpu/gpu_check.h"

const tga_ops *gc_load_backend(void) {
    if (tga_backend_select("cuda", 0) != TGA_OK) {
        fprintf(stderr, "gpu_check: %s\n", tga_error_message());
        return NULL;
    }
    return tga_active_ops;
}

int gc_attention_kernel(const char *kind, char *why, size_t why_size) {
    const char *impl = strcmp(kind, "mma") == 0 ? "tga-mma" : strcmp(kind, "wgmma") == 0 ? "tga-wgmma" : "tga";
    if (tga_backend_set_attention(impl) == TGA_OK) return 1;
    snprintf(why, why_size, "%s", tga_error_message());
    tga_error_clear();
    return 0;
}
