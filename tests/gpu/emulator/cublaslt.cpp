/* The emulated cuBLASLt (see cublasLt.h): column-major D = alpha op(A) op(B) + beta C, summed in
 * double; C is not read when beta is 0, as in cuBLAS. A and B are fp32 or bf16 (products of bf16
 * values are exact, as on the tensor cores), C and D fp32; the type combinations and compute types
 * are those of cuBLASLt's table for cublasLtMatmul (bf16 A/B only with CUBLAS_COMPUTE_32F: its
 * fast TF32/bf16 modes are for fp32 operands). */
#include "cublasLt.h"

#include <stdlib.h>
#include <string.h>

struct emulated_lt_handle {
    int unused;
};
struct emulated_layout {
    cudaDataType type;
    uint64_t rows, cols;
    int64_t ld;
};
struct emulated_matmul_desc {
    cublasComputeType_t compute;
    cublasOperation_t op_a, op_b;
};
struct emulated_preference {
    uint32_t align[4];
};

namespace {

bool aligned(const void *p, uint64_t alignment) { return alignment == 0 || (uintptr_t)p % alignment == 0; }

/* element (i, j) of op(X), widened to float */
float at(const void *x, const emulated_layout *l, cublasOperation_t op, uint64_t i, uint64_t j) {
    const uint64_t index = op == CUBLAS_OP_N ? i + j * (uint64_t)l->ld : j + i * (uint64_t)l->ld;
    if (l->type == CUDA_R_32F) return static_cast<const float *>(x)[index];
    const uint32_t bits = (uint32_t) static_cast<const uint16_t *>(x)[index] << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* cuBLASLt's supported combinations that gemm.c may ask for: A and B of one type, C and D fp32,
 * and a compute type defined for the A/B type. */
bool supported(const emulated_matmul_desc *desc, const emulated_layout *a, const emulated_layout *b,
               const emulated_layout *c, const emulated_layout *d) {
    if (a->type != b->type || c->type != CUDA_R_32F || d->type != CUDA_R_32F) return false;
    if (a->type == CUDA_R_16BF) return desc->compute == CUBLAS_COMPUTE_32F;
    return desc->compute == CUBLAS_COMPUTE_32F || desc->compute == CUBLAS_COMPUTE_32F_FAST_TF32;
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle) {
    static emulated_lt_handle the_handle;
    *handle = &the_handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    if ((type != CUDA_R_32F && type != CUDA_R_16BF) || ld < (int64_t)rows || ld <= 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new emulated_layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t compute, cudaDataType scale) {
    if (scale != CUDA_R_32F || (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_TF32))
        return CUBLAS_STATUS_INVALID_VALUE;
    *desc = new emulated_matmul_desc{compute, CUBLAS_OP_N, CUBLAS_OP_N};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size) {
    if (size != sizeof(cublasOperation_t)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(attr == CUBLASLT_MATMUL_DESC_TRANSA ? &desc->op_a : &desc->op_b, buf, size);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    *pref = new emulated_preference{{256, 256, 256, 256}};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size) {
    if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) return size == sizeof(uint64_t) ? CUBLAS_STATUS_SUCCESS
                                                                                          : CUBLAS_STATUS_INVALID_VALUE;
    if (size != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(&pref->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, size);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t pref,
                                              int requested, cublasLtMatmulHeuristicResult_t *results,
                                              int *returned) {
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    if (!supported(desc, a, b, c, d)) return CUBLAS_STATUS_NOT_SUPPORTED;
    memset(&results[0], 0, sizeof results[0]);
    for (int i = 0; i < 4; i++) results[0].algo.data[i] = pref->align[i];
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void *alpha_ptr, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b,
                              const void *beta_ptr, const void *C, cublasLtMatrixLayout_t c, void *D,
                              cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t *algo, void *, size_t,
                              cudaStream_t) {
    const uint64_t m = d->rows, n = d->cols;
    const uint64_t a_rows = desc->op_a == CUBLAS_OP_N ? a->rows : a->cols, k = desc->op_a == CUBLAS_OP_N ? a->cols : a->rows;
    const uint64_t b_rows = desc->op_b == CUBLAS_OP_N ? b->rows : b->cols, b_cols = desc->op_b == CUBLAS_OP_N ? b->cols : b->rows;
    if (a_rows != m || b_rows != k || b_cols != n || c->rows != m || c->cols != n) return CUBLAS_STATUS_INVALID_VALUE;
    if (!supported(desc, a, b, c, d)) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!aligned(A, algo->data[0]) || !aligned(B, algo->data[1]) || !aligned(C, algo->data[2]) || !aligned(D, algo->data[3]))
        return CUBLAS_STATUS_NOT_SUPPORTED; /* an algorithm chosen for stricter alignment */
    const float alpha = *static_cast<const float *>(alpha_ptr), beta = *static_cast<const float *>(beta_ptr);
    const float *cf = static_cast<const float *>(C);
    float *df = static_cast<float *>(D);
    float *result = static_cast<float *>(malloc(m * n * sizeof(float)));
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            double sum = 0.0;
            for (uint64_t p = 0; p < k; p++) sum += (double)at(A, a, desc->op_a, i, p) * at(B, b, desc->op_b, p, j);
            result[i + j * m] = (float)(alpha * sum + (beta == 0.0f ? 0.0 : (double)beta * cf[i + j * (uint64_t)c->ld]));
        }
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) df[i + j * (uint64_t)d->ld] = result[i + j * m];
    free(result);
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasLtGetStatusName(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "unknown";
}

const char *cublasLtGetStatusString(cublasStatus_t status) { return cublasLtGetStatusName(status); }

}  // extern "C"
