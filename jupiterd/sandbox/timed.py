"""The timing layer in the sandbox (``--aws-timing``): the proxy between
everything and moto, the target groups' health checks, the fleet starting a
service only once the model says it has started, and the thresholds and
drill timeouts with room for the modelled waits. Each function does nothing
when the stack has no timing model."""

from __future__ import annotations

import asyncio
from typing import Any

from jupiterd.core.types import Role

from .breakdown import at_aws_pace as _at_pace
from .breakdown import breakdown
from .timing import SANDBOX_HEALTH_CHECK, TimingModel
from .timing_proxy import TimingProxy


def endpoint(stack: Any) -> str:
    """The sandbox's AWS endpoint: moto's, or a timing proxy started in
    front of it."""
    model: TimingModel | None = stack.timing
    if model is None:
        return str(stack.moto.url)
    stack.timing_proxy = TimingProxy(stack.moto.url, model).start()
    return str(stack.timing_proxy.url)


def stop(stack: Any) -> None:
    if stack.timing_proxy is not None:
        stack.timing_proxy.stop()
        stack.timing_proxy = None


async def after_seed(stack: Any) -> None:
    if stack.timing is not None:
        await asyncio.to_thread(arm, stack)
        stack.say(f"  AWS timing: realistic, scale {stack.timing.scale:g} (see --help)")


def arm(stack: Any) -> None:
    """Tune the target groups' health checks, tell the model which service
    each instance runs, let the fleet follow it, and from now on delay what
    AWS delays."""
    from jupiterd.sandbox.seed import moto_client

    model: TimingModel = stack.timing
    topo = stack.topology
    elb = moto_client(stack.endpoint, topo.region, "elbv2")
    interval, threshold = SANDBOX_HEALTH_CHECK
    for arn in topo.target_groups.values():
        elb.modify_target_group(
            TargetGroupArn=arn, HealthCheckIntervalSeconds=interval, HealthyThresholdCount=threshold
        )
    for service, roles in topo.instances.items():
        for iid in roles.values():
            model.services[iid] = service
    pool = topo.extra.get("nat_pool") or {}
    for member in ("nat-a", "nat-b"):
        if member in pool:
            model.services[pool[member]["instance_id"]] = "nat"
    model.follow_apps = True
    stack.app_gate = lambda inst: model.app_may_run(inst.instance_id)
    stack.on_app_ready = lambda inst: model.app_started(inst.instance_id)
    stack.extra_plan_seconds = 2 * model.plan_seconds(SANDBOX_HEALTH_CHECK)
    model.arm()


def thresholds(stack: Any, base: dict[str, Any]) -> dict[str, Any]:
    model: TimingModel | None = stack.timing
    return base if model is None else model.thresholds(base, SANDBOX_HEALTH_CHECK)


def waits(stack: Any, phase: Any) -> dict[str, tuple[float, float]]:
    """How long, in each part of ``phase``'s breakdown, the drill waited
    for the timing model (scaled seconds), and how long that wait would be
    on AWS (real seconds; what passed before the part began, jupiterd's
    own time, is real already): the standby's pending time after the
    decision, its OS boot and application start after running, the target
    groups' checks and Route 53's propagation after it was healthy."""
    model: TimingModel = stack.timing
    k = 1 / model.scale
    t0, marks = phase.started, phase.marks

    def at(key: str) -> float | None:
        return t0 + marks[key] if key in marks else None

    def wait(begun: float, length: float, part_start: float) -> tuple[float, float]:
        """A delay of ``length`` (scaled) begun at ``begun``, seen from
        ``part_start``: its scaled rest, and its real rest. One still
        running then was begun by jupiterd moments before (a pre-warm: its
        detection time, which is real); one over by then is over on AWS too."""
        passed = max(0.0, part_start - begun)
        if passed >= length:
            return 0.0, 0.0
        return length - passed, max(0.0, length * k - passed)

    decision, running, healthy = (
        at("decision"),
        at("step:start_standby"),
        at("step:standby_healthy"),
    )
    iid = stack.instances[(phase.service, Role(phase.to_role))].instance_id
    out: dict[str, tuple[float, float]] = {}
    start = model.last_start.get(iid)
    if start is not None and decision is not None:
        out["boot"] = wait(start.at, start.boot, decision)
        if running is not None:
            out["app_healthy"] = wait(start.running_at, start.app, running)
    if healthy is not None:
        rests = [
            wait(at_, model.scaled(model.route53), healthy)
            for at_ in model.changes.values()
            if at_ >= t0
        ]
        proxy = stack.timing_proxy
        for arn, tid in list(model.registered):
            if tid == iid and proxy is not None:
                hc = proxy.health_check(arn, stack.topology.region)
                when = model.target_healthy_at(arn, iid, *hc)
                if when is not None:
                    length = model.scaled(hc[0] * hc[1])
                    rests.append(wait(when - length, length, healthy))
        if rests:
            out["attach"] = (max(r[0] for r in rests), max(r[1] for r in rests))
    return out


def at_aws_pace(stack: Any, phase: Any) -> dict[str, float | None] | None:
    """``phase``'s breakdown at AWS's pace (None without a timing model)."""
    if stack.timing is None:
        return None
    return _at_pace(breakdown(phase.marks), waits(stack, phase))
