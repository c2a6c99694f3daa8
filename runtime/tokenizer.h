/* Tokenizers: text <-> token ids, for the three kinds of vocabulary the trainer meets.
 *
 * - Byte-level BPE (GPT-2, SmolLM2, Llama-3): a folder with encoder.json + vocab.bpe (OpenAI's
 *   files) or vocab.json + merges.txt, an HF tokenizer.json (model BPE, ByteLevel pre-tokenizer,
 *   optionally after Split / Digits stages), or a GGUF file with tokenizer.ggml.model = "gpt2".
 *   Text is split with the pre-tokenizer's regexes, each piece's bytes are mapped to GPT-2's
 *   byte alphabet and merged by merge rank.
 * - SentencePiece-style BPE with byte fallback (Llama-2, Mistral): an HF tokenizer.json (model
 *   BPE, normalizer Prepend("▁") + Replace(" ", "▁"), or the Metaspace pre-tokenizer), merged by
 *   merge rank as HF tokenizers does; or a GGUF file with tokenizer.ggml.model = "llama", merged by
 *   token score as llama.cpp and SentencePiece do. Characters without a token become <0xNN> byte
 *   tokens (or unk where the vocabulary has no byte tokens).
 * - Word level: an HF tokenizer.json with model WordLevel, or a *.txt word list (one token per
 *   line, id = line number, split at white space). Unknown words become the unk token; decode
 *   joins tokens with single spaces.
 *
 * Encoding never adds BOS/EOS (templates do). Special-token strings (HF added tokens, GGUF control
 * and user-defined tokens, GPT-2's <|endoftext|>) are recognised in the text only with
 * TGA_TOK_PARSE_SPECIAL; without it they are ordinary text. Each text segment between special
 * tokens is encoded on its own, as HF tokenizers does.
 *
 * SentencePiece dummy prefix: the text (each segment, with TGA_TOK_PARSE_SPECIAL) gets one "▁"
 * prepended and every space becomes "▁", exactly like HF's Llama tokenizer encoding a whole text
 * (tokenizer("Hello") -> "▁Hello"). With the Metaspace form, prepend_scheme "first" prefixes only
 * a segment at the start of the text and no prefix is added to a segment already starting with a
 * space, as HF does. Decoding removes one leading space when the tokenizer adds the prefix.
 *
 * Round trip: decode(encode(x)) == x for every byte string x with byte-level BPE, and with
 * SentencePiece byte fallback in its normalizer form unless x contains "▁" (U+2581, which decodes
 * as a space there, as in SentencePiece). The Metaspace form loses a leading space, as HF does. Bytes that
 * are not valid UTF-8 are their own pre-tokenizer pieces (byte-level) or byte-fallback tokens
 * (SentencePiece); decode returns raw bytes (no U+FFFD substitution).
 *
 * Regexes run on PCRE2 with Unicode properties (PCRE2's Unicode tables: code points assigned after
 * them count as unassigned). `\s` follows Python's `regex` module and HF tokenizers (White_Space),
 * not PCRE2's own list, which also holds U+180E.
 *
 * A loaded tokenizer is immutable: encode and decode may run concurrently from many threads. */
#ifndef TGA_RUNTIME_TOKENIZER_H
#define TGA_RUNTIME_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

typedef struct tga_tokenizer tga_tokenizer;

/* `path` is a folder (tokenizer.json, else encoder.json + vocab.bpe, else vocab.json +
 * merges.txt), a tokenizer.json (or any *.json in HF's format), a *.gguf file, or a *.txt word
 * list; a vocab.json / encoder.json path loads the merges file beside it. With tokenizer.json, a
 * tokenizer_config.json beside it names bos/eos/pad/unk. Errors name the file and what was wrong. */
tga_status tga_tokenizer_load(const char *path, tga_tokenizer **out);
void tga_tokenizer_free(tga_tokenizer *t);

enum { TGA_TOK_PARSE_SPECIAL = 1 }; /* recognise special-token strings in the text */

/* Encode len bytes of text (any bytes; NULs included). *ids is malloc'ed (the caller frees it;
 * non-NULL even for n = 0). */
tga_status tga_tokenizer_encode(const tga_tokenizer *t, const char *text, size_t len, unsigned flags,
                                int32_t **ids, size_t *n);

/* The bytes of the ids; *text is malloc'ed, NUL-terminated (not counted in *len). An id outside
 * [0, vocab size) is TGA_ERR_FORMAT. */
tga_status tga_tokenizer_decode(const tga_tokenizer *t, const int32_t *ids, size_t n, char **text,
                                size_t *len);

size_t tga_tokenizer_vocab_size(const tga_tokenizer *t);
const char *
tga_tokenizer_kind_name(const tga_tokenizer *t); /* "byte-level BPE", "SentencePiece BPE", "word level" */

/* The id of a token given in the vocabulary's own spelling ("<s>", "▁the", "Ġthe"); -1 if absent. */
int32_t tga_tokenizer_find(const tga_tokenizer *t, const char *token);

/* Special ids, -1 if none. From GGUF metadata or tokenizer_config.json where given; otherwise the
 * first present of the usual spellings (bos: <s> <|begin_of_text|> <bos> <|endoftext|>; eos: </s>
 * <|end_of_text|> <eos> <|endoftext|>; pad: <pad> <|pad|> [PAD]; unk: the model's unk_token,
 * <unk> [UNK] <|unk|>). */
int32_t tga_tokenizer_bos(const tga_tokenizer *t);
int32_t tga_tokenizer_eos(const tga_tokenizer *t);
int32_t tga_tokenizer_pad(const tga_tokenizer *t);
int32_t tga_tokenizer_unk(const tga_tokenizer *t);

#endif
