/*
 * test_forward.c -- the Llama forward pass (model.c on the CPU backend)
 * against transformers' float32 forward (tests/ref/gen_forward.py):
 * pycoder-5m and three tiny random checkpoints covering rope llama3 /
 * linear / dynamic, attention and MLP biases, bf16 / fp16 / fp32 weights,
 * tied and untied heads, head_dim != hidden / heads, GQA 2 and 4 and MHA,
 * and two GPTQ-quantized checkpoints (4-bit v1 with act-order g_idx, 2-bit
 * gptq_v2 without g_idx) dequantized on load. Then the loader's errors on
 * hand-written broken checkpoints.
 *
 * Tolerances. Both sides compute in fp32 from the same (rounded) weights;
 * they differ only in summation order (OpenBLAS vs MKL-DNN/ATen GEMMs,
 * blocked sums of up to 768 terms), cos/sin/exp implementations (within 1-2
 * ulp) and the order of the softmax normalisation, i.e. a few 1e-7 relative
 * per op. Measured after the whole stack: 4e-7 .. 1.4e-6 relative (Frobenius)
 * per hidden state. TOL_HIDDEN = 2e-5 and TOL_LOGITS = 2e-5 leave 10x+
 * headroom for other BLAS kernels while any real defect (a wrong rope
 * pairing, a missing bias, a norm epsilon off, a GQA head mapping off by
 * one) moves the hidden states by 1e-3 .. 1 relative. The embedding is a
 * pure conversion: exact. inv_freq: TOL_INV = 2.5e-7 (2 ulp; torch's pow is
 * Sleef's 1-ulp powf, glibc's powf is correctly rounded).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/graph.h"
#include "gq/model.h"
#include "gq/st.h"
#include "test.h"

#define TOL_HIDDEN 2e-5
#define TOL_LOGITS 2e-5
#define TOL_INV 2.5e-7

static double rel_err(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* A reference tensor as f32 (newly allocated), or NULL with a failed check. */
static float *ref_f32(gq_st *st, const char *name, int64_t *numel) {
    const gq_st_tensor *t = gq_st_find(st, name);
    TEST_CHECK(t != NULL, "reference tensor '%s' present", name);
    if (!t) return NULL;
    float *v = gq_malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
    TEST_OK(gq_st_read_f32(st, t, v), "read %s", name);
    if (numel) *numel = t->numel;
    return v;
}

static const int32_t *ref_i32(gq_st *st, const char *name, int64_t *n) {
    const gq_st_tensor *t = gq_st_find(st, name);
    TEST_CHECK(t && t->dtype == GQ_DT_I32, "reference tensor '%s' (I32) present", name);
    if (!t) return NULL;
    *n = t->numel;
    return t->data;
}

/* Forward `dir` on the ids of `ref` (dir/ref.safetensors or an explicit path). */
static void check_model(const char *dir, const char *ref_path, int check_inv) {
    gq_model m;
    gq_st *ref = NULL;
    gq_backend *be = NULL;
    TEST_OK(gq_model_open(&m, dir), "open %s", dir);
    TEST_OK(gq_st_open(&ref, ref_path), "open %s", ref_path);
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");
    if (!m.st || !ref || !be) goto out;
    const gq_config *c = &m.cfg;
    int64_t T64 = 0, n = 0;
    const int32_t *ids = ref_i32(ref, "ids", &T64);
    if (!ids) goto out;
    int T = (int)T64, d = c->hidden;

    /* rotary frequencies for this sequence length */
    float *inv = gq_malloc(sizeof(float) * (size_t)(c->rot_dim / 2));
    gq_rope_inv_freq(c, T, inv);
    float *inv_ref = ref_f32(ref, "inv_freq", &n);
    if (check_inv && inv_ref) {
        TEST_CHECK(n == c->rot_dim / 2, "%s: inv_freq has %lld values, expected %d", dir, (long long)n,
                   c->rot_dim / 2);
        double worst = 0;
        for (int i = 0; i < c->rot_dim / 2 && i < n; i++) {
            double r = fabs((double)inv[i] - inv_ref[i]) / inv_ref[i];
            if (r > worst) worst = r;
        }
        TEST_CHECK(worst <= TOL_INV, "%s: inv_freq worst rel diff %.3g > %g", dir, worst, TOL_INV);
    }
    free(inv_ref);

    /* embedding: exact */
    float *x = gq_malloc(sizeof(float) * (size_t)T * d);
    TEST_OK(gq_model_embed(&m, ids, T, x), "embed");
    float *h0 = ref_f32(ref, "hidden.0", &n);
    if (h0) TEST_CHECK(n == (int64_t)T * d && rel_err(x, h0, (size_t)n) == 0.0, "%s: embedding is exact", dir);
    free(h0);

    /* decoder layers, chained: each layer runs on our own previous output */
    void *dx = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)T * d));
    gq_be_upload_f32(be, dx, x, (size_t)T * d);
    gq_fwd_scratch s;
    TEST_OK(gq_fwd_scratch_init(be, c, T, &s), "scratch");
    for (int l = 0; l < c->n_layers; l++) {
        gq_blayer bl;
        char name[32];
        TEST_OK(gq_blayer_load(be, &m, l, &bl), "%s: load layer %d", dir, l);
        TEST_OK(gq_fwd_layer(be, c, l, &bl, dx, T, inv, &s), "forward layer %d", l);
        gq_blayer_free(be, &bl);
        gq_be_download_f32(be, x, dx, (size_t)T * d);
        snprintf(name, sizeof name, "hidden.%d", l + 1);
        float *hr = ref_f32(ref, name, &n);
        if (!hr) continue;
        double e = rel_err(x, hr, (size_t)T * d);
        TEST_CHECK(n == (int64_t)T * d && e <= TOL_HIDDEN, "%s: layer %d output rel err %.3g > %g", dir, l, e,
                   TOL_HIDDEN);
        if (getenv("GQ_TEST_VERBOSE")) fprintf(stderr, "%s layer %d: rel err %.3g\n", dir, l, e);
        free(hr);
    }

    /* final norm and logits */
    gq_bhead head;
    TEST_OK(gq_bhead_load(be, &m, &head), "load head");
    float *logits = gq_malloc(sizeof(float) * (size_t)T * c->vocab);
    int32_t *tg = gq_malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) tg[t] = t + 1 < T ? ids[t + 1] : -1;
    double nll = 0;
    int64_t cnt = 0;
    TEST_OK(gq_bhead_nll(be, c, &head, s.xn, dx, d, T, tg, &nll, &cnt, logits), "logits");
    float *lr = ref_f32(ref, "logits", &n);
    int64_t np = 0;
    const int32_t *pos = gq_st_find(ref, "logit_pos") ? ref_i32(ref, "logit_pos", &np) : NULL;
    if (lr) {
        int rows = pos ? (int)np : T;
        TEST_CHECK(n == (int64_t)rows * c->vocab, "%s: reference logits have %lld values", dir, (long long)n);
        double worst = 0;
        for (int r = 0; r < rows && n == (int64_t)rows * c->vocab; r++) {
            int t = pos ? pos[r] : r;
            double e = rel_err(logits + (size_t)t * c->vocab, lr + (size_t)r * c->vocab, (size_t)c->vocab);
            if (e > worst) worst = e;
        }
        TEST_CHECK(worst <= TOL_LOGITS, "%s: logits worst row rel err %.3g > %g", dir, worst, TOL_LOGITS);
        if (getenv("GQ_TEST_VERBOSE")) fprintf(stderr, "%s logits: rel err %.3g\n", dir, worst);
    }
    free(lr), free(tg), free(logits), free(x), free(inv);
    gq_bhead_free(be, &head);
    gq_fwd_scratch_free(be, &s);
    gq_be_release(be, dx);
out:
    gq_backend_free(be);
    gq_st_close(ref);
    gq_model_close(&m);
}

/* ---- broken checkpoints ----------------------------------------------------------------- */

typedef struct {
    char name[96];
    int64_t shape[2];
    int ndim;
    float *data;
} wt_tensor;

/* Write a minimal F32 safetensors file (the format: u64 header length, JSON, data). */
static void write_st(const char *path, const wt_tensor *t, int n) {
    char *hdr = gq_malloc(65536);
    size_t len = 0, off = 0;
    len += (size_t)snprintf(hdr + len, 65536 - len, "{");
    for (int i = 0; i < n; i++) {
        size_t bytes = 4;
        for (int k = 0; k < t[i].ndim; k++) bytes *= (size_t)t[i].shape[k];
        if (t[i].ndim == 1)
            len += (size_t)snprintf(hdr + len, 65536 - len, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],", i ? "," : "",
                                    t[i].name, (long long)t[i].shape[0]);
        else
            len += (size_t)snprintf(hdr + len, 65536 - len, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],",
                                    i ? "," : "", t[i].name, (long long)t[i].shape[0], (long long)t[i].shape[1]);
        len += (size_t)snprintf(hdr + len, 65536 - len, "\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    len += (size_t)snprintf(hdr + len, 65536 - len, "}");
    while (len % 8) hdr[len++] = ' ';
    FILE *f = fopen(path, "wb");
    TEST_CHECK(f != NULL, "create %s", path);
    if (!f) {
        free(hdr);
        return;
    }
    uint64_t hl = len;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, len, f);
    for (int i = 0; i < n; i++) {
        size_t cnt = 1;
        for (int k = 0; k < t[i].ndim; k++) cnt *= (size_t)t[i].shape[k];
        fwrite(t[i].data, 4, cnt, f);
    }
    fclose(f);
    free(hdr);
}

static const char *small_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 8, \"intermediate_size\": 16,"
    " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"vocab_size\": 16,"
    " \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": %s, \"attention_bias\": %s, \"torch_dtype\": \"float32\"}";

/* A 1-layer checkpoint in dir; `mutate` picks the defect (0 = none). */
enum { OK_CKPT = 0, BAD_SHAPE, HAS_NAN, NO_O_PROJ, UNTIED_NO_HEAD, BIAS_MISSING };
static void make_ckpt(const char *dir, int mutate) {
    static float buf[16 * 16 * 20];
    for (size_t i = 0; i < sizeof buf / sizeof *buf; i++) buf[i] = 0.01f * (float)((i * 7919) % 101) - 0.5f;
    wt_tensor t[16];
    int n = 0;
#define ADD(nm, r, c)                                                   \
    do {                                                                \
        snprintf(t[n].name, sizeof t[n].name, "%s", nm);               \
        t[n].shape[0] = (r), t[n].shape[1] = (c), t[n].ndim = (c) ? 2 : 1; \
        t[n].data = buf;                                                \
        n++;                                                            \
    } while (0)
    ADD("model.embed_tokens.weight", 16, 8);
    ADD("model.layers.0.self_attn.q_proj.weight", 8, 8);
    ADD("model.layers.0.self_attn.k_proj.weight", mutate == BAD_SHAPE ? 5 : 4, 8);
    ADD("model.layers.0.self_attn.v_proj.weight", 4, 8);
    if (mutate != NO_O_PROJ) ADD("model.layers.0.self_attn.o_proj.weight", 8, 8);
    ADD("model.layers.0.mlp.gate_proj.weight", 16, 8);
    ADD("model.layers.0.mlp.up_proj.weight", 16, 8);
    ADD("model.layers.0.mlp.down_proj.weight", 8, 16);
    ADD("model.layers.0.input_layernorm.weight", 8, 0);
    ADD("model.layers.0.post_attention_layernorm.weight", 8, 0);
    ADD("model.norm.weight", 8, 0);
#undef ADD
    static float nanbuf[16 * 8];
    if (mutate == HAS_NAN) { /* up_proj gets a NaN at flat index 13 */
        memcpy(nanbuf, buf, sizeof nanbuf);
        nanbuf[13] = NAN;
        t[6].data = nanbuf; /* embed, q, k, v, o, gate, up */
    }
    char *p = gq_path_join(dir, "model.safetensors");
    write_st(p, t, n);
    free(p);
    char cfg[1024];
    snprintf(cfg, sizeof cfg, small_config, mutate == UNTIED_NO_HEAD ? "false" : "true",
             mutate == BIAS_MISSING ? "true" : "false");
    p = gq_path_join(dir, "config.json");
    gq_write_file_atomic(p, cfg, strlen(cfg));
    free(p);
}

/* Dynamic NTK scaling applies only beyond max_position_embeddings: at 16 and
 * 32 tokens (<= 32) the frequencies are the plain ones, bit for bit. */
static void test_dynamic_short(void) {
    gq_config c;
    TEST_OK(gq_config_load(&c, gq_test_data("fwd/tiny-dynamic-f32")), "dynamic config");
    float a[8], b[8], e[8];
    gq_rope_inv_freq(&c, 16, a);
    gq_rope_inv_freq(&c, 32, b);
    for (int i = 0; i < 8; i++) e[i] = 1.0f / powf((float)c.rope_theta, (float)(2 * i) / 16.0f);
    TEST_CHECK(!memcmp(a, e, sizeof a) && !memcmp(b, e, sizeof b), "dynamic rope unscaled up to max_pos");
    gq_rope_inv_freq(&c, 33, a);
    TEST_CHECK(a[0] == 1.0f && a[7] < e[7], "dynamic rope scaled beyond max_pos (%g < %g)", a[7], e[7]);
}

static void test_errors(void) {
    const char *dir = gq_test_tmpdir("fwd");
    gq_model m;
    gq_blayer bl;
    gq_backend *be = NULL;
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");

    make_ckpt(dir, OK_CKPT);
    TEST_OK(gq_model_open(&m, dir), "open a good 1-layer checkpoint");
    TEST_OK(gq_blayer_load(be, &m, 0, &bl), "load its layer");
    const float *ln2 = bl.norm[GQ_NORM_MLP_PRE].data;
    TEST_CHECK(bl.w[GQ_GRP_ATTN_IN].data && !bl.b[GQ_GRP_ATTN_IN].data && ln2 &&
                   ln2[1] == 0.01f * (float)(7919 % 101) - 0.5f,
               "layer weights loaded, no biases");
    gq_blayer_free(be, &bl);
    gq_bhead head;
    TEST_OK(gq_bhead_load(be, &m, &head), "tied head");
    const float *lm = head.lm.data;
    if (lm) TEST_CHECK(lm[5 * 8 + 3] == 0.01f * (float)(((5 * 8 + 3) * 7919) % 101) - 0.5f, "tied head = embedding");
    gq_bhead_free(be, &head);
    int32_t ids[3] = {1, 16, 2};
    float out[3 * 8];
    TEST_FAILS(gq_model_embed(&m, ids, 3, out), GQ_ERR_DATA, "token id 16 at position 1");
    TEST_FAILS(gq_blayer_load(be, &m, 1, &bl), GQ_ERR_ARG, "layer 1");
    gq_model_close(&m);

    /* shapes, missing tensors and biases are found at open (gq_model_check), from the headers */
    make_ckpt(dir, BAD_SHAPE);
    TEST_FAILS(gq_model_open(&m, dir), GQ_ERR_FORMAT,
               "tensor 'model.layers.0.self_attn.k_proj.weight': expected shape [4, 8], got [5, 8]");

    make_ckpt(dir, HAS_NAN);
    TEST_OK(gq_model_open(&m, dir), "open (NaN found on layer load)");
    TEST_FAILS(gq_blayer_load(be, &m, 0, &bl), GQ_ERR_NUMERIC, "'model.layers.0.mlp.up_proj.weight'");
    TEST_CHECK(strstr(gq_errmsg(), "index 13") != NULL, "NaN error names the index: %s", gq_errmsg());
    gq_model_close(&m);

    make_ckpt(dir, NO_O_PROJ);
    TEST_FAILS(gq_model_open(&m, dir), GQ_ERR_FORMAT,
               "tensor 'model.layers.0.self_attn.o_proj.weight' [8, 8] is missing");

    make_ckpt(dir, BIAS_MISSING);
    TEST_FAILS(gq_model_open(&m, dir), GQ_ERR_FORMAT,
               "tensor 'model.layers.0.self_attn.q_proj.bias' [8] is missing");

    make_ckpt(dir, UNTIED_NO_HEAD);
    TEST_FAILS(gq_model_open(&m, dir), GQ_ERR_FORMAT, "'lm_head.weight' is missing and tie_word_embeddings is false");

    /* a quantized checkpoint whose config says 8 bits while the tensors are packed at 4 */
    char *src = gq_path_join(gq_test_data("fwd/tiny-gptq4-v1-actorder"), "model.safetensors");
    char *dst = gq_path_join(dir, "model.safetensors");
    char *cfgp = gq_path_join(gq_test_data("fwd/tiny-gptq4-v1-actorder"), "config.json");
    char *cfg = NULL;
    size_t len = 0;
    TEST_OK(gq_copy_file(src, dst), "copy quantized tensors");
    TEST_OK(gq_read_file(cfgp, &cfg, &len), "read quantized config");
    char *b = cfg ? strstr(cfg, "\"bits\": 4") : NULL;
    TEST_CHECK(b != NULL, "config has \"bits\": 4");
    if (b) {
        b[8] = '8'; /* "bits": 4 -> 8 */
        free(cfgp);
        cfgp = gq_path_join(dir, "config.json");
        gq_write_file_atomic(cfgp, cfg, len);
        TEST_FAILS(gq_model_open(&m, dir), GQ_ERR_FORMAT,
                   "tensor 'model.layers.0.self_attn.q_proj.qweight': expected shape [16, 64], got [8, 64]");
    }
    free(src), free(dst), free(cfgp), free(cfg);

    char *nowhere = gq_path_join(dir, "nonexistent");
    TEST_CHECK(gq_model_open(&m, nowhere) != GQ_OK && strstr(gq_errmsg(), "nonexistent"), "missing dir: %s",
               gq_errmsg());
    free(nowhere);
    gq_backend_free(be);
    gq_rmtree(dir);
}

int main(void) {
    TEST_BEGIN("forward");
    gq_log_set_level(GQ_LOG_WARN);
    check_model(gq_test_data("pycoder-5m"), gq_test_data("fwd/pycoder5m_ref.safetensors"), 1);
    const char *tiny[] = {"fwd/tiny-llama3-bias-bf16", "fwd/tiny-linear-tied-f16", "fwd/tiny-dynamic-f32",
                          "fwd/tiny-gptq4-v1-actorder", "fwd/tiny-gptq2-v2-nogidx"};
    for (int i = 0; i < 5; i++) {
        char ref[512];
        snprintf(ref, sizeof ref, "%s/ref.safetensors", gq_test_data(tiny[i]));
        check_model(gq_test_data(tiny[i]), ref, 1);
    }
    test_dynamic_short();
    test_errors();
    return TEST_REPORT();
}
