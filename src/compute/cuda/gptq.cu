/*
 * cuda/gptq.cu -- the CUDA backend's GPTQ / RTN primitives for the one
 * driver (src/quant/gptq.c, quant/gptq_driver.h: checks, dead columns,
 * act-order, groups, damping retries, RTN fallback, bookkeeping), with the
 * semantics of the CPU's (IST-DASLab/gptq fasterquant):
 *
 *   scan:    H (fp32, upper triangle, caller's buffer) --scale, check,
 *            diag--> host (the driver: dead columns, mean(diag), act-order
 *            perm, group of every column)
 *   prepare: per-row / static group params up front (one warp per (row,
 *            group)) on W in original order (with --clip mse / mse-h: the
 *            clipping search of gq/quant_math.h, its candidates spread over
 *            the warp's lanes, on an fp32 copy); W (fp16, or fp32 with
 *            --precision fp32) --gather(perm), dead columns 0--> Wf [rows][K]
 *            fp32 working copy
 *   factor:  Hd = H[perm][perm] + damping, fp64 (or fp32) --cuSOLVER--> upper
 *            factor U of H^-1 (H^-1 = U^T U), written as fp32 over the
 *            caller's H buffer; Hd and the workspaces are allocated at the
 *            first attempt and kept for the driver's retries
 *   solve:   per block of <= 128 columns: ONE fused kernel
 *            (gptq_block_kernel), then one fp32 cublasSgemm for the lazy
 *            update of the columns to the right; row losses to the host
 *   finish:  unpermute: dequantized weights into W->data (its dtype), the
 *            codes packed into the checkpoint's qweight (pack.cu); codes,
 *            qweight, scales, zeros downloaded into the host gq_qresult.
 *
 * The fused block kernel: one warp per row (grid-stride over rows), lane l
 * holding columns 4l .. 4l+3 of the block in registers; the block's
 * Hinv[i1:i2, i1:i2] sits in shared memory. Per column j: params at a
 * (dynamic) group start from the global W (columns j .. j+gs of the global
 * buffer, which for this block still hold the block-start values: the
 * kernel writes its results back only at the end; with --clip the
 * clipping search over the same values, gptq_block_kernel<1>), or the precomputed
 * params (each lane loads its 4 columns' at the block start, the owner lane
 * hands them over); the column value is broadcast from its owner lane; every
 * lane computes the same q, dq, err (so no further communication); the rank-1
 * update of the lanes' later columns uses Hinv[j][4l..4l+3]. The owner keeps
 * w - dq, and the row's loss terms are computed after the block, each lane
 * its columns', summed over the warp (out of the column-to-column chain). All of it with explicitly rounded fp32 operations
 * (__fdiv_rn, __fmul_rn, __fsub_rn: no FMA contraction, no reciprocal
 * division), in the order the CPU solve evaluates them, so that identical
 * inputs give identical codes; the quantizer itself (params, code, dequant,
 * fp16 scales) is gq/quant_math.h, the same source as the host's.
 *
 * The inverse factor (gq_cuda_set_hinv_mode): fp64, from the
 * Cholesky factor of the reversed matrix: if J H J = L L^T (J the reversal
 * permutation) then H = (J L J)(J L J)^T with J L J upper, so H^-1 =
 * U^T U with U = (J L J)^-1 = J L^-1 J, the same (unique) factor as
 * chol(cholesky_inverse(chol(H)), upper) of the reference, for half the
 * flops (potrf + trtri instead of potrf + potri + potrf). The reference
 * chain itself is GQ_CUDA_HINV_F64_POTRI, and GQ_CUDA_HINV_F32_FIRST runs the
 * reversed route in fp32 first (fp64 when fp32 fails). GQ_CUDA_HINV_F64_HALVES,
 * the default, computes L^-1 by halves (lower_inverse): [A 0; B C]^-1 = [A^-1 0; -C^-1 B A^-1  C^-1], the
 * halves recursively and blocks of at most TRTRI_LEAF columns by cuSOLVER's
 * trtri, so nearly all flops run in two cuBLAS trmm per split at GEMM rates
 * (trtri alone reached ~5 TFLOP/s in fp64 on an H100: 86 ms for n = 11008).
 * Storage: cuSOLVER works column-major on the symmetric Hd,
 * so its "lower" triangle is the row-major upper triangle that the kernels
 * here write and read.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "gq/pack.h"
#include "gq/quant_math.h" /* the quantizer, shared with the host (quant.c, the CPU solve) */
#include "quant/gptq_driver.h"

#define GPTQ_BLK 128   /* columns per fused block (one float4 per lane) */
#define GPTQ_WARPS 8   /* rows in flight per CTA */

/* ---- preparation kernels ---------------------------------------------------------------------------------- */

/* First non-finite element of W [n] (fp16, or fp32 with --precision fp32)
 * into *bad (atomicMin of the index). */
template <typename E>
static __global__ void check_w_kernel(const E *W, size_t n, unsigned long long *bad) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (!isfinite(to_f(W[i]))) atomicMin(bad, (unsigned long long)i);
}

/* Upper triangle of H [n][n] scaled by s (as the CPU scales it in place):
 * first non-finite index into *bad, the scaled diagonal into diag[n]. */
static __global__ void prep_h_kernel(const float *H, int n, float s, float *diag, unsigned long long *bad) {
    const size_t nn = (size_t)n * n;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < nn; idx += (size_t)gridDim.x * blockDim.x) {
        size_t i = idx / (size_t)n, j = idx - i * n;
        if (j < i) continue;
        float v = __fmul_rn(H[idx], s);
        if (!isfinite(v)) atomicMin(bad, (unsigned long long)idx);
        if (i == j) diag[i] = v;
    }
}

/* Params of group g (original columns [g*gs, min((g+1)*gs, K))) of row r
 * from W [rows][K], dead columns read as 0: one warp per (row, group). */
template <typename E>
static __global__ void group_params_kernel(const E *W, int rows, int K, int gs, int ngroups, const uint8_t *dead,
                                           gq_qcfg q, float *scales, int32_t *zeros) {
    const int lane = threadIdx.x & 31;
    const size_t nw = (size_t)gridDim.x * (blockDim.x >> 5);
    for (size_t w = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); w < (size_t)rows * ngroups;
         w += nw) {
        const int g = (int)(w / rows), r = (int)(w - (size_t)g * rows);
        const int c0 = g * gs, c1 = c0 + gs < K ? c0 + gs : K;
        const E *wr = W + (size_t)r * K;
        float mn = 0.0f, mx = 0.0f;
        for (int c = c0 + lane; c < c1; c += 32) {
            float v = dead && dead[c] ? 0.0f : to_f(wr[c]);
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        mn = warp_min(mn);
        mx = warp_max(mx);
        if (lane == 0) {
            float s;
            int32_t z;
            gq_qm_params(mn, mx, q, &s, &z);
            scales[(size_t)g * rows + r] = s;
            zeros[(size_t)g * rows + r] = z;
        }
    }
}

/* The clipping search (gq/quant_math.h gq_qm_params_clip) by one warp: the
 * candidates are spread over the lanes (lane l tries i = l, l + 32, ...),
 * each evaluated with the shared sequential error sum over x[0 .. n) (all
 * lanes read the same x[k] at once: a broadcast), then the best (error,
 * index) is reduced over the warp (gq_qm_clip_better), which keeps the
 * candidate the sequential host loop keeps. Every lane returns the params.
 * xmin, xmax: min(min(x), 0), max(max(x), 0). */
static __device__ void warp_params_clip(const float *x, const float *wt, int n, float xmin, float xmax, gq_qcfg q,
                                        int lane, float *scale, int32_t *zero) {
    gq_qm_range(&xmin, &xmax, q);
    float be = gq_qm_inf();
    int bi = 0x7fffffff;
    for (int i = lane; i < q.clip_n; i += 32) {
        float s;
        int32_t z;
        gq_qm_clip_candidate(xmin, xmax, i, q, &s, &z);
        const float e = gq_qm_clip_err_below(x, wt, n, s, z, q, be); /* the lanes diverge here; reconverge below */
        if (e < be) be = e, bi = i; /* strict: a non-finite error never counts */
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float e2 = __shfl_xor_sync(GQ_FULL_MASK, be, o);
        const int i2 = __shfl_xor_sync(GQ_FULL_MASK, bi, o);
        if (gq_qm_clip_better(e2, i2, be, bi)) be = e2, bi = i2;
    }
    if (bi == 0x7fffffff) /* no finite error: min-max */
        gq_qm_params_range(xmin, xmax, q, scale, zero);
    else
        gq_qm_clip_candidate(xmin, xmax, bi, q, scale, zero);
}

/* Params of group g (columns [g*gs, min((g+1)*gs, K))) of row r from the
 * fp32 copy Wf [rows][K] (original column order, dead columns already 0
 * where they count) with the clipping search, weighted by wt [K] (mse-h) or
 * not (NULL): one warp per (row, group). */
static __global__ void clip_params_kernel(const float *Wf, int rows, int K, int gs, int ngroups, const float *wt,
                                          gq_qcfg q, float *scales, int32_t *zeros) {
    const int lane = threadIdx.x & 31;
    const size_t nw = (size_t)gridDim.x * (blockDim.x >> 5);
    for (size_t w = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); w < (size_t)rows * ngroups;
         w += nw) {
        const int g = (int)(w / rows), r = (int)(w - (size_t)g * rows);
        const int c0 = g * gs, c1 = c0 + gs < K ? c0 + gs : K;
        const float *x = Wf + (size_t)r * K + c0;
        float mn = 0.0f, mx = 0.0f;
        for (int c = lane; c < c1 - c0; c += 32) {
            float v = x[c];
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        mn = warp_min(mn);
        mx = warp_max(mx);
        float s;
        int32_t z;
        warp_params_clip(x, wt ? wt + c0 : NULL, c1 - c0, mn, mx, q, lane, &s, &z);
        if (lane == 0) {
            scales[(size_t)g * rows + r] = s;
            zeros[(size_t)g * rows + r] = z;
        }
    }
}

/* out[j] = in[perm[j]]: diag(H) in the permuted column order (the mse-h weights of dynamic groups). */
static __global__ void permute_f32_kernel(float *out, const float *in, const int32_t *perm, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = in[perm[i]];
}

/* Wf[r][j] = W[r][perm[j]] (0 for dead columns), fp16 (or fp32) -> fp32. */
template <typename E>
static __global__ void gather_w_kernel(float *Wf, const E *W, int rows, int K, const int32_t *perm,
                                       const uint8_t *dead) {
    const size_t n = (size_t)rows * K;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        size_t r = idx / (size_t)K, j = idx - r * K;
        int c = perm ? perm[j] : (int)j;
        Wf[idx] = dead && dead[c] ? 0.0f : to_f(W[r * K + c]);
    }
}

/* ---- the damped Hessian and its inverse factor ------------------------------------------------------------- */

/* Row-major upper triangle (j >= i) of Hd [n][n] in "factor order": position
 * p of the permuted order is i (rev = 0) or n-1-i (rev = 1); off-diagonal
 * entries are the scaled fp32 H values, the diagonal diag + lambda. */
template <typename T>
static __global__ void build_hd_kernel(T *Hd, const float *H, int n, float s, const float *diag, const int32_t *perm,
                                       double lambda, int rev) {
    const size_t nn = (size_t)n * n;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < nn; idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx / (size_t)n), j = (int)(idx - (size_t)i * n);
        if (j < i) continue;
        int pi = rev ? n - 1 - i : i, pj = rev ? n - 1 - j : j;
        int a = perm ? perm[pi] : pi, b = perm ? perm[pj] : pj;
        T v;
        if (a == b) {
            v = (T)((double)diag[a] + lambda);
        } else {
            float h = a < b ? H[(size_t)a * n + b] : H[(size_t)b * n + a];
            v = (T)__fmul_rn(h, s);
        }
        Hd[idx] = v;
    }
}

/* Hinv[i][j] (row-major, j >= i) = U[i][j] as fp32; U is the row-major upper
 * triangle of Hd itself (rev = 0), or U[i][j] = Linv[n-1-i][n-1-j] with
 * Linv column-major lower (rev = 1). The strictly lower triangle of Hinv is
 * not written (nothing reads it). */
template <typename T>
static __global__ void hinv_out_kernel(float *Hinv, const T *Hd, int n, int rev) {
    const size_t nn = (size_t)n * n;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < nn; idx += (size_t)gridDim.x * blockDim.x) {
        size_t i = idx / (size_t)n, j = idx - i * n;
        if (j < i) continue;
        size_t src = rev ? (size_t)(n - 1 - j) * n + (n - 1 - i) : idx;
        Hinv[idx] = (float)Hd[src];
    }
}

/* ---- the fused block kernel ---------------------------------------------------------------------------------- */

typedef struct {
    float *W;             /* [rows][K] fp32 working copy, permuted columns */
    const float *Hinv;    /* [K][K] upper factor, row-major; NULL: RTN (d = 1, no updates, no loss) */
    float *Err;           /* [rows][GPTQ_BLK] scaled errors of the block */
    uint8_t *codes;       /* [rows][K] codes, permuted column order */
    float *scales;        /* [ngroups][rows] */
    int32_t *zeros;       /* [ngroups][rows] */
    const int32_t *gcol;  /* [K] group of each permuted column */
    const float *wdiag;   /* [K] diag(H) of the permuted columns: the mse-h weights (NULL: unweighted) */
    double *row_loss;     /* [rows] */
    int rows, K, i1, cnt, gs, dynamic;
    gq_qcfg q;
} blk_args;

/* CLIP: dynamic group params by the clipping search (q.clip_n > 0); 0: min-max (the search's code kept out). */
template <int CLIP>
static __global__ void __launch_bounds__(GPTQ_WARPS * 32) gptq_block_kernel(blk_args a) {
    extern __shared__ float Hs[]; /* [cnt][GPTQ_BLK]: Hinv[i1 + j][i1 + c] for j <= c < cnt, else 0 */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (a.Hinv) {
        for (int idx = threadIdx.x; idx < a.cnt * GPTQ_BLK; idx += blockDim.x) {
            int j = idx / GPTQ_BLK, c = idx - j * GPTQ_BLK;
            /* the strictly lower part of Hinv is never written: keep it out */
            Hs[idx] = c >= j && c < a.cnt ? a.Hinv[(size_t)(a.i1 + j) * a.K + a.i1 + c] : 0.0f;
        }
    }
    __syncthreads();
    for (int r = blockIdx.x * GPTQ_WARPS + warp; r < a.rows; r += gridDim.x * GPTQ_WARPS) {
        float *wrow = a.W + (size_t)r * a.K;
        float w[4], er[4], dif[4]; /* dif: the quantization error of the lane's columns (for the loss) */
        uint32_t qpk = 0;          /* this lane's 4 codes, byte f = column 4 lane + f */
#pragma unroll
        for (int f = 0; f < 4; f++) {
            const int c = 4 * lane + f;
            w[f] = c < a.cnt ? wrow[a.i1 + c] : 0.0f;
            er[f] = 0.0f;
            dif[f] = 0.0f;
        }
        /* precomputed params (static groups, per row: !a.dynamic): the lane's 4 columns' scale and zero,
         * loaded at once here and handed to each column by its owner lane. With act-order the permuted
         * columns change group almost every column: reading them there put a dependent device-memory
         * load into every column's step */
        float psc[4] = {1.0f, 1.0f, 1.0f, 1.0f};
        int32_t pzr[4] = {0, 0, 0, 0};
        if (!a.dynamic) {
#pragma unroll
            for (int f = 0; f < 4; f++) {
                const int c = 4 * lane + f;
                if (c < a.cnt) {
                    const size_t gi = (size_t)a.gcol[a.i1 + c] * a.rows + r;
                    psc[f] = a.scales[gi];
                    pzr[f] = a.zeros[gi];
                }
            }
        }
        float scale = 1.0f;
        int32_t zero = 0;
        int gcur = -1;
        for (int jl = 0; jl < 32 && 4 * jl < a.cnt; jl++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int j = 4 * jl + e; /* column within the block; owner lane jl, register e */
                if (j < a.cnt) {          /* uniform over the warp */
                    const int col = a.i1 + j;
                    const int g = a.dynamic ? a.gcol[col] : 0;
                    if (!a.dynamic) {
                        scale = __shfl_sync(GQ_FULL_MASK, psc[e], jl);
                        zero = __shfl_sync(GQ_FULL_MASK, pzr[e], jl);
                    } else if (col % a.gs == 0) {
                        /* params from the global W, columns [col, col + gs) */
                        const int cend = col + a.gs < a.K ? col + a.gs : a.K;
                        float mn = 0.0f, mx = 0.0f;
                        for (int cc = col + lane; cc < cend; cc += 32) {
                            float v = wrow[cc];
                            mn = v < mn ? v : mn;
                            mx = v > mx ? v : mx;
                        }
                        mn = warp_min(mn);
                        mx = warp_max(mx);
                        if (CLIP)
                            warp_params_clip(wrow + col, a.wdiag ? a.wdiag + col : NULL, cend - col, mn, mx, a.q,
                                             lane, &scale, &zero);
                        else
                            gq_qm_params(mn, mx, a.q, &scale, &zero);
                        if (lane == 0) {
                            a.scales[(size_t)g * a.rows + r] = scale;
                            a.zeros[(size_t)g * a.rows + r] = zero;
                        }
                        gcur = g;
                    } else if (g != gcur) {
                        scale = a.scales[(size_t)g * a.rows + r];
                        zero = a.zeros[(size_t)g * a.rows + r];
                        gcur = g;
                    }
                    const float wj = __shfl_sync(GQ_FULL_MASK, w[e], jl);
                    const int qi = gq_quant_code(wj, scale, zero, a.q.maxq);
                    const float dq = gq_dequant(qi, scale, zero);
                    const float diff = __fsub_rn(wj, dq);
                    if (lane == jl) {
                        w[e] = dq; /* the column is done: keep its dequantized value */
                        qpk |= (uint32_t)qi << (8 * e);
                        dif[e] = diff;
                    }
                    if (a.Hinv) {
                        const float d = Hs[j * GPTQ_BLK + j];
                        const float err = __fdiv_rn(diff, d);
                        if (lane == jl) er[e] = err;
                        const float4 h4 = *(const float4 *)&Hs[j * GPTQ_BLK + 4 * lane];
                        const float hv[4] = {h4.x, h4.y, h4.z, h4.w};
#pragma unroll
                        for (int f = 0; f < 4; f++)
                            if (4 * lane + f > j) w[f] = __fsub_rn(w[f], __fmul_rn(err, hv[f]));
                    }
                }
            }
        }
#pragma unroll
        for (int f = 0; f < 4; f++) {
            const int c = 4 * lane + f;
            if (c < a.cnt) {
                wrow[a.i1 + c] = w[f];
                a.codes[(size_t)r * a.K + a.i1 + c] = (uint8_t)(qpk >> (8 * f));
                if (a.Hinv) a.Err[(size_t)r * GPTQ_BLK + c] = er[f];
            }
        }
        if (a.Hinv) { /* the row's loss terms (w - q)^2 / d^2 / 2, out of the column chain: each lane its columns */
            double loss = 0.0;
#pragma unroll
            for (int f = 0; f < 4; f++) {
                const int c = 4 * lane + f;
                if (c < a.cnt) {
                    const float d = Hs[c * GPTQ_BLK + c];
                    loss += (double)__fdiv_rn(__fdiv_rn(__fmul_rn(dif[f], dif[f]), __fmul_rn(d, d)), 2.0f);
                }
            }
            loss = warp_sum_d(loss);
            if (lane == 0) a.row_loss[r] += loss;
        }
    }
}

/* Wo[r][c] = Wf[r][inv[c]], codes_out[r][c] = codes[r][inv[c]] (inv
 * NULL: identity, codes_out NULL: codes are not moved): Wo (original column
 * order, the weight's dtype: fp16, or fp32 with --precision fp32) from the
 * working copy, or -- sc != NULL -- dequantized from the codes with the
 * (fp16-rounded) scales sc / zeros zr of group gcol[permuted column]. */
template <typename E>
static __global__ void output_kernel(E *Wo, const float *Wf, uint8_t *codes_out, const uint8_t *codes, int rows,
                                     int K, const int32_t *inv, const float *sc, const int32_t *zr,
                                     const int32_t *gcol) {
    const size_t n = (size_t)rows * K;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        size_t r = idx / (size_t)K, c = idx - r * K, pc = inv ? (size_t)inv[c] : c;
        size_t src = r * K + pc;
        if (sc) {
            size_t g = (size_t)gcol[pc] * rows + r;
            put_f(&Wo[idx], gq_dequant((int)codes[src], sc[g], zr[g]));
        } else {
            put_f(&Wo[idx], Wf[src]);
        }
        if (codes_out) codes_out[idx] = codes[src];
    }
}

static __global__ void round_scales_kernel(float *s, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s[i] = gq_round_scale_f16(s[i]);
}

/* ---- host side: the driver's primitives (quant/gptq_driver.h) ---------------------------------------------- */

/* Per-call state (job->state, zeroed by the driver): device buffers, freed by cuda_release. */
typedef struct {
    float *Wf;                 /* [rows][K] fp32 working copy, permuted columns */
    uint8_t *codes;            /* [rows][K] codes, permuted column order */
    uint8_t *codes_out;        /* [rows][K] unpermuted codes (act-order only) */
    uint8_t *dead;             /* [K] dead-column flags (NULL: none) */
    int32_t *qweight;          /* [K * bits / 32][rows] AutoGPTQ words of the unpermuted codes */
    float *Err;                /* [rows][GPTQ_BLK] scaled errors of a block */
    float *scales;             /* [ngroups][rows] */
    int32_t *zeros;            /* [ngroups][rows] */
    float *diag;               /* [K] diag of the scaled H (dead ones 1 after prepare) */
    float *wdiag;              /* [K] diag in the permuted order (mse-h with dynamic groups and act-order) */
    int32_t *gcol;             /* [K] group of each permuted column */
    int32_t *perm, *invperm;   /* [K] act-order permutation and its inverse (NULL without) */
    double *row_loss;          /* [rows] */
    unsigned long long *bad;   /* [2] first non-finite index of W, of H */
    void *Hd, *ws;             /* factor scratch: [K][K] fp64 (fp32 attempts: first half), cuSOLVER workspace */
    int *info;                 /* cuSOLVER status */
    void *ws_host;             /* cuSOLVER host workspace */
    size_t wsd, wsh;           /* workspace bytes (device, host) */
    int f32;                   /* W->data is fp32 (--precision fp32), else fp16 */
} gptq_dev;

static void gptq_dev_free(gq_backend *be, gptq_dev *m) {
    void *ps[] = {m->Wf,   m->codes, m->codes_out, m->dead,     m->Err, m->scales, m->diag, m->zeros,
                  m->gcol, m->perm,  m->invperm,   m->row_loss, m->bad, m->Hd,     m->ws,   m->info,
                  m->qweight, m->wdiag};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) gq_be_release(be, ps[i]);
    free(m->ws_host);
    memset(m, 0, sizeof *m);
}

/* The factor scratch alone (before the block solve allocates its own). */
static void factor_scratch_free(gq_backend *be, gptq_dev *m) {
    gq_be_release(be, m->Hd);
    gq_be_release(be, m->ws);
    gq_be_release(be, m->info);
    free(m->ws_host);
    m->Hd = m->ws = m->ws_host = NULL;
    m->info = NULL;
}

static int grid_for(size_t n) {
    size_t b = CEIL_DIV(n, (size_t)256);
    return (int)(b < 16384 ? (b ? b : 1) : 16384);
}

/* group_params_kernel with one warp per (row, group), nwarps of them, on W of either dtype. */
static void launch_group_params(cudaStream_t st, int f32, size_t nwarps, const void *W, int rows, int K, int gs,
                                int ngroups, const uint8_t *dead, gq_qcfg q, float *scales, int32_t *zeros) {
    if (f32)
        group_params_kernel<<<grid_for(nwarps * 32), 256, 0, st>>>((const float *)W, rows, K, gs, ngroups, dead, q,
                                                                    scales, zeros);
    else
        group_params_kernel<<<grid_for(nwarps * 32), 256, 0, st>>>((const __half *)W, rows, K, gs, ngroups, dead, q,
                                                                    scales, zeros);
}

/* Small device -> host copy that has completed on return. */
static int d2h_sync(gq_backend *be, void *dst, const void *src, size_t bytes) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return GQ_OK;
}

#define TRY(x)                          \
    do {                                \
        rc = (x);                       \
        if (rc != GQ_OK) goto out;      \
    } while (0)
#define TRY_ALLOC(ptr, type, bytes, what)                                  \
    do {                                                                   \
        if (!((ptr) = (type)gq_cuda_scratch(be, (bytes), (what)))) {       \
            rc = gq_errcode();                                             \
            goto out;                                                      \
        }                                                                  \
    } while (0)

/* ---- scan, prepare ------------------------------------------------------------------------------------------- */

/* scan: non-finite W, then (GPTQ) the scaled upper triangle of H, with one
 * synchronising download of both flags; diag of the scaled H to the host. */
static int cuda_scan(gq_gptq_job *j, gq_gptq_scan *s, float *diag) {
    gq_backend *be = j->be;
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    gptq_dev *m = (gptq_dev *)j->state;
    const int K = j->cols;
    const size_t nW = (size_t)j->rows * K;
    const float hs = (float)j->h_scale;
    unsigned long long b2[2];
    int rc = GQ_OK;
    if (j->W->dtype != be->act_dtype)
        return gq_err(GQ_ERR_ARG, "gptq on CUDA: the weight must be %s on the device, got %s",
                      gq_dtype_name(be->act_dtype), gq_dtype_name(j->W->dtype));
    m->f32 = j->W->dtype == GQ_DT_F32;
    TRY_ALLOC(m->bad, unsigned long long *, 2 * sizeof(unsigned long long), "gptq: flags");
    TRY(GQ_CU_OK(cudaMemsetAsync(m->bad, 0xff, 2 * sizeof(unsigned long long), c->stream)));
    if (m->f32)
        check_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>((const float *)j->W->data, nW, m->bad);
    else
        check_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>((const __half *)j->W->data, nW, m->bad);
    TRY(GQ_CU_OK(cudaGetLastError()));
    if (j->gptq) {
        TRY_ALLOC(m->diag, float *, (size_t)K * sizeof(float), "gptq: diag(H)");
        prep_h_kernel<<<grid_for((size_t)K * K), 256, 0, c->stream>>>(j->H, K, hs, m->diag, m->bad + 1);
        TRY(GQ_CU_OK(cudaGetLastError()));
    }
    TRY(d2h_sync(be, b2, m->bad, sizeof b2));
    if (b2[0] != ~0ull) {
        uint16_t hv = 0;
        float fv = 0.0f;
        if (m->f32)
            TRY(d2h_sync(be, &fv, (const float *)j->W->data + b2[0], sizeof fv));
        else
            TRY(d2h_sync(be, &hv, (const uint16_t *)j->W->data + b2[0], sizeof hv));
        s->w_index = (int64_t)b2[0];
        s->w_value = m->f32 ? (double)fv : (double)gq_f16_to_f32(hv);
    } else if (j->gptq && b2[1] != ~0ull) {
        float hv = 0;
        TRY(d2h_sync(be, &hv, j->H + b2[1], sizeof hv));
        s->h_index = (int64_t)b2[1];
        s->h_value = (double)(hv * hs);
    } else if (j->gptq) {
        TRY(gq_be_download(be, diag, m->diag, (size_t)K * sizeof(float)));
    }
out:
    return rc;
}

/* prepare: per-row params before the dead-column fix (as the CPU), the dead
 * flags and fixed diag, static group params, perm / invperm / gcol, and the
 * gathered fp32 working copy Wf; synchronised. */
static int cuda_prepare(gq_gptq_job *j) {
    gq_backend *be = j->be;
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    gptq_dev *m = (gptq_dev *)j->state;
    const int rows = j->rows, K = j->cols, ngroups = j->ngroups;
    const size_t nW = (size_t)rows * K;
    const void *W = j->W->data;
    const int clip = j->q.clip_n > 0;
    int rc = GQ_OK;
    TRY_ALLOC(m->scales, float *, (size_t)ngroups * rows * sizeof(float), "gptq: scales");
    TRY_ALLOC(m->zeros, int32_t *, (size_t)ngroups * rows * sizeof(int32_t), "gptq: zeros");
    TRY_ALLOC(m->gcol, int32_t *, (size_t)K * sizeof(int32_t), "gptq: column groups");
    TRY_ALLOC(m->Wf, float *, nW * sizeof(float), "gptq: fp32 working copy of W");
    TRY_ALLOC(m->codes, uint8_t *, nW, "gptq: codes");
    if (j->mode == GQ_GROUPS_ONE && !clip) {
        launch_group_params(c->stream, m->f32, (size_t)rows, W, rows, K, K, 1, NULL, j->q, m->scales, m->zeros);
        TRY(GQ_CU_OK(cudaGetLastError()));
    }
    if (j->n_dead) {
        TRY_ALLOC(m->dead, uint8_t *, (size_t)K, "gptq: dead columns");
        TRY(gq_be_upload(be, m->dead, j->dead, (size_t)K));
        TRY(gq_be_upload(be, m->diag, j->diag, (size_t)K * sizeof(float)));
    }
    if (j->mode == GQ_GROUPS_STATIC && !clip) {
        launch_group_params(c->stream, m->f32, (size_t)rows * ngroups, W, rows, K, j->gs, ngroups, m->dead, j->q,
                            m->scales, m->zeros);
        TRY(GQ_CU_OK(cudaGetLastError()));
    }
    if (clip && j->mode != GQ_GROUPS_DYNAMIC) {
        /* the clipping search on an fp32 copy in the original column order (per-row params: before the
         * dead-column fix, as above; static groups: dead columns 0), weighted by diag(H) for mse-h; Wf is
         * overwritten by the working copy below */
        const int one = j->mode == GQ_GROUPS_ONE, gs = one ? K : j->gs, ng = one ? 1 : ngroups;
        if (m->f32)
            gather_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>(m->Wf, (const float *)W, rows, K, NULL,
                                                                 one ? NULL : m->dead);
        else
            gather_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>(m->Wf, (const __half *)W, rows, K, NULL,
                                                                 one ? NULL : m->dead);
        TRY(GQ_CU_OK(cudaGetLastError()));
        clip_params_kernel<<<grid_for((size_t)rows * ng * 32), 256, 0, c->stream>>>(
            m->Wf, rows, K, gs, ng, j->q.clip_weighted ? m->diag : NULL, j->q, m->scales, m->zeros);
        TRY(GQ_CU_OK(cudaGetLastError()));
    }
    if (j->perm) {
        TRY_ALLOC(m->perm, int32_t *, (size_t)K * sizeof(int32_t), "gptq: permutation");
        TRY_ALLOC(m->invperm, int32_t *, (size_t)K * sizeof(int32_t), "gptq: inverse permutation");
        TRY(gq_be_upload(be, m->perm, j->perm, (size_t)K * sizeof(int32_t)));
        TRY(gq_be_upload(be, m->invperm, j->invperm, (size_t)K * sizeof(int32_t)));
    }
    if (clip && j->q.clip_weighted && j->mode == GQ_GROUPS_DYNAMIC && m->perm) {
        TRY_ALLOC(m->wdiag, float *, (size_t)K * sizeof(float), "gptq: permuted diag(H)");
        permute_f32_kernel<<<grid_for((size_t)K), 256, 0, c->stream>>>(m->wdiag, m->diag, m->perm, K);
        TRY(GQ_CU_OK(cudaGetLastError()));
    }
    TRY(gq_be_upload(be, m->gcol, j->gcol, (size_t)K * sizeof(int32_t)));
    if (m->f32)
        gather_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>(m->Wf, (const float *)W, rows, K, m->perm, m->dead);
    else
        gather_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>(m->Wf, (const __half *)W, rows, K, m->perm, m->dead);
    TRY(GQ_CU_OK(cudaGetLastError()));
    TRY(GQ_CU_OK(cudaStreamSynchronize(c->stream)));
out:
    return rc;
}

/* ---- the inverse factor -------------------------------------------------------------------------------------- */

/* cuBLAS trmm in place (C = B), for either element type. */
static cublasStatus_t trmm(cublasHandle_t h, cublasSideMode_t side, int m, int n, double alpha, const double *A,
                           int lda, double *B, int ldb) {
    return cublasDtrmm(h, side, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, m, n, &alpha, A, lda, B, ldb,
                       B, ldb);
}
static cublasStatus_t trmm(cublasHandle_t h, cublasSideMode_t side, int m, int n, double alpha, const float *A, int lda,
                           float *B, int ldb) {
    const float a = (float)alpha;
    return cublasStrmm(h, side, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, m, n, &a, A, lda, B, ldb, B,
                       ldb);
}
static cudaDataType dtype_of(const double *) { return CUDA_R_64F; }
static cudaDataType dtype_of(const float *) { return CUDA_R_32F; }

#define TRTRI_LEAF 512

/* L (column-major lower, n x n, leading dimension ld, non-unit diagonal) -> L^-1 in place: blocks
 * of at most TRTRI_LEAF by cuSOLVER's trtri (info: the last leaf's, in m->info), larger ones by
 * halves, B <- B A^-1 then B <- -C^-1 B (A, C already inverted). */
template <typename T>
static int lower_inverse(gq_cuda_ctx *c, T *L, int n, int ld, gptq_dev *m, size_t ws_bytes, void *ws_host,
                         size_t ws_host_bytes) {
    if (n <= TRTRI_LEAF) {
        CUSOLVER_CHECK(cusolverDnXtrtri(c->cusolver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, dtype_of(L), L,
                                        ld, m->ws, ws_bytes, ws_host, ws_host_bytes, m->info));
        return GQ_OK;
    }
    const int n1 = (n / 2 + 31) / 32 * 32, n2 = n - n1;
    T *A = L, *B = L + n1, *C = L + (size_t)n1 * ld + n1;
    int rc = lower_inverse(c, A, n1, ld, m, ws_bytes, ws_host, ws_host_bytes);
    if (rc == GQ_OK) rc = lower_inverse(c, C, n2, ld, m, ws_bytes, ws_host, ws_host_bytes);
    if (rc != GQ_OK) return rc;
    CUBLAS_CHECK(trmm(c->cublas, CUBLAS_SIDE_RIGHT, n2, n1, 1.0, A, ld, B, ld));  /* B A^-1 */
    CUBLAS_CHECK(trmm(c->cublas, CUBLAS_SIDE_LEFT, n2, n1, -1.0, C, ld, B, ld)); /* -C^-1 (B A^-1) */
    return GQ_OK;
}

/* One factorization attempt at damping lambda: Hinv (fp32, the caller's H
 * buffer) on success; GQ_ERR_NOT_PD (message as the CPU path's) when a
 * factorization fails; GQ_ERR_DEVICE on CUDA errors. f64: element type;
 * potri: the reference chain (else reversed potrf + trtri); halves: trtri by halves (lower_inverse). */
static int factor_once(gq_backend *be, gptq_dev *m, float *H, int n, float s, const int32_t *perm_dev,
                       double lambda, int f64, int potri, int halves, size_t ws_bytes, void *ws_host,
                       size_t ws_host_bytes) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const cudaDataType dt = f64 ? CUDA_R_64F : CUDA_R_32F;
    const int rev = !potri;
    const char *prec = f64 ? "fp64" : "fp32";
    int info = 0;
    if (f64)
        build_hd_kernel<double><<<grid_for((size_t)n * n), 256, 0, c->stream>>>((double *)m->Hd, H, n, s, m->diag,
                                                                              perm_dev, lambda, rev);
    else
        build_hd_kernel<float><<<grid_for((size_t)n * n), 256, 0, c->stream>>>((float *)m->Hd, H, n, s, m->diag,
                                                                              perm_dev, lambda, rev);
    CUDA_CHECK_LAUNCH();
    const double tf0 = gq_now();
    CUSOLVER_CHECK(cusolverDnXpotrf(c->cusolver, c->cusolver_params, CUBLAS_FILL_MODE_LOWER, n, dt, m->Hd, n, dt, m->ws,
                                    ws_bytes, ws_host, ws_host_bytes, m->info));
    int rc = d2h_sync(be, &info, m->info, sizeof info);
    if (rc != GQ_OK) return rc;
    const double tf1 = gq_now();
    if (info > 0)
        return gq_err(GQ_ERR_NOT_PD,
                      "Cholesky of the damped Hessian (%s potrf, step 1 of %d) failed: the leading minor of order %d "
                      "of %d is not positive definite",
                      prec, potri ? 3 : 2, info, n);
    if (info < 0) return gq_err(GQ_ERR_DEVICE, "cusolverDnXpotrf: parameter %d is invalid", -info);
    if (potri) {
        if (f64) {
            CUSOLVER_CHECK(cusolverDnDpotri(c->cusolver, CUBLAS_FILL_MODE_LOWER, n, (double *)m->Hd, n,
                                            (double *)m->ws, (int)(ws_bytes / sizeof(double)), m->info));
        } else {
            CUSOLVER_CHECK(cusolverDnSpotri(c->cusolver, CUBLAS_FILL_MODE_LOWER, n, (float *)m->Hd, n,
                                            (float *)m->ws, (int)(ws_bytes / sizeof(float)), m->info));
        }
        if ((rc = d2h_sync(be, &info, m->info, sizeof info)) != GQ_OK) return rc;
        if (info > 0)
            return gq_err(GQ_ERR_NOT_PD,
                          "inverse of the damped Hessian (%s potri, step 2 of 3) failed: diagonal element %d of %d "
                          "of the Cholesky factor is zero",
                          prec, info, n);
        if (info < 0) return gq_err(GQ_ERR_DEVICE, "cusolverDn?potri: parameter %d is invalid", -info);
        CUSOLVER_CHECK(cusolverDnXpotrf(c->cusolver, c->cusolver_params, CUBLAS_FILL_MODE_LOWER, n, dt, m->Hd, n, dt,
                                        m->ws, ws_bytes, ws_host, ws_host_bytes, m->info));
        if ((rc = d2h_sync(be, &info, m->info, sizeof info)) != GQ_OK) return rc;
        if (info > 0)
            return gq_err(GQ_ERR_NOT_PD,
                          "Cholesky of the inverse Hessian (%s potrf, step 3 of 3) failed: the leading minor of "
                          "order %d of %d is not positive definite",
                          prec, info, n);
        if (info < 0) return gq_err(GQ_ERR_DEVICE, "cusolverDnXpotrf: parameter %d is invalid", -info);
    } else {
        if (halves) { /* by halves: the info of the last trtri block */
            CUDA_CHECK(cudaMemsetAsync(m->info, 0, sizeof(int), c->stream));
            rc = f64 ? lower_inverse(c, (double *)m->Hd, n, n, m, ws_bytes, ws_host, ws_host_bytes)
                     : lower_inverse(c, (float *)m->Hd, n, n, m, ws_bytes, ws_host, ws_host_bytes);
            if (rc != GQ_OK) return rc;
        } else {
            CUSOLVER_CHECK(cusolverDnXtrtri(c->cusolver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, dt, m->Hd,
                                            n, m->ws, ws_bytes, ws_host, ws_host_bytes, m->info));
        }
        if ((rc = d2h_sync(be, &info, m->info, sizeof info)) != GQ_OK) return rc;
        if (info > 0)
            return gq_err(GQ_ERR_NOT_PD,
                          "inverse of the Cholesky factor (%s trtri, step 2 of 2) failed: diagonal element %d of %d "
                          "is zero",
                          prec, info, n);
        if (info < 0) return gq_err(GQ_ERR_DEVICE, "cusolverDnXtrtri: parameter %d is invalid", -info);
    }
    gq_debug("gptq (cuda): %d x %d %s inverse factor: potrf %.3f s, %s %.3f s", n, n, prec, tf1 - tf0,
             potri ? "potri + potrf" : "trtri", gq_now() - tf1);
    if (f64)
        hinv_out_kernel<double><<<grid_for((size_t)n * n), 256, 0, c->stream>>>(H, (const double *)m->Hd, n, rev);
    else
        hinv_out_kernel<float><<<grid_for((size_t)n * n), 256, 0, c->stream>>>(H, (const float *)m->Hd, n, rev);
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}

/* Workspace for every factorization the mode may run (device bytes, host bytes). */
static int factor_workspace(gq_backend *be, gptq_dev *m, int n, int mode, size_t *dev_bytes, size_t *host_bytes) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    size_t d = 0, h = 0, dd, hh;
    for (int f64 = 0; f64 <= 1; f64++) {
        if (!f64 && mode != GQ_CUDA_HINV_F32_FIRST) continue;
        const cudaDataType dt = f64 ? CUDA_R_64F : CUDA_R_32F;
        CUSOLVER_CHECK(cusolverDnXpotrf_bufferSize(c->cusolver, c->cusolver_params, CUBLAS_FILL_MODE_LOWER, n, dt,
                                                   m->Hd, n, dt, &dd, &hh));
        d = dd > d ? dd : d;
        h = hh > h ? hh : h;
        const int potri = mode == GQ_CUDA_HINV_F64_POTRI;
        if (potri) {
            int lw = 0;
            if (f64)
                CUSOLVER_CHECK(cusolverDnDpotri_bufferSize(c->cusolver, CUBLAS_FILL_MODE_LOWER, n, (double *)m->Hd, n, &lw));
            else
                CUSOLVER_CHECK(cusolverDnSpotri_bufferSize(c->cusolver, CUBLAS_FILL_MODE_LOWER, n, (float *)m->Hd, n, &lw));
            dd = (size_t)lw * (f64 ? sizeof(double) : sizeof(float));
            d = dd > d ? dd : d;
        } else {
            CUSOLVER_CHECK(cusolverDnXtrtri_bufferSize(c->cusolver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n,
                                                       dt, m->Hd, n, &dd, &hh));
            d = dd > d ? dd : d;
            h = hh > h ? hh : h;
        }
    }
    *dev_bytes = d;
    *host_bytes = h;
    return GQ_OK;
}

/* First factor call: the scratch for every attempt of this solve (Hd, info, workspaces). */
static int factor_begin(gq_gptq_job *j) {
    gq_backend *be = j->be;
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    gptq_dev *m = (gptq_dev *)j->state;
    const int n = j->cols;
    const size_t hd_bytes = (size_t)n * n * sizeof(double); /* fp64 size; the fp32 attempt uses the first half */
    int rc = GQ_OK;
    TRY_ALLOC(m->Hd, void *, hd_bytes, "gptq: damped Hessian (fp64)");
    /* cuSOLVER reads only the column-major lower (= row-major upper)
     * triangle, which build_hd_kernel writes; clear the rest once anyway */
    TRY(GQ_CU_OK(cudaMemsetAsync(m->Hd, 0, hd_bytes, c->stream)));
    TRY_ALLOC(m->info, int *, sizeof(int), "gptq: cuSOLVER info");
    TRY(factor_workspace(be, m, n, c->hinv_mode, &m->wsd, &m->wsh));
    TRY_ALLOC(m->ws, void *, m->wsd ? m->wsd : 16, "gptq: cuSOLVER workspace");
    if (m->wsh) m->ws_host = gq_malloc(m->wsh);
    c->gptq_timing.hinv_f64 = 0;
out:
    return rc;
}

/* factor: one attempt at damping lambda (the driver retries): fp64, or
 * with GQ_CUDA_HINV_F32_FIRST fp32 first and fp64 when fp32 fails. U (fp32)
 * over the caller's H on success; the scratch stays for the next attempt. */
static int cuda_factor(gq_gptq_job *j, double lambda) {
    gq_backend *be = j->be;
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    gptq_dev *m = (gptq_dev *)j->state;
    const int mode = c->hinv_mode, potri = mode == GQ_CUDA_HINV_F64_POTRI;
    int rc = GQ_OK;
    if (!m->Hd && (rc = factor_begin(j)) != GQ_OK) return rc;
    for (int f64 = mode == GQ_CUDA_HINV_F32_FIRST ? 0 : 1; f64 <= 1; f64++) {
        rc = factor_once(be, m, j->H, j->cols, (float)j->h_scale, m->perm, lambda, f64, potri,
                         mode == GQ_CUDA_HINV_F64_HALVES, m->wsd, m->ws_host,
                         m->wsh);
        if (rc == GQ_OK) {
            c->gptq_timing.hinv_f64 = f64;
            return GQ_OK;
        }
        if (rc != GQ_ERR_NOT_PD) return rc;
        if (!f64) gq_debug("gptq: fp32 inverse factor failed (%s); trying fp64", gq_errmsg());
    }
    return rc;
}

/* ---- solve, finish ------------------------------------------------------------------------------------------- */

/* Grid for the block kernel: enough CTAs to fill the GPU at its occupancy. */
static int block_grid(gq_backend *be, int rows, size_t smem, int clip) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, clip ? gptq_block_kernel<1> : gptq_block_kernel<0>,
                                                      GPTQ_WARPS * 32, smem) !=
            cudaSuccess ||
        per_sm < 1) {
        (void)cudaGetLastError();
        per_sm = 1;
    }
    int want = CEIL_DIV(rows, GPTQ_WARPS), cap = per_sm * c->prop.multiProcessorCount;
    return want < cap ? want : cap;
}

/* solve: per block of <= GPTQ_BLK columns one fused kernel, then (GPTQ) one
 * fp32 cublasSgemm for the lazy update; the row losses to the host. */
static int cuda_solve(gq_gptq_job *j, int use_factor, double *row_loss) {
    gq_backend *be = j->be;
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    gptq_dev *m = (gptq_dev *)j->state;
    const gq_gptq_params *p = j->p;
    const int rows = j->rows, K = j->cols;
    const int B = j->gptq && p->block_size > 0 ? (p->block_size < GPTQ_BLK ? p->block_size : GPTQ_BLK) : GPTQ_BLK;
    const float *Hinv = use_factor ? j->H : NULL;
    const float minus_one = -1.0f, one = 1.0f;
    size_t smem = 0;
    int rc = GQ_OK;
    /* the search's kernel only where dynamic groups use it (precomputed params are read as they are) */
    const int clip = j->q.clip_n > 0 && j->mode == GQ_GROUPS_DYNAMIC;
    factor_scratch_free(be, m);
    if (Hinv) {
        TRY_ALLOC(m->Err, float *, (size_t)rows * GPTQ_BLK * sizeof(float), "gptq: block errors");
        TRY_ALLOC(m->row_loss, double *, (size_t)rows * sizeof(double), "gptq: row losses");
        TRY(GQ_CU_OK(cudaMemsetAsync(m->row_loss, 0, (size_t)rows * sizeof(double), c->stream)));
        smem = (size_t)GPTQ_BLK * GPTQ_BLK * sizeof(float);
        TRY(GQ_CU_OK(cudaFuncSetAttribute(clip ? gptq_block_kernel<1> : gptq_block_kernel<0>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)));
    }
    {
        const int grid = block_grid(be, rows, smem, clip);
        for (int i1 = 0; i1 < K; i1 += B) {
            const int i2 = i1 + B < K ? i1 + B : K, cnt = i2 - i1;
            blk_args a;
            a.W = m->Wf;
            a.Hinv = Hinv;
            a.Err = m->Err;
            a.codes = m->codes;
            a.scales = m->scales;
            a.zeros = m->zeros;
            a.gcol = m->gcol;
            a.wdiag = j->q.clip_weighted ? (m->wdiag ? m->wdiag : m->diag) : NULL;
            a.row_loss = m->row_loss;
            a.rows = rows;
            a.K = K;
            a.i1 = i1;
            a.cnt = cnt;
            a.gs = j->gs;
            a.dynamic = j->mode == GQ_GROUPS_DYNAMIC;
            a.q = j->q;
            const size_t sm = Hinv ? (size_t)cnt * GPTQ_BLK * sizeof(float) : 0;
            if (clip)
                gptq_block_kernel<1><<<grid, GPTQ_WARPS * 32, sm, c->stream>>>(a);
            else
                gptq_block_kernel<0><<<grid, GPTQ_WARPS * 32, sm, c->stream>>>(a);
            TRY(GQ_CU_OK(cudaGetLastError()));
            if (Hinv && i2 < K) {
                /* W[:, i2:] -= Err [rows][cnt] * Hinv[i1:i2, i2:], column-major view:
                 * W^T[i2:, :] ((K-i2) x rows, ld K) -= Hinv[i1:i2, i2:]^T ((K-i2) x cnt, ld K)
                 *                                      * Err^T (cnt x rows, ld GPTQ_BLK) */
                if (c->gptq_tf32) /* GQ_CUDA_GPTQ_TF32: the same product on the tensor cores */
                    TRY(GQ_CU_OK(cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, K - i2, rows, cnt, &minus_one,
                                              Hinv + (size_t)i1 * K + i2, CUDA_R_32F, K, m->Err, CUDA_R_32F, GPTQ_BLK,
                                              &one, m->Wf + i2, CUDA_R_32F, K, CUBLAS_COMPUTE_32F_FAST_TF32,
                                              CUBLAS_GEMM_DEFAULT)));
                else
                    TRY(GQ_CU_OK(cublasSgemm(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, K - i2, rows, cnt, &minus_one,
                                             Hinv + (size_t)i1 * K + i2, K, m->Err, GPTQ_BLK, &one, m->Wf + i2, K)));
            }
        }
    }
    TRY(GQ_CU_OK(cudaStreamSynchronize(c->stream)));
    if (Hinv) TRY(gq_be_download(be, row_loss, m->row_loss, (size_t)rows * sizeof(double)));
out:
    return rc;
}

/* finish: fp16 scales (round_out) and W->data (its dtype) rebuilt from the
 * codes with them, or the working copy, unpermuted; the qweight packed on
 * the device when the shape is packable; codes, qweight, scales, zeros to
 * the host result; the phase times into the context. */
static int cuda_finish(gq_gptq_job *j) {
    gq_backend *be = j->be;
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    gptq_dev *m = (gptq_dev *)j->state;
    gq_qresult *res = j->res;
    const int rows = j->rows, K = j->cols, bits = j->p->bits;
    const size_t nW = (size_t)rows * K, ng = (size_t)j->ngroups * rows;
    const float *sc = j->round_out ? m->scales : NULL;
    const double t0 = gq_now();
    int rc = GQ_OK;
    if (m->invperm) TRY_ALLOC(m->codes_out, uint8_t *, nW, "gptq: unpermuted codes");
    if (j->round_out) {
        round_scales_kernel<<<grid_for(ng), 256, 0, c->stream>>>(m->scales, ng);
        TRY(GQ_CU_OK(cudaGetLastError()));
    }
    if (m->f32)
        output_kernel<<<grid_for(nW), 256, 0, c->stream>>>((float *)j->W->data, m->Wf, m->codes_out, m->codes, rows,
                                                           K, m->invperm, sc, m->zeros, m->gcol);
    else
        output_kernel<<<grid_for(nW), 256, 0, c->stream>>>((__half *)j->W->data, m->Wf, m->codes_out, m->codes, rows,
                                                           K, m->invperm, sc, m->zeros, m->gcol);
    TRY(GQ_CU_OK(cudaGetLastError()));
    /* the checkpoint's qweight [K * bits / 32][rows], packed here from the unpermuted codes (gq_pack copies
     * it); a shape gq_pack rejects gets none, and no error: gq_pack reports the shape at export */
    if (gq_pack_shape_ok(rows, K, bits)) {
        const size_t nqw = (size_t)gq_pack_qw_rows(K, bits) * rows;
        TRY_ALLOC(m->qweight, int32_t *, nqw * sizeof(int32_t), "gptq: packed qweight");
        TRY(gq_cuda_pack_qweight(be, m->qweight, m->codes_out ? m->codes_out : m->codes, rows, K, bits));
        res->qweight = (int32_t *)gq_malloc(nqw * sizeof(int32_t));
        res->qweight_bits = bits;
        TRY(gq_be_download(be, res->qweight, m->qweight, nqw * sizeof(int32_t)));
    }
    if (j->p->skip_codes && res->qweight) {
        free(res->codes); /* never touched: calloc'd pages */
        res->codes = NULL;
    } else {
        TRY(gq_be_download(be, res->codes, m->codes_out ? m->codes_out : m->codes, nW));
    }
    TRY(gq_be_download(be, res->scales, m->scales, ng * sizeof(float)));
    TRY(gq_be_download(be, res->zeros, m->zeros, ng * sizeof(int32_t)));
    c->gptq_timing.prep = j->t_prep;
    c->gptq_timing.factor = j->t_factor;
    c->gptq_timing.blocks = j->t_solve;
    c->gptq_timing.output = gq_now() - t0;
out:
    return rc;
}

static void cuda_release(gq_gptq_job *j) {
    if (j->state) gptq_dev_free(j->be, (gptq_dev *)j->state);
}

/* name, max_block, state_bytes, scan, prepare, factor, solve, finish, release */
static const gq_gptq_ops cuda_gptq_ops = {"CUDA",      GPTQ_BLK,   sizeof(gptq_dev), cuda_scan,   cuda_prepare,
                                          cuda_factor, cuda_solve, cuda_finish,      cuda_release};

/* The backend's `gptq` entry (backend_cuda.cu's vtable): the driver over the primitives above. */
int gq_cuda_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res) {
    /* the device is per host thread: a forked backend's solves run on worker threads (qlayer.c) */
    CUDA_CHECK(cudaSetDevice(gq_cuda_ctx_of(be)->device));
    return gq_gptq_drive(&cuda_gptq_ops, be, p, W, H, h_scale, res);
}
