/*
 * bench_layers.c -- full-size synthetic decoder layers through the stage
 * sequence of the quantization pipeline, on any backend (CUDA by default):
 * random fp16 weights (std 0.02), random activations, nsamples x seqlen
 * calibration tokens, int4 group 128 sym GPTQ of all seven linears.
 *
 * Each layer runs through gq_qlayer_run, the very code of `gq quantize`:
 *   A  per chunk: rmsnorm1 -> Hessian (K = hidden); GPTQ of stacked q/k/v
 *   B  per sequence: rmsnorm1, qkv linear, rope q and k, attention -> kept
 *      [tokens][nh hd]; per chunk: Hessian (K = nh hd); GPTQ of o
 *   C  per chunk: h = x + o(attn) (kept, in place of x), rmsnorm2 ->
 *      Hessian (K = hidden); GPTQ of stacked gate/up
 *   D  per chunk: rmsnorm2, gate/up linear, swiglu -> Hessian (K = inter);
 *      GPTQ of down
 *   E  per chunk: out = h + down(swiglu(gu(rmsnorm2(h)))) (in place)
 * (chunks: as many whole sequences as the quantizer's budget takes, gq/qlayer.h)
 * "forward + Hessian" is stages A-E without the solves; "solve" the four
 * gq_be_gptq calls (including their result downloads). Layer 0 is a
 * warm-up; the table shows the median of the others, the reference's
 * numbers (IST-DASLab/gptq on an H100, /work/shared/docs/reference-
 * results.md) and the arithmetic floor of each part.
 *
 * MoE shapes (Mixtral-8x7B, Qwen3-30B-A3B): the same stages with the experts' Hessians over their
 * routed rows and one solve per expert linear (random router: about uniform routing).
 *
 *   bench_layers [--shape 7b|34b|70b|mixtral|qwen3moe|all|moe|tiny|tinymoe] [--layers N] [--nsamples N]
 *                [--seqlen N] [--device cuda|cpu|auto] [--precision auto|fp16|fp32] [--chunk-tokens N]
 * --chunk-tokens: the token-wise stages' chunk budget (gq_qlayer_set_chunk; 0, the default: the
 * quantizer's own choice; 1: one sequence per chunk, the per-sequence order).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gq/backend.h"
#include "gq/gptq.h"
#include "gq/qlayer.h"
#ifdef GQ_USE_CUDA
#include "gq/backend_cuda.h"
#endif
#ifdef _OPENMP
#include <omp.h>
static int thread_id(void) { return omp_get_thread_num(); }
#else
static int thread_id(void) { return 0; }
#endif

typedef struct {
    const char *name;
    int hidden, inter, nh, nkv;
    /* reference (H100, 128 x 2048): s/layer, forward + Hessian, solve, GiB */
    double ref_total, ref_fwd, ref_solve, ref_mem;
    /* MoE (experts > 0): the family, experts, top-k, an expert's ffn (inter), head_dim (0: hidden / nh) */
    gq_arch_id arch;
    int experts, top_k, head_dim;
} shape;

static const shape shapes[] = {
    {"7b", 4096, 11008, 32, 32, 12.2, 3.7, 8.5, 6.3, GQ_ARCH_LLAMA, 0, 0, 0},
    {"34b", 8192, 22016, 64, 8, 29.1, 13.1, 16.1, 16.8, GQ_ARCH_LLAMA, 0, 0, 0},
    {"70b", 8192, 28672, 64, 8, 36.1, 17.3, 18.7, 21.4, GQ_ARCH_LLAMA, 0, 0, 0},
    /* Mixtral-8x7B: 8 experts of ffn 14336, top-2; Qwen3-30B-A3B: 128 experts of 768, top-8, head_dim 128 */
    {"mixtral", 4096, 14336, 32, 8, 0, 0, 0, 0, GQ_ARCH_MIXTRAL, 8, 2, 0},
    {"qwen3moe", 2048, 768, 32, 4, 0, 0, 0, 0, GQ_ARCH_QWEN3_MOE, 128, 8, 128},
    {"tiny", 256, 688, 4, 2, 0, 0, 0, 0, GQ_ARCH_LLAMA, 0, 0, 0},
    {"tinymoe", 256, 128, 4, 2, 0, 0, 0, 0, GQ_ARCH_QWEN3_MOE, 16, 4, 64},
};

#define GEMM16_RATE 700e12 /* fp16 tensor-core GEMMs, fp32 accumulate */
#define FP32_RATE 50e12    /* fp32 (no TF32) and fp64 GEMM-bound solve work */

static int die(const char *what) {
    fprintf(stderr, "bench_layers: %s: %s\n", what, gq_errmsg());
    exit(1);
}
#define CK(x, what)                         \
    do {                                    \
        if ((x) != GQ_OK) die(what);        \
    } while (0)

/* ---- random data ------------------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* n fp16 values, uniform with standard deviation sd (threads: one stream each). */
static uint16_t *rand_f16(size_t n, float sd, uint64_t seed) {
    uint16_t *v = gq_malloc(n * sizeof(uint16_t));
    const float a = sd * 1.7320508f; /* uniform [-a, a] has sd a / sqrt(3) */
#pragma omp parallel
    {
        uint64_t s = seed ^ (0x1234567ull * (uint64_t)(thread_id() + 1));
#pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) {
            float u = (float)((splitmix(&s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
            v[i] = gq_f32_to_f16(a * u);
        }
    }
    return v;
}

/* ---- flops -------------------------------------------------------------------------------------------- */

typedef struct {
    double gemm16, hess16, attn16, solve32, chol64;
} flops;

static flops count_flops(const shape *sh, int nsamples, int seqlen) {
    const double T = (double)nsamples * seqlen, h = sh->hidden, I = sh->inter;
    const double hd = sh->head_dim ? sh->head_dim : (double)sh->hidden / sh->nh;
    const double q = (sh->nh + 2.0 * sh->nkv) * hd, a = sh->nh * hd;
    /* the MLP: dense, or E experts each seeing its share of the T x top_k routed rows */
    const double E = sh->experts ? sh->experts : 1, Tr = sh->experts ? T * sh->top_k : T;
    flops f;
    /* B: qkv, C: o, D: gu, E: gu + down (C, D, E: the router too) */
    f.gemm16 = 2.0 * T * (h * q + a * h) + 2.0 * Tr * (2.0 * h * 2.0 * I + I * h) + (E > 1 ? 2.0 * 3 * T * h * E : 0);
    /* causal attention: QK^T and PV, half of 2 S^2 hd each, per head and sequence */
    f.attn16 = 2.0 * (double)seqlen * seqlen * hd * sh->nh * nsamples;
    /* upper-triangle Hessians T K^2 (a full X^T X is 2 T K^2); the experts' over their routed rows */
    f.hess16 = T * (h * h + a * a) + Tr * (h * h + I * I);
    /* lazy block updates ~ rows K^2 and in-block rank-1 updates rows K 128 */
    f.solve32 = q * h * h + h * a * a + 128.0 * (q * h + h * a) + E * (2.0 * I * h * h + h * I * I + 128.0 * 3 * I * h);
    /* potrf + trtri: 2/3 K^3 per factorization */
    f.chol64 = 2.0 / 3.0 * (h * h * h + a * a * a + E * (h * h * h + I * I * I));
    return f;
}

/* ---- one layer ------------------------------------------------------------------------------------------ */

typedef struct {
    double fwd, solve;
    size_t peak;
} layer_time;

static int cmp_d(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Fill layer w (allocated) with the host weights: attention, and the dense MLP or every expert (all the
 * same random matrices: the timing does not depend on their values) with a random router. */
static void fill_layer(gq_backend *be, const gq_config *c, gq_blayer *w, const uint16_t *const hw[5],
                       const float *ones) {
    const int h = c->hidden;
    for (int g = 0; g < GQ_GRP_COUNT; g++) {
        if (!w->w[g].data) continue;
        CK(gq_be_weight_set_rows(be, &w->w[g], 0, w->w[g].rows, hw[g], GQ_DT_F16), "upload a linear");
    }
    for (int e = 0; e < w->n_experts; e++) {
        CK(gq_be_weight_set_rows(be, &w->ex_in[e], 0, w->ex_in[e].rows, hw[GQ_GRP_MLP_IN], GQ_DT_F16), "expert in");
        CK(gq_be_weight_set_rows(be, &w->ex_out[e], 0, h, hw[GQ_GRP_MLP_OUT], GQ_DT_F16), "expert out");
    }
    if (w->n_experts) CK(gq_be_weight_set_rows(be, &w->router, 0, c->n_experts, hw[4], GQ_DT_F16), "router");
    CK(gq_be_weight_upload(be, &w->norm[GQ_NORM_ATTN_PRE], ones, 1, h), "upload ln1");
    CK(gq_be_weight_upload(be, &w->norm[GQ_NORM_MLP_PRE], ones, 1, h), "upload ln2");
    if (gq_arch_get(c->arch_id)->qk_norm) {
        CK(gq_be_weight_upload(be, &w->q_norm, ones, 1, c->head_dim), "q_norm");
        CK(gq_be_weight_upload(be, &w->k_norm, ones, 1, c->head_dim), "k_norm");
    }
}

/* Random calibration activations (uniform, sd 1): each sequence's S tokens of width h. */
static void fill_calibration(gq_qlayer *q, int S, int h) {
    float *x = gq_malloc(sizeof(float) * (size_t)S * h);
    for (int i = 0; i < q->n_seq; i++) {
#pragma omp parallel
        {
            uint64_t s = 99 + 1000003ull * (uint64_t)i + 7919ull * (uint64_t)thread_id();
#pragma omp for schedule(static)
            for (size_t k = 0; k < (size_t)S * h; k++)
                x[k] = (float)((splitmix(&s) >> 40) * (1.0 / 16777216.0)) * 3.4641016f - 1.7320508f;
        }
        CK(gq_qlayer_set_x(q, i, x), "upload x");
    }
    free(x);
}

/* Several devices (--device cuda:0,1,...): the ranks' state for one layer run on every rank (gq_dp_run). */
typedef struct {
    const gq_config *cfg;
    gq_backend **be;
    gq_qlayer *q;
    const uint16_t *const *hw;
    const float *ones;
    const gq_gptq_params *p;
    gq_qresult *res; /* [nmods], shared */
    int l;
} layer_job;

/* Rank k's part of layer l: its copy of the weights, its share of the calibration. */
static int layer_rank(void *user, int k) {
    layer_job *j = user;
    gq_blayer w;
    CK(gq_blayer_alloc(j->be[k], j->cfg, j->l, &w), "allocate the layer");
    fill_layer(j->be[k], j->cfg, &w, j->hw, j->ones);
    int rc = gq_qlayer_run(&j->q[k], j->l, &w, j->p, j->res);
    gq_blayer_free(j->be[k], &w);
    return rc;
}

static void run_shape(gq_backend **be, int ranks, gq_dp *dp, const shape *sh, int layers, int nsamples, int seqlen,
                      int chunk) {
    const int h = sh->hidden, I = sh->inter, nh = sh->nh, nkv = sh->nkv, S = seqlen;
    const int hd = sh->head_dim ? sh->head_dim : h / nh;
    const int qd = (nh + 2 * nkv) * hd, ad = nh * hd;
    char b1[32], b2[32];
    fprintf(stderr, "%s: hidden %d, inter %d, heads %d/%d x %d, %d x %d tokens, %d layers (1 warm-up)\n", sh->name,
            h, I, nh, nkv, hd, nsamples, seqlen, layers);
    gq_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.arch, sizeof cfg.arch, "LlamaForCausalLM");
    cfg.hidden = h, cfg.intermediate = I, cfg.n_layers = layers, cfg.n_heads = nh, cfg.n_kv_heads = nkv;
    cfg.head_dim = hd, cfg.vocab = 32000, cfg.max_pos = seqlen, cfg.rms_eps = 1e-5f, cfg.rope_theta = 10000.0;
    cfg.dtype = GQ_DT_F16;
    cfg.arch_id = sh->arch, cfg.rot_dim = hd, cfg.act = GQ_ACT_SILU;
    snprintf(cfg.arch, sizeof cfg.arch, "%s", gq_arch_get(sh->arch)->hf_arch);
    if (sh->experts) {
        cfg.n_experts = sh->experts, cfg.top_k = sh->top_k, cfg.norm_topk = 1, cfg.moe_inter = I;
        for (int l = 0; l < layers && l < GQ_CFG_MAX_LAYERS; l++) cfg.layer_moe[l] = 1;
        fprintf(stderr, "  MoE: %d experts of ffn %d, top-%d\n", sh->experts, I, sh->top_k);
    }

    /* host weights (fp16, std 0.02), generated once, uploaded per layer (and per expert) */
    uint16_t *hq = rand_f16((size_t)qd * h, 0.02f, 1), *ho = rand_f16((size_t)h * ad, 0.02f, 2);
    uint16_t *hgu = rand_f16((size_t)2 * I * h, 0.02f, 3), *hdn = rand_f16((size_t)h * I, 0.02f, 4);
    uint16_t *hr = rand_f16((size_t)(sh->experts ? sh->experts : 1) * h, 0.02f, 5);
    const uint16_t *const hw[5] = {hq, ho, hgu, hdn, hr};
    float *ones = gq_malloc(sizeof(float) * (size_t)h);
    for (int i = 0; i < h; i++) ones[i] = 1.0f;

    /* the calibration activations of the quantization driver, random (sd 1) */
    int *len = gq_malloc(sizeof(int) * (size_t)nsamples);
    for (int i = 0; i < nsamples; i++) len[i] = S;
    gq_qlayer qs[GQ_DP_MAX_RANKS];
    int share[GQ_DP_MAX_RANKS + 1];
    CK(gq_qlayer_shares(nsamples, len, ranks, share), "the devices' shares");
    for (int k = 0; k < ranks; k++) { /* rank k over its share, with rank 0's chunks */
        gq_qlayer *qk = &qs[k];
        CK(gq_qlayer_init(qk, be[k], &cfg, share[k + 1] - share[k], len + share[k]), "allocating activations");
        qk->dp = dp, qk->rank = k, qk->seq0 = share[k], qk->n_seq_all = nsamples;
        if (chunk || k) CK(gq_qlayer_set_chunk(qk, chunk ? chunk : qs[0].chunk_tokens), "chunks");
        fill_calibration(qk, S, h);
    }
    gq_qlayer *q0 = &qs[0];
    fprintf(stderr, "  %d chunks of up to %d tokens (budget %d)%s%s\n", q0->n_chunks, q0->chunk_max, q0->chunk_tokens,
            q0->stream ? ", activations streamed from host memory" : "", ranks > 1 ? " on the first device" : "");

    gq_gptq_params p;
    gq_gptq_params_default(&p); /* int4, group 128, sym, damp 0.01, block 128 */
    p.skip_codes = 1; /* as gq quantize: the packed qweight only, no per-weight codes to the host */
    layer_time *lt = gq_calloc((size_t)layers, sizeof *lt);
    for (int l = 0; l < layers; l++) {
        int cap = gq_layer_module_cap(&cfg);
        gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
        int nmods = gq_layer_modules(&cfg, 0, l, mods, cap);
        gq_qresult *res = gq_calloc((size_t)nmods, sizeof *res);
        double st0 = q0->t_stages, so0 = q0->t_solve;
        layer_job job = {.cfg = &cfg, .be = be, .q = qs, .hw = hw, .ones = ones, .p = &p, .res = res, .l = l};
        CK(dp ? gq_dp_run(dp, layer_rank, &job) : layer_rank(&job, 0), "quantizing the layer");
        for (int k = 0; k < nmods; k++) {
            if (res[k].fallback) fprintf(stderr, "  warning: %s fell back to RTN\n", mods[k].name);
            gq_qresult_free(&res[k]);
        }
        free(res);
        free(mods);
        size_t peak = 0; /* the most on one device */
        for (int k = 0; k < ranks; k++) {
            const size_t b = gq_be_peak_bytes(be[k]) + gq_qlayer_solver_bytes(&qs[k]);
            peak = b > peak ? b : peak;
        }
        lt[l] = (layer_time){q0->t_stages - st0, q0->t_solve - so0, peak};
        fprintf(stderr, "  layer %d%s: forward+Hessian %.3f s, solve %.3f s, total %.3f s, peak %s\n", l,
                l == 0 && layers > 1 ? " (warm-up)" : "", lt[l].fwd, lt[l].solve, lt[l].fwd + lt[l].solve,
                gq_fmt_bytes(b1, sizeof b1, (double)lt[l].peak));
    }

    /* medians of the measured layers */
    int first = layers > 1 ? 1 : 0, n = layers - first;
    double *v = gq_malloc(sizeof(double) * (size_t)n), med[3];
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < n; i++) {
            const layer_time *t = &lt[first + i];
            v[i] = k == 0 ? t->fwd : k == 1 ? t->solve : t->fwd + t->solve;
        }
        qsort(v, (size_t)n, sizeof *v, cmp_d);
        med[k] = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    }
    flops f = count_flops(sh, nsamples, seqlen);
    double floor_fwd = (f.gemm16 + f.attn16 + f.hess16) / GEMM16_RATE, floor_solve = (f.solve32 + f.chol64) / FP32_RATE;
    size_t peak = lt[layers - 1].peak;
    printf("\n%s on %s%s, %d x %d tokens in %d chunks, int4 g128 sym, median of %d layer%s:\n", sh->name,
           gq_backend_name(be[0]), ranks > 1 ? " and the other devices" : "", nsamples, seqlen, q0->n_chunks, n,
           n == 1 ? "" : "s");
    if (ranks > 1) printf("  devices: %d (Hessians summed through %s)\n", ranks, gq_dp_transport_name(dp));
    printf("  %-22s %10s %10s %10s %10s\n", "", "gq", "reference", "speed-up", "floor");
    printf("  %-22s %9.3fs %9.1fs %9.1fx %9.3fs\n", "forward + Hessian", med[0], sh->ref_fwd,
           sh->ref_fwd > 0 ? sh->ref_fwd / med[0] : 0, floor_fwd);
    printf("  %-22s %9.3fs %9.1fs %9.1fx %9.3fs\n", "GPTQ solve", med[1], sh->ref_solve,
           sh->ref_solve > 0 ? sh->ref_solve / med[1] : 0, floor_solve);
    printf("  %-22s %9.3fs %9.1fs %9.1fx %9.3fs\n", "total per layer", med[2], sh->ref_total,
           sh->ref_total > 0 ? sh->ref_total / med[2] : 0, floor_fwd + floor_solve);
    printf("  %-22s %10s %8.1fGiB\n", "peak device memory", gq_fmt_bytes(b2, sizeof b2, (double)peak), sh->ref_mem);
    printf("  floors: fp16 GEMMs %.1f TFLOP (linears %.1f, attention %.1f, Hessians %.1f) at %.0f TFLOP/s; solve "
           "%.2f TFLOP fp32 + %.2f TFLOP fp64 at %.0f TFLOP/s\n",
           (f.gemm16 + f.attn16 + f.hess16) * 1e-12, f.gemm16 * 1e-12, f.attn16 * 1e-12, f.hess16 * 1e-12,
           GEMM16_RATE * 1e-12, f.solve32 * 1e-12, f.chol64 * 1e-12, FP32_RATE * 1e-12);
    fflush(stdout);
    free(v), free(lt), free(len);
    for (int k = 0; k < ranks; k++) gq_qlayer_free(&qs[k]);
    free(hq), free(ho), free(hgu), free(hdn), free(hr), free(ones);
}

static int arg_int(const char *s, const char *name, int lo, int hi) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi) {
        fprintf(stderr, "bench_layers: %s %s: expected an integer in [%d, %d]\n", name, s, lo, hi);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv) {
    const char *shape_name = "all", *device = "cuda", *precision = "auto";
    int layers = 4, nsamples = 128, seqlen = 2048, chunk = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--shape") && v) shape_name = v, i++;
        else if (!strcmp(a, "--device") && v) device = v, i++;
        else if (!strcmp(a, "--precision") && v) precision = v, i++;
        else if (!strcmp(a, "--layers") && v) layers = arg_int(v, a, 1, 1000), i++;
        else if (!strcmp(a, "--nsamples") && v) nsamples = arg_int(v, a, 1, 100000), i++;
        else if (!strcmp(a, "--seqlen") && v) seqlen = arg_int(v, a, 1, 65536), i++;
        else if (!strcmp(a, "--chunk-tokens") && v) chunk = arg_int(v, a, 0, 1 << 30), i++;
        else {
            fprintf(stderr,
                    "usage: bench_layers [--shape 7b|34b|70b|mixtral|qwen3moe|all|moe|tiny|tinymoe] [--layers N (4)]\n"
                    "                    [--nsamples N (128)]\n"
                    "                    [--seqlen N (2048)] [--device cuda|cpu|auto|cuda:N,M,..|cuda:all (cuda)]\n"
                    "                    [--precision auto|fp16|fp32 (auto)]\n"
                    "                    [--chunk-tokens N (0: the quantizer's choice; 1: per sequence)]\n");
            return 2;
        }
    }
    /* --device cuda:0,1,... / cuda:all: one rank per device (gq/dp.h), as gq quantize spreads a run */
    int dev[GQ_DP_MAX_RANKS], ranks = gq_dp_parse_devices(device, gq_backend_cuda_devices(), dev, GQ_DP_MAX_RANKS);
    if (ranks < 0) die("--device");
    const int list = ranks >= 1; /* a device list (cuda:all on one GPU: cuda:0) */
    ranks = ranks > 1 ? ranks : 1;
    gq_backend *be[GQ_DP_MAX_RANKS];
    gq_dp *dp = NULL;
    for (int k = 0; k < ranks; k++) {
        char spec[32];
        snprintf(spec, sizeof spec, "cuda:%d", dev[k]);
        if (gq_backend_init(&be[k], list ? spec : device) != GQ_OK ||
            gq_backend_set_precision(be[k], precision) != GQ_OK)
            die("backend");
    }
    if (ranks > 1 && gq_dp_init(&dp, be, ranks, GQ_DP_AUTO) != GQ_OK) die("several devices");
    int any = 0;
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const shape *sh = &shapes[k];
        int pick = !strcmp(shape_name, sh->name) || (!strcmp(shape_name, "all") && strncmp(sh->name, "tiny", 4)) ||
                   (!strcmp(shape_name, "moe") && sh->experts && strncmp(sh->name, "tiny", 4));
        if (!pick) continue;
        any = 1;
        run_shape(be, ranks, dp, sh, layers, nsamples, seqlen, chunk);
    }
    if (!any) {
        fprintf(stderr, "bench_layers: unknown shape '%s' (7b, 34b, 70b, mixtral, qwen3moe, all, moe, tiny, tinymoe)\n", shape_name);
        return 2;
    }
    gq_dp_free(dp);
    for (int k = 0; k < ranks; k++) gq_backend_free(be[k]);
    return 0;
}
