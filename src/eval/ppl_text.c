/* ppl_text.c -- perplexity of a text: tokenize (<s> + encode) and run
 * gq_ppl_kld_ids. Apart from ppl.c so that token-level users link without the
 * tokenizer. */
#include <stdlib.h>
#include <string.h>

#include "gq/ppl.h"

int gq_ppl_kld_text(const gq_model *m, const gq_model *base, gq_backend *be, const gq_tokenizer *tok,
                    const char *text, size_t len, const char *where, const gq_ppl_opts *o, gq_ppl_result *r,
                    gq_kld_result *k) {
    memset(r, 0, sizeof *r);
    if (base && k) memset(k, 0, sizeof *k);
    gq_ids ids = {0};
    int bos = gq_tok_bos(tok);
    if (!gq_tok_adds_bos(tok) && bos >= 0) {
        /* the protocol is <s> + encode(text) even when the post-processor does not add it */
        gq_info("%s: the tokenizer's post-processor adds no BOS; prepending id %d", where, bos);
        gq_ids_push(&ids, bos);
    }
    double t0 = gq_now();
    int rc = gq_tok_encode(tok, text, len, 1, &ids);
    if (rc != GQ_OK) {
        gq_ids_free(&ids);
        return gq_err_prefix("%s", where);
    }
    gq_info("%s: %zu bytes -> %zu tokens (%.1f s)", where, len, ids.n, gq_now() - t0);
    if (ids.n < (size_t)o->seqlen) {
        rc = gq_err(GQ_ERR_DATA,
                    "%s: the text has %zu tokens, at least %d are needed for one window of --seqlen %d "
                    "(lower --seqlen or use a longer text)",
                    where, ids.n, o->seqlen, o->seqlen);
    } else {
        rc = gq_ppl_kld_ids(m, base, be, ids.v, ids.n, o, r, k);
    }
    gq_ids_free(&ids);
    return rc;
}

int gq_ppl_text(const gq_model *m, gq_backend *be, const gq_tokenizer *tok, const char *text, size_t len,
                const char *where, const gq_ppl_opts *o, gq_ppl_result *r) {
    return gq_ppl_kld_text(m, NULL, be, tok, text, len, where, o, r, NULL);
}
