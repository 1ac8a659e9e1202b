/* qlayer.c -- GPTQ of one decoder layer on a backend (gq/qlayer.h). */
#include "gq/knobs.h"
#include "gq/qlayer.h"

#include <stdlib.h>
#include <string.h>

#include "gq/export.h"
#include "gq/graph.h"


/* Device memory the rest of a layer's work needs besides the activations:
 * the stacked weights (in the activation dtype) twice (the layer and its working copies), the
 * largest Hessian in fp32 and fp64 with the solve's fp32 copy of the widest
 * weight, and 512 MiB of scratch. A guess on the safe side. */
static size_t reserve_bytes(const gq_backend *be, const gq_config *c) {
    const size_t h = (size_t)c->hidden, E = c->n_experts > 0 ? (size_t)c->n_experts : 1;
    const size_t I = c->n_experts > 0 && (size_t)c->moe_inter * E > (size_t)c->intermediate
                         ? (size_t)c->moe_inter * E : (size_t)c->intermediate; /* all experts' rows */
    const size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    const size_t w = (q + 2 * kv) * h + h * q + 3 * I * h, kmax = I / E > h ? I / E : h;
    /* the weights twice, a stage's Hessians (one per expert) and the solve's copies, scratch */
    return gq_be_act_bytes(be, 2 * w) + 4 * E * kmax * kmax + 8 * kmax * kmax + 4 * 2 * (I / E) * h +
           ((size_t)512 << 20);
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

/* ---- stages --------------------------------------------------------------------------------- */

/* One stage: the graph steps it runs, the group whose Hessians it accumulates (one per expert in
 * a MoE layer), the token count each saw. */
typedef struct {
    gq_qlayer *q;
    int l;
    gq_blayer *bl;
    gq_group g;
    int n_h;          /* Hessians: 1 (dense) or n_experts */
    int K;            /* their width */
    float **H;        /* [n_h] */
    int64_t *tokens;  /* [n_h] rows accumulated */
    double t0;
} stage_t;

static int stage_hook(void *user, gq_group g, int e, const void *X, int ld, int T, const int32_t *idx) {
    stage_t *st = user;
    if (g != st->g) return GQ_OK;
    int i = e < 0 ? 0 : e;
    if (i >= st->n_h) return gq_err(GQ_ERR_ARG, "layer %d: expert %d of %d", st->l, e, st->n_h);
    /* --hessian-skip: the sequence's first tokens stay out (a MoE expert's rows are its tokens in
     * ascending order, idx[T], so they are a prefix there too) */
    int skip = 0;
    while (skip < T && (idx ? idx[skip] : skip) < st->q->hessian_skip) skip++;
    if (skip == T) return GQ_OK;
    X = (const char *)X + gq_be_act_bytes(st->q->be, (size_t)skip * ld);
    T -= skip;
    double t0 = gq_now();
    int rc = gq_be_hessian_accum(st->q->be, st->H[i], X, ld, T, st->K);
    if (!rc && gq_backend_is_gpu(st->q->be)) rc = gq_be_sync(st->q->be);
    st->q->t_hessian += gq_now() - t0;
    st->tokens[i] += T;
    return rc;
}

static void stage_free(stage_t *st) {
    for (int i = 0; i < st->n_h && st->H; i++) gq_be_release(st->q->be, st->H[i]);
    free(st->H);
    free(st->tokens);
    st->H = NULL;
    st->tokens = NULL;
}

static int stage_begin(stage_t *st, gq_group g) {
    const gq_config *c = st->q->cfg;
    int rows;
    st->g = g;
    st->t0 = gq_now();
    st->n_h = (g >= GQ_GRP_MLP_IN && st->bl->n_experts) ? st->bl->n_experts : 1;
    gq_group_shape(c, st->l, g, &rows, &st->K);
    st->H = gq_calloc((size_t)st->n_h, sizeof *st->H);
    st->tokens = gq_calloc((size_t)st->n_h, sizeof *st->tokens);
    size_t bytes = (size_t)st->K * st->K * sizeof(float);
    for (int i = 0; i < st->n_h; i++) {
        st->H[i] = gq_be_alloc(st->q->be, bytes);
        if (!st->H[i] || gq_be_memset0(st->q->be, st->H[i], bytes)) {
            stage_free(st);
            return gq_err_prefix("layer %d: Hessian %d x %d", st->l, st->K, st->K);
        }
    }
    return GQ_OK;
}

/* Steps first .. last of sequence i with the stage's hook; keeps x (write back) and a. */
static int stage_seq(stage_t *st, int i, gq_step first, gq_step last, int check) {
    gq_qlayer *q = st->q;
    const int T = q->len[i];
    /* a stored attention output: read by a run starting at ATTN_RES, kept by one ending at ATTN */
    int a_needed = (first == GQ_STEP_ATTN_RES) || (first <= GQ_STEP_ATTN && last == GQ_STEP_ATTN);
    void *x = x_in(q, i), *a = a_needed ? a_in(q, i, first > GQ_STEP_ATTN) : NULL;
    if (!x || (a_needed && !a)) return gq_errcode();
    gq_rope_inv_freq(q->cfg, T, q->inv_freq);
    gq_layer_args args = {.be = q->be, .cfg = q->cfg, .layer = st->l, .bl = st->bl, .x = x, .T = T, .a = a,
                          .first = first, .last = last, .inv_freq = q->inv_freq, .hook = check || !st->H ? NULL : stage_hook,
                          .user = st, .check = check, .s = &q->s};
    int rc = gq_layer_run(&args);
    if (!rc && !check && first <= GQ_STEP_ATTN && last == GQ_STEP_ATTN) rc = a_out(q, i);
    if (!rc && !check && ((first <= GQ_STEP_ATTN_RES && last >= GQ_STEP_ATTN_RES) || last == GQ_STEP_MLP_RES))
        rc = x_out(q, i); /* x changed */
    return rc;
}

/*
 * The solve of layer l refused a non-finite Hessian (GQ_ERR_NUMERIC, message already set): run
 * the calibration samples through the steps that fed it again, every op checked, and name the
 * first NaN/Inf: "calibration sample 5: layer 3: non-finite activation after attention (NaN at
 * token 17, column 40)". The attention block starts from the layer input, still in X; the MLP
 * block from h = x + o(attn), which stage C left in X. The activations are overwritten (the run
 * fails anyway). Keeps the solve's message when every activation is finite.
 */
static int locate_nonfinite(stage_t *st) {
    gq_qlayer *q = st->q;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", gq_errmsg());
    int mlp = st->g >= GQ_GRP_MLP_IN, rc = GQ_OK;
    for (int i = 0; i < q->n_seq && rc == GQ_OK; i++) {
        rc = stage_seq(st, i, mlp ? GQ_STEP_MLP_IN : GQ_STEP_ATTN_IN, mlp ? GQ_STEP_MLP_RES : GQ_STEP_ATTN_RES, 1);
        if (rc == GQ_ERR_NUMERIC) gq_err_prefix("calibration sample %d: layer %d", i, st->l);
    }
    q->cur_x = q->cur_a = -1; /* the streaming windows no longer hold a sequence's rows */
    return rc == GQ_OK ? gq_err(GQ_ERR_NUMERIC, "%s", msg) : rc;
}

static const char *group_what(gq_group g) {
    static const char *const w[GQ_GRP_COUNT] = {"attention input linears", "attention output linear",
                                                "MLP input linears", "MLP output linear"};
    return w[g];
}

/* Solve one stacked weight with Hessian H and slice the result into its modules in res. */
static int solve_one(stage_t *st, int hi, const gq_gptq_params *p, const gq_module *mods, int nmods,
                     gq_qresult *res) {
    gq_qlayer *q = st->q;
    int e = st->n_h > 1 ? hi : -1;
    gq_gptq_params pe = *p;
    char what[96];
    snprintf(what, sizeof what, "%s", group_what(st->g));
    if (e >= 0) snprintf(what, sizeof what, "expert %d %s", e, group_what(st->g));
    if (e >= 0 && st->tokens[hi] < q->moe_min_tokens) { /* the stated policy for starved experts */
        gq_warn("layer %d expert %d: %lld calibration tokens routed to it (fewer than %d): %s rounded to nearest",
                st->l, e, (long long)st->tokens[hi], q->moe_min_tokens, group_what(st->g));
        pe.method = GQ_METHOD_RTN;
    }
    gq_qresult g;
    double t0 = gq_now();
    int rc = gq_be_gptq(q->be, &pe, st->H[hi], 2.0 / (double)q->n_seq, gq_blayer_weight(st->bl, st->g, e), &g);
    double secs = gq_now() - t0;
    q->t_solve += secs;
    if (rc) {
        gq_err_prefix("layer %d %s", st->l, what);
        return rc == GQ_ERR_NUMERIC ? locate_nonfinite(st) : rc;
    }
    if (g.fallback)
        gq_warn("layer %d %s: Cholesky failed even with damping %g; quantized by rounding to nearest", st->l, what,
                g.damp_used);
    for (int k = 0; k < nmods; k++) {
        if (mods[k].group != st->g || mods[k].expert != e) continue;
        gq_qresult_slice(&g, mods[k].row0, mods[k].rows, &res[k]);
        res[k].seconds = secs;
    }
    gq_qresult_free(&g);
    return GQ_OK;
}

/* End of a stage loop: solve every Hessian of the stage. */
static int stage_end(stage_t *st, int rc, const gq_gptq_params *p, const gq_module *mods, int nmods,
                     gq_qresult *res) {
    gq_qlayer *q = st->q;
    if (!rc) rc = gq_be_sync(q->be);
    q->t_stages += gq_now() - st->t0;
    if (rc) gq_err_prefix("layer %d %s", st->l, group_what(st->g));
    for (int i = 0; i < st->n_h && !rc; i++) rc = solve_one(st, i, p, mods, nmods, res);
    stage_free(st);
    return rc;
}

/* A stage over every sequence: steps first .. last, then the solves of group g. */
static int stage(stage_t *st, gq_group g, gq_step first, gq_step last, const gq_gptq_params *p,
                 const gq_module *mods, int nmods, gq_qresult *res) {
    int rc = stage_begin(st, g);
    for (int i = 0; i < st->q->n_seq && !rc; i++) rc = stage_seq(st, i, first, last, 0);
    return stage_end(st, rc, p, mods, nmods, res);
}

int gq_qlayer_run(gq_qlayer *q, int l, gq_blayer *bl, const gq_gptq_params *p, gq_qresult *res) {
    stage_t st = {.q = q, .l = l, .bl = bl};
    int rc = GQ_OK;
    if (res) {
        int cap = gq_layer_module_cap(q->cfg);
        gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
        int n = gq_layer_modules(q->cfg, 0, l, mods, cap);
        rc = stage(&st, GQ_GRP_ATTN_IN, GQ_STEP_ATTN_IN, GQ_STEP_ATTN_IN, p, mods, n, res); /* A: q, k, v */
        if (!rc) rc = stage(&st, GQ_GRP_ATTN_OUT, GQ_STEP_ATTN_IN, GQ_STEP_ATTN, p, mods, n, res); /* B: o */
        if (!rc) rc = stage(&st, GQ_GRP_MLP_IN, GQ_STEP_ATTN_RES, GQ_STEP_MLP_IN, p, mods, n, res); /* C: gate, up */
        if (!rc) rc = stage(&st, GQ_GRP_MLP_OUT, GQ_STEP_MLP_IN, GQ_STEP_MLP, p, mods, n, res); /* D: down */
        free(mods);
        if (rc) return rc;
    }
    /* E (or a restored layer: the whole forward, the same operations): the layer output */
    double t0 = gq_now();
    gq_step first = res ? GQ_STEP_MLP_IN : GQ_STEP_ATTN_IN;
    for (int i = 0; i < q->n_seq && !rc; i++) rc = stage_seq(&st, i, first, GQ_STEP_MLP_RES, 0);
    if (!rc) rc = gq_be_sync(q->be);
    q->t_stages += gq_now() - t0;
    return rc ? gq_err_prefix("layer %d forward", l) : GQ_OK;
}
