/* Greedy decoding for a batch of prompts (text with image spans), for `tga eval`.
 *
 * Each step runs the model's forward on the samples still generating (right-padded to the longest
 * one; the attention masks padding per sample, so a sample's tokens do not depend on the others
 * in its batch), takes the argmax of the logits at each sample's last real position and appends
 * it. Only those rows go through the LM head: hs[L] of the last positions times lm_head^T.
 *
 * There is no KV cache: the model recomputes the whole sequence at every step, so a step costs a
 * full forward over prompt + generated tokens. That is fine for the tiny synthetic models and for
 * short answers (the DSR needs a dozen tokens); a 7B model would want a cache. */
#ifndef TGA_TRAINER_GENERATE_H
#define TGA_TRAINER_GENERATE_H

#include <stdint.h>

#include "runtime/error.h"
#include "trainer/model.h"

/* One prompt: ids with TGA_IMAGE_TOKEN_ID over each image's P patch positions. */
typedef struct tga_prompt {
    const int32_t *ids;
    int32_t n_tokens;
    int32_t n_images;
    const int32_t *image_starts; /* [n_images] first patch position of each image */
    const float *image_features; /* [n_images, P, vision_dim] */
} tga_prompt;

/* Called once, after the forward over the prompts and before the first token is chosen: the model
 * then holds hs[0..L] of the prompts (tga_model_hidden), sample i = prompts[i], row i * T + t. */
typedef tga_status (*tga_prompt_forward_fn)(tga_model *m, const tga_batch *batch, void *ctx);

typedef struct tga_generate_options {
    int max_new;             /* >= 1 */
    const int32_t *stop_ids; /* EOS, the template's end of turn, ...: ends a sample, not output */
    int n_stop;
    /* argmax over ids [0, n_choices) only (0: the whole vocabulary): a model's vocabulary padded
     * past its tokenizer's must not answer with ids that do not decode */
    int n_choices;
    tga_prompt_forward_fn on_prompt_forward; /* NULL: none */
    void *ctx;
} tga_generate_options;

typedef enum {
    TGA_GENERATION_STOP_TOKEN = 0, /* a stop id came next */
    TGA_GENERATION_MAX_NEW = 1,    /* max_new tokens generated */
    TGA_GENERATION_MAX_LEN = 2,    /* the sequence filled the planned max_len */
} tga_generation_end;

typedef struct tga_generation {
    int32_t *ids; /* caller's buffer of max_new ids */
    int n;
    tga_generation_end end;
} tga_generation;

/* Decodes every prompt greedily. The model was created with `shape`: at most shape->micro_batch
 * prompts, shape->max_images images in all, and each prompt at most shape->max_len tokens
 * (TGA_ERR_FORMAT naming the prompt otherwise). out[i] receives prompt i's tokens. */
tga_status tga_generate_greedy(tga_model *m, const tga_model_dims *dims, const tga_run_shape *shape,
                               const tga_prompt *prompts, int n_prompts, const tga_generate_options *o,
                               tga_generation *out);

#endif
