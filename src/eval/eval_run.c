/* eval_run.c -- `gq eval` as a library call (gq/eval.h): completions (generated, read from a samples
 * file, or the canonical / broken controls) -> programs -> a pool of sandboxed python3 runs ->
 * crash-safe JSONL records (gq calib's output writer: batches, fsync, --resume cuts a torn tail) ->
 * pass@k per source and, with --base, per problem what the model lost or gained. */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/json_util.h"
#include "gq/calib.h"
#include "gq/calib_gen.h"
#include "gq/eval.h"
#include "gq/prompt.h"
#include "text/unicode.h" /* gq_uni_repair: generated text as valid UTF-8 for JSON */

void gq_eval_opts_default(gq_eval_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_samples = 1;
    gq_gen_sampling_default(&o->sampling);
    o->k[0] = 1;
    o->k[1] = 10;
    o->nk = 2;
    o->template_spec = "raw";
    o->batch = 16;
    o->device = "auto";
    o->precision = "auto";
    o->int4_kernel = GQ_Q4_AUTO;
    gq_sb_opts_default(&o->sandbox);
}

/* ---- sources, jobs ------------------------------------------------------------------------- */

typedef enum { SRC_MODEL, SRC_SAMPLES, SRC_CANONICAL, SRC_BROKEN } src_kind;

typedef struct {
    src_kind kind;
    const char *dir;      /* SRC_MODEL */
    int *nsamp;           /* [np] samples per problem */
    unsigned char **done; /* [np][nsamp] */
    char ***completions;  /* SRC_SAMPLES: [np][nsamp] */
} source;

typedef struct job {
    int src, pi, sample;
    char *program, *completion, *answer;
    int tokens; /* -1: not generated */
    const char *finish;
    int preset; /* -1, or an outcome recorded without running (too long) */
    struct job *next;
} job;

typedef struct {
    const gq_eval_opts *o;
    gq_eval_report *rep;
    gq_eval_task task;
    source src[2];
    int nsrc;
    int chat;
    gq_sandbox *sb;
    const char *argv[6];
    char *python;
    /* the executor */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    int closed;
    pthread_t *threads;
    int nthreads;
    long submitted, executed, pending_total;
    double t0;
    /* the output */
    gq_calib_gen_out *out;
    gq_linebuf buf;
    int err;
    char errmsg[1024];
    /* resume scan */
    int header_seen;
    char *header;
} ctx;

static const char *tag_of(src_kind k, int with_base, int i) {
    switch (k) {
    case SRC_MODEL:
        return with_base && i == 0 ? "base" : "model";
    case SRC_SAMPLES:
        return "samples";
    case SRC_CANONICAL:
        return "canonical";
    default:
        return "broken";
    }
}

/* ---- records ---------------------------------------------------------------------------------- */

static void set_error(ctx *c, int rc) {
    if (c->err) return;
    c->err = rc;
    snprintf(c->errmsg, sizeof c->errmsg, "%s", gq_errmsg());
}

/* under c->mu */
static void flush_lines(ctx *c) {
    if (!c->buf.count) return;
    if (c->out && !c->err) {
        int rc = gq_calib_gen_out_write(c->out, c->buf.p, c->buf.n);
        if (rc) set_error(c, rc);
    }
    c->buf.n = 0;
    c->buf.count = 0;
    char eta[96];
    gq_eta_str(eta, sizeof eta, (int)c->executed, (int)c->pending_total, c->t0);
    long passed = 0;
    for (int i = 0; i < c->nsrc; i++) passed += c->rep->s[i].passed;
    gq_info("[%ld/%ld] samples run, %ld passed in all | %s", c->executed, c->pending_total, passed, eta);
}

/* count one sample's result (scanned or run), under c->mu or before the workers start */
static void count_result(ctx *c, int si, int pi, int outcome) {
    gq_eval_source_report *s = &c->rep->s[si];
    s->total++;
    s->outcomes[outcome]++;
    s->count[pi]++;
    if (outcome == GQ_EVAL_PASSED) {
        s->passed++;
        s->pass_count[pi]++;
    }
}

static void record(ctx *c, job *j, int outcome, const char *detail, double wall, double cpu) {
    json_t *r = json_object();
    json_object_set_new(r, "task_id", json_string(c->task.p[j->pi].task_id));
    json_object_set_new(r, "source", json_string(c->rep->s[j->src].tag));
    json_object_set_new(r, "sample", json_integer(j->sample));
    json_object_set_new(r, "passed", json_boolean(outcome == GQ_EVAL_PASSED));
    json_object_set_new(r, "outcome", json_string(gq_eval_outcome_name(outcome)));
    if (detail && *detail) {
        size_t n;
        char *d = gq_uni_repair(detail, strlen(detail), &n);
        json_object_set_new(r, "detail", json_stringn(d, n));
        free(d);
    }
    json_object_set_new(r, "time", json_real(wall));
    json_object_set_new(r, "cpu", json_real(cpu));
    if (j->tokens >= 0) {
        json_object_set_new(r, "tokens", json_integer(j->tokens));
        json_object_set_new(r, "finish", json_string(j->finish));
    }
    json_object_set_new(r, "completion", json_string(j->completion ? j->completion : ""));
    if (j->answer) json_object_set_new(r, "answer", json_string(j->answer));
    char *line = json_dumps(r, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(r);
    pthread_mutex_lock(&c->mu);
    count_result(c, j->src, j->pi, outcome);
    gq_eval_source_report *s = &c->rep->s[j->src];
    if (j->preset < 0) {
        s->exec_s += wall;
        s->exec_cpu_s += cpu;
        s->exec_samples++;
    }
    c->executed++;
    if (line) gq_linebuf_add(&c->buf, line);
    if (c->buf.count >= 16) flush_lines(c);
    pthread_mutex_unlock(&c->mu);
    free(line);
}

static void job_free(job *j) {
    free(j->program);
    free(j->completion);
    free(j->answer);
    free(j);
}

/* ---- the executor ------------------------------------------------------------------------------ */

typedef struct {
    ctx *c;
    int slot;
} worker_arg;

static void *worker(void *arg) {
    worker_arg *w = arg;
    ctx *c = w->c;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        while (!c->head && !c->closed) pthread_cond_wait(&c->cv, &c->mu);
        job *j = c->head;
        if (j) {
            c->head = j->next;
            if (!c->head) c->tail = NULL;
        }
        pthread_mutex_unlock(&c->mu);
        if (!j) break;
        if (j->preset >= 0) {
            record(c, j, j->preset, "the prompt does not fit the model's positions", 0, 0);
        } else {
            gq_sb_result r;
            int rc = gq_sb_run(c->sb, w->slot, c->argv, "prog.py", j->program, strlen(j->program), &r);
            if (rc) { /* not started (clone, uid map): no record, the run fails, --resume runs it again */
                pthread_mutex_lock(&c->mu);
                set_error(c, rc);
                c->executed++;
                pthread_mutex_unlock(&c->mu);
            } else {
                char detail[256];
                int oc = gq_eval_classify(&r, &c->o->sandbox, detail, sizeof detail);
                record(c, j, oc, detail, r.wall_s, r.cpu_s);
            }
            gq_sb_result_free(&r);
        }
        job_free(j);
    }
    return NULL;
}

static void submit(ctx *c, job *j) {
    j->next = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->tail)
        c->tail->next = j;
    else
        c->head = j;
    c->tail = j;
    c->submitted++;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static job *new_job(int si, int pi, int sample) {
    job *j = gq_calloc(1, sizeof *j);
    j->src = si;
    j->pi = pi;
    j->sample = sample;
    j->tokens = -1;
    j->preset = -1;
    return j;
}

/* ---- generation ---------------------------------------------------------------------------------- */

typedef struct {
    ctx *c;
    int si;
    const gq_tokenizer *tok;
    int *seq_pi, *seq_sample;
    unsigned char *inblock; /* [np] chat: the rendered prompt ends inside a ``` block (the template opened it) */
    size_t *looked;         /* [seq] early stop: answer tokens the stop check has looked at */
} gen_ctx;

/* The stop check of gq_gen_run_stop (the note in gq/eval.h), a cheap look at the tail first: each time the stable
 * tokens grow, the new ones and TAIL_OVERLAP before them are decoded after TAIL_CTX tokens of context, and only
 * where that tail holds a stop sequence (chat: a fence) does gq_eval_cut_decided decode the whole answer. A step
 * costs the decoding of some 25 tokens, not of the answer. A stop sequence that ends in the new tokens is in the
 * tail unless it spans more than TAIL_OVERLAP tokens; a miss would cost time (generation goes on to eos or
 * max_new_tokens, and the text is cut afterwards), never change a completion: only the decision stops. */
#define TAIL_CTX     8
#define TAIL_OVERLAP 16

static const char *const fence_only[] = {"```", NULL};

static int on_token(const gq_gen_seq *s, int index, void *user) {
    gen_ctx *g = user;
    ctx *c = g->c;
    const int32_t *v = s->out.v;
    size_t prev = g->looked[index], u = s->out.n;
    u = prev + gq_eval_stable_tokens(g->tok, v + prev, u - prev); /* down to prev at most */
    if (u <= prev) return 0;
    g->looked[index] = u;
    size_t w0 = prev > TAIL_OVERLAP ? prev - TAIL_OVERLAP : 0, at = (size_t)s->n_prompt + w0, nc = 0;
    int32_t ctxt[TAIL_CTX];
    for (size_t q = at > TAIL_CTX ? at - TAIL_CTX : 0; q < at; q++)
        ctxt[nc++] = q < (size_t)s->n_prompt ? s->prompt[q] : v[q - (size_t)s->n_prompt];
    char *tail = NULL;
    size_t tail_n = 0;
    if (gq_tok_decode_continuation(g->tok, ctxt, nc, v + w0, u - w0, 1, &tail, &tail_n) != GQ_OK) {
        gq_err_clear();
        return 0; /* on_generated decodes the answer again and reports it */
    }
    const char *const *stops = gq_eval_stops(c->task.kind);
    int hit = 0;
    for (const char *const *p = c->chat ? fence_only : stops; *p && !hit; p++) hit = strstr(tail, *p) != NULL;
    free(tail);
    if (!hit) return 0;
    int pi = g->seq_pi[index], stop = 0;
    gq_eval_cut how = !c->chat ? GQ_EVAL_CUT_STOPS : g->inblock[pi] ? GQ_EVAL_CUT_FENCE : GQ_EVAL_CUT_CHAT;
    if (gq_eval_cut_decided(g->tok, s->prompt, (size_t)s->n_prompt, v, u, how, stops, &stop) != GQ_OK) {
        gq_err_clear();
        return 0;
    }
    return stop;
}

static int on_generated(gq_gen_seq *s, int index, void *user) {
    gen_ctx *g = user;
    ctx *c = g->c;
    char *text;
    size_t n;
    int rc = gq_eval_answer_text(g->tok, s->prompt, (size_t)s->n_prompt, s->out.v, s->out.n, &text, &n);
    if (rc) return gq_err_prefix("%s: decoding a completion", c->task.p[g->seq_pi[index]].task_id);
    job *j = new_job(g->si, g->seq_pi[index], g->seq_sample[index]);
    j->tokens = (int)s->out.n;
    int cut;
    if (c->chat && g->inblock[j->pi]) { /* the answer is code up to the closing fence */
        char *f = strstr(text, "```");
        cut = f != NULL;
        if (f) *f = 0;
        j->answer = text;
        j->completion = gq_strdup(text);
    } else if (c->chat) {
        cut = gq_eval_chat_cut(text);
        j->answer = text;
        j->completion = gq_eval_chat_code(text);
    } else {
        cut = gq_eval_truncate(text, gq_eval_stops(c->task.kind));
        j->completion = text;
    }
    j->finish = cut ? "stop" : gq_gen_finish_name(s->finish);
    j->program =
        gq_eval_program(&c->task, j->pi, j->completion, c->chat ? GQ_EVAL_CHAT_CODE : GQ_EVAL_CONTINUES_GEN_PROMPT);
    gq_eval_source_report *r = &c->rep->s[g->si];
    r->gen_tokens += (int64_t)s->out.n;
    r->gen_samples++;
    gq_gen_seq_free(s);
    submit(c, j);
    pthread_mutex_lock(&c->mu);
    int err = c->err; /* a program could not be started: stop generating */
    pthread_mutex_unlock(&c->mu);
    return err ? gq_err(err, "%s", c->errmsg) : GQ_OK;
}

static int generate(ctx *c, int si, gq_backend *be) {
    const gq_eval_opts *o = c->o;
    source *s = &c->src[si];
    int np = c->task.n, rc;
    long npend = 0;
    for (int pi = 0; pi < np; pi++)
        for (int k = 0; k < s->nsamp[pi]; k++) npend += !s->done[pi][k];
    if (!npend) {
        gq_info("%s: every sample is done already", c->rep->s[si].tag);
        return GQ_OK;
    }
    gq_tokenizer *tok = NULL;
    gq_prompt *pt = NULL;
    gq_model m;
    memset(&m, 0, sizeof m);
    gq_ids *ids = gq_calloc((size_t)np, sizeof *ids);
    gq_gen_seq *seqs = NULL;
    gen_ctx g = {.c = c, .si = si};
    rc = gq_tok_load(&tok, s->dir);
    g.tok = tok;
    if (!rc) rc = gq_prompt_init(&pt, o->template_spec, tok);
    if (!rc) rc = gq_model_open(&m, s->dir);
    if (!rc) m.q4_resident = gq_model_q4_choose(&m, be, o->int4_kernel, o->batch);
    int nseq = 0, max_prompt = 0;
    if (!rc) {
        seqs = gq_calloc((size_t)npend, sizeof *seqs);
        g.seq_pi = gq_calloc((size_t)npend, sizeof *g.seq_pi);
        g.seq_sample = gq_calloc((size_t)npend, sizeof *g.seq_sample);
        g.inblock = gq_calloc((size_t)np, 1);
        g.looked = gq_calloc((size_t)npend, sizeof *g.looked);
    }
    for (int pi = 0; pi < np && !rc; pi++) {
        int pend = 0;
        for (int k = 0; k < s->nsamp[pi]; k++) pend += !s->done[pi][k];
        if (!pend) continue;
        const gq_eval_problem *p = &c->task.p[pi];
        char *ptext = NULL;
        rc = gq_prompt_encode(pt, tok, c->chat ? p->question : p->gen_prompt, &ids[pi], &ptext);
        if (rc) {
            gq_err_prefix("%s", p->task_id);
            break;
        }
        int fences = 0;
        for (const char *q = ptext; q && (q = strstr(q, "```")) != NULL; q += 3) fences++;
        g.inblock[pi] = c->chat && fences % 2 == 1;
        free(ptext);
        int too_long = (int)ids[pi].n >= m.cfg.max_pos;
        if (too_long)
            gq_warn("%s: prompt of %zu tokens leaves no room within max_position_embeddings %d: recorded as failed",
                    p->task_id, ids[pi].n, m.cfg.max_pos);
        for (int k = 0; k < s->nsamp[pi]; k++) {
            if (s->done[pi][k]) continue;
            if (too_long) {
                job *j = new_job(si, pi, k);
                j->preset = GQ_EVAL_TOO_LONG;
                submit(c, j);
                continue;
            }
            seqs[nseq].prompt = ids[pi].v;
            seqs[nseq].n_prompt = (int)ids[pi].n;
            seqs[nseq].stream = ((uint64_t)pi << 32) | (uint64_t)k; /* the same samples for every model */
            g.seq_pi[nseq] = pi;
            g.seq_sample[nseq] = k;
            nseq++;
            if ((int)ids[pi].n > max_prompt) max_prompt = (int)ids[pi].n;
        }
    }
    if (!rc && nseq) {
        gq_gen_opts go;
        gq_gen_opts_default(&go);
        go.max_batch = o->batch < nseq ? o->batch : nseq;
        long want = (long)max_prompt + o->sampling.max_new_tokens;
        go.max_len = want < m.cfg.max_pos ? (int)want : m.cfg.max_pos;
        if (gq_tok_eos(tok) >= 0) go.eos_ids[go.n_eos++] = gq_tok_eos(tok);
        gq_gen *gen = NULL;
        rc = gq_gen_init(&gen, &m, be, &go);
        if (!rc) {
            gq_info("%s (%s): generating %d completions (%s, batch %d, up to %d new tokens%s)", c->rep->s[si].tag,
                    s->dir, nseq, o->sampling.temperature > 0 ? "sampled" : "greedy", go.max_batch,
                    o->sampling.max_new_tokens,
                    o->no_early_stop ? ", cut after generation"
                    : c->chat        ? ", up to the closing fence"
                                     : ", up to a stop sequence");
            double t0 = gq_now();
            rc = gq_gen_run_stop(gen, seqs, nseq, &o->sampling, o->no_early_stop ? NULL : on_token, on_generated, &g);
            c->rep->s[si].gen_s += gq_now() - t0;
        }
        gq_gen_free(gen);
    }
    if (seqs)
        for (int i = 0; i < nseq; i++) gq_gen_seq_free(&seqs[i]);
    free(seqs);
    free(g.seq_pi);
    free(g.seq_sample);
    free(g.inblock);
    free(g.looked);
    for (int pi = 0; pi < np; pi++) gq_ids_free(&ids[pi]);
    free(ids);
    gq_model_close(&m);
    gq_prompt_free(pt);
    gq_tok_free(tok);
    if (rc) gq_err_prefix("%s", s->dir);
    return rc;
}

/* ---- the samples file ----------------------------------------------------------------------------- */

static int load_samples(ctx *c, source *s, const char *path) {
    gq_jsonl *j = NULL;
    int rc = gq_jsonl_open(&j, path);
    if (rc) return rc;
    int np = c->task.n;
    int *cap = gq_calloc((size_t)np, sizeof *cap), full_loaded = 0;
    gq_eval_task full;
    memset(&full, 0, sizeof full);
    const char *line;
    size_t len;
    long lineno, n_lines = 0, n_outside = 0;
    while ((rc = gq_jsonl_next(j, &line, &len, &lineno)) == 1) {
        json_error_t je;
        json_t *v = json_loadb(line, len, 0, &je);
        json_t *id = v ? json_object_get(v, "task_id") : NULL, *comp = v ? json_object_get(v, "completion") : NULL;
        char idb[64];
        const char *ids = NULL;
        if (json_is_string(id))
            ids = json_string_value(id);
        else if (json_is_integer(id)) {
            snprintf(idb, sizeof idb, "%lld", (long long)json_integer_value(id));
            ids = idb;
        }
        if (!ids || !json_is_string(comp)) {
            rc = gq_err(GQ_ERR_DATA, "%s:%ld: expected {\"task_id\": ..., \"completion\": ...}%s%s", path, lineno,
                        v ? "" : ": not valid JSON: ", v ? "" : je.text);
            json_decref(v);
            break;
        }
        int pi = gq_eval_task_find(&c->task, ids);
        if (pi < 0) {
            if (c->o->limit > 0 && !full_loaded) { /* a problem past --limit is ignored, an unknown one is an error */
                full_loaded = 1;
                if (gq_eval_task_load(&full, c->task.kind, c->o->data, 0) != GQ_OK) full.n = 0;
            }
            if (!full_loaded || gq_eval_task_find(&full, ids) < 0) {
                rc = gq_err(GQ_ERR_DATA, "%s:%ld: task_id \"%s\" is not a %s problem of %s", path, lineno, ids,
                            gq_eval_task_name(c->task.kind), c->task.path);
                json_decref(v);
                break;
            }
            n_outside++;
            json_decref(v);
            continue;
        }
        if (s->nsamp[pi] == cap[pi]) {
            cap[pi] = cap[pi] ? 2 * cap[pi] : 4;
            s->completions[pi] = gq_realloc(s->completions[pi], (size_t)cap[pi] * sizeof(char *));
        }
        s->completions[pi][s->nsamp[pi]++] = gq_strdup(json_string_value(comp));
        n_lines++;
        json_decref(v);
    }
    gq_jsonl_close(j);
    free(cap);
    if (full_loaded) gq_eval_task_free(&full);
    if (rc < 0) return rc;
    int missing = 0;
    for (int pi = 0; pi < np; pi++) missing += s->nsamp[pi] == 0;
    gq_info("%s: %ld samples for %d of %d problems%s", path, n_lines, np - missing, np,
            n_outside ? " (samples of problems past --limit ignored)" : "");
    if (missing) gq_warn("%s: %d problems have no sample: left out of the scores", path, missing);
    if (!n_lines) return gq_err(GQ_ERR_DATA, "%s: no samples of the %d problems", path, np);
    return GQ_OK;
}

/* ---- the output file: header, --resume ------------------------------------------------------------- */

static char *header_line(ctx *c) {
    const gq_eval_opts *o = c->o;
    json_t *h = json_object(), *srcs = json_array();
    json_object_set_new(h, "task", json_string(gq_eval_task_name(o->task)));
    json_object_set_new(h, "data", json_string(o->data ? o->data : "bundled"));
    for (int i = 0; i < c->nsrc; i++) {
        json_t *s = json_object();
        json_object_set_new(s, "tag", json_string(c->rep->s[i].tag));
        json_object_set_new(s, "source", json_string(c->rep->s[i].source));
        json_array_append_new(srcs, s);
    }
    json_object_set_new(h, "sources", srcs);
    if (c->src[0].kind == SRC_MODEL) {
        json_object_set_new(h, "n_samples", json_integer(o->n_samples));
        json_object_set_new(h, "temperature", json_real(o->sampling.temperature));
        json_object_set_new(h, "top_p", json_real(o->sampling.top_p));
        json_object_set_new(h, "top_k", json_integer(o->sampling.top_k));
        json_object_set_new(h, "seed", json_integer((json_int_t)o->sampling.seed));
        json_object_set_new(h, "max_new_tokens", json_integer(o->sampling.max_new_tokens));
        json_object_set_new(h, "template", json_string(o->template_spec));
    }
    json_t *w = json_pack("{s:o}", "gq_eval", h);
    char *line = json_dumps(w, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(w);
    return line;
}

static int scan_line(const char *line, size_t len, long lineno, void *user) {
    ctx *c = user;
    const char *path = c->o->out;
    json_error_t je;
    json_t *v = json_loadb(line, len, 0, &je);
    int rc = GQ_OK;
    if (!c->header_seen) {
        json_t *h = v ? json_object_get(v, "gq_eval") : NULL;
        if (!h) {
            rc = gq_err(GQ_ERR_DATA, "%s:%ld: not a gq eval output (its first line is no {\"gq_eval\": ...} header)",
                        path, lineno);
        } else {
            char *mine = c->header;
            json_t *m = json_loads(mine, 0, NULL), *mh = json_object_get(m, "gq_eval");
            if (!json_equal(h, mh)) {
                const char *key;
                json_t *val;
                const char *diff = "?";
                json_object_foreach(mh, key, val) if (!json_equal(val, json_object_get(h, key))) {
                    diff = key;
                    break;
                }
                char *theirs = json_dumps(json_object_get(h, diff), JSON_COMPACT | JSON_ENCODE_ANY);
                char *ours = json_dumps(json_object_get(mh, diff), JSON_COMPACT | JSON_ENCODE_ANY);
                rc = gq_err(GQ_ERR_DATA, "%s: made with other settings: %s was %s, now %s (--force starts anew)", path,
                            diff, theirs ? theirs : "(none)", ours ? ours : "(none)");
                free(theirs);
                free(ours);
            }
            json_decref(m);
            c->header_seen = 1;
        }
        json_decref(v);
        return rc;
    }
    json_t *id = v ? json_object_get(v, "task_id") : NULL, *src = v ? json_object_get(v, "source") : NULL;
    json_t *smp = v ? json_object_get(v, "sample") : NULL, *oc = v ? json_object_get(v, "outcome") : NULL;
    if (!json_is_string(id) || !json_is_string(src) || !json_is_integer(smp) || !json_is_string(oc) ||
        gq_eval_outcome_parse(json_string_value(oc)) < 0) {
        rc = gq_err(GQ_ERR_DATA,
                    "%s:%ld: expected a gq eval record {\"task_id\", \"source\", \"sample\", \"outcome\", ...}%s%s",
                    path, lineno, v ? "" : ": not valid JSON: ", v ? "" : je.text);
        json_decref(v);
        return rc;
    }
    int si = -1;
    for (int i = 0; i < c->nsrc; i++)
        if (!strcmp(c->rep->s[i].tag, json_string_value(src))) si = i;
    int pi = gq_eval_task_find(&c->task, json_string_value(id));
    json_int_t k = json_integer_value(smp);
    if (si < 0) {
        rc =
            gq_err(GQ_ERR_DATA, "%s:%ld: source \"%s\" is not one of this run's", path, lineno, json_string_value(src));
    } else if (!strcmp(json_string_value(oc), "sandbox")) {
        /* the sandbox failed to set up: run it again */
    } else if (pi >= 0 && k >= 0 && k < c->src[si].nsamp[pi]) { /* else past --limit or --n-samples: not counted */
        if (c->src[si].done[pi][k]) {
            rc = gq_err(GQ_ERR_DATA, "%s:%ld: %s sample %lld of %s appears twice", path, lineno, json_string_value(src),
                        (long long)k, json_string_value(id));
        } else {
            c->src[si].done[pi][k] = 1;
            count_result(c, si, pi, gq_eval_outcome_parse(json_string_value(oc)));
            c->rep->n_done_before++;
        }
    }
    json_decref(v);
    return rc;
}

static int open_output(ctx *c) {
    const gq_eval_opts *o = c->o;
    if (!o->out) return GQ_OK;
    c->header = header_line(c);
    int exists = gq_path_exists(o->out);
    if (exists && !o->resume && !o->force)
        return gq_err(GQ_ERR_EXISTS, "%s exists: --resume continues it, --force replaces it", o->out);
    int append = 0;
    if (exists && o->resume) {
        size_t cut = 0;
        int rc = gq_calib_gen_out_scan(o->out, scan_line, c, &cut);
        if (rc) return rc;
        if (cut) gq_warn("%s: cut a torn batch of %zu bytes at the end (an interrupted write)", o->out, cut);
        append = c->header_seen;
        gq_info("resume: %ld samples already in %s", c->rep->n_done_before, o->out);
    }
    int rc = gq_calib_gen_out_open(&c->out, o->out, append);
    if (!rc && !append) {
        gq_linebuf h = {0};
        gq_linebuf_add(&h, c->header);
        rc = gq_calib_gen_out_write(c->out, h.p, h.n);
        free(h.p);
    }
    return rc;
}

/* ---- summary ------------------------------------------------------------------------------------------ */

static void summarize(ctx *c) {
    const gq_eval_opts *o = c->o;
    for (int si = 0; si < c->nsrc; si++) {
        gq_eval_source_report *s = &c->rep->s[si];
        s->min_n = 0;
        s->max_n = 0;
        s->n_problems = 0;
        for (int pi = 0; pi < c->task.n; pi++) {
            if (!s->count[pi]) continue;
            if (!s->n_problems || s->count[pi] < s->min_n) s->min_n = s->count[pi];
            if (s->count[pi] > s->max_n) s->max_n = s->count[pi];
            s->n_problems++;
        }
        s->nk = 0;
        for (int i = 0; i < o->nk; i++) {
            int k = o->k[i];
            if (!s->n_problems || k > s->min_n) continue;
            double sum = 0;
            for (int pi = 0; pi < c->task.n; pi++)
                if (s->count[pi]) sum += gq_eval_pass_at_k(s->count[pi], s->pass_count[pi], k);
            s->k[s->nk] = k;
            s->pass_at[s->nk++] = sum / s->n_problems;
        }
    }
}

static json_t *summary_json(const ctx *c) {
    const gq_eval_report *r = c->rep;
    json_t *j = json_object(), *arr = json_array();
    json_object_set_new(j, "task", json_string(gq_eval_task_name(c->task.kind)));
    json_object_set_new(j, "data", json_string(c->task.path));
    json_object_set_new(j, "problems", json_integer(r->n_problems));
    json_object_set_new(j, "sandbox", json_string(r->sandbox));
    json_object_set_new(j, "seconds", json_real(r->seconds));
    for (int si = 0; si < r->n_sources; si++) {
        const gq_eval_source_report *s = &r->s[si];
        json_t *o = json_object(), *pk = json_object(), *oc = json_object();
        json_object_set_new(o, "source", json_string(s->tag));
        json_object_set_new(o, "path", json_string(s->source));
        json_object_set_new(o, "problems", json_integer(s->n_problems));
        json_object_set_new(o, "samples_per_problem", json_integer(s->min_n));
        json_object_set_new(o, "passed", json_integer(s->passed));
        json_object_set_new(o, "samples", json_integer(s->total));
        for (int i = 0; i < s->nk; i++) {
            char key[32];
            snprintf(key, sizeof key, "pass@%d", s->k[i]);
            json_object_set_new(pk, key, json_real(s->pass_at[i]));
        }
        json_object_set_new(o, "pass_at_k", pk);
        for (int i = 0; i < GQ_EVAL_N_OUTCOMES; i++)
            if (s->outcomes[i]) json_object_set_new(oc, gq_eval_outcome_name(i), json_integer(s->outcomes[i]));
        json_object_set_new(o, "outcomes", oc);
        json_object_set_new(o, "generation_s", json_real(s->gen_s));
        json_object_set_new(o, "generated_samples", json_integer(s->gen_samples));
        json_object_set_new(o, "generated_tokens", json_integer(s->gen_tokens));
        json_object_set_new(o, "execution_s", json_real(s->exec_s));
        json_object_set_new(o, "executed_samples", json_integer(s->exec_samples));
        json_array_append_new(arr, o);
    }
    json_object_set_new(j, "sources", arr);
    if (r->n_sources == 2) {
        json_t *d = json_array();
        for (int pi = 0; pi < r->n_problems; pi++) {
            const gq_eval_source_report *b = &r->s[0], *m = &r->s[1];
            if (!b->count[pi] || !m->count[pi]) continue;
            double fb = (double)b->pass_count[pi] / b->count[pi], fm = (double)m->pass_count[pi] / m->count[pi];
            if (fb == fm) continue;
            json_array_append_new(d, json_pack("{s:s, s:i, s:i, s:i, s:i, s:s}", "task_id", c->task.p[pi].task_id,
                                               "base_passed", b->pass_count[pi], "base_samples", b->count[pi],
                                               "model_passed", m->pass_count[pi], "model_samples", m->count[pi],
                                               "change", fm < fb ? "lost" : "gained"));
        }
        json_object_set_new(j, "diff", d);
    }
    return j;
}

/* ---- the run -------------------------------------------------------------------------------------------- */

static char *find_python(const char *given) {
    if (given) return gq_strdup(given);
    if (access("/usr/bin/python3", X_OK) == 0) return gq_strdup("/usr/bin/python3");
    const char *path = getenv("PATH");
    if (!path) return NULL;
    char *dup = gq_strdup(path), *save = NULL;
    for (char *d = strtok_r(dup, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if (d[0] != '/') continue;
        char *p = gq_path_join(d, "python3");
        if (access(p, X_OK) == 0) {
            free(dup);
            return p;
        }
        free(p);
    }
    free(dup);
    return NULL;
}

static int check_opts(const gq_eval_opts *o) {
    int n_src = !!o->model_dir + !!o->samples + !!o->control;
    if (n_src != 1) return gq_err(GQ_ERR_ARG, "give one of --model, --samples and --control");
    if (o->base_dir && !o->model_dir) return gq_err(GQ_ERR_ARG, "--base needs --model (the model compared with it)");
    if (o->control && strcmp(o->control, "canonical") && strcmp(o->control, "broken"))
        return gq_err(GQ_ERR_ARG, "--control: expected canonical or broken, got '%s'", o->control);
    if (o->n_samples < 1) return gq_err(GQ_ERR_ARG, "--n-samples: expected >= 1, got %d", o->n_samples);
    if (o->n_samples > 1 && o->sampling.temperature == 0 && o->model_dir)
        return gq_err(GQ_ERR_ARG,
                      "--n-samples %d with --temperature 0: greedy samples are all the same (pass@k with k > 1 "
                      "wants sampling, e.g. --temperature 0.8)",
                      o->n_samples);
    if (o->limit < 0) return gq_err(GQ_ERR_ARG, "--limit: expected >= 0 (0: all), got %d", o->limit);
    if (o->batch < 1) return gq_err(GQ_ERR_ARG, "--batch: expected >= 1, got %d", o->batch);
    if (o->jobs < 0) return gq_err(GQ_ERR_ARG, "--jobs: expected >= 0 (0: the number of CPUs), got %d", o->jobs);
    if (o->threads < 0) return gq_err(GQ_ERR_ARG, "--threads: expected >= 0, got %d", o->threads);
    if (o->resume && !o->out) return gq_err(GQ_ERR_ARG, "--resume needs --out");
    if (o->nk < 1) return gq_err(GQ_ERR_ARG, "--k: expected a list such as 1,10");
    for (int i = 0; i < o->nk; i++)
        if (o->k[i] < 1) return gq_err(GQ_ERR_ARG, "--k: expected k >= 1, got %d", o->k[i]);
    if (!(o->sandbox.wall_s > 0))
        return gq_err(GQ_ERR_ARG, "--timeout: expected > 0 seconds, got %g", o->sandbox.wall_s);
    return o->model_dir ? gq_gen_sampling_check(&o->sampling) : GQ_OK;
}

static void source_free(source *s, int np) {
    for (int pi = 0; pi < np; pi++) {
        if (s->done) free(s->done[pi]);
        if (s->completions) {
            for (int k = 0; k < s->nsamp[pi]; k++) free(s->completions[pi][k]);
            free(s->completions[pi]);
        }
    }
    free(s->done);
    free(s->completions);
    free(s->nsamp);
}

/* The sources of the run (base and model, the samples file, or a control) and their per-problem state. */
static int setup_sources(ctx *c) {
    const gq_eval_opts *o = c->o;
    gq_eval_report *rep = c->rep;
    const int np = c->task.n;
    int rc = GQ_OK;
    if (o->model_dir) {
        if (o->base_dir) c->src[c->nsrc++] = (source){.kind = SRC_MODEL, .dir = o->base_dir};
        c->src[c->nsrc++] = (source){.kind = SRC_MODEL, .dir = o->model_dir};
    } else if (o->samples) {
        c->src[c->nsrc++] = (source){.kind = SRC_SAMPLES};
    } else {
        c->src[c->nsrc++] = (source){.kind = !strcmp(o->control, "canonical") ? SRC_CANONICAL : SRC_BROKEN};
    }
    rep->n_sources = c->nsrc;
    for (int si = 0; si < c->nsrc; si++) {
        source *s = &c->src[si];
        gq_eval_source_report *r = &rep->s[si];
        snprintf(r->tag, sizeof r->tag, "%s", tag_of(s->kind, o->base_dir != NULL, si));
        r->source = s->kind == SRC_MODEL ? s->dir : s->kind == SRC_SAMPLES ? o->samples : o->control;
        r->pass_count = gq_calloc((size_t)np, sizeof *r->pass_count);
        r->count = gq_calloc((size_t)np, sizeof *r->count);
        s->nsamp = gq_calloc((size_t)np, sizeof *s->nsamp);
        s->done = gq_calloc((size_t)np, sizeof *s->done);
        if (s->kind == SRC_SAMPLES) {
            s->completions = gq_calloc((size_t)np, sizeof *s->completions);
            if (!rc) rc = load_samples(c, s, o->samples);
        } else {
            for (int pi = 0; pi < np; pi++) s->nsamp[pi] = s->kind == SRC_MODEL ? o->n_samples : 1;
        }
        for (int pi = 0; pi < np; pi++) s->done[pi] = gq_calloc((size_t)s->nsamp[pi] + 1, 1);
    }
    return rc;
}

/* Opens the sandbox for `jobs` programs at a time and checks that python3 runs in it. */
static int open_sandbox(ctx *c, int jobs) {
    const gq_eval_opts *o = c->o;
    gq_eval_report *rep = c->rep;
    c->python = find_python(o->python);
    if (!c->python)
        return gq_err(GQ_ERR_UNSUPPORTED, "python3 not found (/usr/bin/python3 or on PATH; --python names one)");
    int rc = gq_sb_open(&c->sb, &o->sandbox, jobs);
    if (rc) return rc;
    rep->mode = gq_sb_get_mode(c->sb);
    snprintf(rep->sandbox, sizeof rep->sandbox, "%s", gq_sb_describe(c->sb));
    snprintf(rep->refusal, sizeof rep->refusal, "%s", gq_sb_refusal(c->sb));
    if (rep->mode == GQ_SB_UNSAFE)
        gq_warn("running untrusted code WITHOUT a sandbox (--unsafe-no-sandbox): %s", rep->refusal);
    gq_info("sandbox: %s", rep->sandbox);
    c->argv[0] = c->python;
    c->argv[1] = "-I";
    c->argv[2] = "-S";
    c->argv[3] = "prog.py";
    c->argv[4] = NULL;
    gq_sb_result r; /* python3 runs in the sandbox at all */
    static const char hello[] = "import sys\nprint('ok')\n";
    rc = gq_sb_run(c->sb, 0, c->argv, "prog.py", hello, sizeof hello - 1, &r);
    if (!rc && gq_eval_classify(&r, &o->sandbox, NULL, 0) != GQ_EVAL_PASSED)
        rc = gq_err(GQ_ERR_UNSUPPORTED, "%s -I -S does not run in the sandbox: %s", c->python,
                    r.out_n ? r.out : "(no output)");
    if (!rc) gq_info("python: %s -I -S (a trivial program: %.3f s in the sandbox)", c->python, r.wall_s);
    gq_sb_result_free(&r);
    return rc;
}

/* The programs of the sources without a model: each a job for the workers. */
static void submit_given(ctx *c, int si) {
    source *s = &c->src[si];
    for (int pi = 0; pi < c->task.n; pi++)
        for (int k = 0; k < s->nsamp[pi]; k++) {
            if (s->done[pi][k]) continue;
            job *j = new_job(si, pi, k);
            const char *comp = s->kind == SRC_SAMPLES ? s->completions[pi][k] : c->task.p[pi].canonical;
            j->completion = gq_strdup(comp);
            j->program = s->kind == SRC_BROKEN ? gq_eval_broken_program(&c->task, pi)
                                               : gq_eval_program(&c->task, pi, comp, GQ_EVAL_CONTINUES_PROMPT);
            submit(c, j);
        }
}

/* Runs every pending sample: `jobs` worker threads run the programs while this thread generates the
 * models' completions (be) or submits the given ones; then the queue closes (emptied after an error:
 * the records of what ran stay) and the workers are joined. */
static int run_workers(ctx *c, int jobs, gq_backend *be) {
    int rc = GQ_OK;
    for (int si = 0; si < c->nsrc; si++)
        for (int pi = 0; pi < c->task.n; pi++)
            for (int k = 0; k < c->src[si].nsamp[pi]; k++) c->pending_total += !c->src[si].done[pi][k];
    c->t0 = gq_now();
    c->threads = gq_calloc((size_t)jobs, sizeof *c->threads);
    worker_arg *wa = gq_calloc((size_t)jobs, sizeof *wa);
    for (int i = 0; i < jobs; i++) {
        wa[i] = (worker_arg){.c = c, .slot = i};
        if (pthread_create(&c->threads[i], NULL, worker, &wa[i]) != 0) {
            rc = gq_err(GQ_ERR_IO, "cannot start a worker thread: %s", strerror(errno));
            break;
        }
        c->nthreads++;
    }
    gq_info("running %ld samples, %d at a time", c->pending_total, jobs);
    for (int si = 0; si < c->nsrc && !rc; si++) {
        if (c->src[si].kind == SRC_MODEL)
            rc = generate(c, si, be);
        else
            submit_given(c, si);
    }
    pthread_mutex_lock(&c->mu);
    c->closed = 1;
    if (rc) {
        while (c->head) {
            job *j = c->head;
            c->head = j->next;
            job_free(j);
        }
        c->tail = NULL;
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < c->nthreads; i++) pthread_join(c->threads[i], NULL);
    free(wa);
    free(c->threads);
    flush_lines(c);
    if (!rc && c->err) rc = gq_err(c->err, "%s", c->errmsg);
    return rc;
}

/* OUT.summary.json: the summary, written atomically. */
static int write_summary(ctx *c, const char *out) {
    json_t *j = summary_json(c);
    size_t pl = strlen(out);
    char *sp = gq_malloc(pl + 16);
    snprintf(sp, pl + 16, "%s.summary.json", out);
    int rc = gq_json_write_file(sp, j, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    json_decref(j);
    free(sp);
    return rc;
}

int gq_eval_run(const gq_eval_opts *o, gq_eval_report *rep) {
    memset(rep, 0, sizeof *rep);
    int rc = check_opts(o);
    if (rc) return rc;
    double t_start = gq_now();
    json_decref(json_object()); /* jansson's hash seed, set once before the workers */
    ctx c;
    memset(&c, 0, sizeof c);
    c.o = o;
    c.rep = rep;
    c.chat = o->model_dir && !strcmp(o->template_spec, "chat");
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    gq_backend *be = NULL;
    if (o->model_dir) { /* a bad --device or --precision before anything is loaded */
        gq_set_threads(o->threads);
        rc = gq_backend_init(&be, o->device);
        if (!rc) rc = gq_backend_set_precision(be, o->precision);
    }
    if (!rc) rc = gq_eval_task_load(&c.task, o->task, o->data, o->limit);
    if (rc) {
        gq_backend_free(be);
        return rc;
    }
    int np = c.task.n;
    rep->n_problems = np;
    rep->task_ids = gq_calloc((size_t)np, sizeof *rep->task_ids);
    for (int pi = 0; pi < np; pi++) rep->task_ids[pi] = gq_strdup(c.task.p[pi].task_id);
    gq_info("%s: %d problems from %s", gq_eval_task_name(o->task), np, c.task.path);
    rc = setup_sources(&c);
    int jobs = o->jobs ? o->jobs : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (jobs < 1) jobs = 1;
    if (!rc) rc = open_sandbox(&c, jobs);
    if (!rc) rc = open_output(&c);
    if (!rc) rc = run_workers(&c, jobs, be);
    int rc2 = gq_calib_gen_out_close(c.out);
    if (!rc) rc = rc2;
    summarize(&c);
    rep->seconds = gq_now() - t_start;
    if (!rc && o->out) rc = write_summary(&c, o->out);
    gq_sb_close(c.sb);
    for (int si = 0; si < c.nsrc; si++) source_free(&c.src[si], np);
    gq_eval_task_free(&c.task);
    free(c.python);
    free(c.header);
    free(c.buf.p);
    gq_backend_free(be);
    pthread_mutex_destroy(&c.mu);
    pthread_cond_destroy(&c.cv);
    return rc;
}
