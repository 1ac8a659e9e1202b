#!/usr/bin/env python3
"""bench/nsys_summary.py -- the top rows of `nsys stats -r cuda_gpu_kern_sum,cuda_api_sum,... -f csv`
(several CSV tables one after another in one log, each after a line naming its report): per
table, the rows with the largest total time, as time (ms), share, count and name.

  python3 bench/nsys_summary.py stats.log [--top 15]
"""
import argparse
import csv
import io
import sys


def tables(text):
    """(title, header, rows) of each CSV table in the log."""
    out, title, buf = [], "", []
    lines = text.splitlines()

    def flush():
        if len(buf) > 1:
            rows = list(csv.reader(io.StringIO("\n".join(buf))))
            out.append((title, rows[0], rows[1:]))

    for ln in lines:
        if ln.startswith('"Time') or ln.startswith("Time"):
            flush()
            buf = [ln]
        elif buf and ln.strip() and ("," in ln):
            buf.append(ln)
        else:
            if buf:
                flush()
                buf = []
            if ln.strip():
                title = ln.strip()
    if buf:
        flush()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    with open(a.log, errors="replace") as f:
        text = f.read()
    found = tables(text)
    if not found:
        print("nsys_summary: no table in", a.log)
        return 1
    for title, head, rows in found:
        col = {h: i for i, h in enumerate(head)}
        tcol = next((i for h, i in col.items() if h.startswith("Total Time")), None)
        ncol = col.get("Name", col.get("Operation", len(head) - 1))
        ccol = next((i for h, i in col.items() if h in ("Instances", "Num Calls", "Count")), None)
        if tcol is None:
            continue
        total = sum(float(r[tcol]) for r in rows if len(r) > tcol and r[tcol])
        print(f"-- {title[:90]}: {total / 1e6:.1f} ms in all")
        rows = sorted((r for r in rows if len(r) > tcol and r[tcol]), key=lambda r: -float(r[tcol]))
        for r in rows[: a.top]:
            t = float(r[tcol])
            n = r[ccol] if ccol is not None else ""
            print(f"  {t / 1e6:9.2f} ms {100 * t / total:5.1f}% {n:>8} {r[ncol][:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
