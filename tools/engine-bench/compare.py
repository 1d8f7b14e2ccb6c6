#!/usr/bin/env python3
"""Print a Markdown table comparing candle and PyTorch engine-bench results.

Usage:
    compare.py candle.jsonl pytorch.jsonl
    cat candle.jsonl pytorch.jsonl | compare.py
    compare.py all.jsonl            # one file holding both impls

Input: JSON lines as printed by pytorch_bench.py ("impl": "pytorch") and by the
Rust side ("impl": "candle"), with keys impl, part, threads, min_s, median_s,
peak_rss_mb, dtype. Non-JSON lines are ignored. Rows are matched on
(part, dtype, threads); the time compared is min_s. Ratios are candle/pytorch
(< 1 means candle is faster / smaller).
"""

import json
import sys


def read_lines(paths):
    if not paths:
        yield from sys.stdin
        return
    for p in paths:
        with (sys.stdin if p == "-" else open(p)) as f:
            yield from f


def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def main():
    rows = {}  # key -> {impl: record}
    order = []
    for line in read_lines(sys.argv[1:]):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "impl" not in rec or "part" not in rec:
            continue
        key = (rec["part"], rec.get("dtype", "f32"), rec.get("threads"))
        if key not in rows:
            rows[key] = {}
            order.append(key)
        rows[key][rec["impl"]] = rec  # last one wins

    if not rows:
        sys.exit("no benchmark JSON lines found")

    print("| part | dtype | threads | candle s | pytorch s | time ratio | "
          "candle RSS MB | pytorch RSS MB | RSS ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for key in order:
        part, dtype, threads = key
        c = rows[key].get("candle", {})
        p = rows[key].get("pytorch", {})
        ct, pt = c.get("min_s"), p.get("min_s")
        cm, pm = c.get("peak_rss_mb"), p.get("peak_rss_mb")
        print(f"| {part} | {dtype} | {threads} | {fmt(ct)} | {fmt(pt)} | "
              f"{fmt(ratio(ct, pt))} | {fmt(cm, 0)} | {fmt(pm, 0)} | "
              f"{fmt(ratio(cm, pm))} |")


if __name__ == "__main__":
    main()
