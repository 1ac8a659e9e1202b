/*
 * model_quant.c -- load a GPTQ-quantized linear (AutoGPTQ layout, pack.h:
 * qweight I32 [K bits/32][N], qzeros I32 [G][N bits/32], scales F16 [G][N],
 * g_idx I32 [K]) and dequantize it to f32 [N][K]. checkpoint_format "gptq"
 * stores zero - 1, "gptq_v2" the zero itself. A missing g_idx means the
 * trivial one, k / group_size.
 */
#include <stdlib.h>
#include <string.h>

#include "gq/model.h"
#include "gq/pack.h"

/* Find `prefix.suffix`, check dtype and shape, copy its bytes (aligned) into *out. */
static int read_raw(const gq_st *st, const char *where, const char *prefix, const char *suffix, gq_dtype dt,
                    int64_t d0, int64_t d1, int ndim, void **out) {
    char name[224];
    snprintf(name, sizeof name, "%s.%s", prefix, suffix);
    const gq_st_tensor *t = gq_st_find(st, name);
    if (!t) return gq_err(GQ_ERR_FORMAT, "%s: quantized linear: tensor '%s' is missing", where, name);
    if (t->dtype != dt)
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': expected dtype %s, got %s", where, name, gq_dtype_name(dt),
                      gq_dtype_name(t->dtype));
    int64_t dims[2] = {d0, d1};
    int rc = gq_st_check_shape(st, t, ndim, dims);
    if (rc != GQ_OK) return rc;
    *out = gq_malloc(t->nbytes);
    memcpy(*out, t->data, t->nbytes);
    gq_st_release(st, t);
    return GQ_OK;
}

int gq_qlinear_read(const gq_st *st, const char *where, const char *prefix, int rows, int cols, int bits,
                    int group_size, int v2, gq_packed *p) {
    memset(p, 0, sizeof *p);
    int N = rows, K = cols;
    int rc = gq_pack_check(N, K, bits);
    if (rc != GQ_OK) return gq_err_prefix("%s: %s", where, prefix);
    /* the group count from the scales (a layer file of any group size), else from group_size */
    char sname[224];
    snprintf(sname, sizeof sname, "%s.scales", prefix);
    const gq_st_tensor *ts = gq_st_find(st, sname);
    int G = group_size > 0 ? (K + group_size - 1) / group_size : 1;
    if (ts && ts->ndim == 2 && ts->shape[0] >= 1 && ts->shape[0] <= K) G = (int)ts->shape[0];

    p->bits = bits, p->rows = N, p->cols = K, p->ngroups = G, p->v2 = v2;
    rc = read_raw(st, where, prefix, "qweight", GQ_DT_I32, gq_pack_qw_rows(K, bits), N, 2, (void **)&p->qweight);
    if (rc == GQ_OK)
        rc = read_raw(st, where, prefix, "qzeros", GQ_DT_I32, G, gq_pack_qz_cols(N, bits), 2, (void **)&p->qzeros);
    if (rc == GQ_OK) rc = read_raw(st, where, prefix, "scales", GQ_DT_F16, G, N, 2, (void **)&p->scales);
    if (rc == GQ_OK) {
        char name[224];
        snprintf(name, sizeof name, "%s.g_idx", prefix);
        if (gq_st_find(st, name)) {
            rc = read_raw(st, where, prefix, "g_idx", GQ_DT_I32, K, -1, 1, (void **)&p->g_idx);
        } else {
            p->g_idx = gq_malloc(sizeof(int32_t) * (size_t)K);
            for (int k = 0; k < K; k++) p->g_idx[k] = group_size > 0 ? k / group_size : 0;
        }
    }
    if (rc != GQ_OK) gq_packed_free(p);
    return rc;
}

int gq_qlinear_load(const gq_st *st, const char *where, const char *prefix, int rows, int cols, int bits,
                    int group_size, int v2, float **w) {
    *w = NULL;
    gq_packed p;
    int rc = gq_qlinear_read(st, where, prefix, rows, cols, bits, group_size, v2, &p);
    if (rc != GQ_OK) return rc;
    float *W = gq_malloc_aligned((size_t)rows * cols * sizeof(float)); /* [N][K] */
    rc = gq_packed_dequant(&p, W);
    if (rc != GQ_OK) {
        gq_free_aligned(W);
        gq_err_prefix("%s: %s", where, prefix);
    } else {
        *w = W;
    }
    gq_packed_free(&p);
    return rc;
}
