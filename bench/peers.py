"""Processes for the benchmarks: peers (their CPU is then not counted in the
measured process, with the same runner the tests use), `jupiterd run` as a
real process, and what /proc says about a process (CPU seconds, RSS).

CPU pinning: on a machine with two or more cores the measured process gets
core 0 and the load generators (listeners, drivers) the others, so "on one
core" means what it says. ``--no-pin`` on the scripts turns it off.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from jupiterd.sandbox.peers.process import Peer, peer
from tests.peers.commands import ROOT, node_peer
from tests.peers.hostile import free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
MEASURED_CPU = 0  # the core the measured process runs on when pinning


def helper_cpus() -> set[int]:
    """Cores for load generators: all but the measured one (all if only one)."""
    cpus = set(os.sched_getaffinity(0))
    rest = cpus - {MEASURED_CPU}
    return rest or cpus


def taskset(cmd: list[str], cpus: set[int] | None) -> list[str]:
    """``cmd`` run on ``cpus`` (as it is when None)."""
    return cmd if cpus is None else ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank); nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


@contextlib.contextmanager
def spawn(cmd: list[str], timeout: float = 20.0, cpus: set[int] | None = None) -> Iterator[str]:
    """Yield the address (or addresses) a peer printed after `ready`."""
    with peer_process(cmd, timeout, cpus) as p:
        yield " ".join(p.addresses)


@contextlib.contextmanager
def peer_process(
    cmd: list[str], timeout: float = 20.0, cpus: set[int] | None = None
) -> Iterator[Peer]:
    with peer(taskset(cmd, cpus), timeout) as p:
        yield p


def node_sio(*args: str) -> list[str]:
    return node_peer("sio_server.js", *args)


def bench_script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / name), *args]


def report_line(p: Peer, timeout: float = 5.0) -> str:
    """SIGUSR1 to a peer that answers with one line on stdout ("" if none
    comes within ``timeout``)."""
    import select
    import signal

    os.kill(p.proc.pid, signal.SIGUSR1)
    assert p.proc.stdout is not None
    ready, _, _ = select.select([p.proc.stdout], [], [], timeout)
    return p.proc.stdout.readline() if ready else ""


def served(p: Peer, timeout: float = 5.0) -> int:
    """Ask bench/listeners.py how many probes it has served."""
    line = report_line(p, timeout)
    if not line.startswith("served "):
        raise RuntimeError(f"listeners did not report: {line!r}")
    return int(line.split()[1])


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- jupiterd


def services_for(
    kind: str, addrs: list[str], count: int, options: dict[str, Any] | None = None, **probe: Any
) -> dict[str, Any]:
    """``count`` services of one kind spread over ``addrs`` (host:port each).
    Monitor-only mode probes the primary; the backup is assumed stopped."""
    out: dict[str, Any] = {}
    for i in range(count):
        host, port = addrs[i % len(addrs)].rsplit(":", 1)
        p: dict[str, Any] = {"kind": kind, "port": int(port), **probe}
        if options:
            p["options"] = options
        out[f"s{i}"] = {
            "probe": p,
            "primary": {"address": host},
            "backup": {"address": host},
        }
    return out


def daemon_config(
    services: dict[str, Any], state_dir: str, http_port: int, **defaults: Any
) -> dict[str, Any]:
    """A loopback-only, monitor-only configuration: no AWS calls at all."""
    return {
        "aws": {"enabled": False},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "state_dir": state_dir,
        "log": {"level": "info", "format": "json"},
        "guards": {"isolation": {"enabled": False}},
        "defaults": defaults,
        "services": services,
    }


class Daemon:
    """`jupiterd run` as a process with a generated configuration."""

    def __init__(
        self,
        services: dict[str, Any],
        *,
        cpus: set[int] | None = None,
        defaults: dict[str, Any] | None = None,
        doc: dict[str, Any] | None = None,
        state_dir: str | None = None,
    ) -> None:
        """``doc``: a whole configuration to run instead of the generated
        monitor-only one; its ``http`` and ``state_dir`` are replaced.
        ``state_dir``: one that outlives this daemon (a restart's)."""
        self.tmp = tempfile.TemporaryDirectory(prefix="jupiterd-bench-")
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        state = Path(state_dir) if state_dir is not None else Path(self.tmp.name) / "state"
        self.config_path = Path(self.tmp.name) / "jupiterd.yaml"
        if doc is None:
            doc = daemon_config(services, str(state), self.http_port, **(defaults or {}))
        else:
            doc = {
                **doc,
                "http": {"listen": f"127.0.0.1:{self.http_port}"},
                "state_dir": str(state),
            }
        self.config_path.write_text(yaml.safe_dump(doc))
        self.log_path = Path(self.tmp.name) / "jupiterd.log"
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.exec_at = 0.0  # time.monotonic() just before exec

    def start(self) -> None:
        cmd = [sys.executable, "-m", "jupiterd", "run", "--config", str(self.config_path)]
        cmd = taskset(cmd, self.cpus)
        log = open(self.log_path, "wb")  # noqa: SIM115 (kept for the process's lifetime)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["PYTHONPATH"] = str(ROOT)
        self.exec_at = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str, timeout: float = 10.0) -> str:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return str(r.read().decode())

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Until /healthz answers; returns the seconds since exec."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupiterd exited {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                self.get("/healthz", 1.0)
                return time.monotonic() - self.exec_at
            time.sleep(0.02)
        raise RuntimeError(f"jupiterd did not become ready:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics: ``name{labels}`` -> value (labels sorted)."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(self.get("/metrics")):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.tmp.cleanup()

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def total(samples: dict[str, float], name: str, **match: str) -> float:
    """Sum of the samples of one metric whose labels include ``match``."""
    want = {f"{k}={v}" for k, v in match.items()}
    s = 0.0
    for key, value in samples.items():
        if key.startswith(name + "{") and want <= set(key[len(name) + 1 : -1].split(",")):
            s += value
    return s
