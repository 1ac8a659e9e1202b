/* jinja_builtins.c -- what a Jinja template can call (gq/jinja.h):
 * filters, tests, the global functions (raise_exception, namespace, range,
 * strftime_now, dict) and the str/dict methods, with the string helpers
 * they share (code-point indexing, strip, case mapping, replace). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja_impl.h"

/* ---- strings by code point --------------------------------------------------------- */

/* Byte offsets of the code points of s (count+1 entries). */
size_t *jinja_cp_offsets(jctx *c, const char *s, size_t n, size_t *count) {
    size_t k = jv_utf8_len(s, n), j = 0;
    size_t *off = jarena_alloc(c->a, (k + 1) * sizeof *off);
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) off[j++] = i;
    off[k] = n;
    *count = k;
    return off;
}

static int is_space(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* strip per Python: chars == NULL strips whitespace; mode 1 left, 2 right, 3 both */
static jv strip(jv s, const jv *chars, int mode) {
    const char *p = s.u.str.s;
    size_t a = 0, b = s.u.str.n;
#define STRIPPABLE(ch) (chars ? memchr(chars->u.str.s, (ch), chars->u.str.n) != NULL : is_space(ch))
    if (mode & 1)
        while (a < b && STRIPPABLE(p[a])) a++;
    if (mode & 2)
        while (b > a && STRIPPABLE(p[b - 1])) b--;
#undef STRIPPABLE
    return jv_str(p + a, b - a);
}

/* Simple case mapping of ASCII, Latin-1, Greek and Cyrillic letters (the
 * one-to-one mappings of Python's str.upper/lower there); other code points
 * are left as they are. */
static uint32_t cp_upper(uint32_t c) {
    if ((c >= 'a' && c <= 'z') || (c >= 0xE0 && c <= 0xFE && c != 0xF7) || (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) ||
        (c >= 0x430 && c <= 0x44F))
        return c - 32;
    if (c == 0xFF) return 0x178;
    if (c == 0x3C2) return 0x3A3;
    if (c >= 0x450 && c <= 0x45F) return c - 80;
    return c;
}
static uint32_t cp_lower(uint32_t c) {
    if ((c >= 'A' && c <= 'Z') || (c >= 0xC0 && c <= 0xDE && c != 0xD7) || (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) ||
        (c >= 0x410 && c <= 0x42F))
        return c + 32;
    if (c == 0x178) return 0xFF;
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    return c;
}

/* Decode the UTF-8 sequence at s[i] (n bytes total); returns its length, or
 * 0 for an invalid byte. */
static size_t utf8_decode(const unsigned char *s, size_t i, size_t n, uint32_t *cp) {
    unsigned char b = s[i];
    size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (!len || i + len > n) return 0;
    uint32_t c = len == 1 ? b : len == 2 ? (b & 0x1Fu) : len == 3 ? (b & 0x0Fu) : (b & 0x07u);
    for (size_t k = 1; k < len; k++) {
        if ((s[i + k] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i + k] & 0x3Fu);
    }
    *cp = c;
    return len;
}

static jv case_map(jctx *c, jv s, int mode) { /* 1 upper, 2 lower, 3 capitalize */
    const unsigned char *p = (const unsigned char *)s.u.str.s;
    char *o = jarena_alloc(c->a, s.u.str.n + 1);
    size_t k = 0;
    for (size_t i = 0; i < s.u.str.n;) {
        uint32_t cp;
        size_t len = utf8_decode(p, i, s.u.str.n, &cp);
        if (!len) {
            o[k++] = (char)p[i++];
            continue;
        }
        int up = mode == 1 || (mode == 3 && i == 0);
        uint32_t m = up ? cp_upper(cp) : cp_lower(cp);
        /* every mapping above keeps the encoded length */
        k += jinja_put_utf8(o + k, m);
        i += len;
    }
    return jv_str(o, k);
}

static int str_replace(jctx *c, const jnode *n, jv s, jv from, jv to, int64_t count, jv *out) {
    jbuf b = {0};
    const char *p = s.u.str.s, *e = p + s.u.str.n;
    int64_t done = 0;
    if (!from.u.str.n) { /* Python inserts `to` between code points */
        size_t k;
        size_t *off = jinja_cp_offsets(c, p, s.u.str.n, &k);
        for (size_t i = 0; i <= k && b.n <= JINJA_MAX_OUTPUT; i++) {
            if (count < 0 || done < count) {
                jbuf_put(&b, to.u.str.s, to.u.str.n);
                done++;
            }
            if (i < k) jbuf_put(&b, p + off[i], off[i + 1] - off[i]);
        }
    } else {
        while (p < e && b.n <= JINJA_MAX_OUTPUT) {
            const char *m = (count < 0 || done < count) ? memmem(p, (size_t)(e - p), from.u.str.s, from.u.str.n) : NULL;
            if (!m) break;
            jbuf_put(&b, p, (size_t)(m - p));
            jbuf_put(&b, to.u.str.s, to.u.str.n);
            p = m + from.u.str.n;
            done++;
        }
        jbuf_put(&b, p, (size_t)(e - p));
    }
    if (b.n > JINJA_MAX_OUTPUT) {
        free(b.p);
        return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "replace: result longer than %zu bytes", JINJA_MAX_OUTPUT);
    }
    *out = jv_str(jarena_strndup(c->a, b.p ? b.p : "", b.n), b.n);
    free(b.p);
    return GQ_OK;
}

/* positional argument i or keyword `kw`; NULL if absent */
static const jv *arg(const jargs *a, int i, const char *kw) {
    int pos = 0;
    for (int k = 0; k < a->n; k++) {
        if (!a->kw[k]) {
            if (pos++ == i) return &a->v[k];
        } else if (kw && !strcmp(a->kw[k], kw)) {
            return &a->v[k];
        }
    }
    return NULL;
}

static int need_str(jctx *c, const jnode *n, const jv *v, const char *what) {
    if (!v || v->type != JV_STR)
        return jinja_eerr(c, n, GQ_ERR_DATA, "%s: expected a string, got %s", what, v ? jv_type_name(*v) : "nothing");
    return GQ_OK;
}
static int need_int(jctx *c, const jnode *n, const jv *v, const char *what) {
    if (!v || (v->type != JV_INT && v->type != JV_BOOL))
        return jinja_eerr(c, n, GQ_ERR_DATA, "%s: expected an integer, got %s", what, v ? jv_type_name(*v) : "nothing");
    return GQ_OK;
}

int jinja_call_builtin(jctx *c, const jnode *n, int id, const jargs *a, jv *out) {
    *out = jv_none();
    switch (id) {
    case JF_RAISE: {
        const jv *m = arg(a, 0, NULL);
        jv s = m ? jinja_str_of(c, *m) : jv_cstr("");
        return jinja_eerr(c, n, GQ_ERR_DATA, "template raised: %.*s", (int)s.u.str.n, s.u.str.s);
    }
    case JF_NAMESPACE:
    case JF_DICT: {
        jdict *d = jv_dict_new(c->a, a->n);
        d->is_namespace = id == JF_NAMESPACE;
        for (int i = 0; i < a->n; i++) {
            if (a->kw[i]) {
                jv_dict_set(c->a, d, jv_cstr(a->kw[i]), a->v[i]);
            } else if (a->v[i].type == JV_DICT) {
                for (int k = 0; k < a->v[i].u.dict->n; k++)
                    jv_dict_set(c->a, d, a->v[i].u.dict->keys[k], a->v[i].u.dict->vals[k]);
            } else {
                return jinja_eerr(c, n, GQ_ERR_DATA, "%s(): positional arguments must be dicts",
                                  id == JF_DICT ? "dict" : "namespace");
            }
        }
        *out = jv_of_dict(d);
        return GQ_OK;
    }
    case JF_RANGE: {
        int64_t b[3] = {0, 0, 1};
        if (a->n < 1 || a->n > 3) return jinja_eerr(c, n, GQ_ERR_DATA, "range() takes 1 to 3 arguments, got %d", a->n);
        for (int i = 0; i < a->n; i++)
            if (need_int(c, n, &a->v[i], "range()")) return gq_errcode();
        if (a->n == 1) {
            b[1] = a->v[0].u.i;
        } else {
            b[0] = a->v[0].u.i;
            b[1] = a->v[1].u.i;
            if (a->n == 3) b[2] = a->v[2].u.i;
        }
        if (!b[2]) return jinja_eerr(c, n, GQ_ERR_DATA, "range() step must not be zero");
        jlist *l = jv_list_new(c->a, 4);
        for (int64_t i = b[0]; b[2] > 0 ? i < b[1] : i > b[1]; i += b[2]) {
            if (l->n >= JINJA_MAX_RANGE)
                return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "range() longer than %d", JINJA_MAX_RANGE);
            jv_list_push(c->a, l, jv_int(i));
        }
        *out = jv_of_list(l);
        return GQ_OK;
    }
    case JF_STRFTIME: {
        const jv *f = arg(a, 0, NULL);
        if (need_str(c, n, f, "strftime_now()")) return gq_errcode();
        char fmt[256], buf[512];
        snprintf(fmt, sizeof fmt, "%.*s", (int)f->u.str.n, f->u.str.s);
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        size_t k = strftime(buf, sizeof buf, fmt, &tmv);
        *out = jv_str(jarena_strndup(c->a, buf, k), k);
        return GQ_OK;
    }
    }
    return jinja_eerr(c, n, GQ_ERR_DATA, "not callable");
}

int jinja_call_method(jctx *c, const jnode *n, int id, jv recv, const jargs *a, jv *out) {
    const jv *a0 = arg(a, 0, NULL), *a1 = arg(a, 1, NULL);
    switch (id) {
    case JM_STRIP:
    case JM_LSTRIP:
    case JM_RSTRIP:
        if (a0 && a0->type != JV_NONE && need_str(c, n, a0, "strip()")) return gq_errcode();
        *out = strip(recv, a0 && a0->type == JV_STR ? a0 : NULL, id == JM_STRIP ? 3 : id == JM_LSTRIP ? 1 : 2);
        return GQ_OK;
    case JM_UPPER:
        *out = case_map(c, recv, 1);
        return GQ_OK;
    case JM_LOWER:
        *out = case_map(c, recv, 2);
        return GQ_OK;
    case JM_STARTSWITH:
    case JM_ENDSWITH: {
        if (need_str(c, n, a0, id == JM_STARTSWITH ? "startswith()" : "endswith()")) return gq_errcode();
        size_t k = a0->u.str.n, m = recv.u.str.n;
        const char *p = recv.u.str.s + (id == JM_STARTSWITH ? 0 : m - k);
        *out = jv_bool(k <= m && !memcmp(p, a0->u.str.s, k));
        return GQ_OK;
    }
    case JM_SPLIT: {
        jlist *l = jv_list_new(c->a, 4);
        const char *p = recv.u.str.s, *e = p + recv.u.str.n;
        if (!a0 || a0->type == JV_NONE) {
            while (p < e) {
                while (p < e && is_space(*p)) p++;
                const char *s = p;
                while (p < e && !is_space(*p)) p++;
                if (p > s) jv_list_push(c->a, l, jv_str(s, (size_t)(p - s)));
            }
        } else {
            if (need_str(c, n, a0, "split()")) return gq_errcode();
            if (!a0->u.str.n) return jinja_eerr(c, n, GQ_ERR_DATA, "split(): empty separator");
            for (;;) {
                const char *m = memmem(p, (size_t)(e - p), a0->u.str.s, a0->u.str.n);
                if (!m) break;
                jv_list_push(c->a, l, jv_str(p, (size_t)(m - p)));
                p = m + a0->u.str.n;
            }
            jv_list_push(c->a, l, jv_str(p, (size_t)(e - p)));
        }
        *out = jv_of_list(l);
        return GQ_OK;
    }
    case JM_REPLACE: {
        const jv *a2 = arg(a, 2, NULL);
        if (need_str(c, n, a0, "replace()") || need_str(c, n, a1, "replace()")) return gq_errcode();
        if (a2 && need_int(c, n, a2, "replace() count")) return gq_errcode();
        return str_replace(c, n, recv, *a0, *a1, a2 ? a2->u.i : -1, out);
    }
    case JM_GET: {
        if (!a0) return jinja_eerr(c, n, GQ_ERR_DATA, "get() needs a key");
        if (jinja_get_item(c, n, recv, *a0, out)) return gq_errcode();
        if (out->type == JV_UNDEF) *out = a1 ? *a1 : jv_none();
        return GQ_OK;
    }
    case JM_ITEMS:
    case JM_KEYS:
    case JM_VALUES: {
        jdict *d = recv.u.dict;
        jlist *l = jv_list_new(c->a, d->n);
        for (int i = 0; i < d->n; i++) {
            if (id == JM_ITEMS) {
                jlist *pair = jv_list_new(c->a, 2);
                jv_list_push(c->a, pair, d->keys[i]);
                jv_list_push(c->a, pair, d->vals[i]);
                jv_list_push(c->a, l, jv_of_list(pair));
            } else {
                jv_list_push(c->a, l, id == JM_KEYS ? d->keys[i] : d->vals[i]);
            }
        }
        *out = jv_of_list(l);
        return GQ_OK;
    }
    }
    return jinja_eerr(c, n, GQ_ERR_DATA, "unknown method");
}

/* ---- filters and tests ------------------------------------------------------------------------- */

static int length_of(jctx *c, const jnode *n, jv v, int64_t *len) {
    switch (v.type) {
    case JV_UNDEF:
        *len = 0;
        return GQ_OK;
    case JV_STR:
        *len = (int64_t)jv_utf8_len(v.u.str.s, v.u.str.n);
        return GQ_OK;
    case JV_LIST:
        *len = v.u.list->n;
        return GQ_OK;
    case JV_DICT:
        if (!v.u.dict->is_namespace) {
            *len = v.u.dict->n;
            return GQ_OK;
        }
        /* fall through */
    default:
        return jinja_eerr(c, n, GQ_ERR_DATA, "object of type '%s' has no length", jv_type_name(v));
    }
}

static int fname_is(const jnode *n, const char *s) {
    return strlen(s) == n->len && !memcmp(n->str, s, n->len);
}

int jinja_filter(jctx *c, const jnode *n, jv v, const jargs *a, jv *out) {
    const jv *a0 = arg(a, 0, NULL);
    if (fname_is(n, "trim")) {
        const jv *chars = arg(a, 0, "chars");
        if (chars && chars->type != JV_NONE && need_str(c, n, chars, "trim")) return gq_errcode();
        *out = strip(jinja_str_of(c, v), chars && chars->type == JV_STR ? chars : NULL, 3);
    } else if (fname_is(n, "length") || fname_is(n, "count")) {
        int64_t len = 0;
        if (length_of(c, n, v, &len)) return gq_errcode();
        *out = jv_int(len);
    } else if (fname_is(n, "upper") || fname_is(n, "lower") || fname_is(n, "capitalize")) {
        *out = case_map(c, jinja_str_of(c, v), fname_is(n, "upper") ? 1 : fname_is(n, "lower") ? 2 : 3);
    } else if (fname_is(n, "tojson")) {
        const jv *ind = arg(a, 0, "indent");
        if (ind && ind->type != JV_NONE && need_int(c, n, ind, "tojson indent")) return gq_errcode();
        jbuf b = {0};
        if (jv_tojson(&b, v, ind && ind->type != JV_NONE ? (int)ind->u.i : -1, 0)) {
            free(b.p);
            return jinja_eerr(c, n, GQ_ERR_DATA, "tojson: a %s value is not JSON serializable", jv_type_name(v));
        }
        *out = jv_str(jarena_strndup(c->a, b.p, b.n), b.n);
        free(b.p);
    } else if (fname_is(n, "string")) {
        *out = jinja_str_of(c, v);
    } else if (fname_is(n, "first") || fname_is(n, "last")) {
        jlist *l;
        if (jinja_items_of(c, n, v, &l)) return gq_errcode();
        *out = l->n ? l->v[fname_is(n, "first") ? 0 : l->n - 1] : jv_undef();
    } else if (fname_is(n, "join")) {
        jlist *l;
        jv sep = a0 ? jinja_str_of(c, *a0) : jv_cstr("");
        if (jinja_items_of(c, n, v, &l)) return gq_errcode();
        jbuf b = {0};
        for (int i = 0; i < l->n; i++) {
            if (i) jbuf_put(&b, sep.u.str.s, sep.u.str.n);
            jv_to_str(&b, l->v[i]);
            if (b.n > JINJA_MAX_OUTPUT) {
                free(b.p);
                return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "join: result longer than %zu bytes", JINJA_MAX_OUTPUT);
            }
        }
        *out = jv_str(jarena_strndup(c->a, b.p ? b.p : "", b.n), b.n);
        free(b.p);
    } else if (fname_is(n, "default") || fname_is(n, "d")) {
        const jv *boolean = arg(a, 1, "boolean");
        int use = v.type == JV_UNDEF || (boolean && jv_truthy(*boolean) && !jv_truthy(v));
        *out = use ? (a0 ? *a0 : jv_cstr("")) : v;
    } else if (fname_is(n, "list")) {
        jlist *l;
        if (jinja_items_of(c, n, v, &l)) return gq_errcode();
        *out = jv_of_list(l);
    } else if (fname_is(n, "items")) {
        if (v.type == JV_UNDEF) {
            *out = jv_of_list(jv_list_new(c->a, 0));
            return GQ_OK;
        }
        if (v.type != JV_DICT) return jinja_eerr(c, n, GQ_ERR_DATA, "items: expected a dict, got %s", jv_type_name(v));
        jargs none = {.n = 0};
        return jinja_call_method(c, n, JM_ITEMS, v, &none, out);
    } else if (fname_is(n, "reverse")) {
        if (v.type == JV_STR) {
            size_t k, *off = jinja_cp_offsets(c, v.u.str.s, v.u.str.n, &k);
            jbuf b = {0};
            for (size_t i = k; i-- > 0;) jbuf_put(&b, v.u.str.s + off[i], off[i + 1] - off[i]);
            *out = jv_str(jarena_strndup(c->a, b.p ? b.p : "", b.n), b.n);
            free(b.p);
        } else {
            jlist *l, *r;
            if (jinja_items_of(c, n, v, &l)) return gq_errcode();
            r = jv_list_new(c->a, l->n);
            for (int i = l->n; i-- > 0;) jv_list_push(c->a, r, l->v[i]);
            *out = jv_of_list(r);
        }
    } else if (fname_is(n, "replace")) {
        const jv *a1 = arg(a, 1, NULL), *a2 = arg(a, 2, "count");
        if (need_str(c, n, a0, "replace") || need_str(c, n, a1, "replace")) return gq_errcode();
        if (a2 && a2->type != JV_NONE && need_int(c, n, a2, "replace count")) return gq_errcode();
        return str_replace(c, n, jinja_str_of(c, v), *a0, *a1, a2 && a2->type != JV_NONE ? a2->u.i : -1, out);
    } else {
        return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "filter '%.*s' is not supported by gq's Jinja subset", (int)n->len,
                          n->str);
    }
    return GQ_OK;
}

int jinja_test(jctx *c, const jnode *n, jv v, const jargs *a, int *res) {
    const jv *a0 = arg(a, 0, NULL);
    int num = v.type == JV_INT || v.type == JV_BOOL;
    if (fname_is(n, "defined"))
        *res = v.type != JV_UNDEF;
    else if (fname_is(n, "undefined"))
        *res = v.type == JV_UNDEF;
    else if (fname_is(n, "none"))
        *res = v.type == JV_NONE;
    else if (fname_is(n, "string"))
        *res = v.type == JV_STR;
    else if (fname_is(n, "number"))
        *res = num;
    else if (fname_is(n, "integer"))
        *res = v.type == JV_INT;
    else if (fname_is(n, "boolean"))
        *res = v.type == JV_BOOL;
    else if (fname_is(n, "true"))
        *res = v.type == JV_BOOL && v.u.i;
    else if (fname_is(n, "false"))
        *res = v.type == JV_BOOL && !v.u.i;
    else if (fname_is(n, "mapping"))
        *res = v.type == JV_DICT && !v.u.dict->is_namespace;
    else if (fname_is(n, "iterable"))
        *res = v.type == JV_UNDEF || v.type == JV_STR || v.type == JV_LIST ||
               (v.type == JV_DICT && !v.u.dict->is_namespace);
    else if (fname_is(n, "sequence"))
        *res = v.type == JV_STR || v.type == JV_LIST || (v.type == JV_DICT && !v.u.dict->is_namespace);
    else if (fname_is(n, "even") || fname_is(n, "odd") || fname_is(n, "divisibleby")) {
        if (!num)
            return jinja_eerr(c, n, GQ_ERR_DATA, "test '%.*s' needs a number, got %s", (int)n->len, n->str,
                              jv_type_name(v));
        int64_t d = 2;
        if (fname_is(n, "divisibleby")) {
            if (need_int(c, n, a0, "divisibleby")) return gq_errcode();
            if (!a0->u.i) return jinja_eerr(c, n, GQ_ERR_DATA, "divisibleby 0");
            d = a0->u.i;
        }
        int64_t r = v.u.i % d;
        *res = fname_is(n, "odd") ? r != 0 : r == 0;
    } else if (fname_is(n, "sameas")) {
        if (!a0) return jinja_eerr(c, n, GQ_ERR_DATA, "sameas needs an argument");
        jv b = *a0;
        if (v.type != b.type)
            *res = 0;
        else if (v.type == JV_STR)
            *res = v.u.str.s == b.u.str.s && v.u.str.n == b.u.str.n;
        else if (v.type == JV_LIST)
            *res = v.u.list == b.u.list;
        else if (v.type == JV_DICT)
            *res = v.u.dict == b.u.dict;
        else
            *res = jv_equal(v, b);
    } else if (fname_is(n, "eq") || fname_is(n, "equalto") || fname_is(n, "ne")) {
        if (!a0) return jinja_eerr(c, n, GQ_ERR_DATA, "test '%.*s' needs an argument", (int)n->len, n->str);
        *res = jv_equal(v, *a0) != fname_is(n, "ne");
    } else {
        return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "test '%.*s' is not supported by gq's Jinja subset", (int)n->len,
                          n->str);
    }
    return GQ_OK;
}
