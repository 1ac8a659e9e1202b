/*
 * decode.cu -- one batched decode step (gq_be_decode_attention): B new
 * tokens, each of its own sequence with its own KV cache and position.
 *
 * Row by row this is rope + two copies + attention: four launches per row
 * and layer, and attention with Tq = 1 runs one warp per head over the whole
 * cache. Here it is two launches per layer for the whole batch:
 *   decode_rope_append_kernel  block per row: rotates the first rot dims of
 *                              the n_heads q and n_kv k heads at pos[r] (the
 *                              arithmetic of rope_kernel), then writes k and
 *                              v into the caches at pos[r];
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
 * slot[] and pos[] travel to the device each call (B ints each), unless they
 * are pinned host arrays and the caches' length is known (gq_attn_opts
 * cache_len): then the kernels read them in place and the splits follow the
 * caches' length, so nothing of the launch depends on their values and a
 * recorded step (gq_be_graph_*) replays with each step's positions.
 */
#include <math.h>

#include "common.cuh"

#define DEC_WARPS 4
#define DEC_MAX_HD 256
#define DEC_MAX_SPLIT 64

template <typename E>
static __global__ void decode_rope_append_kernel(E *QKV, int ldqkv, E *Kc, E *Vc, size_t stride,
                                                 int ldkv, const int *slot, const int *posv, int nh, int nkv, int hd,
                                                 int rot, const float *inv_freq) {
    extern __shared__ float cs[]; /* [rot/2] cos, then [rot/2] sin */
    const int r = blockIdx.x;
    rope_angles(cs, (float)posv[r], inv_freq, rot / 2);
    __syncthreads();
    E *x = QKV + (size_t)r * ldqkv;
    rope_rotate(x, nh + nkv, hd, rot, cs); /* q and k heads are adjacent */
    __syncthreads();
    const int kvd = nkv * hd;
    const size_t at = (size_t)slot[r] * stride + (size_t)posv[r] * ldkv;
    const E *ks = x + (size_t)nh * hd, *vs = ks + kvd;
    for (int j = threadIdx.x; j < kvd; j += blockDim.x) {
        Kc[at + j] = ks[j];
        Vc[at + j] = vs[j];
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
    float *pp = nsplit > 1 ? part + ((size_t)(r * gridDim.x + h) * nsplit + blockIdx.z) * (hd + 2) : NULL;
    float M = wm[0]; /* one split: warp 0 saw key k1 */
    for (int w = 1; w < DEC_WARPS; w++) M = fmaxf(M, wm[w]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float L = 0.0f, acc = 0.0f;
        for (int w = 0; w < DEC_WARPS; w++) {
            if (wm[w] == -INFINITY) continue;
            const float a = expf(wm[w] - M);
            L += wl[w] * a;
            acc += wo[w][d] * a;
        }
        if (!pp) {
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

/* The splits' partials of (head blockIdx.x, row blockIdx.y) into O. */
template <typename E>
static __global__ void decode_merge_kernel(E *O, int ldo, const float *part, int nsplit, int hd) {
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

/* The device's view of host array p when p is pinned (read in place by the kernels, when they
 * run: a recorded step reads each replay's values), else NULL. */
static void *pinned_ptr(const void *p) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return a.type == cudaMemoryTypeHost ? a.devicePointer : NULL;
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

/* The kernels on the stream; dslot, dpos: slot[B] and pos[B] on the device; part: the splits'
 * scratch (nsplit > 1). */
template <typename E>
static int launch_decode(gq_cuda_ctx *c, E *O, int ldo, E *QKV, int ldqkv, int B, E *Kc, E *Vc, size_t slot_stride,
                         int ldkv, const int *dslot, const int *dpos, int n_heads, int n_kv, int head_dim, int rot,
                         float scale, float cap, int window, int nsplit, int split_keys, float *part) {
    const int work = (n_heads + n_kv) * (rot / 2);
    const int threads = work >= 256 ? 256 : CEIL_DIV(work, 32) * 32;
    decode_rope_append_kernel<<<B, threads, (size_t)rot * sizeof(float), c->stream>>>(
        QKV, ldqkv, Kc, Vc, slot_stride, ldkv, dslot, dpos, n_heads, n_kv, head_dim, rot, c->rope_dev);
    CUDA_CHECK_LAUNCH();
    dim3 grid(n_heads, B, nsplit);
    decode_attn_kernel<<<grid, DEC_WARPS * 32, 0, c->stream>>>(O, ldo, QKV, ldqkv, Kc, Vc, slot_stride, ldkv, dslot,
                                                               dpos, n_heads / n_kv, head_dim, scale, cap, window,
                                                               split_keys, part);
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
    void *dslot = pinned_ptr(slot), *dpos = pinned_ptr(pos);
    int keys = 1; /* the longest row's visible keys; in place: the most the caches hold */
    if (dslot && dpos && cache_len > 0) {
        keys = window > 0 && window < cache_len ? window : cache_len;
    } else {
        rc = gq_cuda_host_arrays(be, slot, sizeof(int32_t) * (size_t)B, pos, sizeof(int32_t) * (size_t)B, &dslot,
                                 &dpos, "decode indices");
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
