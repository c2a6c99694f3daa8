/* LM head + cross-entropy, chunked over the supervised rows (contract in kernels/ops.h; the CPU
 * reference is kernels/cpu/lm_head.c, whose per-row arithmetic this repeats).
 *
 * 1. One block lists the supervised rows (0 <= target < V) in row order (a ballot/popc scan),
 *    and the host reads their count: the chunk loop runs on the host.
 * 2. Per chunk of up to `chunk` rows: gather them, logits = rows W^T (cuBLASLt), one block per
 *    row turns its logits in place into grad_scale * (softmax - onehot) and stores its loss, then
 *    dweight += dlogits^T rows and dhidden rows = dlogits W, scattered back.
 * 3. One block adds the row losses (double) in a fixed order; the sum comes back to the host.
 *
 * The bf16-weight op (lm_head_ce_bf16) is the same code with bf16 GEMM operands: the rows are
 * rounded to bf16 as they are gathered and the dlogits as the softmax writes them, so that
 * logits = bf16(rows) W^T, dweight += bf16(dlogits)^T bf16(rows), dhidden rows = bf16(dlogits) W,
 * as on the CPU; logits, softmax and losses stay fp32/double.
 *
 * scratch (the op's argument) holds the chunk's logits [chunk, V] then its rows [chunk, D] (fp32
 * operands) or their dhidden (both ops); the row list, the row losses and the bf16 rows and
 * dlogits live in the backend's scratch. */
#include <cuda_bf16.h>

#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

constexpr int kScanThreads = 1024;
constexpr int kSoftmaxThreads = 512;

__device__ inline bool is_supervised(int target, int V) { return target >= 0 && target < V; }

inline tga_cuda_operand operand_type(const float *) { return TGA_CUDA_F32; }
inline tga_cuda_operand operand_type(const __nv_bfloat16 *) { return TGA_CUDA_BF16; }

__global__ void list_supervised_rows(int *rows, int *count, const int *targets, int N, int V) {
    __shared__ int warp_counts[kScanThreads / kWarp];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    int base = 0;
    for (int first = 0; first < N; first += blockDim.x) {
        const int i = first + threadIdx.x;
        const bool flag = i < N && is_supervised(targets[i], V);
        const unsigned ballot = __ballot_sync(kFullMask, flag);
        if (lane == 0) warp_counts[warp] = __popc(ballot);
        __syncthreads();
        int before = 0, total = 0;
        for (int w = 0; w < (int)(blockDim.x / kWarp); w++) {
            before += w < warp ? warp_counts[w] : 0;
            total += warp_counts[w];
        }
        if (flag) rows[base + before + __popc(ballot & ((1u << lane) - 1u))] = i;
        base += total;
        __syncthreads(); /* warp_counts is rewritten by the next round */
    }
    if (threadIdx.x == 0) *count = base;
}

template <class Operand>
__global__ void gather_rows(Operand *dst, const float *src, const int *rows, int D) {
    const float *from = src + (size_t)rows[blockIdx.x] * D;
    Operand *to = dst + (size_t)blockIdx.x * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) store(to[j], from[j]);
}

__global__ void scatter_rows(float *dst, const float *src, const int *rows, int D) {
    const float *from = src + (size_t)blockIdx.x * D;
    float *to = dst + (size_t)rows[blockIdx.x] * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) to[j] = from[j];
}

/* One row of logits -> dlogits = grad_scale * (softmax - onehot(target)), and its -log p(target).
 * The exponentials overwrite the logits; fp32 dlogits may then overwrite them in place (each
 * thread rewrites the elements it read). */
template <class Operand>
__global__ void softmax_ce_rows(float *logits, Operand *dlogits, double *row_loss, const int *rows, const int *targets,
                                int V, float grad_scale) {
    float *x = logits + (size_t)blockIdx.x * V;
    Operand *dx = dlogits + (size_t)blockIdx.x * V;
    const int target = targets[rows[blockIdx.x]];
    /* read before any thread overwrites it; block_max below is the barrier */
    const float target_logit = x[target];
    float local_max = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) local_max = fmaxf(local_max, x[v]);
    const float max_logit = block_max(local_max);
    double local_sum = 0.0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float e = expf(x[v] - max_logit);
        x[v] = e;
        local_sum += e;
    }
    const double sum_exp = block_sum(local_sum);
    const float prob_scale = (float)(grad_scale / sum_exp);
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        /* rounded product, then the subtraction, as the CPU's two passes (no fused multiply-add) */
        const float p = __fmul_rn(x[v], prob_scale);
        store(dx[v], v == target ? p - grad_scale : p);
    }
    if (threadIdx.x == 0) row_loss[blockIdx.x] = log(sum_exp) - ((double)target_logit - max_logit);
}

__global__ void sum_row_losses(double *total, const double *row_loss, const int *count) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < *count; i += blockDim.x) acc += row_loss[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *total = acc;
}

/* The op with Operand as the type of the weight and of the GEMMs' activation operands (the
 * gathered rows and the dlogits): float for lm_head_ce, bf16 for lm_head_ce_bf16. */
template <class Operand>
static void lm_head_ce(double *loss_sum, float *dhidden, float *dweight, const float *hidden, const Operand *weight,
                       const int *targets, int N, int D, int V, float grad_scale, float *scratch, int chunk) {
    *loss_sum = 0.0;
    if (dhidden && N > 0) tga_cuda_zero(dhidden, (size_t)N * D * sizeof(float));
    if (N <= 0 || chunk <= 0) return;
    /* backend scratch: row list [N], count; total loss, row losses [N]; bf16 operands only: the
     * chunk's rows [chunk, D] and dlogits [chunk, V] */
    constexpr bool in_place = std::is_same<Operand, float>::value;
    const size_t max_rows = (size_t)(chunk < N ? chunk : N);
    const size_t list_bytes = tga_cuda_align_up((size_t)N * sizeof(int) + sizeof(int));
    const size_t loss_bytes = tga_cuda_align_up(sizeof(double) * ((size_t)N + 1));
    const size_t rows_bytes = in_place ? 0 : tga_cuda_align_up(max_rows * D * sizeof(Operand));
    const size_t dlogits_bytes = in_place ? 0 : max_rows * V * sizeof(Operand);
    char *work = (char *)tga_cuda_scratch(list_bytes + loss_bytes + rows_bytes + dlogits_bytes);
    if (!work) {
        tga_cuda_sync_or_die("lm_head_ce");
        return;
    }
    int *rows = (int *)work, *d_count = rows + N;
    double *d_total = (double *)(work + list_bytes), *row_loss = d_total + 1;
    list_supervised_rows<<<1, kScanThreads, 0, tga_cuda_stream>>>(rows, d_count, targets, N, V);
    TGA_CUDA_CHECK_LAUNCH("list_supervised_rows");
    int count = 0;
    TGA_CUDA_CHECK(cudaMemcpyAsync(&count, d_count, sizeof count, cudaMemcpyDeviceToHost, tga_cuda_stream));
    tga_cuda_sync_or_die("lm_head_ce");

    /* fp32 operands are the op's scratch itself: the rows (later their dhidden) and the logits
     * (turned into dlogits in place); bf16 copies go to the backend's scratch */
    float *logits = scratch, *drows = scratch + (size_t)chunk * V;
    Operand *chunk_rows = in_place ? reinterpret_cast<Operand *>(drows)
                                   : reinterpret_cast<Operand *>(work + list_bytes + loss_bytes);
    Operand *dlogits = in_place ? reinterpret_cast<Operand *>(logits)
                                : reinterpret_cast<Operand *>(work + list_bytes + loss_bytes + rows_bytes);
    const tga_cuda_operand type = operand_type(weight);
    for (int first = 0; first < count; first += chunk) {
        const int n = count - first < chunk ? count - first : chunk;
        gather_rows<Operand><<<(unsigned)n, kElementwiseThreads, 0, tga_cuda_stream>>>(chunk_rows, hidden, rows + first,
                                                                                       D);
        TGA_CUDA_CHECK_LAUNCH("gather_rows");
        /* (n, D) x (V, D)^T -> (n, V) */
        tga_cuda_gemm_typed(0, 1, n, V, D, 1.0f, chunk_rows, type, D, weight, type, D, 0.0f, logits, V);
        softmax_ce_rows<Operand><<<(unsigned)n, kSoftmaxThreads, 0, tga_cuda_stream>>>(
            logits, dlogits, row_loss + first, rows + first, targets, V, grad_scale);
        TGA_CUDA_CHECK_LAUNCH("softmax_ce_rows");
        /* dweight (V, D) += (n, V)^T x (n, D), before drows (the fp32 rows) is overwritten */
        if (dweight) tga_cuda_gemm_typed(1, 0, V, D, n, 1.0f, dlogits, type, V, chunk_rows, type, D, 1.0f, dweight, D);
        if (dhidden) {
            /* (n, V) x (V, D) -> (n, D) */
            tga_cuda_gemm_typed(0, 0, n, D, V, 1.0f, dlogits, type, V, weight, type, D, 0.0f, drows, D);
            scatter_rows<<<(unsigned)n, kElementwiseThreads, 0, tga_cuda_stream>>>(dhidden, drows, rows + first, D);
            TGA_CUDA_CHECK_LAUNCH("scatter_rows");
        }
    }
    sum_row_losses<<<1, kScanThreads, 0, tga_cuda_stream>>>(d_total, row_loss, d_count);
    TGA_CUDA_CHECK_LAUNCH("sum_row_losses");
    TGA_CUDA_CHECK(cudaMemcpyAsync(loss_sum, d_total, sizeof *loss_sum, cudaMemcpyDeviceToHost, tga_cuda_stream));
    tga_cuda_sync_or_die("lm_head_ce");
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_lm_head_ce(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                                    const float *weight, const int *targets, int N, int D, int V, float grad_scale,
                                    float *scratch, int chunk) {
    lm_head_ce(loss_sum, dhidden, dweight, hidden, weight, targets, N, D, V, grad_scale, scratch, chunk);
}

extern "C" void tga_cuda_lm_head_ce_bf16(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                                         const tga_bf16 *weight, const int *targets, int N, int D, int V,
                                         float grad_scale, float *scratch, int chunk) {
    lm_head_ce(loss_sum, dhidden, dweight, hidden, reinterpret_cast<const __nv_bfloat16 *>(weight), targets, N, D, V,
               grad_scale, scratch, chunk);
}
