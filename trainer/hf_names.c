#include "trainer/hf_names.h"

#include <stdio.h>
#include <string.h>

const tga_hf_layer_name tga_hf_layer_names[] = {
    {"wq", "self_attn.q_proj.weight"},
    {"wk", "self_attn.k_proj.weight"},
    {"wv", "self_attn.v_proj.weight"},
    {"wo", "self_attn.o_proj.weight"},
    {"w_gate", "mlp.gate_proj.weight"},
    {"w_up", "mlp.up_proj.weight"},
    {"w_down", "mlp.down_proj.weight"},
    {"attn_norm", "input_layernorm.weight"},
    {"ffn_norm", "post_attention_layernorm.weight"},
};
const int tga_hf_n_layer_names = (int)(sizeof tga_hf_layer_names / sizeof tga_hf_layer_names[0]);

int tga_hf_name(const char *ours, char *hf, size_t size) {
    static const struct {
        const char *ours, *hf;
    } whole[] = {{"tok_embeddings", "model.embed_tokens.weight"},
                 {"final_norm", "model.norm.weight"},
                 {"lm_head", "lm_head.weight"}};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++)
        if (strcmp(ours, whole[i].ours) == 0) return snprintf(hf, size, "%s", whole[i].hf) < (int)size;
    int layer, used = 0;
    if (sscanf(ours, "layers.%d.%n", &layer, &used) != 1 || used == 0) return 0;
    for (int i = 0; i < tga_hf_n_layer_names; i++)
        if (strcmp(ours + used, tga_hf_layer_names[i].ours) == 0)
            return snprintf(hf, size, "model.layers.%d.%s", layer, tga_hf_layer_names[i].hf) < (int)size;
    return 0;
}
