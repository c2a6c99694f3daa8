/* Hopper (sm_90a) building blocks of the wgmma attention path (attention_sm90.cu): shared
 * memory matrix descriptors, mbarriers, TMA tile loads and warpgroup MMA (wgmma), as PTX on the
 * device and as calls into the host emulator under TGA_CUDA_HOST_EMULATION (tests/gpu/emulator).
 * Everything here is "unverified on GPU" until tests/gpu/run.sh has passed on an H100/H200.
 *
 * The PTX is emitted only where nvcc compiles for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); for every
 * other target these functions trap, and the kernels that use them are compiled empty
 * (attention_sm90.cu probes at start-up which code the device runs).
 *
 * Shared-memory tiles (PTX ISA, "Shared Memory Matrix Layout", 128-byte swizzle): a tile of rows
 * of 64 bf16 (128 bytes) is stored row after row, and within each 1024-byte group of 8 rows the
 * 16-byte chunk c of row r sits at chunk c ^ (r % 8). TMA writes tiles that way when the tensor map
 * says CU_TENSOR_MAP_SWIZZLE_128B and the box is 128 bytes wide; wgmma reads them through a
 * descriptor with swizzle mode 1 (the hardware XORs address bits [4:6] with bits [7:9], so tiles
 * start at 1024-byte boundaries). Descriptor (64 bits): start address >> 4 in bits 0-13, leading
 * byte offset >> 4 in 16-29, stride byte offset >> 4 in 32-45, swizzle mode in 62-63. Canonical
 * layouts (T = 8 bf16 = 16 bytes):
 *   K-major,  128B: ((8,m),(T,2)):((8T,SBO),(1,T))        rows 128 B apart, groups of 8 rows SBO
 *                   apart; one wgmma reads 16 k (32 bytes) of each row, so the start address moves
 *                   by 32 bytes per k step inside a 64-wide tile and LBO is unused.
 *   MN-major, 128B: ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))  64 n contiguous, the next 64 n LBO apart;
 *                   k rows 128 B apart, groups of 8 k SBO apart.
 * Register fragments (m64nNk16, per warp w of the warpgroup: rows 16 w .. 16 w + 15; g = lane / 4,
 * t = lane % 4): the fp32 accumulator d[4 j + e] is row g + 8 (e >= 2), column 8 j + 2 t + (e & 1),
 * and the bf16 A fragment is that of mma.sync m16n8k16 (attention_mma.cuh), so an accumulator tile
 * turns into the A operand of the next product without leaving registers. */
#ifndef TGA_KERNELS_CUDA_HOPPER_CUH
#define TGA_KERNELS_CUDA_HOPPER_CUH

#include <cuda.h> /* CUtensorMap and its enums (types only: the driver is never linked) */
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && !defined(TGA_CUDA_HOST_EMULATION)
#define TGA_SM90_PTX 1
#endif

namespace tga_cuda {
namespace sm90 {

constexpr int kWarpgroup = 128;         /* threads that issue one wgmma together */
constexpr uint32_t kSwizzleRow = 128;   /* bytes per row of a 128-byte-swizzled tile */
constexpr uint32_t kSwizzleAtom = 1024; /* 8 such rows: the alignment TMA and wgmma expect */

__device__ inline uint32_t smem_address(const void *p) {
#ifdef TGA_CUDA_HOST_EMULATION
    return simt::smem_address(p);
#else
    return (uint32_t)__cvta_generic_to_shared(p);
#endif
}

/* A descriptor for a 128-byte-swizzled operand starting at shared address `start`. */
__device__ inline uint64_t descriptor(uint32_t start, uint32_t leading_bytes, uint32_t stride_bytes) {
    return (uint64_t)((start & 0x3FFFF) >> 4) | (uint64_t)((leading_bytes & 0x3FFFF) >> 4) << 16 |
           (uint64_t)((stride_bytes & 0x3FFFF) >> 4) << 32 | (uint64_t)1 << 62;
}

#ifndef TGA_SM90_PTX
#ifdef TGA_CUDA_HOST_EMULATION
#define TGA_SM90_UNSUPPORTED()
#else
#define TGA_SM90_UNSUPPORTED() __trap()
#endif
#endif

/* ---- mbarriers -------------------------------------------------------------------------------- */
__device__ inline void mbarrier_init(uint32_t bar, uint32_t arrivals) {
#if defined(TGA_SM90_PTX)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
#elif defined(TGA_CUDA_HOST_EMULATION)
    simt::mbarrier_init(bar, arrivals);
#else
    TGA_SM90_UNSUPPORTED();
#endif
}

/* Makes initialised mbarriers visible to the async proxy (TMA) and the other threads' waits; a
 * __syncthreads must follow. */
__device__ inline void mbarrier_init_fence() {
#if defined(TGA_SM90_PTX)
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/* This thread's arrival, announcing `bytes` more bytes the phase waits for (TMA's complete_tx). */
__device__ inline void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if defined(TGA_SM90_PTX)
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
#elif defined(TGA_CUDA_HOST_EMULATION)
    simt::mbarrier_arrive_expect_tx(bar, bytes);
#else
    TGA_SM90_UNSUPPORTED();
#endif
}

__device__ inline void mbarrier_arrive(uint32_t bar) {
#if defined(TGA_SM90_PTX)
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#elif defined(TGA_CUDA_HOST_EMULATION)
    simt::mbarrier_arrive(bar);
#else
    TGA_SM90_UNSUPPORTED();
#endif
}

/* Waits until the phase of parity `parity` has completed. The loop is inside the PTX (as
 * CUTLASS's): a C++ loop with a per-thread exit is a divergent path that makes ptxas serialise the
 * wgmmas. A phase that never completes (a lost TMA, a miscounted arrival) traps after 2^22 polls
 * (each try_wait suspends for a while first: well over 0.1 s in all) instead of hanging the GPU:
 * the next synchronisation reports the error and the process stops (a trap leaves the CUDA
 * context unusable, so there is no falling back). */
__device__ inline void mbarrier_wait(uint32_t bar, uint32_t parity) {
#if defined(TGA_SM90_PTX)
    asm volatile("{\n.reg .pred done;\n.reg .u32 polls;\n"
                 "mov.u32 polls, 0;\n"
                 "TGA_MBARRIER_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@done bra TGA_MBARRIER_DONE;\n"
                 "add.u32 polls, polls, 1;\n"
                 "setp.lt.u32 done, polls, 4194304;\n"
                 "@done bra TGA_MBARRIER_WAIT;\n"
                 "trap;\n"
                 "TGA_MBARRIER_DONE:\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
#elif defined(TGA_CUDA_HOST_EMULATION)
    simt::mbarrier_wait(bar, parity);
#else
    TGA_SM90_UNSUPPORTED();
#endif
}

/* ---- registers ------------------------------------------------------------------------------- */
/* Raises (or lowers) the registers each thread of this warpgroup owns to N; every warp of the
 * warpgroup executes it (a multiple of 8 in [24, 256]). */
template <int N>
__device__ inline void set_max_registers(bool raise) {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes multiples of 8 in [24, 256]");
#if defined(TGA_SM90_PTX)
    if (raise)
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
    else
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

/* ---- TMA -------------------------------------------------------------------------------------- */
/* The box of `map` at (c0, c1, c2) (innermost first) into shared memory at dst, completing its
 * bytes on mbarrier `bar`. Out-of-range elements arrive as zeros. map: a __grid_constant__ kernel
 * parameter. */
__device__ inline void tma_load_3d(uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2,
                                   uint32_t bar) {
#if defined(TGA_SM90_PTX)
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], "
                 "[%1, {%2, %3, %4}], "
                 "[%5];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
                 : "memory");
#elif defined(TGA_CUDA_HOST_EMULATION)
    const int coords[3] = {c0, c1, c2};
    simt::tma_load(dst, map, 3, coords, bar);
#else
    TGA_SM90_UNSUPPORTED();
#endif
}

/* ---- wgmma ------------------------------------------------------------------------------------ */
/* Before the first wgmma of a batch: orders this thread's earlier register and shared-memory
 * writes with the asynchronous MMA that reads them. */
__device__ inline void wgmma_fence() {
#if defined(TGA_SM90_PTX)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ inline void wgmma_commit() {
#if defined(TGA_SM90_PTX)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#elif defined(TGA_CUDA_HOST_EMULATION)
    simt::wgmma_commit();
#endif
}

/* Waits for every committed batch: the accumulators are final and shared memory is read. */
__device__ inline void wgmma_wait_all() {
#if defined(TGA_SM90_PTX)
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#elif defined(TGA_CUDA_HOST_EMULATION)
    simt::wgmma_wait();
#endif
}

/* Keeps the compiler from moving reads or writes of the registers an asynchronous MMA uses
 * (accumulators, or A fragments) across it: the fence/commit/wait asm names no registers. */
template <int N>
__device__ inline void fence_registers(float *r) {
#if defined(TGA_SM90_PTX)
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
#endif
}

template <int N>
__device__ inline void fence_registers(uint32_t *r) {
#if defined(TGA_SM90_PTX)
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i])::"memory");
#endif
}

#if defined(TGA_SM90_PTX)
/* The accumulator operands: d[0..31] (N = 64) or d[0..63] (N = 128), %0.. in the asm below. */
#define TGA_WGMMA_D8(i)                                                                                       \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
        "+f"(d[i + 7])
#define TGA_WGMMA_D32 TGA_WGMMA_D8(0), TGA_WGMMA_D8(8), TGA_WGMMA_D8(16), TGA_WGMMA_D8(24)
#define TGA_WGMMA_D64 TGA_WGMMA_D32, TGA_WGMMA_D8(32), TGA_WGMMA_D8(40), TGA_WGMMA_D8(48), TGA_WGMMA_D8(56)
#define TGA_WGMMA_R32                                                                                       \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
    "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define TGA_WGMMA_R64                                                                                       \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
    "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "  \
    "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "  \
    "%62, %63}"

/* d[64 x 128] (+)= A B, A and B from shared memory (both K-major); accumulate 0 ignores d */
__device__ inline void wgmma_ss_n128(float *d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TGA_WGMMA_R64
                 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : TGA_WGMMA_D64
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

/* d[64 x 64] (+)= A B, as wgmma_ss_n128 */
__device__ inline void wgmma_ss_n64(float *d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TGA_WGMMA_R32
                 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : TGA_WGMMA_D32
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

/* d[64 x 128] (+)= A B, A from registers (a: this thread's m64k16 fragment), B from shared memory,
 * N-major (imm-trans-b 1) */
__device__ inline void wgmma_rs_n128_tn(float *d, const uint32_t a[4], uint64_t desc_b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TGA_WGMMA_R64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : TGA_WGMMA_D64
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

/* d[64 x 64] (+)= A B, as wgmma_rs_n128_tn */
__device__ inline void wgmma_rs_n64_tn(float *d, const uint32_t a[4], uint64_t desc_b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TGA_WGMMA_R32
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : TGA_WGMMA_D32
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

#undef TGA_WGMMA_D8
#undef TGA_WGMMA_D32
#undef TGA_WGMMA_D64
#undef TGA_WGMMA_R32
#undef TGA_WGMMA_R64

#else /* the host emulator, or a target without wgmma */

template <int N>
__device__ inline void wgmma_ss(float *d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
#ifdef TGA_CUDA_HOST_EMULATION
    simt::wgmma_bf16(d, N, nullptr, desc_a, desc_b, accumulate, 0);
#else
    TGA_SM90_UNSUPPORTED();
#endif
}

__device__ inline void wgmma_ss_n128(float *d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
    wgmma_ss<128>(d, desc_a, desc_b, accumulate);
}

__device__ inline void wgmma_ss_n64(float *d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
    wgmma_ss<64>(d, desc_a, desc_b, accumulate);
}

template <int N>
__device__ inline void wgmma_rs_tn(float *d, const uint32_t a[4], uint64_t desc_b, int accumulate) {
#ifdef TGA_CUDA_HOST_EMULATION
    simt::wgmma_bf16(d, N, a, 0, desc_b, accumulate, 1);
#else
    TGA_SM90_UNSUPPORTED();
#endif
}

__device__ inline void wgmma_rs_n128_tn(float *d, const uint32_t a[4], uint64_t desc_b, int accumulate) {
    wgmma_rs_tn<128>(d, a, desc_b, accumulate);
}

__device__ inline void wgmma_rs_n64_tn(float *d, const uint32_t a[4], uint64_t desc_b, int accumulate) {
    wgmma_rs_tn<64>(d, a, desc_b, accumulate);
}

#endif

}  // namespace sm90
}  // namespace tga_cuda

#endif
