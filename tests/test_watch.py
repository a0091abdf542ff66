"""Passive detection: the idle watch connection wakes the probe on a crash."""

from __future__ import annotations

import asyncio
import random

from prometheus_client import CollectorRegistry

from jupiterd.core.inventory import StaticInventory
from jupiterd.core.types import Status
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.runtime.watch import Watch
from jupiterd.telemetry.metrics import Metrics
from tests.daemon_helpers import B, FakeExecutor, P, config_for, wait_for


class HoldingServer:
    """Keeps accepted connections open until killed, like a live process;
    killing it closes them all at once, like the kernel does for a crash."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.conns: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns.append(writer)
        try:
            while await reader.read(1024):
                pass
        except ConnectionError:
            pass

    async def start(self) -> HoldingServer:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.conns:
            w.transport.abort()
        self.conns.clear()
        await self.server.wait_closed()
        self.server = None


async def test_watch_calls_back_when_the_server_closes():
    srv = await HoldingServer().start()
    closed = asyncio.Event()
    watch = Watch(srv.host, srv.port, closed.set)
    watch.start()
    await wait_for(lambda: srv.conns, what="the watch connection")
    assert not closed.is_set()
    await srv.kill()
    await asyncio.wait_for(closed.wait(), 5)
    assert watch.closes == 1
    watch.stop()
    assert not watch.running


async def test_a_target_that_died_before_the_watch_got_in_wakes_the_probe_once(monkeypatch):
    """The watch starts when its target is seen up; if the target dies
    before the watch connects, the refused connect is the news (once: later
    refusals in a row are the probes' business). A connection made again
    and closed wakes it again."""
    monkeypatch.setattr("jupiterd.runtime.watch.RETRY_SECONDS", 0.02)
    srv = await HoldingServer().start()
    port = srv.port
    await srv.kill()  # dead before the watch starts
    calls: list[float] = []
    watch = Watch("127.0.0.1", port, lambda: calls.append(0.0))
    watch.start()
    try:
        await wait_for(lambda: calls, what="a wake for the refused connect")
        await asyncio.sleep(0.2)  # about ten more refusals
        assert len(calls) == 1 and watch.closes == 1
        back = await HoldingServer(port=port).start()
        await wait_for(lambda: watch.connected, what="the watch reconnecting")
        assert len(calls) == 1
        await back.kill()
        await wait_for(lambda: len(calls) == 2, what="a wake for the close")
    finally:
        watch.stop()


async def test_a_crash_is_detected_long_before_the_next_scheduled_probe(tmp_path):
    servers = {n: await HoldingServer(f"127.0.0.{2 + i}").start() for i, n in enumerate("abc")}
    services = {
        n: {
            "probe": {"kind": "tcp", "port": s.port},
            "primary": {"address": s.host},
            "backup": {"address": "127.0.1.1"},
        }
        for n, s in servers.items()
    }
    # A 60 s interval: only the watch can explain a detection within seconds.
    cfg = config_for(
        services,
        str(tmp_path),
        defaults={"interval": 60, "fast_interval": 0.05, "timeout": 0.5, "jitter": 0, "rise": 1},
    )
    executor = FakeExecutor()
    sup = Supervisor(
        cfg,
        executor=executor,
        inventory=StaticInventory(cfg),
        metrics=Metrics(CollectorRegistry()),
        rng=random.Random(3),
        tick_seconds=0.1,
    )
    # First probes right away rather than spread over the 60 s interval.
    await sup.start()
    for t in sup.targets.values():
        t.loop.wake()
    try:
        await wait_for(
            lambda: all(
                sup.state.services[n].primary.status is Status.UP
                and (w := sup.targets[(n, P)].watch) is not None
                and w.connected
                for n in "abc"
            ),
            what="watched and up",
        )
        await servers["a"].kill()
        await wait_for(lambda: executor.requests, timeout=20, what="a failover request")
        assert (executor.requests[0].service, executor.requests[0].to_role) == ("a", B)
        reg = sup.metrics.registry
        assert (
            reg.get_sample_value("jupiterd_watch_closes_total", {"service": "a", "role": P.value})
            == 1
        )
    finally:
        await sup.stop(grace=0.5)
        for s in servers.values():
            if s.server is not None:
                await s.kill()


async def test_watch_is_off_for_frp_by_default(tmp_path):
    cfg = config_for(
        {"f": {"probe": {"kind": "frp"}}, "g": {"probe": {"kind": "frp", "watch": True}}},
        str(tmp_path),
    )
    assert not cfg.services["f"].probe.watch_enabled
    assert cfg.services["g"].probe.watch_enabled
