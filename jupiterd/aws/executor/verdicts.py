"""The sentences a forward plan ends with, once its steps have run."""

from __future__ import annotations

from jupiterd.aws.executor.run import _Run, _Verdict
from jupiterd.core.execution import StepReport
from jupiterd.core.plan import TRAFFIC_KINDS, Stage


def with_notes(detail: str, notes: list[str] | tuple[str, ...]) -> str:
    """``detail`` followed by the plan's notes, one sentence each (why an
    instance was left running)."""
    return "".join([detail, *(f". {n[:1].upper()}{n[1:]}" for n in dict.fromkeys(notes))])


def traffic_step_failed(run: _Run, stage: Stage, reports: list[StepReport]) -> _Verdict:
    """A step failed once the standby was healthy: nothing is undone; the
    verdict says where the traffic was left."""
    assert run.facts is not None
    req = run.request
    standby, old = run.facts.instance(req.to_role), run.facts.instance(req.from_role)
    first = next(r for r in reports if not r.ok)
    if stage is Stage.ATTACH:
        moved = [r.name for r in reports if r.ok]
        where = f"; moved: {', '.join(moved)}" if moved else ""
        return _Verdict(
            "failed",
            f"{first.name}: {first.detail}{where}. The {req.from_role} "
            f"({old.instance_id}) was neither detached nor stopped: "
            f"check `jupiterd status {req.service}` for the split",
        )
    if stage is Stage.DETACH:
        return _Verdict(
            "failed",
            f"the traffic is on the {req.to_role} ({standby.instance_id}), but "
            f"{first.name}: {first.detail}; the {req.from_role} was left running",
        )
    return _Verdict(
        "failed",
        f"the traffic is on the {req.to_role} ({standby.instance_id}), but "
        f"{first.name}: {first.detail}",
    )


def forward_done(run: _Run, dry_run: bool) -> _Verdict:
    """Every forward step passed."""
    assert run.facts is not None and run.plan is not None
    req, plan = run.request, run.plan
    standby, old = run.facts.instance(req.to_role), run.facts.instance(req.from_role)
    if dry_run:
        return _Verdict(
            "dry_run",
            with_notes(
                f"dry run: {req.direction} of {req.service} to the {req.to_role} "
                f"({standby.instance_id}) would run {len(plan.steps)} steps; every check passed",
                run.notes,
            ),
        )
    moved = list(
        dict.fromkeys(s.name.split(":", 1)[-1] for s in plan.steps if s.kind in TRAFFIC_KINDS)
    )
    stop = (
        f"; the {req.from_role} ({old.instance_id}) was stopped"
        if run.stopped_old
        else f"; the {req.from_role} ({old.instance_id}) was left running"
    )
    what = f": {', '.join(moved)}" if moved else ""
    return _Verdict(
        "success",
        with_notes(
            f"{req.service} moved to the {req.to_role} ({standby.instance_id}){what}{stop}",
            run.notes,
        ),
    )
