"""The system's clock (``jupiterd.core.clock.Clock``): wall time, monotonic
time and an asyncio sleep. It lives here, below ``aws`` and ``runtime``,
so that both take it as their default."""

from __future__ import annotations

import asyncio
import time


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
