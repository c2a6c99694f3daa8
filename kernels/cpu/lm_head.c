/* LM head + cross-entropy, chunked over the supervised rows so that at most chunk*V logits exist
 * at once (the full [N, V] logits of a 1200-token Mistral sample would be 150 MB).
 *
 * Per chunk: gather up to `chunk` supervised rows of hidden, logits = rows W^T, a max-subtracted
 * log-softmax per row (sums in double), then the logits are turned in place into
 * dlogits = grad_scale * (softmax - onehot), from which dweight += dlogits^T rows and
 * dhidden rows = dlogits W follow. Rows whose target is -100 (or, as a caller bug, outside
 * [0, V)) are skipped and get zero dhidden.
 *
 * scratch layout: [chunk, V] logits, then [chunk, D] gathered rows (reused for their dhidden). */
#include "kernels/cpu/cpu_kernels.h"

#include <math.h>
#include <string.h>

static int is_supervised(int target, int V) { return target >= 0 && target < V; }

/* Copies the next supervised rows at or after *cursor into rows[count, D]; advances *cursor
 * past the last row taken. Returns count (<= chunk). */
static int gather_supervised_rows(float *rows, const float *hidden, const int *targets, int N, int D,
                                  int V, int chunk, int *cursor) {
    int count = 0;
    int row = *cursor;
    for (; row < N && count < chunk; row++) {
        if (!is_supervised(targets[row], V)) continue;
        memcpy(rows + (size_t)count * D, hidden + (size_t)row * D, (size_t)D * sizeof *rows);
        count++;
    }
    *cursor = row;
    return count;
}

/* The inverse of gather_supervised_rows over the row range [first_row, end_row). */
static void scatter_supervised_rows(float *dhidden, const float *drows, const int *targets, int first_row,
                                    int end_row, int D, int V) {
    int count = 0;
    for (int row = first_row; row < end_row; row++) {
        if (!is_supervised(targets[row], V)) continue;
        memcpy(dhidden + (size_t)row * D, drows + (size_t)count * D, (size_t)D * sizeof *dhidden);
        count++;
    }
}

/* Replaces one row of logits by grad_scale * (softmax - onehot(target)); returns -log p(target). */
static double softmax_ce_row(float *logits, int target, int V, float grad_scale) {
    float max_logit = logits[0];
    for (int v = 1; v < V; v++) max_logit = fmaxf(max_logit, logits[v]);
    double target_logit = (double)logits[target] - max_logit;
    double sum_exp = 0.0;
    for (int v = 0; v < V; v++) {
        float e = expf(logits[v] - max_logit);
        logits[v] = e;
        sum_exp += e;
    }
    float prob_scale = (float)(grad_scale / sum_exp);
    for (int v = 0; v < V; v++) logits[v] *= prob_scale;
    logits[target] -= grad_scale;
    return log(sum_exp) - target_logit;
}

/* Softmax/CE over the rows of one chunk, in parallel over rows; the losses are added in row
 * order (omp ordered) so the sum does not depend on the thread count. */
static double softmax_ce_chunk(float *logits, const int *targets, int first_row, int n_rows, int V,
                               float grad_scale) {
    int chunk_targets[n_rows];
    int count = 0;
    for (int row = first_row; count < n_rows; row++) {
        if (is_supervised(targets[row], V)) chunk_targets[count++] = targets[row];
    }
    double loss = 0.0;
#pragma omp parallel for ordered schedule(static, 1)
    for (int i = 0; i < n_rows; i++) {
        double row_loss = softmax_ce_row(logits + (size_t)i * V, chunk_targets[i], V, grad_scale);
#pragma omp ordered
        loss += row_loss;
    }
    return loss;
}

/* weight is fp32 or bf16 (w_type); act_type says whether rows and dlogits enter the products as
 * they are or rounded to bf16. */
static void lm_head_ce_typed(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                             const void *weight, tga_cpu_operand w_type, tga_cpu_operand act_type,
                             const int *targets, int N, int D, int V, float grad_scale, float *scratch, int chunk) {
    float *logits = scratch;                       /* [chunk, V] */
    float *rows = scratch + (size_t)chunk * V;     /* [chunk, D] */
    if (dhidden) memset(dhidden, 0, (size_t)N * D * sizeof *dhidden);
    double loss = 0.0;
    int cursor = 0;
    while (cursor < N) {
        int first_row = cursor;
        int n_rows = gather_supervised_rows(rows, hidden, targets, N, D, V, chunk, &cursor);
        if (n_rows == 0) break;
        /* (n_rows, D) x (V, D)^T -> (n_rows, V) */
        tga_cpu_gemm_mixed(0, 1, n_rows, V, D, 1.0f, rows, act_type, D, weight, w_type, D, 0.0f, logits, V);
        loss += softmax_ce_chunk(logits, targets, first_row, n_rows, V, grad_scale);
        /* dweight (V, D) += (n_rows, V)^T x (n_rows, D); before rows is reused for dhidden */
        if (dweight)
            tga_cpu_gemm_mixed(1, 0, V, D, n_rows, 1.0f, logits, act_type, V, rows, act_type, D, 1.0f, dweight, D);
        if (dhidden) {
            /* (n_rows, V) x (V, D) -> (n_rows, D) */
            tga_cpu_gemm_mixed(0, 0, n_rows, D, V, 1.0f, logits, act_type, V, weight, w_type, D, 0.0f, rows, D);
            scatter_supervised_rows(dhidden, rows, targets, first_row, cursor, D, V);
        }
    }
    *loss_sum = loss;
}

void tga_cpu_lm_head_ce(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                        const float *weight, const int *targets, int N, int D, int V, float grad_scale,
                        float *scratch, int chunk) {
    lm_head_ce_typed(loss_sum, dhidden, dweight, hidden, weight, TGA_CPU_F32, TGA_CPU_F32, targets, N, D, V,
                     grad_scale, scratch, chunk);
}

void tga_cpu_lm_head_ce_bf16(double *loss_sum, float *dhidden, float *dweight, const float *hidden,
                             const tga_bf16 *weight, const int *targets, int N, int D, int V, float grad_scale,
                             float *scratch, int chunk) {
    lm_head_ce_typed(loss_sum, dhidden, dweight, hidden, weight, TGA_CPU_BF16, TGA_CPU_F32_AS_BF16, targets, N, D,
                     V, grad_scale, scratch, chunk);
}
