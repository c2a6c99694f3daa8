/* The SIMT emulator's scheduler and the emulated CUDA runtime (see simt.h). */
#include "simt.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <map>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

#include "cuda.h"

/* Dynamic shared memory: the attention kernels declare `extern __shared__ unsigned char smem[]`
 * in this namespace. Hopper's per-block maximum, at a 1024-byte boundary (the swizzle atom). */
namespace tga_cuda {
namespace attention {
alignas(1024) unsigned char smem[227 * 1024];
}
}  // namespace tga_cuda

namespace {

constexpr int kMaxThreads = 1024;
constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = (size_t)256 << 10;
constexpr int kDefaultSmemLimit = 48 * 1024;
constexpr int kMaxSmemLimit = (int)sizeof tga_cuda::attention::smem;

enum class wait_kind { none, warp, block, yield };

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

/* TGA_EMULATOR_ASYNC: "deferred" delays wgmmas to their commit + wait and TMA copies to a wait on
 * their mbarrier (finds reads before the wait that makes data valid); "wgmma" delays only the
 * wgmmas, TMA copies landing at once (finds a stage released, and refilled, before the wgmmas
 * reading it were waited for). Default: everything completes when issued. */
const char *async_mode() {
    static const char *mode = getenv("TGA_EMULATOR_ASYNC") ? getenv("TGA_EMULATOR_ASYNC") : "";
    return mode;
}
bool deferred_wgmma() { return strcmp(async_mode(), "deferred") == 0 || strcmp(async_mode(), "wgmma") == 0; }
bool deferred_tma() { return strcmp(async_mode(), "deferred") == 0; }

/* what is in flight under TGA_EMULATOR_ASYNC: each thread's wgmmas until their commit and wait; TMA
 * copies until a thread waits on their mbarrier */
struct pending_wgmma {
    float *d;
    int n;
    const uint32_t *a;
    uint64_t desc_a, desc_b;
    int accumulate, trans_b;
};
std::vector<pending_wgmma> wgmma_issued[kMaxThreads], wgmma_committed[kMaxThreads];

struct pending_copy {
    uint32_t dst, bar;
    int rank, coords[5];
    unsigned char map[sizeof(CUtensorMap)];
};
std::vector<pending_copy> copies_in_flight;


void fiber_main() {
    (*block_body)();
    fibers[current].done = true; /* returning resumes the scheduler (uc_link) */
}

void suspend(wait_kind kind) {
    fiber &f = fibers[current];
    f.waiting = kind;
    if (kind == wait_kind::warp)
        f.warp_arrivals++;
    else if (kind == wait_kind::block)
        f.block_arrivals++;
    swapcontext(&f.context, &scheduler_context);
}

/* A suspended thread resumes once every live thread of its warp (or block) has arrived at least
 * as many times at that kind of barrier: exited threads count as arrived. */
bool may_resume(int t) {
    const fiber &f = fibers[t];
    if (f.waiting == wait_kind::none || f.waiting == wait_kind::yield) return true;
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
    /* the async work every thread must have waited for (TGA_EMULATOR_ASYNC=deferred) */
    for (int t = 0; t < n_fibers; t++)
        if (!wgmma_issued[t].empty() || !wgmma_committed[t].empty()) {
            fprintf(stderr, "emulator: thread %d of block (%u,%u,%u) ended with wgmmas not waited for\n", t,
                    blockIdx.x, blockIdx.y, blockIdx.z);
            abort();
        }
    if (!copies_in_flight.empty()) {
        fprintf(stderr, "emulator: block (%u,%u,%u) ended with %zu TMA copies nobody waited for\n", blockIdx.x,
                blockIdx.y, blockIdx.z, copies_in_flight.size());
        abort();
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

/* ---- Hopper: mbarriers, TMA, wgmma ------------------------------------------------------------ */

namespace {

constexpr uint32_t kTensorMapMagic = 0x544d4150u; /* "TMAP" */

/* what cuTensorMapEncodeTiled stored in the map's opaque bytes */
struct tensor_map {
    uint32_t magic, rank, element_bytes, swizzle_bytes;
    const unsigned char *data;
    uint64_t dims[5], strides[5]; /* strides[i]: bytes between steps of dimension i (strides[0] = element) */
    uint32_t box[5];
};
static_assert(sizeof(tensor_map) <= sizeof(CUtensorMap), "the emulated tensor map must fit CUtensorMap");

struct mbarrier_state {
    uint32_t expected, pending;
    int64_t tx;          /* bytes announced by expect_tx and not yet completed */
    uint64_t completed;  /* phases completed since init */
};
std::map<uint32_t, mbarrier_state> mbarriers;

[[noreturn]] void emulator_fail(const char *what) {
    fprintf(stderr, "emulator: %s (block (%u,%u,%u), thread %d)\n", what, blockIdx.x, blockIdx.y, blockIdx.z, current);
    abort();
}

mbarrier_state &mbarrier(uint32_t bar) {
    auto it = mbarriers.find(bar);
    if (it == mbarriers.end()) emulator_fail("mbarrier used before mbarrier.init");
    if (bar % 8) emulator_fail("mbarrier not 8-byte aligned");
    return it->second;
}

void mbarrier_try_complete(mbarrier_state &m) {
    if (m.pending == 0 && m.tx == 0) {
        m.completed++;
        m.pending = m.expected;
    }
}

/* The byte at shared address addr as the 128-byte swizzle places it: bits [4:6] ^= bits [7:9]. */
unsigned char *swizzled(uint32_t addr, uint32_t swizzle_bytes) {
    if (swizzle_bytes == 128)
        addr ^= ((addr >> 7) & 7u) << 4;
    else if (swizzle_bytes != 0)
        emulator_fail("only the 128-byte swizzle is emulated");
    if (addr >= sizeof tga_cuda::attention::smem) emulator_fail("shared memory access out of range");
    return tga_cuda::attention::smem + addr;
}

float smem_bf16(uint32_t addr) {
    const unsigned char *p = swizzled(addr, 128);
    return bf16_to_float((uint32_t)p[0] | (uint32_t)p[1] << 8);
}

struct descriptor_fields {
    uint32_t start, leading, stride;
};

descriptor_fields decode(uint64_t desc) {
    if ((desc >> 62) != 1) emulator_fail("wgmma descriptor: only swizzle mode 1 (128 bytes) is emulated");
    if ((desc >> 49) & 7) emulator_fail("wgmma descriptor: a nonzero base offset is not emulated");
    return {(uint32_t)(desc & 0x3FFF) << 4, (uint32_t)((desc >> 16) & 0x3FFF) << 4,
            (uint32_t)((desc >> 32) & 0x3FFF) << 4};
}

/* element (row r, k) of a K-major 128B-swizzled operand: rows 128 bytes apart, groups of 8 rows
 * `stride` apart; the 16 k of one wgmma must stay inside the 128-byte row */
float k_major(const descriptor_fields &f, int r, int k) {
    if (f.start % 128 + 32 > 128) emulator_fail("wgmma descriptor: K-major start crosses a 128-byte row");
    return smem_bf16(f.start + (uint32_t)(r / 8) * f.stride + (uint32_t)(r % 8) * 128 + (uint32_t)k * 2);
}

/* element (k, n) of an MN-major 128B-swizzled operand: 64 n contiguous, the next 64 `leading`
 * apart; k rows 128 bytes apart, groups of 8 k `stride` apart */
float mn_major(const descriptor_fields &f, int k, int n) {
    if (f.start % 1024) emulator_fail("wgmma descriptor: MN-major start not at a swizzle atom");
    return smem_bf16(f.start + (uint32_t)(n / 64) * f.leading + (uint32_t)(n % 64) * 2 + (uint32_t)(k / 8) * f.stride +
                     (uint32_t)(k % 8) * 128);
}

}  // namespace

namespace simt {

uint32_t smem_address(const void *p) {
    const unsigned char *c = static_cast<const unsigned char *>(p);
    if (c < tga_cuda::attention::smem || c >= tga_cuda::attention::smem + sizeof tga_cuda::attention::smem)
        emulator_fail("shared address of a pointer outside the dynamic shared memory");
    return (uint32_t)(c - tga_cuda::attention::smem);
}

void mbarrier_init(uint32_t bar, uint32_t arrivals) {
    if (bar % 8) emulator_fail("mbarrier not 8-byte aligned");
    if (arrivals == 0) emulator_fail("mbarrier.init with a count of 0");
    mbarriers[bar] = mbarrier_state{arrivals, arrivals, 0, 0};
}

void mbarrier_arrive(uint32_t bar) {
    mbarrier_state &m = mbarrier(bar);
    if (m.pending == 0) emulator_fail("mbarrier: more arrivals than its count in one phase");
    m.pending--;
    mbarrier_try_complete(m);
}

void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    mbarrier(bar).tx += bytes;
    mbarrier_arrive(bar);
}

static void tma_copy(uint32_t dst, const void *map_ptr, int rank, const int *coords, uint32_t bar);

/* The copies in flight to mbarrier bar land (in issue order). */
static void land_copies(uint32_t bar) {
    std::vector<pending_copy> still;
    std::vector<pending_copy> landing;
    for (const pending_copy &c : copies_in_flight) (c.bar == bar ? landing : still).push_back(c);
    copies_in_flight.swap(still);
    for (const pending_copy &c : landing) tma_copy(c.dst, c.map, c.rank, c.coords, c.bar);
}

void mbarrier_wait(uint32_t bar, uint32_t parity) {
    for (long polls = 0;; polls++) {
        if ((mbarrier(bar).completed & 1u) != (parity & 1u)) return;
        land_copies(bar);
        if ((mbarrier(bar).completed & 1u) != (parity & 1u)) return;
        if (polls > 10000000) emulator_fail("mbarrier wait never completes");
        suspend(wait_kind::yield);
    }
}

static void tma_copy(uint32_t dst, const void *map_ptr, int rank, const int *coords, uint32_t bar) {
    tensor_map map;
    memcpy(&map, map_ptr, sizeof map);
    if (map.magic != kTensorMapMagic) emulator_fail("TMA load with a tensor map cuTensorMapEncodeTiled did not make");
    if ((int)map.rank != rank) emulator_fail("TMA load: instruction rank differs from the tensor map's");
    if (dst % (map.swizzle_bytes == 128 ? 1024 : 128)) emulator_fail("TMA load: shared destination misaligned");
    uint32_t box_elements = 1;
    for (int i = 0; i < rank; i++) box_elements *= map.box[i];
    for (uint32_t e = 0; e < box_elements; e++) {
        uint32_t rest = e;
        bool inside = true;
        const unsigned char *src = map.data;
        for (int i = 0; i < rank; i++) {
            const int64_t c = (int64_t)coords[i] + rest % map.box[i];
            rest /= map.box[i];
            if (c < 0 || c >= (int64_t)map.dims[i]) inside = false;
            else src += (uint64_t)c * map.strides[i];
        }
        const uint32_t offset = e * map.element_bytes;
        for (uint32_t byte = 0; byte < map.element_bytes; byte++)
            *swizzled(dst + offset + byte, map.swizzle_bytes) = inside ? src[byte] : 0; /* out of range: zeros */
    }
    mbarrier_state &m = mbarrier(bar);
    m.tx -= (int64_t)box_elements * map.element_bytes;
    mbarrier_try_complete(m);
}

void tma_load(uint32_t dst, const void *map_ptr, int rank, const int *coords, uint32_t bar) {
    if (!deferred_tma()) {
        tma_copy(dst, map_ptr, rank, coords, bar);
        return;
    }
    if (rank > 5) emulator_fail("TMA load of more than 5 dimensions");
    pending_copy c = {dst, bar, rank, {}, {}};
    memcpy(c.coords, coords, (size_t)rank * sizeof *coords);
    memcpy(c.map, map_ptr, sizeof c.map);
    copies_in_flight.push_back(c);
}

/* One wgmma, now: every lane of the warp calls it together (A fragments are exchanged). */
static void wgmma_compute(float *d, int n, const uint32_t *a, uint64_t desc_a, uint64_t desc_b, int accumulate,
                          int trans_b) {
    const int base = current / kWarpSize * kWarpSize;
    if (a) {
        memcpy(mma_a[current], a, sizeof mma_a[current]);
        warp_sync();
    }
    const descriptor_fields fa = a ? descriptor_fields{} : decode(desc_a), fb = decode(desc_b);
    const int warp_rows = (current % 128) / kWarpSize * 16; /* this warp's rows of the 64 */
    const int g = lane() / 4, t = lane() % 4;
    auto a_value = [&](int row, int k) { /* row inside the warp's 16 */
        if (!a) return k_major(fa, warp_rows + row, k);
        const int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0), l = (row % 8) * 4 + (k % 8) / 2;
        return bf16_to_float((mma_a[base + l][reg] >> (16 * (k & 1))) & 0xffffu);
    };
    for (int j = 0; j < n / 8; j++)
        for (int e = 0; e < 4; e++) {
            const int row = g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t + (e & 1);
            float acc = accumulate ? d[4 * j + e] : 0.0f;
            for (int k = 0; k < 16; k++)
                acc = fmaf(a_value(row, k), trans_b ? mn_major(fb, k, col) : k_major(fb, col, k), acc);
            d[4 * j + e] = acc;
        }
    if (a) warp_sync(); /* every lane has read the fragments */
}

void wgmma_bf16(float *d, int n, const uint32_t *a, uint64_t desc_a, uint64_t desc_b, int accumulate, int trans_b) {
    if (n % 8 || n < 8 || n > 256) emulator_fail("wgmma: N must be a multiple of 8 up to 256");
    if (!deferred_wgmma()) {
        wgmma_compute(d, n, a, desc_a, desc_b, accumulate, trans_b);
        return;
    }
    wgmma_issued[current].push_back({d, n, a, desc_a, desc_b, accumulate, trans_b});
}

void wgmma_commit() {
    auto &issued = wgmma_issued[current];
    wgmma_committed[current].insert(wgmma_committed[current].end(), issued.begin(), issued.end());
    issued.clear();
}

void wgmma_wait() {
    if (!wgmma_issued[current].empty()) emulator_fail("wgmma.wait_group with wgmmas issued but not committed");
    for (const pending_wgmma &w : wgmma_committed[current])
        wgmma_compute(w.d, w.n, w.a, w.desc_a, w.desc_b, w.accumulate, w.trans_b);
    wgmma_committed[current].clear();
}

}  // namespace simt

extern "C" {

static CUresult emulated_encode_tiled(CUtensorMap *out, CUtensorMapDataType type, cuuint32_t rank, void *address,
                                      const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box,
                                      const cuuint32_t *element_strides, CUtensorMapInterleave interleave,
                                      CUtensorMapSwizzle swizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill) {
    /* the driver's documented requirements, so a map the device would refuse is refused here */
    tensor_map map = {};
    map.magic = kTensorMapMagic;
    map.rank = rank;
    map.element_bytes = type == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 ? 2 : type == CU_TENSOR_MAP_DATA_TYPE_FLOAT32 ? 4 : 0;
    map.swizzle_bytes = swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 128 : swizzle == CU_TENSOR_MAP_SWIZZLE_NONE ? 0 : 1;
    if (!map.element_bytes || map.swizzle_bytes == 1 || rank < 1 || rank > 5 ||
        interleave != CU_TENSOR_MAP_INTERLEAVE_NONE || (uintptr_t)address % 16)
        return CUDA_ERROR_INVALID_VALUE;
    map.data = static_cast<const unsigned char *>(address);
    map.strides[0] = map.element_bytes;
    for (cuuint32_t i = 0; i < rank; i++) {
        if (dims[i] == 0 || dims[i] > ((uint64_t)1 << 32) || box[i] == 0 || box[i] > 256 || element_strides[i] != 1)
            return CUDA_ERROR_INVALID_VALUE;
        if (i > 0 && (strides[i - 1] % 16 || strides[i - 1] >= ((uint64_t)1 << 40))) return CUDA_ERROR_INVALID_VALUE;
        map.dims[i] = dims[i];
        map.box[i] = box[i];
        if (i > 0) map.strides[i] = strides[i - 1];
    }
    if ((uint64_t)box[0] * map.element_bytes % 16) return CUDA_ERROR_INVALID_VALUE;
    if (map.swizzle_bytes && (uint64_t)box[0] * map.element_bytes > map.swizzle_bytes) return CUDA_ERROR_INVALID_VALUE;
    memset(out, 0, sizeof *out);
    memcpy(out, &map, sizeof map);
    return CUDA_SUCCESS;
}

cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned int, unsigned long long,
                                             enum cudaDriverEntryPointQueryResult *status) {
    if (strcmp(symbol, "cuTensorMapEncodeTiled") == 0) {
        *fn = reinterpret_cast<void *>(&emulated_encode_tiled);
        if (status) *status = cudaDriverEntryPointSuccess;
        return cudaSuccess;
    }
    *fn = nullptr;
    if (status) *status = cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}

}  // extern "C"
