"""STUN and TURN heartbeats over UDP: a Binding request (coturn answers it
on its TURN port); a port unreachable counts as a close."""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from probes import stunmsg
from probes.net import resolve
from probes.options import HostPort
from probes.result import Trace

from .base import Link, _ignore, _ignore_end

_BINDING_REQUEST = stunmsg.message_type(stunmsg.Method.BINDING, stunmsg.Class.REQUEST)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, link: StunLink) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: Any) -> None:
        txids = self.link.txids
        # Header only: type, length, cookie, transaction id (RFC 8489 section 5).
        if len(data) >= 20 and data[0] & 0xC0 == 0 and data[8:20] in txids:
            txids.remove(data[8:20])
            self.link.answered()

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError):
            self.link.ended("closed")  # port unreachable: nobody listens there now


class StunLink(Link):
    pipelined = True

    def __init__(self, hp: HostPort) -> None:
        self.hp = hp
        self.transport: asyncio.DatagramTransport | None = None
        self.txids: deque[bytes] = deque(maxlen=16)
        self.answered: Callable[[], None] = _ignore
        self.ended: Callable[[str], None] = _ignore_end

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, addr = await resolve(Trace("heartbeat", str(self.hp)), self.hp, socket.SOCK_DGRAM)
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), remote_addr=addr[:2]
        )

    def listen(self, answered: Callable[[], None], ended: Callable[[str], None]) -> None:
        self.answered, self.ended = answered, ended

    def stop_listening(self) -> None:
        self.answered, self.ended = _ignore, _ignore_end

    def send(self) -> None:
        assert self.transport is not None
        txid = stunmsg.transaction_id()
        self.txids.append(txid)
        self.transport.sendto(stunmsg.encode(_BINDING_REQUEST, txid))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
