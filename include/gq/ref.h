/*
 * gq/ref.h -- plain scalar reference versions of every forward op of the
 * backend interface (gq/backend.h), on f32 host arrays.
 *
 * These are the ground truth that tests/test_backend.c compares every
 * backend against: one loop nest per op, no BLAS, no threads, sums in double
 * precision, written to be read rather than to be fast. Layouts and
 * semantics are exactly those of the gq_be_* op of the same name
 * (row-major, X[T][ldx], W[rows=out][cols=in]).
 */
#ifndef GQ_REF_H
#define GQ_REF_H

#include "gq/common.h"
#include "gq/pack.h" /* gq_packed (gq_w4a16_ref) */

#ifdef __cplusplus
extern "C" {
#endif

/* Y[T][ldy] (cols 0..rows-1) = X[T][ldx] (cols 0..cols-1) * W[rows][cols]^T
 * + bias[rows] (bias may be NULL); accumulate: Y += instead of Y =. */
void gq_linear_ref(float *Y, int ldy, const float *X, int ldx, int T, const float *W, int rows, int cols,
                   const float *bias, int accumulate);

/* Y[T][ldy] = X * (1 / sqrt(mean(X^2) + eps)) * w[d], per row of d. */
void gq_rmsnorm_ref(float *Y, int ldy, const float *X, int ldx, int T, int d, const float *w, float eps);

/* Rotary embedding in place on X[T][ld] (n_heads heads of head_dim at
 * columns h * head_dim), positions pos0 .. pos0 + T - 1, inv_freq[hd/2].
 * Angles pos * inv_freq[i] as a float product, cos/sin in double then
 * rounded to float (torch computes them in fp32 to within an ulp). */
void gq_rope_ref(float *X, int ld, int T, int n_heads, int head_dim, int pos0, const float *inv_freq);

/* Causal grouped-query attention, O[Tq][ldo] = softmax(Q K^T / sqrt(hd)) V,
 * query i at absolute position Tk - Tq + i (see gq_be_attention). */
void gq_attention_ref(float *O, int ldo, const float *Q, int ldq, const float *K, int ldk, const float *V, int ldv,
                      int Tq, int Tk, int n_heads, int n_kv, int head_dim);

/* A[T][lda] (I cols) = silu(GU[:, 0:I]) * GU[:, I:2I]. */
void gq_swiglu_ref(float *A, int lda, const float *GU, int ldgu, int T, int I);

/* ---- the family ops (see gq_be_* of the same name in gq/backend.h) ---- */

/* LayerNorm per row of d: (x - mean) / sqrt(biased var + eps) * w + b (b may be NULL). */
void gq_layernorm_ref(float *Y, int ldy, const float *X, int ldx, int T, int d, const float *w, const float *b,
                      float eps);
/* RMSNorm of each of n_heads heads of head_dim at X[t][ld], in place, weight w[head_dim]. */
void gq_head_rmsnorm_ref(float *X, int ld, int T, int n_heads, int head_dim, const float *w, float eps);
/* act: 0 SiLU, 1 GELU-tanh (gq_act_kind). */
void gq_glu_ref(float *A, int lda, const float *GU, int ldgu, int T, int I, int act);
void gq_act_ref(float *X, int ld, int T, int n, int act);
/* gq_rope_ref on the first rot dims of each head (pairs (i, i + rot/2)), inv_freq[rot/2]. */
void gq_rope_partial_ref(float *X, int ld, int T, int n_heads, int head_dim, int rot, int pos0,
                         const float *inv_freq);
/* gq_attention_ref with scale (0: 1/sqrt(hd)), softcap (0: none), window (0: none); see
 * gq_attn_opts. */
void gq_attention_ex_ref(float *O, int ldo, const float *Q, int ldq, const float *K, int ldk, const float *V, int ldv,
                         int Tq, int Tk, int n_heads, int n_kv, int head_dim, float scale, float softcap,
                         int window);

/* H[K][K] += X[T][ldx]^T X (the full matrix, both triangles). */
void gq_hessian_ref(float *H, const float *X, int ldx, int T, int K);

/* W4A16: Y[T][ldy] (cols 0 .. sum of the parts' rows - 1) = X[T][ldx] (cols 0..K-1) * W^T, where W
 * stacks the int4 parts by output rows (a fused q|k|v or gate|up projection: every part has the
 * same K = cols, its own rows, scales, zeros, g_idx and group size) and
 * W[n][k] = scale[g_idx[k]][n] * (q - zero), q and zero read straight from the packed words
 * (gq/pack.h, bits 4; zero = stored + 1 for v1, stored for v2). Sums in double; Y is overwritten
 * (no bias, no accumulate). src/compute/ref_w4a16.c. */
void gq_w4a16_ref(float *Y, int ldy, const float *X, int ldx, int T, const gq_packed *const *parts, int nparts);

/* Sum over t < T with targets[t] >= 0 of -log softmax(X[t] Wlm^T)[targets[t]];
 * Wlm [vocab][d]. Adds to *nll_sum and *count. */
void gq_nll_ref(const float *X, int ldx, int T, int d, const float *Wlm, int vocab, const int32_t *targets,
                double *nll_sum, int64_t *count);

#ifdef __cplusplus
}
#endif
#endif /* GQ_REF_H */
