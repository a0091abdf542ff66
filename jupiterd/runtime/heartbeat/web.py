"""HTTP and Socket.IO heartbeats: ``HEAD`` on a kept HTTP/1.1 connection,
and a kept Engine.IO WebSocket session (RFC 6455 or Engine.IO pings)."""

from __future__ import annotations

from typing import Any

from probes.httpclient import HttpConnection
from probes.options import Url
from probes.result import Trace
from probes.websocket import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, encode_frame, open_websocket

from .base import MAX_SKIP, Closed, Garbage, Link, _is_close, _tcp_acked_for

SESSION_SECONDS = 20.0  # socketio: a new session before the server's connect/ping timeouts


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
