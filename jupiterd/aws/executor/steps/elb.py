"""Target group steps: register the standby early (as soon as it runs,
without waiting), register it and wait until it is healthy; deregister the
old instance and wait for it to drain."""

from __future__ import annotations

from typing import Any

import structlog

from jupiterd.aws.client import AwsError
from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.run import _Run
from jupiterd.core.plan import Step, TargetGroupFacts, target_id, target_registered, target_serving

log = structlog.get_logger("jupiterd.executor")


def _target(tid: str, port: int | None) -> dict[str, Any]:
    """A target group's target, as ELB's calls take it."""
    target: dict[str, Any] = {"Id": tid}
    if port is not None:
        target["Port"] = port
    return target


async def _target_state(
    ctx: StepContext, arn: str, tid: str, port: int | None
) -> tuple[str, str, str]:
    resp = await ctx.aws.call(
        "elbv2",
        "DescribeTargetHealth",
        resource=arn,
        TargetGroupArn=arn,
        Targets=[_target(tid, port)],
    )
    for d in resp.get("TargetHealthDescriptions", []):
        if str(d.get("Target", {}).get("Id")) == tid:
            th = d.get("TargetHealth", {})
            return (
                str(th.get("State")),
                str(th.get("Reason", "")),
                str(th.get("Description", "")),
            )
    return "unused", "Target.NotRegistered", ""


def _tg_target(run: _Run, step: Step) -> tuple[str, str, int | None, TargetGroupFacts]:
    assert run.facts is not None
    arn = step.params["arn"]
    tg = run.facts.target_group(arn)
    if tg is None or not tg.exists:
        raise StepFailed(f"target group {arn} does not exist")
    inst = run.facts.instance(step.role)
    tid = target_id(tg, inst)
    if not tid:
        raise StepFailed(f"the {step.role} instance has no {tg.target_type} id for {arn}")
    return arn, tid, step.params.get("port") or tg.port, tg


def _checks(tg: TargetGroupFacts) -> str:
    secs = tg.health_check_seconds
    if secs is None:
        return ""
    return f" (health checks {tg.health_check_interval}s x {tg.healthy_threshold}: up to {secs}s)"


async def register_early(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    """Register the standby, running since the start step, without waiting
    for it to be healthy: the load balancer checks it while its application
    starts and sends it nothing until those checks pass; the old target
    stays. EC2 refuses to register an instance target that is not running.
    Never fails the plan: a target not registered here is registered by
    the attach step, after the standby's own probes, as without it."""
    arn, tid, port, tg = _tg_target(run, step)
    would = (
        f"would register {tid}:{port} in {tg.name} as soon as it runs, "
        f"while its application starts{_checks(tg)}"
    )
    if ctx.dry_run:  # the standby was not started: say what would be done
        await _register_target(ctx, run, arn, tid, port, would)
    state, reason, _ = await _target_state(ctx, arn, tid, port)
    if target_registered((state, reason)):
        return f"{tid} is already registered ({state}) in {tg.name}", {}
    assert run.facts is not None
    inst = await ctx.instance(run.facts.instance(step.role).instance_id, step.role)
    running = inst["State"]["Name"]
    if tg.target_type == "instance" and running != "running":
        return f"{tid} is {running}: registered after its probes pass instead", {}
    try:
        await _register_target(ctx, run, arn, tid, port)
    except AwsError as exc:
        log.warning("register_early_failed", service=run.service, step=step.name, reason=str(exc))
        return f"not registered early ({exc}): registered after its probes pass instead", {}
    return (
        f"{tid}:{port} registered in {tg.name} while its application starts{_checks(tg)}",
        {"registered": True},
    )


async def _register_target(
    ctx: StepContext, run: _Run, arn: str, tid: str, port: int | None, would: str | None = None
) -> None:
    """RegisterTargets of one target (``would``: what a dry run reports)."""
    await ctx.aws._mutate(
        run,
        "elbv2",
        "RegisterTargets",
        arn,
        would=would,
        TargetGroupArn=arn,
        Targets=[_target(tid, port)],
    )


async def register(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    arn, tid, port, tg = _tg_target(run, step)
    state, reason, _ = await _target_state(ctx, arn, tid, port)
    if target_serving(tg, (state, reason)):
        return f"{tid} is already registered and {state} in {tg.name}", {}
    would = f"would register {tid}:{port} in {tg.name} and wait until healthy"
    if not target_registered((state, reason)):
        await _register_target(ctx, run, arn, tid, port, would)
    th = ctx.thresholds(run)
    last = ["", "", ""]

    async def check() -> tuple[bool, str]:
        st = await _target_state(ctx, arn, tid, port)
        last[:] = st
        if st[0] == "unused" and st[1] == "Target.NotInUse":
            return True, "unused (the target group is not used by a load balancer)"
        return target_serving(tg, (st[0], st[1])), st[0]

    ok, status, secs = await ctx.wait(
        run, step, f"{tid} healthy in {tg.name}", check, th.target_healthy_timeout, would=would
    )
    if not ok:
        why = f" ({last[1]}: {last[2]})" if last[1] else ""
        raise StepFailed(
            f"{tid} registered in {tg.name} was still {status}{why} after "
            f"{th.target_healthy_timeout:g}s (target_healthy_timeout)"
        )
    return f"{tid}:{port} registered and {status} in {tg.name} after {secs:.1f}s", {}


async def deregister(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    arn, tid, port, tg = _tg_target(run, step)
    state, reason, _ = await _target_state(ctx, arn, tid, port)
    if not target_registered((state, reason)) and state != "draining":
        return f"{tid} is not registered in {tg.name}", {}
    would = f"would deregister {tid}:{port} from {tg.name} and wait for draining"
    if state != "draining":
        await ctx.aws._mutate(
            run,
            "elbv2",
            "DeregisterTargets",
            arn,
            would=would,
            TargetGroupArn=arn,
            Targets=[_target(tid, port)],
        )
    th = ctx.thresholds(run)

    async def check() -> tuple[bool, str]:
        st = await _target_state(ctx, arn, tid, port)
        return not target_registered((st[0], st[1])) and st[0] != "draining", st[0]

    ok, status, secs = await ctx.wait(
        run, step, f"{tid} to drain from {tg.name}", check, th.drain_timeout, would=would
    )
    if not ok:
        # Draining ends on its own; the old instance is not stopped while
        # still serving if the caller cares (stop_old: false).
        return (
            f"{tid} deregistered from {tg.name}, still {status} after "
            f"{th.drain_timeout:g}s (drain_timeout): continuing",
            {},
        )
    return f"{tid} deregistered from {tg.name}, drained in {secs:.1f}s", {}
