/* The config system (runtime/config.c with tga's schema from trainer/config_schema.c): defaults,
 * the shipped configs, every kind of bad input with the file:line its message must name, --set,
 * the write -> load round trip (hand-picked and random values of every key), layer sets against a
 * naive reference, the cross-key checks, the help listing, and mutated files that must never
 * crash. Files are written under a mkdtemp directory that is removed at the end. */
#define _POSIX_C_SOURCE 200809L
#include "trainer/config.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/testutil.h"

static char temp_dir[64];

/* ---- helpers ---------------------------------------------------------------------------------- */

static void temp_path(const char *name, char *path, size_t size) {
    snprintf(path, size, "%s/%s", temp_dir, name);
}

/* `status` must be `expected`, with a one-line message holding every needle (NULL-terminated). */
static void check_error(const char *what, tga_status status, tga_status expected, ...) {
    const char *message = tga_error_message();
    CHECK(status == expected, "%s: status %d, expected %d (message: %s)", what, (int)status, (int)expected,
          message);
    CHECK(message[0] != '\0' && strchr(message, '\n') == NULL, "%s: message not one non-empty line: '%s'",
          what, message);
    va_list needles;
    va_start(needles, expected);
    for (const char *needle; (needle = va_arg(needles, const char *)) != NULL;)
        CHECK(strstr(message, needle) != NULL, "%s: message lacks '%s': %s", what, needle, message);
    va_end(needles);
}

static void init_ok(tga_config *cfg) {
    tga_error_clear();
    tga_status status = tga_config_init(cfg);
    CHECK(status == TGA_OK, "tga_config_init: %s", tga_error_message());
}

static void set_ok(tga_config *cfg, const char *assignment) {
    tga_error_clear();
    tga_status status = tga_config_override(cfg, assignment);
    CHECK(status == TGA_OK, "--set %s failed: %s", assignment, tga_error_message());
}

static bool layers_equal(const tga_layer_set *set, const int *expected, int count) {
    if (set->count != count) return false;
    for (int i = 0; i < count; i++)
        if (set->layers[i] != expected[i]) return false;
    return true;
}

/* The source tree: $TGA_SOURCE_DIR, else the first directory above this executable that holds
 * configs/tiny.yaml. */
static bool find_source_dir(char *dir, size_t size) {
    const char *env = getenv("TGA_SOURCE_DIR");
    if (env && env[0]) {
        snprintf(dir, size, "%s", env);
        return true;
    }
    ssize_t length = readlink("/proc/self/exe", dir, size - 1);
    if (length <= 0) return false;
    dir[length] = '\0';
    for (char *slash; (slash = strrchr(dir, '/')) != NULL;) {
        *slash = '\0';
        char probe[4200];
        snprintf(probe, sizeof probe, "%s/configs/tiny.yaml", dir);
        if (access(probe, R_OK) == 0) return true;
    }
    return false;
}

/* ---- defaults and shipped configs --------------------------------------------------------------- */

static void test_defaults(void) {
    tga_config cfg;
    init_ok(&cfg);
    tga_error_clear();
    CHECK(tga_config_validate(&cfg) == TGA_OK, "defaults do not validate: %s", tga_error_message());
    const int default_layers[] = {1, 2, 3};
    CHECK(cfg.model.dim == 64 && cfg.model.n_layers == 4 && cfg.model.n_kv_heads == 2 &&
              cfg.model.ffn_dim == 172,
          "model defaults");
    CHECK(cfg.model.rope_theta == 10000.0 && cfg.model.norm_eps == 1e-5 && !cfg.model.tie_embeddings,
          "model floats");
    CHECK(tga_config_head_dim(&cfg) == 16, "effective head_dim %lld", (long long)tga_config_head_dim(&cfg));
    CHECK(cfg.train.trainable == TGA_TRAIN_STAGE1 && cfg.train.lr == 1e-3 && cfg.train.beta2 == 0.999,
          "train defaults");
    CHECK(strcmp(cfg.train.out_dir, "runs/tiny") == 0 && cfg.train.init_from[0] == '\0', "string defaults");
    CHECK(cfg.tga.mode == TGA_ALIGN_INTENDED && layers_equal(&cfg.tga.layers, default_layers, 3),
          "tga defaults");
    CHECK(cfg.data.template == TGA_TEMPLATE_PLAIN_RETRIEVAL && cfg.runtime.log_level == TGA_LOG_INFO,
          "enum defaults");
}

static void test_shipped_configs(const char *source_dir) {
    char path[4200];
    tga_config defaults, tiny, mistral;
    init_ok(&defaults);
    init_ok(&tiny);
    init_ok(&mistral);

    snprintf(path, sizeof path, "%s/configs/tiny.yaml", source_dir);
    tga_error_clear();
    CHECK(tga_config_load(&tiny, path) == TGA_OK, "tiny.yaml: %s", tga_error_message());
    CHECK(memcmp(&tiny, &defaults, sizeof tiny) == 0, "configs/tiny.yaml differs from the schema defaults");

    snprintf(path, sizeof path, "%s/configs/mistral7b_stage1.yaml", source_dir);
    tga_error_clear();
    CHECK(tga_config_load(&mistral, path) == TGA_OK, "mistral7b_stage1.yaml: %s", tga_error_message());
    tga_error_clear();
    CHECK(tga_config_validate(&mistral) == TGA_OK, "mistral7b_stage1.yaml invalid: %s", tga_error_message());
    const int safety_layers[] = {10, 11, 12, 13, 14, 15, 16, 17, 18};
    CHECK(mistral.model.dim == 4096 && mistral.model.n_layers == 32 && mistral.model.n_heads == 32 &&
              mistral.model.n_kv_heads == 8 && tga_config_head_dim(&mistral) == 128 &&
              mistral.model.ffn_dim == 14336 && mistral.model.vocab_size == 32000 &&
              mistral.model.rope_theta == 1e6,
          "Mistral-7B shapes");
    CHECK(mistral.projector.vision_dim == 1024 && mistral.data.image_tokens == 576,
          "CLIP ViT-L/14-336 features");
    CHECK(mistral.train.trainable == TGA_TRAIN_STAGE1 && mistral.train.lr == 1e-3 &&
              mistral.train.schedule == TGA_SCHEDULE_COSINE && mistral.train.warmup_ratio == 0.03 &&
              mistral.train.weight_decay == 0 && mistral.data.max_len == 2048,
          "upstream pretrain hyperparameters");
    CHECK(layers_equal(&mistral.tga.layers, safety_layers, 9), "tga.layers 10-18");
}

/* Every .yaml file in configs/ must load and validate. */
static void test_every_shipped_config(const char *source_dir) {
    char dir_path[4200];
    snprintf(dir_path, sizeof dir_path, "%s/configs", source_dir);
    DIR *dir = opendir(dir_path);
    CHECK(dir != NULL, "cannot list %s", dir_path);
    if (!dir) return;
    int checked = 0;
    for (struct dirent *entry; (entry = readdir(dir)) != NULL;) {
        size_t length = strlen(entry->d_name);
        if (length < 5 || strcmp(entry->d_name + length - 5, ".yaml") != 0) continue;
        char path[4500];
        snprintf(path, sizeof path, "%s/%s", dir_path, entry->d_name);
        tga_config cfg;
        init_ok(&cfg);
        tga_error_clear();
        tga_status status = tga_config_load(&cfg, path);
        if (status == TGA_OK) status = tga_config_validate(&cfg);
        CHECK(status == TGA_OK, "%s: %s", path, tga_error_message());
        checked++;
    }
    closedir(dir);
    CHECK(checked >= 2, "only %d configs found in %s", checked, dir_path);
}

/* ---- bad files ---------------------------------------------------------------------------------- */

typedef struct {
    const char *content;
    size_t size; /* 0: strlen(content) */
    size_t line; /* the line the message names; 0: none */
    const char *needle, *second_needle;
} bad_file;

static const bad_file bad_files[] = {
    {"model:\n  dim: 8\n  dmi: 3\n", 0, 3, "did you mean 'dim'", "valid keys: dim, n_layers"},
    {"train:\n  lr: 0.1\nmodle:\n  dim: 8\n", 0, 3, "did you mean 'model'",
     "valid sections: model, projector"},
    {"model:\n  dim: abc\n", 0, 2, "model.dim", "an integer in [1, 65536]"},
    {"model:\n  n_layers: 1.5\n", 0, 2, "model.n_layers", "\"1.5\""},
    {"model:\n  dim:\n    - 1\n    - 2\n", 0, 3, "model.dim", "got a list"},
    {"train:\n  lr: {a: 1}\n", 0, 2, "train.lr", "got a mapping"},
    {"model:\n  dim: \"64\"\n", 0, 2, "model.dim", "quoted"},
    {"model:\n  dim: 0\n", 0, 2, "model.dim", "out of range [1, 65536]"},
    {"model:\n  norm_eps: 0\n", 0, 2, "model.norm_eps", "(0, 1]"},
    {"train:\n  beta2: 1\n", 0, 2, "train.beta2", "[0, 1)"},
    {"train:\n  lr: .nan\n", 0, 2, "train.lr", "a number in [0, 10]"},
    {"train:\n  seed: 99999999999999999999\n", 0, 2, "train.seed", "out of range"},
    {"tga:\n  mode: intendd\n", 0, 2, "intended | released | off", "did you mean 'intended'"},
    {"model:\n  tie_embeddings: maybe\n", 0, 2, "model.tie_embeddings", "true or false"},
    {"model:\n  dim: 64\n  - 3\n", 0, 3, "malformed YAML", NULL},
    {"model:\n\tdim: 64\n", 0, 2, "malformed YAML", NULL},
    {"\x80\x81\x82 junk\n", 0, 1, "not YAML text", NULL},
    {"model:\n  dim: 6\x01\n", 0, 2, "not YAML text", NULL},
    {"model:\n  dim: 64\n\0\x01\x02\xff", 21, 3, "NUL byte", NULL},
    {"hello\n", 0, 1, "expected a mapping of sections", "\"hello\""},
    {"- model\n- train\n", 0, 1, "expected a mapping of sections", "a list"},
    {"", 0, 0, "empty", NULL},
    {"# a comment and nothing else\n", 0, 0, "empty", NULL},
    {"model:\n  dim: 8\n  n_layers: 2\n  dim: 9\n", 0, 4, "duplicate key model.dim", "line 2"},
    {"model:\n  dim: 8\ntrain:\n  lr: 0.1\nmodel:\n  n_layers: 2\n", 0, 5, "duplicate section 'model'",
     "line 1"},
    {"model: 5\n", 0, 1, "section 'model' must be a mapping", NULL},
    {"model:\n  [a, b]: 1\n", 0, 2, "expected a key name", NULL},
    {"model:\n  dim: 8\n---\ntrain:\n  lr: 0.1\n", 0, 4, "second YAML document", NULL},
    {"tga:\n  layers: \"5-3\"\n", 0, 2, "tga.layers", "runs backwards"},
    {"tga:\n  layers:\n    - 1\n    - x\n", 0, 4, "tga.layers", "\"x\""},
    {"tga:\n  layers: [1, [2]]\n", 0, 2, "tga.layers", "a list"},
    {"train:\n  out_dir: \"a\\0b\"\n", 0, 2, "train.out_dir", "NUL"},
    {"model:\n  dim: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n", 0, 2,
     "nested deeper", NULL},
    {"tga:\n  layers: [&a 1, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, "
     "*a, *a, *a,"
     " *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, "
     "*a, *a, *a,"
     " *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n",
     0, 2, "anchors and aliases", NULL},
};

static void test_bad_files(void) {
    char long_string[700] = "train:\n  out_dir: ";
    memset(long_string + strlen(long_string), 'a', 600);
    tga_config cfg, before;
    init_ok(&cfg);
    set_ok(&cfg, "model.dim=96"); /* not the defaults, so "unchanged" below means something */
    before = cfg;
    size_t n_cases = sizeof bad_files / sizeof bad_files[0];
    for (size_t i = 0; i <= n_cases; i++) {
        bad_file c = i < n_cases ? bad_files[i] : (bad_file){long_string, 0, 2, "train.out_dir", "too long"};
        char name[32], path[256], located[300];
        snprintf(name, sizeof name, "bad_%02zu.yaml", i);
        temp_path(name, path, sizeof path);
        tu_write_file(path, c.content, c.size ? c.size : strlen(c.content));
        if (c.line)
            snprintf(located, sizeof located, "%s:%zu: ", path, c.line);
        else
            snprintf(located, sizeof located, "%s: ", path);
        tga_error_clear();
        check_error(name, tga_config_load(&cfg, path), TGA_ERR_CONFIG, located, c.needle,
                    c.second_needle ? c.second_needle : c.needle, NULL);
        CHECK(memcmp(&cfg, &before, sizeof cfg) == 0, "%s: a failed load changed the config", name);
        unlink(path);
    }

    static char oversized[TGA_CFG_FILE_MAX + 2];
    memset(oversized, '#', sizeof oversized);
    char path[256];
    temp_path("oversized.yaml", path, sizeof path);
    tu_write_file(path, oversized, sizeof oversized);
    tga_error_clear();
    check_error("oversized file", tga_config_load(&cfg, path), TGA_ERR_CONFIG, path, "larger than", NULL);
    unlink(path);

    char missing[256];
    temp_path("missing.yaml", missing, sizeof missing);
    tga_error_clear();
    check_error("missing file", tga_config_load(&cfg, missing), TGA_ERR_IO, missing, NULL);
    tga_error_clear();
    check_error("directory", tga_config_load(&cfg, temp_dir), TGA_ERR_IO, temp_dir, NULL);
}

static void test_good_file(void) {
    const char *text = "model:\n"
                       "  dim: 32\n"
                       "  n_layers: &depth 6\n"
                       "  max_seq_len: *depth\n"
                       "projector:\n"
                       "runtime: ~\n"
                       "tga: {layers: [6, \"0\", 2-3], mode: released}\n"
                       "train:\n"
                       "  steps: 1e3          # an exact float is an integer\n"
                       "  recompute: yes\n"
                       "  init_from: ~\n"
                       "  out_dir: 'it''s here'\n";
    char path[256];
    temp_path("good.yaml", path, sizeof path);
    tu_write_file(path, text, strlen(text));
    tga_config cfg;
    init_ok(&cfg);
    set_ok(&cfg, "train.init_from=old.ckpt");
    tga_error_clear();
    CHECK(tga_config_load(&cfg, path) == TGA_OK, "good.yaml: %s", tga_error_message());
    const int layers[] = {0, 2, 3, 6};
    CHECK(cfg.model.dim == 32 && cfg.model.n_layers == 6 && cfg.model.max_seq_len == 6,
          "model keys and alias");
    CHECK(layers_equal(&cfg.tga.layers, layers, 4) && cfg.tga.mode == TGA_ALIGN_RELEASED, "flow mapping");
    CHECK(cfg.train.steps == 1000 && cfg.train.recompute, "steps %lld", (long long)cfg.train.steps);
    CHECK(cfg.train.init_from[0] == '\0' && strcmp(cfg.train.out_dir, "it's here") == 0, "strings");
    CHECK(cfg.model.n_heads == 4, "keys absent from the file keep their values");
    unlink(path);
}

/* ---- --set -------------------------------------------------------------------------------------- */

static void test_set(void) {
    tga_config cfg;
    init_ok(&cfg);
    set_ok(&cfg, "model.dim=128");
    set_ok(&cfg, "train.lr= 2e-4 ");
    set_ok(&cfg, "tga.layers=[10, 12-13]");
    set_ok(&cfg, "data.train=/data/my shards/a.zst");
    set_ok(&cfg, "train.out_dir=");
    set_ok(&cfg, "model.tie_embeddings=on");
    set_ok(&cfg, "train.seed=9007199254740992");
    set_ok(&cfg, "model.rope_theta=1e9");
    const int layers[] = {10, 12, 13};
    CHECK(cfg.model.dim == 128 && cfg.train.lr == 2e-4 && layers_equal(&cfg.tga.layers, layers, 3),
          "--set values");
    CHECK(strcmp(cfg.data.train, "/data/my shards/a.zst") == 0 && cfg.train.out_dir[0] == '\0',
          "--set strings");
    CHECK(cfg.model.tie_embeddings && cfg.train.seed == 9007199254740992LL && cfg.model.rope_theta == 1e9,
          "--set bool and bounds");

    char too_long[700] = "train.out_dir=";
    memset(too_long + strlen(too_long), 'x', 600);
    const struct {
        const char *assignment, *needle, *second_needle;
    } bad[] = {
        {"model.dmi=3", "--set model.dmi", "did you mean 'dim'"},
        {"modle.dim=3", "--set modle.dim", "did you mean 'model'"},
        {"model.dim=abc", "--set model.dim", "an integer in [1, 65536]"},
        {"model.dim=0", "--set model.dim", "out of range [1, 65536]"},
        {"model.dim=", "--set model.dim", "got nothing"},
        {"train.beta1=1", "--set train.beta1", "[0, 1)"},
        {"train.seed=9007199254740993", "--set train.seed", "out of range"},
        {"projector.type=mlp", "--set projector.type", "mlp2x_gelu | linear"},
        {"model.dim", "section.key=value", "model.dim"},
        {"dim=3", "section.key=value", "dim=3"},
        {"model.d\nim=3", "section.key=value", "\\x0A"},
        {"tga.layers=3-1", "--set tga.layers", "runs backwards"},
        {"data.train=\xff\xfe", "--set data.train", "UTF-8"},
        {too_long, "--set train.out_dir", "too long"},
    };
    tga_config before = cfg;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tga_error_clear();
        check_error(bad[i].assignment, tga_config_override(&cfg, bad[i].assignment), TGA_ERR_CONFIG,
                    bad[i].needle, bad[i].second_needle, NULL);
        CHECK(memcmp(&cfg, &before, sizeof cfg) == 0, "%s: a failed --set changed the config",
              bad[i].assignment);
    }
}

/* Each enum key's C constants must follow the order of its choices. */
static void test_enum_values(void) {
    const struct {
        const char *assignment;
        size_t offset;
        int expected;
    } cases[] = {
        {"projector.type=mlp2x_gelu", offsetof(tga_config, projector.type), TGA_PROJ_MLP2X_GELU},
        {"projector.type=linear", offsetof(tga_config, projector.type), TGA_PROJ_LINEAR},
        {"train.trainable=lm", offsetof(tga_config, train.trainable), TGA_TRAIN_LM},
        {"train.trainable=stage1", offsetof(tga_config, train.trainable), TGA_TRAIN_STAGE1},
        {"train.trainable=stage2", offsetof(tga_config, train.trainable), TGA_TRAIN_STAGE2},
        {"train.schedule=cosine", offsetof(tga_config, train.schedule), TGA_SCHEDULE_COSINE},
        {"train.schedule=constant", offsetof(tga_config, train.schedule), TGA_SCHEDULE_CONSTANT},
        {"train.on_nonfinite=stop", offsetof(tga_config, train.on_nonfinite), TGA_NONFINITE_STOP},
        {"train.on_nonfinite=skip", offsetof(tga_config, train.on_nonfinite), TGA_NONFINITE_SKIP},
        {"tga.mode=intended", offsetof(tga_config, tga.mode), TGA_ALIGN_INTENDED},
        {"tga.mode=released", offsetof(tga_config, tga.mode), TGA_ALIGN_RELEASED},
        {"tga.mode=off", offsetof(tga_config, tga.mode), TGA_ALIGN_OFF},
        {"data.template=plain", offsetof(tga_config, data.template), TGA_TEMPLATE_PLAIN},
        {"data.template=plain_retrieval", offsetof(tga_config, data.template), TGA_TEMPLATE_PLAIN_RETRIEVAL},
        {"data.template=llama_2", offsetof(tga_config, data.template), TGA_TEMPLATE_LLAMA_2},
        {"data.template=mistral_instruct", offsetof(tga_config, data.template),
         TGA_TEMPLATE_MISTRAL_INSTRUCT},
        {"data.template=chatml", offsetof(tga_config, data.template), TGA_TEMPLATE_CHATML},
        {"runtime.device=auto", offsetof(tga_config, runtime.device), TGA_DEVICE_AUTO},
        {"runtime.device=cpu", offsetof(tga_config, runtime.device), TGA_DEVICE_CPU},
        {"runtime.device=cuda", offsetof(tga_config, runtime.device), TGA_DEVICE_CUDA},
        {"runtime.log_level=debug", offsetof(tga_config, runtime.log_level), TGA_LOG_DEBUG},
        {"runtime.log_level=info", offsetof(tga_config, runtime.log_level), TGA_LOG_INFO},
        {"runtime.log_level=warn", offsetof(tga_config, runtime.log_level), TGA_LOG_WARN},
        {"runtime.log_level=error", offsetof(tga_config, runtime.log_level), TGA_LOG_ERROR},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tga_config cfg;
        init_ok(&cfg);
        set_ok(&cfg, cases[i].assignment);
        int stored;
        memcpy(&stored, (const char *)&cfg + cases[i].offset, sizeof stored);
        CHECK(stored == cases[i].expected, "%s stored %d, the C enum says %d", cases[i].assignment, stored,
              cases[i].expected);
    }
}

/* ---- write -> load round trip ------------------------------------------------------------------- */

/* Write `cfg`, load it into a fresh default config, and require the two to be identical. */
static void check_round_trip(const tga_config *cfg, const char *what) {
    char path[256];
    temp_path("round_trip.yaml", path, sizeof path);
    FILE *file = fopen(path, "w");
    CHECK(file != NULL, "cannot create %s", path);
    if (!file) return;
    tga_error_clear();
    tga_status written = tga_config_write(cfg, file);
    fclose(file);
    CHECK(written == TGA_OK, "%s: write failed: %s", what, tga_error_message());
    tga_config loaded;
    init_ok(&loaded);
    tga_error_clear();
    tga_status status = tga_config_load(&loaded, path);
    CHECK(status == TGA_OK, "%s: the written config does not load: %s", what, tga_error_message());
    if (status != TGA_OK || memcmp(&loaded, cfg, sizeof loaded) == 0) return;
    size_t n;
    const tga_cfg_key *schema = tga_config_schema(&n);
    for (size_t i = 0; i < n; i++) { /* fields are in schema order, so each ends where the next starts */
        size_t end = i + 1 < n ? schema[i + 1].offset : sizeof *cfg;
        if (memcmp((const char *)&loaded + schema[i].offset, (const char *)cfg + schema[i].offset,
                   end - schema[i].offset) != 0)
            tu_fail(__FILE__, __LINE__, "%s: %s.%s differs after the round trip", what, schema[i].section,
                    schema[i].name);
    }
    CHECK(0, "%s: round trip not identical", what);
}

static void test_round_trip_tricky(void) {
    static const char *const strings[] = {
        "",
        "true",
        "123",
        "null",
        "~",
        "- item",
        "[x]",
        "{y: z}",
        "&a *b",
        "!tag",
        "%dir",
        "@at",
        "`tick`",
        "#hash",
        "a: b",
        "'single'",
        "\"double\"",
        "back\\slash",
        "  padded  ",
        "tab\there",
        "line\nbreak",
        "\r\x01\x1f\x7f",
        "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80", /* e-acute, CJK, an emoji */
        "glob/*.zst *[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&*[{&",
        "nel\xc2\x85 ls\xe2\x80\xa8 ps\xe2\x80\xa9 bom\xef\xbb\xbf c1\xc2\x80 \xef\xbf\xbe", /* line breaks,
                                                                                                BOM */
    };
    tga_config cfg;
    init_ok(&cfg);
    set_ok(&cfg, "tga.layers=0,4,8-12");
    set_ok(&cfg, "model.rope_theta=123456789.123456789");
    set_ok(&cfg, "train.lr=0.30000000000000004");
    set_ok(&cfg, "train.weight_decay=-0.0");
    set_ok(&cfg, "tga.cos_eps=4.9e-324");
    set_ok(&cfg, "train.seed=9007199254740992");
    set_ok(&cfg, "train.recompute=true");
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        memset(cfg.data.train, 0, sizeof cfg.data.train);
        memcpy(cfg.data.train, strings[i], strlen(strings[i]));
        char what[64];
        snprintf(what, sizeof what, "round trip of string %zu", i);
        check_round_trip(&cfg, what);
    }
}

static uint64_t random_below(uint64_t *state, uint64_t bound) { return bound ? tu_next(state) % bound : 0; }

static double random_unit(uint64_t *state) { return (double)(tu_next(state) >> 11) * 0x1.0p-53; }

static size_t utf8_encode(uint32_t c, char *out) {
    size_t length = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    static const unsigned char lead[5] = {0, 0x00, 0xC0, 0xE0, 0xF0};
    for (size_t i = length - 1; i > 0; i--, c >>= 6)
        out[i] = (char)(0x80 | (c & 0x3F));
    out[0] = (char)(lead[length] | c);
    return length;
}

/* Code points from every class the writer treats differently. */
static uint32_t random_code_point(uint64_t *state) {
    static const uint32_t tricky[] = {0x01,   0x09,   0x0A,   0x0D,   0x1F,   0x22,   0x23,    0x27,
                                      0x3A,   0x5C,   0x7F,   0x80,   0x85,   0x9F,   0xA0,    0x2028,
                                      0x2029, 0xD7FF, 0xE000, 0xFEFF, 0xFFFE, 0xFFFF, 0x10000, 0x10FFFF};
    switch (random_below(state, 4)) {
    case 0:
        return tricky[random_below(state, sizeof tricky / sizeof tricky[0])];
    case 1:
        return 0x20 + (uint32_t)random_below(state, 0x5F);
    case 2: {
        uint32_t c = 1 + (uint32_t)random_below(state, 0xFFFF);
        return c >= 0xD800 && c <= 0xDFFF ? 0x41 : c;
    }
    default:
        return 0x10000 + (uint32_t)random_below(state, 0x100000);
    }
}

static void random_string(char *out, uint64_t *state) {
    size_t length = 0, wanted = random_below(state, 40);
    for (size_t i = 0; i < wanted && length + 4 < TGA_CFG_STRING_MAX; i++)
        length += utf8_encode(random_code_point(state), out + length);
    memset(out + length, 0, TGA_CFG_STRING_MAX - length);
}

static double random_double_in(const tga_cfg_key *key, uint64_t *state) {
    for (;;) {
        double v;
        switch (random_below(state, 4)) {
        case 0:
            v = random_below(state, 2) ? key->min : key->max;
            break;
        case 1:
            v = key->min + random_unit(state) * (key->max - key->min);
            break;
        case 2:
            v = pow(10.0, -300.0 * random_unit(state)) * key->max;
            break;
        default:
            v = (double)random_below(state, 1000) / 8.0;
            break;
        }
        bool ok = (key->bounds & TGA_CFG_MIN_OPEN ? v > key->min : v >= key->min) &&
                  (key->bounds & TGA_CFG_MAX_OPEN ? v < key->max : v <= key->max);
        if (ok) return v;
    }
}

static void random_value(tga_config *cfg, const tga_cfg_key *key, uint64_t *state) {
    char *field = (char *)cfg + key->offset;
    switch (key->type) {
    case TGA_CFG_INT: {
        uint64_t span = (uint64_t)(key->max - key->min) + 1;
        int64_t v = random_below(state, 3) == 0 ? (int64_t)(random_below(state, 2) ? key->min : key->max)
                                                : (int64_t)key->min + (int64_t)random_below(state, span);
        memcpy(field, &v, sizeof v);
        return;
    }
    case TGA_CFG_FLOAT: {
        double v = random_double_in(key, state);
        memcpy(field, &v, sizeof v);
        return;
    }
    case TGA_CFG_BOOL:
        *(bool *)field = random_below(state, 2);
        return;
    case TGA_CFG_STRING:
        random_string(field, state);
        return;
    case TGA_CFG_ENUM: {
        int choices = 1;
        for (const char *c = key->choices; *c; c++)
            choices += *c == '|';
        int v = (int)random_below(state, (uint64_t)choices);
        memcpy(field, &v, sizeof v);
        return;
    }
    case TGA_CFG_LAYERS: {
        tga_layer_set set = {0};
        int wanted = (int)random_below(state, 40);
        for (int layer = (int)random_below(state, 4); layer <= 1024 && set.count < wanted;
             layer += 1 + (int)random_below(state, random_below(state, 2) ? 2 : 60))
            set.layers[set.count++] = layer;
        memcpy(field, &set, sizeof set);
        return;
    }
    }
}

static void test_round_trip_random(void) {
    size_t n;
    const tga_cfg_key *schema = tga_config_schema(&n);
    uint64_t state = 20250101;
    for (int round = 0; round < 300; round++) {
        tga_config cfg;
        init_ok(&cfg);
        for (size_t i = 0; i < n; i++)
            random_value(&cfg, &schema[i], &state);
        char what[64];
        snprintf(what, sizeof what, "random config %d", round);
        check_round_trip(&cfg, what);
    }
}

/* ---- layer sets --------------------------------------------------------------------------------- */

static void expect_layers(const char *text, const int *expected, int count) {
    tga_layer_set set;
    tga_error_clear();
    tga_status status = tga_layer_set_parse(&set, text, "test");
    CHECK(status == TGA_OK && layers_equal(&set, expected, count),
          "layer set \"%s\": status %d, %d layers (%s)", text, (int)status, set.count, tga_error_message());
}

static void test_layer_sets_fixed(void) {
    const int nine[] = {10, 11, 12, 13, 14, 15, 16, 17, 18}, mixed[] = {0, 4, 8, 9, 10, 11, 12},
              three[] = {1, 2, 3};
    const int one[] = {7}, spaced[] = {1, 3, 4, 5};
    expect_layers("10-18", nine, 9);
    expect_layers("0,4,8-12", mixed, 7);
    expect_layers("[1, 2, 3]", three, 3);
    expect_layers("1,1,2-3,2", three, 3);
    expect_layers(" 7 ", one, 1);
    expect_layers("3 - 5, 1", spaced, 4);
    expect_layers("", NULL, 0);
    expect_layers("[ ]", NULL, 0);

    const struct {
        const char *text, *reason;
    } bad[] = {
        {"5-3", "runs backwards"},
        {"a", "not a layer index"},
        {"-1", "non-negative"},
        {"1,,2", "empty"},
        {"1,", "empty"},
        {",1", "empty"},
        {"[1,2", "']' is missing"},
        {"1]", "follows an item"},
        {"1-", "empty"},
        {"1 2", "follows an item"},
        {"2000000", "above 1048576"},
        {"0-300", "more than 256"},
        {"1.5", "follows an item"},
        {"[1,2]x", "follows an item"},
        {"3-x", "not a layer index"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tga_layer_set set;
        char quoted[64];
        snprintf(quoted, sizeof quoted, "\"%s\"", bad[i].text);
        tga_error_clear();
        check_error(bad[i].text, tga_layer_set_parse(&set, bad[i].text, "where.key"), TGA_ERR_CONFIG,
                    "where.key: ", quoted, bad[i].reason, NULL);
    }
}

/* Random lists of indices and ranges against a naive reference: a table of marks. */
static void test_layer_sets_random(void) {
    uint64_t state = 77;
    for (int round = 0; round < 2000; round++) {
        bool marked[400] = {false};
        char text[2048] = "";
        size_t used = 0;
        int items = (int)random_below(&state, 12);
        for (int i = 0; i < items; i++) {
            int first = (int)random_below(&state, 300), last = first + (int)random_below(&state, 40);
            if (random_below(&state, 2)) last = first;
            for (int l = first; l <= last; l++)
                marked[l] = true;
            const char *space = random_below(&state, 3) ? "" : " ";
            used += (size_t)snprintf(text + used, sizeof text - used, "%s%s%d", i ? "," : "", space, first);
            if (last != first)
                used += (size_t)snprintf(text + used, sizeof text - used, "%s-%s%d", space, space, last);
        }
        int expected[400], count = 0;
        for (int l = 0; l < 400; l++)
            if (marked[l]) expected[count++] = l;
        tga_layer_set set;
        tga_error_clear();
        tga_status status = tga_layer_set_parse(&set, text, "random");
        if (count > TGA_LAYER_SET_MAX) {
            CHECK(status == TGA_ERR_CONFIG, "\"%s\": %d layers accepted", text, count);
            continue;
        }
        CHECK(status == TGA_OK && layers_equal(&set, expected, count),
              "\"%s\": parsed %d layers, expected %d (%s)", text, set.count, count, tga_error_message());
        char formatted[TGA_LAYER_SET_TEXT_MAX];
        tga_layer_set_format(&set, formatted, sizeof formatted);
        tga_layer_set reparsed;
        CHECK(tga_layer_set_parse(&reparsed, formatted, "random") == TGA_OK &&
                  memcmp(&reparsed, &set, sizeof set) == 0,
              "\"%s\" formatted as \"%s\" does not read back", text, formatted);
    }
}

/* ---- cross-key checks, help, robustness ---------------------------------------------------------- */

static void test_validate(void) {
    const struct {
        const char *first, *second, *needle; /* needle NULL: must validate */
    } cases[] = {
        {"model.n_kv_heads=3", NULL, "model.n_kv_heads"},
        {"model.dim=66", NULL, "model.dim"},
        {"model.head_dim=3", NULL, "even"},
        {"model.dim=36", NULL, "even"},
        {"model.dim=66", "model.head_dim=16", NULL},
        {"tga.layers=0-4", NULL, NULL},
        {"tga.layers=2-5", NULL, "tga.layers"},
        {"data.max_len=512", NULL, "model.max_seq_len"},
        {"data.image_tokens=256", NULL, "data.image_tokens"},
        {"tga.layers=", NULL, "tga.layers"},
        {"tga.layers=", "tga.mode=off", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tga_config cfg;
        init_ok(&cfg);
        set_ok(&cfg, cases[i].first);
        if (cases[i].second) set_ok(&cfg, cases[i].second);
        tga_error_clear();
        tga_status status = tga_config_validate(&cfg);
        if (cases[i].needle)
            check_error(cases[i].first, status, TGA_ERR_CONFIG, cases[i].needle, NULL);
        else
            CHECK(status == TGA_OK, "%s: %s", cases[i].first, tga_error_message());
    }
}

static void test_help(void) {
    char path[256];
    temp_path("help.txt", path, sizeof path);
    FILE *file = fopen(path, "w+");
    CHECK(file != NULL, "cannot create %s", path);
    if (!file) return;
    tga_config_help(file);
    static char text[64 * 1024];
    rewind(file);
    text[fread(text, 1, sizeof text - 1, file)] = '\0';
    fclose(file);
    unlink(path);
    size_t n;
    const tga_cfg_key *schema = tga_config_schema(&n);
    for (size_t i = 0; i < n; i++) {
        char entry[256];
        snprintf(entry, sizeof entry, "%s.%s: ", schema[i].section, schema[i].name);
        const char *line = strstr(text, entry);
        CHECK(line != NULL, "help lacks %s", entry);
        if (!line) continue;
        size_t line_length = strcspn(line, "\n");
        char head[512];
        snprintf(head, sizeof head, "%.*s", (int)line_length, line);
        CHECK(strstr(head, schema[i].default_value) != NULL, "help for %s lacks its default: %s", entry,
              head);
        CHECK(strstr(line + line_length, schema[i].help) == line + line_length + 5,
              "help for %s lacks its text", entry);
    }
    CHECK(strstr(text, "model.norm_eps: float, default 1e-5, range (0, 1]") != NULL, "open bound in help");
    CHECK(strstr(text, "choices intended | released | off") != NULL, "choices in help");
}

/* Mutations of a valid file: any result is fine except a crash, a status other than OK/CONFIG, or
 * an error without a one-line message naming the file. */
static void test_mutations(const char *source_dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/configs/mistral7b_stage1.yaml", source_dir);
    FILE *file = fopen(path, "rb");
    CHECK(file != NULL, "cannot open %s", path);
    if (!file) return;
    static char original[16384], mutated[16384 + 64];
    size_t size = fread(original, 1, sizeof original, file);
    fclose(file);
    size_t n;
    const tga_cfg_key *schema = tga_config_schema(&n);
    uint64_t state = 4242;
    static const char junk[] = "[]{}:,-#&*!|>'\"\n \t\\0x%@`?~";
    int failures = 0;
    for (int round = 0; round < 3000 && failures < 5; round++) {
        memcpy(mutated, original, size);
        size_t length = size;
        for (int edits = 1 + (int)random_below(&state, 4); edits > 0 && length > 0; edits--) {
            size_t at = random_below(&state, length);
            switch (random_below(&state, 4)) {
            case 0:
                mutated[at] = (char)random_below(&state, 256);
                break;
            case 1:
                mutated[at] = junk[random_below(&state, sizeof junk - 1)];
                break;
            case 2:
                length = at;
                break;
            default:
                memmove(mutated + at, mutated + at + 1, length - at - 1), length--;
                break;
            }
        }
        tga_config cfg;
        init_ok(&cfg);
        tga_error_clear();
        tga_status status = tga_cfg_load_buffer(&cfg, schema, n, mutated, length, "mutant.yaml");
        const char *message = tga_error_message();
        bool fine = status == TGA_OK || (status == TGA_ERR_CONFIG &&
                                         strncmp(message, "mutant.yaml", 11) == 0 && !strchr(message, '\n'));
        CHECK(fine, "mutation %d: status %d, message '%s'", round, (int)status, message);
        failures += !fine;
    }
}

int main(void) {
    char source_dir[4096];
    snprintf(temp_dir, sizeof temp_dir, "/tmp/tga_test_config_XXXXXX");
    if (!find_source_dir(source_dir, sizeof source_dir) || !mkdtemp(temp_dir)) {
        tu_fail(__FILE__, __LINE__, "no source dir (set TGA_SOURCE_DIR), or no temp dir");
        return tu_finish("test_config");
    }
    test_defaults();
    test_shipped_configs(source_dir);
    test_every_shipped_config(source_dir);
    test_bad_files();
    test_good_file();
    test_set();
    test_enum_values();
    test_round_trip_tricky();
    test_round_trip_random();
    test_layer_sets_fixed();
    test_layer_sets_random();
    test_validate();
    test_help();
    test_mutations(source_dir);
    char round_trip[256];
    temp_path("round_trip.yaml", round_trip, sizeof round_trip);
    unlink(round_trip);
    rmdir(temp_dir);
    return tu_finish("test_config");
}
