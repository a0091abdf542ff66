"""Warm-ups a crash interrupted (readiness drills and pre-warms with an
unfinished journal record): the standby is stopped again, unless a
failover has taken it over since (the traffic is on it, or a failover of
the service began after the warm-up)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from jupiterd.aws.client import AwsError
from jupiterd.aws.executor.run import _Run
from jupiterd.aws.executor.warm_steps import WarmResult, run_step, stop_step
from jupiterd.core.execution import FailoverRequest
from jupiterd.core.plan import service_status
from jupiterd.core.types import Role
from jupiterd.state.journal import PlanRecord

if TYPE_CHECKING:
    from jupiterd.aws.executor.warm import StandbyWarmer

log = structlog.get_logger("jupiterd.executor")


async def resume_warmups(warmer: StandbyWarmer, records: list[PlanRecord]) -> list[WarmResult]:
    ex: Any = warmer.ex
    out = []
    for rec in records:
        if rec.service not in ex.config.services:
            await asyncio.to_thread(ex.journal.done, rec.id)
            continue
        run = _Run(
            FailoverRequest(
                rec.service, Role(rec.from_role), Role(rec.to_role), rec.reason, "resume"
            ),
            ex.clock,
            record=rec,
            resumed=True,
            began_at=rec.started_at,
        )
        try:
            run.facts = (await ex.inventory.facts([rec.service]))[rec.service]
        except AwsError as exc:
            log.error("warm_resume_failed", service=rec.service, reason=str(exc))
            continue
        handed = await _taken_over(ex, run, rec)
        if handed is not None:
            result, detail, stopped = "handed_over", handed, False
        else:
            stop = await run_step(ex, run, stop_step(run, run.request.to_role))
            stopped = stop.ok
            result = "stopped" if stop.ok else "failed"
            detail = f"interrupted {rec.kind} resumed: " + (
                "the standby was stopped again" if stop.ok else f"not stopped: {stop.detail}"
            )
        res = await warmer._finish(run, rec, result, detail, rec.started_at, None, None, stopped)
        log.warning("warm_resumed", service=rec.service, kind=rec.kind, result=result)
        out.append(res)
    return out


async def _taken_over(ex: Any, run: _Run, rec: PlanRecord) -> str | None:
    assert run.facts is not None
    standby = Role(rec.to_role)
    st = service_status(ex.config, rec.service, run.facts)
    if st.agree and st.active is standby:
        return f"a failover moved the traffic to the {standby} since"
    plans = await asyncio.to_thread(ex.journal.read)
    later = [
        p
        for p in plans
        if p.service == rec.service and p.kind == "failover" and p.started_at > rec.started_at
    ]
    if later:
        return f"a failover of {rec.service} began after the {rec.kind}"
    return None
