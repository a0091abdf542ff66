"""Run the supervisor against a healthy peer, then exhaust this process's own
file descriptors for a while, and print what the daemon did as JSON.

Run as ``python -m tests.monitor_pressure HOST PORT STATE_DIR`` (by
tests/test_daemon_monitor.py): a subprocess, so the test runner keeps its
own descriptors.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import sys
import time
from typing import Any

from jupiterd.core.health import Transition
from jupiterd.runtime.supervisor import ProbeEvent
from tests.daemon_helpers import FakeExecutor, P, config_for, supervisor_for, wait_for

PROBES_UNDER_PRESSURE = 12


async def settle(cond: Any, timeout: float) -> bool:
    """Wait for ``cond`` up to ``timeout``; report instead of raising, so the
    parent sees what happened (the code under test may never get there)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def main(host: str, port: int, state_dir: str) -> dict[str, Any]:
    cfg = config_for(
        {
            "sig": {
                "probe": {"kind": "tcp", "port": port},
                "primary": {"address": host},
                "backup": {"address": "127.0.1.2"},
            }
        },
        state_dir,
    )
    executor = FakeExecutor()
    sup = supervisor_for(cfg, executor)
    results: list[str] = []
    statuses: list[str] = []

    def record(item: Any) -> None:
        if isinstance(item, ProbeEvent) and item.role is P:
            results.append(item.result.reason.value)
        elif isinstance(item, Transition) and item.role is P:
            statuses.append(item.new.value)

    sup.observers.append(record)
    reg = sup.metrics.registry

    def snapshot() -> dict[str, Any]:
        status = sup.status()
        svc = status["services"]["sig"]
        return {
            "state": svc["targets"]["primary"]["state"],
            "hold": svc["hold"],
            "monitor_error": svc["targets"]["primary"].get("monitor_error"),
            "monitor_degraded": status.get("monitor_degraded"),
            "hold_metric": reg.get_sample_value(
                "jupiterd_hold_active", {"service": "sig", "guard": "monitor_degraded"}
            ),
            "degraded_metric": reg.get_sample_value("jupiterd_monitor_degraded"),
            "errors_metric": reg.get_sample_value(
                "jupiterd_monitor_errors_total",
                {"service": "sig", "role": "primary", "cause": "descriptors"},
            ),
            "requests": len(executor.requests),
        }

    await sup.start()
    try:
        await wait_for(lambda: sup.state.services["sig"].primary.status.value == "up")
        before = len(results)
        # Lower the limit to a little above what is open, then take the rest:
        # a descriptor leak, as it would look from inside.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
        hog: list[int] = []
        try:
            while True:
                hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
        under = await settle(lambda: len(results) - before >= PROBES_UNDER_PRESSURE, 15)
        during = snapshot()
        during_results = results[before:]
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        mark = len(results)
        await settle(lambda: sup.state.services["sig"].hold is None and len(results) > mark, 15)
        after = snapshot()
        return {
            "probed_under_pressure": under,
            "during_results": during_results,
            "during": during,
            "after": after,
            "statuses": statuses,
        }
    finally:
        await sup.stop(grace=1)


if __name__ == "__main__":
    from jupiterd.telemetry import logs

    logs.configure("warning", "console", stream=sys.stderr)
    out = asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    print(json.dumps(out))
