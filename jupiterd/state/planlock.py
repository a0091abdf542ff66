"""The plan lock in ``Config.state_dir``: keeps two jupiterd processes on one
host from running plans at once (``fcntl.flock``, non-blocking, held while
any plan of this process runs)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from jupiterd.state import statefile

LOCK_NAME = "jupiterd.lock"


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


class Fenced(JournalError):
    """A write of the shared journal was refused because this replica no
    longer holds the leader lease it started (or resumed) the plan under:
    another replica owns the plan now; this one must stop at once."""


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
