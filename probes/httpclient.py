"""A minimal HTTP/1.1 client for probes: one request, bounded reads.

Why not aiohttp's client: a ClientSession per probe costs more CPU than the
whole probe budget, a shared one hides connection reuse from what a probe
proves, and a probe must report *which* byte of a peer's answer was wrong.
This client reads a status line, at most ``MAX_HEADER_BYTES`` of headers and
at most ``max_body`` bytes of body (Content-Length, chunked, or until close),
and raises ``ProbeFailure`` with a sentence on anything that is not HTTP.

``HttpConnection`` keeps the connection open for keep-alive requests and
exposes its streams, so the Socket.IO probe can upgrade it to a WebSocket.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from .net import close_stream, insecure_tls_context, open_stream
from .options import HostPort, Url
from .result import ProbeFailure, Reason, Trace

MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
MAX_INTERIM = 10  # 1xx answers tolerated before the real one
MAX_TRAILER_BYTES = 8 * 1024
DEFAULT_MAX_BODY = 64 * 1024
USER_AGENT = "jupiterd-probe"

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names

# int(x, 16) also takes "0x1f", "+1f", "1_f" and spaces; HTTP does not.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


# The default for https: one unverified client context for every probe (a
# client context carries no state between connections unless a session is
# passed explicitly).
_shared_tls = insecure_tls_context


def _buffered(reader: asyncio.StreamReader, limit: int = 60) -> bytes:
    """What the reader already holds, without waiting for more (for error
    excerpts only; StreamReader has no public peek)."""
    buf = getattr(reader, "_buffer", None)
    return bytes(buf[:limit]) if isinstance(buf, bytearray) else b""


def excerpt(data: bytes, limit: int = 60) -> str:
    """A short, escaped view of what a peer sent, safe for a log line."""
    text = repr(data[:limit])[2:-1]
    return text + ("..." if len(data) > limit else "")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    version: str
    headers: Mapping[str, str]  # lower-case names; repeated headers joined by ", "
    body: bytes
    truncated: bool  # the body was longer than max_body

    @property
    def status_line(self) -> str:
        """``HTTP 404 Not Found``, for detail sentences."""
        return f"HTTP {self.status} {self.reason}".rstrip()

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class HttpConnection:
    """One HTTP/1.1 connection. Not thread-safe; one request at a time."""

    def __init__(
        self, trace: Trace, url: Url, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.trace = trace
        self.url = url
        self.reader = reader
        self.writer = writer
        self.reusable = True

    @classmethod
    async def open(
        cls,
        trace: Trace,
        url: Url,
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> HttpConnection:
        ctx = tls if tls is not None else (_shared_tls() if url.scheme == "https" else None)
        reader, writer = await open_stream(
            trace, HostPort(url.host, url.port), tls=ctx, server_hostname=server_name
        )
        return cls(trace, url, reader, writer)

    def close(self) -> None:
        close_stream(self.writer)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        max_body: int = DEFAULT_MAX_BODY,
        keep_alive: bool = True,
    ) -> Response:
        if not self.reusable:
            raise ProbeFailure(
                Reason.RESET, "the server closed the connection after its last answer"
            )
        lines = [f"{method} {path} HTTP/1.1"]
        given = {k.lower() for k in (headers or {})}
        # A caller's Host (virtual host checks) or User-Agent replaces ours
        # instead of producing a duplicate, which servers reject with 400.
        if "host" not in given:
            lines.append(f"Host: {self.url.netloc}")
        if "user-agent" not in given:
            lines.append(f"User-Agent: {USER_AGENT}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if (body or method in ("POST", "PUT", "PATCH")) and "content-length" not in given:
            lines.append(f"Content-Length: {len(body)}")
        if "accept" not in given:
            lines.append("Accept: */*")
        if not keep_alive:
            lines.append("Connection: close")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        resp = await self.read_response(method, max_body)
        connection = resp.headers.get("connection", "").lower()
        if (
            not keep_alive
            or "close" in connection
            or (resp.version == "HTTP/1.0" and "keep-alive" not in connection)
        ):
            self.reusable = False
        return resp

    async def read_response(self, method: str, max_body: int) -> Response:
        with self.trace.phase("processing"):
            for _ in range(MAX_INTERIM + 1):
                status, reason, version, headers = await self._read_head()
                if not (100 <= status < 200 and status != 101):
                    break
                # 100 Continue and friends precede the real answer
            else:
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR,
                    f"more than {MAX_INTERIM} interim (1xx) HTTP answers and no final one",
                )
        if method == "HEAD" or status in (101, 204, 304):
            return Response(status, reason, version, headers, b"", False)
        with self.trace.phase("transfer"):
            body, truncated = await self._read_body(headers, version, max_body)
        if truncated:
            self.reusable = False
        return Response(status, reason, version, headers, body, truncated)

    async def _read_head(self) -> tuple[int, str, str, dict[str, str]]:
        try:
            first = await self.reader.readexactly(5)
        except asyncio.IncompleteReadError as exc:
            first = exc.partial
            if not first:
                raise ProbeFailure(
                    Reason.RESET, "the server closed the connection without answering"
                ) from None
            if not b"HTTP/".startswith(first):
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR, f"not an HTTP response: '{excerpt(first)}'"
                ) from None
            raise ProbeFailure(
                Reason.RESET, f"the server closed the connection mid-headers: '{excerpt(first)}'"
            ) from None
        if first != b"HTTP/":
            # A peer of another protocol (SSH, SMTP, a TLS alert) never sends
            # the blank line that ends HTTP headers: fail now, not at the timeout.
            seen = first + _buffered(self.reader)
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"not an HTTP response: '{excerpt(seen)}'")
        try:
            head = first + await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                "HTTP response headers longer than the read limit",
            ) from None
        except asyncio.IncompleteReadError as exc:
            raise ProbeFailure(
                Reason.RESET,
                f"the server closed the connection mid-headers: '{excerpt(first + exc.partial)}'",
            ) from None
        if len(head) > MAX_HEADER_BYTES:
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"HTTP headers over {MAX_HEADER_BYTES} bytes")
        status_line, _, rest = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"not an HTTP response: '{excerpt(head)}'")
        status = int(parts[1])
        if not 100 <= status <= 999:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"bad HTTP status line: '{excerpt(status_line)}'"
            )
        headers: dict[str, str] = {}
        for count, raw in enumerate(rest.split(b"\r\n")):
            if not raw:
                continue
            if count >= MAX_HEADERS:
                raise ProbeFailure(Reason.PROTOCOL_ERROR, f"more than {MAX_HEADERS} HTTP headers")
            name, sep, value = raw.partition(b":")
            if not sep or not name or name != name.strip():
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR, f"malformed HTTP header: '{excerpt(raw)}'"
                )
            key = name.decode("latin-1").lower()
            val = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        reason = parts[2].decode("latin-1", "replace") if len(parts) > 2 else ""
        return status, reason, parts[0].decode("ascii", "replace"), headers

    async def _read_body(
        self, headers: Mapping[str, str], version: str, max_body: int
    ) -> tuple[bytes, bool]:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked(max_body)
        length_text = headers.get("content-length")
        if length_text is not None:
            # isdigit() alone admits '²' and friends, which int() rejects.
            if not (length_text.isascii() and length_text.strip().isdigit()):
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR, f"bad Content-Length: '{length_text[:40]}'"
                )
            length = int(length_text)
            data = await self._read_exactly(min(length, max_body), "body")
            return data, length > max_body
        # No length: the body runs to the end of the connection.
        self.reusable = False
        data = await self.reader.read(max_body + 1)
        chunks = [data]
        total = len(data)
        while data and total <= max_body:
            data = await self.reader.read(max_body + 1 - total)
            chunks.append(data)
            total += len(data)
        body = b"".join(chunks)
        return body[:max_body], len(body) > max_body

    async def _read_exactly(self, n: int, what: str) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise ProbeFailure(
                Reason.RESET,
                f"the server closed the connection after {len(exc.partial)} of {n} {what} bytes",
            ) from None

    async def _line(self, what: str) -> bytes:
        try:
            return await self.reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"truncated or malformed {what}") from None

    async def _read_chunked(self, max_body: int) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = await self._line("chunked body")
            size_text = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise ProbeFailure(Reason.PROTOCOL_ERROR, f"bad chunk size: '{excerpt(size_text)}'")
            size = int(size_text, 16)
            if size == 0:
                await self._read_trailers()
                return b"".join(chunks), False
            if total + size > max_body:
                self.reusable = False
                chunks.append(await self._read_exactly(max_body - total, "chunk"))
                return b"".join(chunks), True
            chunks.append(await self._read_exactly(size, "chunk"))
            total += size
            if await self._read_exactly(2, "chunk") != b"\r\n":
                raise ProbeFailure(Reason.PROTOCOL_ERROR, "chunk not followed by CRLF")

    async def _read_trailers(self) -> None:
        """Trailers end with an empty line; a peer that never sends it must
        not keep the probe reading forever."""
        total = 0
        while True:
            line = await self._line("chunked body trailer")
            if line == b"\r\n":
                return
            total += len(line)
            if total > MAX_TRAILER_BYTES:
                raise ProbeFailure(
                    Reason.PROTOCOL_ERROR, f"chunked body trailers over {MAX_TRAILER_BYTES} bytes"
                )


async def fetch(
    trace: Trace,
    url: Url,
    method: str = "GET",
    *,
    path: str | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    max_body: int = DEFAULT_MAX_BODY,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> Response:
    """Open a connection, send one request, read the answer, close."""
    conn = await HttpConnection.open(trace, url, tls=tls, server_name=server_name)
    try:
        return await conn.request(
            method,
            path or url.path,
            headers=headers,
            body=body,
            max_body=max_body,
            keep_alive=False,
        )
    finally:
        conn.close()
