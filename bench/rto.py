#!/usr/bin/env python3
"""Recovery time per service and standby kind, under the sandbox's AWS
timing model (``jupiterd sandbox --aws-timing``): the failover drill of each
service with its standby

- stopped: the pilot light as seeded (StartInstances, boot, OS, application);
- pre-warm: started when the active first fails (SUSPECT), so its boot
  overlaps the confirmation;
- hibernated: a resume (no OS boot, the application already started);
- running: already up and answering.

Each row gives the breakdown measured in the sandbox (at SCALE) and at AWS's
pace (the modelled waits at their real length), and the ratio of the total
to the 83 s reference (a published Route 53 + ALB failover drill,
jspoth.com/dr). One sandbox per scenario, the four services drilled in turn.

    python bench/rto.py [--scale 0.2] [--services signaling,thingsboard] [--json]

Scenarios (``--scenarios``): ``late`` is the stopped standby with
``register_early: false`` (its targets registered only once it is healthy:
the baseline); ``stopped`` the same with ``register_early: true`` (the
default); ``prewarm`` adds the daemon's own ``prewarm: true``; ``hibernated``
marks the stopped standby hibernated in the timing model (a resume);
``running`` starts it before the failure. The last lines compare pre-warm +
early registration with the baseline, per service, in this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jupiterd.core.types import Role
from jupiterd.sandbox.breakdown import PARTS
from jupiterd.sandbox.drill import drill
from jupiterd.sandbox.seed import _client
from jupiterd.sandbox.stack import Stack
from jupiterd.sandbox.timing import REFERENCE_RTO_SECONDS, TimingModel

SERVICES = ("signaling", "coturn", "frp", "thingsboard")
SCENARIOS = ("late", "stopped", "prewarm", "hibernated", "running")
# The standby keys each scenario sets on every service.
OPTIONS: dict[str, dict[str, Any]] = {
    "late": {"register_early": False},
    "prewarm": {"prewarm": True, "prewarm_hold": "30s"},
}
PACKAGE = Path(__file__).resolve().parent.parent / "jupiterd"


def _ec2(stack: Stack) -> Any:
    return _client(stack.endpoint, stack.topology.region, "ec2")


def _standby(stack: Stack, service: str) -> str:
    return str(stack.instances[(service, Role.BACKUP)].instance_id)


async def _start_running(stack: Stack, service: str) -> None:
    """Start the standby and wait until its service answers."""
    iid = _standby(stack, service)
    await asyncio.to_thread(_ec2(stack).start_instances, InstanceIds=[iid])
    for _ in range(3000):  # 10 minutes at most
        if iid in stack.timing.app_up:
            return
        await asyncio.sleep(0.2)


async def run_scenario(scenario: str, scale: float, services: list[str]) -> list[dict[str, Any]]:
    stack = Stack(http_port=9478, log=lambda _: None, with_nat=False)
    stack.timing = TimingModel(scale=scale)
    stack.service_options = OPTIONS.get(scenario, {})
    rows = []
    try:
        await stack.start()
        for service in services:
            if scenario == "hibernated":
                stack.timing.mark_hibernated(_standby(stack, service))
            elif scenario == "running":
                await _start_running(stack, service)
            report = await drill(stack, service)
            rows.append(
                {
                    "scenario": scenario,
                    "service": service,
                    "ok": report["ok"],
                    "sandbox": report.get("breakdown"),
                    "aws": report.get("breakdown_at_aws_pace"),
                    "error": report.get("error"),
                }
            )
            print(f"  {scenario:10} {service:12} {'ok' if report['ok'] else 'FAILED'}", flush=True)
    finally:
        await stack.stop()
    return rows


def _fmt(v: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:{width}.1f}"


def table(rows: list[dict[str, Any]], scale: float) -> str:
    head = (
        f"{'standby':10} {'service':12} {'sandbox s':>9} | "
        + " ".join(f"{p.replace('_healthy', ''):>7}" for p in PARTS)
        + f" {'total':>7} {'/83 s':>6}"
    )
    lines = [f"at AWS's pace (seconds; the sandbox ran at scale {scale:g}):", head]
    for r in rows:
        aws = r["aws"] or {}
        total = aws.get("total")
        ratio = f"{total / REFERENCE_RTO_SECONDS:6.2f}" if total else f"{'-':>6}"
        lines.append(
            f"{r['scenario']:10} {r['service']:12} {_fmt((r['sandbox'] or {}).get('total'), 9)} | "
            + " ".join(_fmt(aws.get(p)) for p in PARTS)
            + f" {_fmt(total)} {ratio}"
            + ("" if r["ok"] else "  (drill FAILED)")
        )
    return "\n".join(lines)


def compare(rows: list[dict[str, Any]]) -> str:
    """Pre-warm + early registration against the baseline, per service."""
    total = {(r["scenario"], r["service"]): (r["aws"] or {}).get("total") for r in rows if r["ok"]}
    lines = ["\npre-warm + target groups registered early vs stopped standby, registered late:"]
    for service in dict.fromkeys(r["service"] for r in rows):
        new, base = total.get(("prewarm", service)), total.get(("late", service))
        if new is None or base is None:
            lines.append(f"  {service:12} not compared (a scenario missing or failed)")
            continue
        verdict = "lower" if new < base else "NOT lower"
        lines.append(
            f"  {service:12} {new:6.1f} s vs {base:6.1f} s: {base - new:+.1f} s, "
            f"{new / base:.2f}x ({verdict})"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=float, default=0.2)
    p.add_argument("--services", default=",".join(SERVICES))
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = p.parse_args()
    services = [s for s in args.services.split(",") if s]
    model = TimingModel(scale=args.scale)
    print(f"timing model (real seconds): {json.dumps(model.describe())}")
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for scenario in [s for s in args.scenarios.split(",") if s]:
        rows += asyncio.run(run_scenario(scenario, args.scale, services))
    print(f"\n{table(rows, args.scale)}")
    print(compare(rows))
    print(f"\n(bench ran {time.monotonic() - t0:.0f}s; reference: 83 s, jspoth.com/dr)")
    if args.json:
        print(json.dumps({"scale": args.scale, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
