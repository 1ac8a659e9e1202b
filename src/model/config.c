/* config.c -- config.json (Hugging Face) -> gq_config: what every family shares (sizes, rope,
 * dtype, tokens, quantization_config) and which family it is. What a family adds (sliding
 * window, Gemma-2's soft-caps, partial rotary, experts, StarCoder2's use_bias), the summary's
 * family part and the parameter count are in config_family.c. */
#include "gq/config.h"

#include "base/json_util.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Shared with config_family.c (no header: private to these two files; keep in sync). */
int gq_cfg_get_int(const json_t *o, const char *key, int *out, int required, const char *where);
int gq_cfg_get_num(const json_t *o, const char *key, double *out, int required, const char *where);
int gq_cfg_get_bool(const json_t *o, const char *key, int *out, const char *where);
int gq_cfg_parse_family(gq_config *c, const json_t *root, const char *where);
void gq_cfg_summary_family(const gq_config *c, char *buf, size_t cap);

/* An integer field (>= 0): absent or null leaves *out as it is unless required. */
int gq_cfg_get_int(const json_t *o, const char *key, int *out, int required, const char *where) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) return gq_err(GQ_ERR_FORMAT, "%s: missing required field \"%s\"", where, key);
        return GQ_OK;
    }
    if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v)) {
        double d = json_real_value(v);
        if (d < 0 || d > 1e9)
            return gq_err(GQ_ERR_FORMAT, "%s: field \"%s\": expected an integer in [0, 1e9], got %g", where, key, d);
        *out = (int)d;
        return GQ_OK;
    }
    if (!json_is_integer(v))
        return gq_err(GQ_ERR_FORMAT, "%s: field \"%s\": expected an integer, got %s", where, key, gq_json_kind(v));
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > 1000000000)
        return gq_err(GQ_ERR_FORMAT, "%s: field \"%s\": expected an integer in [0, 1e9], got %lld", where, key,
                      (long long)x);
    *out = (int)x;
    return GQ_OK;
}

int gq_cfg_get_num(const json_t *o, const char *key, double *out, int required, const char *where) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) return gq_err(GQ_ERR_FORMAT, "%s: missing required field \"%s\"", where, key);
        return GQ_OK;
    }
    if (!json_is_number(v))
        return gq_err(GQ_ERR_FORMAT, "%s: field \"%s\": expected a number, got %s", where, key, gq_json_kind(v));
    *out = json_number_value(v);
    if (!isfinite(*out)) return gq_err(GQ_ERR_FORMAT, "%s: field \"%s\" is not finite", where, key);
    return GQ_OK;
}

int gq_cfg_get_bool(const json_t *o, const char *key, int *out, const char *where) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return GQ_OK;
    if (!json_is_boolean(v))
        return gq_err(GQ_ERR_FORMAT, "%s: field \"%s\": expected true or false, got %s", where, key, gq_json_kind(v));
    *out = json_is_true(v);
    return GQ_OK;
}

static int parse_rope_scaling(gq_config *c, const json_t *rs, const char *where) {
    int rc;
    const char *type = NULL;
    json_t *t = json_object_get(rs, "rope_type");
    if (!t) t = json_object_get(rs, "type");
    if (t && !json_is_string(t))
        return gq_err(GQ_ERR_FORMAT, "%s: rope_scaling.rope_type: expected a string, got %s", where, gq_json_kind(t));
    type = t ? json_string_value(t) : "default";
    c->rope_factor = 1.0;
    if ((rc = gq_cfg_get_num(rs, "factor", &c->rope_factor, 0, where))) return rc;
    if (!strcmp(type, "default")) {
        c->rope_type = GQ_ROPE_NONE;
    } else if (!strcmp(type, "linear")) {
        c->rope_type = GQ_ROPE_LINEAR;
    } else if (!strcmp(type, "dynamic")) {
        c->rope_type = GQ_ROPE_DYNAMIC;
    } else if (!strcmp(type, "llama3")) {
        c->rope_type = GQ_ROPE_LLAMA3;
        c->rope_low_freq_factor = 1.0;
        c->rope_high_freq_factor = 4.0;
        if ((rc = gq_cfg_get_num(rs, "low_freq_factor", &c->rope_low_freq_factor, 1, where))) return rc;
        if ((rc = gq_cfg_get_num(rs, "high_freq_factor", &c->rope_high_freq_factor, 1, where))) return rc;
        if ((rc = gq_cfg_get_int(rs, "original_max_position_embeddings", &c->rope_orig_max_pos, 1, where))) return rc;
        if (!(c->rope_low_freq_factor > 0))
            return gq_err(GQ_ERR_FORMAT, "%s: rope_scaling.low_freq_factor must be > 0, got %g", where,
                          c->rope_low_freq_factor);
        if (c->rope_high_freq_factor <= c->rope_low_freq_factor)
            return gq_err(GQ_ERR_FORMAT, "%s: rope_scaling: high_freq_factor %g must exceed low_freq_factor %g", where,
                          c->rope_high_freq_factor, c->rope_low_freq_factor);
    } else {
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "%s: rope_scaling type \"%s\" is not supported (supported: none, linear, dynamic, llama3)", where,
                      type);
    }
    if (c->rope_type != GQ_ROPE_NONE && !(c->rope_factor > 0))
        return gq_err(GQ_ERR_FORMAT, "%s: rope_scaling.factor must be > 0, got %g", where, c->rope_factor);
    if (c->rope_type == GQ_ROPE_DYNAMIC) {
        json_t *o = json_object_get(rs, "original_max_position_embeddings");
        if (o && (rc = gq_cfg_get_int(rs, "original_max_position_embeddings", &c->rope_orig_max_pos, 1, where)))
            return rc;
    }
    return GQ_OK;
}

static int parse_dtype(gq_config *c, const json_t *root, const char *where) {
    json_t *v = json_object_get(root, "torch_dtype");
    if (!v || json_is_null(v)) v = json_object_get(root, "dtype");
    c->dtype = GQ_DT_F16;
    if (!v || json_is_null(v)) return GQ_OK;
    if (!json_is_string(v))
        return gq_err(GQ_ERR_FORMAT, "%s: torch_dtype: expected a string, got %s", where, gq_json_kind(v));
    const char *s = json_string_value(v);
    if (!strcmp(s, "float16") || !strcmp(s, "half"))
        c->dtype = GQ_DT_F16;
    else if (!strcmp(s, "bfloat16"))
        c->dtype = GQ_DT_BF16;
    else if (!strcmp(s, "float32") || !strcmp(s, "float"))
        c->dtype = GQ_DT_F32;
    else
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: torch_dtype \"%s\" is not supported (float16, bfloat16, float32)", where,
                      s);
    return GQ_OK;
}

static int parse_quant(gq_config *c, const json_t *q, const char *where) {
    int rc;
    json_t *m = json_object_get(q, "quant_method");
    if (!json_is_string(m) || strcmp(json_string_value(m), "gptq") != 0)
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: quantization_config.quant_method: expected \"gptq\", got %s", where,
                      json_is_string(m) ? json_string_value(m) : "none");
    gq_qconfig *qc = &c->quant;
    qc->bits = 4;
    qc->group_size = -1;
    qc->sym = 1;
    qc->true_sequential = 1;
    qc->damp_percent = 0.01;
    if ((rc = gq_cfg_get_int(q, "bits", &qc->bits, 1, where))) return rc;
    json_t *g = json_object_get(q, "group_size");
    if (json_is_integer(g) && (json_integer_value(g) < -1 || json_integer_value(g) > GQ_CFG_MAX_DIM))
        return gq_err(GQ_ERR_FORMAT, "%s: quantization_config.group_size %lld: expected -1 or a size up to %d", where,
                      (long long)json_integer_value(g), GQ_CFG_MAX_DIM);
    if (json_is_integer(g))
        qc->group_size = (int)json_integer_value(g);
    else if (g && !json_is_null(g))
        return gq_err(GQ_ERR_FORMAT, "%s: quantization_config.group_size: expected an integer, got %s", where,
                      gq_json_kind(g));
    if ((rc = gq_cfg_get_bool(q, "desc_act", &qc->desc_act, where))) return rc;
    if ((rc = gq_cfg_get_bool(q, "static_groups", &qc->static_groups, where))) return rc;
    if ((rc = gq_cfg_get_bool(q, "sym", &qc->sym, where))) return rc;
    if ((rc = gq_cfg_get_bool(q, "true_sequential", &qc->true_sequential, where))) return rc;
    if ((rc = gq_cfg_get_num(q, "damp_percent", &qc->damp_percent, 0, where))) return rc;
    json_t *f = json_object_get(q, "checkpoint_format");
    if (!f) f = json_object_get(q, "format");
    snprintf(qc->format, sizeof qc->format, "%s", json_is_string(f) ? json_string_value(f) : "gptq");
    if (strcmp(qc->format, "gptq") && strcmp(qc->format, "gptq_v2"))
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "%s: quantization_config.checkpoint_format \"%s\" is not supported (gptq, gptq_v2)", where,
                      qc->format);
    if (qc->bits != 2 && qc->bits != 3 && qc->bits != 4 && qc->bits != 8)
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: quantization_config.bits %d is not supported (2, 3, 4, 8)", where,
                      qc->bits);
    if (qc->group_size == 0 || qc->group_size < -1)
        return gq_err(GQ_ERR_FORMAT, "%s: quantization_config.group_size %d: expected -1 or a positive size", where,
                      qc->group_size);
    c->has_quant = 1;
    return GQ_OK;
}

/* The sizes of the graph: each positive and within the GQ_CFG_MAX_* limits
 * (so that every product of them fits the ints the forward uses). */
static int check_sizes(const gq_config *c, const char *where) {
    const struct {
        const char *field;
        int64_t v, max;
    } lim[] = {
        {"hidden_size", c->hidden, GQ_CFG_MAX_DIM},
        {"intermediate_size", c->intermediate, GQ_CFG_MAX_DIM},
        {"num_hidden_layers", c->n_layers, GQ_CFG_MAX_LAYERS},
        {"num_attention_heads", c->n_heads, GQ_CFG_MAX_DIM},
        {"num_key_value_heads", c->n_kv_heads, GQ_CFG_MAX_DIM},
        {"vocab_size", c->vocab, GQ_CFG_MAX_VOCAB},
        {"max_position_embeddings", c->max_pos, INT32_MAX},
    };
    for (size_t i = 0; i < sizeof lim / sizeof *lim; i++) {
        if (lim[i].v <= 0)
            return gq_err(GQ_ERR_FORMAT, "%s: \"%s\" must be positive, got %lld", where, lim[i].field,
                          (long long)lim[i].v);
        if (lim[i].v > lim[i].max)
            return gq_err(GQ_ERR_FORMAT,
                          "%s: \"%s\" is %lld, beyond gq's limit of %lld (no Llama-family model comes near it)", where,
                          lim[i].field, (long long)lim[i].v, (long long)lim[i].max);
    }
    return GQ_OK;
}

/* head_dim absent: the family's default (transformers' config class: Qwen3 128, Gemma-2 256),
 * else hidden / heads; null: hidden / heads (Mixtral writes null). */
static int family_head_dim(gq_arch_id id) {
    return id == GQ_ARCH_QWEN3 ? 128 : id == GQ_ARCH_GEMMA2 ? 256 : 0;
}

/* rms_norm_eps, or StarCoder2's norm_epsilon (the eps of its LayerNorms); defaults as transformers. */
static int parse_eps(gq_config *c, const json_t *root, const char *where) {
    const gq_arch_id id = c->arch_id;
    const char *key = id == GQ_ARCH_STARCODER2 ? "norm_epsilon" : "rms_norm_eps";
    double eps = id == GQ_ARCH_MIXTRAL || id == GQ_ARCH_PHI3 || id == GQ_ARCH_STARCODER2 ? 1e-5 : 1e-6;
    int rc = gq_cfg_get_num(root, key, &eps, 0, where);
    if (rc) return rc;
    c->rms_eps = (float)eps;
    if (!(eps > 0) || !(c->rms_eps > 0) || !isfinite(c->rms_eps))
        return gq_err(GQ_ERR_FORMAT, "%s: \"%s\" must be a number > 0 that float32 holds, got %g", where, key, eps);
    return GQ_OK;
}

/* hidden, intermediate, layers, heads, kv heads, head_dim, vocab, max
 * positions and the norm eps. */
static int parse_sizes(gq_config *c, const json_t *root, const char *where) {
    int rc;
    if ((rc = gq_cfg_get_int(root, "hidden_size", &c->hidden, 1, where))) return rc;
    if ((rc = gq_cfg_get_int(root, "intermediate_size", &c->intermediate, 1, where))) return rc;
    if ((rc = gq_cfg_get_int(root, "num_hidden_layers", &c->n_layers, 1, where))) return rc;
    if ((rc = gq_cfg_get_int(root, "num_attention_heads", &c->n_heads, 1, where))) return rc;
    c->n_kv_heads = c->n_heads;
    if ((rc = gq_cfg_get_int(root, "num_key_value_heads", &c->n_kv_heads, 0, where))) return rc;
    if ((rc = gq_cfg_get_int(root, "vocab_size", &c->vocab, 1, where))) return rc;
    c->max_pos = 2048;
    if ((rc = gq_cfg_get_int(root, "max_position_embeddings", &c->max_pos, 0, where))) return rc;
    if ((rc = check_sizes(c, where))) return rc;
    json_t *hdv = json_object_get(root, "head_dim");
    int hd_default = hdv ? 0 : family_head_dim(c->arch_id);
    if ((!hdv || json_is_null(hdv)) && !hd_default && c->hidden % c->n_heads)
        return gq_err(GQ_ERR_FORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d (and no head_dim)",
                      where, c->hidden, c->n_heads);
    if (c->n_heads % c->n_kv_heads)
        return gq_err(GQ_ERR_FORMAT, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", where,
                      c->n_heads, c->n_kv_heads);
    c->head_dim = hd_default ? hd_default : c->hidden / c->n_heads;
    if ((rc = gq_cfg_get_int(root, "head_dim", &c->head_dim, 0, where))) return rc;
    if (c->head_dim <= 0 || c->head_dim % 2)
        return gq_err(GQ_ERR_FORMAT, "%s: head_dim must be positive and even, got %d", where, c->head_dim);
    if ((int64_t)c->n_heads * c->head_dim > GQ_CFG_MAX_DIM)
        return gq_err(GQ_ERR_FORMAT,
                      "%s: num_attention_heads %d x head_dim %d = %lld, beyond gq's limit of %d (no "
                      "Llama-family model comes near it)",
                      where, c->n_heads, c->head_dim, (long long)c->n_heads * c->head_dim, GQ_CFG_MAX_DIM);
    return parse_eps(c, root, where);
}

/* The family (gq/arch.h): "architectures"[0] when given (the class must be known: it decides the
 * head and tensor names), else "model_type". c->arch is the family's class name; c->model_type
 * what config.json says, else the family's. */
static int parse_arch(gq_config *c, const json_t *root, const char *where) {
    json_t *archs = json_object_get(root, "architectures");
    json_t *mt = json_object_get(root, "model_type");
    const char *name = NULL, *mt_name = json_is_string(mt) ? json_string_value(mt) : NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0 && json_is_string(json_array_get(archs, 0)))
        name = json_string_value(json_array_get(archs, 0));
    int from_arch = name != NULL;
    if (!name) name = mt_name;
    if (!name)
        return gq_err(GQ_ERR_FORMAT, "%s: neither \"architectures\" nor \"model_type\" says what the model is", where);
    const gq_arch *a = gq_arch_find(name);
    if (!a) {
        char known[1024];
        gq_arch_list(known, sizeof known);
        int both = from_arch && mt_name;
        return gq_err(GQ_ERR_UNSUPPORTED, "%s: %s \"%s\"%s%s%s is not supported (supported: %s)", where,
                      from_arch ? "architecture" : "model_type", name, both ? " (model_type \"" : "",
                      both ? mt_name : "", both ? "\")" : "", known);
    }
    c->arch_id = a->id;
    snprintf(c->arch, sizeof c->arch, "%s", a->hf_arch);
    snprintf(c->model_type, sizeof c->model_type, "%s", mt_name ? mt_name : a->model_type);
    return GQ_OK;
}

/* hidden_act (Gemma-2: hidden_activation, the only key its transformers class reads); absent: the
 * family's. gelu_new and gelu_fast are the tanh formula written differently; gelu (erf) is not. */
static int parse_act(gq_config *c, const json_t *root, const char *where) {
    static const struct {
        const char *name;
        gq_act_kind act;
    } acts[] = {{"silu", GQ_ACT_SILU},
                {"swish", GQ_ACT_SILU},
                {"gelu_pytorch_tanh", GQ_ACT_GELU_TANH},
                {"gelu_tanh", GQ_ACT_GELU_TANH},
                {"gelu_new", GQ_ACT_GELU_TANH},
                {"gelu_fast", GQ_ACT_GELU_TANH},
                {"gelu_python_tanh", GQ_ACT_GELU_TANH}};
    const char *key = c->arch_id == GQ_ARCH_GEMMA2 ? "hidden_activation" : "hidden_act";
    json_t *v = json_object_get(root, key);
    c->act = gq_arch_get(c->arch_id)->act;
    if (!v || json_is_null(v)) return GQ_OK;
    if (!json_is_string(v))
        return gq_err(GQ_ERR_FORMAT, "%s: %s: expected a string, got %s", where, key, gq_json_kind(v));
    for (size_t i = 0; i < sizeof acts / sizeof *acts; i++) {
        if (!strcmp(json_string_value(v), acts[i].name)) {
            c->act = acts[i].act;
            return GQ_OK;
        }
    }
    return gq_err(GQ_ERR_UNSUPPORTED,
                  "%s: %s \"%s\" is not supported (silu; gelu_pytorch_tanh and its other names gelu_tanh, gelu_new, "
                  "gelu_fast)",
                  where, key, json_string_value(v));
}

/* rope: inside rope_parameters (transformers 5) and/or top level (classic). */
static int parse_rope(gq_config *c, const json_t *root, const char *where) {
    int rc;
    c->rope_theta = 10000.0;
    c->rope_type = GQ_ROPE_NONE;
    c->rope_factor = 1.0;
    json_t *rp = json_object_get(root, "rope_parameters");
    if (rp && !json_is_null(rp)) {
        if (!json_is_object(rp))
            return gq_err(GQ_ERR_FORMAT, "%s: rope_parameters: expected an object, got %s", where, gq_json_kind(rp));
        if ((rc = gq_cfg_get_num(rp, "rope_theta", &c->rope_theta, 0, where))) return rc;
        if ((rc = parse_rope_scaling(c, rp, where))) return rc;
    }
    if ((rc = gq_cfg_get_num(root, "rope_theta", &c->rope_theta, 0, where))) return rc;
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs))
            return gq_err(GQ_ERR_FORMAT, "%s: rope_scaling: expected an object or null, got %s", where,
                          gq_json_kind(rs));
        if ((rc = parse_rope_scaling(c, rs, where))) return rc;
    }
    if (!(c->rope_theta > 0) || !isfinite((float)c->rope_theta))
        return gq_err(GQ_ERR_FORMAT, "%s: rope_theta must be > 0 (and within float32 range), got %g", where,
                      c->rope_theta);
    if (c->rope_type == GQ_ROPE_DYNAMIC && c->rope_orig_max_pos <= 0) c->rope_orig_max_pos = c->max_pos;
    return GQ_OK;
}

/* bos_token_id, eos_token_id (an id or a list: the first 8 kept, eos_id the first). */
static int parse_tokens(gq_config *c, const json_t *root, const char *where) {
    int rc;
    c->bos_id = -1;
    c->eos_id = -1;
    if ((rc = gq_cfg_get_int(root, "bos_token_id", &c->bos_id, 0, where))) return rc;
    json_t *eos = json_object_get(root, "eos_token_id");
    if (json_is_array(eos)) {
        size_t i;
        json_t *e;
        json_array_foreach(eos, i, e) {
            if (!json_is_integer(e))
                return gq_err(GQ_ERR_FORMAT, "%s: eos_token_id[%zu]: expected an integer, got %s", where, i,
                              gq_json_kind(e));
            if (c->n_eos < 8) c->eos_ids[c->n_eos++] = (int)json_integer_value(e);
        }
        if (c->n_eos) c->eos_id = c->eos_ids[0];
    } else if (eos && !json_is_null(eos)) {
        if ((rc = gq_cfg_get_int(root, "eos_token_id", &c->eos_id, 0, where))) return rc;
        c->eos_ids[0] = c->eos_id;
        c->n_eos = 1;
    }
    return GQ_OK;
}

static int parse_root(gq_config *c, const json_t *root, const char *where) {
    int rc;
    if ((rc = parse_arch(c, root, where))) return rc;
    if ((rc = parse_act(c, root, where))) return rc;
    if ((rc = parse_sizes(c, root, where))) return rc;
    if ((rc = parse_rope(c, root, where))) return rc;
    if ((rc = gq_cfg_get_bool(root, "tie_word_embeddings", &c->tie_word_embeddings, where))) return rc;
    if ((rc = gq_cfg_get_bool(root, "attention_bias", &c->attention_bias, where))) return rc;
    if ((rc = gq_cfg_get_bool(root, "mlp_bias", &c->mlp_bias, where))) return rc;
    if ((rc = gq_cfg_parse_family(c, root, where))) return rc;
    if ((rc = parse_tokens(c, root, where))) return rc;
    if ((rc = parse_dtype(c, root, where))) return rc;
    json_t *q = json_object_get(root, "quantization_config");
    if (q && !json_is_null(q)) {
        if (!json_is_object(q))
            return gq_err(GQ_ERR_FORMAT, "%s: quantization_config: expected an object, got %s", where, gq_json_kind(q));
        if ((rc = parse_quant(c, q, where))) return rc;
    }
    return GQ_OK;
}

int gq_config_parse(gq_config *c, const char *text, size_t len, const char *where) {
    json_error_t je;
    int rc;
    memset(c, 0, sizeof *c);
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root)
        return gq_err(GQ_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s", where, je.line, je.column, je.text);
    if (json_is_object(root))
        rc = parse_root(c, root, where);
    else
        rc = gq_err(GQ_ERR_FORMAT, "%s: expected a JSON object, got %s", where, gq_json_kind(root));
    json_decref(root);
    return rc;
}

int gq_config_load(gq_config *c, const char *path) {
    char *p = gq_is_dir(path) ? gq_path_join(path, "config.json") : gq_strdup(path);
    char *text = NULL;
    size_t len = 0;
    int rc = gq_read_file(p, &text, &len);
    if (rc == GQ_OK) rc = gq_config_parse(c, text, len, p);
    free(text);
    free(p);
    return rc;
}

static const char *rope_name(gq_rope_type t) {
    switch (t) {
    case GQ_ROPE_LINEAR:
        return "linear";
    case GQ_ROPE_DYNAMIC:
        return "dynamic";
    case GQ_ROPE_LLAMA3:
        return "llama3";
    default:
        return "none";
    }
}

void gq_config_summary(const gq_config *c, char *buf, size_t cap) {
    int n = snprintf(buf, cap,
                     "%s: hidden %d, intermediate %d, %d layers, %d heads, %d kv heads, head_dim %d, vocab %d, "
                     "rope_theta %g (scaling %s), rms_eps %g, %s embeddings, %s",
                     c->arch, c->hidden, c->intermediate, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab,
                     c->rope_theta, rope_name(c->rope_type), (double)c->rms_eps,
                     c->tie_word_embeddings ? "tied" : "untied", gq_dtype_name(c->dtype));
    if (n > 0 && (size_t)n < cap) gq_cfg_summary_family(c, buf + n, cap - (size_t)n);
}
