/* The memory plan: every named tensor the run will hold, with its shape and kind, made once from
 * the config before anything is allocated. It can be printed for any model size (a 7B plan on a
 * laptop); the model then allocates one buffer per kind and carves tensors out at the planned
 * offsets, so what is printed is what is used. */
#ifndef TGA_RUNTIME_PLAN_H
#define TGA_RUNTIME_PLAN_H

#include <stddef.h>
#include <stdio.h>

#include "runtime/error.h"

typedef enum {
    TGA_MEM_PARAMS = 0, /* model weights (trainable and frozen) */
    TGA_MEM_GRADS,      /* gradients of trainable weights */
    TGA_MEM_OPTIM,      /* AdamW first and second moments */
    TGA_MEM_ACTS,       /* activations kept for backward */
    TGA_MEM_SCRATCH,    /* work buffers reused across layers */
    TGA_MEM_KINDS
} tga_mem_kind;

typedef struct tga_plan_entry {
    char name[96];
    tga_mem_kind kind;
    int ndim;
    long long shape[4];
    size_t numel;
    int elem_bytes; /* 4 (float32) or 2 (bfloat16) */
    size_t offset;  /* in floats, within its kind's buffer (64-byte aligned) */
} tga_plan_entry;

typedef struct tga_plan {
    tga_plan_entry *entries;
    int count, capacity;
    size_t kind_numel[TGA_MEM_KINDS]; /* floats per kind, including alignment padding */
    int failed; /* an add ran out of memory (its error is set); checked once the plan is complete */
} tga_plan;

void tga_plan_init(tga_plan *plan);
void tga_plan_free(tga_plan *plan);
/* Add a float32 tensor; returns its index (or -1 with an error set on allocation failure). */
int tga_plan_add(tga_plan *plan, tga_mem_kind kind, const char *name, int ndim, const long long *shape);
/* The same with 2- or 4-byte elements (a bfloat16 tensor takes half the space). */
int tga_plan_add_typed(tga_plan *plan, tga_mem_kind kind, const char *name, int ndim, const long long *shape,
                       int elem_bytes);
int tga_plan_find(const tga_plan *plan, const char *name);
size_t tga_plan_bytes(const tga_plan *plan, tga_mem_kind kind);
size_t tga_plan_total_bytes(const tga_plan *plan);
const char *tga_mem_kind_name(tga_mem_kind kind);
/* Print the per-kind totals and (verbose) every tensor. */
void tga_plan_print(const tga_plan *plan, FILE *out, int verbose);
/* Human-readable byte count ("1.25 GiB") into buf. */
const char *tga_format_bytes(double bytes, char *buf, size_t size);

#endif
