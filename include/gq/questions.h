/*
 * gq/questions.h -- question sources and prompt templates for `gq calib`.
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
 *
 * Prompt templates (gq_prompt_*): how a question becomes the model's input.
 *   raw     the question is the start of the text (base models); encoded
 *           with the tokenizer's special tokens (<s>).
 *   chat    the tokenizer's chat_template (tokenizer_config.json) rendered
 *           by gq/jinja.h for messages [{"role": "user", "content": q}],
 *           add_generation_prompt true, bos_token/eos_token the tokenizer's;
 *           encoded without adding special tokens (the template has them),
 *           as apply_chat_template(tokenize=True) does.
 *   STRING  any other spec is a template in which every "{question}" is
 *           replaced by the question; "\n", "\t" and "\\" escapes are
 *           interpreted ("Q: {question}\nA:"); encoded with special tokens.
 */
#ifndef GQ_QUESTIONS_H
#define GQ_QUESTIONS_H

#include "gq/common.h"
#include "gq/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { GQ_QFMT_AUTO = 0, GQ_QFMT_JSONL, GQ_QFMT_JSON, GQ_QFMT_LINES, GQ_QFMT_BLOCKS } gq_qformat;

/* "auto" | "jsonl" | "json" | "lines" | "blocks"; GQ_ERR_ARG otherwise. */
int gq_qformat_parse(const char *s, gq_qformat *out);
const char *gq_qformat_name(gq_qformat f);

typedef struct {
    const char *path;
    gq_qformat format;       /* GQ_QFMT_AUTO */
    const char *field;       /* NULL: auto (see above) */
    const char *input_field; /* NULL: "input"; "": none */
    int limit;               /* keep the first `limit` questions (0 = all) */
} gq_questions_opts;

void gq_questions_opts_default(gq_questions_opts *o);

typedef struct {
    int n;
    char **text;         /* [n] questions, NUL-terminated UTF-8 */
    char **where;        /* [n] "file:line" or "file[index]" of each */
    gq_qformat format;   /* the format used */
    char field[64];      /* the object field used ("" for text formats) */
    int n_empty;         /* empty questions skipped */
} gq_questions;

int gq_questions_load(gq_questions *out, const gq_questions_opts *o);
void gq_questions_free(gq_questions *q);

/* ---- prompt templates ------------------------------------------------------------ */

typedef struct gq_prompt gq_prompt;

/* spec: "raw", "chat" or a template string with "{question}". "chat" needs
 * tok to have a chat_template (GQ_ERR_ARG saying so otherwise); a string
 * without "{question}" is GQ_ERR_ARG. */
int gq_prompt_init(gq_prompt **out, const char *spec, const gq_tokenizer *tok);
void gq_prompt_free(gq_prompt *p);
const char *gq_prompt_kind(const gq_prompt *p); /* "raw", "chat", "template" */

/* The prompt text for a question (*text newly allocated) and whether it is
 * to be encoded with the tokenizer's special tokens (*add_special). */
int gq_prompt_render(const gq_prompt *p, const char *question, char **text, size_t *len, int *add_special);

/* Render and encode: ids (appended to *ids) as the model gets them; *text
 * (may be NULL) is the prompt text without a leading bos_token string, i.e.
 * what must precede the answer in a calibration record whose reader adds
 * <s> itself. */
int gq_prompt_encode(const gq_prompt *p, const gq_tokenizer *tok, const char *question, gq_ids *ids, char **text);

#ifdef __cplusplus
}
#endif
#endif /* GQ_QUESTIONS_H */
