#!/usr/bin/env python3
"""Write a synthetic Llama checkpoint of a real model's shape: random fp16
weights (std 0.02, norms 1), sharded safetensors + index, config.json, and
pycoder's tokenizer (so calibration text tokenizes; ids stay < 8192).

    python3 bench/make_synth_model.py --shape 7b OUT_DIR [--layers N]

Uses torch on the GPU when present (fast), else numpy.
"""
import argparse, json, os, shutil

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "7b": (4096, 11008, 32, 32, 32, 32000),
    "34b": (8192, 22016, 48, 64, 8, 32000),
    "70b": (8192, 28672, 80, 64, 8, 32000),
    "tiny": (256, 768, 2, 4, 2, 8192),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="7b", choices=SHAPES)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--tokenizer", default="tests/data/pycoder-5m")
    ap.add_argument("--shard-gb", type=float, default=4.0)
    ap.add_argument("out")
    a = ap.parse_args()
    h, inter, nl, nh, nkv, vocab = SHAPES[a.shape]
    if a.layers:
        nl = a.layers
    hd = h // nh
    os.makedirs(a.out, exist_ok=True)
    try:
        import torch
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        gen = torch.Generator(device=dev).manual_seed(0)

        def rnd(*shape):
            return (torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32) * 0.02).half().cpu()

        def ones(n):
            return torch.ones(n, dtype=torch.float16)

        from safetensors.torch import save_file
    except ImportError:
        import numpy as np
        rng = np.random.default_rng(0)

        def rnd(*shape):
            return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

        def ones(n):
            return np.ones(n, dtype=np.float16)

        from safetensors.numpy import save_file

    tensors = [("model.embed_tokens.weight", lambda: rnd(vocab, h))]
    for l in range(nl):
        p = f"model.layers.{l}."
        tensors += [
            (p + "input_layernorm.weight", lambda: ones(h)),
            (p + "post_attention_layernorm.weight", lambda: ones(h)),
            (p + "self_attn.q_proj.weight", lambda: rnd(nh * hd, h)),
            (p + "self_attn.k_proj.weight", lambda: rnd(nkv * hd, h)),
            (p + "self_attn.v_proj.weight", lambda: rnd(nkv * hd, h)),
            (p + "self_attn.o_proj.weight", lambda: rnd(h, nh * hd)),
            (p + "mlp.gate_proj.weight", lambda: rnd(inter, h)),
            (p + "mlp.up_proj.weight", lambda: rnd(inter, h)),
            (p + "mlp.down_proj.weight", lambda: rnd(h, inter)),
        ]
    tensors += [("model.norm.weight", lambda: ones(h)), ("lm_head.weight", lambda: rnd(vocab, h))]
    limit = a.shard_gb * 1e9
    shards, cur, size = [], {}, 0
    weight_map, total = {}, 0
    for name, make in tensors:
        t = make()
        nbytes = t.numel() * 2 if hasattr(t, "numel") else t.nbytes
        if cur and size + nbytes > limit:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = t
        size += nbytes
        total += nbytes
        weight_map[name] = len(shards)
    shards.append(cur)
    n = len(shards)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for i, sh in enumerate(shards):
        save_file(sh, os.path.join(a.out, names[i]), metadata={"format": "pt"})
    json.dump({"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in weight_map.items()}},
              open(os.path.join(a.out, "model.safetensors.index.json"), "w"), indent=2)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
           "intermediate_size": inter, "num_hidden_layers": nl, "num_attention_heads": nh,
           "num_key_value_heads": nkv, "vocab_size": vocab, "max_position_embeddings": 4096,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(a.tokenizer, f), a.out)
    print(f"wrote {a.out}: {a.shape} shape, {nl} layers, {n} shards, {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
