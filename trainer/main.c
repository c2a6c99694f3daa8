/* tga: the command-line entry point. Dispatches to a subcommand and turns its status into one
 * error message and an exit code (2 for usage and configuration errors, 1 for the rest). */
#include <stdio.h>
#include <string.h>

#include "dist/comm.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "trainer/cli.h"
#include "trainer/config.h"

#include "tga_version.h" /* generated: TGA_VERSION, TGA_GIT_COMMIT */

static tga_status cmd_help(int argc, char **argv);
static tga_status cmd_version(int argc, char **argv);

static const tga_command commands[] = {
    {"train", 1, "train (lm, stage1, stage2) on one rank or under mpirun; resumes from the newest checkpoint",
     "  --config FILE          run config (YAML); --set section.key=V overrides a key (repeatable)\n"
     "  --resume auto|none     continue from the newest complete, verified checkpoint (default auto)\n"
     "  --fresh                start from step 0 even when checkpoints exist\n"
     "  --dry-run              validate everything and print the memory plan; allocate nothing\n"
     "  --ranks N              with --dry-run: plan for N ranks (batch geometry, ZeRO-1 shards)\n"
     "  --device auto|cpu|cuda, --threads N", tga_cmd_train},
    {"retrieve", 1, "top-k caption texts for each image by embedding cosine (corpus sharded over MPI ranks)",
     "  --queries Q.npy        query (image) embeddings [N, d], row i = record i\n"
     "  --corpus C.npy         corpus (caption) embeddings [M, d]\n"
     "  --texts T.jsonl        corpus texts, one JSON object per line (--text-key, default text)\n"
     "  --records R.json[l]    LLaVA records (JSON array or JSONL); the image's own caption is never retrieved\n"
     "  --out OUT              the records with retrieved_caption (and retrieved_captions when k > 1)\n"
     "  --k K                  how many to keep (default 1); --caption-key (default image_caption); --threads N", tga_cmd_retrieve},
    {"eval", 0, "greedy answers of a run to eval records: DSR (refusal rate), utility accuracy, image-vs-caption probe",
     "  --run DIR              run or checkpoint directory (its config.effective.yaml / config.yaml gives the model)\n"
     "  --records FILE         LLaVA JSON/JSONL eval records (repeatable)\n"
     "  --features F.npy       image features [N, P, Dv]; --feature-index FILE: 'image-name row' lines\n"
     "  --tokenizer PATH       the run's tokenizer\n"
     "  --template NAME        chat template (default data.template)\n"
     "  --max-new N            tokens per answer (default 12); --batch N (default train.micro_batch)\n"
     "  --kind dsr|utility|auto  headline number (auto: dsr when every expected answer is a refusal)\n"
     "  --out FILE             JSON summary with every number and a few example answers\n"
     "  --config FILE, --set section.key=V, --device auto|cpu|cuda, --threads N", tga_cmd_eval},
    {"prep", 1, "LLaVA-style records + image features -> training shards (1 rank or under mpirun)",
     "  --records FILE         a JSON array or JSON Lines of LLaVA records + image_caption, retrieved_caption\n"
     "  --features DIR|FILE    per-image .npy files under DIR, or one [N, P, Dv] .npy with --feature-index\n"
     "  --feature-index FILE   image name -> row: JSON Lines {\"image\", \"row\"} or text 'NAME ROW' lines\n"
     "  --tokenizer PATH       a folder, tokenizer.json, *.gguf or a *.txt word list\n"
     "  --template NAME|FILE   plain, plain_retrieval, llama_2, mistral_instruct, chatml, or a YAML file\n"
     "  --out DIR              shard-NNNNN.tgas + prep.json (written last)\n"
     "  --config FILE          take data.template, data.max_len, data.image_tokens, projector.vision_dim\n"
     "  --max-len N            tokens per sample, image patches included (default 2048)\n"
     "  --image-tokens P, --feature-dim Dv   (default: from the features)\n"
     "  --feature-dtype f16|f32  features in the shards (default f16)\n"
     "  --samples-per-shard S  records per shard (default 512)\n"
     "  --skip-bad             count and skip bad records instead of stopping\n"
     "  --tox-from-id          an id containing \"tox\" marks a toxic-image record (upstream)\n"
     "  --keep-equal-retrieved keep R when it equals C (upstream halves it)\n"
     "  --quiet                no progress line\n"
     "  --synthetic DIR [--seed N] [--pretrain N] [--align N] [--eval N]\n"
     "                         write the embedded default world (records, features, retrieval embeddings) to DIR", tga_cmd_prep},
    {"export", 0, "a run's weights as safetensors: the projector (LLaVA and HF names) or the model (HF sharded + config.json)",
     "  --run DIR              run or checkpoint directory (its config.effective.yaml / config.yaml gives the model)\n"
     "  --out DIR              a new or empty directory (its parent must exist)\n"
     "  --what auto|projector|model  auto: the projector after stage1, the model after lm and stage2\n"
     "  --dtype f32|bf16       tensor dtype (default f32; bf16 rounds to nearest even)\n"
     "  --shard-size SIZE      most tensor bytes per model shard: 2GB, 500MB, 1GiB, bytes (default 5GB)\n"
     "  --arch llama|mistral   config.json architecture (default llama)\n"
     "  --tokenizer PATH       bos/eos ids for config.json\n"
     "  --config FILE, --set section.key=V, --threads N", tga_cmd_export},
    {"plan", 0, "print the memory plan of a config without allocating it",
     "  --config FILE          run config (YAML)\n"
     "  --set section.key=V    override a config key (repeatable)\n"
     "  --verbose              list every tensor", tga_cmd_plan},
    {"tokenize", 0, "text -> token ids on one line, or --decode ids -> the exact bytes",
     "  --tokenizer PATH       a folder, tokenizer.json, *.gguf or a *.txt word list\n"
     "  --file F               input (default: standard input)\n"
     "  --decode               read ids (separated by white space), write the bytes exactly\n"
     "  --special              recognise special-token strings (<|endoftext|>, <s>, ...)", tga_cmd_tokenize},
    {"bench", 0, "benchmarks: `tga bench step` times training steps on synthetic batches",
     "  step --config FILE [--set ...] [--steps N] [--warmup N] [--images N] [--peak-tflops N] [--threads N]",
     tga_cmd_bench},
    {"help", 0, "list the commands, or `tga help COMMAND`, or `tga help config` for every config key", "", cmd_help},
    {"version", 0, "print the version, commit and compiled backends (also --version)", "", cmd_version},
};
static const int n_commands = (int)(sizeof commands / sizeof commands[0]);

static tga_status cmd_version(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("tga %s (commit %s; backends: %s)\n", TGA_VERSION, TGA_GIT_COMMIT, tga_backends_compiled());
    return TGA_OK;
}

static tga_status cmd_help(int argc, char **argv) {
    if (argc > 0 && strcmp(argv[0], "config") == 0) {
        tga_config_help(stdout);
        return TGA_OK;
    }
    for (int i = 0; argc > 0 && i < n_commands; i++)
        if (strcmp(argv[0], commands[i].name) == 0) {
            printf("tga %s: %s\n%s\n", commands[i].name, commands[i].summary, commands[i].usage);
            return TGA_OK;
        }
    if (argc > 0) return tga_error(TGA_ERR_USAGE, "tga help: unknown command '%s'", argv[0]);
    printf("tga: data-parallel TGA vision-language alignment training\n\nusage: tga COMMAND [options]\n\n");
    for (int i = 0; i < n_commands; i++) printf("  %-10s %s\n", commands[i].name, commands[i].summary);
    printf("\n`tga help COMMAND` shows a command's options; `tga help config` lists every config key.\n");
    return TGA_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        cmd_help(0, NULL);
        return 2;
    }
    const char *name = argv[1];
    if (strcmp(name, "--version") == 0) name = "version";
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) name = "help";
    for (int i = 0; i < n_commands; i++) {
        if (strcmp(name, commands[i].name) != 0) continue;
        tga_status st = commands[i].uses_mpi ? tga_dist_init(&argc, &argv) : TGA_OK;
        if (st == TGA_OK) st = commands[i].run(argc - 2, argv + 2);
        if (st != TGA_OK) {
            char prefix[32] = "";
            if (tga_dist_world() > 1) snprintf(prefix, sizeof prefix, "[rank %d] ", tga_dist_rank());
            /* one write per line, so the lines of several ranks do not interleave */
            fprintf(stderr, "%stga %s: %s: %s\n", prefix, commands[i].name, tga_status_name(st), tga_error_message());
            fflush(stderr);
            /* Exit without MPI_Finalize: ranks still waiting in a collective cannot finish one, and
             * mpirun ends the whole job when a rank exits non-zero, so no rank is left hanging. */
            return tga_status_exit_code(st);
        }
        if (commands[i].uses_mpi) tga_dist_finalize();
        return 0;
    }
    fprintf(stderr, "tga: unknown command '%s' (`tga help` lists the commands)\n", name);
    return 2;
}
