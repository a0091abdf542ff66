"""The standbys' metrics: readiness drills and pre-warms (``Metrics.standby``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class StandbyMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        s = ["service"]
        self.ready = Gauge(
            "jupiterd_standby_ready",
            "1 if the standby passed its last readiness drill, 0 if it failed it.",
            s,
            registry=r,
        )
        self.verified = Gauge(
            "jupiterd_standby_verified_timestamp_seconds",
            "Unix time the standby last passed a readiness drill.",
            s,
            registry=r,
        )
        self.max_age = Gauge(
            "jupiterd_standby_max_age_seconds",
            "readiness.max_age: a standby not verified for this long alerts.",
            s,
            registry=r,
        )
        self.boot = Gauge(
            "jupiterd_standby_boot_seconds",
            "StartInstances to running, measured by the last readiness drill.",
            s,
            registry=r,
        )
        self.app_healthy = Gauge(
            "jupiterd_standby_app_healthy_seconds",
            "Running to `rise` probes passed, measured by the last passing readiness drill.",
            s,
            registry=r,
        )
        self.drills = Counter(
            "jupiterd_standby_drills",
            "Readiness drills by result: passed, failed, handed_over, refused.",
            ["service", "result"],
            registry=r,
        )
        self.prewarms = Counter(
            "jupiterd_prewarms",
            "Pre-warms by result: started, capped, failed, handed_over, stopped.",
            ["service", "result"],
            registry=r,
        )
        self.prewarm_active = Gauge(
            "jupiterd_prewarm_active",
            "1 while the standby runs because of a pre-warm.",
            s,
            registry=r,
        )
