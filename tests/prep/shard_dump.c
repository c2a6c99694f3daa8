/* Reads shards with the shard reader and prints them as JSON lines, for the prep tests to compare
 * with what they expect: per file {"file", "layout": [P, Dv, dtype], "count"}, then per sample
 * {"id", "record", "input_ids", "labels", "images", "retrieved", "tox", "cap_ids", "caption",
 * "features"} (float16 as its bit patterns, float32 as decimal with 9 digits). Any read error
 * ends it with status 1 and the reader's message.
 *   prep_shard_dump FILE.tgas... */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "trainer/shard.h"

static void print_ids(const char *key, const int32_t *ids, int32_t n) {
    printf(", \"%s\": [", key);
    for (int32_t i = 0; i < n; i++)
        printf(i ? ", %d" : "%d", ids[i]);
    printf("]");
}

static void print_features(const tga_shard_sample *s, const tga_shard_layout *layout) {
    size_t n = (size_t)s->n_images * (size_t)layout->patches_per_image * (size_t)layout->feature_dim;
    printf(", \"features\": [");
    for (size_t i = 0; i < n; i++) {
        if (layout->feature_dtype == TGA_SHARD_F16)
            printf(i ? ", %u" : "%u", ((const uint16_t *)s->features)[i]);
        else
            printf(i ? ", %.9g" : "%.9g", (double)((const float *)s->features)[i]);
    }
    printf("]");
}

static void print_sample(const tga_shard_sample *s, const tga_shard_layout *layout) {
    printf("{\"id\": \"%s\", \"record\": %" PRIu64, s->id, s->record);
    print_ids("input_ids", s->input_ids, s->n_tokens);
    print_ids("labels", s->labels, s->n_tokens);
    printf(", \"images\": [");
    for (int32_t i = 0; i < s->n_images; i++)
        printf(i ? ", [%d, %d]" : "[%d, %d]", s->images[i].start, s->images[i].length);
    printf("], \"retrieved\": [%d, %d], \"tox\": %d", s->retrieved.start, s->retrieved.length, s->tox);
    print_ids("cap_ids", s->cap_ids, s->n_caption_tokens);
    printf(", \"caption\": [%d, %d]", s->caption.start, s->caption.length);
    print_features(s, layout);
    printf("}\n");
}

static int dump(const char *path) {
    tga_shard_reader *r = NULL;
    if (tga_shard_reader_open(&r, path) != TGA_OK) {
        fprintf(stderr, "%s\n", tga_error_message());
        return 1;
    }
    tga_shard_layout layout = tga_shard_reader_layout(r);
    uint64_t n = tga_shard_reader_count(r);
    printf("{\"file\": \"%s\", \"layout\": [%d, %d, %d], \"count\": %" PRIu64 "}\n", path,
           layout.patches_per_image, layout.feature_dim, (int)layout.feature_dtype, n);
    int failed = 0;
    for (uint64_t i = 0; i < n && !failed; i++) {
        tga_shard_sample s;
        if (tga_shard_reader_read(r, i, &s) != TGA_OK) {
            fprintf(stderr, "%s\n", tga_error_message());
            failed = 1;
            continue;
        }
        print_sample(&s, &layout);
        tga_shard_sample_free(&s);
    }
    tga_shard_reader_close(r);
    return failed;
}

int main(int argc, char **argv) {
    int failed = 0;
    for (int i = 1; i < argc && !failed; i++)
        failed = dump(argv[i]);
    return failed;
}
