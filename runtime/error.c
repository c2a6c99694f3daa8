#include "runtime/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char error_message[2048];
static _Thread_local tga_status error_code = TGA_OK;

/* Formats into a scratch buffer first: an argument may be the current message itself
 * (tga_error_replace(code, "%s", tga_error_message()) re-files a message under another code). */
static tga_status set_message(tga_status code, const char *fmt, va_list ap) {
    char formatted[sizeof error_message];
    vsnprintf(formatted, sizeof formatted, fmt, ap);
    memcpy(error_message, formatted, sizeof error_message);
    error_code = code;
    return code;
}

tga_status tga_error(tga_status code, const char *fmt, ...) {
    if (error_code != TGA_OK) return code;
    va_list ap;
    va_start(ap, fmt);
    set_message(code, fmt, ap);
    va_end(ap);
    return code;
}

tga_status tga_error_replace(tga_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_message(code, fmt, ap);
    va_end(ap);
    return code;
}

const char *tga_error_message(void) { return error_code == TGA_OK ? "" : error_message; }
tga_status tga_error_code(void) { return error_code; }

void tga_error_clear(void) {
    error_code = TGA_OK;
    error_message[0] = '\0';
}

const char *tga_status_name(tga_status code) {
    switch (code) {
    case TGA_OK: return "ok";
    case TGA_ERR_USAGE: return "usage error";
    case TGA_ERR_CONFIG: return "config error";
    case TGA_ERR_IO: return "I/O error";
    case TGA_ERR_FORMAT: return "format error";
    case TGA_ERR_NOMEM: return "out of memory";
    case TGA_ERR_NUMERIC: return "numerical fault";
    case TGA_ERR_BACKEND: return "backend error";
    case TGA_ERR_DIST: return "distributed error";
    case TGA_ERR_INTERNAL: return "internal error";
    }
    return "unknown error";
}

int tga_status_exit_code(tga_status code) {
    if (code == TGA_OK) return 0;
    if (code == TGA_ERR_USAGE || code == TGA_ERR_CONFIG) return 2;
    return 1;
}
