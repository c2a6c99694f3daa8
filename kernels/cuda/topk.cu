/* Top-k merge (contract in kernels/ops.h): one warp per row. The warp reads 32 scores at a time
 * (coalesced) and asks, by ballot, which of them reach the list's bar (its last entry); after the
 * first blocks almost none do. Those that do are offered to the list in column order by lane 0,
 * with the exact rule of the CPU version (higher score first, then lower index; -INFINITY never
 * enters). The order is total, so the list ends as the exact top-k, as on the CPU. */
#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

constexpr int kTopkWarpsPerBlock = 4;

__device__ inline bool ranks_before(float score_a, int32_t index_a, float score_b, int32_t index_b) {
    return score_a > score_b || (score_a == score_b && index_a < index_b);
}

/* Puts an entry that ranks before the last one in its place, dropping the last one. */
__device__ void offer(float *best_score, int32_t *best_index, int k, float score, int32_t index) {
    if (score == -INFINITY || !ranks_before(score, index, best_score[k - 1], best_index[k - 1])) return;
    int slot = k - 1;
    while (slot > 0 && ranks_before(score, index, best_score[slot - 1], best_index[slot - 1])) {
        best_score[slot] = best_score[slot - 1];
        best_index[slot] = best_index[slot - 1];
        slot--;
    }
    best_score[slot] = score;
    best_index[slot] = index;
}

__global__ void topk_merge_kernel(float *best_score, int32_t *best_index, const float *scores, int n_rows, int n_cols,
                                  int ld, int32_t col_offset, int k) {
    const int lane = threadIdx.x % kWarp;
    const int row = blockIdx.x * kTopkWarpsPerBlock + threadIdx.x / kWarp;
    if (row >= n_rows) return; /* the whole warp leaves together */
    float *list_score = best_score + (size_t)row * k;
    int32_t *list_index = best_index + (size_t)row * k;
    const float *row_scores = scores + (size_t)row * ld;
    for (int c0 = 0; c0 < n_cols; c0 += kWarp) {
        const int c = c0 + lane;
        const float score = c < n_cols ? row_scores[c] : -INFINITY;
        /* an equal score may still win on its lower index, hence >= */
        unsigned candidates = __ballot_sync(kFullMask, score != -INFINITY && score >= list_score[k - 1]);
        while (candidates) {
            const int src = __ffs(candidates) - 1;
            candidates &= candidates - 1;
            const float candidate = __shfl_sync(kFullMask, score, src);
            if (lane == 0) offer(list_score, list_index, k, candidate, col_offset + c0 + src);
            __syncwarp(); /* lane 0's writes are visible to the warp's next reads of the bar */
        }
    }
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_topk_merge(float *best_score, int32_t *best_index, const float *scores, int n_rows, int n_cols,
                                    int ld, int32_t col_offset, int k) {
    if (k <= 0 || n_cols <= 0 || n_rows <= 0) return;
    topk_merge_kernel<<<ceil_div((size_t)n_rows, kTopkWarpsPerBlock), kTopkWarpsPerBlock * kWarp, 0,
                        tga_cuda_stream>>>(best_score, best_index, scores, n_rows, n_cols, ld, col_offset, k);
    TGA_CUDA_CHECK_LAUNCH("topk_merge_kernel");
}
