/*
 * test_st.c -- safetensors reader on the real pycoder-5m checkpoint and on a
 * hand-assembled file with every dtype; read_f32 / check_shape / release.
 * Writer round trips and sharding are in test_st_write.c, malformed input
 * in test_st_bad.c.
 */
#include "gq/st.h"
#include "test.h"
#include "test_st_util.h"

static const char *tmp;

/* Values printed by tests/ref/st_pycoder_probe.py (HF safetensors + numpy). */
static void test_pycoder(void) {
    TEST_BEGIN("pycoder-5m");
    const char *path = gq_test_data("pycoder-5m/model.safetensors");
    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, path), "open %s", path);
    if (!st) return;
    /* 38 tensors (the header has 39 keys: 38 tensors + __metadata__;
     * embeddings are tied, so there is no lm_head.weight). */
    TEST_CHECK(gq_st_count(st) == 38, "tensor count %d, expected 38", gq_st_count(st));
    TEST_CHECK(gq_st_nfiles(st) == 1, "one file, got %d", gq_st_nfiles(st));
    TEST_CHECK(gq_st_file_size(st, 0) == 10494440, "file size %zu", gq_st_file_size(st, 0));
    TEST_CHECK(gq_st_meta(st, "format") && strcmp(gq_st_meta(st, "format"), "pt") == 0, "metadata format = pt");
    TEST_CHECK(gq_st_meta_count(st) == 1, "one metadata key, got %d", gq_st_meta_count(st));
    TEST_CHECK(gq_st_find(st, "lm_head.weight") == NULL, "no lm_head.weight (tied)");

    const gq_st_tensor *e = gq_st_find(st, "model.embed_tokens.weight");
    TEST_CHECK(e != NULL, "model.embed_tokens.weight found");
    if (!e) goto done;
    TEST_CHECK(e->dtype == GQ_DT_F16 && e->ndim == 2 && e->shape[0] == 8192 && e->shape[1] == 256,
               "embed F16 [8192, 256], got %s ndim %d", gq_dtype_name(e->dtype), e->ndim);
    TEST_CHECK(e->numel == 8192 * 256 && e->nbytes == 8192 * 256 * 2, "embed numel/nbytes");
    TEST_CHECK(gq_st_at(st, 0) == e, "embed is first in file order (data offset 0)");
    const uint16_t *h = e->data;
    /* Bit patterns: exact. */
    TEST_CHECK(h[0] == 0x33fe && h[1234 * 256 + 56] == 0x30ee && h[8191 * 256 + 255] == 0x3331,
               "embed f16 bits at [0,0], [1234,56], [8191,255]: %04x %04x %04x", h[0], h[1234 * 256 + 56],
               h[8191 * 256 + 255]);
    float *buf = gq_malloc(sizeof(float) * 8192 * 256);
    TEST_OK(gq_st_read_f32(st, e, buf), "read_f32 embed");
    /* f16 -> f32 is exact: tolerance 0. */
    TEST_NEAR(buf[1234 * 256 + 56], 0.154052734375, 0, "embed[1234,56] (numpy: 0.154052734375)");
    TEST_NEAR(buf[0], 0.249755859375, 0, "embed[0,0]");

    /* After dropping the pages the mapping still reads the same bytes. */
    gq_st_release(st, e);
    TEST_CHECK(h[1234 * 256 + 56] == 0x30ee, "embed readable after gq_st_release");

    /* Sums in double of exactly converted values; numpy sums pairwise, we
     * sum sequentially: the difference is rounding only, < 1e-12 relative. */
    const char *names[] = {"model.norm.weight", "model.layers.3.mlp.down_proj.weight"};
    const double want_sum[] = {518.6533203125, 0.5390986800193787};
    const double want_sq[] = {1058.575415611267, 1323.9201504215005};
    const int64_t want_shape[][2] = {{256, -1}, {256, 768}};
    for (int k = 0; k < 2; k++) {
        const gq_st_tensor *t = gq_st_find(st, names[k]);
        TEST_CHECK(t != NULL, "%s found", names[k]);
        if (!t) continue;
        TEST_OK(gq_st_check_shape(st, t, k == 0 ? 1 : 2, want_shape[k]), "%s shape", names[k]);
        TEST_OK(gq_st_read_f32(st, t, buf), "read %s", names[k]);
        double s = 0, sq = 0;
        for (int64_t i = 0; i < t->numel; i++) {
            s += buf[i];
            sq += (double)buf[i] * buf[i];
        }
        TEST_NEAR(s, want_sum[k], 1e-9, "%s sum (numpy float64; summation order only)", names[k]);
        TEST_NEAR(sq, want_sq[k], 1e-9, "%s sum of squares", names[k]);
    }
    free(buf);

    /* Every tensor is found by name and is its own entry. */
    int found = 0;
    for (int i = 0; i < gq_st_count(st); i++) found += gq_st_find(st, gq_st_at(st, i)->name) == gq_st_at(st, i);
    TEST_CHECK(found == gq_st_count(st), "find(at(i)->name) == at(i) for all %d tensors (got %d)",
               gq_st_count(st), found);
    TEST_CHECK(gq_st_find(st, "model.embed_tokens") == NULL && gq_st_find(st, "") == NULL &&
                   gq_st_find(st, "zzz") == NULL,
               "absent names are NULL");

    /* check_shape messages. */
    const int64_t wrong[2] = {8192, 128}, any_rows[2] = {-1, 256}, one[1] = {8192};
    TEST_OK(gq_st_check_shape(st, e, 2, any_rows), "[*, 256] matches");
    TEST_OK(gq_st_check_shape(st, e, -1, NULL), "ndim -1 matches anything");
    TEST_FAILS(gq_st_check_shape(st, e, 2, wrong), GQ_ERR_FORMAT,
               "model.safetensors: tensor 'model.embed_tokens.weight': expected shape [8192, 128], got [8192, 256]");
    TEST_FAILS(gq_st_check_shape(st, e, 1, one), GQ_ERR_FORMAT, "expected shape [8192], got [8192, 256]");
    TEST_FAILS(gq_st_check_shape(st, e, 2, (const int64_t[]){-1, 3}), GQ_ERR_FORMAT,
               "expected shape [*, 3], got [8192, 256]");
done:
    gq_st_close(st);

    /* The directory opens the same file. */
    TEST_OK(gq_st_open(&st, gq_test_data("pycoder-5m")), "open the pycoder-5m directory");
    TEST_CHECK(gq_st_count(st) == 38, "directory: 38 tensors, got %d", gq_st_count(st));
    gq_st_close(st);
}

/* A file assembled by hand with every dtype, a 0-d scalar, a 0-element
 * tensor, odd-sized tensors and an odd header length, so the data section
 * (and every tensor in it) is misaligned: read_f32 must still convert. */
static void test_all_dtypes(void) {
    TEST_BEGIN("all dtypes");
    uint8_t data[128];
    size_t n = 0;
#define PUT(v)                                                                                       \
    do {                                                                                             \
        __typeof__(v) v_ = (v);                                                                      \
        memcpy(data + n, &v_, sizeof v_);                                                            \
        n += sizeof v_;                                                                              \
    } while (0)
    PUT((uint16_t)0x3c00); /* h: F16 [3] = 1, -2.5, 65504       [0, 6)   */
    PUT((uint16_t)0xc100);
    PUT((uint16_t)0x7bff);
    PUT((int32_t)-7); /* i: I32 [3]                             [6, 18)  */
    PUT((int32_t)2147483647);
    PUT((int32_t)0);
    PUT((double)0.125);      /* s: F64 [] scalar                 [18, 26) */
    PUT((uint16_t)0x3fc0);   /* b: BF16 [2] = 1.5, -0.0078125    [26, 30), z: BF16 [0, 4] at 26 */
    PUT((uint16_t)0xbc00);
    PUT((float)3.25);        /* f: F32 [2, 1]                    [30, 38) */
    PUT((float)-1e-3f);
    PUT((uint16_t)0x3c00);   /* n: F16 [4] with NaN at 2         [38, 46) */
    PUT((uint16_t)0x3c00);
    PUT((uint16_t)0x7e00);
    PUT((uint16_t)0x3c00);
    PUT((float)1.0f);        /* inf: F32 [2], -inf at 1          [46, 54) */
    PUT((float)-INFINITY);
    PUT((uint8_t)200);       /* u: U8 [2]                        [54, 56) */
    PUT((uint8_t)1);
    PUT((int64_t)-5);        /* l: I64 [1]                       [56, 64) */
    PUT((int16_t)-300);      /* t: I16 [1]                       [64, 66) */
    PUT((int8_t)-3);         /* c: I8 [1]                        [66, 67) */
    PUT((uint8_t)1);         /* q: BOOL [1]                      [67, 68) */
#undef PUT
    GQ_ASSERT(n == 68);
    char header[2048];
    int hl = snprintf(header, sizeof header,
                      "{\"__metadata__\": {\"format\": \"pt\", \"note\": \"h\\u00e9llo\"},"
                      "\"h\": {\"dtype\": \"F16\", \"shape\": [3], \"data_offsets\": [0, 6]},"
                      "\"i\": {\"dtype\": \"I32\", \"shape\": [3], \"data_offsets\": [6, 18]},"
                      "\"s\": {\"dtype\": \"F64\", \"shape\": [], \"data_offsets\": [18, 26]},"
                      "\"b\": {\"dtype\": \"BF16\", \"shape\": [2], \"data_offsets\": [26, 30]},"
                      "\"z\": {\"dtype\": \"BF16\", \"shape\": [0, 4], \"data_offsets\": [26, 26]},"
                      "\"f\": {\"dtype\": \"F32\", \"shape\": [2, 1], \"data_offsets\": [30, 38]},"
                      "\"n\": {\"dtype\": \"F16\", \"shape\": [4], \"data_offsets\": [38, 46]},"
                      "\"inf\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [46, 54]},"
                      "\"u\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [54, 56]},"
                      "\"l\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [56, 64]},"
                      "\"t\": {\"dtype\": \"I16\", \"shape\": [1], \"data_offsets\": [64, 66]},"
                      "\"c\": {\"dtype\": \"I8\", \"shape\": [1], \"data_offsets\": [66, 67]},"
                      "\"q\": {\"dtype\": \"BOOL\", \"shape\": [1], \"data_offsets\": [67, 68]}}");
    if (hl % 2 == 0) strcat(header, " "); /* odd header length: misaligned data */
    const char *path = st_path(tmp, "all.safetensors");
    st_write_raw(path, header, UINT64_MAX, data, n);

    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, path), "open hand-built file");
    if (!st) return;
    TEST_CHECK(gq_st_count(st) == 13, "13 tensors, got %d", gq_st_count(st));
    const char *order[] = {"h", "i", "s", "z", "b", "f", "n", "inf", "u", "l", "t", "c", "q"};
    int ok = 1;
    for (int k = 0; k < 13; k++) ok &= strcmp(gq_st_at(st, k)->name, order[k]) == 0;
    TEST_CHECK(ok, "gq_st_at follows data offsets (0-size z before b at the same offset)");
    TEST_CHECK(gq_st_meta(st, "note") && strcmp(gq_st_meta(st, "note"), "h\xc3\xa9llo") == 0,
               "metadata unicode value decoded");
    TEST_CHECK(gq_st_meta_count(st) == 2 && gq_st_meta(st, "nope") == NULL, "2 metadata keys");

    const gq_st_tensor *t;
    float f[8];
    t = gq_st_find(st, "h");
    TEST_CHECK(t && ((uintptr_t)t->data & 1) == 1, "F16 data is misaligned on purpose");
    /* Exact conversions: tolerance 0. */
    TEST_OK(gq_st_read_f32(st, t, f), "read F16 misaligned");
    TEST_CHECK(f[0] == 1.0f && f[1] == -2.5f && f[2] == 65504.0f, "F16 values %g %g %g", f[0], f[1], f[2]);
    t = gq_st_find(st, "s");
    TEST_CHECK(t && t->ndim == 0 && t->numel == 1 && t->nbytes == 8, "scalar: ndim 0, numel 1, 8 bytes");
    TEST_OK(gq_st_read_f32(st, t, f), "read F64 scalar");
    TEST_CHECK(f[0] == 0.125f, "scalar 0.125, got %g", f[0]);
    t = gq_st_find(st, "z");
    TEST_CHECK(t && t->ndim == 2 && t->numel == 0 && t->nbytes == 0 && t->shape[1] == 4, "[0, 4] BF16 empty");
    TEST_OK(gq_st_read_f32(st, t, NULL), "read 0-element tensor into NULL");
    t = gq_st_find(st, "b");
    TEST_OK(gq_st_read_f32(st, t, f), "read BF16");
    TEST_CHECK(f[0] == 1.5f && f[1] == -0.0078125f, "BF16 values %g %g", f[0], f[1]);
    t = gq_st_find(st, "f");
    TEST_OK(gq_st_read_f32(st, t, f), "read F32");
    TEST_CHECK(f[0] == 3.25f && f[1] == -1e-3f, "F32 values");
    t = gq_st_find(st, "i");
    int32_t iv[3];
    memcpy(iv, t->data, sizeof iv);
    TEST_CHECK(t->dtype == GQ_DT_I32 && iv[0] == -7 && iv[1] == 2147483647 && iv[2] == 0, "I32 bytes");
    TEST_FAILS(gq_st_read_f32(st, t, f), GQ_ERR_FORMAT, "all.safetensors: tensor 'i': dtype I32 is not a float type");
    TEST_FAILS(gq_st_read_f32(st, gq_st_find(st, "n"), f), GQ_ERR_NUMERIC,
               "all.safetensors: tensor 'n': non-finite value (nan) at index 2");
    TEST_FAILS(gq_st_read_f32(st, gq_st_find(st, "inf"), f), GQ_ERR_NUMERIC,
               "tensor 'inf': non-finite value (-inf) at index 1");
    const gq_dtype want_dt[] = {GQ_DT_U8, GQ_DT_I64, GQ_DT_I16, GQ_DT_I8, GQ_DT_BOOL};
    const char *int_names[] = {"u", "l", "t", "c", "q"};
    for (int k = 0; k < 5; k++) {
        t = gq_st_find(st, int_names[k]);
        TEST_CHECK(t && t->dtype == want_dt[k], "%s dtype %s", int_names[k], gq_dtype_name(want_dt[k]));
    }
    int64_t lv;
    int16_t sv;
    memcpy(&lv, gq_st_find(st, "l")->data, 8);
    memcpy(&sv, gq_st_find(st, "t")->data, 2);
    TEST_CHECK(lv == -5 && sv == -300 && *(const int8_t *)gq_st_find(st, "c")->data == -3 &&
                   ((const uint8_t *)gq_st_find(st, "u")->data)[0] == 200,
               "integer bytes read back");
    gq_st_release(st, gq_st_find(st, "z")); /* 0 bytes: no-op */
    gq_st_close(st);
    gq_st_close(NULL);

    /* A file with no tensors at all is valid. */
    st_write_raw(st_path(tmp, "none.safetensors"), "{}", UINT64_MAX, NULL, 0);
    TEST_OK(gq_st_open(&st, st_path(tmp, "none.safetensors")), "empty header {} opens");
    TEST_CHECK(gq_st_count(st) == 0 && gq_st_at(st, 0) == NULL && gq_st_find(st, "a") == NULL, "no tensors");
    gq_st_close(st);
}

int main(void) {
    tmp = gq_test_tmpdir("st");
    test_pycoder();
    test_all_dtypes();
    gq_rmtree(tmp);
    return TEST_REPORT();
}
