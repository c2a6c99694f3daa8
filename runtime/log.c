#include "runtime/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static tga_log_level log_level = TGA_LOG_INFO;
static int log_rank = 0, log_world = 1, log_all_ranks = 0;

void tga_log_set_level(tga_log_level level) { log_level = level; }
tga_log_level tga_log_get_level(void) { return log_level; }
void tga_log_set_rank(int rank, int world) {
    log_rank = rank;
    log_world = world;
}
void tga_log_set_all_ranks(int enabled) { log_all_ranks = enabled; }

int tga_log_level_from_name(const char *name) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) return i;
    return -1;
}

void tga_log(tga_log_level level, const char *fmt, ...) {
    if (level < log_level) return;
    if (level < TGA_LOG_WARN && log_rank != 0 && !log_all_ranks) return;
    static const char *tags[] = {"debug: ", "", "warning: ", "error: "};
    char line[4096];
    int n = 0;
    if (log_world > 1) n = snprintf(line, sizeof line, "[rank %d] ", log_rank);
    n += snprintf(line + n, sizeof line - (size_t)n, "%s", tags[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    /* one fputs per line so lines from ranks sharing a terminal do not interleave mid-line */
    size_t len = strlen(line);
    if (len + 1 < sizeof line && (len == 0 || line[len - 1] != '\n')) {
        line[len] = '\n';
        line[len + 1] = '\0';
    }
    fputs(line, stderr);
}
