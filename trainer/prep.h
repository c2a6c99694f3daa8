/* `tga prep`: LLaVA-style records + image features -> sample shards (trainer/DATA.md).
 *
 * Output in out_dir: shard-00000.tgas, shard-00001.tgas, ... and prep.json (the summary, written
 * last: its presence means the prep finished). Shard k holds the samples of records
 * [k*S, (k+1)*S) in record order, fewer when records are skipped, so every shard's bytes are the
 * same whatever the number of ranks. Under MPI, rank r writes the shards k with k % world == r;
 * every rank streams the records file, but parses and renders only the records of its shards. At
 * the start, rank 0 removes the prep.json and the shard-*.tgas(.tmp) files a previous prep left in
 * out_dir (other files are left alone); a shard appears under its name only when it is complete.
 *
 * Features: one .npy per image ([P, Dv] or [1, P, Dv], float16/32/64) under a folder, found by
 * the record's image name with its extension replaced by .npy; or one [N, P, Dv] .npy with an
 * index (JSON Lines {"image": NAME, "row": R}, or text lines "NAME ROW"). Only the rows a sample
 * needs are read. A tox record's images get zero features (its feature file is not read).
 *
 * Bad records (broken JSON, a rule of records.h broken, a template that cannot render the
 * conversation, a missing or mismatched feature file) stop the prep with one message naming the
 * file, the record and the field; with skip_bad they are counted and skipped. A sample that
 * cannot fit max_len (see tga_template_render) is counted as too long and skipped. Memory: one
 * record, one sample, one shard's index, and the feature index when there is one. */
#ifndef TGA_TRAINER_PREP_H
#define TGA_TRAINER_PREP_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/error.h"
#include "trainer/records.h"
#include "trainer/shard.h"

typedef struct {
    const char *records;       /* JSON array or JSON Lines */
    const char *features;      /* folder of per-image .npy files, or one [N, P, Dv] .npy file */
    const char *feature_index; /* with a [N, P, Dv] file; NULL for per-image files */
    const char *tokenizer;     /* anything tga_tokenizer_load opens */
    const char *template_name; /* a name or a YAML path (tga_template_load) */
    const char *out_dir;
    int64_t max_len;      /* tokens per sample, image patches included */
    int32_t image_tokens; /* P; 0 = taken from the features */
    int32_t feature_dim;  /* Dv; 0 = taken from the features */
    tga_shard_dtype feature_dtype;
    int64_t samples_per_shard; /* S */
    bool skip_bad;
    tga_record_options record;
    bool progress; /* rank 0: a progress line on stderr (redrawn on a terminal, one final line otherwise) */
} tga_prep_options;

/* Totals over all ranks (the same on every rank). */
typedef struct {
    uint64_t records, samples, shards, tokens, supervised, images, tox, text_only;
    uint64_t truncated; /* kept, but cut at max_len */
    uint64_t too_long;  /* skipped: cannot fit max_len */
    uint64_t bad;       /* skipped bad records (skip_bad) */
    int32_t image_tokens, feature_dim;
} tga_prep_summary;

/* max_len 2048 (LLaVA's stage 1), S 512, float16 features, tga_record_options_init, progress on. */
void tga_prep_options_init(tga_prep_options *o);

/* Run the prep. Collective: every rank calls it with the same options (after tga_dist_init). All
 * ranks return the same success or failure; a rank whose own step failed returns its error, the
 * others TGA_ERR_DIST saying that another rank failed. */
tga_status tga_prep_run(const tga_prep_options *o, tga_prep_summary *summary);

#endif
