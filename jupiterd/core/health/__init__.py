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
mode, monitor isolation, AWS unreachable, retry backoff, cooldown, hourly
cap, standby unhealthy, both down, already in flight, monitor degraded). Only
a plan that changed something on AWS counts toward the cooldown and the
hourly cap. In monitor-only mode (no AWS access) a due failover is reported
once per outage (``FailoverDue``) and nothing else happens. Before deciding,
every other service's active target must have been probed since the failure
began, so that "everything failed at once" (the monitor's own network) is
seen as such and not as one outage.

A probe that failed on the monitor's side (``Observation.cause``: out of
descriptors, a stalled loop...) is no evidence either way: it neither counts
toward ``fall`` nor breaks a streak. It holds automatic failover
(``monitor_degraded``) for its service, or for every service when the cause
is host-wide, until probes complete without one again: ``rise`` in a row at
the target, and as many in a row as there are services (at least 2) for the
host-wide hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from jupiterd.config import IsolationGuard, Thresholds
from jupiterd.core.types import Role, Status


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
    AWS_UNREACHABLE = "aws_unreachable"  # jupiterd's own AWS reads fail
    RETRY_BACKOFF = "retry_backoff"  # the last plan aborted before changing anything
    MONITOR_DEGRADED = "monitor_degraded"  # probes fail on this host: no verdict possible
    JOURNAL_DAMAGED = "journal_damaged"


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class MonitorTrouble:
    """Probes failing on the monitor's side, until enough complete again."""

    cause: str
    detail: str
    since: float
    errors: int = 1  # monitor errors since ``since``
    clean: int = 0  # probes completed in a row since the last monitor error


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
    # Set on a STOPPED target that a failover stopped while it was failing:
    # what was known of it then. Cleared when the instance runs again.
    known_down: str | None = None
    trouble: MonitorTrouble | None = None  # its probes fail on the monitor's side

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
    retry_at: float | None = None  # no new plan before this (a plan aborted unchanged)
    retries: int = 0  # plans in a row that aborted before changing anything
    due_since: float | None = None  # monitor-only: when the failover became due
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
    aws_error: str | None = None  # jupiterd's AWS reads fail: why
    aws_error_since: float | None = None

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
    degraded: MonitorTrouble | None = None  # a host-wide cause: every service held

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
    monitor_only: bool = False  # aws.enabled: false: a due failover is only reported


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Observation:
    service: str
    role: Role
    ok: bool
    at: float
    reason: str = "ok"
    detail: str = ""
    cause: str | None = None  # set: the probe failed on the monitor's side (no verdict)
    host_wide: bool = False  # the cause hits every probe, not this target's alone


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
    changed: bool = True  # the plan changed something on AWS (counts toward cooldown, cap)
    aws_unreachable: bool = False  # it stopped because AWS did not answer its reads


@dataclass(frozen=True, slots=True)
class AwsReachability:
    """Whether jupiterd's own AWS reads (the inventory refresh) get answers."""

    ok: bool
    at: float
    detail: str = ""


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
    | AwsReachability
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
class FailoverDue:
    """Monitor-only mode: a failover is due and nothing will carry it out."""

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


Action = Transition | StartFailover | FailoverDue | Hold | HoldCleared | Alert | ProbeNow | Note

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


def _troubled(trouble: MonitorTrouble | None, cause: str, detail: str, at: float) -> MonitorTrouble:
    if trouble is None:
        return MonitorTrouble(cause, detail, at)
    return replace(trouble, cause=cause, detail=detail, errors=trouble.errors + 1, clean=0)


def _cleaner(trouble: MonitorTrouble | None, needed: int) -> MonitorTrouble | None:
    """One more probe completed without a monitor error: ``needed`` in a row end it."""
    if trouble is None or trouble.clean + 1 >= needed:
        return None
    return replace(trouble, clean=trouble.clean + 1)


def monitor_error(t: TargetState, cause: str, detail: str, at: float) -> TargetState:
    """A probe that failed on the monitor's side says nothing of the target:
    its status, streaks and last look stay as they were; the trouble is noted."""
    if t.status is Status.STOPPED:
        return t
    return replace(t, trouble=_troubled(t.trouble, cause, detail, at))


def host_clean_needed(state: MachineState) -> int:
    """Probes that must complete in a row, anywhere, to end a host-wide trouble:
    about one round of the services' active targets."""
    return max(2, len(state.services))


def _monitor_trouble(state: MachineState, s: ServiceState) -> str | None:
    """Why this service's failover cannot be trusted to the probes now."""
    d = state.degraded
    if d is not None:
        return (
            f"probes are failing on this host, not at the targets ({d.cause}: {d.detail}); "
            "held until they complete again"
        )
    for role in (s.active, s.active.other):
        t = s.target(role).trouble
        if t is not None:
            return (
                f"the {role} instance cannot be probed from this host ({t.cause}: {t.detail}); "
                "held until its probes complete again"
            )
    return None


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

    standby_word = (
        "stopped standby (it will be started and checked first)"
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


# --------------------------------------------------------------------------- step


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
