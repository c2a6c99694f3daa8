/* The Hugging Face names of the language model's parameters, as LlamaForCausalLM and
 * MistralForCausalLM's state_dict spells them: `tga export` writes them, `train.init_from` reads
 * them from a model directory (trainer/weights.c). The projector has no such name. */
#ifndef TGA_TRAINER_HF_NAMES_H
#define TGA_TRAINER_HF_NAMES_H

#include <stddef.h>

/* One decoder layer's parameters ("layers.<l>.<ours>" <-> "model.layers.<l>.<hf>"), in the order of
 * LlamaDecoderLayer's state_dict (self_attn, mlp, then the two norms). */
typedef struct {
    const char *ours, *hf;
} tga_hf_layer_name;

extern const tga_hf_layer_name tga_hf_layer_names[];
extern const int tga_hf_n_layer_names;

/* The HF name of our parameter `ours` into hf[size]: 1, or 0 when it has none (the projector). */
int tga_hf_name(const char *ours, char *hf, size_t size);

#endif
