/*
 * gptq.c -- the GPTQ driver: one solve (IST-DASLab/gptq `GPTQ.fasterquant`,
 * gptq-reference.md §1.1, and round-to-nearest with the same outputs) over
 * a backend's primitives (quant/gptq_driver.h): the CPU's
 * (compute/cpu/backend_cpu_gptq.c) for gq_gptq_quantize and the CPU
 * backend, the GPU's (compute/cuda/gptq.cu) for the CUDA backend.
 *
 *   checks (params, block limit)    scan: non-finite W / H, diag(H) [cols]
 *   dead columns: diag 0 -> 1 (W[:, i] = 0 in the working copy), mean(diag)
 *   group mode, act-order perm (stable argsort of diag, descending),
 *   gcol [cols] (group of each permuted column), g_idx [cols]
 *   prepare: group params up front, W -> permuted fp32 working copy
 *   factor(damp * mean), retried with damp x10 (0.01 from 0) up to
 *   max_retries, each failure logged; all failed -> RTN fallback (loud)
 *   solve (GPTQ over the factor, or RTN), row losses [rows] -> loss
 *   (non-finite: GQ_ERR_NUMERIC), finish (outputs into the gq_qresult)
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

#include "gq/gptq.h"
#include "quant/gptq_driver.h"

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
        if (p->max_retries < 0) return gq_err(GQ_ERR_ARG, "gptq: max_retries must be >= 0, got %d", p->max_retries);
    }
    if (p->clip != GQ_CLIP_MINMAX && p->clip != GQ_CLIP_MSE && p->clip != GQ_CLIP_MSE_H)
        return gq_err(GQ_ERR_ARG, "gptq: unknown clip mode %d", (int)p->clip);
    if (p->clip != GQ_CLIP_MINMAX) {
        if (p->clip_grid < 1 || p->clip_grid > 100000)
            return gq_err(GQ_ERR_ARG, "gptq: clip grid must be in [1, 100000], got %d", p->clip_grid);
        if (!(p->clip_maxshrink > 0.0 && p->clip_maxshrink <= 1.0) || (int)(p->clip_maxshrink * p->clip_grid) < 1)
            return gq_err(GQ_ERR_ARG, "gptq: clip maxshrink must be in (0, 1] with at least one candidate, got %g",
                          p->clip_maxshrink);
        if (!(p->clip_norm > 0.0f) || isinf(p->clip_norm))
            return gq_err(GQ_ERR_ARG, "gptq: clip norm must be a finite value > 0, got %g", (double)p->clip_norm);
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

/* ---- the driver ------------------------------------------------------------ */

/* Scan W and H on the backend; a non-finite element is GQ_ERR_NUMERIC named by its position. */
static int scan_inputs(const gq_gptq_ops *ops, gq_gptq_job *j, float *diag) {
    gq_gptq_scan s = {-1, -1, 0.0, 0.0};
    int rc = ops->scan(j, &s, diag);
    if (rc != GQ_OK) return rc;
    if (s.w_index >= 0) {
        int r = (int)(s.w_index / j->cols), c = (int)(s.w_index % j->cols);
        return gq_err(GQ_ERR_NUMERIC, "gptq: W[%d][%d] (output row %d, input column %d) is %g", r, c, r, c, s.w_value);
    }
    if (j->gptq && s.h_index >= 0) {
        int r = (int)(s.h_index / j->cols), c = (int)(s.h_index % j->cols);
        return gq_err(GQ_ERR_NUMERIC, "gptq: Hessian H[%d][%d] (row %d, column %d) is %g", r, c, r, c, s.h_value);
    }
    return GQ_OK;
}

/* Host-side arrays of one solve (freed by the driver). */
typedef struct {
    float *diag;             /* [cols] */
    uint8_t *dead;           /* [cols] */
    int32_t *invperm, *gcol; /* [cols] */
    double *row_loss;        /* [rows] */
} drive_arrays;

/* Dead columns (diag 0 -> 1), the group mode, act-order, the group of every
 * column; returns mean(diag) after the fix (0 for RTN). */
static double setup_columns(gq_gptq_job *j, drive_arrays *a) {
    const gq_gptq_params *p = j->p;
    const int cols = j->cols;
    gq_qresult *res = j->res;
    double mean = 0.0;
    j->ngroups = res->ngroups;
    j->gs = p->group_size > 0 && p->group_size < cols ? p->group_size : cols;
    j->mode = p->group_size == -1 ? GQ_GROUPS_ONE : GQ_GROUPS_DYNAMIC;
    if (j->gptq) {
        for (int i = 0; i < cols; i++) {
            if (a->diag[i] == 0.0f) {
                if (!a->dead) a->dead = gq_calloc((size_t)cols, 1);
                a->diag[i] = 1.0f;
                a->dead[i] = 1;
                res->n_dead++;
            }
            mean += a->diag[i];
        }
        mean /= cols;
        j->diag = a->diag;
        j->dead = a->dead;
        j->n_dead = res->n_dead;
        if (p->group_size > 0 && p->static_groups && j->mode != GQ_GROUPS_ONE) j->mode = GQ_GROUPS_STATIC;
        if (p->act_order) {
            gq_gptq_act_order_perm(a->diag, cols, res->perm);
            a->invperm = gq_malloc((size_t)cols * sizeof(int32_t));
            for (int i = 0; i < cols; i++) a->invperm[res->perm[i]] = i;
            j->perm = res->perm;
            j->invperm = a->invperm;
        }
    }
    a->gcol = gq_malloc((size_t)cols * sizeof(int32_t));
    for (int c = 0; c < cols; c++) {
        const int oc = j->perm ? j->perm[c] : c; /* original column */
        a->gcol[c] = j->mode == GQ_GROUPS_ONE ? 0 : j->mode == GQ_GROUPS_STATIC ? oc / j->gs : c / j->gs;
        res->g_idx[oc] = a->gcol[c];
    }
    j->gcol = a->gcol;
    return mean;
}

/* Factor the damped Hessian, retrying with 10x damping: 0 on success (the
 * factor over H), 1 when every attempt failed (fallback), or the status of
 * another error. */
static int factor_with_retries(const gq_gptq_ops *ops, gq_gptq_job *j, double mean) {
    const gq_gptq_params *p = j->p;
    const int n = j->cols;
    double damp = p->damp;
    int rc = GQ_ERR_NOT_PD;
    for (int attempt = 0; attempt <= p->max_retries; attempt++) {
        if (attempt > 0) {
            double next = damp > 0.0 ? damp * 10.0 : 0.01;
            gq_warn("gptq: %d x %d Hessian: %s (damp %g); retry %d/%d with damp %g", n, n, gq_errmsg(), damp, attempt,
                    p->max_retries, next);
            damp = next;
            j->res->retries = attempt;
        }
        rc = ops->factor(j, damp * mean);
        if (rc != GQ_ERR_NOT_PD) break;
    }
    j->res->damp_used = damp;
    if (rc == GQ_OK) {
        gq_err_clear();
        return 0;
    }
    if (rc != GQ_ERR_NOT_PD) return rc;
    gq_warn("gptq: %d x %d Hessian: %s (damp %g)", n, n, gq_errmsg(), damp);
    return 1;
}

/* res->row_loss and res->loss from the solve's fp64 row losses; a
 * non-finite one is an error (the outputs are not written then). */
static int sum_losses(const gq_gptq_job *j, const double *row_loss) {
    gq_qresult *res = j->res;
    int bad_row = -1;
    res->loss = 0.0;
    for (int r = 0; r < j->rows; r++) {
        res->row_loss[r] = (float)row_loss[r];
        res->loss += row_loss[r];
        if (bad_row < 0 && !isfinite(row_loss[r])) bad_row = r;
    }
    if (bad_row < 0) return GQ_OK;
    return gq_err(GQ_ERR_NUMERIC,
                  "gptq: %d x %d module: the error feedback overflowed (row %d has a non-finite loss); the "
                  "Hessian is too badly conditioned for fp32 (damp %g)",
                  j->rows, j->cols, bad_row, j->p->damp);
}

static int check_all(const gq_gptq_ops *ops, const gq_gptq_params *p, int rows, int cols, const float *H) {
    int rc = gq_gptq_check_params(p, rows, cols, H);
    if (rc != GQ_OK) return rc;
    if (ops->max_block > 0 && p->method == GQ_METHOD_GPTQ && p->block_size > ops->max_block)
        return gq_err(GQ_ERR_UNSUPPORTED, "gptq on %s: block size %d, at most %d supported", ops->name, p->block_size,
                      ops->max_block);
    return GQ_OK;
}

#define TRY(x)                                                                                                         \
    do {                                                                                                               \
        rc = (x);                                                                                                      \
        if (rc != GQ_OK) goto out;                                                                                     \
    } while (0)

int gq_gptq_drive(const gq_gptq_ops *ops, gq_backend *be, const gq_gptq_params *p, gq_bweight *W, float *H,
                  double h_scale, gq_qresult *res) {
    const double t0 = gq_now();
    memset(res, 0, sizeof *res);
    const int rows = W->rows, cols = W->cols;
    int rc = check_all(ops, p, rows, cols, H);
    if (rc != GQ_OK) return rc;
    gq_gptq_job j;
    memset(&j, 0, sizeof j);
    j.be = be, j.p = p, j.W = W, j.H = H, j.h_scale = h_scale, j.rows = rows, j.cols = cols;
    j.gptq = p->method == GQ_METHOD_GPTQ;
    j.q = gq_gptq_qcfg(p, j.gptq); /* mse-h weights: diag(H), so not for RTN */
    j.round_out = p->out_f16 && !p->scale_f16;
    j.state = gq_calloc(1, ops->state_bytes ? ops->state_bytes : 1);
    drive_arrays a = {0};
    if (j.gptq) a.diag = gq_malloc((size_t)cols * sizeof(float));
    double t1 = t0, t2 = t0, t3 = t0;

    TRY(scan_inputs(ops, &j, a.diag));
    gq_qresult_init(res, p, rows, cols);
    j.res = res;
    const double mean = setup_columns(&j, &a);
    TRY(ops->prepare(&j));
    t1 = gq_now();
    j.t_prep = t1 - t0;

    int fallback = 0;
    if (j.gptq) {
        rc = factor_with_retries(ops, &j, mean);
        if (rc < 0) goto out;
        fallback = rc;
        rc = GQ_OK;
        if (fallback) {
            res->fallback = 1;
            gq_warn("gptq: *** %d x %d module: the Hessian stayed not positive definite after %d retries (damp up "
                    "to %g); FALLING BACK TO ROUND-TO-NEAREST for this module ***",
                    rows, cols, p->max_retries, res->damp_used);
            gq_err_clear();
        }
    }
    t2 = gq_now();
    j.t_factor = t2 - t1;

    a.row_loss = gq_calloc((size_t)rows, sizeof(double));
    TRY(ops->solve(&j, j.gptq && !fallback, a.row_loss));
    t3 = gq_now();
    j.t_solve = t3 - t2;
    TRY(sum_losses(&j, a.row_loss));
    TRY(ops->finish(&j));
    res->seconds = gq_now() - t0;
    gq_debug("gptq (%s): %d x %d: %.3f s (prep %.3f, inverse factor %.3f, blocks %.3f, output %.3f s), loss %.6g",
             ops->name, rows, cols, res->seconds, t1 - t0, t2 - t1, t3 - t2, gq_now() - t3, res->loss);

out:
    ops->release(&j);
    free(j.state);
    free(a.diag), free(a.dead), free(a.invperm), free(a.gcol), free(a.row_loss);
    if (rc != GQ_OK) gq_qresult_free(res);
    return rc;
}

int gq_gptq_quantize(const gq_gptq_params *p, float *W, int rows, int cols, float *H, gq_qresult *res) {
    memset(res, 0, sizeof *res);
    if (!W) return gq_err(GQ_ERR_ARG, "gptq: W must not be NULL");
    gq_bweight w = {.data = W, .rows = rows, .cols = cols, .dtype = GQ_DT_F32};
    return gq_gptq_drive(&gq_gptq_cpu_ops, NULL, p, &w, H, 1.0, res);
}
