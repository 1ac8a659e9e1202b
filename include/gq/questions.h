/*
 * gq/questions.h -- question sources for `gq calib` (prompt templates: gq/prompt.h).
 *
 * Formats (gq_questions_load):
 *   jsonl   one JSON object per line (plain or gzip, read by gq_jsonl): the
 *           question is the string field `field` (HumanEval "prompt", MBPP
 *           "text", "question", ...); a bare JSON string line is a question.
 *   json    a JSON array (plain or gzip) of objects (Code Alpaca:
 *           "instruction") or of strings.
 *   lines   plain text, one question per non-blank line.
 *   blocks  plain text, questions separated by one or more blank lines
 *           (lines of only whitespace); a question keeps its inner newlines.
 *   auto    by extension (after a ".gz"): .jsonl/.ndjson -> jsonl, .txt ->
 *           lines; otherwise by the first non-blank byte: '[' -> json, '{' or
 *           '"' -> jsonl, anything else -> lines.
 * For objects, field NULL picks the first of "prompt", "question",
 * "instruction", "text" present in the first object and then requires it in
 * every record. The input field ("input" unless set; "" disables) is appended
 * after a "\n" when present and non-empty (Code Alpaca instruction + input).
 * Empty questions (only whitespace) are skipped and counted. Errors name the
 * file and line (jsonl, lines, blocks) or array index (json), what was
 * expected and what was found.
 */
#ifndef GQ_QUESTIONS_H
#define GQ_QUESTIONS_H

#include "gq/common.h"
#include "gq/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    GQ_QUESTIONS_AUTO = 0,
    GQ_QUESTIONS_JSONL,
    GQ_QUESTIONS_JSON,
    GQ_QUESTIONS_LINES,
    GQ_QUESTIONS_BLOCKS
} gq_questions_format;

/* "auto" | "jsonl" | "json" | "lines" | "blocks"; GQ_ERR_ARG otherwise. */
int gq_questions_format_parse(const char *s, gq_questions_format *out);
const char *gq_questions_format_name(gq_questions_format f);

typedef struct {
    const char *path;
    gq_questions_format format; /* GQ_QUESTIONS_AUTO */
    const char *field;          /* NULL: auto (see above) */
    const char *input_field;    /* NULL: "input"; "": none */
    int limit;                  /* keep the first `limit` questions (0 = all) */
} gq_questions_opts;

void gq_questions_opts_default(gq_questions_opts *o);

typedef struct {
    int n;
    char **text;                /* [n] questions, NUL-terminated UTF-8 */
    char **where;               /* [n] "file:line" or "file[index]" of each */
    gq_questions_format format; /* the format used */
    char field[64];             /* the object field used ("" for text formats) */
    int n_empty;                /* empty questions skipped */
} gq_questions;

int gq_questions_load(gq_questions *out, const gq_questions_opts *o);
void gq_questions_free(gq_questions *q);

#ifdef __cplusplus
}
#endif
#endif /* GQ_QUESTIONS_H */
