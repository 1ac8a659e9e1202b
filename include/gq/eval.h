/*
 * gq/eval.h -- functional correctness of code models (`gq eval`): HumanEval
 * and MBPP pass@k, the model's completions run against each task's tests
 * in a sandbox (gq/sandbox.h), an int4 model and its fp16 base side by side.
 *
 * Tasks (bundled in calib/eval/, found with gq_data_path; docs/eval.md):
 *   humaneval  the 164 problems of openai/human-eval (MIT). The completion
 *              continues the prompt (a signature and docstring); the program
 *              run is prompt + completion + "\n" + test + "\n" +
 *              "check(<entry_point>)", as human-eval's execution.py builds it.
 *   mbpp       the 500 test-split problems (task_id 11..510) of
 *              google-research MBPP (CC BY 4.0). The prompt is the task text
 *              and its first test in a docstring, as bigcode-evaluation-
 *              harness has it: '"""\n<text>\n<test_list[0]>\n"""\n'; the
 *              program is prompt + completion + "\n" + test_setup_code + "\n"
 *              + the test_list asserts.
 * Prompt formats (--template, gq/prompt.h):
 *   raw, STRING  the model continues the code prompt without its trailing
 *                whitespace (bigcode-evaluation-harness strips it too: a
 *                prompt ending in "\n" splits the "\n    " token that
 *                starts the body, and small models then end the text);
 *                {question} is that prompt; the completion is cut at the
 *                first stop sequence of the task (gq_eval_stops), as the
 *                Codex paper and bigcode-evaluation-harness cut it, and the
 *                program is built on the stripped prompt.
 *   chat         the tokenizer's chat template with an instruction
 *                (gq_eval_problem.question) that asks for one Python markdown
 *                code block; the answer is cut after that block's closing
 *                fence and its code is the completion (where the rendered
 *                prompt itself ends inside an open ``` block, as when the
 *                template's generation prompt opens one, the answer is code up
 *                to the first fence): for HumanEval the program is
 *                prompt + "\n" + code when the code defines the entry point
 *                (it replaces the prompt's stub), prompt + code otherwise.
 * Generation stops at eos, at max_new_tokens, or as soon as the cut above is
 * decided (early stop, gq_gen_run_stop's per-token check; gq_eval_cut_decided):
 * when the answer's text holds a stop sequence (raw, STRING) or the closing
 * fence of its code block (chat) such that no later token can change where
 * the text is cut. The text is still cut as before, so a completion is the
 * one that generating to max_new_tokens and cutting afterwards gives (the
 * tokens before the cut are the same, except where batching rounds a greedy
 * near-tie differently, gq/generate.h); the record's tokens count what was
 * generated. What that saves depends on how often the model writes a stop
 * sequence (docs/eval.md: pycoder-5m's HumanEval tokens -26%, MBPP's -1%).
 */
#ifndef GQ_EVAL_H
#define GQ_EVAL_H

#include "gq/common.h"
#include "gq/generate.h"
#include "gq/sandbox.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- tasks ------------------------------------------------------------------------------ */

typedef enum { GQ_EVAL_HUMANEVAL = 0, GQ_EVAL_MBPP } gq_eval_task_kind;
int gq_eval_task_parse(const char *s, gq_eval_task_kind *out); /* "humaneval" | "mbpp", GQ_ERR_ARG otherwise */
const char *gq_eval_task_name(gq_eval_task_kind k);
const char *gq_eval_task_default_path(gq_eval_task_kind k); /* relative to the data directory */

typedef struct {
    char *task_id;     /* "HumanEval/0", "MBPP/11" */
    char *prompt;      /* the code prompt; completions of --samples and the controls continue it */
    char *gen_prompt;  /* prompt without its trailing whitespace: what raw / STRING generation continues */
    char *question;    /* the instruction for --template chat */
    char *canonical;   /* the reference completion (continues prompt) */
    char *tests;       /* what follows prompt + completion in the program */
    char *entry_point; /* the function the tests call */
} gq_eval_problem;

typedef struct {
    gq_eval_task_kind kind;
    int n;
    gq_eval_problem *p;
    char *path; /* the file read */
} gq_eval_task;

/* Load the task from path (NULL: the bundled copy); the first `limit`
 * problems (0: all). Errors name the file and line. */
int gq_eval_task_load(gq_eval_task *t, gq_eval_task_kind kind, const char *path, int limit);
void gq_eval_task_free(gq_eval_task *t);
/* Index of a task id, or -1. MBPP also takes "Mbpp/11" and "11". */
int gq_eval_task_find(const gq_eval_task *t, const char *task_id);

/* ---- completions and programs --------------------------------------------------------- */

/* The stop sequences of --template raw / STRING, NULL-terminated. */
const char *const *gq_eval_stops(gq_eval_task_kind k);
/* Cut text at the earliest stop sequence; 1 when it was cut. */
int gq_eval_truncate(char *text, const char *const *stops);
/* Chat answers: cut text after the closing fence of its first ``` block (1 when cut). */
int gq_eval_chat_cut(char *text);
/* The code of an answer: the inside of its first ``` block (a language tag
 * after the fence skipped), the whole answer when it has none. */
char *gq_eval_chat_code(const char *answer);
/* Early stop. How a completion's text is cut: at the earliest of the stop
 * sequences (gq_eval_truncate), after the closing fence of the first code
 * block (gq_eval_chat_cut), or at the first fence (chat, where the prompt
 * opened the block). */
typedef enum { GQ_EVAL_CUT_STOPS = 0, GQ_EVAL_CUT_CHAT, GQ_EVAL_CUT_FENCE } gq_eval_cut;
/* The text of ids[0..n) generated after prompt, as a completion's text: decoded as the prompt's
 * continuation (gq_tok_decode_continuation), made valid UTF-8; *text newly allocated. */
int gq_eval_answer_text(const gq_tokenizer *tok, const int32_t *prompt, size_t n_prompt, const int32_t *ids, size_t n,
                        char **text, size_t *text_n);
/* ids[0..n) without a trailing run of byte-fallback tokens ("<0xNN>"): the
 * run's text may still change (its bytes, or one U+FFFD per token when they
 * are not valid UTF-8 as a whole), the text before it no longer does. */
size_t gq_eval_stable_tokens(const gq_tokenizer *tok, const int32_t *ids, size_t n);
/* *decided = 1 when every answer that begins with ids[0..n) (generated after
 * prompt) has its text cut where the text of ids[0..n) is cut, so generation
 * may stop there. It decides on the text of the stable tokens without its
 * trailing U+FFFDs (an unfinished UTF-8 sequence), a prefix of every later
 * text: a cut found there is decided unless an earlier start of another stop
 * sequence runs into its end (it could still complete and come first).
 * stops: gq_eval_stops (GQ_EVAL_CUT_STOPS only). Errors: decoding. */
int gq_eval_cut_decided(const gq_tokenizer *tok, const int32_t *prompt, size_t n_prompt, const int32_t *ids, size_t n,
                        gq_eval_cut how, const char *const *stops, int *decided);
/* What a completion is: the continuation of prompt (human-eval's samples,
 * the controls), of gen_prompt (gq's raw / STRING generation), or the code
 * of a chat answer. */
typedef enum { GQ_EVAL_CONTINUES_PROMPT = 0, GQ_EVAL_CHAT_CODE = 1, GQ_EVAL_CONTINUES_GEN_PROMPT = 2 } gq_eval_form;
/* The program for a completion of problem i. */
char *gq_eval_program(const gq_eval_task *t, int i, const char *completion, gq_eval_form form);
/* The control "broken": the canonical solution with every return value of
 * the entry point changed (bool negated, numbers x*2+1, an element appended
 * to strings, lists, tuples, sets and dicts, None -> 1, anything else -> None). */
char *gq_eval_broken_program(const gq_eval_task *t, int i);

/* ---- scores --------------------------------------------------------------------------- */

/* The unbiased pass@k estimator of the HumanEval paper for n samples of which
 * c passed: 1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i). */
double gq_eval_pass_at_k(int n, int c, int k);

typedef enum {
    GQ_EVAL_PASSED = 0,
    GQ_EVAL_ASSERTION, /* AssertionError: a test failed */
    GQ_EVAL_EXCEPTION, /* another exception */
    GQ_EVAL_SYNTAX,    /* SyntaxError, IndentationError, TabError */
    GQ_EVAL_TIMEOUT,   /* killed at the wall-clock limit */
    GQ_EVAL_CPU,       /* CPU time limit */
    GQ_EVAL_MEMORY,    /* MemoryError */
    GQ_EVAL_OUTPUT,    /* file or output size limit */
    GQ_EVAL_KILLED,    /* another signal */
    GQ_EVAL_EXIT,      /* a non-zero exit without an exception */
    GQ_EVAL_SANDBOX,   /* the sandbox could not be set up (--resume runs it again) */
    GQ_EVAL_TOO_LONG,  /* the prompt does not fit the model: not generated, not run */
    GQ_EVAL_N_OUTCOMES
} gq_eval_outcome;
const char *gq_eval_outcome_name(gq_eval_outcome o); /* "passed", "assertion", ... */
int gq_eval_outcome_parse(const char *s);            /* -1 if unknown */
/* The outcome of a run; detail (may be NULL) gets the exception line or what killed it. */
gq_eval_outcome gq_eval_classify(const gq_sb_result *r, const gq_sb_opts *o, char *detail, size_t cap);

/* ---- the run ---------------------------------------------------------------------------- */

#define GQ_EVAL_MAX_K 8

typedef struct {
    gq_eval_task_kind task;
    const char *data;          /* dataset file (NULL: bundled) */
    const char *model_dir;     /* completions of this model ("model"), */
    const char *base_dir;      /* and of this one ("base", generated first), */
    const char *samples;       /* or of a samples file (task_id, completion) ("samples"), */
    const char *control;       /* or "canonical" | "broken" */
    int n_samples;             /* per problem (1) */
    gq_gen_sampling sampling;  /* temperature 0: greedy */
    int k[GQ_EVAL_MAX_K], nk;  /* pass@k to report (1, 10: those <= the samples per problem) */
    const char *template_spec; /* "raw" */
    int limit;                 /* first N problems (0: all) */
    int batch;                 /* sequences decoded together (16) */
    const char *out;           /* JSONL of every sample (NULL: none) */
    int resume, force;
    int jobs; /* programs run at once (0: the number of CPUs) */
    gq_sb_opts sandbox;
    const char *python; /* NULL: /usr/bin/python3, else python3 on PATH */
    const char *device, *precision;
    int threads;
    int int4_kernel;   /* --int4-kernel: GQ_Q4_AUTO (default), 1 on, 0 off (gq_model_q4_choose) */
    int no_early_stop; /* generate to eos / max_new_tokens and cut afterwards (tests, timing: the same completions) */
} gq_eval_opts;

void gq_eval_opts_default(gq_eval_opts *o);

typedef struct {
    char tag[16];       /* "model", "base", "samples", "canonical", "broken" */
    const char *source; /* model directory, samples file or control name */
    int n_problems;     /* problems with at least one sample */
    int min_n, max_n;   /* samples per problem */
    long passed, total; /* samples */
    double pass_at[GQ_EVAL_MAX_K];
    int k[GQ_EVAL_MAX_K], nk; /* the k reported (<= min_n) */
    long outcomes[GQ_EVAL_N_OUTCOMES];
    int *pass_count, *count; /* [task n] per problem */
    double gen_s;            /* generation wall time (this run) */
    int64_t gen_tokens;
    long gen_samples;          /* samples generated in this run */
    double exec_s, exec_cpu_s; /* sums over the samples run in this run */
    long exec_samples;
} gq_eval_source_report;

typedef struct {
    int n_sources;
    gq_eval_source_report s[2]; /* with --base: s[0] base, s[1] model */
    int n_problems;
    char **task_ids;    /* [n_problems] */
    long n_done_before; /* samples found in --out by --resume */
    double seconds;
    gq_sb_mode mode;
    char sandbox[512]; /* gq_sb_describe */
    char refusal[768]; /* why no namespaces (unsafe mode) */
} gq_eval_report;

/* Run the evaluation; with o->out, the records go there (a {"gq_eval": settings} header line,
 * then one line per sample: task_id, source, sample, passed, outcome, detail, time, cpu, tokens,
 * finish, completion, answer) and the summary to <out>.summary.json. The report is filled
 * (free it with gq_eval_report_free) even on error, as far as the run got. */
int gq_eval_run(const gq_eval_opts *o, gq_eval_report *rep);
void gq_eval_report_free(gq_eval_report *r);
/* One "eval: <source> pass@k = ..." line per source; with two sources their difference and a
 * markdown table of the problems that differ. */
void gq_eval_print(const gq_eval_report *r, FILE *f);

#ifdef __cplusplus
}
#endif
#endif /* GQ_EVAL_H */
