"""What the sandbox's HTTP proxies in front of moto share (the fault proxy,
``fault_proxy``, and the AWS timing layer, ``sandbox.timing_proxy``): a
threaded server on loopback, its address, start and stop, and forwarding
one request upstream without the hop-by-hop headers."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

# Hop-by-hop headers (RFC 9110 section 7.6.1), and the length each side sets.
HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }
)


class ThreadedProxy:
    """Subclasses set ``self._server`` (serving their handler) and
    ``self.upstream`` (host, port) in ``__init__``."""

    _server: ThreadingHTTPServer
    upstream: tuple[str, int]
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to the upstream; its status, headers and body."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in HOP}
            conn.request(method, path, body=body or None, headers=out)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()


def reply(
    handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], data: bytes
) -> None:
    """Send an upstream answer on, with a length of its own."""
    handler.send_response(status)
    for k, v in headers:
        if k.lower() not in HOP:
            handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
