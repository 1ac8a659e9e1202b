/*
 * test_gptq.c -- the quantizer on hand-computed values, the GPTQ solve
 * against the torch re-implementation of IST-DASLab/gptq
 * (tests/ref/gptq_ref.py -> tests/data/gptq/), the inverse factor, dead
 * columns, the Cholesky retry and RTN fallback paths, and input errors.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/gptq.h"
#include "quant/gptq_driver.h"
#include "test.h"
#include "test_gptq_util.h"

/* ---- quantizer, hand-computed ------------------------------------------------ */

static void test_quantizer(void) {
    TEST_BEGIN("quantizer");
    float s;
    int32_t z;

    /* asym 4-bit on [-1.25, 2.5]: scale = 3.75 / 15 = 0.25 and zero =
     * rint(1.25 / 0.25) = 5, all exact in binary. */
    const float x1[] = {-1.25f, 0.375f, 2.5f, 0.625f, -0.125f};
    gq_quant_params_ex(x1, 5, 1, 4, 0, GQ_ZERO_FREE, 0, &s, &z);
    TEST_CHECK(s == 0.25f && z == 5, "asym [-1.25, 2.5]: scale %g zero %d, want 0.25 and 5", s, z);
    /* Ties round half to even (torch.round, rintf), not away from zero:
     * 0.375/0.25 = 1.5 -> 2; 0.625/0.25 = 2.5 -> 2 (roundf: 3);
     * -0.125/0.25 = -0.5 -> -0 (roundf: -1). */
    TEST_CHECK(gq_quant_code(0.375f, s, z, 15) == 7, "1.5 rounds to 2 (code 7)");
    TEST_CHECK(gq_quant_code(0.625f, s, z, 15) == 7, "2.5 rounds to 2, half to even (code 7), got %d",
               gq_quant_code(0.625f, s, z, 15));
    TEST_CHECK(gq_quant_code(-0.125f, s, z, 15) == 5, "-0.5 rounds to 0 (code 5), got %d",
               gq_quant_code(-0.125f, s, z, 15));
    TEST_CHECK(gq_quant_code(2.5f, s, z, 15) == 15 && gq_quant_code(-1.25f, s, z, 15) == 0, "range ends");
    TEST_CHECK(gq_quant_code(100.0f, s, z, 15) == 15 && gq_quant_code(-100.0f, s, z, 15) == 0, "clamping");
    TEST_CHECK(gq_dequant(7, s, z) == 0.5f, "dequant scale * (q - zero)");
    /* stride: every other element of {-1.25, 9, 2.5, 9} */
    const float xs[] = {-1.25f, 9.0f, 2.5f, 9.0f};
    gq_quant_params_ex(xs, 2, 2, 4, 0, GQ_ZERO_FREE, 0, &s, &z);
    TEST_CHECK(s == 0.25f && z == 5, "stride 2 reads x[0], x[2]: scale %g zero %d", s, z);

    /* sym quirk: all values >= 0 keep xmin = 0, so scale = xmax / 15 (not
     * 2 xmax / 15) with zero 8: the top value 3.0 maps to 15 + 8, clamped to
     * 15, and comes back as 7 * 0.2 = 1.4. */
    const float x2[] = {0.5f, 1.5f, 3.0f};
    gq_quant_params_ex(x2, 3, 1, 4, 1, GQ_ZERO_V1, 0, &s, &z);
    TEST_CHECK(s == 3.0f / 15.0f && z == 8, "sym all-positive quirk: scale %g (want 0.2), zero %d", s, z);
    TEST_CHECK(gq_quant_code(3.0f, s, z, 15) == 15, "sym quirk: clipped top");
    TEST_NEAR(gq_dequant(15, s, z), 1.4, 1e-6, "sym quirk: 3.0 reconstructed as 1.4 (float rounding only)");
    /* sym with a negative value: xmax = max(|xmin|, xmax) = 3, xmin = -3. */
    const float x3[] = {-1.0f, 3.0f};
    gq_quant_params_ex(x3, 2, 1, 4, 1, GQ_ZERO_V1, 0, &s, &z);
    TEST_CHECK(s == 6.0f / 15.0f && z == 8, "sym [-1, 3]: scale %g (want 0.4), zero %d", s, z);
    /* all zero: range [-1, 1] */
    const float x4[] = {0.0f, 0.0f, 0.0f};
    gq_quant_params_ex(x4, 3, 1, 4, 1, GQ_ZERO_V1, 0, &s, &z);
    TEST_CHECK(s == 2.0f / 15.0f && z == 8, "all zero sym: scale %g zero %d", s, z);
    /* asym: zero = rint(1 / fl(2/15)); fl(2/15) is slightly above 2/15, so
     * the quotient is just below 7.5 and the zero is 7 (torch gives 7 too). */
    gq_quant_params_ex(x4, 3, 1, 4, 0, GQ_ZERO_FREE, 0, &s, &z);
    TEST_CHECK(s == 2.0f / 15.0f && z == 7, "all zero asym: scale %g zero %d (want 7)", s, z);

    /* zero policy: asym all-positive [0, 3]: zero rint(0) = 0. FREE keeps it;
     * V1 moves to zero 1 with scale 3 / 14 (still covering [0, 3]). */
    const float x5[] = {0.5f, 3.0f};
    gq_quant_params_ex(x5, 2, 1, 4, 0, GQ_ZERO_FREE, 0, &s, &z);
    TEST_CHECK(s == 0.2f && z == 0, "zero policy FREE: scale %g zero %d", s, z);
    gq_quant_params_ex(x5, 2, 1, 4, 0, GQ_ZERO_V1, 0, &s, &z);
    TEST_CHECK(s == 3.0f / 14.0f && z == 1, "zero policy V1: scale %g (want 3/14) zero %d", s, z);
    TEST_CHECK(gq_quant_code(3.0f, s, z, 15) == 15 && gq_dequant(15, s, z) == 3.0f, "V1 grid still reaches xmax");
    /* A small negative xmin that still rounds to zero 0 (0.05 / 0.2 = 0.25). */
    const float x6[] = {-0.05f, 2.95f};
    gq_quant_params_ex(x6, 2, 1, 4, 0, GQ_ZERO_V1, 0, &s, &z);
    TEST_CHECK(s == 3.0f / 14.0f && z == 1, "zero policy V1 with xmin < 0: scale %g zero %d", s, z);

    /* fp16 scales: 1.1 / 15 is not an fp16 value; gq rounds it before the
     * zero: zero = rint(1 / scale16). */
    const float x7[] = {-1.0f, 0.1f};
    float s32;
    gq_quant_params_ex(x7, 2, 1, 4, 0, GQ_ZERO_V1, 0, &s32, &z);
    gq_quant_params_ex(x7, 2, 1, 4, 0, GQ_ZERO_V1, 1, &s, &z);
    TEST_CHECK(s32 == 1.1f / 15.0f && s == gq_round_f16(1.1f / 15.0f) && s != s32, "fp16 scale %.9g from %.9g", s,
               s32);
    TEST_CHECK(z == (int32_t)rintf(1.0f / s), "zero from the fp16 scale");
    gq_quant_params(x7, 2, 1, 4, 0, GQ_ZERO_V1, &s32, &z);
    TEST_CHECK(s32 == s, "gq_quant_params rounds scales to fp16");
    /* fp16 underflow: a range of 1e-9 gives a scale below the smallest fp16
     * subnormal; gq keeps it positive at 2^-24. */
    const float x8[] = {1e-9f, 0.0f};
    gq_quant_params_ex(x8, 2, 1, 4, 0, GQ_ZERO_FREE, 1, &s, &z);
    TEST_CHECK(s == ldexpf(1.0f, -24) && z == 0, "fp16 underflow: scale %g zero %d", s, z);
        const float x9[] = {-1.0f, 1.0f};
    gq_quant_params_ex(x9, 2, 1, 8, 0, GQ_ZERO_FREE, 0, &s, &z);
    /* 8-bit [-1, 1] asym: zero = rint(1 / fl(2/255)) = 127 (torch: 127). */
    TEST_CHECK(s == 2.0f / 255.0f && z == 127, "8-bit asym: scale %g zero %d (want 127)", s, z);
    gq_quant_params_ex(x9, 2, 1, 8, 1, GQ_ZERO_FREE, 0, &s, &z);
    TEST_CHECK(z == 128, "8-bit sym zero %d (want 128)", z);

    /* gq/quant_math.h directly (the code the CUDA kernels compile too) */
    TEST_CHECK(gq_round_scale_f16(1e6f) == 65504.0f && gq_round_scale_f16(0.0f) == ldexpf(1.0f, -24) &&
                   gq_round_scale_f16(0.1f) == gq_round_f16(0.1f),
               "gq_round_scale_f16: overflow 65504, 0 -> 2^-24, else the nearest fp16");
    gq_qcfg qa;
    memset(&qa, 0, sizeof qa);
    qa.maxq = gq_maxq(3), qa.scale_f16 = 1;
    float s2;
    int32_t z2;
    gq_qm_params(-0.3f, 1.7f, qa, &s2, &z2);
    gq_quant_params_minmax(-0.3f, 1.7f, 3, 0, GQ_ZERO_V1, 1, &s, &z);
    TEST_CHECK(s2 == s && z2 == z && s == gq_round_f16(2.0f / 7.0f), "gq_qm_params == gq_quant_params_minmax");
    TEST_CHECK(gq_quant_code(NAN, 0.25f, 5, 15) == 0 && gq_dequant(0, 0.25f, 5) == -1.25f, "NaN -> code 0");
}

/* ---- fixtures --------------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, pos;
    int bad;
} reader;

static void rd(reader *r, void *dst, size_t n) {
    if (r->bad || r->pos + n > r->len) {
        r->bad = 1;
        memset(dst, 0, n);
        return;
    }
    memcpy(dst, r->buf + r->pos, n);
    r->pos += n;
}

typedef struct {
    int rows, cols;
    float *W, *H;
} fx_in;

typedef struct {
    int rows, cols, method, bits, group_size, sym, act_order, static_groups, zero_policy, scale_f16, block_size,
        ngroups;
    double damp, loss;
    uint8_t *codes;
    float *scales, *Q, *row_loss;
    int32_t *zeros, *g_idx, *perm;
} fx_out;

static int load_in(const char *name, fx_in *in) {
    reader r = {0};
    size_t len;
    if (gq_read_file(gq_test_data(name), &r.buf, &len) != GQ_OK) return -1;
    r.len = len;
    char magic[8];
    uint32_t ver;
    rd(&r, magic, 8);
    rd(&r, &ver, 4);
    rd(&r, &in->rows, 4);
    rd(&r, &in->cols, 4);
    if (r.bad || memcmp(magic, "GQGPTQI", 8) != 0 || ver != 1 || in->rows <= 0 || in->cols <= 0) {
        free(r.buf);
        return -1;
    }
    size_t nw = (size_t)in->rows * in->cols, nh = (size_t)in->cols * in->cols;
    in->W = malloc(nw * 4);
    in->H = malloc(nh * 4);
    rd(&r, in->W, nw * 4);
    rd(&r, in->H, nh * 4);
    int ok = !r.bad && r.pos == r.len;
    free(r.buf);
    return ok ? 0 : -1;
}

static void free_in(fx_in *in) {
    free(in->W);
    free(in->H);
}

static int load_out(const char *name, fx_out *o) {
    reader r = {0};
    size_t len;
    memset(o, 0, sizeof *o);
    if (gq_read_file(gq_test_data(name), &r.buf, &len) != GQ_OK) return -1;
    r.len = len;
    char magic[8];
    uint32_t ver;
    rd(&r, magic, 8);
    rd(&r, &ver, 4);
    int32_t f[12];
    rd(&r, f, sizeof f);
    o->rows = f[0], o->cols = f[1], o->method = f[2], o->bits = f[3], o->group_size = f[4], o->sym = f[5];
    o->act_order = f[6], o->static_groups = f[7], o->zero_policy = f[8], o->scale_f16 = f[9];
    o->block_size = f[10], o->ngroups = f[11];
    rd(&r, &o->damp, 8);
    if (r.bad || memcmp(magic, "GQGPTQO", 8) != 0 || ver != 1 || o->rows <= 0 || o->cols <= 0 || o->ngroups <= 0) {
        free(r.buf);
        return -1;
    }
    size_t nw = (size_t)o->rows * o->cols, ng = (size_t)o->ngroups * o->rows;
    o->codes = malloc(nw);
    o->scales = malloc(ng * 4);
    o->zeros = malloc(ng * 4);
    o->g_idx = malloc((size_t)o->cols * 4);
    o->perm = malloc((size_t)o->cols * 4);
    o->Q = malloc(nw * 4);
    o->row_loss = malloc((size_t)o->rows * 4);
    rd(&r, o->codes, nw);
    rd(&r, o->scales, ng * 4);
    rd(&r, o->zeros, ng * 4);
    rd(&r, o->g_idx, (size_t)o->cols * 4);
    rd(&r, o->perm, (size_t)o->cols * 4);
    rd(&r, o->Q, nw * 4);
    rd(&r, o->row_loss, (size_t)o->rows * 4);
    rd(&r, &o->loss, 8);
    int ok = !r.bad && r.pos == r.len;
    free(r.buf);
    return ok ? 0 : -1;
}

static void free_out(fx_out *o) {
    free(o->codes);
    free(o->scales);
    free(o->zeros);
    free(o->g_idx);
    free(o->perm);
    free(o->Q);
    free(o->row_loss);
}

static void run_fixture(const char *prob, const char *cas) {
    char nin[128], nout[160];
    snprintf(nin, sizeof nin, "gptq/%s.in.bin", prob);
    snprintf(nout, sizeof nout, "gptq/%s_%s.out.bin", prob, cas);
    TEST_BEGIN(nout);
    fx_in in;
    fx_out o;
    if (load_in(nin, &in) != 0 || load_out(nout, &o) != 0) {
        TEST_CHECK(0, "cannot read fixture %s / %s (regenerate with tests/ref/gptq_ref.py)", nin, nout);
        return;
    }
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.method = o.method ? GQ_METHOD_RTN : GQ_METHOD_GPTQ;
    p.bits = o.bits, p.group_size = o.group_size, p.sym = o.sym, p.act_order = o.act_order;
    p.static_groups = o.static_groups, p.zero_policy = o.zero_policy ? GQ_ZERO_FREE : GQ_ZERO_V1;
    p.scale_f16 = o.scale_f16, p.block_size = o.block_size, p.damp = o.damp;
    p.out_f16 = 0; /* the fixtures hold the solve's own (fp32 or fp16) scales */
    const int rows = in.rows, cols = in.cols;
    int ndead = 0; /* H is destroyed by the solve: find the dead columns first */
    char *dead = calloc((size_t)cols, 1);
    for (int k = 0; k < cols; k++) {
        dead[k] = in.H[(size_t)k * cols + k] == 0.0f;
        ndead += dead[k];
    }
    gq_qresult r;
    int st = gq_gptq_quantize(&p, in.W, rows, cols, in.H, &r);
    TEST_OK(st, "gq_gptq_quantize");
    if (st != GQ_OK) goto done;
    TEST_CHECK(r.ngroups == o.ngroups, "ngroups %d, want %d", r.ngroups, o.ngroups);
    if (r.ngroups != o.ngroups) goto done;

    const int gptq = p.method == GQ_METHOD_GPTQ;
    const size_t nw = (size_t)rows * cols, ns = (size_t)o.ngroups * rows;
    /* codes: how many differ, by how much */
    size_t ndiff = 0;
    int maxdc = 0;
    for (size_t i = 0; i < nw; i++) {
        int dc = abs((int)r.codes[i] - (int)o.codes[i]);
        ndiff += dc != 0;
        maxdc = dc > maxdc ? dc : maxdc;
    }
    const double frac = (double)ndiff / (double)nw;
    /* scales / zeros: how many differ; the largest relative scale change */
    size_t nsdiff = 0, nzdiff = 0;
    double srel = 0;
    /* fp16 scales are either identical or an fp16 ulp apart; fp32 scales
     * carry the ~1e-6 difference of the factorization (1e-4 is generous). */
    const double stol = o.scale_f16 ? 0.0 : 1e-4;
    for (size_t i = 0; i < ns; i++) {
        double d = fabs(r.scales[i] - o.scales[i]) / o.scales[i];
        nsdiff += d > stol;
        srel = fmax(srel, d);
        nzdiff += r.zeros[i] != o.zeros[i];
    }
    /* dequantized W: relative Frobenius error, max error in quantization steps */
    double e2 = 0, r2 = 0, steps = 0;
    for (int n = 0; n < rows; n++)
        for (int k = 0; k < cols; k++) {
            size_t i = (size_t)n * cols + k;
            double d = (double)in.W[i] - o.Q[i];
            e2 += d * d;
            r2 += (double)o.Q[i] * o.Q[i];
            steps = fmax(steps, fabs(d) / o.scales[(size_t)o.g_idx[k] * rows + n]);
        }
    const double frob = sqrt(e2 / r2);
    const double lrel = o.loss > 0 ? fabs(r.loss - o.loss) / o.loss : fabs(r.loss);
    printf("%-34s codes differ %zu/%zu (%.3f%%, max %d), scales differ %zu/%zu (max rel %.2e), zeros differ "
           "%zu, |W - Wref|_F rel %.2e (max %.2f steps), loss %.7g vs %.7g (rel %.1e)\n",
           nout, ndiff, nw, 100 * frac, maxdc, nsdiff, ns, srel, nzdiff, frob, steps, r.loss, o.loss, lrel);

    /* W out is the dequantization of the returned codes/scales/zeros, exactly. */
    float *D = malloc(nw * sizeof(float));
    gq_qresult_dequant(&r, D);
    TEST_CHECK(memcmp(D, in.W, nw * sizeof(float)) == 0, "W out == gq_qresult_dequant(result), bit for bit");
    free(D);
    TEST_CHECK(memcmp(r.g_idx, o.g_idx, (size_t)cols * 4) == 0, "g_idx identical to the reference");
    if (o.act_order && gptq)
        TEST_CHECK(r.perm && memcmp(r.perm, o.perm, (size_t)cols * 4) == 0, "perm identical to the reference");
    else
        TEST_CHECK(r.perm == NULL, "no perm without act-order");
    if (!gptq) {
        /* RTN has no Hessian: gq does the very float operations torch does
         * (one division, rint, clamp, one multiply), so everything is exact. */
        TEST_CHECK(ndiff == 0 && nsdiff == 0 && nzdiff == 0 && frob == 0.0,
                   "RTN bit-exact: %zu codes, %zu scales, %zu zeros differ", ndiff, nsdiff, nzdiff);
        TEST_CHECK(r.loss == 0.0 && r.n_dead == 0 && r.retries == 0, "RTN: no loss, no dead columns, no retries");
        goto done;
    }
    /* gq factors H in fp64, the reference in fp32 (and BLAS sums in another
     * order): W after the error feedback differs by ~1e-6 relative, which
     * moves values that sit on a rounding tie to the neighbouring code. Such
     * flips are rare (measured 0 - 0.13 % on these fixtures) and one step
     * each; the feedback of a flip can move a later code of the same row by
     * one more step, hence at most 2. */
    TEST_CHECK(frac <= 0.005, "codes differing: %.4f%% > 0.5%%", 100 * frac);
    TEST_CHECK(maxdc <= 2, "codes differ by at most 2 steps, got %d", maxdc);
    TEST_CHECK(steps <= 2.0 + 1e-3, "dequantized W within 2 quantization steps, got %.3f", steps);
    /* Scales come from W at the group start: with fp16 scales the same ~1e-6
     * change can cross an fp16 rounding midpoint (one fp16 ulp, <= 2^-10
     * relative) and a row with a flipped code can get a different group
     * range later; with fp32 scales the change is the raw ~1e-6. */
    TEST_CHECK(nsdiff <= ns / 50 && nzdiff <= ns / 50, "scales/zeros differing: %zu, %zu of %zu (> 2%%)", nsdiff,
               nzdiff, ns);
    if (ndiff == 0) TEST_CHECK(srel <= 1.0 / 1024, "scales: max relative difference %.3g", srel);
    /* Loss: without flips only rounding separates the two (measured <= 4e-6);
     * each flip was a near-tie, i.e. the two codes' errors were almost equal,
     * so flips change the loss by about the flipped fraction at most. */
    TEST_CHECK(lrel <= (ndiff == 0 ? 1e-5 : 5e-3), "loss relative difference %.3g", lrel);
    TEST_CHECK(frob <= (ndiff == 0 ? 1e-3 : 2e-2), "dequantized W relative Frobenius difference %.3g", frob);
    double lsum = 0;
    for (int n = 0; n < rows; n++) lsum += r.row_loss[n];
    TEST_NEAR(lsum, r.loss, 1e-6 * r.loss, "loss == sum of row_loss (up to the f32 rounding of row_loss)");
    /* dead columns: zeroed, so they dequantize to exactly 0 */
    int dead_ok = 1;
    for (int k = 0; k < cols; k++)
        for (int n = 0; n < rows && dead[k]; n++) dead_ok &= in.W[(size_t)n * cols + k] == 0.0f;
    TEST_CHECK(ndead > 0 && r.n_dead == ndead && dead_ok, "dead columns: %d found, %d reported, zero output %d", ndead,
               r.n_dead, dead_ok);
    TEST_CHECK(r.retries == 0 && r.fallback == 0 && r.damp_used == p.damp, "no retries on a PD Hessian");
done:
    free(dead);
    gq_qresult_free(&r);
    free_in(&in);
    free_out(&o);
}


static void test_hinv(void) {
    TEST_BEGIN("hinv");
    const int n = 40;
    float *Hf = random_hessian(n, 400);
    double *H = malloc((size_t)n * n * sizeof(double)), *U = malloc((size_t)n * n * sizeof(double));
    for (int i = 0; i < n * n; i++) H[i] = U[i] = Hf[i];
    TEST_OK(gq_gptq_hinv(U, n), "gq_gptq_hinv on an SPD matrix");
    /* U is upper triangular with a positive diagonal and U^T U H = I: that
     * defines the upper Cholesky factor of H^-1 uniquely. fp64 with cond(H)
     * ~ 10 (T = 10 n): residuals ~1e-14; 1e-10 catches any wrong factor or
     * a transposed one (which gives O(1) residuals). */
    int tri = 1;
    for (int i = 0; i < n; i++) {
        tri &= U[i * n + i] > 0;
        for (int j = 0; j < i; j++) tri &= U[i * n + j] == 0.0;
    }
    TEST_CHECK(tri, "upper triangular with positive diagonal");
    double maxres = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double v = 0; /* (U^T U H)[i][j] */
            for (int k = 0; k < n; k++) {
                double utu = 0;
                for (int m = 0; m <= (i < k ? i : k); m++) utu += U[m * n + i] * U[m * n + k];
                v += utu * H[k * n + j];
            }
            maxres = fmax(maxres, fabs(v - (i == j)));
        }
    TEST_NEAR(maxres, 0.0, 1e-10, "U^T U H == I");
    for (int i = 0; i < n * n; i++) U[i] = 0;
    for (int i = 0; i < n; i++) U[i * n + i] = i == 7 ? -1.0 : 1.0;
    TEST_FAILS(gq_gptq_hinv(U, n), GQ_ERR_NOT_PD, "leading minor of order 8");
    free(Hf);
    free(H);
    free(U);
}

/* H = I with pairs (2i, 2i+1) coupled by c: eigenvalues 1 +- c, so it is
 * indefinite for c > 1 and needs damping > (c - 1) / mean(diag) = c - 1. */
static float *coupled_hessian(int n, float c) {
    float *H = calloc((size_t)n * n, sizeof(float));
    for (int i = 0; i < n; i++) H[i * n + i] = 1.0f;
    for (int i = 0; i + 1 < n; i += 2) H[i * n + i + 1] = H[(i + 1) * n + i] = c;
    return H;
}

static void test_retry_and_fallback(void) {
    TEST_BEGIN("retry");
    const int rows = 16, cols = 64;
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    TEST_CHECK(p.max_retries == 8 && p.scale_f16 == 0 && p.out_f16 == 1 && p.damp == 0.01, "defaults: 8 retries, fp32 scales in the solve, fp16 out, 0.01");
    p.group_size = 32;
    p.sym = 0;
    float *W0 = random_w(rows, cols), *W = malloc((size_t)rows * cols * sizeof(float));
    gq_qresult r;

    /* c = 1.05: damp 0.01 leaves eigenvalue -0.04, 0.1 gives +0.05: one retry. */
    float *H = coupled_hessian(cols, 1.05f);
    memcpy(W, W0, (size_t)rows * cols * sizeof(float));
    TEST_OK(gq_gptq_quantize(&p, W, rows, cols, H, &r), "indefinite H, one retry");
    TEST_CHECK(r.retries == 1 && r.fallback == 0, "retries %d (want 1), fallback %d", r.retries, r.fallback);
    TEST_NEAR(r.damp_used, 0.1, 1e-12, "damp_used 0.01 * 10");
    TEST_CHECK(r.loss > 0, "a GPTQ loss is reported after the retry");
    gq_qresult_free(&r);
    free(H);

    /* c = 1.5: 0.01 and 0.1 fail (eigenvalue -0.49, -0.4), 1 works. */
    H = coupled_hessian(cols, 1.5f);
    memcpy(W, W0, (size_t)rows * cols * sizeof(float));
    TEST_OK(gq_gptq_quantize(&p, W, rows, cols, H, &r), "indefinite H, two retries");
    TEST_CHECK(r.retries == 2 && r.fallback == 0, "retries %d (want 2), fallback %d", r.retries, r.fallback);
    TEST_NEAR(r.damp_used, 1.0, 1e-12, "damp_used 0.01 * 100");
    gq_qresult_free(&r);
    free(H);

    /* H = -I: damping is relative to mean(diag) = -1, so it never helps:
     * after 8 retries the module is rounded to nearest. */
    TEST_BEGIN("fallback");
    H = calloc((size_t)cols * cols, sizeof(float));
    for (int i = 0; i < cols; i++) H[i * cols + i] = -1.0f;
    memcpy(W, W0, (size_t)rows * cols * sizeof(float));
    TEST_OK(gq_gptq_quantize(&p, W, rows, cols, H, &r), "H = -I falls back, no error");
    TEST_CHECK(r.fallback == 1 && r.retries == 8, "fallback %d (want 1), retries %d (want 8)", r.fallback,
               r.retries);
    gq_gptq_params pr = p;
    pr.method = GQ_METHOD_RTN;
    float *Wr = malloc((size_t)rows * cols * sizeof(float));
    memcpy(Wr, W0, (size_t)rows * cols * sizeof(float));
    gq_qresult rr;
    TEST_OK(gq_gptq_quantize(&pr, Wr, rows, cols, NULL, &rr), "RTN, H NULL");
    /* The fallback is RTN with the same groups: the same float operations,
     * so bit-identical. */
    TEST_CHECK(memcmp(r.codes, rr.codes, (size_t)rows * cols) == 0, "fallback codes == RTN codes");
    TEST_CHECK(memcmp(W, Wr, (size_t)rows * cols * sizeof(float)) == 0, "fallback W == RTN W");
    TEST_CHECK(memcmp(r.scales, rr.scales, (size_t)r.ngroups * rows * sizeof(float)) == 0 &&
                   memcmp(r.zeros, rr.zeros, (size_t)r.ngroups * rows * sizeof(int32_t)) == 0,
               "fallback scales/zeros == RTN");
    TEST_CHECK(r.loss == 0.0 && rr.perm == NULL, "fallback reports no GPTQ loss; RTN has no perm");
    gq_qresult_free(&r);
    gq_qresult_free(&rr);

    /* max_retries 0: straight to the fallback. */
    for (int i = 0; i < cols; i++) H[i * cols + i] = -1.0f;
    p.max_retries = 0;
    memcpy(W, W0, (size_t)rows * cols * sizeof(float));
    TEST_OK(gq_gptq_quantize(&p, W, rows, cols, H, &r), "max_retries 0");
    TEST_CHECK(r.fallback == 1 && r.retries == 0, "fallback %d retries %d", r.fallback, r.retries);
    TEST_CHECK(memcmp(W, Wr, (size_t)rows * cols * sizeof(float)) == 0, "fallback W == RTN W");
    gq_qresult_free(&r);
    free(H);
    free(Wr);
    free(W);
    free(W0);
}

static void test_errors(void) {
    TEST_BEGIN("errors");
    const int rows = 8, cols = 32;
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.group_size = 16;
    float *W = random_w(rows, cols), *H = random_hessian(cols, 200);
    gq_qresult r;
    W[3 * cols + 7] = NAN;
    TEST_FAILS(gq_gptq_quantize(&p, W, rows, cols, H, &r), GQ_ERR_NUMERIC, "W[3][7]");
    TEST_CHECK(r.codes == NULL, "no result on error");
    W[3 * cols + 7] = 0.0f;
    W[5 * cols + 31] = -INFINITY;
    TEST_FAILS(gq_gptq_quantize(&p, W, rows, cols, H, &r), GQ_ERR_NUMERIC, "output row 5, input column 31");
    W[5 * cols + 31] = 0.0f;
    H[2 * cols + 5] = INFINITY;
    TEST_FAILS(gq_gptq_quantize(&p, W, rows, cols, H, &r), GQ_ERR_NUMERIC, "H[2][5]");
    H[2 * cols + 5] = H[5 * cols + 2];
    gq_gptq_params q = p;
    q.bits = 5;
    TEST_FAILS(gq_gptq_quantize(&q, W, rows, cols, H, &r), GQ_ERR_ARG, "got 5");
    q = p;
    q.group_size = 0;
    TEST_FAILS(gq_gptq_quantize(&q, W, rows, cols, H, &r), GQ_ERR_ARG, "group size");
    q = p;
    q.block_size = 0;
    TEST_FAILS(gq_gptq_quantize(&q, W, rows, cols, H, &r), GQ_ERR_ARG, "block size");
    TEST_FAILS(gq_gptq_quantize(&p, W, rows, cols, NULL, &r), GQ_ERR_ARG, "Hessian");
    q = p;
    q.damp = -1;
    TEST_FAILS(gq_gptq_quantize(&q, W, rows, cols, H, &r), GQ_ERR_ARG, "damping");
    TEST_FAILS(gq_gptq_quantize(&p, W, 0, cols, H, &r), GQ_ERR_ARG, "non-empty");
    gq_qresult_free(&r); /* free of a zeroed result is a no-op */
    gq_qresult_free(NULL);
    free(W);
    free(H);
}

/* Groups that do not divide the columns, a block smaller than a group and
 * one that is not a multiple of it; and the result is independent of the
 * number of rows solved together (rows are independent). */
static void test_shapes(void) {
    TEST_BEGIN("shapes");
    const int rows = 300, cols = 200; /* 300 rows: 3 row tiles, the last partial */
    float *W0 = random_w(rows, cols), *H0 = random_hessian(cols, 1000);
    float *W = malloc((size_t)rows * cols * sizeof(float)), *H = malloc((size_t)cols * cols * sizeof(float));
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.group_size = 48; /* 200 = 4 * 48 + 8 */
    p.block_size = 40;
    p.act_order = 1;
    gq_qresult r, r1;
    memcpy(W, W0, (size_t)rows * cols * sizeof(float));
    memcpy(H, H0, (size_t)cols * cols * sizeof(float));
    TEST_OK(gq_gptq_quantize(&p, W, rows, cols, H, &r), "gs 48, block 40, act-order");
    TEST_CHECK(r.ngroups == 5, "ngroups %d (want ceil(200/48) = 5)", r.ngroups);
    int gmax = 0, counts[5] = {0};
    for (int k = 0; k < cols; k++) {
        gmax = r.g_idx[k] > gmax ? r.g_idx[k] : gmax;
        if (r.g_idx[k] >= 0 && r.g_idx[k] < 5) counts[r.g_idx[k]]++;
    }
    TEST_CHECK(gmax == 4 && counts[0] == 48 && counts[3] == 48 && counts[4] == 8, "group sizes 48 x 4 + 8");
    int perm_ok = 1; /* act-order: diag H non-increasing along perm */
    for (int j = 1; j < cols; j++) perm_ok &= H0[r.perm[j - 1] * (cols + 1)] >= H0[r.perm[j] * (cols + 1)];
    TEST_CHECK(perm_ok, "perm sorts diag(H) descending");
    /* Row 217 alone (rows = 1) must give the same codes bit for bit: the
     * per-row arithmetic does not depend on the tiling, and the between-block
     * sgemm of one row vs 300 rows is the same dot products (OpenBLAS does
     * not split K for these sizes; this checks the row bookkeeping). */
    float *w1 = malloc((size_t)cols * sizeof(float));
    memcpy(w1, W0 + (size_t)217 * cols, (size_t)cols * sizeof(float));
    memcpy(H, H0, (size_t)cols * cols * sizeof(float));
    TEST_OK(gq_gptq_quantize(&p, w1, 1, cols, H, &r1), "one row");
    int same = 0;
    for (int k = 0; k < cols; k++) same += r1.codes[k] == r.codes[(size_t)217 * cols + k];
    TEST_CHECK(same >= cols - 2, "row 217 solved alone: %d of %d codes equal (ties may flip 1-2)", same, cols);
    gq_qresult_free(&r1);
    gq_qresult_free(&r);
    free(w1);
    free(W);
    free(H);
    free(W0);
    free(H0);
}

/* ---- the driver over a backend's primitives ---------------------------------------- */

/* The CPU primitives behind a spy: the call sequence (s scan, p prepare, f
 * factor, v solve, F finish, r release), the damping of each factor call,
 * and injected failures. */
static struct {
    char calls[64];
    int ncalls;
    double lambda[16];
    int nf;
    int not_pd;    /* factor calls that fail with GQ_ERR_NOT_PD before the real factor runs */
    int factor_rc; /* != 0: every factor call fails with this status (a device error) */
    int finish_rc; /* != 0: finish fails with this status */
    int use_factor;
} spy;
static gq_gptq_ops spy_ops;

static void spy_log(char c) {
    if (spy.ncalls < (int)sizeof spy.calls - 1) spy.calls[spy.ncalls++] = c;
}
static int spy_scan(gq_gptq_job *j, gq_gptq_scan *s, float *diag) {
    spy_log('s');
    return gq_gptq_cpu_ops.scan(j, s, diag);
}
static int spy_prepare(gq_gptq_job *j) {
    spy_log('p');
    return gq_gptq_cpu_ops.prepare(j);
}
static int spy_factor(gq_gptq_job *j, double lambda) {
    spy_log('f');
    if (spy.nf < 16) spy.lambda[spy.nf++] = lambda;
    if (spy.factor_rc) return gq_err(spy.factor_rc, "spy: device lost");
    if (spy.not_pd > 0) {
        spy.not_pd--;
        return gq_err(GQ_ERR_NOT_PD, "spy: leading minor of order 3 is not positive definite");
    }
    return gq_gptq_cpu_ops.factor(j, lambda);
}
static int spy_solve(gq_gptq_job *j, int use_factor, double *row_loss) {
    spy_log('v');
    spy.use_factor = use_factor;
    return gq_gptq_cpu_ops.solve(j, use_factor, row_loss);
}
static int spy_finish(gq_gptq_job *j) {
    spy_log('F');
    return spy.finish_rc ? gq_err(spy.finish_rc, "spy: download failed") : gq_gptq_cpu_ops.finish(j);
}
static void spy_release(gq_gptq_job *j) {
    spy_log('r');
    gq_gptq_cpu_ops.release(j);
}

/* One drive over the spy (H copied from H0, scaled by hs on the way), W from W0. */
static int spy_run(const gq_gptq_params *p, const float *W0, float *W, int rows, int cols, const float *H0,
                   float *H, double hs, gq_qresult *r) {
    memset(spy.calls, 0, sizeof spy.calls);
    spy.ncalls = spy.nf = 0;
    spy.use_factor = -1;
    memcpy(W, W0, (size_t)rows * cols * sizeof(float));
    memcpy(H, H0, (size_t)cols * cols * sizeof(float));
    gq_bweight w = {.data = W, .rows = rows, .cols = cols, .dtype = GQ_DT_F32};
    gq_err_clear();
    return gq_gptq_drive(&spy_ops, NULL, p, &w, H, hs, r);
}

static int same_result(const gq_qresult *a, const gq_qresult *b, const float *Wa, const float *Wb) {
    const size_t n = (size_t)a->rows * a->cols, ng = (size_t)a->ngroups * a->rows;
    return a->rows == b->rows && a->ngroups == b->ngroups && !memcmp(a->codes, b->codes, n) &&
           !memcmp(a->scales, b->scales, ng * sizeof(float)) && !memcmp(a->zeros, b->zeros, ng * sizeof(int32_t)) &&
           !memcmp(a->g_idx, b->g_idx, (size_t)a->cols * sizeof(int32_t)) && !memcmp(Wa, Wb, n * sizeof(float)) &&
           a->loss == b->loss && a->n_dead == b->n_dead;
}

static void test_driver(void) {
    TEST_BEGIN("driver");
    spy_ops = gq_gptq_cpu_ops;
    spy_ops.name = "SPY", spy_ops.max_block = 64;
    spy_ops.scan = spy_scan, spy_ops.prepare = spy_prepare, spy_ops.factor = spy_factor;
    spy_ops.solve = spy_solve, spy_ops.finish = spy_finish, spy_ops.release = spy_release;
    const int rows = 24, cols = 96;
    float *W0 = random_w(rows, cols), *H0 = random_hessian(cols, 400);
    for (int i = 0; i < cols; i++) H0[(size_t)i * cols + 17] = H0[(size_t)17 * cols + i] = 0.0f; /* a dead column */
    float *W = malloc((size_t)rows * cols * sizeof(float)), *H = malloc((size_t)cols * cols * sizeof(float));
    float *Wc = malloc((size_t)rows * cols * sizeof(float)), *Hc = malloc((size_t)cols * cols * sizeof(float));
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.group_size = 32, p.block_size = 32, p.act_order = 1, p.sym = 0;
    gq_qresult r, rc;

    /* h_scale on the way == H scaled beforehand (what the CPU backend gets vs gq_gptq_quantize) */
    TEST_OK(spy_run(&p, W0, W, rows, cols, H0, H, 0.5, &r), "drive, h_scale 0.5");
    TEST_CHECK(!strcmp(spy.calls, "spfvFr") && spy.use_factor == 1, "calls %s (want spfvFr), use_factor %d",
               spy.calls, spy.use_factor);
    memcpy(Wc, W0, (size_t)rows * cols * sizeof(float));
    for (size_t i = 0; i < (size_t)cols * cols; i++) Hc[i] = H0[i] * 0.5f;
    TEST_OK(gq_gptq_quantize(&p, Wc, rows, cols, Hc, &rc), "quantize, H scaled before");
    TEST_CHECK(same_result(&r, &rc, W, Wc) && r.n_dead == 1 && r.perm && rc.perm &&
                   !memcmp(r.perm, rc.perm, (size_t)cols * sizeof(int32_t)),
               "drive with h_scale == quantize of the scaled H, bit for bit (1 dead column: %d)", r.n_dead);
    gq_qresult_free(&rc);
    gq_qresult_free(&r);

    /* two NOT_PD failures: two retries at 10x damping, then the factor */
    const double lambda0 = spy.lambda[0];
    spy.not_pd = 2;
    TEST_OK(spy_run(&p, W0, W, rows, cols, H0, H, 0.5, &r), "two failed factors");
    TEST_CHECK(!strcmp(spy.calls, "spfffvFr") && r.retries == 2 && !r.fallback && spy.use_factor == 1,
               "calls %s (want spfffvFr), retries %d, fallback %d", spy.calls, r.retries, r.fallback);
    TEST_NEAR(r.damp_used, 1.0, 1e-12, "damp_used 0.01 -> 0.1 -> 1");
    TEST_NEAR(spy.lambda[1] / lambda0, 10.0, 1e-9, "lambda x10");
    TEST_NEAR(spy.lambda[2] / lambda0, 100.0, 1e-9, "lambda x100");
    gq_qresult_free(&r);

    /* every factor fails: RTN fallback with the same groups, bit for bit RTN's codes */
    spy.not_pd = 1000;
    p.max_retries = 3;
    TEST_OK(spy_run(&p, W0, W, rows, cols, H0, H, 0.5, &r), "fallback");
    TEST_CHECK(!strcmp(spy.calls, "spffffvFr") && r.fallback == 1 && r.retries == 3 && spy.use_factor == 0 &&
                   r.loss == 0.0,
               "calls %s (want spffffvFr), fallback %d, retries %d, use_factor %d", spy.calls, r.fallback,
               r.retries, spy.use_factor);
    TEST_NEAR(r.damp_used, 10.0, 1e-12, "damp_used after 3 retries");
    gq_qresult_free(&r);
    spy.not_pd = 0;

    /* a device error from factor ends the solve: no solve, release, zeroed result */
    spy.factor_rc = GQ_ERR_DEVICE;
    TEST_FAILS(spy_run(&p, W0, W, rows, cols, H0, H, 0.5, &r), GQ_ERR_DEVICE, "device lost");
    TEST_CHECK(!strcmp(spy.calls, "spfr") && r.codes == NULL, "calls %s (want spfr), no result", spy.calls);
    spy.factor_rc = 0;
    spy.finish_rc = GQ_ERR_DEVICE;
    TEST_FAILS(spy_run(&p, W0, W, rows, cols, H0, H, 0.5, &r), GQ_ERR_DEVICE, "download failed");
    TEST_CHECK(!strcmp(spy.calls, "spfvFr") && r.codes == NULL, "calls %s (want spfvFr), no result", spy.calls);
    spy.finish_rc = 0;

    /* the backend's block limit, before anything runs; scan errors: release only */
    p.block_size = 128;
    TEST_FAILS(spy_run(&p, W0, W, rows, cols, H0, H, 0.5, &r), GQ_ERR_UNSUPPORTED,
               "gptq on SPY: block size 128, at most 64 supported");
    TEST_CHECK(spy.ncalls == 0, "no primitive called: %s", spy.calls);
    p.block_size = 64;
    float *Wn = malloc((size_t)rows * cols * sizeof(float));
    memcpy(Wn, W0, (size_t)rows * cols * sizeof(float));
    Wn[5 * cols + 9] = NAN;
    TEST_FAILS(spy_run(&p, Wn, W, rows, cols, H0, H, 0.5, &r), GQ_ERR_NUMERIC,
               "W[5][9] (output row 5, input column 9) is nan");
    TEST_CHECK(!strcmp(spy.calls, "sr"), "calls %s (want sr)", spy.calls);
    free(Wn);
    H0[3 * cols + 40] = 1e38f; /* finite, but not after h_scale 10 */
    TEST_FAILS(spy_run(&p, W0, W, rows, cols, H0, H, 10.0, &r), GQ_ERR_NUMERIC, "H[3][40] (row 3, column 40) is inf");

    /* RTN: H unused (NULL), no factor */
    p.method = GQ_METHOD_RTN;
    memcpy(W, W0, (size_t)rows * cols * sizeof(float));
    gq_bweight w = {.data = W, .rows = rows, .cols = cols, .dtype = GQ_DT_F32};
    memset(spy.calls, 0, sizeof spy.calls);
    spy.ncalls = 0;
    TEST_OK(gq_gptq_drive(&spy_ops, NULL, &p, &w, NULL, 0.5, &r), "RTN, H NULL");
    TEST_CHECK(!strcmp(spy.calls, "spvFr") && spy.use_factor == 0 && r.perm == NULL && r.n_dead == 0,
               "RTN calls %s (want spvFr)", spy.calls);
    gq_qresult_free(&r);
    free(W), free(H), free(Wc), free(Hc), free(W0), free(H0);
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN); /* the retry and fallback warnings show in the log */
    test_quantizer();
    test_hinv();
    test_retry_and_fallback();
    test_errors();
    test_shapes();
    test_driver();
    static const char *a_cases[] = {"g128_sym",     "g128_asym",     "g32_asym",     "act_g128_asym",
                                    "actstatic_g128_asym", "perchan_asym", "b3_g128_asym", "b8_g128_asym",
                                    "rtn_g128_sym", "rtn_g128_asym", "ref_g128_asym", "static_g128_asym"};
    static const char *b_cases[] = {"g32_asym",     "act_g128_sym",  "actstatic_g128_asym",
                                    "b3_g128_asym", "act_g100_asym", "perchan_sym_ref", "b2_g64_asym"};
    for (size_t i = 0; i < sizeof a_cases / sizeof *a_cases; i++) run_fixture("a", a_cases[i]);
    for (size_t i = 0; i < sizeof b_cases / sizeof *b_cases; i++) run_fixture("b", b_cases[i]);
    return TEST_REPORT();
}
