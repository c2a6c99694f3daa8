/* Functions of a library opened with dlopen (NCCL, cuDNN: used when a run asks for them, never
 * linked, so machines without them still load the backend). */
#ifndef TGA_KERNELS_CUDA_DYNLIB_H
#define TGA_KERNELS_CUDA_DYNLIB_H

#include <stddef.h>

typedef struct tga_dynlib_symbol {
    const char *name;
    void *function_pointer; /* the address of the function-pointer variable that receives it */
} tga_dynlib_symbol;

/* Resolves every symbol; returns the name of the first one missing (nothing is then promised
 * about the others), or NULL when all were found. */
const char *tga_dynlib_resolve(void *library, const tga_dynlib_symbol *symbols, size_t n);

#endif
