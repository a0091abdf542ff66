"""Damaged state files, as the daemon shows them: exported as metrics,
listed in /status until acknowledged, and a damaged journal holds the
services it may concern (a ``JournalHold`` event)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from jupiterd.core.health import JournalHold
from jupiterd.state import statefile
from jupiterd.state.journal import Journal, JournalError, LockBusy, PlanLock, held_services

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor


def _utc(at: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


class StateFiles:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.damaged: list[dict[str, Any]] = []  # damaged files not yet acknowledged
        self._seen = 0  # statefile events already counted
        self._stuck: list[statefile.Damage] = []  # damage that could not be moved aside
        self._exported = False

    def check_journal(self) -> None:
        """Read the journal once at start, so damage shows (and holds) now
        rather than at the next plan. Moving it aside needs the plan lock:
        while a failover from the CLI holds it, that failover reads it."""
        state_dir = self.sup.config.state_dir
        lock = PlanLock(state_dir)
        try:
            lock.acquire()
        except (LockBusy, JournalError):
            return
        try:
            Journal(state_dir).read()
        except JournalError as exc:
            self.sup.log.error("cannot read the journal", error=str(exc))
        finally:
            lock.release()

    def sync(self) -> None:
        """Export damaged state files (this process's finds, and the
        moved-aside files not yet acknowledged) and hold the services a
        damaged journal may concern."""
        sup = self.sup
        state_dir = sup.config.state_dir
        found, self._seen = statefile.events(state_dir, self._seen)
        for d in found:
            sup.metrics.state_file_damage.labels(d.kind).inc()
            if d.left_in_place:
                self._stuck.append(d)
        files = statefile.summary(state_dir)
        files += [
            {"file": d.kind, "moved_to": None, "found": _utc(d.at), "reason": d.reason}
            for d in self._stuck
        ]
        if files != self.damaged or not self._exported:
            self._exported = True
            self.damaged = files
            for kind in statefile.KINDS:
                n = sum(1 for f in files if f["file"] == kind)
                sup.metrics.state_file_damaged.labels(kind).set(n)
        holds = held_services(state_dir, sup.state.services)
        for name, s in sup.state.services.items():
            if holds.get(name) != s.journal_hold:
                sup.dispatch(JournalHold(name, holds.get(name), sup.now()))
