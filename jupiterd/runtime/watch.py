"""Passive detection: an idle TCP connection held open to each healthy target.

When a service's process dies, its kernel closes every socket it had, ours
included, at once. Seeing that close, the watch wakes the target's probe
loop, so the first failed probe comes milliseconds after the crash instead
of up to one interval later (HAProxy's ``observe layer4``, without needing
live traffic). The probe still decides: a close by a healthy server (an idle
timeout) costs one extra, passing probe.

The watch sends nothing. It is off for kinds where an idle connection can
hurt: frps reads each new connection's first byte in its accept loop, one
connection at a time, so a silent client would delay real frpc logins.
A server that keeps closing the watch quickly gets it retried less often.
A watch that cannot connect at all wakes the probe once, as a close would.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

CONNECT_TIMEOUT = 2.0
RETRY_SECONDS = 1.0  # after a failed connect (the probes cover a dead target)
SHORT_LIFE_SECONDS = 5.0  # a watch closed sooner than this was closed on purpose...
BACKOFF_SECONDS = 60.0  # ...so the next one waits this long


class _Idle(asyncio.Protocol):
    def __init__(self, closed: asyncio.Future[None]) -> None:
        self.closed = closed

    def data_received(self, data: bytes) -> None:
        pass  # a greeting or banner: ignored

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Watch:
    def __init__(self, host: str, port: int, on_close: Callable[[], None]) -> None:
        self.host = host
        self.port = port
        self.on_close = on_close
        self.closes = 0
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"watch:{self.host}:{self.port}"
            )

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # A watch starts when its target was just seen up, and starts again
        # after each close: a connect that fails then is news as much as a
        # close (the target died before the watch got in), so the first
        # failure wakes the probe. Later failures in a row do not: the
        # probes already look at a target that refuses.
        news = True
        while True:
            closed: asyncio.Future[None] = loop.create_future()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    transport, _ = await loop.create_connection(
                        functools.partial(_Idle, closed), self.host, self.port
                    )
            except (OSError, TimeoutError):
                if news:
                    news = False
                    self.closes += 1
                    self.on_close()
                await asyncio.sleep(RETRY_SECONDS)
                continue
            news = True
            self._transport = transport
            opened = loop.time()
            try:
                await closed
            finally:
                transport.abort()
                self._transport = None
            self.closes += 1
            self.on_close()
            lived = loop.time() - opened
            await asyncio.sleep(BACKOFF_SECONDS if lived < SHORT_LIFE_SECONDS else RETRY_SECONDS)
