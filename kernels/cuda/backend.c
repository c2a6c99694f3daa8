/* The CUDA backend's entry point. runtime/backend.c dlopens libtga_cuda.so and calls
 * tga_cuda_backend_init, one of the library's exported symbols (nccl.c exports the device
 * collectives, attention_cudnn.c the attention selector); it returns the op table, or NULL and a
 * reason when no GPU is usable (the CLI then falls back to the CPU or reports the reason).
 *
 * Device: one process per GPU. When the process sees several GPUs and a launcher gave it a local
 * rank (Open MPI, Slurm, torchrun), it takes GPU local_rank % count; otherwise the current device
 * (0 unless CUDA_VISIBLE_DEVICES says otherwise). One blocking stream, one cuBLASLt handle; not
 * thread-safe: ops are called from one host thread, one after another, as the trainer does. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/cuda_kernels.h"

/* mma.sync on bf16 needs compute capability 8.0 */
#define MIN_COMPUTE_CAPABILITY 80

static char backend_name[320] = "cuda";

static const tga_ops cuda_ops = {
    .name = backend_name,
    .alloc = tga_cuda_alloc,
    .free = tga_cuda_free,
    .upload = tga_cuda_upload,
    .download = tga_cuda_download,
    .zero = tga_cuda_zero,
    .copy = tga_cuda_copy,
    .sync = tga_cuda_sync,
    .gemm = tga_cuda_gemm,
    .linear_forward = tga_cuda_linear_forward,
    .linear_backward = tga_cuda_linear_backward,
    .embedding_forward = tga_cuda_embedding_forward,
    .embedding_backward = tga_cuda_embedding_backward,
    .rmsnorm_forward = tga_cuda_rmsnorm_forward,
    .rmsnorm_backward = tga_cuda_rmsnorm_backward,
    .add_rmsnorm_forward = tga_cuda_add_rmsnorm_forward,
    .rope = tga_cuda_rope,
    .attention_forward = tga_cuda_attention_forward,
    .attention_backward = tga_cuda_attention_backward,
    .swiglu_forward = tga_cuda_swiglu_forward,
    .swiglu_backward = tga_cuda_swiglu_backward,
    .gelu_forward = tga_cuda_gelu_forward,
    .gelu_backward = tga_cuda_gelu_backward,
    .bias_gelu_forward = tga_cuda_bias_gelu_forward,
    .gelu_bias_backward = tga_cuda_gelu_bias_backward,
    .lm_head_ce = tga_cuda_lm_head_ce,
    .linear_forward_bf16 = tga_cuda_linear_forward_bf16,
    .linear_forward_bf16_input = tga_cuda_linear_forward_bf16_input,
    .linear_backward_bf16_input = tga_cuda_linear_backward_bf16_input,
    .rmsnorm_forward_bf16 = tga_cuda_rmsnorm_forward_bf16,
    .add_rmsnorm_forward_bf16 = tga_cuda_add_rmsnorm_forward_bf16,
    .linear_backward_bf16 = tga_cuda_linear_backward_bf16,
    .embedding_forward_bf16 = tga_cuda_embedding_forward_bf16,
    .lm_head_ce_bf16 = tga_cuda_lm_head_ce_bf16,
    .swiglu_forward_bf16 = tga_cuda_swiglu_forward_bf16,
    .swiglu_backward_bf16 = tga_cuda_swiglu_backward_bf16,
    .to_bf16 = tga_cuda_to_bf16,
    .from_bf16 = tga_cuda_from_bf16,
    .segment_mean_forward = tga_cuda_segment_mean_forward,
    .segment_mean_backward = tga_cuda_segment_mean_backward,
    .tga_align_loss = tga_cuda_tga_align_loss,
    .tga_align_fused_forward = tga_cuda_tga_align_fused_forward,
    .tga_align_fused_backward = tga_cuda_tga_align_fused_backward,
    .add_inplace = tga_cuda_add_inplace,
    .scale_inplace = tga_cuda_scale_inplace,
    .sum_squares = tga_cuda_sum_squares,
    .all_finite = tga_cuda_all_finite,
    .adamw = tga_cuda_adamw,
    .adamw_bf16 = tga_cuda_adamw_bf16,
    .topk_merge = tga_cuda_topk_merge,
};

/* The table tga_cuda_backend_init hands out: cuda_ops, or the copy with other attention ops that
 * tga_cuda_select_attention (attention_cudnn.c) publishes. runtime/backend.c calls init again
 * after a selection to pick it up. */
static const tga_ops *published_ops = &cuda_ops;

const tga_ops *tga_cuda_own_ops(void) { return &cuda_ops; }

void tga_cuda_publish_ops(const tga_ops *ops) { published_ops = ops; }

/* After the name, the table holds only function pointers, so it can be scanned for an op left
 * out: an op added to ops.h without a CUDA version makes initialisation fail, not a call crash. */
typedef void (*any_op)(void);
_Static_assert((sizeof(tga_ops) - offsetof(tga_ops, alloc)) % sizeof(any_op) == 0,
               "tga_ops is expected to hold only function pointers after its name");
enum { N_OPS = (sizeof(tga_ops) - offsetof(tga_ops, alloc)) / sizeof(any_op) };

static int first_missing_op(const tga_ops *ops) {
    any_op fns[N_OPS];
    memcpy(fns, &ops->alloc, sizeof fns);
    for (int i = 0; i < N_OPS; i++)
        if (!fns[i]) return i;
    return -1;
}

/* The launcher's rank of this process on its node, or -1. */
static int local_rank(void) {
    static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *value = getenv(names[i]);
        if (value && *value) return atoi(value);
    }
    return -1;
}

/* Chooses the device, which must exist, be new enough, and have kernel code in this library. */
static int choose_device(char *why, size_t why_size, int *device, struct cudaDeviceProp *prop) {
    int n = 0; /* not written when the call fails */
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n == 0) {
        snprintf(why, why_size, "no usable CUDA device (%s)",
                 err != cudaSuccess ? cudaGetErrorString(err) : "the driver reports none");
        return 0;
    }
    int rank = local_rank();
    if (n > 1 && rank >= 0) err = cudaSetDevice(rank % n);
    if (err == cudaSuccess) err = cudaGetDevice(device);
    if (err == cudaSuccess) err = cudaGetDeviceProperties(prop, *device);
    if (err != cudaSuccess) {
        snprintf(why, why_size, "cannot query the CUDA device: %s", cudaGetErrorString(err));
        return 0;
    }
    if (prop->major * 10 + prop->minor < MIN_COMPUTE_CAPABILITY) {
        snprintf(why, why_size, "%s has compute capability %d.%d; the CUDA backend needs 8.0 or newer", prop->name,
                 prop->major, prop->minor);
        return 0;
    }
    return tga_cuda_kernels_loadable(why, why_size);
}

__attribute__((visibility("default"))) const tga_ops *tga_cuda_backend_init(char *why, size_t why_size) {
    static int ready;
    if (ready) return published_ops;
    int device = 0;
    struct cudaDeviceProp prop;
    if (!choose_device(why, why_size, &device, &prop)) return NULL;
    int missing = first_missing_op(&cuda_ops);
    if (missing >= 0) {
        snprintf(why, why_size, "the CUDA op table lacks op number %d of kernels/ops.h", missing);
        return NULL;
    }
    if (!tga_cuda_memory_init(why, why_size) || !tga_cuda_gemm_init(why, why_size) ||
        !tga_cuda_attention_forward_init(why, why_size) || !tga_cuda_attention_backward_init(why, why_size))
        return NULL;
    snprintf(backend_name, sizeof backend_name, "cuda (device %d: %s, sm_%d%d, %.1f GiB, GEMM %s, %s)", device,
             prop.name, prop.major, prop.minor, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0),
             tga_cuda_gemm_precision(), tga_cuda_attention_kernels());
    ready = 1;
    return published_ops;
}
