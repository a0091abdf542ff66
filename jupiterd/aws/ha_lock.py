"""The plan lock of replicated deciders: the leader lease."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from jupiterd.aws.lease import Lease
from jupiterd.state.planlock import LockBusy


class _SeesLeader(Protocol):
    leader_seen: str | None


class NotLeader(LockBusy):
    """This replica does not hold the leader lease: it runs no plan."""

    def __init__(self, leader: str | None) -> None:
        Exception.__init__(self, f"not the leader (leader is {leader or 'unknown'})")
        self.path = ""
        self.pid = None
        self.leader = leader


class LeaseLock:
    """The plan lock of replicated deciders: held while ``lease.is_leader``.
    ``leader`` names the current leader for the refusal's sentence (the
    runtime knows it); without it, the holder last seen refusing a write."""

    def __init__(
        self,
        lease: Lease,
        *,
        journal: _SeesLeader | None = None,
        leader: Callable[[], str | None] | None = None,
    ) -> None:
        self.lease = lease
        self.journal = journal
        self.leader = leader
        self._holders = 0
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._holders > 0

    def acquire(self) -> None:
        if not self.lease.is_leader():
            who = self.leader() if self.leader is not None else None
            if who is None and self.journal is not None:
                who = self.journal.leader_seen
            raise NotLeader(who)
        with self._mutex:
            self._holders += 1

    def release(self) -> None:
        with self._mutex:
            self._holders = max(0, self._holders - 1)
