"""One execution of one plan, and the verdict it ends with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from jupiterd.core.execution import FailoverRequest, Result, StepReport
from jupiterd.core.plan import Plan, ServiceFacts, StepKind
from jupiterd.state.journal import PlanRecord


@dataclass(frozen=True)
class _Verdict:
    result: Result
    detail: str


@dataclass
class _Run:
    """One execution of one plan (a fresh run, or the resumption of one)."""

    request: FailoverRequest
    record: PlanRecord | None = None  # the journal's view; None in a dry run
    resumed: bool = False
    started: float = field(default_factory=time.monotonic)
    wall_started: float = field(default_factory=time.time)
    facts: ServiceFacts | None = None
    plan: Plan | None = None
    reports: list[StepReport] = field(default_factory=list)
    began: dict[str, float] = field(default_factory=dict)  # step -> seconds into the run
    stopped_old: bool = False
    changed: bool = False  # a mutating call of this run took (or may have taken) effect
    aws_unreachable: bool = False  # preflight's reads got no answer from AWS
    verdict: _Verdict | None = None  # how the plan ended, for its notification

    @property
    def service(self) -> str:
        return self.request.service

    @property
    def plan_id(self) -> str | None:
        return self.record.id if self.record else None

    def elapsed(self) -> float:
        return time.time() - self.wall_started if self.resumed else time.monotonic() - self.started

    def add_journaled_reports(self) -> None:
        """The forward steps an interrupted plan ended, for the outcome and
        the notification of its resumption."""
        assert self.record is not None and self.plan is not None
        for step in self.plan.steps:
            if step.kind is StepKind.NOTIFY:
                continue  # _finish runs it, and reports it, ended or not
            done = self.record.steps.get(step.name)
            if done is not None and done.ended:
                self.reports.append(
                    StepReport(
                        step.name, done.ok, done.seconds, f"before the restart: {done.detail}"
                    )
                )
                if step.kind is StepKind.STOP_INSTANCE and done.ok and done.data.get("stopped"):
                    self.stopped_old = True
