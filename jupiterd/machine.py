"""Health decisions: a pure state machine, no I/O, no clock of its own.

``step(state, event, policy) -> (state', actions)``. Every event carries its
time (``at``, seconds on the daemon's monotonic clock); every action carries a
reason sentence that is logged and shown by ``/status``. Tests drive it with
tables of events and assert states, actions and sentences.

Per target (one instance of one service), keepalived/HAProxy hysteresis:

    UNKNOWN --rise ok--> UP --fail--> SUSPECT --fall fails and min_down--> DOWN
       |                  ^              | ok                               | ok
       +--fall fails------|--------------+--> (back to UP)                  v
                          +----------rise ok-------------------------- RECOVERING
    any --instance stopped--> STOPPED --instance running--> UNKNOWN

Per service: the active instance DOWN for ``failover_after`` seconds starts
a failover to the standby unless a guard holds it (maintenance pause, manual
mode, monitor isolation, cooldown, hourly cap, standby unhealthy, both down,
already in flight). Before deciding, every other service's active target must
have been probed since the failure began, so that "everything failed at
once" (the monitor's own network) is seen as such and not as one outage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from .config import IsolationGuard, Thresholds


class Role(StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"

    @property
    def other(self) -> Role:
        return Role.BACKUP if self is Role.PRIMARY else Role.PRIMARY


class Status(StrEnum):
    UNKNOWN = "unknown"  # not yet enough probes to say
    UP = "up"
    SUSPECT = "suspect"  # failing, not yet `fall` times / `min_down` long
    DOWN = "down"
    RECOVERING = "recovering"  # down, passing probes, not yet `rise` of them
    STOPPED = "stopped"  # the instance is not running: not probed

    @property
    def failing(self) -> bool:
        return self in (Status.SUSPECT, Status.DOWN, Status.RECOVERING)


class Guard(StrEnum):
    """Why an otherwise due failover is held. Each is a metric label."""

    MAINTENANCE = "maintenance"
    MANUAL = "manual"
    ISOLATION = "isolation"
    COOLDOWN = "cooldown"
    RATE_LIMIT = "rate_limit"
    STANDBY_UNHEALTHY = "standby_unhealthy"
    BOTH_DOWN = "both_down"
    IN_FLIGHT = "in_flight"
    JOURNAL_DAMAGED = "journal_damaged"


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class TargetState:
    status: Status = Status.UNKNOWN
    since: float = 0.0  # when `status` was entered
    ok_streak: int = 0
    fail_streak: int = 0
    failing_since: float | None = None  # first failure of the current streak
    last_probe_at: float | None = None
    last_reason: str = ""  # the probe's Reason of the last result
    last_detail: str = ""
    why: str = "not probed yet"  # the sentence of the last transition

    @property
    def last_ok(self) -> bool | None:
        """Whether the last probe passed (None: not probed since the last reset)."""
        return True if self.ok_streak else False if self.fail_streak else None


@dataclass(frozen=True, slots=True)
class HoldState:
    guard: Guard
    reason: str
    since: float


@dataclass(frozen=True, slots=True)
class ServiceState:
    name: str
    active: Role = Role.PRIMARY
    primary: TargetState = TargetState()
    backup: TargetState = TargetState(status=Status.STOPPED, why="standby assumed stopped")
    in_flight: Role | None = None  # the role a running plan moves traffic to
    last_failover_at: float | None = None
    attempts: tuple[float, ...] = ()  # failover starts within the last hour
    hold: HoldState | None = None
    alert: str | None = None  # set while both instances are down, or a plan failed
    maintenance: bool = False  # an instance carries the maintenance tag
    awaiting_isolation_check: bool = False
    decision: str = "watching"  # the latest decision sentence, for /status
    journal_hold: str | None = None  # why a damaged journal holds this service

    def target(self, role: Role) -> TargetState:
        return self.primary if role is Role.PRIMARY else self.backup

    def with_target(self, role: Role, t: TargetState) -> ServiceState:
        return replace(self, primary=t) if role is Role.PRIMARY else replace(self, backup=t)


@dataclass(frozen=True, slots=True)
class MachineState:
    services: Mapping[str, ServiceState]
    paused: bool = False
    pause_reason: str = ""

    @classmethod
    def initial(cls, names: Iterable[str], paused: bool = False) -> MachineState:
        return cls(
            services=MappingProxyType({n: ServiceState(name=n) for n in names}),
            paused=paused,
            pause_reason="paused in the configuration" if paused else "",
        )

    # Services waiting for a fresh look at the others before deciding; kept
    # as an index so that each observation need not scan every service.
    awaiting: frozenset[str] = frozenset()

    def with_service(self, s: ServiceState) -> MachineState:
        if self.services.get(s.name) is s:
            return self
        # A proxy's copy() copies the dict underneath in one go; dict(proxy)
        # goes key by key, 20x slower at thousands of services, on every probe.
        base = self.services
        services = base.copy() if isinstance(base, MappingProxyType) else dict(base)
        services[s.name] = s
        awaiting = self.awaiting
        if s.awaiting_isolation_check != (s.name in awaiting):
            awaiting = awaiting | {s.name} if s.awaiting_isolation_check else awaiting - {s.name}
        return replace(self, services=MappingProxyType(services), awaiting=awaiting)


@dataclass(frozen=True, slots=True)
class Policy:
    """What the machine needs from the configuration."""

    thresholds: Mapping[str, Thresholds]
    isolation: IsolationGuard = field(default_factory=IsolationGuard)
    auto_failover: Mapping[str, bool] = field(default_factory=dict)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Observation:
    service: str
    role: Role
    ok: bool
    at: float
    reason: str = "ok"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InstanceRunning:
    """What EC2 says of an instance: running (probe it) or not (don't)."""

    service: str
    role: Role
    running: bool
    at: float


@dataclass(frozen=True, slots=True)
class ActiveObserved:
    """Which instance the service's traffic attachments point at, per AWS."""

    service: str
    role: Role
    at: float


@dataclass(frozen=True, slots=True)
class MaintenanceObserved:
    service: str
    on: bool
    at: float


@dataclass(frozen=True, slots=True)
class PauseChanged:
    paused: bool
    at: float
    by: str = "api"


@dataclass(frozen=True, slots=True)
class JournalHold:
    """A damaged journal may concern this service (``reason``), or no longer
    does (None: an operator acknowledged it)."""

    service: str
    reason: str | None
    at: float


@dataclass(frozen=True, slots=True)
class FailoverFinished:
    service: str
    to_role: Role
    ok: bool
    at: float
    detail: str = ""
    stopped_old: bool = False
    dry_run: bool = False  # nothing moved: only the cooldown applies


@dataclass(frozen=True, slots=True)
class Tick:
    """Re-evaluates time-based conditions (failover_after, cooldown expiry)."""

    at: float


Event = (
    Observation
    | InstanceRunning
    | ActiveObserved
    | MaintenanceObserved
    | PauseChanged
    | FailoverFinished
    | JournalHold
    | Tick
)

# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Transition:
    service: str
    role: Role
    old: Status
    new: Status
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class StartFailover:
    service: str
    from_role: Role
    to_role: Role
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Hold:
    service: str
    guard: Guard
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class HoldCleared:
    service: str
    guard: Guard
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Alert:
    service: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class ProbeNow:
    """Probe these targets at once: the isolation check needs a fresh look."""

    targets: tuple[tuple[str, Role], ...]
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Note:
    """A decision worth logging that changes nothing else."""

    service: str
    reason: str
    at: float


Action = Transition | StartFailover | Hold | HoldCleared | Alert | ProbeNow | Note

# --------------------------------------------------------------------------- targets


def _fmt(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"


def observe(
    t: TargetState, ok: bool, at: float, th: Thresholds, reason: str, detail: str
) -> TargetState:
    """Apply one probe result to a target's hysteresis."""
    if t.status is Status.STOPPED:
        return t  # a late result from before the stop: ignore
    if ok:
        streak = t.ok_streak + 1
        base = replace(
            t,
            ok_streak=streak,
            fail_streak=0,
            last_probe_at=at,
            last_reason=reason,
            last_detail=detail,
        )
        if t.status is Status.UP:
            return base
        if t.status is Status.SUSPECT:
            # Never reached DOWN: one success is enough to trust it again.
            return replace(
                base,
                status=Status.UP,
                since=at,
                failing_since=None,
                why=f"probe passed again after {t.fail_streak} failure(s)",
            )
        if streak >= th.rise:
            what = "first" if t.status is Status.UNKNOWN else "after being down,"
            return replace(
                base,
                status=Status.UP,
                since=at,
                failing_since=None,
                why=f"{what} {streak} consecutive probe(s) passed (rise {th.rise})",
            )
        if t.status is Status.DOWN:
            return replace(
                base,
                status=Status.RECOVERING,
                since=at,
                why=f"probe passed, {streak} of {th.rise} needed to come back up",
            )
        return base
    failing_since = t.failing_since if t.fail_streak > 0 and t.failing_since is not None else at
    streak = t.fail_streak + 1
    base = replace(
        t,
        fail_streak=streak,
        ok_streak=0,
        failing_since=failing_since,
        last_probe_at=at,
        last_reason=reason,
        last_detail=detail,
    )
    if t.status is Status.DOWN:
        return base
    if t.status is Status.RECOVERING:
        return replace(
            base, status=Status.DOWN, since=at, why=f"failed again while recovering: {reason}"
        )
    failing_for = at - failing_since
    if streak >= th.fall and failing_for >= th.min_down:
        return replace(
            base,
            status=Status.DOWN,
            since=at,
            why=f"{streak} consecutive probes failed over {_fmt(failing_for)} "
            f"(fall {th.fall}): {reason}: {detail}".rstrip(": "),
        )
    if t.status is Status.UP:
        return replace(base, status=Status.SUSPECT, since=at, why=f"probe failed: {reason}")
    return base


# --------------------------------------------------------------------------- services

HOUR = 3600.0


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
        if t.status is Status.STOPPED:
            continue
        if t.last_probe_at is None or t.last_probe_at < since:
            stale.append((s.name, s.active))
    return tuple(stale)


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

    if s.journal_hold is not None:  # held whether or not a failover is due
        s, acts = _set_hold(s, Guard.JOURNAL_DAMAGED, s.journal_hold, at)
        return state.with_service(s), actions + acts
    if active.status is not Status.DOWN:
        if s.awaiting_isolation_check:
            s = replace(s, awaiting_isolation_check=False)
        s, acts = _clear_hold(s, f"the {s.active} instance is {active.status} again", at)
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
    if down_for < th.failover_after:
        s = replace(s, decision=f"{where}; failover after {_fmt(th.failover_after)}")
        return state.with_service(s), actions

    # The guards, most deliberate first.
    guard: tuple[Guard, str] | None = None
    if state.paused:
        guard = (Guard.MAINTENANCE, f"{where}, but jupiterd is paused ({state.pause_reason})")
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
    if guard is None and standby.status is not Status.STOPPED and standby.status is not Status.UP:
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

    s, acts = _clear_hold(s, "failover starting", at)
    actions += acts
    standby_word = (
        "stopped standby (it will be started and checked first)"
        if standby.status is Status.STOPPED
        else "healthy standby"
    )
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


# --------------------------------------------------------------------------- step


def step(state: MachineState, event: Event, policy: Policy) -> tuple[MachineState, list[Action]]:
    """Apply one event. Pure: same inputs, same outputs."""
    actions: list[Action] = []
    if isinstance(event, Tick):
        for name in state.services:
            state, acts = evaluate(state, name, event.at, policy)
            actions += acts
        return state, actions
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

    if isinstance(event, Observation):
        old = s.target(event.role)
        new = observe(
            old, event.ok, event.at, policy.thresholds[s.name], event.reason, event.detail
        )
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
    elif isinstance(event, JournalHold):
        if event.reason != s.journal_hold:
            s = replace(s, journal_hold=event.reason)
            if event.reason is None:
                s, acts = _clear_hold(s, "the damaged journal was acknowledged", event.at)
                actions += acts
    elif isinstance(event, FailoverFinished):
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
                last_failover_at=event.at,
                alert=None,
                decision=f"traffic moved to the {event.to_role}: {event.detail}".rstrip(": "),
            )
            if event.stopped_old:
                prev = s.target(old_role)
                stopped = TargetState(
                    status=Status.STOPPED, since=event.at, why="stopped by the failover (fencing)"
                )
                s = s.with_target(old_role, stopped)
                actions.append(
                    Transition(s.name, old_role, prev.status, Status.STOPPED, stopped.why, event.at)
                )
            actions.append(Note(s.name, s.decision, event.at))
        else:
            reason = f"failover to the {event.to_role} failed: {event.detail}"
            s = replace(s, in_flight=None, last_failover_at=event.at, alert=reason, decision=reason)
            actions.append(Alert(s.name, reason, event.at))
        s, acts = _clear_hold(s, "the failover finished", event.at)
        actions += acts

    state = state.with_service(s)
    state, acts = evaluate(state, s.name, event.at, policy)
    actions += acts
    # Services waiting for a fresh look at the others decide as soon as it comes.
    if state.awaiting and isinstance(event, Observation):
        for other in sorted(state.awaiting - {s.name}):
            state, acts = evaluate(state, other, event.at, policy)
            actions += acts
    return state, actions


def probe_interval(t: TargetState, th: Thresholds) -> float | None:
    """Seconds until this target's next probe; None while it is not probed."""
    if t.status is Status.STOPPED:
        return None
    if t.fail_streak > 0 and t.status is not Status.DOWN:
        return th.fast_interval  # confirm a failure quickly (HAProxy's fastinter)
    if t.status is Status.RECOVERING:
        return th.fast_interval  # and a recovery
    # A new target passing its first probes is not urgent: probing every
    # new target at the fast interval would make start-up a thundering herd.
    return th.interval
