/*
 * st_write.c -- streaming safetensors writer.
 *
 * add() appends each tensor's bytes to a temporary data file of the current
 * shard in the output directory (".<base>-<shard>.<pid>.<n>.data.tmp") and
 * remembers name/dtype/shape/offset, so memory stays O(number of tensors).
 * finish() writes every shard: 8-byte header length, JSON header padded with
 * spaces to a multiple of 8, then the tensors sorted by dtype size
 * (descending) and name, copied from the temporary file with pread. Each
 * shard goes to "<final>.tmp.<pid>", is fsynced and renamed; with several
 * shards "<base>.safetensors.index.json" follows (gq_write_file_atomic).
 */
#include "gq/st.h"
#include "base/json_util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WR_COPY_CHUNK (1u << 20) /* bytes per pread/write while copying */

typedef struct {
    char *name;
    gq_dtype dtype;
    int ndim;
    int64_t shape[GQ_ST_MAX_DIMS];
    size_t nbytes;
    size_t off; /* in the shard's temporary data file */
    int shard;
} wr_entry;

typedef struct {
    char *tmp_path; /* temporary data file */
    int fd;         /* -1 once closed */
    size_t size;    /* data bytes written so far */
    int ntensors;
} wr_shard;

struct gq_st_writer {
    char *dir, *base;
    char *single_path; /* gq_st_write_file: exact output path (one shard) */
    char *label;       /* "<dir>/<base>.safetensors", for messages */
    size_t max_shard;
    wr_entry *e; /* [n] in order of add() */
    int n, cap;
    int *hash; /* [hcap] open addressing over e[], -1 = empty */
    size_t hcap;
    wr_shard *sh; /* [nsh] */
    int nsh;
    char **mkey, **mval; /* [nmeta] user __metadata__ */
    int nmeta;
    int finished;
};

/* ---- helpers ------------------------------------------------------------ */

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Slot of `name` in the hash: its entry index, or -1 (and *slot = the free
 * slot where it would go). */
static int hash_find(const gq_st_writer *w, const char *name, size_t *slot) {
    size_t mask = w->hcap - 1, i = (size_t)fnv1a(name) & mask;
    while (w->hash[i] >= 0) {
        if (strcmp(w->e[w->hash[i]].name, name) == 0) {
            *slot = i;
            return w->hash[i];
        }
        i = (i + 1) & mask;
    }
    *slot = i;
    return -1;
}

static void hash_grow(gq_st_writer *w) {
    size_t old_cap = w->hcap;
    int *old = w->hash;
    w->hcap = old_cap ? old_cap * 2 : 64;
    w->hash = gq_malloc(sizeof(int) * w->hcap);
    for (size_t i = 0; i < w->hcap; i++) w->hash[i] = -1;
    for (int k = 0; k < w->n; k++) {
        size_t slot;
        hash_find(w, w->e[k].name, &slot);
        w->hash[slot] = k;
    }
    free(old);
}

static int valid_utf8(const char *s) {
    json_t *j = json_string(s); /* jansson validates UTF-8 */
    json_decref(j);
    return j != NULL;
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t k = write(fd, p, len);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

static int pwrite_all(int fd, const void *buf, size_t len, size_t off) {
    const char *p = buf;
    while (len) {
        ssize_t k = pwrite(fd, p, len, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        off += (size_t)k;
        len -= (size_t)k;
    }
    return 0;
}

static const char *shape_text(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd); /* best effort: makes the renames durable */
    close(fd);
}

/* ---- init / meta / add -------------------------------------------------- */

int gq_st_writer_init(gq_st_writer **out, const char *dir, const char *base, size_t max_shard_bytes) {
    GQ_ASSERT(out && dir && base);
    *out = NULL;
    if (!base[0] || strchr(base, '/'))
        return gq_err(GQ_ERR_ARG, "%s: output base name '%s' must be a non-empty file name without '/'", dir,
                      base);
    int rc = gq_mkdirs(dir);
    if (rc) return rc;
    gq_st_writer *w = gq_calloc(1, sizeof *w);
    w->dir = gq_strdup(dir);
    w->base = gq_strdup(base);
    w->max_shard = max_shard_bytes;
    size_t n = strlen(dir) + strlen(base) + 32;
    w->label = gq_malloc(n);
    snprintf(w->label, n, "%s/%s.safetensors", dir, base);
    hash_grow(w);
    *out = w;
    return GQ_OK;
}

int gq_st_writer_set_meta(gq_st_writer *w, const char *key, const char *value) {
    GQ_ASSERT(w && key && value);
    if (w->finished) return gq_err(GQ_ERR_ARG, "%s: set_meta('%s') after finish", w->label, key);
    if (!key[0] || !valid_utf8(key) || !valid_utf8(value))
        return gq_err(GQ_ERR_ARG, "%s: __metadata__ key '%s': key and value must be non-empty / valid UTF-8",
                      w->label, key);
    if (strcmp(key, "format") == 0 && strcmp(value, "pt") != 0)
        return gq_err(GQ_ERR_ARG, "%s: __metadata__ \"format\" must be \"pt\" (loaders check it), got \"%s\"",
                      w->label, value);
    for (int i = 0; i < w->nmeta; i++) {
        if (strcmp(w->mkey[i], key) == 0) {
            free(w->mval[i]);
            w->mval[i] = gq_strdup(value);
            return GQ_OK;
        }
    }
    w->mkey = gq_realloc(w->mkey, sizeof(char *) * (size_t)(w->nmeta + 1));
    w->mval = gq_realloc(w->mval, sizeof(char *) * (size_t)(w->nmeta + 1));
    w->mkey[w->nmeta] = gq_strdup(key);
    w->mval[w->nmeta] = gq_strdup(value);
    w->nmeta++;
    return GQ_OK;
}

static int open_shard(gq_st_writer *w) {
    static atomic_uint counter; /* distinguishes writers of one process */
    size_t n = strlen(w->dir) + strlen(w->base) + 80;
    char *p = gq_malloc(n);
    snprintf(p, n, "%s/.%s-%05d.%d.%u.data.tmp", w->dir, w->base, w->nsh + 1, (int)getpid(),
             atomic_fetch_add(&counter, 1u));
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = gq_err(GQ_ERR_IO, "%s: cannot create temporary file: %s", p, strerror(errno));
        free(p);
        return rc;
    }
    w->sh = gq_realloc(w->sh, sizeof(wr_shard) * (size_t)(w->nsh + 1));
    w->sh[w->nsh++] = (wr_shard){.tmp_path = p, .fd = fd, .size = 0, .ntensors = 0};
    return GQ_OK;
}

int gq_st_writer_add(gq_st_writer *w, const char *name, gq_dtype dt, int ndim, const int64_t *shape,
                     const void *data) {
    GQ_ASSERT(w && name);
    if (w->finished) return gq_err(GQ_ERR_ARG, "%s: tensor '%s' added after finish", w->label, name);
    if (!name[0] || strcmp(name, "__metadata__") == 0 || !valid_utf8(name))
        return gq_err(GQ_ERR_ARG, "%s: invalid tensor name '%s' (empty, \"__metadata__\" or not UTF-8)", w->label,
                      name);
    if ((unsigned)dt >= GQ_DT_COUNT)
        return gq_err(GQ_ERR_ARG, "%s: tensor '%s': invalid dtype %d", w->label, name, (int)dt);
    if (ndim < 0 || ndim > GQ_ST_MAX_DIMS || (ndim > 0 && !shape))
        return gq_err(GQ_ERR_ARG, "%s: tensor '%s': ndim %d, expected 0..%d", w->label, name, ndim, GQ_ST_MAX_DIMS);
    size_t numel = 1, nbytes;
    int ok = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return gq_err(GQ_ERR_ARG, "%s: tensor '%s': shape[%d] is %lld, expected >= 0", w->label, name, i,
                          (long long)shape[i]);
        if (ok && !gq_mul_size(numel, (size_t)shape[i], &numel)) ok = 0;
    }
    char sbuf[256];
    if (!ok || !gq_mul_size(numel, gq_dtype_size(dt), &nbytes) || nbytes > (size_t)INT64_MAX)
        return gq_err(GQ_ERR_ARG, "%s: tensor '%s': shape %s (%s): byte size overflows", w->label, name,
                      shape_text(sbuf, sizeof sbuf, ndim, shape), gq_dtype_name(dt));
    if (nbytes && !data) return gq_err(GQ_ERR_ARG, "%s: tensor '%s': data is NULL", w->label, name);
    size_t slot;
    if (hash_find(w, name, &slot) >= 0)
        return gq_err(GQ_ERR_ARG, "%s: tensor '%s' added twice (names must be unique)", w->label, name);

    wr_shard *cur = w->nsh ? &w->sh[w->nsh - 1] : NULL;
    size_t after;
    if (!cur || (w->max_shard && cur->ntensors > 0 &&
                 (!gq_add_size(cur->size, nbytes, &after) || after > w->max_shard))) {
        int rc = open_shard(w);
        if (rc) return rc;
        cur = &w->sh[w->nsh - 1];
    }
    /* pwrite at the recorded size: a failed add leaves nothing counted. */
    if (nbytes && pwrite_all(cur->fd, data, nbytes, cur->size) != 0)
        return gq_err(GQ_ERR_IO, "%s: writing tensor '%s' (%zu bytes) failed: %s", cur->tmp_path, name, nbytes,
                      strerror(errno));

    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->e = gq_realloc(w->e, sizeof(wr_entry) * (size_t)w->cap);
    }
    wr_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = gq_strdup(name);
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->nbytes = nbytes;
    e->off = cur->size;
    e->shard = w->nsh - 1;
    w->hash[slot] = w->n++;
    cur->size += nbytes;
    cur->ntensors++;
    if ((size_t)w->n * 2 > w->hcap) hash_grow(w);
    return GQ_OK;
}

/* ---- finish --------------------------------------------------------------- */

static int cmp_entry_ptr(const void *a, const void *b) {
    const wr_entry *x = *(const wr_entry *const *)a, *y = *(const wr_entry *const *)b;
    size_t sx = gq_dtype_size(x->dtype), sy = gq_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1; /* larger dtype first: every tensor aligned */
    return strcmp(x->name, y->name);
}

/* The header text of one shard (tensors in `order`), padded with spaces to
 * a multiple of 8; *len its length. */
static char *shard_header(const gq_st_writer *w, wr_entry **order, int n, size_t *len) {
    json_t *h = json_object(), *meta = json_object();
    json_object_set_new(meta, "format", json_string("pt"));
    for (int i = 0; i < w->nmeta; i++) json_object_set_new(meta, w->mkey[i], json_string(w->mval[i]));
    json_object_set_new(h, "__metadata__", meta);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const wr_entry *e = order[i];
        json_t *shape = json_array(), *offs = json_array(), *t = json_object();
        for (int d = 0; d < e->ndim; d++) json_array_append_new(shape, json_integer((json_int_t)e->shape[d]));
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + e->nbytes)));
        json_object_set_new(t, "dtype", json_string(gq_dtype_name(e->dtype)));
        json_object_set_new(t, "shape", shape);
        json_object_set_new(t, "data_offsets", offs);
        int set = json_object_set_new(h, e->name, t);
        GQ_ASSERT(set == 0); /* names were checked (UTF-8, unique) in add() */
        off += e->nbytes;
    }
    char *txt = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    GQ_ASSERT(txt);
    size_t tl = strlen(txt), padded = (tl + 7) & ~(size_t)7;
    char *out = gq_malloc(padded + 1);
    memcpy(out, txt, tl);
    memset(out + tl, ' ', padded - tl);
    out[padded] = 0;
    free(txt);
    *len = padded;
    return out;
}

/* Write shard s to `path` (via path.tmp.<pid>, fsync, rename). */
static int write_shard(gq_st_writer *w, int s, const char *path, char *buf) {
    wr_shard *sh = &w->sh[s];
    wr_entry **order = gq_malloc(sizeof(wr_entry *) * (size_t)(sh->ntensors + 1));
    int n = 0;
    for (int i = 0; i < w->n; i++)
        if (w->e[i].shard == s) order[n++] = &w->e[i];
    GQ_ASSERT(n == sh->ntensors);
    qsort(order, (size_t)n, sizeof *order, cmp_entry_ptr);
    size_t hlen;
    char *header = shard_header(w, order, n, &hlen);

    size_t tn = strlen(path) + 32;
    char *tmp = gq_malloc(tn);
    snprintf(tmp, tn, "%s.tmp.%d", path, (int)getpid());
    int rc = GQ_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = gq_err(GQ_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    if (write_all(fd, len8, 8) || write_all(fd, header, hlen)) {
        rc = gq_err(GQ_ERR_IO, "%s: write error: %s", tmp, strerror(errno));
        goto out;
    }
    for (int i = 0; i < n && rc == GQ_OK; i++) {
        size_t done = 0;
        while (done < order[i]->nbytes) {
            size_t want = order[i]->nbytes - done;
            if (want > WR_COPY_CHUNK) want = WR_COPY_CHUNK;
            ssize_t r = pread(sh->fd, buf, want, (off_t)(order[i]->off + done));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                rc = gq_err(GQ_ERR_IO, "%s: reading back tensor '%s' failed: %s", sh->tmp_path, order[i]->name,
                            r < 0 ? strerror(errno) : "unexpected end of file");
                break;
            }
            if (write_all(fd, buf, (size_t)r)) {
                rc = gq_err(GQ_ERR_IO, "%s: writing tensor '%s' failed: %s", tmp, order[i]->name, strerror(errno));
                break;
            }
            done += (size_t)r;
        }
    }
    if (rc == GQ_OK && fsync(fd) != 0) rc = gq_err(GQ_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == GQ_OK) rc = gq_err(GQ_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    fd = -1;
    if (rc == GQ_OK && rename(tmp, path) != 0)
        rc = gq_err(GQ_ERR_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
out:
    if (fd >= 0) close(fd);
    if (rc != GQ_OK) unlink(tmp);
    free(tmp);
    free(header);
    free(order);
    return rc;
}

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp((*(const wr_entry *const *)a)->name, (*(const wr_entry *const *)b)->name);
}

static char *shard_name(const gq_st_writer *w, int s) {
    size_t n = strlen(w->base) + 64;
    char *p = gq_malloc(n);
    if (w->nsh == 1) snprintf(p, n, "%s.safetensors", w->base);
    else snprintf(p, n, "%s-%05d-of-%05d.safetensors", w->base, s + 1, w->nsh);
    return p;
}

static int write_index(gq_st_writer *w) {
    wr_entry **byname = gq_malloc(sizeof(wr_entry *) * (size_t)(w->n + 1));
    size_t total = 0;
    for (int i = 0; i < w->n; i++) {
        byname[i] = &w->e[i];
        total += w->e[i].nbytes;
    }
    qsort(byname, (size_t)w->n, sizeof *byname, cmp_entry_name);
    char **names = gq_malloc(sizeof(char *) * (size_t)w->nsh);
    for (int s = 0; s < w->nsh; s++) names[s] = shard_name(w, s);
    json_t *root = json_object(), *meta = json_object(), *wm = json_object();
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    for (int i = 0; i < w->n; i++) json_object_set_new(wm, byname[i]->name, json_string(names[byname[i]->shard]));
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "weight_map", wm);
    size_t pn = strlen(w->dir) + strlen(w->base) + 32;
    char *path = gq_malloc(pn);
    snprintf(path, pn, "%s/%s.safetensors.index.json", w->dir, w->base);
    int rc = gq_json_write_file(path, root, JSON_INDENT(2));
    free(path);
    json_decref(root);
    for (int s = 0; s < w->nsh; s++) free(names[s]);
    free(names);
    free(byname);
    return rc;
}

/* A previous run into the same directory may have left the other layout:
 * a stale "<base>.safetensors.index.json" would shadow a new single file
 * (gq_st_open prefers the index), a stale "<base>.safetensors" would shadow
 * new shards (transformers prefers model.safetensors). Remove it. */
static void remove_shadowing(const gq_st_writer *w) {
    size_t n = strlen(w->base) + 32;
    char *name = gq_malloc(n);
    snprintf(name, n, w->nsh > 1 ? "%s.safetensors" : "%s.safetensors.index.json", w->base);
    char *p = gq_path_join(w->dir, name);
    struct stat sb;
    if (lstat(p, &sb) == 0 && S_ISREG(sb.st_mode)) {
        gq_warn("%s: removing stale %s from an earlier run (it would shadow the new output)", w->dir, name);
        unlink(p);
    }
    free(p);
    free(name);
}

static void remove_temporaries(gq_st_writer *w) {
    for (int s = 0; s < w->nsh; s++) {
        if (w->sh[s].fd >= 0) close(w->sh[s].fd);
        w->sh[s].fd = -1;
        if (w->sh[s].tmp_path) unlink(w->sh[s].tmp_path);
    }
}

int gq_st_writer_finish(gq_st_writer *w, int *nshards) {
    GQ_ASSERT(w);
    if (w->finished) return gq_err(GQ_ERR_ARG, "%s: finish called twice", w->label);
    if (w->nsh == 0) { /* no tensors: one shard with only __metadata__ */
        w->sh = gq_calloc(1, sizeof(wr_shard));
        w->sh[0].fd = -1;
        w->nsh = 1;
    }
    char *buf = gq_malloc(WR_COPY_CHUNK);
    int rc = GQ_OK;
    for (int s = 0; s < w->nsh && rc == GQ_OK; s++) {
        char *path;
        if (w->nsh == 1 && w->single_path) {
            path = gq_strdup(w->single_path);
        } else {
            char *name = shard_name(w, s);
            path = gq_path_join(w->dir, name);
            free(name);
        }
        rc = write_shard(w, s, path, buf);
        free(path);
    }
    free(buf);
    if (rc != GQ_OK) return rc;
    remove_temporaries(w);
    if (!w->single_path) remove_shadowing(w);
    if (w->nsh > 1) rc = write_index(w);
    if (rc != GQ_OK) return rc;
    fsync_dir(w->dir);
    w->finished = 1;
    if (nshards) *nshards = w->nsh;
    return GQ_OK;
}

void gq_st_writer_free(gq_st_writer *w) {
    if (!w) return;
    remove_temporaries(w); /* after finish: already gone, unlink is a no-op */
    for (int s = 0; s < w->nsh; s++) free(w->sh[s].tmp_path);
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    for (int i = 0; i < w->nmeta; i++) {
        free(w->mkey[i]);
        free(w->mval[i]);
    }
    free(w->sh);
    free(w->e);
    free(w->hash);
    free(w->mkey);
    free(w->mval);
    free(w->dir);
    free(w->base);
    free(w->single_path);
    free(w->label);
    free(w);
}

/* ---- one-shot ------------------------------------------------------------ */

int gq_st_write_file(const char *path, const gq_st_item *items, int n, const char *const *meta_kv, int n_meta) {
    GQ_ASSERT(path && (n == 0 || items) && (n_meta == 0 || meta_kv));
    const char *slash = strrchr(path, '/');
    char *dir = slash ? gq_strdup(path) : gq_strdup(".");
    if (slash) dir[slash == path ? 1 : slash - path] = 0;
    const char *file = slash ? slash + 1 : path;
    if (!file[0]) {
        free(dir);
        return gq_err(GQ_ERR_ARG, "%s: expected a file path", path);
    }
    gq_st_writer *w = NULL;
    int rc = gq_st_writer_init(&w, dir, file, 0);
    free(dir);
    if (rc) return rc;
    w->single_path = gq_strdup(path);
    free(w->label);
    w->label = gq_strdup(path);
    for (int i = 0; i < n_meta && rc == GQ_OK; i++) rc = gq_st_writer_set_meta(w, meta_kv[2 * i], meta_kv[2 * i + 1]);
    for (int i = 0; i < n && rc == GQ_OK; i++)
        rc = gq_st_writer_add(w, items[i].name, items[i].dtype, items[i].ndim, items[i].shape, items[i].data);
    if (rc == GQ_OK) rc = gq_st_writer_finish(w, NULL);
    gq_st_writer_free(w);
    return rc;
}
