/* eval_cut.c -- what `gq eval` reads of a generated answer: its text (the continuation of the prompt,
 * valid UTF-8) and whether the task's cut of it is decided already, the early stop of generation
 * (gq/eval.h, "Early stop"). */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "gq/eval.h"
#include "text/unicode.h" /* gq_uni_repair */

int gq_eval_answer_text(const gq_tokenizer *tok, const int32_t *prompt, size_t n_prompt, const int32_t *ids, size_t n,
                        char **text, size_t *text_n) {
    char *raw = NULL;
    size_t raw_n = 0;
    int rc = gq_tok_decode_continuation(tok, prompt, n_prompt, ids, n, 1, &raw, &raw_n);
    if (rc) return rc;
    *text = gq_uni_repair(raw, raw_n, text_n);
    free(raw);
    return GQ_OK;
}

/* ---- early stop --------------------------------------------------------------------------------- */

/* A byte-fallback token "<0xNN>" */
static int byte_piece(const gq_tokenizer *tok, int32_t id) {
    const char *p = gq_tok_piece(tok, id);
    return p && p[0] == '<' && p[1] == '0' && p[2] == 'x' && isxdigit((unsigned char)p[3]) &&
           isxdigit((unsigned char)p[4]) && p[5] == '>' && !p[6];
}

size_t gq_eval_stable_tokens(const gq_tokenizer *tok, const int32_t *ids, size_t n) {
    while (n > 0 && byte_piece(tok, ids[n - 1])) n--;
    return n;
}

/* Whether the cut of text[0..n) (NUL-terminated) is the cut of every text that begins with it. */
static int decided(const char *text, size_t n, gq_eval_cut how, const char *const *stops) {
    if (how == GQ_EVAL_CUT_FENCE) return strstr(text, "```") != NULL;
    if (how == GQ_EVAL_CUT_CHAT) {
        const char *o = strstr(text, "```");
        const char *body = o ? strchr(o + 3, '\n') : NULL;
        return body && strstr(body + 1, "```") != NULL;
    }
    const char *cut = NULL;
    for (int i = 0; stops[i]; i++) {
        const char *p = strstr(text, stops[i]);
        if (p && (!cut || p < cut)) cut = p;
    }
    if (!cut) return 0;
    if (strlen(text) < n) return 1; /* a NUL: nothing after it counts (the cut and the record end there) */
    size_t at = (size_t)(cut - text);
    for (int i = 0; stops[i]; i++) { /* a stop sequence begun before the cut, running into the end: it may complete */
        size_t len = strlen(stops[i]);
        for (size_t k = 1; k < len && k <= n; k++)
            if (n - k < at && !memcmp(text + n - k, stops[i], k)) return 0;
    }
    return 1;
}

int gq_eval_cut_decided(const gq_tokenizer *tok, const int32_t *prompt, size_t n_prompt, const int32_t *ids, size_t n,
                        gq_eval_cut how, const char *const *stops, int *out) {
    *out = 0;
    n = gq_eval_stable_tokens(tok, ids, n);
    if (!n) return GQ_OK;
    char *text = NULL;
    size_t tn = 0;
    int rc = gq_eval_answer_text(tok, prompt, n_prompt, ids, n, &text, &tn);
    if (rc) return rc;
    while (tn >= 3 && !memcmp(text + tn - 3, "\xEF\xBF\xBD", 3)) tn -= 3; /* U+FFFD: may still become a character */
    text[tn] = 0;
    *out = decided(text, tn, how, stops);
    free(text);
    return GQ_OK;
}
