"""``socketio``: open a real Socket.IO session, join a namespace, close it cleanly.

What a browser client does, step by step, each step timed as a phase:

1. ``handshake``: ``GET <path>?EIO=4&transport=polling`` answers an Engine.IO open
   packet (``0{"sid":...}``; v3 servers answer ``<len>:0{...}`` whatever ``EIO`` says).
   With ``transport=websocket, upgrade=false`` the handshake is a direct WebSocket
   whose first frame is the open packet.
2. ``upgrade`` (``transport=websocket``): a second connection upgrades to WebSocket with
   ``transport=websocket&sid=S``, sends ``2probe``, expects ``3probe``, sends ``5``.
3. ``sio_connect``: Socket.IO CONNECT for the namespace (``40[/nsp,][{auth}]``) answered
   by ``40{"sid":...}`` or CONNECT_ERROR ``44...``. Server pings are answered, other
   packets skipped (bounded). Protocol v4 servers (Socket.IO 2) connect ``/`` during
   the handshake; the probe then sends a ping and takes the server's pong as the sign
   that the namespace middleware's verdict has arrived.
4. ``close``: DISCONNECT (``41``) and Engine.IO close (``1``) over the transport in use,
   then a WebSocket close frame; bounded by what is left of the timeout.

Long-polling and the WebSocket upgrade use ``probes.httpclient``; the WebSocket is
``probes.websocket``; the wire text is ``probes.engineio``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any, Final, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator

from . import engineio as eio
from .httpclient import TOKEN, HttpConnection, Response, excerpt
from .options import ProbeOptions, parse_url, quote
from .result import ProbeFailure, ProbeResult, Reason, Trace, entrypoint
from .websocket import WebSocket, WebSocketError, open_websocket

DEFAULT_PORT: Final = 3000
MAX_SKIPPED: Final = 64  # packets tolerated before the CONNECT reply
MAX_POLLS: Final = 16  # GET requests while waiting for the CONNECT reply
MAX_POLL_BODY: Final = 256 * 1024
MAX_WS_MESSAGE: Final = 1 << 20
CLOSE_WAIT: Final = 0.5  # at most this long for the server to acknowledge our close
FAILURE_CLOSE_WAIT: Final = 0.3

_RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)


class Options(ProbeOptions):
    eio: Literal["auto", "3", "4"] = "auto"  # Engine.IO revision to ask for
    transport: Literal["polling", "websocket"] = "websocket"
    upgrade: bool = True  # websocket via a polling handshake (False: WebSocket only)
    path: str = "/socket.io/"
    namespace: str = "/"
    auth: SecretStr | None = None  # JSON object sent with CONNECT, e.g. {"token": "..."}
    headers: dict[str, str] = Field(default_factory=dict)  # extra request headers

    _auth_json: str | None = PrivateAttr(None)
    _auth_query: str = PrivateAttr("")

    @field_validator("eio", mode="before")
    @classmethod
    def _eio_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "?# \t\r\n"):
            raise ValueError("must be an absolute path such as /socket.io/, without a query")
        # engine.io-client adds the trailing slash too (addTrailingSlash).
        return value if value.endswith("/") else value + "/"

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in ",?# \t\r\n"):
            raise ValueError("must start with '/' and contain no ',', '?', '#' or spaces")
        return value

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_from_yaml(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value, separators=(",", ":"))
        return value

    @field_validator("auth")
    @classmethod
    def _auth_object(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            doc = json.loads(value.get_secret_value())
        except ValueError:
            raise ValueError('must be a JSON object such as {"token": "..."}') from None
        if not isinstance(doc, dict):
            raise ValueError('must be a JSON object such as {"token": "..."}')
        return value

    @field_validator("headers", mode="before")
    @classmethod
    def _headers_from_cli(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError('must be a JSON object such as {"Origin": "..."}') from None
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not TOKEN.fullmatch(name) or any(c in text for c in "\r\n\0"):
                raise ValueError(f"invalid header {quote(name)}")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {quote(name)} is set by the probe itself")
        return value

    def model_post_init(self, context: Any) -> None:
        if self.auth is not None:
            doc = json.loads(self.auth.get_secret_value())
            self._auth_json = json.dumps(doc, separators=(",", ":"))
            # Protocol v4 (Socket.IO 2) has no CONNECT payload: clients put it in a query.
            self._auth_query = urllib.parse.urlencode(
                {k: v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}
            )


def _engine_error(resp: Response) -> str | None:
    """engine.io's ``{"code","message"}`` or python-engineio's JSON string, as text."""
    body = resp.body.strip()
    if not body.startswith((b"{", b'"')):
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, dict) and "message" in doc:
        code = doc.get("code")
        msg = excerpt(str(doc["message"]).encode("utf-8", "replace"), 120)
        return f"code {code} '{msg}'" if code is not None else f"'{msg}'"
    if isinstance(doc, str):
        return f"'{excerpt(doc.encode('utf-8', 'replace'), 120)}'"
    return None


class _Session:
    """One probe's Socket.IO session; never outlives the probe."""

    def __init__(self, trace: Trace, target: str, options: Options, timeout: float) -> None:
        self.trace = trace
        self.opts = options
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + timeout
        url = parse_url(target, DEFAULT_PORT)
        self.url = url
        target_path, _, target_query = url.path.partition("?")
        self.path = options.path
        if "path" not in options.model_fields_set and target_path != "/":
            self.path = target_path if target_path.endswith("/") else target_path + "/"
        self.extra_query = f"&{target_query}" if target_query else ""
        self.asked = 4 if options.eio != "3" else 3
        self.version = self.asked  # what the server speaks, once known
        self.sid = ""
        self.poll: HttpConnection | None = None
        self.ws: WebSocket | None = None
        self.ws_conn: HttpConnection | None = None
        self.pending: collections.deque[str] = collections.deque()
        self.polls = 0
        self.skipped = 0
        self.connected = False
        self.upgrades: tuple[str, ...] = ()
        self.version_known = False  # the polling framing proved the version
        self.step = "the start"
        self.auth_in_query = False  # protocol v4 carries auth in a query string

    # --- plumbing ------------------------------------------------------------------------

    def remaining(self) -> float:
        return self.deadline - self.loop.time()

    def close_budget(self, cap: float) -> float:
        margin = max(0.02, 0.05 * self.timeout)
        return min(cap, self.remaining() - margin)

    def abort(self) -> None:
        if self.poll is not None:
            self.poll.close()
        if self.ws is not None:
            self.ws.abort()
        elif self.ws_conn is not None:
            self.ws_conn.close()

    def query(self, transport: str, *, sid: bool) -> str:
        q = f"{self.path}?EIO={self.asked}&transport={transport}"
        if sid:
            q += f"&sid={urllib.parse.quote(self.sid, safe='')}"
        q += "&b64=1"  # v3 servers: base64 binary in text payloads, never binary payloads
        if self.asked == 3 and self.opts.namespace == "/" and self.opts._auth_query:
            # Protocol v4 servers connect "/" during the handshake: only this query
            # can carry the credentials there (socket.io-client 2.x's `query` option).
            q += "&" + self.opts._auth_query
            self.auth_in_query = True
        return q + self.extra_query

    @contextlib.contextmanager
    def stage(self, phase: str, step: str) -> Iterator[None]:
        """A timed phase, and the words a timeout in it is reported with."""
        previous, self.step = self.step, step
        with self.trace.phase(phase):
            yield
        self.step = previous

    async def open_http(self) -> HttpConnection:
        previous, self.step = self.step, f"the connection to {self.url.netloc}"
        conn = await HttpConnection.open(self.trace, self.url)
        self.step = previous
        return conn

    def http_failure(self, resp: Response, what: str) -> ProbeFailure:
        """The sentence for an HTTP answer that is not the Engine.IO one expected."""
        engine = _engine_error(resp)
        status = resp.status_line
        if resp.status == 404:
            return ProbeFailure(
                Reason.UNEXPECTED_RESPONSE,
                f"{what}: {status}: no Socket.IO server at {self.path}? "
                "(check the target and the path option)",
            )
        if resp.status == 200 and what.endswith("upgrade"):
            return ProbeFailure(
                Reason.UNEXPECTED_RESPONSE,
                f"{what}: {status} instead of 101 Switching Protocols (a proxy in front of "
                "the server may drop the Upgrade header)",
            )
        if engine is None:
            body = f": '{excerpt(resp.body)}'" if resp.body else ""
            return ProbeFailure(Reason.UNEXPECTED_RESPONSE, f"{what}: {status}{body}")
        hint = ""
        low = engine.lower()
        if "unsupported" in low and "version" in low and self.asked == 3:
            hint = (
                " (the server speaks only Engine.IO 4, i.e. Socket.IO 3+ without allowEIO3"
                " or python-socketio 5: use eio=4 or eio=auto)"
            )
        elif self.sid and ("session id unknown" in low or "invalid session" in low):
            hint = (
                " (the server no longer knows the session: it closed it, or another server"
                " behind a load balancer without sticky sessions answered)"
            )
        elif "transport unknown" in low or "invalid transport" in low:
            hint = (
                " (the server does not accept WebSocket: set transport=polling to probe it"
                " over long-polling)"
                if "WebSocket" in what
                else " (the server does not accept this transport)"
            )
        return ProbeFailure(
            Reason.UNEXPECTED_RESPONSE, f"{what}: {status}, Engine.IO error {engine}{hint}"
        )

    @staticmethod
    def text(resp: Response, what: str) -> str:
        try:
            return resp.body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"{what}: body is not UTF-8 text: '{excerpt(resp.body)}'"
            ) from None

    async def poll_request(self, method: str, body: bytes = b"") -> Response:
        if self.poll is None or not self.poll.reusable:
            if self.poll is not None:
                self.poll.close()
            self.poll = await self.open_http()
        headers = dict(self.opts.headers)
        if method == "POST":
            headers["Content-Type"] = "text/plain;charset=UTF-8"
        return await self.poll.request(
            method,
            self.query("polling", sid=bool(self.sid)),
            headers=headers,
            body=body,
            max_body=MAX_POLL_BODY,
        )

    async def send(self, packets: list[str]) -> None:
        if self.ws is not None:
            for p in packets:
                self.ws.send_text(p)
            return
        payload = eio.encode_payload(packets, self.version).encode("utf-8")
        resp = await self.poll_request("POST", payload)
        if resp.status != 200:
            raise self.http_failure(resp, "sending over long-polling")

    async def recv(self) -> str:
        """The next Engine.IO packet from whichever transport is in use."""
        while not self.pending:
            if self.ws is not None:
                text = await self.ws.recv_text()
                return eio.BINARY if text is None else eio.check_packet(text)
            self.polls += 1
            if self.polls > MAX_POLLS:
                raise ProbeFailure(
                    Reason.UNEXPECTED_RESPONSE,
                    f"no CONNECT reply after {MAX_POLLS} long-polling requests",
                )
            resp = await self.poll_request("GET")
            if resp.status != 200:
                raise self.http_failure(resp, "long-polling")
            self.pending.extend(
                eio.decode_payload(
                    self.text(resp, "long-polling"), self.version, truncated=resp.truncated
                )
            )
        return self.pending.popleft()

    def skip(self, packet: str) -> None:
        self.skipped += 1
        if self.skipped > MAX_SKIPPED:
            raise ProbeFailure(
                Reason.UNEXPECTED_RESPONSE,
                f"no CONNECT reply for namespace {self.opts.namespace} among the first "
                f"{MAX_SKIPPED} packets (last: '{eio.show(packet)}')",
            )

    # --- steps ---------------------------------------------------------------------------

    def accept_version(self, found: int) -> None:
        if self.opts.eio != "auto" and found != self.asked:
            speaks = "v3 (Socket.IO 1/2)" if found == 3 else "v4 (Socket.IO 3+)"
            raise ProbeFailure(
                Reason.UNEXPECTED_RESPONSE,
                f"asked for Engine.IO v{self.asked} but the server answered Engine.IO "
                f"{speaks}: set eio={found} or eio=auto if that is expected",
            )
        self.version = found

    def open_session(self, packet: str) -> None:
        hs = eio.parse_open(packet)
        self.sid = hs.sid
        facts = self.trace.facts
        facts["eio"] = self.version
        facts["sid_present"] = True
        facts["ping_interval"] = hs.ping_interval
        facts["ping_timeout"] = hs.ping_timeout
        facts["upgrades"] = list(hs.upgrades)
        if hs.max_payload is not None:
            facts["max_payload"] = hs.max_payload
        self.upgrades = hs.upgrades

    async def handshake_polling(self) -> None:
        self.poll = await self.open_http()
        with self.stage("handshake", "the Engine.IO handshake (long-polling)"):
            resp = await self.poll_request("GET")
            if resp.status != 200:
                raise self.http_failure(resp, "Engine.IO handshake")
            body = self.text(resp, "Engine.IO handshake")
            found = eio.detect_version(body)
            if found is None:
                kind = f" ({resp.content_type})" if resp.content_type else ""
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    "Engine.IO handshake: expected an open packet '0{...}' (or v3 "
                    f"'<length>:0{{...}}'), got{kind} '{eio.show(body)}'",
                )
            self.accept_version(found)
            self.version_known = True
            packets = eio.decode_payload(body, found, truncated=resp.truncated)
            if not packets:
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    f"Engine.IO handshake: truncated open packet '{eio.show(body)}'",
                )
            self.open_session(packets[0])
            self.pending.extend(packets[1:])

    async def open_ws(self, *, sid: bool) -> WebSocket:
        self.ws_conn = await self.open_http()
        return await open_websocket(
            self.ws_conn,
            self.query("websocket", sid=sid),
            self.opts.headers,
            max_message=MAX_WS_MESSAGE,
            refused=lambda resp: self.http_failure(resp, "WebSocket upgrade"),
        )

    async def handshake_websocket(self) -> None:
        with self.stage("handshake", "the Engine.IO handshake (WebSocket only)"):
            ws = await self.open_ws(sid=False)
            self.ws = ws
            text = await ws.recv_text()
            if text is None:
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    "Engine.IO handshake: a binary frame instead of the open packet",
                )
            if not text.startswith("0{"):
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    f"Engine.IO handshake: expected an open packet '0{{...}}' as the first "
                    f"WebSocket message, got '{eio.show(text)}'",
                )
            # One packet per frame: the framing cannot tell v3 from v4 here.
            self.open_session(text)

    async def upgrade(self) -> None:
        if "websocket" not in self.upgrades:
            offered = ", ".join(self.upgrades) or "none"
            raise ProbeFailure(
                Reason.UNEXPECTED_RESPONSE,
                f"the server does not offer a WebSocket upgrade (upgrades: {offered}); "
                "set transport=polling to probe it over long-polling",
            )
        with self.stage("upgrade", "the WebSocket upgrade (2probe/3probe)"):
            ws = await self.open_ws(sid=True)
            ws.send_text("2probe")
            text = await ws.recv_text()
            if text != "3probe":
                got = "a binary frame" if text is None else f"'{eio.show(text)}'"
                raise ProbeFailure(
                    Reason.UNEXPECTED_RESPONSE,
                    f"WebSocket upgrade: expected '3probe' in answer to '2probe', got {got}",
                )
            ws.send_text("5")
            self.ws = ws
        if self.poll is not None:  # nothing more goes over long-polling
            self.poll.close()
            self.poll = None

    async def connect_namespace(self) -> None:
        ns = self.opts.namespace
        with self.stage("sio_connect", f"the Socket.IO CONNECT to namespace {ns}"):
            barrier = False
            if self.version == 4:
                await self.send([eio.connect_packet(ns, 4, self.opts._auth_json, "")])
            elif ns != "/":
                await self.send([eio.connect_packet(ns, 3, None, self.opts._auth_query)])
                self.auth_in_query = True
            else:
                # Engine.IO 3 heartbeats go client to server, so our ping is legal, and
                # the pong comes after whatever the server sent before it.
                await self.send([eio.PING])
                barrier = True
            reply = await self.await_connect(ns, barrier)
        self.connected = True
        sid = eio.connect_sid(reply) if self.version == 4 else None
        self.trace.facts["sio_protocol"] = 5 if sid is not None else 4
        if sid is None:
            self.learn_v3()

    def learn_v3(self) -> None:
        """A bare CONNECT is Socket.IO protocol v4, which only runs over Engine.IO 3:
        news when a direct WebSocket's framing could not tell the version."""
        if self.version == 4 and not self.version_known:
            self.accept_version(3)
            self.version_known = True
            self.trace.facts["eio"] = 3

    async def await_connect(self, ns: str, barrier: bool) -> eio.SioPacket:
        seen: eio.SioPacket | None = None
        while True:
            packet = await self.recv()
            kind = packet[0]
            if kind == eio.MESSAGE:
                sio = eio.parse_sio(packet[1:])
                if sio.type == eio.SIO_CONNECT and sio.nsp == "/" and not sio.data:
                    self.learn_v3()  # Socket.IO 2 connects "/" unasked
                if eio.namespace_name(sio.nsp) == ns:
                    if sio.type == eio.SIO_CONNECT:
                        if not barrier:
                            return sio
                        seen = seen or sio
                        continue
                    if sio.type == eio.SIO_CONNECT_ERROR:
                        raise self.rejected(sio)
                    if sio.type == eio.SIO_DISCONNECT:
                        raise ProbeFailure(
                            Reason.REJECTED,
                            f"the server disconnected namespace {ns} at once: "
                            f"{eio.error_message(sio)}",
                        )
                self.skip(packet)
            elif kind == eio.PING:
                if self.version == 4:
                    await self.send([eio.PONG + packet[1:]])
                else:
                    self.skip(packet)
            elif kind == eio.PONG and barrier:
                if seen is not None:
                    return seen
                barrier = False  # the verdict is still to come: wait for it
            elif kind == eio.CLOSE:
                raise ProbeFailure(
                    Reason.UNEXPECTED_RESPONSE,
                    f"the server closed the Engine.IO session before answering CONNECT "
                    f"for namespace {ns}",
                )
            else:
                self.skip(packet)

    def rejected(self, sio: eio.SioPacket) -> ProbeFailure:
        ns = self.opts.namespace
        hint = ""
        if self.version == 3 and self.opts.auth is not None and not self.auth_in_query:
            hint = " (Socket.IO 2 reads auth from the query string: set eio=3 to send it there)"
        return ProbeFailure(
            Reason.REJECTED,
            f"the server refused namespace {ns} (CONNECT_ERROR): {eio.error_message(sio)}{hint}",
        )

    async def close(self, cap: float) -> bool:
        """DISCONNECT, Engine.IO close, WebSocket close; True if the server confirmed."""
        packets = [eio.disconnect_packet(self.opts.namespace)] if self.connected else []
        packets.append(eio.CLOSE)
        budget = self.close_budget(cap)
        if self.ws is not None:
            for p in packets:
                self.ws.send_text(p)
            return await self.ws.close(budget)
        if budget <= 0:
            return False
        try:
            async with asyncio.timeout(budget):
                # One POST each, as engine.io-client does (it drains its write buffer
                # before sending close): in a single payload the server would close the
                # transport before its Socket.IO layer handled the DISCONNECT.
                for p in packets:
                    await self.send([p])
        except (TimeoutError, ProbeFailure, OSError):
            return False
        return True

    async def run(self) -> ProbeResult:
        opts = self.opts
        direct = opts.transport == "websocket" and not opts.upgrade
        try:
            if direct:
                await self.handshake_websocket()
            else:
                await self.handshake_polling()
                if opts.transport == "websocket":
                    await self.upgrade()
            await self.connect_namespace()
        except ProbeFailure as exc:
            if self.sid and exc.reason in (Reason.REJECTED, Reason.UNEXPECTED_RESPONSE):
                # The server speaks the protocol: free its session rather than leave
                # it to the ping timeout.
                await self.close(FAILURE_CLOSE_WAIT)
            raise
        with self.stage("close", "the close"):
            clean = await self.close(CLOSE_WAIT)
        transport = opts.transport
        if direct:
            how = "WebSocket only"
        elif transport == "websocket":
            how = "WebSocket, upgraded from long-polling"
        else:
            how = "long-polling"
        protocol = self.trace.facts["sio_protocol"]
        detail = (
            f"namespace {opts.namespace} connected over {how} "
            f"(Engine.IO v{self.version}, Socket.IO protocol v{protocol})"
        )
        if not clean:
            detail += "; the server did not confirm the close in time"
        return self.trace.ok(
            detail, transport=transport, namespace=opts.namespace, clean_close=clean
        )


@entrypoint("socketio")
async def probe(trace: Trace, target: str, options: Options, timeout: float) -> ProbeResult:
    session = _Session(trace, target, options, timeout)
    # Expire just before the entrypoint's own timeout, to say which step hung.
    guard = min(0.01, timeout * 0.02)
    try:
        async with asyncio.timeout_at(session.deadline - guard) as budget:
            return await session.run()
    except TimeoutError:
        if not budget.expired():
            raise
        raise ProbeFailure(
            Reason.TIMEOUT, f"no answer within {timeout:g} s during {session.step}"
        ) from None
    except (eio.EngineIOError, WebSocketError) as exc:
        raise ProbeFailure(exc.reason, f"{exc.detail}, during {session.step}") from None
    finally:
        session.abort()
