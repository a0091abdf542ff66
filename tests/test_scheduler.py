"""The per-target probe loop survives its probes: a probe that raises is a
defect reported as a monitor error (no verdict on the target) and the loop
keeps probing; a confirmation probe that timed out in a loop stall is the
monitor's failure like a scheduled one."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import probes
from jupiterd.runtime.probe_loop import LagMonitor, ProbeSpec, TargetLoop
from probes import MonitorCause, ProbeResult, Reason
from tests.daemon_helpers import wait_for


async def test_a_probe_that_raises_is_a_defect_and_the_loop_goes_on():
    calls = {"n": 0}

    async def probe(target: str, options: Any, timeout: float) -> ProbeResult:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a field the peer never sent")
        return ProbeResult("fake", target, True, Reason.OK, "fine", 0.0)

    kind: Any = SimpleNamespace(name="fake", probe=probe)
    results: list[ProbeResult] = []
    loop = TargetLoop(
        "t",
        ProbeSpec(kind, "x", probes.ProbeOptions(), 1.0),
        lambda r, at: results.append(r),
        lambda: (0.01, 0.0),
    )
    loop.start()
    try:
        await wait_for(lambda: len(results) >= 2, what="a second result after the defect")
    finally:
        await loop.stop()
    first = results[0]
    assert first.reason is Reason.MONITOR_ERROR and first.cause is MonitorCause.DEFECT
    assert not first.ok and "KeyError" in first.detail and "fake probe" in first.detail
    assert results[1].ok
    assert not MonitorCause.DEFECT.host_wide  # one target's code path, not the host


async def test_a_confirmation_timing_out_in_a_stall_is_the_monitors():
    lag = LagMonitor()
    stalled = asyncio.Event()

    async def probe(target: str, options: Any, timeout: float) -> ProbeResult:
        # Stall the whole event loop for most of the budget, then time out.
        if not stalled.is_set():
            stalled.set()
            time.sleep(0.3)  # noqa: ASYNC251 - the stall under test
        return ProbeResult("fake", target, False, Reason.TIMEOUT, "no answer", timeout)

    kind: Any = SimpleNamespace(name="fake", probe=probe)
    results: list[ProbeResult] = []
    loop = TargetLoop(
        "t",
        ProbeSpec(kind, "x", probes.ProbeOptions(), 0.4),
        lambda r, at: results.append(r),
        lambda: (3600.0, 0.0),
        lag=lag,
    )
    lag.start()
    loop.start()
    try:
        await asyncio.sleep(0.1)  # the lag monitor has a baseline
        loop.confirm(2, 0.0)
        await wait_for(lambda: len(results) >= 2, what="both confirmation results")
    finally:
        await loop.stop()
        await lag.stop()
    causes = [r.cause for r in results]
    assert MonitorCause.LOOP_STALL in causes, results
