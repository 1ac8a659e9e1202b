/* jinja_eval.c -- evaluation of a parsed Jinja template (see gq/jinja.h):
 * scopes, expressions, statements, filters, tests, builtins and methods.
 *
 * Scoping follows jinja2: each iteration of a for loop is a new scope
 * ({% set %} inside it is invisible after the loop and starts from the
 * outer value in the next iteration); if-blocks do not open scopes; a
 * namespace() object is shared by reference, so {% set ns.x = ... %} is the
 * way out of a loop. Variables resolve innermost scope first, then the
 * render variables, then the builtins. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja_impl.h"

enum { F_RAISE = 1, F_NAMESPACE, F_RANGE, F_STRFTIME, F_DICT };
enum {
    M_STRIP = 1, M_LSTRIP, M_RSTRIP, M_UPPER, M_LOWER, M_STARTSWITH, M_ENDSWITH, M_SPLIT, M_REPLACE,
    M_GET, M_ITEMS, M_KEYS, M_VALUES
};
enum { CTL_NONE = 0, CTL_BREAK, CTL_CONTINUE };

#define MAX_OUTPUT ((size_t)64 << 20)
#define MAX_RANGE 1000000
#define MAX_MEMORY ((size_t)256 << 20)

typedef struct frame frame;
struct frame {
    jdict *vars;
    frame *parent;
};

typedef struct {
    const gq_jinja *t;
    jarena *a;
    jdict *globals;
    frame *top;
    jbuf out;
    int ctl;
} jctx;

static int eerr(jctx *c, const jnode *n, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int eerr(jctx *c, const jnode *n, int code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return gq_err(code, "%s:%d:%d: %s", c->t->name, n ? n->line : 0, n ? n->col : 0, msg);
}

static int eval(jctx *c, const jnode *n, jv *out);
static int render_body(jctx *c, jnode *const *body, int n);

static jv undef_named(const char *name, size_t n) {
    jv v = jv_undef();
    v.u.str.s = name;
    v.u.str.n = n;
    return v;
}

static int undefined_err(jctx *c, const jnode *n, jv v) {
    if (v.u.str.s) return eerr(c, n, GQ_ERR_DATA, "'%.*s' is undefined", (int)v.u.str.n, v.u.str.s);
    return eerr(c, n, GQ_ERR_DATA, "an undefined value was used");
}

static jv str_of(jctx *c, jv v) {
    if (v.type == JV_STR) return v;
    jbuf b = {0};
    jv_to_str(&b, v);
    jv r = jv_str(jarena_strndup(c->a, b.p ? b.p : "", b.n), b.n);
    free(b.p);
    return r;
}

static jv mk_list(jlist *l) {
    jv v = {.type = JV_LIST};
    v.u.list = l;
    return v;
}
static jv mk_dict(jdict *d) {
    jv v = {.type = JV_DICT};
    v.u.dict = d;
    return v;
}

/* ---- strings by code point --------------------------------------------------------- */

/* Byte offsets of the code points of s (count+1 entries). */
static size_t *cp_offsets(jctx *c, const char *s, size_t n, size_t *count) {
    size_t k = jv_utf8_len(s, n), j = 0;
    size_t *off = jarena_alloc(c->a, (k + 1) * sizeof *off);
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) off[j++] = i;
    off[k] = n;
    *count = k;
    return off;
}

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }

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
        size_t *off = cp_offsets(c, p, s.u.str.n, &k);
        for (size_t i = 0; i <= k && b.n <= MAX_OUTPUT; i++) {
            if (count < 0 || done < count) {
                jbuf_put(&b, to.u.str.s, to.u.str.n);
                done++;
            }
            if (i < k) jbuf_put(&b, p + off[i], off[i + 1] - off[i]);
        }
    } else {
        while (p < e && b.n <= MAX_OUTPUT) {
            const char *m = (count < 0 || done < count) ? memmem(p, (size_t)(e - p), from.u.str.s, from.u.str.n) : NULL;
            if (!m) break;
            jbuf_put(&b, p, (size_t)(m - p));
            jbuf_put(&b, to.u.str.s, to.u.str.n);
            p = m + from.u.str.n;
            done++;
        }
        jbuf_put(&b, p, (size_t)(e - p));
    }
    if (b.n > MAX_OUTPUT) {
        free(b.p);
        return eerr(c, n, GQ_ERR_UNSUPPORTED, "replace: result longer than %zu bytes", MAX_OUTPUT);
    }
    *out = jv_str(jarena_strndup(c->a, b.p ? b.p : "", b.n), b.n);
    free(b.p);
    return GQ_OK;
}

/* ---- iteration -------------------------------------------------------------------------- */

static int items_of(jctx *c, const jnode *n, jv v, jlist **out) {
    jlist *l = NULL;
    switch (v.type) {
    case JV_UNDEF: l = jv_list_new(c->a, 0); break;
    case JV_LIST:
        l = jv_list_new(c->a, v.u.list->n);
        for (int i = 0; i < v.u.list->n; i++) jv_list_push(c->a, l, v.u.list->v[i]);
        break;
    case JV_DICT:
        if (v.u.dict->is_namespace) goto bad;
        l = jv_list_new(c->a, v.u.dict->n);
        for (int i = 0; i < v.u.dict->n; i++) jv_list_push(c->a, l, v.u.dict->keys[i]);
        break;
    case JV_STR: {
        size_t k;
        size_t *off = cp_offsets(c, v.u.str.s, v.u.str.n, &k);
        l = jv_list_new(c->a, (int)k);
        for (size_t i = 0; i < k; i++) jv_list_push(c->a, l, jv_str(v.u.str.s + off[i], off[i + 1] - off[i]));
        break;
    }
    default:
    bad:
        return eerr(c, n, GQ_ERR_DATA, "'%s' object is not iterable", jv_type_name(v));
    }
    *out = l;
    return GQ_OK;
}

/* ---- subscripts and attributes ---------------------------------------------------------- */

static int slice_index(int64_t v, int64_t len, int step_neg, int is_start) {
    (void)is_start;
    if (v < 0) {
        v += len;
        if (v < 0) v = step_neg ? -1 : 0;
    } else if (v >= len) {
        v = step_neg ? len - 1 : len;
    }
    return (int)v;
}

static int eval_slice(jctx *c, const jnode *n, jv obj, jv *out) {
    int64_t bounds[3];
    int has[3];
    for (int i = 0; i < 3; i++) {
        has[i] = 0;
        if (!n->args[i]) continue;
        jv v;
        if (eval(c, n->args[i], &v)) return gq_errcode();
        if (v.type == JV_NONE) continue;
        if (v.type != JV_INT && v.type != JV_BOOL)
            return eerr(c, n, GQ_ERR_DATA, "slice indices must be integers or none, got %s", jv_type_name(v));
        bounds[i] = v.u.i;
        has[i] = 1;
    }
    int64_t step = has[2] ? bounds[2] : 1;
    if (step == 0) return eerr(c, n, GQ_ERR_DATA, "slice step cannot be zero");
    size_t k = 0, *off = NULL;
    int64_t len;
    if (obj.type == JV_LIST) {
        len = obj.u.list->n;
    } else if (obj.type == JV_STR) {
        off = cp_offsets(c, obj.u.str.s, obj.u.str.n, &k);
        len = (int64_t)k;
    } else if (obj.type == JV_UNDEF) {
        return undefined_err(c, n, obj);
    } else {
        *out = jv_undef();
        return GQ_OK;
    }
    int neg = step < 0;
    int64_t start = has[0] ? slice_index(bounds[0], len, neg, 1) : (neg ? len - 1 : 0);
    int64_t stop = has[1] ? slice_index(bounds[1], len, neg, 0) : (neg ? -1 : len);
    if (obj.type == JV_LIST) {
        jlist *l = jv_list_new(c->a, 4);
        for (int64_t i = start; neg ? i > stop : i < stop; i += step) jv_list_push(c->a, l, obj.u.list->v[i]);
        *out = mk_list(l);
    } else {
        jbuf b = {0};
        for (int64_t i = start; neg ? i > stop : i < stop; i += step) jbuf_put(&b, obj.u.str.s + off[i], off[i + 1] - off[i]);
        *out = jv_str(jarena_strndup(c->a, b.p ? b.p : "", b.n), b.n);
        free(b.p);
    }
    return GQ_OK;
}

static int get_item(jctx *c, const jnode *n, jv obj, jv key, jv *out) {
    *out = jv_undef();
    if (obj.type == JV_UNDEF) return undefined_err(c, n, obj);
    if (obj.type == JV_DICT) {
        int i = -1;
        for (int k = 0; k < obj.u.dict->n; k++)
            if (jv_equal(obj.u.dict->keys[k], key)) {
                i = k;
                break;
            }
        if (i >= 0) *out = obj.u.dict->vals[i];
        return GQ_OK;
    }
    if ((obj.type == JV_LIST || obj.type == JV_STR) && (key.type == JV_INT || key.type == JV_BOOL)) {
        int64_t i = key.u.i;
        if (obj.type == JV_LIST) {
            if (i < 0) i += obj.u.list->n;
            if (i >= 0 && i < obj.u.list->n) *out = obj.u.list->v[i];
        } else {
            size_t k, *off = cp_offsets(c, obj.u.str.s, obj.u.str.n, &k);
            if (i < 0) i += (int64_t)k;
            if (i >= 0 && i < (int64_t)k) *out = jv_str(obj.u.str.s + off[i], off[i + 1] - off[i]);
        }
    }
    return GQ_OK;
}

static const struct {
    const char *name;
    int id;
    int on_dict; /* 0: str method, 1: dict method */
} methods[] = {
    {"strip", M_STRIP, 0},   {"lstrip", M_LSTRIP, 0},         {"rstrip", M_RSTRIP, 0},     {"upper", M_UPPER, 0},
    {"lower", M_LOWER, 0},   {"startswith", M_STARTSWITH, 0}, {"endswith", M_ENDSWITH, 0}, {"split", M_SPLIT, 0},
    {"replace", M_REPLACE, 0}, {"get", M_GET, 1},             {"items", M_ITEMS, 1},       {"keys", M_KEYS, 1},
    {"values", M_VALUES, 1},
};
static const char *const py_dict_methods[] = {"pop", "popitem", "update", "copy", "clear", "setdefault", "fromkeys"};
static const char *const py_list_methods[] = {"append", "extend", "insert", "remove", "pop", "clear",
                                              "index", "count", "sort", "reverse", "copy"};

static int name_in(const char *s, size_t n, const char *const *tab, size_t ntab) {
    for (size_t i = 0; i < ntab; i++)
        if (strlen(tab[i]) == n && !memcmp(tab[i], s, n)) return 1;
    return 0;
}

static int get_attr(jctx *c, const jnode *n, jv obj, const char *name, size_t len, jv *out) {
    *out = jv_undef();
    if (obj.type == JV_UNDEF) return undefined_err(c, n, obj);
    if (obj.type == JV_STR || (obj.type == JV_DICT && !obj.u.dict->is_namespace)) {
        int on_dict = obj.type == JV_DICT;
        for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
            if (methods[i].on_dict == on_dict && strlen(methods[i].name) == len && !memcmp(methods[i].name, name, len)) {
                jv m = {.type = JV_METHOD, .aux = methods[i].id};
                m.u.recv = jarena_alloc(c->a, sizeof(jv));
                *m.u.recv = obj;
                *out = m;
                return GQ_OK;
            }
        if (obj.type == JV_STR)
            return eerr(c, n, GQ_ERR_UNSUPPORTED, "string attribute or method '%.*s' is not supported", (int)len, name);
        if (name_in(name, len, py_dict_methods, sizeof py_dict_methods / sizeof *py_dict_methods))
            return eerr(c, n, GQ_ERR_UNSUPPORTED, "dict method '%.*s' is not supported", (int)len, name);
    }
    if (obj.type == JV_LIST && name_in(name, len, py_list_methods, sizeof py_list_methods / sizeof *py_list_methods))
        return eerr(c, n, GQ_ERR_UNSUPPORTED, "list method '%.*s' is not supported", (int)len, name);
    if (obj.type == JV_DICT) {
        int i = jv_dict_find(obj.u.dict, name, len);
        *out = i >= 0 ? obj.u.dict->vals[i] : undef_named(name, len);
    }
    return GQ_OK;
}

/* ---- names and calls ------------------------------------------------------------------------ */

static const struct {
    const char *name;
    int id;
} builtins[] = {{"raise_exception", F_RAISE}, {"namespace", F_NAMESPACE}, {"range", F_RANGE},
                {"strftime_now", F_STRFTIME}, {"dict", F_DICT}};

static jv lookup(jctx *c, const char *name, size_t len) {
    for (frame *f = c->top; f; f = f->parent) {
        int i = jv_dict_find(f->vars, name, len);
        if (i >= 0) return f->vars->vals[i];
    }
    int i = jv_dict_find(c->globals, name, len);
    if (i >= 0) return c->globals->vals[i];
    for (size_t k = 0; k < sizeof builtins / sizeof *builtins; k++)
        if (strlen(builtins[k].name) == len && !memcmp(builtins[k].name, name, len)) {
            jv f = {.type = JV_FUNC, .aux = builtins[k].id};
            return f;
        }
    return undef_named(name, len);
}

typedef struct {
    jv v[8];
    const char *kw[8];
    int n;
} jargs;

static int eval_args(jctx *c, const jnode *n, jargs *a) {
    if (n->nargs > 8) return eerr(c, n, GQ_ERR_UNSUPPORTED, "more than 8 arguments");
    a->n = n->nargs;
    for (int i = 0; i < n->nargs; i++) {
        if (eval(c, n->args[i], &a->v[i])) return gq_errcode();
        a->kw[i] = n->kwnames ? n->kwnames[i] : NULL;
    }
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
        return eerr(c, n, GQ_ERR_DATA, "%s: expected a string, got %s", what, v ? jv_type_name(*v) : "nothing");
    return GQ_OK;
}
static int need_int(jctx *c, const jnode *n, const jv *v, const char *what) {
    if (!v || (v->type != JV_INT && v->type != JV_BOOL))
        return eerr(c, n, GQ_ERR_DATA, "%s: expected an integer, got %s", what, v ? jv_type_name(*v) : "nothing");
    return GQ_OK;
}

static int call_builtin(jctx *c, const jnode *n, int id, const jargs *a, jv *out) {
    *out = jv_none();
    switch (id) {
    case F_RAISE: {
        const jv *m = arg(a, 0, NULL);
        jv s = m ? str_of(c, *m) : jv_cstr("");
        return eerr(c, n, GQ_ERR_DATA, "template raised: %.*s", (int)s.u.str.n, s.u.str.s);
    }
    case F_NAMESPACE:
    case F_DICT: {
        jdict *d = jv_dict_new(c->a, a->n);
        d->is_namespace = id == F_NAMESPACE;
        for (int i = 0; i < a->n; i++) {
            if (a->kw[i]) {
                jv_dict_set(c->a, d, jv_cstr(a->kw[i]), a->v[i]);
            } else if (a->v[i].type == JV_DICT) {
                for (int k = 0; k < a->v[i].u.dict->n; k++) jv_dict_set(c->a, d, a->v[i].u.dict->keys[k], a->v[i].u.dict->vals[k]);
            } else {
                return eerr(c, n, GQ_ERR_DATA, "%s(): positional arguments must be dicts", id == F_DICT ? "dict" : "namespace");
            }
        }
        *out = mk_dict(d);
        return GQ_OK;
    }
    case F_RANGE: {
        int64_t b[3] = {0, 0, 1};
        if (a->n < 1 || a->n > 3) return eerr(c, n, GQ_ERR_DATA, "range() takes 1 to 3 arguments, got %d", a->n);
        for (int i = 0; i < a->n; i++)
            if (need_int(c, n, &a->v[i], "range()")) return gq_errcode();
        if (a->n == 1) {
            b[1] = a->v[0].u.i;
        } else {
            b[0] = a->v[0].u.i;
            b[1] = a->v[1].u.i;
            if (a->n == 3) b[2] = a->v[2].u.i;
        }
        if (!b[2]) return eerr(c, n, GQ_ERR_DATA, "range() step must not be zero");
        jlist *l = jv_list_new(c->a, 4);
        for (int64_t i = b[0]; b[2] > 0 ? i < b[1] : i > b[1]; i += b[2]) {
            if (l->n >= MAX_RANGE) return eerr(c, n, GQ_ERR_UNSUPPORTED, "range() longer than %d", MAX_RANGE);
            jv_list_push(c->a, l, jv_int(i));
        }
        *out = mk_list(l);
        return GQ_OK;
    }
    case F_STRFTIME: {
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
    return eerr(c, n, GQ_ERR_DATA, "not callable");
}

static int call_method(jctx *c, const jnode *n, int id, jv recv, const jargs *a, jv *out) {
    const jv *a0 = arg(a, 0, NULL), *a1 = arg(a, 1, NULL);
    switch (id) {
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP:
        if (a0 && a0->type != JV_NONE && need_str(c, n, a0, "strip()")) return gq_errcode();
        *out = strip(recv, a0 && a0->type == JV_STR ? a0 : NULL, id == M_STRIP ? 3 : id == M_LSTRIP ? 1 : 2);
        return GQ_OK;
    case M_UPPER: *out = case_map(c, recv, 1); return GQ_OK;
    case M_LOWER: *out = case_map(c, recv, 2); return GQ_OK;
    case M_STARTSWITH:
    case M_ENDSWITH: {
        if (need_str(c, n, a0, id == M_STARTSWITH ? "startswith()" : "endswith()")) return gq_errcode();
        size_t k = a0->u.str.n, m = recv.u.str.n;
        const char *p = recv.u.str.s + (id == M_STARTSWITH ? 0 : m - k);
        *out = jv_bool(k <= m && !memcmp(p, a0->u.str.s, k));
        return GQ_OK;
    }
    case M_SPLIT: {
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
            if (!a0->u.str.n) return eerr(c, n, GQ_ERR_DATA, "split(): empty separator");
            for (;;) {
                const char *m = memmem(p, (size_t)(e - p), a0->u.str.s, a0->u.str.n);
                if (!m) break;
                jv_list_push(c->a, l, jv_str(p, (size_t)(m - p)));
                p = m + a0->u.str.n;
            }
            jv_list_push(c->a, l, jv_str(p, (size_t)(e - p)));
        }
        *out = mk_list(l);
        return GQ_OK;
    }
    case M_REPLACE: {
        const jv *a2 = arg(a, 2, NULL);
        if (need_str(c, n, a0, "replace()") || need_str(c, n, a1, "replace()")) return gq_errcode();
        if (a2 && need_int(c, n, a2, "replace() count")) return gq_errcode();
        return str_replace(c, n, recv, *a0, *a1, a2 ? a2->u.i : -1, out);
    }
    case M_GET: {
        if (!a0) return eerr(c, n, GQ_ERR_DATA, "get() needs a key");
        if (get_item(c, n, recv, *a0, out)) return gq_errcode();
        if (out->type == JV_UNDEF) *out = a1 ? *a1 : jv_none();
        return GQ_OK;
    }
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        jdict *d = recv.u.dict;
        jlist *l = jv_list_new(c->a, d->n);
        for (int i = 0; i < d->n; i++) {
            if (id == M_ITEMS) {
                jlist *pair = jv_list_new(c->a, 2);
                jv_list_push(c->a, pair, d->keys[i]);
                jv_list_push(c->a, pair, d->vals[i]);
                jv_list_push(c->a, l, mk_list(pair));
            } else {
                jv_list_push(c->a, l, id == M_KEYS ? d->keys[i] : d->vals[i]);
            }
        }
        *out = mk_list(l);
        return GQ_OK;
    }
    }
    return eerr(c, n, GQ_ERR_DATA, "unknown method");
}

/* ---- filters and tests ------------------------------------------------------------------------- */

static int length_of(jctx *c, const jnode *n, jv v, int64_t *len) {
    switch (v.type) {
    case JV_UNDEF: *len = 0; return GQ_OK;
    case JV_STR: *len = (int64_t)jv_utf8_len(v.u.str.s, v.u.str.n); return GQ_OK;
    case JV_LIST: *len = v.u.list->n; return GQ_OK;
    case JV_DICT:
        if (!v.u.dict->is_namespace) {
            *len = v.u.dict->n;
            return GQ_OK;
        }
        /* fall through */
    default: return eerr(c, n, GQ_ERR_DATA, "object of type '%s' has no length", jv_type_name(v));
    }
}

static int fname_is(const jnode *n, const char *s) { return strlen(s) == n->len && !memcmp(n->str, s, n->len); }

static int apply_filter(jctx *c, const jnode *n, jv v, const jargs *a, jv *out) {
    const jv *a0 = arg(a, 0, NULL);
    if (fname_is(n, "trim")) {
        const jv *chars = arg(a, 0, "chars");
        if (chars && chars->type != JV_NONE && need_str(c, n, chars, "trim")) return gq_errcode();
        *out = strip(str_of(c, v), chars && chars->type == JV_STR ? chars : NULL, 3);
    } else if (fname_is(n, "length") || fname_is(n, "count")) {
        int64_t len = 0;
        if (length_of(c, n, v, &len)) return gq_errcode();
        *out = jv_int(len);
    } else if (fname_is(n, "upper") || fname_is(n, "lower") || fname_is(n, "capitalize")) {
        *out = case_map(c, str_of(c, v), fname_is(n, "upper") ? 1 : fname_is(n, "lower") ? 2 : 3);
    } else if (fname_is(n, "tojson")) {
        const jv *ind = arg(a, 0, "indent");
        if (ind && ind->type != JV_NONE && need_int(c, n, ind, "tojson indent")) return gq_errcode();
        jbuf b = {0};
        if (jv_tojson(&b, v, ind && ind->type != JV_NONE ? (int)ind->u.i : -1, 0)) {
            free(b.p);
            return eerr(c, n, GQ_ERR_DATA, "tojson: a %s value is not JSON serializable", jv_type_name(v));
        }
        *out = jv_str(jarena_strndup(c->a, b.p, b.n), b.n);
        free(b.p);
    } else if (fname_is(n, "string")) {
        *out = str_of(c, v);
    } else if (fname_is(n, "first") || fname_is(n, "last")) {
        jlist *l;
        if (items_of(c, n, v, &l)) return gq_errcode();
        *out = l->n ? l->v[fname_is(n, "first") ? 0 : l->n - 1] : jv_undef();
    } else if (fname_is(n, "join")) {
        jlist *l;
        jv sep = a0 ? str_of(c, *a0) : jv_cstr("");
        if (items_of(c, n, v, &l)) return gq_errcode();
        jbuf b = {0};
        for (int i = 0; i < l->n; i++) {
            if (i) jbuf_put(&b, sep.u.str.s, sep.u.str.n);
            jv_to_str(&b, l->v[i]);
            if (b.n > MAX_OUTPUT) {
                free(b.p);
                return eerr(c, n, GQ_ERR_UNSUPPORTED, "join: result longer than %zu bytes", MAX_OUTPUT);
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
        if (items_of(c, n, v, &l)) return gq_errcode();
        *out = mk_list(l);
    } else if (fname_is(n, "items")) {
        if (v.type == JV_UNDEF) {
            *out = mk_list(jv_list_new(c->a, 0));
            return GQ_OK;
        }
        if (v.type != JV_DICT) return eerr(c, n, GQ_ERR_DATA, "items: expected a dict, got %s", jv_type_name(v));
        jargs none = {.n = 0};
        return call_method(c, n, M_ITEMS, v, &none, out);
    } else if (fname_is(n, "reverse")) {
        if (v.type == JV_STR) {
            size_t k, *off = cp_offsets(c, v.u.str.s, v.u.str.n, &k);
            jbuf b = {0};
            for (size_t i = k; i-- > 0;) jbuf_put(&b, v.u.str.s + off[i], off[i + 1] - off[i]);
            *out = jv_str(jarena_strndup(c->a, b.p ? b.p : "", b.n), b.n);
            free(b.p);
        } else {
            jlist *l, *r;
            if (items_of(c, n, v, &l)) return gq_errcode();
            r = jv_list_new(c->a, l->n);
            for (int i = l->n; i-- > 0;) jv_list_push(c->a, r, l->v[i]);
            *out = mk_list(r);
        }
    } else if (fname_is(n, "replace")) {
        const jv *a1 = arg(a, 1, NULL), *a2 = arg(a, 2, "count");
        if (need_str(c, n, a0, "replace") || need_str(c, n, a1, "replace")) return gq_errcode();
        if (a2 && a2->type != JV_NONE && need_int(c, n, a2, "replace count")) return gq_errcode();
        return str_replace(c, n, str_of(c, v), *a0, *a1, a2 && a2->type != JV_NONE ? a2->u.i : -1, out);
    } else {
        return eerr(c, n, GQ_ERR_UNSUPPORTED, "filter '%.*s' is not supported by gq's Jinja subset", (int)n->len, n->str);
    }
    return GQ_OK;
}

static int apply_test(jctx *c, const jnode *n, jv v, const jargs *a, int *res) {
    const jv *a0 = arg(a, 0, NULL);
    int num = v.type == JV_INT || v.type == JV_BOOL;
    if (fname_is(n, "defined")) *res = v.type != JV_UNDEF;
    else if (fname_is(n, "undefined")) *res = v.type == JV_UNDEF;
    else if (fname_is(n, "none")) *res = v.type == JV_NONE;
    else if (fname_is(n, "string")) *res = v.type == JV_STR;
    else if (fname_is(n, "number")) *res = num;
    else if (fname_is(n, "integer")) *res = v.type == JV_INT;
    else if (fname_is(n, "boolean")) *res = v.type == JV_BOOL;
    else if (fname_is(n, "true")) *res = v.type == JV_BOOL && v.u.i;
    else if (fname_is(n, "false")) *res = v.type == JV_BOOL && !v.u.i;
    else if (fname_is(n, "mapping")) *res = v.type == JV_DICT && !v.u.dict->is_namespace;
    else if (fname_is(n, "iterable")) *res = v.type == JV_UNDEF || v.type == JV_STR || v.type == JV_LIST || (v.type == JV_DICT && !v.u.dict->is_namespace);
    else if (fname_is(n, "sequence")) *res = v.type == JV_STR || v.type == JV_LIST || (v.type == JV_DICT && !v.u.dict->is_namespace);
    else if (fname_is(n, "even") || fname_is(n, "odd") || fname_is(n, "divisibleby")) {
        if (!num) return eerr(c, n, GQ_ERR_DATA, "test '%.*s' needs a number, got %s", (int)n->len, n->str, jv_type_name(v));
        int64_t d = 2;
        if (fname_is(n, "divisibleby")) {
            if (need_int(c, n, a0, "divisibleby")) return gq_errcode();
            if (!a0->u.i) return eerr(c, n, GQ_ERR_DATA, "divisibleby 0");
            d = a0->u.i;
        }
        int64_t r = v.u.i % d;
        *res = fname_is(n, "odd") ? r != 0 : r == 0;
    } else if (fname_is(n, "sameas")) {
        if (!a0) return eerr(c, n, GQ_ERR_DATA, "sameas needs an argument");
        jv b = *a0;
        if (v.type != b.type) *res = 0;
        else if (v.type == JV_STR) *res = v.u.str.s == b.u.str.s && v.u.str.n == b.u.str.n;
        else if (v.type == JV_LIST) *res = v.u.list == b.u.list;
        else if (v.type == JV_DICT) *res = v.u.dict == b.u.dict;
        else *res = jv_equal(v, b);
    } else if (fname_is(n, "eq") || fname_is(n, "equalto") || fname_is(n, "ne")) {
        if (!a0) return eerr(c, n, GQ_ERR_DATA, "test '%.*s' needs an argument", (int)n->len, n->str);
        *res = jv_equal(v, *a0) != fname_is(n, "ne");
    } else {
        return eerr(c, n, GQ_ERR_UNSUPPORTED, "test '%.*s' is not supported by gq's Jinja subset", (int)n->len, n->str);
    }
    return GQ_OK;
}

/* ---- operators ----------------------------------------------------------------------------------- */

static int binop(jctx *c, const jnode *n, int op, jv l, jv r, jv *out) {
    if (op == JOP_CONCAT) {
        jv a = str_of(c, l), b = str_of(c, r);
        if (a.u.str.n + b.u.str.n > MAX_OUTPUT)
            return eerr(c, n, GQ_ERR_UNSUPPORTED, "string longer than %zu bytes", MAX_OUTPUT);
        char *s = jarena_alloc(c->a, a.u.str.n + b.u.str.n + 1);
        memcpy(s, a.u.str.s, a.u.str.n);
        memcpy(s + a.u.str.n, b.u.str.s, b.u.str.n);
        *out = jv_str(s, a.u.str.n + b.u.str.n);
        return GQ_OK;
    }
    if (l.type == JV_UNDEF) return undefined_err(c, n, l);
    if (r.type == JV_UNDEF) return undefined_err(c, n, r);
    int ln = l.type == JV_INT || l.type == JV_BOOL, rn = r.type == JV_INT || r.type == JV_BOOL;
    static const char *const opname[] = {"", "+", "-", "*", "//", "%", "**"};
    if (ln && rn) {
        int64_t a = l.u.i, b = r.u.i, v = 0;
        int ovf = 0;
        switch (op) {
        case JOP_ADD: ovf = __builtin_add_overflow(a, b, &v); break;
        case JOP_SUB: ovf = __builtin_sub_overflow(a, b, &v); break;
        case JOP_MUL: ovf = __builtin_mul_overflow(a, b, &v); break;
        case JOP_FLOORDIV:
        case JOP_MOD:
            if (!b) return eerr(c, n, GQ_ERR_DATA, "integer division or modulo by zero");
            if (a == INT64_MIN && b == -1) {
                ovf = 1;
                break;
            }
            v = op == JOP_MOD ? a % b : a / b;
            if (op == JOP_MOD && v && ((v < 0) != (b < 0))) v += b;
            if (op == JOP_FLOORDIV && (a % b) && ((a < 0) != (b < 0))) v--;
            break;
        case JOP_POW:
            if (b < 0) return eerr(c, n, GQ_ERR_UNSUPPORTED, "negative exponents (floats) are not supported");
            v = 1;
            for (int64_t i = 0; i < b && !ovf; i++) ovf = __builtin_mul_overflow(v, a, &v);
            break;
        }
        if (ovf) return eerr(c, n, GQ_ERR_UNSUPPORTED, "integer overflow in '%s'", opname[op]);
        *out = jv_int(v);
        return GQ_OK;
    }
    if (op == JOP_ADD && l.type == JV_STR && r.type == JV_STR) return binop(c, n, JOP_CONCAT, l, r, out);
    if (op == JOP_ADD && l.type == JV_LIST && r.type == JV_LIST) {
        if (l.u.list->n + r.u.list->n > MAX_RANGE)
            return eerr(c, n, GQ_ERR_UNSUPPORTED, "list longer than %d items", MAX_RANGE);
        jlist *x = jv_list_new(c->a, l.u.list->n + r.u.list->n);
        for (int i = 0; i < l.u.list->n; i++) jv_list_push(c->a, x, l.u.list->v[i]);
        for (int i = 0; i < r.u.list->n; i++) jv_list_push(c->a, x, r.u.list->v[i]);
        *out = mk_list(x);
        return GQ_OK;
    }
    if (op == JOP_MUL && ((l.type == JV_STR && rn) || (ln && r.type == JV_STR))) {
        jv s = l.type == JV_STR ? l : r;
        int64_t k = l.type == JV_STR ? r.u.i : l.u.i;
        if (k < 0) k = 0;
        if (s.u.str.n && (uint64_t)k > MAX_OUTPUT / s.u.str.n) return eerr(c, n, GQ_ERR_UNSUPPORTED, "string repetition too large");
        char *o = jarena_alloc(c->a, s.u.str.n * (size_t)k + 1);
        for (int64_t i = 0; i < k; i++) memcpy(o + (size_t)i * s.u.str.n, s.u.str.s, s.u.str.n);
        *out = jv_str(o, s.u.str.n * (size_t)k);
        return GQ_OK;
    }
    if (op == JOP_MOD && l.type == JV_STR)
        return eerr(c, n, GQ_ERR_UNSUPPORTED, "printf-style string formatting with '%%' is not supported");
    return eerr(c, n, GQ_ERR_DATA, "unsupported operand types for %s: '%s' and '%s'", opname[op], jv_type_name(l), jv_type_name(r));
}

static int compare(jctx *c, const jnode *n, int op, jv l, jv r, int *res) {
    if (op == JOP_EQ || op == JOP_NE) {
        *res = jv_equal(l, r) == (op == JOP_EQ);
        return GQ_OK;
    }
    if (op == JOP_IN || op == JOP_NOTIN) {
        int found = 0;
        if (r.type == JV_STR) {
            if (l.type != JV_STR)
                return eerr(c, n, GQ_ERR_DATA, "'in <string>' requires a string as left operand, not %s", jv_type_name(l));
            found = l.u.str.n == 0 || memmem(r.u.str.s, r.u.str.n, l.u.str.s, l.u.str.n) != NULL;
        } else if (r.type == JV_LIST) {
            for (int i = 0; i < r.u.list->n && !found; i++) found = jv_equal(l, r.u.list->v[i]);
        } else if (r.type == JV_DICT && !r.u.dict->is_namespace) {
            for (int i = 0; i < r.u.dict->n && !found; i++) found = jv_equal(l, r.u.dict->keys[i]);
        } else if (r.type != JV_UNDEF) {
            return eerr(c, n, GQ_ERR_DATA, "argument of type '%s' is not iterable", jv_type_name(r));
        }
        *res = found == (op == JOP_IN);
        return GQ_OK;
    }
    int cmp;
    int ln = l.type == JV_INT || l.type == JV_BOOL, rn = r.type == JV_INT || r.type == JV_BOOL;
    if (ln && rn) {
        cmp = l.u.i < r.u.i ? -1 : l.u.i > r.u.i;
    } else if (l.type == JV_STR && r.type == JV_STR) {
        size_t m = l.u.str.n < r.u.str.n ? l.u.str.n : r.u.str.n;
        cmp = memcmp(l.u.str.s, r.u.str.s, m);
        if (!cmp) cmp = l.u.str.n < r.u.str.n ? -1 : l.u.str.n > r.u.str.n;
    } else {
        if (l.type == JV_UNDEF) return undefined_err(c, n, l);
        if (r.type == JV_UNDEF) return undefined_err(c, n, r);
        return eerr(c, n, GQ_ERR_DATA, "cannot order '%s' and '%s'", jv_type_name(l), jv_type_name(r));
    }
    *res = op == JOP_LT ? cmp < 0 : op == JOP_LE ? cmp <= 0 : op == JOP_GT ? cmp > 0 : cmp >= 0;
    return GQ_OK;
}

/* ---- expressions ----------------------------------------------------------------------------------- */

static int eval(jctx *c, const jnode *n, jv *out) {
    jv l, r;
    switch (n->kind) {
    case JN_CONST: *out = n->val; return GQ_OK;
    case JN_NAME: *out = lookup(c, n->str, n->len); return GQ_OK;
    case JN_ATTR:
        if (eval(c, n->a, &l)) return gq_errcode();
        return get_attr(c, n, l, n->str, n->len, out);
    case JN_ITEM:
        if (eval(c, n->a, &l) || eval(c, n->b, &r) || get_item(c, n, l, r, out)) return gq_errcode();
        if (out->type == JV_UNDEF && r.type == JV_STR) *out = undef_named(r.u.str.s, r.u.str.n);
        return GQ_OK;
    case JN_SLICE:
        if (eval(c, n->a, &l)) return gq_errcode();
        return eval_slice(c, n, l, out);
    case JN_CALL: {
        jargs a;
        if (eval(c, n->a, &l) || eval_args(c, n, &a)) return gq_errcode();
        if (l.type == JV_FUNC) return call_builtin(c, n, l.aux, &a, out);
        if (l.type == JV_METHOD) return call_method(c, n, l.aux, *l.u.recv, &a, out);
        if (l.type == JV_UNDEF) return undefined_err(c, n, l);
        return eerr(c, n, GQ_ERR_DATA, "'%s' object is not callable", jv_type_name(l));
    }
    case JN_FILTER: {
        jargs a;
        if (eval(c, n->a, &l) || eval_args(c, n, &a)) return gq_errcode();
        return apply_filter(c, n, l, &a, out);
    }
    case JN_TEST: {
        jargs a;
        int res = 0;
        if (eval(c, n->a, &l) || eval_args(c, n, &a) || apply_test(c, n, l, &a, &res)) return gq_errcode();
        *out = jv_bool(res != n->op);
        return GQ_OK;
    }
    case JN_NOT:
        if (eval(c, n->a, &l)) return gq_errcode();
        *out = jv_bool(!jv_truthy(l));
        return GQ_OK;
    case JN_NEG:
    case JN_POS:
        if (eval(c, n->a, &l)) return gq_errcode();
        if (l.type != JV_INT && l.type != JV_BOOL)
            return l.type == JV_UNDEF ? undefined_err(c, n, l)
                                      : eerr(c, n, GQ_ERR_DATA, "bad operand type for unary %s: '%s'",
                                             n->kind == JN_NEG ? "-" : "+", jv_type_name(l));
        if (n->kind == JN_NEG && l.u.i == INT64_MIN) return eerr(c, n, GQ_ERR_UNSUPPORTED, "integer overflow");
        *out = jv_int(n->kind == JN_NEG ? -l.u.i : l.u.i);
        return GQ_OK;
    case JN_BINOP:
        if (eval(c, n->a, &l) || eval(c, n->b, &r)) return gq_errcode();
        return binop(c, n, n->op, l, r, out);
    case JN_AND:
    case JN_OR:
        if (eval(c, n->a, &l)) return gq_errcode();
        if (jv_truthy(l) == (n->kind == JN_OR)) {
            *out = l;
            return GQ_OK;
        }
        return eval(c, n->b, out);
    case JN_COMPARE: {
        if (eval(c, n->a, &l)) return gq_errcode();
        for (int i = 0; i < n->nargs; i++) {
            int res = 0;
            if (eval(c, n->args[i], &r) || compare(c, n, n->ops[i], l, r, &res)) return gq_errcode();
            if (!res) {
                *out = jv_bool(0);
                return GQ_OK;
            }
            l = r;
        }
        *out = jv_bool(1);
        return GQ_OK;
    }
    case JN_COND:
        if (eval(c, n->a, &l)) return gq_errcode();
        if (jv_truthy(l)) return eval(c, n->b, out);
        if (n->c) return eval(c, n->c, out);
        *out = jv_undef();
        return GQ_OK;
    case JN_LIST: {
        jlist *x = jv_list_new(c->a, n->nargs);
        for (int i = 0; i < n->nargs; i++) {
            if (eval(c, n->args[i], &l)) return gq_errcode();
            jv_list_push(c->a, x, l);
        }
        *out = mk_list(x);
        return GQ_OK;
    }
    case JN_DICT: {
        jdict *d = jv_dict_new(c->a, n->nargs);
        for (int i = 0; i < n->nargs; i++) {
            if (eval(c, n->args[i], &l) || eval(c, n->args2[i], &r)) return gq_errcode();
            if (l.type != JV_STR && l.type != JV_INT && l.type != JV_BOOL && l.type != JV_NONE)
                return eerr(c, n, GQ_ERR_DATA, "unhashable dict key of type '%s'", jv_type_name(l));
            jv_dict_set(c->a, d, l, r);
        }
        *out = mk_dict(d);
        return GQ_OK;
    }
    default: return eerr(c, n, GQ_ERR_FORMAT, "statement used as an expression");
    }
}

/* ---- statements ------------------------------------------------------------------------------------- */

static void set_var(jctx *c, const char *name, jv v) { jv_dict_set(c->a, c->top->vars, jv_cstr(name), v); }

static int render_for(jctx *c, const jnode *n) {
    jv it;
    jlist *items;
    if (eval(c, n->a, &it) || items_of(c, n->a, it, &items)) return gq_errcode();
    frame *outer = c->top;
    /* bind targets for one item into the current top frame */
#define BIND(item)                                                                                             \
    do {                                                                                                       \
        if (n->ntargets == 1) {                                                                                \
            set_var(c, n->targets[0], (item));                                                                 \
        } else {                                                                                               \
            jlist *pl;                                                                                         \
            if (items_of(c, n, (item), &pl)) return gq_errcode();                                              \
            if (pl->n != 2) return eerr(c, n, GQ_ERR_DATA, "cannot unpack %d values into 2 loop variables", pl->n); \
            set_var(c, n->targets[0], pl->v[0]);                                                               \
            set_var(c, n->targets[1], pl->v[1]);                                                               \
        }                                                                                                      \
    } while (0)
    if (n->b) { /* {% for x in seq if cond %}: filter first, loop.length counts the kept items */
        jlist *kept = jv_list_new(c->a, items->n);
        for (int i = 0; i < items->n; i++) {
            frame f = {jv_dict_new(c->a, 4), outer};
            c->top = &f;
            jv cond;
            BIND(items->v[i]);
            int rc = eval(c, n->b, &cond);
            c->top = outer;
            if (rc) return rc;
            if (jv_truthy(cond)) jv_list_push(c->a, kept, items->v[i]);
        }
        items = kept;
    }
    if (!items->n) return render_body(c, n->orelse, n->norelse);
    int len = items->n;
    for (int i = 0; i < len; i++) {
        frame f = {jv_dict_new(c->a, 4), outer};
        c->top = &f;
        jdict *loop = jv_dict_new(c->a, 10);
        jv_dict_set(c->a, loop, jv_cstr("index"), jv_int(i + 1));
        jv_dict_set(c->a, loop, jv_cstr("index0"), jv_int(i));
        jv_dict_set(c->a, loop, jv_cstr("revindex"), jv_int(len - i));
        jv_dict_set(c->a, loop, jv_cstr("revindex0"), jv_int(len - i - 1));
        jv_dict_set(c->a, loop, jv_cstr("first"), jv_bool(i == 0));
        jv_dict_set(c->a, loop, jv_cstr("last"), jv_bool(i == len - 1));
        jv_dict_set(c->a, loop, jv_cstr("length"), jv_int(len));
        if (i > 0) jv_dict_set(c->a, loop, jv_cstr("previtem"), items->v[i - 1]);
        if (i + 1 < len) jv_dict_set(c->a, loop, jv_cstr("nextitem"), items->v[i + 1]);
        set_var(c, "loop", mk_dict(loop));
        BIND(items->v[i]);
        int rc = render_body(c, n->body, n->nbody);
        c->top = outer;
        if (rc) return rc;
        if (c->a->total > MAX_MEMORY)
            return eerr(c, n, GQ_ERR_UNSUPPORTED, "rendering used more than %zu MiB", MAX_MEMORY >> 20);
        int ctl = c->ctl;
        c->ctl = CTL_NONE;
        if (ctl == CTL_BREAK) break;
    }
#undef BIND
    return GQ_OK;
}

static int render_body(jctx *c, jnode *const *body, int nbody) {
    for (int i = 0; i < nbody && c->ctl == CTL_NONE; i++) {
        const jnode *n = body[i];
        jv v;
        switch (n->kind) {
        case JN_TEXT: jbuf_put(&c->out, n->str, n->len); break;
        case JN_OUTPUT:
            if (eval(c, n->a, &v)) return gq_errcode();
            jv_to_str(&c->out, v);
            break;
        case JN_IF:
            if (eval(c, n->a, &v)) return gq_errcode();
            if (jv_truthy(v) ? render_body(c, n->body, n->nbody) : render_body(c, n->orelse, n->norelse))
                return gq_errcode();
            break;
        case JN_FOR:
            if (render_for(c, n)) return gq_errcode();
            break;
        case JN_SET:
            if (eval(c, n->a, &v)) return gq_errcode();
            if (n->attr) {
                jv ns = lookup(c, n->str, strlen(n->str));
                if (ns.type != JV_DICT || !ns.u.dict->is_namespace)
                    return eerr(c, n, GQ_ERR_DATA, "cannot assign attribute '%s' on '%s' (a %s, not a namespace)", n->attr,
                                n->str, jv_type_name(ns));
                jv_dict_set(c->a, ns.u.dict, jv_cstr(n->attr), v);
            } else {
                set_var(c, n->str, v);
            }
            break;
        case JN_BREAK: c->ctl = CTL_BREAK; break;
        case JN_CONTINUE: c->ctl = CTL_CONTINUE; break;
        case JN_BLOCK:
            if (render_body(c, n->body, n->nbody)) return gq_errcode();
            break;
        default: return eerr(c, n, GQ_ERR_FORMAT, "expression used as a statement");
        }
        if (c->out.n > MAX_OUTPUT) return eerr(c, n, GQ_ERR_UNSUPPORTED, "rendered text exceeds %zu bytes", MAX_OUTPUT);
        if (c->a->total > MAX_MEMORY)
            return eerr(c, n, GQ_ERR_UNSUPPORTED, "rendering used more than %zu MiB", MAX_MEMORY >> 20);
    }
    return GQ_OK;
}

int jinja_eval_render(const gq_jinja *t, jarena *ra, jdict *globals, char **out, size_t *out_len) {
    frame root = {jv_dict_new(ra, 8), NULL};
    jctx c = {.t = t, .a = ra, .globals = globals, .top = &root};
    jbuf_put(&c.out, "", 0);
    int rc = render_body(&c, t->body, t->nbody);
    if (rc) {
        free(c.out.p);
        *out = NULL;
        return rc;
    }
    *out = c.out.p;
    if (out_len) *out_len = c.out.n;
    return GQ_OK;
}
