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
  not running, nor one another service's attachment points at (a pool's
  standby): the plan leaves it out (``Plan.notes`` says why), and the stop
  step reads the facts again just before stopping. The plans of a pool's
  members run one at a time. The notes end the outcome's sentence, are in
  the notification and are logged (``plan_notes``).

Every outcome is published to the SNS topic (except in a dry run). With
``dry_run=True`` the steps get a client that runs the describes, logs each
mutating call it would make with its parameters, proves EC2 permissions
with ``DryRun=True``, and changes nothing (``changes.DryRunAws``); the
executor writes no journal and takes no lock.

The parts: ``stepper`` runs a stage's steps, each through its handler in
``steps/`` (one module per kind of resource, ``steps.HANDLERS`` by step
kind); ``preflight`` and ``rollback`` are the plan's first check and its
undoing; ``polling`` holds the waits.

``run`` never raises for AWS trouble: failures are outcomes whose detail
names the step, the resource and, for AccessDenied, the IAM permission.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import structlog

from jupiterd.aws.client import Aws, AwsError
from jupiterd.aws.executor.changes import DryRunAws, StepAws
from jupiterd.aws.executor.context import Prober, StepContext, default_prober
from jupiterd.aws.executor.polling import Poller
from jupiterd.aws.executor.preflight import preflight
from jupiterd.aws.executor.rollback import rollback, rollback_plan
from jupiterd.aws.executor.run import _Run, _Verdict
from jupiterd.aws.executor.stepper import StepHook, Stepper
from jupiterd.aws.executor.steps.sns import publish
from jupiterd.aws.executor.verdicts import forward_done, traffic_step_failed
from jupiterd.aws.inventory import AwsInventory
from jupiterd.config import Config
from jupiterd.core.clock import Clock
from jupiterd.core.execution import FailoverOutcome, FailoverRequest
from jupiterd.core.plan import Stage, StepKind, build_plan, is_done
from jupiterd.core.types import Role
from jupiterd.state.journal import Fenced, Journal, JournalError, LockBusy, PlanLock, PlanRecord
from jupiterd.state.journal_api import PlanJournal, PlanLocker
from jupiterd.telemetry.clock import SystemClock
from jupiterd.telemetry.metrics import Metrics

log = structlog.get_logger("jupiterd.executor")


def _pool_lock(
    config: Config, locks: dict[str, asyncio.Lock], service: str
) -> contextlib.AbstractAsyncContextManager[object]:
    """The members of a pool share the standby: their plans run one at a
    time (each then sees where the other left the standby)."""
    pool = config.services[service].pool
    if pool is None:
        return contextlib.nullcontext()
    return locks.setdefault(pool, asyncio.Lock())


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
        journal: PlanJournal | None = None,
        lock: PlanLocker | None = None,
        on_step: StepHook | None = None,
        clock: Clock | None = None,
        own_aws: bool = False,  # close ``aws`` with the executor (it was built for it)
    ) -> None:
        self.config = config
        self.dry_run = dry_run
        self.metrics = metrics
        self._own_aws = aws is None or own_aws
        self.aws = (
            aws if aws is not None else Aws(config.aws, metrics, cache_dir=Path(config.state_dir))
        )
        self.inventory = AwsInventory(config, self.aws)
        self.prober = prober or default_prober
        self.journal: PlanJournal = journal if journal is not None else Journal(config.state_dir)
        self.lock: PlanLocker = lock if lock is not None else PlanLock(config.state_dir)
        self.clock = clock or SystemClock()  # every wait, poll and timing of a plan
        self._ctx = StepContext(
            config,
            DryRunAws(self.aws) if dry_run else StepAws(self.aws, _guard(self.journal)),
            self.inventory,
            self.prober,
            Poller(poll_interval, progress_interval, self.clock),
            metrics,
        )
        self._steps = Stepper(self._ctx, self.journal, on_step)
        self._in_flight: set[str] = set()
        self._warming: set[str] = set()  # standbys warmed up (warm.py): not failovers
        self._pool_locks: dict[str, asyncio.Lock] = {}

    @property
    def on_step(self) -> StepHook | None:
        """Called after each step that ran (tests check the invariant there)."""
        return self._steps.on_step

    @on_step.setter
    def on_step(self, hook: StepHook | None) -> None:
        self._steps.on_step = hook

    def close(self) -> None:
        if self._own_aws:
            self.aws.close()
        self.journal.close()

    # ------------------------------------------------------------------ entry points

    async def run(self, request: FailoverRequest) -> FailoverOutcome:
        return await self._guarded(_Run(request, self.clock))

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
            warm: list[PlanRecord] = []
            for rec in unfinished:
                if rec.service in self._in_flight or rec.service in self._warming:
                    continue  # running in this process: not interrupted
                if rec.kind != "failover":
                    warm.append(rec)  # a readiness drill or pre-warm: stopped again
                    continue
                try:
                    if rec.service not in self.config.services:
                        detail = (
                            f"service {rec.service} is no longer configured: plan {rec.id} dropped"
                        )
                        log.error("resume_dropped", service=rec.service, plan=rec.id, reason=detail)
                        await asyncio.to_thread(self.journal.result, rec.id, "failed", detail)
                        await asyncio.to_thread(self.journal.done, rec.id)
                        continue
                    try:
                        req = FailoverRequest(
                            rec.service,
                            Role(rec.from_role),
                            Role(rec.to_role),
                            rec.reason,
                            "resume",
                        )
                    except ValueError:
                        await asyncio.to_thread(self.journal.done, rec.id)
                        continue
                except JournalError as exc:
                    log.error("resume_failed", service=rec.service, plan=rec.id, reason=str(exc))
                    continue
                log.warning(
                    "resuming_plan",
                    service=rec.service,
                    plan=rec.id,
                    direction=req.direction,
                    started_at=rec.started_at,
                    by=rec.requested_by,
                )
                runs.append(
                    _Run(req, self.clock, record=rec, resumed=True, began_at=rec.started_at)
                )
            if warm:
                from jupiterd.aws.executor.warm import StandbyWarmer

                await StandbyWarmer(self).resume(warm)
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
            async with _pool_lock(self.config, self._pool_locks, req.service):
                verdict = await self._execute(run)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Fenced as exc:
            # Another decider owns the plan now: no further AWS call, no
            # rollback, no result or done record.
            log.warning("plan_fenced", service=req.service, plan=run.plan_id, reason=str(exc))
            verdict = _Verdict("aborted", f"fenced: {exc}")
        except JournalError as exc:
            # The journal cannot be written (a full disk, DynamoDB out of
            # reach): the plan stops where its journal says it is.
            log.error("plan_journal_failed", service=req.service, plan=run.plan_id, reason=str(exc))
            verdict = _Verdict("failed", f"the plan stopped: {exc}")
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
        problem = await preflight(self._ctx, self.journal, run)
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
        run.notes = list(run.plan.notes)
        if run.notes:
            log.info("plan_notes", service=req.service, notes=run.notes, dry_run=self.dry_run)
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
            run.add_journaled_reports()
            result, detail = journaled.result
            return await self._finish(run, _Verdict(result, detail))  # type: ignore[arg-type]
        if journaled is not None and journaled.rollback is not None:
            run.add_journaled_reports()
            return await self._finish(run, await rollback(self._steps, run, journaled.rollback))
        return await self._finish(run, await self._forward(run))

    async def _forward(self, run: _Run) -> _Verdict:
        assert run.plan is not None
        for stage, steps in run.plan.stages():
            if stage is Stage.NOTIFY:
                break
            reports = await self._steps.stage(run, steps)
            failed = [r for r in reports if not r.ok]
            if not failed or stage is Stage.FALLBACK:  # a reroute is a head start only
                continue
            first = failed[0]
            if self.dry_run:
                return _Verdict("failed", f"dry run: {first.name} would fail: {first.detail}")
            if stage in (Stage.START, Stage.HEALTHY):
                return await self._abort(run, f"{first.name}: {first.detail}")
            return traffic_step_failed(run, stage, reports)
        return forward_done(run, self.dry_run)

    async def _abort(self, run: _Run, reason: str) -> _Verdict:
        req = run.request
        if self.dry_run or run.record is None:
            return _Verdict("failed" if self.dry_run else "aborted", reason)
        prepared = rollback_plan(self.config, run)
        if not prepared[0].steps:
            return _Verdict(
                "aborted",
                f"{reason}; the traffic stays on the {req.from_role} and nothing was changed",
            )
        await asyncio.to_thread(self.journal.rollback, run.record.id, reason)
        run.record.rollback = reason
        return await rollback(self._steps, run, reason, prepared)

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
                run.verdict = verdict
                run.reports.append(await self._steps.step(run, notify[0]))
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
            await publish(self._ctx.aws, run, topic, verdict)
        except AwsError as exc:
            log.error("notify_failed", service=run.service, reason=str(exc))


def _guard(journal: PlanJournal) -> Callable[[str | None], None] | None:
    """The journal's check before each mutating AWS call (the shared
    journal's fence); the file journal has none."""
    check = getattr(journal, "before_change", None)
    return check if callable(check) else None
