"""The daemon's standby warm-ups: scheduled readiness drills and pre-warms,
carried out by ``aws.executor.warm.StandbyWarmer`` on the daemon's executor.

- **Readiness drills** run at each service's ``readiness.schedule``
  (crontab, UTC), never while jupiterd is paused, the active is not UP or a
  plan of the service runs. While a drill runs the machine knows the
  standby is warming (``StandbyWarming``); if a failover starts, the drill
  hands the warm standby over instead of stopping it; if the active only
  stops being UP, the standby stays warm as a pre-warm (below), so that it
  is stopped again should no failover come. Each result is kept in ``state_dir/readiness.json``,
  exported (``jupiterd_standby_*``), logged and mailed (SNS).
- **Pre-warms**: the machine's ``Prewarm`` starts the standby,
  ``PrewarmUndo`` stops it again, a ``StartFailover`` of the service hands it
  to the failover. A pre-warm that could not start is taken back in the
  machine, so it does not wait for a standby that will not come.

Without an AWS executor that changes AWS (monitor-only, ``--dry-run``,
test fakes) nothing here acts: drills are not scheduled and pre-warms are
counted ``failed``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jupiterd.aws.executor import AwsExecutor
from jupiterd.aws.executor.warm import StandbyWarmer
from jupiterd.aws.executor.warm_steps import WarmResult
from jupiterd.config import cron_trigger
from jupiterd.core.health import (
    Action,
    InstanceRunning,
    Prewarm,
    PrewarmCapped,
    PrewarmUndo,
    StandbyWarming,
)
from jupiterd.core.types import Role, Status
from jupiterd.state import readiness

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor

DEFAULT_MAX_AGE = 8 * 86400.0


class Standbys:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        ex = sup.executor
        live = isinstance(ex, AwsExecutor) and not ex.dry_run
        self.warmer = StandbyWarmer(ex) if live else None
        self.results: dict[str, dict[str, Any]] = {}
        self.starting: dict[str, asyncio.Task[None]] = {}  # pre-warms being started
        self.handed: set[str] = set()  # a failover started while its pre-warm was starting
        self.drilling: set[str] = set()

    # ------------------------------------------------------------------ start, status

    def start(self) -> None:
        """Load the recorded drills, export them, and schedule the drills."""
        self.results = readiness.load(self.sup.config.state_dir)
        for name in self.sup.config.services:
            self._export(name)
        if self.warmer is not None and self._triggers():
            self.sup.spawn(self.run(), "readiness")

    def status(self) -> dict[str, dict[str, Any]]:
        """Per service: the last drill, when the standby was last verified,
        the RTO budget it measured, and whether a pre-warm runs."""
        out = {}
        for name, svc in self.sup.config.services.items():
            r = self.results.get(name, {})
            boot, healthy = r.get("boot_seconds"), r.get("healthy_seconds")
            out[name] = {
                "last_drill": {k: r.get(k) for k in ("result", "detail", "at")} if r else None,
                "verified_at": r.get("verified_at"),
                "rto_budget_seconds": r.get("verified_rto_seconds"),
                "boot_seconds": boot,
                "app_healthy_seconds": healthy,
                "schedule": svc.readiness.schedule if svc.readiness else None,
                "prewarm": svc.prewarm,
                "prewarm_active": self.warmer is not None and name in self.warmer.ops,
            }
        return out

    def _export(self, name: str) -> None:
        m = self.sup.metrics.standby
        svc = self.sup.config.services[name]
        m.max_age.labels(name).set(svc.readiness.max_age if svc.readiness else DEFAULT_MAX_AGE)
        r = self.results.get(name)
        if r is None:
            return
        if r.get("result") in ("passed", "failed"):
            m.ready.labels(name).set(1 if r["result"] == "passed" else 0)
        if r.get("verified_at") is not None:
            m.verified.labels(name).set(r["verified_at"])
        if r.get("boot_seconds") is not None:
            m.boot.labels(name).set(r["boot_seconds"])
        if r.get("healthy_seconds") is not None:
            m.app_healthy.labels(name).set(r["healthy_seconds"])

    # ------------------------------------------------------------------ drills

    def _triggers(self) -> list[tuple[str, Any]]:
        return [
            (n, cron_trigger(s.readiness.schedule))
            for n, s in self.sup.config.services.items()
            if s.readiness is not None and s.readiness.schedule
        ]

    def next_fire(self, after: float) -> tuple[float, list[str]] | None:
        """The earliest fire time strictly after ``after``, and its services."""
        start = datetime.fromtimestamp(after + 1, UTC)
        best: tuple[float, list[str]] | None = None
        for name, trigger in self._triggers():
            nxt = trigger.get_next_fire_time(None, start)
            if nxt is None:
                continue
            ts = nxt.timestamp()
            if best is None or ts < best[0] - 0.5:
                best = (ts, [name])
            elif abs(ts - best[0]) <= 0.5:
                best[1].append(name)
        return best

    async def run(self, max_runs: int | None = None) -> None:
        """Sleep until each fire time, drill the services due, repeat."""
        clock, runs = self.sup.clock, 0
        after = clock.time()
        while max_runs is None or runs < max_runs:
            nxt = self.next_fire(after)
            if nxt is None:
                return
            at, names = nxt
            if at - clock.time() > 0:
                await clock.sleep(at - clock.time())
            for name in names:  # one at a time: each starts an instance
                if name in self.sup.config.services:
                    await self.drill(name)
            after, runs = at, runs + 1

    async def drill(self, name: str) -> WarmResult | None:
        """A readiness drill of ``name``'s standby, as the daemon runs it."""
        sup = self.sup
        s = sup.state.services.get(name)
        if self.warmer is None or s is None:
            return None
        if sup.state.paused:
            why = "jupiterd is paused"
        elif sup.policy.ha and (sup.state.cluster is None or not sup.state.cluster.leader):
            why = "this replica is not the leader: only the leader drills standbys"
        else:
            why = await self._watch(name)()
        if why is not None:
            sup.log.warning("readiness drill skipped", service=name, reason=why)
            sup.metrics.standby.drills.labels(name, "refused").inc()
            return None
        role = s.active.other
        self.drilling.add(name)
        sup.dispatch(StandbyWarming(name, role, "drill", True, sup.now()))
        try:
            res = await self.warmer.drill(
                name, reason="scheduled readiness drill", by="daemon",
                active=s.active, watch=self._watch(name), keep_warm=True,
            )  # fmt: skip
        finally:
            self.drilling.discard(name)
            sup.dispatch(StandbyWarming(name, role, "drill", False, sup.now()))
        self.record(res)
        if res.stopped:
            sup.dispatch(InstanceRunning(name, role, False, sup.now()))
        elif name in self.warmer.ops:
            self._kept_warm(name, role)
        return res

    def _kept_warm(self, name: str, role: Role) -> None:
        """The drill ended while its active failed and no failover ran: the
        standby is a pre-warm from now on. The machine stops it once the
        active is up again (``PrewarmUndo``, after ``prewarm_hold``), or a
        failover takes it (``failover_started``)."""
        sup = self.sup
        s = sup.state.services.get(name)
        if s is None:  # no longer configured: stopped again
            sup.spawn(self._end(name, role, None), f"prewarm-undo:{name}")
        elif s.in_flight is not None:  # decided as the drill ended: it owns the standby
            self.failover_started(name)
        else:
            sup.dispatch(StandbyWarming(name, role, "prewarm", True, sup.now()))
            self._warm_running(name, role)

    def _warm_running(self, name: str, role: Role) -> None:
        """A pre-warmed standby runs: exported, and probed from now on."""
        self.sup.metrics.standby.prewarm_active.labels(name).set(1)
        self.sup.dispatch(InstanceRunning(name, role, True, self.sup.now()))

    def _watch(self, name: str) -> Any:
        sup = self.sup

        async def watch() -> str | None:
            s = sup.state.services.get(name)
            if s is None:
                return "the service is no longer configured"
            if s.in_flight is not None:
                return f"a failover to the {s.in_flight} runs"
            t = s.target(s.active)
            if t.status is not Status.UP:
                return f"the {s.active} is {t.status} ({t.why})"
            return None

        return watch

    def record(self, res: WarmResult) -> None:
        """A drill's result: counted, logged, kept and exported."""
        sup, name = self.sup, res.service
        sup.metrics.standby.drills.labels(name, res.result).inc()
        level = sup.log.info if res.result in ("passed", "handed_over") else sup.log.error
        level(
            "readiness drill",
            service=name,
            result=res.result,
            boot_seconds=res.boot_seconds,
            app_healthy_seconds=res.healthy_seconds,
            detail=res.detail,
        )
        if res.result == "refused":
            return
        try:
            self.results = readiness.save(sup.config.state_dir, name, res.to_dict())
        except OSError as exc:
            sup.log.error("cannot record the readiness drill", error=exc.strerror or str(exc))
        self._export(name)

    # ------------------------------------------------------------------ pre-warms

    def apply(self, a: Action) -> None:
        """What ``Prewarm``, ``PrewarmUndo`` and ``PrewarmCapped`` do."""
        sup = self.sup
        if isinstance(a, PrewarmCapped):
            sup.log.warning("pre-warm held", service=a.service, reason=a.reason)
            sup.metrics.standby.prewarms.labels(a.service, "capped").inc()
        elif isinstance(a, Prewarm):
            sup.log.warning("pre-warming the standby", service=a.service, reason=a.reason)
            self.handed.discard(a.service)
            self.starting[a.service] = sup.spawn(self._prewarm(a), f"prewarm:{a.service}")
        elif isinstance(a, PrewarmUndo):
            sup.log.info("stopping the pre-warmed standby", service=a.service, reason=a.reason)
            sup.spawn(self._end(a.service, a.role, None), f"prewarm-undo:{a.service}")

    def failover_started(self, name: str) -> None:
        """A failover of ``name`` takes a pre-warmed standby over."""
        if self.warmer is None:
            return
        if name in self.warmer.ops:
            role = self.warmer.ops[name][0].request.to_role
            self.sup.spawn(self._end(name, role, "a failover started"), f"prewarm-end:{name}")
        elif name in self.starting and not self.starting[name].done():
            self.handed.add(name)

    async def _prewarm(self, a: Prewarm) -> None:
        sup, name = self.sup, a.service
        m = sup.metrics.standby
        if self.warmer is None:
            res_word, detail = (
                "failed",
                "no AWS executor that changes AWS (monitor-only or dry run)",
            )
        else:
            res = await self.warmer.start_prewarm(name, a.role.other, a.reason)
            res_word, detail = res.result, res.detail
        m.prewarms.labels(name, "started" if res_word == "started" else "failed").inc()
        if res_word != "started":
            sup.log.error("pre-warm failed", service=name, detail=detail)
            sup.dispatch(StandbyWarming(name, a.role, "prewarm", False, sup.now()))
            return
        sup.log.info("pre-warmed standby running", service=name, detail=detail)
        self._warm_running(name, a.role)
        if name in self.handed:
            await self._end(name, a.role, "a failover started")

    async def _end(self, name: str, role: Role, handed: str | None) -> None:
        sup = self.sup
        pending = self.starting.get(name)
        if pending is not None and not pending.done() and handed is None:
            await asyncio.shield(pending)  # stop only once it has started
        if self.warmer is None:
            return
        self.handed.discard(name)
        res = await self.warmer.end_prewarm(name, handed)
        if res is None:
            return
        sup.metrics.standby.prewarm_active.labels(name).set(0)
        sup.metrics.standby.prewarms.labels(name, res.result).inc()
        sup.log.info("pre-warm ended", service=name, result=res.result, detail=res.detail)
        if res.stopped and name in sup.state.services:
            sup.dispatch(InstanceRunning(name, role, False, sup.now()))
