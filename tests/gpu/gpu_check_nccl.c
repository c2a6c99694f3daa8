/* GPU check of the CUDA backend's device collectives (kernels/cuda/nccl.c) on one GPU: a
 * communicator of one rank, in which a sum over ranks and a gather both hand their input through
 * unchanged, so the reference is the input itself. Each collective is checked together with the
 * ordering events: kernels on the compute stream write its input just before it, a kernel reads
 * its output just after it, and the host downloads without calling wait (the download waits on
 * the compute stream only). A missing event then shows as a partly scaled result.
 *
 * One "PASS|FAIL check ..." line per check, then "PASS|FAIL gpu_check_nccl"; or
 * "SKIP gpu_check_nccl: why" when NCCL cannot be loaded or the backend was built without nccl.h.
 * Exit code 0 (pass or skip), 1 (failures), 2 (no CUDA backend). Several ranks are dist's to check.
 *
 *   gpu_check_nccl          (TGA_CUDA_LIBRARY names libtga_cuda.so when it is not next to it) */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/collectives.h"
#include "kernels/ops.h"
#include "runtime/backend.h"
#include "tests/testutil.h"

/* Large enough that the scaling kernels before a collective are still running when it is
 * enqueued; odd, so that a count rounded down to a vector width leaves poisoned elements. */
#define N_ELEMENTS ((size_t)(1 << 24) + 3)
#define SCALINGS_BEFORE 8 /* each x2: exact in float, as is the x0.5 after */
#define WAIT_LIMIT_S 60.0

static const tga_ops *gpu;
static const tga_coll_ops *coll;
static int failures;

static void report(int pass, const char *check, const char *detail) {
    printf("%s %s%s%s\n", pass ? "PASS" : "FAIL", check, *detail ? ": " : "", detail);
    fflush(stdout);
    failures += !pass;
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes);
    if (!p) {
        fprintf(stderr, "gpu_check_nccl: out of host memory\n");
        exit(2);
    }
    return p;
}

static float *device_from_host(const float *host, size_t n) {
    float *d = gpu->alloc(n * sizeof *d);
    if (!d) {
        fprintf(stderr, "gpu_check_nccl: cannot allocate %zu floats on the GPU\n", n);
        exit(2);
    }
    gpu->upload(d, host, n * sizeof *d);
    return d;
}

/* Elements whose bits differ from want (a NaN left by an unwritten element always differs). */
static size_t mismatches_on_device(const float *dev, const float *want, size_t n) {
    float *got = xmalloc(n * sizeof *got);
    gpu->download(got, dev, n * sizeof *got);
    size_t mismatches = 0;
    for (size_t i = 0; i < n; i++)
        mismatches += memcmp(&got[i], &want[i], sizeof *got) != 0;
    free(got);
    return mismatches;
}

static void report_mismatches(const char *check, const char *buffer, size_t mismatches) {
    char detail[128];
    snprintf(detail, sizeof detail, "%s: %zu of %zu elements differ", buffer, mismatches, N_ELEMENTS);
    report(mismatches == 0, check, detail);
}

/* want[i] = x[i] * 2^exponent, computed on the host in double (exact). */
static float *scaled(const float *x, int exponent) {
    float *want = xmalloc(N_ELEMENTS * sizeof *want);
    for (size_t i = 0; i < N_ELEMENTS; i++)
        want[i] = (float)ldexp((double)x[i], exponent);
    return want;
}

static void scale_before_collective(float *dev) {
    for (int i = 0; i < SCALINGS_BEFORE; i++)
        gpu->scale_inplace(dev, 2.0f, N_ELEMENTS);
}

static void check_wait(const char *check) {
    char err[512] = "";
    int status = coll->wait(WAIT_LIMIT_S, check, err, sizeof err);
    report(status == 0, check, status == 0 ? "wait returned 0" : err);
}

typedef int (*in_place_collective)(float *buf, size_t n, char *err, size_t cap);

static int reduce_to_root(float *buf, size_t n, char *err, size_t cap) {
    return coll->reduce_sum(buf, n, 0, err, cap);
}

static int broadcast_from_root(float *buf, size_t n, char *err, size_t cap) {
    return coll->broadcast(buf, n, 0, err, cap);
}

/* In place: with one rank the result (sum, or the root's values) is the input, scaled before and
 * once after. */
static void check_in_place(const char *check, in_place_collective collective, const float *x) {
    float *buf = device_from_host(x, N_ELEMENTS);
    scale_before_collective(buf);
    char err[512] = "";
    if (collective(buf, N_ELEMENTS, err, sizeof err) != 0) {
        report(0, check, err);
    } else {
        gpu->scale_inplace(buf, 0.5f, N_ELEMENTS);
        float *want = scaled(x, SCALINGS_BEFORE - 1);
        report_mismatches(check, "result", mismatches_on_device(buf, want, N_ELEMENTS));
        free(want);
        check_wait(check);
    }
    gpu->free(buf);
}

/* broadcast_bf16 with one rank: the bf16 values stay; they are written by to_bf16 just before the
 * collective and read by from_bf16 just after it (both on the compute stream), into a buffer
 * poisoned with NaN. */
static void check_broadcast_bf16(const float *x) {
    const char *check = "broadcast_bf16 (1 rank, root 0, in place, ordered)";
    float *poison = xmalloc(N_ELEMENTS * sizeof *poison), *want = xmalloc(N_ELEMENTS * sizeof *want);
    for (size_t i = 0; i < N_ELEMENTS; i++) {
        poison[i] = NAN;
        want[i] = tga_bf16_round(x[i]);
    }
    float *src = device_from_host(x, N_ELEMENTS), *back = device_from_host(poison, N_ELEMENTS);
    uint16_t *buf = gpu->alloc(N_ELEMENTS * sizeof *buf);
    char err[512] = "";
    if (!buf) {
        report(0, check, "cannot allocate the bf16 buffer");
    } else {
        gpu->to_bf16(buf, src, N_ELEMENTS);
        if (coll->broadcast_bf16(buf, N_ELEMENTS, 0, err, sizeof err) != 0) {
            report(0, check, err);
        } else {
            gpu->from_bf16(back, buf, N_ELEMENTS);
            report_mismatches(check, "result", mismatches_on_device(back, want, N_ELEMENTS));
            check_wait(check);
        }
        gpu->free(buf);
    }
    gpu->free(src);
    gpu->free(back);
    free(poison);
    free(want);
}

typedef int (*copying_collective)(const float *send, float *recv, size_t count, char *err, size_t cap);

/* reduce_scatter_sum and allgather with one rank: recv = send, into a NaN-poisoned buffer; send
 * must be left as it was. */
static void check_copying(const char *check, copying_collective collective, const float *x) {
    float *poison = xmalloc(N_ELEMENTS * sizeof *poison);
    for (size_t i = 0; i < N_ELEMENTS; i++)
        poison[i] = NAN;
    float *send = device_from_host(x, N_ELEMENTS), *recv = device_from_host(poison, N_ELEMENTS);
    free(poison);
    scale_before_collective(send);
    char err[512] = "";
    if (collective(send, recv, N_ELEMENTS, err, sizeof err) != 0) {
        report(0, check, err);
    } else {
        gpu->scale_inplace(recv, 0.5f, N_ELEMENTS);
        float *want_recv = scaled(x, SCALINGS_BEFORE - 1), *want_send = scaled(x, SCALINGS_BEFORE);
        report_mismatches(check, "recv", mismatches_on_device(recv, want_recv, N_ELEMENTS));
        report_mismatches(check, "send", mismatches_on_device(send, want_send, N_ELEMENTS));
        free(want_recv);
        free(want_send);
        check_wait(check);
    }
    gpu->free(send);
    gpu->free(recv);
}

/* Misuse is an error message, not a crash: a collective before init, a rank outside the world. */
static void check_refusals(void) {
    char err[512] = "";
    float unused = 0;
    int status = coll->allreduce_sum(&unused, 1, err, sizeof err);
    report(status != 0 && *err, "allreduce_sum before init is refused", err);
    unsigned char id[TGA_COLL_ID_BYTES] = {0};
    err[0] = '\0';
    status = coll->init(id, 1, 1, err, sizeof err);
    report(status != 0 && *err, "init of rank 1 in a world of 1 is refused", err);
}

/* The library make_id will open, probed here so that its absence is a SKIP, not a FAIL. */
static int nccl_loadable(char *why, size_t why_size) {
    const char *env = getenv("TGA_NCCL_LIBRARY");
    const char *path = env && *env ? env : "libnccl.so.2";
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(why, why_size, "cannot load %s (%s)", path, dlerror());
        return 0;
    }
    dlclose(library);
    return 1;
}

static int start_one_rank(void) {
    char err[512] = "";
    unsigned char id[TGA_COLL_ID_BYTES];
    int started = coll->make_id(id, err, sizeof err) == 0 && coll->init(id, 0, 1, err, sizeof err) == 0;
    report(started, "make_id + init (1 rank)", started ? coll->name : err);
    if (started) report(strncmp(coll->name, "nccl 2.", 7) == 0, "name after init", coll->name);
    return started;
}

int main(void) {
    if (tga_backend_select("cuda", 0) != TGA_OK) {
        fprintf(stderr, "gpu_check_nccl: %s\n", tga_error_message());
        return 2;
    }
    gpu = tga_active_ops;
    coll = tga_active_coll;
    char why[512];
    if (!coll) {
        printf("SKIP gpu_check_nccl: %s has no collectives (built without nccl.h)\n", gpu->name);
        return 0;
    }
    if (!nccl_loadable(why, sizeof why)) {
        printf("SKIP gpu_check_nccl: %s\n", why);
        return 0;
    }
    printf("gpu_check_nccl: backend %s\n", gpu->name);
    check_refusals();
    if (start_one_rank()) {
        uint64_t rng = 20240611;
        float *x = tu_alloc_uniform(N_ELEMENTS, -1.0f, 1.0f, &rng);
        check_in_place("allreduce_sum (1 rank, in place, ordered)", coll->allreduce_sum, x);
        check_in_place("reduce_sum (1 rank, root 0, in place, ordered)", reduce_to_root, x);
        check_in_place("broadcast (1 rank, root 0, in place, ordered)", broadcast_from_root, x);
        check_broadcast_bf16(x);
        check_copying("reduce_scatter_sum (1 rank, ordered)", coll->reduce_scatter_sum, x);
        check_copying("allgather (1 rank, ordered)", coll->allgather, x);
        free(x);
    }
    coll->destroy();
    coll->destroy(); /* a second destroy must be a no-op */
    printf("%s gpu_check_nccl\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
