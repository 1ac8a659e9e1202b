/* calib_out.c -- the output file of `gq calib` (gq/calib_gen.h): batches
 * written as one write + fsync (one gzip member each for ".gz"), and the
 * resume scan that cuts a torn tail and lists the complete lines. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "gq/calib_gen.h"

struct gq_calib_gen_out {
    int fd;
    int gz;
    char *path;
};

static int ends_gz(const char *p) {
    size_t n = strlen(p);
    return n >= 3 && !strcmp(p + n - 3, ".gz");
}

int gq_calib_gen_out_open(gq_calib_gen_out **out, const char *path, int append) {
    *out = NULL;
    int fd = open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
    if (fd < 0) return gq_err(GQ_ERR_IO, "%s: cannot open for writing: %s", path, strerror(errno));
    gq_calib_gen_out *o = gq_calloc(1, sizeof *o);
    o->fd = fd;
    o->gz = ends_gz(path);
    o->path = gq_strdup(path);
    *out = o;
    return GQ_OK;
}

static int write_all(gq_calib_gen_out *o, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(o->fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return gq_err(GQ_ERR_IO, "%s: write failed: %s", o->path, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return GQ_OK;
}

int gq_calib_gen_out_write(gq_calib_gen_out *o, const char *text, size_t len) {
    if (!len) return GQ_OK;
    int rc;
    if (o->gz) {
        z_stream zs;
        memset(&zs, 0, sizeof zs);
        if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            return gq_err(GQ_ERR_NOMEM, "%s: cannot start gzip compression", o->path);
        uLong cap = deflateBound(&zs, (uLong)len);
        unsigned char *buf = gq_malloc(cap);
        zs.next_in = (unsigned char *)text;
        zs.avail_in = (uInt)len;
        zs.next_out = buf;
        zs.avail_out = (uInt)cap;
        int z = deflate(&zs, Z_FINISH);
        size_t n = cap - zs.avail_out;
        deflateEnd(&zs);
        rc = z == Z_STREAM_END ? write_all(o, buf, n)
                               : gq_err(GQ_ERR_IO, "%s: gzip compression failed (%d)", o->path, z);
        free(buf);
    } else {
        rc = write_all(o, text, len);
    }
    if (rc == GQ_OK && fsync(o->fd) != 0) rc = gq_err(GQ_ERR_IO, "%s: fsync failed: %s", o->path, strerror(errno));
    return rc;
}

int gq_calib_gen_out_close(gq_calib_gen_out *o) {
    if (!o) return GQ_OK;
    int rc = close(o->fd) == 0 ? GQ_OK : gq_err(GQ_ERR_IO, "%s: close failed: %s", o->path, strerror(errno));
    free(o->path);
    free(o);
    return rc;
}

/* ---- scan -------------------------------------------------------------------------- */

/* fn on every non-blank line of text[0..n); *lineno continues across calls */
static int each_line(const char *text, size_t n, long *lineno, gq_calib_gen_line_fn fn, void *user) {
    size_t pos = 0;
    while (pos < n) {
        const char *nl = memchr(text + pos, '\n', n - pos);
        size_t e = nl ? (size_t)(nl - text) : n, le = e;
        if (le > pos && text[le - 1] == '\r') le--;
        (*lineno)++;
        size_t i = pos;
        while (i < le && (text[i] == ' ' || text[i] == '\t')) i++;
        if (i < le) {
            int rc = fn(text + pos, le - pos, *lineno, user);
            if (rc) return rc;
        }
        pos = e + 1;
    }
    return GQ_OK;
}

/* Inflate the gzip member at data[off..len): *used bytes, text appended to
 * *out. Returns 1 complete, 0 incomplete (input ended), -1 corrupt. */
static int inflate_member(const unsigned char *data, size_t off, size_t len, size_t *used, char **out, size_t *out_n,
                          size_t *out_cap) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 15 + 16) != Z_OK) return -1;
    zs.next_in = (unsigned char *)data + off;
    zs.avail_in = (uInt)(len - off);
    int res = 0;
    for (;;) {
        if (*out_cap - *out_n < 65536) {
            *out_cap = *out_cap ? 2 * *out_cap : 1 << 20;
            *out = gq_realloc(*out, *out_cap);
        }
        zs.next_out = (unsigned char *)*out + *out_n;
        zs.avail_out = (uInt)(*out_cap - *out_n);
        int z = inflate(&zs, Z_NO_FLUSH);
        *out_n = (size_t)((char *)zs.next_out - *out);
        if (z == Z_STREAM_END) {
            res = 1;
            break;
        }
        if (z == Z_OK) continue;
        if (z == Z_BUF_ERROR && zs.avail_in == 0) {
            res = 0; /* the input ends inside the member */
            break;
        }
        if (z == Z_BUF_ERROR) continue; /* output full: grow */
        res = -1;
        break;
    }
    *used = (size_t)(zs.next_in - (data + off));
    inflateEnd(&zs);
    return res;
}

int gq_calib_gen_out_scan(const char *path, gq_calib_gen_line_fn fn, void *user, size_t *cut) {
    *cut = 0;
    if (!gq_path_exists(path)) return GQ_OK;
    char *data;
    size_t len;
    int rc = gq_read_file(path, &data, &len);
    if (rc) return rc;
    const unsigned char *u = (const unsigned char *)data;
    size_t good = 0; /* bytes of complete units */
    long lineno = 0;
    if (len >= 2 && u[0] == 0x1f && u[1] == 0x8b) {
        char *text = NULL;
        size_t tn = 0, tcap = 0;
        while (good < len && rc == GQ_OK) {
            size_t used = 0;
            tn = 0;
            int r = inflate_member(u, good, len, &used, &text, &tn, &tcap);
            if (r < 0) {
                rc = gq_err(GQ_ERR_DATA,
                            "%s: corrupt gzip data in the member at byte %zu (not a torn write: the "
                            "input does not end there); repair or remove the file",
                            path, good);
                break;
            }
            if (r == 0) break; /* torn last member */
            good += used;
            rc = each_line(text, tn, &lineno, fn, user);
        }
        free(text);
    } else {
        const char *nl = len ? memrchr(data, '\n', len) : NULL;
        good = nl ? (size_t)(nl - data) + 1 : 0;
        rc = each_line(data, good, &lineno, fn, user);
    }
    free(data);
    if (rc == GQ_OK && good < len) {
        if (truncate(path, (off_t)good) != 0)
            return gq_err(GQ_ERR_IO, "%s: cannot cut the torn tail at byte %zu: %s", path, good, strerror(errno));
        *cut = len - good;
    }
    return rc;
}
