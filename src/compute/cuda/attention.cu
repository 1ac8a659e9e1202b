/*
 * cuda/attention.cu -- causal grouped-query attention for one sequence on
 * fp16 (v1 and v2) or fp32 (v1) Q/K/V with row strides (column slices of one fused qkv buffer), fp32
 * softmax and accumulation. Query i sits at absolute position p = Tk - Tq + i
 * and sees keys 0 .. p, or p - window + 1 .. p with a sliding window
 * (gq_attn_opts; the scale and the soft-cap cap * tanh(score / cap), applied
 * before the mask, also come from there). Scores are never stored in device
 * memory. Key tiles (chunks in v1) that lie entirely before the window of
 * every query of a CTA (warp) are skipped, the rest is masked.
 *
 *   v1 (attn_v1_kernel): the simple reference kernel. One warp per (query,
 *     head): lanes score 32 keys at a time (one key each, fp32 dot), online
 *     softmax over the chunks, each lane accumulates hd/32 output dims.
 *     Any head_dim <= 256, any strides. Also the decode path (Tq < 16).
 *   v2 (attn_v2_kernel<HD>): flash-attention style on the tensor cores
 *     (mma.sync m16n8k16, fp16 x fp16 -> fp32). A CTA of 4 warps takes 64
 *     queries of one head; K/V tiles of 64 keys go through shared memory,
 *     only up to the causal limit of the CTA's last query. Each warp owns
 *     16 query rows: S = Q K^T stays in registers, the online softmax works
 *     on the accumulator layout (a row is spread over the 4 threads of a
 *     quad), and P (rounded to fp16, as FlashAttention does) is reused
 *     register-for-register as the A operand of O += P V. head_dim 64/128.
 *   v3 (attn_f32_kernel<HD>): the fp32 flash kernel of --precision fp32,
 *     without tensor cores. A CTA of 256 threads takes 64 queries of one
 *     head; Q, a 64-key K/V tile and the tile's P sit in shared memory;
 *     thread (ty, tx) of a 16 x 16 grid owns the scores of rows ty + 16 i
 *     and keys tx + 16 j (i, j < 4) and the outputs of rows ty + 16 i,
 *     dims tx + 16 j (j < HD / 16); row max and sum go through the 16
 *     lanes of a row group with shuffles. head_dim 64/128, Tq >= 16.
 *
 * Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix fragments for
 * mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
 *   A (16x16, row-major): a0a1 = (g, 2t..2t+1), a2a3 = (g+8, 2t..),
 *                         a4a5 = (g, 2t+8..), a6a7 = (g+8, 2t+8..)
 *   B (16x8, k x n):      b0b1 = (k = 2t..2t+1, n = g), b2b3 = (k = 2t+8.., n = g)
 *   C (16x8, fp32):       c0c1 = (g, 2t..2t+1), c2c3 = (g+8, 2t..2t+1)
 * so the C fragments of two adjacent 8-key tiles of S are exactly the A
 * fragment of the 16-key slice of P.
 */
#include <math.h>

#include "common.cuh"

/* ---- v1: simple ---------------------------------------------------------------------------------------- */

#define V1_WARPS 4
#define V1_MAX_HD 256

template <typename E>
static __global__ void __launch_bounds__(V1_WARPS * 32)
    attn_v1_kernel(E *O, int ldo, const E *Q, int ldq, const E *K, int ldk, const E *V, int ldv, int Tq, int Tk,
                   int group, int hd, float scale, float cap, int window) {
    __shared__ float qs[V1_WARPS][V1_MAX_HD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int i = blockIdx.x * V1_WARPS + warp; /* query row */
    const int h = blockIdx.y, kvh = h / group;
    if (i >= Tq) return; /* whole warp; the kernel uses no block barrier */
    const E *q = Q + (size_t)i * ldq + (size_t)h * hd;
    for (int d = lane; d < hd; d += 32) qs[warp][d] = to_f(q[d]);
    __syncwarp();
    const int pos = Tk - Tq + i; /* last visible key */
    const E *Kh = K + (size_t)kvh * hd, *Vh = V + (size_t)kvh * hd;
    float o[V1_MAX_HD / 32];
#pragma unroll
    for (int e = 0; e < V1_MAX_HD / 32; e++) o[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int k0 = attn_first_key(pos, window); k0 <= pos; k0 += 32)
        attn_chunk<V1_MAX_HD>(qs[warp], Kh, ldk, Vh, ldv, k0, pos, hd, scale, cap, m, l, o);
    E *orow = O + (size_t)i * ldo + (size_t)h * hd;
    const float inv = 1.0f / l;
#pragma unroll
    for (int e = 0; e < V1_MAX_HD / 32; e++) {
        const int d = lane + 32 * e;
        if (d < hd) put_f(&orow[d], o[e] * inv);
    }
}

/* ---- v2: tensor cores ---------------------------------------------------------------------------------- */

#define V2_BR 64 /* query rows per CTA: 4 warps x 16 */
#define V2_BC 64 /* keys per tile */

static __device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats -> fp16 pair, `lo` in the low half (the lower column index). */
static __device__ __forceinline__ uint32_t pack_f2(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&v;
}
static __device__ __forceinline__ uint32_t pack_h2(__half lo, __half hi) {
    return (uint32_t)__half_as_ushort(lo) | ((uint32_t)__half_as_ushort(hi) << 16);
}
static __device__ __forceinline__ uint32_t ld_u32(const __half *p) { return *(const uint32_t *)p; }

/* CAP: soft-capped scores cap * tanh(q.k * cap_mul) (cap_mul = scale / cap) and scale_log2 = log2(e);
 * otherwise raw q.k and scale_log2 = log2(e) * scale. WIN: a sliding window of `window` keys.
 * Both are template flags so that the plain kernel <HD, false, false> is the code it always was
 * (its register count, 168 for HD = 128, allows 3 CTAs per SM; runtime checks would cost one). */
template <int HD, bool CAP, bool WIN>
static __global__ void __launch_bounds__(128)
    attn_v2_kernel(__half *O, int ldo, const __half *Q, int ldq, const __half *K, int ldk, const __half *V, int ldv,
                   int Tq, int Tk, int group, float scale_log2, float cap, float cap_mul, int window) {
    constexpr int LDS = HD + 8; /* padded shared row (halves): conflict-free fragment loads */
    __shared__ __align__(16) __half Ks[V2_BC * LDS];
    __shared__ __align__(16) __half Vs[V2_BC * LDS];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int tile = gridDim.x - 1 - blockIdx.x; /* the heaviest (last) query tiles start first */
    const int h = blockIdx.y, kvh = h / group;
    const int q0 = tile * V2_BR, off = Tk - Tq;
    const int ra = q0 + warp * 16 + g, rb = ra + 8; /* this thread's two query rows */
    /* last key each row sees; rows past Tq (not stored) are clamped in range */
    const int pa = min(off + ra, Tk - 1), pb = min(off + rb, Tk - 1);
    const int fa = WIN ? attn_first_key(pa, window) : 0, fb = WIN ? attn_first_key(pb, window) : 0; /* first */

    uint32_t qf[HD / 16][4]; /* A fragments of Q, rows ra/rb, all of head_dim */
    const __half *Qh = Q + (size_t)h * HD;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        const int col = ks * 16 + 2 * t;
        qf[ks][0] = ra < Tq ? ld_u32(Qh + (size_t)ra * ldq + col) : 0u;
        qf[ks][1] = rb < Tq ? ld_u32(Qh + (size_t)rb * ldq + col) : 0u;
        qf[ks][2] = ra < Tq ? ld_u32(Qh + (size_t)ra * ldq + col + 8) : 0u;
        qf[ks][3] = rb < Tq ? ld_u32(Qh + (size_t)rb * ldq + col + 8) : 0u;
    }
    float oacc[HD / 8][4]; /* O rows ra (0, 1) and rb (2, 3), dims dn*8 + 2t.. */
#pragma unroll
    for (int dn = 0; dn < HD / 8; dn++) oacc[dn][0] = oacc[dn][1] = oacc[dn][2] = oacc[dn][3] = 0.0f;
    float ma = -INFINITY, mb = -INFINITY; /* running max of the raw (CAP: capped) scores */
    float la = 0.0f, lb = 0.0f;           /* this thread's part of the row sums */

    const int qlast = min(q0 + V2_BR, Tq) - 1;
    const int kend = off + qlast + 1; /* keys [0, kend) are needed by this CTA */
    const int ntiles = CEIL_DIV(kend, V2_BC);
    const int kt0 = WIN ? attn_first_key(off + q0, window) / V2_BC : 0; /* before the first query's window */
    const __half *Kh = K + (size_t)kvh * HD, *Vh = V + (size_t)kvh * HD;

    for (int kt = kt0; kt < ntiles; kt++) {
        const int k0 = kt * V2_BC;
        __syncthreads(); /* every warp is done with the previous tile */
        for (int idx = tid; idx < V2_BC * (HD / 8); idx += 128) {
            const int r = idx / (HD / 8), c8 = (idx % (HD / 8)) * 8, key = k0 + r;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0); /* zeros past Tk: no NaN garbage */
            if (key < Tk) {
                kv = *(const uint4 *)(Kh + (size_t)key * ldk + c8);
                vv = *(const uint4 *)(Vh + (size_t)key * ldv + c8);
            }
            *(uint4 *)(Ks + r * LDS + c8) = kv;
            *(uint4 *)(Vs + r * LDS + c8) = vv;
        }
        __syncthreads();

        /* S[16][64] = Q K^T: n-tile nt holds keys k0 + nt*8 .. +8 */
        float s[V2_BC / 8][4];
#pragma unroll
        for (int nt = 0; nt < V2_BC / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const __half *kr = Ks + (nt * 8 + g) * LDS + 2 * t; /* B(k = dim, n = key) = K[key][dim] */
#pragma unroll
            for (int ks = 0; ks < HD / 16; ks++) mma_16816(s[nt], qf[ks], ld_u32(kr + ks * 16), ld_u32(kr + ks * 16 + 8));
        }

        /* soft-cap, causal and window mask, row maxima (a row lives in the 4 threads of a quad) */
        float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < V2_BC / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = k0 + nt * 8 + 2 * t + e;
                if constexpr (CAP) {
                    s[nt][e] = cap * tanhf(s[nt][e] * cap_mul);
                    s[nt][2 + e] = cap * tanhf(s[nt][2 + e] * cap_mul);
                }
                if (key > pa || (WIN && key < fa)) s[nt][e] = -INFINITY;
                if (key > pb || (WIN && key < fb)) s[nt][2 + e] = -INFINITY;
                mxa = fmaxf(mxa, s[nt][e]);
                mxb = fmaxf(mxb, s[nt][2 + e]);
            }
        }
        mxa = fmaxf(mxa, __shfl_xor_sync(GQ_FULL_MASK, mxa, 1));
        mxa = fmaxf(mxa, __shfl_xor_sync(GQ_FULL_MASK, mxa, 2));
        mxb = fmaxf(mxb, __shfl_xor_sync(GQ_FULL_MASK, mxb, 1));
        mxb = fmaxf(mxb, __shfl_xor_sync(GQ_FULL_MASK, mxb, 2));
        /* Without a window the first tile holds key 0, visible to every row, and the new maxima are
         * finite. With one, a row may not have reached its window yet (max -inf): it exponentiates
         * against 0 instead, so that its masked scores give 0 rather than NaN (and alpha = 0). */
        const float mna = fmaxf(ma, mxa), mnb = fmaxf(mb, mxb);
        const float ua = WIN && mna == -INFINITY ? 0.0f : mna, ub = WIN && mnb == -INFINITY ? 0.0f : mnb;
        const float alpha_a = exp2f((ma - ua) * scale_log2), alpha_b = exp2f((mb - ub) * scale_log2);
        ma = mna;
        mb = mnb;
        float suma = 0.0f, sumb = 0.0f;
#pragma unroll
        for (int nt = 0; nt < V2_BC / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[nt][e] = exp2f((s[nt][e] - ua) * scale_log2); /* masked: exp2(-inf) = 0 */
                s[nt][2 + e] = exp2f((s[nt][2 + e] - ub) * scale_log2);
                suma += s[nt][e];
                sumb += s[nt][2 + e];
            }
        }
        la = la * alpha_a + suma;
        lb = lb * alpha_b + sumb;
#pragma unroll
        for (int dn = 0; dn < HD / 8; dn++) {
            oacc[dn][0] *= alpha_a;
            oacc[dn][1] *= alpha_a;
            oacc[dn][2] *= alpha_b;
            oacc[dn][3] *= alpha_b;
        }

        /* O[16][HD] += P[16][64] V[64][HD], 16 keys per k-step */
#pragma unroll
        for (int kk = 0; kk < V2_BC / 16; kk++) {
            uint32_t pf[4];
            pf[0] = pack_f2(s[2 * kk][0], s[2 * kk][1]);         /* row g,   keys 2t..   */
            pf[1] = pack_f2(s[2 * kk][2], s[2 * kk][3]);         /* row g+8, keys 2t..   */
            pf[2] = pack_f2(s[2 * kk + 1][0], s[2 * kk + 1][1]); /* row g,   keys 2t+8.. */
            pf[3] = pack_f2(s[2 * kk + 1][2], s[2 * kk + 1][3]); /* row g+8, keys 2t+8.. */
            const __half *v0 = Vs + (kk * 16 + 2 * t) * LDS + g; /* B(k = key, n = dim) = V[key][dim] */
#pragma unroll
            for (int dn = 0; dn < HD / 8; dn++) {
                const __half *vp = v0 + dn * 8;
                mma_16816(oacc[dn], pf, pack_h2(vp[0], vp[LDS]), pack_h2(vp[8 * LDS], vp[9 * LDS]));
            }
        }
    }

    la += __shfl_xor_sync(GQ_FULL_MASK, la, 1);
    la += __shfl_xor_sync(GQ_FULL_MASK, la, 2);
    lb += __shfl_xor_sync(GQ_FULL_MASK, lb, 1);
    lb += __shfl_xor_sync(GQ_FULL_MASK, lb, 2);
    const float ia = 1.0f / la, ib = 1.0f / lb;
    __half *Oh = O + (size_t)h * HD;
#pragma unroll
    for (int dn = 0; dn < HD / 8; dn++) {
        const int col = dn * 8 + 2 * t;
        if (ra < Tq) *(uint32_t *)(Oh + (size_t)ra * ldo + col) = pack_f2(oacc[dn][0] * ia, oacc[dn][1] * ia);
        if (rb < Tq) *(uint32_t *)(Oh + (size_t)rb * ldo + col) = pack_f2(oacc[dn][2] * ib, oacc[dn][3] * ib);
    }
}

/* ---- v3: fp32 tiles ---------------------------------------------------------------------------------------- */

#define F3_BR 64 /* queries per CTA */
#define F3_BC 64 /* keys per tile */
#define F3_THREADS 256

template <int HD>
static size_t f3_smem_bytes(void) { /* qs [BR][HD+1], ks [BC][HD+1], vs [BC][HD], ps [BR][BC+1] */
    return sizeof(float) * ((size_t)F3_BR * (HD + 1) + (size_t)F3_BC * (HD + 1) + (size_t)F3_BC * HD +
                            (size_t)F3_BR * (F3_BC + 1));
}

template <int HD>
static __global__ void __launch_bounds__(F3_THREADS)
    attn_f32_kernel(float *O, int ldo, const float *Q, int ldq, const float *K, int ldk, const float *V, int ldv,
                    int Tq, int Tk, int group, float scale, float cap, int window) {
    extern __shared__ float f3[];
    float *qs = f3, *ks = qs + F3_BR * (HD + 1), *vs = ks + F3_BC * (HD + 1), *ps = vs + F3_BC * HD;
    constexpr int NJ = HD / 16; /* output dims per thread */
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    const int h = blockIdx.y, kvh = h / group, q0 = blockIdx.x * F3_BR, off = Tk - Tq;
    const int qlast = (q0 + F3_BR < Tq ? q0 + F3_BR : Tq) - 1; /* the CTA's last query */
    const int kmax = off + qlast;                               /* the last key any of them sees */
    for (int idx = tid; idx < F3_BR * HD; idx += F3_THREADS) {  /* Q tile, rows past Tq zero */
        const int r = idx / HD, d = idx - r * HD;
        qs[r * (HD + 1) + d] = q0 + r < Tq ? Q[(size_t)(q0 + r) * ldq + (size_t)h * HD + d] : 0.0f;
    }
    float m[4], l[4], acc[4][NJ];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY, l[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[i][j] = 0.0f;
    }
    /* tiles before the window of the CTA's first query are skipped */
    for (int k0 = attn_first_key(off + q0, window) / F3_BC * F3_BC; k0 <= kmax; k0 += F3_BC) {
        __syncthreads(); /* the previous tile's ks / vs / ps are no longer read (and qs is written) */
        for (int idx = tid; idx < F3_BC * HD; idx += F3_THREADS) {
            const int r = idx / HD, d = idx - r * HD, k = k0 + r;
            const int ok = k < Tk;
            ks[r * (HD + 1) + d] = ok ? K[(size_t)k * ldk + (size_t)kvh * HD + d] : 0.0f;
            vs[r * HD + d] = ok ? V[(size_t)k * ldv + (size_t)kvh * HD + d] : 0.0f;
        }
        __syncthreads();
        float sc[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) sc[i][j] = 0.0f;
        for (int d = 0; d < HD; d++) {
            float qv[4], kv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) qv[i] = qs[(ty + 16 * i) * (HD + 1) + d];
#pragma unroll
            for (int j = 0; j < 4; j++) kv[j] = ks[(tx + 16 * j) * (HD + 1) + d];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) sc[i][j] += qv[i] * kv[j];
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int qpos = off + q0 + ty + 16 * i; /* rows past Tq: harmless, never stored */
            const int qfirst = attn_first_key(qpos, window);
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int kpos = k0 + tx + 16 * j;
                float v = sc[i][j] * scale;
                if (cap > 0.0f) v = cap * tanhf(v / cap);
                sc[i][j] = kpos <= qpos && kpos >= qfirst && kpos < Tk ? v : -INFINITY;
                mx = fmaxf(mx, sc[i][j]);
            }
            /* Without a window key 0 is in the first tile and visible to every row: m is finite from
             * then on. With one, a row that has not reached its window yet (mn = -inf) exponentiates
             * against 0, so that its p and alpha are 0 rather than NaN. */
            const float mn = fmaxf(m[i], warp_max<16>(mx));
            const float mu = mn == -INFINITY ? 0.0f : mn;
            const float alpha = expf(m[i] - mu);
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float pj = expf(sc[i][j] - mu);
                ps[(ty + 16 * i) * (F3_BC + 1) + tx + 16 * j] = pj;
                sum += pj;
            }
            l[i] = l[i] * alpha + warp_sum<16>(sum);
            m[i] = mn;
#pragma unroll
            for (int j = 0; j < NJ; j++) acc[i][j] *= alpha;
        }
        __syncthreads();
        const int nk = kmax - k0 + 1 < F3_BC ? kmax - k0 + 1 : F3_BC; /* keys past kmax have p = 0 */
        for (int k = 0; k < nk; k++) {
            float pv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) pv[i] = ps[(ty + 16 * i) * (F3_BC + 1) + k];
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const float vv = vs[k * HD + tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 4; i++) acc[i][j] += pv[i] * vv;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = q0 + ty + 16 * i;
        if (r >= Tq) continue;
        const float inv = 1.0f / l[i];
        float *orow = O + (size_t)r * ldo + (size_t)h * HD;
#pragma unroll
        for (int j = 0; j < NJ; j++) orow[tx + 16 * j] = acc[i][j] * inv;
    }
}

template <int HD>
static int launch_f32(cudaStream_t st, float *O, int ldo, const float *Q, int ldq, const float *K, int ldk,
                      const float *V, int ldv, int Tq, int Tk, int n_heads, int group, float scale, float cap,
                      int window) {
    const size_t smem = f3_smem_bytes<HD>(); /* above 48 KiB: opt in (per device, so every time; cheap) */
    CUDA_CHECK(cudaFuncSetAttribute(attn_f32_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid(CEIL_DIV(Tq, F3_BR), n_heads);
    attn_f32_kernel<HD><<<grid, F3_THREADS, smem, st>>>(O, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, group, scale, cap,
                                                        window);
    return GQ_OK;
}

/* ---- launcher ------------------------------------------------------------------------------------------- */

/* What a kernel needs of gq_attn_opts (NULL: plain). */
typedef struct {
    float scale, cap; /* the score scale (1/sqrt(hd) by default), the soft-cap (0: none) */
    int window;       /* 0: none */
    int plain_scale;  /* the scale is the default 1/sqrt(hd) */
} attn_args;

template <typename E>
static void launch_v1(cudaStream_t st, E *O, int ldo, const E *Q, int ldq, const E *K, int ldk, const E *V, int ldv,
                      int Tq, int Tk, int n_heads, int group, int hd, const attn_args *a) {
    dim3 grid(CEIL_DIV(Tq, V1_WARPS), n_heads);
    attn_v1_kernel<<<grid, V1_WARPS * 32, 0, st>>>(O, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, group, hd, a->scale, a->cap,
                                                   a->window);
}

template <int HD, bool WIN>
static void launch_v2(cudaStream_t st, __half *O, int ldo, const __half *Q, int ldq, const __half *K, int ldk,
                      const __half *V, int ldv, int Tq, int Tk, int n_heads, int group, const attn_args *a) {
    dim3 grid(CEIL_DIV(Tq, V2_BR), n_heads);
    if (a->cap > 0.0f) { /* exp2 of capped scores: log2(e), the scale goes into the cap's argument */
        attn_v2_kernel<HD, true, WIN><<<grid, 128, 0, st>>>(O, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, group,
                                                            1.4426950408889634f, a->cap, a->scale / a->cap, a->window);
        return;
    }
    /* log2(e) * scale; the default computed as it always was: log2(e) / sqrt(hd) */
    const float sl2 = a->plain_scale ? (float)(1.4426950408889634 / sqrt((double)HD))
                                     : (float)(1.4426950408889634 * (double)a->scale);
    attn_v2_kernel<HD, false, WIN><<<grid, 128, 0, st>>>(O, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, group, sl2, 0.0f,
                                                         0.0f, a->window);
}

template <int HD>
static void launch_v2(cudaStream_t st, __half *O, int ldo, const __half *Q, int ldq, const __half *K, int ldk,
                      const __half *V, int ldv, int Tq, int Tk, int n_heads, int group, const attn_args *a) {
    if (a->window > 0)
        launch_v2<HD, true>(st, O, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, n_heads, group, a);
    else
        launch_v2<HD, false>(st, O, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, n_heads, group, a);
}

int gq_cuda_attention(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk,
                      const void *V, int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim,
                      const gq_attn_opts *o) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const int group = n_heads / n_kv, f32 = gq_cuda_f32(be);
    const int v2_ok = !f32 && (head_dim == 64 || head_dim == 128) && gq_cuda_vec16(Q, ldq, 2) && gq_cuda_vec16(K, ldk, 2) &&
                      gq_cuda_vec16(V, ldv, 2) && gq_cuda_vec16(O, ldo, 2);
    const int v3_ok = f32 && (head_dim == 64 || head_dim == 128);
    int version = c->attn_version;
    if (version == 3 && !v3_ok)
        return gq_err(GQ_ERR_UNSUPPORTED, "cuda attention v3 (fp32 tiles) needs fp32 activations (--precision fp32) "
                                          "and head_dim 64 or 128 (got %d)",
                      head_dim);
    if (version == 2 && !v2_ok)
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "cuda attention v2 (tensor cores) needs fp16 activations, head_dim 64 or 128 (got %d), leading "
                      "dimensions ldq %d, ldk %d, ldv %d, ldo %d that are multiples of 8 and 16-byte aligned buffers",
                      head_dim, ldq, ldk, ldv, ldo);
    if (version == 0) version = Tq < 16 ? 1 : v2_ok ? 2 : v3_ok ? 3 : 1;
    if (n_heads > 65535)
        return gq_err(GQ_ERR_UNSUPPORTED, "cuda attention: %d heads, at most 65535 supported", n_heads);
    const attn_args a = {gq_cuda_attn_scale(o, head_dim), o ? o->softcap : 0.0f, o ? o->window : 0,
                         !o || o->scale == 0.0f};
    if (version == 1) {
        if (head_dim > V1_MAX_HD)
            return gq_err(GQ_ERR_UNSUPPORTED, "cuda attention: head_dim %d, at most %d supported", head_dim,
                          V1_MAX_HD);
        if (f32)
            launch_v1(c->stream, (float *)O, ldo, (const float *)Q, ldq, (const float *)K, ldk, (const float *)V, ldv,
                      Tq, Tk, n_heads, group, head_dim, &a);
        else
            launch_v1(c->stream, (__half *)O, ldo, (const __half *)Q, ldq, (const __half *)K, ldk, (const __half *)V,
                      ldv, Tq, Tk, n_heads, group, head_dim, &a);
    } else if (version == 3) {
        int rc = head_dim == 64 ? launch_f32<64>(c->stream, (float *)O, ldo, (const float *)Q, ldq, (const float *)K,
                                                 ldk, (const float *)V, ldv, Tq, Tk, n_heads, group, a.scale, a.cap,
                                                 a.window)
                                : launch_f32<128>(c->stream, (float *)O, ldo, (const float *)Q, ldq, (const float *)K,
                                                  ldk, (const float *)V, ldv, Tq, Tk, n_heads, group, a.scale, a.cap,
                                                  a.window);
        if (rc != GQ_OK) return rc;
    } else if (head_dim == 64) {
        launch_v2<64>(c->stream, (__half *)O, ldo, (const __half *)Q, ldq, (const __half *)K, ldk, (const __half *)V,
                      ldv, Tq, Tk, n_heads, group, &a);
    } else {
        launch_v2<128>(c->stream, (__half *)O, ldo, (const __half *)Q, ldq, (const __half *)K, ldk, (const __half *)V,
                       ldv, Tq, Tk, n_heads, group, &a);
    }
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}
