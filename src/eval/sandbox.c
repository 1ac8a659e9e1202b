/* sandbox.c -- untrusted programs in namespaces with limits (gq/sandbox.h).
 *
 * Process tree of one run:
 *   gq (a worker thread)
 *    └─ B  raw clone(2), namespaces per mode; sets up the mounts and becomes
 *          the init (PID 1) of the new PID namespace; setsid()
 *        └─ C  raw clone(2): limits, descriptors, capabilities, execve(argv)
 * B reports to gq over a pipe: a setup failure (stage + errno), or C's wait
 * status and CPU time. gq waits for B with a deadline and kills B and its
 * process group at it; B's exit kills whatever is left in its PID namespace.
 *
 * B and C are copies of a possibly multithreaded gq made without fork()'s
 * atfork handlers (OpenBLAS frees its buffers in one), so until execve they
 * make system calls only: no malloc, no stdio, and no glibc set*id wrappers
 * (those signal every thread of the process, here threads that do not
 * exist); every string they need is made before the clone. */
#include "gq/sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gq/common.h"

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#define SB_MOUNT_ATTR_RDONLY 0x1ull
#define SB_MOUNT_ATTR_NOSUID 0x2ull
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

#define NOBODY 65534

struct sb_mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

/* ---- options ------------------------------------------------------------------------------- */

void gq_sb_opts_default(gq_sb_opts *o) {
    memset(o, 0, sizeof *o);
    o->wall_s = 10;
    o->cpu_s = 10;
    o->mem_bytes = (size_t)1 << 30;
    o->nproc = 64;
    o->fsize_bytes = (size_t)16 << 20;
    o->nofile = 64;
    o->tmpfs_bytes = (size_t)64 << 20;
    o->out_cap = (size_t)64 << 10;
}

const char *gq_sb_mode_name(gq_sb_mode m) {
    switch (m) {
    case GQ_SB_USERNS:
        return "namespaces";
    case GQ_SB_ROOTNS:
        return "namespaces (root, no user namespace)";
    default:
        return "unsafe (no namespaces)";
    }
}

struct gq_sandbox {
    gq_sb_opts o;
    gq_sb_mode mode;
    int slots;
    int root;         /* gq runs as root (euid 0) */
    int proc_hidden;  /* the namespace modes: a new proc mount was refused, /proc is an empty tmpfs */
    int ro_fallback;  /* mounts made read-only one by one */
    long nproc_limit; /* RLIMIT_NPROC given to the program */
    char *dir;        /* the temporary directory */
    char **slot_dir;  /* [slots] */
    char refusal[768];
    char desc[512];
};

gq_sb_mode gq_sb_get_mode(const gq_sandbox *sb) {
    return sb->mode;
}
const char *gq_sb_refusal(const gq_sandbox *sb) {
    return sb->refusal;
}
const char *gq_sb_describe(const gq_sandbox *sb) {
    return sb->desc;
}
const char *gq_sb_dir(const gq_sandbox *sb, int slot) {
    return sb->slot_dir[slot];
}

/* ---- the child processes ------------------------------------------------------------------------- */

enum {
    SS_OK = 0,
    SS_CLONE,
    SS_MAPS,
    SS_SYNC,
    SS_IDS,
    SS_PRIVATE,
    SS_SETATTR,
    SS_MOUNTINFO,
    SS_REMOUNT,
    SS_TMPFS,
    SS_WRITE,
    SS_PROC,
    SS_FORK,
    SS_STDIO,
    SS_CHDIR,
    SS_RLIMIT,
    SS_CAPS,
    SS_NOBODY,
    SS_NNP,
    SS_EXEC,
    SS_READY, /* dry run: everything up to execve worked */
    SS_DONE,  /* the program ran: status and CPU time follow */
};

static const char *stage_call(int st) {
    switch (st) {
    case SS_CLONE:
        return "clone";
    case SS_MAPS:
        return "writing /proc/PID/uid_map, gid_map";
    case SS_SYNC:
        return "waiting for the uid map";
    case SS_IDS:
        return "setresuid/setresgid(0) in the user namespace";
    case SS_PRIVATE:
        return "mount(/, MS_REC|MS_PRIVATE)";
    case SS_SETATTR:
        return "mount_setattr(/, AT_RECURSIVE, MOUNT_ATTR_RDONLY)";
    case SS_MOUNTINFO:
        return "reading /proc/self/mountinfo";
    case SS_REMOUNT:
        return "mount(MS_REMOUNT|MS_BIND|MS_RDONLY) of each mount";
    case SS_TMPFS:
        return "mount(tmpfs) on the working directory";
    case SS_WRITE:
        return "writing the program into the working directory";
    case SS_PROC:
        return "mount(proc or tmpfs) on /proc";
    case SS_FORK:
        return "clone of the program's process";
    case SS_STDIO:
        return "opening /dev/null, dup2 of the output pipe";
    case SS_CHDIR:
        return "chdir to the working directory";
    case SS_RLIMIT:
        return "setrlimit";
    case SS_CAPS:
        return "dropping capabilities (PR_CAPBSET_DROP, securebits, capset)";
    case SS_NOBODY:
        return "setgroups/setresgid/setresuid to nobody";
    case SS_NNP:
        return "prctl(PR_SET_NO_NEW_PRIVS)";
    case SS_EXEC:
        return "execve";
    default:
        return "?";
    }
}

typedef struct {
    int32_t stage, err, status, proc_hidden;
    int64_t cpu_us;
} report;

/* Everything the children need, made before the clone. */
typedef struct {
    gq_sb_mode mode;
    int root, dry, no_setattr;
    int sync_r, rep_w, out_w; /* B's ends */
    const char *dir;          /* working directory */
    const char *file;         /* dir/name */
    const char *content;
    size_t len;
    const char *tmpfs_opts;
    const char *const *argv;
    char *const *envp;
    struct rlimit lim_cpu, lim_as, lim_nproc, lim_fsize, lim_nofile;
} child_args;

static pid_t raw_clone(unsigned long flags) {
    /* fork() without atfork handlers; the child returns 0 on the same stack */
    return (pid_t)syscall(SYS_clone, flags, NULL, NULL, NULL, NULL);
}

static void child_exit(int code) {
    syscall(SYS_exit_group, code);
    for (;;) pause();
}

static void write_full(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        c += w;
        n -= (size_t)w;
    }
}

static void b_fail(const child_args *a, int stage) {
    report r = {.stage = stage, .err = errno};
    write_full(a->rep_w, &r, sizeof r);
    child_exit(1);
}

/* close every descriptor >= 3 except keep[0..n) (sorted, >= 3) */
static void close_others(const int *keep, int n) {
    unsigned lo = 3;
    for (int i = 0; i <= n; i++) {
        unsigned hi = i < n ? (unsigned)keep[i] : ~0u;
        if (hi > lo && syscall(SYS_close_range, lo, hi - 1, 0) != 0) {
            unsigned top = hi == ~0u ? 65536 : hi;
            for (unsigned f = lo; f < top; f++) close((int)f);
        }
        if (i < n) lo = (unsigned)keep[i] + 1;
    }
}

static void sort3(int *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            int t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
}

/* Read-only remount of every mount of /proc/self/mountinfo (kernels without mount_setattr). */
static char mountinfo_buf[1 << 20];

static int remount_all_ro(void) {
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return SS_MOUNTINFO;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, mountinfo_buf + n, sizeof mountinfo_buf - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            close(fd);
            return SS_MOUNTINFO;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n == sizeof mountinfo_buf - 1) {
            close(fd);
            errno = E2BIG;
            return SS_MOUNTINFO;
        }
    }
    close(fd);
    mountinfo_buf[n] = 0;
    for (char *line = mountinfo_buf; *line;) {
        char *eol = strchr(line, '\n');
        if (eol) *eol = 0;
        /* fields: id parent major:minor root mountpoint ... */
        char *p = line;
        for (int f = 0; f < 4 && p; f++) {
            p = strchr(p, ' ');
            if (p) p++;
        }
        if (p) {
            char *e = strchr(p, ' ');
            if (e) *e = 0;
            char *w = p; /* unescape \ooo in place */
            for (char *r = p; *r;) {
                if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' && r[3] >= '0' &&
                    r[3] <= '7') {
                    *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
                    r += 4;
                } else {
                    *w++ = *r++;
                }
            }
            *w = 0;
            struct statvfs sv;
            if (statvfs(p, &sv) == 0) {
                unsigned long fl = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID;
                if (sv.f_flag & ST_NODEV) fl |= MS_NODEV;
                if (sv.f_flag & ST_NOEXEC) fl |= MS_NOEXEC;
                if (sv.f_flag & ST_NOATIME) fl |= MS_NOATIME;
                if (sv.f_flag & ST_NODIRATIME) fl |= MS_NODIRATIME;
                if (sv.f_flag & ST_RELATIME) fl |= MS_RELATIME;
                if (mount(NULL, p, NULL, fl, NULL) != 0 && errno != ENOENT && errno != EACCES) return SS_REMOUNT;
            } else if (errno != ENOENT && errno != EACCES && errno != ENOTDIR) {
                return SS_REMOUNT;
            }
        }
        if (!eol) break;
        line = eol + 1;
    }
    return SS_OK;
}

static int set_ids(uid_t uid, gid_t gid, int drop_groups) {
    if (drop_groups && syscall(SYS_setgroups, 0, NULL) != 0) return -1;
    if (syscall(SYS_setresgid, gid, gid, gid) != 0) return -1;
    if (syscall(SYS_setresuid, uid, uid, uid) != 0) return -1;
    return 0;
}

static void c_fail(int errfd, int stage) {
    int32_t v[2] = {stage, errno};
    write_full(errfd, v, sizeof v);
    child_exit(127);
}

/* C: the program's process */
static void child_c(const child_args *a, int errfd) {
    int nul = open("/dev/null", O_RDONLY);
    if (nul < 0 || dup2(nul, 0) < 0 || dup2(a->out_w, 1) < 0 || dup2(a->out_w, 2) < 0) c_fail(errfd, SS_STDIO);
    int keep[1] = {errfd};
    close_others(keep, 1);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (chdir(a->dir) != 0) c_fail(errfd, SS_CHDIR);
    if (setrlimit(RLIMIT_CORE, &(struct rlimit){0, 0}) || setrlimit(RLIMIT_CPU, &a->lim_cpu) ||
        setrlimit(RLIMIT_AS, &a->lim_as) || setrlimit(RLIMIT_FSIZE, &a->lim_fsize) ||
        setrlimit(RLIMIT_NOFILE, &a->lim_nofile))
        c_fail(errfd, SS_RLIMIT);
    if (a->mode == GQ_SB_USERNS || a->root) /* no capability can be regained by an execve */
        for (int cap = 0; cap < 64; cap++)
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) c_fail(errfd, SS_CAPS);
    if (a->mode == GQ_SB_USERNS) {
        /* root of the user namespace: no capability survives execve, none can come back */
        if (prctl(PR_SET_SECUREBITS,
                  SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_NOROOT |
                      SECBIT_NOROOT_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
                  0, 0, 0) != 0)
            c_fail(errfd, SS_CAPS);
        struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
        struct __user_cap_data_struct d[2];
        memset(d, 0, sizeof d);
        if (syscall(SYS_capset, &h, d) != 0) c_fail(errfd, SS_CAPS);
    } else if (a->root) {
        if (set_ids(NOBODY, NOBODY, 1) != 0) c_fail(errfd, SS_NOBODY);
    }
    if (setrlimit(RLIMIT_NPROC, &a->lim_nproc)) c_fail(errfd, SS_RLIMIT);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) c_fail(errfd, SS_NNP);
    if (a->dry) child_exit(0);
    execve(a->argv[0], (char *const *)a->argv, a->envp);
    c_fail(errfd, SS_EXEC);
}

/* B: namespaces and mounts, then init of the PID namespace until C ends */
static void child_b(const child_args *a) {
    int keep[3] = {a->sync_r, a->rep_w, a->out_w}, nk = a->sync_r >= 0 ? 3 : 2;
    if (a->sync_r < 0) keep[0] = keep[2];
    sort3(keep, nk);
    close_others(keep, nk);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (a->mode == GQ_SB_USERNS) {
        char c;
        ssize_t r;
        do r = read(a->sync_r, &c, 1);
        while (r < 0 && errno == EINTR);
        if (r != 1) {
            errno = r == 0 ? EPIPE : errno;
            b_fail(a, SS_SYNC);
        }
        close(a->sync_r);
        if (set_ids(0, 0, a->root) != 0) b_fail(a, SS_IDS);
    }
    setsid();
    int32_t proc_hidden = 0;
    if (a->mode != GQ_SB_UNSAFE) {
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) b_fail(a, SS_PRIVATE);
        struct sb_mount_attr at = {.attr_set = SB_MOUNT_ATTR_RDONLY | SB_MOUNT_ATTR_NOSUID};
        if (a->no_setattr || syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &at, sizeof at) != 0) {
            if (!a->no_setattr && errno != ENOSYS) b_fail(a, SS_SETATTR);
            int st = remount_all_ro();
            if (st) b_fail(a, st);
        }
        if (mount("tmpfs", a->dir, "tmpfs", MS_NOSUID | MS_NODEV, a->tmpfs_opts) != 0) b_fail(a, SS_TMPFS);
        if (!a->dry) {
            int fd = open(a->file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd < 0) b_fail(a, SS_WRITE);
            const char *p = a->content;
            size_t n = a->len;
            while (n) {
                ssize_t w = write(fd, p, n);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) b_fail(a, SS_WRITE);
                p += w;
                n -= (size_t)w;
            }
            close(fd);
        }
        if (mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) {
            /* a container that masks parts of /proc: hide it rather than keep the host's */
            if (mount("tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555") !=
                0)
                b_fail(a, SS_PROC);
            proc_hidden = 1;
        }
    }
    int errp[2];
    if (pipe2(errp, O_CLOEXEC) != 0) b_fail(a, SS_FORK);
    pid_t c = raw_clone(SIGCHLD);
    if (c < 0) b_fail(a, SS_FORK);
    if (c == 0) child_c(a, errp[1]);
    close(errp[1]);
    int32_t ce[2];
    ssize_t got;
    do got = read(errp[0], ce, sizeof ce);
    while (got < 0 && errno == EINTR);
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    for (;;) { /* init: reap everything, until C ends */
        int st;
        struct rusage r1;
        pid_t w = wait4(-1, &st, 0, &r1);
        if (w == c) {
            status = st;
            ru = r1;
            break;
        }
        if (w < 0 && errno != EINTR) break;
    }
    if (got == (ssize_t)sizeof ce) {
        errno = ce[1];
        b_fail(a, ce[0]);
    }
    report rep = {.stage = a->dry ? SS_READY : SS_DONE, .status = status, .proc_hidden = proc_hidden};
    rep.cpu_us = (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec + (int64_t)ru.ru_stime.tv_sec * 1000000 +
                 ru.ru_stime.tv_usec;
    write_full(a->rep_w, &rep, sizeof rep);
    child_exit(0);
}

/* ---- the parent ------------------------------------------------------------------------------------ */

static int write_proc_file(pid_t pid, const char *name, const char *text) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t w = write(fd, text, strlen(text));
    int e = errno;
    close(fd);
    errno = e;
    return w == (ssize_t)strlen(text) ? 0 : -1;
}

static void ring_add(gq_sb_result *r, size_t cap, const char *p, size_t n) {
    r->out_total += n;
    if (n >= cap) {
        memcpy(r->out, p + n - cap, cap);
        r->out_n = cap;
    } else {
        if (r->out_n + n > cap) {
            size_t drop = r->out_n + n - cap;
            memmove(r->out, r->out + drop, r->out_n - drop);
            r->out_n -= drop;
        }
        memcpy(r->out + r->out_n, p, n);
        r->out_n += n;
    }
    r->out[r->out_n] = 0;
}

static void drain(int fd, gq_sb_result *r, size_t cap) {
    char buf[16384];
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (r) ring_add(r, cap, buf, (size_t)n);
    }
}

static const char *errno_name(int e) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    const char *s = strerrorname_np(e);
    if (s) return s;
#endif
    (void)e;
    return "errno";
}

/* empty a directory (unsafe mode: what the last program left), chmod first in case it took rights away */
static void empty_dir(const char *path) {
    chmod(path, 0700);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *c = gq_path_join(path, e->d_name);
        struct stat st;
        if (lstat(c, &st) == 0 && S_ISDIR(st.st_mode)) {
            empty_dir(c);
            rmdir(c);
        } else {
            unlink(c);
        }
        free(c);
    }
    closedir(d);
}

static struct rlimit lim(double v) {
    struct rlimit l = {RLIM_INFINITY, RLIM_INFINITY};
    if (v > 0) l.rlim_cur = l.rlim_max = (rlim_t)v;
    return l;
}

/* One run; dry: the whole setup without execve (the probe). Returns GQ_OK, or an error status
 * (message set) when the run could not be started. */
static int run(gq_sandbox *sb, gq_sb_mode mode, int slot, const char *const *argv, const char *name,
               const char *content, size_t len, int dry, gq_sb_result *r) {
    memset(r, 0, sizeof *r);
    size_t cap = sb->o.out_cap ? sb->o.out_cap : 1;
    r->out = gq_malloc(cap + 1);
    r->out[0] = 0;
    const char *dir = sb->slot_dir[slot];
    char *file = gq_path_join(dir, name ? name : "prog");
    char tmpfs_opts[128], home[PATH_MAX + 8], tmpdir[PATH_MAX + 8];
    if (mode == GQ_SB_ROOTNS)
        snprintf(tmpfs_opts, sizeof tmpfs_opts, "size=%zu,nr_inodes=4096,mode=0755,uid=%d,gid=%d", sb->o.tmpfs_bytes,
                 NOBODY, NOBODY);
    else
        snprintf(tmpfs_opts, sizeof tmpfs_opts, "size=%zu,nr_inodes=4096,mode=0755", sb->o.tmpfs_bytes);
    snprintf(home, sizeof home, "HOME=%s", dir);
    snprintf(tmpdir, sizeof tmpdir, "TMPDIR=%s", dir);
    char *envp[] = {"PATH=/usr/bin:/bin", home, tmpdir, "LANG=C.UTF-8", NULL};
    if (mode == GQ_SB_UNSAFE && !dry) {
        empty_dir(dir);
        chmod(dir, 0755);
        if (sb->root && chown(dir, NOBODY, NOBODY) != 0) {
            free(file);
            return gq_err(GQ_ERR_IO, "%s: chown to nobody: %s", dir, strerror(errno));
        }
        int rc = gq_write_file_atomic(file, content, len);
        if (rc) {
            free(file);
            return rc;
        }
        chmod(file, 0644);
    }
    int sync[2] = {-1, -1}, rep[2] = {-1, -1}, outp[2] = {-1, -1};
    if ((mode == GQ_SB_USERNS && pipe2(sync, O_CLOEXEC) != 0) || pipe2(rep, O_CLOEXEC) != 0 ||
        pipe2(outp, O_CLOEXEC) != 0) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            if (sync[i] >= 0) close(sync[i]);
            if (rep[i] >= 0) close(rep[i]);
            if (outp[i] >= 0) close(outp[i]);
        }
        free(file);
        return gq_err(GQ_ERR_IO, "sandbox: pipe: %s", strerror(e));
    }
    double cpu = sb->o.cpu_s > 0 ? sb->o.cpu_s : 0;
    child_args a = {.mode = mode,
                    .root = sb->root,
                    .dry = dry,
                    .no_setattr = sb->o.no_setattr,
                    .sync_r = sync[0],
                    .rep_w = rep[1],
                    .out_w = outp[1],
                    .dir = dir,
                    .file = file,
                    .content = content,
                    .len = len,
                    .tmpfs_opts = tmpfs_opts,
                    .argv = argv,
                    .envp = envp,
                    .lim_as = lim((double)sb->o.mem_bytes),
                    .lim_nproc = lim((double)sb->nproc_limit),
                    .lim_fsize = lim((double)sb->o.fsize_bytes),
                    .lim_nofile = lim((double)sb->o.nofile)};
    a.lim_cpu = lim(cpu > 0 ? ceil(cpu) : 0);
    if (cpu > 0) a.lim_cpu.rlim_max = a.lim_cpu.rlim_cur + 1;
    unsigned long flags = SIGCHLD;
    if (mode != GQ_SB_UNSAFE) flags |= CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
    if (mode == GQ_SB_USERNS) flags |= CLONE_NEWUSER;
    double t0 = gq_now();
    pid_t pid = raw_clone(flags);
    if (pid == 0) child_b(&a);
    int clone_errno = errno;
    if (sync[0] >= 0) close(sync[0]);
    close(rep[1]);
    close(outp[1]);
    if (pid < 0) {
        if (sync[1] >= 0) close(sync[1]);
        close(rep[0]);
        close(outp[0]);
        free(file);
        r->setup_errno = clone_errno;
        snprintf(r->out, cap + 1, "clone: %s", strerror(clone_errno));
        r->out_n = strlen(r->out);
        errno = clone_errno;
        return SS_CLONE; /* reported by the caller */
    }
    int rc = GQ_OK, map_failed = 0;
    if (mode == GQ_SB_USERNS) {
        char m[64];
        uid_t uid = sb->root ? NOBODY : geteuid();
        gid_t gid = sb->root ? NOBODY : getegid();
        int ok = 1;
        if (!sb->root) ok = write_proc_file(pid, "setgroups", "deny") == 0;
        snprintf(m, sizeof m, "0 %u 1\n", (unsigned)uid);
        if (ok) ok = write_proc_file(pid, "uid_map", m) == 0;
        snprintf(m, sizeof m, "0 %u 1\n", (unsigned)gid);
        if (ok) ok = write_proc_file(pid, "gid_map", m) == 0;
        if (!ok) {
            map_failed = errno;
            kill(pid, SIGKILL);
        } else {
            write_full(sync[1], "x", 1);
        }
        close(sync[1]);
    }
    free(file);
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    report rp;
    size_t rp_n = 0;
    char buf[16384];
    double deadline = t0 + (sb->o.wall_s > 0 ? sb->o.wall_s : 1e9);
    int out_open = 1, rep_open = 1, exited = 0;
    while (!exited) {
        struct pollfd p[3];
        int np = 0, i_out = -1, i_rep = -1, i_pid = -1;
        if (out_open) p[i_out = np++] = (struct pollfd){.fd = outp[0], .events = POLLIN};
        if (rep_open) p[i_rep = np++] = (struct pollfd){.fd = rep[0], .events = POLLIN};
        if (pfd >= 0) p[i_pid = np++] = (struct pollfd){.fd = pfd, .events = POLLIN};
        double left = deadline - gq_now();
        int ms = left <= 0 ? 0 : left > 3600 ? 3600000 : (int)(left * 1000) + 1;
        if (pfd < 0 && ms > 10) ms = 10;
        int n = poll(p, (nfds_t)np, ms);
        if (n < 0 && errno != EINTR) break;
        if (n > 0 && i_out >= 0 && (p[i_out].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t k = read(outp[0], buf, sizeof buf);
            if (k > 0)
                ring_add(r, cap, buf, (size_t)k);
            else if (k == 0 || errno != EINTR)
                out_open = 0;
            if (sb->o.fsize_bytes && r->out_total > sb->o.fsize_bytes && !r->out_limited) {
                /* output counts as a file: past the file size limit the run ends */
                r->out_limited = 1;
                kill(pid, SIGKILL);
                kill(-pid, SIGKILL);
            }
        }
        if (n > 0 && i_rep >= 0 && (p[i_rep].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t k = read(rep[0], (char *)&rp + rp_n, rp_n < sizeof rp ? sizeof rp - rp_n : 0);
            if (k > 0)
                rp_n += (size_t)k;
            else if (k == 0 || errno != EINTR)
                rep_open = 0;
        }
        if (n > 0 && i_pid >= 0 && (p[i_pid].revents & POLLIN)) exited = 1;
        if (pfd < 0) {
            siginfo_t si;
            si.si_pid = 0;
            if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid) exited = 1;
        }
        if (!exited && gq_now() >= deadline) {
            r->timed_out = 1;
            kill(pid, SIGKILL);
            kill(-pid, SIGKILL);
            break;
        }
    }
    siginfo_t si;
    while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
    }
    kill(-pid, SIGKILL); /* what is left of its process group (unsafe mode) */
    int bst = 0;
    while (waitpid(pid, &bst, 0) < 0 && errno == EINTR) {
    }
    r->wall_s = gq_now() - t0;
    if (pfd >= 0) close(pfd);
    /* the report (written before B exited) and the output left in the pipes */
    fcntl(rep[0], F_SETFL, fcntl(rep[0], F_GETFL) | O_NONBLOCK);
    while (rp_n < sizeof rp) {
        ssize_t k = read(rep[0], (char *)&rp + rp_n, sizeof rp - rp_n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        rp_n += (size_t)k;
    }
    close(rep[0]);
    drain(outp[0], r, cap);
    close(outp[0]);
    if (map_failed) {
        r->setup_errno = map_failed;
        errno = map_failed;
        return SS_MAPS;
    }
    if (rp_n == sizeof rp && rp.stage == SS_DONE) {
        if (WIFEXITED(rp.status)) {
            r->exited = 1;
            r->exit_code = WEXITSTATUS(rp.status);
        } else if (WIFSIGNALED(rp.status)) {
            r->signal = WTERMSIG(rp.status);
        }
        r->cpu_s = (double)rp.cpu_us * 1e-6;
    } else if (rp_n == sizeof rp && rp.stage == SS_READY) {
        sb->proc_hidden = rp.proc_hidden;
    } else if (rp_n == sizeof rp) {
        r->setup_errno = rp.err ? rp.err : EIO;
        char msg[256];
        snprintf(msg, sizeof msg, "sandbox setup failed: %s: %s (%s)", stage_call(rp.stage), strerror(rp.err),
                 errno_name(rp.err));
        r->out_n = 0;
        ring_add(r, cap, msg, strlen(msg));
        errno = rp.err;
        return rp.stage;
    } else if (!r->timed_out) {
        /* B died without a report: killed from inside (unsafe mode: kill(getppid())) */
        r->signal = WIFSIGNALED(bst) ? WTERMSIG(bst) : SIGKILL;
    }
    return rc;
}

/* the stage of a failed run, or SS_OK; the program's own result does not count */
static int probe(gq_sandbox *sb, gq_sb_mode mode, char *why, size_t cap) {
    static const char *const argv[] = {"/bin/true", NULL};
    gq_sb_result r;
    int st = run(sb, mode, 0, argv, "probe", "", 0, 1, &r);
    int e = errno;
    if (st == SS_OK && r.timed_out) {
        st = SS_SYNC;
        e = ETIMEDOUT;
    }
    if (st != SS_OK) {
        if (st == SS_CLONE)
            snprintf(why, cap, "clone(%sCLONE_NEWNS|CLONE_NEWPID|CLONE_NEWNET|CLONE_NEWIPC|CLONE_NEWUTS): %s (%s)",
                     mode == GQ_SB_USERNS ? "CLONE_NEWUSER|" : "", strerror(e), errno_name(e));
        else if (st < SS_READY)
            snprintf(why, cap, "%s: %s (%s)", stage_call(st), strerror(e), errno_name(e));
        else
            snprintf(why, cap, "%s", r.out);
    }
    gq_sb_result_free(&r);
    return st;
}

static long read_long_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    if (fscanf(f, "%ld", &v) != 1) v = -1;
    fclose(f);
    return v;
}

/* tasks (threads) of real user uid, from /proc */
static long count_tasks(uid_t uid) {
    DIR *d = opendir("/proc");
    if (!d) return 0;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[300], line[256];
        snprintf(path, sizeof path, "/proc/%s/status", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        long u = -1, th = 1;
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "Uid:", 4)) u = strtol(line + 4, NULL, 10);
            if (!strncmp(line, "Threads:", 8)) th = strtol(line + 8, NULL, 10);
        }
        fclose(f);
        if (u == (long)uid) n += th;
    }
    closedir(d);
    return n;
}

static void describe(gq_sandbox *sb) {
    char mem[32], fs[32], tfs[32];
    if (sb->o.mem_bytes)
        gq_fmt_bytes(mem, sizeof mem, (double)sb->o.mem_bytes);
    else
        snprintf(mem, sizeof mem, "unlimited");
    gq_fmt_bytes(fs, sizeof fs, (double)sb->o.fsize_bytes);
    gq_fmt_bytes(tfs, sizeof tfs, (double)sb->o.tmpfs_bytes);
    char what[256];
    if (sb->mode == GQ_SB_UNSAFE)
        snprintf(what, sizeof what, "unsafe: no namespaces, a private directory%s", sb->root ? ", runs as nobody" : "");
    else
        snprintf(what, sizeof what,
                 "namespaces (%smount, pid, net, ipc, uts): / read-only, %s tmpfs working directory, %s%s",
                 sb->mode == GQ_SB_USERNS ? "user, " : "", tfs,
                 sb->proc_hidden ? "/proc hidden (a new proc mount was refused)" : "own /proc",
                 sb->mode == GQ_SB_USERNS ? ", no capabilities" : ", runs as nobody");
    snprintf(sb->desc, sizeof sb->desc,
             "%s%s; limits: wall %g s, CPU %g s, memory %s, %ld processes%s, files %s, %d descriptors", what,
             sb->ro_fallback ? " (read-only mount by mount)" : "", sb->o.wall_s, sb->o.cpu_s, mem, sb->nproc_limit,
             sb->mode == GQ_SB_USERNS ? "" : " (shared by the user's processes)", fs, sb->o.nofile);
}

int gq_sb_open(gq_sandbox **out, const gq_sb_opts *o, int slots) {
    *out = NULL;
    if (slots < 1) return gq_err(GQ_ERR_ARG, "sandbox: %d slots", slots);
    gq_sandbox *sb = gq_calloc(1, sizeof *sb);
    sb->o = *o;
    sb->slots = slots;
    sb->root = geteuid() == 0;
    sb->ro_fallback = o->no_setattr;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    char *tmpl = gq_path_join(tmp, "gq-sandbox-XXXXXX");
    if (!mkdtemp(tmpl)) {
        int rc = gq_err(GQ_ERR_IO, "%s: cannot create the sandbox directory: %s", tmpl, strerror(errno));
        free(tmpl);
        free(sb);
        return rc;
    }
    sb->dir = tmpl;
    sb->slot_dir = gq_calloc((size_t)slots, sizeof *sb->slot_dir);
    for (int i = 0; i < slots; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "w%d", i);
        sb->slot_dir[i] = gq_path_join(sb->dir, nm);
        if (mkdir(sb->slot_dir[i], 0755) != 0) {
            int rc = gq_err(GQ_ERR_IO, "%s: %s", sb->slot_dir[i], strerror(errno));
            gq_sb_close(sb);
            return rc;
        }
    }
    /* searchable (the namespace modes drop to another uid before the mounts), not writable: a program's
     * "../x" fails even in unsafe mode as gq's own user (unless it chmods the directory back) */
    chmod(sb->dir, 0511);
    sb->nproc_limit = o->nproc;
    gq_sb_mode mode = GQ_SB_UNSAFE;
    char why_u[384] = "", why_r[384] = "";
    if (!o->force_unsafe) {
        if (probe(sb, GQ_SB_USERNS, why_u, sizeof why_u) == SS_OK)
            mode = GQ_SB_USERNS;
        else if (sb->root && probe(sb, GQ_SB_ROOTNS, why_r, sizeof why_r) == SS_OK)
            mode = GQ_SB_ROOTNS;
        if (mode == GQ_SB_UNSAFE) {
            size_t k = (size_t)snprintf(sb->refusal, sizeof sb->refusal, "the kernel refused the namespaces: %s%s%s",
                                        why_u, why_r[0] ? "; as root without a user namespace: " : "", why_r);
            long v;
            const char *hint = NULL;
            char hb[128];
            if ((v = read_long_file("/proc/sys/kernel/unprivileged_userns_clone")) == 0)
                hint = "kernel.unprivileged_userns_clone = 0";
            else if ((v = read_long_file("/proc/sys/user/max_user_namespaces")) == 0)
                hint = "user.max_user_namespaces = 0";
            else if ((v = read_long_file("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")) == 1)
                hint = "kernel.apparmor_restrict_unprivileged_userns = 1";
            if (hint && k < sizeof sb->refusal) {
                snprintf(hb, sizeof hb, " (%s)", hint);
                snprintf(sb->refusal + k, sizeof sb->refusal - k, "%s", hb);
            }
        }
    } else {
        snprintf(sb->refusal, sizeof sb->refusal, "unsafe mode was asked for");
    }
    if (mode == GQ_SB_UNSAFE && !o->unsafe && !o->force_unsafe) {
        int rc = gq_err(GQ_ERR_UNSUPPORTED,
                        "%s; gq will not run untrusted code without a sandbox (--unsafe-no-sandbox runs it with "
                        "limits only)",
                        sb->refusal);
        gq_sb_close(sb);
        return rc;
    }
    sb->mode = mode;
    if (mode != GQ_SB_USERNS) /* the count is per user, across every process of it */
        sb->nproc_limit = count_tasks(sb->root ? (uid_t)NOBODY : getuid()) + (long)o->nproc * slots;
    describe(sb);
    *out = sb;
    return GQ_OK;
}

void gq_sb_close(gq_sandbox *sb) {
    if (!sb) return;
    if (sb->dir) { /* best effort, and the error being reported (if any) stays */
        int code = gq_errcode();
        char *msg = gq_strdup(gq_errmsg());
        chmod(sb->dir, 0700);
        for (int i = 0; i < sb->slots; i++)
            if (sb->slot_dir[i]) empty_dir(sb->slot_dir[i]);
        if (gq_rmtree(sb->dir) != GQ_OK) gq_warn("%s", gq_errmsg());
        gq_err_clear();
        if (code) gq_err(code, "%s", msg);
        free(msg);
    }
    for (int i = 0; i < sb->slots; i++) free(sb->slot_dir ? sb->slot_dir[i] : NULL);
    free(sb->slot_dir);
    free(sb->dir);
    free(sb);
}

int gq_sb_run(gq_sandbox *sb, int slot, const char *const *argv, const char *name, const char *content, size_t len,
              gq_sb_result *r) {
    memset(r, 0, sizeof *r);
    if (slot < 0 || slot >= sb->slots) return gq_err(GQ_ERR_ARG, "sandbox: slot %d of %d", slot, sb->slots);
    int st = run(sb, sb->mode, slot, argv, name, content, len, 0, r);
    if (st == SS_CLONE || st == SS_MAPS) {
        int e = errno;
        return gq_err(GQ_ERR_IO, "sandbox: %s: %s", stage_call(st), strerror(e));
    }
    if (st < 0) return st; /* gq_err already set */
    return GQ_OK;
}

void gq_sb_result_free(gq_sb_result *r) {
    if (!r) return;
    free(r->out);
    r->out = NULL;
    r->out_n = 0;
}
