#!/usr/bin/env python3
"""gen_families.py -- golden fixtures for the model families gq is taught after Llama:
Qwen2/2.5, Qwen3, Mistral (sliding window), Mixtral, Qwen3-MoE, Gemma-2, Phi-3 and
StarCoder2, made by transformers itself so that gq's C loaders and forwards can be
checked against them.

For each family (model_type qwen2, qwen3, mistral, mixtral, qwen3_moe, gemma2, phi3,
starcoder2) the script builds a tiny random model with transformers'
AutoModelForCausalLM.from_config, fills every parameter from a seeded torch generator,
rounds it to bfloat16, saves it with save_pretrained(safe_serialization=True) in bf16,
reloads the saved files in float32 (eager attention; eager experts for the MoE models)
and records the reloaded model's outputs:

  OUT/<family>/config.json, model.safetensors   as save_pretrained wrote them
                                                (generation_config.json removed)
  OUT/<family>/golden.safetensors               F32/F64/I32 arrays:
      ids          I32 [2][128]     the input: 2 sequences of ids drawn from [3, 8192)
                                    (torch generator seeded with INPUT_SEED; the same for
                                    every family)
      logit_pos    I32 [N_LAST]     the last N_LAST positions (124 .. 127)
      logits       F32 [2][N_LAST][8192]  logits at those positions
      nll          F64 [2][127]     -log softmax(logits[b][t])[ids[b][t+1]], t = 0 .. 126
                                    (log_softmax in float64 of the float32 logits)
      nll_mean     F64 [1]          mean of the 254 values; ppl F64 [1] = exp(nll_mean)
      hidden       F32 [L+1][4][H]  sequence 0, positions 0..3: hidden[0] = output of
                                    embed_tokens (Gemma-2: already times sqrt(hidden)),
                                    hidden[l] = output of decoder layer l-1
      final_norm   F32 [4][H]       the same positions after the final norm
      inv_freq     F32 [rot/2]      the rotary inverse frequencies transformers used
    MoE families only (sequence 0, every sparse layer):
      moe_layers   I32 [n]          the indices of the sparse layers
      router_logits F32 [n][128][E] the router's logits
      topk_idx     I32 [n][128][k]  the chosen experts, in torch.topk order (largest first)
      topk_weight  F32 [n][128][k]  their mixing weights
  OUT/<family>/golden.json          the same scalars plus: the ids, the greedy
      generations (2 prompts, 16 new tokens, use_cache=True, with per-step margins and a
      check against a full no-cache forward), the config fields that matter, the tensor
      layout of model.safetensors (name -> dtype, shape), the ablation checks (what
      changes when a family feature is switched off, and the first position that
      changes), versions, seed.
  OUT/<moe family>-<layout>/config.json, model.safetensors
      the same MoE weights in the other expert layout: transformers 5.x saves MoE
      checkpoints in the original per-expert layout by default (save_original_format=
      True reverts its fused 3-D in-memory tensors); the sibling holds the fused layout
      (save_original_format=False). If save_pretrained ever writes the fused layout by
      default, the sibling is the per-expert layout written by this script's own
      conversion. Both folders are loaded back with from_pretrained and must give
      bit-identical logits; the two files must also convert into each other exactly.
  OUT/versions.json, OUT/gen_families.log

Random weights (all from torch.Generator().manual_seed(seed), then rounded to bf16):
embed_tokens N(0, s^2) (tied lm_head), s = a family's "embed_std", 0.5 for all eight; linear
and expert matrices N(0, (g/sqrt(fan_in))^2) with g = 1.5 for q/k/v (Phi-3: qkv_proj) and 1
otherwise; MoE routers N(0, (2/sqrt(H))^2);
norm weights 1 + N(0, 0.2^2), except Gemma-2, whose RMSNorm multiplies by (1 + w):
w ~ N(0, 0.25^2); biases (and LayerNorm biases) N(0, 0.1^2).

Seeds: for each family seeds base, base+1, ... are tried (MAX_SEEDS at most) and the first
whose in-memory float32 model meets all of these is kept:
  - std of the stored logits > MIN_LOGIT_STD;
  - every greedy step's margin (best minus second-best logit) >= MIN_MARGIN;
  - each generation holds >= MIN_DISTINCT distinct ids and does not stop at eos (id 2);
  - MoE: for every token of both sequences and every sparse layer, the gap between the
    k-th and (k+1)-th router probability >= MIN_ROUTER_GAP (no near-ties in routing).
If no seed of the MAX_SEEDS meets them, the seed with the fewest unmet conditions is kept
and they are recorded in golden.json "unmet_conditions" (the committed Qwen3 and Gemma-2
fixtures: their greedy answers repeat one or two ids -- with embed_std 0.5 the embedding
dominates the residual stream (Gemma-2 multiplies it by sqrt(hidden)) and the tied head
predicts the current token again; a smaller embed_std for those two, e.g. 0.2 and 0.3, should
give varied answers (not tried: it means regenerating those two fixtures).

Compute: float32 on the CPU (torch.set_num_threads(8)), attn_implementation="eager",
experts_implementation="eager" (the MoE reference loop, not grouped_mm).

usage:
  python3 tests/ref/gen_families.py --out DIR [--families qwen2,gemma2]   (torch, transformers)
  python3 tests/ref/gen_families.py --dry-run   (no torch: builds and prints the configs with
                                                 transformers' config classes if importable,
                                                 estimates file sizes, checks the prompt ids)
tests/data/families/README.md says which files of OUT are committed.
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TOKENIZER = os.path.join(REPO, "tests", "data", "pycoder-5m", "tokenizer.json")

VOCAB = 8192
HIDDEN = 32
NSEQ, SEQ = 2, 128
N_LAST = 4            # logits kept for the last N_LAST positions of each sequence
N_HID_POS = 4         # hidden states kept for positions 0..N_HID_POS-1 of sequence 0
N_NEW = 16
INPUT_SEED = 1234
MIN_LOGIT_STD = 0.5
MIN_MARGIN = 1e-3
MIN_ROUTER_GAP = 1e-4
MIN_DISTINCT = 4
MAX_SEEDS = 24
BOS, EOS, PAD = 1, 2, 0

# the pycoder-5m tokenizer's ids (<s> first) for these texts, checked at run time when
# the tokenizers package is there
PROMPTS = [
    ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n'
     '    for _ in range(n):\n        a, b = b, a + b\n    return a\n',
     [1, 327, 287, 3482, 266, 1359, 1299, 10, 80, 323, 269, 435, 2160, 310, 289, 15, 393, 487,
      3482, 266, 1359, 1299, 1213, 1227, 269, 281, 14, 312, 275, 352, 14, 342, 269, 364, 375, 298,
      1125, 10, 80, 323, 265, 281, 14, 312, 275, 312, 14, 281, 439, 312, 269, 366, 281, 201]),
    ('class Stack:\n    def __init__(self):\n        self.items = []\n\n'
     '    def push(self, item):\n        self.',
     [1, 564, 451, 504, 372, 28, 269, 378, 729, 602, 744, 294, 323, 265, 320, 16, 1634, 275, 1183,
      325, 378, 303, 3747, 10, 294, 14, 2048, 323, 265, 320, 16]),
]

COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
              tie_word_embeddings=True)


def rope(theta):
    return {"rope_type": "default", "rope_theta": float(theta)}


# Each family: transformers classes, base seed, config kwargs (on top of COMMON), the
# sliding window checked (None: none), the MoE description, and the ablations: a model
# built from the same weights with a feature switched off ("config": kwargs changed,
# "state": a weight edit), whose logits must differ from the real ones ("first" = the
# first position whose logits must change; None: any).
FAMILIES = {
    "qwen2": dict(
        config_class="Qwen2Config", model_class="Qwen2ForCausalLM", seed=100,
        config=dict(intermediate_size=128, num_hidden_layers=2, rms_norm_eps=1e-6,
                    rope_parameters=rope(1e6)),
        window=None, moe=None,
        ablations=[dict(name="q/k/v biases set to 0", state="zero_qkv_bias", first=0)]),
    "qwen3": dict(
        config_class="Qwen3Config", model_class="Qwen3ForCausalLM", seed=200,
        config=dict(head_dim=16, intermediate_size=128, num_hidden_layers=2, rms_norm_eps=1e-6,
                    rope_parameters=rope(5e5)),
        window=None, moe=None,
        ablations=[dict(name="q_norm/k_norm weights set to 1", state="qk_norm_one", first=1)]),
    "mistral": dict(
        config_class="MistralConfig", model_class="MistralForCausalLM", seed=300,
        config=dict(intermediate_size=128, num_hidden_layers=2, rms_norm_eps=1e-5,
                    sliding_window=32, rope_parameters=rope(1e6)),
        window=32, moe=None,
        ablations=[dict(name="sliding_window None", config=dict(sliding_window=None), first=32)]),
    "mixtral": dict(
        config_class="MixtralConfig", model_class="MixtralForCausalLM", seed=400,
        config=dict(intermediate_size=64, num_hidden_layers=2, rms_norm_eps=1e-5,
                    num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
                    router_jitter_noise=0.0, rope_parameters=rope(5e5)),
        window=None, moe=dict(experts="num_local_experts", topk="num_experts_per_tok", norm=True),
        ablations=[dict(name="top-1 routing", config=dict(num_experts_per_tok=1), first=0)]),
    "qwen3_moe": dict(
        config_class="Qwen3MoeConfig", model_class="Qwen3MoeForCausalLM", seed=500,
        config=dict(head_dim=16, intermediate_size=128, moe_intermediate_size=32,
                    num_hidden_layers=3, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                    decoder_sparse_step=1, mlp_only_layers=[1], rms_norm_eps=1e-6,
                    rope_parameters=rope(2e5)),
        window=None, moe=dict(experts="num_experts", topk="num_experts_per_tok", norm=True),
        ablations=[dict(name="norm_topk_prob False", config=dict(norm_topk_prob=False), first=0),
                   dict(name="q_norm/k_norm weights set to 1", state="qk_norm_one", first=1)]),
    "gemma2": dict(
        config_class="Gemma2Config", model_class="Gemma2ForCausalLM", seed=600,
        config=dict(head_dim=16, intermediate_size=128, num_hidden_layers=3, rms_norm_eps=1e-6,
                    hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24,
                    sliding_window=32, attn_logit_softcapping=3.0, final_logit_softcapping=8.0,
                    rope_parameters=rope(2e4)),
        window=32, moe=None,
        ablations=[dict(name="all layers full attention", config=dict(layer_types=["full_attention"] * 3),
                        first=32),
                   dict(name="attn_logit_softcapping None", config=dict(attn_logit_softcapping=None),
                        first=None),
                   dict(name="final_logit_softcapping None", config=dict(final_logit_softcapping=None),
                        first=0, check="final_softcap"),
                   dict(name="query_pre_attn_scalar = head_dim", config=dict(query_pre_attn_scalar=16),
                        first=None),
                   dict(name="norm weights w set to 0 (scale 1 + 0)", state="norms_zero", first=0)]),
    "phi3": dict(
        config_class="Phi3Config", model_class="Phi3ForCausalLM", seed=700,
        config=dict(intermediate_size=128, num_hidden_layers=2, rms_norm_eps=1e-5,
                    sliding_window=48, original_max_position_embeddings=256,
                    rope_parameters=rope(2.5e4)),
        window=48, moe=None,
        ablations=[dict(name="sliding_window None", config=dict(sliding_window=None), first=48)]),
    "starcoder2": dict(
        config_class="Starcoder2Config", model_class="Starcoder2ForCausalLM", seed=800,
        config=dict(intermediate_size=128, num_hidden_layers=2, norm_epsilon=1e-5, use_bias=True,
                    hidden_act="gelu_pytorch_tanh", sliding_window=32, rope_parameters=rope(1e5)),
        window=32, moe=None,
        ablations=[dict(name="sliding_window None", config=dict(sliding_window=None), first=32)]),
}

# config.json keys printed for every family when present (the rest is in the file)
KEY_FIELDS = [
    "architectures", "model_type", "dtype", "torch_dtype", "vocab_size", "hidden_size",
    "intermediate_size", "moe_intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "hidden_activation", "rms_norm_eps",
    "norm_epsilon", "rope_parameters", "rope_theta", "partial_rotary_factor",
    "max_position_embeddings", "original_max_position_embeddings", "sliding_window",
    "use_sliding_window", "max_window_layers", "layer_types", "attention_bias", "use_bias",
    "mlp_bias", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
    "num_experts", "num_local_experts", "num_experts_per_tok", "norm_topk_prob",
    "decoder_sparse_step", "mlp_only_layers", "router_jitter_noise", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id",
]

LOG = []      # lines not yet written to the log file
LOGF = None   # the log file, once --out is known
SUMMARY = []  # one line per family, printed again at the end


def note(*a):
    LOG.append(" ".join(str(x) for x in a))
    if LOGF is not None:
        LOGF.write("\n".join(LOG) + "\n")
        LOGF.flush()
        LOG.clear()


def say(*a):
    print(" ".join(str(x) for x in a), flush=True)
    note(*a)


def full_config_kwargs(fam):
    kw = dict(COMMON)
    kw.update(FAMILIES[fam]["config"])
    return kw


def st_header(path):
    """{name: (dtype, shape)} of a safetensors file, read from its JSON header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    return {k: (v["dtype"], v["shape"]) for k, v in h.items() if k != "__metadata__"}, h.get("__metadata__")


def estimate_bytes(fam, c):
    """bf16 bytes of the checkpoint, from the config (for --dry-run)."""
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or H // nh
    n = V * H + H * (2 if fam == "starcoder2" else 1)
    for li in range(L):
        n += H * nh * hd + 2 * H * nkv * hd + nh * hd * H
        if fam == "qwen2":
            n += nh * hd + 2 * nkv * hd
        if fam == "starcoder2":
            n += nh * hd + 2 * nkv * hd + H + 4 * H            # attention biases + 2 LayerNorms
            n += 2 * H * c["intermediate_size"] + c["intermediate_size"] + H
            continue
        if fam in ("qwen3", "qwen3_moe"):
            n += 2 * hd
        n += (4 if fam == "gemma2" else 2) * H
        if fam == "mixtral":
            E = c["num_local_experts"]
            n += E * H + E * 3 * H * c["intermediate_size"]
        elif fam == "qwen3_moe" and li not in c["mlp_only_layers"]:
            E = c.get("num_experts") or c["num_local_experts"]
            n += E * H + E * 3 * H * c["moe_intermediate_size"]
        else:
            n += 3 * H * c["intermediate_size"]
    return 2 * n


def dry_run():
    try:
        import transformers
        have_tf = True
        say("transformers", transformers.__version__, "(config classes only)")
    except Exception as e:  # noqa: BLE001
        have_tf = False
        say("transformers not importable (%s): plain dicts" % e)
    total = 0
    for fam, spec in FAMILIES.items():
        kw = full_config_kwargs(fam)
        if have_tf:
            cfg = getattr(transformers, spec["config_class"])(**kw)
            d = cfg.to_dict()
            d["architectures"] = [spec["model_class"]]
        else:
            d = dict(kw, model_type=fam)
        est = estimate_bytes(fam, d if have_tf else kw)
        mult = 2 if spec["moe"] else 1
        total += mult * est + NSEQ * N_LAST * VOCAB * 4 + 20000
        say("== %s: %s, about %.0f KiB of bf16 weights%s" % (fam, spec["model_class"], est / 1024,
                                                              " (x2: fused + per-expert)" if mult == 2 else ""))
        for k in KEY_FIELDS:
            if k in d:
                say("   %s = %s" % (k, json.dumps(d[k])))
    say("about %.2f MiB in all (weights + goldens, %d logit rows of %d per family)"
        % (total / 2**20, NSEQ * N_LAST, VOCAB))
    try:
        import tokenizers
        tok = tokenizers.Tokenizer.from_file(TOKENIZER)
        for text, ids in PROMPTS:
            assert tok.encode(text).ids == ids, (text, tok.encode(text).ids)
        say("prompt ids match tokenizers", tokenizers.__version__, [len(i) for _, i in PROMPTS])
    except ImportError:
        say("tokenizers not importable: prompt ids not checked")


# ---------------------------------------------------------------- torch part

def randomize(model, fam, gen):
    import torch
    gemma = fam == "gemma2"
    estd = FAMILIES[fam].get("embed_std", 0.5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.split(".")
            r = torch.randn(p.shape, generator=gen)
            if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                v = estd * r
            elif name.endswith(".bias"):
                v = 0.1 * r
            elif parts[-1] == "weight" and "norm" in parts[-2]:
                v = 0.25 * r if gemma else 1.0 + 0.2 * r
            elif name.endswith("mlp.gate.weight"):  # MoE router [E][H]
                v = 2.0 / math.sqrt(p.shape[-1]) * r
            else:
                g = 1.5 if parts[-2] in ("q_proj", "k_proj", "v_proj", "qkv_proj") else 1.0
                v = g / math.sqrt(p.shape[-1]) * r
            p.copy_(v.to(torch.bfloat16).float())  # the values the bf16 file will hold


def model_kwargs(fam):
    import torch
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if FAMILIES[fam]["moe"]:
        kw["experts_implementation"] = "eager"
    return kw


def build(fam, cfg_kw):
    import transformers
    spec = FAMILIES[fam]
    cfg = getattr(transformers, spec["config_class"])(**cfg_kw)
    m = transformers.AutoModelForCausalLM.from_config(cfg, **model_kwargs(fam))
    assert type(m).__name__ == spec["model_class"], type(m).__name__
    return m.eval()


def is_moe_block(mlp):
    return hasattr(mlp, "experts") and hasattr(mlp, "gate")


def forward(model, ids):
    """float32 forward of ids [2][128] with hooks: logits [2][128][V], loss, hidden, routers."""
    import torch
    hs, fin, routers = {}, {}, {}

    def grab(key):
        def f(m, i, o):
            o = o[0] if isinstance(o, tuple) else o
            hs[key] = o[0, :N_HID_POS].detach().float().clone()
        return f

    def grab_router(li):
        def f(m, i, o):
            routers[li] = tuple(t.detach().clone() for t in o)
        return f

    hooks = [model.model.embed_tokens.register_forward_hook(grab(0))]
    for li, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(grab(li + 1)))
        if is_moe_block(layer.mlp):
            hooks.append(layer.mlp.gate.register_forward_hook(grab_router(li)))
    hooks.append(model.model.norm.register_forward_hook(
        lambda m, i, o: fin.__setitem__("n", o[0, :N_HID_POS].detach().float().clone())))
    try:
        with torch.no_grad():
            out = model(ids, labels=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    L = len(model.model.layers)
    hidden = torch.stack([hs[i] for i in range(L + 1)])
    return out.logits.float(), float(out.loss), hidden, fin["n"], routers


def router_summary(routers, topk, norm):
    """(per-layer seq-0 arrays, min gap between the k-th and (k+1)-th probability over both
    sequences); also re-derives the weights: softmax over all experts, top-k, renormalised."""
    import torch
    layers = sorted(routers)
    lg, idx, w = [], [], []
    gap = float("inf")
    rule_ok = True
    for li in layers:
        logits, scores, ind = routers[li]
        p = torch.softmax(logits.float(), dim=-1)
        top, ti = torch.topk(p, topk + 1 if topk < p.shape[-1] else topk, dim=-1)
        ref = top[:, :topk] / top[:, :topk].sum(-1, keepdim=True) if norm else top[:, :topk]
        rule_ok = rule_ok and torch.equal(ti[:, :topk], ind) and torch.allclose(ref, scores.float(), rtol=1e-6,
                                                                                atol=1e-7)
        if topk < p.shape[-1]:
            gap = min(gap, float((top[:, topk - 1] - top[:, topk]).min()))
        lg.append(logits[:SEQ].float())
        idx.append(ind[:SEQ].to(torch.int32))
        w.append(scores[:SEQ].float())
    return layers, torch.stack(lg), torch.stack(idx), torch.stack(w), gap, rule_ok


def greedy(model, prompt):
    import torch
    x = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        g = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=N_NEW,
                           use_cache=True, output_logits=True, return_dict_in_generate=True,
                           pad_token_id=PAD, eos_token_id=EOS)
    new = g.sequences[0, len(prompt):].tolist()
    steps = torch.stack([lg[0].float() for lg in g.logits])  # [n][V]
    top = torch.topk(steps, 2, dim=-1).values
    margins = (top[:, 0] - top[:, 1]).tolist()
    # the same tokens from one full forward without a cache
    full = torch.tensor([prompt + new], dtype=torch.long)
    with torch.no_grad():
        lf = model(full, use_cache=False).logits[0].float()
    rows = lf[len(prompt) - 1: len(prompt) - 1 + len(new)]
    nocache_ids = rows.argmax(-1).tolist()
    return {"prompt_ids": prompt, "new_ids": new, "finish": "eos" if EOS in new else "length",
            "margins": margins, "min_margin": min(margins),
            "nocache_same_ids": nocache_ids == new,
            "nocache_max_abs_logit_diff": float((rows - steps[: len(new)]).abs().max())}


def evaluate(fam, model, ids):
    import torch
    spec = FAMILIES[fam]
    logits, loss, hidden, fin, routers = forward(model, ids)
    lp = torch.log_softmax(logits.double(), dim=-1)
    nll = -lp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # [2][127]
    r = {"logits_all": logits, "loss": loss, "hidden": hidden, "final_norm": fin, "nll": nll,
         "nll_mean": float(nll.mean()), "logit_std": float(logits[:, -N_LAST:].std())}
    if spec["moe"]:
        c = model.config
        k = getattr(c, spec["moe"]["topk"])
        r["moe"] = router_summary(routers, k, spec["moe"]["norm"])
    r["gen"] = [greedy(model, p) for _, p in PROMPTS]
    return r


def problems(r):
    out = []
    if r["logit_std"] <= MIN_LOGIT_STD:
        out.append("logit std %.3g" % r["logit_std"])
    for g in r["gen"]:
        if g["min_margin"] < MIN_MARGIN:
            out.append("greedy margin %.3g" % g["min_margin"])
        if len(set(g["new_ids"])) < MIN_DISTINCT:
            out.append("%d distinct generated ids" % len(set(g["new_ids"])))
        if g["finish"] != "length":
            out.append("eos generated")
        if not g["nocache_same_ids"]:
            out.append("cached generation differs from the no-cache forward")
    if "moe" in r and r["moe"][4] < MIN_ROUTER_GAP:
        out.append("router gap %.3g" % r["moe"][4])
    if "moe" in r and not r["moe"][5]:
        out.append("router weights are not softmax -> top-k -> renormalised")
    return out


def edit_state(sd, what):
    sd = {k: v.clone() for k, v in sd.items()}
    for k in sd:
        last = k.split(".")
        if what == "zero_qkv_bias" and k.endswith(".bias") and last[-2] in ("q_proj", "k_proj", "v_proj"):
            sd[k].zero_()
        elif what == "qk_norm_one" and last[-2] in ("q_norm", "k_norm"):
            sd[k].fill_(1.0)
        elif what == "norms_zero" and last[-1] == "weight" and "norm" in last[-2]:
            sd[k].zero_()
    return sd


def ablate(fam, model, ids, logits, ab):
    """Logits of the same weights with a feature switched off; where they first differ."""
    import torch
    kw = full_config_kwargs(fam)
    kw.update(ab.get("config", {}))
    m = build(fam, kw)
    sd = model.state_dict()
    if ab.get("state"):
        sd = edit_state(sd, ab["state"])
    m.load_state_dict(sd, strict=True)
    with torch.no_grad():
        la = m(ids, use_cache=False).logits.float()
    d = (la - logits).abs().amax(dim=(0, 2))  # per position
    changed = (d > 1e-5).nonzero()
    first = int(changed[0]) if len(changed) else None
    res = {"name": ab["name"], "max_abs_diff": float(d.max()), "first_changed_position": first,
           "expected_first": ab.get("first"),
           "max_abs_diff_before_first": float(d[:first].max()) if first else 0.0}
    ok = first is not None and (ab.get("first") is None or first == ab["first"])
    if ab.get("check") == "final_softcap":
        cap = model.config.final_logit_softcapping
        err = float((cap * torch.tanh(la / cap) - logits).abs().max())
        res["cap_tanh_raw_max_abs_err"] = err
        ok = ok and err < 1e-4
    res["ok"] = ok
    return res


def save_dir(model_bf16, d, **kw):
    shutil.rmtree(d, ignore_errors=True)
    model_bf16.save_pretrained(d, safe_serialization=True, **kw)
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    return sorted(os.listdir(d))


def load_dir(fam, d):
    import transformers
    m, info = transformers.AutoModelForCausalLM.from_pretrained(d, output_loading_info=True, **model_kwargs(fam))
    bad = {}
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        v = [str(x) for x in (info.get(k) or []) if x != "lm_head.weight"]  # tied: never in the file
        if v:
            bad[k] = sorted(v)
    assert not bad, "loading %s: %s" % (d, bad)
    return m.eval()


def moe_layout(names, fam):
    if any(n.endswith("experts.gate_up_proj") for n in names):
        return "fused"
    if any((".experts.0.w1." in n) or (".experts.0.gate_proj." in n) for n in names):
        return "split"
    return "unknown"


def to_split(sd, fam):
    """fused 3-D experts -> the per-expert names older transformers and GPTQ loaders use."""
    out = {}
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            pre = k[: -len("gate_up_proj")]
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                if fam == "mixtral":
                    p = pre.replace(".mlp.", ".block_sparse_moe.")
                    out[f"{p}{e}.w1.weight"] = v[e, :inter].contiguous()
                    out[f"{p}{e}.w3.weight"] = v[e, inter:].contiguous()
                else:
                    out[f"{pre}{e}.gate_proj.weight"] = v[e, :inter].contiguous()
                    out[f"{pre}{e}.up_proj.weight"] = v[e, inter:].contiguous()
        elif k.endswith("mlp.experts.down_proj"):
            pre = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                if fam == "mixtral":
                    out[f"{pre.replace('.mlp.', '.block_sparse_moe.')}{e}.w2.weight"] = v[e].contiguous()
                else:
                    out[f"{pre}{e}.down_proj.weight"] = v[e].contiguous()
        elif fam == "mixtral" and ".mlp." in k:
            out[k.replace(".mlp.", ".block_sparse_moe.")] = v
        else:
            out[k] = v
    return out


def save_goldens(d, fam, r, ids, model):
    import torch
    from safetensors.torch import save_file
    t = {"ids": ids.to(torch.int32).contiguous(),
         "logit_pos": torch.arange(SEQ - N_LAST, SEQ, dtype=torch.int32),
         "logits": r["logits_all"][:, -N_LAST:].contiguous(),
         "nll": r["nll"].contiguous(),
         "nll_mean": torch.tensor([r["nll_mean"]], dtype=torch.float64),
         "ppl": torch.tensor([math.exp(r["nll_mean"])], dtype=torch.float64),
         "hidden": r["hidden"].contiguous(),
         "final_norm": r["final_norm"].contiguous(),
         "inv_freq": model.model.rotary_emb.inv_freq.detach().float().clone()}
    if "moe" in r:
        layers, lg, idx, w, _, _ = r["moe"]
        t["moe_layers"] = torch.tensor(layers, dtype=torch.int32)
        t["router_logits"] = lg.contiguous()
        t["topk_idx"] = idx.contiguous()
        t["topk_weight"] = w.contiguous()
    save_file(t, os.path.join(d, "golden.safetensors"))
    return {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in t.items()}


def run_family(fam, out, ids, versions):
    import torch
    spec = FAMILIES[fam]
    t0 = time.time()
    kw = full_config_kwargs(fam)
    chosen, tried = None, []
    for seed in range(spec["seed"], spec["seed"] + MAX_SEEDS):
        torch.manual_seed(seed)
        m = build(fam, kw)
        randomize(m, fam, torch.Generator().manual_seed(seed))
        r = evaluate(fam, m, ids)
        why = problems(r)
        tried.append({"seed": seed, "problems": why})
        if not why:
            chosen = (seed, m, r)
            break
    if chosen is None:
        best = min(tried, key=lambda x: len(x["problems"]))
        say("  no seed met every condition; using", best)
        seed = best["seed"]
        torch.manual_seed(seed)
        m = build(fam, kw)
        randomize(m, fam, torch.Generator().manual_seed(seed))
        chosen = (seed, m, evaluate(fam, m, ids))
    seed, mem, rmem = chosen
    note(f"  seeds tried: {tried}")

    d = os.path.join(out, fam)
    mem_sd = {k: v.clone() for k, v in mem.state_dict().items()}
    import copy
    bf = copy.deepcopy(mem).to(torch.bfloat16)
    files = save_dir(bf, d)
    names, meta = st_header(os.path.join(d, "model.safetensors"))
    cfgj = json.load(open(os.path.join(d, "config.json")))

    # reload the saved files in float32; every parameter must be the in-memory value
    ref = load_dir(fam, d)
    for k, v in ref.state_dict().items():
        if k in mem_sd and not torch.equal(v, mem_sd[k]):
            raise AssertionError(f"{k}: reloaded weights differ")
    r = evaluate(fam, ref, ids)
    reload_diff = float((r["logits_all"] - rmem["logits_all"]).abs().max())
    assert [g["new_ids"] for g in r["gen"]] == [g["new_ids"] for g in rmem["gen"]], "reloaded model generates differently"
    left = problems(r)
    if left:
        say(f"   !! conditions not met by the kept seed: {left}")
    impl = {"attn": getattr(ref.config, "_attn_implementation", None),
            "experts": getattr(ref.config, "_experts_implementation", None)}

    say(f"== {fam}: {spec['model_class']} seed {seed}, files {files}, "
        f"model.safetensors {os.path.getsize(os.path.join(d, 'model.safetensors'))} bytes")
    for k in KEY_FIELDS:
        if k in cfgj:
            say(f"   {k} = {json.dumps(cfgj[k])}")
    note("  full config.json: " + json.dumps(cfgj, sort_keys=True))
    say(f"   tensors ({len(names)}, metadata {meta}):")
    shown = 0
    for n in sorted(names):
        # print layer 0 and 1 (qwen3_moe's layer 1 is dense) and the non-layer tensors, experts 0..1
        if (".layers." in n and not any(f".layers.{i}." in n for i in (0, 1))) or \
                any(f".experts.{e}." in n for e in range(2, 64)):
            note(f"     {n} {names[n][0]} {names[n][1]}")
            continue
        say(f"     {n} {names[n][0]} {names[n][1]}")
        shown += 1
    say(f"   ({len(names) - shown} more of layers >= 2 / experts >= 2 in the log)")

    # ablations: the family's features must change the logits, from the right position on
    abl = []
    for ab in spec["ablations"]:
        try:
            abl.append(ablate(fam, ref, ids, r["logits_all"], ab))
        except Exception as e:  # noqa: BLE001
            abl.append({"name": ab["name"], "error": repr(e), "ok": False, "max_abs_diff": float("nan"),
                        "first_changed_position": None, "expected_first": ab.get("first"),
                        "max_abs_diff_before_first": float("nan")})
    for a in abl:
        say(f"   ablation {a['name']!r}: max|dlogit| {a['max_abs_diff']:.4g}, first changed position "
            f"{a['first_changed_position']} (expected {a['expected_first']}), before it "
            f"{a['max_abs_diff_before_first']:.3g}" +
            (f", cap*tanh(raw/cap) err {a['cap_tanh_raw_max_abs_err']:.3g}" if "cap_tanh_raw_max_abs_err" in a else "")
            + ("" if a["ok"] else "  <-- NOT AS EXPECTED"))

    # gemma2: the embedding output is embed * sqrt(hidden) in float32
    extra = {}
    if fam == "gemma2":
        e = ref.model.embed_tokens.weight.detach()[ids[0, :N_HID_POS]] * torch.tensor(HIDDEN ** 0.5)
        extra["embed_scale_max_abs_err"] = float((e - r["hidden"][0]).abs().max())
        say(f"   hidden[0] == embed[ids] * sqrt({HIDDEN}) (float32): max err {extra['embed_scale_max_abs_err']:.3g}")

    # MoE: the other expert layout, loaded back, must give bit-identical logits
    sibling = None
    try:
        sibling = check_sibling(fam, spec, out, d, bf, names, cfgj, ids, r)
    except Exception as e:  # noqa: BLE001
        import traceback
        note(traceback.format_exc())
        say(f"   !! MoE sibling FAILED: {e!r}")
        sibling = {"error": repr(e), "layout": "?", "logits_bit_identical_after_from_pretrained": False}
    st = save_goldens(d, fam, r, ids, ref)
    for g in r["gen"]:
        say(f"   greedy {len(g['prompt_ids'])}+{len(g['new_ids'])}: {g['new_ids']} min margin "
            f"{g['min_margin']:.3g}, no-cache same {g['nocache_same_ids']} "
            f"(max |dlogit| {g['nocache_max_abs_logit_diff']:.2g})")
    say(f"   nll mean {r['nll_mean']:.6f} (transformers loss {r['loss']:.6f}), ppl {math.exp(r['nll_mean']):.2f}, "
        f"logit std {r['logit_std']:.3f}, reload max |dlogit| {reload_diff:.3g}")
    return finish_family(fam, spec, d, seed, tried, versions, cfgj, files, names, meta, st, ids, r, abl,
                         reload_diff, impl, left, sibling, extra, t0)


def check_sibling(fam, spec, out, d, bf, names, cfgj, ids, r):
    import torch
    if not spec["moe"]:
        return None
    layout = moe_layout(names, fam)
    other = "fused" if layout == "split" else "split"
    d2 = os.path.join(out, f"{fam}-{other}")
    if layout == "split":
        files2 = save_dir(bf, d2, save_original_format=False)
        how = "save_pretrained(save_original_format=False)"
    else:
        from safetensors.torch import load_file, save_file
        shutil.rmtree(d2, ignore_errors=True)
        os.makedirs(d2)
        shutil.copy(os.path.join(d, "config.json"), d2)
        save_file(to_split(load_file(os.path.join(d, "model.safetensors")), fam),
                  os.path.join(d2, "model.safetensors"), metadata={"format": "pt"})
        files2 = sorted(os.listdir(d2))
        how = "this script's to_split() of the default file"
    names2, meta2 = st_header(os.path.join(d2, "model.safetensors"))
    from safetensors.torch import load_file
    a = load_file(os.path.join(d, "model.safetensors"))
    b = load_file(os.path.join(d2, "model.safetensors"))
    fused, split = (b, a) if layout == "split" else (a, b)
    conv = to_split(fused, fam)
    conv_exact = sorted(conv) == sorted(split) and all(torch.equal(conv[k], split[k]) for k in split)
    m2 = load_dir(fam, d2)
    with torch.no_grad():
        l2 = m2(ids, use_cache=False).logits.float()
    same = torch.equal(l2, r["logits_all"])
    cfg_same = json.load(open(os.path.join(d2, "config.json"))) == cfgj
    sibling = {"folder": f"{fam}-{other}", "layout": other, "default_layout": layout, "made_by": how,
               "files": files2, "tensors": {n: list(v) for n, v in sorted(names2.items())},
               "metadata": meta2, "config_identical": cfg_same,
               "to_split_of_fused_equals_split_exactly": conv_exact,
               "logits_bit_identical_after_from_pretrained": same}
    say(f"   default layout: {layout}; sibling {fam}-{other} ({how}), "
        f"{os.path.getsize(os.path.join(d2, 'model.safetensors'))} bytes; config identical {cfg_same}; "
        f"to_split(fused) == split exactly: {conv_exact}; logits bit-identical: {same}")
    for n in sorted(names2):
        if ".layers.0." in n or ".layers." not in n:
            say(f"     {n} {names2[n][0]} {names2[n][1]}")
        else:
            note(f"     {n} {names2[n][0]} {names2[n][1]}")
    assert conv_exact and same, "MoE sibling check failed"
    layers, lg, idx, w, gap, _ = r["moe"]
    cnt = torch.bincount(idx.flatten().long(), minlength=lg.shape[-1]).tolist()
    say(f"   routing: sparse layers {layers}, min k-th vs (k+1)-th prob gap {gap:.3g}, "
        f"seq-0 expert counts {cnt}")
    return sibling


def finish_family(fam, spec, d, seed, tried, versions, cfgj, files, names, meta, st, ids, r, abl,
                  reload_diff, impl, left, sibling, extra, t0):
    doc = {
        "generator": "tests/ref/gen_families.py",
        "family": fam, "model_type": cfgj.get("model_type"), "architectures": cfgj.get("architectures"),
        "seed": seed, "seeds_tried": tried, "versions": versions,
        "compute": "float32 on the CPU, attn_implementation eager" +
                   (", experts_implementation eager" if spec["moe"] else "") +
                   ", from the saved bf16 weights reloaded with from_pretrained(dtype=float32)",
        "weights": "embed N(0,%g^2) tied; " % spec.get("embed_std", 0.5) + "matrices N(0,(g/sqrt(fan_in))^2), g=1.5 for q/k/v(/qkv), 1 otherwise; "
                   "routers N(0,(2/sqrt(H))^2); norms 1+N(0,0.2^2) (gemma2: w~N(0,0.25^2), scale 1+w); "
                   "biases N(0,0.1^2); rounded to bf16",
        "config": {k: cfgj[k] for k in KEY_FIELDS if k in cfgj},
        "files": files,
        "tensors": {n: list(v) for n, v in sorted(names.items())},
        "safetensors_metadata": meta,
        "golden_tensors": st,
        "ids": r_ids(ids),
        "logit_pos": list(range(SEQ - N_LAST, SEQ)),
        "nll_mean": r["nll_mean"], "ppl": math.exp(r["nll_mean"]), "loss_transformers": r["loss"],
        "logit_std": r["logit_std"],
        "generation": [dict(g, prompt_text=PROMPTS[i][0]) for i, g in enumerate(r["gen"])],
        "ablations": abl,
        "reload_max_abs_logit_diff": reload_diff,
        "implementations": impl,
        "unmet_conditions": left,
        "sibling": sibling,
        **extra,
    }
    if spec["moe"]:
        layers, lg, idx, w, gap, _ = r["moe"]
        doc["moe"] = {"sparse_layers": layers, "num_experts": int(lg.shape[-1]), "top_k": int(idx.shape[-1]),
                      "min_router_gap": gap, "topk_idx_seq0": idx.tolist()}
    with open(os.path.join(d, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    bad = [a["name"] for a in abl if not a["ok"]]
    say(f"   {fam} done in {time.time() - t0:.1f} s, impl {impl}" +
        (f"; ablations not as expected: {bad}" if bad else ""))
    SUMMARY.append(f"{fam:10s} seed {seed} nll {r['nll_mean']:.5f} logit-std {r['logit_std']:.2f} "
                   f"gen {[g['new_ids'][:6] for g in r['gen']]} ablations "
                   f"{[(a['first_changed_position'], a['ok']) for a in abl]}"
                   + (f" sibling {sibling['layout']} same {sibling['logits_bit_identical_after_from_pretrained']}"
                      if sibling else "") + (f" UNMET {left}" if left else ""))
    sib_ok = sibling is None or sibling.get("logits_bit_identical_after_from_pretrained", False)
    return not bad and not left and sib_ok


def r_ids(ids):
    return ids.tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--families", default=",".join(FAMILIES))
    a = ap.parse_args()
    if a.dry_run:
        dry_run()
        return 0
    if not a.out:
        sys.exit("--out DIR or --dry-run")
    import numpy
    import safetensors
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(8)
    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                "numpy": numpy.__version__}
    try:
        import tokenizers
        versions["tokenizers"] = tokenizers.__version__
        tok = tokenizers.Tokenizer.from_file(TOKENIZER)
        for text, pids in PROMPTS:
            assert tok.encode(text).ids == pids, "prompt ids differ from the tokenizer's"
        say("prompt ids checked with tokenizers", tokenizers.__version__)
    except ImportError:
        say("tokenizers missing: prompt ids not checked")
    os.makedirs(a.out, exist_ok=True)
    global LOGF
    LOGF = open(os.path.join(a.out, "gen_families.log"), "w", encoding="utf-8")
    say("versions", versions)
    g = torch.Generator().manual_seed(INPUT_SEED)
    ids = torch.randint(3, VOCAB, (NSEQ, SEQ), generator=g)
    ok = True
    for fam in a.families.split(","):
        try:
            ok = run_family(fam, a.out, ids, versions) and ok
        except Exception as e:  # noqa: BLE001 -- keep going: one device run must give every family
            import traceback
            ok = False
            say(f"!! {fam} FAILED: {e!r}")
            note(traceback.format_exc())
            print(traceback.format_exc()[-3000:], flush=True)
            SUMMARY.append(f"{fam:10s} FAILED {e!r}"[:300])
    with open(os.path.join(a.out, "versions.json"), "w") as f:
        json.dump(versions, f, indent=1)
        f.write("\n")
    total = 0
    for root, _, fs in os.walk(a.out):
        for fn in fs:
            total += os.path.getsize(os.path.join(root, fn))
    say("== summary")
    for line in SUMMARY:
        say(line)
    say(f"total {total} bytes in {a.out}; {'ok' if ok else 'SOME CHECKS FAILED'}")
    LOGF.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
