/*
 * tests/test_pack_util.h -- checks of a result's pre-packed qweight
 * (gq_qresult.qweight, [cols * bits / 32][rows]) against gq_pack of its
 * codes, shared by test_pack.c (CPU-made qweights) and test_cuda.c (the
 * CUDA solve's).
 */
#ifndef GQ_TEST_PACK_UTIL_H
#define GQ_TEST_PACK_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gq/gptq.h"
#include "gq/pack.h"

/* The qweight gq_pack makes from r's codes alone (r's own qweight
 * ignored), newly allocated; NULL when gq_pack fails. Packs as gptq_v2,
 * which takes every zero a solver makes. */
static inline int32_t *pack_codes_qweight(const gq_qresult *r, int bits) {
    gq_qresult c = *r; /* shallow: only read */
    c.qweight = NULL;
    c.qweight_bits = 0;
    gq_packed pk;
    if (gq_pack(&c, bits, 1, &pk) != GQ_OK) return NULL;
    int32_t *qw = pk.qweight;
    pk.qweight = NULL;
    gq_packed_free(&pk);
    return qw;
}

/* Words of r->qweight that differ from packing r's codes at bits; -1 when
 * r has no qweight packed at that width or its codes do not pack. */
static inline long qweight_diff(const gq_qresult *r, int bits) {
    if (!r->qweight || r->qweight_bits != bits) return -1;
    int32_t *want = pack_codes_qweight(r, bits);
    if (!want) return -1;
    long bad = 0;
    for (size_t i = 0; i < (size_t)gq_pack_qw_rows(r->cols, bits) * r->rows; i++) bad += r->qweight[i] != want[i];
    free(want);
    return bad;
}

/* gq_qresult_slice rows [r0, r0 + n) of r, then qweight_diff of the slice
 * (its sliced qweight against packing its sliced codes). */
static inline long qweight_slice_diff(const gq_qresult *r, int r0, int n, int bits) {
    gq_qresult s;
    gq_qresult_slice(r, r0, n, &s);
    long bad = qweight_diff(&s, bits);
    gq_qresult_free(&s);
    return bad;
}

#endif /* GQ_TEST_PACK_UTIL_H */
