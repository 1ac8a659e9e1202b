#!/usr/bin/env python3
"""Write a synthetic Llama checkpoint of a real model's shape: random fp16
weights (std 0.02, norms 1), sharded safetensors + index, config.json, and
pycoder's tokenizer (so calibration text tokenizes; ids stay < 8192).

    python3 bench/make_synth_model.py --shape 7b OUT_DIR [--layers N]
    python3 bench/make_synth_model.py --shape 34b --int4 OUT_DIR [--layers N] [--group-size 128]

--int4 writes an AutoGPTQ v1 checkpoint directly, as `gq quantize` would
leave it (docs/formats.md, include/gq/pack.h), without quantizing anything:
every linear (q/k/v/o, gate/up/down) becomes

    qweight int32 [K/8, N]  random words: word r of column n holds the codes of
                            input rows 8r+j at bits 4j..4j+3 (j = 0..7, lowest
                            first); each code independent, uniform on 0..15 with
                            0 replaced by 8 (mean 8: zero-mean weights)
    qzeros  int32 [G, N/8]  every nibble 7 = zero 8 minus one (v1, symmetric):
                            every word 0x77777777
    scales  fp16  [G, N]    0.02 / 4.18 times a factor uniform in [0.9, 1.1] per
                            (group, column): q - 8 has mean 0 and standard
                            deviation sqrt(17.5) = 4.18, so the weights
                            scale * (q - 8) have std ~0.02 like the fp16
                            synthetic model's
    g_idx   int32 [K]       k // group_size (trivial: no act-order)

with config.json's quantization_config and quantize_config.json as gq writes
them (bits 4, group_size 128, sym, desc_act false, quant_method gptq,
checkpoint_format gptq) and the safetensors metadata of src/io/export.c.
Embeddings, norms and lm_head stay fp16, as in the fp16 synthetic model.

Tensors are generated and written one at a time (the safetensors files are
written by this script, no `safetensors` package needed): host memory stays
at about one tensor (~0.4 GB for 34B), whatever the model's size. The free
disk space is checked before anything is written. Random numbers come from
torch on the GPU when torch is importable (fast: the disk is the limit),
else numpy (--rng numpy forces it); the fp16 weights with torch are those
the earlier version of this script wrote (same generator, same order).
"""
import argparse, json, os, shutil, struct, sys, time

import numpy as np

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "7b": (4096, 11008, 32, 32, 32, 32000),
    "13b": (5120, 13824, 40, 40, 40, 32000),
    "34b": (8192, 22016, 48, 64, 8, 32000),
    "70b": (8192, 28672, 80, 64, 8, 32000),
    "tiny": (256, 768, 2, 4, 2, 8192),
}

# codes: nibbles uniform on 0..15 with 0 replaced by 8 (words_i32), so q - 8 has mean 0 (the weights
# no bias a long residual stream adds up: with plain uniform nibbles, mean -0.5, the 34B shape overflowed
# fp16 by layer 4) and standard deviation sqrt((2 * (1 + 4 + ... + 49)) / 16) = sqrt(17.5) = 4.18
SIGMA_Q = 17.5 ** 0.5
QZERO_WORD = 0x77777777  # eight nibbles of zero - 1 = 7


class TorchRng:
    """Random tensors made by torch (on the GPU when there is one), returned as numpy arrays."""

    def __init__(self, seed):
        import torch
        self.torch = torch
        self.dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.gen = torch.Generator(device=self.dev).manual_seed(seed)
        self.name = f"torch {torch.__version__} on {self.dev}"

    def normal_f16(self, shape, std):
        t = self.torch.randn(*shape, generator=self.gen, device=self.dev, dtype=self.torch.float32) * std
        return t.half().cpu().numpy()

    def words_i32(self, shape):
        n = int(np.prod(shape)) * 8  # nibbles
        t = self.torch.randint(0, 16, (n,), generator=self.gen, device=self.dev, dtype=self.torch.uint8)
        t[t == 0] = 8
        b = t[0::2] | (t[1::2] << 4)  # byte k: nibbles 2k (bits 0-3) and 2k + 1 (bits 4-7)
        return b.cpu().numpy().view(np.int32).reshape(shape)

    def uniform_f16(self, shape, lo, hi):
        t = self.torch.rand(*shape, generator=self.gen, device=self.dev, dtype=self.torch.float32) * (hi - lo) + lo
        return t.half().cpu().numpy()


class NumpyRng:
    """numpy, in chunks of CHUNK elements filled by a thread pool (numpy's generators release the
    GIL); each chunk has its own generator seeded from (seed, tensor number, chunk number), so the
    values do not depend on the number of threads."""
    CHUNK = 1 << 22

    def __init__(self, seed):
        from concurrent.futures import ThreadPoolExecutor
        self.seed, self.count = seed, 0
        self.pool = ThreadPoolExecutor(max(1, min(32, os.cpu_count() or 1)))
        self.name = f"numpy {np.__version__}, {self.pool._max_workers} threads"

    def _fill(self, out, fn):
        """out (flat) filled chunk by chunk with fn(generator, n)."""
        self.count += 1
        flat = out.reshape(-1)
        starts = range(0, flat.size, self.CHUNK)

        def one(i0):
            g = np.random.default_rng([self.seed, self.count, i0 // self.CHUNK])
            flat[i0:i0 + self.CHUNK] = fn(g, min(self.CHUNK, flat.size - i0))

        list(self.pool.map(one, starts))
        return out

    def normal_f16(self, shape, std):
        return self._fill(np.empty(shape, np.float16),
                          lambda g, n: g.standard_normal(n, dtype=np.float32) * np.float32(std))

    def words_i32(self, shape):
        def nibbles(g, m):  # m bytes of two centred nibbles each
            c = g.integers(0, 16, size=2 * m, dtype=np.uint8)
            c[c == 0] = 8
            return c[0::2] | (c[1::2] << 4)
        return self._fill(np.empty(int(np.prod(shape)) * 4, np.uint8), nibbles).view(np.int32).reshape(shape)

    def uniform_f16(self, shape, lo, hi):
        return self._fill(np.empty(shape, np.float16), lambda g, n: g.uniform(lo, hi, size=n))


def make_rng(kind, seed):
    if kind in ("auto", "torch"):
        try:
            r = TorchRng(seed)
            # a small self-test of every path: a failure here falls back to numpy (auto)
            a, b, c = r.normal_f16((4, 8), 0.02), r.words_i32((2, 8)), r.uniform_f16((2, 8), 0.9, 1.1)
            assert a.dtype == np.float16 and a.shape == (4, 8)
            assert b.dtype == np.int32 and b.shape == (2, 8)
            assert c.dtype == np.float16 and c.shape == (2, 8)
            return TorchRng(seed)  # fresh generator: the self-test draws do not shift the weights
        except Exception as e:  # ImportError, no CUDA runtime, ...
            if kind == "torch":
                raise
            print(f"make_synth_model: torch unavailable ({type(e).__name__}: {e}); using numpy", file=sys.stderr)
    return NumpyRng(seed)


ST_DTYPE = {np.dtype(np.float16): "F16", np.dtype(np.int32): "I32", np.dtype(np.float32): "F32"}


def write_safetensors(path, items, metadata):
    """items: [(name, numpy dtype, shape, make)] written in this order; make() returns the
    array (made only when its turn comes). The header is laid out first from the shapes."""
    hdr, off = {"__metadata__": metadata}, 0
    for name, dt, shape, _ in items:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        hdr[name] = {"dtype": ST_DTYPE[np.dtype(dt)], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, dt, shape, make in items:
            a = np.ascontiguousarray(make())
            if a.dtype != np.dtype(dt) or tuple(a.shape) != tuple(shape):
                raise SystemExit(f"make_synth_model: {name}: made {a.dtype}{list(a.shape)}, planned {dt}{list(shape)}")
            a.tofile(f)
    os.replace(tmp, path)
    return off


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="7b", choices=SHAPES)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--tokenizer", default="tests/data/pycoder-5m")
    ap.add_argument("--shard-gb", type=float, default=4.0)
    ap.add_argument("--int4", action="store_true", help="write an AutoGPTQ v1 int4 g128 sym checkpoint (random codes)")
    ap.add_argument("--group-size", type=int, default=128, help="int4 group size (divides every in_features)")
    ap.add_argument("--rng", default="auto", choices=("auto", "torch", "numpy"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("out")
    a = ap.parse_args()
    h, inter, nl, nh, nkv, vocab = SHAPES[a.shape]
    if a.layers:
        nl = a.layers
    hd = h // nh
    gs = a.group_size
    if a.int4 and (gs < 8 or h % gs or inter % gs or (nh * hd) % gs):
        raise SystemExit(f"make_synth_model: group size {gs} must divide {h}, {inter} and {nh * hd}")
    t0 = time.time()
    rng = make_rng(a.rng, a.seed)

    def ones(n):
        return lambda: np.ones(n, dtype=np.float16)

    def fp16(*shape):
        return lambda: rng.normal_f16(shape, 0.02)

    s0 = 0.02 / SIGMA_Q

    def linear(prefix, n_out, k_in):
        """(name, dtype, shape, make) of one Linear [n_out][k_in]."""
        if not a.int4:
            return [(prefix + ".weight", np.float16, (n_out, k_in), fp16(n_out, k_in))]
        G = k_in // gs
        return [
            (prefix + ".qweight", np.int32, (k_in // 8, n_out), lambda: rng.words_i32((k_in // 8, n_out))),
            (prefix + ".qzeros", np.int32, (G, n_out // 8),
             lambda: np.full((G, n_out // 8), np.uint32(QZERO_WORD).view(np.int32), dtype=np.int32)),
            (prefix + ".scales", np.float16, (G, n_out), lambda: rng.uniform_f16((G, n_out), 0.9 * s0, 1.1 * s0)),
            (prefix + ".g_idx", np.int32, (k_in,), lambda: (np.arange(k_in, dtype=np.int32) // gs)),
        ]

    tensors = [("model.embed_tokens.weight", np.float16, (vocab, h), fp16(vocab, h))]
    for l in range(nl):
        p = f"model.layers.{l}."
        tensors += [(p + "input_layernorm.weight", np.float16, (h,), ones(h)),
                    (p + "post_attention_layernorm.weight", np.float16, (h,), ones(h))]
        tensors += linear(p + "self_attn.q_proj", nh * hd, h)
        tensors += linear(p + "self_attn.k_proj", nkv * hd, h)
        tensors += linear(p + "self_attn.v_proj", nkv * hd, h)
        tensors += linear(p + "self_attn.o_proj", h, nh * hd)
        tensors += linear(p + "mlp.gate_proj", inter, h)
        tensors += linear(p + "mlp.up_proj", inter, h)
        tensors += linear(p + "mlp.down_proj", h, inter)
    tensors += [("model.norm.weight", np.float16, (h,), ones(h)),
                ("lm_head.weight", np.float16, (vocab, h), fp16(vocab, h))]

    # shards by size (a tensor never split), as before
    limit = a.shard_gb * 1e9
    shards, cur, size, total = [], [], 0, 0
    for item in tensors:
        nbytes = int(np.prod(item[2], dtype=np.int64)) * np.dtype(item[1]).itemsize
        if cur and size + nbytes > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += nbytes
        total += nbytes
    shards.append(cur)
    n = len(shards)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    os.makedirs(a.out, exist_ok=True)
    free = shutil.disk_usage(a.out).free
    old = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out) if f.endswith(".safetensors"))
    if total + (1 << 28) > free + old:
        raise SystemExit(f"make_synth_model: {a.out}: needs {total / 1e9:.2f} GB, {(free + old) / 1e9:.2f} GB free")
    kind = "int4 g%d sym (AutoGPTQ v1)" % gs if a.int4 else "fp16"
    print(f"make_synth_model: {a.shape} {kind}, {nl} layers, {total / 1e9:.2f} GB in {n} shards, rng {rng.name}",
          file=sys.stderr)

    meta = {"format": "pt"}
    qc = None
    if a.int4:
        qmeta = {"quantizer": ["bench/make_synth_model.py"], "method": "random codes (synthetic, not quantized)",
                 "act_order": False, "static_groups": False, "zero_policy": "symmetric"}
        qc = {"bits": 4, "group_size": gs, "damp_percent": 0.01, "desc_act": False, "static_groups": False,
              "sym": True, "true_sequential": True, "model_file_base_name": "model", "quant_method": "gptq",
              "checkpoint_format": "gptq", "lm_head": False, "meta": qmeta}
        meta.update({"quantizer": "bench/make_synth_model.py", "gptq_bits": "4", "gptq_group_size": str(gs),
                     "gptq_desc_act": "False", "gptq_damp_percent": "0.01", "gptq_checkpoint_format": "gptq",
                     "gptq_quant_method": "gptq"})
    weight_map = {}
    for i, sh in enumerate(shards):
        write_safetensors(os.path.join(a.out, names[i]), sh, meta)
        for item in sh:
            weight_map[item[0]] = names[i]
        print(f"  {names[i]}: {len(sh)} tensors ({time.time() - t0:.1f} s)", file=sys.stderr)
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(os.path.join(a.out, "model.safetensors.index.json"), "w"), indent=2)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
           "intermediate_size": inter, "num_hidden_layers": nl, "num_attention_heads": nh,
           "num_key_value_heads": nkv, "vocab_size": vocab, "max_position_embeddings": 4096,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}
    if qc:
        cfg["quantization_config"] = qc
        json.dump(qc, open(os.path.join(a.out, "quantize_config.json"), "w"), indent=2)
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(a.tokenizer, f), a.out)
    print(f"wrote {a.out}: {a.shape} shape, {kind}, {nl} layers, {n} shards, {total / 1e9:.2f} GB "
          f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
