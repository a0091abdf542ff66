"""The probes' HTTP/1.1 client: real servers for the happy paths, hostile
peers and a fuzzer for everything a server may get wrong."""

import asyncio
import contextlib

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from probes import httpclient
from probes.httpclient import HttpConnection, excerpt, fetch
from probes.options import parse_url
from probes.result import ProbeFailure, Reason, Trace
from tests.peers import hostile


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield "127.0.0.1", site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


def trace() -> Trace:
    return Trace("http", "test")


async def get(host, port, path="/", **kw):
    async with asyncio.timeout(5):
        return await fetch(trace(), parse_url(f"http://{host}:{port}{path}", 80), **kw)


async def fail_reason(reply, **kw):
    """Serve ``reply`` raw and return the ProbeFailure the client raises."""
    async with hostile.tcp_responder(lambda _: reply) as (host, port):
        with pytest.raises(ProbeFailure) as info:
            await get(host, port, **kw)
    return info.value


async def test_get_against_aiohttp_reports_status_headers_body_and_phases():
    async def hello(request):
        return web.Response(text="hello", headers={"X-Probe": request.headers["User-Agent"]})

    app = web.Application()
    app.router.add_get("/hi", hello)
    t = trace()
    async with aiohttp_server(app) as (host, port):
        resp = await fetch(t, parse_url(f"http://{host}:{port}/hi", 80))
    assert (resp.status, resp.reason, resp.version) == (200, "OK", "HTTP/1.1")
    assert resp.body == b"hello" and not resp.truncated
    assert resp.content_type == "text/plain"
    assert resp.headers["x-probe"] == httpclient.USER_AGENT
    assert {"connect", "processing", "transfer"} <= t.phases.keys()


async def test_keep_alive_reuses_one_connection():
    peers = []

    async def who(request):
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({"n": len(peers)})

    app = web.Application()
    app.router.add_get("/", who)
    async with aiohttp_server(app) as (host, port):
        url = parse_url(f"{host}:{port}", 80)
        conn = await HttpConnection.open(trace(), url)
        try:
            first = await conn.request("GET", "/")
            assert conn.reusable
            second = await conn.request("GET", "/")
        finally:
            conn.close()
    assert (first.body, second.body) == (b'{"n": 1}', b'{"n": 2}')
    assert peers[0] == peers[1]


async def test_caller_host_and_user_agent_replace_the_defaults():
    seen = []

    def reply(data):
        seen.append(data)
        return b"HTTP/1.1 204 No Content\r\n\r\n"

    async with hostile.tcp_responder(reply) as (host, port):
        resp = await get(host, port, headers={"Host": "tb.example.com", "user-agent": "x/1"})
    assert resp.status == 204
    head = seen[0].lower()
    assert head.count(b"\r\nhost:") == 1 and b"host: tb.example.com\r\n" in head
    assert head.count(b"\r\nuser-agent:") == 1
    assert b"connection: close" in head


async def test_post_sends_content_length_and_body():
    seen = []

    async def echo(request):
        seen.append(await request.read())
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/p", echo)
    async with aiohttp_server(app) as (host, port):
        resp = await get(host, port, "/p", method="POST", body=b'{"a":1}')
    assert resp.status == 201 and seen == [b'{"a":1}']


@pytest.mark.parametrize(
    "raw,body,truncated",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", b"0123", True),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", b"until close", False),
        (b"HTTP/1.1 200 OK\r\n\r\n0123456789", b"0123", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
            b"abcde",
            False,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
            b"abcd",
            True,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
            b"x",
            False,
        ),
    ],
)
async def test_body_framings(raw, body, truncated):
    async with hostile.tcp_responder(lambda _: raw) as (host, port):
        resp = await get(host, port, max_body=len(body) if truncated else 4096)
    assert resp.body == body
    assert resp.truncated is truncated


async def test_http10_answer_is_not_reused():
    raw = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with hostile.tcp_responder(lambda _: raw, close=False) as (host, port):
        conn = await HttpConnection.open(trace(), parse_url(f"{host}:{port}", 80))
        try:
            resp = await conn.request("GET", "/")
        finally:
            conn.close()
    assert resp.body == b"ok" and not conn.reusable
    with pytest.raises(ProbeFailure) as info:
        await conn.request("GET", "/")
    assert info.value.reason == Reason.RESET


BROKEN = [
    (b"", Reason.RESET, "without answering"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", Reason.PROTOCOL_ERROR, "not an HTTP response: 'SSH-2.0"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", Reason.RESET, "mid-headers"),
    (b"HTTP/1.1 abc OK\r\n\r\n", Reason.PROTOCOL_ERROR, "not an HTTP response"),
    (b"HTTP/1.1 42 Odd\r\n\r\n", Reason.PROTOCOL_ERROR, "bad HTTP status line"),
    (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", Reason.PROTOCOL_ERROR, "malformed HTTP header"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nxx", Reason.PROTOCOL_ERROR, "Content-Len"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", Reason.PROTOCOL_ERROR, "Content-Len"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", Reason.RESET, "3 of 10 body bytes"),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
        Reason.PROTOCOL_ERROR,
        "bad chunk size: '0x3'",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\n",
        Reason.PROTOCOL_ERROR,
        "bad chunk size",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
        Reason.PROTOCOL_ERROR,
        "not followed by CRLF",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
        Reason.RESET,
        "2 of 3 chunk bytes",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n",
        Reason.PROTOCOL_ERROR,
        "trailer",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"X: 1\r\n" * 3000,
        Reason.PROTOCOL_ERROR,
        "trailers over",
    ),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 12, Reason.PROTOCOL_ERROR, "interim (1xx)"),
    (
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 40000 + b"\r\n\r\n",
        Reason.PROTOCOL_ERROR,
        "headers over",
    ),
    (
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70000 + b"\r\n\r\n",
        Reason.PROTOCOL_ERROR,
        "longer than the read limit",
    ),
    (
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
        Reason.PROTOCOL_ERROR,
        "more than 100 HTTP headers",
    ),
]


@pytest.mark.parametrize("raw,reason,needle", BROKEN, ids=[b[2] for b in BROKEN])
async def test_broken_answers_are_probe_failures(raw, reason, needle):
    exc = await fail_reason(raw, max_body=4096)
    assert exc.reason == reason, exc.detail
    assert needle in exc.detail


async def test_silent_server_is_a_timeout_not_a_hang():
    async with hostile.silent_tcp() as (host, port):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await fetch(trace(), parse_url(f"{host}:{port}", 80))


def test_excerpt_escapes_and_shortens():
    assert excerpt(b"a\r\n\x00") == "a\\r\\n\\x00"
    assert excerpt(b"x" * 100, 10) == "x" * 10 + "..."
    assert "\n" not in excerpt(bytes(range(256)), 300)


def test_shared_tls_context_is_built_once():
    assert httpclient._shared_tls() is httpclient._shared_tls()


class _NoWriter:
    """read_response never writes; a stand-in for the StreamWriter."""


async def parse(raw: bytes, method: str = "GET", max_body: int = 1024):
    reader = asyncio.StreamReader(limit=2**16)
    reader.feed_data(raw)
    reader.feed_eof()
    conn = HttpConnection(trace(), parse_url("h:1", 80), reader, _NoWriter())  # type: ignore[arg-type]
    return await conn.read_response(method, max_body)


_heads = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 404 Not Found\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 204 No Content\r\n",
        b"HTTP/2 200\r\n",
        b"",
    ]
)
_header_lines = st.lists(
    st.sampled_from(
        [
            b"Content-Length: 5\r\n",
            b"Content-Length: 999999999999999999999\r\n",
            b"Content-Length: 1, 2\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Connection: close\r\n",
            b" folded\r\n",
            b"X: \xff\xfe\r\n",
        ]
    ),
    max_size=4,
)
_bodies = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.one_of(
            st.integers(0, 40).map(lambda n: f"{n:x}\r\n".encode() + b"z" * n + b"\r\n"),
            st.binary(max_size=12),
        ),
        max_size=5,
    ).map(b"".join),
)


@settings(max_examples=400, deadline=None)
@given(head=_heads, lines=_header_lines, body=_bodies, max_body=st.integers(0, 64))
async def test_fuzz_structured_answers_never_raise_anything_but_probe_failure(
    head, lines, body, max_body
):
    raw = head + b"".join(lines) + b"\r\n" + body
    try:
        resp = await parse(raw, max_body=max_body)
    except ProbeFailure as exc:
        assert exc.reason in (Reason.PROTOCOL_ERROR, Reason.RESET)
        return
    assert len(resp.body) <= max_body


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=400), method=st.sampled_from(["GET", "HEAD"]))
async def test_fuzz_random_bytes_never_raise_anything_but_probe_failure(raw, method):
    with contextlib.suppress(ProbeFailure):
        await parse(raw, method)
