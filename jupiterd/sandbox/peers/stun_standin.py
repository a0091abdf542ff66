"""A STUN/TURN stand-in for machines without coturn (clearly not the real thing).

It answers as coturn 4.6.1 does, byte for byte in layout and attribute order
(checked against a live turnserver in tests/test_probe_turn.py):

- Binding request -> Binding success response with XOR-MAPPED-ADDRESS,
  MAPPED-ADDRESS, RESPONSE-ORIGIN, SOFTWARE, FINGERPRINT (coturn
  src/server/ns_turn_server.c ``handle_turn_binding`` and
  src/client/ns_turn_msg.c ``stun_set_binding_response_str``).
- Allocate, Refresh, CreatePermission, ChannelBind request -> error response
  401 "Unauthorized" with NONCE (16 hex digits, one per client address),
  REALM, SOFTWARE, FINGERPRINT (``check_stun_auth`` and
  ``create_challenge_response``). It allocates nothing, so it challenges
  every such request, credentials or not.
- Any other request -> 400 "Bad Request". Indications, responses and
  non-STUN bytes are dropped (UDP) or end the connection (TCP).

The same port number serves UDP and TCP (TCP: the header's length frames
each message, RFC 5389 section 7.2.2). Messages are built here with
``struct``, independently of the probes' codec.

``stun_standin()`` is an async context manager yielding a ``Standin``. As a
script (the sandbox runs it as a service process)::

    python -m jupiterd.sandbox.peers.stun_standin --host 127.0.0.2 --port 3478 [--realm R]

prints ``ready <host>:<port>`` when listening and exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

COOKIE = 0x2112A442
SOFTWARE = "jupiterd STUN stand-in"
DEFAULT_REALM = "jupiter.test"
TURN_METHODS = {0x003, 0x004, 0x008, 0x009}  # Allocate, Refresh, CreatePermission, ChannelBind
MAX_BODY = 2048
_HEADER = struct.Struct("!HHI12s")


@dataclass(frozen=True)
class Standin:
    host: str
    port: int
    realm: str

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


def _attr(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _address(code: int, addr: tuple[str, int], txid: bytes | None) -> bytes:
    host, port = addr[0], addr[1]
    if ":" in host:
        family, raw = 2, socket.inet_pton(socket.AF_INET6, host)
    else:
        family, raw = 1, socket.inet_pton(socket.AF_INET, host)
    if txid is not None:  # XOR with the cookie (and the transaction id for IPv6)
        port ^= COOKIE >> 16
        pad = struct.pack("!I", COOKIE) + txid
        raw = bytes(a ^ b for a, b in zip(raw, pad, strict=False))
    return _attr(code, struct.pack("!BBH", 0, family, port) + raw)


def _message(msg_type: int, txid: bytes, attrs: list[bytes]) -> bytes:
    body = b"".join(attrs)
    head = _HEADER.pack(msg_type, len(body) + 8, COOKIE, txid)
    crc = zlib.crc32(head + body) ^ 0x5354554E
    return head + body + _attr(0x8028, struct.pack("!I", crc))


def _error(code: int, reason: str) -> bytes:
    return _attr(0x0009, struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode())


class Responder:
    """Builds the answer to one message; shared by UDP and TCP."""

    def __init__(self, realm: str, local: tuple[str, int]) -> None:
        self.realm = realm
        self.local = local
        self.nonces: dict[tuple[str, int], bytes] = {}

    def nonce(self, peer: tuple[str, int]) -> bytes:
        if len(self.nonces) > 4096:
            self.nonces.clear()
        return self.nonces.setdefault(peer, os.urandom(8).hex().encode())

    def answer(self, data: bytes, peer: tuple[str, int]) -> bytes | None:
        if len(data) < 20:
            return None
        msg_type, length, cookie, txid = _HEADER.unpack_from(data)
        if msg_type & 0xC000 or cookie != COOKIE or 20 + length != len(data):
            return None
        if msg_type & 0x0110:  # not a request
            return None
        method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
        software = _attr(0x8022, SOFTWARE.encode())
        if method == 0x001:
            return _message(
                0x0101,
                txid,
                [
                    _address(0x0020, peer, txid),
                    _address(0x0001, peer, None),
                    _address(0x802B, self.local, None),
                    software,
                ],
            )
        error_type = msg_type | 0x0110
        if method in TURN_METHODS:
            return _message(
                error_type,
                txid,
                [
                    _error(401, "Unauthorized"),
                    _attr(0x0015, self.nonce(peer)),
                    _attr(0x0014, self.realm.encode()),
                    software,
                ],
            )
        return _message(error_type, txid, [_error(400, "Bad Request"), software])


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = self.responder.answer(data, addr)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def _serve_tcp(
    responder: Responder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    peer = writer.get_extra_info("peername")
    try:
        while True:
            head = await reader.readexactly(20)
            length = struct.unpack_from("!H", head, 2)[0]
            if length > MAX_BODY:
                return
            data = head + await reader.readexactly(length)
            out = responder.answer(data, (peer[0], peer[1]))
            if out is None:
                return
            writer.write(out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.transport.abort()


def _free_pair(host: str) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free for both TCP and UDP on {host}")


def attribute_layout(data: bytes) -> tuple[int, list[int]]:
    """Message type and attribute types in order, walked by hand: what a
    test compares between this stand-in's answer and coturn's."""
    types, pos = [], 20
    while pos < len(data):
        code, n = struct.unpack_from("!HH", data, pos)
        types.append(code)
        pos += 4 + n + (-n % 4)
    return struct.unpack_from("!H", data)[0], types


def ask(host: str, port: int, request: bytes) -> bytes:
    """One UDP request, its answer (blocking, 2 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(request, (host, port))
        return s.recv(4096)


@contextlib.asynccontextmanager
async def stun_standin(
    host: str = "127.0.0.1", port: int = 0, *, realm: str = DEFAULT_REALM
) -> AsyncIterator[Standin]:
    loop = asyncio.get_running_loop()
    for attempt in range(20):
        listen = port or _free_pair(host)
        responder = Responder(realm, (host, listen))
        try:
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_Udp, responder), local_addr=(host, listen)
            )
        except OSError:
            if port or attempt == 19:
                raise
            continue
        try:
            server = await asyncio.start_server(
                functools.partial(_serve_tcp, responder), host, listen
            )
        except OSError:
            transport.close()
            if port or attempt == 19:
                raise
            continue
        break
    try:
        yield Standin(host, listen, realm)
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


async def _main(host: str, port: int, realm: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with stun_standin(host, port, realm=realm) as standin:
        print(f"ready {standin.host}:{standin.port}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="STUN/TURN stand-in (answers like coturn).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--realm", default=DEFAULT_REALM)
    args = parser.parse_args(argv)
    asyncio.run(_main(args.host, args.port, args.realm))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
