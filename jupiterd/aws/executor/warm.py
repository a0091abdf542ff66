"""Warming a standby without moving traffic: the readiness drill and the
pre-warm (``StandbyWarmer``, on an ``AwsExecutor``).

A **readiness drill** starts the stopped standby, waits for ``running``
(the boot: StartInstances to running), probes it with the service's own
probe until ``rise`` probes pass in a row (the application's start,
bounded by ``healthy_timeout``), then stops it again the service's way
(``standby_stop``). No attachment is touched: the standby takes no traffic.
A **pre-warm** is its first half: the standby is started when the active
first fails, and stopped again later (``end_prewarm``) unless a failover
took it over.

Both are journaled like a plan (records of ``kind`` ``readiness`` or
``prewarm``) and hold the plan lock while they run: a process that crashes
mid-drill leaves an unfinished record, and the next ``resume_pending``
stops the standby again, unless a failover has taken it over since (the
traffic is on it, or a failover of the service began after the warm-up).

Guards: refused in a dry run, while a plan of the service runs (the
executor's in-flight set, the plan lock, an unfinished record), while a
damaged journal holds the service, while the standby is not stopped or
serves another pool member, and while the active is not healthy. A
failover that starts during a drill takes the warm standby over: the drill
ends ``handed_over`` and leaves it running; the failover's start step finds
it running. In the daemon (``keep_warm``), an active that fails mid-drill
with no failover running keeps the standby warm as a pre-warm (``ops``):
the daemon stops it with ``end_prewarm`` once the active is healthy again,
or hands it to the failover. The standby is never stopped while the active is not running.

``start_standby`` and ``stop_standby`` are the two AWS actions: the one
place to change how a standby is started or stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import structlog

from jupiterd.aws.client import AwsError
from jupiterd.aws.executor.context import StepContext
from jupiterd.aws.executor.run import _Run
from jupiterd.aws.executor.warm_resume import resume_warmups
from jupiterd.aws.executor.warm_steps import (
    PREWARM,
    READINESS,
    WarmResult,
    Watch,
    active_of,
    notify,
    probe_active,
    run_step,
    stop_step,
    warm_step,
)
from jupiterd.core.execution import FailoverRequest
from jupiterd.core.plan import GONE_STATES, ServiceFacts, StepKind
from jupiterd.core.types import Role
from jupiterd.state.journal import JournalError, LockBusy, PlanRecord

log = structlog.get_logger("jupiterd.executor")


class _Refused(Exception):
    pass


class StandbyWarmer:
    """Readiness drills and pre-warms on ``executor``'s AWS client, journal,
    plan lock and clock (``executor`` is an ``AwsExecutor``)."""

    def __init__(self, executor: Any) -> None:
        self.ex = executor
        self.ops: dict[str, tuple[_Run, PlanRecord]] = {}  # pre-warms in progress

    @property
    def ctx(self) -> StepContext:
        return self.ex._ctx  # type: ignore[no-any-return]

    def busy(self, service: str) -> bool:
        return service in self.ops or service in self.ex._warming

    # ------------------------------------------------------------------ drill

    async def drill(
        self,
        service: str,
        *,
        reason: str = "readiness drill",
        by: Literal["daemon", "cli", "drill"] = "cli",
        active: Role | None = None,
        watch: Watch | None = None,
        keep_warm: bool = False,
    ) -> WarmResult:
        """Start the standby, prove it healthy, stop it again. With
        ``keep_warm`` (the daemon), a standby whose active stopped being
        healthy during the drill, with no failover running, stays warm as a
        pre-warm (in ``ops``, the record and the plan lock open): the
        daemon stops it with ``end_prewarm`` once the active is healthy
        again, or hands it to the failover."""
        run: _Run | None = None
        began, t0 = self.ex.clock.time(), self.ex.clock.monotonic()
        try:
            run, facts = await self._begin(service, READINESS, reason, by, active)
            watch = watch or probe_active(self.ex, facts, run.request.from_role)
            why = await watch()
            if why is not None:
                raise _Refused(f"the active is not healthy: {why}")
            rec = await self._journal(run, facts, READINESS)
        except _Refused as exc:
            self._end_lock(run)
            return self._refused(service, READINESS, str(exc), began, t0)
        try:
            return await self._drill(run, rec, watch, began, keep_warm)
        finally:
            kept = self.ops.get(service)
            if kept is None or kept[0] is not run:  # a kept standby keeps the lock
                self._end_lock(run)

    async def _drill(
        self, run: _Run, rec: PlanRecord, watch: Watch, began: float, keep_warm: bool
    ) -> WarmResult:
        standby = run.request.to_role
        iid = self._iid(run, standby)
        start = await run_step(self.ex, run, warm_step(run, standby))
        boot = start.seconds if start.ok else None
        healthy_s: float | None = None
        ok = start.ok
        if ok:
            health = await run_step(self.ex, run, warm_step(run, standby, StepKind.STANDBY_HEALTHY))
            ok = health.ok
            healthy_s = health.seconds if ok else None
        handed = await watch()
        failover = run.service in self.ex._in_flight
        if handed is None and failover:
            handed = f"a failover of {run.service} started"
        stopped = False
        found = _found(run, iid, boot, healthy_s)
        if handed is not None and keep_warm and not failover and boot is not None:
            return self._keep(run, rec, handed, found, began, boot, healthy_s, ok)
        if handed is not None:
            result = "handed_over"
            detail = f"the standby is left running for the failover ({handed})"
        else:
            stop = await run_step(self.ex, run, stop_step(run, standby))
            stopped = stop.ok
            result = "passed" if ok else "failed"
            not_stopped = f"NOT stopped{' again' if ok else ''}: {stop.detail}"
            detail = f"{found}; " + ("stopped again" if stopped else not_stopped)
        return await self._finish(run, rec, result, detail, began, boot, healthy_s, stopped)

    def _keep(
        self,
        run: _Run,
        rec: PlanRecord,
        why: str,
        found: str,
        began: float,
        boot: float | None,
        healthy_s: float | None,
        ok: bool,
    ) -> WarmResult:
        """The drill's standby stays warm as a pre-warm: its active fails,
        but no failover runs (yet; or a guard holds it)."""
        self.ops[run.service] = (run, rec)
        detail = (
            f"{found}; kept running as a pre-warm ({why}): stopped again once the "
            f"{run.request.from_role} is healthy, unless a failover takes it"
        )
        log.warning("readiness_kept_warm", service=run.service, reason=why)
        return WarmResult(
            run.service,
            READINESS,
            "passed" if ok else "failed",
            detail,
            began,
            run.elapsed(),
            self._iid(run, run.request.to_role),
            boot_seconds=boot,
            healthy_seconds=healthy_s,
            steps=tuple(run.reports),
        )

    # ------------------------------------------------------------------ pre-warm

    async def start_prewarm(self, service: str, active: Role, reason: str) -> WarmResult:
        """Start the standby of ``service`` early; the record and the plan
        lock stay open until ``end_prewarm``."""
        run: _Run | None = None
        began, t0 = self.ex.clock.time(), self.ex.clock.monotonic()
        try:
            run, facts = await self._begin(service, PREWARM, reason, "daemon", active)
            rec = await self._journal(run, facts, PREWARM)
        except _Refused as exc:
            self._end_lock(run)
            return self._refused(service, PREWARM, str(exc), began, t0)
        standby = run.request.to_role
        start = await run_step(self.ex, run, warm_step(run, standby))
        if not start.ok:
            try:
                stop = await run_step(self.ex, run, stop_step(run, standby))
                return await self._finish(
                    run, rec, "failed", start.detail, began, None, None, stop.ok
                )
            finally:
                self._end_lock(run)
        self.ops[service] = (run, rec)
        return WarmResult(
            service,
            PREWARM,
            "started",
            start.detail,
            began,
            run.elapsed(),
            self._iid(run, standby),
            boot_seconds=start.seconds,
            steps=tuple(run.reports),
        )

    async def end_prewarm(self, service: str, handed: str | None) -> WarmResult | None:
        """The pre-warm ends: handed to a failover (``handed``: why), or the
        standby is stopped again."""
        op = self.ops.pop(service, None)
        if op is None:
            return None
        run, rec = op
        try:
            if handed is not None:
                detail = f"the pre-warmed standby is left running for the failover ({handed})"
                return await self._finish(
                    run, rec, "handed_over", detail, run.wall_started, None, None, False
                )
            stop = await run_step(self.ex, run, stop_step(run, run.request.to_role))
            result = "stopped" if stop.ok else "failed"
            detail = "the active recovered: the standby was stopped again"
            if not stop.ok:
                detail = f"the active recovered, but the standby was NOT stopped: {stop.detail}"
            return await self._finish(
                run, rec, result, detail, run.wall_started, None, None, stop.ok
            )
        finally:
            self._end_lock(run)

    # ------------------------------------------------------------------ resume

    async def resume(self, records: list[PlanRecord]) -> list[WarmResult]:
        """Warm-ups a crash interrupted (``warm_resume``)."""
        return await resume_warmups(self, records)

    # ------------------------------------------------------------------ parts

    async def _begin(
        self,
        service: str,
        kind: str,
        reason: str,
        by: Literal["daemon", "cli", "drill"],
        active: Role | None,
    ) -> tuple[_Run, ServiceFacts]:
        """The guards, and the plan lock (held from here: ``_end_lock``)."""
        ex = self.ex
        if ex.dry_run:
            raise _Refused(f"a {kind} starts the standby: not in a dry run")
        if service not in ex.config.services:
            raise _Refused(f"no service named '{service}'")
        if service in ex._in_flight:
            raise _Refused(f"a plan of {service} is running")
        if self.busy(service):
            raise _Refused(f"the standby of {service} is already being warmed")
        held = await asyncio.to_thread(ex.journal.held, [service])
        if held:
            raise _Refused(held[service])
        try:
            ex.lock.acquire()
        except (LockBusy, JournalError) as exc:
            raise _Refused(str(exc)) from None
        ex._warming.add(service)
        run = _Run(FailoverRequest(service, Role.PRIMARY, Role.BACKUP, reason, by), ex.clock)
        try:
            unfinished = await asyncio.to_thread(ex.journal.unfinished)
            if any(p.service == service for p in unfinished):
                raise _Refused(f"an interrupted plan of {service} is unfinished")
            facts = (await ex.inventory.facts([service]))[service]
        except (JournalError, AwsError) as exc:
            self._end_lock(run)
            raise _Refused(str(exc)) from None
        except _Refused:
            self._end_lock(run)
            raise
        active = active or active_of(ex.config, service, facts)
        run = _Run(FailoverRequest(service, active, active.other, reason, by), ex.clock)
        run.facts = facts
        sb, act = facts.instance(active.other), facts.instance(active)
        problem = None
        if not sb.instance_id or sb.state in GONE_STATES:
            problem = f"the standby ({active.other}) is {sb.state}"
        elif sb.state != "stopped":
            problem = f"the standby {sb.instance_id} is {sb.state}, not stopped"
        elif not act.running:
            problem = f"the active {act.instance_id} is {act.state}"
        elif facts.in_use.get(sb.instance_id):
            problem = (
                f"the standby {sb.instance_id} serves {', '.join(facts.in_use[sb.instance_id])}"
            )
        if problem is not None:
            self._end_lock(run)
            raise _Refused(problem)
        return run, facts

    def _end_lock(self, run: _Run | None) -> None:
        if run is None or run.service not in self.ex._warming:
            return
        self.ex._warming.discard(run.service)
        self.ex.lock.release()

    async def _journal(self, run: _Run, facts: ServiceFacts, kind: str) -> PlanRecord:
        req = run.request
        try:
            rec: PlanRecord = await asyncio.to_thread(
                self.ex.journal.start_plan,
                req.service,
                str(req.from_role),
                str(req.to_role),
                req.reason,
                req.requested_by,
                facts.instance(req.to_role).state,
                kind,
            )
        except JournalError as exc:
            raise _Refused(str(exc)) from None
        run.record = rec
        return rec

    def _iid(self, run: _Run, role: Role) -> str | None:
        assert run.facts is not None
        return run.facts.instance(role).instance_id

    async def _finish(
        self,
        run: _Run,
        rec: PlanRecord,
        result: str,
        detail: str,
        began: float,
        boot: float | None,
        healthy_s: float | None,
        stopped: bool,
    ) -> WarmResult:
        journaled = "failed" if result == "failed" else "success"
        await asyncio.to_thread(self.ex.journal.result, rec.id, journaled, detail)
        await asyncio.to_thread(self.ex.journal.done, rec.id)
        res = WarmResult(
            run.service,
            rec.kind,
            result,
            detail,
            began,
            run.elapsed(),
            self._iid(run, run.request.to_role),
            boot,
            healthy_s,
            stopped,
            tuple(run.reports),
        )
        await notify(self.ex, res)
        return res

    def _refused(self, service: str, kind: str, why: str, began: float, t0: float) -> WarmResult:
        log.warning("warm_refused", service=service, kind=kind, reason=why)
        seconds = self.ex.clock.monotonic() - t0
        return WarmResult(service, kind, "refused", f"refused: {why}", began, seconds)


def _found(run: _Run, iid: str | None, boot: float | None, healthy_s: float | None) -> str:
    """What a drill found of its standby: its boot and start times when it
    passed (``healthy_s`` set), else the step that failed."""
    if boot is not None and healthy_s is not None:
        return f"{iid} booted in {boot:.1f}s and passed its probes {healthy_s:.1f}s later"
    failed = next(r for r in run.reports if not r.ok)
    return f"{failed.name}: {failed.detail}"
