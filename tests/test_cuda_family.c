/*
 * test_cuda_family.c -- the CUDA backend's family ops (layernorm, head_rmsnorm, glu / act, partial
 * rope, attention with scale / soft-cap / window, decode with them, gather / scatter rows, the
 * logit soft-cap) against the scalar reference of gq/ref.h, on fresh random inputs, in both
 * precisions (fp16 activations, then a backend with --precision fp32). Tolerances: tests/cuda_test.h
 * and the header of tests/test_cuda.c (TOL_F16 / TOL_ATT2 / TOL_F32, and 0 for gather: a copy).
 * Without a CUDA device (or without CUDA compiled in) it skips with a message.
 */
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gq/backend.h"
#include "gq/ref.h"
#include "test.h"
#ifdef GQ_USE_CUDA
#include "gq/backend_cuda.h"
#endif

#include "cuda_test.h"

#ifdef GQ_USE_CUDA

/* ---- family ops vs the scalar reference (gq/ref.h) ------------------------------------------------------
 *
 * The new ops and options are checked against the reference loops of gq/ref.h (double sums) on the
 * same fp16-valued inputs, with the tolerances above: one fp16 rounding of each output (TOL_F16;
 * TOL_ATT2 for attention v2, which also rounds P) or fp32 arithmetic against double (TOL_F32 in the
 * fp32 pass); a wrong pairing, mask, window edge, cap or index gives errors of order 1. */

/* Gates of sd `sd` with extremes where exp / tanh saturate (must give 0 or x, not NaN). */
static float *act_inputs(size_t n, float sd) {
    float *v = rand_h(n, sd);
    v[0] = -100.0f, v[1] = 100.0f, v[2] = -20.0f;
    return v;
}

static void test_glu_act(pair *P, int T, int I, int lda, int ldgu, gq_act_kind act) {
    char what[128];
    snprintf(what, sizeof what, "glu act=%d T=%d I=%d lda=%d ldgu=%d", (int)act, T, I, lda, ldgu);
    set_op(what);
    float *GU = act_inputs((size_t)T * ldgu, 3.0f), *A = nan_vec((size_t)T * lda), *Ar = nan_vec((size_t)T * lda);
    void *dGU = up(P->gpu, GU, (size_t)T * ldgu), *dA = up(P->gpu, A, (size_t)T * lda);
    TEST_OK(gq_be_glu(P->gpu, dA, lda, dGU, ldgu, T, I, act), "%s", what);
    down(P->gpu, A, dA, (size_t)T * lda);
    gq_glu_ref(Ar, lda, GU, ldgu, T, I, (int)act);
    compare(what, A, Ar, T, I, lda, TOL_OP);
    /* act in place on GU's gate columns; the up columns [I, 2I) and the padding must stay */
    snprintf(what, sizeof what, "act=%d T=%d n=%d ld=%d", (int)act, T, I, ldgu);
    float *X = gq_malloc(sizeof(float) * (size_t)T * ldgu), *Xr = gq_malloc(sizeof(float) * (size_t)T * ldgu);
    memcpy(Xr, GU, sizeof(float) * (size_t)T * ldgu);
    TEST_OK(gq_be_act(P->gpu, dGU, ldgu, T, I, act), "%s", what);
    down(P->gpu, X, dGU, (size_t)T * ldgu);
    gq_act_ref(Xr, ldgu, T, I, (int)act);
    compare(what, X, Xr, T, ldgu, ldgu, TOL_OP); /* all columns: the untouched ones are exact */
    gq_be_release(P->gpu, dGU), gq_be_release(P->gpu, dA);
    free(GU), free(A), free(Ar), free(X), free(Xr);
}

static void test_layernorm(pair *P, int T, int d, int ldx, int ldy, int with_bias) {
    char what[128];
    snprintf(what, sizeof what, "layernorm T=%d d=%d ldx=%d ldy=%d bias=%d", T, d, ldx, ldy, with_bias);
    set_op(what);
    float *X = rand_h((size_t)T * ldx, 3.0f), *g = rand_h((size_t)d, 1.0f), *b = rand_h((size_t)d, 0.5f);
    for (size_t i = 0; i < (size_t)T * ldx; i++) X[i] = g_f32 ? X[i] + 2.0f : gq_round_f16(X[i] + 2.0f); /* mean 2 */
    float *Y = nan_vec((size_t)T * ldy), *Yr = nan_vec((size_t)T * ldy);
    gq_bweight w, bw = {0};
    TEST_OK(gq_be_weight_upload(P->gpu, &w, g, 1, d), "upload ln weight");
    if (with_bias) TEST_OK(gq_be_weight_upload(P->gpu, &bw, b, 1, d), "upload ln bias");
    void *dX = up(P->gpu, X, (size_t)T * ldx), *dY = up(P->gpu, Y, (size_t)T * ldy);
    TEST_OK(gq_be_layernorm(P->gpu, dY, ldy, dX, ldx, T, d, &w, with_bias ? &bw : NULL, 1e-5f), "%s", what);
    down(P->gpu, Y, dY, (size_t)T * ldy);
    gq_layernorm_ref(Yr, ldy, X, ldx, T, d, g, with_bias ? b : NULL, 1e-5f);
    compare(what, Y, Yr, T, d, ldy, TOL_OP);
    gq_be_weight_free(P->gpu, &w), gq_be_weight_free(P->gpu, &bw);
    gq_be_release(P->gpu, dX), gq_be_release(P->gpu, dY);
    free(X), free(g), free(b), free(Y), free(Yr);
}

static void test_head_rmsnorm(pair *P, int T, int nh, int hd, int ld) {
    char what[128];
    snprintf(what, sizeof what, "head_rmsnorm T=%d heads=%d hd=%d ld=%d", T, nh, hd, ld);
    set_op(what);
    float *X = rand_h((size_t)T * ld, 3.0f), *g = rand_h((size_t)hd, 1.0f);
    for (int t = 0; t < T; t++) /* padding NaN: it must neither be read into a head nor written */
        for (int c = nh * hd; c < ld; c++) X[(size_t)t * ld + c] = NAN;
    float *Y = gq_malloc(sizeof(float) * (size_t)T * ld);
    gq_bweight w;
    TEST_OK(gq_be_weight_upload(P->gpu, &w, g, 1, hd), "upload head norm weight");
    void *dX = up(P->gpu, X, (size_t)T * ld);
    TEST_OK(gq_be_head_rmsnorm(P->gpu, dX, ld, T, nh, hd, &w, 1e-6f), "%s", what);
    down(P->gpu, Y, dX, (size_t)T * ld);
    gq_head_rmsnorm_ref(X, ld, T, nh, hd, g, 1e-6f);
    compare(what, Y, X, T, nh * hd, ld, TOL_OP);
    gq_be_weight_free(P->gpu, &w), gq_be_release(P->gpu, dX);
    free(X), free(g), free(Y);
}

static void test_rope_partial(pair *P, int T, int nh, int hd, int rot, int ld, int pos0) {
    char what[128];
    snprintf(what, sizeof what, "rope_partial T=%d heads=%d hd=%d rot=%d ld=%d pos0=%d", T, nh, hd, rot, ld, pos0);
    set_op(what);
    float *X = rand_h((size_t)T * ld, 1.0f), *inv = gq_malloc(sizeof(float) * (size_t)(rot / 2));
    for (int i = 0; i < rot / 2; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)rot);
    for (int t = 0; t < T; t++)
        for (int c = nh * hd; c < ld; c++) X[(size_t)t * ld + c] = NAN;
    float *Y = gq_malloc(sizeof(float) * (size_t)T * ld);
    void *dX = up(P->gpu, X, (size_t)T * ld);
    TEST_OK(gq_be_rope_partial(P->gpu, dX, ld, T, nh, hd, rot, pos0, inv), "%s", what);
    down(P->gpu, Y, dX, (size_t)T * ld);
    gq_rope_partial_ref(X, ld, T, nh, hd, rot, pos0, inv);
    compare(what, Y, X, T, nh * hd, ld, TOL_OP); /* dims rot.. of each head: exact */
    gq_be_release(P->gpu, dX);
    free(X), free(inv), free(Y);
}

/* gq_be_attention_ex with kernel `ver` against gq_attention_ex_ref. */
static void test_attention_ex(pair *P, int ver, int Tq, int Tk, int nh, int nkv, int hd, int pad, float scale,
                              float cap, int window) {
    int ldq = nh * hd + pad, ldk = nkv * hd + 2 * pad, ldv = nkv * hd + 3 * pad, ldo = nh * hd + pad;
    char what[200];
    snprintf(what, sizeof what, "attention_ex v%d Tq=%d Tk=%d heads=%d/%d hd=%d pad=%d scale=%g cap=%g window=%d", ver,
             Tq, Tk, nh, nkv, hd, pad, scale, cap, window);
    set_op(what);
    float *Q = rand_h((size_t)Tq * ldq, 1.5f), *K = rand_h((size_t)Tk * ldk, 1.5f), *V = rand_h((size_t)Tk * ldv, 1.0f);
    float *O = nan_vec((size_t)Tq * ldo), *Or = nan_vec((size_t)Tq * ldo);
    const gq_attn_opts o = {scale, cap, window};
    int old = gq_cuda_set_attention_kernel(P->gpu, ver);
    void *dQ = up(P->gpu, Q, (size_t)Tq * ldq), *dK = up(P->gpu, K, (size_t)Tk * ldk);
    void *dV = up(P->gpu, V, (size_t)Tk * ldv), *dO = up(P->gpu, O, (size_t)Tq * ldo);
    TEST_OK(gq_be_attention_ex(P->gpu, dO, ldo, dQ, ldq, dK, ldk, dV, ldv, Tq, Tk, nh, nkv, hd, &o), "%s", what);
    down(P->gpu, O, dO, (size_t)Tq * ldo);
    gq_cuda_set_attention_kernel(P->gpu, old);
    gq_attention_ex_ref(Or, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, nh, nkv, hd, scale, cap, window);
    compare(what, O, Or, Tq, nh * hd, ldo, ver == 1 || g_f32 ? TOL_OP : TOL_ATT2);
    gq_be_release(P->gpu, dQ), gq_be_release(P->gpu, dK), gq_be_release(P->gpu, dV), gq_be_release(P->gpu, dO);
    free(Q), free(K), free(V), free(O), free(Or);
}

/* gq_be_decode_attention_ex (partial rotary, options) against the reference done row by row: rope_partial_ref
 * on the row's q | k, rounded to the activation dtype as the GPU stores it, k and v into the caches at
 * pos[r], attention_ex_ref of the one query over keys 0 .. pos[r] of its slot (distinct slots). */
static void test_decode_ex(pair *P, int B, int nh, int nkv, int hd, int rot, int max_len, const int *slot,
                           const int *pos, gq_attn_opts o) {
    char what[200];
    snprintf(what, sizeof what, "decode_attention_ex B=%d heads=%d/%d hd=%d rot=%d scale=%g cap=%g window=%d", B, nh,
             nkv, hd, rot, o.scale, o.softcap, o.window);
    set_op(what);
    const int nq = nh * hd, kvd = nkv * hd, ldqkv = nq + 2 * kvd + 8, ldo = nq + 8, nslots = 8;
    const size_t stride = (size_t)max_len * kvd, ncache = (size_t)nslots * stride;
    float *qkv = rand_h((size_t)B * ldqkv, 1.5f), *kc = rand_h(ncache, 1.5f), *vc = rand_h(ncache, 1.0f);
    float inv[128];
    for (int i = 0; i < rot / 2; i++) inv[i] = (float)(1.0 / pow(10000.0, 2.0 * i / rot));
    float *O = nan_vec((size_t)B * ldo), *Q2 = gq_malloc(sizeof(float) * (size_t)B * ldqkv);
    float *K2 = gq_malloc(sizeof(float) * ncache), *V2 = gq_malloc(sizeof(float) * ncache);
    void *dq = up(P->gpu, qkv, (size_t)B * ldqkv), *dk = up(P->gpu, kc, ncache), *dv = up(P->gpu, vc, ncache);
    void *dO = up(P->gpu, O, (size_t)B * ldo);
    TEST_OK(gq_be_decode_attention_ex(P->gpu, dO, ldo, dq, ldqkv, B, dk, dv, stride, kvd, slot, pos, nh, nkv, hd, rot,
                                      inv, &o),
            "%s", what);
    down(P->gpu, O, dO, (size_t)B * ldo), down(P->gpu, Q2, dq, (size_t)B * ldqkv);
    down(P->gpu, K2, dk, ncache), down(P->gpu, V2, dv, ncache);
    gq_be_release(P->gpu, dq), gq_be_release(P->gpu, dk), gq_be_release(P->gpu, dv), gq_be_release(P->gpu, dO);
    float *Or = nan_vec((size_t)B * ldo);
    for (int r = 0; r < B; r++) {
        float *row = qkv + (size_t)r * ldqkv;
        gq_rope_partial_ref(row, ldqkv, 1, nh + nkv, hd, rot, pos[r], inv); /* q and k heads are adjacent */
        for (int c = 0; c < nq + kvd && !g_f32; c++) row[c] = gq_round_f16(row[c]);
        const size_t at = (size_t)slot[r] * stride + (size_t)pos[r] * kvd;
        memcpy(kc + at, row + nq, sizeof(float) * (size_t)kvd);
        memcpy(vc + at, row + nq + kvd, sizeof(float) * (size_t)kvd);
        gq_attention_ex_ref(Or + (size_t)r * ldo, ldo, row, ldqkv, kc + (size_t)slot[r] * stride, kvd,
                            vc + (size_t)slot[r] * stride, kvd, 1, pos[r] + 1, nh, nkv, hd, o.scale, o.softcap,
                            o.window);
    }
    char w2[240];
    compare(what, O, Or, B, nq, ldo, TOL_OP);
    snprintf(w2, sizeof w2, "%s: rotated q | k | v", what);
    compare(w2, Q2, qkv, B, nq + 2 * kvd, nq + 2 * kvd, TOL_OP);
    snprintf(w2, sizeof w2, "%s: K cache", what);
    compare(w2, K2, kc, nslots * max_len, kvd, kvd, TOL_OP);
    snprintf(w2, sizeof w2, "%s: V cache", what);
    compare(w2, V2, vc, nslots * max_len, kvd, kvd, TOL_OP);
    free(qkv), free(kc), free(vc), free(O), free(Or), free(Q2), free(K2), free(V2);
}

/* gather_rows (n of nx rows, repeats allowed: exact copies) then scatter_add_rows back into Y of ny
 * rows (distinct rows; fp32 product and sum, rounded once: TOL_OP against double). */
static void test_gather_scatter(pair *P, int n, int d, int nx, int ldx, int ldy) {
    char what[128];
    snprintf(what, sizeof what, "gather_rows n=%d d=%d rows=%d ldx=%d ldy=%d", n, d, nx, ldx, ldy);
    set_op(what);
    float *X = rand_h((size_t)nx * ldx, 1.0f), *G = nan_vec((size_t)n * ldy), *Gr = nan_vec((size_t)n * ldy);
    int32_t *idx = gq_malloc(sizeof(int32_t) * (size_t)nx);
    float *w = gq_malloc(sizeof(float) * (size_t)nx);
    for (int i = 0; i < n; i++) idx[i] = (int32_t)(rng_next() % (uint64_t)nx);
    for (int i = 0; i < n; i++) memcpy(Gr + (size_t)i * ldy, X + (size_t)idx[i] * ldx, sizeof(float) * (size_t)d);
    void *dX = up(P->gpu, X, (size_t)nx * ldx), *dG = up(P->gpu, G, (size_t)n * ldy);
    TEST_OK(gq_be_gather_rows(P->gpu, dG, ldy, dX, ldx, idx, n, d), "%s", what);
    down(P->gpu, G, dG, (size_t)n * ldy);
    compare(what, G, Gr, n, d, ldy, 0.0);
    /* scatter: G's n rows (fp16 values) into X's rows perm[i] (a random permutation's prefix), weights w */
    snprintf(what, sizeof what, "scatter_add_rows n=%d d=%d rows=%d ld(Y)=%d ld(X)=%d", n, d, nx, ldx, ldy);
    for (int i = 0; i < nx; i++) idx[i] = i;
    for (int i = nx - 1; i > 0; i--) {
        int j = (int)(rng_next() % (uint64_t)(i + 1)), t = idx[i];
        idx[i] = idx[j], idx[j] = t;
    }
    for (int i = 0; i < n; i++) w[i] = (float)rng_unif();
    for (int t = 0; t < nx; t++)
        for (int c = d; c < ldx; c++) X[(size_t)t * ldx + c] = NAN; /* padding must stay */
    float *Y = gq_malloc(sizeof(float) * (size_t)nx * ldx), *Yr = gq_malloc(sizeof(float) * (size_t)nx * ldx);
    memcpy(Yr, X, sizeof(float) * (size_t)nx * ldx);
    gq_be_upload_f32(P->gpu, dX, X, (size_t)nx * ldx);
    TEST_OK(gq_be_scatter_add_rows(P->gpu, dX, ldx, dG, ldy, idx, w, n, d), "%s", what);
    down(P->gpu, Y, dX, (size_t)nx * ldx);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < d; c++) {
            float *y = Yr + (size_t)idx[i] * ldx + c;
            *y = (float)(*y + (double)w[i] * G[(size_t)i * ldy + c]);
        }
    compare(what, Y, Yr, nx, d, ldx, TOL_OP);
    gq_be_release(P->gpu, dX), gq_be_release(P->gpu, dG);
    free(X), free(G), free(Gr), free(idx), free(w), free(Y), free(Yr);
}

/* gq_be_nll_ex with a final-logit soft-cap against capped double logits (logits from exact fp16
 * products summed in fp32 on the GPU: TOL_F32 as test_nll); softcap 0 gives gq_be_nll bit for bit. */
static void test_nll_softcap(pair *P, int T, int d, int vocab, int ldx, float cap) {
    char what[128];
    snprintf(what, sizeof what, "nll_ex softcap=%g T=%d d=%d vocab=%d ldx=%d", cap, T, d, vocab, ldx);
    set_op(what);
    float *X = rand_h((size_t)T * ldx, 1.0f), *W = rand_h((size_t)vocab * d, 0.5f);
    int32_t *tg = gq_malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) tg[t] = t % 7 == 3 ? -1 : (int32_t)(rng_next() % (uint64_t)vocab);
    float *L = nan_vec((size_t)T * vocab), *Lr = gq_malloc(sizeof(float) * (size_t)T * vocab);
    double s = 0, s0 = 0, s1 = 0, want = 0;
    int64_t n = 0, n0 = 0, n1 = 0, nw = 0;
    gq_bweight w;
    TEST_OK(gq_be_weight_upload(P->gpu, &w, W, vocab, d), "upload lm head");
    void *dX = up(P->gpu, X, (size_t)T * ldx);
    TEST_OK(gq_be_nll_ex(P->gpu, dX, ldx, T, &w, tg, cap, &s, &n, L), "%s", what);
    TEST_OK(gq_be_nll_ex(P->gpu, dX, ldx, T, &w, tg, 0.0f, &s0, &n0, NULL), "%s (no cap)", what);
    TEST_OK(gq_be_nll(P->gpu, dX, ldx, T, &w, tg, &s1, &n1, NULL), "%s (gq_be_nll)", what);
    TEST_CHECK(s0 == s1 && n0 == n1, "%s: softcap 0 gives %.17g, gq_be_nll %.17g", what, s0, s1);
    for (int t = 0; t < T; t++) {
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < vocab; v++) {
            double l = 0;
            for (int c = 0; c < d; c++) l += (double)X[(size_t)t * ldx + c] * W[(size_t)v * d + c];
            l = cap * tanh(l / cap);
            Lr[(size_t)t * vocab + v] = (float)l;
            mx = l > mx ? l : mx;
        }
        for (int v = 0; v < vocab; v++) sum += exp(Lr[(size_t)t * vocab + v] - mx);
        if (tg[t] >= 0) want += mx + log(sum) - Lr[(size_t)t * vocab + tg[t]], nw++;
    }
    TEST_CHECK(n == nw, "%s: count %lld, want %lld", what, (long long)n, (long long)nw);
    TEST_NEAR(s, want, TOL_F32 * fabs(want), "%s: nll sum vs double reference (rel tol %g)", what, TOL_F32);
    compare(what, L, Lr, T, vocab, vocab, TOL_F32);
    gq_be_weight_free(P->gpu, &w), gq_be_release(P->gpu, dX);
    free(X), free(W), free(tg), free(L), free(Lr);
}

/* The family ops in the current pass. */
static void run_family(pair *P) {
    for (int a = 0; a < 2; a++) {
        const gq_act_kind act = a ? GQ_ACT_GELU_TANH : GQ_ACT_SILU;
        test_glu_act(P, 21, 48, 48, 96, act);  /* 16-byte vectors in fp16 */
        test_glu_act(P, 9, 50, 64, 120, act);  /* scalar path */
        test_glu_act(P, 3, 4096, 4096, 8200, act);
    }
    test_layernorm(P, 33, 96, 96, 96, 1);
    test_layernorm(P, 7, 250, 300, 260, 0); /* strided, no bias */
    test_layernorm(P, 5, 4096, 4096, 4096, 1);
    test_head_rmsnorm(P, 17, 4, 64, 300);
    test_head_rmsnorm(P, 9, 6, 128, 6 * 128);
    test_head_rmsnorm(P, 5, 3, 256, 800); /* Gemma's head size */
    test_rope_partial(P, 29, 3, 32, 16, 3 * 32, 0);
    test_rope_partial(P, 17, 2, 128, 32, 300, 16000); /* a quarter of the dims (GPT-NeoX style 0.25) */
    test_rope_partial(P, 9, 4, 80, 32, 330, 5);       /* Phi-2: hd 80, 32 rotary dims */
    test_rope_partial(P, 9, 4, 64, 64, 256, 7);       /* rot == head_dim: full rotary */
    for (int vi = 0; vi < 2; vi++) { /* v1; v2 (tensor cores) in fp16, v3 (fp32 tiles) in fp32 */
        const int v = vi == 0 ? 1 : g_f32 ? 3 : 2;
        test_attention_ex(P, v, 100, 100, 4, 2, 64, 0, 0.0f, 0.0f, 37);     /* window inside a tile */
        test_attention_ex(P, v, 300, 300, 4, 2, 128, 8, 0.0f, 0.0f, 100);   /* whole tiles skipped */
        test_attention_ex(P, v, 300, 1000, 4, 2, 128, 0, 0.0f, 0.0f, 64);   /* chunked prefill, window */
        test_attention_ex(P, v, 130, 130, 8, 2, 128, 8, 0.1f, 5.0f, 0);     /* scale and a hard soft-cap */
        test_attention_ex(P, v, 200, 200, 2, 1, 64, 0, 0.0625f, 20.0f, 10); /* rows before their window */
        test_attention_ex(P, v, 1, 1000, 4, 1, 128, 8, 0.0f, 50.0f, 128);   /* decode step */
        test_attention_ex(P, v, 5, 37, 2, 1, 64, 0, 0.0f, 0.0f, 1);         /* each query sees itself only */
        test_attention_ex(P, v, 64, 64, 2, 2, 64, 0, 0.2f, 0.0f, 1000);     /* window longer than the text */
    }
    test_attention_ex(P, 0, 1100, 1100, 2, 2, 64, 0, 0.0f, 30.0f, 256); /* auto */
    test_attention_ex(P, 1, 40, 40, 2, 1, 256, 0, 0.0625f, 50.0f, 16);  /* Gemma-2: hd 256 (v1) */
    {
        const int slot[5] = {2, 0, 7, 1, 3}, pos[5] = {0, 7, 33, 200, 257};
        test_decode_ex(P, 5, 4, 2, 64, 32, 300, slot, pos, (gq_attn_opts){0.0f, 0.0f, 0});
        test_decode_ex(P, 5, 8, 2, 128, 128, 300, slot, pos, (gq_attn_opts){0.05f, 30.0f, 40});
        test_decode_ex(P, 5, 2, 1, 256, 256, 300, slot, pos, (gq_attn_opts){0.0625f, 50.0f, 100});
        int s2[8], p2[8];
        for (int r = 0; r < 8; r++) s2[r] = 7 - r, p2[r] = (r * 37) % 299;
        test_decode_ex(P, 8, 4, 1, 64, 16, 300, s2, p2, (gq_attn_opts){0.0f, 0.0f, 1});
    }
    test_gather_scatter(P, 7, 96, 20, 96, 104);
    test_gather_scatter(P, 3000, 50, 4000, 64, 56); /* the index buffer grows */
    test_nll_softcap(P, 45, 32, 300, 40, 5.0f);
    test_nll_softcap(P, 70, 64, 5000, 72, 30.0f);
}

static void run_pass(pair *P, int f32) {
    g_f32 = f32;
    TEST_BEGIN(f32 ? "cuda family ops (fp32)" : "cuda family ops");
    run_family(P);
    g_f32 = 0;
}
#endif /* GQ_USE_CUDA */

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    signal(SIGALRM, on_alarm);
    alarm(600);
#ifdef GQ_USE_CUDA
    if (gq_cuda_device_count() > 0) {
        pair P = {0};
        TEST_OK(gq_backend_init(&P.cpu, "cpu"), "cpu backend");
        TEST_OK(gq_backend_init(&P.gpu, "cuda:0"), "cuda backend");
        if (P.gpu && P.cpu) run_pass(&P, 0);
        gq_backend_free(P.gpu);
        P.gpu = NULL;
        TEST_OK(gq_backend_init(&P.gpu, "cuda:0"), "cuda backend for the fp32 pass");
        if (P.gpu && P.cpu && gq_backend_set_precision(P.gpu, "fp32") == GQ_OK) run_pass(&P, 1);
        gq_backend_free(P.gpu);
        gq_backend_free(P.cpu);
    } else {
        TEST_SKIP("no CUDA device: GPU tests skipped");
    }
#else
    TEST_SKIP("gq built without CUDA (make CUDA=0 or no nvcc): GPU tests skipped");
#endif
    return TEST_REPORT();
}
