"""A plan's preflight: read-only checks before anything changes."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from jupiterd.aws.client import AwsError, AwsThrottled, AwsUnavailable
from jupiterd.aws.executor.context import StepContext
from jupiterd.aws.executor.run import _Run
from jupiterd.core.execution import StepReport
from jupiterd.core.plan import preflight_problems
from jupiterd.state.journal import Journal, JournalError, held_services

log = structlog.get_logger("jupiterd.executor")


async def _journal_hold(ctx: StepContext, journal: Journal, run: _Run) -> str | None:
    """Why a damaged journal holds this new plan's service, if it does:
    no plan runs without its record until an operator has looked."""
    if run.record is not None:
        return None  # a resumed plan: its record is whole
    with contextlib.suppress(JournalError):
        if ctx.dry_run:  # changes nothing, not even the journal: reports it
            view = await asyncio.to_thread(journal.check, repair=False)
            if view.damage and (view.affected is None or run.service in view.affected):
                return f"{view.damage}: a real run would be held"
        else:
            await asyncio.to_thread(journal.read)  # moves new damage aside
    return held_services(ctx.config.state_dir, [run.service]).get(run.service)


async def preflight(ctx: StepContext, journal: Journal, run: _Run) -> str | None:
    """What stops the plan, or None; sets ``run.facts``, reports the step."""
    req = run.request
    t = ctx.clock.monotonic()
    held = await _journal_hold(ctx, journal, run)
    if held is not None:
        run.reports.append(StepReport("preflight", False, ctx.clock.monotonic() - t, held))
        log.info("step_end", service=req.service, step="preflight", ok=False, detail=held)
        return held
    problems: list[str] = []
    try:
        facts = (await ctx.inventory.facts([req.service]))[req.service]
    except AwsError as exc:
        problems.append(str(exc))
        run.aws_unreachable = isinstance(exc, AwsUnavailable | AwsThrottled)
    else:
        run.facts = facts
        problems = preflight_problems(ctx.config, req.service, facts, req.to_role)
        if run.record is None and not ctx.dry_run:
            try:
                unfinished = await asyncio.to_thread(journal.unfinished)
                others = [p for p in unfinished if p.service == req.service]
            except JournalError as exc:
                others = []
                problems.append(str(exc))
            if others:
                problems.append(
                    f"an interrupted plan for {req.service} (started "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(others[0].started_at))}"
                    " UTC) is unfinished: it is resumed when jupiterd starts"
                )
        topic = ctx.config.topic_for(req.service)
        if ctx.dry_run and topic:
            try:
                await ctx.aws.call("sns", "GetTopicAttributes", resource=topic, TopicArn=topic)
            except AwsError as exc:
                problems.append(f"the notification topic: {exc}")
    detail = "; ".join(problems) if problems else "instances and attachments found"
    report = StepReport("preflight", not problems, ctx.clock.monotonic() - t, detail)
    run.reports.append(report)
    log.info(
        "step_end",
        service=req.service,
        step="preflight",
        ok=report.ok,
        seconds=round(report.seconds, 3),
        detail=detail,
    )
    return "; ".join(problems) if problems else None
