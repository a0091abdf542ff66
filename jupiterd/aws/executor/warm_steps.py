"""The parts of a standby's warm-up (``warm.py``): how it ended
(``WarmResult``), the two AWS actions (``start_standby``, ``stop_standby``:
the one place to change how a standby is started or stopped) and the steps
that carry them."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from jupiterd.aws.client import AwsError
from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.instances import stop_instance
from jupiterd.aws.executor.run import _Run
from jupiterd.aws.executor.steps import ec2
from jupiterd.config import Config
from jupiterd.core.execution import FailoverRequest, StepReport
from jupiterd.core.plan import GONE_STATES, STOPPED_STATES, ServiceFacts, Stage, Step, StepKind
from jupiterd.core.plan import service_status as _service_status
from jupiterd.core.types import Role

log = structlog.get_logger("jupiterd.executor")

# Why a failover takes the standby over now (None: it does not). Asked
# before the drill starts (any answer refuses it) and before the stop.
Watch = Callable[[], Awaitable[str | None]]

READINESS = "readiness"
PREWARM = "prewarm"


@dataclass(frozen=True)
class WarmResult:
    """How a readiness drill or a pre-warm (or its resumption) ended.
    ``result``: passed, failed, handed_over, refused; a pre-warm: started,
    stopped; a resumption: stopped or handed_over."""

    service: str
    kind: str
    result: str
    detail: str
    at: float  # Unix time it began
    seconds: float
    instance_id: str | None = None
    boot_seconds: float | None = None  # StartInstances to running
    healthy_seconds: float | None = None  # running to `rise` probes passed
    stopped: bool = False  # the standby was stopped again
    steps: tuple[StepReport, ...] = field(default=())

    @property
    def rto_budget(self) -> float | None:
        """What a failover to this standby spends before traffic moves."""
        if self.boot_seconds is None or self.healthy_seconds is None:
            return None
        return self.boot_seconds + self.healthy_seconds

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = [asdict(s) for s in self.steps]
        out["rto_budget_seconds"] = self.rto_budget
        return out


async def start_standby(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    """Start the stopped standby and wait until it is ``running``."""
    return await ec2.start(ctx, run, step)


async def stop_standby(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    """Stop the standby again the service's way (``standby_stop``), never
    while the other instance is not running (both would be stopped) nor
    while another service's attachment points at it."""
    iid = step.params["instance_id"]
    other = step.params.get("other_id")
    found = await ctx.describe(*[i for i in (iid, other) if i])
    cur = found.get(iid)
    if cur is None:
        raise StepFailed(f"the {step.role} instance {iid} does not exist")
    state = cur["State"]["Name"]
    if state in STOPPED_STATES or state in GONE_STATES:
        return f"{iid} is already {state}", {"stopped": True}
    o = found.get(other or "")
    o_state = o["State"]["Name"] if o else "missing"
    if o_state != "running":
        raise StepFailed(
            f"not stopping the {step.role} {iid}: the {step.role.other} ({other}) is {o_state}, "
            "and jupiterd never leaves both stopped"
        )
    facts = (await ctx.inventory.facts([run.service]))[run.service]
    users = facts.in_use.get(iid, ())
    if users:
        raise StepFailed(f"not stopping {iid}: {', '.join(users)} now use it")
    # With standby_stop: hibernate, hibernated where the instance allows it,
    # else stopped plainly with a note saying what to change.
    hibernate = ctx.config.services[run.service].standby_stop == "hibernate"
    res = await stop_instance(ctx, run, iid, hibernate=hibernate, instance=cur)
    detail = res.sentence(state) + (f"; {res.note}" if res.note else "")
    return detail, {"stopped": True, "hibernated": res.hibernated}


def active_of(config: Config, service: str, facts: ServiceFacts) -> Role:
    """Where the traffic is, per AWS; without attachments, the one running
    instance; else the primary."""
    st = _service_status(config, service, facts)
    if st.active is not None:
        return st.active
    running = [r for r in Role if facts.instance(r).running]
    return running[0] if len(running) == 1 else Role.PRIMARY


def warm_step(run: _Run, role: Role, kind: StepKind = StepKind.START_STANDBY) -> Step:
    """``start_standby``, or ``standby_healthy`` (``kind``), of ``role``."""
    assert run.facts is not None
    iid = run.facts.instance(role).instance_id or ""
    return Step(str(kind), kind, Stage.START, role, iid, {"instance_id": iid})


def stop_step(run: _Run, role: Role) -> Step:
    assert run.facts is not None
    iid = run.facts.instance(role).instance_id or ""
    other = run.facts.instance(role.other).instance_id or ""
    return Step(
        "stop_standby",
        StepKind.STOP_INSTANCE,
        Stage.STOP,
        role,
        iid,
        {"instance_id": iid, "other_id": other},
    )


def probe_active(ex: Any, facts: ServiceFacts, active: Role) -> Watch:
    """The default watch (the command line): one probe of the active."""
    svc = ex.config.services[facts.service]
    th = ex.config.thresholds(facts.service)
    address = facts.instance(active).address

    async def watch() -> str | None:
        if not address:
            return f"the {active} has no address to probe"
        target = svc.probe.target_for(address)
        r = await ex.prober(svc.probe.kind, target, svc.probe.parsed_options, th.timeout)
        return None if r.ok else f"the {active} fails its probe: {r.reason}: {r.detail}"

    return watch


async def run_step(ex: Any, run: _Run, step: Step) -> StepReport:
    """One step of a warm-up, journaled, logged and reported."""
    rec = run.record
    assert rec is not None
    handler = {StepKind.START_STANDBY: start_standby, StepKind.STANDBY_HEALTHY: ec2.healthy}
    t = ex.clock.monotonic()
    await asyncio.to_thread(ex.journal.begin, rec.id, step.name)
    data: dict[str, Any] = {}
    try:
        detail, data = await handler.get(step.kind, stop_standby)(ex._ctx, run, step)
        ok = True
    except (StepFailed, AwsError) as exc:
        ok, detail = False, str(exc)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:
        log.exception("step_crashed", service=run.service, step=step.name)
        ok, detail = False, f"internal error: {type(exc).__name__}: {exc}"
    seconds = ex.clock.monotonic() - t
    await asyncio.to_thread(ex.journal.end, rec.id, step.name, ok, seconds, detail, data)
    log.info("warm_step", service=run.service, step=step.name, ok=ok, detail=detail)
    report = StepReport(step.name, ok, seconds, detail)
    run.reports.append(report)
    return report


async def notify(ex: Any, res: WarmResult) -> None:
    """One SNS summary per drill (pre-warms are counted, not mailed)."""
    topic = ex.config.topic_for(res.service)
    if res.kind != READINESS or not topic:
        return
    body = {**res.to_dict(), "host": socket.gethostname()}
    subject = f"jupiterd: {res.service} standby readiness {res.result} in {res.seconds:.1f}s"
    req = FailoverRequest(res.service, Role.PRIMARY, Role.BACKUP, "", "drill")
    run = _Run(req, ex.clock)
    try:
        await ex._ctx.aws._mutate(
            run,
            "sns",
            "Publish",
            topic,
            TopicArn=topic,
            Subject=subject[:100],
            Message=json.dumps(body, indent=2),
        )
    except AwsError as exc:
        log.error("notify_failed", service=res.service, reason=str(exc))
