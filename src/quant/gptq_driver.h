/*
 * quant/gptq_driver.h (private) -- the one GPTQ driver (gptq.c) and the
 * primitives a backend provides for it (gq_gptq_ops).
 *
 * The driver does everything that is decided once per solve, on the host:
 * parameter checks (and the backend's block-size limit), the messages of
 * non-finite inputs, the dead columns, mean(diag H), the act-order
 * permutation, the group of every column (g_idx), the damping-retry loop
 * with its log lines, the RTN fallback, the loss check and the result
 * bookkeeping (damp_used, retries, fallback, n_dead, loss, seconds). The
 * backend does the data-parallel work where W and H live:
 *
 *   scan     non-finite W / H check, H scaled by h_scale; diag(H) to the host
 *   prepare  precomputed group params (per row, or static groups) and the
 *            permuted fp32 working copy of W (dead columns 0)
 *   factor   H[perm][perm] scaled, diag fixed, + lambda -> the upper factor
 *            U of H^-1 (H^-1 = U^T U) over H; GQ_ERR_NOT_PD -> the driver
 *            retries with more damping (scratch may persist across calls)
 *   solve    the lazy-block column loop, over U (GPTQ) or without it (RTN:
 *            d = 1, no error feedback, no loss), codes and params
 *   finish   fp16 scales (round_out), unpermuted dequantized W, codes,
 *            scales, zeros (and a packed qweight) into the host gq_qresult
 *   release  free the per-call state; always called, also after errors
 *
 * Calls: scan, [prepare, [factor]*, solve, finish], release. Any status
 * other than GQ_OK (and GQ_ERR_NOT_PD from factor) ends the solve with that
 * status, res freed. One driver for every backend keeps their semantics
 * (and messages) identical; the cut keeps W and H in the backend's memory:
 * only diag(H) [cols] goes to the host, and perm / gcol / dead / diag
 * [cols] come back, once per solve.
 */
#ifndef GQ_GPTQ_DRIVER_H
#define GQ_GPTQ_DRIVER_H

#include "gq/backend.h"
#include "gq/gptq.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How the group of permuted column j is found. */
typedef enum {
    GQ_GROUPS_ONE = 0, /* group_size -1: one group per row, params fixed up front       */
    GQ_GROUPS_STATIC,  /* params precomputed per original-order group (dead columns 0)    */
    GQ_GROUPS_DYNAMIC, /* params at each group start (j % gs == 0) from the working W    */
} gq_group_mode;

/* One solve, as the backend's primitives see it. Host arrays unless said otherwise. */
typedef struct {
    gq_backend *be; /* NULL for gq_gptq_quantize (CPU primitives, host memory) */
    const gq_gptq_params *p;
    gq_bweight *W;  /* [rows][cols] in the backend's memory, W->dtype; out: dequantized */
    float *H;       /* [cols][cols] backend memory, upper triangle (j >= i) read, destroyed;
                       NULL for RTN */
    double h_scale; /* H is used as fl((float)H * (float)h_scale) */
    int rows, cols;
    int gptq;  /* p->method == GQ_METHOD_GPTQ */
    gq_qcfg q; /* quantizer config (gq/quant_math.h) */
    /* set by the driver before prepare */
    gq_group_mode mode;
    int gs;      /* columns per group (cols when one group per row) */
    int ngroups; /* res->ngroups */
    int n_dead;
    const uint8_t *dead;              /* [cols] 1 = dead input column; NULL when n_dead == 0 (and for RTN) */
    const float *diag;                /* [cols] diag of the scaled H, dead ones 1; NULL for RTN */
    const int32_t *perm;              /* [cols] permuted position -> original column; NULL without act-order */
    const int32_t *invperm;           /* [cols] original column -> permuted position; NULL without act-order */
    const int32_t *gcol;              /* [cols] group of each permuted column */
    int round_out;                    /* p->out_f16 && !p->scale_f16: fp16 scales out, W rebuilt with them */
    gq_qresult *res;                  /* initialised (gq_qresult_init) before prepare; perm, g_idx filled */
    double t_prep, t_factor, t_solve; /* seconds of the phases so far (for the backend's statistics) */
    void *state;                      /* ops->state_bytes of zeroed memory for the backend */
} gq_gptq_job;

/* First non-finite input element (row-major linear index, -1: none) and its value (H: scaled). */
typedef struct {
    int64_t w_index, h_index;
    double w_value, h_value;
} gq_gptq_scan;

typedef struct {
    const char *name;   /* "CPU", "CUDA": messages and the debug line */
    int max_block;      /* largest supported block_size (GQ_ERR_UNSUPPORTED above), 0: any */
    size_t state_bytes; /* size of job->state */
    /* W, then (GPTQ) the upper triangle of H scaled; diag [cols] (GPTQ only) = diag of the scaled H */
    int (*scan)(gq_gptq_job *j, gq_gptq_scan *s, float *diag);
    int (*prepare)(gq_gptq_job *j);
    /* lambda = damp * mean(diag) (absolute); GQ_OK with U over j->H, or GQ_ERR_NOT_PD (message recorded) */
    int (*factor)(gq_gptq_job *j, double lambda);
    /* use_factor: GPTQ over the last successful factor, else RTN; row_loss [rows] (zeroed) += losses */
    int (*solve)(gq_gptq_job *j, int use_factor, double *row_loss);
    int (*finish)(gq_gptq_job *j);
    void (*release)(gq_gptq_job *j);
} gq_gptq_ops;

/* The solve of gq_be_gptq (and of gq_gptq_quantize: be NULL, the CPU ops,
 * h_scale 1): checks, primitives, retries, fallback, bookkeeping. W->data
 * must not be NULL. *res is overwritten; zeroed on error. */
int gq_gptq_drive(const gq_gptq_ops *ops, gq_backend *be, const gq_gptq_params *p, gq_bweight *W, float *H,
                  double h_scale, gq_qresult *res);

/* compute/cpu/backend_cpu_gptq.c: the CPU primitives (OpenBLAS + LAPACKE + OpenMP; be unused). */
extern const gq_gptq_ops gq_gptq_cpu_ops;

#ifdef __cplusplus
}
#endif
#endif /* GQ_GPTQ_DRIVER_H */
