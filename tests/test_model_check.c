/*
 * test_model_check.c -- checkpoints that do not match their config.json are
 * refused by gq_model_open before any layer is read (gq_model_check), with a
 * message naming the tensor or field, what was expected and what was found;
 * and every good fixture still opens. The bad checkpoints are variants of
 * tests/data/pycoder-5m and tests/data/fwd/tiny-gptq4-v1-actorder written to
 * a temporary directory: config.json edited as text, the tensors rewritten
 * with gq_st_write_file (data taken from the source mapping).
 */
#include "gq/model.h"
#include "test.h"

static const char *tmp;

/* ---- building variants ------------------------------------------------------------------- */

typedef struct {
    gq_st_item items[160];
    int n;
} tensors_t;

/* Every tensor of src (the data points into st's mapping). */
static void load_items(gq_st *st, tensors_t *t) {
    t->n = 0;
    for (int i = 0; i < gq_st_count(st) && t->n < (int)(sizeof t->items / sizeof *t->items); i++) {
        const gq_st_tensor *s = gq_st_at(st, i);
        gq_st_item *it = &t->items[t->n++];
        memset(it, 0, sizeof *it);
        it->name = s->name, it->dtype = s->dtype, it->ndim = s->ndim, it->data = s->data;
        memcpy(it->shape, s->shape, sizeof s->shape);
    }
}

static gq_st_item *item(tensors_t *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->items[i].name, name)) return &t->items[i];
    TEST_CHECK(0, "fixture has no tensor %s", name);
    return NULL;
}

static void drop(tensors_t *t, const char *name) {
    gq_st_item *it = item(t, name);
    if (it) *it = t->items[--t->n];
}

/* dir/name <- text, where `from` (if given) is replaced by `to` in src's config.json. */
static void write_config(const char *src, const char *dir, const char *from, const char *to) {
    char *p = gq_path_join(src, "config.json"), *text = NULL;
    size_t len = 0;
    TEST_OK(gq_read_file(p, &text, &len), "read %s", p);
    free(p);
    if (!text) return;
    char *out = gq_malloc(len + (to ? strlen(to) : 0) + 1);
    char *at = from ? strstr(text, from) : NULL;
    TEST_CHECK(!from || at, "config.json of %s has %s", src, from);
    if (at) {
        size_t k = (size_t)(at - text);
        memcpy(out, text, k);
        strcpy(out + k, to);
        strcat(out, at + strlen(from));
    } else {
        strcpy(out, text);
    }
    p = gq_path_join(dir, "config.json");
    TEST_OK(gq_write_file_atomic(p, out, strlen(out)), "write %s", p);
    free(p), free(out), free(text);
}

/* A fresh dir: src's config.json (edited: from -> to) and tokenizer, tensors t. */
static const char *write_ckpt(const char *src, const char *tag, const tensors_t *t, const char *from, const char *to) {
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", tmp, tag);
    gq_rmtree(dir);
    gq_mkdirs(dir);
    write_config(src, dir, from, to);
    char *s = gq_path_join(src, "tokenizer.json"), *d = gq_path_join(dir, "tokenizer.json");
    if (gq_path_exists(s)) gq_copy_file(s, d);
    free(s), free(d);
    char *p = gq_path_join(dir, "model.safetensors");
    TEST_OK(gq_st_write_file(p, t->items, t->n, NULL, 0), "write %s", p);
    free(p);
    return dir;
}

/* gq_model_open(dir) fails with GQ_ERR_FORMAT naming every substring in
 * want[] (NULL-terminated), fast (headers only: well under a second). */
static void expect_refused(const char *dir, const char *const *want) {
    gq_model m;
    double t0 = gq_now();
    gq_err_clear();
    int rc = gq_model_open(&m, dir);
    double dt = gq_now() - t0;
    if (rc == GQ_OK) gq_model_close(&m);
    TEST_CHECK(rc == GQ_ERR_FORMAT, "%s refused with a format error (got %d: %s)", dir, rc, gq_errmsg());
    for (int i = 0; want[i]; i++)
        TEST_CHECK(strstr(gq_errmsg(), want[i]) != NULL, "%s: message names \"%s\": %s", dir, want[i], gq_errmsg());
    TEST_CHECK(!strncmp(gq_errmsg(), dir, strlen(dir)), "message starts with the directory: %s", gq_errmsg());
    TEST_CHECK(dt < 1.0, "refused in %.3f s (no tensor data read)", dt);
    if (getenv("GQ_TEST_VERBOSE")) fprintf(stderr, "  %s\n", gq_errmsg());
}

/* ---- good checkpoints ------------------------------------------------------------------- */

static void test_good(void) {
    TEST_BEGIN("good fixtures open");
    const char *dirs[] = {"pycoder-5m",           "fwd/tiny-llama3-bias-bf16",  "fwd/tiny-linear-tied-f16",
                          "fwd/tiny-dynamic-f32", "fwd/tiny-gptq4-v1-actorder", "fwd/tiny-gptq2-v2-nogidx"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        gq_model m;
        int rc = gq_model_open(&m, gq_test_data(dirs[i]));
        TEST_OK(rc, "open %s", dirs[i]);
        if (rc) continue;
        gq_check_report r;
        TEST_OK(gq_model_check_st(&m.cfg, m.st, m.dir, &r), "check %s", dirs[i]);
        TEST_CHECK(r.n_problems == 0 && r.n_unused == 0, "%s: %d problems, %d unused", dirs[i], r.n_problems,
                   r.n_unused);
        gq_model_close(&m);
    }
}

/* ---- plain checkpoints: tensors ------------------------------------------------------------ */

static void test_tensors(gq_st *st) {
    TEST_BEGIN("tensors");
    const char *src = gq_test_data("pycoder-5m");
    tensors_t t;

    load_items(st, &t);
    drop(&t, "model.layers.2.mlp.up_proj.weight");
    expect_refused(write_ckpt(src, "missing", &t, NULL, NULL),
                   (const char *[]){"tensor 'model.layers.2.mlp.up_proj.weight' [768, 256] is missing", NULL});

    load_items(st, &t);
    item(&t, "model.layers.1.self_attn.k_proj.weight")->shape[0] = 64; /* the first half of its rows */
    expect_refused(write_ckpt(src, "shape", &t, NULL, NULL),
                   (const char *[]){"model.safetensors: tensor 'model.layers.1.self_attn.k_proj.weight': expected "
                                    "shape [128, 256], got [64, 256]",
                                    "num_key_value_heads 2 x head_dim 64, hidden_size 256", NULL});

    static int32_t zeros[768 * 256];
    load_items(st, &t);
    gq_st_item *g = item(&t, "model.layers.0.mlp.gate_proj.weight");
    g->dtype = GQ_DT_I32, g->data = zeros;
    expect_refused(
        write_ckpt(src, "dtype", &t, NULL, NULL),
        (const char *[]){"tensor 'model.layers.0.mlp.gate_proj.weight': dtype I32, expected F16, BF16 or F32", NULL});

    load_items(st, &t); /* all three at once: every one reported, counted */
    drop(&t, "model.layers.2.mlp.up_proj.weight");
    item(&t, "model.layers.1.self_attn.k_proj.weight")->shape[0] = 64;
    g = item(&t, "model.layers.0.mlp.gate_proj.weight");
    g->dtype = GQ_DT_I32, g->data = zeros;
    expect_refused(write_ckpt(src, "three", &t, NULL, NULL),
                   (const char *[]){"3 problems", "'model.layers.2.mlp.up_proj.weight' [768, 256] is missing",
                                    "'model.layers.1.self_attn.k_proj.weight': expected shape",
                                    "'model.layers.0.mlp.gate_proj.weight': dtype I32", NULL});

    load_items(st, &t);
    item(&t, "model.norm.weight")->shape[0] = 128;
    expect_refused(
        write_ckpt(src, "norm", &t, NULL, NULL),
        (const char *[]){"tensor 'model.norm.weight': expected shape [256], got [128] (hidden_size 256)", NULL});

    load_items(st, &t); /* untied without lm_head */
    expect_refused(
        write_ckpt(src, "nohead", &t, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false"),
        (const char *[]){"tensor 'lm_head.weight' is missing and tie_word_embeddings is false (expected [8192, 256]",
                         NULL});

    load_items(st, &t); /* attention_bias without the biases: one problem per linear and layer */
    expect_refused(write_ckpt(src, "nobias", &t, "\"attention_bias\": false", "\"attention_bias\": true"),
                   (const char *[]){"16 problems",
                                    "tensor 'model.layers.0.self_attn.q_proj.bias' [256] is missing (attention_bias "
                                    "is true)",
                                    NULL});
}

/* ---- plain checkpoints: config.json against the tensors ---------------------------------- */

static void test_config_vs_tensors(gq_st *st) {
    TEST_BEGIN("config vs tensors");
    const char *src = gq_test_data("pycoder-5m");
    tensors_t t;
    load_items(st, &t);

    expect_refused(write_ckpt(src, "layers-1e9", &t, "\"num_hidden_layers\": 4", "\"num_hidden_layers\": 1000000000"),
                   (const char *[]){"\"num_hidden_layers\" is 1000000000, beyond gq's limit of 4096", NULL});
    expect_refused(write_ckpt(src, "layers-6", &t, "\"num_hidden_layers\": 4", "\"num_hidden_layers\": 6"),
                   (const char *[]){"num_hidden_layers is 6, but the tensors hold layers 0..3 only (4 layers)", NULL});
    expect_refused(write_ckpt(src, "eps0", &t, "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0"),
                   (const char *[]){"\"rms_norm_eps\" must be a number > 0", NULL});
    expect_refused(write_ckpt(src, "heads3", &t, "\"num_attention_heads\": 4", "\"num_attention_heads\": 3"),
                   (const char *[]){"hidden_size 256 is not a multiple of num_attention_heads 3", NULL});
    expect_refused(write_ckpt(src, "theta0", &t, "\"rope_theta\": 1000000.0", "\"rope_theta\": 0"),
                   (const char *[]){"rope_theta must be > 0", NULL});
    expect_refused(
        write_ckpt(src, "maxpos0", &t, "\"max_position_embeddings\": 2048", "\"max_position_embeddings\": 0"),
        (const char *[]){"\"max_position_embeddings\" must be positive, got 0", NULL});
    /* heads that divide hidden but disagree with the tensors: q, k, v, o of every layer */
    expect_refused(write_ckpt(src, "heads8", &t, "\"num_attention_heads\": 4", "\"num_attention_heads\": 8"),
                   (const char *[]){"8 problems",
                                    "'model.layers.0.self_attn.k_proj.weight': expected shape [64, 256], "
                                    "got [128, 256] (num_key_value_heads 2 x head_dim 32",
                                    NULL});

    /* a wrong hidden_size: every tensor, more problems than kept; the report counts them all */
    const char *dir = write_ckpt(src, "hidden", &t, "\"hidden_size\": 256", "\"hidden_size\": 128");
    expect_refused(dir, (const char *[]){"38 problems", "... and", NULL});
    gq_config cfg;
    gq_st *st2 = NULL;
    TEST_OK(gq_config_load(&cfg, dir), "config with hidden 128 parses");
    TEST_OK(gq_st_open(&st2, dir), "its tensors open");
    if (st2) {
        gq_check_report r;
        TEST_CHECK(gq_model_check_st(&cfg, st2, dir, &r) == GQ_ERR_FORMAT, "check fails");
        TEST_CHECK(r.n_problems == 38 && !strncmp(r.problems[0], "model.safetensors: tensor 'model.embed_tokens",
                                                  strlen("model.safetensors: tensor 'model.embed_tokens")),
                   "38 problems counted (1 + 4 x 9 + 1), the embedding first: %d, %s", r.n_problems, r.problems[0]);
        TEST_CHECK(strlen(gq_errmsg()) < 2000, "message fits the error buffer (%zu)", strlen(gq_errmsg()));
        gq_st_close(st2);
    }
}

/* ---- a sharded checkpoint: the problem names the shard ------------------------------------ */

static void test_sharded(gq_st *st) {
    TEST_BEGIN("sharded");
    const char *src = gq_test_data("pycoder-5m");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/sharded", tmp);
    gq_rmtree(dir);
    gq_mkdirs(dir);
    write_config(src, dir, NULL, NULL);
    tensors_t t;
    load_items(st, &t);
    item(&t, "model.layers.3.mlp.down_proj.weight")->shape[1] = 512;
    gq_st_writer *w = NULL;
    TEST_OK(gq_st_writer_init(&w, dir, "model", 2u << 20), "writer with 2 MB shards");
    if (!w) return;
    for (int i = 0; i < t.n; i++)
        TEST_OK(
            gq_st_writer_add(w, t.items[i].name, t.items[i].dtype, t.items[i].ndim, t.items[i].shape, t.items[i].data),
            "add %s", t.items[i].name);
    int nsh = 0;
    TEST_OK(gq_st_writer_finish(w, &nsh), "write the shards");
    gq_st_writer_free(w);
    TEST_CHECK(nsh > 1, "%d shards", nsh);
    gq_st *s2 = NULL;
    TEST_OK(gq_st_open(&s2, dir), "open the shards");
    const gq_st_tensor *d = s2 ? gq_st_find(s2, "model.layers.3.mlp.down_proj.weight") : NULL;
    char want[256];
    snprintf(want, sizeof want,
             "%s: tensor 'model.layers.3.mlp.down_proj.weight': expected shape [256, 768], got "
             "[256, 512]",
             d ? strrchr(gq_st_file_path(s2, d->file), '/') + 1 : "?");
    gq_st_close(s2);
    TEST_CHECK(strstr(want, "-of-") != NULL, "the tensor is in a shard: %s", want);
    expect_refused(dir, (const char *[]){want, NULL});
}

/* ---- extra tensors are not an error -------------------------------------------------------- */

static void test_unused(gq_st *st) {
    TEST_BEGIN("unused tensors");
    static float inv[32];
    tensors_t t;
    load_items(st, &t);
    gq_st_item *it = &t.items[t.n++];
    memset(it, 0, sizeof *it);
    it->name = "model.layers.0.self_attn.rotary_emb.inv_freq";
    it->dtype = GQ_DT_F32, it->ndim = 1, it->shape[0] = 32, it->data = inv;
    const char *dir = write_ckpt(gq_test_data("pycoder-5m"), "extra", &t, NULL, NULL);
    gq_model m;
    gq_log_level lvl = gq_log_get_level();
    gq_log_set_level(GQ_LOG_ERROR); /* the warning is expected */
    int rc = gq_model_open(&m, dir);
    gq_log_set_level(lvl);
    TEST_OK(rc, "an extra tensor is no error");
    if (rc) return;
    gq_check_report r;
    TEST_OK(gq_model_check_st(&m.cfg, m.st, m.dir, &r), "check");
    TEST_CHECK(r.n_unused == 1 && !strcmp(r.unused[0], "model.layers.0.self_attn.rotary_emb.inv_freq"),
               "the extra tensor is reported unused: %d %s", r.n_unused, r.unused[0]);
    gq_model_close(&m);
}

/* ---- a truncated file ------------------------------------------------------------------- */

static void test_truncated(void) {
    TEST_BEGIN("truncated");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/truncated", tmp);
    gq_rmtree(dir);
    gq_mkdirs(dir);
    write_config(gq_test_data("pycoder-5m"), dir, NULL, NULL);
    char *src = gq_path_join(gq_test_data("pycoder-5m"), "model.safetensors"), *data = NULL;
    size_t len = 0;
    TEST_OK(gq_read_file(src, &data, &len), "read pycoder-5m tensors");
    char *dst = gq_path_join(dir, "model.safetensors");
    if (data) gq_write_file_atomic(dst, data, len - 1000);
    gq_model m;
    int rc = gq_model_open(&m, dir);
    if (rc == GQ_OK) gq_model_close(&m);
    TEST_CHECK(rc == GQ_ERR_FORMAT && strstr(gq_errmsg(), dst) && strstr(gq_errmsg(), "past the end"),
               "a truncated data section is refused, naming the file: %s", gq_errmsg());
    free(src), free(dst), free(data);
}

/* ---- the embedding ------------------------------------------------------------------------ */

/* gq_model_embed of many tokens (the rows on every thread): the rows' fp32 values, and of a NaN in
 * two rows the error names the row of the first position that reads one, as a sequential loop. */
static void test_embed(gq_st *st) {
    TEST_BEGIN("embedding rows");
    tensors_t t;
    load_items(st, &t);
    gq_st_item *e = item(&t, "model.embed_tokens.weight");
    if (!e) return;
    const int vocab = (int)e->shape[0], d = (int)e->shape[1];
    const size_t nb = (size_t)vocab * d * 2; /* F16 */
    uint16_t *w = gq_malloc(nb);
    memcpy(w, e->data, nb);
    w[(size_t)300 * d + 9] = 0x7e00; /* fp16 NaN */
    w[(size_t)7 * d + 5] = 0x7c00;   /* +inf */
    e->data = w;
    const char *dir = write_ckpt(gq_test_data("pycoder-5m"), "embed-nan", &t, NULL, NULL);
    gq_model m;
    int rc = gq_model_open(&m, dir);
    TEST_OK(rc, "open %s", dir);
    if (rc) {
        free(w);
        return;
    }
    const int n = 8192; /* 8192 x 256 values: the parallel path */
    int32_t *ids = gq_malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) {
        ids[i] = 11 + (i * 37) % (vocab - 11);
        ids[i] += ids[i] == 300; /* no row 7 or 300 */
    }
    float *out = gq_malloc(sizeof(float) * (size_t)n * d), ref[512];
    TEST_OK(gq_model_embed(&m, ids, n, out), "embed %d tokens", n);
    int bad = -1;
    for (int i = 0; i < n && bad < 0; i++) {
        gq_to_f32(ref, w + (size_t)ids[i] * d, GQ_DT_F16, (size_t)d);
        if (memcmp(ref, out + (size_t)i * d, sizeof(float) * d)) bad = i;
    }
    TEST_CHECK(bad < 0, "every row is its fp16 values in fp32 (first difference at position %d)", bad);
    ids[6000] = 7, ids[5000] = 300;
    TEST_FAILS(gq_model_embed(&m, ids, n, out), GQ_ERR_NUMERIC, "non-finite value at index 76809 (row 300)");
    gq_model_close(&m);
    free(ids), free(out), free(w);
}

/* ---- quantized checkpoints ---------------------------------------------------------------- */

static void test_quantized(void) {
    TEST_BEGIN("quantized");
    const char *src = gq_test_data("fwd/tiny-gptq4-v1-actorder");
    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, src), "open %s", src);
    if (!st) return;
    tensors_t t;

    load_items(st, &t); /* qweight [8, 64] (64 x 4 / 32 rows) cut to 4 rows */
    item(&t, "model.layers.0.self_attn.q_proj.qweight")->shape[0] = 4;
    expect_refused(write_ckpt(src, "q-qweight", &t, NULL, NULL),
                   (const char *[]){"tensor 'model.layers.0.self_attn.q_proj.qweight': expected shape [8, 64], got "
                                    "[4, 64] (in_features 64 x 4 bits / 32, out_features 64)",
                                    NULL});

    load_items(st, &t);
    item(&t, "model.layers.0.mlp.down_proj.scales")->dtype = GQ_DT_BF16;
    item(&t, "model.layers.0.mlp.up_proj.g_idx")->shape[0] = 32;
    expect_refused(write_ckpt(src, "q-scales", &t, NULL, NULL),
                   (const char *[]){"2 problems",
                                    "tensor 'model.layers.0.mlp.down_proj.scales': dtype BF16, expected F16",
                                    "tensor 'model.layers.0.mlp.up_proj.g_idx': expected shape [64], got [32]", NULL});

    load_items(st, &t); /* group size 32 -> 16: twice the groups */
    expect_refused(write_ckpt(src, "q-group", &t, "\"group_size\": 32", "\"group_size\": 16"),
                   (const char *[]){"tensor 'model.layers.0.self_attn.q_proj.qzeros': expected shape [4, 8], got "
                                    "[2, 8] (4 groups = ceil(in_features 64 / group_size 16)",
                                    NULL});

    load_items(st, &t);
    drop(&t, "model.layers.0.mlp.gate_proj.qweight");
    drop(&t, "model.layers.0.mlp.gate_proj.qzeros");
    drop(&t, "model.layers.0.mlp.gate_proj.scales");
    drop(&t, "model.layers.0.mlp.gate_proj.g_idx");
    expect_refused(write_ckpt(src, "q-missing", &t, NULL, NULL),
                   (const char *[]){"tensor 'model.layers.0.mlp.gate_proj.qweight' [8, 128] is missing (and so is "
                                    "'model.layers.0.mlp.gate_proj.weight')",
                                    NULL});

    load_items(st, &t); /* quantized tensors without quantization_config */
    expect_refused(write_ckpt(src, "q-noconfig", &t, "\"quantization_config\"", "\"no_quantization_config\""),
                   (const char *[]){"tensor 'model.layers.0.self_attn.q_proj.qweight': the linear is stored quantized",
                                    "config.json has no quantization_config", NULL});
    gq_st_close(st);
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    tmp = gq_test_tmpdir("model-check");
    static char tmpbuf[512];
    snprintf(tmpbuf, sizeof tmpbuf, "%s", tmp);
    tmp = tmpbuf;
    test_good();
    gq_st *st = NULL;
    TEST_OK(gq_st_open(&st, gq_test_data("pycoder-5m")), "open pycoder-5m tensors");
    if (st) {
        test_tensors(st);
        test_config_vs_tensors(st);
        test_unused(st);
        test_sharded(st);
        test_embed(st);
        gq_st_close(st);
    }
    test_truncated();
    test_quantized();
    gq_rmtree(tmp);
    return TEST_REPORT();
}
