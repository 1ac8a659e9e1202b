/*
 * test_kld.c -- the KL divergence of `gq ppl --base` (gq_ppl_kld_ids, gq_kld_stats, cmd_ppl.c).
 *
 * (a) gq_kld_stats' conventions on known arrays: the median is the mean of the two middle values
 *     for an even count, the 99th percentile interpolates linearly at 0.99 (n - 1) (numpy's
 *     default, llama.cpp's percentile()).
 * (b) a model against itself (opened twice: two evaluations): every per-token KL exactly 0, top1
 *     exactly 1, both perplexities equal, and equal to gq_ppl_ids' (1e-12 relative: the head runs
 *     in blocks of rows, which only reassociates the NLL sum).
 * (c) the fixture: pycoder-5m as the base, its RTN int4 g128 sym quantization (made here with
 *     gq_quantize_run: no calibration, codes fixed by the weights alone, as test_quantize.c and
 *     check_unpack.py verify), the text's first 4 windows of 256 tokens, against
 *     tests/data/kld/golden.json (tests/ref/gen_kld.py from-dump: float64 numpy log-softmaxes of
 *     the logits gq dumped on the development VM, OpenBLAS Haswell). The logits of another CPU's
 *     OpenBLAS kernel set differ by up to 2.7e-5 (measured: SkylakeX, Cooperlake, Sandybridge,
 *     Nehalem, Prescott, 1 and 2 threads), which moved single per-token KLs by up to 8.5e-6 and
 *     so every order statistic and mean by no more: TOL_KL = 1e-4 absolute on the mean, the
 *     median, the p99 and each window's mean (the golden values are ~0.08 .. 0.41; the reverse
 *     divergence KL(model || base) differs by 7.5e-4 .. 1e-2, a 'lower' p99 by 5e-4). The
 *     smallest top-1/top-2 logit margin of the fixture is 2.1e-4 (base 3.0e-3), 8x the logit
 *     noise: the agreeing predictions (813 of 1020) may differ by TOL_TOP1_PRED = 2. The
 *     perplexities to TOL_PPL_REL = 1e-4 (they moved by < 1e-6). The GQ_KLD_DUMP hook is checked
 *     against a plain long-double recomputation of each row's KL (1e-10: both are float64-exact
 *     to ~1e-14 on these logits).
 * (d) the command: the three stdout lines, a base of another vocabulary refused, a base of
 *     another architecture (qwen2, the same vocabulary) accepted, GQ_KLD_DUMP(_WINDOWS).
 */
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gq/ppl.h"
#include "gq/quantize.h"
#include "gq/st.h"
#include "test.h"
#include "test_cmd_util.h"

#include "../src/cmd/cmds.h"

#define TOL_KL 1e-4
#define TOL_TOP1_PRED 2
#define TOL_PPL_REL 1e-4
#define TOL_DUMP 1e-10
#define TEXT "text/python-stdlib-eval.txt"

static void test_stats(void) {
    TEST_BEGIN("kld stats");
    double v[100], mean, med, p99;
    for (int i = 0; i < 100; i++) v[i] = (double)((i * 37) % 100 + 1); /* 1..100, shuffled */
    gq_kld_stats(v, 100, &mean, &med, &p99);
    TEST_NEAR(mean, 50.5, 1e-12, "mean of 1..100");
    TEST_NEAR(med, 50.5, 1e-12, "median of 1..100: the mean of the two middle values");
    TEST_NEAR(p99, 99.01, 1e-9, "p99 of 1..100: 99 + 0.01 (100 - 99) at position 98.01");
    TEST_CHECK(v[0] == 1 && v[1] == 38, "the input is not sorted in place");
    double w[3] = {3, 1, 2};
    gq_kld_stats(w, 3, &mean, &med, &p99);
    TEST_CHECK(mean == 2 && med == 2, "odd count: median the middle value (%g, %g)", mean, med);
    TEST_NEAR(p99, 2.98, 1e-12, "p99 of 1, 2, 3 at position 1.98");
    double one = 0.25, z[4] = {0, 0, 0, 0};
    gq_kld_stats(&one, 1, &mean, &med, &p99);
    TEST_CHECK(mean == 0.25 && med == 0.25 && p99 == 0.25, "one value");
    gq_kld_stats(z, 4, &mean, &med, &p99);
    TEST_CHECK(mean == 0 && med == 0 && p99 == 0, "all zero: exactly 0");
}

static void opts256(gq_ppl_opts *o, int windows) {
    gq_ppl_opts_default(o);
    o->seqlen = 256;
    o->max_windows = windows;
    o->progress = 0;
}

/* (b) KL(m || m) with two evaluations of one checkpoint. */
static void test_self(const gq_model *m, gq_backend *be, const int32_t *ids) {
    TEST_BEGIN("kld self");
    gq_model m2;
    TEST_OK(gq_model_open(&m2, gq_test_data("pycoder-5m")), "open pycoder-5m again");
    if (!m2.st) return;
    gq_ppl_opts o;
    opts256(&o, 0);
    gq_ppl_result plain, r;
    gq_kld_result k;
    TEST_OK(gq_ppl_ids(m, be, ids, 1024, &o, &plain), "plain perplexity");
    const int max_chunk[] = {0, 1};
    for (int c = 0; c < 2; c++) {
        o.max_chunk = max_chunk[c];
        TEST_OK(gq_ppl_kld_ids(m, &m2, be, ids, 1024, &o, &r, &k), "KL of the model against itself");
        if (!k.token_kld) continue;
        int64_t nonzero = 0;
        for (int64_t i = 0; i < k.n; i++) nonzero += k.token_kld[i] != 0.0;
        TEST_CHECK(k.n == 4 * 255 && nonzero == 0, "every per-token KL exactly 0: %lld of %lld are not",
                   (long long)nonzero, (long long)k.n);
        TEST_CHECK(k.mean == 0 && k.median == 0 && k.p99 == 0 && k.top1 == 1.0,
                   "mean %g median %g p99 %g top1 %g: expected 0, 0, 0, 1", k.mean, k.median, k.p99, k.top1);
        TEST_CHECK(k.window_kld[3] == 0 && k.window_top1[3] == 1.0, "window figures");
        TEST_CHECK(k.base.ppl == r.ppl && k.base.n_windows == 4, "base ppl %.9g == ppl %.9g", k.base.ppl, r.ppl);
        TEST_NEAR(r.ppl, plain.ppl, 1e-12 * plain.ppl, "ppl with --base equals the plain run (max_chunk %d)",
                  max_chunk[c]);
        for (int w = 0; w < 4; w++)
            TEST_NEAR(r.window_nll[w], plain.window_nll[w], 1e-12, "window %d loss", w);
        gq_ppl_result_free(&r);
        gq_kld_result_free(&k);
    }
    gq_ppl_result_free(&plain);
    gq_model_close(&m2);
}

/* A plain recomputation of one row's KL(base || model) and argmax, in long double. */
static double naive_kl(const float *b, const float *q, int V, int *agree) {
    long double mb = b[0], mq = q[0], sb = 0, sq = 0, kl = 0;
    int ib = 0, iq = 0;
    for (int v = 0; v < V; v++) {
        if (b[v] > mb) mb = b[v], ib = v;
        if (q[v] > mq) mq = q[v], iq = v;
    }
    for (int v = 0; v < V; v++) sb += expl(b[v] - mb), sq += expl(q[v] - mq);
    long double lb0 = mb + logl(sb), lq0 = mq + logl(sq);
    for (int v = 0; v < V; v++) {
        long double lpb = b[v] - lb0, lpq = q[v] - lq0;
        kl += expl(lpb) * (lpb - lpq);
    }
    *agree = ib == iq;
    return (double)kl;
}

/* The dump of 2 windows: shapes, ids, gq's per-token KL, a plain recomputation from the logits. */
static void check_dump(const char *path, const gq_kld_result *k, const int32_t *ids) {
    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, path), "open the dump %s", path);
    if (!st) return;
    const gq_st_tensor *tb = gq_st_find(st, "base_logits"), *tq = gq_st_find(st, "logits"),
                       *ti = gq_st_find(st, "ids"), *tk = gq_st_find(st, "kld");
    int ok = tb && tq && ti && tk && tb->numel == 2 * 255 * 8192 && tq->numel == tb->numel && ti->numel == 512 &&
             tk->numel == 510 && tb->dtype == GQ_DT_F32 && tk->dtype == GQ_DT_F64 && ti->dtype == GQ_DT_I32;
    TEST_CHECK(ok, "dump tensors: base_logits, logits [2][255][8192] F32, ids [2][256] I32, kld [2][255] F64");
    if (ok) {
        TEST_CHECK(memcmp(ti->data, ids, 512 * sizeof(int32_t)) == 0, "dumped ids are the first 2 windows");
        TEST_CHECK(memcmp(tk->data, k->token_kld, 510 * sizeof(double)) == 0, "dumped kld is the result's");
        const float *b = tb->data, *q = tq->data;
        double worst = 0;
        for (int w = 0; w < 2; w++) {
            int agree = 0;
            for (int t = 0; t < 255; t++) {
                int a;
                size_t row = (size_t)w * 255 + t;
                double d = fabs(naive_kl(b + row * 8192, q + row * 8192, 8192, &a) - k->token_kld[row]);
                worst = d > worst ? d : worst;
                agree += a;
            }
            TEST_CHECK(agree == (int)lround(k->window_top1[w] * 255), "window %d: %d agreeing argmaxes, gq %g", w,
                       agree, k->window_top1[w] * 255);
        }
        TEST_CHECK(worst <= TOL_DUMP, "per-token KL vs a long-double recomputation from the dump: %.3g", worst);
    }
    gq_st_close(st);
}

static double jnum(json_t *g, const char *key) { return json_number_value(json_object_get(g, key)); }

/* k, r against the golden (tests/data/kld/golden.json). */
static void check_golden(json_t *g, const gq_ppl_result *r, const gq_kld_result *k) {
    TEST_CHECK(k->n == (int64_t)jnum(g, "n"), "%lld predictions, golden %g", (long long)k->n, jnum(g, "n"));
    TEST_NEAR(k->mean, jnum(g, "mean"), TOL_KL, "kld mean vs gen_kld.py");
    TEST_NEAR(k->median, jnum(g, "median"), TOL_KL, "kld median vs gen_kld.py");
    TEST_NEAR(k->p99, jnum(g, "p99"), TOL_KL, "kld p99 vs gen_kld.py");
    TEST_NEAR(k->top1 * (double)k->n, jnum(g, "top1_agree"), TOL_TOP1_PRED, "agreeing argmaxes vs gen_kld.py");
    json_t *wk = json_object_get(g, "window_kld"), *wt = json_object_get(g, "window_top1");
    TEST_CHECK(json_array_size(wk) == 4 && json_array_size(wt) == 4, "golden has 4 windows");
    for (int w = 0; w < 4 && json_array_size(wk) == 4 && json_array_size(wt) == 4; w++) {
        TEST_NEAR(k->window_kld[w], json_number_value(json_array_get(wk, w)), TOL_KL, "window %d kld", w);
        TEST_NEAR(k->window_top1[w] * 255, json_number_value(json_array_get(wt, w)) * 255, TOL_TOP1_PRED,
                  "window %d agreeing argmaxes", w);
    }
    TEST_NEAR(r->ppl, jnum(g, "ppl"), TOL_PPL_REL * jnum(g, "ppl"), "ppl vs gen_kld.py");
    TEST_NEAR(k->base.ppl, jnum(g, "base_ppl"), TOL_PPL_REL * jnum(g, "base_ppl"), "base ppl vs gen_kld.py");
    /* the summary agrees with the per-window figures (windows of equal length) */
    double wm = 0, wa = 0;
    for (int w = 0; w < 4; w++) wm += k->window_kld[w] / 4, wa += k->window_top1[w] / 4;
    TEST_NEAR(k->mean, wm, 1e-12, "mean = mean of the window means");
    TEST_NEAR(k->top1, wa, 1e-12, "top1 = mean of the window agreements");
}

/* (c) the RTN model against pycoder-5m on the text's first 4 windows of 256. */
static void test_fixture(const char *qdir, gq_backend *be, const char *tmp, const int32_t *ids) {
    TEST_BEGIN("kld fixture");
    gq_model q, base;
    gq_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    json_t *g = test_load_json(gq_test_data("kld/golden.json"));
    TEST_OK(gq_model_open(&q, qdir), "open the RTN model");
    TEST_OK(gq_model_open(&base, gq_test_data("pycoder-5m")), "open pycoder-5m");
    TEST_OK(gq_tok_load(&tok, qdir), "the RTN model's tokenizer");
    TEST_OK(gq_read_file(gq_test_data(TEXT), &text, &len), "read the text");
    if (!g || !q.st || !base.st || !tok || !text) goto out;
    char *dump = gq_path_join(tmp, "dump.safetensors");
    gq_ppl_opts o;
    opts256(&o, 4);
    o.progress = 1;
    o.dump_path = dump;
    o.dump_windows = 2;
    gq_ppl_result r, r1;
    gq_kld_result k, k1;
    TEST_OK(gq_ppl_kld_text(&q, &base, be, tok, text, len, TEXT, &o, &r, &k), "KL of the RTN model");
    if (k.token_kld) {
        fprintf(stderr, "fixture: kld mean %.6f median %.6f p99 %.6f top1 %.4f, ppl %.4f, base %.4f\n", k.mean,
                k.median, k.p99, k.top1, r.ppl, k.base.ppl);
        check_golden(g, &r, &k);
        check_dump(dump, &k, ids);
        /* one window per chunk: the same numbers */
        o.dump_path = NULL;
        o.progress = 0;
        o.max_chunk = 1;
        TEST_OK(gq_ppl_kld_text(&q, &base, be, tok, text, len, TEXT, &o, &r1, &k1), "one window per chunk");
        if (k1.token_kld)
            TEST_CHECK(k1.mean == k.mean && k1.p99 == k.p99 && k1.top1 == k.top1 && r1.ppl == r.ppl,
                       "chunking changes nothing: mean %.17g vs %.17g", k1.mean, k.mean);
        gq_ppl_result_free(&r1);
        gq_kld_result_free(&k1);
    }
    gq_ppl_result_free(&r);
    gq_kld_result_free(&k);
    free(dump);
out:
    json_decref(g);
    gq_tok_free(tok);
    free(text);
    gq_model_close(&q);
    gq_model_close(&base);
}

/* Run gq_cmd_ppl with stdout captured into out (NUL-terminated). */
static int run_cmd(char **argv, int argc, char *out, size_t cap) {
    return test_run_captured(gq_cmd_ppl, argv, argc, out, cap);
}

/* (d) gq ppl --base. */
static void test_cmd(const char *qdir, const char *tmp) {
    TEST_BEGIN("kld cmd");
    char out[2048], *text = (char *)gq_test_data(TEXT), *base = (char *)gq_test_data("pycoder-5m");
    char *dump = gq_path_join(tmp, "cmd-dump.safetensors");
    setenv("GQ_KLD_DUMP", dump, 1);
    setenv("GQ_KLD_DUMP_WINDOWS", "1", 1);
    char *a1[] = {"ppl", "--model", (char *)qdir, "--base", base, "--text", text, "--seqlen", "256",
                  "--max-windows", "4", "--device", "cpu"};
    TEST_OK(run_cmd(a1, 13, out, sizeof out), "gq ppl --base");
    unsetenv("GQ_KLD_DUMP");
    unsetenv("GQ_KLD_DUMP_WINDOWS");
    double ppl, bppl, mean, med, p99, top1;
    int nw, sl;
    long long np;
    int got = sscanf(out,
                     "ppl = %lf (%d windows of %d tokens, %lld predictions)\nbase ppl = %lf\n"
                     "kld mean = %lf median = %lf p99 = %lf top1 = %lf",
                     &ppl, &nw, &sl, &np, &bppl, &mean, &med, &p99, &top1);
    TEST_CHECK(got == 9, "stdout lines: '%s'", out);
    const char *kl = strstr(out, "kld mean = ");
    const char *dot = kl ? strchr(kl, '.') : NULL;
    TEST_CHECK(dot && strspn(dot + 1, "0123456789") == 6 && !strncmp(dot + 7, " median = ", 10),
               "the kld line: 'kld mean = %%.6f median = ...': '%s'", out);
    json_t *g = test_load_json(gq_test_data("kld/golden.json"));
    if (got == 9 && g) {
        TEST_NEAR(mean, jnum(g, "mean"), TOL_KL, "printed kld mean");
        TEST_NEAR(med, jnum(g, "median"), TOL_KL, "printed median");
        TEST_NEAR(p99, jnum(g, "p99"), TOL_KL, "printed p99");
        TEST_NEAR(top1, jnum(g, "top1"), TOL_TOP1_PRED / 1020.0 + 5e-5, "printed top1 (4 decimals)");
        TEST_NEAR(bppl, jnum(g, "base_ppl"), 1e-4 * bppl, "printed base ppl");
        TEST_CHECK(nw == 4 && sl == 256 && np == 1020, "%d windows of %d, %lld predictions", nw, sl, np);
    }
    json_decref(g);
    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, dump), "GQ_KLD_DUMP wrote %s", dump);
    const gq_st_tensor *t = st ? gq_st_find(st, "logits") : NULL;
    TEST_CHECK(t && t->numel == 255 * 8192, "GQ_KLD_DUMP_WINDOWS=1: one window of logits");
    gq_st_close(st);

    char *spm = (char *)gq_test_data("gen-spm");
    char *a2[] = {"ppl", "--model", base, "--base", spm, "--text", text, "--seqlen", "256", "--device", "cpu"};
    TEST_FAILS(run_cmd(a2, 11, out, sizeof out), GQ_ERR_ARG, "has a vocabulary of 32000 tokens, --model");
    setenv("GQ_KLD_DUMP_WINDOWS", "abc", 1);
    TEST_FAILS(run_cmd(a1, 13, out, sizeof out), GQ_ERR_ARG, "GQ_KLD_DUMP_WINDOWS: expected an integer >= 1");
    unsetenv("GQ_KLD_DUMP_WINDOWS");
    char *a3[] = {"ppl", "--help"};
    TEST_CHECK(run_cmd(a3, 2, out, sizeof out) == 1 && strstr(out, "--base S"), "--help lists --base: %s", out);
    free(dump);
}

/* The library's checks; a base of another architecture with the same vocabulary. */
static void test_models(const gq_model *m, gq_backend *be, const int32_t *ids) {
    TEST_BEGIN("kld models");
    gq_model spm, qw;
    gq_ppl_opts o;
    opts256(&o, 2);
    gq_ppl_result r;
    gq_kld_result k;
    TEST_OK(gq_model_open(&spm, gq_test_data("gen-spm")), "open gen-spm");
    if (spm.st) TEST_FAILS(gq_ppl_kld_ids(m, &spm, be, ids, 1024, &o, &r, &k), GQ_ERR_ARG, "vocabulary of 32000");
    gq_model_close(&spm);
    TEST_OK(gq_model_open(&qw, gq_test_data("families/qwen2")), "open the tiny qwen2");
    if (!qw.st) return;
    TEST_OK(gq_ppl_kld_ids(m, &qw, be, ids, 1024, &o, &r, &k), "KL from a qwen2 base (same vocabulary)");
    if (k.token_kld) {
        int64_t neg = 0;
        for (int64_t i = 0; i < k.n; i++) neg += k.token_kld[i] < -1e-12;
        TEST_CHECK(neg == 0 && k.mean > 0.1 && k.top1 >= 0 && k.top1 < 0.5 && k.n == 2 * 255,
                   "unrelated models: mean %g, top1 %g, %lld negative KLs", k.mean, k.top1, (long long)neg);
        TEST_CHECK(k.median <= k.p99 && k.p99 <= k.mean * 100, "median %g <= p99 %g", k.median, k.p99);
    }
    gq_ppl_result_free(&r);
    gq_kld_result_free(&k);
    gq_model_close(&qw);
}

int main(void) {
    test_stats();
    TEST_BEGIN("kld");
    gq_model m;
    gq_backend *be = NULL;
    gq_st *ref = NULL;
    TEST_OK(gq_model_open(&m, gq_test_data("pycoder-5m")), "open pycoder-5m");
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");
    TEST_OK(gq_st_open(&ref, gq_test_data("fwd/pycoder5m_ref.safetensors")), "open the reference ids");
    const gq_st_tensor *ti = ref ? gq_st_find(ref, "ppl_ids") : NULL; /* the text's first 1024 tokens */
    TEST_CHECK(ti && ti->numel == 1024, "ppl_ids");
    const char *tmp = gq_test_tmpdir("kld");
    char *qdir = gq_path_join(tmp, "rtn");
    gq_quant_opts qo;
    gq_quant_opts_default(&qo);
    qo.model_dir = gq_test_data("pycoder-5m");
    qo.out_dir = qdir;
    qo.device = "cpu";
    qo.calib_path = "calib/python-sitepackages.jsonl"; /* named in the report; RTN reads none */
    qo.gptq.method = GQ_METHOD_RTN;
    qo.gptq.clip = GQ_CLIP_MINMAX; /* the golden's checkpoint: RTN with min-max scales */
    gq_quant_report rep;
    int qrc = gq_quantize_run(&qo, &rep);
    TEST_OK(qrc, "RTN int4 g128 sym quantization of pycoder-5m");
    if (qrc == GQ_OK) gq_quant_report_free(&rep);
    if (be && m.st && ti && ti->numel == 1024) {
        test_self(&m, be, ti->data);
        test_models(&m, be, ti->data);
        if (qrc == GQ_OK) {
            test_fixture(qdir, be, tmp, ti->data);
            test_cmd(qdir, tmp);
        }
    }
    gq_rmtree(tmp);
    free(qdir);
    gq_st_close(ref);
    gq_backend_free(be);
    gq_model_close(&m);
    return TEST_REPORT();
}
