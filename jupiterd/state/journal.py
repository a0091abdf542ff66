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

Every record is validated when read (``parse_journal``, through the state
files' reader ``statefile.read``). A torn last line (a crash mid-write) is
skipped; any other bad line (a flipped byte, a wrongly-typed field, a record
of an unknown plan) is damage: the file is moved aside as
``journal.jsonl.damaged-<UTC time>``, the unfinished plans of the services
it cannot concern are carried over to a new journal, and every service the
damage may concern (all of them when it cannot tell) is held
(``held_services``): no plan of it runs, the daemon's or the CLI's, until an
operator acknowledges the moved-aside file (``jupiterd state-files ack``) or
removes it.

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
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupiterd.state import statefile
from jupiterd.state.statefile import Damaged, Invalid

JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "jupiterd.lock"
KILL_ENV = "JUPITERD_TEST_KILL_AFTER_RECORD"
ROTATE_BYTES = 1 << 20  # start a new file past this, between plans
MAX_BYTES = 16 << 20  # a journal past this is damage (plans write a few kB each)


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
                fd = statefile.lock_file(self.path, statefile.PLAN_LOCK)
            except OSError as exc:
                raise JournalError(
                    f"cannot open the lock file {self.path}: {exc.strerror or exc}"
                ) from None
            if fd is None:
                raise LockBusy(str(self.path), statefile.holder_pid(self.path, statefile.PLAN_LOCK))
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
        fd = self._fd
        if fd is not None:
            # Still the file at the path? Another process may have moved it
            # aside (damage) or rotated it.
            try:
                at, mine = os.stat(self.path, follow_symlinks=False), os.fstat(fd)
                if (at.st_dev, at.st_ino) == (mine.st_dev, mine.st_ino):
                    return fd
            except OSError:
                pass
            os.close(fd)
            self._fd = None
        _ensure_dir(self.dir)
        created = not os.path.lexists(self.path)
        fd = None
        try:
            fd = statefile.open_for_write(self.path, statefile.JOURNAL, os.O_RDWR | os.O_APPEND)
            _heal_tail(fd, self.path)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            raise JournalError(
                f"cannot open the journal {self.path}: {exc.strerror or exc}"
            ) from None
        if created:
            statefile.fsync_dir(self.dir)
        self._fd = fd
        return fd

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
            size = os.stat(self.path, follow_symlinks=False).st_size
        except FileNotFoundError:
            return
        if size < ROTATE_BYTES or self.unfinished():
            return
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            os.replace(self.path, self.path.with_name(JOURNAL_NAME + ".1"))
            statefile.fsync_dir(self.dir)

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
        mid-write) is skipped; damage is moved aside (see the module's
        docstring) and only the plans it cannot concern are returned."""
        return self.check(repair=True).plans

    def unfinished(self) -> list[PlanRecord]:
        return [p for p in self.read() if not p.done]

    def check(self, *, repair: bool) -> JournalView:
        """Read and validate. With ``repair`` (only under the plan lock: no
        other process may be appending) a damaged journal is moved aside and
        the unfinished plans of the services it does not concern are carried
        over to a new one; without, the file is left as it is."""
        try:
            parsed = statefile.read(
                self.path, statefile.JOURNAL, parse_journal, MAX_BYTES, quarantine=repair
            )
        except Damaged as exc:
            if repair:
                self.close()
            return JournalView([], str(exc), None)
        if parsed is None:
            return JournalView([], None, set())
        if not parsed.problems:
            return JournalView(list(parsed.plans.values()), None, set())
        affected = parsed.affected
        keep = [
            p
            for p in parsed.plans.values()
            if not p.done and affected is not None and p.service not in affected
        ]
        what = "; ".join(parsed.problems[:3]) + ("; ..." if len(parsed.problems) > 3 else "")
        services = "all services" if affected is None else ", ".join(sorted(affected))
        sentence = f"the journal {self.path} is damaged ({what}); it concerns {services}"
        if repair:
            with self._mutex:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                reason = statefile.clean_text(f"{what}; it concerns {services}", 300)
                if keep:
                    moved = statefile.move_aside(
                        self.path, statefile.JOURNAL, reason, keep_copy=True
                    )
                    if moved is not None:
                        carried = b"".join(
                            line + b"\n" for p in keep for line in parsed.lines[p.id]
                        )
                        try:
                            statefile.write_atomic(self.path, carried)
                        except OSError as exc:
                            sentence += f"; could not carry the other plans over: {exc.strerror}"
                            keep = []
                else:
                    moved = statefile.move_aside(self.path, statefile.JOURNAL, reason)
            if moved is not None:
                sentence += f"; moved aside to {moved.name}"
        return JournalView(keep, sentence, affected)


@dataclass(slots=True)
class JournalView:
    """What ``Journal.check`` found: the plans that can be trusted, and the
    damage (a sentence, and the services it concerns; None: all)."""

    plans: list[PlanRecord]
    damage: str | None
    affected: set[str] | None


def _heal_tail(fd: int, path: Path) -> None:
    """A crash mid-write can leave a last line without its newline: a record
    appended after it would be glued to it. A complete record gets its
    newline; a torn one is cut off (it was never durable)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
    cut = tail.rfind(b"\n")
    torn = tail[cut + 1 :]
    if cut < 0 and len(tail) < size:
        os.write(fd, b"\n")  # a line over 1 MiB: the reader calls it damage
        return
    try:
        _apply_checked({}, statefile.loads(torn), fresh=True)
    except Invalid:
        os.ftruncate(fd, size - len(torn))
        statefile.log.warning("journal: dropped a torn last record", path=str(path))
    else:
        os.write(fd, b"\n")


# --------------------------------------------------------------------------- validation

ROLES = ("primary", "backup")
RESULTS = ("success", "aborted", "failed", "dry_run")
TYPES = ("plan", "begin", "end", "rollback", "result", "done")
TEXT_MAX = 1 << 16
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,64})"')


@dataclass(slots=True)
class ParsedJournal:
    plans: dict[str, PlanRecord]
    lines: dict[str, list[bytes]]  # each plan's raw lines, to carry it over
    problems: list[str]  # "line N: why", one per damaged line
    affected: set[str] | None  # the services the damage may concern; None: all


def parse_journal(data: bytes) -> ParsedJournal:
    """Validate every record (``Invalid`` is never raised: a bad line is
    listed in ``problems`` with the service it may concern)."""
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with its newline
    out = ParsedJournal({}, {}, [], set())
    bad: list[bytes] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = statefile.loads(raw)
            _apply_checked(out.plans, rec)
        except Invalid as exc:
            out.problems.append(f"line {n}: {exc}")
            bad.append(raw)
            continue
        out.lines.setdefault(rec["id"], []).append(raw)
    # A bad line concerns the service of the plan it names, if that plan's
    # own record is sound; anything else may concern any service.
    for raw in bad:
        i = _ID.search(raw)
        plan = out.plans.get(i.group(1).decode("utf-8", "replace")) if i else None
        if plan is None or out.affected is None:
            out.affected = None
            break
        out.affected.add(plan.service)
    if torn.strip():
        try:
            rec = statefile.loads(torn)
            _apply_checked(out.plans, rec)
        except Invalid:
            pass  # a torn last line: the crash came mid-write
        else:
            out.lines.setdefault(rec["id"], []).append(torn)
    return out


def _apply_checked(plans: dict[str, PlanRecord], rec: Any, *, fresh: bool = False) -> None:
    """Validate one record against the schema and apply it; ``Invalid`` says
    what is wrong. ``fresh``: check the record alone (no plan to refer to)."""
    if not isinstance(rec, dict):
        raise Invalid("not a JSON object")
    t = rec.get("t")
    if t not in TYPES:
        raise Invalid("not a known record type")
    pid = statefile.text_field(rec, "id", 64)
    assert pid is not None
    if not pid:
        raise Invalid("'id' is empty")
    at = statefile.number_field(rec, "at")
    text = statefile.text_field
    if t == "plan":
        service = text(rec, "service", 200)
        from_role, to_role = text(rec, "from", 16), text(rec, "to", 16)
        if from_role not in ROLES or to_role not in ROLES or from_role == to_role:
            raise Invalid("'from' and 'to' are not primary and backup")
        standby = text(rec, "standby_state", 64, required=False)
        if "pid" in rec and not (isinstance(rec["pid"], int) and not isinstance(rec["pid"], bool)):
            raise Invalid("'pid' is not an integer")
        record = PlanRecord(
            id=pid,
            service=service or "",
            from_role=from_role or "",
            to_role=to_role or "",
            reason=text(rec, "reason", TEXT_MAX, required=False) or "",
            requested_by=text(rec, "by", 1000, required=False) or "daemon",
            started_at=at,
            standby_state=standby,
        )
        if not record.service:
            raise Invalid("'service' is empty")
        if pid in plans:
            raise Invalid(f"plan {pid} begins twice")
        plans[pid] = record
        return
    plan = plans.get(pid)
    if plan is None and not fresh:
        raise Invalid(f"a record of plan {pid}, which the journal does not hold")
    if t in ("begin", "end"):
        name = text(rec, "step", 100)
        assert name is not None
        if t == "end":
            ok: bool = rec.get("ok")  # type: ignore[assignment]
            if not isinstance(ok, bool):
                raise Invalid("'ok' is not true or false")
            seconds = statefile.number_field(rec, "seconds")
            detail = text(rec, "detail", TEXT_MAX, required=False) or ""
            data = rec.get("data", {})
            if not isinstance(data, dict):
                raise Invalid("'data' is not an object")
        if plan is None:
            return
        s = plan.step(name)
        s.begun = True
        s.ended = t == "end"
        if t == "end":
            s.ok, s.seconds, s.detail, s.data = ok, seconds, detail, data
    elif t == "rollback":
        reason = text(rec, "reason", TEXT_MAX, required=False) or ""
        if plan is not None:
            plan.rollback = reason
    elif t == "result":
        result = text(rec, "result", 16)
        if result not in RESULTS:
            raise Invalid("'result' is not a known outcome")
        detail = text(rec, "detail", TEXT_MAX, required=False) or ""
        if plan is not None:
            plan.result = (result, detail)
    elif plan is not None:  # done
        plan.done = True


# --------------------------------------------------------------------------- holds

_affected_cache: dict[tuple[str, int, int], set[str] | None] = {}
_cache_lock = threading.Lock()


def _affected(path: Path) -> set[str] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _affected_cache:
            return _affected_cache[key]
    try:
        parsed = statefile.read(path, statefile.JOURNAL, parse_journal, MAX_BYTES, quarantine=False)
        affected = parsed.affected if parsed is not None and parsed.problems else None
    except Damaged:
        affected = None  # not even a readable file: it may concern anything
    with _cache_lock:
        if len(_affected_cache) > 64:
            _affected_cache.clear()
        _affected_cache[key] = affected
    return affected


def held_services(state_dir: str | os.PathLike[str], services: Iterable[str]) -> dict[str, str]:
    """The services a damaged journal holds, each with the sentence why: the
    moved-aside journals not yet acknowledged, and any damage this process
    could not move aside (that holds every service)."""
    names = list(services)
    out: dict[str, str] = {}
    for path in statefile.evidence(state_dir):
        if not path.name.startswith(JOURNAL_NAME + statefile.DAMAGED):
            continue
        affected = _affected(path)
        why = (
            f"the journal was damaged (moved aside to {path.name}): no failover of this "
            "service until an operator has checked where its traffic is (`jupiterd status`) "
            "and acknowledged it (`jupiterd state-files ack`)"
        )
        for name in names:
            if affected is None or name in affected:
                out.setdefault(name, why)
    damage, _ = statefile.events(state_dir)
    for d in damage:
        if d.kind == statefile.JOURNAL and d.left_in_place:
            why = (
                f"the journal is damaged and could not be moved aside ({d.reason}): "
                "no failover until an operator repairs the state directory and restarts jupiterd"
            )
            for name in names:
                out.setdefault(name, why)
    return out
