/* test_calib_e2e.c -- `gq calib` end to end on tests/data/pycoder-5m (CPU,
 * one thread, 24-token answers):
 *   - greedy records equal transformers' greedy tokens
 *     (tests/data/gen/greedy-pycoder-5m.json: the prompts are its questions),
 *     or are dropped for the documented reason; a prompt longer than the
 *     model's positions is skipped;
 *   - a crash after the first batch (simulated by a file holding that batch
 *     plus a torn write, plain and gzip) resumes to exactly the records of
 *     an uninterrupted run;
 *   - seeded sampling writes the same records at batch 1 and batch 3;
 *   - --force / --resume / changed-questions checks, a chat-template run;
 *   - the output read back by gq_calib_load with sample windowing;
 *   - the gq binary (GQ_BIN) for exit codes.
 * Comparisons are exact: records are compared as JSON text. */
#include <sys/wait.h>

#include "cmd/cmds.h"
#include "gq/calib.h"
#include "gq/calib_gen.h"
#include "test_gen_util.h"

#define MAXL 64

typedef struct {
    char *line[MAXL];
    int n;
} lines;

static int collect(const char *line, size_t len, long lineno, void *user) {
    lines *l = user;
    (void)lineno;
    if (l->n < MAXL) {
        l->line[l->n] = gq_malloc(len + 1);
        memcpy(l->line[l->n], line, len);
        l->line[l->n++][len] = 0;
    }
    return GQ_OK;
}

static void lines_free(lines *l) {
    for (int i = 0; i < l->n; i++) free(l->line[i]);
    l->n = 0;
}

static lines read_lines(const char *path) {
    lines l = {.n = 0};
    size_t cut;
    int rc = gq_calib_gen_out_scan(path, collect, &l, &cut);
    TEST_CHECK(rc == GQ_OK && cut == 0, "%s reads back whole (%s)", path, gq_errmsg());
    return l;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* same lines, in any order */
static int same_set(lines *a, lines *b) {
    if (a->n != b->n) return 0;
    qsort(a->line, (size_t)a->n, sizeof *a->line, cmp_str);
    qsort(b->line, (size_t)b->n, sizeof *b->line, cmp_str);
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->line[i], b->line[i])) return 0;
    return 1;
}

/* gq_cmd_calib as main() calls it: argv[0] is the command's name */
static int run_cmd(const char *const *args) {
    char *argv[40] = {"calib"};
    int n = 1;
    while (args[n - 1] && n < 39) {
        argv[n] = (char *)args[n - 1];
        n++;
    }
    argv[n] = NULL;
    return gq_cmd_calib(n, argv);
}

static void base_opts(gq_calib_gen_opts *o, const char *q, const char *out) {
    gq_calib_gen_opts_default(o);
    o->model_dir = gq_test_data("pycoder-5m");
    o->questions = q;
    o->out = out;
    o->batch = 2;
    o->sampling.max_new_tokens = 24;
    o->min_answer_tokens = 4;
    o->threads = 1;
    o->device = "cpu";
}

static json_t *golden;

/* The questions: the five greedy-golden prompts, then one too long for 2048 positions. */
static const char *write_questions(void) {
    static char p[700]; /* tpath() buffers rotate: keep this one */
    snprintf(p, sizeof p, "%s", tpath("q.jsonl"));
    FILE *f = fopen(p, "wb");
    json_t *c;
    size_t i;
    json_array_foreach(json_object_get(golden, "cases"), i, c) {
        json_t *r = json_pack("{s:O}", "prompt", json_object_get(c, "prompt"));
        char *s = json_dumps(r, JSON_COMPACT);
        fprintf(f, "%s\n", s);
        free(s);
        json_decref(r);
    }
    fputs("{\"prompt\": \"", f);
    for (int k = 0; k < 1500; k++) fputs("x = 1\\n", f);
    fputs("\"}\n", f);
    fclose(f);
    return p;
}

/* Records vs transformers' greedy tokens: each golden case is either a record
 * with exactly the decoded first 24 golden tokens, or dropped for the reason
 * the rule gives for those tokens. */
static void check_greedy_records(const char *out, const gq_calib_gen_report *r) {
    gq_tokenizer *tok;
    if (gq_tok_load(&tok, gq_test_data("pycoder-5m"))) return;
    lines rec = read_lines(out), dropped = read_lines(tpath("A.jsonl.dropped"));
    json_t *c;
    size_t i;
    int kept = 0, drops = 0;
    json_array_foreach(json_object_get(golden, "cases"), i, c) {
        json_t *ids = json_object_get(c, "new_ids");
        int32_t v[24];
        for (int k = 0; k < 24; k++) v[k] = (int32_t)json_integer_value(json_array_get(ids, k));
        char *want;
        size_t wn;
        gq_tok_decode(tok, v, 24, 1, &want, &wn);
        int cov, degenerate = gq_gen_degenerate(v, 24, 8, 0.5, &cov) != 0;
        json_t *found = NULL;
        for (int k = 0; k < rec.n; k++) {
            json_t *j = json_loads(rec.line[k], 0, NULL);
            if (json_integer_value(json_object_get(j, "index")) == (json_int_t)i)
                found = j;
            else
                json_decref(j);
        }
        char dl[64];
        snprintf(dl, sizeof dl, "{\"index\": %zu, \"reason\": \"degenerate\"}", i);
        int in_dropped = 0;
        for (int k = 0; k < dropped.n; k++) in_dropped |= !strcmp(dropped.line[k], dl);
        if (degenerate) {
            drops++;
            TEST_CHECK(!found && in_dropped, "case %zu: degenerate greedy answer (period covering %d/24) is dropped", i,
                       cov);
        } else {
            kept++;
            TEST_CHECK(found != NULL, "case %zu: a record", i);
            if (found) {
                TEST_CHECK(!strcmp(json_string_value(json_object_get(found, "answer")), want),
                           "case %zu: answer = transformers' greedy tokens decoded", i);
                TEST_CHECK(!strcmp(json_string_value(json_object_get(found, "question")),
                                   json_string_value(json_object_get(c, "prompt"))) &&
                               !json_object_get(found, "raw_question"),
                           "case %zu: question is the prompt (raw)", i);
                TEST_CHECK(json_integer_value(json_object_get(found, "prompt_tokens")) ==
                                   (json_int_t)json_array_size(json_object_get(c, "prompt_ids")) &&
                               json_integer_value(json_object_get(found, "answer_tokens")) == 24 &&
                               !strcmp(json_string_value(json_object_get(found, "finish")), "length"),
                           "case %zu: token counts and finish", i);
            }
        }
        json_decref(found);
        free(want);
    }
    TEST_CHECK(r->n_written == kept && r->n_degenerate == drops && r->n_too_long == 1 && r->n_questions == 6 &&
                   r->n_generated == 5 && r->n_total == kept && r->len_min == 24 && r->len_max == 24,
               "report: %ld written (%d), %ld degenerate (%d), %ld too long, %ld generated", r->n_written, kept,
               r->n_degenerate, drops, r->n_too_long, r->n_generated);
    TEST_CHECK(kept >= 2 && drops >= 1, "the goldens exercise both kept and dropped answers (%d, %d)", kept, drops);
    lines_free(&rec);
    lines_free(&dropped);
    gq_tok_free(tok);
}

/* --resume after a simulated crash: out holds the first batch of `full`
 * plus a torn write; the resumed file must hold exactly full's records. */
static void check_resume(const char *q, const char *full, const char *out, int gz) {
    lines all = read_lines(full), all_dropped;
    char side_full[700], side[700];
    snprintf(side_full, sizeof side_full, "%s.dropped", full);
    snprintf(side, sizeof side, "%s.dropped", out);
    all_dropped = read_lines(side_full);
    /* the first batch, then half of the next write */
    gq_calib_gen_out *o;
    TEST_OK(gq_calib_gen_out_open(&o, out, 0), "write the first batch");
    char batch[8192] = "", next[8192] = "";
    for (int i = 0; i < all.n; i++) {
        char *dst = i < 1 ? batch : next;
        strcat(dst, all.line[i]);
        strcat(dst, "\n");
    }
    gq_calib_gen_out_write(o, batch, strlen(batch));
    gq_calib_gen_out_close(o);
    size_t before = file_size(out);
    TEST_OK(gq_calib_gen_out_open(&o, out, 1), "append the next batch");
    gq_calib_gen_out_write(o, next, strlen(next));
    gq_calib_gen_out_close(o);
    size_t after = file_size(out);
    TEST_CHECK(truncate(out, (off_t)(before + (after - before) / 2)) == 0, "tear the second write");
    write_text(side, "");
    const char *args[] = {"--model",
                          gq_test_data("pycoder-5m"),
                          "--questions",
                          q,
                          "--out",
                          out,
                          "--batch",
                          "3",
                          "--max-new-tokens",
                          "24",
                          "--min-answer-tokens",
                          "4",
                          "--threads",
                          "1",
                          "--device",
                          "cpu",
                          "--resume",
                          NULL};
    TEST_OK(run_cmd(args), "gq calib --resume (%s)", gz ? "gzip" : "plain");
    lines got = read_lines(out), got_dropped = read_lines(side);
    TEST_CHECK(same_set(&got, &all), "%s: resumed file has the records of the uninterrupted run (%d vs %d)",
               gz ? "gzip" : "plain", got.n, all.n);
    TEST_CHECK(same_set(&got_dropped, &all_dropped), "%s: and the same dropped list", gz ? "gzip" : "plain");
    /* resuming a complete file generates nothing and keeps it */
    size_t sz = file_size(out);
    TEST_OK(run_cmd(args), "resume of a complete file");
    TEST_CHECK(file_size(out) == sz, "complete file unchanged");
    lines_free(&all);
    lines_free(&all_dropped);
    lines_free(&got);
    lines_free(&got_dropped);
}

static void check_readback(const char *out, int nrec) {
    gq_tokenizer *tok;
    if (gq_tok_load(&tok, gq_test_data("pycoder-5m"))) return;
    gq_calib_opts co;
    gq_calib_opts_default(&co);
    co.path = out;
    co.nsamples = nrec;
    co.seqlen = 40;
    co.min_tokens = 1;
    gq_calib_set set;
    TEST_OK(gq_calib_load(&set, tok, &co), "gq_calib_load of the gq calib output");
    TEST_CHECK(set.n == nrec && set.windowing == GQ_WIN_SAMPLE, "sample windowing, %d sequences (got %d)", nrec, set.n);
    lines l = read_lines(out);
    for (int i = 0; i < set.n && i < l.n; i++) {
        json_t *j = json_loads(l.line[i], 0, NULL);
        const char *qs = json_string_value(json_object_get(j, "question")),
                   *as = json_string_value(json_object_get(j, "answer"));
        size_t n = strlen(qs) + strlen(as);
        char *t = gq_malloc(n + 1);
        snprintf(t, n + 1, "%s%s", qs, as);
        gq_ids ids = {0};
        gq_tok_encode(tok, t, n, 0, &ids);
        int k = (int)ids.n + 1 < 40 ? (int)ids.n + 1 : 40;
        TEST_CHECK(set.len[i] == k && set.seq[i][0] == gq_tok_bos(tok) &&
                       !memcmp(set.seq[i] + 1, ids.v, (size_t)(k - 1) * sizeof(int32_t)),
                   "record %d: <s> + question + answer, cut to 40 tokens", i);
        gq_ids_free(&ids);
        free(t);
        json_decref(j);
    }
    lines_free(&l);
    gq_calib_free(&set);
    gq_tok_free(tok);
}

static void check_chat(void) {
    TEST_BEGIN("chat template run");
    json_t *pd = test_load_json(gq_test_data("gen/prompts-pycoder.json"));
    if (!pd) return;
    const char *tpl = json_string_value(json_object_get(json_object_get(pd, "templates"), "llama-2-chat"));
    char dir[700], q[700], out[700];
    snprintf(dir, sizeof dir, "%s", chat_model_dir(tpl));
    snprintf(q, sizeof q, "%s", tpath("chatq.jsonl"));
    snprintf(out, sizeof out, "%s", tpath("chat.jsonl"));
    FILE *f = fopen(q, "wb");
    json_t *c;
    size_t i;
    json_array_foreach(json_object_get(pd, "cases"), i, c) {
        json_t *rec = json_pack("{s:O}", "question", json_object_get(c, "question"));
        char *s = json_dumps(rec, JSON_COMPACT);
        fprintf(f, "%s\n", s);
        free(s);
        json_decref(rec);
    }
    fclose(f);
    gq_calib_gen_opts o;
    gq_calib_gen_report r;
    base_opts(&o, q, out);
    o.model_dir = dir;
    o.template_spec = "chat";
    o.min_answer_tokens = 0;
    TEST_OK(gq_calib_gen_run(&o, &r), "gq calib --template chat");
    lines l = read_lines(out);
    TEST_CHECK(l.n + r.n_empty + r.n_degenerate + r.n_duplicate == 3, "every question answered or dropped");
    for (int k = 0; k < l.n; k++) {
        json_t *j = json_loads(l.line[k], 0, NULL);
        json_int_t ix = json_integer_value(json_object_get(j, "index"));
        json_t *w = json_object_get(json_object_get(json_array_get(json_object_get(pd, "cases"), (size_t)ix), "chat"),
                                    "llama-2-chat");
        const char *wt = json_string_value(json_object_get(w, "text"));
        TEST_CHECK(!strcmp(json_string_value(json_object_get(j, "question")), wt + 3),
                   "record %d: question is the rendered prompt without <s>", k);
        TEST_CHECK(!strcmp(json_string_value(json_object_get(j, "raw_question")),
                           json_string_value(
                               json_object_get(json_array_get(json_object_get(pd, "cases"), (size_t)ix), "question"))),
                   "record %d: raw_question is the source question", k);
        TEST_CHECK(json_integer_value(json_object_get(j, "prompt_tokens")) ==
                       (json_int_t)json_array_size(json_object_get(w, "ids")),
                   "record %d: prompt_tokens = apply_chat_template ids", k);
        json_decref(j);
    }
    lines_free(&l);
    json_decref(pd);
}

static void check_binary(void) {
    TEST_BEGIN("gq binary");
    const char *bin = getenv("GQ_BIN");
    if (!bin || !*bin) {
        TEST_SKIP("GQ_BIN not set (tests/run.sh sets it): exit codes of the binary not checked");
        return;
    }
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s calib --help >/dev/null 2>&1", bin);
    int st = system(cmd);
    TEST_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gq calib --help exits 0");
    snprintf(cmd, sizeof cmd, "%s calib --model x --questions y --out z --top-p 2 >/dev/null 2>&1", bin);
    st = system(cmd);
    TEST_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2, "bad --top-p exits 2 (usage error), got %d", WEXITSTATUS(st));
    snprintf(cmd, sizeof cmd, "%s calib --model %s --questions %s --out %s --n 1 >/dev/null 2>&1", bin,
             gq_test_data("pycoder-5m"), tpath("missing.jsonl"), tpath("m.jsonl"));
    st = system(cmd);
    TEST_CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 2,
               "missing questions file exits with an error status other than a usage error's 2, got %d",
               WEXITSTATUS(st));
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    snprintf(tmp, sizeof tmp, "%s", gq_test_tmpdir("calibe2e"));
    golden = test_load_json(gq_test_data("gen/greedy-pycoder-5m.json"));
    if (!golden) return TEST_REPORT();
    const char *q = write_questions();
    gq_calib_gen_opts o;
    gq_calib_gen_report r;

    TEST_BEGIN("greedy records");
    base_opts(&o, q, tpath("A.jsonl"));
    TEST_OK(gq_calib_gen_run(&o, &r), "gq calib, greedy, plain");
    check_greedy_records(tpath("A.jsonl"), &r);
    int nrec = (int)r.n_written;
    base_opts(&o, q, tpath("A0.jsonl"));
    o.degenerate_period = 0;
    TEST_OK(gq_calib_gen_run(&o, &r), "--degenerate-period 0");
    TEST_CHECK(r.n_degenerate == 0 && r.n_written == 5, "rule off: all 5 answers kept (%ld)", r.n_written);

    TEST_BEGIN("gzip output");
    base_opts(&o, q, tpath("A.jsonl.gz"));
    o.batch = 3;
    TEST_OK(gq_calib_gen_run(&o, &r), "gq calib, greedy, gzip, batch 3");
    lines a = read_lines(tpath("A.jsonl")), b = read_lines(tpath("A.jsonl.gz"));
    TEST_CHECK(same_set(&a, &b), "gzip and plain outputs hold the same records (batch 2 vs 3)");
    lines_free(&a);
    lines_free(&b);

    TEST_BEGIN("resume");
    check_resume(q, tpath("A.jsonl"), tpath("B.jsonl"), 0);
    check_resume(q, tpath("A.jsonl.gz"), tpath("B.jsonl.gz"), 1);

    TEST_BEGIN("existing output");
    base_opts(&o, q, tpath("A.jsonl"));
    TEST_FAILS(gq_calib_gen_run(&o, &r), GQ_ERR_EXISTS, "--resume continues it, --force replaces it");
    o.force = 1;
    TEST_OK(gq_calib_gen_run(&o, &r), "--force");
    TEST_CHECK(r.n_written == nrec && r.n_done_before == 0, "--force starts anew");
    /* resuming with other questions is refused */
    const char *q2 = tpath("q2.jsonl");
    write_text(q2, "{\"prompt\": \"something else\"}\n{\"prompt\": \"b\"}\n{\"prompt\": \"c\"}\n{\"prompt\": \"d\"}\n"
                   "{\"prompt\": \"e\"}\n");
    base_opts(&o, q2, tpath("A.jsonl"));
    o.resume = 1;
    TEST_FAILS(gq_calib_gen_run(&o, &r), GQ_ERR_DATA, "differs from");

    /* a question with an invalid UTF-8 byte: stored with U+FFFD, and --resume accepts its own file */
    const char *q3 = tpath("bad-utf8.txt");
    write_text(q3, "class Caf\xe9Model:\n");
    base_opts(&o, q3, tpath("U.jsonl"));
    o.min_answer_tokens = 0;
    TEST_OK(gq_calib_gen_run(&o, &r), "question with an invalid byte");
    a = read_lines(tpath("U.jsonl"));
    TEST_CHECK(a.n == 1 && strstr(a.line[0], "Caf\xef\xbf\xbdModel") != NULL, "stored as U+FFFD: %s",
               a.n ? a.line[0] : "");
    lines_free(&a);
    o.resume = 1;
    TEST_OK(gq_calib_gen_run(&o, &r), "--resume of that file");
    TEST_CHECK(r.n_done_before == 1 && r.n_generated == 0, "nothing regenerated");

    TEST_BEGIN("seeded sampling");
    base_opts(&o, q, tpath("S1.jsonl"));
    o.sampling.temperature = 0.9;
    o.sampling.top_p = 0.9;
    o.sampling.seed = 5;
    o.batch = 1;
    o.min_answer_tokens = 0;
    TEST_OK(gq_calib_gen_run(&o, &r), "sampling, batch 1");
    o.out = tpath("S3.jsonl");
    o.batch = 3;
    TEST_OK(gq_calib_gen_run(&o, &r), "sampling, batch 3");
    a = read_lines(tpath("S1.jsonl"));
    b = read_lines(tpath("S3.jsonl"));
    TEST_CHECK(a.n > 0 && same_set(&a, &b), "seed 5: the same %d records at batch 1 and 3", a.n);
    lines_free(&a);
    lines_free(&b);

    TEST_BEGIN("read back");
    check_readback(tpath("A.jsonl"), nrec);
    check_chat();
    check_binary();
    json_decref(golden);
    gq_rmtree(tmp);
    return TEST_REPORT();
}
