"""EC2 instance steps: start the standby, wait until it passes its probes,
turn off its source/dest check (NAT), stop the old instance."""

from __future__ import annotations

from typing import Any

import structlog

import probes
from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.polling import Check, Rise
from jupiterd.aws.executor.run import _Run
from jupiterd.core.plan import GONE_STATES, STOPPED_STATES, Step, StepKind, sharing_services

log = structlog.get_logger("jupiterd.executor")


async def start(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    iid = step.params["instance_id"]
    inst = await ctx.instance(iid, step.role)
    state = inst["State"]["Name"]
    if state == "running":
        return f"{iid} is already running", {}
    if state in GONE_STATES:
        raise StepFailed(f"the {step.role} instance {iid} is {state}")
    th = ctx.thresholds(run)
    would = f"would start {iid} (now {state}): ec2:StartInstances is allowed"
    # A dry run proves the permission at once: it has no stop to wait for.
    if state == "stopping" and not ctx.dry_run:
        ok, st, _ = await ctx.wait(
            run, step, f"{iid} to finish stopping", _state_check(ctx, iid), th.start_timeout
        )
        if not ok:
            raise StepFailed(f"{iid} was still {st} after {th.start_timeout:g}s")
        state = st
    if state in ("stopped", "stopping"):
        await ctx.aws._mutate(run, "ec2", "StartInstances", iid, would=would, InstanceIds=[iid])
    stopped_polls = 0

    async def check() -> tuple[bool, str]:
        nonlocal stopped_polls
        cur = (await ctx.describe(iid)).get(iid)
        if cur is None:
            raise StepFailed(f"the {step.role} instance {iid} disappeared")
        name = cur["State"]["Name"]
        if name in GONE_STATES:
            raise StepFailed(f"the {step.role} instance {iid} is {name}")
        # EC2 may fall back to stopped (e.g. no capacity in the AZ); a
        # stopped answer right after the start can also be stale.
        stopped_polls = stopped_polls + 1 if name == "stopped" else 0
        if stopped_polls >= 3:
            why = cur.get("StateReason", {}).get("Message", "no reason given")
            raise StepFailed(f"{iid} went back to stopped after the start ({why})")
        return name == "running", name

    ok, st, secs = await ctx.wait(
        run, step, f"{iid} to be running", check, th.start_timeout, would=would
    )
    if not ok:
        raise StepFailed(
            f"the {step.role} instance {iid} was still {st} after {th.start_timeout:g}s "
            "(start_timeout)"
        )
    return f"started {iid} ({secs:.1f}s to running)", {"started": True}


def _state_check(ctx: StepContext, iid: str) -> Check:
    async def check() -> tuple[bool, str]:
        cur = (await ctx.describe(iid)).get(iid)
        name = cur["State"]["Name"] if cur else "missing"
        return name not in ("stopping", "pending", "shutting-down"), name

    return check


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
    await ctx.aws._mutate(
        run,
        "ec2",
        "StopInstances",
        iid,
        would=f"would stop {iid}: ec2:StopInstances is allowed",
        InstanceIds=[iid],
    )
    return f"stop requested for {iid} (was {state}){drained}", {"stopped": True}


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
