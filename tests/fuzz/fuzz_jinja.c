/* fuzz_jinja.c -- libFuzzer target for the Jinja subset (src/jinja*.c):
 * parse the input as a template and render it with a small chat context.
 * Every input must end in GQ_OK or an error status, never a crash, a leak or
 * unbounded memory. Seeds: the templates of tests/data/gen/jinja.json.
 *
 *   clang -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *     tests/fuzz/fuzz_jinja.c src/jinja/jinja.c src/jinja/jinja_lex.c src/jinja/jinja_eval.c src/jinja/jinja_builtins.c src/jinja/jinja_value.c \
 *     src/base/common.c -o build-fuzz/fuzz_jinja -ljansson -lm -fopenmp
 *   python3 -c "import json,os; os.makedirs('build-fuzz/jinja-seeds', exist_ok=True); \
 *     [open(f'build-fuzz/jinja-seeds/{i}.j2','w').write(t['template']) for i, t in \
 *     enumerate(json.load(open('tests/data/gen/jinja.json'))['templates'])]"
 *   ./build-fuzz/fuzz_jinja -max_len=4096 -rss_limit_mb=3000 build-fuzz/jinja-seeds
 *
 * Run on 2026-11-26 for 240 s (680k inputs) after the resource bounds of
 * jinja_eval.c / jinja_value.c were added: no findings.
 */
#include <stdint.h>
#include <stdlib.h>

#include "gq/jinja.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gq_jinja *t = NULL;
    if (gq_jinja_parse(&t, (const char *)data, size, "fuzz") == GQ_OK) {
        char *out = NULL;
        gq_jinja_render(t,
                        "{\"messages\": [{\"role\": \"user\", \"content\": \" hi \"}, {\"role\": \"assistant\", "
                        "\"content\": \"yo\"}], \"bos_token\": \"<s>\", \"eos_token\": \"</s>\", "
                        "\"add_generation_prompt\": true, \"n\": 3, \"l\": [1, \"a\"], \"m\": {\"k\": \"v\"}}",
                        &out, NULL);
        free(out);
        gq_jinja_free(t);
    }
    return 0;
}
