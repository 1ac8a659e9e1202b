/*
 * test_tokenizer_norm.c -- Unicode normalizers (NFC, NFD, NFKC, NFKD,
 * Lowercase, StripAccents, Strip) and the Qwen2.5 tokenizer.json layout
 * against Hugging Face `tokenizers` goldens (tests/ref/gen_tokenizer_norm.py
 * -> tests/data/tok/golden-norm.json).
 *
 * Every comparison is exact (tolerance 0): ids are integers, decoded text is
 * compared byte for byte, and the contract is token-for-token equality with
 * `tokenizers`. Per tokenizer and variant:
 *   - 69 tricky strings (composed / decomposed accents, Hangul, ligatures,
 *     circled and full-width forms, Kelvin sign, emoji, leading combining
 *     marks, characters newer than Unicode 9.0, code with tabs and CRLF,
 *     added tokens next to marks, invalid UTF-8): ids, decode;
 *   - the all-code-points text (every code point of U+0080..U+1FFFF and
 *     more, with combining marks between them) in 4096-code-point chunks:
 *     count and FNV-1a-64 of the ids per chunk;
 *   - the first 100 KB of tests/data/text/python-stdlib-eval.txt: ids and
 *     their decode (count, FNV-1a-64, first 16 ids).
 */
#include <jansson.h>

#include "gq/tokenizer.h"
#include "test.h"
#include "test_tok_util.h"
#include "text/unicode.h"

/* ---- helpers ---- */

/* decode(ids) (skip_special as given) equals the hex-encoded text */
static int decode_matches(const gq_tokenizer *tok, const gq_ids *ids, int skip, json_t *exp_hex, const char *what,
                          const char *name) {
    char *txt = NULL;
    size_t tn = 0, en;
    int rc = gq_tok_decode(tok, ids->v, ids->n, skip, &txt, &tn);
    char *exp = unhex(json_string_value(exp_hex), &en);
    int ok = rc == GQ_OK && tn == en && memcmp(txt, exp, en) == 0;
    if (!ok)
        fprintf(stderr, "  %s %s: got %zu bytes \"%.*s\", expected %zu bytes \"%.*s\"\n", name, what, tn,
                (int)(tn > 160 ? 160 : tn), txt ? txt : "", en, (int)(en > 160 ? 160 : en), exp);
    free(txt);
    free(exp);
    return ok;
}

static uint64_t fnv_bytes(const char *s, size_t n) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

static int hash_is(uint64_t h, json_t *hex) {
    char buf[32];
    snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
    return json_is_string(hex) && !strcmp(buf, json_string_value(hex));
}

/* ---- the all-code-points text (gen_tokenizer_norm.py all_chars_pieces) ---- */

typedef struct {
    char *s;
    size_t n;
    size_t *start; /* byte offset of each code point's piece, [ncp + 1] */
    size_t ncp;
} all_chars;

static void all_chars_build(all_chars *a) {
    static const uint32_t ranges[][2] = {
        {0x80, 0x20000}, {0x2F800, 0x2FA20}, {0xE0000, 0xE01F0}, {0xF0000, 0xF0001}, {0x10FFFD, 0x10FFFE}};
    size_t cap = 1 << 20;
    memset(a, 0, sizeof *a);
    a->s = malloc(cap);
    a->start = malloc(0x30000 * sizeof *a->start);
    for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
        for (uint32_t cp = ranges[r][0]; cp < ranges[r][1]; cp++) {
            if (cp >= 0xD800 && cp <= 0xDFFF) continue;
            if (a->n + 16 > cap) a->s = realloc(a->s, cap *= 2);
            size_t i = a->ncp++;
            a->start[i] = a->n;
            a->n += (size_t)gq_uni_encode(cp, a->s + a->n);
            switch (i % 16) {
            case 15: a->s[a->n++] = ' '; break;
            case 5: a->n += (size_t)gq_uni_encode(0x301, a->s + a->n); break;
            case 9: a->n += (size_t)gq_uni_encode(0x316, a->s + a->n); break;
            case 12:
                a->n += (size_t)gq_uni_encode(0x301, a->s + a->n);
                a->n += (size_t)gq_uni_encode(0x316, a->s + a->n);
                break;
            default: break;
            }
        }
    }
    a->start[a->ncp] = a->n;
}

/* Each chunk of `chunk` code points encoded on its own: count and hash ==
 * HF. Returns the number of chunks that differ (named on stderr). */
static int all_chars_check(const gq_tokenizer *tok, const all_chars *a, size_t chunk, json_t *exp, const char *name) {
    int bad = 0;
    size_t k = 0;
    for (size_t c0 = 0; c0 < a->ncp; c0 += chunk, k++) {
        size_t c1 = c0 + chunk < a->ncp ? c0 + chunk : a->ncp;
        gq_ids ids = {0};
        int rc = gq_tok_encode(tok, a->s + a->start[c0], a->start[c1] - a->start[c0], 0, &ids);
        json_t *e = json_array_get(exp, k);
        int ok = rc == GQ_OK && (json_int_t)ids.n == json_integer_value(json_array_get(e, 0)) &&
                 hash_is(test_fnv1a64(ids.v, ids.n), json_array_get(e, 1));
        if (!ok) {
            uint32_t cp0, cp1;
            gq_uni_decode(a->s + a->start[c0], 4, &cp0);
            gq_uni_decode(a->s + a->start[c1 - 1], 4, &cp1);
            fprintf(stderr, "  %s: all-code-points chunk %zu (U+%04X..U+%04X) differs: %zu ids, HF %lld\n", name, k,
                    cp0, cp1, ids.n, (long long)json_integer_value(json_array_get(e, 0)));
            bad++;
        }
        gq_ids_free(&ids);
    }
    if (k != json_array_size(exp)) {
        fprintf(stderr, "  %s: %zu chunks, HF %zu\n", name, k, json_array_size(exp));
        bad++;
    }
    return bad;
}

/* ---- per-string goldens ---- */

static void check_cases(const gq_tokenizer *tok, json_t *g, json_t *cases, int full, const char *tname) {
    json_t *texts = json_object_get(g, "texts_hex"), *names = json_object_get(g, "names"), *c;
    size_t i;
    int ok_ids = 0, ok_dec = 0, n = 0;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_array_get(names, i));
        size_t len;
        char *text = unhex(json_string_value(json_array_get(texts, i)), &len);
        gq_ids a = {0}, b = {0};
        int rc = gq_tok_encode(tok, text, len, 0, &a);
        int same = rc == GQ_OK && ids_equal(&a, json_object_get(c, "ids"), tname, name);
        int dec = decode_matches(tok, &a, 0, json_object_get(c, "decode"), tname, name);
        if (full) {
            rc = gq_tok_encode(tok, text, len, 1, &b);
            same &= rc == GQ_OK && ids_equal(&b, json_object_get(c, "ids_special"), "ids_special", name);
            dec &= decode_matches(tok, &b, 1, json_object_get(c, "decode_special_skip"), "decode_skip", name);
        }
        ok_ids += same;
        ok_dec += dec;
        n++;
        gq_ids_free(&a);
        gq_ids_free(&b);
        free(text);
    }
    TEST_CHECK(n >= 60 && ok_ids == n, "%s: ids == HF for %d of %d strings", tname, ok_ids, n);
    TEST_CHECK(n >= 60 && ok_dec == n, "%s: decode == HF for %d of %d strings", tname, ok_dec, n);
}

static void check_stdlib(const gq_tokenizer *tok, json_t *e, const char *text, size_t text_len, const char *tname) {
    size_t len = (size_t)json_integer_value(json_object_get(e, "bytes"));
    TEST_CHECK(len > 90000 && len <= text_len, "%s: stdlib prefix of %zu bytes", tname, len);
    if (len > text_len) return;
    gq_ids ids = {0};
    double t0 = gq_now();
    TEST_OK(gq_tok_encode(tok, text, len, 0, &ids), "%s: encode stdlib 100 KB", tname);
    double dt = gq_now() - t0;
    json_t *first = json_object_get(e, "first");
    int first_ok = 1;
    for (size_t i = 0; i < json_array_size(first); i++)
        first_ok &= i < ids.n && ids.v[i] == json_integer_value(json_array_get(first, i));
    TEST_CHECK((json_int_t)ids.n == json_integer_value(json_object_get(e, "count")) && first_ok &&
                   hash_is(test_fnv1a64(ids.v, ids.n), json_object_get(e, "fnv1a64")),
               "%s: stdlib 100 KB: %zu ids == HF (count, first 16, FNV-1a of all)", tname, ids.n);
    char *dec = NULL;
    size_t dn = 0;
    TEST_OK(gq_tok_decode(tok, ids.v, ids.n, 0, &dec, &dn), "%s: decode stdlib", tname);
    TEST_CHECK((json_int_t)dn == json_integer_value(json_object_get(e, "decode_len")) &&
                   hash_is(fnv_bytes(dec, dn), json_object_get(e, "decode_fnv1a64")),
               "%s: stdlib 100 KB decode == HF (%zu bytes)", tname, dn);
    if (json_is_true(json_object_get(e, "lossless")))
        TEST_CHECK(dn == len && !memcmp(dec, text, len), "%s: stdlib 100 KB decode(encode(x)) == x", tname);
    printf("%s: stdlib 100 KB -> %zu ids in %.3f s\n", tname, ids.n, dt);
    free(dec);
    gq_ids_free(&ids);
}

static void check_decode_only(const gq_tokenizer *tok, json_t *list, const char *tname) {
    size_t i;
    json_t *c;
    json_array_foreach(list, i, c) {
        gq_ids a = {0};
        size_t k;
        json_t *v;
        json_array_foreach(json_object_get(c, "ids"), k, v) gq_ids_push(&a, (int32_t)json_integer_value(v));
        char name[48];
        snprintf(name, sizeof name, "decode_only[%zu]", i);
        TEST_CHECK(decode_matches(tok, &a, 0, json_object_get(c, "decode"), tname, name), "%s: %s == HF", tname, name);
        TEST_CHECK(decode_matches(tok, &a, 1, json_object_get(c, "decode_skip"), tname, name),
                   "%s: %s skip_special == HF", tname, name);
        gq_ids_free(&a);
    }
}

static void test_trained(json_t *g, const all_chars *ac, const char *text, size_t text_len) {
    size_t i, chunk = (size_t)json_integer_value(json_object_get(g, "chunk"));
    json_t *e;
    json_array_foreach(json_object_get(g, "tokenizers"), i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        char dir[64];
        snprintf(dir, sizeof dir, "tok/%s", name);
        gq_tokenizer *tok = NULL;
        TEST_OK(gq_tok_load(&tok, gq_test_data(dir)), "load %s", dir);
        if (!tok) continue;
        check_cases(tok, g, json_object_get(e, "cases"), 1, name);
        check_decode_only(tok, json_object_get(e, "decode_only"), name);
        double t0 = gq_now();
        int bad = all_chars_check(tok, ac, chunk, json_object_get(e, "all_chars"), name);
        TEST_CHECK(bad == 0, "%s: all-code-points text == HF (%d chunks differ)", name, bad);
        printf("%s: all-code-points text (%zu bytes) in %.3f s\n", name, ac->n, gq_now() - t0);
        check_stdlib(tok, json_object_get(e, "stdlib_100k"), text, text_len, name);
        gq_tok_free(tok);
    }
    TEST_CHECK(i == 3, "3 trained tokenizers, got %zu", i);
}

/* ---- variants: a base tokenizer.json with top-level keys replaced ---- */

static void test_variants(json_t *g, const all_chars *ac) {
    size_t i, chunk = (size_t)json_integer_value(json_object_get(g, "chunk"));
    json_t *v;
    json_error_t je;
    const char *dir = gq_test_tmpdir("toknorm");
    json_array_foreach(json_object_get(g, "variants"), i, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        const char *base = json_string_value(json_object_get(v, "base"));
        char src[600], dst[600], key[64];
        snprintf(key, sizeof key, "tok/%s/tokenizer.json", base);
        json_t *d = json_load_file(gq_test_data(key), 0, &je);
        TEST_CHECK(d != NULL, "%s: %s", key, je.text);
        if (!d) continue;
        json_object_update(d, json_object_get(v, "patch"));
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
        check_cases(tok, g, json_object_get(v, "cases"), 0, name);
        int bad = all_chars_check(tok, ac, chunk, json_object_get(v, "all_chars"), name);
        TEST_CHECK(bad == 0, "variant %s: all-code-points text == HF (%d chunks differ)", name, bad);
        gq_tok_free(tok);
    }
    TEST_CHECK(i >= 11, "11 normalizer variants, got %zu", i);
    gq_rmtree(dir);
}

/* ---- the normalizers directly ---- */

static int norm_is(int form, const char *in, size_t n, const char *exp, size_t en) {
    size_t on;
    char *o = form == 'L'   ? gq_uni_lowercase(in, n, &on)
              : form == 'M' ? gq_uni_strip_marks(in, n, &on)
                            : gq_uni_normalize(form, in, n, &on);
    int ok = on == en && !memcmp(o, exp, en) && o[on] == 0;
    if (!ok) {
        fprintf(stderr, "  form %d of \"%.*s\": got", form, (int)n, in);
        for (size_t i = 0; i < on; i++) fprintf(stderr, " %02X", (unsigned char)o[i]);
        fprintf(stderr, "\n");
    }
    free(o);
    return ok;
}
#define NORM_IS(form, in, exp) norm_is(form, in, sizeof in - 1, exp, sizeof exp - 1)

static void test_unicode_direct(void) {
    TEST_CHECK(NORM_IS(GQ_UNI_NFC, "cafe\xCC\x81", "caf\xC3\xA9"), "NFC composes e + U+0301");
    TEST_CHECK(NORM_IS(GQ_UNI_NFD, "caf\xC3\xA9", "cafe\xCC\x81"), "NFD decomposes U+00E9");
    TEST_CHECK(NORM_IS(GQ_UNI_NFD, "a\xCC\x81\xCC\x96", "a\xCC\x96\xCC\x81"), "NFD orders marks by combining class");
    TEST_CHECK(NORM_IS(GQ_UNI_NFC, "\xE2\x84\xAA", "K"), "NFC: Kelvin sign -> K");
    TEST_CHECK(NORM_IS(GQ_UNI_NFC, "\xEF\xAC\x81\xE2\x91\xA0", "\xEF\xAC\x81\xE2\x91\xA0"),
               "NFC keeps ligature, circled 1");
    TEST_CHECK(NORM_IS(GQ_UNI_NFKC, "\xEF\xAC\x81\xE2\x91\xA0\xEF\xBC\xAB", "fi1K"),
               "NFKC: fi ligature, circled 1, full-width K");
    TEST_CHECK(NORM_IS(GQ_UNI_NFC, "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB", "\xED\x95\x9C"),
               "NFC: Hangul jamo -> syllable");
    TEST_CHECK(NORM_IS(GQ_UNI_NFKD, "\xED\x95\x9C", "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"), "NFKD: syllable -> jamo");
    TEST_CHECK(NORM_IS(GQ_UNI_NFC, "a\0e\xCC\x81", "a\0\xC3\xA9"), "NFC across a NUL byte");
    TEST_CHECK(NORM_IS(GQ_UNI_NFC, "", ""), "NFC of the empty string");
    /* characters newer than the Unicode 9.0 tables of `tokenizers` stay as they are */
    TEST_CHECK(NORM_IS(GQ_UNI_NFD, "\xE0\xB0\x95\xCC\x81\xE0\xB0\xBC", "\xE0\xB0\x95\xCC\x81\xE0\xB0\xBC"),
               "NFD: U+0C3C (Unicode 14, class 7) not reordered before U+0301");
    TEST_CHECK(NORM_IS(GQ_UNI_NFKC, "\xF0\x9F\xAF\xB0", "\xF0\x9F\xAF\xB0"), "NFKC: U+1FBF0 (Unicode 13) kept");
    TEST_CHECK(NORM_IS(GQ_UNI_NFC, "\xF0\x91\xA4\xB5\xF0\x91\xA4\xB0", "\xF0\x91\xA4\xB5\xF0\x91\xA4\xB0"),
               "NFC: U+11935 U+11930 (Unicode 13) not composed");
    TEST_CHECK(NORM_IS('L', "\xC4\xB0stanbul \xCE\xA3\xCE\x91\xCE\xA3 \xE1\xBA\x9E",
                       "i\xCC\x87stanbul \xCF\x83\xCE\xB1\xCF\x83 \xC3\x9F"),
               "Lowercase: U+0130 -> i + U+0307, no final sigma, capital sharp s");
    TEST_CHECK(NORM_IS('L', "\xF0\x90\xB5\x90", "\xF0\x90\xB5\xB0"), "Lowercase: U+10D50 (Unicode 16) -> U+10D70");
    TEST_CHECK(NORM_IS('M', "e\xCC\x81\xCC\x96x\xE1\xB3\xB2y\xE0\xB0\xBC", "exy\xE0\xB0\xBC"),
               "StripAccents: marks of Unicode 9.0 (U+1CF2 was one) removed, U+0C3C kept");
}

/* ---- the Qwen2.5 layout: accessors ---- */

static void test_qwen_layout(void) {
    gq_tokenizer *t = NULL;
    TEST_OK(gq_tok_load(&t, gq_test_data("tok/qwen2ish")), "load qwen2ish");
    if (!t) return;
    int32_t im_start = gq_tok_find(t, "<|im_start|>"), im_end = gq_tok_find(t, "<|im_end|>");
    int32_t tool = gq_tok_find(t, "<tool_call>"), eot = gq_tok_find(t, "<|endoftext|>");
    TEST_CHECK(gq_tok_vocab_size(t) == 2022 && eot == 2000 && im_start == 2001 && im_end == 2002 && tool == 2014,
               "qwen2ish: 2000 model pieces + 22 added tokens in Qwen2.5's order");
    TEST_CHECK(gq_tok_bos(t) == -1 && !gq_tok_adds_bos(t), "qwen2ish: bos_token null -> no BOS (got %d)",
               gq_tok_bos(t));
    TEST_CHECK(gq_tok_eos(t) == im_end, "qwen2ish: eos_token <|im_end|>");
    TEST_CHECK(gq_tok_is_special(t, im_start) && gq_tok_is_special(t, eot) && !gq_tok_is_special(t, tool),
               "qwen2ish: <|im_start|> special, <tool_call> not");
    const char *ct = gq_tok_chat_template(t);
    TEST_CHECK(ct && strstr(ct, "<|im_start|>") != NULL, "qwen2ish: chat_template");
    gq_ids ids = {0};
    static const char msg[] = "<|im_start|>user\nCafe\xCC\x81<|im_end|>";
    TEST_OK(gq_tok_encode(t, msg, sizeof msg - 1, 1, &ids), "encode chat turn");
    TEST_CHECK(ids.n > 3 && ids.v[0] == im_start && ids.v[ids.n - 1] == im_end,
               "qwen2ish: add_special adds nothing, specials matched");
    char *s = NULL;
    size_t n = 0;
    gq_tok_decode(t, ids.v, ids.n, 1, &s, &n);
    TEST_CHECK(s && !strcmp(s, "user\nCaf\xC3\xA9"), "qwen2ish: decode (NFC applied, specials skipped): '%s'",
               s ? s : "");
    free(s);
    gq_ids_free(&ids);
    gq_tok_free(t);
}

int main(void) {
    TEST_BEGIN("tokenizer_norm");
    test_unicode_direct();
    test_qwen_layout();
    json_error_t je;
    json_t *g = json_load_file(gq_test_data("tok/golden-norm.json"), 0, &je);
    TEST_CHECK(g != NULL, "golden-norm.json: %s", je.text);
    char *text = NULL;
    size_t len = 0;
    TEST_OK(gq_read_file(gq_test_data("text/python-stdlib-eval.txt"), &text, &len), "read stdlib text");
    if (g && text) {
        all_chars ac;
        all_chars_build(&ac);
        double t0 = gq_now();
        test_trained(g, &ac, text, len);
        printf("trained tokenizers: %.2f s\n", gq_now() - t0);
        t0 = gq_now();
        test_variants(g, &ac);
        printf("variants: %.2f s\n", gq_now() - t0);
        free(ac.s);
        free(ac.start);
    }
    free(text);
    json_decref(g);
    return TEST_REPORT();
}
