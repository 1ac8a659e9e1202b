/* json_util.h (private) -- small helpers shared by the modules that read JSON
 * with jansson. */
#ifndef GQ_JSON_UTIL_H
#define GQ_JSON_UTIL_H

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "gq/common.h"

/* "an object", "a string", ... for "expected X, got <this>" messages. */
static inline const char *gq_json_kind(const json_t *v) {
    if (!v) return "nothing";
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* path = j's text by json_dumps(flags) and a newline, written atomically (gq_write_file_atomic). */
static inline int gq_json_write_file(const char *path, const json_t *j, size_t flags) {
    char *s = json_dumps(j, flags);
    if (!s) return gq_err(GQ_ERR_IO, "%s: cannot serialise JSON", path);
    size_t n = strlen(s);
    s = gq_realloc(s, n + 2);
    s[n] = '\n';
    s[n + 1] = 0;
    int rc = gq_write_file_atomic(path, s, n + 1);
    free(s);
    return rc;
}

#endif /* GQ_JSON_UTIL_H */
