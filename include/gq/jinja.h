/*
 * gq/jinja.h -- a small Jinja2 interpreter for chat templates
 * (tokenizer_config.json "chat_template"), rendering as transformers'
 * apply_chat_template does: trim_blocks and lstrip_blocks on, one trailing
 * newline of the template dropped, no autoescape, the loopcontrols extension
 * (break/continue), raise_exception(), and a tojson filter that is
 * json.dumps(x, ensure_ascii=False).
 *
 * The supported subset (enough for the Llama-2/3, CodeLlama, Mistral,
 * ChatML/Qwen and Zephyr templates and their common variations):
 *   statements  {% if %}/{% elif %}/{% else %}/{% endif %},
 *               {% for x in e %} / {% for k, v in e %} (with "if cond" and
 *               {% else %}), {% break %}, {% continue %}, {% set x = e %},
 *               {% set ns.attr = e %}, {% generation %}..{% endgeneration %}
 *   whitespace  {%- -%} {{- -}} {#- -#}, {%+ (no lstrip), comments {# #}
 *   literals    'str' "str" (Python escapes), ints, true/false/none (any
 *               case Jinja accepts), [lists], {dicts}, (tuples)
 *   operators   + - * // % ** ~, == != < <= > >= (chained), in, not in,
 *               and, or, not, x if c else y, subscripts x[i] x['k'] x[a:b:c],
 *               attributes x.k, calls
 *   loop        loop.index loop.index0 loop.revindex loop.revindex0
 *               loop.first loop.last loop.length
 *   filters     trim length count upper lower capitalize tojson(indent=)
 *               string first last join default/d list items reverse replace
 *   tests       defined undefined none string number integer mapping
 *               iterable sequence boolean true false even odd divisibleby
 *               sameas eq/equalto
 *   globals     raise_exception(msg) namespace(k=v, ...) range(..)
 *               strftime_now(fmt)
 *   methods     str: strip lstrip rstrip upper lower startswith endswith
 *               split replace; dict: get items keys values
 * Values are Python-like (None/bool/int/str/list/dict); `{{ x }}` prints
 * str(x) (lists and dicts as Python reprs). Floats, `/`, macros, blocks,
 * includes, {% raw %}, call blocks and filter blocks are not supported: such a
 * template is GQ_ERR_UNSUPPORTED naming "name:line:col" and the construct.
 * Syntax errors are GQ_ERR_FORMAT, runtime errors (a type error, an
 * undefined attribute of an undefined value) GQ_ERR_DATA, all naming the
 * template position. raise_exception(msg) is GQ_ERR_DATA with "template
 * raised: msg". Case mapping (upper/lower/capitalize) covers ASCII, Latin-1,
 * Greek and Cyrillic letters, trim/strip ASCII whitespace; lengths, indexing
 * and slicing of strings count code points.
 */
#ifndef GQ_JINJA_H
#define GQ_JINJA_H

#include "gq/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gq_jinja gq_jinja;

/* Parse a template of len bytes; `name` (e.g. "chat_template") prefixes
 * error positions. */
int gq_jinja_parse(gq_jinja **out, const char *src, size_t len, const char *name);
void gq_jinja_free(gq_jinja *t);

/* Render with the variables of a JSON object (vars_json, e.g.
 * {"messages": [...], "bos_token": "<s>", "add_generation_prompt": true}).
 * JSON numbers must be integers. *out is newly allocated, NUL-terminated. */
int gq_jinja_render(const gq_jinja *t, const char *vars_json, char **out, size_t *out_len);

/* One conversation rendered as apply_chat_template(messages,
 * add_generation_prompt, bos_token=bos, eos_token=eos) would: messages are
 * {"role": roles[i], "content": contents[i]}, i < n. */
int gq_jinja_render_chat(const gq_jinja *t, const char *const *roles, const char *const *contents, int n,
                         const char *bos, const char *eos, int add_generation_prompt, char **out, size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif /* GQ_JINJA_H */
