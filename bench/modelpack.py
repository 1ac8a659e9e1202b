#!/usr/bin/env python3
"""Lossless packing of an fp16 safetensors checkpoint for the GPU machine.

The device tool carries at most 64 MiB; pycoder-30m is 61 MB. fp16 weights
compress only in their high bytes (sign, exponent, 2 mantissa bits), so each
safetensors file is stored as: header bytes verbatim, the high bytes of the
data section xz-compressed, the low bytes raw. Typically 85% of the size.

    python3 bench/modelpack.py pack   MODEL_DIR PACK_DIR
    python3 bench/modelpack.py unpack PACK_DIR MODEL_DIR   (verifies SHA-256)
"""
import hashlib, json, lzma, os, shutil, sys

import numpy as np


def pack(src, dst):
    os.makedirs(dst, exist_ok=True)
    manifest = {}
    for name in sorted(os.listdir(src)):
        p = os.path.join(src, name)
        b = open(p, "rb").read()
        manifest[name] = hashlib.sha256(b).hexdigest()
        if not name.endswith(".safetensors"):
            shutil.copy(p, os.path.join(dst, name))
            continue
        n = int.from_bytes(b[:8], "little")
        data = np.frombuffer(b[8 + n:], dtype=np.uint8)
        assert len(data) % 2 == 0
        open(os.path.join(dst, name + ".head"), "wb").write(b[:8 + n])
        open(os.path.join(dst, name + ".hi.xz"), "wb").write(lzma.compress(data[1::2].tobytes(), preset=9))
        open(os.path.join(dst, name + ".lo"), "wb").write(data[0::2].tobytes())
    json.dump(manifest, open(os.path.join(dst, "MANIFEST.json"), "w"), indent=1)


def unpack(src, dst):
    manifest = json.load(open(os.path.join(src, "MANIFEST.json")))
    os.makedirs(dst, exist_ok=True)
    for name, sha in manifest.items():
        if name.endswith(".safetensors"):
            head = open(os.path.join(src, name + ".head"), "rb").read()
            hi = np.frombuffer(lzma.decompress(open(os.path.join(src, name + ".hi.xz"), "rb").read()), np.uint8)
            lo = np.frombuffer(open(os.path.join(src, name + ".lo"), "rb").read(), np.uint8)
            data = np.empty(2 * len(lo), np.uint8)
            data[0::2] = lo
            data[1::2] = hi
            b = head + data.tobytes()
        else:
            b = open(os.path.join(src, name), "rb").read()
        if hashlib.sha256(b).hexdigest() != sha:
            sys.exit(f"unpack: {name}: SHA-256 mismatch")
        open(os.path.join(dst, name), "wb").write(b)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(sys.argv[2], sys.argv[3])
