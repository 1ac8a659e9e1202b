#!/usr/bin/env python3
"""Print the reference values that tests/test_st.c checks in
tests/data/pycoder-5m/model.safetensors (read with the HF `safetensors`
package). Run from the repository root:  python3 tests/ref/st_pycoder_probe.py
The numbers are pasted into test_st.c (test_pycoder)."""
import numpy as np
from safetensors.numpy import load_file

d = load_file("tests/data/pycoder-5m/model.safetensors")
print("tensors", len(d))
e = d["model.embed_tokens.weight"]
print("embed", e.dtype, e.shape)
for r, c in [(0, 0), (1234, 56), (8191, 255)]:
    print(f"embed[{r},{c}] = {float(e[r, c])!r} bits 0x{int(e[r, c].view(np.uint16)):04x}")
for name in ["model.norm.weight", "model.layers.3.mlp.down_proj.weight"]:
    t = d[name].astype(np.float64)
    print(f"{name} {d[name].shape} sum {t.sum()!r} sumsq {(t * t).sum()!r}")
