/* config_family.c -- what a family's config.json adds to gq_config (gq/arch.h), with the
 * semantics of the family's transformers 5.17 config class and modeling file: the sliding
 * window and its layers, Gemma-2's soft-caps and attention scale, partial rotary, the experts
 * and the sparse layers, StarCoder2's use_bias. A key config.json lacks takes the default of
 * the family's transformers config class (e.g. Mistral's sliding_window 4096, Gemma-2's
 * soft-caps 50 and 30); null means none. Also the summary's family part and the parameter
 * count. */
#include "gq/config.h"

#include "base/json_util.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* From config.c (no header: private to these two files; keep in sync). */
int gq_cfg_get_int(const json_t *o, const char *key, int *out, int required, const char *where);
int gq_cfg_get_num(const json_t *o, const char *key, double *out, int required, const char *where);
int gq_cfg_get_bool(const json_t *o, const char *key, int *out, const char *where);
int gq_cfg_parse_family(gq_config *c, const json_t *root, const char *where);
void gq_cfg_summary_family(const gq_config *c, char *buf, size_t cap);

/* Far above any MoE model (Qwen3-Next 512, Kimi-K2 384, DeepSeek-V3 256 routed experts). */
#define GQ_CFG_MAX_EXPERTS 1024

/* ---- sliding window ---- */

/* sliding_window when config.json has no such key: the transformers config class's default. */
static int default_window(gq_arch_id id) {
    switch (id) {
    case GQ_ARCH_MISTRAL:
    case GQ_ARCH_QWEN2:
    case GQ_ARCH_QWEN3:
    case GQ_ARCH_QWEN3_MOE:
    case GQ_ARCH_GEMMA2:
        return 4096;
    default:
        return 0; /* Mixtral, Phi-3, StarCoder2: None */
    }
}

/* *w = sliding_window: 0 when null, the family's default when absent, else > 0. */
static int read_window(const json_t *root, gq_arch_id id, int *w, const char *where) {
    json_t *v = json_object_get(root, "sliding_window");
    *w = v ? 0 : default_window(id);
    if (!v || json_is_null(v)) return GQ_OK;
    int rc = gq_cfg_get_int(root, "sliding_window", w, 1, where);
    if (rc) return rc;
    if (*w <= 0) return gq_err(GQ_ERR_FORMAT, "%s: \"sliding_window\" must be positive or null, got %d", where, *w);
    return GQ_OK;
}

/* layer_types into c->layer_sliding; *given = 0 when it is absent or null. */
static int read_layer_types(gq_config *c, const json_t *root, int *given, const char *where) {
    json_t *v = json_object_get(root, "layer_types");
    *given = 0;
    if (!v || json_is_null(v)) return GQ_OK;
    if (!json_is_array(v))
        return gq_err(GQ_ERR_FORMAT, "%s: layer_types: expected an array of strings, got %s", where, gq_json_kind(v));
    if (json_array_size(v) != (size_t)c->n_layers)
        return gq_err(GQ_ERR_FORMAT, "%s: layer_types has %zu entries for num_hidden_layers %d", where,
                      json_array_size(v), c->n_layers);
    size_t l;
    json_t *e;
    json_array_foreach(v, l, e) {
        if (!json_is_string(e))
            return gq_err(GQ_ERR_FORMAT, "%s: layer_types[%zu]: expected a string, got %s", where, l, gq_json_kind(e));
        const char *s = json_string_value(e);
        if (!strcmp(s, "sliding_attention"))
            c->layer_sliding[l] = 1;
        else if (!strcmp(s, "full_attention"))
            c->layer_sliding[l] = 0;
        else
            return gq_err(GQ_ERR_UNSUPPORTED,
                          "%s: layer_types[%zu] \"%s\" is not supported (sliding_attention, full_attention)", where, l,
                          s);
    }
    *given = 1;
    return GQ_OK;
}

/* Qwen2 / Qwen3: a window only with use_sliding_window, then on the layers layer_types marks
 * (transformers writes it) or else on layers >= max_window_layers (default 28). Qwen3-MoE's
 * classes (5.17) have neither key: the window is on every layer. */
static int window_qwen(gq_config *c, const json_t *root, int *w, const char *where) {
    int rc, use = 0, types = 0, from = 28;
    int moe = c->arch_id == GQ_ARCH_QWEN3_MOE;
    if (!moe && (rc = read_layer_types(c, root, &types, where))) return rc;
    if ((rc = gq_cfg_get_bool(root, "use_sliding_window", &use, where))) return rc;
    *w = 0;
    if (!use) return GQ_OK;
    if ((rc = read_window(root, c->arch_id, w, where))) return rc;
    if (moe) {
        memset(c->layer_sliding, 1, (size_t)c->n_layers);
    } else if (!types) {
        if ((rc = gq_cfg_get_int(root, "max_window_layers", &from, 0, where))) return rc;
        for (int l = 0; l < c->n_layers; l++) c->layer_sliding[l] = l >= from;
    }
    return GQ_OK;
}

/* c->sliding_window and c->layer_sliding[] by the family's rule; sliding_window is 0 when no
 * layer slides. */
static int parse_window(gq_config *c, const json_t *root, const gq_arch *a, const char *where) {
    int rc, w = 0, types = 0;
    memset(c->layer_sliding, 0, sizeof c->layer_sliding);
    switch (a->window) {
    case GQ_WIN_NONE: {
        json_t *sw = json_object_get(root, "sliding_window");
        if (sw && !json_is_null(sw))
            gq_warn("%s: sliding_window is set; gq attends over the whole sequence (exact for sequences up to the "
                    "window)",
                    where);
        break;
    }
    case GQ_WIN_ALL:
        if ((rc = read_window(root, a->id, &w, where))) return rc;
        memset(c->layer_sliding, 1, (size_t)c->n_layers);
        break;
    case GQ_WIN_QWEN:
        if ((rc = window_qwen(c, root, &w, where))) return rc;
        break;
    case GQ_WIN_LAYER_TYPES: /* Gemma-2: layer_types, else the even layers ((l + 1) % 2 in transformers) */
        if ((rc = read_window(root, a->id, &w, where))) return rc;
        if ((rc = read_layer_types(c, root, &types, where))) return rc;
        if (!types)
            for (int l = 0; l < c->n_layers; l++) c->layer_sliding[l] = l % 2 == 0;
        break;
    }
    int any = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (!w) c->layer_sliding[l] = 0;
        any |= c->layer_sliding[l];
    }
    c->sliding_window = any ? w : 0;
    return GQ_OK;
}

/* ---- Gemma-2, rotary ---- */

/* A soft-cap: absent -> dflt, null -> 0 (none), else > 0. */
static int read_cap(const json_t *root, const char *key, double dflt, float *out, const char *where) {
    json_t *v = json_object_get(root, key);
    double x = v ? 0 : dflt;
    if (v && !json_is_null(v)) {
        int rc = gq_cfg_get_num(root, key, &x, 1, where);
        if (rc) return rc;
        if (!(x > 0) || !isfinite((float)x))
            return gq_err(GQ_ERR_FORMAT, "%s: \"%s\" must be > 0 (or null: no cap), got %g", where, key, x);
    }
    *out = (float)x;
    return GQ_OK;
}

/* Gemma-2's soft-caps (defaults 50 and 30) and query_pre_attn_scalar (default 256, as
 * Gemma2Config: not head_dim). Other families: all 0. */
static int parse_gemma(gq_config *c, const json_t *root, const char *where) {
    int rc;
    if (c->arch_id != GQ_ARCH_GEMMA2) return GQ_OK;
    if ((rc = read_cap(root, "attn_logit_softcapping", 50.0, &c->attn_softcap, where))) return rc;
    if ((rc = read_cap(root, "final_logit_softcapping", 30.0, &c->final_softcap, where))) return rc;
    double s = 256.0;
    if ((rc = gq_cfg_get_num(root, "query_pre_attn_scalar", &s, 0, where))) return rc;
    c->query_pre_attn_scalar = (float)s;
    if (!(s > 0) || !isfinite(c->query_pre_attn_scalar))
        return gq_err(GQ_ERR_FORMAT, "%s: \"query_pre_attn_scalar\" must be > 0, got %g", where, s);
    return GQ_OK;
}

/* rot_dim = head_dim x partial_rotary_factor (rope_parameters' first, as transformers 5, then the
 * top level; default 1): an even whole number >= 2. */
static int parse_rot(gq_config *c, const json_t *root, const char *where) {
    double f = 1.0;
    json_t *rp = json_object_get(root, "rope_parameters");
    const json_t *src = json_is_object(rp) && json_object_get(rp, "partial_rotary_factor") ? rp : root;
    int rc = gq_cfg_get_num(src, "partial_rotary_factor", &f, 0, where);
    if (rc) return rc;
    double d = c->head_dim * f, r = nearbyint(d);
    if (!(f > 0 && f <= 1) || fabs(d - r) > 1e-6 * d || r < 2 || fmod(r, 2.0) != 0)
        return gq_err(GQ_ERR_FORMAT,
                      "%s: partial_rotary_factor %g x head_dim %d = %g rotary dims: expected a factor in (0, 1] "
                      "giving an even whole number >= 2",
                      where, f, c->head_dim, d);
    c->rot_dim = (int)r;
    return GQ_OK;
}

/* ---- experts ---- */

/* n_experts, top_k, norm_topk, moe_inter; defaults as MixtralConfig / Qwen3MoeConfig. */
static int parse_experts(gq_config *c, const json_t *root, const char *where) {
    int rc, mixtral = c->arch_id == GQ_ARCH_MIXTRAL, local = -1, num = -1;
    if ((rc = gq_cfg_get_int(root, "num_local_experts", &local, 0, where))) return rc;
    if ((rc = gq_cfg_get_int(root, "num_experts", &num, 0, where))) return rc;
    if (local >= 0 && num >= 0 && local != num)
        return gq_err(GQ_ERR_FORMAT, "%s: num_local_experts %d and num_experts %d disagree", where, local, num);
    const char *ekey = local >= 0 ? "num_local_experts" : "num_experts";
    c->n_experts = local >= 0 ? local : num >= 0 ? num : mixtral ? 8 : 128;
    c->top_k = mixtral ? 2 : 8;
    if ((rc = gq_cfg_get_int(root, "num_experts_per_tok", &c->top_k, 0, where))) return rc;
    const char *ikey = mixtral ? "intermediate_size" : "moe_intermediate_size";
    c->moe_inter = mixtral ? c->intermediate : 768;
    if ((rc = gq_cfg_get_int(root, ikey, &c->moe_inter, 0, where))) return rc;
    c->norm_topk = 1; /* Mixtral: always */
    if (!mixtral) {
        c->norm_topk = 0;
        if ((rc = gq_cfg_get_bool(root, "norm_topk_prob", &c->norm_topk, where))) return rc;
    }
    if (c->n_experts <= 0 || c->n_experts > GQ_CFG_MAX_EXPERTS)
        return gq_err(GQ_ERR_FORMAT, "%s: \"%s\" is %d: expected 1 to gq's limit of %d", where, ekey, c->n_experts,
                      GQ_CFG_MAX_EXPERTS);
    if (c->top_k < 1 || c->top_k > c->n_experts)
        return gq_err(GQ_ERR_FORMAT, "%s: \"num_experts_per_tok\" is %d: expected 1 to the %d experts", where, c->top_k,
                      c->n_experts);
    if (c->moe_inter <= 0 || c->moe_inter > GQ_CFG_MAX_DIM)
        return gq_err(GQ_ERR_FORMAT, "%s: \"%s\" is %d: expected 1 to gq's limit of %d", where, ikey, c->moe_inter,
                      GQ_CFG_MAX_DIM);
    if ((int64_t)c->n_experts * 2 * c->moe_inter > INT32_MAX)
        return gq_err(GQ_ERR_FORMAT, "%s: %d experts x 2 x %s %d is beyond gq's limit of %d rows", where, c->n_experts,
                      ikey, c->moe_inter, INT32_MAX);
    return GQ_OK;
}

/* layer_moe[]: Mixtral every layer; Qwen3-MoE (l + 1) % decoder_sparse_step == 0 and l not in
 * mlp_only_layers. */
static int parse_sparse_layers(gq_config *c, const json_t *root, const char *where) {
    int rc, step = 1;
    if (c->arch_id == GQ_ARCH_MIXTRAL) {
        memset(c->layer_moe, 1, (size_t)c->n_layers);
        return GQ_OK;
    }
    if ((rc = gq_cfg_get_int(root, "decoder_sparse_step", &step, 0, where))) return rc;
    if (step <= 0) return gq_err(GQ_ERR_FORMAT, "%s: \"decoder_sparse_step\" must be positive, got %d", where, step);
    for (int l = 0; l < c->n_layers; l++) c->layer_moe[l] = (l + 1) % step == 0;
    json_t *m = json_object_get(root, "mlp_only_layers");
    if (!m || json_is_null(m)) return GQ_OK;
    if (!json_is_array(m))
        return gq_err(GQ_ERR_FORMAT, "%s: mlp_only_layers: expected an array of layer indices, got %s", where,
                      gq_json_kind(m));
    size_t i;
    json_t *e;
    json_array_foreach(m, i, e) {
        json_int_t l = json_is_integer(e) ? json_integer_value(e) : -1;
        if (l < 0 || l >= c->n_layers)
            return gq_err(GQ_ERR_FORMAT, "%s: mlp_only_layers[%zu]: expected a layer index in [0, %d), got %s", where,
                          i, c->n_layers, json_is_integer(e) ? "one outside" : gq_json_kind(e));
        c->layer_moe[l] = 0;
    }
    return GQ_OK;
}

int gq_cfg_parse_family(gq_config *c, const json_t *root, const char *where) {
    const gq_arch *a = gq_arch_get(c->arch_id);
    int rc;
    if ((rc = parse_window(c, root, a, where))) return rc;
    if ((rc = parse_gemma(c, root, where))) return rc;
    if ((rc = parse_rot(c, root, where))) return rc;
    if (a->moe != GQ_MOE_NONE) {
        if ((rc = parse_experts(c, root, where))) return rc;
        if ((rc = parse_sparse_layers(c, root, where))) return rc;
    }
    if (a->id == GQ_ARCH_STARCODER2) { /* use_bias (default true): q/k/v/o and c_fc/c_proj */
        int b = 1;
        if ((rc = gq_cfg_get_bool(root, "use_bias", &b, where))) return rc;
        c->attention_bias = c->mlp_bias = b;
    }
    return GQ_OK;
}

/* ---- summary, parameter count ---- */

static size_t add(char *buf, size_t cap, size_t n, const char *fmt, ...) {
    if (n >= cap) return n;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
    return k < 0 ? n : n + (size_t)k;
}

static int count_set(const unsigned char *v, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) k += v[i] != 0;
    return k;
}

void gq_cfg_summary_family(const gq_config *c, char *buf, size_t cap) {
    const gq_arch *a = gq_arch_get(c->arch_id);
    size_t n = 0;
    if (cap) buf[0] = 0;
    if (!a) return;
    n = add(buf, cap, n, ", %s", c->act == GQ_ACT_GELU_TANH ? "gelu_tanh" : "silu");
    if (c->sliding_window)
        n = add(buf, cap, n, ", window %d on %d/%d layers", c->sliding_window, count_set(c->layer_sliding, c->n_layers),
                c->n_layers);
    if (c->rot_dim && c->rot_dim != c->head_dim) n = add(buf, cap, n, ", rotary %d/%d", c->rot_dim, c->head_dim);
    if (c->attn_softcap > 0) n = add(buf, cap, n, ", attn softcap %g", (double)c->attn_softcap);
    if (c->final_softcap > 0) n = add(buf, cap, n, ", final softcap %g", (double)c->final_softcap);
    if (c->query_pre_attn_scalar > 0) n = add(buf, cap, n, ", scale %g^-1/2", (double)c->query_pre_attn_scalar);
    if (a->qkv_bias || c->attention_bias || c->mlp_bias)
        n = add(buf, cap, n, ", bias %s%s", c->attention_bias ? "qkvo" : "qkv", c->mlp_bias ? "+mlp" : "");
    if (c->n_experts)
        add(buf, cap, n, ", %d experts top-%d%s, expert ffn %d, sparse %d/%d layers", c->n_experts, c->top_k,
            c->norm_topk ? " renormalised" : "", c->moe_inter, count_set(c->layer_moe, c->n_layers), c->n_layers);
}

static int64_t mlp_params(int gated, int64_t h, int64_t i, int bias) {
    return gated ? 3 * h * i + (bias ? 2 * i + h : 0) : 2 * h * i + (bias ? i + h : 0);
}

/* Every weight and bias of the family's layout (Phi-3's fused matrices hold the same numbers). */
int64_t gq_config_param_count(const gq_config *c) {
    const gq_arch *a = gq_arch_get(c->arch_id);
    if (!a) a = gq_arch_get(GQ_ARCH_LLAMA);
    int64_t h = c->hidden, hd = c->head_dim;
    int64_t q = (int64_t)c->n_heads * hd, kv = (int64_t)c->n_kv_heads * hd;
    int64_t norm = a->norm == GQ_NORM_LAYER ? 2 * h : h; /* LayerNorm: weight and bias */
    int64_t attn = h * q + 2 * h * kv + q * h;
    if (a->qkv_bias || c->attention_bias) attn += q + 2 * kv;
    if (c->attention_bias) attn += h;
    if (a->qk_norm) attn += 2 * hd;
    for (int s = 0; s < GQ_NORM_SLOTS; s++)
        if (a->norm_name[s]) attn += norm;
    int64_t dense = mlp_params(a->gated, h, c->intermediate, c->mlp_bias);
    int64_t sparse = (int64_t)c->n_experts * (h + 3 * h * c->moe_inter); /* router row + gate, up, down */
    int64_t total = (int64_t)c->vocab * h * (c->tie_word_embeddings ? 1 : 2) + norm;
    for (int l = 0; l < c->n_layers; l++) total += attn + (c->n_experts && c->layer_moe[l] ? sparse : dense);
    return total;
}
