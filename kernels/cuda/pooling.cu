/* Mean-pooling of row segments into one vector per output (contract in kernels/ops.h). The
 * segment table is a host struct of device arrays; only its counts are read on the host.
 *
 * Forward: block (32 columns, output j) with 8 row lanes; each lane sums, in double, every 8th
 * row of j's segments taken in segment order, and the lanes combine in lane order (the CPU sums
 * the rows one by one in double; the two agree after rounding to float but for rare ties).
 *
 * Backward: a row may lie in several segments (overlapping spans, or two segments of one output),
 * so to avoid racing writes each row is owned by the first segment that covers it; the owner adds
 * the contributions of that segment and of every later one covering the row, in segment order,
 * as separately rounded multiply and add: the CPU's order and arithmetic, the same bits. */
#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

constexpr int kPoolCols = 32;
constexpr int kPoolLanes = 8;
/* Row groups per segment in the backward grid: blocks handle rows start+y, start+y+16, ... */
constexpr int kPoolRowGroups = 16;

__global__ void segment_mean_forward_kernel(float *out, const float *in, tga_segments seg, int D) {
    __shared__ double lane_sums[kPoolLanes][kPoolCols];
    const int j = blockIdx.y, col = blockIdx.x * kPoolCols + threadIdx.x;
    const int out_rows = seg.out_rows[j];
    double acc = 0.0;
    if (col < D && out_rows > 0) {
        for (int s = 0; s < seg.n_segments; s++) {
            if (seg.out_index[s] != j) continue;
            const int end = seg.row_start[s] + seg.row_count[s];
            for (int row = seg.row_start[s] + threadIdx.y; row < end; row += kPoolLanes) acc += in[(size_t)row * D + col];
        }
    }
    lane_sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y != 0 || col >= D) return;
    double sum = 0.0;
    for (int lane = 0; lane < kPoolLanes; lane++) sum += lane_sums[lane][threadIdx.x];
    out[(size_t)j * D + col] = out_rows > 0 ? (float)(sum * (1.0 / out_rows)) : 0.0f;
}

__device__ inline bool segment_covers(const tga_segments &seg, int s, int row) {
    return row >= seg.row_start[s] && row < seg.row_start[s] + seg.row_count[s];
}

__global__ void segment_mean_backward_kernel(float *din, const float *dout, tga_segments seg, int D) {
    const int s = blockIdx.x;
    const int start = seg.row_start[s], end = start + seg.row_count[s];
    for (int row = start + blockIdx.y; row < end; row += gridDim.y) {
        bool owned = true;
        for (int earlier = 0; earlier < s && owned; earlier++) owned = !segment_covers(seg, earlier, row);
        if (!owned) continue;
        for (int col = threadIdx.x; col < D; col += blockDim.x) {
            float acc = din[(size_t)row * D + col];
            for (int later = s; later < seg.n_segments; later++) {
                const int j = seg.out_index[later];
                if (!segment_covers(seg, later, row) || seg.out_rows[j] == 0) continue;
                const float inv_rows = 1.0f / (float)seg.out_rows[j];
                acc = __fadd_rn(acc, __fmul_rn(dout[(size_t)j * D + col], inv_rows));
            }
            din[(size_t)row * D + col] = acc;
        }
    }
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_segment_mean_forward(float *out, const float *in, const tga_segments *seg, int D) {
    if (seg->n_out <= 0 || D <= 0) return;
    const dim3 grid(ceil_div((size_t)D, kPoolCols), (unsigned)seg->n_out), block(kPoolCols, kPoolLanes);
    segment_mean_forward_kernel<<<grid, block, 0, tga_cuda_stream>>>(out, in, *seg, D);
    TGA_CUDA_CHECK_LAUNCH("segment_mean_forward_kernel");
}

extern "C" void tga_cuda_segment_mean_backward(float *din, const float *dout, const tga_segments *seg, int D) {
    if (seg->n_segments <= 0 || D <= 0) return;
    const dim3 grid((unsigned)seg->n_segments, kPoolRowGroups);
    segment_mean_backward_kernel<<<grid, kElementwiseThreads, 0, tga_cuda_stream>>>(din, dout, *seg, D);
    TGA_CUDA_CHECK_LAUNCH("segment_mean_backward_kernel");
}
