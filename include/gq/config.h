/*
 * gq/config.h -- the model configuration from a Hugging Face config.json.
 *
 * Supported: LlamaForCausalLM and MistralForCausalLM (the same graph:
 * RMSNorm, RoPE, grouped-query attention, SwiGLU MLP). Anything else is
 * GQ_ERR_UNSUPPORTED with a message saying what was found and what is
 * supported; a missing or ill-typed required field is GQ_ERR_FORMAT naming
 * the field, and so is a value no model has: a size <= 0 or beyond the
 * GQ_CFG_MAX_* limits, head_dim odd, hidden_size not a multiple of
 * num_attention_heads (without head_dim), num_attention_heads not a multiple
 * of num_key_value_heads, rms_norm_eps <= 0 (or 0 as float32), rope_theta
 * <= 0, a rope_scaling factor <= 0, a group_size other than -1 or 1..limit.
 * Whether the tensors match the config is gq_model_check's job (model.h).
 */
#ifndef GQ_CONFIG_H
#define GQ_CONFIG_H

#include "gq/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits config.json is checked against (GQ_ERR_FORMAT naming the field
 * beyond them): far above any Llama-family model (Llama-3.1-405B: 126
 * layers, hidden 16384, ffn 53248, vocab 128256), low enough that products
 * of sizes (heads x head_dim, 3 x that, 2 x ffn) fit an int. */
#define GQ_CFG_MAX_LAYERS 4096
#define GQ_CFG_MAX_DIM (1 << 20)     /* hidden, intermediate, heads, heads x head_dim */
#define GQ_CFG_MAX_VOCAB (1 << 24)

typedef enum {
    GQ_ROPE_NONE = 0, /* plain RoPE */
    GQ_ROPE_LINEAR,   /* positions divided by factor */
    GQ_ROPE_DYNAMIC,  /* NTK-aware base scaling beyond original max positions */
    GQ_ROPE_LLAMA3,   /* Llama-3.1 frequency-dependent scaling */
} gq_rope_type;

typedef struct {
    int bits;         /* 2, 3, 4, 8 */
    int group_size;   /* -1 = per output channel */
    int desc_act;     /* act-order with a g_idx that is not trivial */
    int static_groups;
    int sym;
    int true_sequential;
    double damp_percent;
    char format[16];  /* "gptq" (v1) or "gptq_v2" */
} gq_qconfig;

typedef struct {
    char arch[64];           /* "LlamaForCausalLM" */
    int hidden;              /* hidden_size */
    int intermediate;        /* intermediate_size */
    int n_layers;            /* num_hidden_layers */
    int n_heads;             /* num_attention_heads */
    int n_kv_heads;          /* num_key_value_heads (defaults to n_heads) */
    int head_dim;            /* head_dim (defaults to hidden / n_heads) */
    int vocab;               /* vocab_size */
    int max_pos;             /* max_position_embeddings */
    float rms_eps;           /* rms_norm_eps */
    double rope_theta;       /* rope_theta, top level or rope_parameters */
    gq_rope_type rope_type;
    double rope_factor;      /* linear / dynamic / llama3 factor */
    double rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    int rope_orig_max_pos;   /* original_max_position_embeddings (llama3, dynamic) */
    int tie_word_embeddings;
    int bos_id, eos_id;      /* -1 if absent; eos_id is the first of a list */
    int n_eos;
    int eos_ids[8];
    gq_dtype dtype;          /* torch_dtype / dtype: F16, BF16 or F32 */
    int attention_bias, mlp_bias;
    int has_quant;           /* quantization_config present (a gq/GPTQ output) */
    gq_qconfig quant;
} gq_config;

/* Load config.json from a file path or a model directory. */
int gq_config_load(gq_config *cfg, const char *path);
/* Parse config.json contents already in memory (`where` names it in errors). */
int gq_config_parse(gq_config *cfg, const char *json, size_t len, const char *where);
/* One-line summary: "LlamaForCausalLM hidden 512, ffn 1280, 8 layers, ..." */
void gq_config_summary(const gq_config *cfg, char *buf, size_t cap);

/* Number of weight parameters expected for this configuration. */
int64_t gq_config_param_count(const gq_config *cfg);

#ifdef __cplusplus
}
#endif
#endif /* GQ_CONFIG_H */
