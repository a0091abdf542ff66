"""The sandbox's stand-ins for the load balancers and the Elastic IP.

A front door listens on 127.0.0.1 at the service's port and forwards each new
connection (or UDP client) to whichever instance the service's AWS
attachments point at right now: the registered healthy target of its target
group, the instance its Elastic IP is associated with, its Route 53 record.
So a client that reaches a service through its front door after a failover
proves the attachments really moved, not just that the backup runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

Route = Callable[[], tuple[str, int] | None]

IDLE_UDP_SECONDS = 30.0


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    wait: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Copy one direction of a connection until either side closes; with
    ``wait``, each chunk waits for it first (a cut relay holds its bytes)."""
    try:
        while data := await reader.read(65536):
            if wait is not None:
                await wait()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class TcpFrontDoor:
    def __init__(self, host: str, port: int, route: Route) -> None:
        self.host, self.port, self.route = host, port, route
        self.server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self.route()
        if backend is None:
            writer.transport.abort()  # nothing behind the attachment: like an empty target group
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*backend), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._conns.update((writer, up_writer))
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._conns.difference_update((writer, up_writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._conns):
                w.transport.abort()
            await self.server.wait_closed()
            self.server = None


class _Downstream(Protocol):
    transport: asyncio.DatagramTransport | None


class Upstream(asyncio.DatagramProtocol):
    """One client's socket to the backend: answers go back to the client
    through ``door``'s socket (while ``passes()``, when given)."""

    def __init__(
        self,
        door: _Downstream,
        client: tuple[str, int],
        passes: Callable[[], bool] | None = None,
    ) -> None:
        self.door, self.client, self.passes = door, client, passes
        self.transport: asyncio.DatagramTransport | None = None
        self.last = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last = asyncio.get_running_loop().time()
        if self.door.transport is not None and (self.passes is None or self.passes()):
            self.door.transport.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        pass


class UdpFrontDoor(asyncio.DatagramProtocol):
    """One upstream socket per client, as an NLB keeps a flow per 5-tuple."""

    def __init__(self, host: str, port: int, route: Route) -> None:
        self.host, self.port, self.route = host, port, route
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], tuple[tuple[str, int], Upstream]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.get_running_loop().create_task(self._forward(data, addr))

    async def _forward(self, data: bytes, client: tuple[str, int]) -> None:
        backend = self.route()
        if backend is None:
            return
        flow = self.flows.get(client)
        now = asyncio.get_running_loop().time()
        if flow is not None and (flow[0] != backend or now - flow[1].last > IDLE_UDP_SECONDS):
            if flow[1].transport is not None:
                flow[1].transport.close()
            flow = None
        if flow is None:
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_datagram_endpoint(
                lambda: Upstream(self, client), remote_addr=backend
            )
            flow = (backend, proto)
            self.flows[client] = flow
        if flow[1].transport is not None:
            flow[1].transport.sendto(data)

    async def stop(self) -> None:
        for _, proto in self.flows.values():
            if proto.transport is not None:
                proto.transport.close()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
