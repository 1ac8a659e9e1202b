/*
 * tests/test_w4a16_util.h -- what test_w4a16_ref.c (CPU) and test_cuda_w4a16.c (GPU) share:
 * random int4 parts made the way the exporter makes them (random codes, zeros and fp16 scales
 * packed with gq_pack, so a wrong reading of the packing shows), and the W4A16 tolerance check.
 * Include after test.h.
 */
#ifndef GQ_TEST_W4A16_UTIL_H
#define GQ_TEST_W4A16_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gq/gptq.h"
#include "gq/pack.h"
#include "test.h"

/* How a random part is made. */
typedef struct {
    int N, K;      /* out_features (rows), in_features (cols) */
    int gs;        /* group size; -1: one group */
    int act_order; /* g_idx[perm[i]] = i / gs for a random permutation perm; else k / gs */
    int v2;        /* zeros stored without the -1 offset */
    int sym;       /* zero 8 everywhere; else random zeros (v1: 1..16, v2: 0..15) */
} w4_spec;

static inline int w4_spec_groups(const w4_spec *s) { return s->gs > 0 ? (s->K + s->gs - 1) / s->gs : 1; }

/* A random part of spec s, packed with gq_pack (v1 or v2); scales fp16 values in about
 * [0.002, 0.05]. Wtrue (may be NULL): [N][K] the weights scale * (code - zero) computed from the
 * codes, zeros and scales before packing (the ground truth of any reading of the packed words).
 * Returns gq_pack's status. */
static inline int w4_make_part(const w4_spec *s, gq_packed *out, float *Wtrue) {
    const int N = s->N, K = s->K, G = w4_spec_groups(s);
    gq_qresult r;
    memset(&r, 0, sizeof r);
    r.rows = N, r.cols = K, r.ngroups = G;
    r.codes = (uint8_t *)gq_malloc((size_t)N * K);
    r.scales = (float *)gq_malloc(sizeof(float) * (size_t)G * N);
    r.zeros = (int32_t *)gq_malloc(sizeof(int32_t) * (size_t)G * N);
    r.g_idx = (int32_t *)gq_malloc(sizeof(int32_t) * (size_t)K);
    for (size_t i = 0; i < (size_t)N * K; i++) r.codes[i] = (uint8_t)(test_rng_next() & 15u);
    for (size_t i = 0; i < (size_t)G * N; i++) {
        r.scales[i] = gq_round_f16((float)(0.002 + 0.048 * test_rng_unif()));
        r.zeros[i] = s->sym ? 8 : s->v2 ? (int32_t)(test_rng_next() % 16) : 1 + (int32_t)(test_rng_next() % 16);
    }
    int32_t *perm = (int32_t *)gq_malloc(sizeof(int32_t) * (size_t)K);
    for (int k = 0; k < K; k++) perm[k] = k;
    if (s->act_order)
        for (int k = K - 1; k > 0; k--) { /* Fisher-Yates */
            int j = (int)(test_rng_next() % (uint64_t)(k + 1));
            int32_t tmp = perm[k];
            perm[k] = perm[j], perm[j] = tmp;
        }
    for (int i = 0; i < K; i++) r.g_idx[perm[i]] = s->gs > 0 ? i / s->gs : 0;
    if (Wtrue)
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) {
                const size_t gi = (size_t)r.g_idx[k] * N + n;
                Wtrue[(size_t)n * K + k] = r.scales[gi] * (float)((int)r.codes[(size_t)n * K + k] - r.zeros[gi]);
            }
    int rc = gq_pack(&r, 4, s->v2, out);
    free(perm), free(r.codes), free(r.scales), free(r.zeros), free(r.g_idx);
    return rc;
}

/* max |W| of a part (the dequantized weights, gq_packed_dequant). */
static inline double w4_max_w(const gq_packed *p) {
    float *W = (float *)gq_malloc(sizeof(float) * (size_t)p->rows * p->cols);
    double m = 0;
    if (gq_packed_dequant(p, W) == GQ_OK)
        for (size_t i = 0; i < (size_t)p->rows * p->cols; i++) m = fmax(m, fabs(W[i]));
    free(W);
    return m;
}

/* Check got against want over [T][width] (ld), element by element:
 *   |got - want| <= rel |want| + abs_tol,
 * and that the padding columns [width, ld) of got are still NaN when pad_nan. Returns the worst
 * ratio |got - want| / (rel |want| + abs_tol) (> 1: failed), NaN counting as infinite. */
static inline double w4_check(const char *what, const float *got, const float *want, int T, int width, int ld,
                              double rel, double abs_tol, int pad_nan) {
    double worst = 0;
    long wi = -1;
    int pad_ok = 1;
    for (int t = 0; t < T; t++) {
        for (int c = 0; c < width; c++) {
            const size_t i = (size_t)t * ld + c;
            const double d = fabs((double)got[i] - want[i]), lim = rel * fabs(want[i]) + abs_tol;
            const double q = isnan(d) ? INFINITY : d / lim;
            if (q > worst || wi < 0) worst = q, wi = (long)i;
        }
        if (pad_nan)
            for (int c = width; c < ld; c++) pad_ok &= isnan(got[(size_t)t * ld + c]);
    }
    TEST_CHECK(worst <= 1.0, "%s: |diff| / tolerance = %.3g > 1 at [%ld][%ld] (got %.7g, want %.7g; rel %.3g, abs %.3g)",
               what, worst, wi / ld, wi % ld, wi >= 0 ? got[wi] : 0.0, wi >= 0 ? want[wi] : 0.0, rel, abs_tol);
    if (pad_nan) TEST_CHECK(pad_ok, "%s: wrote into the padding columns %d..%d of its rows", what, width, ld - 1);
    return worst;
}

#endif /* GQ_TEST_W4A16_UTIL_H */
