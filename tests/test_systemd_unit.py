"""systemd/jupiterd.service: hardened (systemd-analyze rates it 2.0 or lower),
valid (systemd-analyze verify), and consistent with what the daemon does:
Type=notify with a watchdog it feeds, SIGHUP reload, exit 78 not restarted,
the state directory and config path the code defaults to."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jupiterd import cli
from jupiterd.config import Config, Thresholds, parse_duration
from jupiterd.runtime.supervisor import HEALTHY_AFTER_SECONDS, TICK_SECONDS
from tests.conftest import need

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "jupiterd.service"
MAX_EXPOSURE = 2.0


def _parse(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in order; systemd allows repeated keys."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return _parse(UNIT.read_text())


def _one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = [v for k, v in unit[section] if k == key]
    assert len(values) == 1, f"[{section}] {key}= appears {len(values)} times"
    return values[0]


def _all(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit[section] if k == key]


def _seconds(value: str) -> float:
    # systemd spans: "20s", "10min", "25min", "1h 30min"
    text = value.replace("min", "m").replace(" ", "")
    return float(parse_duration(text))


# --------------------------------------------------------------------------- systemd's own tools


def test_security_exposure_is_at_most_2() -> None:
    analyze = need("systemd-analyze")
    proc = subprocess.run(
        [
            analyze,
            "security",
            "--offline=yes",
            "--no-pager",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            str(UNIT),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for jupiterd\.service: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout
    assert proc.returncode == 0, proc.stderr
    # The network the daemon needs is the only exposure left of weight.
    assert "✗ PrivateNetwork=" in proc.stdout
    assert "✓ CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)" in proc.stdout
    assert "✓ User=/DynamicUser=" in proc.stdout


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that the executables exist: point them at stand-ins,
    # keeping every other line as shipped.
    analyze = need("systemd-analyze")
    true, kill = shutil.which("true"), shutil.which("kill")
    assert true and kill
    text = UNIT.read_text().replace("/opt/jupiterd/bin/jupiterd", true).replace("/bin/kill", kill)
    copy = tmp_path / "jupiterd.service"
    copy.write_text(text)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "jupiterd" in ln]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- what the daemon does


def test_notify_with_a_watchdog_the_heartbeat_feeds(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert _one(unit, "Service", "Type") == "notify"
    assert _one(unit, "Service", "NotifyAccess") == "main"
    watchdog = _seconds(_one(unit, "Service", "WatchdogSec"))
    # WATCHDOG=1 is sent each tick while /healthz would say healthy: the
    # watchdog must outlast a few missed ticks and the health window.
    assert watchdog >= 3 * TICK_SECONDS
    assert watchdog > HEALTHY_AFTER_SECONDS


def test_reload_is_sighup(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert _one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_restart_on_failure_rate_limited_but_not_for_a_bad_config(
    unit: dict[str, list[tuple[str, str]]],
) -> None:
    assert _one(unit, "Service", "Restart") == "on-failure"
    assert _seconds(_one(unit, "Service", "RestartSec")) >= 1
    assert int(_one(unit, "Unit", "StartLimitBurst")) >= 2
    assert _seconds(_one(unit, "Unit", "StartLimitIntervalSec")) >= 60
    from jupiterd.runtime.lifecycle import EXIT_STATE_DIR_BUSY

    prevent = _one(unit, "Service", "RestartPreventExitStatus").split()
    # A bad config, and another daemon holding the state directory.
    assert prevent == [str(cli.EXIT_CONFIG), str(EXIT_STATE_DIR_BUSY)]


def test_config_checked_before_start(unit: dict[str, list[tuple[str, str]]]) -> None:
    pre = _one(unit, "Service", "ExecStartPre").split()
    start = _one(unit, "Service", "ExecStart").split()
    assert pre == [start[0], "check-config"]
    assert start[1:] == ["run"]
    assert _one(unit, "Service", "Environment") == f"JUPITERD_CONFIG={cli.DEFAULT_CONFIG}"
    assert _one(unit, "Service", "EnvironmentFile") == "-/etc/jupiterd/jupiterd.env"


def test_dedicated_user_and_the_state_directory_the_code_uses(
    unit: dict[str, list[tuple[str, str]]],
) -> None:
    assert _one(unit, "Service", "User") == "jupiterd"
    assert _one(unit, "Service", "Group") == "jupiterd"
    assert not _all(unit, "Service", "DynamicUser")
    state = _one(unit, "Service", "StateDirectory")
    assert f"/var/lib/{state}" == Config.model_fields["state_dir"].default
    assert _one(unit, "Service", "ProtectSystem") == "strict"
    assert not _all(unit, "Service", "ReadWritePaths")  # the state directory is the only one


def test_start_timeout_covers_resuming_an_interrupted_plan(
    unit: dict[str, list[tuple[str, str]]],
) -> None:
    th = Thresholds()
    resume = th.start_timeout + th.healthy_timeout + th.target_healthy_timeout + th.drain_timeout
    assert _seconds(_one(unit, "Service", "TimeoutStartSec")) > resume


def test_network_stays_and_no_capability_is_granted(
    unit: dict[str, list[tuple[str, str]]],
) -> None:
    families = _one(unit, "Service", "RestrictAddressFamilies").split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)
    assert not _all(unit, "Service", "PrivateNetwork")
    assert not _all(unit, "Service", "IPAddressDeny")
    assert _one(unit, "Service", "CapabilityBoundingSet") == ""
    assert _one(unit, "Service", "AmbientCapabilities") == ""
    assert _one(unit, "Service", "NoNewPrivileges") == "yes"
