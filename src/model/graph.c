/* graph.c -- the one layer graph of gq/graph.h (every family, every caller), the family's
 * norm, and the head. */
#include "gq/graph.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TRY(x)                                                                                                         \
    do {                                                                                                               \
        int rc_ = (x);                                                                                                 \
        if (rc_ != GQ_OK) return rc_;                                                                                  \
    } while (0)

/* ---- scratch ------------------------------------------------------------------------------- */

/* The widest MLP of any layer: dense intermediate, or an expert's. */
static int mlp_width(const gq_config *c) {
    int w = c->intermediate;
    if (c->n_experts && c->moe_inter > w) w = c->moe_inter;
    return w;
}

int gq_fwd_scratch_init(gq_backend *be, const gq_config *c, int T_max, gq_fwd_scratch *s) {
    memset(s, 0, sizeof *s);
    size_t T = (size_t)T_max, I = (size_t)mlp_width(c), d = (size_t)c->hidden;
    size_t qkv = (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim, att = (size_t)c->n_heads * c->head_dim;
    s->T_max = T_max;
    s->xn = gq_be_alloc(be, gq_be_act_bytes(be, T * d));
    s->qkv = gq_be_alloc(be, gq_be_act_bytes(be, T * qkv));
    s->attn = gq_be_alloc(be, gq_be_act_bytes(be, T * att));
    s->gu = gq_be_alloc(be, gq_be_act_bytes(be, T * 2 * I));
    s->act = gq_be_alloc(be, gq_be_act_bytes(be, T * I));
    s->y = gq_be_alloc(be, gq_be_act_bytes(be, T * d));
    int ok = s->xn && s->qkv && s->attn && s->gu && s->act && s->y;
    if (ok && c->n_experts > 0) {
        size_t E = (size_t)c->n_experts;
        s->xe = gq_be_alloc(be, gq_be_act_bytes(be, T * d));
        s->logits = gq_be_alloc(be, gq_be_act_bytes(be, T * E));
        s->probs = gq_malloc(T * E * sizeof *s->probs);
        s->idx = gq_malloc(T * E * sizeof *s->idx);
        s->wt = gq_malloc(T * E * sizeof *s->wt);
        s->cnt = gq_malloc(E * sizeof *s->cnt);
        ok = s->xe && s->logits;
    }
    if (!ok) {
        gq_fwd_scratch_free(be, s);
        return gq_err_prefix("forward scratch for %d tokens", T_max);
    }
    return GQ_OK;
}

void gq_fwd_scratch_free(gq_backend *be, gq_fwd_scratch *s) {
    if (!s) return;
    void *bufs[] = {s->xn, s->qkv, s->attn, s->gu, s->act, s->y, s->xe, s->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) gq_be_release(be, bufs[i]);
    free(s->probs);
    free(s->idx);
    free(s->wt);
    free(s->cnt);
    memset(s, 0, sizeof *s);
}

/* ---- non-finite activations ------------------------------------------------------------- */

int gq_act_check(gq_backend *be, const void *X, int ld, int T, int width, const char *what) {
    if (T <= 0 || width <= 0) return GQ_OK;
    size_t n = (size_t)(T - 1) * (size_t)ld + (size_t)width;
    float *h = gq_malloc(n * sizeof *h);
    int rc = gq_be_download_f32(be, h, X, n);
    for (int t = 0; t < T && rc == GQ_OK; t++) {
        const float *row = h + (size_t)t * ld;
        for (int j = 0; j < width; j++) {
            if (isfinite(row[j])) continue;
            rc = gq_err(GQ_ERR_NUMERIC, "non-finite activation %s (%s at token %d, column %d)", what,
                        isnan(row[j]) ? "NaN" : row[j] > 0 ? "+Inf" : "-Inf", t, j);
            break;
        }
    }
    free(h);
    return rc;
}

/* ---- norms and the head ----------------------------------------------------------------- */

int gq_norm_apply(gq_backend *be, const gq_config *c, void *Y, int ldy, const void *X, int ldx, int T, int d,
                  const gq_bweight *w, const gq_bweight *b) {
    if (gq_arch_get(c->arch_id)->norm == GQ_NORM_LAYER)
        return gq_be_layernorm(be, Y, ldy, X, ldx, T, d, w, b && b->data ? b : NULL, c->rms_eps);
    return gq_be_rmsnorm(be, Y, ldy, X, ldx, T, d, w, c->rms_eps); /* (1 + w) is stored as such */
}

int gq_bhead_nll(gq_backend *be, const gq_config *c, const gq_bhead *h, void *xn, const void *X, int ldx, int T,
                 const int32_t *targets, double *nll_sum, int64_t *count, float *logits_out) {
    TRY(gq_norm_apply(be, c, xn, c->hidden, X, ldx, T, c->hidden, &h->norm, &h->norm_b));
    return gq_be_nll_ex(be, xn, c->hidden, T, &h->lm, targets, c->final_softcap, nll_sum, count, logits_out);
}

/* ---- the layer ----------------------------------------------------------------------------- */

typedef struct {
    const gq_layer_args *a;
    gq_backend *be;
    const gq_config *c;
    const gq_arch *ar;
    const gq_blayer *bl;
    gq_fwd_scratch *s;
    int T, d, hd, nq, nkv, ldqkv;
    void *A; /* attention output [T][nq] */
} ctx_t;

static const gq_bweight *opt(const gq_bweight *b) {
    return b && b->data ? b : NULL;
}

static void *at(const ctx_t *c, void *base, size_t elems) {
    return (char *)base + gq_be_act_bytes(c->be, elems);
}

/* An op, then (check) its output rows buf[T][ld], columns [0, width), checked for NaN/Inf. */
#define STEP(op, buf, ld, T, width, what)                                                                             \
    do {                                                                                                               \
        TRY(op);                                                                                                       \
        if (x->a->check) TRY(gq_act_check(x->be, buf, ld, T, width, what));                                            \
    } while (0)

static int hook(const ctx_t *x, gq_group g, int e, const void *X, int ld, int T, const int32_t *idx) {
    return x->a->hook ? x->a->hook(x->a->user, g, e, X, ld, T, idx) : GQ_OK;
}

static gq_attn_opts attn_opts(const gq_config *c, int layer) {
    gq_attn_opts o = {0};
    if (c->query_pre_attn_scalar > 0) o.scale = (float)(1.0 / sqrt((double)c->query_pre_attn_scalar));
    o.softcap = c->attn_softcap;
    o.window = c->layer_sliding[layer] ? c->sliding_window : 0;
    return o;
}

/* Rows [r0, r0 + n) of a weight, or columns of a 1 x m bias; NULL-data safe. */
static gq_bweight wrows(const gq_bweight *w, int r0, int n) {
    gq_bweight v = *w;
    if (!w->data) return v;
    if (w->rows == 1 && n != 1) { /* a bias vector */
        v.data = (char *)w->data + (size_t)r0 * gq_dtype_size(w->dtype);
        v.cols = n;
        return v;
    }
    v.data = (char *)w->data + (size_t)r0 * (size_t)w->cols * gq_dtype_size(w->dtype);
    v.rows = n;
    return v;
}

/* q/k head norms (Qwen3) on q rows Q[T][ldq] and k rows K[T][ldk]. */
static int qk_norm(const ctx_t *x, void *Q, int ldq, void *K, int ldk, int T) {
    if (!x->ar->qk_norm) return GQ_OK;
    TRY(gq_be_head_rmsnorm(x->be, Q, ldq, T, x->c->n_heads, x->hd, &x->bl->q_norm, x->c->rms_eps));
    return gq_be_head_rmsnorm(x->be, K, ldk, T, x->c->n_kv_heads, x->hd, &x->bl->k_norm, x->c->rms_eps);
}

/* q, k, v of xn, then attention over the tokens themselves (SELF) or the cache (PREFILL). */
static int attn_seq(const ctx_t *x, const gq_attn_opts *o) {
    const gq_layer_args *a = x->a;
    gq_backend *be = x->be;
    const gq_config *c = x->c;
    const gq_bweight *W = &x->bl->w[GQ_GRP_ATTN_IN], *B = &x->bl->b[GQ_GRP_ATTN_IN];
    int T = x->T, rot = c->rot_dim;
    char *q = x->s->qkv, *k, *v;
    int ldq, ldk;
    if (!a->kv || a->kv->mode == GQ_KV_SELF) {
        k = at(x, q, (size_t)x->nq), v = at(x, q, (size_t)(x->nq + x->nkv));
        ldq = ldk = x->ldqkv;
        STEP(gq_be_linear(be, q, ldq, x->s->xn, x->d, T, W, opt(B), 0), q, ldq, T, ldq, "after q_proj/k_proj/v_proj");
    } else { /* k and v straight into the cache rows pos0 .. */
        ldq = x->nq, ldk = a->kv->ldkv;
        k = at(x, a->kv->K, (size_t)a->pos0 * ldk), v = at(x, a->kv->V, (size_t)a->pos0 * ldk);
        gq_bweight wq = wrows(W, 0, x->nq), wk = wrows(W, x->nq, x->nkv), wv = wrows(W, x->nq + x->nkv, x->nkv);
        gq_bweight bq = wrows(B, 0, x->nq), bk = wrows(B, x->nq, x->nkv), bv = wrows(B, x->nq + x->nkv, x->nkv);
        TRY(gq_be_linear(be, q, ldq, x->s->xn, x->d, T, &wq, opt(&bq), 0));
        TRY(gq_be_linear(be, k, ldk, x->s->xn, x->d, T, &wk, opt(&bk), 0));
        TRY(gq_be_linear(be, v, ldk, x->s->xn, x->d, T, &wv, opt(&bv), 0));
    }
    TRY(qk_norm(x, q, ldq, k, ldk, T));
    TRY(gq_be_rope_partial(be, q, ldq, T, c->n_heads, x->hd, rot, a->pos0, a->inv_freq));
    STEP(gq_be_rope_partial(be, k, ldk, T, c->n_kv_heads, x->hd, rot, a->pos0, a->inv_freq), k, ldk, T, x->nkv,
         "after the rotary embedding");
    if (!a->kv || a->kv->mode == GQ_KV_SELF)
        return gq_be_attention_ex(be, x->A, x->nq, q, ldq, k, ldk, v, ldk, T, T, c->n_heads, c->n_kv_heads, x->hd,
                                  o);
    return gq_be_attention_ex(be, x->A, x->nq, q, ldq, a->kv->K, ldk, a->kv->V, ldk, T, a->pos0 + T, c->n_heads,
                              c->n_kv_heads, x->hd, o);
}

/* One decode step: T rows, each a token of its own cache slot. */
static int attn_decode(const ctx_t *x, const gq_attn_opts *o) {
    const gq_kv *kv = x->a->kv;
    const gq_config *c = x->c;
    char *q = x->s->qkv;
    TRY(gq_be_linear(x->be, q, x->ldqkv, x->s->xn, x->d, x->T, &x->bl->w[GQ_GRP_ATTN_IN],
                     opt(&x->bl->b[GQ_GRP_ATTN_IN]), 0));
    TRY(qk_norm(x, q, x->ldqkv, at(x, q, (size_t)x->nq), x->ldqkv, x->T));
    return gq_be_decode_attention_ex(x->be, x->A, x->nq, q, x->ldqkv, x->T, kv->K, kv->V, kv->slot_stride, kv->ldkv,
                                     kv->slot, kv->pos, c->n_heads, c->n_kv_heads, x->hd, c->rot_dim,
                                     x->a->inv_freq, o);
}

/* x += post(W v + b) over T rows of v [T][ldv]; post: the norm slot after the sublayer (or none). */
static int residual(const ctx_t *x, gq_group g, gq_norm_slot post, const void *V, int ldv, int T, const char *what) {
    const gq_blayer *bl = x->bl;
    void *X = x->a->x;
    if (!bl->norm[post].data) {
        STEP(gq_be_linear(x->be, X, x->d, V, ldv, T, &bl->w[g], opt(&bl->b[g]), 1), X, x->d, T, x->d, what);
        return GQ_OK;
    }
    TRY(gq_be_linear(x->be, x->s->y, x->d, V, ldv, T, &bl->w[g], opt(&bl->b[g]), 0));
    TRY(gq_norm_apply(x->be, x->c, x->s->xn, x->d, x->s->y, x->d, T, x->d, &bl->norm[post], &bl->norm_b[post]));
    STEP(gq_be_add(x->be, X, x->d, x->s->xn, x->d, T, x->d), X, x->d, T, x->d, what);
    return GQ_OK;
}

static int attention_steps(const ctx_t *x) {
    const gq_layer_args *a = x->a;
    const gq_blayer *bl = x->bl;
    int T = x->T, d = x->d;
    if (a->first <= GQ_STEP_ATTN_IN && a->last >= GQ_STEP_ATTN_IN) {
        if (a->check) TRY(gq_act_check(x->be, a->x, d, T, d, "at the layer input"));
        STEP(gq_norm_apply(x->be, x->c, x->s->xn, d, a->x, d, T, d, &bl->norm[GQ_NORM_ATTN_PRE],
                           &bl->norm_b[GQ_NORM_ATTN_PRE]),
             x->s->xn, d, T, d, "after input_layernorm");
        TRY(hook(x, GQ_GRP_ATTN_IN, -1, x->s->xn, d, T, NULL));
    }
    if (a->first <= GQ_STEP_ATTN && a->last >= GQ_STEP_ATTN) {
        gq_attn_opts o = attn_opts(x->c, a->layer);
        if (a->kv && a->kv->mode == GQ_KV_DECODE)
            STEP(attn_decode(x, &o), x->A, x->nq, T, x->nq, "after attention");
        else
            STEP(attn_seq(x, &o), x->A, x->nq, T, x->nq, "after attention");
        TRY(hook(x, GQ_GRP_ATTN_OUT, -1, x->A, x->nq, T, NULL));
    }
    if (a->first <= GQ_STEP_ATTN_RES && a->last >= GQ_STEP_ATTN_RES)
        TRY(residual(x, GQ_GRP_ATTN_OUT, GQ_NORM_ATTN_POST, x->A, x->nq, T, "after o_proj and the residual add"));
    else if (a->check && a->first == GQ_STEP_MLP_IN)
        TRY(gq_act_check(x->be, a->x, d, T, d, "after o_proj and the residual add"));
    return GQ_OK;
}

/* act [T][I] of the rows xn [T][ldx] through MLP-in weight W (and bias): gated or not. */
static int mlp_act(const ctx_t *x, const void *xn, int ldx, int T, const gq_bweight *W, const gq_bweight *B,
                   void **act) {
    int I = x->ar->gated ? W->rows / 2 : W->rows;
    STEP(gq_be_linear(x->be, x->s->gu, W->rows, xn, ldx, T, W, opt(B), 0), x->s->gu, W->rows, T, W->rows,
         "after gate_proj/up_proj");
    if (x->ar->gated) {
        STEP(gq_be_glu(x->be, x->s->act, I, x->s->gu, 2 * I, T, I, x->c->act), x->s->act, I, T, I,
             "after the gated activation");
        *act = x->s->act;
    } else {
        STEP(gq_be_act(x->be, x->s->gu, I, T, I, x->c->act), x->s->gu, I, T, I, "after the activation");
        *act = x->s->gu;
    }
    return GQ_OK;
}

static int dense_mlp(const ctx_t *x) {
    const gq_layer_args *a = x->a;
    const gq_blayer *bl = x->bl;
    if (a->first <= GQ_STEP_MLP_IN) TRY(hook(x, GQ_GRP_MLP_IN, -1, x->s->xn, x->d, x->T, NULL));
    if (a->last < GQ_STEP_MLP) return GQ_OK;
    void *act;
    const gq_bweight *W = &bl->w[GQ_GRP_MLP_IN];
    TRY(mlp_act(x, x->s->xn, x->d, x->T, W, &bl->b[GQ_GRP_MLP_IN], &act));
    int I = x->ar->gated ? W->rows / 2 : W->rows;
    TRY(hook(x, GQ_GRP_MLP_OUT, -1, act, I, x->T, NULL));
    if (a->last < GQ_STEP_MLP_RES) return GQ_OK;
    return residual(x, GQ_GRP_MLP_OUT, GQ_NORM_MLP_POST, act, I, x->T,
                    "at the layer output (after down_proj and the residual add)");
}

/* Router logits of xn, then per token: softmax in fp32 over all experts, the top k (the larger
 * probability first, the lower expert on a tie), weights renormalised over the k when the family
 * does; fills s->cnt / idx / wt per expert, tokens in order. */
static int route(const ctx_t *x) {
    const gq_config *c = x->c;
    gq_fwd_scratch *s = x->s;
    int E = c->n_experts, K = c->top_k, T = x->T;
    if (K < 1 || K > 64 || K > E) return gq_err(GQ_ERR_ARG, "layer %d: top-%d of %d experts", x->a->layer, K, E);
    TRY(gq_be_linear(x->be, s->logits, E, s->xn, x->d, T, &x->bl->router, NULL, 0));
    TRY(gq_be_download_f32(x->be, s->probs, s->logits, (size_t)T * E));
    memset(s->cnt, 0, (size_t)E * sizeof *s->cnt);
    for (int t = 0; t < T; t++) {
        float *p = s->probs + (size_t)t * E, mx = p[0], sum = 0.0f, top = 0.0f;
        for (int e = 1; e < E; e++) mx = p[e] > mx ? p[e] : mx;
        for (int e = 0; e < E; e++) sum += (p[e] = expf(p[e] - mx));
        for (int e = 0; e < E; e++) p[e] /= sum;
        int pick[64];
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int used = 0;
                for (int j = 0; j < k; j++) used |= pick[j] == e;
                if (!used && (best < 0 || p[e] > p[best])) best = e;
            }
            pick[k] = best;
            top += p[best];
        }
        if (!isfinite(top)) return gq_err(GQ_ERR_NUMERIC, "layer %d: non-finite router logits at token %d", x->a->layer, t);
        for (int k = 0; k < K; k++) {
            int e = pick[k], n = s->cnt[e]++;
            s->idx[(size_t)e * s->T_max + n] = t;
            s->wt[(size_t)e * s->T_max + n] = c->norm_topk ? p[e] / top : p[e];
        }
    }
    return GQ_OK;
}

/* The sparse MLP: per expert, its routed rows through its linears, summed with the routing
 * weights into y, then x += y. */
static int moe_mlp(const ctx_t *x) {
    const gq_layer_args *a = x->a;
    const gq_blayer *bl = x->bl;
    gq_fwd_scratch *s = x->s;
    int d = x->d;
    TRY(route(x));
    if (a->last >= GQ_STEP_MLP_RES) TRY(gq_be_memset0(x->be, s->y, gq_be_act_bytes(x->be, (size_t)x->T * d)));
    for (int e = 0; e < bl->n_experts; e++) {
        int n = s->cnt[e];
        const int32_t *idx = s->idx + (size_t)e * s->T_max;
        if (!n) continue;
        TRY(gq_be_gather_rows(x->be, s->xe, d, s->xn, d, idx, n, d));
        if (a->first <= GQ_STEP_MLP_IN) TRY(hook(x, GQ_GRP_MLP_IN, e, s->xe, d, n, idx));
        if (a->last < GQ_STEP_MLP) continue;
        void *act;
        const gq_bweight *W = &bl->ex_in[e];
        TRY(mlp_act(x, s->xe, d, n, W, NULL, &act));
        int I = W->rows / 2;
        TRY(hook(x, GQ_GRP_MLP_OUT, e, act, I, n, idx));
        if (a->last < GQ_STEP_MLP_RES) continue;
        TRY(gq_be_linear(x->be, s->xe, d, act, I, n, &bl->ex_out[e], NULL, 0)); /* xe <- the expert's output */
        TRY(gq_be_scatter_add_rows(x->be, s->y, d, s->xe, d, idx, s->wt + (size_t)e * s->T_max, n, d));
    }
    if (a->last < GQ_STEP_MLP_RES) return GQ_OK;
    STEP(gq_be_add(x->be, a->x, d, s->y, d, x->T, d), a->x, d, x->T, d,
         "at the layer output (after the experts and the residual add)");
    return GQ_OK;
}

static int mlp_steps(const ctx_t *x) {
    const gq_layer_args *a = x->a;
    if (a->last < GQ_STEP_MLP_IN) return GQ_OK;
    if (a->first > GQ_STEP_MLP_IN)
        return gq_err(GQ_ERR_ARG, "layer %d: a run of the MLP steps must start at GQ_STEP_MLP_IN or before", a->layer);
    STEP(gq_norm_apply(x->be, x->c, x->s->xn, x->d, a->x, x->d, x->T, x->d, &x->bl->norm[GQ_NORM_MLP_PRE],
                       &x->bl->norm_b[GQ_NORM_MLP_PRE]),
         x->s->xn, x->d, x->T, x->d, "after post_attention_layernorm");
    return x->bl->n_experts ? moe_mlp(x) : dense_mlp(x);
}

int gq_layer_run(const gq_layer_args *a) {
    const gq_config *c = a->cfg;
    ctx_t x = {.a = a, .be = a->be, .c = c, .ar = gq_arch_get(c->arch_id), .bl = a->bl, .s = a->s, .T = a->T};
    if (a->T > a->s->T_max) return gq_err(GQ_ERR_ARG, "forward: %d tokens, scratch sized for %d", a->T, a->s->T_max);
    if (a->first > a->last || a->last >= GQ_STEP_COUNT)
        return gq_err(GQ_ERR_ARG, "layer %d: steps %d .. %d", a->layer, (int)a->first, (int)a->last);
    if (a->first == GQ_STEP_ATTN && a->last >= GQ_STEP_ATTN)
        return gq_err(GQ_ERR_ARG, "layer %d: attention needs the input norm of the same run", a->layer);
    x.d = c->hidden, x.hd = c->head_dim;
    x.nq = c->n_heads * x.hd, x.nkv = c->n_kv_heads * x.hd, x.ldqkv = x.nq + 2 * x.nkv;
    x.A = a->a ? a->a : a->s->attn;
    if (a->T == 0) return GQ_OK;
    TRY(attention_steps(&x));
    return mlp_steps(&x);
}

int gq_fwd_layer(gq_backend *be, const gq_config *cfg, int layer, const gq_blayer *bl, void *x, int T,
                 const float *inv_freq, gq_fwd_scratch *s) {
    gq_layer_args a = {.be = be, .cfg = cfg, .layer = layer, .bl = bl, .x = x, .T = T, .first = GQ_STEP_ATTN_IN,
                       .last = GQ_STEP_MLP_RES, .inv_freq = inv_freq, .s = s};
    return gq_layer_run(&a);
}
