/* json_util.h (private) -- small helpers shared by the modules that read JSON
 * with jansson. */
#ifndef GQ_JSON_UTIL_H
#define GQ_JSON_UTIL_H

#include <jansson.h>

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

#endif /* GQ_JSON_UTIL_H */
