#!/usr/bin/env python3
"""Greedy-decoding goldens for gq's generation engine (tests/test_generate.c).

Runs Hugging Face transformers' greedy decoding (model.generate with
do_sample=False) in float32 on the CPU for a few Python prompts and writes the
prompt ids (tokenizer(prompt) with <s>, as the tokenizer's post-processor
adds it) and the new token ids. For each step it also records the margin
between the largest and second-largest logit: the C test can only be expected
to reproduce greedy choices whose margin exceeds the fp32 rounding differences
between two implementations (see test_generate.c).

usage: python3 tests/ref/gen_generate.py MODEL_DIR OUT.json [N_NEW]
  tests/data/pycoder-5m                  -> tests/data/gen/greedy-pycoder-5m.json
  /work/shared/data/models/pycoder-30m   -> tests/data/gen/greedy-pycoder-30m.json
"""
import json
import sys

import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    # train_report.json "sample" prompt of pycoder-5m
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n",
    "# Sort a list of numbers\nnumbers = [5, 3, 8, 1]\n",
    "def is_prime(n: int) -> bool:\n",
]


def warper_cases():
    """Kept-token sets of transformers' Temperature/TopK/TopP warpers (in
    that order, as generate applies them) on small random logit vectors."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    g = torch.Generator().manual_seed(7)
    out = []
    for k, (temp, top_k, top_p) in enumerate([(1.0, 0, 0.9), (0.7, 0, 0.5), (1.3, 10, 0.95), (1.0, 5, 1.0),
                                              (0.5, 0, 0.99), (1.0, 1, 1.0), (2.0, 40, 0.3)]):
        logits = (torch.randn(1, 64, generator=g) * (1 + k)).float()
        x = TemperatureLogitsWarper(temp)(None, logits.clone())
        if top_k:
            x = TopKLogitsWarper(top_k)(None, x)
        if top_p < 1.0:
            x = TopPLogitsWarper(top_p)(None, x)
        kept = [i for i in range(64) if x[0, i] != -float("inf")]
        out.append({"temperature": temp, "top_k": top_k, "top_p": top_p, "logits": logits[0].tolist(), "kept": kept})
    return out


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    n_new = int(sys.argv[3]) if len(sys.argv) > 3 else 48
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    cases = []
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            g = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=n_new, output_scores=True, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=model.config.eos_token_id)
        new = g.sequences[0, ids.shape[1]:].tolist()
        margins = []
        for s in g.scores:
            top = torch.topk(s[0].float(), 2).values
            margins.append(float(top[0] - top[1]))
        # raw logits of the first generated position (after prefill) and of
        # the last one (after the KV-cache decode steps): the 8 largest
        top = []
        for k in (0, len(g.logits) - 1):
            v, i = torch.topk(g.logits[k][0].float(), 8)
            top.append({"step": k, "ids": i.tolist(), "logits": [float(x) for x in v]})
        cases.append({
            "prompt": p,
            "prompt_ids": ids[0].tolist(),
            "new_ids": new,
            "finish": "eos" if new and new[-1] == model.config.eos_token_id else "length",
            "min_margin": min(margins),
            "top_logits": top,
            "margins": margins,
            "text": tok.decode(new),
        })
        print(f"{len(ids[0])} prompt tokens -> {len(new)} new, min margin {min(margins):.4g}: {tok.decode(new)[:60]!r}")
    doc = {
        "generator": "tests/ref/gen_generate.py",
        "warpers": warper_cases(),
        "model": model_dir.rstrip("/").split("/")[-1],
        "dtype": "float32",
        "max_new_tokens": n_new,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
