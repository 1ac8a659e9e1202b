/*
 * test_quantize.c -- `gq quantize` end to end: the acceptance figures on the
 * bundled pycoder-5m (full 128 x 2048 calibration, all 155 evaluation
 * windows; bounds that hold across OpenBLAS kernel sets and thread counts),
 * the written AutoGPTQ files unpacked independently of gq's packing code,
 * the v1 zero policy, --resume, bitwise reproducibility, and bad input.
 *
 * GQ_TEST_QUICK=1 skips the GPTQ acceptance runs; a sanitizer build skips the
 * RTN ones too. Two rows (RTN int4 sym, GPTQ int4 asym without act-order) run
 * only with GQ_TEST_FULL=1: each costs a full 155-window perplexity (about a
 * minute on 2 cores) and its code paths are covered by its neighbours; the
 * default run (RTN asym, GPTQ sym, asym act-order + static groups, int3, gq's
 * default) is about 8 minutes on 2 cores. Everything else takes seconds.
 */
#include <jansson.h>
#include <math.h>

#include "gq/knobs.h"
#include "gq/cli.h"
#include "gq/export.h"
#include "gq/ppl.h"
#include "gq/quantize.h"
#include "test.h"

/* A sanitizer build (make SAN=1, the second pass of make test): the full-text figures are the
 * plain build's to check; under AddressSanitizer they would take minutes and test no memory use
 * that the rest of this file does not. */
#if defined(__SANITIZE_ADDRESS__)
#define SAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SAN_BUILD 1
#endif
#endif
#ifndef SAN_BUILD
#define SAN_BUILD 0
#endif

static const char *calib_path(void) {
    const char *c = getenv("GQ_TEST_CALIB");
    return c ? c : "calib/python-sitepackages.jsonl";
}

static void base_opts(gq_quant_opts *o, const char *model, const char *out) {
    gq_quant_opts_default(o);
    o->model_dir = model;
    o->out_dir = out;
    o->calib_path = calib_path();
    o->device = "cpu";
}

/* ---- a tiny random checkpoint (hidden 64, 2 layers, pycoder's tokenizer) --------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double rnd(void) { /* uniform [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

enum { TH = 64, TI = 128, TNH = 2, TKV = 1, THD = 32, TL = 2, TV = 8192 };

/* poison: 0 none, 1 NaN in layer 1 up_proj, 2 drop layer 1 down_proj, 3 wrong shape of layer 0 k_proj */
static void write_tiny(const char *dir, int poison) {
    gq_rmtree(dir);
    gq_mkdirs(dir);
    const char *cfg = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                      "\"num_hidden_layers\":2,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
                      "\"vocab_size\":8192,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,\"tie_word_embeddings\":true,"
                      "\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"float16\"}";
    char *p = gq_path_join(dir, "config.json");
    gq_write_file_atomic(p, cfg, strlen(cfg));
    free(p);
    static const char *tokfiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    for (int i = 0; i < 3; i++) {
        char src[512];
        snprintf(src, sizeof src, "%s", gq_test_data("pycoder-5m"));
        char *s = gq_path_join(src, tokfiles[i]), *d = gq_path_join(dir, tokfiles[i]);
        gq_copy_file(s, d);
        free(s);
        free(d);
    }
    gq_st_item items[64];
    char names[64][96];
    uint16_t *bufs[64];
    int n = 0;
#define ADD(nm, r, c, scale, allpos)                                                        \
    do {                                                                                   \
        size_t cnt_ = (size_t)(r) * ((c) ? (c) : 1);                                       \
        bufs[n] = gq_malloc(cnt_ * 2);                                                     \
        for (size_t i_ = 0; i_ < cnt_; i_++) {                                             \
            double v_ = (scale) == 0 ? 1.0 : (scale) * rnd();                              \
            if (allpos && i_ < 128) v_ = fabs(v_) + 0.001; /* row 0..: a non-negative group */ \
            bufs[n][i_] = gq_f32_to_f16((float)v_);                                        \
        }                                                                                  \
        snprintf(names[n], sizeof names[n], "%s", nm);                                     \
        memset(&items[n], 0, sizeof items[n]);                                             \
        items[n].name = names[n];                                                          \
        items[n].dtype = GQ_DT_F16;                                                        \
        items[n].ndim = (c) ? 2 : 1;                                                       \
        items[n].shape[0] = (r);                                                           \
        items[n].shape[1] = (c);                                                           \
        items[n].data = bufs[n];                                                           \
        n++;                                                                               \
    } while (0)
    ADD("model.embed_tokens.weight", TV, TH, 1.0, 0);
    ADD("model.norm.weight", TH, 0, 0, 0);
    char nm[96];
    for (int l = 0; l < TL; l++) {
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        ADD(nm, TH, 0, 0, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(nm, TH, 0, 0, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(nm, TNH * THD, TH, 0.15, 1);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(nm, poison == 3 && l == 0 ? TKV * THD + 1 : TKV * THD, TH, 0.15, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(nm, TKV * THD, TH, 0.15, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(nm, TH, TNH * THD, 0.15, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(nm, TI, TH, 0.15, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.up_proj.weight", l);
        ADD(nm, TI, TH, 0.15, 0);
        if (poison == 1 && l == 1) bufs[n - 1][777] = 0x7e00; /* NaN */
        if (!(poison == 2 && l == 1)) {
            snprintf(nm, sizeof nm, "model.layers.%d.mlp.down_proj.weight", l);
            ADD(nm, TH, TI, 0.1, 0);
        }
    }
#undef ADD
    p = gq_path_join(dir, "model.safetensors");
    int rc = gq_st_write_file(p, items, n, NULL, 0);
    if (rc) fprintf(stderr, "write_tiny: %s\n", gq_errmsg());
    free(p);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

/* ---- reading the output independently of pack.c ------------------------------------------ */

typedef struct {
    int rows, cols, ngroups;
    uint8_t *codes;  /* [rows][cols] */
    int32_t *zeros;  /* [ngroups][rows], with the +1 of v1 applied */
    float *scales;   /* [ngroups][rows] */
    int32_t *g_idx;  /* [cols] */
} unpacked;

static void unpacked_free(unpacked *u) {
    free(u->codes), free(u->zeros), free(u->scales), free(u->g_idx);
    memset(u, 0, sizeof *u);
}

/* 4-bit only: qweight int32 [K/8][N], nibble j of word r = code of input row 8r+j (little
 * endian, lowest nibble first); qzeros int32 [G][N/8] likewise along N, storing zero - 1
 * (v1) or zero (v2). */
static int unpack4(const gq_st *st, const char *prefix, int rows, int cols, int v2, unpacked *u) {
    char nm[256];
    memset(u, 0, sizeof *u);
    snprintf(nm, sizeof nm, "%s.qweight", prefix);
    const gq_st_tensor *qw = gq_st_find(st, nm);
    snprintf(nm, sizeof nm, "%s.qzeros", prefix);
    const gq_st_tensor *qz = gq_st_find(st, nm);
    snprintf(nm, sizeof nm, "%s.scales", prefix);
    const gq_st_tensor *sc = gq_st_find(st, nm);
    snprintf(nm, sizeof nm, "%s.g_idx", prefix);
    const gq_st_tensor *gi = gq_st_find(st, nm);
    if (!qw || !qz || !sc || !gi) return 0;
    if (qw->dtype != GQ_DT_I32 || qz->dtype != GQ_DT_I32 || sc->dtype != GQ_DT_F16 || gi->dtype != GQ_DT_I32) return 0;
    if (qw->shape[0] != cols / 8 || qw->shape[1] != rows || gi->shape[0] != cols) return 0;
    int G = (int)sc->shape[0];
    if (sc->shape[1] != rows || qz->shape[0] != G || qz->shape[1] != rows / 8) return 0;
    u->rows = rows, u->cols = cols, u->ngroups = G;
    u->codes = gq_malloc((size_t)rows * cols);
    u->zeros = gq_malloc(sizeof(int32_t) * G * rows);
    u->scales = gq_malloc(sizeof(float) * G * rows);
    u->g_idx = gq_malloc(sizeof(int32_t) * cols);
    const uint8_t *wb = qw->data, *zb = qz->data, *sb = sc->data, *gb = gi->data;
    for (int k = 0; k < cols; k++)
        for (int n = 0; n < rows; n++) {
            size_t word = (size_t)(k / 8) * rows + n;              /* int32 index */
            uint8_t byte = wb[word * 4 + (k % 8) / 2];              /* little endian: byte b holds nibbles 2b, 2b+1 */
            u->codes[(size_t)n * cols + k] = (k % 2) ? byte >> 4 : byte & 15;
        }
    for (int g = 0; g < G; g++)
        for (int n = 0; n < rows; n++) {
            size_t word = (size_t)g * (rows / 8) + n / 8;
            uint8_t byte = zb[word * 4 + (n % 8) / 2];
            int z = (n % 2) ? byte >> 4 : byte & 15;
            u->zeros[(size_t)g * rows + n] = v2 ? z : z + 1;
            uint16_t h = (uint16_t)(sb[((size_t)g * rows + n) * 2] | sb[((size_t)g * rows + n) * 2 + 1] << 8);
            u->scales[(size_t)g * rows + n] = gq_f16_to_f32(h);
        }
    for (int k = 0; k < cols; k++)
        u->g_idx[k] = (int32_t)(gb[4 * k] | gb[4 * k + 1] << 8 | gb[4 * k + 2] << 16 | (uint32_t)gb[4 * k + 3] << 24);
    return 1;
}

static json_t *load_json(const char *dir, const char *name) {
    char *p = gq_path_join(dir, name);
    json_t *j = test_load_json(p);
    free(p);
    return j;
}

/* ---- tests ------------------------------------------------------------------------------ */

static int32_t *stdlib_ids(size_t *n) {
    gq_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    gq_ids ids = {0};
    if (gq_tok_load(&tok, gq_test_data("pycoder-5m")) || gq_read_file(gq_test_data("text/python-stdlib-eval.txt"), &text, &len) ||
        gq_tok_encode(tok, text, len, 1, &ids)) {
        fprintf(stderr, "stdlib_ids: %s\n", gq_errmsg());
        exit(1);
    }
    free(text);
    gq_tok_free(tok);
    *n = ids.n;
    return ids.v;
}

/* Perplexity of model on ids (max_windows: 0 all 155 windows of 2048), NaN on an error. */
static double ppl_of(const char *model, const int32_t *ids, size_t n, int max_windows) {
    gq_model m;
    gq_backend *be = NULL;
    gq_ppl_opts po;
    gq_ppl_result r;
    double v = NAN;
    gq_ppl_opts_default(&po);
    po.progress = 0;
    po.max_windows = max_windows;
    if (gq_model_open(&m, model) == GQ_OK) {
        if (gq_backend_init(&be, "cpu") == GQ_OK && gq_ppl_ids(&m, be, ids, n, &po, &r) == GQ_OK) {
            v = r.ppl;
            gq_ppl_result_free(&r);
        }
        gq_backend_free(be);
        gq_model_close(&m);
    }
    if (isnan(v)) fprintf(stderr, "ppl_of %s: %s\n", model, gq_errmsg());
    return v;
}

/* "cpu (OpenBLAS Cooperlake, 2 threads)": the arithmetic the figures come from. */
static const char *blas_name(void) {
    static char name[160];
    gq_backend *be = NULL;
    if (!name[0] && gq_backend_init(&be, "cpu") == GQ_OK) snprintf(name, sizeof name, "%s", gq_backend_name(be));
    gq_backend_free(be);
    return name;
}

/*
 * The acceptance figures on pycoder-5m, with bounds that hold on any CPU.
 *
 * GPTQ's figures depend on the arithmetic: which OpenBLAS kernel set runs (OpenBLAS picks it from
 * the CPU) and how many threads split the GEMMs change the summation order of the forward passes
 * and of the Hessians; codes within an ulp of a rounding tie flip and the error feedback carries the
 * change along. On one machine with one kernel set and thread count a run is bitwise reproducible
 * (test_reproducible); across them the same setting moves by up to 0.25% (int4) and 0.5% (int3).
 * bench/cpu_spread.sh measured every setting under the kernel sets Haswell, SkylakeX, Zen and
 * Cooperlake (OpenBLAS 0.3.21's pick for an AVX-512-BF16 CPU: CI's) with 1 and 2 threads: lo and hi
 * below, and docs/testing.md ("Numbers that hold on any CPU") has the table. The bound is
 * hi + (hi - lo): the largest figure measured plus the measured spread once more as margin for
 * arithmetics not measured (another CPU's kernels, more threads; 4 threads, measured afterwards,
 * fell inside [lo, hi]). The code of 2026-12-08 (the Hessians summed in another order) gave,
 * Haswell = Zen, 1 / 2 threads: min-max sym 11.5323 / 11.5333 (lo moved down to them) and asym
 * act-order + static groups 11.4587 / 11.4588 (inside). It stays close to the GPTQ paper's
 * implementation on the same tokens (ref: -0.04% to +0.61%) and well below what GPTQ degraded to rounding gives (RTN int4 asym
 * 11.8507, sym 12.0269: 2.5-3.7% above the int4 bounds; RTN int3 asym 14.8310: 15% above the
 * int3 bound), so a broken GPTQ still fails.
 * RTN has no calibration and does not move (11.8507 / 12.0269 in all 8 runs): it reproduces the
 * reference within 0.05%, fp16 scales and the v1 zero policy being all that can move it.
 */
/* gq's default profile (gq_quant_opts_default): --clip mse, act-order, static groups; int4 g128 sym,
 * plain v1 output. lo / hi: bench/cpu_spread.sh CASES=default, as for the rows above. With the code
 * of 2026-12-08 (Haswell = Zen here): 11.4791 / 11.4520 / 11.4433 / 11.4426 with 1 / 2 / 3 / 4
 * threads; with the chunked forward's first version (2026-12-07, 2 threads) Cooperlake 11.4377 and
 * SkylakeX 11.4528, kernel sets this machine can no longer run. The 1-thread figure moved from
 * 11.4540 to 11.4791 with the changes of the Hessian summation since, past the bound of then
 * (11.4682): GPTQ's error feedback carries an ulp's difference along, and one arithmetic lands
 * 0.3% above its neighbours. Its bound, 11.5205, is below the smallest min-max figure of the row
 * "GPTQ int4 g128 sym" (11.5323): the test fails if the default stops beating the reference's
 * setting. Every measured figure meets the fidelity issue's target for pycoder-5m (11.5072, 0.8 of
 * the reference's gap to fp16); the bound, the largest plus the spread, lies above it. */
#define DEFAULT_CASE                                                                                             \
    {"GPTQ int4 g128 sym, the default (mse, act-order, static groups)", GQ_METHOD_GPTQ, 4, 1, 1, 1, GQ_CLIP_MSE, \
     11.5873, 11.4377, 11.4791, 1}

static void test_acceptance(const char *tmp) {
    TEST_BEGIN("acceptance pycoder-5m");
    static const struct {
        const char *name;
        gq_method method;
        int bits, sym, act_order, static_groups;
        gq_clip clip;
        double ref;    /* the GPTQ paper's implementation (RTN: +-0.05% of it) */
        double lo, hi; /* GPTQ: smallest and largest figure of the measured arithmetics (docs/testing.md) */
        int slow;      /* 1: skipped with GQ_TEST_QUICK; 2: run only with GQ_TEST_FULL=1 */
    } cases[] = {
        {"RTN int4 g128 asym", GQ_METHOD_RTN, 4, 0, 0, 0, GQ_CLIP_MINMAX, 11.8508, 0, 0, 0},
        {"RTN int4 g128 sym", GQ_METHOD_RTN, 4, 1, 0, 0, GQ_CLIP_MINMAX, 12.0268, 0, 0, 2},
        {"GPTQ int4 g128 sym", GQ_METHOD_GPTQ, 4, 1, 0, 0, GQ_CLIP_MINMAX, 11.5873, 11.5323, 11.5586, 1},
        {"GPTQ int4 g128 asym", GQ_METHOD_GPTQ, 4, 0, 0, 0, GQ_CLIP_MINMAX, 11.5278, 11.4932, 11.5217, 2},
        {"GPTQ int4 g128 asym act-order static-groups", GQ_METHOD_GPTQ, 4, 0, 1, 1, GQ_CLIP_MINMAX, 11.4562, 11.4487,
         11.4708, 1},
        {"GPTQ int3 g128 asym", GQ_METHOD_GPTQ, 3, 0, 0, 0, GQ_CLIP_MINMAX, 12.8011, 12.7495, 12.8141, 1},
        DEFAULT_CASE,
    };
    size_t n = 0;
    int32_t *ids = SAN_BUILD ? NULL : stdlib_ids(&n);
    int quick = getenv("GQ_TEST_QUICK") != NULL, full = getenv("GQ_TEST_FULL") && !quick;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        if (SAN_BUILD) {
            TEST_SKIP("%s: sanitizer build (the plain build checks the figures)", cases[i].name);
            continue;
        }
        if (cases[i].slow && quick) {
            TEST_SKIP("%s: GQ_TEST_QUICK is set", cases[i].name);
            continue;
        }
        if (cases[i].slow == 2 && !full) { /* each ~1-2 minutes on 2 cores; CI's time limit */
            TEST_SKIP("%s: run with GQ_TEST_FULL=1 (its neighbours cover its code paths: RTN asym, GPTQ sym and "
                      "asym act-order)", cases[i].name);
            continue;
        }
        char *out = gq_path_join(tmp, "q5");
        gq_quant_opts o;
        base_opts(&o, gq_test_data("pycoder-5m"), out);
        o.force = 1;
        o.gptq.method = cases[i].method;
        o.gptq.bits = cases[i].bits;
        o.gptq.sym = cases[i].sym;
        o.gptq.act_order = cases[i].act_order;
        o.gptq.static_groups = cases[i].static_groups;
        o.gptq.clip = cases[i].clip;
        gq_quant_report rep;
        double t0 = gq_now();
        TEST_OK(gq_quantize_run(&o, &rep), "%s: quantize", cases[i].name);
        double tq = gq_now() - t0;
        gq_quant_report_free(&rep);
        double p = ppl_of(out, ids, n, 0);
        double bound = cases[i].hi + (cases[i].hi - cases[i].lo);
        fprintf(stderr, "  %s: ppl %.4f (reference %.4f, bound %.4f), quantize %.1f s, %s\n", cases[i].name, p,
                cases[i].ref, cases[i].method == GQ_METHOD_RTN ? cases[i].ref * 1.0005 : bound, tq, blas_name());
        if (cases[i].method == GQ_METHOD_RTN)
            TEST_NEAR(p, cases[i].ref, 5e-4 * cases[i].ref, "%s: ppl reproduces the reference within 0.05%%",
                      cases[i].name);
        else
            TEST_CHECK(p <= bound,
                       "%s: ppl %.4f <= %.4f: the largest figure measured over 4 OpenBLAS kernel sets x 1-2 threads "
                       "(%.4f) plus their spread (%.4f) as margin (docs/testing.md, \"Numbers that hold on any "
                       "CPU\"; reference %.4f; this run: %s)",
                       cases[i].name, p, bound, cases[i].hi, cases[i].hi - cases[i].lo, cases[i].ref, blas_name());
        free(out);
    }
    free(ids);
}

/* The written files, read back with a byte-level unpacker: codes, zeros, scales and g_idx
 * equal the quantizer's own (RTN on the source weights, computed here directly). */
static void test_format(const char *tmp) {
    TEST_BEGIN("format");
    char *out = gq_path_join(tmp, "fmt");
    gq_quant_opts o;
    base_opts(&o, gq_test_data("pycoder-5m"), out);
    o.gptq.method = GQ_METHOD_RTN;
    gq_quant_report rep;
    TEST_OK(gq_quantize_run(&o, &rep), "RTN sym quantize");
    TEST_CHECK(rep.n_modules == 28, "28 modules reported, got %d", rep.n_modules);
    gq_quant_report_free(&rep);

    gq_model src;
    gq_st *st = NULL;
    TEST_OK(gq_model_open(&src, gq_test_data("pycoder-5m")), "open source");
    TEST_OK(gq_st_open(&st, out), "open output");
    int all_sym_words = 1, checked = 0;
    for (int l = 0; l < src.cfg.n_layers && st; l++) {
        gq_module mods[8];
        int nmods = gq_layer_modules(&src.cfg, 0, l, mods, 8);
        for (int k = 0; k < nmods; k++) {
            float *w;
            int rows = mods[k].rows, cols = mods[k].cols;
            gq_model_load_module(&src, l, &mods[k], &w);
            gq_qresult r;
            gq_gptq_quantize(&o.gptq, w, rows, cols, NULL, &r);
            char prefix[224];
            snprintf(prefix, sizeof prefix, "model.layers.%d.%.96s", l, mods[k].name);
            unpacked u;
            int ok = unpack4(st, prefix, rows, cols, 0, &u);
            TEST_CHECK(ok, "%s: qweight/qzeros/scales/g_idx present with the v1 shapes", prefix);
            if (ok) {
                int codes_eq = !memcmp(u.codes, r.codes, (size_t)rows * cols), meta_eq = u.ngroups == r.ngroups;
                for (int i = 0; i < r.ngroups * rows && meta_eq; i++)
                    meta_eq = u.zeros[i] == r.zeros[i] && u.scales[i] == r.scales[i];
                for (int c = 0; c < cols && meta_eq; c++) meta_eq = u.g_idx[c] == c / 128;
                TEST_CHECK(codes_eq && meta_eq, "%s: unpacked codes %s, zeros/scales/g_idx %s", prefix,
                           codes_eq ? "equal" : "DIFFER", meta_eq ? "equal" : "DIFFER");
                char nm[256];
                snprintf(nm, sizeof nm, "%s.qzeros", prefix);
                const gq_st_tensor *qz = gq_st_find(st, nm);
                for (int64_t i = 0; qz && i < qz->numel; i++) all_sym_words &= ((const uint32_t *)qz->data)[i] == 0x77777777u;
                checked++;
                unpacked_free(&u);
            }
            gq_qresult_free(&r);
            gq_free_aligned(w);
        }
    }
    TEST_CHECK(checked == 28 && all_sym_words, "symmetric 4-bit: every qzeros word is 0x77777777 (%d modules)", checked);
    TEST_CHECK(st && gq_st_find(st, "model.embed_tokens.weight") && !gq_st_find(st, "model.layers.0.mlp.up_proj.weight"),
               "unquantized tensors copied, quantized linears have no .weight");
    TEST_CHECK(st && gq_st_meta(st, "format") && !strcmp(gq_st_meta(st, "format"), "pt"), "__metadata__ format pt");
    gq_st_close(st);
    gq_model_close(&src);

    json_t *cfg = load_json(out, "config.json"), *qc = load_json(out, "quantize_config.json");
    json_t *q = cfg ? json_object_get(cfg, "quantization_config") : NULL;
    TEST_CHECK(q && qc, "config.json has quantization_config, quantize_config.json exists");
    if (q && qc) {
        const char *keys[] = {"bits", "group_size", "desc_act", "sym", "static_groups", "true_sequential",
                              "damp_percent", "quant_method", "checkpoint_format"};
        for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
            TEST_CHECK(json_object_get(q, keys[i]) && json_equal(json_object_get(q, keys[i]), json_object_get(qc, keys[i])),
                       "quantization_config.%s present and equal in both files", keys[i]);
        TEST_CHECK(json_integer_value(json_object_get(q, "bits")) == 4 &&
                       json_integer_value(json_object_get(q, "group_size")) == 128 &&
                       json_is_true(json_object_get(q, "sym")) && json_is_false(json_object_get(q, "desc_act")) &&
                       !strcmp(json_string_value(json_object_get(q, "quant_method")), "gptq") &&
                       !strcmp(json_string_value(json_object_get(q, "checkpoint_format")), "gptq"),
                   "values: 4 bits, group 128, sym, no desc_act, gptq v1");
        TEST_CHECK(json_integer_value(json_object_get(cfg, "num_hidden_layers")) == 4, "the rest of config.json kept");
    }
    json_decref(cfg);
    json_decref(qc);
    json_t *rj = load_json(out, "gq_report.json");
    TEST_CHECK(rj && json_array_size(json_object_get(rj, "modules")) == 28 && json_object_get(rj, "seconds") &&
                   json_object_get(rj, "peak_host_bytes") && json_object_get(rj, "settings"),
               "gq_report.json: 28 modules, timings, peak memory, settings");
    json_decref(rj);
    char *tj = gq_path_join(out, "tokenizer.json");
    TEST_CHECK(gq_path_exists(tj), "tokenizer.json copied");
    free(tj);

    /* an existing output is not overwritten without --force */
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_EXISTS, "output already exists (use --force");
    gq_quant_report_free(&rep);
    /* the library refuses a missing calibration path (it crashed before), also for RTN */
    const char *calib = o.calib_path;
    o.calib_path = NULL;
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_ARG, "no calibration file");
    gq_quant_report_free(&rep);
    o.calib_path = calib;
    free(out);
}

/* Asymmetric zeros: v1 cannot store a zero of 0 (it stores zero - 1): gq shifts such a group's
 * grid (zero 1, scale (max - min) / (maxq - 1)); gptq_v2 stores the true zero 0. Row 0 of every
 * q_proj of the tiny model is non-negative in its first 128 weights: a zero-0 group. */
static void test_zero_policy(const char *tmp) {
    TEST_BEGIN("zero policy");
    char *model = gq_path_join(tmp, "tiny"), *o1 = gq_path_join(tmp, "tiny-v1"), *o2 = gq_path_join(tmp, "tiny-v2");
    write_tiny(model, 0);
    gq_quant_opts o;
    base_opts(&o, model, o1);
    o.gptq.method = GQ_METHOD_RTN;
    o.gptq.sym = 0;
    o.gptq.group_size = 32;
    gq_quant_report rep;
    TEST_OK(gq_quantize_run(&o, &rep), "asym v1");
    gq_quant_report_free(&rep);
    o.out_dir = o2;
    o.v2 = 1;
    o.gptq.zero_policy = GQ_ZERO_FREE;
    TEST_OK(gq_quantize_run(&o, &rep), "asym gptq_v2");
    gq_quant_report_free(&rep);
    gq_st *s1 = NULL, *s2 = NULL;
    TEST_OK(gq_st_open(&s1, o1), "open v1");
    TEST_OK(gq_st_open(&s2, o2), "open v2");
    unpacked u1, u2;
    int ok = s1 && s2 && unpack4(s1, "model.layers.0.self_attn.q_proj", TNH * THD, TH, 0, &u1) &&
             unpack4(s2, "model.layers.0.self_attn.q_proj", TNH * THD, TH, 1, &u2);
    TEST_CHECK(ok, "unpack q_proj of both");
    if (ok) {
        int min1 = 99, zero0 = 0;
        for (int i = 0; i < u1.ngroups * u1.rows; i++) min1 = u1.zeros[i] < min1 ? u1.zeros[i] : min1;
        for (int i = 0; i < u2.ngroups * u2.rows; i++) zero0 += u2.zeros[i] == 0;
        TEST_CHECK(min1 >= 1, "v1: every zero >= 1 (smallest %d)", min1);
        TEST_CHECK(zero0 >= 1 && u2.zeros[0] == 0 && u1.zeros[0] == 1, "v2 keeps zero 0 (%d groups); v1 shifts it to 1",
                   zero0);
        /* the shifted grid still covers the group: dequantized within half a step */
        gq_model m;
        float *w;
        gq_module mods[8];
        gq_model_open(&m, model);
        gq_layer_modules(&m.cfg, 0, 0, mods, 8);
        gq_model_load_module(&m, 0, &mods[0], &w); /* q_proj */
        double worst = 0;
        for (int k = 0; k < 32; k++) {
            float deq = u1.scales[0] * (float)(u1.codes[k] - u1.zeros[0]);
            double e = fabs(deq - w[k]) / u1.scales[0];
            worst = e > worst ? e : worst;
        }
        TEST_CHECK(worst <= 0.5 + 1e-3, "v1 shifted group: |w - deq| <= scale / 2 (worst %.3f steps)", worst);
        gq_free_aligned(w);
        gq_model_close(&m);
        unpacked_free(&u1);
        unpacked_free(&u2);
    }
    json_t *cfg = load_json(o2, "config.json");
    const char *fmt = json_string_value(json_object_get(json_object_get(cfg, "quantization_config"), "checkpoint_format"));
    TEST_CHECK(fmt && !strcmp(fmt, "gptq_v2"), "v2 output says checkpoint_format gptq_v2, got %s", fmt ? fmt : "none");
    json_decref(cfg);
    gq_st_close(s1);
    gq_st_close(s2);
    free(model), free(o1), free(o2);
}

/* --resume continues after the last finished layer and gives bitwise the output of an
 * uninterrupted run; other settings are refused; without --resume the partial run is dropped. */
static void test_resume(const char *tmp) {
    TEST_BEGIN("resume");
    char *model = gq_path_join(tmp, "tiny"), *full = gq_path_join(tmp, "r-full"), *res = gq_path_join(tmp, "r-res");
    write_tiny(model, 0);
    gq_quant_opts o;
    base_opts(&o, model, full);
    o.nsamples = 8;
    o.seqlen = 128;
    o.gptq.group_size = 32; /* a divisor of the tiny model's widths 64, 64, 128 */
    o.gptq.act_order = 1;
    o.gptq.static_groups = 0; /* a permuted g_idx in the resumed layers too */
    gq_quant_report rep;
    TEST_OK(gq_quantize_run(&o, &rep), "uninterrupted run");
    gq_quant_report_free(&rep);
    o.out_dir = res;
    o.max_layers = 1;
    TEST_OK(gq_quantize_run(&o, &rep), "run stopped after layer 1");
    gq_quant_report_free(&rep);
    char *partial = gq_malloc(strlen(res) + 16);
    sprintf(partial, "%s.partial", res);
    TEST_CHECK(gq_is_dir(partial) && !gq_path_exists(res), "the stopped run left %s and no output", partial);
    o.max_layers = 0;
    o.resume = 1;
    o.gptq.damp = 0.02;
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_ARG, "the interrupted run used other settings");
    gq_quant_report_free(&rep);
    o.gptq.damp = 0.01;
    TEST_OK(gq_quantize_run(&o, &rep), "resumed run");
    TEST_CHECK(rep.layers_resumed == 1 && rep.n_modules == 14,
               "1 layer restored, 14 modules reported (the restored layer's listed too) (%d, %d)", rep.layers_resumed,
               rep.n_modules);
    gq_quant_report_free(&rep);
    char *a = gq_path_join(full, "model.safetensors"), *b = gq_path_join(res, "model.safetensors");
    TEST_CHECK(test_files_equal(a, b), "resumed output is bitwise the uninterrupted one");
    /* activations kept on the host and streamed through the backend one sequence at a time
     * (what a GPU too small for them gets): the same operations, so bitwise the same output */
    char *st = gq_path_join(tmp, "r-stream"), *c = gq_path_join(st, "model.safetensors");
    setenv("GQ_STREAM_ACTIVATIONS", "1", 1);
    gq_knobs_reload();
    o.out_dir = st;
    o.resume = 0;
    TEST_OK(gq_quantize_run(&o, &rep), "run with streamed activations");
    unsetenv("GQ_STREAM_ACTIVATIONS");
    gq_knobs_reload();
    gq_quant_report_free(&rep);
    TEST_CHECK(test_files_equal(a, c), "streamed activations give bitwise the resident run's output");
    free(st), free(c);
    TEST_CHECK(!gq_path_exists(partial), "partial directory removed after success");
    free(a), free(b);
    /* a new run without --resume drops an old partial directory */
    o.resume = 0;
    o.max_layers = 1;
    o.out_dir = full;
    o.force = 1;
    TEST_OK(gq_quantize_run(&o, &rep), "stopped run over an existing output (--force)");
    gq_quant_report_free(&rep);
    char *p2 = gq_malloc(strlen(full) + 16);
    sprintf(p2, "%s.partial", full);
    TEST_CHECK(gq_path_exists(full) && gq_is_dir(p2), "the old output stays until a run completes");
    free(p2), free(partial), free(model), free(full), free(res);
}

/* Bytes of two files that differ (SIZE_MAX: unreadable or of other sizes), and the size. */
static size_t bytes_differ(const char *a, const char *b, size_t *n) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0, d = SIZE_MAX;
    if (gq_read_file(a, &x, &nx) == GQ_OK && gq_read_file(b, &y, &ny) == GQ_OK && nx == ny)
        for (size_t i = d = 0; i < nx; i++) d += x[i] != y[i];
    free(x), free(y);
    *n = nx;
    return d;
}

/* Loading ahead, and several devices through the pipeline (gq/dp.h; 2 CPU ranks summing through host memory, the
 * tests' stand-in for --device cuda:0,1): the run completes, its checkpoint is the one-device
 * checkpoint up to the Hessians' summation order (the layout and header bitwise, a few codes or
 * scales at most: DP_BYTES_FRAC), a 2-device run stopped after layer 1 and resumed on 2 devices
 * gives bitwise the uninterrupted 2-device run, and a resume on 1 device is refused (the sums
 * would change order mid-run). DP_BYTES_FRAC 2%: Hessians equal to ~1e-7 relative
 * (test_qlayer_chunk 8: 3 ranks <= 1e-7) flip a code only where GPTQ's running value sits that
 * close to a rounding boundary; the header and the unchanged codes are most of the file. */
#define DP_BYTES_FRAC 0.02
static void test_devices(const char *tmp) {
    TEST_BEGIN("several devices");
    char *model = gq_path_join(tmp, "tiny"), *one = gq_path_join(tmp, "d-one"), *two = gq_path_join(tmp, "d-two"),
         *res = gq_path_join(tmp, "d-res");
    write_tiny(model, 0);
    gq_quant_opts o;
    gq_quant_report rep;
    base_opts(&o, model, one);
    o.nsamples = 8;
    o.seqlen = 128;
    o.gptq.group_size = 32;
    TEST_OK(gq_quantize_run(&o, &rep), "one device");
    TEST_CHECK(rep.layers_loaded_ahead == 0, "no layer loaded ahead on the CPU by default (GQ_LOAD_AHEAD=auto: GPUs "
               "only): %d", rep.layers_loaded_ahead);
    gq_quant_report_free(&rep);
    /* the next layer's weights loaded on their own thread and backend (GQ_LOAD_AHEAD=1: also on the
     * CPU) while a layer computes: the same operations on the same values, so bitwise the same files */
    char *ahead = gq_path_join(tmp, "d-ahead"), *fa = gq_path_join(ahead, "model.safetensors");
    setenv("GQ_LOAD_AHEAD", "1", 1);
    gq_knobs_reload();
    o.out_dir = ahead;
    TEST_OK(gq_quantize_run(&o, &rep), "one device, the next layer loaded ahead");
    TEST_CHECK(rep.layers_loaded_ahead == TL - 1, "every layer but the first loaded ahead: %d of %d",
               rep.layers_loaded_ahead, TL);
    gq_quant_report_free(&rep);
    unsetenv("GQ_LOAD_AHEAD");
    gq_knobs_reload();
    char *f1 = gq_path_join(one, "model.safetensors");
    TEST_CHECK(test_files_equal(f1, fa), "loading ahead gives bitwise the same model.safetensors");
    free(ahead), free(fa), free(f1);
    o.out_dir = two;
    o.dp_cpu_ranks = 2;
    TEST_OK(gq_quantize_run(&o, &rep), "two devices");
    TEST_CHECK(rep.n_modules == 14, "two devices: 14 modules reported (%d)", rep.n_modules);
    gq_quant_report_free(&rep);
    char *a = gq_path_join(one, "model.safetensors"), *b = gq_path_join(two, "model.safetensors");
    size_t n = 0, d = bytes_differ(a, b, &n);
    fprintf(stderr, "note: two devices vs one: %zu of %zu checkpoint bytes differ\n", d, n);
    TEST_CHECK(d != SIZE_MAX && (double)d <= DP_BYTES_FRAC * (double)n,
               "two devices vs one: %zu of %zu bytes differ (<= %.0f%%)", d, n, 100 * DP_BYTES_FRAC);
    o.out_dir = res;
    o.max_layers = 1;
    TEST_OK(gq_quantize_run(&o, &rep), "two devices, stopped after layer 1");
    gq_quant_report_free(&rep);
    o.max_layers = 0;
    o.resume = 1;
    o.dp_cpu_ranks = 0;
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_ARG, "devices");
    gq_quant_report_free(&rep);
    o.dp_cpu_ranks = 2;
    TEST_OK(gq_quantize_run(&o, &rep), "two devices, resumed");
    TEST_CHECK(rep.layers_resumed == 1, "1 layer restored (%d)", rep.layers_resumed);
    gq_quant_report_free(&rep);
    char *c = gq_path_join(res, "model.safetensors");
    TEST_CHECK(test_files_equal(b, c), "the resumed two-device output is bitwise the uninterrupted one");
    free(a), free(b), free(c), free(model), free(one), free(two), free(res);
}

/* The same settings twice on one machine give bitwise the same files and the same perplexity
 * bits. (The figures move with the OpenBLAS kernel set and the thread count, see
 * test_acceptance, but never from one run to the next: gq's parallel loops write disjoint outputs
 * or reduce in a fixed order, and OpenBLAS splits its work by the thread count alone.)
 * GPTQ act-order + static groups, asymmetric, on 16 x 512 calibration tokens; 8 windows. */
static void test_reproducible(const char *tmp) {
    TEST_BEGIN("bitwise reproducible");
    char *a = gq_path_join(tmp, "rep-a"), *b = gq_path_join(tmp, "rep-b");
    gq_quant_opts o;
    gq_quant_report rep;
    base_opts(&o, gq_test_data("pycoder-5m"), a);
    o.nsamples = 16;
    o.seqlen = 512;
    o.gptq.sym = 0;
    o.gptq.act_order = 1;
    o.gptq.static_groups = 1;
    TEST_OK(gq_quantize_run(&o, &rep), "first run");
    gq_quant_report_free(&rep);
    o.out_dir = b;
    TEST_OK(gq_quantize_run(&o, &rep), "second run");
    gq_quant_report_free(&rep);
    char *fa = gq_path_join(a, "model.safetensors"), *fb = gq_path_join(b, "model.safetensors");
    TEST_CHECK(test_files_equal(fa, fb), "the two runs wrote bitwise the same model.safetensors");
    size_t n = 0;
    int32_t *ids = stdlib_ids(&n);
    double p1 = ppl_of(a, ids, n, 8), p2 = ppl_of(a, ids, n, 8), p3 = ppl_of(b, ids, n, 8);
    TEST_CHECK(isfinite(p1) && !memcmp(&p1, &p2, sizeof p1) && !memcmp(&p1, &p3, sizeof p1),
               "the same perplexity bits: %.17g, again %.17g, of the second output %.17g", p1, p2, p3);
    free(ids), free(fa), free(fb), free(a), free(b);
}

static void test_bad_input(const char *tmp) {
    TEST_BEGIN("bad input");
    char *model = gq_path_join(tmp, "bad"), *out = gq_path_join(tmp, "bad-out");
    gq_quant_opts o;
    gq_quant_report rep;
    base_opts(&o, model, out);
    o.nsamples = 4;
    o.seqlen = 64;
    o.gptq.group_size = 32; /* a divisor of the tiny model's widths 64, 64, 128 */
    write_tiny(model, 1);
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_NUMERIC, "tensor 'model.layers.1.mlp.up_proj.weight'");
    TEST_CHECK(strstr(gq_errmsg(), "index 777") != NULL, "NaN error gives the index: %s", gq_errmsg());
    gq_quant_report_free(&rep);
    TEST_CHECK(!gq_path_exists(out), "no output after a failed run");
    write_tiny(model, 2);
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_FORMAT, "tensor 'model.layers.1.mlp.down_proj.weight' [64, 128] is missing");
    gq_quant_report_free(&rep);
    write_tiny(model, 3);
    o.force = 1;
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_FORMAT, "expected shape [32, 64], got [33, 64]");
    gq_quant_report_free(&rep);

    write_tiny(model, 0);
    char *empty = gq_path_join(tmp, "empty.jsonl"), *badl = gq_path_join(tmp, "bad.jsonl");
    gq_write_file_atomic(empty, "", 0);
    const char *lines = "{\"text\": \"def f(x):\\n    return x\\n\"}\n{\"text\": 42}\n";
    gq_write_file_atomic(badl, lines, strlen(lines));
    o.calib_path = empty;
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_DATA, "empty.jsonl");
    gq_quant_report_free(&rep);
    o.calib_path = badl;
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_DATA, "bad.jsonl:2");
    gq_quant_report_free(&rep);
    o.calib_path = "/nonexistent/calib.jsonl";
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_IO, "/nonexistent/calib.jsonl");
    gq_quant_report_free(&rep);
    o.calib_path = calib_path();
    o.gptq.group_size = 0;
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_ARG, "--group-size: expected -1");
    gq_quant_report_free(&rep);
    o.gptq.group_size = 32;
    o.model_dir = "/nonexistent/model";
    TEST_FAILS(gq_quantize_run(&o, &rep), GQ_ERR_IO, "/nonexistent/model");
    gq_quant_report_free(&rep);
    free(empty), free(badl), free(model), free(out);
}

int main(void) {
    gq_log_set_level(getenv("GQ_TEST_VERBOSE") ? GQ_LOG_INFO : GQ_LOG_ERROR);
    const char *tmp = gq_test_tmpdir("quantize");
    char *keep = gq_strdup(tmp);
    test_format(keep);
    test_zero_policy(keep);
    test_resume(keep);
    test_devices(keep);
    test_reproducible(keep);
    test_bad_input(keep);
    test_acceptance(keep);
    gq_rmtree(keep);
    free(keep);
    return TEST_REPORT();
}
