/* arch.c -- the family table of gq/arch.h. Each row's semantics are checked against
 * transformers 5.17 by the fixtures in tests/data/families (see docs/families.md). */
#include "gq/arch.h"

#include <stdio.h>
#include <string.h>

#define LLAMA_NORMS {"input_layernorm", NULL, "post_attention_layernorm", NULL}
#define QKV {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
#define GATE_UP {"mlp.gate_proj", "mlp.up_proj"}

static const gq_arch archs[GQ_ARCH_COUNT] = {
    [GQ_ARCH_LLAMA] = {.id = GQ_ARCH_LLAMA, .model_type = "llama", .hf_arch = "LlamaForCausalLM",
                       .norm = GQ_NORM_RMS, .act = GQ_ACT_SILU, .gated = 1, .norm_name = LLAMA_NORMS,
                       .attn_in = QKV, .attn_out = "self_attn.o_proj", .mlp_in = GATE_UP,
                       .mlp_out = "mlp.down_proj"},
    [GQ_ARCH_MISTRAL] = {.id = GQ_ARCH_MISTRAL, .model_type = "mistral", .hf_arch = "MistralForCausalLM",
                         .norm = GQ_NORM_RMS, .act = GQ_ACT_SILU, .gated = 1, .window = GQ_WIN_ALL,
                         .norm_name = LLAMA_NORMS, .attn_in = QKV, .attn_out = "self_attn.o_proj",
                         .mlp_in = GATE_UP, .mlp_out = "mlp.down_proj"},
    [GQ_ARCH_QWEN2] = {.id = GQ_ARCH_QWEN2, .model_type = "qwen2", .hf_arch = "Qwen2ForCausalLM",
                       .norm = GQ_NORM_RMS, .act = GQ_ACT_SILU, .gated = 1, .qkv_bias = 1, .window = GQ_WIN_QWEN,
                       .norm_name = LLAMA_NORMS, .attn_in = QKV, .attn_out = "self_attn.o_proj",
                       .mlp_in = GATE_UP, .mlp_out = "mlp.down_proj"},
    [GQ_ARCH_QWEN3] = {.id = GQ_ARCH_QWEN3, .model_type = "qwen3", .hf_arch = "Qwen3ForCausalLM",
                       .norm = GQ_NORM_RMS, .act = GQ_ACT_SILU, .gated = 1, .qk_norm = 1, .window = GQ_WIN_QWEN,
                       .norm_name = LLAMA_NORMS, .attn_in = QKV, .attn_out = "self_attn.o_proj",
                       .mlp_in = GATE_UP, .mlp_out = "mlp.down_proj", .q_norm = "self_attn.q_norm",
                       .k_norm = "self_attn.k_norm"},
    [GQ_ARCH_MIXTRAL] = {.id = GQ_ARCH_MIXTRAL, .model_type = "mixtral", .hf_arch = "MixtralForCausalLM",
                         .norm = GQ_NORM_RMS, .act = GQ_ACT_SILU, .gated = 1, .window = GQ_WIN_ALL,
                         .moe = GQ_MOE_SOFTMAX_TOPK, .norm_name = LLAMA_NORMS, .attn_in = QKV,
                         .attn_out = "self_attn.o_proj", .router = "block_sparse_moe.gate",
                         .fused_router = "mlp.gate", .expert_prefix = "block_sparse_moe.experts.",
                         .expert_lin = {"w1", "w3", "w2"}, .fused_prefix = "mlp.experts."},
    [GQ_ARCH_QWEN3_MOE] = {.id = GQ_ARCH_QWEN3_MOE, .model_type = "qwen3_moe", .hf_arch = "Qwen3MoeForCausalLM",
                           .norm = GQ_NORM_RMS, .act = GQ_ACT_SILU, .gated = 1, .qk_norm = 1,
                           .window = GQ_WIN_QWEN, .moe = GQ_MOE_SOFTMAX_TOPK, .norm_name = LLAMA_NORMS,
                           .attn_in = QKV, .attn_out = "self_attn.o_proj", .mlp_in = GATE_UP,
                           .mlp_out = "mlp.down_proj", .q_norm = "self_attn.q_norm", .k_norm = "self_attn.k_norm",
                           .router = "mlp.gate", .fused_router = "mlp.gate", .expert_prefix = "mlp.experts.",
                           .expert_lin = {"gate_proj", "up_proj", "down_proj"}, .fused_prefix = "mlp.experts.",
                           .dense_mlp_prefix = "mlp."},
    [GQ_ARCH_GEMMA2] = {.id = GQ_ARCH_GEMMA2, .model_type = "gemma2", .hf_arch = "Gemma2ForCausalLM",
                        .norm = GQ_NORM_RMS_P1, .act = GQ_ACT_GELU_TANH, .gated = 1, .embed_scale = 1,
                        .window = GQ_WIN_LAYER_TYPES,
                        .norm_name = {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                                      "post_feedforward_layernorm"},
                        .attn_in = QKV, .attn_out = "self_attn.o_proj", .mlp_in = GATE_UP,
                        .mlp_out = "mlp.down_proj"},
    [GQ_ARCH_PHI3] = {.id = GQ_ARCH_PHI3, .model_type = "phi3", .hf_arch = "Phi3ForCausalLM", .norm = GQ_NORM_RMS,
                      .act = GQ_ACT_SILU, .gated = 1, .window = GQ_WIN_ALL, .norm_name = LLAMA_NORMS,
                      .attn_in = {"self_attn.qkv_proj"}, .attn_out = "self_attn.o_proj",
                      .mlp_in = {"mlp.gate_up_proj"}, .mlp_out = "mlp.down_proj"},
    [GQ_ARCH_STARCODER2] = {.id = GQ_ARCH_STARCODER2, .model_type = "starcoder2", .hf_arch = "Starcoder2ForCausalLM",
                            .norm = GQ_NORM_LAYER, .act = GQ_ACT_GELU_TANH, .gated = 0, .window = GQ_WIN_ALL,
                            .norm_name = LLAMA_NORMS, .attn_in = QKV, .attn_out = "self_attn.o_proj",
                            .mlp_in = {"mlp.c_fc"}, .mlp_out = "mlp.c_proj"},
};

const gq_arch *gq_arch_get(gq_arch_id id) {
    return (unsigned)id < GQ_ARCH_COUNT ? &archs[id] : NULL;
}

const gq_arch *gq_arch_find(const char *name) {
    if (!name) return NULL;
    for (int i = 0; i < GQ_ARCH_COUNT; i++)
        if (!strcmp(name, archs[i].hf_arch) || !strcmp(name, archs[i].model_type)) return &archs[i];
    return NULL;
}

void gq_arch_list(char *buf, size_t cap) {
    size_t len = 0;
    if (cap) buf[0] = 0;
    for (int i = 0; i < GQ_ARCH_COUNT && len < cap; i++) {
        int n = snprintf(buf + len, cap - len, "%s%s (%s)", i ? ", " : "", archs[i].hf_arch, archs[i].model_type);
        if (n < 0) break;
        len += (size_t)n;
    }
}
