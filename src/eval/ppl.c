/*
 * ppl.c -- perplexity over token windows, layer-major over chunks of
 * windows (see gq/ppl.h). Tokenizing a text is in ppl_text.c.
 */
#include "gq/graph.h"
#include "gq/knobs.h"
#include "gq/ppl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif


void gq_ppl_opts_default(gq_ppl_opts *o) {
    memset(o, 0, sizeof *o);
    o->seqlen = 2048;
    o->progress = 1;
}

void gq_ppl_result_free(gq_ppl_result *r) {
    if (!r) return;
    free(r->window_nll);
    memset(r, 0, sizeof *r);
}

/* Everything one evaluation holds on the backend. */
typedef struct {
    gq_backend *be;
    const gq_model *m;
    int seqlen, chunk;
    void *x;            /* [chunk][seqlen][hidden] activations */
    int nscratch;       /* windows run at once (CPU: one per thread) */
    gq_fwd_scratch *s;  /* [nscratch] one window's scratch each */
    gq_bhead head;      /* final norm, lm_head [vocab][hidden] */
    float *inv_freq;    /* [rot_dim / 2] */
    float *emb;         /* host [seqlen][hidden] */
} ppl_state;

static void state_free(ppl_state *st) {
    for (int i = 0; i < st->nscratch && st->s; i++) gq_fwd_scratch_free(st->be, &st->s[i]);
    free(st->s);
    gq_be_release(st->be, st->x);
    gq_bhead_free(st->be, &st->head);
    free(st->inv_freq);
    free(st->emb);
}

/* Windows run at once: on the CPU one per thread (each op single-threaded
 * inside, so no barrier per op). On 2 idle cores both schedules take the
 * same time (32 windows of pycoder-5m: 4.9-5.6 s vs 5.0-5.1 s); with other
 * processes on the machine, one window per thread was 1.4x faster and used
 * 40% less CPU (multithreaded ops spin at their barriers). On a GPU one.
 * GQ_PPL_PARALLEL=ops forces the one-by-one schedule (for comparisons). */
static int parallel_windows(gq_backend *be) {
    if (gq_backend_is_gpu(be) || gq_knobs_get()->ppl_ops) return 1;
    return gq_get_threads();
}

/* Windows per chunk: what the memory budget allows, at most ~1/10 of the
 * windows (a progress line per chunk), a multiple of the parallel windows. */
static int choose_chunk(gq_backend *be, const gq_model *m, const gq_ppl_opts *o, int seqlen, int nw) {
    size_t per_window = gq_be_act_bytes(be, (size_t)seqlen * m->cfg.hidden);
    size_t budget = o->budget_bytes;
    if (!budget) {
        size_t free_b = gq_be_free_bytes(be);
        budget = gq_backend_is_gpu(be) && free_b ? free_b / 2 : (size_t)512 << 20;
    }
    int par = parallel_windows(be);
    size_t c = budget / per_window;
    size_t cap = o->max_chunk > 0 ? (size_t)o->max_chunk : ((size_t)nw + 9) / 10;
    cap = (cap + (size_t)par - 1) / (size_t)par * (size_t)par;
    if (c > cap) c = cap;
    if (c > (size_t)nw) c = (size_t)nw;
    return c < 1 ? 1 : (int)c;
}

static int state_init(ppl_state *st, const gq_model *m, gq_backend *be, int seqlen, int chunk) {
    const gq_config *c = &m->cfg;
    memset(st, 0, sizeof *st);
    st->be = be, st->m = m, st->seqlen = seqlen, st->chunk = chunk;
    int rc = gq_bhead_load(be, m, &st->head);
    st->nscratch = parallel_windows(be) < chunk ? parallel_windows(be) : chunk;
    st->s = gq_calloc((size_t)st->nscratch, sizeof *st->s);
    for (int i = 0; i < st->nscratch && rc == GQ_OK; i++) rc = gq_fwd_scratch_init(be, c, seqlen, &st->s[i]);
    if (rc == GQ_OK) {
        st->x = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)chunk * seqlen * c->hidden));
        if (!st->x) rc = gq_err_prefix("activations of %d windows", chunk);
    }
    st->inv_freq = gq_malloc(sizeof(float) * (size_t)(c->rot_dim / 2 + 1));
    gq_rope_inv_freq(c, seqlen, st->inv_freq);
    st->emb = gq_malloc(sizeof(float) * (size_t)seqlen * c->hidden);
    return rc;
}

/* What a per-window step needs. */
typedef struct {
    ppl_state *st;
    const gq_blayer *bl; /* the layer being run */
    int l;               /* its index */
    const int32_t *ids;  /* the chunk's first window */
    double *out;         /* [nw] window losses */
} chunk_ctx;

typedef int (*window_fn)(const chunk_ctx *cx, int w, gq_fwd_scratch *s);

static char *window_x(const chunk_ctx *cx, int w) {
    return (char *)cx->st->x + (size_t)w * gq_be_act_bytes(cx->st->be, (size_t)cx->st->seqlen * cx->st->m->cfg.hidden);
}

static int layer_step(const chunk_ctx *cx, int w, gq_fwd_scratch *s) {
    const ppl_state *st = cx->st;
    return gq_fwd_layer(st->be, &st->m->cfg, cx->l, cx->bl, window_x(cx, w), st->seqlen, st->inv_freq, s);
}

/* Final norm and the NLL of the window's seqlen - 1 next-token predictions (NaN/Inf when an
 * activation was: NaN propagates through every op, the backends' exp included; run_chunk checks). */
static int head_step(const chunk_ctx *cx, int w, gq_fwd_scratch *s) {
    const ppl_state *st = cx->st;
    const gq_config *c = &st->m->cfg;
    int T = st->seqlen, d = c->hidden;
    double nll = 0;
    int64_t cnt = 0;
    int rc = gq_bhead_nll(st->be, c, &st->head, s->xn, window_x(cx, w), d, T - 1, cx->ids + (size_t)w * T + 1, &nll,
                          &cnt, NULL);
    cx->out[w] = cnt ? nll / (double)cnt : 0.0;
    return rc;
}

/*
 * Window w (of the whole text) gave a non-finite loss: run it again alone, every op of every
 * layer checked, and name the first NaN/Inf: "window 3 (tokens 6144..8191 of the text): layer 2:
 * non-finite activation after attention (NaN at token 17, column 40)". The normal path checks
 * nothing but the loss, which every NaN/Inf reaches; this costs one window's forward, on the
 * error path only. Uses window slot 0 and scratch 0 (the chunk is abandoned anyway).
 */
static int locate_nonfinite(ppl_state *st, const int32_t *ids, int w) {
    const gq_config *c = &st->m->cfg;
    gq_backend *be = st->be;
    int T = st->seqlen, d = c->hidden;
    const int32_t *wid = ids + (size_t)w * T;
    void *x = st->x;
    int rc = gq_model_embed(st->m, wid, T, st->emb);
    if (rc == GQ_OK) rc = gq_be_upload_f32(be, x, st->emb, (size_t)T * d);
    for (int l = 0; l < c->n_layers && rc == GQ_OK; l++) {
        gq_blayer bl;
        if ((rc = gq_blayer_load(be, st->m, l, &bl)) != GQ_OK) break;
        gq_layer_args a = {.be = be, .cfg = c, .layer = l, .bl = &bl, .x = x, .T = T, .first = GQ_STEP_ATTN_IN,
                           .last = GQ_STEP_MLP_RES, .inv_freq = st->inv_freq, .check = 1, .s = &st->s[0]};
        rc = gq_layer_run(&a);
        gq_blayer_free(be, &bl);
        if (rc == GQ_ERR_NUMERIC) gq_err_prefix("layer %d", l);
    }
    if (rc == GQ_OK)
        rc = gq_norm_apply(be, c, st->s[0].xn, d, x, d, T, d, &st->head.norm, &st->head.norm_b);
    if (rc == GQ_OK) rc = gq_act_check(be, st->s[0].xn, d, T, d, "after the final norm (model.norm)");
    if (rc == GQ_OK)
        rc = gq_err(GQ_ERR_NUMERIC, "the loss is not finite while every activation up to the final norm is: the "
                                    "logits (lm_head) overflow");
    return gq_err_prefix("window %d (tokens %lld..%lld of the text)", w, (long long)w * T, (long long)w * T + T - 1);
}

/* fn for every window w < nw: one after another, or on the CPU one window per
 * thread (error messages are per thread: the first one is carried over). */
static int for_windows(const chunk_ctx *cx, int nw, window_fn fn) {
    ppl_state *st = cx->st;
    if (st->nscratch == 1 || nw == 1) {
        for (int w = 0; w < nw; w++) {
            int rc = fn(cx, w, &st->s[0]);
            if (rc != GQ_OK) return rc;
        }
        return GQ_OK;
    }
    int err = GQ_OK;
    char msg[1024] = "";
#pragma omp parallel for schedule(dynamic, 1) num_threads(st->nscratch)
    for (int w = 0; w < nw; w++) {
        int seen;
#pragma omp atomic read
        seen = err;
        if (seen != GQ_OK) continue;
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        int rc = fn(cx, w, &st->s[tid]);
        if (rc != GQ_OK) {
#pragma omp critical(gq_ppl_err)
            if (err == GQ_OK) {
                snprintf(msg, sizeof msg, "%s", gq_errmsg());
#pragma omp atomic write
                err = rc;
            }
        }
    }
    return err == GQ_OK ? GQ_OK : gq_err(err, "%s", msg);
}

/* Run windows [w0, w0 + nw) of ids through the model, layer-major; loss of each into out[]. */
static int run_chunk(ppl_state *st, const int32_t *ids, int w0, int nw, double *out) {
    const gq_config *c = &st->m->cfg;
    gq_backend *be = st->be;
    int T = st->seqlen, d = c->hidden, rc = GQ_OK;
    chunk_ctx cx = {.st = st, .ids = ids + (size_t)w0 * T, .out = out};
    for (int w = 0; w < nw && rc == GQ_OK; w++) {
        rc = gq_model_embed(st->m, cx.ids + (size_t)w * T, T, st->emb);
        if (rc == GQ_OK) rc = gq_be_upload_f32(be, window_x(&cx, w), st->emb, (size_t)T * d);
    }
    for (int l = 0; l < c->n_layers && rc == GQ_OK; l++) {
        gq_blayer bl;
        if ((rc = gq_blayer_load(be, st->m, l, &bl)) != GQ_OK) break;
        cx.bl = &bl;
        cx.l = l;
        rc = for_windows(&cx, nw, layer_step);
        gq_blayer_free(be, &bl);
    }
    if (rc == GQ_OK) rc = for_windows(&cx, nw, head_step);
    if (rc != GQ_OK) return gq_err_prefix("windows %d..%d", w0, w0 + nw - 1);
    for (int w = 0; w < nw; w++)
        if (!isfinite(out[w])) return locate_nonfinite(st, ids, w0 + w);
    return GQ_OK;
}

int gq_ppl_ids(const gq_model *m, gq_backend *be, const int32_t *ids, size_t n, const gq_ppl_opts *o,
               gq_ppl_result *r) {
    memset(r, 0, sizeof *r);
    r->n_tokens = (int64_t)n;
    int seqlen = o->seqlen;
    if (seqlen < 2) return gq_err(GQ_ERR_ARG, "perplexity: seqlen %d, expected at least 2", seqlen);
    if (n < (size_t)seqlen)
        return gq_err(GQ_ERR_DATA,
                      "perplexity: the text has %zu tokens, at least %d are needed for one window of %d tokens "
                      "(lower --seqlen or use a longer text)",
                      n, seqlen, seqlen);
    size_t nw_all = n / (size_t)seqlen;
    int nw = nw_all > 1000000000 ? 1000000000 : (int)nw_all;
    if (o->max_windows > 0 && o->max_windows < nw) nw = o->max_windows;

    ppl_state st;
    int chunk = choose_chunk(be, m, o, seqlen, nw);
    int rc = state_init(&st, m, be, seqlen, chunk);
    if (rc != GQ_OK) {
        state_free(&st);
        return rc;
    }
    if (o->progress) {
        char b[32];
        gq_info("perplexity: %d windows of %d tokens (%zu tokens, %zu in full windows), %d window%s per chunk "
                "(%s of activations)",
                nw, seqlen, n, nw_all * (size_t)seqlen, chunk, chunk == 1 ? "" : "s",
                gq_fmt_bytes(b, sizeof b, (double)gq_be_act_bytes(be, (size_t)chunk * seqlen * m->cfg.hidden)));
    }
    r->window_nll = gq_calloc((size_t)nw, sizeof(double));
    double t0 = gq_now(), sum = 0;
    for (int w0 = 0; w0 < nw && rc == GQ_OK; w0 += chunk) {
        int k = nw - w0 < chunk ? nw - w0 : chunk;
        rc = run_chunk(&st, ids, w0, k, r->window_nll + w0);
        if (rc != GQ_OK) break;
        for (int i = 0; i < k; i++) sum += r->window_nll[w0 + i];
        if (o->progress) {
            char eta[96];
            gq_eta_str(eta, sizeof eta, w0 + k, nw, t0);
            gq_info("[%d/%d] ppl %.4f | %s", w0 + k, nw, exp(sum / (w0 + k)), eta);
        }
    }
    state_free(&st);
    if (rc != GQ_OK) {
        gq_ppl_result_free(r);
        return rc;
    }
    r->n_windows = nw;
    r->n_predictions = (int64_t)nw * (seqlen - 1);
    r->n_tokens = (int64_t)n;
    r->mean_nll = sum / nw;
    r->ppl = exp(r->mean_nll);
    r->seconds = gq_now() - t0;
    return GQ_OK;
}
