/* dst[j] += sum over rows n < N of term(n, j), for the column sums of the backward pass (bias
 * gradient, RMSNorm weight gradient). As on the CPU, each column is summed in double and rounded
 * once; the order is fixed by the shape alone (chunks of rows, lanes within a chunk, chunks in
 * order), with no atomics, so the result is the same on every run.
 *
 * Pass 1: block (column group, row chunk) of 32 columns x 8 row lanes; a warp reads 32
 * consecutive floats of a row (one coalesced segment), lanes combine in lane order, and the
 * chunk's sums go to a [chunks, D] buffer of doubles in the scratch. Pass 2: one thread per column
 * adds the chunk sums in chunk order into dst. */
#ifndef TGA_KERNELS_CUDA_COLUMN_SUM_CUH
#define TGA_KERNELS_CUDA_COLUMN_SUM_CUH

#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

constexpr int kColumnSumCols = 32;
constexpr int kColumnSumLanes = 8;
/* Rows per chunk: long enough that pass 2 is small, short enough that an 11k-row batch at
 * D = 4096 still gives several thousand blocks. */
constexpr int kColumnSumChunkRows = 256;

template <class Term>
__global__ void column_chunk_sums(double *partial, int N, int D, Term term) {
    __shared__ double lane_sums[kColumnSumLanes][kColumnSumCols];
    const int col = blockIdx.x * kColumnSumCols + threadIdx.x;
    const int row_begin = blockIdx.y * kColumnSumChunkRows;
    const int row_end = min(N, row_begin + kColumnSumChunkRows);
    double acc = 0.0;
    if (col < D)
        for (int n = row_begin + threadIdx.y; n < row_end; n += kColumnSumLanes) acc += term(n, col);
    lane_sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y != 0 || col >= D) return;
    double sum = 0.0;
    for (int lane = 0; lane < kColumnSumLanes; lane++) sum += lane_sums[lane][threadIdx.x];
    partial[(size_t)blockIdx.y * D + col] = sum;
}

/* static: each file that sums columns gets its own copy (whole-program compilation, no -rdc) */
static __global__ void column_add_chunk_sums(float *dst, const double *partial, int n_chunks, int D) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= D) return;
    double sum = 0.0;
    for (int c = 0; c < n_chunks; c++) sum += partial[(size_t)c * D + col];
    dst[col] += (float)sum;
}

template <class Term>
void column_sum_accumulate(float *dst, int N, int D, Term term) {
    if (N <= 0 || D <= 0) return;
    const int n_chunks = (N + kColumnSumChunkRows - 1) / kColumnSumChunkRows;
    double *partial = (double *)tga_cuda_scratch((size_t)n_chunks * D * sizeof(double));
    if (!partial) return;
    const dim3 grid(ceil_div((size_t)D, kColumnSumCols), (unsigned)n_chunks), block(kColumnSumCols, kColumnSumLanes);
    column_chunk_sums<Term><<<grid, block, 0, tga_cuda_stream>>>(partial, N, D, term);
    TGA_CUDA_CHECK_LAUNCH("column_chunk_sums");
    column_add_chunk_sums<<<ceil_div((size_t)D, kElementwiseThreads), kElementwiseThreads, 0, tga_cuda_stream>>>(
        dst, partial, n_chunks, D);
    TGA_CUDA_CHECK_LAUNCH("column_add_chunk_sums");
}

}  // namespace tga_cuda

#endif
