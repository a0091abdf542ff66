"""The clock, as every part that waits or measures takes it: injected, so
that a test runs the waits on a fake clock instead of sleeping.

The supervisor, the executor and the drills each take a ``Clock`` (default
``jupiterd.telemetry.clock.SystemClock``). The pure core itself never reads
one: time enters it through events."""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...  # Unix seconds

    def monotonic(self) -> float: ...  # seconds, for durations only

    async def sleep(self, seconds: float) -> None: ...
