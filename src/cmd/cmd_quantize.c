/* cmd_quantize.c -- `gq quantize`: options -> gq_quantize_run -> summary. */
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "gq/cli.h"
#include "gq/datadir.h"
#include "gq/quantize.h"

static const char default_calib[] = "calib/python-sitepackages.jsonl"; /* relative to the data directory */

/* Checks after parsing: required options, exclusive flags, the default calibration file. */
static int check_opts(const gq_quant_opts *o, int sym, int asym, const char *method, const char *syn,
                      const gq_opt *opts, int n) {
    if (!o->model_dir || !o->out_dir) {
        gq_opts_usage(stderr, "quantize", syn, opts, n);
        return gq_err(GQ_ERR_ARG, "--model and --out are required");
    }
    if (sym && asym) return gq_err(GQ_ERR_ARG, "--sym and --asym are exclusive");
    if (o->threads < 0) return gq_err(GQ_ERR_ARG, "--threads: expected >= 0, got %d", o->threads);
    /* the default corpus was not found and GPTQ would read it (RTN does not) */
    if (o->calib_path == default_calib && strcmp(method, "rtn")) {
        gq_data_not_found(default_calib);
        return gq_err_prefix("default --calib");
    }
    return GQ_OK;
}

int gq_cmd_quantize(int argc, char **argv) {
    gq_quant_opts o;
    gq_quant_opts_default(&o);
    const char *method = "gptq", *windowing = "auto", *format = "gptq";
    int sym = 0, asym = 0, act_order = 0, no_act_order = 0, static_groups = 0, no_static_groups = 0, calib_seed = 0;
    const char *clip = NULL; /* the profile's for GPTQ (gq_quant_opts_default), minmax for RTN */
    /* the bundled corpus wherever gq runs from (gq/datadir.h); NULL when not found */
    char *calib_default = gq_data_path(default_calib);
    o.calib_path = calib_default ? calib_default : default_calib;
    gq_opt opts[] = {
        {"model", GQ_OPT_STR, &o.model_dir, "Hugging Face checkpoint directory (fp16/bf16/fp32)", NULL, 0, 0},
        {"out", GQ_OPT_STR, &o.out_dir, "output directory (AutoGPTQ layout)", NULL, 0, 0},
        {"calib", GQ_OPT_STR, &o.calib_path,
         "calibration JSONL (plain or .gz): {\"text\"} or {\"question\",\"answer\"} lines", NULL, 0, 0},
        {"bits", GQ_OPT_INT, &o.gptq.bits, "bits per weight", "2|3|4|8", 0, 0},
        {"group-size", GQ_OPT_INT, &o.gptq.group_size, "input columns per scale/zero group (-1: one per row)", NULL, 0,
         0},
        {"sym", GQ_OPT_FLAG, &sym, "symmetric quantization, zero = 2^(bits-1) (the default)", NULL, 0, 0},
        {"asym", GQ_OPT_FLAG, &asym, "asymmetric quantization with zero points", NULL, 0, 0},
        {"act-order", GQ_OPT_FLAG, &act_order,
         "quantize columns in order of decreasing Hessian diagonal (the default for gptq)", NULL, 0, 0},
        {"no-act-order", GQ_OPT_FLAG, &no_act_order, "quantize columns in their order (the GPTQ paper's)", NULL, 0, 0},
        {"static-groups", GQ_OPT_FLAG, &static_groups,
         "group parameters fixed before the solve, so act-order keeps a trivial g_idx (the default)", NULL, 0, 0},
        {"no-static-groups", GQ_OPT_FLAG, &no_static_groups,
         "group parameters at each group's start in the solve order (act-order then writes a permuted g_idx, "
         "which TensorRT-LLM rejects and vLLM ignores)",
         NULL, 0, 0},
        {"clip", GQ_OPT_STR, &clip,
         "group scales: min-max range, or the shrunk range minimising sum |q(x) - x|^2.4 (mse-h: weighted by "
         "diag(H)); default mse for gptq, minmax for rtn",
         "minmax|mse|mse-h", 0, 0},
        {"damp", GQ_OPT_DOUBLE, &o.gptq.damp, "relative damping of the Hessian diagonal", NULL, 0, 0},
        {"block-size", GQ_OPT_INT, &o.gptq.block_size, "lazy-batch block of columns", NULL, 0, 0},
        {"nsamples", GQ_OPT_INT, &o.nsamples, "calibration sequences", NULL, 0, 0},
        {"seqlen", GQ_OPT_INT, &o.seqlen, "tokens per calibration sequence", NULL, 0, 0},
        {"windowing", GQ_OPT_STR, &windowing, "concat: one stream cut into windows; sample: one sequence per record",
         "auto|concat|sample", 0, 0},
        {"min-tokens", GQ_OPT_INT, &o.min_tokens, "sample windowing: skip records with fewer tokens", NULL, 0, 0},
        {"calib-seed", GQ_OPT_INT, &calib_seed,
         "0: calibration records in file order; N > 0: shuffled with seed N (another draw of windows)", NULL, 0, 0},
        {"hessian-skip", GQ_OPT_INT, &o.hessian_skip,
         "leave the first N tokens of each calibration sequence out of the Hessians", NULL, 0, 0},
        {"moe-min-tokens", GQ_OPT_INT, &o.moe_min_tokens,
         "MoE: an expert routed fewer calibration tokens is rounded to nearest", NULL, 0, 0},
        {"skip-bad", GQ_OPT_FLAG, &o.skip_bad, "skip (and count) calibration lines that are not valid records", NULL, 0,
         0},
        {"method", GQ_OPT_STR, &method, "gptq, or rtn (round to nearest, no calibration effect)", "gptq|rtn", 0, 0},
        {"format", GQ_OPT_STR, &format, "gptq: AutoGPTQ v1 (zero-1 stored); gptq_v2: true zeros", "gptq|gptq_v2", 0, 0},
        {"max-shard-mb", GQ_OPT_DOUBLE, &o.max_shard_mb, "largest output shard in MiB (0: a single file)", NULL, 0, 0},
        {"device", GQ_OPT_STR, &o.device, "auto, cpu, cuda, cuda:N, or several GPUs: cuda:N,M,... or cuda:all", NULL, 0, 0},
        {"precision", GQ_OPT_STR, &o.precision, "arithmetic: auto (fp32 on the CPU, fp16 on CUDA), fp16, or fp32 (CUDA: the CPU's arithmetic, slower)", "auto|fp16|fp32", 0, 0},
        {"threads", GQ_OPT_INT, &o.threads, "CPU threads (0: all cores)", NULL, 0, 0},
        {"force", GQ_OPT_FLAG, &o.force, "replace an existing output directory", NULL, 0, 0},
        {"resume", GQ_OPT_FLAG, &o.resume, "continue an interrupted run from its last finished layer", NULL, 0, 0},
        {"max-layers", GQ_OPT_INT, &o.max_layers, "stop after this many layers, keeping the unfinished run (testing)",
         NULL, 0, 1},
    };
    int n = (int)(sizeof opts / sizeof *opts);
    const char *syn = "--model DIR --out DIR [options]";
    int rc = gq_opts_parse("quantize", syn, opts, n, argc - 1, argv + 1, NULL, 0, NULL);
    if (!rc) rc = check_opts(&o, sym, asym, method, syn, opts, n);
    if (!rc && act_order && no_act_order) rc = gq_err(GQ_ERR_ARG, "--act-order and --no-act-order are exclusive");
    if (!rc && static_groups && no_static_groups)
        rc = gq_err(GQ_ERR_ARG, "--static-groups and --no-static-groups are exclusive");
    if (!rc && clip) rc = gq_clip_parse(clip, &o.gptq.clip);
    if (!rc && !strcmp(method, "rtn")) { /* RTN: min-max, the reference's anchor; no column order to choose */
        if (!clip) o.gptq.clip = GQ_CLIP_MINMAX;
        o.gptq.act_order = o.gptq.static_groups = 0;
    }
    if (!rc && calib_seed < 0) rc = gq_err(GQ_ERR_ARG, "--calib-seed: expected >= 0, got %d", calib_seed);
    if (!rc && o.hessian_skip < 0) rc = gq_err(GQ_ERR_ARG, "--hessian-skip: expected >= 0, got %d", o.hessian_skip);
    if (rc) {
        free(calib_default);
        return rc;
    }
    o.calib_seed = (uint64_t)calib_seed;
    o.gptq.sym = !asym;
    if (act_order || no_act_order) o.gptq.act_order = act_order;
    if (static_groups || no_static_groups) o.gptq.static_groups = static_groups;
    o.gptq.method = strcmp(method, "rtn") ? GQ_METHOD_GPTQ : GQ_METHOD_RTN;
    o.v2 = !strcmp(format, "gptq_v2");
    o.gptq.zero_policy = o.v2 ? GQ_ZERO_FREE : GQ_ZERO_V1;
    o.windowing = !strcmp(windowing, "concat")   ? GQ_WIN_CONCAT
                  : !strcmp(windowing, "sample") ? GQ_WIN_SAMPLE
                                                 : GQ_WIN_AUTO;
    gq_set_threads(o.threads);

    gq_quant_report rep;
    rc = gq_quantize_run(&o, &rep);
    if (rc == GQ_OK && rep.t_total > 0) {
        char b1[32], b2[32];
        gq_info("done in %.1f s (load %.1f, forward %.1f, hessian %.1f, solve %.1f, export %.1f); peak host memory %s, "
                "peak device memory %s; %d modules, %d RTN fallbacks",
                rep.t_total, rep.t_load, rep.t_forward, rep.t_hessian, rep.t_solve, rep.t_export,
                gq_fmt_bytes(b1, sizeof b1, (double)rep.peak_rss), gq_fmt_bytes(b2, sizeof b2, (double)rep.peak_device),
                rep.n_modules, rep.n_fallback);
        printf("quantized %s -> %s\n", o.model_dir, o.out_dir);
    }
    gq_quant_report_free(&rep);
    free(calib_default);
    return rc;
}
