"""Start the test peers as processes for the benchmarks (their CPU is then
not counted in the probing process's own)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "tests" / "peers"


@contextlib.contextmanager
def spawn(cmd: list[str], timeout: float = 20.0) -> Iterator[str]:
    """Run a peer that prints `ready host:port`; yield that address."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        import select

        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("ready "):
            raise RuntimeError(f"{' '.join(cmd)} did not start: {line!r}")
        yield " ".join(line.split()[1:])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def py(script: str, *args: str) -> list[str]:
    return [sys.executable, str(PEERS / script), *args]


def node_sio(*args: str) -> list[str]:
    return ["node", str(PEERS / "node" / "sio_server.js"), *args]
