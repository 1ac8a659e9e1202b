/* cmd_eval.c -- `gq eval`: HumanEval / MBPP pass@k of a model (and its base side by side), of a
 * samples file made elsewhere, or of the canonical / broken controls; see gq/eval.h, docs/eval.md.
 *
 *   gq eval --task humaneval|mbpp --model DIR [--base DIR] [--n-samples 1] [--temperature 0]
 *           [--k 1,10] [--max-new-tokens 512] [--template raw|chat|STR] [--limit N] [--out FILE]
 *   gq eval --task humaneval|mbpp --samples FILE      (task_id, completion per line)
 *   gq eval --task humaneval|mbpp --control canonical|broken
 *
 * Settings first, progress to stderr, then one "eval: <source> pass@k = ..." line per source to
 * stdout (and, with --base, the difference and a table of the problems lost or gained). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "gq/cli.h"
#include "gq/eval.h"

static int parse_k(const char *s, gq_eval_opts *o) {
    o->nk = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 1000000 || (*end && *end != ','))
            return gq_err(GQ_ERR_ARG, "--k: expected a list of integers >= 1 such as 1,10, got '%s'", s);
        if (o->nk == GQ_EVAL_MAX_K) return gq_err(GQ_ERR_ARG, "--k: at most %d values, got '%s'", GQ_EVAL_MAX_K, s);
        o->k[o->nk++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (!o->nk) return gq_err(GQ_ERR_ARG, "--k: expected a list of integers >= 1 such as 1,10, got '%s'", s);
    return GQ_OK;
}

int gq_cmd_eval(int argc, char **argv) {
    gq_eval_opts o;
    gq_eval_opts_default(&o);
    const char *task = NULL, *ks = "1,10";
    int seed = 0, memory_mb = (int)(o.sandbox.mem_bytes >> 20);
    const char *int4 = "auto";
    double timeout = o.sandbox.wall_s;
    gq_opt opts[] = {
        {"task", GQ_OPT_STR, &task, "benchmark (bundled in calib/eval/, docs/eval.md)", "humaneval|mbpp", 0, 0},
        {"model", GQ_OPT_STR, &o.model_dir, "checkpoint whose completions are scored (fp16/bf16/fp32 or gq int4)", NULL,
         0, 0},
        {"base", GQ_OPT_STR, &o.base_dir,
         "also this checkpoint (the fp16 base of --model), on the same problems and "
         "samples, and the difference",
         NULL, 0, 0},
        {"samples", GQ_OPT_STR, &o.samples,
         "score completions made elsewhere: JSONL of {\"task_id\", \"completion\"} "
         "(plain or .gz)",
         NULL, 0, 0},
        {"control", GQ_OPT_STR, &o.control, "score the canonical solutions, or deliberately broken ones",
         "canonical|broken", 0, 0},
        {"data", GQ_OPT_STR, &o.data, "another copy of the task's data file (default: the bundled one)", NULL, 0, 0},
        {"n-samples", GQ_OPT_INT, &o.n_samples, "completions per problem", NULL, 0, 0},
        {"temperature", GQ_OPT_DOUBLE, &o.sampling.temperature, "sampling temperature (0: greedy)", NULL, 0, 0},
        {"top-p", GQ_OPT_DOUBLE, &o.sampling.top_p, "nucleus sampling (1: off)", NULL, 0, 0},
        {"top-k", GQ_OPT_INT, &o.sampling.top_k, "sample among the k most likely tokens (0: off)", NULL, 0, 0},
        {"seed", GQ_OPT_INT, &seed, "random seed (each problem and sample has its own stream)", NULL, 0, 0},
        {"k", GQ_OPT_STR, &ks, "pass@k to report (those <= --n-samples)", NULL, 0, 0},
        {"max-new-tokens", GQ_OPT_INT, &o.sampling.max_new_tokens, "longest completion in tokens", NULL, 0, 0},
        {"template", GQ_OPT_STR, &o.template_spec,
         "prompt: raw (the model continues the code), chat (tokenizer chat_template, an instruction) or a string with "
         "{question} (the code)",
         NULL, 0, 0},
        {"limit", GQ_OPT_INT, &o.limit, "the first N problems (0: all)", NULL, 0, 0},
        {"batch", GQ_OPT_INT, &o.batch, "sequences decoded together", NULL, 0, 0},
        {"out", GQ_OPT_STR, &o.out, "JSONL of every sample (and FILE.summary.json)", NULL, 0, 0},
        {"resume", GQ_OPT_FLAG, &o.resume, "continue an interrupted run: skip the samples already in --out", NULL, 0,
         0},
        {"force", GQ_OPT_FLAG, &o.force, "replace an existing --out", NULL, 0, 0},
        {"jobs", GQ_OPT_INT, &o.jobs, "programs run at once (0: the number of CPUs)", NULL, 0, 0},
        {"timeout", GQ_OPT_DOUBLE, &timeout, "seconds of wall-clock and of CPU time per program", NULL, 0, 0},
        {"memory-mb", GQ_OPT_INT, &memory_mb, "address space per process of a program, MiB (0: unlimited)", NULL, 0, 0},
        {"python", GQ_OPT_STR, &o.python, "the python3 that runs the programs (default /usr/bin/python3, else PATH)",
         NULL, 0, 0},
        {"unsafe-no-sandbox", GQ_OPT_FLAG, &o.sandbox.unsafe,
         "where the kernel refuses namespaces, run programs with limits only (no isolation)", NULL, 0, 0},
        {"device", GQ_OPT_STR, &o.device, "auto, cpu, cuda or cuda:N", NULL, 0, 0},
        {"precision", GQ_OPT_STR, &o.precision,
         "arithmetic: auto (fp32 on the CPU, fp16 on CUDA), fp16, or fp32 (CUDA: the CPU's arithmetic, slower)",
         "auto|fp16|fp32", 0, 0},
        {"threads", GQ_OPT_INT, &o.threads, "CPU threads of the model (0: all cores)", NULL, 0, 0},
        {"int4-kernel", GQ_OPT_STR, &int4, "auto: a 4-bit checkpoint's linears stay packed on the GPU and run with the W4A16 kernel, unless --batch is above 16 rows and their fp16 copy fits the device (faster there); on: always packed; off: dequantized to fp16 at load (the CPU always dequantizes)", "auto|on|off", 0, 0},
    };
    int n = (int)(sizeof opts / sizeof *opts);
    const char *syn =
        "--task humaneval|mbpp (--model DIR [--base DIR] | --samples FILE | --control canonical|broken) [options]";
    int rc = gq_opts_parse("eval", syn, opts, n, argc - 1, argv + 1, NULL, 0, NULL);
    if (rc) return rc;
    if (!task || (!o.model_dir && !o.samples && !o.control)) {
        gq_opts_usage(stderr, "eval", syn, opts, n);
        return gq_err(GQ_ERR_ARG, "--task and one of --model, --samples and --control are required");
    }
    rc = gq_eval_task_parse(task, &o.task);
    if (rc) return rc;
    rc = parse_k(ks, &o);
    if (rc) return rc;
    if (seed < 0) return gq_err(GQ_ERR_ARG, "--seed: expected >= 0, got %d", seed);
    if (memory_mb < 0) return gq_err(GQ_ERR_ARG, "--memory-mb: expected >= 0 (0: unlimited), got %d", memory_mb);
    if (!(timeout > 0)) return gq_err(GQ_ERR_ARG, "--timeout: expected > 0 seconds, got %g", timeout);
    o.int4_kernel = !strcmp(int4, "off") ? 0 : !strcmp(int4, "on") ? 1 : GQ_Q4_AUTO;
    o.sampling.seed = (uint64_t)seed;
    o.sandbox.wall_s = timeout;
    o.sandbox.cpu_s = timeout;
    o.sandbox.mem_bytes = (size_t)memory_mb << 20;
    gq_opts_print("gq eval: effective settings", opts, n);

    gq_eval_report r;
    rc = gq_eval_run(&o, &r);
    if (rc == GQ_OK) {
        for (int si = 0; si < r.n_sources; si++) {
            const gq_eval_source_report *s = &r.s[si];
            char oc[512];
            size_t k = 0;
            oc[0] = 0;
            for (int i = 0; i < GQ_EVAL_N_OUTCOMES && k < sizeof oc; i++)
                if (s->outcomes[i])
                    k += (size_t)snprintf(oc + k, sizeof oc - k, "%s%s %ld", k ? ", " : "", gq_eval_outcome_name(i),
                                          s->outcomes[i]);
            gq_info("%s: %s", s->tag, oc[0] ? oc : "no samples");
            if (s->gen_samples)
                gq_info("%s: generated %ld completions (%lld tokens) in %.1f s: %.3f s per problem", s->tag,
                        s->gen_samples, (long long)s->gen_tokens, s->gen_s,
                        s->gen_s * s->min_n / (double)(s->gen_samples ? s->gen_samples : 1));
            if (s->exec_samples)
                gq_info("%s: ran %ld programs: %.3f s wall, %.3f s CPU each on average", s->tag, s->exec_samples,
                        s->exec_s / s->exec_samples, s->exec_cpu_s / s->exec_samples);
        }
        gq_info("done in %.1f s (sandbox: %s)%s%s%s", r.seconds, gq_sb_mode_name(r.mode), o.out ? "; records in " : "",
                o.out ? o.out : "", o.out ? " and its .summary.json" : "");
        fflush(stderr);
        gq_eval_print(&r, stdout);
    }
    gq_eval_report_free(&r);
    return rc;
}
