/*
 * gq/model.h -- a Llama-family checkpoint (config.json + safetensors) read
 * layer by layer, and the decoder forward pass on a backend.
 *
 * Tensor names (Hugging Face LlamaForCausalLM):
 *   model.embed_tokens.weight            [vocab][hidden]
 *   model.layers.{l}.input_layernorm.weight          [hidden]
 *   model.layers.{l}.self_attn.{q,k,v,o}_proj.weight  q: [nh*hd][hidden],
 *        k/v: [nkv*hd][hidden], o: [hidden][nh*hd]   (+ .bias if attention_bias)
 *   model.layers.{l}.post_attention_layernorm.weight [hidden]
 *   model.layers.{l}.mlp.{gate,up}_proj.weight  [inter][hidden], down: [hidden][inter]
 *   model.norm.weight                    [hidden]
 *   lm_head.weight                       [vocab][hidden] (absent when tied)
 * A gq/GPTQ-quantized checkpoint stores a linear as .qweight/.qzeros/.scales
 * /.g_idx instead of .weight; it is dequantized to f32 on load.
 *
 * Host memory: a layer is converted to f32 only when loaded; the mmap pages
 * of the source tensors are released afterwards.
 */
#ifndef GQ_MODEL_H
#define GQ_MODEL_H

#include "gq/backend.h"
#include "gq/config.h"
#include "gq/st.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the linears of a layer (the family's modules, gq/arch.h) -------------------------------- */

#define GQ_MODULE_NAME 96
/* One linear of a layer: a block of rows of its group's stacked weight. */
typedef struct {
    char name[GQ_MODULE_NAME]; /* inside "model.layers.L.", no suffix: "self_attn.q_proj",
                                  "block_sparse_moe.experts.3.w1" (the output's name) */
    char src[GQ_MODULE_NAME];  /* the input tensor holding it (".weight" added): name, or the fused
                                  3-D "mlp.experts.gate_up_proj" / "mlp.experts.down_proj" */
    int64_t src_row0;          /* first row in src viewed as [numel / cols][cols] */
    gq_group group;
    int expert;                /* -1: a dense linear */
    int row0, rows, cols;      /* rows [row0, row0 + rows) of the group's weight [*][cols] */
    int bias;                  /* has "<name>.bias" */
} gq_module;

/* Most modules a layer of this config has (for sizing arrays). */
int gq_layer_module_cap(const gq_config *c);
/* The modules of layer l in solve order (attention in, attention out, then MLP in and MLP out,
 * expert by expert in a MoE layer); fused: the checkpoint stores experts in the fused 3-D layout
 * (src names then point into it). Returns their number. */
int gq_layer_modules(const gq_config *c, int fused, int layer, gq_module *out, int cap);
/* Rows of a group's stacked weight (expert groups: the expert's), and its input width. */
void gq_group_shape(const gq_config *c, int layer, gq_group g, int *rows, int *cols);
/* 1 when layer l's q/k/v (ATTN_IN), o, MLP in / out have biases. */
int gq_group_has_bias(const gq_config *c, gq_group g);
/* 1 when the checkpoint in st holds the experts of a MoE config in the fused 3-D layout. */
int gq_st_fused_experts(const gq_config *c, const gq_st *st);
/* The name a non-linear input tensor gets in the output (fused Mixtral: "model.layers.L.mlp.gate.weight"
 * -> "...block_sparse_moe.gate.weight", so the router sits beside the per-expert names); else name. */
void gq_output_name(const gq_config *c, int fused, const char *name, char *out, size_t cap);

typedef struct {
    char *dir;
    gq_config cfg;
    gq_st *st;
    int quantized; /* linears stored as qweight/qzeros/scales/g_idx */
    int fused;     /* MoE experts in the fused 3-D layout (gq_st_fused_experts) */
    int q4_resident; /* 1 (gq_model_open's default; `--int4-kernel on`): gq_blayer_load keeps 4-bit
                        linears packed on a backend that runs them (gq_be_q4_supported: CUDA; the
                        CPU with GQ_CPU_Q4=1); 0: dequantized at load */
} gq_model;

/* Reads config.json, opens the safetensors and runs gq_model_check: a
 * checkpoint that does not match its config is refused here, before any
 * layer is read (GQ_ERR_FORMAT listing the problems). */
int gq_model_open(gq_model *m, const char *dir);
void gq_model_close(gq_model *m);

/* ---- validation before any work (model_check.c) ---------------------------- */

#define GQ_CHECK_KEEP 20       /* problems kept (all are counted) */
#define GQ_CHECK_KEEP_UNUSED 4 /* names of unused tensors kept */

typedef struct {
    int n_problems;                         /* all problems found */
    char problems[GQ_CHECK_KEEP][384];      /* the first GQ_CHECK_KEEP, one line each */
    int n_unused;                           /* tensors gq never reads (not an error) */
    char unused[GQ_CHECK_KEEP_UNUSED][192]; /* the first of them */
} gq_check_report;

/*
 * Check config.json against the safetensors headers (no tensor data is
 * read): every tensor the model needs is present, with its dtype and shape.
 *   embed_tokens [vocab, hidden], norm and the layer norms [hidden],
 *   q [heads x head_dim, hidden], k/v [kv_heads x head_dim, hidden],
 *   o [hidden, heads x head_dim], gate/up [intermediate, hidden],
 *   down [hidden, intermediate], biases [out] (attention_bias / mlp_bias),
 *   lm_head [vocab, hidden] unless tied: F16, BF16 or F32.
 *   A linear stored quantized (needs quantization_config): qweight I32
 *   [in x bits / 32, out], qzeros I32 [groups, out x bits / 32], scales F16
 *   [groups, out], g_idx I32 [in] (optional), groups = ceil(in / group_size)
 *   or 1; in and out must pack at that width.
 *   num_hidden_layers must not exceed the layers the tensors hold.
 * Each problem names the file, the tensor, what was expected and what was
 * found. Tensors gq does not read (extra layers, biases the config does not
 * enable, rotary_emb.inv_freq, ...) are counted in n_unused, not problems.
 * Returns GQ_OK, or GQ_ERR_FORMAT with a message "<dir>: <problem>" (one) or
 * "<dir>: N problems ...:" and one problem per line (as many as the message
 * holds). `dir` names the checkpoint in messages. */
int gq_model_check_st(const gq_config *cfg, const gq_st *st, const char *dir, gq_check_report *rep);
/* gq_model_check_st on an opened model; logs a warning naming unused tensors. */
int gq_model_check(const gq_model *m);

/* One linear of a layer as f32 [rows][cols] (newly allocated, gq_free_aligned): the raw weight,
 * or a quantized one dequantized. Errors name the tensor. */
int gq_model_load_module(const gq_model *m, int layer, const gq_module *mod, float **w);
/* The quantized linear "<prefix>.qweight/qzeros/scales/g_idx" of st ([rows][cols], bits, group
 * size, v2: checkpoint_format gptq_v2) dequantized into f32 w (newly allocated); `where` names
 * the file in errors. A missing g_idx is the trivial one. */
int gq_qlinear_load(const gq_st *st, const char *where, const char *prefix, int rows, int cols, int bits,
                    int group_size, int v2, float **w);
/* The same linear's packed tensors as they are stored (gq/pack.h; gq_packed_free), checked for
 * dtype and shape; a missing g_idx is made trivial. */
int gq_qlinear_read(const gq_st *st, const char *where, const char *prefix, int rows, int cols, int bits,
                    int group_size, int v2, gq_packed *p);

/* Read every tensor of `layer` from the file into memory (page cache), for a
 * helper thread to run while the previous layer computes. Never fails. */
void gq_model_prefetch_layer(const gq_model *m, int layer);

/* Embedding rows for ids[0..n) into out[n][hidden]; ids are range-checked. Gemma: times
 * sqrt(hidden) (gq_arch.embed_scale). */
int gq_model_embed(const gq_model *m, const int32_t *ids, int n, float *out);

/* RoPE inverse frequencies (rot_dim/2 floats) for a sequence of seq_len tokens,
 * with the checkpoint's rope scaling applied (linear, dynamic, llama3). */
void gq_rope_inv_freq(const gq_config *cfg, int seq_len, float *inv_freq);

/* ---- a layer on a backend --------------------------------------------------- */

/* The weights of one layer on a backend. Dense groups in w[] / b[] (stacked: ATTN_IN rows
 * q | k | v, MLP_IN rows gate | up); a MoE layer's MLP groups per expert in ex_in / ex_out
 * [n_experts], the router [n_experts][hidden] in full precision. Norm weights of the
 * (1 + w) kind are stored as 1 + w. Absent parts have data NULL. */
typedef struct {
    gq_bweight w[GQ_GRP_COUNT], b[GQ_GRP_COUNT];
    gq_bweight norm[GQ_NORM_SLOTS], norm_b[GQ_NORM_SLOTS]; /* 1 x hidden */
    gq_bweight q_norm, k_norm;                            /* 1 x head_dim */
    int n_experts;                                        /* 0: dense MLP */
    gq_bweight router;
    gq_bweight *ex_in, *ex_out; /* [n_experts]: [2 moe_inter][hidden], [hidden][moe_inter] */
} gq_blayer;

/* The stacked weight of group g (expert e, or -1 for the dense one) */
gq_bweight *gq_blayer_weight(gq_blayer *bl, gq_group g, int expert);
/* Load layer `layer` of m onto the backend: raw F16/BF16/F32 weights go straight into the
 * stacked weights (no f32 host copy for a GPU backend), quantized ones are dequantized on the
 * host, except that with m->q4_resident a group whose modules are all stored 4-bit becomes one
 * int4-resident weight (gq_be_weight_upload_q4, the parts stacked in the group's row order) on a
 * backend that supports it; everything checked for NaN/Inf (the error names the tensor). qsrc (NULL: none) is a
 * layer file of gq's (gq/export.h) whose quantized linears replace the model's (--resume):
 * bits, group_size, v2 describe it. */
int gq_blayer_load(gq_backend *be, const gq_model *m, int layer, gq_blayer *bl);
int gq_blayer_load_q(gq_backend *be, const gq_model *m, int layer, const gq_st *qsrc, const char *qwhere, int bits,
                     int group_size, int v2, gq_blayer *bl);
/* `--int4-kernel auto|on|off` (GQ_Q4_AUTO, 1, 0) for a run that decodes up to `rows` rows a step
 * (0: prefill only): what m->q4_resident should be. auto keeps a 4-bit checkpoint packed, except
 * where its decode steps take more rows than the W4A16 kernel's GQ_Q4_KERNEL_ROWS (larger ones
 * dequantize every linear each step: 1.6-2.3x slower than fp16 weights) and its linears fit the
 * backend's free memory twice over in fp16: then they are dequantized at load. Says which and
 * why (info) when it dequantizes. gq_q4_auto_keeps is the rule alone (tests). */
#define GQ_Q4_AUTO 2
#define GQ_Q4_KERNEL_ROWS 16
int gq_model_q4_choose(const gq_model *m, gq_backend *be, int mode, int rows);
int gq_q4_auto_keeps(int rows, size_t fp16_bytes, size_t free_bytes);
/* Bytes of every linear of m in fp16 (the dequantized load's weights). */
size_t gq_model_linear_fp16_bytes(const gq_model *m);
/* Allocate (uninitialised) every weight of layer `layer` (for benchmarks filling them). */
int gq_blayer_alloc(gq_backend *be, const gq_config *c, int layer, gq_blayer *bl);
void gq_blayer_free(gq_backend *be, gq_blayer *bl);

/* The final norm and the LM head on a backend (the embedding when tied), with the family's
 * final-logit soft-cap. */
typedef struct {
    gq_bweight norm, norm_b, lm;
} gq_bhead;
int gq_bhead_load(gq_backend *be, const gq_model *m, gq_bhead *h);
void gq_bhead_free(gq_backend *be, gq_bhead *h);
/* X[T][ldx] -> final norm into xn[T][hidden] (scratch) -> logits -> NLL of targets (gq_be_nll_ex). */
int gq_bhead_nll(gq_backend *be, const gq_config *c, const gq_bhead *h, void *xn, const void *X, int ldx, int T,
                 const int32_t *targets, double *nll_sum, int64_t *count, float *logits_out);

/* The family's norm: Y[T][ldy] = norm(X[T][ldx]) over d columns with weight w (and bias b). */
int gq_norm_apply(gq_backend *be, const gq_config *c, void *Y, int ldy, const void *X, int ldx, int T, int d,
                  const gq_bweight *w, const gq_bweight *b);

#ifdef __cplusplus
}
#endif
#endif /* GQ_MODEL_H */
