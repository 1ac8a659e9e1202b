/*
 * ppl.c -- perplexity over token windows, layer-major over chunks of
 * windows, and the KL divergence from a base model on the same windows (see
 * gq/ppl.h). Tokenizing a text is in ppl_text.c.
 */
#include "gq/graph.h"
#include "gq/knobs.h"
#include "gq/ppl.h"
#include "gq/st.h"

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

void gq_kld_result_free(gq_kld_result *k) {
    if (!k) return;
    free(k->token_kld);
    free(k->window_kld);
    free(k->window_top1);
    gq_ppl_result_free(&k->base);
    memset(k, 0, sizeof *k);
}

/* Everything one evaluation of one model holds on the backend. */
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
    if (!st->be) return; /* never initialised */
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

/* Windows per chunk: what the memory budget allows (per_window: the activations of one window,
 * of both models in a KL run), at most ~1/10 of the windows (a progress line per chunk), a
 * multiple of the parallel windows. */
static int choose_chunk(gq_backend *be, const gq_ppl_opts *o, size_t per_window, int nw) {
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

static size_t window_bytes(gq_backend *be, const gq_model *m, int seqlen) {
    return gq_be_act_bytes(be, (size_t)seqlen * m->cfg.hidden);
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

/* What a KL run keeps on the host. */
typedef struct {
    ppl_state *base;      /* the base model's evaluation */
    int vocab;            /* the lm heads' rows */
    int rows;             /* logits rows per head call */
    float *lm, *lb;       /* [nscratch][rows][vocab] each thread's logits: the model's, the base's */
    double *token;        /* [nw][seqlen - 1] per-token KL */
    double *wmean;        /* [nw] */
    int64_t *wagree;      /* [nw] predictions whose argmaxes agree */
    int ndump;            /* windows whose logits are dumped (GQ_KLD_DUMP) */
    float *dm, *db;       /* [ndump][seqlen - 1][vocab] */
} kld_acc;

static void kld_free(kld_acc *a) {
    free(a->lm);
    free(a->lb);
    free(a->token);
    free(a->wmean);
    free(a->wagree);
    free(a->dm);
    free(a->db);
    memset(a, 0, sizeof *a);
}

/* Head rows of 16 MiB of logits (8 .. 256), per thread for each model; the dumped windows' logits
 * (at most 2 GiB: a test hook for small models). */
static int kld_init(kld_acc *a, const ppl_state *st, ppl_state *bs, const gq_ppl_opts *o, int nw) {
    int V = st->head.lm.rows, P = st->seqlen - 1;
    if (bs->head.lm.rows != V)
        return gq_err(GQ_ERR_ARG, "KL divergence: the base model's lm_head has %d rows, the model's %d",
                      bs->head.lm.rows, V);
    a->base = bs;
    a->vocab = V;
    int R = (int)((16u << 20) / ((size_t)V * sizeof(float)));
    a->rows = R < 8 ? 8 : R > 256 ? 256 : R;
    if (a->rows > P) a->rows = P;
    size_t per = (size_t)st->nscratch * a->rows * V * sizeof(float);
    a->lm = gq_malloc(per);
    a->lb = gq_malloc(per);
    a->token = gq_malloc((size_t)nw * P * sizeof(double));
    a->wmean = gq_calloc((size_t)nw, sizeof(double));
    a->wagree = gq_calloc((size_t)nw, sizeof(int64_t));
    if (!o->dump_path) return GQ_OK;
    int nd = o->dump_windows > 0 ? o->dump_windows : 4;
    if (nd > nw) nd = nw;
    double bytes = 2.0 * nd * P * V * sizeof(float);
    if (bytes > (double)(2u << 30)) {
        char b[32];
        return gq_err(GQ_ERR_ARG, "%s: the logits of %d windows of %d tokens (vocabulary %d) would take %s; at most "
                                  "2 GiB are dumped (fewer windows or a shorter --seqlen)",
                      o->dump_path, nd, st->seqlen, V, gq_fmt_bytes(b, sizeof b, bytes));
    }
    a->ndump = nd;
    a->dm = gq_malloc((size_t)nd * P * V * sizeof(float));
    a->db = gq_malloc((size_t)nd * P * V * sizeof(float));
    return GQ_OK;
}

/* What a per-window step needs. */
typedef struct {
    ppl_state *st;
    const gq_blayer *bl; /* the layer being run */
    int l;               /* its index */
    const int32_t *ids;  /* the chunk's first window */
    int w0;              /* its index in the text */
    double *out;         /* [nw] window losses */
    double *bout;        /* KL: [nw] the base's window losses */
    kld_acc *kl;         /* KL: what is kept (NULL: a perplexity run) */
} chunk_ctx;

/* Window w's step on thread tid (its scratch, its logits buffers). */
typedef int (*window_fn)(const chunk_ctx *cx, int w, int tid);

static char *state_x(const ppl_state *st, int w) {
    return (char *)st->x + (size_t)w * window_bytes(st->be, st->m, st->seqlen);
}

static int layer_step(const chunk_ctx *cx, int w, int tid) {
    const ppl_state *st = cx->st;
    return gq_fwd_layer(st->be, &st->m->cfg, cx->l, cx->bl, state_x(st, w), st->seqlen, st->inv_freq, &st->s[tid]);
}

/* Final norm and the NLL of the window's seqlen - 1 next-token predictions (NaN/Inf when an
 * activation was: NaN propagates through every op, the backends' exp included; run_chunk checks). */
static int head_step(const chunk_ctx *cx, int w, int tid) {
    const ppl_state *st = cx->st;
    const gq_config *c = &st->m->cfg;
    int T = st->seqlen, d = c->hidden;
    double nll = 0;
    int64_t cnt = 0;
    int rc = gq_bhead_nll(st->be, c, &st->head, st->s[tid].xn, state_x(st, w), d, T - 1, cx->ids + (size_t)w * T + 1,
                          &nll, &cnt, NULL);
    cx->out[w] = cnt ? nll / (double)cnt : 0.0;
    return rc;
}

/* One prediction, in double: KL(base || model) of the log-softmaxes of the logits b and q
 * [vocab], as E_pb[b - q] - (lse(b) - lse(q)) (one pass for the maxima, one for both sums of
 * exponentials and the base-weighted difference; exactly 0 for equal rows); *agree: the
 * argmaxes (the first maximal index of each) agree. */
static double kld_row(const float *b, const float *q, int vocab, int *agree) {
    int ib = 0, iq = 0;
    for (int v = 1; v < vocab; v++) {
        if (b[v] > b[ib]) ib = v;
        if (q[v] > q[iq]) iq = v;
    }
    double mb = b[ib], mq = q[iq], sb = 0, sq = 0, sd = 0;
    for (int v = 0; v < vocab; v++) {
        double e = exp((double)b[v] - mb);
        sb += e;
        sq += exp((double)q[v] - mq);
        sd += e * ((double)b[v] - (double)q[v]);
    }
    *agree = ib == iq;
    return sd / sb - ((mb + log(sb)) - (mq + log(sq)));
}

/* Rows lb, lm [nr][vocab] (base, model): the per-token KL into kl[nr]; returns how many argmaxes
 * agree. Rows in parallel when this is not inside a parallel region already (a GPU run). */
static int64_t kld_rows(const float *lb, const float *lm, int nr, int vocab, double *kl) {
    int64_t agree = 0;
#pragma omp parallel for schedule(static) reduction(+ : agree) if ((size_t)nr * vocab >= 32768)
    for (int r = 0; r < nr; r++) {
        int a = 0;
        kl[r] = kld_row(lb + (size_t)r * vocab, lm + (size_t)r * vocab, vocab, &a);
        agree += a;
    }
    return agree;
}

/* Rows t0 .. t0 + nr - 1 of window w through st's head: NLL of the targets, logits to the host. */
static int head_rows(const ppl_state *st, int w, int tid, int t0, int nr, const int32_t *targets, double *nll,
                     int64_t *cnt, float *logits) {
    const gq_config *c = &st->m->cfg;
    const char *x = state_x(st, w) + gq_be_act_bytes(st->be, (size_t)t0 * c->hidden);
    return gq_bhead_nll(st->be, c, &st->head, st->s[tid].xn, x, c->hidden, nr, targets, nll, cnt, logits);
}

/* Both heads over window w, block by block of rows: both losses, the per-token KL, the argmax
 * agreement, and (dumped windows) a copy of the logits. */
static int kld_step(const chunk_ctx *cx, int w, int tid) {
    const ppl_state *st = cx->st, *bs = cx->kl->base;
    kld_acc *a = cx->kl;
    int T = st->seqlen, P = T - 1, V = a->vocab, W = cx->w0 + w;
    const int32_t *tg = cx->ids + (size_t)w * T + 1;
    size_t blk = (size_t)a->rows * V;
    float *lm = a->lm + (size_t)tid * blk, *lb = a->lb + (size_t)tid * blk;
    double *kl = a->token + (size_t)W * P, nll = 0, bnll = 0;
    int64_t cnt = 0, bcnt = 0, agree = 0;
    int rc = GQ_OK;
    for (int t0 = 0; t0 < P && rc == GQ_OK; t0 += a->rows) {
        int nr = P - t0 < a->rows ? P - t0 : a->rows;
        rc = head_rows(bs, w, tid, t0, nr, tg + t0, &bnll, &bcnt, lb);
        if (rc != GQ_OK) {
            gq_err_prefix("base model");
            break;
        }
        if ((rc = head_rows(st, w, tid, t0, nr, tg + t0, &nll, &cnt, lm)) != GQ_OK) break;
        agree += kld_rows(lb, lm, nr, V, kl + t0);
        if (W < a->ndump) {
            memcpy(a->db + ((size_t)W * P + t0) * V, lb, (size_t)nr * V * sizeof(float));
            memcpy(a->dm + ((size_t)W * P + t0) * V, lm, (size_t)nr * V * sizeof(float));
        }
    }
    cx->out[w] = cnt ? nll / (double)cnt : 0.0;
    cx->bout[w] = bcnt ? bnll / (double)bcnt : 0.0;
    double s = 0;
    for (int t = 0; t < P; t++) s += kl[t];
    a->wmean[W] = s / P;
    a->wagree[W] = agree;
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
            int rc = fn(cx, w, 0);
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
        int rc = fn(cx, w, tid);
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

/* Embed windows cids[0 .. nw) and run them through every layer of st's model, layer-major. */
static int run_layers(ppl_state *st, const int32_t *cids, int nw) {
    const gq_config *c = &st->m->cfg;
    int T = st->seqlen, d = c->hidden, rc = GQ_OK;
    chunk_ctx cx = {.st = st, .ids = cids};
    for (int w = 0; w < nw && rc == GQ_OK; w++) {
        rc = gq_model_embed(st->m, cids + (size_t)w * T, T, st->emb);
        if (rc == GQ_OK) rc = gq_be_upload_f32(st->be, state_x(st, w), st->emb, (size_t)T * d);
    }
    for (int l = 0; l < c->n_layers && rc == GQ_OK; l++) {
        gq_blayer bl;
        if ((rc = gq_blayer_load(st->be, st->m, l, &bl)) != GQ_OK) break;
        cx.bl = &bl;
        cx.l = l;
        rc = for_windows(&cx, nw, layer_step);
        gq_blayer_free(st->be, &bl);
    }
    return rc;
}

/* Run windows [w0, w0 + nw) of ids through the model, layer-major; loss of each into out[]. */
static int run_chunk(ppl_state *st, const int32_t *ids, int w0, int nw, double *out) {
    chunk_ctx cx = {.st = st, .ids = ids + (size_t)w0 * st->seqlen, .w0 = w0, .out = out};
    int rc = run_layers(st, cx.ids, nw);
    if (rc == GQ_OK) rc = for_windows(&cx, nw, head_step);
    if (rc != GQ_OK) return gq_err_prefix("windows %d..%d", w0, w0 + nw - 1);
    for (int w = 0; w < nw; w++)
        if (!isfinite(out[w])) return locate_nonfinite(st, ids, w0 + w);
    return GQ_OK;
}

/* run_chunk for a KL run: the base model's layers, then the model's, then both heads window by
 * window (kld_step); the losses into out[] and bout[] (the base's). */
static int run_chunk_kld(ppl_state *st, kld_acc *a, const int32_t *ids, int w0, int nw, double *out, double *bout) {
    chunk_ctx cx = {.st = st, .ids = ids + (size_t)w0 * st->seqlen, .w0 = w0, .out = out, .bout = bout, .kl = a};
    int rc = run_layers(a->base, cx.ids, nw);
    if (rc != GQ_OK) gq_err_prefix("base model");
    else rc = run_layers(st, cx.ids, nw);
    if (rc == GQ_OK) rc = for_windows(&cx, nw, kld_step);
    if (rc != GQ_OK) return gq_err_prefix("windows %d..%d", w0, w0 + nw - 1);
    for (int w = 0; w < nw; w++) {
        if (!isfinite(bout[w])) {
            locate_nonfinite(a->base, ids, w0 + w);
            return gq_err_prefix("base model");
        }
        if (!isfinite(out[w])) return locate_nonfinite(st, ids, w0 + w);
        if (!isfinite(a->wmean[w0 + w]))
            return gq_err(GQ_ERR_NUMERIC, "window %d: the KL divergence is not finite while both losses are", w0 + w);
    }
    return GQ_OK;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy's linear interpolation: exact where a == b, symmetric in how it rounds. */
static double lerp(double a, double b, double t) {
    return t < 0.5 ? a + (b - a) * t : b - (b - a) * (1.0 - t);
}

void gq_kld_stats(const double *kl, int64_t n, double *mean, double *median, double *p99) {
    GQ_ASSERT(n >= 1);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += kl[i];
    *mean = s / (double)n;
    double *v = gq_malloc((size_t)n * sizeof(double));
    memcpy(v, kl, (size_t)n * sizeof(double));
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    *median = n % 2 ? v[n / 2] : lerp(v[n / 2 - 1], v[n / 2], 0.5);
    double pos = 0.99 * (double)(n - 1);
    int64_t lo = (int64_t)pos;
    *p99 = lerp(v[lo], v[lo + 1 < n ? lo + 1 : lo], pos - (double)lo);
    free(v);
}

/* The first dump_windows windows' logits of both models, their ids and gq's per-token KL, as one
 * safetensors file (GQ_KLD_DUMP: tests/ref/gen_kld.py recomputes the statistics from it). */
static int kld_dump(const kld_acc *a, const int32_t *ids, int T, const char *path) {
    int64_t nd = a->ndump, P = T - 1, V = a->vocab;
    char sT[24], sn[24];
    snprintf(sT, sizeof sT, "%d", T);
    snprintf(sn, sizeof sn, "%d", a->ndump);
    const char *meta[] = {"gq_kld_dump",
                          "logits: the model's, base_logits: the base model's, [window][t][vocab] for the predictions "
                          "of ids[window][t + 1]; kld: gq's KL(base || model) per prediction",
                          "seqlen", sT, "windows", sn};
    gq_st_item it[] = {
        {"base_logits", GQ_DT_F32, 3, {nd, P, V}, a->db},
        {"logits", GQ_DT_F32, 3, {nd, P, V}, a->dm},
        {"ids", GQ_DT_I32, 2, {nd, T}, ids},
        {"kld", GQ_DT_F64, 2, {nd, P}, a->token},
    };
    int rc = gq_st_write_file(path, it, 4, meta, 3);
    if (rc == GQ_OK) gq_info("wrote the logits of %d windows of both models to %s", a->ndump, path);
    return rc;
}

/* Fill r from its window losses (already in r->window_nll). */
static void finish_result(gq_ppl_result *r, int nw, int seqlen, size_t n, double sum, double seconds) {
    r->n_windows = nw;
    r->n_predictions = (int64_t)nw * (seqlen - 1);
    r->n_tokens = (int64_t)n;
    r->mean_nll = sum / nw;
    r->ppl = exp(r->mean_nll);
    r->seconds = seconds;
}

/* Every chunk of windows: the losses into r (and, KL, the base's into br and the rest into a). */
static int run_windows(ppl_state *st, kld_acc *a, const int32_t *ids, size_t n, int nw, int chunk,
                       const gq_ppl_opts *o, gq_ppl_result *r, gq_ppl_result *br) {
    r->window_nll = gq_calloc((size_t)nw, sizeof(double));
    if (a) br->window_nll = gq_calloc((size_t)nw, sizeof(double));
    double t0 = gq_now(), sum = 0, bsum = 0, ksum = 0;
    int rc = GQ_OK;
    for (int w0 = 0; w0 < nw && rc == GQ_OK; w0 += chunk) {
        int k = nw - w0 < chunk ? nw - w0 : chunk;
        rc = a ? run_chunk_kld(st, a, ids, w0, k, r->window_nll + w0, br->window_nll + w0)
               : run_chunk(st, ids, w0, k, r->window_nll + w0);
        if (rc != GQ_OK) break;
        for (int i = 0; i < k; i++) {
            sum += r->window_nll[w0 + i];
            if (a) bsum += br->window_nll[w0 + i], ksum += a->wmean[w0 + i];
        }
        if (o->progress) {
            char eta[96];
            gq_eta_str(eta, sizeof eta, w0 + k, nw, t0);
            if (a)
                gq_info("[%d/%d] ppl %.4f, base ppl %.4f, kld mean %.6f | %s", w0 + k, nw, exp(sum / (w0 + k)),
                        exp(bsum / (w0 + k)), ksum / (w0 + k), eta);
            else
                gq_info("[%d/%d] ppl %.4f | %s", w0 + k, nw, exp(sum / (w0 + k)), eta);
        }
    }
    if (rc != GQ_OK) return rc;
    finish_result(r, nw, st->seqlen, n, sum, gq_now() - t0);
    if (a) finish_result(br, nw, st->seqlen, n, bsum, r->seconds);
    return GQ_OK;
}

/* The KL statistics of a finished run into k (taking over a's per-token arrays). */
static void kld_finish(kld_acc *a, int nw, int seqlen, gq_kld_result *k) {
    int P = seqlen - 1;
    k->n = (int64_t)nw * P;
    k->token_kld = a->token;
    k->window_kld = a->wmean;
    a->token = a->wmean = NULL;
    k->window_top1 = gq_malloc((size_t)nw * sizeof(double));
    int64_t agree = 0;
    for (int w = 0; w < nw; w++) {
        agree += a->wagree[w];
        k->window_top1[w] = (double)a->wagree[w] / P;
    }
    k->top1 = (double)agree / (double)k->n;
    gq_kld_stats(k->token_kld, k->n, &k->mean, &k->median, &k->p99);
}

/* Windows of seqlen tokens in n ids (at most max_windows), or the error. */
static int count_windows(const gq_ppl_opts *o, size_t n, int *nw, size_t *nw_all) {
    int seqlen = o->seqlen;
    if (seqlen < 2) return gq_err(GQ_ERR_ARG, "perplexity: seqlen %d, expected at least 2", seqlen);
    if (n < (size_t)seqlen)
        return gq_err(GQ_ERR_DATA,
                      "perplexity: the text has %zu tokens, at least %d are needed for one window of %d tokens "
                      "(lower --seqlen or use a longer text)",
                      n, seqlen, seqlen);
    *nw_all = n / (size_t)seqlen;
    *nw = *nw_all > 1000000000 ? 1000000000 : (int)*nw_all;
    if (o->max_windows > 0 && o->max_windows < *nw) *nw = o->max_windows;
    return GQ_OK;
}

int gq_ppl_kld_ids(const gq_model *m, const gq_model *base, gq_backend *be, const int32_t *ids, size_t n,
                   const gq_ppl_opts *o, gq_ppl_result *r, gq_kld_result *k) {
    memset(r, 0, sizeof *r);
    r->n_tokens = (int64_t)n;
    if (base && !k) return gq_err(GQ_ERR_ARG, "KL divergence: no result given");
    if (base) memset(k, 0, sizeof *k);
    if (base && base->cfg.vocab != m->cfg.vocab)
        return gq_err(GQ_ERR_ARG,
                      "KL divergence: the base model %s has a vocabulary of %d tokens, the model %s one of %d: the "
                      "two must share one tokenizer",
                      base->dir, base->cfg.vocab, m->dir, m->cfg.vocab);
    int nw = 0, seqlen = o->seqlen;
    size_t nw_all = 0;
    int rc = count_windows(o, n, &nw, &nw_all);
    if (rc != GQ_OK) return rc;
    ppl_state st, bst;
    kld_acc acc;
    memset(&bst, 0, sizeof bst);
    memset(&acc, 0, sizeof acc);
    size_t per = window_bytes(be, m, seqlen) + (base ? window_bytes(be, base, seqlen) : 0);
    int chunk = choose_chunk(be, o, per, nw);
    rc = state_init(&st, m, be, seqlen, chunk);
    if (rc == GQ_OK && base && (rc = state_init(&bst, base, be, seqlen, chunk)) != GQ_OK) gq_err_prefix("base model");
    if (rc == GQ_OK && base) rc = kld_init(&acc, &st, &bst, o, nw);
    if (rc == GQ_OK && o->progress) {
        char b[32];
        gq_info("perplexity%s: %d windows of %d tokens (%zu tokens, %zu in full windows), %d window%s per chunk "
                "(%s of activations)",
                base ? " and KL divergence from the base model" : "", nw, seqlen, n, nw_all * (size_t)seqlen, chunk,
                chunk == 1 ? "" : "s", gq_fmt_bytes(b, sizeof b, (double)per * chunk));
    }
    if (rc == GQ_OK) rc = run_windows(&st, base ? &acc : NULL, ids, n, nw, chunk, o, r, base ? &k->base : NULL);
    if (rc == GQ_OK && acc.ndump) rc = kld_dump(&acc, ids, seqlen, o->dump_path);
    state_free(&st);
    state_free(&bst);
    if (rc == GQ_OK && base) kld_finish(&acc, nw, seqlen, k);
    kld_free(&acc);
    if (rc != GQ_OK) {
        gq_ppl_result_free(r);
        if (base) gq_kld_result_free(k);
    }
    return rc;
}

int gq_ppl_ids(const gq_model *m, gq_backend *be, const int32_t *ids, size_t n, const gq_ppl_opts *o,
               gq_ppl_result *r) {
    return gq_ppl_kld_ids(m, NULL, be, ids, n, o, r, NULL);
}
