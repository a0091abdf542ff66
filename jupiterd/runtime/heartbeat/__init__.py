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
from typing import Any

import probes
from jupiterd.runtime.watch import BACKOFF_SECONDS, RETRY_SECONDS, SHORT_LIFE_SECONDS
from probes import ProbeOptions
from probes.options import parse_host, parse_hostport, parse_url

from .base import MAX_SKIP, Closed, Garbage, Link, _tcp_acked_for
from .frp import FrpLink
from .icmp import IcmpLink
from .stun import StunLink
from .web import SESSION_SECONDS, HttpLink, SocketIOLink

__all__ = [
    "CONFIRM_SPACING",
    "MAX_SKIP",
    "NEVER_ANSWERED_RETRY",
    "OPEN_TIMEOUT",
    "SESSION_SECONDS",
    "STALE_SECONDS",
    "UNDELIVERED_SECONDS",
    "Closed",
    "FrpLink",
    "Garbage",
    "Heartbeat",
    "HttpLink",
    "IcmpLink",
    "Link",
    "SocketIOLink",
    "StunLink",
    "_tcp_acked_for",
    "link_for",
]

# Confirmation probes after a miss start this far apart (each on its own
# connection, at its own moment), not one timeout apart.
CONFIRM_SPACING = 0.02
OPEN_TIMEOUT = 2.0
# A TCP heartbeat the peer's kernel has not acknowledged counts as missed
# only after this long: a lost segment costs TCP a 200 ms retransmission
# timeout, doubled at each loss (0.2, 0.6, 1.4 s), while a silent link whose
# data was acknowledged is the application not answering.
UNDELIVERED_SECONDS = 1.0
STALE_SECONDS = 5.0  # a link silent this long after a miss is replaced
NEVER_ANSWERED_RETRY = 60.0  # a link that never answered is retried after this


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
