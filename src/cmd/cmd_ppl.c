/*
 * cmd_ppl.c -- `gq ppl`: perplexity of a model on a text file.
 *
 *   gq ppl --model DIR --text FILE [--seqlen 2048] [--max-windows N]
 *          [--device cpu|cuda[:N]|auto] [--precision auto|fp16|fp32] [--threads N]
 *
 * One option table drives parsing, defaults and --help. Progress goes to
 * stderr; the result is one grep-friendly line on stdout:
 *   ppl = 11.1871 (155 windows of 2048 tokens, 317440 predictions)
 */
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "gq/cli.h"
#include "gq/ppl.h"

int gq_cmd_ppl(int argc, char **argv) {
    const char *model = NULL, *text_path = NULL, *device = "auto", *precision = "auto";
    int threads = 0;
    gq_ppl_opts po;
    gq_ppl_opts_default(&po);
    gq_opt opts[] = {
        {"model", GQ_OPT_STR, &model, "model directory: config.json, *.safetensors, tokenizer.json (fp16/bf16 or gq int4)", NULL, 0, 0},
        {"text", GQ_OPT_STR, &text_path, "UTF-8 text file to evaluate", NULL, 0, 0},
        {"seqlen", GQ_OPT_INT, &po.seqlen, "window length in tokens", NULL, 0, 0},
        {"max-windows", GQ_OPT_INT, &po.max_windows, "evaluate at most N windows (0 = all)", NULL, 0, 0},
        {"device", GQ_OPT_STR, &device, "cpu, cuda, cuda:N, or auto (CUDA if present)", NULL, 0, 0},
        {"precision", GQ_OPT_STR, &precision, "arithmetic: auto (fp32 on the CPU, fp16 on CUDA), fp16, or fp32 (CUDA: the CPU's arithmetic, slower)", "auto|fp16|fp32", 0, 0},
        {"threads", GQ_OPT_INT, &threads, "CPU threads (0 = all cores)", NULL, 0, 0},
    };
    const int n = (int)(sizeof opts / sizeof *opts);
    const char *syn = "--model DIR --text FILE [options]\n\n"
                      "Perplexity: <s> + tokens, consecutive windows of --seqlen tokens (the tail is dropped),\n"
                      "exp(mean over windows of the mean next-token NLL).";
    int rc = gq_opts_parse("ppl", syn, opts, n, argc - 1, argv + 1, NULL, 0, NULL);
    if (rc) return rc;
    if (!model || !text_path)
        return gq_err(GQ_ERR_ARG, "--%s is required (see gq ppl --help)", !model ? "model" : "text");
    if (po.seqlen < 2) return gq_err(GQ_ERR_ARG, "--seqlen: expected an integer >= 2, got %d", po.seqlen);
    if (po.max_windows < 0) return gq_err(GQ_ERR_ARG, "--max-windows: expected >= 0, got %d", po.max_windows);
    if (threads < 0) return gq_err(GQ_ERR_ARG, "--threads: expected >= 0, got %d", threads);
    if (threads > 0) gq_set_threads(threads);
    gq_opts_print("gq ppl: effective settings", opts, n);

    char *text = NULL;
    size_t len = 0;
    gq_model m;
    gq_backend *be = NULL;
    gq_tokenizer *tok = NULL;
    memset(&m, 0, sizeof m);
    /* the device and the precision first: a bad one is refused before anything is loaded */
    if ((rc = gq_backend_init(&be, device)) != GQ_OK) goto done;
    if ((rc = gq_backend_set_precision(be, precision)) != GQ_OK) goto done;
    if ((rc = gq_read_file(text_path, &text, &len)) != GQ_OK) goto done;
    if ((rc = gq_model_open(&m, model)) != GQ_OK) goto done;
    char summary[512];
    gq_config_summary(&m.cfg, summary, sizeof summary);
    gq_info("model: %s", summary);
    if ((rc = gq_tok_load(&tok, model)) != GQ_OK) goto done;
    gq_ppl_result r;
    rc = gq_ppl_text(&m, be, tok, text, len, text_path, &po, &r);
    if (rc == GQ_OK) {
        char pk[32];
        gq_info("%.1f s, %.0f tokens/s, peak backend memory %s", r.seconds,
                (double)r.n_windows * po.seqlen / (r.seconds > 0 ? r.seconds : 1),
                gq_fmt_bytes(pk, sizeof pk, (double)gq_be_peak_bytes(be)));
        printf("ppl = %.4f (%d windows of %d tokens, %lld predictions)\n", r.ppl, r.n_windows, po.seqlen,
               (long long)r.n_predictions);
        fflush(stdout);
        gq_ppl_result_free(&r);
    }
done:
    gq_backend_free(be);
    gq_tok_free(tok);
    gq_model_close(&m);
    free(text);
    return rc;
}
