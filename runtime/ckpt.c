/* Checkpoint directories: writing in steps, MANIFEST and DONE, verification, choosing the newest
 * good checkpoint, retention, and reading back (runtime/ckpt.h has the protocol). */
#define _POSIX_C_SOURCE 200809L /* strdup, opendir */

#include "runtime/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/log.h"

#define PATH_CAP 4096
#define MAX_FILE_NAME 200
#define MANIFEST_NAME "MANIFEST"
#define DONE_NAME "DONE"
#define PART_PREFIX "MANIFEST.rank-"
#define MANIFEST_HEADER "tga-checkpoint-manifest 1\n"
/* A manifest line is at most ~240 bytes; this allows hundreds of thousands of files. */
#define MAX_MANIFEST_BYTES ((size_t)64 << 20)
#define MAX_SMALL_FILE 4096

/* ---- names and paths ------------------------------------------------------------------------- */

/* File names go into MANIFEST lines and paths, so they are plain: [A-Za-z0-9._-], not hidden, and
 * not one of the names the protocol itself uses. */
static bool valid_file_name(const char *name) {
    size_t len = strlen(name);
    if (len == 0 || len > MAX_FILE_NAME || name[0] == '.') return false;
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        bool plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                     ch == '.' || ch == '_' || ch == '-';
        if (!plain) return false;
    }
    bool reserved = strcmp(name, MANIFEST_NAME) == 0 || strcmp(name, DONE_NAME) == 0 ||
                    strncmp(name, MANIFEST_NAME ".", sizeof MANIFEST_NAME) == 0 ||
                    strncmp(name, DONE_NAME ".", sizeof DONE_NAME) == 0;
    bool temporary = len >= 4 && strcmp(name + len - 4, ".tmp") == 0;
    return !reserved && !temporary;
}

static tga_status check_file_name(const char *name) {
    if (name && valid_file_name(name)) return TGA_OK;
    return tga_error(TGA_ERR_INTERNAL,
                     "bad checkpoint file name '%s' (1..%d of [A-Za-z0-9._-], not hidden, not MANIFEST*, "
                     "DONE* or *.tmp)",
                     name ? name : "(null)", MAX_FILE_NAME);
}

static tga_status join_path(char *out, size_t cap, const char *dir, const char *name) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return tga_error(TGA_ERR_IO, "path too long: %s/%s", dir, name);
    return TGA_OK;
}

static tga_status checkpoints_dir(const char *run_dir, char *out, size_t cap) {
    return join_path(out, cap, run_dir, "checkpoints");
}

/* step-00001234 (+ suffix, e.g. ".tmp"). */
static tga_status step_dir(const char *run_dir, int64_t step, const char *suffix, char *out, size_t cap) {
    if (step < 0) return tga_error(TGA_ERR_INTERNAL, "checkpoint step %" PRId64 " is negative", step);
    char parent[PATH_CAP], name[64];
    TGA_TRY(checkpoints_dir(run_dir, parent, sizeof parent));
    snprintf(name, sizeof name, "step-%08" PRId64 "%s", step, suffix);
    return join_path(out, cap, parent, name);
}

tga_status tga_ckpt_path(const char *run_dir, int64_t step, const char *file, char *out, size_t cap) {
    if (!file) return step_dir(run_dir, step, "", out, cap);
    char dir[PATH_CAP];
    TGA_TRY(step_dir(run_dir, step, "", dir, sizeof dir));
    return join_path(out, cap, dir, file);
}

/* "step-<digits>" exactly (no suffix) -> the step; -1 otherwise. */
static int64_t parse_step_name(const char *name) {
    if (strncmp(name, "step-", 5) != 0 || !name[5]) return -1;
    int64_t step = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9' || step > (INT64_MAX - 9) / 10) return -1;
        step = step * 10 + (*p - '0');
    }
    return step;
}

static bool is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* ---- file lists (a rank's part, the MANIFEST) -------------------------------------------------- */

typedef struct {
    char name[MAX_FILE_NAME + 1];
    uint64_t size, xxh64;
} file_entry;

typedef struct {
    file_entry *items;
    size_t n, cap;
} file_list;

static tga_status list_add(file_list *l, const char *name, uint64_t size, uint64_t xxh64) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        file_entry *grown = realloc(l->items, cap * sizeof *grown);
        if (!grown) return tga_error(TGA_ERR_NOMEM, "no memory for the checkpoint file list");
        l->items = grown;
        l->cap = cap;
    }
    file_entry *e = &l->items[l->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->size = size;
    e->xxh64 = xxh64;
    return TGA_OK;
}

static int compare_entries(const void *a, const void *b) {
    return strcmp(((const file_entry *)a)->name, ((const file_entry *)b)->name);
}

static const file_entry *list_find(const file_list *l, const char *name) {
    file_entry key;
    snprintf(key.name, sizeof key.name, "%s", name);
    return l->n ? bsearch(&key, l->items, l->n, sizeof key, compare_entries) : NULL;
}

/* Sorted by name; a name listed twice is an error (two ranks wrote the same file). */
static tga_status list_sort(file_list *l, const char *where) {
    if (l->n) qsort(l->items, l->n, sizeof *l->items, compare_entries);
    for (size_t i = 1; i < l->n; i++)
        if (strcmp(l->items[i - 1].name, l->items[i].name) == 0)
            return tga_error(TGA_ERR_FORMAT, "%s: file %s is listed twice", where, l->items[i].name);
    return TGA_OK;
}

/* "<16 hex digits> <size> <name>\n" per file. */
static tga_status list_write(const file_list *l, const char *header, const char *path) {
    tga_file_writer *w = NULL;
    TGA_TRY(tga_file_writer_open(&w, path, TGA_FILE_CREATE));
    tga_status st = tga_file_writer_write(w, header, strlen(header));
    for (size_t i = 0; i < l->n && st == TGA_OK; i++) {
        char line[MAX_FILE_NAME + 64];
        int n = snprintf(line, sizeof line, "%016" PRIx64 " %" PRIu64 " %s\n", l->items[i].xxh64,
                         l->items[i].size, l->items[i].name);
        st = tga_file_writer_write(w, line, (size_t)n);
    }
    if (st != TGA_OK) {
        tga_file_writer_discard(w);
        return st;
    }
    return tga_file_writer_commit(w);
}

static bool parse_hex64(const char *s, uint64_t *v) {
    *v = 0;
    for (int i = 0; i < 16; i++) {
        char ch = s[i];
        int digit = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (digit < 0) return false;
        *v = *v << 4 | (uint64_t)digit;
    }
    return true;
}

/* Decimal digits up to `stop`; advances *p past them. */
static bool parse_u64(const char **p, char stop, uint64_t *v) {
    const char *s = *p;
    *v = 0;
    if (*s < '0' || *s > '9') return false;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (*v > (UINT64_MAX - 9) / 10) return false;
        *v = *v * 10 + (uint64_t)(*s - '0');
    }
    if (*s != stop) return false;
    *p = s + 1;
    return true;
}

static tga_status parse_line(file_list *l, const char *line, const char *path, int line_no) {
    const char *end = strchr(line, '\n'); /* list_parse guarantees one */
    uint64_t hash = 0, size = 0;
    char name[MAX_FILE_NAME + 1] = "";
    bool ok = end - line > 17 && parse_hex64(line, &hash) && line[16] == ' ';
    const char *p = ok ? line + 17 : end;
    ok = ok && parse_u64(&p, ' ', &size) && end > p && (size_t)(end - p) <= MAX_FILE_NAME;
    if (ok) {
        memcpy(name, p, (size_t)(end - p));
        name[end - p] = '\0';
        ok = valid_file_name(name);
    }
    if (!ok)
        return tga_error(TGA_ERR_FORMAT, "%s: line %d: expected '<16 hex digits> <size> <file name>'", path,
                         line_no);
    return list_add(l, name, size, hash);
}

/* "<key><decimal>\n" at *p; advances past it. */
static bool parse_decimal_line(const char **p, const char *key, uint64_t *v) {
    size_t n = strlen(key);
    if (strncmp(*p, key, n) != 0) return false;
    *p += n;
    return parse_u64(p, '\n', v);
}

/* "<key><16 hex digits>\n" at *p; advances past it. */
static bool parse_hex_line(const char **p, const char *key, uint64_t *v) {
    size_t n = strlen(key);
    if (strncmp(*p, key, n) != 0 || !parse_hex64(*p + n, v) || (*p)[n + 16] != '\n') return false;
    *p += n + 17;
    return true;
}

/* Reads a list written by list_write after the given header lines (checked by the caller). */
static tga_status list_parse(file_list *l, const char *text, size_t n, const char *path, int first_line) {
    if (n && text[n - 1] != '\n') return tga_error(TGA_ERR_FORMAT, "%s: truncated (no final newline)", path);
    if (memchr(text, '\0', n)) return tga_error(TGA_ERR_FORMAT, "%s: contains a NUL byte", path);
    int line_no = first_line;
    for (const char *line = text; line < text + n; line = strchr(line, '\n') + 1)
        TGA_TRY(parse_line(l, line, path, line_no++));
    return TGA_OK;
}

static tga_status list_read(file_list *l, const char *path, const char *header) {
    void *data = NULL;
    size_t n = 0;
    TGA_TRY(tga_file_read_all(path, MAX_MANIFEST_BYTES, &data, &n));
    size_t header_len = strlen(header);
    int first_line = 1;
    for (const char *c = header; *c; c++)
        first_line += *c == '\n';
    tga_status st =
        n >= header_len && memcmp(data, header, header_len) == 0
            ? list_parse(l, (const char *)data + header_len, n - header_len, path, first_line)
            : tga_error(TGA_ERR_FORMAT, "%s: does not start with '%.*s'", path, (int)header_len - 1, header);
    free(data);
    return st;
}

/* A rank's list of the files it wrote: <dir>/MANIFEST.rank-00003. */
static tga_status part_path(const char *dir, int rank, char *out, size_t cap) {
    char name[64];
    snprintf(name, sizeof name, PART_PREFIX "%05d", rank);
    return join_path(out, cap, dir, name);
}

/* ---- directories ----------------------------------------------------------------------------- */

typedef tga_status (*entry_fn)(const char *dir, const char *name, void *ctx);

/* Calls fn for every entry but . and .. (stops at the first error). */
static tga_status for_each_entry(const char *dir, entry_fn fn, void *ctx) {
    DIR *d = opendir(dir);
    if (!d) return tga_error(TGA_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
    tga_status st = TGA_OK;
    struct dirent *entry;
    while (st == TGA_OK && (errno = 0, entry = readdir(d)) != NULL)
        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0)
            st = fn(dir, entry->d_name, ctx);
    if (st == TGA_OK && errno != 0) st = tga_error(TGA_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
    closedir(d);
    return st;
}

static tga_status unlink_entry(const char *dir, const char *name, void *ctx) {
    char path[PATH_CAP];
    TGA_TRY(join_path(path, sizeof path, dir, name));
    if (unlink(path) != 0) return tga_error(TGA_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    return TGA_OK;
}

/* Checkpoint directories are flat, so removing one is: its files, then itself. */
static tga_status remove_flat_dir(const char *dir) {
    TGA_TRY(for_each_entry(dir, unlink_entry, NULL));
    if (rmdir(dir) != 0) return tga_error(TGA_ERR_IO, "cannot remove directory %s: %s", dir, strerror(errno));
    return TGA_OK;
}

static tga_status make_dir(const char *path) {
    if (mkdir(path, 0755) == 0 || (errno == EEXIST && is_directory(path))) return TGA_OK;
    return tga_error(TGA_ERR_IO, "cannot create directory %s: %s", path,
                     strerror(errno == EEXIST ? ENOTDIR : errno));
}

/* Removes a directory so that it stops being a checkpoint at once (the rename), then its files. */
static tga_status retire_dir(const char *dir, const char *run_dir, int64_t step) {
    char doomed[PATH_CAP];
    TGA_TRY(step_dir(run_dir, step, ".deleting", doomed, sizeof doomed));
    if (exists(doomed)) TGA_TRY(remove_flat_dir(doomed));
    TGA_TRY(tga_rename_durable(dir, doomed));
    return remove_flat_dir(doomed);
}

/* ---- writing --------------------------------------------------------------------------------- */

tga_status tga_ckpt_begin(const char *run_dir, int64_t step) {
    char parent[PATH_CAP], tmp[PATH_CAP];
    TGA_TRY(checkpoints_dir(run_dir, parent, sizeof parent));
    TGA_TRY(step_dir(run_dir, step, ".tmp", tmp, sizeof tmp));
    if (!is_directory(run_dir))
        return tga_error(TGA_ERR_IO, "cannot write checkpoints into %s: %s", run_dir,
                         exists(run_dir) ? "not a directory" : "no such directory");
    TGA_TRY(make_dir(parent));
    if (exists(tmp)) {
        TGA_WARN("removing %s, left by an interrupted checkpoint", tmp);
        TGA_TRY(remove_flat_dir(tmp));
    }
    TGA_TRY(make_dir(tmp));
    return tga_fsync_dir(parent);
}

struct tga_ckpt_writer {
    char dir[PATH_CAP];
    int rank;
    file_list files;
    tga_tensor_file_writer *tensors; /* the open tensor file, if any */
    char tensors_name[MAX_FILE_NAME + 1];
};

tga_status tga_ckpt_writer_open(tga_ckpt_writer **out, const char *run_dir, int64_t step, int rank) {
    *out = NULL;
    if (rank < 0 || rank > 99999) return tga_error(TGA_ERR_INTERNAL, "checkpoint writer for rank %d", rank);
    tga_ckpt_writer *w = calloc(1, sizeof *w);
    if (!w) return tga_error(TGA_ERR_NOMEM, "no memory for a checkpoint writer");
    w->rank = rank;
    tga_status st = step_dir(run_dir, step, ".tmp", w->dir, sizeof w->dir);
    if (st == TGA_OK && !is_directory(w->dir))
        st = tga_error(TGA_ERR_INTERNAL,
                       "%s does not exist: rank 0 runs tga_ckpt_begin, then a barrier, before "
                       "any rank opens a checkpoint writer",
                       w->dir);
    if (st != TGA_OK) {
        free(w);
        return st;
    }
    *out = w;
    return TGA_OK;
}

static tga_status file_path(const tga_ckpt_writer *w, const char *name, char *out, size_t cap) {
    TGA_TRY(check_file_name(name));
    return join_path(out, cap, w->dir, name);
}

tga_status tga_ckpt_write_blob(tga_ckpt_writer *w, const char *file_name, const void *data, size_t n) {
    char path[PATH_CAP];
    TGA_TRY(file_path(w, file_name, path, sizeof path));
    tga_file_writer *f = NULL;
    TGA_TRY(tga_file_writer_open(&f, path, TGA_FILE_CREATE));
    tga_status st = tga_file_writer_write(f, data, n);
    uint64_t hash = tga_file_writer_xxh64(f);
    if (st != TGA_OK) {
        tga_file_writer_discard(f);
        return st;
    }
    TGA_TRY(tga_file_writer_commit(f));
    return list_add(&w->files, file_name, n, hash);
}

tga_status tga_ckpt_tensors_begin(tga_ckpt_writer *w, const char *file_name, tga_ckpt_codec codec) {
    if (w->tensors)
        return tga_error(TGA_ERR_INTERNAL, "%s: tensor file %s is still open", w->dir, w->tensors_name);
    char path[PATH_CAP];
    TGA_TRY(file_path(w, file_name, path, sizeof path));
    TGA_TRY(tga_tensor_file_create(&w->tensors, path, TGA_FILE_CREATE, codec));
    snprintf(w->tensors_name, sizeof w->tensors_name, "%s", file_name);
    return TGA_OK;
}

tga_status tga_ckpt_tensors_add(tga_ckpt_writer *w, const tga_ckpt_tensor *tensor) {
    if (!w->tensors) return tga_error(TGA_ERR_INTERNAL, "%s: no tensor file is open", w->dir);
    return tga_tensor_file_add(w->tensors, tensor);
}

tga_status tga_ckpt_tensors_end(tga_ckpt_writer *w) {
    if (!w->tensors) return tga_error(TGA_ERR_INTERNAL, "%s: no tensor file is open", w->dir);
    uint64_t size = 0, hash = 0;
    tga_status st = tga_tensor_file_finish(w->tensors, &size, &hash);
    w->tensors = NULL;
    TGA_TRY(st);
    return list_add(&w->files, w->tensors_name, size, hash);
}

tga_status tga_ckpt_write_tensors(tga_ckpt_writer *w, const char *file_name, const tga_ckpt_tensor *tensors,
                                  int n, tga_ckpt_codec codec) {
    TGA_TRY(tga_ckpt_tensors_begin(w, file_name, codec));
    for (int i = 0; i < n; i++)
        TGA_TRY(tga_ckpt_tensors_add(w, &tensors[i]));
    return tga_ckpt_tensors_end(w);
}

void tga_ckpt_writer_discard(tga_ckpt_writer *w) {
    if (!w) return;
    tga_tensor_file_discard(w->tensors);
    for (size_t i = 0; i < w->files.n; i++) {
        char path[PATH_CAP];
        if (join_path(path, sizeof path, w->dir, w->files.items[i].name) == TGA_OK) unlink(path);
    }
    free(w->files.items);
    free(w);
}

tga_status tga_ckpt_writer_close(tga_ckpt_writer *w) {
    char part[PATH_CAP];
    tga_status st =
        w->tensors ? tga_error(TGA_ERR_INTERNAL, "%s: tensor file %s was not ended", w->dir, w->tensors_name)
                   : part_path(w->dir, w->rank, part, sizeof part);
    if (st == TGA_OK) st = list_write(&w->files, "", part);
    /* the directory entries of this rank's files must be durable before rank 0 renames the directory */
    if (st == TGA_OK) st = tga_fsync_dir(w->dir);
    if (st != TGA_OK) {
        tga_ckpt_writer_discard(w);
        return st;
    }
    free(w->files.items);
    free(w);
    return TGA_OK;
}

/* ---- commit: MANIFEST, rename, DONE ------------------------------------------------------------ */

typedef struct {
    const file_list *listed;
    int world;
    size_t seen;
} commit_scan;

/* The rank of a name PART_PREFIX + five digits, or -1. */
static int part_rank(const char *name) {
    const char *digits = name + strlen(PART_PREFIX);
    if (strlen(digits) != 5 || strspn(digits, "0123456789") != 5) return -1;
    return atoi(digits);
}

/* Every file in step-N.tmp must be a rank's part list or a file some rank listed, with that size. */
static tga_status check_written_file(const char *dir, const char *name, void *ctx) {
    commit_scan *scan = ctx;
    char path[PATH_CAP];
    TGA_TRY(join_path(path, sizeof path, dir, name));
    if (strncmp(name, PART_PREFIX, strlen(PART_PREFIX)) == 0) {
        int rank = part_rank(name);
        if (rank >= 0 && rank < scan->world) return TGA_OK;
        return tga_error(TGA_ERR_FORMAT, "%s: not the file list of a rank in a world of %d", path,
                         scan->world);
    }
    const file_entry *e = list_find(scan->listed, name);
    if (!e) return tga_error(TGA_ERR_FORMAT, "%s: in the checkpoint directory, but no rank listed it", path);
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != e->size)
        return tga_error(TGA_ERR_IO, "%s: expected a file of %" PRIu64 " bytes as its writer recorded", path,
                         e->size);
    scan->seen++;
    return TGA_OK;
}

static tga_status gather_parts(const char *tmp, int world, file_list *all) {
    for (int rank = 0; rank < world; rank++) {
        char path[PATH_CAP];
        TGA_TRY(part_path(tmp, rank, path, sizeof path));
        if (!exists(path))
            return tga_error(TGA_ERR_IO,
                             "%s is missing: rank %d did not close its checkpoint writer before the "
                             "barrier",
                             path, rank);
        TGA_TRY(list_read(all, path, ""));
    }
    return list_sort(all, tmp);
}

static tga_status remove_parts(const char *tmp, int world) {
    for (int rank = 0; rank < world; rank++) {
        char path[PATH_CAP];
        TGA_TRY(part_path(tmp, rank, path, sizeof path));
        if (unlink(path) != 0) return tga_error(TGA_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    }
    return tga_fsync_dir(tmp);
}

static tga_status write_manifest(const char *tmp, int64_t step, int world) {
    file_list all = {0};
    commit_scan scan = {&all, world, 0};
    char path[PATH_CAP], header[128];
    tga_status st = gather_parts(tmp, world, &all);
    if (st == TGA_OK) st = for_each_entry(tmp, check_written_file, &scan);
    if (st == TGA_OK && scan.seen != all.n)
        st = tga_error(TGA_ERR_IO, "%s: %zu files were listed but only %zu are there", tmp, all.n, scan.seen);
    snprintf(header, sizeof header, MANIFEST_HEADER "step %" PRId64 "\n", step);
    if (st == TGA_OK) st = join_path(path, sizeof path, tmp, MANIFEST_NAME);
    if (st == TGA_OK) st = list_write(&all, header, path);
    free(all.items);
    return st;
}

/* step-N may exist from an earlier timeline (a run resumed from an older checkpoint after the newer
 * one failed verification): the new one replaces it. */
static tga_status move_into_place(const char *tmp, const char *final, const char *run_dir, int64_t step) {
    if (!exists(final)) return tga_rename_durable(tmp, final);
    char replaced[PATH_CAP];
    TGA_TRY(step_dir(run_dir, step, ".replaced", replaced, sizeof replaced));
    TGA_WARN("replacing the existing checkpoint %s", final);
    if (exists(replaced)) TGA_TRY(remove_flat_dir(replaced));
    TGA_TRY(tga_rename_durable(final, replaced));
    TGA_TRY(tga_rename_durable(tmp, final));
    return remove_flat_dir(replaced);
}

tga_status tga_ckpt_commit(const char *run_dir, int64_t step, int world) {
    if (world < 1) return tga_error(TGA_ERR_INTERNAL, "tga_ckpt_commit: world of %d ranks", world);
    char tmp[PATH_CAP], final[PATH_CAP];
    TGA_TRY(step_dir(run_dir, step, ".tmp", tmp, sizeof tmp));
    TGA_TRY(step_dir(run_dir, step, "", final, sizeof final));
    TGA_TRY(write_manifest(tmp, step, world));
    TGA_TRY(remove_parts(tmp, world));
    return move_into_place(tmp, final, run_dir, step);
}

tga_status tga_ckpt_mark_done(const char *run_dir, int64_t step) {
    char manifest[PATH_CAP], done[PATH_CAP], text[128];
    TGA_TRY(tga_ckpt_path(run_dir, step, MANIFEST_NAME, manifest, sizeof manifest));
    TGA_TRY(tga_ckpt_path(run_dir, step, DONE_NAME, done, sizeof done));
    uint64_t size = 0, hash = 0;
    TGA_TRY(tga_file_hash(manifest, &size, &hash));
    int n = snprintf(text, sizeof text, "step %" PRId64 "\nmanifest %016" PRIx64 "\n", step, hash);
    return tga_file_write_atomic(done, text, (size_t)n);
}

/* ---- verification ---------------------------------------------------------------------------- */

static tga_status read_done(const char *dir, int64_t *step, uint64_t *manifest_hash) {
    char path[PATH_CAP];
    TGA_TRY(join_path(path, sizeof path, dir, DONE_NAME));
    void *data = NULL;
    size_t n = 0;
    TGA_TRY(tga_file_read_all(path, MAX_SMALL_FILE, &data, &n));
    const char *p = data;
    uint64_t value = 0;
    bool ok = parse_decimal_line(&p, "step ", &value) && value <= INT64_MAX &&
              parse_hex_line(&p, "manifest ", manifest_hash) && *p == '\0';
    free(data);
    *step = (int64_t)value;
    return ok ? TGA_OK
              : tga_error(TGA_ERR_FORMAT, "%s: expected 'step <n>' and 'manifest <16 hex digits>'", path);
}

static tga_status read_manifest(const char *dir, int64_t step, uint64_t expected_hash, file_list *files) {
    char path[PATH_CAP], header[128];
    TGA_TRY(join_path(path, sizeof path, dir, MANIFEST_NAME));
    uint64_t size = 0, hash = 0;
    TGA_TRY(tga_file_hash(path, &size, &hash));
    if (hash != expected_hash)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: checksum %016" PRIx64 " is not the %016" PRIx64 " that DONE recorded", path,
                         hash, expected_hash);
    snprintf(header, sizeof header, MANIFEST_HEADER "step %" PRId64 "\n", step);
    TGA_TRY(list_read(files, path, header));
    return list_sort(files, path);
}

static tga_status check_listed(const char *dir, const char *name, void *ctx) {
    if (strcmp(name, MANIFEST_NAME) == 0 || strcmp(name, DONE_NAME) == 0 || list_find(ctx, name))
        return TGA_OK;
    return tga_error(TGA_ERR_FORMAT, "%s/%s: not listed in the MANIFEST", dir, name);
}

static tga_status verify_file(const char *dir, const file_entry *e) {
    char path[PATH_CAP];
    TGA_TRY(join_path(path, sizeof path, dir, e->name));
    uint64_t size = 0, hash = 0;
    TGA_TRY(tga_file_hash(path, &size, &hash));
    if (size != e->size)
        return tga_error(TGA_ERR_FORMAT, "%s: %" PRIu64 " bytes, but the MANIFEST says %" PRIu64, path, size,
                         e->size);
    if (hash != e->xxh64)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: checksum mismatch (MANIFEST says xxh64 %016" PRIx64 ", the file has %016" PRIx64
                         ")",
                         path, e->xxh64, hash);
    return TGA_OK;
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

tga_status tga_ckpt_verify(const char *ckpt_dir) {
    int64_t step = 0;
    uint64_t manifest_hash = 0;
    TGA_TRY(read_done(ckpt_dir, &step, &manifest_hash));
    int64_t named = parse_step_name(base_name(ckpt_dir));
    if (named >= 0 && named != step)
        return tga_error(TGA_ERR_FORMAT, "%s: DONE is for step %" PRId64, ckpt_dir, step);
    file_list files = {0};
    tga_status st = read_manifest(ckpt_dir, step, manifest_hash, &files);
    if (st == TGA_OK) st = for_each_entry(ckpt_dir, check_listed, &files);
    for (size_t i = 0; i < files.n && st == TGA_OK; i++)
        st = verify_file(ckpt_dir, &files.items[i]);
    free(files.items);
    return st;
}

/* ---- finding and pruning --------------------------------------------------------------------- */

typedef struct {
    int64_t *steps;
    size_t n, cap;
} step_list;

static tga_status step_list_add(step_list *l, int64_t step) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        int64_t *grown = realloc(l->steps, cap * sizeof *grown);
        if (!grown) return tga_error(TGA_ERR_NOMEM, "no memory for the list of checkpoints");
        l->steps = grown;
        l->cap = cap;
    }
    l->steps[l->n++] = step;
    return TGA_OK;
}

static tga_status collect_step(const char *dir, const char *name, void *ctx) {
    int64_t step = parse_step_name(name);
    return step < 0 ? TGA_OK : step_list_add(ctx, step);
}

static int compare_steps(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Steps of the directories named step-N that hold a DONE, ascending. */
static tga_status complete_steps(const char *run_dir, bool warn_incomplete, step_list *complete) {
    char parent[PATH_CAP];
    TGA_TRY(checkpoints_dir(run_dir, parent, sizeof parent));
    if (!exists(parent)) return TGA_OK;
    step_list all = {0};
    tga_status st = for_each_entry(parent, collect_step, &all);
    if (all.n) qsort(all.steps, all.n, sizeof *all.steps, compare_steps);
    for (size_t i = 0; i < all.n && st == TGA_OK; i++) {
        char done[PATH_CAP];
        st = tga_ckpt_path(run_dir, all.steps[i], DONE_NAME, done, sizeof done);
        if (st != TGA_OK) break;
        if (exists(done))
            st = step_list_add(complete, all.steps[i]);
        else if (warn_incomplete)
            TGA_WARN("ignoring the incomplete checkpoint step %" PRId64 " in %s (no DONE)", all.steps[i],
                     parent);
    }
    free(all.steps);
    return st;
}

tga_status tga_ckpt_find_latest(const char *run_dir, int64_t *step, int *found) {
    *found = 0;
    *step = -1;
    step_list complete = {0};
    TGA_TRY(complete_steps(run_dir, true, &complete));
    tga_status st = TGA_OK;
    char first_failure[1024] = "";
    for (size_t i = complete.n; i-- > 0 && !*found;) {
        char dir[PATH_CAP];
        st = tga_ckpt_path(run_dir, complete.steps[i], NULL, dir, sizeof dir);
        if (st != TGA_OK) break;
        tga_error_clear();
        if (tga_ckpt_verify(dir) == TGA_OK) {
            *found = 1;
            *step = complete.steps[i];
            break;
        }
        if (!first_failure[0]) snprintf(first_failure, sizeof first_failure, "%s", tga_error_message());
        TGA_WARN("checkpoint %s failed verification: %s; falling back to an older checkpoint", dir,
                 tga_error_message());
        tga_error_clear();
    }
    if (st == TGA_OK && !*found && complete.n)
        st = tga_error(TGA_ERR_FORMAT,
                       "no checkpoint in %s/checkpoints verifies (%zu complete; the newest failed: %s)",
                       run_dir, complete.n, first_failure);
    free(complete.steps);
    return st;
}

/* Sum of the regular files' sizes in one directory (not recursive). */
static uint64_t directory_bytes(const char *dir) {
    uint64_t total = 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d));) {
        char path[PATH_CAP];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path && stat(path, &st) == 0 &&
            S_ISREG(st.st_mode))
            total += (uint64_t)st.st_size;
    }
    closedir(d);
    return total;
}

uint64_t tga_ckpt_find_latest_bytes(const char *run_dir) {
    step_list complete = {0};
    if (complete_steps(run_dir, false, &complete) != TGA_OK) {
        tga_error_clear();
        return 0;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < complete.n; i++) {
        char dir[PATH_CAP];
        if (tga_ckpt_path(run_dir, complete.steps[i], NULL, dir, sizeof dir) == TGA_OK) total += directory_bytes(dir);
    }
    free(complete.steps);
    return total;
}

static bool retained(const step_list *complete, size_t i, int keep_last, int64_t keep_every,
                     int64_t protect_step) {
    int64_t step = complete->steps[i];
    return i + (size_t)keep_last >= complete->n || (keep_every > 0 && step % keep_every == 0) ||
           step == protect_step;
}

tga_status tga_ckpt_retain(const char *run_dir, int keep_last, int64_t keep_every, int64_t protect_step) {
    if (keep_last < 1 || keep_every < 0)
        return tga_error(TGA_ERR_CONFIG,
                         "checkpoint retention: keep_last %d (>= 1) and keep_every %" PRId64
                         " (>= 0, 0 for none)",
                         keep_last, keep_every);
    step_list complete = {0};
    TGA_TRY(complete_steps(run_dir, false, &complete));
    tga_status st = TGA_OK;
    for (size_t i = 0; i < complete.n && st == TGA_OK; i++) {
        if (retained(&complete, i, keep_last, keep_every, protect_step)) continue;
        char dir[PATH_CAP];
        st = tga_ckpt_path(run_dir, complete.steps[i], NULL, dir, sizeof dir);
        if (st == TGA_OK) st = retire_dir(dir, run_dir, complete.steps[i]);
        if (st == TGA_OK) TGA_DEBUG("removed checkpoint %s (retention)", dir);
    }
    free(complete.steps);
    return st;
}

/* ---- reading --------------------------------------------------------------------------------- */

tga_status tga_ckpt_read_blob(const char *ckpt_dir, const char *file_name, size_t max_bytes, void **data,
                              size_t *n) {
    char path[PATH_CAP];
    TGA_TRY(check_file_name(file_name));
    TGA_TRY(join_path(path, sizeof path, ckpt_dir, file_name));
    return tga_file_read_all(path, max_bytes, data, n);
}

/* Piece i covers [global_first, *piece_end): the next piece's start, or its own length for the last
 * one. Copies its overlap with [first, end) into out (which holds [first, end)). */
static tga_status read_piece(const char *ckpt_dir, const tga_ckpt_piece *pieces, int i, int n_pieces,
                             tga_ckpt_dtype dtype, int64_t first, int64_t end, unsigned char *out,
                             int64_t *piece_end) {
    char path[PATH_CAP];
    TGA_TRY(check_file_name(pieces[i].file));
    TGA_TRY(join_path(path, sizeof path, ckpt_dir, pieces[i].file));
    tga_ckpt_reader *r = NULL;
    TGA_TRY(tga_ckpt_reader_open(&r, path));
    const tga_ckpt_tensor_info *info = tga_ckpt_reader_find(r, pieces[i].tensor);
    int64_t start = pieces[i].global_first;
    *piece_end = i + 1 < n_pieces ? pieces[i + 1].global_first : start + (info ? info->count : 0);
    tga_status st = TGA_OK;
    if (!info || info->ndim != 1 || info->count != *piece_end - start)
        st = tga_error(TGA_ERR_FORMAT,
                       "%s: expected a 1-D tensor '%s' of %" PRId64 " values (global [%" PRId64 ", %" PRId64
                       "))",
                       path, pieces[i].tensor, *piece_end - start, start, *piece_end);
    int64_t lo = first > start ? first : start, hi = end < *piece_end ? end : *piece_end;
    if (st == TGA_OK && lo < hi)
        st = tga_ckpt_read_range(r, pieces[i].tensor, dtype, lo - start, hi - lo,
                                 out + (size_t)(lo - first) * tga_ckpt_dtype_size(dtype));
    tga_ckpt_reader_close(r);
    return st;
}

tga_status tga_ckpt_read_resharded(const char *ckpt_dir, const tga_ckpt_piece *pieces, int n_pieces,
                                   tga_ckpt_dtype dtype, int64_t first, int64_t count, void *out) {
    if (n_pieces < 1 || first < 0 || count < 0 || !tga_ckpt_dtype_size(dtype) ||
        pieces[0].global_first > first)
        return tga_error(TGA_ERR_INTERNAL, "%s: cannot read [%" PRId64 ", +%" PRId64 ") from %d pieces",
                         ckpt_dir, first, count, n_pieces);
    for (int i = 1; i < n_pieces; i++)
        if (pieces[i].global_first < pieces[i - 1].global_first)
            return tga_error(TGA_ERR_INTERNAL, "%s: pieces out of order at %d", ckpt_dir, i);
    int64_t end = first + count, covered = first;
    for (int i = 0; i < n_pieces && covered < end; i++) {
        bool before_range = i + 1 < n_pieces && pieces[i + 1].global_first <= first;
        if (!before_range)
            TGA_TRY(read_piece(ckpt_dir, pieces, i, n_pieces, dtype, first, end, out, &covered));
    }
    if (covered < end)
        return tga_error(TGA_ERR_FORMAT,
                         "%s: the pieces end at element %" PRId64 ", before the %" PRId64 " asked for",
                         ckpt_dir, covered, end);
    return TGA_OK;
}

/* ---- base model identity --------------------------------------------------------------------- */

tga_status tga_ckpt_write_identity(tga_ckpt_writer *w, const char *blob_name, uint64_t size, uint64_t hash) {
    char text[128];
    int n = snprintf(text, sizeof text, "size %" PRIu64 "\nxxh64 %016" PRIx64 "\n", size, hash);
    return tga_ckpt_write_blob(w, blob_name, text, (size_t)n);
}

tga_status tga_ckpt_check_identity(const char *ckpt_dir, const char *blob_name, const char *model_path, uint64_t size,
                                   uint64_t hash) {
    void *data = NULL;
    size_t n = 0;
    TGA_TRY(tga_ckpt_read_blob(ckpt_dir, blob_name, MAX_SMALL_FILE, &data, &n));
    const char *p = data;
    uint64_t want_size = 0, want_hash = 0;
    bool ok =
        parse_decimal_line(&p, "size ", &want_size) && parse_hex_line(&p, "xxh64 ", &want_hash) && *p == '\0';
    free(data);
    if (!ok)
        return tga_error(TGA_ERR_FORMAT, "%s/%s: expected 'size <bytes>' and 'xxh64 <16 hex digits>'",
                         ckpt_dir, blob_name);
    if (size == want_size && hash == want_hash) return TGA_OK;
    return tga_error(TGA_ERR_CONFIG,
                     "%s (size %" PRIu64 ", xxh64 %016" PRIx64 ") is not the base model the checkpoint "
                     "%s was trained on (size %" PRIu64 ", xxh64 %016" PRIx64 ")",
                     model_path, size, hash, ckpt_dir, want_size, want_hash);
}
