"""A leader replica for the shared-journal tests, as a process of its own:
``python -m tests.ha_leader CONFIG TABLE DYNAMODB_URL OWNER`` takes the
lease (a long one: nobody renews it here), runs the failover of ``edge``
with the shared journal and prints the outcome's result. With
JUPITERD_TEST_KILL_AFTER_RECORD=N it SIGKILLs itself after the N-th record,
as the CLI does with the file journal."""

from __future__ import annotations

import asyncio
import sys

from jupiterd.aws.client import Aws
from jupiterd.aws.executor import AwsExecutor
from jupiterd.aws.ha_journal import LeaseLock, TableJournal
from jupiterd.aws.lease import Lease
from jupiterd.config import AwsConfig, load_config
from jupiterd.core.execution import FailoverRequest
from jupiterd.core.types import Role
from jupiterd.telemetry.clock import SystemClock

LEASE_SECONDS = 120.0
MARGIN = 10.0


async def main(path: str, table: str, url: str, owner: str) -> int:
    config = load_config(path)
    ddb = Aws(AwsConfig(region=config.aws.region, endpoint_url=url, max_attempts=1))
    lease = Lease(ddb, table, owner, SystemClock(), duration=LEASE_SECONDS, margin=MARGIN)
    if not await lease.acquire():
        print("no lease", flush=True)
        return 3
    journal = TableJournal(ddb, table, lease)
    ex = AwsExecutor(
        config,
        journal=journal,
        lock=LeaseLock(lease, journal=journal),
        poll_interval=0.05,
        progress_interval=0.5,
    )
    try:
        out = await ex.run(FailoverRequest("edge", Role.PRIMARY, Role.BACKUP, "test", "cli"))
    finally:
        ex.close()
        ddb.close()
    print(out.result, out.detail, flush=True)
    return 0 if out.result == "success" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:5])))
