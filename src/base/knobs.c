/* knobs.c -- the environment knobs, read once (gq/knobs.h). */
#include "gq/knobs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gq/common.h"

static gq_knobs knobs;
static int loaded;

static const char *const cpu_attn_names[] = {"tasks", "blas"};
static const char *const cuda_attn_names[] = {"0", "1", "2", "3"};
static const char *const hinv_names[] = {"f64", "potri", "f32", "f64h"}; /* gq/backend_cuda.h's enum order */
#define HINV_DEFAULT 3                                                        /* f64h */
static const char *const stream_names[] = {"0", "1"};
static const char *const ppl_names[] = {"windows", "ops"};
static const char *const pool_names[] = {"1", "0"};
static const char *const ahead_names[] = {"0", "auto", "1"}; /* auto the default */

/* index of $name in names[n]; def when unset or not one of them (said) */
static int env_choice(const char *name, const char *const *names, int n, int def) {
    const char *s = getenv(name);
    if (!s || !*s) return def;
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i])) return i;
    char list[128];
    int len = 0;
    for (int i = 0; i < n && len < (int)sizeof list; i++)
        len += snprintf(list + len, sizeof list - (size_t)len, "%s%s", i ? "|" : "", names[i]);
    gq_warn("%s=%s ignored: expected %s", name, s, list);
    return def;
}

/* $name as an integer in [lo, hi]; def when unset or not one (said) */
static int env_int(const char *name, int lo, int hi, int def) {
    const char *s = getenv(name);
    if (!s || !*s) return def;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end || errno || v < lo || v > hi) {
        gq_warn("%s=%s ignored: expected an integer in [%d, %d]", name, s, lo, hi);
        return def;
    }
    return (int)v;
}

void gq_knobs_reload(void) {
    memset(&knobs, 0, sizeof knobs);
    knobs.cpu_attn_blas = env_choice("GQ_CPU_ATTN", cpu_attn_names, 2, 0);
    knobs.cpu_attn_tile = env_int("GQ_CPU_ATTN_TILE", 0, 4096, 0);
    knobs.cuda_attn = env_choice("GQ_CUDA_ATTN", cuda_attn_names, 4, 0);
    knobs.cuda_hinv = env_choice("GQ_CUDA_HINV", hinv_names, 4, HINV_DEFAULT);
    knobs.stream_activations = env_choice("GQ_STREAM_ACTIVATIONS", stream_names, 2, 0);
    knobs.ppl_ops = env_choice("GQ_PPL_PARALLEL", ppl_names, 2, 0);
    knobs.cpu_q4 = env_int("GQ_CPU_Q4", 0, 1, 0);
    knobs.solve_threads = env_int("GQ_SOLVE_THREADS", 1, 16, 0);
    knobs.cuda_no_pool = env_choice("GQ_CUDA_POOL", pool_names, 2, 0);
    knobs.cuda_graph = env_int("GQ_CUDA_GRAPH", 0, 2, 1);
    knobs.cuda_pdl = env_int("GQ_CUDA_PDL", 0, 1, 1);
    knobs.cuda_gptq_tf32 = env_int("GQ_CUDA_GPTQ_TF32", 0, 1, 0);
    knobs.cuda_w4_u = env_int("GQ_CUDA_W4_U", 2, 8, 8);
    if (knobs.cuda_w4_u != 2 && knobs.cuda_w4_u != 4 && knobs.cuda_w4_u != 8) {
        gq_warn("GQ_CUDA_W4_U=%d ignored: expected 8, 4 or 2", knobs.cuda_w4_u);
        knobs.cuda_w4_u = 8;
    }
    knobs.load_ahead = env_choice("GQ_LOAD_AHEAD", ahead_names, 3, 1);
    const char *ct = getenv("OPENBLAS_CORETYPE");
    snprintf(knobs.openblas_coretype, sizeof knobs.openblas_coretype, "%s", ct ? ct : "");
    loaded = 1;
}

const char *gq_knobs_hinv_name(void) {
    return hinv_names[gq_knobs_get()->cuda_hinv];
}

const gq_knobs *gq_knobs_get(void) {
    if (!loaded) gq_knobs_reload();
    return &knobs;
}

void gq_knobs_str(char *buf, unsigned cap, int numbers_only) {
    const gq_knobs *k = gq_knobs_get();
    size_t len = 0;
    buf[0] = 0;
#define ADD(...) \
    if (len < cap) len += (size_t)snprintf(buf + len, cap - len, __VA_ARGS__)
    if (k->cpu_attn_blas) ADD("%sGQ_CPU_ATTN=blas", len ? " " : "");
    if (k->cpu_attn_tile) ADD("%sGQ_CPU_ATTN_TILE=%d", len ? " " : "", k->cpu_attn_tile);
    if (k->cuda_attn) ADD("%sGQ_CUDA_ATTN=%d", len ? " " : "", k->cuda_attn);
    if (k->cuda_hinv != HINV_DEFAULT) ADD("%sGQ_CUDA_HINV=%s", len ? " " : "", hinv_names[k->cuda_hinv]);
    if (k->cuda_gptq_tf32) ADD("%sGQ_CUDA_GPTQ_TF32=1", len ? " " : "");
    if (!numbers_only) {
        if (k->stream_activations) ADD("%sGQ_STREAM_ACTIVATIONS=1", len ? " " : "");
        if (k->ppl_ops) ADD("%sGQ_PPL_PARALLEL=ops", len ? " " : "");
        if (k->cpu_q4) ADD("%sGQ_CPU_Q4=1", len ? " " : "");
        if (k->solve_threads) ADD("%sGQ_SOLVE_THREADS=%d", len ? " " : "", k->solve_threads);
        if (k->cuda_graph != 1) ADD("%sGQ_CUDA_GRAPH=%d", len ? " " : "", k->cuda_graph);
        if (k->load_ahead != 1) ADD("%sGQ_LOAD_AHEAD=%s", len ? " " : "", ahead_names[k->load_ahead]);
        if (!k->cuda_pdl) ADD("%sGQ_CUDA_PDL=0", len ? " " : "");
        if (k->cuda_w4_u != 8) ADD("%sGQ_CUDA_W4_U=%d", len ? " " : "", k->cuda_w4_u);
        if (k->cuda_no_pool) ADD("%sGQ_CUDA_POOL=0", len ? " " : "");
        if (k->openblas_coretype[0]) ADD("%sOPENBLAS_CORETYPE=%s", len ? " " : "", k->openblas_coretype);
    }
#undef ADD
}
