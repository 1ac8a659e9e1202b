/* unicode.c -- UTF-8 validation/repair, code point decoding, White_Space,
 * the GPT-2 byte-level byte <-> code point map, and the normalizers of
 * `tokenizers` (Unicode normalization forms through libutf8proc, lowercase,
 * combining-mark removal). */
#include "unicode.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "gq/common.h"

/* Length of the valid sequence at s[0..n) (1..4), or, if ill-formed, minus
 * the length of its maximal subpart (-1..-3): the bytes that one U+FFFD
 * replaces. Table 3-7 of the Unicode standard (well-formed byte sequences). */
static int utf8_seq(const unsigned char *s, size_t n) {
    unsigned char b = s[0];
    if (b < 0x80) return 1;
    int len;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (b >= 0xC2 && b <= 0xDF) len = 2;
    else if (b == 0xE0) len = 3, lo = 0xA0;
    else if (b >= 0xE1 && b <= 0xEC) len = 3;
    else if (b == 0xED) len = 3, hi = 0x9F;
    else if (b >= 0xEE && b <= 0xEF) len = 3;
    else if (b == 0xF0) len = 4, lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3) len = 4;
    else if (b == 0xF4) len = 4, hi = 0x8F;
    else return -1;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -i;
        unsigned char c = s[i];
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (c < l || c > h) return -i;
    }
    return len;
}

size_t gq_uni_valid_prefix(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        /* ASCII fast path, 8 bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_seq(s + i, n - i);
        if (k < 0) return i;
        i += (size_t)k;
    }
    return n;
}

char *gq_uni_repair(const char *str, size_t n, size_t *out_n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t cap = n * 3 + 1, o = 0; /* worst case: each byte -> 3-byte U+FFFD */
    char *out = gq_malloc(cap);
    size_t i = 0;
    while (i < n) {
        int k = utf8_seq(s + i, n - i);
        if (k > 0) {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += (size_t)(-k);
        }
    }
    out[o] = 0;
    *out_n = o;
    return out;
}

int gq_uni_decode(const char *str, size_t n, uint32_t *cp) {
    const unsigned char *s = (const unsigned char *)str;
    unsigned char b = s[0];
    int len = gq_uni_len(b);
    if ((size_t)len > n) len = 1;
    switch (len) {
    case 1: *cp = b; break;
    case 2: *cp = ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F); break;
    case 3: *cp = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F); break;
    default:
        *cp = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
              ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
    return len;
}

int gq_uni_decode_last(const char *str, size_t n, uint32_t *cp) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = n - 1;
    while (i > 0 && n - i < 4 && (s[i] & 0xC0) == 0x80) i--;
    gq_uni_decode(str + i, n - i, cp);
    return (int)(n - i);
}

int gq_uni_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int gq_uni_is_whitespace(uint32_t c) {
    /* PropList.txt White_Space: 25 code points */
    if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
    if (c < 0x85) return 0;
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* GPT-2 bytes_to_unicode: the printable bytes '!'..'~', 0xA1..0xAC and
 * 0xAE..0xFF map to themselves; the other 68 bytes, in increasing order, map
 * to U+0100, U+0101, ... */
static int bl_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t gq_uni_bytelevel_char(unsigned char b) {
    if (bl_printable(b)) return b;
    unsigned k = 0; /* number of non-printable bytes below b */
    for (unsigned x = 0; x < b; x++) k += !bl_printable(x);
    return 0x100 + k;
}

int gq_uni_bytelevel_byte(uint32_t cp) {
    if (cp < 0x100) return bl_printable(cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    unsigned k = cp - 0x100;
    for (unsigned x = 0; x < 256; x++) {
        if (!bl_printable(x)) {
            if (k == 0) return (int)x;
            k--;
        }
    }
    return -1;
}

/* ---- normalizers ---- */

/* growable output buffer */
typedef struct {
    char *p;
    size_t n, cap;
} ubuf;

static void ub_reserve(ubuf *b, size_t more) {
    if (b->n + more + 1 <= b->cap) return;
    b->cap = (b->n + more + 1) * 2;
    b->p = gq_realloc(b->p, b->cap);
}

static void ub_put(ubuf *b, const char *s, size_t n) {
    ub_reserve(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void ub_put_cp(ubuf *b, uint32_t cp) {
    ub_reserve(b, 4);
    b->n += (size_t)gq_uni_encode(cp, b->p + b->n);
}

static char *ub_finish(ubuf *b, size_t *out_n) {
    ub_reserve(b, 0);
    b->p[b->n] = 0;
    *out_n = b->n;
    return b->p;
}

static int in_ranges(const gq_uni_range *r, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo) hi = mid;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

/* Append the form of s[0..n) (characters `tokenizers` knows) via utf8proc. */
static void norm_run(ubuf *b, int form, const char *s, size_t n) {
    static const utf8proc_option_t opts[4] = {
        [GQ_UNI_NFC] = UTF8PROC_STABLE | UTF8PROC_COMPOSE,
        [GQ_UNI_NFD] = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE,
        [GQ_UNI_NFKC] = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT,
        [GQ_UNI_NFKD] = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT,
    };
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, opts[form]);
    /* the input is valid UTF-8 (repaired before encoding, checked by jansson
     * in tokenizer.json): only out of memory is left */
    if (r < 0) GQ_ABORT("utf8proc_map of a %zu-byte text: %s", n, utf8proc_errmsg(r));
    ub_put(b, (const char *)dst, (size_t)r);
    free(dst);
}

/*
 * A character at or above U+0300 that the tables of `tokenizers` do not know
 * (assigned after Unicode 9.0, or one with no normalization data at all) is
 * an inert starter there: it blocks reordering and composition, so the text
 * between two of them is normalized on its own and the character itself is
 * copied. Everything below U+0300 is older than Unicode 9.0 and goes to
 * utf8proc with its run. Runs whose characters are all below `plain` (which
 * the form leaves alone) are copied without calling utf8proc.
 */
char *gq_uni_normalize(int form, const char *s, size_t n, size_t *out_n) {
    if (form < GQ_UNI_NFC || form > GQ_UNI_NFKD) GQ_ABORT("normalization form %d", form);
    static const uint32_t plain_below[4] = {[GQ_UNI_NFC] = 0x300, [GQ_UNI_NFD] = 0xC0, [GQ_UNI_NFKC] = 0xA0,
                                            [GQ_UNI_NFKD] = 0xA0};
    uint32_t plain = plain_below[form];
    ubuf b = {0};
    ub_reserve(&b, n + n / 4);
    size_t run = 0, i = 0;
    int need = 0; /* the run has a character at or above `plain` */
    while (i < n) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        int len = gq_uni_decode(s + i, n - i, &cp);
        if (cp >= 0x300 && !in_ranges(gq_uni_norm_known, gq_uni_norm_known_n, cp)) {
            if (need) norm_run(&b, form, s + run, i - run);
            else ub_put(&b, s + run, i - run);
            ub_put(&b, s + i, (size_t)len);
            run = i + (size_t)len;
            need = 0;
        } else if (cp >= plain) {
            need = 1;
        }
        i += (size_t)len;
    }
    if (need) norm_run(&b, form, s + run, n - run);
    else ub_put(&b, s + run, n - run);
    return ub_finish(&b, out_n);
}

static const gq_uni_case *lower_ex(uint32_t cp) {
    size_t lo = 0, hi = gq_uni_lower_ex_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < gq_uni_lower_ex[mid].cp) hi = mid;
        else if (cp > gq_uni_lower_ex[mid].cp) lo = mid + 1;
        else return &gq_uni_lower_ex[mid];
    }
    return NULL;
}

char *gq_uni_lowercase(const char *s, size_t n, size_t *out_n) {
    ubuf b = {0};
    ub_reserve(&b, n + n / 8);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            char l = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            ub_put(&b, &l, 1);
            i++;
            continue;
        }
        uint32_t cp;
        i += (size_t)gq_uni_decode(s + i, n - i, &cp);
        const gq_uni_case *e = lower_ex(cp);
        if (!e) {
            ub_put_cp(&b, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp));
            continue;
        }
        for (int k = 0; k < 3 && e->lower[k]; k++) ub_put_cp(&b, e->lower[k]);
    }
    return ub_finish(&b, out_n);
}

char *gq_uni_strip_marks(const char *s, size_t n, size_t *out_n) {
    ubuf b = {0};
    ub_reserve(&b, n);
    size_t keep = 0, i = 0; /* s[keep..i) is kept, not yet copied */
    while (i < n) {
        if ((unsigned char)s[i] < 0xCC) { /* below U+0300: no mark */
            i += (size_t)gq_uni_len((unsigned char)s[i]);
            continue;
        }
        uint32_t cp;
        int len = gq_uni_decode(s + i, n - i, &cp);
        if (in_ranges(gq_uni_marks, gq_uni_marks_n, cp)) {
            ub_put(&b, s + keep, i - keep);
            keep = i + (size_t)len;
        }
        i += (size_t)len;
    }
    ub_put(&b, s + keep, n - keep);
    return ub_finish(&b, out_n);
}
