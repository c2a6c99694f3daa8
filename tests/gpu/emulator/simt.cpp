/* The SIMT emulator's scheduler and the emulated CUDA runtime (see simt.h). */
#include "simt.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <map>

dim3 threadIdx, blockIdx, blockDim, gridDim;

/* Dynamic shared memory: the attention kernels declare `extern __shared__ unsigned char smem[]`
 * in this namespace. Hopper's per-block maximum. */
namespace tga_cuda {
namespace attention {
alignas(16) unsigned char smem[227 * 1024];
}
}  // namespace tga_cuda

namespace {

constexpr int kMaxThreads = 1024;
constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = (size_t)256 << 10;
constexpr int kDefaultSmemLimit = 48 * 1024;
constexpr int kMaxSmemLimit = (int)sizeof tga_cuda::attention::smem;

enum class wait_kind { none, warp, block };

struct fiber {
    ucontext_t context;
    bool done;
    wait_kind waiting;
    uint64_t warp_arrivals, block_arrivals;
    dim3 index;
};

fiber fibers[kMaxThreads];
int n_fibers, current;
ucontext_t scheduler_context;
char *stacks;
const std::function<void()> *block_body;
cudaError_t last_error = cudaSuccess;
std::map<const void *, int> smem_limits;

/* per-thread slots of the warp exchanges, indexed by linear thread id */
uint64_t exchange_slots[kMaxThreads];
uint32_t mma_a[kMaxThreads][4], mma_b[kMaxThreads][2];

void fiber_main() {
    (*block_body)();
    fibers[current].done = true; /* returning resumes the scheduler (uc_link) */
}

void suspend(wait_kind kind) {
    fiber &f = fibers[current];
    f.waiting = kind;
    if (kind == wait_kind::warp)
        f.warp_arrivals++;
    else
        f.block_arrivals++;
    swapcontext(&f.context, &scheduler_context);
}

/* A suspended thread resumes once every live thread of its warp (or block) has arrived at least
 * as many times at that kind of barrier: exited threads count as arrived. */
bool may_resume(int t) {
    const fiber &f = fibers[t];
    if (f.waiting == wait_kind::none) return true;
    const bool warp = f.waiting == wait_kind::warp;
    const int first = warp ? t / kWarpSize * kWarpSize : 0;
    const int end = warp ? std::min(first + kWarpSize, n_fibers) : n_fibers;
    const uint64_t needed = warp ? f.warp_arrivals : f.block_arrivals;
    for (int o = first; o < end; o++) {
        if (fibers[o].done) continue;
        if ((warp ? fibers[o].warp_arrivals : fibers[o].block_arrivals) < needed) return false;
    }
    return true;
}

float bf16_to_float(uint32_t half) {
    uint32_t bits = half << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

}  // namespace

namespace simt {

void warp_sync() { suspend(wait_kind::warp); }
void block_sync() { suspend(wait_kind::block); }
int lane() { return current % kWarpSize; }

uint64_t exchange(uint64_t value, int src_lane) {
    exchange_slots[current] = value;
    warp_sync();
    const uint64_t got = exchange_slots[current / kWarpSize * kWarpSize + (src_lane & (kWarpSize - 1))];
    warp_sync(); /* nobody overwrites a slot before every lane has read */
    return got;
}

uint32_t ballot(bool pred) {
    exchange_slots[current] = pred;
    warp_sync();
    uint32_t bits = 0;
    const int base = current / kWarpSize * kWarpSize;
    for (int l = 0; l < kWarpSize; l++)
        if (base + l < n_fibers && !fibers[base + l].done && exchange_slots[base + l]) bits |= 1u << l;
    warp_sync();
    return bits;
}

/* d = a b + c for the warp's 16x16 A, 16x8 B and 16x8 C, each lane holding the fragments of the
 * PTX ISA layout (g = lane / 4, t = lane % 4; low half = lower column):
 *   a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
 *   b0 (k 2t..2t+1, n g)  b1 (k 2t+8..2t+9, n g)
 *   c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1) */
void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    memcpy(mma_a[current], a, sizeof mma_a[current]);
    memcpy(mma_b[current], b, sizeof mma_b[current]);
    warp_sync();
    float A[16][16], B[16][8];
    const int base = current / kWarpSize * kWarpSize;
    for (int l = 0; l < kWarpSize; l++) {
        const int g = l / 4, t = l % 4;
        const uint32_t *fa = mma_a[base + l], *fb = mma_b[base + l];
        const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int r = 0; r < 4; r++) {
            A[rows[r]][cols[r]] = bf16_to_float(fa[r] & 0xffffu);
            A[rows[r]][cols[r] + 1] = bf16_to_float(fa[r] >> 16);
        }
        B[2 * t][g] = bf16_to_float(fb[0] & 0xffffu);
        B[2 * t + 1][g] = bf16_to_float(fb[0] >> 16);
        B[2 * t + 8][g] = bf16_to_float(fb[1] & 0xffffu);
        B[2 * t + 9][g] = bf16_to_float(fb[1] >> 16);
    }
    warp_sync(); /* every lane has read the fragments */
    const int g = lane() / 4, t = lane() % 4;
    for (int e = 0; e < 4; e++) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float acc = c[e];
        for (int k = 0; k < 16; k++) acc = fmaf(A[row][k], B[k][col], acc);
        c[e] = acc;
    }
}

bool launch_begin(const void *kernel, dim3 grid, dim3 block, size_t dynamic_smem) {
    const unsigned long threads = (unsigned long)block.x * block.y * block.z;
    auto limit = smem_limits.find(kernel);
    const size_t smem_limit = limit == smem_limits.end() ? (size_t)kDefaultSmemLimit : (size_t)limit->second;
    if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535) {
        last_error = cudaErrorInvalidConfiguration;
        return false;
    }
    if (dynamic_smem > smem_limit) {
        last_error = cudaErrorInvalidValue;
        return false;
    }
    if (!stacks) {
        void *p = mmap(nullptr, kStackBytes * kMaxThreads, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "emulator: cannot map the fiber stacks\n");
            exit(2);
        }
        stacks = static_cast<char *>(p);
    }
    gridDim = grid;
    blockDim = block;
    return true;
}

void run_block(dim3 block_index, const std::function<void()> &body) {
    blockIdx = block_index;
    block_body = &body;
    n_fibers = (int)(blockDim.x * blockDim.y * blockDim.z);
    for (int t = 0; t < n_fibers; t++) {
        fiber &f = fibers[t];
        f.done = false;
        f.waiting = wait_kind::none;
        f.warp_arrivals = f.block_arrivals = 0;
        f.index = dim3(t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y));
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = stacks + (size_t)t * kStackBytes;
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = &scheduler_context;
        makecontext(&f.context, fiber_main, 0);
    }
    /* TGA_EMULATOR_ORDER=reverse runs the threads between two barriers last to first: a read of
     * shared data that lacks its barrier then sees other values, and the results change */
    static const bool reverse = getenv("TGA_EMULATOR_ORDER") && strcmp(getenv("TGA_EMULATOR_ORDER"), "reverse") == 0;
    int running = n_fibers;
    while (running > 0) {
        bool progressed = false;
        for (int i = 0; i < n_fibers; i++) {
            const int t = reverse ? n_fibers - 1 - i : i;
            if (fibers[t].done || !may_resume(t)) continue;
            current = t;
            threadIdx = fibers[t].index;
            fibers[t].waiting = wait_kind::none;
            swapcontext(&scheduler_context, &fibers[t].context);
            progressed = true;
            running -= fibers[t].done;
        }
        if (!progressed) {
            fprintf(stderr, "emulator: deadlock in block (%u,%u,%u): threads wait at barriers others never reach\n",
                    blockIdx.x, blockIdx.y, blockIdx.z);
            abort();
        }
    }
}

}  // namespace simt

/* ---- the runtime API ------------------------------------------------------------------------- */

extern "C" {

cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
    (void)device;
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "host emulation");
    prop->totalGlobalMem = (size_t)16 << 30;
    prop->major = 9;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) {
    static int the_stream;
    *stream = reinterpret_cast<cudaStream_t>(&the_stream);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

/* fresh memory is NaN, so an op that relies on zeroed memory it did not clear shows up */
cudaError_t cudaMalloc(void **ptr, size_t bytes) {
    size_t rounded = (bytes + 255) / 256 * 256;
    *ptr = aligned_alloc(256, rounded ? rounded : 256);
    if (!*ptr) return cudaErrorMemoryAllocation;
    memset(*ptr, 0xff, rounded);
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr) {
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t) {
    memset(ptr, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind, cudaStream_t) {
    const char *d = static_cast<const char *>(dst), *s = static_cast<const char *>(src);
    if (d < s + bytes && s < d + bytes) return cudaErrorInvalidValue; /* undefined for overlapping ranges */
    memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t err = last_error;
    last_error = cudaSuccess;
    return err;
}

const char *cudaGetErrorName(cudaError_t err) {
    switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    }
    return "unknown";
}

const char *cudaGetErrorString(cudaError_t err) { return cudaGetErrorName(err); }

cudaError_t tga_emulated_func_get_attributes(struct cudaFuncAttributes *attr, const void *) {
    attr->maxThreadsPerBlock = kMaxThreads;
    return cudaSuccess;
}

cudaError_t tga_emulated_func_set_smem_limit(const void *kernel, int bytes) {
    if (bytes < 0 || bytes > kMaxSmemLimit) return cudaErrorInvalidValue;
    smem_limits[kernel] = bytes;
    return cudaSuccess;
}

}  // extern "C"
