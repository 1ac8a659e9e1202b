/*
 * backend_impl.h (private) -- the backend vtable. Each backend fills one
 * `struct gq_backend_i` with designated initializers; backend.c dispatches.
 * Entries marked (optional) may be NULL; backend.c then says so in an error.
 * See gq/backend.h for the semantics of every entry.
 */
#ifndef GQ_BACKEND_IMPL_H
#define GQ_BACKEND_IMPL_H

#include "gq/backend.h"

struct gq_backend_i {
    void (*free)(gq_backend *be);
    void *(*alloc)(gq_backend *be, size_t bytes);
    void (*release)(gq_backend *be, void *p);
    int (*upload)(gq_backend *be, void *dst, const void *src, size_t bytes);
    int (*download)(gq_backend *be, void *dst, const void *src, size_t bytes);
    int (*memset0)(gq_backend *be, void *dst, size_t bytes);
    int (*upload_f32)(gq_backend *be, void *dst_act, const float *src, size_t n);
    int (*download_f32)(gq_backend *be, float *dst, const void *src_act, size_t n);
    int (*copy_act)(gq_backend *be, void *dst, const void *src, size_t n);
    int (*sync)(gq_backend *be);
    size_t (*free_bytes)(const gq_backend *be); /* (optional) */
    int (*fork)(gq_backend *be, gq_backend **out); /* (optional) gq_backend_fork */
    int (*bind_thread)(gq_backend *be);            /* (optional) gq_backend_bind_thread */
    /* (optional, all four or none) gq_be_graph_*; host_alloc / host_free (optional): pinned memory */
    int (*graph_begin)(gq_backend *be);
    int (*graph_end)(gq_backend *be, gq_bgraph **out);
    int (*graph_launch)(gq_backend *be, gq_bgraph *g);
    void (*graph_free)(gq_backend *be, gq_bgraph *g);
    void *(*host_alloc)(gq_backend *be, size_t bytes);
    void (*host_free)(gq_backend *be, void *p);
    int (*upload_pinned)(gq_backend *be, void *dst, const void *src, size_t bytes); /* (optional) */

    int (*weight_upload)(gq_backend *be, gq_bweight *w, const float *src, int rows, int cols);
    int (*weight_upload_raw)(gq_backend *be, gq_bweight *w, const void *src, gq_dtype dt, int rows, int cols);
    void (*weight_free)(gq_backend *be, gq_bweight *w);

    int (*linear)(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, const gq_bweight *W,
                  const gq_bweight *bias, int accumulate);
    int (*rmsnorm)(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                   float eps);
    int (*rope)(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, int rot, int pos0,
                const float *inv_freq);
    int (*attention)(gq_backend *be, void *O, int ldo, const void *Q, int ldq, const void *K, int ldk, const void *V,
                     int ldv, int Tq, int Tk, int n_heads, int n_kv, int head_dim, const gq_attn_opts *o);
    int (*glu)(gq_backend *be, void *A, int lda, const void *GU, int ldgu, int T, int I, gq_act_kind act);
    int (*act)(gq_backend *be, void *X, int ld, int T, int n, gq_act_kind act);
    int (*layernorm)(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d, const gq_bweight *w,
                     const gq_bweight *b, float eps);
    int (*head_rmsnorm)(gq_backend *be, void *X, int ld, int T, int n_heads, int head_dim, const gq_bweight *w,
                        float eps);
    int (*gather_rows)(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx, int n, int d);
    int (*scatter_add_rows)(gq_backend *be, void *Y, int ldy, const void *X, int ldx, const int32_t *idx,
                            const float *w, int n, int d);
    int (*add)(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, int d);
    int (*hessian_accum)(gq_backend *be, float *H, const void *X, int ldx, int T, int K);
    /* gq_gptq_drive (quant/gptq_driver.h) over the backend's gq_gptq_ops primitives */
    int (*gptq)(gq_backend *be, const gq_gptq_params *p, float *H, double h_scale, gq_bweight *W, gq_qresult *res);
    int (*nll)(gq_backend *be, const void *X, int ldx, int T, const gq_bweight *Wlm, const int32_t *targets,
               float softcap, double *nll_sum, int64_t *count, float *logits_out);
    /* (optional) int4 weights kept resident (gq_be_q4_supported, gq_be_weight_upload_q4): all
     * three NULL on backends without them. q4_supported NULL means 0; weight_upload_q4 gets parts
     * that backend.c has validated; weight_free_q4 frees w->q4 (and w->data if set). A backend
     * that sets them runs gq_be_linear on W->q4 weights in its `linear`. */
    int (*q4_supported)(const gq_backend *be);
    int (*weight_upload_q4)(gq_backend *be, gq_bweight *w, const gq_packed *const *parts, int nparts);
    void (*weight_free_q4)(gq_backend *be, gq_bweight *w);
    /* one batched decode step (rope, cache append, attention of every row) */
    int (*decode_attention)(gq_backend *be, void *O, int ldo, void *QKV, int ldqkv, int B, void *Kc, void *Vc,
                            size_t slot_stride, int ldkv, const int32_t *slot, const int32_t *pos, int n_heads,
                            int n_kv, int head_dim, int rot, const float *inv_freq, const gq_attn_opts *o);
};

struct gq_backend {
    const struct gq_backend_i *iface;
    void *ctx;
    char name[160];
    int is_gpu;
    gq_dtype act_dtype;
    size_t bytes_in_use, peak_bytes; /* maintained by backend.c for alloc/release */
    struct gq_alloc_table *allocs;    /* backend.c: size of each live allocation (NULL at construction) */
    /* the backend's scratch for int4 weights (CUDA: the fp16 dequantization buffer of the prefill
     * path, grown to the largest weight seen; from gq_be_alloc, freed by the backend's free) */
    void *q4_scratch;
    size_t q4_scratch_bytes;
};

/* Every backend's int4 weight object (gq_bweight.q4) starts with this header. */
typedef struct {
    size_t device_bytes; /* what gq_be_weight_bytes reports */
} gq_q4_head;

/* Constructors of the backends (backend_cpu.c, cuda/backend_cuda.cu). */
int gq_backend_cpu_init(gq_backend **out);
#ifdef GQ_USE_CUDA
int gq_backend_cuda_init(gq_backend **out, int device); /* declared in gq/backend_cuda.h too */
#endif

#endif /* GQ_BACKEND_IMPL_H */
