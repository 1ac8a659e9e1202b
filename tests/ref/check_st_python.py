#!/usr/bin/env python3
"""Check that files written by gq's safetensors writer load in the reference
tooling: the HF `safetensors` package (numpy and torch front ends) and
`transformers` (from_pretrained of a sharded checkpoint).

    GQ_ST_EXPORT=/tmp/gq-st-export ./build/tests/test_st_write
    python3 tests/ref/check_st_python.py /tmp/gq-st-export

test_st_write writes, under that directory:
  roundtrip.safetensors   every dtype, 0-d and 0-element tensors, metadata
  sharded/                4 shards + model.safetensors.index.json
  pycoder-sharded/        tests/data/pycoder-5m re-written in ~3 MiB shards
Exits non-zero (with a message) on the first mismatch.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as np_load
from safetensors.torch import load_file as torch_load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check(cond, msg):
    if not cond:
        sys.exit("FAIL: " + msg)
    print("ok:", msg)


def check_roundtrip(path):
    # numpy has no bfloat16: read the others through safe_open(numpy), all through torch.
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        keys = list(f.keys())
        arrs = {k: f.get_tensor(k) for k in keys if k != "bf16"}
    check(meta.get("format") == "pt" and meta.get("gq.note") == 'résumé "quoted"' and meta.get("k") == "v",
          f"roundtrip metadata {meta}")
    check(len(keys) == 13, f"roundtrip has 13 tensors ({len(keys)})")
    f32 = arrs["f32"]
    check(f32.dtype == np.float32 and f32.shape == (3, 7)
          and np.array_equal(f32.ravel(), np.arange(21, dtype=np.float32) * 0.75 - 3), "f32 [3, 7] values")
    check(np.array_equal(arrs["f16.odd"], (np.arange(5) - 1.5).astype(np.float16)), "f16.odd values")
    check(np.array_equal(arrs["z.f16.odd"], (np.arange(3) * 8.0).astype(np.float16).reshape(1, 3)), "z.f16.odd")
    check(arrs["f64.scalar"].shape == () and arrs["f64.scalar"] == -2.25, "0-d F64 scalar -2.25")
    check(arrs["empty.f32"].shape == (0, 3) and arrs["empty.u8"].shape == (0,), "0-element tensors")
    check(arrs["bool"].dtype == np.bool_ and list(arrs["bool"]) == [False, True, False], "BOOL")
    for name, dt, n, seed in [("i32.after", np.int32, 3, 1), ("i64", np.int64, 2, 5), ("i16", np.int16, 3, 6),
                              ("i8", np.int8, 7, 7), ("u8", np.uint8, 5, 8)]:
        want = np.array([(i * 31 + seed * 17 + 7) & 0xFF for i in range(n * np.dtype(dt).itemsize)],
                        dtype=np.uint8).view(dt)
        check(arrs[name].dtype == dt and np.array_equal(arrs[name].ravel(), want), f"{name} bytes")
    t = torch_load(path)
    check(t["bf16"].dtype == torch.bfloat16 and t["bf16"].shape == (1, 3, 1)
          and t["bf16"].flatten().tolist() == [0.5, 1.5, 2.5], "bf16 via torch")


def check_sharded(d):
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    shards = sorted(set(idx["weight_map"].values()))
    check(len(shards) == 4 and idx["metadata"]["total_size"] == 3654, "index: 4 shards, total_size 3654")
    n = 0
    for s in shards:
        tensors = torch_load(os.path.join(d, s))
        n += len(tensors)
        for k in tensors:
            check(idx["weight_map"][k] == s, f"{k} in {s}")
        if not any(v.dtype == torch.bfloat16 for v in tensors.values()):
            np_load(os.path.join(d, s))  # numpy front end too
    check(n == 8, "8 tensors over the shards")
    big = np_load(os.path.join(d, idx["weight_map"]["big"]))["big"]
    want = np.array([(i * 31 + 103 * 17 + 7) & 0xFF for i in range(2500)], dtype=np.uint8)  # seed k + 100, k = 3
    check(np.array_equal(big, want), "big U8 [2500] bytes")


def check_transformers(d):
    from transformers import AutoModelForCausalLM

    src = os.path.join(ROOT, "tests", "data", "pycoder-5m")
    for f in os.listdir(src):
        if not f.endswith(".safetensors"):
            shutil.copy(os.path.join(src, f), d)
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    got = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    sr, sg = ref.state_dict(), got.state_dict()
    check(sr.keys() == sg.keys() and all(torch.equal(sr[k], sg[k]) for k in sr),
          f"transformers loads the {len([f for f in os.listdir(d) if f.endswith('.safetensors')])}-shard copy "
          "with identical weights")
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    with torch.no_grad():
        check(torch.equal(ref(ids).logits, got(ids).logits), "identical logits")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    check_roundtrip(os.path.join(d, "roundtrip.safetensors"))
    check_sharded(os.path.join(d, "sharded"))
    check_transformers(os.path.join(d, "pycoder-sharded"))
    print("all checks passed")


if __name__ == "__main__":
    main()
