/*
 * decode.cu -- one batched decode step (gq_be_decode_attention): B new
 * tokens, each of its own sequence with its own KV cache and position.
 *
 * Row by row this is rope + two copies + attention: four launches per row
 * and layer, and attention with Tq = 1 runs one warp per head over the whole
 * cache. Here it is two launches per layer for the whole batch:
 *   decode_rope_append_kernel  block per (row, DEC_ROPE_HEADS of its n_heads q
 *                              and n_kv k heads): rotates the first rot dims of
 *                              its heads at pos[r] (the arithmetic of
 *                              rope_kernel), writes its k heads and its share
 *                              of v into the caches at pos[r] (one block per
 *                              row took 16.5 us on an H100 for a 7B row: its
 *                              threads' 2-byte loads one after another);
 *   decode_attn_kernel         block per (head, row, split), DEC_WARPS warps
 *                              each taking every DEC_WARPS-th chunk of 32
 *                              keys of the split's key range with an online
 *                              softmax (as attn_v1_kernel), partial (max,
 *                              sum, o) merged in shared memory. With a
 *                              sliding window the keys start at the window's
 *                              first key; scale and soft-cap as gq_attn_opts.
 *   decode_merge_kernel        (splits > 1) block per (head, row): the
 *                              splits' partials merged (flash-decoding).
 * One split per (head, row) leaves batch-1 decode with n_heads blocks (32 for
 * a 7B) on a 132-SM card, far too few loads in flight to read a long KV
 * cache at the memory's rate; so the keys are cut into splits of a multiple
 * of 32 keys, enough for about two blocks per SM, each split at least 128
 * keys. With one split the kernel writes O itself (the one-block result).
 *   decode_attn_h_kernel<HD>   the same blocks and results for fp16 caches with head_dim 64,
 *                              128 or 256: a key's row is read by HD / 8 lanes, 16 bytes each
 *                              (so a warp reads 2 keys of 128 dims at once, coalesced, where
 *                              decode_attn_kernel's lanes read a 2-byte element of 32 rows a
 *                              time), DEC_UNROLL such loads of K and of V in flight per lane;
 *                              each lane group keeps its own online softmax over its keys,
 *                              merged through the warp with shuffles at the end.
 * slot[] and pos[] travel to the device each call (B ints each), unless the
 * caller has device copies (gq_attn_opts dslot / dpos, one gq_be_upload_pinned
 * a step) and the caches' length is known (cache_len): then the kernels read
 * those and the splits follow the caches' length, so nothing of the launch
 * depends on their values and a recorded step (gq_be_graph_*) replays with
 * each step's positions. (Kernels that read pinned host arrays in place
 * would send a read over PCIe from every warp of every block.)
 */
#include <math.h>

#include "common.cuh"

#define DEC_WARPS 4
#define DEC_MAX_HD 256
#define DEC_MAX_SPLIT 64
#define DEC_UNROLL 4 /* keys per lane group in flight (decode_attn_h_kernel) */
#define DEC_ROPE_HEADS 2 /* q | k heads per block of decode_rope_append_kernel */

/* Row blockIdx.x, heads h0 .. h0 + DEC_ROPE_HEADS - 1 of its q | k heads (h0 = DEC_ROPE_HEADS
 * blockIdx.y; q and k heads are adjacent in QKV), and v elements [vc blockIdx.y, + vc). */
template <typename E>
static __global__ void decode_rope_append_kernel(E *QKV, int ldqkv, E *Kc, E *Vc, size_t stride,
                                                 int ldkv, const int *slot, const int *posv, int nh, int nkv, int hd,
                                                 int rot, const float *inv_freq, int vc) {
    extern __shared__ float cs[]; /* [rot/2] cos, then [rot/2] sin */
    const int r = blockIdx.x, h0 = (int)blockIdx.y * DEC_ROPE_HEADS;
    const int nhere = nh + nkv - h0 < DEC_ROPE_HEADS ? nh + nkv - h0 : DEC_ROPE_HEADS;
    rope_angles(cs, (float)posv[r], inv_freq, rot / 2);
    __syncthreads();
    E *x = QKV + (size_t)r * ldqkv;
    rope_rotate(x + (size_t)h0 * hd, nhere, hd, rot, cs);
    __syncthreads(); /* this block's k heads rotated */
    const int kvd = nkv * hd;
    const size_t at = (size_t)slot[r] * stride + (size_t)posv[r] * ldkv;
    const E *ks = x + (size_t)nh * hd, *vs = ks + kvd;
    const int k0 = (h0 > nh ? h0 : nh) - nh, k1 = h0 + nhere - nh; /* this block's k heads: k0 .. k1 - 1 */
    for (int j = k0 * hd + (int)threadIdx.x; j < k1 * hd; j += blockDim.x) Kc[at + j] = ks[j];
    const int v1 = ((int)blockIdx.y + 1) * vc < kvd ? ((int)blockIdx.y + 1) * vc : kvd;
    for (int j = (int)blockIdx.y * vc + (int)threadIdx.x; j < v1; j += blockDim.x) Vc[at + j] = vs[j];
}

/* The block's warps' (max, sum, unnormalised o) -- wm, wl, wo, shared and complete -- merged into
 * O (one split) or into this split's partial in part (see decode_attn_kernel). */
template <typename E>
static __device__ void block_merge(E *O, int ldo, const float *wm, const float *wl, const float (*wo)[DEC_MAX_HD],
                                   int hd, float *part) {
    const int h = blockIdx.x, r = blockIdx.y, nsplit = gridDim.z;
    float *pp = nsplit > 1 ? part + ((size_t)(r * gridDim.x + h) * nsplit + blockIdx.z) * (hd + 2) : NULL;
    float M = wm[0];
    for (int w = 1; w < DEC_WARPS; w++) M = fmaxf(M, wm[w]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float L = 0.0f, acc = 0.0f;
        for (int w = 0; w < DEC_WARPS; w++) {
            if (wm[w] == -INFINITY) continue;
            const float a = expf(wm[w] - M);
            L += wl[w] * a;
            acc += wo[w][d] * a;
        }
        if (!pp) { /* one split: some warp saw key k1, so M is finite and L > 0 */
            put_f(&O[(size_t)r * ldo + (size_t)h * hd + d], acc / L);
            continue;
        }
        pp[2 + d] = acc;
        if (d == 0) {
            pp[0] = M; /* -inf: a split past this row's last key */
            pp[1] = L;
        }
    }
}

/* part: with gridDim.z > 1 splits, per (row, head, split) the max, the sum and the unnormalised
 * output [hd] (fp32), at ((r * nh + h) * nsplit + split) * (hd + 2); split_keys keys a split. */
template <typename E>
static __global__ void __launch_bounds__(DEC_WARPS * 32)
    decode_attn_kernel(E *O, int ldo, const E *QKV, int ldqkv, const E *Kc, const E *Vc, size_t stride, int ldkv,
                       const int *slot, const int *posv, int group, int hd, float scale, float cap, int window,
                       int split_keys, float *part) {
    __shared__ float qs[DEC_MAX_HD];
    __shared__ float wm[DEC_WARPS], wl[DEC_WARPS];
    __shared__ float wo[DEC_WARPS][DEC_MAX_HD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.x, r = blockIdx.y, kvh = h / group, nsplit = gridDim.z;
    const int pos = posv[r]; /* last visible key */
    const E *q = QKV + (size_t)r * ldqkv + (size_t)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = to_f(q[d]);
    __syncthreads();
    const E *Kh = Kc + (size_t)slot[r] * stride + (size_t)kvh * hd;
    const E *Vh = Vc + (size_t)slot[r] * stride + (size_t)kvh * hd;
    float o[DEC_MAX_HD / 32];
#pragma unroll
    for (int e = 0; e < DEC_MAX_HD / 32; e++) o[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    /* this split's keys kb .. ke (the first visible key k1: 0 without a window) */
    const int kb = attn_first_key(pos, window) + (int)blockIdx.z * split_keys;
    const int ke = nsplit == 1 || kb + split_keys - 1 > pos ? pos : kb + split_keys - 1;
    for (int k0 = kb + warp * 32; k0 <= ke; k0 += DEC_WARPS * 32)
        attn_chunk<DEC_MAX_HD>(qs, Kh, ldkv, Vh, ldkv, k0, ke, hd, scale, cap, m, l, o);
    if (lane == 0) {
        wm[warp] = m; /* -inf for a warp that saw no key */
        wl[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < DEC_MAX_HD / 32; e++) {
        const int d = lane + 32 * e;
        if (d < hd) wo[warp][d] = o[e];
    }
    __syncthreads();
    block_merge(O, ldo, wm, wl, wo, hd, part);
}

/* (m, l, o) of this lane's group merged with those of the group `off` lanes away (xor). */
static __device__ __forceinline__ void soft_merge(float &m, float &l, float (&o)[8], int off) {
    const float m2 = __shfl_xor_sync(GQ_FULL_MASK, m, off), l2 = __shfl_xor_sync(GQ_FULL_MASK, l, off);
    const float M = fmaxf(m, m2);
    const float a = m == -INFINITY ? 0.0f : expf(m - M), b = m2 == -INFINITY ? 0.0f : expf(m2 - M);
    l = l * a + l2 * b;
#pragma unroll
    for (int i = 0; i < 8; i++) o[i] = o[i] * a + __shfl_xor_sync(GQ_FULL_MASK, o[i], off) * b;
    m = M;
}

/* 8 fp16 values (16 bytes) as fp32 */
static __device__ __forceinline__ void unpack8(const uint4 u, float (&f)[8]) {
    const __half2 *h = (const __half2 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 t = __half22float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

/* decode_attn_kernel for fp16 caches and head_dim HD (64, 128, 256), its blocks and results: lane
 * group sub (HD / 8 lanes, lane gl of it holding dims 8 gl .. 8 gl + 7) takes keys k, k + KPW, ...
 * of the warp's stretch, DEC_UNROLL at a time. Caches, q and the strides 16-byte aligned. */
template <int HD>
static __global__ void __launch_bounds__(DEC_WARPS * 32)
    decode_attn_h_kernel(__half *O, int ldo, const __half *QKV, int ldqkv, const __half *Kc, const __half *Vc,
                         size_t stride, int ldkv, const int *slot, const int *posv, int group, float scale, float cap,
                         int window, int split_keys, float *part) {
    constexpr int G = HD / 8, KPW = 32 / G, STEP = KPW * DEC_UNROLL; /* keys a warp takes per pass */
    __shared__ float wm[DEC_WARPS], wl[DEC_WARPS];
    __shared__ float wo[DEC_WARPS][DEC_MAX_HD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = lane / G, gl = lane % G;
    const int h = blockIdx.x, r = blockIdx.y, kvh = h / group, nsplit = gridDim.z;
    const int pos = posv[r];
    float q[8], o[8];
    unpack8(*(const uint4 *)(QKV + (size_t)r * ldqkv + (size_t)h * HD + 8 * gl), q);
#pragma unroll
    for (int i = 0; i < 8; i++) o[i] = 0.0f;
    const size_t base = (size_t)slot[r] * stride + (size_t)kvh * HD + 8 * gl;
    const __half *Kh = Kc + base, *Vh = Vc + base;
    float m = -INFINITY, l = 0.0f;
    const int kb = attn_first_key(pos, window) + (int)blockIdx.z * split_keys;
    const int ke = nsplit == 1 || kb + split_keys - 1 > pos ? pos : kb + split_keys - 1;
    for (int k0 = kb + warp * STEP; k0 <= ke; k0 += DEC_WARPS * STEP) {
        uint4 kr[DEC_UNROLL], vr[DEC_UNROLL];
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) { /* every load first: DEC_UNROLL rows of K and V in flight */
            const int j = k0 + u * KPW + sub;
            kr[u] = j <= ke ? *(const uint4 *)(Kh + (size_t)j * ldkv) : make_uint4(0, 0, 0, 0);
            vr[u] = j <= ke ? *(const uint4 *)(Vh + (size_t)j * ldkv) : make_uint4(0, 0, 0, 0);
        }
        float s[DEC_UNROLL], mn = m;
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) {
            float k[8], acc = 0.0f;
            unpack8(kr[u], k);
#pragma unroll
            for (int i = 0; i < 8; i++) acc += q[i] * k[i];
            acc = warp_sum<G>(acc); /* the key's whole dot product, in every lane of the group */
            s[u] = acc * scale;
            if (cap > 0.0f) s[u] = cap * tanhf(s[u] / cap);
            if (k0 + u * KPW + sub > ke) s[u] = -INFINITY;
            mn = fmaxf(mn, s[u]);
        }
        if (mn == -INFINITY) continue; /* this group had no key in the pass (its last, partial one) */
        const float alpha = expf(m - mn); /* 0 on the group's first keys (m = -inf) */
        l *= alpha;
#pragma unroll
        for (int i = 0; i < 8; i++) o[i] *= alpha;
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) {
            const float p = expf(s[u] - mn); /* 0 for a key past ke */
            float v[8];
            unpack8(vr[u], v);
            l += p;
#pragma unroll
            for (int i = 0; i < 8; i++) o[i] += p * v[i];
        }
        m = mn;
    }
#pragma unroll
    for (int off = G; off < 32; off <<= 1) soft_merge(m, l, o, off); /* the warp's groups into lanes 0 .. G-1 */
    if (lane == 0) {
        wm[warp] = m; /* -inf for a warp that saw no key */
        wl[warp] = l;
    }
    if (sub == 0) {
#pragma unroll
        for (int i = 0; i < 8; i++) wo[warp][8 * gl + i] = o[i];
    }
    __syncthreads();
    block_merge(O, ldo, wm, wl, wo, HD, part);
}

/* The splits' partials of (head blockIdx.x, row blockIdx.y) into O. */
template <typename E>
static __global__ void decode_merge_kernel(E *O, int ldo, const float *part, int nsplit, int hd) {
    gq_pdl_trigger();
    const int h = blockIdx.x, r = blockIdx.y;
    const float *pp = part + (size_t)(r * gridDim.x + h) * nsplit * (hd + 2);
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, pp[(size_t)s * (hd + 2)]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float L = 0.0f, acc = 0.0f;
        for (int s = 0; s < nsplit; s++) {
            const float *ps = pp + (size_t)s * (hd + 2);
            if (ps[0] == -INFINITY) continue;
            const float a = expf(ps[0] - M);
            L += ps[1] * a;
            acc += ps[2 + d] * a;
        }
        put_f(&O[(size_t)r * ldo + (size_t)h * hd + d], acc / L);
    }
}

/* Splits for B rows of n_heads heads whose longest key range is `keys`: about two blocks per SM,
 * at least 128 keys a split (a multiple of 32), at most DEC_MAX_SPLIT. */
static int decode_splits(const gq_cuda_ctx *c, int B, int n_heads, int keys, int *split_keys) {
    const int blocks = B * n_heads, want = CEIL_DIV(2 * c->prop.multiProcessorCount, blocks);
    int n = want < CEIL_DIV(keys, 128) ? want : CEIL_DIV(keys, 128);
    n = n < 1 ? 1 : n > DEC_MAX_SPLIT ? DEC_MAX_SPLIT : n;
    *split_keys = CEIL_DIV(CEIL_DIV(keys, n), 32) * 32;
    return CEIL_DIV(keys, *split_keys);
}

/* decode_attn_h_kernel where it applies (fp16, head_dim 64 / 128 / 256, 16-byte aligned rows, not
 * attention kernel 1 forced: GQ_CUDA_ATTN=1 keeps decode_attn_kernel, the comparison); false:
 * decode_attn_kernel's turn */
static bool launch_attn_h(gq_cuda_ctx *, dim3, float *, int, const float *, int, const float *, const float *, size_t,
                          int, const int *, const int *, int, int, float, float, int, int, float *) {
    return false;
}
static bool launch_attn_h(gq_cuda_ctx *c, dim3 grid, __half *O, int ldo, const __half *QKV, int ldqkv,
                          const __half *Kc, const __half *Vc, size_t stride, int ldkv, const int *slot,
                          const int *pos, int group, int hd, float scale, float cap, int window, int split_keys,
                          float *part) {
    if (c->attn_version == 1 || (hd != 64 && hd != 128 && hd != 256) || ldqkv % 8 || ldkv % 8 || stride % 8 || (uintptr_t)QKV % 16 ||
        (uintptr_t)Kc % 16 || (uintptr_t)Vc % 16)
        return false;
#define DEC_H(HD)                                                                                                      \
    decode_attn_h_kernel<HD><<<grid, DEC_WARPS * 32, 0, c->stream>>>(O, ldo, QKV, ldqkv, Kc, Vc, stride, ldkv, slot,   \
                                                                     pos, group, scale, cap, window, split_keys, part)
    if (hd == 64) DEC_H(64);
    else if (hd == 128) DEC_H(128);
    else DEC_H(256);
#undef DEC_H
    return true;
}

/* The kernels on the stream; dslot, dpos: slot[B] and pos[B] on the device; part: the splits'
 * scratch (nsplit > 1). */
template <typename E>
static int launch_decode(gq_cuda_ctx *c, E *O, int ldo, E *QKV, int ldqkv, int B, E *Kc, E *Vc, size_t slot_stride,
                         int ldkv, const int *dslot, const int *dpos, int n_heads, int n_kv, int head_dim, int rot,
                         float scale, float cap, int window, int nsplit, int split_keys, float *part) {
    const int gy = CEIL_DIV(n_heads + n_kv, DEC_ROPE_HEADS), work = DEC_ROPE_HEADS * head_dim;
    const int threads = work >= 256 ? 256 : CEIL_DIV(work, 32) * 32;
    decode_rope_append_kernel<<<dim3(B, gy), threads, (size_t)rot * sizeof(float), c->stream>>>(
        QKV, ldqkv, Kc, Vc, slot_stride, ldkv, dslot, dpos, n_heads, n_kv, head_dim, rot, c->rope_dev,
        CEIL_DIV(n_kv * head_dim, gy));
    CUDA_CHECK_LAUNCH();
    dim3 grid(n_heads, B, nsplit);
    if (!launch_attn_h(c, grid, O, ldo, QKV, ldqkv, Kc, Vc, slot_stride, ldkv, dslot, dpos, n_heads / n_kv, head_dim,
                       scale, cap, window, split_keys, part))
        decode_attn_kernel<<<grid, DEC_WARPS * 32, 0, c->stream>>>(O, ldo, QKV, ldqkv, Kc, Vc, slot_stride, ldkv,
                                                                   dslot, dpos, n_heads / n_kv, head_dim, scale, cap,
                                                                   window, split_keys, part);
    CUDA_CHECK_LAUNCH();
    if (nsplit > 1) {
        decode_merge_kernel<<<dim3(n_heads, B), 128, 0, c->stream>>>(O, ldo, part, nsplit, head_dim);
        CUDA_CHECK_LAUNCH();
    }
    return GQ_OK;
}

int gq_cuda_decode_attention(gq_backend *be, void *O, int ldo, void *QKV, int ldqkv, int B, void *Kc, void *Vc,
                             size_t slot_stride, int ldkv, const int32_t *slot, const int32_t *pos, int n_heads,
                             int n_kv, int head_dim, int rot, const float *inv_freq, const gq_attn_opts *o) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    if (head_dim > DEC_MAX_HD || B > 65535)
        return gq_err(GQ_ERR_UNSUPPORTED, "cuda decode attention: head_dim %d (at most %d), batch %d (at most 65535)",
                      head_dim, DEC_MAX_HD, B);
    int rc = gq_cuda_set_rope_freqs(be, inv_freq, rot / 2);
    if (rc != GQ_OK) return rc;
    const float scale = gq_cuda_attn_scale(o, head_dim), cap = o ? o->softcap : 0.0f;
    const int window = o ? o->window : 0, cache_len = o ? o->cache_len : 0;
    const void *dslot = o ? o->dslot : NULL, *dpos = o ? o->dpos : NULL;
    int keys = 1; /* the longest row's visible keys; from the device copies: the most the caches hold */
    if (dslot && dpos && cache_len > 0) {
        keys = window > 0 && window < cache_len ? window : cache_len;
    } else {
        void *ds, *dp;
        rc = gq_cuda_host_arrays(be, slot, sizeof(int32_t) * (size_t)B, pos, sizeof(int32_t) * (size_t)B, &ds, &dp,
                                 "decode indices");
        dslot = ds, dpos = dp;
        if (rc != GQ_OK) return rc;
        for (int r = 0; r < B; r++) {
            const int k = window > 0 && pos[r] + 1 > window ? window : pos[r] + 1;
            keys = k > keys ? k : keys;
        }
    }
    int split_keys = keys;
    const int nsplit = decode_splits(c, B, n_heads, keys, &split_keys);
    float *part = NULL;
    if (nsplit > 1 &&
        !(part = (float *)gq_cuda_scratch(be, (size_t)B * n_heads * nsplit * (head_dim + 2) * sizeof(float),
                                          "decode attention splits")))
        return gq_errcode();
    if (gq_cuda_f32(be))
        rc = launch_decode(c, (float *)O, ldo, (float *)QKV, ldqkv, B, (float *)Kc, (float *)Vc, slot_stride, ldkv,
                           (const int *)dslot, (const int *)dpos, n_heads, n_kv, head_dim, rot, scale, cap, window,
                           nsplit, split_keys, part);
    else
        rc = launch_decode(c, (__half *)O, ldo, (__half *)QKV, ldqkv, B, (__half *)Kc, (__half *)Vc, slot_stride,
                           ldkv, (const int *)dslot, (const int *)dpos, n_heads, n_kv, head_dim, rot, scale, cap,
                           window, nsplit, split_keys, part);
    gq_be_release(be, part); /* stream-ordered: reused only after the kernels (the pool) */
    return rc;
}
