/*
 * pack.c -- AutoGPTQ (`qlinear_cuda.py` pack) layout of integer codes,
 * zero points, scales and g_idx (gptq-reference.md §2), and back.
 *
 * Every width is the same thing: a little-endian bit stream in which value
 * i occupies bits [i * bits, (i + 1) * bits), cut into 32-bit words.
 *   2/4/8 bits: 32 / bits whole values per word, the lowest first.
 *   3 bits: 32 values in 3 words; word0 = v0..v9 at bits 0, 3, .., 27 and
 *     the low 2 bits of v10 at 30; word1 = bit 2 of v10 at bit 0, v11..v20
 *     at 1, 4, .., 28, the low bit of v21 at 31; word2 = bits 1-2 of v21 at
 *     bits 0-1, v22..v31 at 2, 5, .., 29 -- exactly AutoGPTQ's 3-bit loop.
 * qweight runs the stream down the input dimension K (word row r of output
 * column n), qzeros along the output dimension N (per group).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/pack.h"

/* ---- the bit stream --------------------------------------------------------- */

/* OR value v (< 2^bits) into stream position i; word w lives at words[w * stride]. */
static inline void put_bits(uint32_t *words, size_t stride, int64_t i, int bits, uint32_t v) {
    int64_t bit = i * bits;
    int64_t w = bit >> 5;
    int off = (int)(bit & 31);
    words[(size_t)w * stride] |= v << off;
    if (off + bits > 32) words[(size_t)(w + 1) * stride] |= v >> (32 - off);
}

static inline uint32_t get_bits(const uint32_t *words, size_t stride, int64_t i, int bits) {
    int64_t bit = i * bits;
    int64_t w = bit >> 5;
    int off = (int)(bit & 31);
    uint32_t v = words[(size_t)w * stride] >> off;
    if (off + bits > 32) v |= words[(size_t)(w + 1) * stride] << (32 - off);
    return v & ((1u << bits) - 1u);
}

/* ---- shape checks -------------------------------------------------------------- */

int gq_pack_check(int rows, int cols, int bits) {
    const int mult = gq_pack_multiple(bits);
    if (!mult) return gq_err(GQ_ERR_UNSUPPORTED, "pack: bits must be 2, 3, 4 or 8, got %d", bits);
    if (rows <= 0 || cols <= 0)
        return gq_err(GQ_ERR_UNSUPPORTED, "pack: expected a non-empty weight, got %d x %d", rows, cols);
    if (cols % mult != 0)
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "pack: %d-bit packing needs in_features (K, columns) to be a multiple of %d, got %d x %d "
                      "(out x in)",
                      bits, mult, rows, cols);
    if (rows % mult != 0)
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "pack: %d-bit packing needs out_features (N, rows) to be a multiple of %d, got %d x %d "
                      "(out x in)",
                      bits, mult, rows, cols);
    return GQ_OK;
}

void gq_packed_free(gq_packed *p) {
    if (!p) return;
    free(p->qweight);
    free(p->qzeros);
    free(p->scales);
    free(p->g_idx);
    memset(p, 0, sizeof *p);
}

/* ---- pack ------------------------------------------------------------------------ */

static int check_result(const gq_qresult *r, int bits, int v2) {
    const int maxq = gq_maxq(bits);
    const size_t rows = (size_t)r->rows, cols = (size_t)r->cols;
    for (size_t i = 0; r->codes && i < rows * cols; i++) /* (a packed qweight holds bits-wide codes) */
        if (r->codes[i] > maxq)
            return gq_err(GQ_ERR_ARG, "pack: code %d at output row %zu, input column %zu does not fit in %d bits",
                          r->codes[i], i / cols, i % cols, bits);
    for (int g = 0; g < r->ngroups; g++)
        for (int n = 0; n < r->rows; n++) {
            size_t gi = (size_t)g * rows + n;
            int32_t z = r->zeros[gi];
            if (!v2 && z == 0)
                return gq_err(GQ_ERR_ARG,
                              "pack: group %d, output row %d has zero point 0, which checkpoint_format \"gptq\" "
                              "(v1, stores zero - 1) cannot represent; write gptq_v2 or quantize with the v1 zero "
                              "policy (GQ_ZERO_V1)",
                              g, n);
            if (z < 0 || z > (v2 ? maxq : maxq + 1))
                return gq_err(GQ_ERR_ARG, "pack: group %d, output row %d: zero point %d out of range for %d bits (%s)",
                              g, n, (int)z, bits, v2 ? "gptq_v2" : "gptq");
            float s = r->scales[gi];
            float h = gq_f16_to_f32(gq_f32_to_f16(s));
            if (!isfinite(h))
                return gq_err(GQ_ERR_NUMERIC, "pack: group %d, output row %d: scale %g is not finite in fp16", g, n,
                              (double)s);
        }
    for (int k = 0; k < r->cols; k++)
        if (r->g_idx[k] < 0 || r->g_idx[k] >= r->ngroups)
            return gq_err(GQ_ERR_ARG, "pack: g_idx[%d] = %d, expected 0..%d", k, (int)r->g_idx[k], r->ngroups - 1);
    return GQ_OK;
}

int gq_pack(const gq_qresult *r, int bits, int v2, gq_packed *out) {
    memset(out, 0, sizeof *out);
    if (!r || !r->scales || !r->zeros || !r->g_idx || r->ngroups <= 0 ||
        (!r->codes && !(r->qweight && r->qweight_bits == bits)))
        return gq_err(GQ_ERR_ARG, "pack: incomplete quantizer result");
    int st = gq_pack_check(r->rows, r->cols, bits);
    if (st != GQ_OK) return st;
    st = check_result(r, bits, v2);
    if (st != GQ_OK) return st;

    const int N = r->rows, K = r->cols, G = r->ngroups;
    const int qw_rows = gq_pack_qw_rows(K, bits), qz_cols = gq_pack_qz_cols(N, bits);
    out->bits = bits;
    out->rows = N;
    out->cols = K;
    out->ngroups = G;
    out->v2 = v2 ? 1 : 0;
    out->qweight = gq_calloc((size_t)qw_rows * N, sizeof(int32_t)); /* [qw_rows][N], zeroed for put_bits */
    out->qzeros = gq_calloc((size_t)G * qz_cols, sizeof(int32_t));  /* [G][qz_cols] */
    out->scales = gq_malloc((size_t)G * N * sizeof(uint16_t));       /* [G][N] */
    out->g_idx = gq_malloc((size_t)K * sizeof(int32_t));             /* [K] */

    if (r->qweight && r->qweight_bits == bits) {
        /* packed already (the CUDA solve): the same [qw_rows][N] words */
        memcpy(out->qweight, r->qweight, (size_t)qw_rows * N * sizeof(int32_t));
    } else {
        uint32_t *qw = (uint32_t *)out->qweight;
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const uint8_t *q = r->codes + (size_t)n * K;
            for (int k = 0; k < K; k++) put_bits(qw + n, (size_t)N, k, bits, q[k]);
        }
    }
    uint32_t *qz = (uint32_t *)out->qzeros;
    const int32_t off = v2 ? 0 : 1;
    for (int g = 0; g < G; g++)
        for (int n = 0; n < N; n++)
            put_bits(qz + (size_t)g * qz_cols, 1, n, bits, (uint32_t)(r->zeros[(size_t)g * N + n] - off));
    gq_f32_to_f16_n(out->scales, r->scales, (size_t)G * N);
    memcpy(out->g_idx, r->g_idx, (size_t)K * sizeof(int32_t));
    return GQ_OK;
}

/* ---- unpack ------------------------------------------------------------------------ */

static int check_packed(const gq_packed *p) {
    if (!p || !p->qweight || !p->qzeros || !p->scales || !p->g_idx)
        return gq_err(GQ_ERR_ARG, "unpack: incomplete packed tensors");
    int st = gq_pack_check(p->rows, p->cols, p->bits);
    if (st != GQ_OK) return st;
    if (p->ngroups <= 0) return gq_err(GQ_ERR_FORMAT, "unpack: expected at least one group, got %d", p->ngroups);
    for (int k = 0; k < p->cols; k++)
        if (p->g_idx[k] < 0 || p->g_idx[k] >= p->ngroups)
            return gq_err(GQ_ERR_FORMAT, "unpack: g_idx[%d] = %d, expected 0..%d (scales have %d groups)", k,
                          (int)p->g_idx[k], p->ngroups - 1, p->ngroups);
    return GQ_OK;
}

int gq_unpack(const gq_packed *p, uint8_t *codes, int32_t *zeros, float *scales) {
    int st = check_packed(p);
    if (st != GQ_OK) return st;
    const int N = p->rows, K = p->cols, G = p->ngroups, bits = p->bits;
    const int qz_cols = gq_pack_qz_cols(N, bits);
    const uint32_t *qw = (const uint32_t *)p->qweight;
    const uint32_t *qz = (const uint32_t *)p->qzeros;
    if (codes) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) codes[(size_t)n * K + k] = (uint8_t)get_bits(qw + n, (size_t)N, k, bits);
    }
    if (zeros) {
        const int32_t off = p->v2 ? 0 : 1;
        for (int g = 0; g < G; g++)
            for (int n = 0; n < N; n++)
                zeros[(size_t)g * N + n] = (int32_t)get_bits(qz + (size_t)g * qz_cols, 1, n, bits) + off;
    }
    if (scales)
        for (size_t i = 0; i < (size_t)G * N; i++) scales[i] = gq_f16_to_f32(p->scales[i]);
    return GQ_OK;
}

int gq_packed_dequant(const gq_packed *p, float *W) {
    int st = check_packed(p);
    if (st != GQ_OK) return st;
    const int N = p->rows, K = p->cols, G = p->ngroups, bits = p->bits;
    int32_t *zeros = gq_malloc((size_t)G * N * sizeof(int32_t)); /* [G][N] */
    float *scales = gq_malloc((size_t)G * N * sizeof(float));    /* [G][N] */
    st = gq_unpack(p, NULL, zeros, scales);
    if (st == GQ_OK) {
        const uint32_t *qw = (const uint32_t *)p->qweight;
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            float *w = W + (size_t)n * K;
            for (int k = 0; k < K; k++) {
                size_t gi = (size_t)p->g_idx[k] * N + n;
                int q = (int)get_bits(qw + n, (size_t)N, k, bits);
                w[k] = gq_dequant(q, scales[gi], zeros[gi]);
            }
        }
    }
    free(zeros);
    free(scales);
    return st;
}
