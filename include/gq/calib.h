/*
 * gq/calib.h -- calibration data: a streaming JSONL reader (plain or gzip)
 * and the token windows fed to quantization.
 *
 * A JSONL line is {"text": ...} or {"question": ..., "answer": ...} (the text
 * is the question followed directly by the answer); other fields are
 * ignored. Blank lines are skipped. A line that is not a JSON object or has
 * neither form is GQ_ERR_DATA naming file:line, unless skip_bad is set, in
 * which case it is counted in gq_calib_set.n_bad and skipped.
 *
 * Windowing:
 *   GQ_WIN_CONCAT (default for text corpora): for each record in file order
 *     append [<s>] + encode(text) + [</s>] to one stream, cut consecutive
 *     windows of seqlen tokens, keep the first nsamples.
 *   GQ_WIN_SAMPLE (default for question/answer sets): one sequence per
 *     record, <s> + tokens truncated to seqlen; records shorter than
 *     min_tokens are skipped. Sequences have their own lengths, no padding.
 *   GQ_WIN_AUTO: CONCAT if the first usable record is {"text"}, SAMPLE if it
 *     is question/answer.
 * Calibration draws (seed != 0): the same windowing over the file's lines in a
 * shuffled order, so other records make the first nsamples windows, in
 * another order; the file is then read into memory first.
 * Too little data for nsamples windows is GQ_ERR_DATA saying how many
 * windows (and tokens) there are.
 */
#ifndef GQ_CALIB_H
#define GQ_CALIB_H

#include "gq/common.h"
#include "gq/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- JSONL stream ------------------------------------------------------- */

typedef struct gq_jsonl gq_jsonl;
int gq_jsonl_open(gq_jsonl **out, const char *path); /* gzip detected by magic */
/* Read the next non-blank line. Returns 1 with *line / *len set (valid until
 * the next call), 0 at end of file, or a negative gq_status. *lineno is the
 * 1-based line number of the returned line. Lines may be any length. */
int gq_jsonl_next(gq_jsonl *j, const char **line, size_t *len, long *lineno);
const char *gq_jsonl_path(const gq_jsonl *j);
void gq_jsonl_close(gq_jsonl *j);

/* ---- calibration set ---------------------------------------------------- */

typedef enum { GQ_WIN_AUTO = 0, GQ_WIN_CONCAT, GQ_WIN_SAMPLE } gq_windowing;

typedef struct {
    const char *path;
    int nsamples;      /* 128 */
    int seqlen;        /* 2048 */
    gq_windowing windowing;
    int min_tokens;    /* SAMPLE: skip shorter records (default 32) */
    int skip_bad;      /* skip bad lines instead of failing */
    uint64_t seed;     /* 0: records in file order; else the file's lines in a permutation drawn from
                          this seed (Fisher-Yates, gq_gen_rng stream 0), read whole before windowing */
} gq_calib_opts;

typedef struct {
    int n;            /* number of sequences */
    int32_t **seq;    /* seq[i] -> len[i] token ids (one allocation: ids) */
    int *len;         /* [n] */
    int32_t *ids;     /* all ids, concatenated */
    int64_t n_tokens; /* sum of len */
    gq_windowing windowing; /* the one actually used */
    long n_records, n_bad, n_short;
} gq_calib_set;

void gq_calib_opts_default(gq_calib_opts *o);
int gq_calib_load(gq_calib_set *out, const gq_tokenizer *tok, const gq_calib_opts *o);
void gq_calib_free(gq_calib_set *s);

/* Record text of a parsed JSONL line: "text", or question + answer.
 * Returns 1 (text), 2 (question/answer), 0 (neither form), -1 (not a JSON
 * object). *out is newly allocated. */
int gq_calib_record_text(const char *line, size_t len, char **out, size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif /* GQ_CALIB_H */
