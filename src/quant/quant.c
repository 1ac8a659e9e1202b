/*
 * quant.c -- the group-wise min-max integer quantizer (the scalar reference,
 * IST-DASLab/gptq quant.py `Quantizer.find_params` / `quantize`), the
 * quantizer result container and its dequantization.
 *
 * Everything is float arithmetic in the order torch does it, so that the
 * codes match a torch run bit for bit: scale = (xmax - xmin) / maxq as one
 * float division, zero = rint(-xmin / scale), q = clamp(rint(x / scale) +
 * zero, 0, maxq) with rint = round half to even. The math itself is
 * gq/quant_math.h, shared with the CUDA kernels.
 */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__STRICT_ANSI__) && !defined(GQ_FP_CONTRACT_OFF)
#error "build in ISO C mode (-std=c11), or with -ffp-contract=off -DGQ_FP_CONTRACT_OFF: GNU modes contract into FMA"
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/gptq.h"
#include "gq/pack.h"

void gq_gptq_params_default(gq_gptq_params *p) {
    memset(p, 0, sizeof *p);
    p->method = GQ_METHOD_GPTQ;
    p->bits = 4;
    p->group_size = 128;
    p->sym = 1;
    p->act_order = 0;
    p->static_groups = 0;
    p->damp = 0.01;
    p->block_size = 128;
    p->zero_policy = GQ_ZERO_V1;
    p->max_retries = 8;
    p->scale_f16 = 0;
    p->out_f16 = 1;
    p->clip = GQ_CLIP_MINMAX;
    p->clip_grid = GQ_CLIP_GRID;
    p->clip_maxshrink = GQ_CLIP_MAXSHRINK;
    p->clip_norm = GQ_CLIP_NORM;
}

gq_qcfg gq_gptq_qcfg(const gq_gptq_params *p, int weighted) {
    gq_qcfg q;
    memset(&q, 0, sizeof q);
    q.maxq = gq_maxq(p->bits);
    q.sym = p->sym;
    q.zero_free = p->zero_policy == GQ_ZERO_FREE;
    q.scale_f16 = p->scale_f16;
    if (p->clip != GQ_CLIP_MINMAX) {
        q.clip_n = (int)(p->clip_maxshrink * p->clip_grid);
        q.clip_grid = p->clip_grid;
        q.clip_norm = p->clip_norm;
        q.clip_weighted = p->clip == GQ_CLIP_MSE_H && weighted;
    }
    return q;
}

const char *gq_clip_name(gq_clip c) {
    return c == GQ_CLIP_MSE ? "mse" : c == GQ_CLIP_MSE_H ? "mse-h" : c == GQ_CLIP_MINMAX ? "minmax" : "?";
}

int gq_clip_parse(const char *s, gq_clip *out) {
    static const gq_clip all[] = {GQ_CLIP_MINMAX, GQ_CLIP_MSE, GQ_CLIP_MSE_H};
    for (size_t i = 0; s && i < sizeof all / sizeof *all; i++)
        if (!strcmp(s, gq_clip_name(all[i]))) {
            *out = all[i];
            return GQ_OK;
        }
    return gq_err(GQ_ERR_ARG, "--clip: expected minmax, mse or mse-h, got \"%s\"", s ? s : "(null)");
}

/* ---- result container ---------------------------------------------------- */

static int qresult_ngroups(const gq_gptq_params *p, int cols) {
    if (p->group_size <= 0 || p->group_size >= cols) return 1;
    return (cols + p->group_size - 1) / p->group_size;
}

static void *alloc_array(size_t n, size_t elem) {
    size_t bytes;
    GQ_ASSERT(gq_mul_size(n, elem, &bytes));
    return gq_calloc(bytes ? bytes : 1, 1);
}

void gq_qresult_init(gq_qresult *r, const gq_gptq_params *p, int rows, int cols) {
    GQ_ASSERT(rows > 0 && cols > 0);
    memset(r, 0, sizeof *r);
    r->rows = rows;
    r->cols = cols;
    r->ngroups = qresult_ngroups(p, cols);
    r->codes = alloc_array((size_t)rows * (size_t)cols, 1);           /* [rows][cols] */
    r->scales = alloc_array((size_t)r->ngroups * (size_t)rows, sizeof(float));   /* [ngroups][rows] */
    r->zeros = alloc_array((size_t)r->ngroups * (size_t)rows, sizeof(int32_t)); /* [ngroups][rows] */
    r->g_idx = alloc_array((size_t)cols, sizeof(int32_t));            /* [cols] */
    if (p->act_order && p->method == GQ_METHOD_GPTQ) r->perm = alloc_array((size_t)cols, sizeof(int32_t));
    r->row_loss = alloc_array((size_t)rows, sizeof(float)); /* [rows] */
    r->damp_used = p->damp;
}

void gq_qresult_free(gq_qresult *r) {
    if (!r) return;
    free(r->codes);
    free(r->scales);
    free(r->zeros);
    free(r->g_idx);
    free(r->perm);
    free(r->qweight);
    free(r->row_loss);
    memset(r, 0, sizeof *r);
}

void gq_qresult_dequant(const gq_qresult *r, float *W) {
    const int rows = r->rows, cols = r->cols;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < rows; n++) {
        const uint8_t *q = r->codes + (size_t)n * cols;
        float *w = W + (size_t)n * cols;
        for (int k = 0; k < cols; k++) {
            size_t gi = (size_t)r->g_idx[k] * rows + n;
            w[k] = gq_dequant(q[k], r->scales[gi], r->zeros[gi]);
        }
    }
}

/* ---- quantizer params (the math: gq/quant_math.h) ------------------------------------------ */

void gq_qresult_round_scales(gq_qresult *r) {
    for (size_t i = 0; i < (size_t)r->ngroups * r->rows; i++) r->scales[i] = gq_round_scale_f16(r->scales[i]);
}

void gq_quant_params_minmax(float xmin, float xmax, int bits, int sym, gq_zero_policy zp, int scale_f16,
                            float *scale, int32_t *zero) {
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.bits = bits, p.sym = sym, p.zero_policy = zp, p.scale_f16 = scale_f16;
    gq_qm_params(xmin, xmax, gq_gptq_qcfg(&p, 0), scale, zero);
}

void gq_quant_params_ex(const float *x, int n, int stride, int bits, int sym, gq_zero_policy zp, int scale_f16,
                        float *scale, int32_t *zero) {
    float mn = 0.0f, mx = 0.0f; /* min(min(x), 0), max(max(x), 0) */
    for (int i = 0; i < n; i++) {
        float v = x[(size_t)i * (size_t)stride];
        if (v < mn) mn = v;
        if (v > mx) mx = v;
    }
    gq_quant_params_minmax(mn, mx, bits, sym, zp, scale_f16, scale, zero);
}

void gq_quant_params(const float *x, int n, int stride, int bits, int sym, gq_zero_policy zp, float *scale,
                     int32_t *zero) {
    gq_quant_params_ex(x, n, stride, bits, sym, zp, 1, scale, zero);
}

void gq_qresult_gather(const gq_qresult *const *parts, const int *row0, int np, int r0, int n, gq_qresult *o) {
    GQ_ASSERT(np > 0 && r0 >= 0 && n > 0);
    memset(o, 0, sizeof *o);
    const gq_qresult *f = NULL; /* the first part with rows in [r0, r0 + n): the shared metadata */
    int codes = 1, qw = 1, covered = 0;
    for (int p = 0; p < np; p++) {
        const int lo = row0[p] > r0 ? row0[p] : r0, hi = row0[p] + parts[p]->rows < r0 + n ? row0[p] + parts[p]->rows : r0 + n;
        if (lo >= hi) continue;
        if (!f) f = parts[p];
        codes = codes && parts[p]->codes;
        qw = qw && parts[p]->qweight && parts[p]->qweight_bits == f->qweight_bits;
        covered += hi - lo;
    }
    GQ_ASSERT(f && covered == n);
    o->rows = n, o->cols = f->cols, o->ngroups = f->ngroups;
    const size_t qw_rows = qw ? (size_t)gq_pack_qw_rows(f->cols, f->qweight_bits) : 0;
    if (codes) o->codes = gq_malloc((size_t)n * f->cols);
    o->scales = gq_malloc((size_t)f->ngroups * n * sizeof(float));
    o->zeros = gq_malloc((size_t)f->ngroups * n * sizeof(int32_t));
    o->g_idx = gq_malloc((size_t)f->cols * sizeof(int32_t));
    memcpy(o->g_idx, f->g_idx, (size_t)f->cols * sizeof(int32_t));
    if (f->perm) {
        o->perm = gq_malloc((size_t)f->cols * sizeof(int32_t));
        memcpy(o->perm, f->perm, (size_t)f->cols * sizeof(int32_t));
    }
    if (qw) o->qweight = gq_malloc(qw_rows * n * sizeof(int32_t)), o->qweight_bits = f->qweight_bits;
    o->row_loss = gq_malloc((size_t)n * sizeof(float));
    o->n_dead = f->n_dead;
    for (int p = 0; p < np; p++) {
        const gq_qresult *r = parts[p];
        const int lo = row0[p] > r0 ? row0[p] : r0, hi = row0[p] + r->rows < r0 + n ? row0[p] + r->rows : r0 + n;
        if (lo >= hi) continue;
        const size_t s = (size_t)(lo - row0[p]), d = (size_t)(lo - r0), c = (size_t)(hi - lo); /* source, dest, rows */
        if (codes) memcpy(o->codes + d * f->cols, r->codes + s * f->cols, c * f->cols);
        for (int g = 0; g < f->ngroups; g++) {
            memcpy(o->scales + (size_t)g * n + d, r->scales + (size_t)g * r->rows + s, c * sizeof(float));
            memcpy(o->zeros + (size_t)g * n + d, r->zeros + (size_t)g * r->rows + s, c * sizeof(int32_t));
        }
        for (size_t i = 0; i < qw_rows; i++) /* [qw_rows][rows]: the output rows are qweight's columns */
            memcpy(o->qweight + i * n + d, r->qweight + i * r->rows + s, c * sizeof(int32_t));
        memcpy(o->row_loss + d, r->row_loss + s, c * sizeof(float));
        o->damp_used = r->damp_used > o->damp_used ? r->damp_used : o->damp_used;
        o->retries = r->retries > o->retries ? r->retries : o->retries;
        o->fallback |= r->fallback;
        o->seconds = r->seconds > o->seconds ? r->seconds : o->seconds;
    }
    for (int i = 0; i < n; i++) o->loss += o->row_loss[i];
}

void gq_qresult_slice(const gq_qresult *r, int r0, int n, gq_qresult *o) {
    const int zero = 0;
    gq_qresult_gather(&r, &zero, 1, r0, n, o);
}
