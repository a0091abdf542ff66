"""Socket helpers shared by the probes: resolve, connect, read exactly.

Kept on plain non-blocking sockets and ``loop.sock_*`` calls where that is
enough (a TCP connect costs a few tens of microseconds this way), with
streams only where a protocol needs buffering or TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import ssl

from .options import HostPort
from .result import ProbeFailure, Reason, Trace


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


async def tcp_connect(trace: Trace, hp: HostPort) -> socket.socket:
    """A connected non-blocking TCP socket; the caller closes it."""
    family, addr = await resolve(trace, hp, socket.SOCK_STREAM)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with trace.phase("connect"):
            await asyncio.get_running_loop().sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


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
