"""The AWS failover executor: runs plans (``plan.py``) step by step on AWS.

``AwsExecutor.run(request)`` does preflight (read-only describes), builds
the plan, journals it, and runs its stages in order; the steps of one stage
run concurrently unless one names another in ``after``. Every step checks
AWS before acting, so running it twice changes nothing the second time.
Waits are bounded by the service's thresholds and log a progress line.

Abort and rollback rules:

- preflight fails: nothing was changed; the outcome is ``aborted``.
- the standby does not start, or never passes ``rise`` probes: the traffic
  stays where it is and the standby is stopped again if this plan started
  it (``aborted``).
- an attachment cannot be moved: the others still move (they do not depend
  on it), nothing is detached or stopped, the outcome is ``failed`` and
  says which attachment is left where (a split a person must look at).
- after a crash, ``resume_pending()`` re-checks the standby's health before
  any further traffic step. Healthy: the plan completes. Not healthy: the
  traffic that moved is moved back to the old instance (if that one still
  passes its probes), the standby detached and stopped if the plan started
  it; otherwise the traffic is left as it is and the outcome says so.
- jupiterd never stops an instance while the other one of the service is
  not running.

Every outcome is published to the SNS topic (except in a dry run). With
``dry_run=True`` the executor runs the describes, logs each mutating call
it would make with its parameters, proves EC2 permissions with
``DryRun=True``, and changes nothing; it writes no journal and takes no lock.

``run`` never raises for AWS trouble: failures are outcomes whose detail
names the step, the resource and, for AccessDenied, the IAM permission.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

import probes
from jupiterd.aws.client import (
    Aws,
    AwsAccessDenied,
    AwsError,
    AwsNotFound,
    AwsThrottled,
    AwsUnavailable,
    iam_action,
)
from jupiterd.aws.inventory import AwsInventory, _instances
from jupiterd.config import Config, Thresholds
from jupiterd.core.execution import FailoverOutcome, FailoverRequest, Result, StepReport
from jupiterd.core.plan import (
    GONE_STATES,
    STOPPED_STATES,
    TRAFFIC_KINDS,
    Plan,
    ServiceFacts,
    Stage,
    Step,
    StepKind,
    attachment_states,
    build_plan,
    build_rollback,
    is_done,
    preflight_problems,
    record_value,
    target_id,
    target_registered,
    target_serving,
    zone_key,
)
from jupiterd.core.types import Role
from jupiterd.state.journal import (
    Journal,
    JournalError,
    LockBusy,
    PlanLock,
    PlanRecord,
    held_services,
)
from jupiterd.telemetry.metrics import Metrics
from probes import ProbeOptions, ProbeResult

log = structlog.get_logger("jupiterd.executor")

Prober = Callable[[str, str, ProbeOptions, float], Awaitable[ProbeResult]]
# Called after each step that ran (tests check the invariant there).
StepHook = Callable[[str, StepReport], Awaitable[None]]


async def default_prober(
    kind: str, target: str, options: ProbeOptions, timeout: float
) -> ProbeResult:
    return await probes.get_kind(kind).probe(target, options, timeout)


def _refused(exc: BaseException) -> bool:
    """Whether a mutating call surely took no effect: AWS answered it with a
    refusal (denied, not found, throttled) or it was never sent (no
    credentials). No answer (a timeout, a closed connection) or any other
    error may hide a call that took effect."""
    if isinstance(exc, AwsAccessDenied | AwsNotFound | AwsThrottled):
        return True
    return isinstance(exc, AwsUnavailable) and exc.code == "NoCredentials"


class StepFailed(Exception):
    """A step could not do its job; the message is the sentence to report."""


def _target(tid: str, port: int | None) -> dict[str, Any]:
    """A target group's target, as ELB's calls take it."""
    target: dict[str, Any] = {"Id": tid}
    if port is not None:
        target["Port"] = port
    return target


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
    stopped_old: bool = False
    changed: bool = False  # a mutating call of this run took (or may have taken) effect
    aws_unreachable: bool = False  # preflight's reads got no answer from AWS

    @property
    def service(self) -> str:
        return self.request.service

    @property
    def plan_id(self) -> str | None:
        return self.record.id if self.record else None

    def elapsed(self) -> float:
        return time.time() - self.wall_started if self.resumed else time.monotonic() - self.started


@dataclass(frozen=True)
class _Verdict:
    result: Result
    detail: str


class AwsExecutor:
    """Implements ``executor_api.Executor`` on AWS."""

    def __init__(
        self,
        config: Config,
        *,
        dry_run: bool = False,
        metrics: Metrics | None = None,
        aws: Aws | None = None,
        prober: Prober | None = None,
        poll_interval: float = 2.0,
        progress_interval: float = 10.0,
        journal: Journal | None = None,
        lock: PlanLock | None = None,
        on_step: StepHook | None = None,
    ) -> None:
        self.config = config
        self.dry_run = dry_run
        self.metrics = metrics
        self._own_aws = aws is None
        self.aws = (
            aws if aws is not None else Aws(config.aws, metrics, cache_dir=Path(config.state_dir))
        )
        self.inventory = AwsInventory(config, self.aws)
        self.prober = prober or default_prober
        self.poll_interval = poll_interval
        self.progress_interval = progress_interval
        self.journal = journal if journal is not None else Journal(config.state_dir)
        self.lock = lock if lock is not None else PlanLock(config.state_dir)
        self.on_step = on_step
        self._in_flight: set[str] = set()

    def close(self) -> None:
        if self._own_aws:
            self.aws.close()
        self.journal.close()

    # ------------------------------------------------------------------ entry points

    async def run(self, request: FailoverRequest) -> FailoverOutcome:
        return await self._guarded(_Run(request))

    async def resume_pending(self) -> list[FailoverOutcome]:
        """Finish (or undo) the plans an earlier process left unfinished.
        The daemon calls this at start, the CLI before acting. Nothing to do
        in a dry run, or while another process holds the lock (its plans
        are not interrupted, they are running)."""
        if self.dry_run:
            return []
        try:
            self.lock.acquire()
        except LockBusy as exc:
            log.warning("resume_skipped", reason=str(exc))
            return []
        except JournalError as exc:
            log.error("resume_failed", reason=str(exc))
            return []
        try:
            try:
                unfinished = await asyncio.to_thread(self.journal.unfinished)
            except JournalError as exc:
                log.error("resume_failed", reason=str(exc))
                return []
            runs: list[_Run] = []
            for rec in unfinished:
                if rec.service in self._in_flight:
                    continue  # running in this process: not interrupted
                if rec.service not in self.config.services:
                    detail = f"service {rec.service} is no longer configured: plan {rec.id} dropped"
                    log.error("resume_dropped", service=rec.service, plan=rec.id, reason=detail)
                    self.journal.result(rec.id, "failed", detail)
                    self.journal.done(rec.id)
                    continue
                try:
                    req = FailoverRequest(
                        rec.service, Role(rec.from_role), Role(rec.to_role), rec.reason, "resume"
                    )
                except ValueError:
                    self.journal.done(rec.id)
                    continue
                log.warning(
                    "resuming_plan",
                    service=rec.service,
                    plan=rec.id,
                    direction=req.direction,
                    started_at=rec.started_at,
                    by=rec.requested_by,
                )
                runs.append(_Run(req, record=rec, resumed=True, wall_started=rec.started_at))
            return list(await asyncio.gather(*(self._guarded(r) for r in runs)))
        finally:
            self.lock.release()

    async def _guarded(self, run: _Run) -> FailoverOutcome:
        """Lock, in-flight bookkeeping, metrics; never raises (except
        cancellation, which leaves the journal for the next start)."""
        req = run.request
        if req.service not in self.config.services:
            return self._outcome(run, _Verdict("failed", f"no service named '{req.service}'"))
        if req.service in self._in_flight:
            return self._outcome(
                run,
                _Verdict("aborted", f"a plan for {req.service} is already running in this process"),
            )
        if not self.dry_run:
            try:
                self.lock.acquire()
            except (LockBusy, JournalError) as exc:
                return self._outcome(run, _Verdict("aborted", str(exc)))
        self._in_flight.add(req.service)
        try:
            verdict = await self._execute(run)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug must not take the daemon down
            log.exception("plan_crashed", service=req.service)
            verdict = _Verdict("failed", f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._in_flight.discard(req.service)
            if not self.dry_run:
                self.lock.release()
        outcome = self._outcome(run, verdict)
        log.info(
            "plan_end",
            service=req.service,
            direction=req.direction,
            result=outcome.result,
            seconds=round(outcome.seconds, 3),
            detail=outcome.detail,
            dry_run=self.dry_run,
        )
        return outcome

    def _outcome(self, run: _Run, verdict: _Verdict) -> FailoverOutcome:
        req = run.request
        return FailoverOutcome(
            service=req.service,
            from_role=req.from_role,
            to_role=req.to_role,
            result=verdict.result,
            detail=verdict.detail,
            seconds=run.elapsed(),
            steps=tuple(run.reports),
            stopped_old=run.stopped_old,
            changed=self._changed(run),
            aws_unreachable=run.aws_unreachable,
        )

    def _changed(self, run: _Run) -> bool:
        """Whether the plan changed anything on AWS: a mutating call of this
        run took (or may have taken) effect, or, for a plan resumed after a
        restart, the journal shows a step begun before it."""
        if self.dry_run:
            return False
        if run.changed:
            return True
        rec = run.record
        return run.resumed and rec is not None and any(s.begun for s in rec.steps.values())

    # ------------------------------------------------------------------ the plan

    async def _execute(self, run: _Run) -> _Verdict:
        req = run.request
        log.info(
            "plan_begin",
            service=req.service,
            direction=req.direction,
            reason=req.reason,
            by=req.requested_by,
            dry_run=self.dry_run,
            resumed=run.resumed,
        )
        problem = await self._preflight(run)
        if problem is not None:
            if run.record is None:
                verdict = _Verdict("aborted", f"preflight: {problem}; nothing was changed")
                if not self.dry_run:
                    await self._notify_unjournaled(run, verdict)
                return verdict
            # A resumed plan whose resources vanished: nothing safe to do.
            return await self._finish(run, _Verdict("failed", f"preflight: {problem}"))
        assert run.facts is not None
        if run.record is None and is_done(self.config, req.service, run.facts, req.to_role):
            inst = run.facts.instance(req.to_role)
            return _Verdict(
                "dry_run" if self.dry_run else "success",
                f"the traffic of {req.service} is already on the {req.to_role} "
                f"({inst.instance_id}): nothing to do",
            )
        run.plan = build_plan(self.config, req.service, req.to_role, run.facts)
        if not self.dry_run and run.record is None:
            run.record = await asyncio.to_thread(
                self.journal.start_plan,
                req.service,
                str(req.from_role),
                str(req.to_role),
                req.reason,
                req.requested_by,
                run.facts.instance(req.to_role).state,
            )
        journaled = run.record
        if journaled is not None and journaled.result is not None:
            self._journaled_reports(run)
            result, detail = journaled.result
            return await self._finish(run, _Verdict(result, detail))  # type: ignore[arg-type]
        if journaled is not None and journaled.rollback is not None:
            self._journaled_reports(run)
            return await self._finish(run, await self._rollback(run, journaled.rollback))
        return await self._finish(run, await self._forward(run))

    def _journaled_reports(self, run: _Run) -> None:
        """The forward steps an interrupted plan ended, for the outcome and
        the notification of its resumption."""
        assert run.record is not None and run.plan is not None
        for step in run.plan.steps:
            if step.kind is StepKind.NOTIFY:
                continue  # _finish runs it, and reports it, ended or not
            done = run.record.steps.get(step.name)
            if done is not None and done.ended:
                run.reports.append(
                    StepReport(
                        step.name, done.ok, done.seconds, f"before the restart: {done.detail}"
                    )
                )
                if step.kind is StepKind.STOP_INSTANCE and done.ok and done.data.get("stopped"):
                    run.stopped_old = True

    async def _journal_hold(self, run: _Run) -> str | None:
        """Why a damaged journal holds this new plan's service, if it does:
        no plan runs without its record until an operator has looked."""
        if run.record is not None:
            return None  # a resumed plan: its record is whole
        with contextlib.suppress(JournalError):
            if self.dry_run:  # changes nothing, not even the journal: reports it
                view = await asyncio.to_thread(self.journal.check, repair=False)
                if view.damage and (view.affected is None or run.service in view.affected):
                    return f"{view.damage}: a real run would be held"
            else:
                await asyncio.to_thread(self.journal.read)  # moves new damage aside
        return held_services(self.config.state_dir, [run.service]).get(run.service)

    async def _preflight(self, run: _Run) -> str | None:
        req = run.request
        t = time.monotonic()
        held = await self._journal_hold(run)
        if held is not None:
            run.reports.append(StepReport("preflight", False, time.monotonic() - t, held))
            log.info("step_end", service=req.service, step="preflight", ok=False, detail=held)
            return held
        problems: list[str] = []
        try:
            facts = (await self.inventory.facts([req.service]))[req.service]
        except AwsError as exc:
            problems.append(str(exc))
            run.aws_unreachable = isinstance(exc, AwsUnavailable | AwsThrottled)
        else:
            run.facts = facts
            problems = preflight_problems(self.config, req.service, facts, req.to_role)
            if run.record is None and not self.dry_run:
                try:
                    unfinished = await asyncio.to_thread(self.journal.unfinished)
                    others = [p for p in unfinished if p.service == req.service]
                except JournalError as exc:
                    others = []
                    problems.append(str(exc))
                if others:
                    problems.append(
                        f"an interrupted plan for {req.service} (started "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(others[0].started_at))}"
                        " UTC) is unfinished: it is resumed when jupiterd starts"
                    )
            topic = self.config.topic_for(req.service)
            if self.dry_run and topic:
                try:
                    await self.aws.call("sns", "GetTopicAttributes", resource=topic, TopicArn=topic)
                except AwsError as exc:
                    problems.append(f"the notification topic: {exc}")
        detail = "; ".join(problems) if problems else "instances and attachments found"
        report = StepReport("preflight", not problems, time.monotonic() - t, detail)
        run.reports.append(report)
        log.info(
            "step_end",
            service=req.service,
            step="preflight",
            ok=report.ok,
            seconds=round(report.seconds, 3),
            detail=detail,
        )
        return "; ".join(problems) if problems else None

    async def _forward(self, run: _Run) -> _Verdict:
        plan, facts, req = run.plan, run.facts, run.request
        assert plan is not None and facts is not None
        standby, old = facts.instance(req.to_role), facts.instance(req.from_role)
        for stage, steps in plan.stages():
            if stage is Stage.NOTIFY:
                break
            reports = await self._run_stage(run, steps)
            failed = [r for r in reports if not r.ok]
            if not failed:
                continue
            first = failed[0]
            if self.dry_run:
                return _Verdict("failed", f"dry run: {first.name} would fail: {first.detail}")
            if stage in (Stage.START, Stage.HEALTHY):
                return await self._abort(run, f"{first.name}: {first.detail}")
            if stage is Stage.ATTACH:
                moved = [r.name for r in reports if r.ok]
                where = f"; moved: {', '.join(moved)}" if moved else ""
                return _Verdict(
                    "failed",
                    f"{first.name}: {first.detail}{where}. The {req.from_role} "
                    f"({old.instance_id}) was neither detached nor stopped: "
                    f"check `jupiterd status {req.service}` for the split",
                )
            if stage is Stage.DETACH:
                return _Verdict(
                    "failed",
                    f"the traffic is on the {req.to_role} ({standby.instance_id}), but "
                    f"{first.name}: {first.detail}; the {req.from_role} was left running",
                )
            return _Verdict(
                "failed",
                f"the traffic is on the {req.to_role} ({standby.instance_id}), but "
                f"{first.name}: {first.detail}",
            )
        if self.dry_run:
            return _Verdict(
                "dry_run",
                f"dry run: {req.direction} of {req.service} to the {req.to_role} "
                f"({standby.instance_id}) would run {len(plan.steps)} steps; every check passed",
            )
        moved = [s.name.split(":", 1)[-1] for s in plan.steps if s.kind in TRAFFIC_KINDS]
        stop = (
            f"; the {req.from_role} ({old.instance_id}) was stopped"
            if run.stopped_old
            else f"; the {req.from_role} ({old.instance_id}) was left running"
        )
        what = f": {', '.join(moved)}" if moved else ""
        return _Verdict(
            "success",
            f"{req.service} moved to the {req.to_role} ({standby.instance_id}){what}{stop}",
        )

    def _traffic_moved(self, run: _Run) -> bool:
        rec = run.record
        if rec is None or run.plan is None:
            return False
        return any(
            s.kind in TRAFFIC_KINDS
            and rec.steps.get(s.name) is not None
            and rec.steps[s.name].begun
            for s in run.plan.steps
        )

    async def _abort(self, run: _Run, reason: str) -> _Verdict:
        req = run.request
        if self.dry_run or run.record is None:
            return _Verdict("failed" if self.dry_run else "aborted", reason)
        prepared = self._rollback_plan(run)
        if not prepared[0].steps:
            return _Verdict(
                "aborted",
                f"{reason}; the traffic stays on the {req.from_role} and nothing was changed",
            )
        await asyncio.to_thread(self.journal.rollback, run.record.id, reason)
        run.record.rollback = reason
        return await self._rollback(run, reason, prepared)

    def _started_standby(self, run: _Run) -> bool:
        rec = run.record
        return rec is not None and (rec.standby_state or "") in STOPPED_STATES

    def _rollback_plan(self, run: _Run) -> tuple[Plan, bool]:
        """The rollback plan, and whether any traffic had moved."""
        assert run.plan is not None and run.facts is not None
        traffic_moved = self._traffic_moved(run)
        rb = build_rollback(
            self.config,
            run.plan,
            run.facts,
            started_standby=self._started_standby(run),
            traffic_moved=traffic_moved,
        )
        return rb, traffic_moved

    async def _rollback(
        self, run: _Run, reason: str, prepared: tuple[Plan, bool] | None = None
    ) -> _Verdict:
        """``prepared``: what ``_rollback_plan`` returned, if already built."""
        req = run.request
        rb, traffic_moved = prepared if prepared is not None else self._rollback_plan(run)
        log.warning("rollback_begin", service=req.service, reason=reason)
        for stage, steps in rb.stages():
            reports = await self._run_stage(run, steps)
            failed = [r for r in reports if not r.ok]
            if not failed:
                continue
            first = failed[0]
            if stage is Stage.HEALTHY:
                return _Verdict(
                    "failed",
                    f"{reason}; cannot roll back: the {req.from_role} fails its probes too "
                    f"({first.detail}); the traffic was left as it is",
                )
            return _Verdict(
                "failed", f"{reason}; the rollback failed at {first.name}: {first.detail}"
            )
        words = []
        if traffic_moved:
            words.append(f"the traffic was moved back to the {req.from_role}")
        else:
            words.append(f"the traffic stays on the {req.from_role}")
        if any(s.kind is StepKind.STOP_INSTANCE for s in rb.steps):
            words.append(f"the {req.to_role} was stopped again")
        return _Verdict("aborted", f"{reason}; {' and '.join(words)}")

    async def _finish(self, run: _Run, verdict: _Verdict) -> _Verdict:
        rec, plan = run.record, run.plan
        if rec is None:
            return verdict
        if rec.result is None:
            await asyncio.to_thread(self.journal.result, rec.id, verdict.result, verdict.detail)
            rec.result = (verdict.result, verdict.detail)
        if plan is not None:
            notify = [s for s in plan.steps if s.kind is StepKind.NOTIFY]
            if notify:
                run.reports.append(await self._run_step(run, notify[0], verdict=verdict))
        await asyncio.to_thread(self.journal.done, rec.id)
        rec.done = True
        try:
            await asyncio.to_thread(self.journal.maybe_rotate)
        except OSError as exc:
            log.warning("journal_rotate_failed", reason=str(exc))
        return verdict

    async def _notify_unjournaled(self, run: _Run, verdict: _Verdict) -> None:
        topic = self.config.topic_for(run.service)
        if not topic:
            return
        try:
            await self._publish(run, topic, verdict)
        except AwsError as exc:
            log.error("notify_failed", service=run.service, reason=str(exc))

    # ------------------------------------------------------------------ steps

    async def _run_stage(self, run: _Run, steps: tuple[Step, ...]) -> list[StepReport]:
        if len(steps) == 1:
            report = await self._run_step(run, steps[0])
            run.reports.append(report)
            return [report]
        tasks: dict[str, asyncio.Task[StepReport]] = {}

        async def one(step: Step) -> StepReport:
            for dep in step.after:
                if dep in tasks:
                    r = await asyncio.shield(tasks[dep])
                    if not r.ok:
                        return StepReport(step.name, False, 0.0, f"skipped: {dep} failed")
            return await self._run_step(run, step)

        for s in steps:
            tasks[s.name] = asyncio.ensure_future(one(s))
        reports = list(await asyncio.gather(*tasks.values()))
        run.reports.extend(reports)  # in plan order, whatever order they ended in
        return reports

    async def _run_step(
        self, run: _Run, step: Step, *, verdict: _Verdict | None = None
    ) -> StepReport:
        rec = run.record
        if rec is not None and rec.ended_ok(step.name) and not self._recheck(run, step):
            done = rec.steps[step.name]
            if step.kind is StepKind.STOP_INSTANCE and done.data.get("stopped"):
                run.stopped_old = step.role is run.request.from_role
            return StepReport(
                step.name, True, done.seconds, f"done before the restart: {done.detail}"
            )
        log.info("step_begin", service=run.service, step=step.name, resource=step.resource)
        t = time.monotonic()
        if rec is not None:
            await asyncio.to_thread(self.journal.begin, rec.id, step.name)
        data: dict[str, Any] = {}
        try:
            if step.kind is StepKind.NOTIFY:
                detail = await self._step_notify(run, step, verdict)
            else:
                detail, data = await self._handlers[step.kind](self, run, step)
            ok = True
        except (StepFailed, AwsError) as exc:
            ok, detail = False, str(exc)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            log.exception("step_crashed", service=run.service, step=step.name)
            ok, detail = False, f"internal error: {type(exc).__name__}: {exc}"
        seconds = time.monotonic() - t
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

    def _recheck(self, run: _Run, step: Step) -> bool:
        """After a restart the standby's health is proved again before any
        further traffic step; everything else that ended stays done."""
        if not run.resumed or step.kind is not StepKind.STANDBY_HEALTHY or run.plan is None:
            return False
        rec = run.record
        assert rec is not None
        if step.name.startswith("rollback:"):
            return True
        return any(
            not rec.ended_ok(s.name)
            for s in run.plan.steps
            if Stage.HEALTHY < s.stage < Stage.NOTIFY
        )

    def _th(self, run: _Run) -> Thresholds:
        return self.config.thresholds(run.service)

    async def _mutate(
        self,
        run: _Run,
        service: str,
        operation: str,
        resource: str,
        *,
        proof: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """A call that changes AWS. In a dry run: logged with its parameters,
        and for EC2 sent with DryRun=True to prove the permission (with
        ``proof`` as the parameters when given: a harmless variant of the
        call that needs the same permission)."""
        action = iam_action(service, operation)
        shown = {k: v for k, v in params.items() if k != "Message"}  # the SNS summary: long
        if self.dry_run:
            log.info(
                "dry_run_call", service=run.service, action=action, resource=resource, params=shown
            )
            if service == "ec2":
                sent = dict(proof) if proof is not None else params
                await self.aws.call(service, operation, resource=resource, dry_run=True, **sent)
            return {}
        log.info("aws_change", service=run.service, action=action, resource=resource, params=shown)
        if service == "sns":  # a notification moves no traffic
            return await self.aws.call(service, operation, resource=resource, **params)
        try:
            response = await self.aws.call(service, operation, resource=resource, **params)
        except BaseException as exc:
            if not _refused(exc):
                run.changed = True
            raise
        run.changed = True
        return response

    async def _wait(
        self,
        run: _Run,
        step: Step,
        what: str,
        check: Callable[[], Awaitable[tuple[bool, str]]],
        timeout: float,
    ) -> tuple[bool, str, float]:
        """Poll ``check`` until it says done or ``timeout`` passes; a progress
        line every ``progress_interval``. Returns (done, last status, seconds)."""
        t = time.monotonic()
        last_log = t
        while True:
            done, status = await check()
            elapsed = time.monotonic() - t
            if done:
                return True, status, elapsed
            if elapsed >= timeout:
                return False, status, elapsed
            now = time.monotonic()
            if now - last_log >= self.progress_interval:
                last_log = now
                log.info(
                    "waiting",
                    service=run.service,
                    step=step.name,
                    what=what,
                    status=status,
                    seconds=round(elapsed, 1),
                    timeout=timeout,
                )
            await asyncio.sleep(min(self.poll_interval, max(0.0, timeout - elapsed)))

    async def _describe(self, *instance_ids: str) -> dict[str, dict[str, Any]]:
        resp = await self.aws.call(
            "ec2",
            "DescribeInstances",
            resource=", ".join(instance_ids),
            Filters=[{"Name": "instance-id", "Values": list(instance_ids)}],
        )
        return {i["InstanceId"]: i for i in _instances(resp)}

    async def _instance(self, iid: str | None, role: Role) -> dict[str, Any]:
        if not iid:
            raise StepFailed(f"the {role} instance was not found")
        found = (await self._describe(iid)).get(iid)
        if found is None:
            raise StepFailed(f"the {role} instance {iid} does not exist")
        return found

    # -- EC2 instances

    async def _step_start(self, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
        iid = step.params["instance_id"]
        inst = await self._instance(iid, step.role)
        state = inst["State"]["Name"]
        if state == "running":
            return f"{iid} is already running", {}
        if state in GONE_STATES:
            raise StepFailed(f"the {step.role} instance {iid} is {state}")
        th = self._th(run)
        if state == "stopping" and not self.dry_run:
            ok, st, _ = await self._wait(
                run, step, f"{iid} to finish stopping", self._state_check(iid), th.start_timeout
            )
            if not ok:
                raise StepFailed(f"{iid} was still {st} after {th.start_timeout:g}s")
            state = st
        if state in ("stopped", "stopping"):
            await self._mutate(run, "ec2", "StartInstances", iid, InstanceIds=[iid])
        if self.dry_run:
            return f"would start {iid} (now {state}): ec2:StartInstances is allowed", {}
        stopped_polls = 0

        async def check() -> tuple[bool, str]:
            nonlocal stopped_polls
            cur = (await self._describe(iid)).get(iid)
            if cur is None:
                raise StepFailed(f"the {step.role} instance {iid} disappeared")
            name = cur["State"]["Name"]
            if name in GONE_STATES:
                raise StepFailed(f"the {step.role} instance {iid} is {name}")
            # EC2 may fall back to stopped (e.g. no capacity in the AZ); a
            # stopped answer right after the start can also be stale.
            stopped_polls = stopped_polls + 1 if name == "stopped" else 0
            if stopped_polls >= 3:
                why = cur.get("StateReason", {}).get("Message", "no reason given")
                raise StepFailed(f"{iid} went back to stopped after the start ({why})")
            return name == "running", name

        ok, st, secs = await self._wait(run, step, f"{iid} to be running", check, th.start_timeout)
        if not ok:
            raise StepFailed(
                f"the {step.role} instance {iid} was still {st} after {th.start_timeout:g}s "
                "(start_timeout)"
            )
        return f"started {iid} ({secs:.1f}s to running)", {"started": True}

    def _state_check(self, iid: str) -> Callable[[], Awaitable[tuple[bool, str]]]:
        async def check() -> tuple[bool, str]:
            cur = (await self._describe(iid)).get(iid)
            name = cur["State"]["Name"] if cur else "missing"
            return name not in ("stopping", "pending", "shutting-down"), name

        return check

    async def _step_stop(self, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
        assert run.facts is not None
        iid = step.params["instance_id"]
        other = run.facts.instance(step.role.other)
        if not iid:
            raise StepFailed(f"the {step.role} instance was not found")
        ids = [iid] + ([other.instance_id] if other.instance_id else [])
        found = await self._describe(*ids)
        cur = found.get(iid)
        if cur is None:
            raise StepFailed(f"the {step.role} instance {iid} does not exist")
        state = cur["State"]["Name"]
        if state in STOPPED_STATES or state in GONE_STATES:
            return f"{iid} is already {state}", {"stopped": True}
        o = found.get(other.instance_id or "")
        o_state = o["State"]["Name"] if o else "missing"
        # In a dry run the standby was not really started: it only must exist.
        startable = self.dry_run and o_state in STOPPED_STATES | {"pending"}
        if o_state != "running" and not startable:
            raise StepFailed(
                f"refusing to stop the {step.role} instance {iid}: the {step.role.other} "
                f"({other.instance_id}) is {o_state}, and jupiterd never leaves both stopped"
            )
        drained = await self._dns_drain(run, step, iid)
        await self._mutate(run, "ec2", "StopInstances", iid, InstanceIds=[iid])
        if self.dry_run:
            return f"would stop {iid}: ec2:StopInstances is allowed", {}
        return f"stop requested for {iid} (was {state}){drained}", {"stopped": True}

    async def _dns_drain(self, run: _Run, step: Step, iid: str) -> str:
        """Clients keep resolving a moved record to the old address until its
        TTL runs out. If the old instance still serves (a planned move, not a
        crash), keep it up that long, bounded by drain_timeout, as a target
        group's deregistration delay does for connections."""
        if self.dry_run or run.plan is None or run.facts is None:
            return ""
        ttls = []
        for s in run.plan.steps:
            if s.kind is not StepKind.UPSERT_RECORD:
                continue
            rec = run.facts.record(s.params["zone_id"], s.params["name"], s.params["type"])
            ttls.append(rec.ttl if rec is not None and rec.ttl is not None else 60)
        if not ttls:
            return ""
        th = self._th(run)
        wait = min(float(max(ttls)), th.drain_timeout)
        address = run.facts.instance(step.role).address
        if wait <= 0 or not address:
            return ""
        svc = self.config.services[run.service]
        target = svc.probe.target_for(address)
        result = await self.prober(svc.probe.kind, target, svc.probe.parsed_options, th.timeout)
        if not result.ok and not result.monitor_error:
            return ""  # nothing is served there: no client to protect
        log.info(
            "waiting",
            service=run.service,
            step=step.name,
            what=f"the old DNS answers to expire before stopping {iid}, which still serves",
            seconds=0.0,
            timeout=wait,
        )
        await asyncio.sleep(wait)
        return f" after {wait:g}s for cached DNS answers (record TTL) to expire"

    async def _step_healthy(self, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
        assert run.facts is not None
        svc = self.config.services[run.service]
        th = self._th(run)
        facts = run.facts.instance(step.role)
        iid = step.params.get("instance_id") or facts.instance_id
        inst = await self._instance(iid, step.role)
        state = inst["State"]["Name"]
        address = facts.address or inst.get("PrivateIpAddress")
        if not address:
            raise StepFailed(f"the {step.role} instance {iid} has no address to probe")
        target = svc.probe.target_for(address)
        kind = svc.probe.kind
        if state != "running":
            if self.dry_run:
                return (
                    f"would wait for {th.rise} passing {kind} probe(s) of {target} "
                    f"(the {step.role} is {state} now)",
                    {},
                )
            raise StepFailed(f"the {step.role} instance {iid} is {state}, not running")
        options = svc.probe.parsed_options
        passes = 0
        last: ProbeResult | None = None
        t = time.monotonic()
        last_log = t
        while True:
            try:
                last = await self.prober(kind, target, options, th.timeout)
            except probes.OptionError as exc:
                raise StepFailed(f"cannot probe {target}: {exc}") from None
            if not last.monitor_error:  # failed on this host: no verdict either way
                passes = passes + 1 if last.ok else 0
            elapsed = time.monotonic() - t
            if passes >= th.rise:
                return (
                    f"{iid} passed {th.rise} {kind} probe(s) of {target} in {elapsed:.1f}s",
                    {},
                )
            if elapsed >= th.healthy_timeout:
                break
            if time.monotonic() - last_log >= self.progress_interval:
                last_log = time.monotonic()
                log.info(
                    "waiting",
                    service=run.service,
                    step=step.name,
                    what=f"{iid} to pass {th.rise} {kind} probe(s) of {target}",
                    status=f"{last.reason}: {last.detail}",
                    seconds=round(elapsed, 1),
                    timeout=th.healthy_timeout,
                )
            await asyncio.sleep(min(th.fast_interval, max(0.0, th.healthy_timeout - elapsed)))
        assert last is not None
        raise StepFailed(
            f"the {step.role} instance {iid} did not pass {th.rise} consecutive {kind} probe(s) "
            f"of {target} within {th.healthy_timeout:g}s (healthy_timeout); "
            f"last: {last.reason}: {last.detail}"
        )

    async def _step_source_dest(self, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
        iid = step.params["instance_id"]
        inst = await self._instance(iid, step.role)
        if inst.get("SourceDestCheck") is False:
            return f"source/dest check already off on {iid}", {}
        await self._mutate(
            run,
            "ec2",
            "ModifyInstanceAttribute",
            iid,
            InstanceId=iid,
            SourceDestCheck={"Value": False},
        )
        verb = "would turn" if self.dry_run else "turned"
        return f"{verb} off the source/dest check on {iid} (it routes NAT traffic)", {}

    # -- target groups

    async def _target_state(self, arn: str, tid: str, port: int | None) -> tuple[str, str, str]:
        resp = await self.aws.call(
            "elbv2",
            "DescribeTargetHealth",
            resource=arn,
            TargetGroupArn=arn,
            Targets=[_target(tid, port)],
        )
        for d in resp.get("TargetHealthDescriptions", []):
            if str(d.get("Target", {}).get("Id")) == tid:
                th = d.get("TargetHealth", {})
                return (
                    str(th.get("State")),
                    str(th.get("Reason", "")),
                    str(th.get("Description", "")),
                )
        return "unused", "Target.NotRegistered", ""

    def _tg_target(self, run: _Run, step: Step) -> tuple[str, str, int | None, Any]:
        assert run.facts is not None
        arn = step.params["arn"]
        tg = run.facts.target_group(arn)
        if tg is None or not tg.exists:
            raise StepFailed(f"target group {arn} does not exist")
        inst = run.facts.instance(step.role)
        tid = target_id(tg, inst)
        if not tid:
            raise StepFailed(f"the {step.role} instance has no {tg.target_type} id for {arn}")
        return arn, tid, step.params.get("port") or tg.port, tg

    async def _step_register(self, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
        arn, tid, port, tg = self._tg_target(run, step)
        state, reason, _ = await self._target_state(arn, tid, port)
        if target_serving(tg, (state, reason)):
            return f"{tid} is already registered and {state} in {tg.name}", {}
        if not target_registered((state, reason)):
            await self._mutate(
                run,
                "elbv2",
                "RegisterTargets",
                arn,
                TargetGroupArn=arn,
                Targets=[_target(tid, port)],
            )
        if self.dry_run:
            return f"would register {tid}:{port} in {tg.name} and wait until healthy", {}
        th = self._th(run)
        last = ["", "", ""]

        async def check() -> tuple[bool, str]:
            st = await self._target_state(arn, tid, port)
            last[:] = st
            if st[0] == "unused" and st[1] == "Target.NotInUse":
                return True, "unused (the target group is not used by a load balancer)"
            return target_serving(tg, (st[0], st[1])), st[0]

        ok, status, secs = await self._wait(
            run, step, f"{tid} healthy in {tg.name}", check, th.target_healthy_timeout
        )
        if not ok:
            why = f" ({last[1]}: {last[2]})" if last[1] else ""
            raise StepFailed(
                f"{tid} registered in {tg.name} was still {status}{why} after "
                f"{th.target_healthy_timeout:g}s (target_healthy_timeout)"
            )
        return f"{tid}:{port} registered and {status} in {tg.name} after {secs:.1f}s", {}

    async def _step_deregister(self, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
        arn, tid, port, tg = self._tg_target(run, step)
        state, reason, _ = await self._target_state(arn, tid, port)
        if not target_registered((state, reason)) and state != "draining":
            return f"{tid} is not registered in {tg.name}", {}
        if state != "draining":
            await self._mutate(
                run,
                "elbv2",
                "DeregisterTargets",
                arn,
                TargetGroupArn=arn,
                Targets=[_target(tid, port)],
            )
        if self.dry_run:
            return f"would deregister {tid}:{port} from {tg.name} and wait for draining", {}
        th = self._th(run)

        async def check() -> tuple[bool, str]:
            st = await self._target_state(arn, tid, port)
            return not target_registered((st[0], st[1])) and st[0] != "draining", st[0]

        ok, status, secs = await self._wait(
            run, step, f"{tid} to drain from {tg.name}", check, th.drain_timeout
        )
        if not ok:
            # Draining ends on its own; the old instance is not stopped while
            # still serving if the caller cares (stop_old: false).
            return (
                f"{tid} deregistered from {tg.name}, still {status} after "
                f"{th.drain_timeout:g}s (drain_timeout): continuing",
                {},
            )
        return f"{tid} deregistered from {tg.name}, drained in {secs:.1f}s", {}

    # -- Elastic IP

    async def _step_eip(self, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
        assert run.facts is not None
        alloc = step.params["allocation_id"]
        iid = run.facts.instance(step.role).instance_id
        if not iid:
            raise StepFailed(f"the {step.role} instance was not found")
        resp = await self.aws.call(
            "ec2",
            "DescribeAddresses",
            resource=alloc,
            Filters=[{"Name": "allocation-id", "Values": [alloc]}],
        )
        addrs = resp.get("Addresses", [])
        if not addrs:
            raise StepFailed(f"Elastic IP {alloc} does not exist")
        addr = addrs[0]
        ip = addr.get("PublicIp")
        if addr.get("InstanceId") == iid:
            return f"{ip} is already on {iid}", {}
        await self._mutate(
            run,
            "ec2",
            "AssociateAddress",
            alloc,
            AllocationId=alloc,
            InstanceId=iid,
            AllowReassociation=True,
        )
        verb = "would move" if self.dry_run else "moved"
        return f"{verb} {ip} from {addr.get('InstanceId') or 'nothing'} to {iid}", {}

    # -- Route 53

    async def _step_record(self, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
        assert run.facts is not None
        p = step.params
        zone = zone_key(p["zone_id"])
        name, type_, address = p["name"], p["type"], p["address"]
        rr = await self.inventory.record_set(zone, name, type_)
        if rr is None:
            raise StepFailed(f"record {name} {type_} does not exist in hosted zone {zone}")
        inst = run.facts.instance(step.role)
        if address == "public" and run.facts.elastic_ip is None:
            # A public IP without an EIP exists only once the instance runs.
            fresh = await self._instance(inst.instance_id, step.role)
            inst = dataclasses.replace(inst, public_ip=fresh.get("PublicIpAddress"))
        value = record_value(address, inst, run.facts.elastic_ip)
        if not value:
            raise StepFailed(
                f"the {step.role} instance {inst.instance_id} has no {address} address for {name}"
            )
        current = tuple(v["Value"] for v in rr.get("ResourceRecords", []))
        if current == (value,):
            return f"{name} {type_} already holds {value}", {}
        ttl = p.get("ttl") if p.get("ttl") is not None else rr.get("TTL", 60)
        change = await self._mutate(
            run,
            "route53",
            "ChangeResourceRecordSets",
            f"{name} {type_} in hosted zone {zone}",
            HostedZoneId=zone,
            ChangeBatch={
                "Comment": f"jupiterd {run.request.direction} of {run.service}",
                "Changes": [
                    {
                        "Action": "UPSERT",
                        "ResourceRecordSet": {
                            "Name": rr["Name"],
                            "Type": type_,
                            "TTL": ttl,
                            "ResourceRecords": [{"Value": value}],
                        },
                    }
                ],
            },
        )
        if self.dry_run:
            return f"would set {name} {type_} to {value} (TTL {ttl}, was {', '.join(current)})", {}
        change_id = change.get("ChangeInfo", {}).get("Id", "")
        status = change.get("ChangeInfo", {}).get("Status", "PENDING")
        if status != "INSYNC" and change_id:
            th = self._th(run)
            cid = change_id.rsplit("/", 1)[-1]

            async def check() -> tuple[bool, str]:
                r = await self.aws.call("route53", "GetChange", resource=f"change {cid}", Id=cid)
                s = str(r.get("ChangeInfo", {}).get("Status", "PENDING"))
                return s == "INSYNC", s

            ok, status, _ = await self._wait(
                run, step, f"{name} change {cid} to be INSYNC", check, th.target_healthy_timeout
            )
            if not ok:
                return f"{name} {type_} set to {value} (TTL {ttl}); still {status}: continuing", {}
        return f"{name} {type_} set to {value} (TTL {ttl}, was {', '.join(current)})", {}

    # -- route tables

    async def _step_route(self, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
        assert run.facts is not None
        rtb = step.params["route_table_id"]
        dest = step.params["destination"]
        inst = run.facts.instance(step.role)
        eni = inst.eni_id
        if not eni:
            raise StepFailed(
                f"the {step.role} instance {inst.instance_id} has no network interface"
            )
        resp = await self.aws.call(
            "ec2",
            "DescribeRouteTables",
            resource=rtb,
            Filters=[{"Name": "route-table-id", "Values": [rtb]}],
        )
        tables = resp.get("RouteTables", [])
        if not tables:
            raise StepFailed(f"route table {rtb} does not exist")
        route = next(
            (r for r in tables[0].get("Routes", []) if r.get("DestinationCidrBlock") == dest), None
        )
        if route is None:
            raise StepFailed(f"route table {rtb} has no {dest} route")
        if route.get("NetworkInterfaceId") == eni and route.get("State") != "blackhole":
            return f"{rtb} {dest} already goes via {eni}", {}
        was = route.get("NetworkInterfaceId") or route.get("InstanceId") or route.get("GatewayId")
        # The dry run's permission proof re-points the route at its current
        # target: the same permission (ec2:ReplaceRoute on the table), and no
        # change even where DryRun is ignored (moto's ReplaceRoute does).
        now = next(
            (
                (k, route[k])
                for k in ("NetworkInterfaceId", "InstanceId", "GatewayId")
                if route.get(k)
            ),
            None,
        )
        proof = {"RouteTableId": rtb, "DestinationCidrBlock": dest, now[0]: now[1]} if now else None
        await self._mutate(
            run,
            "ec2",
            "ReplaceRoute",
            rtb,
            proof=proof,
            RouteTableId=rtb,
            DestinationCidrBlock=dest,
            NetworkInterfaceId=eni,
        )
        verb = "would point" if self.dry_run else "pointed"
        return f"{verb} {rtb} {dest} at {eni} of {inst.instance_id} (was {was})", {}

    # -- notification

    def _summary(self, run: _Run, verdict: _Verdict) -> tuple[str, str]:
        req = run.request
        total = run.elapsed()
        subject = f"jupiterd: {req.service} {req.direction} {verdict.result} in {total:.1f}s"
        body = {
            "service": req.service,
            "direction": req.direction,
            "from": str(req.from_role),
            "to": str(req.to_role),
            "result": verdict.result,
            "detail": verdict.detail,
            "reason": req.reason,
            "requested_by": run.record.requested_by if run.record else req.requested_by,
            "resumed": run.resumed,
            "plan_id": run.plan_id,
            "host": socket.gethostname(),
            "total_seconds": round(total, 3),
            "steps": [
                {"name": r.name, "ok": r.ok, "seconds": round(r.seconds, 3), "detail": r.detail}
                for r in run.reports
            ],
        }
        return subject[:100], json.dumps(body, indent=2)

    async def _publish(self, run: _Run, topic: str, verdict: _Verdict) -> None:
        subject, message = self._summary(run, verdict)
        await self._mutate(
            run, "sns", "Publish", topic, TopicArn=topic, Subject=subject, Message=message
        )

    async def _step_notify(self, run: _Run, step: Step, verdict: _Verdict | None) -> str:
        topic = step.params["topic_arn"]
        verdict = verdict or _Verdict("success", "")
        await self._publish(run, topic, verdict)
        return f"{'would publish' if self.dry_run else 'published'} the summary to {topic}"

    _handlers: Mapping[
        StepKind,
        Callable[[AwsExecutor, _Run, Step], Awaitable[tuple[str, dict[str, Any]]]],
    ] = {
        StepKind.START_STANDBY: _step_start,
        StepKind.STANDBY_HEALTHY: _step_healthy,
        StepKind.SOURCE_DEST_CHECK: _step_source_dest,
        StepKind.REGISTER_TARGET: _step_register,
        StepKind.ASSOCIATE_EIP: _step_eip,
        StepKind.UPSERT_RECORD: _step_record,
        StepKind.REPLACE_ROUTE: _step_route,
        StepKind.DEREGISTER_TARGET: _step_deregister,
        StepKind.STOP_INSTANCE: _step_stop,
    }


# ---------------------------------------------------------------------- the invariant


async def check_invariant(
    inventory: AwsInventory, config: Config, services: Iterable[str] | None = None
) -> list[str]:
    """What breaks jupiterd's promise, one sentence each (empty: it holds):
    every attachment has at least one running, healthy instance behind it,
    and the two instances of a service are not both stopped."""
    problems: list[str] = []
    facts = await inventory.facts(services)
    for name, f in facts.items():
        if f.primary.state in STOPPED_STATES and f.backup.state in STOPPED_STATES:
            problems.append(f"{name}: both instances are stopped")
        for a in attachment_states(config, name, f):
            if not a.healthy:
                problems.append(
                    f"{name}: {a.kind} {a.name} has no healthy instance behind it ({a.detail})"
                )
    return problems
