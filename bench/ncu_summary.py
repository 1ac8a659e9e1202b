#!/usr/bin/env python3
"""bench/ncu_summary.py -- the GPU time of bench_generate's decode steps by kernel, from Nsight
Compute's raw CSV (`ncu --metrics gpu__time_duration.sum --csv --page raw --print-units base`, bench/profile_decode.sh).

The run is: warm-up prompt, 4 decode steps, the timed prompt, NEW decode steps. The timed steps
are the launches after the last prefill attention kernel (attn_v*), from the input norm that
precedes the first decode_rope_append kernel after it; their sum / NEW is the GPU time of a step,
split by kernel (the name up to its template arguments). Without --new: every launch of the run
(any program, e.g. bench_layers), per --per (say, the layers run).

  python3 bench/ncu_summary.py prof.csv --new NEW
  python3 bench/ncu_summary.py prof.csv [--per N]
"""
import argparse
import csv
import re
import sys


def short(name):
    name = re.sub(r"\(.*$", "", name)  # parameters
    name = re.sub(r"^void ", "", name)
    base = re.sub(r"<.*$", "", name)
    tmpl = re.search(r"<(.*)>", name)
    if tmpl and base.startswith(("decode_attn_h_kernel", "w4_gemv_kernel")):
        return base + "<" + tmpl.group(1)[:30] + ">"
    return base[:60]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--new", type=int, default=0, help="timed decode steps (bench_generate --new)")
    ap.add_argument("--per", type=int, default=1, help="without --new: divide the totals by this")
    a = ap.parse_args()
    rows, header = [], None
    with open(a.csv, newline="") as f:
        for r in csv.reader(f):
            if header is None:
                if "Kernel Name" in r and "gpu__time_duration.sum" in r:
                    header = r
                continue
            if len(r) != len(header) or not r[0].strip().isdigit():
                continue  # the units row, the program's own output
            d = dict(zip(header, r))
            rows.append((short(d["Kernel Name"]), float(d["gpu__time_duration.sum"].replace(",", ""))))  # ns
    if not rows:
        sys.exit("ncu_summary: no kernel rows in " + a.csv)
    names = [n for n, _ in rows]
    if a.new:
        last_pf = max((i for i, n in enumerate(names) if n.startswith("attn_")), default=-1)
        first = next((i for i in range(last_pf + 1, len(names)) if names[i].startswith("decode_rope_append")), None)
        if first is None:
            sys.exit("ncu_summary: no decode step after the last prefill attention")
        start = first
        for i in range(first - 1, last_pf, -1):
            if "norm" in names[i]:
                start = i
                break
        tail, per, unit = rows[start:], a.new, "step"
    else:
        tail, per, unit = rows, a.per, "unit" if a.per > 1 else "run"
    tot = sum(t for _, t in tail)
    by = {}
    for n, t in tail:
        c, s = by.get(n, (0, 0.0))
        by[n] = (c + 1, s + t)
    what = f"the {a.new} timed decode steps" if a.new else f"{per} {unit}(s)"
    print(f"{len(rows)} kernels profiled; {what}: {len(tail)} launches, "
          f"{len(tail) / per:.0f} a {unit}, GPU time {tot / 1e6 / per:.3f} ms a {unit} (kernels serialised)")
    print(f"| kernel | launches a {unit} | us a launch (mean) | ms a {unit} | share |")
    print("|---|---:|---:|---:|---:|")
    for n, (c, s) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"| {n} | {c / per:.1f} | {s / c / 1e3:.1f} | {s / 1e6 / per:.3f} | {100 * s / tot:.1f}% |")


if __name__ == "__main__":
    main()
