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

typedef enum { GQ_LIN_Q = 0, GQ_LIN_K, GQ_LIN_V, GQ_LIN_O, GQ_LIN_GATE, GQ_LIN_UP, GQ_LIN_DOWN, GQ_LIN_COUNT } gq_linear_id;
extern const char *const gq_linear_names[GQ_LIN_COUNT]; /* "self_attn.q_proj", ... */

/* The widths a linear's output and input have: hidden_size, num_attention_heads x head_dim,
 * num_key_value_heads x head_dim, intermediate_size. */
typedef enum { GQ_DIM_HIDDEN, GQ_DIM_Q, GQ_DIM_KV, GQ_DIM_FFN } gq_dim;
void gq_linear_dims(gq_linear_id id, gq_dim *out, gq_dim *in);
int64_t gq_dim_size(const gq_config *c, gq_dim d);

typedef struct {
    char *dir;
    gq_config cfg;
    gq_st *st;
    int quantized; /* linears stored as qweight/qzeros/scales/g_idx */
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

/* One decoder layer as f32 host arrays, shapes as in the table above. */
typedef struct {
    float *w[GQ_LIN_COUNT]; /* weights [out][in] */
    float *b[GQ_LIN_COUNT]; /* biases [out] or NULL */
    float *ln1, *ln2;       /* [hidden] */
} gq_layer_host;

/* Load, validate shapes (error: tensor name, expected, got) and finiteness
 * (error: tensor name and index of the first NaN/Inf). */
int gq_model_load_layer(const gq_model *m, int layer, gq_layer_host *out);
void gq_layer_host_free(gq_layer_host *h);
/* Load one linear of a layer ([out][in] f32, newly allocated) */
int gq_model_load_linear(const gq_model *m, int layer, gq_linear_id id, float **w, int *rows, int *cols);

/* Read every tensor of `layer` from the file into memory (page cache), for a
 * helper thread to run while the previous layer computes. Never fails. */
void gq_model_prefetch_layer(const gq_model *m, int layer);

/* Embedding rows for ids[0..n) into out[n][hidden]; ids are range-checked. */
int gq_model_embed(const gq_model *m, const int32_t *ids, int n, float *out);
/* Final norm [hidden] and lm_head [vocab][hidden] (the embedding when tied). */
int gq_model_load_head(const gq_model *m, float **norm, float **lm_head);

/* RoPE inverse frequencies (hd/2 floats) for a sequence of seq_len tokens,
 * with the checkpoint's rope scaling applied (linear, dynamic, llama3). */
void gq_rope_inv_freq(const gq_config *cfg, int seq_len, float *inv_freq);

/* ---- a layer on a backend --------------------------------------------------- */

typedef struct {
    gq_bweight qkv;   /* [(nh + 2 nkv) hd][hidden]: q rows, then k, then v */
    gq_bweight o;     /* [hidden][nh hd] */
    gq_bweight gu;    /* [2 inter][hidden]: gate rows, then up */
    gq_bweight down;  /* [hidden][inter] */
    gq_bweight ln1, ln2;             /* 1 x hidden */
    gq_bweight b_qkv, b_o, b_gu, b_down; /* biases (data NULL when absent) */
} gq_blayer;

int gq_blayer_upload(gq_backend *be, const gq_config *cfg, const gq_layer_host *h, gq_blayer *bl);
/* Load layer `layer` of m straight onto the backend: F16/BF16/F32 weights go
 * raw into the stacked weights (no f32 host copy for a GPU backend), checked
 * for NaN/Inf (error names the tensor); quantized checkpoints and biases go
 * through gq_model_load_layer + gq_blayer_upload. */
int gq_blayer_load(gq_backend *be, const gq_model *m, int layer, gq_blayer *bl);
void gq_blayer_free(gq_backend *be, gq_blayer *bl);

/* Scratch for the forward of sequences up to T_max tokens. */
typedef struct {
    int T_max;
    void *xn;   /* [T_max][hidden] */
    void *qkv;  /* [T_max][(nh + 2 nkv) hd] */
    void *attn; /* [T_max][nh hd] */
    void *gu;   /* [T_max][2 inter] */
    void *act;  /* [T_max][inter] */
} gq_fwd_scratch;

int gq_fwd_scratch_init(gq_backend *be, const gq_config *cfg, int T_max, gq_fwd_scratch *s);
void gq_fwd_scratch_free(gq_backend *be, gq_fwd_scratch *s);

/* x[T][hidden] (activation buffer) <- decoder layer(x), in place. */
int gq_fwd_layer(gq_backend *be, const gq_config *cfg, const gq_blayer *bl, void *x, int T, const float *inv_freq,
                 gq_fwd_scratch *s);

/* ---- locating a NaN/Inf (the error paths of ppl and the quantizer) ----------------------- */

enum { GQ_FWD_ATTN = 1, GQ_FWD_MLP = 2 }; /* the parts of a layer for gq_fwd_layer_checked */

/* GQ_OK when columns [0, width) of the activation rows X[T][ld] are all finite, else
 * GQ_ERR_NUMERIC "non-finite activation <what> (NaN at token t, column j)" for the first one.
 * Downloads the rows: for locating a NaN/Inf that a cheap check (a non-finite loss or Hessian)
 * has seen, not for every op of a normal run. */
int gq_act_check(gq_backend *be, const void *X, int ld, int T, int width, const char *what);
/* gq_fwd_layer with the output of every op checked (gq_act_check), in place on x like it;
 * parts: GQ_FWD_ATTN (x is the layer input), GQ_FWD_MLP (x is input + o(attn)), or both. */
int gq_fwd_layer_checked(gq_backend *be, const gq_config *cfg, const gq_blayer *bl, void *x, int T,
                         const float *inv_freq, gq_fwd_scratch *s, int parts);

#ifdef __cplusplus
}
#endif
#endif /* GQ_MODEL_H */
