"""The HTTP interface: /metrics, /status, /healthz, and pause/resume.

Bound to 127.0.0.1:9478 by default. /healthz is 200 only while the main
loop has ticked recently (the same heartbeat feeds the systemd watchdog).

Every request passes one middleware (``_guard``) and every connection one
guard (``ConnectionGuard``):

- the Host header must name this listener (loopback names, an IP literal,
  the listen address, or ``http.allowed_hosts``): a DNS-rebinding page
  cannot read /status or post to /pause;
- a request that is not GET/HEAD must carry ``X-Jupiterd-Request`` (a
  header no cross-site form or simple request can send), no foreign
  Origin or Referer, a JSON body or none, and, with ``http.token`` set,
  ``Authorization: Bearer TOKEN``;
- a request must arrive within ``http.read_timeout`` of its first byte, an
  idle connection (or one whose client stopped reading a response) closes
  after ``http.idle_timeout``, and connections beyond
  ``http.max_connections`` (``max_connections_per_client`` from one
  address) are answered 503 and closed at once, so slow or idle clients
  cannot take the daemon's descriptors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jupiterd.runtime.api_conn import ConnectionGuard
from jupiterd.runtime.api_guard import (
    API_HEADER,
    MAX_BODY,
    Refused,
    check_request,
    exposed_note,
    host_allowed,
    host_of,
)
from jupiterd.runtime.pause import BY_MAX
from jupiterd.state.statefile import clean_text
from jupiterd.telemetry import logs
from probes.options import parse_hostport

__all__ = [
    "API_HEADER",
    "ApiServer",
    "ConnectionGuard",
    "exposed_note",
    "host_allowed",
    "host_of",
    "make_app",
    "start_server",
]

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor

SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor")
# The listen address the server was started with (a reload applies only at
# restart); without it (tests), the configuration's.
LISTEN: web.AppKey[str] = web.AppKey("listen")
GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard")


log = logs.get("jupiterd.api")


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
    sup = request.app[SUPERVISOR]
    listen = request.app.get(LISTEN) or sup.config.http.listen
    try:
        check_request(request, sup.config.http, listen)
    except Refused as exc:
        peer = request.remote or "?"
        log.warning(
            "api request refused",
            method=request.method,
            path=request.path[:200],
            status=exc.status,
            why=exc.why,
            peer=peer,
        )
        resp = web.Response(status=exc.status, text=exc.why + "\n", headers=exc.headers)
        resp.force_close()
        return resp
    await request.read()  # bounded by MAX_BODY and the read deadline
    guard = request.app.get(GUARD)
    if guard is not None and request.transport is not None:
        guard.request_read(request.transport)
    return await handler(request)


# --------------------------------------------------------------------------- handlers


async def _metrics(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    # Rendering takes ~0.25 s per 1,000 targets: on the loop it would hold
    # every probe back that long at each scrape. In a thread the loop still
    # gets the GIL every switch interval (5 ms); prometheus_client's
    # collection is thread-safe.
    body = await asyncio.to_thread(generate_latest, sup.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _status(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    return web.json_response(sup.status(), dumps=lambda o: json.dumps(o, indent=2, default=str))


async def _healthz(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    if sup.healthy():
        return web.Response(text="ok\n")
    stalled = sup.now() - sup.heartbeat
    return web.Response(status=503, text=f"main loop has not run for {stalled:.1f}s\n")


async def _by(request: web.Request) -> str:
    """Who asks: at most 100 characters, no control characters."""
    by = request.headers.get("X-Jupiterd-By") or "api"
    if request.body_exists:  # already read by the middleware
        try:
            doc: Any = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text='body must be JSON, e.g. {"by": "alice"}\n') from None
        if isinstance(doc, dict) and isinstance(doc.get("by"), str):
            by = doc["by"][:1000]
    return clean_text(by, BY_MAX) or "api"


def _answer(sup: Supervisor, paused: bool, error: str | None) -> web.Response:
    """200 once the flag file says it too; 503, saying so, when it could not
    be saved (the change then holds only until jupiterd stops)."""
    body: dict[str, Any] = {"paused": sup.state.paused}
    if paused:
        body["reason"] = sup.state.pause_reason
    if error is not None:
        return web.json_response({**body, "saved": False, "error": error}, status=503)
    return web.json_response(body)


async def _pause(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    return _answer(sup, True, sup.set_paused(True, await _by(request)))


async def _resume(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    return _answer(sup, False, sup.set_paused(False, await _by(request)))


async def _index(request: web.Request) -> web.Response:
    return web.Response(text="jupiterd: GET /status, /metrics, /healthz; POST /pause, /resume\n")


def make_app(sup: Supervisor, listen: str | None = None) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    app[SUPERVISOR] = sup
    if listen is not None:
        app[LISTEN] = listen
    app.router.add_get("/", _index)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    app.router.add_get("/healthz", _healthz)
    app.router.add_post("/pause", _pause)
    app.router.add_post("/resume", _resume)
    return app


class ApiServer:
    """The listener: aiohttp's runner behind a ConnectionGuard."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, guard: ConnectionGuard):
        self.runner, self.server, self.guard = runner, server, guard

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def cleanup(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def start_server(sup: Supervisor, listen: str) -> ApiServer:
    http = sup.config.http
    hp = parse_hostport(listen, None)
    app = make_app(sup, listen)
    guard = app[GUARD] = ConnectionGuard(http)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=http.idle_timeout
    )
    await runner.setup()
    guard.factory = runner.server
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(guard, hp.host, hp.port, reuse_address=True)
    except BaseException:
        await runner.cleanup()
        raise
    return ApiServer(runner, server, guard)
