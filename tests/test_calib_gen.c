/* test_calib_gen.c -- `gq calib` pieces and end to end:
 *   - question readers (jsonl/json/lines/blocks, gzip, auto-detection,
 *     fields, limits) on small files written here, and their errors
 *     (file:line or file[index], expected vs found);
 *   - prompt templates (raw, "{question}" string, chat via the tokenizer's
 *     chat_template) against transformers' text and ids
 *     (tests/data/gen/prompts-pycoder.json, tests/ref/gen_prompts.py);
 *   - the output file: gzip members, torn-tail cutting, corrupt data.
 * `gq calib` end to end is in test_calib_e2e.c. All comparisons are exact
 * (texts, ids, counts): nothing here is floating point. */
#include "gq/calib.h"
#include "gq/calib_gen.h"
#include "test_gen_util.h"

static void write_gz(const char *path, const char *s) {
    gzFile f = gzopen(path, "wb");
    GQ_ASSERT(f);
    gzputs(f, s);
    gzclose(f);
}

static int load_q(gq_questions *q, const char *path, gq_questions_format fmt, const char *field, int limit) {
    gq_questions_opts o;
    gq_questions_opts_default(&o);
    o.path = path;
    o.format = fmt;
    o.field = field;
    o.limit = limit;
    return gq_questions_load(q, &o);
}

static void check_questions(void) {
    TEST_BEGIN("question readers");
    gq_questions q;
    /* HumanEval-like JSONL: "prompt" picked automatically, blank lines skipped */
    const char *he = tpath("he.jsonl");
    write_text(
        he, "{\"task_id\": \"a\", \"prompt\": \"def f():\\n\"}\n\n{\"task_id\": \"b\", \"prompt\": \"def g():\\n\"}\n"
            "{\"prompt\": \"   \"}\n{\"prompt\": \"x\", \"input\": \"\"}\n");
    TEST_OK(load_q(&q, he, GQ_QUESTIONS_AUTO, NULL, 0), "jsonl");
    TEST_CHECK(q.n == 3 && q.format == GQ_QUESTIONS_JSONL && !strcmp(q.field, "prompt") && q.n_empty == 1,
               "jsonl: 3 questions, field prompt, 1 empty (got %d, '%s', %d)", q.n, q.field, q.n_empty);
    if (q.n == 3) {
        TEST_CHECK(!strcmp(q.text[1], "def g():\n") && !strcmp(q.text[2], "x"), "jsonl texts");
        TEST_CHECK(strstr(q.where[1], "he.jsonl:3") != NULL, "where of the second question is line 3: %s", q.where[1]);
    }
    gq_questions_free(&q);
    TEST_OK(load_q(&q, he, GQ_QUESTIONS_AUTO, NULL, 2), "jsonl, limit 2");
    TEST_CHECK(q.n == 2, "limit 2 keeps 2 (got %d)", q.n);
    gq_questions_free(&q);
    /* MBPP-like, gzip, explicit field */
    const char *mb = tpath("mbpp.jsonl.gz");
    write_gz(mb, "{\"text\": \"Write a function to add.\", \"code\": \"def add(a, b): return a + b\"}\n"
                 "{\"text\": \"Write a function to sub.\", \"code\": \"...\"}\n");
    TEST_OK(load_q(&q, mb, GQ_QUESTIONS_AUTO, "text", 0), "gzip jsonl");
    TEST_CHECK(q.n == 2 && !strcmp(q.text[0], "Write a function to add."), "gzip jsonl with --field text");
    gq_questions_free(&q);
    /* errors name file:line and what was found */
    const char *bad = tpath("bad.jsonl");
    write_text(bad, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n{\"task\": \"c\", \"id\": 3}\n");
    TEST_FAILS(load_q(&q, bad, GQ_QUESTIONS_AUTO, NULL, 0), GQ_ERR_DATA,
               "bad.jsonl:3: expected a string field \"prompt\"");
    TEST_CHECK(strstr(gq_errmsg(), "found fields: task, id") != NULL, "lists the fields found: %s", gq_errmsg());
    write_text(bad, "{\"prompt\": \"a\"}\n{\"prompt\": 7}\n");
    TEST_FAILS(load_q(&q, bad, GQ_QUESTIONS_AUTO, NULL, 0), GQ_ERR_DATA, "bad.jsonl:2: field \"prompt\" is an integer");
    write_text(bad, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\",\n");
    TEST_FAILS(load_q(&q, bad, GQ_QUESTIONS_AUTO, NULL, 0), GQ_ERR_DATA, "bad.jsonl:2: not valid JSON");
    write_text(bad, "{\"id\": 1}\n");
    TEST_FAILS(load_q(&q, bad, GQ_QUESTIONS_AUTO, NULL, 0), GQ_ERR_DATA, "expected one of the fields prompt, question");
    write_text(bad, "[1, 2]\n");
    TEST_FAILS(load_q(&q, bad, GQ_QUESTIONS_JSONL, NULL, 0), GQ_ERR_DATA, "bad.jsonl:1: expected a JSON object");
    /* Code Alpaca JSON array: instruction + "\n" + input when non-empty */
    const char *ca = tpath("alpaca.json");
    write_text(ca, "[\n {\"instruction\": \"Sort the list.\", \"input\": \"[3, 1, 2]\", \"output\": \"x\"},\n"
                   " {\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"hi\"}\n]\n");
    TEST_OK(load_q(&q, ca, GQ_QUESTIONS_AUTO, NULL, 0), "json array");
    TEST_CHECK(q.n == 2 && q.format == GQ_QUESTIONS_JSON && !strcmp(q.field, "instruction"),
               "json: 2 questions, field instruction");
    if (q.n == 2) {
        TEST_CHECK(!strcmp(q.text[0], "Sort the list.\n[3, 1, 2]") && !strcmp(q.text[1], "Say hi."),
                   "instruction and input joined by a newline: '%s', '%s'", q.text[0], q.text[1]);
        TEST_CHECK(strstr(q.where[1], "alpaca.json[1]") != NULL, "json where names the index: %s", q.where[1]);
    }
    gq_questions_free(&q);
    write_text(ca, "[{\"instruction\": \"a\"}, {\"instruction\": [\"b\"]}]");
    TEST_FAILS(load_q(&q, ca, GQ_QUESTIONS_AUTO, NULL, 0), GQ_ERR_DATA,
               "alpaca.json[1]: field \"instruction\" is an array");
    write_text(ca, "{\"instruction\": \"a\"}");
    TEST_FAILS(load_q(&q, ca, GQ_QUESTIONS_JSON, NULL, 0), GQ_ERR_DATA, "expected a JSON array");
    write_text(ca, "[{\"instruction\": \"a\"},");
    TEST_FAILS(load_q(&q, ca, GQ_QUESTIONS_AUTO, NULL, 0), GQ_ERR_DATA, "alpaca.json:1:");
    /* plain text: lines (CRLF, blank lines) and blocks */
    const char *tx = tpath("q.txt");
    write_text(tx, "first question\r\n\r\n  \nsecond one\nthird\n");
    TEST_OK(load_q(&q, tx, GQ_QUESTIONS_AUTO, NULL, 0), "lines");
    TEST_CHECK(q.n == 3 && q.format == GQ_QUESTIONS_LINES && !strcmp(q.text[0], "first question") &&
                   strstr(q.where[1], "q.txt:4"),
               "lines: 3 questions, CR removed, line numbers kept");
    gq_questions_free(&q);
    write_text(tx, "def f(x):\n    return x\n\n \t\nclass A:\n    pass\n\n\nlast\r\nblock");
    TEST_OK(load_q(&q, tx, GQ_QUESTIONS_BLOCKS, NULL, 0), "blocks");
    TEST_CHECK(q.n == 3, "blocks: 3 (got %d)", q.n);
    if (q.n == 3) {
        TEST_CHECK(!strcmp(q.text[0], "def f(x):\n    return x") && !strcmp(q.text[1], "class A:\n    pass") &&
                       !strcmp(q.text[2], "last\nblock"),
                   "block texts keep inner newlines: '%s'", q.text[2]);
        TEST_CHECK(strstr(q.where[1], "q.txt:5") != NULL, "a block is named by its first line: %s", q.where[1]);
    }
    gq_questions_free(&q);
    /* auto-detection by the first byte when the extension says nothing */
    const char *un = tpath("questions.dat");
    write_text(un, "\n  {\"question\": \"q1\"}\n{\"question\": \"q2\"}\n");
    TEST_OK(load_q(&q, un, GQ_QUESTIONS_AUTO, NULL, 0), "auto: '{' -> jsonl");
    TEST_CHECK(q.n == 2 && q.format == GQ_QUESTIONS_JSONL && !strcmp(q.field, "question"),
               "auto jsonl, field question");
    gq_questions_free(&q);
    write_text(un, "[\"just a string\", \"another\"]");
    TEST_OK(load_q(&q, un, GQ_QUESTIONS_AUTO, NULL, 0), "auto: '[' -> json");
    TEST_CHECK(q.n == 2 && q.format == GQ_QUESTIONS_JSON && !strcmp(q.text[1], "another"), "json array of strings");
    gq_questions_free(&q);
    write_text(un, "\n\n   \n");
    TEST_FAILS(load_q(&q, un, GQ_QUESTIONS_AUTO, NULL, 0), GQ_ERR_DATA, "no questions found");
    TEST_FAILS(load_q(&q, tpath("missing.jsonl"), GQ_QUESTIONS_AUTO, NULL, 0), GQ_ERR_IO, "missing.jsonl");
    gq_questions_format f;
    TEST_FAILS(gq_questions_format_parse("yaml", &f), GQ_ERR_ARG, "expected auto, jsonl, json, lines or blocks");
}

static int ids_equal(const gq_ids *a, json_t *want) {
    if (a->n != json_array_size(want)) return 0;
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i] != json_integer_value(json_array_get(want, i))) return 0;
    return 1;
}

static void check_prompts(void) {
    TEST_BEGIN("prompt templates");
    json_t *doc = test_load_json(gq_test_data("gen/prompts-pycoder.json"));
    gq_tokenizer *tok;
    if (!doc || gq_tok_load(&tok, gq_test_data("pycoder-5m"))) {
        TEST_CHECK(0, "fixture / tokenizer: %s", gq_errmsg());
        json_decref(doc);
        return;
    }
    gq_prompt *raw, *str, *chat;
    TEST_OK(gq_prompt_init(&raw, "raw", tok), "raw");
    TEST_OK(gq_prompt_init(&str, "Q: {question}\\nA:", tok), "string template");
    TEST_FAILS(gq_prompt_init(&chat, "chat", tok), GQ_ERR_ARG, "no chat_template");
    TEST_FAILS(gq_prompt_init(&chat, "Question:\\n", tok), GQ_ERR_ARG, "{question}");
    json_t *cases = json_object_get(doc, "cases"), *c;
    size_t i;
    json_array_foreach(cases, i, c) {
        const char *q = json_string_value(json_object_get(c, "question"));
        gq_ids ids = {0};
        char *t = NULL;
        TEST_OK(gq_prompt_encode(raw, tok, q, &ids, &t), "raw encode");
        TEST_CHECK(ids_equal(&ids, json_object_get(c, "raw_ids")) && !strcmp(t, q), "case %zu: raw ids = HF (<s> + q)",
                   i);
        free(t);
        ids.n = 0;
        TEST_OK(gq_prompt_encode(str, tok, q, &ids, &t), "template encode");
        char want[512];
        snprintf(want, sizeof want, "Q: %s\nA:", q);
        TEST_CHECK(ids_equal(&ids, json_object_get(c, "template_ids")) && !strcmp(t, want),
                   "case %zu: template ids = HF, text '%s'", i, t);
        free(t);
        gq_ids_free(&ids);
    }
    gq_prompt_free(raw);
    gq_prompt_free(str);
    gq_tok_free(tok);
    /* chat templates through a tokenizer_config.json that has them */
    const char *names[] = {"llama-2-chat", "zephyr"};
    for (int k = 0; k < 2; k++) {
        const char *tpl = json_string_value(json_object_get(json_object_get(doc, "templates"), names[k]));
        const char *dir = chat_model_dir(tpl);
        if (gq_tok_load(&tok, dir)) {
            TEST_CHECK(0, "tokenizer with a chat template: %s", gq_errmsg());
            continue;
        }
        TEST_OK(gq_prompt_init(&chat, "chat", tok), "%s: chat", names[k]);
        json_array_foreach(cases, i, c) {
            const char *q = json_string_value(json_object_get(c, "question"));
            json_t *w = json_object_get(json_object_get(c, "chat"), names[k]);
            const char *wt = json_string_value(json_object_get(w, "text"));
            char *rt;
            size_t rn;
            int special;
            TEST_OK(gq_prompt_render(chat, q, &rt, &rn, &special), "render");
            TEST_CHECK(rt && !strcmp(rt, wt) && special == 0, "%s case %zu: rendered text = apply_chat_template",
                       names[k], i);
            free(rt);
            gq_ids ids = {0};
            char *t = NULL;
            TEST_OK(gq_prompt_encode(chat, tok, q, &ids, &t), "chat encode");
            TEST_CHECK(ids_equal(&ids, json_object_get(w, "ids")),
                       "%s case %zu: ids = apply_chat_template(tokenize=True)", names[k], i);
            /* the record text drops a leading "<s>" (the calibration reader adds it) */
            const char *strip = !strncmp(wt, "<s>", 3) ? wt + 3 : wt;
            TEST_CHECK(t && !strcmp(t, strip), "%s case %zu: record text without the bos string", names[k], i);
            free(t);
            gq_ids_free(&ids);
        }
        gq_prompt_free(chat);
        gq_tok_free(tok);
    }
    json_decref(doc);
}

/* ---- the output file -------------------------------------------------------------- */

typedef struct {
    char lines[64][256];
    int n;
} linelist;

static int collect(const char *line, size_t len, long lineno, void *user) {
    linelist *l = user;
    (void)lineno;
    if (l->n < 64) snprintf(l->lines[l->n++], 256, "%.*s", (int)len, line);
    return GQ_OK;
}

static void check_outfile(void) {
    TEST_BEGIN("output file");
    const char *gz = tpath("o.jsonl.gz"), *pl = tpath("o.jsonl");
    gq_calib_gen_out *o;
    TEST_OK(gq_calib_gen_out_open(&o, gz, 0), "open gz");
    TEST_OK(gq_calib_gen_out_write(o, "{\"a\": 1}\n{\"a\": 2}\n", 18), "member 1");
    TEST_OK(gq_calib_gen_out_write(o, "{\"a\": 3}\n", 9), "member 2");
    TEST_OK(gq_calib_gen_out_close(o), "close");
    size_t full = file_size(gz);
    /* zlib reads the concatenated members as one stream */
    gzFile f = gzopen(gz, "rb");
    char buf[128] = {0};
    int got = gzread(f, buf, sizeof buf - 1);
    gzclose(f);
    TEST_CHECK(got == 27 && !strcmp(buf, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3}\n"), "gzip members concatenate (%d bytes)",
               got);
    /* a torn third member: the scan cuts it and keeps the first two */
    TEST_OK(gq_calib_gen_out_open(&o, gz, 1), "append");
    TEST_OK(gq_calib_gen_out_write(o, "{\"a\": 4}\n{\"a\": 5}\n", 18), "member 3");
    gq_calib_gen_out_close(o);
    size_t with3 = file_size(gz);
    TEST_CHECK(truncate(gz, (off_t)(with3 - 7)) == 0, "tear member 3");
    linelist l = {.n = 0};
    size_t cut = 0;
    TEST_OK(gq_calib_gen_out_scan(gz, collect, &l, &cut), "scan torn gz");
    TEST_CHECK(l.n == 3 && cut == with3 - 7 - full && file_size(gz) == full, "torn member cut: %d lines, %zu bytes cut",
               l.n, cut);
    /* plain: a partial last line is cut */
    write_text(pl, "{\"a\": 1}\n\n{\"a\": 2}\n{\"a\": 3, \"tor");
    l.n = 0;
    TEST_OK(gq_calib_gen_out_scan(pl, collect, &l, &cut), "scan torn plain");
    TEST_CHECK(l.n == 2 && cut == 13 && file_size(pl) == 19, "partial line cut (%d lines, %zu bytes)", l.n, cut);
    /* corrupt gzip data is an error, not a cut */
    char *d;
    size_t n;
    GQ_ASSERT(gq_read_file(gz, &d, &n) == GQ_OK);
    d[n / 2] ^= 0x55;
    d[n / 2 + 1] ^= 0x55;
    FILE *w = fopen(gz, "wb");
    fwrite(d, 1, n, w);
    fclose(w);
    free(d);
    l.n = 0;
    TEST_FAILS(gq_calib_gen_out_scan(gz, collect, &l, &cut), GQ_ERR_DATA, "corrupt gzip data");
    TEST_CHECK(file_size(gz) == n, "nothing truncated on corrupt data");
    l.n = 0;
    TEST_OK(gq_calib_gen_out_scan(tpath("none.jsonl"), collect, &l, &cut), "missing file");
    TEST_CHECK(l.n == 0 && cut == 0, "missing file: no lines");
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    gq_set_threads(1); /* tiny model: see test_generate.c */
    snprintf(tmp, sizeof tmp, "%s", gq_test_tmpdir("calibgen"));
    check_questions();
    check_prompts();
    check_outfile();
    gq_rmtree(tmp);
    return TEST_REPORT();
}
