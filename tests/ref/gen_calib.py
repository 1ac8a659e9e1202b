#!/usr/bin/env python3
"""Golden for tests/test_calib.c: the CONCAT windows of calib/python-sitepackages.jsonl.

Run from the repository root:  python3 tests/ref/gen_calib.py
Writes tests/data/calib/sitepackages-pycoder-2048.json: for the pycoder tokenizer
(tests/data/pycoder-5m/tokenizer.json, HF tokenizers), the stream
  for each record in file order: [<s>] + encode(text, add_special_tokens=False) + [</s>]
cut into consecutive 2048-token windows; the first 128 windows are described by their
FNV-1a-64 hashes (int32 little-endian ids) and the first 16 ids of window 0.
"""
import json
import struct

import tokenizers
from tokenizers import Tokenizer

SRC = "calib/python-sitepackages.jsonl"
TOK = "tests/data/pycoder-5m/tokenizer.json"
OUT = "tests/data/calib/sitepackages-pycoder-2048.json"
SEQLEN, NSAMPLES = 2048, 128


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for b in struct.pack("<%di" % len(ids), *ids):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def main():
    tok = Tokenizer.from_file(TOK)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    stream, records = [], 0
    with open(SRC, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            text = json.loads(line)["text"]
            stream += [bos] + tok.encode(text, add_special_tokens=False).ids + [eos]
            records += 1
    windows = [stream[i * SEQLEN:(i + 1) * SEQLEN] for i in range(NSAMPLES)]
    assert len(windows[-1]) == SEQLEN, "not enough data"
    out = {"source": SRC, "tokenizer": TOK, "tokenizers_version": tokenizers.__version__, "seqlen": SEQLEN,
           "nsamples": NSAMPLES, "records": records, "total_tokens": len(stream),
           "first_ids": windows[0][:16], "window_fnv1a64": [fnv1a64(w) for w in windows]}
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(records, "records,", len(stream), "tokens,", len(stream) // SEQLEN, "windows")


if __name__ == "__main__":
    main()
