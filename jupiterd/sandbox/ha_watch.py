"""What the drills of replicated deciders look at: every replica's /status,
the lease item in moto, the AWS calls each replica made (its fault proxy's
counts), and the report they write."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jupiterd.core.types import Role

from .drill import Check
from .peers.fault_proxy import mutating
from .replicas import HA, ReplicaSet
from .stack import Stack

READY_TIMEOUT = 90.0
PLAN_TIMEOUT = 120.0
LEASE = float(HA["lease_seconds"])

Statuses = dict[str, dict[str, Any] | None]


@dataclass
class HaReport:
    drill: str
    service: str
    t0: float = field(default_factory=time.monotonic)
    checks: list[Check] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def event(self, text: str) -> None:
        self.timeline.append((round(time.monotonic() - self.t0, 3), text))

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "drill": self.drill,
            "service": self.service,
            "ok": self.ok,
            **({"error": self.error} if self.error else {}),
            "figures": self.figures,
            "mutating_calls": self.calls,
            "timeline": [{"at": t, "event": e} for t, e in self.timeline],
            "checks": [c.to_dict() for c in self.checks],
        }


def render(report: dict[str, Any]) -> str:
    lines = [f"== drill: {report['drill']} ({report['service']})"]
    for ev in report["timeline"]:
        lines.append(f"  +{ev['at']:7.3f}s  {ev['event']}")
    for c in report["checks"]:
        lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}")
    if report.get("error"):
        lines.append(f"  error: {report['error']}")
    if report["figures"]:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in report["figures"].items()))
    lines.append(f"drill {report['drill']}: {'PASSED' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)


# ------------------------------------------------------------------ reading


def service_of(status: dict[str, Any] | None, service: str) -> dict[str, Any]:
    if not status:
        return {}
    got: dict[str, Any] = status.get("services", {}).get(service, {})
    return got


def active_state(status: dict[str, Any] | None, service: str) -> str | None:
    s = service_of(status, service)
    if not s:
        return None
    state: str | None = s["targets"][s["active"]]["state"]
    return state


def hold(status: dict[str, Any] | None, service: str) -> tuple[str, str] | None:
    h = service_of(status, service).get("hold")
    return (h["guard"], h["reason"]) if h else None


def plans(status: dict[str, Any] | None, service: str, since: float) -> list[dict[str, Any]]:
    """Plans of ``service`` this replica finished after wall time ``since``."""
    if not status:
        return []
    return [
        p
        for p in status.get("recent_plans", [])
        if p.get("service") == service and (p.get("finished_at") or 0) >= since
    ]


def leader(rs: ReplicaSet) -> str | None:
    try:
        item = rs.lease()
    except Exception:
        return None
    owner = (item or {}).get("owner")
    return str(owner) if owner else None


def mutations(rs: ReplicaSet) -> dict[str, int]:
    """AWS side effects asked for since the counts were reset (DynamoDB's
    own writes and SNS aside)."""
    return {
        k: n
        for k, n in sorted(rs.counts().items())
        if mutating(k.split(":", 1)[1]) and not k.startswith(("dynamodb:", "sns:"))
    }


async def until(cond: Callable[[], Awaitable[bool]], timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return True
        await asyncio.sleep(step)
    return await cond()


async def live_statuses(rs: ReplicaSet) -> Statuses:
    """Statuses of the replicas that run and are not paused."""
    got = await rs.statuses()
    return {
        rid: s for rid, s in got.items() if rs.replicas[rid].alive and not rs.replicas[rid].paused
    }


async def ready(stack: Stack, timeout: float = READY_TIMEOUT) -> tuple[bool, str]:
    """Every running replica answers and sees every service's active UP,
    nothing in flight, AWS sending traffic where they think; a leader holds
    the lease."""
    rs = stack.replicas
    why = ["not checked yet"]

    async def cond() -> bool:
        sts = await live_statuses(rs)
        for rid, st in sts.items():
            if st is None:
                why[0] = f"{rid} does not answer"
                return False
            for name, s in st["services"].items():
                if active_state(st, name) != "up" or s.get("in_flight"):
                    why[0] = f"{rid}: {name}'s {s['active']} is {active_state(st, name)}"
                    return False
                if stack.routes.get(name) is not Role(s["active"]):
                    why[0] = f"{rid} thinks {name} is on its {s['active']}; AWS disagrees"
                    return False
        if rs.with_ha and leader(rs) is None:
            why[0] = "no replica holds the lease"
            return False
        return True

    ok = await until(cond, timeout, 0.5)
    return ok, "" if ok else why[0]


async def moved(stack: Stack, service: str, to: Role, timeout: float) -> bool:
    async def cond() -> bool:
        return stack.routes.get(service) is to

    return await until(cond, timeout, 0.2)


def newest_event(
    rs: ReplicaSet, rid: str, since: int, pred: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    for ev in rs.replicas[rid].events(since):
        if pred(ev):
            return ev
    return None


def call_checks(report: HaReport, rs: ReplicaSet, *, started: int) -> None:
    """Each side effect once: no mutating call twice with the same request,
    and ``started`` standby starts (StartInstances)."""
    report.calls = mutations(rs)
    twice = rs.repeated()
    report.check(
        "each mutating call once",
        not twice,
        "none repeated: " + (", ".join(f"{k} x{n}" for k, n in report.calls.items()) or "none")
        if not twice
        else "repeated: " + ", ".join(twice),
    )
    n = report.calls.get("ec2:StartInstances", 0)
    report.check(
        "standby started " + ("once" if started else "never"), n == started, f"StartInstances x{n}"
    )


def no_call_check(report: HaReport, rs: ReplicaSet) -> None:
    report.calls = mutations(rs)
    report.check(
        "no replica acted on AWS",
        not report.calls,
        ", ".join(f"{k} x{n}" for k, n in report.calls.items()) or "no mutating call",
    )


async def restore(stack: Stack, service: str) -> str:
    """Move ``service`` back to its primary as an operator would (``jupiterd
    failback``: a plan of its own, outside the lease), so a drill or a bench
    run finds it where it starts. Automatic failover never fails back."""
    from jupiterd.aws.executor import AwsExecutor
    from jupiterd.core.execution import FailoverRequest

    frm = stack.active_role(service)
    if frm is Role.PRIMARY:
        return f"{service} is on its primary"
    stack.heal_service(service)
    executor = AwsExecutor(stack.config, poll_interval=0.2, progress_interval=5.0)
    try:
        outcome = await executor.run(
            FailoverRequest(
                service, frm, Role.PRIMARY, "sandbox: back to the primary before a drill", "cli"
            )
        )
    finally:
        executor.close()
    await moved(stack, service, Role.PRIMARY, 10)
    return f"operator failback of {service}: {outcome.result} ({outcome.detail})"
