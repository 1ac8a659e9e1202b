#!/usr/bin/env python3
"""check_unpack.py -- an unpacker of gq's AutoGPTQ checkpoints that shares no code with gq.

It reads a `gq quantize` output directory with numpy alone (its own safetensors reader, which
also checks the file layout and reads BF16), unpacks every quantized linear from its own reading
of the AutoGPTQ v1/v2 layout (docs/formats.md):

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
    python3 tests/ref/check_unpack.py same OUT_A OUT_B                        (numpy only)
    python3 tests/ref/check_unpack.py ppl --orig MODEL [--json F] OUT [OUT ...]  (torch + transformers)
    python3 tests/ref/check_unpack.py ppl --orig MODEL --ids-from golden.safetensors OUT ...
    python3 tests/ref/check_unpack.py table --indep F.json --gq-dir DIR [--md]
    python3 tests/ref/check_unpack.py famtable --dir D                         (bench/unpack_families.sh)

Families (FAMILIES, from gq's src/model/arch.c and src/model/modules.c, names as gq writes them;
layer prefix model.layers.L.):
  llama, mistral, qwen2, qwen3, gemma2   self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj
  phi3        self_attn.qkv_proj (fused [q; k; v] rows), self_attn.o_proj, mlp.gate_up_proj
              (fused [gate; up] rows), mlp.down_proj: quantized as the fused matrices they are
  starcoder2  self_attn.{q,k,v,o}_proj (their biases stay fp), mlp.c_fc, mlp.c_proj (biases fp)
  mixtral     attention as llama; every layer sparse: block_sparse_moe.experts.E.w1 (gate),
              .w3 (up), .w2 (down); the router block_sparse_moe.gate stays fp
  qwen3_moe   attention as llama; sparse layers (not in mlp_only_layers, (L+1) % decoder_sparse_step
              == 0): mlp.experts.E.{gate,up,down}_proj, router mlp.gate fp; the others a dense
              mlp.{gate,up,down}_proj
gq writes the per-expert names whatever the input layout. A fused-layout input (transformers 5.17's
save_original_format=False: mlp.experts.gate_up_proj [E][2I][H], rows 0..I-1 = expert e's gate
(w1), I..2I-1 its up (w3); mlp.experts.down_proj [E][H][I] = w2 / down) is mapped tensor by tensor:
each output expert linear is compared with its rows of the 3-D original, and Mixtral's fused
router mlp.gate.weight must come out renamed block_sparse_moe.gate.weight (byte-equal).

verify (no torch): per output
  - every safetensors file: the header's byte ranges tile the data exactly (no gap, overlap or
    trailing byte), each tensor's size = its dtype's width x its shape;
  - config.json equals the original's apart from quantization_config, which equals
    quantize_config.json and the safetensors metadata; the shard index (if any) is consistent;
  - every linear of the family (FAMILIES, above) is quantized (qweight/qzeros/scales/g_idx, no
    .weight), with the shapes and dtypes of the format (N, K from the original matrix, or from
    the original's rows of a fused expert tensor); every other tensor (embeddings, norms,
    lm_head, biases, MoE routers) is byte-equal to the original's (Mixtral's fused router under
    its per-expert name), and nothing is missing or extra;
  - two unpackers (a generic 64-bit bit-window one and an explicit per-word one that spells out
    AutoGPTQ's 3-bit pattern) agree, and re-packing the codes gives the stored words back (no
    stray bits); zeros are in range (sym: exactly 2^(bits-1); v1 asym: 1..maxq, never the
    unstorable 0); g_idx is k // group_size, or (desc_act) a permutation of full groups, shared
    by the linears that read one input (q/k/v, gate/up, an expert's gate/up);
  - RTN outputs: a numpy RTN of the original weights (IST-DASLab min-max quantizer in float32:
    scale = (xmax - xmin) / maxq, zero = rint(-xmin / scale), code = clamp(rint(w / scale) + zero))
    gives the stored fp16 scales, the zeros and the codes exactly, and its dequantization with
    the stored scales equals ours bit for bit;
  - GPTQ outputs: group 0's scales and zeros (the columns with g_idx == 0, which GPTQ quantizes
    first, before any error feedback reaches them) equal those of the original weights, and
    without act-order so do the codes of column 0 (an expert that gq rounded to nearest for too
    few routed tokens passes the same test);
  - outputs made with the same settings (gq_report.json, e.g. a sharded and an unsharded one)
    hold identical tensors.

same (no torch): two outputs hold the same tensors (names, dtypes, bytes), the same config.json
and the same gq_report settings apart from the input path -- e.g. one quantized from a MoE
checkpoint's per-expert layout and one from its fused sibling.

ppl (torch + transformers, any device; fp32, eager attention): the ORIGINAL model is loaded
with transformers (the family's class, else AutoModelForCausalLM; MoE models with
experts_implementation="eager", transformers' reference expert loop) in float32, each quantized
linear's weight replaced by the dequantized one and every other parameter by the output's
tensor. transformers 5.17 keeps MoE experts fused in memory (mlp.experts.gate_up_proj
[E][2I][H], mlp.experts.down_proj [E][H][I], for Mixtral too), so each expert's dequantized
gate/up/down goes into its rows of those parameters; every parameter must be set exactly once
(checked). The control (the original model as loaded) first checks the mapping: the original's
own tensors, mapped the same way, equal the loaded parameters bit for bit.
Perplexity as `gq ppl` computes it (src/eval/ppl_text.c, src/eval/ppl.c): ids = <s> +
encode(text) (the BOS is prepended only when the tokenizer's post-processor does not add it),
cut into consecutive non-overlapping windows of --seqlen tokens (the tail is dropped, only the
first window starts with <s>; --max-windows N keeps the first N), each window an independent
sequence whose loss is the mean NLL of its seqlen - 1 next-token predictions, ppl = exp(mean of
the window losses). With --ids-from F (a family fixture's golden.safetensors) the windows are
F's `ids` rows as they are ([2][128], no <s> added, no tokenizer needed), and the control is
compared with F's `ppl` (transformers' own float32 figure for the same model). The fp16 model
itself is evaluated the same way as the control. --json writes every figure.

table: the markdown table of docs/unpack-check.md from the ppl JSON and the `gq ppl` outputs
($DIR/<name>.gqppl.txt, as bench/unpack_check.sh writes them).
famtable: the family tables of docs/unpack-check.md from the folder bench/unpack_families.sh fills.
"""
import argparse
import hashlib
import json
import math
import os
import re
import struct
import sys
import time

import numpy as np

TEXT = "tests/data/text/python-stdlib-eval.txt"

ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
SWIGLU = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")


def llama_like(cls):
    return {"class": cls, "attn": ATTN, "mlp": SWIGLU, "same_input": (QKV, GATE_UP)}


# Per model family: the transformers class (None: AutoModelForCausalLM), the linear modules of a
# layer that gq quantizes (its output names, inside "model.layers.L."), the ones that read the
# same input (one Hessian: fused by vLLM & co, so with desc_act they must share one g_idx, as
# AutoGPTQ's do), and for MoE families the expert layout. Another family plugs in here.
FAMILIES = {
    "llama": llama_like("LlamaForCausalLM"),
    "mistral": llama_like("MistralForCausalLM"),
    "qwen2": llama_like("Qwen2ForCausalLM"),  # q/k/v biases: fp, byte-equal
    "qwen3": llama_like("Qwen3ForCausalLM"),  # q_norm/k_norm: fp
    "gemma2": llama_like("Gemma2ForCausalLM"),  # four norms per layer, stored w (applied 1 + w): fp
    "phi3": {"class": "Phi3ForCausalLM", "attn": ("self_attn.qkv_proj", "self_attn.o_proj"),
             "mlp": ("mlp.gate_up_proj", "mlp.down_proj"), "same_input": ()},
    "starcoder2": {"class": "Starcoder2ForCausalLM", "attn": ATTN, "mlp": ("mlp.c_fc", "mlp.c_proj"),
                   "same_input": (QKV,)},
    "mixtral": {"class": "MixtralForCausalLM", "attn": ATTN, "same_input": (QKV,),
                "moe": {"sparse": "all", "router": "block_sparse_moe.gate", "fused_router": "mlp.gate",
                        "experts": "block_sparse_moe.experts.", "lin": ("w1", "w3", "w2"),
                        "fused": "mlp.experts.", "dense": None}},
    "qwen3_moe": {"class": "Qwen3MoeForCausalLM", "attn": ATTN, "same_input": (QKV,),
                  "moe": {"sparse": "qwen3_moe", "router": "mlp.gate", "fused_router": "mlp.gate",
                          "experts": "mlp.experts.", "lin": ("gate_proj", "up_proj", "down_proj"),
                          "fused": "mlp.experts.", "dense": SWIGLU, "dense_same_input": (GATE_UP,)}},
}
LAYERS = "model.layers"

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


def n_experts(cfg):
    e = cfg.get("num_local_experts", cfg.get("num_experts"))
    need(isinstance(e, int) and e > 0, f"MoE config without num_local_experts / num_experts ({e!r})")
    return e


def is_sparse(cfg, moe, l):
    if moe["sparse"] == "all":
        return True
    # Qwen3MoeDecoderLayer: experts unless l in mlp_only_layers, and only every decoder_sparse_step-th layer
    step = int(cfg.get("decoder_sparse_step", 1) or 1)
    return l not in (cfg.get("mlp_only_layers") or []) and n_experts(cfg) > 0 and (l + 1) % step == 0


class LinearMap:
    """Which output tensors come from which original tensors.

    linears   the output prefixes of the quantized linears, in order
    src[p]    (original tensor, expert or None, row0 or None, row1): the original matrix of p
    expert[p] (layer prefix, e, j) for an expert linear (j 0 gate, 1 up, 2 down)
    consumed  original tensors the linears replace
    rename    {original name: output name} of the other tensors that gq renames (Mixtral's
              fused router); every other original tensor keeps its name
    same_input  tuples of linears that read one input
    sparse    the layers with experts; fused: whether the original holds the fused layout"""

    def __init__(self, cfg, ot):
        fam = family_of(cfg)
        L = int(cfg["num_hidden_layers"])
        self.linears, self.src, self.expert, self.same_input = [], {}, {}, []
        self.consumed, self.rename, self.sparse, self.fused = set(), {}, [], None
        moe = fam.get("moe")
        H = int(cfg["hidden_size"])
        for l in range(L):
            base = f"{LAYERS}.{l}."

            def plain(mods, groups):
                for m in mods:
                    self.linears.append(base + m)
                    self.src[base + m] = (base + m + ".weight", None, None, None)
                self.same_input.extend(tuple(base + m for m in g) for g in groups)

            plain(fam["attn"], fam["same_input"])
            if moe is None:
                plain(fam["mlp"], [g for g in fam["same_input"] if g[0] in fam["mlp"]])
                continue
            if not is_sparse(cfg, moe, l):
                need(moe["dense"] is not None, f"layer {l} is dense, {cfg['model_type']} has no dense MLP")
                plain(moe["dense"], moe.get("dense_same_input", ()))
                continue
            self.sparse.append(l)
            E = n_experts(cfg)
            gu, dn = base + moe["fused"] + "gate_up_proj", base + moe["fused"] + "down_proj"
            fused = gu in ot
            need(fused == (dn in ot), f"original: one of {gu}, {dn} without the other")
            need(self.fused in (None, fused), f"original: layer {l} has the {'fused' if fused else 'per-expert'} "
                 "expert layout, an earlier one the other")
            self.fused = fused
            r_out = base + moe["router"] + ".weight"
            if fused:
                a, b = ot[gu], ot[dn]
                need(a.ndim == 3 and a.shape[0] == E and a.shape[1] % 2 == 0 and a.shape[2] == H,
                     f"original {gu}: shape {a.shape}, expected [{E}][2I][{H}]")
                I = a.shape[1] // 2
                need(b.shape == (E, H, I), f"original {dn}: shape {b.shape}, expected [{E}][{H}][{I}]")
                self.consumed |= {gu, dn}
                r_in = base + moe["fused_router"] + ".weight"
                need(r_in in ot, f"original: fused experts in layer {l} but no router {r_in}")
                if r_in != r_out:
                    self.rename[r_in] = r_out
            else:
                need(r_out in ot, f"original: no router {r_out}")
            names = [[base + moe["experts"] + f"{e}." + moe["lin"][j] for j in range(3)] for e in range(E)]
            for e in range(E):
                for j in range(3):
                    p = names[e][j]
                    self.linears.append(p)
                    self.expert[p] = (base, e, j)
                    if fused:
                        self.src[p] = (gu, e, j * I, (j + 1) * I) if j < 2 else (dn, e, None, None)
                    else:
                        self.src[p] = (p + ".weight", None, None, None)
                self.same_input.append((names[e][0], names[e][1]))
        need(len(set(self.linears)) == len(self.linears), "family table: a linear listed twice")
        for p in self.linears:
            name, e = self.src[p][:2]
            need(name in ot, f"original has no {name} (for {p})")
            if e is None:
                need(ot[name].ndim == 2, f"original {name}: {ot[name].ndim}-D, expected a matrix")
                self.consumed.add(name)

    def out_name(self, orig_name):
        return self.rename.get(orig_name, orig_name)


# ---- safetensors (own reader: numpy has no bfloat16, and the layout is checked too) -------------

ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_st(path):
    """{name: array} (BF16 as its uint16 bit patterns), {name: dtype string}, metadata."""
    with open(path, "rb") as f:
        raw = f.read()
    need(len(raw) >= 8, f"{path}: {len(raw)} bytes")
    n = struct.unpack("<Q", raw[:8])[0]
    need(8 + n <= len(raw), f"{path}: header of {n} bytes in a file of {len(raw)}")
    hdr = json.loads(raw[8: 8 + n].decode("utf-8"))
    meta = hdr.pop("__metadata__", None) or {}
    data = memoryview(raw)[8 + n:]
    out, dts, spans = {}, {}, []
    for k, v in hdr.items():
        dt, shape, (a, b) = v["dtype"], tuple(v["shape"]), v["data_offsets"]
        need(dt in ST_DTYPES, f"{path}: {k}: dtype {dt}")
        npdt = np.dtype(ST_DTYPES[dt])
        numel = int(np.prod(shape, dtype=np.int64))
        need(0 <= a <= b <= len(data) and b - a == numel * npdt.itemsize,
             f"{path}: {k}: bytes [{a}, {b}) for {dt}{list(shape)} (data {len(data)} bytes)")
        out[k] = np.frombuffer(data, dtype=npdt, count=numel, offset=a).reshape(shape)
        dts[k] = dt
        spans.append((a, b, k))
    spans.sort()
    pos = 0
    for a, b, k in spans:
        need(a == pos, f"{path}: {k} starts at {a}, the previous tensor ends at {pos} (gap or overlap)")
        pos = b
    need(pos == len(data), f"{path}: tensors end at {pos}, the data holds {len(data)} bytes")
    return out, dts, meta


def as_f32(a, dt):
    """A tensor as float32 (exact for BF16/F16/F32)."""
    if dt == "BF16":
        return (a.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return a.astype(np.float32)


def read_dir(d):
    """{name: array}, {name: file}, metadata of the first file, the index (or None), {name: dtype}."""
    idx_path = os.path.join(d, "model.safetensors.index.json")
    index = None
    if os.path.exists(idx_path):
        index = json.load(open(idx_path))
        files = sorted(set(index["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors, where, dtypes, meta = {}, {}, {}, None
    for fn in files:
        t, dts, m = read_st(os.path.join(d, fn))
        if meta is None:
            meta = m
        for k in t:
            need(k not in tensors, f"{d}: tensor {k} in two files ({where.get(k)}, {fn})")
            tensors[k], where[k], dtypes[k] = t[k], fn, dts[k]
    if index is not None:
        wm = index["weight_map"]
        need(set(wm) == set(tensors), f"{d}: index names {len(wm)} tensors, the shards hold {len(tensors)}; "
             f"only in index {sorted(set(wm) - set(tensors))[:5]}, only in shards {sorted(set(tensors) - set(wm))[:5]}")
        for k, fn in wm.items():
            need(where[k] == fn, f"{d}: index puts {k} in {fn}, found in {where[k]}")
        total = sum(t.nbytes for t in tensors.values())
        ts = index.get("metadata", {}).get("total_size")
        need(ts == total, f"{d}: index total_size {ts}, the tensors hold {total} bytes")
    return tensors, where, meta, index, dtypes


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
        self.tensors, self.where, self.meta, self.index, self.dtypes = read_dir(path)
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
        lm = self.orig.lm
        ot, od = self.orig.tensors, self.orig.dtypes
        expect = set()
        for p in lm.linears:
            need(p + ".weight" not in self.tensors, f"{self.name}: {p}.weight left unquantized")
            for s in QSUFFIXES:
                need(p + "." + s in self.tensors, f"{self.name}: {p}.{s} missing")
                expect.add(p + "." + s)
        # everything else: byte-equal to the original (under gq's name for a renamed router)
        want = {lm.out_name(k): k for k in ot if k not in lm.consumed}
        need(len(want) == len([k for k in ot if k not in lm.consumed]), "two original tensors map to one name")
        other_q = set(self.tensors) - expect
        need(set(want) == other_q, f"{self.name}: non-quantized tensors differ in names: missing "
             f"{[k + ('' if want[k] == k else f' (original {want[k]})') for k in sorted(set(want) - other_q)][:5]}, "
             f"unexpected {sorted(other_q - set(want))[:5]}")
        for k_out, k in sorted(want.items()):
            a, b = ot[k], self.tensors[k_out]
            need(od[k] == self.dtypes[k_out] and a.shape == b.shape and a.tobytes() == b.tobytes(),
                 f"{self.name}: {k_out} differs from the original's {k} ({od[k]}{list(a.shape)} vs "
                 f"{self.dtypes[k_out]}{list(b.shape)})")
        self.n_other = len(want)
        self.prefixes = lm.linears
        mods = [m.get("module") for m in (self.report or {}).get("modules", [])]
        if mods:
            need(sorted(mods) == sorted(lm.linears), f"{self.name}: gq_report.json lists modules "
                 f"{sorted(set(mods) - set(lm.linears))[:3]} not in the family's linears, misses "
                 f"{sorted(set(lm.linears) - set(mods))[:3]}")
        maxq = (1 << self.bits) - 1
        G_of = {}
        for p in lm.linears:
            N, K = self.orig.linear(p).shape
            G = -(-K // self.gs) if 0 < self.gs < K else 1
            gsz = self.gs if 0 < self.gs < K else K
            shapes = {"qweight": ((K * self.bits // 32, N), np.int32), "qzeros": ((G, N * self.bits // 32), np.int32),
                      "scales": ((G, N), np.float16), "g_idx": ((K,), np.int32)}
            for s, (shape, dt) in shapes.items():
                t = self.tensors[p + "." + s]
                sdt = {np.int32: "I32", np.float16: "F16"}[dt]
                need(t.shape == shape and t.dtype == dt and self.dtypes[p + "." + s] == sdt,
                     f"{self.name}: {p}.{s} is {self.dtypes[p + '.' + s]}{t.shape}, expected "
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
            for ps in lm.same_input:
                need(all(np.array_equal(self.codes[ps[0]][3], self.codes[q][3]) for q in ps[1:]),
                     f"{self.name}: desc_act g_idx differs between {ps} (same input, fused by consumers)")

    def dead_columns(self, p):
        for m in (self.report or {}).get("modules", []):
            if m.get("module") == p:
                return int(m.get("dead_columns", 0))
        return 0

    def check_reference(self):
        """RTN: everything re-derived from the original weights; GPTQ: group 0 (and column 0)."""
        st = (self.report or {}).get("settings", {})
        static = bool(st.get("static_groups", self.qc.get("static_groups", False)))
        self.ref = {"method": self.method}
        if self.method == "rtn":
            n_codes = n_f16_diff = 0
            for p in self.prefixes:
                codes, zeros, sc, gi = self.codes[p]
                W = self.orig.linear(p)
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
                W = self.orig.linear(p)
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
        lm = self.orig.lm
        moe = {}
        if lm.expert:
            moe = {"sparse_layers": lm.sparse, "expert_linears": len(lm.expert),
                   "input_layout": "fused" if lm.fused else "per-expert", "renamed": sorted(lm.rename.values()),
                   "rtn_fallbacks": sum(1 for m in (self.report or {}).get("modules", []) if m.get("fallback_rtn"))}
        return {"name": self.name, "family": self.orig.cfg.get("model_type"), "bits": self.bits,
                "group_size": self.gs, "sym": self.sym, "desc_act": self.desc_act,
                "checkpoint_format": "gptq_v2" if self.v2 else "gptq",
                "method": self.method, "files": len(files), "linears": len(self.weights), "weights": nq,
                "other_tensors_equal": self.n_other, "reference": self.ref, **moe, "notes": self.notes}


class Orig:
    def __init__(self, path):
        self.path = path
        self.cfg = json.load(open(os.path.join(path, "config.json")))
        self.tensors, _, _, _, self.dtypes = read_dir(path)
        self.lm = LinearMap(self.cfg, self.tensors)

    def linear(self, p):
        """The original float32 [N][K] matrix of output linear p (rows of a fused expert tensor)."""
        name, e, r0, r1 = self.lm.src[p]
        t = self.tensors[name]
        if e is not None:
            t = t[e]
        if r0 is not None:
            t = t[r0:r1]
        return as_f32(t, self.dtypes[name])


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
            moe = ""
            if "expert_linears" in s:
                moe = (f"; MoE: {s['input_layout']} input, sparse layers {s['sparse_layers']}, {s['expert_linears']} "
                       f"expert linears, {s['rtn_fallbacks']} RTN fallbacks"
                       + (f", renamed {len(s['renamed'])} router(s) to {s['renamed'][0]}..." if s["renamed"] else ""))
            print(f"ok {o.name} ({s['family']}): {s['linears']} linears ({s['weights']} weights, {s['bits']}-bit, group "
                  f"{s['group_size']}, {'sym' if s['sym'] else 'asym'}, desc_act {s['desc_act']}, "
                  f"{s['checkpoint_format']}, {s['method']}) in {s['files']} file(s); {s['other_tensors_equal']} other "
                  f"tensors byte-equal{moe}; reference {s['reference']}"
                  + (f"; identical to {s['identical_to']}" if "identical_to" in s else "")
                  + "".join(f"\n   note: {n}" for n in s["notes"]))
    return orig, done, res


def run_same(args):
    """Two outputs: the same tensors, config.json, safetensors metadata and gq settings (but --model)."""
    a, b = args.outs
    ta, _, ma, _, da = read_dir(a)
    tb, _, mb, _, db = read_dir(b)
    need(set(ta) == set(tb), f"{a} vs {b}: tensor names differ: only in the first {sorted(set(ta) - set(tb))[:5]}, "
         f"only in the second {sorted(set(tb) - set(ta))[:5]}")
    diff = [k for k in sorted(ta) if da[k] != db[k] or ta[k].shape != tb[k].shape or ta[k].tobytes() != tb[k].tobytes()]
    need(not diff, f"{a} vs {b}: {len(diff)} of {len(ta)} tensors differ: {diff[:5]}")
    ca, cb = (json.load(open(os.path.join(d, "config.json"))) for d in (a, b))
    need(ca == cb, f"{a} vs {b}: config.json differs in {sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))}")
    need(ma == mb, f"{a} vs {b}: safetensors metadata differs: {ma} vs {mb}")
    ra, rb = (json.load(open(os.path.join(d, "gq_report.json"))) if os.path.exists(os.path.join(d, "gq_report.json"))
              else {} for d in (a, b))
    sa, sb = (dict(r.get("settings", {})) for r in (ra, rb))
    for s in (sa, sb):
        for k in ("model", "threads", "seconds", "max_shard_mb"):
            s.pop(k, None)
    need(sa == sb, f"{a} vs {b}: gq settings differ: {sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))}")
    la = {m["module"]: m.get("loss") for m in ra.get("modules", [])}
    lb = {m["module"]: m.get("loss") for m in rb.get("modules", [])}
    need(la.keys() == lb.keys(), f"{a} vs {b}: gq_report modules differ")
    nl = sum(1 for k in la if la[k] != lb[k])
    print(f"same: {a} and {b}: all {len(ta)} tensors byte-identical ({sum(t.nbytes for t in ta.values())} bytes), "
          f"config.json and metadata equal, gq settings equal but --model; per-module GPTQ losses: "
          f"{len(la) - nl} of {len(la)} equal")
    return 0


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


def load_model(orig_path, cfg):
    """The original model in float32 with eager attention (MoE: the eager expert loop), checked to
    load every tensor of the checkpoint (a tied lm_head is never in the file)."""
    import torch
    import transformers
    fam = family_of(cfg)
    cls = getattr(transformers, fam["class"], None) if fam.get("class") else None
    cls = cls or transformers.AutoModelForCausalLM
    kw = dict(dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    if fam.get("moe"):
        kw["experts_implementation"] = "eager"
    m, info = cls.from_pretrained(orig_path, **kw)
    bad = {}
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        v = [str(x) for x in (info.get(k) or []) if str(x) != "lm_head.weight"]
        if v:
            bad[k] = sorted(v)[:5]
    need(not bad, f"loading {orig_path}: {bad}")
    impl = {"class": type(m).__name__, "attn": getattr(m.config, "_attn_implementation", None),
            "experts": getattr(m.config, "_experts_implementation", None)}
    return m.eval(), impl


def mem_target(params, cfg, lm, p):
    """Where linear p's [N][K] weight lives in the transformers model: (parameter, expert, row0, row1).
    A Linear of that name, else (an expert of transformers 5.17's fused in-memory layout) its rows
    of mlp.experts.gate_up_proj [E][2I][H] (gate 0..I-1, up I..2I-1) or mlp.experts.down_proj [E][H][I]."""
    if p + ".weight" in params:
        return p + ".weight", None, None, None
    need(p in lm.expert, f"{p}: the model has no parameter {p}.weight")
    base, e, j = lm.expert[p]
    moe = family_of(cfg)["moe"]
    gu, dn = base + moe["fused"] + "gate_up_proj", base + moe["fused"] + "down_proj"
    need(gu in params and dn in params, f"{p}: the model has neither {p}.weight nor {gu} / {dn}")
    E, I2, H = params[gu].shape
    need(I2 % 2 == 0 and tuple(params[dn].shape) == (E, H, I2 // 2), f"model: {gu} {tuple(params[gu].shape)}, {dn} "
         f"{tuple(params[dn].shape)}: not [E][2I][H], [E][H][I]")
    I = I2 // 2
    return (gu, e, j * I, (j + 1) * I) if j < 2 else (dn, e, None, None)


def mem_other(params, cfg, name):
    """The model parameter of a non-quantized output tensor: its own name, or (Mixtral's router,
    block_sparse_moe.gate in the files) the in-memory mlp.gate."""
    if name in params:
        return name
    moe = family_of(cfg).get("moe")
    if moe and moe["router"] != moe["fused_router"]:
        alt = name.replace("." + moe["router"] + ".", "." + moe["fused_router"] + ".")
        if alt in params:
            return alt
    need(False, f"tensor {name} is no parameter of the model")


def put_weights(model, cfg, lm, weights, others, check_only=False):
    """weights {linear prefix: float32 [N][K]}, others {output tensor name: float32 array} into the
    model (or, check_only, compared with what it holds); every parameter row exactly once."""
    import torch
    params = dict(model.named_parameters())  # tied weights appear once
    cover = {n: np.zeros(tuple(t.shape[:-1]), np.int64) for n, t in params.items()}
    diff = []

    def put(name, e, r0, r1, arr, what):
        t, idx = params[name].data, ()
        if e is not None:
            t, idx = t[e], (e,)
        if r0 is not None:
            t, idx = t[r0:r1], idx + (slice(r0, r1),)
        need(tuple(t.shape) == arr.shape, f"{what}: model {name}{list(idx) if idx else ''} is {tuple(t.shape)}, "
             f"the output's {arr.shape}")
        src = torch.from_numpy(np.ascontiguousarray(arr))
        if check_only:
            if not torch.equal(t.detach().cpu(), src):
                diff.append(what)
        else:
            t.copy_(src)
        cover[name][idx] += 1

    with torch.no_grad():
        for p, W in weights.items():
            put(*mem_target(params, cfg, lm, p), W, p)
        for k, v in others.items():
            put(mem_other(params, cfg, k), None, None, None, v, k)
    bad = [n for n, c in cover.items() if not np.all(c == 1)]
    need(not bad, f"parameters not set exactly once: {bad[:5]}")
    return diff


def set_weights(model, cfg, lm, o):
    """Every linear from the dequantized weights, every other parameter from the output."""
    qt = {p + "." + s for p in o.weights for s in QSUFFIXES}
    others = {k: as_f32(v, o.dtypes[k]) for k, v in o.tensors.items() if k not in qt}
    put_weights(model, cfg, lm, o.weights, others)


def check_mapping(model, orig):
    """The original's own tensors, mapped as the outputs' are, equal the loaded model bit for bit."""
    lm = orig.lm
    weights = {p: orig.linear(p) for p in lm.linears}
    others = {lm.out_name(k): as_f32(v, orig.dtypes[k]) for k, v in orig.tensors.items() if k not in lm.consumed}
    diff = put_weights(model, orig.cfg, lm, weights, others, check_only=True)
    need(not diff, f"mapping check: {len(diff)} tensors differ from the loaded model: {diff[:5]}")
    return len(weights) + len(others)


def window_losses(model, windows, device, batch):
    """windows int [R][T]: per row the mean NLL of its T - 1 next-token predictions (float64 sum)."""
    import torch
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.int64))
    T = x.shape[1]
    out = []
    with torch.no_grad():
        for b in range(0, x.shape[0], batch):
            xb = x[b: b + batch].to(device)
            logits = model(input_ids=xb, use_cache=False).logits.float()  # [B][T][V]
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -lp.gather(-1, xb[:, 1:, None]).squeeze(-1)  # [B][T-1] float32
            out.extend((nll.double().sum(dim=1) / (T - 1)).tolist())
            del logits, lp, nll
    return out


def run_ppl(args):
    import torch
    import transformers
    torch.set_float32_matmul_precision("highest")  # no TF32: plain fp32 GEMMs
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    orig, outs, summaries = verify(args.orig, args.outs)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": torch.cuda.get_device_name(0) if device.startswith("cuda")
           else f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__, "transformers": transformers.__version__,
           "numpy": np.__version__, "orig": args.orig, "family": orig.cfg.get("model_type"),
           "matmul_precision": torch.get_float32_matmul_precision(), "results": {}}
    t0 = time.time()
    if args.ids_from:
        g, _, _ = read_st(args.ids_from)
        need("ids" in g and g["ids"].ndim == 2, f"{args.ids_from}: no 2-D ids")
        windows = g["ids"].astype(np.int64)
        need(windows.min() >= 0 and windows.max() < int(orig.cfg["vocab_size"]), f"{args.ids_from}: ids out of range")
        res.update(ids_from=args.ids_from, windows_shape=list(windows.shape), first_ids=windows[0, :8].tolist())
        for k in ("ppl", "nll_mean"):
            if k in g:
                res["golden_" + k] = float(g[k].reshape(-1)[0])
        what = f"{windows.shape[0]} rows of {windows.shape[1]} ids from {args.ids_from} (no <s> added)"
    else:
        text = open(args.text, encoding="utf-8").read()
        ids, adds_bos = tokenize(args.orig, orig.cfg, text)
        nw = len(ids) // args.seqlen
        if args.max_windows:
            nw = min(nw, args.max_windows)
        need(nw > 0, f"{len(ids)} tokens: no window of {args.seqlen}")
        windows = np.array(ids[: nw * args.seqlen], dtype=np.int64).reshape(nw, args.seqlen)
        res.update(text=args.text, text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), n_tokens=len(ids),
                   tokenizer_adds_bos=adds_bos, first_ids=ids[:8], seqlen=args.seqlen, max_windows=args.max_windows)
        what = f"{len(ids)} tokens, first {ids[:8]}, {nw} windows of {args.seqlen}"
    print(f"{what} ({time.time() - t0:.1f} s); device {res['device']}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}", flush=True)

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
                f.write("\n")

    jobs = [("fp16", None)] + [(o.name, o) for o in outs]
    for name, o in jobs:
        t0 = time.time()
        try:
            model, impl = load_model(args.orig, orig.cfg)
            res["implementation"] = impl
            r = {}
            if o is None:
                r["mapping_checked_tensors"] = check_mapping(model, orig)
            else:
                set_weights(model, orig.cfg, orig.lm, o)
            model = model.to(device)
            w = window_losses(model, windows, device, args.batch)
            mean = float(np.mean(w))
            r.update(ppl=math.exp(mean), mean_nll=mean, windows=len(w), window_nll=w, seconds=round(time.time() - t0, 2))
            if o is not None:
                r["verify"] = next(s for s in summaries if s["name"] == name)
            elif "golden_ppl" in res:
                r["rel_vs_golden"] = r["ppl"] / res["golden_ppl"] - 1
            res["results"][name] = r
            print(f"{name}: ppl = {r['ppl']:.6f} ({len(w)} windows of {windows.shape[1]}, {r['seconds']} s)"
                  + (f"; mapping checked on {r['mapping_checked_tensors']} tensors" if o is None else "")
                  + (f"; fixture's golden ppl {res['golden_ppl']:.6f}, relative {r['rel_vs_golden']:+.2e}"
                     if "rel_vs_golden" in r else ""), flush=True)
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as e:  # keep the other outputs' figures
            res["results"][name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
        save()
    bad = [n for n, r in res["results"].items() if "error" in r]
    return 1 if bad else 0


# ---- tables -------------------------------------------------------------------------------------

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


FIXTURES = ("qwen2", "qwen3", "mistral", "mixtral", "mixtral-fused", "qwen3_moe", "qwen3_moe-fused", "gemma2", "phi3",
            "starcoder2")


def run_famtable(args):
    """The tables of bench/unpack_families.sh's folder: $D/gqppl/<fx>.{fp16,gptq}.txt (gq ppl),
    $D/indep/<fx>.text.json and <fx>.ids.json (ppl --json), $D/verify/<fx>.json."""
    D = args.dir
    fxs = [f for f in FIXTURES if os.path.exists(os.path.join(D, "indep", f + ".text.json"))
           or os.path.exists(os.path.join(D, "gqppl", f + ".gptq.txt"))]
    need(fxs, f"{D}: no results")
    worst, dev = 0.0, None
    print("| fixture | model | gq ppl (CPU fp32) | unpacker ppl (transformers fp32) | relative difference |")
    print("|---|---|---:|---:|---:|")
    for fx in fxs:
        jp = os.path.join(D, "indep", fx + ".text.json")
        ind = json.load(open(jp)) if os.path.exists(jp) else {"results": {}}
        dev = dev or (ind.get("device"), ind.get("torch"), ind.get("transformers"), ind.get("date"))
        for model, key in (("original (bf16)", "fp16"), ("gptq 4-bit g32", fx)):
            gp = os.path.join(D, "gqppl", fx + (".fp16.txt" if key == "fp16" else ".gptq.txt"))
            g = gq_ppl_of(gp) if os.path.exists(gp) else None
            r = ind["results"].get(key)
            if g is None or r is None or "error" in r:
                err = "not run" if r is None else r.get("error", "")
                print(f"| {fx} | {model} | {'%.4f' % g[0] if g else '?'} | {err or '%.6f' % r['ppl']} | |")
                continue
            need(g[1] == r["windows"], f"{fx} {key}: gq used {g[1]} windows, the unpacker {r['windows']}")
            rel = r["ppl"] / g[0] - 1
            worst = max(worst, abs(rel))
            print(f"| {fx} | {model} | {g[0]:.4f} | {r['ppl']:.4f} | {rel:+.2e} |")
    print(f"\nlargest |relative difference| {worst:.2e} (bound {args.tol:g}); unpacker on {dev[0] if dev else '?'}, torch "
          f"{dev[1] if dev else '?'}, transformers {dev[2] if dev else '?'}, {dev[3] if dev else '?'}")
    ids_rows = [(fx, json.load(open(os.path.join(D, "indep", fx + ".ids.json")))) for fx in fxs
                if os.path.exists(os.path.join(D, "indep", fx + ".ids.json"))]
    if ids_rows:
        print("\n| fixture | golden ppl (transformers, fixture) | control: original via the unpacker's loading | "
              "relative | gptq 4-bit g32 (unpacker) | gptq / original |")
        print("|---|---:|---:|---:|---:|---:|")
        for fx, ind in ids_rows:
            c = ind["results"].get("fp16", {})
            q = ind["results"].get(fx, {})
            gp = ind.get("golden_ppl")
            cs = f"{c['ppl']:.4f}" if "ppl" in c else c.get("error", "?")
            qs = f"{q['ppl']:.4f}" if "ppl" in q else q.get("error", "?")
            rel = f"{c['ppl'] / gp - 1:+.2e}" if "ppl" in c and gp else ""
            ratio = f"{q['ppl'] / c['ppl']:.4f}" if "ppl" in c and "ppl" in q else ""
            print(f"| {fx} | {gp:.4f} | {cs} | {rel} | {qs} | {ratio} |" if gp else f"| {fx} | ? | {cs} | | {qs} | {ratio} |")
    return 0 if worst <= args.tol else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="numpy-only checks of gq outputs")
    v.add_argument("--orig", required=True, help="the fp16 model the outputs were quantized from")
    v.add_argument("--json", help="write the summaries here")
    v.add_argument("outs", nargs="+")
    s = sub.add_parser("same", help="two outputs hold identical tensors (numpy only)")
    s.add_argument("outs", nargs=2)
    p = sub.add_parser("ppl", help="verify, then perplexities with transformers (torch)")
    p.add_argument("--orig", required=True)
    p.add_argument("--text", default=TEXT)
    p.add_argument("--ids-from", help="evaluate the rows of this safetensors file's `ids` [R][T] (no <s> added; "
                   "a family fixture's golden.safetensors) instead of --text")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=0, help="evaluate at most N windows of --text (0 = all)")
    p.add_argument("--batch", type=int, default=16, help="windows per forward")
    p.add_argument("--device", help="torch device (default cuda if there is one, else cpu)")
    p.add_argument("--json")
    p.add_argument("outs", nargs="*", help="gq outputs (none: the fp16 control alone)")
    t = sub.add_parser("table", help="markdown table: gq ppl vs the independent ppl")
    t.add_argument("--indep", required=True, help="the JSON of `ppl --json`")
    t.add_argument("--gq-dir", required=True, help="folder with <name>.gqppl.txt")
    t.add_argument("--tol", type=float, default=1e-3, help="largest relative difference accepted")
    f = sub.add_parser("famtable", help="the family tables from bench/unpack_families.sh's folder")
    f.add_argument("--dir", required=True)
    f.add_argument("--tol", type=float, default=1e-4, help="largest relative difference accepted")
    args = ap.parse_args()
    try:
        if args.cmd == "verify":
            _, _, res = verify(args.orig, args.outs)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(res, f, indent=1)
            print(f"verify: {len(res)} outputs ok")
            return 0
        if args.cmd == "same":
            return run_same(args)
        if args.cmd == "ppl":
            return run_ppl(args)
        if args.cmd == "famtable":
            return run_famtable(args)
        return run_table(args)
    except CheckError as e:
        print("FAIL:", e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
