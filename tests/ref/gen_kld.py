#!/usr/bin/env python3
"""gen_kld.py -- the KL-divergence statistics of `gq ppl --base`, computed independently of gq's code.

For every next-token prediction of every window (the perplexity's windows: <s> + text, consecutive
windows of seqlen tokens, seqlen - 1 predictions each), with both distributions the log-softmax
of the logits, in float64:

    KL(base || model) = sum_v p_base(v) (log p_base(v) - log p_model(v))
    top1               the argmaxes agree (numpy/torch argmax: the first maximal index)

and over all predictions: the mean, the median and the 99th percentile (numpy.percentile,
linear interpolation: llama.cpp's perplexity --kl-divergence conventions) of the per-token KL,
the fraction of agreeing argmaxes, the same per window, and both perplexities.

Two sources of logits:

  from-dump DUMP [--out GOLDEN.json]                                       (numpy only)
      the logits gq wrote with GQ_KLD_DUMP=DUMP (gq ppl --base ...): an independent implementation
      of the statistics (the logits themselves are checked against transformers by
      tests/test_forward.c and tests/test_families.c); also compares gq's per-token KL stored in
      the dump with this one. This is how tests/data/kld/golden.json was made:

          ./build/gq quantize --model tests/data/pycoder-5m --out /tmp/q --method rtn --device cpu
          GQ_KLD_DUMP=/tmp/kld.safetensors ./build/gq ppl --model /tmp/q --base tests/data/pycoder-5m \\
              --text tests/data/text/python-stdlib-eval.txt --seqlen 256 --max-windows 4 --device cpu
          python3 tests/ref/gen_kld.py from-dump /tmp/kld.safetensors --out tests/data/kld/golden.json

  torch --base DIR --model OUT [--text F] [--seqlen 256] [--max-windows 4] [--check GOLDEN.json]
      (torch + transformers + tokenizers; a GPU machine has them) everything from the checkpoints:
      the base model in transformers float32 (eager attention), the quantized one as the base
      model with every linear replaced by check_unpack.py's independent dequantization of OUT;
      the text tokenized with `tokenizers` (<s> + encode). --check compares the result with a
      golden (tolerances as tests/test_kld.c states them) and exits 1 on a difference:

          python3 tests/ref/gen_kld.py torch --base tests/data/pycoder-5m --model /tmp/q \\
              --check tests/data/kld/golden.json
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np

TEXT = "tests/data/text/python-stdlib-eval.txt"
# tests/test_kld.c's tolerances (the reasons are there): KL statistics absolute, top1 in predictions
TOL_KL = 1e-4
TOL_TOP1_PRED = 2
TOL_PPL_REL = 1e-4


def read_st(path):
    """{name: array}, metadata of a safetensors file (F32, F64, I32, I64 only)."""
    dts = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8: 8 + n].decode("utf-8"))
    meta = hdr.pop("__metadata__", None) or {}
    data = memoryview(raw)[8 + n:]
    out = {}
    for k, v in hdr.items():
        dt = np.dtype(dts[v["dtype"]])
        a, b = v["data_offsets"]
        numel = int(np.prod(v["shape"], dtype=np.int64))
        assert b - a == numel * dt.itemsize, f"{path}: {k}: {b - a} bytes for {v['dtype']}{v['shape']}"
        out[k] = np.frombuffer(data, dtype=dt, count=numel, offset=a).reshape(v["shape"])
    return out, meta


def log_softmax(x):
    """float64 log-softmax over the last axis (max subtracted)."""
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def top2_margin(x):
    """Per row: the largest logit minus the second largest (how far the argmax is from a tie)."""
    p = np.partition(x, -2, axis=-1)
    return p[..., -1] - p[..., -2]


def window_stats(lb, lq, ids):
    """lb, lq [P][V] logits of one window (base, model), ids [P + 1]: per-token KL, agreement,
    both mean NLLs and the smallest top-2 margins."""
    pb, pq = log_softmax(lb), log_softmax(lq)
    kl = (np.exp(pb) * (pb - pq)).sum(axis=-1)
    agree = np.argmax(lb, axis=-1) == np.argmax(lq, axis=-1)
    tg = ids[1:].astype(np.int64)
    r = np.arange(len(tg))
    return dict(kl=kl, agree=agree, nll=float(-pq[r, tg].mean()), base_nll=float(-pb[r, tg].mean()),
                margin=float(top2_margin(lq).min()), base_margin=float(top2_margin(lb).min()))


def summarize(per, seqlen):
    """The statistics over the windows' results (a list of window_stats)."""
    kl = np.concatenate([w["kl"] for w in per])
    agree = np.concatenate([w["agree"] for w in per])
    return {
        "seqlen": seqlen, "windows": len(per), "n": int(kl.size),
        "mean": float(kl.mean()), "median": float(np.median(kl)), "p99": float(np.percentile(kl, 99)),
        "top1": float(agree.mean()), "top1_agree": int(agree.sum()),
        "max": float(kl.max()), "min": float(kl.min()),
        "window_kld": [float(w["kl"].mean()) for w in per],
        "window_top1": [float(w["agree"].mean()) for w in per],
        "ppl": math.exp(float(np.mean([w["nll"] for w in per]))),
        "base_ppl": math.exp(float(np.mean([w["base_nll"] for w in per]))),
        "window_nll": [w["nll"] for w in per], "base_window_nll": [w["base_nll"] for w in per],
        "min_top2_margin": min(w["margin"] for w in per),
        "base_min_top2_margin": min(w["base_margin"] for w in per),
    }


def run_from_dump(args):
    t, meta = read_st(args.dump)
    lb, lq, ids, gq_kl = t["base_logits"], t["logits"], t["ids"], t["kld"]
    W, P, V = lb.shape
    assert lq.shape == (W, P, V) and ids.shape == (W, P + 1) and gq_kl.shape == (W, P), "dump shapes"
    per = [window_stats(lb[w], lq[w], ids[w]) for w in range(W)]
    res = summarize(per, P + 1)
    mine = np.stack([w["kl"] for w in per])
    res["max_abs_diff_vs_gq_token_kld"] = float(np.abs(mine - gq_kl).max())
    res["first_ids"] = ids[0, :8].tolist()
    res["generator"] = {"script": "tests/ref/gen_kld.py from-dump", "numpy": np.__version__,
                        "date": time.strftime("%Y-%m-%d"), "dump_meta": {k: meta[k] for k in ("seqlen", "windows")
                                                                          if k in meta}}
    report(res)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    return 0


def report(res):
    print(f"{res['windows']} windows of {res['seqlen']}, {res['n']} predictions: ppl {res['ppl']:.6f}, "
          f"base ppl {res['base_ppl']:.6f}")
    print(f"kld mean = {res['mean']:.6f} median = {res['median']:.6f} p99 = {res['p99']:.6f} "
          f"top1 = {res['top1']:.4f} (smallest top-2 margins {res['min_top2_margin']:.3g}, "
          f"base {res['base_min_top2_margin']:.3g})")
    if "max_abs_diff_vs_gq_token_kld" in res:
        print(f"largest |KL - gq's KL| per token: {res['max_abs_diff_vs_gq_token_kld']:.3g}")


def check(res, golden_path):
    g = json.load(open(golden_path))
    bad = []
    for k in ("mean", "median", "p99"):
        if abs(res[k] - g[k]) > TOL_KL:
            bad.append(f"{k} {res[k]:.9g} vs {g[k]:.9g}")
    for w, (a, b) in enumerate(zip(res["window_kld"], g["window_kld"])):
        if abs(a - b) > TOL_KL:
            bad.append(f"window {w} kld {a:.9g} vs {b:.9g}")
    if abs(res["top1_agree"] - g["top1_agree"]) > TOL_TOP1_PRED:
        bad.append(f"top1 {res['top1_agree']} vs {g['top1_agree']} agreeing predictions")
    for k in ("ppl", "base_ppl"):
        if abs(res[k] / g[k] - 1) > TOL_PPL_REL:
            bad.append(f"{k} {res[k]:.9g} vs {g[k]:.9g}")
    if res["n"] != g["n"]:
        bad.append(f"{res['n']} predictions, golden {g['n']}")
    print("check against " + golden_path + ": " + ("ok" if not bad else "DIFFERENT: " + "; ".join(bad)))
    return 1 if bad else 0


def run_torch(args):
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import check_unpack as cu  # the independent unpacker and the transformers loading
    torch.set_float32_matmul_precision("highest")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    orig, outs, _ = cu.verify(args.base, [args.model], quiet=True)
    text = open(args.text, encoding="utf-8").read()
    ids, _ = cu.tokenize(args.model, orig.cfg, text)
    nw = min(len(ids) // args.seqlen, args.max_windows)
    windows = np.array(ids[: nw * args.seqlen], dtype=np.int64).reshape(nw, args.seqlen)
    logits = []
    for o in (None, outs[0]):
        model, _ = cu.load_model(args.base, orig.cfg)
        if o is not None:
            cu.set_weights(model, orig.cfg, orig.lm, o)
        model = model.to(device)
        with torch.no_grad():
            x = torch.from_numpy(windows).to(device)
            logits.append(model(input_ids=x, use_cache=False).logits[:, :-1].float().cpu().numpy())
        del model
    per = [window_stats(logits[0][w], logits[1][w], windows[w]) for w in range(nw)]
    res = summarize(per, args.seqlen)
    res["first_ids"] = windows[0, :8].tolist()
    res["generator"] = {"script": "tests/ref/gen_kld.py torch", "torch": torch.__version__, "device": device,
                        "numpy": np.__version__, "date": time.strftime("%Y-%m-%d")}
    report(res)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    return check(res, args.check) if args.check else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("from-dump", help="statistics from the logits gq dumped (GQ_KLD_DUMP), numpy only")
    d.add_argument("dump")
    d.add_argument("--out", help="write the statistics (the golden) here")
    t = sub.add_parser("torch", help="statistics from transformers' forwards of both checkpoints")
    t.add_argument("--base", required=True, help="the fp16 model")
    t.add_argument("--model", required=True, help="gq's quantized output of it")
    t.add_argument("--text", default=TEXT)
    t.add_argument("--seqlen", type=int, default=256)
    t.add_argument("--max-windows", type=int, default=4)
    t.add_argument("--device", help="torch device (default cuda if there is one, else cpu)")
    t.add_argument("--check", help="a golden JSON to compare with")
    t.add_argument("--out")
    args = ap.parse_args()
    return run_from_dump(args) if args.cmd == "from-dump" else run_torch(args)


if __name__ == "__main__":
    sys.exit(main())
