/*
 * backend_cpu_gptq.c -- the CPU backend's GPTQ primitives (gq_gptq_cpu_ops,
 * quant/gptq_driver.h; OpenBLAS + LAPACKE + OpenMP) and its `gptq` vtable
 * entry, the driver over them. gq_gptq_quantize runs the same driver and
 * primitives on host arrays. Kept apart from backend_cpu.c so the rest of
 * the backend links without the gptq module.
 *
 * Data flow (W and H are host memory):
 *   scan     H's upper triangle *= h_scale in place; first non-finite W / H
 *   prepare  per-row or static group params from W (original order, dead
 *            columns 0) into res; Wt [cols][rows] = W[:, perm]^T, dead 0
 *   factor   H [cols][cols] --(permuted, dead diag = 1, + lambda, fp64)--> Hd
 *            --potrf/potri/potrf--> U (upper, H^-1 = U^T U) --f32--> Hinv (in H)
 *   solve    lazy blocks of block_size columns over Wt: per column quantize,
 *            error err = (w - q) / U_jj fed to the rest of the block; after
 *            the block one sgemm updates the columns to its right; codes
 *            and dequantized values go straight to res->codes and W
 *            (original column order)
 *   finish   fp16 scales and W rebuilt from the codes (round_out)
 * The transposed working copy makes a column of W contiguous, so the
 * in-block updates are vector loops over rows (OpenMP over row tiles) and the
 * between-block update is a single GEMM.
 */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__STRICT_ANSI__) && !defined(GQ_FP_CONTRACT_OFF)
#error "build in ISO C mode (-std=c11), or with -ffp-contract=off -DGQ_FP_CONTRACT_OFF: GNU modes contract into FMA"
#endif
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF /* clang contracts within an expression by default (w -= e * h) */
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/backend_impl.h"
#include "quant/gptq_driver.h"

#include <cblas.h> /* after gq's headers: with <complex.h> it defines I, a parameter name in gq/backend.h */
#include <lapacke.h>
#undef I

/* Rows handled together by one thread in the in-block loop: a block of 128
 * columns x 128 rows of f32 is 64 KiB, which stays in L2. */
#define ROW_TILE 128

typedef struct {
    float *Wt;  /* [cols][rows] working copy: W[:, perm]^T, dead columns 0 */
    double *Hd; /* [cols][cols] damped, permuted H in fp64 -> its inverse factor (factor scratch) */
} cpu_state;

/* ---- the inverse factor ------------------------------------------------- */

int gq_gptq_hinv(double *H, int n) {
    /* H is symmetric, so its row-major and column-major views are the same
     * matrix. Column-major 'L' factorizations therefore work on the row-major
     * upper triangle, and the final column-major lower factor L2 (H^-1 =
     * L2 L2^T) read row-major is U = L2^T with H^-1 = U^T U: the upper
     * Cholesky factor torch.linalg.cholesky(Hinv, upper=True) returns. */
    lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, H, n);
    GQ_ASSERT(info >= 0);
    if (info > 0)
        return gq_err(GQ_ERR_NOT_PD,
                      "Cholesky of the damped Hessian (dpotrf, step 1 of 3) failed: the leading minor of order "
                      "%d of %d is not positive definite",
                      (int)info, n);
    info = LAPACKE_dpotri(LAPACK_COL_MAJOR, 'L', n, H, n);
    GQ_ASSERT(info >= 0);
    if (info > 0)
        return gq_err(GQ_ERR_NOT_PD,
                      "inverse of the damped Hessian (dpotri, step 2 of 3) failed: diagonal element %d of %d of "
                      "the Cholesky factor is zero",
                      (int)info, n);
    info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, H, n);
    GQ_ASSERT(info >= 0);
    if (info > 0)
        return gq_err(GQ_ERR_NOT_PD,
                      "Cholesky of the inverse Hessian (dpotrf, step 3 of 3) failed: the leading minor of order "
                      "%d of %d is not positive definite",
                      (int)info, n);
    /* Clear the row-major strictly lower triangle (left over from H). */
#pragma omp parallel for schedule(static)
    for (int i = 1; i < n; i++) memset(H + (size_t)i * n, 0, (size_t)i * sizeof(double));
    return GQ_OK;
}

/* Hd [n][n] = H[perm][perm] with the fixed diagonal `diag` plus lambda. */
static void build_hd(double *Hd, const float *H, const float *diag, const int32_t *perm, int n, double lambda) {
#pragma omp parallel for schedule(dynamic, 16)
    for (int i = 0; i < n; i++) {
        int a = perm ? perm[i] : i;
        double *row = Hd + (size_t)i * n;
        for (int j = i + 1; j < n; j++) {
            int b = perm ? perm[j] : j;
            float v = a <= b ? H[(size_t)a * n + b] : H[(size_t)b * n + a];
            row[j] = v;
        }
        row[i] = (double)diag[a] + lambda;
    }
    /* Mirror to the lower triangle: gq_gptq_hinv takes a full matrix. */
#pragma omp parallel for schedule(dynamic, 16)
    for (int i = 1; i < n; i++)
        for (int j = 0; j < i; j++) Hd[(size_t)i * n + j] = Hd[(size_t)j * n + i];
}

/* factor: Hd built at lambda and factored; on success U (f32, upper, lower
 * triangle 0) over H. Hd stays allocated for the next attempt. */
static int cpu_factor(gq_gptq_job *j, double lambda) {
    cpu_state *st = j->state;
    const int n = j->cols;
    if (!st->Hd) st->Hd = gq_malloc_aligned((size_t)n * (size_t)n * sizeof(double));
    build_hd(st->Hd, j->H, j->diag, j->perm, n, lambda);
    int rc = gq_gptq_hinv(st->Hd, n);
    if (rc != GQ_OK) return rc;
    float *H = j->H;
    const double *Hd = st->Hd;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float *h = H + (size_t)i * n;
        const double *hd = Hd + (size_t)i * n;
        for (int c = 0; c < i; c++) h[c] = 0.0f;
        for (int c = i; c < n; c++) h[c] = (float)hd[c];
    }
    return GQ_OK;
}

/* ---- scan and prepare ------------------------------------------------------ */

/* scan: H's upper triangle scaled in place (fl(H * h_scale)), then the
 * first non-finite element of W and of H's upper triangle, row-major. */
static int cpu_scan(gq_gptq_job *j, gq_gptq_scan *s, float *diag) {
    const int rows = j->rows, n = j->cols;
    if (j->W->dtype != GQ_DT_F32)
        return gq_err(GQ_ERR_ARG, "gptq on CPU: the weight must be F32, got %s", gq_dtype_name(j->W->dtype));
    const float *W = (const float *)j->W->data;
    for (size_t i = 0; i < (size_t)rows * n; i++)
        if (!isfinite(W[i])) {
            s->w_index = (int64_t)i, s->w_value = W[i];
            return GQ_OK;
        }
    if (!j->gptq) return GQ_OK;
    float *H = j->H;
    const float sc = (float)j->h_scale;
    if (sc != 1.0f) {
#pragma omp parallel for schedule(dynamic, 16)
        for (int i = 0; i < n; i++) {
            float *hi = H + (size_t)i * n;
            for (int c = i; c < n; c++) hi[c] *= sc;
        }
    }
    for (int i = 0; i < n; i++) {
        const float *h = H + (size_t)i * n;
        for (int c = i; c < n; c++)
            if (!isfinite(h[c])) {
                s->h_index = (int64_t)i * n + c, s->h_value = h[c];
                return GQ_OK;
            }
        diag[i] = h[i];
    }
    return GQ_OK;
}

/* Params of groups of gs original columns (ng groups) of every row of W,
 * dead columns read as 0, into res->scales / res->zeros [ng][rows]; with
 * the clipping search on the group's values (weighted by diag(H) of the
 * original columns for mse-h). */
static void group_params(const gq_gptq_job *j, const float *W, int gs, int ng, const uint8_t *dead) {
    const int rows = j->rows, cols = j->cols, clip = j->q.clip_n > 0;
    const float *wt = j->q.clip_weighted ? j->diag : NULL;
    gq_qresult *res = j->res;
#pragma omp parallel
    {
        float *x = clip ? gq_malloc((size_t)gs * sizeof(float)) : NULL; /* the group's values */
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
            const float *w = W + (size_t)r * cols;
            for (int g = 0; g < ng; g++) {
                const int k0 = g * gs, k1 = k0 + gs < cols ? k0 + gs : cols;
                float mn = 0.0f, mx = 0.0f; /* min(min(x), 0), max(max(x), 0) */
                for (int k = k0; k < k1; k++) {
                    const float v = dead && dead[k] ? 0.0f : w[k];
                    if (v < mn) mn = v;
                    if (v > mx) mx = v;
                    if (clip) x[k - k0] = v;
                }
                float *sc = &res->scales[(size_t)g * rows + r];
                int32_t *zr = &res->zeros[(size_t)g * rows + r];
                if (clip)
                    gq_qm_params_clip(x, wt ? wt + k0 : NULL, k1 - k0, mn, mx, j->q, sc, zr);
                else
                    gq_qm_params(mn, mx, j->q, sc, zr);
            }
        }
        free(x);
    }
}

/* Wt [cols][rows] = W[:, perm]^T (dead columns 0), in 64 x 64 tiles so that
 * both the reads and the writes stay within a few cache lines per row. */
static void transpose_permuted(const float *W, int rows, int cols, const int32_t *perm, const uint8_t *dead,
                               float *Wt) {
    enum { T = 64 };
    const int ntc = (cols + T - 1) / T, ntr = (rows + T - 1) / T;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < ntc * ntr; t++) {
        int j0 = (t / ntr) * T, r0 = (t % ntr) * T;
        int j1 = j0 + T < cols ? j0 + T : cols, r1 = r0 + T < rows ? r0 + T : rows;
        for (int r = r0; r < r1; r++) {
            const float *src = W + (size_t)r * cols;
            for (int j = j0; j < j1; j++) {
                const int oc = perm ? perm[j] : j;
                Wt[(size_t)j * rows + r] = dead && dead[oc] ? 0.0f : src[oc];
            }
        }
    }
}

/* prepare: per-row params on the whole W before the dead-column fix (the
 * reference calls find_params on the layer weight first), or the static
 * groups' params after it; then the working copy. */
static int cpu_prepare(gq_gptq_job *j) {
    cpu_state *st = j->state;
    const float *W = (const float *)j->W->data;
    if (j->mode == GQ_GROUPS_ONE) group_params(j, W, j->cols, 1, NULL);
    if (j->mode == GQ_GROUPS_STATIC) group_params(j, W, j->gs, j->ngroups, j->dead);
    st->Wt = gq_malloc_aligned((size_t)j->rows * j->cols * sizeof(float));
    transpose_permuted(W, j->rows, j->cols, j->perm, j->dead, st->Wt);
    return GQ_OK;
}

/* ---- the column loop -------------------------------------------------------- */

typedef struct {
    const gq_gptq_job *j;
    int rows, cols, gs;
    float *Wt;         /* [cols][rows] global W, permuted, transposed */
    const float *Hinv; /* [cols][cols] upper factor, NULL = identity (RTN) */
    float *Wout;       /* [rows][cols] dequantized output, original order */
    double *row_loss;  /* [rows] */
} solve_ctx;

/* Params of dynamic group g for rows [r0, r1) from the global W (columns
 * [j, j + gs) of Wt: block-start values inside the current block). */
static void dynamic_params(const solve_ctx *c, int j, int r0, int r1) {
    int jend = j + c->gs < c->cols ? j + c->gs : c->cols;
    int g = j / c->gs, nr = r1 - r0;
    float mn[ROW_TILE], mx[ROW_TILE];
    for (int r = 0; r < nr; r++) mn[r] = mx[r] = 0.0f;
    for (int k = j; k < jend; k++) {
        const float *w = c->Wt + (size_t)k * c->rows + r0;
        for (int r = 0; r < nr; r++) {
            mn[r] = w[r] < mn[r] ? w[r] : mn[r];
            mx[r] = w[r] > mx[r] ? w[r] : mx[r];
        }
    }
    float *sc = c->j->res->scales + (size_t)g * c->rows + r0;
    int32_t *zr = c->j->res->zeros + (size_t)g * c->rows + r0;
    const gq_qcfg q = c->j->q;
    if (q.clip_n <= 0) {
        for (int r = 0; r < nr; r++) gq_qm_params(mn[r], mx[r], q, &sc[r], &zr[r]);
        return;
    }
    /* the clipping search on each row's values; mse-h weights: diag(H) of the permuted columns */
    const int n = jend - j;
    float *x = gq_malloc((size_t)n * sizeof(float)), *wt = NULL;
    if (q.clip_weighted) {
        wt = gq_malloc((size_t)n * sizeof(float));
        for (int k = 0; k < n; k++) wt[k] = c->j->diag[c->j->perm ? c->j->perm[j + k] : j + k];
    }
    for (int r = 0; r < nr; r++) {
        for (int k = 0; k < n; k++) x[k] = c->Wt[(size_t)(j + k) * c->rows + r0 + r];
        gq_qm_params_clip(x, wt, n, mn[r], mx[r], q, &sc[r], &zr[r]);
    }
    free(x);
    free(wt);
}

/* Columns [i1, i2) for rows [r0, r1): W1 [cnt][rows] is the block's working
 * copy, Err [cnt][rows] receives the scaled errors. */
static void solve_tile(const solve_ctx *c, int i1, int i2, int r0, int r1, float *W1, float *Err) {
    const gq_gptq_job *jb = c->j;
    const int rows = c->rows, cols = c->cols, cnt = i2 - i1, nr = r1 - r0, maxq = jb->q.maxq;
    gq_qresult *res = jb->res;
    for (int i = 0; i < cnt; i++) {
        const int j = i1 + i;
        const int oc = jb->perm ? jb->perm[j] : j; /* original column */
        if (jb->mode == GQ_GROUPS_DYNAMIC && j % c->gs == 0) dynamic_params(c, j, r0, r1);
        const int g = jb->gcol[j];
        const float *sc = res->scales + (size_t)g * rows + r0;
        const int32_t *zr = res->zeros + (size_t)g * rows + r0;
        const float d = c->Hinv ? c->Hinv[(size_t)j * cols + j] : 1.0f;
        const float d2 = d * d;
        float *w = W1 + (size_t)i * rows + r0;
        float *e = Err + (size_t)i * rows + r0;
        for (int r = 0; r < nr; r++) {
            int q = gq_quant_code(w[r], sc[r], zr[r], maxq);
            float dq = gq_dequant(q, sc[r], zr[r]);
            size_t o = (size_t)(r0 + r) * cols + oc;
            res->codes[o] = (uint8_t)q;
            c->Wout[o] = dq;
            float diff = w[r] - dq;
            if (c->Hinv) c->row_loss[r0 + r] += (double)(diff * diff / d2 / 2.0f);
            e[r] = diff / d;
        }
        if (!c->Hinv) continue;
        const float *h = c->Hinv + (size_t)j * cols + i1; /* Hinv[j][i1 ..] */
        for (int k = i + 1; k < cnt; k++) {
            const float hk = h[k];
            float *wk = W1 + (size_t)k * rows + r0;
            for (int r = 0; r < nr; r++) wk[r] -= e[r] * hk;
        }
    }
}

/* solve: the lazy blocks over Wt; the factor scratch is freed first. */
static int cpu_solve(gq_gptq_job *j, int use_factor, double *row_loss) {
    cpu_state *st = j->state;
    gq_free_aligned(st->Hd);
    st->Hd = NULL;
    const gq_gptq_params *p = j->p;
    const solve_ctx c = {j, j->rows, j->cols, j->gs, st->Wt, use_factor ? j->H : NULL, (float *)j->W->data, row_loss};
    const int rows = c.rows, cols = c.cols;
    const int B = p->method == GQ_METHOD_GPTQ && p->block_size > 0 ? p->block_size : 128;
    const int bs = B < cols ? B : cols;
    float *W1 = gq_malloc_aligned((size_t)bs * rows * sizeof(float));  /* [bs][rows] */
    float *Err = gq_malloc_aligned((size_t)bs * rows * sizeof(float)); /* [bs][rows] */
    const int ntiles = (rows + ROW_TILE - 1) / ROW_TILE;
    for (int i1 = 0; i1 < cols; i1 += bs) {
        const int i2 = i1 + bs < cols ? i1 + bs : cols, cnt = i2 - i1;
        memcpy(W1, c.Wt + (size_t)i1 * rows, (size_t)cnt * rows * sizeof(float));
#pragma omp parallel for schedule(static)
        for (int t = 0; t < ntiles; t++) {
            int r0 = t * ROW_TILE, r1 = r0 + ROW_TILE < rows ? r0 + ROW_TILE : rows;
            solve_tile(&c, i1, i2, r0, r1, W1, Err);
        }
        if (c.Hinv && i2 < cols) {
            /* W[:, i2:] -= Err1 Hinv[i1:i2, i2:], transposed:
             * Wt[i2:][rows] -= Hinv[i1:i2, i2:]^T [cols-i2][cnt] * Err [cnt][rows] */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols - i2, rows, cnt, -1.0f,
                        c.Hinv + (size_t)i1 * cols + i2, cols, Err, rows, 1.0f, c.Wt + (size_t)i2 * rows, rows);
        }
    }
    gq_free_aligned(W1);
    gq_free_aligned(Err);
    return GQ_OK;
}

/* ---- finish and the table ----------------------------------------------------- */

/* finish: codes, params and W are in place already; fp16 scales out and W
 * dequantized with them (round_out). */
static int cpu_finish(gq_gptq_job *j) {
    if (j->round_out) {
        gq_qresult_round_scales(j->res);
        gq_qresult_dequant(j->res, (float *)j->W->data);
    }
    return GQ_OK;
}

static void cpu_release(gq_gptq_job *j) {
    cpu_state *st = j->state;
    if (!st) return;
    gq_free_aligned(st->Wt);
    gq_free_aligned(st->Hd);
    st->Wt = NULL;
    st->Hd = NULL;
}

const gq_gptq_ops gq_gptq_cpu_ops = {
    .name = "CPU",
    .max_block = 0,
    .state_bytes = sizeof(cpu_state),
    .scan = cpu_scan,
    .prepare = cpu_prepare,
    .factor = cpu_factor,
    .solve = cpu_solve,
    .finish = cpu_finish,
    .release = cpu_release,
};

/* The backend's `gptq` entry (backend_cpu.c's vtable). */
int gq_cpu_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res);

int gq_cpu_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res) {
    return gq_gptq_drive(&gq_gptq_cpu_ops, be, p, W, H, h_scale, res);
}
