/*
 * test_nonfinite.c -- NaN and Inf activations: never undefined behaviour, never a silently NaN
 * perplexity or checkpoint, always an error that names the layer, the op and the token.
 *
 * (a) gq_cpu_expf (src/compute/cpu/backend_cpu.h), the exp of the CPU softmax, NLL and SwiGLU: NaN gives NaN,
 *     +-Inf and huge inputs saturate, finite inputs give what they always gave (a copy of the
 *     original formula, bit for bit) within 2 ulp of expf. Run under `make SAN=1` (UBSan halts
 *     on the first error there) this is the check that a NaN no longer reaches a left shift of a
 *     negative value.
 * (b) the CPU ops fed NaN/Inf (attention, SwiGLU, the NLL head): the NaN comes out, no UB.
 * (c) whole checkpoints (tiny random Llamas written here):
 *     - rms_norm_eps = 0 and an all-zero embedding row (a token of the calibration and evaluation
 *       texts): rmsnorm gives 0 * (1 / 0) at that token of layer 0. config.json with 0 is
 *       refused by the loader, naming rms_norm_eps (exit status non-zero); with the epsilon set
 *       to 0 after loading, the perplexity fails with GQ_ERR_NUMERIC naming the window, layer
 *       0, input_layernorm and the token. (A loader that accepted 0 would get the same error
 *       from `gq quantize` and `gq ppl`: checked then.)
 *     - f32 weights with input_layernorm of layer 1 at 1e30: finite activations whose attention
 *       scores overflow to Inf, softmax makes NaN: both commands name layer 1 and attention.
 *     - a NaN weight: refused when the layer is read, naming the tensor.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "compute/cpu/backend_cpu.h"
#include "gq/ppl.h"
#include "gq/quantize.h"
#include "gq/st.h"
#include "gq/tokenizer.h"
#include "test.h"

/* ---- (a) gq_cpu_expf ------------------------------------------------------------------------ */

/* The formula before NaN was handled (UB for NaN only): the reference for finite inputs. */
static float expf_orig(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = __builtin_fmaf(n, -0.693359375f, x);
    r = __builtin_fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = __builtin_fmaf(p, r, 1.3981999507e-3f);
    p = __builtin_fmaf(p, r, 8.3334519073e-3f);
    p = __builtin_fmaf(p, r, 4.1665795894e-2f);
    p = __builtin_fmaf(p, r, 1.6666665459e-1f);
    p = __builtin_fmaf(p, r, 5.0000001201e-1f);
    p = __builtin_fmaf(p, r * r, r) + 1.0f;
    int32_t bits = ((int32_t)n + 127) * (1 << 23);
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

static float f_of(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static void test_expf(void) {
    TEST_BEGIN("gq_cpu_expf");
    /* every input class, in a vectorised loop as the ops use it */
    float in[16] = {NAN,   -NAN,   INFINITY, -INFINITY, 1e30f, -1e30f, FLT_MAX, -FLT_MAX,
                    88.3f, -87.3f, 0.0f,     -0.0f,     1.0f,  -1.0f,  1e-40f,  f_of(0x7fc00001u)};
    float out[16];
#pragma omp simd
    for (int i = 0; i < 16; i++) out[i] = gq_cpu_expf(in[i]);
    TEST_CHECK(isnan(out[0]) && isnan(out[1]) && isnan(out[15]), "NaN in, NaN out (%g %g %g)", out[0], out[1], out[15]);
    float hi = gq_cpu_expf(88.3f), lo = gq_cpu_expf(-87.3f);
    TEST_CHECK(out[2] == hi && out[4] == hi && out[6] == hi && isfinite(hi) && hi > 2e38f,
               "+Inf and huge inputs saturate at e^88.3 = %g (got %g %g %g)", hi, out[2], out[4], out[6]);
    TEST_CHECK(out[3] == lo && out[5] == lo && out[7] == lo && lo > 0 && lo < 2e-38f,
               "-Inf and huge negative inputs saturate at e^-87.3 = %g (got %g %g %g)", lo, out[3], out[5], out[7]);
    TEST_CHECK(out[10] == 1.0f && out[11] == 1.0f && out[14] == 1.0f, "e^0 = e^-0 = e^denormal = 1");
    /* finite inputs: bit for bit the original formula, within 2 ulp of expf in range */
    long differ = 0, tested = 0;
    double worst_ulp = 0;
    for (uint64_t u = 0; u < 0x100000000ull; u += 4099) {
        float x = f_of((uint32_t)u);
        if (isnan(x)) continue;
        float a = gq_cpu_expf(x), b = expf_orig(x);
        differ += memcmp(&a, &b, sizeof a) != 0;
        tested++;
        if (x >= -87.3f && x <= 88.3f) {
            double e = exp((double)x), ulp = ldexp(1.0, ilogb(e) - 23);
            double d = fabs((double)a - e) / ulp;
            worst_ulp = d > worst_ulp ? d : worst_ulp;
        }
    }
    TEST_CHECK(differ == 0, "finite inputs: %ld of %ld differ from the original formula", differ, tested);
    TEST_CHECK(worst_ulp <= 2.0, "within 2 ulp of exp on [-87.3, 88.3] (worst %.2f ulp)", worst_ulp);
}

/* ---- (b) the CPU ops on NaN / Inf ------------------------------------------------------------- */

static int count_nan(const float *v, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n; i++) k += isnan(v[i]) != 0;
    return k;
}

static void test_ops(void) {
    TEST_BEGIN("CPU ops on NaN/Inf");
    gq_backend *be = NULL;
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");
    if (!be) return;
    enum { T = 8, HD = 16, NH = 2 };
    float q[T][NH * HD], k[T][HD], v[T][HD], o[T][NH * HD];
    for (int t = 0; t < T; t++)
        for (int j = 0; j < HD; j++) {
            q[t][j] = q[t][HD + j] = (float)((t + j) % 5) * 0.1f;
            k[t][j] = (float)((t * j) % 3) * 0.1f;
            v[t][j] = (float)j;
        }
    k[3][2] = NAN; /* key 3: queries 3.. see a NaN score */
    TEST_OK(gq_be_attention(be, o, NH * HD, q, NH * HD, k, HD, v, HD, T, T, NH, 1, HD), "attention");
    TEST_CHECK(count_nan(&o[0][0], 3 * NH * HD) == 0 && count_nan(&o[3][0], 5 * NH * HD) == 5 * NH * HD,
               "attention: queries 0-2 finite, 3-7 NaN (a NaN key)");
    k[3][2] = 0.1f;
    q[5][0] = INFINITY; /* Inf * 0 and Inf - Inf in the scores of query 5, head 0 */
    TEST_OK(gq_be_attention(be, o, NH * HD, q, NH * HD, k, HD, v, HD, T, T, NH, 1, HD), "attention");
    TEST_CHECK(count_nan(&o[5][0], HD) == HD && count_nan(&o[5][HD], HD) == 0,
               "attention: an Inf query gives NaN in its head only");

    float gu[8] = {NAN, INFINITY, -INFINITY, 1e30f, 1, 1, 1, 1}, a[4]; /* [gate | up] */
    TEST_OK(gq_be_swiglu(be, a, 4, gu, 8, 1, 4), "swiglu");
    TEST_CHECK(isnan(a[0]) && a[1] == INFINITY && a[2] == -INFINITY && a[3] == 1e30f,
               "swiglu: silu(NaN) NaN, silu(+Inf) +Inf, silu(-Inf) -Inf, silu(1e30) 1e30 (got %g %g %g %g)", a[0], a[1],
               a[2], a[3]);

    float lm[4][4] = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}}, x[2][4] = {{1, 2, 3, 4}, {1, NAN, 0, 0}};
    gq_bweight w;
    TEST_OK(gq_be_weight_upload(be, &w, &lm[0][0], 4, 4), "lm_head");
    int32_t tg[2] = {0, 3};
    double nll = 0;
    int64_t cnt = 0;
    TEST_OK(gq_be_nll(be, x, 4, 2, &w, tg, &nll, &cnt, NULL), "nll");
    TEST_CHECK(isnan(nll) && cnt == 2, "nll: a NaN logit (not the target, not the first) makes the sum NaN (%g)", nll);
    gq_be_weight_free(be, &w);
    gq_backend_free(be);
}

/* ---- (c) checkpoints ----------------------------------------------------------------------- */

enum { TH = 64, TI = 128, TNH = 2, TKV = 1, THD = 32, TL = 2, TV = 8192 };

typedef struct {
    const char *eps;   /* rms_norm_eps as written in config.json */
    gq_dtype dtype;    /* F16 or F32 */
    int zero_row;      /* an all-zero embedding row (token id), -1 none */
    double ln1_layer1; /* value of every input_layernorm weight of layer 1 */
    int nan_weight;    /* a NaN in layer 1's up_proj */
} tiny_spec;

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static double rnd(void) { /* uniform [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

/* One tensor: random values * scale (scale 0: every value `fill`). */
static void add_tensor(gq_st_item *it, char *name, void **buf, const tiny_spec *sp, const char *nm, int rows, int cols,
                       double scale, double fill) {
    size_t n = (size_t)rows * (cols ? cols : 1), esz = sp->dtype == GQ_DT_F32 ? 4 : 2;
    *buf = gq_malloc(n * esz);
    for (size_t i = 0; i < n; i++) {
        float v = (float)(scale == 0 ? fill : scale * rnd());
        if (sp->dtype == GQ_DT_F32)
            ((float *)*buf)[i] = v;
        else
            ((uint16_t *)*buf)[i] = gq_f32_to_f16(v);
    }
    snprintf(name, 96, "%s", nm);
    memset(it, 0, sizeof *it);
    it->name = name;
    it->dtype = sp->dtype;
    it->ndim = cols ? 2 : 1;
    it->shape[0] = rows;
    it->shape[1] = cols;
    it->data = *buf;
}

static void write_config(const char *dir, const tiny_spec *sp) {
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":%d,\"intermediate_size\":%d,"
             "\"num_hidden_layers\":%d,\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"vocab_size\":%d,"
             "\"rms_norm_eps\":%s,\"rope_theta\":10000.0,\"tie_word_embeddings\":true,\"bos_token_id\":1,"
             "\"eos_token_id\":2,\"torch_dtype\":\"%s\"}",
             TH, TI, TL, TNH, TKV, TV, sp->eps, sp->dtype == GQ_DT_F32 ? "float32" : "float16");
    char *p = gq_path_join(dir, "config.json");
    gq_write_file_atomic(p, cfg, strlen(cfg));
    free(p);
    static const char *tokfiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    for (int i = 0; i < 3; i++) {
        char *s = gq_path_join(gq_test_data("pycoder-5m"), tokfiles[i]), *d = gq_path_join(dir, tokfiles[i]);
        gq_copy_file(s, d);
        free(s);
        free(d);
    }
}

static void write_tiny(const char *dir, const tiny_spec *sp) {
    gq_rmtree(dir);
    gq_mkdirs(dir);
    write_config(dir, sp);
    gq_st_item items[32];
    char names[32][96], nm[96];
    void *bufs[32];
    int n = 0;
    add_tensor(&items[n], names[n], &bufs[n], sp, "model.embed_tokens.weight", TV, TH, 1.0, 0), n++;
    if (sp->zero_row >= 0)
        memset((char *)bufs[0] + (size_t)sp->zero_row * TH * (sp->dtype == GQ_DT_F32 ? 4 : 2), 0,
               (size_t)TH * (sp->dtype == GQ_DT_F32 ? 4 : 2));
    add_tensor(&items[n], names[n], &bufs[n], sp, "model.norm.weight", TH, 0, 0, 1.0), n++;
    static const struct {
        const char *name;
        int rows, cols;
    } lin[7] = {{"self_attn.q_proj", TNH * THD, TH},
                {"self_attn.k_proj", TKV * THD, TH},
                {"self_attn.v_proj", TKV * THD, TH},
                {"self_attn.o_proj", TH, TNH * THD},
                {"mlp.gate_proj", TI, TH},
                {"mlp.up_proj", TI, TH},
                {"mlp.down_proj", TH, TI}};
    for (int l = 0; l < TL; l++) {
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        add_tensor(&items[n], names[n], &bufs[n], sp, nm, TH, 0, 0, l == 1 ? sp->ln1_layer1 : 1.0), n++;
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        add_tensor(&items[n], names[n], &bufs[n], sp, nm, TH, 0, 0, 1.0), n++;
        for (int k = 0; k < 7; k++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, lin[k].name);
            add_tensor(&items[n], names[n], &bufs[n], sp, nm, lin[k].rows, lin[k].cols, 0.15, 0), n++;
            if (sp->nan_weight && l == 1 && k == 5) {
                if (sp->dtype == GQ_DT_F32)
                    ((float *)bufs[n - 1])[77] = NAN;
                else
                    ((uint16_t *)bufs[n - 1])[77] = 0x7e00;
            }
        }
    }
    char *p = gq_path_join(dir, "model.safetensors");
    if (gq_st_write_file(p, items, n, NULL, 0)) fprintf(stderr, "write_tiny: %s\n", gq_errmsg());
    free(p);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

/* 64 ids from [100, 8000) with `id` at position `at` (-1: none). */
static void make_ids(int32_t *ids, int n, int id, int at) {
    for (int i = 0; i < n; i++) ids[i] = 100 + (int32_t)((i * 7919u) % 7900u);
    if (at >= 0) ids[at] = id;
}

/* Perplexity of windows of 64 ids through the library: the status, the message in msg. eps >= 0
 * replaces the model's rms_norm_eps after loading (a bad value that got past the loader). */
static int ppl_status(const char *model, const int32_t *ids, int n, float eps, char *msg, size_t cap) {
    gq_model m;
    gq_backend *be = NULL;
    gq_ppl_opts po;
    gq_ppl_result r;
    gq_ppl_opts_default(&po);
    po.progress = 0;
    po.seqlen = 64;
    int rc = gq_model_open(&m, model);
    if (rc == GQ_OK) {
        if (eps >= 0) m.cfg.rms_eps = eps;
        rc = gq_backend_init(&be, "cpu");
        if (rc == GQ_OK) rc = gq_ppl_ids(&m, be, ids, (size_t)n, &po, &r);
        if (rc == GQ_OK) {
            fprintf(stderr, "  %s: ppl %g\n", model, r.ppl);
            gq_ppl_result_free(&r);
        }
        gq_backend_free(be);
        gq_model_close(&m);
    }
    snprintf(msg, cap, "%s", rc ? gq_errmsg() : "");
    if (rc) fprintf(stderr, "  ppl error: %s\n", msg);
    return rc;
}

/* The quantizer (GPTQ, 4 samples of 64 tokens of calib) on model: the status. */
static int quantize_status(const char *model, const char *out, const char *calib) {
    gq_quant_opts o;
    gq_quant_opts_default(&o);
    o.model_dir = model;
    o.out_dir = out;
    o.calib_path = calib;
    o.device = "cpu";
    o.nsamples = 4;
    o.seqlen = 64;
    o.gptq.group_size = 32;
    o.force = 1;
    gq_quant_report rep;
    int rc = gq_quantize_run(&o, &rep);
    gq_quant_report_free(&rep);
    if (rc) fprintf(stderr, "  quantize error: %s\n", gq_errmsg());
    return rc;
}

/* The gq binary on cmd: its exit status, its output in out (cap bytes); -1 without GQ_BIN. */
static int run_cli(const char *args, char *out, size_t cap) {
    const char *bin = getenv("GQ_BIN");
    if (!bin) return -1;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", bin, args);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = 0;
    int st = pclose(f);
    const char *e = strstr(out, "error: ");
    fprintf(stderr, "  gq %.8s...: %.300s", args, e ? e : "(no error line)\n");
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* `gq ppl` and `gq quantize` on model exit non-zero and say want (skipped without GQ_BIN). */
static void check_cli(const char *tmp, const char *model, const char *text, const char *calib, const char *want_ppl,
                      const char *want_q) {
    char args[1536], out[8192];
    snprintf(args, sizeof args, "ppl --model %s --text %s --seqlen 64", model, text);
    int st = run_cli(args, out, sizeof out);
    if (st < 0) {
        TEST_SKIP("the gq binary: GQ_BIN is not set (make test sets it)");
        return;
    }
    TEST_CHECK(st != 0 && strstr(out, want_ppl), "gq ppl exits non-zero (%d) saying \"%s\": %s", st, want_ppl, out);
    snprintf(args, sizeof args,
             "quantize --model %s --out %s/cli-out --calib %s --nsamples 4 --seqlen 64 --group-size 32 --force", model,
             tmp, calib);
    st = run_cli(args, out, sizeof out);
    TEST_CHECK(st != 0 && strstr(out, want_q), "gq quantize exits non-zero (%d) saying \"%s\": %s", st, want_q, out);
}

/* Record i of the calibration file; the evaluation text is the records end to end. */
static int record(char *buf, size_t cap, int i) {
    return snprintf(buf, cap, "def f%d(x):\n    return x * %d + len(str(x))\n", i, i);
}

static void write_texts(const char *calib, const char *text) {
    char c[16384], t[8192], r[128];
    size_t kc = 0, kt = 0;
    for (int i = 0; i < 60; i++) {
        record(r, sizeof r, i);
        kt += (size_t)snprintf(t + kt, sizeof t - kt, "%s", r);
        kc += (size_t)snprintf(c + kc, sizeof c - kc, "{\"text\": \"");
        for (const char *q = r; *q; q++) { /* JSON: the newlines escaped */
            if (*q == '\n') c[kc++] = '\\';
            c[kc++] = *q == '\n' ? 'n' : *q;
        }
        kc += (size_t)snprintf(c + kc, sizeof c - kc, "\"}\n");
    }
    gq_write_file_atomic(calib, c, kc);
    gq_write_file_atomic(text, t, kt);
}

/* Token k of record 0 (*id), and where it first appears in calibration sample 0 and in window 0
 * of the text (*pos: both start with BOS, then record 0). */
static void record0_token(int k, int32_t *id, int *pos) {
    gq_tokenizer *tok = NULL;
    gq_ids ids = {0};
    char r[128];
    record(r, sizeof r, 0);
    *id = -1, *pos = -1;
    if (gq_tok_load(&tok, gq_test_data("pycoder-5m")) == GQ_OK && gq_tok_encode(tok, r, strlen(r), 0, &ids) == GQ_OK &&
        (size_t)k < ids.n) {
        *id = ids.v[k];
        for (int i = 0; i <= k && *pos < 0; i++)
            if (ids.v[i] == *id) *pos = 1 + i;
    }
    gq_ids_free(&ids);
    gq_tok_free(tok);
}

/* rms_norm_eps = 0 in config.json: refused by the loader (naming the field), or, where a loader
 * lets it through, the NaN of 0 / 0 at the zero row named by quantize and ppl. */
static void eps_zero_file(const char *tmp, const char *calib, const char *text, int32_t z, int pos) {
    char *model = gq_path_join(tmp, "eps0"), *out = gq_path_join(tmp, "eps0-out");
    tiny_spec sp = {"0.0", GQ_DT_F16, z, 1.0, 0};
    write_tiny(model, &sp);
    char want[256];
    gq_model m;
    if (gq_model_open(&m, model) != GQ_OK) {
        TEST_CHECK(strstr(gq_errmsg(), "rms_norm_eps") != NULL, "the loader refuses rms_norm_eps 0, naming it: %s",
                   gq_errmsg());
        check_cli(tmp, model, text, calib, "rms_norm_eps", "rms_norm_eps");
    } else {
        gq_model_close(&m);
        int rc = quantize_status(model, out, calib);
        snprintf(want, sizeof want,
                 "calibration sample 0: layer 0: non-finite activation after input_layernorm (NaN "
                 "at token %d, column 0)",
                 pos);
        TEST_CHECK(rc == GQ_ERR_NUMERIC && strstr(gq_errmsg(), want), "quantize: status %d, \"%s\": %s", rc, want,
                   gq_errmsg());
        TEST_CHECK(!gq_path_exists(out), "no output after the failed run");
        snprintf(want, sizeof want, "layer 0: non-finite activation after input_layernorm (NaN at token %d, column 0)",
                 pos);
        check_cli(tmp, model, text, calib, want, want);
    }
    free(model), free(out);
}

static void test_eps_zero(const char *tmp, const char *calib, const char *text) {
    TEST_BEGIN("rms_norm_eps 0, a zero embedding row");
    int32_t z;
    int pos;
    record0_token(3, &z, &pos);
    TEST_CHECK(z > 2 && pos >= 1, "a token of the texts to zero: id %d at position %d", (int)z, pos);
    eps_zero_file(tmp, calib, text, z, pos);
    /* the forward itself with epsilon 0 (set after loading): window 1, token 17 is the zero row */
    char *model = gq_path_join(tmp, "zrow"), msg[2048];
    tiny_spec sp = {"1e-5", GQ_DT_F16, z, 1.0, 0};
    write_tiny(model, &sp);
    int32_t ids[128];
    make_ids(ids, 128, z, 64 + 17);
    int rc = ppl_status(model, ids, 128, -1, msg, sizeof msg);
    TEST_CHECK(rc == GQ_OK, "with rms_norm_eps 1e-5 the zero row is harmless (status %d: %s)", rc, msg);
    rc = ppl_status(model, ids, 128, 0.0f, msg, sizeof msg);
    const char *want = "window 1 (tokens 64..127 of the text): layer 0: non-finite activation after input_layernorm "
                       "(NaN at token 17, column 0)";
    TEST_CHECK(rc == GQ_ERR_NUMERIC && strstr(msg, want), "ppl: status %d, \"%s\": %s", rc, want, msg);
    free(model);
}

static void test_overflow(const char *tmp, const char *calib, const char *text) {
    TEST_BEGIN("attention scores overflow");
    char *model = gq_path_join(tmp, "ovf"), *out = gq_path_join(tmp, "ovf-out");
    tiny_spec sp = {"1e-5", GQ_DT_F32, -1, 1e30, 0};
    write_tiny(model, &sp);
    char msg[2048];
    int32_t ids[64];
    make_ids(ids, 64, 0, -1);
    int rc = ppl_status(model, ids, 64, -1, msg, sizeof msg);
    TEST_CHECK(rc == GQ_ERR_NUMERIC && strstr(msg, "window 0 (tokens 0..63 of the text): layer 1: non-finite "
                                                   "activation after attention (NaN at token 0, column 0)"),
               "ppl: layer 1, attention, token 0 (status %d): %s", rc, msg);
    rc = quantize_status(model, out, calib);
    TEST_CHECK(rc == GQ_ERR_NUMERIC && strstr(gq_errmsg(), "calibration sample 0: layer 1: non-finite activation after "
                                                           "attention (NaN at token 0, column 0)"),
               "quantize: layer 1, attention, token 0 (status %d): %s", rc, gq_errmsg());
    check_cli(tmp, model, text, calib, "layer 1: non-finite activation after attention (NaN at token 0",
              "layer 1: non-finite activation after attention (NaN at token 0");
    free(model), free(out);
}

static void test_nan_weight(const char *tmp) {
    TEST_BEGIN("a NaN weight");
    char *model = gq_path_join(tmp, "nanw");
    tiny_spec sp = {"1e-5", GQ_DT_F16, -1, 1.0, 1};
    write_tiny(model, &sp);
    char msg[2048];
    int32_t ids[64];
    make_ids(ids, 64, 0, -1);
    int rc = ppl_status(model, ids, 64, -1, msg, sizeof msg);
    TEST_CHECK(rc == GQ_ERR_NUMERIC && strstr(msg, "tensor 'model.layers.1.mlp.up_proj.weight'") &&
                   strstr(msg, "index 77"),
               "ppl refuses the weight, naming tensor and index (status %d): %s", rc, msg);
    free(model);
}

int main(void) {
    gq_log_set_level(getenv("GQ_TEST_VERBOSE") ? GQ_LOG_INFO : GQ_LOG_ERROR);
    char *tmp = gq_strdup(gq_test_tmpdir("nonfinite"));
    char *calib = gq_path_join(tmp, "calib.jsonl"), *text = gq_path_join(tmp, "text.txt");
    write_texts(calib, text);
    test_expf();
    test_ops();
    test_eps_zero(tmp, calib, text);
    test_overflow(tmp, calib, text);
    test_nan_weight(tmp);
    gq_rmtree(tmp);
    free(tmp), free(calib), free(text);
    return TEST_REPORT();
}
