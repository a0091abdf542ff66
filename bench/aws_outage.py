#!/usr/bin/env python3
"""How soon a failover held by an AWS outage starts once AWS answers.

    python bench/aws_outage.py [--outages 2,12,40] [--runs 3]

One tcp service on loopback, the supervisor in this process with the
default AWS retry backoff (1 s doubling to 10 s, jittered) and the static
inventory made to fail as an unreachable AWS would. The primary dies while
AWS is away; after each outage length AWS answers again. Measured: from AWS
answering to the failover decision (the executor being called), and how
many times AWS was re-read during the outage. Figures are printed; nothing
is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from jupiterd.aws.client import AwsUnavailable
from jupiterd.core.inventory import StaticInventory
from jupiterd.core.types import Role
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.telemetry.metrics import Metrics
from tests.daemon_helpers import FakeExecutor, config_for, wait_for


async def one(outage: float) -> tuple[float, int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    backup = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.3", port)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_for(
            {
                "svc": {
                    "probe": {"kind": "tcp", "port": port},
                    "primary": {"address": "127.0.0.2"},
                    "backup": {"address": "127.0.0.3"},
                }
            },
            tmp,
        )
        inv = StaticInventory(cfg)
        real = inv.snapshot
        state = {"down": False, "reads": 0}

        async def snapshot():  # type: ignore[no-untyped-def]
            if state["down"]:
                state["reads"] += 1
                raise AwsUnavailable("ec2:DescribeInstances", "*", "EndpointConnectionError", "")
            return await real()

        inv.snapshot = snapshot  # type: ignore[method-assign]
        executor = FakeExecutor()
        sup = Supervisor(
            cfg, executor=executor, inventory=inv, metrics=Metrics(CollectorRegistry())
        )
        await sup.start()
        try:
            await wait_for(lambda: sup.state.services["svc"].primary.status.value == "up")
            state["down"] = True
            await sup.refresh_inventory()  # the periodic refresh meets the outage
            server.close()
            await server.wait_closed()
            await asyncio.sleep(outage)
            assert not executor.requests, "a plan ran while AWS was away"
            back = time.monotonic()
            state["down"] = False
            await wait_for(lambda: executor.requests, timeout=60)
            assert executor.requests[0].to_role is Role.BACKUP
            return time.monotonic() - back, state["reads"]
        finally:
            await sup.stop(grace=1)
            backup.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outages", default="2,12,40")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from jupiterd.telemetry import logs

    logs.configure("error", "console", stream=sys.stderr)
    print("outage_s  runs  reaction_s(median)  reaction_s(max)  reads_during_outage")
    for outage in (float(x) for x in args.outages.split(",")):
        results = [asyncio.run(one(outage)) for _ in range(args.runs)]
        reactions = [r for r, _ in results]
        reads = statistics.median(n for _, n in results)
        print(
            f"{outage:8.0f}  {args.runs:4d}  {statistics.median(reactions):18.2f}"
            f"  {max(reactions):15.2f}  {reads:19.0f}"
        )


if __name__ == "__main__":
    main()
