/* outdir.c -- owning an output directory for the length of a run (gq/outdir.h). */
#include "gq/outdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gq/common.h"

/* ---- paths ------------------------------------------------------------------ */

static char *strip_slashes(const char *p) {
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') n--;
    char *s = gq_malloc(n + 1);
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

static char *with_suffix(const char *base, const char *fmt, long v) {
    size_t n = strlen(base) + 48;
    char *s = gq_malloc(n);
    int k = snprintf(s, n, "%s", base);
    snprintf(s + k, n - (size_t)k, fmt, v);
    return s;
}

/* Append the components of `rest` to the canonical `base`, "." and ".." lexically. */
static char *append_lexical(const char *base, const char *rest) {
    size_t cap = strlen(base) + strlen(rest) + 2;
    char *out = gq_malloc(cap);
    snprintf(out, cap, "%s", base);
    const char *p = rest;
    while (*p) {
        while (*p == '/') p++;
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0) break;
        if (len == 1 && p[0] == '.') {
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            char *slash = strrchr(out, '/');
            if (slash && slash != out) *slash = 0;
            else strcpy(out, "/");
        } else {
            size_t n = strlen(out);
            snprintf(out + n, cap - n, "%s%.*s", n > 1 ? "/" : "", (int)len, p);
        }
        p += len;
    }
    return out;
}

char *gq_path_resolve(const char *path) {
    char *abs;
    if (path[0] == '/') {
        abs = gq_strdup(path);
    } else {
        char cwd[4096];
        if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, "/");
        abs = gq_path_join(cwd, path);
    }
    /* the longest prefix that exists, canonicalised by realpath */
    size_t n = strlen(abs);
    char *res = NULL;
    for (;;) {
        char save = abs[n];
        abs[n] = 0;
        char *r = realpath(n ? abs : "/", NULL);
        abs[n] = save;
        if (r) {
            res = append_lexical(r, abs + n);
            free(r);
            break;
        }
        while (n > 0 && abs[n - 1] != '/') n--; /* drop the last component */
        while (n > 1 && abs[n - 1] == '/') n--;
        if (n <= 1) {
            res = append_lexical("/", abs);
            break;
        }
    }
    free(abs);
    return res;
}

int gq_path_within(const char *a, const char *b) {
    size_t nb = strlen(b);
    if (nb == 1 && b[0] == '/') return 1;
    return strncmp(a, b, nb) == 0 && (a[nb] == 0 || a[nb] == '/');
}

void gq_outdir_init(gq_outdir *d, const char *out) {
    memset(d, 0, sizeof *d);
    d->out = strip_slashes(out);
    d->lock = with_suffix(d->out, ".lock", 0);
    d->partial = with_suffix(d->out, ".partial", 0);
    d->tmp = with_suffix(d->out, ".tmp.%ld", (long)getpid());
}

/* ---- path checks ------------------------------------------------------------ */

/* An existing OUT that --force may replace: a directory gq (or AutoGPTQ) wrote, or an empty one. */
static int replaceable(const char *dir, const char **why) {
    struct stat st;
    if (lstat(dir, &st) != 0) return 1;
    if (!S_ISDIR(st.st_mode)) {
        *why = S_ISLNK(st.st_mode) ? "a symbolic link" : "not a directory";
        return 0;
    }
    static const char *const marks[] = {"gq_report.json", "quantize_config.json"};
    for (int i = 0; i < 2; i++) {
        char *p = gq_path_join(dir, marks[i]);
        int ok = gq_path_exists(p);
        free(p);
        if (ok) return 1;
    }
    DIR *dh = opendir(dir);
    int empty = 1;
    struct dirent *e;
    while (dh && (e = readdir(dh)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    if (dh) closedir(dh);
    *why = "a directory that is neither empty nor a quantized checkpoint (no gq_report.json or quantize_config.json)";
    return empty;
}

int gq_outdir_check_inputs(const gq_outdir *d, const char *const *inputs, int n_inputs) {
    const char *mine[3] = {d->out, d->partial, d->lock};
    int rc = GQ_OK;
    for (int k = 0; k < 3 && !rc; k++) {
        char *o = gq_path_resolve(mine[k]);
        for (int i = 0; i < n_inputs && !rc; i++) {
            if (!inputs[i]) continue;
            char *in = gq_path_resolve(inputs[i]);
            if (gq_path_within(o, in) || gq_path_within(in, o))
                rc = gq_err(GQ_ERR_ARG,
                            "--out %s: %s (%s) %s the input %s (%s); gq never writes into or replaces its inputs: "
                            "choose an --out outside it",
                            d->out, mine[k], o,
                            !strcmp(o, in)          ? "is"
                            : gq_path_within(o, in) ? "lies inside"
                                                    : "contains",
                            inputs[i], in);
            free(in);
        }
        free(o);
    }
    return rc;
}

int gq_outdir_check_existing(gq_outdir *d, int force) {
    struct stat st;
    d->out_existed = 0;
    if (lstat(d->out, &st) != 0) return GQ_OK;
    if (!force) return gq_err(GQ_ERR_EXISTS, "%s: output already exists (use --force to replace it)", d->out);
    const char *why = NULL;
    if (!replaceable(d->out, &why))
        return gq_err(GQ_ERR_EXISTS,
                      "%s: --force replaces only a checkpoint gq wrote or an empty directory; this is %s. "
                      "Move it away or choose another --out",
                      d->out, why);
    d->out_existed = 1;
    d->out_dev = st.st_dev;
    d->out_ino = st.st_ino;
    return GQ_OK;
}

/* ---- the lock ---------------------------------------------------------------- */

/* A small file's text, or NULL; records no error (callers may be reporting another one). */
static char *read_small(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *buf = gq_malloc(4097);
    size_t n = fread(buf, 1, 4096, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    return buf;
}

typedef struct {
    long pid;
    long long start; /* the process's start time in clock ticks after boot (/proc/PID/stat field 22) */
    char host[256];
    char when[64];
} lock_info;

static long long proc_start(long pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p) return 0;
    long long v = 0;
    /* fields after ')': state is field 3; starttime is field 22 */
    for (int field = 3; field <= 22 && p; field++) {
        p = strchr(p + 1, ' ');
        if (p && field == 22) v = strtoll(p + 1, NULL, 10);
    }
    return v;
}

static void this_host(char *buf, size_t cap) {
    if (gethostname(buf, cap) != 0) snprintf(buf, cap, "unknown");
    buf[cap - 1] = 0;
}

static int parse_lock(const char *text, lock_info *li) {
    memset(li, 0, sizeof *li);
    const char *p = text;
    while (p && *p) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (!strncmp(p, "pid ", 4)) li->pid = strtol(p + 4, NULL, 10);
        else if (!strncmp(p, "start ", 6)) li->start = strtoll(p + 6, NULL, 10);
        else if (!strncmp(p, "host ", 5)) snprintf(li->host, sizeof li->host, "%.*s", (int)(len - 5), p + 5);
        else if (!strncmp(p, "since ", 6)) snprintf(li->when, sizeof li->when, "%.*s", (int)(len - 6), p + 6);
        p = e ? e + 1 : NULL;
    }
    return li->pid > 0 && li->host[0] ? GQ_OK : GQ_ERR_FORMAT;
}

static int alive(const lock_info *li) {
    if (kill((pid_t)li->pid, 0) != 0 && errno == ESRCH) return 0;
    long long s = proc_start(li->pid);
    return !(li->start && s && s != li->start); /* a reused pid is another process */
}

static char *lock_text(void) {
    char host[256], when[64];
    this_host(host, sizeof host);
    time_t t = time(NULL);
    struct tm tm;
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    long pid = (long)getpid();
    size_t cap = 512;
    char *s = gq_malloc(cap);
    snprintf(s, cap, "gq quantize output lock\npid %ld\nstart %lld\nhost %s\nsince %s\n", pid, proc_start(pid), host,
             when);
    return s;
}

/* Create OUT.lock holding `text`, complete at the moment it appears (link of a
 * private file); EEXIST when another lock is there. */
static int create_lock(const gq_outdir *d, const char *text) {
    char *priv = with_suffix(d->lock, ".%ld.new", (long)getpid());
    int fd = open(priv, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(priv);
        errno = e;
        return -1;
    }
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n;
    ok = close(fd) == 0 && ok;
    int r = ok ? link(priv, d->lock) : -1;
    int e = ok ? errno : EIO;
    if (r != 0 && e != EEXIST && e != EIO) { /* file systems without hard links */
        fd = open(d->lock, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0) {
            r = write(fd, text, n) == (ssize_t)n ? 0 : -1;
            e = errno;
            close(fd);
        } else {
            e = errno;
        }
    }
    unlink(priv);
    free(priv);
    errno = e;
    return r;
}

/* The lock at OUT.lock is stale (judged from `seen`): move it aside if it still holds `seen`. */
static int take_over(const gq_outdir *d, const char *seen) {
    char *aside = with_suffix(d->lock, ".stale.%ld", (long)getpid());
    int rc = GQ_OK;
    if (rename(d->lock, aside) != 0) {
        if (errno != ENOENT) rc = gq_err(GQ_ERR_IO, "%s: cannot move the stale lock aside: %s", d->lock, strerror(errno));
    } else {
        char *now = read_small(aside);
        int same = now && !strcmp(now, seen);
        if (!same) { /* it changed under us: put it back unless a newer one is there */
            if (link(aside, d->lock) != 0) (void)0;
            rc = gq_err(GQ_ERR_EXISTS, "%s: the lock changed while it was being checked; another run is starting on %s",
                        d->lock, d->out);
        }
        unlink(aside);
        free(now);
    }
    free(aside);
    return rc;
}

/* OUT.lock exists: refuse, or (stale and take_stale) move it aside so the caller retries. */
static int judge_lock(const gq_outdir *d, int take_stale) {
    char *seen = read_small(d->lock);
    if (!seen) return GQ_OK; /* vanished: retry */
    lock_info li;
    char host[256];
    this_host(host, sizeof host);
    int rc;
    if (parse_lock(seen, &li) != GQ_OK) {
        rc = gq_err(GQ_ERR_EXISTS, "%s: a lock file gq cannot read (expected pid and host lines); if no gq run uses "
                                   "%s, remove %s",
                    d->lock, d->out, d->lock);
    } else if (strcmp(li.host, host) != 0) {
        rc = gq_err(GQ_ERR_EXISTS, "%s: %s is in use by gq pid %ld on host %s (since %s), which cannot be checked from "
                                   "%s; if no run there uses it, remove %s",
                    d->lock, d->out, li.pid, li.host, li.when, host, d->lock);
    } else if (alive(&li)) {
        rc = gq_err(GQ_ERR_EXISTS, "%s: %s is in use by another gq run (pid %ld, since %s); wait for it to end",
                    d->lock, d->out, li.pid, li.when);
    } else if (!take_stale) {
        rc = gq_err(GQ_ERR_EXISTS, "%s: left by a gq run (pid %ld, since %s) that is no longer running; --resume "
                                   "continues its work, --force discards it",
                    d->lock, li.pid, li.when);
    } else {
        gq_warn("%s: stale lock of gq pid %ld (since %s), which is no longer running: taking it over", d->lock, li.pid,
                li.when);
        rc = take_over(d, seen);
    }
    free(seen);
    return rc;
}

int gq_outdir_lock(gq_outdir *d, int take_stale) {
    char *text = lock_text();
    int rc = GQ_OK;
    for (int attempt = 0; attempt < 8; attempt++) {
        if (create_lock(d, text) == 0) {
            d->locked = 1;
            break;
        }
        if (errno != EEXIST) {
            rc = gq_err(GQ_ERR_IO, "%s: cannot create the lock file: %s", d->lock, strerror(errno));
            break;
        }
        if ((rc = judge_lock(d, take_stale))) break;
    }
    if (!rc && !d->locked) rc = gq_err(GQ_ERR_EXISTS, "%s: could not take the lock (other runs keep starting)", d->lock);
    free(text);
    return rc;
}

static void unlock(gq_outdir *d) {
    if (!d->locked) return;
    char *now = read_small(d->lock);
    lock_info li;
    if (now && parse_lock(now, &li) == GQ_OK && li.pid == (long)getpid()) unlink(d->lock);
    free(now);
    d->locked = 0;
}

void gq_outdir_free(gq_outdir *d) {
    unlock(d);
    free(d->out);
    free(d->lock);
    free(d->partial);
    free(d->tmp);
    memset(d, 0, sizeof *d);
}

/* ---- leftovers of dead runs ---------------------------------------------------- */

/* `name` is `prefix` followed by digits and then `suffix`. */
static int numbered(const char *name, const char *prefix, const char *suffix) {
    size_t np = strlen(prefix), ns = strlen(suffix), n = strlen(name);
    if (n <= np + ns || strncmp(name, prefix, np) || strcmp(name + n - ns, suffix)) return 0;
    for (size_t i = np; i < n - ns; i++)
        if (name[i] < '0' || name[i] > '9') return 0;
    return 1;
}

/* Temporary files inside OUT.partial: "<file>.tmp.<pid>" and ".<base>-<shard>.<pid>.<n>.data.tmp". */
static int clean_partial(const gq_outdir *d) {
    DIR *dh = opendir(d->partial);
    if (!dh) return GQ_OK;
    struct dirent *e;
    int n = 0, rc = GQ_OK;
    while ((e = readdir(dh)) && !rc) {
        const char *t = strstr(e->d_name, ".tmp.");
        size_t len = strlen(e->d_name);
        int ours = (t && numbered(t, ".tmp.", "")) ||
                   (e->d_name[0] == '.' && len > 9 && !strcmp(e->d_name + len - 9, ".data.tmp"));
        if (!ours) continue;
        char *p = gq_path_join(d->partial, e->d_name);
        if (unlink(p) != 0) rc = gq_err(GQ_ERR_IO, "%s: cannot remove a dead run's temporary file: %s", p, strerror(errno));
        free(p);
        n++;
    }
    closedir(dh);
    if (n && !rc) gq_info("%s: removed %d temporary file%s of an interrupted run", d->partial, n, n == 1 ? "" : "s");
    return rc;
}

static char *parent_dir(const char *path, const char **base) {
    const char *s = strrchr(path, '/');
    *base = s ? s + 1 : path;
    if (!s) return gq_strdup(".");
    if (s == path) return gq_strdup("/");
    char *p = gq_strdup(path);
    p[s - path] = 0;
    return p;
}

/* One entry beside OUT: a dead run's assembly directory, an output moved aside, a lock file's pieces. */
static int clean_sibling(const gq_outdir *d, const char *dir, const char *base, const char *name) {
    char pre_tmp[300], pre_old[300], pre_lock[300];
    snprintf(pre_tmp, sizeof pre_tmp, "%s.tmp.", base);
    snprintf(pre_old, sizeof pre_old, "%s.old.", base);
    snprintf(pre_lock, sizeof pre_lock, "%s.lock.", base);
    char pre_stale[320];
    snprintf(pre_stale, sizeof pre_stale, "%sstale.", pre_lock);
    char *p = gq_path_join(dir, name);
    int rc = GQ_OK;
    if (numbered(name, pre_tmp, "")) {
        gq_info("%s: removing the unfinished output of an interrupted run", p);
        rc = gq_rmtree(p);
    } else if (numbered(name, pre_old, "")) {
        if (gq_path_exists(d->out)) {
            gq_info("%s: removing the replaced output of an interrupted run (%s is in place)", p, d->out);
            rc = gq_rmtree(p);
        } else if (rename(p, d->out) == 0) {
            gq_warn("%s: an interrupted run had moved the previous output aside; put back as %s", p, d->out);
        } else {
            rc = gq_err(GQ_ERR_IO, "%s: cannot put the previous output back as %s: %s", p, d->out, strerror(errno));
        }
    } else if (numbered(name, pre_lock, ".new") || numbered(name, pre_stale, "")) {
        if (unlink(p) != 0) rc = gq_err(GQ_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
    }
    free(p);
    return rc;
}

int gq_outdir_clean(gq_outdir *d) {
    GQ_ASSERT(d->locked);
    const char *base;
    char *dir = parent_dir(d->out, &base);
    DIR *dh = opendir(dir);
    int rc = GQ_OK;
    if (dh) {
        struct dirent *e;
        while ((e = readdir(dh)) && !rc) rc = clean_sibling(d, dir, base, e->d_name);
        closedir(dh);
    }
    free(dir);
    if (!rc) rc = clean_partial(d);
    return rc;
}

/* ---- the final rename ---------------------------------------------------------- */

static int keep_partial_msg(const gq_outdir *d, const char *what) {
    gq_rmtree(d->tmp);
    return gq_err(GQ_ERR_EXISTS, "%s: %s; it is left as it is. The finished work stays in %s: move %s away and run "
                                 "again with --resume to write the output (no layer is computed again)",
                  d->out, what, d->partial, d->out);
}

/* The fallback where the file system has no renameat2 flags: two renames, the old output
 * moved aside in between (gq_outdir_clean puts it back if the run dies there). */
static int replace_by_two_renames(gq_outdir *d) {
    char *old = with_suffix(d->out, ".old.%ld", (long)getpid());
    int rc = GQ_OK;
    if (rename(d->out, old) != 0)
        rc = gq_err(GQ_ERR_IO, "%s: cannot move the old output aside: %s", d->out, strerror(errno));
    else if (rename(d->tmp, d->out) != 0) {
        rc = gq_err(GQ_ERR_IO, "%s: cannot rename %s to it: %s", d->out, d->tmp, strerror(errno));
        if (rename(old, d->out) != 0) gq_err_prefix("the old output is in %s", old);
    } else {
        rc = gq_rmtree(old);
    }
    free(old);
    return rc;
}

int gq_outdir_install(gq_outdir *d) {
    struct stat st;
    int exists = lstat(d->out, &st) == 0;
    if (!exists) {
        if (renameat2(AT_FDCWD, d->tmp, AT_FDCWD, d->out, RENAME_NOREPLACE) == 0) return GQ_OK;
        if (errno == EEXIST || errno == ENOTEMPTY) return keep_partial_msg(d, "appeared while this run worked");
        if (errno != EINVAL && errno != ENOSYS)
            return gq_err(GQ_ERR_IO, "%s: cannot rename %s to it: %s", d->out, d->tmp, strerror(errno));
        if (lstat(d->out, &st) == 0) return keep_partial_msg(d, "appeared while this run worked");
        if (rename(d->tmp, d->out) != 0)
            return gq_err(GQ_ERR_IO, "%s: cannot rename %s to it: %s", d->out, d->tmp, strerror(errno));
        return GQ_OK;
    }
    if (!d->out_existed)
        return keep_partial_msg(d, "appeared while this run worked (it was not there at the start)");
    if (st.st_dev != d->out_dev || st.st_ino != d->out_ino)
        return keep_partial_msg(d, "was replaced by something else while this run worked");
    if (renameat2(AT_FDCWD, d->tmp, AT_FDCWD, d->out, RENAME_EXCHANGE) != 0) {
        if (errno != EINVAL && errno != ENOSYS)
            return gq_err(GQ_ERR_IO, "%s: cannot exchange it with %s: %s", d->out, d->tmp, strerror(errno));
        return replace_by_two_renames(d);
    }
    /* d->tmp now names the replaced output: the directory checked at the start, unless it changed in between */
    if (lstat(d->tmp, &st) != 0 || st.st_dev != d->out_dev || st.st_ino != d->out_ino) {
        if (renameat2(AT_FDCWD, d->tmp, AT_FDCWD, d->out, RENAME_EXCHANGE) == 0)
            return keep_partial_msg(d, "was replaced by something else while this run worked");
        return gq_err(GQ_ERR_IO, "%s: replaced while this run worked; what was there is now in %s", d->out, d->tmp);
    }
    return gq_rmtree(d->tmp);
}
