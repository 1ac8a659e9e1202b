/* sample.c -- host-side sampling for generation (gq/generate.h): a seeded
 * xoshiro256** stream per sequence, greedy / temperature / top-k / top-p
 * (transformers' warpers, in that order), and the degenerate-answer test. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq/generate.h"

void gq_gen_sampling_default(gq_gen_sampling *s) {
    memset(s, 0, sizeof *s);
    s->temperature = 0.0;
    s->top_p = 1.0;
    s->top_k = 0;
    s->seed = 0;
    s->max_new_tokens = 512;
}

int gq_gen_sampling_check(const gq_gen_sampling *s) {
    if (!(s->temperature >= 0.0) || !isfinite(s->temperature))
        return gq_err(GQ_ERR_ARG, "sampling: temperature must be a finite number >= 0, got %g", s->temperature);
    if (!(s->top_p > 0.0 && s->top_p <= 1.0))
        return gq_err(GQ_ERR_ARG, "sampling: top_p must be in (0, 1], got %g", s->top_p);
    if (s->top_k < 0) return gq_err(GQ_ERR_ARG, "sampling: top_k must be >= 0 (0 = off), got %d", s->top_k);
    if (s->max_new_tokens < 1)
        return gq_err(GQ_ERR_ARG, "sampling: max_new_tokens must be >= 1, got %d", s->max_new_tokens);
    return GQ_OK;
}

/* ---- xoshiro256** seeded by splitmix64 ------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void gq_gen_rng_seed(gq_gen_rng *r, uint64_t seed, uint64_t stream) {
    /* the stream is mixed in through its own splitmix64 output, so streams
     * of one seed (and seeds of one stream) start far apart */
    uint64_t x = stream;
    uint64_t st = seed ^ splitmix64(&x);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&st);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t gq_gen_rng_next(gq_gen_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double gq_gen_rng_uniform(gq_gen_rng *r) {
    return (double)(gq_gen_rng_next(r) >> 11) * 0x1.0p-53;
}

/* ---- sampling ---------------------------------------------------------------------------- */

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* k-th largest value (1-based k) of x[0..n), by quickselect on a copy. */
static float kth_largest(const float *x, int n, int k) {
    float *a = gq_malloc((size_t)n * sizeof *a);
    memcpy(a, x, (size_t)n * sizeof *a);
    int lo = 0, hi = n - 1, want = k - 1; /* index in descending order */
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) {
                float t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            break;
    }
    float v = a[want];
    free(a);
    return v;
}

typedef struct {
    double e;
    int32_t i;
} cand;

static int cand_desc(const void *a, const void *b) {
    double x = ((const cand *)a)->e, y = ((const cand *)b)->e;
    if (x != y) return x < y ? 1 : -1;
    int32_t i = ((const cand *)a)->i, j = ((const cand *)b)->i;
    return (i > j) - (i < j);
}

/* TopPLogitsWarper on logits[n] (max mx): keep a token iff the probability
 * mass of the tokens ranked above it is < top_p; the others become -inf.
 * Only tokens above a probability threshold are sorted; the threshold is
 * lowered until they alone hold top_p of the mass (then every token below
 * it is dropped anyway). */
static void top_p_filter(float *logits, int n, float mx, double top_p) {
    double *e = gq_malloc((size_t)n * sizeof *e), z = 0; /* softmax numerators */
    for (int i = 0; i < n; i++) {
        e[i] = logits[i] == -INFINITY ? 0.0 : exp((double)(logits[i] - mx));
        z += e[i];
    }
    double target = top_p * z, tau = 1e-3;
    cand *c = gq_malloc((size_t)n * sizeof *c);
    int nc;
    for (;;) {
        double mass = 0;
        nc = 0;
        for (int i = 0; i < n; i++)
            if (e[i] > 0 && e[i] >= tau) {
                c[nc].e = e[i];
                c[nc++].i = i;
                mass += e[i];
            }
        if (mass >= target || tau == 0) break;
        tau = tau > 1e-30 ? tau * 1e-4 : 0;
    }
    qsort(c, (size_t)nc, sizeof *c, cand_desc);
    double cum = 0;
    int keep = 0;
    while (keep < nc && (keep == 0 || cum < target)) cum += c[keep++].e;
    for (int k = 0; k < keep; k++) e[c[k].i] = -1; /* mark kept */
    for (int i = 0; i < n; i++)
        if (e[i] != -1) logits[i] = -INFINITY;
    free(c);
    free(e);
}

void gq_gen_sample_filter(float *logits, int vocab, const gq_gen_sampling *s) {
    if (s->temperature == 0.0) return;
    float inv_t = (float)(1.0 / s->temperature);
    for (int i = 0; i < vocab; i++) logits[i] *= inv_t;
    if (s->top_k > 0 && s->top_k < vocab) {
        float kth = kth_largest(logits, vocab, s->top_k);
        for (int i = 0; i < vocab; i++)
            if (logits[i] < kth) logits[i] = -INFINITY;
    }
    if (s->top_p < 1.0) top_p_filter(logits, vocab, logits[argmax(logits, vocab)], s->top_p);
}

int32_t gq_gen_sample(float *logits, int vocab, const gq_gen_sampling *s, gq_gen_rng *r) {
    if (s->temperature == 0.0 || !r) return argmax(logits, vocab);
    gq_gen_sample_filter(logits, vocab, s);
    float mx = logits[argmax(logits, vocab)];
    double z = 0;
    for (int i = 0; i < vocab; i++) z += logits[i] == -INFINITY ? 0.0 : exp((double)(logits[i] - mx));
    double u = gq_gen_rng_uniform(r) * z, acc = 0;
    int32_t last = 0;
    for (int i = 0; i < vocab; i++) {
        if (logits[i] == -INFINITY) continue;
        last = i;
        acc += exp((double)(logits[i] - mx));
        if (u < acc) return i;
    }
    return last; /* u rounding up to z: the last kept token */
}

/* ---- answer quality ------------------------------------------------------------------------ */

int gq_gen_degenerate(const int32_t *ids, int n, int max_period, double ratio, int *covered) {
    int best_p = 0, best_cov = 0;
    for (int p = 1; p <= max_period && p < n; p++) {
        int run = 0, best_run = 0;
        for (int i = p; i < n; i++) {
            run = ids[i] == ids[i - p] ? run + 1 : 0;
            if (run > best_run) best_run = run;
        }
        int cov = best_run + p; /* the repeated period itself plus its repetitions */
        if (best_run >= 2 * p && cov > ratio * n && cov > best_cov) {
            best_cov = cov;
            best_p = p;
        }
    }
    if (covered) *covered = best_cov;
    return best_p;
}
