#!/usr/bin/env python3
"""Golden renderings for gq's Jinja subset interpreter (tests/test_jinja.c).

Renders each template of TEMPLATES with each context of its cases through
transformers' own chat-template renderer (render_jinja_template: a jinja2
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the
loopcontrols extension, raise_exception and a json.dumps tojson filter),
so the goldens are exactly what apply_chat_template(tokenize=False) gives.
Feature templates (small, written for the test) are rendered with the same
environment. A case whose rendering raises records the error message
instead ("error").

The chat templates are the chat_template strings of the tokenizer_config.json
of the named Hugging Face models, copied as facts.

usage: python3 tests/ref/gen_jinja.py tests/data/gen/jinja.json
"""
import json
import sys

import jinja2
import transformers
from transformers.utils.chat_template_utils import _compile_jinja_template

# ---- the chat templates of real models (tokenizer_config.json "chat_template")
LLAMA2_CHAT = (  # meta-llama/Llama-2-7b-chat-hf
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
CODELLAMA_INSTRUCT = (  # codellama/CodeLlama-7b-Instruct-hf
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3_INSTRUCT = (  # meta-llama/Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_INSTRUCT = (  # mistralai/Mistral-7B-Instruct-v0.2
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
QWEN_CHATML = (  # Qwen/Qwen1.5-7B-Chat (ChatML with a default system message)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML = (  # plain ChatML (e.g. teknium/OpenHermes-2.5-Mistral-7B)
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ZEPHYR = (  # HuggingFaceH4/zephyr-7b-beta (relies on trim_blocks / lstrip_blocks)
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

Q = "Write a function that returns the sum of a list."
SYS = "You are a careful Python programmer."
CHAT_CASES = [
    {"name": "one question", "messages": [{"role": "user", "content": Q}], "add_generation_prompt": True},
    {"name": "one question, no generation prompt", "messages": [{"role": "user", "content": Q}],
     "add_generation_prompt": False},
    {"name": "system + dialogue", "add_generation_prompt": True, "messages": [
        {"role": "system", "content": SYS},
        {"role": "user", "content": "  What is 2 + 2?\n"},
        {"role": "assistant", "content": " 4 \n"},
        {"role": "user", "content": "And \"3 * 3\"? Use 'print'. ü → ∑"}]},
    {"name": "two user turns in a row", "add_generation_prompt": True, "messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
    {"name": "multi-line question", "add_generation_prompt": True, "messages": [
        {"role": "user", "content": "def f(x):\n    \"\"\"Double x.\"\"\"\n\tpass\n\n"}]},
]
CHAT_TEMPLATES = [
    ("llama-2-chat", LLAMA2_CHAT, "<s>", "</s>"),
    ("codellama-instruct", CODELLAMA_INSTRUCT, "<s>", "</s>"),
    ("llama-3-instruct", LLAMA3_INSTRUCT, "<|begin_of_text|>", "<|eot_id|>"),
    ("mistral-instruct", MISTRAL_INSTRUCT, "<s>", "</s>"),
    ("qwen-chatml", QWEN_CHATML, "", "<|im_end|>"),
    ("chatml", CHATML, "", "<|im_end|>"),
    ("zephyr", ZEPHYR, "<s>", "</s>"),
]

# ---- feature templates: one construct each, contexts given explicitly
MSGS = [{"role": "system", "content": " sys "}, {"role": "user", "content": "Hi 'there'"},
        {"role": "assistant", "content": "Hello\n\"you\"\t\\ é"}]
FEATURES = [
    ("literals", "{{ 'a' ~ \"b\" }}|{{ 42 }}|{{ -7 }}|{{ true }}|{{ False }}|{{ none }}|{{ 'x' 'y' }}|{{ 'it\\'s\\n' }}", {}),
    ("arithmetic", "{{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 + 3 * 4 }} {{ (2 + 3) * 4 }} {{ 10 - 4 - 3 }} {{ 7 // 2 }} {{ -7 // 2 }}", {}),
    ("concat tilde", "{{ 1 ~ 2 }}{{ 'n=' ~ n ~ '.' }}{{ undefined_var ~ 'u' }}{{ none ~ true }}", {"n": 5}),
    ("string plus", "{{ 'a' + 'b' + s }}", {"s": "c"}),
    ("compare", "{{ 1 == 1 }} {{ 1 != 1 }} {{ 'a' == 'a' }} {{ 'a' == 1 }} {{ 1 == true }} {{ 0 == false }} {{ none == none }} {{ 2 < 3 }} {{ 3 <= 3 }} {{ 'b' > 'a' }} {{ 4 >= 5 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}", {}),
    ("and or not", "{{ true and 'x' }}|{{ false and 'x' }}|{{ '' or 'y' }}|{{ 'z' or 'y' }}|{{ not '' }}|{{ not 1 }}|{{ not none and 1 }}|{{ 0 or none }}", {}),
    ("in", "{{ 'ell' in 'hello' }} {{ 'x' in 'hello' }} {{ 2 in [1, 2] }} {{ 'role' in m }} {{ 'zz' in m }} {{ 3 not in [1, 2] }} {{ 'a' not in 'abc' }}", {"m": {"role": "user"}}),
    ("subscript attr", "{{ m['role'] }}/{{ m.role }}/{{ l[0] }}{{ l[-1] }}/{{ l[1:] }}/{{ l[:2] }}/{{ l[::-1] }}/{{ s[1:3] }}/{{ s[-2:] }}/{{ m.missing is defined }}/{{ l.0 }}", {"m": {"role": "user"}, "l": [1, 2, 3], "s": "héllo"}),
    ("filters", "[{{ s | trim }}]{{ s | length }}{{ l | length }}{{ m | length }}{{ s | upper }}{{ s|lower }}{{ s | trim | upper | length }}{{ n | string | length }}{{ l | first }}{{ l | last }}{{ l | join('-') }}{{ u | default('dflt') }}{{ s | trim | capitalize }}{{ l | count }}", {"s": "  MiXed Case ", "l": [3, 4, 5], "m": {"a": 1, "b": 2}, "n": 12345}),
    ("tojson", "{{ s | tojson }} {{ m | tojson }} {{ l | tojson }} {{ 5 | tojson }} {{ true | tojson }} {{ none | tojson }} {{ m | tojson(indent=2) }}", {"s": "q\"uo\\te\n\ttab é \u0001 </s>", "m": {"k": "v", "n": [1, True, None]}, "l": ["a", 2]}),
    ("tests", "{{ x is defined }} {{ y is defined }} {{ y is not defined }} {{ z is none }} {{ x is none }} {{ x is not none }} {{ x is string }} {{ n is number }} {{ n is integer }} {{ m is mapping }} {{ l is iterable }} {{ n is even }} {{ n is odd }} {{ b is boolean }} {{ not y is defined }} {{ n is divisibleby 3 }} {{ x is sameas x }}", {"x": "s", "z": None, "n": 6, "m": {}, "l": [], "b": False}),
    ("loop vars", "{% for m in messages %}{{ loop.index0 }}{{ loop.index }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.length }}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}:{{ m.role }};{% endfor %}", {"messages": MSGS}),
    ("nested loops", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }}-{% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("for else, for if, break, continue", "{% for x in [] %}X{% else %}empty{% endfor %}|{% for x in [1, 2, 3, 4, 5] if x % 2 == 1 %}{{ x }}{{ loop.length }}{% endfor %}|{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("for over dict items", "{% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}{% for k in m %}{{ k }}{% endfor %}{{ m.get('a') }}{{ m.get('zz', 'd') }}{{ m.get('zz') }}", {"m": {"a": 1, "b": "two"}}),
    ("if elif else", "{% for n in [0, 1, 2, 3] %}{% if n == 0 %}zero{% elif n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %} {% endfor %}", {}),
    ("set scoping", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = x + 10 %}{{ x }} {% endfor %}{{ x }}{% if true %}{% set x = 5 %}{% endif %}{{ x }}", {}),
    ("namespace", "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.found }} {{ ns.n }}", {"messages": MSGS}),
    ("conditional expression", "{{ 'a' if x else 'b' }}{{ 'c' if not x else 'd' }}{{ 'e' if y }}|{{ (1 if x else 2) + 3 }}", {"x": 1}),
    ("string methods", "[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}][{{ s.upper() }}][{{ s.lower() }}]{{ s.strip().startswith('Ab') }}{{ s.strip().endswith('z') }}{{ 'a,b,c'.split(',') }}{{ 'a b  c'.split() }}{{ 'aXbX'.replace('X', '-') }}[{{ 'xxhixx'.strip('x') }}]", {"s": "  AbC z\n"}),
    ("whitespace control", "a  {%- if true -%}  b  {%- endif -%}  c\n  {{- ' d ' -}}  \n e {# comment #} f {#- c2 -#} g", {}),
    ("trim and lstrip blocks", "<ul>\n    {% for x in l %}\n    <li>{{ x }}</li>\n    {% endfor %}\n</ul>\n  {# comment line #}\nend  {%+ if true %}plus{% endif %}\n", {"l": ["a", "b"]}),
    ("output of containers", "{{ l }} {{ m }} {{ e }} {{ [] }} {{ {} }} {{ [1, 'a', none, true] }} {{ {'k': 'it\\'s'} }}", {"l": ["x", 1], "m": {"a": "b"}, "e": "it's \"q\""}),
    ("list and dict literals", "{% set d = {'a': 1, 'b': [2, 3]} %}{{ d.b[1] }}{{ d['a'] }}{% for x in [1, 2,] %}{{ x }}{% endfor %}{{ (1, 2)[0] }}{{ range(3) | list | length }}{% for i in range(1, 7, 2) %}{{ i }}{% endfor %}", {}),
    ("undefined", "[{{ nope }}][{{ nope | trim }}][{{ nope | length }}]{% for x in nope %}X{% endfor %}{% if nope %}T{% else %}F{% endif %}", {}),
    ("raise_exception", "{% if messages | length > 1 %}{{ raise_exception('Too many: ' ~ messages | length) }}{% endif %}ok", {"messages": MSGS}),
    ("generation tag", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% endif %}{% endfor %}", {"messages": MSGS}),
    ("unicode", "{{ s | length }} {{ s[0] }}{{ s[-1] }} {{ s | upper }} {{ s | tojson }}", {"s": "é∑😀x"}),
    ("trailing newline is dropped", "line\n", {}),
    ("crlf newlines", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc", {}),
]


def render(tpl, ctx):
    try:
        return {"output": _compile_jinja_template(tpl).render(**ctx)}
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}


def main():
    out = sys.argv[1]
    doc = {
        "generator": "tests/ref/gen_jinja.py",
        "environment": "transformers chat-template jinja2 environment (trim_blocks, lstrip_blocks)",
        "versions": {"jinja2": jinja2.__version__, "transformers": transformers.__version__},
        "templates": [],
    }
    for name, tpl, bos, eos in CHAT_TEMPLATES:
        cases = []
        for c in CHAT_CASES:
            ctx = {"messages": c["messages"], "add_generation_prompt": c["add_generation_prompt"],
                   "bos_token": bos, "eos_token": eos}
            cases.append({"name": c["name"], "context": ctx, **render(tpl, ctx)})
        doc["templates"].append({"name": name, "kind": "chat", "template": tpl, "cases": cases})
    for name, tpl, ctx in FEATURES:
        doc["templates"].append({"name": name, "kind": "feature", "template": tpl,
                                 "cases": [{"name": name, "context": ctx, **render(tpl, ctx)}]})
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for t in doc["templates"]:
        for c in t["cases"]:
            print(f"{t['name']:28s} {c['name'][:30]:30s} {json.dumps(c.get('output', c.get('error')), ensure_ascii=False)[:90]}")


if __name__ == "__main__":
    main()
