/*
 * cuda/common.cuh (private) -- shared by the CUDA backend's .cu files: the
 * backend context, error checks that turn CUDA / cuBLAS / cuSOLVER failures
 * into gq_status values (library code never aborts on a device error), warp
 * reductions, fp16 helpers, the device pieces several kernels share (rope,
 * the attention chunk, activations), and the entry points each .cu file
 * provides to the vtable in backend_cuda.cu.
 *
 * Error checks:
 *   CUDA_CHECK(call), CUBLAS_CHECK(call), CUSOLVER_CHECK(call): on failure
 *     record GQ_ERR_DEVICE with the stringified call, file:line and the
 *     library's error text, and `return` that status from the enclosing
 *     function (which must return int);
 *   CUDA_CHECK_LAUNCH(): the same for the last kernel launch;
 *   GQ_CU_OK(call): the status as an expression (for `goto` cleanup paths).
 */
#ifndef GQ_CUDA_COMMON_CUH
#define GQ_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <math.h>
#include <stdint.h>

extern "C" {
#include "compute/backend_impl.h"
#include "gq/backend_cuda.h"
}

/* ---- errors ---------------------------------------------------------------------------------- */

int gq_cuda_status(cudaError_t e, const char *call, const char *file, int line);
int gq_cuda_status(cublasStatus_t e, const char *call, const char *file, int line);
int gq_cuda_status(cusolverStatus_t e, const char *call, const char *file, int line);

#define GQ_CU_OK(call) gq_cuda_status((call), #call, __FILE__, __LINE__)
#define GQ_CU_RETURN_IF(call)                   \
    do {                                        \
        int cu_rc_ = GQ_CU_OK(call);            \
        if (cu_rc_ != GQ_OK) return cu_rc_;     \
    } while (0)
#define CUDA_CHECK(call) GQ_CU_RETURN_IF(call)
#define CUBLAS_CHECK(call) GQ_CU_RETURN_IF(call)
#define CUSOLVER_CHECK(call) GQ_CU_RETURN_IF(call)
/* After a kernel launch: configuration errors (bad grid, too much shared
 * memory) show up here; errors during execution show at the next sync. */
#define CUDA_CHECK_LAUNCH() GQ_CU_RETURN_IF(cudaGetLastError())

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

/* ---- the context ------------------------------------------------------------------------------ */

#define GQ_CUDA_STAGE_BYTES ((size_t)64 << 20) /* one pinned / device staging chunk */
#define GQ_CUDA_MAX_ROPE_HALF 1024             /* head_dim / 2 limit of rope's inv_freq buffer */

typedef struct {
    int device;
    cudaDeviceProp prop;
    cudaStream_t stream;
    cublasHandle_t cublas;
    cusolverDnHandle_t cusolver;
    cusolverDnParams_t cusolver_params;
    /* device buffers: CUDA's stream-ordered pool of the device (cudaMallocAsync / cudaFreeAsync on
     * `stream`, memory kept for reuse), or NULL with GQ_CUDA_POOL=0 (cudaMalloc / cudaFree each) */
    cudaMemPool_t pool;
    void *cublas_ws; /* cuBLAS workspace (device) */
    size_t cublas_ws_bytes;
    /* double-buffered staging for uploads/downloads: host[k] pinned, dev[k]
     * device scratch for dtype conversions, ev[k] recorded after the last
     * stream operation that uses chunk k */
    void *stage_host[2];
    void *stage_dev[2];
    cudaEvent_t stage_ev[2];
    /* rope: the last inv_freq uploaded (host copy) and its device buffer */
    float *rope_dev;
    float rope_host[GQ_CUDA_MAX_ROPE_HALF];
    int rope_n;
    /* small host arrays of an op (decode's slot[] and pos[], gather / scatter indices and
     * weights) on the device: gq_cuda_host_arrays */
    void *harr;
    size_t harr_bytes;
    /* knobs and statistics */
    int attn_version;
    int hinv_mode;
    int gptq_tf32; /* GQ_CUDA_GPTQ_TF32: the lazy-block GEMMs in TF32 (gq_cuda_set_gptq_tf32) */
    int pdl; /* GQ_CUDA_PDL on an sm_90+ device: the int4 GEMV as a programmatic dependent launch */
    int w4_u; /* GQ_CUDA_W4_U: 16-byte loads in flight per lane of the int4 GEMV (8, 4 or 2) */
    gq_cuda_gptq_timing gptq_timing;
} gq_cuda_ctx;

static inline gq_cuda_ctx *gq_cuda_ctx_of(const gq_backend *be) { return (gq_cuda_ctx *)be->ctx; }

/* ---- device helpers ----------------------------------------------------------------------------- */

#define GQ_FULL_MASK 0xffffffffu

/* Sum / max / min over aligned groups of W lanes (W = 32: the whole warp). */
template <int W = 32>
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(GQ_FULL_MASK, v, o);
    return v;
}
static __device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(GQ_FULL_MASK, v, o);
    return v;
}
template <int W = 32>
static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(GQ_FULL_MASK, v, o));
    return v;
}
static __device__ __forceinline__ float warp_min(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(GQ_FULL_MASK, v, o));
    return v;
}

/* Block-wide sum of one float per thread (blockDim.x a multiple of 32, at
 * most 1024); every thread gets the result. Uses 33 floats of shared memory. */
static __device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[33];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* part[] may still be read by a previous call */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < nw ? part[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) part[32] = t;
    }
    __syncthreads();
    return part[32];
}

static __device__ __forceinline__ float h2f(__half h) { return __half2float(h); }
static __device__ __forceinline__ __half f2h(float f) { return __float2half_rn(f); }

/* Activation elements of either dtype (fp16, or fp32 with --precision fp32):
 * to_f reads one as fp32, put_f stores an fp32 value (rounded to nearest
 * even for fp16). Kernels templated on the element type T use these. */
static __device__ __forceinline__ float to_f(__half h) { return __half2float(h); }
static __device__ __forceinline__ float to_f(float f) { return f; }
static __device__ __forceinline__ void put_f(__half *p, float v) { *p = __float2half_rn(v); }
static __device__ __forceinline__ void put_f(float *p, float v) { *p = v; }

/* Is this backend's activation (and weight) dtype fp32? */
static inline int gq_cuda_f32(const gq_backend *be) { return be->act_dtype == GQ_DT_F32; }
/* 1 while the stream records (gq_be_graph_begin .. end): an op must not then change what the
 * context caches on the host (rope_host, harr, the int4 scratch) for a copy or an allocation that
 * only the recording would hold; such an op fails the recording instead (GQ_ERR_UNSUPPORTED). */
static inline int gq_cuda_capturing(const gq_backend *be) {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(((const gq_cuda_ctx *)be->ctx)->stream, &st) != cudaSuccess) (void)cudaGetLastError();
    return st != cudaStreamCaptureStatusNone;
}
/* The cuBLAS data type of activations and weights. */
static inline cudaDataType_t gq_cuda_act_type(const gq_backend *be) {
    return gq_cuda_f32(be) ? CUDA_R_32F : CUDA_R_16F;
}

/* Programmatic dependent launch (sm_90; no-ops before). A kernel launched with the attribute
 * (w4a16.cu's decode GEMV under GQ_CUDA_PDL=1) may start while the kernel before it in the stream
 * still runs: it reads only what no earlier kernel writes (its weights) before gq_pdl_wait(), which
 * returns once the kernels before it have completed and their writes are visible. gq_pdl_trigger():
 * called first by the small kernels that precede a GEMV (rmsnorm, glu, the decode merge), so that
 * the GEMV's CTAs may start as soon as every CTA of the trigger's grid has run it; without it they
 * start when that grid's CTAs exit. */
static __device__ __forceinline__ void gq_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
static __device__ __forceinline__ void gq_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/* ---- shared pieces of the rope and attention kernels ---------------------------------------------- */

/* cs[i] = cos, cs[half + i] = sin of pos * inv_freq[i] (the fp32 product, accurate sincosf), threads
 * of the block striding over i; the caller synchronises before reading cs. */
static __device__ __forceinline__ void rope_angles(float *cs, float pos, const float *inv_freq, int half) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float sn, cn;
        sincosf(pos * inv_freq[i], &sn, &cn);
        cs[i] = cn;
        cs[half + i] = sn;
    }
}

/* Rotate the (i, i + rot/2) pairs ("rotate_half") of the first rot dims of n_heads heads (hd
 * apart) of one row x by the angles of rope_angles (rot/2 of them), threads of the block striding
 * over (head, i); dims rot .. hd-1 are not touched (rot == hd: full rotary). */
template <typename T>
static __device__ __forceinline__ void rope_rotate(T *x, int n_heads, int hd, int rot, const float *cs) {
    const int half = rot / 2;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        int h = idx / half, i = idx - h * half;
        T *xh = x + (size_t)h * hd;
        float x1 = to_f(xh[i]), x2 = to_f(xh[i + half]), cn = cs[i], sn = cs[half + i];
        put_f(&xh[i], x1 * cn - x2 * sn);
        put_f(&xh[i + half], x2 * cn + x1 * sn);
    }
}

/* The first key a query at position pos sees with a sliding window of `window` keys (0: none). */
static __device__ __forceinline__ int attn_first_key(int pos, int window) {
    return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
}

/* One warp, one query (K, V elements of type T): the chunk of keys k0 .. min(k0 + 31, pos) (k0 <= pos, and
 * every key of the chunk visible: k0 >= the window's first key) against q (fp32, qs), an online-softmax
 * update of the running max m, sum l and output o (lane holds dims lane + 32 e). Score q.k * scale, then
 * cap * tanh(score / cap) when cap > 0 (the soft-cap of gq_attn_opts). K and V point at the query's kv
 * head; rows ldk / ldv apart. */
template <int MAXD, typename T>
static __device__ __forceinline__ void attn_chunk(const float *qs, const T *K, int ldk, const T *V, int ldv,
                                                  int k0, int pos, int hd, float scale, float cap, float &m,
                                                  float &l, float (&o)[MAXD / 32]) {
    const int lane = threadIdx.x & 31, j = k0 + lane;
    float s = -INFINITY;
    if (j <= pos) {
        const T *kr = K + (size_t)j * ldk;
        float acc = 0.0f;
        for (int d = 0; d < hd; d++) acc += qs[d] * to_f(kr[d]);
        s = acc * scale;
        if (cap > 0.0f) s = cap * tanhf(s / cap);
    }
    /* key k0 <= pos is in the chunk: mn is finite */
    const float mn = fmaxf(m, warp_max(s));
    const float alpha = expf(m - mn); /* 0 on the first chunk (m = -inf) */
    const float p = j <= pos ? expf(s - mn) : 0.0f;
    l = l * alpha + warp_sum(p);
    m = mn;
#pragma unroll
    for (int e = 0; e < MAXD / 32; e++) o[e] *= alpha;
    const int nk = pos + 1 - k0 < 32 ? pos + 1 - k0 : 32;
    for (int jj = 0; jj < nk; jj++) {
        const float pj = __shfl_sync(GQ_FULL_MASK, p, jj);
        const T *vr = V + (size_t)(k0 + jj) * ldv;
#pragma unroll
        for (int e = 0; e < MAXD / 32; e++) {
            const int d = lane + 32 * e;
            if (d < hd) o[e] += pj * to_f(vr[d]);
        }
    }
}

/* ---- activations (gq_act_kind), fp32 ---------------------------------------------------------------- */

/* SiLU x / (1 + exp(-x)) (-0 for x -> -inf: exp overflows to inf), GELU-tanh
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
template <int ACT>
static __device__ __forceinline__ float act_f(float x) {
    if constexpr (ACT == GQ_ACT_GELU_TANH)
        return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    else
        return x / (1.0f + expf(-x));
}

/* 2D launch for row-wise elementwise ops: x covers a row's columns in
 * chunks of 256 * V, y covers rows (grid-stride when T > 65535). */
static inline dim3 rows_grid(int T, int d, int V) {
    int gx = CEIL_DIV(d, 256 * V);
    return dim3(gx < 1 ? 1 : gx, T < 65535 ? T : 65535);
}

/* Is p 16-byte aligned and ld (elements of `elem` bytes) a multiple of 16 bytes? */
static inline int gq_cuda_vec16(const void *p, long ld, size_t elem) {
    return ((uintptr_t)p % 16) == 0 && ((size_t)ld * elem) % 16 == 0;
}

/* ---- entry points of the op files (vtable entries) ---------------------------------------------- */

/* norm_rope.cu */
int gq_cuda_rmsnorm(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                    float eps);
/* Make c->rope_dev hold inv_freq[0..half) (uploads only when it changed). */
int gq_cuda_set_rope_freqs(gq_backend *be, const float *inv_freq, int half);
int gq_cuda_rope(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, int rot, int pos0,
                 const float *inv_freq);
int gq_cuda_glu(gq_backend *be, void *A, int lda, const void *GU, int ldgu, int T, int I, gq_act_kind act);
int gq_cuda_add(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d);
int gq_cuda_add_bias(gq_backend *be, void *Y, int ldy, int T, int N, const void *bias);

/* family.cu */
int gq_cuda_act(gq_backend *be, void *X, int ld, int T, int n, gq_act_kind act);
int gq_cuda_layernorm(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                      const gq_bweight *b, float eps);
int gq_cuda_head_rmsnorm(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, const gq_bweight *w,
                         float eps);
int gq_cuda_gather_rows(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx, int n, int d);
int gq_cuda_scatter_add_rows(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx,
                             const float *w, int n, int d);

/* attention.cu */
int gq_cuda_attention(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk,
                      const void *V, int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim,
                      const gq_attn_opts *o);
/* The score scale of o (NULL or 0: 1 / sqrt(head_dim), as the plain kernels always computed it). */
static inline float gq_cuda_attn_scale(const gq_attn_opts *o, int head_dim) {
    return o && o->scale != 0.0f ? o->scale : (float)(1.0 / sqrt((double)head_dim));
}

/* decode.cu */
int gq_cuda_decode_attention(gq_backend *be, void *O, int ldo, void *QKV, int ldqkv, int B, void *Kc, void *Vc,
                             size_t slot_stride, int ldkv, const int32_t *slot, const int32_t *pos, int n_heads,
                             int n_kv, int head_dim, int rot, const float *inv_freq, const gq_attn_opts *o);

/* gptq.cu */
int gq_cuda_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W,
                 gq_qresult *res);

/* pack.cu: the AutoGPTQ qweight of codes [rows][cols] (device, uint8, original column order, 4-byte
 * aligned) into qw [cols * bits / 32][rows] (device, int32; gq/pack.h layout), asynchronously on the
 * backend's stream. GQ_ERR_UNSUPPORTED for a shape gq_pack_check rejects. */
int gq_cuda_pack_qweight(gq_backend *be, int32_t *qw, const uint8_t *codes, int rows, int cols, int bits);

/* nll.cu */
int gq_cuda_nll(gq_backend *be, const void *X, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
                float softcap, double *nll_sum, int64_t *count, float *logits_out);

/* backend_cuda.cu: device scratch through gq_be_alloc (counted in the
 * backend's peak bytes); NULL with GQ_ERR_NOMEM recorded on failure. */
void *gq_cuda_scratch(gq_backend *be, size_t bytes, const char *what);
/* Copy up to two small host arrays (n1 and n2 bytes; h2 may be NULL with n2 = 0) into the context's
 * device buffer c->harr (grown as needed), asynchronously on the stream: *d1 = h1's copy, *d2 = h2's
 * (16-byte aligned, after h1's). The host arrays may change once this returns. Stream order makes
 * reuse safe: the next call's copy runs after the kernels queued before it. `what` names the op. */
int gq_cuda_host_arrays(gq_backend *be, const void *h1, size_t n1, const void *h2, size_t n2, void **d1, void **d2,
                        const char *what);

#endif /* GQ_CUDA_COMMON_CUH */
