"""``stun``: a Binding request (RFC 5389) answered with our mapped address.

Also owns the client side of one STUN transaction, which ``probes.turn``
reuses: over UDP a request is retransmitted on RFC 5389 section 7.2.1's
schedule (RTO doubling, at most 7 sends, then 16 RTOs of waiting) but only
while an answer could still arrive inside the probe's budget; over TCP it is
sent once and the answer is read by its header's length (section 7.2.2).
Datagrams that are not an answer to the transaction in flight are ignored,
malformed ones are remembered so a timeout can name them.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Literal, TypeVar

from pydantic import Field

from . import stunmsg
from .net import resolve, tcp_connect
from .options import HostPort, ProbeOptions, parse_hostport
from .result import ProbeFailure, ProbeResult, Reason, Trace, entrypoint, network_error
from .stunmsg import Class, Message, Method, StunError

DEFAULT_PORT = 3478
RC = 7  # sends of one request over UDP (RFC 5389 section 7.2.1)
RM = 16  # after the last send, wait this many initial RTOs before giving up
MAX_DATAGRAM = 4096  # a larger datagram is truncated by recv, then fails to decode
MAX_TCP_BODY = 8192  # STUN responses are a few hundred bytes; refuse to buffer more
_READS_PER_WAKEUP = 32  # bound the work one readiness callback does under a flood

_BINDING_REQUEST = stunmsg.message_type(Method.BINDING, Class.REQUEST)
SOFTWARE_NAME = "jupiterd"

T = TypeVar("T")


class Options(ProbeOptions):
    transport: Literal["udp", "tcp"] = "udp"
    # Initial UDP retransmission timeout (s). RFC 5389 suggests 0.5 s or more for
    # unknown Internet paths; with a 1 s probe budget that leaves one retransmission,
    # too few under loss. 0.1 s sends at 0, 0.1, 0.3 and 0.7 s: at 10% loss each
    # way a probe fails with 0.19^4 = 0.13% (0.19^3 = 0.7% with 0.25 s; measured
    # in bench/loss_kernel.py). A longer path needs a longer rto (and timeout).
    rto: float = Field(default=0.1, gt=0, le=60)
    software: bool = False  # send a SOFTWARE attribute naming the probe


# --- helpers shared with the turn probe -------------------------------------


def excerpt(data: bytes, limit: int = 32) -> str:
    """A short, escaped sample of a peer's bytes for a detail sentence."""
    more = "..." if len(data) > limit else ""
    return f"{len(data)} bytes {data[:limit]!r}{more}"


def clean(text: str, limit: int = 80) -> str:
    """A peer-supplied string made safe for one log line."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def show_address(addr: stunmsg.Address) -> str:
    return str(HostPort(*addr))


def read(msg: Message, attr: stunmsg.Attr[T], peer: str) -> T | None:
    """An attribute's value; a malformed one ends the probe as protocol_error."""
    try:
        return msg.get(attr)
    except StunError as exc:
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR, f"malformed {attr.name} in the {msg.name} from {peer}: {exc}"
        ) from None


def error_of(msg: Message, peer: str) -> tuple[int, str]:
    """(code, escaped reason) of an error response."""
    err = read(msg, stunmsg.ERROR_CODE, peer)
    if err is None:
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR, f"{peer} sent a {msg.name} without an ERROR-CODE attribute"
        )
    # coturn counts the C string's NUL in some reason phrases
    return err[0], clean(err[1].rstrip("\0"))


def software_of(msg: Message) -> str | None:
    try:
        value = msg.get(stunmsg.SOFTWARE)
    except StunError:
        return None
    return clean(value, 128) if value else None


def deadline_for(timeout: float) -> float:
    """When a probe stops waiting: a little before ``entrypoint`` cancels it,
    so the probe's own, more precise timeout sentence wins."""
    return asyncio.get_running_loop().time() + timeout - min(0.02, timeout * 0.1)


# --- one transaction over UDP or TCP -----------------------------------------


class Channel:
    """A connected UDP socket or TCP connection to one STUN server."""

    transport = ""
    peer: str
    local: str
    sent: int
    deadline: float  # loop time; a transaction waits no longer

    async def transact(self, request: bytes, txid: bytes, what: str) -> Message:
        """Send ``request`` and return the response (success or error) that
        carries ``txid``; raise ProbeFailure when none comes in time."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class UdpChannel(Channel):
    """Retransmits on RFC 5389's schedule while an answer can still arrive.

    A send at time t is made only if at least one initial RTO (the RFC's
    estimate of a round trip) remains before the deadline; the first send is
    always made. Readiness callbacks on a raw socket avoid a transport and a
    task per probe."""

    transport = "udp"

    def __init__(self, sock: socket.socket, peer: str, deadline: float, rto: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.peer = peer
        self.local = show_address(sock.getsockname()[:2])
        self.deadline = deadline
        self.rto = rto
        self.sent = 0
        self.waiter: asyncio.Future[Message] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.txid = b""
        self.request = b""
        self.what = ""
        self.started = 0.0
        self.tries = 0
        self.ignored = 0
        self.malformed = 0
        self.first_malformed = ""
        self.fd = sock.fileno()
        self.loop.add_reader(self.fd, self._readable)

    async def transact(self, request: bytes, txid: bytes, what: str) -> Message:
        waiter: asyncio.Future[Message] = self.loop.create_future()
        self.waiter = waiter
        self.txid, self.request, self.what = txid, request, what
        self.tries = self.ignored = self.malformed = 0
        self.first_malformed = ""
        self.started = self.loop.time()
        try:
            self._tick()
            return await waiter
        finally:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.waiter = None

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.loop.remove_reader(self.fd)
        self.sock.close()

    def _tick(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        now = self.loop.time()
        # A retransmission is worth it while half an RTO remains: the RTO is
        # a cautious multiple of the round trip, and demanding a whole one
        # left the last quarter to half of a budget unused.
        if self.tries < RC and (self.tries == 0 or now + self.rto / 2 <= self.deadline):
            try:
                self.sock.send(self.request)
            except (BlockingIOError, InterruptedError):
                pass  # a full send buffer loses the datagram; a retransmission covers it
            except OSError as exc:  # a connected socket: a pending ICMP error shows here too
                self._fail(network_error(exc, None))
                return
            self.tries += 1
            self.sent += 1
            wait = self.rto * (1 << (self.tries - 1)) if self.tries < RC else RM * self.rto
            self.timer = self.loop.call_at(min(now + wait, self.deadline), self._tick)
        elif self.deadline - now > 0.001:
            # No more sends, but an answer to one already sent may still come.
            self.timer = self.loop.call_at(self.deadline, self._tick)
        else:
            waiter.set_exception(self._timed_out(now))

    def _readable(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for a datagram sent: the network's answer
                self._fail(network_error(exc, None))
                return
            self._datagram(data)

    def _datagram(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # a late duplicate, or nothing in flight
        try:
            msg = stunmsg.decode(data)
        except StunError as exc:
            if _is_foreign(data):
                self.ignored += 1
            else:
                self._bad(f"{exc}: {excerpt(data)}")
            return
        if msg.txid != self.txid:
            self.ignored += 1
        elif msg.cls in (Class.SUCCESS, Class.ERROR):
            waiter.set_result(msg)
        elif data == self.request:
            self._bad("the peer echoed our request back (an echo service, not STUN)")
        else:
            self._bad(f"a {msg.name} instead of a response")

    def _bad(self, why: str) -> None:
        self.malformed += 1
        if not self.first_malformed:
            self.first_malformed = why

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if isinstance(exc, ConnectionRefusedError):
            waiter.set_exception(
                ProbeFailure(
                    Reason.REFUSED,
                    f"{self.peer} answered our {self.what} with ICMP port unreachable: "
                    "nothing listens on that UDP port",
                )
            )
        else:
            waiter.set_exception(exc)

    def _timed_out(self, now: float) -> ProbeFailure:
        sends = f"{self.tries} request{'s' if self.tries != 1 else ''} sent"
        valid = "valid " if self.malformed else ""
        head = (
            f"no {valid}answer to our {self.what} from {self.peer} over UDP in "
            f"{now - self.started:.2f} s ({sends}, initial RTO {self.rto:g} s)"
        )
        if self.malformed:
            n = self.malformed
            return ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"{head}; got {n} malformed repl{'y' if n == 1 else 'ies'} "
                f"(first: {self.first_malformed})",
            )
        if self.ignored:
            head += f"; ignored {self.ignored} STUN message(s) of other transactions"
        return ProbeFailure(Reason.TIMEOUT, head)


def _is_foreign(data: bytes) -> bool:
    """Well formed but for the magic cookie: another transaction's message."""
    if data[4:8] == stunmsg.COOKIE_BYTES:
        return False
    try:
        stunmsg.decode(data, cookie=False)
    except StunError:
        return False
    return True


class TcpChannel(Channel):
    """One TCP connection: each request sent once, answers framed by the
    header's length (no retransmission over a reliable transport)."""

    transport = "tcp"

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.peer = peer
        self.local = show_address(sock.getsockname()[:2])
        self.deadline = deadline
        self.sent = 0
        self.buf = bytearray()
        self.what = ""

    async def transact(self, request: bytes, txid: bytes, what: str) -> Message:
        self.what = what
        started = self.loop.time()
        ignored = 0
        try:
            async with asyncio.timeout_at(self.deadline):
                await self.loop.sock_sendall(self.sock, request)
                self.sent += 1
                while True:
                    msg = await self._message()
                    if msg.txid == txid and msg.cls in (Class.SUCCESS, Class.ERROR):
                        return msg
                    ignored += 1
        except TimeoutError:
            waited = self.loop.time() - started
            detail = f"no answer to our {what} from {self.peer} over TCP in {waited:.2f} s"
            if self.buf:
                detail += f" (got {excerpt(bytes(self.buf))} of a message, then nothing)"
            if ignored:
                detail += f"; ignored {ignored} STUN message(s) of other transactions"
            raise ProbeFailure(Reason.TIMEOUT, detail) from None

    async def _message(self) -> Message:
        head = await self._exactly(stunmsg.HEADER_SIZE)
        try:
            length = stunmsg.check_header(head)
        except StunError as exc:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"expected a STUN response to our {self.what} from {self.peer}, "
                f"got {excerpt(head)}: {exc}",
            ) from None
        if length > MAX_TCP_BODY:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"{self.peer} announced a {length}-byte STUN message body in answer to our "
                f"{self.what}, more than the {MAX_TCP_BODY} bytes a response needs: "
                f"{excerpt(head)}",
            )
        data = head + await self._exactly(length)
        try:
            return stunmsg.decode(data)
        except StunError as exc:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"malformed STUN message from {self.peer} in answer to our {self.what}: "
                f"{exc}: {excerpt(data)}",
            ) from None

    async def _exactly(self, n: int) -> bytes:
        buf = self.buf
        while len(buf) < n:
            chunk = await self.loop.sock_recv(self.sock, max(4096, n - len(buf)))
            if not chunk:
                got = f"after {excerpt(bytes(buf))}" if buf else "without a byte"
                raise ProbeFailure(
                    Reason.RESET,
                    f"{self.peer} closed the TCP connection {got} in answer to our {self.what}",
                )
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def close(self) -> None:
        self.sock.close()


async def open_channel(
    trace: Trace, hp: HostPort, transport: str, deadline: float, rto: float
) -> Channel:
    """A connected channel to the server; the caller closes it."""
    if transport == "tcp":
        sock = await tcp_connect(trace, hp)
        try:
            return TcpChannel(sock, str(hp), deadline)
        except BaseException:
            sock.close()
            raise
    family, addr = await resolve(trace, hp, socket.SOCK_DGRAM)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(addr)  # a connected socket hears only this peer, and ICMP errors
        return UdpChannel(sock, str(hp), deadline, rto)
    except BaseException:
        sock.close()
        raise


# --- the probe ----------------------------------------------------------------


@entrypoint("stun")
async def probe(trace: Trace, target: str, options: Options, timeout: float) -> ProbeResult:
    hp = parse_hostport(target, DEFAULT_PORT)
    deadline = deadline_for(timeout)
    txid = stunmsg.transaction_id()
    attrs = [stunmsg.SOFTWARE.tlv(SOFTWARE_NAME)] if options.software else []
    request = stunmsg.encode(_BINDING_REQUEST, txid, attrs)
    channel = await open_channel(trace, hp, options.transport, deadline, options.rto)
    try:
        with trace.phase("binding"):
            msg = await channel.transact(request, txid, "Binding request")
    finally:
        channel.close()
        trace.facts["requests_sent"] = channel.sent
    return check_binding(trace, msg, channel)


def check_binding(trace: Trace, msg: Message, channel: Channel) -> ProbeResult:
    peer = channel.peer
    software = software_of(msg)
    if software:
        trace.facts["software"] = software
    if msg.method != Method.BINDING:
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR,
            f"{peer} answered our Binding request with a {msg.name} (same transaction ID)",
        )
    if msg.cls == Class.ERROR:
        code, reason = error_of(msg, peer)
        raise ProbeFailure(
            Reason.UNEXPECTED_RESPONSE,
            f"{peer} answered our Binding request with error {code} '{reason}'",
            error_code=code,
        )
    mapped = read(msg, stunmsg.XOR_MAPPED_ADDRESS, peer)
    note = ""
    if mapped is None:
        mapped = read(msg, stunmsg.MAPPED_ADDRESS, peer)
        if mapped is None:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"{peer} sent a Binding success response without XOR-MAPPED-ADDRESS "
                f"or MAPPED-ADDRESS: {msg!r}",
            )
        trace.facts["rfc3489"] = True
        note = " (RFC 3489 MAPPED-ADDRESS only, no XOR-MAPPED-ADDRESS)"
    shown = show_address(mapped)
    by = f" ({software})" if software else ""
    return trace.ok(
        f"{peer}{by} mapped us to {shown} over {channel.transport.upper()}{note}",
        mapped_address=shown,
    )
