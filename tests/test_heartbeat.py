"""Heartbeats (jupiterd/runtime/heartbeat.py): a miss starts full probes and never
decides by itself; a healthy peer answers without extra probes; each kind's
heartbeat against its real peer; misbehaving peers never crash it.

No timing is asserted: waits are bounded polls (``wait_for``)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

import probes
from jupiterd.config import parse_config
from jupiterd.core.health import Transition
from jupiterd.core.inventory import StaticInventory
from jupiterd.core.types import Role, Status
from jupiterd.runtime.heartbeat import Heartbeat, link_for
from jupiterd.runtime.supervisor import ProbeEvent, Supervisor
from jupiterd.sandbox.peers.coturn import coturn
from jupiterd.sandbox.peers.frps_standin import FrpsStandin
from jupiterd.sandbox.peers.thingsboard_standin import thingsboard_standin
from jupiterd.telemetry.metrics import Metrics
from tests.conftest import need
from tests.daemon_helpers import FakeExecutor, wait_for
from tests.peers import hostile
from tests.peers.socketio_servers import node_sio_server, python_sio_server


class Server:
    """An HTTP server whose GET and HEAD can each hang (accept, never answer)."""

    def __init__(self) -> None:
        self.hang_get = False
        self.hang_head = False
        self.gets = 0
        self.heads = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _root(self, request: web.Request) -> web.Response:
        if request.method == "HEAD":
            self.heads += 1
            if self.hang_head:
                await asyncio.sleep(3600)
        else:
            self.gets += 1
            if self.hang_get:
                await asyncio.sleep(3600)
        return web.Response(text="ok")

    async def __aenter__(self) -> Server:
        app = web.Application()
        app.router.add_get("/", self._root)  # HEAD too
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@contextlib.asynccontextmanager
async def supervisor(port: int, **thresholds: Any) -> AsyncIterator[tuple[Supervisor, list[Any]]]:
    """One http service (primary on ``port``, no backup traffic) with a long
    interval: only the heartbeat can start a probe soon."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(
            {
                "state_dir": tmp,
                "defaults": {
                    "interval": "60s",
                    "fast_interval": "50ms",
                    "timeout": "300ms",
                    "jitter": 0,
                    "rise": 1,
                    **thresholds,
                },
                "guards": {"isolation": {"enabled": False}},
                "services": {
                    "web": {
                        "probe": {
                            "kind": "http",
                            "port": port,
                            "heartbeat": {"interval": "50ms", "multiplier": 3},
                        },
                        "primary": {"address": "127.0.0.1"},
                        "backup": {"address": "127.0.0.1"},
                    }
                },
            }
        )
        inv = StaticInventory(cfg, {("web", Role.PRIMARY): "running"})
        sup = Supervisor(
            cfg,
            executor=FakeExecutor(),
            inventory=inv,
            metrics=Metrics(CollectorRegistry()),
            rng=random.Random(1),
            tick_seconds=0.1,
        )
        seen: list[Any] = []
        sup.observers.append(seen.append)
        await sup.start()
        try:
            yield sup, seen
        finally:
            await sup.stop(grace=0.5)


def primary_probes(seen: list[Any]) -> list[ProbeEvent]:
    return [e for e in seen if isinstance(e, ProbeEvent) and e.role is Role.PRIMARY]


def status(sup: Supervisor) -> Status:
    return sup.state.services["web"].primary.status


async def test_a_missed_heartbeat_starts_full_probes_and_only_they_decide():
    async with Server() as server, supervisor(server.port) as (sup, seen):
        target = sup.targets[("web", Role.PRIMARY)]
        await wait_for(lambda: status(sup) is Status.UP, what="UP")
        hb = await wait_for(lambda: target.heartbeat, what="a heartbeat")
        await wait_for(lambda: hb.answered >= 3, what="answered heartbeats")
        assert len(primary_probes(seen)) == 1  # the interval is 60 s
        server.hang_get = server.hang_head = True
        await wait_for(lambda: status(sup) is Status.DOWN, what="DOWN")
        assert hb.misses == 1
        probes_seen = primary_probes(seen)
        fall = sup.policy.thresholds["web"].fall
        # DOWN came from fall failed full probes after the one passing probe,
        # all started by the miss (the next scheduled one was 60 s away).
        assert [e.result.ok for e in probes_seen] == [True] + [False] * fall
        down = [e for e in seen if isinstance(e, Transition) and e.new is Status.DOWN]
        assert len(down) == 1 and down[0].role is Role.PRIMARY
        assert target.loop.probes_run == 1 + fall
        assert server.gets == 1 + fall


async def test_a_miss_alone_never_marks_a_target_down():
    """HEAD hangs, GET answers: every heartbeat goes unanswered, the
    confirmation probes pass, the target stays UP."""
    async with Server() as server, supervisor(server.port) as (sup, seen):
        target = sup.targets[("web", Role.PRIMARY)]
        await wait_for(lambda: status(sup) is Status.UP, what="UP")
        hb = await wait_for(lambda: target.heartbeat, what="a heartbeat")
        await wait_for(lambda: hb.answered >= 1, what="a proven link")
        server.hang_head = True
        await wait_for(lambda: hb.misses >= 1, what="a miss")
        fall = sup.policy.thresholds["web"].fall
        await wait_for(lambda: len(primary_probes(seen)) >= 1 + fall, what="confirmations")
        await wait_for(lambda: not target.loop.confirming, what="confirmations done")
        assert all(e.result.ok for e in primary_probes(seen))
        assert status(sup) is Status.UP
        assert sup.metrics.heartbeat_misses.labels("web", "primary")._value.get() >= 1


async def test_a_healthy_peer_answers_heartbeats_and_gets_no_extra_probes():
    async with Server() as server, supervisor(server.port) as (sup, _):
        target = sup.targets[("web", Role.PRIMARY)]
        await wait_for(lambda: status(sup) is Status.UP, what="UP")
        hb = await wait_for(lambda: target.heartbeat, what="a heartbeat")
        await wait_for(lambda: hb.answered >= 20, what="20 answered heartbeats")
        assert hb.misses == 0
        assert hb.links == 1  # one kept connection
        assert target.loop.probes_run == 1
        assert server.gets == 1
        assert target.watch is None  # the heartbeat's connection watches for a close


async def test_a_close_of_the_heartbeat_connection_probes_at_once():
    async with Server() as server, supervisor(server.port) as (sup, _):
        target = sup.targets[("web", Role.PRIMARY)]
        await wait_for(lambda: status(sup) is Status.UP, what="UP")
        hb = await wait_for(lambda: target.heartbeat, what="a heartbeat")
        await wait_for(lambda: hb.answered >= 1, what="a proven link")
        await server.__aexit__()  # the server goes away: connections closed
        await wait_for(lambda: status(sup) is Status.DOWN, what="DOWN")
        assert hb.closes == 1
        assert hb.misses == 0


# --- each kind against its real peer -------------------------------------------------


async def beats(kind: str, target: str, count: int = 5, **options: Any) -> Heartbeat:
    """A heartbeat of ``kind`` to ``target``, run until ``count`` answers."""
    opts = probes.get_kind(kind).parse_options(options)
    assert link_for(kind, target, opts) is not None
    misses: list[int] = []
    hb = Heartbeat(lambda: link_for(kind, target, opts), 0.05, 3, lambda: misses.append(1), list)
    hb.start()
    try:
        await wait_for(lambda: hb.answered >= count, what=f"{count} {kind} heartbeats answered")
    finally:
        hb.stop()
    assert hb.misses == 0 and not misses
    assert hb.closes == 0
    assert hb.links == 1
    return hb


async def test_http_and_thingsboard_heartbeats():
    async with Server() as server:
        await beats("http", f"127.0.0.1:{server.port}")
        assert server.heads >= 5 and server.gets == 0
    async with thingsboard_standin() as tb:
        await beats("thingsboard", f"{tb.host}:{tb.port}")


@pytest.mark.parametrize(
    ("major", "eio"),
    [(4, "auto"), (4, "4"), (2, "auto"), (2, "3")],
    ids=["sio4-auto", "sio4-eio4", "sio2-auto", "sio2-eio3"],
)
async def test_socketio_heartbeat_against_node(major, eio):
    with node_sio_server(need("node"), major=major) as peer:
        await beats("socketio", peer.hostport, eio=eio)


async def test_socketio_heartbeat_against_node4_with_eio3():
    with node_sio_server(need("node"), major=4, allow_eio3=True) as peer:
        await beats("socketio", peer.hostport, eio="3")


async def test_socketio_heartbeat_against_python_socketio():
    async with python_sio_server() as peer:
        await beats("socketio", peer.hostport)


async def test_socketio_heartbeat_answers_server_pings(monkeypatch):
    """Engine.IO 4 servers ping: the session survives several of them."""
    import jupiterd.runtime.heartbeat as hbmod

    monkeypatch.setattr(hbmod, "SESSION_SECONDS", 3600.0)
    with node_sio_server(need("node"), major=4, ping_interval_ms=200, ping_timeout_ms=200) as peer:
        await beats("socketio", peer.hostport, count=40)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_frp_heartbeat_is_a_yamux_ping_without_login(tls):
    async with FrpsStandin(token="t") as frps:
        await beats("frp", frps.target, token="t", tls=tls)
        assert frps.logins == []  # no Login, no control registered


def test_frp_without_mux_and_stun_over_tcp_have_no_heartbeat():
    frp = probes.get_kind("frp").parse_options({"mux": False})
    stun = probes.get_kind("stun").parse_options({"transport": "tcp"})
    tcp = probes.get_kind("tcp").parse_options({})
    assert link_for("frp", "127.0.0.1:7000", frp) is None
    assert link_for("stun", "127.0.0.1:3478", stun) is None
    assert link_for("tcp", "127.0.0.1:80", tcp) is None


@pytest.mark.parametrize("kind", ["stun", "turn"])
async def test_stun_and_turn_heartbeats_against_coturn(kind):
    need("turnserver")
    with coturn(secret="s3cret") as c:
        await beats(kind, c.target, **({"secret": "s3cret"} if kind == "turn" else {}))


async def test_icmp_heartbeat_on_loopback():
    await beats("icmp", "127.0.0.1")


# --- misbehaving peers ---------------------------------------------------------------


async def run_against(kind: str, target: str) -> Heartbeat:
    """A heartbeat against a bad peer until a link ended or failed to open:
    the task must still be running."""
    opts = probes.get_kind(kind).parse_options({})
    hb = Heartbeat(lambda: link_for(kind, target, opts), 0.01, 3, list, list)
    hb.start()
    try:
        await wait_for(lambda: hb.ends or hb.attempts >= 2, what="a link to end")
        await asyncio.sleep(0.05)
        assert hb.running  # nothing the peer sent ended the task
        assert hb.misses == 0  # never answered: never a trigger
    finally:
        hb.stop()
    return hb


@pytest.mark.parametrize("kind", ["http", "thingsboard", "socketio", "frp"])
async def test_garbage_on_the_kept_connection(kind):
    async with hostile.tcp_responder(lambda data: hostile.garbage(), close=False) as (h, p):
        await run_against(kind, f"{h}:{p}")


@pytest.mark.parametrize("kind", ["http", "thingsboard", "socketio", "frp"])
async def test_peer_closes_the_kept_connection(kind):
    async with hostile.tcp_responder(lambda data: b"", close=True) as (h, p):
        await run_against(kind, f"{h}:{p}")


@pytest.mark.parametrize("kind", ["http", "frp"])
async def test_a_link_never_answered_never_triggers(kind):
    """A peer that takes the connection and never answers the heartbeat (but
    may pass full probes, e.g. a server that ignores HEAD) is no trigger:
    the link is given up and retried much later."""
    async with hostile.silent_tcp() as (h, p):
        hb = await run_against(kind, f"{h}:{p}")
    assert hb.ends == {"never": 1}


@pytest.mark.parametrize("kind", ["http", "socketio", "frp"])
async def test_drip_on_the_kept_connection(kind):
    head = {
        "http": b"HTTP/1.1 200 OK\r\nX-Drip: ",
        "socketio": b"HTTP/1.1 101 Switching Protocols\r\nX-Drip: ",
        "frp": b"\x00\x00\x00\x00",
    }[kind]
    async with hostile.drip_tcp(head, b"a", every=0.005) as (h, p):
        await run_against(kind, f"{h}:{p}")


async def test_answers_after_garbage_on_a_proven_http_link():
    """A proven link that turns to garbage is replaced; it is not a miss."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            for n in range(1000):
                if not await reader.read(65536):
                    break
                writer.write(ok if n < 3 else hostile.garbage())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    opts = probes.get_kind("http").parse_options({})
    hb = Heartbeat(lambda: link_for("http", f"127.0.0.1:{port}", opts), 0.02, 3, list, list)
    hb.start()
    try:
        await wait_for(lambda: hb.links >= 2, what="a second link")
        assert hb.running
        assert hb.answered >= 3
        assert hb.misses == 0
        assert hb.ends.get("garbage", 0) >= 1
    finally:
        hb.stop()
        server.close()


@pytest.mark.parametrize("kind", ["stun", "turn"])
async def test_stun_heartbeat_ignores_foreign_datagrams(kind):
    def reply(data: bytes) -> bytes:
        # A STUN success with the wrong transaction id, then garbage.
        return data[:1].replace(b"\x00", b"\x01") + data[1:8] + bytes(12)

    async with hostile.udp_responder(reply) as (h, p):
        await run_against(kind, f"{h}:{p}")


async def test_a_refused_udp_port_counts_as_a_close():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    opts = probes.get_kind("stun").parse_options({})
    closed: list[int] = []
    hb = Heartbeat(
        lambda: link_for("stun", f"127.0.0.1:{port}", opts),
        0.02,
        3,
        list,
        lambda: closed.append(1),
    )
    hb.start()
    try:
        await wait_for(lambda: closed, what="a close")
    finally:
        hb.stop()
    assert hb.misses == 0


async def test_tcp_acked_for_tells_a_lost_segment_from_an_unanswering_peer():
    """The input of the loss guard: a request the peer's kernel has not
    acknowledged (here: every inbound segment dropped by a socket filter on
    the peer's side) is loss, not a hang; an acknowledged, unanswered one is
    the application's silence."""
    from jupiterd.runtime.heartbeat import _tcp_acked_for
    from tests.test_net import SO_DETACH_FILTER, drop_everything

    accepted: list[socket.socket] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("socket"))
        await reader.read(1)  # then never reads nor answers again
        await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"x")
        await wait_for(lambda: accepted, what="the accept")
        await wait_for(lambda: _tcp_acked_for(writer) is not None, what="the first byte acked")
        peer = socket.socket(fileno=accepted[0].fileno())  # the same socket, to set a filter
        try:
            drop_everything(peer)
            writer.write(b"lost")
            written = time.monotonic()
            await asyncio.sleep(0.05)
            assert _tcp_acked_for(writer) is None  # TCP is retransmitting
            peer.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            await wait_for(
                lambda: _tcp_acked_for(writer) is not None, what="the retransmission acknowledged"
            )
            acked = _tcp_acked_for(writer)
            # The clock starts at the acknowledgement, not at the write.
            assert acked is not None and acked < time.monotonic() - written
        finally:
            peer.detach()
    finally:
        writer.close()
        server.close()


@pytest.mark.parametrize("kind", ["http", "frp"])
async def test_a_reset_of_a_proven_link_counts_as_a_close(kind):
    """A killed process resets connections with unread data: that wakes the
    probe loop like a close, it is not garbage."""
    from probes import yamux

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            for _ in range(2):
                if kind == "http":
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                else:
                    head = yamux.decode(await reader.readexactly(yamux.HEADER_SIZE))
                    writer.write(yamux.encode(yamux.PING, yamux.ACK, 0, head.length))
            await reader.read(1)  # the next heartbeat stays unread
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    opts = probes.get_kind(kind).parse_options({})
    closed: list[int] = []
    hb = Heartbeat(
        lambda: link_for(kind, f"127.0.0.1:{port}", opts), 0.02, 3, list, lambda: closed.append(1)
    )
    hb.start()
    try:
        await wait_for(lambda: closed, what="the close callback")
        assert hb.ends == {"closed": 1}
        assert hb.answered >= 2 and hb.misses == 0
    finally:
        hb.stop()
        server.close()


async def test_confirm_runs_fall_probes_at_once_counting_the_one_in_flight():
    """The confirmation's probes do not wait for each other (their timeouts
    overlap); a probe already running counts as the first; a second
    confirmation while one runs is ignored; each result is reported."""
    from types import SimpleNamespace

    from jupiterd.runtime.probe_loop import ProbeSpec, TargetLoop
    from probes import ProbeResult, Reason

    release = asyncio.Event()
    running = {"now": 0, "most": 0}

    async def probe(target: str, options: Any, timeout: float) -> ProbeResult:
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        try:
            await release.wait()
        finally:
            running["now"] -= 1
        return ProbeResult("fake", target, False, Reason.TIMEOUT, "held", 0.0)

    kind: Any = SimpleNamespace(name="fake", probe=probe)
    results: list[ProbeResult] = []
    loop = TargetLoop(
        "t",
        ProbeSpec(kind, "x", probes.ProbeOptions(), 60.0),
        lambda r, at: results.append(r),
        lambda: (3600.0, 0.0),
    )
    loop.start()
    try:
        loop.wake()
        await wait_for(lambda: loop.probing, what="the scheduled probe")
        loop.confirm(3, 0.0)
        loop.confirm(3, 0.0)  # ignored: one is running
        await wait_for(lambda: running["now"] == 3, what="three probes in flight")
        assert loop.confirming == 2
        release.set()
        await wait_for(lambda: len(results) == 3, what="three results")
        await asyncio.sleep(0.05)
        assert running["most"] == 3
        assert loop.probes_run == 3 and loop.confirming == 0
    finally:
        await loop.stop()
