"""Runs a plan's steps: a stage's steps concurrently (unless one names
another in ``after``), each through its handler (``steps.HANDLERS``), with
its journal entries, its log lines and the ``on_step`` hook."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from jupiterd.aws.client import AwsError
from jupiterd.aws.executor.changes import DryRunEnd
from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.run import _Run
from jupiterd.aws.executor.steps import HANDLERS
from jupiterd.core.execution import StepReport
from jupiterd.core.plan import Stage, Step, StepKind
from jupiterd.state.journal import JournalError
from jupiterd.state.journal_api import PlanJournal

log = structlog.get_logger("jupiterd.executor")

# Called after each step that ran (tests check the invariant there).
StepHook = Callable[[str, StepReport], Awaitable[None]]


class Stepper:
    def __init__(self, ctx: StepContext, journal: PlanJournal, on_step: StepHook | None) -> None:
        self.ctx = ctx
        self.journal = journal
        self.on_step = on_step

    async def stage(self, run: _Run, steps: tuple[Step, ...]) -> list[StepReport]:
        """Runs the steps of one stage; their reports, in plan order."""
        if len(steps) == 1:
            report = await self.step(run, steps[0])
            run.reports.append(report)
            return [report]
        tasks: dict[str, asyncio.Task[StepReport]] = {}

        async def one(step: Step) -> StepReport:
            for dep in step.after:
                if dep in tasks:
                    r = await asyncio.shield(tasks[dep])
                    if not r.ok:
                        return StepReport(step.name, False, 0.0, f"skipped: {dep} failed")
            return await self.step(run, step)

        for s in steps:
            tasks[s.name] = asyncio.ensure_future(one(s))
        try:
            reports = list(await asyncio.gather(*tasks.values()))
        except BaseException:
            # The journal failed or refused (fenced), or the plan was
            # cancelled: the other steps of the stage stop too.
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        run.reports.extend(reports)  # in plan order, whatever order they ended in
        return reports

    async def step(self, run: _Run, step: Step) -> StepReport:
        rec = run.record
        if rec is not None and rec.ended_ok(step.name) and not _recheck(run, step):
            done = rec.steps[step.name]
            if step.kind is StepKind.STOP_INSTANCE and done.data.get("stopped"):
                run.stopped_old = step.role is run.request.from_role
            return StepReport(
                step.name, True, done.seconds, f"done before the restart: {done.detail}"
            )
        log.info("step_begin", service=run.service, step=step.name, resource=step.resource)
        t = self.ctx.clock.monotonic()
        run.began.setdefault(step.name, t - run.started)
        if rec is not None:
            await asyncio.to_thread(self.journal.begin, rec.id, step.name)
        data: dict[str, Any] = {}
        try:
            detail, data = await HANDLERS[step.kind](self.ctx, run, step)
            ok = True
        except DryRunEnd as end:
            ok, detail = True, end.detail
        except (StepFailed, AwsError) as exc:
            ok, detail = False, str(exc)
        except (asyncio.CancelledError, KeyboardInterrupt, JournalError):
            raise  # JournalError: the journal's guard refused the change (Fenced)
        except Exception as exc:
            log.exception("step_crashed", service=run.service, step=step.name)
            ok, detail = False, f"internal error: {type(exc).__name__}: {exc}"
        seconds = self.ctx.clock.monotonic() - t
        if rec is not None:
            await asyncio.to_thread(self.journal.end, rec.id, step.name, ok, seconds, detail, data)
        if ok and step.kind is StepKind.STOP_INSTANCE and data.get("stopped"):
            run.stopped_old = step.role is run.request.from_role
        report = StepReport(step.name, ok, seconds, detail)
        if self.on_step is not None:
            await self.on_step(run.service, report)
        log.info(
            "step_end",
            service=run.service,
            step=step.name,
            ok=ok,
            seconds=round(seconds, 3),
            detail=detail,
        )
        return report


def _recheck(run: _Run, step: Step) -> bool:
    """After a restart the standby's health is proved again before any
    further traffic step; everything else that ended stays done."""
    if not run.resumed or step.kind is not StepKind.STANDBY_HEALTHY or run.plan is None:
        return False
    rec = run.record
    assert rec is not None
    if step.name.startswith("rollback:"):
        return True
    return any(
        not rec.ended_ok(s.name) for s in run.plan.steps if Stage.HEALTHY < s.stage < Stage.NOTIFY
    )
