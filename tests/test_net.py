"""probes.net.tcp_connect: the hedged connect.

A lost SYN is made real with a socket filter on the listening socket that
drops every packet (the kernel then sees no SYN at all and the client's
kernel would retransmit after its 1 s initial RTO); removing the filter lets
the next SYN through. No timing assertions beyond generous bounds that tell
"connected by the hedge" (well under 1 s) from "by the kernel's retransmission".
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import struct
import sys
import time

import pytest

import probes
from probes import net
from probes.options import parse_hostport
from probes.result import Trace

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="socket filters are Linux's")

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)


def drop_everything(sock: socket.socket) -> None:
    """Attach a classic BPF filter of one instruction: ``ret #0`` (drop)."""
    prog = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
    sock.setsockopt(
        socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HP", 1, ctypes.addressof(prog))
    )


def let_through_soon(sock: socket.socket) -> None:
    """Remove the filter after half the hedge delay: the first SYN is lost,
    the hedge's gets through."""
    detach = (socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    asyncio.get_running_loop().call_later(net.HEDGE_AFTER / 2, sock.setsockopt, *detach)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.setblocking(False)
    yield s
    s.close()


def accepted(lsock: socket.socket) -> int:
    n = 0
    while True:
        try:
            c, _ = lsock.accept()
        except BlockingIOError:
            return n
        c.close()
        n += 1


@pytest.fixture
def attempts(monkeypatch):
    """Counts connect attempts (socket creations) made by tcp_connect."""
    count = [0]
    start = net._HedgedConnect._start

    def counting(self):
        count[0] += 1
        start(self)

    monkeypatch.setattr(net._HedgedConnect, "_start", counting)
    return count


def hp_of(sock: socket.socket):
    host, port = sock.getsockname()
    return parse_hostport(f"{host}:{port}", None)


async def test_connects_with_one_attempt_when_nothing_is_lost(listener, attempts):
    before = open_fds()
    sock = await net.tcp_connect(Trace("tcp", "x"), hp_of(listener))
    try:
        assert sock.getpeername() == listener.getsockname()
        assert not sock.getblocking()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
    await asyncio.sleep(0.05)
    assert attempts[0] == 1
    assert accepted(listener) == 1
    assert open_fds() == before


async def test_probe_connections_lower_the_minimum_rto(listener):
    # A lost data segment then costs 50 ms, not Linux's 200 ms (tests/test_loss_kernel.py
    # and bench/loss_kernel.py show what that buys under loss).
    probe = socket.socket()
    try:
        probe.setsockopt(socket.IPPROTO_TCP, net._TCP_RTO_MIN_US, net.RTO_MIN_US)
    except OSError:
        pytest.skip("this kernel has no TCP_RTO_MIN_US (Linux 6.11 and later)")
    finally:
        probe.close()
    sock = await net.tcp_connect(Trace("tcp", "x"), hp_of(listener))
    try:
        # The kernel rounds to jiffies, so compare in milliseconds, loosely.
        got = sock.getsockopt(socket.IPPROTO_TCP, net._TCP_RTO_MIN_US)
        assert abs(got - net.RTO_MIN_US) < 10_000, got
        assert net.RTO_MIN_US < 200_000
    finally:
        sock.close()


async def test_a_lost_syn_is_hedged_well_before_the_kernel_retransmits(listener, attempts):
    drop_everything(listener)
    let_through_soon(listener)
    before = open_fds()
    trace = Trace("tcp", "x")
    t0 = time.monotonic()
    sock = await net.tcp_connect(trace, hp_of(listener))
    took = time.monotonic() - t0
    try:
        assert sock.getpeername() == listener.getsockname()
        assert net.HEDGE_AFTER <= took < 0.9, took  # not the 1 s SYN retransmission
        assert attempts[0] == 2
        assert trace.phases["connect"] >= net.HEDGE_AFTER
        # The silent first attempt was closed: only the winner's fd is new.
        assert open_fds() == before + 1
    finally:
        sock.close()
    # Past the first attempt's retransmission time: it never arrives.
    await asyncio.sleep(1.3 - took)
    assert accepted(listener) == 1


async def test_when_every_syn_is_lost_the_timeout_wins_and_nothing_leaks(listener, attempts):
    drop_everything(listener)
    before = open_fds()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(net.HEDGE_AFTER * (net.ATTEMPTS + 0.5)):
            await net.tcp_connect(Trace("tcp", "x"), hp_of(listener))
    assert attempts[0] == net.ATTEMPTS
    assert open_fds() == before
    assert accepted(listener) == 0


async def test_a_refusal_during_a_hedge_ends_the_connect(attempts):
    """The first SYN is lost; by the time of the hedge the port is closed:
    the hedge's refusal is the answer, not a wait for the first attempt."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    drop_everything(lsock)
    lsock.listen(16)
    hp = hp_of(lsock)
    asyncio.get_running_loop().call_later(net.HEDGE_AFTER / 2, lsock.close)
    before = open_fds()
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await net.tcp_connect(Trace("tcp", "x"), hp)
    assert time.monotonic() - t0 < 0.9
    assert attempts[0] == 2
    assert open_fds() == before - 1  # the listener closed; nothing of ours left open


async def test_a_refusal_is_not_hedged(attempts):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    hp = hp_of(s)
    s.close()  # nothing listens there now
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await net.tcp_connect(Trace("tcp", "x"), hp)
    assert time.monotonic() - t0 < net.HEDGE_AFTER
    await asyncio.sleep(net.HEDGE_AFTER * 1.5)
    assert attempts[0] == 1


async def test_cancelled_while_connecting_closes_every_attempt(listener):
    drop_everything(listener)
    before = open_fds()
    task = asyncio.create_task(net.tcp_connect(Trace("tcp", "x"), hp_of(listener)))
    await asyncio.sleep(net.HEDGE_AFTER * 1.5)  # two attempts in flight
    assert open_fds() == before + 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert open_fds() == before


async def test_tcp_probe_passes_within_a_1s_budget_despite_a_lost_syn(listener):
    drop_everything(listener)
    let_through_soon(listener)
    host, port = listener.getsockname()
    result = await probes.run("tcp", f"{host}:{port}", {}, 1.0)
    assert result.ok, result
    assert result.duration_seconds < 0.9


async def test_http_probe_passes_within_a_1s_budget_despite_a_lost_syn():
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    drop_everything(lsock)
    lsock.listen(16)
    server = await asyncio.start_server(answer, sock=lsock)
    let_through_soon(lsock)
    host, port = lsock.getsockname()
    async with server:
        result = await probes.run("http", f"http://{host}:{port}/", {}, 1.0)
    assert result.ok, result
    assert result.duration_seconds < 0.9
