"""ICMP heartbeats: echo requests, on one raw socket shared by every target
(or a ping socket each)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from probes import icmp as icmp_probe
from probes.net import resolve
from probes.options import HostPort
from probes.result import Trace

from .base import Link, _ignore, _ignore_end

_UNREACHABLE = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED, errno.EHOSTDOWN}
)


_SOL_RAW, _ICMP_FILTER = 255, 1  # linux/icmp.h


class _SharedRaw:
    """One raw ICMP socket per event loop and family for every ICMP
    heartbeat: a raw socket receives every ICMP message of the host, so one
    per target would wake every target's socket for each reply. Replies and
    errors go to the link whose identifier they carry (ping sockets need
    none of this: the kernel gives each its own replies)."""

    def __init__(self, sock: socket.socket, v6: bool, key: tuple[int, int]) -> None:
        self.sock, self.v6, self.key = sock, v6, key
        self.links: dict[int, IcmpLink] = {}
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def add(self, link: IcmpLink) -> None:
        while link.ident in self.links:
            link.ident = (link.ident + 1) & 0xFFFF
        self.links[link.ident] = link

    def remove(self, link: IcmpLink) -> None:
        if self.links.get(link.ident) is link:
            del self.links[link.ident]
        if not self.links:
            _SHARED_RAW.pop(self.key, None)
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            try:
                packet = icmp_probe.parse_packet(data, self.v6, not self.v6)
            except (icmp_probe.MalformedPacket, IndexError, struct.error):
                continue
            if packet is not None:
                link = self.links.get(packet.ident)
                if link is not None:
                    link.got(packet)


_SHARED_RAW: dict[tuple[int, int], _SharedRaw] = {}


class IcmpLink(Link):
    pipelined = True

    def __init__(self, host: str) -> None:
        self.host = host
        self.sock: socket.socket | None = None  # a ping socket of our own
        self.shared: _SharedRaw | None = None  # or the shared raw socket
        self.addr: Any = None
        self.v6 = False
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.seq = 0
        self.sent: deque[int] = deque(maxlen=16)
        self.answered: Callable[[], None] = _ignore
        self.ended: Callable[[str], None] = _ignore_end

    async def open(self) -> None:
        family, self.addr = await resolve(
            Trace("heartbeat", self.host), HostPort(self.host, 0), socket.SOCK_DGRAM
        )
        self.v6 = family == socket.AF_INET6
        loop = asyncio.get_running_loop()
        key = (id(loop), family)
        shared = _SHARED_RAW.get(key)
        if shared is None:
            sock, kind = icmp_probe.open_socket(family)
            sock.setblocking(False)
            if kind == "dgram":
                self.sock = sock
                loop.add_reader(sock.fileno(), self._readable)
                return
            if not self.v6:
                # Echo replies and unreachables only (a raw socket sees all ICMP).
                allowed = (1 << 0) | (1 << 3)
                sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", ~allowed & 0xFFFFFFFF))
            shared = _SHARED_RAW[key] = _SharedRaw(sock, self.v6, key)
        self.shared = shared
        shared.add(self)

    def listen(self, answered: Callable[[], None], ended: Callable[[str], None]) -> None:
        self.answered, self.ended = answered, ended

    def stop_listening(self) -> None:
        self.answered, self.ended = _ignore, _ignore_end

    def _readable(self) -> None:
        for _ in range(16):
            if self.sock is None:
                return
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # A ping socket reports an ICMP error about our echo this way.
                if exc.errno in _UNREACHABLE:
                    self.ended("closed")  # unreachable: told at once, as a refused port is
                continue
            try:
                packet = icmp_probe.parse_packet(data, self.v6, False)
            except (icmp_probe.MalformedPacket, IndexError, struct.error):
                continue
            if packet is not None:
                self.got(packet)

    def got(self, packet: icmp_probe.Packet) -> None:
        if packet.seq not in self.sent:
            return
        if packet.error:
            self.ended("closed")  # unreachable: told at once, as a refused port is
            return
        self.sent.remove(packet.seq)
        self.answered()

    def send(self) -> None:
        sock = self.sock if self.shared is None else self.shared.sock
        assert sock is not None
        self.seq = (self.seq + 1) & 0xFFFF
        self.sent.append(self.seq)
        packet = icmp_probe.echo_request(self.v6, self.ident, self.seq, b"jupiterd-hb")
        with contextlib.suppress(OSError):  # a full buffer or a local firewall: unanswered
            sock.sendto(packet, self.addr)

    def close(self) -> None:
        if self.shared is not None:
            self.shared.remove(self)
            self.shared = None
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
