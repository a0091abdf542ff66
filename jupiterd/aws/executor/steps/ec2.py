"""EC2 instance steps: start the standby, wait until it passes its probes,
turn off its source/dest check (NAT), stop the old instance."""

from __future__ import annotations

from typing import Any

import structlog

import probes
from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.instances import start_standby, stop_instance
from jupiterd.aws.executor.polling import Rise
from jupiterd.aws.executor.run import _Run
from jupiterd.core.plan import (
    GONE_STATES,
    ROLLBACK_PREFIX,
    STOPPED_STATES,
    Step,
    StepKind,
    sharing_services,
)
from jupiterd.core.types import Role

log = structlog.get_logger("jupiterd.executor")


async def start(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    iid = step.params["instance_id"]
    if not iid:
        raise StepFailed(f"the {step.role} instance was not found")
    res = await start_standby(ctx, run, iid, role=step.role, step=step.name)
    secs = res.seconds_to_running or 0.0
    if not res.started:
        if res.previous_state == "running":
            return f"{iid} is already running", {}
        return f"{iid} was {res.previous_state} ({secs:.1f}s to running)", res.data()
    tried = res.summary()
    after = f" after {tried}" if tried else ""
    note = res.note()
    if note:
        run.notes.append(note)
    as_type = f" as {res.instance_type} (its type was {res.original_type})" if note else ""
    return f"started {iid}{as_type}{after} ({secs:.1f}s to running)", res.data()


async def stop(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    assert run.facts is not None
    iid = step.params["instance_id"]
    other = run.facts.instance(step.role.other)
    if not iid:
        raise StepFailed(f"the {step.role} instance was not found")
    ids = [iid] + ([other.instance_id] if other.instance_id else [])
    found = await ctx.describe(*ids)
    cur = found.get(iid)
    if cur is None:
        raise StepFailed(f"the {step.role} instance {iid} does not exist")
    state = cur["State"]["Name"]
    if state in STOPPED_STATES or state in GONE_STATES:
        return f"{iid} is already {state}", {"stopped": True}
    o = found.get(other.instance_id or "")
    o_state = o["State"]["Name"] if o else "missing"
    # In a dry run the standby was not really started: it only must exist.
    startable = ctx.dry_run and o_state in STOPPED_STATES | {"pending"}
    if o_state != "running" and not startable:
        raise StepFailed(
            f"refusing to stop the {step.role} instance {iid}: the {step.role.other} "
            f"({other.instance_id}) is {o_state}, and jupiterd never leaves both stopped"
        )
    drained = await _dns_drain(ctx, run, step, iid)
    users = await _users_now(ctx, run, iid)
    if users:
        note = (
            f"the {step.role} ({iid}) is not stopped: {', '.join(users)} now "
            f"point{'s' if len(users) == 1 else ''} at it"
        )
        log.warning("stop_skipped", service=run.service, step=step.name, reason=note)
        run.notes.append(note)
        run.kept.add(iid)
        return note, {"stopped": False}
    stopped = await stop_instance(ctx, run, iid, hibernate=_hibernate(ctx, run, step), instance=cur)
    if stopped.note:
        run.notes.append(stopped.note)
    return f"{stopped.sentence(state)}{drained}", {
        "stopped": True,
        "hibernated": stopped.hibernated,
    }


def _hibernate(ctx: StepContext, run: _Run, step: Step) -> bool:
    """Whether ``standby_stop: hibernate`` applies to this stop: the backup
    stopped by a failback, which served until then and becomes the standby
    again. Never an instance stopped because it failed (the primary after a
    failover, a standby a rollback stops): its memory is not worth keeping."""
    svc = ctx.config.services[run.service]
    return (
        svc.standby_stop == "hibernate"
        and step.role is Role.BACKUP
        and step.role is run.request.from_role
        and not step.name.startswith(ROLLBACK_PREFIX)
    )


async def _users_now(ctx: StepContext, run: _Run, iid: str) -> tuple[str, ...]:
    """The other services' attachments that point at ``iid`` now: the plan
    decided to stop it from the preflight's facts, and a plan of another
    service (another member of the pool) may have moved traffic onto it
    since. Read again only for an instance that is shared."""
    if not sharing_services(ctx.config, run.service):
        return ()
    facts = (await ctx.inventory.facts([run.service]))[run.service]
    return facts.in_use.get(iid, ())


async def _dns_drain(ctx: StepContext, run: _Run, step: Step, iid: str) -> str:
    """Clients keep resolving a moved record to the old address until its
    TTL runs out. If the old instance still serves (a planned move, not a
    crash), keep it up that long, bounded by drain_timeout, as a target
    group's deregistration delay does for connections. Not in a dry run:
    no record moved."""
    if ctx.dry_run or run.plan is None or run.facts is None:
        return ""
    ttls = []
    for s in run.plan.steps:
        if s.kind is not StepKind.UPSERT_RECORD:
            continue
        rec = run.facts.record(s.params["zone_id"], s.params["name"], s.params["type"])
        ttls.append(rec.ttl if rec is not None and rec.ttl is not None else 60)
    if not ttls:
        return ""
    th = ctx.thresholds(run)
    wait = min(float(max(ttls)), th.drain_timeout)
    address = run.facts.instance(step.role).address
    if wait <= 0 or not address:
        return ""
    svc = ctx.config.services[run.service]
    target = svc.probe.target_for(address)
    result = await ctx.prober(svc.probe.kind, target, svc.probe.parsed_options, th.timeout)
    if not result.ok and not result.monitor_error:
        return ""  # nothing is served there: no client to protect
    log.info(
        "waiting",
        service=run.service,
        step=step.name,
        what=f"the old DNS answers to expire before stopping {iid}, which still serves",
        seconds=0.0,
        timeout=wait,
    )
    await ctx.clock.sleep(wait)
    return f" after {wait:g}s for cached DNS answers (record TTL) to expire"


async def healthy(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    assert run.facts is not None
    svc = ctx.config.services[run.service]
    th = ctx.thresholds(run)
    facts = run.facts.instance(step.role)
    iid = step.params.get("instance_id") or facts.instance_id
    inst = await ctx.instance(iid, step.role)
    state = inst["State"]["Name"]
    address = facts.address or inst.get("PrivateIpAddress")
    if not address:
        raise StepFailed(f"the {step.role} instance {iid} has no address to probe")
    target = svc.probe.target_for(address)
    kind = svc.probe.kind
    if state != "running":
        if ctx.dry_run:  # the dry run did not start it
            return (
                f"would wait for {th.rise} passing {kind} probe(s) of {target} "
                f"(the {step.role} is {state} now)",
                {},
            )
        raise StepFailed(f"the {step.role} instance {iid} is {state}, not running")
    options = svc.probe.parsed_options
    rise = Rise(th.rise)

    async def check() -> tuple[bool, str]:
        try:
            result = await ctx.prober(kind, target, options, th.timeout)
        except probes.OptionError as exc:
            raise StepFailed(f"cannot probe {target}: {exc}") from None
        return rise.see(result), f"{result.reason}: {result.detail}"

    ok, _, secs = await ctx.wait(
        run,
        step,
        f"{iid} to pass {th.rise} {kind} probe(s) of {target}",
        check,
        th.healthy_timeout,
        interval=th.fast_interval,
    )
    if ok:
        return f"{iid} passed {th.rise} {kind} probe(s) of {target} in {secs:.1f}s", {}
    last = rise.last
    assert last is not None
    raise StepFailed(
        f"the {step.role} instance {iid} did not pass {th.rise} consecutive {kind} probe(s) "
        f"of {target} within {th.healthy_timeout:g}s (healthy_timeout); "
        f"last: {last.reason}: {last.detail}"
    )


async def source_dest(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    iid = step.params["instance_id"]
    inst = await ctx.instance(iid, step.role)
    if inst.get("SourceDestCheck") is False:
        return f"source/dest check already off on {iid}", {}
    what = f"off the source/dest check on {iid} (it routes NAT traffic)"
    await ctx.aws._mutate(
        run,
        "ec2",
        "ModifyInstanceAttribute",
        iid,
        would=f"would turn {what}",
        InstanceId=iid,
        SourceDestCheck={"Value": False},
    )
    return f"turned {what}", {}
