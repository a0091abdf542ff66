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
- A probe that raises (a defect in jupiterd, not a verdict on the target)
  gives a ``monitor_error`` result with cause ``defect``; the loop goes on.
- ``wake()`` starts a probe at once (the isolation guard's fresh look, an
  instance that just started).
- A probe that timed out while the event loop stalled (``LagMonitor``) is
  the monitor's failure, not the target's: its timeout fired late, or the
  loop gave it too little of its budget to finish.
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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import probes
from probes import MonitorCause, ProbeOptions, ProbeResult, Reason

# Extra time a probe gets beyond its own timeout before the scheduler gives up on it.
GRACE = 0.5

# First probes are spread over one interval so that thousands of targets do
# not start as a thundering herd, but never thinner than this many per
# second: a handful of targets is probed at once, not up to one interval
# after start.
START_PROBES_PER_SECOND = 500.0
_live: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()


# How often the lag monitor wakes, and the lateness it records as a stall.
LAG_PERIOD = 0.05
LAG_MIN_STALL = 0.02
# A timeout is the loop's doing when the loop stalled for this share of the
# probe's budget (or more) while the probe ran.
STALL_SHARE = 0.25


class LagMonitor:
    """Measures event-loop stalls: a task sleeps ``period`` at a time and
    notes how late it wakes. A blocking call, a collector pause, swapping or
    a starved CPU shows as a wake-up later than planned; the loop ran nothing
    in between, so no probe could send, read or time out on time."""

    def __init__(self, period: float = LAG_PERIOD, keep: int = 1024) -> None:
        self.period = period
        self.stalls: deque[tuple[float, float]] = deque(maxlen=keep)  # (from, to), loop time
        self.last: float | None = None  # loop time of the last wake-up
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        self._task = loop.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period)
            self.woke(loop.time())

    def woke(self, now: float) -> None:
        if self.last is not None:
            planned = self.last + self.period
            if now - planned >= LAG_MIN_STALL:
                self.stalls.append((planned, now))
        self.last = now

    def stalled(self, start: float, end: float) -> float:
        """Seconds of ``start`` to ``end`` during which the loop stalled,
        including a stall that lasts until now (the monitor not yet awake)."""
        total = 0.0
        for a, b in reversed(self.stalls):
            if b <= start:
                break
            total += max(0.0, min(b, end) - max(a, start))
        if self.last is not None:
            pending = self.last + self.period
            if end - pending >= LAG_MIN_STALL:
                total += max(0.0, end - max(pending, start))
        return total

    def judge(self, result: ProbeResult, start: float, end: float, budget: float) -> ProbeResult:
        """A timeout while the loop stalled is the monitor's failure."""
        if result.reason is not Reason.TIMEOUT:
            return result
        stalled = self.stalled(start, end)
        if stalled < STALL_SHARE * budget:
            return result
        return result.as_monitor_error(
            MonitorCause.LOOP_STALL,
            f"jupiterd's event loop stalled for {stalled:.2f} s of this probe's "
            f"{budget:g} s budget: the timeout says nothing of the target ({result.detail})",
        )


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
        lag: LagMonitor | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.on_result = on_result
        self.interval = interval
        self.rng = rng or random.Random()
        self.on_late = on_late
        self.on_skip = on_skip
        self.lag = lag
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
            start = loop.time()
            try:
                result = await self._probe(spec)
            finally:
                self.confirming -= 1
            self.probes_run += 1
            end = loop.time()
            if self.lag is not None:
                result = self.lag.judge(result, start, end, spec.timeout)
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
            if self.lag is not None:
                result = self.lag.judge(result, now, end, spec.timeout)
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
        except Exception as exc:  # a probe's defect must not end this loop
            return ProbeResult(
                kind=spec.kind.name,
                target=spec.target,
                ok=False,
                reason=Reason.MONITOR_ERROR,
                detail=(
                    f"the {spec.kind.name} probe failed inside jupiterd "
                    f"({type(exc).__name__}: {str(exc)[:200]}): a defect, no verdict on the target"
                ),
                duration_seconds=0.0,
                cause=MonitorCause.DEFECT,
            )
