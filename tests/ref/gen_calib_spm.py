#!/usr/bin/env python3
"""gen_calib_spm.py -- goldens for tests/test_calib_spm.c: greedy answers of a
tiny random Llama that uses the Llama-2 SentencePiece tokenizer, with the
answer text decoded as the continuation of its prompt.

Why: a Llama-2 tokenizer's decoder strips the leading space of a text
(Replace "▁" -> " ", ByteFallback, Fuse, Strip start 1). An answer decoded on
its own therefore loses its first space ("▁▁▁▁return" -> "   return"); decoded
as the continuation of its prompt, decode(prompt + answer) minus
decode(prompt), it keeps it. gq calib must write the latter.

The model: LlamaForCausalLM, vocab 32000 (tests/data/tokenizers/llama2), hidden 32,
2 layers, 4 heads / 2 kv heads (head_dim 8), ffn 64, tied embeddings, bf16
weights (model.safetensors about 2 MB). Weights are random: matrices
N(0, 0.15^2), norms 1 + N(0, 0.2^2) (as tests/ref/gen_forward.py), from a torch
generator seeded with SEED. No bias is added to the weights: 16409 of the 32000
Llama-2 pieces start with "▁", so a random model begins about half of its
answers with a "▁" piece. The script tries seeds 0, 1, 2, ... and keeps the
first whose greedy answers (N_NEW tokens each, float32 on the CPU) meet all of:
  - at least MIN_SPACE answers begin with a "▁" piece (decoded alone they lose
    their first space, so they exercise the bug) and at least MIN_OTHER do not;
  - all answer texts differ and none is only whitespace (gq calib's
    "duplicate" and "empty" rules would drop them; the test turns the
    "short" and "degenerate" rules off);
  - every greedy step's margin (largest minus second largest logit) is at
    least MIN_MARGIN, far above the float32 rounding differences between
    transformers and gq (1.2e-6 at most on the first steps, measured by
    tests/test_calib_spm.c), so gq must pick the same tokens.
The kept weights are saved in bf16 with save_pretrained, reloaded in float32
(eager attention) and generated again; the goldens are of the reloaded model
(asserted to give the same tokens as the search).

Decoding: tokenizers 0.23 cannot load the shipped Llama-2 tokenizer.json as is
(3 merges hold a space); gen_tokenizer.llama2_as_pairs rewrites them as gq does.
HF also fails to skip special tokens marked normalized=true (Llama-2's <s>,
</s>): "skip special" decoding here is decode(ids without the special ids).
The continuation is decode(prompt + answer)[len(decode(prompt)):] when
decode(prompt) is a prefix of decode(prompt + answer); otherwise (a character
whose bytes straddle the boundary) it is decode(prompt + answer) after the
longest common prefix of the two texts -- gq_tok_decode_continuation's rule.

Writes OUT/model/ (config.json, model.safetensors from save_pretrained, plus
the Llama-2 tokenizer.json, tokenizer_config.json, special_tokens_map.json
copied unchanged) and OUT/golden.json:
  {"seed", "max_new_tokens", "min_margin", "versions", "config",
   "cases": [{"prompt", "prompt_ids" (<s> first), "new_ids" (eos excluded),
              "finish" ("eos"|"length"), "first_piece", "answer" (the continuation),
              "answer_alone" (decode(new_ids) on its own), "prefix_match",
              "min_margin", "margins"}]}

usage (from the repository root):
  python3 tests/ref/gen_calib_spm.py --out tests/data/gen-spm    (needs torch, transformers)
  python3 tests/ref/gen_calib_spm.py --selftest                  (tokenizers only)
tests/data/gen-spm/README.md says which files of OUT are committed.
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tokenizer import LLAMA2, llama2_as_pairs  # noqa: E402

LLAMA2_DIR = os.path.dirname(LLAMA2)
PROMPTS = [
    "def fibonacci(n):\n",  # ends with <0x0A>: an indented answer starts with "▁▁▁"
    "def fibonacci(n):",
    "import os\nimport sys\n\n\nclass Config:\n    def __init__(self):\n        self.path =",
    "Write a Python function that returns the largest element of a list.",
    "# Sort a list of numbers\nnumbers = [5, 3, 8, 1]\nnumbers.sort()\nprint(numbers",
    "Say hello to the llama 🦙",  # ends with four byte-fallback tokens
    "Le café coûte 3 €, ",  # accents; ends with a lone "▁" piece
    "for i in range(10):\n    if i % 2 == 0:\n        continue\n    print(i)\n",
]
N_NEW = 20
MIN_MARGIN = 1e-3
MIN_SPACE, MIN_OTHER = 3, 2
MAX_SEEDS = 200
WS = " \t\n\r\f\v"  # gq calib's "empty" rule: an answer of only these characters


def continuation(tok, special, prompt_ids, new_ids):
    """(text, prefix_match): decode(prompt + new) minus decode(prompt), special ids left out."""
    keep = [i for i in prompt_ids if i not in special]
    p = tok.decode(keep, skip_special_tokens=False) if keep else ""
    both = keep + [i for i in new_ids if i not in special]
    f = tok.decode(both, skip_special_tokens=False) if both else ""
    if f.startswith(p):
        return f[len(p):], True
    n = 0
    while n < min(len(p), len(f)) and p[n] == f[n]:
        n += 1
    return f[n:], False


def decode_alone(tok, special, ids):
    keep = [i for i in ids if i not in special]
    return tok.decode(keep, skip_special_tokens=False) if keep else ""


def special_ids(tok):
    return {i for i, a in tok.get_added_tokens_decoder().items() if a.special}


def selftest():
    """The tokenizer side, without torch: prompt ids and hand-checked continuations."""
    tok, _ = llama2_as_pairs()
    sp = special_ids(tok)
    pid = tok.token_to_id
    for p in PROMPTS:
        ids = tok.encode(p).ids
        assert ids[0] == 1 and decode_alone(tok, sp, ids) == p, (p, ids)
        print(len(ids), [tok.id_to_token(i) for i in ids[-3:]], repr(p[-12:]))
    nl = tok.encode("def fibonacci(n):\n").ids
    ans = [pid(x) for x in ["▁▁▁", "▁return", "▁fib", "on", "acci", "(", "n", ")"]]
    assert continuation(tok, sp, nl, ans) == ("    return fibonacci(n)", True)
    assert decode_alone(tok, sp, ans) == "   return fibonacci(n)"
    llama = [pid(x) for x in ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]]
    pre = tok.encode("llama").ids
    # a character split between prompt and answer goes to the answer
    assert continuation(tok, sp, pre + llama[:2], llama[2:] + [pid("▁ok")]) == ("🦙 ok", False)
    # a byte run spanning the boundary that is invalid as a whole: one U+FFFD per byte token
    assert continuation(tok, sp, tok.encode("llama 🦙").ids, llama[:1]) == ("\ufffd" * 5, False)
    assert continuation(tok, sp, [1], [pid("▁def"), pid("▁f")]) == ("def f", True)
    print("selftest ok")


def randomize(model, gen):
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
            p.copy_(p.to(torch.bfloat16).float())  # the values the bf16 file will hold


def config():
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)


def greedy(model, ids):
    """(new ids, finish, margins) of transformers' greedy generate."""
    import torch
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        g = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=N_NEW,
                           output_logits=True, return_dict_in_generate=True, pad_token_id=2, eos_token_id=2)
    new = g.sequences[0, len(ids):].tolist()
    margins = []
    for lg in g.logits:
        top = torch.topk(lg[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    finish = "length"
    if new and new[-1] == 2:
        new, finish = new[:-1], "eos"
    return new, finish, margins


def run_cases(model, tok, sp):
    cases = []
    for p in PROMPTS:
        ids = tok.encode(p).ids
        new, finish, margins = greedy(model, ids)
        text, match = continuation(tok, sp, ids, new)
        cases.append({"prompt": p, "prompt_ids": ids, "new_ids": new, "finish": finish,
                      "first_piece": tok.id_to_token(new[0]) if new else None, "answer": text,
                      "answer_alone": decode_alone(tok, sp, new), "prefix_match": match,
                      "min_margin": min(margins), "margins": margins})
    return cases


def problems(cases):
    out = []
    space = sum(1 for c in cases if c["first_piece"] and c["first_piece"].startswith("▁"))
    if space < MIN_SPACE or len(cases) - space < MIN_OTHER:
        out.append(f"{space} of {len(cases)} answers begin with a '▁' piece")
    texts = [c["answer"] for c in cases]
    if len(set(texts)) != len(texts):
        out.append("two answers are the same text")
    if any(not t.strip(WS) for t in texts):
        out.append("an answer is only whitespace")
    m = min(c["min_margin"] for c in cases)
    if m < MIN_MARGIN:
        out.append(f"a greedy margin of {m:.3g} < {MIN_MARGIN}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        selftest()
        return
    if not a.out:
        sys.exit("--out DIR or --selftest")
    if not os.path.exists(LLAMA2):
        sys.exit("run from the repository root")
    import safetensors
    import tokenizers
    import torch
    import transformers
    from transformers import LlamaForCausalLM
    torch.set_num_threads(4)
    tok, _ = llama2_as_pairs()
    sp = special_ids(tok)
    cfg = config()
    chosen = None
    for seed in range(MAX_SEEDS):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
        randomize(model, torch.Generator().manual_seed(seed))
        cases = run_cases(model, tok, sp)
        why = problems(cases)
        print(f"seed {seed}: " + ("ok" if not why else "; ".join(why)), flush=True)
        if not why:
            chosen = (seed, model, cases)
            break
    if chosen is None:
        sys.exit(f"no seed below {MAX_SEEDS} meets the conditions")
    seed, model, cases = chosen
    d = os.path.join(a.out, "model")
    shutil.rmtree(d, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    if os.path.exists(os.path.join(d, "generation_config.json")):
        os.remove(os.path.join(d, "generation_config.json"))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(LLAMA2_DIR, f), os.path.join(d, f))
    ref = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    golden = run_cases(ref, tok, sp)
    assert [c["new_ids"] for c in golden] == [c["new_ids"] for c in cases], "reloaded model differs"
    assert not problems(golden), problems(golden)
    for c in golden:
        print(f"{len(c['prompt_ids'])} + {len(c['new_ids'])} ({c['finish']}, margin {c['min_margin']:.3g}, "
              f"match {c['prefix_match']}): {c['answer'][:50]!r} alone {c['answer_alone'][:12]!r}")
    doc = {
        "generator": "tests/ref/gen_calib_spm.py",
        "seed": seed,
        "max_new_tokens": N_NEW,
        "min_margin": MIN_MARGIN,
        "dtype": "bfloat16 weights, float32 compute (CPU, eager attention)",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "safetensors": safetensors.__version__},
        "config": {k: cfg.to_dict()[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                  "num_hidden_layers", "num_attention_heads",
                                                  "num_key_value_heads", "tie_word_embeddings")},
        "cases": golden,
    }
    with open(os.path.join(a.out, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("seed", seed, "written to", a.out)


if __name__ == "__main__":
    main()
