"""Run a peer as a process: the shape the sandbox and the end-to-end tests use.

A peer script prints one line ``ready host:port`` once it listens; ``Peer``
waits for it (bounded), and stops the whole process group on exit, SIGTERM
first, SIGKILL if it lingers. ``crash()`` is SIGKILL: what a dying service
looks like to its clients.

``die_with_parent()`` makes a child die with the process that started it,
even when that one is SIGKILLed (the sandbox's processes use it).
``free_port()``: a port free now on a loopback address.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

# The directory that holds the jupiterd package (a checkout, or site-packages):
# where peers run, so that ``python -m`` in a peer finds this copy.
ROOT = Path(__file__).resolve().parents[3]
PEERS = Path(__file__).resolve().parent
PR_SET_PDEATHSIG = 1


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when
    its parent dies, however it dies (PR_SET_PDEATHSIG), or None off Linux.

    The kernel's "parent" is the *thread* that forked: spawn from the main
    thread (or a thread that outlives the child), never from a pool worker
    that may exit first. The pdeath signal survives exec, not a further
    fork: a child that starts its own children must set it for them."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        zero = ctypes.c_ulong(0)
        if prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(sig), zero, zero, zero) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), sig)

    return preexec


class Peer:
    """``wait=False`` only starts the process (quick, so it can be done on
    the thread that should own it); ``wait_ready()`` then waits for it."""

    def __init__(
        self,
        cmd: list[str],
        timeout: float = 20.0,
        env: dict[str, str] | None = None,
        *,
        wait: bool = True,
        parent_death_signal: int | None = None,
    ) -> None:
        self.cmd = cmd
        self.timeout = timeout
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            cwd=ROOT,
            env=env,
            preexec_fn=None
            if parent_death_signal is None
            else die_with_parent(parent_death_signal),
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"{' '.join(self.cmd)} did not become ready: {line.strip()!r}")
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
