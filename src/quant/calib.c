/*
 * calib.c -- calibration data: a streaming JSONL reader (zlib's gzopen reads
 * plain and gzip files alike) and the token windows fed to quantization.
 *
 * Lines are read with gzgets into a buffer that grows to the longest line,
 * so a file is never loaded whole and lines may be of any length. Line
 * numbers count every line, blank ones included, so errors name the line an
 * editor shows.
 *
 * Records: {"text": s} or {"question": q, "answer": a} (text = q followed
 * directly by a); "text" wins when both forms are present. In SAMPLE
 * windowing a record is "shorter than min_tokens" when its text encodes to
 * fewer than min_tokens tokens (BOS not counted).
 */
#include "gq/calib.h"

#include <jansson.h>
#include "gq/generate.h" /* gq_gen_rng: the shuffle of --calib-seed */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---- JSONL stream ---- */

struct gq_jsonl {
    gzFile f;
    char *path;
    char *buf;
    size_t cap;
    long lineno;
};

int gq_jsonl_open(gq_jsonl **out, const char *path) {
    *out = NULL;
    gzFile f = gzopen(path, "rb");
    if (!f) return gq_err(GQ_ERR_IO, "%s: cannot open", path);
    gzbuffer(f, 1 << 17);
    gq_jsonl *j = gq_calloc(1, sizeof *j);
    j->f = f;
    j->path = gq_strdup(path);
    j->cap = 1 << 16;
    j->buf = gq_malloc(j->cap);
    *out = j;
    return GQ_OK;
}

const char *gq_jsonl_path(const gq_jsonl *j) {
    return j->path;
}

void gq_jsonl_close(gq_jsonl *j) {
    if (!j) return;
    if (j->f) gzclose(j->f);
    free(j->path);
    free(j->buf);
    free(j);
}

/* Read one physical line (without its "\n") into j->buf; 1, 0 at EOF, <0. */
static int read_line(gq_jsonl *j, size_t *len) {
    size_t n = 0;
    for (;;) {
        if (j->cap - n < 2) {
            j->cap *= 2;
            j->buf = gq_realloc(j->buf, j->cap);
        }
        size_t room = j->cap - n;
        if (room > (size_t)1 << 30) room = (size_t)1 << 30; /* gzgets takes an int */
        char *r = gzgets(j->f, j->buf + n, (int)room);
        if (!r) {
            int zerr;
            const char *msg = gzerror(j->f, &zerr);
            if (zerr != Z_OK && zerr != Z_STREAM_END)
                return gq_err(GQ_ERR_IO, "%s:%ld: read error: %s", j->path, j->lineno + 1, msg);
            if (n == 0) return 0; /* clean end of file */
            break;                /* last line without "\n" */
        }
        /* gzgets stops after "\n", at the end of the file or when the
         * buffer is full; a shorter result without "\n" before the end of
         * the file means a NUL byte, which JSON text cannot contain */
        size_t got = strlen(j->buf + n);
        n += got;
        if (n > 0 && j->buf[n - 1] == '\n') break;
        if (gzeof(j->f)) break;
        if (got < room - 1)
            return gq_err(GQ_ERR_DATA, "%s:%ld: NUL byte in the line (not JSON text)", j->path, j->lineno + 1);
    }
    if (n > 0 && j->buf[n - 1] == '\n') n--;
    if (n > 0 && j->buf[n - 1] == '\r') n--;
    j->buf[n] = 0;
    j->lineno++;
    *len = n;
    return 1;
}

int gq_jsonl_next(gq_jsonl *j, const char **line, size_t *len, long *lineno) {
    for (;;) {
        size_t n = 0;
        int rc = read_line(j, &n);
        if (rc <= 0) return rc;
        size_t i = 0;
        while (i < n && (j->buf[i] == ' ' || j->buf[i] == '\t' || j->buf[i] == '\r')) i++;
        if (i == n) continue; /* blank */
        *line = j->buf;
        *len = n;
        if (lineno) *lineno = j->lineno;
        return 1;
    }
}

/* ---- records ---- */

enum { REC_NOT_JSON = -2, REC_NOT_OBJECT = -1, REC_NEITHER = 0, REC_TEXT = 1, REC_QA = 2, REC_BAD_TYPE = 3 };

/* Parse one line; on failure writes the reason into why. */
static int parse_record(const char *line, size_t len, char **out, size_t *out_len, char *why, size_t why_cap) {
    json_error_t je;
    *out = NULL;
    *out_len = 0;
    json_t *o = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!o) {
        snprintf(why, why_cap, "not valid JSON: %s (column %d)", je.text, je.column);
        return REC_NOT_JSON;
    }
    int rc;
    if (!json_is_object(o)) {
        static const char *names[] = {"an object", "an array", "a string", "a number",
                                      "a number",  "true",     "false",    "null"};
        snprintf(why, why_cap, "expected a JSON object, got %s", names[json_typeof(o)]);
        rc = REC_NOT_OBJECT;
        goto done;
    }
    json_t *t = json_object_get(o, "text"), *q = json_object_get(o, "question"), *a = json_object_get(o, "answer");
    if (t) {
        if (!json_is_string(t)) {
            snprintf(why, why_cap, "\"text\" is not a string");
            rc = REC_BAD_TYPE;
            goto done;
        }
        *out_len = json_string_length(t);
        *out = gq_malloc(*out_len + 1);
        memcpy(*out, json_string_value(t), *out_len + 1);
        rc = REC_TEXT;
        goto done;
    }
    if (q && a) {
        if (!json_is_string(q) || !json_is_string(a)) {
            snprintf(why, why_cap, "\"question\" and \"answer\" must be strings");
            rc = REC_BAD_TYPE;
            goto done;
        }
        size_t ql = json_string_length(q), al = json_string_length(a);
        *out = gq_malloc(ql + al + 1);
        memcpy(*out, json_string_value(q), ql);
        memcpy(*out + ql, json_string_value(a), al + 1);
        *out_len = ql + al;
        rc = REC_QA;
        goto done;
    }
    snprintf(why, why_cap, "expected {\"text\": ...} or {\"question\": ..., \"answer\": ...}, found neither");
    rc = REC_NEITHER;
done:
    json_decref(o);
    return rc;
}

int gq_calib_record_text(const char *line, size_t len, char **out, size_t *out_len) {
    char why[256];
    int rc = parse_record(line, len, out, out_len, why, sizeof why);
    if (rc == REC_NOT_JSON || rc == REC_NOT_OBJECT) return -1;
    if (rc == REC_BAD_TYPE) return 0;
    return rc;
}

/* ---- calibration set ---- */

void gq_calib_opts_default(gq_calib_opts *o) {
    memset(o, 0, sizeof *o);
    o->nsamples = 128;
    o->seqlen = 2048;
    o->windowing = GQ_WIN_AUTO;
    o->min_tokens = 32;
}

void gq_calib_free(gq_calib_set *s) {
    if (!s) return;
    free(s->seq);
    free(s->len);
    free(s->ids);
    memset(s, 0, sizeof *s);
}

/* ---- record order: the file's, or (seed != 0) a permutation of its lines ---- */

typedef struct {
    gq_jsonl *j;
    char **line;   /* seed != 0: every non-blank line, [n] */
    size_t *len;   /* [n] */
    long *lineno;  /* [n] */
    size_t *order; /* [n]: the shuffled order */
    size_t n, next;
} rec_src;

static void rec_src_free(rec_src *r) {
    for (size_t i = 0; i < r->n; i++) free(r->line[i]);
    free(r->line), free(r->len), free(r->lineno), free(r->order);
    if (r->j) gq_jsonl_close(r->j);
    memset(r, 0, sizeof *r);
}

/* Read the whole file and shuffle its lines: Fisher-Yates, xoshiro256** seeded from (seed, 0). */
static int rec_src_shuffle(rec_src *r, uint64_t seed) {
    const char *line;
    size_t len, cap = 0;
    long lineno;
    int rc;
    while ((rc = gq_jsonl_next(r->j, &line, &len, &lineno)) == 1) {
        if (r->n == cap) {
            cap = cap ? 2 * cap : 256;
            r->line = gq_realloc(r->line, cap * sizeof *r->line);
            r->len = gq_realloc(r->len, cap * sizeof *r->len);
            r->lineno = gq_realloc(r->lineno, cap * sizeof *r->lineno);
        }
        r->line[r->n] = gq_malloc(len + 1);
        memcpy(r->line[r->n], line, len + 1);
        r->len[r->n] = len, r->lineno[r->n] = lineno;
        r->n++;
    }
    if (rc < 0) return rc;
    r->order = gq_malloc((r->n ? r->n : 1) * sizeof *r->order);
    for (size_t i = 0; i < r->n; i++) r->order[i] = i;
    gq_gen_rng g;
    gq_gen_rng_seed(&g, seed, 0);
    for (size_t i = r->n; i > 1; i--) {
        size_t k = (size_t)(gq_gen_rng_next(&g) % i), t = r->order[i - 1];
        r->order[i - 1] = r->order[k], r->order[k] = t;
    }
    return GQ_OK;
}

static int rec_src_open(rec_src *r, const char *path, uint64_t seed) {
    memset(r, 0, sizeof *r);
    int rc = gq_jsonl_open(&r->j, path);
    if (!rc && seed) rc = rec_src_shuffle(r, seed);
    if (rc) rec_src_free(r);
    return rc;
}

/* gq_jsonl_next's contract, in the source's order. */
static int rec_src_next(rec_src *r, const char **line, size_t *len, long *lineno) {
    if (!r->order) return gq_jsonl_next(r->j, line, len, lineno);
    if (r->next == r->n) return 0;
    size_t i = r->order[r->next++];
    *line = r->line[i], *len = r->len[i], *lineno = r->lineno[i];
    return 1;
}

static const char *win_name(gq_windowing w) {
    return w == GQ_WIN_CONCAT ? "concat" : w == GQ_WIN_SAMPLE ? "sample" : "auto";
}

/* What the records gave so far: the token stream, the sequences' lengths (sample windowing) and counts. */
typedef struct {
    gq_windowing win;
    gq_ids stream;
    int *lens; /* [nsamples] */
    int nseq;
    long n_records, n_bad, n_short;
} calib_acc;

/* Reads records from src into a until the windows are full (total tokens for concat, nsamples
 * sequences for sample) or the file ends. */
static int read_records(calib_acc *a, rec_src *src, const gq_tokenizer *tok, const gq_calib_opts *o, size_t total) {
    const int32_t bos = gq_tok_bos(tok), eos = gq_tok_eos(tok);
    gq_ids enc = {0};
    const char *line;
    size_t len;
    long lineno;
    int rc = GQ_OK;
    while (rc == GQ_OK) {
        if (a->win == GQ_WIN_CONCAT && a->stream.n >= total) break;
        if (a->win == GQ_WIN_SAMPLE && a->nseq == o->nsamples) break;
        int r = rec_src_next(src, &line, &len, &lineno);
        if (r <= 0) {
            rc = r;
            break;
        }
        char *text, why[300];
        size_t tl;
        int kind = parse_record(line, len, &text, &tl, why, sizeof why);
        if (kind != REC_TEXT && kind != REC_QA) {
            if (o->skip_bad) {
                a->n_bad++;
                gq_debug("%s:%ld: skipped: %s", o->path, lineno, why);
                continue;
            }
            rc = gq_err(GQ_ERR_DATA, "%s:%ld: %s", o->path, lineno, why);
            break;
        }
        if (a->win == GQ_WIN_AUTO) a->win = kind == REC_TEXT ? GQ_WIN_CONCAT : GQ_WIN_SAMPLE;
        a->n_records++;
        enc.n = 0;
        rc = gq_tok_encode(tok, text, tl, 0, &enc);
        free(text);
        if (rc) {
            gq_err_prefix("%s:%ld", o->path, lineno);
            break;
        }
        if (a->win == GQ_WIN_CONCAT) {
            if (bos >= 0) gq_ids_push(&a->stream, bos);
            gq_ids_append(&a->stream, enc.v, enc.n);
            if (eos >= 0) gq_ids_push(&a->stream, eos);
        } else {
            if (enc.n < (size_t)o->min_tokens) {
                a->n_short++;
                continue;
            }
            size_t k = (bos >= 0) + enc.n;
            if (k > (size_t)o->seqlen) k = (size_t)o->seqlen;
            if (bos >= 0) gq_ids_push(&a->stream, bos);
            gq_ids_append(&a->stream, enc.v, k - (bos >= 0));
            a->lens[a->nseq++] = (int)k;
        }
    }
    gq_ids_free(&enc);
    return rc;
}

/* The windows from what was read: concat cuts the stream into nsamples windows of seqlen; sample
 * keeps its sequences. An error when there are too few. */
static int finish_windows(calib_acc *a, const gq_calib_opts *o, size_t total) {
    if (a->win == GQ_WIN_AUTO) a->win = GQ_WIN_CONCAT; /* no usable record at all */
    if (a->win == GQ_WIN_CONCAT) {
        size_t have = a->stream.n / (size_t)o->seqlen;
        if (have < (size_t)o->nsamples)
            return gq_err(GQ_ERR_DATA,
                          "%s: too little calibration data: %d windows of %d tokens requested, but its %ld records "
                          "give %zu tokens, %zu windows (%ld bad lines skipped)",
                          o->path, o->nsamples, o->seqlen, a->n_records, a->stream.n, have, a->n_bad);
        a->nseq = o->nsamples;
        for (int i = 0; i < a->nseq; i++) a->lens[i] = o->seqlen;
        a->stream.n = total;
    } else if (a->nseq < o->nsamples) {
        return gq_err(GQ_ERR_DATA,
                      "%s: too little calibration data: %d sequences requested, but its %ld records give only %d "
                      "with at least %d tokens (%ld shorter, %ld bad lines skipped)",
                      o->path, o->nsamples, a->n_records, a->nseq, o->min_tokens, a->n_short, a->n_bad);
    }
    return GQ_OK;
}

int gq_calib_load(gq_calib_set *out, const gq_tokenizer *tok, const gq_calib_opts *o) {
    memset(out, 0, sizeof *out);
    if (!o->path) return gq_err(GQ_ERR_ARG, "calibration: no file given");
    if (o->nsamples < 1 || o->seqlen < 1 || o->min_tokens < 0)
        return gq_err(GQ_ERR_ARG, "calibration: expected nsamples >= 1, seqlen >= 1, min_tokens >= 0, got %d, %d, %d",
                      o->nsamples, o->seqlen, o->min_tokens);
    size_t total;
    if (!gq_mul_size((size_t)o->nsamples, (size_t)o->seqlen, &total) || total > ((size_t)1 << 34) / sizeof(int32_t))
        return gq_err(GQ_ERR_ARG, "calibration: %d x %d tokens is too many", o->nsamples, o->seqlen);
    rec_src src;
    int rc = rec_src_open(&src, o->path, o->seed);
    if (rc) return rc;
    calib_acc a = {.win = o->windowing};
    a.lens = gq_calloc((size_t)o->nsamples, sizeof *a.lens);
    rc = read_records(&a, &src, tok, o, total);
    rec_src_free(&src);
    if (!rc) rc = finish_windows(&a, o, total);
    if (rc) {
        gq_ids_free(&a.stream);
        free(a.lens);
        return rc;
    }
    out->n = a.nseq;
    out->ids = gq_realloc(a.stream.v, (a.stream.n ? a.stream.n : 1) * sizeof *a.stream.v);
    out->len = a.lens;
    out->seq = gq_malloc((size_t)a.nseq * sizeof *out->seq);
    size_t off = 0;
    for (int i = 0; i < a.nseq; i++) {
        out->seq[i] = out->ids + off;
        off += (size_t)a.lens[i];
    }
    out->n_tokens = (int64_t)off;
    out->windowing = a.win;
    out->n_records = a.n_records;
    out->n_bad = a.n_bad;
    out->n_short = a.n_short;
    char order[48] = "";
    if (o->seed) snprintf(order, sizeof order, " (records shuffled, seed %llu)", (unsigned long long)o->seed);
    gq_info("calibration: %d %s sequences, %lld tokens from %ld records of %s%s%s", a.nseq, win_name(a.win),
            (long long)off, a.n_records, o->path, order, a.n_bad ? " (bad lines skipped)" : "");
    return GQ_OK;
}
