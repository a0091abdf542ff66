"""A fake ``Clock`` (``jupiterd.core.clock``) for the supervisor, the
executor and the drills: ``sleep`` advances its time at once instead of
waiting, and lets the other tasks on the loop run once."""

from __future__ import annotations

import asyncio
import time


class FakeClock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now  # Unix seconds
        self.mono = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        self.now += seconds
        self.mono += seconds
        await asyncio.sleep(0)
