"""One execution of one plan, and the verdict it ends with."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field

from jupiterd.core.clock import Clock
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
    clock: Clock  # the executor's
    record: PlanRecord | None = None  # the journal's view; None in a dry run
    resumed: bool = False
    began_at: InitVar[float | None] = None  # Unix time it began (resumed: the journal's)
    started: float = field(init=False)  # on the clock's monotonic time
    wall_started: float = field(init=False)
    facts: ServiceFacts | None = None
    plan: Plan | None = None
    reports: list[StepReport] = field(default_factory=list)
    began: dict[str, float] = field(default_factory=dict)  # step -> seconds into the run
    stopped_old: bool = False
    changed: bool = False  # a mutating call of this run took (or may have taken) effect
    aws_unreachable: bool = False  # preflight's reads got no answer from AWS
    verdict: _Verdict | None = None  # how the plan ended, for its notification
    # Sentences on what the plan left out and why: ``Plan.notes`` (of the
    # rollback plan once one runs), and a stop skipped at stop time.
    notes: list[str] = field(default_factory=list)
    kept: set[str] = field(default_factory=set)  # instances a stop step left running

    def __post_init__(self, began_at: float | None) -> None:
        self.started = self.clock.monotonic()
        self.wall_started = self.clock.time() if began_at is None else began_at

    @property
    def service(self) -> str:
        return self.request.service

    @property
    def plan_id(self) -> str | None:
        return self.record.id if self.record else None

    def elapsed(self) -> float:
        if self.resumed:
            return self.clock.time() - self.wall_started
        return self.clock.monotonic() - self.started

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
