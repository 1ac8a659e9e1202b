/* jinja.c -- the parser of the Jinja subset of gq/jinja.h (recursive
 * descent with jinja2's operator precedence) and the public API. The lexer
 * and arena are in jinja_lex.c, evaluation in jinja_eval.c, values in
 * jinja_value.c. Newlines are normalised to "\n" and one trailing newline of
 * the template is removed before lexing (keep_trailing_newline off). */
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

/* ---- parser -------------------------------------------------------------------- */

static jtok *cur(jparser *p) {
    return &p->tok[p->pos];
}
static jtok *peek(jparser *p, int k) {
    int i = p->pos + k;
    return &p->tok[i < p->ntok ? i : p->ntok - 1];
}
static int tok_is(const jtok *t, ttype type, const char *s) {
    if (t->type != type) return 0;
    if (!s) return 1;
    size_t n = strlen(s);
    return t->n == n && !memcmp(t->s, s, n);
}
static int is_op(jparser *p, const char *s) {
    return tok_is(cur(p), T_OP, s);
}
static int is_name(jparser *p, const char *s) {
    return tok_is(cur(p), T_NAME, s);
}

static const char *describe(const jtok *t, char *buf, size_t cap) {
    switch (t->type) {
    case T_TEXT:
        return "template text";
    case T_VAR_BEGIN:
        return "'{{'";
    case T_VAR_END:
        return "'}}'";
    case T_BLOCK_BEGIN:
        return "'{%'";
    case T_BLOCK_END:
        return "'%}'";
    case T_EOF:
        return "end of template";
    case T_INT:
        return "an integer";
    case T_STRING:
        return "a string";
    default:
        snprintf(buf, cap, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s);
        return buf;
    }
}

static int expect(jparser *p, ttype type, const char *s, const char *what) {
    if (tok_is(cur(p), type, s)) {
        p->pos++;
        return GQ_OK;
    }
    char b[64];
    return PERR(p, GQ_ERR_FORMAT, cur(p)->off, "expected %s, got %s", what, describe(cur(p), b, sizeof b));
}

static jnode *node(jparser *p, jnode_kind kind, size_t off) {
    jnode *nd = jarena_alloc(p->arena, sizeof *nd);
    nd->kind = kind;
    jinja_linecol(p, off, &nd->line, &nd->col);
    return nd;
}

/* growable node vector, copied into the arena when done */
typedef struct {
    jnode **v;
    const char **kw;
    int n, cap;
} nvec;
static void nvec_push(nvec *v, jnode *x, const char *kw) {
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 8;
        v->v = gq_realloc(v->v, (size_t)v->cap * sizeof *v->v);
        v->kw = gq_realloc(v->kw, (size_t)v->cap * sizeof *v->kw);
    }
    v->kw[v->n] = kw;
    v->v[v->n++] = x;
}
static jnode **nvec_done(jparser *p, nvec *v, const char ***kw) {
    jnode **out = jarena_alloc(p->arena, (size_t)(v->n ? v->n : 1) * sizeof *out);
    if (v->n) memcpy(out, v->v, (size_t)v->n * sizeof *out);
    if (kw) {
        *kw = jarena_alloc(p->arena, (size_t)(v->n ? v->n : 1) * sizeof **kw);
        if (v->n) memcpy(*kw, v->kw, (size_t)v->n * sizeof **kw);
    }
    free(v->v);
    free(v->kw);
    v->v = NULL;
    v->kw = NULL;
    return out;
}
static void nvec_drop(nvec *v) {
    free(v->v);
    free(v->kw);
}

#define MAX_DEPTH 200

/* Bound the parser's recursion (and so the evaluator's): a hostile template
 * nesting thousands of brackets, "not"s or blocks fails instead of
 * overflowing the stack. */
static int enter(jparser *p) {
    if (++p->depth > MAX_DEPTH) {
        PERR(p, GQ_ERR_UNSUPPORTED, p->tok[p->pos].off, "nested more than %d levels deep", MAX_DEPTH);
        return 0;
    }
    return 1;
}

static jnode *parse_expr(jparser *p);
static jnode *parse_or(jparser *p);
static jnode *parse_unary(jparser *p, int with_filter);
static jnode *parse_primary(jparser *p);
static jnode *parse_postfix(jparser *p, jnode *nd);

static const char *name_dup(jparser *p, const jtok *t) {
    return jarena_strndup(p->arena, t->s, t->n);
}

/* ( args ) with keyword arguments; cursor on '(' */
static int parse_call_args(jparser *p, jnode *nd) {
    nvec v = {0};
    p->pos++;
    while (!is_op(p, ")")) {
        if (v.n && expect(p, T_OP, ",", "',' or ')' in the argument list")) goto fail;
        if (is_op(p, ")")) break;
        if (is_op(p, "*") || is_op(p, "**")) {
            PERR(p, GQ_ERR_UNSUPPORTED, cur(p)->off, "*args / **kwargs in calls are not supported");
            goto fail;
        }
        const char *kw = NULL;
        if (cur(p)->type == T_NAME && tok_is(peek(p, 1), T_OP, "=")) {
            kw = name_dup(p, cur(p));
            p->pos += 2;
        }
        jnode *a = parse_expr(p);
        if (!a) goto fail;
        nvec_push(&v, a, kw);
    }
    p->pos++;
    nd->nargs = v.n;
    nd->args = nvec_done(p, &v, &nd->kwnames);
    return GQ_OK;
fail:
    nvec_drop(&v);
    return p->err;
}

static jnode *parse_list_like(jparser *p, const char *close, size_t off, int *was_tuple) {
    nvec v = {0};
    int comma = 0;
    while (!is_op(p, close)) {
        if (v.n) {
            if (expect(p, T_OP, ",", close[0] == ')' ? "',' or ')'" : "',' or ']'")) goto fail;
            comma = 1;
            if (is_op(p, close)) break;
        }
        jnode *a = parse_expr(p);
        if (!a) goto fail;
        nvec_push(&v, a, NULL);
    }
    p->pos++;
    if (was_tuple) *was_tuple = comma || v.n != 1;
    jnode *nd = node(p, JN_LIST, off);
    nd->nargs = v.n;
    nd->args = nvec_done(p, &v, NULL);
    return nd;
fail:
    nvec_drop(&v);
    return NULL;
}

static jnode *parse_dict(jparser *p, size_t off) {
    nvec k = {0}, v = {0};
    while (!is_op(p, "}")) {
        if (k.n) {
            if (expect(p, T_OP, ",", "',' or '}'")) goto fail;
            if (is_op(p, "}")) break;
        }
        jnode *a = parse_expr(p);
        if (!a || expect(p, T_OP, ":", "':' after a dict key")) goto fail;
        jnode *b = parse_expr(p);
        if (!b) goto fail;
        nvec_push(&k, a, NULL);
        nvec_push(&v, b, NULL);
    }
    p->pos++;
    jnode *nd = node(p, JN_DICT, off);
    nd->nargs = k.n;
    nd->args = nvec_done(p, &k, NULL);
    nd->args2 = nvec_done(p, &v, NULL);
    return nd;
fail:
    nvec_drop(&k);
    nvec_drop(&v);
    return NULL;
}

static jnode *parse_primary(jparser *p) {
    jtok *t = cur(p);
    char b[64];
    if (t->type == T_NAME) {
        p->pos++;
        jnode *nd = node(p, JN_CONST, t->off);
        if (tok_is(t, T_NAME, "true") || tok_is(t, T_NAME, "True")) {
            nd->val = jv_bool(1);
        } else if (tok_is(t, T_NAME, "false") || tok_is(t, T_NAME, "False")) {
            nd->val = jv_bool(0);
        } else if (tok_is(t, T_NAME, "none") || tok_is(t, T_NAME, "None")) {
            nd->val = jv_none();
        } else {
            nd->kind = JN_NAME;
            nd->str = name_dup(p, t);
            nd->len = t->n;
        }
        return nd;
    }
    if (t->type == T_STRING) {
        size_t total = 0;
        int k = p->pos;
        while (p->tok[k].type == T_STRING) total += p->tok[k++].n;
        char *s = jarena_alloc(p->arena, total + 1), *o = s;
        while (cur(p)->type == T_STRING) {
            memcpy(o, cur(p)->s, cur(p)->n);
            o += cur(p)->n;
            p->pos++;
        }
        jnode *nd = node(p, JN_CONST, t->off);
        nd->val = jv_str(s, total);
        return nd;
    }
    if (t->type == T_INT) {
        p->pos++;
        jnode *nd = node(p, JN_CONST, t->off);
        nd->val = jv_int(t->i);
        return nd;
    }
    if (tok_is(t, T_OP, "(")) {
        p->pos++;
        int tuple = 0;
        jnode *nd = parse_list_like(p, ")", t->off, &tuple);
        if (!nd) return NULL;
        return tuple ? nd : nd->args[0];
    }
    if (tok_is(t, T_OP, "[")) {
        p->pos++;
        return parse_list_like(p, "]", t->off, NULL);
    }
    if (tok_is(t, T_OP, "{")) {
        p->pos++;
        return parse_dict(p, t->off);
    }
    PERR(p, GQ_ERR_FORMAT, t->off, "unexpected %s in an expression", describe(t, b, sizeof b));
    return NULL;
}

static jnode *parse_subscript(jparser *p, jnode *obj) {
    jtok *t = cur(p);
    p->pos++;
    if (tok_is(t, T_OP, ".")) {
        jtok *a = cur(p);
        if (a->type == T_NAME) {
            p->pos++;
            jnode *nd = node(p, JN_ATTR, t->off);
            nd->a = obj;
            nd->str = name_dup(p, a);
            nd->len = a->n;
            return nd;
        }
        if (a->type == T_INT) {
            p->pos++;
            jnode *nd = node(p, JN_ITEM, t->off), *k = node(p, JN_CONST, a->off);
            k->val = jv_int(a->i);
            nd->a = obj;
            nd->b = k;
            return nd;
        }
        PERR(p, GQ_ERR_FORMAT, a->off, "expected an attribute name after '.'");
        return NULL;
    }
    /* '[' expr ']' or a slice */
    jnode *part[3] = {NULL, NULL, NULL};
    int nparts = 0;
    for (;;) {
        if (is_op(p, ":") || is_op(p, "]")) {
            part[nparts] = NULL;
        } else {
            part[nparts] = parse_expr(p);
            if (!part[nparts]) return NULL;
        }
        nparts++;
        if (is_op(p, ":") && nparts < 3) {
            p->pos++;
            continue;
        }
        break;
    }
    if (expect(p, T_OP, "]", "']'")) return NULL;
    if (nparts == 1) {
        if (!part[0]) {
            PERR(p, GQ_ERR_FORMAT, t->off, "empty subscript");
            return NULL;
        }
        jnode *nd = node(p, JN_ITEM, t->off);
        nd->a = obj;
        nd->b = part[0];
        return nd;
    }
    jnode *nd = node(p, JN_SLICE, t->off);
    nd->a = obj;
    nd->args = jarena_alloc(p->arena, 3 * sizeof *nd->args);
    for (int i = 0; i < 3; i++) nd->args[i] = part[i];
    nd->nargs = 3;
    return nd;
}

static jnode *parse_postfix(jparser *p, jnode *nd) {
    while (nd) {
        if (is_op(p, ".") || is_op(p, "[")) {
            nd = parse_subscript(p, nd);
        } else if (is_op(p, "(")) {
            jnode *c = node(p, JN_CALL, cur(p)->off);
            c->a = nd;
            if (parse_call_args(p, c)) return NULL;
            nd = c;
        } else {
            break;
        }
    }
    return nd;
}

static jnode *parse_filter_expr(jparser *p, jnode *nd) {
    while (nd) {
        if (is_op(p, "|")) {
            p->pos++;
            jtok *t = cur(p);
            if (t->type != T_NAME) {
                PERR(p, GQ_ERR_FORMAT, t->off, "expected a filter name after '|'");
                return NULL;
            }
            p->pos++;
            jnode *f = node(p, JN_FILTER, t->off);
            f->a = nd;
            f->str = name_dup(p, t);
            f->len = t->n;
            if (is_op(p, "(") && parse_call_args(p, f)) return NULL;
            nd = f;
        } else if (is_name(p, "is")) {
            p->pos++;
            int neg = 0;
            if (is_name(p, "not")) {
                neg = 1;
                p->pos++;
            }
            jtok *t = cur(p);
            if (t->type != T_NAME) {
                PERR(p, GQ_ERR_FORMAT, t->off, "expected a test name after 'is'");
                return NULL;
            }
            p->pos++;
            jnode *f = node(p, JN_TEST, t->off);
            f->a = nd;
            f->op = neg;
            f->str = name_dup(p, t);
            f->len = t->n;
            jtok *c = cur(p);
            if (is_op(p, "(")) {
                if (parse_call_args(p, f)) return NULL;
            } else if ((c->type == T_NAME || c->type == T_STRING || c->type == T_INT || tok_is(c, T_OP, "[") ||
                        tok_is(c, T_OP, "{")) &&
                       !tok_is(c, T_NAME, "else") && !tok_is(c, T_NAME, "or") && !tok_is(c, T_NAME, "and") &&
                       !tok_is(c, T_NAME, "if") && !tok_is(c, T_NAME, "in") && !tok_is(c, T_NAME, "not")) {
                if (tok_is(c, T_NAME, "is")) {
                    PERR(p, GQ_ERR_FORMAT, c->off, "tests cannot be chained with 'is'");
                    return NULL;
                }
                jnode *arg = parse_postfix(p, parse_primary(p));
                if (!arg) return NULL;
                f->args = jarena_alloc(p->arena, sizeof *f->args);
                f->kwnames = jarena_alloc(p->arena, sizeof *f->kwnames);
                f->args[0] = arg;
                f->nargs = 1;
            }
            nd = f;
        } else if (is_op(p, "(")) {
            jnode *c = node(p, JN_CALL, cur(p)->off);
            c->a = nd;
            if (parse_call_args(p, c)) return NULL;
            nd = c;
        } else {
            break;
        }
    }
    return nd;
}

static jnode *parse_unary(jparser *p, int with_filter) {
    jtok *t = cur(p);
    jnode *nd;
    if (tok_is(t, T_OP, "-") || tok_is(t, T_OP, "+")) {
        p->pos++;
        nd = node(p, tok_is(t, T_OP, "-") ? JN_NEG : JN_POS, t->off);
        nd->a = enter(p) ? parse_unary(p, 0) : NULL;
        p->depth--;
        if (!nd->a) return NULL;
    } else {
        nd = parse_primary(p);
    }
    nd = parse_postfix(p, nd);
    if (with_filter) nd = parse_filter_expr(p, nd);
    return nd;
}

static jnode *binop(jparser *p, jnode *l, jnode *r, int op, size_t off) {
    if (!l || !r) return NULL;
    jnode *nd = node(p, JN_BINOP, off);
    nd->a = l;
    nd->b = r;
    nd->op = op;
    return nd;
}

static jnode *parse_pow(jparser *p) {
    jnode *l = parse_unary(p, 1);
    while (l && is_op(p, "**")) {
        size_t off = cur(p)->off;
        p->pos++;
        l = binop(p, l, parse_unary(p, 1), JOP_POW, off);
    }
    return l;
}

static jnode *parse_math2(jparser *p) {
    jnode *l = parse_pow(p);
    while (l) {
        size_t off = cur(p)->off;
        int op = is_op(p, "*") ? JOP_MUL : is_op(p, "//") ? JOP_FLOORDIV : is_op(p, "%") ? JOP_MOD : 0;
        if (is_op(p, "/")) {
            PERR(p, GQ_ERR_UNSUPPORTED, off, "'/' (true division, a float) is not supported; use '//'");
            return NULL;
        }
        if (!op) break;
        p->pos++;
        l = binop(p, l, parse_pow(p), op, off);
    }
    return l;
}

static jnode *parse_concat(jparser *p) {
    jnode *l = parse_math2(p);
    while (l && is_op(p, "~")) {
        size_t off = cur(p)->off;
        p->pos++;
        l = binop(p, l, parse_math2(p), JOP_CONCAT, off);
    }
    return l;
}

static jnode *parse_math1(jparser *p) {
    jnode *l = parse_concat(p);
    while (l && (is_op(p, "+") || is_op(p, "-"))) {
        size_t off = cur(p)->off;
        int op = is_op(p, "+") ? JOP_ADD : JOP_SUB;
        p->pos++;
        l = binop(p, l, parse_concat(p), op, off);
    }
    return l;
}

static jnode *parse_compare(jparser *p) {
    jnode *l = parse_math1(p);
    if (!l) return NULL;
    nvec v = {0};
    int ops[64], nops = 0;
    size_t off = cur(p)->off;
    for (;;) {
        int op = is_op(p, "==")     ? JOP_EQ
                 : is_op(p, "!=")   ? JOP_NE
                 : is_op(p, "<")    ? JOP_LT
                 : is_op(p, "<=")   ? JOP_LE
                 : is_op(p, ">")    ? JOP_GT
                 : is_op(p, ">=")   ? JOP_GE
                 : is_name(p, "in") ? JOP_IN
                                    : 0;
        if (op) {
            p->pos++;
        } else if (is_name(p, "not") && tok_is(peek(p, 1), T_NAME, "in")) {
            op = JOP_NOTIN;
            p->pos += 2;
        } else {
            break;
        }
        if (nops == 64) {
            PERR(p, GQ_ERR_UNSUPPORTED, cur(p)->off, "comparison chain too long");
            nvec_drop(&v);
            return NULL;
        }
        jnode *r = parse_math1(p);
        if (!r) {
            nvec_drop(&v);
            return NULL;
        }
        ops[nops++] = op;
        nvec_push(&v, r, NULL);
    }
    if (!nops) return l;
    jnode *nd = node(p, JN_COMPARE, off);
    nd->a = l;
    nd->nargs = v.n;
    nd->args = nvec_done(p, &v, NULL);
    nd->ops = jarena_alloc(p->arena, (size_t)nops * sizeof *nd->ops);
    memcpy(nd->ops, ops, (size_t)nops * sizeof *ops);
    return nd;
}

static jnode *parse_not(jparser *p) {
    if (is_name(p, "not")) {
        jnode *nd = node(p, JN_NOT, cur(p)->off);
        p->pos++;
        nd->a = enter(p) ? parse_not(p) : NULL;
        p->depth--;
        return nd->a ? nd : NULL;
    }
    return parse_compare(p);
}

static jnode *parse_and(jparser *p) {
    jnode *l = parse_not(p);
    while (l && is_name(p, "and")) {
        jnode *nd = node(p, JN_AND, cur(p)->off);
        p->pos++;
        nd->a = l;
        nd->b = parse_not(p);
        l = nd->b ? nd : NULL;
    }
    return l;
}

static jnode *parse_or(jparser *p) {
    jnode *l = parse_and(p);
    while (l && is_name(p, "or")) {
        jnode *nd = node(p, JN_OR, cur(p)->off);
        p->pos++;
        nd->a = l;
        nd->b = parse_and(p);
        l = nd->b ? nd : NULL;
    }
    return l;
}

static jnode *parse_expr_inner(jparser *p);

static jnode *parse_expr(jparser *p) {
    jnode *r = enter(p) ? parse_expr_inner(p) : NULL;
    p->depth--;
    return r;
}

static jnode *parse_expr_inner(jparser *p) {
    jnode *l = parse_or(p);
    while (l && is_name(p, "if")) {
        jnode *nd = node(p, JN_COND, cur(p)->off);
        p->pos++;
        nd->b = l;
        nd->a = parse_or(p);
        if (!nd->a) return NULL;
        if (is_name(p, "else")) {
            p->pos++;
            nd->c = parse_expr(p);
            if (!nd->c) return NULL;
        }
        l = nd;
    }
    return l;
}

/* ---- statements ----------------------------------------------------------------- */

static int parse_body(jparser *p, const char *const *ends, int nends, jnode ***body, int *nbody, int *which,
                      size_t open_off, const char *open_what);

static int end_tag(jparser *p) {
    return expect(p, T_BLOCK_END, NULL, "'%}'");
}

static jnode *parse_if(jparser *p, size_t off) {
    static const char *const ends[] = {"elif", "else", "endif"};
    jnode *nd = node(p, JN_IF, off);
    nd->a = parse_expr(p);
    if (!nd->a || end_tag(p)) return NULL;
    int which;
    if (parse_body(p, ends, 3, &nd->body, &nd->nbody, &which, off, "{% if %}")) return NULL;
    if (which == 0) {
        jnode *e = parse_if(p, peek(p, -1)->off);
        if (!e) return NULL;
        nd->orelse = jarena_alloc(p->arena, sizeof *nd->orelse);
        nd->orelse[0] = e;
        nd->norelse = 1;
    } else if (which == 1) {
        if (end_tag(p) || parse_body(p, ends + 2, 1, &nd->orelse, &nd->norelse, &which, off, "{% if %}")) return NULL;
        if (end_tag(p)) return NULL;
    } else if (end_tag(p)) {
        return NULL;
    }
    return nd;
}

static jnode *parse_for(jparser *p, size_t off) {
    static const char *const ends[] = {"else", "endfor"};
    jnode *nd = node(p, JN_FOR, off);
    for (;;) {
        jtok *t = cur(p);
        if (t->type != T_NAME) {
            PERR(p, GQ_ERR_FORMAT, t->off, "expected a loop variable name in {%% for %%}");
            return NULL;
        }
        if (nd->ntargets == 2) {
            PERR(p, GQ_ERR_UNSUPPORTED, t->off, "more than two loop variables");
            return NULL;
        }
        nd->targets[nd->ntargets++] = name_dup(p, t);
        p->pos++;
        if (!is_op(p, ",")) break;
        p->pos++;
    }
    if (expect(p, T_NAME, "in", "'in' in {% for %}")) return NULL;
    nd->a = parse_or(p);
    if (!nd->a) return NULL;
    if (is_name(p, "if")) {
        p->pos++;
        nd->b = parse_expr(p);
        if (!nd->b) return NULL;
    }
    if (is_name(p, "recursive")) {
        PERR(p, GQ_ERR_UNSUPPORTED, cur(p)->off, "recursive loops are not supported");
        return NULL;
    }
    if (end_tag(p)) return NULL;
    int which;
    p->loop_depth++;
    int rc = parse_body(p, ends, 2, &nd->body, &nd->nbody, &which, off, "{% for %}");
    p->loop_depth--;
    if (rc || end_tag(p)) return NULL;
    if (which == 0) {
        if (parse_body(p, ends + 1, 1, &nd->orelse, &nd->norelse, &which, off, "{% for %}") || end_tag(p)) return NULL;
    }
    return nd;
}

static jnode *parse_set(jparser *p, size_t off) {
    jnode *nd = node(p, JN_SET, off);
    jtok *t = cur(p);
    if (t->type != T_NAME) {
        PERR(p, GQ_ERR_FORMAT, t->off, "expected a variable name in {%% set %%}");
        return NULL;
    }
    nd->str = name_dup(p, t);
    p->pos++;
    if (is_op(p, ".")) {
        p->pos++;
        if (cur(p)->type != T_NAME) {
            PERR(p, GQ_ERR_FORMAT, cur(p)->off, "expected an attribute name in {%% set ns.attr %%}");
            return NULL;
        }
        nd->attr = name_dup(p, cur(p));
        p->pos++;
    }
    if (is_op(p, ",")) {
        PERR(p, GQ_ERR_UNSUPPORTED, cur(p)->off, "{%% set a, b = ... %%} (tuple unpacking) is not supported");
        return NULL;
    }
    if (cur(p)->type == T_BLOCK_END) {
        PERR(p, GQ_ERR_UNSUPPORTED, off, "block assignments {%% set x %%}...{%% endset %%} are not supported");
        return NULL;
    }
    if (expect(p, T_OP, "=", "'=' in {% set %}")) return NULL;
    nd->a = parse_expr(p);
    if (!nd->a || end_tag(p)) return NULL;
    return nd;
}

static const char *const unsupported_stmts[] = {"macro", "call", "filter", "block",      "extends", "include", "import",
                                                "from",  "raw",  "with",   "autoescape", "do",      "endset",  "trans"};

static jnode *parse_statement_inner(jparser *p);

static jnode *parse_statement(jparser *p) {
    jnode *r = enter(p) ? parse_statement_inner(p) : NULL;
    p->depth--;
    return r;
}

static jnode *parse_statement_inner(jparser *p) {
    jtok *begin = cur(p);
    p->pos++;
    jtok *t = cur(p);
    char b[64];
    if (t->type != T_NAME) {
        PERR(p, GQ_ERR_FORMAT, t->off, "expected a statement name after '{%%', got %s", describe(t, b, sizeof b));
        return NULL;
    }
    p->pos++;
    if (tok_is(t, T_NAME, "if")) return parse_if(p, begin->off);
    if (tok_is(t, T_NAME, "for")) return parse_for(p, begin->off);
    if (tok_is(t, T_NAME, "set")) return parse_set(p, begin->off);
    if (tok_is(t, T_NAME, "break") || tok_is(t, T_NAME, "continue")) {
        if (!p->loop_depth) {
            PERR(p, GQ_ERR_FORMAT, t->off, "'%.*s' outside of a loop", (int)t->n, t->s);
            return NULL;
        }
        jnode *nd = node(p, tok_is(t, T_NAME, "break") ? JN_BREAK : JN_CONTINUE, begin->off);
        return end_tag(p) ? NULL : nd;
    }
    if (tok_is(t, T_NAME, "generation")) {
        static const char *const ends[] = {"endgeneration"};
        jnode *nd = node(p, JN_BLOCK, begin->off);
        int which;
        if (end_tag(p) || parse_body(p, ends, 1, &nd->body, &nd->nbody, &which, begin->off, "{% generation %}") ||
            end_tag(p))
            return NULL;
        return nd;
    }
    for (size_t i = 0; i < sizeof unsupported_stmts / sizeof *unsupported_stmts; i++)
        if (tok_is(t, T_NAME, unsupported_stmts[i])) {
            PERR(p, GQ_ERR_UNSUPPORTED, begin->off, "{%% %s %%} is not supported by gq's Jinja subset",
                 unsupported_stmts[i]);
            return NULL;
        }
    PERR(p, GQ_ERR_FORMAT, t->off, "unknown or unexpected statement '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s);
    return NULL;
}

/* Statements until one of ends[] (a "{% end... %}" tag; its name consumed,
 * the cursor left before '%}'), or the end of the template when nends == 0. */
static int parse_body(jparser *p, const char *const *ends, int nends, jnode ***body, int *nbody, int *which,
                      size_t open_off, const char *open_what) {
    nvec v = {0};
    for (;;) {
        jtok *t = cur(p);
        if (t->type == T_EOF) {
            if (!nends) break;
            int line, col;
            jinja_linecol(p, open_off, &line, &col);
            PERR(p, GQ_ERR_FORMAT, t->off,
                 "unexpected end of template: %s opened at %d:%d is not closed (expected {%% %s %%})", open_what, line,
                 col, ends[nends - 1]);
            goto fail;
        }
        jnode *nd = NULL;
        if (t->type == T_TEXT) {
            nd = node(p, JN_TEXT, t->off);
            nd->str = t->s;
            nd->len = t->n;
            p->pos++;
        } else if (t->type == T_VAR_BEGIN) {
            p->pos++;
            nd = node(p, JN_OUTPUT, t->off);
            nd->a = parse_expr(p);
            if (!nd->a || expect(p, T_VAR_END, NULL, "'}}'")) goto fail;
        } else if (t->type == T_BLOCK_BEGIN) {
            jtok *name = peek(p, 1);
            for (int i = 0; i < nends; i++)
                if (tok_is(name, T_NAME, ends[i])) {
                    p->pos += 2;
                    *which = i;
                    goto done;
                }
            nd = parse_statement(p);
            if (!nd) goto fail;
        } else {
            char b[64];
            PERR(p, GQ_ERR_FORMAT, t->off, "unexpected %s", describe(t, b, sizeof b));
            goto fail;
        }
        nvec_push(&v, nd, NULL);
    }
done:
    *nbody = v.n;
    *body = nvec_done(p, &v, NULL);
    return GQ_OK;
fail:
    nvec_drop(&v);
    return p->err ? p->err : gq_err(GQ_ERR_FORMAT, "%s: parse error", p->name);
}

/* ---- public API -------------------------------------------------------------------- */

int gq_jinja_parse(gq_jinja **out, const char *src, size_t len, const char *name) {
    *out = NULL;
    gq_jinja *t = gq_calloc(1, sizeof *t);
    t->name = gq_strdup(name ? name : "template");
    /* normalise newlines, drop one trailing newline (keep_trailing_newline off) */
    char *s = jarena_alloc(&t->arena, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    jparser p = {.name = t->name, .src = s, .n = n, .arena = &t->arena};
    int cap = 64;
    p.line_start = gq_malloc((size_t)cap * sizeof *p.line_start);
    p.line_start[p.nlines++] = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\n') {
            if (p.nlines == cap) {
                cap *= 2;
                p.line_start = gq_realloc(p.line_start, (size_t)cap * sizeof *p.line_start);
            }
            p.line_start[p.nlines++] = i + 1;
        }
    int rc = jinja_lex(&p);
    if (!rc) {
        int which;
        rc = parse_body(&p, NULL, 0, &t->body, &t->nbody, &which, 0, "");
    }
    free(p.line_start);
    free(p.tok);
    if (rc) {
        gq_jinja_free(t);
        return rc;
    }
    *out = t;
    return GQ_OK;
}

void gq_jinja_free(gq_jinja *t) {
    if (!t) return;
    jarena_free(&t->arena);
    free(t->name);
    free(t);
}

int gq_jinja_render(const gq_jinja *t, const char *vars_json, char **out, size_t *out_len) {
    *out = NULL;
    jarena ra = {0};
    jv vars = jv_none();
    const char *err = NULL;
    if (vars_json && jv_from_json(&ra, vars_json, &vars, &err)) {
        jarena_free(&ra);
        return gq_err(GQ_ERR_ARG, "%s: template variables: %s", t->name, err ? err : "invalid JSON");
    }
    if (vars_json && vars.type != JV_DICT) {
        jarena_free(&ra);
        return gq_err(GQ_ERR_ARG, "%s: template variables: expected a JSON object, got %s", t->name,
                      jv_type_name(vars));
    }
    jdict *g = vars_json ? vars.u.dict : jv_dict_new(&ra, 4);
    int rc = jinja_eval_render(t, &ra, g, out, out_len);
    jarena_free(&ra);
    return rc;
}

int gq_jinja_render_chat(const gq_jinja *t, const char *const *roles, const char *const *contents, int n,
                         const char *bos, const char *eos, int add_generation_prompt, char **out, size_t *out_len) {
    jarena ra = {0};
    jdict *g = jv_dict_new(&ra, 8);
    jlist *msgs = jv_list_new(&ra, n);
    for (int i = 0; i < n; i++) {
        jdict *m = jv_dict_new(&ra, 2);
        jv_dict_set(&ra, m, jv_cstr("role"), jv_cstr(roles[i]));
        jv_dict_set(&ra, m, jv_cstr("content"), jv_cstr(contents[i]));
        jv v = {.type = JV_DICT};
        v.u.dict = m;
        jv_list_push(&ra, msgs, v);
    }
    jv mv = {.type = JV_LIST};
    mv.u.list = msgs;
    jv_dict_set(&ra, g, jv_cstr("messages"), mv);
    jv_dict_set(&ra, g, jv_cstr("bos_token"), jv_cstr(bos ? bos : ""));
    jv_dict_set(&ra, g, jv_cstr("eos_token"), jv_cstr(eos ? eos : ""));
    jv_dict_set(&ra, g, jv_cstr("add_generation_prompt"), jv_bool(add_generation_prompt));
    int rc = jinja_eval_render(t, &ra, g, out, out_len);
    jarena_free(&ra);
    return rc;
}
