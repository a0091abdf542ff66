"""Waits of a plan's steps: poll a check until it says done or time is up,
with a progress line every ``progress_interval``; and the rise count of a
health wait."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from jupiterd.core.clock import Clock
from probes import ProbeResult

log = structlog.get_logger("jupiterd.executor")

Check = Callable[[], Awaitable[tuple[bool, str]]]


@dataclass(frozen=True)
class Poller:
    interval: float
    progress_interval: float
    clock: Clock

    async def wait(
        self,
        service: str,
        step: str,
        what: str,
        check: Check,
        timeout: float,
        *,
        interval: float | None = None,
    ) -> tuple[bool, str, float]:
        """Poll ``check`` (every ``interval``, default the poller's) until it
        says done or ``timeout`` passes. Returns (done, last status, seconds)."""
        every = self.interval if interval is None else interval
        clock = self.clock
        t = clock.monotonic()
        last_log = t
        while True:
            done, status = await check()
            elapsed = clock.monotonic() - t
            if done:
                return True, status, elapsed
            if elapsed >= timeout:
                return False, status, elapsed
            now = clock.monotonic()
            if now - last_log >= self.progress_interval:
                last_log = now
                log.info(
                    "waiting",
                    service=service,
                    step=step,
                    what=what,
                    status=status,
                    seconds=round(elapsed, 1),
                    timeout=timeout,
                )
            await clock.sleep(min(every, max(0.0, timeout - elapsed)))


class Rise:
    """Consecutive passing probes until ``needed``. A probe that failed on
    this host (``monitor_error``) is no verdict either way."""

    def __init__(self, needed: int) -> None:
        self.needed = needed
        self.passes = 0
        self.last: ProbeResult | None = None

    def see(self, result: ProbeResult) -> bool:
        """Count ``result``; whether ``needed`` probes passed in a row."""
        self.last = result
        if not result.monitor_error:
            self.passes = self.passes + 1 if result.ok else 0
        return self.passes >= self.needed
