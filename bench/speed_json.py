#!/usr/bin/env python3
"""bench/speed_json.py -- bench/results/speed-h100.json (issue 14) from the GPU logs of one machine.

    python3 bench/speed_json.py LOGDIR [LOGDIR ...] [--peer PEER.json] [--out FILE] [--command STR]

Reads, in the given log folders (bench/gpu.sh's gpu-logs/: layers_<shape>.log of bench_layers,
e2e_7b.log / e2e_13b.log of gq quantize), the median per-layer totals and floors, peak memory and
the disk-to-disk seconds, and from bench/peer.sh's peer.json the peer's name, version and times.
A figure whose log is missing is null (not measured). The date is today's (UTC): run it where the
logs were made (bench/gpu.sh's step speed does). Prints the JSON; --out writes it too.
"""
import json
import os
import re
import sys
import time


def read(dirs, name):
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return open(p, encoding="utf-8", errors="replace").read()
    return None


def layer(dirs, shape):
    t = read(dirs, "layers_%s.log" % shape)
    if not t:
        return None
    m = re.search(r"^%s on (.*?), 128 x 2048 tokens" % re.escape(shape), t, re.M)
    row = {}
    for key, label in (("forward_hessian_s", "forward \\+ Hessian"), ("solve_s", "GPTQ solve"),
                       ("total_s", "total per layer")):
        r = re.search(r"^\s+%s\s+([\d.]+)s\s+\S+\s+\S+\s+([\d.]+)s" % label, t, re.M)
        if r:
            row[key] = float(r.group(1))
            row[key.replace("_s", "_floor_s")] = float(r.group(2))
    r = re.search(r"peak device memory\s+([\d.]+) GiB", t)
    if r:
        row["peak_gib"] = float(r.group(1))
    if m:
        row["device"] = m.group(1)
    if "total_s" in row and row.get("total_floor_s"):
        row["x_floor"] = round(row["total_s"] / row["total_floor_s"], 2)
    return row or None


def e2e(dirs, name):
    t = read(dirs, name)
    r = re.search(r"^done in ([\d.]+) s \((.*?)\)", t or "", re.M)
    if not r:
        return None, None
    parts = dict((k, float(v)) for k, v in re.findall(r"(\w+) ([\d.]+)", r.group(2)))
    return float(r.group(1)), parts


def main(argv):
    dirs, peer, out, command = [], None, None, None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--peer", "--out", "--command"):
            v = argv[i + 1]
            peer, out, command = (v if a == "--peer" else peer, v if a == "--out" else out,
                                  v if a == "--command" else command)
            i += 2
            continue
        dirs.append(a)
        i += 1
    if not dirs:
        sys.exit(__doc__)
    res = {"gpu": None, "date": None, "command": command or "sh bench/gpu.sh build layers moe e2e; sh bench/peer.sh"}
    lay = {s: layer(dirs, s) for s in ("7b", "34b", "70b", "mixtral", "qwen3moe")}
    for s, row in lay.items():
        if row and row.get("device"):
            res["gpu"] = row.pop("device")
    t = read(dirs, "summary.txt") or ""
    r = re.search(r"^(NVIDIA [^,]+), (\d+ MiB), ([\d.]+)", t, re.M)
    if r:
        res["gpu"] = "%s (%s, driver %s)" % r.groups()
    res["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    res["e2e_llama2_7b_s"], res["e2e_llama2_7b_parts_s"] = e2e(dirs, "e2e_7b.log")
    res["e2e_llama2_13b_s"], _ = e2e(dirs, "e2e_13b.log")
    for key, s in (("layer_llama2_7b_s", "7b"), ("layer_codellama_34b_s", "34b"), ("layer_llama2_70b_s", "70b"),
                   ("layer_mixtral_8x7b_s", "mixtral"), ("layer_qwen3_30b_a3b_s", "qwen3moe")):
        res[key] = lay[s]["total_s"] if lay[s] and "total_s" in lay[s] else None
    res["layers"] = {s: row for s, row in lay.items() if row}
    res["peer"], res["peer_llama2_7b_s"] = None, None
    if peer and os.path.exists(peer):
        pj = json.load(open(peer))
        p = pj.get("peer", {})
        res["peer"] = {"name": p.get("tool"), "version": p.get("version")}
        res["peer_llama2_7b_s"] = p.get("e2e_s", p.get("wall_s"))
        res["peer_llama2_7b_quant_s"] = p.get("quant_s")
        res["peer_gq_llama2_7b_s"] = pj.get("gq", {}).get("e2e_s")
    text = json.dumps(res, indent=1)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
