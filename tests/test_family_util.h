/*
 * tests/test_family_util.h -- the machinery of test_families.c (which holds the checks and their
 * bounds): the fixtures' paths and golden tensors, the golden ids through the layer graph on any
 * backend (hidden states, logits, NLL, the routing and the router's top-k gaps), staging and
 * quantizing a fixture, and comparing weights and files. Include after test.h.
 */
#ifndef GQ_TEST_FAMILY_UTIL_H
#define GQ_TEST_FAMILY_UTIL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/graph.h"
#include "gq/model.h"
#include "gq/quantize.h"
#include "gq/st.h"
#include "test.h"

#define NPOS 4   /* golden hidden: sequence 0, positions 0..3 */
#define NSEQ 2   /* golden ids [2][128] */

static const char *fam_path(const char *dir) {
    static char b[4][512];
    static int k;
    char *p = b[k++ & 3];
    snprintf(p, sizeof b[0], "families/%s", dir);
    return gq_test_data(p);
}

/* ---- golden tensors ------------------------------------------------------------------------- */

/* A copy of golden tensor `name` (a failed check and NULL unless it is dt with numel values). */
static void *gold(const gq_st *g, const char *name, gq_dtype dt, int64_t numel) {
    const gq_st_tensor *t = gq_st_find(g, name);
    int ok = t && t->dtype == dt && t->numel == numel;
    TEST_CHECK(ok, "golden '%s' present, %s with %lld values", name, gq_dtype_name(dt), (long long)numel);
    return ok ? memcpy(gq_malloc(t->nbytes), t->data, t->nbytes) : NULL;
}
#define gold_f32(g, name, n) ((float *)gold(g, name, GQ_DT_F32, n))
#define gold_f64(g, name, n) ((double *)gold(g, name, GQ_DT_F64, n))
#define gold_i32(g, name, n) ((int32_t *)gold(g, name, GQ_DT_I32, n))

/* ---- the forward through the layer graph ---------------------------------------------------- */

typedef struct {
    int T;
    float *logits;   /* [T][vocab] */
    float *hidden;   /* [L + 1][NPOS][hidden]: the embedding, then each layer's output */
    double nll_sum;
    int64_t cnt;
    uint32_t *route; /* [L][T]: bit e set when token t was routed to expert e */
    float *gap;      /* [L][T]: gq's k-th minus (k+1)-th router probability (dense layers: 1) */
} fwd_res;

static void fwd_free(fwd_res *r) {
    free(r->logits), free(r->hidden), free(r->route), free(r->gap);
    memset(r, 0, sizeof *r);
}

typedef struct {
    uint32_t *mask;
    int T, bad;
} route_rec;

/* GQ_STEP_MLP_IN hands each expert its routed rows with their token indices. */
static int route_hook(void *user, gq_group g, int expert, const void *X, int ld, int T, const int32_t *idx) {
    route_rec *r = user;
    (void)X, (void)ld;
    if (g != GQ_GRP_MLP_IN || expert < 0) return GQ_OK;
    if (!idx || expert >= 32) {
        r->bad++;
        return GQ_OK;
    }
    for (int i = 0; i < T; i++) {
        if (idx[i] < 0 || idx[i] >= r->T) r->bad++;
        else r->mask[idx[i]] |= 1u << expert;
    }
    return GQ_OK;
}

/* The k-th largest minus the (k+1)-th of E router logits (softmax first) or probabilities. */
static double topk_gap(const float *v, int E, int k, int logits) {
    double p[64], mx = v[0], sum = 0, a = -1, b = -1;
    for (int e = 0; e < E; e++) mx = v[e] > mx ? v[e] : mx;
    for (int e = 0; e < E; e++) sum += (p[e] = logits ? exp(v[e] - mx) : v[e]);
    for (int j = 0; j <= k; j++) { /* selection: the j-th largest, removed */
        int best = 0;
        for (int e = 1; e < E; e++) best = p[e] > p[best] ? e : best;
        a = b, b = p[best] / (logits ? sum : 1), p[best] = -1;
    }
    return a - b;
}

/* Layer by layer with gq_layer_run (all six steps, the hook recording the routing, the router's
 * probabilities read from the scratch), then the head: hidden rows 0..NPOS-1 after each layer,
 * all logits, the NLL of ids[t + 1]. */
static int forward(const gq_model *m, gq_backend *be, const int32_t *ids, int T, fwd_res *r) {
    const gq_config *c = &m->cfg;
    int d = c->hidden, L = c->n_layers, rc;
    memset(r, 0, sizeof *r);
    r->T = T;
    r->logits = gq_malloc(sizeof(float) * (size_t)T * c->vocab);
    r->hidden = gq_calloc((size_t)(L + 1) * NPOS * d, sizeof(float));
    r->route = gq_calloc((size_t)L * T, sizeof(uint32_t));
    r->gap = gq_malloc(sizeof(float) * (size_t)L * T);
    float *hx = gq_malloc(sizeof(float) * (size_t)T * d), *inv = gq_malloc(sizeof(float) * (size_t)c->rot_dim);
    int32_t *tg = gq_malloc(sizeof(int32_t) * (size_t)T);
    gq_rope_inv_freq(c, T, inv);
    void *x = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)T * d));
    gq_fwd_scratch s;
    memset(&s, 0, sizeof s);
    rc = x ? gq_model_embed(m, ids, T, hx) : GQ_ERR_NOMEM;
    if (!rc) memcpy(r->hidden, hx, sizeof(float) * NPOS * d);
    if (!rc) rc = gq_be_upload_f32(be, x, hx, (size_t)T * d);
    if (!rc) rc = gq_fwd_scratch_init(be, c, T, &s);
    for (int l = 0; l < L && !rc; l++) {
        gq_blayer bl;
        if ((rc = gq_blayer_load(be, m, l, &bl))) break;
        route_rec rr = {r->route + (size_t)l * T, T, 0};
        gq_layer_args a = {.be = be, .cfg = c, .layer = l, .bl = &bl, .x = x, .T = T, .first = GQ_STEP_ATTN_IN,
                           .last = GQ_STEP_MLP_RES, .inv_freq = inv, .hook = route_hook, .user = &rr, .s = &s};
        rc = gq_layer_run(&a);
        for (int t = 0; t < T && !rc; t++)
            r->gap[(size_t)l * T + t] = c->n_experts && c->layer_moe[l] && c->top_k < c->n_experts
                ? (float)topk_gap(s.probs + (size_t)t * c->n_experts, c->n_experts, c->top_k, 0) : 1.0f;
        gq_blayer_free(be, &bl);
        if (rr.bad) rc = gq_err(GQ_ERR_DATA, "layer %d: the hook saw %d bad routed rows", l, rr.bad);
        if (!rc) rc = gq_be_download_f32(be, r->hidden + (size_t)(l + 1) * NPOS * d, x, (size_t)NPOS * d);
    }
    gq_bhead head;
    memset(&head, 0, sizeof head);
    if (!rc) rc = gq_bhead_load(be, m, &head);
    for (int t = 0; t < T; t++) tg[t] = t + 1 < T ? ids[t + 1] : -1;
    if (!rc) rc = gq_bhead_nll(be, c, &head, s.xn, x, d, T, tg, &r->nll_sum, &r->cnt, r->logits);
    gq_bhead_free(be, &head);
    gq_fwd_scratch_free(be, &s);
    gq_be_release(be, x);
    free(hx), free(inv), free(tg);
    return rc;
}

/* -log_softmax(logits)[target] in double. */
static double token_nll(const float *lg, int V, int target) {
    double mx = lg[0], sum = 0;
    for (int i = 1; i < V; i++) mx = lg[i] > mx ? lg[i] : mx;
    for (int i = 0; i < V; i++) sum += exp((double)lg[i] - mx);
    return mx + log(sum) - lg[target];
}

static double rel_err(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)a[i] - ref[i];
        num += e * e;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* Both golden sequences through m: mean NLL (NAN on an error); logits_out (may be NULL) gets
 * [NSEQ][T][vocab], res (may be NULL) each sequence's full result (the caller frees). */
static double nll_mean_of(const gq_model *m, gq_backend *be, const int32_t *ids, int T, float *logits_out,
                          fwd_res *res) {
    double sum = 0;
    int64_t cnt = 0;
    size_t V = (size_t)m->cfg.vocab;
    for (int b = 0; b < NSEQ; b++) {
        fwd_res r;
        int rc = forward(m, be, ids + (size_t)b * T, T, &r);
        TEST_OK(rc, "%s: forward of golden sequence %d", m->dir, b);
        if (rc) {
            fwd_free(&r);
            return NAN;
        }
        sum += r.nll_sum, cnt += r.cnt;
        if (logits_out) memcpy(logits_out + (size_t)b * T * V, r.logits, sizeof(float) * T * V);
        if (res) res[b] = r;
        else fwd_free(&r);
    }
    return cnt ? sum / (double)cnt : NAN;
}

/* ---- staging, quantizing, comparing ------------------------------------------------------- */

static const char *calib_path(void) {
    const char *c = getenv("GQ_TEST_CALIB");
    return c ? c : "calib/python-sitepackages.jsonl";
}

/* tmp/<name>: a copy of a family folder's config.json and model.safetensors, plus pycoder-5m's
 * tokenizer files (the fixtures' ids are its ids; gq_quantize_run reads the tokenizer from the
 * model directory to tokenize the calibration text). Returns the path (caller frees). */
static char *stage_model(const char *tmp, const char *src, const char *name) {
    char *dir = gq_path_join(tmp, name);
    gq_rmtree(dir);
    gq_mkdirs(dir);
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json"};
    for (int i = 0; i < 5; i++) {
        char *s = gq_path_join(i < 2 ? src : gq_test_data("pycoder-5m"), files[i]), *d = gq_path_join(dir, files[i]);
        TEST_OK(gq_copy_file(s, d), "copy %s", s);
        free(s), free(d);
    }
    return dir;
}

/* `bits`, group 32 (divides every input width here: 32, 64, 128 and the experts' 32 / 64), sym,
 * on 8 x 128 calibration tokens: ~1000 tokens, 250+ per expert (top-2 of 8), above the default
 * moe_min_tokens of 16, so the experts get GPTQ too; on `device` (RTN: the CPU) with `precision`
 * (NULL: the backend's own). */
static int quantize(const char *model, const char *out, const char *device, const char *precision, gq_method method,
                    int bits, int moe_min, int *n_modules) {
    gq_quant_opts o;
    gq_quant_opts_default(&o);
    o.model_dir = model;
    o.out_dir = out;
    o.calib_path = calib_path();
    o.device = device;
    if (precision) o.precision = precision;
    o.nsamples = 8;
    o.seqlen = 128;
    o.gptq.method = method;
    o.gptq.bits = bits;
    o.gptq.group_size = 32;
    o.moe_min_tokens = moe_min;
    o.force = 1;
    gq_quant_report rep;
    memset(&rep, 0, sizeof rep);
    int rc = gq_quantize_run(&o, &rep);
    TEST_OK(rc, "quantize %s (%s int%d g32, moe_min_tokens %d)", model, method == GQ_METHOD_RTN ? "RTN" : "GPTQ", bits,
            moe_min);
    if (n_modules) *n_modules = rep.n_modules;
    gq_quant_report_free(&rep);
    return rc;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* A linear of the per-expert layout: a 2-D tensor of a layer that is not a MoE router. Written
 * from the fixtures' tensor lists, independently of gq's module table. */
static int is_linear(const gq_st_tensor *t) {
    return t->ndim == 2 && !strncmp(t->name, "model.layers.", 13) && ends_with(t->name, ".weight") &&
           !ends_with(t->name, ".block_sparse_moe.gate.weight") && !ends_with(t->name, ".mlp.gate.weight");
}

/* The largest relative (Frobenius) error of a dequantized linear of q against the source's. */
static double worst_weight_err(const gq_model *q, const gq_model *src, char *which, size_t cap) {
    int cap_m = gq_layer_module_cap(&src->cfg);
    gq_module *mq = gq_malloc((size_t)cap_m * sizeof *mq), *ms = gq_malloc((size_t)cap_m * sizeof *ms);
    double worst = 0;
    for (int l = 0; l < src->cfg.n_layers; l++) {
        int n = gq_layer_modules(&q->cfg, 0, l, mq, cap_m), ns = gq_layer_modules(&src->cfg, src->fused, l, ms, cap_m);
        if (n != ns) return snprintf(which, cap, "layer %d: %d vs %d modules", l, n, ns), INFINITY;
        for (int k = 0; k < n; k++) {
            float *a = NULL, *b = NULL;
            double e = INFINITY;
            if (!gq_model_load_module(q, l, &mq[k], &a) && !gq_model_load_module(src, l, &ms[k], &b))
                e = rel_err(a, b, (size_t)mq[k].rows * mq[k].cols);
            if (!(e <= worst)) worst = e, snprintf(which, cap, "layer %d %s", l, mq[k].name);
            gq_free_aligned(a), gq_free_aligned(b);
        }
    }
    free(mq), free(ms);
    return worst;
}

/* Which tensors of two files differ (names of the first few), for the report. */
static void diff_files(const char *a, const char *b) {
    gq_st *x = NULL, *y = NULL;
    if (gq_st_open(&x, a) || gq_st_open(&y, b)) goto out;
    int shown = 0;
    for (int i = 0; i < gq_st_count(x); i++) {
        const gq_st_tensor *t = gq_st_at(x, i), *u = gq_st_find(y, t->name);
        if (u && u->nbytes == t->nbytes && !memcmp(u->data, t->data, t->nbytes)) continue;
        if (shown++ < 6) fprintf(stderr, "  | %s differs%s\n", t->name, u ? "" : " (absent in the second)");
    }
    for (int i = 0; i < gq_st_count(y); i++)
        if (!gq_st_find(x, gq_st_at(y, i)->name) && shown++ < 12)
            fprintf(stderr, "  | %s only in the second\n", gq_st_at(y, i)->name);
    if (!shown) fprintf(stderr, "  | every tensor equal: the headers / metadata differ\n");
out:
    gq_st_close(x);
    gq_st_close(y);
}

/* Tensors of `a` whose name contains `part`: how many, and how many differ from `b`'s. */
static int count_diff(const gq_st *a, const gq_st *b, const char *part, int *n) {
    int d = 0;
    *n = 0;
    for (int i = 0; i < gq_st_count(a); i++) {
        const gq_st_tensor *t = gq_st_at(a, i), *u;
        if (!strstr(t->name, part)) continue;
        (*n)++;
        u = gq_st_find(b, t->name);
        d += !u || u->nbytes != t->nbytes || memcmp(u->data, t->data, t->nbytes);
    }
    return d;
}

#endif /* GQ_TEST_FAMILY_UTIL_H */
