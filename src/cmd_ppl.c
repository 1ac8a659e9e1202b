/*
 * cmd_ppl.c -- `gq ppl`: perplexity of a model on a text file.
 *
 *   gq ppl --model DIR --text FILE [--seqlen 2048] [--max-windows N]
 *          [--device cpu|cuda[:N]|auto] [--threads N]
 *
 * One option table drives parsing, defaults and --help. Progress goes to
 * stderr; the result is one grep-friendly line on stdout:
 *   ppl = 11.1871 (155 windows of 2048 tokens, 317440 predictions)
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "gq/ppl.h"

int gq_cmd_ppl(int argc, char **argv);

typedef enum { OPT_STR, OPT_INT, OPT_FLAG } opt_type;

typedef struct {
    const char *name; /* long name, without "--" */
    opt_type type;
    const char *def;  /* default (NULL: required for OPT_STR, off for OPT_FLAG) */
    int lo, hi;       /* OPT_INT range */
    const char *help;
} opt_def;

enum { O_MODEL, O_TEXT, O_SEQLEN, O_MAXWIN, O_DEVICE, O_THREADS, O_HELP, O_COUNT };

static const opt_def opts[O_COUNT] = {
    [O_MODEL] = {"model", OPT_STR, NULL, 0, 0, "model directory: config.json, *.safetensors, tokenizer.json"},
    [O_TEXT] = {"text", OPT_STR, NULL, 0, 0, "UTF-8 text file to evaluate"},
    [O_SEQLEN] = {"seqlen", OPT_INT, "2048", 2, 1 << 20, "window length in tokens"},
    [O_MAXWIN] = {"max-windows", OPT_INT, "0", 0, INT_MAX, "evaluate at most N windows (0 = all)"},
    [O_DEVICE] = {"device", OPT_STR, "auto", 0, 0, "cpu, cuda, cuda:N, or auto (CUDA if present)"},
    [O_THREADS] = {"threads", OPT_INT, "0", 0, 4096, "CPU threads (0 = all cores)"},
    [O_HELP] = {"help", OPT_FLAG, NULL, 0, 0, "print this help"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: gq ppl --model DIR --text FILE [options]\n\n"
               "Perplexity of a model on a text: <s> + tokens, consecutive windows of --seqlen tokens\n"
               "(the tail is dropped), exp(mean over windows of the mean next-token NLL).\n\noptions:\n");
    for (int i = 0; i < O_COUNT; i++) {
        char lhs[48];
        snprintf(lhs, sizeof lhs, "--%s%s", opts[i].name,
                 opts[i].type == OPT_INT ? " N" : opts[i].type == OPT_STR ? " VALUE" : "");
        fprintf(f, "  %-22s %s", lhs, opts[i].help);
        if (opts[i].def) fprintf(f, " (default %s)", opts[i].def);
        else if (opts[i].type == OPT_STR) fprintf(f, " (required)");
        fprintf(f, "\n");
    }
}

/* Parse argv[1..] into val[] (pointers into argv or defaults). */
static int parse(int argc, char **argv, const char **val) {
    for (int i = 0; i < O_COUNT; i++) val[i] = opts[i].def;
    for (int a = 1; a < argc; a++) {
        const char *s = argv[a];
        if (strncmp(s, "--", 2) != 0)
            return gq_err(GQ_ERR_ARG, "ppl: unexpected argument '%s' (options start with --; see gq ppl --help)", s);
        s += 2;
        const char *eq = strchr(s, '=');
        size_t n = eq ? (size_t)(eq - s) : strlen(s);
        int k = -1;
        for (int i = 0; i < O_COUNT; i++)
            if (strlen(opts[i].name) == n && !strncmp(opts[i].name, s, n)) k = i;
        if (k < 0) return gq_err(GQ_ERR_ARG, "ppl: unknown option '%s' (see gq ppl --help)", argv[a]);
        if (opts[k].type == OPT_FLAG) {
            if (eq) return gq_err(GQ_ERR_ARG, "ppl: option --%s takes no value", opts[k].name);
            val[k] = "1";
            continue;
        }
        if (eq) val[k] = eq + 1;
        else if (a + 1 < argc) val[k] = argv[++a];
        else return gq_err(GQ_ERR_ARG, "ppl: option --%s needs a value", opts[k].name);
    }
    return GQ_OK;
}

static int get_int(const char **val, int k, int *out) {
    char *end;
    errno = 0;
    long v = strtol(val[k], &end, 10);
    if (!*val[k] || *end || errno || v < opts[k].lo || v > opts[k].hi)
        return gq_err(GQ_ERR_ARG, "ppl: --%s '%s': expected an integer in [%d, %d]", opts[k].name, val[k], opts[k].lo,
                      opts[k].hi);
    *out = (int)v;
    return GQ_OK;
}

int gq_cmd_ppl(int argc, char **argv) {
    const char *val[O_COUNT];
    int rc = parse(argc, argv, val);
    if (rc != GQ_OK) return rc;
    if (val[O_HELP]) {
        usage(stdout);
        return GQ_OK;
    }
    for (int i = 0; i < O_COUNT; i++)
        if (opts[i].type == OPT_STR && !val[i])
            return gq_err(GQ_ERR_ARG, "ppl: --%s is required (see gq ppl --help)", opts[i].name);
    gq_ppl_opts po;
    gq_ppl_opts_default(&po);
    int threads = 0;
    if ((rc = get_int(val, O_SEQLEN, &po.seqlen)) || (rc = get_int(val, O_MAXWIN, &po.max_windows)) ||
        (rc = get_int(val, O_THREADS, &threads)))
        return rc;
    if (threads > 0) gq_set_threads(threads);

    fprintf(stderr, "gq ppl settings:\n");
    for (int i = 0; i < O_COUNT; i++) {
        if (opts[i].type == OPT_FLAG) continue;
        fprintf(stderr, "%-12s = %s", opts[i].name, val[i]);
        if (i == O_THREADS && threads == 0) fprintf(stderr, " (all cores: %d)", gq_get_threads());
        fprintf(stderr, "\n");
    }

    char *text = NULL;
    size_t len = 0;
    gq_model m;
    gq_backend *be = NULL;
    gq_tokenizer *tok = NULL;
    memset(&m, 0, sizeof m);
    if ((rc = gq_read_file(val[O_TEXT], &text, &len)) != GQ_OK) return rc;
    if ((rc = gq_model_open(&m, val[O_MODEL])) != GQ_OK) goto done;
    char summary[512];
    gq_config_summary(&m.cfg, summary, sizeof summary);
    gq_info("model: %s", summary);
    if ((rc = gq_tok_load(&tok, val[O_MODEL])) != GQ_OK) goto done;
    if ((rc = gq_backend_init(&be, val[O_DEVICE])) != GQ_OK) goto done;
    gq_ppl_result r;
    rc = gq_ppl_text(&m, be, tok, text, len, val[O_TEXT], &po, &r);
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
