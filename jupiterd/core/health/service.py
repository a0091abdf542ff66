"""One service's decision: a failover starts, is held by a guard, or is not
due (``evaluate``). The guards are tried most deliberate first."""

from __future__ import annotations

from dataclasses import replace

from jupiterd.config import Thresholds
from jupiterd.core.health.events import (
    Action,
    Alert,
    FailoverDue,
    Hold,
    HoldCleared,
    Note,
    ProbeNow,
    StartFailover,
)
from jupiterd.core.health.state import Guard, HoldState, MachineState, Policy, ServiceState
from jupiterd.core.health.target import _fmt, _monitor_trouble
from jupiterd.core.types import Role, Status

# --------------------------------------------------------------------------- services

HOUR = 3600.0
RETRY_FIRST = 2.0  # seconds before retrying a plan that aborted unchanged; doubles


def retry_delay(retries: int, th: Thresholds) -> float:
    """The wait before the next plan after ``retries`` plans in a row aborted
    without changing anything: 2 s, doubling, at most the cooldown."""
    return float(min(max(th.cooldown, RETRY_FIRST), RETRY_FIRST * 2 ** min(retries - 1, 20)))


def _isolation_failing(state: MachineState, anchor: float, window: float) -> list[str]:
    """Services whose active instance started failing within ``window`` of
    ``anchor`` (when the deciding service's own failure began). Measured
    between failures, not against now: an outage of everything stays "at
    once" however long it lasts."""
    out = []
    for s in state.services.values():
        t = s.target(s.active)
        failing = t.fail_streak > 0 or t.status is Status.DOWN
        if failing and t.failing_since is not None and abs(t.failing_since - anchor) <= window:
            out.append(s.name)
    return out


def _stale_peers(state: MachineState, name: str, since: float) -> tuple[tuple[str, Role], ...]:
    """Other services' active targets not probed since ``since``."""
    stale = []
    for s in state.services.values():
        if s.name == name or s.in_flight is not None:
            continue
        t = s.target(s.active)
        if t.status is Status.STOPPED or t.trouble is not None:
            continue  # a target this host cannot probe now gives no fresh look
        if t.last_probe_at is None or t.last_probe_at < since:
            stale.append((s.name, s.active))
    return tuple(stale)


def _standby_busy(state: MachineState, name: str, active: Role, policy: Policy) -> str | None:
    """The other pool member the shared standby serves (or is being moved
    to serve), if any: a failover of ``name`` to it would take it away."""
    if active is not Role.PRIMARY or name in policy.peer_fallback:
        return None  # a NAT pool's plan shares the standby: nothing to hold
    for peer in policy.pool_peers.get(name, ()):
        p = state.services.get(peer)
        if p is not None and (p.active is Role.BACKUP or p.in_flight is Role.BACKUP):
            return peer
    return None


def _cluster_guard(state: MachineState, s: ServiceState, where: str) -> tuple[Guard, str] | None:
    """Replicated deciders: a failover needs a quorum of fresh views seeing
    the active down (``no_quorum``), then this replica's lease intact
    (``lease_lost``), then this replica the leader (``not_leader``)."""
    c = state.cluster
    if c is None:
        return Guard.NO_QUORUM, f"{where}, but the other replicas' views have not been read yet"
    if not c.reachable:
        return (
            Guard.NO_QUORUM,
            f"{where}, but the replicas' shared table does not answer ({c.why}): "
            "no quorum can be counted, so no replica acts; probing goes on",
        )
    t = c.tallies.get(s.name)
    if t is None or t.role is not s.active:
        return Guard.NO_QUORUM, f"{where}, but the replicas' votes on it are not counted yet"
    if not t.reached:
        return Guard.NO_QUORUM, f"{where}, but {t.sentence()}"
    if c.lease == "lost":
        return (
            Guard.LEASE_LOST,
            f"{where} and {t.sentence()}, but this replica lost its lease ({c.why}): "
            "it does not act until it holds the lease again",
        )
    if not c.leader and c.lease == "leader":  # holds it, not acting yet: ``why`` says why
        return Guard.NOT_LEADER, f"{where} and {t.sentence()}, but {c.why or 'not yet acting'}"
    if not c.leader:
        who = f"the leader, {c.leader_id}," if c.leader_id else "the leader (none yet)"
        return Guard.NOT_LEADER, f"{where} and {t.sentence()}: {who} acts, not this replica"
    return None


def _set_hold(
    s: ServiceState, guard: Guard, reason: str, at: float
) -> tuple[ServiceState, list[Action]]:
    """Hold for ``guard``. The reason's wording (how long, how many left) is
    refreshed in the state, but only a new guard is a new Hold action."""
    if s.hold is not None and s.hold.guard is guard:
        if s.hold.reason == reason:
            return s, []
        return replace(s, hold=replace(s.hold, reason=reason), decision=f"holding: {reason}"), []
    s = replace(s, hold=HoldState(guard, reason, at), decision=f"holding: {reason}")
    return s, [Hold(s.name, guard, reason, at)]


def _clear_hold(s: ServiceState, why: str, at: float) -> tuple[ServiceState, list[Action]]:
    if s.hold is None:
        return s, []
    guard = s.hold.guard
    return replace(s, hold=None), [HoldCleared(s.name, guard, why, at)]


def evaluate(
    state: MachineState, name: str, at: float, policy: Policy
) -> tuple[MachineState, list[Action]]:
    """Decide for one service whether a failover starts, is held, or is not due."""
    s = state.services[name]
    th = policy.thresholds[name]
    actions: list[Action] = []
    attempts = tuple(a for a in s.attempts if a > at - HOUR)
    if attempts != s.attempts:
        s = replace(s, attempts=attempts)
    active = s.target(s.active)
    standby_role = s.active.other
    standby = s.target(standby_role)
    trouble = _monitor_trouble(state, s)

    if s.journal_hold is not None:  # held whether or not a failover is due
        s, acts = _set_hold(s, Guard.JOURNAL_DAMAGED, s.journal_hold, at)
        return state.with_service(s), actions + acts
    if active.status is not Status.DOWN:
        if s.awaiting_isolation_check:
            s = replace(s, awaiting_isolation_check=False)
        if s.due_since is not None or s.retries:
            s = replace(s, due_since=None, retry_at=None, retries=0)
        if trouble is not None:
            s, acts = _set_hold(s, Guard.MONITOR_DEGRADED, trouble, at)
            return state.with_service(s), actions + acts
        why = f"the {s.active} instance is {active.status} again"
        if s.hold is not None and s.hold.guard is Guard.MONITOR_DEGRADED:
            why = "probes complete again without monitor errors"
        s, acts = _clear_hold(s, why, at)
        actions += acts
        if s.alert is not None and active.status is Status.UP:
            actions.append(Note(name, f"alert cleared: the {s.active} instance is up", at))
            s = replace(s, alert=None)
        if active.status is Status.UP and s.in_flight is None and s.decision != "watching":
            s = replace(s, decision="watching")
        return state.with_service(s), actions

    down_for = at - active.since
    where = f"the {s.active} instance has been down for {_fmt(down_for)}"
    if s.in_flight is not None:
        s, acts = _set_hold(
            s, Guard.IN_FLIGHT, f"a failover to the {s.in_flight} is already running", at
        )
        return state.with_service(s), actions + acts
    if trouble is not None:
        s = replace(s, awaiting_isolation_check=False)
        s, acts = _set_hold(s, Guard.MONITOR_DEGRADED, f"{where}, but {trouble}", at)
        return state.with_service(s), actions + acts
    if down_for < th.failover_after:
        s = replace(s, decision=f"{where}; failover after {_fmt(th.failover_after)}")
        return state.with_service(s), actions

    # The guards, most deliberate first.
    guard: tuple[Guard, str] | None = None
    if state.paused:
        guard = (Guard.PAUSED, f"{where}, but jupiterd is paused ({state.pause_reason})")
    elif s.maintenance:
        guard = (Guard.MAINTENANCE, f"{where}, but the service is in maintenance (instance tag)")
    elif not policy.auto_failover.get(name, True):
        guard = (
            Guard.MANUAL,
            f"{where}; automatic failover is off for this service: "
            f"run `jupiterd failover {name}` to act",
        )
    if guard is None and policy.isolation.enabled:
        since = active.failing_since if active.failing_since is not None else active.since
        stale = _stale_peers(state, name, since)
        if stale:
            s = replace(
                s,
                awaiting_isolation_check=True,
                decision=f"{where}; checking the other services first (isolation guard)",
            )
            actions.append(
                ProbeNow(
                    stale,
                    f"{name} is down: a fresh look at the other services "
                    "tells an outage from a monitor network fault",
                    at,
                )
            )
            return state.with_service(s), actions
        failing = _isolation_failing(state, since, policy.isolation.window)
        total = len(state.services)
        if (
            len(failing) >= policy.isolation.min_services
            and len(failing) > policy.isolation.fraction * total
        ):
            guard = (
                Guard.ISOLATION,
                f"{where}, but {len(failing)} of {total} services are failing at once "
                f"({', '.join(sorted(failing))}): the monitor's own network is the likelier fault",
            )
    if guard is None and policy.ha:
        guard = _cluster_guard(state, s, where)
    if guard is None and state.aws_error is not None and not policy.monitor_only:
        guard = (
            Guard.AWS_UNREACHABLE,
            f"{where}, but AWS does not answer jupiterd's reads ({state.aws_error}): "
            "a plan would abort at preflight; it starts as soon as AWS answers",
        )
    if guard is None and s.retry_at is not None and at < s.retry_at:
        guard = (
            Guard.RETRY_BACKOFF,
            f"{where}; the last {s.retries} plan(s) aborted before changing anything "
            f"({s.alert or 'see recent_plans'}); next try in {_fmt(s.retry_at - at)}",
        )
    if guard is None and s.last_failover_at is not None and at - s.last_failover_at < th.cooldown:
        left = th.cooldown - (at - s.last_failover_at)
        guard = (
            Guard.COOLDOWN,
            f"{where}, but the last failover was {_fmt(at - s.last_failover_at)} "
            f"ago (cooldown {_fmt(th.cooldown)}, {_fmt(left)} left)",
        )
    if guard is None and len(attempts) >= th.max_failovers_per_hour:
        guard = (
            Guard.RATE_LIMIT,
            f"{where}, but {len(attempts)} failover(s) started in the last hour "
            f"(max_failovers_per_hour {th.max_failovers_per_hour})",
        )
    busy = _standby_busy(state, name, s.active, policy) if guard is None else None
    if busy is not None:
        reason = (
            f"{where}, but the pool's shared standby already serves {busy}: "
            f"one standby per pool; fail {busy} back (`jupiterd failback {busy}`) to free it"
        )
        guard = (Guard.STANDBY_BUSY, reason)
        alert = (
            f"the {s.active} instance is down and the pool's shared standby already "
            f"serves {busy}: no failover possible"
        )
        if s.alert != alert:  # once per outage: the reason's wording changes
            s = replace(s, alert=alert)
            actions.append(Alert(name, alert, at))
    # A standby being warmed up (pre-warm, drill) is booting, not dead: the
    # plan takes it over and waits for its probes.
    warm = s.warm is not None and s.warm.role is standby_role and standby.status is not Status.UP
    if guard is None and standby.status is Status.STOPPED and standby.known_down is not None:
        # A stopped instance cannot be probed: judged on what was known when
        # the failover stopped it. Starting it blindly after every cooldown
        # would ping-pong between two dead instances.
        reason = (
            f"both instances are down (the {standby_role} was stopped by the failover "
            f"while failing: {standby.known_down})"
        )
        guard = (
            Guard.BOTH_DOWN,
            f"{reason}; not restarting it automatically: start it (jupiterd probes it "
            f"once it runs) or run `jupiterd failover {name}`",
        )
        if s.alert != reason:
            s = replace(s, alert=reason)
            actions.append(Alert(name, reason, at))
    if (
        guard is None
        and not warm
        and standby.status is not Status.STOPPED
        and standby.status is not Status.UP
    ):
        if standby.status is Status.DOWN:
            reason = f"both instances are down (the {standby_role} too: {standby.last_reason})"
            guard = (Guard.BOTH_DOWN, f"{reason}; not switching to a dead standby")
            if s.alert != reason:
                s = replace(s, alert=reason)
                actions.append(Alert(name, reason, at))
        else:
            guard = (
                Guard.STANDBY_UNHEALTHY,
                f"{where}, but the running {standby_role} has not "
                f"passed {th.rise} probe(s) yet (it is {standby.status})",
            )
    if guard is not None:
        s = replace(s, awaiting_isolation_check=False)
        s, acts = _set_hold(s, guard[0], guard[1], at)
        return state.with_service(s), actions + acts

    standby_word = (
        "pre-warmed standby (the plan waits for its probes)"
        if warm
        else "stopped standby (it will be started and checked first)"
        if standby.status is Status.STOPPED
        else "healthy standby"
    )
    if policy.monitor_only:
        s = replace(s, awaiting_isolation_check=False)
        s, acts = _clear_hold(s, "failover due (monitor-only mode)", at)
        actions += acts
        if s.due_since is not None:
            return state.with_service(s), actions
        reason = (
            f"{where} ({active.why}); a failover to the {standby_word} is due, but AWS "
            "access is off (aws.enabled: false): monitor-only mode changes nothing"
        )
        s = replace(s, due_since=at, decision=f"failover due to the {standby_role}: {reason}")
        actions.append(FailoverDue(name, s.active, standby_role, reason, at))
        return state.with_service(s), actions
    s, acts = _clear_hold(s, "failover starting", at)
    actions += acts
    reason = f"{where} ({active.why}); failing over to the {standby_word}"
    s = replace(
        s,
        in_flight=standby_role,
        attempts=(*attempts, at),
        awaiting_isolation_check=False,
        decision=f"failing over to the {standby_role}",
    )
    actions.append(StartFailover(name, s.active, standby_role, reason, at))
    return state.with_service(s), actions
