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
 * only run (attention per sequence, then steps ATTN_RES .. MLP_RES per chunk): the same
 * operations, so a layer restored by --resume gives bitwise the outputs of the original run.
 *
 * Chunks. The sequences are cut into chunks of consecutive sequences of at most chunk_tokens
 * tokens (at least one sequence each). Stages A, C, D and E are token-wise and run over a whole
 * chunk at once: one norm / linear / Hessian update per chunk (MoE: one gather, one GEMM chain
 * and one Hessian update per expert per chunk, the routing of stage C kept for D and E).
 * Stage B's attention runs per sequence, and its Hessian update once per chunk. The Hessians are
 * the same sums as per sequence, in another order (fp32 rounding apart, the same result);
 * chunk_tokens <= T_max gives one sequence per chunk. gq_qlayer_init sizes the chunks from the
 * device's free memory (at most 16384 tokens, 32768 for MoE, and at most 2 GiB of scratch and
 * streaming windows, or a quarter of what a layer's work leaves free; on the CPU 1 GiB), the same
 * whether the activations stay on the device or stream from host memory (the streaming windows
 * hold one chunk), so both give the same bits.
 *
 * t_hessian: on the CPU the Hessian updates' own time. On a GPU the updates are not synchronised
 * one by one: each stage times its first 16 updates exactly (synchronising around each) and
 * scales that by the rows of all, an estimate (GQ_LOG=debug: every update timed exactly, with
 * the synchronisations that costs).
 */
#ifndef GQ_QLAYER_H
#define GQ_QLAYER_H

#include "gq/backend.h"
#include "gq/config.h"
#include "gq/dp.h"
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
    int stream, cur_x, cur_a; /* streaming: the chunks whose rows X / A hold (-1: none) */
    int chunk_tokens; /* a chunk's token budget */
    int chunk_auto;   /* gq_qlayer_init's choice of it */
    int n_chunks;
    int *chunk0;      /* [n_chunks + 1]: chunk c is sequences chunk0[c] .. chunk0[c + 1] - 1 */
    int chunk_max;    /* tokens of the largest chunk: the scratch's rows (and the windows') */
    gq_route *route;  /* [n_chunks] (MoE) each chunk's routing, from stage C to E */
    int routed;       /* the layer whose routing route[] holds (-1: none) */
    gq_fwd_scratch s; /* chunk scratch: token-wise steps over chunk_max rows, attention over T_max */
    int moe_min_tokens; /* an expert routed fewer calibration tokens is rounded to nearest (0: never) */
    int hessian_skip;   /* the first hessian_skip tokens of each sequence feed no Hessian (0: all do) */
    float *inv_freq;  /* [head_dim / 2] */
    /* tests: called with each Hessian H [K][K] (a backend buffer, upper triangle) and the rows it
     * summed, before its solve (expert: -1 for a dense group); NULL: not called */
    void (*on_hessian)(void *user, int layer, gq_group g, int expert, const float *H, int K, int64_t rows);
    void *on_hessian_user;
    /* MoE expert solves on a GPU: solvers[0] is be, solvers[1 ..] forks of it (gq_backend_fork),
     * one per solve thread (GQ_SOLVE_THREADS), made at the first MoE stage */
    gq_backend **solvers;
    int n_solvers, fork_failed;
    /* several devices (gq/dp.h; NULL: alone): this qlayer is rank `rank` of dp, its sequences
     * are the run's sequences seq0 .. seq0 + n_seq - 1 of n_seq_all (gq_qlayer_init sets seq0 0
     * and n_seq_all n_seq; the caller sets these after it). Each stage's Hessians are summed over
     * the ranks (and the tokens each saw), Hessian hi is solved by rank hi % ranks, which
     * broadcasts the dequantized weight; every rank passes the same res, each solving rank fills
     * its modules. Every rank calls gq_qlayer_run for the same layers, each on its own thread
     * (gq_dp_run). */
    gq_dp *dp;
    int rank, seq0, n_seq_all;
    /* cumulative seconds (device work synchronised at stage ends) */
    double t_stages;  /* stages A-E, Hessian accumulation included */
    double t_hessian; /* of which the Hessian updates (on a GPU an estimate, see above) */
    double t_solve;   /* wall seconds of the solves (MoE: several at once) */
} gq_qlayer;

#define GQ_QLAYER_MAX_SOLVERS 16

/* Allocate the activation buffers for n_seq sequences of len[i] tokens, on
 * `be` when they fit (with room for a layer's work), else in host memory
 * (logged), and cut the sequences into chunks (above). Contents undefined: fill them with
 * gq_qlayer_set_x. */
int gq_qlayer_init(gq_qlayer *q, gq_backend *be, const gq_config *cfg, int n_seq, const int *len);
/* Cut the sequences into chunks of at most `tokens` tokens instead (0: gq_qlayer_init's choice;
 * <= T_max: one sequence per chunk), reallocating the scratch (and the streaming windows). The
 * activations are kept. Between layers only: the chunks fix the summation order, so a run and its
 * --resume must use the same. */
int gq_qlayer_set_chunk(gq_qlayer *q, int tokens);
/* Shares of n_seq sequences for `ranks` ranks: rank r gets sequences first[r] .. first[r + 1] - 1
 * (first[ranks + 1]), consecutive, about equal in tokens, at least one each. GQ_ERR_ARG (said)
 * when there are fewer sequences than ranks. */
int gq_qlayer_shares(int n_seq, const int *len, int ranks, int *first);
void gq_qlayer_free(gq_qlayer *q);
/* Sequence i's layer input from f32 host rows [len[i]][hidden]; and back. */
int gq_qlayer_set_x(gq_qlayer *q, int i, const float *src);
int gq_qlayer_get_x(gq_qlayer *q, int i, float *dst);
/* Peak device bytes of the solve forks (besides gq_be_peak_bytes of the layer's backend). */
size_t gq_qlayer_solver_bytes(const gq_qlayer *q);
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
