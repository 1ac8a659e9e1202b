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
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "backend_cpu.h" /* gq_cpu_expf */
#include "gq/knobs.h"
#include "gq/backend.h"
#include "gq/gptq.h"
#include "gq/ref.h"
#include "test.h"

#define TOL_ELEM 1e-6
#define TOL_DOT 1e-5

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

static void run_ops(gq_backend *be, const char *mode) {
    test_linear(be, 37, 96, 80, 96, 80, 0, 0);
    test_linear(be, 37, 96, 80, 100, 90, 1, 0); /* strided, bias */
    test_linear(be, 5, 512, 33, 520, 40, 1, 1); /* K = 512, accumulate (residual add) */
    test_linear(be, 1, 64, 256, 64, 256, 0, 1);
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
    if (be) run_ops(be, "tasks");
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
    }
    gq_backend_free(be);
    unsetenv("GQ_CPU_ATTN_TILE");
    gq_knobs_reload();
    return TEST_REPORT();
}
