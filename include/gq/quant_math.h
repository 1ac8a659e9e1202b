/*
 * gq/quant_math.h -- the scalar quantizer math, one copy for the host (C:
 * quant.c, the CPU solve) and the device (CUDA: gptq.cu's kernels): fp16
 * rounding of a scale, params from a range, the code of a value, its
 * dequantized value. IST-DASLab/gptq quant.py `find_params` / `quantize`,
 * float arithmetic in the order torch does it (gq/gptq.h describes the
 * semantics).
 *
 * Bit-exact on both sides: every function is `static inline` and marked
 * GQ_QM_FN, which is `__host__ __device__` under nvcc and empty in C. The
 * fp32 operations go through gq_qm_add/sub/mul/div: __fadd_rn, __fsub_rn,
 * __fmul_rn, __fdiv_rn in device code (no FMA contraction, a true IEEE
 * division instead of the reciprocal approximation), plain operators on
 * the host. The host side therefore needs a compiler that does not contract
 * a * b + c across statements: GCC's default in ISO C mode (-std=c11, the
 * Makefile's; -std=gnu11 would contract on FMA targets) or an explicit
 * -ffp-contract=off. The C files that do this math check it (quant.c,
 * compute/cpu/backend_cpu_gptq.c).
 */
#ifndef GQ_QUANT_MATH_H
#define GQ_QUANT_MATH_H

#include <stdint.h>

#include "gq/common.h" /* gq_round_f16 (host) */

#ifdef __CUDACC__
#ifdef __cplusplus
extern "C++" { /* this header may be included inside an extern "C" block */
#endif
#include <cuda_fp16.h>
#ifdef __cplusplus
}
#endif
#define GQ_QM_FN static inline __host__ __device__
#else
#define GQ_QM_FN static inline
#endif

/* Smallest positive (subnormal) and largest finite fp16 values. */
#define GQ_F16_TINY 5.9604644775390625e-08f /* 2^-24 */
#define GQ_F16_MAX  65504.0f

/* ---- explicitly rounded fp32 operations --------------------------------------------------------------- */

GQ_QM_FN float gq_qm_add(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
GQ_QM_FN float gq_qm_sub(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
GQ_QM_FN float gq_qm_mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
GQ_QM_FN float gq_qm_div(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
/* Round half to even (torch.round). */
GQ_QM_FN float gq_qm_rint(float x) {
#ifdef __CUDA_ARCH__
    return rintf(x);
#else
    return __builtin_rintf(x);
#endif
}
GQ_QM_FN float gq_qm_fabs(float x) {
#ifdef __CUDA_ARCH__
    return fabsf(x);
#else
    return __builtin_fabsf(x);
#endif
}
GQ_QM_FN int gq_qm_isinf(float x) {
#ifdef __CUDA_ARCH__
    return isinf(x) ? 1 : 0;
#else
    return __builtin_isinf(x) ? 1 : 0;
#endif
}

/* ---- the quantizer ----------------------------------------------------------------------------------------- */

/* Largest code of a bits-wide quantizer. */
GQ_QM_FN int gq_maxq(int bits) {
    return (1 << bits) - 1;
}

/* What fixes the params of a group (gq_gptq_params, resolved). The clip_*
 * fields (the clipping search, below) are 0 for plain min-max. */
typedef struct {
    int maxq;      /* gq_maxq(bits) */
    int sym;       /* zero = (maxq + 1) / 2 */
    int zero_free; /* GQ_ZERO_FREE: an asymmetric zero may be 0 (else GQ_ZERO_V1's shifted grid) */
    int scale_f16; /* round each scale to fp16 before it is used */
    int clip_n;        /* candidates of the clipping search, int(maxshrink * grid); 0: min-max only */
    int clip_grid;     /* candidate i shrinks the range by p_i = 1 - i / clip_grid */
    float clip_norm;   /* error = sum wt_k |q(x_k) - x_k|^clip_norm */
    int clip_weighted; /* the caller passes weights wt (diag(H) of the group's columns: --clip mse-h) */
} gq_qcfg;

/* s to the nearest fp16 value (round to nearest even), kept finite and
 * positive: 0 becomes 2^-24, an overflow 65504. */
GQ_QM_FN float gq_round_scale_f16(float s) {
#ifdef __CUDA_ARCH__
    float h = __half2float(__float2half_rn(s));
#else
    float h = gq_round_f16(s);
#endif
    if (h == 0.0f) return GQ_F16_TINY;
    if (gq_qm_isinf(h)) return GQ_F16_MAX;
    return h;
}

/* The quantizer's range from xmin = min(min(x), 0), xmax = max(max(x), 0)
 * (a value of the other sign is clamped to 0 here too): quant.py's xmin /
 * xmax after the symmetric fix and the [-1, 1] of an all-zero group. */
GQ_QM_FN void gq_qm_range(float *xmin_p, float *xmax_p, gq_qcfg q) {
    float xmin = *xmin_p, xmax = *xmax_p;
    if (xmin > 0.0f) xmin = 0.0f;
    if (xmax < 0.0f) xmax = 0.0f;
    if (q.sym) {
        /* quant.py: xmax = max(|xmin|, xmax); xmin = -xmax only where xmin < 0,
         * so an all-non-negative row keeps xmin = 0 (range [0, xmax] on a
         * grid centred at maxq/2 + 1/2: the positive half is clipped). */
        float a = gq_qm_fabs(xmin);
        if (a > xmax) xmax = a;
        if (xmin < 0.0f) xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    *xmin_p = xmin;
    *xmax_p = xmax;
}

/* Params of a range that gq_qm_range has fixed already. */
GQ_QM_FN void gq_qm_params_range(float xmin, float xmax, gq_qcfg q, float *scale, int32_t *zero) {
    float s = gq_qm_div(gq_qm_sub(xmax, xmin), (float)q.maxq);
    if (q.scale_f16) s = gq_round_scale_f16(s);
    float z;
    if (q.sym) {
        z = (float)((q.maxq + 1) / 2);
    } else {
        z = gq_qm_rint(gq_qm_div(-xmin, s));
        if (z == 0.0f && !q.zero_free) {
            /* v1 stores zero - 1: shift the grid up one step instead. */
            s = gq_qm_div(gq_qm_sub(xmax, xmin), (float)(q.maxq - 1));
            if (q.scale_f16) s = gq_round_scale_f16(s);
            z = 1.0f;
        }
    }
    if (z < 0.0f) z = 0.0f;
    if (z > (float)q.maxq) z = (float)q.maxq;
    *scale = s;
    *zero = (int32_t)z;
}

/* Params from a range: xmin = min(min(x), 0), xmax = max(max(x), 0) (a
 * value of the other sign is clamped to 0 here too). */
GQ_QM_FN void gq_qm_params(float xmin, float xmax, gq_qcfg q, float *scale, int32_t *zero) {
    gq_qm_range(&xmin, &xmax, q);
    gq_qm_params_range(xmin, xmax, q, scale, zero);
}

/* q = clamp(rint(x / scale) + zero, 0, maxq) -- rint: half to even. */
GQ_QM_FN int gq_quant_code(float x, float scale, int32_t zero, int maxq) {
    float q = gq_qm_add(gq_qm_rint(gq_qm_div(x, scale)), (float)zero);
    if (!(q >= 0.0f)) q = 0.0f; /* also NaN -> 0: never convert NaN to int */
    if (q > (float)maxq) q = (float)maxq;
    return (int)q;
}

/* scale * (q - zero) */
GQ_QM_FN float gq_dequant(int q, float scale, int32_t zero) {
    return gq_qm_mul(scale, (float)(q - zero));
}

/* ---- the clipping search (gq_gptq_params.clip) -------------------------------------------------------------- */

/* GPTQModel's / IST-DASLab quant.py `find_params` with mse on: after the
 * min-max params (the range [xmin, xmax] of gq_qm_range), try the ranges
 * [p xmin, p xmax] for p_i = 1 - i / grid, i = 0 .. int(maxshrink * grid) - 1
 * (grid 100, maxshrink 0.8: p = 1, 0.99, ..., 0.21), each with its params
 * (gq_qm_params_range: scale, and the zero when asymmetric), and keep the
 * first candidate with the smallest error sum_k wt_k |q(x_k) - x_k|^norm
 * (norm 2.4; wt_k = 1, or diag(H) of column k for the Hessian-weighted
 * variant), where q(x) = scale (clamp(rint(x / scale) + zero, 0, maxq) -
 * zero) is the dequantized value. p = 1 is the min-max range itself, so the
 * result is never worse (in this error) than min-max; a candidate whose
 * error is not finite (an overflowing range) is never kept, and when none is
 * finite the min-max params stay. Arithmetic, as torch does it on fp32
 * tensors: p_i computed in double and rounded to fp32 (the Python float
 * that multiplies an fp32 tensor), p xmin and p xmax in fp32, the terms
 * fp32, their sum fp32 in column order (torch's sum order is its own; this
 * one is a plain sequential sum), the exponent norm as fp32 (2.4f, as torch
 * casts it). |d|^norm is gq_qm_pow: correctly rounded in all but a
 * vanishing fraction of cases (the reference's powf is not specified to the
 * last bit either), and the same bits on the host and the device. */
#define GQ_CLIP_GRID 100      /* shrink steps */
#define GQ_CLIP_MAXSHRINK 0.8 /* the smallest range tried is (1 - maxshrink + 1/grid) of min-max */
#define GQ_CLIP_NORM 2.4f     /* the error exponent */

GQ_QM_FN double gq_qm_dadd(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}
GQ_QM_FN double gq_qm_dsub(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dsub_rn(a, b);
#else
    return a - b;
#endif
}
GQ_QM_FN double gq_qm_dmul(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
GQ_QM_FN double gq_qm_ddiv(double a, double b) {
#ifdef __CUDA_ARCH__
    return __ddiv_rn(a, b);
#else
    return a / b;
#endif
}
GQ_QM_FN float gq_qm_d2f(double a) { /* round to nearest even */
#ifdef __CUDA_ARCH__
    return __double2float_rn(a);
#else
    return (float)a;
#endif
}
GQ_QM_FN double gq_qm_drint(double a) {
#ifdef __CUDA_ARCH__
    return rint(a);
#else
    return __builtin_rint(a);
#endif
}
GQ_QM_FN uint64_t gq_qm_dbits(double a) {
#ifdef __CUDA_ARCH__
    return (uint64_t)__double_as_longlong(a);
#else
    uint64_t u;
    __builtin_memcpy(&u, &a, sizeof u);
    return u;
#endif
}
GQ_QM_FN double gq_qm_dfrom(uint64_t u) {
#ifdef __CUDA_ARCH__
    return __longlong_as_double((long long)u);
#else
    double a;
    __builtin_memcpy(&a, &u, sizeof a);
    return a;
#endif
}
GQ_QM_FN float gq_qm_inf(void) {
#ifdef __CUDA_ARCH__
    return __int_as_float(0x7f800000);
#else
    return __builtin_inff();
#endif
}

/* x^y for x >= 0 (or NaN) and y > 0, as fp32: exp(y ln x) evaluated in
 * double with explicitly rounded operations (relative error ~1e-14 before
 * the final rounding to fp32), so host and device give the same bits.
 * y == 2 is fl(x * x) (torch's own special case), y == 1 is x. */
GQ_QM_FN float gq_qm_pow(float x, float y) {
    if (!(x > 0.0f)) return x == 0.0f ? 0.0f : x; /* 0, or NaN */
    if (gq_qm_isinf(x)) return x;
    if (y == 2.0f) return gq_qm_mul(x, x);
    if (y == 1.0f) return x;
    const double LN2_HI = 6.93147180369123816490e-01; /* 0x3fe62e42fee00000: k * LN2_HI exact for |k| < 2^21 */
    const double LN2_LO = 1.90821492927058770002e-10;
    const double SQRT2 = 1.41421356237309504880;
    /* x = m 2^e, m in [sqrt(1/2), sqrt(2)) (every fp32 value is a normal double) */
    const uint64_t b = gq_qm_dbits((double)x);
    int e = (int)((b >> 52) & 0x7ff) - 1023;
    double m = gq_qm_dfrom((b & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
    if (m > SQRT2) {
        m = gq_qm_dmul(m, 0.5);
        e += 1;
    }
    /* ln m = 2 atanh(t) = 2 (t + t^3/3 + ... + t^21/21), t = (m - 1) / (m + 1), |t| < 0.1716 */
    const double t = gq_qm_ddiv(gq_qm_dsub(m, 1.0), gq_qm_dadd(m, 1.0)), t2 = gq_qm_dmul(t, t);
    double s = 1.0 / 21.0;
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0 / 19.0);
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0 / 17.0);
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0 / 15.0);
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0 / 13.0);
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0 / 11.0);
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0 / 9.0);
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0 / 7.0);
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0 / 5.0);
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0 / 3.0);
    s = gq_qm_dadd(gq_qm_dmul(s, t2), 1.0);
    const double ln_m = gq_qm_dmul(gq_qm_dmul(2.0, t), s);
    const double ln_x = gq_qm_dadd(gq_qm_dmul((double)e, LN2_HI), gq_qm_dadd(gq_qm_dmul((double)e, LN2_LO), ln_m));
    const double v = gq_qm_dmul((double)y, ln_x);
    if (v > 89.0) return gq_qm_inf();  /* e^89 > FLT_MAX */
    if (v < -105.0) return 0.0f;       /* e^-105 < 2^-151: below half the smallest fp32 subnormal */
    /* e^v = 2^k e^r, r = v - k ln2, |r| <= ln2 / 2 (+ rounding); e^r by its Taylor series to r^13 / 13! */
    const double kd = gq_qm_drint(gq_qm_dmul(v, 1.44269504088896340736));
    const double r = gq_qm_dsub(gq_qm_dsub(v, gq_qm_dmul(kd, LN2_HI)), gq_qm_dmul(kd, LN2_LO));
    double p = 1.0 / 6227020800.0; /* 1/13! */
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 479001600.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 39916800.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 3628800.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 362880.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 40320.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 5040.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 720.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 120.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 24.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0 / 6.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 0.5);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0);
    p = gq_qm_dadd(gq_qm_dmul(p, r), 1.0);
    const uint64_t two_k = (uint64_t)((int)kd + 1023) << 52; /* k in [-152, 129]: a normal double */
    return gq_qm_d2f(gq_qm_dmul(p, gq_qm_dfrom(two_k)));
}

/* p_i = 1 - i / grid: computed in double and rounded to fp32, as torch
 * applies the Python float p to an fp32 tensor. */
GQ_QM_FN float gq_qm_clip_shrink(int i, int grid) {
    return gq_qm_d2f(gq_qm_dsub(1.0, gq_qm_ddiv((double)i, (double)grid)));
}

/* Params of candidate i on the range [xmin, xmax] (fixed by gq_qm_range). */
GQ_QM_FN void gq_qm_clip_candidate(float xmin, float xmax, int i, gq_qcfg q, float *scale, int32_t *zero) {
    const float p = gq_qm_clip_shrink(i, q.clip_grid);
    gq_qm_params_range(gq_qm_mul(p, xmin), gq_qm_mul(p, xmax), q, scale, zero);
}

/* One term of gq_qm_clip_err_below's sum: wt |q(x) - x|^norm (wt 1 when unweighted: fl(1 t) = t). */
GQ_QM_FN float gq_qm_clip_term(float x, float wt, float scale, int32_t zero, gq_qcfg q) {
    const float dq = gq_dequant(gq_quant_code(x, scale, zero, q.maxq), scale, zero);
    return gq_qm_mul(wt, gq_qm_pow(gq_qm_fabs(gq_qm_sub(dq, x)), q.clip_norm));
}

#define GQ_QM_CLIP_CHUNK 16 /* host: terms computed at once (a vector loop) before they are summed */

/* The error of params (scale, zero) on x[0 .. n): sum_k wt_k |q(x_k) - x_k|^norm
 * (wt NULL: 1), summed in order; the sum stops as soon as it is not below
 * `bound` (the terms are >= 0 and fp32 addition is monotone, so the full sum
 * would not be below it either: the search's choice is the same). */
GQ_QM_FN float gq_qm_clip_err_below(const float *x, const float *wt, int n, float scale, int32_t zero, gq_qcfg q,
                                    float bound) {
    float e = 0.0f;
#ifdef __CUDA_ARCH__
    for (int k = 0; k < n && e < bound; k++) e = gq_qm_add(e, gq_qm_clip_term(x[k], wt ? wt[k] : 1.0f, scale, zero, q));
#else
    /* the same terms and the same sequential sum with the same stop, the terms GQ_QM_CLIP_CHUNK at a
     * time in a loop the compiler vectorises (lane for lane the same operations: the same bits; at most
     * a chunk's terms past the stop are computed and dropped) */
    for (int k0 = 0; k0 < n && e < bound; k0 += GQ_QM_CLIP_CHUNK) {
        float t[GQ_QM_CLIP_CHUNK];
        const int m = n - k0 < GQ_QM_CLIP_CHUNK ? n - k0 : GQ_QM_CLIP_CHUNK;
#pragma omp simd
        for (int i = 0; i < m; i++) t[i] = gq_qm_clip_term(x[k0 + i], wt ? wt[k0 + i] : 1.0f, scale, zero, q);
        for (int i = 0; i < m && e < bound; i++) e = gq_qm_add(e, t[i]);
    }
#endif
    return e;
}
GQ_QM_FN float gq_qm_clip_err(const float *x, const float *wt, int n, float scale, int32_t zero, gq_qcfg q) {
    return gq_qm_clip_err_below(x, wt, n, scale, zero, q, gq_qm_inf());
}

/* Candidate (e, i) is better than (best_e, best_i): a smaller error, or the
 * same with a smaller index. The sequential search (first strictly smaller
 * error in index order) keeps the same candidate as a reduction over any
 * split of the indices with this order, each part starting at (inf, any). */
GQ_QM_FN int gq_qm_clip_better(float e, int i, float best_e, int best_i) {
    return e < best_e || (e == best_e && i < best_i);
}

/* Params of the values x[0 .. n) with min xmin = min(min(x), 0), max xmax =
 * max(max(x), 0): min-max (q.clip_n == 0), or the clipping search above
 * (wt: the weights of the weighted variant, or NULL). */
GQ_QM_FN void gq_qm_params_clip(const float *x, const float *wt, int n, float xmin, float xmax, gq_qcfg q,
                                float *scale, int32_t *zero) {
    gq_qm_range(&xmin, &xmax, q);
    gq_qm_params_range(xmin, xmax, q, scale, zero);
    float best = gq_qm_inf();
    for (int i = 0; i < q.clip_n; i++) {
        float s;
        int32_t z;
        gq_qm_clip_candidate(xmin, xmax, i, q, &s, &z);
        const float e = gq_qm_clip_err_below(x, wt, n, s, z, q, best);
        if (e < best) {
            best = e;
            *scale = s;
            *zero = z;
        }
    }
}

#endif /* GQ_QUANT_MATH_H */
