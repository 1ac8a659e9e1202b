/*
 * test_backend.c -- every op of the CPU backend against its scalar _ref
 * (gq/ref.h) on fresh random inputs, the GPTQ op against a direct
 * gq_gptq_quantize call, plus the backend registry.
 *
 * Each comparison is the relative error ||out - ref|| / ||ref|| over the
 * written elements. Outputs are poisoned with NaN before the op, so an
 * element the op forgets to write fails the check, and the columns beyond
 * the width of strided (ld > width) outputs must still hold the poison
 * afterwards (an op writing outside its block fails too).
 *
 * Tolerances (u = 2^-24 = 6e-8, the fp32 unit roundoff; the refs sum in
 * double, so the error measured is the backend's fp32 rounding):
 *   TOL_ELEM = 1e-6 for elementwise ops (rmsnorm, rope, swiglu, add): a few
 *     roundings per element (<= ~8u = 5e-7), plus the 2-ulp exp of swiglu.
 *   TOL_DOT = 1e-5 for ops built on fp32 dot products of length K <= 512
 *     (linear, hessian, attention, nll): blocked fp32 sums err by ~sqrt(K) u
 *     (1.4e-6 at K = 512) typically and stay far below K u = 3e-5; any
 *     indexing, masking or scaling bug gives errors of order 1.
 *
 * The family ops (gq_attn_opts, partial rotary, GeGLU, LayerNorm, per-head
 * RMSNorm, MoE gather / scatter-add, soft-capped NLL) use the same
 * tolerances: TOL_ELEM for head_rmsnorm, glu, act, rope_partial and
 * scatter_add (tanhf of GELU-tanh is within ~1 ulp); TOL_DOT for attention
 * with options, the decode step and the soft-capped NLL (tanhf of the cap
 * adds ~softcap * u absolute to a score, far below the dot product's error);
 *   TOL_NORM = 1e-5 for layernorm: the fp32 mean is rounded once, an error of
 *     <= u |mean| / sd relative to the normalised output (6e-7 at |mean| =
 *     10 sd, the test's worst case; measured 1.4e-7), and 1e-5 leaves room
 *     for |mean| up to ~100 sd as in torch's fp32 statistics.
 * Every option is also checked to matter in its test case: switched off, the
 * reference output moves by more than 100x the tolerance (CHANGE_MIN), so a
 * backend ignoring it fails; options that must not matter (a window >= T,
 * the default scale given explicitly) must leave the output bitwise unchanged.
 * Gather is compared bitwise (a copy).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "compute/cpu/backend_cpu.h" /* gq_cpu_expf */
#include "gq/knobs.h"
#include "gq/backend.h"
#include "gq/gptq.h"
#include "gq/ref.h"
#include "test.h"

#define TOL_ELEM 1e-6
#define TOL_DOT 1e-5
#define TOL_NORM 1e-5

/* ---- random data --------------------------------------------------------------------- */

#define rng_next test_rng_next
#define rng_unif test_rng_unif
#define rng_normal test_rng_normal
/* n floats ~ N(0, sd^2) */
static float *rand_vec(size_t n, float sd) {
    float *v = gq_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = sd * rng_normal();
    return v;
}
static float *nan_vec(size_t n) {
    float *v = gq_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = NAN;
    return v;
}

/* Relative error over a [rows][width] block with leading dimension ld. */
static double rel_err(const float *out, const float *ref, int rows, int width, int ld) {
    double num = 0, den = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < width; c++) {
            double o = out[(size_t)r * ld + c], e = ref[(size_t)r * ld + c];
            num += (o - e) * (o - e); /* NaN propagates: an unwritten element fails */
            den += e * e;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* 1 if every column c >= width of every row still holds NaN. */
static int pad_untouched(const float *out, int rows, int width, int ld) {
    for (int r = 0; r < rows; r++)
        for (int c = width; c < ld; c++)
            if (!isnan(out[(size_t)r * ld + c])) return 0;
    return 1;
}

/* A backend buffer holding n f32 values copied from host. */
static void *dev_from(gq_backend *be, const float *h, size_t n) {
    void *d = gq_be_alloc(be, gq_be_act_bytes(be, n));
    gq_be_upload_f32(be, d, h, n);
    return d;
}

/* ---- ops ----------------------------------------------------------------------------------- */

static void test_linear(gq_backend *be, int T, int in, int out, int ldx, int ldy, int with_bias, int accumulate) {
    float *X = rand_vec((size_t)T * ldx, 1.0f), *W = rand_vec((size_t)out * in, 0.1f);
    float *b = rand_vec((size_t)out, 1.0f);
    float *Y0 = nan_vec((size_t)T * ldy), *Yref = nan_vec((size_t)T * ldy);
    if (accumulate)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < out; j++) Y0[(size_t)t * ldy + j] = Yref[(size_t)t * ldy + j] = rng_normal();
    gq_bweight w, bw = {0};
    TEST_OK(gq_be_weight_upload(be, &w, W, out, in), "upload W");
    if (with_bias) TEST_OK(gq_be_weight_upload(be, &bw, b, 1, out), "upload bias");
    void *dX = dev_from(be, X, (size_t)T * ldx), *dY = dev_from(be, Y0, (size_t)T * ldy);
    TEST_OK(gq_be_linear(be, dY, ldy, dX, ldx, T, &w, with_bias ? &bw : NULL, accumulate), "linear");
    gq_be_download_f32(be, Y0, dY, (size_t)T * ldy);
    gq_linear_ref(Yref, ldy, X, ldx, T, W, out, in, with_bias ? b : NULL, accumulate);
    double e = rel_err(Y0, Yref, T, out, ldy);
    TEST_CHECK(e <= TOL_DOT, "linear T=%d in=%d out=%d ld=%d/%d bias=%d acc=%d: rel err %.3g > %g", T, in, out, ldx,
               ldy, with_bias, accumulate, e, TOL_DOT);
    TEST_CHECK(pad_untouched(Y0, T, out, ldy), "linear wrote beyond its %d output columns", out);
    gq_be_weight_free(be, &w);
    gq_be_weight_free(be, &bw);
    gq_be_release(be, dX);
    gq_be_release(be, dY);
    free(X), free(W), free(b), free(Y0), free(Yref);
}

static void test_rmsnorm(gq_backend *be, int T, int d, int ldx, int ldy) {
    float *X = rand_vec((size_t)T * ldx, 3.0f), *g = rand_vec((size_t)d, 1.0f);
    float *Y = nan_vec((size_t)T * ldy), *Yref = nan_vec((size_t)T * ldy);
    gq_bweight w;
    TEST_OK(gq_be_weight_upload(be, &w, g, 1, d), "upload norm weight");
    void *dX = dev_from(be, X, (size_t)T * ldx), *dY = dev_from(be, Y, (size_t)T * ldy);
    TEST_OK(gq_be_rmsnorm(be, dY, ldy, dX, ldx, T, d, &w, 1e-5f), "rmsnorm");
    gq_be_download_f32(be, Y, dY, (size_t)T * ldy);
    gq_rmsnorm_ref(Yref, ldy, X, ldx, T, d, g, 1e-5f);
    double e = rel_err(Y, Yref, T, d, ldy);
    TEST_CHECK(e <= TOL_ELEM, "rmsnorm T=%d d=%d: rel err %.3g > %g", T, d, e, TOL_ELEM);
    TEST_CHECK(pad_untouched(Y, T, d, ldy), "rmsnorm wrote beyond its %d columns", d);
    gq_be_weight_free(be, &w);
    gq_be_release(be, dX);
    gq_be_release(be, dY);
    free(X), free(g), free(Y), free(Yref);
}

static void test_rope(gq_backend *be, int T, int n_heads, int hd, int ld, int pos0) {
    float *X = rand_vec((size_t)T * ld, 1.0f), *Xref = gq_malloc(sizeof(float) * (size_t)T * ld);
    float *inv = gq_malloc(sizeof(float) * (size_t)(hd / 2));
    for (int i = 0; i < hd / 2; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)hd);
    for (int t = 0; t < T; t++) /* poison the columns that do not belong to the heads */
        for (int c = n_heads * hd; c < ld; c++) X[(size_t)t * ld + c] = NAN;
    memcpy(Xref, X, sizeof(float) * (size_t)T * ld);
    void *dX = dev_from(be, X, (size_t)T * ld);
    TEST_OK(gq_be_rope(be, dX, ld, T, n_heads, hd, pos0, inv), "rope");
    gq_be_download_f32(be, X, dX, (size_t)T * ld);
    gq_rope_ref(Xref, ld, T, n_heads, hd, pos0, inv);
    double e = rel_err(X, Xref, T, n_heads * hd, ld);
    /* angles up to (pos0 + T) rad: cosf/sinf are within an ulp of the double
     * values for any argument, so the elementwise tolerance holds */
    TEST_CHECK(e <= TOL_ELEM, "rope T=%d heads=%d hd=%d pos0=%d: rel err %.3g > %g", T, n_heads, hd, pos0, e,
               TOL_ELEM);
    TEST_CHECK(pad_untouched(X, T, n_heads * hd, ld), "rope touched columns beyond its heads");
    gq_be_release(be, dX);
    free(X), free(Xref), free(inv);
}

static void test_attention(gq_backend *be, const char *mode, int Tq, int Tk, int nh, int nkv, int hd, int pad) {
    int ldq = nh * hd + pad, ldk = nkv * hd + 2 * pad, ldv = nkv * hd + 3 * pad, ldo = nh * hd + pad;
    /* q, k of sd 1.5: scores q.k / sqrt(hd) ~ N(0, 5), peaked softmaxes as in trained models */
    float *Q = rand_vec((size_t)Tq * ldq, 1.5f), *K = rand_vec((size_t)Tk * ldk, 1.5f);
    float *V = rand_vec((size_t)Tk * ldv, 1.0f);
    float *O = nan_vec((size_t)Tq * ldo), *Oref = nan_vec((size_t)Tq * ldo);
    void *dQ = dev_from(be, Q, (size_t)Tq * ldq), *dK = dev_from(be, K, (size_t)Tk * ldk);
    void *dV = dev_from(be, V, (size_t)Tk * ldv), *dO = dev_from(be, O, (size_t)Tq * ldo);
    TEST_OK(gq_be_attention(be, dO, ldo, dQ, ldq, dK, ldk, dV, ldv, Tq, Tk, nh, nkv, hd), "attention");
    gq_be_download_f32(be, O, dO, (size_t)Tq * ldo);
    gq_attention_ref(Oref, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, nh, nkv, hd);
    double e = rel_err(O, Oref, Tq, nh * hd, ldo);
    TEST_CHECK(e <= TOL_DOT, "attention [%s] Tq=%d Tk=%d heads=%d/%d hd=%d pad=%d: rel err %.3g > %g", mode, Tq, Tk,
               nh, nkv, hd, pad, e, TOL_DOT);
    TEST_CHECK(pad_untouched(O, Tq, nh * hd, ldo), "attention wrote beyond its %d output columns", nh * hd);
    gq_be_release(be, dQ), gq_be_release(be, dK), gq_be_release(be, dV), gq_be_release(be, dO);
    free(Q), free(K), free(V), free(O), free(Oref);
}

static void test_swiglu(gq_backend *be, int T, int I, int lda, int ldgu) {
    float *GU = rand_vec((size_t)T * ldgu, 3.0f);
    GU[0] = -100.0f; /* silu of a large negative gate: exp(100) must not turn it into NaN */
    GU[1] = 100.0f;
    float *A = nan_vec((size_t)T * lda), *Aref = nan_vec((size_t)T * lda);
    void *dGU = dev_from(be, GU, (size_t)T * ldgu), *dA = dev_from(be, A, (size_t)T * lda);
    TEST_OK(gq_be_swiglu(be, dA, lda, dGU, ldgu, T, I), "swiglu");
    gq_be_download_f32(be, A, dA, (size_t)T * lda);
    gq_swiglu_ref(Aref, lda, GU, ldgu, T, I);
    double e = rel_err(A, Aref, T, I, lda);
    TEST_CHECK(e <= TOL_ELEM, "swiglu T=%d I=%d: rel err %.3g > %g", T, I, e, TOL_ELEM);
    TEST_CHECK(pad_untouched(A, T, I, lda), "swiglu wrote beyond its %d columns", I);
    gq_be_release(be, dGU), gq_be_release(be, dA);
    free(GU), free(A), free(Aref);
}

static void test_add(gq_backend *be, int T, int d, int ldy, int ldx) {
    float *X = rand_vec((size_t)T * ldx, 1.0f), *Y = rand_vec((size_t)T * ldy, 1.0f);
    float *Yref = gq_malloc(sizeof(float) * (size_t)T * ldy);
    for (int t = 0; t < T; t++)
        for (int c = d; c < ldy; c++) Y[(size_t)t * ldy + c] = NAN;
    for (size_t i = 0; i < (size_t)T * ldy; i++) Yref[i] = Y[i];
    for (int t = 0; t < T; t++)
        for (int c = 0; c < d; c++) Yref[(size_t)t * ldy + c] += X[(size_t)t * ldx + c];
    void *dX = dev_from(be, X, (size_t)T * ldx), *dY = dev_from(be, Y, (size_t)T * ldy);
    TEST_OK(gq_be_add(be, dY, ldy, dX, ldx, T, d), "add");
    gq_be_download_f32(be, Y, dY, (size_t)T * ldy);
    double e = rel_err(Y, Yref, T, d, ldy);
    TEST_CHECK(e <= TOL_ELEM, "add T=%d d=%d: rel err %.3g > %g", T, d, e, TOL_ELEM);
    TEST_CHECK(pad_untouched(Y, T, d, ldy), "add wrote beyond its %d columns", d);
    gq_be_release(be, dX), gq_be_release(be, dY);
    free(X), free(Y), free(Yref);
}

static void test_hessian(gq_backend *be, int T, int K, int ldx) {
    float *X = rand_vec((size_t)T * ldx, 1.0f);
    float *H = rand_vec((size_t)K * K, 10.0f), *Href = gq_malloc(sizeof(float) * (size_t)K * K);
    for (int i = 0; i < K; i++) /* a symmetric start, as accumulation over batches has */
        for (int j = 0; j < i; j++) H[(size_t)i * K + j] = H[(size_t)j * K + i];
    memcpy(Href, H, sizeof(float) * (size_t)K * K);
    void *dX = dev_from(be, X, (size_t)T * ldx);
    TEST_OK(gq_be_hessian_accum(be, H, dX, ldx, T, K), "hessian_accum 1");
    TEST_OK(gq_be_hessian_accum(be, H, dX, ldx, T, K), "hessian_accum 2");
    gq_hessian_ref(Href, X, ldx, T, K);
    gq_hessian_ref(Href, X, ldx, T, K);
    double num = 0, den = 0; /* the upper triangle j >= i is the contract */
    for (int i = 0; i < K; i++)
        for (int j = i; j < K; j++) {
            double d = (double)H[(size_t)i * K + j] - Href[(size_t)i * K + j];
            num += d * d;
            den += (double)Href[(size_t)i * K + j] * Href[(size_t)i * K + j];
        }
    double e = sqrt(num / den);
    TEST_CHECK(e <= TOL_DOT, "hessian_accum T=%d K=%d: rel err %.3g > %g", T, K, e, TOL_DOT);
    gq_be_release(be, dX);
    free(X), free(H), free(Href);
}

static void test_nll(gq_backend *be, int T, int d, int vocab, int ldx) {
    float *X = rand_vec((size_t)T * ldx, 1.0f), *W = rand_vec((size_t)vocab * d, 0.3f);
    int32_t *tg = gq_malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) tg[t] = t % 7 == 3 ? -1 : (int32_t)(rng_next() % (uint64_t)vocab);
    gq_bweight w;
    TEST_OK(gq_be_weight_upload(be, &w, W, vocab, d), "upload lm head");
    void *dX = dev_from(be, X, (size_t)T * ldx);
    double s = 0, sref = 0;
    int64_t n = 0, nref = 0;
    float *logits = nan_vec((size_t)T * vocab), *lref = nan_vec((size_t)T * vocab);
    TEST_OK(gq_be_nll(be, dX, ldx, T, &w, tg, &s, &n, NULL), "nll");
    gq_nll_ref(X, ldx, T, d, W, vocab, tg, &sref, &nref);
    TEST_CHECK(n == nref, "nll count %lld, expected %lld", (long long)n, (long long)nref);
    /* mean NLL ~ log(vocab) + O(1); the sum is of n fp32 log-sum-exps */
    TEST_NEAR(s / n, sref / nref, TOL_DOT * fabs(sref / nref), "nll mean T=%d vocab=%d (rel tol %g)", T, vocab,
              TOL_DOT);
    s = 0, n = 0;
    TEST_OK(gq_be_nll(be, dX, ldx, T, &w, tg, &s, &n, logits), "nll with logits");
    TEST_NEAR(s / n, sref / nref, TOL_DOT * fabs(sref / nref), "nll mean with logits_out");
    gq_linear_ref(lref, vocab, X, ldx, T, W, vocab, d, NULL, 0);
    double e = rel_err(logits, lref, T, vocab, vocab);
    TEST_CHECK(e <= TOL_DOT, "nll logits_out: rel err %.3g > %g", e, TOL_DOT);
    gq_be_weight_free(be, &w);
    gq_be_release(be, dX);
    free(X), free(W), free(tg), free(logits), free(lref);
}

/* The GPTQ op is a wrapper: mirror the upper triangle of H, scale it, call
 * gq_gptq_quantize. Compared with that call made directly on the same
 * (symmetric, scaled) H: the same code on the same inputs, so the results
 * must be identical (tolerance 0). The op's H has NaN below the diagonal:
 * reading it would poison every result. */
static void test_gptq_op(gq_backend *be, int act_order) {
    int rows = 24, cols = 64, T = 300;
    double h_scale = 2.0 / T;
    float *W = rand_vec((size_t)rows * cols, 0.05f), *X = rand_vec((size_t)T * cols, 1.0f);
    for (int t = 0; t < T; t++) X[(size_t)t * cols + 5] = 0.0f; /* a dead input column */
    float *H = gq_calloc((size_t)cols * cols, sizeof(float)), *Href = gq_malloc(sizeof(float) * (size_t)cols * cols);
    void *dX = dev_from(be, X, (size_t)T * cols);
    TEST_OK(gq_be_hessian_accum(be, H, dX, cols, T, cols), "hessian for gptq");
    for (int i = 0; i < cols; i++)
        for (int j = 0; j < cols; j++) {
            float u = H[(size_t)(i < j ? i : j) * cols + (i < j ? j : i)]; /* upper triangle */
            Href[(size_t)i * cols + j] = u * (float)h_scale;
            if (j < i) H[(size_t)i * cols + j] = NAN;
        }
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.group_size = 32;
    p.act_order = act_order;
    gq_qresult res, ref;
    float *Wref = gq_malloc(sizeof(float) * (size_t)rows * cols);
    memcpy(Wref, W, sizeof(float) * (size_t)rows * cols);
    TEST_OK(gq_gptq_quantize(&p, Wref, rows, cols, Href, &ref), "direct gq_gptq_quantize");
    gq_bweight w;
    TEST_OK(gq_be_weight_upload(be, &w, W, rows, cols), "upload W for gptq");
    memset(&res, 0, sizeof res);
    TEST_OK(gq_be_gptq(be, &p, H, h_scale, &w, &res), "gq_be_gptq (act_order %d)", act_order);
    float *Wout = gq_malloc(sizeof(float) * (size_t)rows * cols);
    gq_be_download(be, Wout, w.data, sizeof(float) * (size_t)rows * cols);
    TEST_CHECK(res.codes && memcmp(res.codes, ref.codes, (size_t)rows * cols) == 0, "gptq op codes identical");
    TEST_CHECK(memcmp(Wout, Wref, sizeof(float) * (size_t)rows * cols) == 0, "gptq op dequantized W identical");
    TEST_CHECK(res.loss == ref.loss && isfinite(res.loss) && res.loss > 0, "gptq op loss %g vs %g", res.loss, ref.loss);
    TEST_CHECK(res.n_dead == 1, "gptq op saw the dead column (n_dead %d)", res.n_dead);
    gq_qresult_free(&res);
    gq_qresult_free(&ref);
    gq_be_weight_free(be, &w);
    gq_be_release(be, dX);
    free(W), free(X), free(H), free(Href), free(Wref), free(Wout);
}

/* ---- family ops ------------------------------------------------------------------------- */

/* How far a reference output moves when an option is switched off: a case asserted to
 * "change" the result moves it by more than 100x the op's tolerance, so a backend ignoring the
 * option fails the comparison. */
#define CHANGE_MIN(tol) (100.0 * (tol))

static void test_layernorm(gq_backend *be, int T, int d, int ldx, int ldy, int with_bias, float mean) {
    float *X = rand_vec((size_t)T * ldx, 3.0f), *g = rand_vec((size_t)d, 1.0f), *b = rand_vec((size_t)d, 1.0f);
    for (size_t i = 0; i < (size_t)T * ldx; i++) X[i] += mean;
    float *Y = nan_vec((size_t)T * ldy), *Yref = nan_vec((size_t)T * ldy);
    gq_bweight w, bw = {0};
    TEST_OK(gq_be_weight_upload(be, &w, g, 1, d), "upload layernorm weight");
    if (with_bias) TEST_OK(gq_be_weight_upload(be, &bw, b, 1, d), "upload layernorm bias");
    void *dX = dev_from(be, X, (size_t)T * ldx), *dY = dev_from(be, Y, (size_t)T * ldy);
    TEST_OK(gq_be_layernorm(be, dY, ldy, dX, ldx, T, d, &w, with_bias ? &bw : NULL, 1e-5f), "layernorm");
    gq_be_download_f32(be, Y, dY, (size_t)T * ldy);
    gq_layernorm_ref(Yref, ldy, X, ldx, T, d, g, with_bias ? b : NULL, 1e-5f);
    double e = rel_err(Y, Yref, T, d, ldy);
    TEST_CHECK(e <= TOL_NORM, "layernorm T=%d d=%d bias=%d mean=%g: rel err %.3g > %g", T, d, with_bias,
               (double)mean, e, TOL_NORM);
    TEST_CHECK(pad_untouched(Y, T, d, ldy), "layernorm wrote beyond its %d columns", d);
    gq_be_weight_free(be, &w);
    gq_be_weight_free(be, &bw);
    gq_be_release(be, dX), gq_be_release(be, dY);
    free(X), free(g), free(b), free(Y), free(Yref);
}

/* head_rmsnorm in place on X[T][ld] against the ref, and bitwise against gq_be_rmsnorm run on
 * each head's [T][hd] block (stride ld): the same arithmetic per head. */
static void test_head_rmsnorm(gq_backend *be, int T, int nh, int hd, int ld) {
    size_t n = (size_t)T * ld;
    float *X = rand_vec(n, 2.0f), *g = rand_vec((size_t)hd, 1.0f);
    for (int t = 0; t < T; t++)
        for (int c = nh * hd; c < ld; c++) X[(size_t)t * ld + c] = NAN;
    float *Xref = gq_malloc(n * sizeof(float)), *Xrow = gq_malloc(n * sizeof(float));
    memcpy(Xref, X, n * sizeof(float));
    gq_bweight w;
    TEST_OK(gq_be_weight_upload(be, &w, g, 1, hd), "upload head norm weight");
    void *dX = dev_from(be, X, n), *dR = dev_from(be, X, n);
    TEST_OK(gq_be_head_rmsnorm(be, dX, ld, T, nh, hd, &w, 1e-6f), "head_rmsnorm");
    gq_be_download_f32(be, X, dX, n);
    gq_head_rmsnorm_ref(Xref, ld, T, nh, hd, g, 1e-6f);
    double e = rel_err(X, Xref, T, nh * hd, ld);
    TEST_CHECK(e <= TOL_ELEM, "head_rmsnorm T=%d heads=%d hd=%d ld=%d: rel err %.3g > %g", T, nh, hd, ld, e, TOL_ELEM);
    TEST_CHECK(pad_untouched(X, T, nh * hd, ld), "head_rmsnorm touched columns beyond its heads");
    for (int h = 0; h < nh; h++) {
        char *p = (char *)dR + gq_be_act_bytes(be, (size_t)h * hd);
        TEST_OK(gq_be_rmsnorm(be, p, ld, p, ld, T, hd, &w, 1e-6f), "rmsnorm of head %d", h);
    }
    gq_be_download_f32(be, Xrow, dR, n);
    TEST_CHECK(memcmp(X, Xrow, n * sizeof(float)) == 0, "head_rmsnorm hd=%d is bitwise rmsnorm per head", hd);
    gq_be_weight_free(be, &w);
    gq_be_release(be, dX), gq_be_release(be, dR);
    free(X), free(g), free(Xref), free(Xrow);
}

/* glu against the ref; SiLU also bitwise against gq_be_swiglu. GELU-tanh: tanhf is within
 * ~1 ulp, so the elementwise tolerance holds. */
static void test_glu(gq_backend *be, int T, int I, int lda, int ldgu, gq_act_kind act) {
    float *GU = rand_vec((size_t)T * ldgu, 3.0f);
    GU[0] = -100.0f; /* saturated gates: no NaN from exp / tanh overflow */
    GU[1] = 100.0f;
    float *A = nan_vec((size_t)T * lda), *Aref = nan_vec((size_t)T * lda), *Asw = nan_vec((size_t)T * lda);
    void *dGU = dev_from(be, GU, (size_t)T * ldgu), *dA = dev_from(be, A, (size_t)T * lda);
    void *dS = dev_from(be, A, (size_t)T * lda);
    TEST_OK(gq_be_glu(be, dA, lda, dGU, ldgu, T, I, act), "glu act %d", (int)act);
    gq_be_download_f32(be, A, dA, (size_t)T * lda);
    gq_glu_ref(Aref, lda, GU, ldgu, T, I, (int)act);
    double e = rel_err(A, Aref, T, I, lda);
    TEST_CHECK(e <= TOL_ELEM, "glu act=%d T=%d I=%d: rel err %.3g > %g", (int)act, T, I, e, TOL_ELEM);
    TEST_CHECK(pad_untouched(A, T, I, lda), "glu wrote beyond its %d columns", I);
    if (act == GQ_ACT_SILU) {
        TEST_OK(gq_be_swiglu(be, dS, lda, dGU, ldgu, T, I), "swiglu");
        gq_be_download_f32(be, Asw, dS, (size_t)T * lda);
        TEST_CHECK(memcmp(A, Asw, sizeof(float) * (size_t)T * lda) == 0, "glu SiLU is bitwise swiglu (T=%d I=%d)", T,
                   I);
    } else { /* the other activation really is another function here */
        gq_glu_ref(Asw, lda, GU, ldgu, T, I, GQ_ACT_SILU);
        double d = rel_err(Asw, Aref, T, I, lda);
        TEST_CHECK(d > CHANGE_MIN(TOL_ELEM), "GeGLU differs from SwiGLU only by %.3g", d);
    }
    gq_be_release(be, dGU), gq_be_release(be, dA), gq_be_release(be, dS);
    free(GU), free(A), free(Aref), free(Asw);
}

static void test_act(gq_backend *be, int T, int n, int ld, gq_act_kind act) {
    size_t sz = (size_t)T * ld;
    float *X = rand_vec(sz, 3.0f), *Xref = gq_malloc(sz * sizeof(float));
    X[0] = -100.0f;
    for (int t = 0; t < T; t++)
        for (int c = n; c < ld; c++) X[(size_t)t * ld + c] = NAN;
    memcpy(Xref, X, sz * sizeof(float));
    void *dX = dev_from(be, X, sz);
    TEST_OK(gq_be_act(be, dX, ld, T, n, act), "act %d", (int)act);
    gq_be_download_f32(be, X, dX, sz);
    gq_act_ref(Xref, ld, T, n, (int)act);
    double e = rel_err(X, Xref, T, n, ld);
    TEST_CHECK(e <= TOL_ELEM, "act=%d T=%d n=%d ld=%d: rel err %.3g > %g", (int)act, T, n, ld, e, TOL_ELEM);
    TEST_CHECK(pad_untouched(X, T, n, ld), "act touched columns beyond its %d", n);
    gq_be_release(be, dX);
    free(X), free(Xref);
}

/* Partial rotary on the first rot of hd dims: against the ref; dims rot.. bitwise unchanged;
 * rot == hd: bitwise gq_be_rope. */
static void test_rope_partial(gq_backend *be, int T, int nh, int hd, int rot, int ld, int pos0) {
    size_t sz = (size_t)T * ld;
    float *X = rand_vec(sz, 1.0f), *Xref = gq_malloc(sz * sizeof(float)), *X0 = gq_malloc(sz * sizeof(float));
    float *inv = gq_malloc(sizeof(float) * (size_t)(rot / 2));
    for (int i = 0; i < rot / 2; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)rot);
    for (int t = 0; t < T; t++)
        for (int c = nh * hd; c < ld; c++) X[(size_t)t * ld + c] = NAN;
    memcpy(Xref, X, sz * sizeof(float));
    memcpy(X0, X, sz * sizeof(float));
    void *dX = dev_from(be, X, sz), *dF = dev_from(be, X, sz);
    TEST_OK(gq_be_rope_partial(be, dX, ld, T, nh, hd, rot, pos0, inv), "rope_partial");
    gq_be_download_f32(be, X, dX, sz);
    gq_rope_partial_ref(Xref, ld, T, nh, hd, rot, pos0, inv);
    double e = rel_err(X, Xref, T, nh * hd, ld);
    TEST_CHECK(e <= TOL_ELEM, "rope_partial T=%d heads=%d hd=%d rot=%d pos0=%d: rel err %.3g > %g", T, nh, hd, rot,
               pos0, e, TOL_ELEM);
    TEST_CHECK(pad_untouched(X, T, nh * hd, ld), "rope_partial touched columns beyond its heads");
    int kept = 1, moved = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++)
            for (int c = 0; c < hd; c++) {
                size_t at = (size_t)t * ld + (size_t)h * hd + c;
                if (c >= rot) kept &= memcmp(&X[at], &X0[at], sizeof(float)) == 0;
                else moved += X[at] != X0[at];
            }
    TEST_CHECK(kept, "rope_partial rot=%d of hd=%d left the pass-through dims unchanged", rot, hd);
    TEST_CHECK(moved > 0, "rope_partial rot=%d rotated something (positions %d..%d)", rot, pos0, pos0 + T - 1);
    if (rot == hd) {
        TEST_OK(gq_be_rope(be, dF, ld, T, nh, hd, pos0, inv), "rope");
        gq_be_download_f32(be, X0, dF, sz);
        TEST_CHECK(memcmp(X, X0, sz * sizeof(float)) == 0, "rope_partial with rot = hd is bitwise gq_be_rope");
    }
    gq_be_release(be, dX), gq_be_release(be, dF);
    free(X), free(Xref), free(X0), free(inv);
}

/* Attention with options o against gq_attention_ex_ref. changes: 1 = the options must move the
 * reference output by more than CHANGE_MIN(TOL_DOT) from plain attention (so the case tests
 * them); 0 = they must not change the backend's output at all (window >= Tk, or the default
 * scale given explicitly): bitwise plain gq_be_attention; -1 = no such claim. */
static void test_attention_ex(gq_backend *be, const char *mode, int Tq, int Tk, int nh, int nkv, int hd, int pad,
                              gq_attn_opts o, int changes) {
    int ldq = nh * hd + pad, ldk = nkv * hd + 2 * pad, ldv = nkv * hd + 3 * pad, ldo = nh * hd + pad;
    size_t no = (size_t)Tq * ldo;
    float *Q = rand_vec((size_t)Tq * ldq, 1.5f), *K = rand_vec((size_t)Tk * ldk, 1.5f);
    float *V = rand_vec((size_t)Tk * ldv, 1.0f);
    float *O = nan_vec(no), *Oref = nan_vec(no), *Oplain = nan_vec(no);
    void *dQ = dev_from(be, Q, (size_t)Tq * ldq), *dK = dev_from(be, K, (size_t)Tk * ldk);
    void *dV = dev_from(be, V, (size_t)Tk * ldv), *dO = dev_from(be, O, no);
    TEST_OK(gq_be_attention_ex(be, dO, ldo, dQ, ldq, dK, ldk, dV, ldv, Tq, Tk, nh, nkv, hd, &o), "attention_ex");
    gq_be_download_f32(be, O, dO, no);
    gq_attention_ex_ref(Oref, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, nh, nkv, hd, o.scale, o.softcap, o.window);
    double e = rel_err(O, Oref, Tq, nh * hd, ldo);
    TEST_CHECK(e <= TOL_DOT,
               "attention_ex [%s] Tq=%d Tk=%d heads=%d/%d hd=%d scale=%g softcap=%g window=%d: rel err %.3g > %g",
               mode, Tq, Tk, nh, nkv, hd, (double)o.scale, (double)o.softcap, o.window, e, TOL_DOT);
    TEST_CHECK(pad_untouched(O, Tq, nh * hd, ldo), "attention_ex wrote beyond its %d output columns", nh * hd);
    if (changes == 1) {
        gq_attention_ref(Oplain, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, nh, nkv, hd);
        double d = rel_err(Oref, Oplain, Tq, nh * hd, ldo);
        TEST_CHECK(d > CHANGE_MIN(TOL_DOT), "attention_ex [%s] Tq=%d Tk=%d window=%d softcap=%g scale=%g changes the "
                   "output by only %.3g: the case does not test the options", mode, Tq, Tk, o.window,
                   (double)o.softcap, (double)o.scale, d);
    } else if (changes == 0) {
        TEST_OK(gq_be_attention(be, dO, ldo, dQ, ldq, dK, ldk, dV, ldv, Tq, Tk, nh, nkv, hd), "attention");
        gq_be_download_f32(be, Oplain, dO, no);
        TEST_CHECK(memcmp(O, Oplain, no * sizeof(float)) == 0,
                   "attention_ex [%s] Tq=%d Tk=%d window=%d scale=%g is bitwise plain attention", mode, Tq, Tk,
                   o.window, (double)o.scale);
    }
    gq_be_release(be, dQ), gq_be_release(be, dK), gq_be_release(be, dV), gq_be_release(be, dO);
    free(Q), free(K), free(V), free(O), free(Oref), free(Oplain);
}

/* The expected decode step on host copies: rope_partial_ref of each row's q and k heads at
 * pos[r], k and v into the row's cache slot at pos[r], attention_ex_ref over keys 0..pos[r]. */
static void decode_ref(float *O, int ldo, float *QKV, int ldqkv, int B, float *Kc, float *Vc, size_t stride,
                       int ldkv, const int32_t *slot, const int32_t *pos, int nh, int nkv, int hd, int rot,
                       const float *inv, gq_attn_opts o) {
    int nq = nh * hd, kvd = nkv * hd;
    for (int r = 0; r < B; r++) {
        float *q = QKV + (size_t)r * ldqkv;
        float *kc = Kc + (size_t)slot[r] * stride, *vc = Vc + (size_t)slot[r] * stride;
        gq_rope_partial_ref(q, ldqkv, 1, nh + nkv, hd, rot, pos[r], inv);
        memcpy(kc + (size_t)pos[r] * ldkv, q + nq, sizeof(float) * (size_t)kvd);
        memcpy(vc + (size_t)pos[r] * ldkv, q + nq + kvd, sizeof(float) * (size_t)kvd);
        gq_attention_ex_ref(O + (size_t)r * ldo, ldo, q, ldqkv, kc, ldkv, vc, ldkv, 1, pos[r] + 1, nh, nkv, hd, o.scale,
                            o.softcap, o.window);
    }
}

/* One batched decode step (B rows, caches of 64 positions in B + 1 slots, row r at slot
 * B - r and position 0, 29, 58, 23, ...) against decode_ref: O to TOL_DOT, the rotated q and
 * the caches to TOL_ELEM. changes as test_attention_ex (1: the options move O; 0: options off
 * and rot = hd, so bitwise the plain gq_be_decode_attention). */
static void test_decode_ex(gq_backend *be, int B, int nh, int nkv, int hd, int rot, gq_attn_opts o, int changes) {
    const int nq = nh * hd, kvd = nkv * hd, ldqkv = nq + 2 * kvd + 3, ldkv = kvd + 2, ldo = nq + 1, max_len = 64;
    const size_t stride = (size_t)max_len * ldkv, nc = (size_t)(B + 1) * stride, nx = (size_t)B * ldqkv;
    int32_t *slot = gq_malloc(sizeof(int32_t) * (size_t)B), *pos = gq_malloc(sizeof(int32_t) * (size_t)B);
    for (int r = 0; r < B; r++) slot[r] = B - r, pos[r] = (r * 29) % max_len;
    float *inv = gq_malloc(sizeof(float) * (size_t)(rot / 2));
    for (int i = 0; i < rot / 2; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)rot);
    float *QKV = rand_vec(nx, 1.5f), *Kc = rand_vec(nc, 1.5f), *Vc = rand_vec(nc, 1.0f);
    float *QKV0 = gq_malloc(nx * sizeof(float)), *QKVr = gq_malloc(nx * sizeof(float));
    float *Kr = gq_malloc(nc * sizeof(float)), *Vr = gq_malloc(nc * sizeof(float));
    memcpy(QKV0, QKV, nx * sizeof(float)), memcpy(QKVr, QKV, nx * sizeof(float));
    memcpy(Kr, Kc, nc * sizeof(float)), memcpy(Vr, Vc, nc * sizeof(float));
    float *O = nan_vec((size_t)B * ldo), *Oref = nan_vec((size_t)B * ldo), *O2 = nan_vec((size_t)B * ldo);
    void *dX = dev_from(be, QKV, nx), *dK = dev_from(be, Kc, nc), *dV = dev_from(be, Vc, nc);
    void *dO = dev_from(be, O, (size_t)B * ldo);
    void *dX2 = dev_from(be, QKV, nx), *dK2 = dev_from(be, Kc, nc), *dV2 = dev_from(be, Vc, nc);
    TEST_OK(gq_be_decode_attention_ex(be, dO, ldo, dX, ldqkv, B, dK, dV, stride, ldkv, slot, pos, nh, nkv, hd, rot,
                                      inv, &o), "decode_attention_ex");
    decode_ref(Oref, ldo, QKVr, ldqkv, B, Kr, Vr, stride, ldkv, slot, pos, nh, nkv, hd, rot, inv, o);
    gq_be_download_f32(be, O, dO, (size_t)B * ldo);
    gq_be_download_f32(be, QKV, dX, nx), gq_be_download_f32(be, Kc, dK, nc), gq_be_download_f32(be, Vc, dV, nc);
    double e = rel_err(O, Oref, B, nq, ldo);
    TEST_CHECK(e <= TOL_DOT, "decode_ex B=%d heads=%d/%d hd=%d rot=%d softcap=%g window=%d: rel err %.3g > %g", B, nh,
               nkv, hd, rot, (double)o.softcap, o.window, e, TOL_DOT);
    TEST_CHECK(pad_untouched(O, B, nq, ldo), "decode_ex wrote beyond its %d output columns", nq);
    e = rel_err(QKV, QKVr, B, ldqkv, ldqkv);
    TEST_CHECK(e <= TOL_ELEM, "decode_ex rotated q, k: rel err %.3g > %g", e, TOL_ELEM);
    e = rel_err(Kc, Kr, (int)(nc / ldkv), ldkv, ldkv) + rel_err(Vc, Vr, (int)(nc / ldkv), ldkv, ldkv);
    TEST_CHECK(e <= TOL_ELEM, "decode_ex caches: rel err %.3g > %g", e, TOL_ELEM);
    if (changes == 1) {
        memcpy(QKVr, QKV0, nx * sizeof(float)); /* a second reference step without the options */
        float *Op = nan_vec((size_t)B * ldo);
        decode_ref(Op, ldo, QKVr, ldqkv, B, Kr, Vr, stride, ldkv, slot, pos, nh, nkv, hd, rot, inv,
                   (gq_attn_opts){0});
        double d = rel_err(Oref, Op, B, nq, ldo);
        free(Op);
        TEST_CHECK(d > CHANGE_MIN(TOL_DOT), "decode_ex window=%d softcap=%g changes O by only %.3g", o.window,
                   (double)o.softcap, d);
    } else if (changes == 0) {
        TEST_OK(gq_be_decode_attention(be, dO, ldo, dX2, ldqkv, B, dK2, dV2, stride, ldkv, slot, pos, nh, nkv, hd, inv),
                "decode_attention");
        gq_be_download_f32(be, O2, dO, (size_t)B * ldo);
        TEST_CHECK(memcmp(O, O2, sizeof(float) * (size_t)B * ldo) == 0, "decode_ex without options is bitwise "
                   "gq_be_decode_attention");
        /* the last row alone (fresh caches, its own q | k | v): bitwise its row of the batch, so a
         * sequence's tokens do not depend on the batch it decodes in */
        const int r = B - 1;
        void *dX1 = dev_from(be, QKV0 + (size_t)r * ldqkv, (size_t)ldqkv), *dO1 = dev_from(be, O2, (size_t)ldo);
        gq_be_release(be, dK2), gq_be_release(be, dV2);
        dK2 = dev_from(be, Kr, nc), dV2 = dev_from(be, Vr, nc); /* (Kr, Vr: the caches after the step) */
        TEST_OK(gq_be_decode_attention(be, dO1, ldo, dX1, ldqkv, 1, dK2, dV2, stride, ldkv, slot + r, pos + r, nh, nkv,
                                       hd, inv),
                "decode_attention, row %d alone", r);
        gq_be_download_f32(be, O2, dO1, (size_t)nq);
        TEST_CHECK(memcmp(O + (size_t)r * ldo, O2, sizeof(float) * (size_t)nq) == 0,
                   "decode B=%d heads=%d/%d: row %d alone is bitwise its row of the batch", B, nh, nkv, r);
        gq_be_release(be, dX1), gq_be_release(be, dO1);
    }
    gq_be_release(be, dX), gq_be_release(be, dK), gq_be_release(be, dV), gq_be_release(be, dO);
    gq_be_release(be, dX2), gq_be_release(be, dK2), gq_be_release(be, dV2);
    free(slot), free(pos), free(inv), free(QKV), free(QKV0), free(Kc), free(Vc), free(QKVr), free(Kr), free(Vr);
    free(O), free(Oref), free(O2);
}

/* gather_rows (idx with repeats; exact copies) and scatter_add_rows (distinct idx, increasing
 * or shuffled: backend.c's two duplicate checks) on X [rows][ldx]-shaped data. scatter_add's
 * reference is the same fp32 product and sum, so TOL_ELEM only allows for a contracted FMA;
 * rows not in idx must stay bitwise unchanged. */
static void test_gather_scatter(gq_backend *be, int n, int rows, int d, int ldx, int ldy, int sorted) {
    float *X = rand_vec((size_t)rows * ldx, 1.0f), *Y = nan_vec((size_t)n * ldy);
    int32_t *idx = gq_malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) idx[i] = (int32_t)(rng_next() % (uint64_t)rows);
    void *dX = dev_from(be, X, (size_t)rows * ldx), *dY = dev_from(be, Y, (size_t)n * ldy);
    TEST_OK(gq_be_gather_rows(be, dY, ldy, dX, ldx, idx, n, d), "gather_rows");
    gq_be_download_f32(be, Y, dY, (size_t)n * ldy);
    int same = 1;
    for (int i = 0; i < n; i++) same &= !memcmp(Y + (size_t)i * ldy, X + (size_t)idx[i] * ldx, sizeof(float) * d);
    TEST_CHECK(same, "gather_rows n=%d rows=%d d=%d: rows copied exactly", n, rows, d);
    TEST_CHECK(pad_untouched(Y, n, d, ldy), "gather_rows wrote beyond its %d columns", d);
    gq_be_release(be, dY);
    free(Y);

    /* scatter: Ys [rows][ldy] += w[i] * X[i] for the first n rows of X as the [n][ldx] source */
    int32_t *perm = gq_malloc(sizeof(int32_t) * (size_t)rows);
    for (int i = 0; i < rows; i++) perm[i] = i;
    for (int i = rows - 1; i > 0; i--) { /* Fisher-Yates; then the first n, sorted or not */
        int j = (int)(rng_next() % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    if (sorted)
        for (int i = 1; i < n; i++) /* insertion sort of the first n */
            for (int j = i; j > 0 && perm[j] < perm[j - 1]; j--) {
                int32_t t = perm[j];
                perm[j] = perm[j - 1], perm[j - 1] = t;
            }
    float *w = rand_vec((size_t)n, 1.0f), *Ys = rand_vec((size_t)rows * ldy, 1.0f);
    for (int r = 0; r < rows; r++)
        for (int c = d; c < ldy; c++) Ys[(size_t)r * ldy + c] = NAN;
    float *Yref = gq_malloc(sizeof(float) * (size_t)rows * ldy);
    memcpy(Yref, Ys, sizeof(float) * (size_t)rows * ldy);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < d; c++) {
            float p = w[i] * X[(size_t)i * ldx + c];
            Yref[(size_t)perm[i] * ldy + c] = Yref[(size_t)perm[i] * ldy + c] + p;
        }
    void *dYs = dev_from(be, Ys, (size_t)rows * ldy);
    TEST_OK(gq_be_scatter_add_rows(be, dYs, ldy, dX, ldx, perm, w, n, d), "scatter_add_rows");
    gq_be_download_f32(be, Ys, dYs, (size_t)rows * ldy);
    double e = rel_err(Ys, Yref, rows, d, ldy);
    TEST_CHECK(e <= TOL_ELEM, "scatter_add_rows n=%d rows=%d d=%d sorted=%d: rel err %.3g > %g", n, rows, d, sorted, e,
               TOL_ELEM);
    int kept = 1;
    for (int i = n; i < rows; i++)
        kept &= !memcmp(Ys + (size_t)perm[i] * ldy, Yref + (size_t)perm[i] * ldy, sizeof(float) * d);
    TEST_CHECK(kept, "scatter_add_rows left the %d rows not in idx unchanged", rows - n);
    TEST_CHECK(pad_untouched(Ys, rows, d, ldy), "scatter_add_rows wrote beyond its %d columns", d);
    gq_be_release(be, dX), gq_be_release(be, dYs);
    free(X), free(idx), free(perm), free(w), free(Ys), free(Yref);
}

/* The soft-capped NLL in double (logits from double dot products, capped with tanh), and the
 * capped logits rounded to fp32 into L [T][vocab]. */
static void nll_softcap_ref(const float *X, int ldx, int T, int d, const float *W, int vocab, const int32_t *tg,
                            double softcap, double *nll_sum, int64_t *count, float *L) {
    double *l = gq_malloc(sizeof(double) * (size_t)vocab);
    for (int t = 0; t < T; t++) {
        double mx = -INFINITY, se = 0;
        for (int v = 0; v < vocab; v++) {
            double s = 0;
            for (int c = 0; c < d; c++) s += (double)X[(size_t)t * ldx + c] * W[(size_t)v * d + c];
            l[v] = softcap * tanh(s / softcap);
            L[(size_t)t * vocab + v] = (float)l[v];
            mx = l[v] > mx ? l[v] : mx;
        }
        if (tg[t] < 0) continue;
        for (int v = 0; v < vocab; v++) se += exp(l[v] - mx);
        *nll_sum += mx + log(se) - l[tg[t]];
        (*count)++;
    }
    free(l);
}

/* nll_ex with a soft-cap against nll_softcap_ref (mean and logits_out to TOL_DOT, as test_nll);
 * the cap must move the mean NLL by more than CHANGE_MIN(TOL_DOT); softcap 0 is bitwise gq_be_nll. */
static void test_nll_ex(gq_backend *be, int T, int d, int vocab, float wsd, float softcap) {
    float *X = rand_vec((size_t)T * d, 1.0f), *W = rand_vec((size_t)vocab * d, wsd);
    int32_t *tg = gq_malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) tg[t] = t % 7 == 3 ? -1 : (int32_t)(rng_next() % (uint64_t)vocab);
    gq_bweight w;
    TEST_OK(gq_be_weight_upload(be, &w, W, vocab, d), "upload lm head");
    void *dX = dev_from(be, X, (size_t)T * d);
    float *L = nan_vec((size_t)T * vocab), *Lref = nan_vec((size_t)T * vocab);
    double s = 0, s2 = 0, sref = 0, s0 = 0, s1 = 0;
    int64_t n = 0, n2 = 0, nref = 0, n0 = 0, n1 = 0;
    TEST_OK(gq_be_nll_ex(be, dX, d, T, &w, tg, softcap, &s, &n, L), "nll_ex softcap %g", (double)softcap);
    TEST_OK(gq_be_nll_ex(be, dX, d, T, &w, tg, softcap, &s2, &n2, NULL), "nll_ex without logits");
    TEST_CHECK(s == s2 && n == n2, "nll_ex: the same sum with and without logits_out (%.17g, %.17g)", s, s2);
    nll_softcap_ref(X, d, T, d, W, vocab, tg, softcap, &sref, &nref, Lref);
    TEST_CHECK(n == nref, "nll_ex count %lld, expected %lld", (long long)n, (long long)nref);
    TEST_NEAR(s / n, sref / nref, TOL_DOT * fabs(sref / nref), "nll_ex mean T=%d vocab=%d softcap=%g", T, vocab,
              (double)softcap);
    double e = rel_err(L, Lref, T, vocab, vocab);
    TEST_CHECK(e <= TOL_DOT, "nll_ex logits_out softcap=%g: rel err %.3g > %g", (double)softcap, e, TOL_DOT);
    gq_nll_ref(X, d, T, d, W, vocab, tg, &s0, &n0);
    TEST_CHECK(fabs(s0 / n0 - sref / nref) > CHANGE_MIN(TOL_DOT) * fabs(s0 / n0),
               "nll_ex softcap=%g changes the mean NLL (%.6g vs %.6g uncapped) by more than %g relative",
               (double)softcap, sref / nref, s0 / n0, CHANGE_MIN(TOL_DOT));
    s = s1 = 0, n = n1 = 0;
    TEST_OK(gq_be_nll_ex(be, dX, d, T, &w, tg, 0.0f, &s, &n, NULL), "nll_ex softcap 0");
    TEST_OK(gq_be_nll(be, dX, d, T, &w, tg, &s1, &n1, NULL), "nll");
    TEST_CHECK(s == s1 && n == n1, "nll_ex with softcap 0 is bitwise gq_be_nll");
    gq_be_weight_free(be, &w);
    gq_be_release(be, dX);
    free(X), free(W), free(tg), free(L), free(Lref);
}

/* Argument checks of the family ops (backend.c, shared by every backend): each fails with
 * GQ_ERR_ARG before touching a buffer, saying what was expected. */
static void test_family_args(gq_backend *be) {
    float inv[64] = {0};
    int32_t slot[2] = {0, 1}, pos[2] = {3, 4}, tg[2] = {0, 1}, idx[3] = {4, 2, 4};
    float wts[3] = {1, 1, 1};
    gq_bweight w16 = {.rows = 1, .cols = 16}, w3 = {.data = inv, .rows = 1, .cols = 3};
    TEST_FAILS(gq_be_rope_partial(be, NULL, 64, 1, 2, 32, 3, 0, inv), GQ_ERR_ARG, "3 rotary dims of head_dim 32");
    TEST_FAILS(gq_be_rope_partial(be, NULL, 64, 1, 2, 32, 0, 0, inv), GQ_ERR_ARG, "0 rotary dims");
    TEST_FAILS(gq_be_rope_partial(be, NULL, 64, 1, 2, 32, 34, 0, inv), GQ_ERR_ARG, "34 rotary dims of head_dim 32");
    TEST_FAILS(gq_be_rope(be, NULL, 64, 1, 2, 31, 0, inv), GQ_ERR_ARG, "31 rotary dims of head_dim 31");
    TEST_FAILS(gq_be_attention_ex(be, NULL, 64, NULL, 64, NULL, 64, NULL, 64, 4, 4, 4, 2, 16,
                                  &(gq_attn_opts){.window = -1}), GQ_ERR_ARG, "window -1, expected >= 0");
    TEST_FAILS(gq_be_attention_ex(be, NULL, 64, NULL, 64, NULL, 64, NULL, 64, 4, 4, 4, 2, 16,
                                  &(gq_attn_opts){.softcap = -1.0f}), GQ_ERR_ARG, "softcap -1");
    TEST_FAILS(gq_be_attention_ex(be, NULL, 64, NULL, 64, NULL, 64, NULL, 64, 4, 4, 4, 2, 16,
                                  &(gq_attn_opts){.scale = -0.5f}), GQ_ERR_ARG, "scale -0.5");
    TEST_FAILS(gq_be_attention_ex(be, NULL, 64, NULL, 64, NULL, 64, NULL, 64, 4, 4, 4, 2, 16,
                                  &(gq_attn_opts){.scale = NAN}), GQ_ERR_ARG, "scale nan");
    TEST_FAILS(gq_be_attention_ex(be, NULL, 64, NULL, 64, NULL, 64, NULL, 64, 4, 4, 4, 2, 16,
                                  &(gq_attn_opts){.softcap = INFINITY}), GQ_ERR_ARG, "softcap inf");
    TEST_FAILS(gq_be_decode_attention_ex(be, NULL, 64, NULL, 128, 2, NULL, NULL, 64, 32, slot, pos, 4, 2, 16, 5, inv,
                                         NULL), GQ_ERR_ARG, "decode attention: 5 rotary dims");
    TEST_FAILS(gq_be_decode_attention_ex(be, NULL, 64, NULL, 128, 2, NULL, NULL, 64, 32, slot, pos, 4, 2, 16, 16, inv,
                                         &(gq_attn_opts){.window = -3}), GQ_ERR_ARG, "window -3");
    TEST_FAILS(gq_be_nll_ex(be, NULL, 16, 2, &w16, tg, -2.0f, NULL, NULL, NULL), GQ_ERR_ARG, "softcap -2");
    TEST_FAILS(gq_be_glu(be, NULL, 8, NULL, 16, 1, 8, (gq_act_kind)7), GQ_ERR_ARG, "activation 7");
    TEST_FAILS(gq_be_act(be, NULL, 8, 1, 8, (gq_act_kind)-1), GQ_ERR_ARG, "activation -1");
    TEST_FAILS(gq_be_layernorm(be, NULL, 16, NULL, 16, 1, 16, &w16, &w3, 1e-5f), GQ_ERR_ARG,
               "bias has 3 elements for width 16");
    TEST_FAILS(gq_be_head_rmsnorm(be, NULL, 64, 1, 4, 8, &w16, 1e-6f), GQ_ERR_ARG, "16 elements for head_dim 8");
    TEST_FAILS(gq_be_gather_rows(be, NULL, 8, NULL, 8, (int32_t[]){0, -1}, 2, 8), GQ_ERR_ARG, "idx[1] = -1");
    TEST_FAILS(gq_be_scatter_add_rows(be, NULL, 8, NULL, 8, idx, wts, 3, 8), GQ_ERR_ARG,
               "row 4 appears more than once");
    TEST_FAILS(gq_be_scatter_add_rows(be, NULL, 8, NULL, 8, (int32_t[]){1, -5}, wts, 2, 8), GQ_ERR_ARG,
               "idx[1] = -5");
}

static void run_family_ops(gq_backend *be, const char *mode) {
    test_layernorm(be, 33, 96, 96, 96, 1, 0.0f);
    test_layernorm(be, 7, 257, 300, 260, 1, 30.0f); /* odd width, strided, mean 10 sd */
    test_layernorm(be, 1, 50, 50, 50, 0, -5.0f);    /* T = 1, no bias */
    test_head_rmsnorm(be, 9, 4, 64, 4 * 64);
    test_head_rmsnorm(be, 1, 3, 128, 3 * 128 + 5); /* T = 1, strided */
    test_head_rmsnorm(be, 17, 2, 18, 40);          /* odd-ish head_dim */
    test_glu(be, 21, 48, 48, 96, GQ_ACT_SILU);
    test_glu(be, 21, 48, 48, 96, GQ_ACT_GELU_TANH);
    test_glu(be, 9, 50, 64, 120, GQ_ACT_GELU_TANH);
    test_glu(be, 1, 37, 37, 74, GQ_ACT_GELU_TANH);
    test_glu(be, 40, 1000, 1000, 2000, GQ_ACT_GELU_TANH); /* the parallel path */
    test_act(be, 13, 77, 80, GQ_ACT_GELU_TANH);
    test_act(be, 1, 31, 31, GQ_ACT_SILU);
    test_act(be, 40, 1000, 1000, GQ_ACT_GELU_TANH);
    test_rope_partial(be, 29, 3, 32, 16, 3 * 32, 0);
    test_rope_partial(be, 17, 2, 80, 32, 200, 1000); /* Phi-2 / StarCoder-style: 32 of 80 dims */
    test_rope_partial(be, 1, 5, 64, 64, 320, 7);     /* rot = hd: gq_be_rope */
    test_rope_partial(be, 8, 2, 64, 2, 128, 3);      /* the smallest rot */
    test_rope_partial(be, 40, 40, 96, 24, 3840, 5);  /* the parallel path */
    test_gather_scatter(be, 37, 50, 33, 40, 35, 0);
    test_gather_scatter(be, 37, 50, 33, 40, 35, 1);
    test_gather_scatter(be, 1, 1, 7, 7, 9, 1);
    test_gather_scatter(be, 300, 400, 200, 200, 201, 0); /* the parallel path */
    test_nll_ex(be, 45, 32, 300, 0.3f, 2.0f);
    test_nll_ex(be, 200, 16, 50000, 2.0f, 30.0f); /* Gemma-2's cap, logits of sd 8, chunks of 83 rows */

    /* attention options (q, k sd 1.5: scores ~ N(0, 5) unscaled; tiles of max(32, hd) rows) */
    const gq_attn_opts none = {0};
    test_attention_ex(be, mode, 100, 100, 4, 4, 32, 0, (gq_attn_opts){.window = 16}, 1);
    test_attention_ex(be, mode, 37, 37, 4, 2, 32, 0, (gq_attn_opts){.window = 1}, 1); /* each query sees itself */
    test_attention_ex(be, mode, 130, 130, 8, 2, 16, 8, (gq_attn_opts){.window = 50}, 1); /* window > tile */
    test_attention_ex(be, mode, 130, 130, 8, 2, 16, 8, (gq_attn_opts){.window = 200}, 0); /* window > T */
    test_attention_ex(be, mode, 100, 100, 4, 2, 32, 0, (gq_attn_opts){.window = 100}, 0); /* window = T */
    test_attention_ex(be, mode, 100, 100, 4, 2, 32, 0, (gq_attn_opts){.window = 99}, -1);
    test_attention_ex(be, mode, 100, 100, 4, 2, 32, 0, (gq_attn_opts){.softcap = 5.0f}, 1);
    test_attention_ex(be, mode, 100, 100, 4, 2, 32, 0, (gq_attn_opts){.scale = 0.125f, .softcap = 50.0f}, 1);
    test_attention_ex(be, mode, 130, 130, 8, 2, 16, 8, (gq_attn_opts){.scale = 0.3f, .softcap = 20.0f, .window = 40},
                      1); /* Gemma-2-like local layer */
    test_attention_ex(be, mode, 1, 37, 4, 2, 32, 0, (gq_attn_opts){.window = 8}, 1);  /* decode step */
    test_attention_ex(be, mode, 1, 37, 4, 2, 32, 0, (gq_attn_opts){.window = 40}, 0); /* window > cache */
    test_attention_ex(be, mode, 5, 37, 2, 1, 64, 0, (gq_attn_opts){.window = 8}, 1);  /* chunked prefill */
    test_attention_ex(be, mode, 1, 1, 2, 2, 8, 0, (gq_attn_opts){.window = 1, .softcap = 3.0f}, -1); /* one key */
    test_attention_ex(be, mode, 1, 37, 4, 1, 32, 5, (gq_attn_opts){.softcap = 3.0f}, 1); /* GQA 4, strided */
    test_attention_ex(be, mode, 200, 200, 2, 1, 128, 3, (gq_attn_opts){.window = 64}, 1);
    test_attention_ex(be, mode, 100, 100, 4, 2, 32, 0, (gq_attn_opts){.scale = (float)(1.0 / sqrt(32.0))}, 0);
    test_attention_ex(be, mode, 100, 100, 4, 2, 32, 0, none, 0);

    test_decode_ex(be, 4, 4, 2, 32, 16, (gq_attn_opts){.window = 16}, 1);
    test_decode_ex(be, 3, 2, 2, 64, 64, none, 0);
    test_decode_ex(be, 16, 8, 2, 64, 64, none, 0); /* enough work for the CPU's parallel step */
    test_decode_ex(be, 2, 8, 2, 16, 8, (gq_attn_opts){.scale = 0.2f, .softcap = 5.0f, .window = 4}, 1);
    test_decode_ex(be, 1, 4, 1, 32, 32, (gq_attn_opts){.window = 3}, -1); /* position 0: one key either way */
}

/* ---- the fast exp ------------------------------------------------------------------------ */

static void test_expf(void) {
    /* gq_cpu_expf vs exp in double: the Cephes polynomial is within 2 ulp;
     * accept 3 ulp (3 * 2^-23 relative = 3.6e-7) over the whole domain */
    double worst = 0, worst_x = 0;
    for (float x = -87.0f; x <= 88.0f; x += 0.00731f) {
        double ref = exp((double)x), got = gq_cpu_expf(x);
        double rel = fabs(got - ref) / ref;
        if (rel > worst) worst = rel, worst_x = x;
    }
    TEST_CHECK(worst <= 3.6e-7, "gq_cpu_expf: worst rel err %.3g at x = %g (> 3 ulp)", worst, worst_x);
    TEST_CHECK(gq_cpu_expf(-1000.0f) < 1e-37f && gq_cpu_expf(-1000.0f) >= 0.0f, "expf(-1000) ~ 0");
    TEST_CHECK(isfinite(gq_cpu_expf(1000.0f)) && gq_cpu_expf(1000.0f) > 1e38f, "expf(1000) is large and finite");
    TEST_NEAR(gq_cpu_expf(0.0f), 1.0, 0.0, "expf(0) is exactly 1");
}

/* ---- registry ------------------------------------------------------------------------------ */

static void test_registry(void) {
    gq_backend *be = NULL;
    TEST_FAILS(gq_backend_init(&be, "tpu"), GQ_ERR_ARG, "expected cpu, cuda, cuda:N");
    TEST_CHECK(be == NULL, "no backend on error");
    TEST_FAILS(gq_backend_init(&be, "cuda:x"), GQ_ERR_ARG, "'cuda:x'");
    TEST_FAILS(gq_backend_init(&be, "cuda:"), GQ_ERR_ARG, "'cuda:'");
    if (!gq_backend_cuda_compiled()) {
        TEST_FAILS(gq_backend_init(&be, "cuda:0"), GQ_ERR_UNSUPPORTED, "has no CUDA backend");
    } else {
        TEST_SKIP("cuda-not-compiled error: this build has CUDA");
    }
    TEST_OK(gq_backend_init(&be, "auto"), "auto backend");
    if (be && !gq_backend_cuda_compiled())
        TEST_CHECK(!gq_backend_is_gpu(be), "auto without CUDA is the CPU backend");
    gq_backend_free(be);

    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");
    TEST_CHECK(strncmp(gq_backend_name(be), "cpu (OpenBLAS", 13) == 0, "name '%s'", gq_backend_name(be));
    TEST_CHECK(gq_backend_act_dtype(be) == GQ_DT_F32, "CPU activations are F32");
    TEST_CHECK(gq_be_act_bytes(be, 10) == 40, "act bytes");
    /* peak accounting: 1 MB + 2 MB live at once, then released */
    void *a = gq_be_alloc(be, 1 << 20), *b = gq_be_alloc(be, 2 << 20);
    gq_be_release(be, a);
    void *c = gq_be_alloc(be, 1 << 19);
    TEST_CHECK(gq_be_peak_bytes(be) == (3u << 20), "peak bytes %zu, expected %u", gq_be_peak_bytes(be), 3u << 20);
    gq_be_release(be, b);
    gq_be_release(be, c);
    gq_be_release(be, NULL);
    /* many allocations: the table grows and keeps every size */
    void *many[300];
    for (int i = 0; i < 300; i++) many[i] = gq_be_alloc(be, (size_t)(i + 1) * 64);
    for (int i = 0; i < 300; i += 2) gq_be_release(be, many[i]);
    for (int i = 1; i < 300; i += 2) gq_be_release(be, many[i]);
    void *d = gq_be_alloc(be, 5 << 20); /* nothing else live now: peak = 5 MiB if all were subtracted */
    gq_be_release(be, d);
    TEST_CHECK(gq_be_peak_bytes(be) == (5u << 20), "peak bytes %zu after churn, expected %u", gq_be_peak_bytes(be),
               5u << 20);
    /* a fork (the pipeline's layer loader): another CPU backend, the same precision, its own table */
    gq_backend *fork = NULL;
    TEST_OK(gq_backend_fork(be, &fork), "fork");
    if (fork) {
        TEST_CHECK(!gq_backend_is_gpu(fork) && gq_backend_act_dtype(fork) == gq_backend_act_dtype(be) && fork != be,
                   "the fork is another CPU backend of the same precision");
        void *fb = gq_be_alloc(fork, 1 << 20);
        TEST_CHECK(fb && gq_be_peak_bytes(fork) == (1u << 20) && gq_be_peak_bytes(be) == (5u << 20),
                   "the fork's allocations are its own (peak %zu, the parent's %zu)", gq_be_peak_bytes(fork),
                   gq_be_peak_bytes(be));
        gq_be_release(fork, fb);
        gq_backend_free(fork);
    }
    /* raw weight upload converts f16/bf16 */
    uint16_t h[4] = {gq_f32_to_f16(1.5f), gq_f32_to_f16(-2.0f), gq_f32_to_f16(0.25f), gq_f32_to_f16(3.0f)};
    gq_bweight w;
    TEST_OK(gq_be_weight_upload_raw(be, &w, h, GQ_DT_F16, 2, 2), "upload raw f16");
    TEST_CHECK(w.rows == 2 && w.cols == 2 && ((float *)w.data)[1] == -2.0f && ((float *)w.data)[2] == 0.25f,
               "f16 weight converted");
    gq_be_weight_free(be, &w);
    TEST_FAILS(gq_be_weight_upload_raw(be, &w, h, GQ_DT_I32, 2, 2), GQ_ERR_ARG, "expected F32, F16 or BF16");
    /* argument checks shared by all backends */
    TEST_FAILS(gq_be_attention(be, NULL, 64, NULL, 64, NULL, 64, NULL, 64, 4, 4, 3, 2, 16), GQ_ERR_ARG,
               "multiple of n_kv");
    TEST_FAILS(gq_be_attention(be, NULL, 64, NULL, 64, NULL, 64, NULL, 64, 5, 4, 4, 2, 16), GQ_ERR_ARG,
               "5 queries for 4 keys");
    TEST_FAILS(gq_be_rmsnorm(be, NULL, 8, NULL, 16, 1, 16, &(gq_bweight){.rows = 1, .cols = 16}, 1e-5f), GQ_ERR_ARG,
               "Y has leading dimension 8 for 16 columns");
    gq_backend_free(be);
    gq_backend_free(NULL);
}

/* The CPU's linear for T <= 16 rows streams W once and gives each row the value it gets alone (the
 * batch a sequence decodes in does not change its logits' bits): rows of a T = 7 call (a group of
 * 4 rows, then 3) against T = 1 calls, bitwise. */
static void test_linear_rows_alone(gq_backend *be) {
    enum { T = 7, IN = 640, OUT = 300 };
    float *X = rand_vec((size_t)T * IN, 1.0f), *W = rand_vec((size_t)OUT * IN, 0.1f);
    float *Y = gq_malloc(sizeof(float) * T * OUT);
    float *Y1 = gq_malloc(sizeof(float) * 2 * OUT); /* [2][OUT]: one row, or two */
    gq_bweight w;
    TEST_OK(gq_be_weight_upload(be, &w, W, OUT, IN), "upload W");
    TEST_OK(gq_be_linear(be, Y, OUT, X, IN, T, &w, NULL, 0), "linear T=7");
    int same = 1;
    for (int t = 0; t < T; t++) {
        TEST_OK(gq_be_linear(be, Y1, OUT, X + (size_t)t * IN, IN, 1, &w, NULL, 0), "linear T=1");
        if (t == 5) TEST_OK(gq_be_linear(be, Y1, OUT, X + (size_t)t * IN, IN, 2, &w, NULL, 0), "linear T=2");
        same &= !memcmp(Y1, Y + (size_t)t * OUT, sizeof(float) * OUT);
    }
    TEST_CHECK(same, "cpu linear: each of 7 rows bitwise as alone (row 5 also as the first of 2)");
    gq_be_weight_free(be, &w);
    free(X), free(W), free(Y), free(Y1);
}

static void run_ops(gq_backend *be, const char *mode) {
    test_linear(be, 37, 96, 80, 96, 80, 0, 0);
    test_linear(be, 37, 96, 80, 100, 90, 1, 0); /* strided, bias */
    test_linear(be, 5, 512, 33, 520, 40, 1, 1); /* K = 512, accumulate (residual add) */
    test_linear(be, 1, 64, 256, 64, 256, 0, 1);
    test_linear(be, 2, 512, 33, 520, 40, 1, 1);    /* the CPU's few-row path (T <= 16) */
    test_linear(be, 16, 256, 96, 260, 100, 1, 1);  /* ... four groups of 4 rows */
    test_linear(be, 13, 200, 50, 200, 50, 0, 0);   /* ... 4 + 4 + 4 + 1 */
    test_linear(be, 4, 300, 700, 300, 700, 1, 0);  /* ... on several threads (N K >= 131072) */
    test_linear(be, 3, 4096, 64, 4100, 64, 0, 1);  /* ... K = 4096 */
    test_rmsnorm(be, 33, 96, 96, 96);
    test_rmsnorm(be, 7, 256, 300, 260);
    test_rope(be, 29, 3, 32, 3 * 32, 0);
    test_rope(be, 17, 2, 64, 200, 1000); /* strided, positions 1000.. */
    test_swiglu(be, 21, 48, 48, 96);
    test_swiglu(be, 9, 50, 64, 120);
    test_add(be, 13, 40, 48, 44);
    test_hessian(be, 70, 48, 48);
    test_hessian(be, 33, 40, 56);
    test_gptq_op(be, 0);
    test_gptq_op(be, 1);
    test_nll(be, 45, 32, 300, 40); /* several row chunks are not needed; vocab small */
    test_nll(be, 600, 16, 50000, 16); /* vocab 50000: chunks of 83 rows, 8 chunks */
    test_nll(be, 3, 64, 32000, 72);   /* a decode step's few rows (the CPU streams the head) */
    /* attention: tiles of head_dim rows (at least 32) by default; T = 100, 130, 200 are not multiples */
    test_attention(be, mode, 100, 100, 4, 4, 32, 0);    /* MHA */
    test_attention(be, mode, 100, 100, 4, 2, 32, 0);    /* GQA, 2 heads per kv head */
    test_attention(be, mode, 130, 130, 8, 2, 16, 8);    /* GQA 4, strided */
    test_attention(be, mode, 1, 37, 4, 2, 32, 0);       /* decode step */
    test_attention(be, mode, 1, 37, 4, 1, 32, 5);       /* decode step, GQA 4 (one kv head), strided */
    test_attention(be, mode, 5, 37, 2, 1, 64, 0);       /* chunked prefill: 5 queries at 32..36 */
    test_attention(be, mode, 1, 1, 2, 2, 8, 0);         /* a single token */
    test_attention(be, mode, 200, 200, 2, 1, 128, 3);   /* hd 128 */
}

int main(void) {
    test_rng_state = 0x243F6A8885A308D3ull; /* the seed the tolerances were checked with */
    TEST_BEGIN("backend");
    gq_log_set_level(GQ_LOG_WARN);
    test_expf();
    test_registry();

    gq_backend *be = NULL;
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");
    if (be) {
        run_ops(be, "tasks");
        test_linear_rows_alone(be);
        run_family_ops(be, "tasks");
        test_family_args(be);
    }
    gq_backend_free(be);

    /* the other attention schedule and an odd tile size */
    setenv("GQ_CPU_ATTN", "blas", 1);
    gq_knobs_reload();
    setenv("GQ_CPU_ATTN_TILE", "24", 1);
    gq_knobs_reload();
    be = NULL;
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend (blas attention)");
    if (be) {
        test_attention(be, "blas/24", 100, 100, 4, 2, 32, 0);
        test_attention(be, "blas/24", 130, 130, 8, 2, 16, 8);
        test_attention(be, "blas/24", 1, 37, 4, 2, 32, 0);
        test_attention(be, "blas/24", 5, 37, 2, 1, 64, 0);
        test_attention_ex(be, "blas/24", 100, 100, 4, 2, 32, 0, (gq_attn_opts){.window = 16}, 1);
        test_attention_ex(be, "blas/24", 130, 130, 8, 2, 16, 8, (gq_attn_opts){.window = 30, .softcap = 5.0f}, 1);
        test_attention_ex(be, "blas/24", 5, 37, 2, 1, 64, 0, (gq_attn_opts){.window = 8, .scale = 0.1f}, 1);
    }
    gq_backend_free(be);
    unsetenv("GQ_CPU_ATTN");
    gq_knobs_reload();
    setenv("GQ_CPU_ATTN_TILE", "7", 1);
    gq_knobs_reload();
    be = NULL;
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend (tile 7)");
    if (be) {
        test_attention(be, "tasks/7", 100, 100, 4, 2, 32, 0);
        test_attention(be, "tasks/7", 5, 37, 2, 1, 64, 0);
        test_attention_ex(be, "tasks/7", 100, 100, 4, 2, 32, 0, (gq_attn_opts){.window = 5}, 1); /* window < tile */
        test_attention_ex(be, "tasks/7", 100, 100, 4, 2, 32, 0, (gq_attn_opts){.window = 7}, 1); /* window = tile */
        test_attention_ex(be, "tasks/7", 100, 100, 4, 2, 32, 0, (gq_attn_opts){.window = 23, .softcap = 5.0f}, 1);
    }
    gq_backend_free(be);
    unsetenv("GQ_CPU_ATTN_TILE");
    gq_knobs_reload();
    return TEST_REPORT();
}
