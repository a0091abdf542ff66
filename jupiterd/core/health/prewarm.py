"""Pre-warm on suspicion (``prewarm: true``): the standby is started as
soon as the active first fails (SUSPECT), so its boot overlaps the
confirmation; the failover then finds it warm. If the active recovers,
the standby is stopped again ``hold`` seconds later, unless the active
fails again meanwhile.

``decide(state, name, at, policy)`` runs after ``evaluate`` for every
event of a service and on every ``Tick`` (the hold's expiry). No pre-warm
while the standby is not stopped (already running, or known dead), serves
another pool member, while paused, in maintenance, in monitor-only mode,
on a replica that is not the leader (``ha:``), while a damaged journal
holds the service, or past ``max_per_hour`` pre-warms in the last hour
(said once per failure, ``PrewarmCapped``).

A warm standby (``ServiceState.warm``: a pre-warm, or a readiness drill the
daemon runs) is not a dead one: a failover due meanwhile takes it over
(``evaluate`` does not hold it as unhealthy or both-down while it boots;
the plan waits for its probes). Once a failover starts, ``warm`` is
cleared: the plan owns the standby.
"""

from __future__ import annotations

from dataclasses import replace

from jupiterd.core.health.events import Action, Note, Prewarm, PrewarmCapped, PrewarmUndo
from jupiterd.core.health.service import HOUR, _standby_busy
from jupiterd.core.health.state import MachineState, Policy, ServiceState, WarmState
from jupiterd.core.health.target import _fmt
from jupiterd.core.types import Status

PREWARM = "prewarm"
DRILL = "drill"
_FAILING = (Status.SUSPECT, Status.DOWN)


def decide(
    state: MachineState, name: str, at: float, policy: Policy
) -> tuple[MachineState, list[Action]]:
    s = state.services.get(name)
    if s is None:
        return state, []
    w = s.warm
    if w is not None and s.in_flight is not None:
        # The failover takes the warm standby over: the plan owns it now.
        s = replace(s, warm=None)
        note = f"the failover takes over the {'pre-warmed' if w.kind == PREWARM else 'drilled'} "
        return state.with_service(s), [Note(name, f"{note}{w.role}", at)]
    pp = policy.prewarm.get(name)
    active = s.target(s.active)
    actions: list[Action] = []
    prewarms = tuple(a for a in s.prewarms if a > at - HOUR)
    if prewarms != s.prewarms:
        s = replace(s, prewarms=prewarms)
    if s.prewarm_capped and active.status not in _FAILING:
        s = replace(s, prewarm_capped=False)
    if w is None:
        if pp is not None and active.status in _FAILING and s.in_flight is None:
            s, actions = _start(state, s, at, policy, pp.max_per_hour)
    elif w.kind == PREWARM:
        hold = pp.hold if pp is not None else policy.warm_hold.get(name, 0.0)
        if active.status is Status.UP and w.undo_at is None:
            s = replace(s, warm=replace(w, undo_at=at + hold))
            why = (
                f"the {s.active} is up again: the pre-warmed {w.role} is stopped again "
                f"in {_fmt(hold)} unless it fails again"
            )
            actions.append(Note(name, why, at))
        elif active.status in _FAILING and w.undo_at is not None:
            s = replace(s, warm=replace(w, undo_at=None))
            why = f"the {s.active} fails again: keeping the pre-warmed {w.role}"
            actions.append(Note(name, why, at))
        elif w.undo_at is not None and at >= w.undo_at:
            s = replace(s, warm=None)
            why = (
                f"the {s.active} has been up for {_fmt(hold)} (prewarm_hold): "
                f"stopping the pre-warmed {w.role} again"
            )
            actions.append(PrewarmUndo(name, w.role, why, at))
    return state.with_service(s), actions


def _start(
    state: MachineState, s: ServiceState, at: float, policy: Policy, cap: int
) -> tuple[ServiceState, list[Action]]:
    role = s.active.other
    standby = s.target(role)
    if (
        standby.status is not Status.STOPPED
        or standby.known_down is not None
        or state.paused
        or s.maintenance
        or policy.monitor_only
        or (policy.ha and (state.cluster is None or not state.cluster.leader))
        or s.journal_hold is not None
        or _standby_busy(state, s.name, s.active, policy) is not None
    ):
        return s, []
    if len(s.prewarms) >= cap:
        if s.prewarm_capped:
            return s, []
        why = (
            f"the {s.active} fails, but {len(s.prewarms)} pre-warm(s) started in the last hour "
            f"(prewarm_max_per_hour {cap}): the standby is not started early"
        )
        return replace(s, prewarm_capped=True), [PrewarmCapped(s.name, why, at)]
    active = s.target(s.active)
    why = (
        f"the {s.active} fails ({active.why}): starting the stopped {role} now, "
        "so that its boot overlaps the confirmation"
    )
    s = replace(s, warm=WarmState(PREWARM, role, at), prewarms=(*s.prewarms, at))
    return s, [Prewarm(s.name, role, why, at)]
