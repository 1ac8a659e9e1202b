/* cmd_calib.c -- `gq calib`: a self-generated calibration set (the model
 * answers its own questions), see gq/calib_gen.h.
 *
 *   gq calib --model DIR --questions FILE --out FILE.jsonl[.gz] [--n N]
 *            [--max-new-tokens 512] [--temperature 0] [--top-p 1] [--top-k 0]
 *            [--seed 0] [--batch 16] [--device auto] [--field NAME]
 *            [--questions-format auto|jsonl|json|lines|blocks]
 *            [--template raw|chat|STRING] [--resume] [--min-answer-tokens 8]
 *            [--degenerate-period 64] [--threads N]
 *
 * Settings are printed first, then one progress line per batch; the
 * summary (drops by reason, answer-length statistics) goes to stderr and one
 * grep-friendly result line to stdout:
 *   calib: 120 records written to out.jsonl (128 in the file), 8 dropped
 */
#include <stdio.h>
#include <string.h>

#include "cmds.h"
#include "gq/calib_gen.h"
#include "gq/cli.h"

int gq_cmd_calib(int argc, char **argv) {
    gq_calib_gen_opts o;
    gq_calib_gen_opts_default(&o);
    const char *qfmt = "auto";
    int seed = 0;
    const char *int4 = "auto";
    gq_opt opts[] = {
        {"model", GQ_OPT_STR, &o.model_dir, "Hugging Face checkpoint directory (fp16/bf16/fp32 or gq int4)", NULL, 0,
         0},
        {"questions", GQ_OPT_STR, &o.questions, "questions: JSONL, JSON array or text (plain or .gz)", NULL, 0, 0},
        {"out", GQ_OPT_STR, &o.out, "output JSONL of {\"question\", \"answer\", ...} records (.gz: gzip)", NULL, 0, 0},
        {"n", GQ_OPT_INT, &o.n, "use the first N questions (0: all)", NULL, 0, 0},
        {"max-new-tokens", GQ_OPT_INT, &o.sampling.max_new_tokens, "longest answer in tokens", NULL, 0, 0},
        {"temperature", GQ_OPT_DOUBLE, &o.sampling.temperature, "sampling temperature (0: greedy)", NULL, 0, 0},
        {"top-p", GQ_OPT_DOUBLE, &o.sampling.top_p, "nucleus sampling: smallest set of tokens with this probability (1: off)",
         NULL, 0, 0},
        {"top-k", GQ_OPT_INT, &o.sampling.top_k, "sample among the k most likely tokens (0: off)", NULL, 0, 0},
        {"seed", GQ_OPT_INT, &seed, "random seed (each question has its own stream)", NULL, 0, 0},
        {"batch", GQ_OPT_INT, &o.batch, "sequences decoded together; records written (and fsynced) per batch", NULL, 0,
         0},
        {"device", GQ_OPT_STR, &o.device, "auto, cpu, cuda or cuda:N", NULL, 0, 0},
        {"precision", GQ_OPT_STR, &o.precision, "arithmetic: auto (fp32 on the CPU, fp16 on CUDA), fp16, or fp32 (CUDA: the CPU's arithmetic, slower)", "auto|fp16|fp32", 0, 0},
        {"field", GQ_OPT_STR, &o.field,
         "question field of JSON objects (default: prompt, question, instruction or text)", NULL, 0, 0},
        {"input-field", GQ_OPT_STR, &o.input_field,
         "JSON field appended after a newline when non-empty (default input)", NULL, 0, 0},
        {"questions-format", GQ_OPT_STR, &qfmt, "question file format", "auto|jsonl|json|lines|blocks", 0, 0},
        {"template", GQ_OPT_STR, &o.template_spec,
         "prompt: raw (the question starts the text), chat (tokenizer chat_template) or a string with {question}", NULL,
         0, 0},
        {"resume", GQ_OPT_FLAG, &o.resume, "continue an interrupted run: skip the questions already in --out", NULL, 0,
         0},
        {"force", GQ_OPT_FLAG, &o.force, "replace an existing --out", NULL, 0, 0},
        {"min-answer-tokens", GQ_OPT_INT, &o.min_answer_tokens, "drop answers shorter than this", NULL, 0, 0},
        {"degenerate-period", GQ_OPT_INT, &o.degenerate_period,
         "drop answers in which a period of up to N tokens repeats over more than half (0: off)", NULL, 0, 0},
        {"max-len", GQ_OPT_INT, &o.max_len, "tokens per sequence, prompt included (0: longest prompt + max-new-tokens)",
         NULL, 0, 0},
        {"threads", GQ_OPT_INT, &o.threads, "CPU threads (0: all cores)", NULL, 0, 0},
        {"int4-kernel", GQ_OPT_STR, &int4, "auto: a 4-bit checkpoint's linears stay packed on the GPU and run with the W4A16 kernel, unless --batch is above 16 rows and their fp16 copy fits the device (faster there); on: always packed; off: dequantized to fp16 at load (the CPU always dequantizes)", "auto|on|off", 0, 0},
    };
    int n = (int)(sizeof opts / sizeof *opts);
    const char *syn = "--model DIR --questions FILE --out FILE.jsonl[.gz] [options]";
    int rc = gq_opts_parse("calib", syn, opts, n, argc - 1, argv + 1, NULL, 0, NULL);
    if (rc) return rc;
    if (!o.model_dir || !o.questions || !o.out) {
        gq_opts_usage(stderr, "calib", syn, opts, n);
        return gq_err(GQ_ERR_ARG, "--model, --questions and --out are required");
    }
    if (seed < 0) return gq_err(GQ_ERR_ARG, "--seed: expected >= 0, got %d", seed);
    rc = gq_questions_format_parse(qfmt, &o.qformat);
    if (rc) return rc;
    o.int4_kernel = !strcmp(int4, "off") ? 0 : !strcmp(int4, "on") ? 1 : GQ_Q4_AUTO;
    o.sampling.seed = (uint64_t)seed;
    gq_opts_print("gq calib: effective settings", opts, n);

    gq_calib_gen_report r;
    rc = gq_calib_gen_run(&o, &r);
    if (rc != GQ_OK) return rc;
    long dropped = r.n_empty + r.n_short + r.n_degenerate + r.n_duplicate;
    gq_info("generated %ld answers (%lld tokens) in %.1f s: %ld kept (%ld eos, %ld length), dropped %ld empty, %ld "
            "short (< %d tokens), %ld degenerate, %ld duplicate; %ld questions too long, %ld done before",
            r.n_generated, (long long)r.gen_tokens, r.seconds, r.n_written, r.n_eos, r.n_length, r.n_empty, r.n_short,
            o.min_answer_tokens, r.n_degenerate, r.n_duplicate, r.n_too_long, r.n_done_before);
    if (r.n_total)
        gq_info("answer tokens over the %ld records of %s: min %d, median %.1f, mean %.1f, max %d", r.n_total, o.out,
                r.len_min, r.len_median, r.len_mean, r.len_max);
    printf("calib: %ld records written to %s (%ld in the file), %ld dropped\n", r.n_written, o.out, r.n_total, dropped);
    return GQ_OK;
}
