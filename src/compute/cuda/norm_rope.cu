/*
 * cuda/norm_rope.cu -- the elementwise ops of the forward pass on fp16 (or,
 * with --precision fp32, fp32) activations with fp32 math: rmsnorm (one block per row), rope (one block
 * per token, cos/sin of the token's angles in shared memory; full or partial rotary), the gated
 * activations (glu: SwiGLU, GeGLU), add and the bias add of linear. Kernels are templated on the element type T
 * and a vector width V: V = 8 (16-byte accesses) exists for fp16 only.
 */
#include "common.cuh"

/* ---- rmsnorm ---------------------------------------------------------------------------------------------- */

/* Y[row] = (X[row] * inv_rms) * w; V = 8: 16-byte accesses (d, ld multiples
 * of 8, aligned buffers), V = 1: scalar. inv_rms = 1 / sqrt(mean(x^2) + eps)
 * with the mean taken from an fp32 sum and the rest in double, as the CPU
 * backend does it. */
template <typename T, int V>
static __global__ void rmsnorm_kernel(T *Y, int ldy, const T *X, int ldx, int d, const T *w, float eps) {
    gq_pdl_trigger(); /* a GEMV after it may start loading its weights (common.cuh) */
    const T *x = X + (size_t)blockIdx.x * ldx;
    T *y = Y + (size_t)blockIdx.x * ldy;
    float ss = 0.0f;
    for (int i = threadIdx.x * V; i < d; i += blockDim.x * V) {
        if constexpr (V == 8) {
            uint4 raw = *(const uint4 *)(x + i);
            const __half *hv = (const __half *)&raw;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float v = h2f(hv[k]);
                ss += v * v;
            }
        } else {
            float v = to_f(x[i]);
            ss += v * v;
        }
    }
    ss = block_sum(ss);
    const float inv = (float)(1.0 / sqrt((double)ss / d + (double)eps));
    for (int i = threadIdx.x * V; i < d; i += blockDim.x * V) {
        if constexpr (V == 8) {
            uint4 raw = *(const uint4 *)(x + i), wr = *(const uint4 *)(w + i), out;
            const __half *hv = (const __half *)&raw, *wv = (const __half *)&wr;
            __half *ov = (__half *)&out;
#pragma unroll
            for (int k = 0; k < 8; k++) ov[k] = f2h((h2f(hv[k]) * inv) * h2f(wv[k]));
            *(uint4 *)(y + i) = out;
        } else {
            put_f(&y[i], (to_f(x[i]) * inv) * to_f(w[i]));
        }
    }
}

int gq_cuda_rmsnorm(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                    float eps) {
    cudaStream_t s = gq_cuda_ctx_of(be)->stream;
    if (w->dtype != be->act_dtype)
        return gq_err(GQ_ERR_ARG, "cuda rmsnorm: weight is %s, expected %s", gq_dtype_name(w->dtype),
                      gq_dtype_name(be->act_dtype));
    const int f32 = gq_cuda_f32(be);
    const int vec = !f32 && d % 8 == 0 && gq_cuda_vec16(X, ldx, 2) && gq_cuda_vec16(Y, ldy, 2) &&
                    gq_cuda_vec16(w->data, 0, 2);
    int threads = vec ? d / 8 : d;
    threads = threads >= 256 ? 256 : CEIL_DIV(threads, 32) * 32;
    if (f32)
        rmsnorm_kernel<float, 1><<<T, threads, 0, s>>>((float *)Y, ldy, (const float *)X, ldx, d,
                                                       (const float *)w->data, eps);
    else if (vec)
        rmsnorm_kernel<__half, 8><<<T, threads, 0, s>>>((__half *)Y, ldy, (const __half *)X, ldx, d,
                                                (const __half *)w->data, eps);
    else
        rmsnorm_kernel<__half, 1><<<T, threads, 0, s>>>((__half *)Y, ldy, (const __half *)X, ldx, d,
                                                (const __half *)w->data, eps);
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}

/* ---- rope ---------------------------------------------------------------------------------------------------- */

/* One block per token t: angles (pos0 + t) * inv_freq[i] (i < rot/2) as an fp32 product,
 * cos/sin (accurate sincosf) into shared memory, then every (head, i) pair
 * (x[i], x[i + rot/2]) of the token is rotated; dims rot .. hd-1 stay as they are. */
template <typename T>
static __global__ void rope_kernel(T *X, int ld, int n_heads, int hd, int rot, int pos0, const float *inv_freq) {
    extern __shared__ float cs[]; /* [rot/2] cos, then [rot/2] sin */
    rope_angles(cs, (float)(pos0 + (int)blockIdx.x), inv_freq, rot / 2);
    __syncthreads();
    rope_rotate(X + (size_t)blockIdx.x * ld, n_heads, hd, rot, cs);
}

int gq_cuda_set_rope_freqs(gq_backend *be, const float *inv_freq, int half) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    if (half > GQ_CUDA_MAX_ROPE_HALF)
        return gq_err(GQ_ERR_UNSUPPORTED, "cuda rope: head_dim %d, at most %d supported", 2 * half,
                      2 * GQ_CUDA_MAX_ROPE_HALF);
    if (c->rope_n != half || memcmp(c->rope_host, inv_freq, (size_t)half * sizeof(float)) != 0) {
        if (gq_cuda_capturing(be))
            return gq_err(GQ_ERR_UNSUPPORTED, "cuda rope: new rotary frequencies inside a recorded step");
        /* from pageable memory: returns once the source has been staged, so
         * rope_host may change afterwards */
        memcpy(c->rope_host, inv_freq, (size_t)half * sizeof(float));
        CUDA_CHECK(cudaMemcpyAsync(c->rope_dev, c->rope_host, (size_t)half * sizeof(float), cudaMemcpyHostToDevice,
                                   c->stream));
        c->rope_n = half;
    }
    return GQ_OK;
}

/* rot: rotary dims per head (even, 2 .. head_dim, checked by backend.c; head_dim: full rotary),
 * inv_freq[rot/2]. */
int gq_cuda_rope(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, int rot, int pos0,
                 const float *inv_freq) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const int half = rot / 2;
    int rc = gq_cuda_set_rope_freqs(be, inv_freq, half);
    if (rc != GQ_OK) return rc;
    int threads = n_heads * half >= 256 ? 256 : CEIL_DIV(n_heads * half, 32) * 32;
    const size_t smem = (size_t)rot * sizeof(float);
    if (gq_cuda_f32(be))
        rope_kernel<<<T, threads, smem, c->stream>>>((float *)X, ld, n_heads, head_dim, rot, pos0, c->rope_dev);
    else
        rope_kernel<<<T, threads, smem, c->stream>>>((__half *)X, ld, n_heads, head_dim, rot, pos0, c->rope_dev);
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}

/* ---- glu, add, bias ------------------------------------------------------------------------------------------ */

/* A[t][i] = act(g) * u, g = GU[t][i], u = GU[t][I + i] (ACT: gq_act_kind; SiLU: g / (1 + exp(-g)) * u,
 * the former swiglu_kernel's arithmetic); V = 8: 16-byte accesses (I, lda, ldgu multiples of 8,
 * aligned buffers). */
template <typename E, int V, int ACT>
static __global__ void glu_kernel(E *A, int lda, const E *GU, int ldgu, int T, int I) {
    gq_pdl_trigger();
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= I) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const E *g = GU + (size_t)t * ldgu + i, *u = g + I;
        E *a = A + (size_t)t * lda + i;
        if constexpr (V == 8) {
            uint4 gr = *(const uint4 *)g, ur = *(const uint4 *)u, out;
            const __half *gv = (const __half *)&gr, *uv = (const __half *)&ur;
            __half *ov = (__half *)&out;
#pragma unroll
            for (int k = 0; k < 8; k++) ov[k] = f2h(act_f<ACT>(h2f(gv[k])) * h2f(uv[k]));
            *(uint4 *)a = out;
        } else {
            put_f(a, act_f<ACT>(to_f(*g)) * to_f(*u));
        }
    }
}

template <int ACT>
static void launch_glu(cudaStream_t s, int f32, int vec, void *A, int lda, const void *GU, int ldgu, int T, int I) {
    if (f32)
        glu_kernel<float, 1, ACT><<<rows_grid(T, I, 1), 256, 0, s>>>((float *)A, lda, (const float *)GU, ldgu, T, I);
    else if (vec)
        glu_kernel<__half, 8, ACT><<<rows_grid(T, I, 8), 256, 0, s>>>((__half *)A, lda, (const __half *)GU, ldgu, T,
                                                                      I);
    else
        glu_kernel<__half, 1, ACT><<<rows_grid(T, I, 1), 256, 0, s>>>((__half *)A, lda, (const __half *)GU, ldgu, T,
                                                                      I);
}

int gq_cuda_glu(gq_backend *be, void *A, int lda, const void *GU, int ldgu, int T, int I, gq_act_kind act) {
    cudaStream_t s = gq_cuda_ctx_of(be)->stream;
    const int f32 = gq_cuda_f32(be);
    const int vec = !f32 && I % 8 == 0 && gq_cuda_vec16(A, lda, 2) && gq_cuda_vec16(GU, ldgu, 2);
    switch (act) {
    case GQ_ACT_SILU: launch_glu<GQ_ACT_SILU>(s, f32, vec, A, lda, GU, ldgu, T, I); break;
    case GQ_ACT_GELU_TANH: launch_glu<GQ_ACT_GELU_TANH>(s, f32, vec, A, lda, GU, ldgu, T, I); break;
    default: return gq_err(GQ_ERR_ARG, "cuda glu: unknown activation %d", (int)act);
    }
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}

/* Y[t][j] += X[t][j] (ldx = 0: the same row X[j] for every t, the bias add);
 * V = 8: 16-byte accesses. */
template <typename E, int V>
static __global__ void add_kernel(E *Y, int ldy, const E *X, int ldx, int T, int d) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (j >= d) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        E *y = Y + (size_t)t * ldy + j;
        const E *x = X + (size_t)t * ldx + j;
        if constexpr (V == 8) {
            uint4 yr = *(const uint4 *)y, xr = *(const uint4 *)x;
            __half *yv = (__half *)&yr;
            const __half *xv = (const __half *)&xr;
#pragma unroll
            for (int k = 0; k < 8; k++) yv[k] = f2h(h2f(yv[k]) + h2f(xv[k]));
            *(uint4 *)y = yr;
        } else {
            put_f(y, to_f(*y) + to_f(*x));
        }
    }
}

static int launch_add(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d) {
    cudaStream_t s = gq_cuda_ctx_of(be)->stream;
    const int f32 = gq_cuda_f32(be);
    const int vec = !f32 && d % 8 == 0 && gq_cuda_vec16(Y, ldy, 2) && gq_cuda_vec16(X, ldx, 2);
    if (f32)
        add_kernel<float, 1><<<rows_grid(T, d, 1), 256, 0, s>>>((float *)Y, ldy, (const float *)X, ldx, T, d);
    else if (vec)
        add_kernel<__half, 8><<<rows_grid(T, d, 8), 256, 0, s>>>((__half *)Y, ldy, (const __half *)X, ldx, T, d);
    else
        add_kernel<__half, 1><<<rows_grid(T, d, 1), 256, 0, s>>>((__half *)Y, ldy, (const __half *)X, ldx, T, d);
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}

int gq_cuda_add(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d) {
    return launch_add(be, Y, ldy, X, ldx, T, d);
}

int gq_cuda_add_bias(gq_backend *be, void *Y, int ldy, int T, int N, const void *bias) {
    return launch_add(be, Y, ldy, bias, 0, T, N);
}
