#!/usr/bin/env python3
"""check_unpack.py -- an unpacker of gq's AutoGPTQ checkpoints that shares no code with gq.

It reads a `gq quantize` output directory with `safetensors` + numpy alone, unpacks every
quantized linear from its own reading of the AutoGPTQ v1/v2 layout (docs/formats.md):

    qweight int32 [K*bits/32, N]   codes, a little-endian bit stream down K per output column n
                                   (2/4/8 bits: 32/bits values per word, lowest bits first;
                                   3 bits: 32 values in 3 words, values crossing word borders)
    qzeros  int32 [G, N*bits/32]   zero points, the same stream along N; "gptq" (v1) stores
                                   zero - 1, "gptq_v2" the zero itself (checkpoint_format)
    scales  fp16  [G, N]
    g_idx   int32 [K]              group of each input row k

and dequantizes W[n][k] = scale[g_idx[k]][n] * (q[k][n] - zero[g_idx[k]][n]) in float32 (exact:
an fp16 scale times an integer of at most 9 bits fits a float32 mantissa).

    python3 tests/ref/check_unpack.py verify --orig MODEL OUT [OUT ...]       (numpy only)
    python3 tests/ref/check_unpack.py ppl --orig MODEL [--json F] OUT [OUT ...]  (torch + transformers)
    python3 tests/ref/check_unpack.py table --indep F.json --gq-dir DIR [--md]

verify (no torch): per output
  - config.json equals the original's apart from quantization_config, which equals
    quantize_config.json and the safetensors metadata; the shard index (if any) is consistent;
  - every linear of the family (FAMILIES) is quantized (qweight/qzeros/scales/g_idx, no .weight),
    with the shapes and dtypes of the format; every other tensor (embeddings, norms, lm_head,
    biases) is byte-equal to the original's, and nothing is missing or extra;
  - two unpackers (a generic 64-bit bit-window one and an explicit per-word one that spells out
    AutoGPTQ's 3-bit pattern) agree, and re-packing the codes gives the stored words back (no
    stray bits); zeros are in range (sym: exactly 2^(bits-1); v1 asym: 1..maxq, never the
    unstorable 0); g_idx is k // group_size, or (desc_act) a permutation of full groups;
  - RTN outputs: a numpy RTN of the original weights (IST-DASLab min-max quantizer in float32:
    scale = (xmax - xmin) / maxq, zero = rint(-xmin / scale), code = clamp(rint(w / scale) + zero))
    gives the stored fp16 scales, the zeros and the codes exactly, and its dequantization with
    the stored scales equals ours bit for bit;
  - GPTQ outputs: group 0's scales and zeros (the columns with g_idx == 0, which GPTQ quantizes
    first, before any error feedback reaches them) equal those of the original weights, and
    without act-order so do the codes of column 0;
  - outputs made with the same settings (gq_report.json, e.g. a sharded and an unsharded one)
    hold identical tensors.

ppl (torch + transformers, any device; fp32, eager attention): the ORIGINAL model is loaded
with transformers (the family's class, else AutoModelForCausalLM) in float32, each quantized
linear's weight replaced by the dequantized one and every other parameter by the output's
tensor; perplexity as `gq ppl` computes it (src/eval/ppl_text.c, src/eval/ppl.c): ids = <s> +
encode(text) (the BOS is prepended only when the tokenizer's post-processor does not add it),
cut into consecutive non-overlapping windows of --seqlen tokens (the tail is dropped, only the
first window starts with <s>), each window an independent sequence whose loss is the mean NLL
of its seqlen - 1 next-token predictions, ppl = exp(mean of the window losses). The fp16 model
itself is evaluated the same way as the control. --json writes every figure.

table: the markdown table of docs/unpack-check.md from the ppl JSON and the `gq ppl` outputs
($DIR/<name>.gqppl.txt, as bench/unpack_check.sh writes them).
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys
import time

import numpy as np
from safetensors import safe_open

TEXT = "tests/data/text/python-stdlib-eval.txt"

# Per model family: the transformers class (None: AutoModelForCausalLM), where the decoder layers
# are, and the linear modules of a layer that gq quantizes. Another family plugs in here.
FAMILIES = {
    "llama": {
        "class": "LlamaForCausalLM",
        "layers": "model.layers",
        "n_layers_key": "num_hidden_layers",
        "linears": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        # linears that read the same input (one Hessian): fused by vLLM & co, so with desc_act
        # they must share one g_idx (AutoGPTQ's do)
        "same_input": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")),
    },
    "mistral": {
        "class": "MistralForCausalLM",
        "layers": "model.layers",
        "n_layers_key": "num_hidden_layers",
        "linears": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        # linears that read the same input (one Hessian): fused by vLLM & co, so with desc_act
        # they must share one g_idx (AutoGPTQ's do)
        "same_input": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")),
    },
}

QSUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


class CheckError(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise CheckError(msg)


def family_of(cfg):
    mt = cfg.get("model_type")
    need(mt in FAMILIES, f"model_type {mt!r}: no family entry (known: {sorted(FAMILIES)})")
    return FAMILIES[mt]


# ---- safetensors directories ------------------------------------------------------------------

def read_dir(d):
    """{name: numpy array}, {name: file}, metadata of the first file, the index (or None)."""
    idx_path = os.path.join(d, "model.safetensors.index.json")
    index = None
    if os.path.exists(idx_path):
        index = json.load(open(idx_path))
        files = sorted(set(index["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors, where, meta = {}, {}, None
    for fn in files:
        with safe_open(os.path.join(d, fn), framework="numpy") as f:
            if meta is None:
                meta = f.metadata() or {}
            for k in f.keys():
                need(k not in tensors, f"{d}: tensor {k} in two files ({where.get(k)}, {fn})")
                tensors[k] = f.get_tensor(k)
                where[k] = fn
    if index is not None:
        wm = index["weight_map"]
        need(set(wm) == set(tensors), f"{d}: index names {len(wm)} tensors, the shards hold {len(tensors)}; "
             f"only in index {sorted(set(wm) - set(tensors))[:5]}, only in shards {sorted(set(tensors) - set(wm))[:5]}")
        for k, fn in wm.items():
            need(where[k] == fn, f"{d}: index puts {k} in {fn}, found in {where[k]}")
        total = sum(t.nbytes for t in tensors.values())
        ts = index.get("metadata", {}).get("total_size")
        need(ts == total, f"{d}: index total_size {ts}, the tensors hold {total} bytes")
    return tensors, where, meta, index


# ---- bit unpacking -------------------------------------------------------------------------------

def unpack_stream(words, n, bits):
    """words uint32 [..., W]: the little-endian bit stream of n values along the last axis
    (value i = bits [i*bits, (i+1)*bits)). Generic: a 64-bit window of two adjacent words."""
    need(words.shape[-1] * 32 == n * bits, f"{words.shape[-1]} words for {n} values of {bits} bits")
    w = words.astype(np.uint64)
    w = np.concatenate([w, np.zeros(w.shape[:-1] + (1,), np.uint64)], axis=-1)
    bit = np.arange(n, dtype=np.int64) * bits
    wi, off = bit // 32, (bit % 32).astype(np.uint64)
    win = w[..., wi] | (w[..., wi + 1] << np.uint64(32))
    return ((win >> off) & np.uint64((1 << bits) - 1)).astype(np.int64)


def unpack_words(words, n, bits):
    """The same, spelled out per word as AutoGPTQ's pack loop writes it (a second, independent
    reading): 2/4/8 bits: value j of a word at bits*j; 3 bits: per 3 words, v0..v9 at 3j of
    word 0, v10 = word0 bits 30-31 | word1 bit 0 << 2, v11..v20 at 3j+1 of word 1,
    v21 = word1 bit 31 | word2 bits 0-1 << 1, v22..v31 at 3j+2 of word 2."""
    words = words.astype(np.int64) & 0xFFFFFFFF
    lead = words.shape[:-1]
    out = np.zeros(lead + (n,), np.int64)
    if bits in (2, 4, 8):
        per, m = 32 // bits, (1 << bits) - 1
        for j in range(per):
            out[..., j::per] = (words >> (bits * j)) & m
        return out
    need(bits == 3 and n % 32 == 0, f"unpack_words: bits {bits}, n {n}")
    w0, w1, w2 = words[..., 0::3], words[..., 1::3], words[..., 2::3]
    for j in range(10):
        out[..., j::32] = (w0 >> (3 * j)) & 7
        out[..., 11 + j::32] = (w1 >> (3 * j + 1)) & 7
        out[..., 22 + j::32] = (w2 >> (3 * j + 2)) & 7
    out[..., 10::32] = ((w0 >> 30) & 3) | ((w1 & 1) << 2)
    out[..., 21::32] = ((w1 >> 31) & 1) | ((w2 & 3) << 1)
    return out


def pack_stream(vals, bits):
    """vals int [..., n] -> uint32 [..., n*bits/32]: the inverse of unpack_stream."""
    n = vals.shape[-1]
    nw = n * bits // 32
    acc = np.zeros(vals.shape[:-1] + (nw + 1,), np.uint64)
    bit = np.arange(n, dtype=np.int64) * bits
    wi, off = bit // 32, (bit % 32).astype(np.uint64)
    v = vals.astype(np.uint64) << off  # at most 39 bits
    for i in range(n):  # np.bitwise_or.at is slow; n <= a few thousand
        acc[..., wi[i]] |= v[..., i] & np.uint64(0xFFFFFFFF)
        acc[..., wi[i] + 1] |= v[..., i] >> np.uint64(32)
    return acc[..., :nw].astype(np.uint32)


def pack_autogptq(intweight, bits):
    """AutoGPTQ's QuantLinear.pack loop over rows (uint32 [K][N] -> [K*bits/32][N]), transcribed
    as it is written there (wrapping uint32 shifts), for the self-test of the unpackers."""
    intweight = intweight.astype(np.uint32)
    qweight = np.zeros((intweight.shape[0] // 32 * bits,) + intweight.shape[1:], dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                qweight[row] |= intweight[j] << np.uint32(bits * (j - i))
            i += 32 // bits
            row += 1
        elif bits == 3:
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << np.uint32(3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << np.uint32(30)
            row += 1
            qweight[row] |= (intweight[i] >> np.uint32(2)) & np.uint32(1)
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << np.uint32(3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << np.uint32(31)
            row += 1
            qweight[row] |= (intweight[i] >> np.uint32(1)) & np.uint32(3)
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << np.uint32(3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight


def selftest():
    """Both unpackers and the packer against AutoGPTQ's pack loop on random codes, every width."""
    rng = np.random.default_rng(0)
    for bits in (2, 3, 4, 8):
        vals = rng.integers(0, 1 << bits, size=(96, 5))  # [K][N]
        vals[0], vals[-1] = (1 << bits) - 1, 0
        qw = pack_autogptq(vals, bits)
        for f in (unpack_stream, unpack_words):
            need(np.array_equal(f(np.ascontiguousarray(qw.T), 96, bits), vals.T), f"selftest: {f.__name__} {bits} bits")
        need(np.array_equal(pack_stream(vals.T, bits).T, qw), f"selftest: pack_stream {bits} bits")


def unpack_linear(t, prefix, bits, v2):
    """codes int64 [N][K], zeros int64 [G][N], scales fp16 [G][N], g_idx [K] of one linear."""
    qw = t[prefix + ".qweight"]
    qz = t[prefix + ".qzeros"]
    sc = t[prefix + ".scales"]
    gi = t[prefix + ".g_idx"]
    K, N = qw.shape[0] * 32 // bits, qw.shape[1]
    G = sc.shape[0]
    qw_u = qw.view(np.uint32)
    qz_u = qz.view(np.uint32)
    codes = unpack_stream(np.ascontiguousarray(qw_u.T), K, bits)  # [N][K]
    zs = unpack_stream(qz_u, N, bits)  # [G][N], stored values
    codes2 = unpack_words(np.ascontiguousarray(qw_u.T), K, bits)
    zs2 = unpack_words(qz_u, N, bits)
    need(np.array_equal(codes, codes2) and np.array_equal(zs, zs2), f"{prefix}: the two unpackers disagree")
    need(np.array_equal(pack_stream(codes, bits).T, qw_u), f"{prefix}: re-packed codes differ from qweight "
         "(stray bits?)")
    need(np.array_equal(pack_stream(zs, bits), qz_u), f"{prefix}: re-packed zeros differ from qzeros")
    zeros = zs if v2 else zs + 1
    need(sc.shape == (G, N) and gi.shape == (K,), f"{prefix}: scales {sc.shape}, g_idx {gi.shape}; K {K}, N {N}")
    return codes, zeros, sc, gi.astype(np.int64)


def dequant(codes, zeros, scales, g_idx):
    """W [N][K] float32 = scale[g_idx[k]][n] * (q[n][k] - zero[g_idx[k]][n])."""
    s = scales.astype(np.float32)[g_idx].T  # [N][K]
    z = zeros[g_idx].T
    return s * (codes - z).astype(np.float32)


# ---- the numpy quantizer (RTN reference) ---------------------------------------------------------

def f16_scale(s):
    """float32 -> the fp16 value (as float32) that the output stores; 0 -> smallest subnormal,
    inf -> 65504 (gq's round_scale_f16; never hit on real weights)."""
    h = s.astype(np.float16).astype(np.float32)
    h = np.where(h == 0, np.float32(2.0 ** -24), h)
    return np.where(np.isinf(h), np.float32(65504), h).astype(np.float32)


def minmax_params(w, bits, sym, v1):
    """w float32 [N][n] -> scale float32 [N], zero int64 [N] (IST-DASLab quant.py find_params, with
    gq's v1 policy for a zero of 0: grid shifted one step, scale (xmax - xmin) / (maxq - 1))."""
    maxq = np.float32((1 << bits) - 1)
    xmin = np.minimum(w.min(axis=1), np.float32(0))
    xmax = np.maximum(w.max(axis=1), np.float32(0))
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = np.where(both0, np.float32(-1), xmin).astype(np.float32)
    xmax = np.where(both0, np.float32(1), xmax).astype(np.float32)
    s = ((xmax - xmin) / maxq).astype(np.float32)
    if sym:
        z = np.full(s.shape, np.float32((int(maxq) + 1) // 2))
    else:
        z = np.rint(-xmin / s).astype(np.float32)
        if v1:
            shift = z == 0
            s = np.where(shift, ((xmax - xmin) / (maxq - np.float32(1))).astype(np.float32), s)
            z = np.where(shift, np.float32(1), z)
    z = np.clip(z, 0, maxq)
    return s.astype(np.float32), z.astype(np.int64)


def quant_codes(w, s, z, bits):
    """clamp(rint(w / s) + z, 0, maxq) in float32, per row s [N], z [N]."""
    q = np.rint(w / s[:, None]).astype(np.float32) + z[:, None].astype(np.float32)
    return np.clip(q, 0, (1 << bits) - 1).astype(np.int64)


# ---- verify ---------------------------------------------------------------------------------------

class Output:
    """One gq output directory, unpacked and checked against the original."""

    def __init__(self, path, orig):
        self.path = path
        self.name = os.path.basename(os.path.normpath(path))
        self.notes = []
        self.cfg = json.load(open(os.path.join(path, "config.json")))
        self.qc = self.cfg.get("quantization_config")
        need(self.qc is not None, f"{path}: config.json has no quantization_config")
        self.report = None
        rp = os.path.join(path, "gq_report.json")
        if os.path.exists(rp):
            self.report = json.load(open(rp))
        self.tensors, self.where, self.meta, self.index = read_dir(path)
        self.orig = orig
        self.bits = int(self.qc["bits"])
        self.gs = int(self.qc["group_size"])
        self.sym = bool(self.qc["sym"])
        self.desc_act = bool(self.qc.get("desc_act", False))
        fmt = self.qc.get("checkpoint_format", "gptq")
        need(fmt in ("gptq", "gptq_v2"), f"{path}: checkpoint_format {fmt!r}")
        self.v2 = fmt == "gptq_v2"
        self.method = (self.qc.get("meta") or {}).get("method") or (self.report or {}).get("settings", {}).get("method")
        self.weights = {}  # prefix -> float32 [N][K]
        self.codes = {}

    def note(self, s):
        self.notes.append(s)

    def check_config(self):
        oc = dict(self.orig.cfg)
        c = {k: v for k, v in self.cfg.items() if k != "quantization_config"}
        need(c == oc, f"{self.name}: config.json differs from the original outside quantization_config: "
             f"{sorted(k for k in set(c) | set(oc) if c.get(k) != oc.get(k))}")
        qcj = os.path.join(self.path, "quantize_config.json")
        if os.path.exists(qcj):
            need(json.load(open(qcj)) == self.qc, f"{self.name}: quantize_config.json != config.json's quantization_config")
        need(self.qc.get("quant_method") == "gptq", f"{self.name}: quant_method {self.qc.get('quant_method')}")
        m = self.meta
        for key, want in (("gptq_bits", str(self.bits)), ("gptq_group_size", str(self.gs)),
                          ("gptq_desc_act", str(self.desc_act)), ("format", "pt")):
            if key in m:
                need(m[key] == want, f"{self.name}: safetensors metadata {key} = {m[key]!r}, config says {want!r}")
            else:
                self.note(f"safetensors metadata has no {key}")
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            a, b = os.path.join(self.path, fn), os.path.join(self.orig.path, fn)
            if os.path.exists(b):
                need(os.path.exists(a) and open(a, "rb").read() == open(b, "rb").read(),
                     f"{self.name}: {fn} differs from the original's")

    def check_tensors(self):
        fam = family_of(self.orig.cfg)
        L = int(self.orig.cfg[fam["n_layers_key"]])
        prefixes = [f"{fam['layers']}.{l}.{m}" for l in range(L) for m in fam["linears"]]
        ot = self.orig.tensors
        expect = set()
        for p in prefixes:
            need(p + ".weight" in ot, f"original has no {p}.weight")
            need(p + ".weight" not in self.tensors, f"{self.name}: {p}.weight left unquantized")
            for s in QSUFFIXES:
                need(p + "." + s in self.tensors, f"{self.name}: {p}.{s} missing")
                expect.add(p + "." + s)
        # everything else: byte-equal to the original
        other_o = {k for k in ot if not any(k == p + ".weight" for p in prefixes)}
        other_q = set(self.tensors) - expect
        need(other_o == other_q, f"{self.name}: non-quantized tensors differ in names: only in original "
             f"{sorted(other_o - other_q)[:5]}, only in output {sorted(other_q - other_o)[:5]}")
        for k in sorted(other_o):
            a, b = ot[k], self.tensors[k]
            need(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(),
                 f"{self.name}: {k} differs from the original ({a.dtype}{a.shape} vs {b.dtype}{b.shape})")
        self.n_other = len(other_o)
        self.prefixes = prefixes
        maxq = (1 << self.bits) - 1
        G_of = {}
        for p in prefixes:
            N, K = ot[p + ".weight"].shape
            G = -(-K // self.gs) if 0 < self.gs < K else 1
            gsz = self.gs if 0 < self.gs < K else K
            shapes = {"qweight": ((K * self.bits // 32, N), np.int32), "qzeros": ((G, N * self.bits // 32), np.int32),
                      "scales": ((G, N), np.float16), "g_idx": ((K,), np.int32)}
            for s, (shape, dt) in shapes.items():
                t = self.tensors[p + "." + s]
                need(t.shape == shape and t.dtype == dt, f"{self.name}: {p}.{s} is {t.dtype}{t.shape}, expected "
                     f"{np.dtype(dt)}{shape} (K {K}, N {N}, bits {self.bits}, group {self.gs})")
            codes, zeros, sc, gi = unpack_linear(self.tensors, p, self.bits, self.v2)
            need(codes.min() >= 0 and codes.max() <= maxq, f"{self.name}: {p}: codes out of range")
            scf = sc.astype(np.float32)
            need(np.all(np.isfinite(scf)) and np.all(scf > 0), f"{self.name}: {p}: scales not finite and positive "
                 f"(min {scf.min()})")
            if self.sym:
                need(np.all(zeros == (maxq + 1) // 2), f"{self.name}: {p}: symmetric but zeros "
                     f"{sorted(set(zeros.ravel().tolist()))[:6]}")
                if self.bits == 4 and not self.v2:
                    need(np.all(self.tensors[p + ".qzeros"].view(np.uint32) == 0x77777777),
                         f"{self.name}: {p}: sym 4-bit qzeros words are not all 0x77777777")
            else:
                lo = 0 if self.v2 else 1
                need(zeros.min() >= lo and zeros.max() <= maxq, f"{self.name}: {p}: zeros in "
                     f"[{zeros.min()}, {zeros.max()}], expected [{lo}, {maxq}]")
            if self.desc_act:
                need(gi.min() >= 0 and gi.max() < G and np.all(np.bincount(gi, minlength=G)[: K // gsz] == gsz),
                     f"{self.name}: {p}: desc_act g_idx is not a permutation of full groups")
                if np.array_equal(gi, np.arange(K) // gsz):
                    self.note(f"{p}: desc_act but g_idx is trivial")
            else:
                need(np.array_equal(gi, np.arange(K) // gsz), f"{self.name}: {p}: g_idx is not k // {gsz}")
            self.codes[p] = (codes, zeros, sc, gi)
            self.weights[p] = dequant(codes, zeros, sc, gi)
            G_of[p] = G
        self.G_of = G_of
        if self.desc_act:
            for l in range(L):
                for grp in fam.get("same_input", ()):
                    ps = [f"{fam['layers']}.{l}.{m}" for m in grp]
                    need(all(np.array_equal(self.codes[ps[0]][3], self.codes[q][3]) for q in ps[1:]),
                         f"{self.name}: desc_act g_idx differs between {ps} (same input, fused by consumers)")

    def dead_columns(self, p):
        for m in (self.report or {}).get("modules", []):
            if m.get("module") == p:
                return int(m.get("dead_columns", 0))
        return 0

    def check_reference(self):
        """RTN: everything re-derived from the original weights; GPTQ: group 0 (and column 0)."""
        ot = self.orig.tensors
        st = (self.report or {}).get("settings", {})
        static = bool(st.get("static_groups", self.qc.get("static_groups", False)))
        self.ref = {"method": self.method}
        if self.method == "rtn":
            n_codes = n_f16_diff = 0
            for p in self.prefixes:
                codes, zeros, sc, gi = self.codes[p]
                W = ot[p + ".weight"].astype(np.float32)
                N, K = W.shape
                gsz = self.gs if 0 < self.gs < K else K
                cref = np.empty((N, K), np.int64)
                for g in range(self.G_of[p]):
                    cols = slice(g * gsz, min(K, (g + 1) * gsz))
                    s32, z = minmax_params(W[:, cols], self.bits, self.sym, not self.v2)
                    need(np.array_equal(f16_scale(s32).view(np.uint32), sc[g].astype(np.float32).view(np.uint32)),
                         f"{self.name}: {p}: group {g}: stored scales != fp16(numpy RTN scale) "
                         f"({int(np.sum(f16_scale(s32) != sc[g].astype(np.float32)))} of {N})")
                    need(np.array_equal(z, zeros[g]), f"{self.name}: {p}: group {g}: zeros != numpy RTN zeros")
                    cref[:, cols] = quant_codes(W[:, cols], s32, z, self.bits)
                    # the same with the stored (fp16) scale: informational only (gq, like the reference,
                    # rounds with the fp32 scale and stores it in fp16)
                    n_f16_diff += int(np.sum(quant_codes(W[:, cols], sc[g].astype(np.float32), z, self.bits)
                                             != cref[:, cols]))
                need(np.array_equal(cref, codes), f"{self.name}: {p}: {int(np.sum(cref != codes))} codes differ "
                     "from the numpy RTN of the original weights")
                wref = dequant(cref, zeros, sc, gi)
                need(np.array_equal(wref.view(np.uint32), self.weights[p].view(np.uint32)),
                     f"{self.name}: {p}: dequantized weights differ bitwise from the numpy RTN")
                n_codes += cref.size
            self.ref.update(codes_checked=n_codes, codes_equal=n_codes, codes_diff_if_fp16_scale=n_f16_diff)
        elif self.method == "gptq" and not static:
            n_rows = n_col0 = skipped = 0
            for p in self.prefixes:
                if self.dead_columns(p):
                    skipped += 1
                    continue
                codes, zeros, sc, gi = self.codes[p]
                W = ot[p + ".weight"].astype(np.float32)
                cols = np.nonzero(gi == 0)[0]
                s32, z = minmax_params(W[:, cols], self.bits, self.sym, not self.v2)
                need(np.array_equal(f16_scale(s32), sc[0].astype(np.float32)),
                     f"{self.name}: {p}: group 0 scales != fp16(min-max scale of the original columns)")
                need(np.array_equal(z, zeros[0]), f"{self.name}: {p}: group 0 zeros != min-max zeros")
                n_rows += W.shape[0]
                if not self.desc_act:
                    c0 = quant_codes(W[:, :1], s32, z, self.bits)[:, 0]
                    need(np.array_equal(c0, codes[:, 0]), f"{self.name}: {p}: column 0 codes "
                         f"({int(np.sum(c0 != codes[:, 0]))} of {len(c0)}) differ from the min-max code of w")
                    n_col0 += len(c0)
            self.ref.update(group0_rows_equal=n_rows, col0_codes_equal=n_col0, modules_skipped_dead=skipped)

    def summary(self):
        nq = sum(w.size for w in self.weights.values())
        files = sorted(set(self.where.values()))
        return {"name": self.name, "bits": self.bits, "group_size": self.gs, "sym": self.sym,
                "desc_act": self.desc_act, "checkpoint_format": "gptq_v2" if self.v2 else "gptq",
                "method": self.method, "files": len(files), "linears": len(self.weights), "weights": nq,
                "other_tensors_equal": self.n_other, "reference": self.ref, "notes": self.notes}


class Orig:
    def __init__(self, path):
        self.path = path
        self.cfg = json.load(open(os.path.join(path, "config.json")))
        self.tensors, _, _, _ = read_dir(path)


def settings_key(o):
    s = dict((o.report or {}).get("settings", {}))
    for k in ("max_shard_mb", "threads", "seconds"):
        s.pop(k, None)
    return json.dumps(s, sort_keys=True) if s else None


def verify(orig_path, outs, quiet=False):
    selftest()
    orig = Orig(orig_path)
    done, res = [], []
    for d in outs:
        t0 = time.time()
        o = Output(d, orig)
        o.check_config()
        o.check_tensors()
        o.check_reference()
        rs = (o.report or {}).get("settings", {}).get("model")
        if rs and os.path.realpath(rs) != os.path.realpath(orig_path):
            o.note(f"gq_report says --model {rs}, checked against {orig_path}")
        s = o.summary()
        s["verify_seconds"] = round(time.time() - t0, 2)
        # identical settings -> identical tensors (e.g. sharded vs one file)
        for p in done:
            if settings_key(p) and settings_key(p) == settings_key(o):
                same = set(p.tensors) == set(o.tensors) and all(
                    p.tensors[k].tobytes() == o.tensors[k].tobytes() for k in o.tensors)
                need(same, f"{o.name} and {p.name}: same settings but different tensors")
                s["identical_to"] = p.name
        done.append(o)
        res.append(s)
        if not quiet:
            print(f"ok {o.name}: {s['linears']} linears ({s['weights']} weights, {s['bits']}-bit, group "
                  f"{s['group_size']}, {'sym' if s['sym'] else 'asym'}, desc_act {s['desc_act']}, "
                  f"{s['checkpoint_format']}, {s['method']}) in {s['files']} file(s); {s['other_tensors_equal']} other "
                  f"tensors byte-equal; reference {s['reference']}"
                  + (f"; identical to {s['identical_to']}" if "identical_to" in s else "")
                  + "".join(f"\n   note: {n}" for n in s["notes"]))
    return orig, done, res


# ---- perplexity (torch) -------------------------------------------------------------------------

def tokenize(model_dir, cfg, text):
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    bos = cfg.get("bos_token_id")
    probe = tok.encode("x").ids
    adds_bos = bos is not None and len(probe) > 0 and probe[0] == bos
    ids = tok.encode(text).ids
    if not adds_bos and bos is not None:
        ids = [bos] + ids
    return ids, adds_bos


def load_model(orig_path, cfg, device):
    import torch
    import transformers
    fam = family_of(cfg)
    cls = getattr(transformers, fam["class"]) if fam.get("class") else transformers.AutoModelForCausalLM
    m = cls.from_pretrained(orig_path, dtype=torch.float32, attn_implementation="eager")
    return m.to(device).eval()


def window_losses(model, ids, seqlen, max_windows, device, batch):
    import torch
    nw = len(ids) // seqlen
    if max_windows:
        nw = min(nw, max_windows)
    x = torch.tensor(ids[: nw * seqlen], dtype=torch.long).view(nw, seqlen)
    out = []
    with torch.no_grad():
        for b in range(0, nw, batch):
            xb = x[b: b + batch].to(device)
            logits = model(input_ids=xb, use_cache=False).logits.float()  # [B][T][V]
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -lp.gather(-1, xb[:, 1:, None]).squeeze(-1)  # [B][T-1] float32
            out.extend((nll.double().sum(dim=1) / (seqlen - 1)).tolist())
            del logits, lp, nll
    return out


def set_weights(model, o):
    """Every linear from the dequantized weights, every other parameter from the output."""
    import torch
    params = dict(model.named_parameters())  # tied weights appear once
    set_names = set()
    with torch.no_grad():
        for p, W in o.weights.items():
            mod = model.get_submodule(p)
            need(isinstance(mod, torch.nn.Linear), f"{p} is a {type(mod).__name__}, not a Linear")
            need(tuple(mod.weight.shape) == W.shape, f"{p}: model weight {tuple(mod.weight.shape)}, unpacked {W.shape}")
            mod.weight.copy_(torch.from_numpy(W))
            set_names.add(p + ".weight")
        for k in o.tensors:
            if k.rsplit(".", 1)[-1] in QSUFFIXES and k.rsplit(".", 1)[0] in o.weights:
                continue
            need(k in params, f"{o.name}: tensor {k} is no parameter of the model")
            params[k].copy_(torch.from_numpy(o.tensors[k].astype(np.float32)))
            set_names.add(k)
    missing = [n for n in params if n not in set_names]
    need(not missing, f"{o.name}: parameters not set from the output: {missing[:5]}")


def run_ppl(args):
    import torch
    import transformers
    torch.set_float32_matmul_precision("highest")  # no TF32: plain fp32 GEMMs
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    orig, outs, summaries = verify(args.orig, args.outs)
    text = open(args.text, encoding="utf-8").read()
    t0 = time.time()
    ids, adds_bos = tokenize(args.orig, orig.cfg, text)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": torch.cuda.get_device_name(0) if device.startswith("cuda")
           else f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__, "transformers": transformers.__version__,
           "numpy": np.__version__, "text": args.text,
           "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "n_tokens": len(ids),
           "tokenizer_adds_bos": adds_bos, "first_ids": ids[:8], "seqlen": args.seqlen,
           "matmul_precision": torch.get_float32_matmul_precision(), "results": {}}
    print(f"{len(ids)} tokens ({time.time() - t0:.1f} s), first {ids[:8]}; device {res['device']}; torch "
          f"{torch.__version__}, transformers {transformers.__version__}", flush=True)

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
                f.write("\n")

    jobs = [("fp16", None)] + [(o.name, o) for o in outs]
    for name, o in jobs:
        t0 = time.time()
        try:
            model = load_model(args.orig, orig.cfg, "cpu")
            if o is not None:
                set_weights(model, o)
            model = model.to(device)
            w = window_losses(model, ids, args.seqlen, args.max_windows, device, args.batch)
            mean = float(np.mean(w))
            r = {"ppl": math.exp(mean), "mean_nll": mean, "windows": len(w), "window_nll": w,
                 "seconds": round(time.time() - t0, 2)}
            if o is not None:
                r["verify"] = next(s for s in summaries if s["name"] == name)
            res["results"][name] = r
            print(f"{name}: ppl = {r['ppl']:.6f} ({len(w)} windows of {args.seqlen}, {r['seconds']} s)", flush=True)
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as e:  # keep the other outputs' figures
            res["results"][name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
        save()
    bad = [n for n, r in res["results"].items() if "error" in r]
    return 1 if bad else 0


# ---- table --------------------------------------------------------------------------------------

def gq_ppl_of(path):
    m = re.search(r"ppl = ([0-9.]+) \((\d+) windows", open(path).read())
    need(m is not None, f"{path}: no 'ppl = X (N windows' line")
    return float(m.group(1)), int(m.group(2))


def run_table(args):
    ind = json.load(open(args.indep))
    rows = []
    print("| output | gq ppl (CPU fp32) | independent ppl (transformers fp32) | difference | relative |")
    print("|---|---:|---:|---:|---:|")
    worst = 0.0
    for name, r in ind["results"].items():
        p = os.path.join(args.gq_dir, name + ".gqppl.txt")
        if "error" in r or not os.path.exists(p):
            print(f"| {name} | {'?' if not os.path.exists(p) else gq_ppl_of(p)[0]} | {r.get('error', '?')} | | |")
            continue
        g, nw = gq_ppl_of(p)
        need(nw == r["windows"], f"{name}: gq used {nw} windows, the independent run {r['windows']}")
        d = r["ppl"] - g
        rel = d / g
        worst = max(worst, abs(rel))
        rows.append((name, g, r["ppl"], d, rel))
        print(f"| {name} | {g:.4f} | {r['ppl']:.6f} | {d:+.6f} | {rel:+.2e} |")
    print(f"\nlargest |relative difference| {worst:.2e} (gq prints 4 decimals: +-5e-5 of rounding, "
          f"about 4e-6 relative); device {ind['device']}, torch {ind['torch']}, transformers "
          f"{ind['transformers']}, {ind['date']}")
    return 0 if worst <= args.tol else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="numpy-only checks of gq outputs")
    v.add_argument("--orig", required=True, help="the fp16 model the outputs were quantized from")
    v.add_argument("--json", help="write the summaries here")
    v.add_argument("outs", nargs="+")
    p = sub.add_parser("ppl", help="verify, then perplexities with transformers (torch)")
    p.add_argument("--orig", required=True)
    p.add_argument("--text", default=TEXT)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=0)
    p.add_argument("--batch", type=int, default=16, help="windows per forward")
    p.add_argument("--device", help="torch device (default cuda if there is one, else cpu)")
    p.add_argument("--json")
    p.add_argument("outs", nargs="*", help="gq outputs (none: the fp16 control alone)")
    t = sub.add_parser("table", help="markdown table: gq ppl vs the independent ppl")
    t.add_argument("--indep", required=True, help="the JSON of `ppl --json`")
    t.add_argument("--gq-dir", required=True, help="folder with <name>.gqppl.txt")
    t.add_argument("--tol", type=float, default=1e-3, help="largest relative difference accepted")
    args = ap.parse_args()
    try:
        if args.cmd == "verify":
            _, _, res = verify(args.orig, args.outs)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(res, f, indent=1)
            print(f"verify: {len(res)} outputs ok")
            return 0
        if args.cmd == "ppl":
            return run_ppl(args)
        return run_table(args)
    except CheckError as e:
        print("FAIL:", e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
