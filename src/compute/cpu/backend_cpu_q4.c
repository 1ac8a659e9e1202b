/*
 * backend_cpu_q4.c -- int4 weights kept packed on the CPU backend (GQ_CPU_Q4=1).
 *
 * The weight holds copies of its parts as they are stored (gq/pack.h: qweight [K/8][N_p],
 * qzeros, scales [G_p][N_p], g_idx [K]), stacked by output rows. A linear dequantizes all parts
 * into the backend's scratch (be->q4_scratch, f32 [rows][K], grown to the largest weight) with
 * gq_packed_dequant (inside an OpenMP parallel region, where several windows run their linears at
 * once, into a buffer of its own instead) and runs the plain sgemm on it: the same f32 weights as a checkpoint
 * dequantized at load, so the results are bitwise those of `--int4-kernel off`. Resident memory is
 * the packed bytes plus one scratch; each call pays a dequantization of K x N values (negligible
 * against the GEMM for many tokens, as much as the GEMM itself for one), hence opt-in. It is
 * what lets the CPU test suite run the int4-resident load and graph paths that the GPU kernel
 * uses (tests/test_q4_model.c).
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "compute/cpu/backend_cpu.h"
#include "gq/knobs.h"

typedef struct {
    gq_q4_head head; /* first: gq_be_weight_bytes reads it */
    int nparts;
    gq_packed *parts; /* [nparts], owned copies */
} cpu_q4;

int gq_cpu_q4_supported(const gq_backend *be) {
    (void)be;
    return gq_knobs_get()->cpu_q4;
}

static void *dup_array(const void *src, size_t bytes, size_t *total) {
    void *d = gq_malloc(bytes ? bytes : 1);
    memcpy(d, src, bytes);
    *total += bytes;
    return d;
}

int gq_cpu_weight_upload_q4(gq_backend *be, gq_bweight *w, const gq_packed *const *parts, int nparts) {
    (void)be;
    cpu_q4 *q = gq_calloc(1, sizeof *q);
    q->nparts = nparts;
    q->parts = gq_calloc((size_t)nparts, sizeof *q->parts);
    int rows = 0;
    size_t bytes = 0;
    for (int i = 0; i < nparts; i++) {
        const gq_packed *p = parts[i];
        gq_packed *d = &q->parts[i];
        *d = *p;
        d->qweight = dup_array(p->qweight, sizeof(int32_t) * gq_pack_qw_rows(p->cols, p->bits) * (size_t)p->rows, &bytes);
        d->qzeros = dup_array(p->qzeros, sizeof(int32_t) * (size_t)p->ngroups * gq_pack_qz_cols(p->rows, p->bits), &bytes);
        d->scales = dup_array(p->scales, sizeof(uint16_t) * (size_t)p->ngroups * p->rows, &bytes);
        d->g_idx = dup_array(p->g_idx, sizeof(int32_t) * (size_t)p->cols, &bytes);
        rows += p->rows;
    }
    q->head.device_bytes = bytes;
    memset(w, 0, sizeof *w);
    w->q4 = q;
    w->rows = rows;
    w->cols = parts[0]->cols;
    w->dtype = GQ_DT_F32;
    return GQ_OK;
}

void gq_cpu_weight_free_q4(gq_backend *be, gq_bweight *w) {
    (void)be;
    cpu_q4 *q = w->q4;
    for (int i = 0; q && i < q->nparts; i++) gq_packed_free(&q->parts[i]);
    if (q) free(q->parts);
    free(q);
    memset(w, 0, sizeof *w);
}

float *gq_cpu_q4_dequant(gq_backend *be, const gq_bweight *w, int *owned) {
    const cpu_q4 *q = w->q4;
    size_t need = (size_t)w->rows * w->cols * sizeof(float);
    float *W; /* [rows][cols] */
    *owned = omp_in_parallel(); /* linears of several windows at once (gq ppl): a buffer per call */
    if (*owned) {
        W = gq_malloc_aligned(need);
    } else {
        if (need > be->q4_scratch_bytes) {
            gq_free_aligned(be->q4_scratch);
            be->q4_scratch = gq_malloc_aligned(need);
            be->q4_scratch_bytes = need;
        }
        W = be->q4_scratch;
    }
    size_t row0 = 0;
    for (int i = 0; i < q->nparts; i++) {
        if (gq_packed_dequant(&q->parts[i], W + row0 * w->cols) != GQ_OK) {
            if (*owned) gq_free_aligned(W);
            return NULL;
        }
        row0 += (size_t)q->parts[i].rows;
    }
    return W;
}
