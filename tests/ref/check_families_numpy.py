#!/usr/bin/env python3
"""check_families_numpy.py -- an independent numpy re-implementation of the eight families of
tests/data/families/ (made by gen_families.py with transformers), checked against their goldens.

It is the executable statement of the semantics gq's C forward must reproduce, written from
the transformers 5.17 modeling files and confirmed by the goldens (float64 here, float32 there):

  embedding     x = E[ids]; Gemma-2 multiplies by sqrt(hidden) (transformers: the float32
                constant times the embedding row, in the weights' dtype)
  RMSNorm       x / sqrt(mean(x^2) + eps) * w; Gemma-2: * (1 + w)
  LayerNorm     StarCoder2: (x - mean) / sqrt(var + eps) * w + b (biased variance)
  attention     q, k, v (+ bias: Qwen2 q/k/v only; StarCoder2 all four incl. o_proj);
                Phi-3 qkv_proj rows = [q (heads*hd) | k (kv*hd) | v (kv*hd)];
                Qwen3/Qwen3-MoE: RMSNorm over head_dim on each q and k head (q_norm/k_norm),
                before RoPE; RoPE rotate_half (pairs i, i + rot/2), inv_freq =
                theta^(-2i/rot), rot = head_dim (* partial_rotary_factor);
                scores = q.k * scale, scale = head_dim^-0.5 (Gemma-2: query_pre_attn_scalar^-0.5),
                Gemma-2: scores = cap * tanh(scores / cap) before the mask;
                mask: key j visible from query i if j <= i and, on a sliding layer,
                j > i - sliding_window (the window holds sliding_window keys, itself included);
                GQA: query head h reads kv head h // (heads / kv_heads)
  MLP           down(act(gate(x)) * up(x)), act silu (Gemma-2: gelu tanh); Phi-3 gate_up_proj
                rows = [gate (I) | up (I)]; StarCoder2: c_proj(gelu_tanh(c_fc(x) + b)) + b
  MoE           p = softmax(router(x)) over all experts; top-k by p; weights p_topk / sum(p_topk)
                (Mixtral always; Qwen3-MoE when norm_topk_prob); out = sum w_e * expert_e(x);
                Qwen3-MoE layer li is dense when li in mlp_only_layers or
                (li + 1) % decoder_sparse_step != 0
  layers        pre-norm residual blocks; Gemma-2: h = x + post_attn_norm(attn(in_norm(x)));
                h = h + post_ff_norm(mlp(pre_ff_norm(h)))
  head          final norm, logits = h E^T (tied); Gemma-2: cap * tanh(logits / cap)

Sliding layers: mistral, mixtral, phi3, starcoder2: every layer when sliding_window is set;
qwen2/qwen3: only with use_sliding_window, layers >= max_window_layers (config layer_types);
gemma2: layer_types (even layers "sliding_attention").

usage: python3 tests/ref/check_families_numpy.py [DIR]   (DIR defaults to tests/data/families;
       needs numpy only). Exit status 0 when every family matches.
"""
import json
import math
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(os.path.dirname(HERE), "data", "families")
FAMILIES = ["qwen2", "qwen3", "mistral", "mixtral", "qwen3_moe", "gemma2", "phi3", "starcoder2"]
DT = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "F64": np.float64, "I32": np.int32,
      "I64": np.int64}


def load_st(path):
    """{name: float64/int array}; BF16 widened exactly (bits << 16)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=DT[v["dtype"]]).reshape(v["shape"])
        if v["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[k] = arr.astype(np.float64) if arr.dtype.kind == "f" else arr.astype(np.int64)
    return out


class Model:
    def __init__(self, d):
        self.c = c = json.load(open(os.path.join(d, "config.json")))
        self.w = load_st(os.path.join(d, "model.safetensors"))
        self.t = c["model_type"]
        self.H = c["hidden_size"]
        self.nh, self.nkv = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c.get("head_dim") or self.H // self.nh       # Mixtral writes "head_dim": null
        rp = c.get("rope_parameters") or {}
        self.theta = rp.get("rope_theta", c.get("rope_theta", 10000.0))
        self.rot = int(self.hd * rp.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)))
        self.inv_freq = 1.0 / self.theta ** (np.arange(0, self.rot, 2, dtype=np.float64) / self.rot)
        self.eps = c.get("rms_norm_eps", c.get("norm_epsilon"))
        self.act = c.get("hidden_activation") or c.get("hidden_act")
        self.L = c["num_hidden_layers"]
        self.E = c.get("num_experts") or c.get("num_local_experts")
        lt = c.get("layer_types")
        sw = c.get("sliding_window")
        if self.t == "gemma2":
            self.window = [sw if lt[i] == "sliding_attention" else None for i in range(self.L)]
        elif self.t in ("qwen2", "qwen3", "qwen3_moe"):
            use = c.get("use_sliding_window", False)
            self.window = [sw if use and (lt[i] if lt else "") == "sliding_attention" else None
                           for i in range(self.L)]
        else:
            self.window = [sw] * self.L
        self.routers = {}

    def p(self, name):
        return self.w["model." + name]

    def norm(self, x, pre):
        if self.t == "starcoder2":
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(var + self.eps) * self.p(pre + ".weight") + self.p(pre + ".bias")
        w = self.p(pre + ".weight")
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps)
        return y * (1.0 + w) if self.t == "gemma2" else y * w

    def lin(self, x, pre, bias=None):
        y = x @ self.p(pre + ".weight").T
        b = "model." + pre + ".bias"
        if b in self.w:
            y = y + self.w[b]
        return y

    def actf(self, x):
        if self.act == "silu":
            return x / (1.0 + np.exp(-x))
        if self.act in ("gelu_pytorch_tanh", "gelu_tanh"):
            return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
        raise ValueError(self.act)

    def rope(self, x, pos):  # x [T][heads][hd]
        f = pos[:, None] * self.inv_freq[None, :]
        cos = np.concatenate([np.cos(f), np.cos(f)], -1)[:, None, :]
        sin = np.concatenate([np.sin(f), np.sin(f)], -1)[:, None, :]
        r, rest = x[..., : self.rot], x[..., self.rot:]
        half = self.rot // 2
        rh = np.concatenate([-r[..., half:], r[..., :half]], -1)
        return np.concatenate([r * cos + rh * sin, rest], -1)

    def attn(self, x, li):
        T = x.shape[0]
        pre = f"layers.{li}.self_attn"
        if self.t == "phi3":
            qkv = self.lin(x, pre + ".qkv_proj")
            nq, nk = self.nh * self.hd, self.nkv * self.hd
            q, k, v = qkv[:, :nq], qkv[:, nq:nq + nk], qkv[:, nq + nk:]
        else:
            q, k, v = self.lin(x, pre + ".q_proj"), self.lin(x, pre + ".k_proj"), self.lin(x, pre + ".v_proj")
        q = q.reshape(T, self.nh, self.hd)
        k = k.reshape(T, self.nkv, self.hd)
        v = v.reshape(T, self.nkv, self.hd)
        if self.t in ("qwen3", "qwen3_moe"):
            q = q / np.sqrt((q * q).mean(-1, keepdims=True) + self.eps) * self.p(pre + ".q_norm.weight")
            k = k / np.sqrt((k * k).mean(-1, keepdims=True) + self.eps) * self.p(pre + ".k_norm.weight")
        pos = np.arange(T, dtype=np.float64)
        q, k = self.rope(q, pos), self.rope(k, pos)
        scale = self.c["query_pre_attn_scalar"] ** -0.5 if self.t == "gemma2" else self.hd ** -0.5
        i, j = np.arange(T)[:, None], np.arange(T)[None, :]
        vis = j <= i
        if self.window[li]:
            vis &= j > i - self.window[li]
        out = np.zeros((T, self.nh, self.hd))
        g = self.nh // self.nkv
        for h in range(self.nh):
            s = (q[:, h] @ k[:, h // g].T) * scale
            cap = self.c.get("attn_logit_softcapping") if self.t == "gemma2" else None
            if cap:
                s = cap * np.tanh(s / cap)
            s = np.where(vis, s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[:, h] = s @ v[:, h // g]
        return self.lin(out.reshape(T, -1), pre + ".o_proj")

    def dense(self, x, pre):
        if self.t == "phi3":
            gu = self.lin(x, pre + ".gate_up_proj")
            n = gu.shape[-1] // 2
            return self.lin(self.actf(gu[:, :n]) * gu[:, n:], pre + ".down_proj")
        if self.t == "starcoder2":
            return self.lin(self.actf(self.lin(x, pre + ".c_fc")), pre + ".c_proj")
        return self.lin(self.actf(self.lin(x, pre + ".gate_proj")) * self.lin(x, pre + ".up_proj"),
                        pre + ".down_proj")

    def expert(self, x, li, e):
        w = self.w
        L = f"model.layers.{li}."
        if L + "mlp.experts.gate_up_proj" in w:                   # fused 3-D layout
            gu = w[L + "mlp.experts.gate_up_proj"][e]             # [2I][H]: rows gate | up
            n = gu.shape[0] // 2
            g, u, dn = gu[:n], gu[n:], w[L + "mlp.experts.down_proj"][e]
        elif self.t == "mixtral":                                 # w1 gate, w3 up, w2 down
            p = L + f"block_sparse_moe.experts.{e}."
            g, u, dn = w[p + "w1.weight"], w[p + "w3.weight"], w[p + "w2.weight"]
        else:
            p = L + f"mlp.experts.{e}."
            g, u, dn = w[p + "gate_proj.weight"], w[p + "up_proj.weight"], w[p + "down_proj.weight"]
        return (self.actf(x @ g.T) * (x @ u.T)) @ dn.T

    def moe(self, x, li):
        L = f"model.layers.{li}."
        gate = self.w.get(L + "mlp.gate.weight")
        if gate is None:
            gate = self.w[L + "block_sparse_moe.gate.weight"]
        logits = x @ gate.T
        pr = np.exp(logits - logits.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        k = self.c["num_experts_per_tok"]
        idx = np.argsort(-pr, axis=-1, kind="stable")[:, :k]
        wt = np.take_along_axis(pr, idx, -1)
        if self.t == "mixtral" or self.c.get("norm_topk_prob"):
            wt = wt / wt.sum(-1, keepdims=True)
        self.routers[li] = (logits, idx, wt)
        out = np.zeros_like(x)
        for t in range(x.shape[0]):
            for j in range(k):
                out[t] += wt[t, j] * self.expert(x[t:t + 1], li, idx[t, j])[0]
        return out

    def is_sparse(self, li):
        if self.t == "mixtral":
            return True
        if self.t == "qwen3_moe":
            return li not in self.c.get("mlp_only_layers", []) and (li + 1) % self.c.get("decoder_sparse_step", 1) == 0
        return False

    def forward(self, ids):
        """ids [T] -> (hidden list [L+1][T][H], final normed [T][H], logits [T][V])."""
        x = self.p("embed_tokens.weight")[np.asarray(ids)]
        if self.t == "gemma2":
            x = x * np.float64(np.float32(math.sqrt(self.H)))
        hs = [x]
        for li in range(self.L):
            pre = f"layers.{li}."
            a = self.attn(self.norm(x, pre + "input_layernorm"), li)
            if self.t == "gemma2":
                x = x + self.norm(a, pre + "post_attention_layernorm")
                m = self.dense(self.norm(x, pre + "pre_feedforward_layernorm"), pre + "mlp")
                x = x + self.norm(m, pre + "post_feedforward_layernorm")
            else:
                x = x + a
                hn = self.norm(x, pre + "post_attention_layernorm")
                x = x + (self.moe(hn, li) if self.is_sparse(li) else self.dense(hn, pre + "mlp"))
            hs.append(x)
        fin = self.norm(x, "norm")
        head = self.w.get("lm_head.weight", self.p("embed_tokens.weight"))
        logits = fin @ head.T
        cap = self.c.get("final_logit_softcapping") if self.t == "gemma2" else None
        if cap:
            logits = cap * np.tanh(logits / cap)
        return hs, fin, logits


def check(d, fam, gold_dir=None):
    m = Model(d)
    g = load_st(os.path.join(gold_dir or d, "golden.safetensors"))
    gj = json.load(open(os.path.join(gold_dir or d, "golden.json")))
    ids = g["ids"]
    err = {}
    nll = []
    last = []
    for b in range(ids.shape[0]):
        hs, fin, logits = m.forward(ids[b])
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll.append(lse[:-1] - logits[np.arange(len(ids[b]) - 1), ids[b][1:]])
        last.append(logits[g["logit_pos"]])
        if b == 0:
            n = g["hidden"].shape[1]
            err["hidden"] = max(float(np.abs(hs[i][:n] - g["hidden"][i]).max() / (np.abs(g["hidden"][i]).max() + 1))
                                for i in range(len(hs)))
            err["final_norm"] = float(np.abs(fin[:n] - g["final_norm"]).max())
            if "topk_idx" in g:
                layers = list(g["moe_layers"])
                assert layers == sorted(m.routers), (layers, sorted(m.routers))
                err["router_logits"] = max(float(np.abs(m.routers[li][0] - g["router_logits"][i]).max())
                                           for i, li in enumerate(layers))
                err["topk_idx_mismatches"] = int(sum((m.routers[li][1] != g["topk_idx"][i]).sum()
                                                     for i, li in enumerate(layers)))
                err["topk_weight"] = max(float(np.abs(m.routers[li][2] - g["topk_weight"][i]).max())
                                         for i, li in enumerate(layers))
    err["logits"] = float(np.abs(np.stack(last) - g["logits"]).max())
    err["nll"] = float(np.abs(np.stack(nll) - g["nll"]).max())
    err["nll_mean"] = abs(float(np.stack(nll).mean()) - float(g["nll_mean"][0]))
    err["inv_freq"] = float(np.abs(m.inv_freq - g["inv_freq"]).max())
    gen_ok = True
    for case in gj["generation"]:
        seq = list(case["prompt_ids"])
        for want in case["new_ids"]:
            _, _, lg = m.forward(seq)
            seq.append(int(np.argmax(lg[-1])))
            if seq[-1] != want:
                gen_ok = False
                break
    err["greedy_same"] = gen_ok
    ok = (err["hidden"] < 1e-4 and err["final_norm"] < 1e-4 and err["logits"] < 1e-3 and err["nll"] < 1e-3
          and err["inv_freq"] < 1e-6 and gen_ok and err.get("topk_idx_mismatches", 0) == 0
          and err.get("topk_weight", 0) < 1e-5)
    return ok, err


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    allok = True
    for fam in FAMILIES:
        d = os.path.join(root, fam)
        if not os.path.isdir(d):
            print(f"{fam}: missing")
            allok = False
            continue
        ok, err = check(d, fam)
        print(f"{fam:18s} {'ok ' if ok else 'BAD'} " + ", ".join(
            f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in err.items()))
        allok &= ok
        for sib in sorted(os.listdir(root)):
            if sib.startswith(fam + "-"):
                ok2, err2 = check(os.path.join(root, sib), fam, gold_dir=d)
                print(f"{sib:18s} {'ok ' if ok2 else 'BAD'} logits {err2['logits']:.2g}, "
                      f"topk_idx_mismatches {err2.get('topk_idx_mismatches')}, greedy_same {err2['greedy_same']}")
                allok &= ok2
    print("all families match" if allok else "MISMATCH")
    return 0 if allok else 1


if __name__ == "__main__":
    sys.exit(main())
