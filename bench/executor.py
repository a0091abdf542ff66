#!/usr/bin/env python3
"""The failover executor's own overhead, beyond what AWS takes.

    python bench/executor.py [--latency 0.05] [--runs 6]

A failover (then a failback, alternately) of a service with one attachment
of every kind (target group, Elastic IP, Route 53 record, two NAT route
tables behind the source/dest check) runs against moto in server mode
behind the fault proxy (its own process), which adds a fixed latency to
every AWS call. All traffic stays on loopback. Measured per run:

- total: the plan's wall time, preflight to notification;
- waits: the union of the intervals during which an AWS call was in flight
  or the standby's health probes ran (``rise`` probes, ``fast_interval``
  apart), and the DNS drain before stopping the old instance (it still
  serves; the record's TTL, bounded by ``drain_timeout``, is waited out on
  purpose): what any executor must wait for. Two views of "in flight": at the
  SDK (the boto3 call, so botocore's own CPU counts as AWS time) and at the
  proxy (only the injected latency and moto's time);
- overhead = total - waits: the executor's own time (journal fsyncs, thread
  hand-offs, planning, logging), and with the second view botocore's too;
- step 4: the attach stage's wall time against the slowest attachment and
  the sum of all attachments: concurrent attachments make it close to the
  slowest, not the sum.

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupiterd.aws.client import Aws
from jupiterd.aws.executor import AwsExecutor
from jupiterd.config import parse_config
from jupiterd.core.execution import FailoverRequest, StepReport
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.moto_server import moto_server
from jupiterd.sandbox.peers.process import Peer
from jupiterd.sandbox.seed import seed
from tests.peers.commands import python_peer
from tests.peers.jupiter_aws import EDGE, Listeners, edge_service

ATTACH = ("source_dest_check", "register_target", "associate_eip", "upsert_record", "replace_route")


def union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


# How the stop step reports the DNS drain it waited out (executor._dns_drain).
DNS_DRAIN = re.compile(r"after ([0-9.]+)s for cached DNS answers")


class TimedAws(Aws):
    """Records when each SDK call was in flight."""

    spans: list[tuple[float, float]]

    async def _run(
        self,
        service: str,
        operation: str,
        resource: str,
        invoke: Callable[[], dict[str, Any]],
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        t = time.monotonic()
        try:
            return await super()._run(service, operation, resource, invoke, dry_run=dry_run)
        finally:
            self.spans.append((t, time.monotonic()))


def proxy_stats(url: str, reset: bool = False) -> dict[str, Any]:
    path = "/__proxy__/reset" if reset else "/__proxy__/stats"
    req = urllib.request.Request(url + path, method="POST" if reset else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


async def one_run(ex: AwsExecutor, aws: TimedAws, proxy_url: str, to: Role) -> dict[str, Any]:
    spans: dict[str, tuple[float, float]] = {}

    drains: list[float] = []

    async def hook(service: str, r: StepReport) -> None:
        end = time.monotonic()
        spans[r.name] = (end - r.seconds, end)
        drain = DNS_DRAIN.search(r.detail)
        if drain:
            drains.append(float(drain.group(1)))

    ex.on_step = hook
    aws.spans = []
    proxy_stats(proxy_url, reset=True)
    t0 = time.monotonic()
    out = await ex.run(FailoverRequest(EDGE, to.other, to, "benchmark", "cli"))
    total = time.monotonic() - t0
    assert out.ok, out.detail
    at_proxy = [(a, a + d) for a, _, d in proxy_stats(proxy_url)["log"]]
    health = [spans["standby_healthy"]]
    attach = {n: s for n, s in spans.items() if n.startswith(ATTACH)}
    stage = max(b for _, b in attach.values()) - min(a for a, _ in attach.values())
    durations = {n: b - a for n, (a, b) in attach.items()}
    # The NAT chain (source/dest check, then its route) is one attachment.
    routes = [d for n, d in durations.items() if n.startswith("replace_route")]
    chain = durations.get("source_dest_check", 0.0) + max(routes, default=0.0)
    singles = [d for n, d in durations.items() if not n.startswith(("replace_route", "source"))]
    # The drain is a sleep between two AWS calls: it overlaps nothing else.
    sdk_waits = union(aws.spans + health) + sum(drains)
    proxy_waits = union(at_proxy + health) + sum(drains)
    return {
        "total": total,
        "sdk_waits": sdk_waits,
        "proxy_waits": proxy_waits,
        "overhead": total - sdk_waits,
        "overhead_with_sdk": total - proxy_waits,
        "calls": len(aws.spans),
        "stage4": stage,
        "stage4_slowest": max([chain, *singles]),
        "stage4_sum": sum(durations.values()),
    }


async def main(latency: float, runs: int) -> None:
    with moto_server(patch_env=True) as moto:
        proxy = Peer(
            python_peer("fault_proxy.py", "--upstream", moto.url, "--latency", str(latency))
        )
        ls = Listeners([EDGE])
        ls.start()
        try:
            proxy_url = "http://" + proxy.address
            topo = seed(moto.url)
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_STATE_DIR")) as d:
                doc = edge_service(topo, ls, state_dir=d, client_endpoint=proxy_url)
                cfg = parse_config(doc)
                th = cfg.thresholds(EDGE)
                aws = TimedAws(cfg.aws)
                ex = AwsExecutor(cfg, poll_interval=0.05, aws=aws)
                await aws.warm("ec2", "elbv2", "route53", "sns")
                await one_run(ex, aws, proxy_url, Role.BACKUP)  # warm-up: connections
                results = []
                for i in range(runs):
                    to = Role.PRIMARY if i % 2 == 0 else Role.BACKUP
                    results.append(await one_run(ex, aws, proxy_url, to))
                ex.close()
                aws.close()
        finally:
            ls.stop()
            proxy.stop()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in results)

    print(f"executor benchmark: {runs} plans (failback/failover alternating), service '{EDGE}'")
    print(
        f"  injected latency per AWS call: {latency * 1000:.0f} ms; health: rise {th.rise}, "
        f"fast_interval {th.fast_interval * 1000:.0f} ms"
    )
    print(f"  AWS calls per plan:           {med('calls'):.0f}")
    print(f"  total (median):               {med('total'):.3f} s")
    print(
        f"  unavoidable waits:            {med('sdk_waits'):.3f} s at the SDK, "
        f"{med('proxy_waits'):.3f} s at the proxy"
    )
    print(
        f"  executor overhead:            {med('overhead'):.3f} s median "
        f"(max {max(r['overhead'] for r in results):.3f} s)"
    )
    print(
        f"  ... with botocore's CPU:      {med('overhead_with_sdk'):.3f} s median "
        f"(max {max(r['overhead_with_sdk'] for r in results):.3f} s)"
    )
    print(
        f"  step 4 (attach) wall:         {med('stage4'):.3f} s; slowest attachment "
        f"{med('stage4_slowest'):.3f} s; sum of attachments {med('stage4_sum'):.3f} s"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.05, help="seconds per AWS call")
    p.add_argument("--runs", type=int, default=6)
    a = p.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(a.latency, a.runs))
