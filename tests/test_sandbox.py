"""`jupiterd sandbox`: the drill of every service (failover, then failback)
is the project's end-to-end test; the interactive sandbox starts and stops
cleanly, leaving no process, port or namespace behind, however it is
stopped: Ctrl-C, SIGTERM, its terminal closed, its output pipe closed, or
SIGKILL (then the next start removes its namespaces)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jupiterd.sandbox.stack import NETNS_PREFIX, process_start, remove_stale_namespaces

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sandbox")]

ROOT = Path(__file__).resolve().parent.parent
BANNER_END = "Ctrl-C stops everything"
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="the sandbox's NAT namespaces need root (ip netns add)"
)


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, session, start time) of a process, None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = stat[stat.rindex(")") + 2 :].split()
    return f[0], int(f[1]), int(f[3]), int(f[19])


def _processes() -> dict[int, tuple[str, int, int, int]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            found[int(entry)] = st
    return found


@dataclass
class Family:
    """A sandbox's descendants (pid and start time) and their sessions,
    read from /proc while it runs."""

    members: dict[int, int] = field(default_factory=dict)
    sessions: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, pid: int) -> Family:
        procs = _processes()
        fam, todo = cls(), [pid]
        while todo:
            parent = todo.pop()
            for child, (_, ppid, sid, start) in procs.items():
                if ppid == parent and child not in fam.members:
                    fam.members[child] = start
                    fam.sessions.add(sid)
                    todo.append(child)
        fam.sessions.discard(procs[pid][2])  # its own: the test's, or the pty's
        return fam

    def still_running(self) -> list[int]:
        """Members (same pid, same start) or members' session mates that still
        run; a zombie has stopped running."""
        return [
            pid
            for pid, (state, _, sid, start) in _processes().items()
            if state not in ("Z", "X") and (self.members.get(pid) == start or sid in self.sessions)
        ]


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


def _netns() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _its_netns(pid: int) -> list[str]:
    return [n for n in _netns() if n.startswith(f"{NETNS_PREFIX}{pid}-")]


def _endpoints(banner: str) -> set[tuple[str, int]]:
    """Every host:port the banner names: the API, the control port, moto,
    the front doors and each instance's service."""
    return {(h, int(p)) for h, p in re.findall(r"(127\.0\.0\.\d+):(\d+)", banner)}


def _service_endpoints(banner: str) -> set[tuple[str, int]]:
    """The instances' services and the front doors (the table's lines)."""
    table = "\n".join(line for line in banner.splitlines() if "front door" in line)
    return _endpoints(table)


@dataclass
class Sandbox:
    proc: subprocess.Popen[bytes]
    banner: str
    family: Family
    stderr_path: Path
    reader: int  # the reading end of its stdout (a pty's master with tty=True)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = 90) -> int:
        return self.proc.wait(timeout)

    def rest(self) -> str:
        """What it writes to stdout after the banner, up to its exit."""
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")


def _read_banner(fd: int, proc: subprocess.Popen[bytes], limit: float = 180) -> str:
    """Read the sandbox's output up to the end of its banner."""
    text = b""
    deadline = time.monotonic() + limit
    while BANNER_END.encode() not in text:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            break
        if select.select([fd], [], [], min(left, 1.0))[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty whose other side is closed
                break
            if not chunk:
                break
            text += chunk
    banner = text.decode(errors="replace")
    assert BANNER_END in banner, banner
    return banner


@contextlib.contextmanager
def sandbox(
    tmp_path: Path, *, tty: bool = False, name: str = "sandbox", args: tuple[str, ...] = ()
) -> Iterator[Sandbox]:
    """A `jupiterd sandbox` subprocess (with ``args``), up: stdout a pipe (or
    the controlling terminal, a pty, with ``tty``), stderr a file. Its
    stdout's reading end (the pty's master) is ``sb.reader``; killed on the
    way out whatever happened."""
    err_path = tmp_path / f"{name}.stderr"
    err = err_path.open("wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if tty:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupiterd", "sandbox", *args],
            stdin=slave,
            stdout=slave,
            stderr=err,
            env=env,
            cwd=ROOT,
            start_new_session=True,  # a session of its own, the pty its terminal
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        reader = master
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupiterd", "sandbox", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        reader = proc.stdout.fileno()
    err.close()
    try:
        banner = _read_banner(reader, proc)
        sb = Sandbox(proc, banner, Family.of(proc.pid), err_path, reader)
        assert len(sb.family.members) >= 5, sb.family  # moto and the primaries' services
        yield sb
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if tty:
            with contextlib.suppress(OSError):
                os.close(master)
        elif proc.stdout is not None:
            proc.stdout.close()


def _assert_cleaned_up(sb: Sandbox, *, namespaces: bool = True) -> None:
    """Nothing of the sandbox remains: no process, no listener, no namespace."""
    deadline = time.monotonic() + 15  # the kernel's kills land, the reaper reaps
    while (left := sb.family.still_running()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left behind: {left}"
    busy = [f"{h}:{p}" for h, p in sorted(_endpoints(sb.banner)) if _listening(h, p)]
    assert not busy, f"still listening: {busy}"
    if namespaces:
        assert not _its_netns(sb.proc.pid)


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
        expected |= {"nat-a", "nat-b", "nat-both"}
    assert set(names) == expected
    for rep in reports:
        assert rep["ok"], json.dumps(rep, indent=1)
        assert {"service", "ok", "detect_seconds", "failover_seconds", "steps"} <= rep.keys()
        members = ["nat-a", "nat-b"] if rep["service"] == "nat-both" else [rep["service"]]
        assert [(p["service"], p["direction"]) for p in rep["phases"]] == [
            *((m, "failover") for m in members),
            *((m, "failback") for m in members),
        ]
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
    if "nat-both" in names:
        _assert_nat_both(reports[names.index("nat-both")])
    assert "sandbox stopped" in r.stderr


def _assert_nat_both(rep: dict) -> None:
    """Both NAT instances broken one after the other: each one's route
    tables through a surviving NAT first (the second's through the backup,
    which already serves the first), then through the backup; the backup
    outlives the first failback and stops at the second."""
    a_fail, b_fail, a_back, b_back = rep["phases"]
    for ph, via in ((a_fail, "nat-b's instance"), (b_fail, "nat-a's standby")):
        names = [s["name"] for s in ph["steps"]]
        first = [s for s in ph["steps"] if s["name"].startswith("reroute_peer:")]
        assert first and all(s["ok"] and via in s["detail"] for s in first), ph["steps"]
        assert names.index(first[-1]["name"]) < names.index("start_standby")
    checks = {c["name"]: c for c in a_back["checks"]}
    assert checks["backup instance kept running"]["ok"]
    assert "nat-b's route table" in checks["backup instance kept running"]["detail"]
    assert {c["name"] for c in b_back["checks"]} >= {"backup instance stopped"}


def test_interactive_sandbox_starts_and_stops_cleanly(tmp_path):
    with sandbox(tmp_path) as sb:
        assert "curl -s http://127.0.0.1:" in sb.banner and "/break/signaling" in sb.banner
        sb.proc.send_signal(signal.SIGINT)
        rest = sb.rest()
        assert sb.wait() == 0, sb.stderr
    assert "stopping the sandbox (SIGINT)" in rest and "sandbox stopped" in rest
    assert "Traceback" not in sb.stderr
    _assert_cleaned_up(sb)


def test_sigterm_stops_everything(tmp_path):
    with sandbox(tmp_path) as sb:
        sb.proc.terminate()
        rest = sb.rest()
        assert sb.wait() == 0, sb.stderr
    assert "stopping the sandbox (SIGTERM)" in rest
    _assert_cleaned_up(sb)


def test_closing_its_terminal_stops_everything(tmp_path):
    """The terminal window closes: the kernel hangs the tty up, SIGHUP goes
    to the sandbox (the session leader), and writes to the tty fail (EIO)."""
    with sandbox(tmp_path, tty=True) as sb:
        os.close(sb.reader)
        assert sb.wait() == 0, sb.stderr
    assert "stopping the sandbox (SIGHUP)" in sb.stderr, sb.stderr
    assert "sandbox stopped" in sb.stderr and "Traceback" not in sb.stderr
    _assert_cleaned_up(sb)


def test_ctrl_c_after_its_output_pipe_closed_stops_everything(tmp_path):
    """`jupiterd sandbox | tee log`, then Ctrl-C: tee dies with the same
    SIGINT, so every later write to stdout fails (EPIPE)."""
    with sandbox(tmp_path) as sb:
        assert sb.proc.stdout is not None
        sb.proc.stdout.close()
        sb.proc.send_signal(signal.SIGINT)
        assert sb.wait() == 0, sb.stderr
    assert "sandbox stopped" in sb.stderr
    assert "Traceback" not in sb.stderr and "Exception ignored" not in sb.stderr, sb.stderr
    _assert_cleaned_up(sb)


def test_a_closed_output_pipe_alone_stops_everything(tmp_path):
    """`jupiterd sandbox | head`: the reader goes away and no signal comes."""
    with sandbox(tmp_path) as sb:
        assert sb.proc.stdout is not None
        sb.proc.stdout.close()
        assert sb.wait() == 0, sb.stderr
    assert "stopping the sandbox (stdout is closed" in sb.stderr, sb.stderr
    assert "Traceback" not in sb.stderr
    _assert_cleaned_up(sb)


@pytest.mark.timeout(400)
def test_sigkill_takes_its_processes_along_and_the_next_start_its_namespaces(tmp_path):
    root = os.geteuid() == 0
    with sandbox(tmp_path, name="first") as first:
        first.proc.kill()
        first.wait()
    # No process of it survives it: each had the kernel's parent-death signal.
    _assert_cleaned_up(first, namespaces=False)
    if root:
        left = _its_netns(first.proc.pid)
        assert len(left) == 3, left  # nothing could remove them...
    with sandbox(tmp_path, name="second") as second:
        if root:  # ...until the next start
            assert not _its_netns(first.proc.pid)
            for ns in left:
                assert f"removed {ns}, left by a sandbox that is no longer running" in second.banner
        # The first one's ports were free again: the second took the same ones.
        assert _service_endpoints(second.banner) == _service_endpoints(first.banner)
        second.proc.send_signal(signal.SIGINT)
        second.rest()
        assert second.wait() == 0, second.stderr
    _assert_cleaned_up(second)


@contextlib.contextmanager
def _planted(*namespaces: str, links: tuple[str, ...] = ()) -> Iterator[None]:
    """Namespaces and host veths as a test plants them, removed afterwards."""
    try:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        for link in links:
            subprocess.run(
                ["ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}n"],
                check=True,
                capture_output=True,
            )
        yield
    finally:
        for link in links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _inside(ns: str) -> subprocess.Popen[bytes]:
    """A process running in namespace ``ns``, as one a sandbox might leave;
    returned once ``ip netns pids`` lists it."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"], start_new_session=True)
    for _ in range(100):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        if str(proc.pid) in pids.stdout.split():
            return proc
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError(f"no process entered {ns}")


@ROOT_ONLY
def test_stale_namespaces_are_those_of_sandboxes_no_longer_running():
    dead, me = _dead_pid(), os.getpid()
    started = process_start(me)
    assert started is not None
    stale = f"{NETNS_PREFIX}{dead}-{started}-primary"
    reused = f"{NETNS_PREFIX}{me}-{started - 1}-backup"  # the pid now runs something else
    live = f"{NETNS_PREFIX}{me}-{started}-primary"  # a running sandbox's: this process
    other = f"jt-sbx-other-{me}"  # not a sandbox's
    lookalike = f"{NETNS_PREFIX}{dead}-{started}-primary-mine"
    with _planted(stale, reused, live, other, lookalike, links=(f"jsbx{dead}p", "jsbx1b")):
        sleeper = _inside(stale)
        try:
            removed = remove_stale_namespaces()
            assert sleeper.wait(10) == -signal.SIGKILL
        finally:
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()
        assert sorted(removed) == sorted([stale, reused, f"jsbx{dead}p"])
        assert {live, other, lookalike} <= set(_netns())
        assert not {stale, reused} & set(_netns())
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert " jsbx1b@" in links and f" jsbx{dead}p@" not in links


@ROOT_ONLY
def test_a_start_removes_the_namespaces_a_dead_sandbox_left(tmp_path):
    dead = _dead_pid()
    stale, other = f"{NETNS_PREFIX}{dead}-1-primary", f"jt-sbx-other-{os.getpid()}"
    with _planted(stale, other):
        sleeper = _inside(stale)
        try:
            with sandbox(tmp_path) as sb:
                assert stale not in _netns()
                assert f"removed {stale}, left by a sandbox" in sb.banner
                assert sleeper.wait(10) == -signal.SIGKILL
                assert other in _netns()
                assert len(_its_netns(sb.proc.pid)) == 3  # its own (two NAT, a backup)
                sb.proc.send_signal(signal.SIGINT)
                sb.rest()
                assert sb.wait() == 0, sb.stderr
        finally:
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()
    _assert_cleaned_up(sb)
