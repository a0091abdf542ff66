"""Heartbeats: a cheap application message on a kept link to each healthy target.

A full probe runs every ``interval`` (2 s by default), so a service that hangs
(accepts, never answers) was noticed only at the next probe. While a target
is UP, a heartbeat sends one small message every ``heartbeat.interval`` on a
link it keeps open and expects an answer, as BFD does (RFC 5880). When
``multiplier`` heartbeats in a row go unanswered (no answer for
``interval x multiplier`` after the first unanswered one was sent), it calls
``on_miss``: the supervisor then starts the confirmation probes at once. A
miss never marks a target down by itself; only failed full probes do.

Per kind (``link_for``):

- http, thingsboard: ``HEAD <path>`` on a kept HTTP/1.1 connection (the
  probe's path; thingsboard's login page).
- socketio: a kept Engine.IO WebSocket session without a Socket.IO
  namespace (no application handler runs). Engine.IO 4 servers ping and
  treat a client ping as a protocol error ("invalid heartbeat direction"),
  and only every ``pingInterval`` (25 s): the heartbeat is an RFC 6455 ping
  frame, answered by the server's WebSocket layer in the server's process;
  server pings are answered. With ``eio: "3"`` the client pings by protocol:
  the heartbeat is the Engine.IO ping ``2``, answered by ``3``. The session
  is replaced every ``SESSION_SECONDS``, before Socket.IO's
  ``connectTimeout`` (45 s) ends a session that joined no namespace.
- frp (with ``mux``): a yamux session with no stream and no login, only
  yamux Pings (answered by frps's session layer; frps's keepalive pings are
  answered). The first bytes go out at once, so frps's serialised first
  read never waits on it; no control is registered, nothing shows up in
  frps's dashboard. Off without ``mux``: a login is the only exchange, and
  it is not cheap.
- stun, turn (UDP): a Binding request; coturn answers it on its TURN port.
  A port-unreachable answer counts as a close (the process is gone).
- icmp: an echo request.
- tcp: none (a tcp probe only connects: there is no application to ask).

A link that was never answered never calls ``on_miss`` (a server that does
not answer this message would otherwise cause a probe burst per detection
time); it is dropped and retried later. A peer close of a TCP link calls
``on_close`` as the idle watch does. Nothing a peer sends raises out of a
heartbeat: garbage ends the link and a new one is opened later.
"""

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

import probes
from jupiterd.runtime.watch import BACKOFF_SECONDS, RETRY_SECONDS, SHORT_LIFE_SECONDS
from probes import ProbeOptions, stunmsg, yamux
from probes import icmp as icmp_probe
from probes.httpclient import HttpConnection
from probes.net import close_stream, insecure_tls_context, open_stream, resolve
from probes.options import HostPort, Url, parse_host, parse_hostport, parse_url
from probes.result import ProbeFailure, Reason, Trace
from probes.websocket import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, encode_frame, open_websocket

# Confirmation probes after a miss start this far apart (each on its own
# connection, at its own moment), not one timeout apart.
CONFIRM_SPACING = 0.02
OPEN_TIMEOUT = 2.0
SESSION_SECONDS = 20.0  # socketio: a new session before the server's connect/ping timeouts
# A TCP heartbeat the peer's kernel has not acknowledged counts as missed
# only after this long: a lost segment costs TCP a 200 ms retransmission
# timeout, doubled at each loss (0.2, 0.6, 1.4 s), while a silent link whose
# data was acknowledged is the application not answering.
UNDELIVERED_SECONDS = 1.0
STALE_SECONDS = 5.0  # a link silent this long after a miss is replaced
NEVER_ANSWERED_RETRY = 60.0  # a link that never answered is retried after this
MAX_SKIP = 1 << 20
_BINDING_REQUEST = stunmsg.message_type(
    stunmsg.Method.BINDING, stunmsg.Class.REQUEST
)  # bytes of unrelated frames a link reads past before giving up


class Closed(Exception):
    """The peer closed the link (or refused it: a UDP port unreachable)."""


class Garbage(Exception):
    """The peer sent something this link does not accept."""


class Link:
    """One open heartbeat link. ``send`` writes one heartbeat; ``answer``
    returns when the next answer arrives."""

    pipelined = False  # send every interval even while one is unanswered
    max_age: float | None = None  # replaced after this many seconds

    async def open(self) -> None:
        raise NotImplementedError

    def send(self) -> None:
        raise NotImplementedError

    async def answer(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def listen(self, answered: Callable[[], None], ended: Callable[[str], None]) -> None:
        """Call ``answered`` per answer and ``ended`` ("closed" or "garbage")
        once the link ends. Stream links read in a task; datagram links
        override this to answer from their protocol callbacks."""

        async def read() -> None:
            try:
                while True:
                    await self.answer()
                    answered()
            except Closed:
                ended("closed")
            except asyncio.CancelledError:
                raise
            except Exception:
                ended("garbage")

        self._reader = asyncio.get_running_loop().create_task(read())

    def stop_listening(self) -> None:
        reader: asyncio.Task[None] | None = getattr(self, "_reader", None)
        if reader is not None:
            reader.cancel()

    def acked_for(self) -> float | None:
        """TCP: None while the peer's kernel has not acknowledged all we
        sent (a lost segment TCP is retransmitting), else the seconds since
        its last acknowledgement: how long the application has been silent
        about a request that certainly arrived. Datagrams: no such fact."""
        return float("inf")


def _tcp_acked_for(writer: asyncio.StreamWriter | None) -> float | None:
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None:
        return float("inf")
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 60)
    except OSError:
        return float("inf")
    if len(info) < 60:
        return float("inf")
    # struct tcp_info: 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss,
    # unacked (offset 24), ... last_ack_recv (offset 56, milliseconds ago).
    if struct.unpack_from("I", info, 24)[0]:
        return None
    return float(struct.unpack_from("I", info, 56)[0]) / 1000.0


def _is_close(exc: BaseException) -> bool:
    """A reset (a killed process with our unread bytes) is a close too."""
    if isinstance(exc, ConnectionError | asyncio.IncompleteReadError):
        return True
    return isinstance(exc, ProbeFailure) and exc.reason is Reason.RESET


# --------------------------------------------------------------------- http


class HttpLink(Link):
    def __init__(self, url: Url, path: str, server_name: str | None, headers: dict[str, str]):
        self.url = url
        self.path = path
        self.server_name = server_name
        self.headers = headers
        self.conn: HttpConnection | None = None
        self._request = b""

    async def open(self) -> None:
        trace = Trace("heartbeat", str(self.url.netloc))
        self.conn = await HttpConnection.open(trace, self.url, server_name=self.server_name)
        lines = [f"HEAD {self.path} HTTP/1.1"]
        given = {k.lower() for k in self.headers}
        if "host" not in given:
            lines.append(f"Host: {self.server_name or self.url.netloc}")
        lines += [f"{k}: {v}" for k, v in self.headers.items() if k.lower() != "content-length"]
        lines.append("User-Agent: jupiterd-heartbeat")
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self) -> None:
        assert self.conn is not None
        self.conn.writer.write(self._request)

    async def answer(self) -> None:
        conn = self.conn
        assert conn is not None
        try:
            resp = await conn.read_response("HEAD", 0)
        except Exception as exc:
            if _is_close(exc) or conn.reader.at_eof():
                raise Closed() from None
            raise Garbage(str(exc)) from None
        connection = resp.headers.get("connection", "").lower()
        if "close" in connection or (resp.version == "HTTP/1.0" and "keep-alive" not in connection):
            raise Closed()  # answered, but the server ends the connection here

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def acked_for(self) -> float | None:
        return _tcp_acked_for(self.conn.writer if self.conn is not None else None)


# --------------------------------------------------------------------- socketio


class SocketIOLink(Link):
    max_age = SESSION_SECONDS

    def __init__(self, url: Url, path: str, eio: str, headers: dict[str, str]):
        self.url = url
        self.path = path
        self.v3 = eio == "3"
        self.headers = headers
        self.conn: HttpConnection | None = None
        self.ws: Any = None

    async def open(self) -> None:
        trace = Trace("heartbeat", str(self.url.netloc))
        self.conn = await HttpConnection.open(trace, self.url)
        version = 3 if self.v3 else 4
        self.ws = await open_websocket(
            self.conn, f"{self.path}?EIO={version}&transport=websocket", self.headers
        )
        opcode, payload = await self._frame()
        if opcode != OP_TEXT or not payload.startswith(b"0{"):
            raise Garbage("no Engine.IO open packet")

    async def _frame(self) -> tuple[int, bytes]:
        try:
            head, payload = await self.ws._frame()
        except Exception as exc:
            if _is_close(exc) or self.ws.closed_by_peer:
                raise Closed() from None
            raise Garbage(str(exc)) from None
        if head.opcode == OP_CLOSE:
            raise Closed()
        return head.opcode, payload

    def send(self) -> None:
        if self.v3:
            self.ws.send_text("2")
        else:
            self.ws.writer.write(encode_frame(OP_PING, b"hb"))

    async def answer(self) -> None:
        skipped = 0
        while True:
            opcode, payload = await self._frame()
            if opcode == OP_PONG and not self.v3:
                return
            if opcode == OP_PING:
                self.ws.writer.write(encode_frame(OP_PONG, payload))
            elif opcode == OP_TEXT and payload[:1] == b"3" and self.v3:
                return
            elif opcode == OP_TEXT and payload[:1] == b"2" and not self.v3:
                self.ws.send_text("3" + payload[1:].decode("utf-8", "replace"))
            elif opcode == OP_TEXT and payload[:1] == b"1":
                raise Closed()  # Engine.IO close
            skipped += len(payload) + 2
            if skipped > MAX_SKIP:
                raise Garbage("too much unrelated traffic")

    def close(self) -> None:
        if self.ws is not None:
            self.ws.send_close()
        if self.conn is not None:
            self.conn.close()

    def acked_for(self) -> float | None:
        return _tcp_acked_for(self.conn.writer if self.conn is not None else None)


# --------------------------------------------------------------------- frp


class FrpLink(Link):
    def __init__(self, hp: HostPort, tls: bool, prefix: bool, server_name: str | None):
        self.hp, self.tls, self.prefix, self.server_name = hp, tls, prefix, server_name
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.opaque = 0

    async def open(self) -> None:
        from probes.frp import TLS_HEAD_BYTE

        self.reader, self.writer = await open_stream(
            Trace("heartbeat", str(self.hp)),
            self.hp,
            tls=insecure_tls_context() if self.tls else None,
            server_hostname=self.server_name,
            prefix=TLS_HEAD_BYTE if self.tls and self.prefix else b"",
        )
        self.send()  # the first bytes at once: frps's first read never waits on us

    def send(self) -> None:
        assert self.writer is not None
        self.opaque = (self.opaque + 1) & 0xFFFFFFFF
        self.writer.write(yamux.encode(yamux.PING, yamux.SYN, 0, self.opaque))

    async def answer(self) -> None:
        assert self.reader is not None and self.writer is not None
        skipped = 0
        while True:
            try:
                raw = await self.reader.readexactly(yamux.HEADER_SIZE)
                head = yamux.decode(raw)
            except (asyncio.IncompleteReadError, ConnectionError):
                raise Closed() from None
            except (yamux.YamuxError, OSError) as exc:
                raise Garbage(str(exc)) from None
            if head.type == yamux.GO_AWAY:
                raise Closed()
            if head.type == yamux.PING:
                if head.flags & yamux.SYN:
                    self.writer.write(yamux.encode(yamux.PING, yamux.ACK, 0, head.length))
                elif head.flags & yamux.ACK:
                    return
                continue
            if head.type == yamux.DATA and head.length:
                skipped += head.length
                if skipped > MAX_SKIP:
                    raise Garbage("too much unrelated data")
                try:
                    await self.reader.readexactly(head.length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    raise Closed() from None

    def close(self) -> None:
        if self.writer is not None:
            close_stream(self.writer)

    def acked_for(self) -> float | None:
        return _tcp_acked_for(self.writer)


# --------------------------------------------------------------------- datagrams


def _ignore() -> None:
    pass


def _ignore_end(how: str) -> None:
    pass


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


# --------------------------------------------------------------------- per kind


def link_for(kind: str, target: str, options: ProbeOptions) -> Link | None:
    """A fresh link for one target of ``kind``; None: this kind (with these
    options) has no heartbeat."""
    o: Any = options
    port = probes.get_kind(kind).default_port or 80
    if kind == "http":
        url = parse_url(target, port)
        return HttpLink(url, o.path or url.path, o.server_name, dict(o.headers))
    if kind == "thingsboard":
        return HttpLink(parse_url(target, port), o.login_path, None, {})
    if kind == "socketio":
        if o.transport == "polling" and not o.upgrade:
            return None  # the server may not take WebSockets at all
        return SocketIOLink(parse_url(target, port), o.path, o.eio, dict(o.headers))
    if kind == "frp":
        if not o.mux:
            return None
        return FrpLink(
            parse_hostport(target, probes.get_kind("frp").default_port),
            o.tls,
            o.tls_prefix,
            o.server_name,
        )
    if kind in ("stun", "turn"):
        if o.transport != "udp":
            return None
        return StunLink(parse_hostport(target, probes.get_kind(kind).default_port))
    if kind == "icmp":
        return IcmpLink(parse_host(target))
    return None


# --------------------------------------------------------------------- the loop


def _acked_long_enough(link: Link, detect: float, interval: float) -> bool:
    """A TCP request counts as unanswered once it was acknowledged and the
    application stayed silent for (about) the detection time after that:
    a request TCP had to retransmit starts its clock at the acknowledgement.
    Half an interval of slack covers the peer's delayed acknowledgement."""
    acked = link.acked_for()
    return acked is not None and acked + interval / 2 >= detect


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Heartbeat:
    """Keeps one link to one target and calls ``on_miss`` when it goes silent."""

    def __init__(
        self,
        make_link: Any,
        interval: float,
        multiplier: int,
        on_miss: Any,
        on_close: Any,
    ) -> None:
        self.make_link = make_link
        self.interval = interval
        self.multiplier = multiplier
        self.on_miss = on_miss
        self.on_close = on_close
        self.sent = 0
        self.answered = 0
        self.misses = 0
        self.closes = 0
        self.links = 0  # links opened
        self.attempts = 0  # links tried
        self.ends: dict[str, int] = {}  # why links ended: closed, garbage, never...
        self._task: asyncio.Task[None] | None = None
        self._link: Link | None = None

    @property
    def detect_seconds(self) -> float:
        return self.interval * self.multiplier

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    def stop(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            link = self.make_link()
            self.attempts += 1
            try:
                async with asyncio.timeout(OPEN_TIMEOUT):
                    await link.open()
            except asyncio.CancelledError:
                link.close()
                raise
            except Exception:  # refused, unreachable, a bad handshake: the probes judge
                link.close()
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self.links += 1
            self._link = link
            opened = loop.time()
            try:
                how = await self._session(link)
                self.ends[how] = self.ends.get(how, 0) + 1
            finally:
                link.close()
                self._link = None
            if how == "closed":
                self.closes += 1
                self.on_close()
                lived = loop.time() - opened
                await asyncio.sleep(
                    BACKOFF_SECONDS if lived < SHORT_LIFE_SECONDS else RETRY_SECONDS
                )
            elif how == "never":
                await asyncio.sleep(NEVER_ANSWERED_RETRY)
            elif how != "recycle":
                await asyncio.sleep(RETRY_SECONDS)

    async def _session(self, link: Link) -> str:
        """Run one link; returns why it ended: closed, garbage, stale, never,
        recycle. Timer and answer callbacks, no task switch per heartbeat."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        detect = self.detect_seconds
        interval = self.interval
        end: asyncio.Future[str] = loop.create_future()
        # when the first unanswered heartbeat went out; answered at least once;
        # on_miss called for this silence
        state: dict[str, Any] = {"pending": None, "proven": False, "missed": False}
        handle: asyncio.TimerHandle | None = None

        def finish(how: str) -> None:
            if not end.done():
                end.set_result(how)

        def answered() -> None:
            self.answered += 1
            state["pending"] = None
            state["proven"] = True
            state["missed"] = False

        def tick(planned: float) -> None:
            nonlocal handle
            now = loop.time()
            if end.done():
                return
            if link.max_age is not None and now - opened > link.max_age:
                finish("recycle")
                return
            pending = state["pending"]
            # A stalled loop (a tick far behind): answers may be queued
            # behind this callback, so no verdict on this tick.
            if pending is not None and now - planned < interval / 2:
                silent = now - pending
                if silent >= detect - 1e-3 and (
                    silent >= UNDELIVERED_SECONDS or _acked_long_enough(link, detect, interval)
                ):
                    if not state["proven"]:
                        if now - opened > 10 * detect:
                            finish("never")
                            return
                    elif not state["missed"]:
                        state["missed"] = True
                        self.misses += 1
                        self.on_miss()
                    elif silent > STALE_SECONDS:
                        finish("stale")
                        return
            if link.pipelined or state["pending"] is None:
                try:
                    link.send()
                except Exception:  # a transport the peer has just reset
                    finish("closed")
                    return
                self.sent += 1
                if state["pending"] is None:
                    state["pending"] = now
            nxt = max(planned + interval, now)
            handle = loop.call_at(nxt, tick, nxt)

        link.listen(answered, finish)
        tick(loop.time())
        try:
            return await end
        finally:
            if handle is not None:
                handle.cancel()
            link.stop_listening()
