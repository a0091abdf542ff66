"""Real Socket.IO servers on loopback for the socketio probe's tests.

- ``node_sio_server(node, major=4|2, ...)``: Socket.IO 4.8 or 2.5 under Node
  (tests/peers/node/sio_server.js; ``npm ci --prefix tests/peers/node`` installs them).
- ``python_sio_server(...)``: python-socketio (aiohttp) in this process, on this loop.
- ``python_sio_subprocess(...)``: the same server as a script
  (jupiterd/sandbox/peers/signaling_server.py).

Each yields a ``SioPeer``: its ``url`` and the lines the server logged about sessions
(``connect <nsp> <sid>``, ``disconnect <nsp> <reason>``, ``engine-close <reason>``,
``connect-error <nsp> <message>``), so a test can prove what the server saw. Subprocesses
run in their own process group, killed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from jupiterd.sandbox.peers import signaling_server
from jupiterd.sandbox.peers.signaling_server import SessionLog, build

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
NODE_SCRIPT = NODE_DIR / "sio_server.js"
SIGNALING_SCRIPT = Path(signaling_server.__file__)  # shipped with the sandbox
START_TIMEOUT = 15.0


@dataclass
class SioPeer:
    url: str
    host: str
    port: int
    log: SessionLog = field(default_factory=SessionLog)

    def __str__(self) -> str:
        return self.url

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    async def wait_for(self, prefix: str, timeout: float = 2.0, after: int = 0) -> str:
        """Wait for a log line starting with ``prefix`` (from line index ``after`` on)."""
        return await self.log.wait_for(prefix, timeout, after)

    def mark(self) -> int:
        """The index of the next log line, for ``wait_for(after=...)``."""
        return len(self.log.lines)

    def lines(self) -> list[str]:
        return [line for _, line in self.log.lines]


@contextlib.contextmanager
def _script(argv: list[str], cwd: Path) -> Iterator[SioPeer]:
    """Run a peer script that prints ``ready host:port`` and then log lines."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        first: str | None = None
        with contextlib.suppress(queue.Empty):
            first = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if first is None or not first.startswith("ready "):
            proc.kill()
            err = proc.stderr.read() if proc.stderr is not None else ""
            raise RuntimeError(f"{argv[0]} {argv[1]} did not start: {first!r} {err[-2000:]}")
        hostport = first.split(" ", 1)[1]
        host, _, port = hostport.rpartition(":")
        peer = SioPeer(f"http://{hostport}", host.strip("[]"), int(port))

        def collect() -> None:
            while (line := lines.get()) is not None:
                peer.log.add(line)

        threading.Thread(target=collect, daemon=True).start()
        yield peer
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def node_sio_server(
    node: str,
    *,
    major: int = 4,
    host: str = "127.0.0.1",
    path: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    websocket: bool = True,
    allow_eio3: bool = False,
    ping_interval_ms: int | None = None,
    ping_timeout_ms: int | None = None,
    connect_delay_ms: int = 0,
) -> contextlib.AbstractContextManager[SioPeer]:
    argv = [node, str(NODE_SCRIPT), "--major", str(major), "--host", host, "--port", "0"]
    if path is not None:
        argv += ["--path", path]
    if namespace is not None:
        argv += ["--namespace", namespace]
    if token is not None:
        argv += ["--token", token]
    if not websocket:
        argv.append("--no-websocket")
    if allow_eio3:
        argv.append("--allow-eio3")
    if ping_interval_ms is not None:
        argv += ["--ping-interval", str(ping_interval_ms)]
    if ping_timeout_ms is not None:
        argv += ["--ping-timeout", str(ping_timeout_ms)]
    if connect_delay_ms:
        argv += ["--connect-delay", str(connect_delay_ms)]
    return _script(argv, NODE_DIR)


def python_sio_subprocess(
    *,
    host: str = "127.0.0.1",
    path: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    websocket: bool = True,
) -> contextlib.AbstractContextManager[SioPeer]:
    argv = [sys.executable, str(SIGNALING_SCRIPT), "--host", host, "--port", "0"]
    if path is not None:
        argv += ["--path", path]
    if namespace is not None:
        argv += ["--namespace", namespace]
    if token is not None:
        argv += ["--token", token]
    if not websocket:
        argv.append("--no-websocket")
    return _script(argv, HERE)


@contextlib.asynccontextmanager
async def python_sio_server(
    *,
    host: str = "127.0.0.1",
    path: str = "/socket.io/",
    namespace: str = "/",
    token: str | None = None,
    websocket: bool = True,
    ping_interval: float = 25,
    ping_timeout: float = 20,
    connect_delay: float = 0.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[SioPeer]:
    """python-socketio in this process (async_mode="aiohttp"), on a free port; over
    TLS (an ``https://`` URL) with ``ssl_context``."""
    app, sio, log = build(
        path=path,
        namespace=namespace,
        token=token,
        websocket=websocket,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        connect_delay=connect_delay,
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    await site.start()
    port = sock.getsockname()[1]
    try:
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        scheme = "https" if ssl_context is not None else "http"
        yield SioPeer(f"{scheme}://{netloc}", host, port, log)
    finally:
        with contextlib.suppress(Exception):
            await sio.shutdown()
        await asyncio.wait_for(runner.cleanup(), 5)
