#!/usr/bin/env python3
"""Prompt goldens for gq calib's templates (tests/test_calib_gen.c): the
text and ids transformers gives for a question with the pycoder-5m tokenizer
  raw:      tokenizer(q).input_ids                     (<s> + q)
  template: tokenizer("Q: " + q + "\\nA:").input_ids
  chat:     apply_chat_template([{"role": "user", "content": q}],
            add_generation_prompt=True, tokenize=True / False)
for the Llama-2-chat and Zephyr chat templates (copied as facts, the same
strings as tests/ref/gen_jinja.py).

usage: python3 tests/ref/gen_prompts.py tests/data/pycoder-5m tests/data/gen/prompts-pycoder.json
"""
import json
import sys

import tokenizers
import transformers
from transformers import AutoTokenizer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from gen_jinja import LLAMA2_CHAT, ZEPHYR  # noqa: E402

QUESTIONS = [
    "Write a function that returns the sum of a list.",
    "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n",
    "  Explain recursion in one sentence. ",
]


def ids_of(x):
    # apply_chat_template(tokenize=True) returns a list or a BatchEncoding depending on the version
    return list(x["input_ids"]) if hasattr(x, "keys") else list(x)


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(model_dir)
    cases = []
    for q in QUESTIONS:
        c = {"question": q, "raw_ids": tok(q).input_ids, "template_ids": tok("Q: " + q + "\nA:").input_ids, "chat": {}}
        for name, tpl in (("llama-2-chat", LLAMA2_CHAT), ("zephyr", ZEPHYR)):
            msgs = [{"role": "user", "content": q}]
            text = tok.apply_chat_template(msgs, chat_template=tpl, add_generation_prompt=True, tokenize=False)
            ids = ids_of(tok.apply_chat_template(msgs, chat_template=tpl, add_generation_prompt=True, tokenize=True))
            c["chat"][name] = {"text": text, "ids": ids}
        cases.append(c)
    doc = {
        "generator": "tests/ref/gen_prompts.py",
        "tokenizer": "pycoder-5m",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "templates": {"llama-2-chat": LLAMA2_CHAT, "zephyr": ZEPHYR},
        "string_template": "Q: {question}\\nA:",
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for c in cases:
        print(len(c["raw_ids"]), {k: v["ids"][:6] for k, v in c["chat"].items()})


if __name__ == "__main__":
    main()
