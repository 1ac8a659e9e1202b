/*
 * gq/quantize.h -- the quantization driver behind `gq quantize`.
 *
 * One decoder layer at a time: the calibration activations of all samples
 * stay on the backend; per layer, in true-sequential order
 *   [q,k,v] -> [o] -> [gate,up] -> [down],
 * the inputs of each group are collected into one shared Hessian (q/k/v see
 * the same input, so do gate/up: their rows are stacked and solved with one
 * factorization), the group is quantized, and later groups are fed through
 * the already quantized modules; finally the layer outputs are recomputed
 * with the quantized layer and become the next layer's inputs.
 *
 * Output directory (AutoGPTQ v1 layout, gptq-reference.md §2): sharded
 * safetensors with index, config.json with quantization_config,
 * quantize_config.json, tokenizer files, gq_report.json. Work in progress
 * lives in "<out>.partial/" (one safetensors file per finished layer plus
 * state.json), so --resume continues after the last finished layer; the
 * final directory is assembled under "<out>.tmp.<pid>" and renamed to <out>.
 */
#ifndef GQ_QUANTIZE_H
#define GQ_QUANTIZE_H

#include "gq/calib.h"
#include "gq/gptq.h"
#include "gq/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *model_dir;
    const char *out_dir;
    const char *calib_path;
    const char *device;     /* "auto", "cpu", "cuda", "cuda:N", or several: "cuda:N,M,..." / "cuda:all" */
    const char *precision;  /* "auto", "fp16", "fp32" (gq_backend_set_precision) */
    gq_gptq_params gptq;
    int nsamples, seqlen;
    gq_windowing windowing;
    int min_tokens;
    int skip_bad;
    int force, resume;
    int v2;                 /* write checkpoint_format gptq_v2 (true zeros) */
    double max_shard_mb;    /* 0: one file */
    int threads;
    int max_layers;         /* testing: stop after this many layers (0 = all) */
    int moe_min_tokens;     /* MoE: an expert routed fewer calibration tokens is rounded to nearest */
    uint64_t calib_seed;    /* 0: calibration records in file order; else shuffled (gq_calib_opts.seed) */
    int hessian_skip;       /* the first N tokens of each calibration sequence feed no Hessian (0) */
    int dp_cpu_ranks;       /* tests: > 1: that many CPU ranks summing through host memory (gq/dp.h) in
                               place of one CPU backend, as `device` cuda:0,1,... spreads a run */
} gq_quant_opts;

void gq_quant_opts_default(gq_quant_opts *o);

/* Per linear module. */
typedef struct {
    int layer;
    char name[GQ_MODULE_NAME]; /* "self_attn.q_proj", "mlp.experts.3.gate_proj" (gq_module.name) */
    int rows, cols;
    double loss, damp, seconds;
    int retries, fallback, n_dead;
} gq_module_report;

typedef struct {
    int n_modules;
    gq_module_report *modules;
    double t_load, t_forward, t_hessian, t_solve, t_export, t_total;
    size_t peak_rss, peak_device;
    char precision[8];      /* "fp16" or "fp32": the backend's activation dtype */
    char arith[128];        /* gq_backend_arith_id: what fixes the arithmetic */
    int n_fallback;
    int64_t n_calib_tokens;
    int layers_resumed;     /* layers restored from an interrupted run (their modules are listed too) */
    int layers_loaded_ahead; /* layers whose weights were loaded while the layer before computed */
} gq_quant_report;

int gq_quantize_run(const gq_quant_opts *o, gq_quant_report *rep);
void gq_quant_report_free(gq_quant_report *r);

#ifdef __cplusplus
}
#endif
#endif /* GQ_QUANTIZE_H */
