/* `tga export`: a run's (or checkpoint's) weights as safetensors for LLaVA and HF transformers
 * (trainer/export.h lists the files and their names).
 *
 * The model is built from the run's config.effective.yaml (or the checkpoint's config.yaml) unless
 * --config names another file, initialised as training did (train.seed, model.init_std), and the
 * checkpoint chain is loaded on top, so frozen parameters that no checkpoint holds (a stage-1 run's
 * decoder from a random-init base) come back exactly. Export computes nothing: it runs on the CPU
 * backend whatever runtime.device says, and holds the model plus one host copy of what it writes. */
#define _POSIX_C_SOURCE 200809L /* access, mkdir, opendir, strcasecmp */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/backend.h"
#include "runtime/plan.h"
#include "runtime/tokenizer.h"
#include "trainer/cli.h"
#include "trainer/export.h"
#include "trainer/setup.h"
#include "trainer/weights.h"

/* transformers' save_pretrained default max_shard_size */
#define DEFAULT_SHARD_BYTES 5000000000ull

typedef struct export_cli {
    const char *run, *out, *tokenizer;
    tga_export_what what;
    tga_export_options opt;
} export_cli;

/* ---- options ----------------------------------------------------------------------------------- */

static tga_status string_option(int argc, char **argv, int *i, const char **out) {
    if (*i + 1 >= argc) return tga_error(TGA_ERR_USAGE, "%s needs a value", argv[*i]);
    *out = argv[++*i];
    return TGA_OK;
}

/* One of names[0..n) -> its index; `expected` lists them for the message. */
static tga_status choice_option(int argc, char **argv, int *i, const char *const *names, int n,
                                const char *expected, int *out) {
    const char *flag = argv[*i], *value = NULL;
    TGA_TRY(string_option(argc, argv, i, &value));
    for (int k = 0; k < n; k++)
        if (strcmp(value, names[k]) == 0) {
            *out = k;
            return TGA_OK;
        }
    return tga_error(TGA_ERR_USAGE, "%s %s: expected %s", flag, value, expected);
}

/* "5GB": KB/MB/GB/TB are powers of 1000 and KiB/MiB/GiB/TiB of 1024, as in transformers'
 * max_shard_size; a bare number is bytes. */
static tga_status parse_size(const char *flag, const char *text, uint64_t *bytes) {
    static const struct {
        const char *unit;
        double scale;
    } units[] = {
        {"", 1},      {"B", 1},        {"KB", 1e3},        {"MB", 1e6},           {"GB", 1e9},
        {"TB", 1e12}, {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    for (size_t u = 0; end != text && !errno && u < sizeof units / sizeof units[0]; u++) {
        double total = value * units[u].scale;
        if (strcasecmp(end, units[u].unit) == 0 && total >= 1 && total < 1.8e19) {
            *bytes = (uint64_t)total;
            return TGA_OK;
        }
    }
    return tga_error(TGA_ERR_USAGE, "%s %s: expected a size such as 2GB, 500MB, 1GiB or a number of bytes",
                     flag, text);
}

static tga_status parse_one(int argc, char **argv, int *i, export_cli *c) {
    static const char *const whats[] = {"auto", "projector", "model"};
    static const char *const dtypes[] = {"f32", "bf16"};
    static const char *const archs[] = {"llama", "mistral"};
    const char *a = argv[*i], *value = NULL;
    int k;
    if (strcmp(a, "--run") == 0) return string_option(argc, argv, i, &c->run);
    if (strcmp(a, "--out") == 0) return string_option(argc, argv, i, &c->out);
    if (strcmp(a, "--tokenizer") == 0) return string_option(argc, argv, i, &c->tokenizer);
    if (strcmp(a, "--what") == 0) {
        TGA_TRY(choice_option(argc, argv, i, whats, 3, "auto, projector or model", &k));
        c->what = (tga_export_what)k;
        return TGA_OK;
    }
    if (strcmp(a, "--dtype") == 0) {
        TGA_TRY(choice_option(argc, argv, i, dtypes, 2, "f32 or bf16", &k));
        c->opt.dtype = k ? TGA_ST_BF16 : TGA_ST_F32;
        return TGA_OK;
    }
    if (strcmp(a, "--arch") == 0) {
        TGA_TRY(choice_option(argc, argv, i, archs, 2, "llama or mistral", &k));
        c->opt.arch = (tga_export_arch)k;
        return TGA_OK;
    }
    if (strcmp(a, "--shard-size") == 0) {
        TGA_TRY(string_option(argc, argv, i, &value));
        return parse_size(a, value, &c->opt.shard_bytes);
    }
    return tga_error(TGA_ERR_USAGE, "tga export: unknown option %s (see tga help export)", a);
}

static tga_status parse_options(const tga_common_options *common, export_cli *c) {
    *c = (export_cli){.what = TGA_EXPORT_AUTO,
                      .opt = {.dtype = TGA_ST_F32,
                              .shard_bytes = DEFAULT_SHARD_BYTES,
                              .arch = TGA_EXPORT_LLAMA,
                              .bos_id = -1,
                              .eos_id = -1}};
    for (int i = 0; i < common->n_rest; i++)
        TGA_TRY(parse_one(common->n_rest, common->rest, &i, c));
    if (!c->run) return tga_error(TGA_ERR_USAGE, "tga export needs --run (a run or checkpoint directory)");
    if (!c->out) return tga_error(TGA_ERR_USAGE, "tga export needs --out (a new or empty directory)");
    return TGA_OK;
}

/* The config (the run's own unless --config is given) and the export options. */
static tga_status load_settings(int argc, char **argv, tga_config *cfg, export_cli *c) {
    tga_common_options common = {0};
    tga_status st = tga_cli_load_run_config(argc, argv, "export", &common, cfg);
    if (st == TGA_OK) st = parse_options(&common, c);
    if (st == TGA_OK) st = tga_backend_select("cpu", common.threads); /* export computes nothing */
    free(common.rest);
    return st;
}

static tga_status read_special_ids(const char *path, tga_export_options *opt) {
    tga_tokenizer *tok;
    TGA_TRY(tga_tokenizer_load(path, &tok));
    opt->bos_id = tga_tokenizer_bos(tok);
    opt->eos_id = tga_tokenizer_eos(tok);
    tga_tokenizer_free(tok);
    return TGA_OK;
}

/* ---- the export -------------------------------------------------------------------------------- */

/* --out must be new or empty: files of an older export (another shard count) mixed with these
 * would load as a different model. Checked before the (long) load; created after it, so that a
 * failed load leaves nothing behind. */
static tga_status check_out_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d && errno == ENOENT) return TGA_OK;
    if (!d) return tga_error(TGA_ERR_IO, "cannot open --out %s: %s", dir, strerror(errno));
    const struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)))
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    if (!empty)
        return tga_error(TGA_ERR_USAGE, "--out %s is not empty; export into a new or empty directory", dir);
    return TGA_OK;
}

static tga_status create_out_dir(const char *dir) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return tga_error(TGA_ERR_IO, "cannot create --out %s: %s (its parent must exist)", dir,
                         strerror(errno));
    return TGA_OK;
}

/* Built for the smallest run shape: export never runs a forward, and only the projector gets
 * gradient memory (a stage-1 shape). Always with fp32 weights: the run's model.dtype bf16 would
 * round every matrix this shape freezes, and --dtype decides the rounding when writing. */
static tga_status load_model(const tga_config *cfg, const char *run, tga_model **m, char *weights,
                             size_t size) {
    tga_model_dims dims;
    tga_setup_dims(cfg, &dims);
    dims.bf16_weights = 0;
    tga_run_shape shape = {.trainable = TGA_TRAIN_STAGE1,
                           .micro_batch = 1,
                           .max_len = 1,
                           .max_images = 1,
                           .image_tokens = 1,
                           .recompute = 1,
                           .ce_chunk = 1};
    TGA_TRY(tga_model_create(m, &dims, &shape));
    TGA_TRY(tga_weights_load(*m, run, weights, size));
    return tga_model_init_random(*m, (uint64_t)cfg->train.seed, (float)cfg->model.init_std);
}

static const char *trainable_name(tga_trainable_set t) {
    return t == TGA_TRAIN_LM ? "lm" : t == TGA_TRAIN_STAGE1 ? "stage1" : "stage2";
}

static tga_status write_parts(tga_model *m, const tga_config *cfg, const export_cli *c,
                              const tga_export_parts *parts) {
    const char *dtype = c->opt.dtype == TGA_ST_BF16 ? "bf16" : "f32";
    if (parts->model) {
        int shards;
        uint64_t bytes;
        char size[32];
        TGA_TRY(tga_export_language_model(m, cfg, c->out, &c->opt, &shards, &bytes));
        printf("  model: %s, %d shard(s), %s of %s tensors, config.json%s\n",
               c->opt.arch == TGA_EXPORT_MISTRAL ? "MistralForCausalLM" : "LlamaForCausalLM", shards,
               tga_format_bytes((double)bytes, size, sizeof size), dtype,
               cfg->model.tie_embeddings ? " (tied: no lm_head.weight)" : "");
    }
    if (parts->projector) {
        tga_model_dims dims;
        tga_setup_dims(cfg, &dims);
        TGA_TRY(tga_export_projector(m, &dims, c->out, c->opt.dtype));
        printf(
            "  projector (%s, %s): mm_projector.safetensors (LLaVA names), multi_modal_projector.safetensors "
            "(HF names)\n",
            dims.projector == TGA_PROJ_LINEAR ? "linear" : "mlp2x_gelu", dtype);
    }
    return TGA_OK;
}

static tga_status export_main(int argc, char **argv, tga_config *cfg, export_cli *c, tga_model **m) {
    TGA_TRY(load_settings(argc, argv, cfg, c));
    tga_export_parts parts;
    TGA_TRY(tga_export_choose(c->what, cfg->train.trainable, &parts));
    if (c->tokenizer) TGA_TRY(read_special_ids(c->tokenizer, &c->opt));
    TGA_TRY(check_out_dir(c->out));
    char weights[1200];
    TGA_TRY(load_model(cfg, c->run, m, weights, sizeof weights));
    TGA_TRY(create_out_dir(c->out));
    printf("tga export: %s (train.trainable %s; weights %s) -> %s\n", c->run,
           trainable_name(cfg->train.trainable), weights, c->out);
    return write_parts(*m, cfg, c, &parts);
}

tga_status tga_cmd_export(int argc, char **argv) {
    tga_config *cfg = malloc(sizeof *cfg);
    export_cli c;
    tga_model *m = NULL;
    if (!cfg) return tga_error(TGA_ERR_NOMEM, "out of memory");
    tga_status st = export_main(argc, argv, cfg, &c, &m);
    tga_model_free(m);
    free(cfg);
    return st;
}
