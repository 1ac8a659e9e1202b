/*
 * model.c -- a Llama checkpoint read layer by layer (shape-checked, NaN/Inf
 * checked, F16/BF16/F32 converted to f32), the embedding, the head, the
 * RoPE inverse frequencies, and the decoder layer forward on a backend.
 * Quantized linears (qweight/qzeros/scales/g_idx) are dequantized by
 * model_quant.c.
 */
#include "gq/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *const gq_linear_names[GQ_LIN_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

/* model_quant.c */
int gq_model_load_qlinear(const gq_model *m, int layer, gq_linear_id id, int rows, int cols, float **w);

/* ---- open / close ------------------------------------------------------------------ */

/* Which width each linear's output and input have: the one description of the layer's shapes. */
static const struct {
    gq_dim out, in;
} linear_dims[GQ_LIN_COUNT] = {
    [GQ_LIN_Q] = {GQ_DIM_Q, GQ_DIM_HIDDEN},     [GQ_LIN_K] = {GQ_DIM_KV, GQ_DIM_HIDDEN},
    [GQ_LIN_V] = {GQ_DIM_KV, GQ_DIM_HIDDEN},    [GQ_LIN_O] = {GQ_DIM_HIDDEN, GQ_DIM_Q},
    [GQ_LIN_GATE] = {GQ_DIM_FFN, GQ_DIM_HIDDEN}, [GQ_LIN_UP] = {GQ_DIM_FFN, GQ_DIM_HIDDEN},
    [GQ_LIN_DOWN] = {GQ_DIM_HIDDEN, GQ_DIM_FFN},
};

void gq_linear_dims(gq_linear_id id, gq_dim *out, gq_dim *in) {
    *out = linear_dims[id].out;
    *in = linear_dims[id].in;
}

int64_t gq_dim_size(const gq_config *c, gq_dim d) {
    switch (d) {
    case GQ_DIM_Q:
        return (int64_t)c->n_heads * c->head_dim;
    case GQ_DIM_KV:
        return (int64_t)c->n_kv_heads * c->head_dim;
    case GQ_DIM_FFN:
        return c->intermediate;
    default:
        return c->hidden;
    }
}

/* Shape [out][in] of a linear. */
static void linear_shape(const gq_config *c, gq_linear_id id, int *rows, int *cols) {
    *rows = (int)gq_dim_size(c, linear_dims[id].out);
    *cols = (int)gq_dim_size(c, linear_dims[id].in);
}

static int has_bias(const gq_config *c, gq_linear_id id) {
    return id <= GQ_LIN_O ? c->attention_bias : c->mlp_bias;
}

int gq_model_open(gq_model *m, const char *dir) {
    memset(m, 0, sizeof *m);
    int rc = gq_config_load(&m->cfg, dir);
    if (rc != GQ_OK) return rc;
    const gq_config *c = &m->cfg;
    if (c->n_heads % c->n_kv_heads)
        return gq_err(GQ_ERR_FORMAT, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", dir,
                      c->n_heads, c->n_kv_heads);
    rc = gq_st_open(&m->st, dir);
    if (rc != GQ_OK) return rc;
    m->dir = gq_strdup(dir);
    m->quantized = c->has_quant || gq_st_find(m->st, "model.layers.0.self_attn.q_proj.qweight") != NULL;
    if ((rc = gq_model_check(m)) != GQ_OK) { /* every tensor, from the headers: before any work */
        gq_model_close(m);
        return rc;
    }

    /* what every forward needs: the embedding, and the head's source */
    const gq_st_tensor *e = gq_st_find(m->st, "model.embed_tokens.weight");
    int64_t dims[2] = {c->vocab, c->hidden};
    if (!e)
        rc = gq_err(GQ_ERR_FORMAT, "%s: tensor 'model.embed_tokens.weight' is missing", dir);
    else
        rc = gq_st_check_shape(m->st, e, 2, dims);
    if (rc == GQ_OK && !c->tie_word_embeddings && !gq_st_find(m->st, "lm_head.weight"))
        rc = gq_err(GQ_ERR_FORMAT, "%s: tensor 'lm_head.weight' is missing and tie_word_embeddings is false", dir);
    if (rc != GQ_OK) gq_model_close(m);
    return rc;
}

void gq_model_close(gq_model *m) {
    if (!m) return;
    gq_st_close(m->st);
    free(m->dir);
    memset(m, 0, sizeof *m);
}

/* ---- tensors --------------------------------------------------------------------- */

/* Read tensor `name` of shape dims[ndim] as f32 (newly allocated), then drop its pages. */
static int read_tensor(const gq_model *m, const char *name, int ndim, const int64_t *dims, float **out) {
    *out = NULL;
    const gq_st_tensor *t = gq_st_find(m->st, name);
    if (!t) {
        if (ndim == 1)
            return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' [%lld] is missing", m->dir, name, (long long)dims[0]);
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' [%lld, %lld] is missing", m->dir, name, (long long)dims[0],
                      (long long)dims[1]);
    }
    int rc = gq_st_check_shape(m->st, t, ndim, dims);
    if (rc != GQ_OK) return rc;
    float *w = gq_malloc_aligned((size_t)t->numel * sizeof(float));
    rc = gq_st_read_f32(m->st, t, w);
    gq_st_release(m->st, t);
    if (rc != GQ_OK) {
        gq_free_aligned(w);
        return rc;
    }
    *out = w;
    return GQ_OK;
}

int gq_model_load_linear(const gq_model *m, int layer, gq_linear_id id, float **w, int *rows, int *cols) {
    *w = NULL;
    if (layer < 0 || layer >= m->cfg.n_layers || id < 0 || id >= GQ_LIN_COUNT)
        return gq_err(GQ_ERR_ARG, "%s: layer %d, linear %d: out of range (%d layers)", m->dir, layer, (int)id,
                      m->cfg.n_layers);
    linear_shape(&m->cfg, id, rows, cols);
    char name[160];
    snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, gq_linear_names[id]);
    if (m->quantized && !gq_st_find(m->st, name)) return gq_model_load_qlinear(m, layer, id, *rows, *cols, w);
    int64_t dims[2] = {*rows, *cols};
    return read_tensor(m, name, 2, dims, w);
}

void gq_layer_host_free(gq_layer_host *h) {
    if (!h) return;
    for (int i = 0; i < GQ_LIN_COUNT; i++) {
        gq_free_aligned(h->w[i]);
        gq_free_aligned(h->b[i]);
    }
    gq_free_aligned(h->ln1);
    gq_free_aligned(h->ln2);
    memset(h, 0, sizeof *h);
}

int gq_model_load_layer(const gq_model *m, int layer, gq_layer_host *out) {
    memset(out, 0, sizeof *out);
    const gq_config *c = &m->cfg;
    char name[160];
    int rc = GQ_OK, rows, cols;
    for (int i = 0; i < GQ_LIN_COUNT && rc == GQ_OK; i++) {
        rc = gq_model_load_linear(m, layer, (gq_linear_id)i, &out->w[i], &rows, &cols);
        if (rc == GQ_OK && has_bias(c, (gq_linear_id)i)) {
            int64_t d = rows;
            snprintf(name, sizeof name, "model.layers.%d.%s.bias", layer, gq_linear_names[i]);
            rc = read_tensor(m, name, 1, &d, &out->b[i]);
        }
    }
    int64_t hd = c->hidden;
    if (rc == GQ_OK) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", layer);
        rc = read_tensor(m, name, 1, &hd, &out->ln1);
    }
    if (rc == GQ_OK) {
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", layer);
        rc = read_tensor(m, name, 1, &hd, &out->ln2);
    }
    if (rc != GQ_OK) gq_layer_host_free(out);
    return rc;
}

int gq_model_embed(const gq_model *m, const int32_t *ids, int n, float *out) {
    const gq_st_tensor *e = gq_st_find(m->st, "model.embed_tokens.weight"); /* shape checked at open */
    int d = m->cfg.hidden, vocab = m->cfg.vocab;
    size_t esz = gq_dtype_size(e->dtype), row_bytes = (size_t)d * esz;
    if (e->dtype != GQ_DT_F32 && e->dtype != GQ_DT_F16 && e->dtype != GQ_DT_BF16 && e->dtype != GQ_DT_F64)
        return gq_err(GQ_ERR_FORMAT, "%s: tensor 'model.embed_tokens.weight': dtype %s is not a float type", m->dir,
                      gq_dtype_name(e->dtype));
    void *tmp = NULL; /* an aligned copy of a row when the mapping is misaligned */
    int rc = GQ_OK;
    for (int i = 0; i < n && rc == GQ_OK; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= vocab) {
            rc = gq_err(GQ_ERR_DATA, "token id %d at position %d is outside the vocabulary [0, %d) of %s", (int)id, i,
                        vocab, m->dir);
            break;
        }
        const char *src = (const char *)e->data + (size_t)id * row_bytes;
        if ((uintptr_t)src % esz) {
            if (!tmp) tmp = gq_malloc(row_bytes);
            memcpy(tmp, src, row_bytes);
            src = tmp;
        }
        int64_t bad = gq_to_f32(out + (size_t)i * d, src, e->dtype, (size_t)d);
        if (bad >= 0)
            rc = gq_err(GQ_ERR_NUMERIC,
                        "%s: tensor 'model.embed_tokens.weight': non-finite value at index %lld (row %d)", m->dir,
                        (long long)((int64_t)id * d + bad), (int)id);
    }
    free(tmp);
    return rc;
}

int gq_model_load_head(const gq_model *m, float **norm, float **lm_head) {
    *norm = *lm_head = NULL;
    int64_t hd = m->cfg.hidden, dims[2] = {m->cfg.vocab, m->cfg.hidden};
    int rc = read_tensor(m, "model.norm.weight", 1, &hd, norm);
    if (rc != GQ_OK) return rc;
    int tied = m->cfg.tie_word_embeddings || !gq_st_find(m->st, "lm_head.weight");
    rc = read_tensor(m, tied ? "model.embed_tokens.weight" : "lm_head.weight", 2, dims, lm_head);
    if (rc != GQ_OK) {
        gq_free_aligned(*norm);
        *norm = NULL;
    }
    return rc;
}

/* ---- RoPE ------------------------------------------------------------------------------ */

/*
 * As transformers computes inv_freq (modeling_rope_utils.py), in the same
 * fp32 operations so the result agrees to the ulp:
 *   default: 1 / theta^(2i / hd), the exponent a float quotient;
 *   linear: default / factor;
 *   dynamic: for seq_len > max_position_embeddings the base becomes
 *     theta * (factor * seq_len / max_pos - (factor - 1))^(hd / (hd - 2)),
 *     evaluated in fp32 as torch does on the position tensor (transformers
 *     5 uses max_position_embeddings here, not original_max_...);
 *   llama3: wavelen = 2 pi / inv; > orig/low_freq_factor: inv / factor;
 *     < orig/high_freq_factor: unchanged; between: smooth interpolation.
 * torch's `scalar / tensor` is reciprocal(tensor) * scalar, reproduced below.
 */
void gq_rope_inv_freq(const gq_config *cfg, int seq_len, float *inv) {
    int hd = cfg->head_dim, half = hd / 2;
    float base = (float)cfg->rope_theta;
    if (cfg->rope_type == GQ_ROPE_DYNAMIC && seq_len > cfg->max_pos) {
        float f = (float)cfg->rope_factor;
        float s = f * (float)seq_len / (float)cfg->max_pos - (float)(cfg->rope_factor - 1.0);
        base = (float)cfg->rope_theta * powf(s, (float)((double)hd / (double)(hd - 2)));
    }
    for (int i = 0; i < half; i++) inv[i] = 1.0f / powf(base, (float)(2 * i) / (float)hd);
    if (cfg->rope_type == GQ_ROPE_LINEAR) {
        for (int i = 0; i < half; i++) inv[i] /= (float)cfg->rope_factor;
    } else if (cfg->rope_type == GQ_ROPE_LLAMA3) {
        double orig = cfg->rope_orig_max_pos > 0 ? cfg->rope_orig_max_pos : cfg->max_pos;
        float factor = (float)cfg->rope_factor, lo = (float)cfg->rope_low_freq_factor;
        float lo_wl = (float)(orig / cfg->rope_low_freq_factor), hi_wl = (float)(orig / cfg->rope_high_freq_factor);
        float span = (float)(cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
        for (int i = 0; i < half; i++) {
            float wl = (1.0f / inv[i]) * (float)(2 * M_PI);
            float v = wl > lo_wl ? inv[i] / factor : inv[i];
            if (!(wl < hi_wl) && !(wl > lo_wl)) {
                float smooth = ((1.0f / wl) * (float)orig - lo) / span;
                v = (1.0f - smooth) * v / factor + smooth * v;
            }
            inv[i] = v;
        }
    }
}

/* ---- a layer on a backend ----------------------------------------------------------------- */

/* Upload row blocks src[0..n) (each rows[i] x cols) stacked as one weight. */
static int upload_stacked(gq_backend *be, gq_bweight *w, float *const *src, const int *rows, int n, int cols) {
    int total = 0;
    for (int i = 0; i < n; i++) total += rows[i];
    float *cat = gq_malloc_aligned((size_t)total * cols * sizeof(float)); /* [total][cols] */
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        memcpy(cat + off, src[i], (size_t)rows[i] * cols * sizeof(float));
        off += (size_t)rows[i] * cols;
    }
    int rc = gq_be_weight_upload(be, w, cat, total, cols);
    gq_free_aligned(cat);
    return rc;
}

int gq_blayer_upload(gq_backend *be, const gq_config *c, const gq_layer_host *h, gq_blayer *bl) {
    memset(bl, 0, sizeof *bl);
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim, I = c->intermediate;
    int qkv_rows[3] = {q, kv, kv}, gu_rows[2] = {I, I};
    float *const qkv[3] = {h->w[GQ_LIN_Q], h->w[GQ_LIN_K], h->w[GQ_LIN_V]};
    float *const gu[2] = {h->w[GQ_LIN_GATE], h->w[GQ_LIN_UP]};
    int rc = upload_stacked(be, &bl->qkv, qkv, qkv_rows, 3, c->hidden);
    if (rc == GQ_OK) rc = gq_be_weight_upload(be, &bl->o, h->w[GQ_LIN_O], c->hidden, q);
    if (rc == GQ_OK) rc = upload_stacked(be, &bl->gu, gu, gu_rows, 2, c->hidden);
    if (rc == GQ_OK) rc = gq_be_weight_upload(be, &bl->down, h->w[GQ_LIN_DOWN], c->hidden, I);
    if (rc == GQ_OK) rc = gq_be_weight_upload(be, &bl->ln1, h->ln1, 1, c->hidden);
    if (rc == GQ_OK) rc = gq_be_weight_upload(be, &bl->ln2, h->ln2, 1, c->hidden);
    if (rc == GQ_OK && h->b[GQ_LIN_Q]) {
        /* the three bias vectors end to end: stacked as [q + 2 kv][1], then viewed as 1 x (q + 2 kv) */
        float *const b[3] = {h->b[GQ_LIN_Q], h->b[GQ_LIN_K], h->b[GQ_LIN_V]};
        rc = upload_stacked(be, &bl->b_qkv, b, qkv_rows, 3, 1);
        if (rc == GQ_OK) bl->b_qkv.rows = 1, bl->b_qkv.cols = q + 2 * kv;
    }
    if (rc == GQ_OK && h->b[GQ_LIN_O]) rc = gq_be_weight_upload(be, &bl->b_o, h->b[GQ_LIN_O], 1, c->hidden);
    if (rc == GQ_OK && h->b[GQ_LIN_GATE]) {
        float *const b[2] = {h->b[GQ_LIN_GATE], h->b[GQ_LIN_UP]};
        rc = upload_stacked(be, &bl->b_gu, b, gu_rows, 2, 1);
        if (rc == GQ_OK) bl->b_gu.rows = 1, bl->b_gu.cols = 2 * I;
    }
    if (rc == GQ_OK && h->b[GQ_LIN_DOWN]) rc = gq_be_weight_upload(be, &bl->b_down, h->b[GQ_LIN_DOWN], 1, c->hidden);
    if (rc != GQ_OK) gq_blayer_free(be, bl);
    return rc;
}

void gq_model_prefetch_layer(const gq_model *m, int layer) {
    if (layer < 0 || layer >= m->cfg.n_layers) return;
    char prefix[64];
    int n = snprintf(prefix, sizeof prefix, "model.layers.%d.", layer);
    for (int i = 0; i < gq_st_count(m->st); i++) { /* every tensor of the layer, whatever its form */
        const gq_st_tensor *t = gq_st_at(m->st, i);
        if (!strncmp(t->name, prefix, (size_t)n)) gq_st_prefetch(m->st, t);
    }
}

/* Rows [row0, row0 + rows) of w from tensor `name` ([rows][cols]), raw. */
static int load_rows(gq_backend *be, const gq_model *m, const char *name, gq_bweight *w, int row0, int rows) {
    const gq_st_tensor *t = gq_st_find(m->st, name);
    int64_t dims[2] = {rows, w->cols};
    if (!t) return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' [%d, %d] is missing", m->dir, name, rows, w->cols);
    int rc = gq_st_check_shape(m->st, t, 2, dims);
    if (rc != GQ_OK) return rc;
    if (t->dtype != GQ_DT_F16 && t->dtype != GQ_DT_BF16 && t->dtype != GQ_DT_F32)
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': dtype %s, expected F16, BF16 or F32", m->dir, name,
                      gq_dtype_name(t->dtype));
    const void *src = t->data;
    void *copy = NULL;
    if ((uintptr_t)src % gq_dtype_size(t->dtype)) { /* a misaligned mapping: align a copy */
        copy = gq_malloc_aligned(t->nbytes);
        memcpy(copy, src, t->nbytes);
        src = copy;
    }
    rc = gq_be_weight_set_rows(be, w, row0, rows, src, t->dtype);
    gq_free_aligned(copy);
    gq_st_release(m->st, t);
    if (rc == GQ_ERR_NUMERIC) return gq_err_prefix("%s: tensor '%s'", m->dir, name);
    return rc;
}

int gq_blayer_load(gq_backend *be, const gq_model *m, int layer, gq_blayer *bl) {
    memset(bl, 0, sizeof *bl);
    if (layer < 0 || layer >= m->cfg.n_layers)
        return gq_err(GQ_ERR_ARG, "%s: layer %d out of range (%d layers)", m->dir, layer, m->cfg.n_layers);
    const gq_config *c = &m->cfg;
    if (m->quantized || c->attention_bias || c->mlp_bias) { /* dequantize / stack biases on the host */
        gq_layer_host h;
        int rc = gq_model_load_layer(m, layer, &h);
        if (rc == GQ_OK) rc = gq_blayer_upload(be, c, &h, bl);
        gq_layer_host_free(&h);
        return rc;
    }
    const int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim, I = c->intermediate, d = c->hidden;
    struct {
        gq_bweight *w;
        gq_linear_id id;
        int row0, rows;
    } parts[GQ_LIN_COUNT] = {
        {&bl->qkv, GQ_LIN_Q, 0, q},     {&bl->qkv, GQ_LIN_K, q, kv},  {&bl->qkv, GQ_LIN_V, q + kv, kv},
        {&bl->o, GQ_LIN_O, 0, d},       {&bl->gu, GQ_LIN_GATE, 0, I}, {&bl->gu, GQ_LIN_UP, I, I},
        {&bl->down, GQ_LIN_DOWN, 0, d},
    };
    int rc = gq_be_weight_alloc(be, &bl->qkv, q + 2 * kv, d);
    if (rc == GQ_OK) rc = gq_be_weight_alloc(be, &bl->o, d, q);
    if (rc == GQ_OK) rc = gq_be_weight_alloc(be, &bl->gu, 2 * I, d);
    if (rc == GQ_OK) rc = gq_be_weight_alloc(be, &bl->down, d, I);
    char name[160];
    for (int k = 0; k < GQ_LIN_COUNT && rc == GQ_OK; k++) {
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, gq_linear_names[parts[k].id]);
        rc = load_rows(be, m, name, parts[k].w, parts[k].row0, parts[k].rows);
    }
    int64_t hd = d;
    float *v = NULL;
    for (int k = 0; k < 2 && rc == GQ_OK; k++) {
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer,
                 k ? "post_attention_layernorm" : "input_layernorm");
        rc = read_tensor(m, name, 1, &hd, &v);
        if (rc == GQ_OK) rc = gq_be_weight_upload(be, k ? &bl->ln2 : &bl->ln1, v, 1, d);
        gq_free_aligned(v);
        v = NULL;
    }
    if (rc != GQ_OK) gq_blayer_free(be, bl);
    return rc;
}

void gq_blayer_free(gq_backend *be, gq_blayer *bl) {
    if (!bl) return;
    gq_bweight *all[] = {&bl->qkv, &bl->o,     &bl->gu,  &bl->down, &bl->ln1,
                         &bl->ln2, &bl->b_qkv, &bl->b_o, &bl->b_gu, &bl->b_down};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) gq_be_weight_free(be, all[i]);
}

int gq_fwd_scratch_init(gq_backend *be, const gq_config *c, int T_max, gq_fwd_scratch *s) {
    memset(s, 0, sizeof *s);
    size_t T = (size_t)T_max;
    size_t qkv = (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim, att = (size_t)c->n_heads * c->head_dim;
    s->T_max = T_max;
    s->xn = gq_be_alloc(be, gq_be_act_bytes(be, T * c->hidden));
    s->qkv = gq_be_alloc(be, gq_be_act_bytes(be, T * qkv));
    s->attn = gq_be_alloc(be, gq_be_act_bytes(be, T * att));
    s->gu = gq_be_alloc(be, gq_be_act_bytes(be, T * 2 * (size_t)c->intermediate));
    s->act = gq_be_alloc(be, gq_be_act_bytes(be, T * (size_t)c->intermediate));
    if (!s->xn || !s->qkv || !s->attn || !s->gu || !s->act) {
        gq_fwd_scratch_free(be, s);
        return gq_err_prefix("forward scratch for %d tokens", T_max);
    }
    return GQ_OK;
}

void gq_fwd_scratch_free(gq_backend *be, gq_fwd_scratch *s) {
    if (!s) return;
    gq_be_release(be, s->xn);
    gq_be_release(be, s->qkv);
    gq_be_release(be, s->attn);
    gq_be_release(be, s->gu);
    gq_be_release(be, s->act);
    memset(s, 0, sizeof *s);
}

#define TRY(x)                                                                                                         \
    do {                                                                                                               \
        int rc_ = (x);                                                                                                 \
        if (rc_ != GQ_OK) return rc_;                                                                                  \
    } while (0)

/* ---- non-finite activations ------------------------------------------------------------- */

/* GQ_OK when columns [0, width) of the activation rows X[T][ld] are all finite, else
 * GQ_ERR_NUMERIC "non-finite activation <what> (NaN at token t, column j)" for the first one in
 * row-major order. Downloads the rows to the host: meant for locating a NaN/Inf that a cheap
 * check (a non-finite loss or Hessian) has seen, not for every op of a normal run. */
int gq_act_check(gq_backend *be, const void *X, int ld, int T, int width, const char *what) {
    if (T <= 0 || width <= 0) return GQ_OK;
    size_t n = (size_t)(T - 1) * (size_t)ld + (size_t)width;
    float *h = gq_malloc(n * sizeof *h);
    int rc = gq_be_download_f32(be, h, X, n);
    for (int t = 0; t < T && rc == GQ_OK; t++) {
        const float *row = h + (size_t)t * ld;
        for (int j = 0; j < width; j++) {
            if (isfinite(row[j])) continue;
            rc = gq_err(GQ_ERR_NUMERIC, "non-finite activation %s (%s at token %d, column %d)", what,
                        isnan(row[j]) ? "NaN" : row[j] > 0 ? "+Inf" : "-Inf", t, j);
            break;
        }
    }
    free(h);
    return rc;
}

/* ---- the decoder layer --------------------------------------------------------------------- */


/* An op, then (check) its output rows buf[T][ld], columns [0, width), checked for NaN/Inf. */
#define STEP(op, buf, ld, width, what)                                                                                 \
    do {                                                                                                               \
        TRY(op);                                                                                                       \
        if (check) TRY(gq_act_check(be, buf, ld, T, width, what));                                                     \
    } while (0)

/* The parts (GQ_FWD_ATTN: x += o(attn(...)) of rmsnorm1(x); GQ_FWD_MLP: x += down(swiglu(...)) of
 * rmsnorm2(x)) of a decoder layer, the same ops in the same order with or without check. */
static int fwd_layer(gq_backend *be, const gq_config *c, const gq_blayer *bl, void *x, int T, const float *inv_freq,
                     gq_fwd_scratch *s, int parts, int check) {
    if (T > s->T_max) return gq_err(GQ_ERR_ARG, "forward: %d tokens, scratch sized for %d", T, s->T_max);
    int d = c->hidden, hd = c->head_dim, I = c->intermediate;
    int nq = c->n_heads * hd, nkv = c->n_kv_heads * hd, ldqkv = nq + 2 * nkv;
    char *qkv = s->qkv; /* [T][q | k | v] */
    void *k = qkv + gq_be_act_bytes(be, (size_t)nq), *v = qkv + gq_be_act_bytes(be, (size_t)(nq + nkv));
    if (parts & GQ_FWD_ATTN) { /* attention block: x += o(attn(rope(q), rope(k), v)) of rmsnorm1(x) */
        if (check) TRY(gq_act_check(be, x, d, T, d, "at the layer input"));
        STEP(gq_be_rmsnorm(be, s->xn, d, x, d, T, d, &bl->ln1, c->rms_eps), s->xn, d, d, "after input_layernorm");
        STEP(gq_be_linear(be, qkv, ldqkv, s->xn, d, T, &bl->qkv, &bl->b_qkv, 0), qkv, ldqkv, ldqkv,
             "after q_proj/k_proj/v_proj");
        TRY(gq_be_rope(be, qkv, ldqkv, T, c->n_heads, hd, 0, inv_freq));
        STEP(gq_be_rope(be, k, ldqkv, T, c->n_kv_heads, hd, 0, inv_freq), qkv, ldqkv, ldqkv,
             "after the rotary embedding");
        STEP(gq_be_attention(be, s->attn, nq, qkv, ldqkv, k, ldqkv, v, ldqkv, T, T, c->n_heads, c->n_kv_heads, hd),
             s->attn, nq, nq, "after attention");
        STEP(gq_be_linear(be, x, d, s->attn, nq, T, &bl->o, &bl->b_o, 1), x, d, d, "after o_proj and the residual add");
    } else if (check) {
        TRY(gq_act_check(be, x, d, T, d, "after o_proj and the residual add"));
    }
    if (parts & GQ_FWD_MLP) { /* MLP block: x += down(silu(gate) * up) of rmsnorm2(x) */
        STEP(gq_be_rmsnorm(be, s->xn, d, x, d, T, d, &bl->ln2, c->rms_eps), s->xn, d, d,
             "after post_attention_layernorm");
        STEP(gq_be_linear(be, s->gu, 2 * I, s->xn, d, T, &bl->gu, &bl->b_gu, 0), s->gu, 2 * I, 2 * I,
             "after gate_proj/up_proj");
        STEP(gq_be_swiglu(be, s->act, I, s->gu, 2 * I, T, I), s->act, I, I, "after SwiGLU");
        STEP(gq_be_linear(be, x, d, s->act, I, T, &bl->down, &bl->b_down, 1), x, d, d,
             "at the layer output (after down_proj and the residual add)");
    }
    return GQ_OK;
}
#undef STEP

int gq_fwd_layer(gq_backend *be, const gq_config *c, const gq_blayer *bl, void *x, int T, const float *inv_freq,
                 gq_fwd_scratch *s) {
    return fwd_layer(be, c, bl, x, T, inv_freq, s, GQ_FWD_ATTN | GQ_FWD_MLP, 0);
}

/* gq_fwd_layer with the output of every op checked (gq_act_check), in place on x like it:
 * GQ_ERR_NUMERIC "non-finite activation after attention (NaN at token 17, column 3)" names the
 * first NaN/Inf. parts: 1 the attention block only (x is the layer input), 2 the MLP block only
 * (x is h = input + o(attn)), 3 both (gq/model.h). */
int gq_fwd_layer_checked(gq_backend *be, const gq_config *c, const gq_blayer *bl, void *x, int T, const float *inv_freq,
                         gq_fwd_scratch *s, int parts) {
    return fwd_layer(be, c, bl, x, T, inv_freq, s, parts & (GQ_FWD_ATTN | GQ_FWD_MLP), 1);
}
