/*
 * bench_tokenizer.c -- encode a text N times with gq's tokenizer (one
 * thread) and report the median time, MB/s and tokens/s.
 *
 *   build/bench/bench_tokenizer [--model DIR] [--text FILE] [--runs N] [--special]
 *
 * Defaults: tests/data/pycoder-5m, tests/data/text/python-stdlib-eval.txt,
 * 10 runs, no special tokens. Run from the repository root. Load time is
 * excluded; each run encodes the whole text with a fresh word cache (as
 * every gq_tok_encode call does). bench/run_tokenizer.sh runs it beside the
 * Hugging Face equivalent (bench/bench_tokenizer_hf.py).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gq/tokenizer.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *model = "tests/data/pycoder-5m", *path = "tests/data/text/python-stdlib-eval.txt";
    int runs = 10, special = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--text") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--special")) special = 1;
        else {
            fprintf(stderr, "usage: %s [--model DIR] [--text FILE] [--runs N] [--special]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1) runs = 1;
    gq_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    double t0 = gq_now();
    if (gq_tok_load(&tok, model) || gq_read_file(path, &text, &len)) {
        fprintf(stderr, "bench_tokenizer: %s\n", gq_errmsg());
        return 1;
    }
    double t_load = gq_now() - t0;
    double *t = malloc((size_t)runs * sizeof *t);
    gq_ids ids = {0};
    for (int r = 0; r < runs; r++) {
        ids.n = 0;
        t0 = gq_now();
        if (gq_tok_encode(tok, text, len, special, &ids)) {
            fprintf(stderr, "bench_tokenizer: %s\n", gq_errmsg());
            return 1;
        }
        t[r] = gq_now() - t0;
    }
    qsort(t, (size_t)runs, sizeof *t, cmp_double);
    double med = runs % 2 ? t[runs / 2] : 0.5 * (t[runs / 2 - 1] + t[runs / 2]);
    printf("%-7s %-28s %8zu bytes %7zu tokens  median %.4f s (min %.4f)  %6.2f MB/s  %6.2f Mtok/s  runs %d  load %.3f s\n",
           "gq", model, len, ids.n, med, t[0], len / med / 1e6, ids.n / med / 1e6, runs, t_load);
    free(t);
    gq_ids_free(&ids);
    free(text);
    gq_tok_free(tok);
    return 0;
}
