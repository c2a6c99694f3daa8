/* Device helpers shared by the CUDA files: launch geometry and fixed-order block reductions.
 *
 * Determinism: every reduction here adds in an order fixed by the block size alone (a xor
 * butterfly inside each warp, then the warp sums in warp order), with no atomics, so the same
 * launch gives the same bits on every run. */
#ifndef TGA_KERNELS_CUDA_COMMON_CUH
#define TGA_KERNELS_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>

#include "kernels/cuda/cuda_kernels.h"

namespace tga_cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
/* Threads per block of the elementwise kernels. */
constexpr int kElementwiseThreads = 256;
/* Enough blocks of a grid-stride loop to fill an H100/H200 (132 SMs) several times over. */
constexpr size_t kMaxGridStrideBlocks = 132 * 16;

/* Blocks for a grid-stride loop over n elements. */
inline unsigned grid_stride_blocks(size_t n) {
    size_t blocks = (n + kElementwiseThreads - 1) / kElementwiseThreads;
    if (blocks > kMaxGridStrideBlocks) blocks = kMaxGridStrideBlocks;
    return blocks == 0 ? 1u : (unsigned)blocks;
}

inline unsigned ceil_div(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

/* An fp32 value held as fp32 or bf16: widen reads it (exact), store writes it (bf16: rounded to
 * nearest even, as to_bf16 rounds). */
__device__ inline float widen(float x) { return x; }
__device__ inline float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline void store(float &dst, float x) { dst = x; }
__device__ inline void store(__nv_bfloat16 &dst, float x) { dst = __float2bfloat16_rn(x); }

/* Sum over the warp; every lane gets the same bits (each butterfly step adds the same two
 * values in both lanes, and IEEE addition commutes). */
template <class T>
__device__ inline T warp_sum(T v) {
    for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

__device__ inline float warp_max(float v) {
    for (int offset = kWarp / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}

/* Sum over a 1-D block (blockDim.x a multiple of 32); every thread gets the result. Must be
 * reached by all threads of the block. */
template <class T>
__device__ inline T block_sum(T v) {
    __shared__ T warp_sums[kWarp];
    v = warp_sum(v);
    __syncthreads(); /* an earlier call may still be reading warp_sums */
    if ((threadIdx.x & (kWarp - 1)) == 0) warp_sums[threadIdx.x / kWarp] = v;
    __syncthreads();
    T total = 0;
    for (int w = 0; w < (int)(blockDim.x / kWarp); w++) total += warp_sums[w];
    return total;
}

__device__ inline float block_max(float v) {
    __shared__ float warp_maxes[kWarp];
    v = warp_max(v);
    __syncthreads();
    if ((threadIdx.x & (kWarp - 1)) == 0) warp_maxes[threadIdx.x / kWarp] = v;
    __syncthreads();
    float best = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x / kWarp); w++) best = fmaxf(best, warp_maxes[w]);
    return best;
}

}  // namespace tga_cuda

#endif
