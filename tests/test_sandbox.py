"""`jupiterd sandbox`: the drill of every service (failover, then failback)
is the project's end-to-end test; the interactive sandbox starts and stops
cleanly, leaving no process, port or namespace behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sandbox")]

PORTS = (3000, 3478, 7000, 8080, 9478, 9479)


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    kids: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = (int(x) for x in line.split())
        kids.setdefault(pp, []).append(p)
    todo, found = [pid], []
    while todo:
        for k in kids.get(todo.pop(), []):
            found.append(k)
            todo.append(k)
    return found


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _netns() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith("jsbx")]


def test_drill_every_service_fails_over_and_back():
    r = subprocess.run(
        [sys.executable, "-m", "jupiterd", "sandbox", "--drill", "all", "--failback", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    reports = json.loads(r.stdout)
    names = [rep["service"] for rep in reports]
    expected = {"signaling", "coturn", "frp", "thingsboard"}
    if os.geteuid() == 0:
        expected.add("nat")
    assert set(names) == expected
    for rep in reports:
        assert rep["ok"], json.dumps(rep, indent=1)
        assert {"service", "ok", "detect_seconds", "failover_seconds", "steps"} <= rep.keys()
        assert [p["direction"] for p in rep["phases"]] == ["failover", "failback"]
        events = [e["event"] for e in rep["timeline"]]
        assert events[0].startswith("break:")
        assert any(e.startswith("first failed probe") for e in events)
        assert any("-> down" in e for e in events)
        assert any(e.startswith("failover decision") for e in events)
        assert any(e.startswith("traffic restored") for e in events)
        step_names = [s["name"] for s in rep["steps"]]
        assert step_names[0] == "preflight" and "standby_healthy" in step_names
        assert step_names[-1] == "notify"
        checks = {c["name"] for c in rep["checks"]}
        assert {
            "backup instance running",
            "primary instance stopped",
            "SNS got the summary",
            "answers at its public attachment",
        } <= checks
        assert 0 < rep["detect_seconds"] < 30 and 0 < rep["failover_seconds"] < 120
    assert "sandbox stopped" in r.stderr


def test_interactive_sandbox_starts_and_stops_cleanly():
    before_ns = set(_netns())
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupiterd", "sandbox"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        assert "Ctrl-C stops everything" in text, text
        assert "curl -s http://127.0.0.1:" in text and "/break/signaling" in text
        children = _children_of(proc.pid)
        assert len(children) >= 5  # moto and the primaries' services
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "sandbox stopped" in rest
    time.sleep(0.5)
    alive = [p for p in children if os.path.exists(f"/proc/{p}")]
    assert not alive, f"left behind: {alive}"
    for port in PORTS:
        assert not _listening(port), f"port {port} still listening"
    assert set(_netns()) <= before_ns
