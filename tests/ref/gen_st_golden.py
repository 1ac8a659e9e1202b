#!/usr/bin/env python3
"""Write tests/data/st_golden/hf_small.safetensors with the reference writer
(huggingface `safetensors.numpy.save_file`). tests/test_st_write.c builds the
same tensors with gq_st_write_file and compares the two files byte for byte.

The values are exactly representable in their dtype, and the formulas are
repeated in test_st_write.c (test_golden). Every dtype size appears once
(F64, F32, F16, U8), so HF's order (dtype, then name) and gq's (dtype size,
then name) agree. Run from the repository root:
    python3 tests/ref/gen_st_golden.py
"""
import numpy as np
from safetensors.numpy import save_file

t = {
    # F32 [2, 3]: i * 0.5 - 1
    "model.b.weight": (np.arange(6, dtype=np.float32) * 0.5 - 1).reshape(2, 3),
    # F32 [2, 3]: i - 2
    "model.a.weight": (np.arange(6, dtype=np.float32) - 2).reshape(2, 3),
    # F16 [5] (odd count): i * 0.25
    "model.norm.weight": np.arange(5, dtype=np.float16) * np.float16(0.25),
    # F64 [] scalar
    "scale": np.array(1.5, dtype=np.float64),
    # F32 [0, 4] (no elements)
    "empty": np.zeros((0, 4), dtype=np.float32),
    # U8 [3]: 7 * i + 1
    "bytes": (np.arange(3, dtype=np.uint8) * 7 + 1).astype(np.uint8),
}
save_file(t, "tests/data/st_golden/hf_small.safetensors", metadata={"format": "pt"})
print("wrote tests/data/st_golden/hf_small.safetensors")
