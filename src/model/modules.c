/* modules.c -- the linears of a layer from the family table (gq/arch.h): names in the input
 * and in the output, which group's stacked weight each fills, and which rows. */
#include "gq/model.h"

#include <stdio.h>
#include <string.h>

static const gq_arch *arch_of(const gq_config *c) {
    return gq_arch_get(c->arch_id);
}

static int is_moe(const gq_config *c, int layer) {
    return c->n_experts > 0 && layer >= 0 && layer < GQ_CFG_MAX_LAYERS && c->layer_moe[layer];
}

void gq_group_shape(const gq_config *c, int layer, gq_group g, int *rows, int *cols) {
    const gq_arch *ar = arch_of(c);
    int nq = c->n_heads * c->head_dim, nkv = c->n_kv_heads * c->head_dim;
    int I = is_moe(c, layer) ? c->moe_inter : c->intermediate, gate = ar->gated ? 2 : 1;
    switch (g) {
    case GQ_GRP_ATTN_IN:
        *rows = nq + 2 * nkv, *cols = c->hidden;
        break;
    case GQ_GRP_ATTN_OUT:
        *rows = c->hidden, *cols = nq;
        break;
    case GQ_GRP_MLP_IN:
        *rows = gate * I, *cols = c->hidden;
        break;
    default:
        *rows = c->hidden, *cols = I;
        break;
    }
}

int gq_group_has_bias(const gq_config *c, gq_group g) {
    if (g == GQ_GRP_ATTN_IN) return arch_of(c)->qkv_bias || c->attention_bias;
    if (g == GQ_GRP_ATTN_OUT) return c->attention_bias;
    return c->mlp_bias;
}

int gq_layer_module_cap(const gq_config *c) {
    return 8 + 3 * (c->n_experts > 0 ? c->n_experts : 0);
}

static void add(gq_module *out, int *n, int cap, const char *name, const char *src, int64_t src_row0, gq_group g,
                int e, int row0, int rows, int cols, int bias) {
    if (*n >= cap) {
        (*n)++;
        return;
    }
    gq_module *m = &out[(*n)++];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->src, sizeof m->src, "%s", src ? src : name);
    m->src_row0 = src_row0, m->group = g, m->expert = e, m->row0 = row0, m->rows = rows, m->cols = cols;
    m->bias = bias;
}

/* The linears of a group given by names[0..k) (NULL-terminated) splitting its rows evenly or
 * as parts[]. */
static void add_group(const gq_config *c, int layer, gq_group g, const char *const *names, int k, const int *parts,
                      gq_module *out, int *n, int cap) {
    int rows, cols, r0 = 0;
    gq_group_shape(c, layer, g, &rows, &cols);
    for (int i = 0; i < k; i++) {
        int r = k == 1 ? rows : parts[i];
        add(out, n, cap, names[i], NULL, 0, g, -1, r0, r, cols, gq_group_has_bias(c, g));
        r0 += r;
    }
}

/* Expert e's three linears: per-expert tensors, or rows of the fused 3-D ones. */
static void add_expert(const gq_config *c, int fused, int layer, int e, gq_module *out, int *n, int cap, int part) {
    const gq_arch *ar = arch_of(c);
    int I = c->moe_inter, H = c->hidden;
    char name[GQ_MODULE_NAME], src[GQ_MODULE_NAME];
    for (int j = part ? 2 : 0; j < (part ? 3 : 2); j++) { /* part 0: gate, up; part 1: down */
        snprintf(name, sizeof name, "%s%d.%s", ar->expert_prefix, e, ar->expert_lin[j]);
        snprintf(src, sizeof src, "%s%s", ar->fused_prefix, j < 2 ? "gate_up_proj" : "down_proj");
        gq_group g = j < 2 ? GQ_GRP_MLP_IN : GQ_GRP_MLP_OUT;
        int64_t srow = j < 2 ? (int64_t)e * 2 * I + (int64_t)j * I : (int64_t)e * H;
        add(out, n, cap, name, fused ? src : NULL, fused ? srow : 0, g, e, j == 1 ? I : 0, j < 2 ? I : H,
            j < 2 ? H : I, 0);
    }
    (void)layer;
}

int gq_layer_modules(const gq_config *c, int fused, int layer, gq_module *out, int cap) {
    const gq_arch *ar = arch_of(c);
    int n = 0, nq = c->n_heads * c->head_dim, nkv = c->n_kv_heads * c->head_dim;
    int qkv_parts[3] = {nq, nkv, nkv}, nattn = ar->attn_in[1] ? 3 : 1;
    add_group(c, layer, GQ_GRP_ATTN_IN, ar->attn_in, nattn, qkv_parts, out, &n, cap);
    add_group(c, layer, GQ_GRP_ATTN_OUT, &ar->attn_out, 1, NULL, out, &n, cap);
    if (is_moe(c, layer)) {
        for (int e = 0; e < c->n_experts; e++) add_expert(c, fused, layer, e, out, &n, cap, 0);
        for (int e = 0; e < c->n_experts; e++) add_expert(c, fused, layer, e, out, &n, cap, 1);
        return n;
    }
    int rows, cols;
    gq_group_shape(c, layer, GQ_GRP_MLP_IN, &rows, &cols);
    int gu_parts[2] = {rows / 2, rows / 2}, nmlp = ar->mlp_in[1] ? 2 : 1;
    add_group(c, layer, GQ_GRP_MLP_IN, ar->mlp_in, nmlp, gu_parts, out, &n, cap);
    add_group(c, layer, GQ_GRP_MLP_OUT, &ar->mlp_out, 1, NULL, out, &n, cap);
    return n;
}

int gq_st_fused_experts(const gq_config *c, const gq_st *st) {
    const gq_arch *ar = arch_of(c);
    if (!c->n_experts || !ar->fused_prefix || !st) return 0;
    for (int l = 0; l < c->n_layers && l < GQ_CFG_MAX_LAYERS; l++) {
        if (!c->layer_moe[l]) continue;
        char name[160];
        snprintf(name, sizeof name, "model.layers.%d.%sgate_up_proj", l, ar->fused_prefix);
        return gq_st_find(st, name) != NULL;
    }
    return 0;
}

void gq_output_name(const gq_config *c, int fused, const char *name, char *out, size_t cap) {
    const gq_arch *ar = arch_of(c);
    int l, k = 0;
    if (fused && ar->router && ar->fused_router && strcmp(ar->router, ar->fused_router) &&
        sscanf(name, "model.layers.%d.%n", &l, &k) == 1 && k > 0) {
        size_t len = strlen(ar->fused_router);
        if (!strncmp(name + k, ar->fused_router, len) && name[k + len] == '.') {
            snprintf(out, cap, "model.layers.%d.%s%s", l, ar->router, name + k + len);
            return;
        }
    }
    snprintf(out, cap, "%s", name);
}
