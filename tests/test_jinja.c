/* test_jinja.c -- the Jinja subset interpreter (src/jinja*.c) against golden
 * renderings by transformers' jinja2 environment (tests/data/gen/jinja.json,
 * made by tests/ref/gen_jinja.py): the chat templates of Llama-2-chat,
 * CodeLlama-Instruct, Llama-3-Instruct, Mistral-Instruct, ChatML/Qwen and
 * Zephyr on five conversations each, and one feature template per construct.
 * Rendered text is compared byte for byte (no tolerance: a template either
 * renders the same string or it does not). Errors: raise_exception messages
 * must match jinja2's; unsupported constructs and syntax errors must fail
 * with the template position. */
#include <jansson.h>

#include "gq/jinja.h"
#include "test.h"

/* Position of the first differing byte, for the failure message. */
static size_t first_diff(const char *a, const char *b) {
    size_t i = 0;
    while (a[i] && a[i] == b[i]) i++;
    return i;
}

static void check_golden(void) {
    TEST_BEGIN("golden renderings");
    char *text;
    size_t len;
    if (gq_read_file(gq_test_data("gen/jinja.json"), &text, &len)) {
        TEST_CHECK(0, "cannot read gen/jinja.json: %s", gq_errmsg());
        return;
    }
    json_error_t je;
    json_t *doc = json_loads(text, 0, &je);
    free(text);
    TEST_CHECK(doc != NULL, "jinja.json parses: %s", je.text);
    if (!doc) return;
    json_t *tpls = json_object_get(doc, "templates");
    size_t i, ncases = 0;
    json_t *t;
    TEST_CHECK(json_array_size(tpls) >= 30, "fixture has the chat and feature templates (got %zu)",
               json_array_size(tpls));
    json_array_foreach(tpls, i, t) {
        const char *name = json_string_value(json_object_get(t, "name"));
        const char *src = json_string_value(json_object_get(t, "template"));
        gq_jinja *tp = NULL;
        int rc = gq_jinja_parse(&tp, src, strlen(src), name);
        TEST_OK(rc, "template '%s' parses", name);
        if (rc) continue;
        size_t k;
        json_t *cs;
        json_array_foreach(json_object_get(t, "cases"), k, cs) {
            const char *cname = json_string_value(json_object_get(cs, "name"));
            char *ctx = json_dumps(json_object_get(cs, "context"), JSON_COMPACT);
            const char *want = json_string_value(json_object_get(cs, "output"));
            const char *want_err = json_string_value(json_object_get(cs, "error"));
            char *out = NULL;
            size_t out_len = 0;
            rc = gq_jinja_render(tp, ctx, &out, &out_len);
            ncases++;
            if (want) {
                TEST_OK(rc, "%s / %s renders", name, cname);
                if (!rc) {
                    size_t d = first_diff(out, want);
                    TEST_CHECK(
                        out_len == strlen(want) && !strcmp(out, want),
                        "%s / %s: output equals jinja2's (first difference at byte %zu: got \"%.40s\", want \"%.40s\")",
                        name, cname, d, out + d, want + d);
                }
            } else {
                /* jinja2's TemplateError text is the raise_exception message */
                TEST_FAILS(rc, GQ_ERR_DATA, want_err);
                TEST_CHECK(strstr(gq_errmsg(), "template raised") != NULL,
                           "%s / %s: error says the template raised: %s", name, cname, gq_errmsg());
            }
            free(out);
            free(ctx);
        }
        gq_jinja_free(tp);
    }
    TEST_CHECK(ncases >= 60, "all golden cases ran (%zu)", ncases);
    json_decref(doc);
}

/* gq_jinja_render_chat must equal gq_jinja_render with the same messages. */
static void check_chat_api(void) {
    TEST_BEGIN("render_chat");
    const char *tpl = "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m['content'] }}]{% endfor %}"
                      "{% if add_generation_prompt %}<gen>{% endif %}{{ eos_token }}";
    gq_jinja *t;
    TEST_OK(gq_jinja_parse(&t, tpl, strlen(tpl), "chat"), "parse");
    const char *roles[] = {"system", "user"}, *contents[] = {"be brief", "2+2?"};
    char *out;
    size_t n;
    TEST_OK(gq_jinja_render_chat(t, roles, contents, 2, "<s>", "</s>", 1, &out, &n), "render_chat");
    TEST_CHECK(!strcmp(out, "<s>[system:be brief][user:2+2?]<gen></s>"), "render_chat output: %s", out);
    free(out);
    TEST_OK(gq_jinja_render_chat(t, roles + 1, contents + 1, 1, "", "", 0, &out, &n), "render_chat");
    TEST_CHECK(!strcmp(out, "[user:2+2?]") && n == 11, "render_chat without generation prompt: %s", out);
    free(out);
    gq_jinja_free(t);
}

/* Parse must fail with `code`, naming "name:line:col" and `what`. */
static void parse_fails(const char *src, int code, const char *pos, const char *what) {
    gq_jinja *t = NULL;
    int rc = gq_jinja_parse(&t, src, strlen(src), "tpl");
    TEST_FAILS(rc, code, pos);
    TEST_CHECK(strstr(gq_errmsg(), what) != NULL, "error for \"%s\" mentions \"%s\": %s", src, what, gq_errmsg());
    TEST_CHECK(t == NULL, "no template returned on error");
    gq_jinja_free(t);
}

static void render_fails(const char *src, const char *vars, int code, const char *pos, const char *what) {
    gq_jinja *t = NULL;
    char *out = NULL;
    TEST_OK(gq_jinja_parse(&t, src, strlen(src), "tpl"), "parse \"%s\"", src);
    if (!t) return;
    int rc = gq_jinja_render(t, vars, &out, NULL);
    TEST_FAILS(rc, code, pos);
    TEST_CHECK(strstr(gq_errmsg(), what) != NULL, "error for \"%s\" mentions \"%s\": %s", src, what, gq_errmsg());
    TEST_CHECK(out == NULL, "no output on error");
    free(out);
    gq_jinja_free(t);
}

static void check_errors(void) {
    TEST_BEGIN("errors");
    /* unsupported constructs: GQ_ERR_UNSUPPORTED with the position */
    parse_fails("ab\n{% macro m(x) %}{{ x }}{% endmacro %}", GQ_ERR_UNSUPPORTED, "tpl:2:1:", "macro");
    parse_fails("{% raw %}{{ x }}{% endraw %}", GQ_ERR_UNSUPPORTED, "tpl:1:1:", "raw");
    parse_fails("x\n  {{ 1.5 }}", GQ_ERR_UNSUPPORTED, "tpl:2:6:", "float");
    parse_fails("{{ 3 / 2 }}", GQ_ERR_UNSUPPORTED, "tpl:1:6:", "'/'");
    parse_fails("{% include 'x.j2' %}", GQ_ERR_UNSUPPORTED, "tpl:1:1:", "include");
    parse_fails("{% set x %}a{% endset %}", GQ_ERR_UNSUPPORTED, "tpl:1:1:", "block assignments");
    parse_fails("{% for x in y recursive %}{% endfor %}", GQ_ERR_UNSUPPORTED, "tpl:1:15:", "recursive");
    /* syntax errors: GQ_ERR_FORMAT with the position */
    parse_fails("{% if x %}yes", GQ_ERR_FORMAT, "tpl:1:14:", "{% if %} opened at 1:1 is not closed");
    parse_fails("{{ x ", GQ_ERR_FORMAT, "tpl:1:1:", "not closed");
    parse_fails("{{ 'abc }}", GQ_ERR_FORMAT, "tpl:1:4:", "unterminated string");
    parse_fails("a\nb {{ (1 + 2 }}", GQ_ERR_FORMAT, "tpl:2:", "'}'");
    parse_fails("{% endif %}", GQ_ERR_FORMAT, "tpl:1:4:", "endif");
    parse_fails("{% break %}", GQ_ERR_FORMAT, "tpl:1:4:", "outside of a loop");
    parse_fails("{{ x is }}", GQ_ERR_FORMAT, "tpl:1:9:", "test name");
    parse_fails("{{ a $ b }}", GQ_ERR_FORMAT, "tpl:1:6:", "unexpected character '$'");
    parse_fails("{# never closed", GQ_ERR_FORMAT, "tpl:1:1:", "comment is not closed");
    parse_fails("{% for %}{% endfor %}", GQ_ERR_FORMAT, "tpl:1:8:", "loop variable");
    /* runtime errors: GQ_ERR_DATA / UNSUPPORTED with the position */
    render_fails("ok {{ 'a' + 1 }}", "{}", GQ_ERR_DATA,
                 "tpl:1:11:", "unsupported operand types for +: 'string' and 'int'");
    render_fails("{{ x.y.z }}", "{}", GQ_ERR_DATA, "tpl:1:5:", "'x' is undefined");
    render_fails("{{ m.nope.z }}", "{\"m\": {}}", GQ_ERR_DATA, "tpl:1:10:", "'nope' is undefined");
    render_fails("{{ x | wordwrap }}", "{\"x\": \"a\"}", GQ_ERR_UNSUPPORTED, "tpl:1:8:", "filter 'wordwrap'");
    render_fails("{{ x is callable }}", "{\"x\": 1}", GQ_ERR_UNSUPPORTED, "tpl:1:9:", "test 'callable'");
    render_fails("{{ x.title() }}", "{\"x\": \"a\"}", GQ_ERR_UNSUPPORTED, "tpl:1:5:", "'title'");
    render_fails("\n\n  {{ raise_exception('bad role ' ~ r) }}", "{\"r\": \"tool\"}", GQ_ERR_DATA,
                 "tpl:3:21:", "template raised: bad role tool");
    render_fails("{% for x in 5 %}{% endfor %}", "{}", GQ_ERR_DATA, "tpl:1:13:", "not iterable");
    render_fails("{{ 1 // 0 }}", "{}", GQ_ERR_DATA, "tpl:1:6:", "by zero");
    render_fails("{{ x }}", "{\"x\": 1.5}", GQ_ERR_ARG, "tpl: template variables", "integers");
    render_fails("{{ x }}", "[1]", GQ_ERR_ARG, "tpl: template variables", "expected a JSON object");
    render_fails("{% set ns.a = 1 %}", "{\"ns\": {}}", GQ_ERR_DATA, "tpl:1:1:", "not a namespace");
    render_fails("{{ 9223372036854775807 + 1 }}", "{}", GQ_ERR_UNSUPPORTED, "tpl:1:", "overflow");
    /* resource bounds: self-containing namespaces print, runaway growth fails */
    gq_jinja *t;
    char *out = NULL;
    const char *cyc = "{% set ns = namespace(a=1) %}{% set ns.self = ns %}{{ ns }}";
    TEST_OK(gq_jinja_parse(&t, cyc, strlen(cyc), "tpl"), "parse");
    TEST_OK(gq_jinja_render(t, "{}", &out, NULL), "a namespace holding itself renders");
    TEST_CHECK(out && strstr(out, "...") != NULL, "with the recursion cut: %.60s", out ? out : "");
    free(out);
    gq_jinja_free(t);
    render_fails("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                 "{}", GQ_ERR_UNSUPPORTED, "tpl:1:", "longer than");
    render_fails("{% for i in range(1000000) %}{% endfor %}", "{}", GQ_ERR_UNSUPPORTED, "tpl:1:", "more than 256 MiB");
    render_fails("{{ 'ab' | replace('', 'x' * 60000000) }}", "{}", GQ_ERR_UNSUPPORTED, "tpl:1:", "longer than");
}

/* Every prefix of every golden template parses or fails cleanly (no crash,
 * no leak under ASan), and what parses renders or fails cleanly. */
static void check_truncated(void) {
    TEST_BEGIN("truncated templates");
    char *text;
    size_t len;
    if (gq_read_file(gq_test_data("gen/jinja.json"), &text, &len)) return;
    json_t *doc = json_loads(text, 0, NULL);
    free(text);
    size_t i, parsed = 0, failed = 0, bad_status = 0;
    json_t *t;
    json_array_foreach(json_object_get(doc, "templates"), i, t) {
        const char *src = json_string_value(json_object_get(t, "template"));
        char *ctx =
            json_dumps(json_object_get(json_array_get(json_object_get(t, "cases"), 0), "context"), JSON_COMPACT);
        size_t n = strlen(src);
        for (size_t k = 0; k < n; k++) {
            gq_jinja *tp = NULL;
            int rc = gq_jinja_parse(&tp, src, k, "prefix");
            if (rc) {
                failed++;
                bad_status += rc != GQ_ERR_FORMAT && rc != GQ_ERR_UNSUPPORTED;
                bad_status += strncmp(gq_errmsg(), "prefix:", 7) != 0;
                continue;
            }
            parsed++;
            char *out = NULL;
            rc = gq_jinja_render(tp, ctx, &out, NULL);
            bad_status += rc != GQ_OK && rc != GQ_ERR_DATA && rc != GQ_ERR_UNSUPPORTED;
            free(out);
            gq_jinja_free(tp);
        }
        free(ctx);
    }
    json_decref(doc);
    TEST_CHECK(parsed > 300 && failed > 1000, "prefixes: %zu parse, %zu fail", parsed, failed);
    TEST_CHECK(bad_status == 0, "every failure is a format/unsupported/data error naming the template (%zu not)",
               bad_status);
    /* nesting is bounded instead of overflowing the stack */
    size_t deep = 100000;
    char *s = gq_malloc(4 * deep + 16);
    size_t k = 0;
    memcpy(s, "{{ ", 3);
    k = 3;
    for (size_t j = 0; j < deep; j++) memcpy(s + k + 4 * j, "not ", 4);
    k += 4 * deep;
    memcpy(s + k, "x }}", 4);
    gq_jinja *tp = NULL;
    TEST_FAILS(gq_jinja_parse(&tp, s, k + 4, "deep"), GQ_ERR_UNSUPPORTED, "nested more than 200 levels");
    k = 0;
    for (size_t j = 0; j < 300; j++) {
        memcpy(s + k, "{% if x %}", 10);
        k += 10;
    }
    TEST_FAILS(gq_jinja_parse(&tp, s, k, "deep"), GQ_ERR_UNSUPPORTED, "nested more than 200 levels");
    k = 3;
    memcpy(s, "{{ ", 3);
    for (size_t j = 0; j < 300; j++) s[k++] = '-';
    memcpy(s + k, "1 }}", 4);
    TEST_FAILS(gq_jinja_parse(&tp, s, k + 4, "deep"), GQ_ERR_UNSUPPORTED, "nested more than 200 levels");
    free(s);
}

int main(void) {
    check_golden();
    check_truncated();
    check_chat_api();
    check_errors();
    return TEST_REPORT();
}
