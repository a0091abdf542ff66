#!/usr/bin/env python3
"""Replicated deciders on the sandbox (moto, services on loopback, replicas
as processes behind their own fault proxies):

1. decision latency, 3 replicas vs 1 (the same process without ``ha:``):
   kill the active signaling process, time from the kill to the first
   ``failover decided`` in any replica's log (the leader's), N runs each
   (an operator failback between runs); median, max, and the
   difference of the medians (target: +< 0.5 s);
2. leader takeover after SIGKILL (3 replicas, nothing in flight): from the
   kill to another replica's write of the lease item; median, max vs
   lease + 1 s;
3. DynamoDB calls per replica per hour over a quiet window (the proxies'
   counts, extrapolated), their read/write request units and the monthly
   on-demand cost.

Units: on-demand request units as DynamoDB bills them, estimated from the
JSON sizes on the wire: a write 1 WRU per KB of the request (rounded up),
TransactWriteItems 2 units per KB of each item; a strongly consistent read
1 RRU per 4 KB of the answer (an eventually consistent one half), a
transactional read 2. Prices: us-east-1 on-demand since the November 2024
price cut, 0.625 USD per million write request units, 0.125 USD per million
read request units; storage (a few KB) left out.

    python bench/ha.py [--runs 5] [--window 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jupiterd.sandbox.ha_watch import leader, moved, ready, restore
from jupiterd.sandbox.replicas import HA
from jupiterd.sandbox.stack import Stack

SERVICE = "signaling"
WRU_PRICE, RRU_PRICE = 0.625e-6, 0.125e-6  # USD per request unit, us-east-1 on-demand
HOURS_PER_MONTH = 730


def _quiet(_: str) -> None:
    pass


def _wall(ev: dict[str, Any]) -> float | None:
    ts = ev.get("timestamp")
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


async def decision_runs(replicas: int, runs: int) -> list[float]:
    """Seconds from the kill to the first ``failover decided``, per run."""
    stack = Stack(log=_quiet, replicas=replicas, replica_ha=replicas > 1)
    out: list[float] = []
    try:
        await stack.start()
        rs = stack.replicas
        for i in range(runs):
            ok, why = await ready(stack)
            if not ok:
                print(f"  {replicas} replica(s), run {i + 1}: never ready ({why})", flush=True)
                break
            await asyncio.sleep(6)  # past the cooldown of the last run (5 s)
            offsets = {rid: r.log_size() for rid, r in rs.replicas.items()}
            frm = stack.active_role(SERVICE)
            t_kill = time.time()
            stack.break_service(SERVICE)
            found: float | None = None
            deadline = time.monotonic() + 60
            while found is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                for rid, r in rs.replicas.items():
                    for ev in r.events(offsets[rid]):
                        if ev.get("event") == "failover decided" and ev.get("service") == SERVICE:
                            at = _wall(ev)
                            if at is not None and (found is None or at < found):
                                found = at
            if found is None:
                print(f"  {replicas} replica(s), run {i + 1}: no decision in 60 s", flush=True)
                continue
            out.append(found - t_kill)
            print(
                f"  {replicas} replica(s), run {i + 1}: decided {found - t_kill:.3f}s after the kill",
                flush=True,
            )
            await moved(stack, SERVICE, frm.other, 120)
            await restore(stack, SERVICE)  # automatic failover never fails back
    finally:
        await stack.stop()
    return out


async def takeover_and_calls(runs: int, window: float) -> tuple[list[float], dict[str, Any]]:
    stack = Stack(log=_quiet, replicas=3)
    takeovers: list[float] = []
    usage: dict[str, Any] = {}
    try:
        await stack.start()
        rs = stack.replicas
        ok, why = await ready(stack)
        if not ok:
            print(f"  never ready: {why}")
            return takeovers, usage
        usage = await _calls(stack, window)
        for i in range(runs):
            old = leader(rs)
            if old is None:
                print(f"  run {i + 1}: no leader")
                break
            t = time.monotonic()
            rs.replicas[old].send(signal.SIGKILL)
            new = None
            while time.monotonic() - t < 60:
                new = leader(rs)
                if new not in (None, old):
                    break
                await asyncio.sleep(0.02)
            if new in (None, old):
                print(f"  run {i + 1}: nobody took over in 60 s", flush=True)
                break
            takeovers.append(time.monotonic() - t)
            print(f"  run {i + 1}: {new} took over from {old} in {takeovers[-1]:.3f}s", flush=True)
            await rs.act(old, "restart")
            await ready(stack)
    finally:
        await stack.stop()
    return takeovers, usage


def _units(key: str, req: bytes, resp: bytes) -> tuple[float, float]:
    """(read, write) request units of one DynamoDB call, estimated."""
    action = key.split(":", 1)[1]
    try:
        body = json.loads(req or b"{}")
    except ValueError:
        body = {}
    consistent = 1.0 if body.get("ConsistentRead") else 0.5
    if action == "TransactWriteItems":
        items = body.get("TransactItems", [])
        return 0.0, float(sum(2 * math.ceil(len(json.dumps(it)) / 1024) for it in items))
    if action == "TransactGetItems":
        return float(2 * max(1, math.ceil(len(resp) / 4096))), 0.0
    if action in ("PutItem", "UpdateItem", "DeleteItem"):
        return 0.0, float(max(1, math.ceil(len(req) / 1024)))
    if action == "BatchWriteItem":
        return 0.0, float(max(1, math.ceil(len(req) / 1024)))
    if action in ("GetItem", "Query", "Scan", "BatchGetItem"):
        return consistent * max(1, math.ceil(len(resp) / 4096)), 0.0
    return 0.0, 0.0  # DescribeTable and the like: not billed as request units


async def _calls(stack: Stack, window: float) -> dict[str, Any]:
    rs = stack.replicas
    lock = threading.Lock()
    units: dict[str, list[float]] = {rid: [0.0, 0.0] for rid in rs.replicas}

    def hook(rid: str) -> Any:
        def on_forward(key: str, req: bytes, resp: bytes) -> None:
            if key.startswith("dynamodb:"):
                r, w = _units(key, req, resp)
                with lock:
                    units[rid][0] += r
                    units[rid][1] += w

        return on_forward

    for rid, r in rs.replicas.items():
        r.proxy.on_forward = hook(rid)
    rs.reset_counts()
    print(f"  counting DynamoDB calls for {window:g}s (quiet: every service up)", flush=True)
    await asyncio.sleep(window)
    per: dict[str, Counter[str]] = {}
    for rid, r in rs.replicas.items():
        r.proxy.on_forward = None
        per[rid] = Counter(
            {k: n for k, n in r.proxy.snapshot().items() if k.startswith("dynamodb:")}
        )
    scale = 3600.0 / window
    return {
        rid: {
            "calls_per_hour": {k: round(n * scale) for k, n in sorted(c.items())},
            "total_per_hour": round(sum(c.values()) * scale),
            "rru_per_hour": units[rid][0] * scale,
            "wru_per_hour": units[rid][1] * scale,
        }
        for rid, c in per.items()
    }


def _fig(xs: list[float]) -> str:
    if not xs:
        return "no data"
    return f"median {statistics.median(xs):.3f}s, max {max(xs):.3f}s (n={len(xs)})"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--window", type=float, default=120.0, help="seconds of DynamoDB counting")
    args = p.parse_args()
    print(f"== decision latency (kill {SERVICE}'s active process -> 'failover decided')")
    one = asyncio.run(decision_runs(1, args.runs))
    three = asyncio.run(decision_runs(3, args.runs))
    print(f"1 replica (no ha:): {_fig(one)}")
    print(f"3 replicas:         {_fig(three)}")
    if one and three:
        d = statistics.median(three) - statistics.median(one)
        ratio = statistics.median(three) / statistics.median(one)
        print(
            f"3 vs 1: +{d:.3f}s median ({ratio:.2f}x); target +< 0.5 s: {'met' if d < 0.5 else 'MISSED'}"
        )
    print("\n== leader takeover after SIGKILL, and DynamoDB usage (3 replicas)")
    takeovers, usage = asyncio.run(takeover_and_calls(args.runs, args.window))
    lease = float(HA["lease_seconds"])
    print(
        f"takeover: {_fig(takeovers)}; target < lease + 1 s = {lease + 1:g}s: "
        f"{'met' if takeovers and max(takeovers) < lease + 1 else 'MISSED'}"
    )
    print(
        f"(lease {lease:g}s, margin {HA['lease_margin']}s, publish every {HA['publish_interval']}s)"
    )
    for rid, u in usage.items():
        cost = (u["wru_per_hour"] * WRU_PRICE + u["rru_per_hour"] * RRU_PRICE) * HOURS_PER_MONTH
        print(f"{rid}: {u['total_per_hour']} calls/h {u['calls_per_hour']}")
        print(
            f"    {u['rru_per_hour']:.0f} RRU/h, {u['wru_per_hour']:.0f} WRU/h, "
            f"{cost:.2f} USD/month on demand"
        )
    if usage:
        total = sum(
            (u["wru_per_hour"] * WRU_PRICE + u["rru_per_hour"] * RRU_PRICE) * HOURS_PER_MONTH
            for u in usage.values()
        )
        print(
            f"all {len(usage)} replicas: {total:.2f} USD/month "
            f"(0.625 USD/M WRU, 0.125 USD/M RRU, us-east-1; storage left out)"
        )
        print(
            f"note: measured with the sandbox's short timings (publish every "
            f"{HA['publish_interval']}s, lease {lease:g}s); the defaults (2 s, 15 s) call less"
        )


if __name__ == "__main__":
    main()
