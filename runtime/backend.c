#define _POSIX_C_SOURCE 200809L /* readlink */
#include "runtime/backend.h"

#include <dlfcn.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/collectives.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/ops.h"
#include "runtime/log.h"

const tga_coll_ops *tga_active_coll = NULL;

static char description[512] = "none";

/* The CUDA backend library while it is the active backend, else NULL. */
static void *cuda_library;

const char *tga_backend_description(void) { return description; }

const char *tga_backends_compiled(void) {
#ifdef TGA_HAVE_CUDA
    return "cpu cuda";
#else
    return "cpu";
#endif
}

/* The CUDA library sits next to the executable unless TGA_CUDA_LIBRARY names it. */
static void cuda_library_path(char *path, size_t size) {
    const char *env = getenv("TGA_CUDA_LIBRARY");
    if (env && *env) {
        snprintf(path, size, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        snprintf(path, size, "libtga_cuda.so");
        return;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    /* a folder too long for the full name leaves the search to dlopen's path */
    if (snprintf(path, size, "%s/libtga_cuda.so", exe) >= (int)size) snprintf(path, size, "libtga_cuda.so");
}

/* A cheap probe before mapping ~1 GB of CUDA libraries: the driver library (small) must load and
 * report at least one device. Uses the driver API through dlopen only (never linked). */
static int gpu_present(char *why, size_t why_size) {
    void *drv = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!drv) {
        snprintf(why, why_size, "no NVIDIA driver (libcuda.so.1 not found)");
        return 0;
    }
    typedef int (*cu_init_fn)(unsigned);
    typedef int (*cu_count_fn)(int *);
    cu_init_fn cu_init;
    cu_count_fn cu_count;
    *(void **)(&cu_init) = dlsym(drv, "cuInit");
    *(void **)(&cu_count) = dlsym(drv, "cuDeviceGetCount");
    int n = 0;
    int ok = cu_init && cu_count && cu_init(0) == 0 && cu_count(&n) == 0 && n > 0;
    if (!ok) snprintf(why, why_size, "the NVIDIA driver reports no usable GPU");
    return ok; /* the driver stays loaded: the CUDA runtime will use it */
}

/* The backend's device collectives, or NULL: a library built without nccl.h lacks
 * `const tga_coll_ops *tga_cuda_collectives(void)`. */
static const tga_coll_ops *cuda_collectives(void *lib) {
    typedef const tga_coll_ops *(*collectives_fn)(void);
    collectives_fn collectives;
    *(void **)(&collectives) = dlsym(lib, "tga_cuda_collectives");
    return collectives ? collectives() : NULL;
}

typedef const tga_ops *(*cuda_init_fn)(char *, size_t);

/* Loads the CUDA backend; returns NULL with a reason when it cannot be used. The library exports
 * `const tga_ops *tga_cuda_backend_init(char *why, size_t why_size)`, which returns NULL (and a
 * reason) when no GPU is usable. *coll receives its collectives (NULL when it has none), *library
 * the library's handle. */
static const tga_ops *load_cuda(char *why, size_t why_size, const tga_coll_ops **coll, void **library) {
    if (!gpu_present(why, why_size)) return NULL;
    char path[PATH_MAX];
    cuda_library_path(path, sizeof path);
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(why, why_size, "cannot load the CUDA backend %.300s: %.180s", path, dlerror());
        return NULL;
    }
    cuda_init_fn init;
    *(void **)(&init) = dlsym(lib, "tga_cuda_backend_init");
    if (!init) {
        snprintf(why, why_size, "%.400s does not export tga_cuda_backend_init", path);
        dlclose(lib);
        return NULL;
    }
    const tga_ops *ops = init(why, why_size);
    if (!ops) return NULL; /* keep the library mapped: CUDA state must not be torn down mid-process */
    *coll = cuda_collectives(lib);
    *library = lib;
    return ops;
}

tga_status tga_backend_select(const char *device, int threads) {
    if (strcmp(device, "auto") != 0 && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0)
        return tga_error(TGA_ERR_USAGE, "--device %s: expected auto, cpu or cuda", device);
    if (threads > 0) omp_set_num_threads(threads);
    const tga_ops *ops = NULL;
    const tga_coll_ops *coll = NULL;
    void *library = NULL;
    char why[512] = "";
#ifdef TGA_HAVE_CUDA
    if (strcmp(device, "cpu") != 0) ops = load_cuda(why, sizeof why, &coll, &library);
#else
    snprintf(why, sizeof why, "this build has no CUDA backend (configure with -DTGA_CUDA=ON)");
    (void)load_cuda;
#endif
    if (!ops && strcmp(device, "cuda") == 0)
        return tga_error(TGA_ERR_BACKEND, "--device cuda: %s", why);
    if (!ops) {
        if (strcmp(device, "auto") == 0) TGA_DEBUG("device auto: using the CPU (%s)", why);
        ops = tga_cpu_ops();
        snprintf(description, sizeof description, "cpu (%s, %d OpenMP threads)", tga_cpu_simd_level(),
                 omp_get_max_threads());
    } else {
        snprintf(description, sizeof description, "%s", ops->name);
    }
    tga_active_ops = ops;
    tga_active_coll = coll;
    cuda_library = library;
    return TGA_OK;
}

/* The CUDA library's selector: `int tga_cuda_select_attention(const char *impl, char *why, size_t
 * why_size)`, absent from a library built without cudnn_backend.h. After it succeeds, the library's
 * init hands out the table it published. */
static tga_status select_cuda_attention(const char *impl) {
    typedef int (*select_fn)(const char *, char *, size_t);
    select_fn select;
    *(void **)(&select) = dlsym(cuda_library, "tga_cuda_select_attention");
    if (!select) {
        if (strcmp(impl, "tga") == 0) return TGA_OK; /* its own attention is the only one it has */
        return tga_error(TGA_ERR_BACKEND,
                         "model.attention: cudnn: this CUDA backend was built without cuDNN attention "
                         "(cudnn_backend.h was not found when it was configured; set CUDNN_ROOT and "
                         "rebuild)");
    }
    char why[512] = "";
    if (!select(impl, why, sizeof why)) return tga_error(TGA_ERR_BACKEND, "model.attention: %s: %s", impl, why);
    cuda_init_fn init;
    *(void **)(&init) = dlsym(cuda_library, "tga_cuda_backend_init");
    const tga_ops *ops = init ? init(why, sizeof why) : NULL;
    if (!ops)
        return tga_error(TGA_ERR_BACKEND, "model.attention: %s: the CUDA backend lost its op table (%s)", impl, why);
    tga_active_ops = ops;
    snprintf(description, sizeof description, "%s", ops->name);
    return TGA_OK;
}

/* The CUDA library's kernel choice for impl tga: `int tga_cuda_select_attention_kernel(const char
 * *kind, char *why, size_t why_size)`, kind auto, mma or wgmma. It only sets the library's choice,
 * so a refusal changes nothing. */
static tga_status select_cuda_attention_kernel(const char *impl, const char *kind) {
    typedef int (*select_fn)(const char *, char *, size_t);
    select_fn select;
    *(void **)(&select) = dlsym(cuda_library, "tga_cuda_select_attention_kernel");
    if (!select) {
        if (strcmp(kind, "auto") == 0) return TGA_OK;
        return tga_error(TGA_ERR_BACKEND,
                         "model.attention: %s: this CUDA backend library predates the kernel selector "
                         "(rebuild libtga_cuda.so)",
                         impl);
    }
    char why[512] = "";
    if (!select(kind, why, sizeof why)) return tga_error(TGA_ERR_BACKEND, "model.attention: %s: %s", impl, why);
    return TGA_OK;
}

/* The kernel set model.attention pins (tga-mma, tga-wgmma), NULL when the backend chooses. */
static const char *pinned_attention;

tga_status tga_backend_set_attention(const char *impl) {
    const char *kind = strcmp(impl, "tga-mma") == 0 ? "mma" : strcmp(impl, "tga-wgmma") == 0 ? "wgmma" : "auto";
    const int cudnn = strcmp(impl, "cudnn") == 0;
    if (!cudnn && strcmp(impl, "tga") != 0 && strcmp(kind, "auto") == 0)
        return tga_error(TGA_ERR_CONFIG,
                         "model.attention: \"%s\" is not an attention implementation (expected tga, cudnn, tga-mma or "
                         "tga-wgmma)",
                         impl);
    if (!cuda_library) {
        if (cudnn || strcmp(kind, "auto") != 0)
            return tga_error(TGA_ERR_CONFIG,
                             "model.attention: %s needs the CUDA backend, but this run uses %s; "
                             "use --device cuda, or model.attention: tga",
                             impl, description);
        return TGA_OK;
    }
    /* the kernel choice first: a refused pin then leaves the active table as it was */
    if (!cudnn) TGA_TRY(select_cuda_attention_kernel(impl, kind));
    TGA_TRY(select_cuda_attention(cudnn ? "cudnn" : "tga"));
    pinned_attention = strcmp(kind, "auto") == 0 ? NULL : impl;
    if (pinned_attention) {
        const size_t used = strlen(description);
        snprintf(description + used, sizeof description - used, " [model.attention: %s]", impl);
    }
    return TGA_OK;
}

tga_status tga_backend_check_attention(int head_dim, int n_heads, int n_kv_heads) {
    const char *what = NULL;
    int ok = 1;
    if (n_kv_heads < 1 || n_heads % n_kv_heads != 0) {
        ok = 0;
        what = "model.n_heads must be a multiple of model.n_kv_heads";
    } else if (cuda_library && strstr(description, "cuDNN")) {
        ok = head_dim % 8 == 0 && head_dim <= 256;
        what = "cuDNN attention (model.attention: cudnn) takes head widths that are multiples of 8 up to 256";
    } else if (cuda_library && pinned_attention && strcmp(pinned_attention, "tga-wgmma") == 0) {
        ok = head_dim == 64 || head_dim == 128;
        what = "the wgmma attention kernels (model.attention: tga-wgmma) take head widths 64 and 128; use tga or "
               "tga-mma";
    } else if (cuda_library) {
        ok = head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
        what = "the CUDA attention kernels (model.attention: tga) take head widths 16, 32, 64 and 128";
    } else {
        ok = head_dim > 0 && head_dim % 2 == 0 && head_dim <= TGA_MAX_HEAD_DIM;
        what = "the CPU attention takes even head widths up to 256";
    }
    if (ok) return TGA_OK;
    return tga_error(TGA_ERR_CONFIG, "model.head_dim (or model.dim / model.n_heads when it is 0) is %d with %d query and "
                                     "%d key/value heads, on %s: %s",
                     head_dim, n_heads, n_kv_heads, description, what);
}
