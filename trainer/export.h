/* `tga export`: a trained model's weights in the files users load elsewhere.
 *
 *   projector   DIR/mm_projector.safetensors           LLaVA's names: model.mm_projector.{0,2}.{weight,bias}
 *                                                      (mlp2x_gelu) or model.mm_projector.{weight,bias}
 *                                                      (linear: LLaVA builds a bare nn.Linear)
 *               DIR/multi_modal_projector.safetensors  HF transformers' LLaVA names:
 *                                                      multi_modal_projector.linear_{1,2}.{weight,bias}
 *                                                      (linear: linear_1 only; HF's class always has
 *                                                      linear_2, so only LLaVA loads a linear projector)
 *   model       DIR/config.json + DIR/model.safetensors, or model-0000i-of-0000N.safetensors with
 *               model.safetensors.index.json (one file when everything fits in one shard, as
 *               save_pretrained does): HF LlamaForCausalLM / MistralForCausalLM names
 *               (model.embed_tokens, model.layers.<i>.self_attn.{q,k,v,o}_proj, .mlp.{gate,up,down}_proj,
 *               .input_layernorm, .post_attention_layernorm, model.norm, lm_head). A tied head is
 *               left out, as save_pretrained does, with tie_word_embeddings: true in config.json.
 *
 * Layouts need no change: our matrices are [out, in] like nn.Linear's, and our q/k weights already
 * follow HF's rotate-half RoPE convention (we implement HF's), so unlike Meta's original checkpoints
 * nothing is permuted. bf16 rounds fp32 to nearest, ties to even, as torch's cast does. Every file
 * carries the metadata {"format": "pt"}, as save_pretrained writes it.
 *
 * Using the files:
 *   - LLaVA's --pretrain_mm_mlp_adapter reads a torch pickle: torch.save(safetensors.torch.load_file(
 *     "mm_projector.safetensors"), "mm_projector.bin") converts, names unchanged.
 *   - LLaVA's own full checkpoints (LlavaLlamaForCausalLM) are the Llama names plus the
 *     model.mm_projector.* tensors, i.e. the model set and mm_projector.safetensors together.
 *   - HF's LlavaForConditionalGeneration is not written: it also needs the vision tower's weights
 *     and config, which a tga run (trained on precomputed image features) does not have. Its
 *     language model is the exported LlamaForCausalLM, and multi_modal_projector.safetensors holds
 *     its projector under its own names.
 *   - config.json states head_dim; transformers versions that ignore it derive hidden_size /
 *     num_attention_heads, which differs when model.head_dim * n_heads != model.dim. */
#ifndef TGA_TRAINER_EXPORT_H
#define TGA_TRAINER_EXPORT_H

#include <stdint.h>

#include "runtime/error.h"
#include "runtime/safetensors.h"
#include "trainer/config.h"
#include "trainer/model.h"

typedef enum { TGA_EXPORT_AUTO = 0, TGA_EXPORT_PROJECTOR = 1, TGA_EXPORT_MODEL = 2 } tga_export_what;
typedef enum { TGA_EXPORT_LLAMA = 0, TGA_EXPORT_MISTRAL = 1 } tga_export_arch;

typedef struct tga_export_parts {
    int model, projector;
} tga_export_parts;

typedef struct tga_export_options {
    tga_st_dtype dtype;     /* TGA_ST_F32 or TGA_ST_BF16 */
    uint64_t shard_bytes;   /* at most this many tensor bytes per model shard */
    tga_export_arch arch;   /* config.json's architectures and model_type */
    int32_t bos_id, eos_id; /* -1: unknown, left out of config.json */
} tga_export_options;

/* What to write for a run trained with `trainable`: auto is the projector after stage 1 and the
 * model otherwise; the model comes with the projector whenever the run trained it (stage 1 and 2).
 * An lm run never trained its projector, so exporting one is a usage error. */
tga_status tga_export_choose(tga_export_what what, tga_trainable_set trainable, tga_export_parts *parts);

/* The projector under both naming schemes into dir (which exists). */
tga_status tga_export_projector(tga_model *m, const tga_model_dims *dims, const char *dir,
                                tga_st_dtype dtype);

/* The language model (no projector) as an HF set and config.json into dir (which exists).
 * *n_shards and *tensor_bytes describe the set written. */
tga_status tga_export_language_model(tga_model *m, const tga_config *cfg, const char *dir,
                                     const tga_export_options *opt, int *n_shards, uint64_t *tensor_bytes);

#endif
