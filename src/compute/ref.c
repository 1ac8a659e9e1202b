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

void gq_rope_partial_ref(float *X, int ld, int T, int n_heads, int head_dim, int rot, int pos0,
                         const float *inv_freq) {
    int half = rot / 2;
    for (int t = 0; t < T; t++) {
        float pos = (float)(pos0 + t);
        for (int h = 0; h < n_heads; h++) {
            float *x = X + (size_t)t * ld + (size_t)h * head_dim; /* [head_dim], dims rot.. untouched */
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

void gq_rope_ref(float *X, int ld, int T, int n_heads, int head_dim, int pos0, const float *inv_freq) {
    gq_rope_partial_ref(X, ld, T, n_heads, head_dim, head_dim, pos0, inv_freq);
}

/* One query row: o[hd] = softmax over keys lo..last of the (capped) scores, V-weighted.
 * p [Tk], acc [hd]: scratch. */
static void attn_row_ref(float *o, const float *q, const float *K, int ldk, const float *V, int ldv, int lo, int last,
                         int head_dim, double scale, double softcap, double *p, double *acc) {
    double mx = -INFINITY;
    for (int j = lo; j <= last; j++) {
        const float *k = K + (size_t)j * ldk;
        double s = 0;
        for (int c = 0; c < head_dim; c++) s += (double)q[c] * k[c];
        p[j] = s * scale;
        if (softcap > 0) p[j] = softcap * tanh(p[j] / softcap);
        if (p[j] > mx) mx = p[j];
    }
    double sum = 0;
    for (int j = lo; j <= last; j++) {
        p[j] = exp(p[j] - mx);
        sum += p[j];
    }
    for (int c = 0; c < head_dim; c++) acc[c] = 0;
    for (int j = lo; j <= last; j++) {
        const float *v = V + (size_t)j * ldv;
        for (int c = 0; c < head_dim; c++) acc[c] += p[j] * v[c];
    }
    for (int c = 0; c < head_dim; c++) o[c] = (float)(acc[c] / sum);
}

void gq_attention_ex_ref(float *O, int ldo, const float *Q, int ldq, const float *K, int ldk, const float *V, int ldv,
                         int Tq, int Tk, int n_heads, int n_kv, int head_dim, float scale, float softcap,
                         int window) {
    int group = n_heads / n_kv;
    double sc = scale > 0 ? (double)scale : 1.0 / sqrt((double)head_dim);
    double *p = gq_malloc(sizeof(double) * (size_t)(Tk > 0 ? Tk : 1)); /* [Tk] probabilities */
    double *acc = gq_malloc(sizeof(double) * (size_t)head_dim);        /* [head_dim] */
    for (int h = 0; h < n_heads; h++) {
        int kvh = h / group;
        for (int i = 0; i < Tq; i++) {
            int last = Tk - Tq + i;                             /* the query's position: the last key it sees */
            int lo = window > 0 && last - window + 1 > 0 ? last - window + 1 : 0; /* the first */
            attn_row_ref(O + (size_t)i * ldo + (size_t)h * head_dim, Q + (size_t)i * ldq + (size_t)h * head_dim,
                         K + (size_t)kvh * head_dim, ldk, V + (size_t)kvh * head_dim, ldv, lo, last, head_dim, sc,
                         softcap, p, acc);
        }
    }
    free(p);
    free(acc);
}

void gq_attention_ref(float *O, int ldo, const float *Q, int ldq, const float *K, int ldk, const float *V, int ldv,
                      int Tq, int Tk, int n_heads, int n_kv, int head_dim) {
    gq_attention_ex_ref(O, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, n_heads, n_kv, head_dim, 0.0f, 0.0f, 0);
}

/* act(x) in double: 0 SiLU x / (1 + e^-x), 1 GELU-tanh 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static double act_ref(double x, int act) {
    if (act == 0) return x / (1.0 + exp(-x));
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

void gq_glu_ref(float *A, int lda, const float *GU, int ldgu, int T, int I, int act) {
    for (int t = 0; t < T; t++) {
        const float *g = GU + (size_t)t * ldgu, *u = g + I;
        float *a = A + (size_t)t * lda;
        for (int i = 0; i < I; i++) a[i] = (float)(act_ref(g[i], act) * u[i]);
    }
}

void gq_swiglu_ref(float *A, int lda, const float *GU, int ldgu, int T, int I) {
    gq_glu_ref(A, lda, GU, ldgu, T, I, 0);
}

void gq_act_ref(float *X, int ld, int T, int n, int act) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++) X[(size_t)t * ld + i] = (float)act_ref(X[(size_t)t * ld + i], act);
}

void gq_layernorm_ref(float *Y, int ldy, const float *X, int ldx, int T, int d, const float *w, const float *b,
                      float eps) {
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * ldx;
        float *y = Y + (size_t)t * ldy;
        double s = 0, ss = 0;
        for (int i = 0; i < d; i++) s += x[i];
        double mean = s / d;
        for (int i = 0; i < d; i++) ss += (x[i] - mean) * (x[i] - mean);
        double inv = 1.0 / sqrt(ss / d + eps);
        for (int i = 0; i < d; i++) y[i] = (float)((x[i] - mean) * inv * w[i] + (b ? b[i] : 0.0));
    }
}

void gq_head_rmsnorm_ref(float *X, int ld, int T, int n_heads, int head_dim, const float *w, float eps) {
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++) {
            float *x = X + (size_t)t * ld + (size_t)h * head_dim; /* one head, in place */
            gq_rmsnorm_ref(x, head_dim, x, head_dim, 1, head_dim, w, eps);
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
