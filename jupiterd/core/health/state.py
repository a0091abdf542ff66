"""The decision state machine's state: per target, per service, for the
whole machine, and why a failover is held (``Guard``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from jupiterd.config import IsolationGuard, Thresholds
from jupiterd.core.quorum import Cluster
from jupiterd.core.types import Role, Status


class Guard(StrEnum):
    """Why an otherwise due failover is held. Each is a metric label."""

    PAUSED = "paused"  # jupiterd pause, guards.paused
    MAINTENANCE = "maintenance"  # an instance carries the maintenance tag
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
    STANDBY_BUSY = "standby_busy"  # a pool's shared standby already serves another member
    NO_QUORUM = "no_quorum"  # replicated deciders: too few fresh replicas see it down
    NOT_LEADER = "not_leader"  # replicated deciders: another replica holds the lease
    LEASE_LOST = "lease_lost"  # replicated deciders: this replica's lease renewals failed


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
class WarmState:
    """The standby is being warmed up without moving traffic: a pre-warm
    (``kind`` "prewarm": started when the active first failed) or a
    readiness drill ("drill"). A failover due meanwhile takes it over (it
    is not judged a dead or unhealthy standby while it boots)."""

    kind: str
    role: Role  # the standby warmed
    since: float
    undo_at: float | None = None  # a pre-warm: stopped again then (the active recovered)


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
    warm: WarmState | None = None  # the standby is being warmed up (pre-warm, drill)
    prewarms: tuple[float, ...] = ()  # pre-warms started within the last hour
    prewarm_capped: bool = False  # this failure's pre-warm was refused by the hourly cap

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
    cluster: Cluster | None = None  # replicated deciders (ha:): the lease and the votes

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
class PrewarmPolicy:
    """A service with ``prewarm: true``."""

    hold: float = 300.0  # after the active recovers, before the standby is stopped again
    max_per_hour: int = 4


@dataclass(frozen=True, slots=True)
class Policy:
    """What the machine needs from the configuration."""

    thresholds: Mapping[str, Thresholds]
    isolation: IsolationGuard = field(default_factory=IsolationGuard)
    auto_failover: Mapping[str, bool] = field(default_factory=dict)
    monitor_only: bool = False  # aws.enabled: false: a due failover is only reported
    # A pool member -> the other members sharing its standby.
    pool_peers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Members of a peer_then_standby pool: their plan reroutes through the
    # standby (or a surviving member) even while it serves another member.
    peer_fallback: frozenset[str] = frozenset()
    ha: bool = False  # replicated deciders: only the leader acts, on a quorum of views
    prewarm: Mapping[str, PrewarmPolicy] = field(default_factory=dict)  # prewarm: true
    # Every service's prewarm_hold: how long a standby a drill kept warm
    # outlives its active's recovery (a prewarm: true service's is above).
    warm_hold: Mapping[str, float] = field(default_factory=dict)
