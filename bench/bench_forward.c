/*
 * bench_forward.c -- time one decoder layer forward on the CPU backend,
 * split by op, for pycoder-5m-shaped and Llama-7B-shaped layers at T = 2048
 * (random weights), with the achieved GFLOP/s of each GEMM next to a plain
 * cblas_sgemm of the same shape (OpenBLAS's own speed on this machine), and
 * the two attention schedules of the CPU backend (GQ_CPU_ATTN=tasks|blas).
 *
 *   make bench && ./build/bench/bench_forward [--shape pycoder|7b|all] [--T 2048] [--reps N]
 *
 * Times are wall-clock medians of `reps` runs; cpu% is process CPU time over
 * wall time (2 cores busy = 200%), which shows when other processes share
 * the machine.
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#undef I

#include "gq/knobs.h"
#include "gq/backend.h"
#include "gq/graph.h"
#include "gq/model.h"

typedef struct {
    const char *name;
    int hidden, inter, n_heads, n_kv, head_dim, vocab;
} shape;

static const shape shapes[] = {
    {"pycoder-5m", 256, 768, 4, 2, 64, 8192},
    {"llama-7b", 4096, 11008, 32, 32, 128, 32000},
};

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double wall, cpu; /* median wall seconds, cpu seconds of that run */
} timing;

/* Time fn(arg) reps times; median wall. */
#define TIME(reps, out, stmt)                                                  \
    do {                                                                       \
        double w_[64] = {0}, c_[64] = {0};                                     \
        int r_n = (reps) > 64 ? 64 : (reps);                                   \
        for (int r_ = 0; r_ < r_n; r_++) {                                     \
            double t0_ = gq_now(), c0_ = cpu_now();                            \
            stmt;                                                              \
            w_[r_] = gq_now() - t0_;                                           \
            c_[r_] = cpu_now() - c0_;                                          \
        }                                                                      \
        double ws_[64];                                                        \
        memcpy(ws_, w_, sizeof(double) * r_n);                                 \
        qsort(ws_, r_n, sizeof(double), cmp_d);                                \
        (out).wall = ws_[r_n / 2];                                             \
        (out).cpu = 0;                                                         \
        for (int r_ = 0; r_ < r_n; r_++)                                       \
            if (w_[r_] == (out).wall) (out).cpu = c_[r_];                      \
    } while (0)

static float *rnd(size_t n, float sd) {
    float *v = gq_malloc_aligned(n * sizeof(float));
    uint64_t s = 0x9E3779B97F4A7C15ull ^ n;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        v[i] = sd * ((float)(s >> 40) / (float)(1 << 24) - 0.5f) * 3.46f;
    }
    return v;
}

static void report(const char *op, timing t, double flop, double ref_s) {
    printf("  %-22s %9.2f ms  cpu %4.0f%%", op, t.wall * 1e3, t.wall > 0 ? 100.0 * t.cpu / t.wall : 0.0);
    if (flop > 0) printf("  %7.1f GFLOP/s", flop / t.wall * 1e-9);
    if (ref_s > 0) printf("  (plain sgemm %7.1f GFLOP/s)", flop / ref_s * 1e-9);
    printf("\n");
}

/* Plain cblas_sgemm Y[M][N] = X[M][K] W[N][K]^T, the op's BLAS ceiling. */
static double plain_sgemm(int M, int N, int K, int reps) {
    float *X = rnd((size_t)M * K, 1), *W = rnd((size_t)N * K, 0.02f), *Y = gq_malloc_aligned((size_t)M * N * 4);
    timing t;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, X, K, W, K, 0, Y, N);
    TIME(reps, t, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, X, K, W, K, 0, Y, N));
    gq_free_aligned(X), gq_free_aligned(W), gq_free_aligned(Y);
    return t.wall;
}

static void bench_shape(const shape *sh, int T, int reps) {
    gq_config c;
    memset(&c, 0, sizeof c);
    c.hidden = sh->hidden, c.intermediate = sh->inter, c.n_heads = sh->n_heads, c.n_kv_heads = sh->n_kv;
    c.head_dim = sh->head_dim, c.vocab = sh->vocab, c.n_layers = 1, c.rms_eps = 1e-5f, c.rope_theta = 10000;
    c.arch_id = GQ_ARCH_LLAMA, c.rot_dim = sh->head_dim, c.act = GQ_ACT_SILU;
    int d = c.hidden, I = c.intermediate, hd = c.head_dim;
    int nq = c.n_heads * hd, nkv = c.n_kv_heads * hd, ldqkv = nq + 2 * nkv;
    printf("\n%s layer: hidden %d, ffn %d, heads %d/%d x %d, T = %d\n", sh->name, d, I, c.n_heads, c.n_kv_heads, hd,
           T);

    gq_backend *be;
    if (gq_backend_init(&be, "cpu") != GQ_OK) {
        fprintf(stderr, "%s\n", gq_errmsg());
        return;
    }
    /* a layer of random weights: [q; k; v] [ldqkv][d], o [d][nq], [gate; up] [2I][d], down [d][I] */
    gq_blayer bl;
    gq_fwd_scratch s;
    float *hw[4] = {rnd((size_t)ldqkv * d, 0.02f), rnd((size_t)d * nq, 0.02f), rnd((size_t)2 * I * d, 0.02f),
                    rnd((size_t)d * I, 0.02f)};
    float *ln1 = rnd((size_t)d, 1), *ln2 = rnd((size_t)d, 1);
    int rc = gq_blayer_alloc(be, &c, 0, &bl);
    for (int g = 0; g < GQ_GRP_COUNT && !rc; g++) rc = gq_be_weight_set_rows(be, &bl.w[g], 0, bl.w[g].rows, hw[g], GQ_DT_F32);
    if (!rc) rc = gq_be_weight_upload(be, &bl.norm[GQ_NORM_ATTN_PRE], ln1, 1, d);
    if (!rc) rc = gq_be_weight_upload(be, &bl.norm[GQ_NORM_MLP_PRE], ln2, 1, d);
    if (rc != GQ_OK || gq_fwd_scratch_init(be, &c, T, &s) != GQ_OK) {
        fprintf(stderr, "%s\n", gq_errmsg());
        return;
    }
    float *xh = rnd((size_t)T * d, 1);
    void *x = gq_be_alloc(be, gq_be_act_bytes(be, (size_t)T * d));
    gq_be_upload_f32(be, x, xh, (size_t)T * d);
    float *inv = gq_malloc(sizeof(float) * (size_t)hd / 2);
    gq_rope_inv_freq(&c, T, inv);
    char *qkv = s.qkv;
    void *k = qkv + gq_be_act_bytes(be, (size_t)nq), *v = qkv + gq_be_act_bytes(be, (size_t)(nq + nkv));
    timing t, tot = {0, 0};
    double f;

    TIME(reps, t, gq_be_rmsnorm(be, s.xn, d, x, d, T, d, &bl.norm[GQ_NORM_ATTN_PRE], 1e-5f));
    report("rmsnorm", t, 0, 0), tot.wall += 2 * t.wall, tot.cpu += 2 * t.cpu;
    f = 2.0 * T * ldqkv * d;
    TIME(reps, t, gq_be_linear(be, qkv, ldqkv, s.xn, d, T, &bl.w[GQ_GRP_ATTN_IN], NULL, 0));
    report("linear qkv", t, f, plain_sgemm(T, ldqkv, d, reps)), tot.wall += t.wall, tot.cpu += t.cpu;
    TIME(reps, t, gq_be_rope(be, qkv, ldqkv, T, c.n_heads, hd, 0, inv); gq_be_rope(be, k, ldqkv, T, c.n_kv_heads, hd, 0, inv));
    report("rope q+k", t, 0, 0), tot.wall += t.wall, tot.cpu += t.cpu;
    f = 4.0 * c.n_heads * hd * ((double)T * (T + 1) / 2); /* causal QK^T and PV */
    TIME(reps, t, gq_be_attention(be, s.attn, nq, qkv, ldqkv, k, ldqkv, v, ldqkv, T, T, c.n_heads, c.n_kv_heads, hd));
    report("attention", t, f, 0), tot.wall += t.wall, tot.cpu += t.cpu;
    f = 2.0 * T * d * nq;
    TIME(reps, t, gq_be_linear(be, x, d, s.attn, nq, T, &bl.w[GQ_GRP_ATTN_OUT], NULL, 1));
    report("linear o (+residual)", t, f, plain_sgemm(T, d, nq, reps)), tot.wall += t.wall, tot.cpu += t.cpu;
    f = 2.0 * T * 2 * I * d;
    TIME(reps, t, gq_be_linear(be, s.gu, 2 * I, s.xn, d, T, &bl.w[GQ_GRP_MLP_IN], NULL, 0));
    report("linear gate+up", t, f, plain_sgemm(T, 2 * I, d, reps)), tot.wall += t.wall, tot.cpu += t.cpu;
    TIME(reps, t, gq_be_swiglu(be, s.act, I, s.gu, 2 * I, T, I));
    report("swiglu", t, 0, 0), tot.wall += t.wall, tot.cpu += t.cpu;
    f = 2.0 * T * d * I;
    TIME(reps, t, gq_be_linear(be, x, d, s.act, I, T, &bl.w[GQ_GRP_MLP_OUT], NULL, 1));
    report("linear down (+resid.)", t, f, plain_sgemm(T, d, I, reps)), tot.wall += t.wall, tot.cpu += t.cpu;
    printf("  %-22s %9.2f ms  cpu %4.0f%%   (sum of the ops)\n", "layer", tot.wall * 1e3, 100.0 * tot.cpu / tot.wall);
    TIME(reps, t, gq_fwd_layer(be, &c, 0, &bl, x, T, inv, &s));
    report("gq_fwd_layer", t, 0, 0);

    /* the attention schedules and tile sizes */
    for (int mode = 0; mode < 2; mode++) {
        static const int tiles[] = {32, 64, 128, 256};
        for (int ti = 0; ti < 4; ti++) {
            gq_backend *b2;
            setenv("GQ_CPU_ATTN", mode ? "blas" : "tasks", 1);
            gq_knobs_reload();
            char tile[16];
            snprintf(tile, sizeof tile, "%d", tiles[ti]);
            setenv("GQ_CPU_ATTN_TILE", tile, 1);
            gq_knobs_reload();
            gq_log_set_level(GQ_LOG_WARN);
            gq_backend_init(&b2, "cpu");
            gq_log_set_level(GQ_LOG_INFO);
            char label[48];
            snprintf(label, sizeof label, "attention %s/%d", mode ? "blas" : "tasks", tiles[ti]);
            f = 4.0 * c.n_heads * hd * ((double)T * (T + 1) / 2);
            TIME(reps, t, gq_be_attention(b2, s.attn, nq, qkv, ldqkv, k, ldqkv, v, ldqkv, T, T, c.n_heads, c.n_kv_heads, hd));
            report(label, t, f, 0);
            gq_backend_free(b2);
        }
    }
    unsetenv("GQ_CPU_ATTN");
    gq_knobs_reload();
    unsetenv("GQ_CPU_ATTN_TILE");
    gq_knobs_reload();

    /* the NLL head: final norm output -> logits -> log-softmax, T - 1 rows */
    float *lm = rnd((size_t)c.vocab * d, 0.02f);
    gq_bweight wl;
    gq_be_weight_upload(be, &wl, lm, c.vocab, d);
    int32_t *tg = gq_malloc(sizeof(int32_t) * (size_t)T);
    for (int i = 0; i < T; i++) tg[i] = (int32_t)((i * 7919) % c.vocab);
    double nll = 0;
    int64_t cnt = 0;
    f = 2.0 * (T - 1) * c.vocab * d;
    TIME(reps, t, gq_be_nll(be, s.xn, d, T - 1, &wl, tg, &nll, &cnt, NULL));
    report("nll head", t, f, plain_sgemm(T - 1, c.vocab, d, reps));
    gq_be_weight_free(be, &wl);
    gq_free_aligned(lm);
    free(tg);

    gq_blayer_free(be, &bl);
    gq_fwd_scratch_free(be, &s);
    gq_be_release(be, x);
    for (int i = 0; i < 4; i++) gq_free_aligned(hw[i]);
    gq_free_aligned(ln1), gq_free_aligned(ln2), gq_free_aligned(xh);
    free(inv);
    gq_backend_free(be);
}

int main(int argc, char **argv) {
    const char *which = "all";
    int T = 2048, reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--shape")) which = argv[i + 1];
        else if (!strcmp(argv[i], "--T")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: bench_forward [--shape pycoder|7b|all] [--T 2048] [--reps 5]\n");
            return 2;
        }
    }
    if (T < 2 || reps < 1) return 2;
    printf("bench_forward: T = %d, %d threads, median of %d runs\n", T, gq_get_threads(), reps);
    if (!strcmp(which, "all") || !strcmp(which, "pycoder")) bench_shape(&shapes[0], T, reps);
    if (!strcmp(which, "all") || !strcmp(which, "7b")) bench_shape(&shapes[1], T, reps < 3 ? reps : 3);
    return 0;
}
