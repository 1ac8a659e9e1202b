#!/usr/bin/env python3
"""bench_tokenizer_hf.py -- the Hugging Face `tokenizers` side of bench/bench_tokenizer.c.

  python3 bench/bench_tokenizer_hf.py [--model DIR] [--text FILE] [--runs N] [--special]

Encodes the text N times with Tokenizer.encode (and encode_batch_fast) on ONE thread (RAYON_NUM_THREADS=1,
TOKENIZERS_PARALLELISM=false, set before the import) and prints the median time, MB/s
and tokens/s in the same format as the C benchmark. The Llama-2 tokenizer.json of
tests/data has 3 merges HF refuses to load (see tests/data/tok/README.md); they are
rewritten as pairs first, as tests/ref/gen_tokenizer.py does.
"""
import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def load(model):
    path = os.path.join(model, "tokenizer.json") if os.path.isdir(model) else model
    try:
        return Tokenizer.from_file(path)
    except Exception:
        d = json.load(open(path, encoding="utf-8"))
        v = d["model"]["vocab"]
        merges = []
        for m in d["model"]["merges"]:
            if isinstance(m, list) or m.count(" ") == 1:
                merges.append(m if isinstance(m, list) else m.split(" "))
                continue
            c = [(m[:i], m[i + 1:]) for i, ch in enumerate(m)
                 if ch == " " and m[:i] in v and m[i + 1:] in v and m[:i] + m[i + 1:] in v]
            merges.append(list(c[0]))
        d["model"]["merges"] = merges
        return Tokenizer.from_str(json.dumps(d, ensure_ascii=False))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tests/data/pycoder-5m")
    ap.add_argument("--text", default="tests/data/text/python-stdlib-eval.txt")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--special", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    tok = load(a.model)
    raw = open(a.text, "rb").read()
    text = raw.decode("utf-8", "replace")
    t_load = time.perf_counter() - t0
    # Tokenizer.encode (ids + offsets, the usual call) and encode_batch_fast
    # (ids without offsets) on a batch of one text: one thread either way
    for name, fn in (("hf", lambda: tok.encode(text, add_special_tokens=a.special).ids),
                     ("hf-fast", lambda: tok.encode_batch_fast([text], add_special_tokens=a.special)[0].ids)):
        times, n = [], 0
        for _ in range(max(1, a.runs)):
            t0 = time.perf_counter()
            n = len(fn())
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print("%-7s %-28s %8d bytes %7d tokens  median %.4f s (min %.4f)  %6.2f MB/s  %6.2f Mtok/s  runs %d"
              "  load %.3f s (tokenizers %s)" % (name, a.model, len(raw), n, med, min(times), len(raw) / med / 1e6,
                                                 n / med / 1e6, len(times), t_load, tokenizers.__version__))

if __name__ == "__main__":
    main()
