#!/usr/bin/env python3
"""gptq_ref.py -- golden data for tests/test_gptq.c.

A re-implementation in torch (fp32, CPU) of IST-DASLab/gptq `GPTQ.fasterquant`
and `quant.py` `Quantizer`, written from the algorithm description in
gptq-reference.md §1 (not copied), with two switches for what gq adds:

  scale_f16  round every scale to the nearest fp16 value before the zero is
             computed and before it is used (a scale that would round to 0
             becomes 2^-24, one that would overflow 65504);
  zero_v1    asymmetric zero 0 -> zero 1 and scale = (xmax - xmin) / (maxq - 1)
             (then the fp16 rounding), so the v1 checkpoint format can store it.

With both off this is the unmodified reference algorithm. One deliberate
deviation: act-order uses a *stable* descending argsort so that exact ties
(the dead columns, whose diagonal becomes 1) have one defined order, the one
gq documents (lower column index first).

Writes tests/data/gptq/ (format in tests/data/gptq/README.md):
  <prob>.in.bin          W [rows][cols] f32, H [cols][cols] f32
  <prob>_<case>.out.bin  the reference outputs of one configuration

Usage: python3 tests/ref/gptq_ref.py [outdir]   (deterministic; about 5 s)
"""
import os
import struct
import sys

import numpy as np
import torch

torch.set_num_threads(1)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

MAGIC_IN = b"GQGPTQI\0"
MAGIC_OUT = b"GQGPTQO\0"
VERSION = 1
F16_TINY = 2.0 ** -24
F16_MAX = 65504.0


def f16round(s):
    h = s.half().float()
    h = torch.where(h == 0, torch.full_like(h, F16_TINY), h)
    h = torch.where(torch.isinf(h), torch.full_like(h, F16_MAX), h)
    return h


class Quantizer:
    """quant.py Quantizer (per-channel, weight mode, mse off) + gq switches."""

    def __init__(self, bits, sym, scale_f16, zero_v1):
        self.maxq = torch.tensor(2 ** bits - 1)
        self.sym = sym
        self.scale_f16 = scale_f16
        self.zero_v1 = zero_v1
        self.scale = None
        self.zero = None

    def find_params(self, x):  # x [rows][n]
        tmp = torch.zeros(x.shape[0])
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            tmp = xmin < 0
            if torch.any(tmp):
                xmin[tmp] = -xmax[tmp]  # quirk: only where xmin < 0
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1
        scale = (xmax - xmin) / self.maxq
        if self.scale_f16:
            scale = f16round(scale)
        if self.sym:
            zero = torch.full_like(scale, (self.maxq + 1) / 2)
        else:
            zero = torch.round(-xmin / scale)
            if self.zero_v1:
                z0 = zero == 0
                s1 = (xmax - xmin) / (self.maxq - 1)
                if self.scale_f16:
                    s1 = f16round(s1)
                scale = torch.where(z0, s1, scale)
                zero = torch.where(z0, torch.ones_like(zero), zero)
        zero = torch.clamp(zero, 0, self.maxq)  # as gq (a no-op in practice)
        self.scale = scale.reshape(-1, 1)
        self.zero = zero.reshape(-1, 1)

    def copy(self):
        q = Quantizer(0, self.sym, self.scale_f16, self.zero_v1)
        q.maxq = self.maxq
        q.scale, q.zero = self.scale, self.zero
        return q


def quantize(x, scale, zero, maxq):
    """Returns (dequantized, codes); x [rows][1]."""
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero), q


def fasterquant(W, H, cfg):
    """IST-DASLab/gptq GPTQ.fasterquant on W [rows][cols] (f32), H [cols][cols]."""
    W = W.clone().float()
    H = H.clone().float()
    rows, cols = W.shape
    gs = cfg["group_size"]
    blocksize = cfg["block_size"]
    quant = Quantizer(cfg["bits"], cfg["sym"], cfg["scale_f16"], cfg["zero_v1"])
    quant.find_params(W)  # "if not ready": on the whole W, before the dead fix
    maxq = quant.maxq
    ngroups = 1 if gs == -1 else (cols + gs - 1) // gs
    scales = torch.zeros(ngroups, rows)
    zeros = torch.zeros(ngroups, rows)
    if gs == -1:
        scales[0], zeros[0] = quant.scale.flatten(), quant.zero.flatten()

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    groups = []
    if cfg["static_groups"] and gs != -1:
        for g, i in enumerate(range(0, cols, gs)):
            q = quant.copy()
            q.find_params(W[:, i:i + gs])
            groups.append(q)
            scales[g], zeros[g] = q.scale.flatten(), q.zero.flatten()

    perm = torch.arange(cols)
    if cfg["act_order"]:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    invperm = torch.argsort(perm)

    Losses = torch.zeros_like(W)
    Q = torch.zeros_like(W)
    Codes = torch.zeros_like(W)

    damp = cfg["damp"] * torch.mean(torch.diag(H))
    diag = torch.arange(cols)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        C1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if gs != -1:
                if not cfg["static_groups"]:
                    if (i1 + i) % gs == 0:
                        # the GLOBAL W: no in-block updates of this block
                        quant.find_params(W[:, (i1 + i):(i1 + i + gs)])
                        g = (i1 + i) // gs
                        scales[g], zeros[g] = quant.scale.flatten(), quant.zero.flatten()
                else:
                    idx = i1 + i
                    if cfg["act_order"]:
                        idx = perm[idx]
                    quant = groups[idx // gs]
            q, c = quantize(w.unsqueeze(1), quant.scale, quant.zero, maxq)
            q, c = q.flatten(), c.flatten()
            Q1[:, i] = q
            C1[:, i] = c
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Codes[:, i1:i2] = C1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    Q = Q[:, invperm]
    Codes = Codes[:, invperm]
    if gs == -1:
        g_idx = torch.zeros(cols, dtype=torch.int64)
    elif cfg["act_order"] and not cfg["static_groups"]:
        g_idx = invperm // gs  # groups in permuted order
    else:
        g_idx = torch.arange(cols) // gs
    row_loss = Losses.double().sum(1)
    return dict(codes=Codes, scales=scales, zeros=zeros, g_idx=g_idx, perm=perm, Q=Q,
                row_loss=row_loss, loss=float(row_loss.sum()), ngroups=ngroups)


def rtn(W, cfg):
    """Group-wise round to nearest (groups k // gs, or one per row)."""
    W = W.clone().float()
    rows, cols = W.shape
    gs = cfg["group_size"]
    quant = Quantizer(cfg["bits"], cfg["sym"], cfg["scale_f16"], cfg["zero_v1"])
    gsz = cols if gs == -1 else gs
    ngroups = (cols + gsz - 1) // gsz
    scales = torch.zeros(ngroups, rows)
    zeros = torch.zeros(ngroups, rows)
    Q = torch.zeros_like(W)
    Codes = torch.zeros_like(W)
    for g, i in enumerate(range(0, cols, gsz)):
        quant.find_params(W[:, i:i + gsz])
        scales[g], zeros[g] = quant.scale.flatten(), quant.zero.flatten()
        Q[:, i:i + gsz], Codes[:, i:i + gsz] = quantize(W[:, i:i + gsz], quant.scale, quant.zero, quant.maxq)
    g_idx = torch.arange(cols) // gsz
    return dict(codes=Codes, scales=scales, zeros=zeros, g_idx=g_idx, perm=torch.arange(cols), Q=Q,
                row_loss=torch.zeros(rows, dtype=torch.float64), loss=0.0, ngroups=ngroups)


# ---- problems ---------------------------------------------------------------------

def make_problem(seed, rows, cols, ntok, dead, outlier_cols):
    """W with outlier columns and special rows; H = 2/N X^T X from
    correlated features with a few dead (all-zero) ones."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((rows, cols)) * 0.02
    W[:, outlier_cols] *= 8.0
    W[1] = np.abs(W[1])        # all >= 0: sym quirk, asym zero 0 (v1 policy)
    W[2] = 0.0                 # all zero: the [-1, 1] range
    W[3] = -np.abs(W[3])       # all <= 0
    W[4, : cols // 2] = np.abs(W[4, : cols // 2])
    # correlated features: low-rank shared factors plus noise, per-feature scale
    Z = rng.standard_normal((ntok, 24)) @ rng.standard_normal((24, cols)) * 0.4
    X = Z + rng.standard_normal((ntok, cols))
    X *= np.exp(0.7 * rng.standard_normal(cols))[None, :]
    X[:, dead] = 0.0
    H = 2.0 / ntok * (X.T @ X)  # fp64
    return W.astype(np.float32), H.astype(np.float32)


def cfg(**kw):
    c = dict(method="gptq", bits=4, group_size=128, sym=0, act_order=0, static_groups=0,
             damp=0.01, block_size=128, scale_f16=1, zero_v1=1)
    c.update(kw)
    return c


PROBLEMS = {
    "a": dict(seed=1234, rows=48, cols=256, ntok=1024, dead=[5, 77], outlier_cols=[3, 100, 200]),
    "b": dict(seed=99, rows=40, cols=384, ntok=1536, dead=[0, 250, 251], outlier_cols=[17, 130, 383]),
}

CASES = {
    "a": {
        "g128_sym": cfg(sym=1),
        "g128_asym": cfg(),
        "g32_asym": cfg(group_size=32),
        "act_g128_asym": cfg(act_order=1),
        "actstatic_g128_asym": cfg(act_order=1, static_groups=1),
        "perchan_asym": cfg(group_size=-1),
        "b3_g128_asym": cfg(bits=3),
        "b8_g128_asym": cfg(bits=8),
        "rtn_g128_sym": cfg(method="rtn", sym=1),
        "rtn_g128_asym": cfg(method="rtn"),
        "ref_g128_asym": cfg(scale_f16=0, zero_v1=0),
        "static_g128_asym": cfg(static_groups=1),
    },
    "b": {
        "g32_asym": cfg(group_size=32),
        "act_g128_sym": cfg(act_order=1, sym=1),
        "actstatic_g128_asym": cfg(act_order=1, static_groups=1),
        "b3_g128_asym": cfg(bits=3),
        "act_g100_asym": cfg(act_order=1, group_size=100),
        "perchan_sym_ref": cfg(group_size=-1, sym=1, scale_f16=0, zero_v1=0),
        "b2_g64_asym": cfg(bits=2, group_size=64),
    },
}


def write_in(path, W, H):
    with open(path, "wb") as f:
        f.write(MAGIC_IN + struct.pack("<Iii", VERSION, W.shape[0], W.shape[1]))
        f.write(W.astype("<f4").tobytes())
        f.write(H.astype("<f4").tobytes())


def write_out(path, c, r, rows, cols):
    with open(path, "wb") as f:
        f.write(MAGIC_OUT)
        f.write(struct.pack("<I12i", VERSION, rows, cols, 0 if c["method"] == "gptq" else 1, c["bits"],
                            c["group_size"], c["sym"], c["act_order"], c["static_groups"],
                            0 if c["zero_v1"] else 1, c["scale_f16"], c["block_size"], r["ngroups"]))
        f.write(struct.pack("<d", c["damp"]))
        f.write(r["codes"].numpy().astype(np.uint8).tobytes())
        f.write(r["scales"].numpy().astype("<f4").tobytes())
        f.write(r["zeros"].numpy().astype("<i4").tobytes())
        f.write(r["g_idx"].numpy().astype("<i4").tobytes())
        f.write(r["perm"].numpy().astype("<i4").tobytes())
        f.write(r["Q"].numpy().astype("<f4").tobytes())
        f.write(r["row_loss"].numpy().astype("<f4").tobytes())
        f.write(struct.pack("<d", r["loss"]))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "data", "gptq")
    os.makedirs(out, exist_ok=True)
    for name, prob in PROBLEMS.items():
        W, H = make_problem(**prob)
        write_in(os.path.join(out, f"{name}.in.bin"), W, H)
        Wt, Ht = torch.from_numpy(W), torch.from_numpy(H)
        for cname, c in CASES[name].items():
            r = fasterquant(Wt, Ht, c) if c["method"] == "gptq" else rtn(Wt, c)
            assert r["codes"].max() <= 2 ** c["bits"] - 1
            write_out(os.path.join(out, f"{name}_{cname}.out.bin"), c, r, W.shape[0], W.shape[1])
            nz0 = int((r["zeros"] == 0).sum())
            print(f"{name}_{cname}: loss {r['loss']:.6g}, groups {r['ngroups']}, zero-0 groups {nz0}")


if __name__ == "__main__":
    main()
