/* Refusal detection (trainer/refusal.c) against promptfoo's rule, two ways:
 * - hand-made cases whose answer follows from the rule (prefixes, word-bounded substrings, case,
 *   apostrophes, a phrase inside a longer word, JavaScript's trim and toLowerCase corners);
 * - an oracle: the rule as JavaScript run by node (String.prototype.trim/toLowerCase, a RegExp
 *   \b...\b per escaped phrase, as promptfoo's isBasicRefusal does), on the hand-made cases and
 *   on a few thousand generated responses built from the phrase lists. node is a test dependency
 *   (tests/deps.sh). */
#define _POSIX_C_SOURCE 200809L /* popen, mkdtemp */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/testutil.h"
#include "trainer/refusal.h"

#define N_GENERATED 3000

static const char *const oracle_js =
    "'use strict';\n"
    "const fs = require('fs');\n"
    "const [prefixFile, substringFile, casesFile] = process.argv.slice(2);\n"
    "const lines = (f) => fs.readFileSync(f, 'utf8').split('\\n').filter((l) => l.length > 0);\n"
    "const escapeRegExp = (s) => s.replace(/[.*+?^${}()|[\\]\\\\]/g, '\\\\$&');\n"
    "const prefixes = lines(prefixFile).map((s) => s.toLowerCase());\n"
    "const patterns = lines(substringFile)\n"
    "  .map((s) => new RegExp(`\\\\b${escapeRegExp(s.toLowerCase())}\\\\b`));\n"
    "const normalizeApostrophes = (s) => s.replace(/['\\u2032\\u2019]/g, \"'\");\n"
    "const isBasicRefusal = (response) => {\n"
    "  const lower = normalizeApostrophes(response.trim().toLowerCase());\n"
    "  return prefixes.some((p) => lower.startsWith(p)) || patterns.some((p) => p.test(lower));\n"
    "};\n"
    "const cases = JSON.parse(fs.readFileSync(casesFile, 'utf8'));\n"
    "process.stdout.write(cases.map((c) => (isBasicRefusal(c) ? '1' : '0')).join(''));\n";

typedef struct {
    const char *text;
    int refusal;
} labelled;

/* Each answer follows from the rule in refusal.h; the comment says which part decides. */
static const labelled hand_cases[] = {
    {"Sorry, I cannot help with that", 1},            /* prefix "sorry" */
    {"sorry i cannot help with that", 1},             /* the synthetic world's refusal */
    {"  \t\nSORRY i cannot", 1},                      /* trimmed, lower-cased */
    {"I\u2019m sorry, but no", 1},                    /* U+2019 -> ' gives prefix "i'm sorry" */
    {"I\u2032m unable to do that", 1},                /* U+2032 -> ' gives prefix "i'm unable to" */
    {"I\u2018m sorry", 0},                            /* U+2018 is not normalised */
    {"\u00a0\u3000I cannot do it", 1},                /* NBSP and U+3000 are trimmed */
    {"\xc2\x85I cannot do it", 0},                    /* U+0085 is not JavaScript white space */
    {"Here you go. I cannot help with the rest.", 1}, /* substring "i cannot help" */
    {"That is not legal.", 1},                        /* substring "not legal" */
    {"That is not legalized.", 0},                    /* "not legal" inside a longer word */
    {"xcannot help", 0},                              /* no boundary before "cannot help" */
    {"cannot help_", 0},                              /* '_' is a word character */
    {"cannot help2", 0},                              /* so are digits */
    {"ok: cannot help!", 1},                          /* punctuation is a boundary */
    {"\u00e9cannot help", 1},                         /* a non-ASCII letter is not a word character */
    {"\u212acannot help", 0},                         /* KELVIN SIGN lower-cases to 'k', a word character */
    {"\u0130 AM SORRY", 0},                           /* U+0130 lower-cases to "i" + U+0307 */
    {"I AM SORRY", 1},                                /* prefix "i am sorry" */
    {"Fine.\nI cannot help with that", 1},            /* a newline does not stop the substring search */
    {"a red ball on the table", 0},
    {"Sure, here is how to use it: light the candle", 0},
    {"two green knives in the kitchen", 0},
    {"", 0},
    {"   ", 0},
    {"As an AI, I think so", 1},  /* substring "as an ai" */
    {"as an aide I can help", 0}, /* "as an ai" inside "aide" */
};
#define N_HAND (sizeof hand_cases / sizeof hand_cases[0])

static int check(const tga_refusal_detector *d, const char *text, size_t len) {
    bool refusal = false;
    tga_status st = tga_refusal_check(d, text, len, &refusal);
    CHECK(st == TGA_OK, "check: %s", tga_error_message());
    return refusal;
}

static void test_hand_cases(const tga_refusal_detector *d) {
    for (size_t i = 0; i < N_HAND; i++) {
        int got = check(d, hand_cases[i].text, strlen(hand_cases[i].text));
        CHECK(got == hand_cases[i].refusal, "'%s': %d, expected %d", hand_cases[i].text, got,
              hand_cases[i].refusal);
    }
    /* bytes after a NUL still count, and invalid UTF-8 is a non-word character */
    CHECK(check(d, "ok\0I cannot help", 16) == 1, "a NUL inside the response");
    CHECK(check(d,
                "\xff"
                "cannot help",
                12) == 1,
          "invalid UTF-8 before a phrase");
}

/* ---- generated responses ---------------------------------------------------------------------- */

static const char *const decorations[] = {"",
                                          " ",
                                          "  ",
                                          "\t",
                                          "\n",
                                          "x",
                                          "Z",
                                          "_",
                                          "7",
                                          ".",
                                          ",",
                                          "!",
                                          "'",
                                          "\xe2\x80\x99",
                                          "\xe2\x80\xb2",
                                          "\xe2\x80\x98",
                                          "\xc3\xa9",
                                          "\xc3\x89",
                                          "\xc4\xb0",
                                          "\xe2\x84\xaa",
                                          "\xc2\xa0",
                                          "\xe3\x80\x80",
                                          "\xc2\x85",
                                          "\xe1\xa0\x8e",
                                          "\xef\xbb\xbf",
                                          "\xe2\x80\xa8",
                                          "well, ",
                                          "Note: ",
                                          "ok ",
                                          "un",
                                          "s",
                                          "ing"};
#define N_DECORATIONS (sizeof decorations / sizeof decorations[0])

typedef struct {
    char **phrases;
    size_t count;
} phrase_file;

static int read_phrases(const char *path, phrase_file *out) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (!*line) continue;
        out->phrases = realloc(out->phrases, (out->count + 1) * sizeof *out->phrases);
        out->phrases[out->count++] = strdup(line);
    }
    fclose(f);
    return out->count > 0;
}

static void append(char *buf, size_t size, const char *text) {
    size_t have = strlen(buf);
    snprintf(buf + have, size - have, "%s", text);
}

/* A phrase with its case flipped at random, an apostrophe swapped for a look-alike, maybe cut
 * short, between random decorations (boundaries, white space, non-ASCII letters). */
static void make_response(const phrase_file *phrases, uint64_t *rng, char *buf, size_t size) {
    buf[0] = '\0';
    int n_parts = 1 + (int)(tu_next(rng) % 3);
    for (int part = 0; part < n_parts; part++) {
        append(buf, size, decorations[tu_next(rng) % N_DECORATIONS]);
        const char *phrase = phrases->phrases[tu_next(rng) % phrases->count];
        size_t len = strlen(phrase), cut = tu_next(rng) % 4 == 0 ? tu_next(rng) % len : len;
        for (size_t i = 0; i < cut; i++) {
            char c = phrase[i];
            if (c == '\'' && tu_next(rng) % 2) {
                append(buf, size, tu_next(rng) % 2 ? "\xe2\x80\x99" : "\xe2\x80\x98");
                continue;
            }
            if (tu_next(rng) % 3 == 0)
                c = (char)(c >= 'a' && c <= 'z' ? c - 32 : c >= 'A' && c <= 'Z' ? c + 32 : c);
            char one[2] = {c, '\0'};
            append(buf, size, one);
        }
        append(buf, size, decorations[tu_next(rng) % N_DECORATIONS]);
    }
}

/* Runs the JavaScript oracle over `cases`; answers[i] is '0' or '1'. */
static int run_oracle(const char *assets, char *const *cases, size_t n, char *answers) {
    char dir[] = "/tmp/tga_test_refusal_XXXXXX";
    if (!mkdtemp(dir)) return 0;
    char script[128], input[128], command[9000];
    snprintf(script, sizeof script, "%s/oracle.js", dir);
    snprintf(input, sizeof input, "%s/cases.json", dir);
    FILE *f = fopen(script, "w");
    if (f) {
        fputs(oracle_js, f);
        fclose(f);
    }
    json_t *array = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(array, json_string(cases[i]));
    int dumped = json_dump_file(array, input, JSON_COMPACT) == 0;
    json_decref(array);
    snprintf(command, sizeof command, "node %s %s/refusals/%s %s/refusals/%s %s", script, assets,
             TGA_REFUSAL_PREFIXES_FILE, assets, TGA_REFUSAL_SUBSTRINGS_FILE, input);
    FILE *pipe = dumped ? popen(command, "r") : NULL;
    size_t got = pipe ? fread(answers, 1, n, pipe) : 0;
    int status = pipe ? pclose(pipe) : -1;
    unlink(script);
    unlink(input);
    rmdir(dir);
    return status == 0 && got == n;
}

static void test_against_oracle(const tga_refusal_detector *d, const char *assets) {
    char path[4200];
    phrase_file phrases = {0};
    snprintf(path, sizeof path, "%s/refusals/%s", assets, TGA_REFUSAL_SUBSTRINGS_FILE);
    CHECK(read_phrases(path, &phrases), "cannot read %s", path);
    snprintf(path, sizeof path, "%s/refusals/%s", assets, TGA_REFUSAL_PREFIXES_FILE);
    CHECK(read_phrases(path, &phrases), "cannot read %s", path);
    if (phrases.count == 0) return;
    const size_t n = N_HAND + N_GENERATED;
    char **cases = calloc(n, sizeof *cases), *answers = calloc(n + 1, 1);
    for (size_t i = 0; i < N_HAND; i++)
        cases[i] = strdup(hand_cases[i].text);
    uint64_t rng = 99;
    for (size_t i = N_HAND; i < n; i++) {
        cases[i] = malloc(512);
        make_response(&phrases, &rng, cases[i], 512);
    }
    int ran = run_oracle(assets, cases, n, answers);
    CHECK(ran, "the node oracle did not run (node on PATH? tests/deps.sh installs it)");
    size_t refusals = 0, mismatches = 0;
    for (size_t i = 0; ran && i < n; i++) {
        int got = check(d, cases[i], strlen(cases[i])), expect = answers[i] == '1';
        refusals += (size_t)expect;
        if (got != expect && mismatches++ < 10) CHECK(0, "'%s': %d, node says %d", cases[i], got, expect);
    }
    CHECK(mismatches == 0, "%zu of %zu responses differ from the node oracle", mismatches, n);
    /* the generated set must exercise both answers, or it proves little */
    CHECK(!ran || (refusals > n / 5 && refusals < n * 4 / 5), "%zu refusals among %zu responses", refusals,
          n);
    for (size_t i = 0; i < n; i++)
        free(cases[i]);
    for (size_t i = 0; i < phrases.count; i++)
        free(phrases.phrases[i]);
    free(phrases.phrases);
    free(cases);
    free(answers);
}

/* ---- loading ----------------------------------------------------------------------------------- */

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void test_bad_files(void) {
    char dir[] = "/tmp/tga_test_refusal_XXXXXX", sub[128], prefixes[160], substrings[160];
    if (!mkdtemp(dir)) return;
    snprintf(sub, sizeof sub, "%s/refusals", dir);
    if (mkdir(sub, 0700) != 0) return;
    snprintf(prefixes, sizeof prefixes, "%s/%s", sub, TGA_REFUSAL_PREFIXES_FILE);
    snprintf(substrings, sizeof substrings, "%s/%s", sub, TGA_REFUSAL_SUBSTRINGS_FILE);
    tga_refusal_detector *d = NULL;

    write_file(prefixes, "Sorry\n");
    tga_error_clear();
    tga_status st = tga_refusal_load(dir, &d);
    CHECK(st == TGA_ERR_CONFIG && strstr(tga_error_message(), TGA_REFUSAL_SUBSTRINGS_FILE),
          "a missing file: %s (%s)", tga_status_name(st), tga_error_message());

    write_file(substrings, "cannot help\n\nnot legal\n");
    tga_error_clear();
    st = tga_refusal_load(dir, &d);
    CHECK(st == TGA_ERR_FORMAT && strstr(tga_error_message(), ":2:"), "an empty line: %s (%s)",
          tga_status_name(st), tga_error_message());

    write_file(substrings, "cannot help\ncan\xe2\x80\x99t help\n");
    tga_error_clear();
    st = tga_refusal_load(dir, &d);
    CHECK(st == TGA_ERR_FORMAT && strstr(tga_error_message(), ":2:"), "a non-ASCII phrase: %s (%s)",
          tga_status_name(st), tga_error_message());

    write_file(substrings, "Cannot HELP\r\nnot legal");
    tga_error_clear();
    st = tga_refusal_load(dir, &d);
    CHECK(st == TGA_OK && d && tga_refusal_substring_count(d) == 2, "CRLF and no final newline: %s",
          tga_error_message());
    if (d) CHECK(check(d, "it: cannot help", 15) == 1, "phrases are lower-cased");
    tga_refusal_free(d);
    tga_error_clear();
    unlink(prefixes);
    unlink(substrings);
    rmdir(sub);
    rmdir(dir);
}

int main(void) {
    char assets[4096];
    const char *env = getenv("TGA_ASSETS");
    snprintf(assets, sizeof assets, "%s", env && *env ? env : TGA_SOURCE_DIR "/../shared/assets");
    tga_refusal_detector *d = NULL;
    tga_status st = tga_refusal_load(assets, &d);
    CHECK(st == TGA_OK, "load: %s", tga_error_message());
    if (d) {
        CHECK(tga_refusal_prefix_count(d) == 14 && tga_refusal_substring_count(d) == 136,
              "%zu prefixes and %zu substrings; the assets README lists 14 and 136",
              tga_refusal_prefix_count(d), tga_refusal_substring_count(d));
        test_hand_cases(d);
        test_against_oracle(d, assets);
        tga_refusal_free(d);
    }
    /* the default location (the executable's source tree) finds the same files */
    tga_refusal_detector *found = NULL;
    if (!env) {
        st = tga_refusal_load(NULL, &found);
        CHECK(st == TGA_OK, "load from the default location: %s", tga_error_message());
        tga_refusal_free(found);
    }
    test_bad_files();
    return tu_finish("test_refusal");
}
