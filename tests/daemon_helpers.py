"""Helpers for tests that run the supervisor in-process against loopback peers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from jupiterd.config import Config, parse_config
from jupiterd.core.execution import FailoverOutcome, FailoverRequest, StepReport
from jupiterd.core.types import Role

FAST = {
    "interval": 0.2,
    "fast_interval": 0.05,
    "timeout": 0.15,
    "jitter": 0.0,
    "fall": 3,
    "rise": 2,
    "cooldown": 600,
}


class FakeExecutor:
    """Records each request; answers after ``delay`` with ``result``."""

    dry_run = False

    def __init__(self, delay: float = 0.05, result: str = "success", stop_old: bool = True) -> None:
        self.delay = delay
        self.result = result
        self.stop_old = stop_old
        self.requests: list[FailoverRequest] = []
        self.on_run: Callable[[FailoverRequest], None] | None = None

    async def run(self, request: FailoverRequest) -> FailoverOutcome:
        self.requests.append(request)
        if self.on_run is not None:
            self.on_run(request)
        await asyncio.sleep(self.delay)
        return FailoverOutcome(
            request.service,
            request.from_role,
            request.to_role,
            self.result,  # type: ignore[arg-type]
            f"fake {self.result}",
            self.delay,
            (StepReport("fake", self.result == "success", self.delay),),
            stopped_old=self.stop_old and self.result == "success",
        )

    async def resume_pending(self) -> list[FailoverOutcome]:
        return []  # no journal: nothing is ever left unfinished


def config_for(services: dict[str, dict[str, Any]], state_dir: str, **top: Any) -> Config:
    doc = {
        "state_dir": state_dir,
        "http": {"listen": "127.0.0.1:9478"},  # not started by in-process tests
        "defaults": FAST,
        "services": services,
        **top,
    }
    return parse_config(doc)


async def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll until ``cond()`` is truthy; a bounded wait, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


P, B = Role.PRIMARY, Role.BACKUP


def supervisor_for(cfg: Config, executor: Any, *, seed: int = 1) -> Any:
    """A Supervisor on ``cfg``'s own static inventory, a fresh registry, a
    seeded jitter and a 0.1 s tick: what the daemon tests run."""
    import random

    from prometheus_client import CollectorRegistry

    from jupiterd.core.inventory import StaticInventory
    from jupiterd.runtime.supervisor import Supervisor
    from jupiterd.telemetry.metrics import Metrics

    return Supervisor(
        cfg,
        executor=executor,
        inventory=StaticInventory(cfg),
        metrics=Metrics(CollectorRegistry()),
        rng=random.Random(seed),
        tick_seconds=0.1,
    )
