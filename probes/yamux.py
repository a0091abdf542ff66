"""A minimal yamux client: the frame codec and a one-stream, sans-I/O session.

frp multiplexes its control and work connections over one TCP (or TLS)
connection with yamux (fatedier/yamux, a fork of hashicorp/yamux that only
changes ``ErrTimeout``). A probe needs one stream: open it, send a message,
read the reply, answer keepalive Pings meanwhile, and say goodbye. This module
owns exactly that, and nothing of frp itself.

Wire facts (fatedier/yamux spec.md, const.go, session.go, stream.go):

- Every frame starts with a 12-byte big-endian header: version (u8, always 0),
  type (u8), flags (u16), stream id (u32), length (u32).
- Types: 0 Data (``length`` payload bytes follow), 1 WindowUpdate (``length``
  is the window delta), 2 Ping (stream 0, ``length`` is an opaque value the
  ACK echoes), 3 GoAway (stream 0, ``length`` is the reason code).
- Flags: SYN 1 opens a stream (or asks for a Ping reply), ACK 2 accepts it
  (or answers a Ping), FIN 4 half-closes, RST 8 resets.
- The client opens odd stream ids, starting at 1, with SYN on a WindowUpdate
  whose delta raises the receive window from the initial 256 KiB to the
  session's ``MaxStreamWindowSize`` (frpc and frps both use 6 MiB).
- A session that reads a bad version or type closes the connection at once,
  with no GoAway (``recvLoop``); data beyond the receive window, or a
  duplicate SYN, earns a GoAway(protocol error) first.

The session is sans-I/O: ``feed()`` takes the bytes read from the peer and
returns the bytes to write back (Ping ACKs), so the parser can be fuzzed
without sockets and a probe pays no per-frame task or buffer overhead.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

VERSION = 0

DATA = 0
WINDOW_UPDATE = 1
PING = 2
GO_AWAY = 3

SYN = 1
ACK = 2
FIN = 4
RST = 8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size  # 12
INITIAL_STREAM_WINDOW = 256 * 1024
# frp sets fmuxCfg.MaxStreamWindowSize = 6 MiB on both sides
# (client/connector.go, server/service.go), so the SYN and the ACK both
# carry this delta.
FRP_MAX_STREAM_WINDOW = 6 * 1024 * 1024
FRP_WINDOW_DELTA = FRP_MAX_STREAM_WINDOW - INITIAL_STREAM_WINDOW

TYPE_NAMES = ("Data", "WindowUpdate", "Ping", "GoAway")
GO_AWAY_NAMES = {
    GO_AWAY_NORMAL: "normal",
    GO_AWAY_PROTOCOL_ERROR: "protocol error",
    GO_AWAY_INTERNAL_ERROR: "internal error",
}


class YamuxError(Exception):
    """The peer's bytes break the yamux protocol (or what a probe accepts of it)."""


class Header(NamedTuple):
    version: int
    type: int
    flags: int
    stream_id: int
    length: int


def encode(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(VERSION, frame_type, flags, stream_id, length)


def decode(buf: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """One header from ``buf[offset:offset+12]``; raises ``YamuxError`` if it
    is short or not yamux version 0 with a known type."""
    if len(buf) - offset < HEADER_SIZE:
        raise YamuxError(f"a yamux header needs {HEADER_SIZE} bytes, got {len(buf) - offset}")
    header = Header(*HEADER.unpack_from(buf, offset))
    check_start(header.version, header.type)
    return header


def check_start(version: int, frame_type: int | None) -> None:
    """Reject a frame by its first one or two bytes, before the rest arrives."""
    if version != VERSION:
        raise YamuxError(f"yamux version byte is {version}, expected {VERSION}")
    if frame_type is not None and frame_type > GO_AWAY:
        raise YamuxError(f"yamux frame type {frame_type} is not one of 0-3")


class ClientSession:
    """The client side of one yamux session that uses a single stream.

    ``open()`` returns the bytes that open the stream (and carry a first
    message), ``feed()`` consumes what the server sent, ``close()`` returns a
    FIN and a GoAway. Data for the stream collects in ``inbound``. The peer's
    lengths are never used to allocate: payloads are copied as they arrive,
    and ``inbound`` is capped at ``max_inbound`` bytes.
    """

    __slots__ = (
        "_buf",
        "_discard",
        "_left",
        "acked",
        "frames",
        "go_away",
        "inbound",
        "max_frames",
        "max_inbound",
        "pings",
        "recv_window",
        "remote_fin",
        "reset",
        "send_window",
        "stream_id",
    )

    def __init__(
        self, stream_id: int = 1, *, max_inbound: int = 65536, max_frames: int = 1024
    ) -> None:
        self.stream_id = stream_id
        self.max_inbound = max_inbound
        self.max_frames = max_frames
        self.inbound = bytearray()
        self.acked = False
        self.remote_fin = False
        self.reset = False
        self.go_away: int | None = None  # the reason code of a GoAway, if one came
        self.frames = 0
        self.pings = 0  # Pings answered
        self.recv_window = INITIAL_STREAM_WINDOW
        self.send_window = INITIAL_STREAM_WINDOW
        self._buf = bytearray()
        self._left = 0  # payload bytes of the current Data frame still to come
        self._discard = False  # whether that payload belongs to another stream

    def open(self, data: bytes = b"") -> bytes:
        """SYN on a WindowUpdate, as ``Session.OpenStream`` sends it, then
        ``data`` in one Data frame (frpc's first ``Stream.Write``)."""
        if len(data) > self.send_window:
            raise ValueError("a first message larger than the initial send window")
        self.recv_window += FRP_WINDOW_DELTA
        out = encode(WINDOW_UPDATE, SYN, self.stream_id, FRP_WINDOW_DELTA)
        if data:
            self.send_window -= len(data)
            out += encode(DATA, 0, self.stream_id, len(data)) + data
        return out

    def close(self) -> bytes:
        """Half-close our stream (unless it was reset) and end the session."""
        goodbye = encode(GO_AWAY, 0, 0, GO_AWAY_NORMAL)
        if self.reset:
            return goodbye
        return encode(WINDOW_UPDATE, FIN, self.stream_id, 0) + goodbye

    def feed(self, data: bytes | bytearray) -> bytes:
        """Consume bytes from the server; return the replies to write.

        Raises ``YamuxError`` on anything a yamux session would reject, and on
        what frps never sends to a client (a stream opened by the server).
        """
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        replies = b""
        while True:
            if self._left:
                take = min(self._left, end - pos)
                if not take:
                    break
                if not self._discard:
                    if len(self.inbound) + take > self.max_inbound:
                        raise YamuxError(
                            f"the server sent more than {self.max_inbound} bytes on stream "
                            f"{self.stream_id} before a complete reply"
                        )
                    self.inbound += buf[pos : pos + take]
                pos += take
                self._left -= take
                continue
            if end - pos < HEADER_SIZE:
                if end > pos:  # fail on a bad version or type without waiting for more
                    check_start(buf[pos], buf[pos + 1] if end - pos > 1 else None)
                break
            version, frame_type, flags, stream_id, length = HEADER.unpack_from(buf, pos)
            check_start(version, frame_type)
            pos += HEADER_SIZE
            self.frames += 1
            if self.frames > self.max_frames:
                raise YamuxError(
                    f"more than {self.max_frames} yamux frames without a complete reply"
                )
            if frame_type == PING:
                if flags & SYN:
                    replies += encode(PING, ACK, 0, length)
                    self.pings += 1
                continue  # an ACK would answer a Ping of ours; we send none
            if frame_type == GO_AWAY:
                self.go_away = length
                continue
            if flags & SYN:
                raise YamuxError(
                    f"the server opened stream {stream_id} ({TYPE_NAMES[frame_type]} with SYN); "
                    "frps never does"
                )
            if stream_id != self.stream_id:
                # A frame for a stream we do not have: yamux drains and ignores it.
                if frame_type == DATA:
                    self._left, self._discard = length, True
                continue
            if flags & ACK:
                self.acked = True
            if flags & FIN:
                self.remote_fin = True
            if flags & RST:
                self.reset = True
            if frame_type == WINDOW_UPDATE:
                self.send_window = (self.send_window + length) & 0xFFFFFFFF
                continue
            if length > self.recv_window:
                raise YamuxError(
                    f"a {length}-byte Data frame exceeds the {self.recv_window}-byte "
                    f"receive window of stream {self.stream_id}"
                )
            self.recv_window -= length
            self._left, self._discard = length, False
        del buf[:pos]
        return replies
