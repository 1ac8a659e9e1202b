/* config.c -- config.json (Hugging Face) -> gq_config, Llama family only. */
#include "gq/config.h"

#include "json_util.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const supported_archs[] = {"LlamaForCausalLM", "MistralForCausalLM"};


/* Required positive integer field. */
static int get_int(const json_t *o, const char *key, int *out, int required, const char *where) {
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

static int get_num(const json_t *o, const char *key, double *out, int required, const char *where) {
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

static int get_bool(const json_t *o, const char *key, int *out, const char *where) {
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
    if ((rc = get_num(rs, "factor", &c->rope_factor, 0, where))) return rc;
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
        if ((rc = get_num(rs, "low_freq_factor", &c->rope_low_freq_factor, 1, where))) return rc;
        if ((rc = get_num(rs, "high_freq_factor", &c->rope_high_freq_factor, 1, where))) return rc;
        if ((rc = get_int(rs, "original_max_position_embeddings", &c->rope_orig_max_pos, 1, where))) return rc;
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
        if (o && (rc = get_int(rs, "original_max_position_embeddings", &c->rope_orig_max_pos, 1, where))) return rc;
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
    if ((rc = get_int(q, "bits", &qc->bits, 1, where))) return rc;
    json_t *g = json_object_get(q, "group_size");
    if (json_is_integer(g) && (json_integer_value(g) < -1 || json_integer_value(g) > GQ_CFG_MAX_DIM))
        return gq_err(GQ_ERR_FORMAT, "%s: quantization_config.group_size %lld: expected -1 or a size up to %d", where,
                      (long long)json_integer_value(g), GQ_CFG_MAX_DIM);
    if (json_is_integer(g))
        qc->group_size = (int)json_integer_value(g);
    else if (g && !json_is_null(g))
        return gq_err(GQ_ERR_FORMAT, "%s: quantization_config.group_size: expected an integer, got %s", where,
                      gq_json_kind(g));
    if ((rc = get_bool(q, "desc_act", &qc->desc_act, where))) return rc;
    if ((rc = get_bool(q, "static_groups", &qc->static_groups, where))) return rc;
    if ((rc = get_bool(q, "sym", &qc->sym, where))) return rc;
    if ((rc = get_bool(q, "true_sequential", &qc->true_sequential, where))) return rc;
    if ((rc = get_num(q, "damp_percent", &qc->damp_percent, 0, where))) return rc;
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

/* hidden, intermediate, layers, heads, kv heads, head_dim, vocab, max
 * positions and rms_norm_eps. */
static int parse_sizes(gq_config *c, const json_t *root, const char *where) {
    int rc;
    if ((rc = get_int(root, "hidden_size", &c->hidden, 1, where))) return rc;
    if ((rc = get_int(root, "intermediate_size", &c->intermediate, 1, where))) return rc;
    if ((rc = get_int(root, "num_hidden_layers", &c->n_layers, 1, where))) return rc;
    if ((rc = get_int(root, "num_attention_heads", &c->n_heads, 1, where))) return rc;
    c->n_kv_heads = c->n_heads;
    if ((rc = get_int(root, "num_key_value_heads", &c->n_kv_heads, 0, where))) return rc;
    if ((rc = get_int(root, "vocab_size", &c->vocab, 1, where))) return rc;
    c->max_pos = 2048;
    if ((rc = get_int(root, "max_position_embeddings", &c->max_pos, 0, where))) return rc;
    if ((rc = check_sizes(c, where))) return rc;
    json_t *hdv = json_object_get(root, "head_dim");
    if ((!hdv || json_is_null(hdv)) && c->hidden % c->n_heads)
        return gq_err(GQ_ERR_FORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d (and no head_dim)",
                      where, c->hidden, c->n_heads);
    if (c->n_heads % c->n_kv_heads)
        return gq_err(GQ_ERR_FORMAT, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", where,
                      c->n_heads, c->n_kv_heads);
    c->head_dim = c->hidden / c->n_heads;
    if ((rc = get_int(root, "head_dim", &c->head_dim, 0, where))) return rc;
    if (c->head_dim <= 0 || c->head_dim % 2)
        return gq_err(GQ_ERR_FORMAT, "%s: head_dim must be positive and even, got %d", where, c->head_dim);
    if ((int64_t)c->n_heads * c->head_dim > GQ_CFG_MAX_DIM)
        return gq_err(GQ_ERR_FORMAT,
                      "%s: num_attention_heads %d x head_dim %d = %lld, beyond gq's limit of %d (no "
                      "Llama-family model comes near it)",
                      where, c->n_heads, c->head_dim, (long long)c->n_heads * c->head_dim, GQ_CFG_MAX_DIM);
    double eps = 1e-6;
    if ((rc = get_num(root, "rms_norm_eps", &eps, 0, where))) return rc;
    c->rms_eps = (float)eps;
    if (!(eps > 0) || !(c->rms_eps > 0) || !isfinite(c->rms_eps))
        return gq_err(GQ_ERR_FORMAT, "%s: \"rms_norm_eps\" must be a number > 0 that float32 holds, got %g", where,
                      eps);
    return GQ_OK;
}

/* "architectures"[0], or what "model_type" implies: Llama or Mistral. */
static int parse_arch(gq_config *c, const json_t *root, const char *where) {
    json_t *archs = json_object_get(root, "architectures");
    json_t *mt = json_object_get(root, "model_type");
    const char *arch = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0 && json_is_string(json_array_get(archs, 0)))
        arch = json_string_value(json_array_get(archs, 0));
    if (!arch && json_is_string(mt)) {
        const char *m = json_string_value(mt);
        if (!strcmp(m, "llama"))
            arch = "LlamaForCausalLM";
        else if (!strcmp(m, "mistral"))
            arch = "MistralForCausalLM";
        else
            arch = m;
    }
    if (!arch)
        return gq_err(GQ_ERR_FORMAT, "%s: neither \"architectures\" nor \"model_type\" says what the model is", where);
    int ok = 0;
    for (size_t i = 0; i < sizeof supported_archs / sizeof *supported_archs; i++)
        if (!strcmp(arch, supported_archs[i])) ok = 1;
    if (!ok)
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "%s: architecture \"%s\" is not supported (supported: LlamaForCausalLM, MistralForCausalLM)",
                      where, arch);
    snprintf(c->arch, sizeof c->arch, "%s", arch);
    return GQ_OK;
}

int gq_config_parse(gq_config *c, const char *text, size_t len, const char *where) {
    json_error_t je;
    int rc = GQ_OK;
    memset(c, 0, sizeof *c);
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root)
        return gq_err(GQ_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s", where, je.line, je.column, je.text);
    if (!json_is_object(root)) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: expected a JSON object, got %s", where, gq_json_kind(root));
        goto done;
    }

    if ((rc = parse_arch(c, root, where))) goto done;

    /* activation and sliding window: only what the Llama graph computes */
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !(json_is_string(act) && !strcmp(json_string_value(act), "silu"))) {
        rc = gq_err(GQ_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" is not supported (silu)", where,
                    json_is_string(act) ? json_string_value(act) : gq_json_kind(act));
        goto done;
    }
    json_t *sw = json_object_get(root, "sliding_window");
    if (sw && !json_is_null(sw))
        gq_warn("%s: sliding_window is set; gq attends over the whole sequence (exact for sequences up to the "
                "window)",
                where);

    if ((rc = parse_sizes(c, root, where))) goto done;

    /* rope: top level (classic) or inside rope_parameters (transformers 5) */
    c->rope_theta = 10000.0;
    c->rope_type = GQ_ROPE_NONE;
    c->rope_factor = 1.0;
    json_t *rp = json_object_get(root, "rope_parameters");
    if (rp && !json_is_null(rp)) {
        if (!json_is_object(rp)) {
            rc = gq_err(GQ_ERR_FORMAT, "%s: rope_parameters: expected an object, got %s", where, gq_json_kind(rp));
            goto done;
        }
        if ((rc = get_num(rp, "rope_theta", &c->rope_theta, 0, where))) goto done;
        if ((rc = parse_rope_scaling(c, rp, where))) goto done;
    }
    if ((rc = get_num(root, "rope_theta", &c->rope_theta, 0, where))) goto done;
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs)) {
            rc = gq_err(GQ_ERR_FORMAT, "%s: rope_scaling: expected an object or null, got %s", where,
                        gq_json_kind(rs));
            goto done;
        }
        if ((rc = parse_rope_scaling(c, rs, where))) goto done;
    }
    if (!(c->rope_theta > 0) || !isfinite((float)c->rope_theta)) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: rope_theta must be > 0 (and within float32 range), got %g", where,
                    c->rope_theta);
        goto done;
    }
    if (c->rope_type == GQ_ROPE_DYNAMIC && c->rope_orig_max_pos <= 0) c->rope_orig_max_pos = c->max_pos;

    if ((rc = get_bool(root, "tie_word_embeddings", &c->tie_word_embeddings, where))) goto done;
    if ((rc = get_bool(root, "attention_bias", &c->attention_bias, where))) goto done;
    if ((rc = get_bool(root, "mlp_bias", &c->mlp_bias, where))) goto done;

    c->bos_id = -1;
    c->eos_id = -1;
    if ((rc = get_int(root, "bos_token_id", &c->bos_id, 0, where))) goto done;
    json_t *eos = json_object_get(root, "eos_token_id");
    if (json_is_array(eos)) {
        size_t i;
        json_t *e;
        json_array_foreach(eos, i, e) {
            if (!json_is_integer(e)) {
                rc = gq_err(GQ_ERR_FORMAT, "%s: eos_token_id[%zu]: expected an integer, got %s", where, i,
                            gq_json_kind(e));
                goto done;
            }
            if (c->n_eos < 8) c->eos_ids[c->n_eos++] = (int)json_integer_value(e);
        }
        if (c->n_eos) c->eos_id = c->eos_ids[0];
    } else if (eos && !json_is_null(eos)) {
        if ((rc = get_int(root, "eos_token_id", &c->eos_id, 0, where))) goto done;
        c->eos_ids[0] = c->eos_id;
        c->n_eos = 1;
    }
    if ((rc = parse_dtype(c, root, where))) goto done;

    json_t *q = json_object_get(root, "quantization_config");
    if (q && !json_is_null(q)) {
        if (!json_is_object(q)) {
            rc = gq_err(GQ_ERR_FORMAT, "%s: quantization_config: expected an object, got %s", where, gq_json_kind(q));
            goto done;
        }
        if ((rc = parse_quant(c, q, where))) goto done;
    }
done:
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
    snprintf(buf, cap,
             "%s: hidden %d, intermediate %d, %d layers, %d heads, %d kv heads, head_dim %d, vocab %d, "
             "rope_theta %g (scaling %s), rms_eps %g, %s embeddings, %s",
             c->arch, c->hidden, c->intermediate, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab,
             c->rope_theta, rope_name(c->rope_type), (double)c->rms_eps, c->tie_word_embeddings ? "tied" : "untied",
             gq_dtype_name(c->dtype));
}

int64_t gq_config_param_count(const gq_config *c) {
    int64_t h = c->hidden, i = c->intermediate, hd = c->head_dim;
    int64_t q = (int64_t)c->n_heads * hd, kv = (int64_t)c->n_kv_heads * hd;
    int64_t attn = h * q + 2 * h * kv + q * h;
    if (c->attention_bias) attn += q + 2 * kv + h;
    int64_t mlp = 3 * h * i;
    if (c->mlp_bias) mlp += 2 * i + h;
    int64_t layer = attn + mlp + 2 * h;
    int64_t emb = (int64_t)c->vocab * h;
    return emb * (c->tie_word_embeddings ? 1 : 2) + c->n_layers * layer + h;
}
