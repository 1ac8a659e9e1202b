/*
 * gq/arch.h -- one description per model family (in the spirit of llama.cpp's llama-arch):
 * tensor names, which linears exist and which share an input (and so a Hessian), norms,
 * biases, activation, attention variants, embedding scale and MoE routing. The layer graph
 * (gq/graph.h), the loader, the checker and the exporter read only this table and the
 * config; adding a family is a row in src/model/arch.c plus what its config needs.
 *
 * A layer is four groups of linears, each group one stacked weight solved with one Hessian
 * (GPTQ rows are independent, so stacking rows that see the same input is exact):
 *   GQ_GRP_ATTN_IN   q, k, v (Phi-3: the fused qkv_proj)      [nq + 2 nkv][hidden]
 *   GQ_GRP_ATTN_OUT  o                                         [hidden][nq]
 *   GQ_GRP_MLP_IN    gate, up (Phi-3: gate_up_proj; StarCoder2: c_fc only)  [2I or I][hidden]
 *   GQ_GRP_MLP_OUT   down (StarCoder2: c_proj)                 [hidden][I]
 * In a MoE layer the MLP groups exist once per expert (I = the expert's width) and the router
 * stays in full precision.
 */
#ifndef GQ_ARCH_H
#define GQ_ARCH_H

#include "gq/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    GQ_ARCH_LLAMA = 0,
    GQ_ARCH_MISTRAL,
    GQ_ARCH_QWEN2,
    GQ_ARCH_QWEN3,
    GQ_ARCH_MIXTRAL,
    GQ_ARCH_QWEN3_MOE,
    GQ_ARCH_GEMMA2,
    GQ_ARCH_PHI3,
    GQ_ARCH_STARCODER2,
    GQ_ARCH_COUNT
} gq_arch_id;

typedef enum {
    GQ_NORM_RMS = 0, /* x / sqrt(mean(x^2) + eps) * w */
    GQ_NORM_RMS_P1,  /* the same times (1 + w): Gemma (the file stores w) */
    GQ_NORM_LAYER,   /* LayerNorm with weight and bias */
} gq_norm_kind;

/* Which layers the config's sliding_window applies to. */
typedef enum {
    GQ_WIN_NONE = 0,    /* never */
    GQ_WIN_ALL,         /* every layer when sliding_window is set (Mistral, Mixtral, Phi-3, StarCoder2) */
    GQ_WIN_QWEN,        /* use_sliding_window: layers >= max_window_layers (layer_types when given) */
    GQ_WIN_LAYER_TYPES, /* the layers layer_types marks "sliding_attention" (Gemma-2; default: even ones) */
} gq_window_rule;

typedef enum {
    GQ_MOE_NONE = 0,
    GQ_MOE_SOFTMAX_TOPK, /* p = softmax(router logits) in fp32 over all experts, top-k of p, weights p_k /
                            sum(p_top) when renormalised (Mixtral always; Qwen3-MoE: norm_topk_prob) */
} gq_moe_kind;

/* The norms of a layer, by where they act. */
typedef enum { GQ_NORM_ATTN_PRE = 0, GQ_NORM_ATTN_POST, GQ_NORM_MLP_PRE, GQ_NORM_MLP_POST, GQ_NORM_SLOTS } gq_norm_slot;

typedef enum { GQ_GRP_ATTN_IN = 0, GQ_GRP_ATTN_OUT, GQ_GRP_MLP_IN, GQ_GRP_MLP_OUT, GQ_GRP_COUNT } gq_group;

typedef struct {
    gq_arch_id id;
    const char *model_type; /* "llama" */
    const char *hf_arch;    /* "LlamaForCausalLM" */
    gq_norm_kind norm;
    gq_act_kind act;        /* the MLP activation the family uses (hidden_act must agree) */
    int gated;              /* act(gate) * up; else act(c_fc) */
    int qkv_bias;           /* 1: q/k/v biases always (Qwen2); 0: per config (attention_bias / use_bias) */
    int qk_norm;            /* RMSNorm over head_dim of each q and k head, before RoPE (Qwen3) */
    int embed_scale;        /* embeddings times sqrt(hidden) in fp32 (Gemma; transformers' fp32 normalizer) */
    gq_window_rule window;
    gq_moe_kind moe;
    /* tensor names inside "model.layers.L." without ".weight"/".bias"; unused entries NULL */
    const char *norm_name[GQ_NORM_SLOTS];
    const char *attn_in[3];  /* {q, k, v} or {qkv} (fused, Phi-3) */
    const char *attn_out;
    const char *mlp_in[2];   /* {gate, up}, {gate_up} (fused, Phi-3) or {c_fc} (not gated) */
    const char *mlp_out;
    const char *q_norm, *k_norm;
    /* MoE (moe != GQ_MOE_NONE): per-expert layout "<expert_prefix><e>.<gate|up|down>.weight";
     * fused layout "<fused_prefix>gate_up_proj" [E][2I][H] and "<fused_prefix>down_proj" [E][H][I],
     * router "<router>.weight" (fused layout: "<fused_router>.weight"). */
    const char *router, *fused_router;
    const char *expert_prefix;  /* "block_sparse_moe.experts." */
    const char *expert_lin[3];  /* gate, up, down: {"w1", "w3", "w2"} */
    const char *fused_prefix;   /* "mlp.experts." */
    const char *dense_mlp_prefix; /* the dense MLP of a MoE model's non-sparse layers ("mlp.") */
} gq_arch;

/* The family whose hf_arch or model_type is `name`, or NULL. */
const gq_arch *gq_arch_find(const char *name);
const gq_arch *gq_arch_get(gq_arch_id id);
/* "LlamaForCausalLM (llama), MistralForCausalLM (mistral), ..." */
void gq_arch_list(char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif /* GQ_ARCH_H */
