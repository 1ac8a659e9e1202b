/* datadir.c -- gq_data_path: the data directory of gq/datadir.h. */
#include "gq/datadir.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gq/common.h"

/* Directory of the running binary into buf ("" when unknown). */
static void exe_dir(char *buf, size_t cap) {
    ssize_t n = readlink("/proc/self/exe", buf, cap - 1);
    buf[n > 0 ? n : 0] = 0;
    char *slash = strrchr(buf, '/');
    if (slash)
        *slash = 0;
    else
        buf[0] = 0;
}

/* The i-th candidate data directory (i = 0, 1, 2) into buf; 0 when there is none. */
static int candidate(int i, char *buf, size_t cap) {
    char dir[PATH_MAX];
    exe_dir(dir, sizeof dir);
    if (!dir[0] && i < 2) return 0;
    if (i == 0)
        snprintf(buf, cap, "%s/../share/gq", dir);
    else if (i == 1)
        snprintf(buf, cap, "%s/..", dir);
    else
        snprintf(buf, cap, ".");
    return 1;
}

char *gq_data_path(const char *rel) {
    const char *env = getenv("GQ_DATA_DIR");
    if (env && *env) return gq_path_join(env, rel);
    for (int i = 0; i < 3; i++) {
        char dir[PATH_MAX];
        if (!candidate(i, dir, sizeof dir)) continue;
        char *p = gq_path_join(dir, rel);
        if (gq_path_exists(p)) {
            char *real = i < 2 ? realpath(p, NULL) : NULL; /* ".../bin/../share/gq/x" -> ".../share/gq/x" */
            if (!real) return p;
            free(p);
            return real;
        }
        free(p);
    }
    return NULL;
}

int gq_data_not_found(const char *rel) { /* only after gq_data_path returned NULL: GQ_DATA_DIR is unset */
    char d[3][PATH_MAX];
    for (int i = 0; i < 3; i++)
        if (!candidate(i, d[i], sizeof d[i])) snprintf(d[i], sizeof d[i], "(binary's directory unknown)");
    return gq_err(GQ_ERR_IO,
                  "%s: not found; expected it under $GQ_DATA_DIR (not set), %s (installed), %s (source tree) or %s "
                  "(working directory)",
                  rel, d[0], d[1], d[2]);
}
