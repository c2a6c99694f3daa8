#include "runtime/plan.h"

#include <stdlib.h>
#include <string.h>

void tga_plan_init(tga_plan *plan) { memset(plan, 0, sizeof *plan); }

void tga_plan_free(tga_plan *plan) {
    free(plan->entries);
    memset(plan, 0, sizeof *plan);
}

int tga_plan_add(tga_plan *plan, tga_mem_kind kind, const char *name, int ndim, const long long *shape) {
    return tga_plan_add_typed(plan, kind, name, ndim, shape, (int)sizeof(float));
}

int tga_plan_add_typed(tga_plan *plan, tga_mem_kind kind, const char *name, int ndim, const long long *shape,
                       int elem_bytes) {
    if (plan->count == plan->capacity) {
        int cap = plan->capacity ? plan->capacity * 2 : 64;
        tga_plan_entry *e = realloc(plan->entries, (size_t)cap * sizeof *e);
        if (!e) {
            plan->failed = 1;
            tga_error(TGA_ERR_NOMEM, "memory plan: cannot grow the tensor table to %d entries", cap);
            return -1;
        }
        plan->entries = e;
        plan->capacity = cap;
    }
    tga_plan_entry *e = &plan->entries[plan->count];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->kind = kind;
    e->ndim = ndim;
    e->numel = 1;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
        e->numel *= (size_t)shape[i];
    }
    e->elem_bytes = elem_bytes;
    e->offset = plan->kind_numel[kind];
    size_t floats = (e->numel * (size_t)elem_bytes + sizeof(float) - 1) / sizeof(float);
    plan->kind_numel[kind] += (floats + 15) & ~(size_t)15; /* keep every tensor 64-byte aligned */
    return plan->count++;
}

int tga_plan_find(const tga_plan *plan, const char *name) {
    for (int i = 0; i < plan->count; i++)
        if (strcmp(plan->entries[i].name, name) == 0) return i;
    return -1;
}

size_t tga_plan_bytes(const tga_plan *plan, tga_mem_kind kind) { return plan->kind_numel[kind] * sizeof(float); }

size_t tga_plan_total_bytes(const tga_plan *plan) {
    size_t total = 0;
    for (int k = 0; k < TGA_MEM_KINDS; k++) total += tga_plan_bytes(plan, (tga_mem_kind)k);
    return total;
}

const char *tga_mem_kind_name(tga_mem_kind kind) {
    static const char *names[] = {"parameters", "gradients", "optimizer state", "activations", "scratch"};
    return (unsigned)kind < TGA_MEM_KINDS ? names[kind] : "?";
}

const char *tga_format_bytes(double bytes, char *buf, size_t size) {
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, size, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
    return buf;
}

void tga_plan_print(const tga_plan *plan, FILE *out, int verbose) {
    char b[32];
    if (verbose) {
        fprintf(out, "%-44s %-16s %-28s %-5s %12s\n", "tensor", "kind", "shape", "dtype", "bytes");
        for (int i = 0; i < plan->count; i++) {
            const tga_plan_entry *e = &plan->entries[i];
            char shape[64] = "[";
            for (int d = 0; d < e->ndim; d++) {
                char dim[24];
                snprintf(dim, sizeof dim, d ? ", %lld" : "%lld", e->shape[d]);
                strncat(shape, dim, sizeof shape - strlen(shape) - 2);
            }
            strcat(shape, "]");
            fprintf(out, "%-44s %-16s %-28s %-5s %12s\n", e->name, tga_mem_kind_name(e->kind), shape,
                    e->elem_bytes == 2 ? "bf16" : "fp32", tga_format_bytes((double)e->numel * e->elem_bytes, b, sizeof b));
        }
    }
    for (int k = 0; k < TGA_MEM_KINDS; k++)
        fprintf(out, "  %-16s %12s\n", tga_mem_kind_name((tga_mem_kind)k),
                tga_format_bytes((double)tga_plan_bytes(plan, (tga_mem_kind)k), b, sizeof b));
    fprintf(out, "  %-16s %12s\n", "total", tga_format_bytes((double)tga_plan_total_bytes(plan), b, sizeof b));
}
