#!/usr/bin/env python3
"""Sandbox figures: drill detection and failover time per service (median of
N runs of `jupiterd sandbox --drill all --json`), and the sandbox start-up.

    python bench/sandbox.py [--runs 5] [--failback]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--failback", action="store_true")
    args = p.parse_args()
    per: dict[str, dict[str, list[float]]] = {}
    starts: list[float] = []
    walls: list[float] = []
    for i in range(args.runs):
        cmd = [sys.executable, "-m", "jupiterd", "sandbox", "--drill", "all", "--json"]
        if args.failback:
            cmd.append("--failback")
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        walls.append(time.monotonic() - t0)
        m = re.search(r"sandbox up in ([\d.]+)s", r.stderr)
        if m:
            starts.append(float(m.group(1)))
        if r.returncode != 0:
            print(f"run {i + 1}: FAILED (exit {r.returncode})\n{r.stderr[-2000:]}")
            continue
        for rep in json.loads(r.stdout):
            d = per.setdefault(rep["service"], {"detect": [], "failover": [], "restored": []})
            d["detect"].append(rep["detect_seconds"])
            d["failover"].append(rep["failover_seconds"])
            d["restored"].append(rep["restored_seconds"])
        print(f"run {i + 1}/{args.runs}: ok in {walls[-1]:.1f}s", flush=True)
    print(
        f"\nsandbox start-up: median {statistics.median(starts):.2f}s "
        f"(min {min(starts):.2f}, max {max(starts):.2f}, n={len(starts)})"
    )
    print(
        f"whole `--drill all{' --failback' if args.failback else ''}` run: median "
        f"{statistics.median(walls):.1f}s"
    )
    print(
        f"{'service':12} {'detect s (median)':>18} {'failover s (median)':>20} "
        f"{'restored s (median)':>20}  n"
    )
    for name, d in per.items():
        print(
            f"{name:12} {statistics.median(d['detect']):18.2f} "
            f"{statistics.median(d['failover']):20.2f} "
            f"{statistics.median(d['restored']):20.2f}  {len(d['detect'])}"
        )


if __name__ == "__main__":
    main()
