/*
 * gq/common.h -- status codes, error messages, logging, timers, checked
 * allocation, dtypes and half-precision conversions shared by every module.
 *
 * Error handling has three tiers, never mixed:
 *   1. GQ_ASSERT / GQ_ABORT: programmer invariants. Print file:line and abort.
 *   2. gq_status return codes for anything caused by user input (files, JSON,
 *      options, numerics). The function that detects the problem calls
 *      gq_err(code, fmt, ...) which records a message ("what: expected X, got
 *      Y", always naming the file/tensor/line) and returns the code, so the
 *      idiom is `return gq_err(GQ_ERR_FORMAT, "%s: ...", path);`.
 *      Callers may prepend context with gq_err_prefix(). Only main() turns a
 *      status into an exit code, printing gq_errmsg().
 *   3. CUDA_CHECK / CUBLAS_CHECK / LAPACK checks inside backends (tier-1 style
 *      for library failures, tier-2 for recoverable numeric ones such as a
 *      Cholesky that is not positive definite).
 * Library code never calls exit().
 */
#ifndef GQ_COMMON_H
#define GQ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ------------------------------------------------------ */

typedef enum {
    GQ_OK = 0,
    GQ_ERR_IO = -1,          /* open/read/write/rename failed                */
    GQ_ERR_FORMAT = -2,      /* malformed file contents                      */
    GQ_ERR_NOMEM = -3,       /* allocation failed                            */
    GQ_ERR_ARG = -4,         /* bad option or argument                       */
    GQ_ERR_UNSUPPORTED = -5, /* valid input gq does not handle               */
    GQ_ERR_NUMERIC = -6,     /* NaN/Inf, non-finite result                   */
    GQ_ERR_NOT_PD = -7,      /* matrix not positive definite (recoverable)   */
    GQ_ERR_DEVICE = -8,      /* accelerator failure                          */
    GQ_ERR_EXISTS = -9,      /* output exists and --force was not given      */
    GQ_ERR_DATA = -10,       /* not enough / bad calibration or eval data    */
} gq_status;

/* Record an error message (printf-style) and return `code`. Thread-local. */
int gq_err(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Prepend "context: " to the current message; returns the current code. */
int gq_err_prefix(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
const char *gq_errmsg(void); /* last message, "" if none */
int gq_errcode(void);        /* last code, GQ_OK if none */
void gq_err_clear(void);
const char *gq_status_name(int code); /* "I/O error", "format error", ... */

/* ---- invariants -------------------------------------------------------- */

void gq_abort_impl(const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((noreturn, format(printf, 3, 4)))
#endif
    ;
#define GQ_ABORT(...) gq_abort_impl(__FILE__, __LINE__, __VA_ARGS__)
#define GQ_ASSERT(x)                                                         \
    do {                                                                     \
        if (!(x)) gq_abort_impl(__FILE__, __LINE__, "assertion failed: %s", #x); \
    } while (0)

/* ---- logging ----------------------------------------------------------- */

typedef enum { GQ_LOG_ERROR = 0, GQ_LOG_WARN = 1, GQ_LOG_INFO = 2, GQ_LOG_DEBUG = 3 } gq_log_level;
void gq_log_set_level(gq_log_level lvl); /* default GQ_LOG_INFO, or $GQ_LOG (error|warn|info|debug) */
gq_log_level gq_log_get_level(void);
/* All log output goes to stderr; data results go to stdout. */
void gq_log(gq_log_level lvl, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
#define gq_info(...) gq_log(GQ_LOG_INFO, __VA_ARGS__)
#define gq_warn(...) gq_log(GQ_LOG_WARN, __VA_ARGS__)
#define gq_debug(...) gq_log(GQ_LOG_DEBUG, __VA_ARGS__)

/* ---- version ------------------------------------------------------------ */

const char *gq_version(void);     /* "0.3.0" */
const char *gq_version_git(void); /* `git describe` of the build, "unknown" outside a checkout */

/* ---- time, progress, memory -------------------------------------------- */

double gq_now(void); /* monotonic seconds */
/* "layer 3/8 | 12.3 s elapsed | ETA 20.1 s" style suffix into buf. */
void gq_eta_str(char *buf, size_t cap, int done, int total, double t_start);
/* Peak resident set size of this process in bytes (VmHWM), 0 if unknown. */
size_t gq_peak_rss(void);
size_t gq_current_rss(void);
/* Human-readable byte count ("1.50 GiB") into buf. */
const char *gq_fmt_bytes(char *buf, size_t cap, double bytes);

/* ---- checked allocation ------------------------------------------------ */
/* Abort with a message naming the size on failure (out of memory is not an
 * input error; sizes derived from input are validated before allocating). */
void *gq_malloc(size_t n);
void *gq_calloc(size_t n, size_t size);
void *gq_realloc(void *p, size_t n);
char *gq_strdup(const char *s);
/* A growing text of whole lines: p holds n bytes (NUL-terminated), count lines. Zero-initialise;
 * free(p) when done. */
typedef struct {
    char *p;
    size_t n, cap;
    int count;
} gq_linebuf;
/* Append s and a newline. */
void gq_linebuf_add(gq_linebuf *b, const char *s);
/* 64-byte aligned, for BLAS buffers; free with gq_free_aligned. */
void *gq_malloc_aligned(size_t n);
void gq_free_aligned(void *p);

/* Overflow-checked size arithmetic: return 0 on overflow, 1 otherwise. */
int gq_mul_size(size_t a, size_t b, size_t *out);
int gq_add_size(size_t a, size_t b, size_t *out);

/* ---- files -------------------------------------------------------------- */

/* Read a whole (small) file into a NUL-terminated buffer. */
int gq_read_file(const char *path, char **data, size_t *len);
int gq_path_exists(const char *path);
int gq_is_dir(const char *path);
/* Join dir and name into a newly allocated path. */
char *gq_path_join(const char *dir, const char *name);
/* mkdir -p */
int gq_mkdirs(const char *path);
/* rm -rf (used only on gq's own temporary directories). */
int gq_rmtree(const char *path);
/* Copy a file byte for byte (to a temporary name, then rename). */
int gq_copy_file(const char *src, const char *dst);
/* Write buf to path atomically: path.tmp.<pid>, fsync, rename. */
int gq_write_file_atomic(const char *path, const void *buf, size_t len);

/* ---- dtypes ------------------------------------------------------------- */

typedef enum {
    GQ_DT_F32 = 0,
    GQ_DT_F16,
    GQ_DT_BF16,
    GQ_DT_F64,
    GQ_DT_I64,
    GQ_DT_I32,
    GQ_DT_I16,
    GQ_DT_I8,
    GQ_DT_U8,
    GQ_DT_BOOL,
    GQ_DT_COUNT
} gq_dtype;

size_t gq_dtype_size(gq_dtype dt);
const char *gq_dtype_name(gq_dtype dt); /* safetensors spelling: "F16", ... */
/* Parse a safetensors dtype string; returns GQ_OK or GQ_ERR_FORMAT. */
int gq_dtype_parse(const char *s, gq_dtype *out);

/* IEEE half and bfloat16 <-> float. Conversions to half/bf16 round to
 * nearest even (as torch's .half() / .bfloat16()). NaN stays NaN. */
float gq_f16_to_f32(uint16_t h);
uint16_t gq_f32_to_f16(float f);
float gq_bf16_to_f32(uint16_t h);
uint16_t gq_f32_to_bf16(float f);
/* Round a float to the nearest fp16-representable value (as float). */
float gq_round_f16(float f);

/* Convert n elements of a float-like dtype (F32, F16, BF16, F64) to f32.
 * Returns the index of the first non-finite value, or -1 if all finite
 * (conversion is complete either way). */
int64_t gq_to_f32(float *dst, const void *src, gq_dtype dt, size_t n);
/* Index of the first NaN/Inf among n values of a float dtype, or -1. */
int64_t gq_first_nonfinite(const void *src, gq_dtype dt, size_t n);
void gq_f32_to_f16_n(uint16_t *dst, const float *src, size_t n);
void gq_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);

/* ---- threads ------------------------------------------------------------ */
/* Set the number of threads used by OpenMP and OpenBLAS (0 = all cores). */
void gq_set_threads(int n);
int gq_get_threads(void);

#ifdef __cplusplus
}
#endif
#endif /* GQ_COMMON_H */
