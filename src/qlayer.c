/* qlayer.c -- GPTQ of one decoder layer on a backend (gq/qlayer.h). */
#include "gq/qlayer.h"

#include <stdlib.h>
#include <string.h>

#include "gq/export.h"

int gq_qlayer_init(gq_qlayer *q, gq_backend *be, const gq_config *cfg, int n_seq, const int *len) {
    memset(q, 0, sizeof *q);
    q->be = be;
    q->cfg = cfg;
    q->n_seq = n_seq;
    q->len = gq_malloc((size_t)n_seq * sizeof *q->len);
    q->off = gq_malloc((size_t)n_seq * sizeof *q->off);
    for (int i = 0; i < n_seq; i++) {
        q->len[i] = len[i];
        q->off[i] = q->n_tokens;
        q->n_tokens += len[i];
        if (len[i] > q->T_max) q->T_max = len[i];
    }
    int nq = cfg->n_heads * cfg->head_dim;
    q->inv_freq = gq_malloc((size_t)cfg->head_dim / 2 * sizeof(float));
    q->X = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)q->n_tokens * cfg->hidden));
    q->A = q->X ? gq_be_alloc(be, gq_be_act_bytes(be, (size_t)q->n_tokens * nq)) : NULL;
    if (!q->A) {
        gq_err_prefix("calibration activations (%lld tokens)", (long long)q->n_tokens);
        gq_qlayer_free(q);
        return gq_errcode() ? gq_errcode() : GQ_ERR_NOMEM;
    }
    int rc = gq_fwd_scratch_init(be, cfg, q->T_max, &q->s);
    if (rc) gq_qlayer_free(q);
    return rc;
}

void gq_qlayer_free(gq_qlayer *q) {
    if (!q || !q->be) return;
    gq_fwd_scratch_free(q->be, &q->s);
    gq_be_release(q->be, q->X);
    gq_be_release(q->be, q->A);
    free(q->len);
    free(q->off);
    free(q->inv_freq);
    memset(q, 0, sizeof *q);
}

void *gq_qlayer_x(gq_qlayer *q, int i) {
    return (char *)q->X + gq_be_act_bytes(q->be, (size_t)q->off[i] * q->cfg->hidden);
}

static void *seq_a(gq_qlayer *q, int i) {
    return (char *)q->A + gq_be_act_bytes(q->be, (size_t)q->off[i] * q->cfg->n_heads * q->cfg->head_dim);
}

size_t gq_qlayer_bytes(const gq_qlayer *q) {
    const gq_config *c = q->cfg;
    return gq_be_act_bytes(q->be, (size_t)q->n_tokens * (c->hidden + c->n_heads * c->head_dim));
}

static const gq_bweight *bias(const gq_bweight *b) {
    return b->data ? b : NULL;
}

/* Stage bookkeeping: a fresh Hessian, the time of the stage loop. */
typedef struct {
    gq_qlayer *q;
    int l;
    float *H;
    double t0;
} stage_t;

static int stage_begin(stage_t *st, int K) {
    st->H = NULL;
    st->t0 = gq_now();
    size_t bytes = (size_t)K * K * sizeof(float);
    st->H = gq_be_alloc(st->q->be, bytes);
    if (!st->H) return gq_err_prefix("layer %d: Hessian %d x %d", st->l, K, K);
    return gq_be_memset0(st->q->be, st->H, bytes);
}

static int hess(stage_t *st, const void *X, int ld, int T, int K) {
    double t0 = gq_now();
    int rc = gq_be_hessian_accum(st->q->be, st->H, X, ld, T, K);
    if (!rc && gq_backend_is_gpu(st->q->be)) rc = gq_be_sync(st->q->be);
    st->q->t_hessian += gq_now() - t0;
    return rc;
}

/* End of a stage loop: solve W with the stage's Hessian and slice the result
 * into the modules ids[0..n) with rows[0..n). */
static int stage_end(stage_t *st, int rc, const gq_gptq_params *p, gq_bweight *W, const char *what, int n,
                     const gq_linear_id *ids, const int *rows, gq_qresult *res) {
    gq_qlayer *q = st->q;
    if (!rc) rc = gq_be_sync(q->be);
    q->t_stages += gq_now() - st->t0;
    if (rc) {
        gq_be_release(q->be, st->H);
        return gq_err_prefix("layer %d %s", st->l, what);
    }
    gq_qresult g;
    double t0 = gq_now();
    rc = gq_be_gptq(q->be, p, st->H, 2.0 / (double)q->n_seq, W, &g);
    double secs = gq_now() - t0;
    q->t_solve += secs;
    gq_be_release(q->be, st->H);
    st->H = NULL;
    if (rc) return gq_err_prefix("layer %d %s", st->l, what);
    if (g.fallback)
        gq_warn("layer %d %s: Cholesky failed even with damping %g; quantized by rounding to nearest", st->l, what,
                g.damp_used);
    for (int k = 0, r0 = 0; k < n; r0 += rows[k], k++) {
        gq_qresult_slice(&g, r0, rows[k], &res[ids[k]]);
        res[ids[k]].seconds = secs;
    }
    gq_qresult_free(&g);
    return GQ_OK;
}

int gq_qlayer_run(gq_qlayer *q, int l, gq_blayer *bl, const gq_gptq_params *p, gq_qresult *res) {
    const gq_config *c = q->cfg;
    gq_backend *be = q->be;
    gq_fwd_scratch *s = &q->s;
    const int hid = c->hidden, nq = c->n_heads * c->head_dim, nkv = c->n_kv_heads * c->head_dim;
    const int I = c->intermediate, ldqkv = nq + 2 * nkv;
    const size_t k_off = gq_be_act_bytes(be, (size_t)nq), v_off = gq_be_act_bytes(be, (size_t)(nq + nkv));
    stage_t st = {q, l, NULL, 0};
    int rc = GQ_OK;

    if (!res) { /* a restored layer: the decoder forward, the same operations as the stages below */
        double t0 = gq_now();
        for (int i = 0; i < q->n_seq && !rc; i++) {
            gq_rope_inv_freq(c, q->len[i], q->inv_freq);
            rc = gq_fwd_layer(be, c, bl, gq_qlayer_x(q, i), q->len[i], q->inv_freq, s);
        }
        if (!rc) rc = gq_be_sync(be);
        q->t_stages += gq_now() - t0;
        return rc ? gq_err_prefix("layer %d forward", l) : GQ_OK;
    }

    /* A: [q, k, v] see rmsnorm1(x) */
    static const gq_linear_id qkv_ids[3] = {GQ_LIN_Q, GQ_LIN_K, GQ_LIN_V};
    const int qkv_rows[3] = {nq, nkv, nkv};
    rc = stage_begin(&st, hid);
    for (int i = 0; i < q->n_seq && !rc; i++) {
        rc = gq_be_rmsnorm(be, s->xn, hid, gq_qlayer_x(q, i), hid, q->len[i], hid, &bl->ln1, c->rms_eps);
        if (!rc) rc = hess(&st, s->xn, hid, q->len[i], hid);
    }
    if ((rc = stage_end(&st, rc, p, &bl->qkv, "self_attn.q_proj/k_proj/v_proj", 3, qkv_ids, qkv_rows, res))) return rc;

    /* B: [o] sees the attention output of the quantized q, k, v */
    static const gq_linear_id o_id[1] = {GQ_LIN_O};
    const int o_rows[1] = {hid};
    rc = stage_begin(&st, nq);
    for (int i = 0; i < q->n_seq && !rc; i++) {
        const int T = q->len[i];
        char *qkv = s->qkv;
        void *a = seq_a(q, i);
        gq_rope_inv_freq(c, T, q->inv_freq);
        rc = gq_be_rmsnorm(be, s->xn, hid, gq_qlayer_x(q, i), hid, T, hid, &bl->ln1, c->rms_eps);
        if (!rc) rc = gq_be_linear(be, qkv, ldqkv, s->xn, hid, T, &bl->qkv, bias(&bl->b_qkv), 0);
        if (!rc) rc = gq_be_rope(be, qkv, ldqkv, T, c->n_heads, c->head_dim, 0, q->inv_freq);
        if (!rc) rc = gq_be_rope(be, qkv + k_off, ldqkv, T, c->n_kv_heads, c->head_dim, 0, q->inv_freq);
        if (!rc)
            rc = gq_be_attention(be, a, nq, qkv, ldqkv, qkv + k_off, ldqkv, qkv + v_off, ldqkv, T, T, c->n_heads,
                                 c->n_kv_heads, c->head_dim);
        if (!rc) rc = hess(&st, a, nq, T, nq);
    }
    if ((rc = stage_end(&st, rc, p, &bl->o, "self_attn.o_proj", 1, o_id, o_rows, res))) return rc;

    /* C: h = x + o(attn) in place; [gate, up] see rmsnorm2(h) */
    static const gq_linear_id gu_ids[2] = {GQ_LIN_GATE, GQ_LIN_UP};
    const int gu_rows[2] = {I, I};
    rc = stage_begin(&st, hid);
    for (int i = 0; i < q->n_seq && !rc; i++) {
        const int T = q->len[i];
        void *x = gq_qlayer_x(q, i);
        rc = gq_be_linear(be, x, hid, seq_a(q, i), nq, T, &bl->o, bias(&bl->b_o), 1);
        if (!rc) rc = gq_be_rmsnorm(be, s->xn, hid, x, hid, T, hid, &bl->ln2, c->rms_eps);
        if (!rc) rc = hess(&st, s->xn, hid, T, hid);
    }
    if ((rc = stage_end(&st, rc, p, &bl->gu, "mlp.gate_proj/up_proj", 2, gu_ids, gu_rows, res))) return rc;

    /* D: [down] sees silu(gate) * up of the quantized gate/up */
    static const gq_linear_id down_id[1] = {GQ_LIN_DOWN};
    const int down_rows[1] = {hid};
    rc = stage_begin(&st, I);
    for (int i = 0; i < q->n_seq && !rc; i++) {
        const int T = q->len[i];
        rc = gq_be_rmsnorm(be, s->xn, hid, gq_qlayer_x(q, i), hid, T, hid, &bl->ln2, c->rms_eps);
        if (!rc) rc = gq_be_linear(be, s->gu, 2 * I, s->xn, hid, T, &bl->gu, bias(&bl->b_gu), 0);
        if (!rc) rc = gq_be_swiglu(be, s->act, I, s->gu, 2 * I, T, I);
        if (!rc) rc = hess(&st, s->act, I, T, I);
    }
    if ((rc = stage_end(&st, rc, p, &bl->down, "mlp.down_proj", 1, down_id, down_rows, res))) return rc;

    /* E: the layer output x = h + down(silu(gate(n)) * up(n)), in place */
    double t0 = gq_now();
    for (int i = 0; i < q->n_seq && !rc; i++) {
        const int T = q->len[i];
        void *x = gq_qlayer_x(q, i);
        rc = gq_be_rmsnorm(be, s->xn, hid, x, hid, T, hid, &bl->ln2, c->rms_eps);
        if (!rc) rc = gq_be_linear(be, s->gu, 2 * I, s->xn, hid, T, &bl->gu, bias(&bl->b_gu), 0);
        if (!rc) rc = gq_be_swiglu(be, s->act, I, s->gu, 2 * I, T, I);
        if (!rc) rc = gq_be_linear(be, x, hid, s->act, I, T, &bl->down, bias(&bl->b_down), 1);
    }
    if (!rc) rc = gq_be_sync(be);
    q->t_stages += gq_now() - t0;
    return rc ? gq_err_prefix("layer %d forward", l) : GQ_OK;
}
