/*
 * st_read.c -- safetensors reader: open a file, an index or a directory,
 * validate every header like a hostile parser (huggingface/safetensors
 * tensor.rs rules), look tensors up by name, convert float tensors to f32.
 *
 * Layout of a gq_st:
 *   files[nfiles]       one read-only mapping per .safetensors file (shard)
 *   tensors[ntensors]   file by file, each file's tensors by data offset
 *   by_name[ntensors]   indices into tensors[], sorted by name (bsearch)
 *   meta_key/meta_val   __metadata__ of the first file, then the index's
 *                       "metadata" keys not already present
 */
#include "gq/st.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>

#include "base/json_util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *path;
    const uint8_t *map; /* [size] whole file, read-only */
    size_t size;
} st_file;

struct gq_st {
    st_file *files;
    int nfiles;
    gq_st_tensor *tensors; /* [ntensors] */
    int ntensors;
    int *by_name;                /* [ntensors] indices into tensors, sorted by name */
    char **meta_key, **meta_val; /* [nmeta] */
    int nmeta;
};

/* ---- small helpers ---------------------------------------------------- */

static uint64_t read_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* "[a, b, c]" into buf; dims < 0 print as "*" (any). */
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *dims) {
    size_t k = 0;
    buf[0] = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int i = 0; i < ndim && k < cap; i++) {
        if (dims[i] < 0)
            k += (size_t)snprintf(buf + k, cap - k, "%s*", i ? ", " : "");
        else
            k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)dims[i]);
    }
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

static int is_float_dtype(gq_dtype dt) {
    return dt == GQ_DT_F32 || dt == GQ_DT_F16 || dt == GQ_DT_BF16 || dt == GQ_DT_F64;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Directory part of a path ("." if none); newly allocated. */
static char *path_dirname(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return gq_strdup(".");
    if (slash == path) return gq_strdup("/");
    size_t n = (size_t)(slash - path);
    char *d = gq_malloc(n + 1);
    memcpy(d, path, n);
    d[n] = 0;
    return d;
}

static void meta_add(gq_st *st, const char *key, const char *val) {
    for (int i = 0; i < st->nmeta; i++)
        if (strcmp(st->meta_key[i], key) == 0) return; /* first one wins */
    st->meta_key = gq_realloc(st->meta_key, sizeof(char *) * (size_t)(st->nmeta + 1));
    st->meta_val = gq_realloc(st->meta_val, sizeof(char *) * (size_t)(st->nmeta + 1));
    st->meta_key[st->nmeta] = gq_strdup(key);
    st->meta_val[st->nmeta] = gq_strdup(val);
    st->nmeta++;
}

/* ---- one .safetensors file -------------------------------------------- */

/* Sort a file's tensors by data offset (then end, then name) for the tiling
 * check; zero-size tensors sharing an offset stay in a defined order. */
static int cmp_by_offset(const void *a, const void *b) {
    const gq_st_tensor *x = a, *y = b;
    if (x->data != y->data) return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Validate one header entry and fill t (name and data set by the caller's
 * loop). data_base: start of the data section, data_size: its length. */
static int parse_entry(const char *path, const char *name, json_t *val, const uint8_t *data_base, size_t data_size,
                       gq_st_tensor *t) {
    if (!json_is_object(val))
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': expected an object with dtype, shape and data_offsets, got %s",
                      path, name, gq_json_kind(val));
    json_t *jd = json_object_get(val, "dtype");
    json_t *js = json_object_get(val, "shape");
    json_t *jo = json_object_get(val, "data_offsets");
    if (!jd) return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': missing \"dtype\"", path, name);
    if (!js) return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': missing \"shape\"", path, name);
    if (!jo) return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': missing \"data_offsets\"", path, name);
    if (!json_is_string(jd))
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': \"dtype\" must be a string, got %s", path, name,
                      gq_json_kind(jd));
    if (gq_dtype_parse(json_string_value(jd), &t->dtype) != GQ_OK)
        return gq_err(GQ_ERR_FORMAT,
                      "%s: tensor '%s': unknown dtype \"%.64s\" (expected F32, F16, BF16, F64, I64, "
                      "I32, I16, I8, U8 or BOOL)",
                      path, name, json_string_value(jd));

    if (!json_is_array(js))
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': \"shape\" must be an array, got %s", path, name,
                      gq_json_kind(js));
    size_t nd = json_array_size(js);
    if (nd > GQ_ST_MAX_DIMS)
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': shape has %zu dimensions, expected at most %d", path, name, nd,
                      GQ_ST_MAX_DIMS);
    t->ndim = (int)nd;
    size_t numel = 1;
    int overflow = 0;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d))
            return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': shape[%zu] must be a non-negative integer, got %s", path,
                          name, i, gq_json_kind(d));
        json_int_t v = json_integer_value(d);
        if (v < 0)
            return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is %lld, expected a non-negative integer", path,
                          name, i, (long long)v);
        t->shape[i] = (int64_t)v;
        /* Like tensor.rs: the running product overflows -> error, even if a
         * later dimension is 0. */
        if (!overflow && !gq_mul_size(numel, (size_t)v, &numel)) overflow = 1;
    }
    char sbuf[256];
    size_t dsize = gq_dtype_size(t->dtype);
    if (overflow || numel > (size_t)INT64_MAX || !gq_mul_size(numel, dsize, &t->nbytes))
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': shape %s: byte size overflows (%s)", path, name,
                      shape_str(sbuf, sizeof sbuf, t->ndim, t->shape), gq_dtype_name(t->dtype));
    t->numel = (int64_t)numel;

    if (!json_is_array(jo))
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" must be an array [begin, end], got %s", path,
                      name, gq_json_kind(jo));
    if (json_array_size(jo) != 2)
        return gq_err(GQ_ERR_FORMAT,
                      "%s: tensor '%s': \"data_offsets\" must be an array [begin, end], got %zu elements", path, name,
                      json_array_size(jo));
    json_int_t off[2];
    for (int i = 0; i < 2; i++) {
        json_t *o = json_array_get(jo, (size_t)i);
        if (!json_is_integer(o) || json_integer_value(o) < 0)
            return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': data_offsets[%d] must be a non-negative integer, got %s",
                          path, name, i, json_is_integer(o) ? "a negative integer" : gq_json_kind(o));
        off[i] = json_integer_value(o);
    }
    size_t begin = (size_t)off[0], end = (size_t)off[1];
    if (begin > end)
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': data_offsets [%zu, %zu]: begin is after end", path, name, begin,
                      end);
    if (end - begin != t->nbytes)
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': data_offsets span %zu bytes, expected %zu (%s %s)", path, name,
                      end - begin, t->nbytes, gq_dtype_name(t->dtype), shape_str(sbuf, sizeof sbuf, t->ndim, t->shape));
    if (end > data_size)
        return gq_err(GQ_ERR_FORMAT,
                      "%s: tensor '%s': data_offsets [%zu, %zu] run past the end of the data section "
                      "(%zu bytes)",
                      path, name, begin, end, data_size);
    t->data = data_base + begin;
    return GQ_OK;
}

static int parse_metadata(gq_st *st, const char *path, json_t *val, int record) {
    if (!json_is_object(val))
        return gq_err(GQ_ERR_FORMAT, "%s: __metadata__ must be an object of strings, got %s", path, gq_json_kind(val));
    const char *k;
    json_t *v;
    json_object_foreach(val, k, v) {
        if (!json_is_string(v))
            return gq_err(GQ_ERR_FORMAT, "%s: __metadata__ key '%s': expected a string value, got %s", path, k,
                          gq_json_kind(v));
    }
    if (record) json_object_foreach(val, k, v) meta_add(st, k, json_string_value(v));
    return GQ_OK;
}

/* Check that the spans of tensors[first..ntensors) tile [0, data_size). */
static int check_tiling(gq_st *st, const char *path, int first, const uint8_t *data_base, size_t data_size) {
    gq_st_tensor *ts = st->tensors + first;
    int n = st->ntensors - first;
    if (n > 1) qsort(ts, (size_t)n, sizeof *ts, cmp_by_offset);
    size_t expect = 0;
    for (int i = 0; i < n; i++) {
        size_t b = (size_t)((const uint8_t *)ts[i].data - data_base), e = b + ts[i].nbytes;
        if (b < expect)
            return gq_err(GQ_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%zu, %zu] overlap tensor '%s', which ends at %zu", path,
                          ts[i].name, b, e, ts[i - 1].name, expect);
        if (b > expect)
            return gq_err(GQ_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%zu, %zu] leave a gap of %zu bytes, expected "
                          "begin %zu",
                          path, ts[i].name, b, e, b - expect, expect);
        expect = e;
    }
    if (expect != data_size)
        return gq_err(GQ_ERR_FORMAT,
                      "%s: %zu trailing bytes after the last tensor (data section is %zu bytes, tensors "
                      "cover %zu)",
                      path, data_size - expect, data_size, expect);
    return GQ_OK;
}

/* Map, validate and append one file's tensors. */
static int load_file(gq_st *st, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return gq_err(GQ_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return gq_err(GQ_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return gq_err(GQ_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        return gq_err(GQ_ERR_FORMAT, "%s: file is %zu bytes, expected at least 8 (the header length)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int merr = errno;
    close(fd);
    if (map == MAP_FAILED) return gq_err(GQ_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, size, strerror(merr));

    /* Register the mapping first: gq_st_close unmaps it on any error below. */
    int fi = st->nfiles;
    st->files = gq_realloc(st->files, sizeof(st_file) * (size_t)(fi + 1));
    st->files[fi] = (st_file){.path = gq_strdup(path), .map = map, .size = size};
    st->nfiles++;

    const uint8_t *m = map;
    uint64_t hlen = read_le64(m);
    if (hlen > GQ_ST_MAX_HEADER)
        return gq_err(GQ_ERR_FORMAT, "%s: header length %llu exceeds the limit of %llu bytes", path,
                      (unsigned long long)hlen, GQ_ST_MAX_HEADER);
    if (hlen > size - 8)
        return gq_err(GQ_ERR_FORMAT,
                      "%s: header length %llu runs past the end of the file (%zu bytes after the "
                      "8-byte length)",
                      path, (unsigned long long)hlen, size - 8);
    const uint8_t *data_base = m + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;

    json_error_t je;
    json_t *h = json_loadb((const char *)m + 8, (size_t)hlen, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!h)
        return gq_err(GQ_ERR_FORMAT, "%s: header is not valid JSON: %s (line %d, column %d)", path, je.text, je.line,
                      je.column);
    int rc = GQ_OK;
    if (!json_is_object(h)) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: header must be a JSON object, got %s", path, gq_json_kind(h));
        goto out;
    }
    size_t nkeys = json_object_size(h);
    if (nkeys > (size_t)(INT32_MAX - st->ntensors)) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: too many tensors (%zu)", path, nkeys);
        goto out;
    }
    st->tensors = gq_realloc(st->tensors, sizeof(gq_st_tensor) * ((size_t)st->ntensors + nkeys + 1));
    int first = st->ntensors;
    const char *key;
    json_t *val;
    json_object_foreach(h, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            rc = parse_metadata(st, path, val, fi == 0);
            if (rc) goto out;
            continue;
        }
        gq_st_tensor *t = &st->tensors[st->ntensors];
        memset(t, 0, sizeof *t);
        rc = parse_entry(path, key, val, data_base, data_size, t);
        if (rc) goto out;
        t->name = gq_strdup(key);
        t->file = fi;
        st->ntensors++;
    }
    rc = check_tiling(st, path, first, data_base, data_size);
out:
    json_decref(h);
    return rc;
}

/* ---- name lookup ------------------------------------------------------- */

/* qsort has no context argument in C11: the table being sorted is passed in
 * a thread-local, so opens on different threads do not interfere. */
static _Thread_local const gq_st *sort_ctx;

static int cmp_name_idx(const void *a, const void *b) {
    const gq_st_tensor *ts = sort_ctx->tensors;
    return strcmp(ts[*(const int *)a].name, ts[*(const int *)b].name);
}

static int build_name_index(gq_st *st) {
    st->by_name = gq_malloc(sizeof(int) * (size_t)(st->ntensors + 1));
    for (int i = 0; i < st->ntensors; i++) st->by_name[i] = i;
    sort_ctx = st;
    qsort(st->by_name, (size_t)st->ntensors, sizeof(int), cmp_name_idx);
    sort_ctx = NULL;
    for (int i = 1; i < st->ntensors; i++) {
        const gq_st_tensor *a = &st->tensors[st->by_name[i - 1]], *b = &st->tensors[st->by_name[i]];
        if (strcmp(a->name, b->name) == 0)
            return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' is also in %s", st->files[b->file].path, b->name,
                          st->files[a->file].path);
    }
    return GQ_OK;
}

const gq_st_tensor *gq_st_find(const gq_st *st, const char *name) {
    if (!st || !name) return NULL;
    int lo = 0, hi = st->ntensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const gq_st_tensor *t = &st->tensors[st->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ---- index ------------------------------------------------------------ */

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Index metadata values may be numbers ("total_size"); keep them as text. */
static char *json_value_text(json_t *v) {
    char buf[64];
    if (json_is_string(v)) return gq_strdup(json_string_value(v));
    if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        return gq_strdup(buf);
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    char *r = gq_strdup(s ? s : "");
    free(s);
    return r;
}

/* shards[*nsh]: the distinct shard names of weight_map wm (pointers into it), sorted
 * (model-00001-of-... first); each a plain file name. */
static int index_shards(const char *ipath, json_t *wm, const char ***shards, size_t *nsh) {
    const char **sh = gq_malloc(sizeof(char *) * json_object_size(wm));
    size_t n = 0;
    const char *tname;
    json_t *v;
    *shards = sh;
    json_object_foreach(wm, tname, v) {
        if (!json_is_string(v))
            return gq_err(GQ_ERR_FORMAT, "%s: weight_map['%s']: expected a shard file name string, got %s", ipath,
                          tname, gq_json_kind(v));
        const char *s = json_string_value(v);
        if (!s[0] || strchr(s, '/') || strstr(s, ".."))
            return gq_err(GQ_ERR_FORMAT,
                          "%s: weight_map['%s']: shard name '%s' must be a plain file name next to the "
                          "index (no '/' or '..')",
                          ipath, tname, s);
        sh[n++] = s;
    }
    qsort(sh, n, sizeof(char *), cmp_str_ptr);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || strcmp(sh[u - 1], sh[i]) != 0) sh[u++] = sh[i];
    *nsh = u;
    return GQ_OK;
}

/* weight_map wm and the shards' tensors agree: every tensor of every shard is listed for that shard,
 * and every listed tensor is in its shard. */
static int index_check(const gq_st *st, const char *ipath, json_t *wm, const char **shards) {
    for (int i = 0; i < st->ntensors; i++) {
        const gq_st_tensor *t = &st->tensors[i];
        json_t *s = json_object_get(wm, t->name);
        const char *shard = shards[t->file];
        if (!s)
            return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' of shard '%s' is not listed in weight_map", ipath, t->name,
                          shard);
        if (strcmp(json_string_value(s), shard) != 0)
            return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': weight_map names shard '%s', but it is in shard '%s'", ipath,
                          t->name, json_string_value(s), shard);
    }
    const char *tname;
    json_t *v;
    json_object_foreach(wm, tname, v) {
        if (!gq_st_find(st, tname))
            return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' is not in its shard '%s'", ipath, tname,
                          json_string_value(v));
    }
    return GQ_OK;
}

/* The shard files next to index ipath, the index checked against them. */
static int open_index(gq_st *st, const char *ipath) {
    char *txt = NULL;
    size_t len = 0;
    int rc = gq_read_file(ipath, &txt, &len);
    if (rc) return rc;
    json_error_t je;
    json_t *root = json_loadb(txt, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    free(txt);
    if (!root)
        return gq_err(GQ_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", ipath, je.text, je.line, je.column);
    const char **shards = NULL;
    size_t nsh = 0;
    char *dir = NULL;
    json_t *wm = NULL, *meta = NULL;
    if (!json_is_object(root)) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: expected a JSON object, got %s", ipath, gq_json_kind(root));
        goto out;
    }
    wm = json_object_get(root, "weight_map");
    meta = json_object_get(root, "metadata");
    if (!wm) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: missing \"weight_map\" (an object of tensor name -> shard file)", ipath);
        goto out;
    }
    if (!json_is_object(wm)) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: \"weight_map\" must be an object, got %s", ipath, gq_json_kind(wm));
        goto out;
    }
    if (meta && !json_is_object(meta) && !json_is_null(meta)) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: \"metadata\" must be an object, got %s", ipath, gq_json_kind(meta));
        goto out;
    }
    if (json_object_size(wm) == 0) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: \"weight_map\" is empty, expected at least one tensor", ipath);
        goto out;
    }
    rc = index_shards(ipath, wm, &shards, &nsh);
    if (rc) goto out;
    dir = path_dirname(ipath);
    for (size_t i = 0; i < nsh && !rc; i++) { /* all present before mapping any */
        char *p = gq_path_join(dir, shards[i]);
        if (!gq_path_exists(p)) rc = gq_err(GQ_ERR_IO, "%s: shard '%s' not found (no file %s)", ipath, shards[i], p);
        free(p);
    }
    for (size_t i = 0; i < nsh && !rc; i++) {
        char *p = gq_path_join(dir, shards[i]);
        rc = load_file(st, p);
        free(p);
    }
    if (rc) goto out;
    rc = build_name_index(st);
    if (rc) {
        gq_err_prefix("%s", ipath);
        goto out;
    }
    rc = index_check(st, ipath, wm, shards);
    if (!rc && json_is_object(meta)) {
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            char *text = json_value_text(v);
            meta_add(st, k, text);
            free(text);
        }
    }
out:
    free(shards);
    free(dir);
    json_decref(root);
    return rc;
}

/* ---- directory --------------------------------------------------------- */

static int open_dir(gq_st *st, const char *dir) {
    char *p = gq_path_join(dir, "model.safetensors.index.json");
    int rc;
    if (gq_path_exists(p)) {
        rc = open_index(st, p);
        free(p);
        return rc;
    }
    free(p);
    p = gq_path_join(dir, "model.safetensors");
    if (gq_path_exists(p)) {
        rc = load_file(st, p);
        free(p);
        return rc;
    }
    free(p);
    DIR *d = opendir(dir);
    if (!d) return gq_err(GQ_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!ends_with(e->d_name, ".safetensors") || e->d_name[0] == '.') continue;
        names = gq_realloc(names, sizeof(char *) * (n + 1));
        names[n++] = gq_strdup(e->d_name);
    }
    closedir(d);
    if (n == 1) {
        p = gq_path_join(dir, names[0]);
        rc = load_file(st, p);
        free(p);
    } else if (n == 0) {
        rc = gq_err(GQ_ERR_IO,
                    "%s: no model.safetensors.index.json, model.safetensors or other *.safetensors file found", dir);
    } else {
        qsort(names, n, sizeof(char *), cmp_str_ptr);
        char list[512];
        size_t k = 0;
        list[0] = 0;
        for (size_t i = 0; i < n && i < 4 && k < sizeof list; i++)
            k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", i ? ", " : "", names[i]);
        rc = gq_err(GQ_ERR_FORMAT,
                    "%s: found %zu *.safetensors files (%s%s) but no model.safetensors.index.json; "
                    "expected an index or exactly one file",
                    dir, n, list, n > 4 ? ", ..." : "");
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

/* ---- public API --------------------------------------------------------- */

int gq_st_open(gq_st **out, const char *path) {
    GQ_ASSERT(out && path);
    *out = NULL;
    gq_st *st = gq_calloc(1, sizeof *st);
    int rc;
    if (gq_is_dir(path)) {
        rc = open_dir(st, path);
    } else if (ends_with(path, ".json")) {
        rc = open_index(st, path);
    } else {
        rc = load_file(st, path);
    }
    if (rc == GQ_OK && !st->by_name) rc = build_name_index(st); /* single file (index builds its own) */
    if (rc != GQ_OK) {
        gq_st_close(st);
        return rc;
    }
    *out = st;
    return GQ_OK;
}

void gq_st_close(gq_st *st) {
    if (!st) return;
    for (int i = 0; i < st->nfiles; i++) {
        munmap((void *)st->files[i].map, st->files[i].size);
        free(st->files[i].path);
    }
    for (int i = 0; i < st->ntensors; i++) free((char *)st->tensors[i].name);
    for (int i = 0; i < st->nmeta; i++) {
        free(st->meta_key[i]);
        free(st->meta_val[i]);
    }
    free(st->files);
    free(st->tensors);
    free(st->by_name);
    free(st->meta_key);
    free(st->meta_val);
    free(st);
}

int gq_st_count(const gq_st *st) {
    return st ? st->ntensors : 0;
}

const gq_st_tensor *gq_st_at(const gq_st *st, int i) {
    if (!st || i < 0 || i >= st->ntensors) return NULL;
    return &st->tensors[i];
}

int gq_st_nfiles(const gq_st *st) {
    return st ? st->nfiles : 0;
}

const char *gq_st_file_path(const gq_st *st, int i) {
    if (!st || i < 0 || i >= st->nfiles) return NULL;
    return st->files[i].path;
}

size_t gq_st_file_size(const gq_st *st, int i) {
    if (!st || i < 0 || i >= st->nfiles) return 0;
    return st->files[i].size;
}

const char *gq_st_meta(const gq_st *st, const char *key) {
    if (!st || !key) return NULL;
    for (int i = 0; i < st->nmeta; i++)
        if (strcmp(st->meta_key[i], key) == 0) return st->meta_val[i];
    return NULL;
}

int gq_st_meta_count(const gq_st *st) {
    return st ? st->nmeta : 0;
}

const char *gq_st_meta_key(const gq_st *st, int i) {
    if (!st || i < 0 || i >= st->nmeta) return NULL;
    return st->meta_key[i];
}

int gq_st_read_f32(const gq_st *st, const gq_st_tensor *t, float *dst) {
    GQ_ASSERT(st && t && t->file >= 0 && t->file < st->nfiles);
    const char *path = st->files[t->file].path;
    if (!is_float_dtype(t->dtype))
        return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': dtype %s is not a float type (expected F32, F16, BF16 or F64)",
                      path, t->name, gq_dtype_name(t->dtype));
    if (t->numel == 0) return GQ_OK;
    /* A header whose length is not a multiple of 8 (not written by the
     * reference writer) can leave data unaligned: convert from a copy. */
    const void *src = t->data;
    void *copy = NULL;
    if ((uintptr_t)src % gq_dtype_size(t->dtype) != 0) {
        copy = gq_malloc(t->nbytes);
        memcpy(copy, src, t->nbytes);
        src = copy;
    }
    int64_t bad = gq_to_f32(dst, src, t->dtype, (size_t)t->numel);
    free(copy);
    if (bad >= 0)
        return gq_err(GQ_ERR_NUMERIC, "%s: tensor '%s': non-finite value (%s) at index %lld", path, t->name,
                      isnan(dst[bad]) ? "nan"
                      : dst[bad] > 0  ? "inf"
                                      : "-inf",
                      (long long)bad);
    return GQ_OK;
}

void gq_st_release(const gq_st *st, const gq_st_tensor *t) {
    if (!st || !t || t->nbytes == 0) return;
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0) return;
    uintptr_t a = (uintptr_t)t->data & ~((uintptr_t)pg - 1);
    uintptr_t b = ((uintptr_t)t->data + t->nbytes + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    /* The mapping is read-only and never written: dropped pages refault
     * from the file if touched again (e.g. by a neighbouring tensor). */
    (void)madvise((void *)a, b - a, MADV_DONTNEED);
}

void gq_st_prefetch(const gq_st *st, const gq_st_tensor *t) {
    if (!st || !t || t->nbytes == 0) return;
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0) return;
    uintptr_t a = (uintptr_t)t->data & ~((uintptr_t)pg - 1);
    uintptr_t b = ((uintptr_t)t->data + t->nbytes + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    (void)madvise((void *)a, b - a, MADV_WILLNEED);
    /* touch every page: the reads happen here, on the caller's thread */
    volatile unsigned char sink = 0;
    for (uintptr_t p = a; p < b; p += (uintptr_t)pg) sink ^= *(const volatile unsigned char *)p;
    (void)sink;
}

int gq_st_check_shape(const gq_st *st, const gq_st_tensor *t, int ndim, const int64_t *dims) {
    GQ_ASSERT(st && t && t->file >= 0 && t->file < st->nfiles);
    if (ndim < 0) return GQ_OK;
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (dims[i] >= 0 && dims[i] != t->shape[i]) ok = 0;
    if (ok) return GQ_OK;
    char e[256], g[256];
    return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s': expected shape %s, got %s", st->files[t->file].path, t->name,
                  shape_str(e, sizeof e, ndim, dims), shape_str(g, sizeof g, t->ndim, t->shape));
}
