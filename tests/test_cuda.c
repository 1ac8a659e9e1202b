/*
 * test_cuda.c -- the CUDA backend's ops, whole checkpoints and perplexity
 * against the CPU backend (fp32, OpenBLAS) and transformers, on fresh random
 * inputs, in both precisions (test_cuda_family.c: the family ops against
 * gq/ref.h; test_cuda_gptq.c: the GPTQ solve). Without a CUDA device (or without CUDA
 * compiled in) only the device-less paths run and everything else is skipped
 * with a message.
 *
 * Inputs are rounded to fp16 values first, so both backends see the same
 * numbers; errors are ||gpu - cpu|| / ||cpu|| over the written elements.
 * Outputs are poisoned with NaN first: an unwritten element makes the error
 * NaN (fails), and the columns past the width of strided outputs must still
 * be NaN afterwards. Every failure prints the op, the shape, the error,
 * the largest |diff| and where it is.
 *
 * Tolerances (fp16 unit roundoff 2^-11 = 4.9e-4; rounding an output to fp16
 * gives a relative RMS error of about 2^-11 / sqrt(3) = 2.8e-4):
 *   TOL_F16 = 1e-3: ops with fp16 outputs and fp32 math (rmsnorm, rope,
 *     swiglu, add, linear, attention v1; layernorm, head_rmsnorm, glu, act,
 *     partial rope, attention with scale / soft-cap / window, scatter_add):
 *     one or two fp16 roundings per element (~3e-4 .. 4e-4 RMS) plus fp32
 *     rounding and tanhf / expf within ulps (~1e-6); an indexing, masking,
 *     window-edge or scaling bug gives errors of order 1. gather_rows is a
 *     copy and must be exact.
 *   TOL_ATT2 = 2e-3: attention v2 also rounds P to fp16 before P V (the
 *     FlashAttention scheme): one more 2^-11 relative term per product.
 *   TOL_F32 = 1e-5: fp32 outputs from exact fp16 products summed in fp32
 *     (hessian, logits, nll), K <= 1024 terms: ~sqrt(K) 2^-24 = 2e-6.
 *   TOL_MODEL = 2e-2: whole checkpoints (tests/data/pycoder-5m, the tiny
 *     models of tests/data/fwd) against transformers' fp32 forward: every
 *     hidden state and the logits after ~10 fp16 roundings per layer (about
 *     1e-3 per layer, compounding over up to 4 layers; pycoder-5m measured
 *     9e-4, the random tiny models up to 1.0e-2 on an H200, whose small
 *     logits magnify the relative error); a wrong rope pairing, a missing
 *     bias or a GQA head off by one moves them by 1e-1..1.
 *   TOL_PPL = 2e-3: the perplexity of 4 x 256 tokens of pycoder-5m vs
 *     transformers fp32 (33.7992): fp16 activations move it by a few 1e-4
 *     (test_ppl.c); a wrong mask or shift moves it by percents.
 *   --precision fp32 (the whole suite runs a second time on a backend with
 *   fp32 activations and weights, inputs no longer rounded to fp16): every
 *   op against the CPU within TOL_F32 (fp32 on both sides, differently
 *   ordered sums: ~sqrt(K) 2^-24 for K <= 1024 terms, expf/sincosf within
 *   ulps); whole checkpoints within TOL_MODEL32 = 1e-4 of transformers fp32
 *   (the CPU backend meets 2e-5, test_forward.c; the GPU's cuBLAS sums in
 *   another order, and the pycoder-5m measurement is printed); the
 *   perplexity within TOL_PPL32 = 1e-5 relative (test_ppl.c holds the CPU
 *   to 1e-5 per window); the GPTQ W output equal to dequant(codes) in fp32
 *   exactly (the same float operation).
 */
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gq/backend.h"
#include "gq/gptq.h"
#include "gq/graph.h"
#include "gq/model.h"
#include "gq/ppl.h"
#include "gq/ref.h"
#include "gq/st.h"
#include "test.h"
#ifdef GQ_USE_CUDA
#include "gq/backend_cuda.h"
#endif

#include "cuda_test.h"

#ifdef GQ_USE_CUDA
/* ---- basics: transfers, conversions, accounting ------------------------------------------------------- */

static void test_basics(gq_backend *be) {
    set_op("basics");
    TEST_CHECK(strncmp(gq_backend_name(be), "cuda:", 5) == 0, "name '%s'", gq_backend_name(be));
    TEST_CHECK(gq_backend_is_gpu(be) && gq_backend_act_dtype(be) == GQ_DT_F16, "a GPU backend with F16 activations");
    TEST_CHECK(gq_be_act_bytes(be, 10) == 20, "act bytes");
    TEST_CHECK(gq_be_free_bytes(be) > 0, "free bytes");

    /* raw bytes over three staging chunks (64 MiB each) plus an odd tail */
    size_t nb = ((size_t)160 << 20) + 3;
    uint8_t *a = gq_malloc(nb), *b = gq_malloc(nb);
    for (size_t i = 0; i < nb; i++) a[i] = (uint8_t)(rng_next() >> 56);
    size_t peak0 = gq_be_peak_bytes(be);
    void *d = gq_be_alloc(be, nb);
    TEST_CHECK(d != NULL, "alloc 160 MiB: %s", gq_errmsg());
    TEST_CHECK(gq_be_peak_bytes(be) == peak0 + nb, "peak bytes %zu after a %zu-byte alloc, expected %zu", gq_be_peak_bytes(be), nb,
               peak0 + nb);
    TEST_OK(gq_be_upload(be, d, a, nb), "upload 160 MiB + 3");
    memset(b, 0, nb);
    TEST_OK(gq_be_download(be, b, d, nb), "download 160 MiB + 3");
    size_t first = nb;
    for (size_t i = 0; i < nb && first == nb; i++)
        if (a[i] != b[i]) first = i;
    TEST_CHECK(first == nb, "byte round trip differs first at byte %zu of %zu", first, nb);
    TEST_OK(gq_be_memset0(be, d, 1000), "memset0");
    TEST_OK(gq_be_download(be, b, d, 1001), "download");
    int zeros_ok = b[1000] == a[1000];
    for (int i = 0; i < 1000; i++) zeros_ok &= b[i] == 0;
    TEST_CHECK(zeros_ok, "memset0 cleared exactly 1000 bytes");
    gq_be_release(be, d);
    free(a), free(b);

    /* f32 -> f16 -> f32 over 2.5 chunks: round to nearest even, as gq_round_f16 */
    size_t n = (size_t)40 << 20;
    float *x = gq_malloc(n * sizeof(float)), *y = gq_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(rng_normal() * pow(2.0, (int)(rng_next() % 40) - 25));
    const float special[] = {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, -70000.0f, 5.96e-8f, 2.98e-8f, 2.99e-8f,
                             1e-10f, 1.0009765625f, 1.00048828125f, 1.00146484375f, INFINITY};
    memcpy(x, special, sizeof special);
    d = up(be, x, n);
    down(be, y, d, n);
    size_t bad = n;
    for (size_t i = 0; i < n && bad == n; i++) {
        float want = gq_round_f16(x[i]);
        if (!(y[i] == want || (isnan(y[i]) && isnan(want))) || signbit(y[i]) != signbit(want)) bad = i;
    }
    TEST_CHECK(bad == n, "f32 -> f16 -> f32 differs from gq_round_f16 first at %zu: x %.9g, got %.9g, want %.9g",
               bad, bad < n ? x[bad] : 0.0, bad < n ? y[bad] : 0.0, bad < n ? gq_round_f16(x[bad]) : 0.0);
    /* copy_act */
    void *d2 = gq_be_alloc(be, gq_be_act_bytes(be, 1000));
    TEST_OK(gq_be_copy_act(be, d2, (char *)d + 2 * 7, 1000), "copy_act");
    down(be, y, d2, 1000);
    int copy_ok = 1;
    for (int i = 0; i < 1000; i++) copy_ok &= y[i] == gq_round_f16(x[7 + i]) || isnan(x[7 + i]);
    TEST_CHECK(copy_ok, "copy_act moved 1000 elements from offset 7");
    gq_be_release(be, d2);
    gq_be_release(be, d);

    /* weights: f32 (RNE), raw f16 (bit exact), raw bf16 (bf16 -> f16 RNE) */
    const int R = 37, C = 45;
    uint16_t *h16 = gq_malloc(sizeof(uint16_t) * R * C), *hb = gq_malloc(sizeof(uint16_t) * R * C);
    for (int i = 0; i < R * C; i++) {
        h16[i] = gq_f32_to_f16(x[100 + i]);
        hb[i] = gq_f32_to_bf16(x[5000 + i]);
    }
    gq_bweight w;
    int ok_w = 1, ok_h = 1, ok_b = 1;
    TEST_OK(gq_be_weight_upload(be, &w, x + 100, R, C), "weight upload f32");
    TEST_CHECK(w.dtype == GQ_DT_F16 && w.rows == R && w.cols == C, "weights are F16 [%d][%d] on the device", R, C);
    down(be, y, w.data, (size_t)R * C);
    for (int i = 0; i < R * C; i++) ok_w &= y[i] == gq_round_f16(x[100 + i]);
    gq_be_weight_free(be, &w);
    TEST_OK(gq_be_weight_upload_raw(be, &w, h16, GQ_DT_F16, R, C), "weight upload raw f16");
    down(be, y, w.data, (size_t)R * C);
    for (int i = 0; i < R * C; i++) ok_h &= gq_f32_to_f16(y[i]) == h16[i];
    gq_be_weight_free(be, &w);
    TEST_OK(gq_be_weight_upload_raw(be, &w, hb, GQ_DT_BF16, R, C), "weight upload raw bf16");
    down(be, y, w.data, (size_t)R * C);
    for (int i = 0; i < R * C; i++) ok_b &= y[i] == gq_round_f16(gq_bf16_to_f32(hb[i]));
    gq_be_weight_free(be, &w);
    TEST_CHECK(ok_w && ok_h && ok_b, "weight conversions exact: f32 %d, f16 %d, bf16 %d", ok_w, ok_h, ok_b);
    free(h16), free(hb), free(x), free(y);
}

/* --precision fp32: fp32 activations and weights, every transfer and conversion exact. */
static void test_basics_f32(gq_backend *be) {
    set_op("basics fp32");
    TEST_CHECK(gq_backend_act_dtype(be) == GQ_DT_F32 && gq_be_act_bytes(be, 10) == 40, "F32 activations");
    const size_t n = ((size_t)20 << 20) + 5; /* 80 MiB of f32: two staging chunks and a tail */
    float *x = rand_h(n, 1.0f), *y = gq_malloc(n * sizeof(float));
    const float special[] = {65520.0f, -70000.0f, 1e-10f, 2.98e-8f, 1.00048828125f, -0.0f, 1e30f};
    memcpy(x, special, sizeof special);
    void *d = up(be, x, n);
    down(be, y, d, n);
    TEST_CHECK(memcmp(x, y, n * sizeof(float)) == 0, "f32 activations round-trip bit for bit");
    void *d2 = gq_be_alloc(be, gq_be_act_bytes(be, 1000));
    TEST_OK(gq_be_copy_act(be, d2, (char *)d + 4 * 7, 1000), "copy_act");
    down(be, y, d2, 1000);
    TEST_CHECK(memcmp(x + 7, y, 1000 * sizeof(float)) == 0, "copy_act moved 1000 f32 elements from offset 7");
    gq_be_release(be, d2), gq_be_release(be, d);
    const int R = 37, C = 45;
    uint16_t *h16 = gq_malloc(sizeof(uint16_t) * R * C), *hb = gq_malloc(sizeof(uint16_t) * R * C);
    for (int i = 0; i < R * C; i++) h16[i] = gq_f32_to_f16(x[100 + i]), hb[i] = gq_f32_to_bf16(x[5000 + i]);
    gq_bweight w;
    int ok_w = 1, ok_h = 1, ok_b = 1;
    TEST_OK(gq_be_weight_upload(be, &w, x + 100, R, C), "weight upload f32");
    TEST_CHECK(w.dtype == GQ_DT_F32, "weights are F32 on the device");
    down(be, y, w.data, (size_t)R * C);
    for (int i = 0; i < R * C; i++) ok_w &= y[i] == x[100 + i];
    gq_be_weight_free(be, &w);
    TEST_OK(gq_be_weight_upload_raw(be, &w, h16, GQ_DT_F16, R, C), "weight upload raw f16");
    down(be, y, w.data, (size_t)R * C);
    for (int i = 0; i < R * C; i++) ok_h &= y[i] == gq_f16_to_f32(h16[i]);
    gq_be_weight_free(be, &w);
    TEST_OK(gq_be_weight_upload_raw(be, &w, hb, GQ_DT_BF16, R, C), "weight upload raw bf16");
    down(be, y, w.data, (size_t)R * C);
    for (int i = 0; i < R * C; i++) ok_b &= y[i] == gq_bf16_to_f32(hb[i]);
    gq_be_weight_free(be, &w);
    TEST_CHECK(ok_w && ok_h && ok_b, "fp32 weight conversions exact: f32 %d, f16 %d, bf16 %d", ok_w, ok_h, ok_b);
    /* set_rows from fp16 rows into an F32 weight (the raw checkpoint path) */
    TEST_OK(gq_be_weight_alloc(be, &w, R, C), "weight alloc");
    TEST_CHECK(w.dtype == GQ_DT_F32, "gq_be_weight_alloc gives F32 weights");
    TEST_OK(gq_be_weight_set_rows(be, &w, 0, R, h16, GQ_DT_F16), "set_rows f16");
    down(be, y, w.data, (size_t)R * C);
    ok_h = 1;
    for (int i = 0; i < R * C; i++) ok_h &= y[i] == gq_f16_to_f32(h16[i]);
    TEST_CHECK(ok_h, "set_rows f16 -> f32 exact");
    gq_be_weight_free(be, &w);
    free(h16), free(hb), free(x), free(y);
}

/* ---- forward ops vs the CPU backend --------------------------------------------------------------------- */

/* Run the same op on both backends: inputs host arrays (already fp16
 * values), outputs poisoned, downloaded, compared. */
static void test_linear(pair *P, int T, int in, int out, int ldx, int ldy, int with_bias, int accumulate) {
    char what[160];
    snprintf(what, sizeof what, "linear T=%d in=%d out=%d ldx=%d ldy=%d bias=%d acc=%d", T, in, out, ldx, ldy,
             with_bias, accumulate);
    set_op(what);
    float *X = rand_h((size_t)T * ldx, 1.0f), *W = rand_h((size_t)out * in, 0.05f), *b = rand_h((size_t)out, 1.0f);
    float *Y0 = nan_vec((size_t)T * ldy), *Yg = nan_vec((size_t)T * ldy), *Yc = nan_vec((size_t)T * ldy);
    if (accumulate)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < out; j++) Y0[(size_t)t * ldy + j] = gq_round_f16(rng_normal());
    gq_backend *bes[2] = {P->gpu, P->cpu};
    float *res[2] = {Yg, Yc};
    for (int k = 0; k < 2; k++) {
        gq_backend *be = bes[k];
        gq_bweight w, bw = {0};
        TEST_OK(gq_be_weight_upload(be, &w, W, out, in), "upload W");
        if (with_bias) TEST_OK(gq_be_weight_upload(be, &bw, b, 1, out), "upload bias");
        void *dX = up(be, X, (size_t)T * ldx), *dY = up(be, Y0, (size_t)T * ldy);
        TEST_OK(gq_be_linear(be, dY, ldy, dX, ldx, T, &w, with_bias ? &bw : NULL, accumulate), "%s", what);
        down(be, res[k], dY, (size_t)T * ldy);
        gq_be_weight_free(be, &w), gq_be_weight_free(be, &bw);
        gq_be_release(be, dX), gq_be_release(be, dY);
    }
    compare(what, Yg, Yc, T, out, ldy, TOL_OP);
    free(X), free(W), free(b), free(Y0), free(Yg), free(Yc);
}

static void test_rmsnorm(pair *P, int T, int d, int ldx, int ldy) {
    char what[128];
    snprintf(what, sizeof what, "rmsnorm T=%d d=%d ldx=%d ldy=%d", T, d, ldx, ldy);
    set_op(what);
    float *X = rand_h((size_t)T * ldx, 3.0f), *g = rand_h((size_t)d, 1.0f);
    float *Y[2] = {nan_vec((size_t)T * ldy), nan_vec((size_t)T * ldy)};
    gq_backend *bes[2] = {P->gpu, P->cpu};
    for (int k = 0; k < 2; k++) {
        gq_bweight w;
        TEST_OK(gq_be_weight_upload(bes[k], &w, g, 1, d), "upload norm weight");
        void *dX = up(bes[k], X, (size_t)T * ldx), *dY = up(bes[k], Y[k], (size_t)T * ldy);
        TEST_OK(gq_be_rmsnorm(bes[k], dY, ldy, dX, ldx, T, d, &w, 1e-5f), "%s", what);
        down(bes[k], Y[k], dY, (size_t)T * ldy);
        gq_be_weight_free(bes[k], &w);
        gq_be_release(bes[k], dX), gq_be_release(bes[k], dY);
    }
    compare(what, Y[0], Y[1], T, d, ldy, TOL_OP);
    free(X), free(g), free(Y[0]), free(Y[1]);
}

static void test_rope(pair *P, int T, int nh, int hd, int ld, int pos0) {
    char what[128];
    snprintf(what, sizeof what, "rope T=%d heads=%d hd=%d ld=%d pos0=%d", T, nh, hd, ld, pos0);
    set_op(what);
    float *X = rand_h((size_t)T * ld, 1.0f), *inv = gq_malloc(sizeof(float) * (size_t)(hd / 2));
    for (int i = 0; i < hd / 2; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)hd);
    for (int t = 0; t < T; t++)
        for (int c = nh * hd; c < ld; c++) X[(size_t)t * ld + c] = NAN;
    float *Y[2] = {gq_malloc(sizeof(float) * (size_t)T * ld), gq_malloc(sizeof(float) * (size_t)T * ld)};
    gq_backend *bes[2] = {P->gpu, P->cpu};
    for (int k = 0; k < 2; k++) {
        void *dX = up(bes[k], X, (size_t)T * ld);
        TEST_OK(gq_be_rope(bes[k], dX, ld, T, nh, hd, pos0, inv), "%s", what);
        down(bes[k], Y[k], dX, (size_t)T * ld);
        gq_be_release(bes[k], dX);
    }
    compare(what, Y[0], Y[1], T, nh * hd, ld, TOL_OP);
    free(X), free(inv), free(Y[0]), free(Y[1]);
}

static void test_swiglu_add(pair *P, int T, int I, int lda, int ldgu) {
    char what[128];
    snprintf(what, sizeof what, "swiglu T=%d I=%d lda=%d ldgu=%d", T, I, lda, ldgu);
    set_op(what);
    float *GU = rand_h((size_t)T * ldgu, 3.0f), *X = rand_h((size_t)T * ldgu, 1.0f);
    GU[0] = -100.0f; /* exp(100) overflows: silu must give -0, not NaN */
    GU[1] = 100.0f;
    float *A[2] = {nan_vec((size_t)T * lda), nan_vec((size_t)T * lda)};
    float *S[2] = {nan_vec((size_t)T * lda), nan_vec((size_t)T * lda)};
    gq_backend *bes[2] = {P->gpu, P->cpu};
    for (int k = 0; k < 2; k++) {
        void *dGU = up(bes[k], GU, (size_t)T * ldgu), *dA = up(bes[k], A[k], (size_t)T * lda);
        void *dX = up(bes[k], X, (size_t)T * ldgu);
        TEST_OK(gq_be_swiglu(bes[k], dA, lda, dGU, ldgu, T, I), "%s", what);
        down(bes[k], A[k], dA, (size_t)T * lda);
        TEST_OK(gq_be_add(bes[k], dA, lda, dX, ldgu, T, I), "add after %s", what);
        down(bes[k], S[k], dA, (size_t)T * lda);
        gq_be_release(bes[k], dGU), gq_be_release(bes[k], dA), gq_be_release(bes[k], dX);
    }
    compare(what, A[0], A[1], T, I, lda, TOL_OP);
    /* add on the GPU: the CPU sum of the GPU's fp16 A and X, rounded once more */
    for (size_t i = 0; i < (size_t)T * lda; i++) S[1][i] = (i % lda) < (size_t)I ? A[0][i] + X[(i / lda) * ldgu + i % lda] : NAN;
    snprintf(what, sizeof what, "add T=%d d=%d ldy=%d ldx=%d", T, I, lda, ldgu);
    compare(what, S[0], S[1], T, I, lda, TOL_OP);
    free(GU), free(X), free(A[0]), free(A[1]), free(S[0]), free(S[1]);
}

static void test_hessian(pair *P, int T, int K, int ldx) {
    char what[128];
    snprintf(what, sizeof what, "hessian_accum T=%d K=%d ldx=%d (twice, upper triangle)", T, K, ldx);
    set_op(what);
    float *X = rand_h((size_t)T * ldx, 1.0f), *H0 = gq_malloc(sizeof(float) * (size_t)K * K);
    for (int i = 0; i < K; i++) /* a symmetric start, as accumulation over sequences has */
        for (int j = i; j < K; j++) H0[(size_t)i * K + j] = H0[(size_t)j * K + i] = 10.0f * rng_normal();
    float *H[2] = {gq_malloc(sizeof(float) * (size_t)K * K), gq_malloc(sizeof(float) * (size_t)K * K)};
    gq_backend *bes[2] = {P->gpu, P->cpu};
    for (int k = 0; k < 2; k++) {
        void *dX = up(bes[k], X, (size_t)T * ldx);
        float *dH = gq_be_alloc(bes[k], sizeof(float) * (size_t)K * K);
        gq_be_upload(bes[k], dH, H0, sizeof(float) * (size_t)K * K);
        TEST_OK(gq_be_hessian_accum(bes[k], dH, dX, ldx, T, K), "%s", what);
        TEST_OK(gq_be_hessian_accum(bes[k], dH, dX, ldx, T, K), "%s (2)", what);
        gq_be_download(bes[k], H[k], dH, sizeof(float) * (size_t)K * K);
        gq_be_release(bes[k], dX), gq_be_release(bes[k], dH);
    }
    for (int i = 0; i < K; i++) /* the contract is the upper triangle: compare only that */
        for (int j = 0; j < i; j++) H[0][(size_t)i * K + j] = H[1][(size_t)i * K + j] = 0.0f;
    compare(what, H[0], H[1], K, K, K, TOL_F32);
    free(X), free(H0), free(H[0]), free(H[1]);
}

/* Attention on the GPU with kernel `ver` (0 auto, 1, 2) vs the CPU. */
static void test_attention(pair *P, int ver, int Tq, int Tk, int nh, int nkv, int hd, int pad) {
    int ldq = nh * hd + pad, ldk = nkv * hd + 2 * pad, ldv = nkv * hd + 3 * pad, ldo = nh * hd + pad;
    char what[160];
    snprintf(what, sizeof what, "attention v%d Tq=%d Tk=%d heads=%d/%d hd=%d pad=%d", ver, Tq, Tk, nh, nkv, hd, pad);
    set_op(what);
    /* q, k of sd 1.5: scores ~ N(0, 5), peaked softmaxes as in trained models */
    float *Q = rand_h((size_t)Tq * ldq, 1.5f), *K = rand_h((size_t)Tk * ldk, 1.5f), *V = rand_h((size_t)Tk * ldv, 1.0f);
    float *O[2] = {nan_vec((size_t)Tq * ldo), nan_vec((size_t)Tq * ldo)};
    gq_backend *bes[2] = {P->gpu, P->cpu};
    int old = gq_cuda_set_attention_kernel(P->gpu, ver);
    for (int k = 0; k < 2; k++) {
        void *dQ = up(bes[k], Q, (size_t)Tq * ldq), *dK = up(bes[k], K, (size_t)Tk * ldk);
        void *dV = up(bes[k], V, (size_t)Tk * ldv), *dO = up(bes[k], O[k], (size_t)Tq * ldo);
        TEST_OK(gq_be_attention(bes[k], dO, ldo, dQ, ldq, dK, ldk, dV, ldv, Tq, Tk, nh, nkv, hd), "%s", what);
        down(bes[k], O[k], dO, (size_t)Tq * ldo);
        gq_be_release(bes[k], dQ), gq_be_release(bes[k], dK), gq_be_release(bes[k], dV), gq_be_release(bes[k], dO);
    }
    gq_cuda_set_attention_kernel(P->gpu, old);
    compare(what, O[0], O[1], Tq, nh * hd, ldo, ver == 1 || g_f32 ? TOL_OP : TOL_ATT2);
    free(Q), free(K), free(V), free(O[0]), free(O[1]);
}

/* One batched decode step (gq_be_decode_attention) against the CPU backend's (rope, cache append and
 * attention of each row, in fp32): B rows of their own slots and positions in shared caches of
 * `slots` x max_len positions, random earlier keys. Compared: O, the rotated q/k in QKV, and both
 * caches (the new rows; the rest must be untouched). */
static void test_decode(pair *P, int B, int nh, int nkv, int hd, int max_len, const int *slot, const int *pos) {
    char what[160];
    snprintf(what, sizeof what, "decode attention B=%d heads=%d/%d hd=%d", B, nh, nkv, hd);
    set_op(what);
    const int nq = nh * hd, kvd = nkv * hd, ldqkv = nq + 2 * kvd + 8, ldo = nq + 8, nslots = 8;
    const size_t stride = (size_t)max_len * kvd, ncache = (size_t)nslots * stride;
    float *qkv = rand_h((size_t)B * ldqkv, 1.5f), *kc = rand_h(ncache, 1.5f), *vc = rand_h(ncache, 1.0f);
    float inv[128];
    for (int i = 0; i < hd / 2; i++) inv[i] = (float)(1.0 / pow(10000.0, 2.0 * i / hd));
    float *O[2], *Q2[2], *K2[2], *V2[2];
    gq_backend *bes[2] = {P->gpu, P->cpu};
    for (int k = 0; k < 2; k++) {
        O[k] = nan_vec((size_t)B * ldo);
        Q2[k] = gq_malloc(sizeof(float) * (size_t)B * ldqkv);
        K2[k] = gq_malloc(sizeof(float) * ncache);
        V2[k] = gq_malloc(sizeof(float) * ncache);
        void *dq = up(bes[k], qkv, (size_t)B * ldqkv), *dk = up(bes[k], kc, ncache), *dv = up(bes[k], vc, ncache);
        void *dO = up(bes[k], O[k], (size_t)B * ldo);
        TEST_OK(gq_be_decode_attention(bes[k], dO, ldo, dq, ldqkv, B, dk, dv, stride, kvd, slot, pos, nh, nkv, hd, inv),
                "%s", what);
        down(bes[k], O[k], dO, (size_t)B * ldo);
        down(bes[k], Q2[k], dq, (size_t)B * ldqkv);
        down(bes[k], K2[k], dk, ncache);
        down(bes[k], V2[k], dv, ncache);
        gq_be_release(bes[k], dq), gq_be_release(bes[k], dk), gq_be_release(bes[k], dv), gq_be_release(bes[k], dO);
    }
    char w2[200];
    compare(what, O[0], O[1], B, nq, ldo, TOL_OP);
    snprintf(w2, sizeof w2, "%s: rotated q | k | v", what);
    compare(w2, Q2[0], Q2[1], B, nq + 2 * kvd, nq + 2 * kvd, TOL_OP);
    snprintf(w2, sizeof w2, "%s: K cache", what);
    compare(w2, K2[0], K2[1], nslots * max_len, kvd, kvd, TOL_OP);
    snprintf(w2, sizeof w2, "%s: V cache", what);
    compare(w2, V2[0], V2[1], nslots * max_len, kvd, kvd, TOL_OP);
    free(qkv), free(kc), free(vc);
    for (int k = 0; k < 2; k++) free(O[k]), free(Q2[k]), free(K2[k]), free(V2[k]);
}

/* Attention kernel `version` forced on a call it does not support (nh heads of hd, all leading
 * dimensions ld, 4 queries): GQ_ERR_UNSUPPORTED naming the reason. */
static void attention_refused(pair *P, int version, int nh, int hd, int ld, const char *why) {
    int old = gq_cuda_set_attention_kernel(P->gpu, version);
    void *b = gq_be_alloc(P->gpu, 4 * 4096);
    TEST_FAILS(gq_be_attention(P->gpu, b, ld, b, ld, b, ld, b, ld, 4, 4, nh, nh, hd), GQ_ERR_UNSUPPORTED, why);
    gq_be_release(P->gpu, b);
    gq_cuda_set_attention_kernel(P->gpu, old);
}

static void test_attention_limits(pair *P) {
    set_op("attention limits");
    if (g_f32) {
        attention_refused(P, 2, 1, 64, 64, "needs fp16 activations");
        attention_refused(P, 3, 1, 96, 96, "head_dim 64 or 128 (got 96)");
    } else {
        attention_refused(P, 2, 2, 32, 64, "head_dim 64 or 128 (got 32)");
        attention_refused(P, 2, 2, 64, 132, "multiples of 8");
        attention_refused(P, 3, 1, 64, 64, "needs fp32 activations");
    }
    TEST_CHECK(gq_cuda_set_attention_kernel(P->cpu, 1) == -1, "attention knob refuses a CPU backend");
}

static void test_nll(pair *P, int T, int d, int vocab, int ldx) {
    char what[128];
    snprintf(what, sizeof what, "nll T=%d d=%d vocab=%d ldx=%d", T, d, vocab, ldx);
    set_op(what);
    float *X = rand_h((size_t)T * ldx, 1.0f), *W = rand_h((size_t)vocab * d, 0.3f);
    int32_t *tg = gq_malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) tg[t] = t % 7 == 3 ? -1 : (int32_t)(rng_next() % (uint64_t)vocab);
    double s[2] = {0, 0}, s2[2] = {0, 0};
    int64_t n[2] = {0, 0}, n2[2] = {0, 0};
    float *L[2] = {nan_vec((size_t)T * vocab), nan_vec((size_t)T * vocab)};
    gq_backend *bes[2] = {P->gpu, P->cpu};
    for (int k = 0; k < 2; k++) {
        gq_bweight w;
        TEST_OK(gq_be_weight_upload(bes[k], &w, W, vocab, d), "upload lm head");
        void *dX = up(bes[k], X, (size_t)T * ldx);
        TEST_OK(gq_be_nll(bes[k], dX, ldx, T, &w, tg, &s[k], &n[k], NULL), "%s", what);
        TEST_OK(gq_be_nll(bes[k], dX, ldx, T, &w, tg, &s2[k], &n2[k], L[k]), "%s with logits", what);
        gq_be_weight_free(bes[k], &w);
        gq_be_release(bes[k], dX);
    }
    TEST_CHECK(n[0] == n[1] && n2[0] == n[1], "%s: count gpu %lld / %lld, cpu %lld", what, (long long)n[0],
               (long long)n2[0], (long long)n[1]);
    TEST_NEAR(s[0], s[1], TOL_F32 * fabs(s[1]), "%s: nll sum gpu vs cpu (rel tol %g)", what, TOL_F32);
    TEST_NEAR(s2[0], s[1], TOL_F32 * fabs(s[1]), "%s: nll sum with logits_out", what);
    compare(what, L[0], L[1], T, vocab, vocab, TOL_F32);
    free(X), free(W), free(tg), free(L[0]), free(L[1]);
}

/* ---- whole checkpoints vs transformers ------------------------------------------------------------------- */

static float *ref_tensor(gq_st *st, const char *name, int64_t *numel) {
    const gq_st_tensor *t = gq_st_find(st, name);
    TEST_CHECK(t != NULL, "reference tensor '%s' present", name);
    if (!t) return NULL;
    float *v = gq_malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
    TEST_OK(gq_st_read_f32(st, t, v), "read %s", name);
    *numel = t->numel;
    return v;
}

static double rel_l2(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* The forward of `dir` on the GPU, layer by layer, against the hidden states
 * and logits of `ref_path` (tests/ref/gen_forward.py, transformers fp32). */
static void test_model(gq_backend *be, const char *dir, const char *ref_path) {
    set_op(dir);
    gq_model m;
    gq_st *ref = NULL;
    TEST_OK(gq_model_open(&m, dir), "open %s", dir);
    TEST_OK(gq_st_open(&ref, ref_path), "open %s", ref_path);
    if (!m.st || !ref) {
        if (m.st) gq_model_close(&m);
        gq_st_close(ref);
        return;
    }
    const gq_config *c = &m.cfg;
    const gq_st_tensor *ti = gq_st_find(ref, "ids");
    TEST_CHECK(ti && ti->dtype == GQ_DT_I32, "%s: ids", ref_path);
    if (!ti || ti->dtype != GQ_DT_I32) {
        gq_st_close(ref), gq_model_close(&m);
        return;
    }
    const int32_t *ids = ti->data;
    const int T = (int)ti->numel, d = c->hidden;
    int64_t n = 0;
    float *inv = gq_malloc(sizeof(float) * (size_t)(c->rot_dim / 2)), *x = gq_malloc(sizeof(float) * (size_t)T * d);
    gq_rope_inv_freq(c, T, inv);
    TEST_OK(gq_model_embed(&m, ids, T, x), "embed");
    void *dx = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)T * d));
    gq_be_upload_f32(be, dx, x, (size_t)T * d);
    gq_fwd_scratch s;
    TEST_OK(gq_fwd_scratch_init(be, c, T, &s), "scratch");
    for (int l = 0; l < c->n_layers; l++) {
        gq_blayer bl;
        char name[32];
        TEST_OK(gq_blayer_load(be, &m, l, &bl), "%s: load layer %d", dir, l);
        TEST_OK(gq_fwd_layer(be, c, l, &bl, dx, T, inv, &s), "%s: forward layer %d on the GPU", dir, l);
        gq_blayer_free(be, &bl);
        down(be, x, dx, (size_t)T * d);
        snprintf(name, sizeof name, "hidden.%d", l + 1);
        float *hr = ref_tensor(ref, name, &n);
        if (!hr) continue;
        double e = rel_l2(x, hr, (size_t)T * d);
        TEST_CHECK(n == (int64_t)T * d && e <= TOL_MODEL_NOW,
                   "%s: layer %d output (%d tokens x %d) rel err %.3g > %g", dir, l, T, d, e, TOL_MODEL_NOW);
        fprintf(stderr, "  %s layer %d: rel err %.3g vs transformers fp32\n", dir, l, e);
        free(hr);
    }
    gq_bhead head;
    TEST_OK(gq_bhead_load(be, &m, &head), "load head");
    float *logits = gq_malloc(sizeof(float) * (size_t)T * c->vocab);
    int32_t *tg = gq_malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) tg[t] = t + 1 < T ? ids[t + 1] : -1;
    double nll = 0;
    int64_t cnt = 0;
    TEST_OK(gq_bhead_nll(be, c, &head, s.xn, dx, d, T, tg, &nll, &cnt, logits), "final norm and logits");
    float *lr = ref_tensor(ref, "logits", &n);
    const gq_st_tensor *tp = gq_st_find(ref, "logit_pos");
    const int32_t *pos = tp ? tp->data : NULL;
    const int rows = pos ? (int)tp->numel : T;
    if (lr && n == (int64_t)rows * c->vocab) {
        double worst = 0;
        int wr = 0;
        for (int r = 0; r < rows; r++) {
            double e = rel_l2(logits + (size_t)(pos ? pos[r] : r) * c->vocab, lr + (size_t)r * c->vocab,
                              (size_t)c->vocab);
            if (!(e <= worst)) worst = e, wr = r;
        }
        TEST_CHECK(worst <= TOL_MODEL_NOW, "%s: logits worst row %d rel err %.3g > %g", dir, wr, worst,
                   TOL_MODEL_NOW);
        fprintf(stderr, "  %s logits: worst row rel err %.3g vs transformers fp32\n", dir, worst);
    } else {
        TEST_CHECK(0, "%s: reference logits: %lld values for %d rows of %d", dir, (long long)n, rows, c->vocab);
    }
    free(lr), free(tg), free(logits), free(x), free(inv);
    gq_bhead_free(be, &head);
    gq_fwd_scratch_free(be, &s);
    gq_be_release(be, dx);
    gq_st_close(ref);
    gq_model_close(&m);
}

/* Perplexity of the first 4 x 256 tokens of the eval text (test_ppl's (b)). */
static void test_ppl_gpu(gq_backend *be) {
    set_op("ppl pycoder-5m 4 x 256");
    gq_model m;
    gq_st *ref = NULL;
    TEST_OK(gq_model_open(&m, gq_test_data("pycoder-5m")), "open pycoder-5m");
    TEST_OK(gq_st_open(&ref, gq_test_data("fwd/pycoder5m_ref.safetensors")), "open the reference");
    const gq_st_tensor *ti = ref ? gq_st_find(ref, "ppl_ids") : NULL, *tp = ref ? gq_st_find(ref, "ppl") : NULL;
    if (m.st && ti && tp && ti->numel == 1024) {
        gq_ppl_opts o;
        gq_ppl_opts_default(&o);
        o.seqlen = 256;
        o.progress = 0;
        gq_ppl_result r;
        const double want = *(const double *)tp->data;
        TEST_OK(gq_ppl_ids(&m, be, ti->data, 1024, &o, &r), "ppl of 4 x 256 on the GPU");
        if (r.n_windows == 4) {
            TEST_NEAR(r.ppl, want, TOL_PPL_NOW * want, "pycoder-5m ppl of 4 x 256 on the GPU (fp%d) vs transformers fp32",
                      g_f32 ? 32 : 16);
            fprintf(stderr, "  pycoder-5m 4 x 256: ppl %.6f on the GPU (fp%d), transformers fp32 %.6f\n", r.ppl,
                    g_f32 ? 32 : 16, want);
        }
        gq_ppl_result_free(&r);
    } else {
        TEST_CHECK(0, "pycoder-5m and its reference perplexity tensors are readable");
    }
    gq_st_close(ref);
    if (m.st) gq_model_close(&m);
}

/* ---- timing sanity (printed, not asserted) ---------------------------------------------------------------- */

static double timed(gq_backend *be, double t0) {
    gq_be_sync(be);
    return gq_now() - t0;
}

static void timing_print(pair *P) {
    set_op("timing");
    gq_backend *be = P->gpu;
    const int T = 2048, d = 4096, I = 11008, K = 4096, rows = 4096;
    float *x = rand_h((size_t)T * I, 1.0f), *wv = rand_h((size_t)I * d, 0.02f);
    void *X = up(be, x, (size_t)T * I), *Y = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)T * I));
    gq_bweight w;
    gq_be_weight_upload(be, &w, wv, I, d);
    float *H = gq_be_alloc(be, sizeof(float) * (size_t)K * K);
    gq_be_memset0(be, H, sizeof(float) * (size_t)K * K);
    gq_be_linear(be, Y, I, X, d, T, &w, NULL, 0); /* warm-up */
    double t0 = gq_now();
    for (int i = 0; i < 10; i++) gq_be_linear(be, Y, I, X, d, T, &w, NULL, 0);
    double tl = timed(be, t0) / 10;
    t0 = gq_now();
    for (int i = 0; i < 10; i++) gq_be_hessian_accum(be, H, X, d, T, K);
    double th = timed(be, t0) / 10;
    double ta[3] = {0, 0, 0};
    for (int v = 1; v <= 2; v++) { /* 32 heads x 128, T = 2048, causal */
        int old = gq_cuda_set_attention_kernel(be, v);
        gq_be_attention(be, Y, 4096, X, 3 * 4096, (char *)X + 2 * 4096, 3 * 4096, (char *)X + 4 * 4096, 3 * 4096,
                        T / 2, T / 2, 32, 32, 128);
        t0 = gq_now();
        gq_be_attention(be, Y, 4096, X, 3 * 4096, (char *)X + 2 * 4096, 3 * 4096, (char *)X + 4 * 4096, 3 * 4096,
                        T / 2, T / 2, 32, 32, 128);
        ta[v] = timed(be, t0);
        gq_cuda_set_attention_kernel(be, old);
    }
    gq_be_weight_free(be, &w);
    gq_bweight wq;
    gq_be_weight_upload(be, &wq, wv, rows, K);
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    gq_qresult r;
    t0 = gq_now();
    int st = gq_be_gptq(be, &p, H, 2.0 / 128, &wq, &r);
    double tg = gq_now() - t0;
    gq_cuda_gptq_timing gt = {0};
    gq_cuda_last_gptq_timing(be, &gt);
    double attn_flops = 2.0 * 2.0 * (T / 2) * (T / 2) * 128 * 32; /* causal half of 4 T^2 hd per head */
    fprintf(stderr,
            "timing (not asserted) on %s:\n"
            "  linear 2048 x 4096 -> 11008: %.3f ms, %.0f TFLOP/s\n"
            "  hessian_accum T 2048, K 4096 (upper panels): %.3f ms, %.0f TFLOP/s of the full product\n"
            "  attention T 1024, 32 heads x 128: v1 %.3f ms, v2 %.3f ms (%.0f TFLOP/s)\n"
            "  gptq 4096 x 4096 g128: %.3f s (%s; prep %.3f, factor %.3f, blocks %.3f, output %.3f)\n",
            gq_backend_name(be), 1e3 * tl, 2.0 * T * d * I / tl * 1e-12, 1e3 * th, 2.0 * T * K * K / th * 1e-12,
            1e3 * ta[1], 1e3 * ta[2], attn_flops / ta[2] * 1e-12, tg, st == GQ_OK ? "ok" : gq_errmsg(), gt.prep,
            gt.factor, gt.blocks, gt.output);
    gq_qresult_free(&r);
    gq_be_weight_free(be, &wq);
    gq_be_release(be, X), gq_be_release(be, Y), gq_be_release(be, H);
    free(x), free(wv);
}

/* Every op and the checkpoints on P->gpu in the current pass (g_f32). */
static void run_suite(pair *P) {
    const char *pass = g_f32 ? " (fp32)" : "";
    char title[64];
    snprintf(title, sizeof title, "cuda basics%s", pass);
    TEST_BEGIN(title);
    if (g_f32)
        test_basics_f32(P->gpu);
    else
        test_basics(P->gpu);
    snprintf(title, sizeof title, "cuda ops%s", pass);
    TEST_BEGIN(title);
    test_linear(P, 37, 96, 80, 96, 80, 0, 0);
    test_linear(P, 37, 96, 80, 104, 90, 1, 0); /* strided, bias */
    test_linear(P, 5, 512, 33, 520, 40, 1, 1); /* K 512, accumulate */
    test_linear(P, 1, 64, 256, 64, 256, 0, 1);
    test_linear(P, 300, 1024, 768, 1024, 768, 0, 0);
    test_linear(P, 64, 256, 128, 256, 136, 1, 1); /* bias add on 16-byte vectors */
    test_rmsnorm(P, 33, 96, 96, 96);      /* vectorised path */
    test_rmsnorm(P, 7, 250, 300, 260);    /* scalar path */
    test_rmsnorm(P, 5, 4096, 4096, 4096); /* full width */
    test_rope(P, 29, 3, 32, 3 * 32, 0);
    test_rope(P, 17, 2, 128, 300, 16000); /* strided, positions 16000.. */
    test_swiglu_add(P, 21, 48, 48, 96);
    test_swiglu_add(P, 9, 50, 64, 120);
    test_hessian(P, 70, 48, 48);
    test_hessian(P, 33, 600, 608);   /* K <= 2048: one GEMM of the whole square */
    test_hessian(P, 33, 2100, 2104); /* wider: panels of 512 columns (5), upper triangle only */
    test_nll(P, 45, 32, 300, 40);
    test_nll(P, 600, 16, 50000, 16); /* 2 chunks of 335 rows */
    snprintf(title, sizeof title, "cuda attention%s", pass);
    TEST_BEGIN(title);
    for (int vi = 0; vi < 2; vi++) { /* v1; v2 (tensor cores) in fp16, v3 (fp32 tiles) in fp32 */
        const int v = vi == 0 ? 1 : g_f32 ? 3 : 2;
        test_attention(P, v, 100, 100, 4, 4, 64, 0);    /* MHA, T not a multiple of 64 */
        test_attention(P, v, 100, 100, 4, 2, 64, 0);    /* GQA 2 */
        test_attention(P, v, 130, 130, 8, 2, 128, 8);   /* GQA 4, strided */
        test_attention(P, v, 1, 37, 4, 2, 64, 0);       /* decode step */
        test_attention(P, v, 1, 1000, 4, 1, 128, 8);    /* decode, one kv head, long cache */
        test_attention(P, v, 5, 37, 2, 1, 64, 0);       /* chunked prefill: 5 queries at 32..36 */
        test_attention(P, v, 1, 1, 2, 2, 64, 0);        /* a single token */
        test_attention(P, v, 300, 1000, 4, 2, 128, 0);  /* chunked prefill, 300 queries */
        test_attention(P, v, 517, 517, 2, 1, 128, 0);   /* odd T, 9 key tiles */
    }
    test_attention(P, 0, 1100, 1100, 2, 2, 64, 0); /* auto: v2 (v3 in fp32) */
    test_attention(P, g_f32 ? 3 : 2, 16384, 16384, 2, 1, 128, 0); /* the longest supported prefill */
    test_attention(P, 0, 1, 16384, 4, 1, 128, 0);     /* decode against a 16384-key cache (v1) */
    test_attention(P, 1, 40, 40, 3, 3, 32, 8);     /* hd 32: v1 only */
    test_attention(P, 1, 40, 40, 2, 1, 96, 0);     /* hd 96 */
    test_attention_limits(P);
    {
        const int slot[5] = {2, 0, 7, 1, 3}, pos[5] = {0, 7, 33, 200, 257};
        test_decode(P, 5, 4, 2, 64, 300, slot, pos);
        test_decode(P, 5, 8, 2, 128, 300, slot, pos);
        int s2[8], p2[8];
        for (int r = 0; r < 8; r++) s2[r] = 7 - r, p2[r] = (r * 37) % 299; /* every slot, one kv head */
        test_decode(P, 8, 4, 1, 64, 300, s2, p2);
        /* long caches: the keys cut into splits merged by decode_merge_kernel (16 and 8 splits on
         * a 132-SM card), one row far shorter than the other (its later splits are empty) */
        const int s3[2] = {1, 4}, p3[2] = {3000, 140}, s4[1] = {6}, p4[1] = {2047};
        test_decode(P, 2, 8, 2, 128, 3100, s3, p3);
        test_decode(P, 1, 32, 4, 128, 2100, s4, p4);
        /* fp16: head_dim 256 by decode_attn_h_kernel's 32-lane key groups; 96 by decode_attn_kernel */
        test_decode(P, 5, 4, 2, 256, 300, slot, pos);
        test_decode(P, 5, 4, 4, 96, 300, slot, pos);
    }
    snprintf(title, sizeof title, "cuda models%s", pass);
    TEST_BEGIN(title);
    test_model(P->gpu, gq_test_data("pycoder-5m"), gq_test_data("fwd/pycoder5m_ref.safetensors"));
    const char *tiny[] = {"fwd/tiny-llama3-bias-bf16", "fwd/tiny-linear-tied-f16", "fwd/tiny-dynamic-f32",
                          "fwd/tiny-gptq4-v1-actorder"};
    for (int i = 0; i < 4; i++) {
        char ref[512];
        snprintf(ref, sizeof ref, "%s/ref.safetensors", gq_test_data(tiny[i]));
        test_model(P->gpu, gq_test_data(tiny[i]), ref);
    }
    test_ppl_gpu(P->gpu);
}

static void run_gpu(void) {
    pair P = {0};
    TEST_OK(gq_backend_init(&P.gpu, "cuda:0"), "cuda backend");
    TEST_OK(gq_backend_init(&P.cpu, "cpu"), "cpu backend");
    if (P.gpu && P.cpu) {
        g_f32 = 0;
        run_suite(&P);
        TEST_BEGIN("cuda timing");
        timing_print(&P);
    }
    gq_backend_free(P.gpu);
    P.gpu = NULL;
    /* the same on a backend with --precision fp32 */
    TEST_OK(gq_backend_init(&P.gpu, "cuda:0"), "cuda backend for the fp32 pass");
    if (P.gpu && P.cpu) {
        TEST_OK(gq_backend_set_precision(P.gpu, "fp32"), "precision fp32");
        g_f32 = 1;
        run_suite(&P);
        g_f32 = 0;
    }
    gq_backend_free(P.gpu);
    gq_backend_free(P.cpu);
}
#endif /* GQ_USE_CUDA */

/* Paths that need no device: the registry and the knobs refuse cleanly. */
static void test_no_device(void) {
    TEST_BEGIN("cuda (no device)");
    gq_backend *be = NULL;
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");
    if (be) { /* the CPU backend has one arithmetic */
        TEST_OK(gq_backend_set_precision(be, "auto"), "precision auto on the CPU");
        TEST_OK(gq_backend_set_precision(be, "fp32"), "precision fp32 on the CPU");
        TEST_FAILS(gq_backend_set_precision(be, "fp16"), GQ_ERR_UNSUPPORTED, "CPU backend computes in fp32 only");
        TEST_FAILS(gq_backend_set_precision(be, "bf16"), GQ_ERR_ARG, "expected auto, fp16 or fp32");
        TEST_CHECK(gq_backend_act_dtype(be) == GQ_DT_F32, "still F32 after the refusals");
    }
    gq_backend_free(be);
    be = NULL;
#ifdef GQ_USE_CUDA
    int n = gq_cuda_device_count();
    TEST_CHECK(n >= 0, "device count %d", n);
    TEST_FAILS(gq_backend_cuda_init(&be, n), GQ_ERR_DEVICE, "present");
    TEST_CHECK(be == NULL, "no backend on error");
    TEST_FAILS(gq_cuda_device_info(n, NULL, 0, NULL, NULL, NULL, NULL), GQ_ERR_DEVICE, "present");
    if (n == 0) TEST_FAILS(gq_backend_init(&be, "cuda"), GQ_ERR_DEVICE, "no CUDA device found");
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");
    if (be) {
        TEST_CHECK(gq_cuda_set_attention_kernel(be, 1) == -1 && gq_cuda_set_hinv_mode(be, 0) == -1,
                   "knobs refuse a CPU backend");
        gq_cuda_gptq_timing t;
        TEST_FAILS(gq_cuda_last_gptq_timing(be, &t), GQ_ERR_ARG, "not a CUDA backend");
    }
    gq_backend_free(be);
#else
    TEST_FAILS(gq_backend_init(&be, "cuda"), GQ_ERR_UNSUPPORTED, "this gq build has no CUDA backend");
#endif
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    signal(SIGALRM, on_alarm);
    alarm(600);
    test_no_device();
#ifdef GQ_USE_CUDA
    if (gq_cuda_device_count() > 0) {
        char name[256] = "";
        size_t mem = 0;
        int sms = 0, ma = 0, mi = 0;
        gq_cuda_device_info(0, name, sizeof name, &mem, &sms, &ma, &mi);
        fprintf(stderr, "CUDA device 0: %s, sm_%d%d, %d SMs, %.1f GiB\n", name, ma, mi, sms, mem / 1073741824.0);
        run_gpu();
    } else {
        TEST_SKIP("no CUDA device: GPU tests skipped");
    }
#else
    TEST_SKIP("gq built without CUDA (make CUDA=0 or no nvcc): GPU tests skipped");
#endif
    return TEST_REPORT();
}
