"""Socket helpers shared by the probes: resolve, connect, read exactly.

Kept on plain non-blocking sockets and readiness callbacks where that is
enough (a TCP connect costs a few tens of microseconds this way), with
streams only where a protocol needs buffering or TLS.

A TCP connect is hedged: a lost SYN (or SYN-ACK) costs the kernel's initial
retransmission timeout, 1 s, the whole default probe budget. So while no
attempt has connected, a new one starts every ``HEDGE_AFTER`` seconds (at
most ``ATTEMPTS`` in all) alongside the others, and the first to connect
wins (the "happy eyeballs" idea, RFC 8305, applied to loss rather than
address families). A refusal or any other error ends the connect at once:
an answer is not silence, and only silence is hedged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import os
import socket
import ssl

from .options import HostPort
from .result import ProbeFailure, Reason, Trace, monitor_failure, network_error


def literal_family(host: str) -> int | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


async def resolve(
    trace: Trace, hp: HostPort, socktype: int
) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    """First address for ``hp``; IP literals skip the resolver entirely."""
    family = literal_family(hp.host)
    if family is not None:
        if family == socket.AF_INET6:
            return family, (hp.host, hp.port, 0, 0)
        return family, (hp.host, hp.port)
    with trace.phase("resolve"):
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(hp.host, hp.port, type=socktype)
    if not infos:
        raise ProbeFailure(Reason.DNS_ERROR, f"{hp.host} has no address")
    fam, _, _, _, addr = infos[0]
    trace.facts["address"] = addr[0]
    return fam, addr  # type: ignore[return-value]


# Longer than a connect takes within a region, well under the 1 s SYN
# retransmission it works around. Under 10% loss each way a handshake fails
# 19% of the time: four attempts (at 0, 0.2, 0.4, 0.6 s) leave 0.13% to the
# kernel's retransmission; at 20% each way (36%) 1.7%, against 4.7% with
# three (bench/loss_kernel.py: socketio, two connects per probe).
HEDGE_AFTER = 0.2
ATTEMPTS = 4
# A lost data segment costs Linux's minimum retransmission timeout, 200 ms,
# whatever the round trip, and a probe that makes several round trips in a
# 1 s budget (socketio: two connections, about seven) failed when three or
# four of its segments were lost. Probe connections lower it (TCP_RTO_MIN_US,
# Linux 6.11 and later; older kernels refuse the option and keep 200 ms). The
# RTO still follows the measured round trip above this floor.
RTO_MIN_US = 50_000
_TCP_RTO_MIN_US = getattr(socket, "TCP_RTO_MIN_US", 45)


async def tcp_connect(trace: Trace, hp: HostPort) -> socket.socket:
    """A connected non-blocking TCP socket; the caller closes it."""
    family, addr = await resolve(trace, hp, socket.SOCK_STREAM)
    with trace.phase("connect"):
        return await _HedgedConnect(family, addr).run()


class _HedgedConnect:
    """Connect attempts ``HEDGE_AFTER`` apart while none has connected; the
    first success wins, the others are closed. Readiness callbacks rather
    than a task per attempt: this runs for every probe."""

    __slots__ = ("addr", "attempts", "family", "hedge", "loop", "pending", "result")

    def __init__(self, family: int, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        self.loop = asyncio.get_running_loop()
        self.family = family
        self.addr = addr
        self.result: asyncio.Future[socket.socket] = self.loop.create_future()
        self.pending: dict[int, socket.socket] = {}  # fd -> socket still connecting
        self.hedge: asyncio.TimerHandle | None = None
        self.attempts = 0

    async def run(self) -> socket.socket:
        self._start()
        try:
            return await self.result
        except BaseException:
            # Cancelled (the probe's timeout) just as an attempt connected.
            if self.result.done() and not self.result.cancelled() and not self.result.exception():
                self.result.result().close()
            raise
        finally:
            if self.hedge is not None:
                self.hedge.cancel()
            for fd, sock in self.pending.items():
                self.loop.remove_writer(fd)
                sock.close()
            self.pending.clear()

    def _start(self) -> None:
        self.attempts += 1
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors or buffers: this host's trouble
            if not self.pending:
                self._failed(exc)
            return  # a hedge that could not start: the attempts under way go on
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if RTO_MIN_US:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _TCP_RTO_MIN_US, RTO_MIN_US)
            err = sock.connect_ex(self.addr)
        except BaseException:
            sock.close()
            raise
        if err == 0:
            self._won(sock)
        elif err in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR):
            fd = sock.fileno()
            self.pending[fd] = sock
            self.loop.add_writer(fd, self._writable, fd)
            if self.attempts < ATTEMPTS:
                self.hedge = self.loop.call_later(HEDGE_AFTER, self._hedge)
        else:
            sock.close()
            error = OSError(err, os.strerror(err))
            if self.pending and monitor_failure(error, None) is not None:
                return  # this host's trouble, not an answer: the attempts under way go on
            self._failed(error)

    def _writable(self, fd: int) -> None:
        self.loop.remove_writer(fd)
        sock = self.pending.pop(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            # The errno's subclass (e.g. refused), as the network reported it.
            self._failed(network_error(OSError(err, os.strerror(err)), "connect"))
        else:
            self._won(sock)

    def _won(self, sock: socket.socket) -> None:
        if self.result.done():
            sock.close()
        else:
            self.result.set_result(sock)

    def _failed(self, exc: BaseException) -> None:
        # The other attempts are closed by run() once it wakes up.
        if not self.result.done():
            self.result.set_exception(exc)

    def _hedge(self) -> None:
        self.hedge = None
        if not self.result.done():
            self._start()


@functools.cache
def insecure_tls_context() -> ssl.SSLContext:
    """TLS without certificate checks: frps and many internal services use
    self-signed certificates, and a probe proves liveness, not identity.

    One shared context: building one costs ~15 ms of CPU (it would load the
    system CA store), more than a whole probe. No CA store is loaded at all,
    since nothing is verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_stream(
    trace: Trace,
    hp: HostPort,
    *,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    prefix: bytes = b"",
    limit: int = 2**16,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, optionally write ``prefix`` in the clear, then start TLS."""
    sock = await tcp_connect(trace, hp)
    try:
        if prefix:
            await asyncio.get_running_loop().sock_sendall(sock, prefix)
        if tls is None:
            return await asyncio.open_connection(sock=sock, limit=limit)
        with trace.phase("tls"):
            hostname = server_hostname or (hp.host if literal_family(hp.host) is None else None)
            return await asyncio.open_connection(
                sock=sock,
                ssl=tls,
                server_hostname=hostname or "",
                limit=limit,
                ssl_handshake_timeout=None,
            )
    except BaseException:
        sock.close()
        raise


def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close without waiting: a probe's cleanup must never outlive its timeout."""
    transport = writer.transport
    if transport.is_closing():
        return
    # Closing a dead transport may raise anything; there is nothing left to do.
    with contextlib.suppress(Exception):
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:
            writer.close()
