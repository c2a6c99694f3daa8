/* gpu_check's backend: the CUDA library, loaded the way the CLI loads it (runtime/backend.c). */
#include <stdio.h>

#include "runtime/backend.h"
#include "tests/gpu/gpu_check.h"

const tga_ops *gc_load_backend(void) {
    if (tga_backend_select("cuda", 0) != TGA_OK) {
        fprintf(stderr, "gpu_check: %s\n", tga_error_message());
        return NULL;
    }
    return tga_active_ops;
}
