/* test_cmd_util.h -- run a command's entry point (cmd/cmds.h) with its stdout captured. */
#ifndef GQ_TEST_CMD_UTIL_H
#define GQ_TEST_CMD_UTIL_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* rc = cmd(argc, argv) with stdout captured into out (NUL-terminated, at most cap - 1 bytes). */
static inline int test_run_captured(int (*cmd)(int, char **), char **argv, int argc, char *out, size_t cap) {
    char path[256];
    snprintf(path, sizeof path, "%s/gq-test-cmd-out-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    fflush(stdout);
    int saved = dup(1), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    close(fd);
    int rc = cmd(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    out[0] = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(out, 1, cap - 1, f);
        out[n] = 0;
        fclose(f);
    }
    unlink(path);
    return rc;
}

#endif /* GQ_TEST_CMD_UTIL_H */
