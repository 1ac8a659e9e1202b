/*
 * ppl.c -- perplexity over token windows, layer-major over chunks of
 * windows (see gq/ppl.h). Tokenizing a text is in ppl_text.c.
 */
#include "gq/ppl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    gq_fwd_scratch s;   /* one window's scratch */
    gq_bweight norm, lm; /* final norm [hidden], lm_head [vocab][hidden] */
    float *inv_freq;    /* [head_dim / 2] */
    float *emb;         /* host [seqlen][hidden] */
} ppl_state;

static void state_free(ppl_state *st) {
    gq_fwd_scratch_free(st->be, &st->s);
    gq_be_release(st->be, st->x);
    gq_be_weight_free(st->be, &st->norm);
    gq_be_weight_free(st->be, &st->lm);
    free(st->inv_freq);
    free(st->emb);
}

/* Windows per chunk from the memory budget. */
static int choose_chunk(const ppl_state *st, const gq_ppl_opts *o, int nw) {
    size_t per_window = gq_be_act_bytes(st->be, (size_t)st->seqlen * st->m->cfg.hidden);
    size_t budget = o->budget_bytes;
    if (!budget) {
        size_t free_b = gq_be_free_bytes(st->be);
        budget = gq_backend_is_gpu(st->be) && free_b ? free_b / 2 : (size_t)512 << 20;
    }
    size_t c = budget / per_window;
    if (c < 1) c = 1;
    int cap = o->max_chunk > 0 ? o->max_chunk : (nw + 9) / 10; /* ~10 progress lines by default */
    if (c > (size_t)cap) c = (size_t)cap;
    return (int)c;
}

static int state_init(ppl_state *st, const gq_model *m, gq_backend *be, int seqlen, int chunk) {
    const gq_config *c = &m->cfg;
    memset(st, 0, sizeof *st);
    st->be = be, st->m = m, st->seqlen = seqlen, st->chunk = chunk;
    float *norm = NULL, *lm = NULL;
    int rc = gq_model_load_head(m, &norm, &lm);
    if (rc == GQ_OK) rc = gq_be_weight_upload(be, &st->norm, norm, 1, c->hidden);
    if (rc == GQ_OK) rc = gq_be_weight_upload(be, &st->lm, lm, c->vocab, c->hidden);
    gq_free_aligned(norm);
    gq_free_aligned(lm);
    if (rc == GQ_OK) rc = gq_fwd_scratch_init(be, c, seqlen, &st->s);
    if (rc == GQ_OK) {
        st->x = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)chunk * seqlen * c->hidden));
        if (!st->x) rc = gq_err_prefix("activations of %d windows", chunk);
    }
    st->inv_freq = gq_malloc(sizeof(float) * (size_t)(c->head_dim / 2));
    gq_rope_inv_freq(c, seqlen, st->inv_freq);
    st->emb = gq_malloc(sizeof(float) * (size_t)seqlen * c->hidden);
    return rc;
}

/* Run windows [w0, w0 + nw) of ids through the model; loss of each into out[]. */
static int run_chunk(ppl_state *st, const int32_t *ids, int w0, int nw, double *out) {
    const gq_config *c = &st->m->cfg;
    gq_backend *be = st->be;
    int T = st->seqlen, d = c->hidden, rc = GQ_OK;
    size_t win = gq_be_act_bytes(be, (size_t)T * d); /* bytes of one window's activations */
    char *x = st->x;
    for (int w = 0; w < nw && rc == GQ_OK; w++) {
        rc = gq_model_embed(st->m, ids + (size_t)(w0 + w) * T, T, st->emb);
        if (rc == GQ_OK) rc = gq_be_upload_f32(be, x + w * win, st->emb, (size_t)T * d);
    }
    for (int l = 0; l < c->n_layers && rc == GQ_OK; l++) {
        gq_layer_host h;
        gq_blayer bl;
        rc = gq_model_load_layer(st->m, l, &h);
        if (rc != GQ_OK) break;
        rc = gq_blayer_upload(be, c, &h, &bl);
        gq_layer_host_free(&h);
        for (int w = 0; w < nw && rc == GQ_OK; w++) rc = gq_fwd_layer(be, c, &bl, x + w * win, T, st->inv_freq, &st->s);
        gq_blayer_free(be, &bl);
    }
    for (int w = 0; w < nw && rc == GQ_OK; w++) {
        double nll = 0;
        int64_t cnt = 0;
        rc = gq_be_rmsnorm(be, st->s.xn, d, x + w * win, d, T, d, &st->norm, c->rms_eps);
        /* position t predicts token t + 1: T - 1 predictions */
        if (rc == GQ_OK)
            rc = gq_be_nll(be, st->s.xn, d, T - 1, &st->lm, ids + (size_t)(w0 + w) * T + 1, &nll, &cnt, NULL);
        if (rc == GQ_OK && !isfinite(nll))
            rc = gq_err(GQ_ERR_NUMERIC, "window %d: the loss is not finite (%g)", w0 + w, nll);
        out[w] = cnt ? nll / (double)cnt : 0.0;
    }
    return rc;
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
    memset(&st, 0, sizeof st);
    st.be = be, st.m = m, st.seqlen = seqlen;
    int chunk = choose_chunk(&st, o, nw);
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
