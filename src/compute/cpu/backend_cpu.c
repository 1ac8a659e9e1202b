/*
 * backend_cpu.c -- the CPU backend: fp32 activations in host memory,
 * OpenBLAS sgemm/ssyrk for the matrix products, OpenMP for the elementwise
 * ops (norms, rotary embedding, activations, MoE row gather / scatter-add).
 * Attention and the NLL head are in backend_cpu_attn.c, the GPTQ op in
 * backend_cpu_gptq.c.
 *
 * Threading: OpenBLAS (OpenMP build) runs multithreaded when called outside
 * an OpenMP parallel region and single-threaded inside one, so the ops below
 * call sgemm from serial code and use `#pragma omp parallel for` only around
 * their own loops -- and only when there is enough work (PAR_MIN elements):
 * a parallel region costs microseconds, more than a one-token decode step's
 * whole op.
 */
#include <errno.h>

#define PAR_MIN 32768 /* elements: below this an op runs on the calling thread */
#include <stdlib.h>
#include <string.h>

#include "gq/knobs.h"
#include "backend_cpu.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static void cpu_free(gq_backend *be) {
    gq_free_aligned(be->q4_scratch);
    free(be->ctx);
    free(be);
}

/* ---- buffers ----------------------------------------------------------------------- */

static void *cpu_alloc(gq_backend *be, size_t bytes) {
    void *p = NULL;
    size_t n = bytes ? (bytes + 63) / 64 * 64 : 64;
    if (n < bytes || posix_memalign(&p, 64, n) != 0) {
        char b[32];
        gq_err(GQ_ERR_NOMEM, "cpu backend: cannot allocate %s (%zu bytes)", gq_fmt_bytes(b, sizeof b, (double)bytes),
               bytes);
        return NULL;
    }
    return p;
}

static void cpu_release(gq_backend *be, void *p) { free(p); }

static int cpu_copy(gq_backend *be, void *dst, const void *src, size_t bytes) {
    memcpy(dst, src, bytes);
    return GQ_OK;
}

static int cpu_memset0(gq_backend *be, void *dst, size_t bytes) {
    memset(dst, 0, bytes);
    return GQ_OK;
}

static int cpu_upload_f32(gq_backend *be, void *dst, const float *src, size_t n) {
    memcpy(dst, src, n * sizeof(float));
    return GQ_OK;
}

static int cpu_download_f32(gq_backend *be, float *dst, const void *src, size_t n) {
    memcpy(dst, src, n * sizeof(float));
    return GQ_OK;
}

static int cpu_copy_act(gq_backend *be, void *dst, const void *src, size_t n) {
    memmove(dst, src, n * sizeof(float));
    return GQ_OK;
}

static int cpu_sync(gq_backend *be) { return GQ_OK; }

/* ---- weights ---------------------------------------------------------------------- */

static int weight_alloc(gq_backend *be, gq_bweight *w, int rows, int cols) {
    size_t n;
    if (!gq_mul_size((size_t)rows, (size_t)cols * sizeof(float), &n))
        return gq_err(GQ_ERR_ARG, "weight [%d, %d] is too large", rows, cols);
    w->data = gq_be_alloc(be, n);
    if (!w->data) return GQ_ERR_NOMEM;
    w->rows = rows;
    w->cols = cols;
    w->dtype = GQ_DT_F32;
    return GQ_OK;
}

static int cpu_weight_upload(gq_backend *be, gq_bweight *w, const float *src, int rows, int cols) {
    int rc = weight_alloc(be, w, rows, cols);
    if (rc == GQ_OK) memcpy(w->data, src, (size_t)rows * cols * sizeof(float));
    return rc;
}

static int cpu_weight_upload_raw(gq_backend *be, gq_bweight *w, const void *src, gq_dtype dt, int rows, int cols) {
    int rc = weight_alloc(be, w, rows, cols);
    if (rc == GQ_OK) gq_to_f32(w->data, src, dt, (size_t)rows * cols);
    return rc;
}

static void cpu_weight_free(gq_backend *be, gq_bweight *w) { gq_be_release(be, w->data); }

/* ---- forward ops ------------------------------------------------------------------- */

/* Y[T][ldy] (+)= X[T][ldx] W^T for T <= GQ_CPU_SMALL_T (decode steps of up to 16 sequences): one pass
 * over the rows of W [N][K], each row's T dot products (4 at a time) while it is in cache.
 * OpenBLAS's sgemm packs all of W on every call, which at these T costs more than the products: a
 * 8192 x 4096 weight at T = 1 took 14.1 ms by sgemm against 4.1 ms as a GEMV, at T = 2 15.9
 * against 8.2 ms (one core, 2-core VM, 2026-12-08); bench_generate's pycoder-30m decode, one
 * thread: batch 1 55-58 -> 97-109 tok/s, 4: 216-229 -> 298-323, 8: 322-327 -> 373-402, 16: 409-412
 * -> 465-467. A row's value depends on the row of X and W only (not on T, the thread count or the
 * batch it is in); its sum is the compiler's vector reduction, so like BLAS it depends on the CPU's
 * vector width. */
void gq_cpu_linear_rows(float *Y, int ldy, const float *X, int ldx, int T, const float *W, int N, int K,
                        int accumulate) {
#pragma omp parallel for schedule(static) if ((size_t)N * K >= 4 * PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *w = W + (size_t)n * K;
        for (int t0 = 0; t0 < T; t0 += 4) {
            float s[4];
            const int nx = T - t0 < 4 ? T - t0 : 4;
            gq_cpu_dots(w, X + (size_t)t0 * ldx, (size_t)ldx, nx, K, s);
            for (int i = 0; i < nx; i++) {
                float *y = Y + (size_t)(t0 + i) * ldy + n;
                *y = accumulate ? *y + s[i] : s[i];
            }
        }
    }
}

static int cpu_linear(gq_backend *be, void *Yv, int ldy, const void *Xv, int ldx, int T, const gq_bweight *W,
                      const gq_bweight *bias, int accumulate) {
    float *Y = Yv;       /* [T][ldy] */
    const float *X = Xv; /* [T][ldx] */
    int N = W->rows;
    int owned = 0;
    float *wq = W->q4 ? gq_cpu_q4_dequant(be, W, &owned) : NULL; /* [N][cols] */
    if (W->q4 && !wq) return gq_errcode();
    const float *Wd = wq ? wq : (const float *)W->data;
    if (T <= GQ_CPU_SMALL_T)
        gq_cpu_linear_rows(Y, ldy, X, ldx, T, Wd, N, W->cols, accumulate);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, W->cols, 1.0f, X, ldx, Wd, W->cols,
                    accumulate ? 1.0f : 0.0f, Y, ldy);
    if (owned) gq_free_aligned(wq);
    if (bias) {
        const float *b = bias->data; /* [N] */
#pragma omp parallel for schedule(static) if ((size_t)T * N >= PAR_MIN)
        for (int t = 0; t < T; t++) {
            float *y = Y + (size_t)t * ldy;
#pragma omp simd
            for (int j = 0; j < N; j++) y[j] += b[j];
        }
    }
    return GQ_OK;
}

static int cpu_rmsnorm(gq_backend *be, void *Yv, int ldy, const void *Xv, int ldx, int T, int d, const gq_bweight *w,
                       float eps) {
    float *Y = Yv;
    const float *X = Xv, *g = w->data;
#pragma omp parallel for schedule(static) if ((size_t)T * d >= PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * ldx;
        float *y = Y + (size_t)t * ldy;
        double ss = 0; /* the mean of squares in double: HF's fp32 mean is within an ulp of it */
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
        float inv = (float)(1.0 / sqrt(ss / d + (double)eps));
#pragma omp simd
        for (int i = 0; i < d; i++) y[i] = (x[i] * inv) * g[i]; /* HF order: weight * (x * rsqrt) */
    }
    return GQ_OK;
}

/* cs[rot]: cos, then sin, of position pos's angles pos * inv_freq[i], i < rot / 2 (fp32 products, as torch). */
void gq_cpu_rope_angles(float *cs, int rot, int pos, const float *inv_freq) {
    const int half = rot / 2;
    const float p = (float)pos;
    for (int i = 0; i < half; i++) {
        float ang = p * inv_freq[i];
        cs[i] = cosf(ang);
        cs[half + i] = sinf(ang);
    }
}

/* The rotation of n_heads heads of head_dim at x (consecutive) by the angles cs (gq_cpu_rope_angles):
 * pairs (i, i + rot/2), i < rot/2, of each head's first rot dims. */
void gq_cpu_rope_heads(float *x, int n_heads, int head_dim, int rot, const float *cs) {
    const int half = rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
#pragma omp simd
        for (int i = 0; i < half; i++) {
            float x1 = xh[i], x2 = xh[i + half], c = cs[i], s = cs[half + i];
            xh[i] = x1 * c - x2 * s;
            xh[i + half] = x2 * c + x1 * s;
        }
    }
}

/* Rotary embedding on the first rot dims of each head (pairs (i, i + rot/2), i < rot/2). */
static int cpu_rope(gq_backend *be, void *Xv, int ld, int T, int n_heads, int head_dim, int rot, int pos0,
                    const float *inv_freq) {
    float *X = Xv; /* [T][ld], head h at columns h * head_dim */
#pragma omp parallel if ((size_t)T * n_heads * head_dim >= PAR_MIN)
    {
        float *cs = gq_malloc(sizeof(float) * (size_t)rot); /* [half] cos, then [half] sin */
#pragma omp for schedule(static)
        for (int t = 0; t < T; t++) {
            gq_cpu_rope_angles(cs, rot, pos0 + t, inv_freq);
            gq_cpu_rope_heads(X + (size_t)t * ld, n_heads, head_dim, rot, cs);
        }
        free(cs);
    }
    return GQ_OK;
}

/* GELU, tanh approximation, in torch's fp32 order (x^3 first). */
static inline float gelu_tanh(float x) {
    float x3 = x * x * x;
    float inner = 0.7978845608028654f * (x + 0.044715f * x3);
    return 0.5f * x * (1.0f + tanhf(inner));
}

/* A[T][lda] (I cols) = act(G) * U, G = GU[:, 0:I], U = GU[:, I:2I], GU [T][ldgu]. */
static int cpu_glu(gq_backend *be, void *Av, int lda, const void *GUv, int ldgu, int T, int I, gq_act_kind act) {
    float *A = Av;
    const float *GU = GUv;
#pragma omp parallel for schedule(static) if ((size_t)T * I >= PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *g = GU + (size_t)t * ldgu, *u = g + I;
        float *a = A + (size_t)t * lda;
        if (act == GQ_ACT_SILU) {
#pragma omp simd
            for (int i = 0; i < I; i++) a[i] = g[i] / (1.0f + gq_cpu_expf(-g[i])) * u[i];
        } else {
            for (int i = 0; i < I; i++) a[i] = gelu_tanh(g[i]) * u[i];
        }
    }
    return GQ_OK;
}

/* X[T][ld] (n cols) = act(X) in place. */
static int cpu_act(gq_backend *be, void *Xv, int ld, int T, int n, gq_act_kind act) {
    float *X = Xv;
#pragma omp parallel for schedule(static) if ((size_t)T * n >= PAR_MIN)
    for (int t = 0; t < T; t++) {
        float *x = X + (size_t)t * ld;
        if (act == GQ_ACT_SILU) {
#pragma omp simd
            for (int i = 0; i < n; i++) x[i] = x[i] / (1.0f + gq_cpu_expf(-x[i]));
        } else {
            for (int i = 0; i < n; i++) x[i] = gelu_tanh(x[i]);
        }
    }
    return GQ_OK;
}

/* Y[T][ldy] = (X - mean) / sqrt(var + eps) * w + b per row of d, X [T][ldx], w, b [d] (b may be
 * NULL). The mean and the biased variance (two passes, sum of squared deviations) accumulate in
 * double and are rounded to fp32 once: at least as accurate as torch's fp32 (Welford)
 * statistics, and without the cancellation of E[x^2] - E[x]^2 on rows with a large mean
 * (measured 1.4e-7 from the double reference at |mean| = 10 sd). The normalisation
 * itself is fp32, in torch's order ((x - mean) * rstd) * w + b. */
static int cpu_layernorm(gq_backend *be, void *Yv, int ldy, const void *Xv, int ldx, int T, int d, const gq_bweight *w,
                         const gq_bweight *b, float eps) {
    float *Y = Yv;
    const float *X = Xv, *g = w->data, *bias = b ? b->data : NULL;
#pragma omp parallel for schedule(static) if ((size_t)T * d >= PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * ldx;
        float *y = Y + (size_t)t * ldy;
        double s = 0, ss = 0;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < d; i++) s += x[i];
        double mean = s / d;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < d; i++) ss += ((double)x[i] - mean) * ((double)x[i] - mean);
        float mu = (float)mean, rstd = (float)(1.0 / sqrt(ss / d + (double)eps));
        if (bias) {
#pragma omp simd
            for (int i = 0; i < d; i++) y[i] = (x[i] - mu) * rstd * g[i] + bias[i];
        } else {
#pragma omp simd
            for (int i = 0; i < d; i++) y[i] = (x[i] - mu) * rstd * g[i];
        }
    }
    return GQ_OK;
}

/* In place on X[T][ld]: each of n_heads heads of head_dim (head h at columns h * head_dim)
 * x / sqrt(mean(x^2) + eps) * w, w [head_dim]; the arithmetic of cpu_rmsnorm per head. */
static int cpu_head_rmsnorm(gq_backend *be, void *Xv, int ld, int T, int n_heads, int head_dim, const gq_bweight *w,
                            float eps) {
    float *X = Xv;
    const float *g = w->data;
#pragma omp parallel for schedule(static) if ((size_t)T * n_heads * head_dim >= PAR_MIN)
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < n_heads; h++) {
            float *x = X + (size_t)t * ld + (size_t)h * head_dim;
            double ss = 0; /* as cpu_rmsnorm: the mean of squares in double */
#pragma omp simd reduction(+ : ss)
            for (int i = 0; i < head_dim; i++) ss += (double)x[i] * x[i];
            float inv = (float)(1.0 / sqrt(ss / head_dim + (double)eps));
#pragma omp simd
            for (int i = 0; i < head_dim; i++) x[i] = (x[i] * inv) * g[i];
        }
    }
    return GQ_OK;
}

/* Y[i][ldy] = X[idx[i]][ldx], i < n, d columns. */
static int cpu_gather_rows(gq_backend *be, void *Yv, int ldy, const void *Xv, int ldx, const int32_t *idx, int n,
                           int d) {
    float *Y = Yv;
    const float *X = Xv;
#pragma omp parallel for schedule(static) if ((size_t)n * d >= PAR_MIN)
    for (int i = 0; i < n; i++) memcpy(Y + (size_t)i * ldy, X + (size_t)idx[i] * ldx, sizeof(float) * (size_t)d);
    return GQ_OK;
}

/* Y[idx[i]][ldy] += w[i] * X[i][ldx], i < n, d columns; fp32 product and sum (no FMA: -std=c11
 * keeps -ffp-contract=off). The idx are distinct (backend.c checks), so rows never race. */
static int cpu_scatter_add_rows(gq_backend *be, void *Yv, int ldy, const void *Xv, int ldx, const int32_t *idx,
                                const float *w, int n, int d) {
    float *Y = Yv;
    const float *X = Xv;
#pragma omp parallel for schedule(static) if ((size_t)n * d >= PAR_MIN)
    for (int i = 0; i < n; i++) {
        float *y = Y + (size_t)idx[i] * ldy;
        const float *x = X + (size_t)i * ldx;
        float wi = w[i];
#pragma omp simd
        for (int c = 0; c < d; c++) y[c] += wi * x[c];
    }
    return GQ_OK;
}

static int cpu_add(gq_backend *be, void *Yv, int ldy, const void *Xv, int ldx, int T, int d) {
    float *Y = Yv;
    const float *X = Xv;
#pragma omp parallel for schedule(static) if ((size_t)T * d >= PAR_MIN)
    for (int t = 0; t < T; t++) {
        float *y = Y + (size_t)t * ldy;
        const float *x = X + (size_t)t * ldx;
#pragma omp simd
        for (int i = 0; i < d; i++) y[i] += x[i];
    }
    return GQ_OK;
}

static int cpu_hessian_accum(gq_backend *be, float *H, const void *X, int ldx, int T, int K) {
    /* H[K][K] upper triangle += X^T X, X [T][ldx] */
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, K, T, 1.0f, (const float *)X, ldx, 1.0f, H, K);
    return GQ_OK;
}

/* backend_cpu_gptq.c */
int gq_cpu_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res);

int gq_backend_cpu_init(gq_backend **out);

/* Another CPU backend (its own allocation table and settings; host memory is shared anyway): the
 * pipeline's layer loader on its own thread. */
static int cpu_fork(gq_backend *be, gq_backend **out) {
    return gq_backend_cpu_init(out);
}

static const struct gq_backend_i cpu_iface = {
    .free = cpu_free,
    .fork = cpu_fork,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_copy,
    .download = cpu_copy,
    .memset0 = cpu_memset0,
    .upload_f32 = cpu_upload_f32,
    .download_f32 = cpu_download_f32,
    .copy_act = cpu_copy_act,
    .sync = cpu_sync,
    .free_bytes = NULL,
    .weight_upload = cpu_weight_upload,
    .weight_upload_raw = cpu_weight_upload_raw,
    .weight_free = cpu_weight_free,
    .linear = cpu_linear,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .decode_attention = gq_cpu_decode_attention,
    .attention = gq_cpu_attention,
    .glu = cpu_glu,
    .act = cpu_act,
    .layernorm = cpu_layernorm,
    .head_rmsnorm = cpu_head_rmsnorm,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .add = cpu_add,
    .hessian_accum = cpu_hessian_accum,
    .gptq = gq_cpu_gptq,
    .nll = gq_cpu_nll,
    .q4_supported = gq_cpu_q4_supported,
    .weight_upload_q4 = gq_cpu_weight_upload_q4,
    .weight_free_q4 = gq_cpu_weight_free_q4,
};

int gq_backend_cpu_init(gq_backend **out) {
    gq_backend *be = gq_calloc(1, sizeof *be);
    gq_cpu_ctx *c = gq_calloc(1, sizeof *c);
    c->threads = gq_get_threads();
    c->attn_tile = gq_knobs_get()->cpu_attn_tile; /* GQ_CPU_ATTN_TILE; 0: head_dim rows */
    c->attn_mode = gq_knobs_get()->cpu_attn_blas ? GQ_CPU_ATTN_BLAS : GQ_CPU_ATTN_TASKS;
    be->iface = &cpu_iface;
    be->ctx = c;
    be->is_gpu = 0;
    be->act_dtype = GQ_DT_F32;
    snprintf(be->name, sizeof be->name, "cpu (OpenBLAS %s, %d thread%s)", openblas_get_corename(), c->threads,
             c->threads == 1 ? "" : "s");
    *out = be;
    return GQ_OK;
}
