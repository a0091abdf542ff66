"""The timing layer in the sandbox (``--aws-timing``): the proxy between
everything and moto, the target groups' health checks, the fleet starting a
service only once the model says it has started, and the thresholds and
drill timeouts with room for the modelled waits. Each function does nothing
when the stack has no timing model."""

from __future__ import annotations

import asyncio
from typing import Any

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
    from jupiterd.sandbox.seed import _client

    model: TimingModel = stack.timing
    topo = stack.topology
    elb = _client(stack.endpoint, topo.region, "elbv2")
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
