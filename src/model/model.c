/*
 * model.c -- a checkpoint opened (config, safetensors, gq_model_check), the embedding and the
 * RoPE inverse frequencies. The layer's tensors: layer_load.c; their names: modules.c; the
 * layer graph: graph.c; quantized linears: model_quant.c.
 */
#include "gq/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/graph.h"

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
    m->quantized = c->has_quant;
    for (int i = 0; i < gq_st_count(m->st) && !m->quantized; i++) {
        const char *nm = gq_st_at(m->st, i)->name;
        size_t len = strlen(nm);
        m->quantized = len > 8 && !strcmp(nm + len - 8, ".qweight");
    }
    m->fused = gq_st_fused_experts(c, m->st);
    m->q4_resident = 1; /* where the backend runs int4 weights (gq_be_q4_supported): CUDA */
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

/* Row id of embedding e (row_bytes each) into out[d] as fp32; the first non-finite index of the row,
 * or -1. tmp: a row-sized buffer for a misaligned mapping (allocated on first use). */
static int64_t embed_row(const gq_st_tensor *e, int32_t id, int d, size_t row_bytes, void **tmp, float *out) {
    const size_t esz = gq_dtype_size(e->dtype);
    const char *src = (const char *)e->data + (size_t)id * row_bytes;
    if ((uintptr_t)src % esz) {
        if (!*tmp) *tmp = gq_malloc(row_bytes);
        memcpy(*tmp, src, row_bytes);
        src = *tmp;
    }
    return gq_to_f32(out, src, e->dtype, (size_t)d);
}

int gq_model_embed(const gq_model *m, const int32_t *ids, int n, float *out) {
    const gq_st_tensor *e = gq_st_find(m->st, "model.embed_tokens.weight"); /* shape checked at open */
    int d = m->cfg.hidden, vocab = m->cfg.vocab;
    size_t row_bytes = (size_t)d * gq_dtype_size(e->dtype);
    if (e->dtype != GQ_DT_F32 && e->dtype != GQ_DT_F16 && e->dtype != GQ_DT_BF16 && e->dtype != GQ_DT_F64)
        return gq_err(GQ_ERR_FORMAT, "%s: tensor 'model.embed_tokens.weight': dtype %s is not a float type", m->dir,
                      gq_dtype_name(e->dtype));
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return gq_err(GQ_ERR_DATA, "token id %d at position %d is outside the vocabulary [0, %d) of %s",
                          (int)ids[i], i, vocab, m->dir);
    /* the rows on every thread (a quantize run embeds 262,144 rows of 4,096: 4 GiB of fp32); the error
     * names the first position with a non-finite value, as a sequential loop would */
    int first = n;
#pragma omp parallel if ((size_t)n * d >= ((size_t)1 << 20))
    {
        void *tmp = NULL;
#pragma omp for schedule(static) reduction(min : first)
        for (int i = 0; i < n; i++)
            if (embed_row(e, ids[i], d, row_bytes, &tmp, out + (size_t)i * d) >= 0 && i < first) first = i;
        free(tmp);
    }
    if (first < n) {
        void *tmp = NULL;
        int64_t bad = embed_row(e, ids[first], d, row_bytes, &tmp, out + (size_t)first * d);
        free(tmp);
        return gq_err(GQ_ERR_NUMERIC, "%s: tensor 'model.embed_tokens.weight': non-finite value at index %lld (row %d)",
                      m->dir, (long long)((int64_t)ids[first] * d + bad), (int)ids[first]);
    }
    if (gq_arch_get(m->cfg.arch_id)->embed_scale) { /* Gemma: times sqrt(hidden) in fp32 */
        const float sc = sqrtf((float)d);
        const size_t nd = (size_t)n * d;
#pragma omp parallel for schedule(static) if (nd >= ((size_t)1 << 20))
        for (size_t i = 0; i < nd; i++) out[i] *= sc;
    }
    return GQ_OK;
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
    int hd = cfg->rot_dim > 0 ? cfg->rot_dim : cfg->head_dim, half = hd / 2;
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

void gq_model_prefetch_layer(const gq_model *m, int layer) {
    if (layer < 0 || layer >= m->cfg.n_layers) return;
    char prefix[64];
    int n = snprintf(prefix, sizeof prefix, "model.layers.%d.", layer);
    for (int i = 0; i < gq_st_count(m->st); i++) { /* every tensor of the layer, whatever its form */
        const gq_st_tensor *t = gq_st_at(m->st, i);
        if (!strncmp(t->name, prefix, (size_t)n)) gq_st_prefetch(m->st, t);
    }
}

