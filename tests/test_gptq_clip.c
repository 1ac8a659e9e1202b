/*
 * test_gptq_clip.c -- the group scale search of --clip mse / mse-h (gq/quant_math.h): against a
 * plain re-statement of GPTQModel's find_params(mse), never worse than min-max, never a zero or NaN
 * scale, the 32-lane split of the CUDA kernel, and inside the GPTQ solve.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/gptq.h"
#include "quant/gptq_driver.h"
#include "test.h"
#include "test_gptq_util.h"

/* ---- the clipping search (--clip mse / mse-h) ------------------------------------- */

/* A plain scalar re-statement of quant.py's Quantizer.find_params with mse on
 * (IST-DASLab/gptq; GPTQModel's `mse` = norm, grid 100, maxshrink 0.8) for one
 * group, fp32 scales, no zero policy (asym zero 0 kept), optional per-column
 * weights: torch's arithmetic on fp32 tensors (p a Python float applied to an
 * fp32 tensor, pow with the exponent cast to fp32 and correctly rounded, the
 * sum sequential). */
static void ref_find_params_mse(const float *x, const float *wt, int n, int bits, int sym, int grid, double maxshrink,
                                float norm, float *scale_out, float *zero_out) {
    const float maxq = (float)((1 << bits) - 1);
    float xmin = 0.0f, xmax = 0.0f; /* tmp = zeros; xmin = minimum(x.min(1), tmp); xmax = maximum(x.max(1), tmp) */
    for (int k = 0; k < n; k++) {
        xmin = fminf(xmin, x[k]);
        xmax = fmaxf(xmax, x[k]);
    }
    if (sym) {
        xmax = fmaxf(fabsf(xmin), xmax);
        if (xmin < 0) xmin = -xmax;
    }
    if (xmin == 0 && xmax == 0) xmin = -1, xmax = 1;
    float scale = (xmax - xmin) / maxq;
    float zero = sym ? (maxq + 1) / 2 : rintf(-xmin / scale);
    float best = INFINITY;
    for (int i = 0; i < (int)(maxshrink * grid); i++) {
        const float p = (float)(1 - (double)i / grid);
        const float xmin1 = p * xmin, xmax1 = p * xmax;
        const float scale1 = (xmax1 - xmin1) / maxq;
        const float zero1 = sym ? zero : rintf(-xmin1 / scale1);
        float err = 0.0f;
        for (int k = 0; k < n; k++) {
            float q = rintf(x[k] / scale1) + zero1; /* quantize(): clamp(round(x / scale) + zero, 0, maxq) */
            q = q < 0 ? 0 : q > maxq ? maxq : q;
            const float d = scale1 * (q - zero1) - x[k]; /* q -= x; q.abs_(); q.pow_(norm) */
            float t = (float)pow((double)fabsf(d), (double)norm);
            if (wt) t *= wt[k];
            err += t;
        }
        if (err < best) {
            best = err;
            scale = scale1;
            zero = zero1;
        }
    }
    *scale_out = scale;
    *zero_out = zero;
}

/* The CUDA kernels' split of the search (gptq.cu warp_params_clip) on the host: lane l tries candidates
 * l, l + 32, ..., keeping its first best; then the xor-shuffle tree reduction with gq_qm_clip_better. */
static void lanes_params_clip(const float *x, const float *wt, int n, float xmin, float xmax, gq_qcfg q,
                              float *scale, int32_t *zero) {
    float be[32];
    int bi[32];
    gq_qm_range(&xmin, &xmax, q);
    for (int l = 0; l < 32; l++) {
        be[l] = INFINITY, bi[l] = 0x7fffffff;
        for (int i = l; i < q.clip_n; i += 32) {
            float s;
            int32_t z;
            gq_qm_clip_candidate(xmin, xmax, i, q, &s, &z);
            const float e = gq_qm_clip_err_below(x, wt, n, s, z, q, be[l]);
            if (e < be[l]) be[l] = e, bi[l] = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ne[32];
        int ni[32];
        for (int l = 0; l < 32; l++) {
            ne[l] = be[l], ni[l] = bi[l];
            if (gq_qm_clip_better(be[l ^ o], bi[l ^ o], be[l], bi[l])) ne[l] = be[l ^ o], ni[l] = bi[l ^ o];
        }
        memcpy(be, ne, sizeof be);
        memcpy(bi, ni, sizeof bi);
    }
    if (bi[0] == 0x7fffffff)
        gq_qm_params_range(xmin, xmax, q, scale, zero);
    else
        gq_qm_clip_candidate(xmin, xmax, bi[0], q, scale, zero);
}

static float nrand(void) { /* roughly normal: the sum of 4 uniforms */
    return urand() + urand() + urand() + urand();
}

static void test_clip(void) {
    TEST_BEGIN("clip");
    const uint32_t lcg_saved = lcg_state; /* the later tests keep their random data */
    /* gq_qm_pow: |d|^2.4 as the correctly rounded fp32 value, here on a sweep of magnitudes */
    long pow_bad = 0, pow_n = 0;
    for (int e = -140; e <= 40; e++)
        for (int i = 0; i < 200; i++) {
            const float x = ldexpf(1.0f + (urand() + 0.5f), e);
            pow_n++;
            pow_bad += gq_qm_pow(x, 2.4f) != (float)pow((double)x, (double)2.4f);
        }
    TEST_CHECK(pow_bad == 0, "gq_qm_pow(x, 2.4f) == (float)pow(x, 2.4f): %ld of %ld differ", pow_bad, pow_n);
    TEST_CHECK(gq_qm_pow(0.0f, 2.4f) == 0.0f && isinf(gq_qm_pow(INFINITY, 2.4f)) && isinf(gq_qm_pow(1e30f, 2.4f)) &&
                   gq_qm_pow(1e-30f, 2.4f) == 0.0f && isnan(gq_qm_pow(NAN, 2.4f)) &&
                   gq_qm_pow(3.0f, 2.0f) == 9.0f && gq_qm_pow(0.1f, 2.0f) == 0.1f * 0.1f,
               "gq_qm_pow: 0, inf, overflow, underflow, NaN, the exact square");

    /* the search against the scalar re-statement of find_params(mse), on random groups: every kind of
     * distribution, sizes 128 / 32 / 7 / 1, 4-bit sym and asym (free zeros: the reference has no v1
     * shift), 3- and 2-bit, weighted and not; identical scales and zeros */
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.clip = GQ_CLIP_MSE;
    TEST_CHECK(p.clip_grid == 100 && p.clip_maxshrink == 0.8 && p.clip_norm == 2.4f,
               "clip defaults: grid 100, maxshrink 0.8, norm 2.4 (GPTQModel's)");
    static const int sizes[] = {128, 32, 7, 1};
    static const int bitss[] = {4, 3, 2};
    float x[128], wt[128];
    long n_cases = 0, n_same = 0, n_not_worse = 0, n_shrunk = 0, n_lanes = 0;
    for (int c = 0; c < 2400; c++) {
        const int n = sizes[c % 4], bits = bitss[(c / 4) % 3], sym = (c / 12) % 2, weighted = (c / 24) % 2;
        const int kind = (c / 48) % 5;
        for (int k = 0; k < n; k++) {
            float v = 0.02f * nrand();
            if (kind == 1 && k % 37 == 3) v *= 12.0f;          /* outliers */
            if (kind == 2) v = fabsf(v);                        /* all positive (sym quirk, asym zero 0) */
            if (kind == 3) v = 0.02f * urand();                 /* uniform */
            if (kind == 4) v = (k % 2 ? 1.0f : -0.5f) * 1e-3f * (float)(k % 5); /* a few levels, ties */
            x[k] = v;
            wt[k] = 0.1f + 4.0f * (urand() + 0.5f);
        }
        p.bits = bits, p.sym = sym, p.zero_policy = GQ_ZERO_FREE;
        p.clip = weighted ? GQ_CLIP_MSE_H : GQ_CLIP_MSE;
        const gq_qcfg q = gq_gptq_qcfg(&p, 1);
        float mn = 0.0f, mx = 0.0f;
        for (int k = 0; k < n; k++) mn = fminf(mn, x[k]), mx = fmaxf(mx, x[k]);
        float s, rs, rz, s0;
        int32_t z, z0;
        gq_qm_params_clip(x, weighted ? wt : NULL, n, mn, mx, q, &s, &z);
        ref_find_params_mse(x, weighted ? wt : NULL, n, bits, sym, 100, 0.8, 2.4f, &rs, &rz);
        gq_qm_params(mn, mx, q, &s0, &z0);
        float sl;
        int32_t zl;
        lanes_params_clip(x, weighted ? wt : NULL, n, mn, mx, q, &sl, &zl);
        n_lanes += sl == s && zl == z;
        n_cases++;
        n_same += s == rs && (float)z == rz;
        if (s != rs || (float)z != rz)
            fprintf(stderr, "  clip case %d (n %d, %d-bit, %s, %s, kind %d): scale %.9g zero %d, reference %.9g %g\n",
                    c, n, bits, sym ? "sym" : "asym", weighted ? "weighted" : "plain", kind, s, z, rs, rz);
        const float e = gq_qm_clip_err(x, weighted ? wt : NULL, n, s, z, q);
        const float e0 = gq_qm_clip_err(x, weighted ? wt : NULL, n, s0, z0, q);
        n_not_worse += e <= e0;
        n_shrunk += s < s0;
    }
    TEST_CHECK(n_same == n_cases, "search == find_params(mse) re-stated: %ld of %ld groups identical", n_same,
               n_cases);
    TEST_CHECK(n_lanes == n_cases, "the GPU's split over 32 lanes keeps the sequential search's candidate: %ld of %ld",
               n_lanes, n_cases);
    TEST_CHECK(n_not_worse == n_cases, "the search's error never exceeds min-max's: %ld of %ld", n_not_worse, n_cases);
    TEST_CHECK(n_shrunk > n_cases / 4, "the search does shrink (%ld of %ld groups)", n_shrunk, n_cases);

    /* degenerate groups: zero, constant, huge, tiny values; never a zero, NaN or infinite scale, the zero in
     * range; with fp32 and fp16 scales, v1 and free zeros */
    float g[128];
    int deg_ok = 1;
    for (int kind = 0; kind < 8; kind++) {
        for (int k = 0; k < 128; k++) {
            g[k] = kind == 0   ? 0.0f
                   : kind == 1 ? 0.37f
                   : kind == 2 ? -2.5f
                   : kind == 3 ? (k % 2 ? 3.0e38f : -3.0e38f)
                   : kind == 4 ? (k % 3 ? 3.4e38f : 1.0f)
                   : kind == 5 ? ldexpf((float)(k % 7), -140) /* subnormals */
                   : kind == 6 ? (k == 5 ? 1e30f : 1e-3f * urand())
                               : (k % 2 ? 65504.0f * 3 : -1e-20f);
        }
        for (int v = 0; v < 8; v++) {
            p.sym = v & 1, p.scale_f16 = (v >> 1) & 1, p.zero_policy = (v >> 2) & 1 ? GQ_ZERO_FREE : GQ_ZERO_V1;
            p.bits = 4, p.clip = GQ_CLIP_MSE_H;
            const gq_qcfg q = gq_gptq_qcfg(&p, 1);
            float mn = 0.0f, mx = 0.0f;
            for (int k = 0; k < 128; k++) mn = fminf(mn, g[k]), mx = fmaxf(mx, g[k]);
            float s;
            int32_t z;
            gq_qm_params_clip(g, kind == 6 ? NULL : wt, 128, mn, mx, q, &s, &z);
            float sl;
            int32_t zl;
            lanes_params_clip(g, kind == 6 ? NULL : wt, 128, mn, mx, q, &sl, &zl); /* ties: all-zero errors */
            const int ok = (sl == s || (isnan(s) && isnan(sl))) && zl == z &&s > 0.0f && !isnan(s) && (!isinf(s) || (kind == 3 && !p.scale_f16)) && z >= 0 && z <= 15;
            if (!ok) fprintf(stderr, "  degenerate group %d, variant %d: scale %g zero %d\n", kind, v, s, z);
            deg_ok &= ok;
        }
    }
    TEST_CHECK(deg_ok, "degenerate groups (zero, constant, +-3e38, 3.4e38, subnormal): scale finite and > 0, zero in "
                       "range (an fp32 scale of a +-3e38 group overflows in min-max already); the lanes' split agrees");
    /* a +-3e38 group: min-max's fp32 scale overflows, and so does every candidate's error (|d|^2.4 of ~1e37):
     * no candidate is kept, the min-max params stay (as find_params(mse): err < best never holds) */
    {
        p.sym = 1, p.scale_f16 = 0, p.zero_policy = GQ_ZERO_V1, p.clip = GQ_CLIP_MSE;
        for (int k = 0; k < 128; k++) g[k] = k % 2 ? 3.0e38f : -3.0e38f;
        float s, s0;
        int32_t z, z0;
        gq_qm_params(-3.0e38f, 3.0e38f, gq_gptq_qcfg(&p, 0), &s0, &z0);
        gq_qm_params_clip(g, NULL, 128, -3.0e38f, 3.0e38f, gq_gptq_qcfg(&p, 0), &s, &z);
        TEST_CHECK(isinf(s0) && s == s0 && z == z0, "+-3e38: min-max scale %g, search %g (min-max kept)", s0, s);
    }

    /* through the solver: the static groups' and per-row params are the search on W (dead columns 0; mse-h
     * weighted by diag(H)); the first dynamic group's too (no error update has reached it yet); RTN with mse
     * uses the same search (unweighted: no Hessian) */
    const int rows = 24, cols = 256;
    float *W0 = random_w(rows, cols), *W = malloc(sizeof(float) * rows * cols);
    float *H0 = random_hessian(cols, 600), *H = malloc(sizeof(float) * cols * cols);
    for (int k = 0; k < cols; k++) H0[k * cols + k] *= 1.0f + 3.0f * (urand() + 0.5f); /* uneven diag: weights matter */
    for (int r = 0; r < rows; r++) W0[r * cols + 9] *= 20.0f;                          /* an outlier column */
    struct {
        const char *name;
        int clip, static_groups, act_order, group_size, method;
    } cs[] = {
        {"static, mse", GQ_CLIP_MSE, 1, 0, 128, GQ_METHOD_GPTQ},
        {"static + act-order, mse-h", GQ_CLIP_MSE_H, 1, 1, 128, GQ_METHOD_GPTQ},
        {"per-row, mse-h", GQ_CLIP_MSE_H, 0, 0, -1, GQ_METHOD_GPTQ},
        {"dynamic, mse", GQ_CLIP_MSE, 0, 0, 64, GQ_METHOD_GPTQ},
        {"dynamic, mse-h", GQ_CLIP_MSE_H, 0, 0, 64, GQ_METHOD_GPTQ},
        {"RTN, mse-h (unweighted)", GQ_CLIP_MSE_H, 0, 0, 64, GQ_METHOD_RTN},
    };
    for (size_t ci = 0; ci < sizeof cs / sizeof *cs; ci++) {
        gq_gptq_params_default(&p);
        p.clip = cs[ci].clip, p.static_groups = cs[ci].static_groups, p.act_order = cs[ci].act_order;
        p.group_size = cs[ci].group_size, p.method = cs[ci].method, p.out_f16 = 0;
        memcpy(W, W0, sizeof(float) * rows * cols);
        memcpy(H, H0, sizeof(float) * cols * cols);
        gq_qresult r, rm;
        TEST_OK(gq_gptq_quantize(&p, W, rows, cols, p.method == GQ_METHOD_RTN ? NULL : H, &r), "%s", cs[ci].name);
        const int gs = p.group_size > 0 ? p.group_size : cols;
        const int ng_check = p.static_groups || p.group_size == -1 || p.method == GQ_METHOD_RTN ? r.ngroups : 1;
        const int weighted = p.clip == GQ_CLIP_MSE_H && p.method == GQ_METHOD_GPTQ;
        const gq_qcfg q = gq_gptq_qcfg(&p, weighted);
        float dg[256];
        for (int k = 0; k < cols; k++) dg[k] = H0[k * cols + k];
        long same = 0, total = 0, differ_mm = 0;
        for (int g = 0; g < ng_check; g++)
            for (int rr = 0; rr < rows; rr++) {
                const float *xg = W0 + rr * cols + g * gs;
                float mn = 0.0f, mx = 0.0f, s, s0;
                int32_t z, z0;
                for (int k = 0; k < gs; k++) mn = fminf(mn, xg[k]), mx = fmaxf(mx, xg[k]);
                gq_qm_params_clip(xg, weighted ? dg + g * gs : NULL, gs, mn, mx, q, &s, &z);
                gq_qm_params(mn, mx, q, &s0, &z0);
                total++;
                same += r.scales[g * rows + rr] == s && r.zeros[g * rows + rr] == z;
                differ_mm += s != s0;
            }
        TEST_CHECK(same == total && differ_mm > 0, "%s: params == the search on W: %ld of %ld (%ld differ from min-max)",
                   cs[ci].name, same, total, differ_mm);
        /* the search changes the result, and minmax is unchanged by the new fields */
        p.clip = GQ_CLIP_MINMAX;
        memcpy(W, W0, sizeof(float) * rows * cols);
        memcpy(H, H0, sizeof(float) * cols * cols);
        TEST_OK(gq_gptq_quantize(&p, W, rows, cols, p.method == GQ_METHOD_RTN ? NULL : H, &rm), "%s: minmax",
                cs[ci].name);
        TEST_CHECK(memcmp(r.codes, rm.codes, (size_t)rows * cols) != 0, "%s: codes differ from min-max", cs[ci].name);
        gq_qresult_free(&r);
        gq_qresult_free(&rm);
    }
    /* mse-h on a dead column: its weight is diag 1 and its value 0 (no error), the rest as the search */
    {
        gq_gptq_params_default(&p);
        p.clip = GQ_CLIP_MSE_H, p.static_groups = 1, p.out_f16 = 0;
        memcpy(W, W0, sizeof(float) * rows * cols);
        memcpy(H, H0, sizeof(float) * cols * cols);
        for (int k = 0; k < cols; k++) H[k * cols + 3] = H[3 * cols + k] = 0.0f;
        gq_qresult r;
        TEST_OK(gq_gptq_quantize(&p, W, rows, cols, H, &r), "mse-h, dead column");
        float xg[128], dg[128], s;
        int32_t z;
        int ok = r.n_dead == 1;
        for (int rr = 0; rr < rows; rr++) {
            float mn = 0.0f, mx = 0.0f;
            for (int k = 0; k < 128; k++) {
                xg[k] = k == 3 ? 0.0f : W0[rr * cols + k];
                dg[k] = k == 3 ? 1.0f : H0[k * cols + k];
                mn = fminf(mn, xg[k]), mx = fmaxf(mx, xg[k]);
            }
            gq_qm_params_clip(xg, dg, 128, mn, mx, gq_gptq_qcfg(&p, 1), &s, &z);
            ok &= r.scales[rr] == s && r.zeros[rr] == z;
        }
        TEST_CHECK(ok, "mse-h with a dead column: its value 0, its weight 1");
        gq_qresult_free(&r);
    }

    /* options */
    gq_clip cl = GQ_CLIP_MINMAX;
    TEST_CHECK(gq_clip_parse("mse-h", &cl) == GQ_OK && cl == GQ_CLIP_MSE_H && gq_clip_parse("mse", &cl) == GQ_OK &&
                   cl == GQ_CLIP_MSE && gq_clip_parse("minmax", &cl) == GQ_OK && cl == GQ_CLIP_MINMAX &&
                   !strcmp(gq_clip_name(GQ_CLIP_MSE_H), "mse-h"),
               "gq_clip_parse / gq_clip_name");
    TEST_FAILS(gq_clip_parse("mse2", &cl), GQ_ERR_ARG, "expected minmax, mse or mse-h");
    gq_gptq_params_default(&p);
    gq_qresult r;
    p.clip = GQ_CLIP_MSE, p.clip_grid = 0;
    TEST_FAILS(gq_gptq_quantize(&p, W, rows, cols, H, &r), GQ_ERR_ARG, "clip grid");
    p.clip_grid = 100, p.clip_maxshrink = 0.001;
    TEST_FAILS(gq_gptq_quantize(&p, W, rows, cols, H, &r), GQ_ERR_ARG, "maxshrink");
    p.clip_maxshrink = 0.8, p.clip_norm = 0.0f;
    TEST_FAILS(gq_gptq_quantize(&p, W, rows, cols, H, &r), GQ_ERR_ARG, "clip norm");
    p.clip_norm = 2.4f, p.clip = (gq_clip)7;
    TEST_FAILS(gq_gptq_quantize(&p, W, rows, cols, H, &r), GQ_ERR_ARG, "unknown clip mode");
    free(W0), free(W), free(H0), free(H);
    lcg_state = lcg_saved;
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    test_clip();
    return TEST_REPORT();
}
