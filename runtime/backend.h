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

/* Chooses the attention ops of the active backend (config key model.attention): "tga", the
 * backend's own kernels (always available; the default), or "cudnn", cuDNN's fused attention
 * (CUDA backend only, cuDNN 9 loaded at this call). Updates tga_active_ops and the description.
 * Call after tga_backend_select. "tga-mma" and "tga-wgmma" are "tga" with the CUDA kernel set
 * pinned to the mma.sync one (every GPU) or the Hopper wgmma one (an error where the device cannot
 * run it); "tga" lets the backend choose (wgmma on sm_90a for head widths 64 and 128). */
tga_status tga_backend_set_attention(const char *impl);

/* Whether the active attention ops take this shape: the CPU takes any even head_dim up to
 * TGA_MAX_HEAD_DIM; our CUDA kernels take head dims 16, 32, 64 and 128; cuDNN multiples of 8 up
 * to 256. A config error naming model.head_dim (or model.dim / model.n_heads) otherwise. */
tga_status tga_backend_check_attention(int head_dim, int n_heads, int n_kv_heads);

/* "cpu (avx512, 2 threads)" / "cuda (NVIDIA H200)"; valid after tga_backend_select. */
const char *tga_backend_description(void);

/* Backends compiled into this build, e.g. "cpu cuda". */
const char *tga_backends_compiled(void);

#endif
