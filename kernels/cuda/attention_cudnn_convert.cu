/* The conversions around cuDNN attention (attention_cudnn.c) and the wgmma attention
 * (attention_sm90.cu): the op contract is fp32, cuDNN's fused attention and TMA + wgmma read (and
 * cuDNN writes) bf16. All the tensors of one call are converted in one launch. Padding rows are written as zeros in both directions:
 * going in, so that NaN or garbage there never meets cuDNN's arithmetic (a masked score times a
 * NaN value is still NaN); coming out, because the contract wants zeros there and cuDNN promises
 * nothing for rows past a sequence length. */
#include <cuda_bf16.h>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {
namespace attention_cudnn {

using bf16 = __nv_bfloat16;

__device__ inline int clamped_length(const int *lengths, int b, int lo, int T) { return min(max(lengths[b], lo), T); }

inline unsigned row_blocks(size_t rows) {
    return rows == 0 ? 1u : (unsigned)(rows < kMaxGridStrideBlocks ? rows : kMaxGridStrideBlocks);
}

constexpr int kMaxRowsJobs = TGA_CUDA_MAX_ROWS_JOBS;

/* The tensors of one batched conversion, passed by value. */
struct rows_jobs {
    void *dst[kMaxRowsJobs];
    const void *src[kMaxRowsJobs];
    size_t row_elems[kMaxRowsJobs];
};

/* One block per row of every tensor ([n][B*T] rows, job-major), in a grid-stride loop: one launch
 * converts all the tensors of an attention call. TO_BF16: fp32 -> bf16, else bf16 -> fp32. jobs is
 * __grid_constant__ so that indexing it by job reads the parameter space (a plain by-value struct
 * indexed at run time is copied to local memory). */
template <bool TO_BF16>
__global__ void rows_convert_kernel(const __grid_constant__ rows_jobs jobs, int n, const int *lengths, int T,
                                    size_t rows) {
    for (size_t job_row = blockIdx.x; job_row < (size_t)n * rows; job_row += gridDim.x) {
        const int job = (int)(job_row / rows);
        const size_t row = job_row % rows, elems = jobs.row_elems[job], base = row * elems;
        const bool real = (int)(row % T) < clamped_length(lengths, (int)(row / T), 0, T);
        if (TO_BF16) {
            bf16 *dst = static_cast<bf16 *>(jobs.dst[job]) + base;
            const float *src = static_cast<const float *>(jobs.src[job]) + base;
            for (size_t i = threadIdx.x; i < elems; i += blockDim.x) dst[i] = __float2bfloat16_rn(real ? src[i] : 0.0f);
        } else {
            float *dst = static_cast<float *>(jobs.dst[job]) + base;
            const bf16 *src = static_cast<const bf16 *>(jobs.src[job]) + base;
            for (size_t i = threadIdx.x; i < elems; i += blockDim.x) dst[i] = real ? __bfloat162float(src[i]) : 0.0f;
        }
    }
}

template <bool TO_BF16>
void launch_rows_convert(const tga_cuda_rows_job *list, int n, const int *lengths, int B, int T, const char *name) {
    const size_t rows = (size_t)B * T;
    if (rows == 0 || n <= 0) return;
    if (n > kMaxRowsJobs) {
        tga_cuda_record_error(__FILE__, __LINE__, name, "more tensors than one batched conversion takes");
        return;
    }
    rows_jobs jobs = {};
    for (int i = 0; i < n; i++) {
        jobs.dst[i] = list[i].dst;
        jobs.src[i] = list[i].src;
        jobs.row_elems[i] = list[i].row_elems;
    }
    rows_convert_kernel<TO_BF16>
        <<<row_blocks(rows * n), kElementwiseThreads, 0, tga_cuda_stream>>>(jobs, n, lengths, T, rows);
    TGA_CUDA_CHECK_LAUNCH(name);
}

__global__ void zero_padding_lse_kernel(float *lse, const int *lengths, int H, int T, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int b = (int)(i / ((size_t)H * T)), t = (int)(i % T);
        if (t >= clamped_length(lengths, b, 0, T)) lse[i] = 0.0f;
    }
}

__global__ void clamp_lengths_kernel(int *dst, const int *lengths, int B, int T, int min_length) {
    for (int b = threadIdx.x; b < B; b += blockDim.x) dst[b] = clamped_length(lengths, b, min_length, T);
}


}  // namespace attention_cudnn
}  // namespace tga_cuda

using namespace tga_cuda;
using namespace tga_cuda::attention_cudnn;

extern "C" void tga_cuda_rows_to_bf16(const tga_cuda_rows_job *jobs, int n, const int *lengths, int B, int T) {
    launch_rows_convert<true>(jobs, n, lengths, B, T, "rows_convert_kernel (to bf16)");
}

extern "C" void tga_cuda_rows_from_bf16(const tga_cuda_rows_job *jobs, int n, const int *lengths, int B, int T) {
    launch_rows_convert<false>(jobs, n, lengths, B, T, "rows_convert_kernel (from bf16)");
}

extern "C" void tga_cuda_zero_padding_lse(float *lse, const int *lengths, int B, int H, int T) {
    const size_t n = (size_t)B * H * T;
    if (n == 0) return;
    zero_padding_lse_kernel<<<grid_stride_blocks(n), kElementwiseThreads, 0, tga_cuda_stream>>>(lse, lengths, H, T, n);
    TGA_CUDA_CHECK_LAUNCH("zero_padding_lse_kernel");
}

extern "C" void tga_cuda_clamp_lengths(int *dst, const int *lengths, int B, int T, int min_length) {
    if (B <= 0) return;
    clamp_lengths_kernel<<<1, kElementwiseThreads, 0, tga_cuda_stream>>>(dst, lengths, B, T, min_length);
    TGA_CUDA_CHECK_LAUNCH("clamp_lengths_kernel");
}
