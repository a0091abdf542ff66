"""What the state machine is told (events) and what it answers (actions).
Every one carries its time, ``at``; every action a reason sentence."""

from __future__ import annotations

from dataclasses import dataclass

from jupiterd.core.health.state import Guard
from jupiterd.core.quorum import Cluster
from jupiterd.core.types import Role, Status

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
class StandbyWarming:
    """A warm-up of the standby (``kind``: "drill", "prewarm") began
    (``on``) or ended, as the daemon carries it out."""

    service: str
    role: Role
    kind: str
    on: bool
    at: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Re-evaluates time-based conditions (failover_after, cooldown expiry)."""

    at: float


@dataclass(frozen=True, slots=True)
class ClusterChanged:
    """Replicated deciders: the lease, the leader or the votes changed."""

    cluster: Cluster
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
    | ClusterChanged
    | StandbyWarming
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


@dataclass(frozen=True, slots=True)
class Prewarm:
    """Start the stopped standby now: the active just began to fail."""

    service: str
    role: Role
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class PrewarmUndo:
    """Stop the pre-warmed standby again: the active recovered ``hold`` ago."""

    service: str
    role: Role
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class PrewarmCapped:
    """A pre-warm was due and ``prewarm_max_per_hour`` held it (once per failure)."""

    service: str
    reason: str
    at: float


Action = (
    Transition
    | StartFailover
    | FailoverDue
    | Hold
    | HoldCleared
    | Alert
    | ProbeNow
    | Note
    | Prewarm
    | PrewarmUndo
    | PrewarmCapped
)
