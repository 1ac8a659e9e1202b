/*
 * test_tokenizer.c -- encode/decode against Hugging Face `tokenizers`
 * goldens (tests/ref/gen_tokenizer.py -> tests/data/tok/) and the llama.cpp
 * Llama-2 vectors.
 *
 * Every comparison is exact (tolerance 0): token ids are integers and the
 * reference is deterministic, and the contract is token-for-token equality
 * with `tokenizers`; decoded text is compared byte for byte.
 */
#include <jansson.h>
#include <zlib.h>

#include "gq/tokenizer.h"
#include "test.h"
#include "test_tok_util.h"

/* ---- helpers ---- */

static int text_equal(const char *got, size_t gn, const char *exp, size_t en, const char *what,
                      const char *name) {
    if (gn == en && memcmp(got, exp, gn) == 0) return 1;
    fprintf(stderr, "  %s %s: got %zu bytes \"%.*s\", expected %zu bytes \"%.*s\"\n", name, what, gn,
            (int)(gn > 200 ? 200 : gn), got, en, (int)(en > 200 ? 200 : en), exp);
    return 0;
}

/* decode(ids) equals the hex-encoded expected text */
static int decode_matches(const gq_tokenizer *tok, const gq_ids *ids, int skip, json_t *exp_hex,
                          const char *what, const char *name) {
    char *txt = NULL;
    size_t tn = 0, en;
    int rc = gq_tok_decode(tok, ids->v, ids->n, skip, &txt, &tn);
    char *exp = unhex(json_string_value(exp_hex), &en);
    int ok = rc == GQ_OK && text_equal(txt, tn, exp, en, what, name);
    free(txt);
    free(exp);
    return ok;
}

/* ---- golden files: tricky strings ---- */

static void test_golden(const char *tok_dir, const char *golden) {
    gq_tokenizer *tok = NULL;
    TEST_OK(gq_tok_load(&tok, gq_test_data(tok_dir)), "load %s", tok_dir);
    if (!tok) return;
    json_error_t je;
    json_t *g = json_load_file(gq_test_data(golden), 0, &je);
    TEST_CHECK(g != NULL, "%s: %s", golden, je.text);
    if (!g) {
        gq_tok_free(tok);
        return;
    }
    json_t *cases = json_object_get(g, "cases"), *c;
    size_t i;
    int n_lossless = 0;
    TEST_CHECK(json_array_size(cases) >= 30, "%s: %zu cases", golden, json_array_size(cases));
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        size_t len;
        char *text = unhex(json_string_value(json_object_get(c, "text_hex")), &len);
        gq_ids a = {0}, b = {0};
        TEST_OK(gq_tok_encode(tok, text, len, 0, &a), "%s %s encode", golden, name);
        TEST_CHECK(ids_equal(&a, json_object_get(c, "ids"), "ids", name), "%s: '%s' ids == HF", golden, name);
        TEST_OK(gq_tok_encode(tok, text, len, 1, &b), "%s %s encode special", golden, name);
        TEST_CHECK(ids_equal(&b, json_object_get(c, "ids_special"), "ids_special", name),
                   "%s: '%s' ids with special tokens == HF", golden, name);
        TEST_CHECK(decode_matches(tok, &a, 0, json_object_get(c, "decode"), "decode", name),
                   "%s: '%s' decode == HF", golden, name);
        TEST_CHECK(decode_matches(tok, &b, 0, json_object_get(c, "decode_special"), "decode_special", name),
                   "%s: '%s' decode with specials == HF", golden, name);
        TEST_CHECK(decode_matches(tok, &b, 1, json_object_get(c, "decode_special_skip"), "decode_skip", name),
                   "%s: '%s' decode skip_special == HF", golden, name);
        if (json_is_true(json_object_get(c, "lossless"))) {
            /* decode(encode(x)) == x, with x as HF saw it (invalid UTF-8
             * already replaced): the "decode" golden equals that text */
            n_lossless++;
            char *txt = NULL;
            size_t tn = 0;
            gq_tok_decode(tok, a.v, a.n, 0, &txt, &tn);
            size_t en;
            char *exp = unhex(json_string_value(json_object_get(c, "decode")), &en);
            TEST_CHECK(text_equal(txt, tn, exp, en, "roundtrip", name), "%s: '%s' decode(encode(x)) == x", golden,
                       name);
            free(exp);
            free(txt);
        }
        gq_ids_free(&a);
        gq_ids_free(&b);
        free(text);
    }
    TEST_CHECK(n_lossless >= 25, "%s: %d lossless cases", golden, n_lossless);
    json_t *dec = json_object_get(g, "decode_only");
    json_array_foreach(dec, i, c) {
        json_t *ids = json_object_get(c, "ids"), *v;
        gq_ids a = {0};
        size_t k;
        json_array_foreach(ids, k, v) gq_ids_push(&a, (int32_t)json_integer_value(v));
        char name[48];
        snprintf(name, sizeof name, "decode_only[%zu]", i);
        TEST_CHECK(decode_matches(tok, &a, 0, json_object_get(c, "decode"), "decode", name), "%s: %s == HF", golden,
                   name);
        TEST_CHECK(decode_matches(tok, &a, 1, json_object_get(c, "decode_skip"), "decode_skip", name),
                   "%s: %s skip_special == HF", golden, name);
        gq_ids_free(&a);
    }
    json_decref(g);
    gq_tok_free(tok);
}

/* ---- llama.cpp vectors ---- */

static void test_llama2_vectors(void) {
    gq_tokenizer *tok = NULL;
    TEST_OK(gq_tok_load(&tok, gq_test_data("tokenizers/llama2")), "load llama2");
    if (!tok) return;
    char *inp = NULL, *out = NULL;
    size_t inl, outl;
    TEST_OK(gq_read_file(gq_test_data("tokenizers/llama2/ggml-vocab-llama-spm.gguf.inp"), &inp, &inl), "read .inp");
    TEST_OK(gq_read_file(gq_test_data("tokenizers/llama2/ggml-vocab-llama-spm.gguf.out"), &out, &outl), "read .out");
    if (!inp || !out) return;
    static const char SEP[] = "\n__ggml_vocab_test__\n";
    char *p = inp, *line = out;
    int n = 0, ok = 0;
    for (;;) {
        char *end = strstr(p, SEP);
        if (!end) break;
        char *nl = strchr(line, '\n');
        if (!nl) break;
        *nl = 0;
        gq_ids got = {0};
        gq_tok_encode(tok, p, (size_t)(end - p), 0, &got);
        gq_ids exp = {0};
        for (char *q = line; *q;) {
            char *e;
            long v = strtol(q, &e, 10);
            if (e == q) break;
            gq_ids_push(&exp, (int32_t)v);
            q = e;
        }
        int same = got.n == exp.n && (got.n == 0 || memcmp(got.v, exp.v, got.n * sizeof *got.v) == 0);
        if (!same) fprintf(stderr, "  llama2 vector %d: \"%.*s\" differs\n", n, (int)(end - p), p);
        ok += same;
        n++;
        gq_ids_free(&got);
        gq_ids_free(&exp);
        p = end + sizeof SEP - 1;
        line = nl + 1;
    }
    TEST_CHECK(n == 46, "llama2: 46 vectors read, got %d", n);
    TEST_CHECK(ok == n, "llama2: %d of %d llama.cpp vectors equal", ok, n);
    free(inp);
    free(out);
    gq_tok_free(tok);
}

/* ---- the whole stdlib text ---- */

static int32_t *read_ids_gz(const char *path, size_t *n) {
    gzFile f = gzopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    int r;
    while ((r = gzread(f, buf + len, (unsigned)(cap - len))) > 0) {
        len += (size_t)r;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    gzclose(f);
    *n = len / 4;
    return (int32_t *)buf; /* little-endian int32, as this machine */
}


static void test_stdlib_pycoder(const char *text, size_t len) {
    gq_tokenizer *tok = NULL;
    TEST_OK(gq_tok_load(&tok, gq_test_data("pycoder-5m")), "load pycoder");
    if (!tok) return;
    static const char *files[2] = {"tok/pycoder-stdlib.ids.gz", "tok/pycoder-stdlib-bos.ids.gz"};
    for (int sp = 0; sp < 2; sp++) {
        size_t n = 0;
        int32_t *exp = read_ids_gz(gq_test_data(files[sp]), &n);
        TEST_CHECK(exp && n > 300000, "read %s (%zu ids)", files[sp], n);
        gq_ids got = {0};
        double t0 = gq_now();
        TEST_OK(gq_tok_encode(tok, text, len, sp, &got), "encode stdlib");
        double dt = gq_now() - t0;
        size_t first = 0;
        while (first < n && first < got.n && got.v[first] == exp[first]) first++;
        if (first < n || got.n != n)
            fprintf(stderr, "  stdlib %s: %zu ids vs %zu expected, first difference at %zu\n", files[sp], got.n, n,
                    first);
        TEST_CHECK(exp && got.n == n && first == n, "pycoder stdlib ids (special=%d) == HF, all %zu", sp, n);
        printf("pycoder: encoded %zu bytes -> %zu ids in %.3f s (%.1f MB/s)\n", len, got.n, dt, len / dt / 1e6);
        gq_ids_free(&got);
        free(exp);
    }
    gq_tok_free(tok);
}

static void test_stdlib_hashes(const char *text, size_t len) {
    json_error_t je;
    json_t *h = json_load_file(gq_test_data("tok/stdlib-hashes.json"), 0, &je);
    TEST_CHECK(h != NULL, "stdlib-hashes.json: %s", je.text);
    if (!h) return;
    static const char *names[][2] = {{"pycoder", "pycoder-5m"},
                                     {"llama2", "tokenizers/llama2"},
                                     {"llama3ish", "tok/llama3ish"},
                                     {"metaspace", "tok/metaspace"}};
    for (int k = 0; k < 4; k++) {
        json_t *e = json_object_get(h, names[k][0]);
        gq_tokenizer *tok = NULL;
        TEST_OK(gq_tok_load(&tok, gq_test_data(names[k][1])), "load %s", names[k][1]);
        if (!tok || !e) continue;
        gq_ids got = {0};
        double t0 = gq_now();
        gq_tok_encode(tok, text, len, 0, &got);
        double dt = gq_now() - t0;
        char hex[32];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)test_fnv1a64(got.v, got.n));
        long long cnt = json_integer_value(json_object_get(e, "count"));
        json_t *first = json_object_get(e, "first");
        int first_ok = 1;
        for (size_t i = 0; i < json_array_size(first); i++)
            first_ok &= i < got.n && got.v[i] == json_integer_value(json_array_get(first, i));
        TEST_CHECK((long long)got.n == cnt, "%s stdlib: %zu ids, HF %lld", names[k][0], got.n, cnt);
        TEST_CHECK(first_ok, "%s stdlib: first 16 ids == HF", names[k][0]);
        TEST_CHECK(!strcmp(hex, json_string_value(json_object_get(e, "fnv1a64"))),
                   "%s stdlib: FNV-1a of all ids %s == HF %s", names[k][0], hex,
                   json_string_value(json_object_get(e, "fnv1a64")));
        printf("%s: stdlib %zu ids in %.3f s (%.1f MB/s)\n", names[k][0], got.n, dt, len / dt / 1e6);
        gq_ids_free(&got);
        gq_tok_free(tok);
    }
    json_decref(h);
}

/* ---- pipeline variants: a base tokenizer.json with keys replaced ---- */

static void test_variants(void) {
    json_error_t je;
    json_t *g = json_load_file(gq_test_data("tok/golden-variants.json"), 0, &je);
    TEST_CHECK(g != NULL, "golden-variants.json: %s", je.text);
    if (!g) return;
    json_t *texts = json_object_get(g, "texts_hex"), *v;
    const char *dir = gq_test_tmpdir("tokvar");
    size_t i;
    json_array_foreach(json_object_get(g, "variants"), i, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        const char *base = json_string_value(json_object_get(v, "base"));
        char src[600], dst[600], key[64];
        snprintf(key, sizeof key, "tok/%s/tokenizer.json", base);
        json_t *d = json_load_file(gq_test_data(key), 0, &je);
        const char *pk;
        json_t *pv;
        json_object_foreach(json_object_get(v, "patch"), pk, pv) {
            const char *dot = strchr(pk, '.'); /* "model.byte_fallback": a nested key */
            if (!dot) {
                json_object_set(d, pk, pv);
            } else {
                char outer[64];
                snprintf(outer, sizeof outer, "%.*s", (int)(dot - pk), pk);
                json_object_set(json_object_get(d, outer), dot + 1, pv);
            }
        }
        snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
        json_dump_file(d, dst, 0);
        json_decref(d);
        snprintf(key, sizeof key, "tok/%s/tokenizer_config.json", base);
        snprintf(src, sizeof src, "%s", gq_test_data(key));
        snprintf(dst, sizeof dst, "%s/tokenizer_config.json", dir);
        gq_copy_file(src, dst);
        gq_tokenizer *tok = NULL;
        TEST_OK(gq_tok_load(&tok, dir), "variant %s loads", name);
        if (!tok) continue;
        int ok_ids = 0, ok_dec = 0, n = 0;
        size_t k;
        json_t *c;
        json_array_foreach(json_object_get(v, "cases"), k, c) {
            size_t len;
            char *text = unhex(json_string_value(json_array_get(texts, k)), &len);
            gq_ids a = {0};
            gq_tok_encode(tok, text, len, 1, &a);
            const char *cname = json_string_value(json_object_get(c, "name"));
            ok_ids += ids_equal(&a, json_object_get(c, "ids"), name, cname);
            ok_dec += decode_matches(tok, &a, 0, json_object_get(c, "decode"), name, cname);
            n++;
            gq_ids_free(&a);
            free(text);
        }
        TEST_CHECK(n >= 30 && ok_ids == n, "variant %s: ids == HF for %d of %d strings", name, ok_ids, n);
        TEST_CHECK(ok_dec == n, "variant %s: decode == HF for %d of %d strings", name, ok_dec, n);
        gq_tok_free(tok);
    }
    TEST_CHECK(json_array_size(json_object_get(g, "variants")) >= 15, "15 variants");
    gq_rmtree(dir);
    json_decref(g);
}

int main(void) {
    TEST_BEGIN("tokenizer");
    test_golden("pycoder-5m", "tok/golden-pycoder.json");
    test_golden("tokenizers/llama2", "tok/golden-llama2.json");
    test_golden("tok/llama3ish", "tok/golden-llama3ish.json");
    test_golden("tok/metaspace", "tok/golden-metaspace.json");
    test_llama2_vectors();
    test_variants();
    char *text = NULL;
    size_t len = 0;
    TEST_OK(gq_read_file(gq_test_data("text/python-stdlib-eval.txt"), &text, &len), "read stdlib text");
    if (text) {
        test_stdlib_pycoder(text, len);
        test_stdlib_hashes(text, len);
    }
    free(text);
    return TEST_REPORT();
}
