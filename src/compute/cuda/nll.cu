/*
 * cuda/nll.cu -- next-token negative log-likelihood: logits of a chunk of
 * rows with one cublasGemmEx (fp16 x fp16 -> fp32 logits, fp32 compute; all
 * fp32 with --precision fp32),
 * then (with a final-logit soft-cap) l = cap * tanh(l / cap) in place, then
 * one block per row: max, sum of exp(l - max) in double, and
 * -log p(target) = max + log(sum) - l[target]. Per-row values come back to
 * the host and are summed in row order in double.
 */
#include <math.h>

#include "common.cuh"

#define NLL_THREADS 256

/* L[i] = cap * tanh(L[i] / cap), i < n (the soft-cap of Gemma-2's final logits). */
static __global__ void softcap_kernel(float *L, size_t n, float cap) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        L[i] = cap * tanhf(L[i] / cap);
}

/* out[r] = logsumexp(L[r]) - L[r][tg[r]] for the rows with tg[r] >= 0 (0 otherwise). */
static __global__ void __launch_bounds__(NLL_THREADS)
    nll_rows_kernel(double *out, const float *L, int vocab, const int32_t *tg) {
    __shared__ float smax[32];
    __shared__ double ssum[32];
    const int r = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int t = tg[r];
    if (t < 0) { /* uniform over the block */
        if (threadIdx.x == 0) out[r] = 0.0;
        return;
    }
    const float *row = L + (size_t)r * vocab;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, row[j]);
    mx = warp_max(mx);
    if (lane == 0) smax[warp] = mx;
    __syncthreads();
    mx = smax[0];
    for (int w = 1; w < nw; w++) mx = fmaxf(mx, smax[w]);
    double sum = 0.0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) sum += (double)expf(row[j] - mx);
    sum = warp_sum_d(sum);
    if (lane == 0) ssum[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < nw; w++) s += ssum[w];
        out[r] = (double)mx + log(s) - (double)row[t];
    }
}

/* softcap > 0: the logits are capped before the log-softmax and in logits_out. */
int gq_cuda_nll(gq_backend *be, const void *X, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
                float softcap, double *nll_sum, int64_t *count, float *logits_out) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    if (Wlm->dtype != be->act_dtype)
        return gq_err(GQ_ERR_ARG, "cuda nll: lm head is %s, expected %s", gq_dtype_name(Wlm->dtype),
                      gq_dtype_name(be->act_dtype));
    const cudaDataType_t at = gq_cuda_act_type(be);
    const int vocab = Wlm->rows, d = Wlm->cols;
    /* rows per chunk: a logits block of about 64 MiB, 16 .. 4096 rows */
    long R = (long)(((size_t)64 << 20) / ((size_t)vocab * sizeof(float)));
    R = R < 16 ? 16 : R > 4096 ? 4096 : R;
    if (R > T) R = T;
    float *L = NULL;
    int32_t *tg = NULL;
    double *rowv = NULL, *host_rows = NULL, nll = 0.0;
    int64_t cnt = 0;
    int rc = GQ_OK;
    const float one = 1.0f, zero = 0.0f;
    if (!(L = (float *)gq_cuda_scratch(be, (size_t)R * vocab * sizeof(float), "nll: logits")) ||
        !(tg = (int32_t *)gq_cuda_scratch(be, (size_t)T * sizeof(int32_t), "nll: targets")) ||
        !(rowv = (double *)gq_cuda_scratch(be, (size_t)R * sizeof(double), "nll: row values"))) {
        rc = gq_errcode();
        goto out;
    }
    host_rows = (double *)gq_malloc((size_t)R * sizeof(double));
    if ((rc = gq_be_upload(be, tg, targets, (size_t)T * sizeof(int32_t))) != GQ_OK) goto out;
    for (int t0 = 0; t0 < T; t0 += (int)R) {
        const int nr = T - t0 < R ? T - t0 : (int)R;
        /* L[nr][vocab] = X[t0 : t0 + nr] Wlm^T (column-major: L^T = W X^T) */
        rc = GQ_CU_OK(cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, vocab, nr, d, &one, Wlm->data, at, d,
                                   (const char *)X + gq_be_act_bytes(be, (size_t)t0 * ldx), at, ldx, &zero, L,
                                   CUDA_R_32F, vocab, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        if (rc != GQ_OK) goto out;
        if (softcap > 0.0f) {
            const size_t n = (size_t)nr * vocab, nb = CEIL_DIV(n, (size_t)256);
            softcap_kernel<<<(int)(nb < 4096 ? nb : 4096), 256, 0, c->stream>>>(L, n, softcap);
            if ((rc = GQ_CU_OK(cudaGetLastError())) != GQ_OK) goto out;
        }
        nll_rows_kernel<<<nr, NLL_THREADS, 0, c->stream>>>(rowv, L, vocab, tg + t0);
        if ((rc = GQ_CU_OK(cudaGetLastError())) != GQ_OK) goto out;
        if ((rc = gq_be_download(be, host_rows, rowv, (size_t)nr * sizeof(double))) != GQ_OK) goto out;
        for (int r = 0; r < nr; r++) {
            if (targets[t0 + r] < 0) continue;
            nll += host_rows[r];
            cnt++;
        }
        if (logits_out &&
            (rc = gq_be_download(be, logits_out + (size_t)t0 * vocab, L, (size_t)nr * vocab * sizeof(float))) != GQ_OK)
            goto out;
    }
    *nll_sum += nll;
    *count += cnt;
out:
    gq_be_release(be, L);
    gq_be_release(be, tg);
    gq_be_release(be, rowv);
    free(host_rows);
    return rc;
}
