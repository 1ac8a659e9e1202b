/* test_gen_stop.c -- early stopping: the per-token stop check of gq_gen_run_stop (gq/generate.h) and gq eval's use
 * of it (gq_eval_cut_decided, gq/eval.h), on tests/data/pycoder-5m on the CPU:
 *   - a check that stops sequence i at K_i tokens gives exactly K_i tokens (finish "stop"), the first K_i tokens
 *     of the run without it, greedy and sampled (the same streams), with more prompts than slots, K = 1 (the
 *     token sampled after the prefill) and K = max_new_tokens included; it is asked once per appended token, never
 *     for an eos; the engine decodes fewer tokens;
 *   - gq_eval_cut_decided on hand-made answers (a stop sequence spread over tokens, an open run of byte-fallback
 *     tokens, an unfinished UTF-8 sequence, a longer stop sequence begun before the cut, the chat fences) and on
 *     random answers of the byte-level (pycoder) and the byte-fallback (Llama-2) tokenizer: wherever it says
 *     "decided" after t tokens, the text of those t tokens is cut exactly where the text of the whole answer is;
 *   - gq eval with early stop (the default) and without (no_early_stop: generation to max_new_tokens, cut
 *     afterwards): the same completion, answer, finish and outcome for every problem of HumanEval and MBPP
 *     (raw) and of two chat templates (one whose generation prompt opens the code block, one that does not), and
 *     fewer tokens generated.
 * GQ_TEST_QUICK (the sanitizer pass of make test): fewer random answers, fewer problems and shorter completions. */
#include <jansson.h>

#include "gq/eval.h"
#include "gq/generate.h"
#include "test.h"
#include "test_gen_util.h"
#include "text/unicode.h" /* gq_uni_repair, as gq eval repairs the text */

/* ---- the engine's stop check ---------------------------------------------------------------------------- */

typedef struct {
    const int *k;  /* [seq] stop after k tokens */
    int calls[16]; /* [seq] times asked */
    int bad;       /* asked out of turn */
} count_stop;

static int stop_at_count(const gq_gen_seq *s, int index, void *user) {
    count_stop *c = user;
    c->calls[index]++;
    if ((size_t)c->calls[index] != s->out.n || s->finish != GQ_GEN_FINISH_NONE) c->bad++;
    return (int)s->out.n >= c->k[index];
}

static void check_stop_count(const gq_model *m, gq_backend *be, const gq_tokenizer *tok) {
    TEST_BEGIN("stop at a count");
    static const char *texts[] = {
        "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n",
        "import os\n\n\ndef list_files(path):\n",
        "class Stack:\n    def __init__(self):\n",
        "def fib(n):\n    if n < 2:\n        return n\n",
        "# read a file\nwith open(",
        "def is_prime(n: int) -> bool:\n",
        "for i in range(10):\n    print(",
    };
    enum { N = sizeof texts / sizeof *texts, MAXNEW = 40 };
    static const int ks[N] = {1, 2, 5, 9, 17, 33, MAXNEW};
    gq_ids prompts[N];
    memset(prompts, 0, sizeof prompts);
    for (int i = 0; i < N; i++) GQ_ASSERT(gq_tok_encode(tok, texts[i], strlen(texts[i]), 1, &prompts[i]) == GQ_OK);
    gq_gen_opts o;
    gq_gen_opts_default(&o);
    o.max_batch = 3; /* 7 prompts: slots are refilled as sequences stop */
    o.max_len = 128;
    gq_gen *g = NULL;
    TEST_OK(gq_gen_init(&g, m, be, &o), "engine");
    if (!g) return;
    for (int sampled = 0; sampled < 2; sampled++) {
        gq_gen_sampling sp;
        gq_gen_sampling_default(&sp);
        sp.max_new_tokens = MAXNEW;
        if (sampled) {
            sp.temperature = 0.8;
            sp.top_p = 0.95;
            sp.seed = 7;
        }
        const char *how = sampled ? "sampled" : "greedy";
        gq_gen_seq ref[N], st[N];
        for (int i = 0; i < N; i++) {
            gq_gen_seq s = {.prompt = prompts[i].v, .n_prompt = (int)prompts[i].n, .stream = (uint64_t)i};
            ref[i] = st[i] = s;
        }
        gq_gen_reset_stats(g);
        TEST_OK(gq_gen_run(g, ref, N, &sp, NULL, NULL), "%s: without a stop check", how);
        int64_t ref_decoded = gq_gen_get_stats(g)->decode_tokens;
        count_stop cs = {.k = ks};
        gq_gen_reset_stats(g);
        TEST_OK(gq_gen_run_stop(g, st, N, &sp, stop_at_count, NULL, &cs), "%s: stopping at counts", how);
        int64_t decoded = gq_gen_get_stats(g)->decode_tokens;
        TEST_CHECK(cs.bad == 0, "%s: the check is asked once per appended token (%d calls out of turn)", how, cs.bad);
        for (int i = 0; i < N; i++) {
            const gq_gen_seq *r = &ref[i], *s = &st[i];
            int prefix = s->out.n <= r->out.n && !memcmp(s->out.v, r->out.v, s->out.n * sizeof *s->out.v);
            TEST_CHECK(prefix, "%s, prompt %d: the tokens kept are the first %zu of the run without the check", how, i,
                       s->out.n);
            if (r->finish == GQ_GEN_FINISH_EOS && (int)r->out.n < ks[i]) { /* eos first: the check never saw it */
                TEST_CHECK(s->finish == GQ_GEN_FINISH_EOS && s->out.n == r->out.n && cs.calls[i] == (int)r->out.n,
                           "%s, prompt %d: eos after %zu tokens, before the count %d (%s, %zu tokens)", how, i,
                           r->out.n, ks[i], gq_gen_finish_name(s->finish), s->out.n);
            } else {
                TEST_CHECK(s->finish == GQ_GEN_FINISH_STOP && (int)s->out.n == ks[i] && cs.calls[i] == ks[i],
                           "%s, prompt %d: stopped at %d tokens: %zu tokens, finish %s, asked %d times", how, i, ks[i],
                           s->out.n, gq_gen_finish_name(s->finish), cs.calls[i]);
            }
        }
        TEST_CHECK(decoded < ref_decoded, "%s: %lld tokens decoded with the check, %lld without", how,
                   (long long)decoded, (long long)ref_decoded);
        for (int i = 0; i < N; i++) {
            gq_gen_seq_free(&ref[i]);
            gq_gen_seq_free(&st[i]);
        }
    }
    TEST_CHECK(!strcmp(gq_gen_finish_name(GQ_GEN_FINISH_STOP), "stop"), "finish name \"stop\"");
    gq_gen_free(g);
    for (int i = 0; i < N; i++) gq_ids_free(&prompts[i]);
}

/* ---- gq_eval_cut_decided ------------------------------------------------------------------------------- */

/* the text of ids after prompt, cut as gq eval cuts it; malloc'd */
static char *cut_text(const gq_tokenizer *tok, const gq_ids *prompt, const int32_t *ids, size_t n, gq_eval_cut how,
                      const char *const *stops) {
    char *raw = NULL;
    size_t rn = 0, tn = 0;
    GQ_ASSERT(gq_tok_decode_continuation(tok, prompt->v, prompt->n, ids, n, 1, &raw, &rn) == GQ_OK);
    char *text = gq_uni_repair(raw, rn, &tn);
    free(raw);
    if (how == GQ_EVAL_CUT_STOPS)
        gq_eval_truncate(text, stops);
    else if (how == GQ_EVAL_CUT_CHAT)
        gq_eval_chat_cut(text);
    else {
        char *f = strstr(text, "```");
        if (f) *f = 0;
    }
    return text;
}

static int decided_at(const gq_tokenizer *tok, const gq_ids *prompt, const gq_ids *a, size_t n, gq_eval_cut how,
                      const char *const *stops) {
    int d = -1;
    TEST_OK(gq_eval_cut_decided(tok, prompt->v, prompt->n, a->v, n, how, stops, &d), "decide");
    return d;
}

/* ids of the named pieces */
static void pieces(const gq_tokenizer *tok, gq_ids *out, const char *const *names) {
    out->n = 0;
    for (; *names; names++) {
        int32_t id = gq_tok_find(tok, *names);
        GQ_ASSERT(id >= 0);
        gq_ids_push(out, id);
    }
}

static void check_decided_cases(const gq_tokenizer *pyc, const gq_tokenizer *l2) {
    TEST_BEGIN("decided: cases");
    const char *const *he = gq_eval_stops(GQ_EVAL_HUMANEVAL);
    gq_ids pp = {0}, lp = {0}, a = {0};
    static const char prompt[] = "def f(x):\n    \"\"\"Return x.\"\"\"";
    GQ_ASSERT(gq_tok_encode(pyc, prompt, strlen(prompt), 1, &pp) == GQ_OK);
    GQ_ASSERT(gq_tok_encode(l2, prompt, strlen(prompt), 1, &lp) == GQ_OK);
    /* byte-level: "\n    return x" "\n" "def" */
    pieces(pyc, &a, (const char *const[]){"Ċ", "Ġ", "Ġ", "Ġ", "Ġreturn", "Ġx", "Ċ", "def", NULL});
    TEST_CHECK(decided_at(pyc, &pp, &a, 7, GQ_EVAL_CUT_STOPS, he) == 0, "\"\\n\" alone decides nothing");
    TEST_CHECK(decided_at(pyc, &pp, &a, 8, GQ_EVAL_CUT_STOPS, he) == 1, "\"\\n\" + \"def\" over two tokens decides");
    /* an unfinished UTF-8 sequence after the stop: still decided (the stop is before it) */
    pieces(pyc, &a, (const char *const[]){"Ċ", "#", "â", NULL});
    TEST_CHECK(decided_at(pyc, &pp, &a, 3, GQ_EVAL_CUT_STOPS, he) == 1, "\"\\n#\" then half a character");
    /* a stop sequence that begins before the cut and may still complete: "ab" found, "xaby" begun */
    static const char *const own[] = {"ab", "xaby", NULL};
    pieces(pyc, &a, (const char *const[]){"x", "a", "b", "z", NULL});
    TEST_CHECK(decided_at(pyc, &pp, &a, 3, GQ_EVAL_CUT_STOPS, own) == 0, "\"xab\": \"xaby\" may still come first");
    TEST_CHECK(decided_at(pyc, &pp, &a, 4, GQ_EVAL_CUT_STOPS, own) == 1, "\"xabz\": decided");
    /* byte fallback (Llama-2): "\n" is <0x0A> */
    pieces(l2, &a, (const char *const[]){"<0x0A>", "def", NULL});
    TEST_CHECK(decided_at(l2, &lp, &a, 2, GQ_EVAL_CUT_STOPS, he) == 1, "<0x0A> def: decided");
    /* "\n#" as byte tokens: the run is open, a third byte could make all of it U+FFFD */
    pieces(l2, &a, (const char *const[]){"<0x0A>", "<0x23>", "<0xE2>", NULL});
    char *t2 = cut_text(l2, &lp, a.v, 2, GQ_EVAL_CUT_STOPS, he), *t3 = cut_text(l2, &lp, a.v, 3, GQ_EVAL_CUT_STOPS, he);
    TEST_CHECK(!strcmp(t2, "") && !strcmp(t3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
               "the premise: <0x0A><0x23> cuts at once, <0xE2> after it leaves no stop ('%s', '%s')", t2, t3);
    free(t2);
    free(t3);
    TEST_CHECK(decided_at(l2, &lp, &a, 2, GQ_EVAL_CUT_STOPS, he) == 0,
               "<0x0A><0x23>: an open byte run decides nothing");
    TEST_CHECK(gq_eval_stable_tokens(l2, a.v, 3) == 0, "no stable token in a run of byte tokens");
    pieces(l2, &a, (const char *const[]){"<0x0A>", "<0x23>", "▁x", NULL});
    TEST_CHECK(decided_at(l2, &lp, &a, 3, GQ_EVAL_CUT_STOPS, he) == 1, "<0x0A><0x23>▁x: the run closed, decided");
    /* chat: the closing fence decides, also spread over tokens */
    static const char cp[] = "Write f.\n### Answer:\n";
    GQ_ASSERT(gq_tok_encode(pyc, cp, strlen(cp), 1, &pp) == GQ_OK);
    pieces(pyc, &a, (const char *const[]){"``", "`", "python", "Ċ", "x", "Ċ", "``", "`", NULL});
    TEST_CHECK(decided_at(pyc, &pp, &a, 3, GQ_EVAL_CUT_CHAT, NULL) == 0, "chat: the opening fence decides nothing");
    TEST_CHECK(decided_at(pyc, &pp, &a, 7, GQ_EVAL_CUT_CHAT, NULL) == 0, "chat: two backticks of the closing fence");
    TEST_CHECK(decided_at(pyc, &pp, &a, 8, GQ_EVAL_CUT_CHAT, NULL) == 1, "chat: the closing fence");
    TEST_CHECK(decided_at(pyc, &pp, &a, 1, GQ_EVAL_CUT_FENCE, NULL) == 0 &&
                   decided_at(pyc, &pp, &a, 2, GQ_EVAL_CUT_FENCE, NULL) == 1,
               "chat inside an opened block: the first fence");
    gq_ids_free(&pp);
    gq_ids_free(&lp);
    gq_ids_free(&a);
}

/* Random answers over tokens that make stop sequences, fences, newlines, byte tokens and pieces of multi-byte
 * characters: every decided prefix cuts where the whole answer cuts. */
static void check_decided_random(const char *name, const gq_tokenizer *tok, const char *const *extra) {
    TEST_BEGIN("decided: random answers");
    static const char *const strs[] = {"\n",    "\n\n",   "def",    " def",   "#",    "@",      "if",
                                       "print", "class",  "assert", "\"\"\"", "\"",   "```",    "``",
                                       "`",     "python", "x",      " ",      "    ", "return", "é",
                                       "€",     "日本",   "\nif",   "\ndef",  "ab",   "xaby",   NULL};
    static const char *const hot_strs[] = {"```", "`", "\n", "#", "def", NULL}; /* drawn a third of the time */
    gq_ids alpha = {0}, hot = {0};
    for (int i = 0; strs[i]; i++) GQ_ASSERT(gq_tok_encode(tok, strs[i], strlen(strs[i]), 0, &alpha) == GQ_OK);
    for (int i = 0; hot_strs[i]; i++) GQ_ASSERT(gq_tok_encode(tok, hot_strs[i], strlen(hot_strs[i]), 0, &hot) == GQ_OK);
    for (int i = 0; extra[i]; i++) {
        int32_t id = gq_tok_find(tok, extra[i]);
        GQ_ASSERT(id >= 0);
        gq_ids_push(&alpha, id);
    }
    gq_ids prompt = {0};
    static const char ptext[] = "def g(y):\n    \"\"\"Return y.\"\"\"";
    GQ_ASSERT(gq_tok_encode(tok, ptext, strlen(ptext), 1, &prompt) == GQ_OK);
    static const char *const own[] = {"ab", "xaby", "\nif", NULL};
    struct {
        gq_eval_cut how;
        const char *const *stops;
        const char *what;
    } modes[] = {{GQ_EVAL_CUT_STOPS, gq_eval_stops(GQ_EVAL_HUMANEVAL), "humaneval stops"},
                 {GQ_EVAL_CUT_STOPS, gq_eval_stops(GQ_EVAL_MBPP), "mbpp stops"},
                 {GQ_EVAL_CUT_STOPS, own, "overlapping stops"},
                 {GQ_EVAL_CUT_CHAT, NULL, "chat"},
                 {GQ_EVAL_CUT_FENCE, NULL, "chat in a block"}};
    enum { L = 20 };
    const int SEQS = getenv("GQ_TEST_QUICK") ? 100 : 300;
    test_rng_state = 0x5EED0015ull;
    for (size_t mi = 0; mi < sizeof modes / sizeof *modes; mi++) {
        long n_decided = 0, wrong = 0, early = 0;
        for (int sq = 0; sq < SEQS; sq++) {
            int32_t a[L];
            for (int k = 0; k < L; k++) {
                const gq_ids *from = test_rng_next() % 3 ? &alpha : &hot;
                a[k] = from->v[test_rng_next() % from->n];
            }
            char *whole = cut_text(tok, &prompt, a, L, modes[mi].how, modes[mi].stops);
            int first = 0;
            for (int t = 1; t <= L; t++) {
                int d = -1;
                if (gq_eval_cut_decided(tok, prompt.v, prompt.n, a, (size_t)t, modes[mi].how, modes[mi].stops, &d)) {
                    wrong++;
                    continue;
                }
                if (!d) continue;
                n_decided++;
                if (!first) first = t;
                char *part = cut_text(tok, &prompt, a, (size_t)t, modes[mi].how, modes[mi].stops);
                if (strcmp(part, whole)) {
                    if (wrong < 3)
                        fprintf(stderr, "  %s, %s: decided after %d tokens as '%s', the whole answer cuts to '%s'\n",
                                name, modes[mi].what, t, part, whole);
                    wrong++;
                }
                free(part);
            }
            early += first > 0 && first < L;
            free(whole);
        }
        TEST_CHECK(wrong == 0, "%s, %s: %ld decided prefixes cut otherwise than their whole answer", name,
                   modes[mi].what, wrong);
        TEST_CHECK(early > 0, "%s, %s: %ld of %d random answers decided before their end (%ld prefixes)", name,
                   modes[mi].what, early, SEQS, n_decided);
        fprintf(stderr, "  %s, %s: %ld of %d random answers decided before their end (%ld decided prefixes)\n", name,
                modes[mi].what, early, SEQS, n_decided);
    }
    gq_ids_free(&alpha);
    gq_ids_free(&hot);
    gq_ids_free(&prompt);
}

/* ---- gq eval with and without early stop --------------------------------------------------------------- */

/* a copy of pycoder-5m (symlinks) with a chat template, in tmp/name */
static const char *chat_model(const char *name, const char *tpl) { return chat_model_at(tpath(name), tpl); }

/* the records of an output file, by task_id */
static json_t *records(const char *path) {
    json_t *by = json_object();
    FILE *f = fopen(path, "r");
    if (!f) return by;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *v = json_loads(line, 0, NULL), *id = v ? json_object_get(v, "task_id") : NULL;
        if (json_is_string(id)) json_object_set(by, json_string_value(id), v);
        json_decref(v);
    }
    free(line);
    fclose(f);
    return by;
}

static int same_field(json_t *a, json_t *b, const char *k) {
    json_t *x = json_object_get(a, k), *y = json_object_get(b, k);
    return (!x && !y) || (x && y && json_equal(x, y));
}

static void check_eval(const char *what, gq_eval_task_kind task, const char *model, const char *tpl, int limit,
                       int max_new, int want_stops) {
    TEST_BEGIN("gq eval early stop");
    gq_eval_report rep[2];
    char out[2][700];
    double secs[2];
    int64_t toks[2];
    for (int early = 0; early < 2; early++) {
        gq_eval_opts o;
        gq_eval_opts_default(&o);
        o.task = task;
        o.model_dir = model;
        o.template_spec = tpl;
        o.limit = limit;
        o.sampling.max_new_tokens = max_new;
        o.batch = 4; /* slots refilled as completions stop */
        o.jobs = 1;
        o.device = "cpu";
        o.threads = 1;
        o.sandbox.unsafe = 1; /* where namespaces are refused: the completions matter here, not the sandbox */
        o.no_early_stop = !early;
        snprintf(out[early], sizeof out[0], "%s/%s-%d.jsonl", tmp, what, early);
        o.out = out[early];
        o.force = 1;
        double t0 = gq_now();
        TEST_OK(gq_eval_run(&o, &rep[early]), "%s: gq eval %s early stop", what, early ? "with" : "without");
        secs[early] = gq_now() - t0;
        toks[early] = rep[early].s[0].gen_tokens;
    }
    json_t *a = records(out[0]), *b = records(out[1]);
    const char *id;
    json_t *ra;
    int n = 0, differ = 0, stops = 0, fewer = 0;
    json_object_foreach(a, id, ra) {
        json_t *rb = json_object_get(b, id);
        n++;
        static const char *const fields[] = {"completion", "answer", "finish", "outcome", "detail", NULL};
        for (int i = 0; fields[i]; i++)
            if (!rb || !same_field(ra, rb, fields[i])) {
                if (differ < 4) fprintf(stderr, "  %s %s: %s differs with early stop\n", what, id, fields[i]);
                differ++;
            }
        json_int_t ta = json_integer_value(json_object_get(ra, "tokens")),
                   tb = rb ? json_integer_value(json_object_get(rb, "tokens")) : -1;
        stops += !strcmp(json_string_value(json_object_get(ra, "finish")), "stop");
        fewer += tb < ta;
        TEST_CHECK(tb >= 0 && tb <= ta, "%s %s: %lld tokens with early stop, %lld without", what, id, (long long)tb,
                   (long long)ta);
    }
    TEST_CHECK(n == limit && json_object_size(b) == (size_t)limit, "%s: %d and %zu records of %d problems", what, n,
               json_object_size(b), limit);
    TEST_CHECK(differ == 0, "%s: %d fields differ with early stop (the completions must be the same)", what, differ);
    TEST_CHECK(stops >= want_stops && fewer >= want_stops,
               "%s: %d completions cut at a stop, %d of them generated fewer tokens (want >= %d)", what, stops, fewer,
               want_stops);
    TEST_CHECK(toks[1] < toks[0], "%s: %lld tokens generated with early stop, %lld without", what, (long long)toks[1],
               (long long)toks[0]);
    fprintf(
        stderr,
        "  %s: %d problems, %d cut at a stop; %lld -> %lld tokens, generation %.2f -> %.2f s (run %.2f -> %.2f s)\n",
        what, n, stops, (long long)toks[0], (long long)toks[1], rep[0].s[0].gen_s, rep[1].s[0].gen_s, secs[0], secs[1]);
    json_decref(a);
    json_decref(b);
    gq_eval_report_free(&rep[0]);
    gq_eval_report_free(&rep[1]);
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    gq_set_threads(1);
    gq_model m;
    gq_backend *be = NULL;
    gq_tokenizer *pyc = NULL, *l2 = NULL;
    if (gq_model_open(&m, gq_test_data("pycoder-5m")) || gq_backend_init(&be, "cpu") ||
        gq_tok_load(&pyc, gq_test_data("pycoder-5m")) || gq_tok_load(&l2, gq_test_data("tokenizers/llama2"))) {
        TEST_CHECK(0, "open pycoder-5m, the cpu backend, the tokenizers: %s", gq_errmsg());
        return TEST_REPORT();
    }
    check_stop_count(&m, be, pyc);
    gq_model_close(&m);
    gq_backend_free(be);

    check_decided_cases(pyc, l2);
    /* pieces of "€" (E2 82 AC) in either tokenizer: a character split over tokens */
    check_decided_random("pycoder (byte-level)", pyc, (const char *const[]){"â", "Ĥ", "¬", "Ċ", NULL});
    check_decided_random(
        "llama-2 (byte fallback)", l2,
        (const char *const[]){"<0x0A>", "<0x23>", "<0x60>", "<0xE2>", "<0x82>", "<0xAC>", "<0xFF>", "▁", NULL});
    gq_tok_free(pyc);
    gq_tok_free(l2);

    snprintf(tmp, sizeof tmp, "%s", gq_test_tmpdir("gen-stop"));
    gq_mkdirs(tmp);
    const char *model = gq_test_data("pycoder-5m");
    int q = getenv("GQ_TEST_QUICK") != NULL; /* MBPP/16 (the 6th) stops at 90 tokens, chat's HumanEval/1 at 2 */
    check_eval("humaneval", GQ_EVAL_HUMANEVAL, model, "raw", q ? 8 : 16, q ? 192 : 384, q ? 2 : 4);
    check_eval("mbpp", GQ_EVAL_MBPP, model, "raw", q ? 6 : 8, q ? 128 : 256, 1);
    /* a generation prompt that opens the code block: the answer ends at the first fence */
    check_eval("chat-in-block", GQ_EVAL_HUMANEVAL,
               chat_model("chat-a", "{% for m in messages %}### User:\n{{ m['content'] }}\n{% endfor %}"
                                    "{% if add_generation_prompt %}### Assistant:\n```python\n{% endif %}"),
               "chat", q ? 4 : 8, q ? 96 : 192, 1);
    /* one that does not: the answer ends after the closing fence of its first block */
    check_eval("chat", GQ_EVAL_HUMANEVAL,
               chat_model("chat-b", "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                                    "{% if add_generation_prompt %}# Answer:\n{% endif %}"),
               "chat", q ? 4 : 8, q ? 96 : 192, 2);
    gq_rmtree(tmp);
    return TEST_REPORT();
}
