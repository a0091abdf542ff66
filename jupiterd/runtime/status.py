"""What ``GET /status`` answers: the daemon, each service, each target, the
recent plans. One function per view, so each shape is written once; times
are Unix seconds (the machine keeps loop-clock times: ``wall`` converts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from jupiterd import __version__
from jupiterd.core.execution import FailoverOutcome, FailoverRequest, direction_of
from jupiterd.core.health import HoldState, MonitorTrouble, ServiceState, TargetState
from jupiterd.core.inventory import ServiceView
from jupiterd.core.types import Role, Status

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor
    from jupiterd.runtime.targets import Target

Wall = Callable[[float | None], float | None]  # a loop-clock time as Unix time


class DrillStatus(Protocol):
    """The scheduled drills' runner (``DrillRunner``), as /status shows it."""

    def status(self) -> dict[str, dict[str, Any]]: ...


def plan_json(req: FailoverRequest, o: FailoverOutcome, finished_at: float) -> dict[str, Any]:
    """A finished plan (/status ``recent_plans``)."""
    return {
        "service": req.service,
        "direction": req.direction,
        "from": req.from_role.value,
        "to": req.to_role.value,
        "result": o.result,
        "detail": o.detail,
        "seconds": round(o.seconds, 3),
        "finished_at": finished_at,
        "reason": req.reason,
        "steps": [
            {"name": s.name, "ok": s.ok, "seconds": round(s.seconds, 3), "detail": s.detail}
            for s in o.steps
        ],
    }


def trouble_json(t: MonitorTrouble | None, wall: Wall) -> dict[str, Any] | None:
    """Why the monitor cannot judge a target (or anything: degraded)."""
    if t is None:
        return None
    return {
        "cause": t.cause,
        "detail": t.detail,
        "since": wall(t.since),
        "errors": t.errors,
        "clean_probes": t.clean,
    }


def hold_json(h: HoldState | None, wall: Wall) -> dict[str, Any] | None:
    if h is None:
        return None
    return {"guard": h.guard.value, "reason": h.reason, "since": wall(h.since)}


def target_json(t: TargetState, held: Target | None, wall: Wall) -> dict[str, Any]:
    """One probed target: the machine's view and what is probed."""
    return {
        "state": t.status.value,
        "since": wall(t.since) if t.since else None,
        "why": t.why,
        "target": held.loop.spec.target if held and held.loop.spec else None,
        "instance_id": held.instance_id if held else None,
        "last_probe_at": wall(t.last_probe_at),
        "last_ok": t.last_ok,
        "last_reason": t.last_reason or None,
        "last_detail": t.last_detail or None,
        "consecutive_failures": t.fail_streak,
        "consecutive_successes": t.ok_streak,
        "monitor_error": trouble_json(t.trouble, wall),
    }


def service_json(
    sup: Supervisor, s: ServiceState, view: ServiceView | None, wall: Wall
) -> dict[str, Any]:
    """One monitored service: its decision state and its two targets."""
    name = s.name
    svc = sup.config.services[name]
    out = {
        "kind": svc.probe.kind,
        "active": s.active.value,
        "healthy": s.target(s.active).status is Status.UP,
        "decision": s.decision,
        "hold": hold_json(s.hold, wall),
        "alert": s.alert,
        "in_flight": None
        if s.in_flight is None
        else {"to": s.in_flight.value, "direction": direction_of(s.in_flight)},
        "maintenance": s.maintenance,
        "auto_failover": svc.auto_failover,
        "last_failover_at": wall(s.last_failover_at),
        "failover_due": None
        if s.due_since is None
        else {"to": s.active.other.value, "since": wall(s.due_since)},
        "failovers_last_hour": len(s.attempts),
        "aws_notes": list(view.notes) if view is not None else [],
        "targets": {
            role.value: target_json(s.target(role), sup.targets.get((name, role)), wall)
            for role in Role
        },
    }
    if sup.ha is not None:  # replicated deciders: the votes behind the decision
        out["votes"] = sup.ha.votes_json(name)
    return out


def status_json(sup: Supervisor) -> dict[str, Any]:
    """The whole /status document."""
    wall, state = sup.wall, sup.state
    services = {
        name: service_json(sup, s, sup.views.get(name), wall) for name, s in state.services.items()
    }
    mode = sup.mode()
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started_at": sup.started_wall,
        "healthy": sup.healthy(),
        "paused": state.paused,
        "pause_reason": state.pause_reason or None,
        "mode": mode,
        "dry_run": mode == "dry_run",
        "aws_unreachable": None
        if state.aws_error is None
        else {"error": state.aws_error, "since": wall(state.aws_error_since)},
        "pause_saved": sup.pause_error is None,
        "pause_error": sup.pause_error,
        "state_files": {"dir": sup.config.state_dir, "damaged": sup.state_files},
        "config": {"path": sup.config_path, "last_reload": sup.last_reload},
        "inventory_error": sup.inventory_error,
        "monitor_degraded": trouble_json(state.degraded, wall),
        "services": services,
        "recent_plans": list(sup.outcomes),
        "drills": sup.drills.status() if sup.drills is not None else {},
        **({"ha": sup.ha.status()} if sup.ha is not None else {}),
        "standbys": sup.standbys.status(),
    }
