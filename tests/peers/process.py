"""Run a peer as a process: the shape the sandbox and the end-to-end tests use.

A peer script prints one line ``ready host:port`` once it listens; ``Peer``
waits for it (bounded), and stops the whole process group on exit, SIGTERM
first, SIGKILL if it lingers. ``crash()`` is SIGKILL: what a dying service
looks like to its clients.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PEERS = Path(__file__).resolve().parent


class Peer:
    def __init__(
        self, cmd: list[str], timeout: float = 20.0, env: dict[str, str] | None = None
    ) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            cwd=ROOT,
            env=env,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"{' '.join(cmd)} did not become ready: {line.strip()!r}")
        self.addresses = line.split()[1:]  # some peers listen on several
        self.address = self.addresses[0]
        host, _, port = self.address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def crash(self) -> None:
        """SIGKILL the peer: its kernel closes every socket at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.crash()


@contextlib.contextmanager
def peer(cmd: list[str], timeout: float = 20.0) -> Iterator[Peer]:
    p = Peer(cmd, timeout)
    try:
        yield p
    finally:
        p.stop()


def python_peer(script: str, *args: str) -> list[str]:
    return [sys.executable, str(PEERS / script), *args]


def node_peer(script: str, *args: str) -> list[str]:
    return ["node", str(PEERS / "node" / script), *args]
