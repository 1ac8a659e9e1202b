/* jinja_value.c -- Python-like values of the Jinja interpreter: constructors,
 * lists and dicts (insertion-ordered), truthiness, equality, str(), repr(),
 * json.dumps(ensure_ascii=False) and JSON input via jansson. */
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

jv jv_str(const char *s, size_t n) {
    jv v = {.type = JV_STR};
    v.u.str.s = s;
    v.u.str.n = n;
    return v;
}
jv jv_cstr(const char *s) {
    return jv_str(s, strlen(s));
}
jv jv_int(int64_t i) {
    jv v = {.type = JV_INT};
    v.u.i = i;
    return v;
}
jv jv_bool(int b) {
    jv v = {.type = JV_BOOL};
    v.u.i = b ? 1 : 0;
    return v;
}
jv jv_none(void) {
    return (jv){.type = JV_NONE};
}
jv jv_undef(void) {
    return (jv){.type = JV_UNDEF};
}
jv jv_of_list(jlist *l) {
    jv v = {.type = JV_LIST};
    v.u.list = l;
    return v;
}
jv jv_of_dict(jdict *d) {
    jv v = {.type = JV_DICT};
    v.u.dict = d;
    return v;
}

jlist *jv_list_new(jarena *a, int cap) {
    jlist *l = jarena_alloc(a, sizeof *l);
    l->cap = cap > 4 ? cap : 4;
    l->v = jarena_alloc(a, (size_t)l->cap * sizeof *l->v);
    return l;
}

void jv_list_push(jarena *a, jlist *l, jv v) {
    if (l->n == l->cap) {
        jv *nv = jarena_alloc(a, (size_t)l->cap * 2 * sizeof *nv);
        memcpy(nv, l->v, (size_t)l->n * sizeof *nv);
        l->v = nv;
        l->cap *= 2;
    }
    l->v[l->n++] = v;
}

jdict *jv_dict_new(jarena *a, int cap) {
    jdict *d = jarena_alloc(a, sizeof *d);
    d->cap = cap > 4 ? cap : 4;
    d->keys = jarena_alloc(a, (size_t)d->cap * sizeof *d->keys);
    d->vals = jarena_alloc(a, (size_t)d->cap * sizeof *d->vals);
    return d;
}

int jv_dict_find(const jdict *d, const char *key, size_t n) {
    for (int i = 0; i < d->n; i++)
        if (d->keys[i].type == JV_STR && d->keys[i].u.str.n == n && !memcmp(d->keys[i].u.str.s, key, n)) return i;
    return -1;
}

static int dict_find_key(const jdict *d, jv key) {
    if (key.type == JV_STR) return jv_dict_find(d, key.u.str.s, key.u.str.n);
    for (int i = 0; i < d->n; i++)
        if (jv_equal(d->keys[i], key)) return i;
    return -1;
}

void jv_dict_set(jarena *a, jdict *d, jv key, jv val) {
    int i = dict_find_key(d, key);
    if (i >= 0) {
        d->vals[i] = val;
        return;
    }
    if (d->n == d->cap) {
        jv *nk = jarena_alloc(a, (size_t)d->cap * 2 * sizeof *nk),
           *nv = jarena_alloc(a, (size_t)d->cap * 2 * sizeof *nv);
        memcpy(nk, d->keys, (size_t)d->n * sizeof *nk);
        memcpy(nv, d->vals, (size_t)d->n * sizeof *nv);
        d->keys = nk;
        d->vals = nv;
        d->cap *= 2;
    }
    d->keys[d->n] = key;
    d->vals[d->n++] = val;
}

int jv_truthy(jv v) {
    switch (v.type) {
    case JV_UNDEF:
    case JV_NONE:
        return 0;
    case JV_BOOL:
    case JV_INT:
        return v.u.i != 0;
    case JV_STR:
        return v.u.str.n != 0;
    case JV_LIST:
        return v.u.list->n != 0;
    case JV_DICT:
        return v.u.dict->is_namespace || v.u.dict->n != 0;
    default:
        return 1;
    }
}

/* Python ==; nesting deeper than 200 (only a template building [[[...]]] in a
 * loop gets there) compares unequal instead of exhausting the stack. */
static int equal_d(jv a, jv b, int depth) {
    if (depth > 200) return 0;
    int an = a.type == JV_BOOL || a.type == JV_INT, bn = b.type == JV_BOOL || b.type == JV_INT;
    if (an || bn) return an && bn && a.u.i == b.u.i;
    if (a.type != b.type) return 0;
    switch (a.type) {
    case JV_UNDEF:
    case JV_NONE:
        return 1;
    case JV_STR:
        return a.u.str.n == b.u.str.n && !memcmp(a.u.str.s, b.u.str.s, a.u.str.n);
    case JV_LIST:
        if (a.u.list->n != b.u.list->n) return 0;
        for (int i = 0; i < a.u.list->n; i++)
            if (!equal_d(a.u.list->v[i], b.u.list->v[i], depth + 1)) return 0;
        return 1;
    case JV_DICT:
        if (a.u.dict->is_namespace || b.u.dict->is_namespace) return a.u.dict == b.u.dict;
        if (a.u.dict->n != b.u.dict->n) return 0;
        for (int i = 0; i < a.u.dict->n; i++) {
            int j = dict_find_key(b.u.dict, a.u.dict->keys[i]);
            if (j < 0 || !equal_d(a.u.dict->vals[i], b.u.dict->vals[j], depth + 1)) return 0;
        }
        return 1;
    case JV_FUNC:
        return a.aux == b.aux;
    case JV_METHOD:
        return a.aux == b.aux && a.u.recv == b.u.recv;
    default:
        return 0;
    }
}

int jv_equal(jv a, jv b) {
    return equal_d(a, b, 0);
}

size_t jv_utf8_len(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
    return k;
}

const char *jv_type_name(jv v) {
    switch (v.type) {
    case JV_UNDEF:
        return "undefined";
    case JV_NONE:
        return "none";
    case JV_BOOL:
        return "bool";
    case JV_INT:
        return "int";
    case JV_STR:
        return "string";
    case JV_LIST:
        return "list";
    case JV_DICT:
        return v.u.dict->is_namespace ? "namespace" : "dict";
    case JV_FUNC:
        return "function";
    case JV_METHOD:
        return "method";
    }
    return "value";
}

/* ---- text buffers ---------------------------------------------------------------- */

void jbuf_put(jbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        b->p = gq_realloc(b->p, cap);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void jbuf_puts(jbuf *b, const char *s) {
    jbuf_put(b, s, strlen(s));
}

static void put_int(jbuf *b, int64_t i) {
    char t[32];
    snprintf(t, sizeof t, "%" PRId64, i);
    jbuf_puts(b, t);
}

/* Python repr of a str: single quotes unless the text has ' and no ". */
static void repr_str(jbuf *b, const char *s, size_t n) {
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    jbuf_put(b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char t[8];
        if (c == (unsigned char)q || c == '\\') {
            t[0] = '\\';
            t[1] = (char)c;
            jbuf_put(b, t, 2);
        } else if (c == '\n') {
            jbuf_puts(b, "\\n");
        } else if (c == '\r') {
            jbuf_puts(b, "\\r");
        } else if (c == '\t') {
            jbuf_puts(b, "\\t");
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(t, sizeof t, "\\x%02x", c);
            jbuf_puts(b, t);
        } else if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] <= 0xA0) {
            /* C1 controls and U+00A0 are not printable for Python's repr */
            snprintf(t, sizeof t, "\\x%02x", (unsigned char)s[i + 1]);
            jbuf_puts(b, t);
            i++;
        } else {
            jbuf_put(b, (const char *)&s[i], 1);
        }
    }
    jbuf_put(b, &q, 1);
}

static void to_str_d(jbuf *b, jv v, int depth);

static void repr_d(jbuf *b, jv v, int depth) {
    switch (v.type) {
    case JV_STR:
        repr_str(b, v.u.str.s, v.u.str.n);
        break;
    case JV_UNDEF:
        jbuf_puts(b, "Undefined");
        break;
    default:
        to_str_d(b, v, depth);
    }
}

/* depth bounds the recursion: a namespace can hold itself ({% set ns.x = ns %}) */
static void to_str_d(jbuf *b, jv v, int depth) {
    if (depth > 32 && (v.type == JV_LIST || v.type == JV_DICT)) {
        jbuf_puts(b, "...");
        return;
    }
    switch (v.type) {
    case JV_UNDEF:
        break;
    case JV_NONE:
        jbuf_puts(b, "None");
        break;
    case JV_BOOL:
        jbuf_puts(b, v.u.i ? "True" : "False");
        break;
    case JV_INT:
        put_int(b, v.u.i);
        break;
    case JV_STR:
        jbuf_put(b, v.u.str.s, v.u.str.n);
        break;
    case JV_LIST:
        jbuf_puts(b, "[");
        for (int i = 0; i < v.u.list->n; i++) {
            if (i) jbuf_puts(b, ", ");
            repr_d(b, v.u.list->v[i], depth + 1);
        }
        jbuf_puts(b, "]");
        break;
    case JV_DICT:
        jbuf_puts(b, v.u.dict->is_namespace ? "<Namespace {" : "{");
        for (int i = 0; i < v.u.dict->n; i++) {
            if (i) jbuf_puts(b, ", ");
            repr_d(b, v.u.dict->keys[i], depth + 1);
            jbuf_puts(b, ": ");
            repr_d(b, v.u.dict->vals[i], depth + 1);
        }
        jbuf_puts(b, v.u.dict->is_namespace ? "}>" : "}");
        break;
    case JV_FUNC:
        jbuf_puts(b, "<function>");
        break;
    case JV_METHOD:
        jbuf_puts(b, "<built-in method>");
        break;
    }
}

void jv_repr(jbuf *b, jv v) {
    repr_d(b, v, 0);
}
void jv_to_str(jbuf *b, jv v) {
    to_str_d(b, v, 0);
}

static void json_str(jbuf *b, const char *s, size_t n) {
    jbuf_puts(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char t[8];
        switch (c) {
        case '"':
            jbuf_puts(b, "\\\"");
            break;
        case '\\':
            jbuf_puts(b, "\\\\");
            break;
        case '\n':
            jbuf_puts(b, "\\n");
            break;
        case '\r':
            jbuf_puts(b, "\\r");
            break;
        case '\t':
            jbuf_puts(b, "\\t");
            break;
        case '\b':
            jbuf_puts(b, "\\b");
            break;
        case '\f':
            jbuf_puts(b, "\\f");
            break;
        default:
            if (c < 0x20) {
                snprintf(t, sizeof t, "\\u%04x", c);
                jbuf_puts(b, t);
            } else {
                jbuf_put(b, (const char *)&s[i], 1);
            }
        }
    }
    jbuf_puts(b, "\"");
}

static void json_newline(jbuf *b, int indent, int depth) {
    jbuf_puts(b, "\n");
    for (int i = 0; i < indent * depth; i++) jbuf_puts(b, " ");
}

int jv_tojson(jbuf *b, jv v, int indent, int depth) {
    if (depth > 64) return -1;
    switch (v.type) {
    case JV_NONE:
        jbuf_puts(b, "null");
        return 0;
    case JV_BOOL:
        jbuf_puts(b, v.u.i ? "true" : "false");
        return 0;
    case JV_INT:
        put_int(b, v.u.i);
        return 0;
    case JV_STR:
        json_str(b, v.u.str.s, v.u.str.n);
        return 0;
    case JV_LIST:
        if (!v.u.list->n) {
            jbuf_puts(b, "[]");
            return 0;
        }
        jbuf_puts(b, "[");
        for (int i = 0; i < v.u.list->n; i++) {
            if (i) jbuf_puts(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) json_newline(b, indent, depth + 1);
            if (jv_tojson(b, v.u.list->v[i], indent, depth + 1)) return -1;
        }
        if (indent >= 0) json_newline(b, indent, depth);
        jbuf_puts(b, "]");
        return 0;
    case JV_DICT:
        if (v.u.dict->is_namespace) return -1;
        if (!v.u.dict->n) {
            jbuf_puts(b, "{}");
            return 0;
        }
        jbuf_puts(b, "{");
        for (int i = 0; i < v.u.dict->n; i++) {
            if (i) jbuf_puts(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) json_newline(b, indent, depth + 1);
            jv k = v.u.dict->keys[i];
            if (k.type == JV_STR) {
                json_str(b, k.u.str.s, k.u.str.n);
            } else {
                jbuf k2 = {0};
                jv_tojson(&k2, k, -1, 0);
                json_str(b, k2.p, k2.n);
                free(k2.p);
            }
            jbuf_puts(b, ": ");
            if (jv_tojson(b, v.u.dict->vals[i], indent, depth + 1)) return -1;
        }
        if (indent >= 0) json_newline(b, indent, depth);
        jbuf_puts(b, "}");
        return 0;
    default:
        return -1;
    }
}

/* ---- JSON input ---------------------------------------------------------------------- */

static int from_json(jarena *a, json_t *j, jv *out, const char **err, int depth) {
    if (depth > 64) {
        *err = "nested too deeply";
        return -1;
    }
    switch (json_typeof(j)) {
    case JSON_NULL:
        *out = jv_none();
        return 0;
    case JSON_TRUE:
        *out = jv_bool(1);
        return 0;
    case JSON_FALSE:
        *out = jv_bool(0);
        return 0;
    case JSON_INTEGER:
        *out = jv_int(json_integer_value(j));
        return 0;
    case JSON_REAL:
        *err = "JSON numbers must be integers (floats are not supported)";
        return -1;
    case JSON_STRING: {
        size_t n = json_string_length(j);
        *out = jv_str(jarena_strndup(a, json_string_value(j), n), n);
        return 0;
    }
    case JSON_ARRAY: {
        jlist *l = jv_list_new(a, (int)json_array_size(j));
        size_t i;
        json_t *x;
        json_array_foreach(j, i, x) {
            jv e;
            if (from_json(a, x, &e, err, depth + 1)) return -1;
            jv_list_push(a, l, e);
        }
        out->type = JV_LIST;
        out->u.list = l;
        return 0;
    }
    case JSON_OBJECT: {
        jdict *d = jv_dict_new(a, (int)json_object_size(j));
        const char *k;
        json_t *x;
        json_object_foreach(j, k, x) {
            jv e;
            if (from_json(a, x, &e, err, depth + 1)) return -1;
            jv_dict_set(a, d, jv_cstr(jarena_strndup(a, k, strlen(k))), e);
        }
        out->type = JV_DICT;
        out->u.dict = d;
        return 0;
    }
    }
    *err = "unknown JSON value";
    return -1;
}

int jv_from_json(jarena *a, const char *json, jv *out, const char **err) {
    json_error_t je;
    json_t *j = json_loads(json, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!j) {
        char *m = jarena_alloc(a, 256);
        snprintf(m, 256, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
        *err = m;
        return -1;
    }
    int rc = from_json(a, j, out, err, 0);
    json_decref(j);
    return rc;
}
