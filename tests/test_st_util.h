/*
 * tests/test_st_util.h -- helpers shared by the safetensors tests: write raw
 * bytes, assemble a safetensors file from a header string and data bytes.
 */
#ifndef GQ_TEST_ST_UTIL_H
#define GQ_TEST_ST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gq/common.h"

/* Write n bytes to path (GQ_ASSERT on failure: a broken test environment). */
static inline void st_write_bytes(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    GQ_ASSERT(f);
    GQ_ASSERT(n == 0 || fwrite(buf, 1, n, f) == n);
    GQ_ASSERT(fclose(f) == 0);
}

/* Write a safetensors file: 8-byte length `hlen` (the real header length if
 * hlen == UINT64_MAX), the header text, then ndata data bytes. */
static inline void st_write_raw(const char *path, const char *header, uint64_t hlen, const void *data,
                                size_t ndata) {
    size_t h = strlen(header);
    uint64_t len = hlen == UINT64_MAX ? (uint64_t)h : hlen;
    uint8_t *buf = gq_malloc(8 + h + ndata);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, header, h);
    if (ndata) memcpy(buf + 8 + h, data, ndata);
    st_write_bytes(path, buf, 8 + h + ndata);
    free(buf);
}

/* Path dir/name in a static rotation of buffers (8 live at once). */
static inline const char *st_path(const char *dir, const char *name) {
    static char bufs[8][4096];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

/* 1 if the current error message starts with `prefix`. */
static inline int st_msg_starts_with(const char *prefix) {
    return strncmp(gq_errmsg(), prefix, strlen(prefix)) == 0;
}

#endif /* GQ_TEST_ST_UTIL_H */
