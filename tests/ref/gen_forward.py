#!/usr/bin/env python3
"""gen_forward.py -- golden data for tests/test_forward.c and tests/test_ppl.c.

Writes into tests/data/fwd/ (run from the repository root):

  pycoder5m_ref.safetensors   transformers' float32 forward of tests/data/pycoder-5m
      (weights loaded in float32 from the fp16 checkpoint, eager attention) on the
      first 48 tokens of tests/data/text/python-stdlib-eval.txt (<s> + encode, HF
      tokenizers):
        ids        I32 [48]
        inv_freq   F32 [hd/2]     the rotary inverse frequencies transformers used
        hidden.0   F32 [48][256]  output of the embedding
        hidden.l   F32 [48][256]  output of decoder layer l (1 .. 4), before the final norm
        logits     F32 [4][8192]  logits at positions logit_pos (all 48 x 8192 would be 1.5 MB)
        logit_pos  I32 [4]
      and the perplexity check of test_ppl.c (b):
        ppl_ids    I32 [1024]     the first 4 x 256 tokens of the whole text (<s> + encode)
        ppl_window_nll F64 [4]    mean NLL of each 256-token window (255 predictions each)
        ppl        F64 [1]        exp(mean of the window losses)
  tiny-*/                     tiny random LlamaForCausalLM checkpoints saved with
      save_pretrained (config.json + model.safetensors), each with ref.safetensors:
        ids [48], inv_freq [hd/2], hidden.0 .. hidden.L [48][hidden] (float32),
        logits [48][vocab] (float32), from transformers' float32 forward of the saved
        weights (re-loaded in float32):
    tiny-llama3-bias-bf16  rope llama3, attention_bias + mlp_bias, bf16 weights,
                           untied lm_head, head_dim 24 != hidden/heads = 16, GQA 4/2
    tiny-linear-tied-f16   rope linear (factor 2), tied embeddings, fp16, GQA 4/1
    tiny-dynamic-f32       rope dynamic (factor 2, max_position_embeddings 32 < 48
                           tokens, so transformers rescales the base), fp32, MHA
  tiny-gptq*/                 tiny GPTQ-quantized checkpoints (1 layer) in the AutoGPTQ layout
      (gptq-reference.md section 2): every linear stored as qweight/qzeros/scales(/g_idx)
      with random codes, fp16 scales and zero points, the rest fp16; config.json carries
      quantization_config. ref.safetensors as above, from transformers' float32 forward
      with each linear set to its dequantized weight scale[g_idx[k]][n] * (q - zero):
    tiny-gptq4-v1-actorder 4 bits, group 32, checkpoint_format gptq (qzeros hold zero - 1),
                           desc_act with a permuted (non-trivial) g_idx
    tiny-gptq2-v2-nogidx   2 bits, group 16, checkpoint_format gptq_v2 (zeros as is, 0 allowed),
                           no g_idx tensor (the loader must use k / group_size)

Random weights are N(0, 0.15^2) for matrices (so attention is far from uniform
and layers change the residual stream visibly), norms 1 + N(0, 0.2^2), biases
N(0, 0.1^2). Versions used are written to tests/data/fwd/versions.json.
"""
import json
import os
import shutil
import sys

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = "tests/data/fwd"
N_TOK = 48


def capture_forward(model, ids):
    """float32 forward; returns (hidden states list, logits[T][vocab], inv_freq)."""
    hs = []
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: hs.append(o[0].detach().clone()))]
    for layer in model.model.layers:
        hooks.append(layer.register_forward_hook(
            lambda m, i, o: hs.append((o[0] if isinstance(o, tuple) else o)[0].detach().clone())))
    with torch.no_grad():
        out = model(torch.tensor([ids], dtype=torch.long), use_cache=False)
    for h in hooks:
        h.remove()
    inv = model.model.rotary_emb.inv_freq.detach().clone().float()
    return hs, out.logits[0].float(), inv


def load_f32(path):
    m = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def pycoder():
    src = "tests/data/pycoder-5m"
    tok = tokenizers.Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    text = open("tests/data/text/python-stdlib-eval.txt", encoding="utf-8").read()
    all_ids = tok.encode(text).ids  # the post-processor prepends <s>
    assert all_ids[0] == 1, all_ids[:4]
    ids = all_ids[:N_TOK]
    model = load_f32(src)
    hs, logits, inv = capture_forward(model, ids)
    pos = [0, 1, 23, N_TOK - 1]
    t = {
        "ids": torch.tensor(ids, dtype=torch.int32),
        "inv_freq": inv,
        "logits": logits[pos].contiguous(),
        "logit_pos": torch.tensor(pos, dtype=torch.int32),
    }
    for i, h in enumerate(hs):
        t[f"hidden.{i}"] = h.float().contiguous()
    # perplexity of the first 4 windows of 256 tokens, each an independent sequence
    seqlen, nw = 256, 4
    pids = all_ids[: seqlen * nw]
    losses = []
    with torch.no_grad():
        for w in range(nw):
            x = torch.tensor([pids[w * seqlen:(w + 1) * seqlen]], dtype=torch.long)
            out = model(x, labels=x, use_cache=False)  # mean NLL of the 255 shifted predictions
            losses.append(float(out.loss))
    t["ppl_ids"] = torch.tensor(pids, dtype=torch.int32)
    t["ppl_window_nll"] = torch.tensor(losses, dtype=torch.float64)
    t["ppl"] = torch.tensor([float(np.exp(np.mean(losses)))], dtype=torch.float64)
    save_file(t, os.path.join(OUT, "pycoder5m_ref.safetensors"))
    print("pycoder-5m: ppl(4 x 256) = %.6f, %d tokens in the whole text" % (t["ppl"][0], len(all_ids)))


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))


def tiny(name, dtype, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    base.update(kw)
    cfg = LlamaConfig(**base)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    randomize(model, gen)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.to(dtype).save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    ids = [1] + torch.randint(3, cfg.vocab_size, (N_TOK - 1,), generator=gen).tolist()
    ref = load_f32(d)  # the saved (rounded) weights, computed in float32
    hs, logits, inv = capture_forward(ref, ids)
    t = {"ids": torch.tensor(ids, dtype=torch.int32), "inv_freq": inv, "logits": logits.contiguous()}
    for i, h in enumerate(hs):
        t[f"hidden.{i}"] = h.float().contiguous()
    save_file(t, os.path.join(d, "ref.safetensors"))
    print(name, "ok", {k: tuple(v.shape) for k, v in t.items() if k in ("logits", "inv_freq")})


def pack_cols(vals, bits):
    """vals uint32 [R][C] -> [R * bits / 32][C]: 32/bits values of consecutive rows per word, lowest first."""
    per = 32 // bits
    r, c = vals.shape
    out = np.zeros((r // per, c), dtype=np.uint32)
    for j in range(per):
        out |= vals[j::per].astype(np.uint32) << np.uint32(bits * j)
    return out.view(np.int32)


def tiny_quant(name, bits, gs, v2, act_order, write_gidx, seed):
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    randomize(model, gen)
    with torch.no_grad():  # everything not quantized is stored in fp16 (parameters only: model.half()
        for p in model.parameters():  # would also round the rotary inv_freq buffer)
            p.copy_(p.half().float())
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    cfg.save_pretrained(d)
    maxq = (1 << bits) - 1
    tensors = {}
    lin = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    with torch.no_grad():
        for n_, p in model.named_parameters():
            if not any(("." + l + ".") in n_ for l in lin):
                tensors[n_] = p.detach().half().contiguous()
        for li, layer in enumerate(model.model.layers):
            for l in lin:
                mod = layer.get_submodule(l)
                N, K = mod.weight.shape
                G = (K + gs - 1) // gs
                codes = rng.integers(0, maxq + 1, size=(N, K))
                zeros = rng.integers(0 if v2 else 1, maxq + 1, size=(G, N))
                scales = (0.02 + 0.03 * rng.random((G, N))).astype(np.float16)
                if act_order:
                    perm = rng.permutation(K)
                    invperm = np.argsort(perm)
                    g_idx = (invperm // gs).astype(np.int32)
                else:
                    g_idx = (np.arange(K) // gs).astype(np.int32)
                sc = torch.from_numpy(scales.astype(np.float32))  # [G][N]
                qz = torch.from_numpy((codes - zeros[g_idx].T).astype(np.float32))  # q - zero, [N][K]
                wdeq = sc[torch.from_numpy(g_idx).long()].T.contiguous() * qz  # fp32 product, as the loader
                mod.weight.copy_(wdeq)
                pre = f"model.layers.{li}.{l}"
                tensors[pre + ".qweight"] = torch.from_numpy(pack_cols(codes.T.astype(np.uint32), bits).copy())
                stored = zeros if v2 else zeros - 1
                tensors[pre + ".qzeros"] = torch.from_numpy(pack_cols(stored.T.astype(np.uint32), bits).T.copy())
                tensors[pre + ".scales"] = torch.from_numpy(scales.copy())
                if write_gidx:
                    tensors[pre + ".g_idx"] = torch.from_numpy(g_idx.copy())
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cj = json.load(open(os.path.join(d, "config.json")))
    cj["dtype"] = "float16"
    cj["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": gs, "desc_act": act_order,
                                 "sym": False, "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cj, f, indent=2)
        f.write("\n")
    ids = [1] + torch.randint(3, cfg.vocab_size, (N_TOK - 1,), generator=gen).tolist()
    model.config._attn_implementation = "eager"
    hs, logits, inv = capture_forward(model, ids)
    t = {"ids": torch.tensor(ids, dtype=torch.int32), "inv_freq": inv, "logits": logits.contiguous()}
    for i, h in enumerate(hs):
        t[f"hidden.{i}"] = h.float().contiguous()
    save_file(t, os.path.join(d, "ref.safetensors"))
    print(name, "ok")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    pycoder()
    tiny("tiny-llama3-bias-bf16", torch.bfloat16, 11, head_dim=24, attention_bias=True, mlp_bias=True,
         tie_word_embeddings=False,
         rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    tiny("tiny-linear-tied-f16", torch.float16, 12, num_key_value_heads=1, tie_word_embeddings=True,
         rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    tiny("tiny-dynamic-f32", torch.float32, 13, num_key_value_heads=4, tie_word_embeddings=False,
         max_position_embeddings=32,
         rope_parameters={"rope_type": "dynamic", "rope_theta": 500000.0, "factor": 2.0})
    tiny_quant("tiny-gptq4-v1-actorder", 4, 32, v2=False, act_order=True, write_gidx=True, seed=21)
    tiny_quant("tiny-gptq2-v2-nogidx", 2, 16, v2=True, act_order=False, write_gidx=False, seed=22)
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"python": sys.version.split()[0], "torch": torch.__version__,
                   "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                   "safetensors": safetensors.__version__, "numpy": np.__version__}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
