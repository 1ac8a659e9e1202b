/* test_generate.c -- the generation engine and sampler (src/gen/generate.c,
 * src/gen/sample.c) on tests/data/pycoder-5m:
 *   - greedy decoding equals transformers' greedy decoding token for token
 *     (tests/data/gen/greedy-pycoder-5m.json, tests/ref/gen_generate.py,
 *     float32 on the CPU), at batch sizes 1 and 3;
 *   - the logits after prefill and after 47 KV-cache decode steps match
 *     transformers' (top-8 values);
 *   - KV-cache decode logits equal a full-sequence forward's logits (the
 *     model module's gq_fwd_layer path), also with chunked prefill;
 *   - sampling: the kept sets of temperature/top-k/top-p equal
 *     transformers' warpers, draws follow the kept distribution, a seed
 *     reproduces the samples at any batch size, another seed changes them,
 *     top-k = 1 is greedy;
 *   - the degenerate-answer rule on crafted token sequences;
 *   - pycoder-30m greedy goldens when GQ_PYCODER30M points at that model.
 * The question readers, prompt templates and `gq calib` end to end are in
 * test_calib_gen.c. */
#include <jansson.h>

#include "gq/generate.h"
#include "gq/graph.h"
#include "test.h"

typedef struct {
    int32_t prompt[64], want[64];
    int n_prompt, n_want;
    double margins[64];
    json_t *top; /* top_logits array */
} gcase;


/* Cases of a greedy golden file: the prompt ids and the expected new ids
 * (the eos included when transformers stopped at it). */
static int load_cases(json_t *doc, gcase *cs, int max) {
    json_t *arr = json_object_get(doc, "cases"), *c;
    size_t i;
    int n = 0;
    json_array_foreach(arr, i, c) {
        if (n == max) break;
        gcase *g = &cs[n++];
        json_t *p = json_object_get(c, "prompt_ids"), *w = json_object_get(c, "new_ids"),
               *mg = json_object_get(c, "margins");
        GQ_ASSERT(json_array_size(p) <= 64 && json_array_size(w) <= 64);
        g->n_prompt = (int)json_array_size(p);
        g->n_want = (int)json_array_size(w);
        for (int k = 0; k < g->n_prompt; k++) g->prompt[k] = (int32_t)json_integer_value(json_array_get(p, k));
        for (int k = 0; k < g->n_want; k++) {
            g->want[k] = (int32_t)json_integer_value(json_array_get(w, k));
            g->margins[k] = json_real_value(json_array_get(mg, k));
        }
        g->top = json_object_get(c, "top_logits");
    }
    return n;
}

/* Greedy tokens of our engine vs transformers'. A difference is only
 * acceptable at a step where transformers' two best logits were closer than
 * tie_tol (an fp32 near-tie: two correct fp32 implementations may order
 * them differently); the comparison of that case stops there. */
static void compare_greedy(const char *what, const gcase *c, const gq_gen_seq *s, const gq_gen *g, double tie_tol,
                           int *ties) {
    int32_t got[72];
    int n = 0;
    for (size_t k = 0; k < s->out.n && n < 64; k++) got[n++] = s->out.v[k];
    if (s->finish == GQ_GEN_FINISH_EOS) got[n++] = 2; /* transformers keeps the eos */
    for (int k = 0; k < c->n_want; k++) {
        if (k >= n || got[k] != c->want[k]) {
            if (k < n && c->margins[k] < tie_tol) {
                (*ties)++;
                fprintf(stderr, "  %s: step %d differs at an fp32 near-tie (margin %.3g)\n", what, k, c->margins[k]);
                return;
            }
            TEST_CHECK(0, "%s: token %d is %d, transformers chose %d (margin %.3g)", what, k, k < n ? got[k] : -1,
                       c->want[k], c->margins[k]);
            return;
        }
    }
    TEST_CHECK(n == c->n_want, "%s: %d tokens, transformers generated %d", what, n, c->n_want);
    (void)g;
}

static int run_greedy(gq_gen *g, gcase *cs, int n, int one_at_a_time, gq_gen_seq *seqs) {
    gq_gen_sampling sp;
    gq_gen_sampling_default(&sp);
    sp.max_new_tokens = 48;
    for (int i = 0; i < n; i++) {
        memset(&seqs[i], 0, sizeof seqs[i]);
        seqs[i].prompt = cs[i].prompt;
        seqs[i].n_prompt = cs[i].n_prompt;
        seqs[i].stream = (uint64_t)i;
    }
    if (!one_at_a_time) return gq_gen_run(g, seqs, n, &sp, NULL, NULL);
    for (int i = 0; i < n; i++) {
        int rc = gq_gen_run(g, &seqs[i], 1, &sp, NULL, NULL);
        if (rc) return rc;
    }
    return GQ_OK;
}

/* max |a - b| / max |b| over n values */
static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > num) num = d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return den > 0 ? num / den : num;
}

/* Logits [T][vocab] of every position of ids through the model module's
 * full-sequence forward (gq_fwd_layer): the reference for the KV cache. */
static int full_forward(const gq_model *m, gq_backend *be, const int32_t *ids, int T, float *logits) {
    const gq_config *c = &m->cfg;
    int d = c->hidden, rc;
    float *hx = gq_malloc((size_t)T * d * sizeof *hx), inv[256];
    void *x = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)T * d));
    gq_fwd_scratch s;
    rc = gq_model_embed(m, ids, T, hx);
    if (!rc) rc = gq_be_upload_f32(be, x, hx, (size_t)T * d);
    if (!rc) rc = gq_fwd_scratch_init(be, c, T, &s);
    gq_rope_inv_freq(c, T, inv);
    for (int l = 0; l < c->n_layers && !rc; l++) {
        gq_blayer bl;
        rc = gq_blayer_load(be, m, l, &bl);
        if (!rc) rc = gq_fwd_layer(be, c, l, &bl, x, T, inv, &s);
        gq_blayer_free(be, &bl);
    }
    gq_bhead head = {0};
    if (!rc) rc = gq_bhead_load(be, m, &head);
    int32_t *tg = gq_malloc((size_t)T * sizeof *tg);
    for (int t = 0; t < T; t++) tg[t] = -1;
    double nll = 0;
    int64_t cnt = 0;
    if (!rc) rc = gq_bhead_nll(be, c, &head, s.xn, x, d, T, tg, &nll, &cnt, logits);
    free(tg);
    gq_bhead_free(be, &head);
    gq_fwd_scratch_free(be, &s);
    gq_be_release(be, x);
    free(hx);
    return rc;
}

static void check_greedy(const gq_model *m, gq_backend *be, const char *golden, const char *name) {
    TEST_BEGIN("greedy vs transformers");
    json_t *doc = test_load_json(golden);
    if (!doc) return;
    gcase cs[8];
    int n = load_cases(doc, cs, 8);
    TEST_CHECK(n >= 4, "%s: at least 4 prompts (got %d)", golden, n);
    gq_gen_opts o;
    gq_gen_opts_default(&o);
    o.max_batch = 3;
    o.max_len = 160;
    gq_gen *g;
    TEST_OK(gq_gen_init(&g, m, be, &o), "engine on %s", name);
    if (!g) {
        json_decref(doc);
        return;
    }
    gq_gen_seq b1[8], b3[8];
    int ties = 0;
    TEST_OK(run_greedy(g, cs, n, 1, b1), "%s: greedy, batch 1", name);
    TEST_OK(run_greedy(g, cs, n, 0, b3), "%s: greedy, batch 3", name);
    for (int i = 0; i < n; i++) {
        char what[96];
        snprintf(what, sizeof what, "%s prompt %d, batch 1", name, i);
        compare_greedy(what, &cs[i], &b1[i], g, 2e-3, &ties);
        snprintf(what, sizeof what, "%s prompt %d, batch 3", name, i);
        compare_greedy(what, &cs[i], &b3[i], g, 2e-3, &ties);
        /* batch 1 and batch 3 must agree with each other except at such ties */
        int same = b1[i].out.n == b3[i].out.n && b1[i].finish == b3[i].finish &&
                   !memcmp(b1[i].out.v, b3[i].out.v, b1[i].out.n * sizeof(int32_t));
        TEST_CHECK(same || ties, "%s prompt %d: batch 1 and batch 3 give the same tokens", name, i);
        gq_gen_seq_free(&b1[i]);
        gq_gen_seq_free(&b3[i]);
    }
    json_decref(doc);
    gq_gen_free(g);
    if (ties) TEST_SKIP("%s: %d comparisons stopped at fp32 near-ties (see above)", name, ties);
}

/* Logits after prefill and after the decode steps vs transformers' top-8. */
static void check_logits_vs_hf(const gq_model *m, gq_backend *be) {
    TEST_BEGIN("logits vs transformers");
    json_t *doc = test_load_json(gq_test_data("gen/greedy-pycoder-5m.json"));
    if (!doc) return;
    gcase cs[8];
    int n = load_cases(doc, cs, 8);
    gq_gen_opts o;
    gq_gen_opts_default(&o);
    o.max_batch = 1;
    o.max_len = 160;
    gq_gen *g;
    TEST_OK(gq_gen_init(&g, m, be, &o), "engine");
    if (!g) {
        json_decref(doc);
        return;
    }
    int V = gq_gen_vocab(g);
    float *lg = gq_malloc((size_t)V * sizeof *lg);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        gcase *c = &cs[i];
        gq_gen_slot_reset(g, 0);
        TEST_OK(gq_gen_prefill(g, 0, c->prompt, c->n_prompt, lg), "prefill");
        int slot = 0, last_step = c->n_want - 1;
        for (int step = 0; step <= last_step; step++) {
            json_t *t;
            size_t k;
            json_array_foreach(c->top, k, t) {
                if (json_integer_value(json_object_get(t, "step")) != step) continue;
                json_t *ids = json_object_get(t, "ids"), *vals = json_object_get(t, "logits");
                for (size_t j = 0; j < json_array_size(ids); j++) {
                    double want = json_real_value(json_array_get(vals, j));
                    double got = lg[json_integer_value(json_array_get(ids, j))];
                    double e = fabs(got - want);
                    if (e > worst) worst = e;
                    /* fp32 logits of magnitude ~10-20 through 4 layers: the two
                     * implementations differ only in summation order (measured max
                     * 7.6e-6 here); 2e-4 leaves room for other BLAS kernels and is far
                     * below any real error (a wrong position or cache row moves logits
                     * by O(0.1..1)) */
                    TEST_NEAR(got, want, 2e-4, "prompt %d step %d: logit of token %d", i, step,
                              (int)json_integer_value(json_array_get(ids, j)));
                }
            }
            if (step < last_step) TEST_OK(gq_gen_decode(g, &slot, &c->want[step], 1, lg), "decode step %d", step);
        }
    }
    fprintf(stderr, "note: logits vs transformers: max |diff| %.3g\n", worst);
    free(lg);
    gq_gen_free(g);
    json_decref(doc);
}

/* KV-cache decode logits vs the full-sequence forward: same fp32 math in a
 * different order (GEMMs of T rows vs 1 row, attention over a tile vs one
 * query), so rounding differs by a few ulps per op; 1e-4 relative to the
 * largest logit leaves two orders of magnitude of margin while any indexing
 * error (wrong position, stale cache row) is O(1). */
static void check_kv_cache(const gq_model *m, gq_backend *be) {
    TEST_BEGIN("kv cache vs full forward");
    json_t *doc = test_load_json(gq_test_data("gen/greedy-pycoder-5m.json"));
    if (!doc) return;
    gcase cs[8];
    int n = load_cases(doc, cs, 8);
    int V = m->cfg.vocab;
    for (int chunk = 0; chunk < 2; chunk++) {
        gq_gen_opts o;
        gq_gen_opts_default(&o);
        o.max_batch = 3;
        o.max_len = 128;
        if (chunk) o.prefill_chunk = 7; /* prefill in pieces: pos0 > 0 in prefill */
        gq_gen *g;
        TEST_OK(gq_gen_init(&g, m, be, &o), "engine (prefill chunk %d)", o.prefill_chunk);
        if (!g) break;
        /* three sequences decoded together, each at its own position */
        int k3 = n < 3 ? n : 3, T[3], slots[3] = {0, 1, 2};
        int32_t seq[3][128];
        float *full[3], *lg = gq_malloc((size_t)3 * V * sizeof *lg);
        double worst = 0;
        for (int s = 0; s < k3; s++) {
            gcase *c = &cs[s];
            T[s] = c->n_prompt + c->n_want - 1;
            memcpy(seq[s], c->prompt, (size_t)c->n_prompt * sizeof(int32_t));
            memcpy(seq[s] + c->n_prompt, c->want, (size_t)(c->n_want - 1) * sizeof(int32_t));
            full[s] = gq_malloc((size_t)T[s] * V * sizeof(float));
            TEST_OK(full_forward(m, be, seq[s], T[s], full[s]), "full forward %d", s);
            gq_gen_slot_reset(g, s);
            TEST_OK(gq_gen_prefill(g, s, seq[s], c->n_prompt, lg), "prefill %d", s);
            double e = rel_err(lg, full[s] + (size_t)(c->n_prompt - 1) * V, (size_t)V);
            worst = e > worst ? e : worst;
            TEST_CHECK(e <= 1e-4, "prefill %d (chunk %d): logits rel. error %.3g <= 1e-4", s, o.prefill_chunk, e);
        }
        for (int step = 0;; step++) {
            int B = 0, sl[3];
            int32_t tk[3];
            for (int s = 0; s < k3; s++) {
                int p = cs[s].n_prompt + step;
                if (p < T[s]) {
                    sl[B] = slots[s];
                    tk[B++] = seq[s][p];
                }
            }
            if (!B) break;
            TEST_OK(gq_gen_decode(g, sl, tk, B, lg), "decode step %d", step);
            for (int r = 0; r < B; r++) {
                int s = sl[r], p = cs[s].n_prompt + step;
                double e = rel_err(lg + (size_t)r * V, full[s] + (size_t)p * V, (size_t)V);
                worst = e > worst ? e : worst;
                if (e > 1e-4) TEST_CHECK(0, "sequence %d position %d: decode logits rel. error %.3g > 1e-4", s, p, e);
            }
        }
        TEST_CHECK(worst <= 1e-4, "prefill chunk %d: worst rel. error %.3g <= 1e-4 over all positions", o.prefill_chunk,
                   worst);
        fprintf(stderr, "note: kv cache vs full forward (prefill chunk %d): max rel. error %.3g\n", o.prefill_chunk,
                worst);
        for (int s = 0; s < k3; s++) free(full[s]);
        free(lg);
        gq_gen_free(g);
    }
    json_decref(doc);
}

/* Kept sets of the warpers vs transformers', and draw frequencies. */
static void check_sampler(void) {
    TEST_BEGIN("sampler");
    json_t *doc = test_load_json(gq_test_data("gen/greedy-pycoder-5m.json"));
    if (!doc) return;
    json_t *ws = json_object_get(doc, "warpers"), *w;
    size_t i;
    TEST_CHECK(json_array_size(ws) >= 5, "warper cases present");
    json_array_foreach(ws, i, w) {
        gq_gen_sampling sp;
        gq_gen_sampling_default(&sp);
        sp.temperature = json_number_value(json_object_get(w, "temperature"));
        sp.top_k = (int)json_integer_value(json_object_get(w, "top_k"));
        sp.top_p = json_number_value(json_object_get(w, "top_p"));
        json_t *lj = json_object_get(w, "logits"), *kj = json_object_get(w, "kept");
        int n = (int)json_array_size(lj);
        float lg[64];
        int want[64] = {0}, got_kept = 0, same = 1;
        for (int k = 0; k < n; k++) lg[k] = (float)json_number_value(json_array_get(lj, k));
        for (size_t k = 0; k < json_array_size(kj); k++) want[json_integer_value(json_array_get(kj, k))] = 1;
        gq_gen_sample_filter(lg, n, &sp);
        for (int k = 0; k < n; k++) {
            int kept = lg[k] != -INFINITY;
            got_kept += kept;
            if (kept != want[k]) same = 0;
        }
        /* exact: the kept set is a discrete decision, and no case sits within
         * fp32 rounding of a top-p boundary */
        TEST_CHECK(same, "warper case %zu (T %g, top_k %d, top_p %g): kept %d tokens, transformers kept %zu", i,
                   sp.temperature, sp.top_k, sp.top_p, got_kept, json_array_size(kj));
    }
    json_decref(doc);

    /* draws follow the renormalised kept distribution: probabilities
     * 0.5/0.3/0.15/0.05, top_p 0.75 keeps the first two -> 0.625/0.375 */
    float base[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    gq_gen_sampling sp;
    gq_gen_sampling_default(&sp);
    sp.temperature = 1.0;
    sp.top_p = 0.75;
    gq_gen_rng r;
    gq_gen_rng_seed(&r, 42, 0);
    int cnt[4] = {0}, N = 20000;
    for (int t = 0; t < N; t++) {
        float lg[4];
        memcpy(lg, base, sizeof lg);
        cnt[gq_gen_sample(lg, 4, &sp, &r)]++;
    }
    TEST_CHECK(cnt[2] == 0 && cnt[3] == 0, "top_p 0.75 never draws the dropped tokens (%d, %d)", cnt[2], cnt[3]);
    /* binomial std of a frequency over 20000 draws is sqrt(p(1-p)/N) = 0.0034;
     * 0.02 is ~6 sigma: fails only if the draw is biased */
    TEST_NEAR((double)cnt[0] / N, 0.625, 0.02, "top_p: frequency of the first token");
    /* temperature 2: softmax(log p / 2) = sqrt(p) normalised */
    sp.top_p = 1.0;
    sp.temperature = 2.0;
    memset(cnt, 0, sizeof cnt);
    for (int t = 0; t < N; t++) {
        float lg[4];
        memcpy(lg, base, sizeof lg);
        cnt[gq_gen_sample(lg, 4, &sp, &r)]++;
    }
    double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.15) + sqrt(0.05);
    for (int k = 0; k < 4; k++)
        TEST_NEAR((double)cnt[k] / N, sqrt((double)expf(base[k])) / z, 0.02, "temperature 2: frequency of token %d", k);
    /* top_k 1 with any temperature is the argmax */
    sp.top_k = 1;
    float lg[4] = {0.1f, 2.0f, 1.9f, -1.0f};
    TEST_CHECK(gq_gen_sample(lg, 4, &sp, &r) == 1, "top_k 1 picks the argmax");
    /* streams: same (seed, stream) -> same numbers; different -> different */
    gq_gen_rng a, b, c;
    gq_gen_rng_seed(&a, 7, 3);
    gq_gen_rng_seed(&b, 7, 3);
    gq_gen_rng_seed(&c, 7, 4);
    uint64_t x = gq_gen_rng_next(&a), y = gq_gen_rng_next(&b), zz = gq_gen_rng_next(&c);
    TEST_CHECK(x == y && x != zz, "rng streams: reproducible and distinct");
    /* argument checks */
    sp.top_p = 0;
    TEST_FAILS(gq_gen_sampling_check(&sp), GQ_ERR_ARG, "top_p");
    sp.top_p = 1;
    sp.temperature = -1;
    TEST_FAILS(gq_gen_sampling_check(&sp), GQ_ERR_ARG, "temperature");
}

/* Seeded sampling on the model: reproducible across batch sizes. */
static void check_seeded(const gq_model *m, gq_backend *be) {
    TEST_BEGIN("seeded sampling");
    json_t *doc = test_load_json(gq_test_data("gen/greedy-pycoder-5m.json"));
    if (!doc) return;
    gcase cs[8];
    int n = load_cases(doc, cs, 8);
    json_decref(doc);
    gq_gen *g1, *g3;
    gq_gen_opts o;
    gq_gen_opts_default(&o);
    o.max_len = 128;
    o.max_batch = 1;
    TEST_OK(gq_gen_init(&g1, m, be, &o), "engine batch 1");
    o.max_batch = 3;
    TEST_OK(gq_gen_init(&g3, m, be, &o), "engine batch 3");
    if (!g1 || !g3) {
        gq_gen_free(g1);
        gq_gen_free(g3);
        return;
    }
    gq_gen_sampling sp;
    gq_gen_sampling_default(&sp);
    sp.temperature = 0.8;
    sp.top_p = 0.95;
    sp.top_k = 50;
    sp.seed = 1234;
    sp.max_new_tokens = 32;
    gq_gen_seq a[8], b[8], c[8], d[8];
    for (int i = 0; i < n; i++) {
        gq_gen_seq s = {.prompt = cs[i].prompt, .n_prompt = cs[i].n_prompt, .stream = (uint64_t)(100 + i)};
        a[i] = b[i] = c[i] = d[i] = s;
    }
    TEST_OK(gq_gen_run(g3, a, n, &sp, NULL, NULL), "seed 1234, batch 3");
    TEST_OK(gq_gen_run(g1, b, n, &sp, NULL, NULL), "seed 1234, batch 1");
    /* the same questions in reverse order: streams follow the question, not the slot */
    gq_gen_seq rev[8];
    for (int i = 0; i < n; i++) rev[i] = c[n - 1 - i];
    TEST_OK(gq_gen_run(g3, rev, n, &sp, NULL, NULL), "seed 1234, batch 3, reversed");
    sp.seed = 999;
    TEST_OK(gq_gen_run(g3, d, n, &sp, NULL, NULL), "seed 999");
    int differ = 0;
    for (int i = 0; i < n; i++) {
        gq_gen_seq *r = &rev[n - 1 - i];
        int ab = a[i].out.n == b[i].out.n && !memcmp(a[i].out.v, b[i].out.v, a[i].out.n * 4);
        int ar = a[i].out.n == r->out.n && !memcmp(a[i].out.v, r->out.v, a[i].out.n * 4);
        TEST_CHECK(ab, "prompt %d: seed 1234 gives the same %zu tokens at batch 1 and 3", i, a[i].out.n);
        TEST_CHECK(ar, "prompt %d: seed 1234 gives the same tokens in another order", i);
        differ += !(a[i].out.n == d[i].out.n && !memcmp(a[i].out.v, d[i].out.v, a[i].out.n * 4));
        gq_gen_seq_free(&a[i]);
        gq_gen_seq_free(&b[i]);
        gq_gen_seq_free(r);
        gq_gen_seq_free(&d[i]);
    }
    /* 32 draws from distributions with several kept tokens: another seed
     * reproducing every sample of every prompt has negligible probability */
    TEST_CHECK(differ >= n - 1, "seed 999 changes the samples of %d of %d prompts", differ, n);

    /* top_k 1 (temperature 1) equals greedy */
    gq_gen_sampling gr;
    gq_gen_sampling_default(&gr);
    gr.max_new_tokens = 32;
    sp.top_k = 1;
    sp.top_p = 1;
    sp.temperature = 1;
    for (int i = 0; i < n; i++) {
        gq_gen_seq s1 = {.prompt = cs[i].prompt, .n_prompt = cs[i].n_prompt, .stream = (uint64_t)i}, s2 = s1;
        TEST_OK(gq_gen_run(g3, &s1, 1, &sp, NULL, NULL), "top_k 1");
        TEST_OK(gq_gen_run(g3, &s2, 1, &gr, NULL, NULL), "greedy");
        TEST_CHECK(s1.out.n == s2.out.n && !memcmp(s1.out.v, s2.out.v, s1.out.n * 4) && s1.finish == s2.finish,
                   "prompt %d: top_k 1 equals greedy", i);
        gq_gen_seq_free(&s1);
        gq_gen_seq_free(&s2);
    }
    gq_gen_free(g1);
    gq_gen_free(g3);
}

/* Stops: eos, max_new_tokens, max_len; argument errors. */
static void check_stops(const gq_model *m, gq_backend *be) {
    TEST_BEGIN("stopping");
    gq_gen_opts o;
    gq_gen_opts_default(&o);
    o.max_batch = 2;
    o.max_len = 24;
    gq_gen *g;
    TEST_OK(gq_gen_init(&g, m, be, &o), "engine");
    if (!g) return;
    TEST_CHECK(gq_gen_max_len(g) == 24 && gq_gen_is_eos(g, 2) && !gq_gen_is_eos(g, 1), "max_len and eos ids");
    int32_t p[20] = {1, 822, 1243};
    for (int i = 3; i < 20; i++) p[i] = 300 + i;
    gq_gen_sampling sp;
    gq_gen_sampling_default(&sp);
    sp.max_new_tokens = 5;
    gq_gen_seq s[2] = {{.prompt = p, .n_prompt = 3}, {.prompt = p, .n_prompt = 20}};
    TEST_OK(gq_gen_run(g, s, 2, &sp, NULL, NULL), "run");
    /* eos is not in the goldens of these prompts within 5 tokens: both stop on length */
    TEST_CHECK(s[0].out.n == 5 && s[0].finish == GQ_GEN_FINISH_LENGTH, "max_new_tokens 5: %zu tokens, %s", s[0].out.n,
               gq_gen_finish_name(s[0].finish));
    TEST_CHECK(s[1].out.n == 4 && s[1].finish == GQ_GEN_FINISH_LENGTH,
               "20-token prompt, max_len 24: %zu new tokens (4)", s[1].out.n);
    gq_gen_seq bad = {.prompt = p, .n_prompt = 24};
    TEST_FAILS(gq_gen_run(g, &bad, 1, &sp, NULL, NULL), GQ_ERR_ARG, "prompt 0 has 24 tokens");
    TEST_FAILS(gq_gen_prefill(g, 0, p, 0, NULL), GQ_ERR_ARG, "do not fit");
    int sl[2] = {1, 1};
    TEST_FAILS(gq_gen_decode(g, sl, p, 2, NULL), GQ_ERR_ARG, "twice");
    /* an extra eos id: the greedy second token of prompt 0 ends it after one token */
    int32_t second = s[0].out.v[1], first = s[0].out.v[0];
    gq_gen_seq_free(&s[0]);
    gq_gen_seq_free(&s[1]);
    gq_gen_free(g);
    o.eos_ids[0] = second;
    o.n_eos = 1;
    TEST_OK(gq_gen_init(&g, m, be, &o), "engine with an extra eos id");
    if (!g) return;
    gq_gen_seq e = {.prompt = p, .n_prompt = 3};
    TEST_OK(gq_gen_run(g, &e, 1, &sp, NULL, NULL), "run");
    TEST_CHECK(first != second && e.out.n == 1 && e.out.v[0] == first && e.finish == GQ_GEN_FINISH_EOS,
               "stops at the extra eos id %d after one token (%zu tokens, %s)", second, e.out.n,
               gq_gen_finish_name(e.finish));
    gq_gen_seq_free(&e);
    gq_gen_free(g);
}

static void check_degenerate(void) {
    TEST_BEGIN("degenerate answers");
    int32_t a[40];
    int cov;
    /* period 1 over 30 of 40 tokens */
    for (int i = 0; i < 40; i++) a[i] = i < 10 ? 100 + i : 7;
    TEST_CHECK(gq_gen_degenerate(a, 40, 8, 0.5, &cov) == 1 && cov == 30, "period 1 covering 30/40 (cov %d)", cov);
    /* period 3 "x y z" repeated, 33 of 40 tokens */
    for (int i = 0; i < 40; i++) a[i] = i < 7 ? 200 + i : 10 + (i - 7) % 3;
    TEST_CHECK(gq_gen_degenerate(a, 40, 8, 0.5, &cov) == 3 && cov == 33, "period 3 covering 33/40 (cov %d)", cov);
    /* all distinct: not degenerate */
    for (int i = 0; i < 40; i++) a[i] = i;
    TEST_CHECK(gq_gen_degenerate(a, 40, 8, 0.5, &cov) == 0 && cov == 0, "distinct tokens are fine");
    /* a repetition covering only 40% (16 of 40): below the 50% rule */
    for (int i = 0; i < 40; i++) a[i] = i < 24 ? 300 + i : 5 + (i % 2);
    TEST_CHECK(gq_gen_degenerate(a, 40, 8, 0.5, &cov) == 0, "16/40 periodic is not degenerate");
    /* period 9 is beyond max_period 8 */
    for (int i = 0; i < 40; i++) a[i] = i % 9;
    TEST_CHECK(gq_gen_degenerate(a, 40, 8, 0.5, &cov) == 0, "period 9 not detected with max_period 8");
    TEST_CHECK(gq_gen_degenerate(a, 40, 9, 0.5, &cov) == 9, "period 9 detected with max_period 9");
    /* two periods only ("a b a b") is not "repeating": at least three */
    int32_t s4[4] = {1, 2, 1, 2};
    TEST_CHECK(gq_gen_degenerate(s4, 4, 8, 0.5, &cov) == 0, "a b a b: two periods are not degenerate");
    int32_t s6[6] = {1, 2, 1, 2, 1, 2};
    TEST_CHECK(gq_gen_degenerate(s6, 6, 8, 0.5, &cov) == 2, "a b a b a b: three periods are");
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    /* one thread: the 5M-parameter model's ops are microseconds, and OpenMP
     * barriers of 2 threads on a shared 2-core machine cost milliseconds each */
    gq_set_threads(1);
    gq_model m;
    gq_backend *be = NULL;
    check_sampler();
    check_degenerate();
    if (gq_model_open(&m, gq_test_data("pycoder-5m")) || gq_backend_init(&be, "cpu")) {
        TEST_CHECK(0, "open pycoder-5m / cpu backend: %s", gq_errmsg());
        return TEST_REPORT();
    }
    check_greedy(&m, be, gq_test_data("gen/greedy-pycoder-5m.json"), "pycoder-5m");
    check_logits_vs_hf(&m, be);
    check_kv_cache(&m, be);
    check_seeded(&m, be);
    check_stops(&m, be);
    gq_model_close(&m);

    TEST_BEGIN("pycoder-30m");
    const char *p30 = getenv("GQ_PYCODER30M");
    if (p30 && *p30) {
        gq_model m30;
        TEST_OK(gq_model_open(&m30, p30), "open GQ_PYCODER30M=%s", p30);
        if (m30.dir) {
            check_greedy(&m30, be, gq_test_data("gen/greedy-pycoder-30m.json"), "pycoder-30m");
            gq_model_close(&m30);
        }
    } else {
        TEST_SKIP("pycoder-30m greedy goldens: set GQ_PYCODER30M to the model directory (61 MB, not in tests/data)");
    }
    gq_backend_free(be);
    return TEST_REPORT();
}
