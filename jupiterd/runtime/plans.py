"""Failover plans the daemon runs: one task per service on the executor.

A ``StartFailover`` decision becomes a ``FailoverRequest``; the outcome is
exported, logged, kept for /status (the last 20) and dispatched back as a
``FailoverFinished`` event. An executor that raises is an internal error,
reported as a ``failed`` outcome: it never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jupiterd.core.execution import FailoverOutcome, FailoverRequest
from jupiterd.core.health import FailoverFinished, StartFailover
from jupiterd.runtime.status import plan_json

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor

RECENT_PLANS = 20  # kept for /status


@dataclass(frozen=True, slots=True)
class PlanEvent:
    """A finished plan, as observers see it."""

    request: FailoverRequest
    outcome: FailoverOutcome
    at: float


class Plans:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.outcomes: deque[dict[str, Any]] = deque(maxlen=RECENT_PLANS)

    def busy(self) -> bool:
        """A plan is running (it reads AWS itself)."""
        return any(not t.done() for t in self.tasks.values())

    def start(self, a: StartFailover) -> None:
        req = FailoverRequest(a.service, a.from_role, a.to_role, a.reason, "daemon")
        self.tasks[a.service] = asyncio.create_task(self._run(req), name=f"plan:{a.service}")

    async def stop(self, grace: float) -> None:
        """Give a plan in flight ``grace`` seconds to finish its step (the
        journal lets the next start resume it), then cancel it."""
        running = [t for t in self.tasks.values() if not t.done()]
        if running:
            self.sup.log.warning("stopping with a plan in flight", grace_seconds=grace)
            _, pending = await asyncio.wait(running, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self, req: FailoverRequest) -> None:
        sup = self.sup
        started = sup.clock.monotonic()
        try:
            outcome = await sup.executor.run(req)
        except asyncio.CancelledError:
            sup.log.warning(
                "plan interrupted by shutdown; the journal resumes it at the next start",
                service=req.service,
            )
            raise
        except Exception as exc:  # an executor bug must not take the daemon down
            sup.log.exception("executor failed", service=req.service)
            outcome = FailoverOutcome(
                req.service,
                req.from_role,
                req.to_role,
                "failed",
                f"internal error in the executor: {exc!r}",
                sup.clock.monotonic() - started,
            )
        self._record(req, outcome)
        sup.dispatch(self._finished(outcome))
        if outcome.result != "dry_run":
            with contextlib.suppress(Exception):
                await sup.refresh_inventory()

    def resumed(self, o: FailoverOutcome) -> None:
        """A plan a crash interrupted, finished by the executor at start."""
        sup = self.sup
        req = FailoverRequest(
            o.service, o.from_role, o.to_role, "resumed after a restart", "resume"
        )
        sup.log.warning(
            "resumed an interrupted plan", service=o.service, result=o.result, detail=o.detail
        )
        self._record(req, o)
        if o.service in sup.state.services:
            sup.dispatch(self._finished(o))

    def _finished(self, o: FailoverOutcome) -> FailoverFinished:
        return FailoverFinished(
            o.service,
            o.to_role,
            o.ok,
            self.sup.now(),
            o.detail,
            stopped_old=o.stopped_old,
            dry_run=o.result == "dry_run",
            changed=o.changed,
            aws_unreachable=o.aws_unreachable,
        )

    def _record(self, req: FailoverRequest, o: FailoverOutcome) -> None:
        sup = self.sup
        m = sup.metrics
        direction = req.direction
        m.failovers.labels(req.service, direction, o.result).inc()
        m.failover_duration.labels(req.service, direction).observe(o.seconds)
        now = sup.clock.time()
        m.last_failover.labels(req.service).set(now)
        self.outcomes.append(plan_json(req, o, now))
        for observe in sup.observers:
            observe(PlanEvent(req, o, sup.now()))
        log = sup.log.info if o.ok or o.result == "dry_run" else sup.log.error
        log(
            "plan finished",
            service=req.service,
            direction=direction,
            result=o.result,
            seconds=round(o.seconds, 3),
            detail=o.detail,
        )
