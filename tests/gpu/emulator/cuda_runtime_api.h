/* Host emulation (tests/gpu/emulate.sh) of the CUDA runtime API calls the backend makes. Device
 * memory is host memory and streams are ignored: a launch runs to completion when it is made, so
 * every copy and memset can be synchronous. C and C++. */
#ifndef TGA_EMULATED_CUDA_RUNTIME_API_H
#define TGA_EMULATED_CUDA_RUNTIME_API_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
} cudaError_t;

typedef struct emulated_stream *cudaStream_t;

enum cudaDriverEntryPointQueryResult {
    cudaDriverEntryPointSuccess = 0,
    cudaDriverEntryPointSymbolNotFound = 1,
    cudaDriverEntryPointVersionNotSufficent = 2,
};
#define cudaEnableDefault 0x0

enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor;
};

struct cudaFuncAttributes {
    int maxThreadsPerBlock;
};

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device);
cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorName(cudaError_t err);
/* the emulator's driver: only cuTensorMapEncodeTiled (simt.cpp) */
cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned int version,
                                             unsigned long long flags, enum cudaDriverEntryPointQueryResult *status);
const char *cudaGetErrorString(cudaError_t err);

/* the emulator's record of kernel attributes, keyed by the kernel's address */
cudaError_t tga_emulated_func_get_attributes(struct cudaFuncAttributes *attr, const void *kernel);
cudaError_t tga_emulated_func_set_smem_limit(const void *kernel, int bytes);

#ifdef __cplusplus
}

template <class F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, F *kernel) {
    return tga_emulated_func_get_attributes(attr, reinterpret_cast<const void *>(kernel));
}

template <class F>
cudaError_t cudaFuncSetAttribute(F *kernel, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
    return tga_emulated_func_set_smem_limit(reinterpret_cast<const void *>(kernel), value);
}
#endif

#endif
