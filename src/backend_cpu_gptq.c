/*
 * backend_cpu_gptq.c -- the CPU backend's GPTQ op: a thin wrapper around
 * gq_gptq_quantize (gptq.c). Kept apart from backend_cpu.c so the rest of
 * the backend links without the gptq module.
 */
#include <stdlib.h>

#include "backend_cpu.h"

int gq_cpu_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res);

int gq_cpu_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res) {
    int n = W->cols;
    /* H [n][n]: the op receives the upper triangle (j >= i); mirror it and scale */
    float s = (float)h_scale;
#pragma omp parallel for schedule(dynamic, 16)
    for (int i = 0; i < n; i++) {
        float *hi = H + (size_t)i * n;
        for (int j = i; j < n; j++) hi[j] *= s;
    }
#pragma omp parallel for schedule(dynamic, 16)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) H[(size_t)i * n + j] = H[(size_t)j * n + i];
    memset(res, 0, sizeof *res); /* gq_gptq_quantize allocates it (after its argument checks) */
    return gq_gptq_quantize(p, (float *)W->data, W->rows, n, H, res);
}
