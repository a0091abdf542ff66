"""What the executor needs of a plan journal and of the lock that keeps
two deciders from running plans at once: the file journal and the flock
(``journal.Journal``, ``planlock.PlanLock``) in a single process, the shared
journal in DynamoDB and the leader lease (``jupiterd.aws.ha_journal``) with
replicated deciders."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from .journal import JournalView
from .records import PlanRecord


class PlanJournal(Protocol):
    """The records of plans in flight (``state.journal`` tells their
    semantics). Every method may raise ``JournalError``; ``Fenced`` (one of
    them) says another decider owns the plan now."""

    def start_plan(
        self,
        service: str,
        from_role: str,
        to_role: str,
        reason: str,
        requested_by: str,
        standby_state: str,
        kind: str = "failover",
    ) -> PlanRecord: ...

    def begin(self, plan_id: str, step: str) -> None: ...

    def end(
        self,
        plan_id: str,
        step: str,
        ok: bool,
        seconds: float,
        detail: str,
        data: dict[str, Any] | None = None,
    ) -> None: ...

    def rollback(self, plan_id: str, reason: str) -> None: ...

    def result(self, plan_id: str, result: str, detail: str) -> None: ...

    def done(self, plan_id: str) -> None: ...

    def read(self) -> list[PlanRecord]: ...

    def unfinished(self) -> list[PlanRecord]: ...

    def check(self, *, repair: bool) -> JournalView: ...

    def held(self, services: Iterable[str]) -> dict[str, str]: ...

    def maybe_rotate(self) -> None: ...

    def close(self) -> None: ...


class PlanLocker(Protocol):
    """Held while a plan runs; ``acquire`` raises ``LockBusy`` (or
    ``JournalError``) when this process may not run one now."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...
