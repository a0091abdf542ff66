"""A WebRTC signaling server on python-socketio (aiohttp): the Jupiter signaling service.

Real python-socketio, not a stand-in: the socketio probe is tested against it and the
sandbox runs it as the signaling service of a fake EC2 instance.

    python -m jupiterd.sandbox.peers.signaling_server --host 127.0.0.2 --port 3000 \\
        [--path /socket.io/] [--namespace /] [--token SECRET] [--no-websocket]

prints ``ready <host>:<port>`` once listening (``--port 0`` picks a free port), then one
line per session event, in the same format as tests/peers/node/sio_server.js:
``connect <nsp> <sid>``, ``disconnect <nsp> <reason>``, ``connect-error <nsp> <message>``.
Exits 0 on SIGTERM or SIGINT. The token may also come from ``SIGNALING_TOKEN``.

Signaling events (namespace ``--namespace``): ``join`` {room} answers the peers already in
the room and announces ``peer-joined`` to them; ``signal`` {to, data} relays an offer,
answer or ICE candidate as ``signal`` {from, data}; ``leave`` {room}; ``echo`` acks its
argument. Self-contained (no imports from the tests package) so it runs as a script.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import socketio
from aiohttp import web


class SessionLog:
    """What the server saw, as lines; optionally echoed to stdout for a parent process."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.lines: list[tuple[float, str]] = []
        self.echo = echo

    def add(self, line: str) -> None:
        self.lines.append((time.monotonic(), line))
        if self.echo is not None:
            self.echo(line)

    def find(self, prefix: str, after: int = 0) -> str | None:
        """The first line from index ``after`` on that starts with ``prefix``."""
        for _, line in self.lines[after:]:
            if line.startswith(prefix):
                return line
        return None

    async def wait_for(self, prefix: str, timeout: float = 2.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(prefix, after)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                seen = [line for _, line in self.lines]
                raise AssertionError(f"server never logged {prefix!r}; it logged {seen}")
            await asyncio.sleep(0.01)


def build(
    *,
    path: str = "/socket.io/",
    namespace: str = "/",
    token: str | None = None,
    websocket: bool = True,
    ping_interval: float = 25,
    ping_timeout: float = 20,
    connect_delay: float = 0.0,
    log: SessionLog | None = None,
) -> tuple[web.Application, socketio.AsyncServer, SessionLog]:
    """The aiohttp application serving the signaling server at ``path``."""
    log = log or SessionLog()
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins="*",
        transports=["polling", "websocket"] if websocket else ["polling"],
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )
    rooms: dict[str, str] = {}  # sid -> room

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        if connect_delay:
            await asyncio.sleep(connect_delay)  # lets tests see server pings first
        if token is not None:
            given = auth.get("token") if isinstance(auth, dict) else None
            if given != token:
                log.add(f"connect-error {namespace} Not authorized")
                raise socketio.exceptions.ConnectionRefusedError("Not authorized")
        log.add(f"connect {namespace} {sid}")

    async def disconnect(sid: str, reason: str = "") -> None:
        room = rooms.pop(sid, None)
        if room is not None:
            await sio.emit("peer-left", {"sid": sid}, room=room, skip_sid=sid, namespace=namespace)
        log.add(f"disconnect {namespace} {reason}")

    async def join(sid: str, data: Any) -> dict[str, Any]:
        room = str(data.get("room", "")) if isinstance(data, dict) else ""
        if not room:
            return {"error": "room required"}
        peers = [s for s, r in rooms.items() if r == room and s != sid]
        rooms[sid] = room
        await sio.enter_room(sid, room, namespace=namespace)
        await sio.emit("peer-joined", {"sid": sid}, room=room, skip_sid=sid, namespace=namespace)
        return {"room": room, "peers": peers}

    async def leave(sid: str, data: Any) -> None:
        room = rooms.pop(sid, None)
        if room is not None:
            await sio.leave_room(sid, room, namespace=namespace)
            await sio.emit("peer-left", {"sid": sid}, room=room, namespace=namespace)

    async def relay(sid: str, data: Any) -> dict[str, Any]:
        target = data.get("to") if isinstance(data, dict) else None
        if not isinstance(target, str) or rooms.get(target) is None:
            return {"error": "unknown peer"}
        if rooms.get(target) != rooms.get(sid):
            return {"error": "peer is in another room"}
        payload = {"from": sid, "data": data.get("data")}
        await sio.emit("signal", payload, to=target, namespace=namespace)
        return {"ok": True}

    async def echo(sid: str, data: Any) -> Any:
        return data

    for name, handler in (
        ("connect", connect),
        ("disconnect", disconnect),
        ("join", join),
        ("leave", leave),
        ("signal", relay),
        ("echo", echo),
    ):
        sio.on(name, handler, namespace=namespace)

    app = web.Application()
    sio.attach(app, socketio_path=path.strip("/") or "socket.io")
    return app, sio, log


async def serve(args: argparse.Namespace) -> None:
    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    # Before anything else, so that a SIGTERM at any point exits cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app, _, _ = build(
        path=args.path,
        namespace=args.namespace,
        token=args.token or os.environ.get("SIGNALING_TOKEN") or None,
        websocket=not args.no_websocket,
        log=SessionLog(say),
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    # Bind first so that --port 0 can report the port it got.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    say(f"ready {host}:{port}")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--path", default="/socket.io/")
    parser.add_argument("--namespace", default="/")
    parser.add_argument("--token", default=None, help="required auth token (or SIGNALING_TOKEN)")
    parser.add_argument("--no-websocket", action="store_true", help="long-polling only")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
