"""Trouble on the monitor's side is never the target's fault, end to end: the
supervisor probes a healthy loopback peer while jupiterd itself runs out of
file descriptors, or while its event loop stalls. No DOWN, no failover, a
visible ``monitor_degraded`` hold, and recovery when the pressure ends."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from jupiterd.core.health import Transition
from jupiterd.runtime.probe_loop import LagMonitor
from jupiterd.runtime.supervisor import ProbeEvent
from probes import ProbeResult, Reason
from tests.daemon_helpers import FAST, FakeExecutor, P, config_for, supervisor_for, wait_for

ROOT = Path(__file__).resolve().parent.parent


async def _hold_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A healthy TCP service: keeps each connection until the client closes it."""
    await reader.read()
    writer.close()


@pytest.mark.slow
async def test_out_of_descriptors_holds_instead_of_failing_over(tmp_path):
    server = await asyncio.start_server(_hold_open, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.monitor_pressure",
            "127.0.0.2",
            str(port),
            str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        server.close()
        await server.wait_closed()
    assert proc.returncode == 0, err.decode()[-3000:]
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert got["probed_under_pressure"], got
    during, after = got["during"], got["after"]
    # Under pressure: every probe a monitor error (but one that had its socket
    # before the descriptors ran out), and nothing decided on them.
    results = got["during_results"]
    assert set(results) <= {"monitor_error", "ok"} and results.count("ok") <= 1, results
    assert "down" not in got["statuses"] and "suspect" not in got["statuses"], got
    assert during["state"] == "up"
    assert during["requests"] == 0
    assert during["hold"]["guard"] == "monitor_degraded", during
    assert "probes are failing on this host" in during["hold"]["reason"]
    assert "descriptors: jupiterd is out of file descriptors" in during["hold"]["reason"]
    assert during["monitor_degraded"]["cause"] == "descriptors"
    assert during["monitor_error"]["cause"] == "descriptors"
    assert during["hold_metric"] == 1 and during["degraded_metric"] == 1
    assert during["errors_metric"] >= 12
    # The pressure ends: the hold lifts, and still nothing moved.
    assert after["hold"] is None, after
    assert after["state"] == "up"
    assert after["monitor_degraded"] is None and after["monitor_error"] is None
    assert after["hold_metric"] == 0 and after["degraded_metric"] == 0
    assert after["requests"] == 0


class StallingHttp:
    """A healthy HTTP service sharing the daemon's event loop. While
    ``stall`` is set, its handler blocks the loop (``time.sleep``, as a slow
    synchronous call inside jupiterd would) before answering 200."""

    def __init__(self) -> None:
        self.stall = 0.0
        self.answered = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str) -> StallingHttp:
        self.server = await asyncio.start_server(self._serve, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.stall:
                time.sleep(self.stall)  # noqa: ASYNC251 (blocking the loop is the point)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            self.answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.slow
async def test_a_stalled_event_loop_holds_instead_of_failing_over(tmp_path):
    peer = await StallingHttp().start("127.0.0.2")
    cfg = config_for(
        {
            "sig": {
                "probe": {"kind": "http", "port": peer.port, "watch": False},
                "primary": {"address": "127.0.0.2"},
                "backup": {"address": "127.0.1.2"},
            }
        },
        str(tmp_path),
    )
    executor = FakeExecutor()
    sup = supervisor_for(cfg, executor)
    reasons: list[str] = []
    statuses: list[str] = []

    def record(item):
        if isinstance(item, ProbeEvent) and item.role is P:
            reasons.append(item.result.reason.value)
        elif isinstance(item, Transition) and item.role is P:
            statuses.append(item.new.value)

    sup.observers.append(record)
    reg = sup.metrics.registry
    await sup.start()
    try:
        await wait_for(lambda: sup.state.services["sig"].primary.status.value == "up")
        # Longer than the probe's budget (and the scheduler's grace beyond it).
        peer.stall = FAST["timeout"] + 0.6
        mark = len(reasons)
        await wait_for(lambda: len(reasons) - mark >= 6, what="5 probes in stalls")
        stalled = reasons[mark:]
        # The probe in flight when the stall was switched on may have had its
        # answer already: it alone may still report ok.
        if stalled[0] == "ok":
            stalled = stalled[1:]
        svc = sup.status()["services"]["sig"]
        assert executor.requests == [], "a stalled loop made a healthy service fail over"
        assert "down" not in statuses, statuses
        assert set(stalled) == {"monitor_error"}, stalled
        assert svc["hold"]["guard"] == "monitor_degraded"
        assert "loop_stall: jupiterd's event loop stalled for" in svc["hold"]["reason"]
        assert svc["targets"]["primary"]["state"] == "up"
        labels = {"service": "sig", "role": "primary", "cause": "loop_stall"}
        assert reg.get_sample_value("jupiterd_monitor_errors_total", labels) >= 5
        assert reg.get_sample_value("jupiterd_monitor_degraded") == 1
        success = {"service": "sig", "role": "primary", "kind": "http"}
        assert reg.get_sample_value("jupiterd_probe_success", success) == 1  # no verdict
        # The loop runs freely again: the hold lifts.
        peer.stall = 0.0
        await wait_for(lambda: sup.state.services["sig"].hold is None, what="the hold lifted")
        assert reg.get_sample_value("jupiterd_monitor_degraded") == 0
        assert (
            reg.get_sample_value(
                "jupiterd_hold_active", {"service": "sig", "guard": "monitor_degraded"}
            )
            == 0
        )
        assert executor.requests == [] and "down" not in statuses
        assert sup.state.services["sig"].primary.status.value == "up"
    finally:
        await sup.stop(grace=1)
        assert peer.server is not None
        peer.server.close()
        await peer.server.wait_closed()


# --------------------------------------------------------------------------- LagMonitor


def timeout_result(duration: float) -> ProbeResult:
    return ProbeResult("http", "x", False, Reason.TIMEOUT, "no answer within 1 s", duration)


def wake_regularly(lag: LagMonitor, until: float) -> None:
    assert lag.last is not None
    t = lag.last
    while t + lag.period <= until + 1e-9:
        t += lag.period
        lag.woke(t)


def test_lag_monitor_blames_the_loop_for_a_timeout_in_a_stall():
    lag = LagMonitor(period=0.05)
    lag.last = 10.0
    lag.woke(10.05)  # on time
    lag.woke(10.60)  # planned 10.10: the loop ran nothing for 0.5 s
    assert list(lag.stalls) == [pytest.approx((10.10, 10.60))]
    wake_regularly(lag, 11.0)
    judged = lag.judge(timeout_result(1.0), 10.0, 11.0, 1.0)
    assert judged.monitor_error and judged.reason is Reason.MONITOR_ERROR
    assert judged.cause is not None and judged.cause.value == "loop_stall"
    assert judged.detail == (
        "jupiterd's event loop stalled for 0.50 s of this probe's 1 s budget: "
        "the timeout says nothing of the target (no answer within 1 s)"
    )


def test_lag_monitor_counts_a_stall_it_has_not_woken_from_yet():
    lag = LagMonitor(period=0.05)
    lag.last = 10.0  # and nothing since: the loop is stalled right now
    assert lag.stalled(10.0, 10.8) == pytest.approx(0.75)
    assert lag.judge(timeout_result(0.8), 10.0, 10.8, 1.0).monitor_error


def test_lag_monitor_leaves_the_target_its_own_failures():
    lag = LagMonitor(period=0.05)
    lag.last = 10.0
    lag.woke(10.15)  # a 0.1 s hiccup: under a quarter of the budget
    wake_regularly(lag, 11.0)
    short = lag.judge(timeout_result(1.0), 10.0, 11.0, 1.0)
    assert short.reason is Reason.TIMEOUT and not short.monitor_error
    lag.woke(12.0)  # a long stall...
    refused = ProbeResult("http", "x", False, Reason.REFUSED, "refused", 0.5)
    assert lag.judge(refused, 11.0, 12.0, 1.0) is refused  # ...but a refusal is an answer
    wake_regularly(lag, 13.0)
    assert lag.stalled(12.0, 13.0) == 0.0  # a stall before the probe started is not its
    assert not lag.judge(timeout_result(1.0), 12.0, 13.0, 1.0).monitor_error
