"""Every Prometheus metric jupiterd exports, on a registry the caller owns.

Names start with ``jupiterd_``, use base units and ``_total`` counters, and
pass ``promtool check metrics``. Tests build their own ``CollectorRegistry``
and read values with ``registry.get_sample_value``.
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from jupiterd import __version__
from jupiterd.core.types import Status
from jupiterd.telemetry.standby_metrics import StandbyMetrics

PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FAILOVER_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
TARGET_STATES = [s.value for s in Status]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No ``*_created`` series: one more series per counter and histogram child
        # (two per target), which Prometheus ingests as a gauge of its own and no
        # rule or panel reads. prometheus_client's switch is process-wide; jupiterd
        # owns its process.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Info("jupiterd_build", "jupiterd version and runtime.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})

        # Probes
        t = ["service", "role", "kind"]
        self.probe_success = Gauge(
            "jupiterd_probe_success", "1 if the last probe of the target passed.", t, registry=r
        )
        self.probe_duration = Histogram(
            "jupiterd_probe_duration_seconds",
            "Duration of probes.",
            t,
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.probe_results = Counter(
            "jupiterd_probe_results",
            "Probe results by reason (ok for a pass).",
            [*t, "reason"],
            registry=r,
        )
        self.probe_lateness = Histogram(
            "jupiterd_probe_start_lateness_seconds",
            "How late probes started against their schedule (scheduler load).",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.probes_skipped = Counter(
            "jupiterd_probes_skipped",
            "Probes not started because the previous probe of the target was still running.",
            ["service", "role"],
            registry=r,
        )

        self.monitor_errors = Counter(
            "jupiterd_monitor_errors",
            "Probes that failed on the monitor's side (no verdict on the target), by cause.",
            ["service", "role", "cause"],
            registry=r,
        )
        self.monitor_degraded = Gauge(
            "jupiterd_monitor_degraded",
            "1 while probes fail on this host for a host-wide cause: every failover is held.",
            registry=r,
        )

        self.watch_closes = Counter(
            "jupiterd_watch_closes",
            "Idle watch connections closed by a target (each wakes its probe at once).",
            ["service", "role"],
            registry=r,
        )
        self.heartbeat_misses = Counter(
            "jupiterd_heartbeat_misses",
            "Heartbeats unanswered for interval x multiplier (each starts confirmation probes).",
            ["service", "role"],
            registry=r,
        )

        # Decisions
        self.target_state = Enum(
            "jupiterd_target_state",
            "Health state of each target.",
            ["service", "role"],
            states=TARGET_STATES,
            registry=r,
        )
        self.target_transitions = Counter(
            "jupiterd_target_transitions",
            "Target state changes.",
            ["service", "role", "to"],
            registry=r,
        )
        self.active_role = Gauge(
            "jupiterd_service_active_role",
            "1 for the role (primary/backup) that carries the service's traffic.",
            ["service", "role"],
            registry=r,
        )
        self.service_up = Gauge(
            "jupiterd_service_up",
            "1 if the service's active instance is up.",
            ["service"],
            registry=r,
        )
        self.hold_active = Gauge(
            "jupiterd_hold_active",
            "1 while a guard holds a due failover.",
            ["service", "guard"],
            registry=r,
        )
        self.holds = Counter(
            "jupiterd_holds",
            "Times a guard started holding a due failover.",
            ["service", "guard"],
            registry=r,
        )
        self.alert_active = Gauge(
            "jupiterd_service_alert",
            "1 while a service needs a human (both instances down, a failed failover).",
            ["service"],
            registry=r,
        )
        self.paused = Gauge("jupiterd_paused", "1 while automatic action is paused.", registry=r)
        self.state_file_damaged = Gauge(
            "jupiterd_state_file_damaged",
            "Damaged state files moved aside (or stuck) and not yet acknowledged, by file.",
            ["file"],
            registry=r,
        )
        self.state_file_damage = Counter(
            "jupiterd_state_file_damage",
            "Damaged state files this process found, by file.",
            ["file"],
            registry=r,
        )

        # Failovers
        self.failovers = Counter(
            "jupiterd_failovers",
            "Failover and failback plans by outcome.",
            ["service", "direction", "result"],
            registry=r,
        )
        self.failovers_due = Counter(
            "jupiterd_failovers_due",
            "Failovers due in monitor-only mode (aws.enabled: false): reported, not run.",
            ["service"],
            registry=r,
        )
        self.failover_duration = Histogram(
            "jupiterd_failover_duration_seconds",
            "Duration of failover plans, start to end.",
            ["service", "direction"],
            buckets=FAILOVER_BUCKETS,
            registry=r,
        )
        self.failover_in_progress = Gauge(
            "jupiterd_failover_in_progress",
            "1 while a plan runs for the service.",
            ["service"],
            registry=r,
        )
        self.last_failover = Gauge(
            "jupiterd_last_failover_timestamp_seconds",
            "Unix time the last plan finished.",
            ["service"],
            registry=r,
        )
        self.aws_calls = Counter(
            "jupiterd_aws_api_calls",
            "AWS API calls by operation and outcome.",
            ["operation", "result"],
            registry=r,
        )
        self.capacity_errors = Counter(
            "jupiterd_capacity_errors",
            "StartInstances answered InsufficientInstanceCapacity, by service and instance type.",
            ["service", "instance_type"],
            registry=r,
        )

        # Drills
        self.drill_success = Gauge(
            "jupiterd_drill_success",
            "1 if the last dry-run drill of the service passed.",
            ["service"],
            registry=r,
        )
        self.drill_last_success = Gauge(
            "jupiterd_drill_last_success_timestamp_seconds",
            "Unix time of the last passing dry-run drill.",
            ["service"],
            registry=r,
        )
        self.drill_last_run = Gauge(
            "jupiterd_drill_last_run_timestamp_seconds",
            "Unix time of the last dry-run drill.",
            ["service"],
            registry=r,
        )
        self.drill_failed_step = Gauge(
            "jupiterd_drill_failed_step",
            "1 for the step that failed the last drill of the service (none when it passed).",
            ["service", "step"],
            registry=r,
        )

        # Replicated deciders (ha:)
        self.ha_leader = Gauge(
            "jupiterd_ha_leader", "1 while this replica holds the leader lease.", registry=r
        )
        self.ha_lease_expiry = Gauge(
            "jupiterd_ha_lease_expiry_timestamp_seconds",
            "Unix time the current holder's lease runs out (its own clock, as written).",
            registry=r,
        )
        self.ha_replica_last_report = Gauge(
            "jupiterd_ha_replica_last_report_seconds",
            "Seconds since this replica saw another's published view change (itself: 0).",
            ["replica"],
            registry=r,
        )
        self.ha_votes = Gauge(
            "jupiterd_ha_votes",
            "Replicas' votes on the service's active instance (down, up, abstain).",
            ["service", "vote"],
            registry=r,
        )
        self.ha_dynamodb_errors = Counter(
            "jupiterd_ha_dynamodb_errors",
            "Calls to the replicas' DynamoDB table that failed (lease, views).",
            registry=r,
        )
        self.ha_views_published = Counter(
            "jupiterd_ha_views_published",
            "Views of every target this replica published to the table.",
            registry=r,
        )
        # Standbys: readiness drills and pre-warms
        self.standby = StandbyMetrics(r)

        # The daemon itself
        self.heartbeat = Gauge(
            "jupiterd_main_loop_last_run_timestamp_seconds",
            "Unix time the main loop last ran (what /healthz checks).",
            registry=r,
        )
        self.reload_success = Gauge(
            "jupiterd_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded.",
            registry=r,
        )
        self.reload_timestamp = Gauge(
            "jupiterd_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            registry=r,
        )
        self.reloads = Counter(
            "jupiterd_config_reloads",
            "Configuration reloads by result.",
            ["result"],
            registry=r,
        )
        self.targets = Gauge("jupiterd_targets", "Targets being probed.", registry=r)
