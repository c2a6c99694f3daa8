/* Loading model weights: from a Hugging Face model directory (config.json with model.safetensors or
 * a sharded set and its index, as save_pretrained writes them: Mistral-7B-Instruct, Vicuna-7B),
 * or from tga checkpoints: a checkpoint directory (step-N with DONE) or a run directory (its newest
 * complete, verified checkpoint). A checkpoint whose run itself started from another one
 * (state.json "base") loads that base first, recursively, so stage 2 from a stage-1 run also gets
 * the lm-pretrained decoder the stage-1 run was built on. */
#ifndef TGA_TRAINER_WEIGHTS_H
#define TGA_TRAINER_WEIGHTS_H

#include <stddef.h>

#include "runtime/error.h"
#include "trainer/model.h"

/* Loads every parameter of the model present in the chain (shapes checked); parameters absent
 * from every checkpoint keep their values. From a Hugging Face directory: every language-model
 * parameter by its HF name (trainer/hf_names.h; F32, BF16 or F16 on file), after config.json was
 * checked against the model (sizes, heads, vocabulary, rope_theta, rms_norm_eps, tied head); the
 * projector keeps its values. `params_path` receives the path of the newest params.tgat loaded, or
 * the directory: what the run records as its base (tga_path_hash). */
tga_status tga_weights_load(tga_model *m, const char *path, char *params_path, size_t size);

/* Resolves `path` (a checkpoint or a run directory) to a checkpoint directory. */
tga_status tga_weights_resolve(const char *path, char *ckpt_dir, size_t size);

#endif
