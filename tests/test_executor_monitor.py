"""The executor's own probes of the standby: a probe that failed on this
host (a monitor error) is no verdict either way, so it neither proves the
standby healthy nor breaks its streak of passes."""

from __future__ import annotations

from typing import Any

from jupiterd.aws.executor import default_prober
from probes import MonitorCause, ProbeResult
from tests.peers.jupiter_aws import Stack
from tests.test_executor import make_executor, moto, request, stack

__all__ = ["moto", "stack"]  # the fixtures, shared with test_executor


async def test_monitor_errors_do_not_break_the_standbys_streak(stack: Stack):
    seen: list[str] = []

    async def every_other_probe_out_of_descriptors(*args: Any) -> ProbeResult:
        result = await default_prober(*args)
        seen.append("ok" if result.ok else result.reason.value)
        if result.ok and len(seen) % 2 == 0:
            seen[-1] = "monitor_error"
            detail = "jupiterd is out of file descriptors (Too many open files)"
            return result.as_monitor_error(MonitorCause.DESCRIPTORS, detail)
        return result

    ex = make_executor(stack, prober=every_other_probe_out_of_descriptors)
    try:
        out = await ex.run(request("signaling"))
    finally:
        ex.close()
    assert out.result == "success", out.detail
    healthy = next(s for s in out.steps if s.name == "standby_healthy")
    assert healthy.ok and "passed 2 tcp probe(s)" in healthy.detail
    assert "monitor_error" in seen
