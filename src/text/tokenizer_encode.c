/*
 * tokenizer_encode.c -- text -> ids, in the order `tokenizers` does it:
 *
 *   1. invalid UTF-8 repaired (each maximal ill-formed subpart -> U+FFFD);
 *   2. added tokens with normalized=false matched in the raw text
 *      (leftmost-longest, single_word / lstrip / rstrip honoured);
 *   3. every other piece normalized (Prepend, Replace, NFC/NFD/NFKC/NFKD,
 *      Lowercase, StripAccents, Strip), then added tokens with normalized=true
 *      matched in the normalized text (their content normalized as well,
 *      so Llama-2's "<s>" is matched as "▁<s>");
 *   4. pre-tokenizer steps, each splitting its piece further (regex or
 *      literal Split with a behaviour, ByteLevel, Metaspace);
 *   5. BPE per pre-token, through a per-call word cache;
 *   6. the post-processor ids around the whole (add_special).
 * Pieces flow depth-first through the steps, so memory stays proportional
 * to the largest piece, not to the number of pre-tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

#define CACHE_MAX_WORD 256 /* longer pre-tokens are not cached */

typedef struct {
    size_t s, e;
    int m; /* segment is a pattern match */
} seg;

typedef struct {
    const gq_tokenizer *t;
    gq_ids *out;
    gq_tok_cache cache;
    gq_tok_bpe_scratch bpe;
    gq_tok_arena arena;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    seg *segs[GQ_TOK_MAX_STEPS];
    size_t segs_cap[GQ_TOK_MAX_STEPS];
    int status;
} enc_ctx;

/* ---- regex search ---- */

/* Next match of re in s[0..n) starting at or after `from`: 1 with [*ms, *me),
 * 0 when there is none, or a negative gq_status. */
static int re_next(enc_ctx *c, const pcre2_code *re, const char *s, size_t n, size_t from, size_t *ms,
                   size_t *me) {
    for (;;) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, c->md, c->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc >= 0) { /* 0: ovector too small for the groups; the match is set */
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !c->jit_stack) {
            /* a pathological input: retry with a 64 MiB JIT stack */
            c->jit_stack = pcre2_jit_stack_create(1 << 16, 1 << 26, NULL);
            c->mctx = pcre2_match_context_create(NULL);
            if (!c->jit_stack || !c->mctx) GQ_ABORT("out of memory creating a PCRE2 JIT stack");
            pcre2_jit_stack_assign(c->mctx, NULL, c->jit_stack);
            continue;
        }
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return gq_err(GQ_ERR_DATA, "%s: pre-tokenizer regex failed on a %zu-byte piece at offset %zu: %s",
                      c->t->path, n, from, (const char *)msg);
    }
}

/* Whether the character that ends at s[n-1] (before) / starts at s[0]
 * (after) is a word character, for single_word added tokens. */
static int word_char_at(enc_ctx *c, const char *s, size_t n, int before) {
    uint32_t cp;
    size_t off, len;
    if (before) {
        len = (size_t)gq_uni_decode_last(s, n, &cp);
        off = n - len;
    } else {
        len = (size_t)gq_uni_len((uint8_t)s[0]);
        if (len > n) len = n;
        off = 0;
    }
    int rc = pcre2_match(c->t->word_re, (PCRE2_SPTR)(s + off), len, 0, PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED,
                         c->md, NULL);
    return rc >= 0;
}

static seg *seg_push(enc_ctx *c, int k, size_t *n, size_t s, size_t e, int m) {
    if (*n == c->segs_cap[k]) {
        c->segs_cap[k] = c->segs_cap[k] ? c->segs_cap[k] * 2 : 64;
        c->segs[k] = gq_realloc(c->segs[k], c->segs_cap[k] * sizeof(seg));
    }
    seg *g = &c->segs[k][(*n)++];
    g->s = s;
    g->e = e;
    g->m = m;
    return g;
}

/* ---- model ---- */

static void bpe_cached(enc_ctx *c, const char *w, size_t n) {
    size_t k;
    if (n <= CACHE_MAX_WORD) {
        const int32_t *ids = gq_tok_cache_get(&c->cache, w, n, &k);
        if (ids) {
            gq_ids_append(c->out, ids, k);
            return;
        }
    }
    size_t before = c->out->n;
    gq_tok_bpe_word(c->t, &c->bpe, w, n, GQ_BPE_AUTO, c->out);
    if (n <= CACHE_MAX_WORD) gq_tok_cache_put(&c->cache, w, n, c->out->v + before, c->out->n - before);
}

static void model_word(enc_ctx *c, const char *w, size_t n) {
    const gq_tokenizer *t = c->t;
    if (t->ignore_merges) {
        int32_t id = gq_tok_strmap_get(&t->model, w, n);
        if (id >= 0) {
            gq_ids_push(c->out, id);
            return;
        }
    }
    if (t->sp_split && n > CACHE_MAX_WORD) {
        /* cut before each "▁" that follows another character (see sp_split) */
        size_t start = 0, i = 1;
        const char *hit;
        while (i < n && (hit = gq_tok_find_bytes(w + i, n - i, "\xE2\x96\x81", 3)) != NULL) {
            size_t at = (size_t)(hit - w);
            if (at < 3 || memcmp(w + at - 3, "\xE2\x96\x81", 3) != 0) {
                bpe_cached(c, w + start, at - start);
                start = at;
            }
            i = at + 3;
        }
        bpe_cached(c, w + start, n - start);
        return;
    }
    bpe_cached(c, w, n);
}

/* ---- pre-tokenizers ---- */

static void pre_run(enc_ctx *c, int k, const char *p, size_t n, int first);

/* Split p[0..n) at the matches of step k's pattern, combine the segments as
 * its behaviour says and pass each piece to step k + 1. */
static void split_run(enc_ctx *c, int k, const pcre2_code *re, const char *lit, size_t lit_len, int behavior,
                      int invert, const char *p, size_t n, int first) {
    size_t ns = 0, prev = 0, from = 0, ms, me;
    for (;;) {
        if (re) {
            int rc = re_next(c, re, p, n, from, &ms, &me);
            if (rc < 0) {
                c->status = rc;
                return;
            }
            if (!rc) break;
        } else {
            const char *hit = lit_len ? gq_tok_find_bytes(p + from, n - from, lit, lit_len) : NULL;
            if (!hit) break;
            ms = (size_t)(hit - p);
            me = ms + lit_len;
        }
        if (me == ms) { /* empty match: no segment, step one character */
            if (ms >= n) break;
            from = ms + (size_t)gq_uni_len((uint8_t)p[ms]);
            continue;
        }
        if (ms > prev) seg_push(c, k, &ns, prev, ms, invert);
        seg_push(c, k, &ns, ms, me, !invert);
        prev = from = me;
        if (from >= n) break;
    }
    if (prev < n) seg_push(c, k, &ns, prev, n, invert);

    seg *g = c->segs[k];
    size_t no = 0; /* combine in place: output count <= input count */
    int prev_m = 0;
    for (size_t i = 0; i < ns; i++) {
        seg cur = g[i];
        switch (behavior) {
        case GQ_SPLIT_REMOVED:
            if (!cur.m) g[no++] = cur;
            break;
        case GQ_SPLIT_ISOLATED: g[no++] = cur; break;
        case GQ_SPLIT_MERGED_PREV: /* a match joins the non-match before it */
            if (cur.m && !prev_m && no) g[no - 1].e = cur.e;
            else g[no++] = cur;
            break;
        case GQ_SPLIT_MERGED_NEXT: /* a match joins the non-match after it */
            if (cur.m && i + 1 < ns && !g[i + 1].m) {
                cur.e = g[i + 1].e;
                cur.m = 0;
                g[no++] = cur;
                i++;
                prev_m = 0;
                continue;
            }
            g[no++] = cur;
            break;
        case GQ_SPLIT_CONTIGUOUS: /* runs of matches become one piece */
            if (cur.m == prev_m && no) g[no - 1].e = cur.e;
            else g[no++] = cur;
            break;
        }
        prev_m = cur.m;
    }
    /* g may move while deeper steps run: they use other levels' arrays */
    for (size_t i = 0; i < no && !c->status; i++) {
        seg s = c->segs[k][i];
        pre_run(c, k + 1, p + s.s, s.e - s.s, first && s.s == 0);
    }
}

static void metaspace_run(enc_ctx *c, int k, const gq_tok_pre *ps, const char *p, size_t n, int first) {
    size_t rl = (size_t)ps->repl_len, spaces = 0;
    for (size_t i = 0; i < n; i++) spaces += p[i] == ' ';
    char *q = gq_tok_arena_alloc(&c->arena, n + spaces * (rl - 1) + rl), *o = q;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ') {
            memcpy(o, ps->repl, rl);
            o += rl;
        } else {
            *o++ = p[i];
        }
    }
    size_t m = (size_t)(o - q);
    int starts = m >= rl && memcmp(q, ps->repl, rl) == 0;
    int prepend = !starts && (ps->prepend == GQ_PREPEND_ALWAYS || (ps->prepend == GQ_PREPEND_FIRST && first));
    if (prepend) {
        memmove(q + rl, q, m);
        memcpy(q, ps->repl, rl);
        m += rl;
    }
    if (ps->split) split_run(c, k, NULL, ps->repl, rl, GQ_SPLIT_MERGED_NEXT, 0, q, m, first);
    else pre_run(c, k + 1, q, m, first);
}

static void pre_run(enc_ctx *c, int k, const char *p, size_t n, int first) {
    if (n == 0 || c->status) return;
    const gq_tokenizer *t = c->t;
    if (k == t->n_pre) {
        model_word(c, p, n);
        return;
    }
    const gq_tok_pre *ps = &t->pre[k];
    switch (ps->kind) {
    case GQ_PRE_BYTELEVEL:
        if (ps->add_prefix_space && p[0] != ' ') {
            char *q = gq_tok_arena_alloc(&c->arena, n + 1);
            q[0] = ' ';
            memcpy(q + 1, p, n);
            p = q;
            n++;
        }
        if (ps->re) split_run(c, k, ps->re, NULL, 0, GQ_SPLIT_ISOLATED, 0, p, n, first);
        else pre_run(c, k + 1, p, n, first);
        break;
    case GQ_PRE_SPLIT:
        split_run(c, k, ps->re, ps->lit, ps->lit_len, ps->behavior, ps->invert, p, n, first);
        break;
    case GQ_PRE_METASPACE: metaspace_run(c, k, ps, p, n, first); break;
    default: GQ_ABORT("pre-tokenizer kind %d", ps->kind);
    }
}

/* ---- normalizer ---- */

/* Replace every non-overlapping match (leftmost first) of the step's
 * pattern in s[0..n) by its content. */
static char *replace_all(const gq_tok_norm *st, const char *s, size_t n, size_t *out_n) {
    size_t cap = n + 16, o = 0, from = 0;
    char *out = gq_malloc(cap);
    pcre2_match_data *md = st->re ? pcre2_match_data_create(1, NULL) : NULL;
    for (;;) {
        size_t ms = 0, me = 0;
        int found = 0;
        if (st->re) {
            if (from <= n && pcre2_match(st->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL) >= 0) {
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                ms = ov[0], me = ov[1], found = 1;
            }
        } else if (st->a_len && from < n) {
            const char *hit = gq_tok_find_bytes(s + from, n - from, st->a, st->a_len);
            if (hit) ms = (size_t)(hit - s), me = ms + st->a_len, found = 1;
        }
        size_t keep_to = found ? ms : n;
        size_t need = o + (keep_to - from) + (found ? st->b_len + 4 : 0) + 1;
        if (need > cap) out = gq_realloc(out, cap = need * 2);
        memcpy(out + o, s + from, keep_to - from);
        o += keep_to - from;
        if (!found) break;
        memcpy(out + o, st->b, st->b_len);
        o += st->b_len;
        from = me;
        if (me == ms) { /* empty match: keep one character and move on */
            if (ms >= n) break;
            size_t cl = (size_t)gq_uni_len((uint8_t)s[ms]);
            memcpy(out + o, s + ms, cl);
            o += cl;
            from = ms + cl;
        }
    }
    pcre2_match_data_free(md);
    out[o] = 0;
    *out_n = o;
    return out;
}

/* Strip: White_Space characters (Rust char::is_whitespace) off either end. */
static char *strip_ws(const gq_tok_norm *st, const char *s, size_t n, size_t *out_n) {
    size_t a = 0, e = n;
    while (st->left && a < e) {
        uint32_t cp;
        int l = gq_uni_decode(s + a, e - a, &cp);
        if (!gq_uni_is_whitespace(cp)) break;
        a += (size_t)l;
    }
    while (st->right && e > a) {
        uint32_t cp;
        int l = gq_uni_decode_last(s + a, e - a, &cp);
        if (!gq_uni_is_whitespace(cp)) break;
        e -= (size_t)l;
    }
    char *out = gq_malloc(e - a + 1);
    memcpy(out, s + a, e - a);
    out[e - a] = 0;
    *out_n = e - a;
    return out;
}

char *gq_tok_normalize_alloc(const gq_tokenizer *t, const char *s, size_t n, size_t *out_n) {
    char *cur = gq_malloc(n + 1);
    memcpy(cur, s, n);
    cur[n] = 0;
    for (int i = 0; i < t->n_norm; i++) {
        const gq_tok_norm *st = &t->norm[i];
        char *nx;
        switch (st->kind) {
        case GQ_NORM_PREPEND:
            if (n == 0) continue; /* Prepend leaves an empty string alone */
            nx = gq_malloc(n + st->a_len + 1);
            memcpy(nx, st->a, st->a_len);
            memcpy(nx + st->a_len, cur, n + 1);
            n += st->a_len;
            break;
        case GQ_NORM_REPLACE: nx = replace_all(st, cur, n, &n); break;
        case GQ_NORM_UNICODE: nx = gq_uni_normalize(st->form, cur, n, &n); break;
        case GQ_NORM_LOWERCASE: nx = gq_uni_lowercase(cur, n, &n); break;
        case GQ_NORM_STRIP_ACCENTS: nx = gq_uni_strip_marks(cur, n, &n); break;
        case GQ_NORM_STRIP: nx = strip_ws(st, cur, n, &n); break;
        default: GQ_ABORT("normalizer kind %d", st->kind);
        }
        free(cur);
        cur = nx;
    }
    *out_n = n;
    return cur;
}

/* ---- added tokens ---- */

static void emit_piece(enc_ctx *c, int normalized_stage, const char *p, size_t n, int first);

/* Find the added tokens of trie tr in s[0..n); pieces between them go on. */
static void split_added(enc_ctx *c, const gq_tok_trie *tr, int normalized_stage, const char *s, size_t n,
                        int first) {
    const gq_tokenizer *t = c->t;
    if (!tr->n_tokens) {
        emit_piece(c, normalized_stage, s, n, first);
        return;
    }
    size_t start_off = 0, pos = 0;
    while (pos < n && !c->status) {
        size_t i = pos, len = 0;
        int32_t tok = -1;
        for (; i < n; i++) {
            if (tr->root[(uint8_t)s[i]] < 0) continue;
            tok = gq_tok_trie_longest(tr, s + i, n - i, &len);
            if (tok >= 0) break;
        }
        if (tok < 0) break;
        size_t ms = i, me = i + len;
        pos = me; /* matching resumes after the match, as a non-overlapping search does */
        const gq_tok_added *a = &t->added[tok];
        if (ms < start_off) continue; /* inside the whitespace an rstrip took */
        if (a->single_word && ((ms > 0 && word_char_at(c, s, ms, 1)) || (me < n && word_char_at(c, s + me, n - me, 0))))
            continue;
        size_t st = ms, en = me;
        while (a->lstrip && st > start_off) {
            uint32_t cp;
            int l = gq_uni_decode_last(s, st, &cp);
            if (!gq_uni_is_whitespace(cp)) break;
            st -= (size_t)l;
        }
        while (a->rstrip && en < n) {
            uint32_t cp;
            int l = gq_uni_decode(s + en, n - en, &cp);
            if (!gq_uni_is_whitespace(cp)) break;
            en += (size_t)l;
        }
        if (st > start_off) emit_piece(c, normalized_stage, s + start_off, st - start_off, first && start_off == 0);
        gq_ids_push(c->out, a->id);
        start_off = en;
    }
    if (start_off < n) emit_piece(c, normalized_stage, s + start_off, n - start_off, first && start_off == 0);
}

static void emit_piece(enc_ctx *c, int normalized_stage, const char *p, size_t n, int first) {
    const gq_tokenizer *t = c->t;
    if (n == 0 || c->status) return;
    if (normalized_stage) {
        pre_run(c, 0, p, n, first);
        return;
    }
    if (!t->n_norm) {
        split_added(c, &t->trie_norm, 1, p, n, first);
    } else {
        size_t nn;
        char *q = gq_tok_normalize_alloc(t, p, n, &nn);
        split_added(c, &t->trie_norm, 1, q, nn, first);
        free(q);
    }
    gq_tok_arena_reset(&c->arena);
}

/* ---- entry ---- */

int gq_tok_encode(const gq_tokenizer *t, const char *text, size_t len, int add_special, gq_ids *out) {
    if (!t || !out || (!text && len)) return gq_err(GQ_ERR_ARG, "gq_tok_encode: NULL argument");
    char *fixed = NULL;
    if (gq_uni_valid_prefix(text, len) != len) {
        fixed = gq_uni_repair(text, len, &len);
        text = fixed;
    }
    size_t n0 = out->n;
    enc_ctx c;
    memset(&c, 0, sizeof c);
    c.t = t;
    c.out = out;
    c.md = pcre2_match_data_create(1, NULL);
    if (!c.md) GQ_ABORT("out of memory creating PCRE2 match data");
    gq_tok_cache_init(&c.cache);
    if (add_special) gq_ids_append(out, t->post_pre, (size_t)t->n_post_pre);
    split_added(&c, &t->trie_raw, 0, text, len, 1);
    if (add_special) gq_ids_append(out, t->post_post, (size_t)t->n_post_post);
    if (c.status) out->n = n0;
    gq_tok_cache_free(&c.cache);
    gq_tok_bpe_scratch_free(&c.bpe);
    gq_tok_arena_free(&c.arena);
    for (int k = 0; k < GQ_TOK_MAX_STEPS; k++) free(c.segs[k]);
    pcre2_match_data_free(c.md);
    pcre2_match_context_free(c.mctx);
    if (c.jit_stack) pcre2_jit_stack_free(c.jit_stack);
    free(fixed);
    return c.status;
}
