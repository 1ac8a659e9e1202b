/* test_calib_spm.c -- generated text with a SentencePiece (Llama-2) tokenizer, whose decoder
 * strips the leading space of a text: an answer must be decoded as the continuation of its
 * prompt (gq_tok_decode_continuation), not alone.
 *   - the continuation decode on the real Llama-2 tokenizer (tests/data/tokenizers/llama2):
 *     answers that begin with "▁" pieces, with a newline + indent, with byte-fallback
 *     tokens; prompts that end with byte-fallback tokens or a partial UTF-8 sequence;
 *     special tokens; expectations by hand, and the definition checked on random ids;
 *   - end to end against transformers (tests/data/gen-spm, tests/ref/gen_calib_spm.py: a tiny
 *     random Llama with the Llama-2 vocabulary, greedy, float32): the greedy ids of
 *     gq_gen_run, and the records gq_calib_gen_run writes (answer text, counts);
 *   - a run that leaves no record is an error naming why (too long, dropped by which rule).
 * Ids, texts and counts compare exactly: the greedy goldens were kept only where every step's
 * margin between the two best logits is >= 1e-3, far above the fp32 rounding differences
 * between gq and transformers (at most 1.2e-6 in the first steps' margins, which
 * check_first_margins compares with a tolerance of 1e-4). */
#include <jansson.h>

#include "gq/calib_gen.h"
#include "test.h"

static char tmp[512];
static gq_tokenizer *llama2;

static const char *tpath(const char *name) {
    static char bufs[8][700];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", tmp, name);
    return b;
}

/* ids of the named pieces, appended to out */
static void pieces(gq_ids *out, const char *const *names) {
    for (; *names; names++) {
        int32_t id = gq_tok_find(llama2, *names);
        GQ_ASSERT(id >= 0);
        gq_ids_push(out, id);
    }
}

static gq_ids encode(const char *text) {
    gq_ids ids = {0};
    GQ_ASSERT(gq_tok_encode(llama2, text, strlen(text), 1, &ids) == GQ_OK);
    return ids;
}

/* continuation of answer after prompt (special tokens skipped), its length in *n; NULL on
 * error. Texts may hold NUL bytes (<0x00> tokens): compare with lengths. */
static char *cont_n(const gq_ids *prompt, const gq_ids *answer, size_t *n) {
    char *s = NULL;
    int rc = gq_tok_decode_continuation(llama2, prompt->v, prompt->n, answer->v, answer->n, 1, &s, n);
    TEST_OK(rc, "continuation of %zu ids after %zu decodes", answer->n, prompt->n);
    return rc ? NULL : s;
}

static char *cont(const gq_ids *prompt, const gq_ids *answer) {
    size_t n;
    return cont_n(prompt, answer, &n);
}

static char *alone_n(const gq_ids *ids, size_t *n) {
    char *s = NULL;
    GQ_ASSERT(gq_tok_decode(llama2, ids->v, ids->n, 1, &s, n) == GQ_OK);
    return s;
}

static char *alone(const gq_ids *ids) {
    size_t n;
    return alone_n(ids, &n);
}

/* One hand-made case: prompt (text, or ids when text is NULL) + answer pieces. want_alone
 * (NULL: not checked) is what decoding the answer alone gives. */
static void hand_case(const char *what, const char *text, gq_ids *prompt, const char *const *answer, const char *want,
                      const char *want_alone) {
    gq_ids p = text ? encode(text) : *prompt, a = {0};
    pieces(&a, answer);
    char *got = cont(&p, &a), *al = alone(&a);
    TEST_CHECK(got && !strcmp(got, want), "%s: continuation '%s', expected '%s'", what, got ? got : "", want);
    if (want_alone) TEST_CHECK(!strcmp(al, want_alone), "%s: decoded alone '%s', expected '%s'", what, al, want_alone);
    free(got);
    free(al);
    gq_ids_free(&a);
    if (text) gq_ids_free(&p);
}

static void check_hand_cases(void) {
    TEST_BEGIN("continuation, by hand");
    /* newline + indent: the prompt ends with <0x0A>, the answer begins with "▁▁▁" + "▁return" =
     * four spaces; decoded alone the Strip decoder takes one of them */
    hand_case("indent after a newline", "def fibonacci(n):\n", NULL,
              (const char *[]){"▁▁▁", "▁return", "▁fib", "on", "acci", "(", "n", ")", NULL}, "    return fibonacci(n)",
              "   return fibonacci(n)");
    hand_case("answer beginning with a newline", "def fibonacci(n):", NULL,
              (const char *[]){"<0x0A>", "▁▁▁", "▁return", "▁n", NULL}, "\n    return n", "\n    return n");
    hand_case("'▁' piece first", "x =", NULL, (const char *[]){"▁", "1", NULL}, " 1", "1");
    hand_case("'▁word' piece first", "if x:", NULL, (const char *[]){"▁return", "▁x", NULL}, " return x", "return x");
    /* "x = " ends with a lone "▁" piece: its space is the prompt's, the answer adds "1" */
    hand_case("prompt ending with a space", "x = ", NULL, (const char *[]){"1", NULL}, "1", "1");
    /* byte fallback: U+1F999 is <0xF0><0x9F><0xA6><0x99> */
    hand_case("byte-fallback answer", "Say hello to the llama", NULL,
              (const char *[]){"▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>", "!", NULL}, " \xF0\x9F\xA6\x99!",
              "\xF0\x9F\xA6\x99!");
    hand_case("prompt ending with byte-fallback tokens", "Say hello to the llama \xF0\x9F\xA6\x99", NULL,
              (const char *[]){"▁is", "▁here", NULL}, " is here", "is here");
    /* an answer cut inside a character: one U+FFFD per byte token, as tokenizers decodes */
    hand_case("answer ending in a partial character", "llama", NULL, (const char *[]){"▁", "<0xF0>", "<0x9F>", NULL},
              " \xEF\xBF\xBD\xEF\xBF\xBD", NULL);
    /* a prompt ending inside a character (decoded alone: "llama" + 2 x U+FFFD), finished by the
     * answer: decode(prompt) is no prefix of decode(prompt + answer) = "llama🦙 ok"; the
     * character goes to the answer */
    gq_ids p = encode("llama");
    pieces(&p, (const char *[]){"<0xF0>", "<0x9F>", NULL});
    hand_case("prompt ending in a partial character", NULL, &p, (const char *[]){"<0xA6>", "<0x99>", "▁ok", NULL},
              "\xF0\x9F\xA6\x99 ok", NULL);
    gq_ids_free(&p);
    /* a byte run across the boundary that is invalid as a whole: decode(prompt + answer) is
     * "llama " + 5 x U+FFFD (one per byte token of the run, the prompt's four included) */
    hand_case("invalid byte run across the boundary", "llama \xF0\x9F\xA6\x99", NULL, (const char *[]){"<0xF0>", NULL},
              "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", NULL);
    /* special tokens are skipped; after a prompt of only <s> the answer begins the text, so its
     * leading space is stripped (as decode(prompt + answer) does) */
    hand_case("eos in the answer", "x =", NULL, (const char *[]){"▁y", "</s>", NULL}, " y", "y");
    p = (gq_ids){0};
    gq_ids_push(&p, gq_tok_bos(llama2));
    hand_case("prompt of only <s>", NULL, &p, (const char *[]){"▁def", "▁f", NULL}, "def f", "def f");
    hand_case("empty answer", "x =", NULL, (const char *[]){NULL}, "", "");
    gq_ids_free(&p);
    /* no prefix: plain decode; a bad id: the error names it */
    gq_ids a = encode("x = 1");
    char *s = NULL;
    TEST_OK(gq_tok_decode_continuation(llama2, NULL, 0, a.v, a.n, 1, &s, NULL), "empty prefix");
    TEST_CHECK(s && !strcmp(s, "x = 1"), "empty prefix: plain decode ('%s')", s ? s : "");
    free(s);
    int32_t bad[2] = {29871, 32000};
    TEST_FAILS(gq_tok_decode_continuation(llama2, a.v, a.n, bad, 2, 1, &s, NULL), GQ_ERR_ARG,
               "token id 32000 at position 1 of a continuation (after 5 prefix ids) is outside the vocabulary");
    TEST_FAILS(gq_tok_decode_continuation(llama2, bad, 2, a.v, a.n, 1, &s, NULL), GQ_ERR_ARG,
               "the prefix of a continuation: decode: token id 32000 at position 1 is outside");
    gq_ids_free(&a);
}

static int32_t space_ids[32000]; /* ids whose piece begins with "▁" */
static int n_space;

/* a random id: a byte token <0x00>..<0xFF> (ids 3..258), a "▁" piece, or any id, a third each */
static int32_t random_id(void) {
    uint64_t r = test_rng_next();
    switch (r % 3) {
    case 0:
        return 3 + (int32_t)((r >> 8) % 256);
    case 1:
        return space_ids[(r >> 8) % (uint64_t)n_space];
    default:
        return (int32_t)((r >> 8) % 32000);
    }
}

static size_t u8len(unsigned char b) {
    return b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 1;
}

/* The definition on random ids: with P = decode(prompt), F = decode(prompt + answer) and C the
 * continuation, F = F[0..L) + C where F[0..L) == P[0..L) (L = |F| - |C|), L = |P| when P is a
 * prefix of F, and otherwise the first characters of P and F after L differ. */
static void check_definition(void) {
    TEST_BEGIN("continuation, definition");
    int bad = 0, matched = 0, fallback = 0;
    for (int t = 0; t < 400; t++) {
        gq_ids p = {0}, a = {0}, both = {0};
        gq_ids_push(&p, gq_tok_bos(llama2));
        int np = (int)(test_rng_next() % 8), na = (int)(test_rng_next() % 6);
        for (int k = 0; k < np; k++) gq_ids_push(&p, random_id());
        for (int k = 0; k < na; k++) gq_ids_push(&a, random_id());
        gq_ids_append(&both, p.v, p.n);
        gq_ids_append(&both, a.v, a.n);
        size_t pn, fn, cn = 0;
        char *P = alone_n(&p, &pn), *F = alone_n(&both, &fn), *C = cont_n(&p, &a, &cn);
        int prefix = pn <= fn && !memcmp(P, F, pn), ok = C && cn <= fn && !memcmp(F + fn - cn, C, cn);
        size_t l = fn - cn;
        if (ok && prefix) ok = l == pn;
        if (ok && !prefix) {
            size_t cl = l < fn ? u8len((unsigned char)F[l]) : 0;
            ok = l <= pn && !memcmp(P, F, l) && (l == pn || l == fn || l + cl > pn || memcmp(P + l, F + l, cl));
        }
        matched += prefix;
        fallback += !prefix;
        if (!ok && bad++ < 3)
            TEST_CHECK(0, "case %d: prompt '%s', full '%s', continuation '%s'", t, P, F, C ? C : "(error)");
        free(P);
        free(F);
        free(C);
        gq_ids_free(&p);
        gq_ids_free(&a);
        gq_ids_free(&both);
    }
    TEST_CHECK(bad == 0, "%d of 400 random cases break the definition", bad);
    /* both branches exercised: prefix match, and the fallback of a byte run across the boundary */
    TEST_CHECK(matched >= 100 && fallback >= 5, "%d prefix matches, %d fallbacks", matched, fallback);
}

/* ---- end to end: tests/data/gen-spm ------------------------------------------------------ */

typedef struct {
    const char *prompt, *answer, *alone, *first, *finish;
    gq_ids prompt_ids, new_ids;
    double margin0; /* transformers' first-step margin: best minus second-best logit */
} gcase;

static gcase cases[16];
static int ncases, max_new;

static void ids_of(gq_ids *out, json_t *arr) {
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) gq_ids_push(out, (int32_t)json_integer_value(v));
}

static int load_golden(json_t *doc) {
    json_t *c;
    size_t i;
    max_new = (int)json_integer_value(json_object_get(doc, "max_new_tokens"));
    json_array_foreach(json_object_get(doc, "cases"), i, c) {
        if (ncases == 16) break;
        gcase *g = &cases[ncases++];
        g->prompt = json_string_value(json_object_get(c, "prompt"));
        g->answer = json_string_value(json_object_get(c, "answer"));
        g->alone = json_string_value(json_object_get(c, "answer_alone"));
        g->first = json_string_value(json_object_get(c, "first_piece"));
        g->finish = json_string_value(json_object_get(c, "finish"));
        ids_of(&g->prompt_ids, json_object_get(c, "prompt_ids"));
        ids_of(&g->new_ids, json_object_get(c, "new_ids"));
        g->margin0 = json_real_value(json_array_get(json_object_get(c, "margins"), 0));
        GQ_ASSERT(g->prompt && g->answer && g->alone && g->finish);
    }
    return ncases;
}

static int ids_eq(const gq_ids *a, const int32_t *b, size_t n) {
    return a->n == n && (!n || !memcmp(a->v, b, n * sizeof *b));
}

/* tmp/spm-model: symlinks to the fixture's config.json and model.safetensors and to the
 * Llama-2 tokenizer files (kept once, in tests/data/tokenizers/llama2) */
static const char *spm_model_dir(void) {
    static char dir[700];
    static const char *files[][2] = {{"gen-spm", "config.json"},
                                     {"gen-spm", "model.safetensors"},
                                     {"tokenizers/llama2", "tokenizer.json"},
                                     {"tokenizers/llama2", "tokenizer_config.json"},
                                     {"tokenizers/llama2", "special_tokens_map.json"}};
    snprintf(dir, sizeof dir, "%s", tpath("spm-model"));
    gq_mkdirs(dir);
    char cwd[512], rel[128], src[1400], dst[1400];
    GQ_ASSERT(getcwd(cwd, sizeof cwd));
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(rel, sizeof rel, "%s/%s", files[i][0], files[i][1]);
        const char *d = gq_test_data(rel);
        snprintf(src, sizeof src, "%s%s%s", d[0] == '/' ? "" : cwd, d[0] == '/' ? "" : "/", d);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i][1]);
        unlink(dst);
        GQ_ASSERT(symlink(src, dst) == 0);
    }
    return dir;
}

/* The first greedy step after prefill: gq's margin between the two best logits vs
 * transformers'. This measures the float32 rounding differences between the two (the goldens
 * were kept only with margins >= 1e-3 at every step, so that the ids compare exactly); the
 * tolerance, 1e-4, is ten times below that floor. */
static void check_first_margins(gq_gen *g) {
    int vocab = gq_gen_vocab(g);
    float *lg = gq_malloc((size_t)vocab * sizeof *lg);
    double worst = 0;
    for (int i = 0; i < ncases; i++) {
        gq_gen_slot_reset(g, 0);
        TEST_OK(gq_gen_prefill(g, 0, cases[i].prompt_ids.v, (int)cases[i].prompt_ids.n, lg), "prefill %d", i);
        int b = 0;
        for (int v = 1; v < vocab; v++)
            if (lg[v] > lg[b]) b = v;
        float second = -INFINITY;
        for (int v = 0; v < vocab; v++)
            if (v != b && lg[v] > second) second = lg[v];
        double m = (double)lg[b] - second;
        TEST_CHECK(b == cases[i].new_ids.v[0], "case %d: first greedy id %d, transformers %d", i, b,
                   cases[i].new_ids.v[0]);
        TEST_NEAR(m, cases[i].margin0, 1e-4, "case %d: first-step margin = transformers' (float32 rounding)", i);
        if (fabs(m - cases[i].margin0) > worst) worst = fabs(m - cases[i].margin0);
    }
    gq_debug("first-step margins: largest difference from transformers' %.3g", worst);
    free(lg);
}

static int seq_done(gq_gen_seq *s, int index, void *user) {
    (void)s, (void)index, (void)user;
    return GQ_OK; /* the ids stay in s->out */
}

/* gq's greedy ids = transformers', and their continuation text = the golden's */
static void check_engine(const char *dir) {
    TEST_BEGIN("greedy ids vs transformers");
    gq_model m;
    gq_backend *be = NULL;
    gq_gen *g = NULL;
    if (gq_model_open(&m, dir) || gq_backend_init(&be, "cpu")) {
        TEST_CHECK(0, "model / backend: %s", gq_errmsg());
        return;
    }
    gq_gen_opts go;
    gq_gen_opts_default(&go);
    go.max_batch = 3; /* the 8 prompts run in waves through 3 slots, as gq calib --batch 3 */
    go.max_len = m.cfg.max_pos;
    go.eos_ids[go.n_eos++] = gq_tok_eos(llama2);
    TEST_OK(gq_gen_init(&g, &m, be, &go), "engine");
    gq_gen_seq seqs[16];
    memset(seqs, 0, sizeof seqs);
    for (int i = 0; i < ncases; i++) {
        gq_ids p = encode(cases[i].prompt);
        TEST_CHECK(ids_eq(&p, cases[i].prompt_ids.v, cases[i].prompt_ids.n), "case %d: prompt ids = HF (<s> + encode)",
                   i);
        gq_ids_free(&p);
        seqs[i].prompt = cases[i].prompt_ids.v;
        seqs[i].n_prompt = (int)cases[i].prompt_ids.n;
        seqs[i].stream = (uint64_t)i;
    }
    gq_gen_sampling sm;
    gq_gen_sampling_default(&sm);
    sm.max_new_tokens = max_new;
    if (g) check_first_margins(g);
    TEST_OK(g ? gq_gen_run(g, seqs, ncases, &sm, seq_done, NULL) : GQ_ERR_ARG, "greedy run");
    int space = 0;
    for (int i = 0; i < ncases; i++) {
        const gcase *c = &cases[i];
        TEST_CHECK(ids_eq(&seqs[i].out, c->new_ids.v, c->new_ids.n) &&
                       !strcmp(gq_gen_finish_name(seqs[i].finish), c->finish),
                   "case %d: %zu greedy ids (%s) = transformers' %zu (%s)", i, seqs[i].out.n,
                   gq_gen_finish_name(seqs[i].finish), c->new_ids.n, c->finish);
        char *t = cont(&c->prompt_ids, &c->new_ids), *a = alone(&c->new_ids);
        TEST_CHECK(t && !strcmp(t, c->answer), "case %d: continuation '%s' = golden '%s'", i, t ? t : "", c->answer);
        TEST_CHECK(!strcmp(a, c->alone), "case %d: decoded alone = HF's decode alone", i);
        if (c->first && !strncmp(c->first, "\xE2\x96\x81", 3)) { /* "▁" first: alone loses the space */
            space++;
            TEST_CHECK(c->answer[0] == ' ' && !strcmp(c->answer + 1, c->alone),
                       "case %d: the golden keeps the leading space that decoding alone drops", i);
        }
        free(t);
        free(a);
        gq_gen_seq_free(&seqs[i]);
    }
    TEST_CHECK(space >= 3 && ncases - space >= 2, "the fixture has answers with (%d) and without (%d) a leading '▁'",
               space, ncases - space);
    gq_gen_free(g);
    gq_backend_free(be);
    gq_model_close(&m);
}

static void base_opts(gq_calib_gen_opts *o, const char *dir, const char *q, const char *out) {
    gq_calib_gen_opts_default(o);
    o->model_dir = dir;
    o->questions = q;
    o->out = out;
    o->batch = 3;
    o->sampling.max_new_tokens = max_new;
    o->min_answer_tokens = 0; /* random-weight answers repeat themselves: keep every one */
    o->degenerate_period = 0;
    o->threads = 1;
    o->device = "cpu";
}

typedef struct {
    json_t *rec[16];
    int n, bad;
} records;

static int collect(const char *line, size_t len, long lineno, void *user) {
    records *r = user;
    (void)lineno;
    json_t *j = json_loadb(line, len, 0, NULL);
    json_int_t ix = json_integer_value(json_object_get(j, "index"));
    if (!j || ix < 0 || ix >= ncases || r->rec[ix]) {
        r->bad++;
        json_decref(j);
    } else {
        r->rec[ix] = j;
        r->n++;
    }
    return GQ_OK;
}

/* gq calib's records: the answer is the golden continuation, the counts are the golden's */
static void check_calib(const char *dir, const char *q) {
    TEST_BEGIN("gq calib records");
    gq_calib_gen_opts o;
    gq_calib_gen_report r;
    const char *out = tpath("spm.jsonl");
    base_opts(&o, dir, q, out);
    TEST_OK(gq_calib_gen_run(&o, &r), "gq calib on the SentencePiece model");
    TEST_CHECK(r.n_written == ncases && r.n_total == ncases, "%ld of %d records written", r.n_written, ncases);
    records rs = {.n = 0};
    size_t cut;
    TEST_OK(gq_calib_gen_out_scan(out, collect, &rs, &cut), "read the records back");
    TEST_CHECK(rs.n == ncases && rs.bad == 0, "%d records, one per question (%d bad lines)", rs.n, rs.bad);
    for (int i = 0; i < ncases; i++) {
        json_t *j = rs.rec[i];
        if (!j) continue;
        const gcase *c = &cases[i];
        const char *ans = json_string_value(json_object_get(j, "answer"));
        TEST_CHECK(ans && !strcmp(ans, c->answer), "record %d: answer '%s', golden '%s'", i, ans ? ans : "", c->answer);
        TEST_CHECK(!strcmp(json_string_value(json_object_get(j, "question")), c->prompt) &&
                       !json_object_get(j, "raw_question"),
                   "record %d: question is the prompt", i);
        TEST_CHECK(json_integer_value(json_object_get(j, "prompt_tokens")) == (json_int_t)c->prompt_ids.n &&
                       json_integer_value(json_object_get(j, "answer_tokens")) == (json_int_t)c->new_ids.n &&
                       !strcmp(json_string_value(json_object_get(j, "finish")), c->finish),
                   "record %d: prompt_tokens, answer_tokens, finish = golden", i);
        json_decref(j);
    }
}

/* no record at the end of a run: GQ_ERR_DATA naming the questions and what dropped them */
static void check_no_records(const char *dir, const char *q) {
    TEST_BEGIN("no records");
    gq_calib_gen_opts o;
    gq_calib_gen_report r;
    char want[160];
    base_opts(&o, dir, q, tpath("none.jsonl"));
    o.min_answer_tokens = max_new + 1; /* every answer is shorter */
    TEST_FAILS(gq_calib_gen_run(&o, &r), GQ_ERR_DATA, "none.jsonl: no records written, the file holds none");
    snprintf(want, sizeof want,
             "%d questions from %s: %d answers generated, all dropped: %d short (fewer than %d tokens", ncases, q,
             ncases, ncases, max_new + 1);
    TEST_CHECK(strstr(gq_errmsg(), want) != NULL, "message '%s' contains '%s'", gq_errmsg(), want);
    TEST_CHECK(r.n_short == ncases && r.n_written == 0 && r.n_total == 0, "report: %ld short, %ld written", r.n_short,
               r.n_written);
    o.resume = 1; /* the dropped list makes a resumed run generate nothing: still no record */
    TEST_FAILS(gq_calib_gen_run(&o, &r), GQ_ERR_DATA, "dropped by an earlier run (listed in");
    TEST_CHECK(r.n_generated == 0 && r.n_done_before == ncases, "resume: nothing generated, %ld done before",
               r.n_done_before);
    /* --n is named */
    base_opts(&o, dir, q, tpath("none2.jsonl"));
    o.n = 2;
    o.min_answer_tokens = max_new + 1;
    TEST_FAILS(gq_calib_gen_run(&o, &r), GQ_ERR_DATA, "2 questions from");
    TEST_CHECK(strstr(gq_errmsg(), "(--n 2): 2 answers generated, all dropped: 2 short") != NULL, "--n named: %s",
               gq_errmsg());
    /* two rules at once: a prompt longer than the model's 128 positions (nothing generated for
     * it) and case 5, whose greedy answer repeats one piece 20 times (degenerate, period 1) */
    const char *lq = tpath("two.txt");
    FILE *f = fopen(lq, "wb");
    GQ_ASSERT(f);
    for (int k = 0; k < 150; k++) fputs("x = 1 ", f);
    fprintf(f, "\n%s\n", cases[5].prompt);
    fclose(f);
    base_opts(&o, dir, lq, tpath("none3.jsonl"));
    o.degenerate_period = 16;
    TEST_FAILS(gq_calib_gen_run(&o, &r), GQ_ERR_DATA, "2 questions from");
    TEST_CHECK(strstr(gq_errmsg(), ": 1 answer generated, all dropped: 1 degenerate (a period of up to 16 tokens "
                                   "repeats, --degenerate-period); 1 too long (the prompt leaves no room within "
                                   "max_position_embeddings 128)") &&
                   r.n_too_long == 1 && r.n_generated == 1 && r.n_degenerate == 1,
               "both reasons named: %s", gq_errmsg());
}

static const char *write_questions(void) {
    static char p[700];
    snprintf(p, sizeof p, "%s", tpath("spm-q.jsonl"));
    FILE *f = fopen(p, "wb");
    GQ_ASSERT(f);
    for (int i = 0; i < ncases; i++) {
        json_t *r = json_pack("{s:s}", "prompt", cases[i].prompt);
        char *s = json_dumps(r, JSON_COMPACT);
        fprintf(f, "%s\n", s);
        free(s);
        json_decref(r);
    }
    fclose(f);
    return p;
}

int main(void) {
    gq_log_set_level(GQ_LOG_WARN);
    gq_set_threads(1); /* tiny model */
    snprintf(tmp, sizeof tmp, "%s", gq_test_tmpdir("calibspm"));
    if (gq_tok_load(&llama2, gq_test_data("tokenizers/llama2"))) {
        TEST_CHECK(0, "Llama-2 tokenizer: %s", gq_errmsg());
        return TEST_REPORT();
    }
    for (int32_t id = 0; id < gq_tok_vocab_size(llama2); id++)
        if (!strncmp(gq_tok_piece(llama2, id), "\xE2\x96\x81", 3)) space_ids[n_space++] = id;
    check_hand_cases();
    check_definition();
    json_t *doc = test_load_json(gq_test_data("gen-spm/golden.json"));
    if (doc && load_golden(doc) == 8) {
        const char *dir = spm_model_dir(), *q = write_questions();
        check_engine(dir);
        check_calib(dir, q);
        check_no_records(dir, q);
    } else {
        TEST_CHECK(0, "gen-spm/golden.json: expected 8 cases");
    }
    for (int i = 0; i < ncases; i++) {
        gq_ids_free(&cases[i].prompt_ids);
        gq_ids_free(&cases[i].new_ids);
    }
    json_decref(doc);
    gq_tok_free(llama2);
    gq_rmtree(tmp);
    return TEST_REPORT();
}
