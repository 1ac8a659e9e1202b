/*
 * backend_cpu.h (private) -- shared pieces of the CPU backend
 * (backend_cpu.c, backend_cpu_attn.c, backend_cpu_gptq.c).
 */
#ifndef GQ_BACKEND_CPU_H
#define GQ_BACKEND_CPU_H

#include <cblas.h>
#include <math.h>
#include <string.h>
#undef I /* <complex.h>, which OpenBLAS's cblas.h includes, defines I; gq uses it as a name */

#include "compute/backend_impl.h"

/* backend_cpu_q4.c: int4 weights kept packed (GQ_CPU_Q4=1), dequantized for each linear into
 * f32 [rows][cols]: the backend's scratch, or (*owned = 1, inside a parallel region) a buffer the
 * caller frees with gq_free_aligned; NULL + message on a bad weight. */
int gq_cpu_q4_supported(const gq_backend *be);
int gq_cpu_weight_upload_q4(gq_backend *be, gq_bweight *w, const gq_packed *const *parts, int nparts);
void gq_cpu_weight_free_q4(gq_backend *be, gq_bweight *w);
float *gq_cpu_q4_dequant(gq_backend *be, const gq_bweight *w, int *owned);

typedef enum {
    GQ_CPU_ATTN_TASKS = 0, /* OpenMP over (head, query tile), single-threaded sgemm inside */
    GQ_CPU_ATTN_BLAS,      /* tiles one after another, multithreaded sgemm */
} gq_cpu_attn_mode;

typedef struct {
    int threads;
    gq_cpu_attn_mode attn_mode; /* GQ_CPU_ATTN=tasks|blas (benchmarks), default tasks */
    int attn_tile;              /* query rows per attention tile (GQ_CPU_ATTN_TILE; 0 = head_dim, clamped to 32..256) */
} gq_cpu_ctx;

/*
 * expf for vector loops: Cody-Waite range reduction x = n ln2 + r, |r| <=
 * ln2/2, and the Cephes degree-6 polynomial for e^r; within 2 ulp of expf
 * for x in [-87.3, 88.3] (inputs are clamped there, so exp(-inf-ish) is
 * ~1e-38, not 0). Branch-free, so `#pragma omp simd` loops vectorise it
 * (glibc's expf does not vectorise without -ffast-math) where the compiler
 * may if-convert its selects: GCC does so only without trapping math, so the
 * Makefile builds the CPU backend with -fno-trapping-math (which changes no
 * value: gq reads no floating-point exception flags). Lane for lane the
 * vector code performs the same operations as the scalar one (the same bits);
 * sums over its results stay sequential loops, so their order, and every
 * figure, is what the scalar code gave.
 *
 * Defined for every input: +-Inf and huge values saturate like any input
 * outside the clamp range (e^88.3 = 2.2e38, e^-87.3 = 1.2e-38), NaN gives
 * NaN (so a NaN score or logit stays visible to the callers' checks). A NaN
 * has no integer value: its exponent n is replaced by 0 before the int
 * conversion (the polynomial p is NaN already). That select is the only
 * addition to the original code, whose results it leaves bit for bit
 * unchanged for every non-NaN float (checked exhaustively); it costs about
 * 6% of this function (0.20 -> 0.21 ns per element in a vectorised loop,
 * AVX-512, 2026-12-07), well under 1% of an attention op.
 */
static inline float gq_cpu_expf(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = __builtin_fmaf(n, -0.693359375f, x);
    r = __builtin_fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = __builtin_fmaf(p, r, 1.3981999507e-3f);
    p = __builtin_fmaf(p, r, 8.3334519073e-3f);
    p = __builtin_fmaf(p, r, 4.1665795894e-2f);
    p = __builtin_fmaf(p, r, 1.6666665459e-1f);
    p = __builtin_fmaf(p, r, 5.0000001201e-1f);
    p = __builtin_fmaf(p, r * r, r) + 1.0f;
    n = n == n ? n : 0.0f;                              /* NaN: any exponent will do */
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23; /* 2^n, n in [-126, 127] */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

/* s[i] = sum_k w[k] x_i[k] for nx <= 4 rows x_i = x + i ldx: one pass over w, one vector
 * accumulator per row (independent chains). Each row's sum is the same vector reduction whatever nx
 * (test_backend checks rows bitwise against the row alone). The few-row linear's and the decode
 * step's dot products (inline: the decode step's are head_dim long, called once per key). */
static inline void gq_cpu_dots(const float *w, const float *x, size_t ldx, int nx, int K, float *s) {
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    switch (nx) {
    case 4:
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int k = 0; k < K; k++) s0 += w[k] * x0[k], s1 += w[k] * x1[k], s2 += w[k] * x2[k], s3 += w[k] * x3[k];
        break;
    case 3:
#pragma omp simd reduction(+ : s0, s1, s2)
        for (int k = 0; k < K; k++) s0 += w[k] * x0[k], s1 += w[k] * x1[k], s2 += w[k] * x2[k];
        break;
    case 2:
#pragma omp simd reduction(+ : s0, s1)
        for (int k = 0; k < K; k++) s0 += w[k] * x0[k], s1 += w[k] * x1[k];
        break;
    default:
#pragma omp simd reduction(+ : s0)
        for (int k = 0; k < K; k++) s0 += w[k] * x0[k];
    }
    s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
}

/* backend_cpu.c: Y[T][ldy] (+)= X[T][ldx] W^T, W [N][K], for a few rows (decode steps): the weight
 * streamed once, each row's value independent of T (the linear of T <= GQ_CPU_SMALL_T rows, and
 * the logits of a decode step) */
#define GQ_CPU_SMALL_T 16
void gq_cpu_linear_rows(float *Y, int ldy, const float *X, int ldx, int T, const float *W, int N, int K,
                        int accumulate);

/* backend_cpu_attn.c */
/* the attention and nll entries of the vtable (o: NULL or the options; softcap 0: none) */
int gq_cpu_attention(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk, const void *V,
                     int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim, const gq_attn_opts *o);
int gq_cpu_nll(gq_backend *be, const void *X, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
               float softcap, double *nll_sum, int64_t *count, float *logits_out);
/* the batched decode step (the vtable's decode_attention; arguments checked by backend.c) */
int gq_cpu_decode_attention(gq_backend *be, void *O, int ldo, void *QKV, int ldqkv, int B, void *Kc, void *Vc,
                            size_t slot_stride, int ldkv, const int32_t *slot, const int32_t *pos, int n_heads,
                            int n_kv, int head_dim, int rot, const float *inv_freq, const gq_attn_opts *o);

/* backend_cpu.c: RoPE in parts (cpu_rope and the decode step): the angles of a position, cs[rot]
 * (cos, then sin), and the rotation of n_heads consecutive heads by them */
void gq_cpu_rope_angles(float *cs, int rot, int pos, const float *inv_freq);
void gq_cpu_rope_heads(float *x, int n_heads, int head_dim, int rot, const float *cs);

#endif /* GQ_BACKEND_CPU_H */
