"""Scheduled dry-run drills: prove every day that failover would work.

``Config.drills`` lists crontab schedules (five fields, UTC) and the services
each one exercises. At each fire time the drill builds the plan that would
move each service away from its active instance and runs it in dry run:
the describes, EC2's ``DryRun=True`` permission proofs, the standby exists
and is startable, every attachment exists and the policy may change it.
The outcome is exported (``jupiterd_drill_success``,
``jupiterd_drill_last_success_timestamp_seconds``,
``jupiterd_drill_last_run_timestamp_seconds``, ``jupiterd_drill_failed_step``)
and logged with the failing step's reason, so an alert fires the day
failover stops working, not the night it is needed.

The daemon runs ``DrillRunner.run()`` as a task on its loop; the runner
keeps the last result per service for ``/status``. Fire times come from
APScheduler's ``CronTrigger``; the clock is injected so tests need not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from jupiterd.config import Config, cron_trigger
from jupiterd.core.clock import Clock
from jupiterd.core.execution import Executor, FailoverOutcome, FailoverRequest, direction_of
from jupiterd.core.types import Role
from jupiterd.telemetry.clock import SystemClock
from jupiterd.telemetry.metrics import Metrics

log = structlog.get_logger("jupiterd.drills")

__all__ = ["Clock", "DrillResult", "DrillRunner", "ExecutorFactory", "SystemClock"]

ExecutorFactory = Callable[[Config], Executor]


@dataclass(frozen=True, slots=True)
class DrillResult:
    service: str
    ok: bool
    at: float  # Unix time the drill ran
    seconds: float
    direction: str
    failed_step: str | None  # None when it passed
    reason: str  # the outcome's sentence: why it would fail, or what it would do

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DrillRunner:
    def __init__(
        self,
        config: Config,
        executor_factory: ExecutorFactory,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.executor_factory = executor_factory
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.results: dict[str, DrillResult] = {}
        self._triggers = [(cron_trigger(d.schedule), d.services) for d in config.drills]
        self._failed_step: dict[str, str] = {}

    def status(self) -> dict[str, dict[str, Any]]:
        """The last drill per service, for /status."""
        return {name: r.to_dict() for name, r in self.results.items()}

    def next_fire(self, after: float) -> tuple[float, list[str]] | None:
        """The earliest fire time strictly after ``after`` and the services
        drilled then (several schedules may fire together)."""
        # Cron fires on whole minutes: "strictly after" is "from one second on".
        start = datetime.fromtimestamp(after + 1, UTC)
        best: float | None = None
        services: dict[str, None] = {}
        for trigger, names in self._triggers:
            nxt = trigger.get_next_fire_time(None, start)
            if nxt is None:
                continue
            ts = nxt.timestamp()
            expanded = list(self.config.services) if "*" in names else list(names)
            if best is None or ts < best - 0.5:
                best, services = ts, dict.fromkeys(expanded)
            elif abs(ts - best) <= 0.5:
                services.update(dict.fromkeys(expanded))
        if best is None:
            return None
        return best, [s for s in services if s in self.config.services]

    async def run(self, max_runs: int | None = None) -> None:
        """Sleep until each fire time, drill, repeat (``max_runs`` for tests)."""
        if not self._triggers:
            return
        runs = 0
        after = self.clock.time()
        while max_runs is None or runs < max_runs:
            nxt = self.next_fire(after)
            if nxt is None:
                return
            at, services = nxt
            delay = at - self.clock.time()
            if delay > 0:
                await self.clock.sleep(delay)
            await self.drill(services)
            after = at
            runs += 1

    async def drill(self, services: Iterable[str]) -> list[DrillResult]:
        executor = self.executor_factory(self.config)
        if not getattr(executor, "dry_run", False):
            raise ValueError("a drill needs a dry-run executor: it must never change AWS")
        try:
            roles = await self._active_roles(executor, list(services))
            outcomes = await asyncio.gather(
                *(
                    executor.run(
                        FailoverRequest(
                            name, active, active.other, "scheduled dry-run drill", "drill"
                        )
                    )
                    for name, active in roles.items()
                )
            )
        finally:
            close = getattr(executor, "close", None)
            if close is not None:
                close()
        return [self._record(o) for o in outcomes]

    async def _active_roles(self, executor: Executor, services: list[str]) -> dict[str, Role]:
        """Drill away from the instance that carries the traffic now: after a
        real failover the drill proves the failback. Primary when AWS does
        not say (or the executor cannot tell)."""
        roles = dict.fromkeys(services, Role.PRIMARY)
        inventory = getattr(executor, "inventory", None)
        if inventory is None or not services:
            return roles
        try:
            views = await inventory.snapshot()
        except Exception as exc:  # the drill itself will report the AWS trouble
            log.warning("drill_inventory_failed", error=str(exc))
            return roles
        for name in services:
            view = views.get(name)
            if view is not None and view.active is not None:
                roles[name] = view.active
        return roles

    def _record(self, outcome: FailoverOutcome) -> DrillResult:
        ok = outcome.result == "dry_run"
        failed = None
        if not ok:
            failed = next((s.name for s in outcome.steps if not s.ok), "preflight")
        now = self.clock.time()
        direction = direction_of(outcome.to_role)
        result = DrillResult(
            outcome.service, ok, now, outcome.seconds, direction, failed, outcome.detail
        )
        self.results[outcome.service] = result
        if ok:
            log.info("drill_passed", service=outcome.service, direction=direction)
        else:
            log.error(
                "drill_failed",
                service=outcome.service,
                direction=direction,
                step=failed,
                reason=outcome.detail,
            )
        m = self.metrics
        if m is not None:
            name = outcome.service
            m.drill_success.labels(name).set(1 if ok else 0)
            m.drill_last_run.labels(name).set(now)
            if ok:
                m.drill_last_success.labels(name).set(now)
            step = failed or "none"
            previous = self._failed_step.get(name)
            if previous is not None and previous != step:
                with contextlib.suppress(KeyError):
                    m.drill_failed_step.remove(name, previous)
            m.drill_failed_step.labels(name, step).set(0 if ok else 1)
            self._failed_step[name] = step
        return result
