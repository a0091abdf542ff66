"""The dispatcher: ``step(state, event, policy) -> (state', actions)`` applies
one event, then decides again for the services it concerns."""

from __future__ import annotations

from dataclasses import replace

from jupiterd.core.health.events import (
    Action,
    ActiveObserved,
    Alert,
    AwsReachability,
    ClusterChanged,
    Event,
    FailoverFinished,
    InstanceRunning,
    JournalHold,
    MaintenanceObserved,
    Note,
    Observation,
    PauseChanged,
    StandbyWarming,
    Tick,
    Transition,
)
from jupiterd.core.health.prewarm import decide as _prewarm
from jupiterd.core.health.service import _clear_hold, retry_delay
from jupiterd.core.health.service import evaluate as _evaluate
from jupiterd.core.health.state import MachineState, Policy, TargetState, WarmState
from jupiterd.core.health.target import (
    _cleaner,
    _fmt,
    _troubled,
    host_clean_needed,
    monitor_error,
    observe,
)
from jupiterd.core.types import Status

# --------------------------------------------------------------------------- step


def evaluate(
    state: MachineState, name: str, at: float, policy: Policy
) -> tuple[MachineState, list[Action]]:
    """``service.evaluate``, then the pre-warm decision (``prewarm``)."""
    state, actions = _evaluate(state, name, at, policy)
    state, more = _prewarm(state, name, at, policy)
    return state, actions + more


def step(state: MachineState, event: Event, policy: Policy) -> tuple[MachineState, list[Action]]:
    """Apply one event. Pure: same inputs, same outputs."""
    actions: list[Action] = []
    if isinstance(event, Tick):
        for name in state.services:
            state, acts = evaluate(state, name, event.at, policy)
            actions += acts
        return state, actions
    if isinstance(event, AwsReachability):
        return _aws_reachability(state, event, policy)
    if isinstance(event, ClusterChanged):
        return _cluster_changed(state, event, policy)
    if isinstance(event, PauseChanged):
        reason = f"paused by {event.by}" if event.paused else ""
        if event.paused == state.paused:
            return state, []
        state = replace(state, paused=event.paused, pause_reason=reason)
        word = (
            f"jupiterd paused by {event.by}: no automatic action"
            if event.paused
            else f"jupiterd resumed by {event.by}"
        )
        actions.append(Note("*", word, event.at))
        for name in state.services:
            state, acts = evaluate(state, name, event.at, policy)
            actions += acts
        return state, actions

    s = state.services.get(event.service)
    if s is None:
        return state, []  # a service removed by a reload: late events are dropped

    degraded_before = state.degraded is not None
    if isinstance(event, Observation):
        old = s.target(event.role)
        th = policy.thresholds[s.name]
        if event.cause is not None:
            new = monitor_error(old, event.cause, event.detail, event.at)
            if event.host_wide:
                d = _troubled(state.degraded, event.cause, event.detail, event.at)
                state = replace(state, degraded=d)
        else:
            new = observe(old, event.ok, event.at, th, event.reason, event.detail)
            if new.trouble is not None:
                new = replace(new, trouble=_cleaner(new.trouble, th.rise))
            if state.degraded is not None:
                d2 = _cleaner(state.degraded, host_clean_needed(state))
                state = replace(state, degraded=d2)
        s = s.with_target(event.role, new)
        if new.status is not old.status:
            actions.append(
                Transition(s.name, event.role, old.status, new.status, new.why, event.at)
            )
    elif isinstance(event, InstanceRunning):
        old = s.target(event.role)
        if not event.running and old.status is not Status.STOPPED:
            new = TargetState(
                status=Status.STOPPED, since=event.at, why="the instance is not running"
            )
        elif event.running and old.status is Status.STOPPED:
            new = TargetState(
                status=Status.UNKNOWN, since=event.at, why="the instance is running: probing it"
            )
        else:
            new = old
        if new is not old:
            s = s.with_target(event.role, new)
            actions.append(
                Transition(s.name, event.role, old.status, new.status, new.why, event.at)
            )
    elif isinstance(event, ActiveObserved):
        if event.role is not s.active and s.in_flight is None:
            reason = (
                f"AWS shows the traffic on the {event.role} instance (changed outside this daemon)"
            )
            s = replace(s, active=event.role, decision=reason)
            actions.append(Note(s.name, reason, event.at))
    elif isinstance(event, MaintenanceObserved):
        if event.on != s.maintenance:
            s = replace(s, maintenance=event.on)
            word = "entered maintenance (instance tag set)" if event.on else "left maintenance"
            actions.append(Note(s.name, word, event.at))
    elif isinstance(event, StandbyWarming):
        if event.on and s.warm is None:
            s = replace(s, warm=WarmState(event.kind, event.role, event.at))
        elif not event.on and s.warm is not None and s.warm.kind == event.kind:
            s = replace(s, warm=None)
    elif isinstance(event, JournalHold):
        if event.reason != s.journal_hold:
            s = replace(s, journal_hold=event.reason)
            if event.reason is None:
                s, acts = _clear_hold(s, "the damaged journal was acknowledged", event.at)
                actions += acts
    elif isinstance(event, FailoverFinished):
        if not event.dry_run and not event.changed:
            # Nothing changed on AWS: the plan counts toward neither the
            # cooldown nor the hourly cap (its attempt is taken back).
            attempts = s.attempts[:-1] if s.in_flight is not None else s.attempts
            s = replace(s, attempts=attempts)
        if event.dry_run:
            reason = f"dry run: would have failed over to the {event.to_role} ({event.detail})"
            s = replace(s, in_flight=None, last_failover_at=event.at, decision=reason)
            actions.append(Note(s.name, reason, event.at))
        elif event.ok:
            old_role = event.to_role.other
            s = replace(
                s,
                active=event.to_role,
                in_flight=None,
                last_failover_at=event.at if event.changed else s.last_failover_at,
                alert=None,
                retry_at=None,
                retries=0,
                decision=f"traffic moved to the {event.to_role}: {event.detail}".rstrip(": "),
            )
            if event.stopped_old:
                prev = s.target(old_role)
                known_down = prev.why if prev.status.failing else None
                stopped = TargetState(
                    status=Status.STOPPED,
                    since=event.at,
                    why="stopped by the failover (fencing)",
                    known_down=known_down,
                )
                s = s.with_target(old_role, stopped)
                actions.append(
                    Transition(s.name, old_role, prev.status, Status.STOPPED, stopped.why, event.at)
                )
            actions.append(Note(s.name, s.decision, event.at))
        elif not event.changed:
            reason = (
                f"failover to the {event.to_role} aborted before changing anything: {event.detail}"
            )
            if event.aws_unreachable:
                # Held by the AWS guard until AWS answers (the daemon retries).
                s = replace(s, in_flight=None, decision=reason)
                state = _aws_down(state, event.detail, event.at)
                actions.append(Note(s.name, reason, event.at))
            else:
                retries = s.retries + 1
                delay = retry_delay(retries, policy.thresholds[s.name])
                s = replace(
                    s,
                    in_flight=None,
                    retries=retries,
                    retry_at=event.at + delay,
                    decision=f"{reason}; next try in {_fmt(delay)}",
                )
                if s.alert != reason:
                    s = replace(s, alert=reason)
                    actions.append(Alert(s.name, reason, event.at))
        else:
            reason = f"failover to the {event.to_role} failed: {event.detail}"
            s = replace(
                s,
                in_flight=None,
                last_failover_at=event.at,
                alert=reason,
                decision=reason,
                retry_at=None,
                retries=0,
            )
            actions.append(Alert(s.name, reason, event.at))
        s, acts = _clear_hold(s, "the failover finished", event.at)
        actions += acts

    state = state.with_service(s)
    state, acts = evaluate(state, s.name, event.at, policy)
    actions += acts
    if degraded_before != (state.degraded is not None):
        if state.degraded is not None:
            d = state.degraded
            word = (
                f"probes are failing on this host ({d.cause}: {d.detail}): "
                "automatic failover held for every service"
            )
        else:
            word = "probes complete again: automatic failover no longer held by this host"
        actions.append(Note("*", word, event.at))
        for other in state.services:
            if other != s.name:
                state, acts = evaluate(state, other, event.at, policy)
                actions += acts
    # Services waiting for a fresh look at the others decide as soon as it comes.
    if state.awaiting and isinstance(event, Observation):
        for other in sorted(state.awaiting - {s.name}):
            state, acts = evaluate(state, other, event.at, policy)
            actions += acts
    return state, actions


def _aws_down(state: MachineState, detail: str, at: float) -> MachineState:
    since = state.aws_error_since if state.aws_error is not None else at
    return replace(state, aws_error=detail or "no answer", aws_error_since=since)


def _aws_reachability(
    state: MachineState, event: AwsReachability, policy: Policy
) -> tuple[MachineState, list[Action]]:
    """AWS stopped or started answering jupiterd's reads: every service is
    decided again at once, so a failover held for it starts when AWS answers."""
    actions: list[Action] = []
    if event.ok:
        if state.aws_error is None:
            return state, []
        down = event.at - (state.aws_error_since or event.at)
        state = replace(state, aws_error=None, aws_error_since=None)
        actions.append(Note("*", f"AWS answers again (after {_fmt(down)})", event.at))
    else:
        was = state.aws_error
        state = _aws_down(state, event.detail, event.at)
        if was is not None:
            if was == state.aws_error:
                return state, []
        else:
            actions.append(Note("*", f"AWS does not answer: {state.aws_error}; retrying", event.at))
    for name in state.services:
        state, acts = evaluate(state, name, event.at, policy)
        actions += acts
    return state, actions


def _cluster_changed(
    state: MachineState, event: ClusterChanged, policy: Policy
) -> tuple[MachineState, list[Action]]:
    """Replicated deciders: the lease or the votes changed. Every service
    whose active instance is down is decided again (a quorum reached, a
    lease gained or lost); the others do not depend on the cluster."""
    actions: list[Action] = []
    state = replace(state, cluster=event.cluster)
    for name, s in state.services.items():
        if s.target(s.active).status is Status.DOWN:
            state, acts = evaluate(state, name, event.at, policy)
            actions += acts
    return state, actions
