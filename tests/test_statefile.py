"""The state files (pause flag, journal, plan and daemon locks, models cache)
through their one guarded reader: damage is moved aside, named, exported and
survived; links planted in the state directory are never followed; one
daemon per state directory; a pause that cannot be saved says so."""

from __future__ import annotations

import asyncio
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from jupiterd.aws.executor import AwsExecutor
from jupiterd.config import parse_config
from jupiterd.core.execution import FailoverRequest
from jupiterd.core.health import Guard
from jupiterd.core.inventory import StaticInventory
from jupiterd.core.types import Role
from jupiterd.runtime.supervisor import PAUSE_FILE, Supervisor
from jupiterd.state import statefile
from jupiterd.state.journal import JOURNAL_NAME, LOCK_NAME, Journal, PlanLock, held_services
from jupiterd.telemetry.metrics import Metrics
from tests.daemon_helpers import FakeExecutor, config_for, wait_for
from tests.peers.hostile import free_port
from tests.test_service import get, wait

ROOT = Path(__file__).resolve().parent.parent

API_POST = {"X-Jupiterd-Request": "1"}  # what the CLI sends with a POST


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _supervisor(state: Path, services: tuple[str, ...] = ("web",), **kw: Any) -> Supervisor:
    cfg = config_for(
        {
            n: {
                "probe": {"kind": "tcp", "port": free_port()},
                "primary": {"address": "127.0.0.2"},
                "backup": {"address": "127.0.0.3"},
            }
            for n in services
        },
        str(state),
    )
    return Supervisor(
        cfg,
        executor=kw.get("executor") or FakeExecutor(),
        inventory=StaticInventory(cfg),
        metrics=Metrics(CollectorRegistry()),
        rng=random.Random(1),
        tick_seconds=0.05,
    )


def _sample(sup: Supervisor, name: str, **labels: str) -> float | None:
    return sup.metrics.registry.get_sample_value(name, labels)


# --------------------------------------------------------------------------- the reader


def _parse_ok(data: bytes) -> Any:
    doc = statefile.loads(data)
    if not isinstance(doc, dict):
        raise statefile.Invalid("not a JSON object")
    return doc


def test_reader_reads_a_valid_file_and_none_when_absent(tmp_path: Path):
    p = tmp_path / "f"
    assert statefile.read(p, "pause_flag", _parse_ok, 100) is None
    p.write_text('{"a": 1}')
    assert statefile.read(p, "pause_flag", _parse_ok, 100) == {"a": 1}
    assert statefile.evidence(tmp_path) == []


@pytest.mark.parametrize(
    "plant",
    ["symlink", "directory", "fifo", "oversize", "not-utf8", "nan", "deep", "wrong-type"],
)
def test_reader_moves_damage_aside_and_never_follows_a_link(tmp_path: Path, plant: str):
    state = tmp_path / "state"
    state.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text('{"a": 1}')
    p = state / "paused"
    if plant == "symlink":
        p.symlink_to(outside)
    elif plant == "directory":
        p.mkdir()
    elif plant == "fifo":
        os.mkfifo(p)
    else:
        p.write_bytes(
            {
                "oversize": b'{"a": "' + b"x" * 200 + b'"}',
                "not-utf8": b'{"a": "\xff"}',
                "nan": b'{"a": NaN}',
                "deep": b"[" * 100000 + b"]" * 100000,
                "wrong-type": b"[1, 2]",
            }[plant]
        )
    with pytest.raises(statefile.Damaged) as err:
        statefile.read(p, statefile.PAUSE_FLAG, _parse_ok, 100)
    assert err.value.moved_to is not None and err.value.moved_to.parent == state
    assert not os.path.lexists(p)
    [moved] = statefile.evidence(state)
    assert moved == err.value.moved_to and moved.name.startswith("paused.damaged-")
    assert outside.read_text() == '{"a": 1}'  # a link is renamed, never followed
    assert statefile.summary(state)[0]["file"] == "pause_flag"
    assert statefile.acknowledge(state) == [moved]
    assert statefile.evidence(state) == [] and moved.with_name(moved.name + ".acked").exists()


# --------------------------------------------------------------------------- pause flag


@pytest.mark.parametrize(
    "content",
    [b"[]", b'{"by": 5, "at": 1}', b'{"by": "alice"}', b"\x00\xff", b""],
    ids=["list", "by-not-text", "no-at", "binary", "empty"],
)
async def test_a_damaged_pause_flag_starts_paused_and_says_why(tmp_path: Path, content: bytes):
    """Before: `[]` crashed every start (AttributeError), the others were
    taken as no pause at all."""
    (tmp_path / PAUSE_FILE).write_bytes(content)
    sup = _supervisor(tmp_path)
    await sup.start()
    try:
        assert sup.state.paused
        assert "pause flag was damaged" in sup.state.pause_reason
        assert "`jupiterd resume`" in sup.state.pause_reason
        [moved] = statefile.evidence(tmp_path)
        assert moved.name.startswith("paused.damaged-")
        # A valid flag again, so a restart stays paused (and finds no damage).
        saved = json.loads((tmp_path / PAUSE_FILE).read_text())["by"]
        assert saved == "jupiterd (the pause flag was damaged)"
        doc = sup.status()
        assert [f["file"] for f in doc["state_files"]["damaged"]] == ["pause_flag"]
        assert _sample(sup, "jupiterd_state_file_damaged", file="pause_flag") == 1
        assert _sample(sup, "jupiterd_state_file_damage_total", file="pause_flag") == 1
        assert _sample(sup, "jupiterd_state_file_damaged", file="journal") == 0
        again = _supervisor(tmp_path)
        await again.start()
        await again.stop(grace=0)
        assert again.state.pause_reason == "paused by jupiterd (the pause flag was damaged)"
        assert len(statefile.evidence(tmp_path)) == 1
        # Resume ends it; ack clears the alert.
        assert sup.set_paused(False, "alice") is None
        assert not sup.state.paused and not (tmp_path / PAUSE_FILE).exists()
        statefile.acknowledge(tmp_path)
        sup.sync_state_files()
        assert _sample(sup, "jupiterd_state_file_damaged", file="pause_flag") == 0
    finally:
        await sup.stop(grace=0)


async def test_a_valid_pause_flag_still_pauses(tmp_path: Path):
    (tmp_path / PAUSE_FILE).write_text(json.dumps({"by": "bob", "at": 1.7e9}))
    sup = _supervisor(tmp_path)
    await sup.start()
    try:
        assert sup.state.pause_reason == "paused by bob"
        assert statefile.evidence(tmp_path) == []
    finally:
        await sup.stop(grace=0)


async def test_a_pause_that_cannot_be_saved_answers_503(tmp_path: Path):
    """The state directory cannot be created (its parent is a file): the
    pause holds in memory, says it is not saved, and the API answers 503."""
    from aiohttp.test_utils import TestClient, TestServer

    from jupiterd.runtime.api import make_app

    blocker = tmp_path / "file"
    blocker.write_text("x")
    sup = _supervisor(blocker / "state")
    await sup.start()
    try:
        async with TestClient(TestServer(make_app(sup))) as client:
            r = await client.post("/pause", json={"by": "alice"}, headers=API_POST)
            assert r.status == 503
            doc = await r.json()
            assert doc["saved"] is False and "could not be saved" in doc["error"]
            assert "a restart will not be paused" in doc["error"]
            assert sup.state.paused  # a pause is still a pause, until jupiterd stops
            status = sup.status()
            assert status["pause_saved"] is False and "could not be saved" in status["pause_error"]
            r = await client.post("/resume", json={"by": "alice"}, headers=API_POST)
            assert r.status == 200 and not sup.state.paused
            assert sup.status()["pause_saved"] is True
    finally:
        await sup.stop(grace=0)


async def test_an_injected_write_error_answers_503(tmp_path: Path, monkeypatch):
    from aiohttp.test_utils import TestClient, TestServer

    from jupiterd.runtime.api import make_app

    def full(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    sup = _supervisor(tmp_path)
    await sup.start()
    monkeypatch.setattr(statefile, "write_atomic", full)
    try:
        async with TestClient(TestServer(make_app(sup))) as client:
            r = await client.post("/pause", json={"by": "alice"}, headers=API_POST)
            assert r.status == 503 and "No space left on device" in (await r.json())["error"]
            assert not (tmp_path / PAUSE_FILE).exists()
    finally:
        await sup.stop(grace=0)


async def test_pause_by_is_bounded_and_free_of_control_characters(tmp_path: Path):
    from aiohttp.test_utils import TestClient, TestServer

    from jupiterd.runtime.api import make_app

    sup = _supervisor(tmp_path)
    await sup.start()
    try:
        async with TestClient(TestServer(make_app(sup))) as client:
            r = await client.post(
                "/pause", json={"by": "a\x1b[31m\nb" + "x" * 10000}, headers=API_POST
            )
            assert r.status == 200
        reason = sup.state.pause_reason
        assert reason.startswith("paused by a[31mb") and len(reason) <= len("paused by ") + 100
        saved = json.loads((tmp_path / PAUSE_FILE).read_text())["by"]
        assert len(saved) <= 100 and "\x1b" not in saved and "\n" not in saved
    finally:
        await sup.stop(grace=0)


# --------------------------------------------------------------------------- journal


def _journal_with(tmp_path: Path, bad: dict[str, Any]) -> str:
    j = Journal(tmp_path)
    plan = j.start_plan("web", "primary", "backup", "down", "daemon", "stopped")
    other = j.start_plan("api", "primary", "backup", "down", "daemon", "stopped")
    j.begin(plan.id, "start_standby")
    j.close()
    rec = {"id": plan.id, "at": 1.0, **bad}
    with open(tmp_path / JOURNAL_NAME, "a") as f:
        f.write(json.dumps(rec) + "\n")
    Journal(tmp_path).begin(other.id, "start_standby")
    return other.id


def test_a_wrongly_typed_record_is_damage_of_its_service_only(tmp_path: Path):
    """Before: float('x') raised ValueError out of Journal.read (a traceback
    from `jupiterd failover` and at daemon start)."""
    other = _journal_with(
        tmp_path, {"t": "end", "step": "start_standby", "ok": True, "seconds": "x"}
    )
    plans = Journal(tmp_path).unfinished()
    # The plan of the other service is carried over whole; web's is held.
    assert [p.id for p in plans] == [other]
    assert plans[0].steps["start_standby"].begun
    [moved] = statefile.evidence(tmp_path)
    assert b'"seconds": "x"' in moved.read_bytes()
    held = held_services(tmp_path, ["web", "api"])
    assert list(held) == ["web"] and "journal was damaged" in held["web"]
    # New records go to the new journal, not to the one moved aside.
    size = moved.stat().st_size
    Journal(tmp_path).done(other)
    assert moved.stat().st_size == size
    assert Journal(tmp_path).unfinished() == []
    assert statefile.acknowledge(tmp_path) == [moved]
    assert held_services(tmp_path, ["web", "api"]) == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"t": "end", "step": "x", "ok": "yes", "seconds": 1},
        {"t": "end", "step": "x", "ok": True, "seconds": 1, "data": [1]},
        {"t": "result", "result": 7, "detail": ""},
        {"t": "begin", "step": {"a": 1}},
        {"t": "plan", "service": "web", "from": "primary", "to": "sideways", "reason": ""},
    ],
)
def test_every_field_is_checked(tmp_path: Path, bad: dict[str, Any]):
    _journal_with(tmp_path, bad)
    Journal(tmp_path).read()
    assert "web" in held_services(tmp_path, ["web", "api"])


async def test_a_held_service_never_fails_over_until_acknowledged(tmp_path: Path):
    """The supervisor holds the service with guard journal_damaged (visible
    in /status and the hold metric) while its primary is down: no plan
    starts. The acknowledgement lets the due failover go."""
    from tests.test_daemon import Listener

    _journal_with(tmp_path, {"t": "end", "step": "x", "ok": 1, "seconds": 1})
    Journal(tmp_path).read()  # what the executor's resume does at start
    prim = await Listener("127.0.0.2").start()
    back = await Listener("127.0.0.3").start()
    await back.kill()
    back.port = prim.port
    await back.start()
    cfg = config_for(
        {
            n: {
                "probe": {"kind": "tcp", "port": prim.port},
                "primary": {"address": "127.0.0.2"},
                "backup": {"address": "127.0.0.3"},
            }
            for n in ("web", "api")
        },
        str(tmp_path),
        guards={"isolation": {"enabled": False}},
    )
    executor = FakeExecutor()
    sup = Supervisor(
        cfg,
        executor=executor,
        inventory=StaticInventory(cfg),
        metrics=Metrics(CollectorRegistry()),
        rng=random.Random(1),
        tick_seconds=0.05,
    )
    await sup.start()
    try:
        hold = sup.state.services["web"].hold
        assert hold is not None and hold.guard is Guard.JOURNAL_DAMAGED
        assert sup.state.services["api"].hold is None
        doc = sup.status()["services"]["web"]
        assert doc["hold"]["guard"] == "journal_damaged"
        assert "state-files ack" in doc["hold"]["reason"]
        labels = {"service": "web", "guard": "journal_damaged"}
        assert sup.metrics.registry.get_sample_value("jupiterd_hold_active", labels) == 1
        await prim.kill()  # web's primary (and api's) goes down
        await wait_for(
            lambda: sup.state.services["web"].primary.status.value == "down", what="down"
        )
        await wait_for(lambda: executor.requests, what="api fails over")
        await asyncio.sleep(0.3)
        assert [r.service for r in executor.requests] == ["api"]  # web is held
        statefile.acknowledge(tmp_path)
        await wait_for(
            lambda: [r.service for r in executor.requests] == ["api", "web"],
            what="web fails over once acknowledged",
        )
    finally:
        await sup.stop(grace=1)
        for listener in (prim, back):
            if listener.server is not None:
                await listener.kill()


async def test_the_executor_refuses_a_plan_of_a_held_service(tmp_path: Path):
    """No AWS call is made: the endpoint is a closed port."""
    _journal_with(tmp_path, {"t": "done", "at": "yesterday"})
    cfg = parse_config(
        {
            "state_dir": str(tmp_path),
            "aws": {"endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1},
            "services": {
                "web": {"probe": {"kind": "tcp", "port": 1}, "primary": {"address": "127.0.0.2"}}
            },
        }
    )
    ex = AwsExecutor(cfg)
    try:
        assert await ex.resume_pending() == []  # web's plan is not resumed without its record
        out = await ex.run(FailoverRequest("web", Role.PRIMARY, Role.BACKUP, "test", "cli"))
    finally:
        ex.close()
    assert out.result == "aborted" and "journal was damaged" in out.detail
    assert "nothing was changed" in out.detail


def _aws_config(tmp_path: Path, state: Path) -> Path:
    cfg = tmp_path / "jupiterd.yaml"
    doc = {
        "state_dir": str(state),
        "aws": {"endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1},
        "services": {
            n: {
                "probe": {"kind": "tcp", "port": 1},
                # One instance is the primary of one service only (pools share backups).
                "primary": {"address": "127.0.0.2", "instance_id": f"i-0123456789abcde{i}0"},
                "backup": {"address": "127.0.0.3", "instance_id": f"i-0123456789abcde{i}1"},
            }
            for i, n in enumerate(("web", "api"))
        },
    }
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**_env(), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    return subprocess.run(
        [sys.executable, "-m", "jupiterd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_cli_failover_refuses_a_held_service_with_a_sentence(tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    _journal_with(state, {"t": "end", "step": "x", "ok": True, "seconds": [1]})
    cfg = _aws_config(tmp_path, state)
    # First run: the damage is found (and moved aside) by the failover itself.
    r = _cli("failover", "web", "--config", str(cfg))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "journal was damaged" in r.stdout
    # Next run: refused before anything else.
    r = _cli("failback", "web", "--config", str(cfg))
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert r.stdout.startswith("web: failback refused: the journal was damaged")
    r = _cli("state-files", "--config", str(cfg))
    assert r.returncode == 1 and "journal: damaged, moved aside" in r.stdout
    assert "web: held:" in r.stdout and "api: held" not in r.stdout
    r = _cli("state-files", "ack", "--config", str(cfg))
    assert r.returncode == 0 and "acknowledged" in r.stdout
    r = _cli("state-files", "--config", str(cfg))
    assert r.returncode == 0 and "no damaged state file" in r.stdout


# --------------------------------------------------------------------------- models cache


def _poisoned_cache(tmp_path: Path, how: str) -> Path:
    import jupiterd.aws.models as awsmod

    made = awsmod.pruned_models(tmp_path)
    path = awsmod.models_cache_file(tmp_path)
    models = json.loads(json.dumps(made))
    if how == "shape-removed":  # consistent digest: only botocore's check sees it
        op = models["ec2"]["operations"]["DescribeInstances"]
        del models["ec2"]["shapes"][op["input"]["shape"]]
    elif how == "metadata":
        models["sns"]["metadata"] = {}
    doc = {"format": awsmod.CACHE_FORMAT, "sha256": awsmod._digest(models), "models": models}
    data = json.dumps(doc).encode()
    if how == "byte-flip":
        data = data.replace(b'"endpointPrefix": "ec2"', b'"endpointPrefix": "ec3"')
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("how", ["shape-removed", "metadata", "byte-flip"])
def test_a_poisoned_models_cache_is_moved_aside_and_made_again(tmp_path, monkeypatch, how):
    """Before: only the operation names were checked, so a cache whose
    shapes or metadata were wrong was used, and every plan failed."""
    import jupiterd.aws.models as awsmod

    monkeypatch.setattr(awsmod, "_pruned", None)
    path = _poisoned_cache(tmp_path, how)
    monkeypatch.setattr(awsmod, "_pruned", None)
    made = awsmod.pruned_models(tmp_path)
    [moved] = statefile.evidence(tmp_path)
    assert moved.name.startswith(path.name + ".damaged-")
    assert awsmod._read_cache(path) == made
    ec2 = made["ec2"]
    shape = ec2["operations"]["DescribeInstances"]["input"]["shape"]
    assert shape in ec2["shapes"]


# --------------------------------------------------------------------------- links and modes


def test_planted_links_never_make_jupiterd_write_outside(tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    outside = {n: tmp_path / f"outside-{n}" for n in ("lock", "journal", "paused", "daemon")}
    for p in outside.values():
        p.write_text("precious\n")
    (state / LOCK_NAME).symlink_to(outside["lock"])
    (state / JOURNAL_NAME).symlink_to(outside["journal"])
    (state / PAUSE_FILE).symlink_to(outside["paused"])
    (state / "daemon.lock").symlink_to(outside["daemon"])

    lock = PlanLock(state)
    with lock.hold():
        j = Journal(state)
        plan = j.start_plan("web", "primary", "backup", "r", "cli", "stopped")
        j.done(plan.id)
        j.close()
    from jupiterd.runtime.lifecycle import lock_state_dir

    fd = lock_state_dir(str(state))
    assert isinstance(fd, int)
    os.close(fd)

    async def pause() -> None:
        sup = _supervisor(state)
        await sup.start()
        try:
            assert sup.set_paused(True, "alice") is None
        finally:
            await sup.stop(grace=0)

    asyncio.run(pause())
    for p in outside.values():
        assert p.read_text() == "precious\n"
    for name in (LOCK_NAME, JOURNAL_NAME, PAUSE_FILE, "daemon.lock"):
        st = os.lstat(state / name)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, name
    kinds = sorted(f["file"] for f in statefile.summary(state))
    assert kinds == ["daemon_lock", "journal", "pause_flag", "plan_lock"]


# --------------------------------------------------------------------------- one daemon a state_dir


def _daemon_config(tmp_path: Path, name: str, state: Path) -> tuple[Path, int]:
    port = free_port()
    cfg = tmp_path / f"{name}.yaml"
    doc = {
        "aws": {"enabled": False},
        "http": {"listen": f"127.0.0.1:{port}"},
        "state_dir": str(state),
        "log": {"format": "json"},
        "services": {
            "web": {
                "probe": {"kind": "tcp", "port": free_port()},
                "primary": {"address": "127.0.0.2"},
            }
        },
    }
    cfg.write_text(yaml.safe_dump(doc))
    return cfg, port


@pytest.mark.slow
def test_a_second_daemon_on_the_same_state_dir_refuses_to_start(tmp_path: Path):
    from jupiterd.runtime.lifecycle import EXIT_STATE_DIR_BUSY

    state = tmp_path / "state"
    first_cfg, port = _daemon_config(tmp_path, "first", state)
    second_cfg, _ = _daemon_config(tmp_path, "second", state)
    first = subprocess.Popen(
        [sys.executable, "-m", "jupiterd", "run", "--config", str(first_cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    try:
        wait(lambda: _up(f"http://127.0.0.1:{port}"), what="the first daemon")
        r = subprocess.run(
            [sys.executable, "-m", "jupiterd", "run", "--config", str(second_cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
        assert r.returncode == EXIT_STATE_DIR_BUSY == 75
        assert "Traceback" not in r.stdout + r.stderr
        [line] = [x for x in r.stdout.splitlines() if "refusing" in x]
        event = json.loads(line)["event"]
        assert f"pid {first.pid}" in event and str(state) in event
        assert first.poll() is None  # the first one is not disturbed
    finally:
        first.terminate()
        first.wait(10)
    # Once the first is gone the lock is free again.
    from jupiterd.runtime.lifecycle import lock_state_dir

    fd = lock_state_dir(str(state))
    assert isinstance(fd, int)
    os.close(fd)


def _up(base: str) -> bool:
    try:
        return get(f"{base}/healthz")[0] == 200
    except OSError:
        return False


@pytest.mark.slow
def test_cli_pause_says_when_the_flag_could_not_be_saved(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg, port = _daemon_config(tmp_path, "d", blocker / "state")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupiterd", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    try:
        wait(lambda: _up(f"http://127.0.0.1:{port}"), what="the daemon")
        r = _cli("pause", "--config", str(cfg), "--by", "oncall")
        assert r.returncode == 1
        assert "answered 503" in r.stderr and "could not be saved" in r.stderr
        doc = json.loads(get(f"http://127.0.0.1:{port}/status")[1])
        assert doc["paused"] is True and doc["pause_saved"] is False
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_machine_holds_a_journal_damaged_service_until_cleared():
    """Pure: the hold shows at once (no failover due), a due failover stays
    held, and clearing it lets the failover start."""
    from jupiterd.core.health import Hold, HoldCleared, JournalHold, StartFailover
    from tests.test_machine import P, Run

    r = Run()
    r.send(JournalHold("sig", "the journal was damaged", r.t))
    [hold] = r.of(Hold)
    assert (hold.service, hold.guard) == ("sig", Guard.JOURNAL_DAMAGED)
    assert r.svc("sig").decision == "holding: the journal was damaged"
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    assert not r.of(StartFailover) and len(r.of(Hold)) == 1
    r.send(JournalHold("sig", None, r.t))
    assert r.of(HoldCleared)[0].reason == "the damaged journal was acknowledged"
    [start] = r.of(StartFailover)
    assert start.service == "sig"
