/*
 * bench_gptq.c -- CPU GPTQ solve time at Llama shapes (gq_gptq_quantize:
 * inverse factor in fp64 + the lazy-block column loop), int4 group 128.
 *
 *   make bench && ./build/bench/bench_gptq [reps] [threads] [-v]
 *   (-v: log the factor / column-loop split of every run)
 *
 * H = 2/T X^T X from random X (T = 2 K tokens, so H is well conditioned),
 * formed once per shape with cblas_ssyrk; W ~ N(0, 0.02)-like uniform. The
 * solve destroys H and W, so each repetition starts from fresh copies
 * (the copy is not timed). Prints the median of `reps` (default 3) runs.
 *
 * Measured on the 2-core dev box (AMD EPYC, OpenBLAS 0.3 OpenMP, Haswell
 * kernels), which was shared with other jobs (load 4-12), so only roughly:
 *   4096 x 4096:   7.2 s single run at load ~4 (factor 5.0 s, loop 2.0 s);
 *                  median of 3 at load 6-12: 16.1 s
 *   11008 x 4096: 63.6 s single run at load ~4 (factor 56.0 s, loop 7.5 s);
 *                  median of 3 at load 6-12: 83.7 s
 * The fp64 potrf + potri + potrf dominates (~75-90 %).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "gq/gptq.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float urand(void) { /* uniform in [-0.5, 0.5) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)(rng_state >> 40) / 16777216.0f - 0.5f;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const char *name;
    int K, N; /* in (cols), out (rows) */
} shape;

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 3;
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    if (reps < 1) reps = 1;
    gq_set_threads(threads);
    gq_log_set_level(argc > 3 && strcmp(argv[3], "-v") == 0 ? GQ_LOG_DEBUG : GQ_LOG_WARN);
    const shape shapes[] = {
        {"q_proj 4096x4096", 4096, 4096},
        {"down_proj 11008x4096", 11008, 4096},
    };
    printf("gq_gptq_quantize, CPU, %d threads, int4 g128 sym, block 128, median of %d\n", gq_get_threads(), reps);
    printf("%-24s %8s %8s %10s %10s %10s\n", "shape", "K(in)", "N(out)", "median s", "min s", "max s");
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const int K = shapes[s].K, N = shapes[s].N, T = 2 * K;
        float *X = malloc((size_t)T * K * sizeof(float));
        float *H0 = calloc((size_t)K * K, sizeof(float));
        float *W0 = malloc((size_t)N * K * sizeof(float));
        float *H = malloc((size_t)K * K * sizeof(float));
        float *W = malloc((size_t)N * K * sizeof(float));
        if (!X || !H0 || !W0 || !H || !W) {
            fprintf(stderr, "bench_gptq: out of memory for %s\n", shapes[s].name);
            return 1;
        }
        for (size_t i = 0; i < (size_t)T * K; i++) X[i] = urand();
        for (size_t i = 0; i < (size_t)N * K; i++) W0[i] = 0.07f * urand();
        /* H0 upper = 2/T X^T X */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, K, T, 2.0f / T, X, K, 0.0f, H0, K);
        free(X);
        gq_gptq_params p;
        gq_gptq_params_default(&p);
        double *t = malloc((size_t)reps * sizeof(double));
        for (int r = 0; r < reps; r++) {
            memcpy(H, H0, (size_t)K * K * sizeof(float));
            memcpy(W, W0, (size_t)N * K * sizeof(float));
            gq_qresult res;
            int st = gq_gptq_quantize(&p, W, N, K, H, &res);
            if (st != GQ_OK) {
                fprintf(stderr, "bench_gptq: %s\n", gq_errmsg());
                return 1;
            }
            t[r] = res.seconds;
            gq_qresult_free(&res);
        }
        qsort(t, (size_t)reps, sizeof *t, cmp_double);
        printf("%-24s %8d %8d %10.2f %10.2f %10.2f\n", shapes[s].name, K, N, t[reps / 2], t[0], t[reps - 1]);
        fflush(stdout);
        free(t);
        free(H0);
        free(W0);
        free(H);
        free(W);
    }
    return 0;
}
