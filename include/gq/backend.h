/*
 * gq/backend.h -- the compute backend: one small C interface in front of
 * the CPU path (OpenBLAS + LAPACKE, fp32) and the CUDA path (cuBLAS +
 * cuSOLVER, fp16 activations with fp32 accumulation).
 *
 * Buffers are opaque device pointers (`void *`) owned by the backend: host
 * memory on the CPU backend, device memory on CUDA. Activation buffers hold
 * elements of gq_backend_act_dtype() (F32 on CPU, F16 on CUDA unless
 * gq_backend_set_precision chose fp32); the caller
 * only sizes them (gq_be_act_bytes) and moves f32 data in and out with
 * gq_be_upload_f32 / gq_be_download_f32. Hessians and vectors are f32 on
 * every backend.
 *
 * Matrix conventions (row-major everywhere):
 *   activations X [T][ld] (ld >= width; fused projections use column
 *   offsets), weights W [rows=out][cols=in] (the Hugging Face layout), so a
 *   linear layer is Y[T][out] = X[T][in] * W^T (+ bias).
 *
 * Every op returns a gq_status. Ops may run asynchronously on a device;
 * downloads synchronise.
 */
#ifndef GQ_BACKEND_H
#define GQ_BACKEND_H

#include "gq/common.h"
#include "gq/gptq.h"
#include "gq/pack.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gq_backend gq_backend;

/* spec: "cpu", "cuda", "cuda:N", or "auto" / NULL (CUDA when a GPU is
 * present and gq was built with CUDA, the CPU otherwise). Logs which one was
 * chosen and why. */
int gq_backend_init(gq_backend **out, const char *spec);
void gq_backend_free(gq_backend *be);
const char *gq_backend_name(const gq_backend *be); /* "cpu (OpenBLAS, 16 threads)" */
int gq_backend_is_gpu(const gq_backend *be);
gq_dtype gq_backend_act_dtype(const gq_backend *be);
/* What fixes the arithmetic, for the --resume fingerprint: the CPU backend's
 * OpenBLAS kernel set ("cpu openblas Haswell"), or the CUDA device
 * ("cuda NVIDIA H100 80GB HBM3 sm_90"); no thread counts or memory sizes. */
void gq_backend_arith_id(const gq_backend *be, char *buf, size_t cap);
/* Choose the arithmetic precision: "auto" (the backend's own: fp32 on the
 * CPU, fp16 on CUDA), "fp16" or "fp32". CUDA fp16: fp16 activations and
 * weights, tensor-core GEMMs with fp32 accumulation (the reference
 * implementation's arithmetic); CUDA fp32: fp32 activations and weights,
 * fp32 GEMMs without TF32 (the CPU backend's arithmetic, several times
 * slower). The CPU backend is fp32 only. Call it right after
 * gq_backend_init, before any weight or activation buffer exists (it
 * changes gq_backend_act_dtype). Logs the choice. */
int gq_backend_set_precision(gq_backend *be, const char *precision);
/* A sibling of be for work beside be's on another host thread: the same device and precision,
 * its own stream, library handles and scratch (CUDA; on the CPU another CPU backend). Buffers and
 * weights of either may be used by the other once their producer is synchronised (gq_be_sync);
 * each is released through the backend that allocated it. Free it with gq_backend_free.
 * GQ_ERR_UNSUPPORTED where the backend has none. */
int gq_backend_fork(gq_backend *be, gq_backend **out);
/* Make be usable from the calling host thread (CUDA: its device becomes the thread's current
 * device; the CPU: nothing). A thread that works on a backend made on another thread calls it
 * first (gq/dp.h's rank threads). */
int gq_backend_bind_thread(gq_backend *be);
/* 1 if this build has CUDA support compiled in. */
int gq_backend_cuda_compiled(void);
/* CUDA devices present (0 without CUDA support, a driver or a device). */
int gq_backend_cuda_devices(void);
/* Device memory: peak bytes allocated through this backend so far. */
size_t gq_be_peak_bytes(const gq_backend *be);
/* Free device memory now (bytes), 0 on CPU. */
size_t gq_be_free_bytes(const gq_backend *be);

/* ---- buffers --------------------------------------------------------------- */

void *gq_be_alloc(gq_backend *be, size_t bytes); /* GQ_ERR_NOMEM -> NULL + message */
void gq_be_release(gq_backend *be, void *p);     /* NULL ok */
size_t gq_be_act_bytes(const gq_backend *be, size_t n_elems);
int gq_be_upload(gq_backend *be, void *dst, const void *src, size_t bytes);
int gq_be_download(gq_backend *be, void *dst, const void *src, size_t bytes);
int gq_be_memset0(gq_backend *be, void *dst, size_t bytes);
/* f32 host <-> activation dtype, n elements; ld-free (contiguous). */
int gq_be_upload_f32(gq_backend *be, void *dst_act, const float *src, size_t n);
int gq_be_download_f32(gq_backend *be, float *dst, const void *src_act, size_t n);
/* Copy n activation elements device to device. */
int gq_be_copy_act(gq_backend *be, void *dst, const void *src, size_t n);
int gq_be_sync(gq_backend *be);

/* Host memory the device reads directly (CUDA: pinned, cudaMallocHost; elsewhere plain malloc);
 * zeroed. NULL (with a message) when it cannot be had. */
void *gq_be_host_alloc(gq_backend *be, size_t bytes);
void gq_be_host_free(gq_backend *be, void *p);
/* dst (device) = bytes of src (gq_be_host_alloc's memory), in stream order; recordable: a replay
 * copies what src holds when it runs. The CPU: memcpy. */
int gq_be_upload_pinned(gq_backend *be, void *dst, const void *src, size_t bytes);

/* ---- recorded work (CUDA graphs) ------------------------------------------- */

/* Between gq_be_graph_begin and gq_be_graph_end the backend's ops are recorded, not run; the
 * recording replays with gq_be_graph_launch (one launch for all of them, in stream order with
 * the other ops). A recording keeps the buffers, weights and pointers it was made with, and
 * reads host memory only through gq_be_upload_pinned (gq_attn_opts.dslot: decode steps); an op
 * that cannot be recorded (a host copy from pageable memory, a synchronisation) fails the
 * recording: gq_be_graph_end then returns GQ_ERR_UNSUPPORTED with the reason, and the work must
 * be run again without recording. GQ_ERR_UNSUPPORTED from gq_be_graph_begin on the CPU. */
typedef struct gq_bgraph gq_bgraph;
int gq_be_graph_begin(gq_backend *be);
int gq_be_graph_end(gq_backend *be, gq_bgraph **out);
int gq_be_graph_launch(gq_backend *be, gq_bgraph *g);
void gq_be_graph_free(gq_backend *be, gq_bgraph *g); /* NULL ok */

/* ---- weights ---------------------------------------------------------------- */

typedef struct {
    void *data;   /* backend buffer [rows][cols] in `dtype` */
    int rows, cols;
    gq_dtype dtype; /* the activation dtype: F32 on CPU, F16 (or F32) on CUDA */
    void *q4;       /* NULL for plain weights; else a backend-owned int4 weight (gq_be_weight_upload_q4),
                       data may then be NULL */
} gq_bweight;

/* Upload an f32 host matrix [rows][cols] (a vector is rows = 1). */
int gq_be_weight_upload(gq_backend *be, gq_bweight *w, const float *src, int rows, int cols);
/* Upload raw F16/BF16/F32 host data without a f32 round trip. */
int gq_be_weight_upload_raw(gq_backend *be, gq_bweight *w, const void *src, gq_dtype dt, int rows, int cols);
/* An uninitialised rows x cols weight in the backend's weight dtype, filled
 * in row blocks by gq_be_weight_set_rows from raw F16/BF16/F32 host data
 * (no f32 copy on the host where the backend keeps F16). set_rows fails
 * with GQ_ERR_NUMERIC ("non-finite value at index i") on NaN/Inf. */
int gq_be_weight_alloc(gq_backend *be, gq_bweight *w, int rows, int cols);
int gq_be_weight_set_rows(gq_backend *be, gq_bweight *w, int row0, int nrows, const void *src, gq_dtype dt);
void gq_be_weight_free(gq_backend *be, gq_bweight *w);
/* Device (or host, on the CPU) bytes a weight holds: rows x cols x dtype size for a plain
 * weight, the resident int4 layout for a q4 weight; 0 for an empty one. */
size_t gq_be_weight_bytes(const gq_bweight *w);

/* ---- int4 weights kept resident (W4A16) ------------------------------------------------
 *
 * 1 when this backend can keep int4 GPTQ weights resident and run gq_be_linear on them,
 * dequantizing on the fly with fp32 accumulation: CUDA with fp16 activations. 0 for the CPU
 * and for CUDA with --precision fp32 (dequantize with gq_packed_dequant and upload fp
 * weights there). */
int gq_be_q4_supported(const gq_backend *be);
/* Make w an int4-resident weight of rows = sum of the parts' rows (out_features, stacked in
 * order: a fused q|k|v or gate|up projection) x cols = K (in_features, the same for every
 * part); each part keeps its own scales, zeros, g_idx and group size (trivial or act-order
 * g_idx). The parts are AutoGPTQ tensors as gq/pack.h describes them (v1 or v2 zeros); the
 * backend repacks them once into its own device layout (the host structs are not kept). Then
 * gq_be_linear(.., w, ..) computes Y = X * W^T (+ bias, accumulate as for plain weights) with
 * W[n][k] = scale[g_idx[k]][n] * (q - zero); w->data may stay NULL, w->dtype is the
 * activation dtype; gq_be_weight_free releases it. Checks: bits 4, every part the same K,
 * K % 8 == 0, rows % 8 == 0, 1 <= ngroups <= K, every g_idx in 0..ngroups-1, scales finite
 * with |scale| * 16 <= 65504 (the dequantized weights are fp16); GQ_ERR_ARG / FORMAT /
 * UNSUPPORTED / NUMERIC naming the part, what was expected and what was found.
 * GQ_ERR_UNSUPPORTED when gq_be_q4_supported(be) is 0. */
int gq_be_weight_upload_q4(gq_backend *be, gq_bweight *w, const gq_packed *const *parts, int nparts);

/* ---- forward ops --------------------------------------------------------------- */

/* Y[T][ldy] (cols 0..W.rows-1) = X[T][ldx] (cols 0..W.cols-1) * W^T + bias.
 * bias may be NULL (else a 1 x W.rows weight). accumulate: Y += instead.
 * W may be an int4-resident weight (W->q4, gq_be_weight_upload_q4). */
int gq_be_linear(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, const gq_bweight *W,
                 const gq_bweight *bias, int accumulate);
/* Y[T][ldy] = X / sqrt(mean(X^2) + eps) * w, per row of d elements. */
int gq_be_rmsnorm(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                  float eps);
/* Rotary embedding in place on n_heads heads of head_dim at X[t][ld], for
 * positions pos0 .. pos0+T-1, Hugging Face "rotate_half" pairing (i, i+hd/2):
 * angle = pos * inv_freq[i], i < hd/2 (inv_freq: host array, hd/2 floats),
 * x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, angles and cos/sin in fp32. */
int gq_be_rope(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, int pos0,
               const float *inv_freq);
/* Causal grouped-query attention for one sequence:
 * O[Tq][ldo] (n_heads * hd) = softmax(Q K^T / sqrt(hd) + causal) V.
 * Q[Tq][ldq] has n_heads heads; K, V [Tk][ldk] have n_kv heads (head h uses
 * kv head h / (n_heads / n_kv)). Query i is at absolute position
 * Tk - Tq + i and attends to keys 0 .. Tk - Tq + i (prefill: Tq == Tk; one
 * decode step: Tq == 1 with a cache of Tk keys). Never materialises Tq x Tk
 * scores in device memory beyond a bounded tile. */
int gq_be_attention(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk,
                    const void *V, int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim);
/* One decode step of B sequences whose K/V caches share two buffers: row r's
 * cache starts slot[r] * slot_stride elements into Kc / Vc ([max_len][ldkv],
 * n_kv heads of head_dim per position); its new token is at position pos[r]
 * (slot, pos: host arrays). QKV[B][ldqkv] holds each new token's q | k | v
 * (n_heads, n_kv, n_kv heads). Rotates q and k (RoPE at pos[r]), appends k
 * and v to the caches at pos[r], and writes O[B][ldo] = attention of q over
 * the keys 0 .. pos[r]. The same results as rope + copy_act + attention row
 * by row (which backends without a batched kernel do). */
int gq_be_decode_attention(gq_backend *be, void *O, int ldo, void *QKV, int ldqkv, int B, void *Kc, void *Vc,
                           size_t slot_stride, int ldkv, const int32_t *slot, const int32_t *pos, int n_heads,
                           int n_kv, int head_dim, const float *inv_freq);
/* A[T][lda] (I cols) = silu(GU[:, 0:I]) * GU[:, I:2I], GU[T][ldgu]. */
int gq_be_swiglu(gq_backend *be, void *A, int lda, const void *GU, int ldgu, int T, int I);
/* Y[T][ldy] += X[T][ldx], d columns. */
int gq_be_add(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d);

/* ---- family ops (gq/arch.h): norms, activations, attention variants, MoE routing ---------- */

typedef enum { GQ_ACT_SILU = 0, GQ_ACT_GELU_TANH } gq_act_kind;

/* What the attention of a layer does beyond plain causal softmax(Q K^T / sqrt(hd)) V.
 * Zero-initialised = plain. */
typedef struct {
    float scale;   /* score scale; 0: 1 / sqrt(head_dim) (Gemma-2: query_pre_attn_scalar^-1/2) */
    float softcap; /* 0: none; else scores = softcap * tanh(scores * scale / softcap), before the mask */
    int window;    /* 0: none; else query at position p sees keys j with p - window < j <= p */
    int cache_len; /* decode: positions per slot in the caches (0: unknown) */
    /* decode, with cache_len: slot[] and pos[] also in the backend's memory (gq_be_upload_pinned
     * of pinned copies), or NULL. The CUDA kernels then read these when they run and the launch
     * follows cache_len instead of the values: such a decode step can be recorded once and
     * replayed (gq_be_graph_*). The CPU reads the host arrays. */
    const int32_t *dslot, *dpos;
} gq_attn_opts;

/* Y[T][ldy] = (X - mean(X)) / sqrt(var(X) + eps) * w + b per row of d (torch LayerNorm:
 * biased variance, statistics in fp32); b may be NULL (no bias). */
int gq_be_layernorm(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                    const gq_bweight *b, float eps);
/* In place on n_heads heads of head_dim at X[t][ld] (head h at columns h * head_dim): each head
 * x / sqrt(mean(x^2) + eps) * w, w [head_dim] (Qwen3's q_norm / k_norm). */
int gq_be_head_rmsnorm(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, const gq_bweight *w,
                       float eps);
/* A[T][lda] (I cols) = act(GU[:, 0:I]) * GU[:, I:2I] (SwiGLU: GQ_ACT_SILU; GeGLU: GELU-tanh).
 * gq_be_swiglu is gq_be_glu with GQ_ACT_SILU. */
int gq_be_glu(gq_backend *be, void *A, int lda, const void *GU, int ldgu, int T, int I, gq_act_kind act);
/* X[T][ld] (n cols) = act(X) in place (a non-gated MLP: StarCoder2's c_fc). GELU-tanh:
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); SiLU: x / (1 + exp(-x)). */
int gq_be_act(gq_backend *be, void *X, int ld, int T, int n, gq_act_kind act);
/* gq_be_rope on the first `rot` dims of each head only (partial rotary: pairs (i, i + rot/2),
 * i < rot/2, inv_freq rot/2 floats); dims rot .. head_dim-1 unchanged. rot == head_dim is
 * gq_be_rope. */
int gq_be_rope_partial(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, int rot, int pos0,
                       const float *inv_freq);
/* gq_be_attention with the options o (NULL: plain). */
int gq_be_attention_ex(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk,
                       const void *V, int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim,
                       const gq_attn_opts *o);
/* gq_be_decode_attention with partial rotary (rot dims, as gq_be_rope_partial) and the
 * attention options o (NULL: plain). The window applies to absolute positions (the cache
 * keeps every key; keys before pos - window + 1 are masked). */
int gq_be_decode_attention_ex(gq_backend *be, void *O, int ldo, void *QKV, int ldqkv, int B, void *Kc, void *Vc,
                              size_t slot_stride, int ldkv, const int32_t *slot, const int32_t *pos, int n_heads,
                              int n_kv, int head_dim, int rot, const float *inv_freq, const gq_attn_opts *o);
/* Y[i][ldy] = X[idx[i]][ldx] for i < n, d columns (idx: host array, each in range of X's rows). */
int gq_be_gather_rows(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx, int n, int d);
/* Y[idx[i]][ldy] += w[i] * X[i][ldx] for i < n, d columns (idx, w: host arrays; the idx are
 * distinct, so rows never race), the product and the sum in fp32. */
int gq_be_scatter_add_rows(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx,
                           const float *w, int n, int d);
/* gq_be_nll with the final-logit soft-cap of Gemma-2 (softcap > 0: logits = softcap *
 * tanh(logits / softcap), before the softmax and in logits_out). */
int gq_be_nll_ex(gq_backend *be, const void *X, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
                 float softcap, double *nll_sum, int64_t *count, float *logits_out);

/* ---- calibration and quantization ops ---------------------------------------------- */

/* H[K][K] (f32 buffer, upper triangle j >= i at least) += X^T X, X[T][ldx]. */
int gq_be_hessian_accum(gq_backend *be, float *H, const void *X, int ldx, int T, int K);
/* GPTQ / RTN solve of W (rows x cols) with the Hessian H (f32 buffer,
 * upper triangle; destroyed), scaled by h_scale first (e.g. 2 / n_samples,
 * which only changes the reported loss). Results (codes, scales, zeros, ...)
 * go to the host struct `res` (allocated by the op with gq_qresult_init);
 * W is replaced by the dequantized weights. Same semantics as
 * gq_gptq_quantize on every backend. */
int gq_be_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res);

/* Sum of next-token negative log-likelihoods: logits[t] = X[t] * Wlm^T for
 * t < T; targets[t] (host, -1 = ignore). Adds to *nll_sum and *count.
 * If logits_out (host, T x vocab f32) is not NULL the logits are also
 * returned (for tests and generation). */
int gq_be_nll(gq_backend *be, const void *X, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
              double *nll_sum, int64_t *count, float *logits_out);

#ifdef __cplusplus
}
#endif
#endif /* GQ_BACKEND_H */
