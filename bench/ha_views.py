#!/usr/bin/env python3
"""What the replicas' views cost in DynamoDB: item sizes, request units per
call, and per replica per hour.

    python bench/ha_views.py [--replicas 3] [--services 5] [--plans 3]
                             [--plan-bytes 2048] [--publish-interval 2]

moto's DynamoDB on loopback holds the table: ``--replicas`` views of
``--services`` services (every target with a status, a since and a probe
time, as the daemon would publish them), the lease, and ``--plans``
stand-in journal items of ``--plan-bytes`` each. Sizes are DynamoDB's own
rules applied to the items as stored (moto reports no real capacity); units
are on-demand request units: a write per KB of the item, a Scan per 4 KB of
everything it reads (filtered or not), a BatchGetItem per item, each
rounded up to 4 KB. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3

from jupiterd.aws.client import Aws
from jupiterd.aws.ha_table import create_table
from jupiterd.aws.lease import Lease
from jupiterd.aws.views import (
    ServiceVerdicts,
    TargetVerdict,
    Views,
    item_bytes,
    read_units,
    write_units,
)
from jupiterd.config import AwsConfig
from jupiterd.sandbox.peers.moto_server import moto_server
from jupiterd.telemetry import logs
from jupiterd.telemetry.clock import SystemClock

TABLE = "jupiterd-ha"
REGION = "us-east-1"
# On-demand, us-east-1, per million request units (since November 2024).
PRICE_WRITE = 0.625
PRICE_READ = 0.125


def _services(n: int, now: float) -> dict[str, ServiceVerdicts]:
    return {
        f"service-{i:02d}": ServiceVerdicts(
            "primary",
            TargetVerdict("up", now - 86_000.123456, now - 0.213457),
            TargetVerdict("stopped", now - 86_000.654321, None),
        )
        for i in range(n)
    }


async def run(args: argparse.Namespace, url: str) -> None:
    aws = Aws(AwsConfig(region=REGION, endpoint_url=url, max_attempts=1))
    try:
        await create_table(aws, TABLE)
        await Lease(aws, TABLE, "replica-0", SystemClock()).acquire()
        ddb = boto3.session.Session(region_name=REGION).client("dynamodb", endpoint_url=url)
        for p in range(args.plans):
            ddb.put_item(
                TableName=TABLE,
                Item={"pk": {"S": f"plan#{p:04d}"}, "body": {"S": "x" * args.plan_bytes}},
            )
        views = [
            Views(aws, TABLE, f"replica-{r}", SystemClock(), 6.0) for r in range(args.replicas)
        ]
        now = time.time()
        for v in views:
            await v.publish(_services(args.services, now), isolated=False, why="")
        got = await views[0].read()
        assert len(got) == args.replicas
        items = ddb.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    finally:
        aws.close()

    view_bytes = views[0].last_publish_bytes
    table_bytes = sum(item_bytes(i) for i in items)
    lease_bytes = sum(item_bytes(i) for i in items if i["pk"]["S"] == "lease")
    scan_rru = read_units(table_bytes)
    index_bytes = 8 + sum(len(f"replica-{r}") + 1 for r in range(args.replicas))
    batch_rru = read_units(index_bytes) + args.replicas * read_units(view_bytes)
    wru = write_units(view_bytes)
    per_hour = 3600 / args.publish_interval
    print(f"{args.replicas} replicas, {args.services} services, {args.plans} plans")
    print(f"  view item {view_bytes} B, lease {lease_bytes} B, whole table {table_bytes} B")
    print(f"  publish (UpdateItem): {wru:g} WRU")
    print(
        f"  read, one Scan: {scan_rru:g} RRU strongly consistent, "
        f"{read_units(table_bytes, consistent=False):g} eventually"
    )
    print(f"  read, index + BatchGetItem instead: {batch_rru:g} RRU strongly consistent")
    w_hour, r_hour = per_hour * wru, per_hour * scan_rru
    print(
        f"  per replica per hour (publish and read every {args.publish_interval:g} s): "
        f"{per_hour:.0f} + {per_hour:.0f} calls, {w_hour:.0f} WRU, {r_hour:.0f} RRU"
    )
    month = 730 * (w_hour * PRICE_WRITE + r_hour * PRICE_READ) / 1e6
    print(
        f"  per replica per month at on-demand prices (${PRICE_WRITE}/M WRU, "
        f"${PRICE_READ}/M RRU): ${month:.2f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--services", type=int, default=5)
    ap.add_argument("--plans", type=int, default=3)
    ap.add_argument("--plan-bytes", type=int, default=2048)
    ap.add_argument("--publish-interval", type=float, default=2.0)
    args = ap.parse_args()
    logs.configure("warning", "console", stream=sys.stderr)
    with moto_server(patch_env=True) as server:
        asyncio.run(run(args, server.url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
