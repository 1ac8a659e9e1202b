/*
 * model_check.c -- a checkpoint validated before any work: config.json
 * against the safetensors headers (presence, dtype and shape of every tensor
 * the model reads), without reading tensor data. gq_model_open runs it, so
 * quantize, ppl and calib refuse a bad checkpoint before the first layer;
 * gq inspect prints its report. See gq_model_check_st in model.h.
 */
#include "gq/model.h"
#include "gq/pack.h"

#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define ANY_FLOAT (-1) /* F16, BF16 or F32 */

typedef struct {
    const gq_config *cfg;
    const gq_st *st;
    gq_check_report *rep;
} chk_t;

#if defined(__GNUC__)
static void problem(chk_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#endif
/* Count a problem; keep its text while there is room. */
static void problem(chk_t *c, const char *fmt, ...) {
    gq_check_report *r = c->rep;
    if (r->n_problems < GQ_CHECK_KEEP) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->problems[r->n_problems], sizeof r->problems[0], fmt, ap);
        va_end(ap);
    }
    r->n_problems++;
}

static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *dims) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "", (long long)dims[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

/* The file holding t, without its directory (the message names that once). */
static const char *file_of(const chk_t *c, const gq_st_tensor *t) {
    const char *p = gq_st_file_path(c->st, t->file), *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Tensor `name` must be present (else "is missing" + `note`), of dtype `dt`
 * (ANY_FLOAT: F16, BF16 or F32) and shape dims[ndim]; `why` names the config
 * fields behind the shape. */
static void expect(chk_t *c, const char *name, int dt, int ndim, const int64_t *dims, const char *why,
                   const char *note) {
    const gq_st_tensor *t = gq_st_find(c->st, name);
    char e[96], g[96];
    shape_str(e, sizeof e, ndim, dims);
    if (!t) {
        problem(c, "tensor '%s' %s is missing%s", name, e, note ? note : "");
        return;
    }
    int dt_ok = dt == ANY_FLOAT ? t->dtype == GQ_DT_F16 || t->dtype == GQ_DT_BF16 || t->dtype == GQ_DT_F32
                                : t->dtype == (gq_dtype)dt;
    if (!dt_ok)
        problem(c, "%s: tensor '%s': dtype %s, expected %s", file_of(c, t), name, gq_dtype_name(t->dtype),
                dt == ANY_FLOAT ? "F16, BF16 or F32" : gq_dtype_name((gq_dtype)dt));
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == dims[i];
    if (!ok)
        problem(c, "%s: tensor '%s': expected shape %s, got %s (%s)", file_of(c, t), name, e,
                shape_str(g, sizeof g, t->ndim, t->shape), why);
}

/* The config fields a module's widths come from, for messages. */
static void module_why(const gq_config *c, const gq_module *m, char *out_why, char *in_why, size_t cap) {
    char hid[48], q[96], ffn[64];
    snprintf(hid, sizeof hid, "hidden_size %d", c->hidden);
    snprintf(q, sizeof q, "num_attention_heads %d x head_dim %d", c->n_heads, c->head_dim);
    snprintf(ffn, sizeof ffn, "%s %d", m->expert >= 0 ? "moe_intermediate_size" : "intermediate_size",
             m->expert >= 0 ? c->moe_inter : c->intermediate);
    switch (m->group) {
    case GQ_GRP_ATTN_IN:
        if (m->row0 == 0 && m->rows == c->n_heads * c->head_dim)
            snprintf(out_why, cap, "%s", q);
        else if (m->row0 == 0)
            snprintf(out_why, cap, "(num_attention_heads %d + 2 x num_key_value_heads %d) x head_dim %d", c->n_heads,
                     c->n_kv_heads, c->head_dim);
        else
            snprintf(out_why, cap, "num_key_value_heads %d x head_dim %d", c->n_kv_heads, c->head_dim);
        snprintf(in_why, cap, "%s", hid);
        break;
    case GQ_GRP_ATTN_OUT:
        snprintf(out_why, cap, "%s", hid);
        snprintf(in_why, cap, "%s", q);
        break;
    case GQ_GRP_MLP_IN:
        snprintf(out_why, cap, "%d rows of %s", m->rows, ffn);
        snprintf(in_why, cap, "%s", hid);
        break;
    default:
        snprintf(out_why, cap, "%s", hid);
        snprintf(in_why, cap, "%s", ffn);
        break;
    }
}

/* A linear stored as qweight/qzeros/scales(/g_idx), out = N, in = K. */
static void check_qlinear(chk_t *c, const char *prefix, int64_t N, int64_t K) {
    const gq_qconfig *q = &c->cfg->quant;
    const int bits = q->bits;
    if (N > INT_MAX || K > INT_MAX || !gq_pack_shape_ok((int)N, (int)K, bits)) {
        problem(c, "'%s': out_features %lld and in_features %lld must be multiples of %d to be packed at %d bits",
                prefix, (long long)N, (long long)K, gq_pack_multiple(bits), bits);
        return;
    }
    const int64_t G = q->group_size > 0 ? (K + q->group_size - 1) / q->group_size : 1;
    char name[192], why[256], groups[96], note[192];
    if (q->group_size > 0)
        snprintf(groups, sizeof groups, "%lld groups = ceil(in_features %lld / group_size %d)", (long long)G,
                 (long long)K, q->group_size);
    else
        snprintf(groups, sizeof groups, "1 group (group_size -1)");
    snprintf(name, sizeof name, "%s.qweight", prefix);
    if (!gq_st_find(c->st, name)) { /* the whole linear is absent: one problem, not four */
        snprintf(note, sizeof note, " (and so is '%s.weight')", prefix);
        int64_t d[2] = {K * bits / 32, N};
        expect(c, name, GQ_DT_I32, 2, d, "", note);
        return;
    }
    int64_t d[2] = {K * bits / 32, N};
    snprintf(why, sizeof why, "in_features %lld x %d bits / 32, out_features %lld", (long long)K, bits, (long long)N);
    expect(c, name, GQ_DT_I32, 2, d, why, NULL);
    snprintf(name, sizeof name, "%s.qzeros", prefix);
    d[0] = G, d[1] = N * bits / 32;
    snprintf(why, sizeof why, "%s, out_features %lld x %d bits / 32", groups, (long long)N, bits);
    expect(c, name, GQ_DT_I32, 2, d, why, NULL);
    snprintf(name, sizeof name, "%s.scales", prefix);
    d[0] = G, d[1] = N;
    snprintf(why, sizeof why, "%s, out_features %lld", groups, (long long)N);
    expect(c, name, GQ_DT_F16, 2, d, why, NULL);
    snprintf(name, sizeof name, "%s.g_idx", prefix);
    if (gq_st_find(c->st, name)) { /* optional: absent means k / group_size */
        snprintf(why, sizeof why, "in_features %lld", (long long)K);
        expect(c, name, GQ_DT_I32, 1, &K, why, NULL);
    }
}

/* A fused 3-D expert tensor [experts][rows][cols] (checked once per layer, by its first module). */
static void check_fused(chk_t *c, int layer, const gq_module *m) {
    const gq_config *cfg = c->cfg;
    char name[200], why[160];
    int per = m->group == GQ_GRP_MLP_IN ? 2 * m->rows : m->rows;
    int64_t d[3] = {cfg->n_experts, per, m->cols};
    snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, m->src);
    if (!gq_st_find(c->st, name)) snprintf(name, sizeof name, "model.layers.%d.%s", layer, m->src);
    snprintf(why, sizeof why, "experts %d, %s", cfg->n_experts,
             m->group == GQ_GRP_MLP_IN ? "2 x moe_intermediate_size, hidden_size" : "hidden_size, moe_intermediate_size");
    expect(c, name, ANY_FLOAT, 3, d, why, NULL);
}

static void check_linear(chk_t *c, int layer, const gq_module *m) {
    const gq_config *cfg = c->cfg;
    char prefix[160], name[200], qname[200], ow[128], iw[128], why[300];
    int64_t out = m->rows, in = m->cols;
    module_why(cfg, m, ow, iw, sizeof ow);
    snprintf(prefix, sizeof prefix, "model.layers.%d.%s", layer, m->name);
    snprintf(name, sizeof name, "%s.weight", prefix);
    snprintf(qname, sizeof qname, "%s.qweight", prefix);
    const gq_st_tensor *qw = gq_st_find(c->st, qname);
    if (strcmp(m->src, m->name)) { /* fused experts: the 3-D tensor, once */
        if (m->expert == 0 && (m->row0 == 0)) check_fused(c, layer, m);
    } else if (gq_st_find(c->st, name) || (!qw && !cfg->has_quant)) { /* plain */
        int64_t d[2] = {out, in};
        snprintf(why, sizeof why, "%s, %s", ow, iw);
        expect(c, name, ANY_FLOAT, 2, d, why, NULL);
    } else if (!cfg->has_quant) {
        problem(c,
                "%s: tensor '%s': the linear is stored quantized (there is no '%s') but config.json has no "
                "quantization_config",
                file_of(c, qw), qname, name);
    } else {
        check_qlinear(c, prefix, out, in);
    }
    if (m->bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        const char *note = m->group > GQ_GRP_ATTN_OUT     ? " (mlp_bias is true)"
                           : cfg->attention_bias           ? " (attention_bias is true)"
                                                           : " (the family has q/k/v biases)";
        expect(c, name, ANY_FLOAT, 1, &out, ow, note);
    }
}

/* A vector [n] (norm weights and biases). */
static void check_vec(chk_t *c, int layer, const char *what, const char *suffix, int64_t n, const char *why) {
    char name[200];
    snprintf(name, sizeof name, "model.layers.%d.%s.%s", layer, what, suffix);
    expect(c, name, ANY_FLOAT, 1, &n, why, NULL);
}

static void check_layer(chk_t *c, int layer) {
    const gq_config *cfg = c->cfg;
    const gq_arch *ar = gq_arch_get(cfg->arch_id);
    char why[64], hwhy[48];
    snprintf(hwhy, sizeof hwhy, "hidden_size %d", cfg->hidden);
    for (int k = 0; k < GQ_NORM_SLOTS; k++) {
        if (!ar->norm_name[k]) continue;
        check_vec(c, layer, ar->norm_name[k], "weight", cfg->hidden, hwhy);
        if (ar->norm == GQ_NORM_LAYER) check_vec(c, layer, ar->norm_name[k], "bias", cfg->hidden, hwhy);
    }
    if (ar->qk_norm) {
        snprintf(why, sizeof why, "head_dim %d", cfg->head_dim);
        check_vec(c, layer, ar->q_norm, "weight", cfg->head_dim, why);
        check_vec(c, layer, ar->k_norm, "weight", cfg->head_dim, why);
    }
    int fused = gq_st_fused_experts(cfg, c->st), cap = gq_layer_module_cap(cfg);
    gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
    int n = gq_layer_modules(cfg, fused, layer, mods, cap);
    for (int i = 0; i < n; i++) check_linear(c, layer, &mods[i]);
    free(mods);
    if (cfg->n_experts && cfg->layer_moe[layer]) {
        char name[200];
        int64_t d[2] = {cfg->n_experts, cfg->hidden};
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, fused ? ar->fused_router : ar->router);
        snprintf(why, sizeof why, "experts %d, hidden_size %d", cfg->n_experts, cfg->hidden);
        expect(c, name, ANY_FLOAT, 2, d, why, NULL);
    }
}

/* The layer index of "model.layers.<l>.<rest>" (and rest), or -1. */
static int layer_of(const char *name, const char **rest) {
    static const char pre[] = "model.layers.";
    if (strncmp(name, pre, sizeof pre - 1)) return -1;
    const char *p = name + sizeof pre - 1;
    long long l = 0;
    if (*p < '0' || *p > '9') return -1;
    while (*p >= '0' && *p <= '9' && l < INT_MAX) l = l * 10 + (*p++ - '0');
    if (*p != '.' || l >= INT_MAX) return -1;
    *rest = p + 1;
    return (int)l;
}

/* rest (a name inside a layer) is "<base>.<suffix>"? */
static int is(const char *rest, const char *base, const char *suffix) {
    size_t n = base ? strlen(base) : 0;
    return base && !strncmp(rest, base, n) && rest[n] == '.' && !strcmp(rest + n + 1, suffix);
}

/* Whether gq reads tensor `name` for this config (the checks above decide
 * whether it is right). */
static int tensor_used(const chk_t *c, const char *name) {
    const gq_config *cfg = c->cfg;
    const gq_arch *ar = gq_arch_get(cfg->arch_id);
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "model.norm.weight")) return 1;
    if (!strcmp(name, "model.norm.bias")) return ar->norm == GQ_NORM_LAYER;
    if (!strcmp(name, "lm_head.weight")) return !cfg->tie_word_embeddings;
    const char *rest;
    int l = layer_of(name, &rest);
    if (l < 0 || l >= cfg->n_layers) return 0;
    for (int k = 0; k < GQ_NORM_SLOTS; k++)
        if (is(rest, ar->norm_name[k], "weight") || (ar->norm == GQ_NORM_LAYER && is(rest, ar->norm_name[k], "bias")))
            return 1;
    if (ar->qk_norm && (is(rest, ar->q_norm, "weight") || is(rest, ar->k_norm, "weight"))) return 1;
    int fused = gq_st_fused_experts(cfg, c->st), moe = cfg->n_experts && cfg->layer_moe[l];
    if (moe && is(rest, fused ? ar->fused_router : ar->router, "weight")) return 1;
    int cap = gq_layer_module_cap(cfg), used = 0;
    gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
    int n = gq_layer_modules(cfg, fused, l, mods, cap);
    for (int i = 0; i < n && !used; i++) {
        const gq_module *m = &mods[i];
        if (strcmp(m->src, m->name)) { /* a fused tensor, with or without ".weight" */
            used = !strcmp(rest, m->src) || is(rest, m->src, "weight");
            continue;
        }
        if (is(rest, m->name, "weight") || (m->bias && is(rest, m->name, "bias"))) used = 1;
        else if (is(rest, m->name, "qweight") || is(rest, m->name, "qzeros") || is(rest, m->name, "scales") ||
                 is(rest, m->name, "g_idx")) {
            char w[256];
            snprintf(w, sizeof w, "model.layers.%d.%s.weight", l, m->name);
            used = gq_st_find(c->st, w) == NULL; /* the quantized form is read only without a .weight */
        }
    }
    free(mods);
    return used;
}

/* The error: one problem on one line, several one per line while the
 * message has room. */
static int report_error(const gq_check_report *r, const char *dir) {
    if (r->n_problems == 1) return gq_err(GQ_ERR_FORMAT, "%s: %s", dir, r->problems[0]);
    char buf[1900];
    size_t len = (size_t)snprintf(buf, sizeof buf,
                                  "%s: %d problems (config.json against the safetensors headers):", dir, r->n_problems);
    int kept = r->n_problems < GQ_CHECK_KEEP ? r->n_problems : GQ_CHECK_KEEP, shown = 0;
    for (; shown < kept && len + strlen(r->problems[shown]) + 100 < sizeof buf; shown++)
        len += (size_t)snprintf(buf + len, sizeof buf - len, "\n  %s", r->problems[shown]);
    if (shown < r->n_problems && len < sizeof buf)
        snprintf(buf + len, sizeof buf - len, "\n  ... and %d more (gq inspect lists the first %d)",
                 r->n_problems - shown, GQ_CHECK_KEEP);
    return gq_err(GQ_ERR_FORMAT, "%s", buf);
}

int gq_model_check_st(const gq_config *cfg, const gq_st *st, const char *dir, gq_check_report *rep) {
    memset(rep, 0, sizeof *rep);
    chk_t c = {cfg, st, rep};
    const char *rest;
    int present = 0; /* 1 + the highest layer index among the tensors */
    for (int i = 0; i < gq_st_count(st); i++) {
        int l = layer_of(gq_st_at(st, i)->name, &rest);
        if (l >= present) present = l + 1;
    }
    if (cfg->n_layers > present) {
        if (present)
            problem(&c, "config.json: num_hidden_layers is %d, but the tensors hold layers 0..%d only (%d layers)",
                    cfg->n_layers, present - 1, present);
        else
            problem(&c, "config.json: num_hidden_layers is %d, but no tensor is named 'model.layers.<n>.*'",
                    cfg->n_layers);
    }
    char why[96];
    int64_t vh[2] = {cfg->vocab, cfg->hidden}, h = cfg->hidden;
    snprintf(why, sizeof why, "vocab_size %d, hidden_size %d", cfg->vocab, cfg->hidden);
    expect(&c, "model.embed_tokens.weight", ANY_FLOAT, 2, vh, why, NULL);
    for (int l = 0; l < cfg->n_layers && l < present; l++) check_layer(&c, l);
    if (!cfg->tie_word_embeddings && !gq_st_find(st, "lm_head.weight"))
        problem(&c, "tensor 'lm_head.weight' is missing and tie_word_embeddings is false (expected [%d, %d]: %s)",
                cfg->vocab, cfg->hidden, why);
    else if (!cfg->tie_word_embeddings)
        expect(&c, "lm_head.weight", ANY_FLOAT, 2, vh, why, NULL);
    snprintf(why, sizeof why, "hidden_size %d", cfg->hidden);
    expect(&c, "model.norm.weight", ANY_FLOAT, 1, &h, why, NULL);
    if (gq_arch_get(cfg->arch_id)->norm == GQ_NORM_LAYER) expect(&c, "model.norm.bias", ANY_FLOAT, 1, &h, why, NULL);
    for (int i = 0; i < gq_st_count(st); i++) {
        const char *name = gq_st_at(st, i)->name;
        if (tensor_used(&c, name)) continue;
        if (rep->n_unused < GQ_CHECK_KEEP_UNUSED)
            snprintf(rep->unused[rep->n_unused], sizeof rep->unused[0], "%s", name);
        rep->n_unused++;
    }
    return rep->n_problems ? report_error(rep, dir) : GQ_OK;
}

int gq_model_check(const gq_model *m) {
    gq_check_report *r = gq_malloc(sizeof *r);
    int rc = gq_model_check_st(&m->cfg, m->st, m->dir, r);
    if (r->n_unused) {
        char list[1024];
        size_t len = 0;
        int kept = r->n_unused < GQ_CHECK_KEEP_UNUSED ? r->n_unused : GQ_CHECK_KEEP_UNUSED;
        for (int i = 0; i < kept && len < sizeof list; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s'%s'", i ? ", " : "", r->unused[i]);
        gq_warn("%s: %d tensor%s that gq does not read (ignored): %s%s", m->dir, r->n_unused,
                r->n_unused == 1 ? "" : "s", list, r->n_unused > kept ? ", ..." : "");
    }
    free(r);
    return rc;
}
