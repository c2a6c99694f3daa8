/* Causal grouped-query attention through cuDNN 9's graph (backend) API, a selectable alternative
 * to attention_forward.cu / attention_backward.cu (contract in kernels/ops.h). Selected with
 * tga_cuda_select_attention("cudnn"), which publishes a copy of the backend's op table with these
 * two ops in it.
 *
 * Loading: libcudnn.so.9 (or $TGA_CUDNN_LIBRARY) is dlopen'ed by the selector, never linked, so
 * the backend loads on machines without cuDNN; cudnn_backend.h gives types and constants only and
 * every function is resolved with dlsym. The handle is created at the first op, bound to
 * tga_cuda_stream.
 *
 * Graphs: the composition cudnn-frontend 1.x builds for SDPA on cuDNN 9 before 9.21
 * (include/cudnn_frontend/node/scaled_dot_product_flash_attention.h, softmax.h), which cuDNN's
 * fused flash-attention engines recognise. cuDNN 9.19's single SDPA operation descriptor cannot
 * express a causal mask (that needs its score-modifier subgraph, cuDNN 9.21), so it is not used.
 *   forward:  S = Q K^T (per-sample row/column extents from the lengths), * 1/sqrt(hd), padding
 *             mask, causal mask, softmax with Stats = max + log(sum exp) (natural log of the scaled
 *             scores: exactly our lse), O = P V.
 *   backward: D = rowsum(dO * O); P = exp(scale * Q K^T - Stats) under the same masks;
 *             dV = P^T dO, dS = P * (dO V^T - D) * scale, dK = dS^T Q, dQ = dS K. With KVH < H
 *             the dK/dV products run per query head and are summed over each kv head's group.
 * Q/K/V/O/dO/dQ/dK/dV are bf16 (cuDNN's fused attention takes no fp32), converted from and to
 * the op's fp32 buffers in scratch (attention_cudnn_convert.cu); Stats is fp32 and is our lse
 * buffer itself. A plan is built once per (pass, B, T, H, KVH, hd) and cached.
 *
 * Padding: rows t >= lengths[b] are zeroed on the way in (so NaN there never reaches cuDNN) and
 * on the way out (the contract wants out = 0, lse = 0, and zero gradients there; cuDNN promises
 * nothing for rows past a sequence length). cuDNN is given lengths clamped to [1, T]: a sample of
 * length 0 then has one row of zeros, whose scores are 0 and whose saved lse (0) is their exact
 * log-sum-exp, so its gradients are exactly zero, and no engine meets an empty sequence.
 *
 * Determinism: the backward graph writes dQ directly, without the fp32 dQ accumulator tensor,
 * which is how cuDNN's graph asks for its deterministic backward (dP kept in the workspace rather
 * than dQ summed with atomics; cudnn-frontend's is_deterministic_algorithm); engines that carry
 * the NONDETERMINISTIC numerical note are skipped as well.
 *
 * Errors: ops return void, so every cuDNN status is checked and the first failure recorded with
 * the failing call (tga_cuda_record_error): the process stops at the next sync with it. */
#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/dynlib.h"
/* after cuda_kernels.h: cudnn_graph.h needs the CUDA runtime's types */
#include <cudnn_backend.h>

#include "kernels/cuda/attention_cudnn.h"

/* ---- loading -------------------------------------------------------------------------------- */

static struct {
    void *library; /* NULL until every function below is resolved */
    size_t version;
    size_t (*get_version)(void);
    cudnnStatus_t (*create)(cudnnHandle_t *handle);
    cudnnStatus_t (*set_stream)(cudnnHandle_t handle, cudaStream_t stream);
    const char *(*error_string)(cudnnStatus_t status);
    void (*last_error_string)(char *message, size_t max_size);
    cudnnStatus_t (*create_descriptor)(cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *descriptor);
    cudnnStatus_t (*destroy_descriptor)(cudnnBackendDescriptor_t descriptor);
    cudnnStatus_t (*finalize)(cudnnBackendDescriptor_t descriptor);
    cudnnStatus_t (*set_attribute)(cudnnBackendDescriptor_t descriptor, cudnnBackendAttributeName_t name,
                                   cudnnBackendAttributeType_t type, int64_t count, const void *values);
    cudnnStatus_t (*get_attribute)(cudnnBackendDescriptor_t descriptor, cudnnBackendAttributeName_t name,
                                   cudnnBackendAttributeType_t type, int64_t requested, int64_t *count,
                                   void *values);
    cudnnStatus_t (*execute)(cudnnHandle_t handle, cudnnBackendDescriptor_t plan,
                             cudnnBackendDescriptor_t variant_pack);
} cudnn;

static cudnnHandle_t handle;
static int handle_ready;

static const char *cudnn_library_path(void) {
    const char *env = getenv("TGA_CUDNN_LIBRARY");
    return env && *env ? env : "libcudnn.so.9";
}

/* Fills `cudnn` from an opened library; 0, naming the first missing function, if one is absent. */
static int resolve_functions(void *library, const char *path, char *why, size_t why_size) {
    const tga_dynlib_symbol wanted[] = {
        {"cudnnGetVersion", &cudnn.get_version},
        {"cudnnCreate", &cudnn.create},
        {"cudnnSetStream", &cudnn.set_stream},
        {"cudnnGetErrorString", &cudnn.error_string},
        {"cudnnGetLastErrorString", &cudnn.last_error_string},
        {"cudnnBackendCreateDescriptor", &cudnn.create_descriptor},
        {"cudnnBackendDestroyDescriptor", &cudnn.destroy_descriptor},
        {"cudnnBackendFinalize", &cudnn.finalize},
        {"cudnnBackendSetAttribute", &cudnn.set_attribute},
        {"cudnnBackendGetAttribute", &cudnn.get_attribute},
        {"cudnnBackendExecute", &cudnn.execute},
    };
    const char *missing = tga_dynlib_resolve(library, wanted, sizeof wanted / sizeof wanted[0]);
    if (missing) snprintf(why, why_size, "%s has no %s (cuDNN 9 is needed)", path, missing);
    return missing == NULL;
}

/* The library stays loaded once it is: plans built from it live as long as the process. */
static int load_cudnn(char *why, size_t why_size) {
    if (cudnn.library) return 1;
    const char *path = cudnn_library_path();
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(why, why_size, "cannot load %s (%s); install cuDNN 9 or set TGA_CUDNN_LIBRARY to its path", path,
                 dlerror());
        return 0;
    }
    if (!resolve_functions(library, path, why, why_size)) {
        dlclose(library);
        return 0;
    }
    /* cuDNN 9 numbers versions major * 10000 + minor * 100 + patch */
    size_t version = cudnn.get_version();
    if (version / 10000 != CUDNN_MAJOR) {
        snprintf(why, why_size, "%s is cuDNN %zu.%zu.%zu; this backend was built for cuDNN %d", path, version / 10000,
                 version / 100 % 100, version % 100, CUDNN_MAJOR);
        dlclose(library);
        return 0;
    }
    cudnn.version = version;
    cudnn.library = library;
    return 1;
}

/* ---- errors --------------------------------------------------------------------------------- */

/* Records a failed cuDNN call as the backend's first error, with cuDNN's own account of it;
 * returns 1 when status is success. */
static int cudnn_check(cudnnStatus_t status, const char *file, int line, const char *call) {
    if (status == CUDNN_STATUS_SUCCESS) return 1;
    char last[512] = "";
    cudnn.last_error_string(last, sizeof last);
    char detail[800];
    snprintf(detail, sizeof detail, "%s (%d)%s%s (rerun with CUDNN_LOGERR_DBG=1 CUDNN_LOGDEST_DBG=stderr for cuDNN's log)",
             cudnn.error_string(status), (int)status, *last ? ": " : "", last);
    tga_cuda_record_error(file, line, call, detail);
    return 0;
}
#define CUDNN_CHECK(call) cudnn_check((call), __FILE__, __LINE__, #call)

static int ensure_handle(void) {
    if (handle_ready) return 1;
    if (!handle && !CUDNN_CHECK(cudnn.create(&handle))) return 0;
    handle_ready = CUDNN_CHECK(cudnn.set_stream(handle, tga_cuda_stream));
    return handle_ready;
}

/* ---- graph building ------------------------------------------------------------------------- */

enum { MAX_GRAPH_DESCRIPTORS = 176, MAX_GRAPH_OPS = 48 };

/* The descriptors of one graph and of the plan made from it, destroyed together. Building stops
 * at the first failing call (recorded, with the graph's label), after which every helper is a
 * no-op returning NULL. */
typedef struct graph {
    char label[96];
    cudnnBackendDescriptor_t owned[MAX_GRAPH_DESCRIPTORS];
    int n_owned;
    cudnnBackendDescriptor_t ops[MAX_GRAPH_OPS];
    int n_ops;
    int64_t next_virtual_uid;
    int ok;
} graph;

static int graph_check(graph *g, cudnnStatus_t status, int line, const char *call, const char *what) {
    if (!g->ok) return 0;
    char named[256];
    snprintf(named, sizeof named, "%s: %s(%s)", g->label, call, what);
    g->ok = cudnn_check(status, __FILE__, line, named);
    return g->ok;
}

static void graph_fail(graph *g, int line, const char *call, const char *detail) {
    if (!g->ok) return;
    char named[256];
    snprintf(named, sizeof named, "%s: %s", g->label, call);
    tga_cuda_record_error(__FILE__, line, named, detail);
    g->ok = 0;
}

static int graph_keep(graph *g, cudnnBackendDescriptor_t d) {
    if (g->n_owned == MAX_GRAPH_DESCRIPTORS) {
        graph_fail(g, __LINE__, "graph_keep", "more descriptors than MAX_GRAPH_DESCRIPTORS");
        cudnn.destroy_descriptor(d);
        return 0;
    }
    g->owned[g->n_owned++] = d;
    return 1;
}

static cudnnBackendDescriptor_t graph_create(graph *g, cudnnBackendDescriptorType_t type, const char *what) {
    cudnnBackendDescriptor_t d = NULL;
    if (!g->ok || !graph_check(g, cudnn.create_descriptor(type, &d), __LINE__, "cudnnBackendCreateDescriptor", what))
        return NULL;
    return graph_keep(g, d) ? d : NULL;
}

#define SET(g, d, attribute, type, count, values) \
    graph_set((g), (d), (attribute), #attribute, (type), (count), (values), __LINE__)

static void graph_set(graph *g, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t attribute,
                      const char *attribute_name, cudnnBackendAttributeType_t type, int64_t count, const void *values,
                      int line) {
    if (g->ok) graph_check(g, cudnn.set_attribute(d, attribute, type, count, values), line, "cudnnBackendSetAttribute",
                           attribute_name);
}

static void graph_finalize(graph *g, cudnnBackendDescriptor_t d, const char *what) {
    if (g->ok) graph_check(g, cudnn.finalize(d), __LINE__, "cudnnBackendFinalize", what);
}

static void graph_add_op(graph *g, cudnnBackendDescriptor_t op) {
    if (!g->ok) return;
    if (g->n_ops == MAX_GRAPH_OPS) {
        graph_fail(g, __LINE__, "graph_add_op", "more operations than MAX_GRAPH_OPS");
        return;
    }
    g->ops[g->n_ops++] = op;
}

static void graph_release(graph *g) {
    for (int i = g->n_owned - 1; i >= 0; i--) cudnn.destroy_descriptor(g->owned[i]);
    g->n_owned = g->n_ops = 0;
}

/* ---- tensors -------------------------------------------------------------------------------- */

typedef struct tensor_shape {
    int64_t dims[4], strides[4];
} tensor_shape;

enum { TENSOR_IN_MEMORY = 0, TENSOR_VIRTUAL = 1, TENSOR_BY_VALUE = 2 };

static cudnnBackendDescriptor_t graph_tensor(graph *g, int64_t uid, cudnnDataType_t type, const tensor_shape *shape,
                                             int kind) {
    cudnnBackendDescriptor_t d = graph_create(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
    const int64_t alignment = 16;
    const bool is_virtual = kind == TENSOR_VIRTUAL, by_value = kind == TENSOR_BY_VALUE;
    SET(g, d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    SET(g, d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, shape->dims);
    SET(g, d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, shape->strides);
    SET(g, d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SET(g, d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    SET(g, d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) SET(g, d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    graph_finalize(g, d, "tensor");
    return g->ok ? d : NULL;
}

static cudnnBackendDescriptor_t graph_virtual(graph *g, cudnnDataType_t type, const tensor_shape *shape) {
    return graph_tensor(g, g->next_virtual_uid++, type, shape, TENSOR_VIRTUAL);
}

/* ---- operations ----------------------------------------------------------------------------- */

/* y = mode(x, b, t); b and t may be NULL; axis only for GEN_INDEX. */
static void graph_pointwise(graph *g, const char *name, cudnnPointwiseMode_t mode, cudnnDataType_t math, int64_t axis,
                            cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                            cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t pw = graph_create(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, name);
    SET(g, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    SET(g, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math);
    if (mode == CUDNN_POINTWISE_GEN_INDEX) SET(g, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    graph_finalize(g, pw, name);
    cudnnBackendDescriptor_t op = graph_create(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, name);
    SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
    SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b) SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    if (t) SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    graph_finalize(g, op, name);
    graph_add_op(g, op);
}

/* The same into a new virtual tensor of the given type and shape, which it returns. */
static cudnnBackendDescriptor_t graph_apply(graph *g, const char *name, cudnnPointwiseMode_t mode,
                                            cudnnDataType_t math, int64_t axis, cudnnBackendDescriptor_t x,
                                            cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                                            cudnnDataType_t type, const tensor_shape *shape) {
    cudnnBackendDescriptor_t y = graph_virtual(g, type, shape);
    graph_pointwise(g, name, mode, math, axis, x, b, t, y);
    return y;
}

/* Scores-shaped fp32 arithmetic, the common case. */
static cudnnBackendDescriptor_t graph_math(graph *g, const char *name, cudnnPointwiseMode_t mode,
                                           cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                                           const tensor_shape *shape) {
    return graph_apply(g, name, mode, CUDNN_DATA_FLOAT, -1, x, b, NULL, CUDNN_DATA_FLOAT, shape);
}

/* c = a b over the last two dimensions (batch dimensions broadcast: the grouped-query heads); the
 * overrides (may be NULL) limit M, N, K per sample to the sequence lengths. */
static void graph_matmul(graph *g, const char *name, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                         cudnnBackendDescriptor_t c, cudnnBackendDescriptor_t m_override,
                         cudnnBackendDescriptor_t n_override, cudnnBackendDescriptor_t k_override) {
    const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t mm = graph_create(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, name);
    SET(g, mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
    graph_finalize(g, mm, name);
    cudnnBackendDescriptor_t op = graph_create(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, name);
    SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
    SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
    SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm);
    if (m_override)
        SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m_override);
    if (n_override)
        SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_override);
    if (k_override)
        SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k_override);
    graph_finalize(g, op, name);
    graph_add_op(g, op);
}

/* y = reduce(x) over the dimensions where y is smaller (to 1, or a group of heads to one). */
static void graph_reduction(graph *g, const char *name, cudnnReduceTensorOp_t reduce, cudnnBackendDescriptor_t x,
                            cudnnBackendDescriptor_t y) {
    const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t rd = graph_create(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, name);
    SET(g, rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce);
    SET(g, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
    graph_finalize(g, rd, name);
    cudnnBackendDescriptor_t op = graph_create(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, name);
    SET(g, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    SET(g, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    SET(g, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd);
    graph_finalize(g, op, name);
    graph_add_op(g, op);
}

/* y is x seen with other dimensions and strides (how the graph transposes). */
static void graph_reshape(graph *g, const char *name, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t op = graph_create(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, name);
    SET(g, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    SET(g, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    graph_finalize(g, op, name);
    graph_add_op(g, op);
}

/* ---- the attention graphs ------------------------------------------------------------------- */

typedef struct attention_dims {
    int backward, B, T, H, KVH, head_dim;
} attention_dims;

/* Tensors in memory and by-value scalars, by unique id (the variant pack's keys); virtual
 * tensors take ids from UID_FIRST_VIRTUAL on. */
enum {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV, UID_SOFTMAX_SUM, UID_SCALE, UID_ONE,
    UID_LOWEST, UID_SEQ_LEN_Q, UID_SEQ_LEN_KV, UID_FIRST_VIRTUAL = 100,
};

/* cuDNN's dimension order is [b, h, s, d] whatever the memory order; ours is [B, T, heads, hd], so
 * the strides say where each dimension lies. */
typedef struct attention_shapes {
    tensor_shape q;        /* q, out, dout, dq: [B, H, T, hd] over [B, T, H, hd] memory */
    tensor_shape kv;       /* k, v, dk, dv: [B, KVH, T, hd] over [B, T, KVH, hd] */
    tensor_shape kv_t;     /* k and v transposed: [B, KVH, hd, T] */
    tensor_shape scores;   /* [B, H, T, T] */
    tensor_shape scores_t; /* the same transposed */
    tensor_shape rows;     /* one value per query row: [B, H, T, 1], the lse layout */
    tensor_shape full_kv;  /* per-query-head dK/dV before the group sum: [B, H, T, hd] */
    tensor_shape scalar;   /* by-value scalars */
    tensor_shape lengths;  /* [B, 1, 1, 1] int32 */
} attention_shapes;

static tensor_shape shape_of(int64_t d0, int64_t d1, int64_t d2, int64_t d3, int64_t s0, int64_t s1, int64_t s2,
                             int64_t s3) {
    return (tensor_shape){{d0, d1, d2, d3}, {s0, s1, s2, s3}};
}

static attention_shapes shapes_for(const attention_dims *d) {
    const int64_t B = d->B, T = d->T, H = d->H, KVH = d->KVH, hd = d->head_dim;
    return (attention_shapes){
        .q = shape_of(B, H, T, hd, T * H * hd, hd, H * hd, 1),
        .kv = shape_of(B, KVH, T, hd, T * KVH * hd, hd, KVH * hd, 1),
        .kv_t = shape_of(B, KVH, hd, T, T * KVH * hd, hd, 1, KVH * hd),
        .scores = shape_of(B, H, T, T, H * T * T, T * T, T, 1),
        .scores_t = shape_of(B, H, T, T, H * T * T, T * T, 1, T),
        .rows = shape_of(B, H, T, 1, H * T, T, 1, 1),
        .full_kv = shape_of(B, H, T, hd, H * T * hd, T * hd, hd, 1),
        .scalar = shape_of(1, 1, 1, 1, 1, 1, 1, 1),
        .lengths = shape_of(B, 1, 1, 1, 1, 1, 1, 1),
    };
}

/* What both graphs share: shapes, the sequence lengths of the queries and of the keys (the same
 * buffer, as two tensors like cudnn-frontend's), the scale and the masking value. */
typedef struct attention_common {
    attention_shapes s;
    cudnnBackendDescriptor_t seq_q, seq_kv, scale, lowest;
} attention_common;

static attention_common common_tensors(graph *g, const attention_dims *d) {
    attention_common c = {.s = shapes_for(d)};
    c.seq_q = graph_tensor(g, UID_SEQ_LEN_Q, CUDNN_DATA_INT32, &c.s.lengths, TENSOR_IN_MEMORY);
    c.seq_kv = graph_tensor(g, UID_SEQ_LEN_KV, CUDNN_DATA_INT32, &c.s.lengths, TENSOR_IN_MEMORY);
    c.scale = graph_tensor(g, UID_SCALE, CUDNN_DATA_FLOAT, &c.s.scalar, TENSOR_BY_VALUE);
    c.lowest = graph_tensor(g, UID_LOWEST, CUDNN_DATA_FLOAT, &c.s.scalar, TENSOR_BY_VALUE);
    return c;
}

/* Scores at row < seq_q[b] and column < seq_kv[b]; the lowest float elsewhere. */
static cudnnBackendDescriptor_t padding_mask(graph *g, const attention_common *c, cudnnBackendDescriptor_t scores) {
    const tensor_shape *s = &c->s.scores;
    cudnnBackendDescriptor_t row = graph_apply(g, "gen_row_idx_padding", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32,
                                               2, scores, NULL, NULL, CUDNN_DATA_INT32, s);
    cudnnBackendDescriptor_t col = graph_apply(g, "gen_col_idx_padding", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32,
                                               3, scores, NULL, NULL, CUDNN_DATA_INT32, s);
    cudnnBackendDescriptor_t row_real = graph_apply(g, "lt_row_sq_padding", CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN,
                                                    -1, row, c->seq_q, NULL, CUDNN_DATA_BOOLEAN, s);
    cudnnBackendDescriptor_t col_real = graph_apply(g, "lt_col_skv_padding", CUDNN_POINTWISE_CMP_LT,
                                                    CUDNN_DATA_BOOLEAN, -1, col, c->seq_kv, NULL, CUDNN_DATA_BOOLEAN, s);
    cudnnBackendDescriptor_t keep = graph_apply(g, "and_row_col_padding", CUDNN_POINTWISE_LOGICAL_AND,
                                                CUDNN_DATA_BOOLEAN, -1, row_real, col_real, NULL, CUDNN_DATA_BOOLEAN, s);
    return graph_apply(g, "select_padding", CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, -1, scores, c->lowest,
                       keep, CUDNN_DATA_FLOAT, s);
}

/* Scores at column <= row; the lowest float elsewhere. */
static cudnnBackendDescriptor_t causal_mask(graph *g, const attention_common *c, cudnnBackendDescriptor_t scores) {
    const tensor_shape *s = &c->s.scores;
    cudnnBackendDescriptor_t row = graph_apply(g, "gen_row_idx_causal", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, 2,
                                               scores, NULL, NULL, CUDNN_DATA_INT32, s);
    cudnnBackendDescriptor_t col = graph_apply(g, "gen_col_idx_causal", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, 3,
                                               scores, NULL, NULL, CUDNN_DATA_INT32, s);
    cudnnBackendDescriptor_t keep = graph_apply(g, "row_greater_than_col", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN,
                                                -1, row, col, NULL, CUDNN_DATA_BOOLEAN, s);
    return graph_apply(g, "binary_select", CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, -1, scores, c->lowest,
                       keep, CUDNN_DATA_FLOAT, s);
}

/* out = a b; with grouped-query heads (per_query_head) the product runs per query head into a
 * virtual [B, H, T, hd] tensor summed over each kv head's group of H / KVH consecutive heads. */
static void group_summed_matmul(graph *g, const attention_common *c, const char *name, const char *sum_name,
                                int per_query_head, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                                cudnnBackendDescriptor_t out) {
    if (!per_query_head) {
        graph_matmul(g, name, a, b, out, c->seq_kv, NULL, c->seq_q);
        return;
    }
    cudnnBackendDescriptor_t full = graph_virtual(g, CUDNN_DATA_BFLOAT16, &c->s.full_kv);
    graph_matmul(g, name, a, b, full, c->seq_kv, NULL, c->seq_q);
    graph_reduction(g, sum_name, CUDNN_REDUCE_TENSOR_ADD, full, out);
}

static void build_forward_graph(graph *g, const attention_dims *d) {
    const attention_common c = common_tensors(g, d);
    const attention_shapes *s = &c.s;
    cudnnBackendDescriptor_t q = graph_tensor(g, UID_Q, CUDNN_DATA_BFLOAT16, &s->q, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t k_t = graph_tensor(g, UID_K, CUDNN_DATA_BFLOAT16, &s->kv_t, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t v = graph_tensor(g, UID_V, CUDNN_DATA_BFLOAT16, &s->kv, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t o = graph_tensor(g, UID_O, CUDNN_DATA_BFLOAT16, &s->q, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t stats = graph_tensor(g, UID_STATS, CUDNN_DATA_FLOAT, &s->rows, TENSOR_IN_MEMORY);

    cudnnBackendDescriptor_t scores = graph_virtual(g, CUDNN_DATA_FLOAT, &s->scores);
    graph_matmul(g, "bmm1", q, k_t, scores, c.seq_q, c.seq_kv, NULL); /* S = Q K^T */
    cudnnBackendDescriptor_t x = graph_math(g, "attn_scale", CUDNN_POINTWISE_MUL, scores, c.scale, &s->scores);
    x = padding_mask(g, &c, x);
    x = causal_mask(g, &c, x);

    /* softmax, saving Stats = max + log(sum exp(x - max)) */
    cudnnBackendDescriptor_t row_max = graph_virtual(g, CUDNN_DATA_FLOAT, &s->rows);
    graph_reduction(g, "max", CUDNN_REDUCE_TENSOR_MAX, x, row_max);
    cudnnBackendDescriptor_t shifted = graph_math(g, "sub", CUDNN_POINTWISE_SUB, x, row_max, &s->scores);
    cudnnBackendDescriptor_t e = graph_math(g, "exp", CUDNN_POINTWISE_EXP, shifted, NULL, &s->scores);
    cudnnBackendDescriptor_t row_sum = graph_virtual(g, CUDNN_DATA_FLOAT, &s->rows);
    graph_reduction(g, "sum", CUDNN_REDUCE_TENSOR_ADD, e, row_sum);
    cudnnBackendDescriptor_t log_sum = graph_math(g, "log", CUDNN_POINTWISE_LOG, row_sum, NULL, &s->rows);
    graph_pointwise(g, "add", CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, -1, row_max, log_sum, NULL, stats);
    /* P in the I/O type: the second product takes it as bf16 */
    cudnnBackendDescriptor_t p = graph_virtual(g, CUDNN_DATA_BFLOAT16, &s->scores);
    graph_pointwise(g, "div", CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, -1, e, row_sum, NULL, p);
    graph_matmul(g, "bmm2", p, v, o, c.seq_q, NULL, c.seq_kv); /* O = P V */
}

static void build_backward_graph(graph *g, const attention_dims *d) {
    const attention_common c = common_tensors(g, d);
    const attention_shapes *s = &c.s;
    const int per_query_head = d->KVH != d->H;
    cudnnBackendDescriptor_t q = graph_tensor(g, UID_Q, CUDNN_DATA_BFLOAT16, &s->q, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t k_t = graph_tensor(g, UID_K, CUDNN_DATA_BFLOAT16, &s->kv_t, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t v_t = graph_tensor(g, UID_V, CUDNN_DATA_BFLOAT16, &s->kv_t, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t o = graph_tensor(g, UID_O, CUDNN_DATA_BFLOAT16, &s->q, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t dout = graph_tensor(g, UID_DO, CUDNN_DATA_BFLOAT16, &s->q, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t stats = graph_tensor(g, UID_STATS, CUDNN_DATA_FLOAT, &s->rows, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t dq = graph_tensor(g, UID_DQ, CUDNN_DATA_BFLOAT16, &s->q, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t dk = graph_tensor(g, UID_DK, CUDNN_DATA_BFLOAT16, &s->kv, TENSOR_IN_MEMORY);
    cudnnBackendDescriptor_t dv = graph_tensor(g, UID_DV, CUDNN_DATA_BFLOAT16, &s->kv, TENSOR_IN_MEMORY);
    /* cuDNN wants D in memory (cudnn-frontend keeps it in its workspace) */
    cudnnBackendDescriptor_t softmax_sum =
        graph_tensor(g, UID_SOFTMAX_SUM, CUDNN_DATA_FLOAT, &s->rows, TENSOR_IN_MEMORY);
    /* the dropout-scale slot of the pattern, 1 without dropout */
    cudnnBackendDescriptor_t one = graph_tensor(g, UID_ONE, CUDNN_DATA_FLOAT, &s->scalar, TENSOR_BY_VALUE);

    /* D = rowsum(dO * O) */
    cudnnBackendDescriptor_t d_o = graph_math(g, "mul_dO_O", CUDNN_POINTWISE_MUL, dout, o, &s->q);
    cudnnBackendDescriptor_t row_dot = graph_virtual(g, CUDNN_DATA_FLOAT, &s->rows);
    graph_reduction(g, "reduce_dO_o", CUDNN_REDUCE_TENSOR_ADD, d_o, row_dot);
    graph_pointwise(g, "scale_dropout_inv", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, -1, row_dot, one, NULL,
                    softmax_sum);

    /* P = exp(scale * Q K^T - Stats), masked as in the forward */
    cudnnBackendDescriptor_t scores = graph_virtual(g, CUDNN_DATA_FLOAT, &s->scores);
    graph_matmul(g, "matmul_Q_KT", q, k_t, scores, c.seq_q, c.seq_kv, NULL);
    cudnnBackendDescriptor_t x = graph_math(g, "mul_s_attn_scale", CUDNN_POINTWISE_MUL, scores, c.scale, &s->scores);
    x = graph_math(g, "sub_s_m", CUDNN_POINTWISE_SUB, x, stats, &s->scores);
    x = padding_mask(g, &c, x);
    x = causal_mask(g, &c, x);
    cudnnBackendDescriptor_t p = graph_math(g, "exp_s", CUDNN_POINTWISE_EXP, x, NULL, &s->scores);

    /* dV = P^T dO */
    cudnnBackendDescriptor_t p_t = graph_virtual(g, CUDNN_DATA_BFLOAT16, &s->scores_t);
    graph_reshape(g, "reshape_p", p, p_t);
    group_summed_matmul(g, &c, "matmul_pT_dO", "red_dV_head", per_query_head, p_t, dout, dv);

    /* dS = P * (dO V^T - D) * scale */
    cudnnBackendDescriptor_t dp = graph_virtual(g, CUDNN_DATA_FLOAT, &s->scores);
    graph_matmul(g, "matmul_dO_VT", dout, v_t, dp, c.seq_q, c.seq_kv, NULL);
    x = graph_math(g, "sub_dP_softmax_sum", CUDNN_POINTWISE_SUB, dp, softmax_sum, &s->scores);
    x = graph_math(g, "mul_dP_exp_s", CUDNN_POINTWISE_MUL, x, p, &s->scores);
    cudnnBackendDescriptor_t ds = graph_math(g, "mul_dS_attn_scale", CUDNN_POINTWISE_MUL, x, c.scale, &s->scores);

    /* dK = dS^T Q */
    cudnnBackendDescriptor_t ds_t = graph_virtual(g, CUDNN_DATA_BFLOAT16, &s->scores_t);
    graph_reshape(g, "reshape_dS", ds, ds_t);
    group_summed_matmul(g, &c, "matmul_dST_Q", "red_dK_head", per_query_head, ds_t, q, dk);

    /* dQ = dS K, written straight to dQ (no fp32 accumulator tensor: the deterministic engine) */
    cudnnBackendDescriptor_t k = graph_virtual(g, CUDNN_DATA_BFLOAT16, &s->kv);
    graph_reshape(g, "reshape_k", k_t, k);
    graph_matmul(g, "matmul_dS_K", ds, k, dq, c.seq_q, NULL, c.seq_kv);
}

/* ---- plans ---------------------------------------------------------------------------------- */

/* 1 when the engine of `config` does not say it is nondeterministic (a failed query counts as
 * saying so). */
static int engine_is_deterministic(cudnnBackendDescriptor_t config) {
    cudnnBackendDescriptor_t engine = NULL;
    if (cudnn.create_descriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine) != CUDNN_STATUS_SUCCESS) return 0;
    int64_t count = 0;
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int known = cudnn.get_attribute(config, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count,
                                    &engine) == CUDNN_STATUS_SUCCESS &&
                cudnn.get_attribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                    CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &count, notes) == CUDNN_STATUS_SUCCESS;
    cudnn.destroy_descriptor(engine);
    if (!known) return 0;
    for (int64_t i = 0; i < count && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; i++)
        if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) return 0;
    return 1;
}

/* Why no engine was taken, for the error message. */
typedef struct engine_search {
    int configs, nondeterministic;
    cudnnStatus_t last_status;
} engine_search;

/* An execution plan from one engine configuration, or NULL with cuDNN's refusal in *status. */
static cudnnBackendDescriptor_t plan_from_config(cudnnBackendDescriptor_t config, cudnnStatus_t *status) {
    cudnnBackendDescriptor_t plan = NULL;
    *status = cudnn.create_descriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
    if (*status != CUDNN_STATUS_SUCCESS) return NULL;
    *status = cudnn.set_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
    if (*status == CUDNN_STATUS_SUCCESS)
        *status = cudnn.set_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                      &config);
    if (*status == CUDNN_STATUS_SUCCESS) *status = cudnn.finalize(plan);
    if (*status == CUDNN_STATUS_SUCCESS) return plan;
    cudnn.destroy_descriptor(plan);
    return NULL;
}

/* The first deterministic engine configuration that heuristics `mode` proposes and that
 * finalizes into a plan; NULL if none. The plan and its configuration join the graph. */
static cudnnBackendDescriptor_t plan_from_heuristics(graph *g, cudnnBackendDescriptor_t op_graph,
                                                     cudnnBackendHeurMode_t mode, engine_search *search) {
    cudnnBackendDescriptor_t heuristics = graph_create(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "engine heuristics");
    SET(g, heuristics, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op_graph);
    SET(g, heuristics, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    graph_finalize(g, heuristics, "engine heuristics");
    int64_t count = 0;
    if (!g->ok || !graph_check(g, cudnn.get_attribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, NULL),
                               __LINE__, "cudnnBackendGetAttribute", "CUDNN_ATTR_ENGINEHEUR_RESULTS count"))
        return NULL;
    if (count <= 0) return NULL;
    cudnnBackendDescriptor_t *configs = calloc((size_t)count, sizeof *configs);
    if (!configs) {
        graph_fail(g, __LINE__, "calloc", "out of host memory for the engine configurations");
        return NULL;
    }
    int64_t created = 0;
    while (created < count && cudnn.create_descriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &configs[created]) ==
                                  CUDNN_STATUS_SUCCESS)
        created++;
    cudnnBackendDescriptor_t plan = NULL;
    int64_t returned = 0;
    if (created == count &&
        graph_check(g, cudnn.get_attribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           count, &returned, configs),
                    __LINE__, "cudnnBackendGetAttribute", "CUDNN_ATTR_ENGINEHEUR_RESULTS")) {
        for (int64_t i = 0; i < returned && !plan && g->ok; i++) {
            search->configs++;
            if (!engine_is_deterministic(configs[i])) {
                search->nondeterministic++;
                continue;
            }
            /* a configuration an engine turns down is expected: the next one is tried */
            cudnnBackendDescriptor_t candidate = plan_from_config(configs[i], &search->last_status);
            if (!candidate) continue;
            /* graph_keep destroys what it cannot keep */
            int config_kept = graph_keep(g, configs[i]);
            configs[i] = NULL;
            if (!config_kept)
                cudnn.destroy_descriptor(candidate);
            else if (graph_keep(g, candidate))
                plan = candidate;
        }
    }
    for (int64_t i = 0; i < created; i++)
        if (configs[i]) cudnn.destroy_descriptor(configs[i]);
    free(configs);
    return plan;
}

/* The execution plan of the graph's operations, and its workspace size; NULL, recorded, if no
 * engine runs them. */
static cudnnBackendDescriptor_t finalize_plan(graph *g, int64_t *workspace_bytes) {
    cudnnBackendDescriptor_t op_graph = graph_create(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    SET(g, op_graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->n_ops, g->ops);
    SET(g, op_graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
    graph_finalize(g, op_graph, "operation graph");
    engine_search search = {0, 0, CUDNN_STATUS_SUCCESS};
    cudnnBackendDescriptor_t plan = NULL;
    const cudnnBackendHeurMode_t modes[] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0] && g->ok && !plan; i++)
        plan = plan_from_heuristics(g, op_graph, modes[i], &search);
    if (!g->ok) return NULL;
    if (!plan) {
        char detail[400];
        snprintf(detail, sizeof detail,
                 "no cuDNN %zu engine runs this graph: %d configurations proposed, %d of them nondeterministic, the "
                 "last refusal %s (check the shape: head_dim a multiple of 8, at most 128 for the backward on "
                 "older cuDNN)",
                 cudnn.version, search.configs, search.nondeterministic,
                 search.configs > search.nondeterministic ? cudnn.error_string(search.last_status) : "none");
        graph_fail(g, __LINE__, "cudnnBackendFinalize(execution plan)", detail);
        return NULL;
    }
    *workspace_bytes = 0;
    int64_t count = 0;
    if (!graph_check(g, cudnn.get_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                            &count, workspace_bytes),
                     __LINE__, "cudnnBackendGetAttribute", "CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE"))
        return NULL;
    return plan;
}

enum { MAX_CACHED_PLANS = 16 };

/* A plan per (pass, shape), with the by-value scalars cuDNN reads at each execution. */
typedef struct cached_plan {
    attention_dims dims;
    graph g;
    cudnnBackendDescriptor_t plan;
    int64_t workspace_bytes;
    float scale, one, lowest;
    uint64_t last_use; /* 0: a free slot */
} cached_plan;

static cached_plan plans[MAX_CACHED_PLANS];
static uint64_t use_clock;

static int same_dims(const attention_dims *a, const attention_dims *b) {
    return a->backward == b->backward && a->B == b->B && a->T == b->T && a->H == b->H && a->KVH == b->KVH &&
           a->head_dim == b->head_dim;
}

/* Waits for the stream first: work already queued may still use the plan's kernels. */
static void release_plan(cached_plan *p) {
    if (!p->last_use) return;
    TGA_CUDA_CHECK(cudaStreamSynchronize(tga_cuda_stream));
    graph_release(&p->g);
    memset(p, 0, sizeof *p);
}

static int build_plan(cached_plan *p, const attention_dims *d) {
    graph *g = &p->g;
    memset(p, 0, sizeof *p);
    g->ok = 1;
    g->next_virtual_uid = UID_FIRST_VIRTUAL;
    snprintf(g->label, sizeof g->label, "cuDNN attention %s graph (B=%d T=%d H=%d KVH=%d hd=%d)",
             d->backward ? "backward" : "forward", d->B, d->T, d->H, d->KVH, d->head_dim);
    if (d->backward)
        build_backward_graph(g, d);
    else
        build_forward_graph(g, d);
    if (g->ok) p->plan = finalize_plan(g, &p->workspace_bytes);
    if (!p->plan) {
        graph_release(g);
        memset(p, 0, sizeof *p);
        return 0;
    }
    p->dims = *d;
    p->scale = 1.0f / sqrtf((float)d->head_dim);
    p->one = 1.0f;
    p->lowest = -FLT_MAX; /* cudnn-frontend's masking value: exp of it is 0 */
    p->last_use = ++use_clock;
    return 1;
}

/* The cached plan for d, built (evicting the least recently used) on a miss; NULL, recorded, if
 * it cannot be built. */
static cached_plan *plan_for(const attention_dims *d) {
    if (!ensure_handle()) return NULL;
    cached_plan *victim = &plans[0];
    for (int i = 0; i < MAX_CACHED_PLANS; i++) {
        if (plans[i].last_use && same_dims(&plans[i].dims, d)) {
            plans[i].last_use = ++use_clock;
            return &plans[i];
        }
        if (plans[i].last_use < victim->last_use) victim = &plans[i];
    }
    release_plan(victim);
    return build_plan(victim, d) ? victim : NULL;
}

/* Runs the plan on tga_cuda_stream with the given tensors (ids and addresses, by-value scalars
 * as host addresses). */
static void execute_plan(const cached_plan *p, const int64_t *uids, void *const *addresses, int64_t n,
                         void *workspace) {
    cudnnBackendDescriptor_t pack = NULL;
    if (!CUDNN_CHECK(cudnn.create_descriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack))) return;
    int ok = CUDNN_CHECK(cudnn.set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids)) &&
             CUDNN_CHECK(cudnn.set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n,
                                             addresses)) &&
             CUDNN_CHECK(cudnn.set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                                             &workspace)) &&
             CUDNN_CHECK(cudnn.finalize(pack));
    if (ok) CUDNN_CHECK(cudnn.execute(handle, p->plan, pack));
    cudnn.destroy_descriptor(pack);
}

/* ---- scratch -------------------------------------------------------------------------------- */

enum { MAX_SCRATCH_PARTS = 12 };

/* Consecutive parts of the scratch buffer, each 256-byte aligned; base NULL (recorded) when the
 * buffer cannot grow. */
typedef struct scratch_parts {
    char *base;
    size_t offset[MAX_SCRATCH_PARTS];
} scratch_parts;

static scratch_parts carve_scratch(const size_t *bytes, int n) {
    scratch_parts parts = {0};
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        parts.offset[i] = total;
        total += tga_cuda_align_up(bytes[i]);
    }
    parts.base = tga_cuda_scratch(total);
    return parts;
}

/* ---- the ops -------------------------------------------------------------------------------- */

static int shape_supported(const attention_dims *d, const char *op) {
    if (d->KVH <= 0 || d->H % d->KVH != 0) {
        tga_cuda_record_error(__FILE__, __LINE__, op, "H must be a positive multiple of KVH");
        return 0;
    }
    if (d->head_dim <= 0 || d->head_dim % 8 != 0 || d->head_dim > TGA_MAX_HEAD_DIM) {
        tga_cuda_record_error(__FILE__, __LINE__, op,
                              "cuDNN attention needs head_dim a multiple of 8, at most 256 (model.attention: tga "
                              "takes 16, 32, 64 and 128)");
        return 0;
    }
    return 1;
}

void tga_cuda_attention_cudnn_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const int *lengths, int B, int T, int H, int KVH, int head_dim) {
    if (B <= 0 || T <= 0 || H <= 0) return;
    const attention_dims d = {0, B, T, H, KVH, head_dim};
    if (!shape_supported(&d, "attention_forward (cuDNN)")) return;
    const cached_plan *p = plan_for(&d);
    if (!p) return;
    const size_t q_row = (size_t)H * head_dim, kv_row = (size_t)KVH * head_dim, rows = (size_t)B * T;
    enum { Q, K, V, O, SEQ_LEN, WORKSPACE, N_PARTS };
    const size_t q_bytes = rows * q_row * sizeof(uint16_t), kv_bytes = rows * kv_row * sizeof(uint16_t);
    const size_t bytes[N_PARTS] = {q_bytes, kv_bytes, kv_bytes, q_bytes, (size_t)B * sizeof(int),
                                   (size_t)p->workspace_bytes};
    const scratch_parts s = carve_scratch(bytes, N_PARTS);
    if (!s.base) return;
    uint16_t *q16 = (uint16_t *)(s.base + s.offset[Q]), *k16 = (uint16_t *)(s.base + s.offset[K]),
             *v16 = (uint16_t *)(s.base + s.offset[V]), *o16 = (uint16_t *)(s.base + s.offset[O]);
    int *seq_len = (int *)(s.base + s.offset[SEQ_LEN]);

    tga_cuda_clamp_lengths(seq_len, lengths, B, T, 1);
    const tga_cuda_rows_job in[] = {{q16, q, q_row}, {k16, k, kv_row}, {v16, v, kv_row}};
    tga_cuda_rows_to_bf16(in, 3, lengths, B, T);
    const int64_t uids[] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SEQ_LEN_Q, UID_SEQ_LEN_KV, UID_SCALE, UID_LOWEST};
    void *const addresses[] = {q16, k16, v16, o16, lse, seq_len, seq_len, (void *)&p->scale, (void *)&p->lowest};
    _Static_assert(sizeof uids / sizeof uids[0] == sizeof addresses / sizeof addresses[0], "one address per id");
    execute_plan(p, uids, addresses, (int64_t)(sizeof uids / sizeof uids[0]), s.base + s.offset[WORKSPACE]);
    const tga_cuda_rows_job result[] = {{out, o16, q_row}};
    tga_cuda_rows_from_bf16(result, 1, lengths, B, T);
    tga_cuda_zero_padding_lse(lse, lengths, B, H, T);
}

void tga_cuda_attention_cudnn_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                       const float *k, const float *v, const float *out, const float *lse,
                                       const int *lengths, int B, int T, int H, int KVH, int head_dim) {
    if (B <= 0 || T <= 0 || H <= 0) return;
    const attention_dims d = {1, B, T, H, KVH, head_dim};
    if (!shape_supported(&d, "attention_backward (cuDNN)")) return;
    const cached_plan *p = plan_for(&d);
    if (!p) return;
    const size_t q_row = (size_t)H * head_dim, kv_row = (size_t)KVH * head_dim, rows = (size_t)B * T;
    enum { Q, K, V, O, DO, DQ, DK, DV, SEQ_LEN, SOFTMAX_SUM, WORKSPACE, N_PARTS };
    const size_t q_bytes = rows * q_row * sizeof(uint16_t), kv_bytes = rows * kv_row * sizeof(uint16_t);
    const size_t bytes[N_PARTS] = {q_bytes,  kv_bytes, kv_bytes, q_bytes, q_bytes, q_bytes, kv_bytes, kv_bytes,
                                   (size_t)B * sizeof(int), (size_t)B * H * T * sizeof(float),
                                   (size_t)p->workspace_bytes};
    const scratch_parts s = carve_scratch(bytes, N_PARTS);
    if (!s.base) return;
    uint16_t *part16[DV + 1];
    for (int i = Q; i <= DV; i++) part16[i] = (uint16_t *)(s.base + s.offset[i]);
    int *seq_len = (int *)(s.base + s.offset[SEQ_LEN]);

    tga_cuda_clamp_lengths(seq_len, lengths, B, T, 1);
    const tga_cuda_rows_job in[] = {{part16[Q], q, q_row},   {part16[K], k, kv_row},     {part16[V], v, kv_row},
                                    {part16[O], out, q_row}, {part16[DO], dout, q_row}};
    tga_cuda_rows_to_bf16(in, 5, lengths, B, T);
    const int64_t uids[] = {UID_Q,  UID_K,  UID_V,  UID_O,           UID_DO,        UID_STATS,      UID_DQ,   UID_DK,
                            UID_DV, UID_SOFTMAX_SUM, UID_SEQ_LEN_Q, UID_SEQ_LEN_KV, UID_SCALE, UID_ONE, UID_LOWEST};
    void *const addresses[] = {part16[Q],       part16[K],      part16[V],  part16[O],
                               part16[DO],      (void *)lse,    part16[DQ], part16[DK],
                               part16[DV],      s.base + s.offset[SOFTMAX_SUM], seq_len, seq_len,
                               (void *)&p->scale, (void *)&p->one, (void *)&p->lowest};
    _Static_assert(sizeof uids / sizeof uids[0] == sizeof addresses / sizeof addresses[0], "one address per id");
    execute_plan(p, uids, addresses, (int64_t)(sizeof uids / sizeof uids[0]), s.base + s.offset[WORKSPACE]);
    const tga_cuda_rows_job grads[] = {{dq, part16[DQ], q_row}, {dk, part16[DK], kv_row}, {dv, part16[DV], kv_row}};
    tga_cuda_rows_from_bf16(grads, 3, lengths, B, T);
}

/* ---- selection ------------------------------------------------------------------------------ */

static tga_ops cudnn_ops;
static char cudnn_ops_name[400];

__attribute__((visibility("default"))) int tga_cuda_select_attention(const char *impl, char *why, size_t why_size) {
    if (strcmp(impl, "tga") == 0) {
        tga_cuda_publish_ops(tga_cuda_own_ops());
        return 1;
    }
    if (strcmp(impl, "cudnn") != 0) {
        snprintf(why, why_size, "unknown attention implementation \"%s\" (expected tga or cudnn)", impl);
        return 0;
    }
    if (!load_cudnn(why, why_size)) return 0;
    const tga_ops *own = tga_cuda_own_ops();
    cudnn_ops = *own;
    cudnn_ops.attention_forward = tga_cuda_attention_cudnn_forward;
    cudnn_ops.attention_backward = tga_cuda_attention_cudnn_backward;
    snprintf(cudnn_ops_name, sizeof cudnn_ops_name, "%s, attention cuDNN %zu.%zu.%zu", own->name,
             cudnn.version / 10000, cudnn.version / 100 % 100, cudnn.version % 100);
    cudnn_ops.name = cudnn_ops_name;
    tga_cuda_publish_ops(&cudnn_ops);
    return 1;
}
