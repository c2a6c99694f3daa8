/* Chat templates: every shipped template rendered with GPT-2's byte-level BPE (extended with the
 * ChatML tokens for chatml, as SmolLM2's vocabulary is), with a word-level tokenizer, and with two
 * small SentencePiece-style BPE tokenizers (the legacy Prepend normalizer and Metaspace with
 * prepend_scheme "first"), against references written here:
 *   - each template's whole sample as a literal string taken from TGA-METHOD.md §2 / LLaVA's
 *     conversation styles, split by hand into the pieces the tokenization rules of template.h
 *     name (each piece checked to rejoin into that string);
 *   - token by token: ids = the concatenated encodings of those pieces, -200 exactly on the image
 *     spans of length P, labels exactly on the answers and their end-of-turn pieces, the R and C
 *     spans exactly the tokens of their pieces and decoding to R and C;
 *   - SentencePiece: each span's ids equal the tokenizer's own encoding of R, C or the answer (no
 *     dummy "▁" lost or doubled at a piece edge), and the piece after BOS follows the tokenizer's
 *     rule for text after a special token.
 * Also multi-image and zero-image conversations, LLaVA's moving of a single <image> marker,
 * truncation (cut, refused when it would enter an image or the R span or leave no label, caption
 * branch), and malformed template files / conversations with the messages they must give. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, setenv */

#include "trainer/template.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/testutil.h"
#include "trainer/model.h"

#define P_TEST 5 /* patches per image */

static const char *const SYS =
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language.";
static const char *const R_TEXT = "a cat sleeping on a couch";
static const char *const C_TEXT = "a small cat lying on a red sofa";
static const char *const Q1 = "What is shown here?\n<image>"; /* LLaVA moves the marker to the front */
static const char *const A1 = "A small cat on a red sofa.";
static const char *const Q2 = "What colour is the sofa?";
static const char *const A2 = "It is red.";

static char tmp_dir[] = "/tmp/tga_test_template_XXXXXX";

/* ---- the reference: a sample as pieces ------------------------------------------------------ */

typedef enum { SEG_TEXT, SEG_SPECIAL, SEG_IMAGE } seg_kind;
typedef enum { SP_BOS, SP_EOS, SP_IM_START, SP_IM_END } special_name;
typedef enum { MARK_NONE, MARK_RETRIEVED, MARK_CAPTION } seg_mark;

typedef struct {
    seg_kind kind;
    char text[1280];
    special_name special;
    bool supervised;
    seg_mark mark;
} seg;

typedef struct {
    seg segs[64];
    int n;
} seglist;

static seg *add_seg(seglist *l, seg_kind kind) {
    if (l->n >= 64) {
        fprintf(stderr, "test bug: too many pieces\n");
        exit(1);
    }
    seg *s = &l->segs[l->n++];
    memset(s, 0, sizeof *s);
    s->kind = kind;
    return s;
}

static void text(seglist *l, const char *t) {
    seg *s = add_seg(l, SEG_TEXT);
    snprintf(s->text, sizeof s->text, "%s", t);
}
static void sup(seglist *l, const char *t) {
    seg *s = add_seg(l, SEG_TEXT);
    snprintf(s->text, sizeof s->text, "%s", t);
    s->supervised = true;
}
static void special(seglist *l, special_name name, bool supervised) {
    seg *s = add_seg(l, SEG_SPECIAL);
    s->special = name;
    s->supervised = supervised;
}
static void image(seglist *l) { add_seg(l, SEG_IMAGE); }
static void marked(seglist *l, const char *t, seg_mark mark) {
    seg *s = add_seg(l, SEG_TEXT);
    snprintf(s->text, sizeof s->text, "%s", t);
    s->mark = mark;
}

typedef struct {
    const char *name;
    tga_tokenizer *tok;
    int32_t special_ids[4];
    const char *special_text[4]; /* spellings, for the literal sample strings */
    bool word_level;             /* decode joins words with single spaces */
} tok_case;

/* The pieces rejoined, specials spelled, images as <image>: must equal the literal spec string. */
static void join_pieces(const seglist *l, const tok_case *tc, char *out, size_t size) {
    size_t o = 0;
    for (int i = 0; i < l->n; i++) {
        const seg *s = &l->segs[i];
        const char *piece = s->kind == SEG_TEXT    ? s->text
                            : s->kind == SEG_IMAGE ? "<image>"
                                                   : tc->special_text[s->special];
        o += (size_t)snprintf(out + o, size - o, "%s", piece);
    }
}

/* ---- the conversations --------------------------------------------------------------------- */

static tga_turn two_rounds[4];
static tga_conversation two_round_conversation(void) {
    two_rounds[0] = (tga_turn){TGA_ROLE_USER, Q1, strlen(Q1)};
    two_rounds[1] = (tga_turn){TGA_ROLE_ASSISTANT, A1, strlen(A1)};
    two_rounds[2] = (tga_turn){TGA_ROLE_USER, Q2, strlen(Q2)};
    two_rounds[3] = (tga_turn){TGA_ROLE_ASSISTANT, A2, strlen(A2)};
    return (tga_conversation){two_rounds, 4, 1, R_TEXT, strlen(R_TEXT), C_TEXT, strlen(C_TEXT)};
}

static tga_turn single_round[2];
static tga_conversation single_round_conversation(void) {
    static const char *q = "<image>\nDescribe the image briefly.";
    single_round[0] = (tga_turn){TGA_ROLE_USER, q, strlen(q)};
    single_round[1] = (tga_turn){TGA_ROLE_ASSISTANT, C_TEXT, strlen(C_TEXT)};
    return (tga_conversation){single_round, 2, 1, R_TEXT, strlen(R_TEXT), C_TEXT, strlen(C_TEXT)};
}

/* ---- expected pieces per template (TGA-METHOD.md §2 and the template files' comments) ------- */

static void llama_2_expected(seglist *l, seglist *cap, char *spec, size_t size, const tok_case *tc) {
    char head[1024];
    snprintf(head, sizeof head, "[INST] <<SYS>>\n%s\n<</SYS>>\n\n", SYS);
    char buf[1200];
    special(l, SP_BOS, false);
    snprintf(buf, sizeof buf, "%sRetrieved Text:", head);
    text(l, buf);
    snprintf(buf, sizeof buf, " %s", R_TEXT);
    marked(l, buf, MARK_RETRIEVED);
    text(l, ". ");
    image(l);
    text(l, "\nWhat is shown here?");
    text(l, " [/INST]");
    snprintf(buf, sizeof buf, " %s", A1);
    sup(l, buf);
    sup(l, " ");
    special(l, SP_EOS, true);
    special(l, SP_BOS, false);
    text(l, "[INST]");
    snprintf(buf, sizeof buf, " %s", Q2);
    text(l, buf);
    text(l, " [/INST]");
    snprintf(buf, sizeof buf, " %s", A2);
    sup(l, buf);
    sup(l, " ");
    special(l, SP_EOS, true);
    special(cap, SP_BOS, false);
    snprintf(buf, sizeof buf, "%s<image>", head);
    text(cap, buf);
    snprintf(buf, sizeof buf, " %s", C_TEXT);
    marked(cap, buf, MARK_CAPTION);
    const char *bos = tc->special_text[SP_BOS], *eos = tc->special_text[SP_EOS];
    snprintf(
        spec, size,
        "%s[INST] <<SYS>>\n%s\n<</SYS>>\n\nRetrieved Text: %s. <image>\nWhat is shown here? [/INST] %s %s"
        "%s[INST] %s [/INST] %s %s",
        bos, SYS, R_TEXT, A1, eos, bos, Q2, A2, eos);
}

static void mistral_expected(seglist *l, seglist *cap, char *spec, size_t size, const tok_case *tc) {
    char buf[600];
    special(l, SP_BOS, false);
    text(l, "[INST] Retrieved Text:");
    snprintf(buf, sizeof buf, " %s", R_TEXT);
    marked(l, buf, MARK_RETRIEVED);
    text(l, ". ");
    image(l);
    text(l, "\nWhat is shown here?");
    text(l, " [/INST]");
    snprintf(buf, sizeof buf, " %s", A1);
    sup(l, buf);
    sup(l, " ");
    special(l, SP_EOS, true);
    text(l, "[INST]");
    snprintf(buf, sizeof buf, " %s", Q2);
    text(l, buf);
    text(l, " [/INST]");
    snprintf(buf, sizeof buf, " %s", A2);
    sup(l, buf);
    sup(l, " ");
    special(l, SP_EOS, true);
    special(cap, SP_BOS, false);
    text(cap, "[INST] <image>");
    snprintf(buf, sizeof buf, " %s", C_TEXT);
    marked(cap, buf, MARK_CAPTION);
    const char *bos = tc->special_text[SP_BOS], *eos = tc->special_text[SP_EOS];
    snprintf(spec, size,
             "%s[INST] Retrieved Text: %s. <image>\nWhat is shown here? [/INST] %s %s[INST] %s [/INST] %s %s",
             bos, R_TEXT, A1, eos, Q2, A2, eos);
}

static void chatml_expected(seglist *l, seglist *cap, char *spec, size_t size, const tok_case *tc) {
    char buf[600];
    snprintf(buf, sizeof buf, "system\n%s", SYS);
    for (int branch = 0; branch < 2; branch++) {
        seglist *x = branch ? cap : l;
        special(x, SP_IM_START, false);
        text(x, buf);
        special(x, SP_IM_END, false);
        text(x, "\n");
        special(x, SP_IM_START, false);
    }
    text(l, "user\nRetrieved Text:");
    snprintf(buf, sizeof buf, " %s", R_TEXT);
    marked(l, buf, MARK_RETRIEVED);
    text(l, ". ");
    image(l);
    text(l, "\nWhat is shown here?");
    const char *answers[2] = {A1, A2};
    for (int round = 0; round < 2; round++) {
        if (round == 1) {
            special(l, SP_IM_START, false);
            text(l, "user\n");
            text(l, Q2);
        }
        special(l, SP_IM_END, false);
        text(l, "\n");
        special(l, SP_IM_START, false);
        text(l, "assistant\n");
        sup(l, answers[round]);
        special(l, SP_IM_END, true);
        text(l, "\n");
    }
    text(cap, "user\n<image>");
    snprintf(buf, sizeof buf, " %s", C_TEXT);
    marked(cap, buf, MARK_CAPTION);
    const char *s = tc->special_text[SP_IM_START], *e = tc->special_text[SP_IM_END];
    snprintf(spec, size,
             "%ssystem\n%s%s\n%suser\nRetrieved Text: %s. <image>\nWhat is shown here?%s\n%sassistant\n%s%s\n"
             "%suser\n%s%s\n%sassistant\n%s%s\n",
             s, SYS, e, s, R_TEXT, e, s, A1, e, s, Q2, e, s, A2, e);
}

static void plain_expected(seglist *l, seglist *cap, char *spec, size_t size, const tok_case *tc) {
    special(l, SP_BOS, false);
    image(l);
    sup(l, C_TEXT);
    sup(l, "\n");
    special(cap, SP_BOS, false);
    marked(cap, C_TEXT, MARK_CAPTION);
    snprintf(spec, size, "%s<image>%s\n", tc->special_text[SP_BOS], C_TEXT);
}

static void plain_retrieval_expected(seglist *l, seglist *cap, char *spec, size_t size, const tok_case *tc) {
    char buf[600];
    special(l, SP_BOS, false);
    text(l, "Retrieved Text:");
    snprintf(buf, sizeof buf, " %s", R_TEXT);
    marked(l, buf, MARK_RETRIEVED);
    text(l, ". ");
    image(l);
    sup(l, C_TEXT);
    sup(l, "\n");
    special(cap, SP_BOS, false);
    marked(cap, C_TEXT, MARK_CAPTION);
    snprintf(spec, size, "%sRetrieved Text: %s. <image>%s\n", tc->special_text[SP_BOS], R_TEXT, C_TEXT);
}

typedef void (*expect_fn)(seglist *, seglist *, char *, size_t, const tok_case *);
static const struct {
    const char *name;
    expect_fn expect;
    bool single_turn;
    bool chatml;
} templates[] = {
    {"plain", plain_expected, true, false},      {"plain_retrieval", plain_retrieval_expected, true, false},
    {"llama_2", llama_2_expected, false, false}, {"mistral_instruct", mistral_expected, false, false},
    {"chatml", chatml_expected, false, true},
};
enum { N_TEMPLATES = sizeof templates / sizeof templates[0] };

/* ---- helpers ----------------------------------------------------------------------------------- */

static tga_template *load_template(const char *name, const tga_tokenizer *tok) {
    char path[1024];
    snprintf(path, sizeof path, "%s/configs/templates/%s.yaml", TGA_SOURCE_DIR, name);
    tga_template *t = NULL;
    tga_status st = tga_template_load(path, tok, &t);
    CHECK(st == TGA_OK, "load %s: %s", path, tga_error_message());
    tga_error_clear();
    return t;
}

static char *decode(const tok_case *tc, const int32_t *ids, size_t n) {
    char *out = NULL;
    size_t len;
    CHECK(tga_tokenizer_decode(tc->tok, ids, n, &out, &len) == TGA_OK, "decode: %s", tga_error_message());
    return out ? out : strdup("");
}

/* Words joined by single spaces: what a word-level decode gives back. */
static void normalize_words(const char *in, char *out, size_t size) {
    size_t o = 0;
    for (const char *s = in; *s && o + 1 < size;) {
        while (*s == ' ' || *s == '\n' || *s == '\t')
            s++;
        if (!*s) break;
        if (o > 0) out[o++] = ' ';
        while (*s && *s != ' ' && *s != '\n' && *s != '\t' && o + 1 < size)
            out[o++] = *s++;
    }
    out[o] = '\0';
}

static void check_decodes_to(const tok_case *tc, const int32_t *ids, size_t n, const char *expected,
                             const char *what) {
    char *got = decode(tc, ids, n), want[2048];
    if (tc->word_level)
        normalize_words(expected, want, sizeof want);
    else
        snprintf(want, sizeof want, "%s", expected);
    CHECK(strcmp(got, want) == 0, "%s/%s: decodes to '%s', expected '%s'", tc->name, what, got, want);
    free(got);
}

typedef struct {
    int32_t ids[4096], labels[4096];
    int n;
    tga_shard_span images[8], span;
    int n_images;
} expected_tokens;

/* The reference ids: each piece encoded on its own (byte-level BPE and word level add nothing at
 * the start of a text, so a piece's ids do not depend on where it stands). */
static void expect_tokens(const tok_case *tc, const seglist *l, seg_mark mark, expected_tokens *x) {
    memset(x, 0, sizeof *x);
    for (int i = 0; i < l->n; i++) {
        const seg *s = &l->segs[i];
        int start = x->n;
        if (s->kind == SEG_IMAGE) {
            for (int k = 0; k < P_TEST; k++) {
                x->ids[x->n] = TGA_IMAGE_TOKEN_ID;
                x->labels[x->n++] = TGA_IGNORE_INDEX;
            }
            x->images[x->n_images++] = (tga_shard_span){start, P_TEST};
            continue;
        }
        const int32_t *ids = &tc->special_ids[s->special];
        int32_t *owned = NULL;
        size_t n = 1;
        if (s->kind == SEG_TEXT) {
            CHECK(tga_tokenizer_encode(tc->tok, s->text, strlen(s->text), 0, &owned, &n) == TGA_OK, "encode");
            ids = owned;
        }
        for (size_t k = 0; k < n && x->n < 4096; k++) {
            x->ids[x->n] = ids[k];
            x->labels[x->n++] = s->supervised ? ids[k] : TGA_IGNORE_INDEX;
        }
        if (mark != MARK_NONE && s->mark == mark) x->span = (tga_shard_span){start, x->n - start};
        free(owned);
    }
}

static bool same(const int32_t *a, const int32_t *b, int n) {
    return memcmp(a, b, (size_t)n * sizeof *a) == 0;
}

static const seg *marked_seg(const seglist *l, seg_mark mark) {
    for (int i = 0; i < l->n; i++)
        if (l->segs[i].mark == mark) return &l->segs[i];
    return NULL;
}

/* ---- rendering against the reference ----------------------------------------------------------- */

static void check_against_reference(const tok_case *tc, int which, const tga_rendered *r, const seglist *l,
                                    const seglist *cap) {
    const char *name = templates[which].name;
    expected_tokens *x = malloc(sizeof *x), *xc = malloc(sizeof *xc);
    expect_tokens(tc, l, MARK_RETRIEVED, x);
    expect_tokens(tc, cap, MARK_CAPTION, xc);
    CHECK(r->n_tokens == x->n && same(r->input_ids, x->ids, x->n),
          "%s/%s: input_ids differ from the pieces (%d vs %d tokens)", tc->name, name, r->n_tokens, x->n);
    CHECK(r->n_tokens == x->n && same(r->labels, x->labels, x->n),
          "%s/%s: labels differ from the supervised pieces", tc->name, name);
    CHECK(r->n_images == x->n_images, "%s/%s: %d images, expected %d", tc->name, name, r->n_images,
          x->n_images);
    for (int i = 0; i < r->n_images && i < x->n_images; i++)
        CHECK(r->images[i].start == x->images[i].start && r->images[i].length == P_TEST,
              "%s/%s: image %d at %d+%d", tc->name, name, i, r->images[i].start, r->images[i].length);
    int64_t supervised = 0, patches = 0;
    for (int i = 0; i < r->n_tokens; i++) {
        supervised += r->labels[i] != TGA_IGNORE_INDEX;
        patches += r->input_ids[i] == TGA_IMAGE_TOKEN_ID;
    }
    CHECK(supervised == r->n_supervised && patches == (int64_t)r->n_images * P_TEST, "%s/%s: counts",
          tc->name, name);
    CHECK(r->retrieved.start == x->span.start && r->retrieved.length == x->span.length,
          "%s/%s: R span %d+%d, expected %d+%d", tc->name, name, r->retrieved.start, r->retrieved.length,
          x->span.start, x->span.length);
    const seg *rs = marked_seg(l, MARK_RETRIEVED);
    if (rs && r->retrieved.length > 0)
        check_decodes_to(tc, r->input_ids + r->retrieved.start, (size_t)r->retrieved.length, rs->text,
                         "R span");
    CHECK(r->n_caption_tokens == xc->n && same(r->cap_ids, xc->ids, xc->n), "%s/%s: caption branch differs",
          tc->name, name);
    CHECK(r->caption.start == xc->span.start && r->caption.length == xc->span.length, "%s/%s: C span %d+%d",
          tc->name, name, r->caption.start, r->caption.length);
    check_decodes_to(tc, r->cap_ids + r->caption.start, (size_t)r->caption.length,
                     marked_seg(cap, MARK_CAPTION)->text, "C span");
    free(x);
    free(xc);
}

static void test_shipped_templates(const tok_case *tc) {
    for (int which = 0; which < N_TEMPLATES; which++) {
        if (templates[which].chatml && tc->special_ids[SP_IM_START] < 0) continue; /* see test_malformed */
        tga_template *t = load_template(templates[which].name, tc->tok);
        if (!t) continue;
        seglist *l = calloc(1, sizeof *l), *cap = calloc(1, sizeof *cap);
        char spec[4096], joined[4096];
        templates[which].expect(l, cap, spec, sizeof spec, tc);
        join_pieces(l, tc, joined, sizeof joined);
        CHECK(strcmp(joined, spec) == 0, "test bug: the %s pieces do not rejoin into the spec string",
              templates[which].name);
        tga_conversation c =
            templates[which].single_turn ? single_round_conversation() : two_round_conversation();
        tga_rendered r;
        tga_rendered_init(&r);
        tga_status st = tga_template_render(t, &c, P_TEST, 1 << 20, &r);
        CHECK(st == TGA_OK && r.fits && !r.truncated, "%s/%s: render: %s", tc->name, templates[which].name,
              tga_error_message());
        tga_error_clear();
        if (st == TGA_OK) check_against_reference(tc, which, &r, l, cap);
        CHECK(strcmp(tga_template_name(t), templates[which].name) == 0, "name");
        tga_rendered_free(&r);
        tga_template_free(t);
        free(l);
        free(cap);
    }
}

/* ---- multi-image, zero-image, marker handling ----------------------------------------------- */

static void test_multi_image(const tok_case *tc) {
    tga_template *t = load_template("llama_2", tc->tok);
    if (!t) return;
    const char *q1 = "<image> and <image>: which is bigger?", *q2 = "<image> and this one?";
    tga_turn turns[4] = {{TGA_ROLE_USER, q1, strlen(q1)},
                         {TGA_ROLE_ASSISTANT, A1, strlen(A1)},
                         {TGA_ROLE_USER, q2, strlen(q2)},
                         {TGA_ROLE_ASSISTANT, A2, strlen(A2)}};
    tga_conversation c = {turns, 4, 3, R_TEXT, strlen(R_TEXT), C_TEXT, strlen(C_TEXT)};
    seglist *l = calloc(1, sizeof *l);
    char buf[1200];
    special(l, SP_BOS, false);
    snprintf(buf, sizeof buf, "[INST] <<SYS>>\n%s\n<</SYS>>\n\nRetrieved Text:", SYS);
    text(l, buf);
    snprintf(buf, sizeof buf, " %s", R_TEXT);
    marked(l, buf, MARK_RETRIEVED);
    text(l, ". ");
    image(l); /* two markers stay where they are */
    text(l, " and");
    text(l, " ");
    image(l);
    text(l, ": which is bigger?");
    text(l, " [/INST]");
    snprintf(buf, sizeof buf, " %s", A1);
    sup(l, buf);
    sup(l, " ");
    special(l, SP_EOS, true);
    special(l, SP_BOS, false);
    text(l, "[INST]");
    text(l, " ");
    image(l); /* one marker: moved to the front, then "\n" */
    text(l, "\nand this one?");
    text(l, " [/INST]");
    snprintf(buf, sizeof buf, " %s", A2);
    sup(l, buf);
    sup(l, " ");
    special(l, SP_EOS, true);
    expected_tokens *x = malloc(sizeof *x);
    expect_tokens(tc, l, MARK_RETRIEVED, x);
    tga_rendered r;
    tga_rendered_init(&r);
    CHECK(tga_template_render(t, &c, P_TEST, 1 << 20, &r) == TGA_OK, "multi-image: %s", tga_error_message());
    CHECK(r.n_images == 3 && x->n_images == 3, "%s: %d images rendered", tc->name, r.n_images);
    CHECK(r.n_tokens == x->n && same(r.input_ids, x->ids, x->n) && same(r.labels, x->labels, x->n),
          "%s: multi-image sample differs from its pieces", tc->name);
    for (int i = 0; i < 3 && i < r.n_images; i++)
        CHECK(r.images[i].start == x->images[i].start && r.images[i].length == P_TEST, "%s: image %d",
              tc->name, i);
    CHECK(r.retrieved.start == x->span.start && r.retrieved.length == x->span.length, "%s: R span", tc->name);
    /* markers and images disagree */
    c.n_images = 2;
    tga_error_clear();
    CHECK(tga_template_render(t, &c, P_TEST, 1 << 20, &r) == TGA_ERR_FORMAT &&
              strstr(tga_error_message(), "more <image> markers"),
          "3 markers, 2 images: '%s'", tga_error_message());
    c.n_images = 4;
    tga_error_clear();
    CHECK(tga_template_render(t, &c, P_TEST, 1 << 20, &r) == TGA_ERR_FORMAT &&
              strstr(tga_error_message(), "4 image(s)"),
          "3 markers, 4 images: '%s'", tga_error_message());
    tga_error_clear();
    tga_rendered_free(&r);
    free(x);
    free(l);
    tga_template_free(t);
}

static void test_text_only(const tok_case *tc) {
    tga_template *t = load_template("llama_2", tc->tok);
    if (!t) return;
    const char *q = "Is <image> a tag?"; /* no image: the marker is text */
    tga_turn turns[2] = {{TGA_ROLE_USER, q, strlen(q)}, {TGA_ROLE_ASSISTANT, A2, strlen(A2)}};
    tga_conversation c = {turns, 2, 0, NULL, 0, NULL, 0};
    seglist *l = calloc(1, sizeof *l);
    char buf[1200];
    special(l, SP_BOS, false);
    snprintf(buf, sizeof buf, "[INST] <<SYS>>\n%s\n<</SYS>>\n\n", SYS);
    text(l, buf);
    text(l, q);
    text(l, " [/INST]");
    snprintf(buf, sizeof buf, " %s", A2);
    sup(l, buf);
    sup(l, " ");
    special(l, SP_EOS, true);
    expected_tokens *x = malloc(sizeof *x);
    expect_tokens(tc, l, MARK_NONE, x);
    tga_rendered r;
    tga_rendered_init(&r);
    CHECK(tga_template_render(t, &c, P_TEST, 1 << 20, &r) == TGA_OK, "text-only: %s", tga_error_message());
    CHECK(r.n_images == 0 && r.retrieved.length == 0 && r.n_caption_tokens == 0 && r.caption.length == 0,
          "%s: text-only sample has images, R or a caption branch", tc->name);
    CHECK(r.n_tokens == x->n && same(r.input_ids, x->ids, x->n) && same(r.labels, x->labels, x->n),
          "%s: text-only sample differs from its pieces", tc->name);
    tga_rendered_free(&r);
    free(x);
    free(l);
    tga_template_free(t);
}

/* ---- truncation ------------------------------------------------------------------------------ */

static void test_truncation(const tok_case *tc) {
    tga_template *t = load_template("llama_2", tc->tok);
    if (!t) return;
    tga_conversation c = two_round_conversation();
    tga_rendered full, cut;
    tga_rendered_init(&full);
    tga_rendered_init(&cut);
    CHECK(tga_template_render(t, &c, P_TEST, 1 << 20, &full) == TGA_OK, "full render");
    int32_t n = full.n_tokens, image_end = full.images[0].start + P_TEST, first_label = -1;
    for (int32_t i = 0; i < n && first_label < 0; i++)
        if (full.labels[i] != TGA_IGNORE_INDEX) first_label = i;
    /* a cut in the last answer: kept, the prefix unchanged */
    CHECK(tga_template_render(t, &c, P_TEST, n - 2, &cut) == TGA_OK && cut.fits && cut.truncated,
          "cut: fits");
    int64_t kept = 0;
    for (int32_t i = 0; i < n - 2; i++)
        kept += full.labels[i] != TGA_IGNORE_INDEX;
    CHECK(cut.n_tokens == n - 2 && same(cut.input_ids, full.input_ids, n - 2) &&
              same(cut.labels, full.labels, n - 2) && cut.n_supervised == kept,
          "%s: a cut sample is not the prefix of the full one", tc->name);
    /* a cut inside the image, or before the first label: cannot fit */
    CHECK(tga_template_render(t, &c, P_TEST, image_end - 1, &cut) == TGA_OK && !cut.fits,
          "%s: cut into the image", tc->name);
    CHECK(tga_template_render(t, &c, P_TEST, full.retrieved.start + 1, &cut) == TGA_OK && !cut.fits,
          "%s: cut into R", tc->name);
    CHECK(tga_template_render(t, &c, P_TEST, first_label, &cut) == TGA_OK && !cut.fits,
          "%s: a cut before the first label", tc->name);
    CHECK(tga_template_render(t, &c, P_TEST, first_label + 1, &cut) == TGA_OK && cut.fits &&
              cut.n_supervised == 1,
          "%s: a cut after the first label keeps one", tc->name);
    /* the caption branch: a long caption cut inside C (the image branch cut too, after one label) */
    char long_caption[2000] = "";
    for (int i = 0; i < 60; i++)
        strcat(long_caption, " a cat on a sofa");
    c.caption = long_caption + 1;
    c.caption_len = strlen(long_caption + 1);
    CHECK(tga_template_render(t, &c, P_TEST, 1 << 20, &full) == TGA_OK, "long caption");
    int32_t limit = first_label + 1;
    CHECK(limit > full.caption.start && limit < full.n_caption_tokens, "test bug: the cut is not inside C");
    CHECK(tga_template_render(t, &c, P_TEST, limit, &cut) == TGA_OK && cut.fits && cut.truncated &&
              cut.n_caption_tokens == limit && cut.caption.start == full.caption.start &&
              cut.caption.length == limit - full.caption.start && same(cut.cap_ids, full.cap_ids, limit),
          "%s: caption branch cut: %d tokens, span %d+%d", tc->name, cut.n_caption_tokens, cut.caption.start,
          cut.caption.length);
    /* a caption prompt longer than max_len while the image branch fits: cannot fit */
    const char *yaml =
        "name: long_prompt\nfirst_user: \"{content}\"\nuser: \"{content}\"\n"
        "assistant_answer: \" {content}\"\ncaption: \"{bos}{bos}{bos}{bos}{bos}{bos}{bos}{bos}{caption}\"\n";
    tga_template *long_prompt = NULL;
    CHECK(tga_template_load_text("long_prompt.yaml", yaml, strlen(yaml), tc->tok, &long_prompt) == TGA_OK,
          "long_prompt: %s", tga_error_message());
    tga_turn short_turns[2] = {{TGA_ROLE_USER, "cat", 3}, {TGA_ROLE_ASSISTANT, "sofa", 4}};
    tga_conversation short_c = {short_turns, 2, 0, NULL, 0, C_TEXT, strlen(C_TEXT)};
    if (long_prompt) {
        CHECK(tga_template_render(long_prompt, &short_c, P_TEST, 8, &cut) == TGA_OK && !cut.fits &&
                  cut.n_tokens <= 8,
              "%s: a caption prompt of 8 tokens at max_len 8", tc->name);
        CHECK(tga_template_render(long_prompt, &short_c, P_TEST, 9, &cut) == TGA_OK && cut.fits &&
                  cut.caption.start == 8 && cut.caption.length == 1,
              "%s: max_len 9 keeps one caption token", tc->name);
    }
    tga_template_free(long_prompt);
    tga_rendered_free(&full);
    tga_rendered_free(&cut);
    tga_template_free(t);
}

/* ---- SentencePiece-style tokenizers --------------------------------------------------------------- */

/* A small Llama-like vocabulary: <unk> <s> </s>, the 256 byte tokens, "▁", printable ASCII, and the
 * words of the test texts merged letter by letter behind "▁". */
static char *spm_tokenizer_json(bool metaspace_first) {
    json_t *vocab = json_object(), *merges = json_array();
    int next = 0;
    const char *specials[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++)
        json_object_set_new(vocab, specials[i], json_integer(next++));
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        json_object_set_new(vocab, name, json_integer(next++));
    }
    json_object_set_new(vocab, "\xE2\x96\x81", json_integer(next++));
    for (int ch = 0x21; ch < 0x7f; ch++) {
        char name[2] = {(char)ch, 0};
        json_object_set_new(vocab, name, json_integer(next++));
    }
    char words[4096];
    snprintf(words, sizeof words,
             "%s %s %s %s %s %s %s [INST] <<SYS>> <</SYS>> [/INST] Retrieved Text: <image> Describe", SYS,
             R_TEXT, C_TEXT, Q1, A1, Q2, A2);
    char *save = NULL;
    for (char *w = strtok_r(words, " \n", &save); w; w = strtok_r(NULL, " \n", &save)) {
        char left[256] = "\xE2\x96\x81";
        for (size_t k = 0; w[k] && strlen(left) < 200; k++) {
            char merged[256], merge[520];
            snprintf(merged, sizeof merged, "%s%c", left, w[k]);
            if (!json_object_get(vocab, merged)) {
                json_object_set_new(vocab, merged, json_integer(next++));
                snprintf(merge, sizeof merge, "%s %c", left, w[k]);
                json_array_append_new(merges, json_string(merge));
            }
            snprintf(left, sizeof left, "%s", merged);
        }
    }
    json_t *model = json_pack("{s:s, s:b, s:s, s:o, s:o}", "type", "BPE", "byte_fallback", 1, "unk_token",
                              "<unk>", "vocab", vocab, "merges", merges);
    json_t *added = json_array();
    for (int i = 0; i < 3; i++)
        json_array_append_new(added,
                              json_pack("{s:i, s:s, s:b}", "id", i, "content", specials[i], "special", 1));
    json_t *root = json_pack("{s:o, s:o}", "model", model, "added_tokens", added);
    if (metaspace_first) {
        json_object_set_new(root, "pre_tokenizer",
                            json_pack("{s:s, s:s, s:s, s:b}", "type", "Metaspace", "replacement",
                                      "\xE2\x96\x81", "prepend_scheme", "first", "split", 0));
    } else {
        json_t *prepend = json_pack("{s:s, s:s}", "type", "Prepend", "prepend", "\xE2\x96\x81");
        json_t *replace = json_pack("{s:s, s:{s:s}, s:s}", "type", "Replace", "pattern", "String", " ",
                                    "content", "\xE2\x96\x81");
        json_object_set_new(root, "normalizer",
                            json_pack("{s:s, s:[o,o]}", "type", "Sequence", "normalizers", prepend, replace));
    }
    char *out = json_dumps(root, 0);
    json_decref(root);
    return out;
}

static tga_tokenizer *load_json_tokenizer(const char *file_name, char *json) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, file_name);
    FILE *f = fopen(path, "wb");
    CHECK(f && json && fputs(json, f) >= 0 && fclose(f) == 0, "cannot write %s", path);
    free(json);
    tga_tokenizer *tok = NULL;
    CHECK(tga_tokenizer_load(path, &tok) == TGA_OK, "load %s: %s", path, tga_error_message());
    tga_error_clear();
    return tok;
}

/* Each span's ids are the tokenizer's own encoding of that text: as a text of its own (which is
 * how SentencePiece spells a word after a space), or, right after BOS, as the tokenizer encodes
 * "<s>" + text in one string (Metaspace "first" puts no "▁" there). */
static void check_spm_span(const tga_tokenizer *tok, const int32_t *ids, tga_shard_span span,
                           const char *text, bool after_bos, const char *what) {
    char joined[1024];
    snprintf(joined, sizeof joined, "%s%s", after_bos ? "<s>" : "", text);
    int32_t *want = NULL;
    size_t n = 0;
    CHECK(tga_tokenizer_encode(tok, joined, strlen(joined), after_bos ? TGA_TOK_PARSE_SPECIAL : 0, &want,
                               &n) == TGA_OK,
          "encode");
    size_t skip = after_bos ? 1 : 0;
    CHECK(want && n >= skip && span.length == (int32_t)(n - skip) &&
              same(ids + span.start, want + skip, (int)(n - skip)),
          "SentencePiece %s: span of %d tokens is not the tokenizer's encoding (%zu tokens)", what,
          span.length, n - skip);
    free(want);
}

static void test_sentencepiece(bool metaspace_first) {
    tga_tokenizer *tok = load_json_tokenizer(metaspace_first ? "spm_first.json" : "spm_legacy.json",
                                             spm_tokenizer_json(metaspace_first));
    if (!tok) return;
    const char *names[4] = {"plain", "plain_retrieval", "llama_2", "mistral_instruct"};
    int32_t eos = tga_tokenizer_eos(tok), bos = tga_tokenizer_bos(tok);
    for (int i = 0; i < 4; i++) {
        tga_template *t = load_template(names[i], tok);
        if (!t) continue;
        bool single = i < 2;
        tga_conversation c = single ? single_round_conversation() : two_round_conversation();
        tga_rendered r;
        tga_rendered_init(&r);
        CHECK(tga_template_render(t, &c, P_TEST, 1 << 20, &r) == TGA_OK, "SentencePiece %s: %s", names[i],
              tga_error_message());
        if (i != 0) check_spm_span(tok, r.input_ids, r.retrieved, R_TEXT, false, "R");
        check_spm_span(tok, r.cap_ids, r.caption, C_TEXT, single, "C");
        /* every run of labels: an answer, then (conversation templates) " " and </s> */
        const char *answers[2] = {single ? C_TEXT : A1, A2};
        int run = 0;
        for (int32_t k = 0; k < r.n_tokens; k++) {
            if (r.labels[k] == TGA_IGNORE_INDEX || (k > 0 && r.labels[k - 1] != TGA_IGNORE_INDEX)) continue;
            int32_t end = k;
            while (end < r.n_tokens && r.labels[end] != TGA_IGNORE_INDEX)
                end++;
            int32_t *want = NULL;
            size_t n = 0;
            tga_tokenizer_encode(tok, answers[run % 2], strlen(answers[run % 2]), 0, &want, &n);
            bool answer_first = end - k > (int32_t)n && same(r.labels + k, want, (int)n);
            bool tail_ok = single ? r.labels[end - 1] != eos : r.labels[end - 1] == eos;
            CHECK(answer_first && tail_ok, "SentencePiece %s: supervised run %d is not the answer + its end",
                  names[i], run);
            free(want);
            run++;
        }
        CHECK(run == (single ? 1 : 2), "SentencePiece %s: %d supervised runs", names[i], run);
        /* text after BOS: a new text (dummy "▁") for the legacy normalizer, none for "first" */
        if (i >= 2) {
            int32_t after_bos = r.input_ids[1];
            CHECK(r.input_ids[0] == bos &&
                      after_bos == tga_tokenizer_find(tok, metaspace_first ? "[" : "\xE2\x96\x81[INST]"),
                  "SentencePiece %s (%s): the piece after BOS starts with token %d", names[i],
                  metaspace_first ? "Metaspace first" : "legacy", after_bos);
        }
        tga_rendered_free(&r);
        tga_template_free(t);
    }
    tga_tokenizer_free(tok);
}

/* ---- tokenizers for the main tests -------------------------------------------------------------- */

static void assets_dir(char *buf, size_t size) {
    const char *env = getenv("TGA_ASSETS");
    snprintf(buf, size, "%s/gpt2-bpe", env && *env ? env : "/work/shared/assets");
}

/* GPT-2's files as an HF tokenizer.json with <|im_start|> and <|im_end|> added (ids 50257, 50258). */
static char *gpt2_chatml_json(const char *dir) {
    char path[600];
    snprintf(path, sizeof path, "%s/encoder.json", dir);
    json_error_t err;
    json_t *vocab = json_load_file(path, 0, &err);
    snprintf(path, sizeof path, "%s/vocab.bpe", dir);
    FILE *f = fopen(path, "rb");
    CHECK(vocab && f, "cannot read GPT-2's files in %s", dir);
    if (!vocab || !f) {
        json_decref(vocab);
        if (f) fclose(f);
        return NULL;
    }
    json_t *merges = json_array();
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] && strncmp(line, "#version", 8) != 0) json_array_append_new(merges, json_string(line));
    }
    fclose(f);
    json_t *added = json_pack("[{s:i, s:s, s:b}, {s:i, s:s, s:b}, {s:i, s:s, s:b}]", "id", 50256, "content",
                              "<|endoftext|>", "special", 1, "id", 50257, "content", "<|im_start|>",
                              "special", 1, "id", 50258, "content", "<|im_end|>", "special", 1);
    json_t *root = json_pack("{s:{s:s, s:o, s:o}, s:{s:s, s:b, s:b}, s:o}", "model", "type", "BPE", "vocab",
                             vocab, "merges", merges, "pre_tokenizer", "type", "ByteLevel",
                             "add_prefix_space", 0, "use_regex", 1, "added_tokens", added);
    char *out = json_dumps(root, 0);
    json_decref(root);
    return out;
}

/* A word list holding every word of the reference pieces. */
static tga_tokenizer *word_tokenizer(void) {
    tok_case probe = {.special_text = {"<s>", "</s>", "<|im_start|>", "<|im_end|>"}};
    char path[512];
    snprintf(path, sizeof path, "%s/words.txt", tmp_dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return NULL;
    json_t *seen = json_object();
    const char *fixed[] = {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>",
                           "a",     "cat", "on",   "sofa",         "."};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        json_object_set_new(seen, fixed[i], json_true());
    for (int which = 0; which < N_TEMPLATES; which++) {
        seglist *l = calloc(1, sizeof *l), *cap = calloc(1, sizeof *cap);
        char spec[4096], *save = NULL;
        templates[which].expect(l, cap, spec, sizeof spec, &probe);
        for (int pass = 0; pass < 2; pass++) {
            const seglist *x = pass ? cap : l;
            for (int i = 0; i < x->n; i++) {
                char piece[sizeof x->segs[i].text];
                snprintf(piece, sizeof piece, "%s", x->segs[i].text);
                for (char *w = strtok_r(piece, " \n", &save); w; w = strtok_r(NULL, " \n", &save))
                    json_object_set_new(seen, w, json_true());
            }
        }
        free(l);
        free(cap);
    }
    const char *extra[] = {"and", ":",    "which",    "is",      "bigger?", "this",   "one?",
                           "Is",  "tag?", "<image>:", "<image>", "[INST]",  "[/INST]"};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
        json_object_set_new(seen, extra[i], json_true());
    const char *key;
    json_t *value;
    json_object_foreach(seen, key, value) fprintf(f, "%s\n", key);
    json_decref(seen);
    fclose(f);
    tga_tokenizer *tok = NULL;
    CHECK(tga_tokenizer_load(path, &tok) == TGA_OK, "load %s: %s", path, tga_error_message());
    tga_error_clear();
    return tok;
}

static void fill_specials(tok_case *tc, const char *bos, const char *eos) {
    tc->special_ids[SP_BOS] = tga_tokenizer_bos(tc->tok);
    tc->special_ids[SP_EOS] = tga_tokenizer_eos(tc->tok);
    tc->special_ids[SP_IM_START] = tga_tokenizer_find(tc->tok, "<|im_start|>");
    tc->special_ids[SP_IM_END] = tga_tokenizer_find(tc->tok, "<|im_end|>");
    tc->special_text[SP_BOS] = bos;
    tc->special_text[SP_EOS] = eos;
    tc->special_text[SP_IM_START] = "<|im_start|>";
    tc->special_text[SP_IM_END] = "<|im_end|>";
}

/* ---- malformed templates and conversations ------------------------------------------------------- */

static void expect_template_error(const tga_tokenizer *tok, const char *yaml, const char *needle) {
    tga_template *t = NULL;
    tga_error_clear();
    tga_status st = tga_template_load_text("bad.yaml", yaml, strlen(yaml), tok, &t);
    CHECK(st == TGA_ERR_CONFIG && !t && strstr(tga_error_message(), needle) &&
              strstr(tga_error_message(), "bad.yaml"),
          "template error: got %s '%s', expected a config error naming bad.yaml and '%s'",
          tga_status_name(st), tga_error_message(), needle);
    tga_template_free(t);
    tga_error_clear();
}

#define GOOD_REST "assistant_answer: \"{content}{eos}\"\ncaption: \"{caption}\"\n"

static void test_malformed(const tga_tokenizer *gpt2) {
    expect_template_error(gpt2, "name: x\nfirst_user: \"{bos}{foo}\"\nuser: \"{content}\"\n" GOOD_REST,
                          "unknown placeholder {foo}");
    expect_template_error(gpt2,
                          "name: x\nfirst_user: \"{content}{content}\"\nuser: \"{content}\"\n" GOOD_REST,
                          "a second time");
    expect_template_error(gpt2, "name: x\nfirst_user: \"{content}{images}\"\nuser: \"{content}\"\n" GOOD_REST,
                          "a second time");
    expect_template_error(gpt2, "name: x\nfirst_user: \"{bos}\"\nuser: \"{content}\"\n" GOOD_REST,
                          "must hold {content} or {images}");
    expect_template_error(gpt2,
                          "name: x\nfirst_user: \"{content}\"\nuser: \"{content}\"\ncaption: \"{caption}\"\n",
                          "key 'assistant_answer' is missing");
    expect_template_error(gpt2, "name: x\nfirst_user: \"{content}\"\n" GOOD_REST, "key 'user' is missing");
    expect_template_error(gpt2,
                          "name: x\nfirst_user: \"{retrieval}{content}\"\nuser: \"{content}\"\n" GOOD_REST,
                          "key 'retrieval' is missing");
    expect_template_error(
        gpt2,
        "name: x\nretrieval: \"{retrieved}\"\nfirst_user: \"{content}\"\nuser: \"{content}\"\n" GOOD_REST,
        "first_user has no {retrieval}");
    expect_template_error(gpt2, "name: x\nfirst_user: \"{content}\"\nuser: \"{caption}\"\n" GOOD_REST,
                          "{caption} is not allowed here");
    expect_template_error(gpt2, "name: x\nfirst_user: \"{content\"\nuser: \"{content}\"\n" GOOD_REST,
                          "without a closing");
    expect_template_error(gpt2,
                          "name: x\nfirst_user: \"{content}\"\nuser: \"{content}\"\nsizes: 3\n" GOOD_REST,
                          "bad.yaml:4: unknown key 'sizes'");
    expect_template_error(gpt2, "name: x\nname: y\nfirst_user: \"{content}\"\n", "appears twice");
    expect_template_error(gpt2, "name: [x\n", "malformed YAML");
    expect_template_error(gpt2, "- a\n- b\n", "expected a mapping");
    expect_template_error(gpt2, "first_user: \"{content}\"\nuser: \"{content}\"\n" GOOD_REST,
                          "key 'name' is missing");
    expect_template_error(gpt2, "name: x\nsingle_turn: maybe\nfirst_user: \"{content}\"\n" GOOD_REST,
                          "expected true or false");
    /* a special token the vocabulary lacks: named with the file and the key */
    char path[1024];
    snprintf(path, sizeof path, "%s/configs/templates/chatml.yaml", TGA_SOURCE_DIR);
    tga_template *t = NULL;
    tga_status st = tga_template_load(path, gpt2, &t);
    CHECK(st == TGA_ERR_CONFIG && strstr(tga_error_message(), "chatml.yaml") &&
              strstr(tga_error_message(), "<|im_start|>") && strstr(tga_error_message(), "first_user"),
          "chatml with plain GPT-2: %s '%s'", tga_status_name(st), tga_error_message());
    tga_template_free(t);
    tga_error_clear();
    /* the lookup by name: $TGA_TEMPLATE_DIR, and a clear error for an unknown name */
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/configs/templates", TGA_SOURCE_DIR);
    setenv("TGA_TEMPLATE_DIR", dir, 1);
    CHECK(tga_template_load("llama_2", gpt2, &t) == TGA_OK && strcmp(tga_template_name(t), "llama_2") == 0,
          "load by name: %s", tga_error_message());
    tga_template_free(t);
    t = NULL;
    st = tga_template_load("no_such_template", gpt2, &t);
    CHECK(st == TGA_ERR_CONFIG && strstr(tga_error_message(), "no_such_template") && !t, "unknown name: '%s'",
          tga_error_message());
    tga_error_clear();
    unsetenv("TGA_TEMPLATE_DIR");
    for (int i = 0; i < N_TEMPLATES; i++)
        CHECK(strcmp(tga_template_builtin_name((tga_chat_template)i), templates[i].name) == 0,
              "data.template %d is not %s", i, templates[i].name);
}

static void expect_render_error(const tga_template *t, const tga_conversation *c, const char *needle) {
    tga_rendered r;
    tga_rendered_init(&r);
    tga_error_clear();
    tga_status st = tga_template_render(t, c, P_TEST, 1 << 20, &r);
    CHECK(st == TGA_ERR_FORMAT && strstr(tga_error_message(), needle), "render: %s '%s', expected '%s'",
          tga_status_name(st), tga_error_message(), needle);
    tga_error_clear();
    tga_rendered_free(&r);
}

static void test_bad_conversations(const tga_tokenizer *gpt2) {
    tga_template *llama = load_template("llama_2", gpt2), *plain = load_template("plain", gpt2);
    if (!llama || !plain) return;
    tga_conversation c = two_round_conversation();
    expect_render_error(plain, &c, "one question and one answer");
    tga_turn swapped[2] = {{TGA_ROLE_ASSISTANT, A1, strlen(A1)}, {TGA_ROLE_USER, Q2, strlen(Q2)}};
    tga_conversation bad = {swapped, 2, 0, NULL, 0, NULL, 0};
    expect_render_error(llama, &bad, "alternating");
    bad.n_turns = 1;
    expect_render_error(llama, &bad, "in pairs");
    const char *empty = "";
    tga_turn no_answer[2] = {{TGA_ROLE_USER, Q2, strlen(Q2)}, {TGA_ROLE_ASSISTANT, empty, 0}};
    tga_template *bare = NULL;
    const char *yaml =
        "name: bare\nfirst_user: \"{content}\"\nuser: \"{content}\"\nassistant_answer: \"{content}\"\n"
        "caption: \"{caption}\"\n";
    CHECK(tga_template_load_text("bare.yaml", yaml, strlen(yaml), gpt2, &bare) == TGA_OK, "bare: %s",
          tga_error_message());
    tga_conversation nothing = {no_answer, 2, 0, NULL, 0, NULL, 0};
    if (bare) expect_render_error(bare, &nothing, "no supervised token");
    tga_template_free(bare);
    tga_template_free(llama);
    tga_template_free(plain);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    char dir[512];
    assets_dir(dir, sizeof dir);
    tok_case gpt2 = {.name = "gpt2"}, gpt2_chatml = {.name = "gpt2+chatml"},
             words = {.name = "word-level", .word_level = true};
    CHECK(tga_tokenizer_load(dir, &gpt2.tok) == TGA_OK, "GPT-2 tokenizer at %s: %s (set TGA_ASSETS)", dir,
          tga_error_message());
    tga_error_clear();
    gpt2_chatml.tok = load_json_tokenizer("gpt2_chatml.json", gpt2_chatml_json(dir));
    words.tok = word_tokenizer();
    tok_case *cases[3] = {&gpt2, &gpt2_chatml, &words};
    fill_specials(&gpt2, "<|endoftext|>", "<|endoftext|>");
    fill_specials(&gpt2_chatml, "<|endoftext|>", "<|endoftext|>");
    fill_specials(&words, "<s>", "</s>");
    for (int i = 0; i < 3; i++) {
        if (!cases[i]->tok) continue;
        test_shipped_templates(cases[i]);
        test_multi_image(cases[i]);
        test_text_only(cases[i]);
        test_truncation(cases[i]);
    }
    if (gpt2.tok) {
        test_malformed(gpt2.tok);
        test_bad_conversations(gpt2.tok);
    }
    test_sentencepiece(false);
    test_sentencepiece(true);
    for (int i = 0; i < 3; i++)
        tga_tokenizer_free(cases[i]->tok);
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return tu_finish("test_template");
}
