/* Chat templates: how one conversation becomes one training sample (TGA-METHOD.md §2).
 *
 * A template is a YAML file (configs/templates/NAME.yaml; trainer/DATA.md documents the keys) of
 * format strings with placeholders:
 *   {bos} {eos}        the tokenizer's BOS / EOS token
 *   {token:SPELLING}   the vocabulary token spelled SPELLING ("<|im_start|>"), by tga_tokenizer_find
 *   {system}           the template's `system` text
 *   {retrieval}        the template's `retrieval` block (which holds {retrieved}, the retrieved text
 *                      R); left out for a record without R
 *   {content}          the turn's text: in a user turn, its <image> markers become image spans; in
 *                      `assistant_answer`, the answer
 *   {images}           only the user turn's images, its text dropped (LLaVA's `plain`)
 *   {caption}          the caption C, in the `caption` prompt (the text-only target branch)
 *   {{ }}              literal braces
 *
 * Spans are exact by construction: the sample is cut into pieces, each tokenized on its own, and
 * the ids are concatenated (as LLaVA does around <image>), so no token ever straddles the edge of
 * R, C, an answer or an image. Each record text (R, C, an answer, a user turn's text between
 * images) is a piece; the template text between record texts, special tokens and images is one
 * piece (across keys, but never across a change of supervision). Spaces that end a piece start the
 * next one, because byte-level BPE and SentencePiece both attach a word's leading space to the
 * word: "Retrieved Text: {retrieved}." gives "Retrieved Text:" | " R" | ".", so the R span starts
 * with the token of " R..." (decoding it gives R with its leading space, or R itself where the
 * tokenizer strips SentencePiece's leading "▁") and ends before the ".". Before a special token,
 * an image or the end, such spaces stay a piece of their own.
 *
 * A piece at the start of the sample, after a special token or after an image is encoded as a text
 * of its own (SentencePiece adds its dummy "▁" there, as HF and LLaVA's per-chunk tokenization do);
 * any other piece is encoded as the continuation of a text, so that SentencePiece adds no "▁" that
 * a whole-string encoding would not have. A tokenizer that adds no "▁" after a special token
 * (Metaspace with prepend_scheme "first") is detected when the template is loaded, and text after
 * its special tokens is encoded as a continuation. Record text is never parsed for special tokens: a "</s>"
 * in an answer is text, not an end of sequence.
 *
 * Supervision: only the `assistant_answer` part of each assistant turn ({content} and what follows
 * it there, e.g. " {eos}") has labels; everything else is TGA_IGNORE_INDEX. */
#ifndef TGA_TRAINER_TEMPLATE_H
#define TGA_TRAINER_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"
#include "runtime/tokenizer.h"
#include "trainer/config.h"
#include "trainer/shard.h"

#define TGA_IMAGE_MARKER "<image>"
#define TGA_TEMPLATE_FILE_MAX (1u << 16)

typedef struct tga_template tga_template;

/* `name` is a built-in template name (plain, plain_retrieval, llama_2, mistral_instruct, chatml or
 * any NAME.yaml in the template folder) or a path to a YAML file (it contains '/' or ends in
 * .yaml). The template folder is $TGA_TEMPLATE_DIR, else the first configs/templates found beside
 * the running executable or in one of its three parent folders. Binding to the tokenizer looks
 * up every special token here: a template that names a token the vocabulary lacks fails now, with
 * TGA_ERR_CONFIG naming the file, the key and the token. The tokenizer must outlive the template. */
tga_status tga_template_load(const char *name, const tga_tokenizer *tok, tga_template **out);

/* The same from YAML text in memory (`source` names it in messages). */
tga_status tga_template_load_text(const char *source, const char *yaml, size_t len, const tga_tokenizer *tok,
                                  tga_template **out);
void tga_template_free(tga_template *t); /* NULL is a no-op */

const char *tga_template_name(const tga_template *t);   /* the file's `name` */
const char *tga_template_source(const tga_template *t); /* the file it came from */
bool tga_template_shows_retrieved(const tga_template *t);
/* data.template's enum -> its template name ("llama_2"); NULL for a value out of range. */
const char *tga_template_builtin_name(tga_chat_template which);

/* The <image> markers in a text (non-overlapping). */
size_t tga_count_image_markers(const char *text, size_t len);

typedef enum { TGA_ROLE_USER = 0, TGA_ROLE_ASSISTANT = 1 } tga_role;

typedef struct {
    tga_role role;
    const char *text;
    size_t len;
} tga_turn;

/* What a template renders: user and assistant turns alternating, user first and assistant last. */
typedef struct {
    const tga_turn *turns;
    size_t n_turns;
    size_t n_images;       /* images of the record = the <image> markers in its user turns */
    const char *retrieved; /* R, or NULL: no retrieval block */
    size_t retrieved_len;
    const char *caption; /* C, or NULL: no caption branch (Tc = 0) */
    size_t caption_len;
} tga_conversation;

/* A rendered sample, laid out as tga_shard_sample wants it (the arrays belong to this struct and are
 * reused by the next render). */
typedef struct {
    int32_t *input_ids, *labels; /* [n_tokens] */
    int32_t n_tokens;
    tga_shard_span *images; /* [n_images], each (start, P) */
    int32_t n_images;
    tga_shard_span retrieved; /* length 0: none */
    int32_t *cap_ids;         /* [n_caption_tokens] */
    int32_t n_caption_tokens;
    tga_shard_span caption;
    int64_t n_supervised; /* labels that are not TGA_IGNORE_INDEX */
    bool fits;            /* false: the sample cannot fit max_len (see tga_template_render) */
    bool truncated;       /* true: fits, but the tail was cut at max_len */
    size_t ids_cap, images_cap, cap_ids_cap;
} tga_rendered;

void tga_rendered_init(tga_rendered *r);
void tga_rendered_free(tga_rendered *r);

/* Render one conversation with P patches per image. Truncation to max_len tokens (image patches
 * included; the same limit for the caption branch): the tail is cut, as LLaVA does, but never
 * inside or before the end of an image span or the R span, the cut image branch must keep at
 * least one supervised label and the cut caption branch at least one token of C. A sample that
 * cannot meet that is returned with fits = false (not an error: the caller counts and skips it).
 * Errors: TGA_ERR_FORMAT when the conversation does not have the shape the template needs (turn
 * order, a single-turn template, image markers vs n_images, no supervised token), with a message
 * the caller prefixes with the record; tokenizer errors as they come. */
tga_status tga_template_render(const tga_template *t, const tga_conversation *c, int32_t patches_per_image,
                               int64_t max_len, tga_rendered *out);

#endif
