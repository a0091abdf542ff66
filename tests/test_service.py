"""`jupiterd run` as a process: systemd notify (READY, WATCHDOG, RELOADING,
STOPPING), /healthz, /status, /metrics, SIGHUP reload (bad file kept out,
good file applied), SIGTERM stopping cleanly, JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.peers.hostile import free_port


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.listen(64)
    yield s
    s.close()


def write_config(path: Path, port: int, http_port: int, state: Path, extra: dict | None = None):
    doc = {
        "aws": {"enabled": False},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "state_dir": str(state),
        "log": {"format": "json"},
        "defaults": {"interval": 0.2, "fast_interval": 0.05, "timeout": 0.1, "jitter": 0},
        "services": {
            "signaling": {
                "probe": {"kind": "tcp", "port": port},
                "primary": {"address": "127.0.0.2"},
                "backup": {"address": "127.0.0.3"},
            },
            **(extra or {}),
        },
    }
    path.write_text(yaml.safe_dump(doc))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait(cond, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Notify:
    """The systemd side of sd_notify: a datagram socket that collects messages."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def seen(self, field: str) -> bool:
        return any(field in m.split("\n") for m in self.drain())


def test_daemon_lifecycle(tmp_path, listener):
    port = listener.getsockname()[1]
    http_port = free_port()
    cfg = tmp_path / "jupiterd.yaml"
    write_config(cfg, port, http_port, tmp_path / "state")
    notify = Notify(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "3000000"}
    env.pop("WATCHDOG_PID", None)
    out = open(tmp_path / "stdout.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupiterd", "--config", str(cfg)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait(lambda: notify.seen("READY=1"), what="READY=1")
        assert get(f"{base}/healthz") == (200, "ok\n")
        wait(
            lambda: (
                json.loads(get(f"{base}/status")[1])["services"]["signaling"]["targets"]["primary"][
                    "state"
                ]
                == "up"
            ),
            what="primary up",
        )
        wait(lambda: notify.seen("WATCHDOG=1"), what="WATCHDOG=1")
        status, text = get(f"{base}/metrics")
        assert status == 200 and 'jupiterd_service_up{service="signaling"} 1.0' in text

        # A broken file: kept out, error exported, daemon still serving.
        cfg.write_text("services: [broken\n")
        notify.messages.clear()
        proc.send_signal(signal.SIGHUP)
        wait(
            lambda: "jupiterd_config_last_reload_successful 0.0" in get(f"{base}/metrics")[1],
            what="reload failure exported",
        )
        assert notify.seen("RELOADING=1") and notify.seen("READY=1")
        doc = json.loads(get(f"{base}/status")[1])
        assert doc["config"]["last_reload"]["ok"] is False
        assert "YAML syntax error" in doc["config"]["last_reload"]["error"]
        assert list(doc["services"]) == ["signaling"]

        # A good file with one more service: applied.
        write_config(
            cfg,
            port,
            http_port,
            tmp_path / "state",
            extra={
                "frp": {
                    "probe": {"kind": "tcp", "port": port},
                    "primary": {"address": "127.0.0.2"},
                    "backup": {"address": "127.0.0.3"},
                }
            },
        )
        proc.send_signal(signal.SIGHUP)
        wait(
            lambda: "frp" in json.loads(get(f"{base}/status")[1])["services"],
            what="the new service",
        )
        assert "jupiterd_config_last_reload_successful 1.0" in get(f"{base}/metrics")[1]

        notify.messages.clear()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 5
        assert notify.seen("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    lines = (tmp_path / "stdout.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert events, "JSON log lines on stdout"
    names = {e["event"] for e in events}
    assert {
        "started",
        "target state",
        "configuration reloaded",
        "configuration reload failed; keeping the running configuration",
        "stopped",
    } <= names
    up = next(e for e in events if e["event"] == "target state" and e["new"] == "up")
    assert up["service"] == "signaling" and up["role"] == "primary" and up["reason"]


def _samples(base: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(get(f"{base}/metrics")[1]):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


ALIAS_BOMB = "".join(
    [
        "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
        *(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)),
    ]
)


@pytest.mark.slow
def test_reload_keeps_the_running_config_whatever_the_new_file(tmp_path, listener):
    """SIGHUP with a file that is not UTF-8, one nested 50,000 deep, an
    alias bomb, or a directory: the process stays up on the old
    configuration (still probing), exports 0, logs one line per attempt."""
    port = listener.getsockname()[1]
    http_port = free_port()
    cfg = tmp_path / "jupiterd.yaml"
    write_config(cfg, port, http_port, tmp_path / "state")
    good = cfg.read_bytes()
    assert b"jitter: 0\n" in good
    bad = {
        "not UTF-8 text (an invalid byte at line": good + b"# caf\xe9\n",
        "nested more than 64 levels deep": good + b"x: " + b"[" * 50000 + b"]" * 50000,
        "expands to more than 50,000 values": ALIAS_BOMB.encode()
        + good.replace(b"jitter: 0\n", b"jitter: *a9\n"),
        "cannot read: Is a directory": None,
    }
    out = open(tmp_path / "stdout.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupiterd", "--config", str(cfg)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{http_port}"
    probes = {"name": "jupiterd_probe_results_total", "service": "signaling"}
    try:
        wait(lambda: _up(base) and _samples(base, **probes) > 0, what="probing")
        for n, (sentence, data) in enumerate(bad.items(), start=1):
            if data is None:
                cfg.unlink()
                cfg.mkdir()
            else:
                cfg.write_bytes(data)
            proc.send_signal(signal.SIGHUP)
            wait(
                lambda n=n: _samples(base, "jupiterd_config_reloads_total", result="failure") == n,
                what=f"reload failure {n}",
            )
            assert proc.poll() is None
            assert _samples(base, "jupiterd_config_last_reload_successful") == 0
            doc = json.loads(get(f"{base}/status")[1])
            assert sentence in doc["config"]["last_reload"]["error"]
            assert list(doc["services"]) == ["signaling"]
            seen = _samples(base, **probes)
            wait(lambda seen=seen: _samples(base, **probes) > seen, what="the old config probing")
            if data is None:
                cfg.rmdir()
        cfg.write_bytes(good)
        proc.send_signal(signal.SIGHUP)
        wait(
            lambda: _samples(base, "jupiterd_config_last_reload_successful") == 1,
            what="a good file applied",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    text = (tmp_path / "stdout.log").read_text()
    assert "Traceback" not in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"].startswith("configuration reload failed")]
    assert len(failed) == len(bad)
    for event, sentence in zip(failed, bad, strict=True):
        assert sentence in event["error"] and len(event["error"]) < 500


def test_second_daemon_on_the_same_port_fails_clearly(tmp_path, listener):
    port = listener.getsockname()[1]
    http_port = free_port()
    cfg = tmp_path / "jupiterd.yaml"
    write_config(cfg, port, http_port, tmp_path / "state")
    busy = socket.socket()
    busy.bind(("127.0.0.1", http_port))
    busy.listen()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "jupiterd", "run", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        busy.close()
    assert r.returncode == 1
    assert "cannot listen" in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_secrets_stay_out_of_status_metrics_and_logs(tmp_path):
    http_port = free_port()
    closed = free_port()
    secret_file = tmp_path / "frp.token"
    secret_file.write_text("frp-token-from-a-file-XYZ\n")
    doc = {
        "aws": {"enabled": False},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "state_dir": str(tmp_path / "state"),
        "log": {"format": "json", "level": "debug"},
        "defaults": {"interval": 0.2, "fast_interval": 0.05, "timeout": 0.1, "jitter": 0},
        "services": {
            "coturn": {
                "probe": {
                    "kind": "turn",
                    "port": closed,
                    "options": {"secret": {"env": "SECRET_UNDER_TEST"}},
                },
                "primary": {"address": "127.0.0.2"},
            },
            "frp": {
                "probe": {
                    "kind": "frp",
                    "port": closed,
                    "options": {"token": {"file": str(secret_file)}},
                },
                "primary": {"address": "127.0.0.2"},
            },
            "thingsboard": {
                "probe": {
                    "kind": "thingsboard",
                    "port": closed,
                    "options": {"username": "u", "password": "tb-pass-XYZ"},
                },
                "primary": {"address": "127.0.0.2"},
            },
        },
    }
    cfg = tmp_path / "jupiterd.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "SECRET_UNDER_TEST": "turn-secret-XYZ"}
    out = tmp_path / "out.log"
    with open(out, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupiterd", "--config", str(cfg)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            base = f"http://127.0.0.1:{http_port}"
            wait(
                lambda: get(f"{base}/healthz")[0] == 200 if _up(base) else False, what="the daemon"
            )
            wait(
                lambda: (
                    json.loads(get(f"{base}/status")[1])["services"]["frp"]["targets"]["primary"][
                        "state"
                    ]
                    == "down"
                ),
                what="probes failing",
            )
            texts = [get(f"{base}/status")[1], get(f"{base}/metrics")[1]]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    texts.append(out.read_text())
    for text in texts:
        for secret in ("turn-secret-XYZ", "frp-token-from-a-file-XYZ", "tb-pass-XYZ"):
            assert secret not in text


def _up(base: str) -> bool:
    try:
        get(f"{base}/healthz")
    except OSError:
        return False
    return True


def test_pause_works_without_the_probe_secrets(tmp_path, listener):
    """pause/resume only need http.listen: a shell without the daemon's
    secrets must still be able to pause it."""
    http_port = free_port()
    cfg = tmp_path / "jupiterd.yaml"
    write_config(
        cfg,
        listener.getsockname()[1],
        http_port,
        tmp_path / "state",
        extra={
            "coturn": {
                "probe": {"kind": "turn", "options": {"secret": {"env": "TURN_SECRET_X"}}},
                "primary": {"address": "127.0.0.2"},
            }
        },
    )
    env = {**os.environ, "TURN_SECRET_X": "s"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupiterd", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{http_port}"
        wait(lambda: _up(base), what="the daemon")
        bare = {k: v for k, v in os.environ.items() if k != "TURN_SECRET_X"}
        r = subprocess.run(
            [sys.executable, "-m", "jupiterd", "pause", "--config", str(cfg), "--by", "oncall"],
            capture_output=True,
            text=True,
            env=bare,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(get(f"{base}/status")[1])["pause_reason"] == "paused by oncall"
        r = subprocess.run(
            [sys.executable, "-m", "jupiterd", "check-config", str(cfg)],
            capture_output=True,
            text=True,
            env=bare,
            timeout=30,
        )
        assert r.returncode == 78
        assert (
            "coturn.probe.options.secret.env: the environment variable named here is not set"
            in (r.stderr)
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
