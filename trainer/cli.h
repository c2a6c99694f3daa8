/* The tga CLI: subcommands and the options they share. Each subcommand lives in its own
 * trainer/cmd_<name>.c and returns a status; main() prints the one error message and maps the
 * status to the exit code (2 for usage and configuration errors). */
#ifndef TGA_TRAINER_CLI_H
#define TGA_TRAINER_CLI_H

#include "runtime/error.h"
#include "trainer/config.h"

typedef struct tga_command {
    const char *name;
    int uses_mpi; /* 1: runs under mpirun (MPI is initialised first) */
    const char *summary;
    const char *usage; /* options, one per line */
    tga_status (*run)(int argc, char **argv);
} tga_command;

/* Options every config-driven command takes: --config FILE, --set section.key=value (repeatable),
 * --device auto|cpu|cuda, --threads N. Unrecognised options are left in rest[] for the command. */
typedef struct tga_common_options {
    const char *config_path;
    const char *device;
    int threads;
    int n_rest;
    char **rest;
} tga_common_options;

/* Parses the shared options and builds the validated config (defaults < file < --set). */
tga_status tga_cli_load_config(int argc, char **argv, tga_common_options *opts, tga_config *cfg);

/* For commands that act on a finished run (eval, export): --run DIR names a run or checkpoint
 * directory, and unless --config is given the run's own config is loaded (its
 * config.effective.yaml, else the checkpoint's config.yaml) under the other options. */
tga_status tga_cli_load_run_config(int argc, char **argv, const char *command, tga_common_options *opts,
                                   tga_config *cfg);

/* Option value helpers for the commands: "--name VALUE" at argv[*i] (advances *i). */
tga_status tga_cli_int_arg(int argc, char **argv, int *i, long long min, long long max, long long *out);

tga_status tga_cmd_plan(int argc, char **argv);
tga_status tga_cmd_tokenize(int argc, char **argv);
tga_status tga_cmd_train(int argc, char **argv);
tga_status tga_cmd_eval(int argc, char **argv);
tga_status tga_cmd_export(int argc, char **argv);
tga_status tga_cmd_retrieve(int argc, char **argv);
tga_status tga_cmd_bench(int argc, char **argv);
tga_status tga_cmd_prep(int argc, char **argv);

#endif
