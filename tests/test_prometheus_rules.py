"""Prometheus rules and the Grafana dashboard: promtool checks and unit-tests
the rules, every alert is tested firing and not firing, every metric they
name is one jupiterd exports (with the label values the code uses), and
every PromQL expression in the dashboard parses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from jupiterd.aws.client import AwsError
from jupiterd.core.execution import Result
from jupiterd.core.health import Guard
from jupiterd.telemetry.metrics import Metrics
from probes.result import Reason
from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "jupiterd.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "jupiterd.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "jupiterd.json"


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _rule_tests() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULE_TESTS.read_text())["tests"])


# --------------------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    proc = _promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = _promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    fires: set[str] = set()
    silent: set[str] = set()
    for t in _rule_tests():
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested staying silent"
    assert (fires | silent) <= alerts, "tests name alerts that do not exist"


def test_every_recording_rule_is_tested() -> None:
    records = {r["record"] for r in _rules() if "record" in r}
    exprs = " ".join(case["expr"] for t in _rule_tests() for case in t.get("promql_expr_test", []))
    assert {r for r in records if r not in exprs} == set()


def test_the_issue_s_alerts_exist() -> None:
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    for name in (
        "JupiterdServiceDown",
        "JupiterdFailoverHappened",
        "JupiterdFailoverFailed",
        "JupiterdFailoverHeld",
        "JupiterdDown",
        "JupiterdAbsent",
        "JupiterdMainLoopStalled",
        "JupiterdConfigReloadFailed",
        "JupiterdDrillFailing",
        "JupiterdDrillStale",
    ):
        assert name in alerts
        rule = alerts[name]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert "guard" in alerts["JupiterdFailoverHeld"]["annotations"]["summary"]


# --------------------------------------------------------------------------- vs the code


def _exported_names() -> set[str]:
    """Every sample name jupiterd's registry can expose."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        base = family.name
        names.add(base)
        if family.type == "counter":
            names.add(base + "_total")
        elif family.type == "histogram":
            names |= {base + s for s in ("_bucket", "_sum", "_count")}
        elif family.type == "info":
            names.add(base + "_info")
    return names


_METRIC = re.compile(r"\b(jupiterd_[a-z0-9_]+)")


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(doc["panels"])
    exprs += [a["expr"] for a in doc["annotations"]["list"] if "expr" in a]
    for var in doc["templating"]["list"]:
        q = var.get("query")
        if isinstance(q, dict):
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q["query"])
            assert m, q
            exprs.append(m.group(1))
    return exprs


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    exported = _exported_names()
    records = {r["record"] for r in _rules() if "record" in r}
    texts = [r["expr"] for r in _rules()] + _dashboard_exprs()
    used = {m for text in texts for m in _METRIC.findall(text)}
    assert used, "no jupiterd metric found: the pattern is broken"
    assert used - exported == set()
    # Recording rules are named level:metric:operations, never like a metric.
    assert all(r.startswith("jupiterd:") for r in records)


def test_label_values_in_the_rules_are_the_code_s() -> None:
    text = RULES.read_text() + RULE_TESTS.read_text()
    results = set(re.findall(r'result=~?"([a-z_|]+)"', text))
    results = {v for r in results for v in r.split("|")}
    plan_results = set(Result.__args__)  # type: ignore[attr-defined]
    aws_results = {"ok", "dry_run", "error"} | {
        c.result for c in (AwsError, *AwsError.__subclasses__())
    }
    assert results <= plan_results | aws_results, results
    assert {"success", "failed", "aborted", "dry_run"} <= plan_results
    assert {"denied", "unreachable"} <= aws_results
    guards = set(re.findall(r'guard[!=]=?"([a-z_]+)"', text))
    guards |= set(re.findall(r'eq \$labels\.guard "([a-z_]+)"', text))
    assert guards == {g.value for g in Guard}, "every guard explained, none invented"
    assert Reason.OK.value == "ok"
    assert 'reason="ok"' in text


# --------------------------------------------------------------------------- the dashboard


def _concrete(expr: str) -> str:
    """Grafana's variables replaced by values PromQL accepts."""
    fixed = {"__rate_interval": "5m", "__interval": "1m", "__range": "6h"}
    return re.sub(
        r"\$\{?(\w+)\}?",
        lambda m: fixed.get(m.group(1), ".*" if m.group(1) != "job" else "jupiterd"),
        expr,
    )


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr{i}", "expr": _concrete(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    # The parse check above is only worth something if this fails.
    path = tmp_path / "bad.rules.yml"
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (a (b)"}]}]}
        )
    )
    assert _promtool("check", "rules", str(path)).returncode != 0


def _panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def test_dashboard_shows_what_the_issue_asks() -> None:
    text = DASHBOARD.read_text()
    for metric in (
        "jupiterd_service_up",  # per-service state
        "jupiterd_service_active_role",  # active role
        "jupiterd_target_state",  # each instance's state
        "jupiterd_probe_results_total",  # probe success
        "jupiterd_probe_duration_seconds_bucket",  # probe latency
        "jupiterd_failovers_total",  # failovers
        "jupiterd_hold_active",  # holds
        "jupiterd_drill_success",  # drills
        "jupiterd_drill_last_success_timestamp_seconds",
    ):
        assert metric in text, metric
    titles = [p["title"] for p in _panels()]
    assert len(titles) == len(set(titles))


def test_dashboard_panels_are_unique_and_do_not_overlap() -> None:
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    boxes = [
        (p["title"], p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"])
        for p in panels
    ]
    for title, x, _, w, _ in boxes:
        assert x >= 0 and x + w <= 24, title
    for i, (t1, x1, y1, w1, h1) in enumerate(boxes):
        for t2, x2, y2, w2, h2 in boxes[i + 1 :]:
            apart = x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1
            assert apart, f"{t1!r} overlaps {t2!r}"
