/* Loading model weights from checkpoints: a checkpoint directory (step-N with DONE) or a run
 * directory (its newest complete, verified checkpoint). A checkpoint whose run itself started from
 * another one (state.json "base") loads that base first, recursively, so stage 2 from a stage-1
 * run also gets the lm-pretrained decoder the stage-1 run was built on. */
#ifndef TGA_TRAINER_WEIGHTS_H
#define TGA_TRAINER_WEIGHTS_H

#include <stddef.h>

#include "runtime/error.h"
#include "trainer/model.h"

/* Loads every parameter of the model present in the chain (shapes checked); parameters absent
 * from every checkpoint keep their values. `params_path` receives the path of the newest
 * params.tgat loaded (the identity recorded as the run's base). */
tga_status tga_weights_load(tga_model *m, const char *path, char *params_path, size_t size);

/* Resolves `path` (a checkpoint or a run directory) to a checkpoint directory. */
tga_status tga_weights_resolve(const char *path, char *ckpt_dir, size_t size);

#endif
