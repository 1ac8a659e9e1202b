/*
 * gq/ppl.h -- perplexity of a model on a text (or on token ids).
 *
 * Protocol (docs/reference-results.md, as the GPTQ paper's llama_eval and
 * transformers' labels= loss): the text is tokenized as <s> + encode(text)
 * (the tokenizer's post-processor), cut into consecutive non-overlapping
 * windows of seqlen tokens (the tail that does not fill a window is
 * dropped); each window is an independent sequence; its loss is the mean
 * negative log-likelihood of its seqlen - 1 next-token predictions; the
 * perplexity is exp(mean of the window losses).
 *
 * The computation is layer-major over chunks of windows: a chunk's
 * activations stay on the backend while each layer is loaded once and run
 * over every window of the chunk, so memory is one chunk of activations plus
 * one layer; the chunk size comes from a memory budget. On the CPU backend
 * the windows of a chunk run in parallel, one per thread, each op
 * single-threaded inside (no barrier per op); on a GPU one after another.
 */
#ifndef GQ_PPL_H
#define GQ_PPL_H

#include "gq/backend.h"
#include "gq/model.h"
#include "gq/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int seqlen;           /* window length in tokens (2048) */
    int max_windows;      /* evaluate at most this many windows (0 = all) */
    size_t budget_bytes;  /* backend memory for a chunk's activations (0 = 512 MiB on the CPU, or
                             half the free device memory on a GPU) */
    int max_chunk;        /* at most this many windows per chunk (0 = enough chunks for ~10 progress lines) */
    int progress;         /* print "[i/n] ppl x" + elapsed/ETA on stderr after each chunk */
} gq_ppl_opts;

void gq_ppl_opts_default(gq_ppl_opts *o);

typedef struct {
    double ppl;          /* exp(mean window loss) */
    double mean_nll;     /* mean of the window losses */
    int n_windows;
    int64_t n_predictions; /* n_windows * (seqlen - 1) */
    int64_t n_tokens;    /* tokens available (all of them, before windowing) */
    double *window_nll;  /* [n_windows] loss of each window (mean NLL) */
    double seconds;
} gq_ppl_result;

void gq_ppl_result_free(gq_ppl_result *r);

/* Perplexity over windows of ids[0..n) (already including the leading <s>).
 * Fewer than seqlen ids is GQ_ERR_DATA saying how many there are and how many
 * are needed. */
int gq_ppl_ids(const gq_model *m, gq_backend *be, const int32_t *ids, size_t n, const gq_ppl_opts *o,
               gq_ppl_result *r);

/* Tokenize text (<s> + encode(text)) and run gq_ppl_ids. `where` names the
 * text in messages (a file path). */
int gq_ppl_text(const gq_model *m, gq_backend *be, const gq_tokenizer *tok, const char *text, size_t len,
                const char *where, const gq_ppl_opts *o, gq_ppl_result *r);

#ifdef __cplusplus
}
#endif
#endif /* GQ_PPL_H */
