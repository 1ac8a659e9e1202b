/*
 * gq/export.h -- writing gq's output: per-layer files of packed tensors
 * while quantizing, and the final AutoGPTQ-layout checkpoint directory.
 *
 * Tensor names per quantized linear (HF module path + suffix):
 *   model.layers.{l}.self_attn.q_proj.qweight  int32 [K*bits/32][N]
 *                                   .qzeros   int32 [G][N*bits/32]
 *                                   .scales   fp16  [G][N]
 *                                   .g_idx    int32 [K]
 *                                   .bias     (copied when the linear has one)
 * Every linear of every layer (experts included, under the per-expert names the GPTQ MoE
 * loaders read: "block_sparse_moe.experts.E.w1", "mlp.experts.E.gate_proj", also when the input
 * held them fused) is quantized; everything else (embeddings, norms, routers, lm_head) is
 * copied unchanged (a fused Mixtral's router renamed beside its experts, gq_output_name).
 */
#ifndef GQ_EXPORT_H
#define GQ_EXPORT_H

#include "gq/model.h"
#include "gq/pack.h"
#include "gq/quantize.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Write the packed linears of one layer to `path` (atomically): res[k] is module mods[k]'s
 * result (gq_layer_modules order), stored under the module's output name. gq_blayer_load_q
 * reads such a file back (--resume). */
int gq_export_layer_file(const char *path, const gq_model *m, int layer, const gq_module *mods, int n_mods,
                         const gq_qresult *res, int bits, int v2);

/* Assemble the output directory `dir` (must not exist): sharded safetensors
 * (quantized tensors from the layer files, the rest copied from the source
 * checkpoint), config.json with quantization_config, quantize_config.json,
 * tokenizer files, gq_report.json. */
int gq_export_finish(const gq_model *m, const gq_quant_opts *o, const char *partial_dir, const char *dir,
                     const gq_quant_report *rep);

/* Name of a layer file inside the partial directory (newly allocated). */
char *gq_export_layer_path(const char *partial_dir, int layer);

/* The quantization_config object as JSON text (newly allocated). */
char *gq_export_quant_config_json(const gq_quant_opts *o, int indent);

#ifdef __cplusplus
}
#endif
#endif /* GQ_EXPORT_H */
