/*
 * tests/cuda_test.h -- what test_cuda.c and test_cuda_gptq.c share: the
 * tolerances (explained in test_cuda.c), the pass in progress (fp16
 * activations, or --precision fp32), a watchdog, random inputs, the
 * GPU-vs-CPU comparison, and transfers. Include after test.h.
 */
#ifndef GQ_CUDA_TEST_H
#define GQ_CUDA_TEST_H

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gq/backend.h"
#include "test.h"

#define TOL_F16 1e-3
#define TOL_ATT2 2e-3
#define TOL_F32 1e-5
#define TOL_MODEL 2e-2
#define TOL_PPL 2e-3
#define TOL_MODEL32 1e-4
#define TOL_PPL32 1e-5

/* The pass in progress: 0 = fp16 activations (the default), 1 = --precision fp32. */
static int g_f32 __attribute__((unused));
#define TOL_OP (g_f32 ? TOL_F32 : TOL_F16)
#define TOL_MODEL_NOW (g_f32 ? TOL_MODEL32 : TOL_MODEL)
#define TOL_PPL_NOW (g_f32 ? TOL_PPL32 : TOL_PPL)

/* ---- watchdog: a hung kernel must not hang the suite -------------------------------------------- */

static char alarm_msg[512] = "TIMEOUT (cuda test)\n";
static inline void on_alarm(int sig) {
    (void)sig;
    ssize_t rc = write(2, alarm_msg, strlen(alarm_msg));
    (void)rc;
    _exit(3);
}

#ifdef GQ_USE_CUDA
static inline void set_op(const char *op) {
    snprintf(alarm_msg, sizeof alarm_msg, "TIMEOUT: no progress within the time limit in: %s\n", op);
}

/* ---- random data --------------------------------------------------------------------------------- */

#define rng_next test_rng_next
#define rng_unif test_rng_unif
#define rng_normal test_rng_normal
/* n floats ~ N(0, sd^2), fp16-representable in the fp16 pass */
static inline float *rand_h(size_t n, float sd) {
    float *v = gq_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = g_f32 ? (float)(sd * rng_normal()) : gq_round_f16(sd * rng_normal());
    return v;
}
static inline float *nan_vec(size_t n) {
    float *v = gq_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = NAN;
    return v;
}

/* ---- comparison ------------------------------------------------------------------------------------- */

/* ||got - want|| / ||want|| over [rows][width] (ld), with the worst element
 * and a check that the padding columns [width, ld) of got are still NaN. */
static inline void compare(const char *what, const float *got, const float *want, int rows, int width, int ld, double tol) {
    double num = 0, den = 0, worst = -1;
    long wi = -1;
    int pad_ok = 1;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < width; c++) {
            size_t i = (size_t)r * ld + c;
            double d = (double)got[i] - want[i];
            num += d * d;
            den += (double)want[i] * want[i];
            if (!(fabs(d) <= worst)) worst = isnan(d) ? INFINITY : fabs(d), wi = (long)i;
        }
        for (int c = width; c < ld; c++) pad_ok &= isnan(got[(size_t)r * ld + c]);
    }
    double e = den > 0 ? sqrt(num / den) : sqrt(num);
    TEST_CHECK(e <= tol,
               "%s: rel err %.3g > tol %.3g; worst |diff| %.3g at [%ld][%ld] (gpu %.7g, cpu %.7g)", what, e, tol,
               worst, wi / ld, wi % ld, wi >= 0 ? got[wi] : 0.0, wi >= 0 ? want[wi] : 0.0);
    TEST_CHECK(pad_ok, "%s: wrote into the padding columns %d..%d of its rows", what, width, ld - 1);
}

typedef struct {
    gq_backend *gpu, *cpu;
} pair;

static inline void *up(gq_backend *be, const float *h, size_t n) {
    void *d = gq_be_alloc(be, gq_be_act_bytes(be, n));
    if (d) gq_be_upload_f32(be, d, h, n);
    return d;
}
static inline void down(gq_backend *be, float *h, const void *d, size_t n) {
    int rc = gq_be_download_f32(be, h, d, n);
    if (rc != GQ_OK) {
        fprintf(stderr, "  download failed: %s\n", gq_errmsg());
        for (size_t i = 0; i < n; i++) h[i] = NAN;
    }
}
#endif /* GQ_USE_CUDA */

#endif /* GQ_CUDA_TEST_H */
