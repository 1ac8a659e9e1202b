/*
 * backend.c -- the backend registry (gq_backend_init picks and constructs a
 * backend from a device spec) and the public gq_be_* wrappers, which check
 * their arguments once for every backend, then dispatch through the vtable
 * (backend_impl.h). This is the only file with #ifdef GQ_USE_CUDA.
 *
 * The wrappers also keep the allocation statistics: every buffer goes
 * through gq_be_alloc / gq_be_release, which record its size in a small
 * open-addressing hash table keyed by pointer, so gq_be_peak_bytes works the
 * same on every backend. A backend is used from one thread at a time.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"
#include "gq/knobs.h"

/* CUDA: compiled in when the build defines GQ_USE_CUDA (nvcc found) and the
 * CUDA backend's public header exists; until that module lands, a CUDA build
 * links and runs CPU-only instead of failing on undefined symbols. */
#ifdef GQ_USE_CUDA
#if __has_include("gq/backend_cuda.h")
#include "gq/backend_cuda.h"
#define GQ_CUDA_BACKEND 1
int gq_cuda_device_count(void); /* cuda/backend_cuda.cu */
#endif
#endif

/* ---- allocation table ---------------------------------------------------------- */

struct gq_alloc_table {
    uintptr_t *key;   /* [cap]: 0 = empty, 1 = deleted, else the pointer */
    size_t *size;     /* [cap] */
    size_t cap, used; /* used counts live + deleted slots */
};

static size_t ptr_hash(uintptr_t p, size_t cap) {
    uint64_t h = (uint64_t)p * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (cap - 1);
}

static void table_put(struct gq_alloc_table *t, uintptr_t p, size_t n);

static void table_grow(struct gq_alloc_table *t) {
    struct gq_alloc_table old = *t;
    t->cap = old.cap ? old.cap * 2 : 64;
    t->key = gq_calloc(t->cap, sizeof *t->key);
    t->size = gq_calloc(t->cap, sizeof *t->size);
    t->used = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.key[i] > 1) table_put(t, old.key[i], old.size[i]);
    free(old.key);
    free(old.size);
}

static void table_put(struct gq_alloc_table *t, uintptr_t p, size_t n) {
    if ((t->used + 1) * 4 > t->cap * 3) table_grow(t);
    size_t i = ptr_hash(p, t->cap);
    while (t->key[i] > 1) i = (i + 1) & (t->cap - 1);
    if (t->key[i] == 0) t->used++;
    t->key[i] = p;
    t->size[i] = n;
}

/* Remove p; returns its size, or (size_t)-1 if p is not a live allocation. */
static size_t table_take(struct gq_alloc_table *t, uintptr_t p) {
    if (!t || !t->cap) return (size_t)-1;
    size_t i = ptr_hash(p, t->cap);
    while (t->key[i] != 0) {
        if (t->key[i] == p) {
            t->key[i] = 1;
            return t->size[i];
        }
        i = (i + 1) & (t->cap - 1);
    }
    return (size_t)-1;
}

static void table_free(struct gq_alloc_table *t) {
    if (!t) return;
    free(t->key);
    free(t->size);
    free(t);
}

/* ---- registry ----------------------------------------------------------------- */

int gq_backend_cuda_compiled(void) {
#ifdef GQ_CUDA_BACKEND
    return 1;
#else
    return 0;
#endif
}

int gq_backend_cuda_devices(void) {
#ifdef GQ_CUDA_BACKEND
    return gq_cuda_device_count();
#else
    return 0;
#endif
}

/* Parse "cuda" / "cuda:N"; returns the device index or -1. */
static int parse_cuda_spec(const char *spec) {
    if (!strcmp(spec, "cuda")) return 0;
    if (strncmp(spec, "cuda:", 5) != 0 || !spec[5]) return -1;
    long v = 0;
    for (const char *p = spec + 5; *p; p++) {
        if (*p < '0' || *p > '9' || v > 1000) return -1;
        v = v * 10 + (*p - '0');
    }
    return (int)v;
}

static int init_cpu(gq_backend **out, const char *why) {
    int rc = gq_backend_cpu_init(out);
    if (rc == GQ_OK) gq_info("backend: %s (%s)", (*out)->name, why);
    return rc;
}

int gq_backend_init(gq_backend **out, const char *spec) {
    *out = NULL;
    if (!spec || !strcmp(spec, "auto")) {
#ifdef GQ_CUDA_BACKEND
        int n = gq_cuda_device_count();
        if (n > 0) {
            int rc = gq_backend_cuda_init(out, 0);
            if (rc == GQ_OK) {
                gq_info("backend: %s (auto: %d CUDA device%s found, using cuda:0)", (*out)->name, n, n == 1 ? "" : "s");
                return GQ_OK;
            }
            gq_warn("backend: auto: CUDA device 0 failed to start (%s); falling back to the CPU", gq_errmsg());
            return init_cpu(out, "auto: CUDA failed to start");
        }
        return init_cpu(out, "auto: gq has CUDA support but no CUDA device was found");
#else
        return init_cpu(out, "auto: this gq build has no CUDA backend");
#endif
    }
    if (!strcmp(spec, "cpu")) return init_cpu(out, "requested with --device cpu");
    int dev = parse_cuda_spec(spec);
    if (dev < 0) return gq_err(GQ_ERR_ARG, "device '%s': expected cpu, cuda, cuda:N (N = 0, 1, ...) or auto", spec);
#ifdef GQ_CUDA_BACKEND
    int n = gq_cuda_device_count();
    if (n == 0)
        return gq_err(GQ_ERR_DEVICE, "device '%s': no CUDA device found (the driver reports none); use --device cpu "
                                     "or --device auto", spec);
    if (dev >= n)
        return gq_err(GQ_ERR_DEVICE, "device '%s': %d CUDA device%s present (valid: cuda:0 .. cuda:%d)", spec, n,
                      n == 1 ? "" : "s", n - 1);
    int rc = gq_backend_cuda_init(out, dev);
    if (rc != GQ_OK) return gq_err_prefix("device '%s'", spec);
    gq_info("backend: %s (requested with --device %s)", (*out)->name, spec);
    return GQ_OK;
#else
    return gq_err(GQ_ERR_UNSUPPORTED,
                  "device '%s': this gq build has no CUDA backend (it needs nvcc at build time: make CUDA=1)", spec);
#endif
}

void gq_backend_free(gq_backend *be) {
    if (!be) return;
    table_free(be->allocs);
    be->allocs = NULL;
    be->iface->free(be);
}

const char *gq_backend_name(const gq_backend *be) {
    return be->name;
}
int gq_backend_is_gpu(const gq_backend *be) {
    return be->is_gpu;
}
gq_dtype gq_backend_act_dtype(const gq_backend *be) {
    return be->act_dtype;
}
char *openblas_get_corename(void);

void gq_backend_arith_id(const gq_backend *be, char *buf, size_t cap) {
    if (!be->is_gpu) {
        snprintf(buf, cap, "cpu openblas %s", openblas_get_corename());
        return;
    }
    /* "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB)": the device's name and architecture,
     * and the inverse factor's route (its default changed: a resumed run must not mix two) */
    const char *p = strchr(be->name, '(');
    const char *e = p ? strstr(p, " SMs") : NULL;
    if (e) {
        while (e > p && e[-1] != ',') e--;
        snprintf(buf, cap, "cuda %.*s; inverse factor %s", (int)(e - p - 2), p + 1, gq_knobs_hinv_name());
    } else {
        snprintf(buf, cap, "%s; inverse factor %s", be->name, gq_knobs_hinv_name());
    }
}

int gq_backend_set_precision(gq_backend *be, const char *precision) {
    gq_dtype want;
    if (!precision || !strcmp(precision, "auto")) return GQ_OK;
    if (!strcmp(precision, "fp16"))
        want = GQ_DT_F16;
    else if (!strcmp(precision, "fp32"))
        want = GQ_DT_F32;
    else
        return gq_err(GQ_ERR_ARG, "precision '%s': expected auto, fp16 or fp32", precision);
    if (want == be->act_dtype) return GQ_OK;
    if (!be->is_gpu) /* the CPU backend has one arithmetic */
        return gq_err(GQ_ERR_UNSUPPORTED, "precision %s: the CPU backend computes in fp32 only", precision);
    be->act_dtype = want;
    gq_info("precision: %s (%s)", precision,
            want == GQ_DT_F32 ? "fp32 activations and weights, fp32 GEMMs without TF32: the CPU backend's arithmetic"
                              : "fp16 activations and weights, fp32 accumulation");
    return GQ_OK;
}

void *gq_be_host_alloc(gq_backend *be, size_t bytes) {
    return be->iface->host_alloc ? be->iface->host_alloc(be, bytes) : gq_calloc(1, bytes ? bytes : 1);
}
int gq_be_upload_pinned(gq_backend *be, void *dst, const void *src, size_t bytes) {
    if (be->iface->upload_pinned) return be->iface->upload_pinned(be, dst, src, bytes);
    memcpy(dst, src, bytes); /* the CPU: device memory is host memory */
    return GQ_OK;
}
void gq_be_host_free(gq_backend *be, void *p) {
    if (!p) return;
    if (be->iface->host_free) be->iface->host_free(be, p);
    else free(p);
}

int gq_be_graph_begin(gq_backend *be) {
    if (!be->iface->graph_begin) return gq_err(GQ_ERR_UNSUPPORTED, "backend %s does not record graphs", be->name);
    return be->iface->graph_begin(be);
}
int gq_be_graph_end(gq_backend *be, gq_bgraph **out) {
    *out = NULL;
    if (!be->iface->graph_end) return gq_err(GQ_ERR_UNSUPPORTED, "backend %s does not record graphs", be->name);
    return be->iface->graph_end(be, out);
}
int gq_be_graph_launch(gq_backend *be, gq_bgraph *g) {
    if (!be->iface->graph_launch || !g) return gq_err(GQ_ERR_ARG, "graph launch: no recording");
    return be->iface->graph_launch(be, g);
}
void gq_be_graph_free(gq_backend *be, gq_bgraph *g) {
    if (g && be->iface->graph_free) be->iface->graph_free(be, g);
}

int gq_backend_fork(gq_backend *be, gq_backend **out) {
    *out = NULL;
    if (!be->iface->fork) return gq_err(GQ_ERR_UNSUPPORTED, "backend %s cannot fork", be->name);
    int rc = be->iface->fork(be, out);
    if (rc == GQ_OK) (*out)->act_dtype = be->act_dtype;
    return rc;
}

int gq_backend_bind_thread(gq_backend *be) {
    return be->iface->bind_thread ? be->iface->bind_thread(be) : GQ_OK;
}

size_t gq_be_peak_bytes(const gq_backend *be) {
    return be->peak_bytes;
}
size_t gq_be_free_bytes(const gq_backend *be) {
    return be->iface->free_bytes ? be->iface->free_bytes(be) : 0;
}

/* An op the backend does not provide. */
static int missing(const gq_backend *be, const char *op) {
    return gq_err(GQ_ERR_UNSUPPORTED, "backend %s does not implement %s", be->name, op);
}
#define NEED(op)                                                                                                       \
    do {                                                                                                               \
        if (!be->iface->op) return missing(be, #op);                                                                   \
    } while (0)

/* ---- buffers ------------------------------------------------------------------- */

void *gq_be_alloc(gq_backend *be, size_t bytes) {
    void *p = be->iface->alloc(be, bytes);
    if (!p) return NULL; /* the backend recorded GQ_ERR_NOMEM */
    if (!be->allocs) be->allocs = gq_calloc(1, sizeof *be->allocs);
    table_put(be->allocs, (uintptr_t)p, bytes);
    be->bytes_in_use += bytes;
    if (be->bytes_in_use > be->peak_bytes) be->peak_bytes = be->bytes_in_use;
    return p;
}

void gq_be_release(gq_backend *be, void *p) {
    if (!p) return;
    size_t n = table_take(be->allocs, (uintptr_t)p);
    GQ_ASSERT(n != (size_t)-1 && "gq_be_release of a pointer not from gq_be_alloc");
    be->bytes_in_use -= n;
    be->iface->release(be, p);
}

size_t gq_be_act_bytes(const gq_backend *be, size_t n_elems) {
    return n_elems * gq_dtype_size(be->act_dtype);
}

int gq_be_upload(gq_backend *be, void *dst, const void *src, size_t bytes) {
    return bytes ? be->iface->upload(be, dst, src, bytes) : GQ_OK;
}
int gq_be_download(gq_backend *be, void *dst, const void *src, size_t bytes) {
    return bytes ? be->iface->download(be, dst, src, bytes) : GQ_OK;
}
int gq_be_memset0(gq_backend *be, void *dst, size_t bytes) {
    return bytes ? be->iface->memset0(be, dst, bytes) : GQ_OK;
}
int gq_be_upload_f32(gq_backend *be, void *dst_act, const float *src, size_t n) {
    return n ? be->iface->upload_f32(be, dst_act, src, n) : GQ_OK;
}
int gq_be_download_f32(gq_backend *be, float *dst, const void *src_act, size_t n) {
    return n ? be->iface->download_f32(be, dst, src_act, n) : GQ_OK;
}
int gq_be_copy_act(gq_backend *be, void *dst, const void *src, size_t n) {
    return n ? be->iface->copy_act(be, dst, src, n) : GQ_OK;
}
int gq_be_sync(gq_backend *be) {
    return be->iface->sync(be);
}

/* ---- weights -------------------------------------------------------------------- */

int gq_be_weight_upload(gq_backend *be, gq_bweight *w, const float *src, int rows, int cols) {
    memset(w, 0, sizeof *w);
    if (rows <= 0 || cols <= 0) return gq_err(GQ_ERR_ARG, "weight upload: shape [%d, %d] must be positive", rows, cols);
    NEED(weight_upload);
    return be->iface->weight_upload(be, w, src, rows, cols);
}

int gq_be_weight_upload_raw(gq_backend *be, gq_bweight *w, const void *src, gq_dtype dt, int rows, int cols) {
    memset(w, 0, sizeof *w);
    if (rows <= 0 || cols <= 0) return gq_err(GQ_ERR_ARG, "weight upload: shape [%d, %d] must be positive", rows, cols);
    if (dt != GQ_DT_F32 && dt != GQ_DT_F16 && dt != GQ_DT_BF16)
        return gq_err(GQ_ERR_ARG, "weight upload: dtype %s, expected F32, F16 or BF16", gq_dtype_name(dt));
    NEED(weight_upload_raw);
    return be->iface->weight_upload_raw(be, w, src, dt, rows, cols);
}

int gq_be_weight_alloc(gq_backend *be, gq_bweight *w, int rows, int cols) {
    memset(w, 0, sizeof *w);
    if (rows <= 0 || cols <= 0) return gq_err(GQ_ERR_ARG, "weight alloc: shape [%d, %d] must be positive", rows, cols);
    gq_dtype dt = be->act_dtype; /* what each backend's weight_upload makes */
    w->data = gq_be_alloc(be, (size_t)rows * cols * gq_dtype_size(dt));
    if (!w->data) return gq_errcode() ? gq_errcode() : GQ_ERR_NOMEM;
    w->rows = rows;
    w->cols = cols;
    w->dtype = dt;
    return GQ_OK;
}

int gq_be_weight_set_rows(gq_backend *be, gq_bweight *w, int row0, int nrows, const void *src, gq_dtype dt) {
    if (row0 < 0 || nrows <= 0 || row0 + nrows > w->rows)
        return gq_err(GQ_ERR_ARG, "weight set_rows: rows [%d, %d) outside [0, %d)", row0, row0 + nrows, w->rows);
    if (dt != GQ_DT_F32 && dt != GQ_DT_F16 && dt != GQ_DT_BF16)
        return gq_err(GQ_ERR_ARG, "weight set_rows: dtype %s, expected F32, F16 or BF16", gq_dtype_name(dt));
    size_t n = (size_t)nrows * w->cols;
    int64_t bad = gq_first_nonfinite(src, dt, n);
    if (bad >= 0) return gq_err(GQ_ERR_NUMERIC, "non-finite value at index %lld", (long long)bad);
    size_t esz = gq_dtype_size(w->dtype);
    char *dst = (char *)w->data + (size_t)row0 * w->cols * esz;
    if (w->dtype == GQ_DT_F32 && !be->is_gpu) { /* host f32 weights: convert in place */
        gq_to_f32((float *)dst, src, dt, n);
        return GQ_OK;
    }
    if (w->dtype == dt) return gq_be_upload(be, dst, src, n * esz);
    gq_bweight tmp; /* converted by the backend's own upload, then moved into place */
    int rc = gq_be_weight_upload_raw(be, &tmp, src, dt, nrows, w->cols);
    if (rc == GQ_OK && tmp.dtype != w->dtype)
        rc = gq_err(GQ_ERR_ARG, "weight set_rows: backend weight dtypes differ (%s, %s)", gq_dtype_name(tmp.dtype),
                    gq_dtype_name(w->dtype));
    if (rc == GQ_OK) rc = gq_be_copy_act(be, dst, tmp.data, n);
    gq_be_weight_free(be, &tmp);
    return rc;
}

void gq_be_weight_free(gq_backend *be, gq_bweight *w) {
    if (!w) return;
    if (w->q4) {
        GQ_ASSERT(be->iface->weight_free_q4 && "an int4 weight on a backend without int4 weights");
        be->iface->weight_free_q4(be, w);
    } else if (w->data) {
        be->iface->weight_free(be, w);
    }
    memset(w, 0, sizeof *w);
}

size_t gq_be_weight_bytes(const gq_bweight *w) {
    if (!w) return 0;
    if (w->q4) return ((const gq_q4_head *)w->q4)->device_bytes;
    return w->data ? (size_t)w->rows * (size_t)w->cols * gq_dtype_size(w->dtype) : 0;
}

/* ---- int4 weights ------------------------------------------------------------------ */

int gq_be_q4_supported(const gq_backend *be) {
    return be->iface->q4_supported && be->iface->weight_upload_q4 && be->iface->weight_free_q4 ?
               be->iface->q4_supported(be) : 0;
}

/* Part i of an int4 upload: complete, 4 bits, K as part 0's, K and rows multiples of 8, 1 <= ngroups <= K,
 * g_idx in range, scales finite and small enough that scale * (q - zero), |q - zero| <= 16, is a finite fp16. */
static int check_q4_part(const gq_packed *p, int i, int K) {
    if (!p || !p->qweight || !p->qzeros || !p->scales || !p->g_idx)
        return gq_err(GQ_ERR_ARG, "int4 weight part %d: incomplete packed tensors (qweight, qzeros, scales and g_idx "
                                  "are all needed)", i);
    if (p->bits != 4)
        return gq_err(GQ_ERR_UNSUPPORTED, "int4 weight part %d: %d-bit weights, expected 4 bits (the W4A16 kernels "
                                          "are int4 only; dequantize other widths with gq_packed_dequant)", i, p->bits);
    if (p->cols != K)
        return gq_err(GQ_ERR_ARG, "int4 weight part %d: in_features (K) %d, expected %d as part 0 (fused parts share "
                                  "their input)", i, p->cols, K);
    if (K <= 0 || K % 8)
        return gq_err(GQ_ERR_ARG, "int4 weight part %d: in_features (K) %d, expected a positive multiple of 8", i, K);
    if (p->rows <= 0 || p->rows % 8)
        return gq_err(GQ_ERR_ARG, "int4 weight part %d: out_features (N) %d, expected a positive multiple of 8", i,
                      p->rows);
    if (p->ngroups < 1 || p->ngroups > K)
        return gq_err(GQ_ERR_ARG, "int4 weight part %d: %d groups for K = %d, expected 1 .. K (group size -1, or "
                                  "1 .. K columns per group)", i, p->ngroups, K);
    for (int k = 0; k < K; k++)
        if (p->g_idx[k] < 0 || p->g_idx[k] >= p->ngroups)
            return gq_err(GQ_ERR_FORMAT, "int4 weight part %d: g_idx[%d] = %d, expected 0..%d (scales have %d groups)",
                          i, k, (int)p->g_idx[k], p->ngroups - 1, p->ngroups);
    const size_t ns = (size_t)p->ngroups * p->rows;
    for (size_t j = 0; j < ns; j++) {
        const float sc = gq_f16_to_f32(p->scales[j]);
        if (!isfinite(sc))
            return gq_err(GQ_ERR_NUMERIC, "int4 weight part %d: scale of group %zu, output row %zu is %g, expected "
                                          "a finite value", i, j / p->rows, j % p->rows, (double)sc);
        if (fabsf(sc) * 16.0f > 65504.0f)
            return gq_err(GQ_ERR_UNSUPPORTED, "int4 weight part %d: scale of group %zu, output row %zu is %g; "
                                              "expected |scale| <= 4094 (scale * (q - zero) must be a finite fp16)",
                          i, j / p->rows, j % p->rows, (double)sc);
    }
    return GQ_OK;
}

int gq_be_weight_upload_q4(gq_backend *be, gq_bweight *w, const gq_packed *const *parts, int nparts) {
    memset(w, 0, sizeof *w);
    if (!parts || nparts < 1)
        return gq_err(GQ_ERR_ARG, "int4 weight upload: %d parts, expected at least 1", parts ? nparts : 0);
    const int K = parts[0] ? parts[0]->cols : 0;
    int64_t rows = 0;
    for (int i = 0; i < nparts; i++) {
        int rc = check_q4_part(parts[i], i, K);
        if (rc != GQ_OK) return rc;
        rows += parts[i]->rows;
        if (rows > INT32_MAX)
            return gq_err(GQ_ERR_ARG, "int4 weight upload: %lld output rows over %d parts, expected at most %d",
                          (long long)rows, nparts, INT32_MAX);
    }
    if (!gq_be_q4_supported(be))
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "int4 weight upload: backend %s cannot keep int4 weights resident (%s); dequantize them "
                      "(gq_packed_dequant) and upload fp weights instead", be->name,
                      be->is_gpu ? "it computes in fp32 (--precision fp32); int4 needs fp16 activations"
                                 : "the CPU backend computes with fp32 weights");
    return be->iface->weight_upload_q4(be, w, parts, nparts);
}

/* ---- forward ops ----------------------------------------------------------------- */

/* Leading dimension check shared by the ops: ld >= width >= 1. */
static int check_ld(const char *op, const char *what, int ld, int width) {
    if (width < 1 || ld < width)
        return gq_err(GQ_ERR_ARG, "%s: %s has leading dimension %d for %d columns", op, what, ld, width);
    return GQ_OK;
}
#define CHECK(x)                                                                                                       \
    do {                                                                                                               \
        int rc_ = (x);                                                                                                 \
        if (rc_ != GQ_OK) return rc_;                                                                                  \
    } while (0)

int gq_be_linear(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, const gq_bweight *W,
                 const gq_bweight *bias, int accumulate) {
    if (T < 0) return gq_err(GQ_ERR_ARG, "linear: T = %d", T);
    CHECK(check_ld("linear", "X", ldx, W->cols));
    CHECK(check_ld("linear", "Y", ldy, W->rows));
    if (bias && !bias->data) bias = NULL;
    if (bias && bias->rows * bias->cols != W->rows)
        return gq_err(GQ_ERR_ARG, "linear: bias has %d elements for %d outputs", bias->rows * bias->cols, W->rows);
    if (T == 0) return GQ_OK;
    NEED(linear);
    return be->iface->linear(be, Y, ldy, X, ldx, T, W, bias, accumulate);
}

int gq_be_rmsnorm(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                  float eps) {
    CHECK(check_ld("rmsnorm", "X", ldx, d));
    CHECK(check_ld("rmsnorm", "Y", ldy, d));
    if (w->rows * w->cols != d)
        return gq_err(GQ_ERR_ARG, "rmsnorm: weight has %d elements for width %d", w->rows * w->cols, d);
    if (T <= 0) return T < 0 ? gq_err(GQ_ERR_ARG, "rmsnorm: T = %d", T) : GQ_OK;
    NEED(rmsnorm);
    return be->iface->rmsnorm(be, Y, ldy, X, ldx, T, d, w, eps);
}

/* rot: the rotary dims of each head of head_dim (2 <= rot <= head_dim, even; rot == head_dim: full). */
static int check_rot(const char *op, int rot, int head_dim) {
    if (head_dim < 2 || rot < 2 || rot > head_dim || rot % 2)
        return gq_err(GQ_ERR_ARG, "%s: %d rotary dims of head_dim %d, expected an even number in [2, head_dim]", op,
                      rot, head_dim);
    return GQ_OK;
}

/* The attention options (NULL: plain): finite scale >= 0, finite softcap >= 0, window >= 0. */
static int check_attn_opts(const char *op, const gq_attn_opts *o) {
    if (!o) return GQ_OK;
    if (!(o->scale >= 0.0f) || isinf(o->scale))
        return gq_err(GQ_ERR_ARG, "%s: scale %g, expected a finite value >= 0 (0: 1/sqrt(head_dim))", op,
                      (double)o->scale);
    if (!(o->softcap >= 0.0f) || isinf(o->softcap))
        return gq_err(GQ_ERR_ARG, "%s: softcap %g, expected a finite value >= 0 (0: none)", op, (double)o->softcap);
    if (o->window < 0) return gq_err(GQ_ERR_ARG, "%s: window %d, expected >= 0 (0: none)", op, o->window);
    return GQ_OK;
}

int gq_be_rope_partial(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, int rot, int pos0,
                       const float *inv_freq) {
    CHECK(check_rot("rope", rot, head_dim));
    if (n_heads < 1 || pos0 < 0)
        return gq_err(GQ_ERR_ARG, "rope: n_heads %d (expected >= 1), pos0 %d (expected >= 0)", n_heads, pos0);
    CHECK(check_ld("rope", "X", ld, n_heads * head_dim));
    if (T <= 0) return T < 0 ? gq_err(GQ_ERR_ARG, "rope: T = %d", T) : GQ_OK;
    NEED(rope);
    return be->iface->rope(be, X, ld, T, n_heads, head_dim, rot, pos0, inv_freq);
}

int gq_be_rope(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, int pos0, const float *inv_freq) {
    return gq_be_rope_partial(be, X, ld, T, n_heads, head_dim, head_dim, pos0, inv_freq);
}

int gq_be_attention_ex(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk,
                       const void *V, int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim,
                       const gq_attn_opts *o) {
    if (n_heads < 1 || n_kv < 1 || n_heads % n_kv || head_dim < 1)
        return gq_err(GQ_ERR_ARG, "attention: n_heads %d must be a positive multiple of n_kv %d (head_dim %d)", n_heads,
                      n_kv, head_dim);
    if (Tq < 0 || Tq > Tk) return gq_err(GQ_ERR_ARG, "attention: %d queries for %d keys (need 0 <= Tq <= Tk)", Tq, Tk);
    CHECK(check_ld("attention", "Q", ldq, n_heads * head_dim));
    CHECK(check_ld("attention", "O", ldo, n_heads * head_dim));
    CHECK(check_ld("attention", "K", ldk, n_kv * head_dim));
    CHECK(check_ld("attention", "V", ldv, n_kv * head_dim));
    CHECK(check_attn_opts("attention", o));
    if (Tq == 0) return GQ_OK;
    NEED(attention);
    return be->iface->attention(be, O, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, n_heads, n_kv, head_dim, o);
}

int gq_be_attention(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk, const void *V,
                    int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim) {
    return gq_be_attention_ex(be, O, ldo, Q, ldq, K, ldk, V, ldv, Tq, Tk, n_heads, n_kv, head_dim, NULL);
}

/* The batched decode step: each row's attention sees the keys 0 .. pos[r] of its cache (query at
 * absolute position pos[r], so a window masks the keys j <= pos[r] - window exactly as in a
 * prefill); the backends' own kernels (CPU: one parallel region over rows and kv heads). */
int gq_be_decode_attention_ex(gq_backend *be, void *O, int ldo, void *QKV, int ldqkv, int B, void *Kc, void *Vc,
                              size_t slot_stride, int ldkv, const int32_t *slot, const int32_t *pos, int n_heads,
                              int n_kv, int head_dim, int rot, const float *inv_freq, const gq_attn_opts *o) {
    const int nq = n_heads * head_dim, kvd = n_kv * head_dim;
    if (B <= 0 || n_heads <= 0 || n_kv <= 0 || n_heads % n_kv || head_dim <= 0 || ldqkv < nq + 2 * kvd ||
        ldkv < kvd || ldo < nq)
        return gq_err(GQ_ERR_ARG,
                      "decode attention: B %d, heads %d/%d x %d, ldqkv %d, ldkv %d, ldo %d are inconsistent", B,
                      n_heads, n_kv, head_dim, ldqkv, ldkv, ldo);
    CHECK(check_rot("decode attention", rot, head_dim));
    CHECK(check_attn_opts("decode attention", o));
    for (int r = 0; r < B; r++)
        if (slot[r] < 0 || pos[r] < 0)
            return gq_err(GQ_ERR_ARG, "decode attention: row %d: slot %d, position %d", r, slot[r], pos[r]);
    NEED(decode_attention);
    return be->iface->decode_attention(be, O, ldo, QKV, ldqkv, B, Kc, Vc, slot_stride, ldkv, slot, pos, n_heads, n_kv,
                                       head_dim, rot, inv_freq, o);
}

int gq_be_decode_attention(gq_backend *be, void *O, int ldo, void *QKV, int ldqkv, int B, void *Kc, void *Vc,
                           size_t slot_stride, int ldkv, const int32_t *slot, const int32_t *pos, int n_heads,
                           int n_kv, int head_dim, const float *inv_freq) {
    return gq_be_decode_attention_ex(be, O, ldo, QKV, ldqkv, B, Kc, Vc, slot_stride, ldkv, slot, pos, n_heads, n_kv,
                                     head_dim, head_dim, inv_freq, NULL);
}

/* ---- family ops: activations, norms, MoE routing ------------------------------------ */

static int check_act(const char *op, gq_act_kind act) {
    if (act != GQ_ACT_SILU && act != GQ_ACT_GELU_TANH)
        return gq_err(GQ_ERR_ARG, "%s: activation %d, expected GQ_ACT_SILU (%d) or GQ_ACT_GELU_TANH (%d)", op, (int)act,
                      (int)GQ_ACT_SILU, (int)GQ_ACT_GELU_TANH);
    return GQ_OK;
}

int gq_be_glu(gq_backend *be, void *A, int lda, const void *GU, int ldgu, int T, int I, gq_act_kind act) {
    CHECK(check_act("glu", act));
    CHECK(check_ld("glu", "A", lda, I));
    CHECK(check_ld("glu", "GU", ldgu, 2 * I));
    if (T <= 0) return T < 0 ? gq_err(GQ_ERR_ARG, "glu: T = %d", T) : GQ_OK;
    NEED(glu);
    return be->iface->glu(be, A, lda, GU, ldgu, T, I, act);
}

int gq_be_swiglu(gq_backend *be, void *A, int lda, const void *GU, int ldgu, int T, int I) {
    return gq_be_glu(be, A, lda, GU, ldgu, T, I, GQ_ACT_SILU);
}

int gq_be_act(gq_backend *be, void *X, int ld, int T, int n, gq_act_kind act) {
    CHECK(check_act("act", act));
    CHECK(check_ld("act", "X", ld, n));
    if (T <= 0) return T < 0 ? gq_err(GQ_ERR_ARG, "act: T = %d", T) : GQ_OK;
    NEED(act);
    return be->iface->act(be, X, ld, T, n, act);
}

int gq_be_layernorm(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                    const gq_bweight *b, float eps) {
    CHECK(check_ld("layernorm", "X", ldx, d));
    CHECK(check_ld("layernorm", "Y", ldy, d));
    if (w->rows * w->cols != d)
        return gq_err(GQ_ERR_ARG, "layernorm: weight has %d elements for width %d", w->rows * w->cols, d);
    if (b && !b->data) b = NULL;
    if (b && b->rows * b->cols != d)
        return gq_err(GQ_ERR_ARG, "layernorm: bias has %d elements for width %d", b->rows * b->cols, d);
    if (!(eps >= 0.0f)) return gq_err(GQ_ERR_ARG, "layernorm: eps %g, expected >= 0", (double)eps);
    if (T <= 0) return T < 0 ? gq_err(GQ_ERR_ARG, "layernorm: T = %d", T) : GQ_OK;
    NEED(layernorm);
    return be->iface->layernorm(be, Y, ldy, X, ldx, T, d, w, b, eps);
}

int gq_be_head_rmsnorm(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, const gq_bweight *w,
                       float eps) {
    if (n_heads < 1 || head_dim < 1)
        return gq_err(GQ_ERR_ARG, "head_rmsnorm: %d heads of %d dims, expected >= 1 of each", n_heads, head_dim);
    CHECK(check_ld("head_rmsnorm", "X", ld, n_heads * head_dim));
    if (w->rows * w->cols != head_dim)
        return gq_err(GQ_ERR_ARG, "head_rmsnorm: weight has %d elements for head_dim %d", w->rows * w->cols, head_dim);
    if (T <= 0) return T < 0 ? gq_err(GQ_ERR_ARG, "head_rmsnorm: T = %d", T) : GQ_OK;
    NEED(head_rmsnorm);
    return be->iface->head_rmsnorm(be, X, ld, T, n_heads, head_dim, w, eps);
}

/* Gather: idx[i] >= 0 is all that can be checked; that it is below X's row count is the
 * caller's guarantee (the op is not told X's rows). */
int gq_be_gather_rows(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx, int n, int d) {
    CHECK(check_ld("gather_rows", "X", ldx, d));
    CHECK(check_ld("gather_rows", "Y", ldy, d));
    if (n < 0) return gq_err(GQ_ERR_ARG, "gather_rows: n = %d", n);
    for (int i = 0; i < n; i++)
        if (idx[i] < 0) return gq_err(GQ_ERR_ARG, "gather_rows: idx[%d] = %d, expected a row index >= 0", i, idx[i]);
    if (n == 0) return GQ_OK;
    NEED(gather_rows);
    return be->iface->gather_rows(be, Y, ldy, X, ldx, idx, n, d);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* -1 if idx[0..n) are distinct, else a duplicated value. Increasing idx (the usual routing
 * order) cost one pass, others a sorted copy (n log n, microseconds for n ~ 10^4 tokens). */
static int32_t first_duplicate(const int32_t *idx, int n) {
    int sorted = 1;
    for (int i = 1; i < n && sorted; i++) sorted = idx[i] > idx[i - 1];
    if (sorted) return -1;
    int32_t *s = gq_malloc(sizeof(int32_t) * (size_t)n), dup = -1;
    memcpy(s, idx, sizeof(int32_t) * (size_t)n);
    qsort(s, (size_t)n, sizeof *s, cmp_i32);
    for (int i = 1; i < n && dup < 0; i++)
        if (s[i] == s[i - 1]) dup = s[i];
    free(s);
    return dup;
}

/* Scatter-add: idx[i] >= 0 and distinct are checked (distinct rows never race on a device);
 * that each is below Y's row count is the caller's guarantee (the op is not told Y's rows). */
int gq_be_scatter_add_rows(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx,
                           const float *w, int n, int d) {
    CHECK(check_ld("scatter_add_rows", "X", ldx, d));
    CHECK(check_ld("scatter_add_rows", "Y", ldy, d));
    if (n < 0) return gq_err(GQ_ERR_ARG, "scatter_add_rows: n = %d", n);
    for (int i = 0; i < n; i++)
        if (idx[i] < 0)
            return gq_err(GQ_ERR_ARG, "scatter_add_rows: idx[%d] = %d, expected a row index >= 0", i, idx[i]);
    int32_t dup = first_duplicate(idx, n);
    if (dup >= 0)
        return gq_err(GQ_ERR_ARG, "scatter_add_rows: row %d appears more than once in idx, expected distinct rows",
                      dup);
    if (n == 0) return GQ_OK;
    NEED(scatter_add_rows);
    return be->iface->scatter_add_rows(be, Y, ldy, X, ldx, idx, w, n, d);
}

int gq_be_add(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d) {
    CHECK(check_ld("add", "X", ldx, d));
    CHECK(check_ld("add", "Y", ldy, d));
    if (T <= 0) return T < 0 ? gq_err(GQ_ERR_ARG, "add: T = %d", T) : GQ_OK;
    NEED(add);
    return be->iface->add(be, Y, ldy, X, ldx, T, d);
}

/* ---- calibration and quantization ops ------------------------------------------------ */

int gq_be_hessian_accum(gq_backend *be, float *H, const void *X, int ldx, int T, int K) {
    CHECK(check_ld("hessian_accum", "X", ldx, K));
    if (T <= 0) return T < 0 ? gq_err(GQ_ERR_ARG, "hessian_accum: T = %d", T) : GQ_OK;
    NEED(hessian_accum);
    return be->iface->hessian_accum(be, H, X, ldx, T, K);
}

int gq_be_gptq(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res) {
    if (!W->data || W->rows < 1 || W->cols < 1) return gq_err(GQ_ERR_ARG, "gptq: empty weight");
    NEED(gptq);
    return be->iface->gptq(be, p, H, h_scale, W, res);
}

int gq_be_nll_ex(gq_backend *be, const void *X, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
                 float softcap, double *nll_sum, int64_t *count, float *logits_out) {
    CHECK(check_ld("nll", "X", ldx, Wlm->cols));
    if (T < 0) return gq_err(GQ_ERR_ARG, "nll: T = %d", T);
    if (!(softcap >= 0.0f) || isinf(softcap))
        return gq_err(GQ_ERR_ARG, "nll: softcap %g, expected a finite value >= 0 (0: none)", (double)softcap);
    for (int t = 0; t < T; t++)
        if (targets[t] >= Wlm->rows)
            return gq_err(GQ_ERR_ARG, "nll: target %d at position %d is outside the vocabulary of %d", targets[t], t,
                          Wlm->rows);
    if (T == 0) return GQ_OK;
    NEED(nll);
    return be->iface->nll(be, X, ldx, T, Wlm, targets, softcap, nll_sum, count, logits_out);
}

int gq_be_nll(gq_backend *be, const void *X, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
              double *nll_sum, int64_t *count, float *logits_out) {
    return gq_be_nll_ex(be, X, ldx, T, Wlm, targets, 0.0f, nll_sum, count, logits_out);
}
