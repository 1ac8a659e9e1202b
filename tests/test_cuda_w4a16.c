/*
 * test_cuda_w4a16.c -- int4 weights resident on the GPU (gq_be_weight_upload_q4 + gq_be_linear,
 * src/compute/cuda/w4a16.cu) against the scalar reference gq_w4a16_ref (gq/ref.h), on every shape
 * class: T in {1, 3, 8, 16} (the decode kernel, one or two mma per k-tile) and {17, 64, 300} (the
 * prefill path: fp16 dequantization + cuBLAS); K x N = 256 x 96, 264 x 40 (K not a multiple of 16
 * or of the group), 1024 x 1376, 4096 x 512; group sizes 32, 64, 128, -1 (and 16, 48: the
 * general path with a trivial g_idx); v1 and v2 zeros; sym (zero 8) and asym (random zeros);
 * trivial and act-order g_idx (from a random permutation); 1 part, or 3 stacked parts (odd
 * multiples of 8 rows) each with its own group size and g_idx, mixing trivial and act-order in
 * one launch; bias and accumulate; ldx / ldy wider than the data (ldx % 4 != 0 takes the
 * kernel's 2-byte X loads), NaN in the padding of X (never read) and of Y (never written).
 * Also: --precision fp32 reports int4 unsupported, the device bytes of an int4 weight count in
 * gq_be_peak_bytes, and the argument checks reach the CUDA backend.
 *
 *   make CUDA=1 build/tests/test_cuda_w4a16 && ./build/tests/test_cuda_w4a16
 *
 * Tolerance, per element: |gpu - ref| <= 2^-10 |ref| + 2^-11 (4 sqrt(K) max|x| max|w| + max|b|) + 2^-24.
 * X is fp16-valued, so the products are exact and the reference (double) has no error of its own.
 * The GPU rounds each weight once to fp16 (scale * (q - zero): relative error <= 2^-11 per term,
 * independent signs, so the sum's error is a random walk of K terms of at most 2^-11 |x w|:
 * 4 sqrt(K) max|x| max|w| 2^-11 is over 10 standard deviations); fp32 accumulation adds about
 * 2^-24 sqrt(K) of that, negligible; the output is rounded to fp16 once (decode: sum + bias + Y
 * in fp32, one rounding: 2^-11 |ref|) or twice (prefill: cuBLAS rounds X W^T (+ Y), then the
 * bias add rounds again: 2^-11 (|ref| + |bias|) more). A wrong nibble order, zero, scale, group
 * or part gives errors of order |ref| (tens to hundreds of times the tolerance).
 * Without a CUDA device (or without CUDA compiled in) it skips with a message.
 */
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gq/backend.h"
#include "gq/pack.h"
#include "gq/ref.h"
#include "test.h"
#ifdef GQ_USE_CUDA
#include "gq/backend_cuda.h"
#endif

#include "cuda_test.h"
#include "test_w4a16_util.h"

#ifdef GQ_USE_CUDA

/* One weight of nparts parts, run at every T of Ts. */
typedef struct {
    int K, nparts;
    int N[3], gs[3], act[3];
    int v2, sym;
} w4_case;

static float *w4_nan_vec(size_t n) {
    float *v = gq_malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) v[i] = NAN;
    return v;
}

/* gq_be_linear of the uploaded int4 weight W at T tokens (accumulate, bias, ldx pad) against the reference. */
static void run_T(gq_backend *be, const w4_case *c, const gq_packed *const *pp, const gq_bweight *W,
                  const gq_bweight *bw, const float *bias, double max_w, int T, int accumulate, int xpad,
                  const char *name) {
    const int K = c->K, Nt = W->rows, ldx = K + xpad, ldy = Nt + 5;
    char what[300];
    snprintf(what, sizeof what, "%s T=%d acc=%d bias=%d ldx=%d ldy=%d", name, T, accumulate, bias != NULL, ldx, ldy);
    set_op(what);
    float *X = rand_h((size_t)T * ldx, 1.0f), *Y = w4_nan_vec((size_t)T * ldy), *Yr = w4_nan_vec((size_t)T * ldy);
    double max_x = 0, max_b = 0;
    for (int t = 0; t < T; t++)
        for (int k = 0; k < ldx; k++) {
            float *x = &X[(size_t)t * ldx + k];
            if (k >= K) *x = NAN; /* never read */
            else max_x = fmax(max_x, fabs(*x));
        }
    float *Y0 = accumulate ? rand_h((size_t)T * ldy, 2.0f) : NULL; /* the Y accumulated into */
    if (Y0)
        for (int t = 0; t < T; t++)
            for (int n = Nt; n < ldy; n++) Y0[(size_t)t * ldy + n] = NAN;
    void *dX = up(be, X, (size_t)T * ldx), *dY = up(be, Y0 ? Y0 : Y, (size_t)T * ldy);
    TEST_OK(gq_be_linear(be, dY, ldy, dX, ldx, T, W, bias ? bw : NULL, accumulate), "%s", what);
    down(be, Y, dY, (size_t)T * ldy);
    gq_w4a16_ref(Yr, ldy, X, ldx, T, pp, c->nparts);
    for (int t = 0; t < T; t++)
        for (int n = 0; n < Nt; n++) {
            float *r = &Yr[(size_t)t * ldy + n];
            if (bias) *r += bias[n], max_b = fmax(max_b, fabs(bias[n]));
            if (Y0) *r += Y0[(size_t)t * ldy + n];
        }
    const double u = 0x1p-11;
    w4_check(what, Y, Yr, T, Nt, ldy, 2 * u, u * (4 * sqrt((double)K) * max_x * max_w + max_b) + 0x1p-24, 1);
    gq_be_release(be, dX), gq_be_release(be, dY);
    free(X), free(Y), free(Yr), free(Y0);
}

/* Upload the case's parts as one int4 weight, then every T. */
static void run_case(gq_backend *be, const w4_case *c, int idx) {
    static const int Ts[7] = {1, 3, 8, 16, 17, 64, 300};
    char name[200];
    snprintf(name, sizeof name, "w4a16 #%d K=%d parts=%d N=%d/%d/%d gs=%d/%d/%d act=%d/%d/%d v2=%d sym=%d", idx, c->K,
             c->nparts, c->N[0], c->N[1], c->N[2], c->gs[0], c->gs[1], c->gs[2], c->act[0], c->act[1], c->act[2],
             c->v2, c->sym);
    set_op(name);
    gq_packed pk[3];
    const gq_packed *pp[3];
    double max_w = 0;
    int Nt = 0;
    for (int i = 0; i < c->nparts; i++) {
        const w4_spec s = {c->N[i], c->K, c->gs[i], c->act[i], c->v2, c->sym};
        TEST_OK(w4_make_part(&s, &pk[i], NULL), "%s: pack part %d", name, i);
        pp[i] = &pk[i];
        max_w = fmax(max_w, w4_max_w(&pk[i]));
        Nt += c->N[i];
    }
    gq_bweight W, bw;
    TEST_OK(gq_be_weight_upload_q4(be, &W, pp, c->nparts), "%s: upload", name);
    TEST_CHECK(W.q4 && W.rows == Nt && W.cols == c->K && W.dtype == GQ_DT_F16, "%s: weight %d x %d (%s)", name,
               W.rows, W.cols, gq_dtype_name(W.dtype));
    const size_t packed = (size_t)Nt * c->K / 2; /* the qweight alone */
    TEST_CHECK(gq_be_weight_bytes(&W) >= packed, "%s: int4 weight holds %zu device bytes, expected >= %zu", name,
               gq_be_weight_bytes(&W), packed);
    float *bias = rand_h((size_t)Nt, 0.5f);
    TEST_OK(gq_be_weight_upload(be, &bw, bias, 1, Nt), "%s: bias", name);
    if (W.q4)
        for (int j = 0; j < 7; j++) {
            if (Ts[j] == 300 && (size_t)c->K * Nt > ((size_t)2 << 20) && idx % 4) continue; /* reference time */
            const int acc = (idx + j) & 1, with_bias = ((idx + j) >> 1) & 1, xpad = j & 1 ? 3 : 8;
            run_T(be, c, pp, &W, &bw, with_bias ? bias : NULL, max_w, Ts[j], acc, xpad, name);
        }
    gq_be_weight_free(be, &W);
    gq_be_weight_free(be, &bw);
    TEST_CHECK(W.q4 == NULL && gq_be_weight_bytes(&W) == 0, "%s: freed", name);
    for (int i = 0; i < c->nparts; i++) gq_packed_free(&pk[i]);
    free(bias);
}

static void run_all(gq_backend *be) {
    static const int shapes[4][4] = {/* K, and the rows of 3 parts (1 part: their sum) */
                                     {256, 40, 24, 32},
                                     {264, 16, 8, 16},
                                     {1024, 1000, 200, 176},
                                     {4096, 328, 88, 96}};
    static const int gss[4] = {32, 64, 128, -1};
    int idx = 0;
    for (int s = 0; s < 4; s++)
        for (int gi = 0; gi < 4; gi++)
            for (int ao = 0; ao < 2; ao++, idx++) {
                w4_case c;
                memset(&c, 0, sizeof c);
                c.K = shapes[s][0];
                c.v2 = idx & 1;
                c.sym = (idx >> 1) & 1;
                c.nparts = (idx % 3) == 2 ? 1 : 3;
                if (c.nparts == 1) {
                    c.N[0] = shapes[s][1] + shapes[s][2] + shapes[s][3];
                    c.gs[0] = gss[gi];
                    c.act[0] = ao;
                } else {
                    for (int p = 0; p < 3; p++) {
                        c.N[p] = shapes[s][1 + p];
                        c.gs[p] = gss[(gi + p) % 4];
                        c.act[p] = ao ^ (p == 1);
                    }
                }
                run_case(be, &c, idx);
            }
    /* group sizes the fast path does not take (16 is a trivial fast path; 48 is not a power of two) */
    const w4_case extra[3] = {
        {512, 1, {64, 0, 0}, {16, 0, 0}, {0, 0, 0}, 0, 0},
        {512, 1, {64, 0, 0}, {48, 0, 0}, {0, 0, 0}, 1, 0},
        {1024, 3, {128, 64, 64}, {48, 16, 128}, {0, 1, 0}, 0, 1},
    };
    for (int i = 0; i < 3; i++) run_case(be, &extra[i], idx++);
}

/* The argument checks reach the CUDA backend; --precision fp32 has no int4 weights. */
static void run_checks(void) {
    TEST_BEGIN("cuda w4a16 checks");
    gq_backend *be = NULL;
    TEST_OK(gq_backend_init(&be, "cuda:0"), "cuda backend");
    if (!be) return;
    TEST_CHECK(gq_be_q4_supported(be) == 1, "CUDA fp16 keeps int4 weights resident");
    gq_packed a;
    const w4_spec s = {16, 64, 32, 0, 0, 0};
    TEST_OK(w4_make_part(&s, &a, NULL), "pack");
    const gq_packed *pp[1] = {&a};
    gq_bweight w;
    const size_t peak0 = gq_be_peak_bytes(be); /* a fresh backend: the weight raises the high-water mark */
    TEST_OK(gq_be_weight_upload_q4(be, &w, pp, 1), "upload");
    TEST_CHECK(gq_be_peak_bytes(be) >= peak0 + gq_be_weight_bytes(&w) && gq_be_weight_bytes(&w) >= 16 * 64 / 2,
               "int4 weight of %zu device bytes counted in the peak: %zu -> %zu", gq_be_weight_bytes(&w), peak0,
               gq_be_peak_bytes(be));
    gq_be_weight_free(be, &w);
    a.g_idx[7] = 5;
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 1), GQ_ERR_FORMAT, "g_idx[7] = 5, expected 0..1");
    a.g_idx[7] = 0;
    gq_backend_free(be);
    be = NULL;
    TEST_OK(gq_backend_init(&be, "cuda:0"), "cuda backend (fp32)");
    if (be && gq_backend_set_precision(be, "fp32") == GQ_OK) {
        TEST_CHECK(gq_be_q4_supported(be) == 0, "CUDA --precision fp32 does not keep int4 weights");
        TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 1), GQ_ERR_UNSUPPORTED, "fp32");
    }
    gq_backend_free(be);
    gq_packed_free(&a);
}
#endif /* GQ_USE_CUDA */

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    signal(SIGALRM, on_alarm);
    alarm(900);
#ifdef GQ_USE_CUDA
    if (gq_cuda_device_count() > 0) {
        gq_backend *be = NULL;
        TEST_BEGIN("cuda w4a16");
        TEST_OK(gq_backend_init(&be, "cuda:0"), "cuda backend");
        if (be) run_all(be);
        gq_backend_free(be);
        run_checks();
    } else {
        TEST_SKIP("no CUDA device: GPU tests skipped");
    }
#else
    TEST_SKIP("gq built without CUDA (make CUDA=0 or no nvcc): GPU tests skipped");
#endif
    return TEST_REPORT();
}
