"""One guarded reader (and writer) for every file in ``Config.state_dir``.

The pause flag, the plan journal, the plan lock, the daemon lock, the
readiness record and the pruned AWS models cache are all read through ``read``: the file is opened
without following symbolic links (``O_NOFOLLOW``), anything but a regular
file is refused, the size is bounded, and the caller's parser validates the
content (a wrongly-typed field is damage like a flipped byte). A damaged
file is moved aside in the state directory as ``NAME.damaged-<UTC time>``
(kept for the post-mortem), named in one log line
(``state file damaged; moved aside``), and recorded for ``/status`` and the
``jupiterd_state_file_damaged{file}`` gauge. The caller decides what the
damage means (the pause flag stays paused, the journal holds failover, the
models cache is rebuilt); nothing here raises anything but ``Damaged``.

The moved-aside files are the lasting evidence: they count as unresolved
until an operator removes them or acknowledges them with
``jupiterd state-files ack`` (which renames each to ``...acked``).

Files are written through ``open_for_write`` or ``write_atomic``: no
symbolic link is followed, a new file is created 0600, and what is found in
place of a regular file is moved aside first, so a planted link cannot make
jupiterd write outside the state directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("jupiterd")

T = TypeVar("T")

# The metric label of each state file, by its name in the state directory.
PAUSE_FLAG = "pause_flag"
JOURNAL = "journal"
PLAN_LOCK = "plan_lock"
DAEMON_LOCK = "daemon_lock"
MODELS_CACHE = "models_cache"
READINESS = "readiness"  # the standbys' last readiness drills
KINDS = (PAUSE_FLAG, JOURNAL, PLAN_LOCK, DAEMON_LOCK, MODELS_CACHE, READINESS)

DAMAGED = ".damaged-"
ACKED = ".acked"
_EVIDENCE = re.compile(r"^(?P<name>.+)\.damaged-(?P<stamp>\d{8}T\d{6}\.\d{6}Z)(?:-\d+)?$")
_REASON_MAX = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def kind_of(name: str) -> str:
    """The metric label of a state file (or of its moved-aside copy)."""
    if name.startswith("journal.jsonl"):
        return JOURNAL
    if name.startswith("paused"):
        return PAUSE_FLAG
    if name.startswith("jupiterd.lock"):
        return PLAN_LOCK
    if name.startswith("daemon.lock"):
        return DAEMON_LOCK
    if name.startswith("readiness.json"):
        return READINESS
    return MODELS_CACHE


def clean_text(text: str, limit: int) -> str:
    """``text`` without control characters, at most ``limit`` characters."""
    text = _CONTROL.sub("", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Invalid(ValueError):
    """The content does not match the file's schema; the message says how."""


class Damaged(Exception):
    """A state file was damaged; ``moved_to`` is where it went (None: it
    could not be moved, or the caller asked not to)."""

    def __init__(self, kind: str, path: Path, reason: str, moved_to: Path | None) -> None:
        self.kind = kind
        self.path = path
        self.reason = reason
        self.moved_to = moved_to
        where = f"moved aside to {moved_to.name}" if moved_to else "left in place"
        super().__init__(f"the {kind.replace('_', ' ')} {path} is damaged ({reason}); {where}")


@dataclass(frozen=True, slots=True)
class Damage:
    """One damaged file this process found."""

    kind: str
    path: str
    moved_to: str | None
    reason: str
    at: float  # Unix time
    left_in_place: bool = False  # it could not be moved aside


_events: list[tuple[str, Damage]] = []  # (state_dir, damage), in this process
_events_lock = threading.Lock()


def _dir_key(path: Path) -> str:
    return os.path.abspath(path)


def events(state_dir: str | os.PathLike[str], since: int = 0) -> tuple[list[Damage], int]:
    """The damage this process found in ``state_dir`` after the ``since``-th
    event, and the number to pass next time."""
    key = _dir_key(Path(state_dir))
    with _events_lock:
        n = len(_events)
        found = [d for k, d in _events[since:] if k == key]
    return found, n


# --------------------------------------------------------------------------- reading


class _Refused(Exception):
    """The path is not something jupiterd reads: the message says why."""


def _open(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open without following a symbolic link; only a regular file passes."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refused("it is a symbolic link") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise _Refused("it is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("it is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_bounded(path: Path, max_bytes: int) -> bytes | None:
    try:
        fd = _open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None  # no file (or no state directory): nothing to read
    except OSError as exc:
        raise _Refused(f"cannot be read: {exc.strerror or exc}") from None
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise _Refused(f"larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise _Refused(f"larger than {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise _Refused(f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read(
    path: Path,
    kind: str,
    parse: Callable[[bytes], T],
    max_bytes: int,
    *,
    quarantine: bool = True,
) -> T | None:
    """``parse(content)`` of the file at ``path``, None if there is none.

    A symbolic link, anything but a regular file, a file over ``max_bytes``,
    an unreadable file or content ``parse`` rejects (any exception) raises
    ``Damaged``, after moving the file aside if ``quarantine``."""
    try:
        data = _read_bounded(path, max_bytes)
    except _Refused as exc:
        reason = str(exc)
    else:
        if data is None:
            return None
        try:
            return parse(data)
        except RecursionError:
            reason = "nested too deep"
        except Exception as exc:  # any parser failure is damage, never a crash
            reason = str(exc) or type(exc).__name__
    reason = clean_text(reason, _REASON_MAX)
    moved = move_aside(path, kind, reason) if quarantine else None
    raise Damaged(kind, path, reason, moved)


def _no_constant(name: str) -> Any:
    raise Invalid(f"{name} is not a number JSON allows")


def loads(data: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, bounded nesting."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise Invalid("nested too deep") from None
    except ValueError as exc:
        if isinstance(exc, Invalid):
            raise
        raise Invalid(f"not JSON: {str(exc)[:80]}") from None


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) < 1e300


def text_field(doc: dict[str, Any], key: str, limit: int, *, required: bool = True) -> str | None:
    v = doc.get(key)
    if v is None and not required and key not in doc:
        return None
    if not isinstance(v, str):
        raise Invalid(f"'{key}' is not a string")
    if len(v) > limit:
        raise Invalid(f"'{key}' is longer than {limit} characters")
    return v


def number_field(doc: dict[str, Any], key: str) -> float:
    v: Any = doc.get(key)
    if not is_number(v):
        raise Invalid(f"'{key}' is not a finite number")
    return float(v)


# --------------------------------------------------------------------------- moving aside


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _evidence_name(path: Path) -> Path:
    base = path.with_name(f"{path.name}{DAMAGED}{_stamp()}")
    target, n = base, 0
    while os.path.lexists(target):
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    return target


def move_aside(path: Path, kind: str, reason: str, *, keep_copy: bool = False) -> Path | None:
    """Rename the damaged ``path`` (whatever it is: a link is renamed, not
    followed) to ``NAME.damaged-<UTC time>``; log and record it. With
    ``keep_copy`` the evidence is a hard link and ``path`` stays (the caller
    replaces it atomically). None if it could not be moved."""
    target = _evidence_name(path)
    moved: Path | None = target
    stuck = False
    try:
        if keep_copy:
            os.link(path, target, follow_symlinks=False)
        else:
            os.rename(path, target)
    except FileNotFoundError:
        moved = None  # another process moved it first
        reason = f"{reason} (already moved aside by another process)"
    except OSError as exc:
        moved, stuck = None, True
        reason = f"{reason} (could not move it aside: {exc.strerror or exc})"
    else:
        fsync_dir(path.parent)
    damage = Damage(kind, str(path), str(moved) if moved else None, reason, time.time(), stuck)
    with _events_lock:
        _events.append((_dir_key(path.parent), damage))
    log.error(
        "state file damaged; moved aside" if moved else "state file damaged",
        file=kind,
        path=str(path),
        moved_to=str(moved) if moved else None,
        reason=reason,
    )
    return moved


def evidence(state_dir: str | os.PathLike[str]) -> list[Path]:
    """The moved-aside files an operator has not acknowledged yet."""
    try:
        names = os.listdir(state_dir)
    except OSError:
        return []
    return sorted(Path(state_dir) / n for n in names if _EVIDENCE.match(n))


def acknowledge(state_dir: str | os.PathLike[str]) -> list[Path]:
    """Mark every moved-aside file as seen (renamed to ``...acked``, still
    kept); returns the files acknowledged."""
    done: list[Path] = []
    for p in evidence(state_dir):
        with contextlib.suppress(FileNotFoundError):
            os.rename(p, p.with_name(p.name + ACKED))
            done.append(p)
    if done:
        fsync_dir(Path(state_dir))
    return done


def summary(state_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The unacknowledged evidence, for /status and the gauge."""
    out: list[dict[str, Any]] = []
    for p in evidence(state_dir):
        m = _EVIDENCE.match(p.name)
        assert m is not None
        out.append(
            {"file": kind_of(m["name"]), "moved_to": str(p), "found": m["stamp"], "reason": None}
        )
    return out


# --------------------------------------------------------------------------- writing


def open_for_write(path: Path, kind: str, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)`` that follows no link and creates
    0600. A link, directory or other non-regular thing at ``path`` is moved
    aside (and recorded as damage) and a new file created with O_EXCL."""
    for _ in range(3):
        try:
            fd = _open(path, flags | os.O_CREAT)
        except _Refused as exc:
            move_aside(path, kind, str(exc))
            try:
                fd = _open(path, flags | os.O_CREAT | os.O_EXCL)
            except (FileExistsError, _Refused):
                continue  # someone else was quicker: look again
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)
        return fd
    raise OSError(errno.EEXIST, f"{path} keeps being replaced by something else")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, durably: a new 0600 temporary file
    (O_EXCL, no link followed), fsynced, renamed over ``path`` (a rename
    replaces a link, it does not follow it), the directory fsynced.
    Raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


# --------------------------------------------------------------------------- locks


def _parse_pid(data: bytes) -> int:
    text = data.decode("ascii").strip()
    if not text.isdigit() or not 0 < int(text) < 1 << 22:
        raise Invalid("not a process id")
    return int(text)


def lock_file(path: Path, kind: str) -> int | None:
    """Take ``fcntl.flock`` on ``path`` without blocking and write this
    process's id in it: the open descriptor, or None while another process
    holds the lock. Raises OSError when the file cannot be opened."""
    fd = open_for_write(path, kind, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def holder_pid(path: Path, kind: str) -> int | None:
    """The process id written in a lock file (None if unreadable): only said
    in messages, never trusted, never moved aside (its holder has it open)."""
    try:
        return read(path, kind, _parse_pid, 64, quarantine=False)
    except Damaged:
        return None
