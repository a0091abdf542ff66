"""Hostile peers on loopback: what a probe must survive without raising.

Each is an async context manager yielding ``(host, port)``:

- ``closed_port()``: a port nothing listens on (connect is refused).
- ``silent_tcp()``: accepts connections, reads, never answers.
- ``silent_udp()``: a bound UDP socket that never answers.
- ``tcp_responder(reply)``: answers each connection with ``reply(data)``
  bytes after the first read (or at once with ``greet=True``), then closes
  (or keeps the connection open with ``close=False``).
- ``udp_responder(reply)``: answers each datagram with ``reply(data)``.
- ``drip_tcp(head, body)``: after the first read, sends ``head`` and then
  ``body`` over and over, one byte every ``every`` seconds, never ending:
  a peer that is never silent and never done.

Replies are functions of what the probe sent, so a test can echo a
transaction id with a corrupted body, truncate a frame, or claim an absurd
length.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from jupiterd.sandbox.peers.process import free_port

Reply = Callable[[bytes], bytes]


@contextlib.asynccontextmanager
async def closed_port(host: str = "127.0.0.1") -> AsyncIterator[tuple[str, int]]:
    yield host, free_port(host=host)


@contextlib.asynccontextmanager
async def silent_tcp(host: str = "127.0.0.1") -> AsyncIterator[tuple[str, int]]:
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield host, server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.transport.abort()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def tcp_responder(
    reply: Reply, host: str = "127.0.0.1", *, greet: bool = False, close: bool = True
) -> AsyncIterator[tuple[str, int]]:
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(Exception):
            data = b"" if greet else await reader.read(65536)
            writer.write(reply(data))
            await writer.drain()
            if close:
                writer.close()
            else:
                while await reader.read(65536):
                    pass

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield host, server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.transport.abort()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def drip_tcp(
    head: bytes, body: bytes, host: str = "127.0.0.1", *, every: float = 0.01
) -> AsyncIterator[tuple[str, int]]:
    held: list[asyncio.StreamWriter] = []
    handlers: set[asyncio.Task[object]] = set()
    stop = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        with contextlib.suppress(Exception):
            await reader.read(65536)
            writer.write(head)
            while not stop.is_set() and not writer.is_closing():
                for i in range(len(body)):
                    writer.write(body[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(every)

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield host, server.sockets[0].getsockname()[1]
    finally:
        stop.set()
        for w in held:
            w.transport.abort()
        if handlers:  # each sees the stop within one drip
            await asyncio.wait(handlers, timeout=1)
        server.close()
        await server.wait_closed()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, reply: Reply | None) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        if self.reply is not None and self.transport is not None:
            out = self.reply(data)
            if out:
                self.transport.sendto(out, addr)


@contextlib.asynccontextmanager
async def udp_responder(
    reply: Reply | None, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(reply), local_addr=(host, 0))
    try:
        yield host, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def silent_udp(host: str = "127.0.0.1") -> contextlib.AbstractAsyncContextManager[tuple[str, int]]:
    return udp_responder(None, host)


def garbage(n: int = 512, seed: int = 7) -> bytes:
    """Deterministic random bytes."""
    import random

    return random.Random(seed).randbytes(n)
