/*
 * bench_generate.c -- generation speed of the gq_gen engine (gq/generate.h):
 * prefill and decode tokens/s, separately, for each model and batch size.
 *
 *   make bench && ./build/bench/bench_generate [--models DIR,DIR] [--batches 1,16,64]
 *        [--prompt 128] [--new 64] [--device cpu|cuda|auto] [--threads N] [--reps 3]
 *
 * For a batch of B: B prompts of `prompt` tokens (consecutive windows of
 * <s> + tests/data/text/python-stdlib-eval.txt, tokenized with the model's
 * tokenizer) are prefilled one by one into their slots (prefill tokens/s =
 * B * prompt / time), then `new` decode steps run for all B slots together,
 * each feeding back the greedy token (decode tokens/s = B * new / time; the
 * per-step time is also shown). Logits go to the host and are sampled there
 * in both phases, as in `gq calib`. Times are medians of `reps` runs after a
 * warm-up; cpu% is process CPU time over wall time (2 busy cores = 200%),
 * which shows when other processes share the machine.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gq/cli.h"
#include "gq/generate.h"

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double prefill, decode, cpu_prefill, cpu_decode;
} times;

/* One run: prefill B prompts, then `nnew` decode steps for all of them. */
static int run_once(gq_gen *g, const int32_t *ids, int B, int plen, int nnew, times *t) {
    int V = gq_gen_vocab(g), rc = GQ_OK;
    float *lg = gq_malloc((size_t)B * V * sizeof *lg);
    int *slots = gq_malloc((size_t)B * sizeof *slots);
    int32_t *tok = gq_malloc((size_t)B * sizeof *tok);
    gq_gen_sampling sp;
    gq_gen_sampling_default(&sp);
    double w0 = gq_now(), c0 = cpu_now();
    for (int b = 0; b < B && !rc; b++) {
        gq_gen_slot_reset(g, b);
        slots[b] = b;
        rc = gq_gen_prefill(g, b, ids + (size_t)b * plen, plen, lg);
        tok[b] = gq_gen_sample(lg, V, &sp, NULL);
    }
    t->prefill = gq_now() - w0;
    t->cpu_prefill = cpu_now() - c0;
    w0 = gq_now();
    c0 = cpu_now();
    for (int s = 0; s < nnew && !rc; s++) {
        rc = gq_gen_decode(g, slots, tok, B, lg);
        for (int b = 0; b < B; b++) tok[b] = gq_gen_sample(lg + (size_t)b * V, V, &sp, NULL);
    }
    t->decode = gq_now() - w0;
    t->cpu_decode = cpu_now() - c0;
    free(lg);
    free(slots);
    free(tok);
    return rc;
}

/* split "a,b,c" into at most max strings (modifies s) */
static int split(char *s, char **out, int max) {
    int n = 0;
    for (char *p = strtok(s, ","); p && n < max; p = strtok(NULL, ",")) out[n++] = p;
    return n;
}

int main(int argc, char **argv) {
    const char *models_s = "tests/data/pycoder-5m,/work/shared/data/models/pycoder-30m", *batches_s = "1,16,64";
    const char *device = "cpu", *text = "tests/data/text/python-stdlib-eval.txt";
    int plen = 128, nnew = 64, threads = 0, reps = 3;
    gq_opt opts[] = {
        {"models", GQ_OPT_STR, &models_s, "comma-separated model directories", NULL, 0, 0},
        {"batches", GQ_OPT_STR, &batches_s, "comma-separated batch sizes", NULL, 0, 0},
        {"prompt", GQ_OPT_INT, &plen, "prompt tokens per sequence", NULL, 0, 0},
        {"new", GQ_OPT_INT, &nnew, "decode steps", NULL, 0, 0},
        {"device", GQ_OPT_STR, &device, "cpu, cuda or auto", NULL, 0, 0},
        {"threads", GQ_OPT_INT, &threads, "CPU threads (0: all cores)", NULL, 0, 0},
        {"reps", GQ_OPT_INT, &reps, "timed runs per configuration (median)", NULL, 0, 0},
        {"text", GQ_OPT_STR, &text, "text the prompts are cut from", NULL, 0, 0},
    };
    int nopt = (int)(sizeof opts / sizeof *opts);
    int rc = gq_opts_parse("bench_generate", "[options]", opts, nopt, argc - 1, argv + 1, NULL, 0, NULL);
    if (rc == 1) return 0;
    if (rc || plen < 1 || nnew < 1 || reps < 1 || reps > 32) {
        fprintf(stderr, "bench_generate: %s\n", rc ? gq_errmsg() : "--prompt, --new >= 1, --reps 1..32");
        return 2;
    }
    gq_set_threads(threads);
    gq_log_set_level(GQ_LOG_WARN);
    char *ms = gq_strdup(models_s), *bs = gq_strdup(batches_s), *models[8], *bstr[8];
    int nm = split(ms, models, 8), nb = split(bs, bstr, 8);
    gq_backend *be;
    if (gq_backend_init(&be, device)) {
        fprintf(stderr, "bench_generate: %s\n", gq_errmsg());
        return 1;
    }
    char *txt;
    size_t tlen;
    if (gq_read_file(text, &txt, &tlen)) {
        fprintf(stderr, "bench_generate: %s\n", gq_errmsg());
        return 1;
    }
    printf("backend: %s; prompt %d tokens, %d decode steps, median of %d runs\n\n", gq_backend_name(be), plen, nnew,
           reps);
    printf("| model | batch | prefill tok/s | decode tok/s | decode ms/step | cpu%% prefill | cpu%% decode |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    for (int mi = 0; mi < nm; mi++) {
        gq_model m;
        gq_tokenizer *tok;
        if (gq_model_open(&m, models[mi]) || gq_tok_load(&tok, models[mi])) {
            fprintf(stderr, "bench_generate: %s: %s (skipped)\n", models[mi], gq_errmsg());
            continue;
        }
        gq_ids ids = {0};
        gq_tok_encode(tok, txt, tlen, 1, &ids);
        const char *name = strrchr(models[mi], '/') ? strrchr(models[mi], '/') + 1 : models[mi];
        for (int bi = 0; bi < nb; bi++) {
            int B = atoi(bstr[bi]);
            if (B < 1 || (size_t)B * plen > ids.n) {
                fprintf(stderr, "bench_generate: batch %s: not enough text for %d prompts\n", bstr[bi], B);
                continue;
            }
            gq_gen_opts go;
            gq_gen_opts_default(&go);
            go.max_batch = B;
            go.max_len = plen + nnew + 1;
            gq_gen *g;
            if (gq_gen_init(&g, &m, be, &go)) {
                fprintf(stderr, "bench_generate: %s\n", gq_errmsg());
                continue;
            }
            times t[33];
            double pw[32], dw[32];
            rc = run_once(g, ids.v, B, plen, nnew, &t[32]); /* warm-up */
            for (int r = 0; r < reps && !rc; r++) {
                rc = run_once(g, ids.v, B, plen, nnew, &t[r]);
                pw[r] = t[r].prefill;
                dw[r] = t[r].decode;
            }
            if (rc) {
                fprintf(stderr, "bench_generate: %s\n", gq_errmsg());
                gq_gen_free(g);
                continue;
            }
            qsort(pw, (size_t)reps, sizeof *pw, cmp_d);
            qsort(dw, (size_t)reps, sizeof *dw, cmp_d);
            double p = pw[reps / 2], d = dw[reps / 2], cp = 0, cd = 0;
            for (int r = 0; r < reps; r++) {
                cp += t[r].cpu_prefill / t[r].prefill;
                cd += t[r].cpu_decode / t[r].decode;
            }
            printf("| %s | %d | %.0f | %.0f | %.2f | %.0f | %.0f |\n", name, B, (double)B * plen / p,
                   (double)B * nnew / d, 1e3 * d / nnew, 100 * cp / reps, 100 * cd / reps);
            fflush(stdout);
            gq_gen_free(g);
        }
        gq_ids_free(&ids);
        gq_tok_free(tok);
        gq_model_close(&m);
    }
    free(txt);
    free(ms);
    free(bs);
    gq_backend_free(be);
    return 0;
}
