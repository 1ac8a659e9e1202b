/*
 * tokenizer_decode.c -- ids -> text through the decoder chain of the file,
 * step by step on a list of token strings as `tokenizers` does:
 *   ByteLevel     all tokens -> bytes through the inverse byte map (a token
 *                 with a character outside the map contributes its UTF-8),
 *                 then invalid UTF-8 -> U+FFFD; one string
 *   ByteFallback  runs of <0xNN> tokens -> their bytes if valid UTF-8,
 *                 else one U+FFFD per byte token
 *   Metaspace     replacement -> ' ', dropped in the first token when the
 *                 prepend scheme is not "never"
 *   Replace       literal replace in each token
 *   Fuse          concatenate
 *   Strip         drop up to `start` leading / `stop` trailing content chars
 * Without a decoder the tokens are joined with spaces. An added token with
 * normalized=true enters the chain as its normalized content (Llama-2's
 * "<s>" as "▁<s>", decoded " <s>"), as `tokenizers` 0.23 does; unlike
 * `tokenizers`, skip_special does skip such tokens.
 * gq_tok_decode_continuation decodes generated ids after their prompt:
 * decode(prompt + ids) minus decode(prompt), see gq/tokenizer.h.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

typedef struct {
    char *s;
    size_t n;
} str;

typedef struct {
    str *v;
    size_t n, cap;
} strlist;

static void sl_push(strlist *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = gq_realloc(l->v, l->cap * sizeof *l->v);
    }
    char *d = gq_malloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    l->v[l->n].s = d;
    l->v[l->n++].n = n;
}

static void sl_free(strlist *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i].s);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* growable byte buffer */
typedef struct {
    char *p;
    size_t n, cap;
} buf;

static void buf_put(buf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = gq_realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte of a "<0xNN>" token (either hex case), or -1. */
static int byte_token(const str *t) {
    if (t->n != 6 || memcmp(t->s, "<0x", 3) != 0 || t->s[5] != '>') return -1;
    int h = hexval(t->s[3]), l = hexval(t->s[4]);
    return h < 0 || l < 0 ? -1 : h << 4 | l;
}

static void dec_bytelevel(strlist *in, strlist *out) {
    buf b = {0};
    for (size_t i = 0; i < in->n; i++) {
        const str *t = &in->v[i];
        size_t start = b.n;
        int ok = 1;
        for (size_t j = 0; j < t->n && ok;) {
            uint32_t cp;
            j += (size_t)gq_uni_decode(t->s + j, t->n - j, &cp);
            int by = gq_uni_bytelevel_byte(cp);
            if (by < 0) ok = 0;
            else {
                char c = (char)by;
                buf_put(&b, &c, 1);
            }
        }
        if (!ok) {
            b.n = start;
            buf_put(&b, t->s, t->n);
        }
    }
    size_t n;
    char *fixed = gq_uni_repair(b.p ? b.p : "", b.n, &n);
    sl_push(out, fixed, n);
    free(fixed);
    free(b.p);
}

static void dec_bytefallback(strlist *in, strlist *out) {
    buf b = {0};
    size_t run = 0;
    for (size_t i = 0; i <= in->n; i++) {
        int by = i < in->n ? byte_token(&in->v[i]) : -1;
        if (by >= 0) {
            char c = (char)by;
            buf_put(&b, &c, 1);
            run++;
            continue;
        }
        if (run) {
            if (gq_uni_valid_prefix(b.p, b.n) == b.n) sl_push(out, b.p, b.n);
            else
                for (size_t k = 0; k < run; k++) sl_push(out, "\xEF\xBF\xBD", 3);
            b.n = 0;
            run = 0;
        }
        if (i < in->n) sl_push(out, in->v[i].s, in->v[i].n);
    }
    free(b.p);
}

static void dec_metaspace(const gq_tok_dec *d, strlist *in, strlist *out) {
    char rep[4];
    size_t rl = (size_t)gq_uni_encode(d->cp, rep);
    for (size_t i = 0; i < in->n; i++) {
        buf b = {0};
        const str *t = &in->v[i];
        for (size_t j = 0; j < t->n;) {
            size_t cl = (size_t)gq_uni_len((uint8_t)t->s[j]);
            if (cl > t->n - j) cl = t->n - j;
            if (cl == rl && memcmp(t->s + j, rep, rl) == 0) {
                if (!(i == 0 && d->prepend != GQ_PREPEND_NEVER)) buf_put(&b, " ", 1);
            } else {
                buf_put(&b, t->s + j, cl);
            }
            j += cl;
        }
        sl_push(out, b.p ? b.p : "", b.n);
        free(b.p);
    }
}

static void dec_replace(const gq_tok_dec *d, strlist *in, strlist *out) {
    for (size_t i = 0; i < in->n; i++) {
        buf b = {0};
        const str *t = &in->v[i];
        size_t j = 0;
        while (j < t->n) {
            const char *hit = d->a_len ? gq_tok_find_bytes(t->s + j, t->n - j, d->a, d->a_len) : NULL;
            if (!hit) break;
            buf_put(&b, t->s + j, (size_t)(hit - (t->s + j)));
            buf_put(&b, d->b, d->b_len);
            j = (size_t)(hit - t->s) + d->a_len;
        }
        buf_put(&b, t->s + j, t->n - j);
        sl_push(out, b.p, b.n);
        free(b.p);
    }
}

static void dec_strip(const gq_tok_dec *d, strlist *in, strlist *out) {
    char cs[4];
    size_t cl = (size_t)gq_uni_encode(d->cp, cs);
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->v[i].s;
        size_t a = 0, e = in->v[i].n;
        for (int k = 0; k < d->start && e - a >= cl && memcmp(s + a, cs, cl) == 0; k++) a += cl;
        for (int k = 0; k < d->stop && e - a >= cl && memcmp(s + e - cl, cs, cl) == 0; k++) e -= cl;
        sl_push(out, s + a, e - a);
    }
}

int gq_tok_decode(const gq_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **out,
                  size_t *out_len) {
    *out = NULL;
    if (out_len) *out_len = 0;
    strlist cur = {0};
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab) {
            sl_free(&cur);
            return gq_err(GQ_ERR_ARG, "decode: token id %d at position %zu is outside the vocabulary [0, %d) of %s",
                          id, i, t->n_vocab, t->path);
        }
        if (!t->piece[id]) continue; /* a hole in the id range: nothing to print */
        if (skip_special && t->special[id]) continue;
        if (t->dec_piece && t->dec_piece[id]) sl_push(&cur, t->dec_piece[id], t->dec_piece_len[id]);
        else sl_push(&cur, t->piece[id], t->piece_len[id]);
    }
    if (!t->has_decoder) {
        buf b = {0};
        for (size_t i = 0; i < cur.n; i++) {
            if (i) buf_put(&b, " ", 1);
            buf_put(&b, cur.v[i].s, cur.v[i].n);
        }
        sl_free(&cur);
        buf_put(&b, "", 0);
        b.p[b.n] = 0;
        *out = b.p;
        if (out_len) *out_len = b.n;
        return GQ_OK;
    }
    for (int k = 0; k < t->n_dec; k++) {
        const gq_tok_dec *d = &t->dec[k];
        strlist nx = {0};
        switch (d->kind) {
        case GQ_DEC_BYTELEVEL: dec_bytelevel(&cur, &nx); break;
        case GQ_DEC_BYTEFALLBACK: dec_bytefallback(&cur, &nx); break;
        case GQ_DEC_METASPACE: dec_metaspace(d, &cur, &nx); break;
        case GQ_DEC_REPLACE: dec_replace(d, &cur, &nx); break;
        case GQ_DEC_STRIP: dec_strip(d, &cur, &nx); break;
        case GQ_DEC_FUSE: {
            buf b = {0};
            for (size_t i = 0; i < cur.n; i++) buf_put(&b, cur.v[i].s, cur.v[i].n);
            sl_push(&nx, b.p ? b.p : "", b.n);
            free(b.p);
            break;
        }
        default: GQ_ABORT("decoder kind %d", d->kind);
        }
        sl_free(&cur);
        cur = nx;
    }
    /* the decoded text is the concatenation of what the chain left */
    buf b = {0};
    for (size_t i = 0; i < cur.n; i++) buf_put(&b, cur.v[i].s, cur.v[i].n);
    buf_put(&b, "", 0);
    b.p[b.n] = 0;
    sl_free(&cur);
    *out = b.p;
    if (out_len) *out_len = b.n;
    return GQ_OK;
}

/* Length of the longest common prefix of a[0..an) and b[0..bn), cut back to
 * the start of a UTF-8 character of b (never inside a multi-byte sequence). */
static size_t common_prefix_chars(const char *a, size_t an, const char *b, size_t bn) {
    size_t n = an < bn ? an : bn, l = 0;
    while (l < n && a[l] == b[l]) l++;
    while (l > 0 && l < bn && ((unsigned char)b[l] & 0xC0) == 0x80) l--;
    return l;
}

/*
 * text(ids | prefix) = decode(prefix + ids) minus decode(prefix). Decoding
 * ids alone would treat them as the start of a text: Llama-2's Strip (and
 * Metaspace with a prepend scheme) drops the leading space of the first
 * token, so an answer "▁▁▁▁return" would lose one of its spaces.
 *
 * Fallback when decode(prefix) is not a prefix of decode(prefix + ids):
 * that happens only where the decoder joins tokens across the boundary --
 * a UTF-8 sequence begun by byte tokens (or byte-level pieces) at the end
 * of the prefix and finished by ids (decode(prefix) alone shows U+FFFD
 * there), or a run of <0xNN> tokens spanning the boundary that is invalid
 * as a whole (then every byte token of the run becomes U+FFFD). The result
 * is then what decode(prefix + ids) holds after the longest common prefix
 * of the two texts, cut back to a character boundary: the characters made
 * from bytes on both sides go to the continuation, and
 * decode(prefix + ids) == decode(prefix)[0..L) + result still holds.
 */
int gq_tok_decode_continuation(const gq_tokenizer *t, const int32_t *prefix, size_t n_prefix, const int32_t *ids,
                               size_t n, int skip_special, char **out, size_t *out_len) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!n_prefix) return gq_tok_decode(t, ids, n, skip_special, out, out_len);
    for (size_t i = 0; i < n; i++) /* named here: in prefix + ids its position would be shifted */
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return gq_err(GQ_ERR_ARG,
                          "decode: token id %d at position %zu of a continuation (after %zu prefix ids) is outside "
                          "the vocabulary [0, %d) of %s",
                          ids[i], i, n_prefix, t->n_vocab, t->path);
    int32_t *all = gq_malloc((n_prefix + n) * sizeof *all);
    memcpy(all, prefix, n_prefix * sizeof *all);
    if (n) memcpy(all + n_prefix, ids, n * sizeof *all);
    char *full = NULL, *head = NULL;
    size_t full_n = 0, head_n = 0;
    int rc = gq_tok_decode(t, all, n_prefix + n, skip_special, &full, &full_n);
    free(all);
    if (rc) return gq_err_prefix("the prefix of a continuation");
    rc = gq_tok_decode(t, prefix, n_prefix, skip_special, &head, &head_n);
    if (rc) {
        free(full);
        return gq_err_prefix("the prefix of a continuation");
    }
    size_t l =
        head_n <= full_n && !memcmp(head, full, head_n) ? head_n : common_prefix_chars(head, head_n, full, full_n);
    free(head);
    memmove(full, full + l, full_n - l + 1); /* with the NUL */
    *out = full;
    if (out_len) *out_len = full_n - l;
    return GQ_OK;
}
