/*
 * test_st_write.c -- the streaming safetensors writer: byte-identical output
 * to the HF reference writer (golden file), round trips of every dtype,
 * sharding with an index (re-opened via the directory, the index and each
 * shard), a sharded copy of the real pycoder-5m checkpoint, and writer errors.
 *
 * GQ_ST_EXPORT=dir keeps copies of the written files there, for
 * tests/ref/check_st_python.py (HF safetensors + transformers loading).
 */
#include <dirent.h>
#include <jansson.h>

#include "gq/st.h"
#include "test.h"
#include "test_st_util.h"

static const char *tmp;

/* Deterministic test bytes: byte i of a tensor with seed s. */
static void fill_bytes(uint8_t *p, size_t n, int seed) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 31u + (unsigned)seed * 17u + 7u);
}

/* Finite, distinct float values (n elements of dt), for the python check. */
static void fill_float(void *p, gq_dtype dt, size_t n, int seed) {
    for (size_t i = 0; i < n; i++) {
        float v = (float)(seed * 10 + (int)(i % 64)) * 0.5f - 8.0f;
        if (dt == GQ_DT_F32) ((float *)p)[i] = v;
        else if (dt == GQ_DT_F64) ((double *)p)[i] = v;
        else if (dt == GQ_DT_F16) ((uint16_t *)p)[i] = gq_f32_to_f16(v);
        else if (dt == GQ_DT_BF16) ((uint16_t *)p)[i] = gq_f32_to_bf16(v);
    }
}

/* Names of the entries of dir, sorted, joined by ' ' into buf. */
static const char *dir_listing(const char *dir, char *buf, size_t cap) {
    char *names[64];
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) && n < 64)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) names[n++] = gq_strdup(e->d_name);
    if (d) closedir(d);
    for (int i = 1; i < n; i++) /* insertion sort: tiny lists */
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < n; i++) {
        if (k < cap) k += (size_t)snprintf(buf + k, cap - k, "%s%s", i ? " " : "", names[i]);
        free(names[i]);
    }
    return buf;
}

static void export_copy(const char *src, const char *name) {
    const char *dir = getenv("GQ_ST_EXPORT");
    if (!dir) return;
    gq_mkdirs(dir);
    if (gq_is_dir(src)) {
        char sub[1024];
        snprintf(sub, sizeof sub, "%s/%s", dir, name);
        gq_mkdirs(sub);
        DIR *d = opendir(src);
        struct dirent *e;
        while (d && (e = readdir(d)))
            if (e->d_name[0] != '.') gq_copy_file(st_path(src, e->d_name), st_path(sub, e->d_name));
        if (d) closedir(d);
    } else {
        gq_copy_file(src, st_path(dir, name));
    }
}

/* The tensors of tests/ref/gen_st_golden.py, built in C, must give the very
 * bytes the HF writer produced (header text, padding, order, data). */
static void test_golden(void) {
    TEST_BEGIN("golden (HF save_file)");
    float a[6], b[6], empty[1] = {0};
    uint16_t norm[5];
    double scale = 1.5;
    uint8_t bytes[3];
    for (int i = 0; i < 6; i++) {
        a[i] = (float)i - 2.0f;
        b[i] = (float)i * 0.5f - 1.0f;
    }
    for (int i = 0; i < 5; i++) norm[i] = gq_f32_to_f16((float)i * 0.25f);
    for (int i = 0; i < 3; i++) bytes[i] = (uint8_t)(7 * i + 1);
    const gq_st_item items[] = {
        {"model.b.weight", GQ_DT_F32, 2, {2, 3}, b}, {"model.a.weight", GQ_DT_F32, 2, {2, 3}, a},
        {"model.norm.weight", GQ_DT_F16, 1, {5}, norm}, {"scale", GQ_DT_F64, 0, {0}, &scale},
        {"empty", GQ_DT_F32, 2, {0, 4}, empty},        {"bytes", GQ_DT_U8, 1, {3}, bytes},
    };
    const char *path = st_path(tmp, "golden.safetensors");
    TEST_OK(gq_st_write_file(path, items, 6, NULL, 0), "write golden tensors");
    char *got = NULL, *want = NULL;
    size_t ng = 0, nw = 0;
    TEST_OK(gq_read_file(path, &got, &ng), "read back");
    TEST_OK(gq_read_file(gq_test_data("st_golden/hf_small.safetensors"), &want, &nw), "read fixture");
    size_t diff = 0;
    while (got && want && diff < ng && diff < nw && got[diff] == want[diff]) diff++;
    TEST_CHECK(got && want && ng == nw && diff == ng,
               "byte-identical to HF save_file: %zu vs %zu bytes, first difference at byte %zu", ng, nw, diff);
    free(got);
    free(want);
}

/* Every dtype, a 0-d scalar, 0-element tensors, odd-sized F16 next to I32:
 * bytes, shapes, order, alignment and metadata survive a round trip. */
static void test_roundtrip(void) {
    TEST_BEGIN("round trip");
    enum { N = 13 };
    static uint8_t data[N][256];
    gq_st_item items[N] = {
        {"f16.odd", GQ_DT_F16, 1, {5}, NULL},        {"i32.after", GQ_DT_I32, 1, {3}, NULL},
        {"f32", GQ_DT_F32, 2, {3, 7}, NULL},          {"bf16", GQ_DT_BF16, 3, {1, 3, 1}, NULL},
        {"f64.scalar", GQ_DT_F64, 0, {0}, NULL},      {"i64", GQ_DT_I64, 1, {2}, NULL},
        {"i16", GQ_DT_I16, 1, {3}, NULL},             {"i8", GQ_DT_I8, 1, {7}, NULL},
        {"u8", GQ_DT_U8, 2, {1, 5}, NULL},            {"bool", GQ_DT_BOOL, 1, {3}, NULL},
        {"empty.f32", GQ_DT_F32, 2, {0, 3}, NULL},    {"empty.u8", GQ_DT_U8, 1, {0}, NULL},
        {"z.f16.odd", GQ_DT_F16, 2, {1, 3}, NULL},
    };
    for (int k = 0; k < N; k++) {
        fill_bytes(data[k], sizeof data[k], k);
        items[k].data = data[k];
    }
    for (int i = 0; i < 3; i++) data[9][i] = (uint8_t)(i & 1); /* BOOL: 0/1 */
    /* Float tensors hold finite values (python check compares as arrays). */
    for (int i = 0; i < 21; i++) ((float *)(void *)data[2])[i] = (float)i * 0.75f - 3.0f;
    for (int i = 0; i < 5; i++) ((uint16_t *)(void *)data[0])[i] = gq_f32_to_f16((float)i - 1.5f);
    for (int i = 0; i < 3; i++) ((uint16_t *)(void *)data[12])[i] = gq_f32_to_f16((float)i * 8.0f);
    for (int i = 0; i < 3; i++) ((uint16_t *)(void *)data[3])[i] = gq_f32_to_bf16((float)i + 0.5f);
    *(double *)(void *)data[4] = -2.25;
    const char *meta[] = {"gq.note", "r\xc3\xa9sum\xc3\xa9 \"quoted\"", "format", "pt", "k", "v"};
    const char *path = st_path(tmp, "rt.safetensors");
    TEST_OK(gq_st_write_file(path, items, N, meta, 3), "write %d tensors", N);
    export_copy(path, "roundtrip.safetensors");

    /* Raw framing: header length a multiple of 8, header JSON + spaces. */
    char *raw = NULL;
    size_t nraw = 0;
    TEST_OK(gq_read_file(path, &raw, &nraw), "read raw");
    uint64_t hlen = 0;
    for (int i = 7; raw && i >= 0; i--) hlen = (hlen << 8) | (uint8_t)raw[i];
    TEST_CHECK(hlen % 8 == 0 && 8 + hlen <= nraw, "header length %llu is a multiple of 8",
               (unsigned long long)hlen);
    TEST_CHECK(raw && raw[8] == '{' && raw[8 + hlen - 1] != 0, "header starts with '{', no NUL padding");
    free(raw);

    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, path), "re-open");
    if (!st) return;
    TEST_CHECK(gq_st_count(st) == N, "%d tensors, got %d", N, gq_st_count(st));
    int same = 0, aligned = 0;
    for (int k = 0; k < N; k++) {
        const gq_st_tensor *t = gq_st_find(st, items[k].name);
        if (!t) continue;
        size_t nb = gq_dtype_size(items[k].dtype);
        int ok = t->dtype == items[k].dtype && t->ndim == items[k].ndim;
        for (int d = 0; d < t->ndim; d++) {
            ok &= t->shape[d] == items[k].shape[d];
            nb *= (size_t)items[k].shape[d];
        }
        ok &= t->nbytes == nb && (nb == 0 || memcmp(t->data, items[k].data, nb) == 0);
        if (!ok) fprintf(stderr, "  mismatch in tensor %s\n", items[k].name);
        same += ok;
        aligned += (uintptr_t)t->data % gq_dtype_size(t->dtype) == 0;
    }
    TEST_CHECK(same == N, "dtype, shape and bytes equal for all %d tensors (%d)", N, same);
    TEST_CHECK(aligned == N, "every tensor aligned to its dtype size (%d of %d)", aligned, N);
    /* File order: dtype size descending, then name (bytewise). */
    const char *order[N] = {"f64.scalar", "i64", "empty.f32", "f32", "i32.after", "bf16", "f16.odd",
                            "i16",        "z.f16.odd", "bool", "empty.u8", "i8", "u8"};
    int in_order = 1;
    for (int k = 0; k < N; k++) in_order &= strcmp(gq_st_at(st, k)->name, order[k]) == 0;
    TEST_CHECK(in_order, "tensors ordered by dtype size then name");
    TEST_CHECK(gq_st_meta_count(st) == 3, "3 metadata keys (format + 2), got %d", gq_st_meta_count(st));
    TEST_CHECK(gq_st_meta(st, "format") && strcmp(gq_st_meta(st, "format"), "pt") == 0, "format = pt");
    TEST_CHECK(gq_st_meta(st, "gq.note") && strcmp(gq_st_meta(st, "gq.note"), meta[1]) == 0,
               "metadata value with UTF-8 and quotes survives");
    float f[21];
    TEST_OK(gq_st_read_f32(st, gq_st_find(st, "f16.odd"), f), "read f16.odd");
    /* Exact: the values are fp16-representable. */
    TEST_CHECK(f[0] == -1.5f && f[4] == 2.5f, "f16.odd values %g %g", f[0], f[4]);
    gq_st_close(st);

    /* No tensors at all: a valid file holding only __metadata__. */
    path = st_path(tmp, "none.safetensors");
    TEST_OK(gq_st_write_file(path, NULL, 0, NULL, 0), "write an empty file");
    TEST_OK(gq_st_open(&st, path), "re-open the empty file");
    TEST_CHECK(gq_st_count(st) == 0 && gq_st_meta_count(st) == 1, "0 tensors, format only");
    gq_st_close(st);
}

/* Shard plan for max_shard_bytes = 1000 (data bytes only; a tensor that
 * does not fit starts a new shard unless the current one is empty):
 *   1: w.0 (400) w.1 (400)                 = 800
 *   2: w.2 (300)                           (800 + 300 > 1000)
 *   3: big (2500, alone: larger than max)
 *   4: w.3 (40) w.4 (6) e (0) s (8)        = 54 */
static void test_sharded(void) {
    TEST_BEGIN("sharded");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/sharded", tmp);
    static _Alignas(8) uint8_t data[8][2504];
    struct {
        const char *name;
        gq_dtype dt;
        int ndim;
        int64_t shape[2];
        int shard;
    } plan[8] = {
        {"w.0", GQ_DT_F32, 1, {100}, 1}, {"w.1", GQ_DT_F32, 1, {100}, 1}, {"w.2", GQ_DT_F16, 2, {15, 10}, 2},
        {"big", GQ_DT_U8, 1, {2500}, 3}, {"w.3", GQ_DT_I32, 1, {10}, 4},  {"w.4", GQ_DT_BF16, 1, {3}, 4},
        {"e", GQ_DT_F32, 2, {0, 9}, 4},  {"s", GQ_DT_F64, 0, {0}, 4},
    };
    gq_st_writer *w = NULL;
    TEST_OK(gq_st_writer_init(&w, dir, "model", 1000), "writer init");
    if (!w) return;
    TEST_OK(gq_st_writer_set_meta(w, "quantizer", "gq"), "set_meta");
    for (int k = 0; k < 8; k++) {
        fill_bytes(data[k], sizeof data[k], k + 100);
        fill_float(data[k], plan[k].dt, sizeof data[k] / 8, k); /* no-op for integer dtypes */
        TEST_OK(gq_st_writer_add(w, plan[k].name, plan[k].dt, plan[k].ndim, plan[k].shape, data[k]), "add %s",
                plan[k].name);
    }
    int nshards = 0;
    TEST_OK(gq_st_writer_finish(w, &nshards), "finish");
    TEST_CHECK(nshards == 4, "4 shards, got %d", nshards);
    gq_st_writer_free(w);
    char list[2048];
    const char *want_list = "model-00001-of-00004.safetensors model-00002-of-00004.safetensors "
                            "model-00003-of-00004.safetensors model-00004-of-00004.safetensors "
                            "model.safetensors.index.json";
    TEST_CHECK(strcmp(dir_listing(dir, list, sizeof list), want_list) == 0,
               "directory holds 4 shards + index and no temporaries: %s", list);
    export_copy(dir, "sharded");

    /* The index: total_size and a weight_map sorted by name. */
    json_error_t je;
    json_t *idx = json_load_file(st_path(dir, "model.safetensors.index.json"), 0, &je);
    TEST_CHECK(idx != NULL, "index is JSON: %s", idx ? "" : je.text);
    json_t *wm = json_object_get(idx, "weight_map");
    json_t *ts = json_object_get(json_object_get(idx, "metadata"), "total_size");
    TEST_CHECK(json_integer_value(ts) == 3654, "total_size 3654 (sum of tensor bytes), got %lld",
               (long long)json_integer_value(ts));
    TEST_CHECK(json_object_size(wm) == 8, "weight_map has 8 entries");
    int map_ok = 0;
    for (int k = 0; k < 8; k++) {
        char want[64];
        snprintf(want, sizeof want, "model-%05d-of-00004.safetensors", plan[k].shard);
        const char *got = json_string_value(json_object_get(wm, plan[k].name));
        map_ok += got && strcmp(got, want) == 0;
    }
    TEST_CHECK(map_ok == 8, "weight_map names the planned shard for every tensor (%d of 8)", map_ok);
    const char *prev = "", *key;
    json_t *v;
    int sorted = 1;
    json_object_foreach(wm, key, v) {
        sorted &= strcmp(prev, key) < 0;
        prev = key;
    }
    TEST_CHECK(sorted, "weight_map keys in sorted order");
    json_decref(idx);

    /* Re-open three ways. */
    const char *how[2] = {dir, st_path(dir, "model.safetensors.index.json")};
    for (int h = 0; h < 2; h++) {
        gq_st *st = NULL;
        TEST_OK(gq_st_open(&st, how[h]), "open sharded via %s", h ? "index" : "directory");
        if (!st) continue;
        TEST_CHECK(gq_st_count(st) == 8 && gq_st_nfiles(st) == 4, "8 tensors in 4 files, got %d in %d",
                   gq_st_count(st), gq_st_nfiles(st));
        int ok = 0;
        for (int k = 0; k < 8; k++) {
            const gq_st_tensor *t = gq_st_find(st, plan[k].name);
            ok += t && t->file == plan[k].shard - 1 && t->dtype == plan[k].dt &&
                  (t->nbytes == 0 || memcmp(t->data, data[k], t->nbytes) == 0);
        }
        TEST_CHECK(ok == 8, "every tensor in its shard with its bytes (%d of 8)", ok);
        TEST_CHECK(gq_st_meta(st, "total_size") && strcmp(gq_st_meta(st, "total_size"), "3654") == 0,
                   "index metadata total_size visible as \"3654\"");
        TEST_CHECK(gq_st_meta(st, "quantizer") && strcmp(gq_st_meta(st, "quantizer"), "gq") == 0 &&
                       gq_st_meta(st, "format") && strcmp(gq_st_meta(st, "format"), "pt") == 0,
                   "shard __metadata__ (format, quantizer) visible");
        const char *order[8] = {"w.0", "w.1", "w.2", "big", "s", "e", "w.3", "w.4"};
        int in_order = 1;
        for (int k = 0; k < 8; k++) in_order &= strcmp(gq_st_at(st, k)->name, order[k]) == 0;
        TEST_CHECK(in_order, "gq_st_at: shard by shard, each by dtype size then name");
        gq_st_close(st);
    }
    const int per_shard[4] = {2, 1, 1, 4};
    for (int s = 0; s < 4; s++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-00004.safetensors", s + 1);
        gq_st *st = NULL;
        TEST_OK(gq_st_open(&st, st_path(dir, name)), "open shard %s alone", name);
        TEST_CHECK(gq_st_count(st) == per_shard[s], "%s holds %d tensors, got %d", name, per_shard[s],
                   gq_st_count(st));
        gq_st_close(st);
    }
}

/* Copy the real checkpoint through the writer in ~3 MiB shards and read it
 * back: every tensor byte-identical (4 MiB embedding: multi-chunk copy). */
static void test_copy_pycoder(void) {
    TEST_BEGIN("pycoder copy");
    gq_st *src = NULL, *dst = NULL;
    TEST_OK(gq_st_open(&src, gq_test_data("pycoder-5m/model.safetensors")), "open pycoder");
    if (!src) return;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/pycoder", tmp);
    gq_st_writer *w = NULL;
    TEST_OK(gq_st_writer_init(&w, dir, "model", 3u << 20), "init");
    if (!w) {
        gq_st_close(src);
        return;
    }
    for (int i = gq_st_count(src) - 1; i >= 0; i--) { /* reverse order: sorting is the writer's job */
        const gq_st_tensor *t = gq_st_at(src, i);
        TEST_OK(gq_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), "add %s", t->name);
    }
    int nshards = 0;
    TEST_OK(gq_st_writer_finish(w, &nshards), "finish");
    gq_st_writer_free(w);
    /* 10.5 MB of tensors, 3 MiB shards, a 4 MiB embedding alone: >= 4 shards. */
    TEST_CHECK(nshards >= 4, "at least 4 shards, got %d", nshards);
    TEST_OK(gq_st_open(&dst, dir), "re-open copy");
    if (dst) {
        int same = 0;
        for (int i = 0; i < gq_st_count(src); i++) {
            const gq_st_tensor *a = gq_st_at(src, i), *b = gq_st_find(dst, a->name);
            same += b && b->dtype == a->dtype && b->ndim == a->ndim && b->nbytes == a->nbytes &&
                    memcmp(a->shape, b->shape, sizeof a->shape) == 0 && memcmp(a->data, b->data, a->nbytes) == 0;
        }
        TEST_CHECK(same == 38 && gq_st_count(dst) == 38, "38 tensors identical after the copy (%d)", same);
        for (int s = 0; s < gq_st_nfiles(dst); s++) {
            int nt = 0;
            size_t bytes = 0;
            for (int i = 0; i < gq_st_count(dst); i++)
                if (gq_st_at(dst, i)->file == s) {
                    nt++;
                    bytes += gq_st_at(dst, i)->nbytes;
                }
            TEST_CHECK(nt == 1 || bytes <= (3u << 20), "shard %d: %zu data bytes <= 3 MiB or a single tensor", s,
                       bytes);
        }
        export_copy(dir, "pycoder-sharded");
    }
    gq_st_close(dst);
    gq_st_close(src);
}

static void test_errors(void) {
    TEST_BEGIN("writer errors");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/errs", tmp);
    gq_st_writer *w = NULL;
    float x[4] = {1, 2, 3, 4};
    const int64_t s4[1] = {4}, neg[2] = {2, -1}, huge[2] = {INT64_MAX / 2, 4};
    TEST_OK(gq_st_writer_init(&w, dir, "out", 0), "init");
    if (!w) return;
    TEST_OK(gq_st_writer_add(w, "a", GQ_DT_F32, 1, s4, x), "add a");
    TEST_FAILS(gq_st_writer_add(w, "a", GQ_DT_F32, 1, s4, x), GQ_ERR_ARG, "out.safetensors: tensor 'a' added twice");
    TEST_FAILS(gq_st_writer_add(w, "n", GQ_DT_F32, 2, neg, x), GQ_ERR_ARG, "tensor 'n': shape[1] is -1");
    TEST_FAILS(gq_st_writer_add(w, "h", GQ_DT_F32, 2, huge, x), GQ_ERR_ARG,
               "tensor 'h': shape [4611686018427387903, 4] (F32): byte size overflows");
    TEST_FAILS(gq_st_writer_add(w, "__metadata__", GQ_DT_F32, 1, s4, x), GQ_ERR_ARG, "invalid tensor name");
    TEST_FAILS(gq_st_writer_add(w, "bad\xff", GQ_DT_F32, 1, s4, x), GQ_ERR_ARG, "invalid tensor name");
    TEST_FAILS(gq_st_writer_add(w, "d", GQ_DT_COUNT, 1, s4, x), GQ_ERR_ARG, "tensor 'd': invalid dtype");
    TEST_FAILS(gq_st_writer_add(w, "d", GQ_DT_F32, 9, s4, x), GQ_ERR_ARG, "tensor 'd': ndim 9, expected 0..8");
    TEST_FAILS(gq_st_writer_add(w, "d", GQ_DT_F32, 1, s4, NULL), GQ_ERR_ARG, "tensor 'd': data is NULL");
    TEST_FAILS(gq_st_writer_set_meta(w, "format", "tf"), GQ_ERR_ARG, "\"format\" must be \"pt\"");
    /* The rejected adds left nothing behind: the file has exactly 'a'. */
    int n = 0;
    TEST_OK(gq_st_writer_finish(w, &n), "finish after rejected adds");
    TEST_FAILS(gq_st_writer_finish(w, &n), GQ_ERR_ARG, "finish called twice");
    TEST_FAILS(gq_st_writer_add(w, "late", GQ_DT_F32, 1, s4, x), GQ_ERR_ARG, "tensor 'late' added after finish");
    gq_st_writer_free(w);
    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, st_path(dir, "out.safetensors")), "open");
    TEST_CHECK(gq_st_count(st) == 1 && gq_st_find(st, "a"), "only 'a' was written");
    gq_st_close(st);

    /* I/O errors: the output directory is a file; the output path is a
     * directory (rename fails). */
    const char *file = st_path(tmp, "plain-file");
    st_write_bytes(file, "x", 1);
    char sub[2048];
    snprintf(sub, sizeof sub, "%s/sub", file);
    w = (gq_st_writer *)1;
    TEST_FAILS(gq_st_writer_init(&w, sub, "model", 0), GQ_ERR_IO, "plain-file");
    TEST_CHECK(w == NULL, "*out NULL after a failed init");
    TEST_FAILS(gq_st_writer_init(&w, dir, "a/b", 0), GQ_ERR_ARG, "base name 'a/b'");
    snprintf(sub, sizeof sub, "%s/isdir.safetensors", dir);
    gq_mkdirs(sub);
    gq_st_item it = {"a", GQ_DT_F32, 1, {4}, x};
    TEST_FAILS(gq_st_write_file(sub, &it, 1, NULL, 0), GQ_ERR_IO, "cannot rename to");
    TEST_FAILS(gq_st_write_file(st_path(dir, "dup.safetensors"), (gq_st_item[]){it, it}, 2, NULL, 0), GQ_ERR_ARG,
               "dup.safetensors: tensor 'a' added twice");
    char list[1024];
    TEST_CHECK(strcmp(dir_listing(dir, list, sizeof list), "isdir.safetensors out.safetensors") == 0,
               "failed writes leave no temporaries: %s", list);
}

/* Writing a single file where a sharded checkpoint was (and back) removes
 * the stale index / single file that would shadow the new output. */
static void test_rewrite_layout(void) {
    TEST_BEGIN("rewrite layout");
    char dir[1024], list[1024];
    snprintf(dir, sizeof dir, "%s/rewrite", tmp);
    uint8_t b[100] = {0};
    const int64_t s[1] = {100};
    for (int round = 0; round < 3; round++) {
        size_t max = round == 1 ? 0 : 150; /* sharded, single, sharded */
        gq_st_writer *w = NULL;
        int nsh = 0;
        TEST_OK(gq_st_writer_init(&w, dir, "model", max), "init");
        if (!w) return;
        gq_log_level lvl = gq_log_get_level();
        gq_log_set_level(GQ_LOG_ERROR); /* the "removing stale" warning is expected */
        TEST_OK(gq_st_writer_add(w, "a", GQ_DT_U8, 1, s, b), "add a");
        TEST_OK(gq_st_writer_add(w, "b", GQ_DT_U8, 1, s, b), "add b");
        TEST_OK(gq_st_writer_finish(w, &nsh), "finish round %d", round);
        gq_log_set_level(lvl);
        gq_st_writer_free(w);
        TEST_CHECK(nsh == (round == 1 ? 1 : 2), "round %d: %d shards", round, nsh);
        dir_listing(dir, list, sizeof list);
        if (round == 1)
            TEST_CHECK(strcmp(list, "model-00001-of-00002.safetensors model-00002-of-00002.safetensors "
                                    "model.safetensors") == 0,
                       "single file replaces the index (old shards stay, unreferenced): %s", list);
        else
            TEST_CHECK(strstr(list, "model.safetensors.index.json") && !strstr(list, "model.safetensors "),
                       "sharded output removes a stale model.safetensors: %s", list);
        gq_st *st = NULL;
        TEST_OK(gq_st_open(&st, dir), "open round %d", round);
        TEST_CHECK(gq_st_nfiles(st) == nsh, "directory opens the new layout (%d files)", gq_st_nfiles(st));
        gq_st_close(st);
    }
}

/* Thousands of tensors (a 7B checkpoint has ~300, 70B ~700): the writer's
 * name hash and the reader's sorted index find every one. */
static void test_many(void) {
    TEST_BEGIN("many tensors");
    enum { N = 5000 };
    char dir[1024], name[64];
    snprintf(dir, sizeof dir, "%s/many", tmp);
    gq_st_writer *w = NULL;
    TEST_OK(gq_st_writer_init(&w, dir, "model", 40000), "init");
    if (!w) return;
    int fails = 0;
    for (int i = 0; i < N; i++) {
        int32_t v[3] = {i, -i, i * 7};
        const int64_t shape[1] = {3};
        snprintf(name, sizeof name, "model.layers.%d.w", i);
        fails += gq_st_writer_add(w, name, GQ_DT_I32, 1, shape, v) != GQ_OK;
    }
    TEST_CHECK(fails == 0, "%d adds failed", fails);
    TEST_FAILS(gq_st_writer_add(w, "model.layers.4321.w", GQ_DT_I32, 1, (const int64_t[]){1}, name), GQ_ERR_ARG,
               "added twice");
    int nsh = 0;
    TEST_OK(gq_st_writer_finish(w, &nsh), "finish");
    gq_st_writer_free(w);
    TEST_CHECK(nsh == 2, "60000 bytes in 40000-byte shards: 2 shards, got %d", nsh);
    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, dir), "open");
    int found = 0;
    for (int i = 0; st && i < N; i++) {
        snprintf(name, sizeof name, "model.layers.%d.w", i);
        const gq_st_tensor *t = gq_st_find(st, name);
        int32_t v[3];
        if (t) memcpy(v, t->data, sizeof v);
        found += t && v[0] == i && v[1] == -i && v[2] == i * 7;
    }
    TEST_CHECK(found == N, "all %d tensors found with their values (%d)", N, found);
    gq_st_close(st);
}

/* Freeing an unfinished writer removes its temporary data files. */
static void test_free_unfinished(void) {
    TEST_BEGIN("free unfinished");
    char dir[1024], list[1024];
    snprintf(dir, sizeof dir, "%s/unfinished", tmp);
    gq_st_writer *w = NULL;
    uint8_t b[100] = {0};
    const int64_t s[1] = {100};
    TEST_OK(gq_st_writer_init(&w, dir, "model", 150), "init");
    if (!w) return;
    TEST_OK(gq_st_writer_add(w, "a", GQ_DT_U8, 1, s, b), "add a");
    TEST_OK(gq_st_writer_add(w, "b", GQ_DT_U8, 1, s, b), "add b (second shard)");
    dir_listing(dir, list, sizeof list);
    TEST_CHECK(strstr(list, ".model-00001.") && strstr(list, ".model-00002."), "two temporary data files: %s",
               list);
    gq_st_writer_free(w);
    gq_st_writer_free(NULL);
    TEST_CHECK(strcmp(dir_listing(dir, list, sizeof list), "") == 0, "directory empty after free: '%s'", list);
}

int main(void) {
    tmp = gq_test_tmpdir("st-write");
    test_golden();
    test_roundtrip();
    test_sharded();
    test_copy_pycoder();
    test_errors();
    test_free_unfinished();
    test_rewrite_layout();
    test_many();
    gq_rmtree(tmp);
    return TEST_REPORT();
}
