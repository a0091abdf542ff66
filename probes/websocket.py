"""A minimal RFC 6455 WebSocket client over an existing HTTP/1.1 connection.

Owns the opening handshake (``Upgrade: websocket`` with a fresh ``Sec-WebSocket-Key``,
101 and ``Sec-WebSocket-Accept`` checked, RFC 6455 section 4), client frames (always
masked, section 5.3), and reading server frames: text and binary messages,
fragmentation (continuation frames, with control frames allowed in between), ping
answered by pong, close answered by close. No extensions are offered, so RSV bits must
be clear. Every frame and message is capped before anything is allocated.

Peer misbehaviour raises ``WebSocketError`` (a ``ProbeFailure``, reason
``protocol_error``); a close frame from the server raises ``WebSocketClosed``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from .httpclient import HttpConnection, Response, excerpt
from .result import ProbeFailure, Reason

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_DATA_OPCODES: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
_CONTROL_OPCODES: Final = frozenset({OP_CLOSE, OP_PING, OP_PONG})

DEFAULT_MAX_MESSAGE: Final = 1 << 20
_PACK_16: Final = struct.Struct("!H")
_PACK_64: Final = struct.Struct("!Q")


class WebSocketError(ProbeFailure):
    """The server broke RFC 6455."""

    def __init__(self, detail: str, reason: Reason = Reason.PROTOCOL_ERROR) -> None:
        super().__init__(reason, detail)


class WebSocketClosed(ProbeFailure):
    """The server sent a close frame (or closed the TCP connection) mid-exchange."""

    def __init__(self, code: int | None, text: str) -> None:
        self.code = code
        self.text = text
        what = f"code {code}" if code is not None else "no status code"
        said = f" '{text}'" if text else ""
        super().__init__(Reason.RESET, f"the server closed the WebSocket ({what}{said})")


# --- Opening handshake ------------------------------------------------------------------


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_for(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def upgrade_headers(key: str) -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }


def check_upgrade(resp: Response, key: str) -> None:
    """Raise unless ``resp`` is a valid 101 answer to an upgrade sent with ``key``.
    A non-101 answer is the caller's to explain (it knows the application)."""
    if resp.status != 101:
        raise ProbeFailure(
            Reason.UNEXPECTED_RESPONSE,
            f"WebSocket upgrade refused: {resp.status_line}"
            + (f": '{excerpt(resp.body)}'" if resp.body else ""),
        )
    if resp.headers.get("upgrade", "").lower() != "websocket":
        raise WebSocketError(
            f"101 answer without 'Upgrade: websocket' (got '{resp.headers.get('upgrade', '')}')"
        )
    tokens = {t.strip().lower() for t in resp.headers.get("connection", "").split(",")}
    if "upgrade" not in tokens:
        raise WebSocketError("101 answer without 'Connection: Upgrade'")
    got = resp.headers.get("sec-websocket-accept", "")
    if got != accept_for(key):
        raise WebSocketError(
            f"bad Sec-WebSocket-Accept '{excerpt(got.encode('latin-1', 'replace'), 40)}' "
            "(not derived from our Sec-WebSocket-Key: not a WebSocket server, or a broken proxy)"
        )
    if resp.headers.get("sec-websocket-extensions"):
        raise WebSocketError("the server enabled a WebSocket extension that was not offered")


async def open_websocket(
    conn: HttpConnection,
    path: str,
    headers: Mapping[str, str] | None = None,
    *,
    max_message: int = DEFAULT_MAX_MESSAGE,
    refused: Callable[[Response], ProbeFailure] | None = None,
) -> WebSocket:
    """Upgrade ``conn`` (fresh or idle keep-alive) to a WebSocket; the connection's
    streams then belong to the returned object. ``refused`` turns a non-101 answer
    into the caller's own failure (it knows the application)."""
    key = new_key()
    all_headers = dict(headers or {})
    all_headers.update(upgrade_headers(key))
    resp = await conn.request("GET", path, headers=all_headers, max_body=4096)
    if refused is not None and resp.status != 101:
        raise refused(resp)
    check_upgrade(resp, key)
    conn.reusable = False
    return WebSocket(conn.reader, conn.writer, max_message=max_message)


# --- Frames -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameHeader:
    fin: bool
    opcode: int
    length: int


def header_size(first_two: bytes) -> int:
    """How many header bytes a frame starting with these two bytes has."""
    n = first_two[1] & 0x7F
    extra = 2 if n == 126 else 8 if n == 127 else 0
    masked = 4 if first_two[1] & 0x80 else 0
    return 2 + extra + masked


def parse_header(head: bytes, max_frame: int) -> FrameHeader:
    """Validate a complete server frame header (``header_size`` bytes)."""
    b0, b1 = head[0], head[1]
    fin = bool(b0 & 0x80)
    opcode = b0 & 0x0F
    if b0 & 0x70:
        raise WebSocketError(f"frame with reserved bits set (first byte 0x{b0:02x})")
    if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
        raise WebSocketError(f"frame with unknown opcode 0x{opcode:x}")
    if b1 & 0x80:
        raise WebSocketError("masked frame from the server (RFC 6455 5.1 forbids it)")
    n = b1 & 0x7F
    if n == 126:
        length = _PACK_16.unpack_from(head, 2)[0]
    elif n == 127:
        length = _PACK_64.unpack_from(head, 2)[0]
        if length >> 63:
            raise WebSocketError("frame length with the most significant bit set")
    else:
        length = n
    if opcode in _CONTROL_OPCODES and (not fin or length > 125):
        raise WebSocketError("fragmented or oversized control frame")
    if length > max_frame:
        raise WebSocketError(f"frame of {length} bytes exceeds the {max_frame}-byte limit")
    return FrameHeader(fin, opcode, length)


def decode_frames(
    data: bytes, max_frame: int = DEFAULT_MAX_MESSAGE
) -> list[tuple[bool, int, bytes]]:
    """Split complete server frames from ``data`` into (fin, opcode, payload); a
    trailing partial frame raises. The same checks as the stream reader, for tests."""
    frames: list[tuple[bool, int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise WebSocketError("truncated frame header")
        size = header_size(data[pos : pos + 2])
        if len(data) - pos < size:
            raise WebSocketError("truncated frame header")
        h = parse_header(data[pos : pos + size], max_frame)
        end = pos + size + h.length
        if end > len(data):
            raise WebSocketError(f"truncated frame: {h.length} bytes announced")
        frames.append((h.fin, h.opcode, data[pos + size : end]))
        pos = end
    return frames


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (RFC 6455 5.3)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, key: bytes | None = None
) -> bytes:
    """A client frame; masked with ``key`` (random when omitted), as RFC 6455 requires."""
    key = os.urandom(4) if key is None else key
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((first, 0x80 | 126)) + _PACK_16.pack(n)
    else:
        head = bytes((first, 0x80 | 127)) + _PACK_64.pack(n)
    return head + key + mask(payload, key)


def close_payload(data: bytes) -> tuple[int | None, str]:
    if not data:
        return None, ""
    if len(data) == 1:
        raise WebSocketError("close frame with a 1-byte payload")
    code = _PACK_16.unpack_from(data)[0]
    return code, excerpt(data[2:], 80)


# --- The connection -----------------------------------------------------------------------


class WebSocket:
    """One client WebSocket. ``recv`` returns whole messages; control frames are
    handled on the way."""

    __slots__ = ("close_sent", "closed_by_peer", "max_message", "reader", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.max_message = max_message
        self.close_sent = False
        self.closed_by_peer = False

    def send_text(self, text: str) -> None:
        self.writer.write(encode_frame(OP_TEXT, text.encode("utf-8")))

    def send_close(self, code: int = 1000) -> None:
        if not self.close_sent and not self.writer.transport.is_closing():
            self.close_sent = True
            self.writer.write(encode_frame(OP_CLOSE, _PACK_16.pack(code)))

    async def _read(self, n: int, what: str) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            self.closed_by_peer = True
            if not exc.partial and what == "frame header":
                raise WebSocketError(
                    "the server closed the TCP connection without a WebSocket close frame",
                    Reason.RESET,
                ) from None
            raise WebSocketError(
                f"the server closed the connection after {len(exc.partial)} of {n} {what} bytes",
                Reason.RESET,
            ) from None

    async def _frame(self) -> tuple[FrameHeader, bytes]:
        first = await self._read(2, "frame header")
        size = header_size(first)
        head = first + await self._read(size - 2, "frame header") if size > 2 else first
        h = parse_header(head, self.max_message)
        return h, await self._read(h.length, "frame payload") if h.length else b""

    async def recv(self) -> tuple[int, bytes]:
        """The next message as (OP_TEXT or OP_BINARY, payload). Text is checked to be
        UTF-8 by the caller's decode."""
        opcode = -1
        parts: list[bytes] = []
        total = 0
        while True:
            h, payload = await self._frame()
            if h.opcode == OP_PING:
                if not self.close_sent:
                    self.writer.write(encode_frame(OP_PONG, payload))
                continue
            if h.opcode == OP_PONG:
                continue
            if h.opcode == OP_CLOSE:
                self.closed_by_peer = True
                code, text = close_payload(payload)
                self.send_close(1000 if code is None else code)
                raise WebSocketClosed(code, text)
            if h.opcode == OP_CONTINUATION:
                if opcode < 0:
                    raise WebSocketError("continuation frame without a message to continue")
            elif opcode >= 0:
                raise WebSocketError("new data frame in the middle of a fragmented message")
            else:
                opcode = h.opcode
            total += len(payload)
            if total > self.max_message:
                raise WebSocketError(f"message over the {self.max_message}-byte limit")
            parts.append(payload)
            if h.fin:
                return opcode, parts[0] if len(parts) == 1 else b"".join(parts)

    async def recv_text(self) -> str | None:
        """The next message as text; ``None`` for a binary message."""
        opcode, payload = await self.recv()
        if opcode != OP_TEXT:
            return None
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise WebSocketError(f"text frame is not UTF-8: '{excerpt(payload)}'") from None

    async def close(self, timeout: float, code: int = 1000) -> bool:
        """Send a close frame and wait up to ``timeout`` seconds for the server's close
        frame or the end of the connection; True if the close handshake finished.
        Messages still in flight are discarded."""
        self.send_close(code)
        if self.closed_by_peer:
            return True
        if timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.recv()
        except WebSocketClosed:
            return True
        except (TimeoutError, ProbeFailure, OSError):
            return self.closed_by_peer

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()
