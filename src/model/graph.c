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

void gq_route_alloc(const gq_config *c, int T, gq_route *r) {
    size_t n = (size_t)T * (size_t)(c->top_k > 0 ? c->top_k : 1);
    memset(r, 0, sizeof *r);
    r->idx = gq_malloc(n * sizeof *r->idx);
    r->pos = gq_malloc(n * sizeof *r->pos);
    r->wt = gq_malloc(n * sizeof *r->wt);
    r->start = gq_calloc((size_t)c->n_experts + 1, sizeof *r->start);
}

void gq_route_free(gq_route *r) {
    if (!r) return;
    free(r->idx), free(r->pos), free(r->wt), free(r->start);
    memset(r, 0, sizeof *r);
}

/* Elements of each device buffer of a scratch, in the activation dtype. */
typedef struct {
    size_t xn, qkv, attn, gu, act, y, xe, logits;
} scratch_elems;

static scratch_elems elems_of(const gq_config *c, int T_attn, int T_max) {
    size_t T = (size_t)T_max, Ta = (size_t)T_attn, I = (size_t)mlp_width(c), d = (size_t)c->hidden;
    size_t qkv = (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim, att = (size_t)c->n_heads * c->head_dim;
    scratch_elems e = {T * d, Ta * qkv, Ta * att, T * 2 * I, T * I, T * d, 0, 0};
    if (c->n_experts > 0) {
        e.xe = T * (size_t)(c->top_k > 0 ? c->top_k : 1) * d;
        e.logits = T * (size_t)c->n_experts;
    }
    return e;
}

size_t gq_fwd_scratch_bytes(const gq_backend *be, const gq_config *c, int T_attn, int T_max) {
    scratch_elems e = elems_of(c, T_attn, T_max);
    return gq_be_act_bytes(be, e.xn + e.qkv + e.attn + e.gu + e.act + e.y + e.xe + e.logits);
}

int gq_fwd_scratch_init_ex(gq_backend *be, const gq_config *c, int T_attn, int T_max, gq_fwd_scratch *s) {
    memset(s, 0, sizeof *s);
    if (T_attn > T_max) T_attn = T_max;
    scratch_elems e = elems_of(c, T_attn, T_max);
    s->T_max = T_max;
    s->T_attn = T_attn;
    s->xn = gq_be_alloc(be, gq_be_act_bytes(be, e.xn));
    s->qkv = gq_be_alloc(be, gq_be_act_bytes(be, e.qkv));
    s->attn = gq_be_alloc(be, gq_be_act_bytes(be, e.attn));
    s->gu = gq_be_alloc(be, gq_be_act_bytes(be, e.gu));
    s->act = gq_be_alloc(be, gq_be_act_bytes(be, e.act));
    s->y = gq_be_alloc(be, gq_be_act_bytes(be, e.y));
    int ok = s->xn && s->qkv && s->attn && s->gu && s->act && s->y;
    if (ok && c->n_experts > 0) {
        s->xe = gq_be_alloc(be, gq_be_act_bytes(be, e.xe));
        s->logits = gq_be_alloc(be, gq_be_act_bytes(be, e.logits));
        s->probs = gq_malloc(e.logits * sizeof *s->probs);
        s->iota = gq_malloc((size_t)T_max * sizeof *s->iota);
        for (int t = 0; t < T_max; t++) s->iota[t] = t;
        gq_route_alloc(c, T_max, &s->route);
        ok = s->xe && s->logits;
    }
    if (!ok) {
        gq_fwd_scratch_free(be, s);
        return gq_err_prefix("forward scratch for %d tokens", T_max);
    }
    return GQ_OK;
}

int gq_fwd_scratch_init(gq_backend *be, const gq_config *c, int T_max, gq_fwd_scratch *s) {
    return gq_fwd_scratch_init_ex(be, c, T_max, T_max, s);
}

void gq_fwd_scratch_free(gq_backend *be, gq_fwd_scratch *s) {
    if (!s) return;
    void *bufs[] = {s->xn, s->qkv, s->attn, s->gu, s->act, s->y, s->xe, s->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) gq_be_release(be, bufs[i]);
    free(s->probs);
    free(s->iota);
    gq_route_free(&s->route);
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
    } else if (W->q4) { /* int4-resident: no row views; q | k | v into the scratch, k and v copied to the cache */
        ldq = x->ldqkv, ldk = a->kv->ldkv;
        k = at(x, a->kv->K, (size_t)a->pos0 * ldk), v = at(x, a->kv->V, (size_t)a->pos0 * ldk);
        TRY(gq_be_linear(be, q, ldq, x->s->xn, x->d, T, W, opt(B), 0));
        /* the cache rows of this slot and layer are [T][ldk], contiguous: zero, then + k (v), exact */
        TRY(gq_be_memset0(be, k, gq_be_act_bytes(be, (size_t)T * ldk)));
        TRY(gq_be_memset0(be, v, gq_be_act_bytes(be, (size_t)T * ldk)));
        TRY(gq_be_add(be, k, ldk, at(x, q, (size_t)x->nq), ldq, T, x->nkv));
        TRY(gq_be_add(be, v, ldk, at(x, q, (size_t)(x->nq + x->nkv)), ldq, T, x->nkv));
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
    gq_attn_opts od = *o;
    od.cache_len = kv->cache_len;
    od.dslot = kv->dslot;
    od.dpos = kv->dpos;
    return gq_be_decode_attention_ex(x->be, x->A, x->nq, q, x->ldqkv, x->T, kv->K, kv->V, kv->slot_stride, kv->ldkv,
                                     kv->slot, kv->pos, c->n_heads, c->n_kv_heads, x->hd, c->rot_dim,
                                     x->a->inv_freq, &od);
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

/* Token t's router probabilities p[E] (logits in, softmax in fp32 over all experts) and its
 * top K: pick[K] by probability, the larger first, the lower expert on a tie (one insertion pass);
 * returns their sum. NaN logits give NaN probabilities, picks 0 .. K-1 and a NaN sum. */
static float top_k(float *p, int E, int K, int *pick) {
    float mx = p[0], sum = 0.0f, top = 0.0f;
    for (int e = 1; e < E; e++) mx = p[e] > mx ? p[e] : mx;
    for (int e = 0; e < E; e++) sum += (p[e] = expf(p[e] - mx));
    for (int e = 0; e < E; e++) p[e] /= sum;
    int n = 0;
    for (int e = 0; e < E; e++) {
        if (n == K && !(p[e] > p[pick[K - 1]])) continue; /* an equal one stays behind the lower expert */
        int j = n < K ? n++ : K - 1;
        for (; j > 0 && p[pick[j - 1]] < p[e]; j--) pick[j] = pick[j - 1];
        pick[j] = e;
    }
    for (int k = 0; k < K; k++) top += p[pick[k]];
    return top;
}

/* Router logits of xn, then per token: softmax, the top k (top_k), weights renormalised over the k
 * when the family does; fills r: per expert its tokens in order (idx, start), per token its
 * experts in ascending order (pos, wt). */
static int route(const ctx_t *x, gq_route *r) {
    const gq_config *c = x->c;
    gq_fwd_scratch *s = x->s;
    const int E = c->n_experts, K = c->top_k, T = x->T;
    if (K < 1 || K > 64 || K > E) return gq_err(GQ_ERR_ARG, "layer %d: top-%d of %d experts", x->a->layer, K, E);
    TRY(gq_be_linear(x->be, s->logits, E, s->xn, x->d, T, &x->bl->router, NULL, 0));
    TRY(gq_be_download_f32(x->be, s->probs, s->logits, (size_t)T * E));
    int bad = T;
#pragma omp parallel for schedule(static) reduction(min : bad) if (T >= 256)
    for (int t = 0; t < T; t++) {
        float *p = s->probs + (size_t)t * E;
        int pick[64];
        float top = top_k(p, E, K, pick);
        if (!isfinite(top)) bad = t < bad ? t : bad;
        for (int k = 1; k < K; k++) /* experts ascending: the order their outputs are summed in */
            for (int j = k; j > 0 && pick[j - 1] > pick[j]; j--) {
                int tmp = pick[j];
                pick[j] = pick[j - 1], pick[j - 1] = tmp;
            }
        for (int k = 0; k < K; k++) {
            r->pos[(size_t)k * T + t] = pick[k]; /* the expert for now; its row below */
            r->wt[(size_t)k * T + t] = c->norm_topk ? p[pick[k]] / top : p[pick[k]];
        }
    }
    if (bad < T) /* the callers name the layer */
        return gq_err(GQ_ERR_NUMERIC, "non-finite router logits at token %d", bad);
    int *cur = gq_calloc((size_t)E + 1, sizeof *cur); /* counting sort by expert, tokens in order */
    for (size_t j = 0; j < (size_t)T * K; j++) cur[r->pos[j] + 1]++;
    for (int e = 0; e < E; e++) cur[e + 1] += cur[e];
    memcpy(r->start, cur, ((size_t)E + 1) * sizeof *cur);
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            int32_t *pk = r->pos + (size_t)k * T + t, j = cur[*pk]++;
            r->idx[j] = t;
            *pk = j;
        }
    free(cur);
    r->T = T;
    return GQ_OK;
}

/* y += the experts' outputs (rows of xe, expert by expert) of every token, weighted: per slot k,
 * xn <- each token's k-th row (its experts ascending: the order the sum always took), then
 * y += wt_k * xn. */
static int moe_combine(const ctx_t *x, const gq_route *r) {
    gq_fwd_scratch *s = x->s;
    int T = x->T, d = x->d;
    for (int k = 0; k < x->c->top_k; k++) {
        TRY(gq_be_gather_rows(x->be, s->xn, d, s->xe, d, r->pos + (size_t)k * T, T, d));
        TRY(gq_be_scatter_add_rows(x->be, s->y, d, s->xn, d, s->iota, r->wt + (size_t)k * T, T, d));
    }
    return GQ_OK;
}

/* The sparse MLP: all routed rows gathered at once (xe [T * top_k][d], expert by expert), each
 * expert's rows through its linears (its output in place of its rows), summed with the routing
 * weights into y, then x += y. */
static int moe_mlp(const ctx_t *x) {
    const gq_layer_args *a = x->a;
    const gq_blayer *bl = x->bl;
    gq_fwd_scratch *s = x->s;
    gq_route *r = a->route ? a->route : &s->route;
    int d = x->d;
    if (a->route && a->route_reuse) {
        if (r->T != x->T)
            return gq_err(GQ_ERR_ARG, "layer %d: reused routing of %d tokens for %d", a->layer, r->T, x->T);
    } else {
        TRY(route(x, r));
    }
    TRY(gq_be_gather_rows(x->be, s->xe, d, s->xn, d, r->idx, x->T * x->c->top_k, d));
    for (int e = 0; e < bl->n_experts; e++) {
        int n = r->start[e + 1] - r->start[e];
        const int32_t *idx = r->idx + r->start[e];
        void *xe = at(x, s->xe, (size_t)r->start[e] * d); /* [n][d] */
        if (!n) continue;
        if (a->first <= GQ_STEP_MLP_IN) TRY(hook(x, GQ_GRP_MLP_IN, e, xe, d, n, idx));
        if (a->last < GQ_STEP_MLP) continue;
        void *act;
        const gq_bweight *W = &bl->ex_in[e];
        TRY(mlp_act(x, xe, d, n, W, NULL, &act));
        int I = W->rows / 2;
        TRY(hook(x, GQ_GRP_MLP_OUT, e, act, I, n, idx));
        if (a->last < GQ_STEP_MLP_RES) continue;
        TRY(gq_be_linear(x->be, xe, d, act, I, n, &bl->ex_out[e], NULL, 0)); /* the expert's output */
    }
    if (a->last < GQ_STEP_MLP_RES) return GQ_OK;
    TRY(gq_be_memset0(x->be, s->y, gq_be_act_bytes(x->be, (size_t)x->T * d)));
    TRY(moe_combine(x, r));
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
    int attn = (a->first <= GQ_STEP_ATTN && a->last >= GQ_STEP_ATTN) ||
               (a->first <= GQ_STEP_ATTN_RES && a->last >= GQ_STEP_ATTN_RES && !a->a);
    if (attn && a->T > a->s->T_attn)
        return gq_err(GQ_ERR_ARG, "forward: attention over %d tokens, scratch sized for %d", a->T, a->s->T_attn);
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
