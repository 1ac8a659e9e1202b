/* test_gptq_util.h -- small synthetic GPTQ problems shared by test_gptq.c and test_gptq_clip.c. */
#ifndef GQ_TEST_GPTQ_UTIL_H
#define GQ_TEST_GPTQ_UTIL_H

#include <stdint.h>
#include <stdlib.h>

/* ---- small synthetic problems ------------------------------------------------- */

static uint32_t lcg_state __attribute__((unused)) = 12345u;
static inline float urand(void) { /* uniform in [-0.5, 0.5) */
    lcg_state = lcg_state * 1664525u + 1013904223u;
    return (float)(lcg_state >> 8) / 16777216.0f - 0.5f;
}

/* H = 2/T X^T X for random X [T][n] (positive definite for T >> n). */
static inline float *random_hessian(int n, int T) {
    float *X = malloc((size_t)T * n * sizeof(float));
    float *H = calloc((size_t)n * n, sizeof(float));
    for (int i = 0; i < T * n; i++) X[i] = urand();
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++)
            for (int j = i; j < n; j++) H[i * n + j] += 2.0f / T * X[t * n + i] * X[t * n + j];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) H[i * n + j] = H[j * n + i];
    free(X);
    return H;
}

static inline float *random_w(int rows, int cols) {
    float *W = malloc((size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows * cols; i++) W[i] = 0.05f * urand();
    return W;
}

#endif /* GQ_TEST_GPTQ_UTIL_H */
