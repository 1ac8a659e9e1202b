/*
 * fuzz_st.c -- libFuzzer target for the safetensors reader (make fuzz; see
 * tests/fuzz/README.md).
 *
 * Each input is written to a file in a private temporary directory and
 * opened as a .safetensors file; an input that starts with '{' is also
 * opened as a model.safetensors.index.json next to two valid shards
 * (a.safetensors: tensors "a", "b"; b.safetensors: tensor "c"), so the index
 * checks are fuzzed too. Every opened file is walked: find every tensor by
 * name, read_f32 the float ones, check_shape, release, read the metadata.
 * Any crash, sanitizer report, leak or GQ_ASSERT abort is a finding.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gq/st.h"

static char dir[256], file_path[300], index_path[300];

static void write_file(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(buf, 1, n, f) != n) abort();
    if (fclose(f) != 0) abort();
}

static void write_shard(const char *name, const char *header, const void *data, size_t n) {
    char path[300];
    size_t h = strlen(header);
    uint8_t *buf = malloc(8 + h + n);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    memcpy(buf + 8 + h, data, n);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_file(path, buf, 8 + h + n);
    free(buf);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *base = getenv("TMPDIR");
    if (access("/dev/shm", W_OK) == 0) base = "/dev/shm"; /* tmpfs: fast rewrites */
    snprintf(dir, sizeof dir, "%s/gq-fuzz-st-%d", base ? base : "/tmp", (int)getpid());
    gq_rmtree(dir);
    if (gq_mkdirs(dir) != GQ_OK) abort();
    snprintf(file_path, sizeof file_path, "%s/input.safetensors", dir);
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
    const float ab[3] = {1.0f, -2.0f, 0.5f};
    write_shard("a.safetensors",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[8,12]}}",
                ab, sizeof ab);
    const uint16_t c[2] = {0x3c00, 0x4000};
    write_shard("b.safetensors", "{\"c\":{\"dtype\":\"F16\",\"shape\":[1,2],\"data_offsets\":[0,4]}}", c, sizeof c);
    return 0;
}

static void walk(const char *path) {
    gq_st *st = NULL;
    if (gq_st_open(&st, path) != GQ_OK) {
        if (st) abort();            /* *out must be NULL on failure */
        if (!gq_errmsg()[0]) abort(); /* and a message recorded */
        return;
    }
    for (int i = 0; i < gq_st_count(st); i++) {
        const gq_st_tensor *t = gq_st_at(st, i);
        if (gq_st_find(st, t->name) != t) abort();
        if (t->file < 0 || t->file >= gq_st_nfiles(st)) abort();
        if (t->nbytes > gq_st_file_size(st, t->file)) abort();
        if (t->dtype == GQ_DT_F32 || t->dtype == GQ_DT_F16 || t->dtype == GQ_DT_BF16 || t->dtype == GQ_DT_F64) {
            float *dst = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
            (void)gq_st_read_f32(st, t, dst);
            free(dst);
        } else {
            volatile uint8_t sum = 0; /* touch every byte of the span */
            for (size_t k = 0; k < t->nbytes; k++) sum += ((const uint8_t *)t->data)[k];
            (void)sum;
        }
        const int64_t dims[2] = {-1, 2};
        (void)gq_st_check_shape(st, t, 2, dims);
        gq_st_release(st, t);
    }
    for (int i = 0; i < gq_st_meta_count(st); i++)
        if (!gq_st_meta(st, gq_st_meta_key(st, i))) abort();
    gq_st_close(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    write_file(file_path, data, size);
    walk(file_path);
    if (size > 0 && data[0] == '{') {
        write_file(index_path, data, size);
        walk(index_path);
        unlink(index_path);
    }
    return 0;
}
