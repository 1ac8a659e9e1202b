/* qlayer.c -- GPTQ of one decoder layer on a backend (gq/qlayer.h). */
#include "gq/knobs.h"
#include "gq/qlayer.h"

#include <stdlib.h>
#include <string.h>

#include "gq/export.h"


/* Device memory the rest of a layer's work needs besides the activations:
 * the stacked weights (in the activation dtype) twice (the layer and its working copies), the
 * largest Hessian in fp32 and fp64 with the solve's fp32 copy of the widest
 * weight, and 512 MiB of scratch. A guess on the safe side. */
static size_t reserve_bytes(const gq_backend *be, const gq_config *c) {
    const size_t h = (size_t)c->hidden, I = (size_t)c->intermediate;
    const size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    const size_t w = (q + 2 * kv) * h + h * q + 3 * I * h, kmax = I > h ? I : h;
    return gq_be_act_bytes(be, 2 * w) + 12 * kmax * kmax + 4 * 2 * I * h + ((size_t)512 << 20);
}

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
    const int nq = cfg->n_heads * cfg->head_dim;
    const size_t xb = gq_be_act_bytes(be, (size_t)q->n_tokens * cfg->hidden);
    const size_t ab = gq_be_act_bytes(be, (size_t)q->n_tokens * nq);
    q->cur_x = q->cur_a = -1;
    q->inv_freq = gq_malloc((size_t)cfg->head_dim / 2 * sizeof(float));
    const int force = gq_knobs_get()->stream_activations; /* GQ_STREAM_ACTIVATIONS=1 */
    size_t free_b = gq_be_free_bytes(be);
    q->stream = force || (free_b > 0 && xb + ab + reserve_bytes(be, cfg) > free_b);
    if (q->stream) { /* host copies, and device windows for one sequence */
        char b1[32], b2[32];
        gq_info("calibration activations (%s) stay in host memory and stream through the device one sequence at "
                "a time (%s of device memory free)%s",
                gq_fmt_bytes(b1, sizeof b1, (double)(xb + ab)), gq_fmt_bytes(b2, sizeof b2, (double)free_b),
                force ? " (GQ_STREAM_ACTIVATIONS=1)" : "");
        q->hX = malloc(xb);
        q->hA = malloc(ab);
        if (!q->hX || !q->hA) {
            gq_qlayer_free(q);
            return gq_err(GQ_ERR_NOMEM, "calibration activations: cannot allocate %s of host memory",
                          gq_fmt_bytes(b1, sizeof b1, (double)(xb + ab)));
        }
        q->X = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)q->T_max * cfg->hidden));
        q->A = q->X ? gq_be_alloc(be, gq_be_act_bytes(be, (size_t)q->T_max * nq)) : NULL;
    } else {
        q->X = gq_be_alloc(be, xb);
        q->A = q->X ? gq_be_alloc(be, ab) : NULL;
    }
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
    free(q->hX);
    free(q->hA);
    free(q->len);
    free(q->off);
    free(q->inv_freq);
    memset(q, 0, sizeof *q);
}

/* ---- activations: resident on the backend, or host copies streamed through windows ---------- */

static size_t x_bytes(const gq_qlayer *q, int64_t tokens) {
    return gq_be_act_bytes(q->be, (size_t)tokens * q->cfg->hidden);
}
static size_t a_bytes(const gq_qlayer *q, int64_t tokens) {
    return gq_be_act_bytes(q->be, (size_t)tokens * q->cfg->n_heads * q->cfg->head_dim);
}

/* Sequence i's rows of X on the backend (streaming: uploaded into the window
 * unless already there). NULL on an upload error. */
static void *x_in(gq_qlayer *q, int i) {
    if (!q->stream) return (char *)q->X + x_bytes(q, q->off[i]);
    if (q->cur_x != i) {
        if (gq_be_upload(q->be, q->X, q->hX + x_bytes(q, q->off[i]), x_bytes(q, q->len[i]))) return NULL;
        q->cur_x = i;
    }
    return q->X;
}
/* The window's X rows of sequence i were changed: write them back. */
static int x_out(gq_qlayer *q, int i) {
    if (!q->stream) return GQ_OK;
    GQ_ASSERT(q->cur_x == i);
    return gq_be_download(q->be, q->hX + x_bytes(q, q->off[i]), q->X, x_bytes(q, q->len[i]));
}
/* Sequence i's rows of A: load = 1 to read them, 0 when they are about to be overwritten. */
static void *a_in(gq_qlayer *q, int i, int load) {
    if (!q->stream) return (char *)q->A + a_bytes(q, q->off[i]);
    if (q->cur_a != i) {
        if (load && gq_be_upload(q->be, q->A, q->hA + a_bytes(q, q->off[i]), a_bytes(q, q->len[i]))) return NULL;
        q->cur_a = i;
    }
    return q->A;
}
static int a_out(gq_qlayer *q, int i) {
    if (!q->stream) return GQ_OK;
    GQ_ASSERT(q->cur_a == i);
    return gq_be_download(q->be, q->hA + a_bytes(q, q->off[i]), q->A, a_bytes(q, q->len[i]));
}

int gq_qlayer_set_x(gq_qlayer *q, int i, const float *src) {
    if (!q->stream) return gq_be_upload_f32(q->be, x_in(q, i), src, (size_t)q->len[i] * q->cfg->hidden);
    q->cur_x = i; /* the window's content is replaced */
    int rc = gq_be_upload_f32(q->be, q->X, src, (size_t)q->len[i] * q->cfg->hidden);
    return rc ? rc : x_out(q, i);
}

int gq_qlayer_get_x(gq_qlayer *q, int i, float *dst) {
    void *x = x_in(q, i);
    if (!x) return gq_errcode();
    return gq_be_download_f32(q->be, dst, x, (size_t)q->len[i] * q->cfg->hidden);
}

size_t gq_qlayer_bytes(const gq_qlayer *q) {
    return x_bytes(q, q->n_tokens) + a_bytes(q, q->n_tokens);
}

static const gq_bweight *bias(const gq_bweight *b) {
    return b->data ? b : NULL;
}

/* Stage bookkeeping: a fresh Hessian, the time of the stage loop; the layer's weights and the
 * block whose activations feed the stage (for locating a non-finite one). */
typedef struct {
    gq_qlayer *q;
    int l;
    float *H;
    double t0;
    gq_blayer *bl;
    int block; /* 1: the attention block (stages A, B), 2: the MLP block (C, D) */
} stage_t;

static int stage_begin(stage_t *st, int K, int block) {
    st->H = NULL;
    st->block = block;
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

/*
 * The solve of layer l refused a non-finite Hessian (GQ_ERR_NUMERIC, message already set): run
 * the calibration samples through the block that fed it again, every op checked, and name the
 * first NaN/Inf: "calibration sample 5: layer 3: non-finite activation after attention (NaN at
 * token 17, column 40)". Block 1 (stages A, B) starts from the layer input, still in X; block 2
 * (C, D) from h = x + o(attn), which stage C left in X. A non-finite input of layer l is the
 * output of layer l - 1 (the embedding is checked when it is read), so every activation that
 * feeds a Hessian is covered; the last layer's output feeds none and is not checked. The
 * activations are overwritten (the run fails anyway). Keeps the solve's message when every
 * activation is finite (a Hessian that overflowed from finite inputs).
 */
static int locate_nonfinite(stage_t *st) {
    gq_qlayer *q = st->q;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", gq_errmsg());
    int rc = GQ_OK;
    for (int i = 0; i < q->n_seq && rc == GQ_OK; i++) {
        void *x = x_in(q, i);
        gq_rope_inv_freq(q->cfg, q->len[i], q->inv_freq);
        rc = x ? gq_fwd_layer_checked(q->be, q->cfg, st->bl, x, q->len[i], q->inv_freq, &q->s, st->block)
               : gq_errcode();
        if (rc == GQ_ERR_NUMERIC) gq_err_prefix("calibration sample %d: layer %d", i, st->l);
    }
    q->cur_x = -1; /* the streaming window no longer holds a sequence's rows */
    return rc == GQ_OK ? gq_err(GQ_ERR_NUMERIC, "%s", msg) : rc;
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
    if (rc) {
        gq_err_prefix("layer %d %s", st->l, what);
        return rc == GQ_ERR_NUMERIC ? locate_nonfinite(st) : rc;
    }
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
    stage_t st = {q, l, NULL, 0, bl, 0};
    int rc = GQ_OK;

    if (!res) { /* a restored layer: the decoder forward, the same operations as the stages below */
        double t0 = gq_now();
        for (int i = 0; i < q->n_seq && !rc; i++) {
            void *x = x_in(q, i);
            gq_rope_inv_freq(c, q->len[i], q->inv_freq);
            rc = x ? gq_fwd_layer(be, c, bl, x, q->len[i], q->inv_freq, s) : gq_errcode();
            if (!rc) rc = x_out(q, i);
        }
        if (!rc) rc = gq_be_sync(be);
        q->t_stages += gq_now() - t0;
        return rc ? gq_err_prefix("layer %d forward", l) : GQ_OK;
    }

    /* A: [q, k, v] see rmsnorm1(x) */
    static const gq_linear_id qkv_ids[3] = {GQ_LIN_Q, GQ_LIN_K, GQ_LIN_V};
    const int qkv_rows[3] = {nq, nkv, nkv};
    rc = stage_begin(&st, hid, 1);
    for (int i = 0; i < q->n_seq && !rc; i++) {
        void *x = x_in(q, i);
        rc = x ? gq_be_rmsnorm(be, s->xn, hid, x, hid, q->len[i], hid, &bl->ln1, c->rms_eps) : gq_errcode();
        if (!rc) rc = hess(&st, s->xn, hid, q->len[i], hid);
    }
    if ((rc = stage_end(&st, rc, p, &bl->qkv, "self_attn.q_proj/k_proj/v_proj", 3, qkv_ids, qkv_rows, res))) return rc;

    /* B: [o] sees the attention output of the quantized q, k, v */
    static const gq_linear_id o_id[1] = {GQ_LIN_O};
    const int o_rows[1] = {hid};
    rc = stage_begin(&st, nq, 1);
    for (int i = 0; i < q->n_seq && !rc; i++) {
        const int T = q->len[i];
        char *qkv = s->qkv;
        void *x = x_in(q, i), *a = a_in(q, i, 0);
        gq_rope_inv_freq(c, T, q->inv_freq);
        rc = x && a ? gq_be_rmsnorm(be, s->xn, hid, x, hid, T, hid, &bl->ln1, c->rms_eps) : gq_errcode();
        if (!rc) rc = gq_be_linear(be, qkv, ldqkv, s->xn, hid, T, &bl->qkv, bias(&bl->b_qkv), 0);
        if (!rc) rc = gq_be_rope(be, qkv, ldqkv, T, c->n_heads, c->head_dim, 0, q->inv_freq);
        if (!rc) rc = gq_be_rope(be, qkv + k_off, ldqkv, T, c->n_kv_heads, c->head_dim, 0, q->inv_freq);
        if (!rc)
            rc = gq_be_attention(be, a, nq, qkv, ldqkv, qkv + k_off, ldqkv, qkv + v_off, ldqkv, T, T, c->n_heads,
                                 c->n_kv_heads, c->head_dim);
        if (!rc) rc = hess(&st, a, nq, T, nq);
        if (!rc) rc = a_out(q, i);
    }
    if ((rc = stage_end(&st, rc, p, &bl->o, "self_attn.o_proj", 1, o_id, o_rows, res))) return rc;

    /* C: h = x + o(attn) in place; [gate, up] see rmsnorm2(h) */
    static const gq_linear_id gu_ids[2] = {GQ_LIN_GATE, GQ_LIN_UP};
    const int gu_rows[2] = {I, I};
    rc = stage_begin(&st, hid, 2);
    for (int i = 0; i < q->n_seq && !rc; i++) {
        const int T = q->len[i];
        void *a = a_in(q, i, 1), *x = a ? x_in(q, i) : NULL;
        rc = x ? gq_be_linear(be, x, hid, a, nq, T, &bl->o, bias(&bl->b_o), 1) : gq_errcode();
        if (!rc) rc = x_out(q, i);
        if (!rc) rc = gq_be_rmsnorm(be, s->xn, hid, x, hid, T, hid, &bl->ln2, c->rms_eps);
        if (!rc) rc = hess(&st, s->xn, hid, T, hid);
    }
    if ((rc = stage_end(&st, rc, p, &bl->gu, "mlp.gate_proj/up_proj", 2, gu_ids, gu_rows, res))) return rc;

    /* D: [down] sees silu(gate) * up of the quantized gate/up */
    static const gq_linear_id down_id[1] = {GQ_LIN_DOWN};
    const int down_rows[1] = {hid};
    rc = stage_begin(&st, I, 2);
    for (int i = 0; i < q->n_seq && !rc; i++) {
        const int T = q->len[i];
        void *x = x_in(q, i);
        rc = x ? gq_be_rmsnorm(be, s->xn, hid, x, hid, T, hid, &bl->ln2, c->rms_eps) : gq_errcode();
        if (!rc) rc = gq_be_linear(be, s->gu, 2 * I, s->xn, hid, T, &bl->gu, bias(&bl->b_gu), 0);
        if (!rc) rc = gq_be_swiglu(be, s->act, I, s->gu, 2 * I, T, I);
        if (!rc) rc = hess(&st, s->act, I, T, I);
    }
    if ((rc = stage_end(&st, rc, p, &bl->down, "mlp.down_proj", 1, down_id, down_rows, res))) return rc;

    /* E: the layer output x = h + down(silu(gate(n)) * up(n)), in place */
    double t0 = gq_now();
    for (int i = 0; i < q->n_seq && !rc; i++) {
        const int T = q->len[i];
        void *x = x_in(q, i);
        rc = x ? gq_be_rmsnorm(be, s->xn, hid, x, hid, T, hid, &bl->ln2, c->rms_eps) : gq_errcode();
        if (!rc) rc = gq_be_linear(be, s->gu, 2 * I, s->xn, hid, T, &bl->gu, bias(&bl->b_gu), 0);
        if (!rc) rc = gq_be_swiglu(be, s->act, I, s->gu, 2 * I, T, I);
        if (!rc) rc = gq_be_linear(be, x, hid, s->act, I, T, &bl->down, bias(&bl->b_down), 1);
        if (!rc) rc = x_out(q, i);
    }
    if (!rc) rc = gq_be_sync(be);
    q->t_stages += gq_now() - t0;
    return rc ? gq_err_prefix("layer %d forward", l) : GQ_OK;
}
