/* ref_w4a16.c -- the scalar reference of the W4A16 linear (gq/ref.h gq_w4a16_ref): int4 GPTQ
 * parts read straight from their packed words, sums in double. Independent of gq_unpack /
 * gq_packed_dequant (src/io/pack.c), so the tests can check those and the GPU kernels against it. */
#include <stdlib.h>

#include "gq/ref.h"

/* The 4-bit code of input row k, output column n: word k / 8 of column n of qweight [K/8][N], bits
 * 4 (k % 8) .. 4 (k % 8) + 3. */
static int code_at(const gq_packed *p, int k, int n) {
    const uint32_t w = (uint32_t)p->qweight[(size_t)(k / 8) * p->rows + n];
    return (int)((w >> (4 * (k % 8))) & 15u);
}

/* The zero point of group g, output column n: qzeros [G][N/8] packs 8 columns per word along N,
 * storing zero - 1 (v1) or zero (v2). */
static int zero_at(const gq_packed *p, int g, int n) {
    const uint32_t w = (uint32_t)p->qzeros[(size_t)g * (p->rows / 8) + n / 8];
    return (int)((w >> (4 * (n % 8))) & 15u) + (p->v2 ? 0 : 1);
}

void gq_w4a16_ref(float *Y, int ldy, const float *X, int ldx, int T, const gq_packed *const *parts, int nparts) {
    int col0 = 0; /* first Y column of the part */
    for (int i = 0; i < nparts; i++) {
        const gq_packed *p = parts[i];
        GQ_ASSERT(p->bits == 4 && "gq_w4a16_ref reads 4-bit weights only");
        const int N = p->rows, K = p->cols;
        double *w = gq_malloc(sizeof(double) * (size_t)K); /* row n of W: [K] */
        for (int n = 0; n < N; n++) {
            for (int k = 0; k < K; k++) {
                const int g = p->g_idx[k];
                const double s = gq_f16_to_f32(p->scales[(size_t)g * N + n]);
                w[k] = s * (double)(code_at(p, k, n) - zero_at(p, g, n));
            }
            for (int t = 0; t < T; t++) {
                const float *x = X + (size_t)t * ldx; /* [K] */
                double acc = 0.0;
                for (int k = 0; k < K; k++) acc += (double)x[k] * w[k];
                Y[(size_t)t * ldy + col0 + n] = (float)acc;
            }
        }
        free(w);
        col0 += N;
    }
}
