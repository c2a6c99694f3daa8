#define _POSIX_C_SOURCE 200809L /* access */
#include "trainer/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/backend.h"
#include "trainer/weights.h"

static tga_status need_value(int argc, char **argv, int i) {
    if (i + 1 >= argc) return tga_error(TGA_ERR_USAGE, "%s needs a value", argv[i]);
    return TGA_OK;
}

tga_status tga_cli_int_arg(int argc, char **argv, int *i, long long min, long long max, long long *out) {
    TGA_TRY(need_value(argc, argv, *i));
    const char *text = argv[*i + 1];
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        return tga_error(TGA_ERR_USAGE, "%s %s: expected an integer in [%lld, %lld]", argv[*i], text, min, max);
    *out = v;
    (*i)++;
    return TGA_OK;
}

tga_status tga_cli_load_config(int argc, char **argv, tga_common_options *o, tga_config *cfg) {
    memset(o, 0, sizeof *o);
    o->rest = calloc((size_t)argc + 1, sizeof *o->rest);
    if (!o->rest) return tga_error(TGA_ERR_NOMEM, "out of memory");
    TGA_TRY(tga_config_init(cfg));
    /* the file first, so --set applies on top of it wherever it appears on the line */
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--config") == 0) {
            TGA_TRY(need_value(argc, argv, i));
            o->config_path = argv[++i];
        }
    if (o->config_path) {
        /* an unreadable config file is fixed on the command line: a configuration error (exit 2),
         * which the supervisor treats as final */
        tga_status st = tga_config_load(cfg, o->config_path);
        if (st == TGA_ERR_IO) {
            char message[2048];
            snprintf(message, sizeof message, "%s", tga_error_message());
            return tga_error_replace(TGA_ERR_CONFIG, "%s", message);
        }
        TGA_TRY(st);
    }
    for (int i = 0; i < argc; i++) {
        long long v;
        if (strcmp(argv[i], "--config") == 0) {
            i++;
        } else if (strcmp(argv[i], "--set") == 0) {
            TGA_TRY(need_value(argc, argv, i));
            TGA_TRY(tga_config_override(cfg, argv[++i]));
        } else if (strcmp(argv[i], "--device") == 0) {
            TGA_TRY(need_value(argc, argv, i));
            char assignment[64];
            snprintf(assignment, sizeof assignment, "runtime.device=%s", argv[++i]);
            TGA_TRY(tga_config_override(cfg, assignment));
        } else if (strcmp(argv[i], "--threads") == 0) {
            TGA_TRY(tga_cli_int_arg(argc, argv, &i, 0, 4096, &v));
            cfg->runtime.threads = v;
        } else {
            o->rest[o->n_rest++] = argv[i];
        }
    }
    tga_status st = tga_config_validate(cfg);
    if (st != TGA_OK) {
        /* checks across keys have no line; name the file the keys came from */
        char message[2048];
        snprintf(message, sizeof message, "%s", tga_error_message());
        return tga_error_replace(st, "%s: %s", o->config_path ? o->config_path : "defaults with --set", message);
    }
    static const char *devices[] = {"auto", "cpu", "cuda"};
    o->device = devices[cfg->runtime.device];
    o->threads = (int)cfg->runtime.threads;
    tga_log_set_level(cfg->runtime.log_level);
    return TGA_OK;
}

static const char *option_value(int argc, char **argv, const char *name) {
    for (int i = 0; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return NULL;
}

/* The run's own config: <run>/config.effective.yaml, else the resolved checkpoint's config.yaml. */
static tga_status run_config_path(const char *run, char *path, size_t size) {
    snprintf(path, size, "%s/config.effective.yaml", run);
    if (access(path, R_OK) == 0) return TGA_OK;
    char ckpt[1024];
    TGA_TRY(tga_weights_resolve(run, ckpt, sizeof ckpt));
    snprintf(path, size, "%s/config.yaml", ckpt);
    if (access(path, R_OK) == 0) return TGA_OK;
    return tga_error(TGA_ERR_CONFIG, "%s holds no config.effective.yaml and its checkpoint %s no config.yaml; pass --config",
                     run, ckpt);
}

tga_status tga_cli_load_run_config(int argc, char **argv, const char *command, tga_common_options *opts,
                                   tga_config *cfg) {
    const char *run = option_value(argc, argv, "--run");
    if (!run) return tga_error(TGA_ERR_USAGE, "tga %s needs --run (a run or checkpoint directory)", command);
    char config_path[1200];
    char **args = calloc((size_t)argc + 3, sizeof *args);
    if (!args) return tga_error(TGA_ERR_NOMEM, "out of memory");
    int n = 0;
    tga_status st = TGA_OK;
    if (!option_value(argc, argv, "--config")) {
        st = run_config_path(run, config_path, sizeof config_path);
        args[n++] = "--config";
        args[n++] = config_path;
    }
    for (int i = 0; i < argc; i++) args[n++] = argv[i];
    if (st == TGA_OK) st = tga_cli_load_config(n, args, opts, cfg);
    if (opts->config_path == config_path) opts->config_path = NULL; /* a local buffer */
    free(args); /* opts->rest points at argv's strings, not at args */
    return st;
}
