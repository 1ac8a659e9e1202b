/*
 * tokenizer_load.c -- read tokenizer.json (and tokenizer_config.json beside
 * it) into a gq_tokenizer.
 *
 * Supported (anything else is GQ_ERR_UNSUPPORTED naming what was found):
 *   model          BPE (vocab, merges as "a b" or ["a", "b"], unk_token,
 *                  fuse_unk, byte_fallback, ignore_merges)
 *   normalizer     null, Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD,
 *                  Lowercase, StripAccents, Strip
 *   pre_tokenizer  null, Sequence, ByteLevel, Split, Metaspace
 *   post_processor null, Sequence, TemplateProcessing, ByteLevel,
 *                  BertProcessing, RobertaProcessing
 *   decoder        null, Sequence, ByteLevel, Metaspace, Replace,
 *                  ByteFallback, Fuse, Strip
 * A merge string with more than one space (possible when a vocab piece
 * contains a space) is split at the one space where both halves and their
 * concatenation are in the vocab; `tokenizers` itself refuses such a file.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

#define MAX_VOCAB (1 << 24)
#define SP_SPACE "\xE2\x96\x81" /* U+2581 "▁" */

static const char *GPT2_RE =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- small JSON helpers (all errors name the file and the field) ---- */

/* Both files are parsed with JSON_DECODE_INT_AS_REAL (tokenizer_config.json
 * holds integers like 1e30 that do not fit int64): an id is a number with an
 * integral value of at most 2^53. */
static int is_int(json_t *v) {
    if (json_is_integer(v)) return 1;
    if (!json_is_real(v)) return 0;
    double d = json_real_value(v);
    return d == (double)(long long)d && d >= -9007199254740992.0 && d <= 9007199254740992.0;
}
static long long int_val(json_t *v) {
    return json_is_integer(v) ? (long long)json_integer_value(v) : (long long)json_real_value(v);
}

static int jbool(const char *path, const char *where, json_t *o, const char *k, int def, int *out) {
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) {
        *out = def;
        return GQ_OK;
    }
    if (!json_is_boolean(v))
        return gq_err(GQ_ERR_FORMAT, "%s: %s.%s: expected true or false", path, where, k);
    *out = json_is_true(v);
    return GQ_OK;
}

/* String field; *out NULL when absent or null. */
static int jstr(const char *path, const char *where, json_t *o, const char *k, const char **out,
                size_t *len) {
    json_t *v = json_object_get(o, k);
    *out = NULL;
    if (len) *len = 0;
    if (!v || json_is_null(v)) return GQ_OK;
    if (!json_is_string(v)) return gq_err(GQ_ERR_FORMAT, "%s: %s.%s: expected a string", path, where, k);
    *out = json_string_value(v);
    if (len) *len = json_string_length(v);
    return GQ_OK;
}

static char *dupn(const char *s, size_t n) {
    char *d = gq_malloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static int compile_re(const char *path, const char *where, const char *pat, size_t n, pcre2_code **out) {
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, n, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return gq_err(GQ_ERR_FORMAT, "%s: %s: regex /%.*s/ does not compile at offset %zu: %s", path,
                      where, (int)(n > 200 ? 200 : n), pat, (size_t)eo, (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
    *out = re;
    return GQ_OK;
}

/* {"String": s} or {"Regex": r} pattern object. */
static int parse_pattern(const char *path, const char *where, json_t *o, char **lit, size_t *lit_len,
                         pcre2_code **re) {
    json_t *p = json_object_get(o, "pattern");
    json_t *s = json_is_object(p) ? json_object_get(p, "String") : NULL;
    json_t *r = json_is_object(p) ? json_object_get(p, "Regex") : NULL;
    *lit = NULL;
    *re = NULL;
    if (json_is_string(s)) {
        *lit = dupn(json_string_value(s), json_string_length(s));
        *lit_len = json_string_length(s);
        return GQ_OK;
    }
    if (json_is_string(r)) return compile_re(path, where, json_string_value(r), json_string_length(r), re);
    return gq_err(GQ_ERR_FORMAT, "%s: %s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", path,
                  where);
}

static const char *jtype(json_t *o) {
    json_t *t = json_object_get(o, "type");
    return json_is_string(t) ? json_string_value(t) : NULL;
}

/* ---- normalizer ---- */

/* GQ_UNI_* of a Unicode normalization form's name, or -1. */
static int unicode_form(const char *ty) {
    static const char *names[] = {[GQ_UNI_NFC] = "NFC", [GQ_UNI_NFD] = "NFD", [GQ_UNI_NFKC] = "NFKC",
                                  [GQ_UNI_NFKD] = "NFKD"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(ty, names[i])) return i;
    return -1;
}

static int parse_normalizer(gq_tokenizer *t, json_t *n) {
    if (!n || json_is_null(n)) return GQ_OK;
    const char *ty = jtype(n);
    if (!json_is_object(n) || !ty) return gq_err(GQ_ERR_FORMAT, "%s: normalizer: expected an object with a \"type\"", t->path);
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(n, "normalizers"), *v;
        size_t i;
        if (!json_is_array(a)) return gq_err(GQ_ERR_FORMAT, "%s: normalizer Sequence: expected \"normalizers\": [...]", t->path);
        json_array_foreach(a, i, v) {
            int rc = parse_normalizer(t, v);
            if (rc) return rc;
        }
        return GQ_OK;
    }
    if (t->n_norm == GQ_TOK_MAX_STEPS)
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: normalizer: more than %d steps", t->path, GQ_TOK_MAX_STEPS);
    gq_tok_norm *st = &t->norm[t->n_norm];
    memset(st, 0, sizeof *st);
    int rc;
    if (!strcmp(ty, "Prepend")) {
        const char *s;
        size_t len;
        if ((rc = jstr(t->path, "normalizer Prepend", n, "prepend", &s, &len))) return rc;
        if (!s) return gq_err(GQ_ERR_FORMAT, "%s: normalizer Prepend: missing \"prepend\"", t->path);
        st->kind = GQ_NORM_PREPEND;
        st->a = dupn(s, len);
        st->a_len = len;
    } else if (!strcmp(ty, "Replace")) {
        const char *c;
        size_t len;
        st->kind = GQ_NORM_REPLACE;
        t->n_norm++; /* owned from here on: freed with the tokenizer */
        if ((rc = parse_pattern(t->path, "normalizer Replace", n, &st->a, &st->a_len, &st->re))) return rc;
        if ((rc = jstr(t->path, "normalizer Replace", n, "content", &c, &len))) return rc;
        if (!c) return gq_err(GQ_ERR_FORMAT, "%s: normalizer Replace: missing \"content\"", t->path);
        st->b = dupn(c, len);
        st->b_len = len;
        return GQ_OK;
    } else if ((st->form = unicode_form(ty)) >= 0) {
        st->kind = GQ_NORM_UNICODE;
    } else if (!strcmp(ty, "Lowercase")) {
        st->kind = GQ_NORM_LOWERCASE;
    } else if (!strcmp(ty, "StripAccents")) {
        st->kind = GQ_NORM_STRIP_ACCENTS;
    } else if (!strcmp(ty, "Strip")) {
        st->kind = GQ_NORM_STRIP;
        if ((rc = jbool(t->path, "normalizer Strip", n, "strip_left", 1, &st->left))) return rc;
        if ((rc = jbool(t->path, "normalizer Strip", n, "strip_right", 1, &st->right))) return rc;
    } else {
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "%s: normalizer type '%s' is not supported (supported: Sequence, Prepend, Replace, NFC, NFD, "
                      "NFKC, NFKD, Lowercase, StripAccents, Strip, null)",
                      t->path, ty);
    }
    t->n_norm++;
    return GQ_OK;
}

/* ---- pre-tokenizer ---- */

static int parse_prepend_scheme(gq_tokenizer *t, const char *where, json_t *o, int *out) {
    const char *s;
    int rc, aps;
    if ((rc = jstr(t->path, where, o, "prepend_scheme", &s, NULL))) return rc;
    if (!s) { /* older files: add_prefix_space */
        if ((rc = jbool(t->path, where, o, "add_prefix_space", 1, &aps))) return rc;
        *out = aps ? GQ_PREPEND_ALWAYS : GQ_PREPEND_NEVER;
        return GQ_OK;
    }
    if (!strcmp(s, "always")) *out = GQ_PREPEND_ALWAYS;
    else if (!strcmp(s, "first")) *out = GQ_PREPEND_FIRST;
    else if (!strcmp(s, "never")) *out = GQ_PREPEND_NEVER;
    else return gq_err(GQ_ERR_FORMAT, "%s: %s.prepend_scheme: expected always, first or never, got '%s'", t->path, where, s);
    return GQ_OK;
}

static int parse_replacement(gq_tokenizer *t, const char *where, json_t *o, uint32_t *cp) {
    const char *s;
    size_t len;
    int rc;
    if ((rc = jstr(t->path, where, o, "replacement", &s, &len))) return rc;
    if (!s) s = "\xE2\x96\x81", len = 3; /* U+2581 */
    if (len == 0 || len > 4 || gq_uni_valid_prefix(s, len) != len || (size_t)gq_uni_len((uint8_t)s[0]) != len)
        return gq_err(GQ_ERR_FORMAT, "%s: %s.replacement: expected one character, got '%s'", t->path, where, s);
    gq_uni_decode(s, len, cp);
    return GQ_OK;
}

static int parse_pre(gq_tokenizer *t, json_t *n) {
    if (!n || json_is_null(n)) return GQ_OK;
    const char *ty = jtype(n);
    if (!json_is_object(n) || !ty) return gq_err(GQ_ERR_FORMAT, "%s: pre_tokenizer: expected an object with a \"type\"", t->path);
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(n, "pretokenizers"), *v;
        size_t i;
        if (!json_is_array(a)) return gq_err(GQ_ERR_FORMAT, "%s: pre_tokenizer Sequence: expected \"pretokenizers\": [...]", t->path);
        json_array_foreach(a, i, v) {
            int rc = parse_pre(t, v);
            if (rc) return rc;
        }
        return GQ_OK;
    }
    if (t->byte_level)
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: pre_tokenizer '%s' after ByteLevel is not supported (ByteLevel must be last)", t->path, ty);
    if (t->n_pre == GQ_TOK_MAX_STEPS)
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: pre_tokenizer: more than %d steps", t->path, GQ_TOK_MAX_STEPS);
    gq_tok_pre *st = &t->pre[t->n_pre];
    memset(st, 0, sizeof *st);
    int rc;
    if (!strcmp(ty, "ByteLevel")) {
        int use_regex = 1;
        st->kind = GQ_PRE_BYTELEVEL;
        st->behavior = GQ_SPLIT_ISOLATED;
        if ((rc = jbool(t->path, "pre_tokenizer ByteLevel", n, "add_prefix_space", 1, &st->add_prefix_space))) return rc;
        if ((rc = jbool(t->path, "pre_tokenizer ByteLevel", n, "use_regex", 1, &use_regex))) return rc;
        t->n_pre++;
        t->byte_level = 1;
        if (use_regex) return compile_re(t->path, "pre_tokenizer ByteLevel", GPT2_RE, strlen(GPT2_RE), &st->re);
        return GQ_OK;
    }
    if (!strcmp(ty, "Split")) {
        const char *b;
        st->kind = GQ_PRE_SPLIT;
        t->n_pre++;
        if ((rc = parse_pattern(t->path, "pre_tokenizer Split", n, &st->lit, &st->lit_len, &st->re))) return rc;
        if ((rc = jbool(t->path, "pre_tokenizer Split", n, "invert", 0, &st->invert))) return rc;
        if ((rc = jstr(t->path, "pre_tokenizer Split", n, "behavior", &b, NULL))) return rc;
        if (!b) return gq_err(GQ_ERR_FORMAT, "%s: pre_tokenizer Split: missing \"behavior\"", t->path);
        if (!strcmp(b, "Removed")) st->behavior = GQ_SPLIT_REMOVED;
        else if (!strcmp(b, "Isolated")) st->behavior = GQ_SPLIT_ISOLATED;
        else if (!strcmp(b, "MergedWithPrevious")) st->behavior = GQ_SPLIT_MERGED_PREV;
        else if (!strcmp(b, "MergedWithNext")) st->behavior = GQ_SPLIT_MERGED_NEXT;
        else if (!strcmp(b, "Contiguous")) st->behavior = GQ_SPLIT_CONTIGUOUS;
        else return gq_err(GQ_ERR_FORMAT, "%s: pre_tokenizer Split.behavior: expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous, got '%s'", t->path, b);
        return GQ_OK;
    }
    if (!strcmp(ty, "Metaspace")) {
        uint32_t cp;
        st->kind = GQ_PRE_METASPACE;
        if ((rc = parse_replacement(t, "pre_tokenizer Metaspace", n, &cp))) return rc;
        st->repl_len = gq_uni_encode(cp, st->repl);
        if ((rc = parse_prepend_scheme(t, "pre_tokenizer Metaspace", n, &st->prepend))) return rc;
        if ((rc = jbool(t->path, "pre_tokenizer Metaspace", n, "split", 1, &st->split))) return rc;
        t->n_pre++;
        return GQ_OK;
    }
    return gq_err(GQ_ERR_UNSUPPORTED,
                  "%s: pre_tokenizer type '%s' is not supported (supported: Sequence, ByteLevel, Split, Metaspace, null)",
                  t->path, ty);
}

/* ---- decoder ---- */

static int parse_decoder(gq_tokenizer *t, json_t *n) {
    if (!n || json_is_null(n)) return GQ_OK;
    const char *ty = jtype(n);
    if (!json_is_object(n) || !ty) return gq_err(GQ_ERR_FORMAT, "%s: decoder: expected an object with a \"type\"", t->path);
    t->has_decoder = 1;
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(n, "decoders"), *v;
        size_t i;
        if (!json_is_array(a)) return gq_err(GQ_ERR_FORMAT, "%s: decoder Sequence: expected \"decoders\": [...]", t->path);
        json_array_foreach(a, i, v) {
            int rc = parse_decoder(t, v);
            if (rc) return rc;
        }
        return GQ_OK;
    }
    if (t->n_dec == GQ_TOK_MAX_STEPS)
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: decoder: more than %d steps", t->path, GQ_TOK_MAX_STEPS);
    gq_tok_dec *st = &t->dec[t->n_dec];
    memset(st, 0, sizeof *st);
    int rc;
    if (!strcmp(ty, "ByteLevel")) {
        st->kind = GQ_DEC_BYTELEVEL;
    } else if (!strcmp(ty, "ByteFallback")) {
        st->kind = GQ_DEC_BYTEFALLBACK;
    } else if (!strcmp(ty, "Fuse")) {
        st->kind = GQ_DEC_FUSE;
    } else if (!strcmp(ty, "Metaspace")) {
        st->kind = GQ_DEC_METASPACE;
        if ((rc = parse_replacement(t, "decoder Metaspace", n, &st->cp))) return rc;
        if ((rc = parse_prepend_scheme(t, "decoder Metaspace", n, &st->prepend))) return rc;
    } else if (!strcmp(ty, "Replace")) {
        pcre2_code *re = NULL;
        const char *c;
        size_t len;
        st->kind = GQ_DEC_REPLACE;
        t->n_dec++;
        if ((rc = parse_pattern(t->path, "decoder Replace", n, &st->a, &st->a_len, &re))) return rc;
        if (re) {
            pcre2_code_free(re);
            return gq_err(GQ_ERR_UNSUPPORTED, "%s: decoder Replace with a Regex pattern is not supported (String only)", t->path);
        }
        if ((rc = jstr(t->path, "decoder Replace", n, "content", &c, &len))) return rc;
        if (!c) return gq_err(GQ_ERR_FORMAT, "%s: decoder Replace: missing \"content\"", t->path);
        st->b = dupn(c, len);
        st->b_len = len;
        return GQ_OK;
    } else if (!strcmp(ty, "Strip")) {
        const char *c;
        size_t len;
        json_t *a = json_object_get(n, "start"), *b = json_object_get(n, "stop");
        st->kind = GQ_DEC_STRIP;
        if ((rc = jstr(t->path, "decoder Strip", n, "content", &c, &len))) return rc;
        if (!c || !len || (size_t)gq_uni_len((uint8_t)c[0]) != len)
            return gq_err(GQ_ERR_FORMAT, "%s: decoder Strip.content: expected one character", t->path);
        gq_uni_decode(c, len, &st->cp);
        if (!is_int(a) || !is_int(b) || int_val(a) < 0 || int_val(b) < 0 ||
            int_val(a) > 1000000 || int_val(b) > 1000000)
            return gq_err(GQ_ERR_FORMAT, "%s: decoder Strip: expected integer \"start\" and \"stop\" >= 0", t->path);
        st->start = (int)int_val(a);
        st->stop = (int)int_val(b);
    } else {
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "%s: decoder type '%s' is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, null)",
                      t->path, ty);
    }
    t->n_dec++;
    return GQ_OK;
}

/* ---- post-processor ---- */

static void push_id(int32_t **a, int *n, int32_t id) {
    *a = gq_realloc(*a, (size_t)(*n + 1) * sizeof **a);
    (*a)[(*n)++] = id;
}

static int check_id(gq_tokenizer *t, const char *where, long long id) {
    if (id < 0 || id >= t->n_vocab)
        return gq_err(GQ_ERR_FORMAT, "%s: %s: token id %lld is outside the vocabulary [0, %d)", t->path, where,
                      (long long)id, t->n_vocab);
    return GQ_OK;
}

static int parse_template(gq_tokenizer *t, json_t *n) {
    json_t *single = json_object_get(n, "single"), *specials = json_object_get(n, "special_tokens"), *item;
    size_t i;
    int seen_a = 0, rc;
    if (!json_is_array(single))
        return gq_err(GQ_ERR_FORMAT, "%s: post_processor TemplateProcessing: expected \"single\": [...]", t->path);
    json_array_foreach(single, i, item) {
        json_t *sp = json_object_get(item, "SpecialToken"), *sq = json_object_get(item, "Sequence");
        if (json_is_object(sq)) {
            if (seen_a)
                return gq_err(GQ_ERR_UNSUPPORTED, "%s: post_processor TemplateProcessing: \"single\" has two sequences", t->path);
            seen_a = 1;
            continue;
        }
        json_t *name = json_object_get(sp, "id");
        json_t *st = json_is_string(name) ? json_object_get(specials, json_string_value(name)) : NULL;
        json_t *ids = json_object_get(st, "ids"), *v;
        size_t j;
        if (!json_is_array(ids))
            return gq_err(GQ_ERR_FORMAT, "%s: post_processor TemplateProcessing: single[%zu]: expected a SpecialToken listed in \"special_tokens\" with \"ids\"",
                          t->path, i);
        json_array_foreach(ids, j, v) {
            if (!is_int(v)) return gq_err(GQ_ERR_FORMAT, "%s: post_processor special token ids: expected integers", t->path);
            if ((rc = check_id(t, "post_processor", int_val(v)))) return rc;
            if (seen_a) push_id(&t->post_post, &t->n_post_post, (int32_t)int_val(v));
            else push_id(&t->post_pre, &t->n_post_pre, (int32_t)int_val(v));
        }
    }
    if (!seen_a) return gq_err(GQ_ERR_FORMAT, "%s: post_processor TemplateProcessing: \"single\" has no $A sequence", t->path);
    return GQ_OK;
}

static int parse_post(gq_tokenizer *t, json_t *n, int *has_post) {
    if (!n || json_is_null(n)) return GQ_OK;
    const char *ty = jtype(n);
    if (!json_is_object(n) || !ty) return gq_err(GQ_ERR_FORMAT, "%s: post_processor: expected an object with a \"type\"", t->path);
    *has_post = 1;
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(n, "processors"), *v;
        size_t i;
        if (!json_is_array(a)) return gq_err(GQ_ERR_FORMAT, "%s: post_processor Sequence: expected \"processors\": [...]", t->path);
        json_array_foreach(a, i, v) {
            int rc = parse_post(t, v, has_post);
            if (rc) return rc;
        }
        return GQ_OK;
    }
    if (!strcmp(ty, "ByteLevel")) return GQ_OK; /* only adjusts offsets */
    if (!strcmp(ty, "TemplateProcessing")) {
        if (t->n_post_pre || t->n_post_post)
            return gq_err(GQ_ERR_UNSUPPORTED, "%s: post_processor: more than one template", t->path);
        return parse_template(t, n);
    }
    if (!strcmp(ty, "BertProcessing") || !strcmp(ty, "RobertaProcessing")) {
        json_t *cls = json_object_get(n, "cls"), *sep = json_object_get(n, "sep");
        json_t *ci = json_array_get(cls, 1), *si = json_array_get(sep, 1);
        int rc;
        if (!is_int(ci) || !is_int(si))
            return gq_err(GQ_ERR_FORMAT, "%s: post_processor %s: expected \"cls\" and \"sep\" as [token, id]", t->path, ty);
        if ((rc = check_id(t, "post_processor cls", int_val(ci)))) return rc;
        if ((rc = check_id(t, "post_processor sep", int_val(si)))) return rc;
        push_id(&t->post_pre, &t->n_post_pre, (int32_t)int_val(ci));
        push_id(&t->post_post, &t->n_post_post, (int32_t)int_val(si));
        return GQ_OK;
    }
    return gq_err(GQ_ERR_UNSUPPORTED,
                  "%s: post_processor type '%s' is not supported (supported: Sequence, TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, null)",
                  t->path, ty);
}

/* ---- model ---- */

/* Byte-level model key of a piece: the raw bytes its characters stand for.
 * Returns 0 if a character is outside the byte-level alphabet. */
static int bytelevel_key(const char *s, size_t n, char *out, size_t *out_n) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)gq_uni_decode(s + i, n - i, &cp);
        int b = gq_uni_bytelevel_byte(cp);
        if (b < 0) return 0;
        out[o++] = (char)b;
    }
    *out_n = o;
    return 1;
}

static int merge_lookup(gq_tokenizer *t, size_t i, const char *s, size_t n, int32_t *id) {
    *id = gq_tok_strmap_get(&t->pieces, s, n);
    if (*id < 0)
        return gq_err(GQ_ERR_FORMAT, "%s: model.merges[%zu]: '%.*s' is not in the vocab", t->path, i, (int)n, s);
    return GQ_OK;
}

/* Split a "left right" merge string; see the note at the top of the file. */
static int split_merge(gq_tokenizer *t, size_t i, const char *s, size_t n, size_t *sp) {
    size_t cand = 0, nsp = 0, found = 0;
    for (size_t k = 0; k < n; k++) nsp += s[k] == ' ';
    if (nsp == 1) {
        *sp = (size_t)((const char *)memchr(s, ' ', n) - s);
        return GQ_OK;
    }
    for (size_t k = 0; k < n && nsp > 1; k++) {
        if (s[k] != ' ' || k == 0 || k + 1 == n) continue;
        if (gq_tok_strmap_get(&t->pieces, s, k) < 0 || gq_tok_strmap_get(&t->pieces, s + k + 1, n - k - 1) < 0) continue;
        char *cat = gq_malloc(n);
        memcpy(cat, s, k);
        memcpy(cat + k, s + k + 1, n - k - 1);
        int ok = gq_tok_strmap_get(&t->pieces, cat, n - 1) >= 0;
        free(cat);
        if (ok) cand = k, found++;
    }
    if (found != 1)
        return gq_err(GQ_ERR_FORMAT, "%s: model.merges[%zu]: expected \"left right\" (two vocab pieces separated by one space), got '%.*s'",
                      t->path, i, (int)n, s);
    *sp = cand;
    return GQ_OK;
}

static int parse_merges(gq_tokenizer *t, json_t *merges) {
    if (!json_is_array(merges)) return gq_err(GQ_ERR_FORMAT, "%s: model.merges: expected an array", t->path);
    size_t nm = json_array_size(merges), i;
    json_t *m;
    gq_tok_pairmap_init(&t->merges, nm);
    json_array_foreach(merges, i, m) {
        const char *a, *b;
        size_t an, bn;
        int rc;
        if (json_is_string(m)) {
            size_t sp = 0;
            a = json_string_value(m);
            if ((rc = split_merge(t, i, a, json_string_length(m), &sp))) return rc;
            an = sp;
            b = a + sp + 1;
            bn = json_string_length(m) - sp - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            an = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bn = json_string_length(json_array_get(m, 1));
        } else {
            return gq_err(GQ_ERR_FORMAT, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", t->path, i);
        }
        int32_t ia, ib, inew;
        if ((rc = merge_lookup(t, i, a, an, &ia)) || (rc = merge_lookup(t, i, b, bn, &ib))) return rc;
        char *cat = gq_malloc(an + bn + 1);
        memcpy(cat, a, an);
        memcpy(cat + an, b, bn);
        rc = merge_lookup(t, i, cat, an + bn, &inew);
        free(cat);
        if (rc) return rc;
        gq_tok_pairmap_put(&t->merges, ia, ib, (int32_t)i, inew); /* a repeated pair: the last wins */
    }
    return GQ_OK;
}

/* The vocab: pieces[] and the pieces map (model vocab only at this point). */
static int parse_vocab(gq_tokenizer *t, json_t *vocab) {
    const char *k;
    size_t kl;
    json_t *v;
    json_object_keylen_foreach(vocab, k, kl, v) {
        if (!is_int(v) || int_val(v) < 0 || int_val(v) >= t->n_vocab)
            return gq_err(GQ_ERR_FORMAT, "%s: model.vocab['%s']: expected an id in [0, %d)", t->path, k, MAX_VOCAB);
        int32_t id = (int32_t)int_val(v);
        if (t->piece[id]) free(t->piece[id]);
        t->piece[id] = dupn(k, kl);
        t->piece_len[id] = (uint32_t)kl;
        gq_tok_strmap_put(&t->pieces, k, kl, id);
    }
    return GQ_OK;
}

/* Model keys, one-byte symbols and byte-fallback ids, once byte_level is known. */
static void build_model_keys(gq_tokenizer *t) {
    gq_tok_strmap_init(&t->model, t->pieces.n);
    char *buf = gq_malloc(1024);
    size_t cap = 1024;
    for (size_t e = 0; e < t->pieces.n; e++) {
        const char *k = t->pieces.keys + t->pieces.koff[e];
        size_t kn = t->pieces.klen[e], on;
        if (!t->byte_level) {
            gq_tok_strmap_put(&t->model, k, kn, t->pieces.val[e]);
            continue;
        }
        if (kn > cap) buf = gq_realloc(buf, cap = kn);
        if (bytelevel_key(k, kn, buf, &on)) gq_tok_strmap_put(&t->model, buf, on, t->pieces.val[e]);
    }
    free(buf);
    t->sp_split = !t->byte_level && gq_tok_strmap_get(&t->model, SP_SPACE, 3) >= 0;
    for (size_t e = 0; e < t->model.n && t->sp_split; e++) {
        const char *k = t->model.keys + t->model.koff[e], *hit;
        size_t kn = t->model.klen[e], from = 1;
        while (from < kn && (hit = gq_tok_find_bytes(k + from, kn - from, SP_SPACE, 3)) != NULL) {
            size_t at = (size_t)(hit - k);
            if (at < 3 || memcmp(k + at - 3, SP_SPACE, 3) != 0) {
                t->sp_split = 0;
                break;
            }
            from = at + 3;
        }
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b, name[8];
        t->sym1[b] = (t->byte_level || b < 0x80) ? gq_tok_strmap_get(&t->model, &c, 1) : -1;
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->fallback[b] = gq_tok_strmap_get(&t->pieces, name, 6);
    }
}

static int parse_model(gq_tokenizer *t, json_t *model) {
    const char *ty = jtype(model), *s;
    int rc;
    if (!json_is_object(model)) return gq_err(GQ_ERR_FORMAT, "%s: expected a \"model\" object", t->path);
    if (ty && strcmp(ty, "BPE"))
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: model type '%s' is not supported (supported: BPE)", t->path, ty);
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) return gq_err(GQ_ERR_FORMAT, "%s: model.vocab: expected an object {piece: id}", t->path);
    static const char *unsup[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        if ((rc = jstr(t->path, "model", model, unsup[i], &s, NULL))) return rc;
        if (s && *s)
            return gq_err(GQ_ERR_UNSUPPORTED, "%s: model.%s = '%s' is not supported (only null)", t->path, unsup[i], s);
    }
    json_t *drop = json_object_get(model, "dropout");
    if (json_is_number(drop) && json_number_value(drop) > 0)
        gq_warn("%s: model.dropout = %g ignored (encoding is deterministic)", t->path, json_number_value(drop));
    if ((rc = jbool(t->path, "model", model, "fuse_unk", 0, &t->fuse_unk))) return rc;
    if ((rc = jbool(t->path, "model", model, "byte_fallback", 0, &t->byte_fallback))) return rc;
    if ((rc = jbool(t->path, "model", model, "ignore_merges", 0, &t->ignore_merges))) return rc;
    if ((rc = parse_vocab(t, vocab))) return rc;
    if ((rc = parse_merges(t, json_object_get(model, "merges")))) return rc;
    size_t ul;
    t->unk = -1;
    if ((rc = jstr(t->path, "model", model, "unk_token", &s, &ul))) return rc;
    if (s) {
        t->unk = gq_tok_strmap_get(&t->pieces, s, ul);
        if (t->unk < 0) return gq_err(GQ_ERR_FORMAT, "%s: model.unk_token '%s' is not in the vocab", t->path, s);
    }
    return GQ_OK;
}

/* ---- added tokens ---- */

static int parse_added(gq_tokenizer *t, json_t *arr) {
    if (!arr || json_is_null(arr)) return GQ_OK;
    if (!json_is_array(arr)) return gq_err(GQ_ERR_FORMAT, "%s: added_tokens: expected an array", t->path);
    size_t i;
    json_t *o;
    t->added = gq_calloc(json_array_size(arr) + 1, sizeof *t->added);
    json_array_foreach(arr, i, o) {
        gq_tok_added *a = &t->added[t->n_added];
        json_t *id = json_object_get(o, "id");
        const char *c;
        size_t cl;
        int rc, v = 0;
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if ((rc = jstr(t->path, where, o, "content", &c, &cl))) return rc;
        if (!c || !cl || !is_int(id))
            return gq_err(GQ_ERR_FORMAT, "%s: %s: expected a non-empty \"content\" and an integer \"id\"", t->path, where);
        if ((rc = check_id(t, where, int_val(id)))) return rc;
        a->id = (int32_t)int_val(id);
        a->content = dupn(c, cl);
        a->len = cl;
        t->n_added++;
        if ((rc = jbool(t->path, where, o, "special", 0, &v))) return rc;
        a->special = (uint8_t)v;
        if ((rc = jbool(t->path, where, o, "normalized", !a->special, &v))) return rc;
        a->normalized = (uint8_t)v;
        if ((rc = jbool(t->path, where, o, "lstrip", 0, &v))) return rc;
        a->lstrip = (uint8_t)v;
        if ((rc = jbool(t->path, where, o, "rstrip", 0, &v))) return rc;
        a->rstrip = (uint8_t)v;
        if ((rc = jbool(t->path, where, o, "single_word", 0, &v))) return rc;
        a->single_word = (uint8_t)v;
    }
    return GQ_OK;
}

/* After the normalizer is known: pieces/specials of added tokens, tries. */
static int setup_added(gq_tokenizer *t) {
    gq_tok_trie_init(&t->trie_raw);
    gq_tok_trie_init(&t->trie_norm);
    int any_single = 0;
    for (int i = 0; i < t->n_added; i++) {
        gq_tok_added *a = &t->added[i];
        if (!t->piece[a->id]) {
            t->piece[a->id] = dupn(a->content, a->len);
            t->piece_len[a->id] = (uint32_t)a->len;
        }
        if (gq_tok_strmap_get(&t->pieces, a->content, a->len) < 0) gq_tok_strmap_put(&t->pieces, a->content, a->len, a->id);
        t->special[a->id] = a->special;
        any_single |= a->single_word;
        if (a->normalized && t->n_norm) {
            a->norm = gq_tok_normalize_alloc(t, a->content, a->len, &a->norm_len);
        } else {
            a->norm = dupn(a->content, a->len);
            a->norm_len = a->len;
        }
        if (a->normalized && (a->norm_len != a->len || memcmp(a->norm, a->content, a->len))) {
            if (!t->dec_piece) {
                t->dec_piece = gq_calloc((size_t)t->n_vocab, sizeof *t->dec_piece);
                t->dec_piece_len = gq_calloc((size_t)t->n_vocab, sizeof *t->dec_piece_len);
            }
            free(t->dec_piece[a->id]);
            t->dec_piece[a->id] = dupn(a->norm, a->norm_len);
            t->dec_piece_len[a->id] = (uint32_t)a->norm_len;
        }
        /* a token that normalizes to nothing (StripAccents of a lone mark)
         * never matches, as in `tokenizers` */
        if (a->normalized && a->norm_len) gq_tok_trie_add(&t->trie_norm, a->norm, a->norm_len, i);
        else if (!a->normalized) gq_tok_trie_add(&t->trie_raw, a->content, a->len, i);
    }
    if (any_single) {
        /* Unicode word characters as `tokenizers` sees them around a
         * single_word token: letters, marks, decimal and letter numbers,
         * connector punctuation, ZWNJ/ZWJ (not other numbers like "²") */
        static const char *W = "[\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200C}\\x{200D}]";
        return compile_re(t->path, "single_word", W, strlen(W), &t->word_re);
    }
    return GQ_OK;
}

/* ---- tokenizer_config.json ---- */

/* bos_token / eos_token: "<s>" or {"content": "<s>", ...} */
static const char *config_token(json_t *cfg, const char *k) {
    json_t *v = json_object_get(cfg, k);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int32_t find_first(const gq_tokenizer *t, const char *const *names) {
    for (; *names; names++) {
        int32_t id = gq_tok_strmap_get(&t->pieces, *names, strlen(*names));
        if (id >= 0) return id;
    }
    return -1;
}

static int load_config(gq_tokenizer *t, const char *cfg_path, int has_post) {
    static const char *bos_names[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>", NULL};
    static const char *eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", NULL};
    json_t *cfg = NULL;
    if (cfg_path && gq_path_exists(cfg_path)) {
        json_error_t je;
        cfg = json_load_file(cfg_path, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
        if (!cfg || !json_is_object(cfg)) {
            json_decref(cfg);
            return gq_err(GQ_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", cfg_path, je.line, je.column, je.text);
        }
    }
    const char *bos = cfg ? config_token(cfg, "bos_token") : NULL;
    const char *eos = cfg ? config_token(cfg, "eos_token") : NULL;
    /* "bos_token": null (Qwen2) says there is none: no guess by name then */
    int bos_null = cfg && json_is_null(json_object_get(cfg, "bos_token"));
    int eos_null = cfg && json_is_null(json_object_get(cfg, "eos_token"));
    t->bos = bos ? gq_tok_strmap_get(&t->pieces, bos, strlen(bos)) : -1;
    t->eos = eos ? gq_tok_strmap_get(&t->pieces, eos, strlen(eos)) : -1;
    if (t->bos < 0) t->bos = t->n_post_pre ? t->post_pre[0] : bos_null ? -1 : find_first(t, bos_names);
    if (t->eos < 0 && !eos_null) t->eos = find_first(t, eos_names);
    int add_bos = -1, add_eos = -1, rc = GQ_OK;
    if (cfg) {
        json_t *ct = json_object_get(cfg, "chat_template");
        if (json_is_array(ct)) { /* [{"name": "default", "template": ...}, ...] */
            json_t *pick = json_array_get(ct, 0), *e;
            size_t i;
            json_array_foreach(ct, i, e) {
                json_t *nm = json_object_get(e, "name");
                if (json_is_string(nm) && !strcmp(json_string_value(nm), "default")) pick = e;
            }
            ct = json_object_get(pick, "template");
        }
        if (json_is_string(ct)) t->chat_template = dupn(json_string_value(ct), json_string_length(ct));
        if ((rc = jbool(cfg_path, "tokenizer_config", cfg, "add_bos_token", -1, &add_bos))) goto out;
        if ((rc = jbool(cfg_path, "tokenizer_config", cfg, "add_eos_token", -1, &add_eos))) goto out;
    }
    if (!has_post) {
        /* no post-processor in tokenizer.json: tokenizer_config decides */
        if (add_bos == 1 && t->bos >= 0) push_id(&t->post_pre, &t->n_post_pre, t->bos);
        if (add_eos == 1 && t->eos >= 0) push_id(&t->post_post, &t->n_post_post, t->eos);
    } else if (add_bos != -1 && add_bos != (t->n_post_pre > 0 && t->post_pre[0] == t->bos)) {
        gq_warn("%s: add_bos_token=%s but the post_processor of %s %s BOS; following tokenizer.json", cfg_path,
                add_bos ? "true" : "false", t->path, add_bos ? "does not add" : "adds");
    }
out:
    json_decref(cfg);
    return rc;
}

/* ---- entry ---- */

static int load_json(gq_tokenizer *t, json_t *root, const char *cfg_path) {
    int rc;
    if (!json_is_object(root)) return gq_err(GQ_ERR_FORMAT, "%s: expected a JSON object", t->path);
    json_t *model = json_object_get(root, "model"), *added = json_object_get(root, "added_tokens");
    if (!json_is_object(model) || !json_is_object(json_object_get(model, "vocab")))
        return gq_err(GQ_ERR_FORMAT, "%s: expected \"model\" with a \"vocab\" object (is this a tokenizer.json?)", t->path);
    /* the id range first: model vocab and added tokens */
    int64_t max_id = -1;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(model, "vocab"), k, v) {
        if (is_int(v) && int_val(v) > max_id) max_id = int_val(v);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        json_t *id = json_object_get(v, "id");
        if (is_int(id) && int_val(id) > max_id) max_id = int_val(id);
    }
    if (max_id < 0 || max_id >= MAX_VOCAB)
        return gq_err(GQ_ERR_FORMAT, "%s: expected token ids in [0, %d), largest is %lld", t->path, MAX_VOCAB, (long long)max_id);
    t->n_vocab = (int32_t)max_id + 1;
    t->piece = gq_calloc((size_t)t->n_vocab, sizeof *t->piece);
    t->piece_len = gq_calloc((size_t)t->n_vocab, sizeof *t->piece_len);
    t->special = gq_calloc((size_t)t->n_vocab, 1);
    gq_tok_strmap_init(&t->pieces, (size_t)t->n_vocab);
    if ((rc = parse_pre(t, json_object_get(root, "pre_tokenizer")))) return rc;
    if ((rc = parse_model(t, model))) return rc;
    build_model_keys(t);
    if ((rc = parse_added(t, added))) return rc;
    if ((rc = parse_normalizer(t, json_object_get(root, "normalizer")))) return rc;
    if ((rc = setup_added(t))) return rc;
    int has_post = 0;
    if ((rc = parse_post(t, json_object_get(root, "post_processor"), &has_post))) return rc;
    if ((rc = parse_decoder(t, json_object_get(root, "decoder")))) return rc;
    return load_config(t, cfg_path, has_post);
}

int gq_tok_load(gq_tokenizer **out, const char *path) {
    *out = NULL;
    char *json_path, *cfg_path;
    if (gq_is_dir(path)) {
        json_path = gq_path_join(path, "tokenizer.json");
        cfg_path = gq_path_join(path, "tokenizer_config.json");
    } else {
        json_path = gq_strdup(path);
        const char *slash = strrchr(path, '/');
        if (slash) {
            char *dir = dupn(path, (size_t)(slash - path));
            cfg_path = gq_path_join(dir, "tokenizer_config.json");
            free(dir);
        } else {
            cfg_path = gq_strdup("tokenizer_config.json");
        }
    }
    char *buf = NULL;
    size_t len = 0;
    int rc = gq_read_file(json_path, &buf, &len);
    if (rc) {
        free(json_path);
        free(cfg_path);
        return rc;
    }
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
    free(buf);
    if (!root) {
        rc = gq_err(GQ_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", json_path, je.line, je.column, je.text);
        free(json_path);
        free(cfg_path);
        return rc;
    }
    gq_tokenizer *t = gq_calloc(1, sizeof *t);
    t->path = json_path;
    t->bos = t->eos = t->unk = -1;
    rc = load_json(t, root, cfg_path);
    json_decref(root);
    free(cfg_path);
    if (rc) {
        gq_tok_free(t);
        return rc;
    }
    *out = t;
    return GQ_OK;
}
