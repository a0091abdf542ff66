"""The API's connection guard: every connection is counted and timed, so
slow, idle or too many clients cannot take the daemon's descriptors (see
``jupiterd.runtime.api``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from jupiterd.config import HttpConfig
from jupiterd.telemetry import logs

log = logs.get("jupiterd.api")


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Connection: close\r\nContent-Length: 41\r\n\r\n"
    b"too many connections to the jupiterd API\n"
)


class _Refuse(asyncio.Protocol):
    """A connection beyond the caps: 503 and closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class _Conn(asyncio.Protocol):
    """One API connection: counted, and closed when a request takes longer
    than ``read_timeout`` to arrive or the client reads nothing of a
    response for ``idle_timeout``. Everything else goes to aiohttp."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol, peer: str) -> None:
        self.guard, self.inner, self.peer = guard, inner, peer
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stalled: asyncio.TimerHandle | None = None  # writing paused since
        self.reading = True  # a request is arriving (or the first one is due)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.reading:
            self.reading = True
            self._arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        # The socket's buffers are full: the client is not reading.
        if self.stalled is None:
            loop = asyncio.get_running_loop()
            self.stalled = loop.call_later(self.guard.http.idle_timeout, self._expired)
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self._unstall()
        self.inner.resume_writing()

    def _unstall(self) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unstall()
        self.guard.closed(self)
        self.inner.connection_lost(exc)

    def request_read(self) -> None:
        self.reading = False
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.http.read_timeout, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self._disarm()
        self._unstall()
        log.debug("api connection closed: too slow", peer=self.peer)
        if self.transport is not None:
            self.transport.abort()


class ConnectionGuard:
    """The protocol factory around aiohttp's: caps and read deadlines."""

    def __init__(self, http: HttpConfig) -> None:
        self.http = http
        self.factory: Callable[[], asyncio.Protocol] | None = None  # aiohttp's, once set up
        self.conns: dict[asyncio.BaseTransport, _Conn] = {}
        self.per_client: dict[str, int] = {}
        self.refused = 0
        self._warned = 0.0

    def __call__(self) -> asyncio.Protocol:
        return _Accept(self)

    def admit(self, transport: asyncio.BaseTransport) -> asyncio.Protocol:
        peer = transport.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if (
            len(self.conns) >= self.http.max_connections
            or self.per_client.get(addr, 0) >= self.http.max_connections_per_client
        ):
            self.refused += 1
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning(
                    "api connection limit reached: refusing connections",
                    open=len(self.conns),
                    peer=addr,
                    max_connections=self.http.max_connections,
                    max_connections_per_client=self.http.max_connections_per_client,
                )
            return _Refuse()
        assert self.factory is not None
        conn = _Conn(self, self.factory(), addr)
        self.conns[transport] = conn
        self.per_client[addr] = self.per_client.get(addr, 0) + 1
        return conn

    def closed(self, conn: _Conn) -> None:
        if conn.transport is not None and self.conns.pop(conn.transport, None) is not None:
            left = self.per_client.get(conn.peer, 1) - 1
            if left > 0:
                self.per_client[conn.peer] = left
            else:
                self.per_client.pop(conn.peer, None)

    def request_read(self, transport: asyncio.BaseTransport) -> None:
        conn = self.conns.get(transport)
        if conn is not None:
            conn.request_read()


class _Accept(asyncio.Protocol):
    """Decides, once the transport exists (the peer is known), which
    protocol serves the connection, and hands every event to it."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.proto: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.proto = self.guard.admit(transport)
        self.proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.proto is not None:
            self.proto.data_received(data)

    def eof_received(self) -> bool | None:
        return self.proto.eof_received() if self.proto is not None else None

    def pause_writing(self) -> None:
        if self.proto is not None:
            self.proto.pause_writing()

    def resume_writing(self) -> None:
        if self.proto is not None:
            self.proto.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.proto is not None:
            self.proto.connection_lost(exc)
