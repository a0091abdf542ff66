"""Each replica's own path to every service (``jupiterd sandbox --replicas N``).

Replica K probes the primaries at 127.0.(10+K).2 and the backups at
127.0.(10+K).3, at the services' ports; a relay there forwards, TCP and
UDP, to the instance's service on 127.0.0.2 / 127.0.0.3. The sandbox can
cut one replica's path to one service (both instances, or one) and heal it:
what an AZ-level network fault between one jupiterd host and one subnet
looks like, the other replicas' paths untouched.

A cut is silence, not a refusal: a UDP datagram is dropped either way; a
TCP connection is accepted (the kernel completes the handshake before a
user-space relay could refuse it) but nothing is forwarded either way until
the path heals, the bytes waiting as a retransmitting TCP stack's would, so
a connection that outlives the cut carries on. A probe sees a timeout, as
it would behind a dead route.
"""

from __future__ import annotations

import asyncio
import contextlib

from jupiterd.core.types import Role

from .frontdoor import Upstream, pipe

IDLE_UDP_SECONDS = 30.0


def relay_host(replica: int, role: Role) -> str:
    """Where replica ``replica`` (1..) reaches the ``role`` instances."""
    return f"127.0.{10 + replica}.{2 if role is Role.PRIMARY else 3}"


class Gate:
    """Open (forwarding) or cut (silent)."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def wait(self) -> None:
        await self._open.wait()


class TcpRelay:
    def __init__(self, host: str, port: int, upstream: tuple[str, int], gate: Gate) -> None:
        self.host, self.port, self.upstream, self.gate = host, port, upstream, gate
        self.server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._conns.add(writer)
        try:
            await self.gate.wait()  # the SYN "arrives" once the path is back
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.upstream), 5
                )
            except (OSError, TimeoutError):
                writer.transport.abort()  # the instance refuses: as it would directly
                return
            self._conns.add(up_writer)
            await asyncio.gather(
                pipe(reader, up_writer, self.gate.wait), pipe(up_reader, writer, self.gate.wait)
            )
        except asyncio.CancelledError:
            # stop(): the stream's callback would report a cancelled handler as an error
            writer.transport.abort()
        finally:
            self._conns.discard(writer)
            if task is not None:
                self._tasks.discard(task)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._conns):
                w.transport.abort()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.server.wait_closed()
            self.server = None


class UdpRelay(asyncio.DatagramProtocol):
    """One upstream socket per client (the instance sees one peer per flow)."""

    def __init__(self, host: str, port: int, upstream: tuple[str, int], gate: Gate) -> None:
        self.host, self.port, self.upstream, self.gate = host, port, upstream, gate
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], Upstream] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.gate.is_open:
            asyncio.get_running_loop().create_task(self._forward(data, addr))

    def error_received(self, exc: Exception) -> None:
        pass

    async def _forward(self, data: bytes, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        flow = self.flows.get(client)
        if flow is not None and loop.time() - flow.last > IDLE_UDP_SECONDS:
            if flow.transport is not None:
                flow.transport.close()
            flow = None
        if flow is None:
            _, flow = await loop.create_datagram_endpoint(
                lambda: Upstream(self, client, lambda: self.gate.is_open), remote_addr=self.upstream
            )
            self.flows[client] = flow
        if flow.transport is not None:
            flow.transport.sendto(data)

    async def stop(self) -> None:
        for flow in self.flows.values():
            if flow.transport is not None:
                flow.transport.close()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class ReplicaPaths:
    """Replica ``index``'s relays to every service: ``services`` maps a
    service to its port and whether it speaks UDP too; ``hosts`` the
    instances' own addresses by role."""

    def __init__(
        self, index: int, services: dict[str, tuple[int, bool]], hosts: dict[Role, str]
    ) -> None:
        self.index = index
        self.services = services
        self.hosts = hosts
        self.gates = {(name, role): Gate() for name in services for role in Role}
        self.relays: list[TcpRelay | UdpRelay] = []

    def address(self, role: Role) -> str:
        return relay_host(self.index, role)

    async def start(self) -> None:
        for (name, role), gate in self.gates.items():
            port, udp = self.services[name]
            upstream = (self.hosts[role], port)
            kinds: list[type[TcpRelay] | type[UdpRelay]] = [TcpRelay, *([UdpRelay] if udp else [])]
            for kind in kinds:
                relay = kind(self.address(role), port, upstream, gate)
                await relay.start()
                self.relays.append(relay)

    def _gates(self, service: str, role: Role | None) -> list[Gate]:
        if service not in self.services:
            raise KeyError(service)
        return [self.gates[(service, r)] for r in Role if role in (None, r)]

    def cut(self, service: str, role: Role | None = None) -> None:
        for gate in self._gates(service, role):
            gate.cut()

    def heal(self, service: str, role: Role | None = None) -> None:
        for gate in self._gates(service, role):
            gate.heal()

    @property
    def cuts(self) -> list[str]:
        """``service/role`` of every path cut now."""
        return [f"{n}/{r.value}" for (n, r), g in self.gates.items() if not g.is_open]

    async def stop(self) -> None:
        for relay in self.relays:
            with contextlib.suppress(Exception):
                await relay.stop()
        self.relays.clear()
