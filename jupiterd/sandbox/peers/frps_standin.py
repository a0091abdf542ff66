"""A stand-in for frps v0.70.1: what a frpc login (and the ``frp`` probe) touches.

No real frps can be installed here (no Debian package, no Go toolchain), so
this follows upstream byte for byte for the login path. Sources, all at
fatedier/frp v0.70.1 unless named otherwise:

- First byte (server/service.go ``HandleListener`` and pkg/util/net/tls.go
  ``CheckAndEnableTLSServerConnWithTimeout``): one byte is read within
  ``connReadTimeout`` (10 s), else the connection is closed. 0x17
  (``FRPTLSHeadByte``) is consumed and TLS follows; 0x16 is replayed into a
  TLS server; anything else is replayed as plain bytes, unless
  ``transport.tls.force`` ("non-TLS connection received on a TlsOnly
  server": closed). frps's certificate is self-signed
  (pkg/transport/tls.go ``newRandomTLSKeyPair``); this one comes from
  ``certs/``.
- yamux (``transport.tcpMux``, default true; fatedier/yamux const.go,
  session.go, stream.go): a server session with ``MaxStreamWindowSize``
  6 MiB, so accepting a stream sends WindowUpdate ACK with delta
  6 MiB - 256 KiB. A bad version byte or frame type closes the TCP
  connection with no GoAway; data beyond the receive window, a duplicate
  SYN, or a FIN in the wrong state sends GoAway(protocol error) and closes.
  Pings get an ACK echoing their opaque value; frps pings every
  ``tcpMuxKeepaliveInterval`` (30 s) and drops the session when an answer
  takes longer than ``ConnectionWriteTimeout`` (10 s). Stream data goes out
  as a header write then a body write, stream close is WindowUpdate FIN.
- First message (server/service.go ``acceptConnection``): within 10 s, read
  7 bytes for the wire-v2 magic (pkg/proto/wire ``CheckMagic``; v2 is not
  implemented here, such a connection is closed), replay them, then one v1
  message (golib msg/json process.go ``readMsg``): a registered type byte,
  an int64 big-endian length in 0..10240, the JSON body, decoded the way
  Go's encoding/json fills the struct (pkg/msg/msg.go). Any failure closes
  the connection (or, under yamux, the stream) without a word.
- Login (``handleConnection``, ``RegisterControl``, pkg/auth/token.go,
  pkg/util/util/util.go): an empty ``run_id`` gets ``RandID()`` (16 hex),
  the ``privilege_key`` must equal ``md5_hex(token + str(timestamp))``
  (no freshness check). Failure: LoginResp ``{"version":"0.70.1","error":
  "token in login doesn't match token from configuration"}``, or
  ``"register control error"`` with ``detailedErrorsToClient = false``, then
  close. Success: ``{"version":"0.70.1","run_id":"…"}`` and the connection
  stays open as the control channel (its later traffic is encrypted with the
  token; the stand-in only drains it). A login that names the ``run_id`` of
  a live control replaces it: the old control is closed.
- NewWorkConn and NewVisitorConn as first messages get StartWorkConn /
  NewVisitorConnResp errors with upstream's strings, then a close.
- Dashboard (server/api_router.go): ``GET /healthz`` answers 200 with an
  empty body, no auth.

Deviations, on purpose: frps sniffs the first byte inside its accept loop,
so one silent client delays every other for up to 10 s; the stand-in sniffs
per connection. The wire v2 protocol and the encrypted control channel are
not implemented.

Use it as ``async with FrpsStandin(token="t") as frps:``; the object unpacks
as ``(host, port)`` and records every first message in ``frps.logins``. As a
script it prints ``ready <host>:<port>`` and runs until SIGTERM or SIGINT.
Fault switches (``stall_after_first_byte``, ``silent_after_login``,
``reply_raw``, ``reply_stream_raw``, ``ping_before_reply``) make it misbehave
on purpose for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import signal
import ssl
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = "0.70.1"  # pkg/util/version/version.go
CONN_READ_TIMEOUT = 10.0  # server/service.go connReadTimeout
MUX_KEEPALIVE_INTERVAL = 30.0  # transport.tcpMuxKeepaliveInterval default
MUX_WRITE_TIMEOUT = 10.0  # yamux ConnectionWriteTimeout: the Ping answer deadline
FRP_TLS_HEAD_BYTE = 0x17
MAGIC_V2 = b"FRP\x00\x02\r\n"
MAX_MSG_LENGTH = 10240
MSG_TYPES = frozenset(b"o1p2cwrsv3h4uinm56")  # pkg/msg/msg.go msgTypeMap
TOKEN_MISMATCH = "token in login doesn't match token from configuration"

YAMUX_HEADER = struct.Struct(">BBHII")
Y_DATA, Y_WINDOW_UPDATE, Y_PING, Y_GO_AWAY = 0, 1, 2, 3
Y_SYN, Y_ACK, Y_FIN, Y_RST = 1, 2, 4, 8
Y_GO_AWAY_PROTO_ERR = 1
INITIAL_STREAM_WINDOW = 256 * 1024
MAX_STREAM_WINDOW = 6 * 1024 * 1024  # fmuxCfg.MaxStreamWindowSize in server/service.go

CERT_DIR = Path(__file__).resolve().parent / "certs"
CERT_FILE = CERT_DIR / "frps-standin.crt"
KEY_FILE = CERT_DIR / "frps-standin.key"


class Drop(Exception):
    """frps gives up on this connection (or stream) and closes it."""


def go_json(doc: dict[str, Any]) -> bytes:
    """``json.Marshal``: compact, UTF-8, with Go's HTML-safe escapes (these
    characters only ever occur inside strings, so replacing is exact)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for raw, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, esc)
    return text.encode()


def pack_msg(type_byte: bytes, doc: dict[str, Any]) -> bytes:
    """golib msg/json ``Pack``: type byte, int64 big-endian length, JSON."""
    body = go_json(doc)
    return type_byte + struct.pack(">q", len(body)) + body


def auth_key(token: str, timestamp: int) -> str:
    """pkg/util/util/util.go ``GetAuthKey``."""
    return hashlib.md5(f"{token}{timestamp}".encode(), usedforsecurity=False).hexdigest()


def rand_id() -> str:
    """pkg/util/util/util.go ``RandID``: hex of 9 random bytes, cut to 16."""
    return secrets.token_bytes(9).hex()[:16]


# --- what Go's encoding/json accepts for the fields frps reads -------------

_STR, _INT64, _BOOL, _STR_MAP, _CLIENT_SPEC = "str", "int64", "bool", "map", "spec"
LOGIN_FIELDS = {
    "version": _STR,
    "hostname": _STR,
    "os": _STR,
    "arch": _STR,
    "user": _STR,
    "privilege_key": _STR,
    "timestamp": _INT64,
    "run_id": _STR,
    "client_id": _STR,
    "metas": _STR_MAP,
    "client_spec": _CLIENT_SPEC,
    "pool_count": _INT64,
}
NEW_WORK_CONN_FIELDS = {"run_id": _STR, "privilege_key": _STR, "timestamp": _INT64}
NEW_VISITOR_CONN_FIELDS = {
    "run_id": _STR,
    "proxy_name": _STR,
    "sign_key": _STR,
    "timestamp": _INT64,
    "use_encryption": _BOOL,
    "use_compression": _BOOL,
}
CLIENT_SPEC_FIELDS = {"type": _STR, "always_auth_pass": _BOOL}


def _go_value(kind: str, value: Any) -> Any:
    if value is None:  # null leaves a Go field at its zero value
        return None
    if kind == _STR and isinstance(value, str):
        return value
    if kind == _BOOL and isinstance(value, bool):
        return value
    if kind == _INT64 and type(value) is int and -(2**63) <= value < 2**63:
        return value
    if (
        kind == _STR_MAP
        and isinstance(value, dict)
        and all(isinstance(v, str) or v is None for v in value.values())
    ):
        return value
    if kind == _CLIENT_SPEC and isinstance(value, dict):
        return go_unmarshal(value, CLIENT_SPEC_FIELDS)
    raise Drop(f"json: cannot unmarshal {type(value).__name__} into a Go {kind}")


def go_unmarshal(doc: Any, fields: dict[str, str]) -> dict[str, Any]:
    """Fill a struct like ``json.Unmarshal``: keys match case-insensitively,
    unknown keys are ignored, a value of the wrong type is an error."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise Drop(f"json: cannot unmarshal {type(doc).__name__} into a Go struct")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = key if key in fields else key.lower()
        if name in fields:
            out[name] = _go_value(fields[name], value)
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def decode_body(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8", "replace"), parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise Drop("invalid JSON") from None


# --- byte pipes: plain TCP, TLS over it, a yamux stream --------------------


class Pipe:
    """A byte stream with pushback, like golib's SharedConn plus io.ReadFull."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self.closed = False

    async def _fill(self) -> bytes:
        raise NotImplementedError

    async def read_some(self) -> bytes:
        if self._pending:
            out = bytes(self._pending)
            self._pending.clear()
            return out
        return await self._fill()

    async def read_exactly(self, n: int) -> bytes:
        while len(self._pending) < n:
            data = await self._fill()
            if not data:
                raise Drop(f"EOF after {len(self._pending)} of {n} bytes")
            self._pending += data
        out = bytes(self._pending[:n])
        del self._pending[:n]
        return out

    def unread(self, data: bytes) -> None:
        self._pending[:0] = data

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TcpPipe(Pipe):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader = reader
        self.writer = writer

    async def _fill(self) -> bytes:
        try:
            return await self.reader.read(65536)
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        if not self.closed and not self.writer.transport.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()  # flushes, then FIN, like net.Conn.Close

    def abort(self) -> None:
        self.closed = True
        self.writer.transport.abort()


class TlsPipe(Pipe):
    """``tls.Server`` over a pipe whose sniffed byte may have been pushed back."""

    def __init__(self, raw: Pipe, context: ssl.SSLContext) -> None:
        super().__init__()
        self.raw = raw
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.raw.send(data)

    async def _feed(self) -> bool:
        data = await self.raw.read_some()
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                if not await self._feed():
                    raise Drop("EOF during the TLS handshake") from None
            except ssl.SSLError as exc:
                self._flush()
                raise Drop(f"TLS handshake failed: {exc}") from None
            else:
                self._flush()
                return

    async def _fill(self) -> bytes:
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._flush()
                if not await self._feed():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise Drop(f"TLS read failed: {exc}") from None

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self.tls.write(data)  # one Write, one TLS record, as crypto/tls does
        self._flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()  # close_notify, as tls.Conn.Close sends it
        self._flush()
        self.raw.close()


# --- yamux server session ---------------------------------------------------

_INIT, _SYN_RECEIVED, _ESTABLISHED, _LOCAL_CLOSE, _REMOTE_CLOSE, _CLOSED, _RESET = range(7)


class MuxStream(Pipe):
    def __init__(self, session: MuxSession, stream_id: int) -> None:
        super().__init__()
        self.session = session
        self.id = stream_id
        self.state = _SYN_RECEIVED
        self.recv_window = INITIAL_STREAM_WINDOW
        self.send_window = INITIAL_STREAM_WINDOW
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.buffered = 0

    def _send_flags(self) -> int:
        if self.state == _SYN_RECEIVED:
            self.state = _ESTABLISHED
            return Y_ACK
        return 0

    def send_window_update(self) -> None:
        """stream.go ``sendWindowUpdate``: ACK on accept, later only when the
        window fell by half or more."""
        delta = (MAX_STREAM_WINDOW - self.buffered) - self.recv_window
        flags = self._send_flags()
        if delta < MAX_STREAM_WINDOW // 2 and flags == 0:
            return
        self.recv_window += delta
        self.session.write(YAMUX_HEADER.pack(0, Y_WINDOW_UPDATE, flags, self.id, delta))

    async def _fill(self) -> bytes:
        data = await self.chunks.get()
        if not data:
            self.chunks.put_nowait(b"")  # EOF stays EOF
            return b""
        self.buffered -= len(data)
        self.send_window_update()
        return data

    def send(self, data: bytes) -> None:
        if self.state in (_LOCAL_CLOSE, _CLOSED, _RESET) or self.session.closed:
            return
        flags = self._send_flags()
        # Go writes the header and the body with two conn.Write calls.
        self.session.write(YAMUX_HEADER.pack(0, Y_DATA, flags, self.id, len(data)))
        self.session.write(data)
        self.send_window = max(0, self.send_window - len(data))

    def close(self) -> None:
        """stream.go ``Close``: WindowUpdate FIN, then forget the stream once
        both sides have closed."""
        if self.state in (_SYN_RECEIVED, _ESTABLISHED):
            self.state = _LOCAL_CLOSE
        elif self.state == _REMOTE_CLOSE:
            self.state = _CLOSED
            self.session.streams.pop(self.id, None)
        else:
            return
        flags = self._send_flags() | Y_FIN
        self.session.write(YAMUX_HEADER.pack(0, Y_WINDOW_UPDATE, flags, self.id, 0))

    def process_flags(self, flags: int) -> None:
        if flags & Y_FIN:
            if self.state in (_SYN_RECEIVED, _ESTABLISHED):
                self.state = _REMOTE_CLOSE
                self.chunks.put_nowait(b"")
            elif self.state == _LOCAL_CLOSE:
                self.state = _CLOSED
                self.session.streams.pop(self.id, None)
                self.chunks.put_nowait(b"")
            else:
                raise Drop("yamux: unexpected FIN flag")
        if flags & Y_RST:
            self.state = _RESET
            self.session.streams.pop(self.id, None)
            self.chunks.put_nowait(b"")

    def force_close(self) -> None:
        self.state = _CLOSED
        self.chunks.put_nowait(b"")


class MuxSession:
    """session.go's server side: ``recvLoop``, ``AcceptStream``, keepalive."""

    def __init__(self, server: FrpsStandin, pipe: Pipe, tls: bool, custom: bool) -> None:
        self.server = server
        self.pipe = pipe
        self.tls = tls
        self.custom = custom
        self.streams: dict[int, MuxStream] = {}
        self.closed = False
        self.remote_go_away = False
        self.ping_id = 0
        self.pings: dict[int, asyncio.Future[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.pipe.send(data)

    def go_away_and_close(self, why: str) -> None:
        self.write(YAMUX_HEADER.pack(0, Y_GO_AWAY, 0, 0, Y_GO_AWAY_PROTO_ERR))
        raise Drop(why)

    async def ping(self) -> bool:
        """``Session.Ping``: SYN with a fresh id; False if no ACK in time."""
        pid = self.ping_id
        self.ping_id += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pings[pid] = waiter
        self.write(YAMUX_HEADER.pack(0, Y_PING, Y_SYN, 0, pid))
        try:
            async with asyncio.timeout(self.server.mux_write_timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            self.pings.pop(pid, None)
        return True

    async def _keepalive(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.server.keepalive_interval)
            if not await self.ping():
                self.close()  # "keepalive failed": exitErr(ErrKeepAliveTimeout)
                return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        """``Session.Close``: no GoAway, just the connection, and every
        stream's reader sees EOF."""
        if self.closed:
            return
        self.closed = True
        self.pipe.close()
        for stream in list(self.streams.values()):
            stream.force_close()
        for waiter in self.pings.values():
            if not waiter.done():
                waiter.cancel()

    async def run(self) -> None:
        self._spawn(self._keepalive())
        try:
            while True:
                version, ftype, flags, sid, length = YAMUX_HEADER.unpack(
                    await self.pipe.read_exactly(YAMUX_HEADER.size)
                )
                if version != 0:
                    raise Drop(f"yamux: Invalid protocol version: {version}")
                if ftype > Y_GO_AWAY:
                    raise Drop("invalid msg type")
                if ftype in (Y_DATA, Y_WINDOW_UPDATE):
                    await self._stream_message(ftype, flags, sid, length)
                elif ftype == Y_PING:
                    self._ping(flags, length)
                else:
                    self._go_away(length)
        except Drop:
            pass
        finally:
            self.close()
            for task in list(self.tasks):
                task.cancel()

    def _ping(self, flags: int, opaque: int) -> None:
        if flags & Y_SYN:
            self.write(YAMUX_HEADER.pack(0, Y_PING, Y_ACK, 0, opaque))
            return
        waiter = self.pings.pop(opaque, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _go_away(self, code: int) -> None:
        if code == 0:
            self.remote_go_away = True
            return
        raise Drop(f"go away {code}")

    async def _stream_message(self, ftype: int, flags: int, sid: int, length: int) -> None:
        if flags & Y_SYN:
            self._incoming(sid)
        stream = self.streams.get(sid)
        if stream is None:
            if ftype == Y_DATA and length:
                await self._discard(length)
            return
        if ftype == Y_WINDOW_UPDATE:
            try:
                stream.process_flags(flags)
            except Drop as exc:
                self.go_away_and_close(str(exc))
            stream.send_window = (stream.send_window + length) & 0xFFFFFFFF
            return
        try:
            stream.process_flags(flags)
        except Drop as exc:
            self.go_away_and_close(str(exc))
        if not length:
            return
        if length > stream.recv_window:
            self.go_away_and_close("recv window exceeded")
        data = await self.pipe.read_exactly(length)
        stream.recv_window -= length
        stream.buffered += length
        stream.chunks.put_nowait(data)

    async def _discard(self, length: int) -> None:
        while length:
            chunk = await self.pipe.read_exactly(min(length, 65536))
            length -= len(chunk)

    def _incoming(self, sid: int) -> None:
        if sid in self.streams:
            self.go_away_and_close("duplicate stream initiated")
        stream = MuxStream(self, sid)
        self.streams[sid] = stream
        # AcceptStream: the ACK goes out when frps picks the stream up, at once.
        stream.send_window_update()
        self._spawn(self.server.handle_connection(stream, self.tls, self.custom, self, sid, None))


# --- the server --------------------------------------------------------------


@dataclass
class LoginRecord:
    """One first message frps read, and what it did with it."""

    msg_type: str  # "o" Login, "w" NewWorkConn, "v" NewVisitorConn, ...
    fields: dict[str, Any]
    raw: bytes  # the JSON body as sent
    tls: bool
    custom_tls_byte: bool
    mux: bool
    stream_id: int | None
    accepted: bool = False
    error: str | None = None
    run_id: str | None = None
    replaced: bool = False  # the login took over a live control's run_id


@dataclass
class Fault:
    stall_after_first_byte: bool = False
    silent_after_login: bool = False
    reply_raw: bytes | None = None  # written on the connection instead of a LoginResp
    reply_stream_raw: bytes | None = None  # written on the login stream instead
    ping_before_reply: bool = False


@dataclass
class _Control:
    pipe: Pipe
    run_id: str


class FrpsStandin:
    """frps on loopback. ``async with FrpsStandin() as (host, port)`` works,
    and so does ``async with FrpsStandin() as frps`` to read ``frps.logins``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str = "",
        tls_force: bool = False,
        tcp_mux: bool = True,
        detailed_errors: bool = True,
        dashboard: bool = False,
        dashboard_port: int = 0,
        first_msg_timeout: float = CONN_READ_TIMEOUT,
        keepalive_interval: float = MUX_KEEPALIVE_INTERVAL,
        mux_write_timeout: float = MUX_WRITE_TIMEOUT,
        fault: Fault | None = None,
        cert_file: Path = CERT_FILE,
        key_file: Path = KEY_FILE,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.tls_force = tls_force
        self.tcp_mux = tcp_mux
        self.detailed_errors = detailed_errors
        self.dashboard = dashboard
        self.dashboard_port = dashboard_port
        self.first_msg_timeout = first_msg_timeout
        self.keepalive_interval = keepalive_interval
        self.mux_write_timeout = mux_write_timeout
        self.fault = fault or Fault()
        self.logins: list[LoginRecord] = []
        self.connections = 0
        self.pings_answered = 0
        self.controls: dict[str, _Control] = {}
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert_file, key_file)
        self._server: asyncio.Server | None = None
        self._dash: asyncio.Server | None = None
        self._pipes: set[TcpPipe] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle

    def __iter__(self) -> Any:
        return iter((self.host, self.port))

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self) -> FrpsStandin:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.dashboard:
            self._dash = await asyncio.start_server(self._http, self.host, self.dashboard_port)
            self.dashboard_port = self._dash.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for server in (self._server, self._dash):
            if server is not None:
                server.close()
        for pipe in list(self._pipes):
            pipe.abort()  # every handler then sees EOF and ends on its own
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for server in (self._server, self._dash):
            if server is not None:
                await server.wait_closed()

    async def __aenter__(self) -> FrpsStandin:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        pipe = TcpPipe(reader, writer)
        self._pipes.add(pipe)
        self.connections += 1
        try:
            await self._serve(pipe)
        except (Drop, OSError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            # Python 3.11's start_server callback calls task.exception() on
            # its handler, which raises on a cancelled task: end normally.
            pass
        finally:
            pipe.close()
            self._pipes.discard(pipe)
            self._tasks.discard(task)

    async def _serve(self, pipe: TcpPipe) -> None:
        try:
            async with asyncio.timeout(self.first_msg_timeout):
                first = (await pipe.read_exactly(1))[0]
        except TimeoutError:
            return  # "checkAndEnableTLSServerConnWithTimeout error": closed
        if self.fault.stall_after_first_byte:
            await _drain(pipe)
            return
        conn: Pipe = pipe
        tls = custom = False
        if first == FRP_TLS_HEAD_BYTE:
            tls = custom = True  # the byte is consumed: TLS starts after it
        elif first == 0x16:
            tls = True
            pipe.unread(bytes([first]))
        elif self.tls_force:
            return  # "non-TLS connection received on a TlsOnly server"
        else:
            pipe.unread(bytes([first]))
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        if tls:
            tls_pipe = TlsPipe(pipe, self._tls)
            # crypto/tls handshakes on the first Read: under yamux that read has
            # no deadline until a keepalive Ping fails; without yamux it falls
            # under acceptConnection's 10 s.
            budget = (
                self.keepalive_interval + self.mux_write_timeout
                if self.tcp_mux
                else self.first_msg_timeout
            )
            deadline = loop.time() + budget
            try:
                async with asyncio.timeout_at(deadline):
                    await tls_pipe.handshake()
            except TimeoutError:
                return
            conn = tls_pipe
        try:
            if self.tcp_mux:
                await MuxSession(self, conn, tls, custom).run()
            else:
                await self.handle_connection(conn, tls, custom, None, None, deadline)
        finally:
            conn.close()

    async def handle_connection(
        self,
        conn: Pipe,
        tls: bool,
        custom: bool,
        session: MuxSession | None,
        stream_id: int | None,
        deadline: float | None,
    ) -> None:
        """server/service.go ``handleConnection`` for one connection or stream."""
        try:
            await self._handle(conn, tls, custom, session, stream_id, deadline)
        except Drop:
            pass
        finally:
            conn.close()

    async def _handle(
        self,
        conn: Pipe,
        tls: bool,
        custom: bool,
        session: MuxSession | None,
        stream_id: int | None,
        deadline: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.first_msg_timeout
        try:
            async with asyncio.timeout_at(deadline):
                head = await conn.read_exactly(len(MAGIC_V2))
                if head == MAGIC_V2:
                    raise Drop("wire protocol v2 is not implemented by the stand-in")
                conn.unread(head)
                type_byte = (await conn.read_exactly(1))[0]
                if type_byte not in MSG_TYPES:
                    raise Drop("message type error")
                (length,) = struct.unpack(">q", await conn.read_exactly(8))
                if length > MAX_MSG_LENGTH:
                    raise Drop("message length exceed the limit")
                if length < 0:
                    raise Drop("message length error")
                body = await conn.read_exactly(length)
        except TimeoutError:
            raise Drop("first message timeout") from None
        doc = decode_body(body)
        record = LoginRecord(
            msg_type=chr(type_byte),
            fields={},
            raw=body,
            tls=tls,
            custom_tls_byte=custom,
            mux=session is not None,
            stream_id=stream_id,
        )
        if type_byte == ord("o"):
            record.fields = go_unmarshal(doc, LOGIN_FIELDS)
            self.logins.append(record)
            await self._login(conn, session, record)
        elif type_byte == ord("w"):
            record.fields = go_unmarshal(doc, NEW_WORK_CONN_FIELDS)
            self.logins.append(record)
            await self._work_conn(conn, record)
        elif type_byte == ord("v"):
            record.fields = go_unmarshal(doc, NEW_VISITOR_CONN_FIELDS)
            self.logins.append(record)
            self._visitor_conn(conn, record)
        else:
            # pkg/msg decodes it, then "error message type for the new connection"
            go_unmarshal(doc, {})
            raise Drop("error message type for the new connection")

    def _error_text(self, summary: str, detailed: str) -> str:
        """util.GenerateResponseErrorString."""
        return detailed if self.detailed_errors else summary

    async def _login(self, conn: Pipe, session: MuxSession | None, record: LoginRecord) -> None:
        fields = record.fields
        fault = self.fault
        run_id = fields.get("run_id") or rand_id()
        record.run_id = run_id
        expected = auth_key(self.token, fields.get("timestamp") or 0)
        given = fields.get("privilege_key") or ""
        ok = hmac.compare_digest(expected.encode(), given.encode())
        if fault.silent_after_login:
            await _drain(conn)
            return
        if fault.ping_before_reply and session is not None and await session.ping():
            self.pings_answered += 1
        if fault.reply_raw is not None:
            (session.pipe if session is not None else conn).send(fault.reply_raw)
            await _drain(conn)
            return
        if fault.reply_stream_raw is not None:
            conn.send(fault.reply_stream_raw)
            await _drain(conn)
            return
        if not ok:
            record.error = TOKEN_MISMATCH
            text = self._error_text("register control error", TOKEN_MISMATCH)
            conn.send(pack_msg(b"1", {"version": VERSION, "error": text}))
            return  # handleConnection closes the connection (or stream)
        record.accepted = True
        old = self.controls.get(run_id)
        if old is not None:
            record.replaced = True
            old.pipe.close()  # ctlManager.Add: the new login takes over
        control = _Control(conn, run_id)
        self.controls[run_id] = control
        conn.send(pack_msg(b"1", {"version": VERSION, "run_id": run_id}))
        try:
            await _drain(conn)  # the (encrypted) control channel, until the client leaves
        finally:
            if self.controls.get(run_id) is control:
                del self.controls[run_id]

    async def _work_conn(self, conn: Pipe, record: LoginRecord) -> None:
        run_id = record.fields.get("run_id") or ""
        if run_id in self.controls:
            record.accepted = True
            await _drain(conn)
            return
        detail = f"no client control found for run id [{run_id}]"
        record.error = detail
        text = self._error_text("invalid NewWorkConn", detail)
        conn.send(pack_msg(b"s", {"error": text}))

    def _visitor_conn(self, conn: Pipe, record: LoginRecord) -> None:
        run_id = record.fields.get("run_id") or ""
        name = record.fields.get("proxy_name") or ""
        if run_id and run_id not in self.controls:
            detail = f"no client control found for run id [{run_id}]"
        else:
            detail = f"custom listener for [{name}] doesn't exist"
        record.error = detail
        text = self._error_text("register visitor conn error", detail)
        resp: dict[str, Any] = {"proxy_name": name} if name else {}
        resp["error"] = text
        conn.send(pack_msg(b"3", resp))

    # -- dashboard

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CONN_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        parts = head.split(b"\r\n", 1)[0].split()
        method, path = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
        if method == b"GET" and path.split(b"?", 1)[0] == b"/healthz":
            status, body = b"200 OK", b""
        else:
            status, body = b"404 Not Found", b"404 page not found\n"
        ctype = b"Content-Type: text/plain; charset=utf-8\r\n" if body else b""
        writer.write(
            b"HTTP/1.1 "
            + status
            + b"\r\n"
            + ctype
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


async def _drain(conn: Pipe) -> None:
    """Read and drop until the peer closes: frps holding a connection open."""
    while await conn.read_some():
        pass


# --- script mode ---------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="frps v0.70.1 stand-in (tests only)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7000)
    p.add_argument("--token", default="")
    p.add_argument("--tls-force", action="store_true")
    p.add_argument("--no-tcp-mux", dest="tcp_mux", action="store_false")
    p.add_argument("--no-detailed-errors", dest="detailed_errors", action="store_false")
    p.add_argument("--dashboard-port", type=int, default=None, help="serve GET /healthz here")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    frps = FrpsStandin(
        args.host,
        args.port,
        token=args.token,
        tls_force=args.tls_force,
        tcp_mux=args.tcp_mux,
        detailed_errors=args.detailed_errors,
        dashboard=args.dashboard_port is not None,
        dashboard_port=args.dashboard_port or 0,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with frps:
        print(f"ready {frps.target}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_main(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
