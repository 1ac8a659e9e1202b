/*
 * test_q4_model.c -- a 4-bit checkpoint run with its linears int4-resident (gq_model.q4_resident,
 * `--int4-kernel on`) against the same checkpoint dequantized at load (`--int4-kernel off`):
 *   - on the CPU with GQ_CPU_Q4=1 (src/compute/cpu/backend_cpu_q4.c: the packed parts dequantized
 *     per call into the same f32 weights): bitwise equal, every figure below exact (KL 0, top-1 1,
 *     identical logits); this runs in CI and covers the load and graph paths of int4 weights;
 *   - on CUDA (the W4A16 kernel of src/compute/cuda/w4a16.cu) with the tolerances below; skipped
 *     without a device.
 *
 * The checkpoints: pycoder-5m quantized here on the CPU in three forms that take different paths of
 * the kernel: RTN int4 g128 sym v1 (trivial g_idx: the fast path), GPTQ int4 g32 asym act-order
 * without static groups (a permuted g_idx: the general path, 32-column groups) and RTN int4 g64
 * asym gptq_v2 (true zeros). 8 windows of 256 tokens of the stdlib eval text.
 *
 * Both runs use the same weights: the kernel's fp16(scale * (q - zero)) is the correctly rounded
 * product of exact values, as the load path's fp32 dequantization rounded to fp16 is. What differs
 * is the summation order (tensor-core tiles split over K against cuBLAS's) and so, now and then,
 * the rounding of an fp16 activation. Tolerances: perplexity within 1e-3 relative, KL(off || on)
 * mean below 1e-4 nats and top-1 agreement above 0.99; a wrong nibble, scale, zero or g_idx moves
 * the KL by 1e-2 and more (RTN int4 itself is 0.07 from fp16, docs/accuracy.md). Also: every
 * linear group of a layer is int4-resident (q4 set, no fp16 copy) and takes under 0.3x the fp16
 * bytes; with q4_resident = 0 none is. The generation engine's KV-cache prefill and batched decode
 * with int4 weights: logits within the fp16 checkpoint tolerance. On CUDA also the recorded decode
 * steps (GQ_CUDA_GRAPH=1: CUDA graphs, int4 and fp16 weights): bitwise the same steps op by op.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/backend.h"
#include "gq/generate.h"
#include "gq/graph.h"
#include "gq/model.h"
#include "gq/ppl.h"
#include "gq/quantize.h"
#include "gq/tokenizer.h"
#include "test.h"

#include "gq/knobs.h"
#ifdef GQ_USE_CUDA
#include "gq/backend_cuda.h"
#endif

/* 1 on the CPU pass: int4-resident and dequantized runs must agree bit for bit */
static int g_exact;
#define TOL(gpu) (g_exact ? 0.0 : (gpu))
/* the CPU's logits: the KV-cache prefill computes k, v with the fused q|k|v sgemm (int4) or one
 * per row slice (dequantized): OpenBLAS sums a column alike whatever N, but not bit for bit in
 * every kernel set; fp32 rounding, 1e-5 of the largest logit (measured 8e-7) */
#define TOL_LOGITS (g_exact ? 1e-5 : 2e-2)

typedef struct {
    const char *name;
    gq_method method;
    int group_size, sym, act_order, static_groups, v2;
} qcase;

static int quantize(const qcase *c, const char *out) {
    gq_quant_opts o;
    gq_quant_opts_default(&o);
    o.model_dir = gq_test_data("pycoder-5m");
    o.out_dir = out;
    o.calib_path = "calib/python-sitepackages.jsonl";
    o.device = "cpu";
    o.nsamples = 8;
    o.seqlen = 128;
    o.force = 1;
    o.gptq.method = c->method;
    o.gptq.group_size = c->group_size;
    o.gptq.sym = c->sym;
    o.gptq.act_order = c->act_order;
    o.gptq.static_groups = c->static_groups;
    o.gptq.clip = GQ_CLIP_MINMAX;
    o.v2 = c->v2;
    o.gptq.zero_policy = c->v2 ? GQ_ZERO_FREE : GQ_ZERO_V1;
    gq_quant_report rep;
    memset(&rep, 0, sizeof rep);
    int rc = gq_quantize_run(&o, &rep);
    gq_quant_report_free(&rep);
    return rc;
}

/* Layer 0's groups: all int4-resident (want 1) or none (want 0); their bytes against fp16's. */
static void check_layer(gq_backend *be, const gq_model *m, int want, const char *what) {
    gq_blayer bl;
    if (gq_blayer_load(be, m, 0, &bl) != GQ_OK) {
        TEST_CHECK(0, "%s: layer 0 loads: %s", what, gq_errmsg());
        return;
    }
    for (int g = 0; g < GQ_GRP_COUNT; g++) {
        const gq_bweight *w = &bl.w[g];
        double fp16 = 2.0 * w->rows * w->cols, bytes = (double)gq_be_weight_bytes(w);
        TEST_CHECK((w->q4 != NULL) == want, "%s: group %d is %s", what, g, want ? "int4-resident" : "dequantized");
        /* 4 of 16 bits, plus per group of gs columns an fp16 scale and a 4-bit zero, plus g_idx: 0.30 at gs 32 */
        if (want) TEST_CHECK(bytes < 0.35 * fp16, "%s: group %d takes %.0f bytes, fp16 %.0f", what, g, bytes, fp16);
    }
    gq_blayer_free(be, &bl);
}

/* max |a - b| / max |b| over n values */
static double rel_maxdiff(const float *a, const float *b, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= d)) d = e; /* NaN sticks */
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return m > 0 ? d / m : d;
}

/* The generation engine's paths (KV-cache prefill, where k and v go to the cache, and a batched
 * decode step) with int4-resident weights against dequantized ones: the logits of a 200-token
 * prefill in chunks of 64 and of two decode steps (B = 2) within 2e-2 of the largest logit (the
 * fp16 checkpoint tolerance of test_cuda, TOL_MODEL). */
static void check_gen(gq_backend *be, const gq_model *on, const gq_model *off, const int32_t *ids, const char *what) {
    gq_gen_opts go;
    gq_gen_opts_default(&go);
    go.max_batch = 2, go.max_len = 512, go.prefill_chunk = 64;
    gq_gen *g[2] = {NULL, NULL};
    const gq_model *m[2] = {on, off};
    int vocab = on->cfg.vocab, ok = 1;
    float *lg[2];
    for (int i = 0; i < 2; i++) {
        lg[i] = gq_malloc(sizeof(float) * 2 * (size_t)vocab);
        int rc = gq_gen_init(&g[i], m[i], be, &go);
        TEST_OK(rc, "%s: generation engine %d", what, i);
        ok = ok && rc == GQ_OK;
    }
    for (int i = 0; i < 2 && ok; i++) {
        TEST_OK(gq_gen_prefill(g[i], 0, ids, 200, lg[i]), "%s: prefill slot 0", what);
        TEST_OK(gq_gen_prefill(g[i], 1, ids + 300, 150, lg[i] + vocab), "%s: prefill slot 1", what);
    }
    if (ok) {
        double d = rel_maxdiff(lg[0], lg[1], 2 * (size_t)vocab);
        TEST_CHECK(d <= TOL_LOGITS, "%s: prefill logits, int4 kernel vs dequantized: %.3g <= %g", what, d, TOL_LOGITS);
        for (int step = 0; step < 2; step++) {
            int slots[2] = {0, 1};
            int32_t tok[2] = {ids[200 + step], ids[450 + step]};
            for (int i = 0; i < 2; i++)
                TEST_OK(gq_gen_decode(g[i], slots, tok, 2, lg[i]), "%s: decode step %d", what, step);
            d = rel_maxdiff(lg[0], lg[1], 2 * (size_t)vocab);
            TEST_CHECK(d <= TOL_LOGITS, "%s: decode step %d logits: %.3g <= %g", what, step, d, TOL_LOGITS);
        }
    }
    for (int i = 0; i < 2; i++) gq_gen_free(g[i]), free(lg[i]);
}

/* One engine under GQ_CUDA_GRAPH=mode: a prefill in each of 3 slots, then 12 decode steps at B = 3
 * and 4 at B = 1 (positions 150 .. 220 apart), every step's logits into lg [16][3][vocab]. */
static int gen_steps(gq_backend *be, const gq_model *m, const int32_t *ids, int mode, float *lg, gq_gen_stats *st) {
    char v[8];
    snprintf(v, sizeof v, "%d", mode);
    setenv("GQ_CUDA_GRAPH", v, 1);
    gq_knobs_reload();
    gq_gen_opts go;
    gq_gen_opts_default(&go);
    go.max_batch = 3, go.max_len = 512, go.prefill_chunk = 64;
    gq_gen *g = NULL;
    const int vocab = m->cfg.vocab;
    int rc = gq_gen_init(&g, m, be, &go);
    for (int s = 0; s < 3 && !rc; s++) rc = gq_gen_prefill(g, s, ids + 100 * s, 150 + 70 * s, NULL);
    for (int step = 0; step < 16 && !rc; step++) {
        int slots[3] = {0, 1, 2}, B = step < 12 ? 3 : 1;
        int32_t tok[3] = {ids[400 + step], ids[600 + step], ids[800 + step]};
        rc = gq_gen_decode(g, slots, tok, B, lg + (size_t)step * 3 * vocab);
    }
    if (!rc) *st = *gq_gen_get_stats(g);
    gq_gen_free(g);
    unsetenv("GQ_CUDA_GRAPH");
    gq_knobs_reload();
    return rc;
}

/* Decode steps recorded once per batch size and replayed (GQ_CUDA_GRAPH=1, CUDA graphs; slot[] and
 * pos[] copied from pinned memory by the step's first op, the attention's splits following the
 * caches' length) against the same ops run op by op (=2): every step's logits bitwise equal (the same
 * kernels on the same data), all 16 steps run from recordings (the first at each batch size is
 * recorded, then replayed); against the default path (=0, the splits following the positions:
 * another merge order) within TOL_LOGITS. The CUDA pass only (the CPU records nothing). */
static void check_graphs(gq_backend *be, const gq_model *m, const int32_t *ids, const char *what) {
    const size_t n = (size_t)16 * 3 * m->cfg.vocab;
    float *lg[3];
    gq_gen_stats st[3];
    int rc = GQ_OK;
    for (int k = 0; k < 3; k++) {
        lg[k] = gq_calloc(n, sizeof(float));
        memset(&st[k], 0, sizeof st[k]);
        if (!rc) rc = gen_steps(be, m, ids, k, lg[k], &st[k]);
        TEST_OK(rc, "%s: decode with GQ_CUDA_GRAPH=%d", what, k);
    }
    if (!rc) {
        TEST_CHECK(st[1].decode_replays == 16 && st[2].decode_replays == 0 && st[0].decode_replays == 0,
                   "%s: recorded steps replayed: %lld of 16 (op by op: %lld)", what, (long long)st[1].decode_replays,
                   (long long)st[2].decode_replays);
        TEST_CHECK(memcmp(lg[1], lg[2], n * sizeof(float)) == 0,
                   "%s: 16 decode steps replayed from recordings bitwise equal to op by op", what);
        double d = rel_maxdiff(lg[2], lg[0], n);
        TEST_CHECK(d <= TOL_LOGITS, "%s: pinned indices vs the default decode: %.3g <= %g", what, d, TOL_LOGITS);
    }
    for (int k = 0; k < 3; k++) free(lg[k]);
}

/* --int4-kernel auto|on|off (gq_model_q4_choose): the rule with numbers (keep packed up to 16 decode
 * rows, or when the fp16 linears would take more than half the free memory; unknown free memory,
 * 0, keeps), the fp16 bytes of pycoder-5m's linears against its config, and the modes on this
 * backend (whose free memory is unknown on the CPU: auto keeps). */
static void check_choose(gq_backend *be, const gq_model *m) {
    const size_t G = (size_t)1 << 30;
    TEST_CHECK(gq_q4_auto_keeps(16, G, 64 * G) && !gq_q4_auto_keeps(17, G, 64 * G) &&
                   !gq_q4_auto_keeps(128, 2 * G, 4 * G) && gq_q4_auto_keeps(128, 2 * G + 1, 4 * G) &&
                   gq_q4_auto_keeps(128, G, 0),
               "auto: packed up to 16 rows; dequantized above when the fp16 linears fit half the free memory");
    const gq_config *c = &m->cfg;
    const size_t d = (size_t)c->hidden, q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    const size_t want = (size_t)c->n_layers * (d * (q + 2 * kv) + q * d + 3 * d * (size_t)c->intermediate) * 2;
    TEST_CHECK(gq_model_linear_fp16_bytes(m) == want, "fp16 bytes of the linears %zu, expected %zu",
               gq_model_linear_fp16_bytes(m), want);
    TEST_CHECK(gq_model_q4_choose(m, be, 0, 64) == 0 && gq_model_q4_choose(m, be, 1, 64) == 1,
               "--int4-kernel off / on are taken as they are");
    TEST_CHECK(gq_model_q4_choose(m, be, GQ_Q4_AUTO, 64) == (gq_be_free_bytes(be) == 0 ||
                                                            gq_q4_auto_keeps(64, want, gq_be_free_bytes(be))),
               "auto at 64 rows follows the rule with this backend's free memory");
}

static void run_case(gq_backend *be, const qcase *c, const char *tmp, const int32_t *ids, size_t n) {
    TEST_BEGIN(c->name);
    char *out = gq_path_join(tmp, "q");
    if (quantize(c, out) != GQ_OK) {
        TEST_CHECK(0, "%s: quantize: %s", c->name, gq_errmsg());
        free(out);
        return;
    }
    gq_model on, off;
    TEST_OK(gq_model_open(&on, out), "open (int4 kernel)");
    TEST_OK(gq_model_open(&off, out), "open (dequantized)");
    if (!on.st || !off.st) goto done;
    TEST_CHECK(on.q4_resident == 1, "gq_model_open keeps 4-bit linears packed where supported (--int4-kernel on)");
    check_choose(be, &on);
    off.q4_resident = 0;
    check_layer(be, &on, 1, "int4 kernel");
    check_layer(be, &off, 0, "--int4-kernel off");
    gq_ppl_opts po;
    gq_ppl_opts_default(&po);
    po.seqlen = 256;
    po.max_windows = 8;
    po.progress = 0;
    gq_ppl_result r;
    gq_kld_result k;
    memset(&r, 0, sizeof r);
    memset(&k, 0, sizeof k);
    int rc = gq_ppl_kld_ids(&on, &off, be, ids, n, &po, &r, &k);
    TEST_OK(rc, "ppl with the base dequantized");
    if (rc == GQ_OK) {
        double rel = fabs(r.ppl - k.base.ppl) / k.base.ppl;
        fprintf(stderr, "  %s: ppl %.5f (int4 kernel) %.5f (dequantized), kld mean %.3g p99 %.3g, top1 %.4f\n",
                c->name, r.ppl, k.base.ppl, k.mean, k.p99, k.top1);
        TEST_CHECK(rel <= TOL(1e-3), "%s: ppl %.5f vs %.5f dequantized (rel %.2g <= %g)", c->name, r.ppl,
                   k.base.ppl, rel, TOL(1e-3));
        TEST_CHECK(k.mean <= TOL(1e-4), "%s: KL(dequantized || int4 kernel) mean %.3g <= %g", c->name, k.mean,
                   TOL(1e-4));
        TEST_CHECK(k.top1 >= 1.0 - TOL(1e-2), "%s: top-1 agreement %.4f >= %g", c->name, k.top1, 1.0 - TOL(1e-2));
    }
    gq_ppl_result_free(&r);
    gq_kld_result_free(&k);
    if (n > 500) check_gen(be, &on, &off, ids, c->name);
    if (n > 1000 && gq_backend_is_gpu(be)) {
        char w[160];
        snprintf(w, sizeof w, "%s, int4 kernel", c->name);
        check_graphs(be, &on, ids, w);
        snprintf(w, sizeof w, "%s, dequantized (fp16 cuBLAS)", c->name);
        check_graphs(be, &off, ids, w);
    }
done:
    gq_model_close(&on);
    gq_model_close(&off);
    gq_rmtree(out);
    free(out);
}

static int32_t *text_ids(size_t *n) {
    gq_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    gq_ids ids = {0};
    *n = 0;
    if (gq_tok_load(&tok, gq_test_data("pycoder-5m")) ||
        gq_read_file(gq_test_data("text/python-stdlib-eval.txt"), &text, &len) ||
        gq_tok_encode(tok, text, len, 1, &ids)) {
        TEST_CHECK(0, "the eval text: %s", gq_errmsg());
        free(text);
        gq_tok_free(tok);
        return NULL;
    }
    free(text);
    gq_tok_free(tok);
    *n = ids.n;
    return ids.v;
}

static const qcase cases[] = {
    {"RTN int4 g128 sym v1", GQ_METHOD_RTN, 128, 1, 0, 0, 0},
    {"GPTQ int4 g32 asym act-order (permuted g_idx)", GQ_METHOD_GPTQ, 32, 0, 1, 0, 0},
    {"RTN int4 g64 asym gptq_v2", GQ_METHOD_RTN, 64, 0, 0, 0, 1},
};

static void run_pass(const char *device, const int32_t *ids, size_t n) {
    gq_backend *be = NULL;
    TEST_OK(gq_backend_init(&be, device), "%s backend", device);
    if (!be) return;
    TEST_CHECK(gq_be_q4_supported(be), "the %s backend keeps int4 weights", device);
    const char *tmp = gq_test_tmpdir("q4model");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(be, &cases[i], tmp, ids, n);
    gq_rmtree(tmp);
    gq_backend_free(be);
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    size_t n;
    int32_t *ids = text_ids(&n);
    if (!ids) return TEST_REPORT();
    /* the CPU: without GQ_CPU_Q4 no int4 weights, with it the exact pass */
    gq_backend *be = NULL;
    unsetenv("GQ_CPU_Q4");
    gq_knobs_reload();
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");
    if (be) TEST_CHECK(!gq_be_q4_supported(be), "the CPU keeps no int4 weights unless GQ_CPU_Q4=1");
    gq_backend_free(be);
    setenv("GQ_CPU_Q4", "1", 1);
    gq_knobs_reload();
    g_exact = 1;
    run_pass("cpu", ids, n);
    g_exact = 0;
#ifdef GQ_USE_CUDA
    if (gq_cuda_device_count() > 0) {
        run_pass("cuda:0", ids, n);
        /* fp32 precision: the kernel is fp16-only, the load falls back to dequantized weights */
        TEST_OK(gq_backend_init(&be, "cuda:0"), "cuda backend for fp32");
        if (be && gq_backend_set_precision(be, "fp32") == GQ_OK)
            TEST_CHECK(!gq_be_q4_supported(be), "--precision fp32 runs no int4 kernel");
        gq_backend_free(be);
    } else {
        TEST_SKIP("no CUDA device: the GPU pass skipped");
    }
#else
    TEST_SKIP("gq built without CUDA (make CUDA=0 or no nvcc): the GPU pass skipped");
#endif
    free(ids);
    return TEST_REPORT();
}
