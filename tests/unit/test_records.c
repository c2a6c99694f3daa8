/* LLaVA-style records: the streaming reader against jansson reading the whole file (random records
 * with tricky strings, pretty-printed and compact arrays, JSON Lines with blank lines and CRLF,
 * records larger than the read buffer), record and line numbers, broken arrays (fatal, with the
 * line), and the parser on good records (every accepted form, upstream's R == C rule on multi-byte
 * text, tox from the field and from the id) and on one bad record per rule, each message naming
 * the file, the record number, the field and what was expected, on one line.
 *
 *   test_records                      run the tests
 *   test_records --write-corpus DIR   write the fuzz seeds (tests/fuzz/corpus/records) and exit */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */

#include "trainer/records.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/testutil.h"

static char tmp_dir[] = "/tmp/tga_test_records_XXXXXX";

/* ---- the reader against jansson ------------------------------------------------------------- */

/* A string with the characters that trip a hand-written scanner: quotes, backslashes, brackets,
 * commas, newlines, multi-byte UTF-8. */
static json_t *tricky_string(uint64_t *rng, size_t length) {
    static const char *parts[] = {"\"",       "\\",           "[",       "]",    "{",  "}",
                                  ",",        "\n",           "\t",      "a",    "b",  " ",
                                  "\xC3\xA9", "\xE2\x96\x81", "<image>", "\\\"", "}]", "\r\n"};
    size_t n_parts = sizeof parts / sizeof parts[0];
    char *buf = malloc(length * 4 + 1);
    size_t o = 0;
    while (o < length) {
        const char *p = parts[tu_next(rng) % n_parts];
        memcpy(buf + o, p, strlen(p));
        o += strlen(p);
    }
    buf[o] = '\0';
    json_t *s = json_string(buf);
    free(buf);
    return s;
}

static json_t *random_record(uint64_t *rng, uint64_t i, size_t big) {
    json_t *turns = json_array();
    for (int t = 0; t < 2; t++)
        json_array_append_new(turns,
                              json_pack("{s:s, s:o}", "from", t ? "gpt" : "human", "value",
                                        tricky_string(rng, t == 1 && big ? big : 1 + tu_next(rng) % 40)));
    json_t *r = json_pack("{s:I, s:o, s:[i, {s:[]}]}", "id", (json_int_t)i, "conversations", turns, "extra",
                          1, "nested", "deep");
    json_object_set_new(r, "image_caption", tricky_string(rng, 1 + tu_next(rng) % 30));
    return r;
}

/* Read every record and compare its bytes, parsed alone, with the reference element. */
static void check_stream(const char *path, json_t *reference, const char *what) {
    tga_record_reader *r = NULL;
    CHECK(tga_record_reader_open(path, &r) == TGA_OK, "%s: open: %s", what, tga_error_message());
    if (!r) return;
    size_t i = 0;
    for (bool done = false;;) {
        tga_raw_record raw;
        tga_status st = tga_record_reader_next(r, &raw, &done);
        CHECK(st == TGA_OK, "%s: record %zu: %s", what, i, tga_error_message());
        if (st != TGA_OK || done) break;
        json_t *got = json_loadb(raw.bytes, raw.len, 0, NULL);
        CHECK(raw.number == i && got && json_equal(got, json_array_get(reference, i)),
              "%s: record %zu (number %llu) differs from jansson's", what, i, (unsigned long long)raw.number);
        json_decref(got);
        i++;
    }
    CHECK(i == json_array_size(reference), "%s: %zu records read, %zu written", what, i,
          json_array_size(reference));
    CHECK(tga_record_reader_offset(r) == tga_record_reader_size(r), "%s: not everything consumed", what);
    tga_record_reader_close(r);
}

static void test_reader_random(void) {
    uint64_t rng = 77;
    json_t *records = json_array();
    for (uint64_t i = 0; i < 60; i++)
        json_array_append_new(records, random_record(&rng, i, i % 20 == 7 ? 700000 + i * 1000 : 0));
    /* one record larger than the 1 MiB first buffer */
    json_array_append_new(records, random_record(&rng, 60, 1500000));
    size_t flags[2] = {JSON_COMPACT, JSON_INDENT(3)};
    for (int k = 0; k < 2; k++) {
        char *text = json_dumps(records, flags[k]);
        const char *path = tu_in_dir(tmp_dir, k ? "pretty.json" : "compact.json");
        tu_write_file(path, text, strlen(text));
        check_stream(path, records, k ? "pretty array" : "compact array");
        free(text);
    }
    /* JSON Lines, with blank lines, CRLF and trailing spaces between records */
    size_t cap = 1 << 20, n = 0;
    char *lines = malloc(cap);
    for (size_t i = 0; i < json_array_size(records); i++) {
        char *one = json_dumps(json_array_get(records, i), JSON_COMPACT);
        size_t len = strlen(one);
        while (n + len + 16 > cap)
            lines = realloc(lines, cap *= 2);
        n += (size_t)sprintf(lines + n, "%s%s%s", i % 3 == 0 ? "\n  \n" : "", one, i % 2 ? "\r\n" : "  \n");
        free(one);
    }
    tu_write_file(tu_in_dir(tmp_dir, "records.jsonl"), lines, n);
    check_stream(tu_in_dir(tmp_dir, "records.jsonl"), records, "JSON Lines");
    /* the last line without a newline */
    tu_write_file(tu_in_dir(tmp_dir, "unterminated.jsonl"), lines, n - 2);
    check_stream(tu_in_dir(tmp_dir, "unterminated.jsonl"), records, "JSON Lines without a final newline");
    free(lines);
    json_decref(records);
}

/* Record numbers and the line each record starts on. */
static void test_reader_lines(void) {
    const char *array =
        "\xEF\xBB\xBF  [\n  {\"id\": \"a\"},\n\n  {\"id\":\n \"b\", \"s\": \"[,]\\\"\"} ,{\"id\": 3}\n]\n";
    tu_write_file(tu_in_dir(tmp_dir, "lines.json"), array, strlen(array));
    const char *jsonl = "\n{\"id\": \"a\"}\n   \n{\"id\": \"b\"}\r\n{\"id\": 3}";
    tu_write_file(tu_in_dir(tmp_dir, "lines.jsonl"), jsonl, strlen(jsonl));
    const uint64_t array_lines[3] = {2, 4, 5}, jsonl_lines[3] = {2, 4, 5};
    for (int k = 0; k < 2; k++) {
        tga_record_reader *r = NULL;
        CHECK(tga_record_reader_open(tu_in_dir(tmp_dir, k ? "lines.jsonl" : "lines.json"), &r) == TGA_OK,
              "open");
        if (!r) continue;
        for (uint64_t i = 0; i < 4; i++) {
            tga_raw_record raw;
            bool done = false;
            CHECK(tga_record_reader_next(r, &raw, &done) == TGA_OK, "next: %s", tga_error_message());
            if (i == 3) {
                CHECK(done, "%s: a fourth record", k ? "jsonl" : "array");
                break;
            }
            uint64_t want = k ? jsonl_lines[i] : array_lines[i];
            CHECK(!done && raw.number == i && raw.line == want, "%s: record %llu at line %llu, expected %llu",
                  k ? "jsonl" : "array", (unsigned long long)raw.number, (unsigned long long)raw.line,
                  (unsigned long long)want);
        }
        tga_record_reader_close(r);
    }
    for (int k = 0; k < 3; k++) {
        const char *empty[3] = {"", " \n\t", "[ ]\n"};
        tu_write_file(tu_in_dir(tmp_dir, "empty"), empty[k], strlen(empty[k]));
        tga_record_reader *r = NULL;
        tga_raw_record raw;
        bool done = false;
        CHECK(tga_record_reader_open(tu_in_dir(tmp_dir, "empty"), &r) == TGA_OK &&
                  tga_record_reader_next(r, &raw, &done) == TGA_OK && done,
              "empty input %d has a record", k);
        tga_record_reader_close(r);
    }
}

/* Arrays whose structure is broken stop the reader with the line; the records before come out. */
static void test_reader_broken(void) {
    static const struct {
        const char *text;
        int good_before;
        const char *needle;
    } cases[] = {
        {"[{\"a\": 1},\n{\"b\": \"never closed}]\n", 1, "a string or a bracket is not closed"},
        {"[{\"a\": 1},\n{\"b\": 2}\n", 1, "not closed"},
        {"[{\"a\": 1}]\n{\"b\": 2}", 1, "text follows the closing ']'"},
        {"[{\"a\": 1},\n]", 1, "where a record should be"},
        {"[,{\"a\": 1}]", 0, "where a record should be"},
        {"[{\"a\": 1}\n}, 2]", 0, "closes nothing"},
        {"[{\"a\": 1},", 1, "ends before the closing"},
        {"x{\"a\": 1}", 0, "expected a JSON array of records"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        tu_write_file(tu_in_dir(tmp_dir, "broken.json"), cases[c].text, strlen(cases[c].text));
        tga_record_reader *r = NULL;
        CHECK(tga_record_reader_open(tu_in_dir(tmp_dir, "broken.json"), &r) == TGA_OK, "open");
        if (!r) continue;
        int good = 0;
        tga_status st = TGA_OK;
        for (bool done = false; st == TGA_OK && !done;) {
            tga_raw_record raw;
            tga_error_clear();
            st = tga_record_reader_next(r, &raw, &done);
            good += st == TGA_OK && !done;
        }
        CHECK(st == TGA_ERR_FORMAT && good == cases[c].good_before &&
                  strstr(tga_error_message(), cases[c].needle) && strstr(tga_error_message(), "broken.json:"),
              "broken case %zu: %s after %d records: '%s'", c, tga_status_name(st), good,
              tga_error_message());
        tga_error_clear();
        tga_record_reader_close(r);
    }
    tga_record_reader *r = NULL;
    CHECK(tga_record_reader_open(tu_in_dir(tmp_dir, "no_such_file.json"), &r) == TGA_ERR_IO && !r &&
              strstr(tga_error_message(), "no_such_file.json"),
          "missing file: '%s'", tga_error_message());
    tga_error_clear();
}

/* ---- the parser --------------------------------------------------------------------------------- */

static tga_status parse_text(const char *json, uint64_t number, const tga_record_options *o,
                             tga_record *out) {
    tga_raw_record raw = {json, strlen(json), number, number + 1};
    return tga_record_parse("data.jsonl", &raw, o, out);
}

static void test_good_records(void) {
    tga_record_options o;
    tga_record_options_init(&o);
    tga_record r;
    const char *one =
        "{\"id\": \"000000033471\", \"image\": \"coco/train2017/000000033471.jpg\", \"conversations\": "
        "[{\"from\": \"human\", \"value\": \"<image>\\nWhat is it?\"}, {\"from\": \"gpt\", \"value\": "
        "\"A bus.\"}, {\"from\": \"human\", \"value\": \"Colour?\"}, {\"from\": \"gpt\", \"value\": "
        "\"Red.\"}], \"image_caption\": \"a red bus\", \"retrieved_caption\": \"a bus on a road\"}";
    CHECK(parse_text(one, 4, &o, &r) == TGA_OK, "good record: %s", tga_error_message());
    CHECK(strcmp(r.id, "000000033471") == 0 && r.number == 4 && r.n_images == 1 &&
              strcmp(r.images[0], "coco/train2017/000000033471.jpg") == 0 && r.n_turns == 4 &&
              r.turns[0].role == TGA_ROLE_USER && r.turns[3].role == TGA_ROLE_ASSISTANT &&
              strcmp(r.turns[3].text, "Red.") == 0 && r.caption_len == 9 &&
              strcmp(r.retrieved, "a bus on a road") == 0 && !r.tox,
          "good record fields");
    tga_conversation c = tga_record_conversation(&r);
    CHECK(c.n_turns == 4 && c.n_images == 1 && c.retrieved == r.retrieved && c.caption == r.caption,
          "conversation");
    tga_record_free(&r);
    tga_record_free(&r);

    /* several images, integer id, tox as 1 */
    const char *multi =
        "{\"id\": 17, \"image\": [\"a.png\", \"b.png\"], \"conversations\": [{\"from\": \"human\", "
        "\"value\": \"<image><image> same?\"}, {\"from\": \"gpt\", \"value\": \"No.\"}], "
        "\"image_caption\": \"two\", \"retrieved_caption\": \"x\", \"tox\": 1}";
    CHECK(parse_text(multi, 0, &o, &r) == TGA_OK && strcmp(r.id, "17") == 0 && r.n_images == 2 &&
              strcmp(r.images[1], "b.png") == 0 && r.tox,
          "multi-image record: %s", tga_error_message());
    tga_record_free(&r);

    /* text-only (LLaVA mix665k): no image, no C, no R, no id; the marker rule does not apply to text */
    const char *text_only =
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", "
        "\"value\": \"Hello\"}], \"image\": []}";
    CHECK(parse_text(text_only, 9, &o, &r) == TGA_OK && strcmp(r.id, "record-9") == 0 && r.n_images == 0 &&
              !r.caption && !r.retrieved,
          "text-only record: %s", tga_error_message());
    c = tga_record_conversation(&r);
    CHECK(!c.retrieved && !c.caption && c.n_images == 0, "text-only conversation has R or C");
    tga_record_free(&r);

    /* upstream: R == C -> the first int(len/2) code points of C; 11 code points -> 5 */
    const char *equal =
        "{\"id\": \"tox-7\", \"image\": \"x.jpg\", \"conversations\": [{\"from\": \"human\", \"value\": "
        "\"<image>\"}, {\"from\": \"gpt\", \"value\": \"a\"}], \"image_caption\": \"h\\u00e9llo "
        "w\\u00f6rld\", \"retrieved_caption\": \"h\\u00e9llo w\\u00f6rld\", \"tox\": false}";
    CHECK(parse_text(equal, 0, &o, &r) == TGA_OK, "R == C: %s", tga_error_message());
    CHECK(r.retrieved_len == 6 && memcmp(r.retrieved, "h\xC3\xA9llo", 6) == 0 && r.caption_len == 13 &&
              !r.tox,
          "R == C: R is %zu bytes '%.*s'", r.retrieved_len, (int)r.retrieved_len, r.retrieved);
    tga_record_free(&r);
    o.halve_retrieved_equal_to_caption = false;
    o.tox_from_id = true;
    CHECK(parse_text(equal, 0, &o, &r) == TGA_OK && r.retrieved_len == 13 && r.tox,
          "R == C kept, tox from the id 'tox-7'");
    tga_record_free(&r);
    /* R not required when the template does not show it */
    tga_record_options_init(&o);
    o.require_retrieved = false;
    const char *no_r =
        "{\"image\": \"x.jpg\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image>\"}, "
        "{\"from\": \"gpt\", \"value\": \"a\"}], \"image_caption\": \"c\", \"tox\": true}";
    CHECK(parse_text(no_r, 0, &o, &r) == TGA_OK && !r.retrieved && r.tox, "no R: %s", tga_error_message());
    tga_record_free(&r);
    CHECK(tga_record_error("f.jsonl", &(tga_record){.id = "x", .number = 3, .line = 7}, "image", "gone %d",
                           1) == TGA_ERR_FORMAT &&
              strcmp(tga_error_message(), "f.jsonl:7: record 3 (id 'x'): field 'image': gone 1") == 0,
          "tga_record_error: '%s'", tga_error_message());
    tga_error_clear();
}

#define TURNS(q, a)                                                                                          \
    "\"conversations\": [{\"from\": \"human\", \"value\": \"" q "\"}, {\"from\": \"gpt\", \"value\": \"" a   \
    "\"}]"
#define CAPTIONS "\"image_caption\": \"c\", \"retrieved_caption\": \"r\""

static const struct {
    const char *json;
    const char *field; /* NULL: the message has no field */
    const char *needle;
} bad_records[] = {
    {"{\"id\": \"a\", " TURNS("q", "a") ",}", NULL, "invalid JSON"},
    {"[1, 2]", NULL, "expected a JSON object, got an array"},
    {"{\"id\": 1.5, " TURNS("q", "a") "}", "id", "expected a string or an integer, got a real number"},
    {"{\"id\": \"a\\u0001b\", " TURNS("q", "a") "}", "id", "expected no control characters"},
    {"{\"id\": \"\", " TURNS("q", "a") "}", "id", "expected 1 to 512 bytes"},
    {"{\"image\": 3, " TURNS("<image>", "a") ", " CAPTIONS "}", "image", "expected a file name or a list"},
    {"{\"image\": [\"a.jpg\", 2], " TURNS("<image><image>", "a") ", " CAPTIONS "}", "image[1]",
     "expected a non-empty file name"},
    {"{\"image\": \"\", " TURNS("<image>", "a") ", " CAPTIONS "}", "image",
     "expected a non-empty file name, got an empty string"},
    {"{\"id\": \"a\"}", "conversations", "expected a list of turns, got nothing"},
    {"{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}]}", "conversations",
     "expected human and gpt turns in pairs"},
    {"{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, \"a\"]}", "conversations[1]",
     "expected an object"},
    {"{\"conversations\": [{\"from\": \"bot\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
     "conversations[0].from", "expected \"human\" or \"gpt\""},
    {"{\"conversations\": [{\"from\": \"gpt\", \"value\": \"q\"}, {\"from\": \"human\", \"value\": \"a\"}]}",
     "conversations[0].from", "expected \"human\": turns alternate"},
    {"{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": 5}]}",
     "conversations[1].value", "expected a string, got an integer"},
    {"{\"image\": [\"a\", \"b\"], " TURNS("<image> one", "a") ", " CAPTIONS "}", "conversations",
     "expected one <image> marker per image (2), found 1"},
    {"{" TURNS("<image> hi", "a") "}", "conversations[0].value",
     "holds an <image> marker, but the record has no"},
    {"{\"image\": \"a\", " TURNS("<image>", "see <image>") ", " CAPTIONS "}", "conversations[1].value",
     "an answer holds an <image> marker"},
    {"{\"image\": \"a\", " TURNS("<image>", "a") ", \"retrieved_caption\": \"r\"}", "image_caption",
     "expected a non-empty string (records with an image need it), got nothing"},
    {"{\"image\": \"a\", " TURNS("<image>", "a") ", \"image_caption\": \"c\", \"retrieved_caption\": 4}",
     "retrieved_caption", "expected a string, got an integer"},
    {"{\"image\": \"a\", " TURNS("<image>", "a") ", \"image_caption\": \"\", \"retrieved_caption\": \"r\"}",
     "image_caption", "got an empty string"},
    {"{" TURNS("q", "a") ", \"tox\": 2}", "tox", "expected true, false, 0 or 1, got an integer"},
    {"{\"id\": \"a\", \"id\": \"b\", " TURNS("q", "a") "}", NULL, "duplicate object key"},
    {"{\"image\": [\"a\\u\n n\"]}", NULL, "invalid escape"}, /* jansson quotes the newline */
};

static void test_bad_records(void) {
    tga_record_options o;
    tga_record_options_init(&o);
    size_t n = sizeof bad_records / sizeof bad_records[0];
    for (size_t i = 0; i < n; i++) {
        tga_record r;
        tga_error_clear();
        uint64_t number = 100 + i;
        tga_status st = parse_text(bad_records[i].json, number, &o, &r);
        const char *m = tga_error_message();
        char record[64], field[96];
        snprintf(record, sizeof record, "data.jsonl:%llu: record %llu", (unsigned long long)number + 1,
                 (unsigned long long)number);
        snprintf(field, sizeof field, "field '%s'", bad_records[i].field ? bad_records[i].field : "");
        CHECK(st == TGA_ERR_FORMAT && strncmp(m, record, strlen(record)) == 0 &&
                  (!bad_records[i].field || strstr(m, field)) && strstr(m, bad_records[i].needle) &&
                  !strchr(m, '\n'),
              "bad record %zu: %s '%s' (expected '%s', %s, '%s')", i, tga_status_name(st), m, record, field,
              bad_records[i].needle);
        CHECK(r.json == NULL && r.id == NULL && r.turns == NULL, "bad record %zu: output not cleared", i);
    }
    tga_error_clear();
}

/* Bad records inside a JSON Lines stream: each is reported with its own line and number, and the
 * records around it read on. */
static void test_bad_in_stream(void) {
    const char *text = "{\"id\": \"a\", " TURNS(
        "q", "a") "}\n"
                  "{\"id\": \"b\", " TURNS("q", "a") ",}\n"
                                                     "\n"
                                                     "{\"id\": 3, \"tox\": \"yes\", " TURNS(
                                                         "q", "a") "}\n"
                                                                   "{\"id\": \"d\", " TURNS("q", "a") "}\n";
    tu_write_file(tu_in_dir(tmp_dir, "mixed.jsonl"), text, strlen(text));
    tga_record_reader *reader = NULL;
    CHECK(tga_record_reader_open(tu_in_dir(tmp_dir, "mixed.jsonl"), &reader) == TGA_OK, "open");
    if (!reader) return;
    tga_record_options o;
    tga_record_options_init(&o);
    const char *expect[4] = {NULL, ":2: record 1: invalid JSON", ":4: record 2 (id '3'): field 'tox'", NULL};
    for (int i = 0; i < 4; i++) {
        tga_raw_record raw;
        bool done;
        CHECK(tga_record_reader_next(reader, &raw, &done) == TGA_OK && !done, "next");
        tga_record r;
        tga_error_clear();
        tga_status st = tga_record_parse(tu_in_dir(tmp_dir, "mixed.jsonl"), &raw, &o, &r);
        if (expect[i])
            CHECK(st == TGA_ERR_FORMAT && strstr(tga_error_message(), expect[i]) &&
                      strstr(tga_error_message(), "mixed.jsonl"),
                  "stream record %d: '%s'", i, tga_error_message());
        else
            CHECK(st == TGA_OK, "stream record %d: %s", i, tga_error_message());
        tga_record_free(&r);
    }
    tga_error_clear();
    tga_record_reader_close(reader);
}

/* The fuzz seeds: a good JSONL stream, a JSON array, and the bad records. */
static int write_corpus(const char *dir) {
    char path[1024];
    const char *seeds[3] = {
        "{\"id\": \"1\", \"image\": \"a.jpg\", " TURNS("<image>\\nq", "a") ", " CAPTIONS ", \"tox\": 0}\n"
                                                                           "{\"id\": 2, " TURNS("hi",
                                                                                                "yo") "}\n",
        "[{\"id\": \"1\", \"image\": [\"a.jpg\", \"b\"], " TURNS(
            "<image> x <image>", "a") ", " CAPTIONS "},\n"
                                      " {\"id\": \"tox2\", \"image\": \"c\", " TURNS(
                                          "<image>", "b") ", \"image_caption\": \"c\", "
                                                          "\"retrieved_caption\": \"c\"}]\n",
        "\xEF\xBB\xBF[]"};
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/seed-%d", dir, i);
        FILE *f = fopen(path, "wb");
        ok &= f && fputs(seeds[i], f) >= 0 && fclose(f) == 0;
    }
    for (size_t i = 0; i < sizeof bad_records / sizeof bad_records[0]; i++) {
        snprintf(path, sizeof path, "%s/bad-%02zu", dir, i);
        FILE *f = fopen(path, "wb");
        ok &= f && fprintf(f, "%s\n", bad_records[i].json) > 0 && fclose(f) == 0;
    }
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0) return write_corpus(argv[2]);
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_reader_random();
    test_reader_lines();
    test_reader_broken();
    test_good_records();
    test_bad_records();
    test_bad_in_stream();
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return tu_finish("test_records");
}
