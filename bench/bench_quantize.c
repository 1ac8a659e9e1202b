/*
 * bench_quantize.c -- wall time of a whole `gq quantize` run, split into
 * load, forward, Hessian, solve and export (the report of gq_quantize_run),
 * with the achieved GFLOP/s of the forward and Hessian work next to
 * OpenBLAS's own sgemm/ssyrk rate on this machine.
 *
 *   bench_quantize --model DIR [--calib FILE] [--device cpu|cuda] [--reps N]
 *                  [--nsamples 128] [--seqlen 2048] [--method gptq|rtn]
 *
 * Medians over --reps runs (default 1: a pycoder-30m run takes minutes on 2
 * cores). The forward FLOPs are those of the stages of src/quant/qlayer.c (q/k/v,
 * o, gate/up twice, down, causal attention); the Hessian FLOPs are T K^2
 * per Hessian (the upper triangle of X^T X).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gq/cli.h"
#include "gq/model.h"
#include "gq/quantize.h"

#include <cblas.h>
#undef I /* <complex.h>, pulled in by cblas.h */

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* OpenBLAS's own rate: median of 5 sgemm 2048^3 and ssyrk (K 1024, T 2048). */
static void blas_peak(double *gemm, double *syrk) {
    const int n = 2048, k = 1024;
    float *a = gq_malloc_aligned(sizeof(float) * n * n), *b = gq_malloc_aligned(sizeof(float) * n * n);
    float *c = gq_malloc_aligned(sizeof(float) * n * n);
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = (float)(i % 17) * 0.01f, b[i] = (float)(i % 13) * 0.02f;
    double t[5];
    for (int r = 0; r < 6; r++) {
        double t0 = gq_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        if (r) t[r - 1] = gq_now() - t0;
    }
    *gemm = 2.0 * n * n * n / median(t, 5) * 1e-9;
    for (int r = 0; r < 6; r++) {
        double t0 = gq_now();
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, k, n, 1.0f, a, k, 1.0f, c, k);
        if (r) t[r - 1] = gq_now() - t0;
    }
    *syrk = (double)n * k * k / median(t, 5) * 1e-9;
    gq_free_aligned(a), gq_free_aligned(b), gq_free_aligned(c);
}

int main(int argc, char **argv) {
    gq_quant_opts o;
    gq_quant_opts_default(&o);
    o.calib_path = "calib/python-sitepackages.jsonl";
    o.out_dir = "/tmp/gq-bench-quantize";
    o.device = "cpu";
    o.force = 1;
    int reps = 1;
    const char *method = "gptq";
    gq_opt opts[] = {
        {"model", GQ_OPT_STR, &o.model_dir, "checkpoint directory", NULL, 0, 0},
        {"calib", GQ_OPT_STR, &o.calib_path, "calibration JSONL", NULL, 0, 0},
        {"out", GQ_OPT_STR, &o.out_dir, "scratch output directory (replaced)", NULL, 0, 0},
        {"device", GQ_OPT_STR, &o.device, "cpu, cuda or auto", NULL, 0, 0},
        {"reps", GQ_OPT_INT, &reps, "runs (medians are reported)", NULL, 0, 0},
        {"nsamples", GQ_OPT_INT, &o.nsamples, "calibration sequences", NULL, 0, 0},
        {"seqlen", GQ_OPT_INT, &o.seqlen, "tokens per sequence", NULL, 0, 0},
        {"method", GQ_OPT_STR, &method, "gptq or rtn", "gptq|rtn", 0, 0},
    };
    int n = (int)(sizeof opts / sizeof *opts);
    int rc = gq_opts_parse("bench_quantize", "--model DIR [options]", opts, n, argc - 1, argv + 1, NULL, 0, NULL);
    if (rc) {
        if (rc < 0) fprintf(stderr, "%s\n", gq_errmsg());
        return rc < 0 ? 2 : 0;
    }
    if (!o.model_dir || reps < 1) {
        gq_opts_usage(stderr, "bench_quantize", "--model DIR [options]", opts, n);
        return 2;
    }
    o.gptq.method = strcmp(method, "rtn") ? GQ_METHOD_GPTQ : GQ_METHOD_RTN;
    gq_set_threads(0);
    gq_log_set_level(GQ_LOG_WARN);

    gq_config c;
    if (gq_config_load(&c, o.model_dir)) {
        fprintf(stderr, "%s\n", gq_errmsg());
        return 1;
    }
    double *v[6];
    for (int k = 0; k < 6; k++) v[k] = gq_calloc((size_t)reps, sizeof(double));
    size_t peak = 0, dpeak = 0;
    int64_t ntok = 0;
    for (int r = 0; r < reps; r++) {
        gq_quant_report rep;
        if (gq_quantize_run(&o, &rep)) {
            fprintf(stderr, "bench_quantize: %s\n", gq_errmsg());
            return 1;
        }
        v[0][r] = rep.t_total, v[1][r] = rep.t_load, v[2][r] = rep.t_forward, v[3][r] = rep.t_hessian;
        v[4][r] = rep.t_solve, v[5][r] = rep.t_export;
        peak = rep.peak_rss, dpeak = rep.peak_device, ntok = rep.n_calib_tokens;
        gq_quant_report_free(&rep);
    }
    double med[6];
    for (int k = 0; k < 6; k++) med[k] = median(v[k], reps);

    /* FLOPs of the stages (src/quant/qlayer.c), all layers */
    const double N = (double)ntok, h = c.hidden, I = c.intermediate, hd = c.head_dim;
    const double q = (double)c.n_heads * hd, kv = (double)c.n_kv_heads * hd, L = c.n_layers;
    const double T = o.seqlen, nseq = N / T;
    double fwd = L * (2 * N * h * (q + 2 * kv) + 2 * N * q * h + 2 * (2 * N * h * 2 * I) + 2 * N * I * h +
                      nseq * 2 * T * T * hd * c.n_heads);
    double hess = L * N * (h * h + q * q + h * h + I * I);
    double pg, ps;
    blas_peak(&pg, &ps);
    char b1[32], b2[32];
    printf("gq quantize %s on %s (%s), %lld calibration tokens, median of %d run%s\n", o.model_dir, o.device,
           method, (long long)ntok, reps, reps > 1 ? "s" : "");
    printf("  %-10s %9.2f s\n", "total", med[0]);
    printf("  %-10s %9.2f s\n", "load", med[1]);
    printf("  %-10s %9.2f s   %8.1f GFLOP -> %6.1f GFLOP/s (OpenBLAS sgemm 2048^3: %.1f GFLOP/s)\n", "forward",
           med[2], fwd * 1e-9, med[2] > 0 ? fwd / med[2] * 1e-9 : 0, pg);
    printf("  %-10s %9.2f s   %8.1f GFLOP -> %6.1f GFLOP/s (OpenBLAS ssyrk K 1024, T 2048: %.1f GFLOP/s)\n",
           "Hessian", med[3], hess * 1e-9, med[3] > 0 ? hess / med[3] * 1e-9 : 0, ps);
    printf("  %-10s %9.2f s\n", "solve", med[4]);
    printf("  %-10s %9.2f s\n", "export", med[5]);
    printf("  peak host memory %s, peak device memory %s\n", gq_fmt_bytes(b1, sizeof b1, (double)peak),
           gq_fmt_bytes(b2, sizeof b2, (double)dpeak));
    for (int k = 0; k < 6; k++) free(v[k]);
    gq_rmtree(o.out_dir);
    return 0;
}
