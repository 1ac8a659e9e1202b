/*
 * test_w4a16_ref.c -- the W4A16 reference (gq_w4a16_ref, src/compute/ref_w4a16.c) and the int4
 * weight interface on the CPU (runs everywhere, no GPU):
 *   - gq_w4a16_ref against a naive double GEMM of the true weights scale * (code - zero), computed
 *     from the codes before gq_pack packed them (so a wrong reading of the packing shows), on
 *     trivial and act-order g_idx, v1 and v2 zeros, sym and asym, group sizes 16/32/48/64/128/-1,
 *     1 and 3 stacked parts with different g_idx, strided X and Y. Both sum the same products
 *     x * w (exact in double: fp16-valued x times w with 16 significant bits) in the same order,
 *     so the tolerance is a few double ulps (rel 1e-12); a wrong nibble, zero or scale is an error
 *     of order 1. gq_packed_dequant must give the true weights exactly too.
 *   - gq_be_q4_supported(cpu) == 0 and gq_be_weight_upload_q4 on the CPU returns
 *     GQ_ERR_UNSUPPORTED (valid parts), after the argument checks that every backend shares
 *     (bits, K, rows, groups, g_idx, scales), which are checked here with their messages.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/backend.h"
#include "gq/pack.h"
#include "gq/ref.h"
#include "test.h"
#include "test_w4a16_util.h"

/* One case: nparts parts of rows N[i] (K inputs each), spec fields from s (gs / act_order per part). */
static void check_ref(int K, int nparts, const int *N, const int *gs, const int *act, int v2, int sym, int T) {
    char what[200];
    snprintf(what, sizeof what, "w4a16 ref K=%d parts=%d (N %d/%d/%d gs %d/%d/%d act %d/%d/%d) v2=%d sym=%d T=%d", K,
             nparts, N[0], nparts > 1 ? N[1] : 0, nparts > 2 ? N[2] : 0, gs[0], nparts > 1 ? gs[1] : 0,
             nparts > 2 ? gs[2] : 0, act[0], nparts > 1 ? act[1] : 0, nparts > 2 ? act[2] : 0, v2, sym, T);
    gq_packed pk[3];
    const gq_packed *pp[3];
    int Nt = 0;
    for (int i = 0; i < nparts; i++) Nt += N[i];
    float *W = gq_malloc(sizeof(float) * (size_t)Nt * K); /* [Nt][K] true weights, parts stacked */
    int rows = 0;
    for (int i = 0; i < nparts; i++) {
        const w4_spec s = {N[i], K, gs[i], act[i], v2, sym};
        TEST_OK(w4_make_part(&s, &pk[i], W + (size_t)rows * K), "%s: pack part %d", what, i);
        pp[i] = &pk[i];
        /* gq_packed_dequant reads the packing back: exactly the true weights */
        float *Wd = gq_malloc(sizeof(float) * (size_t)N[i] * K);
        TEST_OK(gq_packed_dequant(&pk[i], Wd), "%s: dequant part %d", what, i);
        long bad = 0;
        for (size_t e = 0; e < (size_t)N[i] * K; e++) bad += Wd[e] != W[(size_t)rows * K + e];
        TEST_CHECK(bad == 0, "%s: gq_packed_dequant of part %d differs from the true weights in %ld places", what, i,
                   bad);
        free(Wd);
        rows += N[i];
    }
    const int ldx = K + 5, ldy = Nt + 3;
    float *X = gq_malloc(sizeof(float) * (size_t)T * ldx), *Y = gq_malloc(sizeof(float) * (size_t)T * ldy);
    float *Yw = gq_malloc(sizeof(float) * (size_t)T * ldy);
    for (size_t e = 0; e < (size_t)T * ldx; e++) X[e] = (int)(e % ldx) < K ? gq_round_f16(test_rng_normal()) : NAN;
    for (size_t e = 0; e < (size_t)T * ldy; e++) Y[e] = Yw[e] = NAN;
    gq_w4a16_ref(Y, ldy, X, ldx, T, pp, nparts);
    for (int t = 0; t < T; t++) /* the naive GEMM of the true weights */
        for (int n = 0; n < Nt; n++) {
            double acc = 0;
            for (int k = 0; k < K; k++) acc += (double)X[(size_t)t * ldx + k] * W[(size_t)n * K + k];
            Yw[(size_t)t * ldy + n] = (float)acc;
        }
    w4_check(what, Y, Yw, T, Nt, ldy, 1e-12, 1e-30, 1);
    for (int i = 0; i < nparts; i++) gq_packed_free(&pk[i]);
    free(W), free(X), free(Y), free(Yw);
}

static void test_reference(void) {
    TEST_BEGIN("w4a16 reference");
    const int gss[6] = {32, 64, 128, -1, 16, 48};
    for (int gi = 0; gi < 6; gi++)
        for (int ao = 0; ao < 2; ao++)
            for (int z = 0; z < 4; z++) { /* v2 x sym */
                const int N1[1] = {96}, g1[1] = {gss[gi]}, a1[1] = {ao};
                check_ref(256, 1, N1, g1, a1, z & 1, z >> 1, 3);
            }
    { /* 3 parts, each its own group size and g_idx; odd multiples of 8 rows */
        const int N3[3] = {40, 24, 32}, g3[3] = {64, 32, -1}, a3[3] = {1, 0, 1};
        check_ref(256, 3, N3, g3, a3, 0, 0, 5);
        check_ref(256, 3, N3, g3, a3, 1, 1, 1);
    }
    {
        const int N3[3] = {1000, 200, 176}, g3[3] = {128, 48, 64}, a3[3] = {0, 1, 1};
        check_ref(1024, 3, N3, g3, a3, 1, 0, 2);
    }
    { /* K not a multiple of the group size, nor of 16 */
        const int N1[1] = {40}, g1[1] = {32}, a1[1] = {0}, a2[1] = {1};
        check_ref(264, 1, N1, g1, a1, 0, 0, 4);
        check_ref(264, 1, N1, g1, a2, 1, 0, 4);
    }
}

/* A valid part for the argument checks (K = 64, N = 16, group 32). */
static void valid_part(gq_packed *p) {
    const w4_spec s = {16, 64, 32, 0, 0, 0};
    TEST_OK(w4_make_part(&s, p, NULL), "pack a valid part");
}

static void test_cpu_interface(void) {
    TEST_BEGIN("w4a16 cpu interface");
    gq_backend *be = NULL;
    TEST_OK(gq_backend_init(&be, "cpu"), "cpu backend");
    if (!be) return;
    TEST_CHECK(gq_be_q4_supported(be) == 0, "the CPU backend does not keep int4 weights resident");
    gq_packed a, b;
    valid_part(&a);
    valid_part(&b);
    const gq_packed *pp[2] = {&a, &b};
    gq_bweight w;
    memset(&w, 0xff, sizeof w); /* the upload must clear it */
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 2), GQ_ERR_UNSUPPORTED, "cannot keep int4 weights resident");
    TEST_CHECK(w.q4 == NULL && w.data == NULL && w.rows == 0, "a refused upload leaves an empty weight");
    gq_be_weight_free(be, &w); /* an empty weight frees fine */
    TEST_CHECK(gq_be_weight_bytes(&w) == 0, "an empty weight holds no bytes");

    /* the shared argument checks (before the backend is asked) */
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 0), GQ_ERR_ARG, "expected at least 1");
    const gq_packed *pnull[1] = {NULL};
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pnull, 1), GQ_ERR_ARG, "incomplete packed tensors");
    b.bits = 8;
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 2), GQ_ERR_UNSUPPORTED, "part 1: 8-bit weights, expected 4 bits");
    b.bits = 4;
    b.cols = 56;
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 2), GQ_ERR_ARG, "part 1: in_features (K) 56, expected 64");
    b.cols = 64;
    b.rows = 12;
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 2), GQ_ERR_ARG, "out_features (N) 12, expected a positive multiple of 8");
    b.rows = 16;
    b.ngroups = 0;
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 2), GQ_ERR_ARG, "0 groups for K = 64");
    b.ngroups = 2;
    b.g_idx[5] = 2;
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 2), GQ_ERR_FORMAT, "g_idx[5] = 2, expected 0..1");
    b.g_idx[5] = 0;
    const uint16_t s0 = b.scales[3];
    b.scales[3] = 0x7e00; /* NaN */
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 2), GQ_ERR_NUMERIC, "output row 3 is nan");
    b.scales[3] = gq_f32_to_f16(5000.0f);
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 2), GQ_ERR_UNSUPPORTED, "expected |scale| <= 4094");
    b.scales[3] = s0;
    TEST_FAILS(gq_be_weight_upload_q4(be, &w, pp, 2), GQ_ERR_UNSUPPORTED, "cannot keep int4 weights resident");

    /* gq_be_weight_bytes of a plain weight */
    float v[6] = {1, 2, 3, 4, 5, 6};
    TEST_OK(gq_be_weight_upload(be, &w, v, 2, 3), "plain weight");
    TEST_CHECK(gq_be_weight_bytes(&w) == 6 * sizeof(float), "a 2 x 3 fp32 weight holds %zu bytes, got %zu",
               6 * sizeof(float), gq_be_weight_bytes(&w));
    gq_be_weight_free(be, &w);
    gq_packed_free(&a), gq_packed_free(&b);
    gq_backend_free(be);
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    test_reference();
    test_cpu_interface();
    return TEST_REPORT();
}
