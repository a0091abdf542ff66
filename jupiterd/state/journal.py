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
  standby's state at preflight; ``kind`` when it is not a failover but the
  warm-up of a standby (``readiness``, ``prewarm``: see
  ``aws/executor/warm.py``), which a resumption stops again.
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

The lock lives in ``planlock``, the records and their validation in
``records``; every name is importable from here.

Test-only: with ``JUPITERD_TEST_KILL_AFTER_RECORD=N`` in the environment the
process SIGKILLs itself right after the N-th record it writes is durable,
which lets the tests crash a plan at every journal point deterministically.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupiterd.state import statefile
from jupiterd.state.statefile import Damaged, Invalid

from .planlock import LOCK_NAME, Fenced, JournalError, LockBusy, PlanLock, _ensure_dir
from .records import (
    PLAN_KINDS,
    RESULTS,
    ROLES,
    TEXT_MAX,
    TYPES,
    ParsedJournal,
    PlanRecord,
    StepRecord,
    _apply_checked,
    begin_record,
    done_record,
    end_record,
    new_plan,
    parse_journal,
    result_record,
    rollback_record,
)

__all__ = [
    "JOURNAL_NAME",
    "KILL_ENV",
    "LOCK_NAME",
    "MAX_BYTES",
    "PLAN_KINDS",
    "RESULTS",
    "ROLES",
    "ROTATE_BYTES",
    "TEXT_MAX",
    "TYPES",
    "Fenced",
    "Journal",
    "JournalError",
    "JournalView",
    "LockBusy",
    "ParsedJournal",
    "PlanLock",
    "PlanRecord",
    "StepRecord",
    "held_services",
    "parse_journal",
]

JOURNAL_NAME = "journal.jsonl"
KILL_ENV = "JUPITERD_TEST_KILL_AFTER_RECORD"
ROTATE_BYTES = 1 << 20  # start a new file past this, between plans
MAX_BYTES = 16 << 20  # a journal past this is damage (plans write a few kB each)


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

    def held(self, services: Iterable[str]) -> dict[str, str]:
        """The services damage of this journal holds (``held_services``)."""
        return held_services(self.dir, services)

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
        kind: str = "failover",
    ) -> PlanRecord:
        """``kind``: "failover", or the warm-up of a standby ("readiness",
        "prewarm"), written only when not a failover."""
        rec, first = new_plan(
            service, from_role, to_role, reason, requested_by, standby_state, kind
        )
        self.append(first)
        return rec

    def begin(self, plan_id: str, step: str) -> None:
        self.append(begin_record(plan_id, step))

    def end(
        self,
        plan_id: str,
        step: str,
        ok: bool,
        seconds: float,
        detail: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.append(end_record(plan_id, step, ok, seconds, detail, data))

    def rollback(self, plan_id: str, reason: str) -> None:
        self.append(rollback_record(plan_id, reason))

    def result(self, plan_id: str, result: str, detail: str) -> None:
        self.append(result_record(plan_id, result, detail))

    def done(self, plan_id: str) -> None:
        self.append(done_record(plan_id))

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
