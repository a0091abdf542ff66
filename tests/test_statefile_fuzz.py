"""A seeded mutator over valid state files (pause flag, journal, models
cache): byte flips, truncation, wrong types, huge values, deep nesting,
non-UTF-8, non-finite numbers, garbage lines, links and directories in place
of files. Every case ends in valid data or "damaged, moved aside" (with the
services a damaged journal may concern held), never an exception; a few real
daemon starts and CLI runs on damaged files end without a traceback, with
the documented exit codes.

Run against the readers before the state files' reader existed, the same
mutator crashed one case in ten (RecursionError from deep nesting, and
TypeError/ValueError from a journal record's wrongly-typed field)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import jupiterd.aws.models as awsmod
from jupiterd.runtime.pause import PAUSE_FILE, PAUSE_MAX_BYTES, parse_pause
from jupiterd.state import statefile
from jupiterd.state.journal import JOURNAL_NAME, Journal, held_services
from tests.peers.hostile import free_port
from tests.test_service import get, wait

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ["web", "api"]

WEIRD: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    10**30,
    "",
    "x" * 5000,
    [],
    {},
    [1, [2]],
    {"a": {"b": 1}},
    "\x00\x1b[31m",
    1e308,
]


def _wrong_type(doc: Any, rng: random.Random) -> Any:
    if isinstance(doc, dict) and doc:
        k = rng.choice(sorted(doc))
        return {**doc, k: rng.choice(WEIRD)}
    return rng.choice(WEIRD)


def mutate(valid: bytes, rng: random.Random) -> bytes | str:
    """Mutated content, or "symlink" / "directory" / "fifo" for a thing
    planted in place of the file."""
    op = rng.randrange(13)
    b = bytearray(valid)
    if op == 0 and b:  # byte flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op == 1:  # truncation
        return bytes(b[: rng.randrange(len(b) + 1)])
    if op == 2:  # non-UTF-8
        i = rng.randrange(len(b) + 1)
        return bytes(b[:i]) + bytes([rng.choice([0x80, 0xC3, 0xFF, 0xFE])]) + bytes(b[i:])
    if op == 3:  # huge values
        return json.dumps({"by": "x" * rng.choice([10**3, 10**5, 10**6]), "at": 1e308}).encode()
    if op == 4:  # deep nesting
        n = rng.choice([1000, 100000])
        return b"[" * n + b"]" * n
    if op == 5:  # non-finite numbers
        return valid.replace(b"1", b"NaN", 1) if b"1" in valid else b"Infinity"
    if op == 6:  # a garbage line somewhere
        lines = valid.split(b"\n")
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        lines.insert(rng.randrange(len(lines) + 1), junk)
        return b"\n".join(lines)
    if op == 7:
        return rng.choice(["symlink", "directory", "fifo"])
    # wrong types, per JSON line
    out = []
    for line in valid.split(b"\n"):
        try:
            doc = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if rng.random() < 0.5:
            doc = _wrong_type(doc, rng)
        out.append(json.dumps(doc).encode())
    return b"\n".join(out)


def _plant(path: Path, what: bytes | str, outside: Path) -> None:
    if what == "symlink":
        path.symlink_to(outside)
    elif what == "directory":
        path.mkdir()
        (path / "x").write_text("x")
    elif what == "fifo":
        os.mkfifo(path)
    else:
        assert isinstance(what, bytes)
        path.write_bytes(what)


def _fresh(state: Path) -> None:
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()


def _valid_journal(tmp: Path) -> bytes:
    j = Journal(tmp)
    a = j.start_plan("web", "primary", "backup", "primary down", "daemon", "stopped")
    b = j.start_plan("api", "backup", "primary", "failback", "cli", "running")
    j.begin(a.id, "start_standby")
    j.end(a.id, "start_standby", True, 12.5, "started", {"started": True})
    j.begin(b.id, "register_target")
    j.end(b.id, "register_target", False, 0.25, "denied")
    j.rollback(b.id, "denied")
    j.result(b.id, "aborted", "denied")
    j.done(b.id)
    j.begin(a.id, "standby_healthy")
    j.close()
    return (tmp / JOURNAL_NAME).read_bytes()


def _run_cases(
    tmp_path: Path,
    seed: int,
    n: int,
    valid: bytes,
    name: str,
    check: Callable[[Path], str],
) -> Counter[str]:
    rng = random.Random(seed)
    state = tmp_path / "state"
    outside = tmp_path / "outside"
    outside.write_bytes(valid)
    outcomes: Counter[str] = Counter()
    for i in range(n):
        _fresh(state)
        what = mutate(valid, rng)
        _plant(state / name, what, outside)
        try:
            outcomes[check(state)] += 1
        except Exception as exc:  # the property under test: never an exception
            raise AssertionError(f"case {i} (seed {seed}): {what!r:.200}: {exc!r}") from exc
        assert outside.read_bytes() == valid, f"case {i}: the link was followed"
    return outcomes


def _damaged(state: Path, name: str) -> str:
    assert not os.path.lexists(state / name), "a damaged file stays in place"
    [moved] = statefile.evidence(state)
    assert moved.name.startswith(name + statefile.DAMAGED)
    return "damaged"


@pytest.mark.slow
def test_fuzz_pause_flag(tmp_path: Path):
    valid = json.dumps({"by": "alice", "at": 1.7e9}).encode()

    def check(state: Path) -> str:
        path = state / PAUSE_FILE
        try:
            by = statefile.read(path, statefile.PAUSE_FLAG, parse_pause, PAUSE_MAX_BYTES)
        except statefile.Damaged:
            return _damaged(state, PAUSE_FILE)
        assert isinstance(by, str) and 0 < len(by) <= 100
        assert not any(ord(c) < 32 for c in by)
        assert statefile.evidence(state) == []
        return "valid"

    out = _run_cases(tmp_path, 1, 1200, valid, PAUSE_FILE, check)
    assert out["damaged"] > 500 and out["valid"] > 20, out


@pytest.mark.slow
def test_fuzz_journal(tmp_path: Path):
    valid = _valid_journal(tmp_path / "made")

    def check(state: Path) -> str:
        plans = Journal(state).read()
        held = held_services(state, SERVICES)
        # A held service never has a plan to resume; a moved-aside journal
        # always holds something.
        assert not [p for p in plans if p.service in held]
        evidence = statefile.evidence(state)
        if evidence:
            assert held, "damage that holds nothing"
            assert len(evidence) == 1
            # Read again: the same plans, no new damage.
            assert [p.id for p in Journal(state).read()] == [p.id for p in plans]
            assert statefile.evidence(state) == evidence
            return "damaged"
        assert not held
        return "valid"

    out = _run_cases(tmp_path, 2, 1500, valid, JOURNAL_NAME, check)
    assert out["damaged"] > 500 and out["valid"] > 50, out


@pytest.mark.slow
def test_fuzz_models_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    made_dir = tmp_path / "made"
    made_dir.mkdir()
    monkeypatch.setattr(awsmod, "_pruned", None)
    awsmod.pruned_models(made_dir)
    name = awsmod.models_cache_file(made_dir).name
    valid = (made_dir / name).read_bytes()
    reference = json.loads(valid)["models"]

    def check(state: Path) -> str:
        models = awsmod._read_cache(state / name)
        if models is None:
            return _damaged(state, name)
        assert models == reference
        return "valid"

    out = _run_cases(tmp_path, 3, 400, valid, name, check)
    assert out["damaged"] > 300, out


# --------------------------------------------------------------------------- real processes


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }


def _config(tmp_path: Path, state: Path, aws: bool) -> tuple[Path, int]:
    port = free_port()
    doc: dict[str, Any] = {
        "http": {"listen": f"127.0.0.1:{port}"},
        "state_dir": str(state),
        "log": {"format": "json"},
        "services": {
            n: {
                "probe": {"kind": "tcp", "port": free_port()},
                # One instance is the primary of one service only (pools share backups).
                "primary": {"address": "127.0.0.2", "instance_id": f"i-0123456789abcde{i}0"},
                "backup": {"address": "127.0.0.3", "instance_id": f"i-0123456789abcde{i}1"},
            }
            for i, n in enumerate(SERVICES)
        },
    }
    # AWS: a closed loopback port, so nothing leaves the host.
    doc["aws"] = (
        {"endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1}
        if aws
        else {"enabled": False}
    )
    cfg = tmp_path / f"jupiterd-{port}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg, port


def _damage_all(state: Path, rng: random.Random, journal: bytes) -> None:
    _fresh(state)
    for name, valid in ((PAUSE_FILE, b'{"by": "alice", "at": 1.0}'), (JOURNAL_NAME, journal)):
        what = b""
        while not what or isinstance(what, str):
            what = mutate(valid, rng)
        # Something that is certainly damage: a wrongly-typed field at the end.
        (state / name).write_bytes(what + b'\n{"t": "end", "id": 5, "at": []}\n')


@pytest.mark.slow
def test_real_daemon_starts_on_damaged_state_files(tmp_path: Path):
    rng = random.Random(4)
    journal = _valid_journal(tmp_path / "made")
    for _ in range(2):
        state = tmp_path / "state"
        _damage_all(state, rng, journal)
        cfg, port = _config(tmp_path, state, aws=False)
        out = tmp_path / "out.log"
        with open(out, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jupiterd", "run", "--config", str(cfg)],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=_env(),
            )
            try:
                base = f"http://127.0.0.1:{port}"
                wait(lambda base=base: _up(base), what="the daemon")
                doc = json.loads(get(f"{base}/status")[1])
                assert doc["paused"] and "pause flag was damaged" in doc["pause_reason"]
                kinds = sorted(f["file"] for f in doc["state_files"]["damaged"])
                assert kinds == ["journal", "pause_flag"]
                for name in SERVICES:
                    assert doc["services"][name]["hold"]["guard"] == "journal_damaged"
                metrics = get(f"{base}/metrics")[1]
                assert 'jupiterd_state_file_damaged{file="journal"} 1.0' in metrics
                assert 'jupiterd_hold_active{guard="journal_damaged",service="web"} 1.0' in metrics
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(15)
        text = out.read_text()
        assert code == 0 and "Traceback" not in text
        assert text.count('"state file damaged; moved aside"') == 2


@pytest.mark.slow
def test_real_cli_runs_on_damaged_state_files(tmp_path: Path):
    rng = random.Random(5)
    journal = _valid_journal(tmp_path / "made")
    state = tmp_path / "state"
    _damage_all(state, rng, journal)
    cfg, _ = _config(tmp_path, state, aws=True)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "jupiterd", *args, "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(),
        )
        assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
        return r

    # A dry run changes nothing, not even the journal; it says what a real run would do.
    r = cli("failover", "web", "--dry-run")
    assert r.returncode == 1 and "a real run would be held" in r.stdout
    assert os.path.exists(state / JOURNAL_NAME)
    r = cli("status")
    assert r.returncode == 1  # AWS cannot be read (a closed port): exit 1, one sentence
    r = cli("failover", "web")
    assert r.returncode == 1 and "journal was damaged" in r.stdout
    r = cli("failover-all", "--dry-run")
    assert r.returncode == 1 and r.stdout.count("refused: the journal was damaged") == 2
    r = cli("state-files")
    assert r.returncode == 1 and "journal: damaged" in r.stdout
    r = cli("state-files", "ack")
    assert r.returncode == 0


def _up(base: str) -> bool:
    try:
        return get(f"{base}/healthz")[0] == 200
    except OSError:
        return False
