"""A live failover drill on the sandbox: break, detect, fail over, verify.

The drill kills the service's primary process (the instance keeps running,
as with a crashed or hung application), lets jupiterd detect it and carry
out the failover on moto, then checks the result where it matters: in AWS
(the backup runs and every attachment points at it, the primary is stopped,
SNS got the summary) and through the service's own probe at its public
attachment (the front door). With ``failback``, the primary is healed and
traffic is moved back, then checked the same way.

The drill ``nat-both`` breaks both NAT instances of the pool one after the
other: the second fails over while the shared backup already serves the
first (its route tables go through the backup at once), then, with
``failback``, both fail back in turn (the backup keeps running until the
last member leaves it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import probes
from jupiterd.core.execution import FailoverOutcome, FailoverRequest
from jupiterd.core.health import Hold, StartFailover, Transition
from jupiterd.core.types import Role, Status
from jupiterd.runtime.plans import PlanEvent
from jupiterd.runtime.targets import ProbeEvent

from . import timed
from .breakdown import breakdown
from .breakdown import render as render_breakdown
from .stack import Stack

BOTH_NAT = "nat-both"
READY_TIMEOUT = 90.0
PLAN_TIMEOUT = 180.0
RESTORE_TIMEOUT = 30.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Phase:
    """One direction of the drill (the failover, or the failback)."""

    direction: str
    from_role: Role
    to_role: Role
    service: str = ""
    timeline: list[tuple[float, str]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    outcome: FailoverOutcome | None = None
    checks: list[Check] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() at the break
    pace: dict[str, Any] | None = None  # the breakdown at AWS's pace (--aws-timing)

    def event(self, t: float, text: str) -> None:
        self.timeline.append((round(t, 3), text))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        o = self.outcome
        return {
            "service": self.service,
            "direction": self.direction,
            "from": self.from_role.value,
            "to": self.to_role.value,
            "ok": self.ok,
            "detect_seconds": self.marks.get("decision"),
            "down_seconds": self.marks.get("down"),
            "failover_seconds": round(o.seconds, 3) if o is not None else None,
            "restored_seconds": self.marks.get("restored"),
            "breakdown": breakdown(self.marks),
            "breakdown_at_aws_pace": self.pace,
            "result": o.result if o is not None else None,
            "steps": [
                {"name": s.name, "ok": s.ok, "seconds": round(s.seconds, 3), "detail": s.detail}
                for s in (o.steps if o is not None else ())
            ],
            "timeline": [{"at": t, "event": e} for t, e in self.timeline],
            "checks": [c.to_dict() for c in self.checks],
        }


async def _wait(cond: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(step)
    return bool(cond())


def _service_ready(stack: Stack, service: str) -> bool:
    sup = stack.supervisor
    s = sup.state.services[service]
    return (
        s.target(s.active).status is Status.UP
        and s.in_flight is None
        and stack.routes.get(service) is s.active
    )


async def wait_ready(stack: Stack, services: list[str], timeout: float = READY_TIMEOUT) -> bool:
    return await _wait(lambda: all(_service_ready(stack, n) for n in services), timeout, 0.2)


async def public_probe(stack: Stack, service: str, timeout: float = 2.0) -> probes.ProbeResult:
    svc = stack.config.services[service]
    kind = probes.get_kind(svc.probe.kind)
    return await kind.probe(stack.public_target(service), svc.probe.parsed_options, timeout)


async def _watch_restore(stack: Stack, service: str, phase: Phase, t0: float) -> None:
    """Probe the public attachment until it answers again: traffic restored."""
    nat = service in stack.nat_services
    while True:
        if nat:  # where the route tables go now, not half a second ago
            await stack.refresh_routes()
        r = await public_probe(stack, service, 0.5 if nat else 2.0)
        t = time.monotonic() - t0
        # A NAT's outbound traffic is back once its routes go through one
        # that answers: first the other member, before the standby runs.
        moved = stack.routes.get(service) is phase.to_role or nat
        if r.ok and moved and "decision" in phase.marks:
            phase.marks["restored"] = round(t, 3)
            where = (
                f"its route tables go through {stack.public_target(service)}, which answers"
                if nat
                else f"{service} answers at its public attachment {stack.public_target(service)}"
            )
            phase.event(t, f"traffic restored: {where}")
            return
        await asyncio.sleep(0.2)


async def verify(stack: Stack, service: str, phase: Phase) -> None:
    """Check the end state in AWS and through the service's own probe."""
    from jupiterd.core.plan import attachment_states
    from jupiterd.sandbox.seed import read_notifications

    to, old = phase.to_role, phase.from_role
    add = phase.checks.append
    o = phase.outcome
    add(
        Check(
            "plan succeeded",
            o is not None and o.ok,
            f"{o.result}: {o.detail}" if o is not None else "no plan finished",
        )
    )
    facts = (await stack.inventory.facts([service]))[service]
    new_inst, old_inst = facts.instance(to), facts.instance(old)
    add(
        Check(
            f"{to} instance running",
            new_inst.state == "running",
            f"{new_inst.instance_id} is {new_inst.state}",
        )
    )
    users = facts.in_use.get(old_inst.instance_id or "", ())
    if stack.config.services[service].stop_old and users:
        add(
            Check(
                f"{old} instance kept running",
                old_inst.state == "running",
                f"{old_inst.instance_id} is {old_inst.state}; used by {', '.join(users)}",
            )
        )
    elif stack.config.services[service].stop_old:
        add(
            Check(
                f"{old} instance stopped",
                old_inst.state in ("stopped", "stopping"),
                f"{old_inst.instance_id} is {old_inst.state}",
            )
        )
    for st in attachment_states(stack.config, service, facts):
        label = f"{st.kind.replace('_', ' ')} {st.name}"
        add(
            Check(
                f"{label} points at the {to}",
                st.points_to == frozenset({to}) and st.healthy,
                st.detail,
            )
        )
    if stack.config.topic_for(service):
        notes = await asyncio.to_thread(read_notifications, stack.topology, wait=1.0)
        ours = [
            n
            for n in notes
            if isinstance(n["message"], dict)
            and n["message"].get("service") == service
            and n["message"].get("direction") == phase.direction
        ]
        detail = ours[-1]["subject"] if ours else f"{len(notes)} message(s), none for this plan"
        add(
            Check(
                "SNS got the summary",
                bool(ours) and ours[-1]["message"].get("result") == "success",
                detail or "",
            )
        )
    await _wait(lambda: stack.routes.get(service) is to, 5.0)
    r = await public_probe(stack, service)
    add(
        Check(
            "answers at its public attachment",
            r.ok and stack.routes.get(service) is to,
            f"{stack.public_target(service)} -> {stack.routes.get(service)}: {r.summary()}",
        )
    )


def _observer(stack: Stack, service: str, phase: Phase, t0: float) -> Any:
    def observe(ev: Any) -> None:
        t = time.monotonic() - t0
        if isinstance(ev, ProbeEvent):
            if (
                ev.service == service
                and ev.role is phase.from_role
                and not ev.result.ok
                and "first_fail" not in phase.marks
            ):
                phase.marks["first_fail"] = round(t, 3)
                phase.event(t, f"first failed probe: {ev.result.reason}: {ev.result.detail}")
        elif isinstance(ev, Transition) and ev.service == service:
            if ev.new is Status.DOWN and "down" not in phase.marks:
                phase.marks["down"] = round(t, 3)
            phase.event(t, f"{ev.role} {ev.old} -> {ev.new}: {ev.reason}")
        elif isinstance(ev, StartFailover) and ev.service == service:
            phase.marks.setdefault("decision", round(t, 3))
            phase.event(t, f"failover decision: {ev.reason}")
        elif isinstance(ev, Hold) and ev.service == service:
            phase.event(t, f"held ({ev.guard}): {ev.reason}")
        elif isinstance(ev, PlanEvent) and ev.request.service == service:
            phase.outcome = ev.outcome
            phase.event(t, f"plan {ev.outcome.result} in {ev.outcome.seconds:.2f}s")

    return observe


def _step_observer(service: str, phase: Phase, t0: float) -> Any:
    def step(name: str, report: Any) -> None:
        if name == service:
            phase.marks.setdefault(f"step:{report.name}", round(time.monotonic() - t0, 3))
            phase.event(
                time.monotonic() - t0,
                f"step {report.name}: {'ok' if report.ok else 'FAILED'} in "
                f"{report.seconds:.2f}s" + (f" ({report.detail})" if report.detail else ""),
            )

    return step


@contextlib.contextmanager
def _observing(stack: Stack, service: str, phase: Phase, t0: float) -> Iterator[None]:
    """The phase's timeline follows the daemon's actions and the plan's steps."""
    phase.started = t0
    observe = _observer(stack, service, phase, t0)
    steps = _step_observer(service, phase, t0)
    stack.supervisor.observers.append(observe)
    stack.step_listeners.append(steps)
    try:
        yield
    finally:
        stack.supervisor.observers.remove(observe)
        stack.step_listeners.remove(steps)


async def failover_phase(stack: Stack, service: str) -> Phase:
    sup = stack.supervisor
    active = sup.state.services[service].active
    phase = Phase(
        "failover" if active is Role.PRIMARY else "failback", active, active.other, service
    )
    t0 = time.monotonic()
    with _observing(stack, service, phase, t0):
        phase.event(0.0, f"break: {stack.break_service(service)}")
        restore = asyncio.create_task(_watch_restore(stack, service, phase, t0))
        timeout = PLAN_TIMEOUT + stack.extra_plan_seconds
        done = await _wait(lambda: phase.outcome is not None, timeout, 0.05)
        if not done:
            phase.event(time.monotonic() - t0, "no failover finished in time")
        elif phase.outcome is not None and phase.outcome.ok:
            try:
                await asyncio.wait_for(asyncio.shield(restore), RESTORE_TIMEOUT)
            except TimeoutError:
                phase.event(time.monotonic() - t0, "the public attachment never answered")
        restore.cancel()
        await asyncio.gather(restore, return_exceptions=True)
    await verify(stack, service, phase)
    return phase


async def failback_phase(stack: Stack, service: str) -> Phase:
    """Heal the old primary and move the traffic back (what an operator does
    with `jupiterd failback`)."""
    sup = stack.supervisor
    active = sup.state.services[service].active
    phase = Phase(
        "failback" if active is Role.BACKUP else "failover", active, active.other, service
    )
    t0 = time.monotonic()
    phase.event(0.0, stack.heal_service(service))
    with _observing(stack, service, phase, t0):
        try:
            phase.marks["decision"] = 0.0
            phase.event(0.0, f"operator: jupiterd {phase.direction} {service}")
            outcome = await stack.executor.run(
                FailoverRequest(
                    service,
                    phase.from_role,
                    phase.to_role,
                    "sandbox drill: the primary is healed, moving traffic back",
                    "cli",
                )
            )
            phase.outcome = outcome
            phase.event(time.monotonic() - t0, f"plan {outcome.result} in {outcome.seconds:.2f}s")
            if outcome.ok:
                await asyncio.wait_for(_watch_restore(stack, service, phase, t0), RESTORE_TIMEOUT)
            await sup.refresh_inventory()
        except TimeoutError:
            phase.event(time.monotonic() - t0, "the public attachment never answered")
    await verify(stack, service, phase)
    return phase


def drill_names(stack: Stack) -> list[str]:
    """What ``--drill all`` runs: every service, then both NAT instances."""
    return [*stack.config.services, *([BOTH_NAT] if stack.nat_services else [])]


async def drill(stack: Stack, service: str, *, failback: bool = False) -> dict[str, Any]:
    if service not in drill_names(stack):
        raise ValueError(
            f"no service named '{service}' in the sandbox (have: {', '.join(drill_names(stack))})"
        )
    members = list(stack.nat_services) if service == BOTH_NAT else [service]
    ready = await wait_ready(stack, list(stack.config.services))
    report: dict[str, Any] = {"service": service, "ready": ready}
    if not ready:
        states = {
            n: str(s.target(s.active).status) for n, s in stack.supervisor.state.services.items()
        }
        report.update(ok=False, error=f"the sandbox never became healthy: {states}")
        return report
    phases: list[Phase] = []
    for m in members:
        if phases and not (phases[-1].ok and await wait_ready(stack, [m])):
            break
        phases.append(await failover_phase(stack, m))
        phases[-1].pace = timed.at_aws_pace(stack, phases[-1])
    if failback and len(phases) == len(members) and all(p.ok for p in phases):
        for m in members:
            phases.append(await failback_phase(stack, m))
            phases[-1].pace = timed.at_aws_pace(stack, phases[-1])
    first = phases[0].to_dict()
    report.update(
        ok=all(p.ok for p in phases) and len(phases) == len(members) * (2 if failback else 1),
        detect_seconds=first["detect_seconds"],
        failover_seconds=first["failover_seconds"],
        restored_seconds=first["restored_seconds"],
        breakdown=first["breakdown"],
        breakdown_at_aws_pace=first["breakdown_at_aws_pace"],
        steps=first["steps"],
        checks=first["checks"],
        timeline=first["timeline"],
        phases=[p.to_dict() for p in phases],
    )
    if stack.timing is not None:
        report["aws_timing"] = stack.timing.describe()
    return report


def render(report: dict[str, Any]) -> str:
    """The report as lines a person reads top to bottom."""
    lines = [f"== drill: {report['service']}"]
    if "error" in report:
        return "\n".join([*lines, f"FAILED: {report['error']}"])
    for ph in report["phases"]:
        lines.append(f"-- {ph['service']} {ph['direction']}: {ph['from']} -> {ph['to']}")
        for ev in ph["timeline"]:
            lines.append(f"  +{ev['at']:7.3f}s  {ev['event']}")
        for c in ph["checks"]:
            lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}")
        figures = []
        if ph["detect_seconds"] is not None and ph["direction"] == "failover":
            figures.append(f"detected in {ph['detect_seconds']:.2f}s")
        if ph["failover_seconds"] is not None:
            figures.append(f"plan took {ph['failover_seconds']:.2f}s")
        if ph["restored_seconds"] is not None:
            figures.append(f"traffic restored after {ph['restored_seconds']:.2f}s")
        scale = report.get("aws_timing", {}).get("scale", 1.0)
        lines += render_breakdown(ph["breakdown"], ph.get("breakdown_at_aws_pace"), scale)
        lines.append(
            f"  {ph['direction']} {'PASSED' if ph['ok'] else 'FAILED'}"
            + (f": {', '.join(figures)}" if figures else "")
        )
    lines.append(f"drill {report['service']}: {'PASSED' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)
