/* Chat templates: loading (libyaml), binding to a tokenizer, and rendering with exact spans. See
 * template.h for the placeholders and the tokenization rules, trainer/DATA.md for the file format. */
#define _POSIX_C_SOURCE 200809L /* strdup */

#include "trainer/template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "runtime/fileio.h"
#include "trainer/model.h"

/* Hard limit on one rendered branch, far above any max_len, so that every count fits int32. */
#define MAX_RENDERED_TOKENS (1 << 30)

typedef enum {
    PIECE_TEXT,      /* literal template text */
    PIECE_TOKEN,     /* a special token by id */
    PIECE_RETRIEVAL, /* the retrieval block, when the conversation has R */
    PIECE_RETRIEVED, /* R */
    PIECE_CONTENT,   /* the turn's text (user: with images; assistant: the answer) */
    PIECE_IMAGES,    /* the user turn's images only */
    PIECE_CAPTION,   /* C */
} piece_kind;

typedef struct {
    piece_kind kind;
    char *text; /* PIECE_TEXT */
    size_t len;
    int32_t token; /* PIECE_TOKEN */
} piece;

typedef enum {
    PART_RETRIEVAL,
    PART_FIRST_USER,
    PART_USER,
    PART_ASSISTANT_PREFIX,
    PART_ASSISTANT_ANSWER,
    PART_ASSISTANT_SUFFIX,
    PART_CAPTION,
    N_PARTS
} part_id;

typedef struct {
    piece *pieces;
    size_t n;
    bool present;
} part;

/* Which data placeholders a key may hold: `once` must appear exactly once (any one of them when
 * several bits are set), `optional` at most once. */
#define BIT(kind) (1u << (kind))
static const struct {
    const char *key;
    bool required;
    unsigned once, optional;
} part_keys[N_PARTS] = {
    [PART_RETRIEVAL] = {"retrieval", false, BIT(PIECE_RETRIEVED), 0},
    [PART_FIRST_USER] = {"first_user", true, BIT(PIECE_CONTENT) | BIT(PIECE_IMAGES), BIT(PIECE_RETRIEVAL)},
    [PART_USER] = {"user", false, BIT(PIECE_CONTENT) | BIT(PIECE_IMAGES), 0},
    [PART_ASSISTANT_PREFIX] = {"assistant_prefix", false, 0, 0},
    [PART_ASSISTANT_ANSWER] = {"assistant_answer", true, BIT(PIECE_CONTENT), 0},
    [PART_ASSISTANT_SUFFIX] = {"assistant_suffix", false, 0, 0},
    [PART_CAPTION] = {"caption", true, BIT(PIECE_CAPTION), 0},
};

struct tga_template {
    char *name, *source, *system;
    bool single_turn;
    part parts[N_PARTS];
    const tga_tokenizer *tok;
    bool dummy_prefix;        /* encode() adds SentencePiece's "▁" in front of a text */
    bool fresh_after_special; /* the tokenizer encodes text after a special token as a new text */
    int32_t anchor_ids[8];    /* encode("\n"), stripped from continuation encodings */
    size_t n_anchor;
};

static const char *const builtin_names[] = {"plain", "plain_retrieval", "llama_2", "mistral_instruct",
                                            "chatml"};

const char *tga_template_builtin_name(tga_chat_template which) {
    size_t i = (size_t)which;
    return i < sizeof builtin_names / sizeof builtin_names[0] ? builtin_names[i] : NULL;
}

const char *tga_template_name(const tga_template *t) { return t->name; }
const char *tga_template_source(const tga_template *t) { return t->source; }
bool tga_template_shows_retrieved(const tga_template *t) { return t->parts[PART_RETRIEVAL].present; }

/* ---- messages ------------------------------------------------------------------------------- */

/* The first bytes of a text for a one-line message, control bytes escaped. */
static void snippet(const char *text, size_t len, char *buf, size_t size) {
    size_t o = 0, i = 0;
    for (; i < len && o + 12 < size; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch == '\n')
            o += (size_t)snprintf(buf + o, size - o, "\\n");
        else if (ch < 0x20 || ch == 0x7f)
            o += (size_t)snprintf(buf + o, size - o, "\\x%02x", ch);
        else
            buf[o++] = (char)ch;
    }
    snprintf(buf + o, size - o, "%s", i < len ? "..." : "");
}

/* ---- parsing the format strings --------------------------------------------------------------- */

typedef struct {
    tga_template *t;
    const char *key;
    int line;
} part_ctx;

static tga_status add_piece(part *p, piece pc) {
    piece *grown = realloc(p->pieces, (p->n + 1) * sizeof *grown);
    if (!grown) {
        free(pc.text);
        return tga_error(TGA_ERR_NOMEM, "out of memory loading a template");
    }
    p->pieces = grown;
    p->pieces[p->n++] = pc;
    return TGA_OK;
}

/* Literal text joins the previous literal piece, so each run of text between placeholders is one
 * piece (and is encoded as one). */
static tga_status add_text(part *p, const char *text, size_t len) {
    if (len == 0) return TGA_OK;
    piece *last = p->n ? &p->pieces[p->n - 1] : NULL;
    if (last && last->kind == PIECE_TEXT) {
        char *grown = realloc(last->text, last->len + len + 1);
        if (!grown) return tga_error(TGA_ERR_NOMEM, "out of memory loading a template");
        memcpy(grown + last->len, text, len);
        last->len += len;
        grown[last->len] = '\0';
        last->text = grown;
        return TGA_OK;
    }
    char *copy = malloc(len + 1);
    if (!copy) return tga_error(TGA_ERR_NOMEM, "out of memory loading a template");
    memcpy(copy, text, len);
    copy[len] = '\0';
    return add_piece(p, (piece){.kind = PIECE_TEXT, .text = copy, .len = len});
}

static tga_status special_token(const part_ctx *c, const char *name, int32_t id, int32_t *out) {
    if (id < 0)
        return tga_error(TGA_ERR_CONFIG, "%s:%d: key '%s': the tokenizer has no token %s (template '%s')",
                         c->t->source, c->line, c->key, name, c->t->name ? c->t->name : "?");
    *out = id;
    return TGA_OK;
}

static tga_status placeholder_kind(const part_ctx *c, const char *name, piece *pc) {
    static const struct {
        const char *name;
        piece_kind kind;
    } data[] = {{"retrieval", PIECE_RETRIEVAL},
                {"retrieved", PIECE_RETRIEVED},
                {"content", PIECE_CONTENT},
                {"images", PIECE_IMAGES},
                {"caption", PIECE_CAPTION}};
    const tga_tokenizer *tok = c->t->tok;
    pc->kind = PIECE_TOKEN;
    if (strcmp(name, "bos") == 0) return special_token(c, "{bos} (BOS)", tga_tokenizer_bos(tok), &pc->token);
    if (strcmp(name, "eos") == 0) return special_token(c, "{eos} (EOS)", tga_tokenizer_eos(tok), &pc->token);
    if (strncmp(name, "token:", 6) == 0) {
        char quoted[160];
        snprintf(quoted, sizeof quoted, "'%s'", name + 6);
        return special_token(c, quoted, tga_tokenizer_find(tok, name + 6), &pc->token);
    }
    for (size_t i = 0; i < sizeof data / sizeof data[0]; i++)
        if (strcmp(name, data[i].name) == 0) {
            pc->kind = data[i].kind;
            return TGA_OK;
        }
    char shown[160];
    snippet(name, strlen(name), shown, sizeof shown);
    return tga_error(
        TGA_ERR_CONFIG,
        "%s:%d: key '%s': unknown placeholder {%s} (expected {bos}, {eos}, {token:SPELLING}, "
        "{system}, {retrieval}, {retrieved}, {content}, {images} or {caption}; {{ and }} for braces)",
        c->t->source, c->line, c->key, shown);
}

static tga_status add_placeholder(const part_ctx *c, part *p, const char *name, unsigned *seen) {
    if (strcmp(name, "system") == 0) return add_text(p, c->t->system, strlen(c->t->system));
    piece pc = {0};
    TGA_TRY(placeholder_kind(c, name, &pc));
    if (pc.kind != PIECE_TOKEN) {
        part_id id = (part_id)(p - c->t->parts);
        unsigned once = part_keys[id].once, optional = part_keys[id].optional, bit = BIT(pc.kind);
        bool repeated = (bit & once) ? (*seen & once) != 0 : (*seen & bit) != 0;
        if (!((once | optional) & bit) || repeated)
            return tga_error(TGA_ERR_CONFIG, "%s:%d: key '%s': {%s} is not allowed here%s", c->t->source,
                             c->line, c->key, name, repeated ? " a second time" : "");
        *seen |= bit;
    }
    return add_piece(p, pc);
}

static tga_status parse_format(const part_ctx *c, part *p, const char *text) {
    unsigned seen = 0;
    for (const char *s = text; *s;) {
        if ((s[0] == '{' && s[1] == '{') || (s[0] == '}' && s[1] == '}')) {
            TGA_TRY(add_text(p, s, 1));
            s += 2;
        } else if (*s == '{') {
            const char *end = strchr(s, '}');
            if (!end || end - s - 1 >= 128)
                return tga_error(TGA_ERR_CONFIG,
                                 "%s:%d: key '%s': '{' without a closing '}' (write {{ for a brace)",
                                 c->t->source, c->line, c->key);
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)(end - s - 1), s + 1);
            TGA_TRY(add_placeholder(c, p, name, &seen));
            s = end + 1;
        } else if (*s == '}') {
            return tga_error(TGA_ERR_CONFIG,
                             "%s:%d: key '%s': '}' without an opening '{' (write }} for a brace)",
                             c->t->source, c->line, c->key);
        } else {
            size_t n = strcspn(s, "{}");
            TGA_TRY(add_text(p, s, n));
            s += n;
        }
    }
    part_id id = (part_id)(p - c->t->parts);
    if (part_keys[id].once && !(seen & part_keys[id].once))
        return tga_error(TGA_ERR_CONFIG, "%s:%d: key '%s' must hold %s", c->t->source, c->line, c->key,
                         id == PART_RETRIEVAL          ? "{retrieved}"
                         : id == PART_CAPTION          ? "{caption}"
                         : id == PART_ASSISTANT_ANSWER ? "{content}"
                                                       : "{content} or {images}");
    p->present = true;
    return TGA_OK;
}

/* ---- the YAML file ---------------------------------------------------------------------------- */

typedef struct {
    const char *key;
    const char *value;
    int line;
} yaml_entry;

static tga_status scalar_of(const char *source, yaml_node_t *node, const char *what, const char **out) {
    if (!node || node->type != YAML_SCALAR_NODE)
        return tga_error(TGA_ERR_CONFIG, "%s:%d: %s must be a string", source,
                         node ? (int)node->start_mark.line + 1 : 0, what);
    if (strlen((const char *)node->data.scalar.value) != node->data.scalar.length)
        return tga_error(TGA_ERR_CONFIG, "%s:%d: %s holds a NUL byte", source, (int)node->start_mark.line + 1,
                         what);
    *out = (const char *)node->data.scalar.value;
    return TGA_OK;
}

static tga_status set_string(const char *source, const yaml_entry *e, char **field) {
    if (*field) return tga_error(TGA_ERR_CONFIG, "%s:%d: key '%s' appears twice", source, e->line, e->key);
    *field = strdup(e->value);
    return *field ? TGA_OK : tga_error(TGA_ERR_NOMEM, "out of memory loading a template");
}

/* The keys of a template, in a fixed order of interpretation: name and system first, since the
 * format strings refer to them. */
typedef struct {
    char *name, *description, *system, *single_turn, *format[N_PARTS];
    int line[N_PARTS];
} template_text;

static void template_text_free(template_text *x) {
    free(x->name);
    free(x->description);
    free(x->system);
    free(x->single_turn);
    for (int i = 0; i < N_PARTS; i++)
        free(x->format[i]);
}

static tga_status collect_entry(const char *source, const yaml_entry *e, template_text *x) {
    if (strcmp(e->key, "name") == 0) return set_string(source, e, &x->name);
    if (strcmp(e->key, "description") == 0) return set_string(source, e, &x->description);
    if (strcmp(e->key, "system") == 0) return set_string(source, e, &x->system);
    if (strcmp(e->key, "single_turn") == 0) return set_string(source, e, &x->single_turn);
    for (int i = 0; i < N_PARTS; i++)
        if (strcmp(e->key, part_keys[i].key) == 0) {
            x->line[i] = e->line;
            return set_string(source, e, &x->format[i]);
        }
    char shown[96];
    snippet(e->key, strlen(e->key), shown, sizeof shown);
    return tga_error(TGA_ERR_CONFIG,
                     "%s:%d: unknown key '%s' (expected name, description, system, single_turn, retrieval, "
                     "first_user, user, assistant_prefix, assistant_answer, assistant_suffix, caption)",
                     source, e->line, shown);
}

static tga_status collect_document(const char *source, yaml_document_t *doc, template_text *x) {
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root || root->type != YAML_MAPPING_NODE)
        return tga_error(TGA_ERR_CONFIG, "%s: expected a mapping of template keys", source);
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start; pair < root->data.mapping.pairs.top;
         pair++) {
        yaml_entry e = {0};
        TGA_TRY(scalar_of(source, yaml_document_get_node(doc, pair->key), "a key", &e.key));
        yaml_node_t *value = yaml_document_get_node(doc, pair->value);
        e.line = value ? (int)value->start_mark.line + 1 : 0;
        char what[96];
        snprintf(what, sizeof what, "key '%.60s'", e.key);
        TGA_TRY(scalar_of(source, value, what, &e.value));
        TGA_TRY(collect_entry(source, &e, x));
    }
    return TGA_OK;
}

static tga_status read_yaml(const char *source, const char *yaml, size_t len, template_text *x) {
    if (len > TGA_TEMPLATE_FILE_MAX)
        return tga_error(TGA_ERR_CONFIG, "%s: %zu bytes is too large for a template (at most %u)", source,
                         len, TGA_TEMPLATE_FILE_MAX);
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return tga_error(TGA_ERR_NOMEM, "out of memory loading %s", source);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    yaml_document_t doc;
    tga_status st = TGA_OK;
    if (!yaml_parser_load(&parser, &doc)) {
        st = tga_error(TGA_ERR_CONFIG, "%s:%d: malformed YAML: %s", source, (int)parser.problem_mark.line + 1,
                       parser.problem ? parser.problem : "unknown problem");
    } else {
        st = collect_document(source, &doc, x);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    return st;
}

/* ---- binding to the tokenizer ------------------------------------------------------------------ */

static bool same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

/* How the tokenizer treats the start of a text. Probes that fail (a word list without "." and
 * without unk) mean the tokenizer has no such behaviour. */
static void probe_tokenizer(tga_template *t) {
    int32_t *anchor = NULL, *dot = NULL, *joined = NULL;
    size_t n_anchor = 0, n_dot = 0, n_joined = 0;
    if (tga_tokenizer_encode(t->tok, "\n", 1, 0, &anchor, &n_anchor) == TGA_OK &&
        tga_tokenizer_encode(t->tok, ".", 1, 0, &dot, &n_dot) == TGA_OK &&
        tga_tokenizer_encode(t->tok, "\n.", 2, 0, &joined, &n_joined) == TGA_OK &&
        n_anchor <= sizeof t->anchor_ids / sizeof t->anchor_ids[0] && n_joined >= n_anchor &&
        same_ids(joined, n_anchor, anchor, n_anchor)) {
        t->dummy_prefix = !same_ids(joined + n_anchor, n_joined - n_anchor, dot, n_dot);
        memcpy(t->anchor_ids, anchor, n_anchor * sizeof *anchor);
        t->n_anchor = n_anchor;
    }
    free(anchor);
    free(joined);
    joined = NULL;
    tga_error_clear();
    /* after a special token: does the text get the dummy prefix again (HF's legacy SentencePiece
     * normalizer) or not (Metaspace with prepend_scheme "first")? */
    int32_t special = tga_tokenizer_bos(t->tok) >= 0 ? tga_tokenizer_bos(t->tok) : tga_tokenizer_eos(t->tok);
    char *spelling = NULL;
    size_t spelling_len = 0;
    t->fresh_after_special = true;
    if (t->dummy_prefix && special >= 0 &&
        tga_tokenizer_decode(t->tok, &special, 1, &spelling, &spelling_len) == TGA_OK) {
        char probe[256];
        int n = snprintf(probe, sizeof probe, "%s.", spelling);
        if (n > 0 && (size_t)n < sizeof probe &&
            tga_tokenizer_encode(t->tok, probe, (size_t)n, TGA_TOK_PARSE_SPECIAL, &joined, &n_joined) ==
                TGA_OK &&
            n_joined >= 1 && joined[0] == special)
            t->fresh_after_special = same_ids(joined + 1, n_joined - 1, dot, n_dot);
        free(joined);
    }
    free(spelling);
    free(dot);
    tga_error_clear();
}

static tga_status build_template(const char *source, template_text *x, tga_template *t) {
    if (!x->name) return tga_error(TGA_ERR_CONFIG, "%s: key 'name' is missing", source);
    t->name = x->name;
    x->name = NULL;
    t->system = x->system ? x->system : strdup("");
    x->system = NULL;
    if (!t->system) return tga_error(TGA_ERR_NOMEM, "out of memory loading %s", source);
    if (x->single_turn) {
        if (strcmp(x->single_turn, "true") != 0 && strcmp(x->single_turn, "false") != 0)
            return tga_error(TGA_ERR_CONFIG, "%s: key 'single_turn': expected true or false, got '%s'",
                             source, x->single_turn);
        t->single_turn = strcmp(x->single_turn, "true") == 0;
    }
    for (int i = 0; i < N_PARTS; i++) {
        bool needed = part_keys[i].required || (i == PART_USER && !t->single_turn);
        if (!x->format[i]) {
            if (needed) return tga_error(TGA_ERR_CONFIG, "%s: key '%s' is missing", source, part_keys[i].key);
            continue;
        }
        part_ctx c = {t, part_keys[i].key, x->line[i]};
        TGA_TRY(parse_format(&c, &t->parts[i], x->format[i]));
    }
    bool retrieval_used = false;
    for (size_t i = 0; i < t->parts[PART_FIRST_USER].n; i++)
        retrieval_used |= t->parts[PART_FIRST_USER].pieces[i].kind == PIECE_RETRIEVAL;
    if (retrieval_used != t->parts[PART_RETRIEVAL].present)
        return tga_error(TGA_ERR_CONFIG, "%s: %s", source,
                         retrieval_used ? "first_user holds {retrieval} but key 'retrieval' is missing"
                                        : "key 'retrieval' is given but first_user has no {retrieval}");
    probe_tokenizer(t);
    return TGA_OK;
}

tga_status tga_template_load_text(const char *source, const char *yaml, size_t len, const tga_tokenizer *tok,
                                  tga_template **out) {
    *out = NULL;
    if (!source || !yaml || !tok) return tga_error(TGA_ERR_INTERNAL, "tga_template_load_text: NULL argument");
    tga_template *t = calloc(1, sizeof *t);
    if (!t) return tga_error(TGA_ERR_NOMEM, "out of memory loading %s", source);
    t->tok = tok;
    t->source = strdup(source);
    template_text x = {0};
    tga_status st = t->source ? read_yaml(source, yaml, len, &x) : tga_error(TGA_ERR_NOMEM, "out of memory");
    if (st == TGA_OK) st = build_template(source, &x, t);
    template_text_free(&x);
    if (st != TGA_OK) {
        tga_template_free(t);
        return st;
    }
    *out = t;
    return TGA_OK;
}

void tga_template_free(tga_template *t) {
    if (!t) return;
    for (int i = 0; i < N_PARTS; i++) {
        for (size_t j = 0; j < t->parts[i].n; j++)
            free(t->parts[i].pieces[j].text);
        free(t->parts[i].pieces);
    }
    free(t->name);
    free(t->source);
    free(t->system);
    free(t);
}

/* ---- finding the file -------------------------------------------------------------------------- */

static bool file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

static bool is_plain_name(const char *name) {
    if (!*name || strlen(name) > 64) return false;
    for (const char *s = name; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              *s == '-'))
            return false;
    return true;
}

/* $TGA_TEMPLATE_DIR, else the source tree's configs/templates (runtime/fileio.h). */
static bool find_builtin(const char *name, char *path, size_t size) {
    const char *env = getenv("TGA_TEMPLATE_DIR");
    char source[4096];
    int n;
    if (env && *env)
        n = snprintf(path, size, "%s/%s.yaml", env, name);
    else if (tga_find_source_tree(source, sizeof source))
        n = snprintf(path, size, "%s/configs/templates/%s.yaml", source, name);
    else
        return false;
    return n >= 0 && (size_t)n < size && file_exists(path);
}

static tga_status read_template_file(const char *path, char **text, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return tga_error(TGA_ERR_CONFIG, "cannot open template %s", path);
    char *buf = malloc(TGA_TEMPLATE_FILE_MAX + 2);
    size_t n = buf ? fread(buf, 1, TGA_TEMPLATE_FILE_MAX + 1, f) : 0;
    bool failed = ferror(f);
    fclose(f);
    if (!buf) return tga_error(TGA_ERR_NOMEM, "out of memory reading %s", path);
    if (failed) {
        free(buf);
        return tga_error(TGA_ERR_CONFIG, "cannot read template %s", path);
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return TGA_OK;
}

tga_status tga_template_load(const char *name, const tga_tokenizer *tok, tga_template **out) {
    *out = NULL;
    if (!name || !tok) return tga_error(TGA_ERR_INTERNAL, "tga_template_load: NULL argument");
    char path[4096];
    size_t name_len = strlen(name);
    if (strchr(name, '/') || (name_len > 5 && strcmp(name + name_len - 5, ".yaml") == 0)) {
        snprintf(path, sizeof path, "%s", name);
    } else if (!is_plain_name(name) || !find_builtin(name, path, sizeof path)) {
        return tga_error(
            TGA_ERR_CONFIG,
            "template '%.64s' not found (looked for %.64s.yaml in %s); set TGA_TEMPLATE_DIR to the "
            "folder of the templates or pass the path of a YAML file",
            name, name,
            getenv("TGA_TEMPLATE_DIR") && *getenv("TGA_TEMPLATE_DIR")
                ? "$TGA_TEMPLATE_DIR"
                : "configs/templates beside the tga executable and in its parent folders");
    }
    char *text = NULL;
    size_t len = 0;
    TGA_TRY(read_template_file(path, &text, &len));
    tga_status st = tga_template_load_text(path, text, len, tok, out);
    free(text);
    return st;
}

/* ---- rendering --------------------------------------------------------------------------------- */

void tga_rendered_init(tga_rendered *r) { memset(r, 0, sizeof *r); }

void tga_rendered_free(tga_rendered *r) {
    free(r->input_ids);
    free(r->labels);
    free(r->images);
    free(r->cap_ids);
    memset(r, 0, sizeof *r);
}

/* Pieces: template text between record texts, special tokens and images is gathered into one piece
 * (`pending`, which may span several template keys, but never a change of supervision); each record
 * text (R, C, an answer, a user turn's text between images) is a piece of its own. Spaces that end
 * a piece are held back and start the next one, because both BPE families attach a word's leading
 * space to the word ("Text: R" -> "Text", ":", " R"); that keeps a span's first token inside the
 * span. Before a special token, an image or the end they stay where they were written. */
typedef struct {
    const tga_template *t;
    const tga_conversation *c;
    tga_rendered *out;
    int32_t patches; /* P */
    bool caption_branch;
    bool supervised;
    bool fresh; /* the next piece starts a text of its own */
    char *pending;
    size_t pending_len, pending_cap;
    bool pending_supervised;
    size_t turn;
    size_t images_done;
} emitter;

static tga_status grow(void **array, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return TGA_OK;
    size_t bigger = *cap ? *cap : 256;
    while (bigger < need)
        bigger *= 2;
    void *grown = realloc(*array, bigger * elem);
    if (!grown) return tga_error(TGA_ERR_NOMEM, "out of memory rendering a sample (%zu items)", need);
    *array = grown;
    *cap = bigger;
    return TGA_OK;
}

/* Room for n more ids in the branch being rendered. input_ids and labels grow together (the same
 * capacity, ids_cap, computed the same way for both). */
static tga_status reserve(emitter *e, size_t n, size_t *have) {
    tga_rendered *r = e->out;
    *have = (size_t)(e->caption_branch ? r->n_caption_tokens : r->n_tokens);
    if (*have + n > MAX_RENDERED_TOKENS)
        return tga_error(TGA_ERR_FORMAT, "the sample renders to more than %d tokens", MAX_RENDERED_TOKENS);
    if (e->caption_branch) return grow((void **)&r->cap_ids, &r->cap_ids_cap, *have + n, sizeof *r->cap_ids);
    size_t ids_cap = r->ids_cap;
    TGA_TRY(grow((void **)&r->input_ids, &ids_cap, *have + n, sizeof *r->input_ids));
    return grow((void **)&r->labels, &r->ids_cap, *have + n, sizeof *r->labels);
}

static tga_status append(emitter *e, const int32_t *ids, size_t n, bool supervised) {
    tga_rendered *r = e->out;
    size_t have;
    TGA_TRY(reserve(e, n, &have));
    if (e->caption_branch) {
        memcpy(r->cap_ids + have, ids, n * sizeof *ids);
        r->n_caption_tokens = (int32_t)(have + n);
        return TGA_OK;
    }
    memcpy(r->input_ids + have, ids, n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        r->labels[have + i] = supervised ? ids[i] : TGA_IGNORE_INDEX;
    r->n_supervised += supervised ? (int64_t)n : 0;
    r->n_tokens = (int32_t)(have + n);
    return TGA_OK;
}

/* Encode prefix + text as one piece: as a text of its own, or as the continuation of a text, where
 * the tokenizer's dummy prefix is spent on a newline anchor that is stripped again. */
static tga_status encode_piece(const emitter *e, const char *prefix, size_t prefix_len, const char *text,
                               size_t len, int32_t **ids, size_t *n) {
    const tga_template *t = e->t;
    bool anchored = !e->fresh && t->dummy_prefix;
    if (!anchored && prefix_len == 0) return tga_tokenizer_encode(t->tok, text, len, 0, ids, n);
    size_t total = (size_t)anchored + prefix_len + len;
    char *buf = malloc(total + 1);
    if (!buf) return tga_error(TGA_ERR_NOMEM, "out of memory rendering a sample");
    if (anchored) buf[0] = '\n';
    if (prefix_len) memcpy(buf + anchored, prefix, prefix_len);
    if (len) memcpy(buf + anchored + prefix_len, text, len);
    tga_status st = tga_tokenizer_encode(t->tok, buf, total, 0, ids, n);
    free(buf);
    if (st != TGA_OK || !anchored) return st;
    if (*n < t->n_anchor || !same_ids(*ids, t->n_anchor, t->anchor_ids, t->n_anchor)) {
        char text_snippet[64];
        snippet(len ? text : prefix, len ? len : prefix_len, text_snippet, sizeof text_snippet);
        free(*ids);
        *ids = NULL;
        return tga_error(TGA_ERR_FORMAT,
                         "the tokenizer merges a newline with the text '%s', so that piece cannot be encoded "
                         "on its own (template %s)",
                         text_snippet, t->name);
    }
    *n -= t->n_anchor;
    memmove(*ids, *ids + t->n_anchor, *n * sizeof **ids);
    return TGA_OK;
}

static tga_status emit_piece(emitter *e, const char *prefix, size_t prefix_len, const char *text, size_t len,
                             bool supervised) {
    if (prefix_len + len == 0) return TGA_OK;
    int32_t *ids;
    size_t n;
    TGA_TRY(encode_piece(e, prefix, prefix_len, text, len, &ids, &n));
    tga_status st = append(e, ids, n, supervised);
    free(ids);
    e->fresh = false;
    return st;
}

static size_t trailing_spaces(const char *text, size_t len) {
    size_t n = 0;
    while (n < len && text[len - 1 - n] == ' ')
        n++;
    return n;
}

/* Encode the pending template text; with keep_spaces, its trailing spaces stay pending for the
 * next piece. */
static tga_status flush_pending(emitter *e, bool keep_spaces) {
    if (e->pending_len == 0) return TGA_OK;
    size_t spaces = keep_spaces ? trailing_spaces(e->pending, e->pending_len) : 0;
    TGA_TRY(emit_piece(e, "", 0, e->pending, e->pending_len - spaces, e->pending_supervised));
    memmove(e->pending, e->pending + e->pending_len - spaces, spaces);
    e->pending_len = spaces;
    return TGA_OK;
}

static tga_status add_pending(emitter *e, const char *text, size_t len) {
    if (len == 0) return TGA_OK;
    TGA_TRY(grow((void **)&e->pending, &e->pending_cap, e->pending_len + len, 1));
    memcpy(e->pending + e->pending_len, text, len);
    e->pending_len += len;
    return TGA_OK;
}

static tga_status emit_template_text(emitter *e, const char *text, size_t len) {
    if (e->pending_len > 0 && e->pending_supervised != e->supervised) TGA_TRY(flush_pending(e, true));
    e->pending_supervised = e->supervised;
    return add_pending(e, text, len);
}

/* A record text as its own piece; *span (when given) covers its tokens. */
static tga_status emit_record_text(emitter *e, const char *text, size_t len, tga_shard_span *span) {
    TGA_TRY(flush_pending(e, true));
    size_t spaces = trailing_spaces(text, len);
    int32_t start = e->caption_branch ? e->out->n_caption_tokens : e->out->n_tokens;
    if (spaces < len) {
        TGA_TRY(emit_piece(e, e->pending, e->pending_len, text, len - spaces, e->supervised));
        e->pending_len = 0;
    }
    int32_t end = e->caption_branch ? e->out->n_caption_tokens : e->out->n_tokens;
    if (span) *span = (tga_shard_span){start, end - start};
    if (e->pending_len == 0) e->pending_supervised = e->supervised;
    return add_pending(e, text + len - spaces, spaces);
}

static tga_status emit_special(emitter *e, int32_t id) {
    TGA_TRY(flush_pending(e, false));
    TGA_TRY(append(e, &id, 1, e->supervised));
    e->fresh = e->t->fresh_after_special;
    return TGA_OK;
}

static tga_status emit_image(emitter *e) {
    tga_rendered *r = e->out;
    if (e->images_done >= e->c->n_images)
        return tga_error(TGA_ERR_FORMAT, "the conversation has more <image> markers than its %zu image(s)",
                         e->c->n_images);
    if (e->caption_branch || e->patches < 1)
        return tga_error(TGA_ERR_INTERNAL, "an image in the caption branch or with P = %d", e->patches);
    TGA_TRY(flush_pending(e, false));
    TGA_TRY(grow((void **)&r->images, &r->images_cap, (size_t)r->n_images + 1, sizeof *r->images));
    size_t start;
    TGA_TRY(reserve(e, (size_t)e->patches, &start));
    for (size_t i = start; i < start + (size_t)e->patches; i++) {
        r->input_ids[i] = TGA_IMAGE_TOKEN_ID;
        r->labels[i] = TGA_IGNORE_INDEX;
    }
    r->n_tokens = (int32_t)(start + (size_t)e->patches);
    r->images[r->n_images++] = (tga_shard_span){(int32_t)start, e->patches};
    e->images_done++;
    e->fresh = true;
    return TGA_OK;
}

size_t tga_count_image_markers(const char *text, size_t len) {
    size_t count = 0, marker = strlen(TGA_IMAGE_MARKER);
    for (size_t i = 0; i + marker <= len; i++)
        if (memcmp(text + i, TGA_IMAGE_MARKER, marker) == 0) {
            count++;
            i += marker - 1;
        }
    return count;
}

static bool is_ascii_space(char ch) { return ch == ' ' || (ch >= '\t' && ch <= '\r'); }

/* LLaVA's preprocess_multimodal for a turn with one marker: remove it, strip the text, and put
 * "<image>\n" in front (llava/train/train.py), so "What is it? <image>" renders as the image, then
 * "\nWhat is it?". */
static tga_status emit_single_image_turn(emitter *e, const char *text, size_t len) {
    size_t marker = strlen(TGA_IMAGE_MARKER);
    const char *at = text;
    while (memcmp(at, TGA_IMAGE_MARKER, marker) != 0)
        at++;
    char *rest = malloc(len + 1);
    if (!rest) return tga_error(TGA_ERR_NOMEM, "out of memory rendering a sample");
    size_t before = (size_t)(at - text), joined = len - marker, skip = 0;
    memcpy(rest + 1, text, before);
    memcpy(rest + 1 + before, at + marker, len - before - marker);
    while (skip < joined && is_ascii_space(rest[1 + skip]))
        skip++;
    while (joined > skip && is_ascii_space(rest[joined]))
        joined--;
    rest[skip] = '\n';
    tga_status st = emit_image(e);
    if (st == TGA_OK) st = emit_record_text(e, rest + skip, 1 + joined - skip, NULL);
    free(rest);
    return st;
}

static tga_status emit_user_content(emitter *e, const tga_turn *turn) {
    size_t markers = e->c->n_images ? tga_count_image_markers(turn->text, turn->len) : 0;
    if (markers == 0) return emit_record_text(e, turn->text, turn->len, NULL);
    if (markers == 1) return emit_single_image_turn(e, turn->text, turn->len);
    size_t marker = strlen(TGA_IMAGE_MARKER), start = 0;
    for (size_t i = 0; i + marker <= turn->len; i++) {
        if (memcmp(turn->text + i, TGA_IMAGE_MARKER, marker) != 0) continue;
        TGA_TRY(emit_record_text(e, turn->text + start, i - start, NULL));
        TGA_TRY(emit_image(e));
        start = i + marker;
        i = start - 1;
    }
    return emit_record_text(e, turn->text + start, turn->len - start, NULL);
}

static tga_status emit_turn_images(emitter *e, const tga_turn *turn) {
    size_t markers = e->c->n_images ? tga_count_image_markers(turn->text, turn->len) : 0;
    for (size_t i = 0; i < markers; i++)
        TGA_TRY(emit_image(e));
    return TGA_OK;
}

static tga_status emit_part(emitter *e, part_id id);

static tga_status emit_data_piece(emitter *e, part_id id, const piece *pc) {
    const tga_turn *turn = &e->c->turns[e->turn];
    switch (pc->kind) {
    case PIECE_RETRIEVAL:
        return e->c->retrieved ? emit_part(e, PART_RETRIEVAL) : TGA_OK;
    case PIECE_RETRIEVED:
        return emit_record_text(e, e->c->retrieved, e->c->retrieved_len, &e->out->retrieved);
    case PIECE_CAPTION:
        return emit_record_text(e, e->c->caption, e->c->caption_len, &e->out->caption);
    case PIECE_CONTENT:
        return id == PART_ASSISTANT_ANSWER ? emit_record_text(e, turn->text, turn->len, NULL)
                                           : emit_user_content(e, turn);
    case PIECE_IMAGES:
        return emit_turn_images(e, turn);
    default:
        return tga_error(TGA_ERR_INTERNAL, "template piece of kind %d", (int)pc->kind);
    }
}

static tga_status emit_part(emitter *e, part_id id) {
    const part *p = &e->t->parts[id];
    for (size_t i = 0; i < p->n; i++) {
        const piece *pc = &p->pieces[i];
        if (pc->kind == PIECE_TEXT)
            TGA_TRY(emit_template_text(e, pc->text, pc->len));
        else if (pc->kind == PIECE_TOKEN)
            TGA_TRY(emit_special(e, pc->token));
        else
            TGA_TRY(emit_data_piece(e, id, pc));
    }
    return TGA_OK;
}

static tga_status check_shape(const tga_template *t, const tga_conversation *c) {
    if (c->n_turns < 2 || c->n_turns % 2 != 0)
        return tga_error(TGA_ERR_FORMAT,
                         "the conversation has %zu turns; expected user and assistant turns in pairs",
                         c->n_turns);
    for (size_t i = 0; i < c->n_turns; i++)
        if (c->turns[i].role != (i % 2 == 0 ? TGA_ROLE_USER : TGA_ROLE_ASSISTANT))
            return tga_error(TGA_ERR_FORMAT,
                             "turn %zu is %s; expected user and assistant turns alternating, user first", i,
                             c->turns[i].role == TGA_ROLE_USER ? "a user turn" : "an answer");
    if (t->single_turn && c->n_turns != 2)
        return tga_error(TGA_ERR_FORMAT,
                         "template %s renders one question and one answer; the conversation has %zu turns",
                         t->name, c->n_turns);
    return TGA_OK;
}

static tga_status render_conversation(emitter *e) {
    e->turn = 0;
    TGA_TRY(emit_part(e, PART_FIRST_USER));
    for (e->turn = 1; e->turn < e->c->n_turns; e->turn++) {
        if (e->c->turns[e->turn].role == TGA_ROLE_USER) {
            TGA_TRY(emit_part(e, PART_USER));
            continue;
        }
        TGA_TRY(emit_part(e, PART_ASSISTANT_PREFIX));
        e->supervised = true;
        TGA_TRY(emit_part(e, PART_ASSISTANT_ANSWER));
        e->supervised = false;
        TGA_TRY(emit_part(e, PART_ASSISTANT_SUFFIX));
    }
    TGA_TRY(flush_pending(e, false));
    if (e->images_done != e->c->n_images)
        return tga_error(TGA_ERR_FORMAT,
                         "the conversation has %zu image(s) but its user turns render %zu (one per "
                         "<image> marker)",
                         e->c->n_images, e->images_done);
    if (e->out->n_supervised == 0) return tga_error(TGA_ERR_FORMAT, "the sample has no supervised token");
    return TGA_OK;
}

static tga_status render_caption(emitter *e) {
    TGA_TRY(emit_part(e, PART_CAPTION));
    return flush_pending(e, false);
}

/* The cut of TGA-METHOD's "truncated to max_len", made safe for the spans (see template.h). */
static void fit_to_length(tga_rendered *r, int64_t max_len) {
    r->fits = true;
    r->truncated = false;
    if (r->n_tokens > max_len) {
        int64_t protected_end = r->retrieved.length ? (int64_t)r->retrieved.start + r->retrieved.length : 0;
        for (int32_t i = 0; i < r->n_images; i++) {
            int64_t end = (int64_t)r->images[i].start + r->images[i].length;
            protected_end = end > protected_end ? end : protected_end;
        }
        int64_t kept = 0;
        for (int64_t i = 0; i < max_len; i++)
            kept += r->labels[i] != TGA_IGNORE_INDEX;
        if (protected_end > max_len || kept == 0) {
            r->fits = false;
            return;
        }
        r->n_tokens = (int32_t)max_len;
        r->n_supervised = kept;
        r->truncated = true;
    }
    if (r->n_caption_tokens > max_len) {
        if (r->caption.length > 0 && r->caption.start >= max_len) {
            r->fits = false;
            return;
        }
        int64_t room = max_len - r->caption.start;
        if (r->caption.length > room) r->caption.length = (int32_t)(room > 0 ? room : 0);
        r->n_caption_tokens = (int32_t)max_len;
        r->truncated = true;
    }
}

tga_status tga_template_render(const tga_template *t, const tga_conversation *c, int32_t patches_per_image,
                               int64_t max_len, tga_rendered *out) {
    if (!t || !c || !out || max_len < 1 || (c->n_images > 0 && patches_per_image < 1) ||
        (c->n_turns > 0 && !c->turns))
        return tga_error(TGA_ERR_INTERNAL, "tga_template_render: bad arguments");
    TGA_TRY(check_shape(t, c));
    out->n_tokens = out->n_images = out->n_caption_tokens = 0;
    out->retrieved = out->caption = (tga_shard_span){0, 0};
    out->n_supervised = 0;
    out->fits = out->truncated = false;
    emitter e = {.t = t, .c = c, .out = out, .patches = patches_per_image, .fresh = true};
    tga_status st = render_conversation(&e);
    if (st == TGA_OK && c->caption) {
        e.caption_branch = true;
        e.fresh = true;
        e.pending_len = 0;
        st = render_caption(&e);
    }
    free(e.pending);
    if (st == TGA_OK) fit_to_length(out, max_len);
    return st;
}
