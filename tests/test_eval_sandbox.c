/* test_eval_sandbox.c -- the sandbox of gq eval (gq/sandbox.h) against hostile programs: an
 * infinite loop, a sleeping loop, fork bombs, memory hogs, os.kill(os.getppid(), 9), kill(0) and
 * kill(-1), writes to ../ and to /tmp, a read-write remount, the network, an output flood, a file
 * flood, a detached daemon, inherited descriptors, capabilities. Each must cost its own run and
 * nothing else: this process lives on, the next run passes, nothing is left running or written.
 *
 * The checks run in each mode this machine allows: the namespace mode when the kernel lets gq
 * create namespaces (else SKIP lines for the namespace-only checks), and always the unsafe mode
 * (--unsafe-no-sandbox: limits and the process-group kill only), where the checks that need
 * isolation (kill(-1), /tmp, remount, network, daemon) are skipped and say so. The refusal path
 * (namespaces refused -> an error naming the call and errno, unless unsafe) runs in a child that
 * unshare(2)s a user namespace without a uid map (so nested namespaces are refused), or directly
 * where the kernel refuses namespaces anyway. Needs python3 (skipped without). */
#include "gq/sandbox.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "gq/eval.h"
#include "test.h"

static const char *python;
static const char *av[5];

static int run_prog(gq_sandbox *sb, int slot, const char *code, gq_sb_result *r) {
    return gq_sb_run(sb, slot, av, "prog.py", code, strlen(code), r);
}

static gq_eval_outcome outcome(const gq_sb_result *r, const gq_sb_opts *o, char *detail) {
    return gq_eval_classify(r, o, detail, 256);
}

/* processes whose working directory is dir (what a run left behind) */
static int left_in(const char *dir) {
    DIR *d = opendir("/proc");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char p[300], t[4096];
        snprintf(p, sizeof p, "/proc/%s/cwd", e->d_name);
        ssize_t k = readlink(p, t, sizeof t - 1);
        if (k <= 0) continue;
        t[k] = 0;
        if (!strcmp(t, dir)) n++;
    }
    if (d) closedir(d);
    return n;
}

static void benign_after(gq_sandbox *sb, const gq_sb_opts *o, const char *what) {
    gq_sb_result r;
    TEST_OK(run_prog(sb, 0, "print('still fine')\n", &r), "run after %s", what);
    TEST_CHECK(outcome(&r, o, NULL) == GQ_EVAL_PASSED && strstr(r.out, "still fine"),
               "a program after %s passes (out: %s)", what, r.out);
    gq_sb_result_free(&r);
}

typedef struct {
    gq_sandbox *sb;
    gq_sb_result r;
    int rc;
} bg_run;

static void *bg(void *arg) {
    bg_run *b = arg;
    b->rc = run_prog(b->sb, 1, "import time\ntime.sleep(0.8)\nprint('survived')\n", &b->r);
    return NULL;
}

static void hostile(gq_sandbox *sb, const gq_sb_opts *o, int ns) {
    const char *mode = ns ? "namespaces" : "unsafe";
    char what[96], detail[256];
    gq_sb_result r;
    double t0;
    int oc;
    fprintf(stderr, "sandbox mode under test: %s: %s\n", gq_sb_mode_name(gq_sb_get_mode(sb)), gq_sb_describe(sb));

    snprintf(what, sizeof what, "%s: benign", mode);
    TEST_BEGIN(what);
    TEST_OK(run_prog(sb, 0, "import sys, math, re, hashlib, collections\nprint('hi', sys.flags.isolated)\n", &r),
            "run");
    TEST_CHECK(outcome(&r, o, detail) == GQ_EVAL_PASSED && !strcmp(r.out, "hi 1\n"), "passes, isolated mode: %s",
               r.out);
    gq_sb_result_free(&r);

    snprintf(what, sizeof what, "%s: infinite loop", mode);
    TEST_BEGIN(what);
    t0 = gq_now();
    TEST_OK(run_prog(sb, 0, "while True:\n    pass\n", &r), "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK(oc == GQ_EVAL_CPU || oc == GQ_EVAL_TIMEOUT, "CPU or wall limit, got %s (%s)", gq_eval_outcome_name(oc),
               detail);
    TEST_CHECK(gq_now() - t0 < o->wall_s + 1.5, "ended within the limits (%.2f s)", gq_now() - t0);
    gq_sb_result_free(&r);
    benign_after(sb, o, what);

    snprintf(what, sizeof what, "%s: sleeping loop", mode);
    TEST_BEGIN(what);
    t0 = gq_now();
    TEST_OK(run_prog(sb, 0, "import time\nwhile True:\n    time.sleep(0.1)\n", &r), "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK(oc == GQ_EVAL_TIMEOUT && r.timed_out, "wall-clock limit, got %s", gq_eval_outcome_name(oc));
    TEST_CHECK(gq_now() - t0 < o->wall_s + 1.0, "killed at the wall-clock limit (%.2f s)", gq_now() - t0);
    gq_sb_result_free(&r);

    snprintf(what, sizeof what, "%s: fork bomb", mode);
    TEST_BEGIN(what);
    TEST_OK(run_prog(sb, 0, "import os\nwhile True:\n    os.fork()\n", &r), "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK(oc != GQ_EVAL_PASSED, "fails, got %s", gq_eval_outcome_name(oc));
    gq_sb_result_free(&r);
    TEST_OK(
        run_prog(sb, 0, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", &r),
        "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK(oc == GQ_EVAL_TIMEOUT || oc == GQ_EVAL_CPU, "a fork bomb that catches errors: killed, got %s (%s)",
               gq_eval_outcome_name(oc), detail);
    gq_sb_result_free(&r);
    usleep(200000);
    TEST_CHECK(left_in(gq_sb_dir(sb, 0)) == 0, "no process of the fork bomb is left (%d)", left_in(gq_sb_dir(sb, 0)));
    benign_after(sb, o, what);

    snprintf(what, sizeof what, "%s: memory hog", mode);
    TEST_BEGIN(what);
    TEST_OK(run_prog(sb, 0, "x = bytearray(8 << 30)\n", &r), "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK(oc == GQ_EVAL_MEMORY, "8 GiB at once: MemoryError, got %s (%s)", gq_eval_outcome_name(oc), detail);
    gq_sb_result_free(&r);
    TEST_OK(run_prog(sb, 0, "x = []\nwhile True:\n    x.append(bytes(1 << 26))\n", &r), "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK(oc == GQ_EVAL_MEMORY, "growing without bound: MemoryError, got %s (%s)", gq_eval_outcome_name(oc),
               detail);
    gq_sb_result_free(&r);
    benign_after(sb, o, what);

    snprintf(what, sizeof what, "%s: kill the parent", mode);
    TEST_BEGIN(what);
    TEST_OK(run_prog(sb, 0, "import os, time\nos.kill(os.getppid(), 9)\ntime.sleep(0.3)\nprint('after')\n", &r), "run");
    oc = outcome(&r, o, detail);
    fprintf(stderr, "  (%s: os.kill(os.getppid(), 9): %s %s)\n", mode, gq_eval_outcome_name(oc), detail);
    TEST_CHECK(kill(getpid(), 0) == 0, "this process lives");
    gq_sb_result_free(&r);
    TEST_OK(run_prog(sb, 0, "import os\nos.kill(0, 9)\n", &r), "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK(oc == GQ_EVAL_KILLED, "kill(0, 9) kills its own group only, got %s", gq_eval_outcome_name(oc));
    gq_sb_result_free(&r);
    benign_after(sb, o, what);

    snprintf(what, sizeof what, "%s: kill(-1)", mode);
    TEST_BEGIN(what);
    if (ns) {
        bg_run b = {.sb = sb};
        pthread_t th;
        pthread_create(&th, NULL, bg, &b);
        usleep(150000);
        TEST_OK(run_prog(sb, 0, "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n",
                         &r),
                "run");
        pthread_join(th, NULL);
        TEST_OK(b.rc, "the run beside it");
        TEST_CHECK(outcome(&b.r, o, detail) == GQ_EVAL_PASSED && strstr(b.r.out, "survived"),
                   "the program running beside kill(-1, SIGKILL) passes (%s)", b.r.out);
        gq_sb_result_free(&b.r);
        gq_sb_result_free(&r);
    } else {
        TEST_SKIP("%s: kill(-1, SIGKILL) would reach every process of the user (no PID namespace)", mode);
    }

    snprintf(what, sizeof what, "%s: writes outside", mode);
    TEST_BEGIN(what);
    char esc[700], tmpf[256], prog[1200];
    snprintf(esc, sizeof esc, "%s/../escape", gq_sb_dir(sb, 0));
    TEST_OK(run_prog(sb, 0, "open('../escape', 'w').write('x')\n", &r), "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK(oc == GQ_EVAL_EXCEPTION && access(esc, F_OK) != 0, "writing ../escape fails (%s) and wrote nothing",
               detail);
    gq_sb_result_free(&r);
    TEST_OK(run_prog(sb, 0, "open('here', 'w').write('x' * 1000)\nprint(len(open('here').read()))\n", &r), "run");
    TEST_CHECK(outcome(&r, o, detail) == GQ_EVAL_PASSED && !strcmp(r.out, "1000\n"), "its own directory is writable");
    gq_sb_result_free(&r);
    if (ns) {
        snprintf(tmpf, sizeof tmpf, "/tmp/gq-test-escape-%d", (int)getpid());
        snprintf(prog, sizeof prog, "open('%s', 'w').write('x')\n", tmpf);
        TEST_OK(run_prog(sb, 0, prog, &r), "run");
        oc = outcome(&r, o, detail);
        TEST_CHECK(oc == GQ_EVAL_EXCEPTION && strstr(detail, "Read-only file system") && access(tmpf, F_OK) != 0,
                   "writing /tmp: read-only (%s)", detail);
        unlink(tmpf);
        gq_sb_result_free(&r);
        TEST_OK(run_prog(sb, 0,
                         "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                         "r = libc.mount(None, b'/', None, 32 | 4096, None)\n" /* MS_REMOUNT | MS_BIND */
                         "assert r != 0, 'remounted / read-write'\nprint(ctypes.get_errno())\n",
                         &r),
                "run");
        TEST_CHECK(outcome(&r, o, detail) == GQ_EVAL_PASSED && !strcmp(r.out, "1\n"),
                   "remounting / read-write is refused with EPERM (%s)", r.out);
        gq_sb_result_free(&r);
        TEST_OK(run_prog(sb, 0, "print(open('/proc/self/status').read())\n", &r), "run");
        TEST_CHECK(strstr(r.out, "CapEff:\t0000000000000000") && strstr(r.out, "CapBnd:\t0000000000000000") &&
                       strstr(r.out, "NoNewPrivs:\t1"),
                   "no capabilities, none to gain, no_new_privs:\n%s", r.out);
        gq_sb_result_free(&r);
    } else {
        TEST_SKIP("%s: writes to /tmp, a read-write remount and capabilities need the mount namespace", mode);
    }

    snprintf(what, sizeof what, "%s: network", mode);
    TEST_BEGIN(what);
    if (ns) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        int ok = s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 4) == 0 &&
                 getsockname(s, (struct sockaddr *)&a, &al) == 0;
        if (ok) {
            snprintf(prog, sizeof prog,
                     "import socket\ntry:\n    socket.create_connection(('127.0.0.1', %d), timeout=1)\n    "
                     "print('connected')\n"
                     "except OSError as e:\n    print('refused', e.errno)\n",
                     ntohs(a.sin_port));
            TEST_OK(run_prog(sb, 0, prog, &r), "run");
            TEST_CHECK(outcome(&r, o, detail) == GQ_EVAL_PASSED && strstr(r.out, "refused"),
                       "a port listening on this machine's 127.0.0.1 is out of reach (%s)", r.out);
            gq_sb_result_free(&r);
        } else {
            TEST_SKIP("no loopback socket to test with");
        }
        if (s >= 0) close(s);
    } else {
        TEST_SKIP("%s: no network namespace", mode);
    }

    snprintf(what, sizeof what, "%s: floods", mode);
    TEST_BEGIN(what);
    t0 = gq_now();
    TEST_OK(run_prog(sb, 0, "import sys\nwhile True:\n    sys.stdout.write('x' * 100000)\n", &r), "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK(oc == GQ_EVAL_OUTPUT && r.out_n <= o->out_cap,
               "an output flood ends at the output limit, got %s, %zu bytes kept", gq_eval_outcome_name(oc), r.out_n);
    TEST_CHECK(gq_now() - t0 < 1.0, "and early (%.2f s)", gq_now() - t0);
    gq_sb_result_free(&r);
    TEST_OK(run_prog(sb, 0, "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 1000000)\n", &r), "run");
    oc = outcome(&r, o, detail);
    TEST_CHECK((oc == GQ_EVAL_EXCEPTION && strstr(detail, "File too large")) || oc == GQ_EVAL_OUTPUT,
               "a file flood stops at the file size limit, got %s (%s)", gq_eval_outcome_name(oc), detail);
    gq_sb_result_free(&r);
    benign_after(sb, o, what);

    snprintf(what, sizeof what, "%s: descriptors", mode);
    TEST_BEGIN(what);
    TEST_OK(run_prog(sb, 0,
                     "import os, sys\nprint(sorted(int(f) for f in os.listdir('/proc/self/fd')), sys.stdin.read())\n",
                     &r),
            "run");
    TEST_CHECK(outcome(&r, o, detail) == GQ_EVAL_PASSED && !strcmp(r.out, "[0, 1, 2, 3] \n"),
               "only stdin (empty), stdout, stderr (and listdir's own): %s", r.out);
    gq_sb_result_free(&r);

    snprintf(what, sizeof what, "%s: daemon", mode);
    TEST_BEGIN(what);
    if (ns) {
        TEST_OK(run_prog(sb, 0,
                         "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                         "        while True:\n            time.sleep(0.05)\nprint('parent done')\n",
                         &r),
                "run");
        TEST_CHECK(outcome(&r, o, detail) == GQ_EVAL_PASSED, "the parent returns (%s)",
                   gq_eval_outcome_name(outcome(&r, o, detail)));
        gq_sb_result_free(&r);
        usleep(200000);
        TEST_CHECK(left_in(gq_sb_dir(sb, 0)) == 0, "the detached daemon died with its PID namespace");
        TEST_OK(run_prog(sb, 0, "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n", &r),
                "run");
        TEST_CHECK(outcome(&r, o, detail) == GQ_EVAL_PASSED && (!strcmp(r.out, "[1, 2]\n") || !strcmp(r.out, "[]\n")),
                   "its /proc shows its init and itself only (or nothing where proc is hidden): %s", r.out);
        gq_sb_result_free(&r);
    } else {
        TEST_SKIP("%s: a process that calls setsid() leaves the process group and outlives the run (until its CPU "
                  "limit); namespaces only",
                  mode);
    }
}

/* the refusal path in a child whose user namespace has no uid map: nested namespaces are refused */
static void refusal_in_child(void) {
    TEST_BEGIN("refusal");
    pid_t pid = fork();
    if (pid == 0) {
        if (unshare(CLONE_NEWUSER) != 0) _exit(77);
        gq_sb_opts o;
        gq_sb_opts_default(&o);
        o.wall_s = 5;
        gq_sandbox *sb = NULL;
        int rc = gq_sb_open(&sb, &o, 1), bits = 0;
        if (rc == GQ_ERR_UNSUPPORTED && strstr(gq_errmsg(), "clone(CLONE_NEWUSER|CLONE_NEWNS") &&
            strstr(gq_errmsg(), "(EPERM)") && strstr(gq_errmsg(), "--unsafe-no-sandbox"))
            bits |= 1;
        else
            fprintf(stderr, "  | refused with %d: %s\n", rc, gq_errmsg());
        o.unsafe = 1;
        if (gq_sb_open(&sb, &o, 1) == GQ_OK) {
            if (gq_sb_get_mode(sb) == GQ_SB_UNSAFE && strstr(gq_sb_refusal(sb), "clone(")) bits |= 2;
            gq_sb_result r;
            if (run_prog(sb, 0, "print('ok')\n", &r) == GQ_OK && r.exited && r.exit_code == 0) bits |= 4;
            gq_sb_result_free(&r);
            gq_sb_close(sb);
        }
        _exit(bits == 7 ? 0 : 10 + bits);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
        TEST_SKIP("refusal: unshare(CLONE_NEWUSER) is refused here, so it was not simulated (checked directly above)");
        return;
    }
    TEST_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
               "namespaces refused: gq_sb_open says which call failed and why, and refuses unless unsafe; unsafe runs "
               "(child status %d)",
               WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : NULL;
    if (!python) {
        TEST_SKIP("no /usr/bin/python3");
        return TEST_REPORT();
    }
    av[0] = python;
    av[1] = "-I";
    av[2] = "-S";
    av[3] = "prog.py";
    av[4] = NULL;
    gq_sb_opts o;
    gq_sb_opts_default(&o);
    o.wall_s = 1.5;
    o.cpu_s = 1;
    o.mem_bytes = (size_t)512 << 20;
    o.fsize_bytes = (size_t)1 << 20;
    o.out_cap = 4096;
    o.nproc = 32;

    /* namespace mode where the kernel allows it */
    TEST_BEGIN("open");
    gq_sandbox *sb = NULL;
    int rc = gq_sb_open(&sb, &o, 2);
    if (rc == GQ_OK) {
        fprintf(stderr, "namespaces: allowed (%s)\n", gq_sb_mode_name(gq_sb_get_mode(sb)));
        TEST_CHECK(gq_sb_get_mode(sb) != GQ_SB_UNSAFE && !gq_sb_refusal(sb)[0], "a namespace mode, no refusal");
        hostile(sb, &o, 1);
        gq_sb_close(sb);
        /* the mount-by-mount read-only fallback of kernels without mount_setattr(2) */
        TEST_BEGIN("no mount_setattr");
        gq_sb_opts o2 = o;
        o2.no_setattr = 1;
        TEST_OK(gq_sb_open(&sb, &o2, 1), "open");
        if (sb) {
            gq_sb_result r;
            char tmpf[256], prog[512], detail[256];
            snprintf(tmpf, sizeof tmpf, "/tmp/gq-test-escape2-%d", (int)getpid());
            snprintf(prog, sizeof prog, "open('%s', 'w').write('x')\n", tmpf);
            TEST_OK(run_prog(sb, 0, prog, &r), "run");
            TEST_CHECK(outcome(&r, &o2, detail) == GQ_EVAL_EXCEPTION && strstr(detail, "Read-only file system") &&
                           access(tmpf, F_OK) != 0,
                       "mounts made read-only one by one (%s)", detail);
            unlink(tmpf);
            gq_sb_result_free(&r);
            TEST_OK(run_prog(sb, 0, "print('ok')\n", &r), "run");
            TEST_CHECK(outcome(&r, &o2, detail) == GQ_EVAL_PASSED, "and programs run");
            gq_sb_result_free(&r);
            gq_sb_close(sb);
        }
        refusal_in_child();
    } else {
        fprintf(stderr, "namespaces: refused here: %s\n", gq_errmsg());
        TEST_CHECK(rc == GQ_ERR_UNSUPPORTED && strstr(gq_errmsg(), "the kernel refused the namespaces: ") &&
                       strstr(gq_errmsg(), "--unsafe-no-sandbox"),
                   "the refusal names the call and errno and the way out: %s", gq_errmsg());
        TEST_SKIP("the namespace-mode checks: the kernel refuses namespaces here (%s)", gq_errmsg());
    }

    /* unsafe mode: limits and the process-group kill */
    TEST_BEGIN("unsafe");
    gq_sb_opts ou = o;
    ou.force_unsafe = 1;
    TEST_OK(gq_sb_open(&sb, &ou, 2), "open unsafe");
    if (sb) {
        TEST_CHECK(gq_sb_get_mode(sb) == GQ_SB_UNSAFE, "unsafe mode");
        hostile(sb, &ou, 0);
        gq_sb_close(sb);
    }
    return TEST_REPORT();
}
