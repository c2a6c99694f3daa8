/* Errors: every failure is a status code returned up to the CLI, plus one message that says
 * what failed, where (file, line, key, record, tensor) and what was expected.
 *
 * The message lives in a thread-local buffer set by tga_error(); the first error wins until it
 * is cleared, so the innermost, most specific message is the one printed. */
#ifndef TGA_RUNTIME_ERROR_H
#define TGA_RUNTIME_ERROR_H

typedef enum {
    TGA_OK = 0,
    TGA_ERR_USAGE = 1,    /* bad command line                              -> exit 2 */
    TGA_ERR_CONFIG = 2,   /* bad config file, key, type or value           -> exit 2 */
    TGA_ERR_IO = 3,       /* a file could not be opened, read or written   -> exit 1 */
    TGA_ERR_FORMAT = 4,   /* a file's contents are not what was expected   -> exit 1 */
    TGA_ERR_NOMEM = 5,    /* allocation failed                             -> exit 1 */
    TGA_ERR_NUMERIC = 6,  /* NaN/Inf in a loss or gradient                 -> exit 1 */
    TGA_ERR_BACKEND = 7,  /* device or backend failure                     -> exit 1 */
    TGA_ERR_DIST = 8,     /* communication failure, timeout                -> exit 1 */
    TGA_ERR_INTERNAL = 9, /* a broken invariant (a bug in tga)             -> exit 1 */
} tga_status;

/* Record an error message (printf-style) and return `code`, so callers can write
 *     return tga_error(TGA_ERR_IO, "cannot open %s: %s", path, strerror(errno));
 * Only the first error since the last tga_error_clear() is kept. */
tga_status tga_error(tga_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Replace the recorded message even if one is set (for adding context at a boundary). */
tga_status tga_error_replace(tga_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

const char *tga_error_message(void);
tga_status tga_error_code(void);
void tga_error_clear(void);
const char *tga_status_name(tga_status code);

/* Process exit code for a status: 2 for usage/config, 1 otherwise, 0 for OK. */
int tga_status_exit_code(tga_status code);

/* Propagate a failing status. */
#define TGA_TRY(expr)                                                                        \
    do {                                                                                     \
        tga_status tga_try_status_ = (expr);                                                 \
        if (tga_try_status_ != TGA_OK) return tga_try_status_;                               \
    } while (0)

#endif
