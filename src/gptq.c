/*
 * gptq.c -- the GPTQ solve on the CPU (OpenBLAS + LAPACKE + OpenMP), as
 * IST-DASLab/gptq `GPTQ.fasterquant` does it (gptq-reference.md §1.1), and
 * round-to-nearest with the same outputs.
 *
 * Data flow of gq_gptq_quantize:
 *   W [rows][cols] --(dead columns zeroed, columns permuted)--> Wt [cols][rows]
 *   H [cols][cols] --(permuted, dead diag = 1, damped, fp64)--> Hd
 *       --potrf/potri/potrf--> U (upper, H^-1 = U^T U) --f32--> Hinv (in H)
 *   lazy blocks of block_size columns over Wt: per column quantize, error
 *   err = (w - q) / U_jj fed to the rest of the block; after the block one
 *   sgemm updates the columns to its right.
 * The transposed working copy makes a column of W contiguous, so the
 * in-block updates are vector loops over rows (OpenMP over row tiles) and the
 * between-block update is a single GEMM.
 *
 * Differences from the reference, all deliberate:
 *   - the inverse factor is computed in double precision (the reference
 *     uses fp32 Cholesky); codes can differ on values that sit within a few
 *     ulps of a rounding tie;
 *   - act-order sorts with a stable sort (ties keep the lower column index
 *     first); torch.argsort is not stable, but exact ties of diag(H) are
 *     rare with real data (dead columns all have diag 1 after the fix);
 *   - a Cholesky failure is retried with 10x damping instead of raising,
 *     then falls back to RTN (see gq_gptq_quantize in gptq.h);
 *   - scales are rounded to fp16 before use unless p->scale_f16 == 0.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <lapacke.h>

#include "gq/gptq.h"

/* Rows handled together by one thread in the in-block loop: a block of 128
 * columns x 128 rows of f32 is 64 KiB, which stays in L2. */
#define ROW_TILE 128

/* How the group of permuted column j is found. */
typedef enum {
    GROUPS_ONE = 0, /* group_size -1: one group per row, params fixed up front */
    GROUPS_STATIC,  /* params precomputed per original-order group           */
    GROUPS_DYNAMIC, /* params computed at each group start from the global W  */
} group_mode;

typedef struct {
    const gq_gptq_params *p;
    int rows, cols, gs, maxq;
    group_mode mode;
    float *Wt;            /* [cols][rows] global W, permuted, transposed   */
    const float *Hinv;    /* [cols][cols] upper factor, NULL = identity     */
    const int32_t *perm;  /* [cols] permuted position -> original column, or NULL */
    float *Wout;          /* [rows][cols] dequantized output, original order */
    double *row_loss;     /* [rows] */
    gq_qresult *res;
} solve_ctx;

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

static int check_params(const gq_gptq_params *p, int rows, int cols, const float *W, const float *H) {
    if (!W) return gq_err(GQ_ERR_ARG, "gptq: W must not be NULL");
    return gq_gptq_check_params(p, rows, cols, H);
}

/* ---- checks ------------------------------------------------------------- */

int gq_gptq_check_params(const gq_gptq_params *p, int rows, int cols, const float *H) {
    if (!p) return gq_err(GQ_ERR_ARG, "gptq: params must not be NULL");
    if (rows <= 0 || cols <= 0) return gq_err(GQ_ERR_ARG, "gptq: expected a non-empty W, got %d x %d", rows, cols);
    if (p->method != GQ_METHOD_GPTQ && p->method != GQ_METHOD_RTN)
        return gq_err(GQ_ERR_ARG, "gptq: unknown method %d", (int)p->method);
    if (p->bits != 2 && p->bits != 3 && p->bits != 4 && p->bits != 8)
        return gq_err(GQ_ERR_ARG, "gptq: bits must be 2, 3, 4 or 8, got %d", p->bits);
    if (p->group_size == 0 || p->group_size < -1)
        return gq_err(GQ_ERR_ARG, "gptq: group size must be positive or -1, got %d", p->group_size);
    if (p->zero_policy != GQ_ZERO_V1 && p->zero_policy != GQ_ZERO_FREE)
        return gq_err(GQ_ERR_ARG, "gptq: unknown zero policy %d", (int)p->zero_policy);
    if (p->method == GQ_METHOD_GPTQ) {
        if (!H) return gq_err(GQ_ERR_ARG, "gptq: the GPTQ method needs a Hessian, got NULL");
        if (p->block_size <= 0) return gq_err(GQ_ERR_ARG, "gptq: block size must be positive, got %d", p->block_size);
        if (!(p->damp >= 0.0) || isinf(p->damp))
            return gq_err(GQ_ERR_ARG, "gptq: damping must be a finite value >= 0, got %g", p->damp);
        if (p->max_retries < 0)
            return gq_err(GQ_ERR_ARG, "gptq: max_retries must be >= 0, got %d", p->max_retries);
    }
    return GQ_OK;
}

static int check_finite(const float *W, int rows, int cols, const float *H) {
    for (int r = 0; r < rows; r++) {
        const float *w = W + (size_t)r * cols;
        for (int c = 0; c < cols; c++)
            if (!isfinite(w[c]))
                return gq_err(GQ_ERR_NUMERIC, "gptq: W[%d][%d] (output row %d, input column %d) is %g", r, c, r, c,
                              (double)w[c]);
    }
    if (!H) return GQ_OK;
    for (int i = 0; i < cols; i++) {
        const float *h = H + (size_t)i * cols;
        for (int j = i; j < cols; j++)
            if (!isfinite(h[j]))
                return gq_err(GQ_ERR_NUMERIC, "gptq: Hessian H[%d][%d] (row %d, column %d) is %g", i, j, i, j,
                              (double)h[j]);
    }
    return GQ_OK;
}

/* ---- act-order ------------------------------------------------------------ */

typedef struct {
    float key;
    int32_t idx;
} sort_item;

static int cmp_desc_stable(const void *a, const void *b) {
    const sort_item *x = a, *y = b;
    if (x->key > y->key) return -1;
    if (x->key < y->key) return 1;
    return (x->idx > y->idx) - (x->idx < y->idx); /* ties: lower column first */
}

void gq_gptq_act_order_perm(const float *diag, int n, int32_t *perm) {
    sort_item *it = gq_malloc((size_t)n * sizeof *it);
    for (int i = 0; i < n; i++) it[i] = (sort_item){diag[i], i};
    qsort(it, (size_t)n, sizeof *it, cmp_desc_stable);
    for (int i = 0; i < n; i++) perm[i] = it[i].idx;
    free(it);
}

/* ---- the damped, permuted Hessian in double -------------------------------- */

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

/* ---- the column loop -------------------------------------------------------- */

/* Params of dynamic group g for rows [r0, r1) from the global W (columns
 * [j, j + gs) of Wt: block-start values inside the current block). */
static void dynamic_params(const solve_ctx *c, int j, int r0, int r1) {
    const gq_gptq_params *p = c->p;
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
    float *sc = c->res->scales + (size_t)g * c->rows + r0;
    int32_t *zr = c->res->zeros + (size_t)g * c->rows + r0;
    for (int r = 0; r < nr; r++)
        gq_quant_params_minmax(mn[r], mx[r], p->bits, p->sym, p->zero_policy, p->scale_f16, &sc[r], &zr[r]);
}

/* Group (index into scales/zeros) of permuted column j. */
static int group_of(const solve_ctx *c, int j) {
    switch (c->mode) {
    case GROUPS_ONE: return 0;
    case GROUPS_STATIC: return (c->perm ? c->perm[j] : j) / c->gs;
    case GROUPS_DYNAMIC: return j / c->gs;
    }
    return 0;
}

/* Columns [i1, i2) for rows [r0, r1): W1 [cnt][rows] is the block's working
 * copy, Err [cnt][rows] receives the scaled errors. */
static void solve_tile(const solve_ctx *c, int i1, int i2, int r0, int r1, float *W1, float *Err) {
    const int rows = c->rows, cols = c->cols, cnt = i2 - i1, nr = r1 - r0, maxq = c->maxq;
    for (int i = 0; i < cnt; i++) {
        const int j = i1 + i;
        const int oc = c->perm ? c->perm[j] : j; /* original column */
        if (c->mode == GROUPS_DYNAMIC && j % c->gs == 0) dynamic_params(c, j, r0, r1);
        const int g = group_of(c, j);
        const float *sc = c->res->scales + (size_t)g * rows + r0;
        const int32_t *zr = c->res->zeros + (size_t)g * rows + r0;
        const float d = c->Hinv ? c->Hinv[(size_t)j * cols + j] : 1.0f;
        const float d2 = d * d;
        float *w = W1 + (size_t)i * rows + r0;
        float *e = Err + (size_t)i * rows + r0;
        for (int r = 0; r < nr; r++) {
            int q = gq_quant_code(w[r], sc[r], zr[r], maxq);
            float dq = gq_dequant(q, sc[r], zr[r]);
            size_t o = (size_t)(r0 + r) * cols + oc;
            c->res->codes[o] = (uint8_t)q;
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

static void solve(const solve_ctx *c) {
    const int rows = c->rows, cols = c->cols;
    const int B = c->p->method == GQ_METHOD_GPTQ && c->p->block_size > 0 ? c->p->block_size : 128;
    const int bs = B < cols ? B : cols;
    float *W1 = gq_malloc_aligned((size_t)bs * rows * sizeof(float));  /* [bs][rows] */
    float *Err = gq_malloc_aligned((size_t)bs * rows * sizeof(float)); /* [bs][rows] */
    const int ntiles = (rows + ROW_TILE - 1) / ROW_TILE;
    for (int i1 = 0; i1 < cols; i1 += bs) {
        const int i2 = i1 + bs < cols ? i1 + bs : cols, cnt = i2 - i1;
        memcpy(W1, c->Wt + (size_t)i1 * rows, (size_t)cnt * rows * sizeof(float));
#pragma omp parallel for schedule(static)
        for (int t = 0; t < ntiles; t++) {
            int r0 = t * ROW_TILE, r1 = r0 + ROW_TILE < rows ? r0 + ROW_TILE : rows;
            solve_tile(c, i1, i2, r0, r1, W1, Err);
        }
        if (c->Hinv && i2 < cols) {
            /* W[:, i2:] -= Err1 Hinv[i1:i2, i2:], transposed:
             * Wt[i2:][rows] -= Hinv[i1:i2, i2:]^T [cols-i2][cnt] * Err [cnt][rows] */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols - i2, rows, cnt, -1.0f,
                        c->Hinv + (size_t)i1 * cols + i2, cols, Err, rows, 1.0f, c->Wt + (size_t)i2 * rows, rows);
        }
    }
    gq_free_aligned(W1);
    gq_free_aligned(Err);
}

/* ---- the driver --------------------------------------------------------- */

/* Wt [cols][rows] = W[:, perm]^T, in 64 x 64 tiles so that both the reads
 * and the writes stay within a few cache lines per row. */
static void transpose_permuted(const float *W, int rows, int cols, const int32_t *perm, float *Wt) {
    enum { T = 64 };
    const int ntc = (cols + T - 1) / T, ntr = (rows + T - 1) / T;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < ntc * ntr; t++) {
        int j0 = (t / ntr) * T, r0 = (t % ntr) * T;
        int j1 = j0 + T < cols ? j0 + T : cols, r1 = r0 + T < rows ? r0 + T : rows;
        for (int r = r0; r < r1; r++) {
            const float *src = W + (size_t)r * cols;
            for (int j = j0; j < j1; j++) Wt[(size_t)j * rows + r] = src[perm ? perm[j] : j];
        }
    }
}

/* Factor the damped Hessian, retrying with 10x damping. On success Hinv
 * (f32, upper, [cols][cols]) is written over H; returns 0, or 1 when every
 * attempt failed (H untouched). */
static int factor_with_retries(const gq_gptq_params *p, float *H, const float *diag, const int32_t *perm, int n,
                               gq_qresult *res) {
    double mean = 0.0;
    for (int i = 0; i < n; i++) mean += diag[i];
    mean /= n;
    size_t nn = (size_t)n * (size_t)n;
    double *Hd = gq_malloc_aligned(nn * sizeof(double));
    double damp = p->damp;
    int ok = 0;
    for (int attempt = 0; attempt <= p->max_retries; attempt++) {
        if (attempt > 0) {
            double next = damp > 0.0 ? damp * 10.0 : 0.01;
            gq_warn("gptq: %d x %d Hessian: %s (damp %g); retry %d/%d with damp %g", n, n, gq_errmsg(), damp,
                    attempt, p->max_retries, next);
            damp = next;
            res->retries = attempt;
        }
        build_hd(Hd, H, diag, perm, n, damp * mean);
        if (gq_gptq_hinv(Hd, n) == GQ_OK) {
            ok = 1;
            break;
        }
    }
    if (ok) {
        gq_err_clear();
        res->damp_used = damp;
#pragma omp parallel for schedule(static)
        for (int i = 0; i < n; i++) {
            float *h = H + (size_t)i * n;
            const double *hd = Hd + (size_t)i * n;
            for (int j = 0; j < i; j++) h[j] = 0.0f;
            for (int j = i; j < n; j++) h[j] = (float)hd[j];
        }
    } else {
        gq_warn("gptq: %d x %d Hessian: %s (damp %g)", n, n, gq_errmsg(), damp);
        res->damp_used = damp;
    }
    gq_free_aligned(Hd);
    return ok ? 0 : 1;
}

int gq_gptq_quantize(const gq_gptq_params *p, float *W, int rows, int cols, float *H, gq_qresult *res) {
    double t0 = gq_now();
    memset(res, 0, sizeof *res);
    int st = check_params(p, rows, cols, W, H);
    if (st != GQ_OK) return st;
    const int gptq = p->method == GQ_METHOD_GPTQ;
    st = check_finite(W, rows, cols, gptq ? H : NULL);
    if (st != GQ_OK) return st;

    gq_qresult_init(res, p, rows, cols);
    solve_ctx c = {0};
    c.p = p;
    c.rows = rows;
    c.cols = cols;
    c.maxq = gq_maxq(p->bits);
    c.res = res;
    c.Wout = W;
    c.gs = p->group_size > 0 && p->group_size < cols ? p->group_size : cols;
    c.mode = p->group_size == -1 ? GROUPS_ONE : GROUPS_DYNAMIC;
    c.row_loss = gq_calloc((size_t)rows, sizeof(double));

    /* Per-row params on the whole W, before the dead-column fix (the
     * reference calls find_params on the layer weight first). */
    if (c.mode == GROUPS_ONE) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < rows; r++)
            gq_quant_params_ex(W + (size_t)r * cols, cols, 1, p->bits, p->sym, p->zero_policy, p->scale_f16,
                               &res->scales[r], &res->zeros[r]);
    }

    float *diag = NULL;   /* [cols] diag H after the dead-column fix */
    int32_t *perm = NULL; /* [cols] */
    if (gptq) {
        diag = gq_malloc((size_t)cols * sizeof(float));
        for (int i = 0; i < cols; i++) {
            diag[i] = H[(size_t)i * cols + i];
            if (diag[i] == 0.0f) {
                diag[i] = 1.0f;
                res->n_dead++;
                for (int r = 0; r < rows; r++) W[(size_t)r * cols + i] = 0.0f;
            }
        }
        if (p->group_size > 0 && p->static_groups && c.mode != GROUPS_ONE) {
            c.mode = GROUPS_STATIC;
            for (int g = 0; g < res->ngroups; g++) {
                int k0 = g * c.gs, n = k0 + c.gs < cols ? c.gs : cols - k0;
#pragma omp parallel for schedule(static)
                for (int r = 0; r < rows; r++)
                    gq_quant_params_ex(W + (size_t)r * cols + k0, n, 1, p->bits, p->sym, p->zero_policy,
                                       p->scale_f16, &res->scales[(size_t)g * rows + r],
                                       &res->zeros[(size_t)g * rows + r]);
            }
        }
        if (p->act_order) {
            perm = res->perm;
            gq_gptq_act_order_perm(diag, cols, perm);
            c.perm = perm;
        }
    }

    c.Wt = gq_malloc_aligned((size_t)rows * cols * sizeof(float));
    transpose_permuted(W, rows, cols, perm, c.Wt);

    double t_fact = gq_now();
    if (gptq) {
        if (factor_with_retries(p, H, diag, perm, cols, res) == 0) {
            c.Hinv = H;
        } else {
            res->fallback = 1;
            gq_warn("gptq: *** %d x %d module: the Hessian stayed not positive definite after %d retries (damp up "
                    "to %g); FALLING BACK TO ROUND-TO-NEAREST for this module ***",
                    rows, cols, p->max_retries, res->damp_used);
            gq_err_clear();
        }
    }

    t_fact = gq_now() - t_fact;
    double t_solve = gq_now();
    solve(&c);
    t_solve = gq_now() - t_solve;

    /* g_idx: the group of each original column. */
    for (int j = 0; j < cols; j++) {
        int oc = perm ? perm[j] : j;
        res->g_idx[oc] = group_of(&c, j);
    }
    res->loss = 0.0;
    int bad_row = -1;
    for (int r = 0; r < rows; r++) {
        res->row_loss[r] = (float)c.row_loss[r];
        res->loss += c.row_loss[r];
        if (bad_row < 0 && !isfinite(c.row_loss[r])) bad_row = r;
    }
    gq_free_aligned(c.Wt);
    free(c.row_loss);
    free(diag);
    res->seconds = gq_now() - t0;
    if (bad_row >= 0) {
        gq_qresult_free(res);
        return gq_err(GQ_ERR_NUMERIC,
                      "gptq: %d x %d module: the error feedback overflowed (row %d has a non-finite loss); the "
                      "Hessian is too badly conditioned for fp32 (damp %g)",
                      rows, cols, bad_row, p->damp);
    }
    if (p->out_f16 && !p->scale_f16) { /* fp16 scales out, W dequantized with them */
        gq_qresult_round_scales(res);
        gq_qresult_dequant(res, W);
    }
    gq_debug("gptq: %d x %d: %.3f s (inverse factor %.3f s, column loop %.3f s), loss %.6g", rows, cols,
             res->seconds, t_fact, t_solve, res->loss);
    return GQ_OK;
}
