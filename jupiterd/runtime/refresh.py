"""What AWS says of the fleet, read every ``refresh_seconds`` (not while a
plan runs: it reads AWS itself) and after each plan.

Only news becomes an event (an instance started or stopped, the traffic
moved, maintenance set or cleared): a refresh of an unchanged fleet costs no
decisions. While AWS does not answer, it is re-read with a bounded, jittered
backoff, and an error is logged once until the refresh works again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from jupiterd.core.health import (
    ActiveObserved,
    AwsReachability,
    InstanceRunning,
    MaintenanceObserved,
)
from jupiterd.core.inventory import ServiceView
from jupiterd.core.types import Role, Status

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor

# EC2 states that say whether an instance runs; others (pending) wait.
_KNOWN_STATES = ("running", "stopped", "terminated", "stopping", "shutting-down")


class Refresher:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.error: str | None = None  # the last refresh's failure, for /status
        self._retry: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        sup = self.sup
        try:
            views = await sup.inventory.snapshot()
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self.error:
                sup.log.error("inventory refresh failed; keeping the last known state", error=msg)
            self.error = msg
            # AwsError's metric label (this module does not import boto3):
            # unreachable or throttled is no answer; any other is an answer
            # (a denial, say), which a plan's preflight reports for itself.
            answer = getattr(exc, "result", None)
            if answer in ("unreachable", "throttled"):
                sup.dispatch(AwsReachability(False, sup.now(), str(exc)))
            elif answer is not None and sup.state.aws_error is not None:
                sup.dispatch(AwsReachability(True, sup.now()))
            if sup.state.aws_error is not None:
                self.retry_aws()
            return
        if self.error is not None:
            sup.log.info("inventory refresh works again")
        self.error = None
        self.apply(views)
        if sup.state.aws_error is not None:
            sup.dispatch(AwsReachability(True, sup.now()))

    def retry_aws(self) -> None:
        """Re-read AWS with a bounded, jittered backoff while it does not
        answer (a plan's preflight or the refresh found it so)."""
        if self.sup.stopping or (self._retry is not None and not self._retry.done()):
            return
        self._retry = self.sup.spawn(self._retry_loop(), "aws-retry")

    async def _retry_loop(self) -> None:
        sup = self.sup
        first, most = sup.aws_retry_seconds
        delay = first
        while sup.state.aws_error is not None:
            await sup.clock.sleep(delay * (0.5 + sup.rng.random() / 2))
            if sup.plans.busy():
                continue  # a plan reads AWS itself; its outcome says
            await self.refresh()
            delay = min(delay * 2, most)

    async def run(self) -> None:
        """Refresh every ``refresh_seconds`` while no plan runs."""
        while True:
            await self.sup.clock.sleep(self.sup.refresh_seconds)
            if not self.sup.plans.busy():
                await self.refresh()

    def apply(self, views: Mapping[str, ServiceView]) -> None:
        sup = self.sup
        at = sup.now()
        sup.views.update(views)
        for name, view in views.items():
            if name not in sup.state.services:
                continue
            current = sup.state.services[name]
            for role in Role:
                info = view.instance(role)
                # Only news becomes an event: a refresh of an unchanged fleet
                # costs no decisions.
                stopped = current.target(role).status is Status.STOPPED
                if info.state in _KNOWN_STATES and info.running == stopped:
                    sup.dispatch(InstanceRunning(name, role, info.running, at))
                sup.probes.readdress(name, role)
            if view.active is not None and view.active is not current.active:
                sup.dispatch(ActiveObserved(name, view.active, at))
            maintenance = view.primary.maintenance or view.backup.maintenance
            if maintenance != current.maintenance:
                sup.dispatch(MaintenanceObserved(name, maintenance, at))
