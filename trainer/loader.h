/* The training data loader: reads samples from shards (trainer/shard.h) and hands each rank its
 * micro-batches of one optimizer step, padded, as tga_batch structs (trainer/model.h), together with
 * the step's global loss denominators (TGA-METHOD.md "Normalisation"), which every rank computes
 * from the shards' index stats without communicating.
 *
 *     tga_loader_config c = {.path = "data/stage1", .vocab_size = 32000, .seed = 1, .shuffle = 1,
 *                            .micro_batch = 4, .grad_accum = 2, .world_size = w, .rank = r, .prefetch = 1};
 *     tga_loader *l;
 *     TGA_TRY(tga_loader_open(&l, &c));
 *     if (resuming) TGA_TRY(tga_loader_seek(l, &checkpoint.data_position));
 *     for (step = ...) {
 *         tga_loader_step s;
 *         TGA_TRY(tga_loader_next(l, &s));      // s.micro[0..n_micro), valid until the next call
 *         ... each micro-batch's forward/backward with tga_step_scalars{s.n_targets_global,
 *             s.n_samples_global, s.global_step / total_steps} ...
 *         checkpoint.data_position = tga_loader_tell(l);   // the step after s
 *     }
 *     tga_loader_close(l);
 *
 * Order. The global sample index runs over the shards in name order. Epoch e visits the samples in
 * a permutation keyed by (seed, TGA_RNG_SHUFFLE, e) (shuffle on) or in index order (off); its step s
 * covers permuted positions [s*G, s*G + G), G = micro_batch x grad_accum x world_size. Global
 * micro-batch j (0 <= j < grad_accum x world_size) covers positions s*G + j*m .. + m-1, and rank r
 * gets j = r*grad_accum + i, i = 0..grad_accum-1. A micro-batch's contents therefore depend on m and
 * G, never on the world size or the rank, so runs on 1, 2 or 4 ranks with the same G see the same
 * micro-batches.
 *
 * The permutation: perm = identity; then for k = 0, 1, ..., n-2 with i = n-1-k, the 64-bit draw
 * x_k = b[2*(k%2)] | b[2*(k%2)+1] << 32 of block b = tga_rng_block(stream, k / 2) picks
 * j = floor(x_k * (i+1) / 2^64) and swaps perm[i] and perm[j] (Fisher-Yates; the bias of the
 * multiply-shift is below (i+1) / 2^64).
 *
 * Modes. TGA_LOADER_TRAIN: an epoch has floor(n / G) steps; the last n mod G samples of each
 * epoch's order are not used (with shuffle on, other epochs place them elsewhere).
 * TGA_LOADER_EVAL: an epoch has ceil(n / G) steps and covers every sample once; its last step is
 * cut at the end of the order, so its micro-batches may be short and a rank may get fewer than
 * grad_accum of them, or none (every rank still calls next the same number of times). Epochs
 * follow each other without end in both modes: the caller decides when to stop.
 *
 * Position. tga_loader_tell gives the position of the next step to be consumed, in global batches:
 * a checkpoint stores it and tga_loader_seek restores it, after which the loader returns exactly
 * the batches an uninterrupted run would have, also under another world size with the same G.
 * The prefetch thread builds one step ahead into a second buffer and never moves the position.
 *
 * Memory: the open shard indexes, one permutation (8 bytes per sample), and the current and the
 * prefetched step's padded micro-batches; samples are read one at a time into them.
 *
 * Data paths. A path is one shard file or a directory whose *.tgas files are its shards (other
 * names, such as a writer's leftover .tgas.tmp, are ignored). Image shards (P, Dv > 0) must all have
 * the same P and Dv; text-only shards (P = Dv = 0) may be mixed with them. Feature dtypes may differ
 * per shard: every feature reaches the batch as float32. Token ids (input_ids, labels, cap_ids) are
 * checked against the vocabulary as each sample is read. */
#ifndef TGA_TRAINER_LOADER_H
#define TGA_TRAINER_LOADER_H

#include <stdint.h>

#include "runtime/error.h"
#include "trainer/model.h"

typedef enum { TGA_LOADER_TRAIN = 0, TGA_LOADER_EVAL = 1 } tga_loader_mode;

typedef struct tga_loader_config {
    const char *path;     /* a shard file, or a directory of *.tgas shards */
    int32_t vocab_size;   /* the model's: token ids must lie in [0, vocab_size) */
    int32_t pad_id;       /* input_ids and cap_ids padding; 0 as upstream (pad = unk = 0) */
    uint64_t seed;        /* the run's seed (the shuffle's key) */
    int shuffle;          /* 1: a permutation per epoch; 0: index order */
    tga_loader_mode mode; /* TRAIN drops each epoch's tail; EVAL covers every sample */
    int micro_batch;      /* m: samples per micro-batch */
    int grad_accum;       /* a: micro-batches per rank and step */
    int world_size, rank; /* w and this process's rank r */
    int prefetch;         /* 1: a background thread builds the next step while this one trains */
} tga_loader_config;

/* What the data holds, from the shard indexes (no frame is read). */
typedef struct tga_loader_info {
    uint64_t n_samples, n_shards;
    uint64_t global_batch;                  /* G = m x a x w */
    uint64_t steps_per_epoch;               /* floor(n / G) in TRAIN mode, ceil(n / G) in EVAL mode */
    int32_t patches_per_image, feature_dim; /* of the image shards; 0, 0 when all are text-only */
    int32_t max_tokens, max_caption_tokens, max_images; /* largest T, Tc, images of one sample */
} tga_loader_info;

/* The position of the next step to be consumed, and what it means: a checkpoint stores every field
 * and tga_loader_seek refuses a loader whose data, global batch or order differ. */
typedef struct tga_loader_position {
    uint64_t epoch;         /* 0-based */
    uint64_t step_in_epoch; /* 0 .. steps_per_epoch-1 */
    uint64_t global_step;   /* steps consumed since the start: epoch x steps_per_epoch + step_in_epoch */
    uint64_t n_samples, global_batch, seed;
    int32_t shuffle, mode;
} tga_loader_position;

/* One optimizer step as this rank sees it. */
typedef struct tga_loader_step {
    uint64_t epoch, step_in_epoch, global_step; /* where this step is */
    uint64_t n_targets_global; /* supervised targets of the whole global batch (every rank's) */
    uint64_t n_samples_global; /* samples of the whole global batch (tox included) */
    int n_micro;               /* this rank's micro-batches: grad_accum, fewer only at an EVAL end */
    const tga_batch *micro;    /* [n_micro], loader memory valid until the next loader call */
    int micro_batch;           /* m */
    /* global sample indices: micro[i]'s sample b is sample_index[i * micro_batch + b] */
    const uint64_t *sample_index;
} tga_loader_step;

typedef struct tga_loader tga_loader;

/* Open every shard of config->path and validate the config against them (TGA_ERR_CONFIG for a bad
 * config, TGA_ERR_FORMAT / TGA_ERR_IO for bad data, each naming the shard). Starts at epoch 0, step 0. */
tga_status tga_loader_open(tga_loader **out, const tga_loader_config *config);

/* The next step: its global denominators and this rank's micro-batches, padded to each
 * micro-batch's longest sample (input_ids and cap_ids with pad_id, labels with -100; lengths,
 * cap_lengths hold each sample's T and Tc). Advances the position by one step on success only; a
 * failing sample (bad frame, token id outside the vocabulary) is an error that names the shard, the
 * sample, its id and the position. */
tga_status tga_loader_next(tga_loader *l, tga_loader_step *out);

tga_loader_position tga_loader_tell(const tga_loader *l);

/* Continue from a position that tga_loader_tell gave (possibly in another run or world size).
 * TGA_ERR_CONFIG if it belongs to other data, another global batch or another order. */
tga_status tga_loader_seek(tga_loader *l, const tga_loader_position *position);

tga_loader_info tga_loader_get_info(const tga_loader *l);

void tga_loader_close(tga_loader *l); /* NULL is a no-op; stops the prefetch thread */

#endif
