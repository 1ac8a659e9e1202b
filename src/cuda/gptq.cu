/*
 * cuda/gptq.cu -- the GPTQ / RTN solve on the GPU with the semantics of
 * gq_gptq_quantize (src/gptq.c; IST-DASLab/gptq fasterquant):
 *
 *   H (fp32, upper triangle, caller's buffer) --scale, check, diag--> host:
 *     dead columns (diag 0 -> 1, W column 0), mean(diag), act-order perm
 *     (stable argsort, as the CPU), group of every column
 *   W (fp16, or fp32 with --precision fp32) --gather(perm), dead columns 0-->
 *     Wf [rows][K] fp32 working copy
 *   static groups / per-row params: all group params up front (one warp per
 *     (row, group)) on W in original order
 *   Hd = H[perm][perm] + damping, fp64 (or fp32) --cuSOLVER--> upper factor U
 *     of H^-1 (H^-1 = U^T U), written as fp32 over the caller's H buffer
 *   per block of <= 128 columns: ONE fused kernel (gptq_block_kernel), then
 *     one fp32 cublasSgemm for the lazy update of the columns to the right
 *   unpermute: dequantized weights into W->data (its dtype), the codes
 *     packed into the checkpoint's qweight (pack.cu); codes, qweight,
 *     scales, zeros, row losses downloaded into the host gq_qresult.
 *
 * The fused block kernel: one warp per row (grid-stride over rows), lane l
 * holding columns 4l .. 4l+3 of the block in registers; the block's
 * Hinv[i1:i2, i1:i2] sits in shared memory. Per column j: params at a
 * (dynamic) group start from the global W (columns j .. j+gs of the global
 * buffer, which for this block still hold the block-start values: the
 * kernel writes its results back only at the end), or the precomputed
 * params when the group changes; the column value is broadcast from its
 * owner lane; every lane computes the same q, dq, err, loss term (so no
 * further communication); the rank-1 update of the lanes' later columns uses
 * Hinv[j][4l..4l+3]. All of it with explicitly rounded fp32 operations
 * (__fdiv_rn, __fmul_rn, __fsub_rn: no FMA contraction, no reciprocal
 * division), in the order gptq.c evaluates them, so that identical inputs
 * give identical codes.
 *
 * The inverse factor (gq_cuda_set_hinv_mode): by default fp64, from the
 * Cholesky factor of the reversed matrix: if J H J = L L^T (J the reversal
 * permutation) then H = (J L J)(J L J)^T with J L J upper, so H^-1 =
 * U^T U with U = (J L J)^-1 = J L^-1 J, the same (unique) factor as
 * chol(cholesky_inverse(chol(H)), upper) of the reference, for half the
 * flops (potrf + trtri instead of potrf + potri + potrf). The reference
 * chain itself is GQ_CUDA_HINV_F64_POTRI, and GQ_CUDA_HINV_F32_FIRST runs the
 * reversed route in fp32 first (fp64 when fp32 fails). Storage: cuSOLVER works column-major on the symmetric Hd,
 * so its "lower" triangle is the row-major upper triangle that the kernels
 * here write and read.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/common.cuh"
#include "gq/pack.h"

#define GPTQ_BLK 128   /* columns per fused block (one float4 per lane) */
#define GPTQ_WARPS 8   /* rows in flight per CTA */

typedef struct {
    int bits, maxq, sym, zero_free, scale_f16;
} qcfg;

/* ---- quantizer (device copy of quant.c) ------------------------------------------------------------- */

static __device__ float round_scale_f16(float s) {
    float h = __half2float(__float2half_rn(s));
    if (h == 0.0f) return 5.9604644775390625e-08f; /* 2^-24, the smallest fp16 subnormal */
    if (isinf(h)) return 65504.0f;
    return h;
}

/* gq_quant_params_minmax, operation for operation. */
static __device__ void quant_params(float xmin, float xmax, const qcfg &q, float *scale, int *zero) {
    if (xmin > 0.0f) xmin = 0.0f;
    if (xmax < 0.0f) xmax = 0.0f;
    if (q.sym) {
        float a = fabsf(xmin);
        if (a > xmax) xmax = a;
        if (xmin < 0.0f) xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    float s = __fdiv_rn(__fsub_rn(xmax, xmin), (float)q.maxq);
    if (q.scale_f16) s = round_scale_f16(s);
    float z;
    if (q.sym) {
        z = (float)((q.maxq + 1) / 2);
    } else {
        z = rintf(__fdiv_rn(-xmin, s));
        if (z == 0.0f && !q.zero_free) {
            s = __fdiv_rn(__fsub_rn(xmax, xmin), (float)(q.maxq - 1));
            if (q.scale_f16) s = round_scale_f16(s);
            z = 1.0f;
        }
    }
    if (z < 0.0f) z = 0.0f;
    if (z > (float)q.maxq) z = (float)q.maxq;
    *scale = s;
    *zero = (int)z;
}

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
                                           qcfg q, float *scales, int32_t *zeros) {
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
            int z;
            quant_params(mn, mx, q, &s, &z);
            scales[(size_t)g * rows + r] = s;
            zeros[(size_t)g * rows + r] = z;
        }
    }
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
    double *row_loss;     /* [rows] */
    int rows, K, i1, cnt, gs, dynamic;
    qcfg q;
} blk_args;

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
        float w[4], er[4];
        uint32_t qpk = 0; /* this lane's 4 codes, byte f = column 4 lane + f */
#pragma unroll
        for (int f = 0; f < 4; f++) {
            const int c = 4 * lane + f;
            w[f] = c < a.cnt ? wrow[a.i1 + c] : 0.0f;
            er[f] = 0.0f;
        }
        float scale = 1.0f;
        int zero = 0, gcur = -1;
        double loss = 0.0; /* lane 0's sum for this block */
        for (int jl = 0; jl < 32 && 4 * jl < a.cnt; jl++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int j = 4 * jl + e; /* column within the block; owner lane jl, register e */
                if (j < a.cnt) {          /* uniform over the warp */
                    const int col = a.i1 + j;
                    const int g = a.gcol[col];
                    if (a.dynamic && col % a.gs == 0) {
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
                        quant_params(mn, mx, a.q, &scale, &zero);
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
                    float qv = rintf(__fdiv_rn(wj, scale)) + (float)zero;
                    qv = qv >= 0.0f ? qv : 0.0f; /* also NaN -> 0, as gq_quant_code */
                    qv = qv > (float)a.q.maxq ? (float)a.q.maxq : qv;
                    const int qi = (int)qv;
                    const float dq = __fmul_rn(scale, (float)(qi - zero));
                    const float diff = __fsub_rn(wj, dq);
                    if (lane == jl) {
                        w[e] = dq; /* the column is done: keep its dequantized value */
                        qpk |= (uint32_t)qi << (8 * e);
                    }
                    if (a.Hinv) {
                        const float d = Hs[j * GPTQ_BLK + j];
                        const float err = __fdiv_rn(diff, d);
                        if (lane == jl) er[e] = err;
                        if (lane == 0) loss += (double)__fdiv_rn(__fdiv_rn(__fmul_rn(diff, diff), __fmul_rn(d, d)), 2.0f);
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
        if (a.Hinv && lane == 0) a.row_loss[r] += loss;
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
            put_f(&Wo[idx], sc[g] * (float)((int)codes[src] - zr[g]));
        } else {
            put_f(&Wo[idx], Wf[src]);
        }
        if (codes_out) codes_out[idx] = codes[src];
    }
}

static __global__ void round_scales_kernel(float *s, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s[i] = round_scale_f16(s[i]);
}

/* ---- host side ---------------------------------------------------------------------------------------------------- */

typedef struct {
    float *Wf;
    uint8_t *codes, *codes_out, *dead;
    int32_t *qweight; /* [K * bits / 32][rows] AutoGPTQ words of the unpermuted codes */
    float *Err, *scales, *diag;
    int32_t *zeros, *gcol, *perm, *invperm;
    double *row_loss;
    unsigned long long *bad;
    void *Hd, *ws;
    int *info;
} gptq_dev;

static void gptq_dev_free(gq_backend *be, gptq_dev *m) {
    void *ps[] = {m->Wf,   m->codes, m->codes_out, m->dead,    m->Err,      m->scales, m->diag, m->zeros,
                  m->gcol, m->perm,  m->invperm,   m->row_loss, m->bad,     m->Hd,     m->ws,   m->info,
                  m->qweight};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) gq_be_release(be, ps[i]);
    memset(m, 0, sizeof *m);
}

static int grid_for(size_t n) {
    size_t b = CEIL_DIV(n, (size_t)256);
    return (int)(b < 16384 ? (b ? b : 1) : 16384);
}

/* Small device -> host copy that has completed on return. */
/* group_params_kernel with one warp per (row, group), nwarps of them, on W of either dtype. */
static void launch_group_params(cudaStream_t st, int f32, size_t nwarps, const void *W, int rows, int K, int gs,
                                int ngroups, const uint8_t *dead, qcfg q, float *scales, int32_t *zeros) {
    if (f32)
        group_params_kernel<<<grid_for(nwarps * 32), 256, 0, st>>>((const float *)W, rows, K, gs, ngroups, dead, q,
                                                                    scales, zeros);
    else
        group_params_kernel<<<grid_for(nwarps * 32), 256, 0, st>>>((const __half *)W, rows, K, gs, ngroups, dead, q,
                                                                    scales, zeros);
}

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

/* gptq.c's checks (same messages), plus the CUDA limits. */
static int check_params(const gq_gptq_params *p, int rows, int cols, const float *H) {
    int rc = gq_gptq_check_params(p, rows, cols, H);
    if (rc != GQ_OK) return rc;
    if (p->method == GQ_METHOD_GPTQ && p->block_size > GPTQ_BLK)
        return gq_err(GQ_ERR_UNSUPPORTED, "gptq on CUDA: block size %d, at most %d supported", p->block_size, GPTQ_BLK);
    return GQ_OK;
}

/* One factorization attempt at damping lambda: Hinv (fp32, the caller's H
 * buffer) on success; GQ_ERR_NOT_PD (message as the CPU path's) when a
 * factorization fails; GQ_ERR_DEVICE on CUDA errors. f64: element type;
 * potri: the reference chain (else reversed potrf + trtri). */
static int factor_once(gq_backend *be, gptq_dev *m, float *H, int n, float s, const int32_t *perm_dev,
                       double lambda, int f64, int potri, size_t ws_bytes, void *ws_host, size_t ws_host_bytes) {
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
        CUSOLVER_CHECK(cusolverDnXtrtri(c->cusolver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, dt, m->Hd, n,
                                        m->ws, ws_bytes, ws_host, ws_host_bytes, m->info));
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

/* Factor with the retries of gptq.c (damping x10, then 0.01 from 0): 0 and
 * Hinv in H on success, 1 when every attempt failed (fallback), or a
 * negative status on device errors. */
static int factor_with_retries(gq_backend *be, gptq_dev *m, const gq_gptq_params *p, float *H, int n, float s,
                               double mean, const int32_t *perm_dev, gq_qresult *res) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const int mode = c->hinv_mode;
    size_t wsd = 0, wsh = 0;
    void *ws_host = NULL;
    int rc = GQ_OK, ok = 0;
    double damp = p->damp;
    size_t hd_bytes = (size_t)n * n * sizeof(double); /* fp64 size; the fp32 attempt uses the first half */
    TRY_ALLOC(m->Hd, void *, hd_bytes, "gptq: damped Hessian (fp64)");
    /* cuSOLVER reads only the column-major lower (= row-major upper)
     * triangle, which build_hd_kernel writes; clear the rest once anyway */
    TRY(GQ_CU_OK(cudaMemsetAsync(m->Hd, 0, hd_bytes, c->stream)));
    TRY_ALLOC(m->info, int *, sizeof(int), "gptq: cuSOLVER info");
    TRY(factor_workspace(be, m, n, mode, &wsd, &wsh));
    TRY_ALLOC(m->ws, void *, wsd ? wsd : 16, "gptq: cuSOLVER workspace");
    if (wsh) ws_host = gq_malloc(wsh);
    c->gptq_timing.hinv_f64 = 0;
    for (int attempt = 0; attempt <= p->max_retries && !ok; attempt++) {
        if (attempt > 0) {
            double next = damp > 0.0 ? damp * 10.0 : 0.01;
            gq_warn("gptq: %d x %d Hessian: %s (damp %g); retry %d/%d with damp %g", n, n, gq_errmsg(), damp,
                    attempt, p->max_retries, next);
            damp = next;
            res->retries = attempt;
        }
        for (int f64 = mode == GQ_CUDA_HINV_F32_FIRST ? 0 : 1; f64 <= 1 && !ok; f64++) {
            const int potri = mode == GQ_CUDA_HINV_F64_POTRI;
            rc = factor_once(be, m, H, n, s, perm_dev, damp * mean, f64, potri, wsd, ws_host, wsh);
            if (rc == GQ_OK) {
                ok = 1;
                c->gptq_timing.hinv_f64 = f64;
            } else if (rc != GQ_ERR_NOT_PD) {
                goto out;
            } else if (!f64) {
                gq_debug("gptq: fp32 inverse factor failed (%s); trying fp64", gq_errmsg());
            }
        }
    }
    res->damp_used = damp;
    if (ok) {
        gq_err_clear();
    } else {
        gq_warn("gptq: %d x %d Hessian: %s (damp %g)", n, n, gq_errmsg(), damp);
    }
    rc = ok ? 0 : 1;
out:
    free(ws_host);
    gq_be_release(be, m->Hd);
    gq_be_release(be, m->ws);
    gq_be_release(be, m->info);
    m->Hd = m->ws = NULL;
    m->info = NULL;
    return rc;
}

/* Grid for the block kernel: enough CTAs to fill the GPU at its occupancy. */
static int block_grid(gq_backend *be, int rows, size_t smem) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gptq_block_kernel, GPTQ_WARPS * 32, smem) !=
            cudaSuccess ||
        per_sm < 1) {
        (void)cudaGetLastError();
        per_sm = 1;
    }
    int want = CEIL_DIV(rows, GPTQ_WARPS), cap = per_sm * c->prop.multiProcessorCount;
    return want < cap ? want : cap;
}

int gq_cuda_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const double t0 = gq_now();
    double t1 = t0, t2 = t0, t3 = t0;
    memset(res, 0, sizeof *res);
    const int rows = W->rows, K = W->cols;
    int rc = check_params(p, rows, K, H);
    if (rc != GQ_OK) return rc;
    if (W->dtype != be->act_dtype)
        return gq_err(GQ_ERR_ARG, "gptq on CUDA: the weight must be %s on the device, got %s",
                      gq_dtype_name(be->act_dtype), gq_dtype_name(W->dtype));
    const int f32 = W->dtype == GQ_DT_F32;
    const int gptq = p->method == GQ_METHOD_GPTQ;
    const float s = (float)h_scale;
    const int gs = p->group_size > 0 && p->group_size < K ? p->group_size : K;
    const int B = gptq && p->block_size > 0 ? (p->block_size < GPTQ_BLK ? p->block_size : GPTQ_BLK) : GPTQ_BLK;
    enum { GROUPS_ONE, GROUPS_STATIC, GROUPS_DYNAMIC } gmode = p->group_size == -1 ? GROUPS_ONE : GROUPS_DYNAMIC;
    qcfg q = {p->bits, gq_maxq(p->bits), p->sym, p->zero_policy == GQ_ZERO_FREE, p->scale_f16};
    const size_t nW = (size_t)rows * K;
    gptq_dev m;
    memset(&m, 0, sizeof m);
    float *diag = NULL;
    int32_t *gcol = NULL, *invperm = NULL;
    uint8_t *dead = NULL;
    double *row_loss = NULL, mean = 0.0;
    int fallback = 0, ngroups = 0;
    const int round_out = p->out_f16 && !p->scale_f16;
    size_t smem = 0;

    /* ---- checks: non-finite W, then H (scaled, upper), and diag(H) */
    TRY_ALLOC(m.bad, unsigned long long *, 2 * sizeof(unsigned long long), "gptq: flags");
    TRY(GQ_CU_OK(cudaMemsetAsync(m.bad, 0xff, 2 * sizeof(unsigned long long), c->stream)));
    if (f32)
        check_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>((const float *)W->data, nW, m.bad);
    else
        check_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>((const __half *)W->data, nW, m.bad);
    TRY(GQ_CU_OK(cudaGetLastError()));
    if (gptq) {
        TRY_ALLOC(m.diag, float *, (size_t)K * sizeof(float), "gptq: diag(H)");
        prep_h_kernel<<<grid_for((size_t)K * K), 256, 0, c->stream>>>(H, K, s, m.diag, m.bad + 1);
        TRY(GQ_CU_OK(cudaGetLastError()));
    }
    {
        unsigned long long b2[2];
        TRY(d2h_sync(be, b2, m.bad, sizeof b2));
        if (b2[0] != ~0ull) {
            uint16_t hv = 0;
            float fv = 0.0f;
            if (f32)
                TRY(d2h_sync(be, &fv, (const float *)W->data + b2[0], sizeof fv));
            else
                TRY(d2h_sync(be, &hv, (const uint16_t *)W->data + b2[0], sizeof hv));
            int r = (int)(b2[0] / (unsigned long long)K), col = (int)(b2[0] % (unsigned long long)K);
            rc = gq_err(GQ_ERR_NUMERIC, "gptq: W[%d][%d] (output row %d, input column %d) is %g", r, col, r, col,
                        f32 ? (double)fv : (double)gq_f16_to_f32(hv));
            goto out;
        }
        if (gptq && b2[1] != ~0ull) {
            float hv = 0;
            TRY(d2h_sync(be, &hv, H + b2[1], sizeof hv));
            int i = (int)(b2[1] / (unsigned long long)K), j = (int)(b2[1] % (unsigned long long)K);
            rc = gq_err(GQ_ERR_NUMERIC, "gptq: Hessian H[%d][%d] (row %d, column %d) is %g", i, j, i, j,
                        (double)(hv * s));
            goto out;
        }
    }

    gq_qresult_init(res, p, rows, K);
    ngroups = res->ngroups;
    TRY_ALLOC(m.scales, float *, (size_t)ngroups * rows * sizeof(float), "gptq: scales");
    TRY_ALLOC(m.zeros, int32_t *, (size_t)ngroups * rows * sizeof(int32_t), "gptq: zeros");
    TRY_ALLOC(m.gcol, int32_t *, (size_t)K * sizeof(int32_t), "gptq: column groups");
    TRY_ALLOC(m.Wf, float *, nW * sizeof(float), "gptq: fp32 working copy of W");
    TRY_ALLOC(m.codes, uint8_t *, nW, "gptq: codes");

    /* per-row params on the whole W, before the dead-column fix (as gptq.c) */
    if (gmode == GROUPS_ONE) {
        launch_group_params(c->stream, f32, (size_t)rows, W->data, rows, K, K, 1, NULL, q, m.scales, m.zeros);
        TRY(GQ_CU_OK(cudaGetLastError()));
    }

    if (gptq) {
        diag = (float *)gq_malloc((size_t)K * sizeof(float));
        dead = (uint8_t *)gq_calloc((size_t)K, 1);
        TRY(gq_be_download(be, diag, m.diag, (size_t)K * sizeof(float)));
        for (int i = 0; i < K; i++) {
            if (diag[i] == 0.0f) {
                diag[i] = 1.0f;
                dead[i] = 1;
                res->n_dead++;
            }
            mean += diag[i];
        }
        mean /= K;
        if (res->n_dead) {
            TRY_ALLOC(m.dead, uint8_t *, (size_t)K, "gptq: dead columns");
            TRY(gq_be_upload(be, m.dead, dead, (size_t)K));
            TRY(gq_be_upload(be, m.diag, diag, (size_t)K * sizeof(float)));
        }
        if (p->group_size > 0 && p->static_groups && gmode != GROUPS_ONE) {
            gmode = GROUPS_STATIC;
            launch_group_params(c->stream, f32, (size_t)rows * ngroups, W->data, rows, K, gs, ngroups, m.dead, q,
                                m.scales, m.zeros);
            TRY(GQ_CU_OK(cudaGetLastError()));
        }
        if (p->act_order) {
            gq_gptq_act_order_perm(diag, K, res->perm); /* the CPU solve's permutation */
            invperm = (int32_t *)gq_malloc((size_t)K * sizeof(int32_t));
            for (int i = 0; i < K; i++) invperm[res->perm[i]] = i;
            TRY_ALLOC(m.perm, int32_t *, (size_t)K * sizeof(int32_t), "gptq: permutation");
            TRY_ALLOC(m.invperm, int32_t *, (size_t)K * sizeof(int32_t), "gptq: inverse permutation");
            TRY(gq_be_upload(be, m.perm, res->perm, (size_t)K * sizeof(int32_t)));
            TRY(gq_be_upload(be, m.invperm, invperm, (size_t)K * sizeof(int32_t)));
        }
    }

    /* group of every permuted column; g_idx in original order */
    gcol = (int32_t *)gq_malloc((size_t)K * sizeof(int32_t));
    for (int j = 0; j < K; j++) {
        const int oc = res->perm ? res->perm[j] : j;
        gcol[j] = gmode == GROUPS_ONE ? 0 : gmode == GROUPS_STATIC ? oc / gs : j / gs;
        res->g_idx[oc] = gcol[j];
    }
    TRY(gq_be_upload(be, m.gcol, gcol, (size_t)K * sizeof(int32_t)));

    if (f32)
        gather_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>(m.Wf, (const float *)W->data, rows, K, m.perm, m.dead);
    else
        gather_w_kernel<<<grid_for(nW), 256, 0, c->stream>>>(m.Wf, (const __half *)W->data, rows, K, m.perm, m.dead);
    TRY(GQ_CU_OK(cudaGetLastError()));
    TRY(GQ_CU_OK(cudaStreamSynchronize(c->stream)));
    t1 = gq_now();

    if (gptq) {
        rc = factor_with_retries(be, &m, p, H, K, s, mean, m.perm, res);
        if (rc < 0) goto out;
        fallback = rc;
        rc = GQ_OK;
        if (fallback) {
            res->fallback = 1;
            gq_warn("gptq: *** %d x %d module: the Hessian stayed not positive definite after %d retries (damp up "
                    "to %g); FALLING BACK TO ROUND-TO-NEAREST for this module ***",
                    rows, K, p->max_retries, res->damp_used);
            gq_err_clear();
        }
    }
    t2 = gq_now();

    {
        const float *Hinv = gptq && !fallback ? H : NULL;
        if (Hinv) {
            TRY_ALLOC(m.Err, float *, (size_t)rows * GPTQ_BLK * sizeof(float), "gptq: block errors");
            TRY_ALLOC(m.row_loss, double *, (size_t)rows * sizeof(double), "gptq: row losses");
            TRY(GQ_CU_OK(cudaMemsetAsync(m.row_loss, 0, (size_t)rows * sizeof(double), c->stream)));
            smem = (size_t)GPTQ_BLK * GPTQ_BLK * sizeof(float);
            TRY(GQ_CU_OK(cudaFuncSetAttribute(gptq_block_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              (int)smem)));
        }
        const int grid = block_grid(be, rows, smem);
        const float minus_one = -1.0f, one = 1.0f;
        for (int i1 = 0; i1 < K; i1 += B) {
            const int i2 = i1 + B < K ? i1 + B : K, cnt = i2 - i1;
            blk_args a;
            a.W = m.Wf;
            a.Hinv = Hinv;
            a.Err = m.Err;
            a.codes = m.codes;
            a.scales = m.scales;
            a.zeros = m.zeros;
            a.gcol = m.gcol;
            a.row_loss = m.row_loss;
            a.rows = rows;
            a.K = K;
            a.i1 = i1;
            a.cnt = cnt;
            a.gs = gs;
            a.dynamic = gmode == GROUPS_DYNAMIC;
            a.q = q;
            gptq_block_kernel<<<grid, GPTQ_WARPS * 32, Hinv ? (size_t)cnt * GPTQ_BLK * sizeof(float) : 0,
                                c->stream>>>(a);
            TRY(GQ_CU_OK(cudaGetLastError()));
            if (Hinv && i2 < K) {
                /* W[:, i2:] -= Err [rows][cnt] * Hinv[i1:i2, i2:], column-major view:
                 * W^T[i2:, :] ((K-i2) x rows, ld K) -= Hinv[i1:i2, i2:]^T ((K-i2) x cnt, ld K)
                 *                                      * Err^T (cnt x rows, ld GPTQ_BLK) */
                TRY(GQ_CU_OK(cublasSgemm(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, K - i2, rows, cnt, &minus_one,
                                         Hinv + (size_t)i1 * K + i2, K, m.Err, GPTQ_BLK, &one, m.Wf + i2, K)));
            }
        }
        TRY(GQ_CU_OK(cudaStreamSynchronize(c->stream)));
    }
    t3 = gq_now();

    /* ---- the losses first: a non-finite one is an error, and W must stay untouched then */
    res->loss = 0.0;
    if (m.row_loss) {
        int bad_row = -1;
        row_loss = (double *)gq_malloc((size_t)rows * sizeof(double));
        TRY(gq_be_download(be, row_loss, m.row_loss, (size_t)rows * sizeof(double)));
        for (int r = 0; r < rows; r++) {
            res->row_loss[r] = (float)row_loss[r];
            res->loss += row_loss[r];
            if (bad_row < 0 && !isfinite(row_loss[r])) bad_row = r;
        }
        if (bad_row >= 0) {
            rc = gq_err(GQ_ERR_NUMERIC,
                        "gptq: %d x %d module: the error feedback overflowed (row %d has a non-finite loss); the "
                        "Hessian is too badly conditioned for fp32 (damp %g)",
                        rows, K, bad_row, p->damp);
            goto out;
        }
    }

    /* ---- outputs: unpermute into W->data (its dtype) and the codes */
    if (m.invperm) TRY_ALLOC(m.codes_out, uint8_t *, nW, "gptq: unpermuted codes");
    /* fp32 scales in the solve (the reference's semantics), fp16 scales in the checkpoint: round them and
     * rebuild W from the codes, so the forward that follows sees what the checkpoint will hold */
    if (round_out) {
        round_scales_kernel<<<grid_for((size_t)ngroups * rows), 256, 0, c->stream>>>(m.scales, (size_t)ngroups * rows);
        TRY(GQ_CU_OK(cudaGetLastError()));
    }
    if (f32)
        output_kernel<<<grid_for(nW), 256, 0, c->stream>>>((float *)W->data, m.Wf, m.codes_out, m.codes, rows, K,
                                                           m.invperm, round_out ? m.scales : NULL, m.zeros, m.gcol);
    else
        output_kernel<<<grid_for(nW), 256, 0, c->stream>>>((__half *)W->data, m.Wf, m.codes_out, m.codes, rows, K,
                                                           m.invperm, round_out ? m.scales : NULL, m.zeros, m.gcol);
    TRY(GQ_CU_OK(cudaGetLastError()));
    /* the checkpoint's qweight [K * bits / 32][rows], packed here from the unpermuted codes (gq_pack copies
     * it); a shape gq_pack rejects gets none, and no error: gq_pack reports the shape at export */
    if (gq_pack_shape_ok(rows, K, p->bits)) {
        const size_t nqw = (size_t)gq_pack_qw_rows(K, p->bits) * rows;
        TRY_ALLOC(m.qweight, int32_t *, nqw * sizeof(int32_t), "gptq: packed qweight");
        TRY(gq_cuda_pack_qweight(be, m.qweight, m.codes_out ? m.codes_out : m.codes, rows, K, p->bits));
        res->qweight = (int32_t *)gq_malloc(nqw * sizeof(int32_t));
        res->qweight_bits = p->bits;
        TRY(gq_be_download(be, res->qweight, m.qweight, nqw * sizeof(int32_t)));
    }
    TRY(gq_be_download(be, res->codes, m.codes_out ? m.codes_out : m.codes, nW));
    TRY(gq_be_download(be, res->scales, m.scales, (size_t)ngroups * rows * sizeof(float)));
    TRY(gq_be_download(be, res->zeros, m.zeros, (size_t)ngroups * rows * sizeof(int32_t)));
    res->seconds = gq_now() - t0;
    gq_debug("gptq (cuda): %d x %d: %.3f s (prep %.3f, inverse factor %.3f, blocks %.3f, output %.3f s), loss %.6g",
             rows, K, res->seconds, t1 - t0, t2 - t1, t3 - t2, gq_now() - t3, res->loss);
    c->gptq_timing.prep = t1 - t0;
    c->gptq_timing.factor = t2 - t1;
    c->gptq_timing.blocks = t3 - t2;
    c->gptq_timing.output = gq_now() - t3;

out:
    gptq_dev_free(be, &m);
    free(diag);
    free(dead);
    free(gcol);
    free(invperm);
    free(row_loss);
    if (rc != GQ_OK) gq_qresult_free(res);
    return rc;
}
