/*
 * test_qlayer_chunk.c -- the quantizer's chunks (gq/qlayer.h): the token-wise stages run over
 * many calibration sequences at once, the Hessians summed per chunk instead of per sequence:
 * the same sums in another order. Models: pycoder-5m (bundled Llama) and the qwen3_moe (sparse,
 * dense, sparse layers) and mixtral fixtures (tests/data/families); calibration: 24 sequences
 * of 96 .. 256 tokens from the start of tests/data/text/python-stdlib-eval.txt (ragged, so
 * chunk borders fall anywhere), evaluation: 8 x 256 tokens from its end. Every layer through
 * gq_qlayer_run on the CPU with chunks of one sequence (gq_qlayer_set_chunk 1: the per-sequence
 * order), of ~600 tokens (several sequences) and one chunk of all 4144 tokens.
 *
 *   1. Hessians (the quantization by rounding to nearest, which does not read them, so every
 *      layer sees the same inputs in every run): every Hessian of every layer (q/k/v, o,
 *      gate/up and down; each expert's) with the same row count and equal up to summation
 *      order, and the same layer outputs; with --hessian-skip 5 too (the rows left out are runs
 *      inside a chunk), which must leave out exactly 5 rows of each sequence (x top_k for the
 *      experts).
 *   2. Streaming the activations through device windows of one chunk (GQ_STREAM_ACTIVATIONS=1)
 *      gives bitwise the resident run's Hessians, outputs and (GPTQ) codes.
 *   3. GPTQ int4 (g128 on pycoder, g32 on the fixtures): the first layer's q/k/v codes (same
 *      inputs, Hessians equal to ~1e-7) and the held-out NLL of the quantized model.
 *   4. --resume: every layer run again from its input with its quantized weights (res == NULL,
 *      as `gq quantize --resume` restores a layer) gives bitwise the quantizing run's output,
 *      for every chunk size (the same chunks, the same operations).
 *   5. The partition: ragged chunks, each at most the budget unless one sequence is longer.
 *   6. A non-finite value still named by calibration sample and token (a NaN in sample 5, which
 *      sits in the second chunk; non-finite router logits in a chunk).
 *   7. (GPU) MoE expert solves on several streams at once give bitwise the one-after-another run.
 * GQ_TEST_QUICK=1 (the sanitizer pass) leaves out pycoder-5m's GPTQ pass (about a third of the time).
 * GQ_TEST_DEVICE=cuda[:N]: the same on the GPU with --precision fp32 (fp32 activations and GEMMs,
 * the CPU's arithmetic in cuBLAS's order: the same bounds; skips without a GPU). Not fp16: there
 * a token whose two best experts are closer than fp16's rounding may take another expert in
 * another summation order (test_families: ROUTE16_GAP), which changes row counts legitimately.
 *
 * Bounds ("measured": OpenBLAS Haswell, 2 threads; every value prints as a note):
 *   HESS_TOL 1e-5, relative (Frobenius, upper triangle) per Hessian: fp32 sums of up to 4144
 *     products in another grouping differ by a few eps x sqrt(rows) relative, ~1e-7 .. 1e-6;
 *     measured <= 3.1e-7. One row left out or counted twice moves a Hessian by ~1 / rows
 *     (2.4e-4 for the dense ones, more for an expert's), 25x the bound and more; and the row
 *     counts must be equal.
 *   X_TOL 1e-5, relative: the last layer's outputs (the layers' GEMMs over chunks instead of
 *     sequences, another blocking; measured <= 6e-7).
 *   CODE_FRAC 1%: layer 0's q/k/v codes from Hessians equal to ~1e-7: a code flips only where
 *     GPTQ's running value lies that close to a rounding boundary (measured 0).
 *   NLL_TOL 0.05 nats: GPTQ is chaotic in its inputs: once one code of a row flips, the error
 *     feedback takes the rest of the row another way, and later layers see other inputs. With
 *     this small calibration (4144 tokens) the same code at 1 and 2 OpenBLAS threads (another
 *     summation order, nothing else) moved pycoder-5m's NLL by up to 0.02 (the README's figure
 *     for a full 128 x 2048 calibration is 0.2% of the perplexity); so this bound only says
 *     that the chunked run quantizes as well as the per-sequence one. Exactness is checked on
 *     the Hessians (1).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/backend.h"
#include "gq/dp.h"
#include "gq/graph.h"
#include "gq/knobs.h"
#include "gq/model.h"
#include "gq/qlayer.h"
#include "gq/tokenizer.h"
#include "test.h"

#define HESS_TOL 1e-5
#define X_TOL 1e-5
#define CODE_FRAC 0.01
#define NLL_TOL 0.05

#define NSEQ 24
#define NWIN 8
#define WLEN 256

typedef struct {
    int len[NSEQ];
    int32_t *seq[NSEQ];
    int32_t *win[NWIN]; /* evaluation windows of WLEN */
    gq_ids ids;
} data;

static int verbose(void) { return getenv("GQ_TEST_VERBOSE") != NULL; }

/* The first ~40 KB of text for calibration (ragged lengths 96 .. 256), the end for evaluation. */
static int load_data(data *d) {
    char *text;
    size_t n;
    gq_tokenizer *tok = NULL;
    memset(d, 0, sizeof *d);
    int rc = gq_read_file(gq_test_data("text/python-stdlib-eval.txt"), &text, &n);
    if (!rc) rc = gq_tok_load(&tok, gq_test_data("pycoder-5m"));
    size_t head = n < 60000 ? n / 2 : 40000, tail = n < 60000 ? n / 2 : 40000;
    gq_ids ev = {0};
    if (!rc) rc = gq_tok_encode(tok, text, head, 0, &d->ids);
    if (!rc) rc = gq_tok_encode(tok, text + n - tail, tail, 0, &ev);
    size_t need = 0;
    for (int i = 0; i < NSEQ; i++) need += (size_t)(d->len[i] = 96 + (i * 37) % 161);
    if (!rc && (d->ids.n < need || ev.n < (size_t)NWIN * WLEN))
        rc = gq_err(GQ_ERR_DATA, "test text: %zu / %zu tokens", d->ids.n, ev.n);
    size_t at = 0;
    for (int i = 0; i < NSEQ && !rc; i++) d->seq[i] = d->ids.v + at, at += (size_t)d->len[i];
    for (int w = 0; w < NWIN && !rc; w++) {
        d->win[w] = gq_malloc(sizeof(int32_t) * WLEN);
        memcpy(d->win[w], ev.v + (size_t)w * WLEN, sizeof(int32_t) * WLEN);
    }
    gq_ids_free(&ev);
    gq_tok_free(tok);
    free(text);
    return rc;
}

static void free_data(data *d) {
    for (int w = 0; w < NWIN; w++) free(d->win[w]);
    gq_ids_free(&d->ids);
}

/* One quantization: every layer's results, the chunks it ran in, the held-out NLL, the
 * Hessians in the order they were solved, the last layer's output. */
typedef struct {
    gq_backend *be;
    int L, cap, chunks, chunk_max;
    int *n;           /* [L] modules */
    gq_qresult *res;  /* [L][cap] */
    double nll;
    int resume_same;  /* layers whose restored run gave bitwise the quantizing run's output */
    int nH;
    float *H[1024];   /* [K][K] */
    int K[1024], layer[1024], grp[1024], expert[1024];
    int64_t rows[1024];
    float *x;         /* [n_tokens][hidden] the last layer's output */
    size_t nx;
} qrun;

static void qrun_free(qrun *r) {
    for (int i = 0; i < r->L * r->cap && r->res; i++) gq_qresult_free(&r->res[i]);
    for (int i = 0; i < r->nH; i++) free(r->H[i]);
    free(r->res), free(r->n), free(r->x);
    memset(r, 0, sizeof *r);
}

static void keep_hessian(void *user, int layer, gq_group g, int expert, const float *H, int K, int64_t rows) {
    qrun *r = user;
    if (r->nH >= 1024) return;
    int i = r->nH++;
    r->H[i] = gq_malloc(sizeof(float) * (size_t)K * K);
    TEST_OK(gq_be_download(r->be, r->H[i], H, sizeof(float) * (size_t)K * K), "Hessian download");
    r->K[i] = K, r->layer[i] = layer, r->grp[i] = (int)g, r->expert[i] = expert, r->rows[i] = rows;
}

static int xfer_all(gq_qlayer *q, float *buf, int up) {
    int rc = GQ_OK;
    for (int i = 0; i < q->n_seq && !rc; i++) {
        float *p = buf + (size_t)q->off[i] * q->cfg->hidden;
        rc = up ? gq_qlayer_set_x(q, i, p) : gq_qlayer_get_x(q, i, p);
    }
    return rc;
}

/* Mean NLL of the evaluation windows through the (dequantized) layers bl. */
static double eval_nll(const gq_model *m, gq_backend *be, gq_blayer *bl, const data *d) {
    const gq_config *c = &m->cfg;
    gq_fwd_scratch s;
    gq_bhead head;
    memset(&head, 0, sizeof head);
    float *h = gq_malloc(sizeof(float) * WLEN * c->hidden), *inv = gq_malloc(sizeof(float) * (size_t)c->rot_dim);
    int32_t tg[WLEN];
    void *x = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)WLEN * c->hidden));
    gq_rope_inv_freq(c, WLEN, inv);
    double sum = 0;
    int64_t cnt = 0;
    int rc = gq_fwd_scratch_init(be, c, WLEN, &s);
    if (!rc) rc = gq_bhead_load(be, m, &head);
    for (int w = 0; w < NWIN && !rc; w++) {
        rc = gq_model_embed(m, d->win[w], WLEN, h);
        if (!rc) rc = gq_be_upload_f32(be, x, h, (size_t)WLEN * c->hidden);
        for (int l = 0; l < c->n_layers && !rc; l++) rc = gq_fwd_layer(be, c, l, &bl[l], x, WLEN, inv, &s);
        for (int t = 0; t < WLEN; t++) tg[t] = t + 1 < WLEN ? d->win[w][t + 1] : -1;
        if (!rc) rc = gq_bhead_nll(be, c, &head, s.xn, x, c->hidden, WLEN, tg, &sum, &cnt, NULL);
    }
    TEST_OK(rc, "%s: evaluation forward", m->dir);
    gq_bhead_free(be, &head);
    gq_fwd_scratch_free(be, &s);
    gq_be_release(be, x);
    free(h), free(inv);
    return rc || !cnt ? NAN : sum / (double)cnt;
}

/* Quantize every layer of m with chunks of `chunk` tokens (1: one sequence each), hessian_skip
 * `skip`, streaming or not; each layer is also run again from its input with its quantized
 * weights (the --resume restore) and compared bitwise with the quantizing run's output. */
static int quantize(const gq_model *m, gq_backend *be, const data *d, const gq_gptq_params *p, int chunk, int skip,
                    int stream, qrun *r) {
    const gq_config *c = &m->cfg;
    memset(r, 0, sizeof *r);
    r->be = be;
    double t0 = gq_now();
    setenv("GQ_STREAM_ACTIVATIONS", stream ? "1" : "0", 1);
    gq_knobs_reload();
    gq_qlayer q;
    int rc = gq_qlayer_init(&q, be, c, NSEQ, d->len);
    TEST_OK(rc, "%s: gq_qlayer_init", m->dir);
    if (rc) return rc;
    TEST_CHECK(q.stream == stream, "%s: streaming %d as asked (%d)", m->dir, q.stream, stream);
    q.moe_min_tokens = 16;
    q.hessian_skip = skip;
    q.on_hessian = keep_hessian;
    q.on_hessian_user = r;
    rc = gq_qlayer_set_chunk(&q, chunk);
    r->L = c->n_layers, r->cap = gq_layer_module_cap(c), r->chunks = q.n_chunks, r->chunk_max = q.chunk_max;
    r->n = gq_calloc((size_t)r->L, sizeof *r->n);
    r->res = gq_calloc((size_t)r->L * r->cap, sizeof *r->res);
    size_t nx = (size_t)q.n_tokens * c->hidden;
    float *xin = gq_malloc(sizeof(float) * nx), *xout = gq_malloc(sizeof(float) * nx);
    float *xr = gq_malloc(sizeof(float) * nx);
    for (int i = 0; i < NSEQ && !rc; i++) {
        rc = gq_model_embed(m, d->seq[i], d->len[i], xin + (size_t)q.off[i] * c->hidden);
        if (!rc) rc = gq_qlayer_set_x(&q, i, xin + (size_t)q.off[i] * c->hidden);
    }
    gq_blayer *bl = gq_calloc((size_t)r->L, sizeof *bl);
    int loaded = 0;
    for (int l = 0; l < r->L && !rc; l++) {
        gq_module *mods = gq_malloc(sizeof *mods * (size_t)r->cap);
        r->n[l] = gq_layer_modules(c, 0, l, mods, r->cap);
        free(mods);
        rc = gq_blayer_load(be, m, l, &bl[l]);
        loaded += !rc;
        if (!rc) rc = xfer_all(&q, xin, 0);
        if (!rc) rc = gq_qlayer_run(&q, l, &bl[l], p, r->res + (size_t)l * r->cap);
        if (!rc) rc = xfer_all(&q, xout, 0);
        if (!rc) rc = xfer_all(&q, xin, 1); /* the restore: the input again, the quantized weights */
        if (!rc) rc = gq_qlayer_run(&q, l, &bl[l], p, NULL);
        if (!rc) rc = xfer_all(&q, xr, 0);
        if (!rc) r->resume_same += !memcmp(xr, xout, sizeof(float) * nx);
        if (!rc) rc = xfer_all(&q, xout, 1);
    }
    TEST_OK(rc, "%s: quantize (chunk %d, hessian_skip %d, stream %d)", m->dir, chunk, skip, stream);
    if (verbose())
        fprintf(stderr, "  | stages %.2f s (Hessians %.2f s), solves %.2f s\n", q.t_stages, q.t_hessian, q.t_solve);
    gq_qlayer_free(&q);
    r->nll = rc ? NAN : eval_nll(m, be, bl, d);
    for (int l = 0; l < loaded; l++) gq_blayer_free(be, &bl[l]);
    r->x = xout, r->nx = nx;
    free(bl), free(xin), free(xr);
    unsetenv("GQ_STREAM_ACTIVATIONS");
    gq_knobs_reload();
    if (verbose())
        fprintf(stderr, "  | %s %s chunk %d skip %d stream %d: %.2f s\n", m->cfg.arch,
                p->method == GQ_METHOD_RTN ? "RTN" : "GPTQ", chunk, skip, stream, gq_now() - t0);
    return rc;
}

/* ---- 8. several devices (gq/dp.h): the sequences split over ranks, the Hessians summed --------- */

#define DP_MAX 4

/* `ranks` ranks over the calibration sequences: backends of their own on the CPU, forks of be (the
 * same GPU, their own streams, fp32) on a GPU; the host transport; each rank's qlayer over its
 * share, chunks of 600, its rows embedded (sample nan_sample, if >= 0, gets a NaN at token 17,
 * column 3). */
typedef struct {
    int ranks, made;
    gq_backend *rb[DP_MAX];
    gq_dp *dp;
    gq_qlayer q[DP_MAX];
} dp_ranks;

static void dp_ranks_free(dp_ranks *R) {
    for (int k = 0; k < R->made; k++) gq_qlayer_free(&R->q[k]);
    gq_dp_free(R->dp);
    for (int k = 0; k < R->ranks; k++)
        if (R->rb[k]) gq_backend_free(R->rb[k]);
    memset(R, 0, sizeof *R);
}

static int dp_ranks_init(dp_ranks *R, const gq_model *m, gq_backend *be, const data *d, int ranks, int nan_sample,
                         gq_dp_transport t) {
    const gq_config *c = &m->cfg;
    int first[DP_MAX + 1], rc = GQ_OK;
    memset(R, 0, sizeof *R);
    R->ranks = ranks;
    for (int k = 0; k < ranks && !rc; k++) {
        rc = gq_backend_is_gpu(be) ? gq_backend_fork(be, &R->rb[k]) : gq_backend_init(&R->rb[k], "cpu");
        if (!rc && gq_backend_is_gpu(be)) rc = gq_backend_set_precision(R->rb[k], "fp32");
    }
    if (!rc) rc = gq_dp_init(&R->dp, R->rb, ranks, t);
    if (!rc) rc = gq_qlayer_shares(NSEQ, d->len, ranks, first);
    float *x = gq_malloc(sizeof(float) * 256 * (size_t)c->hidden);
    for (int k = 0; k < ranks && !rc; k++) {
        gq_qlayer *q = &R->q[k];
        if ((rc = gq_qlayer_init(q, R->rb[k], c, first[k + 1] - first[k], d->len + first[k]))) break;
        R->made++;
        q->dp = R->dp, q->rank = k, q->seq0 = first[k], q->n_seq_all = NSEQ;
        q->moe_min_tokens = 16;
        rc = gq_qlayer_set_chunk(q, 600);
        for (int i = 0; i < q->n_seq && !rc; i++) {
            rc = gq_model_embed(m, d->seq[first[k] + i], q->len[i], x);
            if (first[k] + i == nan_sample) x[17 * c->hidden + 3] = NAN;
            if (!rc) rc = gq_qlayer_set_x(q, i, x);
        }
    }
    free(x);
    TEST_OK(rc, "%s: %d ranks", m->dir, ranks);
    return rc;
}

typedef struct {
    const gq_model *m;
    const gq_gptq_params *p;
    dp_ranks *R;
    gq_blayer *bl[DP_MAX]; /* [L] each rank's layers (the dequantized weights after the run) */
    int loaded[DP_MAX];
    gq_qresult *res; /* [cap] the layer's modules, shared */
    int layer;
} dp_job;

/* One rank's layer, on its own thread: its copy of the weights, its share of the sequences. */
static int dp_layer(void *user, int rank) {
    dp_job *j = user;
    gq_qlayer *q = &j->R->q[rank];
    int rc = gq_blayer_load(q->be, j->m, j->layer, &j->bl[rank][j->layer]);
    j->loaded[rank] += !rc;
    if (!rc) rc = gq_qlayer_run(q, j->layer, &j->bl[rank][j->layer], j->p, j->res);
    return rc;
}

static void dp_job_free(dp_job *j) {
    for (int k = 0; k < j->R->made; k++) {
        for (int l = 0; l < j->loaded[k]; l++) gq_blayer_free(j->R->rb[k], &j->bl[k][l]);
        free(j->bl[k]);
    }
}

/* 8. quantize() over `ranks` ranks (every layer, no restore pass): the Hessians as rank 0 sums
 * them, the outputs gathered from the ranks, the NLL with rank 0's layers. */
static int quantize_dp(const gq_model *m, gq_backend *be, const data *d, const gq_gptq_params *p, int ranks,
                       gq_dp_transport t, qrun *r) {
    const gq_config *c = &m->cfg;
    dp_ranks R;
    memset(r, 0, sizeof *r);
    r->L = c->n_layers, r->cap = gq_layer_module_cap(c);
    r->n = gq_calloc((size_t)r->L, sizeof *r->n);
    r->res = gq_calloc((size_t)r->L * r->cap, sizeof *r->res);
    int rc = dp_ranks_init(&R, m, be, d, ranks, -1, t);
    dp_job j = {.m = m, .p = p, .R = &R};
    for (int k = 0; k < R.made; k++) {
        r->chunks += R.q[k].n_chunks;
        r->chunk_max = R.q[k].chunk_max > r->chunk_max ? R.q[k].chunk_max : r->chunk_max;
        j.bl[k] = gq_calloc((size_t)r->L, sizeof(gq_blayer));
    }
    r->be = R.rb[0];
    if (!rc) R.q[0].on_hessian = keep_hessian, R.q[0].on_hessian_user = r;
    for (int l = 0; l < r->L && !rc; l++) {
        gq_module *mods = gq_malloc(sizeof *mods * (size_t)r->cap);
        r->n[l] = gq_layer_modules(c, 0, l, mods, r->cap);
        free(mods);
        j.layer = l, j.res = r->res + (size_t)l * r->cap;
        rc = gq_dp_run(R.dp, dp_layer, &j);
    }
    TEST_OK(rc, "%s: quantize over %d ranks", m->dir, ranks);
    int64_t n_tok = 0, at = 0;
    for (int i = 0; i < NSEQ; i++) n_tok += d->len[i];
    float *x = gq_malloc(sizeof(float) * (size_t)n_tok * c->hidden);
    for (int k = 0; k < R.made && !rc; k++) /* the outputs, in the run's sequence order */
        for (int i = 0; i < R.q[k].n_seq && !rc; i++) {
            rc = gq_qlayer_get_x(&R.q[k], i, x + (size_t)at * c->hidden);
            at += R.q[k].len[i];
        }
    r->x = x, r->nx = (size_t)n_tok * c->hidden;
    r->nll = rc ? NAN : eval_nll(m, R.rb[0], j.bl[0], d);
    dp_job_free(&j);
    dp_ranks_free(&R);
    r->be = NULL;
    return rc;
}

/* Codes of layer 0's first `mods` modules that differ (fraction). */
static double code_diff(const qrun *a, const qrun *b, int mods) {
    size_t diff = 0, all = 0;
    for (int k = 0; k < mods && k < a->n[0]; k++) {
        const gq_qresult *x = &a->res[k], *y = &b->res[k];
        size_t nw = (size_t)x->rows * x->cols;
        if (x->rows != y->rows || x->cols != y->cols || !x->codes || !y->codes) return 1;
        for (size_t i = 0; i < nw; i++) diff += x->codes[i] != y->codes[i];
        all += nw;
    }
    return all ? (double)diff / (double)all : 1;
}

/* Every code of every module equal. */
static int codes_equal(const qrun *a, const qrun *b) {
    for (int i = 0; i < a->L * a->cap; i++) {
        const gq_qresult *x = &a->res[i], *y = &b->res[i];
        if (x->rows != y->rows || x->cols != y->cols) return 0;
        if (x->codes && memcmp(x->codes, y->codes, (size_t)x->rows * x->cols)) return 0;
    }
    return 1;
}

/* The largest relative (Frobenius, upper triangle) difference of b's Hessians from a's, and
 * how many differ in shape, place or row count. */
static double hess_diff(const qrun *a, const qrun *b, int *bad) {
    double worst = 0;
    *bad = a->nH != b->nH || a->nH == 0;
    for (int i = 0; i < a->nH && i < b->nH; i++) {
        if (a->K[i] != b->K[i] || a->layer[i] != b->layer[i] || a->grp[i] != b->grp[i] ||
            a->expert[i] != b->expert[i] || a->rows[i] != b->rows[i]) {
            if (verbose())
                fprintf(stderr, "  | Hessian %d: layer %d/%d group %d/%d expert %d/%d rows %lld/%lld\n", i, a->layer[i],
                        b->layer[i], a->grp[i], b->grp[i], a->expert[i], b->expert[i], (long long)a->rows[i],
                        (long long)b->rows[i]);
            (*bad)++;
            continue;
        }
        double num = 0, den = 0;
        int K = a->K[i];
        for (int r = 0; r < K; r++)
            for (int c = r; c < K; c++) {
                double x = a->H[i][(size_t)r * K + c], y = b->H[i][(size_t)r * K + c];
                num += (x - y) * (x - y), den += x * x;
            }
        double e = sqrt(num / (den > 0 ? den : 1));
        worst = e > worst || isnan(e) ? e : worst;
    }
    return worst;
}

static double x_diff(const qrun *a, const qrun *b) {
    double num = 0, den = 0;
    if (!a->x || !b->x || a->nx != b->nx) return INFINITY;
    for (size_t i = 0; i < a->nx; i++) {
        double e = (double)a->x[i] - b->x[i];
        num += e * e, den += (double)a->x[i] * a->x[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* 1 and 2: b's Hessians and outputs against the reference a's (exact: bitwise). */
static void compare_hess(const char *what, const qrun *a, const qrun *b, int exact) {
    int bad;
    double h = hess_diff(a, b, &bad), x = x_diff(a, b);
    fprintf(stderr, "note: %-48s chunks %2d/%2d (max %4d): %3d Hessians, max rel diff %.2e, %d unlike; output %.2e\n",
            what, a->chunks, b->chunks, b->chunk_max, a->nH, h, bad, x);
    TEST_CHECK(!bad, "%s: %d Hessians alike (rows, place), %d unlike", what, a->nH, bad);
    if (exact) {
        TEST_CHECK(h == 0 && x == 0, "%s: bitwise equal (Hessians %.2e, outputs %.2e)", what, h, x);
        return;
    }
    TEST_CHECK(h <= HESS_TOL, "%s: Hessians rel %.2e <= %.0e", what, h, HESS_TOL);
    TEST_CHECK(x <= X_TOL, "%s: outputs rel %.2e <= %.0e", what, x, X_TOL);
}

/* 3: GPTQ outputs of b against the reference a (exact: bitwise). */
static void compare_gptq(const char *what, const qrun *a, const qrun *b, int exact) {
    double frac = code_diff(a, b, 3), dnll = fabs(a->nll - b->nll);
    fprintf(stderr, "note: %-48s layer 0 q/k/v codes differ %.5f, NLL %.5f vs %.5f (|d| %.2e)\n", what, frac, a->nll,
            b->nll, dnll);
    if (exact) {
        TEST_CHECK(codes_equal(a, b) && a->nll == b->nll, "%s: bitwise equal codes and NLL", what);
        return;
    }
    TEST_CHECK(frac <= CODE_FRAC, "%s: layer 0 q/k/v codes differ %.5f <= %.2f", what, frac, CODE_FRAC);
    TEST_CHECK(dnll <= NLL_TOL, "%s: |dNLL| %.2e <= %.2f", what, dnll, NLL_TOL);
}

/* Rows of the Hessians of layer 0: the dense input's and the experts' together (x top_k). */
static void check_skip_rows(const char *what, const qrun *r, int64_t want_dense, int top_k) {
    int64_t dense = -1, experts = 0;
    for (int i = 0; i < r->nH; i++) {
        if (r->layer[i] != 0) continue;
        if (r->grp[i] == GQ_GRP_ATTN_IN) dense = r->rows[i];
        if (r->grp[i] == GQ_GRP_MLP_IN && r->expert[i] >= 0) experts += r->rows[i];
    }
    TEST_CHECK(dense == want_dense, "%s: layer 0's q/k/v Hessian summed %lld rows, want %lld", what, (long long)dense,
               (long long)want_dense);
    if (top_k > 0)
        TEST_CHECK(experts == want_dense * top_k, "%s: layer 0's experts summed %lld rows, want %lld", what,
                   (long long)experts, (long long)want_dense * top_k);
}

static void check_resume(const char *what, const qrun *r) {
    TEST_CHECK(r->resume_same == r->L, "%s: %d of %d layers restored bitwise", what, r->resume_same, r->L);
}

/* 8 (GPU): the NCCL transport with one rank (the one-GPU machine's check of it: an all-reduce and
 * broadcasts of one) gives bitwise the run alone. Skipped on the CPU and in builds without NCCL. */
static void check_nccl_one(const gq_model *m, gq_backend *be, const data *d, const gq_gptq_params *p, const qrun *alone,
                           int pass) {
    if (!gq_backend_is_gpu(be)) {
        if (!pass) TEST_SKIP("%s: NCCL with one rank: a GPU's", m->cfg.arch);
        return;
    }
    gq_backend *probe[1] = {be};
    gq_dp *dp = NULL;
    if (gq_dp_init(&dp, probe, 1, GQ_DP_NCCL) == GQ_ERR_UNSUPPORTED) {
        TEST_SKIP("%s: NCCL with one rank: %s", m->cfg.arch, gq_errmsg());
        return;
    }
    gq_dp_free(dp);
    qrun nr;
    char w[160];
    quantize_dp(m, be, d, p, 1, GQ_DP_NCCL, &nr);
    snprintf(w, sizeof w, "%s %s 1 rank (NCCL) vs alone", m->cfg.arch, pass ? "GPTQ" : "RTN");
    if (pass) compare_gptq(w, alone, &nr, 1);
    else compare_hess(w, alone, &nr, 1);
    qrun_free(&nr);
}

/* 1-4 on one model. */
/* 7. MoE expert solves on several GPU streams at once (GQ_SOLVE_THREADS, default 4; qlayer.c
 * solve_all) against one after another (1): each solve runs alone on its stream with the same
 * kernels, so every code of every module and the NLL are bitwise equal. On the CPU the solves
 * always run one after another (each uses every core): skipped there. */
static void check_solve_threads(const gq_model *m, gq_backend *be, const data *d, const gq_gptq_params *p,
                                const qrun *parallel) {
    if (!gq_backend_is_gpu(be)) {
        TEST_SKIP("%s: expert solves on several streams: a GPU's (the CPU solves one after another)", m->cfg.arch);
        return;
    }
    qrun one;
    setenv("GQ_SOLVE_THREADS", "1", 1);
    quantize(m, be, d, p, 600, 0, 0, &one);
    unsetenv("GQ_SOLVE_THREADS");
    gq_knobs_reload();
    TEST_CHECK(codes_equal(parallel, &one) && parallel->nll == one.nll,
               "%s GPTQ: expert solves 4 at once vs one after another: bitwise equal codes (every module) and NLL "
               "(%.6f vs %.6f)",
               m->cfg.arch, parallel->nll, one.nll);
    qrun_free(&one);
}

static void test_model(gq_backend *be, const data *d, const char *dir, int group) {
    gq_model m;
    TEST_BEGIN(dir);
    int rc = gq_model_open(&m, dir);
    TEST_OK(rc, "open %s", dir);
    if (rc) return;
    const char *arch = m.cfg.arch;
    int64_t n_tok = 0;
    for (int i = 0; i < NSEQ; i++) n_tok += d->len[i];
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.group_size = group;
    const int chunk[3] = {1, 600, 1 << 20};
    const char *cname[3] = {"per sequence", "chunks of 600", "one chunk"};
    char w[160];
    qrun r[4], g[4], s[2];
    memset(g, 0, sizeof g);
    const int quick = getenv("GQ_TEST_QUICK") != NULL;
    for (int pass = 0; pass < 2; pass++) { /* RTN: the Hessians; GPTQ */
        if (pass && quick && !m.cfg.n_experts) {
            TEST_SKIP("GQ_TEST_QUICK: %s's GPTQ pass (the fixtures' run the same code)", arch);
            break;
        }
        qrun *x = pass ? g : r;
        p.method = pass ? GQ_METHOD_GPTQ : GQ_METHOD_RTN;
        for (int k = 0; k < 3; k++) quantize(&m, be, d, &p, chunk[k], 0, 0, &x[k]);
        quantize(&m, be, d, &p, 600, 0, 1, &x[3]);
        TEST_CHECK(x[0].chunks == NSEQ && x[1].chunks > 1 && x[1].chunks < NSEQ && x[2].chunks == 1,
                   "%s: chunk counts %d / %d / %d", dir, x[0].chunks, x[1].chunks, x[2].chunks);
        for (int k = 1; k < 4; k++) {
            snprintf(w, sizeof w, "%s %s %s vs %s", arch, pass ? "GPTQ" : "RTN", k < 3 ? cname[k] : "streamed chunks",
                     k < 3 ? cname[0] : "resident");
            if (pass) compare_gptq(w, k < 3 ? &x[0] : &x[1], &x[k], k == 3);
            else compare_hess(w, k < 3 ? &x[0] : &x[1], &x[k], k == 3);
        }
        for (int k = 0; k < 4; k++) {
            snprintf(w, sizeof w, "%s %s %s: --resume", arch, pass ? "GPTQ" : "RTN", k < 3 ? cname[k] : "streamed");
            check_resume(w, &x[k]);
        }
        for (int ranks = 1; ranks <= 3; ranks += 2) { /* 8: one rank bitwise the run alone; three within the bounds */
            qrun dr;
            quantize_dp(&m, be, d, &p, ranks, GQ_DP_HOST, &dr);
            snprintf(w, sizeof w, "%s %s %d rank%s (host sums) vs alone", arch, pass ? "GPTQ" : "RTN", ranks,
                     ranks > 1 ? "s" : "");
            if (pass) compare_gptq(w, &x[1], &dr, ranks == 1);
            else compare_hess(w, &x[1], &dr, ranks == 1);
            qrun_free(&dr);
        }
        check_nccl_one(&m, be, d, &p, &x[1], pass);
        check_skip_rows(pass ? "GPTQ" : "RTN", &x[1], n_tok, m.cfg.layer_moe[0] ? m.cfg.top_k : 0);
        if (pass && m.cfg.n_experts) check_solve_threads(&m, be, d, &p, &x[1]);
    }
    p.method = GQ_METHOD_RTN; /* --hessian-skip 5 */
    quantize(&m, be, d, &p, 1, 5, 0, &s[0]);
    quantize(&m, be, d, &p, 600, 5, 0, &s[1]);
    snprintf(w, sizeof w, "%s RTN hessian_skip 5, chunks of 600 vs per seq", arch);
    compare_hess(w, &s[0], &s[1], 0);
    check_skip_rows("hessian_skip 5 per sequence", &s[0], n_tok - 5 * NSEQ, m.cfg.layer_moe[0] ? m.cfg.top_k : 0);
    check_skip_rows("hessian_skip 5 in chunks", &s[1], n_tok - 5 * NSEQ, m.cfg.layer_moe[0] ? m.cfg.top_k : 0);
    for (int k = 0; k < 4; k++) qrun_free(&r[k]), qrun_free(&g[k]); /* (zeroed when skipped) */
    qrun_free(&s[0]), qrun_free(&s[1]);
    gq_model_close(&m);
}

/* 6: a NaN in the calibration data, or non-finite router logits, named by sample and token. The
 * first: sample 5 (of the second chunk of 600) at token 17 of layer 0's input: the q/k/v solve
 * refuses the Hessian, and the checked re-run names it. The second: router row 0 NaN in the MoE
 * fixture: the first chunk's routing fails in stage C, named for its first sample, token 0. */
static void test_locate(gq_backend *be, const data *d) {
    TEST_BEGIN("locate");
    for (int moe = 0; moe < 2; moe++) {
        gq_model m;
        const char *dir = gq_test_data(moe ? "families/qwen3_moe" : "pycoder-5m");
        if (gq_model_open(&m, dir)) {
            TEST_CHECK(0, "open %s: %s", dir, gq_errmsg());
            continue;
        }
        const int hd = m.cfg.hidden;
        gq_qlayer q;
        gq_blayer bl;
        gq_gptq_params p;
        gq_gptq_params_default(&p);
        p.group_size = 32;
        int rc = gq_qlayer_init(&q, be, &m.cfg, NSEQ, d->len);
        if (!rc) rc = gq_qlayer_set_chunk(&q, 600);
        float *x = gq_malloc(sizeof(float) * 256 * (size_t)hd);
        for (int i = 0; i < NSEQ && !rc; i++) {
            rc = gq_model_embed(&m, d->seq[i], d->len[i], x);
            if (i == 5 && !moe) x[17 * hd + 3] = NAN;
            if (!rc) rc = gq_qlayer_set_x(&q, i, x);
        }
        if (!rc) rc = gq_blayer_load(be, &m, 0, &bl);
        TEST_OK(rc, "%s: set up", dir);
        int cap = gq_layer_module_cap(&m.cfg);
        gq_qresult *res = gq_calloc((size_t)cap, sizeof *res);
        if (!rc && moe) { /* router row 0 NaN (f32 weights on the CPU and with --precision fp32) */
            for (int j = 0; j < hd; j++) x[j] = NAN;
            TEST_CHECK(bl.router.dtype == GQ_DT_F32, "router weight f32");
            if (bl.router.dtype == GQ_DT_F32) rc = gq_be_upload(be, bl.router.data, x, sizeof(float) * (size_t)hd);
        }
        const char *want = moe ? "calibration sample 0: layer 0: non-finite router logits at token 0"
                               : "calibration sample 5: layer 0: non-finite activation at the layer input (NaN at "
                                 "token 17, column 3)";
        if (!rc) {
            TEST_FAILS(gq_qlayer_run(&q, 0, &bl, &p, res), GQ_ERR_NUMERIC, want);
            TEST_CHECK(q.n_chunks > 1 && q.chunk0[1] <= 5, "%s: sample 5 is in a later chunk (%d chunks)", dir,
                       q.n_chunks);
        }
        for (int k = 0; k < cap; k++) gq_qresult_free(&res[k]);
        free(res), free(x);
        if (!rc) gq_blayer_free(be, &bl);
        gq_qlayer_free(&q);
        gq_model_close(&m);
    }
}

/* 8 (errors): a NaN in calibration sample `at`, over 3 ranks: the q/k/v solve (rank 0's) refuses the
 * summed Hessian, every rank looks in its own share, and the one holding the sample names it, with
 * the run's sample number; the shares and device lists. */
static void test_dp_errors(gq_backend *be, const data *d) {
    TEST_BEGIN("several devices");
    int first[5], len[6] = {10, 10, 10, 10, 10, 1000};
    TEST_OK(gq_qlayer_shares(6, len, 3, first), "shares of 6 sequences");
    TEST_CHECK(first[0] == 0 && first[1] == 4 && first[2] == 5 && first[3] == 6,
               "shares of 10 x 5 + 1000 tokens for 3: %d %d %d %d (want 0 4 5 6: one each at least)", first[0],
               first[1], first[2], first[3]);
    TEST_OK(gq_qlayer_shares(NSEQ, d->len, 4, first), "shares of the calibration");
    int64_t tok[4] = {0}, total = 0;
    for (int r = 0; r < 4; r++)
        for (int i = first[r]; i < first[r + 1]; i++) tok[r] += d->len[i], total += d->len[i];
    int even = first[4] == NSEQ;
    for (int r = 0; r < 4; r++) even = even && tok[r] > 0 && labs((long)(tok[r] - total / 4)) <= 256;
    TEST_CHECK(even, "4 shares of %lld tokens within a sequence (256) of a quarter: %lld %lld %lld %lld",
               (long long)total, (long long)tok[0], (long long)tok[1], (long long)tok[2], (long long)tok[3]);
    TEST_FAILS(gq_qlayer_shares(2, len, 3, first), GQ_ERR_ARG, "3 devices for 2 calibration sequences");
    int dev[8];
    TEST_CHECK(gq_dp_parse_devices("cuda:0,2,3", 4, dev, 8) == 3 && dev[0] == 0 && dev[1] == 2 && dev[2] == 3,
               "cuda:0,2,3");
    TEST_CHECK(gq_dp_parse_devices("cuda:all", 4, dev, 8) == 4 && dev[3] == 3, "cuda:all of 4");
    TEST_CHECK(gq_dp_parse_devices("cuda:all", 1, dev, 8) == 1 && dev[0] == 0, "cuda:all of 1: cuda:0");
    TEST_FAILS(gq_dp_parse_devices("cuda:all", 0, dev, 8) < 0 ? gq_errcode() : GQ_OK, GQ_ERR_DEVICE, "no CUDA device");
    TEST_CHECK(gq_dp_parse_devices("cuda:1", 4, dev, 8) == 0 && gq_dp_parse_devices("cpu", 4, dev, 8) == 0,
               "cuda:1 and cpu: one device");
    TEST_FAILS(gq_dp_parse_devices("cuda:0,0", 4, dev, 8) < 0 ? gq_errcode() : GQ_OK, GQ_ERR_ARG, "named twice");
    TEST_FAILS(gq_dp_parse_devices("cuda:0,x", 4, dev, 8) < 0 ? gq_errcode() : GQ_OK, GQ_ERR_ARG, "expected cuda:N,M");
    TEST_FAILS(gq_dp_parse_devices("cuda:0,", 4, dev, 8) < 0 ? gq_errcode() : GQ_OK, GQ_ERR_ARG, "ends with");
    gq_model m;
    if (gq_model_open(&m, gq_test_data("pycoder-5m"))) {
        TEST_CHECK(0, "open pycoder-5m: %s", gq_errmsg());
        return;
    }
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    const int at[2] = {2, 21}; /* in rank 0's share, in rank 2's */
    for (int k = 0; k < 2; k++) {
        dp_ranks R;
        if (dp_ranks_init(&R, &m, be, d, 3, at[k], GQ_DP_HOST)) {
            dp_ranks_free(&R);
            continue;
        }
        TEST_CHECK(R.q[0].seq0 + R.q[0].n_seq > 2 && R.q[2].seq0 <= 21, "samples 2 and 21 in ranks 0 and 2 (%d, %d)",
                   R.q[1].seq0, R.q[2].seq0);
        int cap = gq_layer_module_cap(&m.cfg);
        gq_qresult *res = gq_calloc((size_t)cap, sizeof *res);
        dp_job j = {.m = &m, .p = &p, .R = &R, .res = res};
        for (int r = 0; r < 3; r++) j.bl[r] = gq_calloc(1, sizeof(gq_blayer));
        char want[160];
        snprintf(want, sizeof want,
                 "calibration sample %d: layer 0: non-finite activation at the layer input (NaN at token 17, column 3)",
                 at[k]);
        TEST_FAILS(gq_dp_run(R.dp, dp_layer, &j), GQ_ERR_NUMERIC, want);
        for (int i = 0; i < cap; i++) gq_qresult_free(&res[i]);
        free(res);
        dp_job_free(&j);
        dp_ranks_free(&R);
    }
    gq_model_close(&m);
}

/* 5: ragged chunks never above the budget but for a longer sequence. */
static void test_partition(gq_backend *be) {
    TEST_BEGIN("partition");
    gq_model m;
    int rc = gq_model_open(&m, gq_test_data("pycoder-5m"));
    TEST_OK(rc, "open pycoder-5m");
    if (rc) return;
    int len[7] = {100, 300, 50, 700, 10, 10, 400};
    gq_qlayer q;
    TEST_OK(gq_qlayer_init(&q, be, &m.cfg, 7, len), "init");
    TEST_OK(gq_qlayer_set_chunk(&q, 420), "set_chunk 420");
    /* {100, 300} {50} {700} {10, 10, 400} */
    int want[] = {0, 2, 3, 4, 7};
    int ok = q.n_chunks == 4 && q.chunk_max == 700;
    for (int c = 0; c <= 4 && ok; c++) ok = q.chunk0[c] == want[c];
    TEST_CHECK(ok, "chunks of 420 over 100 300 50 700 10 10 400: %d chunks, max %d", q.n_chunks, q.chunk_max);
    TEST_OK(gq_qlayer_set_chunk(&q, 0), "set_chunk 0");
    TEST_CHECK(q.n_chunks == 1 && q.chunk_tokens == q.chunk_auto,
               "the default budget holds all 1570 tokens (%d chunks)", q.n_chunks);
    gq_qlayer_free(&q);
    gq_model_close(&m);
}

int main(void) {
    gq_log_set_level(verbose() ? GQ_LOG_DEBUG : GQ_LOG_WARN);
    const char *env = getenv("GQ_TEST_DEVICE"), *device = env && *env ? env : "cpu";
    TEST_BEGIN("chunks");
    if (strcmp(device, "cpu") && strncmp(device, "cuda", 4)) {
        TEST_CHECK(0, "GQ_TEST_DEVICE=%s: expected cpu, cuda or cuda:N", device);
        return TEST_REPORT();
    }
    if (strcmp(device, "cpu") && !gq_backend_cuda_compiled()) {
        TEST_SKIP("GQ_TEST_DEVICE=%s: gq built without CUDA: skipped", device);
        return TEST_REPORT();
    }
    gq_backend *be = NULL;
    int rc = gq_backend_init(&be, device);
    if (rc == GQ_ERR_DEVICE && strstr(gq_errmsg(), "no CUDA device found")) {
        TEST_SKIP("GQ_TEST_DEVICE=%s: no GPU here (%s): skipped", device, gq_errmsg());
        return TEST_REPORT();
    }
    TEST_OK(rc, "backend %s", device);
    if (!rc && strcmp(device, "cpu")) TEST_OK(rc = gq_backend_set_precision(be, "fp32"), "precision fp32");
    if (rc) return TEST_REPORT();
    data d;
    rc = load_data(&d);
    TEST_OK(rc, "calibration and evaluation tokens");
    test_partition(be);
    if (!rc) test_locate(be, &d);
    if (!rc) test_dp_errors(be, &d);
    if (!rc) {
        char fam[2][512];
        snprintf(fam[0], sizeof fam[0], "%s", gq_test_data("families/qwen3_moe"));
        snprintf(fam[1], sizeof fam[1], "%s", gq_test_data("families/mixtral"));
        test_model(be, &d, gq_test_data("pycoder-5m"), 128);
        test_model(be, &d, fam[0], 32);
        test_model(be, &d, fam[1], 32);
    }
    free_data(&d);
    gq_backend_free(be);
    return TEST_REPORT();
}
