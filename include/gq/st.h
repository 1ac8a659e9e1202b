/*
 * gq/st.h -- safetensors reader (single file or sharded checkpoint) and
 * streaming writer.
 *
 * File format (huggingface/safetensors):
 *   1. 8 bytes: N, little-endian u64, the JSON header length (gq caps it at
 *      100,000,000 bytes like the reference implementation).
 *   2. N bytes: UTF-8 JSON object. Each key except "__metadata__" is a tensor
 *      name mapping to {"dtype": "F16", "shape": [d0, ...],
 *      "data_offsets": [begin, end]}, offsets relative to the data section.
 *      "__metadata__" is an object of string -> string.
 *      Writers pad the header with spaces to a multiple of 8 bytes.
 *   3. The data section: the tensors' byte spans, which must be sorted,
 *      non-overlapping and tile the section exactly (no gaps, no trailer).
 *      end - begin == prod(shape) * dtype size, computed without overflow.
 *
 * A sharded checkpoint has model.safetensors.index.json:
 *   {"metadata": {...}, "weight_map": {"tensor name": "shard file name"}}.
 * Every weight_map entry must name an existing shard that contains that
 * tensor, and every tensor of every shard must be listed.
 *
 * Reading maps each file read-only with mmap; tensor data pointers point into
 * the mapping and stay valid until gq_st_close(). Every validation failure is
 * a GQ_ERR_FORMAT / GQ_ERR_IO naming the file (and tensor) and the problem.
 */
#ifndef GQ_ST_H
#define GQ_ST_H

#include "gq/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GQ_ST_MAX_DIMS 8
#define GQ_ST_MAX_HEADER 100000000ull

typedef struct {
    const char *name;
    gq_dtype dtype;
    int ndim;
    int64_t shape[GQ_ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const void *data; /* into the read-only mapping; aligned to the dtype size
                       * in files whose header length is a multiple of 8 (as
                       * every reference writer pads it); gq_st_read_f32
                       * copes with unaligned data */
    int file;         /* index of the shard holding it */
} gq_st_tensor;

typedef struct gq_st gq_st; /* opaque */

/* Open `path`: a .safetensors file, a model.safetensors.index.json, or a
 * directory (which must hold model.safetensors.index.json, or
 * model.safetensors, or exactly one *.safetensors file). */
int gq_st_open(gq_st **out, const char *path);
void gq_st_close(gq_st *st); /* NULL is a no-op */

int gq_st_count(const gq_st *st);
const gq_st_tensor *gq_st_at(const gq_st *st, int i); /* in file order (by data offset), shard by shard */
const gq_st_tensor *gq_st_find(const gq_st *st, const char *name); /* NULL if absent */

int gq_st_nfiles(const gq_st *st);
const char *gq_st_file_path(const gq_st *st, int i);
size_t gq_st_file_size(const gq_st *st, int i);
/* __metadata__ of the first file (value or NULL); and of the index "metadata"
 * (non-string values as JSON text, e.g. total_size "13477093376"; a key of
 * the first file wins over the same index key). */
const char *gq_st_meta(const gq_st *st, const char *key);
int gq_st_meta_count(const gq_st *st);
const char *gq_st_meta_key(const gq_st *st, int i);

/* Convert a float tensor (F32/F16/BF16/F64) to f32 into dst[numel].
 * Returns GQ_ERR_NUMERIC naming the tensor and the flat index of the first
 * NaN/Inf, GQ_ERR_FORMAT if the dtype is not a float type. */
int gq_st_read_f32(const gq_st *st, const gq_st_tensor *t, float *dst);

/* Tell the kernel the pages of t are no longer needed (bounded RSS while
 * streaming a big checkpoint layer by layer). Harmless if it fails. */
void gq_st_release(const gq_st *st, const gq_st_tensor *t);

/* Read t's pages into memory now (madvise WILLNEED, then one read per page):
 * run on a helper thread, it loads the next layer while the current one
 * computes. */
void gq_st_prefetch(const gq_st *st, const gq_st_tensor *t);

/* Check a tensor's shape (not its dtype: see t->dtype); error names file +
 * tensor and says "expected shape [a, b], got [c, d]". Pass ndim and dims;
 * ndim -1 = any shape, dims[i] -1 = any size (printed as "*"). */
int gq_st_check_shape(const gq_st *st, const gq_st_tensor *t, int ndim, const int64_t *dims);

/* ---- writer ------------------------------------------------------------- */
/*
 * The writer streams: each added tensor's bytes go straight to a temporary
 * data file of its shard, so memory stays small however big the model is.
 * finish() writes each shard as "<base>.safetensors" (one shard) or
 * "<base>-0000i-of-0000n.safetensors" plus "<base>.safetensors.index.json",
 * each first under a temporary name and renamed when complete. Tensors are
 * placed in each shard sorted by dtype size (descending) then name (the
 * reference writer sorts by dtype, then name: the same order unless two
 * dtypes of one size meet), so every tensor is aligned. __metadata__ always
 * contains "format": "pt".
 */
typedef struct gq_st_writer gq_st_writer;

/* max_shard_bytes == 0: never shard. `dir` is created if missing. Bad
 * arguments (duplicate name, byte size overflow, format != "pt") are
 * GQ_ERR_ARG, file system failures GQ_ERR_IO; both name the tensor/file. */
int gq_st_writer_init(gq_st_writer **out, const char *dir, const char *base, size_t max_shard_bytes);
int gq_st_writer_set_meta(gq_st_writer *w, const char *key, const char *value);
/* Copies `data` (nbytes = numel * dtype size). Duplicate names are an error. */
int gq_st_writer_add(gq_st_writer *w, const char *name, gq_dtype dt, int ndim, const int64_t *shape,
                     const void *data);
/* Writes headers and files; returns the number of shards in *nshards. */
int gq_st_writer_finish(gq_st_writer *w, int *nshards);
void gq_st_writer_free(gq_st_writer *w); /* removes temporaries if not finished */

/* Convenience: one-shot file with the given tensors (tests, small files). */
typedef struct {
    const char *name;
    gq_dtype dtype;
    int ndim;
    int64_t shape[GQ_ST_MAX_DIMS];
    const void *data;
} gq_st_item;
int gq_st_write_file(const char *path, const gq_st_item *items, int n, const char *const *meta_kv, int n_meta);

#ifdef __cplusplus
}
#endif
#endif /* GQ_ST_H */
