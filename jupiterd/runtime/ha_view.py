"""What replicated deciders read and show of one replica: its own view (as
published), whether it is isolated, and the /status ``ha`` section."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from jupiterd.core.health import Guard, MachineState, TargetState
from jupiterd.core.quorum import ReplicaView, ServiceVerdicts, Tally, TargetVerdict, WitnessVote
from jupiterd.core.types import Status

if TYPE_CHECKING:
    from jupiterd.runtime.ha import HaRunner
    from jupiterd.runtime.supervisor import Supervisor


def verdicts(sup: Supervisor) -> dict[str, ServiceVerdicts]:
    """This replica's verdict on every target, in wall time. A target it
    cannot probe (a monitor error) is published ``unknown``: no vote."""

    def one(t: TargetState) -> TargetVerdict:
        status = Status.UNKNOWN if t.trouble is not None else t.status
        return TargetVerdict(
            status.value, sup.wall(t.since) if t.since else None, sup.wall(t.last_probe_at)
        )

    return {
        name: ServiceVerdicts(s.active.value, one(s.primary), one(s.backup))
        for name, s in sup.state.services.items()
    }


def isolation(state: MachineState) -> str:
    """Why this replica's view should count for nothing ("" when it counts):
    probes fail on this host, its isolation guard holds, or every target it
    probes (at least two) is down."""
    if state.degraded is not None:
        return f"monitor degraded ({state.degraded.cause}: {state.degraded.detail})"
    held = sorted(
        s.name
        for s in state.services.values()
        if s.hold is not None and s.hold.guard is Guard.ISOLATION
    )
    if held:
        return f"its isolation guard holds ({', '.join(held)})"
    probed = [
        t
        for s in state.services.values()
        for t in (s.primary, s.backup)
        if t.status is not Status.STOPPED
    ]
    if len(probed) >= 2 and all(t.status is Status.DOWN for t in probed):
        return f"it sees every target down ({len(probed)})"
    return ""


def witness_json(w: WitnessVote | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {"kind": w.kind, "down": w.down, "detail": w.detail, "veto": w.veto}


def tally_json(t: Tally | None) -> dict[str, Any] | None:
    """One service's votes (/status ``services.NAME.votes``)."""
    if t is None:
        return None
    word = {True: "down", False: "up", None: "abstain"}
    return {
        "role": t.role.value,
        "sentence": t.sentence(),
        "needed": t.needed,
        "down_votes": t.down_votes,
        "reached": t.reached,
        "vetoed": t.vetoed,
        "votes": [
            {"replica": v.replica, "vote": word[v.down], "detail": v.detail} for v in t.votes
        ],
        "witness": witness_json(t.witness),
    }


def status_json(ha: HaRunner) -> dict[str, Any]:
    """The /status ``ha`` section."""
    c = ha.cluster
    tallies: Mapping[str, Tally] = c.tallies if c is not None else MappingProxyType({})
    return {
        "replica": ha.cfg.replica_id,
        "leader": ha.leader_id,
        "lease": {
            "state": ha.lease_state,
            "token": ha.lease.token,
            "expires_at": ha.lease_expires_at,
            "seconds": ha.lease.duration,
            "margin": ha.lease.margin,
        },
        "table": ha.cfg.table,
        "reachable": ha.reachable,
        "error": ha.error,
        "quorum": ha.cfg.needed,
        "replicas": {
            r: {
                "last_report_seconds": None if age is None else round(age, 3),
                "fresh": v.fresh,
                "isolated": v.isolated,
                "why": v.why or None,
                "seq": v.seq,
            }
            for r, v in sorted(ha.seen.items())
            for age in [ha.age_of(r)]
        },
        "isolated": ha.isolated or None,
        "services": {name: tally_json(t) for name, t in tallies.items()},
    }


def moved(sup: Supervisor, me: str, views: Mapping[str, ReplicaView]) -> bool:
    """Whether a fresh peer believes another instance active than this
    replica does (the leader after its failover): AWS changed, and this
    replica should read it now rather than at the next periodic refresh, so
    that it votes on the instance that serves."""
    mine = sup.state.services
    return any(
        (s := mine.get(name)) is not None and s.in_flight is None and sv.active != s.active
        for v in views.values()
        if v.fresh and v.replica != me
        for name, sv in v.services.items()
    )
