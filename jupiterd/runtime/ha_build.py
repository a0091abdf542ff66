"""What a replica of replicated deciders (``ha:``) is built from: one AWS
client shared by the executor, the lease, the shared journal, the views
and the witness. The executor's journal is the table's (fenced by the
lease) and its plan lock the lease itself: only the leader runs plans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupiterd.aws.client import Aws
from jupiterd.aws.executor import AwsExecutor
from jupiterd.aws.ha_journal import LeaseLock, TableJournal
from jupiterd.aws.lease import Lease
from jupiterd.aws.views import Views
from jupiterd.aws.witness import Witness
from jupiterd.config import Config
from jupiterd.runtime.ha import HaParts
from jupiterd.telemetry.clock import SystemClock
from jupiterd.telemetry.metrics import Metrics


class HaExecutor(AwsExecutor):
    """An executor on the replicas' table, with the lease it is fenced by."""

    def __init__(
        self, config: Config, *, dry_run: bool, metrics: Metrics | None, **kw: Any
    ) -> None:
        ha = config.ha
        assert ha is not None
        clock = SystemClock()
        aws = Aws(config.aws, metrics, cache_dir=Path(config.state_dir))
        self.lease = Lease(
            aws,
            ha.table,
            ha.replica_id,
            clock,
            duration=ha.lease_seconds,
            margin=ha.lease_margin,
        )
        journal = TableJournal(aws, ha.table, self.lease)
        super().__init__(
            config,
            dry_run=dry_run,
            metrics=metrics,
            aws=aws,
            journal=journal,
            lock=LeaseLock(self.lease, journal=journal),
            clock=clock,
            own_aws=True,
            **kw,
        )

    def parts(self) -> HaParts:
        """The lease, views and witness the supervisor's ``HaRunner`` drives."""
        ha = self.config.ha
        assert ha is not None
        views = Views(self.aws, ha.table, ha.replica_id, self.clock, ha.stale_after)
        return HaParts(lease=self.lease, views=views, witness=Witness(self.aws, self.config))
