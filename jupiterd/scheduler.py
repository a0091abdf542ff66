"""Probe scheduling: one lightweight loop per target, on the event loop's clock.

- Per-target interval with jitter, asked of the caller after every probe
  (fast while the target is changing state, normal otherwise, none while
  its instance is stopped).
- Never two probes of one target at once, but for a confirmation (below):
  the loop awaits each probe.
- No drift: the next start is computed from the previous *planned* start,
  so a late start does not push every later one back; a loop that fell
  more than one interval behind skips ahead and counts it.
- Each probe is bounded by its timeout (the probe library enforces it; a
  small grace here catches a probe that does not).
- ``wake()`` starts a probe at once (the isolation guard's fresh look, an
  instance that just started).
- ``confirm(n, spacing)`` (a missed heartbeat) starts ``n`` full probes
  ``spacing`` apart without waiting for each other, a probe already running
  counting as the first: their timeouts overlap, so ``fall`` failures take
  one timeout instead of ``fall``. Each is an independent probe on its own
  connection; the next scheduled probe is planned from the last one's end.

Sleeping uses one ``call_at`` handle and one future per wait: cheaper than a
task or ``wait_for`` per probe when thousands of targets are scheduled.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import probes
from probes import ProbeOptions, ProbeResult, Reason

# Extra time a probe gets beyond its own timeout before the scheduler gives up on it.
GRACE = 0.5

# First probes are spread over one interval so that thousands of targets do
# not start as a thundering herd, but never thinner than this many per
# second: a handful of targets is probed at once, not up to one interval
# after start.
START_PROBES_PER_SECOND = 500.0
_live: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()


@dataclass(slots=True)
class ProbeSpec:
    kind: probes.Kind
    target: str
    options: ProbeOptions
    timeout: float


ResultCallback = Callable[[ProbeResult, float], None]  # result, end time
IntervalFn = Callable[[], tuple[float | None, float]]  # (seconds or None, jitter share)


def _wake_future(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class TargetLoop:
    """Probes one target until stopped."""

    def __init__(
        self,
        name: str,
        spec: ProbeSpec | None,
        on_result: ResultCallback,
        interval: IntervalFn,
        *,
        rng: random.Random | None = None,
        on_late: Callable[[float], None] | None = None,
        on_skip: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.on_result = on_result
        self.interval = interval
        self.rng = rng or random.Random()
        self.on_late = on_late
        self.on_skip = on_skip
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        self._task: asyncio.Task[None] | None = None
        self.probing = False
        self.probes_run = 0
        self.confirming = 0  # confirmation probes in flight
        self._confirm_task: asyncio.Task[None] | None = None
        self._replan_at: float | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        _live.add(self._task)
        self._task.add_done_callback(_live.discard)

    def wake(self) -> None:
        """Probe now (no-op while a probe of this target is running)."""
        if self.probing:
            return
        self._woken = True
        if self._waiter is not None:
            _wake_future(self._waiter)

    def confirm(self, count: int, spacing: float) -> None:
        """Start ``count`` full probes now, ``spacing`` apart (a running
        probe counts as the first); no-op while a confirmation runs."""
        if self.spec is None or self._task is None or self.confirming:
            return
        if self._confirm_task is not None and not self._confirm_task.done():
            return
        count -= 1 if self.probing else 0
        if count > 0:
            self.confirming = count
            self._confirm_task = asyncio.get_running_loop().create_task(
                self._confirm(count, spacing), name=f"{self.name}:confirm"
            )

    async def _confirm(self, count: int, spacing: float) -> None:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []

        async def one(spec: ProbeSpec) -> None:
            try:
                result = await self._probe(spec)
            finally:
                self.confirming -= 1
            self.probes_run += 1
            end = loop.time()
            self.on_result(result, end)
            # The regular schedule starts again from the last result.
            self._replan_at = end
            if self._waiter is not None:
                _wake_future(self._waiter)

        try:
            for i in range(count):
                if i:
                    await asyncio.sleep(spacing)
                spec = self.spec
                if spec is None:
                    self.confirming -= count - i
                    break
                tasks.append(loop.create_task(one(spec)))
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            self.confirming = 0

    async def stop(self) -> None:
        if self._confirm_task is not None:
            self._confirm_task.cancel()
            await asyncio.gather(self._confirm_task, return_exceptions=True)
            self._confirm_task = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _sleep_until(self, when: float | None) -> None:
        loop = asyncio.get_running_loop()
        if self._woken:
            return
        fut: asyncio.Future[None] = loop.create_future()
        self._waiter = fut
        handle = loop.call_at(when, _wake_future, fut) if when is not None else None
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()
            self._waiter = None

    def _jittered(self, seconds: float, jitter: float) -> float:
        if jitter <= 0:
            return seconds
        return seconds * (1.0 + self.rng.uniform(-jitter, jitter))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        seconds, jitter = self.interval()
        first_delay = 0.0
        if seconds:
            # Loops started together all run this line after the last start():
            # the spread fits how many there are.
            first_delay = self.rng.uniform(0, min(seconds, len(_live) / START_PROBES_PER_SECOND))
        planned: float | None = loop.time() + first_delay if seconds is not None else None
        while True:
            await self._sleep_until(planned)
            now = loop.time()
            woken = self._woken
            self._woken = False
            replan, self._replan_at = self._replan_at, None
            if replan is not None and not woken:
                # A confirmation result came in: plan from it, as after our own probe.
                seconds, jitter = self.interval()
                planned = None if seconds is None else replan + self._jittered(seconds, jitter)
                continue
            spec = self.spec
            if spec is None or (planned is None and not woken):
                planned = None
                continue
            if planned is None or woken:
                planned = now  # an early start resets the schedule from now
            elif self.on_late is not None:
                self.on_late(now - planned)
            self.probing = True
            try:
                result = await self._probe(spec)
            finally:
                self.probing = False
            self.probes_run += 1
            self._woken = False  # a wake during the probe is answered by this result
            end = loop.time()
            self.on_result(result, end)
            seconds, jitter = self.interval()
            if seconds is None:
                planned = None  # not probed until woken (instance started)
                continue
            nxt = planned + self._jittered(seconds, jitter)
            if nxt < end:
                # Fell behind (a slow probe or an overloaded loop): skip ahead
                # rather than bursting to catch up.
                if self.on_skip is not None and end - nxt > seconds:
                    self.on_skip()
                nxt = end
            planned = nxt

    async def _probe(self, spec: ProbeSpec) -> ProbeResult:
        try:
            async with asyncio.timeout(spec.timeout + GRACE):
                return await spec.kind.probe(spec.target, spec.options, spec.timeout)
        except TimeoutError:
            return ProbeResult(
                kind=spec.kind.name,
                target=spec.target,
                ok=False,
                reason=Reason.TIMEOUT,
                detail=f"the probe overran its {spec.timeout:g} s timeout",
                duration_seconds=spec.timeout + GRACE,
            )
