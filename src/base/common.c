/* common.c -- errors, logging, timers, checked allocation, files, dtypes. */
#include "gq/common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- errors ------------------------------------------------------------- */

static _Thread_local char err_buf[2048];
static _Thread_local int err_code;

int gq_err(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    err_code = code;
    return code;
}

int gq_err_prefix(const char *fmt, ...) {
    char pre[512], old[sizeof err_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, err_buf, sizeof old);
    size_t n = strlen(pre);
    if (n > sizeof err_buf - 3) n = sizeof err_buf - 3;
    memcpy(err_buf, pre, n);
    memcpy(err_buf + n, ": ", 2);
    size_t m = strlen(old);
    if (m > sizeof err_buf - n - 3) m = sizeof err_buf - n - 3;
    memcpy(err_buf + n + 2, old, m);
    err_buf[n + 2 + m] = 0;
    return err_code;
}

const char *gq_errmsg(void) { return err_buf; }
int gq_errcode(void) { return err_code; }
void gq_err_clear(void) {
    err_buf[0] = 0;
    err_code = GQ_OK;
}

const char *gq_status_name(int code) {
    switch (code) {
    case GQ_OK: return "ok";
    case GQ_ERR_IO: return "I/O error";
    case GQ_ERR_FORMAT: return "format error";
    case GQ_ERR_NOMEM: return "out of memory";
    case GQ_ERR_ARG: return "invalid argument";
    case GQ_ERR_UNSUPPORTED: return "unsupported";
    case GQ_ERR_NUMERIC: return "numerical error";
    case GQ_ERR_NOT_PD: return "matrix not positive definite";
    case GQ_ERR_DEVICE: return "device error";
    case GQ_ERR_EXISTS: return "output exists";
    case GQ_ERR_DATA: return "data error";
    default: return "error";
    }
}

void gq_abort_impl(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "gq: internal error at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

/* ---- logging ------------------------------------------------------------ */

static gq_log_level log_level = GQ_LOG_INFO;
static int log_env_read;
void gq_log_set_level(gq_log_level lvl) {
    log_level = lvl;
    log_env_read = 1;
}
gq_log_level gq_log_get_level(void) { return log_level; }

/* GQ_LOG=error|warn|info|debug sets the initial level. */
static void log_env(void) {
    const char *e = getenv("GQ_LOG");
    log_env_read = 1;
    if (!e) return;
    if (!strcmp(e, "error")) log_level = GQ_LOG_ERROR;
    else if (!strcmp(e, "warn")) log_level = GQ_LOG_WARN;
    else if (!strcmp(e, "info")) log_level = GQ_LOG_INFO;
    else if (!strcmp(e, "debug")) log_level = GQ_LOG_DEBUG;
}

void gq_log(gq_log_level lvl, const char *fmt, ...) {
    if (!log_env_read) log_env();
    if (lvl > log_level) return;
    va_list ap;
    flockfile(stderr); /* one line per message, also from worker threads */
    if (lvl == GQ_LOG_WARN) fputs("warning: ", stderr);
    if (lvl == GQ_LOG_ERROR) fputs("error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    funlockfile(stderr);
}

/* ---- time, memory ------------------------------------------------------- */

double gq_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_secs(char *buf, size_t cap, double s) {
    if (s < 0) s = 0;
    if (s < 120) snprintf(buf, cap, "%.1f s", s);
    else if (s < 7200) snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, cap, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
}

void gq_eta_str(char *buf, size_t cap, int done, int total, double t_start) {
    char e[32], r[32];
    double el = gq_now() - t_start;
    fmt_secs(e, sizeof e, el);
    if (done > 0 && total > done) {
        fmt_secs(r, sizeof r, el / done * (total - done));
        snprintf(buf, cap, "%s elapsed, ETA %s", e, r);
    } else {
        snprintf(buf, cap, "%s elapsed", e);
    }
}

static size_t status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0, klen = strlen(key);
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0) {
            kb = (size_t)strtoull(line + klen, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb * 1024;
}
size_t gq_peak_rss(void) { return status_kb("VmHWM:"); }
size_t gq_current_rss(void) { return status_kb("VmRSS:"); }

const char *gq_fmt_bytes(char *buf, size_t cap, double b) {
    if (b >= 1024.0 * 1024 * 1024) snprintf(buf, cap, "%.2f GiB", b / (1024.0 * 1024 * 1024));
    else if (b >= 1024.0 * 1024) snprintf(buf, cap, "%.1f MiB", b / (1024.0 * 1024));
    else if (b >= 1024.0) snprintf(buf, cap, "%.1f KiB", b / 1024.0);
    else snprintf(buf, cap, "%.0f B", b);
    return buf;
}

/* ---- allocation --------------------------------------------------------- */

static void oom(size_t n) {
    char b[32];
    GQ_ABORT("out of memory allocating %s (%zu bytes)", gq_fmt_bytes(b, sizeof b, (double)n), n);
}

void *gq_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}
void *gq_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}
void *gq_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}
char *gq_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = gq_malloc(n);
    memcpy(d, s, n);
    return d;
}
void *gq_malloc_aligned(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? (n + 63) / 64 * 64 : 64) != 0) oom(n);
    return p;
}
void gq_free_aligned(void *p) { free(p); }

int gq_mul_size(size_t a, size_t b, size_t *out) {
    if (a && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}
int gq_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}

/* ---- files -------------------------------------------------------------- */

int gq_read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return gq_err(GQ_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = gq_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            buf = gq_realloc(buf, cap);
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return gq_err(GQ_ERR_IO, "%s: read error", path);
    }
    buf[n] = 0;
    *data = buf;
    if (len) *len = n;
    return GQ_OK;
}

int gq_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}
int gq_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *gq_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = gq_malloc(a + b + 2);
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

int gq_mkdirs(const char *path) {
    char *p = gq_strdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) goto fail;
            *s = '/';
        }
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) goto fail;
    free(p);
    return GQ_OK;
fail:
    gq_err(GQ_ERR_IO, "%s: cannot create directory: %s", p, strerror(errno));
    free(p);
    return GQ_ERR_IO;
}

int gq_rmtree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return GQ_OK;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return gq_err(GQ_ERR_IO, "%s: cannot open directory: %s", path, strerror(errno));
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char *c = gq_path_join(path, e->d_name);
            int rc = gq_rmtree(c);
            free(c);
            if (rc) {
                closedir(d);
                return rc;
            }
        }
        closedir(d);
        if (rmdir(path) != 0) return gq_err(GQ_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
    } else if (unlink(path) != 0) {
        return gq_err(GQ_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
    }
    return GQ_OK;
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int gq_copy_file(const char *src, const char *dst) {
    int in = open(src, O_RDONLY);
    if (in < 0) return gq_err(GQ_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", dst, (int)getpid());
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) {
        close(in);
        return gq_err(GQ_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    char *buf = gq_malloc(1 << 20);
    int rc = GQ_OK;
    for (;;) {
        ssize_t r = read(in, buf, 1 << 20);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = gq_err(GQ_ERR_IO, "%s: read error: %s", src, strerror(errno));
            break;
        }
        if (r == 0) break;
        if (write_all(out, buf, (size_t)r)) {
            rc = gq_err(GQ_ERR_IO, "%s: write error: %s", tmp, strerror(errno));
            break;
        }
    }
    free(buf);
    close(in);
    if (close(out) != 0 && rc == GQ_OK) rc = gq_err(GQ_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (rc == GQ_OK && rename(tmp, dst) != 0)
        rc = gq_err(GQ_ERR_IO, "%s: cannot rename to %s: %s", tmp, dst, strerror(errno));
    if (rc != GQ_OK) unlink(tmp);
    return rc;
}

int gq_write_file_atomic(const char *path, const void *buf, size_t len) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return gq_err(GQ_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    if (write_all(fd, buf, len) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return gq_err(GQ_ERR_IO, "%s: write error: %s", tmp, strerror(e));
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return gq_err(GQ_ERR_IO, "%s: cannot write: %s", path, strerror(e));
    }
    return GQ_OK;
}

/* ---- dtypes ------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtype_info[GQ_DT_COUNT] = {
    [GQ_DT_F32] = {"F32", 4}, [GQ_DT_F16] = {"F16", 2}, [GQ_DT_BF16] = {"BF16", 2},
    [GQ_DT_F64] = {"F64", 8}, [GQ_DT_I64] = {"I64", 8}, [GQ_DT_I32] = {"I32", 4},
    [GQ_DT_I16] = {"I16", 2}, [GQ_DT_I8] = {"I8", 1},   [GQ_DT_U8] = {"U8", 1},
    [GQ_DT_BOOL] = {"BOOL", 1},
};

size_t gq_dtype_size(gq_dtype dt) { return (unsigned)dt < GQ_DT_COUNT ? dtype_info[dt].size : 0; }
const char *gq_dtype_name(gq_dtype dt) { return (unsigned)dt < GQ_DT_COUNT ? dtype_info[dt].name : "?"; }
int gq_dtype_parse(const char *s, gq_dtype *out) {
    for (int i = 0; i < GQ_DT_COUNT; i++) {
        if (strcmp(s, dtype_info[i].name) == 0) {
            *out = (gq_dtype)i;
            return GQ_OK;
        }
    }
    return GQ_ERR_FORMAT;
}

typedef union {
    float f;
    uint32_t u;
} f32u;

float gq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    f32u r;
    if (exp == 0) {
        if (man == 0) {
            r.u = sign;
        } else { /* subnormal: value = man * 2^-24 */
            r.f = (float)man * 5.9604644775390625e-8f;
            r.u |= sign;
        }
    } else if (exp == 31) {
        r.u = sign | 0x7f800000u | (man << 13);
    } else {
        r.u = sign | ((exp + 112) << 23) | (man << 13);
    }
    return r.f;
}

uint16_t gq_f32_to_f16(float f) {
    f32u v = {.f = f};
    uint32_t x = v.u;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0);
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00;
    if (ax < 0x38800000u) { /* below smallest normal half: subnormal or zero */
        f32u a = {.u = ax};
        /* value / 2^-24, rounded to nearest even by the FPU */
        float m = a.f * 16777216.0f;
        return sign | (uint16_t)nearbyintf(m);
    }
    /* normal: round mantissa from 23 to 10 bits, nearest even */
    uint32_t mant_odd = (ax >> 13) & 1;
    ax += 0xfffu + mant_odd;
    ax -= 112u << 23;
    return sign | (uint16_t)(ax >> 13);
}

float gq_bf16_to_f32(uint16_t h) {
    f32u r = {.u = (uint32_t)h << 16};
    return r.f;
}

uint16_t gq_f32_to_bf16(float f) {
    f32u v = {.f = f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    uint32_t lsb = (v.u >> 16) & 1;
    return (uint16_t)((v.u + 0x7fffu + lsb) >> 16);
}

float gq_round_f16(float f) { return gq_f16_to_f32(gq_f32_to_f16(f)); }

int64_t gq_to_f32(float *dst, const void *src, gq_dtype dt, size_t n) {
    int64_t bad = INT64_MAX;
    /* big tensors (a 7B layer is 200M values) convert on every core */
#pragma omp parallel for schedule(static) reduction(min : bad) if (n > (1u << 20))
    for (size_t i = 0; i < n; i++) {
        float v;
        switch (dt) {
        case GQ_DT_F32: v = ((const float *)src)[i]; break;
        case GQ_DT_F16: v = gq_f16_to_f32(((const uint16_t *)src)[i]); break;
        case GQ_DT_BF16: v = gq_bf16_to_f32(((const uint16_t *)src)[i]); break;
        case GQ_DT_F64: v = (float)((const double *)src)[i]; break;
        default: v = 0.0f; break;
        }
        dst[i] = v;
        if (!isfinite(v) && (int64_t)i < bad) bad = (int64_t)i;
    }
    if (dt != GQ_DT_F32 && dt != GQ_DT_F16 && dt != GQ_DT_BF16 && dt != GQ_DT_F64)
        GQ_ABORT("gq_to_f32: dtype %s is not a float type", gq_dtype_name(dt));
    return bad == INT64_MAX ? -1 : bad;
}

int64_t gq_first_nonfinite(const void *src, gq_dtype dt, size_t n) {
    int64_t bad = INT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : bad) if (n > (1u << 20))
    for (size_t i = 0; i < n; i++) {
        int nf;
        switch (dt) {
        case GQ_DT_F16: nf = (((const uint16_t *)src)[i] & 0x7c00) == 0x7c00; break;
        case GQ_DT_BF16: nf = (((const uint16_t *)src)[i] & 0x7f80) == 0x7f80; break;
        case GQ_DT_F32: nf = !isfinite(((const float *)src)[i]); break;
        case GQ_DT_F64: nf = !isfinite(((const double *)src)[i]); break;
        default: nf = 0; break;
        }
        if (nf && (int64_t)i < bad) bad = (int64_t)i;
    }
    return bad == INT64_MAX ? -1 : bad;
}

void gq_f32_to_f16_n(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = gq_f32_to_f16(src[i]);
}
void gq_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = gq_f32_to_bf16(src[i]);
}

/* ---- threads ------------------------------------------------------------ */

extern void openblas_set_num_threads(int) __attribute__((weak));
static int n_threads;

void gq_set_threads(int n) {
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    n_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    if (openblas_set_num_threads) openblas_set_num_threads(n);
}

int gq_get_threads(void) {
    if (n_threads <= 0) gq_set_threads(0);
    return n_threads;
}

void gq_linebuf_add(gq_linebuf *b, const char *s) {
    size_t n = strlen(s);
    if (b->n + n + 2 > b->cap) {
        b->cap = (b->n + n + 2) * 2;
        b->p = gq_realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n++] = '\n';
    b->p[b->n] = 0;
    b->count++;
}
