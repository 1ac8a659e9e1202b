/*
 * gq/prompt.h -- prompt templates for `gq calib`: how a question becomes the
 * model's input.
 *
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
#ifndef GQ_PROMPT_H
#define GQ_PROMPT_H

#include "gq/common.h"
#include "gq/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

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
#endif /* GQ_PROMPT_H */
