/* Logging with levels and a rank prefix ("[rank 1] "), to stderr. Only rank 0 logs INFO unless
 * all-rank logging is enabled; warnings and errors come from every rank. */
#ifndef TGA_RUNTIME_LOG_H
#define TGA_RUNTIME_LOG_H

typedef enum { TGA_LOG_DEBUG = 0, TGA_LOG_INFO = 1, TGA_LOG_WARN = 2, TGA_LOG_ERROR = 3 } tga_log_level;

void tga_log_set_level(tga_log_level level);
tga_log_level tga_log_get_level(void);
/* Rank and world size for prefixes; world 1 prints no prefix. */
void tga_log_set_rank(int rank, int world);
void tga_log_set_all_ranks(int enabled);
/* Parse "debug|info|warn|error"; returns -1 on unknown names. */
int tga_log_level_from_name(const char *name);

void tga_log(tga_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define TGA_DEBUG(...) tga_log(TGA_LOG_DEBUG, __VA_ARGS__)
#define TGA_INFO(...) tga_log(TGA_LOG_INFO, __VA_ARGS__)
#define TGA_WARN(...) tga_log(TGA_LOG_WARN, __VA_ARGS__)
#define TGA_LOG_ERROR(...) tga_log(TGA_LOG_ERROR, __VA_ARGS__)

#endif
