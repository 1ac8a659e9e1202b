/*
 * gq/sandbox.h -- running untrusted programs (model-written code, `gq eval`)
 * in a separate process that can harm only itself.
 *
 * Modes (gq_sb_open picks the first that the kernel allows, or refuses):
 *
 *   GQ_SB_USERNS   clone(2) with CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID |
 *                  CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS. gq maps root of
 *                  the new user namespace to nobody (65534) when gq runs as
 *                  root, to gq's own user otherwise. Inside: every mount is
 *                  private and read-only (mount_setattr(2) AT_RECURSIVE, or a
 *                  remount of each mount of /proc/self/mountinfo on kernels
 *                  before 5.12), the working directory is a fresh size-capped
 *                  tmpfs (the only writable place), /proc is the new PID
 *                  namespace's (or an empty read-only tmpfs where the kernel
 *                  refuses a new proc mount, as in containers that mask parts
 *                  of /proc), there is no network (an empty network
 *                  namespace: lo down), and the program runs with no
 *                  capabilities (bounding set emptied, securebits NOROOT
 *                  locked, no_new_privs), so it cannot undo any of that.
 *   GQ_SB_ROOTNS   gq runs as root where user namespaces are refused: the same
 *                  namespaces without CLONE_NEWUSER; the program runs as
 *                  nobody:nogroup (65534) with no supplementary groups, an
 *                  empty capability bounding set and no_new_privs.
 *   GQ_SB_UNSAFE   no namespaces (gq eval --unsafe-no-sandbox): only the
 *                  limits below, a private directory, the process group
 *                  kill, and (as root) nobody:nogroup. The program can read
 *                  and (as gq's user, outside its directory) write what gq's
 *                  user can, reach the network, and a process of it that
 *                  calls setsid() escapes the group kill.
 *
 * In every mode the program gets: its own session and process group; stdin
 * /dev/null; stdout and stderr into one pipe of which the last out_cap bytes
 * are kept; no other inherited file descriptor; setrlimit RLIMIT_CPU (soft
 * cpu_s, then SIGKILL one second later), RLIMIT_AS (mem_bytes),
 * RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE 0; the parent
 * death signal SIGKILL. At wall_s of wall-clock time its whole process group
 * is killed, and so it is when its output passes fsize_bytes; in the
 * namespace modes the program runs under a small init (PID 1 of its PID
 * namespace), whose exit kills every process left in the namespace, however
 * it was detached.
 *
 * RLIMIT_NPROC counts processes per user: in GQ_SB_USERNS per user
 * namespace, i.e. per run; in the other modes per real user across every
 * process of that user (nobody, or gq's user), so the limit set there is
 * the user's process count at gq_sb_open plus nproc for each slot.
 *
 * The processes are started with a raw clone(2) (no atfork handlers: gq may
 * be running OpenMP, OpenBLAS or CUDA threads) and until execve(2) the child
 * makes system calls only. gq_sb_run may be called from several threads at
 * once, one call per slot at a time.
 */
#ifndef GQ_SANDBOX_H
#define GQ_SANDBOX_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { GQ_SB_USERNS = 0, GQ_SB_ROOTNS, GQ_SB_UNSAFE } gq_sb_mode;
/* "namespaces", "namespaces (root, no user namespace)", "unsafe (no namespaces)" */
const char *gq_sb_mode_name(gq_sb_mode m);

typedef struct {
    double wall_s;      /* wall-clock limit (10) */
    double cpu_s;       /* CPU time limit per process (10) */
    size_t mem_bytes;   /* address space per process (1 GiB; 0 = unlimited) */
    int nproc;          /* processes (threads) per run (64) */
    size_t fsize_bytes; /* largest file a process may write (16 MiB) */
    int nofile;         /* open files per process (64) */
    size_t tmpfs_bytes; /* size of the writable directory, namespace modes (64 MiB) */
    size_t out_cap;     /* bytes of output kept: the last ones (64 KiB) */
    int unsafe;         /* allow GQ_SB_UNSAFE (refuse otherwise when namespaces are refused) */
    int force_unsafe;   /* use GQ_SB_UNSAFE even where namespaces work */
    int no_setattr;     /* testing: make mounts read-only one by one, as on kernels without mount_setattr */
} gq_sb_opts;

void gq_sb_opts_default(gq_sb_opts *o);

typedef struct gq_sandbox gq_sandbox;

/* Probe the kernel (a full dry run of the namespace setup) and make the
 * temporary directory ($TMPDIR or /tmp, gq-sandbox-XXXXXX) with one
 * working directory per slot. Where the namespaces are refused and
 * o->unsafe is 0: GQ_ERR_UNSUPPORTED, the message naming the call that
 * failed and its errno (and a kernel setting that explains it, when one is
 * set); with o->unsafe: GQ_SB_UNSAFE, and gq_sb_refusal() says why. */
int gq_sb_open(gq_sandbox **out, const gq_sb_opts *o, int slots);
void gq_sb_close(gq_sandbox *sb); /* kills nothing (no run is active); removes the directory */
gq_sb_mode gq_sb_get_mode(const gq_sandbox *sb);
/* Why the namespace modes were not used ("" when one is in use). */
const char *gq_sb_refusal(const gq_sandbox *sb);
/* One line: mode and limits, for the settings and reports. */
const char *gq_sb_describe(const gq_sandbox *sb);
/* The working directory of a slot as the program sees it. */
const char *gq_sb_dir(const gq_sandbox *sb, int slot);

typedef struct {
    int exited; /* 1: exit_code is valid */
    int exit_code;
    int signal;      /* the signal that ended the program, 0 if none */
    int timed_out;   /* killed at the wall-clock limit */
    int out_limited; /* killed for writing more than fsize_bytes of output */
    int setup_errno; /* sandbox setup failed (errno); message in `out` */
    double wall_s;   /* start to end, setup included */
    double cpu_s;    /* user + system time of the program and the children it waited for */
    char *out;       /* the last out_cap bytes of stdout + stderr, NUL-terminated */
    size_t out_n;
    size_t out_total; /* bytes written in all */
} gq_sb_result;

/* Run argv (argv[0] an absolute path; NULL-terminated) in slot `slot`, its
 * working directory holding the file `name` with content[0..len). The
 * environment is PATH=/usr/bin:/bin, HOME and TMPDIR the working directory,
 * LANG=C.UTF-8. Returns GQ_OK with *r filled whatever the program did
 * (r->setup_errno says the sandbox failed); an error status only when gq
 * could not start it (pipe, clone, uid_map). */
int gq_sb_run(gq_sandbox *sb, int slot, const char *const *argv, const char *name, const char *content, size_t len,
              gq_sb_result *r);
void gq_sb_result_free(gq_sb_result *r);

#ifdef __cplusplus
}
#endif
#endif /* GQ_SANDBOX_H */
