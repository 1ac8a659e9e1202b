/*
 * gq/calib_gen.h -- self-generated calibration sets (`gq calib`): the model
 * answers questions (gq/questions.h) with gq/generate.h, and each
 * question + answer becomes a calibration record, so the calibration data
 * follows the distribution the model sees at inference (the method of the
 * CodeFuse-CodeLlama-34B int4 work).
 *
 * Output: JSON lines, plain or gzip (".gz"), readable by gq_calib_load:
 *   {"question": P, "answer": A, "prompt_tokens": n, "answer_tokens": m,
 *    "index": i, "finish": "eos"|"length"}
 * P is the prompt text exactly as the model read it (the question itself
 * for --template raw; the rendered template otherwise, a leading bos_token
 * string removed because the calibration reader adds <s>), so
 * "question" + "answer" is the text the model saw; "raw_question" (only when
 * it differs from P) is the question of the source file. n counts the prompt
 * ids (with <s> when the model takes one), m the answer ids (eos excluded).
 * The answer is its ids decoded, without special tokens, as the
 * continuation of the prompt ids (gq_tok_decode_continuation:
 * decode(prompt + answer) minus decode(prompt)), so a SentencePiece
 * decoder's strip of a text's leading space does not eat the answer's first
 * space; texts are stored as valid UTF-8 (an invalid byte becomes U+FFFD, as
 * transformers' decode).
 *
 * Crash safety: records are written in batches (one write, then fsync); a
 * gzip output gets one complete gzip member per batch (concatenated members
 * are a valid gzip file), so a crash loses at most the batch in flight. A
 * torn tail (a partial line, an incomplete gzip member) is cut off by
 * --resume, which then skips the question indices already present and
 * appends the rest. Dropped samples are listed in "<out>.dropped" (JSON
 * lines {"index", "reason"}) so that --resume does not generate them again.
 * Every question uses its own random stream (its index), so an interrupted
 * and resumed run writes the same records as an uninterrupted one.
 *
 * Quality controls (each dropped sample counted and printed), in this
 * order: "empty" (the answer is only whitespace), "short" (fewer than
 * min_answer_tokens tokens), "degenerate" (gq_gen_degenerate with periods
 * 1..degenerate_period, default 64, repeating over more than half of the
 * answer; a repeated line of code is a period of 10-60 tokens),
 * "duplicate" (the same answer text as an earlier kept sample, across
 * resumed runs too; with batching, "earlier" means finished earlier, so
 * which of two identical answers is kept may depend on --batch, while the
 * set of texts kept does not). Questions whose prompt does not leave room for one token within
 * the model's max positions are skipped ("too long").
 *
 * A run after which the output holds no record (every answer dropped, every
 * prompt too long, or --resume of a file whose questions were all dropped
 * before) fails with GQ_ERR_DATA: the message names the output, the number
 * of questions and how many each rule dropped. The report is filled and the
 * (empty) output and its ".dropped" list are kept.
 */
#ifndef GQ_CALIB_GEN_H
#define GQ_CALIB_GEN_H

#include "gq/generate.h"
#include "gq/prompt.h"
#include "gq/questions.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *model_dir;
    const char *questions;       /* question file */
    const char *out;             /* output .jsonl or .jsonl.gz */
    int n;                       /* use the first n questions (0 = all) */
    gq_gen_sampling sampling;    /* temperature 0, top_p 1, top_k 0, seed 0, max_new_tokens 512 */
    int batch;                   /* sequences decoded together = records per write (16) */
    const char *device;          /* "auto" */
    const char *precision;       /* "auto", "fp16", "fp32" (gq_backend_set_precision) */
    const char *field;           /* NULL = auto */
    const char *input_field;     /* NULL = "input" */
    gq_questions_format qformat; /* auto */
    const char *template_spec;   /* "raw" */
    int resume, force;
    int min_answer_tokens; /* 8 */
    int degenerate_period; /* longest repeated period the degenerate rule looks for (64; 0: rule off) */
    int threads;           /* 0 = all cores */
    int int4_kernel;       /* --int4-kernel: GQ_Q4_AUTO (default), 1 on, 0 off (gq_model_q4_choose) */
    int max_len;           /* tokens per sequence (0 = longest prompt + max_new_tokens, capped at the
                              model's max positions) */
} gq_calib_gen_opts;

void gq_calib_gen_opts_default(gq_calib_gen_opts *o);

typedef struct {
    long n_questions;   /* questions considered (after --n) */
    long n_done_before; /* indices found in the output by --resume (kept + dropped) */
    long n_generated;   /* answers generated in this run */
    long n_written;     /* records written in this run */
    long n_empty, n_short, n_degenerate, n_duplicate, n_too_long; /* this run */
    long n_eos, n_length;                                         /* finish reasons of the written records */
    long n_total;                                                 /* records in the output file at the end */
    /* answer length (tokens) over every record of the output file */
    int len_min, len_max;
    double len_mean, len_median;
    int64_t gen_tokens; /* tokens generated (kept or not) */
    double seconds;
} gq_calib_gen_report;

/* GQ_ERR_DATA (the report filled) when the output holds no record at the end. */
int gq_calib_gen_run(const gq_calib_gen_opts *o, gq_calib_gen_report *rep);

/* ---- the output file (calib_out.c) ----------------------------------------------- */

typedef struct gq_calib_gen_out gq_calib_gen_out;

/* Open for appending (append = 1, after gq_calib_gen_out_scan) or create /
 * truncate; gzip when the path ends in ".gz". */
int gq_calib_gen_out_open(gq_calib_gen_out **out, const char *path, int append);
/* Write len bytes of complete lines as one unit (a gzip member), fsync. */
int gq_calib_gen_out_write(gq_calib_gen_out *o, const char *text, size_t len);
int gq_calib_gen_out_close(gq_calib_gen_out *o); /* NULL ok */

/* Called for each complete line of an existing output (1-based line). */
typedef int (*gq_calib_gen_line_fn)(const char *line, size_t len, long lineno, void *user);

/* Read an existing output (plain or gzip by magic), cut off a torn tail
 * (an incomplete last line, or a gzip member whose data ends before its
 * end: the file is truncated to the last complete unit and *cut gets the
 * bytes removed), and call fn for every complete non-blank line (a non-zero
 * return stops the scan and is returned). A missing file is GQ_OK with no
 * lines. Corrupt gzip data (not merely cut short) is GQ_ERR_DATA naming the
 * byte offset of its member; nothing is truncated then. */
int gq_calib_gen_out_scan(const char *path, gq_calib_gen_line_fn fn, void *user, size_t *cut);

#ifdef __cplusplus
}
#endif
#endif /* GQ_CALIB_GEN_H */
