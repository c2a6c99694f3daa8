/* Backend selection, once at start-up: `--device auto|cpu|cuda`. auto picks CUDA only when the CUDA
 * backend library was built, loads, and sees a GPU; otherwise the CPU backend, and CUDA is never
 * called again (a failed CUDA probe leaves a sticky error in the runtime). The CUDA backend is a
 * separate shared library (libtga_cuda.so) loaded with dlopen only then, so CPU runs never map the
 * CUDA libraries. */
#ifndef TGA_RUNTIME_BACKEND_H
#define TGA_RUNTIME_BACKEND_H

#include "runtime/error.h"

/* Selects and activates the backend: sets tga_active_ops, and tga_active_coll (the device
 * collectives of kernels/collectives.h; NULL on the CPU). `device` is "auto", "cpu" or "cuda";
 * threads > 0 sets the OpenMP thread count. */
tga_status tga_backend_select(const char *device, int threads);

/* "cpu (avx512, 2 threads)" / "cuda (NVIDIA H200)"; valid after tga_backend_select. */
const char *tga_backend_description(void);

/* Backends compiled into this build, e.g. "cpu cuda". */
const char *tga_backends_compiled(void);

#endif
