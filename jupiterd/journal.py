"""The failover journal and the plan lock, both in ``Config.state_dir``.

The journal is append-only JSON lines, one record per event of a plan in
flight, each fsynced before the step it announces touches AWS (and the
directory fsynced when the file is created), so that after a crash or
``kill -9`` the next start can find the unfinished plan and finish or undo
it. AWS stays the source of truth for where the traffic is; the journal only
says which steps of the interrupted plan already ended and what the plan
itself changed (whether it started the standby).

Records (``t`` is the type):

- ``plan``: a plan begins: id, service, roles, reason, who asked, the
  standby's state at preflight.
- ``begin`` / ``end``: a step starts / ends (ok, seconds, detail, data).
- ``rollback``: the plan turned to undoing itself, with why.
- ``result``: the outcome is known (only the notification may follow).
- ``done``: nothing more to do for the plan.

The lock file keeps two jupiterd processes on one host from running plans at
once: ``fcntl.flock``, non-blocking, held while any plan of this process runs.

Test-only: with ``JUPITERD_TEST_KILL_AFTER_RECORD=N`` in the environment the
process SIGKILLs itself right after the N-th record it writes is durable,
which lets the tests crash a plan at every journal point deterministically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "jupiterd.lock"
KILL_ENV = "JUPITERD_TEST_KILL_AFTER_RECORD"
ROTATE_BYTES = 1 << 20  # start a new file past this, between plans


class LockBusy(Exception):
    """Another process holds the plan lock."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(
            f"another jupiterd process ({who}) is running a plan (lock file {path}); "
            "wait for it to finish"
        )


class JournalError(Exception):
    """The state directory cannot hold the journal (permissions, full disk)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"cannot create the state directory {path}: {exc.strerror}") from None


class PlanLock:
    """Cross-process, re-entrant within the process: the first plan takes the
    flock, the last one to finish lets it go."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / LOCK_NAME
        self._fd: int | None = None
        self._holders = 0
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        with self._mutex:
            if self._fd is not None:
                self._holders += 1
                return
            _ensure_dir(self.dir)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
            except OSError as exc:
                raise JournalError(
                    f"cannot open the lock file {self.path}: {exc.strerror}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = self._read_pid(fd)
                os.close(fd)
                raise LockBusy(str(self.path), pid) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            self._holders = 1

    def release(self) -> None:
        with self._mutex:
            if self._fd is None:
                return
            self._holders -= 1
            if self._holders > 0:
                return
            fd, self._fd = self._fd, None
            # The pid stays in the file: harmless, and the flock is what counts.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @staticmethod
    def _read_pid(fd: int) -> int | None:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        except OSError:
            return None


@dataclass(slots=True)
class StepRecord:
    name: str
    begun: bool = False
    ended: bool = False
    ok: bool = False
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class PlanRecord:
    """One plan as the journal tells it."""

    id: str
    service: str
    from_role: str
    to_role: str
    reason: str
    requested_by: str
    started_at: float  # Unix time
    standby_state: str | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)
    rollback: str | None = None  # why the plan turned to undoing itself
    result: tuple[str, str] | None = None  # (result, detail) once known
    done: bool = False

    def step(self, name: str) -> StepRecord:
        return self.steps.setdefault(name, StepRecord(name))

    def ended_ok(self, name: str) -> bool:
        s = self.steps.get(name)
        return s is not None and s.ended and s.ok


_record_count = 0  # records written by this process (the test kill hook counts them)
_count_lock = threading.Lock()


class Journal:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / JOURNAL_NAME
        self._fd: int | None = None
        self._mutex = threading.Lock()
        kill = os.environ.get(KILL_ENV, "")
        self._kill_after = int(kill) if kill.isdigit() else None

    # -- writing

    def _open(self) -> int:
        if self._fd is None:
            _ensure_dir(self.dir)
            created = not self.path.exists()
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            except OSError as exc:
                raise JournalError(f"cannot open the journal {self.path}: {exc.strerror}") from None
            if created:
                _fsync_dir(self.dir)
        return self._fd

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and make it durable before returning."""
        global _record_count
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._mutex:
            fd = self._open()
            try:
                os.write(fd, line)
                os.fsync(fd)
            except OSError as exc:
                raise JournalError(
                    f"cannot write the journal {self.path}: {exc.strerror}"
                ) from None
        with _count_lock:
            _record_count += 1
            n = _record_count
        if self._kill_after is not None and n == self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def close(self) -> None:
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def maybe_rotate(self) -> None:
        """Between plans, keep the file small: the previous one is kept as
        ``journal.jsonl.1`` for a person who wants the history."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < ROTATE_BYTES or self.unfinished():
            return
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            os.replace(self.path, self.path.with_name(JOURNAL_NAME + ".1"))
            _fsync_dir(self.dir)

    def start_plan(
        self,
        service: str,
        from_role: str,
        to_role: str,
        reason: str,
        requested_by: str,
        standby_state: str,
    ) -> PlanRecord:
        rec = PlanRecord(
            id=uuid.uuid4().hex,
            service=service,
            from_role=from_role,
            to_role=to_role,
            reason=reason,
            requested_by=requested_by,
            started_at=time.time(),
            standby_state=standby_state,
        )
        self.append(
            {
                "t": "plan",
                "id": rec.id,
                "service": service,
                "from": from_role,
                "to": to_role,
                "reason": reason,
                "by": requested_by,
                "standby_state": standby_state,
                "at": rec.started_at,
                "pid": os.getpid(),
            }
        )
        return rec

    def begin(self, plan_id: str, step: str) -> None:
        self.append({"t": "begin", "id": plan_id, "step": step, "at": time.time()})

    def end(
        self,
        plan_id: str,
        step: str,
        ok: bool,
        seconds: float,
        detail: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        rec: dict[str, Any] = {
            "t": "end",
            "id": plan_id,
            "step": step,
            "ok": ok,
            "seconds": round(seconds, 6),
            "detail": detail,
            "at": time.time(),
        }
        if data:
            rec["data"] = data
        self.append(rec)

    def rollback(self, plan_id: str, reason: str) -> None:
        self.append({"t": "rollback", "id": plan_id, "reason": reason, "at": time.time()})

    def result(self, plan_id: str, result: str, detail: str) -> None:
        self.append(
            {"t": "result", "id": plan_id, "result": result, "detail": detail, "at": time.time()}
        )

    def done(self, plan_id: str) -> None:
        self.append({"t": "done", "id": plan_id, "at": time.time()})

    # -- reading

    def read(self) -> list[PlanRecord]:
        """Every plan in the file, oldest first. A torn last line (a crash
        mid-write) and records of unknown types are skipped."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc.strerror}") from None
        plans: dict[str, PlanRecord] = {}
        for line in raw.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            _apply(plans, rec)
        return list(plans.values())

    def unfinished(self) -> list[PlanRecord]:
        return [p for p in self.read() if not p.done]


def _apply(plans: dict[str, PlanRecord], rec: dict[str, Any]) -> None:
    t, pid = rec.get("t"), rec.get("id")
    if not isinstance(pid, str):
        return
    if t == "plan":
        try:
            plans[pid] = PlanRecord(
                id=pid,
                service=str(rec["service"]),
                from_role=str(rec["from"]),
                to_role=str(rec["to"]),
                reason=str(rec.get("reason", "")),
                requested_by=str(rec.get("by", "daemon")),
                started_at=float(rec.get("at", 0.0)),
                standby_state=rec.get("standby_state"),
            )
        except (KeyError, TypeError, ValueError):
            return
        return
    plan = plans.get(pid)
    if plan is None:
        return
    step = rec.get("step")
    if t == "begin" and isinstance(step, str):
        s = plan.step(step)
        s.begun = True
        s.ended = False
    elif t == "end" and isinstance(step, str):
        s = plan.step(step)
        s.begun = True
        s.ended = True
        s.ok = bool(rec.get("ok"))
        s.seconds = float(rec.get("seconds", 0.0))
        s.detail = str(rec.get("detail", ""))
        data = rec.get("data")
        s.data = data if isinstance(data, dict) else {}
    elif t == "rollback":
        plan.rollback = str(rec.get("reason", ""))
    elif t == "result":
        plan.result = (str(rec.get("result", "failed")), str(rec.get("detail", "")))
    elif t == "done":
        plan.done = True
