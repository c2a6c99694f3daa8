/* Refusal detection for the DSR (defense success rate, TGA-METHOD.md §5): promptfoo's keyword
 * check `isBasicRefusal` (promptfoo@0.121.20), with its two phrase lists read from the assets
 * folder (../shared/assets/refusals/, see its README).
 *
 * promptfoo lower-cases each phrase, and for a response:
 *   r = normalizeApostrophes(response.trim().toLowerCase())     ' U+2032 U+2019 -> '
 *   refusal = some prefix p: r.startsWith(p)
 *          || some substring s: /\b<s, regex-escaped>\b/.test(r)
 * Reproduced here on UTF-8 bytes, exactly for every input: trim() strips JavaScript's white space
 * and line terminators; toLowerCase() matters to an ASCII phrase only where it yields ASCII
 * (A-Z, U+0130 -> "i" U+0307, U+212A KELVIN SIGN -> "k"); `\b` without the u flag sees only
 * [A-Za-z0-9_] as word characters, so every byte of a non-ASCII character is a non-word
 * character, and so is invalid UTF-8 (JavaScript would see U+FFFD). */
#ifndef TGA_TRAINER_REFUSAL_H
#define TGA_TRAINER_REFUSAL_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/error.h"

#define TGA_REFUSAL_PREFIXES_FILE "refusal_prefixes.txt"
#define TGA_REFUSAL_SUBSTRINGS_FILE "refusal_substrings.txt"

typedef struct tga_refusal_detector tga_refusal_detector;

/* The assets folder: $TGA_ASSETS, else <source tree>/../shared/assets, where the source tree is
 * $TGA_SOURCE_DIR or the first folder above the running executable (up to four levels) that
 * holds configs/templates. TGA_ERR_CONFIG when none is found. */
tga_status tga_refusal_assets_dir(char *out, size_t size);

/* Loads <assets_dir>/refusals/refusal_prefixes.txt and refusal_substrings.txt (assets_dir NULL:
 * tga_refusal_assets_dir). Each file: ASCII phrases, one per line; an empty or non-ASCII phrase is
 * TGA_ERR_FORMAT naming the file and line (an empty prefix would make every response a refusal). */
tga_status tga_refusal_load(const char *assets_dir, tga_refusal_detector **out);
void tga_refusal_free(tga_refusal_detector *d); /* NULL is a no-op */

size_t tga_refusal_prefix_count(const tga_refusal_detector *d);
size_t tga_refusal_substring_count(const tga_refusal_detector *d);

/* promptfoo's isBasicRefusal on len bytes of UTF-8 text (NULs allowed) into *is_refusal. */
tga_status tga_refusal_check(const tga_refusal_detector *d, const char *text, size_t len, bool *is_refusal);

#endif
