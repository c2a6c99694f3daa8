/* LLaVA-style training records (trainer/DATA.md has the full format), read one at a time.
 *
 * A file is a JSON array of record objects or JSON Lines (one object per line; blank lines are not
 * records); the first byte that is not white space tells which. Both are streamed: the reader
 * finds where each record's bytes begin and end without parsing them (a JSON array by tracking
 * strings and brackets), so a rank can skip records it does not own cheaply, and memory holds one
 * record, never the file. A record is at most TGA_RECORD_MAX_BYTES.
 *
 *   {"id": "000000033471",                         string or integer; absent: "record-N"
 *    "image": "coco/train2017/000000033471.jpg",   string, list of strings, or absent (text-only)
 *    "conversations": [{"from": "human", "value": "<image>\nWhat is ...?"},
 *                      {"from": "gpt", "value": "..."}, ...],
 *    "image_caption": "C", "retrieved_caption": "R",
 *    "tox": true}                                   optional: true/false/0/1
 *
 * Record numbers count from 0 in file order; lines from 1. Every error is TGA_ERR_FORMAT with one
 * line "FILE:LINE: record N (id 'X'): field 'F': expected ..., got ..." (I/O failures are
 * TGA_ERR_IO). A record that is broken JSON or breaks a rule below is a bad record: the caller may
 * skip it and read on. Only a JSON array whose brackets or strings never close is fatal, because
 * no next record can be found in it. */
#ifndef TGA_TRAINER_RECORDS_H
#define TGA_TRAINER_RECORDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"
#include "trainer/template.h"

#define TGA_RECORD_MAX_BYTES (64u << 20)

typedef struct tga_record_reader tga_record_reader;

/* One record's bytes as found in the file (not parsed). */
typedef struct {
    const char *bytes; /* valid until the next tga_record_reader_next */
    size_t len;
    uint64_t number; /* 0-based record number */
    uint64_t line;   /* 1-based line where the record starts */
} tga_raw_record;

tga_status tga_record_reader_open(const char *path, tga_record_reader **out);
/* The next record, or *done = true at the end of the file. */
tga_status tga_record_reader_next(tga_record_reader *r, tga_raw_record *out, bool *done);
/* Bytes consumed so far and the file's size (for progress). */
uint64_t tga_record_reader_offset(const tga_record_reader *r);
uint64_t tga_record_reader_size(const tga_record_reader *r);
const char *tga_record_reader_path(const tga_record_reader *r);
void tga_record_reader_close(tga_record_reader *r); /* NULL is a no-op */

typedef struct {
    bool tox_from_id; /* upstream: an id containing "tox" marks a toxic-image record (train_TGA.py:901) */
    /* upstream _find_retrieved_caption (train_TGA.py:319-327): when R equals C, R becomes the first
     * int(len/2) characters (Unicode code points) of C, so that R is never the answer itself */
    bool halve_retrieved_equal_to_caption;
    bool require_caption;   /* records with an image must have a non-empty image_caption */
    bool require_retrieved; /* records with an image must have a non-empty retrieved_caption */
} tga_record_options;

void tga_record_options_init(tga_record_options *o); /* halving and both requirements on, tox_from_id off */

/* A parsed, validated record. Strings point into the parsed JSON and live until tga_record_free. */
typedef struct {
    char *id;
    uint64_t number, line;
    size_t n_images;
    const char **images; /* the names as written in the record */
    size_t n_turns;
    tga_turn *turns;                 /* user/assistant alternating, user first, assistant last */
    const char *caption, *retrieved; /* NULL when absent */
    size_t caption_len, retrieved_len;
    bool tox;
    void *json; /* the parsed record (owner of the strings) */
} tga_record;

/* Parse and validate one record. Rules: an object; id a string of 1..TGA_SHARD_MAX_ID_BYTES bytes
 * without control characters, or an integer; image a non-empty string or a list of them;
 * conversations a list of {from: "human"|"gpt", value: string}, human first, alternating, gpt
 * last; the <image> markers of the human turns as many as the images (none in a record without
 * images, none in answers); image_caption / retrieved_caption strings (required as the options
 * say); tox true/false/0/1. On failure *out is zeroed. */
tga_status tga_record_parse(const char *file, const tga_raw_record *raw, const tga_record_options *o,
                            tga_record *out);
void tga_record_free(tga_record *r); /* zeroes it; safe to call twice */

/* A bad-record error about a parsed record, in the format above ("FILE:LINE: record N (id 'X'):
 * field 'F': ..."); `field` may be NULL. Returns TGA_ERR_FORMAT. */
tga_status tga_record_error(const char *file, const tga_record *r, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The record as a template's input. */
tga_conversation tga_record_conversation(const tga_record *r);

#endif
