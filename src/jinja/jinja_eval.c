/* jinja_eval.c -- evaluation of a parsed Jinja template (see gq/jinja.h):
 * scopes, names, attributes, subscripts, operators, expressions and
 * statements. Filters, tests, builtins and methods are in jinja_builtins.c.
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

enum { CTL_NONE = 0, CTL_BREAK, CTL_CONTINUE }; /* jctx.ctl */

int jinja_eerr(jctx *c, const jnode *n, int code, const char *fmt, ...) {
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

int jinja_undefined_err(jctx *c, const jnode *n, jv v) {
    if (v.u.str.s) return jinja_eerr(c, n, GQ_ERR_DATA, "'%.*s' is undefined", (int)v.u.str.n, v.u.str.s);
    return jinja_eerr(c, n, GQ_ERR_DATA, "an undefined value was used");
}

jv jinja_str_of(jctx *c, jv v) {
    if (v.type == JV_STR) return v;
    jbuf b = {0};
    jv_to_str(&b, v);
    jv r = jv_str(jarena_strndup(c->a, b.p ? b.p : "", b.n), b.n);
    free(b.p);
    return r;
}

/* ---- iteration -------------------------------------------------------------------------- */

int jinja_items_of(jctx *c, const jnode *n, jv v, jlist **out) {
    jlist *l = NULL;
    switch (v.type) {
    case JV_UNDEF:
        l = jv_list_new(c->a, 0);
        break;
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
        size_t *off = jinja_cp_offsets(c, v.u.str.s, v.u.str.n, &k);
        l = jv_list_new(c->a, (int)k);
        for (size_t i = 0; i < k; i++) jv_list_push(c->a, l, jv_str(v.u.str.s + off[i], off[i + 1] - off[i]));
        break;
    }
    default:
    bad:
        return jinja_eerr(c, n, GQ_ERR_DATA, "'%s' object is not iterable", jv_type_name(v));
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
            return jinja_eerr(c, n, GQ_ERR_DATA, "slice indices must be integers or none, got %s", jv_type_name(v));
        bounds[i] = v.u.i;
        has[i] = 1;
    }
    int64_t step = has[2] ? bounds[2] : 1;
    if (step == 0) return jinja_eerr(c, n, GQ_ERR_DATA, "slice step cannot be zero");
    size_t k = 0, *off = NULL;
    int64_t len;
    if (obj.type == JV_LIST) {
        len = obj.u.list->n;
    } else if (obj.type == JV_STR) {
        off = jinja_cp_offsets(c, obj.u.str.s, obj.u.str.n, &k);
        len = (int64_t)k;
    } else if (obj.type == JV_UNDEF) {
        return jinja_undefined_err(c, n, obj);
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
        *out = jv_of_list(l);
    } else {
        jbuf b = {0};
        for (int64_t i = start; neg ? i > stop : i < stop; i += step)
            jbuf_put(&b, obj.u.str.s + off[i], off[i + 1] - off[i]);
        *out = jv_str(jarena_strndup(c->a, b.p ? b.p : "", b.n), b.n);
        free(b.p);
    }
    return GQ_OK;
}

int jinja_get_item(jctx *c, const jnode *n, jv obj, jv key, jv *out) {
    *out = jv_undef();
    if (obj.type == JV_UNDEF) return jinja_undefined_err(c, n, obj);
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
            size_t k, *off = jinja_cp_offsets(c, obj.u.str.s, obj.u.str.n, &k);
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
    {"strip", JM_STRIP, 0},       {"lstrip", JM_LSTRIP, 0}, {"rstrip", JM_RSTRIP, 0},
    {"upper", JM_UPPER, 0},       {"lower", JM_LOWER, 0},   {"startswith", JM_STARTSWITH, 0},
    {"endswith", JM_ENDSWITH, 0}, {"split", JM_SPLIT, 0},   {"replace", JM_REPLACE, 0},
    {"get", JM_GET, 1},           {"items", JM_ITEMS, 1},   {"keys", JM_KEYS, 1},
    {"values", JM_VALUES, 1},
};
static const char *const py_dict_methods[] = {"pop", "popitem", "update", "copy", "clear", "setdefault", "fromkeys"};
static const char *const py_list_methods[] = {"append", "extend", "insert", "remove",  "pop", "clear",
                                              "index",  "count",  "sort",   "reverse", "copy"};

static int name_in(const char *s, size_t n, const char *const *tab, size_t ntab) {
    for (size_t i = 0; i < ntab; i++)
        if (strlen(tab[i]) == n && !memcmp(tab[i], s, n)) return 1;
    return 0;
}

static int get_attr(jctx *c, const jnode *n, jv obj, const char *name, size_t len, jv *out) {
    *out = jv_undef();
    if (obj.type == JV_UNDEF) return jinja_undefined_err(c, n, obj);
    if (obj.type == JV_STR || (obj.type == JV_DICT && !obj.u.dict->is_namespace)) {
        int on_dict = obj.type == JV_DICT;
        for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
            if (methods[i].on_dict == on_dict && strlen(methods[i].name) == len &&
                !memcmp(methods[i].name, name, len)) {
                jv m = {.type = JV_METHOD, .aux = methods[i].id};
                m.u.recv = jarena_alloc(c->a, sizeof(jv));
                *m.u.recv = obj;
                *out = m;
                return GQ_OK;
            }
        if (obj.type == JV_STR)
            return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "string attribute or method '%.*s' is not supported", (int)len,
                              name);
        if (name_in(name, len, py_dict_methods, sizeof py_dict_methods / sizeof *py_dict_methods))
            return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "dict method '%.*s' is not supported", (int)len, name);
    }
    if (obj.type == JV_LIST && name_in(name, len, py_list_methods, sizeof py_list_methods / sizeof *py_list_methods))
        return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "list method '%.*s' is not supported", (int)len, name);
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
} builtins[] = {{"raise_exception", JF_RAISE},
                {"namespace", JF_NAMESPACE},
                {"range", JF_RANGE},
                {"strftime_now", JF_STRFTIME},
                {"dict", JF_DICT}};

static jv lookup(jctx *c, const char *name, size_t len) {
    for (jframe *f = c->top; f; f = f->parent) {
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

static int eval_args(jctx *c, const jnode *n, jargs *a) {
    if (n->nargs > 8) return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "more than 8 arguments");
    a->n = n->nargs;
    for (int i = 0; i < n->nargs; i++) {
        if (eval(c, n->args[i], &a->v[i])) return gq_errcode();
        a->kw[i] = n->kwnames ? n->kwnames[i] : NULL;
    }
    return GQ_OK;
}

/* ---- operators ----------------------------------------------------------------------------------- */

static int binop(jctx *c, const jnode *n, int op, jv l, jv r, jv *out) {
    if (op == JOP_CONCAT) {
        jv a = jinja_str_of(c, l), b = jinja_str_of(c, r);
        if (a.u.str.n + b.u.str.n > JINJA_MAX_OUTPUT)
            return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "string longer than %zu bytes", JINJA_MAX_OUTPUT);
        char *s = jarena_alloc(c->a, a.u.str.n + b.u.str.n + 1);
        memcpy(s, a.u.str.s, a.u.str.n);
        memcpy(s + a.u.str.n, b.u.str.s, b.u.str.n);
        *out = jv_str(s, a.u.str.n + b.u.str.n);
        return GQ_OK;
    }
    if (l.type == JV_UNDEF) return jinja_undefined_err(c, n, l);
    if (r.type == JV_UNDEF) return jinja_undefined_err(c, n, r);
    int ln = l.type == JV_INT || l.type == JV_BOOL, rn = r.type == JV_INT || r.type == JV_BOOL;
    static const char *const opname[] = {"", "+", "-", "*", "//", "%", "**"};
    if (ln && rn) {
        int64_t a = l.u.i, b = r.u.i, v = 0;
        int ovf = 0;
        switch (op) {
        case JOP_ADD:
            ovf = __builtin_add_overflow(a, b, &v);
            break;
        case JOP_SUB:
            ovf = __builtin_sub_overflow(a, b, &v);
            break;
        case JOP_MUL:
            ovf = __builtin_mul_overflow(a, b, &v);
            break;
        case JOP_FLOORDIV:
        case JOP_MOD:
            if (!b) return jinja_eerr(c, n, GQ_ERR_DATA, "integer division or modulo by zero");
            if (a == INT64_MIN && b == -1) {
                ovf = 1;
                break;
            }
            v = op == JOP_MOD ? a % b : a / b;
            if (op == JOP_MOD && v && ((v < 0) != (b < 0))) v += b;
            if (op == JOP_FLOORDIV && (a % b) && ((a < 0) != (b < 0))) v--;
            break;
        case JOP_POW:
            if (b < 0) return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "negative exponents (floats) are not supported");
            v = 1;
            for (int64_t i = 0; i < b && !ovf; i++) ovf = __builtin_mul_overflow(v, a, &v);
            break;
        }
        if (ovf) return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "integer overflow in '%s'", opname[op]);
        *out = jv_int(v);
        return GQ_OK;
    }
    if (op == JOP_ADD && l.type == JV_STR && r.type == JV_STR) return binop(c, n, JOP_CONCAT, l, r, out);
    if (op == JOP_ADD && l.type == JV_LIST && r.type == JV_LIST) {
        if (l.u.list->n + r.u.list->n > JINJA_MAX_RANGE)
            return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "list longer than %d items", JINJA_MAX_RANGE);
        jlist *x = jv_list_new(c->a, l.u.list->n + r.u.list->n);
        for (int i = 0; i < l.u.list->n; i++) jv_list_push(c->a, x, l.u.list->v[i]);
        for (int i = 0; i < r.u.list->n; i++) jv_list_push(c->a, x, r.u.list->v[i]);
        *out = jv_of_list(x);
        return GQ_OK;
    }
    if (op == JOP_MUL && ((l.type == JV_STR && rn) || (ln && r.type == JV_STR))) {
        jv s = l.type == JV_STR ? l : r;
        int64_t k = l.type == JV_STR ? r.u.i : l.u.i;
        if (k < 0) k = 0;
        if (s.u.str.n && (uint64_t)k > JINJA_MAX_OUTPUT / s.u.str.n)
            return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "string repetition too large");
        char *o = jarena_alloc(c->a, s.u.str.n * (size_t)k + 1);
        for (int64_t i = 0; i < k; i++) memcpy(o + (size_t)i * s.u.str.n, s.u.str.s, s.u.str.n);
        *out = jv_str(o, s.u.str.n * (size_t)k);
        return GQ_OK;
    }
    if (op == JOP_MOD && l.type == JV_STR)
        return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "printf-style string formatting with '%%' is not supported");
    return jinja_eerr(c, n, GQ_ERR_DATA, "unsupported operand types for %s: '%s' and '%s'", opname[op], jv_type_name(l),
                      jv_type_name(r));
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
                return jinja_eerr(c, n, GQ_ERR_DATA, "'in <string>' requires a string as left operand, not %s",
                                  jv_type_name(l));
            found = l.u.str.n == 0 || memmem(r.u.str.s, r.u.str.n, l.u.str.s, l.u.str.n) != NULL;
        } else if (r.type == JV_LIST) {
            for (int i = 0; i < r.u.list->n && !found; i++) found = jv_equal(l, r.u.list->v[i]);
        } else if (r.type == JV_DICT && !r.u.dict->is_namespace) {
            for (int i = 0; i < r.u.dict->n && !found; i++) found = jv_equal(l, r.u.dict->keys[i]);
        } else if (r.type != JV_UNDEF) {
            return jinja_eerr(c, n, GQ_ERR_DATA, "argument of type '%s' is not iterable", jv_type_name(r));
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
        if (l.type == JV_UNDEF) return jinja_undefined_err(c, n, l);
        if (r.type == JV_UNDEF) return jinja_undefined_err(c, n, r);
        return jinja_eerr(c, n, GQ_ERR_DATA, "cannot order '%s' and '%s'", jv_type_name(l), jv_type_name(r));
    }
    *res = op == JOP_LT ? cmp < 0 : op == JOP_LE ? cmp <= 0 : op == JOP_GT ? cmp > 0 : cmp >= 0;
    return GQ_OK;
}

/* ---- expressions ----------------------------------------------------------------------------------- */

static int eval(jctx *c, const jnode *n, jv *out) {
    jv l, r;
    switch (n->kind) {
    case JN_CONST:
        *out = n->val;
        return GQ_OK;
    case JN_NAME:
        *out = lookup(c, n->str, n->len);
        return GQ_OK;
    case JN_ATTR:
        if (eval(c, n->a, &l)) return gq_errcode();
        return get_attr(c, n, l, n->str, n->len, out);
    case JN_ITEM:
        if (eval(c, n->a, &l) || eval(c, n->b, &r) || jinja_get_item(c, n, l, r, out)) return gq_errcode();
        if (out->type == JV_UNDEF && r.type == JV_STR) *out = undef_named(r.u.str.s, r.u.str.n);
        return GQ_OK;
    case JN_SLICE:
        if (eval(c, n->a, &l)) return gq_errcode();
        return eval_slice(c, n, l, out);
    case JN_CALL: {
        jargs a;
        if (eval(c, n->a, &l) || eval_args(c, n, &a)) return gq_errcode();
        if (l.type == JV_FUNC) return jinja_call_builtin(c, n, l.aux, &a, out);
        if (l.type == JV_METHOD) return jinja_call_method(c, n, l.aux, *l.u.recv, &a, out);
        if (l.type == JV_UNDEF) return jinja_undefined_err(c, n, l);
        return jinja_eerr(c, n, GQ_ERR_DATA, "'%s' object is not callable", jv_type_name(l));
    }
    case JN_FILTER: {
        jargs a;
        if (eval(c, n->a, &l) || eval_args(c, n, &a)) return gq_errcode();
        return jinja_filter(c, n, l, &a, out);
    }
    case JN_TEST: {
        jargs a;
        int res = 0;
        if (eval(c, n->a, &l) || eval_args(c, n, &a) || jinja_test(c, n, l, &a, &res)) return gq_errcode();
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
            return l.type == JV_UNDEF ? jinja_undefined_err(c, n, l)
                                      : jinja_eerr(c, n, GQ_ERR_DATA, "bad operand type for unary %s: '%s'",
                                                   n->kind == JN_NEG ? "-" : "+", jv_type_name(l));
        if (n->kind == JN_NEG && l.u.i == INT64_MIN) return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "integer overflow");
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
        *out = jv_of_list(x);
        return GQ_OK;
    }
    case JN_DICT: {
        jdict *d = jv_dict_new(c->a, n->nargs);
        for (int i = 0; i < n->nargs; i++) {
            if (eval(c, n->args[i], &l) || eval(c, n->args2[i], &r)) return gq_errcode();
            if (l.type != JV_STR && l.type != JV_INT && l.type != JV_BOOL && l.type != JV_NONE)
                return jinja_eerr(c, n, GQ_ERR_DATA, "unhashable dict key of type '%s'", jv_type_name(l));
            jv_dict_set(c->a, d, l, r);
        }
        *out = jv_of_dict(d);
        return GQ_OK;
    }
    default:
        return jinja_eerr(c, n, GQ_ERR_FORMAT, "statement used as an expression");
    }
}

/* ---- statements ------------------------------------------------------------------------------------- */

static void set_var(jctx *c, const char *name, jv v) {
    jv_dict_set(c->a, c->top->vars, jv_cstr(name), v);
}

static int render_for(jctx *c, const jnode *n) {
    jv it;
    jlist *items;
    if (eval(c, n->a, &it) || jinja_items_of(c, n->a, it, &items)) return gq_errcode();
    jframe *outer = c->top;
    /* bind targets for one item into the current top jframe */
#define BIND(item)                                                                                                     \
    do {                                                                                                               \
        if (n->ntargets == 1) {                                                                                        \
            set_var(c, n->targets[0], (item));                                                                         \
        } else {                                                                                                       \
            jlist *pl;                                                                                                 \
            if (jinja_items_of(c, n, (item), &pl)) return gq_errcode();                                                \
            if (pl->n != 2)                                                                                            \
                return jinja_eerr(c, n, GQ_ERR_DATA, "cannot unpack %d values into 2 loop variables", pl->n);          \
            set_var(c, n->targets[0], pl->v[0]);                                                                       \
            set_var(c, n->targets[1], pl->v[1]);                                                                       \
        }                                                                                                              \
    } while (0)
    if (n->b) { /* {% for x in seq if cond %}: filter first, loop.length counts the kept items */
        jlist *kept = jv_list_new(c->a, items->n);
        for (int i = 0; i < items->n; i++) {
            jframe f = {jv_dict_new(c->a, 4), outer};
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
        jframe f = {jv_dict_new(c->a, 4), outer};
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
        set_var(c, "loop", jv_of_dict(loop));
        BIND(items->v[i]);
        int rc = render_body(c, n->body, n->nbody);
        c->top = outer;
        if (rc) return rc;
        if (c->a->total > JINJA_MAX_MEMORY)
            return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "rendering used more than %zu MiB", JINJA_MAX_MEMORY >> 20);
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
        case JN_TEXT:
            jbuf_put(&c->out, n->str, n->len);
            break;
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
                    return jinja_eerr(c, n, GQ_ERR_DATA, "cannot assign attribute '%s' on '%s' (a %s, not a namespace)",
                                      n->attr, n->str, jv_type_name(ns));
                jv_dict_set(c->a, ns.u.dict, jv_cstr(n->attr), v);
            } else {
                set_var(c, n->str, v);
            }
            break;
        case JN_BREAK:
            c->ctl = CTL_BREAK;
            break;
        case JN_CONTINUE:
            c->ctl = CTL_CONTINUE;
            break;
        case JN_BLOCK:
            if (render_body(c, n->body, n->nbody)) return gq_errcode();
            break;
        default:
            return jinja_eerr(c, n, GQ_ERR_FORMAT, "expression used as a statement");
        }
        if (c->out.n > JINJA_MAX_OUTPUT)
            return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "rendered text exceeds %zu bytes", JINJA_MAX_OUTPUT);
        if (c->a->total > JINJA_MAX_MEMORY)
            return jinja_eerr(c, n, GQ_ERR_UNSUPPORTED, "rendering used more than %zu MiB", JINJA_MAX_MEMORY >> 20);
    }
    return GQ_OK;
}

int jinja_eval_render(const gq_jinja *t, jarena *ra, jdict *globals, char **out, size_t *out_len) {
    jframe root = {jv_dict_new(ra, 8), NULL};
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
