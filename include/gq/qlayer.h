/*
 * gq/qlayer.h -- GPTQ of one decoder layer over calibration activations that
 * live on a backend: the core of `gq quantize`, also driven directly by
 * bench/bench_layers.c on synthetic full-size layers.
 *
 * Stages (true-sequential, as IST-DASLab/gptq llama.py with the groups
 * [q,k,v] -> [o] -> [gate,up] -> [down]); per sequence i of tokens X_i:
 *   A  H_qkv += rmsnorm1(X_i)^T rmsnorm1(X_i)            -> GPTQ of q,k,v rows
 *   B  A_i = attention(rope(q), rope(k), v) of the quantized q,k,v
 *      H_o += A_i^T A_i                                  -> GPTQ of o
 *   C  X_i += o(A_i) (the residual h, in place)
 *      H_gu += rmsnorm2(X_i)^T rmsnorm2(X_i)             -> GPTQ of gate,up rows
 *   D  H_down += act^T act, act = silu(gate(n)) * up(n), n = rmsnorm2(X_i)
 *                                                        -> GPTQ of down
 *   E  X_i += down(silu(gate(n)) * up(n))  (the layer output, in place)
 * q/k/v (and gate/up) see the same input: their rows are stacked into one
 * weight and solved with one Hessian and one factorization, which gives the
 * same result as solving them one by one (GPTQ rows are independent).
 * With res == NULL the layer is only run (gq_fwd_layer, no Hessians, no
 * solves): the same operations in the same order as the stages, so a layer
 * restored by --resume gives bitwise the outputs of the original run.
 */
#ifndef GQ_QLAYER_H
#define GQ_QLAYER_H

#include "gq/backend.h"
#include "gq/config.h"
#include "gq/gptq.h"
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

/* Quantize (res != NULL: res[GQ_LIN_COUNT], one result per linear, each
 * with the solve seconds of its group) or only run (res == NULL) layer `l`
 * with weights bl; the stacked weights of bl are replaced by their
 * dequantized values. Errors name the layer and the module. */
int gq_qlayer_run(gq_qlayer *q, int l, gq_blayer *bl, const gq_gptq_params *p, gq_qresult *res);

#ifdef __cplusplus
}
#endif
#endif /* GQ_QLAYER_H */
