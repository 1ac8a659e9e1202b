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
 *
 * KL divergence from a base model (gq_ppl_kld_ids, `gq ppl --base`): per chunk the base model
 * and the evaluated model each run the chunk's windows layer-major to their final hidden
 * states (both kept on the backend: a chunk costs the two models' activations); then, window by
 * window, both heads give their logits for blocks of rows (host f32: on a GPU a download of
 * rows x vocab floats per block) and, per prediction, in double:
 *   KL(base || model) = sum_v p_base(v) (log p_base(v) - log p_model(v))
 * with both distributions the log-softmax of the logits, and whether the argmaxes agree (the
 * first maximal index of each). Over all predictions of all windows (the same seqlen - 1 per
 * window as the perplexity): the mean, the median (the mean of the two middle values for an
 * even count) and the 99th percentile (linear interpolation between closest ranks at
 * 0.99 (n - 1), numpy's default) of the per-token KL, and the fraction of agreeing argmaxes:
 * llama.cpp's perplexity --kl-divergence statistics ("Mean KLD", "Median KLD", "99.0% KLD",
 * "Same top p"), except that llama.cpp scores only the second half of each context.
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
    const char *dump_path; /* KL runs, a test hook (`gq ppl`: GQ_KLD_DUMP): write both models' logits of
                              the first dump_windows windows to this safetensors file (NULL: none) */
    int dump_windows;      /* 0: 4 */
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

/* KL divergence of a model's next-token distributions from a base model's (see above). */
typedef struct {
    double mean;         /* mean over the predictions of KL(base || model), nats */
    double median;       /* median of the per-token KL */
    double p99;          /* its 99th percentile */
    double top1;         /* fraction of predictions whose argmax agrees with the base's */
    int64_t n;           /* predictions compared: n_windows * (seqlen - 1) */
    double *token_kld;   /* [n] per-token KL, window by window in text order */
    double *window_kld;  /* [n_windows] mean KL of each window */
    double *window_top1; /* [n_windows] argmax agreement of each window */
    gq_ppl_result base;  /* the base model's perplexity on the same windows */
} gq_kld_result;

void gq_kld_result_free(gq_kld_result *k);

/* Mean, median and 99th percentile (as above) of kl[0..n), n >= 1 (sorts a copy). */
void gq_kld_stats(const double *kl, int64_t n, double *mean, double *median, double *p99);

/* Perplexity of m (into r) and, with base != NULL, the base's perplexity and the KL statistics
 * on the same windows (into k; base NULL: gq_ppl_ids, k untouched). The two models must have
 * the same vocabulary size (GQ_ERR_ARG otherwise); their architectures may differ. */
int gq_ppl_kld_ids(const gq_model *m, const gq_model *base, gq_backend *be, const int32_t *ids, size_t n,
                   const gq_ppl_opts *o, gq_ppl_result *r, gq_kld_result *k);
/* gq_ppl_text with a base model: the text is tokenized with tok (the evaluated model's). */
int gq_ppl_kld_text(const gq_model *m, const gq_model *base, gq_backend *be, const gq_tokenizer *tok,
                    const char *text, size_t len, const char *where, const gq_ppl_opts *o, gq_ppl_result *r,
                    gq_kld_result *k);

#ifdef __cplusplus
}
#endif
#endif /* GQ_PPL_H */
