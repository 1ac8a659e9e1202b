/*
 * gq/config.h -- the model configuration from a Hugging Face config.json.
 *
 * Supported: the families of gq/arch.h (Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen3-MoE,
 * Gemma-2, Phi-3, StarCoder2), found from "architectures"[0] (when given it must be a known
 * class) or else "model_type"; anything else is GQ_ERR_UNSUPPORTED with a message saying what
 * was found and listing the known families. Each key means what the family's transformers 5.17
 * config class and modeling file make of it, and an absent key takes that class's default
 * (Mistral's sliding_window 4096, Gemma-2's soft-caps 50 / 30 and query_pre_attn_scalar 256,
 * head_dim 128 for Qwen3 and 256 for Gemma-2, else hidden / heads); null means none (or, for
 * head_dim, hidden / heads). Gemma-2's activation is hidden_activation, the others' hidden_act
 * (silu, or the tanh GELU: gelu_pytorch_tanh, gelu_tanh, gelu_new, gelu_fast); StarCoder2's eps
 * is norm_epsilon and its use_bias sets attention_bias and mlp_bias. sliding_window is 0 when
 * no layer slides, else the window of the layers layer_sliding[] marks.
 *
 * A missing or ill-typed required field is GQ_ERR_FORMAT naming the field, and so is a value
 * no model has: a size <= 0 or beyond the GQ_CFG_MAX_* limits, head_dim odd, hidden_size not a
 * multiple of num_attention_heads (without head_dim), num_attention_heads not a multiple of
 * num_key_value_heads, rms_norm_eps <= 0 (or 0 as float32), rope_theta <= 0, a rope_scaling
 * factor <= 0, a group_size other than -1 or 1..limit, sliding_window <= 0, layer_types not one
 * entry per layer, head_dim x partial_rotary_factor not an even whole number >= 2, a soft-cap
 * <= 0, num_experts_per_tok outside 1..experts, mlp_only_layers naming no layer. An unknown
 * layer_types entry or activation is GQ_ERR_UNSUPPORTED.
 * Whether the tensors match the config is gq_model_check's job (model.h).
 */
#ifndef GQ_CONFIG_H
#define GQ_CONFIG_H

#include "gq/arch.h"
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
    int attention_bias, mlp_bias; /* attention_bias / mlp_bias; StarCoder2's use_bias sets both */
    /* ---- the family (gq/arch.h) and what its config adds ---- */
    gq_arch_id arch_id;
    char model_type[32];     /* "llama", "qwen2", ... (as config.json says, else the family's) */
    gq_act_kind act;         /* hidden_act / hidden_activation: silu or gelu_pytorch_tanh */
    int sliding_window;      /* 0: none */
    unsigned char layer_sliding[GQ_CFG_MAX_LAYERS]; /* 1: layer l uses the sliding window */
    unsigned char layer_moe[GQ_CFG_MAX_LAYERS];     /* 1: layer l is a sparse MoE block */
    float attn_softcap;      /* attn_logit_softcapping, 0 = none */
    float final_softcap;     /* final_logit_softcapping, 0 = none */
    float query_pre_attn_scalar; /* attention scale is its ^-1/2; 0 = head_dim */
    int rot_dim;             /* rotary dims per head: head_dim * partial_rotary_factor (even) */
    int n_experts;           /* num_local_experts / num_experts (0: dense model) */
    int top_k;               /* num_experts_per_tok */
    int norm_topk;           /* renormalise the top-k weights (Mixtral: always; Qwen3-MoE: norm_topk_prob) */
    int moe_inter;           /* an expert's intermediate size (moe_intermediate_size, Mixtral: intermediate_size) */
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
