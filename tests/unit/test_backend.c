/* Backend selection as the trainer does it (trainer/setup.c): the CPU backend, model.attention
 * (tga always; cudnn, tga-mma and tga-wgmma are config errors without the CUDA backend), and the attention-shape check
 * that turns an unsupported head width into a config error naming the keys. */
#include <string.h>

#include "runtime/backend.h"
#include "tests/testutil.h"

static void expect_config_error(tga_status st, const char *needle, const char *what) {
    CHECK(st == TGA_ERR_CONFIG && strstr(tga_error_message(), needle), "%s: status %d, message: %s", what, st,
          tga_error_message());
    tga_error_clear();
}

int main(void) {
    CHECK(tga_backend_select("cpu", 1) == TGA_OK, "select cpu: %s", tga_error_message());
    CHECK(strncmp(tga_backend_description(), "cpu", 3) == 0, "description: %s", tga_backend_description());
    CHECK(tga_backend_set_attention("tga") == TGA_OK, "model.attention tga on the CPU: %s", tga_error_message());
    expect_config_error(tga_backend_set_attention("cudnn"), "model.attention: cudnn needs the CUDA backend",
                        "cudnn on the CPU");
    expect_config_error(tga_backend_set_attention("flash"), "model.attention: \"flash\"", "an unknown attention");
    /* the kernel-pinned variants of the benchmarks and GPU checks are CUDA-only too */
    expect_config_error(tga_backend_set_attention("tga-wgmma"), "tga-wgmma needs the CUDA backend", "tga-wgmma");
    expect_config_error(tga_backend_set_attention("tga-mma"), "tga-mma needs the CUDA backend", "tga-mma");

    const int good[] = {2, 16, 32, 64, 96, 128, 256};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK(tga_backend_check_attention(good[i], 8, 2) == TGA_OK, "head dim %d on the CPU: %s", good[i],
              tga_error_message());
    expect_config_error(tga_backend_check_attention(33, 8, 2), "model.head_dim", "an odd head width");
    expect_config_error(tga_backend_check_attention(258, 8, 2), "even head widths up to 256", "a head width over 256");
    expect_config_error(tga_backend_check_attention(64, 8, 3), "model.n_heads must be a multiple of model.n_kv_heads",
                        "8 query heads over 3 kv heads");
    return tu_finish("test_backend");
}
