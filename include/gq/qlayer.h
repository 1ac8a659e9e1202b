/*
 * gq/qlayer.h -- GPTQ of one decoder layer over calibration activations that
 * live on a backend: the core of `gq quantize`, also driven directly by
 * bench/bench_layers.c on synthetic full-size layers.
 *
 * Stages (true-sequential, as IST-DASLab/gptq llama.py with the groups
 * [q,k,v] -> [o] -> [gate,up] -> [down]), each a run of the layer graph (gq/graph.h) over every
 * calibration sequence whose hook accumulates the group's Hessian(s), then the solves:
 *   A  steps ATTN_IN            H += xn^T xn                      -> GPTQ of q, k, v rows
 *   B  steps ATTN_IN .. ATTN    the attention output a of the quantized q, k, v (kept)
 *                               H += a^T a                        -> GPTQ of o
 *   C  steps ATTN_RES .. MLP_IN x += o(a) in place; H += xn^T xn of the MLP input (MoE: one
 *                               Hessian per expert over the tokens routed to it) -> gate, up
 *   D  steps MLP_IN .. MLP      H += act^T act (per expert)       -> GPTQ of down
 *   E  steps MLP_IN .. MLP_RES  x += the MLP output (the layer output, in place)
 * A group's rows (q/k/v, gate/up) are stacked into one weight and solved with one Hessian and
 * one factorization, the same result as one by one (GPTQ rows are independent). An expert
 * routed fewer than moe_min_tokens calibration tokens is rounded to nearest (warned), so no
 * expert gets a Hessian from too few tokens, NaN or zero scales. With res == NULL the layer is
 * only run (steps ATTN_IN .. MLP_RES): the same operations, so a layer restored by --resume
 * gives bitwise the outputs of the original run.
 */
#ifndef GQ_QLAYER_H
#define GQ_QLAYER_H

#include "gq/backend.h"
#include "gq/config.h"
#include "gq/gptq.h"
#include "gq/graph.h"
#include "gq/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    gq_backend *be;
    const gq_config *cfg;
    int n_seq;
    int *len;         /* [n_seq] tokens of each sequence */
    int64_t *off;     /* [n_seq] first token of each sequence */
    int64_t n_tokens;
    int T_max;
    /* resident (the default): X [n_tokens][hidden] layer inputs, replaced by
     * the outputs, and A [n_tokens][n_heads * head_dim] attention outputs,
     * on the backend. Streaming (when they do not fit the device, or
     * GQ_STREAM_ACTIVATIONS=1): hX / hA hold them in host memory (in the
     * backend's activation dtype) and X / A are windows of T_max rows that
     * each sequence passes through; cur_x / cur_a say whose rows they hold. */
    void *X, *A;
    unsigned char *hX, *hA;
    int stream, cur_x, cur_a;
    gq_fwd_scratch s; /* per-sequence scratch */
    int moe_min_tokens; /* an expert routed fewer calibration tokens is rounded to nearest (0: never) */
    int hessian_skip;   /* the first hessian_skip tokens of each sequence feed no Hessian (0: all do) */
    float *inv_freq;  /* [head_dim / 2] */
    /* cumulative seconds (device work synchronised at stage ends) */
    double t_stages;  /* stages A-E, Hessian accumulation included */
    double t_hessian;
    double t_solve;
} gq_qlayer;

/* Allocate the activation buffers for n_seq sequences of len[i] tokens, on
 * `be` when they fit (with room for a layer's work), else in host memory
 * (logged). Contents undefined: fill them with gq_qlayer_set_x. */
int gq_qlayer_init(gq_qlayer *q, gq_backend *be, const gq_config *cfg, int n_seq, const int *len);
void gq_qlayer_free(gq_qlayer *q);
/* Sequence i's layer input from f32 host rows [len[i]][hidden]; and back. */
int gq_qlayer_set_x(gq_qlayer *q, int i, const float *src);
int gq_qlayer_get_x(gq_qlayer *q, int i, float *dst);
/* Bytes of activation memory (on the backend, or on the host when streaming). */
size_t gq_qlayer_bytes(const gq_qlayer *q);

/* Quantize (res != NULL: res[gq_layer_modules(cfg, 0, l)], one result per module, each
 * with the solve seconds of its group) or only run (res == NULL) layer `l`
 * with weights bl; the stacked weights of bl are replaced by their
 * dequantized values. Errors name the layer and the module. */
int gq_qlayer_run(gq_qlayer *q, int l, gq_blayer *bl, const gq_gptq_params *p, gq_qresult *res);

#ifdef __cplusplus
}
#endif
#endif /* GQ_QLAYER_H */
