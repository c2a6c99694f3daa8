/* GEMM through cuBLASLt: fp32 C/D, A and B fp32 or bf16.
 *
 * Precision of fp32 operands: TF32 tensor cores by default (CUBLAS_COMPUTE_32F_FAST_TF32: inputs
 * rounded to a 10-bit mantissa, products accumulated in fp32; about 1e-3 relative error against
 * an fp32 GEMM, at about 8x the fp32 throughput). TGA_CUDA_GEMM=fp32 in the environment selects
 * full fp32 (CUBLAS_COMPUTE_32F) for checks that need it; the choice is read once, at start-up.
 * bf16 operands (model.dtype: bf16) always use CUBLAS_COMPUTE_32F: bf16 tensor cores with fp32
 * accumulation, so the products are exact and only the fp32 summation order differs from the CPU
 * (TF32 and the other fast modes are defined for fp32 operands only). cuBLASLt has no GEMM that
 * mixes an fp32 with a bf16 operand; asking for one fails at the plan and is recorded.
 *
 * Row-major to column-major: a row-major [M,N] C is the column-major [N,M] matrix C^T, and
 * C^T = op(B)^T op(A)^T, so cuBLASLt is called with the operands swapped (our B as its A, our A
 * as its B) and the same transposition flags; no data moves.
 *
 * cuBLASLt picks an algorithm per shape with a heuristic query that costs far more than the
 * descriptors; plans (descriptors + algorithm) are cached per (shape, strides, operand types,
 * pointer alignment). The heuristic assumes 256-byte aligned pointers unless told otherwise, and
 * the model passes row offsets into its buffers, so each pointer's actual alignment is part of
 * the key and is handed to the heuristic. */
#include <cublasLt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_kernels.h"

/* Hopper's recommended cuBLASLt workspace (cuBLAS docs, "cublasSetWorkspace"). */
#define GEMM_WORKSPACE_BYTES ((size_t)32 << 20)
#define GEMM_PLAN_SLOTS 64

static cublasLtHandle_t lt_handle;
static void *lt_workspace;
static cublasComputeType_t compute_type = CUBLAS_COMPUTE_32F_FAST_TF32;

static int lt_check(cublasStatus_t st, const char *file, int line, const char *call) {
    if (st == CUBLAS_STATUS_SUCCESS) return 1;
    char detail[256];
    snprintf(detail, sizeof detail, "%s (%s)", cublasLtGetStatusName(st), cublasLtGetStatusString(st));
    tga_cuda_record_error(file, line, call, detail);
    return 0;
}
#define LT_CHECK(call) lt_check((call), __FILE__, __LINE__, #call)

typedef struct gemm_shape {
    int trans_a, trans_b, M, N, K, lda, ldb, ldc;
    int align_a, align_b, align_c; /* bytes */
    tga_cuda_operand type_a, type_b;
} gemm_shape;

typedef struct gemm_plan {
    gemm_shape shape;
    int used;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t lt_a, lt_b, lt_c; /* in cuBLASLt's roles: our B, our A, C */
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

static gemm_plan plans[GEMM_PLAN_SLOTS];
static int next_victim;

/* The largest power of two dividing the address, capped at cudaMalloc's 256. */
static int pointer_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int align = 256;
    while (align > 1 && a % (uintptr_t)align != 0) align /= 2;
    return align;
}

static void destroy_plan(gemm_plan *p) {
    if (p->lt_c) cublasLtMatrixLayoutDestroy(p->lt_c);
    if (p->lt_b) cublasLtMatrixLayoutDestroy(p->lt_b);
    if (p->lt_a) cublasLtMatrixLayoutDestroy(p->lt_a);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    memset(p, 0, sizeof *p);
}

static cudaDataType data_type(tga_cuda_operand type) { return type == TGA_CUDA_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

/* Column-major layouts of the swapped problem C^T[N,M] = op(B)^T[N,K] op(A)^T[K,M]. A row-major
 * [r,c] matrix with row stride ld is the column-major [c,r] matrix with leading dimension ld. */
static int create_layouts(gemm_plan *p) {
    const gemm_shape *s = &p->shape;
    uint64_t b_rows = s->trans_b ? (uint64_t)s->K : (uint64_t)s->N, b_cols = s->trans_b ? s->N : s->K;
    uint64_t a_rows = s->trans_a ? (uint64_t)s->M : (uint64_t)s->K, a_cols = s->trans_a ? s->K : s->M;
    return LT_CHECK(cublasLtMatrixLayoutCreate(&p->lt_a, data_type(s->type_b), b_rows, b_cols, s->ldb)) &&
           LT_CHECK(cublasLtMatrixLayoutCreate(&p->lt_b, data_type(s->type_a), a_rows, a_cols, s->lda)) &&
           LT_CHECK(cublasLtMatrixLayoutCreate(&p->lt_c, CUDA_R_32F, (uint64_t)s->N, (uint64_t)s->M, s->ldc));
}

static int create_desc(gemm_plan *p) {
    cublasOperation_t op_a = p->shape.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = p->shape.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    int bf16 = p->shape.type_a == TGA_CUDA_BF16 || p->shape.type_b == TGA_CUDA_BF16;
    cublasComputeType_t compute = bf16 ? CUBLAS_COMPUTE_32F : compute_type;
    return LT_CHECK(cublasLtMatmulDescCreate(&p->desc, compute, CUDA_R_32F)) &&
           LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a)) &&
           LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
}

static const char *operand_name(tga_cuda_operand type) { return type == TGA_CUDA_BF16 ? "bf16" : "fp32"; }

static int choose_algorithm(gemm_plan *p) {
    cublasLtMatmulPreference_t pref = NULL;
    size_t workspace = GEMM_WORKSPACE_BYTES;
    /* cuBLASLt's A is our B and its B our A */
    uint32_t align_a = (uint32_t)p->shape.align_b, align_b = (uint32_t)p->shape.align_a;
    uint32_t align_c = (uint32_t)p->shape.align_c;
    int ok = LT_CHECK(cublasLtMatmulPreferenceCreate(&pref)) &&
             LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                           sizeof workspace)) &&
             LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                           sizeof align_a)) &&
             LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                           sizeof align_b)) &&
             LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                           sizeof align_c)) &&
             LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                           sizeof align_c));
    if (ok) {
        cublasLtMatmulHeuristicResult_t result;
        int found = 0;
        ok = LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt_handle, p->desc, p->lt_a, p->lt_b, p->lt_c, p->lt_c, pref, 1,
                                                     &result, &found));
        if (ok && found == 0) {
            char detail[160];
            snprintf(detail, sizeof detail, "no algorithm for M=%d N=%d K=%d trans %d/%d types %s/%s", p->shape.M,
                     p->shape.N, p->shape.K, p->shape.trans_a, p->shape.trans_b, operand_name(p->shape.type_a),
                     operand_name(p->shape.type_b));
            tga_cuda_record_error(__FILE__, __LINE__, "cublasLtMatmulAlgoGetHeuristic", detail);
            ok = 0;
        }
        if (ok) p->algo = result.algo;
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    return ok;
}

/* The cached plan for a shape, built on a miss (evicting slots round-robin); NULL on failure. */
static gemm_plan *plan_for(const gemm_shape *shape) {
    for (int i = 0; i < GEMM_PLAN_SLOTS; i++)
        if (plans[i].used && memcmp(&plans[i].shape, shape, sizeof *shape) == 0) return &plans[i];
    gemm_plan *p = &plans[next_victim];
    next_victim = (next_victim + 1) % GEMM_PLAN_SLOTS;
    destroy_plan(p);
    p->shape = *shape;
    if (!create_layouts(p) || !create_desc(p) || !choose_algorithm(p)) {
        destroy_plan(p);
        return NULL;
    }
    p->used = 1;
    return p;
}

int tga_cuda_gemm_init(char *why, size_t why_size) {
    const char *precision = getenv("TGA_CUDA_GEMM");
    if (precision && strcmp(precision, "fp32") == 0) {
        compute_type = CUBLAS_COMPUTE_32F;
    } else if (precision && *precision && strcmp(precision, "tf32") != 0) {
        snprintf(why, why_size, "TGA_CUDA_GEMM=%s: expected tf32 or fp32", precision);
        return 0;
    }
    cublasStatus_t st = cublasLtCreate(&lt_handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, why_size, "cublasLtCreate: %s", cublasLtGetStatusString(st));
        return 0;
    }
    cudaError_t err = cudaMalloc(&lt_workspace, GEMM_WORKSPACE_BYTES);
    if (err != cudaSuccess) {
        snprintf(why, why_size, "cannot allocate the cuBLASLt workspace: %s", cudaGetErrorString(err));
        return 0;
    }
    return 1;
}

const char *tga_cuda_gemm_precision(void) { return compute_type == CUBLAS_COMPUTE_32F ? "fp32" : "tf32"; }

void tga_cuda_gemm_typed(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A,
                         tga_cuda_operand type_a, int lda, const void *B, tga_cuda_operand type_b, int ldb, float beta,
                         float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        tga_cuda_scale_matrix(C, M, N, ldc, beta);
        return;
    }
    const gemm_shape shape = {trans_a != 0, trans_b != 0, M, N, K, lda, ldb, ldc,
                              pointer_alignment(A), pointer_alignment(B), pointer_alignment(C), type_a, type_b};
    gemm_plan *p = plan_for(&shape);
    if (!p) return;
    /* cuBLAS does not read C when beta is 0, so stale NaN in C cannot leak into the result */
    LT_CHECK(cublasLtMatmul(lt_handle, p->desc, &alpha, B, p->lt_a, A, p->lt_b, &beta, C, p->lt_c, C, p->lt_c, &p->algo,
                            lt_workspace, GEMM_WORKSPACE_BYTES, tga_cuda_stream));
}

void tga_cuda_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    tga_cuda_gemm_typed(trans_a, trans_b, M, N, K, alpha, A, TGA_CUDA_F32, lda, B, TGA_CUDA_F32, ldb, beta, C, ldc);
}
