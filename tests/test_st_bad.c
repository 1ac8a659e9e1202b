/*
 * test_st_bad.c -- malformed safetensors files, indexes and directories: each
 * must be rejected with the right status and a message that starts with the
 * file path and names the problem. The files are built here in a temporary
 * directory (GQ_ST_DUMP_CORPUS=dir also copies them there, to seed the
 * fuzzer). Then every file of tests/data/st_fuzz/ (inputs that once crashed
 * the fuzzer) must open or fail cleanly.
 */
#include <dirent.h>

#include "gq/st.h"
#include "test.h"
#include "test_st_util.h"

static const char *tmp;

/* Open `name` in tmp (written just before) and expect failure `code` with a
 * message starting with the path and containing `substr`. */
static void expect_bad(const char *name, int code, const char *substr) {
    const char *path = st_path(tmp, name);
    gq_st *st = (gq_st *)1;
    gq_err_clear();
    int rc = gq_st_open(&st, path);
    TEST_FAILS(rc, code, substr);
    if (getenv("GQ_TEST_VERBOSE")) fprintf(stderr, "  %s\n", gq_errmsg());
    TEST_CHECK(st_msg_starts_with(path), "%s: message names the file first: \"%s\"", name, gq_errmsg());
    TEST_CHECK(st == NULL, "%s: *out is NULL after a failed open", name);
    gq_st_close(rc == GQ_OK ? st : NULL);
    const char *dump = getenv("GQ_ST_DUMP_CORPUS");
    if (dump && !gq_is_dir(path)) gq_copy_file(path, st_path(dump, name));
}

/* A file with the given header and n zero data bytes, expected to fail. */
static void bad_header(const char *name, const char *header, size_t ndata, int code, const char *substr) {
    uint8_t data[64] = {0};
    GQ_ASSERT(ndata <= sizeof data);
    st_write_raw(st_path(tmp, name), header, UINT64_MAX, data, ndata);
    expect_bad(name, code, substr);
}

static void test_framing(void) {
    TEST_BEGIN("framing");
    st_write_bytes(st_path(tmp, "empty.safetensors"), "", 0);
    expect_bad("empty.safetensors", GQ_ERR_FORMAT, "file is 0 bytes, expected at least 8");
    st_write_bytes(st_path(tmp, "short.safetensors"), "\x02\0\0\0\0", 5);
    expect_bad("short.safetensors", GQ_ERR_FORMAT, "file is 5 bytes, expected at least 8");
    st_write_raw(st_path(tmp, "hlen_past_end.safetensors"), "{}", 100, NULL, 0);
    expect_bad("hlen_past_end.safetensors", GQ_ERR_FORMAT, "header length 100 runs past the end of the file");
    st_write_raw(st_path(tmp, "hlen_cap.safetensors"), "{}", GQ_ST_MAX_HEADER + 1, NULL, 0);
    expect_bad("hlen_cap.safetensors", GQ_ERR_FORMAT, "header length 100000001 exceeds the limit of 100000000");
    st_write_raw(st_path(tmp, "hlen_huge.safetensors"), "{}", UINT64_MAX - 3, NULL, 0);
    expect_bad("hlen_huge.safetensors", GQ_ERR_FORMAT, "exceeds the limit");
    st_write_raw(st_path(tmp, "hlen_zero.safetensors"), "", UINT64_MAX, NULL, 0);
    expect_bad("hlen_zero.safetensors", GQ_ERR_FORMAT, "header is not valid JSON");
    bad_header("bad_json.safetensors", "{\"a\": {\"dtype\": ", 0, GQ_ERR_FORMAT, "header is not valid JSON");
    bad_header("bad_utf8.safetensors", "{\"\xff\": 1}", 0, GQ_ERR_FORMAT, "header is not valid JSON");
    bad_header("trailing_json.safetensors", "{} {}", 0, GQ_ERR_FORMAT, "header is not valid JSON");
    bad_header("not_object.safetensors", "[1, 2]", 0, GQ_ERR_FORMAT, "header must be a JSON object, got an array");
    bad_header("string_header.safetensors", "\"F32\"", 0, GQ_ERR_FORMAT, "header must be a JSON object, got a string");
    bad_header("duplicate.safetensors",
               "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]},"
               " \"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}",
               2, GQ_ERR_FORMAT, "duplicate object key");
}

static void test_entries(void) {
    TEST_BEGIN("entries");
    bad_header("entry_not_object.safetensors", "{\"a\": [1]}", 0, GQ_ERR_FORMAT,
               "tensor 'a': expected an object with dtype, shape and data_offsets, got an array");
    bad_header("no_dtype.safetensors", "{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, GQ_ERR_FORMAT,
               "tensor 'a': missing \"dtype\"");
    bad_header("no_shape.safetensors", "{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4,
               GQ_ERR_FORMAT, "tensor 'a': missing \"shape\"");
    bad_header("no_offsets.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, GQ_ERR_FORMAT,
               "tensor 'a': missing \"data_offsets\"");
    bad_header("dtype_int.safetensors", "{\"a\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
               GQ_ERR_FORMAT, "tensor 'a': \"dtype\" must be a string, got an integer");
    bad_header("unknown_dtype.safetensors",
               "{\"a\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1, GQ_ERR_FORMAT,
               "tensor 'a': unknown dtype \"F8_E4M3\"");
    bad_header("shape_not_array.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}",
               4, GQ_ERR_FORMAT, "tensor 'a': \"shape\" must be an array, got an integer");
    bad_header("shape_negative.safetensors",
               "{\"a\": {\"dtype\": \"F32\", \"shape\": [-2, -2], \"data_offsets\": [0, 16]}}", 16, GQ_ERR_FORMAT,
               "tensor 'a': shape[0] is -2, expected a non-negative integer");
    bad_header("shape_real.safetensors",
               "{\"a\": {\"dtype\": \"F32\", \"shape\": [1, 2.0], \"data_offsets\": [0, 8]}}", 8, GQ_ERR_FORMAT,
               "tensor 'a': shape[1] must be a non-negative integer, got a number");
    bad_header("shape_string.safetensors",
               "{\"a\": {\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [0, 8]}}", 8, GQ_ERR_FORMAT,
               "tensor 'a': shape[0] must be a non-negative integer, got a string");
    bad_header("shape_ndim.safetensors",
               "{\"a\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}", 1,
               GQ_ERR_FORMAT, "tensor 'a': shape has 9 dimensions, expected at most 8");
    bad_header("size_mismatch.safetensors",
               "{\"a.weight\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 12]}}", 12,
               GQ_ERR_FORMAT, "tensor 'a.weight': data_offsets span 12 bytes, expected 16 (F32 [2, 2])");
    /* 2^32 * 2^32 overflows the element count; 2^62 F32 overflows the bytes. */
    bad_header("numel_overflow.safetensors",
               "{\"a\": {\"dtype\": \"U8\", \"shape\": [4294967296, 4294967296, 0], \"data_offsets\": [0, 0]}}", 0,
               GQ_ERR_FORMAT, "tensor 'a': shape [4294967296, 4294967296, 0]: byte size overflows");
    bad_header("bytes_overflow.safetensors",
               "{\"a\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904], \"data_offsets\": [0, 0]}}", 0,
               GQ_ERR_FORMAT, "tensor 'a': shape [4611686018427387904]: byte size overflows (F32)");
    bad_header("int_too_big.safetensors",
               "{\"a\": {\"dtype\": \"U8\", \"shape\": [18446744073709551616], \"data_offsets\": [0, 0]}}", 0,
               GQ_ERR_FORMAT, "header is not valid JSON: too big integer");
    bad_header("offsets_not_array.safetensors", "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": 0}}",
               1, GQ_ERR_FORMAT, "tensor 'a': \"data_offsets\" must be an array [begin, end], got an integer");
    bad_header("offsets_len3.safetensors",
               "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1, 2]}}", 1, GQ_ERR_FORMAT,
               "tensor 'a': \"data_offsets\" must be an array [begin, end], got 3 elements");
    bad_header("offsets_negative.safetensors",
               "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [-1, 0]}}", 1, GQ_ERR_FORMAT,
               "tensor 'a': data_offsets[0] must be a non-negative integer, got a negative integer");
    bad_header("offsets_real.safetensors",
               "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1.0]}}", 1, GQ_ERR_FORMAT,
               "tensor 'a': data_offsets[1] must be a non-negative integer, got a number");
    bad_header("offsets_reversed.safetensors",
               "{\"a\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [4, 0]}}", 4, GQ_ERR_FORMAT,
               "tensor 'a': data_offsets [4, 0]: begin is after end");
    bad_header("offsets_past_end.safetensors",
               "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4, GQ_ERR_FORMAT,
               "tensor 'a': data_offsets [0, 8] run past the end of the data section (4 bytes)");
}

static void test_layout(void) {
    TEST_BEGIN("layout");
    bad_header("overlap.safetensors",
               "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
               " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
               12, GQ_ERR_FORMAT, "tensor 'b': data_offsets [4, 12] overlap tensor 'a', which ends at 8");
    bad_header("alias.safetensors",
               "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
               " \"b\": {\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
               8, GQ_ERR_FORMAT, "tensor 'b': data_offsets [0, 8] overlap tensor 'a'");
    bad_header("gap.safetensors",
               "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
               " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
               12, GQ_ERR_FORMAT, "tensor 'b': data_offsets [8, 12] leave a gap of 4 bytes, expected begin 4");
    bad_header("gap_first.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8,
               GQ_ERR_FORMAT, "tensor 'a': data_offsets [4, 8] leave a gap of 4 bytes, expected begin 0");
    bad_header("trailing.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 8,
               GQ_ERR_FORMAT, "4 trailing bytes after the last tensor (data section is 8 bytes, tensors cover 4)");
    bad_header("trailing_no_tensors.safetensors", "{}", 3, GQ_ERR_FORMAT, "3 trailing bytes after the last tensor");
    bad_header("meta_string.safetensors", "{\"__metadata__\": \"pt\"}", 0, GQ_ERR_FORMAT,
               "__metadata__ must be an object of strings, got a string");
    bad_header("meta_value.safetensors", "{\"__metadata__\": {\"format\": \"pt\", \"n\": 3}}", 0, GQ_ERR_FORMAT,
               "__metadata__ key 'n': expected a string value, got an integer");
    bad_header("meta_nested.safetensors", "{\"__metadata__\": {\"x\": {}}}", 0, GQ_ERR_FORMAT,
               "__metadata__ key 'x': expected a string value, got an object");
}

/* A valid one-tensor shard named `file` holding U8 tensors `names` (1 byte each). */
static void write_shard(const char *file, const char *const *names, int n) {
    char header[1024];
    size_t k = (size_t)snprintf(header, sizeof header, "{");
    for (int i = 0; i < n; i++)
        k += (size_t)snprintf(header + k, sizeof header - k,
                              "%s\"%s\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [%d, %d]}",
                              i ? ", " : "", names[i], i, i + 1);
    snprintf(header + k, sizeof header - k, "}");
    uint8_t data[16] = {1, 2, 3, 4, 5, 6, 7, 8};
    st_write_raw(st_path(tmp, file), header, UINT64_MAX, data, (size_t)n);
}

static void bad_index(const char *name, const char *json, int code, const char *substr) {
    st_write_bytes(st_path(tmp, name), json, strlen(json));
    expect_bad(name, code, substr);
}

static void test_index(void) {
    TEST_BEGIN("index");
    const char *s1[] = {"a", "b"}, *s2[] = {"c"};
    write_shard("s-1.safetensors", s1, 2);
    write_shard("s-2.safetensors", s2, 1);
    /* Sanity: the consistent index opens (so the failures below are about
     * the one thing each case changes). */
    const char *good = "{\"metadata\": {\"total_size\": 3}, \"weight_map\": "
                       "{\"a\": \"s-1.safetensors\", \"b\": \"s-1.safetensors\", \"c\": \"s-2.safetensors\"}}";
    st_write_bytes(st_path(tmp, "good.index.json"), good, strlen(good));
    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, st_path(tmp, "good.index.json")), "consistent index opens");
    TEST_CHECK(gq_st_count(st) == 3 && gq_st_nfiles(st) == 2, "3 tensors in 2 shards, got %d in %d",
               gq_st_count(st), gq_st_nfiles(st));
    gq_st_close(st);

    bad_index("missing_shard.index.json",
              "{\"weight_map\": {\"a\": \"s-1.safetensors\", \"b\": \"s-1.safetensors\", \"c\": \"s-9.safetensors\"}}",
              GQ_ERR_IO, "shard 's-9.safetensors' not found");
    bad_index("not_in_shard.index.json",
              "{\"weight_map\": {\"a\": \"s-1.safetensors\", \"b\": \"s-1.safetensors\", \"c\": \"s-2.safetensors\","
              " \"d\": \"s-2.safetensors\"}}",
              GQ_ERR_FORMAT, "tensor 'd' is not in its shard 's-2.safetensors'");
    bad_index("unlisted.index.json", "{\"weight_map\": {\"a\": \"s-1.safetensors\", \"c\": \"s-2.safetensors\"}}",
              GQ_ERR_FORMAT, "tensor 'b' of shard 's-1.safetensors' is not listed in weight_map");
    bad_index("wrong_shard.index.json",
              "{\"weight_map\": {\"a\": \"s-1.safetensors\", \"b\": \"s-1.safetensors\", \"c\": \"s-2.safetensors\","
              " \"x\": \"s-2.safetensors\", \"y\": \"s-2.safetensors\"}}",
              GQ_ERR_FORMAT, "tensor 'x' is not in its shard");
    bad_index("mislisted.index.json",
              "{\"weight_map\": {\"a\": \"s-1.safetensors\", \"b\": \"s-2.safetensors\", \"c\": \"s-2.safetensors\"}}",
              GQ_ERR_FORMAT, "tensor 'b': weight_map names shard 's-2.safetensors', but it is in shard 's-1.safetensors'");
    bad_index("dotdot.index.json", "{\"weight_map\": {\"a\": \"../s-1.safetensors\"}}", GQ_ERR_FORMAT,
              "weight_map['a']: shard name '../s-1.safetensors' must be a plain file name");
    bad_index("slash.index.json", "{\"weight_map\": {\"a\": \"/etc/passwd\"}}", GQ_ERR_FORMAT,
              "shard name '/etc/passwd' must be a plain file name");
    bad_index("empty_name.index.json", "{\"weight_map\": {\"a\": \"\"}}", GQ_ERR_FORMAT,
              "shard name '' must be a plain file name");
    bad_index("index_bad_json.index.json", "{\"weight_map\": {", GQ_ERR_FORMAT, "not valid JSON");
    bad_index("index_array.index.json", "[]", GQ_ERR_FORMAT, "expected a JSON object, got an array");
    bad_index("no_weight_map.index.json", "{\"metadata\": {}}", GQ_ERR_FORMAT,
              "missing \"weight_map\"");
    bad_index("weight_map_array.index.json", "{\"weight_map\": []}", GQ_ERR_FORMAT,
              "\"weight_map\" must be an object, got an array");
    bad_index("weight_map_empty.index.json", "{\"weight_map\": {}}", GQ_ERR_FORMAT, "\"weight_map\" is empty");
    bad_index("weight_map_int.index.json", "{\"weight_map\": {\"a\": 1}}", GQ_ERR_FORMAT,
              "weight_map['a']: expected a shard file name string, got an integer");
    bad_index("index_dup.index.json",
              "{\"weight_map\": {\"a\": \"s-1.safetensors\", \"a\": \"s-1.safetensors\"}}", GQ_ERR_FORMAT,
              "duplicate object key");
    bad_index("metadata_array.index.json", "{\"metadata\": [], \"weight_map\": {\"a\": \"s-1.safetensors\"}}",
              GQ_ERR_FORMAT, "\"metadata\" must be an object, got an array");

    /* A tensor in two shards (each shard valid on its own). */
    const char *s3[] = {"c"};
    write_shard("s-3.safetensors", s3, 1);
    bad_index("twice.index.json",
              "{\"weight_map\": {\"a\": \"s-1.safetensors\", \"b\": \"s-1.safetensors\", \"c\": \"s-2.safetensors\","
              " \"z\": \"s-3.safetensors\"}}",
              GQ_ERR_FORMAT, "tensor 'c' is also in");
    /* The real CodeLlama-7b index (shards not shipped): names the first shard. */
    const char *cl = gq_test_data("codellama-7b-hf-meta/model.safetensors.index.json");
    TEST_FAILS(gq_st_open(&st, cl), GQ_ERR_IO, "shard 'model-00001-of-00002.safetensors' not found");
    TEST_CHECK(st_msg_starts_with(cl), "CodeLlama index error starts with the index path: %s", gq_errmsg());
    TEST_FAILS(gq_st_open(&st, gq_test_data("codellama-7b-hf-meta")), GQ_ERR_IO,
               "model.safetensors.index.json: shard 'model-00001-of-00002.safetensors' not found");
}

static void test_dirs(void) {
    TEST_BEGIN("dirs");
    char sub[1024];
    snprintf(sub, sizeof sub, "%s/emptydir", tmp);
    gq_mkdirs(sub);
    expect_bad("emptydir", GQ_ERR_IO, "no model.safetensors.index.json, model.safetensors or other *.safetensors");
    snprintf(sub, sizeof sub, "%s/twodir", tmp);
    gq_mkdirs(sub);
    st_write_raw(st_path(sub, "a.safetensors"), "{}", UINT64_MAX, NULL, 0);
    st_write_raw(st_path(sub, "b.safetensors"), "{}", UINT64_MAX, NULL, 0);
    expect_bad("twodir", GQ_ERR_FORMAT, "found 2 *.safetensors files (a.safetensors, b.safetensors)");
    expect_bad("does-not-exist.safetensors", GQ_ERR_IO, "cannot open: No such file or directory");
    expect_bad("does-not-exist.index.json", GQ_ERR_IO, "cannot open");
}

/* tests/data/st_fuzz/: inputs found by fuzzing (see its README.md; none
 * ever crashed the reader). MANIFEST.tsv records, per file, the status and
 * message (after "<path>: ") of the reader when it was added: the outcome
 * must stay the same. A file not in the manifest (a future crasher) must
 * open or fail with a format error naming the file. An opened file is
 * walked like the fuzz target does (read_f32 every float tensor). */
typedef struct {
    char name[256];
    int rc;
    char msg[1024];
} fuzz_expect;

static int load_manifest(const char *path, fuzz_expect **out) {
    char *txt = NULL;
    if (gq_read_file(path, &txt, NULL) != GQ_OK) return 0;
    int n = 0;
    fuzz_expect *ex = NULL;
    for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
        char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (line[0] == '#' || !t2) continue;
        ex = gq_realloc(ex, sizeof *ex * (size_t)(n + 1));
        snprintf(ex[n].name, sizeof ex[n].name, "%.*s", (int)(t1 - line), line);
        ex[n].rc = atoi(t1 + 1);
        snprintf(ex[n].msg, sizeof ex[n].msg, "%s", t2 + 1);
        n++;
    }
    free(txt);
    *out = ex;
    return n;
}

static void test_fuzz_corpus(void) {
    TEST_BEGIN("fuzz corpus");
    const char *dir = gq_test_data("st_fuzz");
    fuzz_expect *ex = NULL;
    int nex = load_manifest(st_path(dir, "MANIFEST.tsv"), &ex);
    DIR *d = opendir(dir);
    if (!d) {
        TEST_SKIP("%s not found", dir);
        free(ex);
        return;
    }
    struct dirent *e;
    int n = 0, matched = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "README.md") == 0 || strcmp(e->d_name, "MANIFEST.tsv") == 0)
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        gq_st *st = NULL;
        gq_err_clear();
        int rc = gq_st_open(&st, path);
        char got[1100];
        if (rc == GQ_OK) {
            snprintf(got, sizeof got, "tensors=%d", gq_st_count(st));
            for (int i = 0; i < gq_st_count(st); i++) {
                const gq_st_tensor *t = gq_st_at(st, i);
                float *buf = gq_malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
                gq_st_read_f32(st, t, buf);
                free(buf);
            }
        } else {
            TEST_CHECK(st_msg_starts_with(path), "%s: message starts with the path: %s", e->d_name, gq_errmsg());
            snprintf(got, sizeof got, "%s", gq_errmsg() + (st_msg_starts_with(path) ? strlen(path) + 2 : 0));
        }
        const fuzz_expect *want = NULL;
        for (int k = 0; k < nex; k++)
            if (strcmp(ex[k].name, e->d_name) == 0) want = &ex[k];
        if (want) {
            /* JSON syntax errors: only the prefix (jansson's wording may vary). */
            int ok = rc == want->rc && strncmp(got, want->msg, strlen(want->msg)) == 0;
            TEST_CHECK(ok, "%s: status %d \"%s\", expected %d \"%s\"", e->d_name, rc, got, want->rc, want->msg);
            matched++;
        } else {
            TEST_CHECK(rc == GQ_OK || rc == GQ_ERR_FORMAT, "%s: opens or fails with a format error (rc %d: %s)",
                       e->d_name, rc, gq_errmsg());
        }
        gq_st_close(st);
        n++;
    }
    closedir(d);
    TEST_CHECK(n > 0 && matched == nex, "every manifest entry present (%d files, %d of %d in the manifest)", n,
               matched, nex);
    free(ex);
}

int main(void) {
    tmp = gq_test_tmpdir("st-bad");
    test_framing();
    test_entries();
    test_layout();
    test_index();
    test_dirs();
    test_fuzz_corpus();
    gq_rmtree(tmp);
    return TEST_REPORT();
}
