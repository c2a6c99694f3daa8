/* Host emulation of the CUDA C++ dialect the kernels are written in (tests/gpu/emulate.sh): the
 * runtime API, the execution-space keywords, and the SIMT machinery of simt.h. */
#ifndef TGA_EMULATED_CUDA_RUNTIME_H
#define TGA_EMULATED_CUDA_RUNTIME_H

#include "cuda_runtime_api.h"
#include "simt.h"

#endif
