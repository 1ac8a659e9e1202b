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

/* What fixes the params of a group (gq_gptq_params, resolved). */
typedef struct {
    int maxq;      /* gq_maxq(bits) */
    int sym;       /* zero = (maxq + 1) / 2 */
    int zero_free; /* GQ_ZERO_FREE: an asymmetric zero may be 0 (else GQ_ZERO_V1's shifted grid) */
    int scale_f16; /* round each scale to fp16 before it is used */
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

/* Params from a range: xmin = min(min(x), 0), xmax = max(max(x), 0) (a
 * value of the other sign is clamped to 0 here too). */
GQ_QM_FN void gq_qm_params(float xmin, float xmax, gq_qcfg q, float *scale, int32_t *zero) {
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

#endif /* GQ_QUANT_MATH_H */
