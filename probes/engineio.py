"""Engine.IO and Socket.IO packet codec for the ``socketio`` probe.

Owns the wire text, nothing else (no I/O):

- Engine.IO packets as plain ``str``: the type digit (0 open, 1 close, 2 ping, 3 pong,
  4 message, 5 upgrade, 6 noop) followed by the data; ``b<base64>`` is a binary message.
- Long-polling payloads: v4 joins packets with ``\\x1e`` (engine.io-protocol README,
  "Packet encoding"); v3 prefixes each with its length *in UTF-16 code units* then
  ``:`` (engine.io-parser 2.x ``setLengthHeader`` uses JavaScript's ``String.length``).
- The open packet's JSON (``sid``, ``upgrades``, ``pingInterval``, ``pingTimeout``,
  ``maxPayload``).
- Socket.IO packets inside a message: type digit, optional ``/nsp,``, optional ack id,
  optional JSON (socket.io-protocol README; socket.io-parser ``decodeString``), and the
  CONNECT / CONNECT_ERROR / DISCONNECT packets the probe sends and reads.

Every decoder raises ``EngineIOError`` (a ``ProbeFailure`` with reason
``protocol_error``) on malformed input and never allocates from a peer's length field.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any, Final

from .httpclient import excerpt
from .result import ProbeFailure, Reason

OPEN: Final = "0"
CLOSE: Final = "1"
PING: Final = "2"
PONG: Final = "3"
MESSAGE: Final = "4"
UPGRADE: Final = "5"
NOOP: Final = "6"
BINARY: Final = "b"  # a base64 binary message in a text payload
PACKET_TYPES: Final = frozenset("0123456b")

SEPARATOR: Final = "\x1e"

# Socket.IO packet types (the digit after the Engine.IO message type "4").
SIO_CONNECT: Final = 0
SIO_DISCONNECT: Final = 1
SIO_EVENT: Final = 2
SIO_ACK: Final = 3
SIO_CONNECT_ERROR: Final = 4
SIO_BINARY_EVENT: Final = 5
SIO_BINARY_ACK: Final = 6

# Far more than any payload a probe needs; python-engineio refuses more than 16.
MAX_PAYLOAD_PACKETS: Final = 256
# A v3 length prefix with more digits than this cannot describe a body we read.
_MAX_LENGTH_DIGITS: Final = 9

_UTF16_NATIVE: Final = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"
_V3_START = re.compile(r"\d{1,20}:0\{")  # absurd lengths are the decoder's to report


class EngineIOError(ProbeFailure):
    """The peer's bytes are not Engine.IO / Socket.IO."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.PROTOCOL_ERROR, detail)


def show(text: str, limit: int = 60) -> str:
    """A short, escaped excerpt of peer text for a detail sentence."""
    return excerpt(text.encode("utf-8", "backslashreplace"), limit)


# --- Engine.IO payloads -----------------------------------------------------------------


def detect_version(body: str) -> int | None:
    """4 for a v4 open packet, 3 for a v3 length-prefixed one, else None.

    engine.io 3.x ignores the ``EIO`` query parameter, so the answer's framing, not
    what was asked, tells the version.
    """
    if body.startswith("0{"):
        return 4
    if _V3_START.match(body):
        return 3
    return None


def check_packet(packet: str) -> str:
    if not packet:
        raise EngineIOError("empty Engine.IO packet in payload")
    if packet[0] not in PACKET_TYPES:
        raise EngineIOError(f"unknown Engine.IO packet type in '{show(packet)}'")
    return packet


def decode_payload_v4(body: str, *, truncated: bool = False) -> list[str]:
    """Split a v4 long-polling payload. ``truncated``: the body was cut at our read
    limit, so its last packet may be partial and is dropped."""
    parts = body.split(SEPARATOR, MAX_PAYLOAD_PACKETS)
    if len(parts) > MAX_PAYLOAD_PACKETS:
        raise EngineIOError(f"payload of more than {MAX_PAYLOAD_PACKETS} packets")
    if truncated:
        parts.pop()
    return [check_packet(p) for p in parts]


def decode_payload_v3(body: str, *, truncated: bool = False) -> list[str]:
    """Split a v3 ``<length>:<packet>`` payload; lengths count UTF-16 code units."""
    units = _Utf16(body)
    total = len(units)
    packets: list[str] = []
    pos = 0
    while pos < total:
        if len(packets) >= MAX_PAYLOAD_PACKETS:
            raise EngineIOError(f"payload of more than {MAX_PAYLOAD_PACKETS} packets")
        colon = pos
        while colon < total and 48 <= units.code(colon) <= 57 and colon - pos <= _MAX_LENGTH_DIGITS:
            colon += 1
        if colon - pos > _MAX_LENGTH_DIGITS:
            raise EngineIOError(
                f"v3 payload: absurd length prefix '{show(units.text(pos, colon), 20)}' "
                f"at offset {pos} (more than {_MAX_LENGTH_DIGITS} digits)"
            )
        if colon == total and truncated:
            break  # the cut fell inside a length prefix
        if colon in (pos, total) or units.code(colon) != 58:
            raise EngineIOError(
                f"v3 payload: expected '<length>:' at offset {pos}, "
                f"got '{show(units.text(pos, pos + 16))}'"
            )
        length = int(units.text(pos, colon))
        start = colon + 1
        if length > total - start:
            if truncated:
                break
            raise EngineIOError(
                f"v3 payload: a packet claims {length} characters but only "
                f"{total - start} follow (truncated payload)"
            )
        if length:  # engine.io-parser 2.x skips empty "0:" packets
            packets.append(check_packet(units.text(start, start + length)))
        pos = start + length
    return packets


class _Utf16:
    """Index a string by UTF-16 code units, as JavaScript does; ASCII stays a str."""

    __slots__ = ("ascii", "codes", "raw", "string")

    def __init__(self, string: str) -> None:
        self.string = string
        self.ascii = string.isascii()
        if self.ascii:
            self.raw = b""
            self.codes: memoryview | bytes = string.encode("ascii")
        else:
            self.raw = string.encode(_UTF16_NATIVE, "surrogatepass")
            self.codes = memoryview(self.raw).cast("H")

    def __len__(self) -> int:
        return len(self.codes)

    def code(self, i: int) -> int:
        return int(self.codes[i])

    def text(self, start: int, end: int) -> str:
        if self.ascii:
            return self.string[start:end]
        return self.raw[start * 2 : end * 2].decode(_UTF16_NATIVE, "surrogatepass")


def decode_payload(body: str, version: int, *, truncated: bool = False) -> list[str]:
    if version == 3:
        return decode_payload_v3(body, truncated=truncated)
    return decode_payload_v4(body, truncated=truncated)


def utf16_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def encode_payload(packets: list[str], version: int) -> str:
    if version == 3:
        return "".join(f"{utf16_len(p)}:{p}" for p in packets)
    return SEPARATOR.join(packets)


# --- The open packet --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshake:
    sid: str
    upgrades: tuple[str, ...]
    ping_interval: int | None
    ping_timeout: int | None
    max_payload: int | None


def _int_field(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def parse_open(packet: str) -> Handshake:
    """The handshake data of an open packet ``0{...}``; only ``sid`` is required."""
    if not packet.startswith(OPEN):
        raise EngineIOError(f"expected an Engine.IO open packet '0{{...}}', got '{show(packet)}'")
    try:
        doc = json.loads(packet[1:])
    except (ValueError, RecursionError):
        raise EngineIOError(f"open packet is not JSON: '{show(packet)}'") from None
    if not isinstance(doc, dict):
        raise EngineIOError(f"open packet is not a JSON object: '{show(packet)}'")
    sid = doc.get("sid")
    if not isinstance(sid, str) or not sid:
        raise EngineIOError(f"open packet has no 'sid' string: '{show(packet)}'")
    raw_upgrades = doc.get("upgrades")
    upgrades = (
        tuple(u for u in raw_upgrades if isinstance(u, str))
        if isinstance(raw_upgrades, list)
        else ()
    )
    return Handshake(
        sid=sid,
        upgrades=upgrades,
        ping_interval=_int_field(doc, "pingInterval"),
        ping_timeout=_int_field(doc, "pingTimeout"),
        max_payload=_int_field(doc, "maxPayload"),
    )


# --- Socket.IO packets ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SioPacket:
    type: int
    nsp: str  # "/" when absent; for protocol v4 it may carry "?query"
    data: str  # the raw JSON text after namespace and ack id ("" when absent)


def parse_sio(message: str) -> SioPacket:
    """A Socket.IO packet from an Engine.IO message's data (the text after ``4``).

    Mirrors socket.io-parser's ``decodeString``: the namespace runs from ``/`` to the
    first ``,`` (or the end); an ack id is a run of digits. The JSON is not decoded
    here: most packets a probe sees are skipped.
    """
    if not message or not "0" <= message[0] <= "6":
        raise EngineIOError(f"not a Socket.IO packet: '{show(message)}'")
    kind = ord(message[0]) - 48
    i = 1
    if kind in (SIO_BINARY_EVENT, SIO_BINARY_ACK):
        dash = message.find("-", 1, 12)
        if dash < 2 or not message[1:dash].isdigit():
            raise EngineIOError(f"Socket.IO binary packet without attachments: '{show(message)}'")
        i = dash + 1
    nsp = "/"
    if message.startswith("/", i):
        comma = message.find(",", i)
        end = len(message) if comma < 0 else comma
        nsp = message[i:end]
        i = end + 1
    while i < len(message) and message[i].isdigit() and message[i].isascii():
        i += 1  # an ack id: irrelevant to the probe
    return SioPacket(kind, nsp, message[i:])


def namespace_name(nsp: str) -> str:
    """The namespace without a protocol-v4 ``?query``."""
    return nsp.split("?", 1)[0]


def connect_packet(namespace: str, version: int, auth_json: str | None, query: str) -> str:
    """The Engine.IO message carrying a Socket.IO CONNECT.

    Protocol v5 (Engine.IO 4): ``40[/nsp,][{auth}]``. Protocol v4 (Engine.IO 3):
    ``40/nsp[?query],`` (socket.io-client 2.x appends the query to the namespace;
    the server auto-connects ``/`` itself).
    """
    if version == 3:
        suffix = f"?{query}" if query else ""
        return f"40{namespace}{suffix},"
    head = "40" if namespace == "/" else f"40{namespace},"
    return head + (auth_json or "")


def disconnect_packet(namespace: str) -> str:
    return "41" if namespace == "/" else f"41{namespace},"


def connect_sid(packet: SioPacket) -> str | None:
    """The ``sid`` of a v5 CONNECT reply, ``None`` for a bare protocol-v4 ``40``."""
    if not packet.data:
        return None
    try:
        doc = json.loads(packet.data)
    except (ValueError, RecursionError):
        raise EngineIOError(f"CONNECT reply data is not JSON: '{show(packet.data)}'") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sid"), str):
        raise EngineIOError(f"CONNECT reply without a 'sid' string: '{show(packet.data)}'")
    sid: str = doc["sid"]
    return sid


def error_message(packet: SioPacket) -> str:
    """The server's reason in a CONNECT_ERROR or DISCONNECT: ``{"message": ...}``
    (protocol v5), a JSON string (protocol v4, python-socketio), or the raw text."""
    if not packet.data:
        return "(no message)"
    try:
        doc = json.loads(packet.data)
    except (ValueError, RecursionError):
        return show(packet.data, 200)
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        text: str = doc["message"]
        if doc.get("data") is not None:
            text += f" (data: {json.dumps(doc['data'])[:120]})"
        return show(text, 200)
    if isinstance(doc, str):
        return show(doc, 200)
    return show(packet.data, 200)
