/* Host emulation of CUDA's SIMT execution (tests/gpu/emulate.sh): each thread of a block is a
 * fiber; blocks run one after another. Barriers (__syncthreads, __syncwarp) and every warp-level
 * exchange (shuffles, ballots, mma.sync) suspend the fiber until the threads they involve have all
 * arrived, so kernels run with CUDA's semantics, one thread at a time. __shared__ variables are
 * static (blocks never overlap), dynamic shared memory is one static array, and mma.sync
 * m16n8k16 bf16 is computed from the fragment layouts of the PTX ISA. Launches check their
 * configuration as the device would (block size, dynamic shared memory against the kernel's
 * limit) and record cudaErrorInvalidValue/InvalidConfiguration for cudaGetLastError.
 *
 * Only what the backend's kernels use is here. */
#ifndef TGA_EMULATED_SIMT_H
#define TGA_EMULATED_SIMT_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __grid_constant__

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

extern dim3 threadIdx, blockIdx, blockDim, gridDim;

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace simt {
void warp_sync();
void block_sync();
int lane();
uint64_t exchange(uint64_t value, int src_lane); /* src_lane's value; every lane of the warp takes part */
uint32_t ballot(bool pred);
void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]);
/* Hopper (kernels/cuda/hopper.cuh). Shared addresses are offsets into the dynamic shared memory,
 * which starts at a 1024-byte boundary as the 128-byte swizzle needs. */
uint32_t smem_address(const void *p);
void mbarrier_init(uint32_t bar, uint32_t arrivals);
void mbarrier_arrive(uint32_t bar);
void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes);
void mbarrier_wait(uint32_t bar, uint32_t parity); /* yields to the other threads until done */
/* TMA tile load: the copy happens at once, then completes its bytes on the mbarrier */
void tma_load(uint32_t dst, const void *tensor_map, int rank, const int *coords, uint32_t bar);
/* wgmma m64nNk16 bf16 -> fp32 for this thread's accumulators d[N / 2]: A from registers (a, the
 * warp's fragments are exchanged) or from shared memory (a == nullptr, K-major descriptor), B from
 * shared memory (K-major, or N-major when trans_b); accumulate 0 ignores d's old values.
 * TGA_EMULATOR_ASYNC=deferred makes wgmma and TMA asynchronous, as on the device: a wgmma reads its
 * operands and writes d only at the wait after its commit (a read of d before the wait, a change of
 * an operand before it, or a missing commit or wait changes the results or stops the emulator),
 * and a TMA copy lands only when a thread waits on its mbarrier (a read of the tile before that
 * wait sees the old contents). TGA_EMULATOR_ASYNC=wgmma delays the wgmmas only (a stage refilled
 * before the wgmmas reading it were waited for then changes the results). By default both complete
 * when issued. */
void wgmma_bf16(float *d, int n, const uint32_t *a, uint64_t desc_a, uint64_t desc_b, int accumulate, int trans_b);
void wgmma_commit();
void wgmma_wait(); /* wait_group 0 */
bool launch_begin(const void *kernel, dim3 grid, dim3 block, size_t dynamic_smem);
void run_block(dim3 block_index, const std::function<void()> &body);

template <class T>
uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "exchange of a type wider than 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    return bits;
}

template <class T>
T from_bits(uint64_t bits) {
    T v;
    memcpy(&v, &bits, sizeof v);
    return v;
}
}  // namespace simt

inline void __syncthreads() { simt::block_sync(); }
inline void __syncwarp(unsigned = 0xffffffffu) { simt::warp_sync(); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    return simt::from_bits<T>(simt::exchange(simt::to_bits(v), simt::lane() ^ lane_mask));
}

template <class T>
T __shfl_sync(unsigned, T v, int src_lane) {
    return simt::from_bits<T>(simt::exchange(simt::to_bits(v), src_lane));
}

inline unsigned __ballot_sync(unsigned, int pred) { return simt::ballot(pred != 0); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
/* the _rn intrinsics: single IEEE operations (the emulator is built with -ffp-contract=off) */
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }

inline void tga_emulated_mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    simt::mma_m16n8k16_bf16(c, a, b);
}

/* kernel<<<grid, block, smem, stream>>>(args...) becomes this call (tests/gpu/emulator/translate.py) */
template <class... P, class... A>
void tga_emulate_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t,
                        const A &...args) {
    if (!simt::launch_begin(reinterpret_cast<const void *>(kernel), grid, block, dynamic_smem)) return;
    const std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(args)...);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) simt::run_block(dim3(x, y, z), [&] { std::apply(kernel, params); });
}

#endif
