/* The optimizer state across ranks and in checkpoints.
 *
 * Layouts in a checkpoint (state.json "optim"):
 *   replicated: optim.tgat (rank 0) holds adam_m.<param> and adam_v.<param> per trainable tensor;
 *   sharded (ZeRO-1): optim.rank-NNNNN.tgat of each rank holds its shard of the flat moments
 *     ("adam_m", "adam_v": the gradient layout's elements [first, first + count)), with every
 *     piece's first element and the layout's length listed in state.json.
 * Either layout loads into either kind of run and any world size (re-sharding reads only the
 * frames a rank needs), as long as the model's gradient layout is the same length. The fp32
 * masters of model.dtype bf16 under ZeRO-1 are sharded in memory, but params.tgat holds them whole
 * (tga_optim_gather_master), so every reader of params.tgat gets exact fp32 weights. */
#ifndef TGA_TRAINER_OPTIM_STATE_H
#define TGA_TRAINER_OPTIM_STATE_H

#include <jansson.h>

#include "runtime/ckpt.h"
#include "runtime/error.h"
#include "trainer/model.h"

/* ZeRO-1 with model.dtype bf16: the fp32 master of p, sharded over the ranks, whole into
 * host[numel] on every rank (collective: every rank calls it for the same p; a rank whose host is
 * NULL, out of memory, makes every rank return an error instead of gathering). */
tga_status tga_optim_gather_master(tga_model *m, const tga_param *p, float *host);

/* ZeRO-1 after the local AdamW step: every rank's updated shard of the trainable parameters goes
 * to every rank (an all-gather in pieces of bounded size). */
tga_status tga_optim_gather_params(tga_model *m);

/* ZeRO-1 on the device collectives (NCCL), with no host copies and no extra device buffer: each
 * rank's shard of the summed gradient goes to its owner (one in-place reduce per rank into the
 * model's gradient buffer), and after the local AdamW step each owner broadcasts the parameter
 * slices of its shard. Both wait for the collectives before returning. */
tga_status tga_optim_device_reduce_grads(tga_model *m);
tga_status tga_optim_device_broadcast_params(tga_model *m);

/* This rank's part of the optimizer state into checkpoint writer w: replicated (rank 0 only, one
 * file) or sharded (every rank, its file). */
tga_status tga_optim_state_save(tga_model *m, tga_ckpt_writer *w, int rank);
/* The "optim" object for state.json describing what tga_optim_state_save wrote on all ranks. */
json_t *tga_optim_state_describe(tga_model *m, int world);
/* Loads the moments this rank holds from checkpoint directory ckpt; `optim` is state.json's
 * "optim" object (NULL for checkpoints written before it existed: replicated). */
tga_status tga_optim_state_load(tga_model *m, const char *ckpt, const json_t *optim);

#endif
