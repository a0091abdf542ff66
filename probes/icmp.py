"""``icmp``: ICMP echo (ping) to a host, IPv4 or IPv6; for NAT instances.

Sends up to ``count`` echo requests ``interval`` seconds apart (by default
four, spread evenly over the probe's timeout) and succeeds at the first reply;
it fails only if none of them is answered (like ``ping -c N -w``, and like
AWS's nat_monitor.sh). One lost echo or reply thus costs a quarter of the
budget, not the probe: at 10% loss each way (19% per round trip) a probe fails
with 0.19^4 = 0.13%, against 19% for a single echo. Replies
are matched by sequence number and payload, and on raw sockets also by
identifier: a raw socket sees every ICMP packet the host receives (other
pings, other probes' replies, unreachables for someone else), which are
ignored. An ICMP destination unreachable (or time exceeded) that quotes one
of our echoes ends the probe at once with ``unreachable``.

Sockets, in order:

1. An unprivileged ICMP datagram socket ("ping socket",
   ``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)``), allowed when the sysctl
   ``net.ipv4.ping_group_range`` (it covers IPv6 too) includes one of our
   groups. The kernel picks the identifier, delivers only our replies, and
   reports ICMP errors through the socket's error queue (``IP_RECVERR``).
2. A raw socket (root or ``CAP_NET_RAW``), with ``ICMP_FILTER`` /
   ``ICMP6_FILTER`` so the kernel only wakes us for replies and errors.

When neither is allowed the probe fails with ``permission_denied`` and says
what to change. The socket opener is the module attribute
``SOCKET_FACTORY`` so tests can inject failures.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from .net import resolve
from .options import HostPort, ProbeOptions, parse_host
from .result import ProbeFailure, ProbeResult, Reason, Trace, entrypoint, monitor_failure

SOCKET_FACTORY: Callable[[int, int, int], socket.socket] = socket.socket

MAX_PAYLOAD = 8192
_RECV_BUFFER = 2048 + MAX_PAYLOAD
_ANC_BUFFER = 512
_BURST = 64  # packets handled per wake-up before yielding to the loop

# Linux values; Python's socket module lacks several of them.
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMP6_FILTER = 1
_IP_RECVERR = 11
_IP_RECVTTL = 12
_IP_TTL = 2
_IPV6_RECVERR = 25
_IPV6_RECVHOPLIMIT = 51
_IPV6_HOPLIMIT = 52
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3

_V4_ECHO_REQUEST, _V4_ECHO_REPLY, _V4_UNREACH, _V4_TIME_EXCEEDED = 8, 0, 3, 11
_V6_ECHO_REQUEST, _V6_ECHO_REPLY, _V6_UNREACH, _V6_TIME_EXCEEDED = 128, 129, 1, 3

_V4_UNREACH_CODES = {
    0: "network unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    4: "fragmentation needed",
    5: "source route failed",
    6: "destination network unknown",
    7: "destination host unknown",
    9: "network administratively prohibited",
    10: "host administratively prohibited",
    11: "network unreachable for TOS",
    12: "host unreachable for TOS",
    13: "communication administratively prohibited",
}
_V6_UNREACH_CODES = {
    0: "no route to destination",
    1: "communication administratively prohibited",
    2: "beyond scope of source address",
    3: "address unreachable",
    4: "port unreachable",
    5: "source address failed ingress/egress policy",
    6: "reject route to destination",
}


DEFAULT_COUNT = 4


class Options(ProbeOptions):
    count: int = Field(DEFAULT_COUNT, ge=1, le=100)  # echo requests at most; ok at the first reply
    # seconds between requests; None: the timeout divided by count
    interval: float | None = Field(None, ge=0.0, le=60.0)
    payload_size: int = Field(16, ge=0, le=MAX_PAYLOAD)  # bytes after the ICMP header


class MalformedPacket(ValueError):
    """A received packet is too short or its headers are inconsistent."""


@dataclass(frozen=True, slots=True)
class Packet:
    """An echo reply, or an ICMP error quoting an echo request."""

    type: int
    code: int
    ident: int  # of the reply, or of the quoted echo request
    seq: int
    payload: bytes  # the reply's data; empty for an error
    error: bool
    quoted_dst: str | None = None  # where the quoted request was going
    ttl: int | None = None  # from the IPv4 header (raw IPv4 sockets)


def parse_packet(data: bytes, v6: bool, ip_header: bool) -> Packet | None:
    """Parse what an ICMP socket received. ``ip_header``: the data starts
    with an IPv4 header (raw IPv4 sockets). Returns None for ICMP messages
    that are neither echo replies nor errors about an echo request; raises
    ``MalformedPacket`` for data that is not a well-formed ICMP message."""
    ttl = None
    if ip_header:
        ihl = _ipv4_header_length(data)
        if data[9] != socket.IPPROTO_ICMP:
            return None
        ttl = data[8]
        data = data[ihl:]
    if len(data) < 8:
        raise MalformedPacket(f"ICMP message of {len(data)} bytes, shorter than its header")
    kind, code = data[0], data[1]
    reply, unreach, exceeded = (
        (_V6_ECHO_REPLY, _V6_UNREACH, _V6_TIME_EXCEEDED)
        if v6
        else (_V4_ECHO_REPLY, _V4_UNREACH, _V4_TIME_EXCEEDED)
    )
    if kind == reply:
        ident, seq = struct.unpack_from("!HH", data, 4)
        return Packet(kind, code, ident, seq, bytes(data[8:]), False, None, ttl)
    if kind not in (unreach, exceeded):
        return None
    quoted = _quoted_echo(data[8:], v6)
    if quoted is None:
        return None
    ident, seq, dst = quoted
    return Packet(kind, code, ident, seq, b"", True, dst, ttl)


def _ipv4_header_length(data: bytes) -> int:
    if len(data) < 20:
        raise MalformedPacket(f"IPv4 packet of {len(data)} bytes, shorter than its header")
    if data[0] >> 4 != 4:
        raise MalformedPacket(f"IP version {data[0] >> 4} where 4 was expected")
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl:
        raise MalformedPacket(f"IPv4 header length {ihl} in a packet of {len(data)} bytes")
    return ihl


def _quoted_echo(inner: bytes, v6: bool) -> tuple[int, int, str] | None:
    """(ident, seq, destination) of the echo request an ICMP error quotes;
    None if it quotes something else. At least 8 bytes of the offending
    datagram follow its IP header (RFC 792, RFC 4443)."""
    if v6:
        if len(inner) < 48:
            raise MalformedPacket(f"ICMPv6 error quoting only {len(inner)} bytes")
        if inner[0] >> 4 != 6:
            raise MalformedPacket(f"quoted IP version {inner[0] >> 4} where 6 was expected")
        if inner[6] != socket.IPPROTO_ICMPV6 or inner[40] != _V6_ECHO_REQUEST:
            return None  # another protocol, or behind extension headers: not ours
        ident, seq = struct.unpack_from("!HH", inner, 44)
        return ident, seq, socket.inet_ntop(socket.AF_INET6, inner[24:40])
    ihl = _ipv4_header_length(inner)
    if len(inner) < ihl + 8:
        raise MalformedPacket(f"ICMP error quoting {len(inner) - ihl} bytes after the IP header")
    if inner[9] != socket.IPPROTO_ICMP or inner[ihl] != _V4_ECHO_REQUEST:
        return None
    ident, seq = struct.unpack_from("!HH", inner, ihl + 4)
    return ident, seq, socket.inet_ntop(socket.AF_INET, inner[16:20])


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(v6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    """An echo request. The IPv6 checksum covers a pseudo-header, so the
    kernel fills it in (RFC 3542); ping sockets also rewrite the IPv4 one."""
    kind = _V6_ECHO_REQUEST if v6 else _V4_ECHO_REQUEST
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:
        return header + payload
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + payload


def _error_text(v6: bool, kind: int, code: int) -> str:
    if v6:
        if kind == _V6_TIME_EXCEEDED:
            return "hop limit exceeded in transit"
        return _V6_UNREACH_CODES.get(code, f"destination unreachable (code {code})")
    if kind == _V4_TIME_EXCEEDED:
        return "time to live exceeded in transit"
    return _V4_UNREACH_CODES.get(code, f"destination unreachable (code {code})")


def _ping_group_range() -> str | None:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def permission_detail(dgram_error: OSError, raw_error: OSError) -> str:
    """What an ops engineer must change, with this process's ids filled in."""
    uid, gid = os.geteuid(), os.getegid()
    current = _ping_group_range()
    now = f" (it is '{current}')" if current is not None else ""
    return (
        f"this process (uid {uid}, gid {gid}) may not send ICMP echo: ping sockets are "
        f"refused ({dgram_error.strerror}) because net.ipv4.ping_group_range does not "
        f"include gid {gid}{now}, and raw sockets are refused ({raw_error.strerror}) without "
        f"CAP_NET_RAW. Fix one: `sysctl -w net.ipv4.ping_group_range='{gid} {gid}'` "
        "(persist it in /etc/sysctl.d/), or grant CAP_NET_RAW (systemd unit: "
        "AmbientCapabilities=CAP_NET_RAW)"
    )


def open_socket(family: int) -> tuple[socket.socket, str]:
    """An ICMP socket and its kind, "dgram" or "raw"; ProbeFailure if none."""
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    try:
        return SOCKET_FACTORY(family, socket.SOCK_DGRAM, proto), "dgram"
    except OSError as exc:
        dgram_error = exc
    try:
        return SOCKET_FACTORY(family, socket.SOCK_RAW, proto), "raw"
    except OSError as exc:
        raw_error = exc
    monitor = monitor_failure(dgram_error, "socket") or monitor_failure(raw_error, "socket")
    if monitor is not None:
        raise monitor  # out of descriptors or memory: says nothing of permissions
    denied = (errno.EPERM, errno.EACCES)
    if raw_error.errno in denied and (dgram_error.errno in denied or dgram_error.errno is None):
        raise ProbeFailure(Reason.PERMISSION_DENIED, permission_detail(dgram_error, raw_error))
    if raw_error.errno == errno.EAFNOSUPPORT:
        v = "IPv6" if family == socket.AF_INET6 else "IPv4"
        raise ProbeFailure(Reason.UNREACHABLE, f"{v} is not available on this host")
    raise ProbeFailure(
        Reason.PERMISSION_DENIED,
        f"cannot open an ICMP socket: ping socket: {dgram_error.strerror or dgram_error}; "
        f"raw socket: {raw_error.strerror or raw_error}",
    )


def _configure(sock: socket.socket, v6: bool, raw: bool) -> None:
    sock.setblocking(False)
    if v6:
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVHOPLIMIT, 1)
        if raw:
            # struct icmp6_filter: a set bit blocks that type.
            blocked = [0xFFFFFFFF] * 8
            for kind in (_V6_UNREACH, _V6_TIME_EXCEEDED, _V6_ECHO_REPLY):
                blocked[kind >> 5] &= ~(1 << (kind & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("=8I", *blocked))
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
    elif raw:
        allowed = (1 << _V4_ECHO_REPLY) | (1 << _V4_UNREACH) | (1 << _V4_TIME_EXCEEDED)
        sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", ~allowed & 0xFFFFFFFF))
    else:
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)


def _cmsg_int(data: bytes) -> int | None:
    return int.from_bytes(data[:4], sys.byteorder) if len(data) >= 4 else None


class _Exchange:
    """The echoes of one probe: sends, reply matching and the outcome.
    ``on_readable`` runs as the loop's reader callback for the socket."""

    def __init__(
        self, sock: socket.socket, v6: bool, raw: bool, ip: str, count: int, payload_size: int
    ) -> None:
        self.sock = sock
        self.v6 = v6
        self.raw = raw
        self.ip = ip
        self.count = count
        self.ident = random.getrandbits(16)
        self.base = random.getrandbits(16)
        self.payload = random.randbytes(payload_size)
        self.sent_at: dict[int, float] = {}
        self.rtts: dict[int, float] = {}
        self.ttl: int | None = None
        self.error: str | None = None
        self.ignored = 0  # other ICMP traffic and malformed packets
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def packet(self, index: int) -> tuple[int, bytes]:
        seq = (self.base + index) & 0xFFFF
        return seq, echo_request(self.v6, self.ident, seq, self.payload)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def on_readable(self) -> None:
        try:
            if not self.raw:
                self._drain_errors()
            for _ in range(_BURST):
                try:
                    data, anc, _flags, addr = self.sock.recvmsg(_RECV_BUFFER, _ANC_BUFFER)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # a pending socket error (ICMP error, no details)
                    self._on_error(f"{exc.strerror or exc}")
                    return
                self._on_data(data, anc, addr)
        except Exception as exc:  # a bug must reach the probe, not the loop's log
            if not self.done.done():
                self.done.set_exception(exc)

    def _on_data(self, data: bytes, anc: list[tuple[int, int, bytes]], addr: object) -> None:
        now = time.perf_counter()
        try:
            pkt = parse_packet(data, self.v6, ip_header=self.raw and not self.v6)
        except MalformedPacket:
            self.ignored += 1
            return
        if pkt is None or (self.raw and pkt.ident != self.ident):
            self.ignored += 1
            return
        sent = self.sent_at.get(pkt.seq)
        if sent is None:
            self.ignored += 1
            return
        if pkt.error:
            if pkt.quoted_dst != self.ip:
                self.ignored += 1
                return
            source = addr[0] if isinstance(addr, tuple) and addr else "?"
            self._on_error(f"ICMP {_error_text(self.v6, pkt.type, pkt.code)} from {source}")
            return
        if pkt.payload != self.payload or pkt.seq in self.rtts:
            self.ignored += 1  # corrupted, or a duplicate
            return
        self.rtts[pkt.seq] = now - sent
        if self.ttl is None:
            self.ttl = pkt.ttl
            for level, kind, value in anc:
                if (level, kind) in (
                    (socket.IPPROTO_IP, _IP_TTL),
                    (socket.IPPROTO_IPV6, _IPV6_HOPLIMIT),
                ):
                    self.ttl = _cmsg_int(value)
        self._finish()  # one reply proves the host reachable

    def _drain_errors(self) -> None:
        """Ping sockets report ICMP errors for our echoes on the error queue;
        the queued data is the echo request the error is about."""
        for _ in range(_BURST):
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(
                    _RECV_BUFFER, _ANC_BUFFER, socket.MSG_ERRQUEUE
                )
            except (BlockingIOError, InterruptedError):
                return
            seq = struct.unpack_from("!H", data, 6)[0] if len(data) >= 8 else None
            for _level, _kind, value in anc:
                if len(value) < 16:
                    continue
                _errno, origin, kind, code = struct.unpack_from("=IBBB", value)
                if origin not in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6):
                    continue  # a local error (e.g. EMSGSIZE) surfaces on send
                if seq not in self.sent_at:
                    continue
                offender = self._offender(value[16:])
                self._on_error(f"ICMP {_error_text(self.v6, kind, code)} from {offender}")

    def _offender(self, sockaddr: bytes) -> str:
        # struct sockaddr_in / sockaddr_in6 after struct sock_extended_err
        if len(sockaddr) >= 8 and sockaddr[0:2] == struct.pack("=H", socket.AF_INET):
            return socket.inet_ntop(socket.AF_INET, sockaddr[4:8])
        if len(sockaddr) >= 24 and sockaddr[0:2] == struct.pack("=H", socket.AF_INET6):
            return socket.inet_ntop(socket.AF_INET6, sockaddr[8:24])
        return "?"

    def _on_error(self, text: str) -> None:
        if self.error is None:
            self.error = text
        if not self.rtts:  # a reply already proved the host reachable
            self._finish()


@entrypoint("icmp")
async def probe(trace: Trace, target: str, options: Options, timeout: float) -> ProbeResult:
    host = parse_host(target)
    family, addr = await resolve(trace, HostPort(host, 0), socket.SOCK_DGRAM)
    ip = addr[0]
    v6 = family == socket.AF_INET6
    sock, kind = open_socket(family)
    trace.facts["socket"] = kind
    loop = asyncio.get_running_loop()
    # Stop a little before the entrypoint's timeout so that replies already
    # received still count and the detail can say how many echoes went out.
    margin = min(0.05, timeout / 10)
    deadline = loop.time() + timeout - trace.elapsed() - margin
    fd = sock.fileno()
    reading = False
    try:
        _configure(sock, v6, kind == "raw")
        ex = _Exchange(sock, v6, kind == "raw", ip, options.count, options.payload_size)
        interval = options.interval if options.interval is not None else timeout / options.count
        loop.add_reader(fd, ex.on_readable)
        reading = True
        with trace.phase("echo"):
            for index in range(options.count):
                if index:
                    wait = min(interval, deadline - loop.time())
                    if wait > 0:
                        await asyncio.wait([ex.done], timeout=wait)
                    if ex.done.done() or loop.time() >= deadline:
                        break
                seq, packet = ex.packet(index)
                ex.sent_at[seq] = time.perf_counter()
                await _send(loop, sock, packet, addr, ip)
            remaining = deadline - loop.time()
            if not ex.done.done() and remaining > 0:
                await asyncio.wait([ex.done], timeout=remaining)
            if ex.done.done():
                ex.done.result()  # re-raises a bug in the reader callback
    finally:
        if reading:
            loop.remove_reader(fd)
        sock.close()
    sent, replies = len(ex.sent_at), len(ex.rtts)
    trace.facts.update(sent=sent, replies=replies)
    if replies:
        rtt = sum(ex.rtts.values()) / replies
        trace.facts.update(rtt_seconds=round(rtt, 6), ttl=ex.ttl)
        what = f"{replies} of {sent} echo requests" if sent > 1 else "the echo request"
        return trace.ok(f"{ip} answered {what} in {rtt * 1000:.2f} ms")
    if ex.error is not None:
        return trace.fail(Reason.UNREACHABLE, f"{ip} is unreachable: {ex.error}")
    requests = f"{sent} echo requests" if sent != 1 else "1 echo request"
    return trace.fail(
        Reason.TIMEOUT,
        f"no echo reply from {ip} to {requests} ({options.payload_size}-byte payload, "
        f"{kind} socket) within {timeout:g} s",
    )


async def _send(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    packet: bytes,
    addr: tuple[str, int] | tuple[str, int, int, int],
    ip: str,
) -> None:
    try:
        await loop.sock_sendto(sock, packet, addr)
    except PermissionError as exc:
        # The socket opened, so this is the local firewall (or a broadcast).
        raise ProbeFailure(
            Reason.PERMISSION_DENIED,
            f"the kernel refused to send the echo request to {ip} ({exc.strerror}): "
            "a local firewall rule (iptables/nftables OUTPUT) drops ICMP, "
            "or the address is a broadcast address",
        ) from None
