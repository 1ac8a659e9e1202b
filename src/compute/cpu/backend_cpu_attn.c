/*
 * backend_cpu_attn.c -- causal grouped-query attention (with the options of
 * gq_attn_opts: score scale, soft-cap, sliding window) and the NLL head (with
 * the final-logit soft-cap) of the CPU backend.
 *
 * Attention works on one (head, query tile) at a time: the tile's scores
 * S[nq][nk] = scale * Q_tile K[k0:k0+nk]^T cover exactly the keys some query
 * of the tile can see: up to the last query's position (nk = k0 + its
 * absolute position + 1), and from k0 = 0 (no window) or the first key the
 * window leaves visible to the tile's first query; so key tiles that are
 * fully masked for the whole query tile (in the future or behind the window)
 * are never computed. With a soft-cap, S = softcap * tanhf(S / softcap).
 * The softmax of each row over its visible keys (max subtracted, fp32; the
 * other entries zeroed) is followed by O_tile = P V[k0:k0+nk] and a division
 * by the row sums. Scratch is one [tile][Tk] buffer per thread ([tile][tile +
 * window - 1] when that is smaller). Without options the arithmetic is that
 * of the plain op before the options existed, bit for bit.
 *
 * Two schedules (GQ_CPU_ATTN, measured by bench/bench_forward.c on this
 * 2-core machine at T = 2048, idle):
 *   tasks (default): `omp parallel for` over the (head, tile) tasks, heaviest
 *     tiles first, each task's two sgemms single-threaded: pycoder-5m shape
 *     12.0 ms (179 GFLOP/s), Llama-7B shape 185 ms (186 GFLOP/s);
 *   blas: tasks one after another, multithreaded sgemm, rows of the softmax
 *     in parallel: 13.6-14.8 ms (145-158 GFLOP/s) and 186-202 ms; under
 *     contention from other processes it collapses (5-10x slower: a barrier
 *     per sgemm), tasks does not.
 */
#include <stdlib.h>

#include "backend_cpu.h"

typedef struct {
    const float *Q, *K, *V; /* Q [Tq][ldq], K/V [Tk][ldk/ldv] */
    float *O;               /* [Tq][ldo] */
    int ldq, ldk, ldv, ldo;
    int Tq, Tk, n_heads, group, hd, tile;
    float scale;   /* score scale */
    float softcap; /* 0: none */
    int window;    /* 0: none; else query at position p sees keys p - window < j <= p */
} attn_args;

/* The options' score scale (default 1 / sqrt(head_dim)), soft-cap and window (o NULL: none). */
typedef struct {
    float scale, softcap;
    int window;
} attn_opt;

static attn_opt attn_opt_of(const gq_attn_opts *o, int head_dim) {
    attn_opt r = {(float)(1.0 / sqrt((double)head_dim)), 0.0f, 0};
    if (o) {
        if (o->scale > 0.0f) r.scale = o->scale;
        r.softcap = o->softcap;
        r.window = o->window;
    }
    return r;
}

/* Row r of the softmax below up to its exps (vis = the visible columns, n of them; the masked
 * ones 0). */
static float *softmax_exps(float *row, int r, int nk, int first, int k0, int window, int *n_out) {
    int hi = first + r + 1 - k0;       /* one past the last visible column */
    int lo = window ? hi - window : 0; /* the first visible column */
    lo = lo < 0 ? 0 : lo;
    for (int j = 0; j < lo; j++) row[j] = 0.0f; /* behind the window */
    float *vis = row + lo;
    int n = hi - lo; /* visible keys */
    float mx = vis[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < n; j++) mx = vis[j] > mx ? vis[j] : mx;
#pragma omp simd
    for (int j = 0; j < n; j++) vis[j] = gq_cpu_expf(vis[j] - mx);
    for (int j = hi; j < nk; j++) row[j] = 0.0f; /* causal mask */
    *n_out = n;
    return vis;
}

#define SOFTMAX_ROWS 4 /* rows whose sums run side by side */

/* Softmax of nq rows of S[nq][nk] in place. Column c of S is key k0 + c; row r is the query at
 * absolute position first + r and sees keys max(0, first + r - window + 1) .. first + r
 * (window 0: from key 0). Entries of invisible keys are set to 0. Returns 1 / row sum in
 * inv_sum[r] (P is left unnormalised). Each row's sum is a sequential loop in column order (not
 * a vector reduction: the same bits on every machine for a given kernel set); four rows' sums
 * advance together, four independent chains of adds instead of one. */
static void softmax_rows(float *S, int nq, int nk, int first, int k0, int window, float *inv_sum, int parallel) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int r0 = 0; r0 < nq; r0 += SOFTMAX_ROWS) {
        const int nr = nq - r0 < SOFTMAX_ROWS ? nq - r0 : SOFTMAX_ROWS;
        float *vis[SOFTMAX_ROWS], sum[SOFTMAX_ROWS] = {0.0f, 0.0f, 0.0f, 0.0f};
        int n[SOFTMAX_ROWS], m = nk;
        for (int i = 0; i < nr; i++) {
            vis[i] = softmax_exps(S + (size_t)(r0 + i) * nk, r0 + i, nk, first, k0, window, &n[i]);
            m = n[i] < m ? n[i] : m;
        }
        int j0 = 0;
        if (nr == SOFTMAX_ROWS) {
            const float *v0 = vis[0], *v1 = vis[1], *v2 = vis[2], *v3 = vis[3];
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            for (int j = 0; j < m; j++) s0 += v0[j], s1 += v1[j], s2 += v2[j], s3 += v3[j];
            sum[0] = s0, sum[1] = s1, sum[2] = s2, sum[3] = s3;
            j0 = m;
        }
        for (int i = 0; i < nr; i++) {
            float s = sum[i];
            for (int j = j0; j < n[i]; j++) s += vis[i][j];
            inv_sum[r0 + i] = 1.0f / s;
        }
    }
}

/* S[nq][nk] = softcap * tanh(S / softcap) (Gemma-2's attention logit soft-cap, in torch's order). */
static void softcap_scores(float *S, int nq, int nk, float softcap, int parallel) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int r = 0; r < nq; r++) {
        float *row = S + (size_t)r * nk;
        for (int j = 0; j < nk; j++) row[j] = softcap * tanhf(row[j] / softcap);
    }
}

/* One (head h, query tile starting at i0 with nq rows) task. */
static void attn_task(const attn_args *a, int h, int i0, int nq, float *S, float *inv_sum, int parallel) {
    int kvh = h / a->group;
    int first = a->Tk - a->Tq + i0;                 /* absolute position of query i0 */
    int k0 = a->window ? first - a->window + 1 : 0; /* the first key query i0 sees */
    k0 = k0 < 0 ? 0 : k0;
    int nk = first + nq - k0; /* keys k0 .. the tile's last query's position */
    const float *q = a->Q + (size_t)i0 * a->ldq + (size_t)h * a->hd;
    const float *k = a->K + (size_t)k0 * a->ldk + (size_t)kvh * a->hd;
    const float *v = a->V + (size_t)k0 * a->ldv + (size_t)kvh * a->hd;
    float *o = a->O + (size_t)i0 * a->ldo + (size_t)h * a->hd;
    /* S[nq][nk] = scale * q[nq][hd] k[nk][hd]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, a->hd, a->scale, q, a->ldq, k, a->ldk, 0.0f, S, nk);
    if (a->softcap > 0.0f) softcap_scores(S, nq, nk, a->softcap, parallel);
    softmax_rows(S, nq, nk, first, k0, a->window, inv_sum, parallel);
    /* o[nq][hd] = P[nq][nk] v[nk][hd] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, a->hd, nk, 1.0f, S, nk, v, a->ldv, 0.0f, o, a->ldo);
    for (int r = 0; r < nq; r++) {
        float *orow = o + (size_t)r * a->ldo;
        for (int c = 0; c < a->hd; c++) orow[c] *= inv_sum[r];
    }
}

int gq_cpu_attention(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk, const void *V,
                     int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim, const gq_attn_opts *o) {
    const gq_cpu_ctx *c = be->ctx;
    /* tile: bench_forward on 2 Zen 5 cores at T = 2048 was fastest with 64 rows for head_dim 64
     * (pycoder-5m: 179 GFLOP/s vs 175 at 128) and 128-256 for head_dim 128 (Llama-7B: 186 vs
     * 171 at 64), i.e. about head_dim rows */
    int tile = c->attn_tile > 0 ? c->attn_tile : head_dim < 32 ? 32 : head_dim > 256 ? 256 : head_dim;
    const attn_opt op = attn_opt_of(o, head_dim);
    /* clang-format off */
    attn_args a = {.Q = Q, .K = K, .V = V, .O = O, .ldq = ldq, .ldk = ldk, .ldv = ldv, .ldo = ldo, .Tq = Tq,
                   .Tk = Tk, .n_heads = n_heads, .group = n_heads / n_kv, .hd = head_dim,
                   .tile = tile < Tq ? tile : Tq, .scale = op.scale, .softcap = op.softcap, .window = op.window};
    /* clang-format on */
    int ntiles = (Tq + a.tile - 1) / a.tile;
    size_t span = (size_t)Tk; /* the most keys a tile sees: all, or its rows + window - 1 */
    if (a.window > 0 && (size_t)a.tile + a.window - 1 < span) span = (size_t)a.tile + a.window - 1;
    size_t scratch = (size_t)a.tile * span; /* S [tile][span] */

    if (c->attn_mode == GQ_CPU_ATTN_BLAS) {
        float *S = gq_malloc_aligned(scratch * sizeof(float));
        float *inv_sum = gq_malloc(sizeof(float) * (size_t)a.tile);
        for (int h = 0; h < n_heads; h++)
            for (int t = 0; t < ntiles; t++) {
                int i0 = t * a.tile, nq = Tq - i0 < a.tile ? Tq - i0 : a.tile;
                attn_task(&a, h, i0, nq, S, inv_sum, 1);
            }
        gq_free_aligned(S);
        free(inv_sum);
        return GQ_OK;
    }

    int ntasks = n_heads * ntiles;
    size_t keys = a.window > 0 && a.window < Tk ? (size_t)a.window : (size_t)Tk; /* per query, at most */
    /* a decode step (Tq = 1) over a short cache (or window) is microseconds of work: no parallel region */
#pragma omp parallel if ((size_t)Tq * keys * n_heads * head_dim >= 65536)
    {
        float *S = gq_malloc_aligned(scratch * sizeof(float));
        float *inv_sum = gq_malloc(sizeof(float) * (size_t)a.tile);
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < ntasks; task++) {
            int t = ntiles - 1 - task / n_heads; /* the last tiles see the most keys: start with them */
            int h = task % n_heads;
            int i0 = t * a.tile, nq = Tq - i0 < a.tile ? Tq - i0 : a.tile;
            attn_task(&a, h, i0, nq, S, inv_sum, 0);
        }
        gq_free_aligned(S);
        free(inv_sum);
    }
    return GQ_OK;
}

/* ---- the batched decode step ------------------------------------------------------------ */

typedef struct {
    float *QKV;     /* [B][ldqkv]: q (n_heads), k, v (n_kv heads each) of each row */
    float *Kc, *Vc; /* caches: slot s, position p, kv head h at s * slot_stride + p * ldkv + h * hd */
    float *O;       /* [B][ldo] */
    const int32_t *slot, *pos;
    const float *inv_freq;
    size_t slot_stride;
    int ldqkv, ldkv, ldo, n_heads, n_kv, group, hd, rot;
    float scale, softcap;
    int window;
} dec_args;

/* Row r, kv head h: rope of its query heads and key head at pos[r], the key and value into the
 * cache at pos[r], then each query head's attention over the visible cached keys. The scores are
 * dot products (gq_cpu_dots: each key read once for up to 4 of the group's query heads), the
 * soft-cap and exps as the prefill's (softcap_scores, softmax_exps) with a sequential sum,
 * O = (sum_j p_j v_j) / sum. S [group][keys], acc [group][hd], inv [group],
 * cs [rot]. */
static void decode_task(const dec_args *a, int r, int h, float *S, float *acc, float *inv, float *cs) {
    const int hd = a->hd, g = a->group, p = a->pos[r];
    float *row = a->QKV + (size_t)r * a->ldqkv;
    float *q = row + (size_t)h * g * hd, *k = row + (size_t)a->n_heads * hd + (size_t)h * hd;
    float *v = k + (size_t)a->n_kv * hd;
    gq_cpu_rope_angles(cs, a->rot, p, a->inv_freq);
    gq_cpu_rope_heads(q, g, hd, a->rot, cs);
    gq_cpu_rope_heads(k, 1, hd, a->rot, cs);
    const float *kc = a->Kc + (size_t)a->slot[r] * a->slot_stride + (size_t)h * hd;
    const float *vc = a->Vc + (size_t)a->slot[r] * a->slot_stride + (size_t)h * hd;
    memcpy((float *)kc + (size_t)p * a->ldkv, k, sizeof(float) * (size_t)hd);
    memcpy((float *)vc + (size_t)p * a->ldkv, v, sizeof(float) * (size_t)hd);
    int lo = a->window ? p - a->window + 1 : 0; /* keys lo .. p */
    lo = lo < 0 ? 0 : lo;
    const int n = p + 1 - lo;
    for (int j = 0; j < n; j++) { /* S[i][j] = scale * q_i . k_{lo + j}, 4 query heads a pass over k */
        const float *kj = kc + (size_t)(lo + j) * a->ldkv;
        for (int i0 = 0; i0 < g; i0 += 4) {
            float d[4];
            const int m = g - i0 < 4 ? g - i0 : 4;
            gq_cpu_dots(kj, q + (size_t)i0 * hd, (size_t)hd, m, hd, d);
            for (int i = 0; i < m; i++) S[(size_t)(i0 + i) * n + j] = a->scale * d[i];
        }
    }
    if (a->softcap > 0.0f) softcap_scores(S, g, n, a->softcap, 0);
    for (int i = 0; i < g; i++) { /* each row's keys all visible: its exps, a sequential sum */
        int nv;
        float *si = softmax_exps(S + (size_t)i * n, 0, n, n - 1, 0, 0, &nv);
        float sum = 0.0f;
        for (int j = 0; j < nv; j++) sum += si[j];
        inv[i] = 1.0f / sum;
        memset(acc + (size_t)i * hd, 0, sizeof(float) * (size_t)hd);
    }
    for (int j = 0; j < n; j++) { /* acc_i += p_ij v_{lo + j} */
        const float *vj = vc + (size_t)(lo + j) * a->ldkv;
        for (int i = 0; i < g; i++) {
            float *ai = acc + (size_t)i * hd;
            const float pij = S[(size_t)i * n + j];
#pragma omp simd
            for (int c = 0; c < hd; c++) ai[c] += pij * vj[c];
        }
    }
    float *o = a->O + (size_t)r * a->ldo + (size_t)h * g * hd;
    for (int i = 0; i < g; i++)
        for (int c = 0; c < hd; c++) o[(size_t)i * hd + c] = acc[(size_t)i * hd + c] * inv[i];
}

int gq_cpu_decode_attention(gq_backend *be, void *O, int ldo, void *QKV, int ldqkv, int B, void *Kc, void *Vc,
                            size_t slot_stride, int ldkv, const int32_t *slot, const int32_t *pos, int n_heads,
                            int n_kv, int head_dim, int rot, const float *inv_freq, const gq_attn_opts *o) {
    const int group = n_heads / n_kv;
    const attn_opt op = attn_opt_of(o, head_dim);
    /* clang-format off */
    dec_args a = {.QKV = QKV, .Kc = Kc, .Vc = Vc, .O = O, .slot = slot, .pos = pos, .inv_freq = inv_freq,
                  .slot_stride = slot_stride, .ldqkv = ldqkv, .ldkv = ldkv, .ldo = ldo, .n_heads = n_heads,
                  .n_kv = n_kv, .group = group, .hd = head_dim, .rot = rot, .scale = op.scale,
                  .softcap = op.softcap, .window = op.window};
    /* clang-format on */
    int keys = 1; /* the most keys a row sees */
    size_t work = 0;
    for (int r = 0; r < B; r++) {
        int n = a.window && a.window < pos[r] + 1 ? a.window : pos[r] + 1;
        keys = n > keys ? n : keys;
        work += (size_t)n;
    }
    const int ntasks = B * n_kv;
    /* one parallel region for the step (row by row, each op opened its own); a short step stays on
     * the calling thread */
#pragma omp parallel if (work * n_heads * head_dim >= 65536 && ntasks > 1)
    {
        float *S = gq_malloc(sizeof(float) * (size_t)group * keys);
        float *acc = gq_malloc(sizeof(float) * (size_t)group * (head_dim + 1)),
              *cs = gq_malloc(sizeof(float) * (size_t)rot);
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < ntasks; t++)
            decode_task(&a, t / n_kv, t % n_kv, S, acc, acc + (size_t)group * head_dim, cs);
        free(S), free(acc), free(cs);
    }
    return GQ_OK;
}

/* ---- NLL head ---------------------------------------------------------------------------- */

/* Logits L[nr][vocab] = softcap * tanh(L / softcap), in the rows that are used: those with a
 * target, and all when they are returned (logits_out). */
static void softcap_logits(float *L, int nr, int vocab, const int32_t *targets, int all, float softcap) {
#pragma omp parallel for schedule(static) if ((size_t)nr * vocab >= 32768)
    for (int r = 0; r < nr; r++) {
        if (!all && targets[r] < 0) continue;
        float *row = L + (size_t)r * vocab;
        for (int j = 0; j < vocab; j++) row[j] = softcap * tanhf(row[j] / softcap);
    }
}

#define NLL_EXP_BLOCK 512 /* logits per vectorised exp pass */

int gq_cpu_nll(gq_backend *be, const void *Xv, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
               float softcap, double *nll_sum, int64_t *count, float *logits_out) {
    const float *X = Xv, *W = Wlm->data; /* X [T][ldx], W [vocab][d] */
    int vocab = Wlm->rows, d = Wlm->cols;
    /* rows per chunk: a logits block of about 16 MiB, 8 .. 256 rows */
    int R = (int)((16u << 20) / ((size_t)vocab * sizeof(float)));
    R = R < 8 ? 8 : R > 256 ? 256 : R;
    float *L = logits_out ? NULL : gq_malloc_aligned((size_t)R * vocab * sizeof(float)); /* [R][vocab] */
    double *row_nll = gq_malloc((size_t)R * sizeof(double));
    double nll = 0;
    int64_t cnt = 0;
    for (int t0 = 0; t0 < T; t0 += R) {
        int nr = T - t0 < R ? T - t0 : R;
        float *Lc = logits_out ? logits_out + (size_t)t0 * vocab : L;
        if (T <= GQ_CPU_SMALL_T) /* a decode step: the head streamed once (sgemm would pack all of it) */
            gq_cpu_linear_rows(Lc, vocab, X + (size_t)t0 * ldx, ldx, nr, W, vocab, d, 0);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, vocab, d, 1.0f, X + (size_t)t0 * ldx, ldx, W, d,
                        0.0f, Lc, vocab);
        if (softcap > 0.0f) softcap_logits(Lc, nr, vocab, targets + t0, logits_out != NULL, softcap);
#pragma omp parallel for schedule(static) if ((size_t)nr * vocab >= 32768)
        for (int r = 0; r < nr; r++) {
            int tg = targets[t0 + r];
            if (tg < 0) continue;
            const float *row = Lc + (size_t)r * vocab;
            float mx = row[0];
#pragma omp simd reduction(max : mx)
            for (int j = 1; j < vocab; j++) mx = row[j] > mx ? row[j] : mx;
            double sum = 0; /* log-sum-exp with the max subtracted, summed in double in column order */
            for (int j0 = 0; j0 < vocab; j0 += NLL_EXP_BLOCK) {
                float e[NLL_EXP_BLOCK]; /* the exps vectorised, their sum sequential */
                const int n = vocab - j0 < NLL_EXP_BLOCK ? vocab - j0 : NLL_EXP_BLOCK;
#pragma omp simd
                for (int j = 0; j < n; j++) e[j] = gq_cpu_expf(row[j0 + j] - mx);
                for (int j = 0; j < n; j++) sum += (double)e[j];
            }
            row_nll[r] = (double)mx + log(sum) - (double)row[tg];
        }
        /* the chunk's sum in row order, whatever the thread count: bitwise reproducible (an
         * OpenMP reduction combines the threads' partial sums in no fixed order) */
        double chunk = 0;
        for (int r = 0; r < nr; r++)
            if (targets[t0 + r] >= 0) chunk += row_nll[r], cnt++;
        nll += chunk;
    }
    free(row_nll);
    gq_free_aligned(L);
    *nll_sum += nll;
    *count += cnt;
    return GQ_OK;
}
