"""Metrics: names and values on an own registry, and `promtool check metrics`
(the Prometheus project's own linter) on the exposition output."""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry, generate_latest

from jupiterd.telemetry.metrics import Metrics
from tests.conftest import need


def populated() -> Metrics:
    m = Metrics(CollectorRegistry())
    m.probe_success.labels("sig", "primary", "socketio").set(1)
    m.probe_duration.labels("sig", "primary", "socketio").observe(0.004)
    m.probe_results.labels("sig", "primary", "socketio", "ok").inc()
    m.probe_results.labels("sig", "primary", "socketio", "refused").inc(2)
    m.probe_lateness.observe(0.002)
    m.probes_skipped.labels("sig", "primary").inc()
    m.target_state.labels("sig", "primary").state("down")
    m.target_transitions.labels("sig", "primary", "down").inc()
    m.active_role.labels("sig", "primary").set(1)
    m.service_up.labels("sig").set(0)
    m.hold_active.labels("sig", "cooldown").set(1)
    m.holds.labels("sig", "cooldown").inc()
    m.alert_active.labels("sig").set(0)
    m.paused.set(0)
    m.failovers.labels("sig", "failover", "success").inc()
    m.failover_duration.labels("sig", "failover").observe(42.0)
    m.failover_in_progress.labels("sig").set(0)
    m.last_failover.labels("sig").set(1.7e9)
    m.aws_calls.labels("StartInstances", "ok").inc()
    m.drill_success.labels("sig").set(1)
    m.drill_last_success.labels("sig").set(1.7e9)
    m.drill_last_run.labels("sig").set(1.7e9)
    m.drill_failed_step.labels("sig", "preflight").set(0)
    m.heartbeat.set(1.7e9)
    m.reload_success.set(1)
    m.reload_timestamp.set(1.7e9)
    m.reloads.labels("success").inc()
    m.targets.set(10)
    return m


def test_values_on_an_own_registry():
    m = populated()
    r = m.registry
    assert (
        r.get_sample_value(
            "jupiterd_probe_results_total",
            {"service": "sig", "role": "primary", "kind": "socketio", "reason": "refused"},
        )
        == 2
    )
    assert (
        r.get_sample_value(
            "jupiterd_target_state",
            {"service": "sig", "role": "primary", "jupiterd_target_state": "down"},
        )
        == 1
    )
    assert (
        r.get_sample_value(
            "jupiterd_build_info",
            {
                "version": __import__("jupiterd").__version__,
                "python": __import__("platform").python_version(),
            },
        )
        == 1
    )


def test_every_metric_is_prefixed_and_promtool_accepts_them():
    promtool = need("promtool")
    text = generate_latest(populated().registry).decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(n.startswith("jupiterd_") for n in names), names
    r = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


def test_no_created_series():
    """Counters and histograms export no ``*_created`` series: one series per
    child that Prometheus would ingest and nothing reads."""
    text = generate_latest(populated().registry).decode()
    assert "jupiterd_probe_results_total{" in text
    assert "jupiterd_probe_duration_seconds_bucket{" in text
    assert "_created" not in text, [ln for ln in text.splitlines() if "_created" in ln][:3]
