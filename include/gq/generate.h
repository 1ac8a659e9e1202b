/*
 * gq/generate.h -- text generation with a Llama checkpoint resident on a
 * backend, for self-generated calibration sets (`gq calib`): the model
 * answers its own questions.
 *
 * Engine: every layer is uploaded once (gq_blayer), plus the final norm and
 * the lm_head. Each of max_batch slots owns a KV cache per layer: K and V
 * activation buffers [max_len][n_kv * head_dim]. A prompt is prefilled into
 * its slot in chunks of up to prefill_chunk tokens (the k/v projections write
 * straight into the cache rows). A decode step stacks the current token of
 * each of B active slots into one [B][hidden] matrix, so every projection is
 * one GEMM for the batch; RoPE is applied per row at that row's position,
 * k/v are appended to each row's cache and attention runs per row (Tq = 1
 * against that slot's Tk cached keys). Logits come back to the host
 * (gq_be_nll's logits_out) and are sampled there.
 *
 * gq_gen_run schedules continuously: finished sequences free their slot and
 * the next waiting prompt is prefilled into it. Batching never changes which
 * token a sequence samples except through floating-point rounding of the
 * GEMMs (different row counts may use different kernels): greedy decoding is
 * identical across batch sizes up to exact fp32 ties of the two best logits.
 *
 * Sampling (host, as transformers' LogitsProcessors in this order):
 *   temperature 0       greedy: the first index of the largest logit;
 *   temperature T > 0   logits / T, then
 *   top_k > 0           keep the k largest (ties with the k-th kept),
 *   top_p < 1           TopPLogitsWarper: sort ascending, drop the tokens
 *                       whose cumulative probability is <= 1 - top_p (the
 *                       most likely token is always kept), i.e. keep the
 *                       smallest set of most likely tokens with cumulative
 *                       probability >= top_p,
 *   then draw from the softmax of what is left.
 * Randomness: xoshiro256** seeded (through splitmix64) from (seed, stream);
 * gq_gen_run uses one stream per sequence (gq_gen_seq.stream, the question
 * index), so a seed reproduces every sample exactly whatever the batch size
 * or order.
 *
 * Stopping: an eos id (all eos ids of the config plus extra ids given in the
 * options; the eos itself is not part of the output), max_new_tokens, the
 * sequence (prompt + answer) reaching max_len tokens, or (gq_gen_run_stop)
 * the caller's stop check, asked after each token appended to the answer:
 * `gq eval` ends a completion there as soon as its text holds a stop
 * sequence instead of generating max_new_tokens and cutting afterwards.
 */
#ifndef GQ_GENERATE_H
#define GQ_GENERATE_H

#include "gq/backend.h"
#include "gq/model.h"
#include "gq/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- sampling ------------------------------------------------------------------- */

typedef struct {
    double temperature; /* 0 = greedy (default) */
    double top_p;       /* 1 = off (default) */
    int top_k;          /* 0 = off (default) */
    uint64_t seed;      /* 0 */
    int max_new_tokens; /* 512 */
} gq_gen_sampling;

void gq_gen_sampling_default(gq_gen_sampling *s);
/* GQ_ERR_ARG naming the field unless temperature >= 0, 0 < top_p <= 1,
 * top_k >= 0, max_new_tokens >= 1. */
int gq_gen_sampling_check(const gq_gen_sampling *s);

typedef struct {
    uint64_t s[4];
} gq_gen_rng;

void gq_gen_rng_seed(gq_gen_rng *r, uint64_t seed, uint64_t stream);
uint64_t gq_gen_rng_next(gq_gen_rng *r);
double gq_gen_rng_uniform(gq_gen_rng *r); /* [0, 1), 53 random bits */

/* Apply temperature, top-k and top-p to logits[vocab] in place: removed
 * tokens become -INFINITY (nothing happens when temperature == 0). */
void gq_gen_sample_filter(float *logits, int vocab, const gq_gen_sampling *s);
/* Pick the next token from logits[vocab] (overwritten by the filter), a
 * draw from the softmax of the kept tokens. Greedy when temperature == 0
 * (r may then be NULL). */
int32_t gq_gen_sample(float *logits, int vocab, const gq_gen_sampling *s, gq_gen_rng *r);

/* ---- engine ----------------------------------------------------------------------- */

typedef struct {
    int max_batch;      /* slots decoded together (16) */
    int max_len;        /* tokens per sequence, prompt included (0 = max_position_embeddings);
                           capped at max_position_embeddings */
    int prefill_chunk;  /* prompt tokens per prefill forward (512) */
    int32_t eos_ids[8]; /* extra stop ids (e.g. the tokenizer's eos), besides the config's */
    int n_eos;
} gq_gen_opts;

void gq_gen_opts_default(gq_gen_opts *o);

typedef struct gq_gen gq_gen;

/* Upload the model (all layers, final norm, lm_head) and allocate the KV
 * caches and scratch. Logs the memory used. */
int gq_gen_init(gq_gen **out, const gq_model *m, gq_backend *be, const gq_gen_opts *o);
void gq_gen_free(gq_gen *g);
int gq_gen_max_len(const gq_gen *g);
int gq_gen_max_batch(const gq_gen *g);
int gq_gen_vocab(const gq_gen *g);
int gq_gen_is_eos(const gq_gen *g, int32_t id);

typedef struct {
    int64_t prefill_tokens, decode_tokens; /* tokens run through the model */
    double prefill_s, decode_s;            /* wall time (logits download and sampling included) */
    int64_t decode_steps;
    int64_t decode_replays;                /* steps replayed from a recording (GQ_CUDA_GRAPH=1) */
} gq_gen_stats;
const gq_gen_stats *gq_gen_get_stats(const gq_gen *g);
void gq_gen_reset_stats(gq_gen *g);

/* Low level, for tests and benchmarks. A slot holds one sequence: its KV
 * cache and current length. */
void gq_gen_slot_reset(gq_gen *g, int slot);
int gq_gen_slot_len(const gq_gen *g, int slot);
/* Append ids[0..n) to the slot's sequence (positions len .. len+n-1);
 * logits (host, may be NULL) receives the [vocab] logits of the last one. */
int gq_gen_prefill(gq_gen *g, int slot, const int32_t *ids, int n, float *logits);
/* One decode step: token tok[i] appended to slot slots[i] (distinct slots),
 * i < B <= max_batch; logits [B][vocab] (host) of the new positions. */
int gq_gen_decode(gq_gen *g, const int *slots, const int32_t *tok, int B, float *logits);

/* ---- generating answers ------------------------------------------------------------ */

typedef enum {
    GQ_GEN_FINISH_NONE = 0,
    GQ_GEN_FINISH_EOS,
    GQ_GEN_FINISH_LENGTH,
    GQ_GEN_FINISH_STOP /* the stop check of gq_gen_run_stop */
} gq_gen_finish;
const char *gq_gen_finish_name(gq_gen_finish f); /* "eos", "length", "stop", "none" */

typedef struct {
    const int32_t *prompt; /* in: prompt ids (with BOS when the model wants it) */
    int n_prompt;
    uint64_t stream;      /* in: RNG stream, e.g. the question index */
    gq_ids out;           /* out: the new tokens, eos excluded; their text is
                             gq_tok_decode_continuation(prompt, out), not out decoded alone */
    gq_gen_finish finish; /* out */
} gq_gen_seq;

/* Called as each sequence finishes (in completion order); a non-zero return
 * stops the run and is returned by gq_gen_run. */
typedef int (*gq_gen_done_fn)(gq_gen_seq *seq, int index, void *user);

/* Asked after each token appended to seq->out (seq->out.n >= 1; never for an
 * eos, which is not appended), before the max_new_tokens / max_len check: a
 * non-zero return finishes the sequence with GQ_GEN_FINISH_STOP, keeping
 * every token generated so far (seq->out, the last one included: cutting
 * the text is the caller's business). It must not change seq. index and user
 * are those of gq_gen_done_fn. It runs once per token of every active
 * sequence, between decode steps: keep it cheap (look at the tail of the
 * answer, not the whole of it). */
typedef int (*gq_gen_stop_fn)(const gq_gen_seq *seq, int index, void *user);

/* Generate for seqs[0..n). A prompt must be 1 .. max_len - 1 tokens
 * (GQ_ERR_ARG naming its index otherwise, checked before any work). */
int gq_gen_run(gq_gen *g, gq_gen_seq *seqs, int n, const gq_gen_sampling *s, gq_gen_done_fn done, void *user);
/* gq_gen_run with a stop check (NULL: none, the same as gq_gen_run). A
 * sequence stopped early frees its slot for the next prompt at once; the
 * tokens it kept are those gq_gen_run gives up to that point (the same
 * sampling stream; greedy decoding up to the batching note above). */
int gq_gen_run_stop(gq_gen *g, gq_gen_seq *seqs, int n, const gq_gen_sampling *s, gq_gen_stop_fn stop,
                    gq_gen_done_fn done, void *user);
void gq_gen_seq_free(gq_gen_seq *s);

/* ---- answer quality ------------------------------------------------------------------ */

/* Degenerate answer: some period p in 1..max_period has a run in which every
 * token equals the token p places earlier, and that run (plus the p tokens
 * it repeats) covers more than `ratio` of the n tokens and at least three
 * periods. E.g. "x = 1\nx = 1\nx = 1\n..." repeated over most of an answer.
 * Returns the period found (0 = not degenerate); *covered gets the run
 * length in tokens. gq calib uses max_period 8, ratio 0.5. */
int gq_gen_degenerate(const int32_t *ids, int n, int max_period, double ratio, int *covered);

#ifdef __cplusplus
}
#endif
#endif /* GQ_GENERATE_H */
