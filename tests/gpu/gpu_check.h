/* Shared helpers of the GPU check program (gpu_check.c: every op; gpu_check_model.c: the model):
 * device buffers made from host arrays, NaN poisoning, and one PASS/FAIL line per comparison. */
#ifndef TGA_TESTS_GPU_CHECK_H
#define TGA_TESTS_GPU_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"

extern const tga_ops *gc_gpu; /* the CUDA backend */
extern const tga_ops *gc_cpu; /* the reference */
extern uint64_t gc_rng;       /* seeded once; every check draws fresh inputs from it */

/* Host arrays (malloc'ed, exit on failure). */
float *gc_random(size_t n, float lo, float hi);
float *gc_nan(size_t n);
float *gc_copy(const float *x, size_t n);

/* Device buffers, all freed by gc_free_device(); contents copied from host (or NaN). */
void *gc_device(const void *host, size_t bytes);
float *gc_device_nan(size_t n);
void gc_free_device(void);
/* A malloc'ed host copy of n floats of device memory. */
float *gc_download(const float *dev, size_t n);

/* Prints "PASS|FAIL op shape relerr=E limit=L" and counts failures; NaN/Inf never passes. Returns
 * 1 on pass. */
int gc_report(const char *op, const char *shape, double relerr, double limit);
/* The same for device output `dev` against host reference `ref` (n floats). */
int gc_compare(const char *op, const char *shape, const float *dev, const float *ref, size_t n, double limit);

/* The GEMM limit for the backend's GEMM precision (TF32 unless TGA_CUDA_GEMM=fp32). */
double gc_gemm_limit(void);

/* 1 when the op family `name` was selected on the command line (all by default). */
int gc_selected(const char *name);

void gc_check_model(void);

/* The CUDA backend under test: loaded through runtime/backend.c (gpu_check_backend.c), or the
 * host-emulated build of tests/gpu/emulate.sh. NULL, with the reason printed, when unavailable. */
const tga_ops *gc_load_backend(void);
/* Pins the CUDA attention forward kernel: "mma" (mma.sync, every GPU), "wgmma" (Hopper) or "auto"
 * (the backend's choice). 0, with the reason in why, when the device cannot run that kernel. */
int gc_attention_kernel(const char *kind, char *why, size_t why_size);

/* --small: skip the largest shapes (the emulator runs kernels thousands of times slower) */
extern int gc_small;

#endif
