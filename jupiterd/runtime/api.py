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
import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jupiterd.config import HttpConfig, is_loopback
from jupiterd.runtime.supervisor import BY_MAX
from jupiterd.state.statefile import clean_text
from jupiterd.telemetry import logs
from probes.options import OptionError, parse_hostport

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor

SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor")
# The listen address the server was started with (a reload applies only at
# restart); without it (tests), the configuration's.
LISTEN: web.AppKey[str] = web.AppKey("listen")
GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard")

# The header every state-changing request must carry. Browsers send custom
# headers cross-site only after a CORS preflight, which is never answered.
API_HEADER = "X-Jupiterd-Request"
SAFE_METHODS = frozenset({"GET", "HEAD"})
MAX_BODY = 64 * 1024

log = logs.get("jupiterd.api")


# --------------------------------------------------------------------------- requests


def host_of(value: str) -> str | None:
    """The host name of a Host header (lower case, no port, no brackets),
    or None when it is not ``host[:port]``."""
    text = value.strip()
    if not text or any(c in text for c in "/@?#\\ \t"):
        return None
    try:
        host = parse_hostport(text, 80).host
    except OptionError:
        return None
    return host.rstrip(".").lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_allowed(host: str, http: HttpConfig, listen: str) -> bool:
    """DNS rebinding needs a DNS name: IP literals and loopback names are
    fine, other names only the listen address or ``allowed_hosts``."""
    if is_loopback(host) or _is_ip(host):
        return True
    return host in http.allowed_hosts or host == host_of(listen)


def _origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.rsplit("@", 1)[-1].lower()


def _bearer(header: str) -> bytes | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def exposed_note(http: HttpConfig) -> str:
    """What to say when the API listens beyond loopback."""
    text = f"http.listen {http.listen} is not loopback: the API is reachable from the network"
    if http.token is None:
        return f"{text}; set http.token or firewall POST /pause and /resume"
    return f"{text}; POST needs http.token, /status and /metrics are open: firewall the port"


class Refused(Exception):
    def __init__(self, status: int, why: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(why)
        self.status, self.why, self.headers = status, why, headers or {}


def check_request(request: web.BaseRequest, http: HttpConfig, listen: str) -> None:
    """Raise Refused when the request may not reach a handler."""
    hosts = request.headers.getall("Host", [])
    if len(hosts) > 1:
        raise Refused(400, "more than one Host header")
    if hosts:
        host = host_of(hosts[0])
        if host is None:
            raise Refused(400, "the Host header is not host[:port]")
        if not host_allowed(host, http, listen):
            raise Refused(
                403,
                f"Host '{host[:100]}' does not name this listener (DNS rebinding is refused); "
                "a name used to reach jupiterd belongs in http.allowed_hosts",
            )
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is None and "Referer" in request.headers:
        origin = _origin_of(request.headers["Referer"]) or "null"
    elif origin is not None:
        origin = _origin_of(origin) or "null"
    if origin is not None and (not hosts or origin != hosts[0].strip().lower()):
        raise Refused(
            403, f"cross-origin {request.method} refused (Origin or Referer {origin[:100]})"
        )
    if not request.headers.get(API_HEADER):
        raise Refused(
            403,
            f"{request.method} needs the header '{API_HEADER}: 1' "
            "(the jupiterd CLI sends it; it keeps web pages from posting here)",
        )
    if http.token is not None:
        given = _bearer(request.headers.get("Authorization", ""))
        challenge = {"WWW-Authenticate": 'Bearer realm="jupiterd"'}
        if given is None:
            raise Refused(
                401, "this API needs 'Authorization: Bearer TOKEN' (http.token)", challenge
            )
        expected = http.token.get_secret_value().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            raise Refused(401, "the bearer token is not the configured http.token", challenge)
    ctype = request.headers.get("Content-Type", "")
    if request.body_exists and ctype.split(";", 1)[0].strip().lower() != "application/json":
        shown = f"'{ctype[:100]}'" if ctype else "none"
        raise Refused(415, f"the body must be Content-Type: application/json (got {shown})")


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


# --------------------------------------------------------------------------- connections

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Connection: close\r\nContent-Length: 41\r\n\r\n"
    b"too many connections to the jupiterd API\n"
)


class _Refuse(asyncio.Protocol):
    """A connection beyond the caps: 503 and closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class _Conn(asyncio.Protocol):
    """One API connection: counted, and closed when a request takes longer
    than ``read_timeout`` to arrive or the client reads nothing of a
    response for ``idle_timeout``. Everything else goes to aiohttp."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol, peer: str) -> None:
        self.guard, self.inner, self.peer = guard, inner, peer
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stalled: asyncio.TimerHandle | None = None  # writing paused since
        self.reading = True  # a request is arriving (or the first one is due)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.reading:
            self.reading = True
            self._arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        # The socket's buffers are full: the client is not reading.
        if self.stalled is None:
            loop = asyncio.get_running_loop()
            self.stalled = loop.call_later(self.guard.http.idle_timeout, self._expired)
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self._unstall()
        self.inner.resume_writing()

    def _unstall(self) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unstall()
        self.guard.closed(self)
        self.inner.connection_lost(exc)

    def request_read(self) -> None:
        self.reading = False
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.http.read_timeout, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self._disarm()
        self._unstall()
        log.debug("api connection closed: too slow", peer=self.peer)
        if self.transport is not None:
            self.transport.abort()


class ConnectionGuard:
    """The protocol factory around aiohttp's: caps and read deadlines."""

    def __init__(self, http: HttpConfig) -> None:
        self.http = http
        self.factory: Callable[[], asyncio.Protocol] | None = None  # aiohttp's, once set up
        self.conns: dict[asyncio.BaseTransport, _Conn] = {}
        self.per_client: dict[str, int] = {}
        self.refused = 0
        self._warned = 0.0

    def __call__(self) -> asyncio.Protocol:
        return _Accept(self)

    def admit(self, transport: asyncio.BaseTransport) -> asyncio.Protocol:
        peer = transport.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if (
            len(self.conns) >= self.http.max_connections
            or self.per_client.get(addr, 0) >= self.http.max_connections_per_client
        ):
            self.refused += 1
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning(
                    "api connection limit reached: refusing connections",
                    open=len(self.conns),
                    peer=addr,
                    max_connections=self.http.max_connections,
                    max_connections_per_client=self.http.max_connections_per_client,
                )
            return _Refuse()
        assert self.factory is not None
        conn = _Conn(self, self.factory(), addr)
        self.conns[transport] = conn
        self.per_client[addr] = self.per_client.get(addr, 0) + 1
        return conn

    def closed(self, conn: _Conn) -> None:
        if conn.transport is not None and self.conns.pop(conn.transport, None) is not None:
            left = self.per_client.get(conn.peer, 1) - 1
            if left > 0:
                self.per_client[conn.peer] = left
            else:
                self.per_client.pop(conn.peer, None)

    def request_read(self, transport: asyncio.BaseTransport) -> None:
        conn = self.conns.get(transport)
        if conn is not None:
            conn.request_read()


class _Accept(asyncio.Protocol):
    """Decides, once the transport exists (the peer is known), which
    protocol serves the connection, and hands every event to it."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.proto: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.proto = self.guard.admit(transport)
        self.proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.proto is not None:
            self.proto.data_received(data)

    def eof_received(self) -> bool | None:
        return self.proto.eof_received() if self.proto is not None else None

    def pause_writing(self) -> None:
        if self.proto is not None:
            self.proto.pause_writing()

    def resume_writing(self) -> None:
        if self.proto is not None:
            self.proto.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.proto is not None:
            self.proto.connection_lost(exc)


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
