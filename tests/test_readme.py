"""The README stays true to the code: the set-up commands come first, and
every command, alert, metric, guard, probe reason, probe kind and exit code
it must explain is there (and nothing it names is made up)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import probes
from jupiterd import cli
from jupiterd.core.health import Guard
from jupiterd.telemetry.metrics import Metrics
from probes.result import Reason

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _code_blocks() -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", README, re.S)


def test_setup_commands_come_first() -> None:
    head = README.split("\n## ", 2)
    assert head[0].startswith("# jupiterd\n")
    assert head[1].startswith("Set up\n")
    blocks = _code_blocks()
    assert blocks[0].strip() == "pip install -e '.[sandbox]' && jupiterd sandbox"
    assert blocks[1].strip() == ".ci/run"
    assert "jupiterd sandbox --drill signaling" in head[1]


def test_documented_subcommands_exist() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    known = set(sub.choices)  # type: ignore[arg-type]
    used: set[str] = set()
    for block in _code_blocks():
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("#"):
                continue
            # Overlapping: `sudo -u jupiterd jupiterd status` names `status`.
            for m in re.finditer(r"(?=(?:^|[\s/])jupiterd ([a-z][a-z-]+)(?:\s|$))", line):
                if m.group(1) != "jupiterd":
                    used.add(m.group(1))
    assert used, "no command found: the pattern is broken"
    assert used <= known | {"run"}, used - known
    for name in known:
        assert f"jupiterd {name}" in README or f"`{name}`" in README, name


def test_every_alert_is_explained() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/jupiterd.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    table = {m for m in re.findall(r"^\| `(Jupiterd\w+)` \|", README, re.M)}
    assert table == alerts
    for r in records:
        assert r.split(":", 1)[1].split(":")[0] in README, r


def test_every_metric_is_listed() -> None:
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        name += "_info" if family.type == "info" else ""
        assert f"`{name}" in README, name


def test_guards_reasons_kinds_and_exit_codes() -> None:
    guard_rows = set(re.findall(r"^\| `([a-z_]+)` \| ", README, re.M))
    assert {g.value for g in Guard} <= guard_rows
    assert {r.value for r in Reason} <= guard_rows
    assert set(probes.KINDS) <= guard_rows
    for code in (cli.EXIT_OK, cli.EXIT_FAIL, cli.EXIT_USAGE, cli.EXIT_CONFIG):
        assert re.search(rf"^\| {code} \| ", README, re.M), code


def _span(seconds: float) -> str:
    """How the README writes a default duration: 250ms, 2s, 5m."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def test_threshold_defaults_match_the_code() -> None:
    from jupiterd.config import GuardsConfig, IsolationGuard, Thresholds

    flat = " ".join(README.split())
    th = Thresholds()
    for key in ("interval", "fast_interval", "timeout", "min_down", "failover_after"):
        assert f"`{key}` [{_span(getattr(th, key))}]" in flat, key
    for key in ("start_timeout", "healthy_timeout", "target_healthy_timeout", "drain_timeout"):
        assert f"`{key}` [{_span(getattr(th, key))}]" in flat, key
    for key in ("fall", "rise", "jitter"):
        assert f"`{key}` [{getattr(th, key):g}]" in flat, key
    rows = {
        m[0]: m[1].strip()
        for m in re.findall(r"^\| `([a-z_]+)` \|[^|]*\| ([^|]*)\|$", README, re.M)
    }
    assert rows["cooldown"] == _span(th.cooldown)
    assert rows["rate_limit"] == str(th.max_failovers_per_hour)
    iso = IsolationGuard()
    assert rows["isolation"] == f"on, {iso.min_services}, {iso.fraction:g}, {_span(iso.window)}"
    assert rows["maintenance"] == f"tag `{GuardsConfig().maintenance_tag}`"
