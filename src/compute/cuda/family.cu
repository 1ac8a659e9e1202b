/*
 * cuda/family.cu -- the small ops that model families beyond Llama need ("family ops" of
 * gq/backend.h), on fp16 (or, with --precision fp32, fp32) activations with fp32 math:
 *   act_kernel            in-place activation of a non-gated MLP (GELU-tanh, SiLU)
 *   layernorm_kernel      torch LayerNorm, one block per row, two-pass fp32 statistics
 *   head_rmsnorm_kernel   RMSNorm of each head (Qwen3's q_norm / k_norm), one warp per head
 *   gather_rows_kernel    Y[i] = X[idx[i]]            (MoE routing: tokens of one expert)
 *   scatter_add_kernel    Y[idx[i]] += w[i] * X[i]    (MoE routing: weighted expert outputs back)
 * The gated activations (glu) live beside rmsnorm in norm_rope.cu. The host arrays of gather and
 * scatter (idx, w) go to the device through gq_cuda_host_arrays.
 */
#include "common.cuh"

/* ---- act ----------------------------------------------------------------------------------------------------- */

/* X[t][j] = act(X[t][j]) for j < n; V = 8: 16-byte accesses (n, ld multiples of 8, aligned X). */
template <typename E, int V, int ACT>
static __global__ void act_kernel(E *X, int ld, int T, int n) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (j >= n) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        E *x = X + (size_t)t * ld + j;
        if constexpr (V == 8) {
            uint4 raw = *(const uint4 *)x;
            __half *hv = (__half *)&raw;
#pragma unroll
            for (int k = 0; k < 8; k++) hv[k] = f2h(act_f<ACT>(h2f(hv[k])));
            *(uint4 *)x = raw;
        } else {
            put_f(x, act_f<ACT>(to_f(*x)));
        }
    }
}

template <int ACT>
static void launch_act(cudaStream_t s, int f32, int vec, void *X, int ld, int T, int n) {
    if (f32)
        act_kernel<float, 1, ACT><<<rows_grid(T, n, 1), 256, 0, s>>>((float *)X, ld, T, n);
    else if (vec)
        act_kernel<__half, 8, ACT><<<rows_grid(T, n, 8), 256, 0, s>>>((__half *)X, ld, T, n);
    else
        act_kernel<__half, 1, ACT><<<rows_grid(T, n, 1), 256, 0, s>>>((__half *)X, ld, T, n);
}

int gq_cuda_act(gq_backend *be, void *X, int ld, int T, int n, gq_act_kind act) {
    cudaStream_t s = gq_cuda_ctx_of(be)->stream;
    const int f32 = gq_cuda_f32(be);
    const int vec = !f32 && n % 8 == 0 && gq_cuda_vec16(X, ld, 2);
    switch (act) {
    case GQ_ACT_SILU: launch_act<GQ_ACT_SILU>(s, f32, vec, X, ld, T, n); break;
    case GQ_ACT_GELU_TANH: launch_act<GQ_ACT_GELU_TANH>(s, f32, vec, X, ld, T, n); break;
    default: return gq_err(GQ_ERR_ARG, "cuda act: unknown activation %d", (int)act);
    }
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}

/* ---- norms --------------------------------------------------------------------------------------------------- */

/* Y[row] = (x - mean) * inv * w (+ b), one block per row of d: mean from an fp32 block sum, the biased
 * variance from a second pass over the centred values (no cancellation), inv = 1 / sqrt(var + eps)
 * in double as rmsnorm_kernel does it. b may be NULL. Y may be X (each element is read before the
 * same thread writes it). */
template <typename T>
static __global__ void layernorm_kernel(T *Y, int ldy, const T *X, int ldx, int d, const T *w, const T *b,
                                        float eps) {
    const T *x = X + (size_t)blockIdx.x * ldx;
    T *y = Y + (size_t)blockIdx.x * ldy;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += to_f(x[i]);
    const float mean = block_sum(s) / (float)d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = to_f(x[i]) - mean;
        ss += v * v;
    }
    const float var = block_sum(ss) / (float)d;
    const float inv = (float)(1.0 / sqrt((double)var + (double)eps));
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = (to_f(x[i]) - mean) * inv * to_f(w[i]);
        put_f(&y[i], b ? v + to_f(b[i]) : v);
    }
}

int gq_cuda_layernorm(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                      const gq_bweight *b, float eps) {
    cudaStream_t s = gq_cuda_ctx_of(be)->stream;
    if (b && !b->data) b = NULL;
    if (w->dtype != be->act_dtype || (b && b->dtype != be->act_dtype))
        return gq_err(GQ_ERR_ARG, "cuda layernorm: weight %s, bias %s, expected %s", gq_dtype_name(w->dtype),
                      b ? gq_dtype_name(b->dtype) : "none", gq_dtype_name(be->act_dtype));
    const int threads = d >= 256 ? 256 : CEIL_DIV(d, 32) * 32;
    if (gq_cuda_f32(be))
        layernorm_kernel<float><<<T, threads, 0, s>>>((float *)Y, ldy, (const float *)X, ldx, d,
                                                      (const float *)w->data, b ? (const float *)b->data : NULL, eps);
    else
        layernorm_kernel<__half><<<T, threads, 0, s>>>((__half *)Y, ldy, (const __half *)X, ldx, d,
                                                       (const __half *)w->data, b ? (const __half *)b->data : NULL,
                                                       eps);
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}

#define HN_WARPS 4 /* heads per block of head_rmsnorm_kernel */

/* In place, one warp per (token, head) of hd elements at X[t][h * hd]: x * inv_rms * w[hd], with the
 * arithmetic of rmsnorm_kernel (fp32 sum of squares, inv_rms = 1 / sqrt(ss / hd + eps) in double,
 * (x * inv) * w). */
template <typename T>
static __global__ void __launch_bounds__(HN_WARPS * 32)
    head_rmsnorm_kernel(T *X, int ld, long n_rows, int nh, int hd, const T *w, float eps) {
    const long id = (long)blockIdx.x * HN_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (id >= n_rows) return; /* whole warp */
    const long t = id / nh;
    T *x = X + (size_t)t * ld + (size_t)(id - t * nh) * hd;
    float ss = 0.0f;
    for (int i = lane; i < hd; i += 32) {
        const float v = to_f(x[i]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    const float inv = (float)(1.0 / sqrt((double)ss / hd + (double)eps));
    for (int i = lane; i < hd; i += 32) put_f(&x[i], (to_f(x[i]) * inv) * to_f(w[i]));
}

int gq_cuda_head_rmsnorm(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, const gq_bweight *w,
                         float eps) {
    cudaStream_t s = gq_cuda_ctx_of(be)->stream;
    if (w->dtype != be->act_dtype)
        return gq_err(GQ_ERR_ARG, "cuda head_rmsnorm: weight is %s, expected %s", gq_dtype_name(w->dtype),
                      gq_dtype_name(be->act_dtype));
    const long rows = (long)T * n_heads, blocks = CEIL_DIV(rows, (long)HN_WARPS);
    if (blocks > 0x7fffffffL)
        return gq_err(GQ_ERR_UNSUPPORTED, "cuda head_rmsnorm: %d tokens x %d heads", T, n_heads);
    if (gq_cuda_f32(be))
        head_rmsnorm_kernel<float><<<(unsigned)blocks, HN_WARPS * 32, 0, s>>>((float *)X, ld, rows, n_heads, head_dim,
                                                                              (const float *)w->data, eps);
    else
        head_rmsnorm_kernel<__half><<<(unsigned)blocks, HN_WARPS * 32, 0, s>>>(
            (__half *)X, ld, rows, n_heads, head_dim, (const __half *)w->data, eps);
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}

/* ---- gather / scatter rows ----------------------------------------------------------------------------------- */

/* Y[i][j] = X[idx[i]][j], i < n, j < d (a copy: no rounding). */
template <typename E>
static __global__ void gather_rows_kernel(E *Y, int ldy, const E *X, int ldx, const int *idx, int n, int d) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    for (int i = blockIdx.y; i < n; i += gridDim.y) Y[(size_t)i * ldy + j] = X[(size_t)idx[i] * ldx + j];
}

/* Y[idx[i]][j] += w[i] * X[i][j], product and sum rounded in fp32 (no FMA, as the CPU computes it), then
 * once to the element type; the idx are distinct, so no two threads write one element. */
template <typename E>
static __global__ void scatter_add_kernel(E *Y, int ldy, const E *X, int ldx, const int *idx, const float *w, int n,
                                          int d) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    for (int i = blockIdx.y; i < n; i += gridDim.y) {
        E *y = Y + (size_t)idx[i] * ldy + j;
        put_f(y, __fadd_rn(to_f(*y), __fmul_rn(w[i], to_f(X[(size_t)i * ldx + j]))));
    }
}

int gq_cuda_gather_rows(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx, int n, int d) {
    cudaStream_t s = gq_cuda_ctx_of(be)->stream;
    if (n <= 0 || d <= 0) return GQ_OK;
    void *didx = NULL;
    int rc = gq_cuda_host_arrays(be, idx, sizeof(int32_t) * (size_t)n, NULL, 0, &didx, NULL, "gather_rows");
    if (rc != GQ_OK) return rc;
    if (gq_cuda_f32(be))
        gather_rows_kernel<<<rows_grid(n, d, 1), 256, 0, s>>>((float *)Y, ldy, (const float *)X, ldx,
                                                              (const int *)didx, n, d);
    else
        gather_rows_kernel<<<rows_grid(n, d, 1), 256, 0, s>>>((__half *)Y, ldy, (const __half *)X, ldx,
                                                              (const int *)didx, n, d);
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}

int gq_cuda_scatter_add_rows(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx,
                             const float *w, int n, int d) {
    cudaStream_t s = gq_cuda_ctx_of(be)->stream;
    if (n <= 0 || d <= 0) return GQ_OK;
    void *didx = NULL, *dw = NULL;
    int rc = gq_cuda_host_arrays(be, idx, sizeof(int32_t) * (size_t)n, w, sizeof(float) * (size_t)n, &didx, &dw,
                                 "scatter_add_rows");
    if (rc != GQ_OK) return rc;
    if (gq_cuda_f32(be))
        scatter_add_kernel<<<rows_grid(n, d, 1), 256, 0, s>>>((float *)Y, ldy, (const float *)X, ldx,
                                                              (const int *)didx, (const float *)dw, n, d);
    else
        scatter_add_kernel<<<rows_grid(n, d, 1), 256, 0, s>>>((__half *)Y, ldy, (const __half *)X, ldx,
                                                              (const int *)didx, (const float *)dw, n, d);
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}
