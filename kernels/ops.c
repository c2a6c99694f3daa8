/* The active op table; set once at start-up by runtime/backend.c. */
#include "kernels/ops.h"

const tga_ops *tga_active_ops = NULL;
