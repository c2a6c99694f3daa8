/* Schema-driven YAML configuration (libyaml).
 *
 * A config is a plain C struct; a schema is a table of keys, each naming its section, type,
 * default (as text), allowed range or choices, help text and the offset of its field in the
 * struct. The file is a mapping of sections to mappings of keys:
 *
 *     model:
 *       dim: 64
 *     tga:
 *       layers: "10-18"
 *
 * Every mistake (unknown key, wrong type, out-of-range value, bad choice, duplicate key,
 * malformed YAML, junk input) returns TGA_ERR_CONFIG with one line via tga_error() that names
 * the file and line (or the --set assignment) and what was expected. A file that cannot be
 * read returns TGA_ERR_IO. On error the struct may be partly updated: load into a copy when
 * the previous state must survive.
 *
 * Field types, per tga_cfg_type: INT int64_t, FLOAT double, BOOL bool, STRING tga_cfg_string,
 * ENUM an enum whose values are the choice indices (stored as int), LAYERS tga_layer_set. */
#ifndef TGA_RUNTIME_CONFIG_H
#define TGA_RUNTIME_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "runtime/error.h"

#define TGA_CFG_STRING_MAX 512 /* bytes, including the terminating NUL */
typedef char tga_cfg_string[TGA_CFG_STRING_MAX];

/* Larger input is not a config file (a full one is about 3 KB). The limit also bounds the
 * quadratic corners of libyaml (e.g. thousands of %TAG directives). */
#define TGA_CFG_FILE_MAX (1u << 16)

/* A set of layer indices, sorted ascending, no duplicates; unused entries are zero so that
 * equal sets compare equal with memcmp. Index 0 is the embedding output, l the output of
 * decoder layer l (TGA-METHOD.md notation). */
#define TGA_LAYER_SET_MAX 256
#define TGA_LAYER_INDEX_MAX (1 << 20)
typedef struct {
    int count;
    int layers[TGA_LAYER_SET_MAX];
} tga_layer_set;

/* A buffer of this size holds any formatted layer set. */
#define TGA_LAYER_SET_TEXT_MAX (TGA_LAYER_SET_MAX * 16)

typedef enum {
    TGA_CFG_INT,
    TGA_CFG_FLOAT,
    TGA_CFG_BOOL,
    TGA_CFG_STRING,
    TGA_CFG_ENUM,
    TGA_CFG_LAYERS
} tga_cfg_type;

/* Bound flags for FLOAT keys: a range is inclusive unless marked, so "(0, 1]" is min 0 with
 * TGA_CFG_MIN_OPEN. INT ranges are always inclusive and their bounds exact integers. */
enum { TGA_CFG_MIN_OPEN = 1u << 0, TGA_CFG_MAX_OPEN = 1u << 1 };

typedef struct tga_cfg_key {
    const char *section;
    const char *name;
    tga_cfg_type type;
    const char *default_value; /* text, read like a --set value */
    double min, max;           /* INT and FLOAT */
    unsigned bounds;           /* TGA_CFG_MIN_OPEN | TGA_CFG_MAX_OPEN */
    const char *choices;       /* ENUM: "a|b|c", the value stored is the index */
    const char *help;
    size_t offset; /* of the field in the config struct */
} tga_cfg_key;

/* Every key set to its default. Strings and layer sets are written whole (unused bytes zero), so
 * two configs zeroed before this compare equal with memcmp when their values are equal. A default
 * that does not pass its own key's checks is a bug in the schema: TGA_ERR_INTERNAL. */
tga_status tga_cfg_defaults(void *cfg, const tga_cfg_key *schema, size_t n);

/* Apply the keys present in a YAML file (or in memory; `name` is used in messages) on top of
 * the current values. */
tga_status tga_cfg_load_file(void *cfg, const tga_cfg_key *schema, size_t n, const char *path);
tga_status tga_cfg_load_buffer(void *cfg, const tga_cfg_key *schema, size_t n, const char *data, size_t size,
                               const char *name);

/* Apply one "section.key=value" assignment (the argument of --set). The value is read like a
 * plain YAML scalar: no quotes needed; a layer set may be "10-18", "0,4,8-12" or "[1, 2]". */
tga_status tga_cfg_set(void *cfg, const tga_cfg_key *schema, size_t n, const char *assignment);

/* All keys in schema order as YAML that loads back to the identical struct. */
tga_status tga_cfg_write_yaml(const void *cfg, const tga_cfg_key *schema, size_t n, FILE *out);

/* Every key with its type, default, range or choices, and help. */
void tga_cfg_print_help(const tga_cfg_key *schema, size_t n, FILE *out);

/* Parse "10-18", "0,4,8-12", "[1, 2, 3]", "7" or "" (the empty set) into a sorted set without
 * duplicates. `where` starts the error message (e.g. "run.yaml:12: tga.layers"). Whether the
 * indices fit the model's depth is for the caller to check. */
tga_status tga_layer_set_parse(tga_layer_set *set, const char *text, const char *where);

/* "0,4,8-12": the form tga_layer_set_parse reads back. Truncates only below
 * TGA_LAYER_SET_TEXT_MAX bytes. */
void tga_layer_set_format(const tga_layer_set *set, char *buf, size_t size);

#endif
