/* qlayer.c -- GPTQ of one decoder layer on a backend (gq/qlayer.h). */
#include "gq/knobs.h"
#include "gq/qlayer.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "gq/export.h"
#include "gq/graph.h"

/* Chunk sizes (gq/qlayer.h): the caps in tokens, and the scratch budget (at most; on a GPU also
 * at most a quarter of what a layer's work leaves free). A dense layer's GEMMs are large already
 * per sequence (the chunk mostly saves Hessian launches); a MoE layer's experts see chunk x
 * top_k / n_experts rows each, so it gets the larger one. */
#define CHUNK_CAP_DENSE 16384
#define CHUNK_CAP_MOE 32768
#define CHUNK_BUDGET_CPU ((size_t)1 << 30)
#define CHUNK_BUDGET_GPU ((size_t)2 << 30)
/* On a GPU, a stage's first updates are timed exactly (synchronised around each), the others
 * estimated from them (gq/qlayer.h: t_hessian). */
#define TIMED_UPDATES 16

/* Device memory the rest of a layer's work needs besides the activations:
 * the stacked weights (in the activation dtype) twice (the layer and its working copies), the
 * largest Hessian in fp32 and fp64 with the solve's fp32 copy of the widest
 * weight, and 512 MiB of scratch (which covers a one-sequence chunk's forward scratch). A guess
 * on the safe side. */
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

static size_t x_bytes(const gq_qlayer *q, int64_t tokens) {
    return gq_be_act_bytes(q->be, (size_t)tokens * q->cfg->hidden);
}
static size_t a_bytes(const gq_qlayer *q, int64_t tokens) {
    return gq_be_act_bytes(q->be, (size_t)tokens * q->cfg->n_heads * q->cfg->head_dim);
}

/*
 * The chunk budget in tokens (at least T_max, at most the cap) and whether the activations stay
 * on the device. The budget: 2 GiB (CPU: 1 GiB), at most a quarter of the free memory a layer's
 * work leaves, over a chunk token's scratch and streaming-window rows. Resident when the
 * activations fit beside the layer's work and that chunk's scratch beyond one sequence's (which
 * the reserve covers), else with the largest chunk that lets them (down to one sequence), else
 * streaming with the budget's chunk. The choice does not depend on GQ_STREAM_ACTIVATIONS: a
 * forced streaming run cuts the same chunks as the resident run, and gives its bits.
 */
static int choose_chunk(const gq_qlayer *q, size_t free_b, int *resident) {
    const gq_config *c = q->cfg;
    const size_t scr = gq_fwd_scratch_bytes(q->be, c, 0, 1); /* a chunk token's scratch */
    const size_t per = scr + x_bytes(q, 1) + a_bytes(q, 1), T_max = (size_t)q->T_max;
    const size_t cap = c->n_experts > 0 ? CHUNK_CAP_MOE : CHUNK_CAP_DENSE;
    const size_t res = reserve_bytes(q->be, c), act = x_bytes(q, q->n_tokens) + a_bytes(q, q->n_tokens);
    size_t budget = free_b == 0 ? CHUNK_BUDGET_CPU : free_b > res ? (free_b - res) / 4 : 0;
    size_t t = (budget < CHUNK_BUDGET_GPU ? budget : CHUNK_BUDGET_GPU) / per;
    t = t > cap ? cap : t;
    t = t < T_max ? T_max : t;
    *resident = 1;
    if (free_b > 0 && act + res + (t - T_max) * scr > free_b) {
        if (act + res <= free_b) {
            size_t fit = T_max + (free_b - act - res) / scr;
            t = fit < t ? fit : t;
        } else {
            *resident = 0;
        }
    }
    return t > (size_t)1 << 30 ? 1 << 30 : (int)t;
}

/* ---- chunks ------------------------------------------------------------------------------- */

static int64_t c_off(const gq_qlayer *q, int c) {
    return q->off[q->chunk0[c]];
}
static int c_rows(const gq_qlayer *q, int c) {
    int i = q->chunk0[c + 1] - 1;
    return (int)(q->off[i] + q->len[i] - c_off(q, c));
}
static int chunk_of(const gq_qlayer *q, int i) {
    int c = 0;
    while (q->chunk0[c + 1] <= i) c++;
    return c;
}

static void free_chunks(gq_qlayer *q) {
    gq_fwd_scratch_free(q->be, &q->s);
    for (int c = 0; c < q->n_chunks && q->route; c++) gq_route_free(&q->route[c]);
    free(q->route);
    free(q->chunk0);
    q->route = NULL;
    q->chunk0 = NULL;
    q->n_chunks = 0;
    if (q->stream) { /* the windows */
        gq_be_release(q->be, q->X);
        gq_be_release(q->be, q->A);
        q->X = q->A = NULL;
    }
}

/* Consecutive sequences, as many as fit chunk_tokens (at least one each). */
static void partition(gq_qlayer *q) {
    q->chunk0 = gq_malloc(((size_t)q->n_seq + 1) * sizeof *q->chunk0);
    q->n_chunks = 0;
    q->chunk_max = q->T_max;
    for (int i = 0; i < q->n_seq;) {
        int64_t t = q->len[i];
        int j = i + 1;
        while (j < q->n_seq && t + q->len[j] <= q->chunk_tokens) t += q->len[j++];
        q->chunk0[q->n_chunks++] = i;
        if (t > q->chunk_max) q->chunk_max = (int)t;
        i = j;
    }
    q->chunk0[q->n_chunks] = q->n_seq;
}

int gq_qlayer_set_chunk(gq_qlayer *q, int tokens) {
    const gq_config *cfg = q->cfg;
    free_chunks(q);
    q->chunk_tokens = tokens > 0 ? tokens : q->chunk_auto;
    partition(q);
    q->cur_x = q->cur_a = -1;
    q->routed = -1;
    if (q->stream) { /* device windows of one chunk */
        q->X = gq_be_alloc(q->be, x_bytes(q, q->chunk_max));
        q->A = q->X ? gq_be_alloc(q->be, a_bytes(q, q->chunk_max)) : NULL;
        if (!q->A) return gq_err_prefix("calibration activations: windows of %d tokens", q->chunk_max);
    }
    if (cfg->n_experts > 0) {
        q->route = gq_calloc((size_t)q->n_chunks, sizeof *q->route);
        for (int c = 0; c < q->n_chunks; c++) gq_route_alloc(cfg, c_rows(q, c), &q->route[c]);
    }
    gq_debug("calibration forward: %d chunks of up to %d tokens (budget %d)", q->n_chunks, q->chunk_max,
             q->chunk_tokens);
    return gq_fwd_scratch_init_ex(q->be, cfg, q->T_max, q->chunk_max, &q->s);
}

/* ---- setup ------------------------------------------------------------------------------------ */

int gq_qlayer_shares(int n_seq, const int *len, int ranks, int *first) {
    if (ranks < 1 || n_seq < ranks)
        return gq_err(GQ_ERR_ARG, "%d devices for %d calibration sequences: each needs at least one", ranks, n_seq);
    int64_t total = 0;
    for (int i = 0; i < n_seq; i++) total += len[i];
    first[0] = 0;
    int64_t acc = 0; /* tokens of sequences 0 .. i - 1 */
    for (int r = 1, i = 0; r < ranks; r++) {
        while (i < n_seq && acc * ranks < total * r) acc += len[i++]; /* the first start at or past r / ranks */
        const int lo = first[r - 1] + 1, hi = n_seq - (ranks - r); /* one sequence at least for each rank */
        first[r] = i < lo ? lo : i > hi ? hi : i;
        for (; i < first[r]; i++) acc += len[i];
        for (; i > first[r]; i--) acc -= len[i - 1];
    }
    first[ranks] = n_seq;
    return GQ_OK;
}

int gq_qlayer_init(gq_qlayer *q, gq_backend *be, const gq_config *cfg, int n_seq, const int *len) {
    memset(q, 0, sizeof *q);
    q->be = be;
    q->cfg = cfg;
    q->n_seq = q->n_seq_all = n_seq;
    q->len = gq_malloc((size_t)n_seq * sizeof *q->len);
    q->off = gq_malloc((size_t)n_seq * sizeof *q->off);
    for (int i = 0; i < n_seq; i++) {
        q->len[i] = len[i];
        q->off[i] = q->n_tokens;
        q->n_tokens += len[i];
        if (len[i] > q->T_max) q->T_max = len[i];
    }
    const size_t xb = x_bytes(q, q->n_tokens), ab = a_bytes(q, q->n_tokens);
    q->cur_x = q->cur_a = -1;
    q->inv_freq = gq_malloc((size_t)cfg->head_dim / 2 * sizeof(float));
    const int force = gq_knobs_get()->stream_activations; /* GQ_STREAM_ACTIVATIONS=1 */
    size_t free_b = gq_be_free_bytes(be);
    int resident;
    q->chunk_auto = choose_chunk(q, free_b, &resident);
    q->stream = force || !resident;
    if (q->stream) { /* host copies; device windows of one chunk (gq_qlayer_set_chunk) */
        char b1[32], b2[32];
        gq_info("calibration activations (%s) stay in host memory and stream through the device one chunk at "
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
    } else {
        q->X = gq_be_alloc(be, xb);
        q->A = q->X ? gq_be_alloc(be, ab) : NULL;
        if (!q->A) {
            gq_err_prefix("calibration activations (%lld tokens)", (long long)q->n_tokens);
            gq_qlayer_free(q);
            return gq_errcode() ? gq_errcode() : GQ_ERR_NOMEM;
        }
    }
    int rc = gq_qlayer_set_chunk(q, 0);
    if (rc) {
        gq_qlayer_free(q);
        return rc;
    }
    gq_info("calibration forward: %d chunk%s of up to %d tokens (the token-wise stages run a chunk at once)%s",
            q->n_chunks, q->n_chunks == 1 ? "" : "s", q->chunk_max,
            gq_backend_is_gpu(be) && gq_log_get_level() < GQ_LOG_DEBUG
                ? "; the Hessian seconds are an estimate (each stage's first 16 updates timed; GQ_LOG=debug: all)"
                : "");
    return GQ_OK;
}

void gq_qlayer_free(gq_qlayer *q) {
    if (!q || !q->be) return;
    for (int i = 1; i < q->n_solvers; i++) gq_backend_free(q->solvers[i]);
    free(q->solvers);
    free_chunks(q);
    gq_be_release(q->be, q->X);
    gq_be_release(q->be, q->A);
    free(q->hX);
    free(q->hA);
    free(q->len);
    free(q->off);
    free(q->inv_freq);
    memset(q, 0, sizeof *q);
}

size_t gq_qlayer_solver_bytes(const gq_qlayer *q) {
    size_t n = 0;
    for (int i = 1; i < q->n_solvers; i++) n += gq_be_peak_bytes(q->solvers[i]);
    return n;
}

/* ---- activations: resident on the backend, or host copies streamed through windows ---------- */

/* Chunk c's rows of X [c_rows][hidden] on the backend (streaming: uploaded into the window
 * unless already there). NULL on an upload error. */
static void *x_in(gq_qlayer *q, int c) {
    if (!q->stream) return (char *)q->X + x_bytes(q, c_off(q, c));
    if (q->cur_x != c) {
        q->cur_x = -1;
        if (gq_be_upload(q->be, q->X, q->hX + x_bytes(q, c_off(q, c)), x_bytes(q, c_rows(q, c)))) return NULL;
        q->cur_x = c;
    }
    return q->X;
}
/* The window's X rows of chunk c were changed: write them back. */
static int x_out(gq_qlayer *q, int c) {
    if (!q->stream) return GQ_OK;
    GQ_ASSERT(q->cur_x == c);
    return gq_be_download(q->be, q->hX + x_bytes(q, c_off(q, c)), q->X, x_bytes(q, c_rows(q, c)));
}
/* Chunk c's rows of A [c_rows][nh hd]: load = 1 to read them, 0 when they are about to be
 * overwritten. */
static void *a_in(gq_qlayer *q, int c, int load) {
    if (!q->stream) return (char *)q->A + a_bytes(q, c_off(q, c));
    if (q->cur_a != c) {
        q->cur_a = -1;
        if (load && gq_be_upload(q->be, q->A, q->hA + a_bytes(q, c_off(q, c)), a_bytes(q, c_rows(q, c)))) return NULL;
        q->cur_a = c;
    }
    return q->A;
}
static int a_out(gq_qlayer *q, int c) {
    if (!q->stream) return GQ_OK;
    GQ_ASSERT(q->cur_a == c);
    return gq_be_download(q->be, q->hA + a_bytes(q, c_off(q, c)), q->A, a_bytes(q, c_rows(q, c)));
}

int gq_qlayer_set_x(gq_qlayer *q, int i, const float *src) {
    const size_t n = (size_t)q->len[i] * q->cfg->hidden;
    if (!q->stream) return gq_be_upload_f32(q->be, (char *)q->X + x_bytes(q, q->off[i]), src, n);
    q->cur_x = -1; /* through the window, which then holds no chunk */
    int rc = gq_be_upload_f32(q->be, q->X, src, n);
    return rc ? rc : gq_be_download(q->be, q->hX + x_bytes(q, q->off[i]), q->X, x_bytes(q, q->len[i]));
}

int gq_qlayer_get_x(gq_qlayer *q, int i, float *dst) {
    int c = chunk_of(q, i);
    char *x = x_in(q, c);
    if (!x) return gq_errcode();
    return gq_be_download_f32(q->be, dst, x + x_bytes(q, q->off[i] - c_off(q, c)), (size_t)q->len[i] * q->cfg->hidden);
}

size_t gq_qlayer_bytes(const gq_qlayer *q) {
    return x_bytes(q, q->n_tokens) + a_bytes(q, q->n_tokens);
}

/* ---- stages --------------------------------------------------------------------------------- */

/* One stage: the graph steps it runs, the group whose Hessians it accumulates (one per expert in
 * a MoE layer), the token count each saw, the timing of the updates. */
typedef struct {
    gq_qlayer *q;
    int l;
    gq_blayer *bl;
    gq_group g;
    int n_h;          /* Hessians: 1 (dense) or n_experts */
    int K;            /* their width */
    float **H;        /* [n_h] */
    int64_t *tokens;  /* [n_h] rows accumulated */
    int32_t *tok_pos; /* [chunk_max] (hessian_skip > 0) each row of the chunk: its position in its sequence */
    double t0;
    int n_timed;      /* updates timed (on a GPU: synchronised around each) */
    double t_timed;   /* their seconds */
    int64_t rows_timed, rows_all;
} stage_t;

/* Rows X[T][ld] of the chunk (idx[T]: which rows of the chunk, ascending; NULL: 0 .. T - 1) into
 * Hessian hi, leaving out those at a sequence position below hessian_skip: one update per run of
 * kept rows (one for all T when hessian_skip is 0). */
static int stage_accum(stage_t *st, int hi, const void *X, int ld, int T, const int32_t *idx) {
    gq_qlayer *q = st->q;
    const int skip = q->hessian_skip, gpu = gq_backend_is_gpu(q->be), all = gq_log_get_level() >= GQ_LOG_DEBUG;
    int rc = GQ_OK;
    for (int r0 = 0, r1; r0 < T && !rc; r0 = r1) {
        r1 = T;
        if (skip > 0) {
            while (r0 < T && st->tok_pos[idx ? idx[r0] : r0] < skip) r0++;
            for (r1 = r0; r1 < T && st->tok_pos[idx ? idx[r1] : r1] >= skip;) r1++;
            if (r1 == r0) break;
        }
        const void *Xr = (const char *)X + gq_be_act_bytes(q->be, (size_t)r0 * ld);
        const int timed = !gpu || all || st->n_timed < TIMED_UPDATES; /* the CPU runs it when called */
        if (timed && gpu) rc = gq_be_sync(q->be); /* the forward work before it is not the Hessian's */
        double t0 = gq_now();
        if (!rc) rc = gq_be_hessian_accum(q->be, st->H[hi], Xr, ld, r1 - r0, st->K);
        if (!rc && timed && gpu) rc = gq_be_sync(q->be);
        if (timed) st->t_timed += gq_now() - t0, st->rows_timed += r1 - r0, st->n_timed++;
        st->rows_all += r1 - r0;
        st->tokens[hi] += r1 - r0;
    }
    return rc;
}

static int stage_hook(void *user, gq_group g, int e, const void *X, int ld, int T, const int32_t *idx) {
    stage_t *st = user;
    if (g != st->g) return GQ_OK;
    int i = e < 0 ? 0 : e;
    if (i >= st->n_h) return gq_err(GQ_ERR_ARG, "layer %d: expert %d of %d", st->l, e, st->n_h);
    return stage_accum(st, i, X, ld, T, idx);
}

static void stage_free(stage_t *st) {
    for (int i = 0; i < st->n_h && st->H; i++) gq_be_release(st->q->be, st->H[i]);
    free(st->H);
    free(st->tokens);
    free(st->tok_pos);
    st->H = NULL;
    st->tokens = NULL;
    st->tok_pos = NULL;
}

static int stage_begin(stage_t *st, gq_group g) {
    const gq_config *c = st->q->cfg;
    int rows;
    st->g = g;
    st->t0 = gq_now();
    st->t_timed = 0, st->rows_timed = st->rows_all = 0, st->n_timed = 0;
    st->n_h = (g >= GQ_GRP_MLP_IN && st->bl->n_experts) ? st->bl->n_experts : 1;
    gq_group_shape(c, st->l, g, &rows, &st->K);
    st->H = gq_calloc((size_t)st->n_h, sizeof *st->H);
    st->tokens = gq_calloc((size_t)st->n_h, sizeof *st->tokens);
    if (st->q->hessian_skip > 0) st->tok_pos = gq_malloc((size_t)st->q->chunk_max * sizeof *st->tok_pos);
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

/* A stage starts chunk c: where each row sits in its sequence (hessian_skip). */
static void chunk_begin(stage_t *st, int c) {
    gq_qlayer *q = st->q;
    if (!st->tok_pos) return;
    for (int i = q->chunk0[c], r = 0; i < q->chunk0[c + 1]; i++)
        for (int t = 0; t < q->len[i]; t++) st->tok_pos[r++] = t;
}

/* Steps first .. last of sequence i alone, on its rows x of X and a of A (NULL: the scratch's),
 * no hook; check: every op's output checked for NaN/Inf. */
static int seq_run(stage_t *st, int i, void *x, void *a, gq_step first, gq_step last, int check) {
    gq_qlayer *q = st->q;
    gq_rope_inv_freq(q->cfg, q->len[i], q->inv_freq);
    gq_layer_args args = {.be = q->be, .cfg = q->cfg, .layer = st->l, .bl = st->bl, .x = x, .T = q->len[i], .a = a,
                          .first = first, .last = last, .inv_freq = q->inv_freq, .check = check, .s = &q->s};
    return gq_layer_run(&args);
}

/*
 * Name the first NaN/Inf of chunks c0 .. c1 - 1 (GQ_ERR_NUMERIC, message already set: a solve
 * refused a non-finite Hessian, or a chunk's run met non-finite router logits): run their
 * calibration samples one by one through the steps that fed it again, every op checked:
 * "calibration sample 5: layer 3: non-finite activation after attention (NaN at token 17,
 * column 40)". The attention block starts from the layer input, still in X; the MLP block from
 * h = x + o(attn), which stage C left in X. The activations are overwritten (the run fails
 * anyway). Keeps the message when every activation is finite (found: 0, else 1; may be NULL).
 */
static int locate_nonfinite(stage_t *st, int c0, int c1, int mlp, int *found) {
    gq_qlayer *q = st->q;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", gq_errmsg());
    int rc = GQ_OK;
    for (int c = c0; c < c1 && rc == GQ_OK; c++) {
        char *x = x_in(q, c);
        if (!x) return gq_errcode();
        for (int i = q->chunk0[c]; i < q->chunk0[c + 1] && rc == GQ_OK; i++) {
            rc = seq_run(st, i, x + x_bytes(q, q->off[i] - c_off(q, c)), NULL, mlp ? GQ_STEP_MLP_IN : GQ_STEP_ATTN_IN,
                         mlp ? GQ_STEP_MLP_RES : GQ_STEP_ATTN_RES, 1);
            if (rc == GQ_ERR_NUMERIC) gq_err_prefix("calibration sample %d: layer %d", q->seq0 + i, st->l);
        }
    }
    q->cur_x = q->cur_a = -1; /* the streaming windows no longer hold a chunk's rows */
    if (found) *found = rc != GQ_OK;
    return rc == GQ_OK ? gq_err(GQ_ERR_NUMERIC, "%s", msg) : rc;
}

/* Chunk c through steps first .. last (token-wise: ATTN_IN alone, or from ATTN_RES on) at once,
 * with the stage's hook (if it has Hessians); keeps x (write back). A MoE layer's routing goes to
 * the chunk's route[c] and is reused by the runs starting at MLP_IN after stage C. */
static int chunk_run(stage_t *st, int c, gq_step first, gq_step last) {
    gq_qlayer *q = st->q;
    const int a_needed = first == GQ_STEP_ATTN_RES;
    void *x = x_in(q, c), *a = a_needed ? a_in(q, c, 1) : NULL;
    if (!x || (a_needed && !a)) return gq_errcode();
    const int moe = st->bl->n_experts > 0 && last >= GQ_STEP_MLP_IN;
    gq_layer_args args = {.be = q->be, .cfg = q->cfg, .layer = st->l, .bl = st->bl, .x = x, .T = c_rows(q, c),
                          .a = a, .first = first, .last = last, .inv_freq = q->inv_freq,
                          .hook = st->H ? stage_hook : NULL, .user = st, .s = &q->s,
                          .route = moe ? &q->route[c] : NULL,
                          .route_reuse = moe && first == GQ_STEP_MLP_IN && q->routed == st->l};
    chunk_begin(st, c);
    int rc = gq_layer_run(&args);
    if (rc == GQ_ERR_NUMERIC && last >= GQ_STEP_MLP_IN) { /* x holds h = x + o(a) (the last add comes after) */
        gq_err_prefix("calibration samples %d .. %d", q->seq0 + q->chunk0[c], q->seq0 + q->chunk0[c + 1] - 1);
        return locate_nonfinite(st, c, c + 1, 1, NULL);
    }
    if (!rc && (first == GQ_STEP_ATTN_RES || last == GQ_STEP_MLP_RES)) rc = x_out(q, c); /* x changed */
    return rc;
}

/* Chunk c's attention, sequence by sequence (steps ATTN_IN .. ATTN), into its rows of A; then, in
 * stage B (keep), the Hessian update of the chunk's attention output at once and A written back. */
static int chunk_attention(stage_t *st, int c, int keep) {
    gq_qlayer *q = st->q;
    char *x = x_in(q, c), *a = a_in(q, c, 0);
    if (!x || !a) return gq_errcode();
    chunk_begin(st, c);
    int rc = GQ_OK;
    for (int i = q->chunk0[c]; i < q->chunk0[c + 1] && !rc; i++) {
        int64_t r = q->off[i] - c_off(q, c);
        rc = seq_run(st, i, x + x_bytes(q, r), a + a_bytes(q, r), GQ_STEP_ATTN_IN, GQ_STEP_ATTN, 0);
    }
    if (!rc && keep && st->H) rc = stage_accum(st, 0, a, q->cfg->n_heads * q->cfg->head_dim, c_rows(q, c), NULL);
    if (!rc && keep) rc = a_out(q, c);
    return rc;
}

static const char *group_what(gq_group g) {
    static const char *const w[GQ_GRP_COUNT] = {"attention input linears", "attention output linear",
                                                "MLP input linears", "MLP output linear"};
    return w[g];
}

static void solve_what(const stage_t *st, int hi, char *buf, size_t cap) {
    if (st->n_h > 1) snprintf(buf, cap, "expert %d %s", hi, group_what(st->g));
    else snprintf(buf, cap, "%s", group_what(st->g));
}

/* Solve stacked weight hi with its Hessian on `be` (the layer's backend, or a fork of it on a
 * worker thread) and slice the result into its modules in res. Distinct hi may run at once.
 * Errors: the status, with the message in this thread's error state (solve_failed adds where). */
static int solve_on(stage_t *st, gq_backend *be, int hi, const gq_gptq_params *p, const gq_module *mods, int nmods,
                    gq_qresult *res) {
    gq_qlayer *q = st->q;
    int e = st->n_h > 1 ? hi : -1;
    gq_gptq_params pe = *p;
    char what[96];
    solve_what(st, hi, what, sizeof what);
    if (e >= 0 && st->tokens[hi] < q->moe_min_tokens) { /* the stated policy for starved experts */
        gq_warn("layer %d expert %d: %lld calibration tokens routed to it (fewer than %d): %s rounded to nearest",
                st->l, e, (long long)st->tokens[hi], q->moe_min_tokens, group_what(st->g));
        pe.method = GQ_METHOD_RTN;
    }
    gq_qresult g;
    double t0 = gq_now();
    int rc = gq_be_gptq(be, &pe, st->H[hi], 2.0 / (double)q->n_seq_all, gq_blayer_weight(st->bl, st->g, e), &g);
    double secs = gq_now() - t0;
    if (rc) return rc;
    if (g.fallback)
        gq_warn("layer %d %s: Cholesky failed even with damping %g; quantized by rounding to nearest", st->l, what,
                g.damp_used);
    for (int k = 0; k < nmods; k++) {
        if (mods[k].group != st->g || mods[k].expert != e) continue;
        if (mods[k].row0 == 0 && mods[k].rows == g.rows) { /* the module is the whole weight: moved */
            res[k] = g;
            memset(&g, 0, sizeof g);
        } else {
            gq_qresult_slice(&g, mods[k].row0, mods[k].rows, &res[k]);
        }
        res[k].seconds = secs;
    }
    gq_qresult_free(&g);
    return GQ_OK;
}

/* On the calling thread, after solve_on of hi failed with rc: name the layer and module, and for
 * non-finite inputs the first calibration row that made them. */
static int solve_failed(stage_t *st, int hi, int rc) {
    char what[96];
    solve_what(st, hi, what, sizeof what);
    gq_err_prefix("layer %d %s", st->l, what);
    /* several devices: every rank looks in its own share after the solves (dp_share) */
    if (rc != GQ_ERR_NUMERIC || st->q->dp) return rc;
    return locate_nonfinite(st, 0, st->q->n_chunks, st->g >= GQ_GRP_MLP_IN, NULL);
}

/* Threads for a stage's n_h solves: 1 on the CPU (its solves use every core) and for dense
 * stages; for MoE on a GPU GQ_SOLVE_THREADS (default 4), each with a fork of the backend (its
 * own stream: small expert solves, latency-bound one by one, overlap). Forks are made once per
 * qlayer; one that cannot be made leaves fewer threads (warned). */
static int solve_threads(gq_qlayer *q, int n_h) {
    if (n_h < 2 || !gq_backend_is_gpu(q->be)) return 1;
    int want = gq_knobs_get()->solve_threads ? gq_knobs_get()->solve_threads : 4;
    if (want > n_h) want = n_h;
    if (!q->solvers) {
        q->solvers = gq_calloc(GQ_QLAYER_MAX_SOLVERS, sizeof *q->solvers);
        q->solvers[0] = q->be;
        q->n_solvers = 1;
    }
    while (q->n_solvers < want && !q->fork_failed) {
        if (gq_backend_fork(q->be, &q->solvers[q->n_solvers]) != GQ_OK) {
            gq_warn("expert solves: a second stream for the solves failed (%s); %d at once", gq_errmsg(),
                    q->n_solvers);
            gq_err_clear();
            q->fork_failed = 1;
            break;
        }
        q->n_solvers++;
    }
    return want < q->n_solvers ? want : q->n_solvers;
}

/* Several devices: whether this rank solves Hessian hi of a MoE stage (and broadcasts its weight). */
static int owns(const gq_qlayer *q, int hi) {
    return !q->dp || hi % gq_dp_size(q->dp) == q->rank;
}

/* Several devices, a dense stage (one stacked weight): the rows [*r0, *r1) that rank k of n solves
 * (a start at a multiple of 16; empty when there are few rows). */
static void split_rows(int rows, int n, int k, int *r0, int *r1) {
    *r0 = k == 0 ? 0 : (int)((int64_t)rows * k / n) & ~15;
    *r1 = k == n - 1 ? rows : (int)((int64_t)rows * (k + 1) / n) & ~15;
}

/* Several devices, a dense stage: every rank solves a slice of the stacked weight's rows with the
 * same (summed) Hessian (GPTQ's rows are independent: the factor is computed on each), then the
 * rank holding a module's first row gathers that module's result from the ranks' slices. */
static int solve_split(stage_t *st, const gq_gptq_params *p, const gq_module *mods, int nmods, gq_qresult *res) {
    gq_qlayer *q = st->q;
    const int n = gq_dp_size(q->dp), k = q->rank;
    const gq_bweight *W = gq_blayer_weight(st->bl, st->g, -1);
    int r0, r1, rc = GQ_OK, row0[GQ_DP_MAX_RANKS], row1[GQ_DP_MAX_RANKS];
    gq_qresult g;
    memset(&g, 0, sizeof g);
    split_rows(W->rows, n, k, &r0, &r1);
    const double t0 = gq_now();
    if (r1 > r0) {
        gq_bweight ws = *W; /* rows r0 .. r1 - 1 of the stacked weight */
        ws.data = (char *)W->data + (size_t)r0 * W->cols * gq_dtype_size(W->dtype);
        ws.rows = r1 - r0;
        rc = gq_be_gptq(q->be, p, st->H[0], 2.0 / (double)q->n_seq_all, &ws, &g);
        if (!rc && g.fallback && k == 0)
            gq_warn("layer %d %s: Cholesky failed even with damping %g; quantized by rounding to nearest", st->l,
                    group_what(st->g), g.damp_used);
        if (rc) rc = solve_failed(st, 0, rc);
    }
    const double secs = gq_now() - t0;
    q->t_solve += secs;
    if ((rc = gq_dp_agree(q->dp, k, rc))) {
        gq_qresult_free(&g);
        return rc;
    }
    void *all[GQ_DP_MAX_RANKS];
    gq_dp_exchange(q->dp, k, &g, all);
    for (int j = 0; j < n; j++) split_rows(W->rows, n, j, &row0[j], &row1[j]);
    for (int m = 0; m < nmods; m++) {
        if (mods[m].group != st->g || mods[m].expert != -1) continue;
        int j = 0;
        while (j + 1 < n && row1[j] <= mods[m].row0) j++; /* the rank of its first row gathers it */
        if (j != k) continue;
        gq_qresult_gather((const gq_qresult *const *)all, row0, n, mods[m].row0, mods[m].rows, &res[m]);
        res[m].seconds = secs;
    }
    rc = gq_dp_agree(q->dp, k, GQ_OK); /* every rank's slice read */
    gq_qresult_free(&g);
    return rc;
}

/* Several devices, before the solves: every rank's stage done (or the first failure), the
 * Hessians and their token counts summed over the ranks. */
static int dp_reduce(stage_t *st, int rc) {
    gq_qlayer *q = st->q;
    if ((rc = gq_dp_agree(q->dp, q->rank, rc))) return rc;
    rc = gq_dp_allreduce_f32(q->dp, q->rank, st->H, st->n_h, (size_t)st->K * st->K);
    if (!rc) rc = gq_dp_sum_i64(q->dp, q->rank, st->tokens, st->n_h);
    if (!rc) rc = gq_be_sync(q->be); /* the solve forks' streams read the sums */
    if (rc) gq_err_prefix("layer %d %s: the Hessians over %d devices", st->l, group_what(st->g), gq_dp_size(q->dp));
    return rc;
}

/* Several devices, a solve refused non-finite inputs (GQ_ERR_NUMERIC from rank `own` != 0 here): every
 * rank looks for the first non-finite activation in its own share of the samples; the first rank
 * (by rank) that finds one reports it, else the solving rank its own message. */
static int dp_locate(stage_t *st, int own) {
    gq_qlayer *q = st->q;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", gq_errmsg());
    int found = 0, rc = locate_nonfinite(st, 0, q->n_chunks, st->g >= GQ_GRP_MLP_IN, &found);
    if (found) gq_dp_claim(q->dp, q->rank); /* the sample's rank reports it, before the solving ranks */
    if ((rc = gq_dp_agree(q->dp, q->rank, found ? rc : GQ_OK))) return rc;
    if (own) gq_err(own, "%s", msg); /* nobody found one: the solving rank's message */
    return gq_dp_agree(q->dp, q->rank, own);
}

/* Several devices, after the solves: every solve done (or the first failure), each dequantized
 * weight from its solver to every rank. */
static int dp_share(stage_t *st, int rc) {
    gq_qlayer *q = st->q;
    const int own = rc;
    if ((rc = gq_dp_agree(q->dp, q->rank, rc))) return rc == GQ_ERR_NUMERIC ? dp_locate(st, own) : rc;
    const int n = gq_dp_size(q->dp);
    for (int i = 0; i < st->n_h && !rc; i++) {
        const gq_bweight *W = gq_blayer_weight(st->bl, st->g, st->n_h > 1 ? i : -1);
        const size_t row_bytes = (size_t)W->cols * gq_dtype_size(W->dtype);
        for (int j = 0; j < (st->n_h > 1 ? 1 : n) && !rc; j++) { /* MoE: from the expert's solver; dense: each slice */
            int r0 = 0, r1 = W->rows, root = i % n;
            if (st->n_h == 1) split_rows(W->rows, n, j, &r0, &r1), root = j;
            if (r1 > r0)
                rc = gq_dp_broadcast(q->dp, q->rank, (char *)W->data + r0 * row_bytes, (r1 - r0) * row_bytes, root);
        }
    }
    if (rc) gq_err_prefix("layer %d %s: the quantized weights to %d devices", st->l, group_what(st->g),
                          gq_dp_size(q->dp));
    return rc;
}

/* Every solve of the stage: one after another, or (MoE on a GPU) on solve_threads threads in
 * dynamic order; the results are the same either way (each solve alone on its stream). The first
 * failing Hessian by index is reported, as one after another would. */
static int solve_all(stage_t *st, const gq_gptq_params *p, const gq_module *mods, int nmods, gq_qresult *res) {
    gq_qlayer *q = st->q;
    if (q->dp && st->n_h == 1) return solve_split(st, p, mods, nmods, res);
    const int nt = solve_threads(q, st->n_h);
    const double t0 = gq_now();
    int rc = GQ_OK;
    if (nt <= 1) {
        for (int i = 0; i < st->n_h && !rc; i++)
            if (owns(q, i) && (rc = solve_on(st, q->be, i, p, mods, nmods, res)) != GQ_OK) rc = solve_failed(st, i, rc);
        q->t_solve += gq_now() - t0;
        return rc;
    }
    int *rcs = gq_calloc((size_t)st->n_h, sizeof *rcs);
    char(*msg)[512] = gq_calloc((size_t)st->n_h, sizeof *msg);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int i = 0; i < st->n_h; i++) {
        if (!owns(q, i)) continue;
        rcs[i] = solve_on(st, q->solvers[omp_get_thread_num()], i, p, mods, nmods, res);
        if (rcs[i]) snprintf(msg[i], sizeof msg[i], "%s", gq_errmsg());
    }
    for (int t = 0; t < nt && !rc; t++) rc = gq_be_sync(q->solvers[t]);
    q->t_solve += gq_now() - t0;
    for (int i = 0; i < st->n_h && !rc; i++)
        if (rcs[i]) {
            gq_err(rcs[i], "%s", msg[i]);
            rc = solve_failed(st, i, rcs[i]);
        }
    free(rcs);
    free(msg);
    return rc;
}

/* End of a stage loop: the Hessian seconds (the timed updates', scaled by the rows of all), then
 * solve every Hessian of the stage. */
static int stage_end(stage_t *st, int rc, const gq_gptq_params *p, const gq_module *mods, int nmods,
                     gq_qresult *res) {
    gq_qlayer *q = st->q;
    if (!rc) rc = gq_be_sync(q->be);
    q->t_stages += gq_now() - st->t0;
    if (st->rows_timed > 0) q->t_hessian += st->t_timed * ((double)st->rows_all / (double)st->rows_timed);
    if (rc) gq_err_prefix("layer %d %s", st->l, group_what(st->g));
    if (q->dp) rc = dp_reduce(st, rc);
    for (int i = 0; i < st->n_h && !rc && q->on_hessian && q->rank == 0; i++)
        q->on_hessian(q->on_hessian_user, st->l, st->g, st->n_h > 1 ? i : -1, st->H[i], st->K, st->tokens[i]);
    if (!rc) rc = solve_all(st, p, mods, nmods, res);
    if (q->dp) rc = dp_share(st, rc);
    stage_free(st);
    return rc;
}

/* A stage over every chunk: steps first .. last (B: attention per sequence), then the solves of
 * group g. */
static int stage(stage_t *st, gq_group g, gq_step first, gq_step last, const gq_gptq_params *p,
                 const gq_module *mods, int nmods, gq_qresult *res) {
    int rc = stage_begin(st, g);
    for (int c = 0; c < st->q->n_chunks && !rc; c++)
        rc = last == GQ_STEP_ATTN ? chunk_attention(st, c, 1) : chunk_run(st, c, first, last);
    return stage_end(st, rc, p, mods, nmods, res);
}

int gq_qlayer_run(gq_qlayer *q, int l, gq_blayer *bl, const gq_gptq_params *p, gq_qresult *res) {
    stage_t st = {.q = q, .l = l, .bl = bl};
    int rc = GQ_OK;
    q->routed = -1;
    if (res) {
        int cap = gq_layer_module_cap(q->cfg);
        gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
        int n = gq_layer_modules(q->cfg, 0, l, mods, cap);
        rc = stage(&st, GQ_GRP_ATTN_IN, GQ_STEP_ATTN_IN, GQ_STEP_ATTN_IN, p, mods, n, res); /* A: q, k, v */
        if (!rc) rc = stage(&st, GQ_GRP_ATTN_OUT, GQ_STEP_ATTN_IN, GQ_STEP_ATTN, p, mods, n, res); /* B: o */
        if (!rc) rc = stage(&st, GQ_GRP_MLP_IN, GQ_STEP_ATTN_RES, GQ_STEP_MLP_IN, p, mods, n, res); /* C: gate, up */
        if (!rc) q->routed = l; /* the MLP input is final: its routing holds for D and E */
        if (!rc) rc = stage(&st, GQ_GRP_MLP_OUT, GQ_STEP_MLP_IN, GQ_STEP_MLP, p, mods, n, res); /* D: down */
        free(mods);
        if (rc) return rc;
    }
    /* E (or a restored layer: the attention, then the rest per chunk: the same operations) */
    double t0 = gq_now();
    for (int c = 0; c < q->n_chunks && !rc; c++) {
        if (!res) rc = chunk_attention(&st, c, 0);
        if (!rc) rc = chunk_run(&st, c, res ? GQ_STEP_MLP_IN : GQ_STEP_ATTN_RES, GQ_STEP_MLP_RES);
    }
    if (!rc) rc = gq_be_sync(q->be);
    q->t_stages += gq_now() - t0;
    q->routed = -1;
    return rc ? gq_err_prefix("layer %d forward", l) : GQ_OK;
}
