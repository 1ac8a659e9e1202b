/*
 * bench_generate.c -- generation speed of the gq_gen engine (gq/generate.h):
 * prefill and decode tokens/s, separately, for each model and batch size,
 * with the device memory and the memory-bandwidth floor of a decode step.
 *
 *   make bench && ./build/bench/bench_generate [--models DIR,DIR] [--batches 1,16,64]
 *        [--prompt 128] [--new 64] [--device cpu|cuda|auto] [--threads N] [--reps 3]
 *        [--int4-kernel on|off] [--chunk 512] [--warmup full|short] [--prefill auto|chunked|decode]
 *        [--check N] [--bw-mib 1024] [--labels NAME,NAME] [--json FILE]
 *
 * For a batch of B: B prompts of `prompt` tokens (consecutive windows of
 * <s> + tests/data/text/python-stdlib-eval.txt, tokenized with the model's
 * tokenizer) are prefilled one by one into their slots (prefill tokens/s =
 * B * prompt / time), then `new` decode steps run for all B slots together,
 * each feeding back the greedy token (decode tokens/s = B * new / time; the
 * per-step time is also shown). Logits go to the host and are sampled there
 * in both phases, as in `gq calib`. Times are medians of `reps` runs after a
 * warm-up (full: one whole run; short: one prompt and 4 decode steps of the
 * batch, enough to warm every kernel and cuBLAS heuristic); cpu% is process
 * CPU time over wall time (2 busy cores = 200%), which shows when other
 * processes share the machine.
 *
 * Each (model, batch) row runs on a backend of its own, so that its peak
 * device memory (gq_be_peak_bytes: every allocation gq makes, weights, KV
 * caches for B x (prompt + new + 1) tokens, scratch, staging; not the CUDA
 * context) is the row's alone.
 *
 * The floor of a decode step: the bytes a step must read from device memory
 * over the card's measured copy bandwidth. Bytes = the weights as they are
 * resident (gq_be_weight_bytes of layer 0's weights times the layers, plus the
 * final norm and lm_head: fp16, or the int4 layout with its scales when the
 * linears stay packed) + B x the KV cache a step reads per sequence, averaged
 * over the run (layers x 2 x kv_heads x head_dim x activation bytes x (prompt
 * + (new + 1) / 2) keys). Bandwidth = a device-to-device gq_be_copy_act of
 * --bw-mib MiB, median of 5 after one warm-up, counting 2x the bytes moved
 * (read + write). "x floor" = measured ms/step / floor ms/step; for batch 1
 * the bytes per step are the bytes per decoded token. "ms/step start / end":
 * the mean of the first and of the last 32 steps (or a quarter of them), at
 * contexts of about prompt and prompt + new tokens: their difference is the
 * cost of attending over `new` more cached tokens.
 *
 * --prefill: chunked puts each prompt in with gq_gen_prefill (chunks of --chunk tokens); decode puts
 * the B prompts in by `prompt` batched decode steps (token i of every prompt in step i: the decode
 * kernels at growing context); auto (default) is chunked, and decode where gq_gen_prefill fails
 * (a "note" line and the JSON's prefill_failed say why): the decode figures stay measurable when
 * only the prefill path is broken, e.g. for int4-resident weights, whose q/k/v rows the prefill's
 * wrows() cannot take apart. The prefill tok/s of such a row is that of decode steps.
 *
 * --check N: after the timed runs, the logits of the last of N prompt tokens
 * computed twice in slot 0: one gq_gen_prefill of the N tokens (the chunked
 * prefill path), and N single-token decode steps (the decode path); prints
 * their largest difference relative to the largest logit and whether the top-1
 * agrees. The two use different kernels, so fp16 rounding differs, but a
 * prefill that fills the KV cache wrongly shows as a difference of the order
 * of the logits themselves.
 *
 * --json FILE appends one JSON object per row (every figure of the table and
 * the inputs of the floor) for bench/decode_table.sh.
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
    double step_start, step_end; /* mean seconds of the first / last steps */
} times;

/* B prompts into slots 0..B-1: one gq_gen_prefill each, or (by_decode) plen decode steps of all B
 * slots, token i of every prompt in step i; lg [B][V] gets the last position's logits. */
static int fill_prompts(gq_gen *g, const int32_t *ids, int B, int plen, int by_decode, int *slots, int32_t *tok,
                        float *lg) {
    int V = gq_gen_vocab(g), rc = GQ_OK;
    gq_gen_sampling sp;
    gq_gen_sampling_default(&sp);
    for (int b = 0; b < B; b++) gq_gen_slot_reset(g, b), slots[b] = b;
    if (!by_decode) {
        for (int b = 0; b < B && !rc; b++) {
            rc = gq_gen_prefill(g, b, ids + (size_t)b * plen, plen, lg);
            tok[b] = gq_gen_sample(lg, V, &sp, NULL);
        }
        return rc;
    }
    for (int i = 0; i < plen && !rc; i++) {
        for (int b = 0; b < B; b++) tok[b] = ids[(size_t)b * plen + i];
        rc = gq_gen_decode(g, slots, tok, B, i == plen - 1 ? lg : NULL);
    }
    for (int b = 0; b < B && !rc; b++) tok[b] = gq_gen_sample(lg + (size_t)b * V, V, &sp, NULL);
    return rc;
}

/* One run: prefill B prompts, then `nnew` decode steps for all of them. step[nnew]: scratch. */
static int run_once(gq_gen *g, const int32_t *ids, int B, int plen, int nnew, int by_decode, times *t,
                    double *step) {
    int V = gq_gen_vocab(g), rc = GQ_OK;
    float *lg = gq_malloc((size_t)B * V * sizeof *lg);
    int *slots = gq_malloc((size_t)B * sizeof *slots);
    int32_t *tok = gq_malloc((size_t)B * sizeof *tok);
    gq_gen_sampling sp;
    gq_gen_sampling_default(&sp);
    double w0 = gq_now(), c0 = cpu_now();
    rc = fill_prompts(g, ids, B, plen, by_decode, slots, tok, lg);
    t->prefill = gq_now() - w0;
    t->cpu_prefill = cpu_now() - c0;
    w0 = gq_now();
    c0 = cpu_now();
    for (int s = 0; s < nnew && !rc; s++) {
        double s0 = gq_now();
        rc = gq_gen_decode(g, slots, tok, B, lg); /* the logits download waits for the step */
        for (int b = 0; b < B; b++) tok[b] = gq_gen_sample(lg + (size_t)b * V, V, &sp, NULL);
        step[s] = gq_now() - s0;
    }
    t->decode = gq_now() - w0;
    t->cpu_decode = cpu_now() - c0;
    int k = nnew / 4 < 1 ? 1 : nnew / 4 > 32 ? 32 : nnew / 4;
    t->step_start = t->step_end = 0;
    for (int i = 0; i < k && !rc; i++) {
        t->step_start += step[i] / k;
        t->step_end += step[nnew - 1 - i] / k;
    }
    free(lg);
    free(slots);
    free(tok);
    return rc;
}

/* Short warm-up: one prompt into slot 0, then `steps` decode steps of all B slots (the others
 * start empty): every prefill chunk shape and the batch-B decode shapes run once. */
static int warm_up(gq_gen *g, const int32_t *ids, int B, int plen, int steps, int by_decode) {
    int V = gq_gen_vocab(g), rc;
    float *lg = gq_malloc((size_t)B * V * sizeof *lg);
    int *slots = gq_malloc((size_t)B * sizeof *slots);
    int32_t *tok = gq_malloc((size_t)B * sizeof *tok);
    for (int b = 0; b < B; b++) gq_gen_slot_reset(g, b), slots[b] = b, tok[b] = ids[b];
    rc = by_decode ? GQ_OK : gq_gen_prefill(g, 0, ids, plen, lg);
    for (int s = 0; s < steps && !rc; s++) rc = gq_gen_decode(g, slots, tok, B, lg);
    free(lg);
    free(slots);
    free(tok);
    return rc;
}

/* --check: last-token logits of ids[0..n) by one prefill and by n decode steps (slot 0). */
static int check_paths(gq_gen *g, const int32_t *ids, int n, double *diff, double *mx, int *same) {
    int V = gq_gen_vocab(g), slot = 0, rc;
    float *la = gq_malloc((size_t)V * sizeof *la), *lb = gq_malloc((size_t)V * sizeof *lb);
    gq_gen_slot_reset(g, 0);
    rc = gq_gen_prefill(g, 0, ids, n, la);
    gq_gen_slot_reset(g, 0);
    for (int i = 0; i < n && !rc; i++) rc = gq_gen_decode(g, &slot, ids + i, 1, i == n - 1 ? lb : NULL);
    *diff = *mx = 0;
    int ia = 0, ib = 0;
    for (int v = 0; v < V && !rc; v++) {
        double d = la[v] > lb[v] ? la[v] - lb[v] : lb[v] - la[v], a = la[v] < 0 ? -la[v] : la[v];
        if (!(d <= *diff)) *diff = d; /* NaN sticks */
        if (a > *mx) *mx = a;
        if (la[v] > la[ia]) ia = v;
        if (lb[v] > lb[ib]) ib = v;
    }
    *same = ia == ib;
    free(la);
    free(lb);
    return rc;
}

/* Device copy bandwidth (bytes read + written per second) of `mib` MiB, median of 5; 0 on failure. */
static double copy_bandwidth(gq_backend *be, int mib) {
    if (mib <= 0) return 0;
    size_t bytes = (size_t)mib << 20, n = bytes / gq_be_act_bytes(be, 1);
    void *a = gq_be_alloc(be, bytes), *b = a ? gq_be_alloc(be, bytes) : NULL;
    double t[6], bw = 0;
    if (a && b && !gq_be_memset0(be, a, bytes) && !gq_be_memset0(be, b, bytes) && !gq_be_sync(be)) {
        int ok = 1;
        for (int r = 0; r < 6 && ok; r++) {
            double t0 = gq_now();
            ok = !gq_be_copy_act(be, r & 1 ? a : b, r & 1 ? b : a, n) && !gq_be_sync(be);
            t[r] = gq_now() - t0;
        }
        if (ok) {
            qsort(t + 1, 5, sizeof *t, cmp_d); /* t[0]: warm-up */
            bw = 2.0 * (double)bytes / t[3];
        }
    }
    if (!bw) fprintf(stderr, "bench_generate: copy bandwidth not measured: %s\n", gq_errmsg());
    gq_be_release(be, a);
    gq_be_release(be, b);
    return bw;
}

static size_t wbytes(const gq_bweight *w) {
    return w->data || w->q4 ? gq_be_weight_bytes(w) : 0;
}

/* Bytes of layer 0's weights and of the head as the backend holds them (loaded, measured, freed). */
static int resident_bytes(gq_backend *be, const gq_model *m, size_t *layer, size_t *head) {
    gq_blayer bl;
    gq_bhead h;
    *layer = *head = 0;
    int rc = gq_blayer_load(be, m, 0, &bl);
    if (rc) return rc;
    for (int i = 0; i < GQ_GRP_COUNT; i++) *layer += wbytes(&bl.w[i]) + wbytes(&bl.b[i]);
    for (int i = 0; i < GQ_NORM_SLOTS; i++) *layer += wbytes(&bl.norm[i]) + wbytes(&bl.norm_b[i]);
    *layer += wbytes(&bl.q_norm) + wbytes(&bl.k_norm) + wbytes(&bl.router);
    for (int e = 0; e < bl.n_experts; e++) *layer += wbytes(&bl.ex_in[e]) + wbytes(&bl.ex_out[e]);
    gq_blayer_free(be, &bl);
    if ((rc = gq_bhead_load(be, m, &h))) return rc;
    *head = wbytes(&h.norm) + wbytes(&h.norm_b) + wbytes(&h.lm);
    gq_bhead_free(be, &h);
    return GQ_OK;
}

/* split "a,b,c" into at most max strings (modifies s) */
static int split(char *s, char **out, int max) {
    int n = 0;
    for (char *p = strtok(s, ","); p && n < max; p = strtok(NULL, ",")) out[n++] = p;
    return n;
}

/* s as a JSON string (quotes and backslashes escaped, control characters dropped) */
static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        if ((unsigned char)*s >= 0x20) fputc(*s, f);
    }
    fputc('"', f);
}

int main(int argc, char **argv) {
    const char *models_s = "tests/data/pycoder-5m,/work/shared/data/models/pycoder-30m", *batches_s = "1,16,64";
    const char *device = "cpu", *text = "tests/data/text/python-stdlib-eval.txt", *int4 = "on", *warm = "full";
    const char *labels_s = "", *json_path = "", *prefill = "auto";
    int plen = 128, nnew = 64, threads = 0, reps = 3, chunk = 512, check = 0, bw_mib = 1024;
    gq_opt opts[] = {
        {"models", GQ_OPT_STR, &models_s, "comma-separated model directories", NULL, 0, 0},
        {"batches", GQ_OPT_STR, &batches_s, "comma-separated batch sizes", NULL, 0, 0},
        {"prompt", GQ_OPT_INT, &plen, "prompt tokens per sequence", NULL, 0, 0},
        {"new", GQ_OPT_INT, &nnew, "decode steps", NULL, 0, 0},
        {"device", GQ_OPT_STR, &device, "cpu, cuda or auto", NULL, 0, 0},
        {"threads", GQ_OPT_INT, &threads, "CPU threads (0: all cores)", NULL, 0, 0},
        {"reps", GQ_OPT_INT, &reps, "timed runs per configuration (median)", NULL, 0, 0},
        {"text", GQ_OPT_STR, &text, "text the prompts are cut from", NULL, 0, 0},
        {"int4-kernel", GQ_OPT_STR, &int4, "4-bit linears stay packed on the GPU (off: dequantized to fp16 at load)",
         "on|off", 0, 0},
        {"chunk", GQ_OPT_INT, &chunk, "prompt tokens per prefill forward (gq_gen_opts.prefill_chunk)", NULL, 0, 0},
        {"warmup", GQ_OPT_STR, &warm, "full: one whole untimed run; short: one prompt and 4 decode steps", "full|short",
         0, 0},
        {"prefill", GQ_OPT_STR, &prefill,
         "chunked: gq_gen_prefill; decode: prompts by batched decode steps; auto: chunked, decode steps if it fails",
         "chunked|decode|auto", 0, 0},
        {"check", GQ_OPT_INT, &check, "compare prefill and decode logits over this many prompt tokens (0: off)", NULL,
         0, 0},
        {"bw-mib", GQ_OPT_INT, &bw_mib, "MiB of the device copy that measures the bandwidth (0: skip the floor)", NULL,
         0, 0},
        {"labels", GQ_OPT_STR, &labels_s, "comma-separated names of the models in the output (default: directory names)",
         NULL, 0, 1},
        {"json", GQ_OPT_STR, &json_path, "append one JSON object per row to this file", NULL, 0, 1},
    };
    int nopt = (int)(sizeof opts / sizeof *opts);
    int rc = gq_opts_parse("bench_generate", "[options]", opts, nopt, argc - 1, argv + 1, NULL, 0, NULL);
    if (rc == 1) return 0;
    if (rc || plen < 1 || nnew < 1 || reps < 1 || reps > 32 || chunk < 1 || check < 0 || bw_mib < 0) {
        fprintf(stderr, "bench_generate: %s\n",
                rc ? gq_errmsg() : "--prompt, --new, --chunk >= 1, --reps 1..32, --check, --bw-mib >= 0");
        return 2;
    }
    gq_set_threads(threads);
    gq_log_set_level(GQ_LOG_WARN);
    char *ms = gq_strdup(models_s), *bs = gq_strdup(batches_s), *ls = gq_strdup(labels_s), *models[8], *bstr[8],
         *labels[8];
    int nm = split(ms, models, 8), nb = split(bs, bstr, 8), nl = split(ls, labels, 8);
    gq_backend *be;
    if (gq_backend_init(&be, device)) { /* the name and the bandwidth; every row gets a backend of its own */
        fprintf(stderr, "bench_generate: %s\n", gq_errmsg());
        return 1;
    }
    char bname[256];
    snprintf(bname, sizeof bname, "%s", gq_backend_name(be));
    double bw = copy_bandwidth(be, bw_mib);
    gq_backend_free(be);
    char *txt;
    size_t tlen;
    if (gq_read_file(text, &txt, &tlen)) {
        fprintf(stderr, "bench_generate: %s\n", gq_errmsg());
        return 1;
    }
    FILE *jf = NULL;
    if (*json_path && !(jf = fopen(json_path, "a"))) {
        fprintf(stderr, "bench_generate: cannot open %s for appending\n", json_path);
        return 1;
    }
    printf("backend: %s; prompt %d tokens, %d decode steps, median of %d runs (%s warm-up), prefill chunk %d\n",
           bname, plen, nnew, reps, warm, chunk);
    if (bw > 0)
        printf("copy bandwidth: %.0f GB/s (device copy of %d MiB, median of 5, read + write counted)\n", bw / 1e9,
               bw_mib);
    printf("\n| model | batch | prefill tok/s | decode tok/s | decode ms/step | cpu%% prefill | cpu%% decode | weights | "
           "peak GiB | GB/step | floor ms/step | x floor | ms/step start | ms/step end |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
    fflush(stdout);
    int failures = 0;
    for (int mi = 0; mi < nm; mi++) {
        gq_model m;
        gq_tokenizer *tok;
        if (gq_model_open(&m, models[mi]) || gq_tok_load(&tok, models[mi])) {
            fprintf(stderr, "bench_generate: %s: %s (skipped)\n", models[mi], gq_errmsg());
            continue;
        }
        m.q4_resident = strcmp(int4, "off") != 0;
        gq_ids ids = {0};
        gq_tok_encode(tok, txt, tlen, 1, &ids);
        const char *name = mi < nl                 ? labels[mi]
                           : strrchr(models[mi], '/') ? strrchr(models[mi], '/') + 1
                                                      : models[mi];
        const gq_config *c = &m.cfg;
        for (int bi = 0; bi < nb; bi++) {
            int B = atoi(bstr[bi]);
            if (B < 1 || (size_t)B * plen > ids.n) {
                fprintf(stderr, "bench_generate: batch %s: not enough text for %d prompts\n", bstr[bi], B);
                continue;
            }
            if (gq_backend_init(&be, device)) {
                fprintf(stderr, "bench_generate: %s\n", gq_errmsg());
                failures++;
                continue;
            }
            /* the linears as the device holds them: fp16 (F32 on the CPU), int4 packed, or int4 dequantized */
            char wkind[32];
            if (!m.quantized)
                snprintf(wkind, sizeof wkind, "%s", gq_dtype_name(gq_backend_act_dtype(be)));
            else if (m.q4_resident && c->quant.bits == 4 && gq_be_q4_supported(be))
                snprintf(wkind, sizeof wkind, "int4");
            else
                snprintf(wkind, sizeof wkind, "int%d as %s", c->quant.bits, gq_dtype_name(gq_backend_act_dtype(be)));
            size_t lb = 0, hb = 0;
            rc = resident_bytes(be, &m, &lb, &hb);
            gq_gen_opts go;
            gq_gen_opts_default(&go);
            go.max_batch = B;
            go.max_len = plen + nnew + 1;
            go.prefill_chunk = chunk;
            gq_gen *g = NULL;
            double ti = gq_now();
            if (rc || (rc = gq_gen_init(&g, &m, be, &go))) {
                fprintf(stderr, "bench_generate: %s, batch %d: %s\n", name, B, gq_errmsg());
                gq_backend_free(be);
                failures++;
                continue;
            }
            ti = gq_now() - ti;
            times t[33];
            double pw[32], dw[32];
            double *step = gq_malloc((size_t)nnew * sizeof *step);
            int full = strcmp(warm, "short") != 0, by_decode = !strcmp(prefill, "decode");
            char pfail[400] = "";
            rc = full ? run_once(g, ids.v, B, plen, nnew, by_decode, &t[32], step)
                      : warm_up(g, ids.v, B, plen, nnew < 4 ? nnew : 4, by_decode);
            if (rc && !by_decode && !strcmp(prefill, "auto")) {
                snprintf(pfail, sizeof pfail, "%s", gq_errmsg());
                printf("note %s batch %d: gq_gen_prefill failed (%s); the prompts go in by decode steps instead, "
                       "prefill tok/s below is theirs\n",
                       name, B, pfail);
                by_decode = 1;
                rc = full ? run_once(g, ids.v, B, plen, nnew, by_decode, &t[32], step)
                          : warm_up(g, ids.v, B, plen, nnew < 4 ? nnew : 4, by_decode);
            }
            for (int r = 0; r < reps && !rc; r++) {
                rc = run_once(g, ids.v, B, plen, nnew, by_decode, &t[r], step);
                pw[r] = t[r].prefill;
                dw[r] = t[r].decode;
            }
            double cdiff = -1, cmax = 0;
            int csame = 0, cn = pfail[0] ? 0 : check < plen ? check : plen;
            if (!rc && cn > 0) {
                if (cn >= go.max_len) cn = go.max_len - 1;
                rc = check_paths(g, ids.v, cn, &cdiff, &cmax, &csame);
            }
            free(step);
            size_t peak = gq_be_peak_bytes(be);
            if (rc) {
                fprintf(stderr, "bench_generate: %s, batch %d: %s\n", name, B, gq_errmsg());
                gq_gen_free(g);
                gq_backend_free(be);
                failures++;
                continue;
            }
            qsort(pw, (size_t)reps, sizeof *pw, cmp_d);
            qsort(dw, (size_t)reps, sizeof *dw, cmp_d);
            double p = pw[reps / 2], d = dw[reps / 2], cp = 0, cd = 0, s0 = 0, s1 = 0;
            for (int r = 0; r < reps; r++) {
                cp += t[r].cpu_prefill / t[r].prefill;
                cd += t[r].cpu_decode / t[r].decode;
                s0 += t[r].step_start / reps;
                s1 += t[r].step_end / reps;
            }
            /* the floor: weights as resident + B x the mean KV cache read per sequence and step */
            double wb = (double)lb * c->n_layers + (double)hb;
            double keys = plen + (nnew + 1) / 2.0;
            double kv = (double)c->n_layers * 2.0 * c->n_kv_heads * c->head_dim * (double)gq_be_act_bytes(be, 1) * keys;
            double bytes = wb + B * kv, floor_s = bw > 0 ? bytes / bw : 0, ms = 1e3 * d / nnew;
            char xf[32] = "-", fl[32] = "-";
            if (floor_s > 0) {
                snprintf(fl, sizeof fl, "%.2f", 1e3 * floor_s);
                snprintf(xf, sizeof xf, "%.2f", ms / (1e3 * floor_s));
            }
            printf("| %s | %d | %.0f | %.0f | %.2f | %.0f | %.0f | %s | %.2f | %.2f | %s | %s | %.2f | %.2f |\n", name, B,
                   (double)B * plen / p, (double)B * nnew / d, ms, 100 * cp / reps, 100 * cd / reps, wkind,
                   (double)peak / (1u << 30), bytes / 1e9, fl, xf, 1e3 * s0, 1e3 * s1);
            const gq_gen_stats *gs = gq_gen_get_stats(g);
            if (gs->decode_replays > 0)
                printf("replayed %s batch %d: %lld of %lld decode steps from recordings (GQ_CUDA_GRAPH=1)\n", name, B,
                       (long long)gs->decode_replays, (long long)gs->decode_steps);
            if (cn > 0)
                printf("check %s batch %d: logits of token %d by prefill vs %d decode steps: max |diff| %.4g, max "
                       "|logit| %.4g (%.2g relative), top-1 %s\n",
                       name, B, cn, cn, cdiff, cmax, cmax > 0 ? cdiff / cmax : 0.0, csame ? "same" : "DIFFERENT");
            fflush(stdout);
            if (jf) {
                fprintf(jf, "{\"label\": ");
                json_str(jf, name);
                fprintf(jf, ", \"model\": ");
                json_str(jf, models[mi]);
                fprintf(jf, ", \"backend\": ");
                json_str(jf, bname);
                fprintf(jf, ", \"weights\": ");
                json_str(jf, wkind);
                fprintf(jf,
                        ", \"int4_kernel\": \"%s\", \"layers\": %d, \"hidden\": %d, \"intermediate\": %d, "
                        "\"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, \"vocab\": %d, \"batch\": %d, "
                        "\"prompt\": %d, \"new\": %d, \"chunk\": %d, \"reps\": %d, \"warmup\": \"%s\", "
                        "\"init_s\": %.3f, \"prefill_s\": %.6f, \"prefill_tok_s\": %.1f, \"decode_s\": %.6f, "
                        "\"decode_tok_s\": %.2f, \"decode_ms_step\": %.4f, \"step_ms_start\": %.4f, "
                        "\"step_ms_end\": %.4f, \"cpu_pct_prefill\": %.0f, \"cpu_pct_decode\": %.0f, "
                        "\"peak_bytes\": %zu, \"layer_bytes\": %zu, \"head_bytes\": %zu, \"weight_bytes\": %.0f, "
                        "\"kv_bytes_seq_step\": %.0f, \"bytes_step\": %.0f, \"copy_bytes_s\": %.0f, "
                        "\"floor_ms_step\": %.4f, \"x_floor\": %.4f, \"prefill_mode\": \"%s\"",
                        int4, c->n_layers, c->hidden, c->intermediate, c->n_heads, c->n_kv_heads, c->head_dim,
                        c->vocab, B, plen, nnew, chunk, reps, warm, ti, p, (double)B * plen / p, d,
                        (double)B * nnew / d, ms, 1e3 * s0, 1e3 * s1, 100 * cp / reps, 100 * cd / reps, peak, lb, hb,
                        wb, kv, bytes, bw, 1e3 * floor_s, floor_s > 0 ? ms / (1e3 * floor_s) : 0.0,
                        by_decode ? "decode steps" : "chunked");
                if (pfail[0]) {
                    fprintf(jf, ", \"prefill_failed\": ");
                    json_str(jf, pfail);
                }
                if (cn > 0)
                    fprintf(jf, ", \"check_tokens\": %d, \"check_max_diff\": %.6g, \"check_max_logit\": %.6g, "
                            "\"check_top1_same\": %s", cn, cdiff == cdiff ? cdiff : -1.0, cmax,
                            csame ? "true" : "false"); /* NaN: -1 */
                fprintf(jf, "}\n");
                fflush(jf);
            }
            gq_gen_free(g);
            gq_backend_free(be);
        }
        gq_ids_free(&ids);
        gq_tok_free(tok);
        gq_model_close(&m);
    }
    if (jf) fclose(jf);
    free(txt);
    free(ms);
    free(bs);
    free(ls);
    return failures ? 1 : 0;
}
