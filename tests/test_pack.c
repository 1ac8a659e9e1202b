/*
 * test_pack.c -- AutoGPTQ packing: gq_pack against an unpacker written here
 * from the format description (gptq-reference.md §2: bytes of little-endian
 * int32 words, low nibble first; AutoGPTQ's 3-bit word pattern), hand-packed
 * words, v1/v2 zero points, gq_unpack round trips, gq_packed_dequant, errors;
 * results that arrive with their qweight packed already (gq_qresult.qweight,
 * as the CUDA solve makes them): copied by gq_pack at their width, sliced by
 * gq_qresult_slice.
 */
#include <stdlib.h>
#include <string.h>

#include "gq/gptq.h"
#include "gq/pack.h"
#include "test.h"
#include "test_pack_util.h"

/* ---- the independent unpacker ------------------------------------------------ */

/* Byte b (0 = lowest address) of the little-endian int32 word w as stored. */
static unsigned word_byte(const int32_t *w, int b) { return ((const unsigned char *)w)[b]; }

/* Value j (0 .. 32/bits - 1) of a 2/4/8-bit word, read from its bytes:
 * 8 bits: byte j; 4 bits: byte j/2, low nibble for even j; 2 bits: byte j/4,
 * bit pair j%4 from the bottom. */
static unsigned simple_value(const int32_t *w, int bits, int j) {
    switch (bits) {
    case 8: return word_byte(w, j);
    case 4: return (word_byte(w, j / 2) >> (j % 2 ? 4 : 0)) & 0xF;
    case 2: return (word_byte(w, j / 4) >> (2 * (j % 4))) & 0x3;
    }
    return 0;
}

/* The 32 values of one 3-bit group of 3 words (AutoGPTQ qlinear pack):
 * w0: v0..v9 at bits 0,3,..,27, v10 bits 0-1 at 30-31;
 * w1: v10 bit 2 at bit 0, v11..v20 at 1,4,..,28, v21 bit 0 at 31;
 * w2: v21 bits 1-2 at bits 0-1, v22..v31 at 2,5,..,29. */
static void three_bit_values(uint32_t w0, uint32_t w1, uint32_t w2, unsigned v[32]) {
    for (int j = 0; j < 10; j++) v[j] = (w0 >> (3 * j)) & 7;
    v[10] = ((w0 >> 30) & 3) | ((w1 & 1) << 2);
    for (int j = 0; j < 10; j++) v[11 + j] = (w1 >> (3 * j + 1)) & 7;
    v[21] = ((w1 >> 31) & 1) | ((w2 & 3) << 1);
    for (int j = 0; j < 10; j++) v[22 + j] = (w2 >> (3 * j + 2)) & 7;
}

/* Values along a packed dimension of length len: word i of the sequence is
 * at words[i * stride]. out[len]. */
static void ref_unpack_seq(const int32_t *words, size_t stride, int len, int bits, unsigned *out) {
    if (bits == 3) {
        for (int b = 0; b < len / 32; b++) {
            uint32_t w0 = (uint32_t)words[(size_t)(3 * b) * stride];
            uint32_t w1 = (uint32_t)words[(size_t)(3 * b + 1) * stride];
            uint32_t w2 = (uint32_t)words[(size_t)(3 * b + 2) * stride];
            three_bit_values(w0, w1, w2, out + 32 * b);
        }
        return;
    }
    int per = 32 / bits;
    for (int i = 0; i < len; i++) out[i] = simple_value(words + (size_t)(i / per) * stride, bits, i % per);
}

/* ---- helpers ---------------------------------------------------------------------- */

static uint32_t rng = 777u;
static unsigned next_u(void) {
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

/* A result with random codes/zeros/scales and a shuffled-group g_idx. */
static void random_result(gq_qresult *r, int rows, int cols, int gs, int bits, int zmin) {
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.group_size = gs;
    gq_qresult_init(r, &p, rows, cols);
    const int maxq = gq_maxq(bits);
    for (size_t i = 0; i < (size_t)rows * cols; i++) r->codes[i] = (uint8_t)(next_u() % (unsigned)(maxq + 1));
    for (size_t i = 0; i < (size_t)r->ngroups * rows; i++) {
        r->zeros[i] = zmin + (int32_t)(next_u() % (unsigned)(maxq + 1 - zmin));
        r->scales[i] = gq_round_f16(0.001f * (1 + next_u() % 1000));
    }
    for (int k = 0; k < cols; k++) r->g_idx[k] = (int32_t)(((k * 7) % cols) / gs); /* act-order-like */
}

static void test_roundtrip(int bits, int v2) {
    char name[64];
    snprintf(name, sizeof name, "roundtrip %d-bit %s", bits, v2 ? "v2" : "v1");
    TEST_BEGIN(name);
    const int rows = 64, cols = 128, gs = 32;
    gq_qresult r;
    random_result(&r, rows, cols, gs, bits, v2 ? 0 : 1);
    /* make sure the extremes are present */
    r.codes[0] = 0;
    r.codes[1] = (uint8_t)gq_maxq(bits);
    r.zeros[0] = v2 ? 0 : 1;
    r.zeros[1] = gq_maxq(bits);
    gq_packed pk;
    TEST_OK(gq_pack(&r, bits, v2, &pk), "gq_pack");
    const int qwr = cols * bits / 32, qzc = rows * bits / 32;
    TEST_CHECK(gq_pack_qw_rows(cols, bits) == qwr && gq_pack_qz_cols(rows, bits) == qzc, "packed shapes");
    TEST_CHECK(pk.rows == rows && pk.cols == cols && pk.ngroups == r.ngroups && pk.bits == bits && pk.v2 == v2,
               "packed header fields");

    /* qweight [qwr][rows]: column n runs down K */
    unsigned *vals = malloc(sizeof(unsigned) * (cols > rows ? cols : rows));
    int bad = 0;
    for (int n = 0; n < rows; n++) {
        ref_unpack_seq(pk.qweight + n, (size_t)rows, cols, bits, vals);
        for (int k = 0; k < cols; k++) bad += vals[k] != r.codes[(size_t)n * cols + k];
    }
    TEST_CHECK(bad == 0, "qweight decodes (independent unpacker) to the codes: %d mismatches", bad);
    /* qzeros [G][qzc]: runs along N, stored zero - 1 (v1) or zero (v2) */
    bad = 0;
    for (int g = 0; g < r.ngroups; g++) {
        ref_unpack_seq(pk.qzeros + (size_t)g * qzc, 1, rows, bits, vals);
        for (int n = 0; n < rows; n++) bad += (int)vals[n] + (v2 ? 0 : 1) != r.zeros[(size_t)g * rows + n];
    }
    TEST_CHECK(bad == 0, "qzeros decode to the zeros: %d mismatches", bad);
    bad = 0;
    for (size_t i = 0; i < (size_t)r.ngroups * rows; i++) bad += pk.scales[i] != gq_f32_to_f16(r.scales[i]);
    TEST_CHECK(bad == 0 && memcmp(pk.g_idx, r.g_idx, (size_t)cols * 4) == 0, "scales fp16, g_idx copied");

    /* gq_unpack inverts gq_pack */
    uint8_t *codes = malloc((size_t)rows * cols);
    int32_t *zeros = malloc((size_t)r.ngroups * rows * 4);
    float *scales = malloc((size_t)r.ngroups * rows * 4);
    TEST_OK(gq_unpack(&pk, codes, zeros, scales), "gq_unpack");
    TEST_CHECK(memcmp(codes, r.codes, (size_t)rows * cols) == 0, "unpacked codes");
    TEST_CHECK(memcmp(zeros, r.zeros, (size_t)r.ngroups * rows * 4) == 0, "unpacked zeros");
    TEST_CHECK(memcmp(scales, r.scales, (size_t)r.ngroups * rows * 4) == 0, "unpacked scales (fp16 values)");
    /* packed dequant == result dequant: the scales are fp16 values already,
     * so the same float products: bit-exact */
    float *W1 = malloc((size_t)rows * cols * 4), *W2 = malloc((size_t)rows * cols * 4);
    gq_qresult_dequant(&r, W1);
    TEST_OK(gq_packed_dequant(&pk, W2), "gq_packed_dequant");
    TEST_CHECK(memcmp(W1, W2, (size_t)rows * cols * 4) == 0, "gq_packed_dequant == gq_qresult_dequant");
    free(W1);
    free(W2);
    free(codes);
    free(zeros);
    free(scales);
    free(vals);
    gq_packed_free(&pk);
    gq_qresult_free(&r);
}

/* ---- a qweight packed already ------------------------------------------------------- */

static int packed_equal(const gq_packed *a, const gq_packed *b) {
    const size_t qw = (size_t)gq_pack_qw_rows(a->cols, a->bits) * a->rows;
    const size_t qz = (size_t)a->ngroups * gq_pack_qz_cols(a->rows, a->bits), gn = (size_t)a->ngroups * a->rows;
    return a->bits == b->bits && a->rows == b->rows && a->cols == b->cols && a->ngroups == b->ngroups &&
           a->v2 == b->v2 && memcmp(a->qweight, b->qweight, qw * 4) == 0 && memcmp(a->qzeros, b->qzeros, qz * 4) == 0 &&
           memcmp(a->scales, b->scales, gn * 2) == 0 && memcmp(a->g_idx, b->g_idx, (size_t)a->cols * 4) == 0;
}

static void test_prepacked(int bits) {
    char name[64];
    snprintf(name, sizeof name, "pre-packed qweight %d-bit", bits);
    TEST_BEGIN(name);
    const int rows = 96, cols = 96, gs = 32; /* three 3-bit slices of 32 rows */
    const size_t nqw = (size_t)gq_pack_qw_rows(cols, bits) * rows;
    gq_qresult r;
    random_result(&r, rows, cols, gs, bits, 1);
    TEST_CHECK(r.qweight == NULL && r.qweight_bits == 0, "gq_qresult_init leaves qweight NULL");
    TEST_CHECK(qweight_diff(&r, bits) == -1, "no qweight: nothing to compare");
    gq_packed ref, pk;
    TEST_OK(gq_pack(&r, bits, 0, &ref), "pack the codes");

    /* the reference's qweight given back: gq_pack's output is byte-identical */
    r.qweight = gq_malloc(nqw * 4);
    memcpy(r.qweight, ref.qweight, nqw * 4);
    r.qweight_bits = bits;
    TEST_CHECK(qweight_diff(&r, bits) == 0, "qweight_diff of a correct qweight is 0");
    TEST_OK(gq_pack(&r, bits, 0, &pk), "pack with a qweight");
    TEST_CHECK(packed_equal(&pk, &ref), "packed output byte-identical with and without the pre-packed qweight");
    gq_packed_free(&pk);

    /* slices (first, middle, last rows): columns [r0, r0 + n) of every word
     * row == packing the sliced codes */
    const int m = gq_pack_multiple(bits);
    const int sl[3][2] = {{0, m}, {m, rows - 2 * m}, {rows - m, m}};
    for (int i = 0; i < 3; i++) {
        gq_qresult s;
        gq_qresult_slice(&r, sl[i][0], sl[i][1], &s);
        TEST_CHECK(s.qweight && s.qweight_bits == bits, "slice [%d, +%d) keeps a qweight", sl[i][0], sl[i][1]);
        gq_qresult_free(&s);
        TEST_CHECK(qweight_slice_diff(&r, sl[i][0], sl[i][1], bits) == 0,
                   "sliced qweight [%d, +%d) == packing the sliced codes", sl[i][0], sl[i][1]);
    }

    /* codes NULL (gq_gptq_params.skip_codes): packed from the qweight alone, the same bytes;
     * its slices have no codes and the same qweight columns; without a qweight of the width it
     * is incomplete */
    {
        uint8_t *codes = r.codes;
        r.codes = NULL;
        TEST_OK(gq_pack(&r, bits, 0, &pk), "pack with a qweight and no codes");
        TEST_CHECK(packed_equal(&pk, &ref), "no codes: packed output byte-identical");
        gq_packed_free(&pk);
        gq_qresult s;
        gq_qresult_slice(&r, m, m, &s);
        TEST_CHECK(!s.codes && s.qweight && s.scales, "a slice of a result without codes has none, and a qweight");
        gq_qresult_free(&s);
        r.qweight_bits = bits == 8 ? 4 : 8;
        TEST_FAILS(gq_pack(&r, bits, 0, &pk), GQ_ERR_ARG, "incomplete");
        r.qweight_bits = bits;
        r.codes = codes;
    }

    /* the qweight is trusted at its width: poisoned words come out as they are */
    memset(r.qweight, 0xA5, nqw * 4);
    TEST_OK(gq_pack(&r, bits, 0, &pk), "pack with a poisoned qweight");
    TEST_CHECK(memcmp(pk.qweight, r.qweight, nqw * 4) == 0, "a qweight of the requested width is copied");
    gq_packed_free(&pk);
    /* another width: ignored, the codes are packed */
    r.qweight_bits = bits == 8 ? 4 : 8;
    TEST_OK(gq_pack(&r, bits, 0, &pk), "pack with a qweight of another width");
    TEST_CHECK(packed_equal(&pk, &ref), "qweight_bits %d != %d: packed from the codes", r.qweight_bits, bits);
    gq_packed_free(&pk);
    /* the result is still validated when the qweight is copied */
    r.qweight_bits = bits;
    r.zeros[3] = gq_maxq(bits) + 2;
    TEST_FAILS(gq_pack(&r, bits, 0, &pk), GQ_ERR_ARG, "out of range");
    if (bits < 8) {
        r.zeros[3] = 1;
        r.codes[5] = (uint8_t)(gq_maxq(bits) + 1);
        TEST_FAILS(gq_pack(&r, bits, 0, &pk), GQ_ERR_ARG, "does not fit");
    }
    gq_packed_free(&ref);
    gq_qresult_free(&r); /* frees the qweight (leaks show in the sanitizer build) */
    TEST_CHECK(r.qweight == NULL, "gq_qresult_free clears qweight");

    /* a slice of a result without qweight has none */
    random_result(&r, rows, cols, gs, bits, 1);
    gq_qresult s;
    gq_qresult_slice(&r, m, m, &s);
    TEST_CHECK(s.qweight == NULL && s.qweight_bits == 0, "no qweight, none in the slice");
    gq_qresult_free(&s);
    gq_qresult_free(&r);
}

/* ---- hand-packed words ---------------------------------------------------------------- */

static void test_hand_packed(void) {
    TEST_BEGIN("hand-packed");
    gq_gptq_params p;
    gq_gptq_params_default(&p);
    p.group_size = -1;
    gq_qresult r;
    gq_packed pk;

    /* 4-bit, N = K = 8: codes[n][k] = (n + k) % 16, zero[n] = n + 1, scale 0.5.
     * Column 0 holds 0,1,..,7 lowest nibble first -> 0x76543210; column 1
     * holds 1..8 -> 0x87654321 (negative as int32); column 7: 7..14 ->
     * 0xEDCBA987. v1 zeros store n: 0..7 -> 0x76543210. fp16(0.5) = 0x3800. */
    gq_qresult_init(&r, &p, 8, 8);
    for (int n = 0; n < 8; n++) {
        for (int k = 0; k < 8; k++) r.codes[n * 8 + k] = (uint8_t)((n + k) % 16);
        r.zeros[n] = n + 1;
        r.scales[n] = 0.5f;
    }
    TEST_OK(gq_pack(&r, 4, 0, &pk), "pack 8x8 4-bit");
    TEST_CHECK((uint32_t)pk.qweight[0] == 0x76543210u && (uint32_t)pk.qweight[1] == 0x87654321u &&
                   (uint32_t)pk.qweight[7] == 0xEDCBA987u,
               "qweight words %08x %08x %08x", (unsigned)pk.qweight[0], (unsigned)pk.qweight[1],
               (unsigned)pk.qweight[7]);
    TEST_CHECK(pk.qweight[1] == -2023406815, "0x87654321 stored as int32 %d", pk.qweight[1]);
    TEST_CHECK((uint32_t)pk.qzeros[0] == 0x76543210u, "qzeros v1 word %08x", (unsigned)pk.qzeros[0]);
    TEST_CHECK(pk.scales[0] == 0x3800 && pk.scales[7] == 0x3800, "fp16 scale 0.5 = 0x3800");
    /* little endian on disk: the lowest byte holds nibbles 0 (low) and 1 */
    TEST_CHECK(((unsigned char *)pk.qweight)[0] == 0x10 && ((unsigned char *)pk.qweight)[3] == 0x76,
               "byte order of 0x76543210");
    gq_packed_free(&pk);
    TEST_OK(gq_pack(&r, 4, 1, &pk), "pack 8x8 4-bit v2");
    TEST_CHECK((uint32_t)pk.qzeros[0] == 0x87654321u, "qzeros v2 stores the zeros 1..8: %08x",
               (unsigned)pk.qzeros[0]);
    gq_packed_free(&pk);
    gq_qresult_free(&r);

    /* 3-bit, K = N = 32, one column pattern: v_k = (5k + 3) % 8 =
     * 3,0,5,2,7,4,1,6 repeated. As a little-endian bit stream the 8 values
     * are the 24-bit number 0xC67543, so 96 bits = 0xC67543 x 4 and the
     * words are 0x43C67543, 0x7543C675, 0xC67543C6. AutoGPTQ's loop puts
     * v10 = 5 (101) at w0 bits 30-31 (01) and w1 bit 0 (1), v21 = 4 (100) at
     * w1 bit 31 (0) and w2 bits 0-1 (10): the same words. */
    gq_qresult_init(&r, &p, 32, 32);
    for (int n = 0; n < 32; n++) {
        for (int k = 0; k < 32; k++) r.codes[n * 32 + k] = (uint8_t)((5 * k + 3) % 8);
        r.zeros[n] = (n * 5 + 3) % 8 + 1; /* stored v1: the same pattern along N */
        r.scales[n] = 1.0f;
    }
    TEST_OK(gq_pack(&r, 3, 0, &pk), "pack 32x32 3-bit");
    TEST_CHECK((uint32_t)pk.qweight[0 * 32 + 5] == 0x43C67543u && (uint32_t)pk.qweight[1 * 32 + 5] == 0x7543C675u &&
                   (uint32_t)pk.qweight[2 * 32 + 5] == 0xC67543C6u,
               "3-bit qweight words %08x %08x %08x", (unsigned)pk.qweight[5], (unsigned)pk.qweight[37],
               (unsigned)pk.qweight[69]);
    TEST_CHECK((uint32_t)pk.qzeros[0] == 0x43C67543u && (uint32_t)pk.qzeros[1] == 0x7543C675u &&
                   (uint32_t)pk.qzeros[2] == 0xC67543C6u,
               "3-bit qzeros words");
    gq_packed_free(&pk);
    gq_qresult_free(&r);

    /* 2-bit, K = 16: codes k % 4 -> 0,1,2,3 repeated: byte 0b11100100 = 0xE4
     * -> 0xE4E4E4E4. 8-bit, K = 4: codes 1, 2, 3, 255 -> 0xFF030201. */
    gq_qresult_init(&r, &p, 16, 16);
    for (int n = 0; n < 16; n++) {
        for (int k = 0; k < 16; k++) r.codes[n * 16 + k] = (uint8_t)(k % 4);
        r.zeros[n] = 2;
        r.scales[n] = 1.0f;
    }
    TEST_OK(gq_pack(&r, 2, 0, &pk), "pack 16x16 2-bit");
    TEST_CHECK((uint32_t)pk.qweight[3] == 0xE4E4E4E4u && (uint32_t)pk.qzeros[0] == 0x55555555u,
               "2-bit words %08x, zeros %08x (stored 1 = 01)", (unsigned)pk.qweight[3], (unsigned)pk.qzeros[0]);
    gq_packed_free(&pk);
    gq_qresult_free(&r);
    gq_qresult_init(&r, &p, 4, 4);
    const uint8_t c8[4] = {1, 2, 3, 255};
    for (int n = 0; n < 4; n++) {
        memcpy(r.codes + n * 4, c8, 4);
        r.zeros[n] = 128;
        r.scales[n] = 1.0f;
    }
    TEST_OK(gq_pack(&r, 8, 0, &pk), "pack 4x4 8-bit");
    TEST_CHECK((uint32_t)pk.qweight[2] == 0xFF030201u && (uint32_t)pk.qzeros[0] == 0x7F7F7F7Fu,
               "8-bit words %08x, zeros %08x (stored 127)", (unsigned)pk.qweight[2], (unsigned)pk.qzeros[0]);
    gq_packed_free(&pk);
    gq_qresult_free(&r);
}

/* ---- a real solve ------------------------------------------------------------------------ */

static void test_quantized(void) {
    TEST_BEGIN("quantized");
    const int rows = 64, cols = 256;
    float *W = malloc((size_t)rows * cols * 4), *W0 = malloc((size_t)rows * cols * 4);
    for (int i = 0; i < rows * cols; i++) W0[i] = ((int)(next_u() % 2001) - 1000) * 1e-5f;
    gq_gptq_params p;
    gq_gptq_params_default(&p); /* 4-bit, g128, sym, fp16 scales */
    p.method = GQ_METHOD_RTN;
    gq_qresult r;
    gq_packed pk;
    memcpy(W, W0, (size_t)rows * cols * 4);
    TEST_OK(gq_gptq_quantize(&p, W, rows, cols, NULL, &r), "RTN sym");
    TEST_OK(gq_pack(&r, 4, 0, &pk), "pack v1");
    int all7 = 1;
    for (int i = 0; i < pk.ngroups * rows / 8; i++) all7 &= (uint32_t)pk.qzeros[i] == 0x77777777u;
    TEST_CHECK(all7, "sym 4-bit v1: every qzeros word is 0x77777777 (zero 8 stored as 7)");
    float *D = malloc((size_t)rows * cols * 4);
    TEST_OK(gq_packed_dequant(&pk, D), "packed dequant");
    TEST_CHECK(memcmp(D, W, (size_t)rows * cols * 4) == 0, "packed dequant == solver output W (fp16 scales)");
    gq_packed_free(&pk);
    gq_qresult_free(&r);

    /* fp32 scales (the reference semantics): the packed scales are their
     * fp16 roundings, and the dequant uses those. */
    p.scale_f16 = 0;
    p.sym = 0;
    p.zero_policy = GQ_ZERO_FREE;
    memcpy(W, W0, (size_t)rows * cols * 4);
    for (int k = 0; k < 128; k++) W[k] = fabsf(W[k]) + 1e-3f; /* row 0, group 0 >= 0: zero 0 */
    TEST_OK(gq_gptq_quantize(&p, W, rows, cols, NULL, &r), "RTN asym fp32 scales");
    TEST_CHECK(r.zeros[0] == 0, "row 0 group 0 has zero 0");
    TEST_FAILS(gq_pack(&r, 4, 0, &pk), GQ_ERR_ARG, "gptq_v2");
    TEST_OK(gq_pack(&r, 4, 1, &pk), "the same packs as v2");
    for (size_t i = 0; i < (size_t)r.ngroups * rows; i++) r.scales[i] = gq_round_f16(r.scales[i]);
    float *D2 = malloc((size_t)rows * cols * 4);
    gq_qresult_dequant(&r, D2);
    TEST_OK(gq_packed_dequant(&pk, D), "packed dequant v2");
    TEST_CHECK(memcmp(D, D2, (size_t)rows * cols * 4) == 0, "packed dequant == dequant with fp16-rounded scales");
    gq_packed_free(&pk);
    gq_qresult_free(&r);
    free(D);
    free(D2);
    free(W);
    free(W0);
}

static void test_errors(void) {
    TEST_BEGIN("errors");
    TEST_OK(gq_pack_check(64, 8, 4), "K = 8 is enough for 4 bits");
    TEST_FAILS(gq_pack_check(64, 12, 4), GQ_ERR_UNSUPPORTED, "multiple of 8");
    TEST_FAILS(gq_pack_check(60, 64, 4), GQ_ERR_UNSUPPORTED, "out_features");
    TEST_FAILS(gq_pack_check(64, 48, 3), GQ_ERR_UNSUPPORTED, "multiple of 32");
    TEST_FAILS(gq_pack_check(64, 64, 5), GQ_ERR_UNSUPPORTED, "got 5");
    /* gq_pack_shape_ok: the same verdicts, no error recorded */
    const int shp[][3] = {{64, 8, 4}, {64, 12, 4}, {60, 64, 4}, {64, 48, 3}, {64, 64, 5}, {0, 32, 4},
                          {32, 32, 3}, {16, 16, 2}, {4, 4, 8}, {36, 8, 8}, {8, 36, 2}};
    int agree = 1;
    for (size_t i = 0; i < sizeof shp / sizeof *shp; i++) {
        gq_err_clear();
        int ok = gq_pack_shape_ok(shp[i][0], shp[i][1], shp[i][2]);
        agree &= gq_errcode() == GQ_OK;
        agree &= ok == (gq_pack_check(shp[i][0], shp[i][1], shp[i][2]) == GQ_OK);
    }
    TEST_CHECK(agree, "gq_pack_shape_ok agrees with gq_pack_check and records no error");
    TEST_CHECK(gq_pack_qw_rows(40, 4) == 5 && gq_pack_qw_rows(4096, 3) == 384 && gq_pack_qz_cols(11008, 4) == 1376,
               "qweight rows K*bits/32, qzeros cols N*bits/32");
    gq_qresult r;
    gq_packed pk;
    random_result(&r, 32, 32, 16, 4, 1);
    r.codes[33] = 16;
    TEST_FAILS(gq_pack(&r, 4, 0, &pk), GQ_ERR_ARG, "output row 1, input column 1");
    r.codes[33] = 3;
    r.zeros[5] = 0;
    TEST_FAILS(gq_pack(&r, 4, 0, &pk), GQ_ERR_ARG, "zero point 0");
    r.zeros[5] = 17;
    TEST_FAILS(gq_pack(&r, 4, 0, &pk), GQ_ERR_ARG, "out of range");
    r.zeros[5] = 3;
    r.g_idx[4] = 2;
    TEST_FAILS(gq_pack(&r, 4, 0, &pk), GQ_ERR_ARG, "g_idx[4] = 2");
    r.g_idx[4] = 0;
    TEST_OK(gq_pack(&r, 4, 0, &pk), "valid again");
    pk.g_idx[3] = -1;
    float *W = malloc(32 * 32 * 4);
    TEST_FAILS(gq_packed_dequant(&pk, W), GQ_ERR_FORMAT, "g_idx[3] = -1");
    free(W);
    gq_packed_free(&pk);
    gq_packed_free(&pk); /* twice: zeroed, a no-op */
    gq_packed_free(NULL);
    gq_qresult_free(&r);
}

int main(void) {
    const uint32_t one = 1;
    if (*(const unsigned char *)&one != 1) {
        TEST_SKIP("big-endian host: the byte-level unpacker assumes little-endian storage");
        return TEST_REPORT();
    }
    const int widths[] = {2, 3, 4, 8};
    for (int i = 0; i < 4; i++) {
        test_roundtrip(widths[i], 0);
        test_roundtrip(widths[i], 1);
        test_prepacked(widths[i]);
    }
    test_hand_packed();
    test_quantized();
    test_errors();
    return TEST_REPORT();
}
