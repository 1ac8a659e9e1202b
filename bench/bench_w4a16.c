/*
 * bench_w4a16.c -- the W4A16 linear on the GPU (src/compute/cuda/w4a16.cu): gq_be_linear with the
 * weight kept as int4 (gq_be_weight_upload_q4) against the same weight in fp16 (cuBLAS), for
 * Llama-shaped projections K x N and token counts T, with the bytes-read floor of batch-1 decode.
 *
 *   make CUDA=1 bench && ./build/bench/bench_w4a16 [--shapes 4096x4096,4096x11008,11008x4096,8192x8192]
 *        [--T 1,8,16,64,512,4096] [--reps 9] [--gs 128] [--act-order]
 *
 * Shapes are K x N (in_features x out_features). Weights are random codes, zeros and fp16 scales
 * (group size --gs, trivial g_idx, or a random act-order g_idx with --act-order). Each time is the
 * median over `reps` batches of back-to-back calls on the backend's stream (a batch lasts about 2
 * ms; host clock around the batch and one sync), divided by the calls in the batch: what a decode
 * loop without CUDA graphs sees, launch gaps included. Calls rotate over enough copies of the
 * weight (>= 256 MiB in all) that it is read from device memory, not from the 50 MB L2.
 * The floor of T = 1: the bytes of the checkpoint's int4 tensors (qweight K N / 2, scales 2 G N,
 * qzeros G N / 2) at the device's copy bandwidth, measured as cudaMemcpy device to device of 1 GiB
 * (median of 10; bandwidth = 2 GiB moved, read + write, per copy time). GB/s = those bytes / time.
 * Prints a markdown table. Without a GPU (or without CUDA compiled in) it says so and exits 0.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/backend.h"
#include "gq/pack.h"
#ifdef GQ_USE_CUDA
#include "gq/backend_cuda.h"
#endif


/* Parse "a,b,c" into v (at most cap); returns the count. */
static int parse_list(const char *s, int *v, int cap) {
    int n = 0;
    while (*s && n < cap) {
        char *e;
        long x = strtol(s, &e, 10);
        if (e == s || x <= 0) return -1;
        v[n++] = (int)x;
        s = *e == ',' ? e + 1 : e;
    }
    return n;
}

#ifdef GQ_USE_CUDA
static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* A random int4 part N x K (gs <= 0: one group), packed as v1. */
static void make_part(gq_packed *p, int N, int K, int gs, int act_order) {
    const int G = gs > 0 ? (K + gs - 1) / gs : 1;
    p->bits = 4, p->rows = N, p->cols = K, p->ngroups = G, p->v2 = 0;
    p->qweight = gq_malloc(sizeof(int32_t) * (size_t)K / 8 * N);  /* [K/8][N] */
    p->qzeros = gq_malloc(sizeof(int32_t) * (size_t)G * (N / 8)); /* [G][N/8] */
    p->scales = gq_malloc(sizeof(uint16_t) * (size_t)G * N);      /* [G][N] */
    p->g_idx = gq_malloc(sizeof(int32_t) * (size_t)K);            /* [K] */
    for (size_t i = 0; i < (size_t)K / 8 * N; i++) p->qweight[i] = (int32_t)rnd32();
    for (size_t i = 0; i < (size_t)G * (N / 8); i++) p->qzeros[i] = (int32_t)(rnd32() & 0x77777777u);
    for (size_t i = 0; i < (size_t)G * N; i++) p->scales[i] = gq_f32_to_f16(0.002f + 0.03f * (rnd32() >> 8) * 0x1p-24f);
    int32_t *perm = gq_malloc(sizeof(int32_t) * (size_t)K);
    for (int k = 0; k < K; k++) perm[k] = k;
    for (int k = K - 1; act_order && k > 0; k--) {
        int j = (int)(rnd32() % (uint32_t)(k + 1)), t = perm[k];
        perm[k] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < K; i++) p->g_idx[perm[i]] = gs > 0 ? i / gs : 0;
    free(perm);
}

#define MAX_COPIES 32
typedef struct {
    gq_backend *be;
    gq_bweight *w; /* [n] copies */
    int n, T;
    void *X, *Y;
} job;

/* Median seconds per call of gq_be_linear over reps batches of about 2 ms. */
static double time_linear(job *j, int reps) {
    const int K = j->w[0].cols, N = j->w[0].rows;
    int calls = 0, rc = GQ_OK;
#define CALL() (rc |= gq_be_linear(j->be, j->Y, N, j->X, K, j->T, &j->w[calls++ % j->n], NULL, 0))
    CALL();
    gq_be_sync(j->be);
    double t0 = gq_now();
    for (int i = 0; i < 10; i++) CALL();
    gq_be_sync(j->be);
    const double one = (gq_now() - t0) / 10;
    int batch = (int)(2e-3 / (one > 1e-7 ? one : 1e-7));
    batch = batch < 1 ? 1 : batch > 4000 ? 4000 : batch;
    double t[64];
    reps = reps > 64 ? 64 : reps < 1 ? 1 : reps;
    for (int r = 0; r < reps; r++) {
        t0 = gq_now();
        for (int i = 0; i < batch; i++) CALL();
        gq_be_sync(j->be);
        t[r] = (gq_now() - t0) / batch;
    }
#undef CALL
    if (rc != GQ_OK) fprintf(stderr, "linear failed: %s\n", gq_errmsg());
    qsort(t, (size_t)reps, sizeof *t, cmp_d);
    return t[reps / 2];
}

/* Device-to-device copy bandwidth (bytes moved, read + write, per second) of 1 GiB, median of 10. */
static double copy_bandwidth(gq_backend *be) {
    const size_t bytes = (size_t)1 << 30, n = bytes / gq_be_act_bytes(be, 1);
    void *a = gq_be_alloc(be, bytes), *b = gq_be_alloc(be, bytes);
    if (!a || !b) {
        gq_be_release(be, a), gq_be_release(be, b);
        return 0;
    }
    gq_be_memset0(be, a, bytes);
    gq_be_copy_act(be, b, a, n);
    gq_be_sync(be);
    double t[10];
    for (int r = 0; r < 10; r++) {
        double t0 = gq_now();
        gq_be_copy_act(be, b, a, n);
        gq_be_sync(be);
        t[r] = gq_now() - t0;
    }
    qsort(t, 10, sizeof *t, cmp_d);
    gq_be_release(be, a), gq_be_release(be, b);
    return 2.0 * (double)bytes / t[5];
}

/* Upload `n` copies of part p as int4 (q4 = 1) or fp16 weights; returns how many were made. */
static int upload_copies(gq_backend *be, const gq_packed *p, const float *Wf, int q4, gq_bweight *w, int n) {
    for (int i = 0; i < n; i++) {
        const gq_packed *pp[1] = {p};
        int rc = q4 ? gq_be_weight_upload_q4(be, &w[i], pp, 1) : gq_be_weight_upload(be, &w[i], Wf, p->rows, p->cols);
        if (rc != GQ_OK) {
            fprintf(stderr, "upload %s copy %d: %s\n", q4 ? "int4" : "fp16", i, gq_errmsg());
            return i;
        }
    }
    return n;
}

static int copies_for(size_t bytes) {
    size_t n = ((size_t)256 << 20) / (bytes ? bytes : 1) + 1;
    return n > MAX_COPIES ? MAX_COPIES : (int)n;
}

/* One shape: every T, one table row each. */
static void bench_shape(gq_backend *be, int K, int N, const int *Ts, int nT, int reps, int gs, int act, double bw) {
    gq_packed p;
    make_part(&p, N, K, gs, act);
    float *Wf = gq_malloc(sizeof(float) * (size_t)N * K); /* [N][K] */
    gq_packed_dequant(&p, Wf);
    const size_t qbytes = (size_t)K * N / 2 + (size_t)p.ngroups * N * 2 + (size_t)p.ngroups * N / 2;
    gq_bweight wq[MAX_COPIES], wf[MAX_COPIES];
    const int nq = upload_copies(be, &p, NULL, 1, wq, copies_for(qbytes));
    const int nf = upload_copies(be, &p, Wf, 0, wf, copies_for((size_t)K * N * 2));
    free(Wf);
    for (int i = 0; i < nT && nq > 0 && nf > 0; i++) {
        const int T = Ts[i];
        job j = {be, NULL, 0, T, gq_be_alloc(be, gq_be_act_bytes(be, (size_t)T * K)),
                 gq_be_alloc(be, gq_be_act_bytes(be, (size_t)T * N))};
        if (!j.X || !j.Y) {
            fprintf(stderr, "T=%d: %s\n", T, gq_errmsg());
        } else {
            float *x = gq_malloc(sizeof(float) * (size_t)T * K);
            for (size_t e = 0; e < (size_t)T * K; e++) x[e] = (float)((int)(rnd32() % 2001) - 1000) * 1e-3f;
            gq_be_upload_f32(be, j.X, x, (size_t)T * K);
            free(x);
            j.w = wf, j.n = nf;
            const double tf = time_linear(&j, reps);
            j.w = wq, j.n = nq;
            const double tq = time_linear(&j, reps);
            if (T == 1)
                printf("| %d x %d | %d | %.1f | %.1f | %.2f | %.0f | %.1f | %.2f |\n", K, N, T, tf * 1e6, tq * 1e6,
                       tf / tq, qbytes / tq * 1e-9, qbytes / bw * 1e6, tq / (qbytes / bw));
            else
                printf("| %d x %d | %d | %.1f | %.1f | %.2f | | | |\n", K, N, T, tf * 1e6, tq * 1e6, tf / tq);
            fflush(stdout);
        }
        gq_be_release(be, j.X), gq_be_release(be, j.Y);
    }
    for (int i = 0; i < nq; i++) gq_be_weight_free(be, &wq[i]);
    for (int i = 0; i < nf; i++) gq_be_weight_free(be, &wf[i]);
    gq_packed_free(&p);
}

#endif /* GQ_USE_CUDA */

int main(int argc, char **argv) {
    int shapes[16][2] = {{4096, 4096}, {4096, 11008}, {11008, 4096}, {8192, 8192}}, nshapes = 4;
    int Ts[32] = {1, 8, 16, 64, 512, 4096}, nT = 6, reps = 9, gs = 128, act = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--shapes") && v) {
            nshapes = 0;
            for (const char *s = v; *s && nshapes < 16;) {
                int k, n, used;
                if (sscanf(s, "%dx%d%n", &k, &n, &used) != 2 || k % 8 || n % 8 || k <= 0 || n <= 0) {
                    fprintf(stderr, "--shapes: expected KxN,KxN,... with multiples of 8, got '%s'\n", v);
                    return 2;
                }
                shapes[nshapes][0] = k, shapes[nshapes][1] = n, nshapes++;
                s += used;
                if (*s == ',') s++;
            }
            i++;
        } else if (!strcmp(a, "--T") && v) {
            if ((nT = parse_list(v, Ts, 32)) <= 0) return fprintf(stderr, "--T: expected 1,8,...\n"), 2;
            i++;
        } else if (!strcmp(a, "--reps") && v) {
            reps = atoi(v), i++;
        } else if (!strcmp(a, "--gs") && v) {
            gs = atoi(v), i++;
        } else if (!strcmp(a, "--act-order")) {
            act = 1;
        } else {
            fprintf(stderr, "usage: %s [--shapes KxN,...] [--T 1,8,...] [--reps N] [--gs 128|-1] [--act-order]\n",
                    argv[0]);
            return 2;
        }
    }
    gq_log_set_level(GQ_LOG_WARN);
#ifdef GQ_USE_CUDA
    if (gq_cuda_device_count() <= 0) {
        printf("SKIP: no CUDA device: bench_w4a16 needs a GPU\n");
        return 0;
    }
    gq_backend *be = NULL;
    if (gq_backend_init(&be, "cuda:0") != GQ_OK) {
        fprintf(stderr, "cuda backend: %s\n", gq_errmsg());
        return 1;
    }
    const double bw = copy_bandwidth(be);
    printf("%s; copy bandwidth %.0f GB/s (cudaMemcpy device to device of 1 GiB: 2 GiB moved / median time)\n",
           gq_backend_name(be), bw * 1e-9);
    printf("int4 weights: group size %d, %s g_idx; times in us per call (median of %d batches)\n\n", gs,
           act ? "act-order" : "trivial", reps);
    printf("| K x N | T | fp16 us | int4 us | fp16 / int4 | int4 GB/s | floor us | int4 / floor |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    for (int s = 0; s < nshapes; s++) bench_shape(be, shapes[s][0], shapes[s][1], Ts, nT, reps, gs, act, bw);
    char b[32];
    printf("\npeak device memory %s\n", gq_fmt_bytes(b, sizeof b, (double)gq_be_peak_bytes(be)));
    gq_backend_free(be);
#else
    (void)shapes, (void)nshapes, (void)Ts, (void)nT, (void)reps, (void)gs, (void)act;
    printf("SKIP: gq built without CUDA (make CUDA=1): bench_w4a16 needs a GPU\n");
#endif
    return 0;
}
