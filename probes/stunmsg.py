"""STUN message codec (RFC 5389, with the TURN attributes of RFC 5766).

Owns the wire format only: the 20-byte header, the attribute TLVs and the
typed values of the attributes the ``stun`` and ``turn`` probes use,
MESSAGE-INTEGRITY (HMAC-SHA1) and FINGERPRINT (CRC-32). Sockets,
retransmissions and verdicts live in ``probes.stun``.

An attribute is one row: an ``Attr`` with its code, name and a pack/unpack
pair, in the spirit of aioice's ``stun.py``. ``decode`` checks the framing
eagerly (header bits, magic cookie, lengths, attribute bounds, FINGERPRINT)
and keeps attribute values as bytes; ``Message.get`` unpacks one on demand,
so a probe pays only for the attributes it reads. Everything a peer can get
wrong surfaces as ``StunError`` and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Generic, TypeVar

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
FINGERPRINT_XOR = 0x5354554E
# REALM, NONCE and SOFTWARE: fewer than 128 characters, at most 763 bytes
# (RFC 5389 sections 15.7, 15.8, 15.10).
MAX_TEXT_BYTES = 763

_HEADER = struct.Struct("!HHI12s")
_TLV = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
COOKIE_BYTES = _U32.pack(MAGIC_COOKIE)
_XOR_PORT = MAGIC_COOKIE >> 16


class StunError(ValueError):
    """The bytes are not a well-formed STUN message (or attribute value)."""


class Method(IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Class(IntEnum):
    REQUEST = 0x000
    INDICATION = 0x010
    SUCCESS = 0x100
    ERROR = 0x110


_METHOD_NAMES: dict[int, str] = {
    Method.BINDING: "Binding",
    Method.ALLOCATE: "Allocate",
    Method.REFRESH: "Refresh",
    Method.SEND: "Send",
    Method.DATA: "Data",
    Method.CREATE_PERMISSION: "CreatePermission",
    Method.CHANNEL_BIND: "ChannelBind",
}
_CLASS_NAMES: dict[int, str] = {
    Class.REQUEST: "request",
    Class.INDICATION: "indication",
    Class.SUCCESS: "success response",
    Class.ERROR: "error response",
}


def message_type(method: int, cls: int) -> int:
    """The 14-bit type: the class bits C1 C0 sit at bits 8 and 4, between
    the method's bits (RFC 5389 section 6, figure 3)."""
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | cls


def split_type(msg_type: int) -> tuple[int, int]:
    """(method, class) of a message type."""
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    return method, msg_type & 0x0110


def type_name(method: int, cls: int) -> str:
    """'Allocate error response', 'method 0x0abc request', ..."""
    return f"{_METHOD_NAMES.get(method, f'method 0x{method:03x}')} {_CLASS_NAMES[cls & 0x110]}"


# --- attribute values ---------------------------------------------------------

T = TypeVar("T")
Address = tuple[str, int]


def _pack_address(value: Address, xor: bytes | None) -> bytes:
    host, port = value
    if ":" in host:
        family, raw = 2, socket.inet_pton(socket.AF_INET6, host)
    else:
        family, raw = 1, socket.inet_pton(socket.AF_INET, host)
    if xor is not None:
        port ^= _XOR_PORT
        raw = (int.from_bytes(raw, "big") ^ int.from_bytes(xor[: len(raw)], "big")).to_bytes(
            len(raw), "big"
        )
    return bytes((0, family)) + _U16.pack(port) + raw


def _unpack_address(value: bytes, xor: bytes | None) -> Address:
    n = len(value)
    if n < 4:
        raise StunError(f"address attribute of {n} bytes, shorter than 4")
    family = value[1]
    if family == 1:
        if n != 8:
            raise StunError(f"IPv4 address attribute of {n} bytes instead of 8")
        af = socket.AF_INET
    elif family == 2:
        if n != 20:
            raise StunError(f"IPv6 address attribute of {n} bytes instead of 20")
        af = socket.AF_INET6
    else:
        raise StunError(f"address attribute with unknown family {family}")
    port = _U16.unpack_from(value, 2)[0]
    raw = value[4:]
    if xor is not None:
        port ^= _XOR_PORT
        raw = (int.from_bytes(raw, "big") ^ int.from_bytes(xor[: len(raw)], "big")).to_bytes(
            len(raw), "big"
        )
    return socket.inet_ntop(af, raw), port


def pack_address(value: Address, txid: bytes) -> bytes:
    return _pack_address(value, None)


def unpack_address(value: bytes, txid: bytes) -> Address:
    return _unpack_address(value, None)


def pack_xor_address(value: Address, txid: bytes) -> bytes:
    # IPv4 is XORed with the cookie, IPv6 with the cookie and transaction id.
    return _pack_address(value, COOKIE_BYTES + txid)


def unpack_xor_address(value: bytes, txid: bytes) -> Address:
    return _unpack_address(value, COOKIE_BYTES + txid)


def pack_error_code(value: tuple[int, str], txid: bytes) -> bytes:
    code, reason = value
    return bytes((0, 0, code // 100, code % 100)) + reason.encode()


def unpack_error_code(value: bytes, txid: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunError(f"ERROR-CODE of {len(value)} bytes, shorter than 4")
    cls, number = value[2] & 0x07, value[3]
    if not 3 <= cls <= 6 or number > 99:
        raise StunError(f"ERROR-CODE with class {cls} and number {number} (expected 300..699)")
    return cls * 100 + number, value[4:].decode("utf-8", "replace")


def pack_text(value: str, txid: bytes) -> bytes:
    return value.encode()


def unpack_text(value: bytes, txid: bytes) -> str:
    if len(value) > MAX_TEXT_BYTES:
        raise StunError(f"text attribute of {len(value)} bytes, longer than {MAX_TEXT_BYTES}")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise StunError("text attribute is not UTF-8") from None


def unpack_label(value: bytes, txid: bytes) -> str:
    """Informational text (SOFTWARE): shown, never echoed, so decoded leniently."""
    return value[:MAX_TEXT_BYTES].decode("utf-8", "replace")


def pack_bytes(value: bytes, txid: bytes) -> bytes:
    return value


def unpack_nonce(value: bytes, txid: bytes) -> bytes:
    if len(value) > MAX_TEXT_BYTES:
        raise StunError(f"NONCE of {len(value)} bytes, longer than {MAX_TEXT_BYTES}")
    return value


def unpack_integrity(value: bytes, txid: bytes) -> bytes:
    if len(value) != 20:
        raise StunError(f"MESSAGE-INTEGRITY of {len(value)} bytes instead of 20")
    return value


def pack_u32(value: int, txid: bytes) -> bytes:
    return _U32.pack(value)


def unpack_u32(value: bytes, txid: bytes) -> int:
    if len(value) != 4:
        raise StunError(f"32-bit attribute of {len(value)} bytes instead of 4")
    return int(_U32.unpack(value)[0])


def pack_transport(value: int, txid: bytes) -> bytes:
    return bytes((value, 0, 0, 0))  # protocol number, then 24 RFFU bits


def unpack_transport(value: bytes, txid: bytes) -> int:
    if len(value) != 4:
        raise StunError(f"REQUESTED-TRANSPORT of {len(value)} bytes instead of 4")
    return value[0]


@dataclass(frozen=True, slots=True)
class Attr(Generic[T]):
    """One attribute type: a row of the table below."""

    code: int
    name: str
    pack: Callable[[T, bytes], bytes]  # (value, transaction id) -> value bytes
    unpack: Callable[[bytes, bytes], T]  # (value bytes, transaction id) -> value

    def tlv(self, value: T, txid: bytes = b"") -> bytes:
        """The attribute, padded to a multiple of 4 bytes."""
        data = self.pack(value, txid)
        n = len(data)
        return _TLV.pack(self.code, n) + data + b"\0" * (-n % 4)


MAPPED_ADDRESS = Attr(0x0001, "MAPPED-ADDRESS", pack_address, unpack_address)
USERNAME = Attr(0x0006, "USERNAME", pack_text, unpack_text)
MESSAGE_INTEGRITY = Attr(0x0008, "MESSAGE-INTEGRITY", pack_bytes, unpack_integrity)
ERROR_CODE = Attr(0x0009, "ERROR-CODE", pack_error_code, unpack_error_code)
LIFETIME = Attr(0x000D, "LIFETIME", pack_u32, unpack_u32)
REALM = Attr(0x0014, "REALM", pack_text, unpack_text)
NONCE = Attr(0x0015, "NONCE", pack_bytes, unpack_nonce)
XOR_RELAYED_ADDRESS = Attr(0x0016, "XOR-RELAYED-ADDRESS", pack_xor_address, unpack_xor_address)
REQUESTED_TRANSPORT = Attr(0x0019, "REQUESTED-TRANSPORT", pack_transport, unpack_transport)
XOR_MAPPED_ADDRESS = Attr(0x0020, "XOR-MAPPED-ADDRESS", pack_xor_address, unpack_xor_address)
SOFTWARE = Attr(0x8022, "SOFTWARE", pack_text, unpack_label)
FINGERPRINT = Attr(0x8028, "FINGERPRINT", pack_u32, unpack_u32)

ATTRIBUTE_NAMES: dict[int, str] = {
    a.code: a.name
    for a in (
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        LIFETIME,
        REALM,
        NONCE,
        XOR_RELAYED_ADDRESS,
        REQUESTED_TRANSPORT,
        XOR_MAPPED_ADDRESS,
        SOFTWARE,
        FINGERPRINT,
    )
}

UDP = 17  # REQUESTED-TRANSPORT's protocol number for a UDP relay (RFC 5766 section 14.7)

_MI_CODE = MESSAGE_INTEGRITY.code
_FP_CODE = FINGERPRINT.code
_MI_HEAD = _TLV.pack(_MI_CODE, 20)
_FP_HEAD = _TLV.pack(_FP_CODE, 4)


# --- messages -----------------------------------------------------------------


class Message:
    """A decoded message; attribute values stay bytes until ``get``."""

    __slots__ = ("_integrity_at", "attributes", "cls", "method", "raw", "txid")

    def __init__(
        self,
        method: int,
        cls: int,
        txid: bytes,
        attributes: dict[int, bytes],
        raw: bytes,
        integrity_at: int | None,
    ) -> None:
        self.method = method
        self.cls = cls
        self.txid = txid
        self.attributes = attributes  # first occurrence of each type, in order
        self.raw = raw
        self._integrity_at = integrity_at

    def get(self, attr: Attr[T]) -> T | None:
        """The attribute's value, None if absent; StunError if malformed."""
        value = self.attributes.get(attr.code)
        return None if value is None else attr.unpack(value, self.txid)

    def __contains__(self, attr: Attr[Any]) -> bool:
        return attr.code in self.attributes

    @property
    def name(self) -> str:
        return type_name(self.method, self.cls)

    def error(self) -> tuple[int, str] | None:
        return self.get(ERROR_CODE)

    def check_integrity(self, key: bytes) -> bool:
        """MESSAGE-INTEGRITY verifies with ``key``; False when absent."""
        at = self._integrity_at
        if at is None:
            return False
        raw = self.raw
        # The HMAC covers the message up to MESSAGE-INTEGRITY, with the
        # header's length as if MESSAGE-INTEGRITY were the last attribute.
        signed = raw[:2] + _U16.pack(at - HEADER_SIZE + 24) + raw[4:at]
        expected = hmac.digest(key, signed, "sha1")
        return hmac.compare_digest(expected, raw[at + 4 : at + 24])

    def __repr__(self) -> str:
        names = [ATTRIBUTE_NAMES.get(c, f"0x{c:04x}") for c in self.attributes]
        return f"<STUN {self.name} txid={self.txid.hex()} attributes={names}>"


def check_header(data: bytes, *, cookie: bool = True) -> int:
    """Validate a 20-byte header; return the body length it announces."""
    if len(data) < HEADER_SIZE:
        raise StunError(f"{len(data)} bytes, shorter than the 20-byte STUN header")
    msg_type, length, magic, _ = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunError(f"the first two bits are not zero (type 0x{msg_type:04x})")
    if cookie and magic != MAGIC_COOKIE:
        raise StunError(f"magic cookie 0x{magic:08x} instead of 0x{MAGIC_COOKIE:08x}")
    if length % 4:
        raise StunError(f"body length {length} is not a multiple of 4")
    return int(length)


def decode(data: bytes, *, cookie: bool = True) -> Message:
    """Parse one whole message (a datagram, or header plus body from a stream).

    With ``cookie=False`` the magic cookie is not checked, to tell another
    transaction's message from garbage."""
    length = check_header(data, cookie=cookie)
    end = len(data)
    if HEADER_SIZE + length != end:
        raise StunError(f"header announces a {length}-byte body but {end - HEADER_SIZE} follow")
    msg_type, _, _, txid = _HEADER.unpack_from(data)
    attributes: dict[int, bytes] = {}
    integrity_at: int | None = None
    pos = HEADER_SIZE
    while pos < end:
        code, n = _TLV.unpack_from(data, pos)
        start = pos + 4
        stop = start + ((n + 3) & ~3)
        if stop > end:
            raise StunError(
                f"attribute 0x{code:04x} at offset {pos} claims {n} bytes, {end - start} remain"
            )
        if code == _FP_CODE:
            if n != 4 or stop != end:
                raise StunError("FINGERPRINT is not the last attribute or not 4 bytes long")
            expected = zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR
            if _U32.unpack_from(data, start)[0] != expected:
                raise StunError("FINGERPRINT does not match the message")
        elif integrity_at is None:
            # Attributes after MESSAGE-INTEGRITY (but FINGERPRINT) are not
            # authenticated and must be ignored (RFC 5389 section 15.4).
            if code == _MI_CODE:
                if n != 20:
                    raise StunError(f"MESSAGE-INTEGRITY of {n} bytes instead of 20")
                integrity_at = pos
            if code not in attributes:
                attributes[code] = data[start : start + n]
        pos = stop
    method, cls = split_type(msg_type)
    return Message(method, cls, txid, attributes, data, integrity_at)


def encode(
    msg_type: int,
    txid: bytes,
    attributes: Iterable[bytes] = (),
    *,
    key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """A message from already packed attributes (``Attr.tlv``), optionally
    signed with MESSAGE-INTEGRITY under ``key`` and closed by FINGERPRINT."""
    body = b"".join(attributes)
    if key is not None:
        head = _HEADER.pack(msg_type, len(body) + 24, MAGIC_COOKIE, txid)
        body += _MI_HEAD + hmac.digest(key, head + body, "sha1")
    if fingerprint:
        head = _HEADER.pack(msg_type, len(body) + 8, MAGIC_COOKIE, txid)
        crc = zlib.crc32(head + body) ^ FINGERPRINT_XOR
        return head + body + _FP_HEAD + _U32.pack(crc)
    return _HEADER.pack(msg_type, len(body), MAGIC_COOKIE, txid) + body


def transaction_id() -> bytes:
    """96 bits from the OS's CSPRNG, as RFC 5389 section 6 asks."""
    return os.urandom(12)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password) (RFC 5389 section 15.4).

    SASLprep is not applied: coturn does not apply it either
    (``stun_produce_integrity_key_str``), and ASCII passwords are unchanged by it."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).digest()
