/* test_gen_util.h -- helpers shared by test_calib_gen.c,
 * test_calib_e2e.c and test_gen_stop.c: files in a per-test temporary directory, and a model
 * directory whose tokenizer_config.json carries a chat template. */
#ifndef GQ_TEST_GEN_UTIL_H
#define GQ_TEST_GEN_UTIL_H

#include <jansson.h>
#include <zlib.h>

#include "test.h"

static char tmp[512];

static inline const char *tpath(const char *name) {
    static char bufs[8][700];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", tmp, name);
    return b;
}

static inline void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    GQ_ASSERT(f);
    fputs(s, f);
    fclose(f);
}

static inline size_t file_size(const char *p) {
    char *d;
    size_t n = 0;
    if (gq_read_file(p, &d, &n) == GQ_OK) free(d);
    return n;
}

/* dir: symlinks to pycoder-5m's files plus a tokenizer_config.json with the given
 * chat_template. */
static inline const char *chat_model_at(const char *dir, const char *tpl) {
    gq_mkdirs(dir);
    static const char *files[] = {"config.json", "model.safetensors", "tokenizer.json", "special_tokens_map.json",
                                  "generation_config.json"};
    char src[1400], dst[1400], cwd[512];
    const char *d = gq_test_data("pycoder-5m");
    GQ_ASSERT(getcwd(cwd, sizeof cwd));
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(src, sizeof src, "%s%s%s/%s", d[0] == '/' ? "" : cwd, d[0] == '/' ? "" : "/", d, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        unlink(dst);
        GQ_ASSERT(symlink(src, dst) == 0);
    }
    json_t *cfg = json_pack("{s:s, s:s, s:s, s:b, s:b, s:s}", "bos_token", "<s>", "eos_token", "</s>", "unk_token",
                            "<unk>", "add_bos_token", 1, "add_eos_token", 0, "chat_template", tpl);
    snprintf(dst, sizeof dst, "%s/tokenizer_config.json", dir);
    json_dump_file(cfg, dst, 0);
    json_decref(cfg);
    return dir;
}

/* tmp/chat-model, as chat_model_at makes it. */
static inline const char *chat_model_dir(const char *tpl) { return chat_model_at(tpath("chat-model"), tpl); }


#endif /* GQ_TEST_GEN_UTIL_H */
