"""frp heartbeats: yamux Pings on a session with no stream and no login."""

from __future__ import annotations

import asyncio

from probes import yamux
from probes.net import close_stream, insecure_tls_context, open_stream
from probes.options import HostPort
from probes.result import Trace

from .base import MAX_SKIP, Closed, Garbage, Link, _tcp_acked_for


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
