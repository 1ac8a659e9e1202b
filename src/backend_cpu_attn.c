/*
 * backend_cpu_attn.c -- causal grouped-query attention and the NLL head of
 * the CPU backend.
 *
 * Attention works on one (head, query tile) at a time: the tile's scores
 * S[nq][nk] = Q_tile K[0:nk]^T / sqrt(hd) cover exactly the keys the tile's
 * last query can see (nk = its absolute position + 1), so key tiles that are
 * fully masked for the whole query tile are never computed; the softmax of
 * each row (max subtracted, fp32) is followed by O_tile = P V[0:nk] and a
 * division by the row sums. Scratch is one [tile][Tk] buffer per thread.
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
    float scale;
} attn_args;

/* Softmax of nq rows of S[nq][nk] in place; row r sees keys 0..first + r.
 * Returns 1 / row sum in inv_sum[r] (P is left unnormalised). */
static void softmax_rows(float *S, int nq, int nk, int first, float *inv_sum, int parallel) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int r = 0; r < nq; r++) {
        float *row = S + (size_t)r * nk;
        int n = first + r + 1; /* visible keys */
        float mx = row[0];
#pragma omp simd reduction(max : mx)
        for (int j = 1; j < n; j++) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) {
            float e = gq_cpu_expf(row[j] - mx);
            row[j] = e;
            sum += e;
        }
        for (int j = n; j < nk; j++) row[j] = 0.0f; /* causal mask */
        inv_sum[r] = 1.0f / sum;
    }
}

/* One (head h, query tile starting at i0 with nq rows) task. */
static void attn_task(const attn_args *a, int h, int i0, int nq, float *S, float *inv_sum, int parallel) {
    int kvh = h / a->group;
    int first = a->Tk - a->Tq + i0; /* absolute position of query i0 */
    int nk = first + nq;            /* keys visible to the tile's last query */
    const float *q = a->Q + (size_t)i0 * a->ldq + (size_t)h * a->hd;
    const float *k = a->K + (size_t)kvh * a->hd;
    const float *v = a->V + (size_t)kvh * a->hd;
    float *o = a->O + (size_t)i0 * a->ldo + (size_t)h * a->hd;
    /* S[nq][nk] = scale * q[nq][hd] k[nk][hd]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, a->hd, a->scale, q, a->ldq, k, a->ldk, 0.0f, S, nk);
    softmax_rows(S, nq, nk, first, inv_sum, parallel);
    /* o[nq][hd] = P[nq][nk] v[nk][hd] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, a->hd, nk, 1.0f, S, nk, v, a->ldv, 0.0f, o, a->ldo);
    for (int r = 0; r < nq; r++) {
        float *orow = o + (size_t)r * a->ldo;
        for (int c = 0; c < a->hd; c++) orow[c] *= inv_sum[r];
    }
}

int gq_cpu_attention(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk, const void *V,
                     int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim) {
    const gq_cpu_ctx *c = be->ctx;
    /* tile: bench_forward on 2 Zen 5 cores at T = 2048 was fastest with 64 rows for head_dim 64
     * (pycoder-5m: 179 GFLOP/s vs 175 at 128) and 128-256 for head_dim 128 (Llama-7B: 186 vs
     * 171 at 64), i.e. about head_dim rows */
    int tile = c->attn_tile > 0 ? c->attn_tile : head_dim < 32 ? 32 : head_dim > 256 ? 256 : head_dim;
    attn_args a = {.Q = Q, .K = K, .V = V, .O = O, .ldq = ldq, .ldk = ldk, .ldv = ldv, .ldo = ldo, .Tq = Tq,
                   .Tk = Tk, .n_heads = n_heads, .group = n_heads / n_kv, .hd = head_dim,
                   .tile = tile < Tq ? tile : Tq, .scale = (float)(1.0 / sqrt((double)head_dim))};
    int ntiles = (Tq + a.tile - 1) / a.tile;
    size_t scratch = (size_t)a.tile * (size_t)Tk; /* S [tile][Tk] */

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
    /* a decode step (Tq = 1) over a short cache is microseconds of work: no parallel region */
#pragma omp parallel if ((size_t)Tq * Tk * n_heads * head_dim >= 65536)
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

/* ---- NLL head ---------------------------------------------------------------------------- */

int gq_cpu_nll(gq_backend *be, const void *Xv, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
               double *nll_sum, int64_t *count, float *logits_out) {
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
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, vocab, d, 1.0f, X + (size_t)t0 * ldx, ldx, W, d,
                    0.0f, Lc, vocab);
#pragma omp parallel for schedule(static) if ((size_t)nr * vocab >= 32768)
        for (int r = 0; r < nr; r++) {
            int tg = targets[t0 + r];
            if (tg < 0) continue;
            const float *row = Lc + (size_t)r * vocab;
            float mx = row[0];
#pragma omp simd reduction(max : mx)
            for (int j = 1; j < vocab; j++) mx = row[j] > mx ? row[j] : mx;
            double sum = 0; /* log-sum-exp with the max subtracted, summed in double */
#pragma omp simd reduction(+ : sum)
            for (int j = 0; j < vocab; j++) sum += (double)gq_cpu_expf(row[j] - mx);
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
