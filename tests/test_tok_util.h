/* tests/test_tok_util.h -- helpers of the tokenizer tests: hex strings, id lists against goldens. */
#ifndef GQ_TEST_TOK_UTIL_H
#define GQ_TEST_TOK_UTIL_H

#include <jansson.h>

#include "gq/tokenizer.h"
#include "test.h"

static char *unhex(const char *h, size_t *n) {
    size_t len = strlen(h) / 2;
    char *b = malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        b[i] = (char)v;
    }
    b[len] = 0;
    *n = len;
    return b;
}

/* ids equal to the JSON array exp; prints the first difference */
static int ids_equal(const gq_ids *got, json_t *exp, const char *what, const char *name) {
    size_t n = json_array_size(exp);
    size_t lim = got->n < n ? got->n : n;
    for (size_t i = 0; i < lim; i++) {
        if (got->v[i] != (int32_t)json_integer_value(json_array_get(exp, i))) {
            fprintf(stderr, "  %s %s: first difference at %zu: got %d, expected %d\n", name, what, i, got->v[i],
                    (int)json_integer_value(json_array_get(exp, i)));
            return 0;
        }
    }
    if (got->n != n) {
        fprintf(stderr, "  %s %s: got %zu ids, expected %zu\n", name, what, got->n, n);
        return 0;
    }
    return 1;
}

#endif /* GQ_TEST_TOK_UTIL_H */
