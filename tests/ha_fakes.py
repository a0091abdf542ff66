"""Stand-ins for the replicas' published views and the AWS-side witness,
as ``jupiterd.runtime.ha`` uses them (its ``Views`` and ``Witness``
protocols): one in-memory table shared by the replicas of a test, with the
freshness rule of the real reader (a view is fresh while its ``seq`` was
seen to change within ``stale_after`` of the reader's own clock), and a
switch that makes it unreachable."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from jupiterd.aws.client import AwsError
from jupiterd.core.quorum import ReplicaView, ServiceVerdicts, WitnessVote


@dataclass
class SharedTable:
    items: dict[str, tuple[int, float, bool, str, dict[str, ServiceVerdicts]]] = field(
        default_factory=dict
    )
    unreachable: bool = False
    publishes: int = 0

    def check(self, action: str) -> None:
        if self.unreachable:
            raise AwsError(action, "jupiterd-ha", "Unreachable", "no answer (test)")


class FakeViews:
    def __init__(self, table: SharedTable, replica_id: str, stale_after: float) -> None:
        self.table = table
        self.replica_id = replica_id
        self.stale_after = stale_after
        self.seq = 0
        self._seen: dict[str, tuple[int, float]] = {}  # replica -> (seq, monotonic when changed)

    async def publish(
        self, services: Mapping[str, ServiceVerdicts], *, isolated: bool, why: str
    ) -> None:
        self.table.check("PutItem")
        self.seq += 1
        self.table.publishes += 1
        self.table.items[self.replica_id] = (self.seq, time.time(), isolated, why, dict(services))

    async def read(self) -> dict[str, ReplicaView]:
        self.table.check("Scan")
        now, wall = time.monotonic(), time.time()
        out = {}
        for r, (seq, published_at, isolated, why, services) in self.table.items.items():
            seen = self._seen.get(r)
            if seen is None:
                changed = now - max(0.0, wall - published_at)
            elif seen[0] != seq:
                changed = now
            else:
                changed = seen[1]
            self._seen[r] = (seq, changed)
            age = now - changed
            out[r] = ReplicaView(
                r, seq, published_at, isolated, why, services, age <= self.stale_after, age
            )
        return out


class FakeWitness:
    """Answers ``verdict`` for every service (None: no witness)."""

    def __init__(self, down: bool | None = False, veto: bool = True) -> None:
        self.down = down
        self.veto = veto
        self.asked: list[tuple[str, str | None]] = []

    async def verdict(self, service: str, instance_id: str | None) -> WitnessVote | None:
        self.asked.append((service, instance_id))
        word = {True: "unhealthy", False: "healthy", None: "unknown"}[self.down]
        return WitnessVote("elb", self.down, f"{word} in tg-{service} (test)", self.veto)
