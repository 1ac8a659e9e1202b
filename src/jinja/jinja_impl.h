/* jinja_impl.h (private) -- the syntax tree, values and evaluation context
 * shared by the Jinja parser (jinja.c, jinja_lex.c) and the evaluator
 * (jinja_eval.c, jinja_builtins.c, jinja_value.c). */
#ifndef GQ_JINJA_IMPL_H
#define GQ_JINJA_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "gq/jinja.h"

/* ---- arena: everything of one parse or one render is freed at once ------- */

typedef struct jarena_block jarena_block;
typedef struct {
    jarena_block *head;
    size_t total; /* bytes allocated */
} jarena;

void *jarena_alloc(jarena *a, size_t n); /* zeroed, 16-byte aligned */
char *jarena_strndup(jarena *a, const char *s, size_t n);
void jarena_free(jarena *a);

/* ---- syntax tree ----------------------------------------------------------- */

typedef enum {
    /* statements */
    JN_TEXT,   /* str */
    JN_OUTPUT, /* a = expression */
    JN_IF,     /* a = condition, body, orelse (elif is a nested JN_IF) */
    JN_FOR,    /* targets[0..ntargets), a = iterable, b = filter or NULL, body, orelse */
    JN_SET,    /* str = name (or namespace) , attr = NULL or attribute, a = value */
    JN_BREAK,
    JN_CONTINUE,
    JN_BLOCK, /* body only ({% generation %}) */
    /* expressions */
    JN_CONST,  /* val: a constant (str / int / bool / none) */
    JN_NAME,   /* str */
    JN_ATTR,   /* a . str */
    JN_ITEM,   /* a [ b ] */
    JN_SLICE,  /* a [ args[0] : args[1] : args[2] ] (NULL entries allowed) */
    JN_CALL,   /* a ( args, kwnames ) */
    JN_FILTER, /* a | str ( args, kwnames ) */
    JN_TEST,   /* a is [not] str ( args ) ; op = 1 when negated */
    JN_NOT,    /* not a */
    JN_NEG,    /* - a */
    JN_POS,    /* + a */
    JN_BINOP,  /* a op b, op one of the JOP_ arithmetic codes */
    JN_AND,
    JN_OR,
    JN_COMPARE, /* a, then (ops[i], args[i]) pairs */
    JN_COND,    /* b if a else c  (c may be NULL) */
    JN_LIST,    /* args */
    JN_DICT,    /* args = keys, args2 = values */
} jnode_kind;

typedef enum {
    JOP_ADD = 1,
    JOP_SUB,
    JOP_MUL,
    JOP_FLOORDIV,
    JOP_MOD,
    JOP_POW,
    JOP_CONCAT,
    JOP_EQ,
    JOP_NE,
    JOP_LT,
    JOP_LE,
    JOP_GT,
    JOP_GE,
    JOP_IN,
    JOP_NOTIN,
} jop;

typedef enum { JV_UNDEF = 0, JV_NONE, JV_BOOL, JV_INT, JV_STR, JV_LIST, JV_DICT, JV_FUNC, JV_METHOD } jv_type;

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jv jv;

struct jv {
    jv_type type;
    int aux; /* JV_FUNC: builtin id; JV_METHOD: method id; JV_UNDEF: 0 */
    union {
        int64_t i; /* BOOL (0/1), INT */
        struct {
            const char *s;
            size_t n;
        } str; /* STR (UTF-8, not NUL-terminated); UNDEF: the missing name */
        jlist *list;
        jdict *dict;
        jv *recv; /* METHOD: the receiver */
    } u;
};

struct jlist {
    jv *v;
    int n, cap;
};

struct jdict {
    jv *keys; /* JV_STR or JV_INT keys */
    jv *vals;
    int n, cap;
    int is_namespace;
};

typedef struct jnode jnode;
struct jnode {
    jnode_kind kind;
    int line, col;   /* 1-based position in the template */
    int op;          /* JOP_ / negated test */
    const char *str; /* names, filter/test names, text */
    size_t len;
    const char *attr; /* JN_SET: namespace attribute */
    jv val;           /* JN_CONST */
    jnode *a, *b, *c;
    jnode **args;         /* call/filter/test args, list items, dict keys, compare operands */
    const char **kwnames; /* per arg: keyword name or NULL */
    jnode **args2;        /* dict values */
    int *ops;             /* compare operators */
    int nargs;
    const char *targets[2];
    int ntargets;
    jnode **body, **orelse;
    int nbody, norelse;
};

struct gq_jinja {
    jarena arena;
    char *name;
    jnode **body;
    int nbody;
};

/* ---- lexer (jinja_lex.c) ------------------------------------------------------ */

typedef enum { T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_OP, T_EOF } ttype;

typedef struct {
    ttype type;
    size_t off;    /* byte offset in the normalised source */
    const char *s; /* TEXT, NAME, STRING (decoded), OP */
    size_t n;
    int64_t i; /* INT */
} jtok;

typedef struct {
    const char *name;
    const char *src; /* normalised source */
    size_t n;
    size_t *line_start; /* offsets of line starts */
    int nlines;
    jtok *tok;
    int ntok, cap;
    jarena *arena;
    int pos; /* parser cursor */
    int loop_depth;
    int depth; /* recursion depth of the parser (bounded) */
    int err;   /* first error status */
} jparser;

void jinja_linecol(const jparser *p, size_t off, int *line, int *col);
/* Record "name:line:col: message" as the error `code` (first error wins). */
int jinja_perr(jparser *p, int code, size_t off, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
#define PERR(p, code, off, ...) jinja_perr(p, code, off, __VA_ARGS__)
jtok *jinja_push_tok(jparser *p, ttype type, size_t off);
int jinja_lex(jparser *p);                   /* tokens of p->src into p->tok, ending with T_EOF */
size_t jinja_put_utf8(char *o, uint32_t cp); /* encode; returns 1..4 bytes */

/* jinja_eval.c */
int jinja_eval_render(const gq_jinja *t, jarena *ra, jdict *globals, char **out, size_t *out_len);

/* jinja_value.c: values shared by the evaluator */
jlist *jv_list_new(jarena *a, int cap);
void jv_list_push(jarena *a, jlist *l, jv v);
jdict *jv_dict_new(jarena *a, int cap);
void jv_dict_set(jarena *a, jdict *d, jv key, jv val);
int jv_dict_find(const jdict *d, const char *key, size_t n); /* index or -1 */
jv jv_str(const char *s, size_t n);
jv jv_cstr(const char *s);
jv jv_int(int64_t i);
jv jv_bool(int b);
jv jv_none(void);
jv jv_undef(void);
jv jv_of_list(jlist *l);
jv jv_of_dict(jdict *d);
int jv_truthy(jv v);
int jv_equal(jv a, jv b);
size_t jv_utf8_len(const char *s, size_t n);
/* Python str(v) / repr(v) / json.dumps(v, ensure_ascii=False, indent) appended
 * to a growable buffer; tojson returns -1 for a value JSON cannot hold. */
typedef struct {
    char *p;
    size_t n, cap;
} jbuf;
void jbuf_put(jbuf *b, const char *s, size_t n);
void jv_to_str(jbuf *b, jv v);
void jv_repr(jbuf *b, jv v);
int jv_tojson(jbuf *b, jv v, int indent, int depth);
const char *jv_type_name(jv v);
/* JSON text -> value (objects -> dicts, arrays -> lists; integers only). */
int jv_from_json(jarena *a, const char *json, jv *out, const char **err);

/* ---- evaluation internals (jinja_eval.c, jinja_builtins.c) ---------------------- */

/* builtin functions (jv.aux of JV_FUNC) and methods (of JV_METHOD) */
enum { JF_RAISE = 1, JF_NAMESPACE, JF_RANGE, JF_STRFTIME, JF_DICT };
enum {
    JM_STRIP = 1,
    JM_LSTRIP,
    JM_RSTRIP,
    JM_UPPER,
    JM_LOWER,
    JM_STARTSWITH,
    JM_ENDSWITH,
    JM_SPLIT,
    JM_REPLACE,
    JM_GET,
    JM_ITEMS,
    JM_KEYS,
    JM_VALUES
};

/* resource bounds of one render (a hostile template fails instead) */
#define JINJA_MAX_OUTPUT ((size_t)64 << 20)
#define JINJA_MAX_RANGE  1000000
#define JINJA_MAX_MEMORY ((size_t)256 << 20)

typedef struct jframe jframe;
struct jframe {
    jdict *vars;
    jframe *parent;
};

typedef struct {
    const gq_jinja *t;
    jarena *a;
    jdict *globals;
    jframe *top;
    jbuf out;
    int ctl;
} jctx;

typedef struct {
    jv v[8];
    const char *kw[8];
    int n;
} jargs;

/* "name:line:col: message" as error `code` */
int jinja_eerr(jctx *c, const jnode *n, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int jinja_undefined_err(jctx *c, const jnode *n, jv v);
jv jinja_str_of(jctx *c, jv v);                                 /* str(v) as a string value */
int jinja_items_of(jctx *c, const jnode *n, jv v, jlist **out); /* iteration */
int jinja_get_item(jctx *c, const jnode *n, jv obj, jv key, jv *out);
size_t *jinja_cp_offsets(jctx *c, const char *s, size_t n, size_t *count); /* code point byte offsets */
int jinja_call_builtin(jctx *c, const jnode *n, int id, const jargs *a, jv *out);
int jinja_call_method(jctx *c, const jnode *n, int id, jv recv, const jargs *a, jv *out);
int jinja_filter(jctx *c, const jnode *n, jv v, const jargs *a, jv *out);
int jinja_test(jctx *c, const jnode *n, jv v, const jargs *a, int *res);

#endif /* GQ_JINJA_IMPL_H */
