"""The pause flag: a pause survives restarts.

An operator's maintenance window must not end because systemd restarted the
daemon, so ``jupiterd pause`` (the API) writes ``<state_dir>/paused`` and
``resume`` removes it. The flag holds ``{"by": str, "at": number}``. A
damaged flag most likely was a pause: it is moved aside (the state-file
reader does that) and jupiterd stays paused, saying so, until someone
resumes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupiterd.state import statefile

PAUSE_FILE = "paused"
PAUSE_MAX_BYTES = 4096
BY_MAX = 100  # characters of who paused or resumed


def parse_pause(data: bytes) -> str:
    """The pause flag's content: ``{"by": str, "at": number}``; who paused."""
    doc = statefile.loads(data)
    if not isinstance(doc, dict):
        raise statefile.Invalid("not a JSON object")
    by = statefile.text_field(doc, "by", 2 * BY_MAX)
    statefile.number_field(doc, "at")
    return statefile.clean_text(by or "", BY_MAX) or "a previous run"


@dataclass(frozen=True, slots=True)
class SavedPause:
    """A pause found at start. ``damaged``: the flag could not be read (then
    ``by`` is what the new flag records and ``shown`` what /status says)."""

    by: str
    shown: str | None = None
    damaged: bool = False


class PauseFlag:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / PAUSE_FILE

    def load(self) -> SavedPause | None:
        """The pause a previous run saved; None when not paused."""
        try:
            by = statefile.read(self.path, statefile.PAUSE_FLAG, parse_pause, PAUSE_MAX_BYTES)
        except statefile.Damaged as exc:
            where = f"moved aside to {exc.moved_to.name}" if exc.moved_to else "left in place"
            shown = (
                f"jupiterd, because the pause flag was damaged ({where}); "
                "`jupiterd resume` ends the pause"
            )
            return SavedPause("jupiterd (the pause flag was damaged)", shown, damaged=True)
        return None if by is None else SavedPause(by)

    def save(self, paused: bool, by: str, log: Any) -> str | None:
        """Write (paused) or remove (resumed) the flag. None when saved, else
        the sentence why not (also logged): the new state then holds in
        memory only."""
        path = self.path
        try:
            if paused:
                path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                doc = {"by": by, "at": time.time()}
                statefile.write_atomic(path, json.dumps(doc).encode())
            else:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(path)  # a link is removed, not followed
        except OSError as exc:
            error = (
                f"the pause flag {path} could not be saved ({exc.strerror or exc}): "
                "jupiterd is paused until it stops, but a restart will not be paused"
                if paused
                else f"the pause flag {path} could not be removed ({exc.strerror or exc}): "
                "jupiterd is resumed until it stops, but a restart will be paused again"
            )
            log.error("could not persist the pause flag", path=str(path), error=error)
            return error
        return None
