"""The contract between the decision side and whatever moves traffic.

The daemon turns a ``StartFailover`` decision into a ``FailoverRequest`` and
awaits ``Executor.run``; the outcome becomes a ``FailoverFinished`` event.
Implementations: the AWS executor (real or dry-run) and test fakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from jupiterd.core.types import Role

Direction = Literal["failover", "failback"]
Result = Literal["success", "aborted", "failed", "dry_run"]


def direction_of(to_role: Role) -> Direction:
    return "failover" if to_role is Role.BACKUP else "failback"


@dataclass(frozen=True, slots=True)
class FailoverRequest:
    service: str
    from_role: Role
    to_role: Role
    reason: str
    requested_by: Literal["daemon", "cli", "drill", "resume"] = "daemon"

    @property
    def direction(self) -> Direction:
        return direction_of(self.to_role)


@dataclass(frozen=True, slots=True)
class StepReport:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FailoverOutcome:
    service: str
    from_role: Role
    to_role: Role
    result: Result
    detail: str
    seconds: float
    steps: tuple[StepReport, ...] = field(default=())
    stopped_old: bool = False
    # Whether the plan changed anything on AWS (a mutating call took, or may
    # have taken, effect). The executor decides it from what it ran and
    # journaled; an outcome that does not say is assumed to have changed.
    changed: bool = True
    # The plan stopped because AWS did not answer its reads (unreachable,
    # throttled past every retry): nothing in the plan itself was wrong.
    aws_unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.result == "success"


class Executor(Protocol):
    """Runs one plan at a time per service; never raises for AWS failures
    (they are a ``failed``/``aborted`` outcome with a detail)."""

    dry_run: bool  # plans run without changing anything

    async def run(self, request: FailoverRequest) -> FailoverOutcome: ...

    async def resume_pending(self) -> list[FailoverOutcome]:
        """Finish (or undo) the plans an earlier process left unfinished;
        the daemon calls it once at start. Nothing to do: ``[]``."""
        ...


class OfflineExecutor:
    """For `aws.enabled: false`: a due failover is reported, never carried out."""

    dry_run = True

    async def run(self, request: FailoverRequest) -> FailoverOutcome:
        return FailoverOutcome(
            request.service,
            request.from_role,
            request.to_role,
            "dry_run",
            "AWS access is off in the configuration (aws.enabled: false): nothing was changed",
            0.0,
            changed=False,
        )

    async def resume_pending(self) -> list[FailoverOutcome]:
        return []  # it never starts a plan, so none is left unfinished
