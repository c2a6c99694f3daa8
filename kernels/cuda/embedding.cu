/* Token embedding lookup (from an fp32 or, widened exactly, a bf16 table) and its scatter-add
 * backward.
 *
 * The backward must be deterministic with repeated ids, so instead of atomics it sorts the
 * (id, row) pairs with CUB's radix sort, which is stable: within one id the rows stay in
 * ascending order. One block per run of equal ids then adds that id's rows in row order, column
 * by column, exactly the order of the CPU loop, so the results are bit-identical to it. */
#include <cuda_bf16.h>

#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

template <class Table>
__global__ void embedding_forward_kernel(float *out, const int *ids, const Table *table, int N, int D) {
    const size_t n_elems = (size_t)N * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_elems; i += (size_t)gridDim.x * blockDim.x) {
        const int id = ids[i / D];
        out[i] = id < 0 ? 0.0f : widen(table[(size_t)id * D + i % D]);
    }
}

template <class Table>
static void embedding_forward(float *out, const int *ids, const Table *table, int N, int D) {
    const size_t n = (size_t)N * D;
    if (n == 0) return;
    embedding_forward_kernel<Table><<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(out, ids, table,
                                                                                                        N, D);
    TGA_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

__global__ void iota_kernel(int *x, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] = i;
}

/* Block i handles the run of equal ids that starts at sorted position i (other blocks exit). */
__global__ void embedding_accumulate_runs(float *dtable, const float *dout, const int *sorted_ids,
                                          const int *sorted_rows, int N, int D, int V) {
    const int start = blockIdx.x;
    const int id = sorted_ids[start];
    if ((start > 0 && sorted_ids[start - 1] == id) || id < 0 || id >= V) return;
    int end = start + 1;
    while (end < N && sorted_ids[end] == id) end++;
    float *dst = dtable + (size_t)id * D;
    for (int col = threadIdx.x; col < D; col += blockDim.x) {
        float acc = dst[col];
        for (int i = start; i < end; i++) acc += dout[(size_t)sorted_rows[i] * D + col];
        dst[col] = acc;
    }
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_embedding_forward(float *out, const int *ids, const float *table, int N, int D) {
    embedding_forward(out, ids, table, N, D);
}

extern "C" void tga_cuda_embedding_forward_bf16(float *out, const int *ids, const tga_bf16 *table, int N, int D) {
    embedding_forward(out, ids, reinterpret_cast<const __nv_bfloat16 *>(table), N, D);
}

extern "C" void tga_cuda_embedding_backward(float *dtable, const float *dout, const int *ids, int N, int D, int V) {
    if (N <= 0 || D <= 0) return;
    size_t sort_bytes = 0;
    if (!TGA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, ids, (int *)nullptr, (const int *)nullptr,
                                                        (int *)nullptr, N, 0, 32, tga_cuda_stream)))
        return;
    /* scratch: sorted ids [N], rows [N], sorted rows [N], then CUB's temporary storage */
    const size_t ints = tga_cuda_align_up((size_t)N * sizeof(int));
    char *scratch = (char *)tga_cuda_scratch(3 * ints + sort_bytes);
    if (!scratch) return;
    int *sorted_ids = (int *)scratch, *rows = (int *)(scratch + ints), *sorted_rows = (int *)(scratch + 2 * ints);
    iota_kernel<<<grid_stride_blocks((size_t)N), kElementwiseThreads, 0, tga_cuda_stream>>>(rows, N);
    TGA_CUDA_CHECK_LAUNCH("iota_kernel");
    if (!TGA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch + 3 * ints, sort_bytes, ids, sorted_ids, rows,
                                                        sorted_rows, N, 0, 32, tga_cuda_stream)))
        return;
    embedding_accumulate_runs<<<(unsigned)N, kElementwiseThreads, 0, tga_cuda_stream>>>(dtable, dout, sorted_ids,
                                                                                       sorted_rows, N, D, V);
    TGA_CUDA_CHECK_LAUNCH("embedding_accumulate_runs");
}
