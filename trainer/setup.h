/* From a validated config to the model's and optimizer's own small structs. */
#ifndef TGA_TRAINER_SETUP_H
#define TGA_TRAINER_SETUP_H

#include "trainer/config.h"
#include "trainer/model.h"
#include "trainer/optim.h"

void tga_setup_dims(const tga_config *cfg, tga_model_dims *dims);
/* Activation sizing for micro-batches of the config's shape (micro_batch x data.max_len, at most
 * `max_images` images of data.image_tokens patches each). */
void tga_setup_run_shape(const tga_config *cfg, int max_images, tga_run_shape *shape);
/* The alignment settings; checks the layer set against the model depth (a config error naming
 * tga.layers). */
tga_status tga_setup_align(const tga_config *cfg, tga_align_config *align);
void tga_setup_optim(const tga_config *cfg, tga_optim_config *optim);
/* Selects the backend (`device`: auto|cpu|cuda) and its attention (model.attention), and checks
 * that they support the model's attention shape: a config error naming the keys, before anything
 * is allocated, instead of a failure at the first synchronisation on the device. */
tga_status tga_setup_backend(const tga_config *cfg, const char *device, int threads);

#endif
