#include "kernels/cuda/dynlib.h"

#include <dlfcn.h>
#include <string.h>

const char *tga_dynlib_resolve(void *library, const tga_dynlib_symbol *symbols, size_t n) {
    for (size_t i = 0; i < n; i++) {
        void *address = dlsym(library, symbols[i].name);
        if (!address) return symbols[i].name;
        /* POSIX guarantees a dlsym address converts to a function pointer; memcpy says so in C */
        memcpy(symbols[i].function_pointer, &address, sizeof address);
    }
    return NULL;
}
