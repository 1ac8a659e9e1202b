/* test_eval.c -- gq eval's parts (gq/eval.h): pass@k against the exact binomial formula and fixed
 * values of the HumanEval paper's estimator; the bundled tasks (164 HumanEval, 500 MBPP test-split
 * problems), their prompts and programs; stop sequences, chat code extraction; the outcome of a
 * run; the diff table. The sandbox and the hostile completions are in test_eval_sandbox.c, the
 * command (controls, samples, resume, generation) in test_eval_cli.sh. */
#include "gq/eval.h"

#include <signal.h>

#include "test.h"

/* C(n, k) exactly (n <= 60) */
static unsigned __int128 binom(int n, int k) {
    if (k < 0 || k > n) return 0;
    unsigned __int128 r = 1;
    for (int i = 1; i <= k; i++) r = r * (unsigned __int128)(n - k + i) / (unsigned __int128)i;
    return r;
}

static void test_pass_at_k(void) {
    TEST_BEGIN("pass@k");
    /* every (n, c, k) with n <= 40 against 1 - C(n-c, k) / C(n, k) */
    int bad = 0, cases = 0;
    double worst = 0;
    for (int n = 1; n <= 40; n++)
        for (int c = 0; c <= n; c++)
            for (int k = 1; k <= n; k++) {
                long double ref = 1.0L - (long double)binom(n - c, k) / (long double)binom(n, k);
                double got = gq_eval_pass_at_k(n, c, k);
                double d = fabs(got - (double)ref);
                if (d > worst) worst = d;
                if (d > 1e-12) bad++;
                cases++;
            }
    TEST_CHECK(bad == 0, "%d of %d (n, c, k) differ from the binomial formula by > 1e-12 (worst %.3g)", bad, cases,
               worst);
    /* fixed counts, the values of the paper's numpy code (1 - prod(1 - k / arange(n - c + 1, n + 1))) */
    static const struct {
        int n, c, k;
        double want;
    } fx[] = {{200, 10, 1, 0.04999999999999982},
              {200, 10, 10, 0.40854786608141724},
              {200, 10, 100, 0.9992289739372822},
              {20, 3, 5, 0.6008771929824561},
              {10, 0, 1, 0.0},
              {10, 10, 10, 1.0},
              {164, 37, 1, 0.22560975609756118},
              {100, 1, 50, 0.5},
              {5, 4, 2, 1.0}};
    for (size_t i = 0; i < sizeof fx / sizeof *fx; i++)
        TEST_NEAR(gq_eval_pass_at_k(fx[i].n, fx[i].c, fx[i].k), fx[i].want, 1e-15, "pass@%d, n %d, c %d", fx[i].k,
                  fx[i].n, fx[i].c);
    TEST_NEAR(gq_eval_pass_at_k(1, 1, 1), 1.0, 0, "n = 1 passed");
    TEST_NEAR(gq_eval_pass_at_k(1, 0, 1), 0.0, 0, "n = 1 failed");
    /* pass@1 is c / n */
    for (int n = 1; n <= 300; n += 37)
        for (int c = 0; c <= n; c += 5)
            TEST_NEAR(gq_eval_pass_at_k(n, c, 1), (double)c / n, 1e-13, "pass@1 %d/%d", c, n);
}

static void test_tasks(void) {
    TEST_BEGIN("tasks");
    gq_eval_task t;
    TEST_OK(gq_eval_task_load(&t, GQ_EVAL_HUMANEVAL, NULL, 0), "bundled HumanEval");
    TEST_CHECK(t.n == 164, "HumanEval has %d problems, expected 164", t.n);
    if (t.n == 164) {
        TEST_CHECK(!strcmp(t.p[0].task_id, "HumanEval/0") && !strcmp(t.p[163].task_id, "HumanEval/163"), "task ids");
        TEST_CHECK(!strcmp(t.p[0].entry_point, "has_close_elements"), "entry point %s", t.p[0].entry_point);
        TEST_CHECK(gq_eval_task_find(&t, "HumanEval/42") == 42, "find");
        TEST_CHECK(gq_eval_task_find(&t, "HumanEval/164") == -1, "find: not there");
        /* the program is human-eval's: prompt + completion + "\n" + test + "\n" + check(entry_point) */
        char *prog = gq_eval_program(&t, 0, "    return True\n", GQ_EVAL_CONTINUES_PROMPT);
        size_t lp = strlen(t.p[0].prompt);
        TEST_CHECK(!strncmp(prog, t.p[0].prompt, lp) && !strncmp(prog + lp, "    return True\n\n", 17),
                   "prompt, completion, newline");
        TEST_CHECK(strstr(prog, "\ncheck(has_close_elements)\n") != NULL, "check(entry_point)");
        free(prog);
        /* chat: the code's own definition follows the prompt's stub */
        prog = gq_eval_program(&t, 0, "def has_close_elements(numbers, threshold):\n    return False\n",
                               GQ_EVAL_CHAT_CODE);
        TEST_CHECK(strstr(prog, "\"\"\"\n\ndef has_close_elements(numbers, threshold):") != NULL,
                   "chat code defining the entry point after the prompt");
        free(prog);
        prog = gq_eval_program(&t, 0, "    return False\n", GQ_EVAL_CHAT_CODE);
        TEST_CHECK(strstr(prog, "\"\"\"\n    return False\n") != NULL, "chat code without a def continues the prompt");
        free(prog);
        /* generation continues the prompt without its trailing newline */
        size_t lg = strlen(t.p[0].gen_prompt);
        TEST_CHECK(lg == lp - 1 && !strncmp(t.p[0].gen_prompt, t.p[0].prompt, lg) &&
                       !strcmp(t.p[0].gen_prompt + lg - 12, "True\n    \"\"\""),
                   "gen_prompt: the prompt without trailing whitespace");
        prog = gq_eval_program(&t, 0, "\n    return True\n", GQ_EVAL_CONTINUES_GEN_PROMPT);
        TEST_CHECK(!strncmp(prog, t.p[0].prompt, lp) && !strncmp(prog + lp, "    return True\n\n", 17),
                   "a continuation of gen_prompt gives the same program");
        free(prog);
        TEST_CHECK(strstr(t.p[0].question, "```python\nfrom typing import List") != NULL,
                   "chat question holds the code");
        char *broken = gq_eval_broken_program(&t, 5);
        TEST_CHECK(strstr(broken, "_gq_real = intersperse\ndef intersperse(*a, **k):") != NULL,
                   "broken wraps the entry point");
        free(broken);
    }
    gq_eval_task_free(&t);
    TEST_OK(gq_eval_task_load(&t, GQ_EVAL_HUMANEVAL, NULL, 7), "--limit 7");
    TEST_CHECK(t.n == 7, "--limit 7: %d problems", t.n);
    gq_eval_task_free(&t);

    TEST_OK(gq_eval_task_load(&t, GQ_EVAL_MBPP, NULL, 0), "bundled MBPP");
    TEST_CHECK(t.n == 500, "MBPP test split has %d problems, expected 500", t.n);
    if (t.n == 500) {
        TEST_CHECK(!strcmp(t.p[0].task_id, "MBPP/11") && !strcmp(t.p[499].task_id, "MBPP/510"), "MBPP ids 11..510");
        TEST_CHECK(!strcmp(t.p[0].entry_point, "remove_Occ"), "MBPP entry point %s", t.p[0].entry_point);
        TEST_CHECK(!strcmp(t.p[0].prompt, "\"\"\"\nWrite a python function to remove first and last occurrence of a "
                                          "given character from the string.\nassert remove_Occ(\"hello\",\"l\") == "
                                          "\"heo\"\n\"\"\"\n"),
                   "MBPP prompt: text and first test in a docstring: %s", t.p[0].prompt);
        TEST_CHECK(gq_eval_task_find(&t, "MBPP/11") == 0 && gq_eval_task_find(&t, "Mbpp/12") == 1 &&
                       gq_eval_task_find(&t, "13") == 2 && gq_eval_task_find(&t, "10") == -1,
                   "MBPP ids: MBPP/11, Mbpp/12, 13; 10 is a prompt-split task");
        int i32 = gq_eval_task_find(&t, "MBPP/32");
        TEST_CHECK(i32 >= 0 && !strcmp(t.p[i32].entry_point, "max_Prime_Factors"),
                   "entry point of 'def max_Prime_Factors (n):' (a space before the parenthesis)");
        char *prog = gq_eval_program(&t, 0, "def remove_Occ(s, ch):\n    return s\n", GQ_EVAL_CONTINUES_PROMPT);
        TEST_CHECK(strstr(prog, "\nassert remove_Occ(\"PHP\",\"P\") == \"H\"\n") != NULL, "MBPP program: every assert");
        free(prog);
    }
    gq_eval_task_free(&t);

    /* bad files */
    const char *dir = gq_test_tmpdir("eval-tasks");
    char path[600];
    snprintf(path, sizeof path, "%s/bad.jsonl", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"task_id\": \"HumanEval/0\", \"prompt\": \"def f():\\n\"}\n", f);
    fclose(f);
    TEST_FAILS(gq_eval_task_load(&t, GQ_EVAL_HUMANEVAL, path, 0), GQ_ERR_DATA,
               "bad.jsonl:1: expected a humaneval record");
    f = fopen(path, "w");
    fputs("{\"task_id\": 3, \"text\": \"x\", \"code\": \"def f(): pass\", \"test_list\": [\"assert f() is None\"]}\n",
          f);
    fclose(f);
    TEST_FAILS(gq_eval_task_load(&t, GQ_EVAL_MBPP, path, 0), GQ_ERR_DATA, "no mbpp problems found");
    f = fopen(path, "w");
    fputs("not json\n", f);
    fclose(f);
    TEST_FAILS(gq_eval_task_load(&t, GQ_EVAL_MBPP, path, 0), GQ_ERR_DATA, "bad.jsonl:1: expected a JSON object");
    snprintf(path, sizeof path, "%s/none.jsonl", dir);
    TEST_CHECK(gq_eval_task_load(&t, GQ_EVAL_MBPP, path, 0) == GQ_ERR_IO, "missing file: I/O error");
    gq_rmtree(dir);
    gq_eval_task_kind k;
    TEST_FAILS(gq_eval_task_parse("apps", &k), GQ_ERR_ARG, "expected humaneval or mbpp");
}

static void test_completions(void) {
    TEST_BEGIN("completions");
    char s1[] = "    return x + 1\n\ndef other():\n    pass\n";
    TEST_CHECK(gq_eval_truncate(s1, gq_eval_stops(GQ_EVAL_HUMANEVAL)) && !strcmp(s1, "    return x + 1\n"),
               "HumanEval: cut at \\ndef: '%s'", s1);
    char s2[] = "    if x:\n        return 1\n    return 2\nif __name__ == '__main__':\n    main()";
    TEST_CHECK(gq_eval_truncate(s2, gq_eval_stops(GQ_EVAL_HUMANEVAL)) &&
                   !strcmp(s2, "    if x:\n        return 1\n    return 2"),
               "an indented if stays, a top-level if cuts: '%s'", s2);
    char s3[] = "    return 1\n# a comment\nprint(3)";
    TEST_CHECK(gq_eval_truncate(s3, gq_eval_stops(GQ_EVAL_HUMANEVAL)) && !strcmp(s3, "    return 1"), "cut at \\n#");
    char s4[] = "    return 1";
    TEST_CHECK(!gq_eval_truncate(s4, gq_eval_stops(GQ_EVAL_HUMANEVAL)) && !strcmp(s4, "    return 1"), "no stop");
    char s5[] = "def f(a):\n    return a\n\ndef g():\n    return 2\nassert f(1) == 1\n";
    TEST_CHECK(gq_eval_truncate(s5, gq_eval_stops(GQ_EVAL_MBPP)) &&
                   !strcmp(s5, "def f(a):\n    return a\n\ndef g():\n    return 2"),
               "MBPP keeps helper functions, cuts at \\nassert: '%s'", s5);
    char a1[] = "Here it is:\n```python\ndef f():\n    return 1\n```\nThis returns 1.\n```\nmore\n```";
    TEST_CHECK(gq_eval_chat_cut(a1) && !strcmp(a1, "Here it is:\n```python\ndef f():\n    return 1\n```"),
               "chat: cut after the first block: '%s'", a1);
    char *code = gq_eval_chat_code(a1);
    TEST_CHECK(!strcmp(code, "def f():\n    return 1\n"), "chat code: '%s'", code);
    free(code);
    code = gq_eval_chat_code("def f():\n    return 2\n");
    TEST_CHECK(!strcmp(code, "def f():\n    return 2\n"), "no fence: the whole answer");
    free(code);
    code = gq_eval_chat_code("```\nx = 1\n");
    TEST_CHECK(!strcmp(code, "x = 1\n"), "an unclosed block: to the end: '%s'", code);
    free(code);
    char a2[] = "```python\nx = 1\n```";
    TEST_CHECK(!gq_eval_chat_cut(a2), "nothing after the block: not cut");
}

static gq_sb_result res(int exited, int code, int sig, const char *out) {
    gq_sb_result r;
    memset(&r, 0, sizeof r);
    r.exited = exited;
    r.exit_code = code;
    r.signal = sig;
    r.out = (char *)out;
    r.out_n = strlen(out);
    return r;
}

static void test_classify(void) {
    TEST_BEGIN("classify");
    gq_sb_opts o;
    gq_sb_opts_default(&o);
    char d[256];
    gq_sb_result r = res(1, 0, 0, "");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_PASSED, "exit 0 passes");
    r = res(1, 1, 0, "Traceback (most recent call last):\n  File \"prog.py\", line 9, in <module>\nAssertionError\n");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_ASSERTION && !strcmp(d, "AssertionError"), "assertion");
    r = res(1, 1, 0,
            "Traceback (most recent call last):\n  File \"prog.py\", line 3\nNameError: name 'x' is not defined\n");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_EXCEPTION &&
                   !strcmp(d, "NameError: name 'x' is not defined"),
               "exception: '%s'", d);
    r = res(1, 1, 0, "  File \"prog.py\", line 3\n    def f(:\n          ^\nSyntaxError: invalid syntax\n");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_SYNTAX, "syntax");
    r = res(1, 1, 0, "  File \"prog.py\", line 4\n    return 1\nIndentationError: unexpected indent\n");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_SYNTAX, "indentation");
    r = res(1, 1, 0, "Traceback (most recent call last):\n  File \"prog.py\", line 1, in <module>\nMemoryError\n");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_MEMORY, "memory");
    r = res(1, 1, 0, "Traceback (most recent call last):\nsubprocess.CalledProcessError: Command 'x' failed\n");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_EXCEPTION, "module-qualified exception");
    r = res(1, 1, 0, "NotAnError\n");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_EXIT,
               "a name printed without a traceback is no exception");
    r = res(1, 3, 0, "bye\n");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_EXIT && !strcmp(d, "exit status 3"), "exit: '%s'", d);
    r = res(0, 0, SIGXCPU, "");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_CPU, "SIGXCPU");
    r = res(0, 0, SIGKILL, "");
    r.cpu_s = o.cpu_s + 0.5;
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_CPU, "SIGKILL past the CPU limit");
    r = res(0, 0, SIGKILL, "");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_KILLED && strstr(d, "signal 9"), "SIGKILL: '%s'", d);
    r = res(0, 0, SIGXFSZ, "");
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_OUTPUT, "SIGXFSZ");
    r = res(0, 0, SIGKILL, "");
    r.timed_out = 1;
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_TIMEOUT, "timeout");
    r = res(0, 0, SIGKILL, "");
    r.out_limited = 1;
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_OUTPUT, "output limit");
    r = res(0, 0, 0, "sandbox setup failed: x");
    r.setup_errno = 1;
    TEST_CHECK(gq_eval_classify(&r, &o, d, sizeof d) == GQ_EVAL_SANDBOX, "sandbox");
    for (int i = 0; i < GQ_EVAL_N_OUTCOMES; i++)
        TEST_CHECK(gq_eval_outcome_parse(gq_eval_outcome_name(i)) == i, "outcome name %d round trip", i);
}

static void test_print(void) {
    TEST_BEGIN("print");
    gq_eval_report r;
    memset(&r, 0, sizeof r);
    r.n_sources = 2;
    r.n_problems = 3;
    char *ids[3] = {"HumanEval/0", "HumanEval/1", "HumanEval/2"};
    r.task_ids = ids;
    int bp[3] = {1, 0, 2}, bc[3] = {2, 2, 2}, mp[3] = {0, 1, 2}, mc[3] = {2, 2, 2};
    const char *tags[2] = {"base", "model"};
    for (int i = 0; i < 2; i++) {
        snprintf(r.s[i].tag, sizeof r.s[i].tag, "%s", tags[i]);
        r.s[i].source = i ? "int4" : "fp16";
        r.s[i].n_problems = 3;
        r.s[i].min_n = r.s[i].max_n = 2;
        r.s[i].passed = 3;
        r.s[i].total = 6;
        r.s[i].nk = 1;
        r.s[i].k[0] = 1;
        r.s[i].pass_at[0] = 0.5;
        r.s[i].pass_count = i ? mp : bp;
        r.s[i].count = i ? mc : bc;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    gq_eval_print(&r, f);
    fclose(f);
    TEST_CHECK(strstr(buf, "eval: base      pass@1 = 0.5000 (3/6 samples passed, 3 problems x 2) fp16\n") != NULL,
               "base line:\n%s", buf);
    TEST_CHECK(strstr(buf, "eval: model - base: pass@1 +0.0000; problems lost 1, gained 1\n") != NULL, "difference");
    TEST_CHECK(strstr(buf, "| HumanEval/0 | 1/2 | 0/2 | lost |\n| HumanEval/1 | 0/2 | 1/2 | gained |\n") != NULL &&
                   !strstr(buf, "HumanEval/2 |"),
               "the table lists what changed only");
    free(buf);
}

int main(void) {
    test_pass_at_k();
    test_tasks();
    test_completions();
    test_classify();
    test_print();
    return TEST_REPORT();
}
