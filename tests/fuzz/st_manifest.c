/*
 * st_manifest.c -- print the tests/data/st_fuzz/MANIFEST.tsv line of each
 * file given: name, gq_st_open status, and the message after "<path>: "
 * (only "header is not valid JSON" for JSON syntax errors, whose wording is
 * jansson's), or "tensors=<count>" when the file opens.
 *
 *   make && cc -std=c11 -D_GNU_SOURCE -Iinclude tests/fuzz/st_manifest.c build/libgq.a \
 *       -ljansson -lm -fopenmp -o build/st_manifest
 *   cd tests/data/st_fuzz && ../../../build/st_manifest *.bin >> MANIFEST.tsv
 */
#include <string.h>

#include "gq/st.h"

int main(int argc, char **argv) {
    static const char json_err[] = "header is not valid JSON";
    for (int i = 1; i < argc; i++) {
        gq_st *st = NULL;
        int rc = gq_st_open(&st, argv[i]);
        const char *name = strrchr(argv[i], '/') ? strrchr(argv[i], '/') + 1 : argv[i];
        if (rc == GQ_OK) {
            printf("%s\t0\ttensors=%d\n", name, gq_st_count(st));
        } else {
            const char *m = gq_errmsg();
            size_t n = strlen(argv[i]);
            if (strncmp(m, argv[i], n) == 0 && m[n] == ':') m += n + 2;
            printf("%s\t%d\t%s\n", name, rc, strncmp(m, json_err, sizeof json_err - 1) == 0 ? json_err : m);
        }
        gq_st_close(st);
    }
    return 0;
}
