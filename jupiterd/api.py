"""The HTTP interface: /metrics, /status, /healthz, and pause/resume.

Bound to 127.0.0.1:9478 by default. /healthz is 200 only while the main
loop has ticked recently (the same heartbeat feeds the systemd watchdog).
POST /pause and /resume change what the daemon may do: keep the listener on
loopback, or behind a firewall, when exposing /metrics elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from probes.options import parse_hostport

from .daemon import BY_MAX
from .statefile import clean_text

if TYPE_CHECKING:
    from .daemon import Supervisor

SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor")


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
    if request.can_read_body:
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


def make_app(sup: Supervisor) -> web.Application:
    app = web.Application()
    app[SUPERVISOR] = sup
    app.router.add_get("/", _index)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    app.router.add_get("/healthz", _healthz)
    app.router.add_post("/pause", _pause)
    app.router.add_post("/resume", _resume)
    return app


async def start_server(sup: Supervisor, listen: str) -> web.AppRunner:
    hp = parse_hostport(listen, None)
    runner = web.AppRunner(make_app(sup), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, hp.host, hp.port, reuse_address=True)
    await site.start()
    return runner
