/*
 * cuda/backend_cuda.cu -- the CUDA backend: context (device, stream, cuBLAS
 * and cuSOLVER handles, pinned staging), buffers, transfers with on-device
 * dtype conversion, weights (in the activation dtype: fp16, or fp32 with
 * --precision fp32), the two cuBLAS ops (linear, hessian_accum), the device
 * copies of ops' small host arrays (gq_cuda_host_arrays) and the vtable. The
 * other ops live in one .cu per op family (norm_rope.cu, family.cu,
 * attention.cu, decode.cu, gptq.cu, nll.cu).
 *
 * Transfers go through two pinned host chunks of GQ_CUDA_STAGE_BYTES (and two
 * device chunks for conversions), used alternately: while the copy engine
 * moves chunk k, the host fills chunk k^1. Uploads return once the source
 * has been copied into pinned memory (the device part may still run);
 * downloads return with the data in place.
 *
 * Device memory goes through gq_be_alloc (backend.c), so gq_be_peak_bytes
 * counts weights, activations, GPTQ scratch, staging and the cuBLAS
 * workspace alike.
 */
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "gq/knobs.h"

/* ---- errors ---------------------------------------------------------------------------------------- */

int gq_cuda_status(cudaError_t e, const char *call, const char *file, int line) {
    if (e == cudaSuccess) return GQ_OK;
    (void)cudaGetLastError(); /* clear a non-sticky error so the next launch check does not see it */
    return gq_err(GQ_ERR_DEVICE, "CUDA error %s (%s) in `%s` at %s:%d", cudaGetErrorName(e), cudaGetErrorString(e),
                  call, file, line);
}

int gq_cuda_status(cublasStatus_t e, const char *call, const char *file, int line) {
    if (e == CUBLAS_STATUS_SUCCESS) return GQ_OK;
    return gq_err(GQ_ERR_DEVICE, "cuBLAS error %s (%s) in `%s` at %s:%d", cublasGetStatusName(e),
                  cublasGetStatusString(e), call, file, line);
}

static const char *cusolver_status_name(cusolverStatus_t e) {
    switch (e) {
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "cuSOLVER error";
    }
}

int gq_cuda_status(cusolverStatus_t e, const char *call, const char *file, int line) {
    if (e == CUSOLVER_STATUS_SUCCESS) return GQ_OK;
    return gq_err(GQ_ERR_DEVICE, "cuSOLVER error %s (%d) in `%s` at %s:%d", cusolver_status_name(e), (int)e, call,
                  file, line);
}

/* ---- devices ----------------------------------------------------------------------------------------- */

extern "C" int gq_cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" int gq_cuda_device_info(int device, char *name, size_t name_cap, size_t *total_bytes, int *sm_count,
                                   int *cc_major, int *cc_minor) {
    int n = gq_cuda_device_count();
    if (device < 0 || device >= n)
        return gq_err(GQ_ERR_DEVICE, "CUDA device %d: %d device%s present", device, n, n == 1 ? "" : "s");
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    if (name && name_cap) snprintf(name, name_cap, "%s", p.name);
    if (total_bytes) *total_bytes = p.totalGlobalMem;
    if (sm_count) *sm_count = p.multiProcessorCount;
    if (cc_major) *cc_major = p.major;
    if (cc_minor) *cc_minor = p.minor;
    return GQ_OK;
}

/* ---- conversion kernels ------------------------------------------------------------------------------ */

static __global__ void f32_to_f16_kernel(__half *dst, const float *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2half_rn(src[i]);
}

static __global__ void f16_to_f32_kernel(float *dst, const __half *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __half2float(src[i]);
}

static __global__ void bf16_to_f16_kernel(__half *dst, const __nv_bfloat16 *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2half_rn(__bfloat162float(src[i]));
}

static __global__ void bf16_to_f32_kernel(float *dst, const __nv_bfloat16 *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

static int elementwise_grid(size_t n) {
    size_t b = CEIL_DIV(n, (size_t)256);
    return (int)(b < 4096 ? (b ? b : 1) : 4096);
}

typedef enum { CONV_NONE = 0, CONV_F32_TO_F16, CONV_BF16_TO_F16, CONV_F16_TO_F32, CONV_BF16_TO_F32 } conv_kind;

static size_t conv_dst_elem(conv_kind conv, size_t src_elem) {
    switch (conv) {
    case CONV_F32_TO_F16:
    case CONV_BF16_TO_F16: return sizeof(__half);
    case CONV_F16_TO_F32:
    case CONV_BF16_TO_F32: return sizeof(float);
    default: return src_elem;
    }
}

/* Host side of a staged transfer: copy between pageable memory and a pinned
 * chunk on every core. One thread does ~5-10 GB/s and, into freshly
 * allocated result arrays, also takes the first-touch page faults: that
 * made the downloads of big GPTQ results (hundreds of MB of codes) the
 * slowest part of a solve. */
static void host_copy(void *dst, const void *src, size_t n) {
    if (n < ((size_t)4 << 20)) {
        memcpy(dst, src, n);
        return;
    }
    const size_t piece = (size_t)1 << 20, np = CEIL_DIV(n, piece);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < np; i++) {
        size_t off = i * piece, m = n - off < piece ? n - off : piece;
        memcpy((char *)dst + off, (const char *)src + off, m);
    }
}

/* Upload `n` elements of `src_elem` bytes from host `src` to device `dst`,
 * converting with `conv` on the device (dst elements of conv_dst_elem). */
static int staged_upload(gq_backend *be, void *dst, const void *src, size_t n, size_t src_elem, conv_kind conv) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const size_t per = GQ_CUDA_STAGE_BYTES / src_elem; /* elements per chunk */
    const size_t dst_elem = conv_dst_elem(conv, src_elem);
    int k = 0;
    for (size_t off = 0; off < n; off += per, k ^= 1) {
        size_t m = n - off < per ? n - off : per;
        CUDA_CHECK(cudaEventSynchronize(c->stage_ev[k])); /* chunk k free again */
        host_copy(c->stage_host[k], (const char *)src + off * src_elem, m * src_elem);
        char *d = (char *)dst + off * dst_elem;
        if (conv == CONV_NONE) {
            CUDA_CHECK(cudaMemcpyAsync(d, c->stage_host[k], m * src_elem, cudaMemcpyHostToDevice, c->stream));
        } else {
            CUDA_CHECK(cudaMemcpyAsync(c->stage_dev[k], c->stage_host[k], m * src_elem, cudaMemcpyHostToDevice,
                                       c->stream));
            const void *sd = c->stage_dev[k];
            const int g = elementwise_grid(m);
            if (conv == CONV_F32_TO_F16)
                f32_to_f16_kernel<<<g, 256, 0, c->stream>>>((__half *)d, (const float *)sd, m);
            else if (conv == CONV_BF16_TO_F16)
                bf16_to_f16_kernel<<<g, 256, 0, c->stream>>>((__half *)d, (const __nv_bfloat16 *)sd, m);
            else if (conv == CONV_F16_TO_F32)
                f16_to_f32_kernel<<<g, 256, 0, c->stream>>>((float *)d, (const __half *)sd, m);
            else
                bf16_to_f32_kernel<<<g, 256, 0, c->stream>>>((float *)d, (const __nv_bfloat16 *)sd, m);
            CUDA_CHECK_LAUNCH();
        }
        CUDA_CHECK(cudaEventRecord(c->stage_ev[k], c->stream));
    }
    return GQ_OK;
}

/* Download n elements: raw (f16_to_f32 = 0, elem bytes each) or fp16 device
 * data converted to f32 host data (f16_to_f32 = 1). Synchronous. */
static int staged_download(gq_backend *be, void *dst, const void *src, size_t n, size_t elem, int f16_to_f32) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const size_t out_elem = f16_to_f32 ? sizeof(float) : elem;
    const size_t per = GQ_CUDA_STAGE_BYTES / out_elem;
    const size_t nchunks = CEIL_DIV(n, per);
    /* issue chunk i: (convert and) copy into stage_host[i & 1], record its event */
    auto issue = [&](size_t i) -> int {
        size_t off = i * per, m = n - off < per ? n - off : per;
        int k = (int)(i & 1);
        if (f16_to_f32) {
            f16_to_f32_kernel<<<elementwise_grid(m), 256, 0, c->stream>>>((float *)c->stage_dev[k],
                                                                          (const __half *)src + off, m);
            CUDA_CHECK_LAUNCH();
            CUDA_CHECK(cudaMemcpyAsync(c->stage_host[k], c->stage_dev[k], m * sizeof(float), cudaMemcpyDeviceToHost,
                                       c->stream));
        } else {
            CUDA_CHECK(cudaMemcpyAsync(c->stage_host[k], (const char *)src + off * elem, m * elem,
                                       cudaMemcpyDeviceToHost, c->stream));
        }
        CUDA_CHECK(cudaEventRecord(c->stage_ev[k], c->stream));
        return GQ_OK;
    };
    int rc = issue(0);
    if (rc != GQ_OK) return rc;
    for (size_t i = 0; i < nchunks; i++) {
        /* chunk i+1 goes to the other buffer, whose previous content (chunk
         * i-1) the host has already copied out */
        if (i + 1 < nchunks && (rc = issue(i + 1)) != GQ_OK) return rc;
        size_t off = i * per, m = n - off < per ? n - off : per;
        int k = (int)(i & 1);
        CUDA_CHECK(cudaEventSynchronize(c->stage_ev[k]));
        host_copy((char *)dst + off * out_elem, c->stage_host[k], m * out_elem);
    }
    return GQ_OK;
}

/* ---- buffers ---------------------------------------------------------------------------------------------- */

/* Buffers come from the device's stream-ordered pool: a buffer released on the stream is reused by
 * the next allocation of the stream without a device synchronisation (cudaFree waits for the whole
 * device, and the scratch of every GPTQ solve and every decode step's logits used to pay it). The
 * pool keeps what it has (release threshold: unlimited); an allocation that fails trims it and tries
 * once more. Every op runs on the context's one stream, so stream order is all the reuse needs. */
static cudaError_t dev_malloc(gq_cuda_ctx *c, void **p, size_t n) {
    if (!c->pool) return cudaMalloc(p, n);
    cudaError_t e = cudaMallocAsync(p, n, c->stream);
    if (e != cudaErrorMemoryAllocation) return e;
    (void)cudaGetLastError();
    cudaStreamSynchronize(c->stream);
    cudaMemPoolTrimTo(c->pool, 0);
    return cudaMallocAsync(p, n, c->stream);
}

static void dev_free(gq_cuda_ctx *c, void *p) {
    if (!p) return;
    /* cudaFree synchronises the device; an error here means an earlier asynchronous failure,
     * which the next checked call reports */
    if ((c->pool ? cudaFreeAsync(p, c->stream) : cudaFree(p)) != cudaSuccess) (void)cudaGetLastError();
}

/* Device memory the pool holds but no buffer uses (free for gq, not for cudaMemGetInfo). */
static size_t pool_idle_bytes(const gq_cuda_ctx *c) {
    uint64_t reserved = 0, used = 0;
    if (!c->pool || cudaMemPoolGetAttribute(c->pool, cudaMemPoolAttrReservedMemCurrent, &reserved) != cudaSuccess ||
        cudaMemPoolGetAttribute(c->pool, cudaMemPoolAttrUsedMemCurrent, &used) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return reserved > used ? (size_t)(reserved - used) : 0;
}

static void *cuda_alloc(gq_backend *be, size_t bytes) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    void *p = NULL;
    size_t n = bytes ? (bytes + 255) / 256 * 256 : 256;
    cudaError_t e = n >= bytes ? dev_malloc(c, &p, n) : cudaErrorMemoryAllocation;
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        (void)cudaGetLastError();
        char b1[32], b2[32], b3[32];
        gq_err(GQ_ERR_NOMEM, "%s: cannot allocate %s of device memory (%s): %s free of %s", be->name,
               gq_fmt_bytes(b1, sizeof b1, (double)bytes), cudaGetErrorString(e),
               gq_fmt_bytes(b2, sizeof b2, (double)(fr + pool_idle_bytes(c))), gq_fmt_bytes(b3, sizeof b3, (double)tot));
        return NULL;
    }
    return p;
}

static void cuda_release(gq_backend *be, void *p) {
    dev_free(gq_cuda_ctx_of(be), p);
}

void *gq_cuda_scratch(gq_backend *be, size_t bytes, const char *what) {
    void *p = gq_be_alloc(be, bytes);
    if (!p) gq_err_prefix("%s", what);
    return p;
}

int gq_cuda_host_arrays(gq_backend *be, const void *h1, size_t n1, const void *h2, size_t n2, void **d1, void **d2,
                        const char *what) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const size_t off2 = CEIL_DIV(n1, (size_t)16) * 16, need = off2 + n2;
    if (gq_cuda_capturing(be)) /* a host copy from pageable memory into a buffer that may move */
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: host arrays inside a recorded step", what);
    if (need > c->harr_bytes) {
        /* stream-ordered: kernels still reading the old buffer run before its memory is reused */
        gq_be_release(be, c->harr);
        c->harr_bytes = 0;
        const size_t cap = need < 4096 ? 4096 : need + need / 2;
        if (!(c->harr = gq_cuda_scratch(be, cap, what))) return gq_errcode();
        c->harr_bytes = cap;
    }
    /* from pageable memory: returns once the source has been staged */
    if (n1) CUDA_CHECK(cudaMemcpyAsync(c->harr, h1, n1, cudaMemcpyHostToDevice, c->stream));
    if (n2) CUDA_CHECK(cudaMemcpyAsync((char *)c->harr + off2, h2, n2, cudaMemcpyHostToDevice, c->stream));
    *d1 = c->harr;
    if (d2) *d2 = (char *)c->harr + off2;
    return GQ_OK;
}

static int cuda_upload(gq_backend *be, void *dst, const void *src, size_t bytes) {
    return staged_upload(be, dst, src, bytes, 1, CONV_NONE);
}

static int cuda_download(gq_backend *be, void *dst, const void *src, size_t bytes) {
    return staged_download(be, dst, src, bytes, 1, 0);
}

static int cuda_memset0(gq_backend *be, void *dst, size_t bytes) {
    CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, gq_cuda_ctx_of(be)->stream));
    return GQ_OK;
}

static int cuda_upload_f32(gq_backend *be, void *dst_act, const float *src, size_t n) {
    return staged_upload(be, dst_act, src, n, sizeof(float), gq_cuda_f32(be) ? CONV_NONE : CONV_F32_TO_F16);
}

static int cuda_download_f32(gq_backend *be, float *dst, const void *src_act, size_t n) {
    if (gq_cuda_f32(be)) return staged_download(be, dst, src_act, n, sizeof(float), 0);
    return staged_download(be, dst, src_act, n, sizeof(__half), 1);
}

static int cuda_copy_act(gq_backend *be, void *dst, const void *src, size_t n) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, gq_be_act_bytes(be, n), cudaMemcpyDeviceToDevice,
                               gq_cuda_ctx_of(be)->stream));
    return GQ_OK;
}

static int cuda_sync(gq_backend *be) {
    CUDA_CHECK(cudaStreamSynchronize(gq_cuda_ctx_of(be)->stream));
    return GQ_OK;
}

static size_t cuda_free_bytes(const gq_backend *be) {
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return fr + pool_idle_bytes(gq_cuda_ctx_of(be));
}

/* ---- weights ------------------------------------------------------------------------------------------------ */

/* Weights are kept in the activation dtype (F16, or F32 with --precision fp32). */
static int weight_alloc(gq_backend *be, gq_bweight *w, int rows, int cols) {
    size_t n;
    if (!gq_mul_size((size_t)rows, gq_be_act_bytes(be, (size_t)cols), &n))
        return gq_err(GQ_ERR_ARG, "weight [%d, %d] is too large", rows, cols);
    w->data = gq_be_alloc(be, n);
    if (!w->data) return GQ_ERR_NOMEM;
    w->rows = rows;
    w->cols = cols;
    w->dtype = be->act_dtype;
    return GQ_OK;
}

static int cuda_weight_upload(gq_backend *be, gq_bweight *w, const float *src, int rows, int cols) {
    int rc = weight_alloc(be, w, rows, cols);
    if (rc == GQ_OK) rc = cuda_upload_f32(be, w->data, src, (size_t)rows * cols);
    return rc;
}

static int cuda_weight_upload_raw(gq_backend *be, gq_bweight *w, const void *src, gq_dtype dt, int rows, int cols) {
    int rc = weight_alloc(be, w, rows, cols);
    if (rc != GQ_OK) return rc;
    const size_t n = (size_t)rows * cols;
    const int f32 = gq_cuda_f32(be);
    switch (dt) {
    case GQ_DT_F16: return staged_upload(be, w->data, src, n, sizeof(__half), f32 ? CONV_F16_TO_F32 : CONV_NONE);
    case GQ_DT_BF16:
        return staged_upload(be, w->data, src, n, sizeof(__half), f32 ? CONV_BF16_TO_F32 : CONV_BF16_TO_F16);
    case GQ_DT_F32: return staged_upload(be, w->data, src, n, sizeof(float), f32 ? CONV_NONE : CONV_F32_TO_F16);
    default: return gq_err(GQ_ERR_ARG, "weight upload: dtype %s, expected F32, F16 or BF16", gq_dtype_name(dt));
    }
}

static void cuda_weight_free(gq_backend *be, gq_bweight *w) { gq_be_release(be, w->data); }

/* ---- cuBLAS ops ---------------------------------------------------------------------------------------------- */

/* Y[T][ldy] = X[T][ldx] W^T (+ Y) (+ bias). Row-major buffers are the
 * column-major transposes, so this is Y^T (N x T) = W^T^T (N x K) X^T (K x T):
 * cuBLAS op(A) = A^T with A = W^T stored K x N (ld K), B = X^T stored K x T. */
/* w4a16.cu: int4 weights kept resident (W4A16) */
int gq_cuda_q4_supported(const gq_backend *be);
int gq_cuda_weight_upload_q4(gq_backend *be, gq_bweight *w, const gq_packed *const *parts, int nparts);
void gq_cuda_weight_free_q4(gq_backend *be, gq_bweight *w);
int gq_cuda_linear_q4(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, const gq_bweight *W,
                      const gq_bweight *bias, int accumulate);

static int cuda_linear(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, const gq_bweight *W,
                       const gq_bweight *bias, int accumulate) {
    if (W->q4) return gq_cuda_linear_q4(be, Y, ldy, X, ldx, T, W, bias, accumulate);
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    if (W->dtype != be->act_dtype || (bias && bias->dtype != be->act_dtype))
        return gq_err(GQ_ERR_ARG, "cuda linear: weights must be %s on the device, got %s",
                      gq_dtype_name(be->act_dtype), gq_dtype_name(W->dtype));
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cudaDataType_t at = gq_cuda_act_type(be);
    CUBLAS_CHECK(cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, W->rows, T, W->cols, &alpha, W->data, at, W->cols,
                              X, at, ldx, &beta, Y, at, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (bias) return gq_cuda_add_bias(be, Y, ldy, T, W->rows, bias->data);
    return GQ_OK;
}

/* Panel width of the Hessian update: about 8 panels, multiples of 256, for wide Hessians; one
 * GEMM of the whole square up to 2048 (a MoE expert's: 8 panels of 7-10 us each were about 150
 * TFLOP/s and 8 launches, against one launch of twice the flops; H100 ncu, Qwen3-30B-A3B layer). */
static int hessian_panel(int K) {
    if (K <= 2048) return K;
    int nb = CEIL_DIV(CEIL_DIV(K, 8), 256) * 256;
    return nb < 256 ? 256 : nb;
}

/* H[K][K] (row-major, rows i, columns j >= i at least) += X^T X in fp32 from
 * fp16 X[T][ldx]: the products of fp16 values are exact in fp32 (fp32 X
 * with --precision fp32: an fp32 GEMM without TF32, as the CPU does it). Panel p of
 * columns [c0, c0+nb) computes H[c0:c0+nb][c0:K], so only the upper
 * triangle and the diagonal blocks are computed (about 56% of a full GEMM
 * with 8 panels; K <= 2048: the whole square, one GEMM).
 * Column-major view: C (rows c0..K-1, cols c0..c0+nb-1) of H^T = H at
 * H + c0*K + c0 = X^T[c0:K, :] * X^T[c0:c0+nb, :]^T. */
static int cuda_hessian_accum(gq_backend *be, float *H, const void *X, int ldx, int T, int K) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const float one = 1.0f;
    const int nb = hessian_panel(K);
    const cudaDataType_t at = gq_cuda_act_type(be);
    for (int c0 = 0; c0 < K; c0 += nb) {
        int n = K - c0 < nb ? K - c0 : nb, m = K - c0;
        const void *Xc = (const char *)X + gq_be_act_bytes(be, (size_t)c0);
        CUBLAS_CHECK(cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_T, m, n, T, &one, Xc, at, ldx, Xc, at, ldx, &one,
                                  H + (size_t)c0 * K + c0, CUDA_R_32F, K, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return GQ_OK;
}

/* ---- lifecycle ------------------------------------------------------------------------------------------------- */

static void cuda_free(gq_backend *be);

static struct gq_backend_i cuda_iface; /* filled once by fill_iface() */

/* ---- recorded work, pinned host memory ---------------------------------------------------------- */

struct gq_bgraph {
    cudaGraphExec_t exec;
};

/* Thread-local capture: a call that could synchronise the device from this thread (cudaMalloc,
 * a copy from pageable memory, ...) fails the recording instead of running. */
static int cuda_graph_begin(gq_backend *be) {
    CUDA_CHECK(cudaStreamBeginCapture(gq_cuda_ctx_of(be)->stream, cudaStreamCaptureModeThreadLocal));
    return GQ_OK;
}

static int cuda_graph_end(gq_backend *be, gq_bgraph **out) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    if (e == cudaSuccess && graph) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess || !exec) {
        (void)cudaGetLastError();
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: the recording failed: %s", be->name,
                      e != cudaSuccess ? cudaGetErrorString(e) : "no graph");
    }
    *out = (gq_bgraph *)gq_calloc(1, sizeof **out);
    (*out)->exec = exec;
    return GQ_OK;
}

static int cuda_graph_launch(gq_backend *be, gq_bgraph *g) {
    CUDA_CHECK(cudaGraphLaunch(g->exec, gq_cuda_ctx_of(be)->stream));
    return GQ_OK;
}

static void cuda_graph_free(gq_backend *be, gq_bgraph *g) {
    cudaStreamSynchronize(gq_cuda_ctx_of(be)->stream); /* no replay in flight */
    cudaGraphExecDestroy(g->exec);
    (void)cudaGetLastError();
    free(g);
}

static void *cuda_host_alloc(gq_backend *be, size_t bytes) {
    void *p = NULL;
    if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError();
        gq_err(GQ_ERR_NOMEM, "%s: cannot pin %zu bytes of host memory", be->name, bytes);
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

static void cuda_host_free(gq_backend *be, void *p) {
    cudaStreamSynchronize(gq_cuda_ctx_of(be)->stream); /* no kernel still reading it */
    cudaFreeHost(p);
    (void)cudaGetLastError();
}

static int cuda_upload_pinned(gq_backend *be, void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, gq_cuda_ctx_of(be)->stream));
    return GQ_OK;
}

static int cuda_fork(gq_backend *be, gq_backend **out) {
    return gq_backend_cuda_init(out, gq_cuda_ctx_of(be)->device);
}

static int cuda_bind_thread(gq_backend *be) {
    CUDA_CHECK(cudaSetDevice(gq_cuda_ctx_of(be)->device));
    return GQ_OK;
}

static void fill_iface(void) {
    struct gq_backend_i *f = &cuda_iface;
    f->free = cuda_free;
    f->alloc = cuda_alloc;
    f->release = cuda_release;
    f->upload = cuda_upload;
    f->download = cuda_download;
    f->memset0 = cuda_memset0;
    f->upload_f32 = cuda_upload_f32;
    f->download_f32 = cuda_download_f32;
    f->copy_act = cuda_copy_act;
    f->sync = cuda_sync;
    f->free_bytes = cuda_free_bytes;
    f->fork = cuda_fork;
    f->bind_thread = cuda_bind_thread;
    f->graph_begin = cuda_graph_begin;
    f->graph_end = cuda_graph_end;
    f->graph_launch = cuda_graph_launch;
    f->graph_free = cuda_graph_free;
    f->host_alloc = cuda_host_alloc;
    f->host_free = cuda_host_free;
    f->upload_pinned = cuda_upload_pinned;
    f->weight_upload = cuda_weight_upload;
    f->weight_upload_raw = cuda_weight_upload_raw;
    f->weight_free = cuda_weight_free;
    f->linear = cuda_linear;
    f->rmsnorm = gq_cuda_rmsnorm;
    f->rope = gq_cuda_rope;
    f->attention = gq_cuda_attention;
    f->glu = gq_cuda_glu;
    f->act = gq_cuda_act;
    f->layernorm = gq_cuda_layernorm;
    f->head_rmsnorm = gq_cuda_head_rmsnorm;
    f->gather_rows = gq_cuda_gather_rows;
    f->scatter_add_rows = gq_cuda_scatter_add_rows;
    f->add = gq_cuda_add;
    f->hessian_accum = cuda_hessian_accum;
    f->gptq = gq_cuda_gptq;
    f->nll = gq_cuda_nll;
    f->decode_attention = gq_cuda_decode_attention;
    f->q4_supported = gq_cuda_q4_supported;
    f->weight_upload_q4 = gq_cuda_weight_upload_q4;
    f->weight_free_q4 = gq_cuda_weight_free_q4;
}

static int is_cuda(const gq_backend *be) { return be && be->iface == &cuda_iface; }


/* Free everything the context holds; tolerates a partly built context.
 * Device buffers are freed directly: backend.c has already dropped its
 * allocation table when this runs. */
static void cuda_free(gq_backend *be) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    if (c) {
        if (c->stream) cudaStreamSynchronize(c->stream);
        if (c->cusolver_params) cusolverDnDestroyParams(c->cusolver_params);
        if (c->cusolver) cusolverDnDestroy(c->cusolver);
        if (c->cublas) cublasDestroy(c->cublas);
        for (int k = 0; k < 2; k++) {
            if (c->stage_host[k]) cudaFreeHost(c->stage_host[k]);
            dev_free(c, c->stage_dev[k]);
            if (c->stage_ev[k]) cudaEventDestroy(c->stage_ev[k]);
        }
        dev_free(c, c->cublas_ws);
        dev_free(c, c->rope_dev);
        dev_free(c, c->harr);
        dev_free(c, be->q4_scratch); /* w4a16.cu's dequantization buffer */
        if (c->stream) cudaStreamSynchronize(c->stream);
        if (c->stream) cudaStreamDestroy(c->stream);
        (void)cudaGetLastError();
        free(c);
    }
    free(be);
}

static __global__ void probe_kernel(int *p) {
    if (p) *p = 1;
}

static int cuda_setup(gq_backend *be, int device) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaGetDeviceProperties(&c->prop, device));
    /* the kernels are built for one architecture (make CUDA_ARCH=..): check
     * that this device can run them before anything else */
    cudaFuncAttributes fa;
    cudaError_t e = cudaFuncGetAttributes(&fa, probe_kernel);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return gq_err(GQ_ERR_DEVICE,
                      "CUDA device %d (%s, sm_%d%d) cannot run gq's kernels (%s): rebuild with make CUDA_ARCH=%d%d",
                      device, c->prop.name, c->prop.major, c->prop.minor, cudaGetErrorString(e), c->prop.major,
                      c->prop.minor);
    }
    if (c->prop.major < 8)
        return gq_err(GQ_ERR_UNSUPPORTED, "CUDA device %d (%s) has compute capability %d.%d; gq needs 8.0 or newer",
                      device, c->prop.name, c->prop.major, c->prop.minor);
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    int pools = 0;
    if (!gq_knobs_get()->cuda_no_pool &&
        cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) == cudaSuccess && pools) {
        uint64_t keep = ~(uint64_t)0;
        CUDA_CHECK(cudaDeviceGetDefaultMemPool(&c->pool, device));
        CUDA_CHECK(cudaMemPoolSetAttribute(c->pool, cudaMemPoolAttrReleaseThreshold, &keep));
    }
    (void)cudaGetLastError();
    CUBLAS_CHECK(cublasCreate(&c->cublas));
    CUBLAS_CHECK(cublasSetStream(c->cublas, c->stream));
    /* fp32 stays fp32 (no TF32 for cublasSgemm), and fp16 GEMMs reduce in
     * their fp32 compute type, never in the fp16 output type */
    CUBLAS_CHECK(cublasSetMathMode(c->cublas, (cublasMath_t)(CUBLAS_DEFAULT_MATH |
                                                             CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    c->cublas_ws_bytes = (size_t)32 << 20; /* NVIDIA's recommendation for Hopper */
    if (!(c->cublas_ws = gq_cuda_scratch(be, c->cublas_ws_bytes, "cuBLAS workspace"))) return gq_errcode();
    CUBLAS_CHECK(cublasSetWorkspace(c->cublas, c->cublas_ws, c->cublas_ws_bytes));
    CUSOLVER_CHECK(cusolverDnCreate(&c->cusolver));
    CUSOLVER_CHECK(cusolverDnSetStream(c->cusolver, c->stream));
    CUSOLVER_CHECK(cusolverDnCreateParams(&c->cusolver_params));
    for (int k = 0; k < 2; k++) {
        CUDA_CHECK(cudaMallocHost(&c->stage_host[k], GQ_CUDA_STAGE_BYTES));
        if (!(c->stage_dev[k] = gq_cuda_scratch(be, GQ_CUDA_STAGE_BYTES, "staging buffer"))) return gq_errcode();
        CUDA_CHECK(cudaEventCreateWithFlags(&c->stage_ev[k], cudaEventDisableTiming));
    }
    if (!(c->rope_dev = (float *)gq_cuda_scratch(be, GQ_CUDA_MAX_ROPE_HALF * sizeof(float), "rope frequencies")))
        return gq_errcode();
    c->rope_n = 0;
    c->attn_version = gq_knobs_get()->cuda_attn;
    c->hinv_mode = gq_knobs_get()->cuda_hinv; /* knobs.c lists the modes in the enum's order */
    c->pdl = gq_knobs_get()->cuda_pdl && c->prop.major >= 9;
    c->w4_u = gq_knobs_get()->cuda_w4_u;
    c->gptq_tf32 = gq_knobs_get()->cuda_gptq_tf32;
    char mem[32];
    snprintf(be->name, sizeof be->name, "cuda:%d (%s, sm_%d%d, %d SMs, %s)", device, c->prop.name, c->prop.major,
             c->prop.minor, c->prop.multiProcessorCount,
             gq_fmt_bytes(mem, sizeof mem, (double)c->prop.totalGlobalMem));
    return GQ_OK;
}

extern "C" int gq_backend_cuda_init(gq_backend **out, int device) {
    *out = NULL;
    int n = gq_cuda_device_count();
    if (device < 0 || device >= n)
        return gq_err(GQ_ERR_DEVICE, "CUDA device %d: %d device%s present", device, n, n == 1 ? "" : "s");
    if (!cuda_iface.free) fill_iface();
    gq_backend *be = (gq_backend *)gq_calloc(1, sizeof *be);
    be->iface = &cuda_iface;
    be->ctx = gq_calloc(1, sizeof(gq_cuda_ctx));
    be->is_gpu = 1;
    be->act_dtype = GQ_DT_F16;
    snprintf(be->name, sizeof be->name, "cuda:%d", device);
    gq_cuda_ctx_of(be)->device = device;
    int rc = cuda_setup(be, device);
    if (rc != GQ_OK) {
        gq_err_prefix("cuda:%d", device);
        char msg[2048];
        snprintf(msg, sizeof msg, "%s", gq_errmsg());
        gq_backend_free(be); /* drops the allocation table, then cuda_free */
        return gq_err(rc, "%s", msg);
    }
    *out = be;
    return GQ_OK;
}

/* ---- knobs ----------------------------------------------------------------------------------------------- */

extern "C" int gq_cuda_set_attention_kernel(gq_backend *be, int version) {
    if (!is_cuda(be) || version < 0 || version > 3) return -1;
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    int old = c->attn_version;
    c->attn_version = version;
    return old;
}

extern "C" int gq_cuda_set_hinv_mode(gq_backend *be, int mode) {
    if (!is_cuda(be) || mode < GQ_CUDA_HINV_F64 || mode > GQ_CUDA_HINV_F64_HALVES) return -1;
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    int old = c->hinv_mode;
    c->hinv_mode = mode;
    return old;
}

extern "C" int gq_cuda_set_gptq_tf32(gq_backend *be, int on) {
    if (!is_cuda(be)) return -1;
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    int old = c->gptq_tf32;
    c->gptq_tf32 = on != 0;
    return old;
}

extern "C" int gq_cuda_last_gptq_timing(const gq_backend *be, gq_cuda_gptq_timing *t) {
    if (!is_cuda(be)) return gq_err(GQ_ERR_ARG, "gq_cuda_last_gptq_timing: not a CUDA backend");
    *t = gq_cuda_ctx_of(be)->gptq_timing;
    return GQ_OK;
}
