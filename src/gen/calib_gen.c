/* calib_gen.c -- `gq calib` as a library call (gq/calib_gen.h): questions ->
 * prompts -> generation -> quality controls -> batched, crash-safe JSONL. */
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "gq/calib_gen.h"

void gq_calib_gen_opts_default(gq_calib_gen_opts *o) {
    memset(o, 0, sizeof *o);
    gq_gen_sampling_default(&o->sampling);
    o->batch = 16;
    o->device = "auto";
    o->precision = "auto";
    o->int4_kernel = GQ_Q4_AUTO;
    o->qformat = GQ_QUESTIONS_AUTO;
    o->template_spec = "raw";
    o->min_answer_tokens = 8;
    o->degenerate_period = 64; /* repeated lines of code are periods of 10-60 tokens */
}

/* ---- small helpers ------------------------------------------------------------------ */

/* Valid UTF-8 copy of s[0..n): each invalid byte becomes U+FFFD, as Python's
 * decode(errors="replace") (and so the tokenizers' decode) does. */
static char *utf8_clean(const char *s, size_t n, size_t *out_n) {
    const unsigned char *u = (const unsigned char *)s;
    char *o = gq_malloc(3 * n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char b = u[i];
        size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
        int ok = len && i + len <= n && b != 0;
        uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1Fu) : len == 3 ? (b & 0x0Fu) : (b & 0x07u);
        for (size_t j = 1; ok && j < len; j++) {
            ok = (u[i + j] & 0xC0) == 0x80;
            cp = (cp << 6) | (u[i + j] & 0x3Fu);
        }
        if (ok && ((len == 2 && cp < 0x80) || (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
                   (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))))
            ok = 0;
        if (ok) {
            memcpy(o + k, s + i, len);
            k += len;
            i += len;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    o[k] = 0;
    *out_n = k;
    return o;
}

static int blank(const char *s) {
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r' && *s != '\f' && *s != '\v') return 0;
    return 1;
}

/* a set of strings (answers), open addressing on FNV-1a */
typedef struct {
    uint64_t *h;
    char **s;
    size_t cap, n;
} strset;

static uint64_t fnv(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h | 1; /* 0 marks an empty bucket */
}

/* 1 if s was already there; else added (copied) */
static int strset_add(strset *t, const char *s) {
    if (2 * (t->n + 1) > t->cap) {
        strset old = *t;
        t->cap = old.cap ? 2 * old.cap : 256;
        t->h = gq_calloc(t->cap, sizeof *t->h);
        t->s = gq_calloc(t->cap, sizeof *t->s);
        t->n = 0;
        for (size_t i = 0; i < old.cap; i++)
            if (old.h[i]) {
                size_t j = old.h[i] & (t->cap - 1);
                while (t->h[j]) j = (j + 1) & (t->cap - 1);
                t->h[j] = old.h[i];
                t->s[j] = old.s[i];
                t->n++;
            }
        free(old.h);
        free(old.s);
    }
    uint64_t h = fnv(s);
    size_t j = h & (t->cap - 1);
    while (t->h[j]) {
        if (t->h[j] == h && !strcmp(t->s[j], s)) return 1;
        j = (j + 1) & (t->cap - 1);
    }
    t->h[j] = h;
    t->s[j] = gq_strdup(s);
    t->n++;
    return 0;
}

static void strset_free(strset *t) {
    for (size_t i = 0; i < t->cap; i++) free(t->s[i]);
    free(t->h);
    free(t->s);
}


/* ---- the run ---------------------------------------------------------------------------- */

enum { D_NONE = 0, D_DONE = 1, D_TOO_LONG = 2 };

typedef struct {
    const gq_calib_gen_opts *o;
    gq_calib_gen_report *rep;
    const gq_tokenizer *tok;
    gq_questions q;
    gq_ids *ids;   /* [nq] prompt ids */
    char **prompt; /* [nq] prompt text as read by the model, without a leading bos string */
    char *state;   /* [nq] D_* */
    strset answers;
    int *lens; /* answer lengths of every record of the file */
    size_t nlens, caplens;
    gq_calib_gen_out *out, *side;
    char *side_path;
    gq_linebuf rec, drop; /* the batch being collected */
    long done_run, pending;
    double t0;
    const char *scan_path; /* for messages */
    gq_backend *be;        /* made first: a bad --device or --precision is refused before any loading */
} run_ctx;

static void add_len(run_ctx *c, int m) {
    if (c->nlens == c->caplens) {
        c->caplens = c->caplens ? 2 * c->caplens : 256;
        c->lens = gq_realloc(c->lens, c->caplens * sizeof *c->lens);
    }
    c->lens[c->nlens++] = m;
}

/* --resume: one record of the existing output */
static int scan_record(const char *line, size_t len, long lineno, void *user) {
    run_ctx *c = user;
    json_error_t je;
    json_t *v = json_loadb(line, len, 0, &je);
    int rc = GQ_OK;
    json_t *ix = v ? json_object_get(v, "index") : NULL, *q = v ? json_object_get(v, "question") : NULL;
    json_t *a = v ? json_object_get(v, "answer") : NULL, *m = v ? json_object_get(v, "answer_tokens") : NULL;
    if (!v || !json_is_integer(ix) || !json_is_string(q) || !json_is_string(a) || !json_is_integer(m)) {
        rc = gq_err(GQ_ERR_DATA,
                    "%s:%ld: expected a gq calib record {\"question\", \"answer\", \"answer_tokens\", "
                    "\"index\", ...}%s%s",
                    c->scan_path, lineno, v ? "" : ": not valid JSON: ", v ? "" : je.text);
    } else {
        json_int_t i = json_integer_value(ix);
        if (i < 0 || i >= c->q.n) {
            rc = gq_err(GQ_ERR_DATA, "%s:%ld: index %lld is outside the %d questions of %s (other --questions or --n?)",
                        c->scan_path, lineno, (long long)i, c->q.n, c->o->questions);
        } else if (c->state[i] == D_DONE) {
            rc = gq_err(GQ_ERR_DATA, "%s:%ld: index %lld appears twice", c->scan_path, lineno, (long long)i);
        } else if (strcmp(json_string_value(q), c->prompt[i])) {
            rc = gq_err(GQ_ERR_DATA,
                        "%s:%ld: the question of index %lld differs from %s (made with other --questions, "
                        "--field or --template options?)",
                        c->scan_path, lineno, (long long)i, c->q.where[i]);
        } else {
            c->state[i] = D_DONE;
            c->rep->n_done_before++;
            strset_add(&c->answers, json_string_value(a));
            add_len(c, (int)json_integer_value(m));
            c->rep->n_total++;
        }
    }
    json_decref(v);
    return rc;
}

/* --resume: one line of the dropped list */
static int scan_dropped(const char *line, size_t len, long lineno, void *user) {
    run_ctx *c = user;
    json_t *v = json_loadb(line, len, 0, NULL), *ix = v ? json_object_get(v, "index") : NULL;
    int rc = GQ_OK;
    if (!json_is_integer(ix) || json_integer_value(ix) < 0 || json_integer_value(ix) >= c->q.n) {
        rc = gq_err(GQ_ERR_DATA, "%s:%ld: expected {\"index\": i, \"reason\": ...} with 0 <= i < %d", c->scan_path,
                    lineno, c->q.n);
    } else if (c->state[json_integer_value(ix)] != D_DONE) {
        c->state[json_integer_value(ix)] = D_DONE;
        c->rep->n_done_before++;
    }
    json_decref(v);
    return rc;
}

static int flush_batch(run_ctx *c) {
    int rc = gq_calib_gen_out_write(c->out, c->rec.p, c->rec.n);
    if (rc == GQ_OK) rc = gq_calib_gen_out_write(c->side, c->drop.p, c->drop.n);
    int k = c->rec.count + c->drop.count;
    c->rec.n = c->drop.n = 0;
    c->rec.count = c->drop.count = 0;
    if (rc || !k) return rc;
    char eta[96];
    double el = gq_now() - c->t0;
    gq_eta_str(eta, sizeof eta, (int)c->done_run, (int)c->pending, c->t0);
    gq_info("[%ld/%ld] %ld kept, %ld dropped | %.1f tokens/s | %s", c->done_run, c->pending, c->rep->n_written,
            c->done_run - c->rep->n_written, el > 0 ? (double)c->rep->gen_tokens / el : 0.0, eta);
    return GQ_OK;
}

static void drop(run_ctx *c, int index, const char *reason, long *counter) {
    char line[128];
    snprintf(line, sizeof line, "{\"index\": %d, \"reason\": \"%s\"}", index, reason);
    gq_linebuf_add(&c->drop, line);
    (*counter)++;
}

static int on_done(gq_gen_seq *s, int k, void *user) {
    run_ctx *c = user;
    (void)k;
    int index = (int)s->stream;
    int m = (int)s->out.n;
    c->rep->n_generated++;
    c->rep->gen_tokens += m;
    c->done_run++;
    char *raw = NULL, *ans;
    size_t raw_n = 0, ans_n;
    /* the answer continues its prompt: decoded alone, a leading space of it would be
     * stripped as the start of a text by SentencePiece-style decoders */
    int rc = gq_tok_decode_continuation(c->tok, s->prompt, (size_t)s->n_prompt, s->out.v, s->out.n, 1, &raw, &raw_n);
    if (rc) return gq_err_prefix("question %d (%s): decoding the answer", index, c->q.where[index]);
    ans = utf8_clean(raw, raw_n, &ans_n);
    free(raw);
    int cov;
    if (blank(ans)) {
        drop(c, index, "empty", &c->rep->n_empty);
    } else if (m < c->o->min_answer_tokens) {
        drop(c, index, "short", &c->rep->n_short);
    } else if (c->o->degenerate_period > 0 && gq_gen_degenerate(s->out.v, m, c->o->degenerate_period, 0.5, &cov)) {
        drop(c, index, "degenerate", &c->rep->n_degenerate);
    } else if (strset_add(&c->answers, ans)) {
        drop(c, index, "duplicate", &c->rep->n_duplicate);
    } else {
        json_t *r = json_object();
        json_object_set_new(r, "question", json_string(c->prompt[index]));
        json_object_set_new(r, "answer", json_stringn(ans, ans_n));
        json_object_set_new(r, "prompt_tokens", json_integer((json_int_t)c->ids[index].n));
        json_object_set_new(r, "answer_tokens", json_integer(m));
        json_object_set_new(r, "index", json_integer(index));
        json_object_set_new(r, "finish", json_string(gq_gen_finish_name(s->finish)));
        if (strcmp(c->prompt[index], c->q.text[index]))
            json_object_set_new(r, "raw_question", json_string(c->q.text[index]));
        char *line = json_dumps(r, JSON_COMPACT);
        gq_linebuf_add(&c->rec, line);
        free(line);
        json_decref(r);
        c->rep->n_written++;
        c->rep->n_total++;
        if (s->finish == GQ_GEN_FINISH_EOS)
            c->rep->n_eos++;
        else
            c->rep->n_length++;
        add_len(c, m);
    }
    free(ans);
    gq_gen_seq_free(s);
    if (c->rec.count + c->drop.count >= c->o->batch) return flush_batch(c);
    return GQ_OK;
}

static int cmp_int(const void *a, const void *b) {
    return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

static void length_stats(run_ctx *c) {
    gq_calib_gen_report *r = c->rep;
    if (!c->nlens) return;
    qsort(c->lens, c->nlens, sizeof *c->lens, cmp_int);
    double sum = 0;
    for (size_t i = 0; i < c->nlens; i++) sum += c->lens[i];
    r->len_min = c->lens[0];
    r->len_max = c->lens[c->nlens - 1];
    r->len_mean = sum / (double)c->nlens;
    size_t h = c->nlens / 2;
    r->len_median = c->nlens % 2 ? c->lens[h] : 0.5 * (c->lens[h - 1] + c->lens[h]);
}

static int check_opts(const gq_calib_gen_opts *o) {
    if (!o->model_dir || !o->questions || !o->out)
        return gq_err(GQ_ERR_ARG, "--model, --questions and --out are required");
    if (o->batch < 1) return gq_err(GQ_ERR_ARG, "--batch: expected >= 1, got %d", o->batch);
    if (o->n < 0) return gq_err(GQ_ERR_ARG, "--n: expected >= 0 (0 = all), got %d", o->n);
    if (o->min_answer_tokens < 0)
        return gq_err(GQ_ERR_ARG, "--min-answer-tokens: expected >= 0, got %d", o->min_answer_tokens);
    if (o->degenerate_period < 0)
        return gq_err(GQ_ERR_ARG, "--degenerate-period: expected >= 0 (0: off), got %d", o->degenerate_period);
    if (o->threads < 0) return gq_err(GQ_ERR_ARG, "--threads: expected >= 0, got %d", o->threads);
    if (o->max_len < 0) return gq_err(GQ_ERR_ARG, "--max-len: expected >= 0, got %d", o->max_len);
    return gq_gen_sampling_check(&o->sampling);
}

/* Questions, prompts, resume state: everything before the model runs. */
static int prepare(run_ctx *c, gq_prompt *pt, const gq_model *m) {
    const gq_calib_gen_opts *o = c->o;
    gq_questions_opts qo;
    gq_questions_opts_default(&qo);
    qo.path = o->questions;
    qo.format = o->qformat;
    qo.field = o->field;
    qo.input_field = o->input_field;
    qo.limit = o->n;
    int rc = gq_questions_load(&c->q, &qo);
    if (rc) return rc;
    int nq = c->q.n;
    c->rep->n_questions = nq;
    gq_info("%d questions from %s (%s%s%s%s)", nq, o->questions, gq_questions_format_name(c->q.format),
            c->q.field[0] ? ", field \"" : "", c->q.field, c->q.field[0] ? "\"" : "");
    if (c->q.n_empty) gq_warn("%s: %d empty questions skipped", o->questions, c->q.n_empty);
    c->ids = gq_calloc((size_t)nq, sizeof *c->ids);
    c->prompt = gq_calloc((size_t)nq, sizeof *c->prompt);
    c->state = gq_calloc((size_t)nq, 1);
    for (int i = 0; i < nq && rc == GQ_OK; i++) {
        rc = gq_prompt_encode(pt, c->tok, c->q.text[i], &c->ids[i], &c->prompt[i]);
        if (rc) {
            gq_err_prefix("%s", c->q.where[i]);
            break;
        }
        /* the texts as they will be stored (valid UTF-8), for records and --resume checks */
        size_t n;
        char *t = utf8_clean(c->prompt[i], strlen(c->prompt[i]), &n);
        free(c->prompt[i]);
        c->prompt[i] = t;
        t = utf8_clean(c->q.text[i], strlen(c->q.text[i]), &n);
        free(c->q.text[i]);
        c->q.text[i] = t;
        if ((int)c->ids[i].n >= m->cfg.max_pos) {
            c->state[i] = D_TOO_LONG;
            c->rep->n_too_long++;
            gq_warn("%s: prompt of %zu tokens leaves no room within max_position_embeddings %d: skipped", c->q.where[i],
                    c->ids[i].n, m->cfg.max_pos);
        }
    }
    if (rc) return rc;
    int exists = gq_path_exists(o->out);
    if (exists && !o->resume && !o->force)
        return gq_err(GQ_ERR_EXISTS, "%s exists: --resume continues it, --force replaces it", o->out);
    if (o->resume && exists) {
        size_t cut = 0;
        c->scan_path = o->out;
        rc = gq_calib_gen_out_scan(o->out, scan_record, c, &cut);
        if (rc == GQ_OK && cut)
            gq_warn("%s: cut a torn batch of %zu bytes at the end (an interrupted write)", o->out, cut);
        c->scan_path = c->side_path;
        if (rc == GQ_OK) rc = gq_calib_gen_out_scan(c->side_path, scan_dropped, c, &cut);
        if (rc == GQ_OK)
            gq_info("resume: %ld of %d questions already done (%ld records in %s)", c->rep->n_done_before, nq,
                    c->rep->n_total, o->out);
    }
    return rc;
}

/* Load the model onto the device and answer the pending questions seqs[0..npend). */
static int generate_all(run_ctx *c, const gq_model *m, gq_gen_seq *seqs, int npend, int max_prompt) {
    const gq_calib_gen_opts *o = c->o;
    gq_gen_opts go;
    gq_gen_opts_default(&go);
    go.max_batch = o->batch < npend ? o->batch : npend;
    long want = o->max_len ? o->max_len : (long)max_prompt + o->sampling.max_new_tokens;
    go.max_len = want < m->cfg.max_pos ? (int)want : m->cfg.max_pos;
    if (go.max_len <= max_prompt)
        return gq_err(GQ_ERR_ARG, "--max-len %d leaves no room after the longest prompt (%d tokens)", go.max_len,
                      max_prompt);
    if (gq_tok_eos(c->tok) >= 0) go.eos_ids[go.n_eos++] = gq_tok_eos(c->tok);
    gq_gen *g = NULL;
    int rc = gq_gen_init(&g, m, c->be, &go);
    if (rc == GQ_OK) {
        gq_info("generating answers for %d questions (%ld done before, %ld too long), batch %d, up to %d new tokens",
                npend, c->rep->n_done_before, c->rep->n_too_long, go.max_batch, o->sampling.max_new_tokens);
        c->t0 = gq_now();
        rc = gq_gen_run(g, seqs, npend, &o->sampling, on_done, c);
        int rc2 = flush_batch(c); /* the last partial batch (what is complete, also after an error) */
        if (!rc) rc = rc2;
    }
    gq_gen_free(g);
    return rc;
}

static void addf(char *b, size_t cap, size_t *k, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static void addf(char *b, size_t cap, size_t *k, const char *fmt, ...) {
    if (*k >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(b + *k, cap - *k, fmt, ap);
    va_end(ap);
    if (w > 0) *k += (size_t)w;
}

/* The output holds no record after the run: GQ_ERR_DATA saying what became of every question. */
static int no_records(const run_ctx *c, int max_pos) {
    const gq_calib_gen_opts *o = c->o;
    const gq_calib_gen_report *r = c->rep;
    char why[1024], short_w[96], degen_w[112], n_w[32] = "";
    size_t k = 0, cap = sizeof why;
    snprintf(short_w, sizeof short_w, "short (fewer than %d tokens, --min-answer-tokens)", o->min_answer_tokens);
    snprintf(degen_w, sizeof degen_w, "degenerate (a period of up to %d tokens repeats, --degenerate-period)",
             o->degenerate_period);
    if (o->n > 0) snprintf(n_w, sizeof n_w, " (--n %d)", o->n);
    const struct {
        long n;
        const char *what;
    } drops[] = {{r->n_empty, "empty (only whitespace)"},
                 {r->n_short, short_w},
                 {r->n_degenerate, degen_w},
                 {r->n_duplicate, "duplicate (the text of an earlier answer)"}};
    const char *sep = "";
    if (r->n_generated) {
        addf(why, cap, &k, "%ld answer%s generated, all dropped:", r->n_generated, r->n_generated == 1 ? "" : "s");
        const char *s2 = " ";
        for (size_t i = 0; i < sizeof drops / sizeof *drops; i++)
            if (drops[i].n) {
                addf(why, cap, &k, "%s%ld %s", s2, drops[i].n, drops[i].what);
                s2 = ", ";
            }
        sep = "; ";
    }
    if (r->n_too_long) {
        addf(why, cap, &k, "%s%ld too long (the prompt leaves no room within max_position_embeddings %d)", sep,
             r->n_too_long, max_pos);
        sep = "; ";
    }
    if (r->n_done_before)
        addf(why, cap, &k, "%s%ld dropped by an earlier run (listed in %s; --force starts anew)", sep, r->n_done_before,
             c->side_path);
    return gq_err(GQ_ERR_DATA, "%s: no records written, the file holds none: %ld question%s from %s%s: %s", o->out,
                  r->n_questions, r->n_questions == 1 ? "" : "s", o->questions, n_w, why);
}

static void run_free(run_ctx *c) {
    for (int i = 0; i < c->q.n; i++) {
        gq_ids_free(&c->ids[i]);
        free(c->prompt[i]);
    }
    free(c->ids);
    free(c->prompt);
    free(c->state);
    gq_questions_free(&c->q);
    strset_free(&c->answers);
    free(c->lens);
    free(c->rec.p);
    free(c->drop.p);
    free(c->side_path);
}

int gq_calib_gen_run(const gq_calib_gen_opts *o, gq_calib_gen_report *rep) {
    memset(rep, 0, sizeof *rep);
    int rc = check_opts(o);
    if (rc) return rc;
    double t_start = gq_now();
    gq_set_threads(o->threads);
    run_ctx c = {.o = o, .rep = rep};
    size_t pl = strlen(o->out);
    c.side_path = gq_malloc(pl + 9);
    snprintf(c.side_path, pl + 9, "%s.dropped", o->out);
    gq_tokenizer *tok = NULL;
    gq_prompt *pt = NULL;
    gq_model m;
    memset(&m, 0, sizeof m);
    gq_gen_seq *seqs = NULL;
    rc = gq_backend_init(&c.be, o->device);
    if (!rc) rc = gq_backend_set_precision(c.be, o->precision);
    if (!rc) rc = gq_tok_load(&tok, o->model_dir);
    c.tok = tok;
    if (!rc) rc = gq_prompt_init(&pt, o->template_spec, tok);
    if (!rc) rc = gq_model_open(&m, o->model_dir);
    if (!rc) m.q4_resident = gq_model_q4_choose(&m, c.be, o->int4_kernel, o->batch);
    if (!rc) rc = prepare(&c, pt, &m);
    int npend = 0, max_prompt = 0;
    if (!rc) {
        seqs = gq_calloc((size_t)c.q.n, sizeof *seqs);
        for (int i = 0; i < c.q.n; i++)
            if (c.state[i] == D_NONE) {
                seqs[npend].prompt = c.ids[i].v;
                seqs[npend].n_prompt = (int)c.ids[i].n;
                seqs[npend++].stream = (uint64_t)i;
                if ((int)c.ids[i].n > max_prompt) max_prompt = (int)c.ids[i].n;
            }
    }
    c.pending = npend;
    if (!rc) { /* open the outputs: append when resuming, else start anew */
        int append = o->resume && gq_path_exists(o->out);
        rc = gq_calib_gen_out_open(&c.out, o->out, append);
        if (!rc) rc = gq_calib_gen_out_open(&c.side, c.side_path, append);
    }
    if (!rc && npend)
        rc = generate_all(&c, &m, seqs, npend, max_prompt);
    else if (!rc)
        gq_info("nothing to generate: all %d questions are done or too long", c.q.n);
    int rc3 = gq_calib_gen_out_close(c.out), rc4 = gq_calib_gen_out_close(c.side);
    if (!rc) rc = rc3 ? rc3 : rc4;
    if (!rc && rep->n_total == 0) rc = no_records(&c, m.cfg.max_pos); /* nothing to calibrate with */
    length_stats(&c);
    rep->seconds = gq_now() - t_start;
    for (int i = 0; i < npend; i++) gq_gen_seq_free(&seqs[i]);
    free(seqs);
    gq_model_close(&m);
    gq_prompt_free(pt);
    gq_tok_free(tok);
    gq_backend_free(c.be);
    run_free(&c);
    return rc;
}
