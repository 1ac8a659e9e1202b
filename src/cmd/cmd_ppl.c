/*
 * cmd_ppl.c -- `gq ppl`: perplexity of a model on a text file.
 *
 *   gq ppl --model DIR --text FILE [--base DIR] [--seqlen 2048] [--max-windows N]
 *          [--device cpu|cuda[:N]|auto] [--precision auto|fp16|fp32] [--threads N]
 *
 * One option table drives parsing, defaults and --help. Progress goes to
 * stderr; the result is one grep-friendly line on stdout:
 *   ppl = 11.1871 (155 windows of 2048 tokens, 317440 predictions)
 * and with --base (the fp16 model --model was quantized from) two more, on the same windows:
 *   base ppl = 11.1868
 *   kld mean = 0.012345 median = 0.004567 p99 = 0.123456 top1 = 0.9321
 * (gq/ppl.h defines the statistics). Test hook: GQ_KLD_DUMP=FILE (with --base) writes both
 * models' logits of the first GQ_KLD_DUMP_WINDOWS (4) windows to FILE (safetensors), which
 * tests/ref/gen_kld.py reads.
 */
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "gq/cli.h"
#include "gq/ppl.h"

/* The test hook's environment (GQ_KLD_DUMP, GQ_KLD_DUMP_WINDOWS) into po. */
static int dump_env(gq_ppl_opts *po) {
    po->dump_path = getenv("GQ_KLD_DUMP");
    if (po->dump_path && !po->dump_path[0]) po->dump_path = NULL;
    const char *nw = getenv("GQ_KLD_DUMP_WINDOWS");
    if (!nw || !nw[0]) return GQ_OK;
    char *end;
    long v = strtol(nw, &end, 10);
    if (*end || v < 1 || v > 1000000)
        return gq_err(GQ_ERR_ARG, "GQ_KLD_DUMP_WINDOWS: expected an integer >= 1, got '%s'", nw);
    po->dump_windows = (int)v;
    return GQ_OK;
}

/* Open the base model; refuse one whose vocabulary differs from m's. */
static int open_base(gq_model *b, const char *dir, const gq_model *m, const char *model_dir) {
    int rc = gq_model_open(b, dir);
    if (rc != GQ_OK) return gq_err_prefix("--base");
    if (b->cfg.vocab != m->cfg.vocab)
        return gq_err(GQ_ERR_ARG,
                      "--base %s has a vocabulary of %d tokens, --model %s one of %d: the KL divergence compares "
                      "next-token distributions over one vocabulary (the same tokenizer)",
                      dir, b->cfg.vocab, model_dir, m->cfg.vocab);
    char summary[512];
    gq_config_summary(&b->cfg, summary, sizeof summary);
    gq_info("base model: %s", summary);
    gq_info("the text is tokenized with --model's tokenizer (%s); --base must use the same one", model_dir);
    return GQ_OK;
}

static void print_results(const gq_ppl_result *r, const gq_kld_result *k, int seqlen) {
    printf("ppl = %.4f (%d windows of %d tokens, %lld predictions)\n", r->ppl, r->n_windows, seqlen,
           (long long)r->n_predictions);
    if (k) {
        printf("base ppl = %.4f\n", k->base.ppl);
        printf("kld mean = %.6f median = %.6f p99 = %.6f top1 = %.4f\n", k->mean, k->median, k->p99, k->top1);
    }
    fflush(stdout);
}

int gq_cmd_ppl(int argc, char **argv) {
    const char *model = NULL, *base_dir = NULL, *text_path = NULL, *device = "auto", *precision = "auto";
    int threads = 0;
    const char *int4 = "on";
    gq_ppl_opts po;
    gq_ppl_opts_default(&po);
    gq_opt opts[] = {
        {"model", GQ_OPT_STR, &model, "model directory: config.json, *.safetensors, tokenizer.json (fp16/bf16 or gq int4)", NULL, 0, 0},
        {"text", GQ_OPT_STR, &text_path, "UTF-8 text file to evaluate", NULL, 0, 0},
        {"base", GQ_OPT_STR, &base_dir, "base model, e.g. the fp16 model --model was quantized from (same vocabulary): also its perplexity, and the KL divergence of --model's next-token distributions from the base's, on the same windows", NULL, 0, 0},
        {"seqlen", GQ_OPT_INT, &po.seqlen, "window length in tokens", NULL, 0, 0},
        {"max-windows", GQ_OPT_INT, &po.max_windows, "evaluate at most N windows (0 = all)", NULL, 0, 0},
        {"device", GQ_OPT_STR, &device, "cpu, cuda, cuda:N, or auto (CUDA if present)", NULL, 0, 0},
        {"precision", GQ_OPT_STR, &precision, "arithmetic: auto (fp32 on the CPU, fp16 on CUDA), fp16, or fp32 (CUDA: the CPU's arithmetic, slower)", "auto|fp16|fp32", 0, 0},
        {"threads", GQ_OPT_INT, &threads, "CPU threads (0 = all cores)", NULL, 0, 0},
        {"int4-kernel", GQ_OPT_STR, &int4, "on: a 4-bit checkpoint's linears stay packed on the GPU and run with the W4A16 kernel; off: dequantized to fp16 at load (the CPU always dequantizes)", "on|off", 0, 0},
    };
    const int n = (int)(sizeof opts / sizeof *opts);
    const char *syn = "--model DIR --text FILE [options]\n\n"
                      "Perplexity: <s> + tokens, consecutive windows of --seqlen tokens (the tail is dropped),\n"
                      "exp(mean over windows of the mean next-token NLL). With --base: the base's perplexity and\n"
                      "KL(base || model) per prediction (mean, median, 99th percentile) and the argmax agreement.";
    int rc = gq_opts_parse("ppl", syn, opts, n, argc - 1, argv + 1, NULL, 0, NULL);
    if (rc) return rc;
    if (!model || !text_path)
        return gq_err(GQ_ERR_ARG, "--%s is required (see gq ppl --help)", !model ? "model" : "text");
    if (po.seqlen < 2) return gq_err(GQ_ERR_ARG, "--seqlen: expected an integer >= 2, got %d", po.seqlen);
    if (po.max_windows < 0) return gq_err(GQ_ERR_ARG, "--max-windows: expected >= 0, got %d", po.max_windows);
    if (threads < 0) return gq_err(GQ_ERR_ARG, "--threads: expected >= 0, got %d", threads);
    if (threads > 0) gq_set_threads(threads);
    if (base_dir && (rc = dump_env(&po)) != GQ_OK) return rc;
    if (!base_dir && getenv("GQ_KLD_DUMP")) gq_warn("GQ_KLD_DUMP is ignored without --base");
    gq_opts_print("gq ppl: effective settings", opts, n);

    char *text = NULL;
    size_t len = 0;
    gq_model m, b;
    gq_backend *be = NULL;
    gq_tokenizer *tok = NULL;
    memset(&m, 0, sizeof m);
    memset(&b, 0, sizeof b);
    /* the device and the precision first: a bad one is refused before anything is loaded */
    if ((rc = gq_backend_init(&be, device)) != GQ_OK) goto done;
    if ((rc = gq_backend_set_precision(be, precision)) != GQ_OK) goto done;
    if ((rc = gq_read_file(text_path, &text, &len)) != GQ_OK) goto done;
    if ((rc = gq_model_open(&m, model)) != GQ_OK) goto done;
    m.q4_resident = strcmp(int4, "off") != 0;
    char summary[512];
    gq_config_summary(&m.cfg, summary, sizeof summary);
    gq_info("model: %s", summary);
    if (base_dir && (rc = open_base(&b, base_dir, &m, model)) != GQ_OK) goto done;
    if ((rc = gq_tok_load(&tok, model)) != GQ_OK) goto done;
    gq_ppl_result r;
    gq_kld_result k;
    rc = gq_ppl_kld_text(&m, base_dir ? &b : NULL, be, tok, text, len, text_path, &po, &r, &k);
    if (rc == GQ_OK) {
        char pk[32];
        gq_info("%.1f s, %.0f tokens/s%s, peak backend memory %s", r.seconds,
                (double)r.n_windows * po.seqlen / (r.seconds > 0 ? r.seconds : 1), base_dir ? " (both models)" : "",
                gq_fmt_bytes(pk, sizeof pk, (double)gq_be_peak_bytes(be)));
        print_results(&r, base_dir ? &k : NULL, po.seqlen);
        gq_ppl_result_free(&r);
        if (base_dir) gq_kld_result_free(&k);
    }
done:
    gq_backend_free(be);
    gq_tok_free(tok);
    gq_model_close(&m);
    gq_model_close(&b);
    free(text);
    return rc;
}
