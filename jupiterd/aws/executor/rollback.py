"""Undoing a plan that cannot finish: the rollback plan and its run."""

from __future__ import annotations

import structlog

from jupiterd.aws.executor.run import _Run, _Verdict
from jupiterd.aws.executor.stepper import Stepper
from jupiterd.aws.executor.verdicts import with_notes
from jupiterd.config import Config
from jupiterd.core.plan import STOPPED_STATES, TRAFFIC_KINDS, Plan, Stage, StepKind, build_rollback

log = structlog.get_logger("jupiterd.executor")


def _traffic_moved(run: _Run) -> bool:
    """A traffic step was begun, by this run (a NAT plan's reroute comes
    before the standby starts) or before a restart (the journal's record)."""
    rec = run.record
    if rec is None or run.plan is None:
        return False
    begun = set(run.began) | {n for n, st in rec.steps.items() if st.begun}
    return any(s.kind in TRAFFIC_KINDS and s.name in begun for s in run.plan.steps)


def _registered_early(run: _Run) -> bool:
    """The standby was put in a target group before its probes passed."""
    rec = run.record
    if rec is None or run.plan is None:
        return False
    begun = set(run.began) | {n for n, st in rec.steps.items() if st.begun}
    return any(s.kind is StepKind.REGISTER_EARLY and s.name in begun for s in run.plan.steps)


def _started_standby(run: _Run) -> bool:
    rec = run.record
    return rec is not None and (rec.standby_state or "") in STOPPED_STATES


def rollback_plan(config: Config, run: _Run) -> tuple[Plan, bool]:
    """The rollback plan, and whether any traffic had moved."""
    assert run.plan is not None and run.facts is not None
    traffic_moved = _traffic_moved(run)
    rb = build_rollback(
        config,
        run.plan,
        run.facts,
        started_standby=_started_standby(run),
        traffic_moved=traffic_moved,
        registered_early=_registered_early(run),
    )
    return rb, traffic_moved


async def rollback(
    stepper: Stepper, run: _Run, reason: str, prepared: tuple[Plan, bool] | None = None
) -> _Verdict:
    """``prepared``: what ``rollback_plan`` returned, if already built."""
    req = run.request
    rb, traffic_moved = prepared if prepared is not None else rollback_plan(stepper.ctx.config, run)
    log.warning("rollback_begin", service=req.service, reason=reason, notes=list(rb.notes))
    # The forward plan's notes are about a stop it no longer reaches.
    run.notes = list(rb.notes)
    for stage, steps in rb.stages():
        reports = await stepper.stage(run, steps)
        failed = [r for r in reports if not r.ok]
        if not failed:
            continue
        first = failed[0]
        if stage is Stage.HEALTHY:
            return _Verdict(
                "failed",
                f"{reason}; cannot roll back: the {req.from_role} fails its probes too "
                f"({first.detail}); the traffic was left as it is",
            )
        return _Verdict("failed", f"{reason}; the rollback failed at {first.name}: {first.detail}")
    words = []
    if traffic_moved:
        words.append(f"the traffic was moved back to the {req.from_role}")
    else:
        words.append(f"the traffic stays on the {req.from_role}")
    stops = {
        s.name
        for s in rb.steps
        if s.kind is StepKind.STOP_INSTANCE and s.params.get("instance_id") not in run.kept
    }
    if stops:
        # A standby that never started (no capacity) was not stopped again.
        never = all(" is already stopped" in r.detail for r in run.reports if r.name in stops)
        words.append(f"the {req.to_role} was {'left stopped' if never else 'stopped again'}")
    return _Verdict("aborted", with_notes(f"{reason}; {' and '.join(words)}", run.notes))
