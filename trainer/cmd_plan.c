/* `tga plan`: the memory plan of a config, computed without allocating, with and without
 * activation recomputation (so a 7B plan can be printed on a laptop). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/cli.h"
#include "trainer/setup.h"

static tga_status print_plan(const tga_config *cfg, int recompute, int verbose) {
    tga_config c = *cfg;
    c.train.recompute = recompute;
    tga_model_dims dims;
    tga_run_shape shape;
    tga_setup_dims(&c, &dims);
    /* one image per sample, as LLaVA's data; the loader sizes for its real maximum */
    tga_setup_run_shape(&c, (int)c.train.micro_batch, &shape);
    tga_plan plan;
    TGA_TRY(tga_model_plan(&dims, &shape, &plan));
    printf("memory plan (%s recompute, micro-batch %lld x %lld tokens, %s, %s):\n", recompute ? "with" : "without",
           (long long)c.train.micro_batch, (long long)c.data.max_len,
           c.train.trainable == TGA_TRAIN_LM ? "lm" : c.train.trainable == TGA_TRAIN_STAGE1 ? "stage1" : "stage2",
           dims.bf16_weights ? "bf16 weight matrices, layer norm outputs and MLP activations" : "fp32");
    tga_plan_print(&plan, stdout, verbose);
    tga_plan_free(&plan);
    return TGA_OK;
}

tga_status tga_cmd_plan(int argc, char **argv) {
    tga_common_options o;
    tga_config cfg;
    TGA_TRY(tga_cli_load_config(argc, argv, &o, &cfg));
    int verbose = 0;
    for (int i = 0; i < o.n_rest; i++) {
        if (strcmp(o.rest[i], "--verbose") == 0)
            verbose = 1;
        else
            return tga_error(TGA_ERR_USAGE, "tga plan: unknown option %s (see tga help plan)", o.rest[i]);
    }
    tga_model_dims dims;
    tga_setup_dims(&cfg, &dims);
    printf("model: dim %d, %d layers, %d heads (%d kv, head dim %d), ffn %d, vocab %d; projector %s %d -> %d\n",
           dims.dim, dims.n_layers, dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.ffn_dim, dims.vocab_size,
           dims.projector == TGA_PROJ_MLP2X_GELU ? "mlp2x_gelu" : "linear", dims.vision_dim, dims.dim);
    TGA_TRY(print_plan(&cfg, 0, verbose));
    TGA_TRY(print_plan(&cfg, 1, verbose));
    free(o.rest);
    return TGA_OK;
}
