/*
 * gq/graph.h -- the one layer graph: every family's decoder layer as six steps, used by the
 * forward (perplexity), the quantizer's stages (a hook hands each group's input to its
 * Hessian), and generation (attention over a KV cache). The same steps in the same order
 * wherever a layer runs, so a layer restored by --resume gives bitwise the outputs of the
 * original run.
 *
 *   GQ_STEP_ATTN_IN   xn = norm_attn_pre(x)                         hook(ATTN_IN, -1, xn)
 *   GQ_STEP_ATTN      qkv = W_qkv xn + b; q/k head norms; RoPE;
 *                     a = attention(q, k, v) [window, scale, soft-cap] hook(ATTN_OUT, -1, a)
 *   GQ_STEP_ATTN_RES  x += norm_attn_post(W_o a + b)   (no post norm: x += W_o a + b)
 *   GQ_STEP_MLP_IN    xn = norm_mlp_pre(x)                          hook(MLP_IN, -1, xn)
 *                     MoE: router, top-k (gq_route); xe = all routed rows, expert by expert
 *                     (one gather); per expert e: its rows of xe     hook(MLP_IN, e, xe_e)
 *   GQ_STEP_MLP       act = act(gate) * up (or act(c_fc)) of xn (xe_e)  hook(MLP_OUT, e, act)
 *   GQ_STEP_MLP_RES   x += norm_mlp_post(W_down act + b)
 *                     MoE: x += sum over the token's experts (ascending) of weight_e * W_down_e act_e
 * A run covers steps first .. last; a run starting at ATTN_RES reads the attention output a
 * kept from an earlier run (args.a), one starting at MLP_IN or later reads x as left by
 * ATTN_RES. Tensor shapes: x [T][hidden], a [T][n_heads * head_dim].
 *
 * Steps ATTN_RES .. MLP_RES (and ATTN_IN alone) are token-wise: a run of them may cover many
 * sequences at once (the quantizer's chunks, gq/qlayer.h); ATTN needs one sequence (or the
 * cache) per run, so its rows are limited by the scratch's T_attn.
 */
#ifndef GQ_GRAPH_H
#define GQ_GRAPH_H

#include "gq/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    GQ_STEP_ATTN_IN = 0,
    GQ_STEP_ATTN,
    GQ_STEP_ATTN_RES,
    GQ_STEP_MLP_IN,
    GQ_STEP_MLP,
    GQ_STEP_MLP_RES,
    GQ_STEP_COUNT
} gq_step;

/* A group's input rows X[T][ld] (width = the group's input width) for expert e (-1: dense).
 * In a MoE layer, idx[T] are the routed tokens' rows in x (host array). Non-zero return stops
 * the run with that status. */
typedef int (*gq_hook_fn)(void *user, gq_group g, int expert, const void *X, int ld, int T, const int32_t *idx);

/* The routing of T tokens to their top_k experts (MoE). */
typedef struct {
    int T;          /* tokens routed */
    int32_t *idx;   /* [T * top_k]: the tokens routed, expert by expert, each expert's in order */
    int *start;     /* [n_experts + 1]: expert e's rows are idx[start[e] .. start[e + 1]) */
    int32_t *pos;   /* [top_k][T]: row of idx of token t's k-th expert (its experts in ascending order) */
    float *wt;      /* [top_k][T]: that expert's routing weight */
} gq_route;

/* Scratch for runs of up to T_max tokens, attention over up to T_attn of them (one per thread
 * of work). */
typedef struct {
    int T_max, T_attn;
    void *xn;     /* [T_max][hidden] */
    void *qkv;    /* [T_attn][(nh + 2 nkv) hd] */
    void *attn;   /* [T_attn][nh hd] */
    void *gu;     /* [T_max][2 I_max] */
    void *act;    /* [T_max][I_max] */
    void *y;      /* [T_max][hidden]: a sublayer's output (post norms, MoE sum) */
    void *xe;     /* [T_max * top_k][hidden]: the routed rows, expert by expert (MoE) */
    void *logits; /* [T_max][n_experts] router logits (MoE) */
    float *probs;     /* host [T_max][n_experts]: the router's probabilities of the last routing run */
    int32_t *iota;    /* host [T_max]: 0, 1, 2, ... */
    gq_route route;   /* host arrays for T_max tokens: the routing of a run without args.route */
} gq_fwd_scratch;

int gq_fwd_scratch_init(gq_backend *be, const gq_config *cfg, int T_max, gq_fwd_scratch *s);
/* Runs of up to T_max tokens, attention (and ATTN_RES without args.a) over up to T_attn. */
int gq_fwd_scratch_init_ex(gq_backend *be, const gq_config *cfg, int T_attn, int T_max, gq_fwd_scratch *s);
/* Device bytes of a scratch for T_attn / T_max (what gq_fwd_scratch_init_ex allocates). */
size_t gq_fwd_scratch_bytes(const gq_backend *be, const gq_config *cfg, int T_attn, int T_max);
/* Host arrays of a routing of up to T tokens (gq_route_free frees them). */
void gq_route_alloc(const gq_config *cfg, int T, gq_route *r);
void gq_route_free(gq_route *r);
void gq_fwd_scratch_free(gq_backend *be, gq_fwd_scratch *s);

/* Where attention reads its keys and values. */
typedef enum {
    GQ_KV_SELF = 0, /* the T tokens themselves, positions pos0 .. pos0 + T - 1 (Tq == Tk) */
    GQ_KV_PREFILL,  /* one cache slot: k, v of the T tokens go to rows pos0 .. of K, V [*][ldkv]; the
                       queries attend to rows 0 .. pos0 + T - 1 */
    GQ_KV_DECODE,   /* T rows, each one token of its own slot (gq_be_decode_attention_ex) */
} gq_kv_mode;

typedef struct {
    gq_kv_mode mode;
    void *K, *V;        /* PREFILL: the slot's layer cache; DECODE: the caches' base */
    int ldkv;
    size_t slot_stride; /* DECODE: elements between slots */
    const int32_t *slot, *pos;   /* DECODE: host [T] */
    int cache_len;               /* DECODE: positions per slot (gq_attn_opts.cache_len; 0: unknown) */
    const int32_t *dslot, *dpos; /* DECODE: device copies of slot / pos, or NULL (gq_attn_opts.dslot) */
} gq_kv;

typedef struct {
    gq_backend *be;
    const gq_config *cfg;
    int layer;
    const gq_blayer *bl;
    void *x;               /* [T][hidden], in place */
    int T;
    void *a;               /* [T][nh hd] attention output (NULL: the scratch's) */
    gq_step first, last;   /* the steps run */
    const float *inv_freq; /* [rot_dim / 2] */
    int pos0;              /* SELF / PREFILL: position of the first token */
    const gq_kv *kv;       /* NULL: GQ_KV_SELF */
    gq_hook_fn hook;       /* NULL: none */
    void *user;
    gq_route *route;       /* MoE: where the routing goes (NULL: the scratch's) */
    int route_reuse;       /* 1: *route already holds these T tokens' routing (an earlier run over the
                              same x rows with the same router): the router is not run, s->probs
                              not filled */
    int check;             /* check every op's output for NaN/Inf (gq_act_check) */
    gq_fwd_scratch *s;
} gq_layer_args;

/* Run steps first .. last of a layer. Errors name the op ("after attention"). */
int gq_layer_run(const gq_layer_args *a);

/* The whole layer, self-attention from position 0: x[T][hidden] <- layer(x). */
int gq_fwd_layer(gq_backend *be, const gq_config *cfg, int layer, const gq_blayer *bl, void *x, int T,
                 const float *inv_freq, gq_fwd_scratch *s);

/* GQ_OK when columns [0, width) of the activation rows X[T][ld] are all finite, else
 * GQ_ERR_NUMERIC "non-finite activation <what> (NaN at token t, column j)" for the first one.
 * Downloads the rows: for locating a NaN/Inf that a cheap check (a non-finite loss or Hessian)
 * has seen, not for every op of a normal run. */
int gq_act_check(gq_backend *be, const void *X, int ld, int T, int width, const char *what);

#ifdef __cplusplus
}
#endif
#endif /* GQ_GRAPH_H */
