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

Per service: the active instance DOWN for ``failover_after`` seconds
starts a failover to the standby unless a guard holds it (pause,
maintenance tag, manual mode, monitor isolation, AWS unreachable, retry
backoff, cooldown, hourly cap, standby busy (a pool's shared standby
serving another member), standby unhealthy, both down, already in
flight, monitor degraded; with replicated deciders, ``Policy.ha``: no
quorum of fresh views seeing it down, lease lost, not the leader). Only
a plan that changed something on AWS counts toward the cooldown and the
hourly cap. In monitor-only mode (no AWS access) a due failover is
reported once per outage (``FailoverDue``) and nothing else happens.
Before deciding, every other service's active target must have been
probed since the failure began, so that "everything failed at once" (the
monitor's own network) is seen as such and not as one outage.

A probe that failed on the monitor's side (``Observation.cause``: out of
descriptors, a stalled loop...) is no evidence either way: it neither counts
toward ``fall`` nor breaks a streak. It holds automatic failover
(``monitor_degraded``) for its service, or for every service when the cause
is host-wide, until probes complete without one again: ``rise`` in a row at
the target, and as many in a row as there are services (at least 2) for the
host-wide hold.

The package, read in order: ``state`` (what is known, and ``Guard``),
``events`` (what comes in, what goes out), ``target`` (one target's
hysteresis), ``service`` (``evaluate``: one service's decision and its
guards), ``prewarm`` (the standby started early when the active first
fails, stopped again after ``prewarm_hold`` if it recovers), ``step`` (the
dispatcher).
"""

from __future__ import annotations

from jupiterd.core.health.events import (
    Action,
    ActiveObserved,
    Alert,
    AwsReachability,
    ClusterChanged,
    Event,
    FailoverDue,
    FailoverFinished,
    Hold,
    HoldCleared,
    InstanceRunning,
    JournalHold,
    MaintenanceObserved,
    Note,
    Observation,
    PauseChanged,
    Prewarm,
    PrewarmCapped,
    PrewarmUndo,
    ProbeNow,
    StandbyWarming,
    StartFailover,
    Tick,
    Transition,
)
from jupiterd.core.health.service import HOUR, RETRY_FIRST, evaluate, retry_delay
from jupiterd.core.health.state import (
    Guard,
    HoldState,
    MachineState,
    MonitorTrouble,
    Policy,
    PrewarmPolicy,
    ServiceState,
    TargetState,
    WarmState,
)
from jupiterd.core.health.step import step
from jupiterd.core.health.target import host_clean_needed, monitor_error, observe, probe_interval

__all__ = [
    "HOUR",
    "RETRY_FIRST",
    "Action",
    "ActiveObserved",
    "Alert",
    "AwsReachability",
    "ClusterChanged",
    "Event",
    "FailoverDue",
    "FailoverFinished",
    "Guard",
    "Hold",
    "HoldCleared",
    "HoldState",
    "InstanceRunning",
    "JournalHold",
    "MachineState",
    "MaintenanceObserved",
    "MonitorTrouble",
    "Note",
    "Observation",
    "PauseChanged",
    "Policy",
    "Prewarm",
    "PrewarmCapped",
    "PrewarmPolicy",
    "PrewarmUndo",
    "ProbeNow",
    "ServiceState",
    "StandbyWarming",
    "StartFailover",
    "TargetState",
    "Tick",
    "Transition",
    "WarmState",
    "evaluate",
    "host_clean_needed",
    "monitor_error",
    "observe",
    "probe_interval",
    "retry_delay",
    "step",
]
