/* Kernel benchmark of the CUDA backend at the shapes of a Mistral-7B stage-1 step (dim 4096, 32
 * heads / 8 kv heads of 128, FFN 14336, vocabulary 32000; per sample 576 image tokens + 104 text
 * tokens; projector 1024 -> 4096 -> 4096, 64 supervised tokens per sample).
 *
 *   bench_kernels [--quick] [--samples B]     (TGA_CUDA_LIBRARY may name libtga_cuda.so)
 *
 * Every op runs through the op table the trainer uses (the backend is loaded by
 * runtime/backend.c), timed with CUDA events: --warmup untimed calls, then the median of the timed
 * ones, each preceded by an untimed write of a buffer twice the size of the L2 cache so that no
 * call finds its inputs there. Each line gives the achieved TFLOP/s (compute-bound ops) or GB/s
 * (memory-bound ops, bytes read + written once) next to the ceiling it should be read against:
 * ~790 TFLOP/s for a dense bf16 library GEMM on an H200 (our GEMMs are TF32 or fp32, whose
 * ceilings are ~495 and ~67 TFLOP/s), and the device-to-device copy bandwidth measured first in
 * the same run (the copy op is cudaMemcpyAsync). Peers: the projector's linear layers next to the
 * raw cuBLASLt GEMM of the same shape; each linear layer next to its bf16-weight twin
 * (model.dtype: bf16; the rounding of the activations to bf16 included) with the speed-up over the
 * fp32-weight op; our attention (both kernel sets: mma.sync, and wgmma where the device is a
 * Hopper) next to cuDNN's fused attention on the same operands (model.attention: cudnn) with
 * the ratio cuDNN time / ours, fp32 <-> bf16 conversions included wherever the op does them (cuDNN
 * and wgmma convert, mma.sync reads fp32); n/a where cuDNN cannot be loaded.
 *
 * The program is plain C and never links CUDA: the events come from the CUDA runtime that the
 * backend library has already loaded (dlopen with RTLD_NOLOAD). Events are recorded on the legacy
 * default stream, which orders with the backend's blocking stream. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "runtime/backend.h"
#include "runtime/error.h"

#define GEMM_CEILING_TFLOPS 790.0 /* dense bf16 through a library GEMM, H200 (design/GPU.md) */
#define L2_FLUSH_BYTES ((size_t)256 << 20)

/* ---- CUDA events through the already loaded runtime ------------------------------------------- */

typedef void *cuda_event;
static struct {
    int (*create)(cuda_event *);
    int (*record)(cuda_event, void *stream);
    int (*synchronize)(cuda_event);
    int (*elapsed_ms)(float *, cuda_event, cuda_event);
} events;

static int load_events(void) {
    void *rt = dlopen("libcudart.so.13", RTLD_LAZY | RTLD_NOLOAD);
    if (!rt) rt = dlopen("libcudart.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!rt) return 0;
    *(void **)&events.create = dlsym(rt, "cudaEventCreate");
    *(void **)&events.record = dlsym(rt, "cudaEventRecord");
    *(void **)&events.synchronize = dlsym(rt, "cudaEventSynchronize");
    *(void **)&events.elapsed_ms = dlsym(rt, "cudaEventElapsedTime");
    return events.create && events.record && events.synchronize && events.elapsed_ms;
}

/* ---- one benchmark case ---------------------------------------------------------------------- */

typedef enum {
    OP_COPY, OP_GEMM, OP_LINEAR_FWD, OP_LINEAR_BWD, OP_LINEAR_FWD_BF16, OP_LINEAR_BWD_BF16, OP_EMBEDDING_FWD, OP_RMSNORM_FWD, OP_ADD_RMSNORM_FWD,
    OP_RMSNORM_BWD, OP_ROPE, OP_ATTENTION_FWD, OP_ATTENTION_BWD, OP_SWIGLU_FWD, OP_SWIGLU_BWD, OP_SWIGLU_FWD_BF16, OP_SWIGLU_BWD_BF16, OP_GELU_FWD,
    OP_GELU_BWD, OP_BIAS_GELU_FWD, OP_GELU_BIAS_BWD, OP_LM_HEAD, OP_POOL_FWD, OP_POOL_BWD, OP_ALIGN, OP_ALIGN_FUSED_FWD, OP_ALIGN_FUSED_BWD, OP_ADD, OP_SCALE, OP_SUM_SQUARES, OP_ALL_FINITE,
    OP_ADAMW, OP_TOPK,
} bench_op;

/* Operands are named after their role in the op's signature (kernels/ops.h). */
typedef struct bench_case {
    bench_op op;
    const char *name;
    char shape[112];
    double flops, bytes; /* per call; flops > 0 marks a compute-bound op */
    int M, N, K, B, T, H, KVH, hd, V, chunk, trans_a, trans_b;
    size_t n;
    float *x, *y, *z, *w, *u, *v, *bias;
    tga_bf16 *w_bf16; /* the bf16 copy of w for the *_bf16 ops */
    tga_bf16 *gate_bf16, *up_bf16, *out_bf16; /* swiglu_*_bf16: stored gate and up, and the output */
    float *dx, *dy, *dz; /* gradient outputs */
    int *ints;
    tga_segments seg, ret_seg;
    tga_align_args align;
    const float *layers[9]; /* fused alignment: the hidden state of each align layer */
    int n_layers;
} bench_case;

static void run_case(const bench_case *c) {
    double sink_d, sink_e;
    switch (c->op) {
    case OP_COPY: OPS->copy(c->y, c->x, c->n * sizeof(float)); break;
    case OP_GEMM: OPS->gemm(c->trans_a, c->trans_b, c->M, c->N, c->K, 1.0f, c->x, c->trans_a ? c->M : c->K, c->w,
                            c->trans_b ? c->K : c->N, 0.0f, c->y, c->N); break;
    case OP_LINEAR_FWD: OPS->linear_forward(c->y, c->x, c->w, c->bias, c->M, c->K, c->N); break;
    case OP_LINEAR_BWD: OPS->linear_backward(c->x, c->u, c->v, c->y, c->z, c->w, c->M, c->K, c->N, 0); break;
    case OP_LINEAR_FWD_BF16: OPS->linear_forward_bf16(c->y, c->x, c->w_bf16, c->bias, c->M, c->K, c->N); break;
    case OP_LINEAR_BWD_BF16:
        OPS->linear_backward_bf16(c->x, c->u, c->v, c->y, c->z, c->w_bf16, c->M, c->K, c->N, 0);
        break;
    case OP_EMBEDDING_FWD: OPS->embedding_forward(c->y, c->ints, c->w, c->M, c->N); break;
    case OP_RMSNORM_FWD: OPS->rmsnorm_forward(c->y, c->z, c->x, c->w, c->M, c->N, 1e-5f); break;
    case OP_ADD_RMSNORM_FWD: OPS->add_rmsnorm_forward(c->x, c->u, c->y, c->z, c->w, c->M, c->N, 1e-5f); break;
    case OP_RMSNORM_BWD: OPS->rmsnorm_backward(c->x, NULL, c->y, c->u, c->w, c->z, c->M, c->N, 1); break;
    case OP_ROPE: OPS->rope(c->x, c->w, c->B, c->T, c->H, c->hd, 0); break;
    case OP_ATTENTION_FWD:
        OPS->attention_forward(c->y, c->z, c->x, c->u, c->v, c->ints, c->B, c->T, c->H, c->KVH, c->hd);
        break;
    case OP_ATTENTION_BWD:
        OPS->attention_backward(c->dx, c->dy, c->dz, c->w, c->x, c->u, c->v, c->y, c->z, c->ints, c->B, c->T, c->H,
                                c->KVH, c->hd);
        break;
    case OP_SWIGLU_FWD: OPS->swiglu_forward(c->y, c->x, c->u, c->n); break;
    case OP_SWIGLU_BWD: OPS->swiglu_backward(c->y, c->z, c->w, c->x, c->u, c->n); break;
    case OP_SWIGLU_FWD_BF16: OPS->swiglu_forward_bf16(c->out_bf16, c->gate_bf16, c->up_bf16, c->x, c->u, c->n); break;
    case OP_SWIGLU_BWD_BF16:
        OPS->swiglu_backward_bf16(c->y, c->z, c->w, c->gate_bf16, c->up_bf16, c->n);
        break;
    case OP_GELU_FWD: OPS->gelu_forward(c->y, c->x, c->n); break;
    case OP_GELU_BWD: OPS->gelu_backward(c->y, c->w, c->x, c->n); break;
    case OP_BIAS_GELU_FWD: OPS->bias_gelu_forward(c->y, c->z, c->bias, c->M, c->N); break;
    case OP_GELU_BIAS_BWD: OPS->gelu_bias_backward(c->y, c->v, c->w, c->x, c->M, c->N); break;
    case OP_LM_HEAD:
        OPS->lm_head_ce(&sink_d, c->y, NULL, c->x, c->w, c->ints, c->M, c->K, c->V, 1.0f, c->z, c->chunk);
        break;
    case OP_POOL_FWD: OPS->segment_mean_forward(c->y, c->x, &c->seg, c->N); break;
    case OP_POOL_BWD: OPS->segment_mean_backward(c->x, c->y, &c->seg, c->N); break;
    case OP_ALIGN_FUSED_FWD:
        sink_d = sink_e = 0;
        OPS->tga_align_fused_forward(&sink_d, &sink_e, NULL, NULL, c->u, c->v, c->y, c->z, c->layers, c->n_layers,
                                     &c->seg, &c->ret_seg, &c->align);
        break;
    case OP_ALIGN_FUSED_BWD: OPS->tga_align_fused_backward(c->x, c->y, c->z, &c->seg, &c->ret_seg, c->N); break;
    case OP_ALIGN:
        sink_d = sink_e = 0;
        OPS->tga_align_loss(&sink_d, &sink_e, NULL, NULL, c->y, c->z, &c->align);
        break;
    case OP_ADD: OPS->add_inplace(c->y, c->x, c->n); break;
    case OP_SCALE: OPS->scale_inplace(c->x, 0.999f, c->n); break;
    case OP_SUM_SQUARES: sink_d = OPS->sum_squares(c->x, c->n); (void)sink_d; break;
    case OP_ALL_FINITE: (void)OPS->all_finite(c->x, c->n); break;
    case OP_ADAMW: OPS->adamw(c->x, c->y, c->u, c->v, c->n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 10); break;
    case OP_TOPK: OPS->topk_merge(c->y, c->ints, c->x, c->M, c->N, c->N, 0, c->K); break;
    }
}

/* ---- timing ---------------------------------------------------------------------------------- */

typedef struct bench_settings {
    int warmup, repeats;
    float *flush;
    double copy_gbs; /* measured first */
} bench_settings;

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_ms(const bench_case *c, const bench_settings *s) {
    for (int i = 0; i < s->warmup; i++) run_case(c);
    cuda_event start, stop;
    events.create(&start);
    events.create(&stop);
    double *ms = malloc((size_t)s->repeats * sizeof *ms);
    for (int i = 0; i < s->repeats; i++) {
        OPS->zero(s->flush, L2_FLUSH_BYTES);
        events.record(start, NULL);
        run_case(c);
        events.record(stop, NULL);
        events.synchronize(stop);
        float elapsed = 0;
        events.elapsed_ms(&elapsed, start, stop);
        ms[i] = elapsed;
    }
    qsort(ms, (size_t)s->repeats, sizeof *ms, compare_doubles);
    double median = ms[s->repeats / 2];
    free(ms);
    return median;
}

/* One line: the op, its shape, the median and the throughput against its ceiling; `extra` (may be
 * empty) is appended. */
static void report_with(const bench_case *c, double ms, const bench_settings *s, const char *extra) {
    if (c->flops > 0) {
        double tflops = c->flops / (ms * 1e-3) / 1e12;
        printf("%-22s %-52s %9.3f ms %8.1f TFLOP/s  %5.1f%% of %.0f (bf16 GEMM)%s\n", c->name, c->shape, ms, tflops,
               100.0 * tflops / GEMM_CEILING_TFLOPS, GEMM_CEILING_TFLOPS, extra);
    } else {
        double gbs = c->bytes / (ms * 1e-3) / 1e9;
        printf("%-22s %-52s %9.3f ms %8.1f GB/s     %5.1f%% of %.0f (copy)%s\n", c->name, c->shape, ms, gbs,
               s->copy_gbs > 0 ? 100.0 * gbs / s->copy_gbs : 0.0, s->copy_gbs, extra);
    }
    fflush(stdout);
}

static void report(const bench_case *c, double ms, const bench_settings *s) { report_with(c, ms, s, ""); }

/* ---- device buffers ---------------------------------------------------------------------------- */

#define MAX_BUFFERS 32
static void *buffers[MAX_BUFFERS];
static int n_buffers;

/* n floats of device memory filled with small values (alloc zeroes; uniform-ish values keep the
 * exp/erf paths honest), or zeros. */
static float *device_floats(size_t n, float scale) {
    float *d = OPS->alloc(n * sizeof(float));
    if (!d || n_buffers == MAX_BUFFERS) {
        fprintf(stderr, "bench_kernels: cannot allocate %zu floats on the GPU\n", n);
        exit(1);
    }
    buffers[n_buffers++] = d;
    if (scale != 0.0f) {
        const size_t block = (size_t)1 << 20;
        float *host = malloc(block * sizeof *host);
        for (size_t i = 0; i < block; i++) host[i] = scale * (float)((int)(i * 2654435761u % 2001u) - 1000) / 1000.0f;
        for (size_t off = 0; off < n; off += block)
            OPS->upload(d + off, host, (n - off < block ? n - off : block) * sizeof(float));
        free(host);
    }
    return d;
}

static int *device_ints(const int *host, size_t n) {
    int *d = OPS->alloc(n * sizeof(int));
    if (!d || n_buffers == MAX_BUFFERS) {
        fprintf(stderr, "bench_kernels: cannot allocate %zu ints on the GPU\n", n);
        exit(1);
    }
    buffers[n_buffers++] = d;
    OPS->upload(d, host, n * sizeof(int));
    return d;
}

/* A bf16 copy (to_bf16) of n floats of device memory. */
static tga_bf16 *device_bf16_copy(const float *src, size_t n) {
    tga_bf16 *d = OPS->alloc(n * sizeof *d);
    if (!d || n_buffers == MAX_BUFFERS) {
        fprintf(stderr, "bench_kernels: cannot allocate %zu bf16 values on the GPU\n", n);
        exit(1);
    }
    buffers[n_buffers++] = d;
    OPS->to_bf16(d, src, n);
    return d;
}

static void free_buffers(void) {
    for (int i = 0; i < n_buffers; i++) OPS->free(buffers[i]);
    n_buffers = 0;
}

static void bench(bench_case *c, bench_settings *s) {
    report(c, median_ms(c, s), s);
    free_buffers();
}

/* Times the same operands as another op (memory-bound ops give their bytes, others keep flops). */
static void measure(bench_case *c, bench_op op, const char *name, double bytes, const bench_settings *s) {
    c->op = op;
    c->name = name;
    if (bytes > 0) c->bytes = bytes;
    report(c, median_ms(c, s), s);
}

/* Times the bf16-weight twin of a linear case (its weight w [N, K] copied to bf16) and prints how
 * many times faster it is than the fp32-weight op measured at fp32_ms. */
static void measure_bf16_twin(bench_case *c, bench_op op, const char *name, double fp32_ms, const bench_settings *s) {
    c->w_bf16 = device_bf16_copy(c->w, (size_t)c->N * c->K);
    c->op = op;
    c->name = name;
    const double ms = median_ms(c, s);
    char versus[64];
    snprintf(versus, sizeof versus, "  %.2fx the fp32-weight op", fp32_ms / ms);
    report_with(c, ms, s, versus);
}

/* ---- the step's ops ---------------------------------------------------------------------------- */

enum { DIM = 4096, HEADS = 32, KV_HEADS = 8, HEAD_DIM = 128, FFN = 14336, VOCAB = 32000, PATCHES = 576,
       TEXT = 104, VISION = 1024, SUPERVISED = 64 };

static void bench_copy(bench_settings *s) {
    bench_case c = {.op = OP_COPY, .name = "copy (cudaMemcpy D2D)", .n = (size_t)1 << 28};
    snprintf(c.shape, sizeof c.shape, "1 GiB");
    c.bytes = 2.0 * (double)c.n * sizeof(float);
    c.x = device_floats(c.n, 0);
    c.y = device_floats(c.n, 0);
    double ms = median_ms(&c, s);
    s->copy_gbs = c.bytes / (ms * 1e-3) / 1e9;
    report(&c, ms, s);
    free_buffers();
}

/* out[M,N] = in[M,K] W[N,K]^T, as the linear op and as the bare GEMM (its peer). */
static void bench_projection(bench_settings *s, const char *what, int M, int K, int N, int with_bias) {
    bench_case c = {.op = OP_LINEAR_FWD, .name = "linear_forward", .M = M, .K = K, .N = N};
    snprintf(c.shape, sizeof c.shape, "%s %dx%d -> %d%s", what, M, K, N, with_bias ? " +bias" : "");
    c.flops = 2.0 * M * N * K;
    c.x = device_floats((size_t)M * K, 1);
    c.w = device_floats((size_t)N * K, 0.02f);
    c.y = device_floats((size_t)M * N, 0);
    c.bias = with_bias ? device_floats((size_t)N, 0.1f) : NULL;
    const double fp32_ms = median_ms(&c, s);
    report(&c, fp32_ms, s);
    c.trans_a = 0;
    c.trans_b = 1;
    measure(&c, OP_GEMM, "gemm (cuBLASLt peer)", 0, s);
    measure_bf16_twin(&c, OP_LINEAR_FWD_BF16, "linear_forward_bf16", fp32_ms, s);
    free_buffers();
}

/* din[M,K] = dout[M,N] W[N,K]; with weight gradients when `trainable` (the projector). */
static void bench_linear_backward(bench_settings *s, const char *what, int M, int K, int N, int trainable) {
    bench_case c = {.op = OP_LINEAR_BWD, .name = "linear_backward", .M = M, .K = K, .N = N};
    snprintf(c.shape, sizeof c.shape, "%s %dx%d -> %d %s", what, M, K, N, trainable ? "din+dW+db" : "din");
    c.flops = 2.0 * M * N * K * (trainable ? 2 : 1);
    c.x = device_floats((size_t)M * K, 0);
    c.y = device_floats((size_t)M * N, 1);
    c.z = device_floats((size_t)M * K, 1);
    c.w = device_floats((size_t)N * K, 0.02f);
    c.u = trainable ? device_floats((size_t)N * K, 0) : NULL;
    c.v = trainable ? device_floats((size_t)N, 0) : NULL;
    const double fp32_ms = median_ms(&c, s);
    report(&c, fp32_ms, s);
    measure_bf16_twin(&c, OP_LINEAR_BWD_BF16, "linear_backward_bf16", fp32_ms, s);
    free_buffers();
}

static void bench_norms(bench_settings *s, int N) {
    const size_t n = (size_t)N * DIM;
    bench_case c = {.M = N, .N = DIM};
    snprintf(c.shape, sizeof c.shape, "N=%d D=%d", N, DIM);
    c.x = device_floats(n, 1);
    c.u = device_floats(n, 1);
    c.y = device_floats(n, 0);
    c.z = device_floats((size_t)N, 1);
    c.w = device_floats(DIM, 1);
    measure(&c, OP_RMSNORM_FWD, "rmsnorm_forward", 2.0 * n * 4, s);
    measure(&c, OP_ADD_RMSNORM_FWD, "add_rmsnorm_forward", 4.0 * n * 4, s);
    measure(&c, OP_RMSNORM_BWD, "rmsnorm_backward", 4.0 * n * 4, s); /* dout, in, din read + write */
    free_buffers();
}

static void bench_embedding_rope(bench_settings *s, int B, int T) {
    const int N = B * T;
    int *ids = malloc((size_t)N * sizeof *ids);
    for (int i = 0; i < N; i++) ids[i] = i % T < PATCHES ? -200 : (int)((unsigned)i * 2654435761u % VOCAB);
    bench_case c = {.op = OP_EMBEDDING_FWD, .name = "embedding_forward", .M = N, .N = DIM};
    snprintf(c.shape, sizeof c.shape, "N=%d D=%d (%d%% image rows)", N, DIM, 100 * PATCHES / T);
    c.bytes = 2.0 * N * DIM * 4;
    c.ints = device_ints(ids, (size_t)N);
    c.w = device_floats((size_t)VOCAB * DIM, 0.02f);
    c.y = device_floats((size_t)N * DIM, 0);
    bench(&c, s);
    free(ids);
    float *table = malloc((size_t)T * HEAD_DIM * sizeof *table);
    tga_rope_table(table, T, HEAD_DIM, 1e6);
    bench_case r = {.op = OP_ROPE, .name = "rope", .B = B, .T = T, .H = HEADS, .hd = HEAD_DIM};
    snprintf(r.shape, sizeof r.shape, "q: B=%d T=%d heads=%d hd=%d", B, T, HEADS, HEAD_DIM);
    r.bytes = 2.0 * N * HEADS * HEAD_DIM * 4;
    r.x = device_floats((size_t)N * HEADS * HEAD_DIM, 1);
    r.w = device_floats((size_t)T * HEAD_DIM, 0);
    OPS->upload(r.w, table, (size_t)T * HEAD_DIM * sizeof *table);
    bench(&r, s);
    free(table);
}

/* Times c with the attention implementation `impl` (runtime/backend.h: tga-mma, tga-wgmma, cudnn):
 * its forward, and its backward when `backward`; a "n/a" line where impl cannot run here. Returns
 * the forward and backward medians (0 when not measured). `label` names the lines; ratios against
 * cuDNN's times (when measured, > 0) are appended as "x.xx of cuDNN" (cuDNN time / ours: above 1 is
 * faster than cuDNN). */
static void bench_attention_impl(bench_case *c, const char *impl, const char *label, int backward,
                                 double forward_flops, const double peer_ms[2], double ms_out[2],
                                 const bench_settings *s) {
    static char names[2][48];
    ms_out[0] = ms_out[1] = 0;
    if (tga_backend_set_attention(impl) != TGA_OK) {
        printf("%-22s %-52s %9s    n/a (%s)\n", label, c->shape, "", tga_error_message());
        fflush(stdout);
        tga_error_clear();
        return;
    }
    for (int pass = 0; pass < 1 + backward; pass++) {
        snprintf(names[pass], sizeof names[pass], "%s %s", label, pass ? "bwd" : "fwd");
        c->op = pass ? OP_ATTENTION_BWD : OP_ATTENTION_FWD;
        c->name = names[pass];
        c->flops = pass ? 2.5 * forward_flops : forward_flops;
        ms_out[pass] = median_ms(c, s);
        char extra[48] = "";
        if (peer_ms && peer_ms[pass] > 0)
            snprintf(extra, sizeof extra, "  %.2fx of cuDNN", peer_ms[pass] / ms_out[pass]);
        report_with(c, ms_out[pass], s, extra);
    }
}

/* FLOPs as design/GPU.md counts them: forward 4 B H S^2 D, halved when causal; backward 2.5x. Our
 * two kernel sets (mma.sync on every GPU, wgmma on Hopper), forward and backward, next to cuDNN's
 * fused attention on the same operands (the peer). The mma.sync pass measures cuDNN first and
 * keeps its times for shape `shape_index`; the wgmma pass runs last in the program, since a trap
 * there ends the process (kernels/cuda/attention_sm90.cu: a wait that never completes). */
static double cudnn_ms[2][2];

static void bench_attention(bench_settings *s, int B, int T, int shape_index, int wgmma) {
    int *lengths = malloc((size_t)B * sizeof *lengths);
    for (int b = 0; b < B; b++) lengths[b] = T;
    const size_t nq = (size_t)B * T * HEADS * HEAD_DIM, nkv = (size_t)B * T * KV_HEADS * HEAD_DIM;
    bench_case c = {.B = B, .T = T, .H = HEADS, .KVH = KV_HEADS, .hd = HEAD_DIM};
    snprintf(c.shape, sizeof c.shape, "B=%d T=%d H=%d KVH=%d hd=%d causal", B, T, HEADS, KV_HEADS, HEAD_DIM);
    const double forward_flops = 4.0 * B * HEADS * (double)T * T * HEAD_DIM / 2;
    c.ints = device_ints(lengths, (size_t)B);
    c.x = device_floats(nq, 1);
    c.u = device_floats(nkv, 1);
    c.v = device_floats(nkv, 1);
    c.y = device_floats(nq, 0);
    c.z = device_floats((size_t)B * HEADS * T, 0);
    c.w = device_floats(nq, 1); /* dout; the backward reads the forward's out (y) and lse (z) */
    c.dx = device_floats(nq, 0);
    c.dy = device_floats(nkv, 0);
    c.dz = device_floats(nkv, 0);
    double ours[2];
    if (wgmma) {
        bench_attention_impl(&c, "tga-wgmma", "attention wgmma", 1, forward_flops, cudnn_ms[shape_index], ours, s);
    } else {
        bench_attention_impl(&c, "cudnn", "cuDNN (peer)", 1, forward_flops, NULL, cudnn_ms[shape_index], s);
        bench_attention_impl(&c, "tga-mma", "attention mma.sync", 1, forward_flops, cudnn_ms[shape_index], ours, s);
    }
    if (tga_backend_set_attention("tga") != TGA_OK) {
        fprintf(stderr, "bench_kernels: %s\n", tga_error_message());
        exit(1);
    }
    free_buffers();
    free(lengths);
}

static void bench_activations(bench_settings *s, int N, int image_rows) {
    const size_t n = (size_t)N * FFN, m = (size_t)image_rows * DIM;
    bench_case c = {.n = n};
    snprintf(c.shape, sizeof c.shape, "N=%d F=%d", N, FFN);
    c.x = device_floats(n, 3);
    c.u = device_floats(n, 1);
    c.w = device_floats(n, 1);
    c.y = device_floats(n, 0);
    c.z = device_floats(n, 0);
    measure(&c, OP_SWIGLU_FWD, "swiglu_forward", 3.0 * n * 4, s);
    measure(&c, OP_SWIGLU_BWD, "swiglu_backward", 5.0 * n * 4, s);
    /* model.dtype bf16: gate, up and the output stored in bf16 (8 bytes read, 6 written per
     * element); the backward reads gate and up from there (8 read, 8 written) */
    c.gate_bf16 = device_bf16_copy(c.x, n);
    c.up_bf16 = device_bf16_copy(c.u, n);
    c.out_bf16 = device_bf16_copy(c.y, n);
    measure(&c, OP_SWIGLU_FWD_BF16, "swiglu_forward_bf16", 3.5 * n * 4, s);
    measure(&c, OP_SWIGLU_BWD_BF16, "swiglu_backward_bf16", 4.0 * n * 4, s);
    c.n = m;
    snprintf(c.shape, sizeof c.shape, "projector rows=%d D=%d", image_rows, DIM);
    measure(&c, OP_GELU_FWD, "gelu_forward", 2.0 * m * 4, s);
    measure(&c, OP_GELU_BWD, "gelu_backward", 3.0 * m * 4, s);
    /* the projector's fused ops: bias + GELU (pre read and written, act written); GELU backward with
     * the bias gradient (dact and pre read, dpre written, column sums on the way) */
    c.M = image_rows;
    c.N = DIM;
    c.bias = device_floats(DIM, 1);
    c.v = device_floats(DIM, 0);
    measure(&c, OP_BIAS_GELU_FWD, "bias_gelu_forward", 3.0 * m * 4, s);
    measure(&c, OP_GELU_BIAS_BWD, "gelu_bias_backward", 3.0 * m * 4, s);
    free_buffers();
}

/* Stage 1: dhidden only (the LM head is frozen); 64 supervised rows per sample. */
static void bench_lm_head(bench_settings *s, int B, int T) {
    const int N = B * T, chunk = 64;
    int *targets = malloc((size_t)N * sizeof *targets);
    for (int i = 0; i < N; i++) targets[i] = i % T >= T - SUPERVISED ? (int)((unsigned)i * 2654435761u % VOCAB) : -100;
    bench_case c = {.op = OP_LM_HEAD, .name = "lm_head_ce", .M = N, .K = DIM, .V = VOCAB, .chunk = chunk};
    snprintf(c.shape, sizeof c.shape, "N=%d (%d supervised) D=%d V=%d chunk=%d", N, B * SUPERVISED, DIM, VOCAB,
             chunk);
    c.flops = 2.0 * 2.0 * B * SUPERVISED * (double)VOCAB * DIM;
    c.ints = device_ints(targets, (size_t)N);
    c.x = device_floats((size_t)N * DIM, 1);
    c.w = device_floats((size_t)VOCAB * DIM, 0.02f);
    c.y = device_floats((size_t)N * DIM, 0);
    c.z = device_floats((size_t)chunk * (VOCAB + DIM), 0);
    bench(&c, s);
    free(targets);
}

/* Image spans pooled at one align layer, and the alignment terms on the pooled vectors. */
/* The fused alignment at TGA's 9 layers (10-18): to compare with 9 x (two segment_mean_forward +
 * tga_align_loss) above. The retrieved-text spans are 8 rows after each image. */
static void bench_align_fused(bench_settings *s, bench_case *c, int B, int T, const uint8_t *d_flags) {
    int *ret = malloc((size_t)4 * B * sizeof *ret);
    for (int b = 0; b < B; b++) {
        ret[b] = b * T + 1;
        ret[B + b] = 8;
        ret[2 * B + b] = b;
        ret[3 * B + b] = 8;
    }
    int *d_ret = device_ints(ret, (size_t)4 * B);
    c->ret_seg = (tga_segments){B, B, d_ret, d_ret + B, d_ret + 2 * B, d_ret + 3 * B};
    c->n_layers = 9;
    for (int j = 0; j < c->n_layers; j++) c->layers[j] = device_floats((size_t)B * T * DIM, 1);
    c->align = (tga_align_args){B, DIM, NULL, NULL, device_floats((size_t)9 * B * DIM, 1), d_flags, d_flags + B,
                                0.01f, 0.01f, 1e-8f};
    c->u = device_floats((size_t)9 * B * DIM, 0);
    c->v = device_floats((size_t)9 * B * DIM, 0);
    c->y = device_floats((size_t)9 * B * DIM, 0);
    c->z = device_floats((size_t)9 * B * DIM, 0);
    snprintf(c->shape, sizeof c->shape, "9 layers, n=%d, %d+8 rows each, D=%d", B, PATCHES, DIM);
    measure(c, OP_ALIGN_FUSED_FWD, "tga_align_fused_forward (+sync)", 9.0 * B * (PATCHES + 8) * DIM * 4, s);
    snprintf(c->shape, sizeof c->shape, "1 layer, n=%d, %d+8 rows each, D=%d", B, PATCHES, DIM);
    measure(c, OP_ALIGN_FUSED_BWD, "tga_align_fused_backward", 2.0 * B * (PATCHES + 8) * DIM * 4, s);
    free(ret);
}

static void bench_pooling_align(bench_settings *s, int B, int T) {
    int *table = malloc((size_t)4 * B * sizeof *table);
    for (int b = 0; b < B; b++) {
        table[b] = b * T + 9;          /* row_start */
        table[B + b] = PATCHES;        /* row_count */
        table[2 * B + b] = b;          /* out_index */
        table[3 * B + b] = PATCHES;    /* out_rows */
    }
    int *d_table = device_ints(table, (size_t)4 * B);
    bench_case c = {.N = DIM};
    c.seg = (tga_segments){B, B, d_table, d_table + B, d_table + 2 * B, d_table + 3 * B};
    snprintf(c.shape, sizeof c.shape, "%d spans of %d rows, D=%d", B, PATCHES, DIM);
    c.x = device_floats((size_t)B * T * DIM, 1);
    c.y = device_floats((size_t)B * DIM, 1);
    c.bytes = (double)B * PATCHES * DIM * 4;
    measure(&c, OP_POOL_FWD, "segment_mean_forward", 0, s);
    measure(&c, OP_POOL_BWD, "segment_mean_backward", 2 * c.bytes, s);
    uint8_t *flags = malloc((size_t)2 * B);
    memset(flags, 1, (size_t)2 * B);
    uint8_t *d_flags = OPS->alloc((size_t)2 * B);
    OPS->upload(d_flags, flags, (size_t)2 * B);
    float *r = device_floats((size_t)B * DIM, 1), *cap = device_floats((size_t)B * DIM, 1);
    c.align = (tga_align_args){B, DIM, c.y, r, cap, d_flags, d_flags + B, 0.01f, 0.01f, 1e-8f};
    c.y = device_floats((size_t)B * DIM, 0);
    c.z = device_floats((size_t)B * DIM, 0);
    snprintf(c.shape, sizeof c.shape, "n=%d D=%d", B, DIM);
    measure(&c, OP_ALIGN, "tga_align_loss (+sync)", 5.0 * B * DIM * 4, s);
    bench_align_fused(s, &c, B, T, d_flags);
    OPS->free(d_flags);
    free(flags);
    free(table);
    free_buffers();
}

static void bench_elementwise(bench_settings *s, int N, size_t n_params) {
    const size_t n = (size_t)N * DIM;
    bench_case c = {.n = n};
    snprintf(c.shape, sizeof c.shape, "n=%zu (N x D)", n);
    c.x = device_floats(n, 1);
    c.y = device_floats(n, 1);
    measure(&c, OP_ADD, "add_inplace", 3.0 * n * 4, s);
    measure(&c, OP_SCALE, "scale_inplace", 2.0 * n * 4, s);
    free_buffers();
    bench_case p = {.n = n_params};
    snprintf(p.shape, sizeof p.shape, "n=%zu (projector params)", n_params);
    p.x = device_floats(n_params, 0.02f);
    p.y = device_floats(n_params, 0.001f);
    p.u = device_floats(n_params, 0.001f);
    p.v = device_floats(n_params, 0);
    measure(&p, OP_SUM_SQUARES, "sum_squares (+sync)", (double)n_params * 4, s);
    measure(&p, OP_ALL_FINITE, "all_finite (+sync)", 0, s);
    measure(&p, OP_ADAMW, "adamw", 7.0 * n_params * 4, s);
    free_buffers();
}

/* Retrieval: a block of query scores merged into top-k lists. */
static void bench_topk(bench_settings *s) {
    const int rows = 256, cols = 16384, k = 16;
    bench_case c = {.op = OP_TOPK, .name = "topk_merge", .M = rows, .N = cols, .K = k};
    snprintf(c.shape, sizeof c.shape, "%d rows x %d scores, k=%d", rows, cols, k);
    c.bytes = (double)rows * cols * 4;
    c.x = device_floats((size_t)rows * cols, 1);
    float *empty = malloc((size_t)rows * k * sizeof *empty);
    int *none = malloc((size_t)rows * k * sizeof *none);
    for (int i = 0; i < rows * k; i++) {
        empty[i] = -INFINITY;
        none[i] = -1;
    }
    c.y = device_floats((size_t)rows * k, 0);
    OPS->upload(c.y, empty, (size_t)rows * k * sizeof *empty);
    c.ints = device_ints(none, (size_t)rows * k);
    bench(&c, s);
    free(empty);
    free(none);
}

int main(int argc, char **argv) {
    int quick = 0, samples = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "--samples") == 0 && i + 1 < argc) {
            samples = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: bench_kernels [--quick] [--samples B]\n");
            return 2;
        }
    }
    if (tga_backend_select("cuda", 0) != TGA_OK) {
        fprintf(stderr, "bench_kernels: %s\n", tga_error_message());
        return 2;
    }
    if (!load_events()) {
        fprintf(stderr, "bench_kernels: the CUDA runtime's event functions are not loaded\n");
        return 2;
    }
    const int B = samples > 0 ? samples : quick ? 2 : 8, T = PATCHES + TEXT, N = B * T;
    bench_settings s = {.warmup = quick ? 2 : 5, .repeats = quick ? 5 : 25};
    s.flush = OPS->alloc(L2_FLUSH_BYTES);
    if (!s.flush) {
        fprintf(stderr, "bench_kernels: cannot allocate the L2 flush buffer\n");
        return 1;
    }
    printf("bench_kernels: %s; Mistral-7B stage-1 shapes, %d samples of %d tokens; median of %d after %d "
           "warm-up, L2 flushed\n",
           OPS->name, B, T, s.repeats, s.warmup);
    bench_copy(&s);
    bench_projection(&s, "projector.0", B * PATCHES, VISION, DIM, 1);
    bench_projection(&s, "projector.2", B * PATCHES, DIM, DIM, 1);
    bench_linear_backward(&s, "projector.2", B * PATCHES, DIM, DIM, 1);
    bench_projection(&s, "wq", N, DIM, HEADS * HEAD_DIM, 0);
    bench_projection(&s, "wk", N, DIM, KV_HEADS * HEAD_DIM, 0);
    bench_projection(&s, "w_gate", N, DIM, FFN, 0);
    bench_projection(&s, "w_down", N, FFN, DIM, 0);
    bench_linear_backward(&s, "w_down", N, FFN, DIM, 0);
    bench_norms(&s, N);
    bench_embedding_rope(&s, B, T);
    bench_attention(&s, B, T, 0, 0);
    bench_attention(&s, 2, 2048, 1, 0); /* the goal's sequence length (1-2k) */
    bench_activations(&s, N, B * PATCHES);
    bench_lm_head(&s, B, T);
    bench_pooling_align(&s, B, T);
    bench_elementwise(&s, N, (size_t)VISION * DIM + DIM + (size_t)DIM * DIM + DIM);
    bench_topk(&s);
    bench_attention(&s, B, T, 0, 1);
    bench_attention(&s, 2, 2048, 1, 1);
    OPS->free(s.flush);
    printf("bench_kernels: done (all CUDA ops unverified on GPU until tests/gpu/run.sh has passed)\n");
    return 0;
}
