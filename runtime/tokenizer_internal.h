/* Internals shared by the tokenizer's files (not a public interface):
 *   tokenizer.c       the object, vocabulary index, special tokens, encode/decode drivers, load dispatch
 *   tokenizer_bpe.c   the merge loop, byte-level alphabet, regex pre-tokenizer, GPT-2 file loaders
 *   tokenizer_spm.c   SentencePiece normalization, byte fallback and decoding
 *   tokenizer_gguf.c  the GGUF loader (tokenizer.ggml.*)
 *   tokenizer_word.c  word-level encoding and the word-list loader
 *   tokenizer_json.c  JSON files: HF tokenizer.json (+ tokenizer_config.json), GPT-2's vocabularies */
#ifndef TGA_RUNTIME_TOKENIZER_INTERNAL_H
#define TGA_RUNTIME_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>

#include "runtime/tokenizer.h"

typedef enum { TOK_BYTE_BPE, TOK_SPM_BPE, TOK_WORD } tok_kind;

/* HF tokenizers and GPT-2 merge the adjacent pair with the lowest merge rank; llama.cpp and
 * SentencePiece merge the adjacent pair whose concatenation is the highest-scoring token. */
typedef enum { TOK_MERGE_BY_RANK, TOK_MERGE_BY_SCORE } tok_merge_mode;

typedef enum { TOK_PREPEND_NEVER, TOK_PREPEND_FIRST, TOK_PREPEND_ALWAYS } tok_prepend;

typedef struct {
    char *text; /* the vocabulary's spelling, NUL-terminated */
    uint32_t len;
    char *bytes; /* what decode writes for it */
    uint32_t n_bytes;
    bool special; /* recognised with TGA_TOK_PARSE_SPECIAL */
} tok_token;

/* Open addressing from a token's spelling to its id; a slot holds id + 1 (0 is empty). */
typedef struct {
    uint32_t *slots;
    size_t mask;
} tok_index;

/* Open addressing from a pair of ids (left << 32 | right) to its merge. */
typedef struct {
    uint64_t *keys; /* TOK_NO_PAIR when empty */
    uint32_t *rank;
    int32_t *merged;
    size_t mask, count;
} tok_pair_map;
#define TOK_NO_PAIR UINT64_MAX

/* A pre-tokenizer stage: the regex's matches and the text between them ("gaps") become pieces
 * as selected; every piece of one stage is split again by the next. A stage without a regex
 * passes each piece on whole. */
#define TOK_MAX_SPLITS 4
typedef struct {
    pcre2_code *re;
    bool keep_matches, keep_gaps;
    bool prefix_space; /* HF ByteLevel(add_prefix_space): a space before each piece that lacks one */
} tok_split;

struct tga_tokenizer {
    char *source; /* the file or folder, for messages */
    tok_kind kind;
    tok_token *tokens;
    size_t n_tokens;
    tok_index index;

    tok_merge_mode merge_mode;
    tok_pair_map merges;  /* TOK_MERGE_BY_RANK */
    uint32_t *score_rank; /* TOK_MERGE_BY_SCORE: per id, 0 for the highest score (equal scores, equal rank) */
    bool ignore_merges;   /* a piece that is itself a token is not split (HF, Llama-3) */
    int32_t byte_token[256]; /* byte-level: each byte's alphabet symbol; SentencePiece: <0xNN>; -1 absent */
    bool byte_fallback, fuse_unk;

    tok_split splits[TOK_MAX_SPLITS];
    int n_splits;
    bool spaces_as_marker;      /* SentencePiece: spaces become "▁" */
    tok_prepend prepend;        /* SentencePiece: "▁" before a segment */
    bool prepend_unless_marked; /* Metaspace: no prefix on a segment already starting with "▁" */

    int32_t *specials; /* ids of special tokens, longest spelling first */
    size_t n_specials;
    bool special_first_byte[256];

    int32_t bos, eos, pad, unk;
};

typedef struct {
    char *data;
    size_t cap;
} tok_buffer;

/* One encode call's working state (a tokenizer itself is never written while encoding). */
typedef struct tok_cache tok_cache;
typedef struct {
    const tga_tokenizer *t;
    int32_t *ids;
    size_t n, cap;
    pcre2_match_data *match[TOK_MAX_SPLITS];
    tok_buffer segment;                  /* a normalized copy of the current segment */
    tok_buffer word;                     /* the current piece in the vocabulary's spelling */
    tok_buffer symbols, heap;            /* the merge loop's arrays, reused across pieces */
    tok_buffer prefixed[TOK_MAX_SPLITS]; /* a piece with the space a stage put before it */
    tok_cache *cache;
} tok_encoder;

/* ---- tokenizer.c ---------------------------------------------------------------------------- */
tga_status tok_create(const char *source, tok_kind kind, size_t n_tokens, tga_tokenizer **out);
/* Copies the spelling; each id must be set exactly once before tok_finish. */
tga_status tok_set_token(tga_tokenizer *t, size_t id, const char *text, size_t len);
/* Builds the index (rejecting duplicate spellings and ids without a token) so lookups work. */
tga_status tok_build_index(tga_tokenizer *t);
int32_t tok_lookup(const tga_tokenizer *t, const char *text, size_t len);
/* Last step of every loader: decode table, special-token order, default special ids. */
tga_status tok_finish(tga_tokenizer *t);
uint64_t tok_hash(const void *data, size_t len);
/* Length of the UTF-8 character at s (1..4), or 1 for a byte that does not start a valid one. */
size_t tok_utf8_len(const uint8_t *s, size_t n);
tga_status tok_read_file(const char *path, char **data, size_t *len);
tga_status tok_push_id(tok_encoder *e, int32_t id);
tga_status tok_reserve(tok_buffer *b, size_t n);
/* The byte fallback of one byte: its <0xNN> token, else unk, else an error. */
tga_status tok_push_byte(tok_encoder *e, uint8_t byte);
tga_status tok_missing_unk(const tga_tokenizer *t, const char *what);

/* ---- tokenizer_bpe.c ------------------------------------------------------------------------ */
extern const char tok_gpt2_pattern[];
/* Adds a pre-tokenizer stage; the pattern (NULL: none) is in the Python/Oniguruma dialect HF uses. */
tga_status tok_add_split(tga_tokenizer *t, const char *pattern, bool keep_matches, bool keep_gaps);
tga_status tok_add_merge(tga_tokenizer *t, const char *left, size_t left_len, const char *right,
                         size_t right_len, uint32_t rank);
tga_status tok_init_merges(tga_tokenizer *t, size_t n_merges);
/* Byte-level: finds each byte's alphabet symbol in the vocabulary. */
void tok_init_byte_level(tga_tokenizer *t);
tga_status tok_byte_level_decode_table(tga_tokenizer *t);
/* Splits the text by the pre-tokenizer stages from `stage` on and calls piece() for each piece. */
typedef tga_status (*tok_piece_fn)(tok_encoder *e, const char *piece, size_t len);
tga_status tok_split_pieces(tok_encoder *e, int stage, const char *text, size_t len, tok_piece_fn piece);
tga_status tok_bpe_piece(tok_encoder *e, const char *piece, size_t len);
tga_status tok_byte_bpe_segment(tok_encoder *e, const char *text, size_t len);
void tok_encoder_free(tok_encoder *e);

/* ---- tokenizer_spm.c ------------------------------------------------------------------------ */
extern const char tok_metaspace_split_pattern[];
tga_status tok_spm_segment(tok_encoder *e, const char *text, size_t len, bool at_text_start);
tga_status tok_spm_decode_table(tga_tokenizer *t);
/* SentencePiece: finds the <0xNN> tokens. */
void tok_init_byte_fallback(tga_tokenizer *t);

/* ---- tokenizer_gguf.c ----------------------------------------------------------------------- */
typedef struct tga_gguf tga_gguf;
tga_status tok_load_gguf(const char *path, tga_tokenizer **out);
tga_status tok_from_gguf(const tga_gguf *g, tga_tokenizer **out); /* from metadata already read */

/* ---- tokenizer_word.c ----------------------------------------------------------------------- */
tga_status tok_word_segment(tok_encoder *e, const char *text, size_t len);
tga_status tok_load_word_list(const char *path, tga_tokenizer **out);

/* ---- tokenizer_json.c ----------------------------------------------------------------------- */
tga_status tok_load_hf_json(const char *path, tga_tokenizer **out);
/* The same from JSON text (for the fuzzer; `name` is used in messages; no tokenizer_config.json). */
tga_status tok_load_hf_json_text(const char *name, const char *text, size_t len, tga_tokenizer **out);
tga_status tok_load_gpt2_files(const char *vocab_path, const char *merges_path, tga_tokenizer **out);

#endif
