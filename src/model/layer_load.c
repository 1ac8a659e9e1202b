/* layer_load.c -- a layer's tensors onto a backend (gq_blayer), the head (gq_bhead) and single
 * linears as f32 host arrays, for every family of gq/arch.h. */
#include <stdlib.h>
#include <string.h>

#include "gq/graph.h"

#define TRY(x)                                                                                                         \
    do {                                                                                                               \
        int rc_ = (x);                                                                                                 \
        if (rc_ != GQ_OK) return rc_;                                                                                  \
    } while (0)

/* Where a layer's quantized linears come from: the model itself, or a gq layer file. */
typedef struct {
    const gq_st *st;
    const char *where;
    int bits, group_size, v2;
} qsource;

/* ---- single tensors ------------------------------------------------------------------------ */

/* Tensor `name` (must exist) with a float dtype. */
static int find_float(const gq_model *m, const char *name, const gq_st_tensor **out) {
    const gq_st_tensor *t = gq_st_find(m->st, name);
    *out = NULL;
    if (!t) return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' is missing", m->dir, name);
    if (t->dtype != GQ_DT_F16 && t->dtype != GQ_DT_BF16 && t->dtype != GQ_DT_F32)
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': dtype %s, expected F16, BF16 or F32", m->dir, name,
                      gq_dtype_name(t->dtype));
    *out = t;
    return GQ_OK;
}

/* A vector tensor of n elements as f32 (newly allocated); add1: (1 + w) norms. */
static int read_vec(const gq_model *m, const char *name, int n, int add1, float **out) {
    const gq_st_tensor *t;
    *out = NULL;
    TRY(find_float(m, name, &t));
    int64_t dims[1] = {n};
    TRY(gq_st_check_shape(m->st, t, 1, dims));
    float *v = gq_malloc_aligned((size_t)n * sizeof *v);
    int rc = gq_st_read_f32(m->st, t, v);
    gq_st_release(m->st, t);
    if (rc) {
        gq_free_aligned(v);
        return rc;
    }
    for (int i = 0; i < n && add1; i++) v[i] += 1.0f;
    *out = v;
    return GQ_OK;
}

static int upload_vec(gq_backend *be, const gq_model *m, const char *name, int n, int add1, gq_bweight *w) {
    float *v;
    TRY(read_vec(m, name, n, add1, &v));
    int rc = gq_be_weight_upload(be, w, v, 1, n);
    gq_free_aligned(v);
    return rc;
}

/* The source rows of a raw (not quantized) module: checked against its tensor's shape. */
static int module_rows(const gq_model *m, const char *name, const gq_module *mod, const gq_st_tensor **t,
                       const void **rows) {
    TRY(find_float(m, name, t));
    const gq_st_tensor *x = *t;
    if (!strcmp(mod->src, mod->name)) {
        int64_t dims[2] = {mod->rows, mod->cols};
        TRY(gq_st_check_shape(m->st, x, 2, dims));
    } else if (x->ndim != 3 || x->shape[2] != mod->cols || x->numel / mod->cols < mod->src_row0 + mod->rows) {
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': expected [experts, *, %d] holding rows %lld .. %lld, got %d-d",
                      m->dir, name, mod->cols, (long long)mod->src_row0, (long long)(mod->src_row0 + mod->rows),
                      x->ndim);
    }
    *rows = (const char *)x->data + (size_t)mod->src_row0 * mod->cols * gq_dtype_size(x->dtype);
    return GQ_OK;
}

/* The input tensor of a raw module: "<src>.weight", or a fused expert tensor (no suffix). */
static void src_name(const gq_model *m, int layer, const gq_module *mod, char *name, size_t cap) {
    snprintf(name, cap, "model.layers.%d.%s.weight", layer, mod->src);
    if (strcmp(mod->src, mod->name) && !gq_st_find(m->st, name))
        snprintf(name, cap, "model.layers.%d.%s", layer, mod->src);
}

/* Module mod's rows into W (rows mod->row0 ..): raw rows straight, quantized ones dequantized. */
static int load_module_into(gq_backend *be, const gq_model *m, int layer, const gq_module *mod, const qsource *q,
                            gq_bweight *W) {
    char base[192], name[200];
    snprintf(base, sizeof base, "model.layers.%d.%s", layer, mod->name);
    snprintf(name, sizeof name, "%s.qweight", base);
    if (q && gq_st_find(q->st, name)) {
        float *f = NULL;
        int rc = gq_qlinear_load(q->st, q->where, base, mod->rows, mod->cols, q->bits, q->group_size, q->v2, &f);
        if (!rc) rc = gq_be_weight_set_rows(be, W, mod->row0, mod->rows, f, GQ_DT_F32);
        gq_free_aligned(f);
        return rc;
    }
    src_name(m, layer, mod, name, sizeof name);
    const gq_st_tensor *t;
    const void *src;
    TRY(module_rows(m, name, mod, &t, &src));
    void *copy = NULL;
    size_t esz = gq_dtype_size(t->dtype), bytes = (size_t)mod->rows * mod->cols * esz;
    if ((uintptr_t)src % esz) { /* a misaligned mapping: align a copy */
        copy = gq_malloc_aligned(bytes);
        memcpy(copy, src, bytes);
        src = copy;
    }
    int rc = gq_be_weight_set_rows(be, W, mod->row0, mod->rows, src, t->dtype);
    gq_free_aligned(copy);
    gq_st_release(m->st, t);
    if (rc == GQ_ERR_NUMERIC) return gq_err_prefix("%s: tensor '%s'", m->dir, name);
    return rc;
}

int gq_qlinear_load(const gq_st *st, const char *where, const char *prefix, int rows, int cols, int bits,
                    int group_size, int v2, float **w);

int gq_model_load_module(const gq_model *m, int layer, const gq_module *mod, float **w) {
    *w = NULL;
    char base[192], name[200];
    snprintf(base, sizeof base, "model.layers.%d.%s", layer, mod->name);
    snprintf(name, sizeof name, "%s.qweight", base);
    if (m->quantized && gq_st_find(m->st, name)) {
        const gq_qconfig *q = &m->cfg.quant;
        if (!m->cfg.has_quant)
            return gq_err(GQ_ERR_FORMAT, "%s: '%s' is stored quantized but config.json has no quantization_config",
                          m->dir, base);
        return gq_qlinear_load(m->st, m->dir, base, mod->rows, mod->cols, q->bits, q->group_size,
                               !strcmp(q->format, "gptq_v2"), w);
    }
    src_name(m, layer, mod, name, sizeof name);
    const gq_st_tensor *t;
    const void *src;
    TRY(module_rows(m, name, mod, &t, &src));
    size_t n = (size_t)mod->rows * mod->cols;
    float *f = gq_malloc_aligned(n * sizeof *f);
    int64_t bad = gq_to_f32(f, src, t->dtype, n);
    gq_st_release(m->st, t);
    if (bad >= 0) {
        gq_free_aligned(f);
        return gq_err(GQ_ERR_NUMERIC, "%s: tensor '%s': non-finite value at index %lld", m->dir, name,
                      (long long)((int64_t)mod->src_row0 * mod->cols + bad));
    }
    *w = f;
    return GQ_OK;
}

/* ---- a layer ---------------------------------------------------------------------------------- */

gq_bweight *gq_blayer_weight(gq_blayer *bl, gq_group g, int expert) {
    if (expert < 0) return &bl->w[g];
    GQ_ASSERT(expert < bl->n_experts && (g == GQ_GRP_MLP_IN || g == GQ_GRP_MLP_OUT));
    return g == GQ_GRP_MLP_IN ? &bl->ex_in[expert] : &bl->ex_out[expert];
}

/* Every weight slot of the layer that is still empty (no data and no int4 weight): the expert
 * arrays first when the layer is MoE and has none yet. */
static int blayer_alloc_empty(gq_backend *be, const gq_config *c, int layer, gq_blayer *bl) {
    int moe = c->n_experts > 0 && c->layer_moe[layer], rows, cols;
    for (int g = 0; g < GQ_GRP_COUNT; g++) {
        if (moe && g >= GQ_GRP_MLP_IN) break;
        gq_group_shape(c, layer, (gq_group)g, &rows, &cols);
        if (!bl->w[g].data && !bl->w[g].q4) TRY(gq_be_weight_alloc(be, &bl->w[g], rows, cols));
    }
    if (!moe) return GQ_OK;
    if (!bl->ex_in) {
        bl->n_experts = c->n_experts;
        bl->ex_in = gq_calloc((size_t)c->n_experts, sizeof *bl->ex_in);
        bl->ex_out = gq_calloc((size_t)c->n_experts, sizeof *bl->ex_out);
    }
    for (int e = 0; e < c->n_experts; e++) {
        gq_group_shape(c, layer, GQ_GRP_MLP_IN, &rows, &cols);
        if (!bl->ex_in[e].data && !bl->ex_in[e].q4) TRY(gq_be_weight_alloc(be, &bl->ex_in[e], rows, cols));
        gq_group_shape(c, layer, GQ_GRP_MLP_OUT, &rows, &cols);
        if (!bl->ex_out[e].data && !bl->ex_out[e].q4) TRY(gq_be_weight_alloc(be, &bl->ex_out[e], rows, cols));
    }
    return gq_be_weight_alloc(be, &bl->router, c->n_experts, c->hidden);
}

int gq_blayer_alloc(gq_backend *be, const gq_config *c, int layer, gq_blayer *bl) {
    memset(bl, 0, sizeof *bl);
    return blayer_alloc_empty(be, c, layer, bl);
}

void gq_blayer_free(gq_backend *be, gq_blayer *bl) {
    if (!bl) return;
    for (int g = 0; g < GQ_GRP_COUNT; g++) gq_be_weight_free(be, &bl->w[g]), gq_be_weight_free(be, &bl->b[g]);
    for (int k = 0; k < GQ_NORM_SLOTS; k++) gq_be_weight_free(be, &bl->norm[k]), gq_be_weight_free(be, &bl->norm_b[k]);
    gq_be_weight_free(be, &bl->q_norm);
    gq_be_weight_free(be, &bl->k_norm);
    gq_be_weight_free(be, &bl->router);
    for (int e = 0; e < bl->n_experts && bl->ex_in; e++) gq_be_weight_free(be, &bl->ex_in[e]);
    for (int e = 0; e < bl->n_experts && bl->ex_out; e++) gq_be_weight_free(be, &bl->ex_out[e]);
    free(bl->ex_in);
    free(bl->ex_out);
    memset(bl, 0, sizeof *bl);
}

/* The biases of the dense groups: each module's bias into its rows of the group's vector. */
static int load_biases(gq_backend *be, const gq_model *m, int layer, const gq_module *mods, int n, gq_blayer *bl) {
    for (int g = 0; g < GQ_GRP_COUNT; g++) {
        int rows, cols, any = 0;
        gq_group_shape(&m->cfg, layer, (gq_group)g, &rows, &cols);
        float *b = NULL;
        for (int i = 0; i < n; i++) {
            if ((int)mods[i].group != g || mods[i].expert >= 0 || !mods[i].bias) continue;
            if (!b) b = gq_calloc((size_t)rows, sizeof *b);
            char name[200];
            float *v;
            snprintf(name, sizeof name, "model.layers.%d.%s.bias", layer, mods[i].name);
            int rc = read_vec(m, name, mods[i].rows, 0, &v);
            if (rc) {
                free(b);
                return rc;
            }
            memcpy(b + mods[i].row0, v, (size_t)mods[i].rows * sizeof *v);
            gq_free_aligned(v);
            any = 1;
        }
        int rc = any ? gq_be_weight_upload(be, &bl->b[g], b, 1, rows) : GQ_OK;
        free(b);
        TRY(rc);
    }
    return GQ_OK;
}

/* Norm weights (and LayerNorm biases), q/k norms, the router. */
static int load_small(gq_backend *be, const gq_model *m, int layer, gq_blayer *bl) {
    const gq_config *c = &m->cfg;
    const gq_arch *ar = gq_arch_get(c->arch_id);
    char name[200];
    int p1 = ar->norm == GQ_NORM_RMS_P1;
    for (int k = 0; k < GQ_NORM_SLOTS; k++) {
        if (!ar->norm_name[k]) continue;
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, ar->norm_name[k]);
        TRY(upload_vec(be, m, name, c->hidden, p1, &bl->norm[k]));
        if (ar->norm != GQ_NORM_LAYER) continue;
        snprintf(name, sizeof name, "model.layers.%d.%s.bias", layer, ar->norm_name[k]);
        TRY(upload_vec(be, m, name, c->hidden, 0, &bl->norm_b[k]));
    }
    if (ar->qk_norm) {
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, ar->q_norm);
        TRY(upload_vec(be, m, name, c->head_dim, p1, &bl->q_norm));
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, ar->k_norm);
        TRY(upload_vec(be, m, name, c->head_dim, p1, &bl->k_norm));
    }
    if (!bl->n_experts) return GQ_OK;
    gq_module r = {.rows = c->n_experts, .cols = c->hidden};
    snprintf(r.name, sizeof r.name, "%s", m->fused ? ar->fused_router : ar->router);
    snprintf(r.src, sizeof r.src, "%s", r.name);
    return load_module_into(be, m, layer, &r, NULL, &bl->router);
}

#define GRP_MAX_PARTS 4 /* modules stacked in one group: q, k, v at most */

/* With q4: the weight of group g (expert e) as one int4-resident weight when every module of it is
 * stored 4-bit in q's file; *done = 0 (and nothing changed) when one is not. mods: the layer's
 * modules, in each group's row order. */
static int load_group_q4(gq_backend *be, int layer, const gq_module *mods, int n, gq_group g, int e,
                         const qsource *q, gq_bweight *W, int *done) {
    gq_packed parts[GRP_MAX_PARTS];
    const gq_packed *pp[GRP_MAX_PARTS];
    int np = 0, rc = GQ_OK;
    char base[192], name[200];
    *done = 0;
    for (int i = 0, cnt = 0; i < n; i++) {
        if ((int)mods[i].group != (int)g || mods[i].expert != e) continue;
        snprintf(name, sizeof name, "model.layers.%d.%s.qweight", layer, mods[i].name);
        if (++cnt > GRP_MAX_PARTS || !gq_st_find(q->st, name)) return GQ_OK; /* a raw module: dequantized path */
    }
    for (int i = 0; i < n && rc == GQ_OK; i++) {
        if ((int)mods[i].group != (int)g || mods[i].expert != e) continue;
        snprintf(base, sizeof base, "model.layers.%d.%s", layer, mods[i].name);
        rc = gq_qlinear_read(q->st, q->where, base, mods[i].rows, mods[i].cols, q->bits, q->group_size, q->v2,
                             &parts[np]);
        if (rc == GQ_OK) pp[np] = &parts[np], np++;
    }
    if (rc == GQ_OK && np > 0) {
        rc = gq_be_weight_upload_q4(be, W, pp, np);
        if (rc != GQ_OK) gq_err_prefix("%s: int4 weights of the %d stacked module(s) ending in %s", q->where, np, base);
        *done = rc == GQ_OK;
    }
    for (int i = 0; i < np; i++) gq_packed_free(&parts[i]);
    return rc;
}

/* The layer's groups that can be int4-resident, uploaded so (gq_blayer_load's q4 rule). */
static int load_layer_q4(gq_backend *be, const gq_model *m, int layer, const qsource *q, const gq_module *mods,
                         int n, gq_blayer *bl) {
    const gq_config *c = &m->cfg;
    int moe = c->n_experts > 0 && c->layer_moe[layer], done;
    for (int g = 0; g < GQ_GRP_COUNT; g++) {
        if (moe && g >= GQ_GRP_MLP_IN) break;
        TRY(load_group_q4(be, layer, mods, n, (gq_group)g, -1, q, &bl->w[g], &done));
    }
    if (!moe) return GQ_OK;
    bl->n_experts = c->n_experts;
    bl->ex_in = gq_calloc((size_t)c->n_experts, sizeof *bl->ex_in);
    bl->ex_out = gq_calloc((size_t)c->n_experts, sizeof *bl->ex_out);
    for (int e = 0; e < c->n_experts; e++) {
        TRY(load_group_q4(be, layer, mods, n, GQ_GRP_MLP_IN, e, q, &bl->ex_in[e], &done));
        TRY(load_group_q4(be, layer, mods, n, GQ_GRP_MLP_OUT, e, q, &bl->ex_out[e], &done));
    }
    return GQ_OK;
}

/* q4: keep 4-bit groups packed (gq_blayer_load's rule), else every quantized module dequantized. */
static int load_layer(gq_backend *be, const gq_model *m, int layer, const qsource *q, int q4, gq_blayer *bl) {
    const gq_config *c = &m->cfg;
    memset(bl, 0, sizeof *bl);
    if (layer < 0 || layer >= c->n_layers)
        return gq_err(GQ_ERR_ARG, "%s: layer %d out of range (%d layers)", m->dir, layer, c->n_layers);
    int cap = gq_layer_module_cap(c);
    gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
    int n = gq_layer_modules(c, m->fused, layer, mods, cap);
    int rc = q4 ? load_layer_q4(be, m, layer, q, mods, n, bl) : GQ_OK;
    if (!rc) rc = blayer_alloc_empty(be, c, layer, bl);
    for (int i = 0; i < n && !rc; i++) {
        gq_bweight *W = gq_blayer_weight(bl, mods[i].group, mods[i].expert);
        if (!W->q4) rc = load_module_into(be, m, layer, &mods[i], q, W);
    }
    if (!rc) rc = load_biases(be, m, layer, mods, n, bl);
    if (!rc) rc = load_small(be, m, layer, bl);
    free(mods);
    if (rc) gq_blayer_free(be, bl);
    return rc;
}

int gq_blayer_load(gq_backend *be, const gq_model *m, int layer, gq_blayer *bl) {
    memset(bl, 0, sizeof *bl);
    const gq_qconfig *qc = &m->cfg.quant;
    qsource q = {m->st, m->dir, qc->bits, qc->group_size, !strcmp(qc->format, "gptq_v2")};
    if (m->quantized && !m->cfg.has_quant)
        return gq_err(GQ_ERR_FORMAT, "%s: linears are stored quantized but config.json has no quantization_config",
                      m->dir);
    int q4 = m->quantized && m->q4_resident && qc->bits == 4 && gq_be_q4_supported(be);
    return load_layer(be, m, layer, m->quantized ? &q : NULL, q4, bl);
}

int gq_blayer_load_q(gq_backend *be, const gq_model *m, int layer, const gq_st *qsrc, const char *qwhere, int bits,
                     int group_size, int v2, gq_blayer *bl) {
    qsource q = {qsrc, qwhere, bits, group_size, v2};
    return load_layer(be, m, layer, &q, 0, bl);
}

/* ---- the head ------------------------------------------------------------------------------ */

int gq_bhead_load(gq_backend *be, const gq_model *m, gq_bhead *h) {
    const gq_config *c = &m->cfg;
    const gq_arch *ar = gq_arch_get(c->arch_id);
    memset(h, 0, sizeof *h);
    int rc = upload_vec(be, m, "model.norm.weight", c->hidden, ar->norm == GQ_NORM_RMS_P1, &h->norm);
    if (!rc && ar->norm == GQ_NORM_LAYER) rc = upload_vec(be, m, "model.norm.bias", c->hidden, 0, &h->norm_b);
    int tied = c->tie_word_embeddings || !gq_st_find(m->st, "lm_head.weight");
    gq_module lm = {.rows = c->vocab, .cols = c->hidden};
    const char *name = tied ? "model.embed_tokens.weight" : "lm_head.weight";
    const gq_st_tensor *t;
    int64_t dims[2] = {c->vocab, c->hidden};
    if (!rc) rc = find_float(m, name, &t);
    if (!rc) rc = gq_st_check_shape(m->st, t, 2, dims);
    if (!rc) rc = gq_be_weight_alloc(be, &h->lm, lm.rows, lm.cols);
    for (int r0 = 0; r0 < c->vocab && !rc; r0 += 4096) { /* in row blocks: no whole f32 copy on the host */
        int n = c->vocab - r0 < 4096 ? c->vocab - r0 : 4096;
        size_t esz = gq_dtype_size(t->dtype), bytes = (size_t)n * c->hidden * esz;
        const char *src = (const char *)t->data + (size_t)r0 * c->hidden * esz;
        void *copy = NULL;
        if ((uintptr_t)src % esz) copy = gq_malloc_aligned(bytes), memcpy(copy, src, bytes), src = copy;
        rc = gq_be_weight_set_rows(be, &h->lm, r0, n, src, t->dtype);
        gq_free_aligned(copy);
        if (rc == GQ_ERR_NUMERIC) gq_err_prefix("%s: tensor '%s'", m->dir, name);
    }
    if (!rc) gq_st_release(m->st, t);
    if (rc) gq_bhead_free(be, h);
    return rc;
}

void gq_bhead_free(gq_backend *be, gq_bhead *h) {
    if (!h) return;
    gq_be_weight_free(be, &h->norm);
    gq_be_weight_free(be, &h->norm_b);
    gq_be_weight_free(be, &h->lm);
}

/* ---- --int4-kernel auto ---------------------------------------------------------------------- */

size_t gq_model_linear_fp16_bytes(const gq_model *m) {
    const int cap = gq_layer_module_cap(&m->cfg);
    gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
    size_t n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        int k = gq_layer_modules(&m->cfg, m->fused, l, mods, cap);
        for (int i = 0; i < k; i++) n += (size_t)mods[i].rows * (size_t)mods[i].cols * 2;
    }
    free(mods);
    return n;
}

int gq_q4_auto_keeps(int rows, size_t fp16_bytes, size_t free_bytes) {
    return rows <= GQ_Q4_KERNEL_ROWS || free_bytes / 2 < fp16_bytes;
}

int gq_model_q4_choose(const gq_model *m, gq_backend *be, int mode, int rows) {
    if (mode != GQ_Q4_AUTO) return mode != 0;
    if (!m->quantized || !gq_be_q4_supported(be)) return 1; /* nothing to choose */
    const size_t fp16 = gq_model_linear_fp16_bytes(m), free_b = gq_be_free_bytes(be);
    if (gq_q4_auto_keeps(rows, fp16, free_b)) return 1;
    char b1[32], b2[32];
    gq_info("int4 kernel: off (--int4-kernel auto): decode steps of up to %d rows run faster on fp16 weights than "
            "through the W4A16 kernel (up to %d rows), and the linears' %s in fp16 fit the %s free; "
            "--int4-kernel on keeps them packed",
            rows, GQ_Q4_KERNEL_ROWS, gq_fmt_bytes(b1, sizeof b1, (double)fp16),
            gq_fmt_bytes(b2, sizeof b2, (double)free_b));
    return 0;
}
