#define _POSIX_C_SOURCE 200809L /* access */
#include "trainer/weights.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels/ops.h"
#include "runtime/ckpt.h"

static tga_status load_params_file(tga_model *m, const char *path) {
    tga_ckpt_reader *rd;
    TGA_TRY(tga_ckpt_reader_open(&rd, path));
    int loaded = 0;
    tga_status st = TGA_OK;
    for (int i = 0; i < tga_model_param_count(m) && st == TGA_OK; i++) {
        tga_param *p = tga_model_param(m, i);
        if (!tga_ckpt_reader_find(rd, p->name)) continue;
        float *host = malloc(p->numel * sizeof(float));
        if (!host) {
            st = tga_error(TGA_ERR_NOMEM, "out of memory loading %s", p->name);
            break;
        }
        int64_t shape[2] = {p->shape[0], p->shape[1]};
        st = tga_ckpt_read_tensor(rd, p->name, TGA_CKPT_F32, p->ndim, shape, host);
        if (st == TGA_OK) st = tga_model_param_upload(m, p, host);
        free(host);
        loaded++;
    }
    tga_ckpt_reader_close(rd);
    if (st == TGA_OK && loaded == 0)
        return tga_error(TGA_ERR_FORMAT, "%s holds none of this model's parameters (a different model?)", path);
    return st;
}

tga_status tga_weights_resolve(const char *path, char *out, size_t size) {
    char probe[1200];
    snprintf(probe, sizeof probe, "%s/DONE", path);
    if (access(probe, F_OK) == 0) {
        snprintf(out, size, "%s", path);
        return TGA_OK;
    }
    int64_t step;
    int found;
    TGA_TRY(tga_ckpt_find_latest(path, &step, &found));
    if (!found) return tga_error(TGA_ERR_CONFIG, "%s: not a checkpoint, and no complete checkpoint in it", path);
    return tga_ckpt_path(path, step, NULL, out, size);
}

static tga_status load_chain(tga_model *m, const char *path, int depth, char *params_path, size_t size) {
    if (depth > 8) return tga_error(TGA_ERR_FORMAT, "%s: the chain of base checkpoints is too deep (a cycle?)", path);
    char dir[1024], params[1100];
    TGA_TRY(tga_weights_resolve(path, dir, sizeof dir));
    void *state = NULL;
    size_t n;
    TGA_TRY(tga_ckpt_read_blob(dir, "state.json", 1 << 20, &state, &n));
    json_error_t err;
    json_t *j = json_loads(state, 0, &err);
    free(state);
    if (!j) return tga_error(TGA_ERR_FORMAT, "%s/state.json: %s (line %d)", dir, err.text, err.line);
    const char *base = json_string_value(json_object_get(j, "base"));
    tga_status st = base && *base ? load_chain(m, base, depth + 1, NULL, 0) : TGA_OK;
    json_decref(j);
    TGA_TRY(st);
    snprintf(params, sizeof params, "%s/params.tgat", dir);
    TGA_TRY(load_params_file(m, params));
    if (params_path) snprintf(params_path, size, "%s", params);
    return TGA_OK;
}

tga_status tga_weights_load(tga_model *m, const char *path, char *params_path, size_t size) {
    return load_chain(m, path, 0, params_path, size);
}
