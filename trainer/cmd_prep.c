/* `tga prep`: LLaVA-style records + image features -> training shards, on one rank or under mpirun
 * (trainer/prep.h has the contract, trainer/DATA.md the formats). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "dist/comm.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/prep.h"
#include "trainer/synthetic.h"
#include "trainer/template.h"

/* The options that --config may set; flags given on the command line win over it. */
typedef struct {
    const char *config;
    long long max_len, image_tokens, feature_dim; /* -1: not given */
    const char *template_name;
} config_flags;

static tga_status string_arg(int argc, char **argv, int *i, const char **out) {
    if (*i + 1 >= argc) return tga_error(TGA_ERR_USAGE, "%s needs a value (see tga help prep)", argv[*i]);
    *out = argv[++*i];
    return TGA_OK;
}

static tga_status dtype_arg(int argc, char **argv, int *i, tga_shard_dtype *out) {
    const char *name = NULL;
    TGA_TRY(string_arg(argc, argv, i, &name));
    if (strcmp(name, "f16") == 0 || strcmp(name, "float16") == 0)
        *out = TGA_SHARD_F16;
    else if (strcmp(name, "f32") == 0 || strcmp(name, "float32") == 0)
        *out = TGA_SHARD_F32;
    else
        return tga_error(TGA_ERR_USAGE, "--feature-dtype %s: expected f16 or f32", name);
    return TGA_OK;
}

static tga_status parse_flag(int argc, char **argv, int *i, tga_prep_options *o, config_flags *c) {
    const char *a = argv[*i];
    long long v;
    if (strcmp(a, "--records") == 0) return string_arg(argc, argv, i, &o->records);
    if (strcmp(a, "--features") == 0) return string_arg(argc, argv, i, &o->features);
    if (strcmp(a, "--feature-index") == 0) return string_arg(argc, argv, i, &o->feature_index);
    if (strcmp(a, "--tokenizer") == 0) return string_arg(argc, argv, i, &o->tokenizer);
    if (strcmp(a, "--template") == 0) return string_arg(argc, argv, i, &c->template_name);
    if (strcmp(a, "--out") == 0) return string_arg(argc, argv, i, &o->out_dir);
    if (strcmp(a, "--config") == 0) return string_arg(argc, argv, i, &c->config);
    if (strcmp(a, "--feature-dtype") == 0) return dtype_arg(argc, argv, i, &o->feature_dtype);
    if (strcmp(a, "--max-len") == 0) return tga_cli_int_arg(argc, argv, i, 1, 1 << 30, &c->max_len);
    if (strcmp(a, "--image-tokens") == 0) return tga_cli_int_arg(argc, argv, i, 1, 1 << 16, &c->image_tokens);
    if (strcmp(a, "--feature-dim") == 0) return tga_cli_int_arg(argc, argv, i, 1, 1 << 20, &c->feature_dim);
    if (strcmp(a, "--samples-per-shard") == 0) {
        TGA_TRY(tga_cli_int_arg(argc, argv, i, 1, 1 << 24, &v));
        o->samples_per_shard = v;
        return TGA_OK;
    }
    if (strcmp(a, "--skip-bad") == 0)
        o->skip_bad = true;
    else if (strcmp(a, "--tox-from-id") == 0)
        o->record.tox_from_id = true;
    else if (strcmp(a, "--keep-equal-retrieved") == 0)
        o->record.halve_retrieved_equal_to_caption = false;
    else if (strcmp(a, "--quiet") == 0)
        o->progress = false;
    else
        return tga_error(TGA_ERR_USAGE, "unknown option '%s' (see tga help prep)", a);
    return TGA_OK;
}

/* data.template, data.max_len, data.image_tokens and projector.vision_dim of a run config. */
static tga_status apply_config(const config_flags *c, tga_prep_options *o) {
    if (c->config) {
        tga_config cfg;
        TGA_TRY(tga_config_init(&cfg));
        TGA_TRY(tga_config_load(&cfg, c->config));
        TGA_TRY(tga_config_validate(&cfg));
        o->template_name = tga_template_builtin_name(cfg.data.template);
        o->max_len = cfg.data.max_len;
        o->image_tokens = (int32_t)cfg.data.image_tokens;
        o->feature_dim = (int32_t)cfg.projector.vision_dim;
    }
    if (c->template_name) o->template_name = c->template_name;
    if (c->max_len >= 0) o->max_len = c->max_len;
    if (c->image_tokens >= 0) o->image_tokens = (int32_t)c->image_tokens;
    if (c->feature_dim >= 0) o->feature_dim = (int32_t)c->feature_dim;
    return TGA_OK;
}

static tga_status parse_options(int argc, char **argv, tga_prep_options *o) {
    tga_prep_options_init(o);
    config_flags c = {.max_len = -1, .image_tokens = -1, .feature_dim = -1};
    for (int i = 0; i < argc; i++)
        TGA_TRY(parse_flag(argc, argv, &i, o, &c));
    return apply_config(&c, o);
}

static void print_summary(const tga_prep_options *o, const tga_prep_summary *s) {
    printf("prep: %" PRIu64 " samples from %" PRIu64 " records in %" PRIu64 " shards -> %s/prep.json\n",
           s->samples, s->records, s->shards, o->out_dir);
    printf("prep: %" PRIu64 " tokens (%" PRIu64 " supervised), %" PRIu64 " images of %d x %d, %" PRIu64
           " text-only, %" PRIu64 " tox\n",
           s->tokens, s->supervised, s->images, s->image_tokens, s->feature_dim, s->text_only, s->tox);
    printf("prep: %" PRIu64 " truncated at max_len %" PRId64 ", %" PRIu64 " too long (skipped), %" PRIu64
           " bad records (skipped)\n",
           s->truncated, o->max_len, s->too_long, s->bad);
}

/* `tga prep --synthetic DIR [--seed N] [--pretrain N] [--align N] [--eval N]`: writes the embedded
 * default world's records, features and retrieval embeddings (trainer/synthetic.h) into DIR; the
 * usual `tga retrieve` and `tga prep` turn them into shards (launch/demo.sh shows the chain). */
static tga_status prep_synthetic(int argc, char **argv) {
    tga_synthetic_options o;
    tga_synthetic_defaults(&o);
    const char *dir = NULL;
    for (int i = 0; i < argc; i++) {
        long long v = 0;
        if (strcmp(argv[i], "--synthetic") == 0) {
            TGA_TRY(string_arg(argc, argv, &i, &dir));
        } else if (strcmp(argv[i], "--seed") == 0) {
            TGA_TRY(tga_cli_int_arg(argc, argv, &i, 0, (1LL << 53), &v));
            o.seed = (uint64_t)v;
        } else if (strcmp(argv[i], "--pretrain") == 0) {
            TGA_TRY(tga_cli_int_arg(argc, argv, &i, 1, 10000000, &v));
            o.n_pretrain = (int)v;
        } else if (strcmp(argv[i], "--align") == 0) {
            TGA_TRY(tga_cli_int_arg(argc, argv, &i, 1, 10000000, &v));
            o.n_align = (int)v;
        } else if (strcmp(argv[i], "--eval") == 0) {
            TGA_TRY(tga_cli_int_arg(argc, argv, &i, 1, 1000000, &v));
            o.n_eval = (int)v;
        } else {
            return tga_error(TGA_ERR_USAGE, "tga prep --synthetic: unknown option %s (see tga help prep)", argv[i]);
        }
    }
    tga_status st = tga_dist_rank() == 0 ? tga_synthetic_write(dir, &o) : TGA_OK;
    int failed;
    TGA_TRY(tga_dist_any_failed(st, &failed, "synthetic world"));
    TGA_TRY(st);
    if (failed) return tga_error(TGA_ERR_IO, "rank 0 could not write the synthetic world");
    if (tga_dist_rank() == 0)
        printf("synthetic world (seed %llu): %d pretraining records, %d image-caption records, 3 x %d eval records in %s\n",
               (unsigned long long)o.seed, o.n_pretrain, o.n_align, o.n_eval, dir);
    return TGA_OK;
}

/* Runs on every rank: main() initialises MPI first (the command's uses_mpi flag). */
tga_status tga_cmd_prep(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--synthetic") == 0) return prep_synthetic(argc, argv);
    tga_prep_options o;
    TGA_TRY(parse_options(argc, argv, &o));
    tga_prep_summary summary;
    TGA_TRY(tga_prep_run(&o, &summary));
    if (tga_dist_rank() == 0) print_summary(&o, &summary);
    return TGA_OK;
}
