"""A plan's preflight: read-only checks before anything changes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import structlog

from jupiterd.aws.client import (
    AwsAccessDenied,
    AwsError,
    AwsNotFound,
    AwsThrottled,
    AwsUnavailable,
)
from jupiterd.aws.executor.context import StepContext
from jupiterd.aws.executor.run import _Run
from jupiterd.core.execution import StepReport
from jupiterd.core.plan import (
    PEER_THEN_STANDBY,
    STOPPED_STATES,
    Fallback,
    ServiceFacts,
    health_check_note,
    preflight_problems,
    preflight_warnings,
    service_status,
    zone_key,
)
from jupiterd.core.types import Role
from jupiterd.state.journal import JournalError
from jupiterd.state.journal_api import PlanJournal

log = structlog.get_logger("jupiterd.executor")


async def _journal_hold(ctx: StepContext, journal: PlanJournal, run: _Run) -> str | None:
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
    try:
        held = await asyncio.to_thread(journal.held, [run.service])
    except JournalError:
        return None  # unreadable: the plan's first record fails with the sentence
    return held.get(run.service)


async def _missing_zones(ctx: StepContext, service: str) -> frozenset[str]:
    """The service's hosted zones that Route 53 does not know."""
    zones = dict.fromkeys(
        zone_key(r.zone_id) for r in ctx.config.services[service].attachments.route53
    )

    async def missing(zone: str) -> bool:
        try:
            await ctx.aws.call(
                "route53",
                "ListResourceRecordSets",
                resource=f"hosted zone {zone}",
                HostedZoneId=zone,
                MaxItems="1",
            )
        except AwsNotFound:
            return True
        return False

    found = await asyncio.gather(*(missing(z) for z in zones))
    return frozenset(z for z, gone in zip(zones, found, strict=True) if gone)


async def _no_public_at_start(
    ctx: StepContext, service: str, facts: ServiceFacts, to_role: Role
) -> str | None:
    """Why the stopped standby will get no public IPv4 address when it
    starts, when a record wants one and no Elastic IP moves to it; None
    when it will (or nothing needs one). EC2 gives an instance a new public
    address at each start when its primary network interface asks for one
    (set at launch, by default from the subnet's MapPublicIpOnLaunch)."""
    att = ctx.config.services[service].attachments
    standby = facts.instance(to_role)
    if (
        att.elastic_ip
        or standby.public_ip
        or not standby.instance_id
        or standby.state not in STOPPED_STATES
        or not any(r.address == "public" for r in att.route53)
    ):
        return None
    inst = (await ctx.describe(standby.instance_id)).get(standby.instance_id)
    if inst is None:
        return None  # the preflight says it is missing
    eni = next(
        (
            n.get("NetworkInterfaceId")
            for n in inst.get("NetworkInterfaces", [])
            if n.get("Attachment", {}).get("DeviceIndex") == 0
        ),
        None,
    )
    if eni:
        try:
            resp = await ctx.aws.call(
                "ec2",
                "DescribeNetworkInterfaceAttribute",
                resource=eni,
                NetworkInterfaceId=eni,
                Attribute="associatePublicIpAddress",
            )
        except (AwsAccessDenied, AwsUnavailable, AwsThrottled):
            raise
        except AwsError:
            resp = {}  # an endpoint that does not know the attribute: ask the subnet
        asks = resp.get("AssociatePublicIpAddress")
        if asks is True:
            return None
        if asks is False:
            return f"its network interface {eni} does not ask for a public IPv4 address"
    subnet = inst.get("SubnetId")
    if not subnet:
        return None
    resp = await ctx.aws.call("ec2", "DescribeSubnets", resource=subnet, SubnetIds=[subnet])
    subnets = resp.get("Subnets", [])
    if subnets and subnets[0].get("MapPublicIpOnLaunch") is False:
        return f"its subnet {subnet} does not assign public IPv4 addresses (MapPublicIpOnLaunch)"
    return None


async def _fallback(ctx: StepContext, service: str) -> Fallback:
    """The NAT a peer_then_standby member's routes go through at once: the
    instance that carries another member's routes (its own, or the standby
    serving it), if it runs and answers the pool's probe now. Never one
    that fails its probes or is not running: then none, and why."""
    cfg = ctx.config
    svc = cfg.services[service]
    th = cfg.thresholds(service)
    peers = cfg.pool_peers(service)
    try:
        facts = await ctx.inventory.facts(list(peers))
    except AwsError as exc:
        return Fallback(None, reason=f"the other members could not be read ({exc})")
    why: list[str] = []
    for peer in peers:
        f = facts.get(peer)
        active = service_status(cfg, peer, f).active if f is not None else None
        if f is None or active is None:
            why.append(f"{peer}'s routes are split or unknown")
            continue
        inst = f.instance(active)
        who = f"{peer}'s {'instance' if active is Role.PRIMARY else 'standby'} {inst.instance_id}"
        if inst.state != "running" or not inst.eni_id or not inst.address:
            why.append(f"{who} is {inst.state}")
            continue
        target = svc.probe.target_for(inst.address)
        result = await ctx.prober(svc.probe.kind, target, svc.probe.parsed_options, th.timeout)
        if not result.ok:
            why.append(f"{who} fails its {svc.probe.kind} probe ({result.reason}: {result.detail})")
            continue
        return Fallback(inst.instance_id, inst.eni_id, who)
    return Fallback(None, reason="; ".join(why) or "no other member")


async def preflight(ctx: StepContext, journal: PlanJournal, run: _Run) -> str | None:
    """What stops the plan, or None; sets ``run.facts``, reports the step."""
    req = run.request
    t = ctx.clock.monotonic()
    held = await _journal_hold(ctx, journal, run)
    if held is not None:
        run.reports.append(StepReport("preflight", False, ctx.clock.monotonic() - t, held))
        log.info("step_end", service=req.service, step="preflight", ok=False, detail=held)
        return held
    problems: list[str] = []
    skipped = ""
    try:
        facts = (await ctx.inventory.facts([req.service]))[req.service]
    except AwsError as exc:
        problems.append(str(exc))
        run.aws_unreachable = isinstance(exc, AwsUnavailable | AwsThrottled)
    else:
        if req.to_role is Role.BACKUP and ctx.config.pool_plan(req.service) == PEER_THEN_STANDBY:
            fb = await _fallback(ctx, req.service)
            facts = replace(facts, fallback=fb)
            if fb.instance_id is None:
                skipped = f"no reroute through another NAT first: {fb.reason}; standby only"
                log.warning("fallback_skipped", service=req.service, reason=fb.reason)
        run.facts = facts
        try:
            missing_zones, no_public = await asyncio.gather(
                _missing_zones(ctx, req.service),
                _no_public_at_start(ctx, req.service, facts, req.to_role),
            )
        except AwsError as exc:
            missing_zones, no_public = frozenset(), None
            problems.append(str(exc))
            run.aws_unreachable = isinstance(exc, AwsUnavailable | AwsThrottled)
        problems += preflight_problems(
            ctx.config,
            req.service,
            facts,
            req.to_role,
            missing_zones=missing_zones,
            no_public_at_start=no_public,
        )
        if run.record is None and not ctx.dry_run:
            try:
                unfinished = await asyncio.to_thread(journal.unfinished)
                # A warm-up (readiness drill, pre-warm) of the standby never
                # holds a failover: the failover takes the standby over.
                others = [
                    p for p in unfinished if p.service == req.service and p.kind == "failover"
                ]
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
    found = "instances and attachments found" + (f"; {skipped}" if skipped else "")
    detail = "; ".join(problems) if problems else found
    if run.facts is not None:
        # Said, not stopping the plan: what the standby's recovery will cost.
        warnings = preflight_warnings(ctx.config, req.service, run.facts)
        for w in warnings:
            log.warning("preflight_warning", service=req.service, warning=w)
        hc = health_check_note(ctx.config, req.service, run.facts)
        detail = "; ".join([detail, *([hc] if hc else []), *(f"warning: {w}" for w in warnings)])
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
