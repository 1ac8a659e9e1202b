/*
 * gq/backend_cuda.h -- the only CUDA-facing header: plain C, usable from C
 * and C++. The CUDA backend itself (the .cu files in src/compute/cuda/) is reached through the
 * generic gq/backend.h interface; this header adds its constructor, device
 * queries that never fail on a machine without a GPU, and a few knobs for
 * tests and benchmarks.
 *
 * Numerics of the CUDA backend (see docs/cuda-notes.md):
 *   activations and weights are fp16 in device memory, every product runs
 *   on the tensor cores with fp32 accumulation (cublasGemmEx,
 *   CUBLAS_COMPUTE_32F), norms/softmax/rope in fp32; Hessians are fp32;
 *   the GPTQ solve is fp32 (the inverse factor fp64 by default), with the
 *   exact per-element operations of gq_gptq_quantize.
 */
#ifndef GQ_BACKEND_CUDA_H
#define GQ_BACKEND_CUDA_H

#include <stddef.h>

#include "gq/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no driver, no device or
 * CUDA fails to initialise (never an error, never aborts). */
int gq_cuda_device_count(void);

/* Create the CUDA backend on device `device` (0-based). GQ_ERR_DEVICE with
 * the CUDA error text when the device cannot be used. */
int gq_backend_cuda_init(gq_backend **out, int device);

/* Device name, total memory, multiprocessors and compute capability of
 * `device`; GQ_ERR_DEVICE if it does not exist. Any out pointer may be NULL. */
int gq_cuda_device_info(int device, char *name, size_t name_cap, size_t *total_bytes, int *sm_count, int *cc_major,
                        int *cc_minor);

/* ---- NCCL between CUDA backends (gq/dp.h's nccl transport) ------------------------------ */

/* 1 if this build has NCCL (make found nccl.h and libnccl beside CUDA). */
int gq_cuda_nccl_built(void);
/* One communicator per backend (ncclCommInitAll over their devices, each named once): comms[n].
 * GQ_ERR_UNSUPPORTED without NCCL, GQ_ERR_DEVICE with NCCL's text when it fails. */
int gq_cuda_nccl_init(void **comms, gq_backend *const *be, int n);
void gq_cuda_nccl_free(void **comms, int n);
/* On be's stream, by every rank's thread: bufs[i][n] (fp32), i < nbuf, summed in place (one NCCL
 * group); buf[bytes] = root's. */
int gq_cuda_nccl_allreduce_f32(void *comm, gq_backend *be, float *const *bufs, int nbuf, size_t n);
int gq_cuda_nccl_broadcast(void *comm, gq_backend *be, void *buf, size_t bytes, int root);

/* ---- knobs (tests, benchmarks) --------------------------------------------------- */

/* Attention kernel: 0 = auto (default: for Tq >= 16, the tensor-core
 * kernel v2 where it applies -- fp16 activations, head_dim 64 or 128,
 * leading dimensions multiples of 8, 16-byte aligned buffers -- or the fp32
 * tiled kernel v3 with --precision fp32 and head_dim 64 or 128; the simple
 * kernel v1 otherwise), 1 = always v1, 2 = always v2, 3 = always v3
 * (GQ_ERR_UNSUPPORTED where it does not apply). Decode steps
 * (gq_be_decode_attention) take the 16-byte-load kernel for fp16 and
 * head_dim 64 / 128 / 256 except under 1. The environment variable
 * GQ_CUDA_ATTN=0|1|2|3 sets the initial value.
 * Returns the previous setting, or -1 if `be` is not a CUDA backend. */
int gq_cuda_set_attention_kernel(gq_backend *be, int version);

/* How the GPTQ solve computes the upper Cholesky factor of H^-1:
 *   GQ_CUDA_HINV_F64: fp64, potrf of the reversed matrix + trtri
 *     (2/3 n^3 flops; the same factor as the reference chain below);
 *   GQ_CUDA_HINV_F64_POTRI: fp64, potrf -> potri -> potrf (the reference
 *     chain, as the CPU path does it; 4/3 n^3 flops);
 *   GQ_CUDA_HINV_F32_FIRST: the reversed potrf -> trtri route in fp32 first,
 *     fp64 (GQ_CUDA_HINV_F64) when fp32 reports "not positive definite";
 *   GQ_CUDA_HINV_F64_HALVES (default): GQ_CUDA_HINV_F64 with trtri by halves
 *     (two cuBLAS trmm per split, trtri on blocks of <= 512 columns): trtri
 *     alone took 86 ms for n = 11008 in fp64 on an H100; the 7B layer's solve
 *     went from 0.465 s to 0.373 s (H100, 2026-12-07).
 * Damping retries (x10, max_retries) and the RTN fallback follow in every
 * mode. GQ_CUDA_HINV=f64|potri|f32|f64h sets the initial value. Returns the
 * previous mode, or -1 if `be` is not a CUDA backend. */
enum { GQ_CUDA_HINV_F64 = 0, GQ_CUDA_HINV_F64_POTRI = 1, GQ_CUDA_HINV_F32_FIRST = 2, GQ_CUDA_HINV_F64_HALVES = 3 };
int gq_cuda_set_hinv_mode(gq_backend *be, int mode);

/* The GPTQ solve's lazy-block updates W[:, i2:] -= Err Hinv[i1:i2, i2:] (the solve's one large
 * GEMM): on = 1 on the tensor cores in TF32 (inputs rounded to a 10-bit mantissa, fp32 sums),
 * 0 in fp32 as the GPTQ paper's implementation. GQ_CUDA_GPTQ_TF32 sets the initial value.
 * Returns the previous setting, or -1 if `be` is not a CUDA backend. */
int gq_cuda_set_gptq_tf32(gq_backend *be, int on);

/* Phase times of the last gq_be_gptq on this backend (seconds, host clock
 * around synchronised phases). */
typedef struct {
    double prep;      /* checks, diag download, dead columns, W working copy, params */
    double factor;    /* damped Hessian build + inverse factor (all attempts) */
    double blocks;    /* fused block kernels + lazy fp32 GEMM updates */
    double output;    /* unpermute, fp16 weight write-back, result downloads */
    int hinv_f64;     /* 1 if the factor that was used was computed in fp64 */
} gq_cuda_gptq_timing;
int gq_cuda_last_gptq_timing(const gq_backend *be, gq_cuda_gptq_timing *t);

#ifdef __cplusplus
}
#endif
#endif /* GQ_BACKEND_CUDA_H */
