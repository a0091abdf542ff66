"""``frp``: log in to frps the way frpc does and read its LoginResp.

The probe proves more than an open port: frps must take the connection
(optionally TLS, optionally a yamux session), read a Login message and answer
with a LoginResp. With a token it also proves the token is accepted.

Wire facts (fatedier/frp v0.70.1, fatedier/golib, fatedier/yamux):

- frps reads one byte first (pkg/util/net/tls.go,
  ``CheckAndEnableTLSServerConnWithTimeout``): 0x17 is consumed and TLS
  follows (frpc with ``transport.tls.disableCustomTLSFirstByte = false``),
  0x16 starts TLS directly, anything else is plain unless
  ``transport.tls.force``. frps's certificate is self-signed unless
  configured, so it is not verified.
- With ``transport.tcpMux`` (the default) the connection is a yamux session
  and every frp connection is a stream (server/service.go ``HandleListener``);
  see ``probes.yamux``.
- Messages (golib msg/json pack.go, process.go): one type byte, an int64
  big-endian length, then that many bytes of JSON; frps rejects lengths over
  10240 or below 0. Login is ``'o'``, LoginResp ``'1'`` (pkg/msg/msg.go).
- Login's ``privilege_key`` is ``md5_hex(token + str(timestamp))``, checked
  even when the token is empty (pkg/util/util/util.go ``GetAuthKey``,
  pkg/auth/token.go ``VerifyLogin``). The probe never sends a ``run_id``:
  frps would hand it the session of the real frpc that owns that id.
- frps answers ``{"version":"0.70.1","run_id":"<16 hex>"}``, or on failure
  ``{"version":…,"error":…}`` and closes (server/service.go
  ``handleConnection``); the error is generic ("register control error") when
  ``detailedErrorsToClient = false``. A first message that is not a valid
  Login is closed without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import platform
import struct
import sys
import time
from typing import Any

from pydantic import SecretStr

from . import yamux
from .net import close_stream, insecure_tls_context, open_stream
from .options import ProbeOptions, parse_hostport
from .result import ProbeFailure, ProbeResult, Reason, Trace, entrypoint

DEFAULT_PORT = 7000
TLS_HEAD_BYTE = b"\x17"  # FRPTLSHeadByte, pkg/util/net/tls.go
TYPE_LOGIN = ord("o")
TYPE_LOGIN_RESP = ord("1")
MAX_MSG_LENGTH = 10240  # golib msg/json defaultMaxMsgLength
MSG_HEADER = struct.Struct(">Bq")
HOSTNAME = "jupiterd-probe"


class Options(ProbeOptions):
    token: SecretStr | None = None  # frps auth.token
    tls: bool = False  # TLS to frps (certificate not verified)
    tls_prefix: bool = True  # send 0x17 before the ClientHello, as old frpc did
    server_name: str | None = None  # SNI for the TLS handshake
    mux: bool = True  # a yamux session, as with frps's transport.tcpMux (default)
    user: str | None = None  # Login.user
    version: str = "0.70.1"  # the frpc version the Login claims


class MsgError(Exception):
    """The bytes are not the frp message the probe expects."""


def _go_os() -> str:
    if sys.platform == "win32":
        return "windows"
    return sys.platform.rstrip("0123456789")


def _go_arch() -> str:
    machine = platform.machine().lower()
    return {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "i386": "386",
        "i686": "386",
        "armv7l": "arm",
        "armv6l": "arm",
    }.get(machine, machine)


# Computed once: the daemon runs thousands of probes a second.
_GO_OS = _go_os()
_GO_ARCH = _go_arch()


def privilege_key(token: str, timestamp: int) -> str:
    """``GetAuthKey``: md5 over the token and the decimal timestamp."""
    return hashlib.md5(f"{token}{timestamp}".encode(), usedforsecurity=False).hexdigest()


def encode_msg(type_byte: int, body: bytes) -> bytes:
    return MSG_HEADER.pack(type_byte, len(body)) + body


def login_message(token: str, timestamp: int, *, version: str, user: str | None) -> bytes:
    """A Login as frpc's ``buildLoginMsg`` marshals it: Go's struct order,
    empty ``omitempty`` fields left out (so no ``run_id``, ``client_id`` or
    ``pool_count``), and ``client_spec`` always present because Go's
    ``omitempty`` does not apply to structs. ``pool_count`` 0 also keeps frps
    from asking this login for work connections."""
    fields: dict[str, Any] = {}
    if version:
        fields["version"] = version
    fields["hostname"] = HOSTNAME
    fields["os"] = _GO_OS
    fields["arch"] = _GO_ARCH
    if user:
        fields["user"] = user
    fields["privilege_key"] = privilege_key(token, timestamp)
    fields["timestamp"] = timestamp
    fields["client_spec"] = {}
    body = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    return encode_msg(TYPE_LOGIN, body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_msg(buf: bytes | bytearray, expect: int) -> tuple[dict[str, Any], int] | None:
    """The first message in ``buf`` and the bytes it took, or None while more
    bytes are needed. Raises ``MsgError`` as soon as the bytes seen cannot be
    a well-formed message of type ``expect`` (golib ``readMsg`` limits)."""
    if not buf:
        return None
    type_byte = buf[0]
    if type_byte != expect:
        raise MsgError(
            f"message type byte is {_byte_name(type_byte)}, expected {_byte_name(expect)}"
        )
    if len(buf) < MSG_HEADER.size:
        return None
    _, length = MSG_HEADER.unpack_from(buf)
    if length < 0 or length > MAX_MSG_LENGTH:
        raise MsgError(f"message length is {length}, outside 0..{MAX_MSG_LENGTH}")
    end = MSG_HEADER.size + length
    if len(buf) < end:
        return None
    text = bytes(buf[MSG_HEADER.size : end]).decode("utf-8", "replace")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MsgError(f"message body is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise MsgError(f"message body is a JSON {type(doc).__name__}, expected an object")
    return doc, end


def parse_login_resp(buf: bytes | bytearray) -> tuple[dict[str, str], int] | None:
    """A LoginResp's string fields (Go would refuse any other type for them)."""
    parsed = parse_msg(buf, TYPE_LOGIN_RESP)
    if parsed is None:
        return None
    doc, used = parsed
    resp: dict[str, str] = {}
    for key in ("version", "run_id", "error"):
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise MsgError(
                f"LoginResp field '{key}' is a {type(value).__name__}, expected a string"
            )
        resp[key] = value
    return resp, used


def _byte_name(b: int) -> str:
    return f"0x{b:02x} {chr(b)!r}" if 0x20 <= b < 0x7F else f"0x{b:02x}"


def excerpt(data: bytes | bytearray, secret: str = "", limit: int = 48) -> str:
    """A short, escaped, printable excerpt of bytes a peer sent (our token
    masked, should a peer echo it)."""
    if secret:
        data = bytes(data).replace(secret.encode(), b"***")
    text = repr(bytes(data[:limit]))[2:-1]
    return f"'{text}…'" if len(data) > limit else f"'{text}'"


def _mask(text: str, secret: str, limit: int = 200) -> str:
    """frps's words, cut, with our token masked should a peer echo it."""
    if secret:
        text = text.replace(secret, "***")
    return text[:limit] + "…" if len(text) > limit else text


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)


def _mode(options: Options) -> str:
    tls = (
        ("TLS with the 0x17 byte" if options.tls_prefix else "TLS") if options.tls else "plain TCP"
    )
    return f"{tls}, {'yamux' if options.mux else 'no mux'}"


def _closed_hint(options: Options, got: int) -> str:
    if got:
        return ""
    hints = [
        "frps closes without a word when the first bytes are not what it expects: "
        + (
            "if it runs with transport.tcpMux = false, set mux=false"
            if options.mux
            else "frps multiplexes by default (transport.tcpMux), so try mux=true"
        )
    ]
    if not options.tls:
        hints.append("if it requires TLS (transport.tls.force), set tls=true")
    return " (" + "; ".join(hints) + ")"


async def _read_login_resp(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    session: yamux.ClientSession | None,
    options: Options,
    secret: str,
) -> dict[str, str]:
    buf = session.inbound if session is not None else bytearray()
    received = 0
    while True:
        try:
            parsed = parse_login_resp(buf)
        except MsgError as exc:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"expected a LoginResp, but the {exc}; got {excerpt(buf, secret)}",
            ) from None
        if parsed is not None:
            return parsed[0]
        if session is not None:
            _check_stream(session, buf, secret)
        data = await reader.read(65536)
        if not data:
            where = f"the login stream got {len(buf)} bytes" if session else f"got {len(buf)} bytes"
            raise ProbeFailure(
                Reason.RESET,
                f"frps closed the connection before a LoginResp ({_mode(options)}; "
                f"{where}: {excerpt(buf, secret)}){_closed_hint(options, received)}",
            )
        received += len(data)
        if session is None:
            buf += data
            continue
        try:
            replies = session.feed(data)
        except yamux.YamuxError as exc:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"not a yamux session: {exc}; got {excerpt(data, secret)}"
            ) from None
        if replies and not writer.transport.is_closing():
            writer.write(replies)


def _check_stream(session: yamux.ClientSession, buf: bytearray, secret: str) -> None:
    got = (
        f"after {len(buf)} bytes on it: {excerpt(buf, secret)}" if buf else "before any reply on it"
    )
    if session.reset:
        raise ProbeFailure(Reason.RESET, f"frps reset the login stream (yamux RST) {got}")
    code = session.go_away
    if code is not None and code != yamux.GO_AWAY_NORMAL:
        name = yamux.GO_AWAY_NAMES.get(code, "unknown code")
        raise ProbeFailure(
            Reason.RESET, f"frps ended the yamux session (GoAway {code}: {name}) {got}"
        )
    if session.remote_fin:
        raise ProbeFailure(
            Reason.RESET,
            f"frps closed the login stream (yamux FIN) {got}; it does so when the "
            "first message is not a valid Login",
        )


def _outcome(trace: Trace, resp: dict[str, str], options: Options, secret: str) -> ProbeResult:
    version = resp.get("version", "")
    trace.facts["frps_version"] = version or None
    trace.facts["tls"] = options.tls
    trace.facts["mux"] = options.mux
    frps = f"frps {version}" if version else "frps (no version given)"
    error = resp.get("error", "")
    if not error:
        return trace.ok(f"{frps} accepted the login ({_mode(options)})", run_id=resp.get("run_id"))
    masked = _mask(error, secret)
    quoted = _quote(masked)
    trace.facts["login_error"] = masked
    if options.token is None:
        return trace.ok(
            f"{frps} is alive ({_mode(options)}); it refused the token-less login with "
            f"{quoted}, which still proves it runs (set token to check the login itself)"
        )
    lowered = error.lower()
    if "token" in lowered or "auth" in lowered:
        raise ProbeFailure(Reason.AUTH_FAILED, f"{frps} refused the configured token: {quoted}")
    hint = (
        " (frps hides the cause when detailedErrorsToClient = false; see its log)"
        if error == "register control error"
        else ""
    )
    raise ProbeFailure(Reason.REJECTED, f"{frps} refused the login: {quoted}{hint}")


@entrypoint("frp")
async def probe(trace: Trace, target: str, options: Options, timeout: float) -> ProbeResult:
    hp = parse_hostport(target, DEFAULT_PORT)
    secret = options.token.get_secret_value() if options.token is not None else ""
    reader, writer = await open_stream(
        trace,
        hp,
        tls=insecure_tls_context() if options.tls else None,
        server_hostname=options.server_name,
        prefix=TLS_HEAD_BYTE if options.tls and options.tls_prefix else b"",
    )
    session = yamux.ClientSession() if options.mux else None
    try:
        if options.tls:
            ssl_object = writer.get_extra_info("ssl_object")
            trace.facts["tls_version"] = ssl_object.version() if ssl_object else None
        with trace.phase("login"):
            login = login_message(
                secret, int(time.time()), version=options.version, user=options.user
            )
            writer.write(session.open(login) if session is not None else login)
            resp = await _read_login_resp(reader, writer, session, options, secret)
        return _outcome(trace, resp, options, secret)
    finally:
        # A FIN on the stream and a GoAway let frps end the control at once;
        # the write is handed to the kernel now and never waited for.
        if session is not None and not writer.transport.is_closing():
            with contextlib.suppress(Exception):  # a dead transport may raise anything
                writer.write(session.close())
        close_stream(writer)
