/*
 * gq/gptq.h -- the group-wise integer quantizer and the GPTQ solve, as
 * IST-DASLab/gptq does it (../shared/docs/gptq-reference.md §1). One driver
 * (src/quant/gptq.c) runs it over a backend's primitives
 * (src/quant/gptq_driver.h): the CPU's (OpenBLAS + LAPACKE) for
 * gq_gptq_quantize and the CPU backend, the GPU's for the CUDA backend:
 *
 *   dead columns (diag H == 0 -> H_ii = 1, W[:, i] = 0); optional static
 *   groups (params of each group computed up front on W in original order);
 *   optional act-order (columns sorted by diag H, descending, stable);
 *   damping lambda = damp * mean(diag H); Hinv = upper Cholesky factor of
 *   H^-1 (potrf, potri, potrf); lazy blocks of block_size columns; per
 *   column: params at group starts (from the current W, i.e. with the error
 *   updates of earlier blocks but not of earlier columns of this block),
 *   q = clamp(rint(w / scale) + zero, 0, maxq), err = (w - deq) / Hinv_ii,
 *   in-block update with err x Hinv[i, i+1:], block update W[:, i2:] -=
 *   Err * Hinv[i1:i2, i2:]; loss += (w - deq)^2 / Hinv_ii^2 / 2.
 *
 * Layout: W is [rows][cols] row-major, the Hugging Face Linear layout
 * [out_features][in_features]; H is [cols][cols]. Rows are independent, so
 * the rows of several linears that share an input (q/k/v, gate/up) may be
 * stacked and solved with one H and one factorization.
 *
 * Quantizer (quant.py): asym: xmin = min(min(x), 0), xmax = max(max(x), 0),
 * both 0 -> [-1, 1]; scale = (xmax - xmin) / maxq; zero = rint(-xmin/scale).
 * sym: xmax = max(|xmin|, xmax), xmin = -xmax if xmin < 0, zero = (maxq+1)/2.
 * The solve uses these fp32 scales, as the reference does; the result's
 * scales are then rounded to the fp16 values the checkpoint stores and W is
 * returned dequantized with them (out_f16), so the forward of the next
 * modules sees exactly the exported model. scale_f16 = 1 instead rounds
 * each scale before it is used (measured slightly worse on pycoder-5m).
 * Clipping (p->clip, off by default): the scale from the shrunk range that
 * minimises the group's (optionally diag(H)-weighted) |q(x) - x|^2.4 error
 * instead of the full range (gq/quant_math.h gq_qm_params_clip).
 * Zero policy GQ_ZERO_V1: an asymmetric zero of 0 cannot be stored in the
 * AutoGPTQ v1 format (stored value = zero - 1); such a group gets zero 1 and
 * scale = (xmax - xmin) / (maxq - 1), the grid shifted up by one step, which
 * still covers [xmin, xmax]. GQ_ZERO_FREE keeps zero 0 (gptq_v2 output).
 * With fp16 scales, a scale that would round to 0 becomes the smallest fp16
 * subnormal (2^-24) and one that would overflow becomes 65504, so every
 * scale stays finite, positive and exportable; the zero is clamped to
 * [0, maxq] (rounding the scale can push rint(-xmin/scale) past maxq only
 * in those clamped cases).
 */
#ifndef GQ_GPTQ_H
#define GQ_GPTQ_H

#include "gq/common.h"
#include "gq/quant_math.h" /* gq_maxq, gq_quant_code, gq_dequant, gq_qm_params */

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { GQ_METHOD_GPTQ = 0, GQ_METHOD_RTN } gq_method;
typedef enum { GQ_ZERO_V1 = 0, GQ_ZERO_FREE } gq_zero_policy;
/* How a group's scale (and zero) is chosen (gq/quant_math.h, "the clipping
 * search"): MINMAX: the range of the values (the reference); MSE: the
 * shrunk range [p xmin, p xmax], p in 1, 0.99, ..., 0.21, that minimises
 * sum |q(x) - x|^2.4 over the group (GPTQModel's `mse`, quant.py's grid
 * search); MSE_H: the same error weighted by diag(H) of each column (the
 * activation energy; unweighted for RTN, which has no Hessian). The values
 * searched are the weights the params are computed from: the current
 * (error-updated) W at a dynamic group's start, W itself for static groups
 * and per-row params. The output stays plain v1 (one scale, zero per group). */
typedef enum { GQ_CLIP_MINMAX = 0, GQ_CLIP_MSE, GQ_CLIP_MSE_H } gq_clip;

typedef struct {
    gq_method method;
    int bits;          /* 2, 3, 4, 8 */
    int group_size;    /* 32, 64, 128, ..., or -1 = one group per row */
    int sym;           /* 1: zero = 2^(bits-1) */
    int act_order;
    int static_groups;
    double damp;       /* relative damping, 0.01 */
    int block_size;    /* 128 */
    gq_zero_policy zero_policy;
    int max_retries;   /* Cholesky retries with growing damping (8) */
    int scale_f16;     /* 1: round scales to fp16 before use; 0 (default): fp32
                          scales in the solve, the reference's semantics */
    int out_f16;       /* with scale_f16 = 0: round the result's scales to fp16
                          (the checkpoint's dtype) and return W dequantized
                          with them (default 1); 0: fp32 outputs */
    gq_clip clip;          /* group scale search (GQ_CLIP_MINMAX) */
    int clip_grid;         /* shrink factors p = 1 - i / clip_grid (GQ_CLIP_GRID, 100) */
    double clip_maxshrink; /* i < int(clip_maxshrink * clip_grid) (GQ_CLIP_MAXSHRINK, 0.8: 80 candidates) */
    float clip_norm;       /* error exponent (GQ_CLIP_NORM, 2.4) */
    int skip_codes;        /* 1: a result that gets a packed qweight (the CUDA solve, packable shapes)
                              leaves codes NULL: the export reads only qweight, and the codes'
                              download and copies cost ~0.15 s a 7B layer. 0 (default): codes too */
} gq_gptq_params;

void gq_gptq_params_default(gq_gptq_params *p);
/* The quantizer config of a solve (gq/quant_math.h); weighted: diag(H) is
 * available to weight the clipping search (GQ_CLIP_MSE_H with a Hessian). */
gq_qcfg gq_gptq_qcfg(const gq_gptq_params *p, int weighted);
/* "minmax", "mse", "mse-h" (the --clip values); gq_clip_parse: GQ_ERR_ARG for another string. */
const char *gq_clip_name(gq_clip c);
int gq_clip_parse(const char *s, gq_clip *out);

typedef struct {
    int rows, cols, ngroups;
    uint8_t *codes;   /* [rows][cols] integer codes, original column order (NULL: only qweight,
                         gq_gptq_params.skip_codes) */
    float *scales;    /* [ngroups][rows], each exactly fp16-representable */
    int32_t *zeros;   /* [ngroups][rows], in [0, maxq] (>= 1 under GQ_ZERO_V1) */
    int32_t *g_idx;   /* [cols] group of each input column */
    int32_t *perm;    /* [cols] act-order permutation (NULL without act-order) */
    int32_t *qweight; /* [cols * qweight_bits / 32][rows] the codes already packed in the AutoGPTQ
                         qweight layout (gq/pack.h), or NULL. The CUDA solve packs them on the GPU
                         when the shape is packable (gq_pack_shape_ok), the CPU solve leaves it
                         NULL; gq_pack copies it when packing at qweight_bits. Whoever changes codes
                         afterwards must free it and set it to NULL. */
    int qweight_bits; /* the width qweight was packed at (0 without qweight) */
    float *row_loss;  /* [rows] GPTQ loss per output row (0 for RTN and the RTN fallback) */
    double loss;      /* sum of row_loss */
    double damp_used; /* relative damping that finally worked */
    int retries;      /* how many times damping was increased */
    int fallback;     /* 1: Cholesky kept failing, rounded to nearest instead */
    int n_dead;       /* dead input columns */
    double seconds;
} gq_qresult;

/* Allocate result arrays for rows x cols (ngroups from the params); qweight
 * stays NULL. */
void gq_qresult_init(gq_qresult *r, const gq_gptq_params *p, int rows, int cols);
void gq_qresult_free(gq_qresult *r);
/* Copy rows [r0, r0 + n) of a result into out (newly allocated); a qweight
 * is sliced too: columns [r0, r0 + n) of each of its word rows. */
void gq_qresult_slice(const gq_qresult *r, int r0, int n, gq_qresult *out);
/* Rows [r0, r0 + n) of the results parts[np] stacked by rows, part p holding rows row0[p] ..
 * row0[p] + parts[p]->rows - 1 (several devices: each solved a slice of one weight's rows): the
 * arrays (codes and qweight where every part used has them) row by row, the shared metadata
 * (g_idx, perm, dead columns) from the first part used, the worst damping and retries. The parts
 * used must cover the rows. */
void gq_qresult_gather(const gq_qresult *const *parts, const int *row0, int np, int r0, int n, gq_qresult *out);

/* ---- quantizer (scalar reference; the math itself is gq/quant_math.h) ---- */

/* Params for n values x[0], x[stride], ... (fp16 scales, as scale_f16 = 1). */
void gq_quant_params(const float *x, int n, int stride, int bits, int sym, gq_zero_policy zp, float *scale,
                     int32_t *zero);
/* The same with the fp16 rounding of the scale selectable (scale_f16 0/1). */
void gq_quant_params_ex(const float *x, int n, int stride, int bits, int sym, gq_zero_policy zp, int scale_f16,
                        float *scale, int32_t *zero);
/* The same from a precomputed range: xmin = min(min(x), 0), xmax =
 * max(max(x), 0) (values of the other sign are clamped to 0 here too). */
void gq_quant_params_minmax(float xmin, float xmax, int bits, int sym, gq_zero_policy zp, int scale_f16,
                            float *scale, int32_t *zero);
/* Round every scale of r to the nearest fp16 value (never 0 or inf). */
void gq_qresult_round_scales(gq_qresult *r);
/* Dequantized weights W[rows][cols] from a result. */
void gq_qresult_dequant(const gq_qresult *r, float *W);

/* ---- solvers -------------------------------------------------------------- */

/* GPTQ (or RTN when p->method == GQ_METHOD_RTN, H unused and may be NULL),
 * on the CPU: the driver over the CPU primitives, as the CPU backend's
 * gq_be_gptq with h_scale 1.
 * W [rows][cols]: in, the weights; out, the dequantized weights.
 * H [cols][cols] symmetric (only the upper triangle, j >= i, is read); it is
 * destroyed. A Cholesky failure is retried with growing damping (logged);
 * after max_retries the module is rounded to nearest, res->fallback = 1 and
 * a warning is logged. NaN/Inf in W or H is GQ_ERR_NUMERIC (W untouched).
 * *res is initialised here (any previous content is overwritten, not freed);
 * on error it is left zeroed, so gq_qresult_free(res) is always safe.
 * Retries multiply the relative damping by 10 (from 0.01 when damp is 0);
 * res->perm is NULL for RTN (act-order needs H). */
int gq_gptq_quantize(const gq_gptq_params *p, float *W, int rows, int cols, float *H, gq_qresult *res);

/* Validate params for a rows x cols solve (H may be NULL for RTN): GQ_ERR_ARG
 * naming the bad field. The driver starts with it. */
int gq_gptq_check_params(const gq_gptq_params *p, int rows, int cols, const float *H);
/* The act-order permutation: perm[n] = argsort(diag, descending), ties by
 * ascending column (a stable sort, as torch.argsort(descending=True) on the
 * reference's inputs). The driver uses it for every backend. */
void gq_gptq_act_order_perm(const float *diag, int n, int32_t *perm);

/* The CPU's inverse factor step alone, exposed for tests and the CUDA reference:
 * H (full symmetric, cols x cols, dead columns already fixed, damping added)
 * -> upper Cholesky factor of H^-1, in place, in double precision.
 * Returns GQ_ERR_NOT_PD when a factorization fails. */
int gq_gptq_hinv(double *H, int n);

#ifdef __cplusplus
}
#endif
#endif /* GQ_GPTQ_H */
