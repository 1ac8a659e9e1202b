/* eval_task.c -- the HumanEval and MBPP tasks of `gq eval` (gq/eval.h): loading, prompts, stop
 * sequences, programs, the broken control, pass@k and the outcome of a run. */
#include <ctype.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "gq/calib.h"
#include "gq/datadir.h"
#include "gq/eval.h"

/* ---- strings ---------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = gq_realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) {
    sb_add(b, s, strlen(s));
}

static void sb_fmt(sbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void sb_fmt(sbuf *b, const char *fmt, ...) {
    va_list ap, aq;
    va_start(ap, fmt);
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *t = gq_malloc((size_t)n + 1);
    vsnprintf(t, (size_t)n + 1, fmt, aq);
    va_end(aq);
    sb_add(b, t, (size_t)n);
    free(t);
}

static char *sb_take(sbuf *b) {
    if (!b->p) sb_add(b, "", 0);
    return b->p;
}

/* ---- tasks ------------------------------------------------------------------------------ */

int gq_eval_task_parse(const char *s, gq_eval_task_kind *out) {
    if (s && !strcmp(s, "humaneval")) {
        *out = GQ_EVAL_HUMANEVAL;
        return GQ_OK;
    }
    if (s && !strcmp(s, "mbpp")) {
        *out = GQ_EVAL_MBPP;
        return GQ_OK;
    }
    return gq_err(GQ_ERR_ARG, "--task: expected humaneval or mbpp, got '%s'", s ? s : "(none)");
}

const char *gq_eval_task_name(gq_eval_task_kind k) {
    return k == GQ_EVAL_MBPP ? "mbpp" : "humaneval";
}

const char *gq_eval_task_default_path(gq_eval_task_kind k) {
    return k == GQ_EVAL_MBPP ? "calib/eval/mbpp/mbpp.jsonl" : "calib/eval/humaneval/HumanEval.jsonl.gz";
}

static const char *field_str(json_t *o, const char *name) {
    json_t *v = json_object_get(o, name);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* the test calls name( (not as a method or part of another name) */
static int calls(const char *test, const char *name) {
    size_t n = strlen(name);
    for (const char *q = test; (q = strstr(q, name)) != NULL; q++)
        if (q[n] == '(' && (q == test || !(isalnum((unsigned char)q[-1]) || q[-1] == '_' || q[-1] == '.'))) return 1;
    return 0;
}

/* MBPP: the function the tests call, a `def NAME(` of the code that the first test calls (else the first) */
static char *mbpp_entry(const char *code, const char *test) {
    char *first = NULL;
    for (const char *p = code; (p = strstr(p, "def ")) != NULL; p += 4) {
        if (p != code && p[-1] != '\n' && p[-1] != ' ' && p[-1] != '\t') continue;
        const char *s = p + 4, *e = s;
        while (isalnum((unsigned char)*e) || *e == '_') e++;
        const char *paren = e;
        while (*paren == ' ' || *paren == '\t') paren++;
        if (e == s || *paren != '(') continue;
        char *name = gq_malloc((size_t)(e - s) + 1);
        memcpy(name, s, (size_t)(e - s));
        name[e - s] = 0;
        if (calls(test, name)) {
            free(first);
            return name;
        }
        if (!first)
            first = name;
        else
            free(name);
    }
    return first ? first : gq_strdup("");
}

static int load_humaneval(gq_eval_problem *p, json_t *o) {
    const char *id = field_str(o, "task_id"), *prompt = field_str(o, "prompt"),
               *sol = field_str(o, "canonical_solution");
    const char *test = field_str(o, "test"), *entry = field_str(o, "entry_point");
    if (!id || !prompt || !sol || !test || !entry) return 0;
    p->task_id = gq_strdup(id);
    p->prompt = gq_strdup(prompt);
    p->canonical = gq_strdup(sol);
    p->entry_point = gq_strdup(entry);
    sbuf b = {0};
    sb_fmt(&b, "\n%s\ncheck(%s)\n", test, entry);
    p->tests = sb_take(&b);
    sbuf q = {0};
    sb_fmt(&q,
           "Complete the following Python function. Write the whole function, with the imports it needs, in one "
           "Python markdown code block.\n\n```python\n%s```",
           prompt);
    p->question = sb_take(&q);
    return 1;
}

/* 1: loaded, 0: bad record, -1: not in the test split */
static int load_mbpp(gq_eval_problem *p, json_t *o) {
    json_t *id = json_object_get(o, "task_id"), *tl = json_object_get(o, "test_list");
    const char *text = field_str(o, "text"), *code = field_str(o, "code"), *setup = field_str(o, "test_setup_code");
    if (!json_is_integer(id) || !json_is_array(tl) || !json_array_size(tl) || !text || !code) return 0;
    json_int_t tid = json_integer_value(id);
    if (tid < 11 || tid > 510) return -1;
    sbuf tests = {0};
    size_t i;
    json_t *t;
    json_array_foreach(tl, i, t) {
        if (!json_is_string(t)) {
            free(tests.p);
            return 0;
        }
    }
    const char *t0 = json_string_value(json_array_get(tl, 0));
    sb_fmt(&tests, "\n%s\n", setup ? setup : "");
    json_array_foreach(tl, i, t) sb_fmt(&tests, "%s\n", json_string_value(t));
    char idb[32];
    snprintf(idb, sizeof idb, "MBPP/%lld", (long long)tid);
    p->task_id = gq_strdup(idb);
    sbuf pr = {0};
    sb_fmt(&pr, "\"\"\"\n%s\n%s\n\"\"\"\n", text, t0);
    p->prompt = sb_take(&pr);
    sbuf q = {0};
    sb_fmt(&q, "%s\nYour code should pass this test:\n\n%s\n\nWrite the Python code in one Python markdown code block.",
           text, t0);
    p->question = sb_take(&q);
    p->canonical = gq_strdup(code);
    p->tests = sb_take(&tests);
    p->entry_point = mbpp_entry(code, t0);
    return 1;
}

static void problem_free(gq_eval_problem *p) {
    free(p->task_id);
    free(p->prompt);
    free(p->gen_prompt);
    free(p->question);
    free(p->canonical);
    free(p->tests);
    free(p->entry_point);
}

int gq_eval_task_load(gq_eval_task *t, gq_eval_task_kind kind, const char *path, int limit) {
    memset(t, 0, sizeof *t);
    t->kind = kind;
    if (path) {
        t->path = gq_strdup(path);
    } else {
        t->path = gq_data_path(gq_eval_task_default_path(kind));
        if (!t->path) return gq_data_not_found(gq_eval_task_default_path(kind));
    }
    gq_jsonl *j = NULL;
    int rc = gq_jsonl_open(&j, t->path);
    if (rc) {
        gq_eval_task_free(t);
        t->kind = kind;
        return rc;
    }
    int cap = 0;
    const char *line;
    size_t len;
    long lineno;
    while ((rc = gq_jsonl_next(j, &line, &len, &lineno)) == 1) {
        if (limit > 0 && t->n >= limit) break;
        json_error_t je;
        json_t *o = json_loadb(line, len, 0, &je);
        if (!json_is_object(o)) {
            json_decref(o);
            rc = gq_err(GQ_ERR_DATA, "%s:%ld: expected a JSON object%s%s", t->path, lineno, o ? "" : ": ",
                        o ? "" : je.text);
            break;
        }
        if (t->n == cap) {
            cap = cap ? 2 * cap : 256;
            t->p = gq_realloc(t->p, (size_t)cap * sizeof *t->p);
        }
        gq_eval_problem *p = &t->p[t->n];
        memset(p, 0, sizeof *p);
        int ok = kind == GQ_EVAL_HUMANEVAL ? load_humaneval(p, o) : load_mbpp(p, o);
        json_decref(o);
        if (ok == 0) {
            rc = gq_err(GQ_ERR_DATA, "%s:%ld: expected a %s record (%s)", t->path, lineno, gq_eval_task_name(kind),
                        kind == GQ_EVAL_HUMANEVAL ? "task_id, prompt, canonical_solution, test, entry_point"
                                                  : "task_id, text, code, test_setup_code, test_list");
            break;
        }
        if (ok > 0) {
            size_t n = strlen(p->prompt);
            while (n && (p->prompt[n - 1] == ' ' || p->prompt[n - 1] == '\t' || p->prompt[n - 1] == '\n' ||
                         p->prompt[n - 1] == '\r'))
                n--;
            p->gen_prompt = gq_malloc(n + 1);
            memcpy(p->gen_prompt, p->prompt, n);
            p->gen_prompt[n] = 0;
            t->n++;
        }
    }
    gq_jsonl_close(j);
    if (rc < 0) {
        gq_eval_task_free(t);
        return rc;
    }
    if (t->n == 0) {
        int r = gq_err(GQ_ERR_DATA, "%s: no %s problems found%s", t->path, gq_eval_task_name(kind),
                       kind == GQ_EVAL_MBPP ? " (MBPP: the test split, task_id 11..510)" : "");
        gq_eval_task_free(t);
        return r;
    }
    return GQ_OK;
}

void gq_eval_task_free(gq_eval_task *t) {
    for (int i = 0; i < t->n; i++) problem_free(&t->p[i]);
    free(t->p);
    free(t->path);
    memset(t, 0, sizeof *t);
}

int gq_eval_task_find(const gq_eval_task *t, const char *id) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->p[i].task_id, id)) return i;
    if (t->kind == GQ_EVAL_MBPP) {
        const char *num = id;
        if (!strncmp(id, "Mbpp/", 5) || !strncmp(id, "mbpp/", 5)) num = id + 5;
        char b[64];
        snprintf(b, sizeof b, "MBPP/%s", num);
        for (int i = 0; i < t->n; i++)
            if (!strcmp(t->p[i].task_id, b)) return i;
    }
    return -1;
}

/* ---- completions and programs --------------------------------------------------------------- */

static const char *const he_stops[] = {"\nclass", "\ndef", "\n#", "\n@", "\nif", "\nprint", "\n```", NULL};
static const char *const mbpp_stops[] = {"\nclass", "\nassert", "\n\"\"\"", "\nprint", "\nif", "\n```", NULL};

const char *const *gq_eval_stops(gq_eval_task_kind k) {
    return k == GQ_EVAL_MBPP ? mbpp_stops : he_stops;
}

int gq_eval_truncate(char *text, const char *const *stops) {
    char *cut = NULL;
    for (int i = 0; stops[i]; i++) {
        char *p = strstr(text, stops[i]);
        if (p && (!cut || p < cut)) cut = p;
    }
    if (!cut) return 0;
    *cut = 0;
    return 1;
}

int gq_eval_chat_cut(char *text) {
    char *o = strstr(text, "```");
    char *body = o ? strchr(o + 3, '\n') : NULL;
    char *c = body ? strstr(body + 1, "```") : NULL;
    if (!c || !c[3]) return 0;
    c[3] = 0;
    return 1;
}

char *gq_eval_chat_code(const char *answer) {
    const char *o = strstr(answer, "```");
    if (!o) return gq_strdup(answer);
    const char *body = strchr(o + 3, '\n');
    if (!body) return gq_strdup("");
    body++;
    const char *c = strstr(body, "```");
    size_t n = c ? (size_t)(c - body) : strlen(body);
    char *r = gq_malloc(n + 1);
    memcpy(r, body, n);
    r[n] = 0;
    return r;
}

/* code defines the entry point at the start of a line */
static int defines(const char *code, const char *name) {
    size_t n = strlen(name);
    if (!n) return 0;
    for (const char *p = code; (p = strstr(p, "def ")) != NULL; p += 4) {
        const char *ls = p;
        while (ls > code && (ls[-1] == ' ' || ls[-1] == '\t')) ls--;
        if (ls != code && ls[-1] != '\n') continue;
        if (!strncmp(p + 4, name, n) && (p[4 + n] == '(' || p[4 + n] == ' ')) return 1;
    }
    return 0;
}

char *gq_eval_program(const gq_eval_task *t, int i, const char *completion, gq_eval_form form) {
    const gq_eval_problem *p = &t->p[i];
    sbuf b = {0};
    if (form == GQ_EVAL_CHAT_CODE && t->kind == GQ_EVAL_MBPP) {
        sb_str(&b, completion);
    } else {
        sb_str(&b, form == GQ_EVAL_CONTINUES_GEN_PROMPT ? p->gen_prompt : p->prompt);
        if (form == GQ_EVAL_CHAT_CODE && defines(completion, p->entry_point)) sb_str(&b, "\n");
        sb_str(&b, completion);
    }
    sb_str(&b, "\n");
    sb_str(&b, p->tests);
    return sb_take(&b);
}

char *gq_eval_broken_program(const gq_eval_task *t, int i) {
    const gq_eval_problem *p = &t->p[i];
    sbuf b = {0};
    sb_str(&b, p->prompt);
    sb_str(&b, p->canonical);
    sb_fmt(&b,
           "\n\n"
           "def _gq_perturb(r):\n"
           "    if isinstance(r, bool):\n"
           "        return not r\n"
           "    if isinstance(r, (int, float, complex)):\n"
           "        return r * 2 + 1\n"
           "    if isinstance(r, str):\n"
           "        return r + '~'\n"
           "    if isinstance(r, list):\n"
           "        return r + [None]\n"
           "    if isinstance(r, tuple):\n"
           "        return r + (None,)\n"
           "    if isinstance(r, (set, frozenset)):\n"
           "        return type(r)(list(r) + [('~',)])\n"
           "    if isinstance(r, dict):\n"
           "        d = dict(r)\n"
           "        d[('~',)] = None\n"
           "        return d\n"
           "    if r is None:\n"
           "        return 1\n"
           "    return None\n"
           "_gq_real = %s\n"
           "def %s(*a, **k):\n"
           "    return _gq_perturb(_gq_real(*a, **k))\n",
           p->entry_point, p->entry_point);
    sb_str(&b, "\n");
    sb_str(&b, p->tests);
    return sb_take(&b);
}

/* ---- scores -------------------------------------------------------------------------------------- */

double gq_eval_pass_at_k(int n, int c, int k) {
    if (k <= 0 || n <= 0) return 0.0;
    if (n - c < k) return 1.0;
    double prod = 1.0;
    for (int i = n - c + 1; i <= n; i++) prod *= 1.0 - (double)k / (double)i;
    return 1.0 - prod;
}

static const char *const outcome_names[GQ_EVAL_N_OUTCOMES] = {"passed",  "assertion", "exception", "syntax",
                                                              "timeout", "cpu",       "memory",    "output",
                                                              "killed",  "exit",      "sandbox",   "too_long"};

const char *gq_eval_outcome_name(gq_eval_outcome o) {
    return o >= 0 && o < GQ_EVAL_N_OUTCOMES ? outcome_names[o] : "?";
}

int gq_eval_outcome_parse(const char *s) {
    for (int i = 0; i < GQ_EVAL_N_OUTCOMES; i++)
        if (!strcmp(s, outcome_names[i])) return i;
    return -1;
}

/* the last line of out that looks like "Name: message" or "Name" (an exception) after a traceback's
 * "  File ..." line, into line */
static int exception_line(const char *out, size_t n, char *line, size_t cap) {
    size_t end = n;
    while (end > 0) {
        while (end > 0 && (out[end - 1] == '\n' || out[end - 1] == '\r')) end--;
        size_t start = end;
        while (start > 0 && out[start - 1] != '\n') start--;
        const char *s = out + start;
        size_t len = end - start;
        size_t k = 0;
        if (len && (isalpha((unsigned char)s[0]) || s[0] == '_')) {
            while (k < len && (isalnum((unsigned char)s[k]) || s[k] == '_' || s[k] == '.')) k++;
            /* a traceback (or a SyntaxError's "  File ..." lines) comes before it */
            int traced = 0;
            for (const char *q = out; q < s && !traced; q++)
                traced = (q == out || q[-1] == '\n') &&
                         (!strncmp(q, "  File \"", 8) || !strncmp(q, "Traceback (most recent call last):", 34));
            if ((k == len || s[k] == ':') && traced) {
                size_t m = len < cap - 1 ? len : cap - 1;
                memcpy(line, s, m);
                line[m] = 0;
                return (int)k; /* the name's length */
            }
        }
        if (start == 0) break;
        end = start;
    }
    return 0;
}

gq_eval_outcome gq_eval_classify(const gq_sb_result *r, const gq_sb_opts *o, char *detail, size_t cap) {
    char tmp[256];
    if (!detail) {
        detail = tmp;
        cap = sizeof tmp;
    }
    detail[0] = 0;
    if (r->setup_errno) {
        snprintf(detail, cap, "%s", r->out ? r->out : "sandbox setup failed");
        return GQ_EVAL_SANDBOX;
    }
    if (r->timed_out) {
        snprintf(detail, cap, "wall-clock limit %g s", o->wall_s);
        return GQ_EVAL_TIMEOUT;
    }
    if (r->out_limited) {
        snprintf(detail, cap, "more than %zu bytes of output", o->fsize_bytes);
        return GQ_EVAL_OUTPUT;
    }
    if (r->exited && r->exit_code == 0) return GQ_EVAL_PASSED;
    if (r->signal) {
        if (r->signal == SIGXCPU || (r->signal == SIGKILL && o->cpu_s > 0 && r->cpu_s >= o->cpu_s - 0.05)) {
            snprintf(detail, cap, "CPU time limit %g s", o->cpu_s);
            return GQ_EVAL_CPU;
        }
        if (r->signal == SIGXFSZ) {
            snprintf(detail, cap, "file size limit %zu bytes", o->fsize_bytes);
            return GQ_EVAL_OUTPUT;
        }
        snprintf(detail, cap, "killed by signal %d (%s)", r->signal, strsignal(r->signal));
        return GQ_EVAL_KILLED;
    }
    char line[256];
    int k = exception_line(r->out ? r->out : "", r->out_n, line, sizeof line);
    if (!k) {
        snprintf(detail, cap, "exit status %d", r->exit_code);
        return GQ_EVAL_EXIT;
    }
    snprintf(detail, cap, "%s", line);
    const char *name = line;
    const char *dot = memchr(line, '.', (size_t)k); /* module-qualified names: the last part */
    while (dot) {
        name = dot + 1;
        dot = memchr(name, '.', (size_t)(line + k - name));
    }
    size_t nl = (size_t)(line + k - name);
#define IS(s) (nl == strlen(s) && !strncmp(name, s, nl))
    if (IS("AssertionError")) return GQ_EVAL_ASSERTION;
    if (IS("SyntaxError") || IS("IndentationError") || IS("TabError")) return GQ_EVAL_SYNTAX;
    if (IS("MemoryError")) return GQ_EVAL_MEMORY;
#undef IS
    return GQ_EVAL_EXCEPTION;
}
