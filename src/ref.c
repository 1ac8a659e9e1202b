/* ref.c -- scalar reference versions of the forward ops (see gq/ref.h).
 * Deliberately naive: double accumulators, no BLAS, no threads. */
#include "gq/ref.h"

#include <math.h>
#include <stdlib.h>

void gq_linear_ref(float *Y, int ldy, const float *X, int ldx, int T, const float *W, int rows, int cols,
                   const float *bias, int accumulate) {
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * ldx; /* [cols] */
        float *y = Y + (size_t)t * ldy;       /* [rows] */
        for (int r = 0; r < rows; r++) {
            const float *w = W + (size_t)r * cols;
            double s = bias ? bias[r] : 0.0;
            for (int c = 0; c < cols; c++) s += (double)x[c] * w[c];
            y[r] = accumulate ? (float)(y[r] + s) : (float)s;
        }
    }
}

void gq_rmsnorm_ref(float *Y, int ldy, const float *X, int ldx, int T, int d, const float *w, float eps) {
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * ldx;
        float *y = Y + (size_t)t * ldy;
        double ss = 0;
        for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
        double inv = 1.0 / sqrt(ss / d + eps);
        for (int i = 0; i < d; i++) y[i] = (float)(x[i] * inv * w[i]);
    }
}

void gq_rope_ref(float *X, int ld, int T, int n_heads, int head_dim, int pos0, const float *inv_freq) {
    int half = head_dim / 2;
    for (int t = 0; t < T; t++) {
        float pos = (float)(pos0 + t);
        for (int h = 0; h < n_heads; h++) {
            float *x = X + (size_t)t * ld + (size_t)h * head_dim; /* [head_dim] */
            for (int i = 0; i < half; i++) {
                float ang = pos * inv_freq[i];
                float c = (float)cos((double)ang), s = (float)sin((double)ang);
                double x1 = x[i], x2 = x[i + half];
                x[i] = (float)(x1 * c - x2 * s);
                x[i + half] = (float)(x2 * c + x1 * s);
            }
        }
    }
}

void gq_attention_ref(float *O, int ldo, const float *Q, int ldq, const float *K, int ldk, const float *V, int ldv,
                      int Tq, int Tk, int n_heads, int n_kv, int head_dim) {
    int group = n_heads / n_kv;
    double scale = 1.0 / sqrt((double)head_dim);
    double *p = gq_malloc(sizeof(double) * (size_t)(Tk > 0 ? Tk : 1)); /* [Tk] probabilities */
    double *acc = gq_malloc(sizeof(double) * (size_t)head_dim);             /* [head_dim] */
    for (int h = 0; h < n_heads; h++) {
        int kvh = h / group;
        for (int i = 0; i < Tq; i++) {
            int last = Tk - Tq + i; /* the last key this query sees */
            const float *q = Q + (size_t)i * ldq + (size_t)h * head_dim;
            double mx = -INFINITY;
            for (int j = 0; j <= last; j++) {
                const float *k = K + (size_t)j * ldk + (size_t)kvh * head_dim;
                double s = 0;
                for (int c = 0; c < head_dim; c++) s += (double)q[c] * k[c];
                p[j] = s * scale;
                if (p[j] > mx) mx = p[j];
            }
            double sum = 0;
            for (int j = 0; j <= last; j++) {
                p[j] = exp(p[j] - mx);
                sum += p[j];
            }
            for (int c = 0; c < head_dim; c++) acc[c] = 0;
            for (int j = 0; j <= last; j++) {
                const float *v = V + (size_t)j * ldv + (size_t)kvh * head_dim;
                for (int c = 0; c < head_dim; c++) acc[c] += p[j] * v[c];
            }
            float *o = O + (size_t)i * ldo + (size_t)h * head_dim;
            for (int c = 0; c < head_dim; c++) o[c] = (float)(acc[c] / sum);
        }
    }
    free(p);
    free(acc);
}

void gq_swiglu_ref(float *A, int lda, const float *GU, int ldgu, int T, int I) {
    for (int t = 0; t < T; t++) {
        const float *g = GU + (size_t)t * ldgu, *u = g + I;
        float *a = A + (size_t)t * lda;
        for (int i = 0; i < I; i++) {
            double gi = g[i];
            a[i] = (float)(gi / (1.0 + exp(-gi)) * u[i]);
        }
    }
}

void gq_hessian_ref(float *H, const float *X, int ldx, int T, int K) {
    for (int i = 0; i < K; i++) {
        for (int j = 0; j < K; j++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += (double)X[(size_t)t * ldx + i] * X[(size_t)t * ldx + j];
            H[(size_t)i * K + j] = (float)(H[(size_t)i * K + j] + s);
        }
    }
}

void gq_nll_ref(const float *X, int ldx, int T, int d, const float *Wlm, int vocab, const int32_t *targets,
                double *nll_sum, int64_t *count) {
    double *logit = gq_malloc(sizeof(double) * (size_t)vocab); /* [vocab] */
    for (int t = 0; t < T; t++) {
        if (targets[t] < 0) continue;
        const float *x = X + (size_t)t * ldx;
        double mx = -INFINITY;
        for (int v = 0; v < vocab; v++) {
            const float *w = Wlm + (size_t)v * d;
            double s = 0;
            for (int c = 0; c < d; c++) s += (double)x[c] * w[c];
            logit[v] = s;
            if (s > mx) mx = s;
        }
        double sum = 0;
        for (int v = 0; v < vocab; v++) sum += exp(logit[v] - mx);
        *nll_sum += mx + log(sum) - logit[targets[t]];
        (*count)++;
    }
    free(logit);
}
