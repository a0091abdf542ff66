"""What every heartbeat link shares: the link interface, its two ways to
end (``Closed``, ``Garbage``) and the TCP acknowledgement reading."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from probes.result import ProbeFailure, Reason

MAX_SKIP = 1 << 20  # bytes of unrelated frames a link reads past before giving up


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


def _ignore() -> None:
    pass


def _ignore_end(how: str) -> None:
    pass
