/* questions.c -- question sources for `gq calib` (gq/questions.h): JSON
 * lines, JSON arrays, plain-text lines and blank-line separated blocks,
 * plain or gzip. */
#include "gq/questions.h"

#include <jansson.h>

#include "base/json_util.h"
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "gq/calib.h"

#define MAX_FILE ((size_t)1 << 30)

static const char *const fmt_names[] = {"auto", "jsonl", "json", "lines", "blocks"};
static const char *const auto_fields[] = {"prompt", "question", "instruction", "text"};

int gq_questions_format_parse(const char *s, gq_questions_format *out) {
    for (int i = 0; i < 5; i++)
        if (s && !strcmp(s, fmt_names[i])) {
            *out = (gq_questions_format)i;
            return GQ_OK;
        }
    return gq_err(GQ_ERR_ARG, "questions format: expected auto, jsonl, json, lines or blocks, got '%s'", s ? s : "");
}

const char *gq_questions_format_name(gq_questions_format f) {
    return (unsigned)f < 5 ? fmt_names[f] : "?";
}

void gq_questions_opts_default(gq_questions_opts *o) {
    memset(o, 0, sizeof *o);
}

void gq_questions_free(gq_questions *q) {
    if (!q) return;
    for (int i = 0; i < q->n; i++) {
        free(q->text[i]);
        free(q->where[i]);
    }
    free(q->text);
    free(q->where);
    memset(q, 0, sizeof *q);
}

typedef struct {
    const gq_questions_opts *o;
    gq_questions *q;
    int cap;
    char field[64]; /* resolved field ("" until the first object) */
    const char *input;
} reader;

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n' && s[i] != '\f' && s[i] != '\v') return 0;
    return 1;
}

static int full(const reader *r) {
    return r->o->limit > 0 && r->q->n >= r->o->limit;
}

/* Take ownership of text (len bytes); where is copied. */
static void add(reader *r, char *text, size_t len, const char *where) {
    if (is_blank(text, len)) {
        r->q->n_empty++;
        free(text);
        return;
    }
    if (r->q->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->q->text = gq_realloc(r->q->text, (size_t)r->cap * sizeof *r->q->text);
        r->q->where = gq_realloc(r->q->where, (size_t)r->cap * sizeof *r->q->where);
    }
    r->q->text[r->q->n] = text;
    r->q->where[r->q->n++] = gq_strdup(where);
}

static char *dup_n(const char *s, size_t n) {
    char *p = gq_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}


/* "a, b, c" of an object's keys (up to 8) */
static void key_list(const json_t *o, char *buf, size_t cap) {
    const char *k;
    json_t *v;
    size_t n = 0;
    int i = 0;
    buf[0] = 0;
    json_object_foreach((json_t *)o, k, v) {
        if (i == 8) {
            snprintf(buf + n, cap - n, ", ...");
            break;
        }
        int w = snprintf(buf + n, cap - n, "%s%s", i ? ", " : "", k);
        if (w < 0 || (size_t)w >= cap - n) break;
        n += (size_t)w;
        i++;
    }
    if (!i) snprintf(buf, cap, "none");
    (void)v;
}

/* One JSON record (an object or a string) at `where`. */
static int take(reader *r, json_t *v, const char *where) {
    if (json_is_string(v)) {
        add(r, dup_n(json_string_value(v), json_string_length(v)), json_string_length(v), where);
        return GQ_OK;
    }
    if (!json_is_object(v))
        return gq_err(GQ_ERR_DATA, "%s: expected a JSON object (or a string), got %s", where, gq_json_kind(v));
    char keys[256];
    if (!r->field[0]) {
        if (r->o->field) {
            snprintf(r->field, sizeof r->field, "%s", r->o->field);
        } else {
            for (size_t i = 0; i < sizeof auto_fields / sizeof *auto_fields && !r->field[0]; i++)
                if (json_object_get(v, auto_fields[i])) snprintf(r->field, sizeof r->field, "%s", auto_fields[i]);
            if (!r->field[0]) {
                key_list(v, keys, sizeof keys);
                return gq_err(GQ_ERR_DATA,
                              "%s: expected one of the fields prompt, question, instruction, text (or name one with "
                              "--field), found fields: %s",
                              where, keys);
            }
        }
        snprintf(r->q->field, sizeof r->q->field, "%s", r->field);
    }
    json_t *f = json_object_get(v, r->field);
    if (!f) {
        key_list(v, keys, sizeof keys);
        return gq_err(GQ_ERR_DATA, "%s: expected a string field \"%s\", found fields: %s", where, r->field, keys);
    }
    if (!json_is_string(f))
        return gq_err(GQ_ERR_DATA, "%s: field \"%s\" is %s, expected a string", where, r->field, gq_json_kind(f));
    size_t n = json_string_length(f), m = 0;
    json_t *in = r->input[0] ? json_object_get(v, r->input) : NULL;
    if (in && !json_is_null(in)) {
        if (!json_is_string(in))
            return gq_err(GQ_ERR_DATA, "%s: field \"%s\" is %s, expected a string", where, r->input, gq_json_kind(in));
        m = json_string_length(in);
    }
    char *text = gq_malloc(n + m + 2);
    memcpy(text, json_string_value(f), n);
    if (m) {
        text[n] = '\n';
        memcpy(text + n + 1, json_string_value(in), m);
        n += m + 1;
    }
    text[n] = 0;
    add(r, text, n, where);
    return GQ_OK;
}

static int load_jsonl(reader *r) {
    gq_jsonl *j;
    int rc = gq_jsonl_open(&j, r->o->path);
    if (rc) return rc;
    const char *line;
    size_t len;
    long lineno;
    while (!full(r) && (rc = gq_jsonl_next(j, &line, &len, &lineno)) == 1) {
        char where[1100];
        snprintf(where, sizeof where, "%s:%ld", r->o->path, lineno);
        json_error_t je;
        json_t *v = json_loadb(line, len, JSON_DECODE_ANY, &je);
        if (!v) {
            rc = gq_err(GQ_ERR_DATA, "%s: not valid JSON: %s (column %d)", where, je.text, je.column);
            break;
        }
        rc = take(r, v, where);
        json_decref(v);
        if (rc) break;
    }
    gq_jsonl_close(j);
    return rc < 0 ? rc : GQ_OK;
}

/* Whole file (plain or gzip) into a NUL-terminated buffer. */
static int read_all(const char *path, char **data, size_t *len) {
    *data = NULL;
    gzFile f = gzopen(path, "rb");
    if (!f) return gq_err(GQ_ERR_IO, "%s: cannot open", path);
    size_t n = 0, cap = 1 << 16;
    char *buf = gq_malloc(cap);
    for (;;) {
        if (cap - n < (1 << 16)) {
            if (cap >= MAX_FILE) {
                gzclose(f);
                free(buf);
                return gq_err(GQ_ERR_DATA, "%s: larger than 1 GiB, too large for a question file", path);
            }
            cap *= 2;
            buf = gq_realloc(buf, cap);
        }
        int got = gzread(f, buf + n, (unsigned)(cap - n - 1));
        if (got < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            char m[256];
            snprintf(m, sizeof m, "%s", msg);
            gzclose(f);
            free(buf);
            return gq_err(GQ_ERR_IO, "%s: read error: %s", path, m);
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    gzclose(f);
    buf[n] = 0;
    *data = buf;
    *len = n;
    return GQ_OK;
}

static int load_json(reader *r, const char *data, size_t len) {
    json_error_t je;
    json_t *v = json_loadb(data, len, 0, &je);
    if (!v) return gq_err(GQ_ERR_DATA, "%s:%d:%d: not valid JSON: %s", r->o->path, je.line, je.column, je.text);
    int rc = GQ_OK;
    if (!json_is_array(v)) {
        rc = gq_err(GQ_ERR_DATA,
                    "%s: expected a JSON array of objects or strings, got %s (JSON lines need the "
                    ".jsonl extension or --questions-format jsonl)",
                    r->o->path, gq_json_kind(v));
    } else {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (full(r)) break;
            char where[1100];
            snprintf(where, sizeof where, "%s[%zu]", r->o->path, i);
            if ((rc = take(r, e, where))) break;
        }
    }
    json_decref(v);
    return rc;
}

/* the block data[a..b) with "\r\n" normalised to "\n" */
static void add_block(reader *r, const char *data, size_t a, size_t b, long line) {
    char *t = gq_malloc(b - a + 1), where[1100];
    size_t k = 0;
    for (size_t i = a; i < b; i++)
        if (!(data[i] == '\r' && i + 1 < b && data[i + 1] == '\n')) t[k++] = data[i];
    t[k] = 0;
    snprintf(where, sizeof where, "%s:%ld", r->o->path, line);
    add(r, t, k, where);
}

/* lines (blocks = 0) or blank-line separated blocks (blocks = 1) */
static int load_text(reader *r, const char *data, size_t len, int blocks) {
    const char *nul = memchr(data, 0, len);
    if (nul) {
        long line = 1;
        for (const char *p = data; p < nul; p++) line += *p == '\n';
        return gq_err(GQ_ERR_DATA, "%s:%ld: NUL byte: expected a text file", r->o->path, line);
    }
    size_t pos = 0, bstart = 0, bend = 0;
    long lineno = 0, bline = 0;
    int in_block = 0;
    while (pos < len && !full(r)) {
        size_t e = pos;
        while (e < len && data[e] != '\n') e++;
        lineno++;
        size_t le = e > pos && data[e - 1] == '\r' ? e - 1 : e;
        int blank = is_blank(data + pos, le - pos);
        if (!blocks) {
            if (!blank) {
                char where[1100];
                snprintf(where, sizeof where, "%s:%ld", r->o->path, lineno);
                add(r, dup_n(data + pos, le - pos), le - pos, where);
            }
        } else if (!blank) {
            if (!in_block) {
                in_block = 1;
                bstart = pos;
                bline = lineno;
            }
            bend = le;
        } else if (in_block) {
            add_block(r, data, bstart, bend, bline);
            in_block = 0;
        }
        pos = e + 1;
    }
    if (in_block && !full(r)) add_block(r, data, bstart, bend, bline);
    return GQ_OK;
}

static int ends_with(const char *s, size_t n, const char *suf) {
    size_t m = strlen(suf);
    return n >= m && !strncmp(s + n - m, suf, m);
}

int gq_questions_load(gq_questions *out, const gq_questions_opts *o) {
    memset(out, 0, sizeof *out);
    if (!o->path) return gq_err(GQ_ERR_ARG, "questions: no file given");
    if (o->limit < 0) return gq_err(GQ_ERR_ARG, "questions: limit must be >= 0, got %d", o->limit);
    reader r = {.o = o, .q = out, .input = o->input_field ? o->input_field : "input"};
    gq_questions_format f = o->format;
    size_t plen = strlen(o->path);
    if (ends_with(o->path, plen, ".gz")) plen -= 3;
    if (f == GQ_QUESTIONS_AUTO) {
        if (ends_with(o->path, plen, ".jsonl") || ends_with(o->path, plen, ".ndjson"))
            f = GQ_QUESTIONS_JSONL;
        else if (ends_with(o->path, plen, ".txt"))
            f = GQ_QUESTIONS_LINES;
    }
    int rc;
    if (f == GQ_QUESTIONS_JSONL) {
        out->format = f;
        rc = load_jsonl(&r);
    } else {
        char *data = NULL;
        size_t len = 0;
        rc = read_all(o->path, &data, &len);
        if (rc) return rc;
        if (f == GQ_QUESTIONS_AUTO) {
            size_t i = 0;
            while (i < len && is_blank(data + i, 1)) i++;
            f = i < len && data[i] == '['                       ? GQ_QUESTIONS_JSON
                : i < len && (data[i] == '{' || data[i] == '"') ? GQ_QUESTIONS_JSONL
                                                                : GQ_QUESTIONS_LINES;
        }
        out->format = f;
        if (f == GQ_QUESTIONS_JSON)
            rc = load_json(&r, data, len);
        else if (f == GQ_QUESTIONS_JSONL)
            rc = GQ_OK; /* streamed below */
        else
            rc = load_text(&r, data, len, f == GQ_QUESTIONS_BLOCKS);
        free(data);
        if (!rc && f == GQ_QUESTIONS_JSONL) rc = load_jsonl(&r);
    }
    if (!rc && out->n == 0)
        rc = gq_err(GQ_ERR_DATA, "%s: no questions found (%s format%s%s, %d empty skipped)", o->path,
                    gq_questions_format_name(out->format), out->field[0] ? ", field " : "", out->field, out->n_empty);
    if (rc) gq_questions_free(out);
    return rc;
}
