/*
 * tests/test.h -- a tiny test harness (redis testhelp.h style).
 *
 *   TEST_CHECK(cond, fmt, ...)        one check; prints the message on failure
 *   TEST_NEAR(a, b, tol, fmt, ...)    |a - b| <= tol (tolerance reason in the message)
 *   TEST_SKIP(fmt, ...)               record a skipped check, with the reason
 *   TEST_OK(status, fmt, ...)         a gq call returned GQ_OK (prints gq_errmsg() if not)
 *   TEST_FAILS(status, code, substr)  a gq call failed with `code` and its
 *                                      message contains `substr`
 *   return TEST_REPORT();             last line "RESULT <passed> <failed> <skipped>"
 *
 * Test data: gq_test_data("x") -> "$GQ_TEST_DATA/x" (default tests/data);
 * tests run from the repository root (make test does that).
 */
#ifndef GQ_TEST_H
#define GQ_TEST_H

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gq/common.h"

static int test_passed, test_failed, test_skipped;
static const char *test_name = "test";

#define TEST_BEGIN(name) (test_name = (name))

#define TEST_CHECK(cond, ...)                                                           \
    do {                                                                                \
        if (cond) {                                                                     \
            test_passed++;                                                              \
        } else {                                                                        \
            test_failed++;                                                              \
            fprintf(stderr, "FAIL %s (%s:%d): ", test_name, __FILE__, __LINE__);       \
            fprintf(stderr, __VA_ARGS__);                                               \
            fprintf(stderr, "\n");                                                      \
        }                                                                               \
    } while (0)

#define TEST_NEAR(a, b, tol, ...)                                                       \
    do {                                                                                \
        double ta_ = (double)(a), tb_ = (double)(b), tt_ = (double)(tol);               \
        int ok_ = fabs(ta_ - tb_) <= tt_;                                               \
        if (!ok_) {                                                                     \
            fprintf(stderr, "  | got %.9g, expected %.9g, |diff| %.3g > tol %.3g\n", ta_,  \
                    tb_, fabs(ta_ - tb_), tt_);                                         \
        }                                                                               \
        TEST_CHECK(ok_, __VA_ARGS__);                                                   \
    } while (0)

#define TEST_OK(status, ...)                                                            \
    do {                                                                                \
        int ts_ = (status);                                                             \
        if (ts_ != GQ_OK) fprintf(stderr, "  | status %d: %s\n", ts_, gq_errmsg());       \
        TEST_CHECK(ts_ == GQ_OK, __VA_ARGS__);                                          \
    } while (0)

#define TEST_FAILS(status, code, substr)                                                \
    do {                                                                                \
        int ts_ = (status);                                                             \
        const char *tm_ = gq_errmsg();                                                  \
        int ok_ = ts_ == (code) && strstr(tm_, (substr)) != NULL;                       \
        if (!ok_)                                                                       \
            fprintf(stderr, "  | status %d (want %d), message \"%s\" (want \"%s\")\n",    \
                    ts_, (int)(code), tm_, (substr));                                   \
        TEST_CHECK(ok_, "%s fails with %s mentioning \"%s\"", #status,                  \
                   gq_status_name(code), (substr));                                     \
    } while (0)

#define TEST_SKIP(...)                                                                  \
    do {                                                                                \
        test_skipped++;                                                                 \
        fprintf(stderr, "SKIP %s: ", test_name);                                        \
        fprintf(stderr, __VA_ARGS__);                                                   \
        fprintf(stderr, "\n");                                                          \
    } while (0)

static inline int test_report(const char *file) {
    fprintf(stdout, "%s: %d passed, %d failed, %d skipped\n", file, test_passed, test_failed,
            test_skipped);
    fprintf(stdout, "RESULT %d %d %d\n", test_passed, test_failed, test_skipped);
    fflush(stdout);
    return test_failed ? 1 : 0;
}
#define TEST_REPORT() test_report(__FILE__)

/* Path of a test data file (static buffer rotation: up to 8 live at once). */
static inline const char *gq_test_data(const char *rel) {
    static char bufs[8][1024];
    static int k;
    const char *base = getenv("GQ_TEST_DATA");
    char *b = bufs[k++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", base ? base : "tests/data", rel);
    return b;
}

/* Temporary directory for a test (created; removed by the caller). */
static inline const char *gq_test_tmpdir(const char *tag) {
    static char buf[512];
    const char *base = getenv("TMPDIR");
    snprintf(buf, sizeof buf, "%s/gq-test-%s-%d", base ? base : "/tmp", tag, (int)getpid());
    gq_rmtree(buf);
    gq_mkdirs(buf);
    return buf;
}

/* A JSON file (a check fails, and NULL, when it cannot be read or parsed). */
static inline json_t *test_load_json(const char *path) {
    char *text;
    size_t len;
    if (gq_read_file(path, &text, &len)) {
        TEST_CHECK(0, "cannot read %s: %s", path, gq_errmsg());
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    free(text);
    TEST_CHECK(j != NULL, "%s parses: %s", path, je.text);
    return j;
}

/* FNV-1a (64-bit) of token ids, each as 4 little-endian bytes: the form of the goldens'
 * hashes (tests/ref/gen_tokenizer.py, gen_calib.py). */
/* 1 when files a and b hold the same bytes (both readable). */
static inline int test_files_equal(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int eq = gq_read_file(a, &x, &nx) == GQ_OK && gq_read_file(b, &y, &ny) == GQ_OK && nx == ny && !memcmp(x, y, nx);
    free(x), free(y);
    return eq;
}

static inline uint64_t test_fnv1a64(const int32_t *ids, size_t n) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int k = 0; k < 4; k++) {
            h ^= (v >> (8 * k)) & 0xFF;
            h *= 0x100000001B3ull;
        }
    }
    return h;
}

/* ---- random data (splitmix64): reproducible, seeded by test_rng_state --------------------- */

static uint64_t test_rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t test_rng_next(void) {
    uint64_t z = (test_rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline double test_rng_unif(void) { return (double)(test_rng_next() >> 11) * 0x1.0p-53; } /* [0, 1) */
static inline float test_rng_normal(void) { /* N(0, 1), Box-Muller */
    double u1 = test_rng_unif(), u2 = test_rng_unif();
    return (float)(sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2));
}

#endif /* GQ_TEST_H */
