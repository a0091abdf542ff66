"""The journal (append-only, durable, tolerant reader) and the plan lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupiterd.state import statefile
from jupiterd.state.journal import (
    JOURNAL_NAME,
    KILL_ENV,
    ROTATE_BYTES,
    Journal,
    JournalError,
    LockBusy,
    PlanLock,
    held_services,
)


def _plan(j: Journal, service: str = "web") -> str:
    return j.start_plan(service, "primary", "backup", "primary down", "cli", "stopped").id


def test_round_trip(tmp_path: Path):
    j = Journal(tmp_path / "state")
    pid = _plan(j)
    j.begin(pid, "start_standby")
    j.end(pid, "start_standby", True, 1.5, "started", {"started": True})
    j.begin(pid, "standby_healthy")
    [p] = j.unfinished()
    assert p.id == pid and p.service == "web" and p.from_role == "primary"
    assert p.to_role == "backup" and p.reason == "primary down" and p.requested_by == "cli"
    assert p.standby_state == "stopped"
    assert p.ended_ok("start_standby")
    assert p.steps["start_standby"].data == {"started": True}
    assert p.steps["standby_healthy"].begun and not p.steps["standby_healthy"].ended
    j.rollback(pid, "never healthy")
    j.result(pid, "aborted", "the backup never passed its probes")
    [p] = j.unfinished()
    assert p.rollback == "never healthy"
    assert p.result == ("aborted", "the backup never passed its probes")
    j.done(pid)
    assert j.unfinished() == []
    assert len(j.read()) == 1
    j.close()


def test_records_are_json_lines(tmp_path: Path):
    j = Journal(tmp_path)
    pid = _plan(j)
    j.end(pid, "x", False, 0.25, "denied")
    lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["t"] for r in recs] == ["plan", "end"]
    assert recs[1] == {**recs[1], "ok": False, "seconds": 0.25, "detail": "denied", "step": "x"}


def test_a_rerun_step_is_pending_again(tmp_path: Path):
    j = Journal(tmp_path)
    pid = _plan(j)
    j.begin(pid, "standby_healthy")
    j.end(pid, "standby_healthy", True, 1, "ok")
    j.begin(pid, "standby_healthy")  # re-checked after a restart
    [p] = j.unfinished()
    assert not p.ended_ok("standby_healthy")


def test_a_torn_last_line_is_skipped_not_damage(tmp_path: Path):
    j = Journal(tmp_path)
    pid = _plan(j)
    j.begin(pid, "start_standby")
    j.close()
    with open(tmp_path / JOURNAL_NAME, "ab") as f:
        f.write(b'{"t":"end","id":"' + pid.encode())
    [p] = Journal(tmp_path).unfinished()
    assert p.steps["start_standby"].begun and not p.steps["start_standby"].ended
    assert not statefile.evidence(tmp_path)
    # The next record is not glued to the torn one.
    j = Journal(tmp_path)
    j.end(pid, "start_standby", True, 1.0, "started")
    [p] = j.unfinished()
    assert p.ended_ok("start_standby")
    assert not statefile.evidence(tmp_path)


def test_garbage_before_the_last_line_is_damage(tmp_path: Path):
    """A bad record in the middle is not a crash mid-write: the journal is
    moved aside and every service is held (the lines name no plan)."""
    j = Journal(tmp_path)
    pid = _plan(j)
    j.begin(pid, "start_standby")
    j.close()
    with open(tmp_path / JOURNAL_NAME, "ab") as f:
        f.write(b'["not a record"]\n{"t":"begin","id":7}\n')
    assert Journal(tmp_path).unfinished() == []
    [moved] = statefile.evidence(tmp_path)
    assert moved.name.startswith(JOURNAL_NAME + ".damaged-")
    assert not (tmp_path / JOURNAL_NAME).exists()
    held = held_services(tmp_path, ["web", "api"])
    assert set(held) == {"web", "api"} and "state-files ack" in held["web"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_reader_never_raises_on_garbage(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("j")
    (d / JOURNAL_NAME).write_bytes(data)
    assert isinstance(Journal(d).read(), list)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["t", "id", "step", "ok", "seconds", "data", "service", "from", "to"]),
            st.one_of(
                st.none(),
                st.integers(),
                st.text(max_size=5),
                st.booleans(),
                st.sampled_from(["plan", "begin", "end", "done", "result", "p1"]),
            ),
        ),
        max_size=8,
    )
)
def test_reader_never_raises_on_odd_records(tmp_path_factory, records):
    d = tmp_path_factory.mktemp("j")
    (d / JOURNAL_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert isinstance(Journal(d).read(), list)


def test_rotation_keeps_unfinished_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("jupiterd.state.journal.ROTATE_BYTES", 10)
    j = Journal(tmp_path)
    pid = _plan(j)
    j.maybe_rotate()
    assert [p.id for p in j.unfinished()] == [pid]  # not rotated: a plan is in flight
    j.done(pid)
    j.maybe_rotate()
    assert j.read() == []
    assert (tmp_path / (JOURNAL_NAME + ".1")).exists()
    pid2 = _plan(j)
    assert [p.id for p in j.unfinished()] == [pid2]
    assert ROTATE_BYTES > 10


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    j = Journal(blocker / "state")
    with pytest.raises(JournalError, match="cannot create the state directory"):
        _plan(j)


# --------------------------------------------------------------------------- lock

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from jupiterd.state.journal import PlanLock
    lock = PlanLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    sys.stdin.readline()
    """
)


def test_lock_excludes_another_process(tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        lock = PlanLock(tmp_path)
        with pytest.raises(LockBusy) as err:
            lock.acquire()
        assert err.value.pid == proc.pid
        assert f"another jupiterd process (pid {proc.pid}) is running a plan" in str(err.value)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(5)
    lock.acquire()  # free again once the holder is gone
    assert lock.held
    lock.release()


def test_lock_is_reentrant_within_a_process(tmp_path: Path):
    lock = PlanLock(tmp_path)
    with lock.hold():
        with lock.hold():
            assert lock.held
        assert lock.held  # the outer plan still runs
    assert not lock.held


def test_kill_hook_kills_after_the_nth_durable_record(tmp_path: Path):
    code = textwrap.dedent(
        f"""
        import sys
        from jupiterd.state.journal import Journal
        j = Journal({str(tmp_path)!r})
        p = j.start_plan("web", "primary", "backup", "r", "cli", "stopped")
        for i in range(5):
            j.begin(p.id, f"s{{i}}")
        print("not reached")
        """
    )
    env = {**os.environ, KILL_ENV: "3"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == -9
    assert "not reached" not in proc.stdout
    [p] = Journal(tmp_path).unfinished()
    assert sorted(p.steps) == ["s0", "s1"]
