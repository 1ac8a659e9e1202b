/*
 * test_calib.c -- the JSONL reader and calibration windows.
 *
 * All checks are exact (tolerance 0): token ids, counts and line numbers
 * are integers with one right answer. The sitepackages golden comes from
 * tests/ref/gen_calib.py (HF tokenizers); the other expectations are built
 * here from gq_tok_encode, which test_tokenizer checks against HF, so these
 * tests check the windowing, not the tokenizer.
 */
#include <jansson.h>
#include <zlib.h>

#include "gq/calib.h"
#include "test.h"

#define SITE "calib/python-sitepackages.jsonl"


static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    fwrite(s, 1, strlen(s), f);
    fclose(f);
}

static const char *tmp_path(const char *dir, const char *name) {
    static char buf[4][600];
    static int k;
    char *b = buf[k++ & 3];
    snprintf(b, sizeof buf[0], "%s/%s", dir, name);
    return b;
}

/* The 128 x 2048 windows of the default calibration file equal HF's. */
static void test_sitepackages(const gq_tokenizer *tok, gq_calib_set *keep) {
    gq_calib_opts o;
    gq_calib_opts_default(&o);
    o.path = SITE;
    gq_calib_set s;
    TEST_OK(gq_calib_load(&s, tok, &o), "load %s", SITE);
    TEST_CHECK(s.n == 128 && s.n_tokens == 128 * 2048, "128 windows, %lld tokens (got %d)", (long long)s.n_tokens, s.n);
    TEST_CHECK(s.windowing == GQ_WIN_CONCAT, "AUTO chose concat for {\"text\"} records");
    static const int32_t head[8] = {1, 486, 1211, 16, 1252, 16, 1261, 463};
    TEST_CHECK(s.n > 0 && memcmp(s.seq[0], head, sizeof head) == 0, "first window starts 1, 486, 1211, 16, 1252, ...");
    json_error_t je;
    json_t *g = json_load_file(gq_test_data("calib/sitepackages-pycoder-2048.json"), 0, &je);
    TEST_CHECK(g != NULL, "golden: %s", je.text);
    int same = 0, lens_ok = 1;
    for (int i = 0; g && i < s.n && i < 128; i++) {
        char hex[20];
        lens_ok &= s.len[i] == 2048;
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)test_fnv1a64(s.seq[i], 2048));
        const char *want = json_string_value(json_array_get(json_object_get(g, "window_fnv1a64"), (size_t)i));
        if (want && !strcmp(hex, want)) same++;
        else fprintf(stderr, "  window %d: hash %s, HF %s\n", i, hex, want ? want : "?");
    }
    TEST_CHECK(lens_ok, "every window has 2048 tokens");
    TEST_CHECK(same == 128, "%d of 128 windows equal HF's (FNV-1a of the ids)", same);
    TEST_CHECK(s.n_records > 0 && s.n_records < 144, "stopped reading early: %ld of 144 records", s.n_records);
    json_decref(g);
    *keep = s;
}

/* A gzip copy gives identical windows. */
static void test_gzip(const gq_tokenizer *tok, const gq_calib_set *plain, const char *dir) {
    char *data = NULL;
    size_t len = 0;
    TEST_OK(gq_read_file(SITE, &data, &len), "read %s", SITE);
    const char *gz = tmp_path(dir, "site.jsonl.gz");
    gzFile f = gzopen(gz, "wb6");
    gzwrite(f, data, (unsigned)len);
    gzclose(f);
    free(data);
    gq_calib_opts o;
    gq_calib_opts_default(&o);
    o.path = gz;
    gq_calib_set s;
    TEST_OK(gq_calib_load(&s, tok, &o), "load gzip copy");
    TEST_CHECK(s.n == plain->n && s.n_tokens == plain->n_tokens &&
                   memcmp(s.ids, plain->ids, (size_t)s.n_tokens * sizeof *s.ids) == 0,
               "gzip copy: identical windows");
    gq_calib_free(&s);
}

/* Question/answer records: SAMPLE windowing, BOS + tokens, truncation,
 * min_tokens, no padding. */
static void test_qa(const gq_tokenizer *tok, const char *dir) {
    static const char *q[] = {"What does len() return?", "Hi", "Explain list comprehensions in Python.",
                              "Name a sorting algorithm."};
    static const char *a[] = {" The number of items in a container.", "!",
                              " They build a list from an iterable: [x * x for x in range(10)] squares each x.",
                              " Merge sort, which splits the list in halves and merges the sorted halves."};
    const char *path = tmp_path(dir, "qa.jsonl");
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 4; i++) fprintf(f, "{\"question\": \"%s\", \"answer\": \"%s\", \"id\": %d}\n", q[i], a[i], i);
    fclose(f);
    /* expected: [BOS] + encode(q + a), cut to seqlen; "Hi!" is too short */
    const int seqlen = 20, min_tokens = 4;
    gq_ids exp[4] = {{0}};
    int n_exp = 0, n_short = 0;
    for (int i = 0; i < 4; i++) {
        char text[512];
        snprintf(text, sizeof text, "%s%s", q[i], a[i]);
        gq_ids e = {0};
        gq_tok_encode(tok, text, strlen(text), 0, &e);
        if (getenv("GQ_TEST_VERBOSE")) fprintf(stderr, "  q/a record %d: %zu tokens\n", i, e.n);
        if (e.n < (size_t)min_tokens) {
            n_short++;
            gq_ids_free(&e);
            continue;
        }
        gq_ids_push(&exp[n_exp], gq_tok_bos(tok));
        gq_ids_append(&exp[n_exp], e.v, e.n < (size_t)seqlen - 1 ? e.n : (size_t)seqlen - 1);
        n_exp++;
        gq_ids_free(&e);
    }
    TEST_CHECK(n_exp == 3 && n_short == 1, "fixture: 3 usable records, 1 short (got %d, %d)", n_exp, n_short);
    TEST_CHECK(exp[0].n < (size_t)seqlen && exp[2].n == (size_t)seqlen, "fixture: one short and one truncated sequence");

    gq_calib_opts o;
    gq_calib_opts_default(&o);
    o.path = path;
    o.nsamples = 3;
    o.seqlen = seqlen;
    o.min_tokens = min_tokens;
    gq_calib_set s;
    TEST_OK(gq_calib_load(&s, tok, &o), "load q/a");
    TEST_CHECK(s.windowing == GQ_WIN_SAMPLE, "AUTO chose sample for question/answer records");
    TEST_CHECK(s.n == 3 && s.n_short == 1 && s.n_records == 4, "3 sequences, 1 short, 4 records (got %d, %ld, %ld)", s.n,
               s.n_short, s.n_records);
    int64_t sum = 0;
    for (int i = 0; i < s.n && i < 3; i++) {
        TEST_CHECK(s.len[i] == (int)exp[i].n && memcmp(s.seq[i], exp[i].v, exp[i].n * sizeof(int32_t)) == 0,
                   "q/a sequence %d = BOS + encode(question + answer), cut to %d (len %d, expected %zu)", i, seqlen,
                   s.len[i], exp[i].n);
        sum += s.len[i];
    }
    TEST_CHECK(s.n_tokens == sum && s.seq[0] == s.ids, "no padding: n_tokens = sum of lengths = %lld", (long long)sum);
    gq_calib_free(&s);

    /* asking for more than there is */
    o.nsamples = 5;
    TEST_FAILS(gq_calib_load(&s, tok, &o), GQ_ERR_DATA, "give only 3 with at least 4 tokens");
    /* the same records cut as one stream: 4 x ([BOS] + tokens + [EOS]) */
    o.nsamples = 2;
    o.windowing = GQ_WIN_CONCAT;
    TEST_OK(gq_calib_load(&s, tok, &o), "q/a as concat");
    TEST_CHECK(s.n == 2 && s.len[1] == seqlen && s.ids[0] == gq_tok_bos(tok) &&
                   memcmp(s.ids + 1, exp[0].v + 1, (exp[0].n - 1) * sizeof(int32_t)) == 0 &&
                   s.ids[exp[0].n] == gq_tok_eos(tok),
               "concat: BOS + record 1 + EOS + ...");
    gq_calib_free(&s);

    char *text = NULL;
    size_t tl = 0;
    const char *line = "{\"question\": \"a b\", \"answer\": \" c\"}";
    TEST_CHECK(gq_calib_record_text(line, strlen(line), &text, &tl) == 2 && tl == 5 && !memcmp(text, "a b c", 5),
               "record_text: question + answer as is");
    free(text);
    for (int i = 0; i < 4; i++) gq_ids_free(&exp[i]);
}

/* Bad lines: file:line in the error, or counted with skip_bad. */
static void test_bad_lines(const gq_tokenizer *tok, const char *dir) {
    static const char *bad[][2] = {{"this is not json", "not valid JSON"},
                                   {"[1, 2, 3]", "expected a JSON object, got an array"},
                                   {"{\"title\": \"x\"}", "expected {\"text\": ...} or {\"question\": ..., \"answer\": ...}, found neither"},
                                   {"{\"text\": 42}", "\"text\" is not a string"},
                                   {"{\"question\": \"q\"}", "expected {\"text\": ...} or {\"question\": ..., \"answer\": ...}, found neither"}};
    const char *path = tmp_path(dir, "bad.jsonl");
    gq_calib_opts o;
    gq_calib_opts_default(&o);
    o.path = path;
    o.nsamples = 1;
    o.seqlen = 8;
    gq_calib_set s;
    for (int i = 0; i < 5; i++) {
        char buf[512], want[128];
        snprintf(buf, sizeof buf, "{\"text\": \"import os\"}\n\n%s\n{\"text\": \"x = 1\"}\n", bad[i][0]);
        write_text(path, buf);
        snprintf(want, sizeof want, "bad.jsonl:3: %s", bad[i][1]);
        o.skip_bad = 0;
        TEST_FAILS(gq_calib_load(&s, tok, &o), GQ_ERR_DATA, want);
        o.skip_bad = 1;
        TEST_OK(gq_calib_load(&s, tok, &o), "skip_bad %d", i);
        TEST_CHECK(s.n_bad == 1 && s.n_records == 2, "skip_bad: 1 bad line counted, 2 records (got %ld, %ld)", s.n_bad,
                   s.n_records);
        gq_calib_free(&s);
    }
    /* all five in one file; AUTO decides by the first usable record (q/a) */
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 5; i++) fprintf(f, "%s\n", bad[i][0]);
    fprintf(f, "{\"question\": \"Why?\", \"answer\": \" Because the code says so.\"}\n{\"text\": \"pass\"}\n");
    fclose(f);
    o.skip_bad = 1;
    o.min_tokens = 1;
    TEST_OK(gq_calib_load(&s, tok, &o), "skip_bad, mixed");
    TEST_CHECK(s.n_bad == 5 && s.windowing == GQ_WIN_SAMPLE, "5 bad lines skipped, sample chosen (got %ld, %d)", s.n_bad,
               (int)s.windowing);
    gq_calib_free(&s);

    char *text = (char *)1;
    size_t tl;
    TEST_CHECK(gq_calib_record_text("nope", 4, &text, &tl) == -1 && !text, "record_text: not JSON -> -1");
    TEST_CHECK(gq_calib_record_text("[1]", 3, &text, &tl) == -1, "record_text: array -> -1");
    TEST_CHECK(gq_calib_record_text("{\"a\":1}", 7, &text, &tl) == 0, "record_text: neither form -> 0");
    TEST_CHECK(gq_calib_record_text("{\"text\":1}", 10, &text, &tl) == 0, "record_text: text not a string -> 0");
    const char *esc = "{\"text\":\"\\u00e9\"}";
    TEST_CHECK(gq_calib_record_text(esc, strlen(esc), &text, &tl) == 1 && tl == 2 && !memcmp(text, "\xC3\xA9", 2),
               "record_text: text, JSON escapes decoded");
    free(text);
}

static void test_too_little(const gq_tokenizer *tok) {
    gq_calib_opts o;
    gq_calib_opts_default(&o);
    o.path = SITE;
    o.nsamples = 1000;
    gq_calib_set s;
    /* 144 records give 508,616 tokens (HF, tests/data/calib golden): 248 windows */
    TEST_FAILS(gq_calib_load(&s, tok, &o), GQ_ERR_DATA,
               "1000 windows of 2048 tokens requested, but its 144 records give 508616 tokens, 248 windows");
    o.path = "/nonexistent/calib.jsonl";
    TEST_FAILS(gq_calib_load(&s, tok, &o), GQ_ERR_IO, "/nonexistent/calib.jsonl");
    o.path = SITE;
    o.seqlen = 0;
    TEST_FAILS(gq_calib_load(&s, tok, &o), GQ_ERR_ARG, "seqlen >= 1");
}

/* The reader: long lines, CRLF, blank lines, no final newline, gzip. */
static void test_jsonl_reader(const char *dir) {
    const char *path = tmp_path(dir, "lines.jsonl");
    size_t big = 300000; /* longer than the initial 64 KiB buffer */
    char *s = gq_malloc(big + 64);
    memset(s, 'x', big + 64);
    memcpy(s, "{\"text\": \"", 10);
    memcpy(s + 10 + big, "\"}\r\n", 5); /* with its NUL */
    FILE *f = fopen(path, "wb");
    fputs("\n  \n{\"text\": \"a\"}\r\n", f); /* lines 1-3 */
    fputs(s, f);                           /* line 4 */
    fputs("\t\n{\"text\": \"end\"}", f);   /* lines 5-6, no final newline */
    fclose(f);
    gq_jsonl *j;
    TEST_OK(gq_jsonl_open(&j, path), "open");
    const char *line;
    size_t len;
    long ln;
    int r = gq_jsonl_next(j, &line, &len, &ln);
    TEST_CHECK(r == 1 && ln == 3 && len == 13 && !memcmp(line, "{\"text\": \"a\"}", 13), "blank lines skipped, CRLF cut, line 3");
    r = gq_jsonl_next(j, &line, &len, &ln);
    TEST_CHECK(r == 1 && ln == 4 && len == big + 12, "a %zu-byte line read whole (got %zu)", big + 12, len);
    r = gq_jsonl_next(j, &line, &len, &ln);
    TEST_CHECK(r == 1 && ln == 6 && len == 15, "last line without newline, line 6");
    TEST_CHECK(gq_jsonl_next(j, &line, &len, &ln) == 0, "then end of file");
    TEST_CHECK(!strcmp(gq_jsonl_path(j), path), "path kept");
    gq_jsonl_close(j);
    gq_jsonl_close(NULL);
    free(s);
    TEST_FAILS(gq_jsonl_open(&j, tmp_path(dir, "missing.jsonl")), GQ_ERR_IO, "missing.jsonl");
    /* a NUL byte: named, not merged with the next line */
    f = fopen(path, "wb");
    fwrite("{\"text\": \"a\0b\"}\n{\"text\": \"c\"}\n", 1, 30, f);
    fclose(f);
    TEST_OK(gq_jsonl_open(&j, path), "open");
    TEST_FAILS(gq_jsonl_next(j, &line, &len, &ln), GQ_ERR_DATA, "lines.jsonl:1: NUL byte");
    gq_jsonl_close(j);
    /* a truncated gzip file: an I/O error naming the file, not a short read */
    const char *gz = tmp_path(dir, "cut.jsonl.gz");
    gzFile z = gzopen(gz, "wb");
    for (int i = 0; i < 2000; i++) gzprintf(z, "{\"text\": \"line %d of a file that gets cut\"}\n", i);
    gzclose(z);
    char *data = NULL;
    size_t dn = 0;
    gq_read_file(gz, &data, &dn);
    f = fopen(gz, "wb");
    fwrite(data, 1, dn / 2, f);
    fclose(f);
    free(data);
    TEST_OK(gq_jsonl_open(&j, gz), "open truncated gzip");
    int rc;
    long lines = 0;
    while ((rc = gq_jsonl_next(j, &line, &len, &ln)) == 1) lines++;
    TEST_CHECK(rc == GQ_ERR_IO && strstr(gq_errmsg(), "cut.jsonl.gz:") && lines > 0 && lines < 2000,
               "truncated gzip: I/O error after %ld lines: %s", lines, gq_errmsg());
    gq_jsonl_close(j);
}

/* --calib-seed: 12 records of distinct lengths, sample windowing (one sequence per record) keeps the
 * records whole, so each sequence says which record it is. Seed 0 is the file's order; a seed is a
 * permutation (every record once), reproducible, and another seed another order; with concat
 * windowing the shuffled stream is the same records' tokens in that order. A bad line is named by
 * its own line number whatever the order. */
static int rec_of(const gq_calib_set *s, int i, const int *len0, int n) {
    for (int r = 0; r < n; r++)
        if (s->len[i] == len0[r]) return r;
    return -1;
}

static void test_seed(const gq_tokenizer *tok, const char *dir) {
    TEST_BEGIN("calib seed");
    enum { N = 12 };
    const char *path = tmp_path(dir, "seed.jsonl");
    FILE *f = fopen(path, "w");
    for (int r = 0; r < N; r++) { /* record r: r + 1 words, so its length identifies it */
        fprintf(f, "{\"text\": \"");
        for (int w = 0; w <= r; w++) fprintf(f, "%sdef", w ? " " : "");
        fprintf(f, "\"}\n");
    }
    fclose(f);
    gq_calib_opts o;
    gq_calib_opts_default(&o);
    o.path = path, o.nsamples = N, o.seqlen = 64, o.min_tokens = 1, o.windowing = GQ_WIN_SAMPLE;
    gq_calib_set s0, s1, s1b, s2;
    int len0[N];
    TEST_OK(gq_calib_load(&s0, tok, &o), "seed 0");
    for (int r = 0; r < N && s0.n == N; r++) len0[r] = s0.len[r];
    TEST_CHECK(s0.n == N && len0[0] < len0[N - 1], "seed 0: the file's order (lengths grow with the record)");
    o.seed = 1;
    TEST_OK(gq_calib_load(&s1, tok, &o), "seed 1");
    TEST_OK(gq_calib_load(&s1b, tok, &o), "seed 1 again");
    o.seed = 2;
    TEST_OK(gq_calib_load(&s2, tok, &o), "seed 2");
    int seen[N] = {0}, moved = 0, same = s1.n == s1b.n, differ = 0;
    for (int i = 0; i < s1.n && i < N; i++) {
        int r = rec_of(&s1, i, len0, N);
        if (r >= 0) seen[r]++;
        moved += r != i;
        same = same && s1.len[i] == s1b.len[i] && !memcmp(s1.seq[i], s1b.seq[i], sizeof(int32_t) * s1.len[i]);
        differ += i < s2.n && s1.len[i] != s2.len[i];
    }
    int perm = s1.n == N;
    for (int r = 0; r < N; r++) perm = perm && seen[r] == 1;
    TEST_CHECK(perm, "seed 1: every record exactly once");
    TEST_CHECK(moved >= N / 2, "seed 1: another order (%d of %d records moved)", moved, N);
    TEST_CHECK(same, "seed 1 twice: the same sequences");
    TEST_CHECK(differ > 0, "seed 2: another order than seed 1");
    /* concat: the same tokens in the shuffled records' order */
    o.windowing = GQ_WIN_CONCAT, o.seed = 1, o.nsamples = 1;
    o.seqlen = (int)(s0.n_tokens + N - 1); /* every record's tokens, BOS included, plus an EOS each but the last */
    gq_calib_set c1;
    TEST_OK(gq_calib_load(&c1, tok, &o), "concat, seed 1");
    int ok = c1.n == 1;
    for (int i = 0, pos = 0; i < s1.n && ok; i++) { /* the stream: BOS + record + EOS per record */
        ok = !memcmp(c1.seq[0] + pos, s1.seq[i], sizeof(int32_t) * s1.len[i]);
        pos += s1.len[i] + 1;
    }
    TEST_CHECK(ok, "concat, seed 1: the records' tokens in seed 1's order");
    gq_calib_free(&s0), gq_calib_free(&s1), gq_calib_free(&s1b), gq_calib_free(&s2), gq_calib_free(&c1);
    /* a bad line keeps its line number */
    f = fopen(path, "a");
    fprintf(f, "not json\n");
    fclose(f);
    o.windowing = GQ_WIN_SAMPLE, o.seqlen = 64, o.nsamples = N + 1, o.seed = 3; /* every line is read */
    TEST_FAILS(gq_calib_load(&s1, tok, &o), GQ_ERR_DATA, "seed.jsonl:13");
}

int main(void) {
    TEST_BEGIN("calib");
    gq_log_set_level(GQ_LOG_WARN);
    gq_tokenizer *tok = NULL;
    TEST_OK(gq_tok_load(&tok, gq_test_data("pycoder-5m")), "load pycoder tokenizer");
    if (!tok) return TEST_REPORT();
    const char *dir = gq_test_tmpdir("calib");
    gq_calib_set site = {0};
    test_sitepackages(tok, &site);
    test_gzip(tok, &site, dir);
    gq_calib_free(&site);
    gq_calib_free(&site); /* twice: free leaves it empty */
    test_qa(tok, dir);
    test_bad_lines(tok, dir);
    test_too_little(tok);
    test_jsonl_reader(dir);
    test_seed(tok, dir);
    gq_rmtree(dir);
    gq_tok_free(tok);
    return TEST_REPORT();
}
