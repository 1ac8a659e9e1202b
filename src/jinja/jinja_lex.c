/* jinja_lex.c -- the arena and the lexer of the Jinja subset (gq/jinja.h).
 *
 * The lexer follows jinja2's (3.1) with trim_blocks and lstrip_blocks on, as
 * transformers configures it: "{%-"/"{{-"/"{#-" strip all whitespace before
 * the tag, "-%}"/"-}}"/"-#}" all whitespace after it; otherwise a block or
 * comment tag alone on its line (only spaces/tabs before it) takes that
 * indentation away ("{%+" keeps it), and one newline right after "%}" or
 * "#}" is dropped. Tag contents become NAME/INT/STRING/OP tokens; end
 * delimiters are recognised only outside brackets, as jinja2 does. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

/* ---- arena ------------------------------------------------------------------ */

struct jarena_block {
    jarena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *jarena_alloc(jarena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    jarena_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 32768 ? n : 32768;
        b = gq_malloc(sizeof *b + cap);
        b->used = 0;
        b->cap = cap;
        b->next = a->head;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    a->total += n;
    memset(p, 0, n);
    return p;
}

char *jarena_strndup(jarena *a, const char *s, size_t n) {
    char *p = jarena_alloc(a, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void jarena_free(jarena *a) {
    jarena_block *b = a->head;
    while (b) {
        jarena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
}

/* ---- tokens ------------------------------------------------------------------ */

void jinja_linecol(const jparser *p, size_t off, int *line, int *col) {
    int lo = 0, hi = p->nlines - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (p->line_start[mid] <= off)
            lo = mid;
        else
            hi = mid - 1;
    }
    *line = lo + 1;
    *col = (int)(off - p->line_start[lo]) + 1;
}

int jinja_perr(jparser *p, int code, size_t off, const char *fmt, ...) {
    if (p->err) return p->err;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    jinja_linecol(p, off, &line, &col);
    p->err = gq_err(code, "%s:%d:%d: %s", p->name, line, col, msg);
    return p->err;
}

jtok *jinja_push_tok(jparser *p, ttype type, size_t off) {
    if (p->ntok == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 256;
        p->tok = gq_realloc(p->tok, (size_t)p->cap * sizeof *p->tok);
    }
    jtok *t = &p->tok[p->ntok++];
    memset(t, 0, sizeof *t);
    t->type = type;
    t->off = off;
    return t;
}

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
static int is_name0(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

size_t jinja_put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A string literal starting at src[*i] (the quote); Python escapes. */
static int lex_string(jparser *p, size_t *i) {
    const char *s = p->src;
    size_t start = *i, k = start + 1;
    char q = s[start];
    char *out = jarena_alloc(p->arena, p->n - start + 1), *o = out;
    while (k < p->n && s[k] != q) {
        if (s[k] != '\\') {
            *o++ = s[k++];
            continue;
        }
        if (k + 1 >= p->n) break;
        char e = s[k + 1];
        k += 2;
        switch (e) {
        case 'n':
            *o++ = '\n';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 'a':
            *o++ = '\a';
            break;
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'v':
            *o++ = '\v';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '\'':
            *o++ = '\'';
            break;
        case '"':
            *o++ = '"';
            break;
        case '\n':
            break; /* line continuation */
        case 'x':
        case 'u':
        case 'U': {
            int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int d = 0; d < nd; d++) {
                int h = k < p->n ? hexval(s[k]) : -1;
                if (h < 0) return PERR(p, GQ_ERR_FORMAT, k, "bad \\%c escape in a string literal", e);
                cp = cp * 16 + (uint32_t)h;
                k++;
            }
            if (cp > 0x10FFFF) return PERR(p, GQ_ERR_FORMAT, k, "escape \\%c beyond U+10FFFF", e);
            o += jinja_put_utf8(o, cp);
            break;
        }
        default:
            if (e >= '0' && e <= '7') {
                uint32_t cp = (uint32_t)(e - '0');
                for (int d = 0; d < 2 && k < p->n && s[k] >= '0' && s[k] <= '7'; d++)
                    cp = cp * 8 + (uint32_t)(s[k++] - '0');
                o += jinja_put_utf8(o, cp);
            } else { /* unknown escapes keep the backslash, as Python does */
                *o++ = '\\';
                *o++ = e;
            }
        }
    }
    if (k >= p->n) return PERR(p, GQ_ERR_FORMAT, start, "unterminated string literal");
    jtok *t = jinja_push_tok(p, T_STRING, start);
    t->s = out;
    t->n = (size_t)(o - out);
    *i = k + 1;
    return GQ_OK;
}

static const char *const ops2[] = {"//", "**", "==", "!=", "<=", ">="};
static const char ops1[] = "+-/*%~[](){}<>=.:|,;";

/* Tokens of one tag starting at *i (after the opening delimiter and sign),
 * up to and including its end delimiter. kind: '{' (variable) or '%'. */
static int lex_tag(jparser *p, size_t *i, char kind, size_t tag_off) {
    const char *s = p->src;
    size_t n = p->n, k = *i;
    char stack[64];
    int depth = 0;
    for (;;) {
        while (k < n && is_ws(s[k])) k++;
        if (k >= n)
            return PERR(p, GQ_ERR_FORMAT, tag_off, "unexpected end of template: this tag is not closed (expected '%s')",
                        kind == '%' ? "%}" : "}}");
        if (depth == 0) {
            char c2 = kind == '%' ? '%' : '}';
            size_t end = 0;
            int strip = 0;
            if (s[k] == '-' && k + 2 < n && s[k + 1] == c2 && s[k + 2] == '}') {
                end = k + 3;
                strip = 1;
            } else if (kind == '%' && s[k] == '+' && k + 2 < n && s[k + 1] == '%' && s[k + 2] == '}') {
                end = k + 3;
            } else if (s[k] == c2 && k + 1 < n && s[k + 1] == '}') {
                end = k + 2;
                if (kind == '%' && end < n && s[end] == '\n') end++; /* trim_blocks */
            }
            if (end) {
                jinja_push_tok(p, kind == '%' ? T_BLOCK_END : T_VAR_END, k);
                if (strip)
                    while (end < n && is_ws(s[end])) end++;
                *i = end;
                return GQ_OK;
            }
        }
        char c = s[k];
        if (is_name0(c) || (unsigned char)c >= 0x80) {
            size_t st = k;
            while (k < n && (is_name0(s[k]) || is_digit(s[k]) || (unsigned char)s[k] >= 0x80)) k++;
            jtok *t = jinja_push_tok(p, T_NAME, st);
            t->s = s + st;
            t->n = k - st;
        } else if (is_digit(c)) {
            size_t st = k;
            int64_t v = 0;
            while (k < n && (is_digit(s[k]) || (s[k] == '_' && k + 1 < n && is_digit(s[k + 1])))) {
                if (s[k] != '_') {
                    if (v > (INT64_MAX - (s[k] - '0')) / 10)
                        return PERR(p, GQ_ERR_UNSUPPORTED, st, "integer literal beyond 64 bits");
                    v = v * 10 + (s[k] - '0');
                }
                k++;
            }
            if (k < n && (s[k] == 'e' || s[k] == 'E' || (s[k] == '.' && k + 1 < n && is_digit(s[k + 1]))))
                return PERR(p, GQ_ERR_UNSUPPORTED, st, "float literals are not supported");
            jtok *t = jinja_push_tok(p, T_INT, st);
            t->i = v;
        } else if (c == '\'' || c == '"') {
            if (lex_string(p, &k)) return p->err;
        } else {
            size_t len = 0;
            for (size_t o = 0; o < sizeof ops2 / sizeof *ops2; o++)
                if (k + 1 < n && s[k] == ops2[o][0] && s[k + 1] == ops2[o][1]) len = 2;
            if (!len && strchr(ops1, c) && c) len = 1;
            if (!len) return PERR(p, GQ_ERR_FORMAT, k, "unexpected character '%c' in a tag", c);
            if (len == 1 && (c == '(' || c == '[' || c == '{')) {
                if (depth == (int)sizeof stack) return PERR(p, GQ_ERR_UNSUPPORTED, k, "brackets nested too deeply");
                stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
            } else if (len == 1 && (c == ')' || c == ']' || c == '}')) {
                if (!depth || stack[depth - 1] != c)
                    return PERR(p, GQ_ERR_FORMAT, k, "unexpected '%c'%s", c, depth ? ", brackets do not match" : "");
                depth--;
            }
            jtok *t = jinja_push_tok(p, T_OP, k);
            t->s = s + k;
            t->n = len;
            k += len;
        }
    }
}

static int all_ws(const char *s, size_t a, size_t b) {
    if (a >= b) return 0;
    for (size_t i = a; i < b; i++)
        if (!is_ws(s[i])) return 0;
    return 1;
}

int jinja_lex(jparser *p) {
    const char *s = p->src;
    size_t n = p->n, pos = 0;
    int line_starting = 1;
    while (pos < n) {
        size_t t = pos;
        while (t + 1 < n && !(s[t] == '{' && (s[t + 1] == '{' || s[t + 1] == '%' || s[t + 1] == '#'))) t++;
        if (t + 1 >= n) {
            jtok *tk = jinja_push_tok(p, T_TEXT, pos);
            tk->s = s + pos;
            tk->n = n - pos;
            break;
        }
        char kind = s[t + 1];
        char sign = t + 2 < n && (s[t + 2] == '-' || s[t + 2] == '+') ? s[t + 2] : 0;
        size_t text_end = t;
        if (sign == '-') {
            while (text_end > pos && is_ws(s[text_end - 1])) text_end--;
        } else if (sign != '+' && kind != '{') { /* lstrip_blocks */
            size_t l = t;
            while (l > pos && s[l - 1] != '\n') l--;
            int at_newline = l > pos;
            if ((at_newline || line_starting) && all_ws(s, l, t)) text_end = l;
        }
        if (text_end > pos) {
            jtok *tk = jinja_push_tok(p, T_TEXT, pos);
            tk->s = s + pos;
            tk->n = text_end - pos;
        }
        size_t body = t + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            const char *e = NULL;
            for (size_t k = body; k + 1 < n; k++)
                if (s[k] == '#' && s[k + 1] == '}') {
                    e = s + k;
                    break;
                }
            if (!e) return PERR(p, GQ_ERR_FORMAT, t, "comment is not closed (missing '#}')");
            size_t k = (size_t)(e - s), end = k + 2;
            if (k > body && s[k - 1] == '-') {
                while (end < n && is_ws(s[end])) end++;
            } else if (!(k > body && s[k - 1] == '+')) {
                if (end < n && s[end] == '\n') end++;
            }
            line_starting = s[end - 1] == '\n';
            pos = end;
            continue;
        }
        jinja_push_tok(p, kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, t);
        if (lex_tag(p, &body, kind, t)) return p->err;
        pos = body;
        line_starting = s[pos - 1] == '\n';
    }
    jinja_push_tok(p, T_EOF, n);
    return GQ_OK;
}
