#include "trainer/optim_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"
#include "dist/device_comm.h"
#include "dist/grad_sync.h"
#include "kernels/ops.h"

/* Walks the trainable tensors inside the flat range [lo, hi) of the gradient layout: each call
 * returns the next tensor p with its elements [*first, *first + *count), which sit at flat offset
 * *at. *cursor starts at 0. */
static tga_param *next_slice(tga_model *m, int *cursor, size_t lo, size_t hi, size_t *first, size_t *count,
                             size_t *at) {
    for (; *cursor < tga_model_param_count(m); (*cursor)++) {
        tga_param *p = tga_model_param(m, *cursor);
        if (!p->trainable) continue;
        size_t off = tga_model_grad_offset(m, p), a = off > lo ? off : lo;
        size_t b = off + p->numel < hi ? off + p->numel : hi;
        if (a >= b) continue;
        *first = a - off;
        *count = b - a;
        *at = a;
        (*cursor)++;
        return p;
    }
    return NULL;
}

static size_t layout_length(tga_model *m) {
    size_t n;
    tga_model_grad_buffer(m, &n);
    return n;
}

/* Elements [first, first + count) of p to or from host floats: its fp32 data, or, for a bf16
 * matrix whose master is sharded, its bf16 copy (widened; narrowed back exactly) through conv,
 * which holds count values. */
static void slice_to_host(const tga_param *p, size_t first, size_t count, float *host, tga_bf16 *conv) {
    if (p->data) {
        OPS->download(host, p->data + first, count * sizeof(float));
        return;
    }
    OPS->download(conv, p->data_bf16 + first, count * sizeof *conv);
    tga_bf16_widen(host, conv, count);
}

static void slice_from_host(tga_param *p, size_t first, size_t count, const float *host, tga_bf16 *conv) {
    if (p->data) {
        OPS->upload(p->data + first, host, count * sizeof(float));
        return;
    }
    tga_bf16_narrow(conv, host, count);
    OPS->upload(p->data_bf16 + first, conv, count * sizeof *conv);
}

/* Copies the parameters in flat [lo, hi) between the model and host[hi - lo] (zero padding);
 * conv holds hi - lo bf16 values. */
static void params_to_host(tga_model *m, size_t lo, size_t hi, float *host, tga_bf16 *conv) {
    memset(host, 0, (hi - lo) * sizeof(float));
    size_t first, count, at;
    int c = 0;
    for (tga_param *p; (p = next_slice(m, &c, lo, hi, &first, &count, &at));)
        slice_to_host(p, first, count, host + (at - lo), conv);
}

static void params_from_host(tga_model *m, size_t lo, size_t hi, const float *host, tga_bf16 *conv) {
    size_t first, count, at;
    int c = 0;
    for (tga_param *p; (p = next_slice(m, &c, lo, hi, &first, &count, &at));)
        slice_from_host(p, first, count, host + (at - lo), conv);
}

tga_status tga_optim_gather_params(tga_model *m) {
    const int world = tga_dist_world(), rank = tga_dist_rank();
    const size_t n = layout_length(m);
    size_t lo0, hi0;
    tga_zero_shard(n, world, 0, &lo0, &hi0);
    const size_t per = hi0 - lo0, cap = ((size_t)1 << 26) / (size_t)world; /* <= 256 MiB of floats */
    const size_t piece = per < cap ? (per ? per : 1) : cap;
    float *send = malloc(piece * sizeof(float)), *recv = malloc(piece * (size_t)world * sizeof(float));
    tga_bf16 *conv = malloc(piece * sizeof *conv); /* bf16 matrices with sharded masters travel widened */
    tga_status st = send && recv && conv ? TGA_OK
                                         : tga_error(TGA_ERR_NOMEM, "ZeRO-1: out of memory for the parameter all-gather");
    for (size_t off = 0; st == TGA_OK && off < per; off += piece) {
        size_t k = per - off < piece ? per - off : piece, lo, hi;
        tga_zero_shard(n, world, rank, &lo, &hi);
        size_t a = lo + off < hi ? lo + off : hi, b = a + k < hi ? a + k : hi;
        memset(send, 0, piece * sizeof(float));
        params_to_host(m, a, b, send, conv);
        st = tga_dist_allgather(send, recv, piece * sizeof(float), "ZeRO-1 parameter all-gather");
        for (int q = 0; st == TGA_OK && q < world; q++) {
            if (q == rank) continue;
            tga_zero_shard(n, world, q, &lo, &hi);
            a = lo + off < hi ? lo + off : hi;
            b = a + k < hi ? a + k : hi;
            params_from_host(m, a, b, recv + (size_t)q * piece, conv);
        }
    }
    free(send);
    free(recv);
    free(conv);
    return st;
}

tga_status tga_optim_device_reduce_grads(tga_model *m) {
    size_t n;
    float *grads = tga_model_grad_buffer(m, &n);
    for (int q = 0; q < tga_dist_world(); q++) {
        size_t lo, hi;
        tga_zero_shard(n, tga_dist_world(), q, &lo, &hi);
        if (hi > lo) TGA_TRY(tga_dist_device_reduce(grads + lo, hi - lo, q, "ZeRO-1 gradient reduce"));
    }
    return tga_dist_device_wait("ZeRO-1 gradient reduce");
}

tga_status tga_optim_device_broadcast_params(tga_model *m) {
    const size_t n = layout_length(m);
    for (int q = 0; q < tga_dist_world(); q++) {
        size_t lo, hi, first, count, at;
        tga_zero_shard(n, tga_dist_world(), q, &lo, &hi);
        int c = 0;
        for (tga_param *p; (p = next_slice(m, &c, lo, hi, &first, &count, &at));)
            TGA_TRY(p->data ? tga_dist_device_broadcast(p->data + first, count, q, "ZeRO-1 parameter broadcast")
                            : tga_dist_device_broadcast_bf16(p->data_bf16 + first, count, q,
                                                             "ZeRO-1 parameter broadcast"));
    }
    return tga_dist_device_wait("ZeRO-1 parameter broadcast");
}

/* ---- checkpoints -------------------------------------------------------------------------------- */

tga_status tga_optim_gather_master(tga_model *m, const tga_param *p, float *host) {
    float *shard = tga_model_master_shard(m);
    const int world = tga_dist_world();
    const size_t n = layout_length(m), off = tga_model_grad_offset(m, p);
    size_t *counts = malloc((size_t)world * sizeof *counts), mine = 0, lo_mine = 0;
    for (int q = 0; counts && q < world; q++) { /* the bytes of p in rank q's shard; shards rise with q */
        size_t lo, hi;
        tga_zero_shard(n, world, q, &lo, &hi);
        size_t a = off > lo ? off : lo, b = off + p->numel < hi ? off + p->numel : hi;
        counts[q] = a < b ? (b - a) * sizeof(float) : 0;
        if (q == tga_dist_rank()) mine = counts[q] / sizeof(float), lo_mine = a - lo;
    }
    float *part = malloc(mine ? mine * sizeof(float) : 1);
    tga_status st = counts && part && host
                        ? TGA_OK
                        : tga_error(TGA_ERR_NOMEM, "out of memory gathering the master of %s", p->name);
    if (st == TGA_OK && mine) OPS->download(part, shard + lo_mine, mine * sizeof(float));
    int failed; /* every rank learns of a failure before the gather, so none is left in it */
    tga_status agreed = tga_dist_any_failed(st, &failed, "ZeRO-1 master gather");
    if (agreed == TGA_OK && !failed) st = tga_dist_allgatherv(part, host, counts, "ZeRO-1 master gather");
    else if (st == TGA_OK) st = agreed != TGA_OK ? agreed : tga_error(TGA_ERR_NOMEM, "another rank ran out of memory");
    free(part);
    free(counts);
    return st;
}

static const char *const moment_names[2] = {"adam_m", "adam_v"};

static void shard_file(char *name, size_t cap, int rank) { snprintf(name, cap, "optim.rank-%05d.tgat", rank); }

static tga_status save_sharded(tga_model *m, tga_ckpt_writer *w, int rank) {
    float *state[2];
    size_t lo, hi;
    tga_model_optim_state(m, &state[0], &state[1], &lo, &hi);
    if (hi == lo) return TGA_OK; /* an empty shard writes no file */
    char file[64];
    shard_file(file, sizeof file, rank);
    TGA_TRY(tga_ckpt_tensors_begin(w, file, tga_ckpt_default_codec()));
    float *host = malloc((hi - lo) * sizeof(float));
    if (!host) return tga_error(TGA_ERR_NOMEM, "out of memory saving the optimizer shard");
    tga_status st = TGA_OK;
    for (int k = 0; k < 2 && st == TGA_OK; k++) {
        OPS->download(host, state[k], (hi - lo) * sizeof(float));
        tga_ckpt_tensor t = {.name = moment_names[k], .dtype = TGA_CKPT_F32, .ndim = 1,
                             .shape = {(int64_t)(hi - lo)}, .data = host};
        st = tga_ckpt_tensors_add(w, &t);
    }
    free(host);
    TGA_TRY(st);
    return tga_ckpt_tensors_end(w);
}

static tga_status save_replicated(tga_model *m, tga_ckpt_writer *w) {
    TGA_TRY(tga_ckpt_tensors_begin(w, "optim.tgat", tga_ckpt_default_codec()));
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        if (!p->trainable) continue;
        const float *src[2] = {p->adam_m, p->adam_v};
        float *host = malloc(p->numel * sizeof(float));
        if (!host) return tga_error(TGA_ERR_NOMEM, "out of memory saving the moments of %s", p->name);
        tga_status st = TGA_OK;
        for (int k = 0; k < 2 && st == TGA_OK; k++) {
            char name[200];
            snprintf(name, sizeof name, "%s.%s", moment_names[k], p->name);
            OPS->download(host, src[k], p->numel * sizeof(float));
            tga_ckpt_tensor t = {.name = name, .dtype = TGA_CKPT_F32, .ndim = p->ndim,
                                 .shape = {p->shape[0], p->shape[1]}, .data = host};
            st = tga_ckpt_tensors_add(w, &t);
        }
        free(host);
        TGA_TRY(st);
    }
    return tga_ckpt_tensors_end(w);
}

tga_status tga_optim_state_save(tga_model *m, tga_ckpt_writer *w, int rank) {
    if (tga_model_optim_sharded(m)) return save_sharded(m, w, rank);
    return rank == 0 ? save_replicated(m, w) : TGA_OK;
}

json_t *tga_optim_state_describe(tga_model *m, int world) {
    size_t n = layout_length(m);
    if (!tga_model_optim_sharded(m)) return json_pack("{s:s,s:s}", "layout", "replicated", "file", "optim.tgat");
    json_t *pieces = json_array();
    for (int r = 0; r < world; r++) {
        size_t lo, hi;
        tga_zero_shard(n, world, r, &lo, &hi);
        if (hi == lo) continue;
        char file[64];
        shard_file(file, sizeof file, r);
        json_array_append_new(pieces, json_pack("{s:s,s:I}", "file", file, "first", (json_int_t)lo));
    }
    return json_pack("{s:s,s:I,s:o}", "layout", "sharded", "numel", (json_int_t)n, "pieces", pieces);
}

/* Where the moments come from: one replicated file, or the pieces of a sharded layout. */
typedef struct source {
    tga_ckpt_reader *file;                  /* replicated */
    tga_ckpt_piece *pieces[2];              /* sharded: per moment */
    int n_pieces;
    const char *ckpt;
} source;

/* Moment k of tensor p, elements [first, first + count), into host. */
static tga_status read_moment(source *s, tga_model *m, tga_param *p, int k, size_t first, size_t count, float *host) {
    if (s->file) {
        char name[200];
        snprintf(name, sizeof name, "%s.%s", moment_names[k], p->name);
        const tga_ckpt_tensor_info *info = tga_ckpt_reader_find(s->file, name);
        if (info && info->count != (int64_t)p->numel)
            return tga_error(TGA_ERR_CONFIG, "%s/optim.tgat: %s has %lld elements; this model's %s has %zu", s->ckpt,
                             name, (long long)info->count, p->name, p->numel);
        return tga_ckpt_read_range(s->file, name, TGA_CKPT_F32, (int64_t)first, (int64_t)count, host);
    }
    int64_t global = (int64_t)(tga_model_grad_offset(m, p) + first);
    return tga_ckpt_read_resharded(s->ckpt, s->pieces[k], s->n_pieces, TGA_CKPT_F32, global, (int64_t)count, host);
}

static tga_status open_source(source *s, tga_model *m, const char *ckpt, const json_t *optim) {
    const char *layout = json_string_value(json_object_get(optim, "layout"));
    s->ckpt = ckpt;
    if (!optim || (layout && strcmp(layout, "replicated") == 0)) {
        char path[900];
        snprintf(path, sizeof path, "%s/optim.tgat", ckpt);
        return tga_ckpt_reader_open(&s->file, path);
    }
    const json_t *pieces = json_object_get(optim, "pieces");
    size_t n = (size_t)json_integer_value(json_object_get(optim, "numel"));
    if (!layout || strcmp(layout, "sharded") != 0 || !json_is_array(pieces) || json_array_size(pieces) == 0)
        return tga_error(TGA_ERR_FORMAT, "%s/state.json: \"optim\" is neither a replicated nor a sharded layout", ckpt);
    if (n != layout_length(m))
        return tga_error(TGA_ERR_CONFIG, "%s holds optimizer state for %zu gradient elements; this model has %zu "
                                         "(the model or train.trainable changed)", ckpt, n, layout_length(m));
    s->n_pieces = (int)json_array_size(pieces);
    for (int k = 0; k < 2; k++) {
        s->pieces[k] = calloc((size_t)s->n_pieces, sizeof(tga_ckpt_piece));
        if (!s->pieces[k]) return tga_error(TGA_ERR_NOMEM, "out of memory");
        json_int_t previous = -1;
        for (int i = 0; i < s->n_pieces; i++) {
            const json_t *piece = json_array_get(pieces, (size_t)i), *first = json_object_get(piece, "first");
            const char *file = json_string_value(json_object_get(piece, "file"));
            json_int_t at = json_integer_value(first);
            /* pieces start at 0 and rise strictly inside the layout (each file's size is checked on read) */
            if (!file || !json_is_integer(first) || at <= previous || (i == 0 && at != 0) || (size_t)at >= n)
                return tga_error(TGA_ERR_FORMAT, "%s/state.json: optim piece %d: expected a file and a first element "
                                                 "that starts at 0 and rises below %zu", ckpt, i, n);
            s->pieces[k][i] = (tga_ckpt_piece){file, moment_names[k], (int64_t)at};
            previous = at;
        }
    }
    return TGA_OK;
}

static void close_source(source *s) {
    tga_ckpt_reader_close(s->file);
    free(s->pieces[0]);
    free(s->pieces[1]);
}

tga_status tga_optim_state_load(tga_model *m, const char *ckpt, const json_t *optim) {
    float *state[2];
    size_t lo, hi;
    tga_model_optim_state(m, &state[0], &state[1], &lo, &hi);
    source s = {0};
    tga_status st = open_source(&s, m, ckpt, optim);
    size_t first, count, at;
    int c = 0;
    for (tga_param *p; st == TGA_OK && (p = next_slice(m, &c, lo, hi, &first, &count, &at));) {
        float *host = malloc(count * sizeof(float));
        if (!host) st = tga_error(TGA_ERR_NOMEM, "out of memory loading the moments of %s", p->name);
        for (int k = 0; k < 2 && st == TGA_OK; k++) {
            st = read_moment(&s, m, p, k, first, count, host);
            if (st == TGA_OK) OPS->upload(state[k] + (at - lo), host, count * sizeof(float));
        }
        free(host);
    }
    close_source(&s);
    return st;
}
